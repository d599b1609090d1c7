"""Registered variants: a model class with the constructor arguments that its name stands for fixed.

``shufflenet_v1_g3_x1_0`` is ``ShuffleNetV1(groups=3, width_mult=1.0, **kwargs)``; passing ``groups`` or
``width_mult`` to it again is a ``TypeError`` (the result would be another model under this name). Every other
constructor argument (``num_classes``, ``in_chans``, ``small_input``, ...) passes through.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["variant"]


def variant(
    cls: Callable[..., nn.Module],
    name: str,
    doc: str,
    renamed: Mapping[str, str] | None = None,
    **fixed: Any,
) -> Callable[..., nn.Module]:
    """A factory named ``name`` that builds ``cls(**fixed, **kwargs)``, for :func:`register_model`.

    Args:
        cls: the model class.
        name: the registry name.
        doc: the factory's docstring (shown by ``shufflenet list``).
        renamed: old keyword -> current keyword, so that model files written with an older argument name
            still load (with a ``DeprecationWarning``).
        **fixed: the arguments the name stands for.
    """
    renamed = dict(renamed or {})

    def factory(**kwargs: Any) -> nn.Module:
        for old, new in renamed.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{name}: pass {new}= only ({old}= is its old name)")
                warnings.warn(
                    f"{name}: {old}= is now called {new}=", DeprecationWarning, stacklevel=3
                )
                kwargs[new] = kwargs.pop(old)
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            shown = ", ".join(f"{k}={fixed[k]!r}" for k in clash)
            raise TypeError(
                f"{name} fixes {shown}; got {', '.join(f'{k}={kwargs[k]!r}' for k in clash)} "
                f"(pick another registered variant or build {cls.__name__}(...) directly)"
            )
        return cls(**fixed, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return factory
