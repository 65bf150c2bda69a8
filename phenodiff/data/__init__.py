"""Data layer: phenotype schemas, dataset loaders, patient-level splits, the built-in phantom and summaries."""

from .dataset import PhenoDataset
from .errors import (
    EmptyDatasetError,
    InvalidRecordError,
    MissingColumnError,
    PhenodiffDataError,
    SchemaError,
    SplitManifestError,
)
from .images import CorruptImageError, normalize_image, read_image
from .loaders import load_pheno_dataset
from .schema import PhenotypeSchema, builtin_schema_names, resolve_schema
from .splits import SplitManifest, apply_split, check_no_patient_leakage, load_or_make_split, make_split
from .summary import DatasetSummary, plot_group_label_counts, summarize

__all__ = [
    "CorruptImageError",
    "DatasetSummary",
    "EmptyDatasetError",
    "InvalidRecordError",
    "MissingColumnError",
    "PhenoDataset",
    "PhenodiffDataError",
    "PhenotypeSchema",
    "SchemaError",
    "SplitManifest",
    "SplitManifestError",
    "apply_split",
    "builtin_schema_names",
    "check_no_patient_leakage",
    "load_or_make_split",
    "load_pheno_dataset",
    "make_split",
    "normalize_image",
    "plot_group_label_counts",
    "read_image",
    "resolve_schema",
    "summarize",
]
