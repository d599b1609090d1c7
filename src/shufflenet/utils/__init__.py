"""Small utilities shared across the package."""

from .atomic import atomic_path, atomic_write

__all__ = ["atomic_path", "atomic_write"]
