/* Kernels and their work split, compiled once per instruction set (SN_ISA, see sn_simd.h); every external
 * symbol carries the suffix SN_SUFFIX. See sn_native.h for the planar layout. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sn_native.h"
#include "sn_simd.h"

#ifndef SN_SUFFIX
#define SN_SUFFIX _generic
#endif
#define SN_CAT2(a, b) a##b
#define SN_CAT(a, b) SN_CAT2(a, b)
#define SN_FN(name) SN_CAT(name, SN_SUFFIX)

#define UNROLL _Pragma("GCC unroll 32")
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define CDIV(a, b) (((a) + (b) - 1) / (b))

/* ---------------------------------------------------------------------------------------------------------
 * 1x1 group convolution on planes. For one group: O[n][p] = act(bias[n] + sum_k W[k][n] * A[koff[k] + p]
 * (+ R[n][p])). A register tile holds MR output channels x NV pixel vectors; the weights are broadcast.
 * ------------------------------------------------------------------------------------------------------- */
#if SN_ISA == 2
#define PW_NVMAX 4
static const int pw_mrmax[PW_NVMAX + 1] = {0, 16, 12, 8, 6};
#define PW_NV_DEFAULT 3
#define PW_NTMAX 4 /* tail pixels a tile takes along (pwt_tab) */
#else
#define PW_NVMAX 4
static const int pw_mrmax[PW_NVMAX + 1] = {0, 12, 6, 4, 3};
#define PW_NV_DEFAULT 2
#define PW_NTMAX 0
#endif

typedef void (*pw_kernel_fn)(int K, const float *a, const int32_t *koff, const float *w, int ldw,
                             const float *bias, float *o, int64_t so, const float *r, int64_t sr,
                             int relu, int nlast);

SN_INLINE void pw_body(const int MR, const int NV, const int NT, int K, const float *a, const int32_t *koff,
                       const float *w, int ldw, const float *bias, float *o, int64_t so, const float *r,
                       int64_t sr, int relu, int nlast)
{
    vf acc[16][PW_NVMAX], tacc[PW_NTMAX + 1];
    UNROLL for (int i = 0; i < MR; i++) {
        vf b = v_set1(bias[i]);
        UNROLL for (int v = 0; v < NV; v++) acc[i][v] = b;
    }
    const vm mmr = v_mask_n(MR);
    UNROLL for (int t = 0; t < NT; t++) tacc[t] = v_loadz(bias, mmr);
    for (int k = 0; k < K; k++) {
        const float *ak = a + koff[k];
        const float *wk = w + (ptrdiff_t)k * ldw;
        vf av[PW_NVMAX];
        UNROLL for (int v = 0; v < NV; v++) av[v] = v_load(ak + v * VW);
        UNROLL for (int i = 0; i < MR; i++) {
            vf wb = v_set1(wk[i]);
            UNROLL for (int v = 0; v < NV; v++) acc[i][v] = v_fma(wb, av[v], acc[i][v]);
        }
        if (NT) { /* the tail pixels: vectors along the MR output channels, the same products in the same order */
            const vf wv = v_loadz(wk, mmr);
            UNROLL for (int t = 0; t < NT; t++) tacc[t] = v_fma(v_set1(ak[NV * VW + t]), wv, tacc[t]);
        }
    }
    UNROLL for (int t = 0; t < NT; t++) {
        float y[VW];
        v_store(y, tacc[t]);
        for (int i = 0; i < MR; i++) {
            float x = y[i];
            if (r) x += r[(ptrdiff_t)i * sr + NV * VW + t];
            if (relu && x < 0.0f) x = 0.0f;
            o[(ptrdiff_t)i * so + NV * VW + t] = x;
        }
    }
    const vm ml = v_mask_n(nlast);
    UNROLL for (int i = 0; i < MR; i++) {
        float *oi = o + (ptrdiff_t)i * so;
        const float *ri = r ? r + (ptrdiff_t)i * sr : NULL;
        UNROLL for (int v = 0; v < NV; v++) {
            vf x = acc[i][v];
            const int last = v == NV - 1 && nlast < VW;
            if (ri) x = v_add(x, last ? v_loadz(ri + v * VW, ml) : v_load(ri + v * VW));
            if (relu) x = v_relu(x);
            if (last)
                v_storem(oi + v * VW, x, ml);
            else
                v_store(oi + v * VW, x);
        }
    }
}

#define PW_DEF(MR, NV)                                                                                  \
    static void pw_k_##MR##_##NV(int K, const float *a, const int32_t *koff, const float *w, int ldw,  \
                                 const float *bias, float *o, int64_t so, const float *r, int64_t sr,  \
                                 int relu, int nlast)                                                  \
    {                                                                                                  \
        pw_body(MR, NV, 0, K, a, koff, w, ldw, bias, o, so, r, sr, relu, nlast);                       \
    }

#define PW_DEF4(a, b, c, d, NV) PW_DEF(a, NV) PW_DEF(b, NV) PW_DEF(c, NV) PW_DEF(d, NV)
PW_DEF4(1, 2, 3, 4, 1) PW_DEF4(5, 6, 7, 8, 1) PW_DEF4(9, 10, 11, 12, 1)
PW_DEF4(1, 2, 3, 4, 2) PW_DEF(5, 2) PW_DEF(6, 2)
PW_DEF4(1, 2, 3, 4, 3)
PW_DEF(1, 4) PW_DEF(2, 4) PW_DEF(3, 4)
#if SN_ISA == 2
PW_DEF4(13, 14, 15, 16, 1)
PW_DEF4(7, 8, 9, 10, 2) PW_DEF(11, 2) PW_DEF(12, 2)
PW_DEF4(5, 6, 7, 8, 3)
PW_DEF(4, 4) PW_DEF(5, 4) PW_DEF(6, 4)
#endif

#define PW_ROW4(a, b, c, d, NV) pw_k_##a##_##NV, pw_k_##b##_##NV, pw_k_##c##_##NV, pw_k_##d##_##NV
static const pw_kernel_fn pw_tab[PW_NVMAX + 1][17] = {
    {0},
#if SN_ISA == 2
    {0, PW_ROW4(1, 2, 3, 4, 1), PW_ROW4(5, 6, 7, 8, 1), PW_ROW4(9, 10, 11, 12, 1), PW_ROW4(13, 14, 15, 16, 1)},
    {0, PW_ROW4(1, 2, 3, 4, 2), PW_ROW4(5, 6, 7, 8, 2), PW_ROW4(9, 10, 11, 12, 2)},
    {0, PW_ROW4(1, 2, 3, 4, 3), PW_ROW4(5, 6, 7, 8, 3)},
    {0, PW_ROW4(1, 2, 3, 4, 4), pw_k_5_4, pw_k_6_4},
#else
    {0, PW_ROW4(1, 2, 3, 4, 1), PW_ROW4(5, 6, 7, 8, 1), PW_ROW4(9, 10, 11, 12, 1)},
    {0, PW_ROW4(1, 2, 3, 4, 2), pw_k_5_2, pw_k_6_2},
    {0, PW_ROW4(1, 2, 3, 4, 3)},
    {0, pw_k_1_4, pw_k_2_4, pw_k_3_4},
#endif
};

/* A full tile of PW_NV_DEFAULT pixel vectors that ends where the plane's last P % VW pixels start, and those
 * NT pixels (1..PW_NTMAX) in the same pass: they cost NT multiply-adds per MR * PW_NV_DEFAULT of the tile, while
 * the weights are at hand (AVX-512 only; elsewhere pw_tail does them). */
