"""Paper experiments as self-contained Markdown reports with figures and a table of ours against published.

``run_experiment(name, options)`` runs one of :data:`EXPERIMENTS` and writes ``report.md``, its PNG figures,
``results.json`` (and CSV) and ``config.json`` (the resolved options) into ``options.out``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..outputs import write_json
from .alexnet_groups import run_alexnet_groups
from .common import BUDGETS, ReproduceOptions
from .complexity import run_complexity
from .groups import run_groups
from .shuffle import run_shuffle

__all__ = ["EXPERIMENTS", "BUDGETS", "ReproduceOptions", "run_experiment"]

# name -> (function, one-line description)
EXPERIMENTS: dict[str, tuple[Callable[[ReproduceOptions], dict], str]] = {
    "complexity": (
        run_complexity,
        "ShuffleNet Tables 1-2, Deep Roots NIN and AlexNet counts vs ours (no data)",
    ),
    "groups": (
        run_groups,
        "NIN root-1/2/4/8/16 on CIFAR-10: accuracy, counts, latency, correlation panels",
    ),
    "shuffle": (run_shuffle, "ShuffleNet g=3/g=8 with and without channel shuffle on CIFAR-10"),
    "alexnet-groups": (
        run_alexnet_groups,
        "two-group AlexNet's conv1 filters by group, with a colour measure",
    ),
}


def run_experiment(name: str, options: ReproduceOptions) -> dict:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) with ``options``; returns its results."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    options.out.mkdir(parents=True, exist_ok=True)
    write_json(options.out / "config.json", {"experiment": name, **options.to_dict()})
    return EXPERIMENTS[name][0](options)
