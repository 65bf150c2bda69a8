"""Errors raised by the data layer.

Every error is a ``ValueError`` subclass whose message names the file, row, column or value at fault and
says what to change. Row numbers are CSV line numbers: the header is line 1, the first record line 2.
"""

from __future__ import annotations

from typing import Iterable


class PhenodiffDataError(ValueError):
    """Base class of the data layer's errors."""


class SchemaError(PhenodiffDataError):
    """A phenotype schema file or dictionary is invalid."""


class MissingColumnError(PhenodiffDataError):
    """A metadata table lacks a column that the schema maps to a phenotype field."""

    def __init__(self, path: str, missing: dict[str, str], found: Iterable[str]):
        self.path = path
        self.missing = dict(missing)
        self.found = list(found)
        wanted = ", ".join(f"{field} -> {column!r}" for field, column in self.missing.items())
        super().__init__(
            f"{path}: missing column(s) for {wanted}. Columns found: {self.found}. "
            "Rename the column in the CSV, or map the field to an existing column "
            "(schema 'columns' section or --column-map FIELD=COLUMN)."
        )


class InvalidRecordError(PhenodiffDataError):
    """A metadata row is invalid and the loader was asked to raise instead of dropping it."""

    def __init__(self, path: str, line: int, reason: str, value: object, fix: str):
        self.path = path
        self.line = line
        self.reason = reason
        self.value = value
        super().__init__(f"{path}, line {line}: {reason} (value {value!r}). {fix}")


class EmptyDatasetError(PhenodiffDataError):
    """No record survived validation."""


class SplitManifestError(PhenodiffDataError):
    """A split manifest does not match the dataset it is applied to, or is malformed."""
