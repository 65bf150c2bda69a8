"""Planning of synthetic images: how many to generate per (demographic group, label) cell."""

from .plan import PLAN_TARGETS, SynthesisPlan, plan_synthesis, real_cell_counts

__all__ = ["PLAN_TARGETS", "SynthesisPlan", "plan_synthesis", "real_cell_counts"]
