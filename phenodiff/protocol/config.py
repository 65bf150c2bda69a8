"""Protocol settings: the ``protocol`` section of a training config YAML.

The rest of the file is a :class:`~phenodiff.training.config.TrainConfig` shared by both generators. The
``plain`` and ``full`` sections hold overrides for the generator of arm 2 and arm 3, in the same layout
(``diffusion``, ``privacy``, ...), so that the two generators differ only where the config sets them apart.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..training.config import TrainConfig

ARMS = ("baseline", "augmented", "full")
ARM_TITLES = {"baseline": "Baseline (real only)", "augmented": "Augmented (plain LDM)", "full": "Full system"}
AUTOENCODER_DATA = ("train_split", "public_phantom")


@dataclass
class ClassifierSettings:
    """The classifier that every arm trains, with the same budget."""

    backbone: str = "resnet18"
    channels: tuple[int, ...] | None = (16, 32, 64, 128)  # ResNet stage widths; None keeps timm's default
    dropout: float = 0.3
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 3e-3
    lambda_bias: float = 1.0  # lambda_b of the full system; the other arms train with 0
    mc_passes: int = 20
    target_coverage: float = 0.8  # tau is chosen on the validation split to keep this fraction
    ece_bins: int = 15


@dataclass
class SynthesisSettings:
    """How many synthetic images each generator contributes and how they are sampled."""

    budget_fraction: float = 0.5  # synthetic images per real training image, the same for arms 2 and 3
    plan_target: str = "equal_cells"  # the full system's plan; arm 2 follows the real phenotype distribution
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    batch_size: int = 64
    audit_false_flag_rate: float = 0.05  # release filter and audit threshold, calibrated on validation images
    audit_delta_pi: float = 0.05
    grid_inference_steps: int = 25


@dataclass
class ProtocolSettings:
    """Everything the protocol adds to the shared generator config."""

    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    autoencoder_data: str = "train_split"  # or "public_phantom": a separate phantom draw, phantom only
    public_pretraining_steps: int = 0  # > 0: pretrain the full system's denoiser on the public phantom before DP fine-tuning
    plain: dict = field(default_factory=dict)
    full: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.autoencoder_data not in AUTOENCODER_DATA:
            raise ValueError(f"Invalid protocol.autoencoder_data {self.autoencoder_data!r}; valid options are {list(AUTOENCODER_DATA)}.")
        if self.public_pretraining_steps and self.autoencoder_data != "public_phantom":
            raise ValueError("protocol.public_pretraining_steps > 0 needs protocol.autoencoder_data: public_phantom (the public data it trains on).")
        if not 0 <= self.synthesis.budget_fraction <= 10:
            raise ValueError(f"Invalid protocol.synthesis.budget_fraction {self.synthesis.budget_fraction}: use a value in [0, 10].")
        if not 0 < self.classifier.target_coverage <= 1:
            raise ValueError(f"Invalid protocol.classifier.target_coverage {self.classifier.target_coverage}: use a value in (0, 1].")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(cls, values: Mapping[str, Any] | None, source: str):
    values = dict(values or {})
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(valid)}.")
    if "channels" in values and values["channels"] is not None:
        values["channels"] = tuple(int(v) for v in values["channels"])
    return cls(**values)


def protocol_from_dict(values: Mapping[str, Any] | None, *, source: str = "<dict>") -> ProtocolSettings:
    values = dict(values or {})
    valid = {f.name for f in fields(ProtocolSettings)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} in section 'protocol'; valid keys are {sorted(valid)}.")
    return ProtocolSettings(
        classifier=_section(ClassifierSettings, values.get("classifier"), f"{source}: protocol.classifier"),
        synthesis=_section(SynthesisSettings, values.get("synthesis"), f"{source}: protocol.synthesis"),
        autoencoder_data=values.get("autoencoder_data", "train_split"),
        public_pretraining_steps=int(values.get("public_pretraining_steps", 0)),
        plain=dict(values.get("plain") or {}),
        full=dict(values.get("full") or {}),
    )


def load_protocol_config(path: str | Path) -> tuple[TrainConfig, ProtocolSettings]:
    """Read a config YAML; return the shared generator config and the protocol settings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    protocol = protocol_from_dict(data.pop("protocol", None), source=str(path))
    base = TrainConfig.from_dict(data, source=str(path))
    # Both arm configs must build, so a typo in 'plain' or 'full' fails before any training.
    for arm in ("plain", "full"):
        arm_config(base, getattr(protocol, arm), output_dir=".", seed=base.seed, source=f"{path}: protocol.{arm}")
    return base, protocol


def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def arm_config(base: TrainConfig, overrides: Mapping[str, Any], *, output_dir: str | Path, seed: int,
               source: str = "<protocol>") -> TrainConfig:
    """Return the generator config of one arm: ``base`` with ``overrides`` merged in, one seed, one folder."""
    merged = _merge(base.to_dict(), overrides)
    merged.update(output_dir=str(output_dir), seed=int(seed), push_to_hub=False)
    return TrainConfig.from_dict(merged, source=source)
