"""Description of the multi-scale feature maps a backbone returns (``forward_features(x, return_stages=True)``).

Each entry is a dict as in timm's ``feature_info``: ``num_chs`` (channels of the map), ``reduction`` (input
side divided by the map's side, for sides divisible by it) and ``module`` (the name of the sub-module whose
output it is, for ``model.get_submodule``).
"""

from __future__ import annotations

__all__ = ["feature_info"]


def feature_info(num_chs: int, reduction: int, module: str) -> dict[str, int | str]:
    """One entry of a model's ``feature_info`` list."""
    return {"num_chs": int(num_chs), "reduction": int(reduction), "module": module}
