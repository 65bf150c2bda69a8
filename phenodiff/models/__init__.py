"""Models of the generator."""

from .phenotype_encoder import SEX_NAMES, PhenotypeEncoder

__all__ = ["PhenotypeEncoder", "SEX_NAMES"]