#if SN_ISA == 2
#define PWT_DEF(MR, NT)                                                                                 \
    static void pw_kt_##MR##_##NT(int K, const float *a, const int32_t *koff, const float *w, int ldw, \
                                  const float *bias, float *o, int64_t so, const float *r, int64_t sr, \
                                  int relu, int nlast)                                                 \
    {                                                                                                  \
        pw_body(MR, PW_NV_DEFAULT, NT, K, a, koff, w, ldw, bias, o, so, r, sr, relu, nlast);           \
    }
#define PWT_DEF8(NT)                                                                                    \
    PWT_DEF(1, NT) PWT_DEF(2, NT) PWT_DEF(3, NT) PWT_DEF(4, NT) PWT_DEF(5, NT) PWT_DEF(6, NT) PWT_DEF(7, NT) \
    PWT_DEF(8, NT)
PWT_DEF8(1) PWT_DEF8(2) PWT_DEF8(3) PWT_DEF8(4)
#define PWT_ROW(NT)                                                                                     \
    {0, pw_kt_1_##NT, pw_kt_2_##NT, pw_kt_3_##NT, pw_kt_4_##NT, pw_kt_5_##NT, pw_kt_6_##NT, pw_kt_7_##NT, pw_kt_8_##NT}
static const pw_kernel_fn pwt_tab[PW_NTMAX + 1][9] = {{0}, PWT_ROW(1), PWT_ROW(2), PWT_ROW(3), PWT_ROW(4)};
#endif

/* the kernel of a tile of nv pixel vectors x mr output channels, plus nt tail pixels (0: none) */
SN_INLINE pw_kernel_fn pw_kernel(int nv, int mr, int nt)
{
#if SN_ISA == 2
    if (nt) return pwt_tab[nt][mr];
#else
    (void)nt;
#endif
    return pw_tab[nv][mr];
}

/* Number of pieces to cut `work` (about one multiply-add per unit) into for T threads; at most `cap`. */
static int split_count(double work, int T, int cap)
{
    if (T <= 1 || cap <= 1) return 1;
    if (work < 40000.0) return 1;
    int d = (int)(work / 300000.0); /* about 1-2 us of work per chunk */
    d = MAX(d, 2 * T);
    d = MIN(d, 8 * T);
    return MAX(1, MIN(d, cap));
}

/* Output channels of a group are cut into nb blocks of `base` or `base + 1` (the first `extra` blocks), at most
 * pw_mrmax[PW_NV_DEFAULT] each; sn_pack stores the weights block by block ([K][mr] each) in that order. */
static void pw_blocks(int N, int *nb, int *base, int *extra)
{
    *nb = CDIV(N, pw_mrmax[PW_NV_DEFAULT]);
    *base = N / *nb;
    *extra = N % *nb;
}

SN_INLINE int blk_start(int bi, int base, int extra) { return bi * base + MIN(bi, extra); }

/* Register tiles of PW_NV_DEFAULT pixel vectors that pixel ranges are cut from: only the full vectors count when
 * the partial last one goes to pw_tail (cheap: a 7x7 plane is 3 full vectors and 1 pixel, one tile, so that it is
 * split over output channels rather than into a share with all the work and one with a pixel). */
static int pw_tiles(const sn_op *op)
{
    const int P = op->H * op->W;
    int nb, base, extra;
    pw_blocks(op->N, &nb, &base, &extra);
    const int tail = base + (extra > 0) <= VW;
    return MAX(1, CDIV(tail ? P / VW : CDIV(P, VW), PW_NV_DEFAULT));
}

static void pw_split(const sn_op *op, int T, int *ps, int *ns)
{
    const int P = op->H * op->W;
    const double work = (double)P * op->K * op->N * op->groups;
    const int d = split_count(work, T, 1 << 20);
    const int dg = CDIV(d, op->groups);
    int nb, base, extra;
    pw_blocks(op->N, &nb, &base, &extra);
    *ps = MAX(1, MIN(dg, pw_tiles(op))); /* pixel ranges: whole register tiles */
    *ns = MAX(1, MIN(CDIV(dg, *ps), nb));
}

static int64_t pw_pack_size(const sn_op *op) { return (int64_t)op->groups * op->K * op->N; }

static void pw_pack(const sn_op *op, float *wp)
{
    const int K = op->K, N = op->N;
    int nb, base, extra;
    pw_blocks(N, &nb, &base, &extra);
    for (int g = 0; g < op->groups; g++) {
        const float *w = op->w + (ptrdiff_t)g * K * N;
        float *o = wp + (ptrdiff_t)g * K * N;
        for (int bi = 0; bi < nb; bi++) {
            const int n0 = blk_start(bi, base, extra), mr = base + (bi < extra);
            for (int k = 0; k < K; k++)
                for (int c = 0; c < mr; c++) o[(ptrdiff_t)K * n0 + k * mr + c] = w[(ptrdiff_t)k * N + n0 + c];
        }
    }
}

/* The last P % VW pixels of a plane, when the last tile does not take them along (pwt_tab): vectors run along
 * output channels instead of pixels, then a scalar epilogue writes the planes. This avoids computing a whole
 * pixel vector for a few pixels (at 7x7, 49 = 3 * 16 + 1). It reads the same packed weights ([K][mr] per block
 * of mr output channels): each vector holds one block or two neighbouring ones (two masked loads merged), TAIL_B
 * vectors at a time. Blocks wider than VW (the portable build) use the pixel-vector kernel on the partial vector
 * instead. */
#define TAIL_B 4
static void pw_tail(int K, const float *a, const int32_t *koff, const float *wg, const float *bias, float *o,
                    int64_t so, const float *r, int64_t sr, int relu, int p0, int np, int b0, int b1, int base,
                    int extra)
{
    float tmp[TAIL_B][VW];
    for (int bb = b0; bb < b1;) {
        /* pack the next blocks into up to TAIL_B vectors: vector j holds cnt[j] (1 or 2) neighbouring blocks */
        int cnt[TAIL_B], n0[TAIL_B], width[TAIL_B], mr0[TAIL_B], mr1[TAIL_B];
        const float *w0[TAIL_B], *w1[TAIL_B];
        vm m0[TAIL_B], m1[TAIL_B];
        int nvj = 0;
        while (nvj < TAIL_B && bb < b1) {
            const int f = bb, m_f = base + (f < extra);
            int c = 1;
            const int m_s = f + 1 < b1 ? base + (f + 1 < extra) : 0;
            if (m_s && m_f + m_s <= VW) c = 2;
            cnt[nvj] = c;
            n0[nvj] = blk_start(f, base, extra);
            mr0[nvj] = m_f;
            mr1[nvj] = c == 2 ? m_s : 0;
            width[nvj] = m_f + mr1[nvj];
            bb += c;
            nvj++;
        }
        for (int j = 0; j < TAIL_B; j++) {
            const int jj = MIN(j, nvj - 1); /* unused slots repeat the last vector, not stored */
            w0[j] = wg + (ptrdiff_t)K * n0[jj];
            w1[j] = cnt[jj] == 2 ? w0[j] + (ptrdiff_t)K * mr0[jj] - mr0[jj] : w0[j];
            m0[j] = v_mask_n(mr0[jj]);
            m1[j] = v_mask_range(mr0[jj], width[jj]);
            if (j != jj) {
                mr0[j] = mr0[jj];
                mr1[j] = mr1[jj];
                n0[j] = n0[jj];
                width[j] = width[jj];
            }
        }
        for (int p = p0; p < p0 + np; p++) {
            vf acc0[TAIL_B], acc1[TAIL_B];
            UNROLL for (int j = 0; j < TAIL_B; j++) {
                acc0[j] = v_loadz(bias + n0[j], v_mask_n(width[j]));
                acc1[j] = v_zero();
            }
            int k = 0;
            for (; k + 2 <= K; k += 2) {
                const vf a0 = v_set1(a[koff[k] + p]), a1 = v_set1(a[koff[k + 1] + p]);
                UNROLL for (int j = 0; j < TAIL_B; j++) {
                    vf x0 = v_loadz(w0[j] + (ptrdiff_t)k * mr0[j], m0[j]);
                    vf x1 = v_loadz(w0[j] + (ptrdiff_t)(k + 1) * mr0[j], m0[j]);
                    if (mr1[j]) {
                        x0 = v_loadf(w1[j] + (ptrdiff_t)k * mr1[j], m1[j], x0);
                        x1 = v_loadf(w1[j] + (ptrdiff_t)(k + 1) * mr1[j], m1[j], x1);
                    }
                    acc0[j] = v_fma(a0, x0, acc0[j]);
                    acc1[j] = v_fma(a1, x1, acc1[j]);
                }
            }
            if (k < K) {
                const vf a0 = v_set1(a[koff[k] + p]);
                UNROLL for (int j = 0; j < TAIL_B; j++) {
                    vf x0 = v_loadz(w0[j] + (ptrdiff_t)k * mr0[j], m0[j]);
                    if (mr1[j]) x0 = v_loadf(w1[j] + (ptrdiff_t)k * mr1[j], m1[j], x0);
                    acc0[j] = v_fma(a0, x0, acc0[j]);
                }
            }
            UNROLL for (int j = 0; j < TAIL_B; j++) v_store(tmp[j], v_add(acc0[j], acc1[j]));
            for (int j = 0; j < nvj; j++)
                for (int c = 0; c < width[j]; c++) {
                    const int n = n0[j] + c;
                    float x = tmp[j][c];
                    if (r) x += r[(ptrdiff_t)n * sr + p];
                    if (relu && x < 0.0f) x = 0.0f;
                    o[(ptrdiff_t)n * so + p] = x;
                }
        }
    }
}

/* What chunk `chunk` of the split for T threads computes: group g, pixel vectors [v0, v1) (the last range
 * ends at the plane's last, partial vector), output-channel blocks [b0, b1). Chunks are pixel-major:
 * consecutive chunks are one pixel range, all groups (see dw_run). */
typedef struct {
    int g, v0, v1, b0, b1;
} pw_part;

static pw_part pw_chunk(const sn_op *op, int chunk, int T)
{
    int ps, ns, nb, base, extra;
    pw_split(op, T, &ps, &ns);
    pw_blocks(op->N, &nb, &base, &extra);
    const int pi = chunk / (op->groups * ns), r = chunk % (op->groups * ns), ni = r % ns;
    const int nvec = CDIV(op->H * op->W, VW), ntiles = pw_tiles(op);
    pw_part c;
    c.g = r / ns;
    c.v0 = (int)((int64_t)ntiles * pi / ps) * PW_NV_DEFAULT;
    c.v1 = pi == ps - 1 ? nvec : MIN(nvec, (int)((int64_t)ntiles * (pi + 1) / ps) * PW_NV_DEFAULT);
    c.b0 = (int)((int64_t)nb * ni / ns);
    c.b1 = (int)((int64_t)nb * (ni + 1) / ns);
    return c;
}

static void pw_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int T)
{
    int nb, base, extra;
    pw_blocks(op->N, &nb, &base, &extra);
    const pw_part pc = pw_chunk(op, chunk, T);
    const int g = pc.g, v0 = pc.v0, v1 = pc.v1, b0 = pc.b0, b1 = pc.b1;
    const int P = op->H * op->W, nvec = CDIV(P, VW), K = op->K, N = op->N;
    if (v0 >= v1 || b0 >= b1) return;
    const float *a = slot[op->src];
    const int32_t *koff = op->koff + (ptrdiff_t)g * K;
    const float *wp = op->wp + (ptrdiff_t)g * K * N;
    const float *bias = op->b + (ptrdiff_t)g * N;
    const int64_t so = cs[op->dst];
    float *o = slot[op->dst] + (ptrdiff_t)(op->dst_coff + g * N) * so;
    const int64_t sr = op->res >= 0 ? cs[op->res] : 0;
    const float *rr = op->res >= 0 ? slot[op->res] + (ptrdiff_t)(op->res_coff + g * N) * sr : NULL;
    const int relu = op->act == SN_ACT_RELU;
    /* full pixel vectors [v0, ve); the partial last vector, if any, goes with the last tile or to pw_tail */
    const int tail = base + (extra > 0) <= VW; /* blocks fit one vector: partial last vector by pw_tail */
    const int nfull = tail ? P / VW : nvec;
    const int ve = MIN(v1, nfull), nt = P - nfull * VW, NV = PW_NV_DEFAULT;
    /* the last full tile takes the tail pixels along (pwt_tab) when it is a whole tile and they are few */
    const int fuse = PW_NTMAX > 0 && v1 == nvec && nt > 0 && nt <= PW_NTMAX && ve > v0 && nfull % NV == 0;
    if (v1 == nvec && nfull < nvec && !fuse)
        pw_tail(K, a, koff, wp, bias, o, so, rr, sr, relu, nfull * VW, nt, b0, b1, base, extra);
    if (v0 >= ve) return;
    const int pix_outer = (int64_t)K * NV * VW * 4 <= 32768;
    if (pix_outer) {
        for (int v = v0; v < ve; v += NV) {
            const int nv = MIN(NV, ve - v), p = v * VW;
            const int nlast = v + nv == nvec ? P - (nvec - 1) * VW : VW;
            for (int bi = b0; bi < b1; bi++) {
                const int nn = blk_start(bi, base, extra), mr = base + (bi < extra);
                pw_kernel(nv, mr, fuse && v + nv == ve ? nt : 0)(K, a + p, koff, wp + (ptrdiff_t)K * nn, mr,
                                                               bias + nn, o + nn * so + p, so,
                                                               rr ? rr + nn * sr + p : NULL, sr, relu, nlast);
            }
        }
    } else {
        for (int bi = b0; bi < b1; bi++) {
            const int nn = blk_start(bi, base, extra), mr = base + (bi < extra);
            for (int v = v0; v < ve; v += NV) {
                const int nv = MIN(NV, ve - v), p = v * VW;
                const int nlast = v + nv == nvec ? P - (nvec - 1) * VW : VW;
                pw_kernel(nv, mr, fuse && v + nv == ve ? nt : 0)(K, a + p, koff, wp + (ptrdiff_t)K * nn, mr,
                                                               bias + nn, o + nn * so + p, so,
                                                               rr ? rr + nn * sr + p : NULL, sr, relu, nlast);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * 3x3 depthwise convolution, stride 1, pad 1, on halo planes: neighbours are unaligned loads, the two image
 * columns at the left/right border are masked per pixel vector (op->masks), rows above/below read the halo.
 * ------------------------------------------------------------------------------------------------------- */
static void dw3s1_plane(const float *ip, float *opl, const float *w9, float bias, int W, int P,
                        const uint32_t *masks, int relu, int v0, int v1)
{
    const vf w0 = v_set1(w9[0]), w1 = v_set1(w9[1]), w2 = v_set1(w9[2]);
    const vf w3 = v_set1(w9[3]), w4 = v_set1(w9[4]), w5 = v_set1(w9[5]);
    const vf w6 = v_set1(w9[6]), w7 = v_set1(w9[7]), w8 = v_set1(w9[8]);
    const vf bb = v_set1(bias);
    const int nvec = CDIV(P, VW);
    for (int v = v0; v < v1; v++) {
        const float *q = ip + v * VW;
        const vm ml = v_mask_bits(masks[2 * v]), mr = v_mask_bits(masks[2 * v + 1]);
        vf s0 = v_fma(w0, v_loadz(q - W - 1, ml), bb);
        vf s1 = v_mul(w3, v_loadz(q - 1, ml));
        vf s2 = v_mul(w6, v_loadz(q + W - 1, ml));
        s0 = v_fma(w1, v_load(q - W), s0);
        s1 = v_fma(w4, v_load(q), s1);
        s2 = v_fma(w7, v_load(q + W), s2);
        s0 = v_fma(w2, v_loadz(q - W + 1, mr), s0);
        s1 = v_fma(w5, v_loadz(q + 1, mr), s1);
        s2 = v_fma(w8, v_loadz(q + W + 1, mr), s2);
        vf x = v_add(v_add(s0, s1), s2);
        if (relu) x = v_relu(x);
        if (v == nvec - 1 && P - v * VW < VW)
            v_storem(opl + v * VW, x, v_mask_n(P - v * VW));
        else
            v_store(opl + v * VW, x);
    }
}

/* 3x3, stride 2, pad 1 (no halo needed): depthwise conv (w9 != NULL), average pool with count_include_pad (w9 ==
 * NULL, avg), or max pool (w9 == NULL, !avg), output rows [y0, y1). An input row is split into the three
 * vectors that a column of taps reads (columns 2x - 1, 2x, 2x + 1 for VW outputs x); output row y reads input
 * rows 2y - 1, 2y and 2y + 1, and the last of them is the first of row y + 1, so output rows run inner, one
 * pixel vector at a time, and that row's split is kept for the next. */
typedef struct {
    vf m, e, o;
} s2_cols;

/* the lanes of the loads s2_split makes for the VW outputs from column xs / 2 of a row W wide */
SN_INLINE void s2_masks(int W, int xs, vm m[4])
{
    m[0] = v_mask_n(W - xs);
    m[1] = v_mask_n(W - xs - VW);
    m[2] = v_mask_range(MAX(0, 1 - xs), W - xs + 1);
    m[3] = v_mask_n(W - xs + 1 - VW);
}

/* row points at column xs; columns outside the row read as fill */
SN_INLINE s2_cols s2_split(const float *row, const vm m[4], vf fill)
{
    const vf L0 = v_loadf(row, m[0], fill), L1 = v_loadf(row + VW, m[1], fill);
    const vf M0 = v_loadf(row - 1, m[2], fill), M1 = v_loadf(row - 1 + VW, m[3], fill);
    s2_cols c = {v_even(M0, M1), v_even(L0, L1), v_odd(L0, L1)};
    return c;
}

SN_INLINE vf s2_row(s2_cols c, const vf *w3, int is_max, vf acc)
{
    if (is_max) return v_maxp(acc, v_maxp(c.m, v_maxp(c.e, c.o)));
    acc = v_fma(w3[0], c.m, acc);
    acc = v_fma(w3[1], c.e, acc);
    return v_fma(w3[2], c.o, acc);
}

static void s2_plane(const float *ip, float *opl, int H, int W, int OH, int OW, const float *w9, float bias,
                     int avg, int relu, int y0, int y1)
{
    const int is_max = !w9 && !avg;
    const float ninth = 1.0f / 9.0f;
    vf wv[9];
    for (int i = 0; i < 9; i++) wv[i] = v_set1(w9 ? w9[i] : ninth);
    const vf fill = is_max ? v_set1(-INFINITY) : v_zero();
    const vf init = is_max ? v_set1(-INFINITY) : v_set1(bias);
    const s2_cols none = {fill, fill, fill}; /* a row outside the image */
    (void)OH;
    for (int ox0 = 0; ox0 < OW; ox0 += VW) {
        const int xs = 2 * ox0;
        vm m[4];
        s2_masks(W, xs, m);
        const vm ms = v_mask_n(OW - ox0);
        const float *col = ip + xs;
        /* input row 2 * y0 - 1 */
        s2_cols top = y0 > 0 ? s2_split(col + (ptrdiff_t)(2 * y0 - 1) * W, m, fill) : none;
        for (int oy = y0; oy < y1; oy++) {
            const int iy = 2 * oy;
            const s2_cols mid = iy < H ? s2_split(col + (ptrdiff_t)iy * W, m, fill) : none;
            const s2_cols bot = iy + 1 < H ? s2_split(col + (ptrdiff_t)(iy + 1) * W, m, fill) : none;
            vf acc = s2_row(top, wv, is_max, init);
            acc = s2_row(mid, wv + 3, is_max, acc);
            acc = s2_row(bot, wv + 6, is_max, acc);
            if (relu) acc = v_relu(acc);
            v_storem(opl + (ptrdiff_t)oy * OW + ox0, acc, ms);
            top = bot;
        }
    }
}

/* the chunk-th of n near-equal parts [*a, *b) of [0, len) (channels or rows) */
static void part_range(int len, int chunk, int n, int *a, int *b)
{
    *a = (int)((int64_t)len * chunk / n);
    *b = (int)((int64_t)len * (chunk + 1) / n);
}

/* chunks are ranges of pixel vectors (stride 1) or output rows (stride 2), over all channels, so that
 * consecutive chunks (one thread's share) cover one region of the image in every op; a small plane (a 7x7
 * one is 4 vectors, the last of one pixel) is split over channels instead, so that the shares cost the same */
static int dw_by_channels(const sn_op *op, int n)
{
    const int units = op->kind == SN_OP_DW && op->stride == 1 ? CDIV(op->H * op->W, VW) : op->OH;
    return n > 1 && units < 4 * n && units < op->cout;
}

/* chunk `chunk` of n: pixel vectors (stride 1) or output rows (stride 2) [*r0, *r1) of channels [*ca, *cb) */
static void dw_chunk(const sn_op *op, int chunk, int n, int *r0, int *r1, int *ca, int *cb)
{
    const int len = op->kind == SN_OP_DW && op->stride == 1 ? CDIV(op->H * op->W, VW) : op->OH;
    *r0 = 0, *r1 = len, *ca = 0, *cb = op->cout;
    if (dw_by_channels(op, n))
        part_range(op->cout, chunk, n, ca, cb);
    else
        part_range(len, chunk, n, r0, r1);
}

static void dw_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    const int s1 = op->kind == SN_OP_DW && op->stride == 1;
    int r0, r1, ca, cb;
    dw_chunk(op, chunk, n, &r0, &r1, &ca, &cb);
    if (r0 >= r1) return;
    const int64_t si = cs[op->src], so = cs[op->dst];
    for (int c = ca; c < cb; c++) {
        const float *ip = slot[op->src] + (ptrdiff_t)(op->src_coff + c) * si;
        float *opl = slot[op->dst] + (ptrdiff_t)(op->dst_coff + c) * so;
        const float bias = op->b ? op->b[c] : 0.0f;
        if (s1)
            dw3s1_plane(ip, opl, op->w + 9 * c, bias, op->W, op->H * op->W, op->masks,
                        op->act == SN_ACT_RELU, r0, r1);
        else
            s2_plane(ip, opl, op->H, op->W, op->OH, op->OW, op->kind == SN_OP_DW ? op->w + 9 * c : NULL,
                     bias, op->kind == SN_OP_POOL && op->pool == SN_POOL_AVG, op->act == SN_ACT_RELU, r0, r1);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Dense 3x3 convolution with few input channels (the stem), stride 1 or 2, pad 1: per output row and pixel
 * vector, the 9 * cin input vectors are formed once and multiplied into MS output channels at a time.
 * Weights [cin][3][3][cout], packed by sn_pack per block of MS output channels as [cin][3][3][MS] (constant
 * offsets in the kernel). Input planes may be plain (no halo): every load is masked.
 * ------------------------------------------------------------------------------------------------------- */
#if SN_ISA == 2
#define CONV_MSMAX 24
#else
#define CONV_MSMAX 10
#endif

/* one output row oy: out points at that row of output channel 0, channel planes `so` apart */
typedef void (*conv_fn)(const float *in, int64_t si, int cin, int H, int W, int stride, const float *w,
                        int cout, const float *bias, float *out, int64_t so, int OW, int oy, int relu);

SN_INLINE void conv_body(const int MS, const float *in, int64_t si, int cin, int H, int W, int stride,
                         const float *w, int cout, const float *bias, float *out, int64_t so, int OW, int oy,
                         int relu)
{
    for (int ox0 = 0; ox0 < OW; ox0 += VW) {
        vf acc[CONV_MSMAX];
        UNROLL for (int i = 0; i < MS; i++) acc[i] = v_set1(bias[i]);
        const int xs = stride * ox0;
        vm m[4];
        if (stride == 2) {
            s2_masks(W, xs, m);
        } else {
            m[0] = v_mask_range(MAX(0, 1 - xs), W - xs + 1); /* x - 1 */
            m[1] = v_mask_n(W - xs);                         /* x */
            m[2] = v_mask_n(W - xs - 1);                     /* x + 1 */
            m[3] = m[2];
        }
        for (int ci = 0; ci < cin; ci++) {
            for (int dy = 0; dy < 3; dy++) {
                const int iy = stride * oy - 1 + dy;
                if (iy < 0 || iy >= H) continue;
                const float *row = in + (ptrdiff_t)ci * si + (ptrdiff_t)iy * W + xs;
                vf tl, tc, tr;
                if (stride == 2) {
                    const s2_cols c = s2_split(row, m, v_zero());
                    tl = c.m;
                    tc = c.e;
                    tr = c.o;
                } else {
                    tl = v_loadz(row - 1, m[0]);
                    tc = v_loadz(row, m[1]);
                    tr = v_loadz(row + 1, m[2]);
                }
                const float *wt = w + (ptrdiff_t)(ci * 9 + dy * 3) * MS;
                UNROLL for (int i = 0; i < MS; i++) {
                    acc[i] = v_fma(v_set1(wt[i]), tl, acc[i]);
                    acc[i] = v_fma(v_set1(wt[MS + i]), tc, acc[i]);
                    acc[i] = v_fma(v_set1(wt[2 * MS + i]), tr, acc[i]);
                }
            }
        }
        const vm ms = v_mask_n(OW - ox0);
        UNROLL for (int i = 0; i < MS; i++) {
            vf x = relu ? v_relu(acc[i]) : acc[i];
            v_storem(out + (ptrdiff_t)i * so + ox0, x, ms);
        }
    }
}

#define CONV_DEF(MS)                                                                                     \
    static void conv_k_##MS(const float *in, int64_t si, int cin, int H, int W, int stride,             \
                            const float *w, int cout, const float *bias, float *out, int64_t so, int OW, \
                            int oy, int relu)                                                           \
    {                                                                                                   \
        conv_body(MS, in, si, cin, H, W, stride, w, cout, bias, out, so, OW, oy, relu);                 \
    }
CONV_DEF(1) CONV_DEF(2) CONV_DEF(3) CONV_DEF(4) CONV_DEF(5) CONV_DEF(6) CONV_DEF(7) CONV_DEF(8)
CONV_DEF(9) CONV_DEF(10)
#if SN_ISA == 2
CONV_DEF(11) CONV_DEF(12) CONV_DEF(13) CONV_DEF(14) CONV_DEF(15) CONV_DEF(16) CONV_DEF(17) CONV_DEF(18)
CONV_DEF(19) CONV_DEF(20) CONV_DEF(21) CONV_DEF(22) CONV_DEF(23) CONV_DEF(24)
#endif
static const conv_fn conv_tab[CONV_MSMAX + 1] = {
    0, conv_k_1, conv_k_2, conv_k_3, conv_k_4, conv_k_5, conv_k_6, conv_k_7, conv_k_8, conv_k_9, conv_k_10,
#if SN_ISA == 2
    conv_k_11, conv_k_12, conv_k_13, conv_k_14, conv_k_15, conv_k_16, conv_k_17, conv_k_18, conv_k_19,
    conv_k_20, conv_k_21, conv_k_22, conv_k_23, conv_k_24,
#endif
};

static void conv_row(const sn_op *op, const float *in, int64_t si, float *out_row, int64_t so, int OW, int cy)
{
    const int nb = CDIV(op->cout, CONV_MSMAX), base = op->cout / nb, extra = op->cout % nb;
    /* the input is the caller's image, usually not in cache: fetch the rows the next output row adds */
    for (int ci = 0; ci < op->cin; ci++)
        for (int iy = op->stride * cy + 2; iy < op->stride * (cy + 1) + 2 && iy < op->H; iy++) {
            const char *row = (const char *)(in + (ptrdiff_t)ci * si + (ptrdiff_t)iy * op->W);
            for (int b = 0; b < op->W * (int)sizeof(float); b += 64) __builtin_prefetch(row + b, 0, 3);
        }
    int co = 0;
    for (int bi = 0; bi < nb; bi++) {
        const int ms = base + (bi < extra);
        conv_tab[ms](in, si, op->cin, op->H, op->W, op->stride, op->wp + (ptrdiff_t)9 * op->cin * co, op->cout,
                     op->b + co, out_row + (ptrdiff_t)co * so, so, OW, cy, op->act == SN_ACT_RELU);
        co += ms;
    }
}

/* 3x3 stride-2 pad-1 max pool of one output row from up to three input rows (NULL: outside the image) */
static void maxpool_row(const float *const rows[3], int W, float *out, int OW)
{
    const vf ninf = v_set1(-INFINITY);
    for (int ox0 = 0; ox0 < OW; ox0 += VW) {
        const int xs = 2 * ox0;
        vm m[4];
        s2_masks(W, xs, m);
        vf acc = ninf;
        for (int dy = 0; dy < 3; dy++)
            if (rows[dy]) acc = s2_row(s2_split(rows[dy] + xs, m, ninf), NULL, 1, acc);
        v_storem(out + ox0, acc, v_mask_n(OW - ox0));
    }
}

/* size of the conv's own output (before its max pool): stride 1 or 2, pad 1 */
SN_INLINE int conv_rows(const sn_op *op) { return op->stride == 2 ? (op->H - 1) / 2 + 1 : op->H; }
SN_INLINE int conv_cols(const sn_op *op) { return op->stride == 2 ? (op->W - 1) / 2 + 1 : op->W; }

static void conv_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int y0, y1;
    part_range(op->OH, chunk, n, &y0, &y1);
    const int64_t si = cs[op->src], so = cs[op->dst];
    const float *in = slot[op->src] + (ptrdiff_t)op->src_coff * si;
    float *out = slot[op->dst] + (ptrdiff_t)op->dst_coff * so;
    if (!op->pool) {
        for (int oy = y0; oy < y1; oy++) conv_row(op, in, si, out + (ptrdiff_t)oy * op->OW, so, op->OW, oy);
        return;
    }
    /* conv rows into a ring of three rows, max pool each output row from it */
    const int CH = conv_rows(op), CW = conv_cols(op);
    const int64_t rs = (int64_t)CDIV(CW, VW) * VW + VW; /* floats per channel row in the ring */
    float *ring = (float *)malloc(sizeof(float) * (size_t)(3 * op->cout * rs + VW));
    if (!ring) return;
    int have[3] = {-1, -1, -1};
    for (int py = y0; py < y1; py++) {
        const float *rows[3];
        for (int dy = 0; dy < 3; dy++) {
            const int cy = 2 * py - 1 + dy;
            rows[dy] = NULL;
            if (cy < 0 || cy >= CH) continue;
            float *dst = ring + (ptrdiff_t)(cy % 3) * op->cout * rs;
            if (have[cy % 3] != cy) {
                conv_row(op, in, si, dst, rs, CW, cy);
                have[cy % 3] = cy;
            }
            rows[dy] = dst;
        }
        for (int c = 0; c < op->cout; c++) {
            const float *cr[3];
            for (int dy = 0; dy < 3; dy++) cr[dy] = rows[dy] ? rows[dy] + (ptrdiff_t)c * rs : NULL;
            maxpool_row(cr, CW, out + (ptrdiff_t)c * so + (ptrdiff_t)py * op->OW, op->OW);
        }
    }
    free(ring);
}

/* ---------------------------------------------------------------------------------------------------------
 * Global average pool (planes -> flat vector), fully connected layer (flat -> flat), plane copy.
 * ------------------------------------------------------------------------------------------------------- */
static void gap_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int c0, c1;
    part_range(op->cout, chunk, n, &c0, &c1);
    const int P = op->H * op->W;
    const int64_t si = cs[op->src];
    float *out = slot[op->dst] + op->dst_coff;
    const float inv = 1.0f / (float)P;
    for (int c = c0; c < c1; c++) {
        const float *ip = slot[op->src] + (ptrdiff_t)(op->src_coff + c) * si;
        vf s0 = v_zero(), s1 = v_zero();
        int p = 0;
        for (; p + 2 * VW <= P; p += 2 * VW) {
            s0 = v_add(s0, v_load(ip + p));
            s1 = v_add(s1, v_load(ip + p + VW));
        }
        for (; p < P; p += VW) s0 = v_add(s0, v_loadz(ip + p, v_mask_n(P - p)));
        float x = v_hsum(v_add(s0, s1)) * inv;
        if (op->act == SN_ACT_RELU && x < 0.0f) x = 0.0f;
        out[c] = x;
    }
}

#define FC_NB 8
#define FC_B (FC_NB * VW) /* columns per packed block: [nblk][K][FC_B], zero-padded */
static int64_t fc_pack_size(const sn_op *op) { return (int64_t)CDIV(op->N, FC_B) * FC_B * op->K; }

static void fc_pack(const sn_op *op, float *wp)
{
    const int N = op->N, K = op->K, nblk = CDIV(N, FC_B);
    for (int bi = 0; bi < nblk; bi++)
        for (int k = 0; k < K; k++)
            for (int c = 0; c < FC_B; c++) {
                const int n = bi * FC_B + c;
                wp[((ptrdiff_t)bi * K + k) * FC_B + c] = n < N ? op->w[(ptrdiff_t)k * N + n] : 0.0f;
            }
}

static void fc_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    (void)cs;
    const int N = op->N, K = op->K, nblk = CDIV(N, FC_B);
    const int u0 = (int)((int64_t)nblk * chunk / n), u1 = (int)((int64_t)nblk * (chunk + 1) / n);
    const float *x = slot[op->src] + op->src_coff;
    float *out = slot[op->dst] + op->dst_coff;
    for (int u = u0; u < u1; u++) {
        vf acc[FC_NB];
        UNROLL for (int j = 0; j < FC_NB; j++) {
            const int n0 = u * FC_B + j * VW;
            acc[j] = op->b ? v_loadz(op->b + n0, v_mask_n(N - n0)) : v_zero();
        }
        const float *wk = op->wp + (ptrdiff_t)u * K * FC_B;
        for (int k = 0; k < K; k++, wk += FC_B) {
            const vf xb = v_set1(x[k]);
            UNROLL for (int j = 0; j < FC_NB; j++) acc[j] = v_fma(xb, v_load(wk + j * VW), acc[j]);
        }
        for (int j = 0; j < FC_NB; j++) {
            const int n0 = u * FC_B + j * VW;
            if (n0 >= N) break;
            vf y = op->act == SN_ACT_RELU ? v_relu(acc[j]) : acc[j];
            v_storem(out + n0, y, v_mask_n(N - n0));
        }
    }
}

static void pack_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int c0, c1;
    part_range(op->cout, chunk, n, &c0, &c1);
    const int64_t si = cs[op->src], so = cs[op->dst];
    const size_t bytes = (size_t)op->H * op->W * sizeof(float);
    for (int c = c0; c < c1; c++)
        memcpy(slot[op->dst] + (ptrdiff_t)(op->dst_coff + c) * so,
               slot[op->src] + (ptrdiff_t)(op->src_coff + c) * si, bytes);
}

