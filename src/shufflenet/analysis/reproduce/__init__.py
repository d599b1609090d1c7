"""Paper experiments as self-contained Markdown reports with figures and a table of ours against published.

``run_experiment(name, config)`` runs one of :data:`EXPERIMENTS` with its configuration (a dataclass per
experiment, e.g. :class:`GroupsConfig`) and writes ``report.md``, its PNG figures, ``results.json`` (and CSV)
and ``config.json`` (the resolved configuration) into ``config.out``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..outputs import write_json
from .alexnet_groups import AlexNetGroupsConfig, run_alexnet_groups
from .common import BUDGETS, ReproduceOptions, TrainingExperiment, TrainingStopped
from .complexity import ComplexityConfig, run_complexity
from .groups import GroupsConfig, run_groups
from .shuffle import ShuffleConfig, run_shuffle

__all__ = [
    "EXPERIMENTS",
    "BUDGETS",
    "AlexNetGroupsConfig",
    "ComplexityConfig",
    "Experiment",
    "GroupsConfig",
    "ReproduceOptions",
    "ShuffleConfig",
    "TrainingExperiment",
    "TrainingStopped",
    "run_experiment",
]


class Experiment(NamedTuple):
    run: Callable[[Any], dict]
    config: type[ReproduceOptions]
    description: str


EXPERIMENTS: dict[str, Experiment] = {
    "complexity": Experiment(
        run_complexity,
        ComplexityConfig,
        "ShuffleNet Tables 1-2, Deep Roots NIN and AlexNet counts vs ours (no data)",
    ),
    "groups": Experiment(
        run_groups,
        GroupsConfig,
        "NIN root-1/2/4/8/16 on CIFAR-10: train/test accuracy, counts, latency, correlation vs untrained",
    ),
    "shuffle": Experiment(
        run_shuffle,
        ShuffleConfig,
        "ShuffleNet g=1/2/3/4/8 with and without channel shuffle on CIFAR-10, several seeds",
    ),
    "alexnet-groups": Experiment(
        run_alexnet_groups,
        AlexNetGroupsConfig,
        "two-group AlexNet's conv1 filters by group, with a colour measure",
    ),
}


def run_experiment(name: str, config: ReproduceOptions) -> dict:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) with ``config``, an instance of its
    configuration class; returns its results."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    expected = EXPERIMENTS[name].config
    if type(config) is not expected:
        raise TypeError(
            f"experiment {name!r} takes a {expected.__name__}, got {type(config).__name__}"
        )
    config.out.mkdir(parents=True, exist_ok=True)
    write_json(config.out / "config.json", {"experiment": name, **config.to_dict()})
    return EXPERIMENTS[name].run(config)
