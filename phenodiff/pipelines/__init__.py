"""Diffusion pipelines."""

from .pipeline_phenodiff import PhenoDiffPipeline, PhenoDiffPipelineOutput, PickleCheckpointError, reject_pickle_files

__all__ = ["PhenoDiffPipeline", "PhenoDiffPipelineOutput", "PickleCheckpointError", "reject_pickle_files"]
