from lsmia.data.base import FaceData, ImageSet, split_per_identity

__all__ = ["FaceData", "ImageSet", "split_per_identity"]
