import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from phenodiff.training import TrainConfig, train_autoencoder, train_diffusion
from phenodiff.training.checkpoints import list_checkpoints, resolve_resume_path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "configs" / "tiny.yaml"


def tiny_config(output_dir, **overrides) -> TrainConfig:
    config = TrainConfig.from_yaml(TINY)
    config = config.override("all", {"output_dir": str(output_dir), "phantom_patients": 40})
    return config.override("all", overrides) if overrides else config


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_config_overrides_and_errors():
    config = TrainConfig.from_yaml(TINY)
    changed = config.override("diffusion", {"learning_rate": 0.01, "resolution": 24, "seed": 3})
    assert changed.diffusion.learning_rate == 0.01
    assert changed.autoencoder.learning_rate == config.autoencoder.learning_rate
    assert changed.data.resolution == 24
    assert changed.seed == 3
    with pytest.raises(ValueError, match="does not apply to stage 'autoencoder'"):
        config.override("autoencoder", {"guidance_scale": 3.0})
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"diffusion": {"learning_rat": 1.0}})


def test_recipe_configs_parse():
    from phenodiff.protocol import load_protocol_config

    for path in sorted((REPO / "recipes" / "configs").glob("*.yaml")):
        if path.name.startswith("protocol_"):
            config, _ = load_protocol_config(path)
        else:
            config = TrainConfig.from_yaml(path)
        assert config.diffusion.max_train_steps > 0, path


def test_autoencoder_resume_matches_uninterrupted(tmp_path):
    straight = tiny_config(tmp_path / "straight")
    train_autoencoder(straight)

    interrupted = tiny_config(tmp_path / "resumed", max_train_steps=2)
    train_autoencoder(interrupted)
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "autoencoder" / "checkpoints")] == ["checkpoint-2"]
    resumed = tiny_config(tmp_path / "resumed")
    train_autoencoder(resumed, resume_from_checkpoint="latest")

    a = weights(tmp_path / "straight" / "autoencoder" / "model")
    b = weights(tmp_path / "resumed" / "autoencoder" / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_diffusion_resume_keeps_ema_and_writes_pipeline(tmp_path):
    config = tiny_config(tmp_path / "run")
    train_autoencoder(config)
    shutil.copytree(tmp_path / "run", tmp_path / "straight")

    train_diffusion(tiny_config(tmp_path / "straight"))
    train_diffusion(tiny_config(tmp_path / "run", max_train_steps=2))
    checkpoint = resolve_resume_path(tmp_path / "run" / "diffusion" / "checkpoints", "latest")
    assert (checkpoint / "ema.safetensors").is_file()
    # A crash while writing leaves only a .tmp folder, which resuming ignores.
    (tmp_path / "run" / "diffusion" / "checkpoints" / "checkpoint-3.tmp").mkdir()
    assert resolve_resume_path(tmp_path / "run" / "diffusion" / "checkpoints", "latest") == checkpoint
    train_diffusion(tiny_config(tmp_path / "run"), resume_from_checkpoint="latest")

    a = weights(tmp_path / "straight" / "pipeline" / "unet")
    b = weights(tmp_path / "run" / "pipeline" / "unet")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "run" / "diffusion" / "samples" / "step-000004.png").is_file()
    assert (tmp_path / "run" / "pipeline" / "README.md").is_file()
    # The phantom schema declares the extra attribute view (PA), which the encoder embeds and training passes.
    encoder_config = json.loads((tmp_path / "run" / "pipeline" / "phenotype_encoder" / "config.json").read_text())
    assert encoder_config["extra_vocabularies"] == {"view": ["PA"]}
    assert any(name.startswith("extra_embeddings.view") for name in weights(tmp_path / "run" / "pipeline" / "phenotype_encoder"))


def test_resume_from_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass 'latest'"):
        resolve_resume_path(tmp_path, str(tmp_path / "checkpoint-9"))
    assert resolve_resume_path(tmp_path, "latest") is None


@pytest.mark.slow
def test_recipe_with_two_processes(tmp_path):
    """accelerate launch with two gloo processes on the CPU trains and saves the pipeline."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "recipes" / "train.py"), "--config", str(TINY), "--output_dir", str(tmp_path / "ddp"), "--stage", "all",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Diffusion: " in result.stderr
    assert "2 process(es)" in result.stderr
    assert "1 process(es)" not in result.stderr
    assert (tmp_path / "ddp" / "pipeline" / "model_index.json").is_file()
    assert list_checkpoints(tmp_path / "ddp" / "diffusion" / "checkpoints")


def test_shift_and_clinical_losses_train(tmp_path, caplog):
    config = tiny_config(tmp_path / "run").override("diffusion", {"shift_weight": 0.1, "logging_steps": 1})
    config.diffusion.clinical_max_timestep = 1000
    config.diffusion.clinical_weight = 0.1
    train_autoencoder(config)
    with caplog.at_level("INFO", logger="phenodiff.training.loop"):
        train_diffusion(config)
    messages = [record.getMessage() for record in caplog.records]
    assert any(" shift " in message for message in messages)
    assert any(" clinical " in message for message in messages)


def test_training_reads_a_preprocessed_array(tmp_path):
    from phenodiff.data import load_pheno_dataset
    from phenodiff.data.array_file import export_image_array, load_image_array
    from phenodiff.data.phantom import PhantomConfig, generate_phantom
    from phenodiff.data.schema import PhenotypeSchema
    from phenodiff.data.splits import load_or_make_split
    from phenodiff.data.torch_dataset import PhenoTorchDataset

    folder = generate_phantom(tmp_path / "phantom", PhantomConfig(num_patients=40, seed=0))
    dataset = load_pheno_dataset("phantom", folder)
    path = export_image_array(dataset, tmp_path / "phantom.safetensors", resolution=16)
    loaded = load_image_array(path, PhenotypeSchema.builtin("phantom"))
    assert loaded.records["file_name"].tolist() == dataset.records["file_name"].tolist()
    assert loaded.records["pathology"].tolist() == dataset.records["pathology"].tolist()
    for data in (dataset, loaded):
        load_or_make_split(data, tmp_path / "split.json", seed=0)
    from_folder = PhenoTorchDataset(dataset, "train", resolution=16, value_range="0,1")
    from_array = PhenoTorchDataset(loaded, "train", resolution=16, value_range="0,1")
    torch.testing.assert_close(from_array.pixel_values, from_folder.pixel_values, atol=1e-3, rtol=0)

    config = tiny_config(tmp_path / "run").override("all", {"array_file": str(path)})
    train_autoencoder(config)
    assert (tmp_path / "run" / "autoencoder" / "model" / "config.json").is_file()
    with pytest.raises(ValueError, match="contains dataset 'phantom'"):
        load_image_array(path, PhenotypeSchema.builtin("oasis1"))
