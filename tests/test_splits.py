import json

import numpy as np
import pandas as pd
import pytest

from phenodiff.data import (
    PhenoDataset,
    PhenotypeSchema,
    SplitManifest,
    SplitManifestError,
    apply_split,
    check_no_patient_leakage,
    load_or_make_split,
    make_split,
)

SCHEMA = PhenotypeSchema.from_dict(
    {
        "name": "toy",
        "columns": {"image": "f", "patient_id": "p", "age": "a", "sex": "s", "pathology": "y"},
        "pathology": {"vocabulary": ["normal", "disease"]},
        "groups": {"age_bands": [0, 50, 120], "min_group_size": 5},
    }
)


def synthetic_dataset(num_patients=300, seed=0):
    """Patients with 1-12 images each, two labels and four demographic groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(num_patients):
        sex = "female" if rng.random() < 0.5 else "male"
        age = float(rng.uniform(20, 90))
        label = "disease" if rng.random() < 0.3 else "normal"
        for image in range(int(rng.integers(1, 13))):
            rows.append(
                {
                    "file_name": f"p{patient}_{image}.png",
                    "image_path": None,
                    "patient_id": f"p{patient}",
                    "age": age,
                    "sex": sex,
                    "pathology": (label,),
                    "group": SCHEMA.group_of(age, sex),
                    "source_line": len(rows) + 2,
                }
            )
    return PhenoDataset(schema=SCHEMA, records=pd.DataFrame(rows))


def test_split_fractions_close_to_target():
    dataset = synthetic_dataset()
    manifest = make_split(dataset, seed=0)
    counts = manifest.counts()
    total = sum(counts.values())
    assert total == len(dataset)
    assert abs(counts["train"] / total - 0.70) < 0.02
    assert abs(counts["val"] / total - 0.15) < 0.02
    assert abs(counts["test"] / total - 0.15) < 0.02


def test_split_keeps_patients_together():
    dataset = synthetic_dataset()
    apply_split(dataset, make_split(dataset, seed=3))
    assert dataset.records.groupby("patient_id")["split"].nunique().max() == 1


def test_split_is_stratified():
    dataset = synthetic_dataset()
    apply_split(dataset, make_split(dataset, seed=0))
    share = dataset.records.assign(disease=dataset.records["pathology"].map(lambda p: p == ("disease",)))
    per_split = share.groupby("split")["disease"].mean()
    overall = share["disease"].mean()
    for split in ("train", "val", "test"):
        assert abs(per_split[split] - overall) < 0.06
    groups = dataset.records.groupby(["group", "split"]).size().unstack(fill_value=0)
    assert (groups > 0).all().all()


def test_split_seeded():
    dataset = synthetic_dataset()
    first = make_split(dataset, seed=5).assignments
    assert make_split(dataset, seed=5).assignments == first
    assert make_split(dataset, seed=6).assignments != first


def test_manifest_round_trip(tmp_path):
    dataset = synthetic_dataset(50)
    manifest = make_split(dataset, seed=1)
    path = manifest.save(tmp_path / "split.json")
    loaded = SplitManifest.load(path)
    assert loaded.assignments == manifest.assignments
    assert loaded.seed == 1
    data = json.loads(path.read_text())
    assert data["counts"] == manifest.counts()
    assert data["group_by"] == "patient_id"


def test_manifest_mismatch_raises():
    dataset = synthetic_dataset(50)
    manifest = make_split(dataset, seed=1)
    other = synthetic_dataset(60, seed=1)
    with pytest.raises(SplitManifestError, match="not in the split manifest"):
        apply_split(other, manifest)


def test_leakage_detected():
    dataset = synthetic_dataset(20)
    assignments = make_split(dataset).assignments
    patient = dataset.records["patient_id"].value_counts().index[0]
    files = dataset.records.loc[dataset.records["patient_id"] == patient, "file_name"].tolist()
    assignments[files[0]] = "train"
    assignments[files[1]] = "test"
    dataset.records["split"] = dataset.records["file_name"].map(assignments)
    with pytest.raises(SplitManifestError, match="more than one split"):
        check_no_patient_leakage(dataset)


def test_load_or_make_split_reuses_and_checks_seed(tmp_path):
    dataset = synthetic_dataset(40)
    path = tmp_path / "split.json"
    first = load_or_make_split(dataset, path, seed=2)
    again = load_or_make_split(synthetic_dataset(40), path, seed=2)
    assert again.assignments == first.assignments
    with pytest.raises(SplitManifestError, match="seed 2"):
        load_or_make_split(dataset, path, seed=3)


@pytest.mark.parametrize("fractions", [{"train": 0.8, "val": 0.1}, {"train": 0.8, "val": 0.3, "test": 0.1}, {"train": 1.2, "val": -0.1, "test": -0.1}])
def test_invalid_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        make_split(synthetic_dataset(10), fractions=fractions)


def test_corrupt_manifest(tmp_path):
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(SplitManifestError, match="not valid JSON"):
        SplitManifest.load(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(SplitManifestError, match="not a phenodiff split manifest"):
        SplitManifest.load(path)
