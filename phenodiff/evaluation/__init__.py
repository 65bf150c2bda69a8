"""Evaluation of generators: conditional fidelity and realism as seen by an independent classifier."""

from .fidelity import FidelityReport, conditional_fidelity, generate_for_requests, requested_phenotypes

__all__ = ["FidelityReport", "conditional_fidelity", "generate_for_requests", "requested_phenotypes"]
