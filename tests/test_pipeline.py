import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from huggingface_hub import ModelCard

from phenodiff import PhenoDiffPipeline, PhenotypeEncoder
from phenodiff.pipelines import PickleCheckpointError

VOCAB = ["cardiomegaly", "effusion", "nodule"]


def tiny_pipeline(multi_label=True, vocabulary=VOCAB):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=16, layers_per_block=1, attention_head_dim=4, norm_num_groups=4)
    encoder = PhenotypeEncoder(pathology_vocabulary=vocabulary, multi_label=multi_label, cross_attention_dim=16, age_min=18, age_max=90)
    pipe = PhenoDiffPipeline(vae=vae, unet=unet, phenotype_encoder=encoder, scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def sample(pipe, **kwargs):
    defaults = dict(age=[40, 70], sex=["female", "male"], pathology=[["nodule"], []], num_inference_steps=3,
                    generator=torch.Generator().manual_seed(0), output_type="np")
    defaults.update(kwargs)
    return pipe(**defaults)


def test_generates_requested_phenotypes(pipe):
    out = sample(pipe, num_images_per_prompt=2)
    assert out.images.shape == (4, 16, 16, 1)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert [p["sex"] for p in out.phenotypes] == ["female", "female", "male", "male"]
    assert out.phenotypes[0] == {"age": 40.0, "sex": "female", "pathology": ["nodule"]}
    assert out.phenotypes[2]["pathology"] == []


def test_pil_output_is_grayscale(pipe):
    out = sample(pipe, output_type="pil")
    assert out.images[0].mode == "L"
    assert out.images[0].size == (16, 16)


def test_partial_phenotype(pipe):
    out = pipe(sex="female", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 1, 16, 16)
    assert out.phenotypes == [{"age": None, "sex": "female", "pathology": None}]


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
def test_schedulers(scheduler_cls):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    first = sample(pipe).images
    second = sample(pipe).images
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()


def test_guidance_changes_output(pipe):
    guided = sample(pipe, guidance_scale=3.0).images
    plain = sample(pipe, guidance_scale=1.0).images
    assert not np.allclose(guided, plain)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"pathology": ["pneumonia"]}, ValueError, "valid labels are \\['cardiomegaly', 'effusion', 'nodule'\\]"),
        ({"age": 130}, ValueError, "outside the trained range \\[18, 90\\]"),
        ({"age": "fifty"}, TypeError, "age must be"),
        ({"age": [30, "x"]}, TypeError, "age must be a number"),
        ({"sex": "woman"}, ValueError, "valid values are \\['female', 'male', 'unknown'\\]"),
        ({"age": [30, 40, 50], "sex": ["female", "male"]}, ValueError, "same length"),
        ({"pathology": 5}, TypeError, "pathology must be"),
        ({"num_images_per_prompt": 0}, ValueError, "positive integer"),
        ({"output_type": "latents"}, ValueError, "output_type"),
        ({"extras": {"view": "PA"}}, ValueError, "Unknown extra attribute 'view'"),
    ],
)
def test_bad_phenotype_input(pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        pipe(num_inference_steps=1, **kwargs)


def test_single_label_pipeline():
    pipe = tiny_pipeline(multi_label=False, vocabulary=["nv", "mel", "bcc"])
    out = pipe(pathology=["mel", "nv"], num_inference_steps=2, output_type="np")
    assert [p["pathology"] for p in out.phenotypes] == [["mel"], ["nv"]]
    with pytest.raises(ValueError, match="valid labels"):
        pipe(pathology="akiec", num_inference_steps=1)


def test_save_and_load_in_fresh_process(tmp_path, pipe):
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    assert sorted(p.name for p in folder.rglob("*.safetensors")) == ["diffusion_pytorch_model.safetensors"] * 3
    expected = sample(pipe).images
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from phenodiff import PhenoDiffPipeline
        pipe = PhenoDiffPipeline.from_pretrained({str(folder)!r})
        pipe.set_progress_bar_config(disable=True)
        out = pipe(age=[40, 70], sex=["female", "male"], pathology=[["nodule"], []], num_inference_steps=3,
                   generator=torch.Generator().manual_seed(0), output_type="np")
        np.save({str(tmp_path / "out.npy")!r}, out.images)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    # Another process may pick different CPU kernels, so allow float32 rounding (observed: 1.2e-7).
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-5)


