"""The protocol: baseline vs plain augmentation vs the full system on one dataset, for several seeds.

For each seed, in order (each stage writes its result file last, so a rerun reuses finished stages and
generator training resumes from its latest checkpoint):

1. ``baseline``: the classifier on the real training images.
2. ``autoencoder``: the AutoencoderKL that both generators of the seed share, unless the full system
   gives its autoencoder a DP share (``privacy.autoencoder_epsilon``), which then trains its own. With
   ``autoencoder_data: public_phantom`` it is trained once on a separate phantom draw and shared by all
   seeds, and ``public_pretraining_steps`` adds a denoiser pretrained there without DP, which the full
   system then fine-tunes with DP (Lyu et al., 2023).
3. ``plain``: a conditional LDM without DP, alignment or fairness terms. Its synthetic images follow the
   real phenotype distribution, and the ``augmented`` classifier trains on real + synthetic images.
4. ``full``: the generator with the ``full`` overrides (DP, continuous audit, ...). Its synthetic images
   are planned to balance the (group, label) cells and screened by the release filter, which counts the
   flagged images and never writes them. Then the ``full`` classifier trains with the bias penalty, and
   MC-dropout deferral is evaluated.

Every arm uses the same split manifest, image size, classifier and classifier budget.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from ..alignment import evaluate_alignment
from ..classifier import PhenoClassifier, with_synthetic
from ..data.torch_dataset import PhenoTorchDataset
from ..evaluation.fidelity import score_generated
from ..privacy.audit.pipeline_audit import audit_generated, audit_section
from ..synthesis import plan_synthesis, real_cell_counts
from ..training.config import TrainConfig
from ..training.data import prepare_dataset
from ..utils.io import atomic_write_json, atomic_write_text
from .config import ProtocolSettings, arm_config, load_protocol_config
from .evaluate import classifier_features, evaluate_arm, train_arm_classifier
from .synthetic import SyntheticSet, generate_set, requests_from_plan, requests_like_training

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
PUBLIC_PHANTOM_SEED_OFFSET = 100_003


def _cached(folder: Path, compute: Callable[[], dict]) -> dict:
    """Return ``folder/result.json`` when a finished run left it there; else compute, time and write it."""
    path = folder / RESULT_FILE
    if path.is_file():
        logger.info("Reusing %s", path)
        return json.loads(path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = compute()
    result["wall_seconds"] = time.perf_counter() - start
    result["machine"] = {"host": platform.node(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                         "cpu_count": os.cpu_count()}
    atomic_write_json(path, result)
    return result


def machine_description() -> dict:
    """Return the machine, the library versions and the git commit of the phenodiff checkout (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }


