"""Model cards and hub upload."""

from .model_card import build_model_card, save_pipeline_with_card

__all__ = ["build_model_card", "save_pipeline_with_card"]