#include "sn_int8.h"

/* ---------------------------------------------------------------------------------------------------------
 * Work split and dispatch.
 * ------------------------------------------------------------------------------------------------------- */
static int op_nchunks(const sn_op *op, int T)
{
    const double P = (double)op->H * op->W, OP = (double)op->OH * op->OW;
    switch (op->kind) {
    case SN_OP_PW: {
        int ps, ns;
        pw_split(op, T, &ps, &ns);
        return op->groups * ps * ns;
    }
    case SN_OP_DW:
    case SN_OP_POOL: {
        const int units = op->kind == SN_OP_DW && op->stride == 1 ? CDIV(op->H * op->W, VW) : op->OH;
        const int d = split_count(9.0 * OP * op->cout, T, MAX(units, op->cout));
        return dw_by_channels(op, d) ? MIN(d, op->cout) : MIN(d, units);
    }
    case SN_OP_CONV:
        return split_count(9.0 * OP * op->cout * op->cin * (op->pool ? 4 : 1), T, op->OH);
    case SN_OP_GAP:
        return split_count(P * op->cout, T, op->cout);
    case SN_OP_FC:
        return split_count((double)op->K * op->N, T, CDIV(op->N, FC_B));
    case SN_OP_PACK:
        return split_count(P * op->cout, T, op->cout);
    case SN_OP_QPW: {
        int nblk;
        return split_count(P * op->K * op->cout / 3.0, T, qpw_units(op, &nblk)); /* ~3x the float rate */
    }
    case SN_OP_QDW: {
        /* one dot product per output, tap and channel, as the float depthwise conv */
        int pp, pq;
        const int units = op->stride == 1 ? CDIV(op->H * op->W, VW) : op->OH;
        qdw_split(op, split_count(9.0 * OP * op->cout, T, units * CDIV(op->cout, 4)), &pp, &pq);
        return pp * pq;
    }
    case SN_OP_QMAX:
        return split_count(9.0 * OP * op->cout / 4.0, T, op->OH);
    case SN_OP_QCONV:
        return split_count(9.0 * OP * op->cout * CDIV(op->cin, 4) / 4.0, T, op->OH);
    case SN_OP_QGAP:
        return split_count(P * op->cout, T, CDIV(op->cout, 4));
    case SN_OP_QPACK: /* a division per value */
        return split_count(4.0 * P * op->cout, T, CDIV(op->H * op->W, VW));
    case SN_OP_QOUT:
        return split_count(P * op->cout, T, op->cout);
    default:
        return 1;
    }
}

