import pytest

from phenodiff.data import PhenotypeSchema, SchemaError, builtin_schema_names
from phenodiff.data.schema import UNKNOWN_AGE_BAND, parse_column_mapping

MINIMAL = {
    "name": "toy",
    "columns": {"image": "file_name", "patient_id": "patient", "age": "age", "sex": "sex", "pathology": "finding"},
    "pathology": {"vocabulary": ["normal", "pneumonia"]},
    "groups": {"age_bands": [0, 40, 65, 120], "min_group_size": 5},
}


def test_builtin_schemas_load():
    names = builtin_schema_names()
    assert {"chestxray14", "ham10000", "oasis1", "brats", "phantom"} <= set(names)
    for name in names:
        schema = PhenotypeSchema.builtin(name)
        assert schema.name == name
        assert schema.pathology.vocabulary


def test_builtin_unknown_name_lists_available():
    with pytest.raises(SchemaError, match="available: .*chestxray14"):
        PhenotypeSchema.builtin("chestxray15")


def test_schema_round_trip():
    for name in builtin_schema_names():
        schema = PhenotypeSchema.builtin(name)
        assert PhenotypeSchema.from_dict(schema.to_dict()) == schema


def test_schema_from_yaml(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("name: toy\ncolumns: {image: f, sex: s, pathology: p}\npathology: {vocabulary: [a, b]}\n")
    schema = PhenotypeSchema.from_yaml(path)
    assert schema.pathology.vocabulary == ("a", "b")
    assert schema.groups.min_group_size == 20


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": 1}, "unknown schema key"),
        ({"pathology": {"vocabulary": []}}, "at least one label"),
        ({"pathology": {"vocabulary": ["a", "a"]}}, "duplicate labels"),
        ({"groups": {"age_bands": [0, 50, 40]}}, "strictly increasing"),
        ({"channels": 2}, "channels must be 1"),
        ({"sex": {"values": {"F": "woman"}}}, "map it to one of"),
        ({"columns": {"image": "f", "colour": "c", "sex": "s", "pathology": "p"}}, "unknown field"),
        ({"columns": {"sex": "s", "pathology": "p"}}, "'image' field"),
        ({"age": {"min": 50, "max": 10}}, "must be below"),
        ({"pathology": {"vocabulary": ["a"], "aliases": {"x": "b"}}}, "not in the vocabulary"),
    ],
)
def test_schema_rejects_invalid(change, message):
    data = {**MINIMAL, **change}
    with pytest.raises(SchemaError, match=message):
        PhenotypeSchema.from_dict(data)


def test_schema_missing_file(tmp_path):
    with pytest.raises(SchemaError, match="not found"):
        PhenotypeSchema.from_yaml(tmp_path / "absent.yaml")


def test_age_bands_and_groups():
    schema = PhenotypeSchema.from_dict(MINIMAL)
    assert schema.age_band_labels == ["0-40", "40-65", "65-120"]
    assert schema.age_band(39.9) == "0-40"
    assert schema.age_band(40) == "40-65"
    assert schema.age_band(120) == "65-120"
    assert schema.age_band(float("nan")) == UNKNOWN_AGE_BAND
    assert schema.age_band(130) == UNKNOWN_AGE_BAND
    assert schema.group_of(70, "female") == "female 65-120"
    assert len(schema.declared_groups()) == 6


def test_column_mapping_override():
    schema = PhenotypeSchema.from_dict(MINIMAL).with_columns({"age": "AgeYears", "extra:site": "BodySite"})
    assert schema.columns["age"] == "AgeYears"
    assert schema.extras["site"].column == "BodySite"
    with pytest.raises(SchemaError, match="valid fields"):
        PhenotypeSchema.from_dict(MINIMAL).with_columns({"height": "h"})


def test_parse_column_mapping():
    assert parse_column_mapping(["age=Patient Age", "sex = Gender"]) == {"age": "Patient Age", "sex": "Gender"}
    with pytest.raises(SchemaError, match="FIELD=COLUMN"):
        parse_column_mapping(["age"])
