import pytest
import torch

from phenodiff.classifier import (
    PhenoClassifier,
    SyntheticImageDataset,
    TrainConfig,
    evaluate_classifier,
    predict,
    task_from_schema,
    train_classifier,
    with_synthetic,
)
from phenodiff.data.schema import PhenotypeSchema

# Narrow variants of the tested backbones, so each test runs in about a second on two CPU cores.
TINY_BACKBONES = {
    "resnet18": {"channels": (8, 16, 32, 64)},
    "efficientnet_b0": {},
    "convnext_atto": {"dims": (8, 16, 32, 64)},
}
GROUPS = ["female 18-40", "male 18-40", "female 40-65"]


def quadrant_dataset(count: int, *, seed: int = 0, size: int = 32) -> SyntheticImageDataset:
    """Images whose label l is present exactly when quadrant l is bright, with three groups."""
    generator = torch.Generator().manual_seed(seed)
    pathology = (torch.rand(count, 3, generator=generator) < 0.4).float()
    images = 0.2 * torch.rand(count, 1, size, size, generator=generator)
    half = size // 2
    corners = [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, size)), (slice(half, size), slice(0, half))]
    for label, (rows, columns) in enumerate(corners):
        images[pathology[:, label] == 1, :, rows, columns] += 0.7
    groups = [GROUPS[i % len(GROUPS)] for i in range(count)]
    return SyntheticImageDataset(pixel_values=images, pathology=pathology, groups=groups, group_names=GROUPS)


def warm_up_batch_norm(model: PhenoClassifier, images: torch.Tensor) -> None:
    # Random-init BatchNorm running statistics make some trunks output features near 1e-7 in eval mode.
    # A few train-mode passes set realistic statistics, as any training would.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(images)
    model.eval()


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_mc_dropout_random_with_dropout(backbone):
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    model = PhenoClassifier(num_outputs=3, backbone=backbone, backbone_kwargs=TINY_BACKBONES[backbone], dropout=0.5, seed=0)
    warm_up_batch_norm(model, images)
    running_means = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    with torch.no_grad():
        logits = model.mc_logits(images, num_passes=8)

    assert logits.shape == (8, 4, 3)
    spread = logits.std(dim=0).mean()
    scale = logits.abs().mean()
    assert float(spread) > 1e-3 * float(scale)
    assert not model.training
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(before, now) for before, now in zip(running_means, after))


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_mc_dropout_constant_without_dropout(backbone):
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    model = PhenoClassifier(num_outputs=3, backbone=backbone, backbone_kwargs=TINY_BACKBONES[backbone], dropout=0.0, seed=0)
    warm_up_batch_norm(model, images)
    with torch.no_grad():
        logits = model.mc_logits(images, num_passes=6)
        single = model(images)
    assert float(logits.var(dim=0).max()) == 0.0
    assert torch.allclose(logits[0], single, atol=1e-6)


