"""Evaluation: ShapeEval (GenEval-style scoring on ShapeWorld), reconstruction metrics, FLOPs."""
