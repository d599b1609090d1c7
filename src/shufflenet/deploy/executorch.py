"""ExecuTorch export with the XNNPACK delegate (the ``[mobile]`` extra), checked with the ExecuTorch runtime.

:func:`export_executorch` folds batch norm into the convolutions, captures the model with ``torch.export`` at a
fixed input shape, lowers it with XNNPACK's partitioner and writes a ``.pte`` program and a JSON sidecar with
the input convention (:func:`sidecar_path`). Two ops of our models do not lower as PyTorch writes them, so the
exported graph is rewritten first (same numerics):

- ``AvgPool2d(3, 2, padding=1)`` counts the zero padding in its average (``count_include_pad=True``), which
  XNNPACK's average pooling cannot do: it becomes an explicit zero pad followed by an unpadded pool, the same
  sum divided by the same 9;
- ``chunk`` (ShuffleNet v2's channel split) becomes a ``split``, which has no XNNPACK node: it becomes one
  slice per part.

The channel shuffle (view -> transpose -> view) lowers as XNNPACK reshapes and a transpose, but only at a
fixed shape: XNNPACK's partitioner refuses reshapes with symbolic sizes, so a program with a dynamic batch or
image size would run every shuffle outside the delegate. The program therefore takes one shape (batch 1 at the
model's image size by default). :attr:`ExecuTorchExport.outside` lists what stays outside the delegate; with
``allow_outside=False`` (the default) anything there is an error naming the layer and the engine.
:func:`check_executorch` runs the program in the ExecuTorch runtime against eager PyTorch; with
``other_shapes`` it also exports and runs the model at other batch and image sizes (``shufflenet export``
checks a second batch and a non-square size this way).

Example::

    from shufflenet.deploy.executorch import export_executorch, check_executorch
    result = export_executorch(model, "model.pte", input_size=224)
    print(result.delegated, result.outside)          # nodes in XNNPACK, {} when all ops are delegated
    err = check_executorch(model, "model.pte")       # ExecuTorch runtime vs PyTorch, random inputs
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.spec import InputSpec, random_prepared
from ..models import in_channels
from ..utils.atomic import atomic_path, atomic_write
from .errors import NotSupportedError
from .fold import fold_batchnorm

__all__ = [
    "ENGINE",
    "ExecuTorchCheck",
    "ExecuTorchExport",
    "ExecuTorchRunner",
    "check_executorch",
    "export_executorch",
    "require_executorch",
    "sidecar_path",
]

ENGINE = "ExecuTorch/XNNPACK"
MOBILE_EXTRA = "pip install 'shufflenet[mobile]'"


def require_executorch():
    """Import ``executorch`` (and the XNNPACK partitioner) or raise :class:`ImportError` naming the extra."""
    try:
        import executorch  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise ImportError(
            f"ExecuTorch export needs executorch and torchao ({e}): {MOBILE_EXTRA}"
        ) from e
    return XnnpackPartitioner, to_edge_transform_and_lower


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the input convention of an exported program is stored: ``model.pte`` -> ``model.pte.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


@dataclasses.dataclass
class ExecuTorchExport:
    """What :func:`export_executorch` wrote.

    Attributes:
        path: the ``.pte`` file (None when only bytes were asked for).
        input_shape: the program's one input shape (N, C, H, W), float32, NCHW.
        delegates: XNNPACK subgraphs in the program (1 when the whole model is one delegate).
        delegated: ATen nodes inside the delegates.
        outside: op name -> count of nodes left to ExecuTorch's portable kernels (empty: all delegated).
        outside_layers: the module paths those nodes come from.
        nbytes: size of the program.
    """

    path: Path | None
    input_shape: tuple[int, int, int, int]
    delegates: int
    delegated: int
    outside: dict[str, int]
    outside_layers: list[str]
    nbytes: int
    data: bytes = dataclasses.field(repr=False, default=b"")

    @property
    def outside_count(self) -> int:
        return sum(self.outside.values())


def _avg_pool2d_padded(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):  # fmt: skip
    """``avg_pool2d`` with zero padding counted, as zero pad + unpadded pool (the same sum over the same
    ``kh * kw``); other configurations are left as they are."""
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if len(pad) == 1:
        pad = (pad[0], pad[0])
    if not count_include_pad or pad == (0, 0) or ceil_mode or divisor_override is not None:
        return NotImplemented
    x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))  # zeros, (N, C, H + 2ph, W + 2pw)
    return torch.ops.aten.avg_pool2d.default(x, kernel_size, stride or kernel_size, 0, False, True)


def _split_as_slices(x, split_sizes, dim=0):
    """``split_with_sizes`` as one ``slice`` per part (XNNPACK has slices, not splits)."""
    out, start = [], 0
    for s in split_sizes:
        out.append(torch.ops.aten.slice.Tensor(x, dim, start, start + s))
        start += s
    return out


def _split_even_as_slices(x, split_size, dim=0):
    """``split(x, split_size, dim)`` (what ``chunk`` becomes) as slices."""
    n = x.shape[dim]
    sizes = [min(split_size, n - s) for s in range(0, n, split_size)]
    return _split_as_slices(x, sizes, dim)


def _decompositions() -> dict:
    # only these two: the default table would also turn max_pool2d into max_pool2d_with_indices, which
    # XNNPACK does not take
    return {
        torch.ops.aten.avg_pool2d.default: _avg_pool2d_padded,
        torch.ops.aten.split_with_sizes.default: _split_as_slices,
        torch.ops.aten.split.Tensor: _split_even_as_slices,
    }


def _runtime_has_kernel(op: str) -> bool:
    """Whether ExecuTorch's runtime (its Python bindings) registers an out-variant kernel for an edge op such
    as ``aten::pow.Tensor_Scalar`` (kernel ``aten::pow.Tensor_Scalar_out``) or ``aten::avg_pool3d``
    (``aten::avg_pool3d.out``). Without the bindings nothing can be checked: ``True``."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return True
    base, _, overload = op.partition(".")
    names = set(portable_lib._get_operator_names())
    return f"{base}.out" in names or (bool(overload) and f"{base}.{overload}_out" in names)


