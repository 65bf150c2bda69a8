"""Loaders and summaries on the public datasets in ../shared/data; skipped where the folder is absent."""

import numpy as np
import pandas as pd
import pytest

from phenodiff.data import PhenotypeSchema, apply_split, check_no_patient_leakage, load_pheno_dataset, make_split, summarize

pytestmark = pytest.mark.real_data


def expected_groups(ages: pd.Series, sexes: pd.Series, edges) -> pd.Series:
    """Group labels computed independently of the loader: [lo, hi) bands, last band closed."""
    bins = list(edges)
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(bins, bins[1:])]
    bands = pd.cut(ages, bins=bins, right=False, labels=labels).astype(object)
    bands[ages == bins[-1]] = labels[-1]
    bands = bands.where(bands.notna(), "age unknown")
    return sexes + " " + bands


def split_and_check(dataset):
    manifest = make_split(dataset, seed=0)
    apply_split(dataset, manifest)
    check_no_patient_leakage(dataset)
    per_patient = dataset.records.groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1
    counts = manifest.counts()
    total = sum(counts.values())
    for split, target in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        assert abs(counts[split] / total - target) < 0.03, counts
    return dataset


@pytest.fixture(scope="module")
def chestxray(shared_data):
    return load_pheno_dataset("chestxray14", shared_data / "chestxray14")


@pytest.fixture(scope="module")
def ham(shared_data):
    return load_pheno_dataset("ham10000", shared_data / "ham10000")


@pytest.fixture(scope="module")
def oasis(shared_data):
    return load_pheno_dataset("oasis1", shared_data / "oasis1")


def test_chestxray14_matches_metadata(chestxray, shared_data):
    raw = pd.read_csv(shared_data / "chestxray14" / "metadata.csv")
    assert len(chestxray) == len(raw) == 1000
    assert chestxray.dropped.empty
    assert chestxray.records["patient_id"].nunique() == raw["Patient ID"].nunique() == 264
    sexes = raw["Patient Gender"].map({"F": "female", "M": "male"})
    assert chestxray.records["sex"].value_counts().to_dict() == sexes.value_counts().to_dict()

    summary = summarize(chestxray)
    exploded = raw.assign(label=raw["Finding Labels"].str.split("|")).explode("label")
    exploded["group"] = expected_groups(exploded["Patient Age"].astype(float), exploded["Patient Gender"].map({"F": "female", "M": "male"}), chestxray.schema.groups.age_bands)
    expected = pd.crosstab(exploded["group"], exploded["label"])
    table = summary.group_label_counts
    for group in expected.index:
        for label in expected.columns:
            assert table.loc[group, label] == expected.loc[group, label], (group, label)
    assert table.to_numpy().sum() == len(exploded)


def test_chestxray14_rgba_conversion_recorded(chestxray):
    notes = pd.Series(chestxray.conversions)
    assert len(notes) == 1000
    assert notes.str.contains("alpha dropped").sum() == 21
    assert notes.str.contains("identical channels").all()
    assert chestxray.load_image(0).ndim == 2


def test_chestxray14_no_patient_leakage(chestxray):
    split_and_check(chestxray)


def test_chestxray14_full_table(shared_data):
    path = shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz"
    dataset = load_pheno_dataset("chestxray14", None, metadata_file=path, check_images=False)
    raw = pd.read_csv(path)
    assert len(raw) == 112120
    assert len(dataset) + len(dataset.dropped) == 112120
    kept = raw[raw["Image Index"].isin(dataset.records["file_name"].str.removeprefix("images/"))]
    assert len(kept) == len(dataset)
    assert dataset.records["patient_id"].nunique() == kept["Patient ID"].nunique()
    labels = kept["Finding Labels"].str.split("|").explode().value_counts()
    summary = summarize(dataset)
    totals = summary.group_label_counts.sum()
    for label, count in labels.items():
        assert totals[label] == count, label
    split_and_check(dataset)


def test_ham10000_matches_metadata(ham, shared_data):
    raw = pd.read_csv(shared_data / "ham10000" / "metadata.csv")
    assert len(ham) == len(raw) == 4984
    assert ham.records["sex"].value_counts().to_dict() == raw["sex"].value_counts().to_dict()
    summary = summarize(ham)
    assert summary.totals["age_missing"] == raw["age"].isna().sum() == 29
    assert summary.totals["sex_unknown"] == 30
    assert summary.group_label_counts.sum().to_dict() == raw["dx"].value_counts().reindex(ham.schema.pathology.vocabulary).to_dict()
    groups = expected_groups(raw["age"], raw["sex"], ham.schema.groups.age_bands)
    assert summary.group_sizes["images"].to_dict() == groups.value_counts().reindex(summary.group_sizes.index, fill_value=0).to_dict()
    assert ham.load_image(0).shape == (224, 224, 3)


def test_ham10000_no_lesion_leakage(ham):
    split_and_check(ham)


def test_oasis1_matches_metadata(oasis, shared_data):
    raw = pd.read_csv(shared_data / "oasis1" / "metadata.csv")
    assert len(oasis) == 588
    assert oasis.records["patient_id"].nunique() == 196
    demented = (raw["CDR"] > 0).sum()
    summary = summarize(oasis)
    assert summary.group_label_counts["demented"].sum() == demented
    assert summary.group_label_counts["nondemented"].sum() == len(raw) - demented
    assert oasis.records["view"].value_counts().to_dict() == {"axial": 196, "coronal": 196, "sagittal": 196}


def test_oasis1_no_subject_leakage(oasis):
    split_and_check(oasis)


def test_oasis1_original_session_table(shared_data, tmp_path):
    """The original one-row-per-session CSV (no file_name column) expands to the slices on disk."""
    raw = pd.read_csv(shared_data / "oasis1" / "metadata.csv")
    sessions = raw.drop_duplicates("ID")[["ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF"]]
    sessions.to_csv(tmp_path / "oasis_cross-sectional.csv", index=False)
    data = PhenotypeSchema.builtin("oasis1").to_dict()
    dataset = load_pheno_dataset(
        PhenotypeSchema.from_dict(data), shared_data / "oasis1", metadata_file=tmp_path / "oasis_cross-sectional.csv"
    )
    assert len(dataset) == 588
    assert set(dataset.records["view"]) == {"axial", "coronal", "sagittal"}
    assert np.array_equal(np.sort(dataset.records["file_name"].to_numpy()), np.sort(("images/" + raw["file_name"]).to_numpy()))
