"""Lower a PyTorch module (eval mode) to the native engine's operations.

The result, a :class:`Program`, is independent of the input size: values carry channel counts, and spatial
sizes are propagated when a plan is bound to an input shape (:mod:`.module`). Weights are folded (batch norm)
and rearranged for the kernels here, once:

- 1x1 group conv: ``[groups][K][N]`` (``K`` inputs and ``N`` outputs per group) plus ``kidx[groups][K]``, the
  input plane each row reads. The channel shuffle of a ShuffleNet unit becomes ``kidx`` of the second 1x1
  group conv (the shuffle commutes with the per-channel depthwise conv and its batch norm, whose weights are
  permuted instead), so it is never materialised.
- 3x3 depthwise conv: ``[C][9]``; dense 3x3 conv (stem): ``[cin][3][3][cout]``; linear: ``[in][out]``.

Supported: ShuffleNet v1 units (any groups, stride 1/2, shuffle/unshuffle/none, either shuffle position, dense
first 1x1; not squeeze-and-excitation), ConvBnAct / Conv2d (1x1 any groups, 3x3 depthwise stride 1/2, dense 3x3
stride 1/2) + BatchNorm2d + ReLU, depthwise-separable blocks, MaxPool2d(3, 2, 1), AvgPool2d(3, 2, 1),
global average pooling, Flatten, Dropout/Identity, Linear; containers and models are traced with torch.fx.
Anything else raises :class:`NotSupportedError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...layers.conv_bn_act import ConvBnAct
from ...layers.separable import DepthwiseSeparableConv2d
from ...layers.shuffle_unit import ShuffleUnit
from ...models import in_channels
from ...ops.channel_shuffle import ChannelShuffle, ChannelUnshuffle
from ..errors import NotSupportedError
from ..fold import (
    fold_conv_bn,
    invert_permutation,
    relu_like,
    shuffle_permutation,
)
from ._abi import (
    ACT_NONE,
    ACT_RELU,
    OP_CONV,
    OP_DW,
    OP_FC,
    OP_GAP,
    OP_POOL,
    OP_PW,
    OP_QCONV,
    OP_QDW,
    OP_QGAP,
    OP_QMAX,
    POOL_AVG,
    POOL_MAX,
)

__all__ = ["Value", "BaseOp", "Op", "OpGraph", "Program", "lower"]


@dataclass
class Value:
    """An activation: ``planes`` (C, H, W per image) or ``flat`` (C per image)."""

    channels: int
    flat: bool = False


@dataclass
class BaseOp:
    """What an op does, to which values, with which geometry: the fields that the float program's
    :class:`Op` and the int8 program's :class:`shufflenet.quantize.program.QOp` share."""

    kind: int
    src: int
    dst: int
    dst_coff: int = 0
    res: int = -1
    act: int = ACT_NONE
    cin: int = 0
    cout: int = 0
    groups: int = 1
    K: int = 0
    N: int = 0
    stride: int = 1
    pool: int = 0

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.kind in (OP_GAP, OP_FC, OP_QGAP):
            return 1, 1
        if self.kind in (OP_CONV, OP_DW, OP_POOL, OP_QCONV, OP_QDW, OP_QMAX) and self.stride == 2:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if self.kind == OP_CONV and self.pool:  # fused 3x3/2 max pool
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return h, w


@dataclass
class Op(BaseOp):
    w: torch.Tensor | None = None
    b: torch.Tensor | None = None
    kidx: np.ndarray | None = None  # PW: [groups * K] input channel of each reduction row
    # PW, FC, CONV: weights repacked for the instruction set (set by NativeModule); int8 ops: packed words
    wp: torch.Tensor | None = None
    # int8 ops (see csrc/sn_int8.h): requantisation, clamp, signedness, and the op's int32 table (koff)
    m: torch.Tensor | None = None
    comp: torch.Tensor | None = None
    m_res: float = 0.0
    lo: int = 0
    hi: int = 0
    qflags: int = 0
    table: np.ndarray | None = None