def _layer_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].strip("'>")
        return f"{path or '<model>'} ({name})"
    return f"<{node.name}>"


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike[str] | None = None,
    input_size: int | tuple[int, int] = 224,
    *,
    batch: int = 1,
    in_chans: int | None = None,
    input_spec: InputSpec | None = None,
    allow_outside: bool = False,
    metadata: dict[str, Any] | None = None,
) -> ExecuTorchExport:
    """Export a float32, eval-mode copy of ``model`` to an ExecuTorch program delegated to XNNPACK.

    Args:
        model: the model (not modified); batch norms are folded into the convolutions of the copy.
        path: write the ``.pte`` here (atomically) and the input convention to :func:`sidecar_path`.
        input_size: height = width (or ``(h, w)``) of the program's input, pixels.
        batch: the program's batch size (the input shape is fixed, see the module docstring).
        in_chans: input channels (default: those of the first convolution, or of ``input_spec``).
        input_spec: the input convention, stored in the sidecar.
        allow_outside: keep a program in which some nodes stay outside the delegate (listed in the result);
            ``False``: raise :class:`~shufflenet.deploy.api.NotSupportedError` naming their layers.
        metadata: more entries for the sidecar (JSON-serialisable).

    Returns:
        :class:`ExecuTorchExport` (with the program bytes in ``data``).
    """
    partitioner_cls, lower = require_executorch()

    h, w = (input_size, input_size) if isinstance(input_size, int) else map(int, input_size)
    for name, v in (("batch", batch), ("height", h), ("width", w)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive int")
    c = in_chans or (input_spec.in_chans if input_spec is not None else in_channels(model))
    src = copy.deepcopy(model).eval().float().cpu().to(memory_format=torch.contiguous_format)
    fold_batchnorm(src)
    x = torch.randn(batch, c, h, w)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(src, (x,), strict=False)
        except Exception as e:  # noqa: BLE001 - reported with the engine's name
            raise NotSupportedError(
                f"{ENGINE}: torch.export cannot capture {type(model).__name__}: "
                f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from e
        ep = ep.run_decompositions(_decompositions())
        edge = lower(ep, partitioner=[partitioner_cls()])
    graph = edge.exported_program().graph_module
    delegates = 0
    delegated = 0
    outside: Counter[str] = Counter()
    layers_of: dict[str, list[str]] = {}
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if getattr(target, "__name__", "") == "executorch_call_delegate":
            delegates += 1
            sub = getattr(graph, node.args[0].target)
            delegated += _count_lowered_nodes(sub)
        elif target.__module__ == "_operator" or "sym_size" in str(target):
            continue  # getitem of a delegate's outputs, shape queries
        else:
            op = str(getattr(target, "_name", None) or getattr(target, "__name__", target))
            outside[op] += 1
            layer = _layer_of(node)
            if layer not in layers_of.setdefault(op, []):
                layers_of[op].append(layer)
    layers = list(dict.fromkeys(layer for op_layers in layers_of.values() for layer in op_layers))
    if outside and not allow_outside:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(outside.items()))
        raise NotSupportedError(
            f"{ENGINE} does not take these layers of {type(model).__name__}: {', '.join(layers)} "
            f"(ops left outside the delegate: {ops}); pass allow_outside=True (--allow-outside) to keep "
            "them on ExecuTorch's portable kernels"
        )
    missing = [op for op in sorted(outside) if not _runtime_has_kernel(op)]
    if missing:
        where = "; ".join(f"{op} ({', '.join(layers_of[op])})" for op in missing)
        raise NotSupportedError(
            f"{ENGINE}: the ExecuTorch runtime installed here has no portable kernel for {where}, so the "
            "program would not load; these layers must be replaced or delegated"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = bytes(edge.to_executorch().buffer)
    result = ExecuTorchExport(
        path=Path(path) if path is not None else None,
        input_shape=(batch, c, h, w),
        delegates=delegates,
        delegated=delegated,
        outside=dict(outside),
        outside_layers=layers,
        nbytes=len(data),
        data=data,
    )
    if path is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        side = {
            "format": "executorch",
            "engine": ENGINE,
            "method": "forward",
            "input": {"shape": list(result.input_shape), "dtype": "float32", "layout": "NCHW"},
            "output": {"meaning": "logits (no softmax)"},
            "input_spec": input_spec.to_dict() if input_spec is not None else None,
            "delegates": delegates,
            "nodes_outside_delegate": result.outside_count,
            **(metadata or {}),
        }
        with atomic_write(sidecar_path(path)) as f:
            json.dump(side, f, indent=2)
    return result


def _count_lowered_nodes(lowered) -> int:
    """ATen nodes a lowered XNNPACK module was made from (0 when the module does not keep its graph)."""
    prog = getattr(lowered, "original_module", None)
    if prog is None:
        return 0
    return sum(1 for n in prog.graph.nodes if n.op == "call_function")


class ExecuTorchRunner:
    """Run a ``.pte`` program (path or bytes) with the ExecuTorch runtime's Python bindings.

    Args:
        program: path or bytes.
        threads: size of ExecuTorch's thread pool, which XNNPACK uses (process-wide; None: leave it).

    ``runner(x)`` takes a float32 torch tensor of the program's input shape and returns the logits.
    """

    def __init__(self, program: str | os.PathLike[str] | bytes, threads: int | None = None) -> None:
        require_executorch()
        from executorch.runtime import Runtime

        if threads is not None:
            from executorch.extension.pybindings import portable_lib

            if threads < 1:
                raise ValueError(f"threads={threads} must be >= 1")
            portable_lib._unsafe_reset_threadpool(int(threads))
        data = program if isinstance(program, bytes) else Path(program)
        try:
            self.program = Runtime.get().load_program(data)
        except RuntimeError as e:  # not an ExecuTorch program, or a damaged one
            raise ValueError(f"not a loadable ExecuTorch program ({e})") from e
        try:
            self.method = self.program.load_method("forward")
        except RuntimeError as e:  # e.g. 0x14: an operator without a kernel in this runtime
            raise NotSupportedError(f"the ExecuTorch runtime cannot load this program: {e}") from e

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.method.metadata.input_tensor_meta(0).sizes())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().float().contiguous()
        if tuple(x.shape) != self.input_shape:
            raise ValueError(
                f"input shape {tuple(x.shape)} != the program's fixed input shape {self.input_shape}"
            )
        return self.method.execute([x])[0]


@dataclasses.dataclass
class ExecuTorchCheck:
    """ExecuTorch runtime against PyTorch (eager, float32) on random inputs."""

    shapes: list[tuple[int, ...]]
    max_abs_diff: float
    max_abs_output: float

    def ok(self, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
        """``max |diff| <= atol + rtol * max |output|`` (NaN fails)."""
        return self.max_abs_diff <= atol + rtol * self.max_abs_output


def _random_inputs(shape, n: int, input_spec: InputSpec | None, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*shape, generator=gen)]
    while len(xs) < n:
        if input_spec is None:
            xs.append(torch.randn(*shape, generator=gen) * 2)
        else:  # an image prepared by the model's convention: realistic activation ranges
            xs.append(random_prepared(shape, input_spec, gen))
    return xs


@torch.no_grad()
def check_executorch(
    model: nn.Module,
    program: str | os.PathLike[str] | bytes,
    *,
    inputs: int = 2,
    input_spec: InputSpec | None = None,
    seed: int = 0,
    other_shapes: tuple[tuple[int, int, int, int], ...] = (),
) -> ExecuTorchCheck:
    """Run ``program`` with the ExecuTorch runtime and ``model`` (eval, float32) on ``inputs`` random inputs of
    the program's shape: standard normal, then (with ``input_spec``) random images prepared by it.

    A program takes one shape; ``other_shapes`` (N, C, H, W) exports ``model`` again at each of them (the same
    way, all ops delegated or the same ops outside) and checks those programs too, so that the conversion is
    checked at more than one batch and image size (odd sizes exercise the padded pooling rewrite)."""
    runner = ExecuTorchRunner(program)
    shape = runner.input_shape
    m = copy.deepcopy(model).eval().float().cpu()
    worst, biggest = 0.0, 0.0
    shapes = []
    runs = [(runner, shape)]
    for other in other_shapes:
        n, c, h, w = other
        res = export_executorch(m, None, input_size=(h, w), batch=n, in_chans=c, allow_outside=True)
        runs.append((ExecuTorchRunner(res.data), tuple(other)))
    for i, (run, shp) in enumerate(runs):
        for x in _random_inputs(shp, inputs, input_spec, seed + i):
            ref = m(x)
            got = run(x)
            if got.shape != ref.shape:
                raise ValueError(
                    f"ExecuTorch output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}"
                )
            diff = float((got - ref).abs().max())
            worst = diff if diff != diff else max(worst, diff)  # keep a NaN
            biggest = max(biggest, float(ref.abs().max()))
            shapes.append(tuple(shp))
    return ExecuTorchCheck(shapes, worst, biggest)