static void op_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int T)
{
    const int n = op_nchunks(op, T);
    switch (op->kind) {
    case SN_OP_PW:
        pw_run(op, slot, cs, chunk, T);
        break;
    case SN_OP_DW:
    case SN_OP_POOL:
        dw_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_CONV:
        conv_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_GAP:
        gap_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_FC:
        fc_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_PACK:
        pack_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QPW:
        qpw_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QDW:
        qdw_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QMAX:
        qmax_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QCONV:
        qconv_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QGAP:
        qgap_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QPACK:
        qpack_run(op, slot, cs, chunk, n);
        break;
    case SN_OP_QOUT:
        qout_run(op, slot, cs, chunk, n);
        break;
    default:
        break;
    }
}

/* The pixels that chunk `chunk` of the split for T threads reads in every plane of its input (and residual),
 * [sp[0], sp[1]) in the raster order of the H x W plane, and writes in every plane of its output, [sp[2],
 * sp[3]) of the OH x OW plane. Returns 0 where a chunk reads or writes whole planes (channel splits, flat
 * vectors, the int8 ops): then each of its chunks depends on all chunks of the op before. The runtime starts a
 * chunk once the chunks of the previous op that write what it reads are done (sn_runtime.c, sn_plan_deps). */
static int op_span(const sn_op *op, int chunk, int T, int64_t *sp)
{
    const int64_t P = (int64_t)op->H * op->W;
    switch (op->kind) {
    case SN_OP_PW: { /* stride 1: the same pixels in and out; the last range includes the partial vector */
        const pw_part c = pw_chunk(op, chunk, T);
        sp[0] = sp[2] = (int64_t)c.v0 * VW;
        sp[1] = sp[3] = MIN((int64_t)c.v1 * VW, P);
        return 1;
    }
    case SN_OP_DW:
    case SN_OP_POOL: {
        const int n = op_nchunks(op, T);
        if (dw_by_channels(op, n)) return 0;
        int r0, r1, ca, cb;
        dw_chunk(op, chunk, n, &r0, &r1, &ca, &cb);
        if (op->kind == SN_OP_DW && op->stride == 1) { /* vectors [r0, r1) and their 3x3 neighbourhood */
            sp[2] = (int64_t)r0 * VW;
            sp[3] = MIN((int64_t)r1 * VW, P);
            sp[0] = MAX(0, sp[2] - op->W - 1);
            sp[1] = MIN(P, sp[3] + op->W + 1);
        } else { /* output rows [r0, r1) read input rows 2 r0 - 1 .. 2 r1 - 1 */
            sp[2] = (int64_t)r0 * op->OW;
            sp[3] = (int64_t)r1 * op->OW;
            sp[0] = (int64_t)MAX(0, 2 * r0 - 1) * op->W;
            sp[1] = (int64_t)MIN(op->H, 2 * r1) * op->W;
        }
        return 1;
    }
    case SN_OP_CONV: {
        int y0, y1;
        part_range(op->OH, chunk, op_nchunks(op, T), &y0, &y1);
        sp[2] = (int64_t)y0 * op->OW;
        sp[3] = (int64_t)y1 * op->OW;
        int c0 = y0, c1 = y1; /* conv rows computed: pooled row py needs conv rows 2 py - 1 .. 2 py + 1 */
        if (op->pool) {
            c0 = MAX(0, 2 * y0 - 1);
            c1 = MIN(conv_rows(op), 2 * y1);
        }
        sp[0] = (int64_t)MAX(0, op->stride * c0 - 1) * op->W;
        sp[1] = (int64_t)MIN(op->H, op->stride * (c1 - 1) + 2) * op->W;
        return 1;
    }
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Channel shuffle of channels-last rows: out[p][i * g + j] = in[p][j * n + i], n = C / g, pixels [p0, p1).
 * AVX-512: each output vector takes, from each of the g input groups, a short contiguous run; one unaligned
 * load per group and lane permutes build it (no gathers); nothing is read past a row.
 * ------------------------------------------------------------------------------------------------------- */
static void shuffle_row_scalar(const float *in, float *out, int C, int g)
{
    const int n = C / g;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < g; j++) out[i * g + j] = in[j * n + i];
}

#if SN_ISA == 2
/* For each pixel and each block of 16 consecutive i (i0, i0 + 16), the g input vectors A_j = in[j * n + i0 ..]
 * are interleaved into g output vectors out[i0 * g ..]: output lane t of vector k takes A_{(16k+t) % g} lane
 * (16k+t) / g. A permutex2var takes the two sources of lanes 0 and 1, a masked permute each further source
 * (g - 1 permutes per output vector; g = 2, 4, 8 use a butterfly of 2-source interleaves instead: 1, 2, 3). */
typedef struct {
    __m512i idx2[16];  /* per output vector: permutex2var index over (A_a, A_b) */
    int a[16], b[16];
    int nextra[16];
    int src[16][16];
    __mmask16 m[16][16];
    __m512i idx1[16];  /* lane -> i within the block */
} shuf_tab;

static void shuf_tab_init(shuf_tab *tb, int g)
{
    for (int k = 0; k < g; k++) {
        int32_t id1[16], id2[16];
        const int ja = (16 * k) % g, jb = (16 * k + 1) % g;
        tb->a[k] = ja;
        tb->b[k] = jb;
        tb->nextra[k] = 0;
        for (int t = 0; t < 16; t++) {
            const int q = 16 * k + t, j = q % g, i = q / g;
            id1[t] = i;
            id2[t] = j == jb ? 16 + i : i;
            if (j != ja && j != jb) {
                int e = 0;
                while (e < tb->nextra[k] && tb->src[k][e] != j) e++;
                if (e == tb->nextra[k]) {
                    tb->src[k][e] = j;
                    tb->m[k][e] = 0;
                    tb->nextra[k]++;
                }
                tb->m[k][e] |= (__mmask16)(1u << t);
            }
        }
        tb->idx1[k] = _mm512_loadu_si512(id1);
        tb->idx2[k] = _mm512_loadu_si512(id2);
    }
}

static inline __m512 ilo(__m512 x, __m512 y) /* x0 y0 x1 y1 ... x7 y7 */
{
    const __m512i i = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutex2var_ps(x, i, y);
}
static inline __m512 ihi(__m512 x, __m512 y) /* x8 y8 ... x15 y15 */
{
    const __m512i i = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    return _mm512_permutex2var_ps(x, i, y);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/* one pixel, g known at compile time after inlining */
SN_INLINE void shuf_pixel(const int G, const shuf_tab *tb, const float *ip, float *op, int n, const int nt)
{
    for (int i0 = 0; i0 < n; i0 += 16) {
        const int r = MIN(16, n - i0);
        const __mmask16 ml = r == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1u);
        __m512 A[16], Y[16];
        if (r == 16) {
            UNROLL for (int j = 0; j < G; j++) A[j] = _mm512_loadu_ps(ip + j * n + i0);
        } else {
            UNROLL for (int j = 0; j < G; j++) A[j] = _mm512_maskz_loadu_ps(ml, ip + j * n + i0);
        }
        if (G == 2) {
            Y[0] = ilo(A[0], A[1]);
            Y[1] = ihi(A[0], A[1]);
        } else if (G == 4) {
            const __m512 B0 = ilo(A[0], A[2]), B1 = ihi(A[0], A[2]);
            const __m512 C0 = ilo(A[1], A[3]), C1 = ihi(A[1], A[3]);
            Y[0] = ilo(B0, C0);
            Y[1] = ihi(B0, C0);
            Y[2] = ilo(B1, C1);
            Y[3] = ihi(B1, C1);
        } else if (G == 8) {
            __m512 B[8], D[8];
            UNROLL for (int j = 0; j < 4; j++) {
                B[2 * j] = ilo(A[j], A[j + 4]);
                B[2 * j + 1] = ihi(A[j], A[j + 4]);
            }
            UNROLL for (int h = 0; h < 2; h++) {
                D[4 * h + 0] = ilo(B[0 + h], B[4 + h]);
                D[4 * h + 1] = ihi(B[0 + h], B[4 + h]);
                D[4 * h + 2] = ilo(B[2 + h], B[6 + h]);
                D[4 * h + 3] = ihi(B[2 + h], B[6 + h]);
            }
            UNROLL for (int h = 0; h < 2; h++) {
                Y[4 * h + 0] = ilo(D[4 * h + 0], D[4 * h + 2]);
                Y[4 * h + 1] = ihi(D[4 * h + 0], D[4 * h + 2]);
                Y[4 * h + 2] = ilo(D[4 * h + 1], D[4 * h + 3]);
                Y[4 * h + 3] = ihi(D[4 * h + 1], D[4 * h + 3]);
            }
        } else {
            UNROLL for (int k = 0; k < G; k++) {
                __m512 y = _mm512_permutex2var_ps(A[tb->a[k]], tb->idx2[k], A[tb->b[k]]);
                for (int e = 0; e < tb->nextra[k]; e++)
                    y = _mm512_mask_permutexvar_ps(y, tb->m[k][e], tb->idx1[k], A[tb->src[k][e]]);
                Y[k] = y;
            }
        }
        float *ob = op + i0 * G;
        if (r == 16) {
            if (nt) {
                UNROLL for (int k = 0; k < G; k++) _mm512_stream_ps(ob + 16 * k, Y[k]);
            } else {
                UNROLL for (int k = 0; k < G; k++) _mm512_storeu_ps(ob + 16 * k, Y[k]);
            }
        } else {
            const int tot = r * G;
            UNROLL for (int k = 0; k < G; k++) {
                const int left = tot - 16 * k;
                if (left <= 0) break;
                _mm512_mask_storeu_ps(ob + 16 * k, left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u), Y[k]);
            }
        }
    }
}