class OpGraph:
    """Who writes and who reads a value, in a program of ops (float32 :class:`Program`, int8 ``QProgram``)."""

    ops: list

    def writers(self, value: int) -> list:
        return [op for op in self.ops if op.dst == value]

    def readers(self, value: int) -> list:
        return [op for op in self.ops if value in (op.src, op.res)]


@dataclass
class Program(OpGraph):
    values: list[Value] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    output: int = 0

    def new_value(self, channels: int, flat: bool = False) -> int:
        self.values.append(Value(channels, flat))
        return len(self.values) - 1


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _act_code(act: nn.Module | None, where: str) -> int:
    r = relu_like(act)
    if r is None:
        raise NotSupportedError(
            f"{where}: activation {type(act).__name__} (the native engine fuses only ReLU)"
        )
    return ACT_RELU if r else ACT_NONE


def _try_fuse_relu(prog: Program, value: int) -> bool:
    """Set ReLU on the op(s) producing ``value`` if nothing has read it yet; True on success."""
    writers = prog.writers(value)
    if not writers or prog.readers(value) or value == 0:
        return False
    for op in writers:
        op.act = ACT_RELU
    return True


# ------------------------------------------------------------------------------------------- convolutions


def _conv(prog: Program, x: int, conv: nn.Conv2d, bn: nn.Module | None, act: int) -> int:
    if not isinstance(conv, nn.Conv2d):
        raise NotSupportedError(f"expected Conv2d, got {type(conv).__name__}")
    if prog.values[x].flat:
        raise NotSupportedError("a convolution on a flattened tensor")
    cin, cout, g = conv.in_channels, conv.out_channels, conv.groups
    if prog.values[x].channels != cin:
        raise NotSupportedError(f"Conv2d expects {cin} channels, gets {prog.values[x].channels}")
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if conv.padding_mode != "zeros" or d != (1, 1) or isinstance(p, str):
        raise NotSupportedError(f"{conv}: only zero padding, no dilation, integer padding")
    w, b = fold_conv_bn(conv, bn)
    w, b = _f32(w), _f32(b)
    if k == (1, 1) and s == (1, 1) and p == (0, 0):
        k_in, n_out = cin // g, cout // g
        wt = w.reshape(g, n_out, k_in).permute(0, 2, 1).contiguous()  # [g][K][N]
        kidx = np.arange(cin, dtype=np.int32)
        y = prog.new_value(cout)
        prog.ops.append(
            Op(
                OP_PW,
                x,
                y,
                act=act,
                cin=cin,
                cout=cout,
                groups=g,
                K=k_in,
                N=n_out,
                w=wt,
                b=b,
                kidx=kidx,
            )
        )
        return y
    if k == (3, 3) and p == (1, 1) and s[0] == s[1] and s[0] in (1, 2):
        if g == cin == cout:
            y = prog.new_value(cout)
            prog.ops.append(
                Op(
                    OP_DW,
                    x,
                    y,
                    act=act,
                    cin=cin,
                    cout=cout,
                    stride=s[0],
                    w=w.reshape(cout, 9).contiguous(),
                    b=b,
                )
            )
            return y
        if g == 1:
            wt = w.permute(1, 2, 3, 0).contiguous()  # [cin][3][3][cout]
            y = prog.new_value(cout)
            prog.ops.append(Op(OP_CONV, x, y, act=act, cin=cin, cout=cout, stride=s[0], w=wt, b=b))
            return y
    raise NotSupportedError(
        f"{conv}: the native engine runs 1x1 convs (any groups), 3x3 depthwise and dense 3x3 convs with "
        "padding 1 and stride 1 or 2"
    )


def _conv_bn_act(prog: Program, x: int, m: ConvBnAct) -> int:
    children = dict(m.named_children())
    extra = set(children) - {"conv", "bn", "act"}
    if extra:
        raise NotSupportedError(f"ConvBnAct with unexpected children {sorted(extra)}")
    act = _act_code(children.get("act"), "ConvBnAct")
    return _conv(prog, x, children["conv"], children.get("bn"), act)


