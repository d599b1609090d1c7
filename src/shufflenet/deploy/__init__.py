"""Fast CPU inference: ``optimize(model, backend=...)`` returns an inference-only copy on one of five engines.

    from shufflenet.deploy import optimize
    fast = optimize(model, backend="native")        # or "optimized", "compile", "onnxruntime", "eager"
    logits = fast(images)                           # same outputs as model.eval()(images), within 1e-4

See :func:`optimize` for the backends, :mod:`.native` for the compiled engine, :mod:`.onnx` for ONNX export
(the package's one exporter; :func:`fold_batchnorm` folds a whole model's batch norms for it) and ONNX
Runtime, :mod:`.executorch` (ExecuTorch with every op delegated to XNNPACK) and :mod:`.ncnn` (ncnn through
pnnx) for mobile engines (the ``[mobile]`` extra; import those modules directly), :func:`channel_shuffle_nhwc` for the channels-last shuffle at memory-copy speed, and
``shufflenet bench`` / ``benchmarks/inference.py`` for measurements.
"""

from .api import BACKENDS, DeployedModel, NotSupportedError, available_backends, optimize
from .fold import fold_batchnorm, fold_conv_bn
from .shuffle import FastChannelShuffle, channel_shuffle_nhwc, measure_shuffle_bandwidth

__all__ = [
    "BACKENDS",
    "DeployedModel",
    "FastChannelShuffle",
    "NotSupportedError",
    "available_backends",
    "channel_shuffle_nhwc",
    "fold_batchnorm",
    "fold_conv_bn",
    "measure_shuffle_bandwidth",
    "optimize",
]
