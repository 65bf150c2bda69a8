"""The three-arm protocol on the tiny phantom config: outputs, reuse of finished stages, resume and config checks."""

import json
import os
from pathlib import Path

import pytest
import yaml

from phenodiff.protocol import ARMS, Protocol, load_protocol_config, run_protocol
from phenodiff.protocol.synthetic import SyntheticSet

TINY = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "protocol_tiny.yaml"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("protocol")
    metrics = run_protocol(TINY, seeds=[0, 1], output_dir=output)
    return output, metrics


@pytest.mark.slow
def test_metrics_cover_every_arm_and_seed(finished_run):
    output, metrics = finished_run
    stored = json.loads((output / "metrics.json").read_text())
    assert stored["seeds"] == [0, 1]
    assert set(stored["per_seed"]) == {"0", "1"}
    for seed in stored["per_seed"].values():
        for arm in ARMS:
            numbers = seed["arms"][arm]
            assert 0.0 <= numbers["accuracy"] <= 1.0
            assert 0.0 <= numbers["ece"] <= 1.0
            assert 0.0 <= numbers["deferral"]["coverage"] <= 1.0
            assert numbers["group_accuracy"]
            assert numbers["bias_gap_percent"] >= 0.0
        assert seed["generators"]["plain"]["epsilon"] is None
        assert 0 < seed["generators"]["full"]["epsilon"] <= 10.0
        assert seed["generators"]["full"]["privacy_risk_upper"] is not None
        assert set(seed["wall_seconds"]) >= {"baseline", "autoencoder", "plain_generator", "full_generator", "full"}
    assert stored["summary"]["baseline"]["accuracy"]["values"] == [s["arms"]["baseline"]["accuracy"] for s in stored["per_seed"].values()]
    assert stored["machine"]["cpu_count"] == os.cpu_count()


@pytest.mark.slow
def test_tables_figures_and_card_are_written(finished_run):
    output, _ = finished_run
    tables = (output / "tables.md").read_text()
    for heading in ("## Table 1", "## Table 2", "## Table 3", "## Generators"):
        assert heading in tables
    for name in ("metrics_per_arm", "accuracy_per_group", "reliability_baseline", "reliability_augmented", "reliability_full",
                 "risk_coverage", "samples_plain", "samples_full"):
        assert (output / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (output / "model_card.md").read_text()
    assert "epsilon = " in card
    assert "trained on public data" in card
    assert "Full system |" in card
    assert "No memorisation audit was run" not in card


@pytest.mark.slow
def test_released_set_excludes_rejected_images(finished_run):
    output, _ = finished_run
    for seed in (0, 1):
        result = json.loads((output / f"seed-{seed}" / "full" / "synthetic" / "result.json").read_text())
        stored = SyntheticSet.load(output / f"seed-{seed}" / "full" / "synthetic")
        assert result["released"] + result["rejected"] == result["requested"]
        assert len(stored) == result["released"]
        assert all("cell" in request for request in stored.requests)


@pytest.mark.slow
def test_rerun_reuses_finished_stages(finished_run):
    output, _ = finished_run
    results = sorted(output.glob("seed-*/**/result.json"))
    before = {path: path.stat().st_mtime_ns for path in results}
    run_protocol(TINY, seeds=[0, 1], output_dir=output)
    assert {path: path.stat().st_mtime_ns for path in results} == before


@pytest.mark.slow
def test_interrupted_stage_is_recomputed(finished_run):
    output, _ = finished_run
    stage = output / "seed-1" / "full" / "result.json"
    first = json.loads(stage.read_text())
    stage.unlink()
    run_protocol(TINY, seeds=[0, 1], output_dir=output)
    second = json.loads(stage.read_text())
    assert second["test"]["accuracy"] == pytest.approx(first["test"]["accuracy"])


def test_other_config_in_same_folder_is_rejected(tmp_path):
    Protocol(TINY, tmp_path)
    changed = yaml.safe_load(TINY.read_text())
    changed["protocol"]["classifier"]["epochs"] = 2
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    with pytest.raises(ValueError, match="another config"):
        Protocol(other, tmp_path)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"classifier": {"epoch": 3}}, "unknown key"),
        ({"autoencoder_data": "imagenet"}, "autoencoder_data"),
        ({"full": {"privacy": {"target_epsilon_typo": 1.0}}}, "unknown key"),
    ],
)
def test_invalid_protocol_section_is_rejected(tmp_path, section, message):
    config = yaml.safe_load(TINY.read_text())
    config["protocol"].update(section)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        load_protocol_config(path)