def _pool_kind(m: nn.Module) -> int:
    """POOL_MAX / POOL_AVG for a 3x3 stride-2 padding-1 pool; NotSupportedError otherwise."""
    if not isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        raise NotSupportedError(f"{type(m).__name__} is not a pooling layer the native engine runs")

    def pair(v: object) -> tuple:
        return (v, v) if isinstance(v, int) else tuple(v)

    if (
        pair(m.kernel_size) != (3, 3)
        or pair(m.stride) != (2, 2)
        or pair(m.padding) != (1, 1)
        or m.ceil_mode
    ):
        raise NotSupportedError(
            f"{m}: only 3x3 pooling with stride 2 and padding 1 (ceil_mode=False)"
        )
    if isinstance(m, nn.MaxPool2d):
        if pair(m.dilation) != (1, 1) or m.return_indices:
            raise NotSupportedError(f"{m}: dilation / return_indices")
        return POOL_MAX
    if not m.count_include_pad or m.divisor_override is not None:
        raise NotSupportedError(f"{m}: only count_include_pad=True without divisor_override")
    return POOL_AVG


def _pool(prog: Program, x: int, m: nn.Module, dst: int | None = None, act: int = ACT_NONE) -> int:
    kind = _pool_kind(m)
    if prog.values[x].flat:
        raise NotSupportedError("pooling of a flat tensor")
    writers = prog.writers(x)
    if (
        kind == POOL_MAX
        and dst is None
        and act == ACT_NONE
        and len(writers) == 1
        and not prog.readers(x)
    ):
        op = writers[0]
        if op.kind == OP_CONV and not op.pool:  # the stem: pool its rows as they are computed
            op.pool = 1
            return x
    c = prog.values[x].channels
    y = prog.new_value(c) if dst is None else dst
    prog.ops.append(Op(OP_POOL, x, y, act=act, cin=c, cout=c, stride=2, pool=kind))
    return y


# --------------------------------------------------------------------------------------- ShuffleNet unit


def _shuffle_unit(prog: Program, x: int, u: ShuffleUnit) -> int:
    if not isinstance(u.se, nn.Identity):
        raise NotSupportedError("ShuffleUnit with squeeze-and-excitation")
    if relu_like(u.act) is not True:
        raise NotSupportedError(f"ShuffleUnit with activation {type(u.act).__name__}")
    cin = prog.values[x].channels
    if cin != u.in_channels:
        raise NotSupportedError(f"ShuffleUnit expects {u.in_channels} channels, gets {cin}")
    # compress: 1x1 group conv (+ BN + ReLU) -> m1, in the order its groups produce it
    m1 = _conv_bn_act(prog, x, u.compress)
    mid = prog.values[m1].channels
    if not isinstance(u.shuffle, ChannelShuffle | ChannelUnshuffle | nn.Identity):
        raise NotSupportedError(f"ShuffleUnit.shuffle of type {type(u.shuffle).__name__}")
    perm = shuffle_permutation(u.shuffle, mid)
    # depthwise conv on m1's physical order: before_dw means it acts on shuffled channel c = m1[perm[c]], so
    # its weights move to channel perm[c]; the shuffle is then applied after it, as kidx of expand
    dw_conv, dw_bn = u.depthwise.conv, getattr(u.depthwise, "bn", None)
    dw_act = _act_code(getattr(u.depthwise, "act", None), "ShuffleUnit.depthwise")
    w, b = fold_conv_bn(dw_conv, dw_bn)
    w, b = _f32(w).reshape(mid, 9), _f32(b)
    if perm is not None and u.shuffle_position == "before_dw":
        # (a per-channel activation commutes with the permutation too)
        inv = invert_permutation(perm)
        w, b = w[inv].contiguous(), b[inv].contiguous()
    k, s, p = dw_conv.kernel_size, dw_conv.stride, dw_conv.padding
    if k != (3, 3) or p != (1, 1) or dw_conv.groups != mid or s[0] != s[1] or s[0] not in (1, 2):
        raise NotSupportedError(f"ShuffleUnit depthwise conv {dw_conv}")
    m2 = prog.new_value(mid)
    prog.ops.append(Op(OP_DW, m1, m2, act=dw_act, cin=mid, cout=mid, stride=s[0], w=w, b=b))
    # expand: 1x1 group conv whose rows read the shuffled planes of m2
    ex = u.expand.conv
    g = ex.groups
    if ex.kernel_size != (1, 1) or ex.stride != (1, 1) or ex.padding != (0, 0):
        raise NotSupportedError(f"ShuffleUnit expand conv {ex}")
    if relu_like(getattr(u.expand, "act", None)) is not False:
        raise NotSupportedError("ShuffleUnit.expand with an activation")
    we, be = fold_conv_bn(ex, getattr(u.expand, "bn", None))
    we, be = _f32(we), _f32(be)
    branch = ex.out_channels
    k_in, n_out = mid // g, branch // g
    wt = we.reshape(g, n_out, k_in).permute(0, 2, 1).contiguous()
    kidx = (perm if perm is not None else torch.arange(mid)).numpy().astype(np.int32)
    if u.stride == 1:
        if branch != cin:
            raise NotSupportedError(
                "stride-1 ShuffleUnit whose branch width differs from its input"
            )
        y = prog.new_value(cin)
        out = {"res": x}  # the residual add
    else:
        if not isinstance(u.shortcut, nn.AvgPool2d):
            raise NotSupportedError("stride-2 ShuffleUnit without an AvgPool2d shortcut")
        y = prog.new_value(cin + branch)
        # concatenation: the pooled input in channels [0, cin), the branch after it
        _pool(prog, x, u.shortcut, dst=y, act=ACT_RELU)
        out = {"dst_coff": cin}
    prog.ops.append(
        Op(
            OP_PW,
            m2,
            y,
            act=ACT_RELU,
            cin=mid,
            cout=branch,
            groups=g,
            K=k_in,
            N=n_out,
            w=wt,
            b=be,
            kidx=kidx,
            **out,
        )
    )
    return y