class Protocol:
    """One protocol run folder; :meth:`run` executes or resumes every stage for the given seeds."""

    def __init__(self, config_path: str | Path, output_dir: str | Path, *, data_dir: str | None = None):
        self.config_path = Path(config_path)
        self.base, self.settings = load_protocol_config(self.config_path)
        if data_dir is not None:
            self.base.data.data_dir = str(data_dir)
        self.output_dir = Path(output_dir)
        self._check_config_matches()
        data_folder = self.output_dir / "data"
        self.dataset = prepare_dataset(self.base.data, data_folder)
        self.split_manifest = data_folder / "split_manifest.json"
        if self.base.data.data_dir is None and self.base.data.array_file is None:
            self.base.data.data_dir = str(data_folder / "phantom-data")
        self.schema = self.dataset.schema
        resolution = self.base.data.resolution
        self.splits = {split: PhenoTorchDataset(self.dataset, split, resolution=resolution, value_range="0,1", progress=False)
                       for split in ("train", "val", "test")}
        self.stage_results = {}

    # ------------------------------------------------------------------------------------------- set-up
    def _resolved_config(self) -> dict:
        return {"generator": self.base.to_dict(), "protocol": self.settings.to_dict()}

    def _check_config_matches(self) -> None:
        """Write the config file's settings into the run folder, or check that they match the ones already there.

        The comparison covers what the file (and ``--data-dir``) set, so that a new option with a default in
        a later phenodiff version does not invalidate finished stages.
        """
        path = self.output_dir / "requested_config.yaml"
        requested = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        requested.setdefault("data", {})["data_dir"] = self.base.data.data_dir
        if path.is_file():
            if yaml.safe_load(path.read_text(encoding="utf-8")) != requested:
                raise ValueError(
                    f"{self.output_dir} contains a protocol run made with another config ({path}); its stages cannot be reused. "
                    "Pass another --output-dir, or delete that folder to start again."
                )
        else:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, yaml.safe_dump(requested, sort_keys=False))
        atomic_write_text(self.output_dir / "config.yaml", yaml.safe_dump(self._resolved_config(), sort_keys=False))

    def _arm_config(self, overrides: dict, folder: Path, seed: int) -> TrainConfig:
        config = arm_config(self.base, overrides, output_dir=folder, seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        # Every generator reads the protocol's split manifest.
        if not (folder / "split_manifest.json").is_file():
            shutil.copyfile(self.split_manifest, folder / "split_manifest.json")
        return config

    def _public_phantom(self) -> Path:
        from ..data.phantom import PhantomConfig, generate_phantom

        seed = self.base.data.split_seed + PUBLIC_PHANTOM_SEED_OFFSET
        return generate_phantom(self.output_dir / "data" / "public-phantom",
                                PhantomConfig(num_patients=self.base.data.phantom_patients, seed=seed))

    def _public_data_description(self) -> str:
        seed = self.base.data.split_seed + PUBLIC_PHANTOM_SEED_OFFSET
        return (f"a separate draw of the phenodiff phantom ({self.base.data.phantom_patients} patients, generator seed {seed}), "
                "none of whose images are in the private set")

    # ------------------------------------------------------------------------------------------- stages
    def _train_classifier(self, folder: Path, train_data, *, lambda_bias: float, seed: int) -> dict:
        def compute():
            model, training = train_arm_classifier(self.schema, train_data, self.settings.classifier, lambda_bias=lambda_bias, seed=seed)
            model.save(folder / "classifier")
            metrics = evaluate_arm(model, self.splits["val"], self.splits["test"], self.settings.classifier, seed=seed,
                                   min_group_size=self.schema.groups.min_group_size)
            return {"training": training, "test": metrics}

        return _cached(folder, compute)

    def _autoencoder(self, seed_dir: Path, seed: int, *, overrides: dict | None = None, name: str = "autoencoder") -> Path:
        """Train (or reuse) the seed's autoencoder; one trained on the public phantom is shared by all seeds.

        With ``overrides`` (the full system's, when it gives the autoencoder a DP share) the autoencoder is
        trained with those settings into ``seed_dir/name``.
        """
        from ..training.autoencoder import train_autoencoder

        public = self.settings.autoencoder_data == "public_phantom" and overrides is None
        folder = self.output_dir / "public" / "autoencoder" if public else seed_dir / name

        def compute():
            if public:
                config = arm_config(self.base, {"data": {"data_dir": str(self._public_phantom()), "array_file": None}}, output_dir=folder,
                                    seed=self.base.seed)
            else:
                config = self._arm_config(overrides or {}, folder, seed)
            train_autoencoder(config, resume_from_checkpoint="latest")
            metrics = json.loads((folder / "autoencoder" / "metrics.json").read_text(encoding="utf-8"))
            return {"metrics": metrics, "trained_on": self.settings.autoencoder_data}

        self.stage_results[name] = _cached(folder, compute)
        return folder / "autoencoder" / "model"

    def _public_denoiser(self, vae_path: Path) -> Path:
        """Pretrain a denoiser without DP on the public phantom (shared by all seeds) for DP fine-tuning."""
        from ..training.diffusion import train_diffusion

        folder = self.output_dir / "public" / "denoiser"
        overrides = {"data": {"data_dir": str(self._public_phantom()), "array_file": None}, "privacy": {"enabled": False},
                     "diffusion": {"max_train_steps": self.settings.public_pretraining_steps}}
        config = arm_config(self.base, overrides, output_dir=folder, seed=self.base.seed)

        def compute():
            train_diffusion(config, resume_from_checkpoint="latest", pretrained_vae_path=str(vae_path))
            return {"steps": self.settings.public_pretraining_steps, "trained_on": self._public_data_description()}

        self.stage_results["public_denoiser"] = _cached(folder, compute)
        return folder / "pipeline"

    def _generator(self, folder: Path, overrides: dict, vae_path: Path, seed: int) -> dict:
        from ..training.diffusion import train_diffusion

        if self.settings.autoencoder_data == "public_phantom":
            overrides = {**overrides, "privacy": {**overrides.get("privacy", {}), "public_data": self._public_data_description()}}
        config = self._arm_config(overrides, folder, seed)

        def compute():
            train_diffusion(config, resume_from_checkpoint="latest", pretrained_vae_path=str(vae_path))
            privacy_path = folder / "diffusion" / "privacy.json"
            privacy = json.loads(privacy_path.read_text(encoding="utf-8")) if privacy_path.is_file() else None
            return {"config": config.to_dict(), "privacy": privacy}

        return _cached(folder / "training", compute)

    def _load_pipeline(self, folder: Path):
        from ..pipelines import PhenoDiffPipeline

        pipeline = PhenoDiffPipeline.from_pretrained(folder / "pipeline", use_safetensors=True)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _evaluate_generator(self, folder: Path, *, requests, groups, scorer: PhenoClassifier, seed: int, release_filter: bool) -> dict:
        """Generate the synthetic set, audit it, screen it when ``release_filter``, score it and save what is released."""
        def compute():
            pipeline = self._load_pipeline(folder)
            synthetic = generate_set(pipeline, requests, groups, settings=self.settings.synthesis, seed=seed)
            result = {"requested": len(synthetic)}
            if len(synthetic):
                report, flags = audit_generated(pipeline, self.dataset, synthetic.images, synthetic.groups,
                                                resolution=self.base.data.resolution,
                                                false_flag_rate=self.settings.synthesis.audit_false_flag_rate,
                                                delta_pi=self.settings.synthesis.audit_delta_pi, seed=seed)
                result["audit"] = report.to_dict()
                result["audit_card_section"] = audit_section(report)
                fidelity = score_generated(scorer, self.dataset, synthetic.images, synthetic.requests,
                                           resolution=self.base.data.resolution, scorer_epochs=self.settings.classifier.epochs)
                result["fidelity"] = fidelity.to_dict()
                train = self.splits["train"]
                real_groups = [train.groups[int(i)] for i in train.group]
                # Groups with fewer than 2 images on either side get no distance; the counts show which are small.
                try:
                    result["alignment"] = evaluate_alignment(
                        classifier_features(scorer, train.pixel_values), real_groups, classifier_features(scorer, synthetic.images),
                        synthetic.groups, seed=seed, min_group_size=2,
                    )
                except ValueError as err:
                    logger.warning("No alignment metrics for %s: %s", folder, err)
                    result["alignment"] = {"error": str(err)}
                if release_filter:
                    synthetic = synthetic.subset(~flags)
                result["rejected"] = int(flags.sum()) if release_filter else 0
            result["released"] = len(synthetic)
            synthetic.save(folder / "synthetic")
            return result

        return _cached(folder / "synthetic", compute)

    def run_seed(self, seed: int) -> dict:
        seed_dir = self.output_dir / f"seed-{seed}"
        stages = {}
        train, schema = self.splits["train"], self.schema
        vocabulary, group_names = list(schema.pathology.vocabulary), list(train.groups)
        budget = int(round(self.settings.synthesis.budget_fraction * len(train)))

        stages["baseline"] = self._train_classifier(seed_dir / "baseline", train, lambda_bias=0.0, seed=seed)
        scorer = PhenoClassifier.load(seed_dir / "baseline" / "classifier")
        vae_path = self._autoencoder(seed_dir, seed)
        stages["autoencoder"] = self.stage_results["autoencoder"]

        # Arm 2: plain conditional LDM, phenotypes drawn like the training records.
        plain = seed_dir / "plain"
        stages["plain_generator"] = self._generator(plain, self.settings.plain, vae_path, seed)
        requests, groups = requests_like_training(self.dataset, count=budget, seed=seed)
        stages["plain_synthetic"] = self._evaluate_generator(plain, requests=requests, groups=groups, scorer=scorer, seed=seed,
                                                              release_filter=False)
        augmented = SyntheticSet.load(plain / "synthetic").to_dataset(vocabulary, group_names)
        stages["augmented"] = self._train_classifier(seed_dir / "augmented", with_synthetic(train, augmented), lambda_bias=0.0, seed=seed)

        # Arm 3: the full system, with images planned to fill the under-represented cells.
        full = seed_dir / "full"
        full_overrides = self.settings.full
        if self.settings.public_pretraining_steps:
            pretrained = self._public_denoiser(vae_path)
            stages["public_denoiser"] = self.stage_results["public_denoiser"]
            full_overrides = {**full_overrides, "privacy": {**full_overrides.get("privacy", {}), "pretrained_pipeline": str(pretrained)}}
        full_vae = vae_path
        privacy = arm_config(self.base, full_overrides, output_dir=full, seed=seed).privacy
        if privacy.enabled and privacy.autoencoder_epsilon is not None and self.settings.autoencoder_data == "train_split":
            full_vae = self._autoencoder(seed_dir, seed, overrides=full_overrides, name="full_autoencoder")
            stages["full_autoencoder"] = self.stage_results["full_autoencoder"]
        stages["full_generator"] = self._generator(full, full_overrides, full_vae, seed)
        plan = plan_synthesis(real_cell_counts(self.dataset), budget=budget, target=self.settings.synthesis.plan_target, schema=schema)
        requests, groups = requests_from_plan(plan, self.dataset, seed=seed)
        stages["full_synthetic"] = self._evaluate_generator(full, requests=requests, groups=groups, scorer=scorer, seed=seed,
                                                             release_filter=True)
        released = SyntheticSet.load(full / "synthetic")
        realised = {}
        for request, group in zip(released.requests, released.groups):
            realised[(group, request["cell"])] = realised.get((group, request["cell"]), 0) + 1
        plan.save(full, realised=realised)
        stages["full"] = self._train_classifier(seed_dir / "full", with_synthetic(train, released.to_dataset(vocabulary, group_names)),
                                                lambda_bias=self.settings.classifier.lambda_bias, seed=seed)
        return stages

    def run(self, seeds: list[int]) -> dict:
        """Run or resume every seed, then write metrics.json, tables.md, the figures and the model card."""
        from .report import write_report

        start = time.perf_counter()
        results = {}
        for seed in seeds:
            logger.info("Protocol seed %d: %s", seed, self.output_dir / f"seed-{seed}")
            results[seed] = self.run_seed(seed)
        return write_report(self, results, wall_seconds=time.perf_counter() - start)


def run_protocol(config_path: str | Path, *, seeds: list[int], output_dir: str | Path, data_dir: str | None = None) -> dict:
    """Run the three-arm protocol (see the module docstring) and return the metrics written to ``metrics.json``."""
    return Protocol(config_path, output_dir, data_dir=data_dir).run(seeds)
