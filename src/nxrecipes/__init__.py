"""nxrecipes: the full systems (NextFlow, NextStep-1), data, training, evaluation and the CLI."""
