"""``optimize(model, backend=...)``: an inference-only copy of a model on one of several engines."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..models import in_channels
from .errors import NotSupportedError
from .native import NativeModule, NativeUnavailable, get_library
from .onnx import OnnxRuntimeModule, export_onnx, require_onnx
from .optimized import optimize_torch

__all__ = ["BACKENDS", "DeployedModel", "NotSupportedError", "optimize", "available_backends"]

BACKENDS = ("eager", "optimized", "compile", "onnxruntime", "native")


class DeployedModel(nn.Module):
    """Inference wrapper returned by :func:`optimize`: runs ``inner`` under ``torch.inference_mode()``.

    Attributes:
        backend: the engine that actually runs (``"optimized"`` when ``"native"`` fell back).
        requested: the engine that was asked for.
        fallback_reason: why it fell back, or None.
    """

    def __init__(
        self,
        inner: nn.Module,
        backend: str,
        requested: str,
        channels_last: bool,
        fallback_reason: str | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.backend = backend
        self.requested = requested
        self.channels_last = channels_last
        self.fallback_reason = fallback_reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.inner(x)

    def train(self, mode: bool = True) -> DeployedModel:
        if mode:
            raise RuntimeError(
                "a deployed model is inference-only; keep training the original model"
            )
        return super().train(False)

    def extra_repr(self) -> str:
        s = f"backend={self.backend!r}"
        if self.fallback_reason:
            s += f", requested={self.requested!r} (fell back: {self.fallback_reason})"
        return s


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to None if usable here, else the reason it is not (cheap; may build the native lib)."""
    out: dict[str, str | None] = {"eager": None, "optimized": None}
    try:
        # torch's compiler stack takes seconds to import: only when asked about it
        import torch._dynamo  # noqa: F401, PLC0415

        out["compile"] = None
    except Exception as e:  # noqa: BLE001
        out["compile"] = f"torch.compile unavailable: {e}"
    try:
        require_onnx("onnx", "onnxruntime")
        out["onnxruntime"] = None
    except ImportError as e:
        out["onnxruntime"] = str(e)
    try:
        get_library()
        out["native"] = None
    except NativeUnavailable as e:
        out["native"] = str(e)
    return out


def _example(model: nn.Module, input_size: int | tuple[int, int], batch: int = 1) -> torch.Tensor:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    try:
        c = in_channels(model)
    except ValueError:
        c = 3
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.randn(batch, c, h, w, device=dev)


