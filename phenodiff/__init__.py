"""phenodiff: phenotype-conditioned latent diffusion for medical images, with privacy audits and fair classifiers."""

import importlib

__version__ = "0.1.0.dev0"

# Heavy modules (torch, diffusers) load on first use, so `phenodiff summary` starts quickly.
_LAZY = {
    "PhenotypeEncoder": "phenodiff.models",
    "PhenoDiffPipeline": "phenodiff.pipelines",
    "PhenoDiffPipelineOutput": "phenodiff.pipelines",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'phenodiff' has no attribute {name!r}")


__all__ = list(_LAZY)
