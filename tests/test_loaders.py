import numpy as np
import pandas as pd
import pytest

from phenodiff.data import (
    EmptyDatasetError,
    InvalidRecordError,
    MissingColumnError,
    PhenodiffDataError,
    PhenotypeSchema,
    load_pheno_dataset,
    summarize,
)

SCHEMA = PhenotypeSchema.from_dict(
    {
        "name": "toy",
        "loader": "imagefolder",
        "columns": {"image": "file_name", "patient_id": "patient", "age": "age", "sex": "sex", "pathology": "finding"},
        "sex": {"values": {"F": "female", "M": "male", "U": "unknown"}},
        "pathology": {"vocabulary": ["effusion", "nodule"], "multi_label": True, "none_label": "No Finding"},
        "extras": {"view": {"column": "view", "values": ["PA", "AP"]}},
        "groups": {"age_bands": [0, 40, 65, 120], "min_group_size": 2},
    }
)


def row(i, **changes):
    base = {"file_name": f"images/{i}.png", "patient": f"p{i // 2}", "age": "50", "sex": "F", "finding": "No Finding", "view": "PA"}
    base.update(changes)
    return base


def load(root, **kwargs):
    return load_pheno_dataset(SCHEMA, root, **kwargs)


def reasons(dataset):
    return dataset.dropped.set_index("source_line")["reason"].to_dict()


def test_valid_rows_load(make_imagefolder):
    root = make_imagefolder([row(0), row(1, finding="effusion|nodule", sex="M", age="70"), row(2, finding="nodule")])
    dataset = load(root)
    assert len(dataset) == 3
    assert dataset.records["pathology"].tolist() == [(), ("effusion", "nodule"), ("nodule",)]
    assert dataset.records["group"].tolist() == ["female 40-65", "male 65-120", "female 40-65"]
    assert dataset.label_matrix().tolist() == [[0, 0], [1, 1], [0, 1]]
    assert dataset.dropped.empty


def test_missing_column_lists_found_columns(make_imagefolder):
    root = make_imagefolder([row(0)])
    frame = pd.read_csv(root / "metadata.csv").drop(columns=["age"])
    frame.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(MissingColumnError) as info:
        load(root)
    message = str(info.value)
    assert "age -> 'age'" in message
    assert "'file_name'" in message
    assert "--column-map" in message


def test_column_mapping_fixes_renamed_column(make_imagefolder):
    root = make_imagefolder([row(0)])
    frame = pd.read_csv(root / "metadata.csv").rename(columns={"age": "AgeYears"})
    frame.to_csv(root / "metadata.csv", index=False)
    dataset = load_pheno_dataset(SCHEMA, root, column_mapping={"age": "AgeYears"})
    assert dataset.records["age"].tolist() == [50.0]


def test_image_missing_on_disk_is_dropped(make_imagefolder):
    root = make_imagefolder([row(0), row(1, _image=None)])
    dataset = load(root)
    assert len(dataset) == 1
    assert reasons(dataset) == {3: "image file not found"}