def optimize(
    model: nn.Module,
    backend: str = "optimized",
    *,
    input_size: int | tuple[int, int] = 224,
    threads: int | None = None,
    isa: str | None = None,
    strict: bool = False,
    onnx_path: str | None = None,
    verify: bool = False,
    precision: str = "float32",
) -> nn.Module:
    """An inference-only copy of ``model`` running on ``backend``; ``model`` itself is never modified.

    Backends:
        ``"eager"``: the model as is (eval mode, channels-last input), for comparison.
        ``"optimized"``: PyTorch only: batch norm folded, ReLU fused, channels-last, shuffle moved after the
            depthwise conv and run at memory-copy speed (:mod:`.optimized`). Works on CPU and CUDA models.
        ``"compile"``: ``torch.compile`` (Inductor, with weight freezing) of the folded model; compiles on the
            first call, which :func:`optimize` makes once with an input of ``input_size``.
        ``"onnxruntime"``: exported to ONNX (:func:`.onnx.export_onnx`) and run by ONNX Runtime on the CPU.
        ``"native"``: the compiled engine (:mod:`.native`): planar kernels with the shuffle in the 1x1 GEMM
            indexing. Falls back to ``"optimized"`` with a warning when no C compiler is available or the model
            has parts it does not run (``strict=True``: raise instead).

    Args:
        input_size: spatial size for the ONNX export and the compile warm-up (any size runs afterwards).
        threads: threads of ONNX Runtime / the native engine (default: ``torch.get_num_threads()`` at call
            time for native, at creation for ONNX Runtime).
        isa: native instruction set (``"avx512"``, ``"avx2"``, ``"generic"``; default the best available).
        onnx_path: keep the exported ONNX file here (``"onnxruntime"`` only).
        verify: run the eager model and the result once on a random input and raise if they differ by more
            than 1e-4 relative to the output's scale.
        precision: ``"int8"`` runs an int8 model (:func:`shufflenet.quantize`, or a loaded int8 model file;
            also chosen when ``model`` is one) on the native engine's int8 kernels, ``backend="native"`` only.
            Without a compiler, or for a layout those kernels do not run, it warns and keeps the PyTorch int8
            runtime (``strict=True``: raise instead).

    Returns:
        A :class:`DeployedModel` (``.backend`` says which engine runs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {BACKENDS}")
    if precision not in ("float32", "int8"):
        raise ValueError(f"precision={precision!r} must be 'float32' or 'int8'")
    if precision == "int8" or getattr(model, "precision", None) == "int8":
        return _optimize_int8(model, backend, isa, threads, strict)
    src = copy.deepcopy(model).eval()
    for p in src.parameters():
        p.requires_grad_(False)
    on_cpu = all(p.device.type == "cpu" for p in src.parameters())
    reason = None
    if backend == "native":
        if not on_cpu:
            reason = "the native engine runs on the CPU only"
        else:
            try:
                inner = NativeModule(src, isa=isa, num_threads=threads)
                result = DeployedModel(inner, "native", backend, channels_last=False)
                return _maybe_verify(model, result, input_size, verify)
            except (NativeUnavailable, NotSupportedError) as e:
                reason = str(e)
        if strict:
            raise NotSupportedError(f"native backend unavailable: {reason}")
        warnings.warn(
            f"shufflenet.deploy: native backend unavailable ({reason}); using the pure-PyTorch 'optimized' backend",
            RuntimeWarning,
            stacklevel=2,
        )
        backend_used = "optimized"
    else:
        backend_used = backend
    if backend_used == "eager":
        result = DeployedModel(src.to(memory_format=torch.channels_last), "eager", backend, True)
    elif backend_used == "optimized":
        result = DeployedModel(optimize_torch(src), "optimized", backend, True, reason)
    elif backend_used == "compile":
        result = DeployedModel(_compiled(src, input_size), "compile", backend, True)
    else:  # onnxruntime
        data = export_onnx(src, onnx_path, input_size=input_size, dynamic=True)
        result = DeployedModel(
            OnnxRuntimeModule(data, threads=threads), "onnxruntime", backend, False
        )
    return _maybe_verify(model, result, input_size, verify)


def _optimize_int8(
    model: nn.Module, backend: str, isa: str | None, threads: int | None, strict: bool
) -> DeployedModel:
    if getattr(model, "precision", None) != "int8":
        raise ValueError(
            "precision='int8' needs an int8 model: quantize it first (shufflenet.quantize(model, "
            "calibration_images)) or load an int8 model file"
        )
    if backend != "native":
        raise ValueError(f"int8 models run on backend='native' (or as they are), not {backend!r}")
    from .native import NativeUnavailable

    try:
        return DeployedModel(model.native(isa=isa, num_threads=threads), "native", backend, False)
    except (NativeUnavailable, NotSupportedError) as e:
        if strict:
            raise NotSupportedError(f"native int8 backend unavailable: {e}") from e
        warnings.warn(
            f"shufflenet.deploy: native int8 backend unavailable ({e}); using the PyTorch int8 runtime",
            RuntimeWarning,
            stacklevel=3,
        )
        return DeployedModel(model, "eager", backend, False, str(e))


class _Frozen(nn.Module):
    """Calls a ``torch.compile``d module with Inductor's weight freezing on (also for recompilations, e.g. at
    a new batch size)."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the compiler stack is imported only by the compile backend (seconds to import)
        import torch._inductor.config as inductor_config  # noqa: PLC0415

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def _compiled(src: nn.Module, input_size: int | tuple[int, int]) -> nn.Module:
    folded = optimize_torch(src, use_mkldnn=False, native_shuffle=False)
    frozen = _Frozen(torch.compile(folded, dynamic=False))
    x = _example(src, input_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        frozen(x)  # compile now rather than in the caller's first (timed) call
    return frozen


def _maybe_verify(model: nn.Module, result: nn.Module, input_size, verify: bool) -> nn.Module:
    if not verify:
        return result
    x = _example(model, input_size, batch=2)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        model.train(was)
    out = result(x)
    err = (out.float() - ref.float()).abs().max().item() / max(ref.abs().max().item(), 1e-12)
    if not err <= 1e-4:
        raise RuntimeError(
            f"backend {result.backend!r} differs from eager: relative error {err:.2e} > 1e-4"
        )
    return result
