"""Training of the generator: configuration, the two stages and checkpoints."""

from .autoencoder import train_autoencoder
from .config import AutoencoderConfig, DataConfig, DiffusionConfig, TrainConfig
from .diffusion import train_diffusion

__all__ = ["AutoencoderConfig", "DataConfig", "DiffusionConfig", "TrainConfig", "train_autoencoder", "train_diffusion"]
