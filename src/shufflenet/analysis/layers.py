"""Finding layers by name and reading their outputs during a forward pass."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["find_module", "capture_outputs", "first_conv", "next_conv"]


def find_module(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The submodule called ``name``: its full dotted name, or a unique dotted suffix of it, or ``convK``
    for the K-th ``Conv2d`` in registration order (1-based) when no module has that name.

    ``find_module(nin, "conv2c")`` finds ``features.conv2c``; ``find_module(alexnet, "conv1")`` finds
    ``features.0``. Returns ``(full_name, module)``.

    Raises:
        ValueError: when no module or more than one module matches, listing candidates.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"layer name {name!r} must be a non-empty string")
    modules = dict(model.named_modules())
    if name in modules:
        return name, modules[name]
    matches = [n for n in modules if n.endswith("." + name)]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    if matches:
        raise ValueError(f"layer name {name!r} is ambiguous: it matches {matches[:8]}")
    alias = re.fullmatch(r"conv(\d+)", name)
    convs_all = [(n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if alias and 1 <= int(alias[1]) <= len(convs_all):
        return convs_all[int(alias[1]) - 1]
    top = [n for n in modules if n and "." not in n]
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][:12]
    raise ValueError(
        f"no layer named {name!r}; top-level modules: {top}; some conv layers: {convs}"
    )


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass stores the output of every named layer in the yielded dict
    (keyed by the names as given; the latest call wins)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            _, module = find_module(model, name)

            def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, key: str = name) -> None:
                store[key] = out

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def first_conv(module: nn.Module) -> nn.Conv2d | None:
    """``module`` itself if it is a ``Conv2d``, else the first ``Conv2d`` among its submodules."""
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


def next_conv(model: nn.Module, name: str) -> nn.Conv2d | None:
    """The first ``Conv2d`` registered after the layer ``name`` (outside it): the layer that consumes its
    output in a sequential model."""
    full, module = find_module(model, name)
    inside = {id(m) for m in module.modules()}
    seen = False
    for n, m in model.named_modules():
        if n == full:
            seen = True
            continue
        if seen and id(m) not in inside and isinstance(m, nn.Conv2d):
            return m
    return None
