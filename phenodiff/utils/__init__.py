"""Small helpers shared across phenodiff: atomic file output and logging."""

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_directory

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "atomic_directory"]
