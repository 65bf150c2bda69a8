import json

import numpy as np
import pytest

from phenodiff.data import load_or_make_split, load_pheno_dataset
from phenodiff.data.phantom import PhantomConfig, generate_phantom
from phenodiff.hub import save_pipeline_with_card
from phenodiff.privacy.audit.pipeline_audit import audit_pipeline, audit_section, write_audit_into_card
from phenodiff.training import TrainConfig

from test_pipeline import tiny_pipeline


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    dataset = load_pheno_dataset("phantom", generate_phantom(folder / "data", PhantomConfig(num_patients=80)))
    load_or_make_split(dataset, folder / "split.json")
    return dataset


def test_audit_pipeline_report_and_card(tmp_path, phantom):
    pipe = tiny_pipeline()
    report, flags = audit_pipeline(pipe, phantom, resolution=16, num_images=30, false_flag_rate=0.1, delta_pi=0.01,
                                   num_inference_steps=2, seed=0)
    assert report.n_synthetic == 30
    assert flags.shape == (30,)
    assert report.copies == int(flags.sum())
    assert 0.0 <= report.copy_rate <= 1.0
    assert report.privacy_risk.upper >= report.privacy_risk.estimate
    assert report.mia_auc is not None and 0.0 <= report.mia_auc <= 1.0
    assert set(report.groups) <= set(phantom.records["group"])
    assert any("cannot certify" in warning for warning in report.warnings)

    folder = save_pipeline_with_card(pipe, tmp_path / "pipe", config=TrainConfig(), dataset=phantom)
    write_audit_into_card(folder / "README.md", audit_section(report))
    card = (folder / "README.md").read_text()
    assert "No memorisation audit was run" not in card
    assert f"Copy rate: {report.copy_rate:.4f}" in card
    assert "## Fairness" in card
    path = report.write_json(tmp_path / "audit.json")
    assert json.loads(path.read_text())["n_synthetic"] == 30


def test_planted_training_images_are_flagged(phantom):
    """Training images passed off as generated ones are flagged as copies by the same rule."""
    from phenodiff.data.torch_dataset import PhenoTorchDataset
    from phenodiff.privacy.audit import PixelEmbedding, calibrate_copy_threshold, flag_copies

    train = PhenoTorchDataset(phantom, "train", resolution=16, value_range="0,1", progress=False)
    val = PhenoTorchDataset(phantom, "val", resolution=16, value_range="0,1", progress=False)
    embed = PixelEmbedding()
    threshold = calibrate_copy_threshold(train_embeddings=embed(train.pixel_values), heldout_embeddings=embed(val.pixel_values),
                                         false_flag_rate=0.1)
    planted = train.pixel_values[:20]
    flags = flag_copies(embed(planted), train_embeddings=embed(train.pixel_values), threshold=threshold)
    assert np.asarray(flags.flagged).mean() >= 0.95