def test_corrupt_and_truncated_images_are_dropped(make_imagefolder):
    big = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    root = make_imagefolder([row(0), row(1), row(2, _image=big)])
    (root / "images/1.png").write_bytes(b"garbage")
    data = (root / "images/2.png").read_bytes()
    (root / "images/2.png").write_bytes(data[: len(data) // 2])
    dataset = load(root)
    assert reasons(dataset) == {3: "corrupt image", 4: "corrupt image"}


def test_ages_nan_missing_and_old_format(make_imagefolder):
    root = make_imagefolder([row(0, age=""), row(1, age="058Y"), row(2, age="NaN"), row(3, age="6M")])
    dataset = load(root)
    ages = dataset.records["age"].tolist()
    assert np.isnan(ages[0])
    assert ages[1] == 58.0
    assert np.isnan(ages[2])
    assert ages[3] == pytest.approx(0.5)
    assert dataset.records["group"].tolist()[0] == "female age unknown"
    assert summarize(dataset).totals["age_missing"] == 2


def test_unparseable_and_out_of_range_age_dropped(make_imagefolder):
    root = make_imagefolder([row(0, age="fifty"), row(1, age="414"), row(2)])
    dataset = load(root)
    assert reasons(dataset) == {2: "invalid age", 3: "age out of range"}
    assert dataset.dropped.loc[0, "value"] == "fifty"


def test_required_age(make_imagefolder):
    schema = PhenotypeSchema.from_dict({**SCHEMA.to_dict(), "age": {"required": True}})
    root = make_imagefolder([row(0, age=""), row(1)])
    dataset = load_pheno_dataset(schema, root)
    assert reasons(dataset) == {2: "missing age"}


def test_unknown_sex_value_dropped(make_imagefolder):
    root = make_imagefolder([row(0, sex="X"), row(1, sex=""), row(2, sex="u")])
    dataset = load(root)
    assert reasons(dataset) == {2: "unknown sex value"}
    assert dataset.records["sex"].tolist() == ["unknown", "unknown"]


def test_label_outside_vocabulary_dropped(make_imagefolder):
    root = make_imagefolder([row(0, finding="effusion|Hernia"), row(1, finding=""), row(2, finding="nodule")])
    dataset = load(root)
    assert reasons(dataset) == {2: "label not in vocabulary", 3: "missing label"}


def test_invalid_extra_value_dropped(make_imagefolder):
    root = make_imagefolder([row(0, view="LATERAL"), row(1)])
    assert reasons(load(root)) == {2: "invalid extra attribute value"}


def test_duplicate_file_names_keep_first(make_imagefolder):
    root = make_imagefolder([row(0), row(1), row(0, age="70")])
    dataset = load(root)
    assert len(dataset) == 2
    assert reasons(dataset) == {4: "duplicate file name"}
    assert "first listed on line 2" in dataset.dropped.loc[0, "value"]


def test_missing_patient_id_and_path_escape(make_imagefolder):
    root = make_imagefolder([row(0, patient=""), row(1, file_name="../outside.png", _image=None), row(2)])
    assert reasons(load(root)) == {2: "missing patient id", 3: "image path outside the data folder"}


def test_errors_raise_names_line_and_fix(make_imagefolder):
    root = make_imagefolder([row(0), row(1, sex="X")])
    with pytest.raises(InvalidRecordError) as info:
        load(root, errors="raise")
    message = str(info.value)
    assert "line 3" in message
    assert "'X'" in message
    assert "sex.values" in message


def test_all_rows_invalid_raises_empty(make_imagefolder):
    root = make_imagefolder([row(0, finding="cancer"), row(1, finding="cancer")])
    with pytest.raises(EmptyDatasetError, match="label not in vocabulary"):
        load(root)


def test_empty_group_is_reported(make_imagefolder):
    root = make_imagefolder([row(0), row(1), row(2, age="20")])
    summary = summarize(load(root))
    sizes = summary.group_sizes
    assert sizes.loc["male 40-65", "status"] == "empty"
    assert sizes.loc["female 0-40", "status"] == "too small"
    assert sizes.loc["female 40-65", "status"] == "ok"


def test_empty_or_missing_metadata(tmp_path):
    (tmp_path / "metadata.csv").write_text("")
    with pytest.raises(PhenodiffDataError, match="empty"):
        load(tmp_path)
    with pytest.raises(PhenodiffDataError, match="not found"):
        load(tmp_path, metadata_file=tmp_path / "absent.csv")
    with pytest.raises(FileNotFoundError, match="Data folder not found"):
        load(tmp_path / "nowhere")


def test_metadata_only_mode(make_imagefolder):
    root = make_imagefolder([row(0, _image=None), row(1, _image=None)])
    dataset = load_pheno_dataset(SCHEMA, None, metadata_file=root / "metadata.csv")
    assert len(dataset) == 2
    assert dataset.records["image_path"].isna().all()


def test_load_image_and_hf_dataset(make_imagefolder):
    root = make_imagefolder([row(0), row(1, finding="nodule")])
    dataset = load(root)
    image = dataset.load_image(0)
    assert image.shape == (8, 8)
    assert image.dtype == np.float32
    hf = dataset.to_hf_dataset()
    assert hf.num_rows == 2
    assert hf[1]["pathology"] == ["nodule"]
    assert hf[0]["image"].size == (8, 8)


def test_header_only_csv_raises(make_imagefolder):
    root = make_imagefolder([row(0)])
    (root / "metadata.csv").write_text("file_name,patient,age,sex,finding,view\n")
    with pytest.raises(EmptyDatasetError, match="header but no records"):
        load(root)


def test_missing_patient_column_warns(make_imagefolder, caplog):
    schema = PhenotypeSchema.from_dict({**SCHEMA.to_dict(), "columns": {k: v for k, v in SCHEMA.columns.items() if k != "patient_id"}})
    root = make_imagefolder([row(0), row(1)])
    with caplog.at_level("WARNING"):
        dataset = load_pheno_dataset(schema, root)
    assert dataset.records["patient_id"].tolist() == dataset.records["file_name"].tolist()
    assert any("splits are made per image" in record.getMessage() for record in caplog.records)
