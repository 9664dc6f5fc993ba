"""ShapeWorld: the built-in synthetic world of nx (scenes of coloured shapes, captions, tasks)."""