def test_mc_logits_restore_training_mode():
    model = PhenoClassifier(num_outputs=2, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    model.train()
    with torch.no_grad():
        model.mc_logits(torch.rand(2, 1, 32, 32), num_passes=2)
    assert model.training
    assert model.trunk.training
    with pytest.raises(ValueError, match="num_passes"):
        model.mc_logits(torch.rand(2, 1, 32, 32), num_passes=0)


def test_classifier_seed_fixes_weights():
    first = PhenoClassifier(num_outputs=2, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=5)
    second = PhenoClassifier(num_outputs=2, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=5)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        PhenoClassifier(num_outputs=2, task="regression")
    with pytest.raises(ValueError, match="dropout"):
        PhenoClassifier(num_outputs=2, dropout=1.0)
    with pytest.raises(ValueError, match="drop_rate"):
        PhenoClassifier(num_outputs=2, backbone_kwargs={"drop_rate": 0.1})
    with pytest.raises(ValueError, match="Unknown timm backbone"):
        PhenoClassifier(num_outputs=2, backbone="not_a_model")


def test_task_follows_schema():
    assert task_from_schema(PhenotypeSchema.builtin("phantom")) == ("multi_label", 3)
    ham = PhenotypeSchema.builtin("ham10000")
    task, outputs = task_from_schema(ham)
    assert task == "single_label"
    assert outputs == len(ham.pathology.vocabulary)
    model = PhenoClassifier.from_schema(ham, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"])
    assert model.trunk.conv1.in_channels == ham.channels


def test_task_losses_match_torch():
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    multi = PhenoClassifier(num_outputs=3, task="multi_label", backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"])
    single = PhenoClassifier(num_outputs=3, task="single_label", backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(multi.task_loss(logits, targets), expected)
    assert torch.allclose(single.task_loss(logits, torch.tensor([2])), torch.nn.functional.cross_entropy(logits, torch.tensor([2])))
    assert torch.allclose(single.probabilities(logits).sum(), torch.tensor(1.0))


def test_single_label_rejects_missing_label():
    model = PhenoClassifier(num_outputs=3, task="single_label", backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"])
    with pytest.raises(ValueError, match="label -1"):
        model.targets_from_batch({"label": torch.tensor([0, -1])})


def test_save_and_load_round_trip(tmp_path):
    model = PhenoClassifier(num_outputs=3, backbone="convnext_atto", backbone_kwargs=TINY_BACKBONES["convnext_atto"], seed=1).eval()
    model.save(tmp_path / "clf")
    loaded = PhenoClassifier.load(tmp_path / "clf").eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(images), loaded(images))
    assert (tmp_path / "clf" / "classifier.safetensors").is_file()


def test_training_reduces_loss():
    data = quadrant_dataset(96, seed=0)
    config = TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3, seed=0, progress=False)
    model = PhenoClassifier(num_outputs=3, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    history = train_classifier(model, data, config=config, val_data=quadrant_dataset(48, seed=1))
    losses = [epoch["task_loss"] for epoch in history.epochs]
    assert losses[-1] < losses[0]
    # Predicting every label absent scores about 0.6 here (prevalence 0.4), so 0.7 needs learned features.
    assert history.last()["val_accuracy"] > 0.7
    assert not model.training


def test_training_is_seeded():
    data = quadrant_dataset(32, seed=0)
    config = TrainConfig(epochs=1, batch_size=8, seed=3, progress=False)

    def run():
        model = PhenoClassifier(num_outputs=3, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
        return train_classifier(model, data, config=config).last()

    first, second = run(), run()
    assert second["loss"] == pytest.approx(first["loss"], rel=1e-6)
    assert second["bias_soft"] == pytest.approx(first["bias_soft"], rel=1e-6)


def test_training_with_bias_penalty_records_it():
    data = quadrant_dataset(48, seed=2)
    model = PhenoClassifier(num_outputs=3, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    history = train_classifier(model, data, config=TrainConfig(epochs=1, batch_size=16, lambda_bias=1.0, progress=False))
    record = history.last()
    assert record["bias_soft"] > 0
    assert record["loss"] == pytest.approx(record["task_loss"] + record["bias_soft"], rel=1e-5)


def test_evaluate_classifier_reports_groups():
    model = PhenoClassifier(num_outputs=3, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    scores = evaluate_classifier(model, quadrant_dataset(30, seed=3), min_group_size=20)
    assert set(scores["group_accuracy"]) == set(GROUPS)
    assert scores["small_groups"] == sorted(GROUPS)
    assert 0.0 <= scores["bias_gap"] <= 1.0


def test_predict_returns_dataset_order():
    data = quadrant_dataset(10, seed=4)
    model = PhenoClassifier(num_outputs=3, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    outputs = predict(model, data, batch_size=4)
    assert outputs.probabilities.shape == (10, 3)
    assert torch.equal(outputs.targets, data.pathology)
    assert outputs.group_name_list() == [GROUPS[i % 3] for i in range(10)]


def test_with_synthetic_checks_groups():
    real = quadrant_dataset(6, seed=5)
    synthetic = quadrant_dataset(4, seed=6)
    combined = with_synthetic(real, synthetic)
    assert len(combined) == 10
    assert combined.groups == GROUPS
    other = SyntheticImageDataset(
        pixel_values=torch.zeros(1, 1, 32, 32), pathology=torch.zeros(1, 3), groups=["a"], group_names=["a"]
    )
    with pytest.raises(ValueError, match="groups"):
        with_synthetic(real, other)
    with pytest.raises(ValueError, match="Unknown group"):
        SyntheticImageDataset(pixel_values=torch.zeros(1, 1, 8, 8), pathology=torch.zeros(1, 3), groups=["b"], group_names=["a"])


def test_single_label_training_and_prediction():
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 4, (24,), generator=generator)
    data = SyntheticImageDataset(
        pixel_values=torch.rand(24, 1, 32, 32, generator=generator),
        pathology=torch.nn.functional.one_hot(labels, 4).float(),
        groups=[GROUPS[i % 3] for i in range(24)],
        group_names=GROUPS,
    )
    model = PhenoClassifier(num_outputs=4, task="single_label", backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    history = train_classifier(model, data, config=TrainConfig(epochs=1, batch_size=8, lambda_bias=0.5, progress=False))
    assert history.last()["bias_soft"] > 0
    outputs = predict(model, data)
    assert torch.equal(outputs.targets, labels)
    assert torch.allclose(outputs.probabilities.sum(dim=1), torch.ones(24), atol=1e-5)


def test_training_on_real_plus_synthetic(tmp_path):
    from phenodiff.data import load_or_make_split, load_pheno_dataset
    from phenodiff.data.phantom import PhantomConfig, generate_phantom
    from phenodiff.data.torch_dataset import PhenoTorchDataset

    folder = generate_phantom(tmp_path / "phantom", PhantomConfig(num_patients=40, image_size=32, seed=0))
    dataset = load_pheno_dataset("phantom", folder)
    load_or_make_split(dataset, tmp_path / "split.json", seed=0)
    real = PhenoTorchDataset(dataset, "train", resolution=32, value_range="0,1", progress=False)
    synthetic = SyntheticImageDataset(
        pixel_values=torch.rand(8, 1, 32, 32),
        pathology=torch.zeros(8, 3),
        groups=[real.groups[0]] * 8,
        group_names=real.groups,
    )
    combined = with_synthetic(real, synthetic)
    model = PhenoClassifier.from_schema(dataset.schema, backbone="resnet18", backbone_kwargs=TINY_BACKBONES["resnet18"], seed=0)
    history = train_classifier(model, combined, config=TrainConfig(epochs=1, batch_size=16, lambda_bias=1.0, progress=False))
    assert len(combined) == len(real) + 8
    assert history.last()["task_loss"] > 0
    scores = evaluate_classifier(model, PhenoTorchDataset(dataset, "val", resolution=32, value_range="0,1", progress=False))
    assert set(scores["group_accuracy"]) <= set(real.groups)


def test_training_with_single_image_last_batch():
    """A training set of 2k + 1 images does not end in a one-image batch that BatchNorm rejects."""
    from phenodiff.classifier import PhenoClassifier, train_classifier
    from phenodiff.classifier.data import SyntheticImageDataset
    from phenodiff.classifier.train import TrainConfig

    images = torch.rand(5, 1, 16, 16)
    pathology = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1], [1, 1]])
    data = SyntheticImageDataset(pixel_values=images, pathology=pathology, groups=["g"] * 5, group_names=["g"])
    model = PhenoClassifier(num_outputs=2, task="multi_label", backbone="resnet18", in_chans=1, seed=0)
    history = train_classifier(model, data, config=TrainConfig(epochs=1, batch_size=2, progress=False))
    assert len(history.epochs) == 1
