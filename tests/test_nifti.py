import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from phenodiff.data import PhenotypeSchema, load_pheno_dataset
from phenodiff.data.loaders.nifti import select_slices


def write_volume(path, data):
    nib.save(nib.Nifti1Image(data, affine=np.eye(4)), str(path))


def brain_volume(seed=0, shape=(16, 16, 12)):
    """A float32 ellipsoid 'brain' with a bright 'tumour' in slices 4-6 and its segmentation."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = ((x**2 + y**2 + (z / 0.8) ** 2) < 0.8).astype(np.float32)
    volume = brain * (300.0 + 20.0 * rng.standard_normal(shape).astype(np.float32))
    seg = np.zeros(shape, dtype=np.uint8)
    seg[6:9, 6:9, 4:7] = 1
    volume[seg > 0] += 500.0
    return volume.astype(np.float32), seg


@pytest.fixture
def brats_folder(tmp_path):
    rows = []
    for i in range(3):
        volume, seg = brain_volume(i)
        write_volume(tmp_path / f"sub{i}_t1.nii.gz", volume)
        write_volume(tmp_path / f"sub{i}_seg.nii.gz", seg)
        rows.append({"file_name": f"sub{i}_t1.nii.gz", "seg_file": f"sub{i}_seg.nii.gz", "subject_id": f"s{i}", "age": 50 + i, "sex": "F"})
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path


def test_nifti_slices_labels_from_segmentation(brats_folder):
    dataset = load_pheno_dataset("brats", brats_folder)
    records = dataset.records
    assert set(records["patient_id"]) == {"s0", "s1", "s2"}
    assert records["file_name"].is_unique
    tumour = records[records["pathology"] == ("tumor",)]
    assert set(tumour["slice_index"]) == {4, 5, 6}
    assert (records["pathology"] == ("no_tumor",)).any()


def test_nifti_keeps_float_until_normalisation(brats_folder):
    dataset = load_pheno_dataset("brats", brats_folder)
    raw = dataset.load_image(0, normalize=False)
    assert raw.dtype == np.float32
    assert raw.max() > 255
    normalized = dataset.load_image(0)
    assert 0.0 <= normalized.min() and normalized.max() <= 1.0


def test_slice_policies():
    mask = np.zeros((4, 4, 10), dtype=bool)
    mask[:, :, 2:5] = True
    mask[:, :3, 7] = True
    assert select_slices(mask, axis=2, policy="middle", min_fraction=0.1) == [5]
    assert select_slices(mask, axis=2, policy="max_foreground", min_fraction=0.1) == [2]
    assert select_slices(mask, axis=2, policy="all_foreground", min_fraction=0.5) == [2, 3, 4, 7]
    with pytest.raises(ValueError, match="valid policies"):
        select_slices(mask, axis=2, policy="random", min_fraction=0.1)


def test_nifti_middle_policy_with_volume_label(tmp_path):
    volume, _ = brain_volume()
    write_volume(tmp_path / "v.nii", volume)
    pd.DataFrame([{"file_name": "v.nii", "subject_id": "s", "age": 40, "sex": "M", "label": "tumor"}]).to_csv(tmp_path / "metadata.csv", index=False)
    data = PhenotypeSchema.builtin("brats").to_dict()
    data["options"] = {"slice_policy": "middle", "slice_axis": 2}
    dataset = load_pheno_dataset(PhenotypeSchema.from_dict(data), tmp_path)
    assert dataset.records["slice_index"].tolist() == [6]
    assert dataset.records["pathology"].tolist() == [("tumor",)]


def test_nifti_corrupt_and_missing_volumes_dropped(brats_folder):
    (brats_folder / "sub1_t1.nii.gz").write_bytes(b"broken")
    (brats_folder / "sub2_seg.nii.gz").unlink()
    dataset = load_pheno_dataset("brats", brats_folder)
    assert set(dataset.records["patient_id"]) == {"s0"}
    assert dataset.dropped.set_index("source_line")["reason"].to_dict() == {3: "corrupt image", 4: "image file not found"}
