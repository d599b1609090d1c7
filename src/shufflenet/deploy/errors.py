"""The error every deploy backend raises for a module it cannot lower; public as
``shufflenet.deploy.api.NotSupportedError`` (and ``shufflenet.deploy.NotSupportedError``).

It lives in this leaf module because the backends that raise it (batch-norm folding, the optimized and native
engines) sit below :mod:`.api`, which imports them all."""

from __future__ import annotations

__all__ = ["NotSupportedError"]


class NotSupportedError(ValueError):
    """A module or configuration that a backend does not lower (the message says which and why)."""