# ------------------------------------------------------------------------------------------ generic walk


_LEAVES = (ShuffleUnit, ConvBnAct, DepthwiseSeparableConv2d, ChannelShuffle, ChannelUnshuffle)


def _lower_module(prog: Program, x: int, m: nn.Module) -> int:
    if isinstance(m, ShuffleUnit):
        return _shuffle_unit(prog, x, m)
    if isinstance(m, ConvBnAct):
        return _conv_bn_act(prog, x, m)
    if isinstance(m, DepthwiseSeparableConv2d):
        return _conv_bn_act(prog, _conv_bn_act(prog, x, m.depthwise), m.pointwise)
    if isinstance(m, nn.Sequential):
        return _lower_sequence(prog, x, list(m.children()))
    if isinstance(m, nn.Conv2d):
        return _conv(prog, x, m, None, ACT_NONE)
    if isinstance(m, nn.BatchNorm2d):
        raise NotSupportedError(
            "a BatchNorm2d that does not directly follow a Conv2d in a Sequential"
        )
    if isinstance(m, nn.ReLU):
        if not _try_fuse_relu(prog, x):
            raise NotSupportedError("a ReLU that cannot be fused into the op before it")
        return x
    if isinstance(m, nn.Dropout | nn.Identity):
        return x
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        return _pool(prog, x, m)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if m.output_size not in (1, (1, 1)):
            raise NotSupportedError(f"{m}: only global average pooling (output size 1)")
        return _gap(prog, x)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1 or not prog.values[x].flat:
            raise NotSupportedError("Flatten other than of a globally pooled tensor")
        return x
    if isinstance(m, nn.Linear):
        return _linear(prog, x, m)
    return _lower_traced(prog, x, m)


def _lower_sequence(prog: Program, x: int, mods: list[nn.Module]) -> int:
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn = (
                mods[i + 1]
                if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d)
                else None
            )
            j = i + 1 + (bn is not None)
            act = ACT_NONE
            if j < len(mods) and relu_like(mods[j]) is True:
                act, j = ACT_RELU, j + 1
            x = _conv(prog, x, m, bn, act)
            i = j
            continue
        x = _lower_module(prog, x, m)
        i += 1
    return x


