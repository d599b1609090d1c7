/* The table through which the runtime calls the kernels of one instruction set. */
#ifndef SN_VTAB_H
#define SN_VTAB_H

#include <stdint.h>

#include "sn_native.h"

typedef struct sn_vtab {
    int isa; /* 0 portable, 1 AVX2+FMA, 2 AVX-512 */
    int vw;  /* floats per vector */
    int (*nchunks)(const sn_op *op, int T);
    void (*run)(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int T);
    int (*span)(const sn_op *op, int chunk, int T, int64_t *sp); /* pixels a chunk reads and writes */
    /* channels-last shuffle of rows [p0, p1); stream != 0: the tensor is big, bypass the caches if possible */
    void (*shuffle)(const float *in, float *out, int64_t p0, int64_t p1, int C, int g, int stream);
    int64_t (*pack_size)(const sn_op *op);                /* floats of op->wp, 0 if none */
    void (*pack)(const sn_op *op, float *wp);             /* fill op->wp from op->w */
} sn_vtab;

#endif
