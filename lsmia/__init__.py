"""lsmia: how label smoothing changes what model inversion attacks extract from a classifier."""

import os

# Idle OpenMP threads sleep instead of spinning: spinning threads starve other processes on a shared machine
# (read once, when torch loads its OpenMP runtime, so it must be set before the first `import torch`).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
