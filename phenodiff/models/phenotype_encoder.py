"""Phenotype encoder: turns age, sex, pathology and extra attributes into cross-attention tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

SEX_NAMES = ("female", "male", "unknown")


@dataclass
class PhenotypeBatch:
    """A batch of phenotypes in tensor form.

    Attributes:
        age: (B,) float years; NaN means the age is missing from the record.
        sex: (B,) long index into ``("female", "male", "unknown")``.
        pathology: (B, L) float multi-hot over the vocabulary (single-label schemas have exactly one 1).
        extras: name -> (B,) long value index per extra attribute.
        given: name -> (B,) bool, False where the attribute is not specified and its null token is used
            (``age``, ``sex``, ``pathology`` and each extra name). Missing keys mean "given".
    """

    age: torch.Tensor
    sex: torch.Tensor
    pathology: torch.Tensor
    extras: dict[str, torch.Tensor]
    given: dict[str, torch.Tensor]


class FourierFeatures(nn.Module):
    """Fixed sin/cos features of a scalar in [0, 1] at octave frequencies (no parameters)."""

    def __init__(self, num_frequencies: int):
        super().__init__()
        self.register_buffer("frequencies", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        angles = value[:, None] * self.frequencies[None, :]
        return torch.cat([value[:, None], angles.sin(), angles.cos()], dim=1)


class PhenotypeEncoder(ModelMixin, ConfigMixin):
    r"""Encode a phenotype as a token sequence for a UNet's cross-attention.

    Tokens, in order: age, sex, the pathology tokens, one token per extra attribute. A learned position
    embedding is added to every token and the sequence is layer-normalised.

    - Age is scaled to [0, 1] over ``[age_min, age_max]``, mapped to Fourier features and an MLP; a missing
      age (NaN) uses a learned "missing age" token.
    - Sex is an embedding of female / male / unknown.
    - Multi-label pathology gives one token per vocabulary label: the label's embedding plus a
      present/absent embedding. Single-label pathology gives one token, the class embedding.
    - Each extra attribute is an embedding over its declared values.

    Any attribute can be replaced by its learned null token: where the caller does not give it, and, during
    training, with probability ``attribute_dropout`` per attribute and example. Sampling with all
    attributes null gives the unconditional branch of classifier-free guidance (Ho & Salimans, 2022);
    sampling with some attributes null gives partial phenotypes.

    Every trainable parameter sits in a single-input submodule (``nn.Embedding``, ``nn.Linear``,
    ``nn.LayerNorm``), so opacus can compute per-sample gradients for the encoder.

    Args:
        pathology_vocabulary: Label names, in the order of the multi-hot vector.
        multi_label: Whether several labels may be present at once.
        extra_vocabularies: Extra attribute name -> allowed values.
        cross_attention_dim: Token width; must equal the UNet's ``cross_attention_dim``.
        num_fourier_features: Octaves of the age features.
        age_min: Lower end of the trained age range in years.
        age_max: Upper end of the trained age range in years.
        attribute_dropout: Training probability of replacing an attribute by its null token.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        pathology_vocabulary: Sequence[str] = ("normal", "abnormal"),
        multi_label: bool = False,
        extra_vocabularies: Mapping[str, Sequence[str]] | None = None,
        cross_attention_dim: int = 64,
        num_fourier_features: int = 6,
        age_min: float = 0.0,
        age_max: float = 120.0,
        attribute_dropout: float = 0.1,
    ):
        super().__init__()
        if not pathology_vocabulary:
            raise ValueError("pathology_vocabulary must list at least one label.")
        if not 0.0 <= attribute_dropout < 1.0:
            raise ValueError(f"attribute_dropout must be in [0, 1), got {attribute_dropout}.")
        if not age_min < age_max:
            raise ValueError(f"age_min ({age_min}) must be below age_max ({age_max}).")
        dim = cross_attention_dim
        self.vocabulary = list(pathology_vocabulary)
        self.extra_names = list((extra_vocabularies or {}).keys())

        self.age_features = FourierFeatures(num_fourier_features)
        self.age_mlp = nn.Sequential(nn.Linear(1 + 2 * num_fourier_features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.missing_age = nn.Embedding(1, dim)
        self.sex_embedding = nn.Embedding(len(SEX_NAMES), dim)
        self.label_embedding = nn.Embedding(len(self.vocabulary), dim)
        self.presence_embedding = nn.Embedding(2, dim) if multi_label else None
        self.extra_embeddings = nn.ModuleDict(
            {name: nn.Embedding(len(values), dim) for name, values in (extra_vocabularies or {}).items()}
        )
        self.attribute_names = ["age", "sex", "pathology", *self.extra_names]
        self.null_embedding = nn.Embedding(len(self.attribute_names), dim)
        self.num_tokens = 2 + (len(self.vocabulary) if multi_label else 1) + len(self.extra_names)
        self.position_embedding = nn.Embedding(self.num_tokens, dim)
        self.norm = nn.LayerNorm(dim)

    # ------------------------------------------------------------------ helpers
    def _null(self, name: str, batch: int, device) -> torch.Tensor:
        index = torch.full((batch,), self.attribute_names.index(name), dtype=torch.long, device=device)
        return self.null_embedding(index)

    def _keep_mask(self, name, given, batch, device, conditioning_dropout, generator) -> torch.Tensor:
        keep = given.get(name) if given else None
        keep = torch.ones(batch, dtype=torch.bool, device=device) if keep is None else keep.to(device=device, dtype=torch.bool)
        if conditioning_dropout and self.config.attribute_dropout > 0:
            draw = torch.rand(batch, generator=generator, device="cpu" if generator is None else generator.device).to(device)
            keep = keep & (draw >= self.config.attribute_dropout)
        return keep

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        age: torch.Tensor,
        sex: torch.Tensor,
        pathology: torch.Tensor,
        extras: Mapping[str, torch.Tensor] | None = None,
        given: Mapping[str, torch.Tensor] | None = None,
        conditioning_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return tokens of shape (B, num_tokens, cross_attention_dim).

        Args:
            age: (B,) float years, NaN for a missing age.
            sex: (B,) long index into ``("female", "male", "unknown")``.
            pathology: (B, L) float multi-hot over ``pathology_vocabulary``.
            extras: Extra attribute name -> (B,) long value index, -1 where the value is missing (null token).
            given: Attribute name -> (B,) bool; False selects the attribute's null token.
            conditioning_dropout: Replace attributes by null tokens at random (training only).
            generator: Random generator for the dropout draws.
        """
        batch, device = age.shape[0], age.device
        extras = extras or {}

        missing = torch.isnan(age)
        scaled = ((torch.nan_to_num(age, nan=0.0) - self.config.age_min) / (self.config.age_max - self.config.age_min)).clamp(0.0, 1.0)
        age_token = self.age_mlp(self.age_features(scaled.to(self.dtype)))
        age_token = torch.where(missing[:, None], self.missing_age(torch.zeros(batch, dtype=torch.long, device=device)), age_token)
        tokens = [age_token[:, None], self.sex_embedding(sex.long())[:, None]]

        # Every embedding lookup is indexed per example (B, ...) so that opacus sees a batch dimension.
        labels = torch.arange(len(self.vocabulary), device=device).expand(batch, -1)
        if self.config.multi_label:
            presence = self.presence_embedding(pathology.round().long().clamp(0, 1))  # (B, L, dim)
            pathology_tokens = self.label_embedding(labels) + presence
        else:
            pathology_tokens = self.label_embedding(pathology.argmax(dim=1))[:, None]
        tokens.append(pathology_tokens)
        for name in self.extra_names:
            if name in extras:
                # A negative index marks a value missing for that example; its token is replaced by null below.
                tokens.append(self.extra_embeddings[name](extras[name].long().clamp(min=0))[:, None])
            else:
                # The embedding still runs (and is replaced by null below), so every parameter takes part in the
                # backward pass, which opacus needs for its per-sample gradients.
                tokens.append(self.extra_embeddings[name](torch.zeros(batch, dtype=torch.long, device=device))[:, None])
        spans = [1, 1, pathology_tokens.shape[1]] + [1] * len(self.extra_names)

        # Replace attributes that are not given (or dropped for guidance training) by their null token.
        for i, name in enumerate(self.attribute_names):
            absent = name not in ("age", "sex", "pathology") and name not in extras
            keep = self._keep_mask(name, given, batch, device, conditioning_dropout, generator)
            if absent:
                keep = torch.zeros_like(keep)
            elif name in extras:
                keep = keep & (extras[name].to(device) >= 0)
            null = self._null(name, batch, device)[:, None].expand(-1, spans[i], -1)
            tokens[i] = torch.where(keep[:, None, None], tokens[i], null)

        sequence = torch.cat(tokens, dim=1)
        positions = self.position_embedding(torch.arange(self.num_tokens, device=device).expand(batch, -1))
        return self.norm(sequence + positions)

    # ------------------------------------------------------------------ convenience
    def null_tokens(self, batch: int, device=None) -> torch.Tensor:
        """Tokens with every attribute null: the unconditional input for classifier-free guidance."""
        device = device or self.device
        given = {name: torch.zeros(batch, dtype=torch.bool, device=device) for name in self.attribute_names}
        return self(
            age=torch.full((batch,), float("nan"), device=device),
            sex=torch.zeros(batch, dtype=torch.long, device=device),
            pathology=torch.zeros(batch, len(self.vocabulary), device=device),
            given=given,
        )
