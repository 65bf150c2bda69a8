"""Dataset preparation for training: load, split (reusing the run's manifest) and wrap for torch."""

from __future__ import annotations

from pathlib import Path

from ..data import PhenoDataset, load_or_make_split, load_pheno_dataset, resolve_schema
from ..data.torch_dataset import PhenoTorchDataset
from .config import DataConfig


def prepare_dataset(config: DataConfig, output_dir: str | Path) -> PhenoDataset:
    """Load the configured dataset and apply the split manifest stored in ``output_dir`` (made on first use).

    The phantom is generated into ``output_dir/phantom-data`` when no ``data_dir`` is configured. With
    ``array_file`` set, the images and records come from that preprocessed file instead.
    """
    output_dir = Path(output_dir)
    schema = resolve_schema(config.dataset)
    if config.array_file is not None:
        from ..data.array_file import load_image_array

        dataset = load_image_array(config.array_file, schema)
        load_or_make_split(dataset, output_dir / "split_manifest.json", seed=config.split_seed)
        return dataset
    data_dir = config.data_dir
    if data_dir is None and schema.name == "phantom":
        from ..data.phantom import PhantomConfig, generate_phantom

        data_dir = generate_phantom(output_dir / "phantom-data", PhantomConfig(num_patients=config.phantom_patients, seed=config.split_seed))
    if data_dir is None:
        raise ValueError(f"Dataset {schema.name!r} needs data_dir (config 'data.data_dir' or --data_dir).")
    dataset = load_pheno_dataset(schema, data_dir, metadata_file=config.metadata_file)
    load_or_make_split(dataset, output_dir / "split_manifest.json", seed=config.split_seed)
    return dataset


def torch_split(dataset: PhenoDataset, split: str, resolution: int) -> PhenoTorchDataset:
    return PhenoTorchDataset(dataset, split, resolution=resolution, value_range="-1,1")