/* big tensors (nt): also prefetch the input 8 pixels ahead, which the hardware prefetcher does not (as memcpy) */
static inline void shuf_prefetch(const float *row, int C)
{
    for (int b = 0; b < C * (int)sizeof(float); b += 64) __builtin_prefetch((const char *)row + b, 0, 0);
}

#define SHUF_CASE(G)                                                           \
    case G:                                                                    \
        if (nt)                                                                \
            for (int64_t p = p0; p < p1; p++) {                                \
                if (p + 8 < p1) shuf_prefetch(in + (p + 8) * C, C);            \
                shuf_pixel(G, &tb, in + p * C, out + p * C, n, 1);             \
            }                                                                  \
        else                                                                   \
            for (int64_t p = p0; p < p1; p++) shuf_pixel(G, &tb, in + p * C, out + p * C, n, 0); \
        break;

static void shuffle_rows(const float *in, float *out, int64_t p0, int64_t p1, int C, int g, int stream)
{
    const int n = C / g;
    if (g == 1 || n == 1) {
        memcpy(out + p0 * C, in + p0 * C, (size_t)(p1 - p0) * C * sizeof(float));
        return;
    }
    if (g > 16) {
        for (int64_t p = p0; p < p1; p++) shuffle_row_scalar(in + p * C, out + p * C, C, g);
        return;
    }
    shuf_tab tb;
    shuf_tab_init(&tb, g);
    /* `stream` (set by the caller for big tensors) asks for streaming stores, when every store is aligned */
    const int nt = stream && n % 16 == 0 && C % 16 == 0 && ((uintptr_t)out & 63) == 0;
    switch (g) {
        SHUF_CASE(2)
        SHUF_CASE(3)
        SHUF_CASE(4)
        SHUF_CASE(5)
        SHUF_CASE(6)
        SHUF_CASE(7)
        SHUF_CASE(8)
    default:
        for (int64_t p = p0; p < p1; p++) shuf_pixel(g, &tb, in + p * C, out + p * C, n, 0);
        break;
    }
    if (nt) _mm_sfence();
}
#pragma GCC diagnostic pop
#else
static void shuffle_rows(const float *in, float *out, int64_t p0, int64_t p1, int C, int g, int stream)
{
    (void)stream;
    for (int64_t p = p0; p < p1; p++) shuffle_row_scalar(in + p * C, out + p * C, C, g);
}
#endif