def test_loading_rejects_pickle_weights(tmp_path, pipe):
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    torch.save(pipe.unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(PickleCheckpointError, match="diffusion_pytorch_model.bin"):
        PhenoDiffPipeline.from_pretrained(folder)
    with pytest.raises(PickleCheckpointError, match="safetensors"):
        PhenoDiffPipeline.from_pretrained(folder, use_safetensors=False)


def test_model_card_and_upload_folder(tmp_path, pipe):
    from phenodiff.data import load_or_make_split, load_pheno_dataset
    from phenodiff.data.phantom import PhantomConfig, generate_phantom
    from phenodiff.hub import save_pipeline_with_card
    from phenodiff.training import TrainConfig

    data_dir = generate_phantom(tmp_path / "phantom", PhantomConfig(num_patients=40))
    dataset = load_pheno_dataset("phantom", data_dir)
    load_or_make_split(dataset, tmp_path / "split.json")
    folder = save_pipeline_with_card(pipe, tmp_path / "upload", config=TrainConfig(), dataset=dataset, metrics={"global_step": 7, "loss": 0.5})
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "README.md" in names
    assert "model_index.json" in names
    assert "training_config.yaml" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".ckpt", ".pkl"))]
    card = ModelCard.load(folder / "README.md")
    card.validate = None  # validation calls the hub; the metadata is checked locally below
    assert card.data.library_name == "diffusers"
    assert "phenodiff" in card.data.tags
    assert "no formal privacy guarantee" in card.text
    assert "female 18-40" in card.text
    assert "Steps: 7" in card.text


def test_loading_run_folder_points_to_pipeline(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "run" / "pipeline")
    with pytest.raises(FileNotFoundError, match="pass its pipeline/ subfolder"):
        PhenoDiffPipeline.from_pretrained(tmp_path / "run")


def test_copy_filter_withholds_copies(pipe):
    from phenodiff.privacy.audit import CopyFilter

    generated = sample(pipe, output_type="pt").images
    unrelated = torch.rand(120, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    heldout = torch.rand(120, 1, 16, 16, generator=torch.Generator().manual_seed(4))

    memorised = CopyFilter.from_images(torch.cat([generated, unrelated]), heldout, false_flag_rate=0.05)
    out = sample(pipe, output_type="pt", copy_filter=memorised)
    assert out.rejected == 2
    assert out.images.shape[0] == 0
    assert out.phenotypes == []

    clean = CopyFilter.from_images(unrelated, heldout, false_flag_rate=0.05)
    out = sample(pipe, output_type="np", copy_filter=clean)
    assert out.rejected == 0
    assert out.images.shape == (2, 16, 16, 1)


def test_extra_attribute_conditions_samples():
    pipe = tiny_pipeline()
    encoder = PhenotypeEncoder(pathology_vocabulary=VOCAB, multi_label=True, cross_attention_dim=16, age_min=18, age_max=90,
                               extra_vocabularies={"view": ["PA", "AP"]})
    torch.nn.init.normal_(encoder.extra_embeddings["view"].weight, std=3.0)
    pipe = PhenoDiffPipeline(vae=pipe.vae, unet=pipe.unet, phenotype_encoder=encoder, scheduler=pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)

    pa = sample(pipe, extras={"view": "PA"}, guidance_scale=1.0).images
    ap = sample(pipe, extras={"view": "AP"}, guidance_scale=1.0).images
    unspecified = sample(pipe, extras={"view": None}, guidance_scale=1.0).images
    omitted = sample(pipe, guidance_scale=1.0).images
    assert not np.allclose(pa, ap)
    np.testing.assert_allclose(unspecified, omitted)
    with pytest.raises(ValueError, match="valid values are \\['PA', 'AP'\\]"):
        pipe(extras={"view": "LL"}, num_inference_steps=1)
