"""Published numbers the experiment reports compare against, with their sources.

Units are named: ``mflops`` in the ShuffleNet paper are millions of multiply-adds (its Table 1 caption: "FLOPs,
i.e. the number of floating-point multiplication-adds"); Deep Roots' "FLOPS" column holds multiply-adds too.
Errors and accuracies are top-1, in percent or as a fraction as noted.
"""

from __future__ import annotations

__all__ = [
    "SHUFFLENET_SOURCE",
    "SHUFFLENET_TABLE1_MFLOPS",
    "SHUFFLENET_TABLE2",
    "SHUFFLENET_TABLE3",
    "SHUFFLENET_WIDE_MFLOPS",
    "DEEP_ROOTS_SOURCE",
    "DEEP_ROOTS_NIN",
    "DEEP_ROOTS_ALEXNET",
]

SHUFFLENET_SOURCE = (
    "Zhang, Zhou, Lin, Sun: ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile "
    "Devices, CVPR 2018 (arXiv:1707.01083)"
)

# Table 1: complexity (million multiply-adds) of ShuffleNet 1x per number of groups g, 224x224 input.
SHUFFLENET_TABLE1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}

# Table 2: per width s: (million multiply-adds, {g: ImageNet top-1 error %}).
SHUFFLENET_TABLE2 = {
    1.0: (140, {1: 33.6, 2: 32.7, 3: 32.6, 4: 32.8, 8: 32.4}),
    0.5: (38, {1: 45.1, 2: 44.4, 3: 43.2, 4: 41.6, 8: 42.3}),
    0.25: (13, {1: 57.1, 2: 56.8, 3: 55.0, 4: 54.2, 8: 52.7}),
}

# Tables 5-6: the wider g=3 models, million multiply-adds.
SHUFFLENET_WIDE_MFLOPS = {1.5: 292, 2.0: 524}

# Table 3: (width, g) -> (top-1 error % without shuffle, with shuffle) on ImageNet.
SHUFFLENET_TABLE3 = {
    (1.0, 3): (34.5, 32.6),
    (1.0, 8): (37.6, 32.4),
    (0.5, 3): (45.7, 43.2),
    (0.5, 8): (48.1, 42.3),
    (0.25, 3): (56.3, 55.0),
    (0.25, 8): (56.5, 52.7),
}

DEEP_ROOTS_SOURCE = (
    "Ioannou, Robertson, Cipolla, Criminisi: Deep Roots: Improving CNN Efficiency with Hierarchical Filter "
    "Groups, CVPR 2017, Table 1 (CIFAR-10 NIN), full-precision values from the first author's thesis data"
)

# root (1 = original) -> multiply-adds, parameters, CIFAR-10 top-1 accuracy (fraction), CPU ms, GPU ms.
# The multiply-adds include one per conv bias (1,418 in NIN); see shufflenet.models.nin.
DEEP_ROOTS_NIN = {
    1: {
        "macs": 222_487_946,
        "params": 966_986,
        "accuracy": 0.921125,
        "cpu_ms": 39.0,
        "gpu_ms": 0.623,
    },
    2: {
        "macs": 163_505_546,
        "params": 736_586,
        "accuracy": 0.9209,
        "cpu_ms": 31.2,
        "gpu_ms": 0.551,
    },
    4: {
        "macs": 123_397_514,
        "params": 455_498,
        "accuracy": 0.9202,
        "cpu_ms": 27.6,
        "gpu_ms": 0.480,
    },
    8: {
        "macs": 103_343_498,
        "params": 314_954,
        "accuracy": 0.9215,
        "cpu_ms": 24.4,
        "gpu_ms": 0.482,
    },
    16: {
        "macs": 93_316_490,
        "params": 244_682,
        "accuracy": 0.9167,
        "cpu_ms": 23.0,
        "gpu_ms": 0.475,
    },
}

# AlexNet as counted in the same work (Caffe reference model and its one-group form), ILSVRC validation.
DEEP_ROOTS_ALEXNET = {
    2: {"macs": 724_417_384, "params": 60_965_224, "top1": 0.5816, "top5": 0.8186},
    1: {"macs": 1_135_266_664, "params": 62_378_344, "top1": 0.58196, "top5": 0.810339},
}
