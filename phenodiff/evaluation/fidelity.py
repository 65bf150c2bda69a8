"""Conditional fidelity of a generator: does an independent classifier see the requested phenotype?

A classifier trained on real training images only (never on generated ones) scores images generated for
requested phenotypes. Its agreement with the request is reported next to its accuracy on real test images,
which bounds what a perfect generator could reach, and next to chance. A Frechet distance between the
classifier's features of generated and real test images, and between real training and real test images
as a reference floor, measure how realistic the images look to the same network.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ..alignment.evaluation import frechet_distance
from ..classifier import PhenoClassifier
from ..classifier.data import SyntheticImageDataset
from ..classifier.predict import make_loader, predict
from ..classifier.train import TrainConfig as ClassifierTrainConfig
from ..classifier.train import train_classifier
from ..data.dataset import PhenoDataset
from ..data.torch_dataset import PhenoTorchDataset

logger = logging.getLogger(__name__)


@dataclass
class FidelityReport:
    """Scores of an independent classifier on real test images and on generated images.

    For single-label schemas the accuracies are class-balanced (mean per-class recall), because the
    generated set requests every class equally and chance is 1 / number of classes. For multi-label
    schemas the scores are the mean per-label AUROC (chance 0.5).
    """

    metric: str
    chance: float
    real_test: float
    generated: float
    per_class_real: dict[str, float]
    per_class_generated: dict[str, float]
    frechet_generated_vs_test: float
    frechet_train_vs_test: float
    num_generated: int
    scorer_backbone: str
    scorer_epochs: int | None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _features(model: PhenoClassifier, dataset, batch_size: int = 128) -> np.ndarray:
    model.eval()
    return torch.cat([model.features(batch["pixel_values"]) for batch in make_loader(dataset, batch_size=batch_size)]).numpy()


def requested_phenotypes(dataset: PhenoDataset, *, num_images: int, seed: int) -> list[dict]:
    """Phenotypes to generate, drawn from the test split.

    Single-label: the same number per class, each with the age and sex of a random test record of that
    class (any record when the class has none in test). Multi-label: random test records' phenotypes.
    """
    rng = np.random.default_rng(seed)
    schema = dataset.schema
    test = dataset.records[dataset.records["split"] == "test"]
    requests = []
    if schema.pathology.multi_label:
        for index in rng.choice(len(test), size=num_images, replace=len(test) < num_images):
            row = test.iloc[index]
            requests.append({"age": row["age"], "sex": row["sex"], "pathology": list(row["pathology"])})
    else:
        per_class = max(1, num_images // len(schema.pathology.vocabulary))
        for label in schema.pathology.vocabulary:
            pool = test[test["pathology"].map(lambda p: label in p)]
            pool = pool if len(pool) else test
            for index in rng.choice(len(pool), size=per_class, replace=True):
                row = pool.iloc[index]
                requests.append({"age": row["age"], "sex": row["sex"], "pathology": label})
    for request in requests:
        age = request["age"]
        request["age"] = None if age is None or np.isnan(age) else float(np.clip(age, schema.age.min, schema.age.max))
        request["sex"] = None if request["sex"] == "unknown" else request["sex"]
    return requests


def requests_like_training(dataset: PhenoDataset, *, count: int, seed: int) -> tuple[list[dict], list[str]]:
    """Draw ``count`` phenotypes of random training records (with replacement) and their groups.

    This is the real phenotype distribution of the training split, which plain augmentation samples from
    and the memorisation audit generates for.
    """
    schema = dataset.schema
    records = dataset.records[dataset.records["split"] == "train"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    requests, groups = [], []
    for index in rng.choice(len(records), size=count, replace=True):
        row = records.iloc[index]
        labels = list(row["pathology"])
        age = None if np.isnan(row["age"]) else float(np.clip(row["age"], schema.age.min, schema.age.max))
        requests.append({"age": age, "sex": None if row["sex"] == "unknown" else row["sex"],
                         "pathology": labels if schema.pathology.multi_label else labels[0]})
        groups.append(str(row["group"]))
    return requests, groups


@torch.no_grad()
def generate_for_requests(pipeline, requests: list[dict], *, batch_size: int, num_inference_steps: int,
                          guidance_scale: float, seed: int) -> torch.Tensor:
    """Generate one image per request; return (N, C, H, W) floats in [0, 1]."""
    images = []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        output = pipeline(
            age=[r["age"] for r in chunk],
            sex=[r["sex"] for r in chunk],
            pathology=[r["pathology"] for r in chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        )
        images.append(output.images.float().cpu())
    return torch.cat(images)


def conditional_fidelity(
    pipeline,
    dataset: PhenoDataset,
    *,
    resolution: int,
    num_images: int = 350,
    scorer_backbone: str = "resnet18",
    scorer_epochs: int = 15,
    num_inference_steps: int = 50,
    guidance_scale: float = 2.0,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[FidelityReport, torch.Tensor, list[dict]]:
    """Train the scorer on real training images, then score real test images and generated images.

    Returns the report, the generated images (N, C, H, W) in [0, 1] and the requests they were made for.
    """
    schema = dataset.schema
    train = PhenoTorchDataset(dataset, "train", resolution=resolution, value_range="0,1")
    scorer = PhenoClassifier.from_schema(schema, backbone=scorer_backbone, seed=seed)
    train_classifier(scorer, train, config=ClassifierTrainConfig(epochs=scorer_epochs, seed=seed, progress=False))

    requests = requested_phenotypes(dataset, num_images=num_images, seed=seed)
    images = generate_for_requests(pipeline, requests, batch_size=batch_size, num_inference_steps=num_inference_steps,
                                   guidance_scale=guidance_scale, seed=seed)
    report = score_generated(scorer, dataset, images, requests, resolution=resolution, scorer_epochs=scorer_epochs)
    return report, images, requests


def requests_to_multi_hot(requests: list[dict], vocabulary: list[str]) -> torch.Tensor:
    """Return the (N, L) multi-hot labels of phenotype requests (a label name or a list of names each)."""
    requested = torch.zeros(len(requests), len(vocabulary))
    for i, request in enumerate(requests):
        labels = request["pathology"] if isinstance(request["pathology"], (list, tuple)) else [request["pathology"]]
        for label in labels:
            requested[i, vocabulary.index(label)] = 1.0
    return requested


def score_generated(scorer: PhenoClassifier, dataset: PhenoDataset, images: torch.Tensor, requests: list[dict], *,
                    resolution: int, scorer_epochs: int | None = None) -> FidelityReport:
    """Score generated images (N, C, H, W) in [0, 1] against their requests with a classifier trained on real images only.

    The scorer must never have seen generated images. Its score on the real test split is reported beside the
    score on the generated images, and the Frechet distance uses its penultimate features.
    """
    schema = dataset.schema
    train = PhenoTorchDataset(dataset, "train", resolution=resolution, value_range="0,1", progress=False)
    test = PhenoTorchDataset(dataset, "test", resolution=resolution, value_range="0,1", progress=False)
    vocabulary = list(schema.pathology.vocabulary)
    requested = requests_to_multi_hot(requests, vocabulary)
    generated = SyntheticImageDataset(pixel_values=images, pathology=requested, groups=[test.groups[0]] * len(requests),
                                      group_names=test.groups)

    real_predictions = predict(scorer, test)
    generated_predictions = predict(scorer, generated)
    if schema.pathology.multi_label:
        metric, chance = "mean per-label AUROC", 0.5
        real_scores = _per_label_auroc(real_predictions.probabilities.numpy(), real_predictions.targets.numpy(), vocabulary)
        generated_scores = _per_label_auroc(generated_predictions.probabilities.numpy(), requested.numpy(), vocabulary)
    else:
        metric, chance = "balanced accuracy", 1.0 / len(vocabulary)
        real_scores = _per_class_recall(real_predictions, vocabulary)
        generated_scores = _per_class_recall(generated_predictions, vocabulary)
    real_value = float(np.nanmean(list(real_scores.values())))
    generated_value = float(np.nanmean(list(generated_scores.values())))

    test_features = _features(scorer, test)
    report = FidelityReport(
        metric=metric,
        chance=chance,
        real_test=real_value,
        generated=generated_value,
        per_class_real=real_scores,
        per_class_generated=generated_scores,
        frechet_generated_vs_test=float(frechet_distance(test_features, _features(scorer, generated))),
        frechet_train_vs_test=float(frechet_distance(test_features, _features(scorer, train))),
        num_generated=len(requests),
        scorer_backbone=scorer.config["backbone"],
        scorer_epochs=scorer_epochs,
    )
    logger.info("Conditional fidelity (%s): generated %.3f, real test %.3f, chance %.3f", metric, generated_value, real_value, chance)
    return report


def _per_label_auroc(probabilities: np.ndarray, targets: np.ndarray, vocabulary: list[str]) -> dict[str, float]:
    scores = {}
    for j, label in enumerate(vocabulary):
        column = targets[:, j]
        scores[label] = float(roc_auc_score(column, probabilities[:, j])) if 0 < column.sum() < len(column) else float("nan")
    return scores


def _per_class_recall(predictions, vocabulary: list[str]) -> dict[str, float]:
    predicted = predictions.probabilities.argmax(dim=1).numpy()
    targets = predictions.targets.numpy()
    targets = targets.argmax(axis=1) if targets.ndim == 2 else targets
    recalls = {}
    for j, label in enumerate(vocabulary):
        mask = targets == j
        recalls[label] = float((predicted[mask] == j).mean()) if mask.any() else float("nan")
    return recalls
