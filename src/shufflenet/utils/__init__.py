"""Small utilities shared across the package."""

from .atomic import atomic_path, atomic_write
from .threads import torch_threads

__all__ = ["atomic_path", "atomic_write", "torch_threads"]
