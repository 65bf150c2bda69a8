import math

import pytest
import torch

from phenodiff.models import PhenotypeEncoder

VOCAB = ["cardiomegaly", "effusion", "nodule"]


def make_encoder(**kwargs):
    torch.manual_seed(0)
    defaults = dict(pathology_vocabulary=VOCAB, multi_label=True, cross_attention_dim=16, age_min=18, age_max=90, attribute_dropout=0.5)
    defaults.update(kwargs)
    return PhenotypeEncoder(**defaults).eval()


def batch(n=4):
    return {
        "age": torch.tensor([30.0, 60.0, float("nan"), 85.0])[:n],
        "sex": torch.tensor([0, 1, 2, 0])[:n],
        "pathology": torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]])[:n],
    }


def test_token_shape():
    encoder = make_encoder()
    tokens = encoder(**batch())
    assert tokens.shape == (4, 2 + len(VOCAB), 16)
    assert encoder.num_tokens == 5
    single = make_encoder(multi_label=False)
    assert single(**batch()).shape == (4, 3, 16)


def test_attributes_change_tokens():
    encoder = make_encoder()
    base = batch()
    tokens = encoder(**base)
    older = dict(base, age=base["age"] + 5.0)
    assert not torch.allclose(encoder(**older)[:, 0], tokens[:, 0])
    flipped = dict(base, sex=1 - base["sex"].clamp(max=1))
    assert not torch.allclose(encoder(**flipped)[:, 1], tokens[:, 1])
    torch.testing.assert_close(encoder(**flipped)[:, 2:], tokens[:, 2:])


def test_missing_age_uses_learned_token():
    encoder = make_encoder()
    a = encoder(age=torch.tensor([float("nan")]), sex=torch.tensor([0]), pathology=torch.zeros(1, 3))
    b = encoder(age=torch.tensor([float("nan")]), sex=torch.tensor([0]), pathology=torch.zeros(1, 3))
    c = encoder(age=torch.tensor([18.0]), sex=torch.tensor([0]), pathology=torch.zeros(1, 3))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[:, 0], c[:, 0])


def test_partial_phenotype_uses_null_tokens():
    encoder = make_encoder()
    inputs = batch()
    given = {"age": torch.tensor([False] * 4), "pathology": torch.tensor([False] * 4)}
    partial = encoder(**inputs, given=given)
    null = encoder.null_tokens(4)
    torch.testing.assert_close(partial[:, 0], null[:, 0])
    torch.testing.assert_close(partial[:, 2:], null[:, 2:])
    assert not torch.allclose(partial[:, 1], null[:, 1])


def test_conditioning_dropout_is_random_and_seeded():
    encoder = make_encoder(attribute_dropout=0.5)
    inputs = batch()
    first = encoder(**inputs, conditioning_dropout=True, generator=torch.Generator().manual_seed(1))
    again = encoder(**inputs, conditioning_dropout=True, generator=torch.Generator().manual_seed(1))
    other = encoder(**inputs, conditioning_dropout=True, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, encoder(**inputs))


def test_invalid_config():
    with pytest.raises(ValueError, match="attribute_dropout"):
        PhenotypeEncoder(pathology_vocabulary=VOCAB, attribute_dropout=1.0)
    with pytest.raises(ValueError, match="age_min"):
        PhenotypeEncoder(pathology_vocabulary=VOCAB, age_min=50, age_max=10)


def test_parameters_live_in_single_input_modules():
    encoder = make_encoder()
    assert not list(encoder.parameters(recurse=False))
    for module in encoder.modules():
        if list(module.parameters(recurse=False)):
            assert isinstance(module, (torch.nn.Embedding, torch.nn.Linear, torch.nn.LayerNorm)), type(module)


def test_opacus_per_sample_gradients_match_loop():
    """opacus computes per-sample gradients of the encoder equal to one backward pass per example."""
    from opacus import GradSampleModule

    encoder = make_encoder(attribute_dropout=0.0).train()  # opacus records activations in training mode only
    inputs = batch()
    wrapped = GradSampleModule(encoder, loss_reduction="sum")
    wrapped(**inputs).pow(2).sum().backward()
    for name, parameter in encoder.named_parameters():
        if parameter.grad_sample is None:
            continue
        for i in range(4):
            reference = make_encoder(attribute_dropout=0.0)
            reference.load_state_dict(encoder.state_dict())
            single = {k: v[i : i + 1] for k, v in inputs.items()}
            reference(**single).pow(2).sum().backward()
            expected = dict(reference.named_parameters())[name].grad
            error = (parameter.grad_sample[i] - expected).abs().max()
            assert error <= 1e-3 * expected.abs().max() + 1e-6, (name, i, float(error))
    assert math.isfinite(float(sum(p.grad_sample.abs().sum() for p in encoder.parameters() if p.grad_sample is not None)))
