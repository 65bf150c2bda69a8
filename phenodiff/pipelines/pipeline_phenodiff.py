"""PhenoDiffPipeline: sample images for requested phenotypes from a phenotype-conditioned latent diffusion model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from ..models.phenotype_encoder import SEX_NAMES, PhenotypeEncoder

logger = logging.get_logger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SUPPORTED_SCHEDULERS = (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler)


@dataclass
class PhenoDiffPipelineOutput(BaseOutput):
    """Output of :class:`PhenoDiffPipeline`.

    Attributes:
        images: PIL images, a numpy array (B, H, W, C) in [0, 1] or a tensor (B, C, H, W) in [0, 1].
        phenotypes: One dictionary per image with the ``age``, ``sex`` and ``pathology`` used (None where
            the attribute was left unspecified and its null token was used).
        rejected: Generated images withheld by the copy filter (0 without one); they are not in ``images``.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    phenotypes: list[dict[str, Any]]
    rejected: int = 0


class PickleCheckpointError(ValueError):
    """A checkpoint folder contains pickle weight files, which phenodiff never loads."""


def reject_pickle_files(folder: str | os.PathLike) -> None:
    """Raise :class:`PickleCheckpointError` if ``folder`` holds any pickle-format weight file."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise PickleCheckpointError(
            f"{folder} contains pickle weight files {found}. phenodiff loads only safetensors, because unpickling "
            "can run arbitrary code. Convert them with `safetensors.torch.save_file(torch.load(path, weights_only=True), "
            "path_with_.safetensors)` in a trusted environment and delete the pickle files."
        )


class PhenoDiffPipeline(DiffusionPipeline):
    r"""Generate medical images conditioned on a phenotype (age, sex, pathology labels).

    Components:
        vae (:class:`~diffusers.AutoencoderKL`): Maps images to latents and back; its ``scaling_factor``
            scales latents to unit variance.
        unet (:class:`~diffusers.UNet2DConditionModel`): Predicts noise (or v) on latents, conditioned
            through cross-attention on the phenotype tokens.
        phenotype_encoder (:class:`~phenodiff.models.PhenotypeEncoder`): Turns phenotypes into tokens.
        scheduler: :class:`~diffusers.DDPMScheduler`, :class:`~diffusers.DDIMScheduler` or
            :class:`~diffusers.DPMSolverMultistepScheduler` (DPM-Solver++).

    Load a saved pipeline with ``PhenoDiffPipeline.from_pretrained(path)``. Plain
    ``DiffusionPipeline.from_pretrained(path)`` fails (diffusers looks the class up in its own package,
    diffusers 0.42), even after ``import phenodiff``.
    """

    model_cpu_offload_seq = "phenotype_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        phenotype_encoder: PhenotypeEncoder,
        scheduler: DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler,
    ):
        super().__init__()
        if not isinstance(scheduler, SUPPORTED_SCHEDULERS):
            raise TypeError(
                f"Unsupported scheduler {type(scheduler).__name__}; use one of {[s.__name__ for s in SUPPORTED_SCHEDULERS]}."
            )
        if unet.config.cross_attention_dim != phenotype_encoder.config.cross_attention_dim:
            raise ValueError(
                f"unet.cross_attention_dim ({unet.config.cross_attention_dim}) must equal "
                f"phenotype_encoder.cross_attention_dim ({phenotype_encoder.config.cross_attention_dim})."
            )
        self.register_modules(vae=vae, unet=unet, phenotype_encoder=phenotype_encoder, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline; only safetensors weights are read and pickle files are rejected."""
        if kwargs.get("use_safetensors") is False:
            raise PickleCheckpointError("use_safetensors=False is not supported: phenodiff loads only safetensors weights.")
        kwargs["use_safetensors"] = True
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not (folder / "model_index.json").is_file():
            hint = " It looks like a training run folder: pass its pipeline/ subfolder." if (folder / "pipeline").is_dir() else ""
            raise FileNotFoundError(f"{folder} is not a saved pipeline (no model_index.json).{hint}")
        reject_pickle_files(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ phenotype parsing
    @property
    def vocabulary(self) -> list[str]:
        return list(self.phenotype_encoder.config.pathology_vocabulary)

    def _as_list(self, name: str, value: Any, is_item) -> list | None:
        if value is None:
            return None
        if is_item(value):
            return [value]
        if isinstance(value, (list, tuple)):
            return list(value)
        expected = {"age": "a number of years", "sex": "'female', 'male' or 'unknown'"}.get(name, "a value")
        raise TypeError(f"{name} must be {expected}, a list of them, or None; got {value!r}.")

    def _parse_pathology_list(self, pathology: Any) -> list | None:
        multi = self.phenotype_encoder.config.multi_label
        if pathology is None:
            return None
        if multi:
            if isinstance(pathology, str):
                return [[pathology]]
            if isinstance(pathology, (list, tuple)) and all(isinstance(p, str) for p in pathology):
                return [list(pathology)]
            if isinstance(pathology, (list, tuple)) and all(p is None or isinstance(p, (list, tuple)) for p in pathology):
                return [None if p is None else list(p) for p in pathology]
            raise TypeError(
                "pathology must be a label, a list of labels (one phenotype) or a list of label lists (one per phenotype); "
                f"got {pathology!r}."
            )
        return self._as_list("pathology", pathology, lambda v: isinstance(v, str))

    @property
    def extra_vocabularies(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in (self.phenotype_encoder.config.extra_vocabularies or {}).items()}

    def _parse_extras(self, extras: Mapping[str, Any] | None) -> dict[str, list]:
        if extras is None:
            return {}
        if not isinstance(extras, Mapping):
            raise TypeError(f"extras must be a mapping from attribute name to a value or a list of values, got {extras!r}.")
        known = self.extra_vocabularies
        parsed = {}
        for name, value in extras.items():
            if name not in known:
                raise ValueError(f"Unknown extra attribute {name!r}; this model embeds {sorted(known)}.")
            values = self._as_list(name, value, lambda v: isinstance(v, str)) or [None]
            invalid = [v for v in values if v is not None and v not in known[name]]
            if invalid:
                raise ValueError(f"Invalid value(s) {invalid} for extra attribute {name!r}; valid values are {known[name]} or None.")
            parsed[name] = values
        return parsed

    def check_phenotypes(self, age=None, sex=None, pathology=None, extras=None) -> list[dict[str, Any]]:
        """Validate and broadcast the requested phenotypes; return one dictionary per phenotype.

        Raises:
            ValueError: unknown sex or label, age outside the trained range, or lists of different lengths.
            TypeError: a value of the wrong type.
        """
        encoder = self.phenotype_encoder.config
        ages = self._as_list("age", age, lambda v: isinstance(v, Real) and not isinstance(v, bool))
        sexes = self._as_list("sex", sex, lambda v: isinstance(v, str))
        labels = self._parse_pathology_list(pathology)
        extra_lists = self._parse_extras(extras)

        lengths = {name: len(v) for name, v in (("age", ages), ("sex", sexes), ("pathology", labels), *extra_lists.items())
                   if v is not None}
        batch = max(lengths.values(), default=1)
        mismatched = {name: n for name, n in lengths.items() if n not in (1, batch)}
        if mismatched:
            raise ValueError(f"Phenotype lists must have the same length (or length 1); got lengths {lengths}.")

        phenotypes = []
        for i in range(batch):
            entry: dict[str, Any] = {"age": None, "sex": None, "pathology": None}
            if extra_lists:
                entry["extras"] = {name: values[i if len(values) > 1 else 0] for name, values in extra_lists.items()}
            if ages is not None:
                value = ages[i if len(ages) > 1 else 0]
                if value is not None:
                    if not isinstance(value, Real) or isinstance(value, bool) or math.isnan(float(value)):
                        raise TypeError(f"age must be a number of years or None, got {value!r}.")
                    if not encoder.age_min <= float(value) <= encoder.age_max:
                        raise ValueError(
                            f"age {value} is outside the trained range [{encoder.age_min:g}, {encoder.age_max:g}] years; "
                            "pass an age in that range or None to leave it unspecified."
                        )
                    entry["age"] = float(value)
            if sexes is not None:
                value = sexes[i if len(sexes) > 1 else 0]
                if value is not None:
                    if not isinstance(value, str) or value.lower() not in SEX_NAMES:
                        raise ValueError(f"sex {value!r} is invalid; valid values are {list(SEX_NAMES)} or None.")
                    entry["sex"] = value.lower()
            if labels is not None:
                value = labels[i if len(labels) > 1 else 0]
                if value is not None:
                    requested = value if isinstance(value, list) else [value]
                    unknown = [label for label in requested if label not in self.vocabulary]
                    if unknown:
                        raise ValueError(f"Unknown pathology label(s) {unknown}; valid labels are {self.vocabulary}.")
                    if not encoder.multi_label and len(requested) != 1:
                        raise ValueError(f"This model is single-label: give one label per phenotype from {self.vocabulary}.")
                    entry["pathology"] = [label for label in self.vocabulary if label in requested]
            phenotypes.append(entry)
        return phenotypes

    def phenotype_tensors(self, phenotypes: list[dict[str, Any]], device) -> dict[str, Any]:
        """Convert checked phenotypes to the keyword arguments of :meth:`PhenotypeEncoder.forward`."""
        n = len(phenotypes)
        age = torch.tensor([float("nan") if p["age"] is None else p["age"] for p in phenotypes], device=device)
        sex = torch.tensor([0 if p["sex"] is None else SEX_NAMES.index(p["sex"]) for p in phenotypes], device=device)
        pathology = torch.zeros(n, len(self.vocabulary), device=device)
        for i, p in enumerate(phenotypes):
            for label in p["pathology"] or []:
                pathology[i, self.vocabulary.index(label)] = 1.0
        given = {
            "age": torch.tensor([p["age"] is not None for p in phenotypes], device=device),
            "sex": torch.tensor([p["sex"] is not None for p in phenotypes], device=device),
            "pathology": torch.tensor([p["pathology"] is not None for p in phenotypes], device=device),
        }
        extras = {}
        for name, vocabulary in self.extra_vocabularies.items():
            if any(name in p.get("extras", {}) for p in phenotypes):
                values = [p.get("extras", {}).get(name) for p in phenotypes]
                extras[name] = torch.tensor([-1 if v is None else vocabulary.index(v) for v in values], device=device)
        return {"age": age, "sex": sex, "pathology": pathology, "extras": extras, "given": given}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        age: float | Sequence[float | None] | None = None,
        sex: str | Sequence[str | None] | None = None,
        pathology: str | Sequence[Any] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        copy_filter=None,
        extras: Mapping[str, Any] | None = None,
    ) -> PhenoDiffPipelineOutput | tuple:
        r"""Generate images for the requested phenotypes.

        Args:
            age: Age in years, a list of ages (None entries leave the age unspecified), or None.
            sex: ``"female"``, ``"male"``, ``"unknown"``, a list of these, or None.
            pathology: For multi-label models, a label, a list of labels (one phenotype; ``[]`` means no
                finding) or a list of label lists; for single-label models, a label or a list of labels.
            num_images_per_prompt: Images per phenotype.
            guidance_scale: Classifier-free guidance weight :math:`w` in
                :math:`\hat\epsilon = \epsilon_\varnothing + w(\epsilon_c - \epsilon_\varnothing)`; 1 disables it.
            num_inference_steps: Denoising steps.
            generator: Torch generator(s) for reproducible sampling.
            latents: Initial noise (B, C, h, w); drawn from ``generator`` when None.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the scaled latents, not decoded).
            return_dict: Return a :class:`PhenoDiffPipelineOutput` instead of a tuple.
            copy_filter: A :class:`~phenodiff.privacy.audit.CopyFilter`; images it flags as copies of training
                images are removed from the output and counted in ``rejected``.
            extras: Extra attribute name (e.g. ``"view_position"``) -> a value or a list of values (None leaves
                it unspecified); only attributes with a declared vocabulary are embedded.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if output_type == "latent" and copy_filter is not None:
            raise ValueError("copy_filter screens decoded images; use output_type 'pil', 'np' or 'pt' with it.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        device = self._execution_device
        phenotypes = [p for p in self.check_phenotypes(age, sex, pathology, extras) for _ in range(num_images_per_prompt)]
        batch = len(phenotypes)

        tokens = self.phenotype_encoder(**self.phenotype_tensors(phenotypes, device))
        use_guidance = guidance_scale != 1.0
        if use_guidance:
            tokens = torch.cat([self.phenotype_encoder.null_tokens(batch, device), tokens])

        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif latents.shape != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma

        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if use_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            prediction = self.unet(model_input, t, encoder_hidden_states=tokens).sample
            if use_guidance:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(prediction, t, latents, generator=generator).prev_sample

        if output_type == "latent":
            self.maybe_free_model_hooks()
            if not return_dict:
                return latents, phenotypes
            return PhenoDiffPipelineOutput(images=latents, phenotypes=phenotypes, rejected=0)

        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        rejected = 0
        if copy_filter is not None:
            decision = copy_filter((images.float().cpu() + 1.0) / 2.0)
            keep = torch.as_tensor(decision.keep)
            rejected = int(decision.n_rejected)
            images = images[keep.to(images.device)]
            phenotypes = [p for p, kept in zip(phenotypes, keep.tolist()) if kept]
            if rejected:
                logger.warning("Copy filter withheld %d of %d generated images.", rejected, decision.n_total)
        if len(images):
            images = self.image_processor.postprocess(images, output_type=output_type)
        elif output_type == "pil":
            images = []
        elif output_type == "np":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, phenotypes
        return PhenoDiffPipelineOutput(images=images, phenotypes=phenotypes, rejected=rejected)
