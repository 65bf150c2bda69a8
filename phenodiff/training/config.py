"""Training configuration: a YAML file with ``data``, ``autoencoder`` and ``diffusion`` sections, overridden by flags.

Flag names follow diffusers' example training scripts (``--learning_rate``, ``--max_train_steps``, ...). A
flag overrides the key of the same name in the section of the stage being trained, or in ``data`` and the
top level for shared keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml


@dataclass
class DataConfig:
    """Which dataset to train on and how to prepare it."""

    dataset: str = "phantom"  # built-in schema name or path to a schema YAML
    data_dir: str | None = None  # not needed for the phantom, which is generated into the output folder
    metadata_file: str | None = None
    array_file: str | None = None  # a preprocessed image array (phenodiff export-array) read instead of data_dir
    phantom_patients: int = 800
    resolution: int = 32
    split_seed: int = 0


@dataclass
class StageConfig:
    """Optimisation settings shared by both stages."""

    train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 50
    max_train_steps: int = 500
    adam_weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpointing_steps: int = 200
    checkpoints_total_limit: int | None = 2
    logging_steps: int = 25
    dataloader_num_workers: int = 0


@dataclass
class AutoencoderConfig(StageConfig):
    """Stage 1: the AutoencoderKL and its loss weights."""

    block_out_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 8
    kl_weight: float = 1e-6
    feature_weight: float = 0.5  # weight of the image-gradient term (an edge-level feature loss)


@dataclass
class DiffusionConfig(StageConfig):
    """Stage 2: the conditional UNet, the phenotype encoder and the denoising objective."""

    block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # or "v_prediction"
    attribute_dropout: float = 0.1
    use_ema: bool = True
    ema_decay: float = 0.999
    clinical_weight: float = 0.0  # lambda_c of the clinical feature loss
    clinical_max_timestep: int = 200  # the loss applies only where x0_hat is meaningful (t below this)
    shift_weight: float = 0.0  # lambda_s of L_shift, the per-group sliced W1 to the real feature quantiles
    shift_num_projections: int = 64
    validation_steps: int = 500
    validation_inference_steps: int = 25
    guidance_scale: float = 2.0


@dataclass
class PrivacyConfig:
    """DP-SGD settings (phenotype encoder and UNet, and the autoencoder when it has a share); off by default."""

    enabled: bool = False
    target_epsilon: float = 10.0
    target_delta: float | None = None  # default: 1 / (10 N) for N training images
    max_grad_norm: float = 1.0  # per-example clipping bound C
    noise_multiplicity: int = 4  # K noise and timestep draws per example, averaged before clipping
    accountant: str = "prv"  # or "rdp"
    trainable: str = "all"  # or "attention_and_conditioning" (DP fine-tuning of a pretrained denoiser)
    pretrained_pipeline: str | None = None  # pipeline folder whose UNet and encoder initialise the DP run
    public_data: str | None = None  # what the autoencoder and pretrained weights were trained on, for the card
    autoencoder_epsilon: float | None = None  # share of target_epsilon for DP-SGD on the autoencoder (None: no DP there)
    shift_epsilon: float = 1.0  # share of target_epsilon for releasing the L_shift target (when diffusion.shift_weight > 0)
    shift_projections: int = 4  # directions of the released target; the histogram's sensitivity is sqrt of this
    shift_bound: float = 4.0  # public range [-bound, bound] of the projected scaled latents
    shift_bins: int = 10
    shift_quantiles: int = 8
    epsilon_check_steps: int = 10  # steps between accountant checks against the target
    audit_steps: int = 0  # continuous memorisation audit every N steps (0: off)
    audit_num_images: int = 200  # generated images per audit
    audit_delta_pi: float = 0.05  # PI threshold of the audit controller
    audit_policy: str = "raise_noise"  # or "halt"
    audit_false_flag_rate: float = 0.05  # copy threshold calibration on validation images
    audit_inference_steps: int = 10


@dataclass
class TrainConfig:
    """Everything a training run needs; ``to_dict`` is written into the run folder and the model card."""

    output_dir: str = "outputs/train"
    seed: int = 0
    mixed_precision: str = "no"
    report_to: str = "tensorboard"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "TrainConfig":
        data = dict(data or {})
        sections = {"data": DataConfig, "autoencoder": AutoencoderConfig, "diffusion": DiffusionConfig, "privacy": PrivacyConfig}
        kwargs: dict[str, Any] = {}
        top_level = {f.name for f in fields(cls)} - set(sections)
        for key, value in data.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value or {}, f"{source}: section '{key}'")
            elif key in top_level:
                kwargs[key] = value
            else:
                raise ValueError(f"{source}: unknown key {key!r}; valid keys are {sorted(top_level | set(sections))}.")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}.")
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))

    def override(self, stage: str, values: Mapping[str, Any]) -> "TrainConfig":
        """Return a copy with ``values`` applied to the top level, ``data`` or the ``stage`` section."""
        data = self.to_dict()
        stage_keys = {f.name for f in fields(AutoencoderConfig if stage == "autoencoder" else DiffusionConfig)}
        stages = ("autoencoder", "diffusion") if stage == "all" else (stage,)
        for key, value in values.items():
            if value is None:
                continue
            if key in data and not isinstance(data[key], dict):
                data[key] = value
            elif key in data["data"]:
                data["data"][key] = value
            elif key in data["privacy"] and not (stage == "autoencoder" and key in stage_keys):
                data["privacy"][key] = value
            elif stage == "all" or key in stage_keys:
                applied = False
                for name in stages:
                    if key in data[name]:
                        data[name][key] = value
                        applied = True
                if not applied:
                    raise ValueError(f"Option {key!r} does not apply to stage {stage!r}.")
            else:
                raise ValueError(f"Option {key!r} does not apply to stage {stage!r}.")
        return TrainConfig.from_dict(data)


def _build(cls, values: Mapping[str, Any], source: str):
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(valid)}.")
    converted = {}
    for key, value in values.items():
        if key == "block_out_channels":
            value = tuple(int(v) for v in value)
        elif key in ("learning_rate", "kl_weight", "feature_weight", "ema_decay", "clinical_weight", "adam_weight_decay",
                     "max_grad_norm", "guidance_scale", "attribute_dropout", "target_epsilon", "shift_weight", "audit_delta_pi", "audit_false_flag_rate",
                     "autoencoder_epsilon", "shift_epsilon", "shift_bound") and value is not None:
            value = float(value)
        converted[key] = value
    return cls(**converted)
