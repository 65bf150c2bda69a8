import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from phenodiff.privacy.dp_diffusion import average_multiplicity_grad_samples, select_trainable
from phenodiff.privacy.errors import UnreachablePrivacyTargetError
from phenodiff.training import TrainConfig, train_autoencoder, train_diffusion
from phenodiff.training.config import DiffusionConfig
from phenodiff.training.models import ConditionalDenoiser, build_encoder, build_unet

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "configs" / "tiny.yaml"


def tiny_denoiser():
    from phenodiff.data import PhenotypeSchema

    torch.manual_seed(0)
    cfg = DiffusionConfig(block_out_channels=(8, 16), cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4, attribute_dropout=0.0)
    schema = PhenotypeSchema.builtin("phantom")
    return ConditionalDenoiser(build_unet(cfg, latent_channels=4, latent_size=8), build_encoder(cfg, schema))


def denoiser_inputs(n=4):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 4, 8, 8, generator=generator),
        torch.randint(0, 1000, (n,), generator=generator),
        torch.tensor([30.0, 50.0, 70.0, 85.0])[:n],
        torch.tensor([0, 1, 0, 1])[:n],
        torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])[:n],
    )


def test_dp_step_without_noise_and_clipping_equals_plain_step():
    inputs = denoiser_inputs()
    target = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    plain = tiny_denoiser()
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    F.mse_loss(plain(*inputs, conditioning_dropout=False), target).backward()
    optimizer.step()

    private = tiny_denoiser()
    model = GradSampleModule(private, loss_reduction="mean")
    dp_optimizer = DPOptimizer(torch.optim.SGD(private.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1e12, expected_batch_size=4)
    F.mse_loss(model(*inputs, conditioning_dropout=False), target).backward()
    dp_optimizer.step()

    for (name, a), b in zip(plain.named_parameters(), private.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_noise_multiplicity_averages_per_example():
    parameter = torch.nn.Parameter(torch.zeros(3))
    parameter.grad_sample = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # 2 examples x K=2 copies
    average_multiplicity_grad_samples([parameter], 2)
    torch.testing.assert_close(parameter.grad_sample, torch.tensor([[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]]))


def test_select_trainable_attention_and_conditioning():
    denoiser = tiny_denoiser()
    params = select_trainable(denoiser, "attention_and_conditioning")
    names = [n for n, p in denoiser.named_parameters() if p.requires_grad]
    assert params
    assert all(n.startswith("phenotype_encoder.") or ".attentions." in n for n in names)
    assert any(".attentions." in n for n in names)
    assert sum(p.numel() for p in params) < sum(p.numel() for p in denoiser.parameters())
    with pytest.raises(ValueError, match="trainable must be one of"):
        select_trainable(denoiser, "everything")


def dp_config(output_dir, **privacy):
    config = TrainConfig.from_yaml(TINY).override("all", {"output_dir": str(output_dir), "phantom_patients": 40})
    return config.override("diffusion", {"enabled": True, "target_epsilon": 8.0, "noise_multiplicity": 2, **privacy})


def test_dp_run_reaches_target_and_resumes(tmp_path):
    config = dp_config(tmp_path / "run", max_train_steps=2)
    train_autoencoder(config)
    train_diffusion(config)
    first = json.loads((tmp_path / "run" / "diffusion" / "privacy.json").read_text())
    assert first["steps"] == 2
    assert 0 < first["epsilon"] <= 8.0

    resumed = dp_config(tmp_path / "run", max_train_steps=4)
    train_diffusion(resumed, resume_from_checkpoint="latest")
    second = json.loads((tmp_path / "run" / "diffusion" / "privacy.json").read_text())
    assert second["steps"] == 4
    history = second["ledger"]["components"][0]["history"]
    assert sum(entry[2] for entry in history) == 4  # the resumed ledger continued from 2 steps, not from zero
    assert second["epsilon"] > first["epsilon"]
    card = (tmp_path / "run" / "pipeline" / "README.md").read_text()
    assert f"epsilon = {second['epsilon']:.3f}" in card
    assert "Autoencoder: trained on the private images **without** differential privacy" in card


def test_unreachable_epsilon_raises_before_training(tmp_path):
    config = dp_config(tmp_path / "run", target_epsilon=1e-4, max_train_steps=50)
    train_autoencoder(config.override("autoencoder", {"max_train_steps": 1}))
    with pytest.raises(UnreachablePrivacyTargetError):
        train_diffusion(config)
    assert not (tmp_path / "run" / "diffusion" / "checkpoints").exists() or not any((tmp_path / "run" / "diffusion" / "checkpoints").iterdir())


@pytest.mark.parametrize("policy", ["raise_noise", "halt"])
def test_forced_pi_breach_triggers_controller(tmp_path, policy):
    # With 20 audited images and no copies the PI bound is 1 - 0.05 ** (1 / 20) = 0.14, above delta_pi.
    config = dp_config(tmp_path / "run", max_train_steps=3, audit_steps=1, audit_num_images=20, audit_delta_pi=0.01,
                       audit_policy=policy, audit_false_flag_rate=0.1, audit_inference_steps=2)
    train_autoencoder(config)
    train_diffusion(config)
    privacy = json.loads((tmp_path / "run" / "diffusion" / "privacy.json").read_text())
    actions = privacy["audit_actions"]
    assert actions[0]["kind"] == policy
    if policy == "halt":
        assert privacy["steps"] == 1
        assert privacy["stopped_early"]
    else:
        sigmas = [entry[0] for entry in privacy["ledger"]["components"][0]["history"]]
        assert sigmas[-1] > sigmas[0]
        assert privacy["noise_multiplier"] >= sigmas[-1]  # the last raise applies to steps not yet taken


def test_dp_autoencoder_shares_the_target(tmp_path):
    config = dp_config(tmp_path / "run", max_train_steps=2, autoencoder_epsilon=2.0)
    config = config.override("autoencoder", {"max_train_steps": 2})
    train_autoencoder(config)
    autoencoder = json.loads((tmp_path / "run" / "autoencoder" / "privacy.json").read_text())
    assert 0 < autoencoder["epsilon"] <= 2.0
    train_diffusion(config)
    privacy = json.loads((tmp_path / "run" / "diffusion" / "privacy.json").read_text())
    names = [component["name"] for component in privacy["ledger"]["components"]]
    assert names == ["autoencoder", "latent_scale", "unet+phenotype_encoder"]
    assert autoencoder["epsilon"] < privacy["epsilon"] <= 8.0
    card = (tmp_path / "run" / "pipeline" / "README.md").read_text()
    assert "- Autoencoder: DP-SGD (opacus) on the private images" in card
    scaling = json.loads((tmp_path / "run" / "autoencoder" / "model" / "config.json").read_text())["scaling_factor"]
    assert scaling > 0


def test_dp_shift_target_is_released_and_accounted(tmp_path):
    config = dp_config(tmp_path / "run", max_train_steps=2, shift_epsilon=1.0, shift_weight=1.0, clinical_max_timestep=100)
    train_autoencoder(config)
    train_diffusion(config)
    privacy = json.loads((tmp_path / "run" / "diffusion" / "privacy.json").read_text())
    components = {component["name"]: component for component in privacy["ledger"]["components"]}
    assert set(components) == {"shift_target", "unet+phenotype_encoder"}
    assert components["shift_target"]["releases"][0]["epsilon"] == 1.0
    assert 1.0 < privacy["epsilon"] <= 8.0
    assert (tmp_path / "run" / "diffusion" / "shift_target" / "target.safetensors").is_file()
    card = (tmp_path / "run" / "pipeline" / "README.md").read_text()
    assert "- shift_target: Gaussian mechanism release" in card

    resumed = dp_config(tmp_path / "run", max_train_steps=3, shift_epsilon=1.0, shift_weight=1.0, clinical_max_timestep=100)
    train_diffusion(resumed, resume_from_checkpoint="latest")
    again = json.loads((tmp_path / "run" / "diffusion" / "privacy.json").read_text())
    releases = [c for c in again["ledger"]["components"] if c["name"] == "shift_target"][0]["releases"]
    assert len(releases) == 1  # the resumed run reused the target instead of releasing it again
