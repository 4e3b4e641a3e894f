"""lsmia: how label smoothing changes what model inversion attacks extract from a classifier."""

__version__ = "0.1.0"