static void conv_pack(const sn_op *op, float *wp)
{
    const int nb = CDIV(op->cout, CONV_MSMAX), base = op->cout / nb, extra = op->cout % nb;
    int co = 0;
    for (int bi = 0; bi < nb; bi++) {
        const int ms = base + (bi < extra);
        float *o = wp + (ptrdiff_t)9 * op->cin * co;
        for (int t = 0; t < 9 * op->cin; t++)
            for (int i = 0; i < ms; i++) o[t * ms + i] = op->w[(ptrdiff_t)t * op->cout + co + i];
        co += ms;
    }
}

static int64_t op_pack_size(const sn_op *op)
{
    switch (op->kind) {
    case SN_OP_PW:
        return pw_pack_size(op);
    case SN_OP_FC:
        return fc_pack_size(op);
    case SN_OP_CONV:
        return (int64_t)9 * op->cin * op->cout;
    default:
        return 0;
    }
}

static void op_pack(const sn_op *op, float *wp)
{
    if (op->kind == SN_OP_PW) pw_pack(op, wp);
    if (op->kind == SN_OP_FC) fc_pack(op, wp);
    if (op->kind == SN_OP_CONV) conv_pack(op, wp);
}

#include "sn_vtab.h"
const sn_vtab SN_FN(sn_vtab) = {SN_ISA, VW, op_nchunks, op_run, op_span, shuffle_rows, op_pack_size, op_pack};
