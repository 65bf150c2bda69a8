"""L_shift as a per-example loss for DP-SGD training of the denoiser.

The real side is a target released with the Gaussian mechanism (:mod:`phenodiff.privacy.dp_alignment`).
The rank of each training example's x0_hat is taken among latents that the current model generates for
the example's group (sex and age band only, so the requests are public), and the reference is refreshed
every ``refresh_steps`` calls. Generated latents are post-processing of the DP model, so each example's
term depends on that example alone and per-example clipping bounds its influence.

Features are the scaled latents themselves (x0_hat, and the training latents' posterior means times the
scaling factor), not the decode-encode features of the non-private path, which keeps the DP step cheap.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..alignment import per_sample_terms_from_reference, random_projections
from ..alignment.target import SlicedQuantileTarget
from ..utils.io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)


class DPShiftLoss:
    """Per-row L_shift terms against a released target, with ranks from model-generated reference latents.

    Args:
        target: The released target over scaled latent features.
        make_pipeline: Returns a pipeline with the current denoiser weights.
        schema: The dataset schema (for the groups' sex and age band).
        group_names: Index -> group name of the training set's ``group`` values.
        noise_scheduler: The training scheduler (for x0_hat).
        max_timestep: Terms apply only where t is below this.
        refresh_steps: Calls between reference refreshes.
        reference_size: Generated latents per group.
        inference_steps: Sampler steps for the reference.
        seed: Seeds the reference ages and noise.
    """

    def __init__(self, *, target: SlicedQuantileTarget, make_pipeline, schema, group_names, noise_scheduler, max_timestep: int,
                 refresh_steps: int = 25, reference_size: int = 32, inference_steps: int = 10, seed: int = 0):
        self.target = target
        self.make_pipeline = make_pipeline
        self.schema = schema
        self.group_names = list(group_names)
        self.noise_scheduler = noise_scheduler
        self.max_timestep = max_timestep
        self.refresh_steps = refresh_steps
        self.reference_size = reference_size
        self.inference_steps = inference_steps
        self.seed = seed
        self.calls = 0
        self.reference: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def refresh(self) -> None:
        """Generate ``reference_size`` latents per target group with the current weights and project them."""
        pipeline = self.make_pipeline()
        rng = np.random.default_rng(self.seed + self.calls)
        requests = []
        for group in self.target.group_names:
            sex, low, high = self.schema.group_bounds(group)
            requests += [(group, sex, float(age)) for age in rng.uniform(low, high, size=self.reference_size)]
        latents = pipeline(age=[r[2] for r in requests], sex=[r[1] for r in requests], num_inference_steps=self.inference_steps,
                           guidance_scale=1.0, generator=torch.Generator().manual_seed(self.seed + self.calls),
                           output_type="latent").images
        projected = latents.flatten(1).float() @ self.target.projections.to(latents.device)
        names = np.array([r[0] for r in requests])
        self.reference = {group: projected[torch.as_tensor(np.flatnonzero(names == group))] for group in self.target.group_names}

    def __call__(self, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Return one term per row (zero where t >= max_timestep or the group has no target)."""
        from .diffusion import predicted_original

        if self.calls % self.refresh_steps == 0:
            self.refresh()
        self.calls += 1
        terms = prediction.new_zeros(prediction.shape[0])
        mask = timesteps < self.max_timestep
        if not mask.any():
            return terms
        x0_hat = predicted_original(self.noise_scheduler, noisy[mask], prediction[mask], timesteps[mask])
        names = [self.group_names[int(i)] for i in groups[mask]]
        masked, covered = per_sample_terms_from_reference(x0_hat.flatten(1).float(), names, self.target, self.reference)
        return terms.index_put((torch.nonzero(mask)[:, 0],), (masked * covered).to(terms.dtype))


def save_target(target: SlicedQuantileTarget, folder: Path) -> None:
    """Write a released target (safetensors and JSON, each atomically) so that a resumed run reuses it."""
    tensors = {"projections": target.projections.contiguous(), "levels": target.levels.contiguous(),
               "quantiles": target.quantiles.contiguous()}
    atomic_write_bytes(folder / "target.safetensors", safetensors_bytes(tensors))
    atomic_write_json(folder / "groups.json", list(target.group_names))


def load_target(folder: Path) -> SlicedQuantileTarget | None:
    if not (folder / "groups.json").is_file():
        return None
    tensors = load_file(str(folder / "target.safetensors"))
    names = json.loads((folder / "groups.json").read_text(encoding="utf-8"))
    return SlicedQuantileTarget.from_released(tensors["quantiles"], projections=tensors["projections"], group_names=names,
                                              levels=tensors["levels"])


def build_dp_shift(config, latents, group_names, ledger, make_pipeline, noise_scheduler, scaling: float, schema, *,
                   folder: Path, reuse: bool) -> DPShiftLoss:
    """Release the target from the training latents (recorded in ``ledger``) and return the per-row loss.

    With ``reuse`` the target released earlier into ``folder`` is read back instead, without a new release.
    """
    cfg = config.diffusion
    target = load_target(folder) if reuse else None
    if target is not None:
        logger.info("Reusing the L_shift target released in %s.", folder)
    else:
        target = _release_target(config, latents, group_names, ledger, scaling, schema)
        save_target(target, folder)
    return DPShiftLoss(target=target, make_pipeline=make_pipeline, schema=schema, group_names=group_names,
                       noise_scheduler=noise_scheduler, max_timestep=cfg.clinical_max_timestep, seed=config.seed)


def _release_target(config, latents, group_names, ledger, scaling: float, schema) -> SlicedQuantileTarget:
    """Release the per-group quantiles of the projected, scaled training latents (recorded in ``ledger``)."""
    from ..privacy.dp_alignment import release_shift_target

    privacy = config.privacy
    if privacy.shift_epsilon <= 0:
        raise ValueError(f"Invalid privacy.shift_epsilon {privacy.shift_epsilon}: the target release needs a share > 0.")
    groups = np.array([group_names[int(i)] for i in latents.images.group])
    # Records of unknown sex or age have no group a request could name, so the target leaves them out.
    declared = np.isin(groups, schema.declared_groups())
    features = latents.latent_mean.flatten(1)[torch.as_tensor(declared)] * scaling
    projections = random_projections(features.shape[1], privacy.shift_projections, seed=config.seed)
    target, release = release_shift_target(
        features, list(groups[declared]), projections=projections, bound=privacy.shift_bound, bins=privacy.shift_bins,
        num_quantiles=privacy.shift_quantiles, epsilon=privacy.shift_epsilon, delta=ledger.delta, ledger=ledger,
        group_keys=schema.declared_groups(),
    )
    logger.info("Released the L_shift target of %d group(s): epsilon %.3g, noise std %.3g counts per bin.",
                len(target.group_names), release.epsilon, release.noise_std)
    return target
