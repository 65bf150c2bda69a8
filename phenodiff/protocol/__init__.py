"""The three-arm protocol: baseline vs plain augmentation vs the full system, with metrics, tables and figures."""

from .config import ARMS, ClassifierSettings, ProtocolSettings, SynthesisSettings, arm_config, load_protocol_config
from .runner import Protocol, run_protocol

__all__ = [
    "ARMS",
    "ClassifierSettings",
    "Protocol",
    "ProtocolSettings",
    "SynthesisSettings",
    "arm_config",
    "load_protocol_config",
    "run_protocol",
]
