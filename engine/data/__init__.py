"""Patch dataset formats, validation reports and splits.

>>> ds = open_dataset("data/train", mpp=0.5)          # format detected
>>> rep = validate_dataset(ds); rep.raise_if_errors()
>>> train_idx, val_idx = split_dataset(ds, 0.2, "grouped")
"""

from engine.data.base import IMAGE_EXTS, PCAM_MPP, PatchDataset, infer_positive_class
from engine.data.open import FORMATS, detect_format, open_dataset
from engine.data.split import STRATEGIES, merge_groups, split_dataset
from engine.data.validate import ValidationReport, duplicate_groups, validate_dataset
from engine.errors import DatasetError

__all__ = [
    "FORMATS",
    "IMAGE_EXTS",
    "PCAM_MPP",
    "STRATEGIES",
    "DatasetError",
    "PatchDataset",
    "ValidationReport",
    "detect_format",
    "duplicate_groups",
    "infer_positive_class",
    "merge_groups",
    "open_dataset",
    "split_dataset",
    "validate_dataset",
]
