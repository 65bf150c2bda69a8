"""Model cards for saved pipelines, rendered from ``model_cards/phenodiff_template.md``, and hub upload."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import yaml
from huggingface_hub import ModelCard, ModelCardData

from ..data.dataset import PhenoDataset
from ..data.summary import summarize
from ..utils.io import atomic_write_text

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_cards" / "phenodiff_template.md"
DATASET_LICENSES = {"ham10000": "cc-by-nc-sa-4.0"}

NO_DP_SECTION = (
    "No component was trained with differential privacy, so the model carries **no formal privacy guarantee**: "
    "epsilon is unbounded for every component that saw the training images (autoencoder, phenotype encoder, UNet). "
    "Run the memorisation audit before sharing samples or weights."
)
NO_AUDIT_SECTION = "No memorisation audit was run for this checkpoint."
NO_FAIRNESS_SECTION = "No fairness evaluation was run for this checkpoint."


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _group_table(dataset: PhenoDataset) -> str:
    train = dataset.subset((dataset.records["split"] == "train").to_numpy()) if "split" in dataset.records else dataset
    summary = summarize(train)
    table = summary.group_label_counts.copy()
    table.insert(0, "status", summary.group_sizes["status"])
    header = "| group | " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * (len(table.columns) + 1)
    rows = [f"| {group} | " + " | ".join(str(v) for v in row) + " |" for group, row in table.iterrows()]
    return "\n".join([header, rule, *rows])


def build_model_card(
    pipeline,
    *,
    config: Any,
    dataset: PhenoDataset,
    metrics: Mapping[str, Any] | None = None,
    privacy_section: str | None = None,
    audit_section: str | None = None,
    fairness_section: str | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """Render the model card of ``pipeline`` trained with ``config`` on ``dataset``."""
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(
            f"Model card template not found at {TEMPLATE_PATH}; install phenodiff from a source checkout (pip install -e .)."
        )
    schema = dataset.schema
    metrics = dict(metrics or {})
    train_records = dataset.records[dataset.records["split"] == "train"] if "split" in dataset.records else dataset.records
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    encoder = pipeline.phenotype_encoder
    card_data = ModelCardData(
        license=DATASET_LICENSES.get(schema.name, "other"),
        library_name="diffusers",
        tags=["phenodiff", "medical-imaging", "latent-diffusion", "synthetic-data", schema.name],
        datasets=[schema.name],
    )
    step = metrics.pop("global_step", "unknown")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=f"phenodiff {schema.name}",
        modality=schema.modality or "medical",
        resolution=pipeline.vae.config.sample_size,
        dataset_name=schema.name,
        dataset_description=schema.description,
        num_train_images=len(train_records),
        num_train_patients=train_records["patient_id"].nunique(),
        split_seed=config_dict.get("data", {}).get("split_seed", "unknown"),
        age_min=f"{schema.age.min:g}",
        age_max=f"{schema.age.max:g}",
        label_mode="multi-label" if schema.pathology.multi_label else "single-label",
        vocabulary=", ".join(schema.pathology.vocabulary),
        groups=", ".join(schema.declared_groups()),
        group_table=_group_table(dataset),
        scaling_factor=f"{pipeline.vae.config.scaling_factor:.4f}",
        unet_parameters=f"{sum(p.numel() for p in pipeline.unet.parameters()) / 1e6:.2f}M",
        encoder_parameters=f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.3f}M",
        prediction_type=pipeline.unet.config.get("prediction_type") or config_dict.get("diffusion", {}).get("prediction_type", "epsilon"),
        clinical_weight=config_dict.get("diffusion", {}).get("clinical_weight", 0.0),
        global_step=step,
        final_losses=", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)) or "n/a",
        training_config=yaml.safe_dump(config_dict, sort_keys=False).strip(),
        privacy_section=privacy_section or NO_DP_SECTION,
        audit_section=audit_section or NO_AUDIT_SECTION,
        fairness_section=fairness_section or NO_FAIRNESS_SECTION,
        repo_id=repo_id or "path/to/pipeline",
        example_pathology=repr([schema.pathology.vocabulary[0]] if schema.pathology.multi_label else schema.pathology.vocabulary[0]),
    )


def save_pipeline_with_card(pipeline, folder: str | os.PathLike, *, config: Any, dataset: PhenoDataset,
                            metrics: Mapping[str, Any] | None = None, **sections: Any) -> Path:
    """Save ``pipeline`` (safetensors), its ``README.md`` model card and ``training_config.yaml`` atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        card = build_model_card(pipeline, config=config, dataset=dataset, metrics=metrics, **sections)
        card.save(staging / "README.md")
        config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        (staging / "training_config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def push_pipeline_folder(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = True) -> str:
    """Upload a saved pipeline folder (weights, card, config) to the Hugging Face Hub; return the commit URL."""
    from huggingface_hub import HfApi

    from ..pipelines.pipeline_phenodiff import reject_pickle_files

    reject_pickle_files(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload phenodiff pipeline"))


def replace_card_section(card_path: str | os.PathLike, heading: str, body: str) -> None:
    """Replace the body of the card's ``## heading`` section (up to the next ``## `` heading or the end) with ``body``."""
    path = Path(card_path)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(r"(## " + re.escape(heading) + r"\n\n)(.*?)(\n\n## |\Z)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no '## {heading}' section to fill.")
    atomic_write_text(path, pattern.sub(lambda m: m.group(1) + body.strip() + m.group(3), text, count=1))
