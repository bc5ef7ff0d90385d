"""Datasets: the embedded synthetic `shapes` generator and readers for real formats.

See ``readers.py`` (COCO instances, ImageFolder, Pascal VOC segmentation behind one
ImageDataset API) and ``shapes.py`` (the generator, deterministic from a seed).
"""

from detlab.methods.datasets.readers import (
    FORMATS,
    DatasetError,
    ImageDataset,
    ImageRecord,
    detect_format,
    open_dataset,
)
from detlab.methods.datasets.shapes import ShapesError, generate_shapes

__all__ = [
    "FORMATS",
    "DatasetError",
    "ImageDataset",
    "ImageRecord",
    "ShapesError",
    "detect_format",
    "generate_shapes",
    "open_dataset",
]