def _gap(prog: Program, x: int) -> int:
    if prog.values[x].flat:
        raise NotSupportedError("global pooling of a flat tensor")
    c = prog.values[x].channels
    y = prog.new_value(c, flat=True)
    prog.ops.append(Op(OP_GAP, x, y, cin=c, cout=c))
    return y


def _linear(prog: Program, x: int, m: nn.Linear) -> int:
    if not prog.values[x].flat:
        raise NotSupportedError("Linear on a tensor that is not globally pooled and flattened")
    if prog.values[x].channels != m.in_features:
        raise NotSupportedError(
            f"Linear expects {m.in_features} features, gets {prog.values[x].channels}"
        )
    wt = _f32(m.weight).t().contiguous()  # [in][out]
    b = _f32(m.bias) if m.bias is not None else torch.zeros(m.out_features)
    y = prog.new_value(m.out_features, flat=True)
    prog.ops.append(
        Op(
            OP_FC,
            x,
            y,
            cin=m.in_features,
            cout=m.out_features,
            K=m.in_features,
            N=m.out_features,
            w=wt,
            b=b,
        )
    )
    return y


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _lower_traced(prog: Program, x: int, root: nn.Module) -> int:
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "not supported"
        raise NotSupportedError(f"cannot trace {type(root).__name__} with torch.fx: {e}") from e
    env: dict[str, int] = {}
    modules = dict(root.named_modules())
    result: int | None = None
    placeholders = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                raise NotSupportedError(f"{type(root).__name__}.forward takes more than one tensor")
            env[node.name] = x
        elif node.op == "call_module":
            src = _arg_value(env, node.args[0])
            env[node.name] = _lower_module(prog, src, modules[node.target])
        elif node.op in ("call_method", "call_function"):
            env[node.name] = _lower_call(prog, env, node)
        elif node.op == "output":
            result = _arg_value(env, node.args[0])
        elif node.op == "get_attr":
            raise NotSupportedError(
                f"{type(root).__name__} reads tensor attribute {node.target} in forward"
            )
    if result is None:
        raise NotSupportedError(f"{type(root).__name__}.forward returns no tensor")
    return result


def _arg_value(env: dict[str, int], a: object) -> int:
    if isinstance(a, torch.fx.Node) and a.name in env:
        return env[a.name]
    raise NotSupportedError(f"unsupported argument {a!r} (only single-tensor data flow is lowered)")


def _lower_call(prog: Program, env: dict[str, int], node: torch.fx.Node) -> int:
    t = node.target
    src = _arg_value(env, node.args[0])
    rest = list(node.args[1:])
    kw = dict(node.kwargs)
    if t in ("flatten", torch.flatten):
        start = rest[0] if rest else kw.get("start_dim", 0)
        end = rest[1] if len(rest) > 1 else kw.get("end_dim", -1)
        if start == 1 and end == -1 and prog.values[src].flat:
            return src
        raise NotSupportedError(f"flatten({start}, {end}) of a tensor that is not globally pooled")
    if t in (torch.relu, nn.functional.relu, "relu", "relu_"):
        if _try_fuse_relu(prog, src):
            return src
        raise NotSupportedError("a relu that cannot be fused into the op before it")
    if t == "contiguous":
        return src
    raise NotSupportedError(
        f"unsupported operation {getattr(t, '__name__', t)!r} in a traced forward"
    )


def lower(model: nn.Module) -> Program:
    """Lower ``model`` (its eval-mode function) to a :class:`Program`. Raises :class:`NotSupportedError`."""
    if model.training:
        raise ValueError("lower() needs a model in eval mode (call model.eval())")
    for p in model.parameters():
        if p.dtype != torch.float32:
            raise NotSupportedError(
                f"parameters of dtype {p.dtype}; the native engine runs float32"
            )
    prog = Program()
    try:
        x = prog.new_value(in_channels(model))
    except ValueError as e:
        raise NotSupportedError(str(e)) from None
    prog.output = _lower_module(prog, x, model)
    if prog.output == 0 or not prog.ops:
        raise NotSupportedError(
            f"{type(model).__name__} computes nothing the native engine would run"
        )
    return prog
