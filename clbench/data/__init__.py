"""Datasets (what the images are) and scenarios (how they are cut into a stream)."""
from .base import Dataset, ImageSet, InMemoryImageSet

__all__ = ["Dataset", "ImageSet", "InMemoryImageSet"]
