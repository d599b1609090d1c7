"""Post-training int8 quantisation of ShuffleNet v1 and MobileNet v1.

:func:`quantize` folds batch norm, quantises weights (int8, symmetric, one scale per output channel) and
activations (int8, one scale per tensor from calibration images), and returns a :class:`QuantizedModel` that
runs the int8 arithmetic in PyTorch; ``shufflenet.deploy.optimize(model, "native", precision="int8")`` runs
it with the compiled kernels. :func:`save_quantized` / :func:`load_quantized` write and read int8 model
files. The scheme: :mod:`.program`; calibration methods and the default: :mod:`.calibrate`.

The package is callable: ``shufflenet.quantize(model, images, ...)`` is :func:`quantize`, and
``shufflenet.quantize.load_quantized`` etc. stay reachable.
"""

import sys
import types

from .calibrate import METHODS
from .core import QuantizedModel, quantize, run_int8
from .io import INT8_FORMAT, is_int8_file, load_quantized, save_quantized
from .program import QOp, QProgram, QValue

__all__ = [
    "INT8_FORMAT",
    "METHODS",
    "QOp",
    "QProgram",
    "QValue",
    "QuantizedModel",
    "is_int8_file",
    "load_quantized",
    "quantize",
    "run_int8",
    "save_quantized",
]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return quantize(*args, **kwargs)

    __call__.__doc__ = quantize.__doc__


sys.modules[__name__].__class__ = _CallableModule
