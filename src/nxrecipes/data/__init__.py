"""Data: the built-in ShapeWorld world, packing and pre-extraction."""
