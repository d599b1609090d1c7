"""Predicted communication of one training step (forward + backward), from the layer shapes alone.

Written from the sharding rules (see :mod:`.shufflenet_v1` and :mod:`.alexnet`) with closed forms and
interval arithmetic, independently of the exchange plans the model actually builds, so that the benchmark
and the tests can check the measured bytes (:func:`shufflenet.parallel.count_comm`) against it. Bytes follow
:class:`~shufflenet.parallel.comm.CommCounter`'s convention; ``B_r(C)`` is rank r's contiguous block.

Per rank, with batch ``N``, ``b`` bytes per element, ``S`` the spatial size (H x W) where it happens:

- channel shuffle (all-to-all, forward and backward): the bottleneck channels of rank r's groups whose
  shuffled position falls in another rank's block, ``~ mid/P (P-1)/P x N S b`` each way;
- after a stride-2 unit, the channels of ``[pool(x) | branch]`` that rank r holds but another rank's groups
  read (all-to-all, forward and backward): for ``P = 2`` and a stage with ``C_out = 2 C_in`` that is half of
  the unit's output, ``C_out/4 x N S b``;
- a replicated tensor read by sharded layers: all-reduce of its gradient, ``2 (P-1)/P x N C S b``
  (backward only); for the replicated layers before the first sharded one (ShuffleNet's stem, AlexNet's
  conv1 with ``dense="replicate"``) an all-reduce of their parameters' gradients instead;
- the head: all-gather of the pooled features, ``(P-1) C/P x N b`` forward (and a reduce-scatter of the same
  size backward when the classifier is column-parallel), and an all-gather of the logits;
- AlexNet: LRN halos (2 channels to each neighbour, both ways), all-gathers before conv3 and fc6-fc8
  (reduce-scatters in backward).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.alexnet import AlexNet
from ..models.shufflenet_v1 import ShuffleNetV1

__all__ = ["predicted_comm_bytes", "layer_shapes"]


def layer_shapes(model: nn.Module, input_size: int, in_chans: int = 3) -> dict[str, tuple]:
    """``name -> (input shape, output shape)`` of every module for one ``input_size`` image."""
    shapes: dict[str, tuple] = {}
    hooks = [
        m.register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, (tuple(i[0].shape), tuple(o.shape)))
        )
        for n, m in model.named_modules()
    ]
    training = model.training
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model.eval()(
                torch.zeros(1, in_chans, input_size, input_size, dtype=p.dtype, device=p.device)
            )
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return shapes


def _block(c: int, P: int, r: int) -> set[int]:
    base, extra = divmod(c, P)
    start = r * base + min(r, extra)
    return set(range(start, start + base + (1 if r < extra else 0)))


def _spatial(shape: tuple) -> int:
    return math.prod(shape[2:]) if len(shape) > 2 else 1


class _Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, int]] = []

    def add(self, tag: str, phase: str, op: str, nbytes: float) -> None:
        if nbytes:
            self.rows.append((tag, phase, op, int(nbytes)))


def _shufflenet(model: ShuffleNetV1, P, r, N, b, shapes, dense, out: _Rows) -> None:
    held: list[set[int]] | None = None  # per rank; None: replicated
    for i, stage in enumerate(model.stages):
        for j, unit in enumerate(stage):
            tag = f"stages.{i}.{j}"
            c_in, c_out, g = unit.in_channels, unit.out_channels, unit.groups
            mid, branch = unit.compress.out_channels, unit.expand.out_channels
            s_in = _spatial(shapes[tag][0])
            s_mid = _spatial(shapes[f"{tag}.depthwise"][1])
            if held is None:  # replicated stem: all-reduce of its parameters' gradients
                for name, p in model.stem.named_parameters():
                    nbytes = 2 * (P - 1) * p.numel() * b // P
                    out.add(f"stem.{name} (gradient)", "backward", "all_reduce", nbytes)
            elif unit.compress.conv.groups == 1:
                raise NotImplementedError("a dense compress after a sharded input")
            else:  # all-to-all into blocks: what r holds but others need, and back
                need = [_block(c_in, P, s) for s in range(P)]
                out.add(
                    f"{tag}.entry", "forward", "all_to_all", len(held[r] - need[r]) * N * s_in * b
                )
                out.add(
                    f"{tag}.entry", "backward", "all_to_all", len(need[r] - held[r]) * N * s_in * b
                )
            if g > 1 and unit.shuffle_mode == "shuffle":  # z (group j, index i) -> y = i g + j
                n, block = mid // g, math.ceil(mid / P)
                own = range(r * g // P, (r + 1) * g // P)
                sent = sum(1 for j_ in own for i_ in range(n) if (i_ * g + j_) // block != r)
                for phase in ("forward", "backward"):
                    out.add(f"{tag}.shuffle", phase, "all_to_all", sent * N * s_mid * b)
            elif g > 1 and unit.shuffle_mode == "unshuffle":
                raise NotImplementedError("the formula covers shuffle='shuffle' and 'none'")
            if not isinstance(unit.se, nn.Identity):
                hidden = unit.se.fc1.out_channels
                out.add(
                    f"{tag}.se.gather",
                    "forward",
                    "all_gather",
                    (P - 1) * math.ceil(branch / P) * N * b,
                )
                out.add(
                    f"{tag}.se.copy", "backward", "all_reduce", 2 * (P - 1) / P * N * hidden * b
                )
            if unit.stride == 1:
                held = [_block(c_out, P, s) for s in range(P)]
            else:
                if held is None:  # pooled channel c goes to the rank whose block of c_out holds it
                    pooled = [
                        {c for c in range(c_in) if c in _block(c_out, P, s)} for s in range(P)
                    ]
                else:
                    pooled = [_block(c_in, P, s) for s in range(P)]
                held = [pooled[s] | {c_in + c for c in _block(branch, P, s)} for s in range(P)]
    assert held is not None
    chunk = max(len(h) for h in held)  # the all-gather pads to the largest shard
    out.add("head_gather", "forward", "all_gather", (P - 1) * chunk * N * b)
    if dense == "split":
        out.add("head_gather", "backward", "reduce_scatter", (P - 1) * chunk * N * b)
        out.add(
            "logits_gather",
            "forward",
            "all_gather",
            (P - 1) * math.ceil(model.num_classes / P) * N * b,
        )


def _alexnet(model: AlexNet, P, r, N, b, shapes, dense, out: _Rows) -> None:
    split = dense == "split"
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for i, m in enumerate(model.features):
        tag = f"features.{i}"
        s_in = _spatial(shapes[tag][0])
        before = [k for k in convs if k < i]
        sharded_here = bool(before) and (model.features[before[-1]].groups > 1 or split)
        if isinstance(m, nn.LocalResponseNorm) and sharded_here:
            c = shapes[tag][0][1]
            own = _block(c, P, r)
            lo, hi = min(own), max(own) + 1
            halo_needed_by_left = min(lo + (m.size - 1) // 2, hi) - lo if r > 0 else 0
            halo_needed_by_right = hi - max(hi - m.size // 2, lo) if r < P - 1 else 0
            sent = halo_needed_by_left + halo_needed_by_right
            for phase in ("forward", "backward"):
                out.add(f"{tag}.exchange", phase, "all_to_all", sent * N * s_in * b)
        elif isinstance(m, nn.Conv2d) and i != convs[0]:
            c_in = m.in_channels
            prev_grouped = model.features[convs[convs.index(i) - 1]].groups > 1
            prev_sharded = prev_grouped or split
            first_sharded = all(model.features[k].groups == 1 for k in convs if k < i) and not split
            if (
                m.groups > 1 and first_sharded
            ):  # after the replicated prefix: its parameters' gradients
                for k in (k for k in convs if k < i):
                    for name, p in model.features[k].named_parameters():
                        nbytes = 2 * (P - 1) * p.numel() * b // P
                        out.add(f"features.{k}.{name} (gradient)", "backward", "all_reduce", nbytes)
            elif (
                m.groups > 1 and not prev_sharded
            ):  # replicated -> grouped: all-reduce of the gradient
                out.add(
                    f"{tag}.pre.0", "backward", "all_reduce", 2 * (P - 1) / P * N * c_in * s_in * b
                )
            elif m.groups == 1 and prev_sharded:  # sharded -> dense: all-gather
                nbytes = (P - 1) * math.ceil(c_in / P) * N * s_in * b
                out.add(f"{tag}.pre", "forward", "all_gather", nbytes)
                if split:
                    out.add(f"{tag}.pre", "backward", "reduce_scatter", nbytes)
    c_feat, s_feat = shapes["global_pool"][1][1], _spatial(shapes["global_pool"][1])
    nbytes = (P - 1) * math.ceil(c_feat / P) * N * s_feat * b
    out.add("head_gather", "forward", "all_gather", nbytes)
    if split:
        out.add("head_gather", "backward", "reduce_scatter", nbytes)
        linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
        for i in linears[1:]:
            nbytes = (P - 1) * math.ceil(model.classifier[i].in_features / P) * N * b
            out.add(f"classifier.{i}.pre", "forward", "all_gather", nbytes)
            out.add(f"classifier.{i}.pre", "backward", "reduce_scatter", nbytes)
        k = model.classifier[linears[-1]].out_features
        out.add("logits_gather", "forward", "all_gather", (P - 1) * math.ceil(k / P) * N * b)


def predicted_comm_bytes(
    model: nn.Module,
    world_size: int,
    batch: int,
    input_size: int,
    dense: str = "split",
    rank: int = 0,
    bytes_per_element: int | None = None,
    check_inputs: bool = True,
) -> list[tuple[str, str, str, int]]:
    """``(layer, phase, op, bytes)`` that ``rank`` sends in one training step of the group-parallel form
    of ``model`` (the single-device model) with ``world_size`` ranks."""
    P, N = world_size, batch
    b = bytes_per_element or next(model.parameters()).element_size()
    out = _Rows()
    if P == 1:
        return out.rows
    if check_inputs:
        out.add("input check", "forward", "all_reduce", 2 * (P - 1) * 32 // P)
    shapes = layer_shapes(model, input_size)
    if isinstance(model, ShuffleNetV1):
        _shufflenet(model, P, rank, N, b, shapes, dense, out)
    elif isinstance(model, AlexNet):
        _alexnet(model, P, rank, N, b, shapes, dense, out)
    else:
        raise TypeError(f"no formula for {type(model).__name__}")
    return out.rows
