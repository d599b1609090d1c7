"""ctypes mirror of ``csrc/sn_native.h`` (keep in step with it and with ``SN_ABI_VERSION``)."""

from __future__ import annotations

import ctypes

ABI_VERSION = 6

OP_PACK, OP_CONV, OP_PW, OP_DW, OP_POOL, OP_GAP, OP_FC = 1, 2, 3, 4, 5, 6, 7
OP_QPACK, OP_QCONV, OP_QPW, OP_QDW, OP_QMAX, OP_QGAP, OP_QOUT = 8, 9, 10, 11, 12, 13, 14
ACT_NONE, ACT_RELU = 0, 1
POOL_MAX, POOL_AVG = 0, 1
ISA_NAMES = ("generic", "avx2", "avx512")
# op kind -> its name in a profile (NativeModule.profile)
OP_NAMES = {
    OP_PACK: "pack",
    OP_CONV: "conv3x3",
    OP_PW: "pw",
    OP_DW: "dw",
    OP_POOL: "pool",
    OP_GAP: "gap",
    OP_FC: "fc",
    OP_QPACK: "quantize",
    OP_QCONV: "conv3x3-int8",
    OP_QPW: "pw-int8",
    OP_QDW: "dw-int8",
    OP_QMAX: "maxpool-int8",
    OP_QGAP: "gap-int8",
    OP_QOUT: "dequantize",
}

_i32 = ctypes.c_int32


class SnOp(ctypes.Structure):
    _fields_ = [
        ("kind", _i32),
        ("act", _i32),
        ("src", _i32),
        ("dst", _i32),
        ("res", _i32),
        ("src_coff", _i32),
        ("dst_coff", _i32),
        ("res_coff", _i32),
        ("cin", _i32),
        ("cout", _i32),
        ("H", _i32),
        ("W", _i32),
        ("OH", _i32),
        ("OW", _i32),
        ("groups", _i32),
        ("K", _i32),
        ("N", _i32),
        ("stride", _i32),
        ("pool", _i32),
        ("reserved", _i32),
        ("w", ctypes.c_void_p),
        ("wp", ctypes.c_void_p),
        ("b", ctypes.c_void_p),
        ("koff", ctypes.c_void_p),
        ("masks", ctypes.c_void_p),
        ("qflags", _i32),
        ("lo", _i32),
        ("hi", _i32),
        ("m_res", ctypes.c_float),
        ("m", ctypes.c_void_p),
        ("comp", ctypes.c_void_p),
    ]


class SnPlan(ctypes.Structure):
    _fields_ = [
        ("nops", _i32),
        ("nslots", _i32),
        ("batch", _i32),
        ("mode", _i32),
        ("nsets", _i32),
        ("adaptive", _i32),
        ("ops", ctypes.POINTER(SnOp)),
        ("slot_cs", ctypes.POINTER(ctypes.c_int64)),
        ("slot_img", ctypes.POINTER(ctypes.c_int64)),
        ("ws", ctypes.POINTER(ctypes.c_void_p)),
        ("hist", (ctypes.c_double * 8) * 2),
        ("nhist", ctypes.c_int32 * 2),
        ("tick", _i32),
        ("reserved2", _i32),
        ("deps", ctypes.c_void_p),
        ("deps_T", _i32),
        ("deps_isa", _i32),
    ]
