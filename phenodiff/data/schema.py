"""Phenotype schemas: per-dataset declarations of columns, vocabularies and demographic groups.

A schema is data. Built-in schemas live as YAML files in ``phenodiff/data/schemas/``; users write their own
in the same format and pass the file path wherever a dataset name is accepted. A minimal schema::

    name: my_xrays
    loader: imagefolder
    channels: 1
    columns: {image: file_name, patient_id: subject, age: age, sex: sex, pathology: finding}
    age: {min: 0, max: 120}
    sex: {values: {F: female, M: male}}
    pathology: {vocabulary: [normal, pneumonia], multi_label: false}
    groups: {age_bands: [0, 40, 65, 120], min_group_size: 20}

The canonical sexes are ``female``, ``male`` and ``unknown``; ``sex.values`` maps raw CSV values to them.
Demographic groups are the age bands crossed with sex. Records with a missing age fall in an
``age unknown`` band instead of being dropped, unless ``age.required`` is true.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import SchemaError

SEXES = ("female", "male", "unknown")
UNKNOWN_AGE_BAND = "age unknown"
COLUMN_FIELDS = ("image", "patient_id", "age", "sex", "pathology")


@dataclass(frozen=True)
class AgeSpec:
    """Valid age range in years; ages outside ``[min, max]`` are invalid."""

    min: float = 0.0
    max: float = 120.0
    required: bool = False


@dataclass(frozen=True)
class SexSpec:
    """Mapping from raw CSV values (compared case-insensitively) to ``female``, ``male`` or ``unknown``."""

    values: Mapping[str, str] = field(
        default_factory=lambda: {"f": "female", "female": "female", "m": "male", "male": "male"}
    )


@dataclass(frozen=True)
class BinarizeSpec:
    """Derive a two-class label from a numeric column: ``above`` when value > threshold, else ``at_or_below``."""

    threshold: float
    above: str
    at_or_below: str


@dataclass(frozen=True)
class PathologySpec:
    """Pathology vocabulary and how labels are written in the metadata.

    ``none_label`` is the string that means "no finding" in a multi-label column (it maps to the empty set).
    ``aliases`` maps raw label strings to vocabulary entries (for example a numeric class code).
    """

    vocabulary: tuple[str, ...]
    multi_label: bool = False
    separator: str = "|"
    none_label: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    binarize: BinarizeSpec | None = None


@dataclass(frozen=True)
class ExtraSpec:
    """An optional attribute such as view position or body site; ``values`` restricts it when given."""

    column: str
    values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GroupSpec:
    """Demographic groups: age bands ``[edge_i, edge_i+1)`` (the last band closed) crossed with sex."""

    age_bands: tuple[float, ...] = (0.0, 40.0, 65.0, 120.0)
    min_group_size: int = 20


@dataclass(frozen=True)
class PhenotypeSchema:
    """One dataset's phenotype declaration. Build it with :meth:`from_yaml`, :meth:`from_dict` or :meth:`builtin`."""

    name: str
    pathology: PathologySpec
    columns: Mapping[str, str]
    loader: str = "imagefolder"
    description: str = ""
    modality: str = ""
    channels: int = 1
    metadata_file: str = "metadata.csv"
    image_dir: str = ""
    image_suffix: str = ""
    age: AgeSpec = field(default_factory=AgeSpec)
    sex: SexSpec = field(default_factory=SexSpec)
    extras: Mapping[str, ExtraSpec] = field(default_factory=dict)
    groups: GroupSpec = field(default_factory=GroupSpec)
    options: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "PhenotypeSchema":
        """Validate a schema dictionary (the parsed YAML) and build the schema; errors name ``source``."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"{source}: a schema must be a mapping, got {type(data).__name__}.")
        known = {
            "name", "loader", "description", "modality", "channels", "metadata_file", "image_dir",
            "image_suffix", "columns", "age", "sex", "pathology", "extras", "groups", "options",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise SchemaError(f"{source}: unknown schema key(s) {unknown}; valid keys are {sorted(known)}.")
        for key in ("name", "pathology", "columns"):
            if key not in data:
                raise SchemaError(f"{source}: the schema has no '{key}' entry, which is required.")

        columns = dict(data["columns"] or {})
        bad_fields = sorted(set(columns) - set(COLUMN_FIELDS))
        if bad_fields:
            raise SchemaError(
                f"{source}: unknown field(s) {bad_fields} in 'columns'; valid fields are {list(COLUMN_FIELDS)}."
            )
        for required in ("image", "sex", "pathology"):
            if required not in columns and not (required == "pathology" and "binarize" in data["pathology"]):
                raise SchemaError(f"{source}: 'columns' must map the '{required}' field to a CSV column.")

        pathology_data = dict(data["pathology"])
        binarize = pathology_data.pop("binarize", None)
        if binarize is not None:
            binarize_column = binarize.pop("column", None)
            if binarize_column is not None:
                columns.setdefault("pathology", binarize_column)
            binarize = BinarizeSpec(**binarize)
        vocabulary = tuple(str(v) for v in pathology_data.pop("vocabulary", ()) or ())
        if not vocabulary:
            raise SchemaError(f"{source}: 'pathology.vocabulary' must list at least one label.")
        if len(set(vocabulary)) != len(vocabulary):
            raise SchemaError(f"{source}: 'pathology.vocabulary' has duplicate labels: {list(vocabulary)}.")
        aliases = {str(k): str(v) for k, v in (pathology_data.pop("aliases", {}) or {}).items()}
        for raw, label in aliases.items():
            if label not in vocabulary:
                raise SchemaError(f"{source}: alias {raw!r} maps to {label!r}, which is not in the vocabulary {list(vocabulary)}.")
        if binarize is not None:
            for label in (binarize.above, binarize.at_or_below):
                if label not in vocabulary:
                    raise SchemaError(f"{source}: binarize label {label!r} is not in the vocabulary {list(vocabulary)}.")
        try:
            pathology = PathologySpec(vocabulary=vocabulary, aliases=aliases, binarize=binarize, **pathology_data)
        except TypeError as err:
            raise SchemaError(f"{source}: invalid 'pathology' entry: {err}.") from None

        sex_values = (data.get("sex") or {}).get("values")
        sex = SexSpec() if sex_values is None else SexSpec(values={str(k).lower(): str(v) for k, v in sex_values.items()})
        for raw, canonical in sex.values.items():
            if canonical not in SEXES:
                raise SchemaError(f"{source}: sex value {raw!r} maps to {canonical!r}; map it to one of {list(SEXES)}.")

        age = AgeSpec(**(data.get("age") or {}))
        if not age.min < age.max:
            raise SchemaError(f"{source}: age.min ({age.min}) must be below age.max ({age.max}).")

        groups_data = dict(data.get("groups") or {})
        edges = tuple(float(e) for e in groups_data.pop("age_bands", GroupSpec.age_bands))
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise SchemaError(f"{source}: groups.age_bands must be at least two strictly increasing edges, got {list(edges)}.")
        groups = GroupSpec(age_bands=edges, **groups_data)
        if groups.min_group_size < 1:
            raise SchemaError(f"{source}: groups.min_group_size must be >= 1, got {groups.min_group_size}.")

        extras = {}
        for extra_name, spec in (data.get("extras") or {}).items():
            if isinstance(spec, str):
                spec = {"column": spec}
            values = spec.get("values")
            extras[str(extra_name)] = ExtraSpec(column=str(spec["column"]), values=None if values is None else tuple(map(str, values)))
        reserved = set(COLUMN_FIELDS) | {"group", "file_name", "image_path", "split"}
        clash = sorted(set(extras) & reserved)
        if clash:
            raise SchemaError(f"{source}: extra attribute name(s) {clash} are reserved; rename them.")

        channels = int(data.get("channels", 1))
        if channels not in (1, 3):
            raise SchemaError(f"{source}: channels must be 1 (grayscale) or 3 (RGB), got {channels}.")

        return cls(
            name=str(data["name"]),
            loader=str(data.get("loader", "imagefolder")),
            description=str(data.get("description", "")),
            modality=str(data.get("modality", "")),
            channels=channels,
            metadata_file=str(data.get("metadata_file", "metadata.csv")),
            image_dir=str(data.get("image_dir", "") or ""),
            image_suffix=str(data.get("image_suffix", "") or ""),
            columns=columns,
            age=age,
            sex=sex,
            pathology=pathology,
            extras=extras,
            groups=groups,
            options=dict(data.get("options") or {}),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PhenotypeSchema":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SchemaError(f"Schema file not found: {path}.") from None
        except yaml.YAMLError as err:
            raise SchemaError(f"{path}: invalid YAML: {err}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def builtin(cls, name: str) -> "PhenotypeSchema":
        """Load a schema shipped with the package (``chestxray14``, ``ham10000``, ``oasis1``, ``brats``, ``phantom``)."""
        available = builtin_schema_names()
        if name not in available:
            raise SchemaError(f"Unknown built-in schema {name!r}; available: {available}, or pass a path to a schema YAML file.")
        text = resources.files("phenodiff.data").joinpath("schemas", f"{name}.yaml").read_text(encoding="utf-8")
        return cls.from_dict(yaml.safe_load(text), source=f"built-in schema {name!r}")

    def with_columns(self, mapping: Mapping[str, str]) -> "PhenotypeSchema":
        """Return a copy whose column mapping is updated by ``mapping`` (field -> CSV column or ``extra:NAME``)."""
        data = self.to_dict()
        for key, column in mapping.items():
            if key.startswith("extra:") or key.startswith("extras."):
                extra = key.split(":", 1)[-1].split(".", 1)[-1]
                data["extras"].setdefault(extra, {})["column"] = column
            elif key in COLUMN_FIELDS:
                data["columns"][key] = column
            else:
                raise SchemaError(
                    f"Unknown field {key!r} in the column mapping; valid fields are {list(COLUMN_FIELDS)} "
                    "or 'extra:NAME' for an extra attribute."
                )
        return PhenotypeSchema.from_dict(data, source=f"schema {self.name!r} with column mapping")

    def to_dict(self) -> dict[str, Any]:
        """Serialise to the YAML layout accepted by :meth:`from_dict`."""
        pathology = asdict(self.pathology)
        pathology["vocabulary"] = list(self.pathology.vocabulary)
        pathology["aliases"] = dict(self.pathology.aliases)
        if self.pathology.binarize is None:
            pathology.pop("binarize")
        return {
            "name": self.name,
            "loader": self.loader,
            "description": self.description,
            "modality": self.modality,
            "channels": self.channels,
            "metadata_file": self.metadata_file,
            "image_dir": self.image_dir,
            "image_suffix": self.image_suffix,
            "columns": dict(self.columns),
            "age": asdict(self.age),
            "sex": {"values": dict(self.sex.values)},
            "pathology": pathology,
            "extras": {k: {"column": v.column, **({"values": list(v.values)} if v.values else {})} for k, v in self.extras.items()},
            "groups": {"age_bands": list(self.groups.age_bands), "min_group_size": self.groups.min_group_size},
            "options": dict(self.options),
        }

    # ------------------------------------------------------------------ groups
    @property
    def age_band_labels(self) -> list[str]:
        edges = self.groups.age_bands
        return [f"{_fmt(lo)}-{_fmt(hi)}" for lo, hi in zip(edges, edges[1:])]

    def age_band(self, age: float | None) -> str:
        """Return the label of the band that contains ``age``; out-of-range or missing ages give ``age unknown``."""
        if age is None or (isinstance(age, float) and math.isnan(age)):
            return UNKNOWN_AGE_BAND
        edges = self.groups.age_bands
        if age < edges[0] or age > edges[-1]:
            return UNKNOWN_AGE_BAND
        for label, hi in zip(self.age_band_labels, edges[1:]):
            if age < hi:
                return label
        return self.age_band_labels[-1]

    def group_of(self, age: float | None, sex: str) -> str:
        """Return the demographic group label, for example ``"female 40-65"``."""
        return f"{sex} {self.age_band(age)}"

    def group_bounds(self, group: str) -> tuple[str, float, float]:
        """Return the sex and the age band edges (years) of a declared group such as ``"female 40-65"``."""
        edges = dict(zip(self.age_band_labels, zip(self.groups.age_bands, self.groups.age_bands[1:])))
        sex, _, band = group.partition(" ")
        if band not in edges:
            raise ValueError(f"Group {group!r} has no age band of schema {self.name!r}; its bands are {list(edges)}.")
        return sex, float(edges[band][0]), float(edges[band][1])

    def declared_groups(self) -> list[str]:
        """Groups that always appear in summaries (female and male in every band), so empty ones are visible."""
        return [f"{sex} {band}" for sex in ("female", "male") for band in self.age_band_labels]

    def label_names(self, include_none: bool = True) -> list[str]:
        """Labels shown in count tables: the vocabulary, plus ``none_label`` for multi-label schemas."""
        names = list(self.pathology.vocabulary)
        if include_none and self.pathology.multi_label:
            names.append(self.pathology.none_label or "no finding")
        return names


def _fmt(value: float) -> str:
    return f"{value:g}"


def builtin_schema_names() -> list[str]:
    folder = resources.files("phenodiff.data").joinpath("schemas")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_schema(schema: "PhenotypeSchema | str | Path") -> PhenotypeSchema:
    """Accept a schema object, a built-in schema name or a path to a YAML file."""
    if isinstance(schema, PhenotypeSchema):
        return schema
    text = str(schema)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return PhenotypeSchema.from_yaml(text)
    return PhenotypeSchema.builtin(text)


def parse_column_mapping(items: Sequence[str]) -> dict[str, str]:
    """Parse ``FIELD=COLUMN`` strings from the command line."""
    mapping = {}
    for item in items:
        if "=" not in item:
            raise SchemaError(f"Invalid column mapping {item!r}; write it as FIELD=COLUMN, for example age='Patient Age'.")
        key, column = item.split("=", 1)
        mapping[key.strip()] = column.strip()
    return mapping
