"""phenodiff: phenotype-conditioned latent diffusion for medical images, with privacy audits and fair classifiers."""

__version__ = "0.1.0.dev0"
