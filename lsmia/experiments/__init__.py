"""What runs the study's stage graph: the graph itself (declaration, code dependencies, DVC and MLproject
rendering, execution, cache keys), the study in one process, ablations on a stage cache, Optuna sweeps, the
shared stages through a DVC remote, and the ranking check."""
