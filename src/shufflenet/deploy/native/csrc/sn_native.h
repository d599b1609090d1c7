/* shufflenet native inference engine: the C ABI shared by the kernels, the runtime and Python (ctypes).
 *
 * Layout. Every internal activation is "planar": channel c of one image is a plane of H*W floats in raster
 * order, planes `cs` floats apart, and vectors run along pixels. The input of a stride-1 depthwise conv has
 * zeros around each plane (a halo of at least 2*W + 32 floats before and 2*W + 64 after), so that the 3x3
 * stencil reads neighbours with plain unaligned loads; other activations are compact (cs = H*W rounded up to
 * 16), and every kernel masks its loads at the end of a plane or row. A 1x1 group convolution is then a GEMM over planes, and a channel shuffle before it is only an
 * index list over its input planes (kidx): it is never materialised. Concatenation is writing planes at a
 * channel offset. Slot 0 is the caller's input and slot 1 the caller's output, both plain NCHW (cs = H*W, no
 * halo); every other slot is a workspace buffer owned by Python.
 *
 * Keep this header, the ctypes mirror in ``shufflenet/deploy/native/_abi.py`` and SN_ABI_VERSION in step.
 */
#ifndef SN_NATIVE_H
#define SN_NATIVE_H

#include <stdint.h>

#define SN_ABI_VERSION 6

#define SN_API __attribute__((visibility("default")))

enum sn_kind {
    SN_OP_PACK = 1,   /* plain NCHW planes -> halo planes (copy) */
    SN_OP_CONV = 2,   /* dense 3x3 conv, stride 1 or 2, pad 1, small cin (the stem), optionally + 3x3/2 max pool */
    SN_OP_PW = 3,     /* 1x1 group conv: per group a GEMM over input planes listed in koff */
    SN_OP_DW = 4,     /* 3x3 depthwise conv, stride 1 or 2, pad 1 */
    SN_OP_POOL = 5,   /* 3x3 stride 2 pad 1 max pool or average pool (count_include_pad) */
    SN_OP_GAP = 6,    /* global average pool -> flat vector */
    SN_OP_FC = 7,     /* fully connected on a flat vector */
    /* int8 ops on quad planes (sn_int8.h); weights in wp, prepared in Python */
    SN_OP_QPACK = 8,  /* float NCHW planes -> int8 quad planes, scale m_res */
    SN_OP_QCONV = 9,  /* dense 3x3 conv, stride 1 or 2, pad 1 (the stem) */
    SN_OP_QPW = 10,   /* 1x1 conv, all groups: tiles listed in koff (groups = number of tiles) */
    SN_OP_QDW = 11,   /* 3x3 depthwise conv or average pool, stride 1 or 2; koff: input channel of each output;
                         K = 3: wp also holds the per-row layout (sn_int8.h) */
    SN_OP_QMAX = 12,  /* 3x3/2 max pool */
    SN_OP_QGAP = 13,  /* global average pool -> flat float vector, times m_res */
    SN_OP_QOUT = 14   /* int8 quad planes -> float NCHW planes, times m_res */
};

enum sn_act { SN_ACT_NONE = 0, SN_ACT_RELU = 1 };
enum sn_pool { SN_POOL_MAX = 0, SN_POOL_AVG = 1 };

typedef struct sn_op {
    int32_t kind;
    int32_t act;
    int32_t src, dst, res;          /* slot ids; res = -1 when there is no residual */
    int32_t src_coff, dst_coff, res_coff; /* channel offsets inside the slots */
    int32_t cin, cout;              /* channels read / written */
    int32_t H, W, OH, OW;           /* spatial size in / out */
    int32_t groups, K, N;           /* PW, FC: per-group reduction length and outputs */
    int32_t stride, pool;           /* CONV, DW, POOL: stride; POOL: enum sn_pool; CONV: 1 = then max pool */
    int32_t reserved;
    const float *w;                 /* PW, FC: [groups][K][N]; DW: [c][9]; CONV: [cin*9][cout] */
    const float *wp;                /* PW, FC, CONV: w repacked by sn_pack for the instruction set in use */
    const float *b;                 /* bias per output channel (may be NULL for POOL, GAP) */
    const int32_t *koff;            /* PW: [groups][K] element offsets of the input planes in src */
    const uint32_t *masks;          /* DW, QDW stride 1: per pixel vector {left-ok bits, right-ok bits} */
    /* int8 ops: y = float(acc (+ comp[o])) * m[o] + b[o] (+ float(res) * m_res), clamped to [lo, hi] */
    int32_t qflags;                 /* 1: the input is signed, 2: the residual is signed */
    int32_t lo, hi;
    float m_res;
    const float *m;
    const int32_t *comp;            /* -128 * sum of channel o's weights (VNNI on a signed input) */
} sn_op;

typedef struct sn_plan {
    int32_t nops, nslots, batch, mode; /* mode 0: all threads on one image at a time; 1: one image per thread */
    int32_t nsets;                    /* workspace sets in ws (mode 1: one per thread) */
    int32_t adaptive;                 /* mode 0, threads > 1: may run on one thread when that measures faster */
    const sn_op *ops;
    const int64_t *slot_cs;           /* [nslots] plane stride (floats) */
    const int64_t *slot_img;          /* [nslots] image stride (floats), used for slots 0 and 1 */
    float *const *ws;                 /* [nsets][nslots] channel-0 data pointers of workspace slots */
    /* written by sn_run (mode 0, threads > 1): recent wall times with all threads (0) and with one (1) */
    double hist[2][8];
    int32_t nhist[2];
    int32_t tick, reserved2;
    /* mode 0, threads > 1 (may be NULL): deps[op * 64 + c] has bit d set when chunk c of op needs chunk d of
     * op - 1 (sn_plan_deps), for the chunks of deps_T threads on instruction set deps_isa */
    const uint64_t *deps;
    int32_t deps_T, deps_isa;
} sn_plan;

#endif
