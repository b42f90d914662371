"""The data layer: read rows from files or built-in sets, validate them into examples, split them."""

from tunesmith.data.builtin import DATASETS, DatasetEntry, get_dataset
from tunesmith.data.config import DataConfig, SplitConfig
from tunesmith.data.images import (
    ImageData,
    ImageExample,
    load_image_classification,
    load_labelled_images,
    read_image,
)
from tunesmith.data.sources import FORMATS, Row, read_rows
from tunesmith.data.splits import DataReport, split_rows
from tunesmith.data.text import TextData, TextExample, load_labelled_file, load_text_classification

__all__ = [
    "DATASETS",
    "FORMATS",
    "DataConfig",
    "DataReport",
    "DatasetEntry",
    "ImageData",
    "ImageExample",
    "Row",
    "SplitConfig",
    "TextData",
    "TextExample",
    "get_dataset",
    "load_image_classification",
    "load_labelled_images",
    "load_labelled_file",
    "load_text_classification",
    "read_image",
    "read_rows",
    "split_rows",
]
