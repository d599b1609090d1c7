"""torch.hub entry points: one per registered model, generated from the registry.

    model = torch.hub.load("/path/to/this/repo", "shufflenet_v1_g3_x1_0", source="local", num_classes=10)
    model = torch.hub.load(repo, "shufflenet_v2_x1_0", source="local", weights="shufflenetv2_x1.pth")

Every entry point is ``shufflenet.create_model(name, weights=None, **kwargs)``: ``weights`` is a local file (a
shufflenet model file, a Megvii v1 or torchvision v2 checkpoint converted in memory, or a state dict for ``name``;
see :func:`shufflenet.factory.resolve_model`); ``num_classes`` other than the weights' re-initialises only the
classifier, with a warning. Nothing is downloaded. The package is
imported from this repository's ``src/`` directory (so a checkout works without installing it).
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch"]

_SRC = Path(__file__).resolve().parent / "src"
if (
    (_SRC / "shufflenet" / "__init__.py").is_file()
    and "shufflenet" not in sys.modules
    and str(_SRC) not in sys.path
):
    sys.path.insert(0, str(_SRC))

from shufflenet import create_model as _create_model  # noqa: E402
from shufflenet.models import get_model_factory as _get_model_factory  # noqa: E402
from shufflenet.models import list_models as _list_models  # noqa: E402


def _make_entry(name: str):
    def entry(weights=None, **kwargs):
        return _create_model(name, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    doc = (_get_model_factory(name).__doc__ or name).strip()
    entry.__doc__ = (
        f"{doc}\n\nArgs:\n    weights: optional local weight file (model file, release checkpoint or state dict).\n"
        "    **kwargs: model options, e.g. num_classes=10, small_input=True."
    )
    return entry


for _name in _list_models():
    globals()[_name] = _make_entry(_name)
