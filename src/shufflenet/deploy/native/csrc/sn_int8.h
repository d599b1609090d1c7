/* Int8 kernels, included by sn_kernels.c once per instruction set (static functions; see sn_native.h for the
 * ops and shufflenet/quantize/program.py for the arithmetic they reproduce bit for bit).
 *
 * Layout "quad planes": an int8 activation of C channels is ceil(C / 4) planes of H*W 32-bit words; byte b of
 * word p of plane q is channel 4q + b at pixel p (int8 or uint8 as the value is signed or not). Vectors run
 * along pixels as in the float engine (one word = one pixel), and a 4-channel dot product per pixel is one
 * instruction:
 *
 * - AVX-512 VNNI: vpdpbusd (u8 x s8 -> s32, 4 products per 32-bit lane). Signed activations are shifted to
 *   unsigned (x + 128, an xor) and the op adds comp[o] = -128 * (sum of channel o's weights) back.
 * - AVX2 and portable C: bytes 0/2 and 1/3 of each word are widened to 16 bits (sign- or zero-extended) and
 *   multiplied-and-added in pairs with vpmaddwd (two per dot product): exact, no saturation (vpmaddubsw would
 *   saturate at 2 * 255 * 127).
 *
 * The epilogue requantises in float32 exactly as the PyTorch runtime does: y = float(acc) * m[o]; y += c[o];
 * (y += float(residual) * m_res;) clamp to [lo, hi]; round half to even. No FMA (the sources are compiled as
 * ISO C, where GCC does not contract).
 */
#ifndef SN_INT8_H
#define SN_INT8_H

#define Q_SIGNED_SRC 1
#define Q_SIGNED_RES 2

#if SN_ISA == 2
#pragma GCC push_options
#pragma GCC target("avx512vnni")
typedef __m512i vi;
#define Q_VNNI 1
SN_INLINE vi vi_zero(void) { return _mm512_setzero_si512(); }
SN_INLINE vi vi_set1(int32_t a) { return _mm512_set1_epi32(a); }
SN_INLINE vi vi_loadz(const int32_t *p, vm m) { return _mm512_maskz_loadu_epi32(m, p); }
SN_INLINE vi vi_loadf(const int32_t *p, vm m, vi fill) { return _mm512_mask_loadu_epi32(fill, m, p); }
SN_INLINE void vi_storem(int32_t *p, vi v, vm m) { _mm512_mask_storeu_epi32(p, m, v); }
SN_INLINE vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
SN_INLINE vi vi_or(vi a, vi b) { return _mm512_or_si512(a, b); }
SN_INLINE vi vi_xor(vi a, vi b) { return _mm512_xor_si512(a, b); }
SN_INLINE vi vi_and(vi a, vi b) { return _mm512_and_si512(a, b); }
SN_INLINE vi vi_sll(vi a, int n) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(n)); }
SN_INLINE vi vi_srl(vi a, int n) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(n)); }
SN_INLINE vi vi_sra(vi a, int n) { return _mm512_sra_epi32(a, _mm_cvtsi32_si128(n)); }
SN_INLINE vi vi_max_u8(vi a, vi b) { return _mm512_max_epu8(a, b); }
SN_INLINE vi vi_max_s8(vi a, vi b) { return _mm512_max_epi8(a, b); }
SN_INLINE vf vi_tof(vi a) { return _mm512_cvtepi32_ps(a); }
SN_INLINE vi vf_toi(vf a) { return _mm512_cvtps_epi32(a); } /* round half to even */
SN_INLINE vf vi_asf(vi a) { return _mm512_castsi512_ps(a); }
SN_INLINE vi vf_asi(vf a) { return _mm512_castps_si512(a); }
SN_INLINE vf v_min(vf a, vf b) { return _mm512_min_ps(a, b); }
SN_INLINE vf v_nan0(vf a) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), a); }
/* prepared activations and weights */
typedef vi qa;
typedef vi qw;
SN_INLINE qa q_prep(vi a, int is_signed) { return is_signed ? vi_xor(a, vi_set1((int32_t)0x80808080u)) : a; }
SN_INLINE qw q_prepw(int32_t w) { return vi_set1(w); }
SN_INLINE vi q_dot(vi acc, qa a, qw w) { return _mm512_dpbusd_epi32(acc, a, w); }

#elif SN_ISA == 1
typedef __m256i vi;
#define Q_VNNI 0
SN_INLINE vi vi_zero(void) { return _mm256_setzero_si256(); }
SN_INLINE vi vi_set1(int32_t a) { return _mm256_set1_epi32(a); }
SN_INLINE vi vi_loadz(const int32_t *p, vm m) { return _mm256_maskload_epi32((const int *)p, m); }
SN_INLINE vi vi_loadf(const int32_t *p, vm m, vi fill) {
    return _mm256_blendv_epi8(fill, _mm256_maskload_epi32((const int *)p, m), m);
}
SN_INLINE void vi_storem(int32_t *p, vi v, vm m) { _mm256_maskstore_epi32((int *)p, m, v); }
SN_INLINE vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
SN_INLINE vi vi_or(vi a, vi b) { return _mm256_or_si256(a, b); }
SN_INLINE vi vi_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
SN_INLINE vi vi_and(vi a, vi b) { return _mm256_and_si256(a, b); }
SN_INLINE vi vi_sll(vi a, int n) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(n)); }
SN_INLINE vi vi_srl(vi a, int n) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(n)); }
SN_INLINE vi vi_sra(vi a, int n) { return _mm256_sra_epi32(a, _mm_cvtsi32_si128(n)); }
SN_INLINE vi vi_max_u8(vi a, vi b) { return _mm256_max_epu8(a, b); }
SN_INLINE vi vi_max_s8(vi a, vi b) { return _mm256_max_epi8(a, b); }
SN_INLINE vf vi_tof(vi a) { return _mm256_cvtepi32_ps(a); }
SN_INLINE vi vf_toi(vf a) { return _mm256_cvtps_epi32(a); }
SN_INLINE vf vi_asf(vi a) { return _mm256_castsi256_ps(a); }
SN_INLINE vi vf_asi(vf a) { return _mm256_castps_si256(a); }
SN_INLINE vf v_min(vf a, vf b) { return _mm256_min_ps(a, b); }
SN_INLINE vf v_nan0(vf a) { return _mm256_and_ps(a, _mm256_cmp_ps(a, a, _CMP_ORD_Q)); }
typedef struct { vi e, o; } qa; /* bytes 0, 2 and 1, 3 of each word as 16-bit lanes */
typedef qa qw;
SN_INLINE qa q_prep(vi a, int is_signed)
{
    qa r;
    if (is_signed) {
        r.e = _mm256_srai_epi16(_mm256_slli_epi16(a, 8), 8);
        r.o = _mm256_srai_epi16(a, 8);
    } else {
        r.e = _mm256_and_si256(a, _mm256_set1_epi16(0xFF));
        r.o = _mm256_srli_epi16(a, 8);
    }
    return r;
}
SN_INLINE qw q_prepw(int32_t w) { return q_prep(vi_set1(w), 1); }
SN_INLINE vi q_dot(vi acc, qa a, qw w)
{
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(a.e, w.e), _mm256_madd_epi16(a.o, w.o)));
}

#else
typedef int32_t vi __attribute__((vector_size(16)));
#define Q_VNNI 0
SN_INLINE vi vi_zero(void) { vi z = {0, 0, 0, 0}; return z; }
SN_INLINE vi vi_set1(int32_t a) { vi z = {a, a, a, a}; return z; }
SN_INLINE vi vi_loadf(const int32_t *p, vm m, vi fill) {
    vi r = fill;
    for (int i = 0; i < VW; i++)
        if (m >> i & 1u) r[i] = p[i];
    return r;
}
SN_INLINE vi vi_loadz(const int32_t *p, vm m) { return vi_loadf(p, m, vi_zero()); }
SN_INLINE void vi_storem(int32_t *p, vi v, vm m) {
    for (int i = 0; i < VW; i++)
        if (m >> i & 1u) p[i] = v[i];
}
SN_INLINE vi vi_add(vi a, vi b) { return a + b; }
SN_INLINE vi vi_or(vi a, vi b) { return a | b; }
SN_INLINE vi vi_xor(vi a, vi b) { return a ^ b; }
SN_INLINE vi vi_and(vi a, vi b) { return a & b; }
SN_INLINE vi vi_sll(vi a, int n) { return (vi)((uint32_t __attribute__((vector_size(16))))a << n); }
SN_INLINE vi vi_srl(vi a, int n) { return (vi)((uint32_t __attribute__((vector_size(16))))a >> n); }
SN_INLINE vi vi_sra(vi a, int n) { return a >> n; }
SN_INLINE vi vi_max8(vi a, vi b, int is_signed) {
    vi r;
    for (int i = 0; i < VW; i++) {
        uint32_t x = (uint32_t)a[i], y = (uint32_t)b[i], o = 0;
        for (int k = 0; k < 32; k += 8) {
            const int xa = is_signed ? (int8_t)(x >> k) : (int)((x >> k) & 0xFF);
            const int ya = is_signed ? (int8_t)(y >> k) : (int)((y >> k) & 0xFF);
            o |= (uint32_t)((xa > ya ? xa : ya) & 0xFF) << k;
        }
        r[i] = (int32_t)o;
    }
    return r;
}
SN_INLINE vi vi_max_u8(vi a, vi b) { return vi_max8(a, b, 0); }
SN_INLINE vi vi_max_s8(vi a, vi b) { return vi_max8(a, b, 1); }
SN_INLINE vf vi_tof(vi a) { vf r; for (int i = 0; i < VW; i++) r[i] = (float)a[i]; return r; }
SN_INLINE vi vf_toi(vf a) { vi r; for (int i = 0; i < VW; i++) r[i] = (int32_t)nearbyintf(a[i]); return r; }
SN_INLINE vf vi_asf(vi a) { vf r; memcpy(&r, &a, sizeof r); return r; }
SN_INLINE vi vf_asi(vf a) { vi r; memcpy(&r, &a, sizeof r); return r; }
SN_INLINE vf v_min(vf a, vf b) { vf r; for (int i = 0; i < VW; i++) r[i] = a[i] < b[i] ? a[i] : b[i]; return r; }
SN_INLINE vf v_nan0(vf a) { vf r; for (int i = 0; i < VW; i++) r[i] = a[i] == a[i] ? a[i] : 0.0f; return r; }
typedef struct { vi e, o; } qa; /* per word: 16-bit halves holding bytes 0, 2 (e) and 1, 3 (o) */
typedef qa qw;
SN_INLINE qa q_prep(vi a, int is_signed)
{
    qa r = {vi_zero(), vi_zero()};
    for (int i = 0; i < VW; i++) {
        const uint32_t x = (uint32_t)a[i];
        int b[4];
        for (int k = 0; k < 4; k++) b[k] = is_signed ? (int8_t)(x >> (8 * k)) : (int)((x >> (8 * k)) & 0xFF);
        r.e[i] = (int32_t)(((uint32_t)b[2] << 16) | ((uint32_t)b[0] & 0xFFFF));
        r.o[i] = (int32_t)(((uint32_t)b[3] << 16) | ((uint32_t)b[1] & 0xFFFF));
    }
    return r;
}
SN_INLINE qw q_prepw(int32_t w) { return q_prep(vi_set1(w), 1); }
SN_INLINE int32_t madd16(int32_t x, int32_t y)
{
    return (int32_t)(int16_t)x * (int16_t)y + (int32_t)(int16_t)(x >> 16) * (int16_t)(y >> 16);
}
SN_INLINE vi q_dot(vi acc, qa a, qw w)
{
    for (int i = 0; i < VW; i++) acc[i] += madd16(a.e[i], w.e[i]) + madd16(a.o[i], w.o[i]);
    return acc;
}
#endif

/* byte b of every word as a float (signed or unsigned) */
SN_INLINE vf q_byte(vi x, int b, int is_signed)
{
    return vi_tof(is_signed ? vi_sra(vi_sll(x, 24 - 8 * b), 24) : vi_and(vi_srl(x, 8 * b), vi_set1(0xFF)));
}

/* requantise one output channel's accumulators: float32 as the PyTorch runtime, then the low byte at b */
SN_INLINE vi q_requant(vi acc, float m, float c, int has_res, vf r, float m_res, vf lo, vf hi, int b)
{
    vf y = v_mul(vi_tof(acc), v_set1(m));
    y = v_add(y, v_set1(c));
    if (has_res) y = v_add(y, v_mul(r, v_set1(m_res)));
    y = v_min(v_max(y, lo), hi);
    return vi_sll(vi_and(vf_toi(y), vi_set1(0xFF)), 8 * b);
}

SN_INLINE int32_t *qplane(float *const *slot, const int64_t *cs, int s, int q)
{
    return (int32_t *)slot[s] + (ptrdiff_t)q * cs[s];
}

/* ---------------------------------------------------------------------------------------------------------
 * 1x1 conv (all groups): tiles of MR (4 or 8) output channels, NV pixel vectors. Tile table (op->koff):
 * {o0, mr, q0, q1, woff} per tile: outputs o0 .. o0 + mr - 1 (quad aligned) reduce over input planes
 * [q0, q1) with weights wp[woff + (q - q0) * mr + i] (4 int8 in a word; 0 outside the output's group).
 * ------------------------------------------------------------------------------------------------------- */
#define QPW_NV (SN_ISA == 2 ? 3 : SN_ISA == 1 ? 1 : 2)

SN_INLINE void qpw_body(const int MR, const int NV, const sn_op *op, const int32_t *t, float *const *slot,
                        const int64_t *cs, int p, int P, int vnni_comp)
{
    const int o0 = t[0], q0 = t[2], q1 = t[3];
    const int32_t *wp = (const int32_t *)op->wp + t[4];
    const int sgn = op->qflags & Q_SIGNED_SRC;
    vi acc[8][4];
    UNROLL for (int i = 0; i < MR; i++) UNROLL for (int v = 0; v < NV; v++) acc[i][v] = vi_zero();
    vm mv[4];
    UNROLL for (int v = 0; v < NV; v++) mv[v] = v_mask_n(P - p - v * VW);
    for (int q = q0; q < q1; q++) {
        const int32_t *a = qplane(slot, cs, op->src, q) + p;
        qa av[4];
        UNROLL for (int v = 0; v < NV; v++) av[v] = q_prep(vi_loadz(a + v * VW, mv[v]), sgn);
        const int32_t *wq = wp + (ptrdiff_t)(q - q0) * MR;
        UNROLL for (int i = 0; i < MR; i++) {
            const qw w = q_prepw(wq[i]);
            UNROLL for (int v = 0; v < NV; v++) acc[i][v] = q_dot(acc[i][v], av[v], w);
        }
    }
    const vf lo = v_set1((float)op->lo), hi = v_set1((float)op->hi);
    const int has_res = op->res >= 0, rsgn = (op->qflags & Q_SIGNED_RES) != 0;
    UNROLL for (int j = 0; j < MR / 4; j++) {
        const int oq = (op->dst_coff + o0) / 4 + j;
        int32_t *dst = qplane(slot, cs, op->dst, oq) + p;
        const int32_t *res = has_res ? qplane(slot, cs, op->res, (op->res_coff + o0) / 4 + j) + p : NULL;
        UNROLL for (int v = 0; v < NV; v++) {
            const vi rv = has_res ? vi_loadz(res + v * VW, mv[v]) : vi_zero();
            vi out = vi_zero();
            UNROLL for (int b = 0; b < 4; b++) {
                const int o = o0 + 4 * j + b;
                vi a = acc[4 * j + b][v];
                if (vnni_comp) a = vi_add(a, vi_set1(op->comp[o]));
                const vf r = has_res ? q_byte(rv, b, rsgn) : v_zero();
                out = vi_or(out, q_requant(a, op->m[o], op->b[o], has_res, r, op->m_res, lo, hi, b));
            }
            vi_storem(dst + v * VW, out, mv[v]);
        }
    }
}

typedef void (*qpw_fn)(const sn_op *, const int32_t *, float *const *, const int64_t *, int, int, int);
#define QPW_DEF(MR, NV)                                                                                  \
    static void qpw_k_##MR##_##NV(const sn_op *op, const int32_t *t, float *const *slot, const int64_t *cs, \
                                  int p, int P, int c)                                                   \
    {                                                                                                    \
        qpw_body(MR, NV, op, t, slot, cs, p, P, c);                                                      \
    }
QPW_DEF(4, 1) QPW_DEF(8, 1)
#if QPW_NV >= 2
QPW_DEF(4, 2) QPW_DEF(8, 2)
#endif
#if QPW_NV >= 3
QPW_DEF(4, 3) QPW_DEF(8, 3)
#endif
static qpw_fn qpw_pick(int mr, int nv)
{
#if QPW_NV >= 3
    if (nv == 3) return mr == 8 ? qpw_k_8_3 : qpw_k_4_3;
#endif
#if QPW_NV >= 2
    if (nv == 2) return mr == 8 ? qpw_k_8_2 : qpw_k_4_2;
#endif
    (void)nv;
    return mr == 8 ? qpw_k_8_1 : qpw_k_4_1;
}

/* chunks: pixel blocks (outer) x tiles (inner), cut evenly; the nblk blocks of up to QPW_NV vectors differ by
 * at most one vector (a 7x7 plane, 4 vectors, is 2 + 2, not 3 + 1), so that equal shares cost the same */
static int qpw_units(const sn_op *op, int *nblk)
{
    const int P = op->H * op->W;
    *nblk = CDIV(CDIV(P, VW), QPW_NV);
    return *nblk * op->groups;
}

static void qpw_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int nblk;
    const int U = qpw_units(op, &nblk), P = op->H * op->W, nvec = CDIV(P, VW);
    const int u0 = (int)((int64_t)U * chunk / n), u1 = (int)((int64_t)U * (chunk + 1) / n);
    const int vnni_comp = Q_VNNI && (op->qflags & Q_SIGNED_SRC);
    for (int u = u0; u < u1; u++) {
        const int blk = u / op->groups, ti = u % op->groups;
        const int32_t *t = op->koff + 5 * ti;
        const int va = (int)((int64_t)nvec * blk / nblk), vb = (int)((int64_t)nvec * (blk + 1) / nblk);
        const int p = va * VW, nv = vb - va;
        qpw_pick(t[1], nv)(op, t, slot, cs, p, P, vnni_comp);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * 3x3 windows, pad 1, row by row: the 9 tap vectors of VW output pixels (row oy, columns ox0 ..) of one plane,
 * zero outside the image (masked loads), for stride 1 or 2.
 * ------------------------------------------------------------------------------------------------------- */
SN_INLINE void q_taps(const int32_t *pl, int H, int W, int stride, int oy, int ox0, vi fill, vi t[9])
{
    const int xs = stride * ox0;
    for (int dy = 0; dy < 3; dy++) {
        const int iy = stride * oy - 1 + dy;
        if (iy < 0 || iy >= H) {
            t[3 * dy] = t[3 * dy + 1] = t[3 * dy + 2] = fill;
            continue;
        }
        const int32_t *row = pl + (ptrdiff_t)iy * W + xs;
        if (stride == 1) {
            t[3 * dy] = vi_loadf(row - 1, v_mask_range(MAX(0, 1 - xs), W - xs + 1), fill);
            t[3 * dy + 1] = vi_loadf(row, v_mask_n(W - xs), fill);
            t[3 * dy + 2] = vi_loadf(row + 1, v_mask_n(W - xs - 1), fill);
        } else {
            const vf L0 = vi_asf(vi_loadf(row, v_mask_n(W - xs), fill));
            const vf L1 = vi_asf(vi_loadf(row + VW, v_mask_n(W - xs - VW), fill));
            const vf M0 = vi_asf(vi_loadf(row - 1, v_mask_range(MAX(0, 1 - xs), W - xs + 1), fill));
            const vf M1 = vi_asf(vi_loadf(row - 1 + VW, v_mask_n(W - xs + 1 - VW), fill));
            t[3 * dy] = vf_asi(v_even(M0, M1));
            t[3 * dy + 1] = vf_asi(v_even(L0, L1));
            t[3 * dy + 2] = vf_asi(v_odd(L0, L1));
        }
    }
}

/* Depthwise 3x3 (and the 3x3/2 average pool: weights 1): output channel o reads input channel koff[o] (the
 * channel shuffle before the next 1x1 conv is this map); wp: [cout quads][4][9] words, each with channel o's
 * weight in the byte of koff[o] within its word (0 elsewhere), so one dot product picks that channel.
 *
 * One output quad and one pixel vector at a time: the four channels' 9 dot products are four independent
 * chains, interleaved (the latency of one chain would otherwise dominate). Stride 1 runs along the flattened
 * plane (a vector may span rows, so a 7x7 plane is 4 vectors, not 7 rows of 7 lanes): the tap masks combine
 * the plane's bounds with op->masks (per pixel vector: lanes with a left / right neighbour). Stride 2 runs
 * row by row (qdw_s2_vec). Work is split over pixel vectors (stride 1) or output rows (stride 2), over output
 * quads when a plane has few of those (see qdw_split). */
static void qdw_split(const sn_op *op, int n, int *pp, int *pq)
{
    const int units = op->stride == 1 ? CDIV(op->H * op->W, VW) : op->OH;
    const int nq = CDIV(op->cout, 4);
    if (n <= 1) {
        *pp = *pq = 1;
    } else if (units >= 4 * n || units >= nq) {
        *pp = MIN(n, units);
        *pq = 1;
    } else {
        *pp = 1;
        *pq = MIN(n, nq);
    }
}

SN_INLINE void qdw_quad(const int32_t *const src[4], const int32_t *wq, const int32_t *comp,
                        const float *m, const float *c, int nb, const int32_t *off, const vm *mk, vf lo, vf hi,
                        int sgn, int32_t *dst, vm mst)
{
    vi acc[4];
    UNROLL for (int b = 0; b < 4; b++) acc[b] = comp ? vi_set1(comp[b]) : vi_zero();
    UNROLL for (int k = 0; k < 9; k++) {
        UNROLL for (int b = 0; b < 4; b++) {
            if (b < nb) acc[b] = q_dot(acc[b], q_prep(vi_loadz(src[b] + off[k], mk[k]), sgn), q_prepw(wq[9 * b + k]));
        }
    }
    vi out = vi_zero();
    UNROLL for (int b = 0; b < 4; b++) {
        if (b < nb) out = vi_or(out, q_requant(acc[b], m[b], c[b], 0, v_zero(), 0.f, lo, hi, b));
    }
    vi_storem(dst, out, mst);
}

/* Stride 2: one output quad, one vector of output row oy from column ox0. The taps of an input row are the
 * even / odd columns of two vector pairs; `same` (all four channels read one plane) forms them once for all
 * four, else once per channel. Rows outside the image are zero taps, like columns (VNNI: comp counts them). */
SN_INLINE void qdw_s2_vec(const int same, const int32_t *const src[4], const int32_t *wq, const int32_t *comp,
                          const float *m, const float *c, int nb, int H, int W, int oy, int ox0, vf lo, vf hi,
                          int sgn, int32_t *dst, vm mst)
{
    vi acc[4];
    UNROLL for (int b = 0; b < 4; b++) acc[b] = comp ? vi_set1(comp[b]) : vi_zero();
    const int xs = 2 * ox0;
    const vm mA = v_mask_n(W - xs), mB = v_mask_n(W - xs - VW);
    const vm mC = v_mask_range(MAX(0, 1 - xs), W - xs + 1), mD = v_mask_n(W - xs + 1 - VW);
    UNROLL for (int dy = 0; dy < 3; dy++) {
        const int iy = 2 * oy - 1 + dy, inside = iy >= 0 && iy < H;
        UNROLL for (int b = 0; b < 4; b++) {
            if (b >= nb || (same && b > 0)) break;
            vi t[3] = {vi_zero(), vi_zero(), vi_zero()};
            if (inside) {
                const int32_t *row = src[b] + (ptrdiff_t)iy * W + xs;
                const vf L0 = vi_asf(vi_loadz(row, mA)), L1 = vi_asf(vi_loadz(row + VW, mB));
                const vf M0 = vi_asf(vi_loadz(row - 1, mC)), M1 = vi_asf(vi_loadz(row - 1 + VW, mD));
                t[0] = vf_asi(v_even(M0, M1));
                t[1] = vf_asi(v_even(L0, L1));
                t[2] = vf_asi(v_odd(L0, L1));
            }
            UNROLL for (int j = 0; j < 3; j++) {
                const qa a = q_prep(t[j], sgn);
                if (same) {
                    UNROLL for (int e = 0; e < 4; e++) {
                        if (e < nb) acc[e] = q_dot(acc[e], a, q_prepw(wq[9 * e + 3 * dy + j]));
                    }
                } else {
                    acc[b] = q_dot(acc[b], a, q_prepw(wq[9 * b + 3 * dy + j]));
                }
            }
        }
    }
    vi out = vi_zero();
    UNROLL for (int b = 0; b < 4; b++) {
        if (b < nb) out = vi_or(out, q_requant(acc[b], m[b], c[b], 0, v_zero(), 0.f, lo, hi, b));
    }
    vi_storem(dst, out, mst);
}

#if SN_ISA == 2
/* Depthwise 3x3 with AVX-512 VBMI, one kernel row per dot product (3 instead of 9). Used when the op has the
 * per-row layout (op->K == 3: after the tap words in wp, per input channel c and kernel row the word
 * (w0, w1, w2, 0) of the output channel that reads c, then that output channel per input channel, then the
 * input quads in the order of their first output channel) and every output quad is full. Work runs over input
 * quads in that order (threads given consecutive ones write apart), whose four channels share every load: for
 * channel b, one vpermt2b gathers byte b of pixels x - 1, x, x + 1 into the word of x (zeroing the taps across
 * the left and right edges), one vpdpbusd adds the row. Each channel's bytes are stored into the plane and byte
 * of its output channel, so the channel shuffle stays the output order as in the tap-word kernel. Stride 1 runs
 * along the flattened plane as there; stride 2 row by row with 15 outputs a vector (their 31 input words fill
 * two vectors). */
extern int sn_int8_dw_rows;

#pragma GCC push_options
#pragma GCC target("avx512vbmi")

/* bit i of m at bit 4i (lane i's byte 0 in a byte mask) */
SN_INLINE uint64_t qdw_spread(uint32_t m)
{
    uint64_t r = 0;
    for (int i = 0; i < 16; i++) r |= (uint64_t)(m >> i & 1u) << (4 * i);
    return r;
}

/* the permutation indices: for channel b, byte j of lane i is byte b of word step * i + j of (A, B) */
SN_INLINE void qdw_rows_index(int step, vi idx[4])
{
    uint8_t t[4][64];
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 4; j++) t[b][4 * i + j] = (uint8_t)((4 * (step * i + MIN(j, 2)) + b) & 127);
    for (int b = 0; b < 4; b++) idx[b] = _mm512_loadu_si512(t[b]);
}

/* one input quad, one vector: A[dy], B[dy] the words of input row dy, kb the tap bytes that count, at the
 * output pixel offset at, kst the lanes to store (as a mask of byte 0 of each lane) */
SN_INLINE void qdw_rows_vec(const sn_op *op, const int32_t *rw, const int32_t *inv, const vi A[3], const vi B[3],
                            const vi idx[4], __mmask64 kb, int jq, int sgn, int vnni_comp, vf lo, vf hi,
                            float *const *slot, const int64_t *cs, ptrdiff_t at, uint64_t kst)
{
    vi acc[4];
    UNROLL for (int b = 0; b < 4; b++) {
        const int o = inv[4 * jq + b];
        acc[b] = vnni_comp ? vi_set1(op->comp[o]) : vi_zero();
    }
    UNROLL for (int dy = 0; dy < 3; dy++) {
        UNROLL for (int b = 0; b < 4; b++) {
            vi t = _mm512_maskz_permutex2var_epi8(kb, A[dy], idx[b], B[dy]);
            if (sgn) t = vi_xor(t, vi_set1((int32_t)0x80808080u));
            acc[b] = _mm512_dpbusd_epi32(acc[b], t, vi_set1(rw[3 * (4 * jq + b) + dy]));
        }
    }
    UNROLL for (int b = 0; b < 4; b++) {
        const int o = inv[4 * jq + b];
        const vi out = q_requant(acc[b], op->m[o], op->b[o], 0, v_zero(), 0.f, lo, hi, o & 3);
        int32_t *dst = qplane(slot, cs, op->dst, op->dst_coff / 4 + o / 4) + at;
        _mm512_mask_storeu_epi8(dst, (__mmask64)(kst << (o & 3)), out);
    }
}

static void qdw_rows_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int pp, pq;
    qdw_split(op, n, &pp, &pq);
    const int pi = chunk / pq, qi = chunk % pq, nq = CDIV(op->cout, 4);
    const int sgn = op->qflags & Q_SIGNED_SRC;
    const vf lo = v_set1((float)op->lo), hi = v_set1((float)op->hi);
    const int jq0 = (int)((int64_t)nq * qi / pq), jq1 = (int)((int64_t)nq * (qi + 1) / pq);
    const int H = op->H, W = op->W, P = H * W;
    /* the per-row layout after the nq * 36 tap words: row words, output channel per input channel, quad order */
    const int32_t *rw = (const int32_t *)op->wp + (ptrdiff_t)nq * 36, *inv = rw + (ptrdiff_t)nq * 12;
    const int32_t *qorder = inv + (ptrdiff_t)nq * 4;
    vi idx[4];
    if (op->stride == 1) {
        qdw_rows_index(1, idx);
        const int nvec = CDIV(P, VW);
        const int v0 = (int)((int64_t)nvec * pi / pp), v1 = (int)((int64_t)nvec * (pi + 1) / pp);
        for (int v = v0; v < v1; v++) {
            const int p0 = v * VW;
            /* byte 0 (x - 1) where a left neighbour exists, byte 1 always, byte 2 (x + 1) where a right one */
            const __mmask64 kb = (__mmask64)(qdw_spread(op->masks[2 * v]) | 0x2222222222222222ull |
                                             qdw_spread(op->masks[2 * v + 1]) << 2);
            const uint64_t kst = qdw_spread(v_mask_n(P - p0));
            vm ma[3], mb[3];
            for (int dy = 0; dy < 3; dy++) {
                const int a = p0 - 1 + (dy - 1) * W; /* word 0 of A; out-of-plane words load as 0 */
                ma[dy] = v_mask_range(MAX(0, -a), P - a);
                mb[dy] = v_mask_range(MAX(0, -(a + VW)), P - a - VW);
            }
            for (int k = jq0; k < jq1; k++) {
                const int jq = qorder[k];
                const int32_t *pl = qplane(slot, cs, op->src, jq);
                vi A[3], B[3];
                for (int dy = 0; dy < 3; dy++) {
                    const int a = p0 - 1 + (dy - 1) * W;
                    A[dy] = vi_loadz(pl + a, ma[dy]);
                    B[dy] = vi_loadz(pl + a + VW, mb[dy]);
                }
                qdw_rows_vec(op, rw, inv, A, B, idx, kb, jq, sgn, Q_VNNI && sgn, lo, hi, slot, cs, p0, kst);
            }
        }
        return;
    }
    qdw_rows_index(2, idx);
    const __mmask64 kb = (__mmask64)0x7777777777777777ull;
    const int y0 = (int)((int64_t)op->OH * pi / pp), y1 = (int)((int64_t)op->OH * (pi + 1) / pp);
    for (int oy = y0; oy < y1; oy++)
        for (int ox0 = 0; ox0 < op->OW; ox0 += VW - 1) {
            const int a = 2 * ox0 - 1; /* column of word 0 of A */
            const uint64_t kst = qdw_spread(v_mask_n(MIN(VW - 1, op->OW - ox0)));
            vm ma[3], mb[3];
            for (int dy = 0; dy < 3; dy++) {
                const int iy = 2 * oy - 1 + dy, inside = iy >= 0 && iy < H;
                ma[dy] = inside ? v_mask_range(MAX(0, -a), W - a) : (vm)0;
                mb[dy] = inside ? v_mask_n(W - a - VW) : (vm)0;
            }
            for (int k = jq0; k < jq1; k++) {
                const int jq = qorder[k];
                const int32_t *pl = qplane(slot, cs, op->src, jq);
                vi A[3], B[3];
                for (int dy = 0; dy < 3; dy++) {
                    const int32_t *row = pl + (ptrdiff_t)(2 * oy - 1 + dy) * W + a;
                    A[dy] = vi_loadz(row, ma[dy]);
                    B[dy] = vi_loadz(row + VW, mb[dy]);
                }
                qdw_rows_vec(op, rw, inv, A, B, idx, kb, jq, sgn, Q_VNNI && sgn, lo, hi, slot, cs,
                             (ptrdiff_t)oy * op->OW + ox0, kst);
            }
        }
}
#pragma GCC pop_options
#endif

static void qdw_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
#if SN_ISA == 2
    if (sn_int8_dw_rows && op->K == 3 && op->cout % 4 == 0) {
        qdw_rows_run(op, slot, cs, chunk, n);
        return;
    }
#endif
    int pp, pq;
    qdw_split(op, n, &pp, &pq);
    const int pi = chunk / pq, qi = chunk % pq, nq = CDIV(op->cout, 4);
    const int sgn = op->qflags & Q_SIGNED_SRC, vnni_comp = Q_VNNI && sgn;
    const vf lo = v_set1((float)op->lo), hi = v_set1((float)op->hi);
    const int32_t *wp = (const int32_t *)op->wp;
    const int jq0 = (int)((int64_t)nq * qi / pq), jq1 = (int)((int64_t)nq * (qi + 1) / pq);
    const int H = op->H, W = op->W, P = H * W;
    if (op->stride == 1) {
        const int nvec = CDIV(P, VW);
        const int v0 = (int)((int64_t)nvec * pi / pp), v1 = (int)((int64_t)nvec * (pi + 1) / pp);
        for (int v = v0; v < v1; v++) {
            const int p0 = v * VW;
            const vm ml = v_mask_bits(op->masks[2 * v]), mr = v_mask_bits(op->masks[2 * v + 1]);
            int32_t off[9];
            vm mk[9];
            for (int dy = 0; dy < 3; dy++) {
                for (int dx = 0; dx < 3; dx++) {
                    const int d = (dy - 1) * W + dx - 1;
                    off[3 * dy + dx] = p0 + d;
                    const vm inb = v_mask_range(MAX(0, -(p0 + d)), P - (p0 + d)); /* inside the plane */
                    vm mm = v_mask_and(inb, v_mask_n(P - p0));
                    if (dx == 0) mm = v_mask_and(mm, ml);
                    if (dx == 2) mm = v_mask_and(mm, mr);
                    mk[3 * dy + dx] = mm;
                }
            }
            const vm mst = v_mask_n(P - p0);
            for (int jq = jq0; jq < jq1; jq++) {
                const int o0 = 4 * jq, nb = MIN(4, op->cout - o0);
                const int32_t *src[4];
                for (int b = 0; b < 4; b++) src[b] = qplane(slot, cs, op->src, op->koff[o0 + MIN(b, nb - 1)] / 4);
                qdw_quad(src, wp + (ptrdiff_t)o0 * 9, vnni_comp ? op->comp + o0 : NULL, op->m + o0,
                         op->b + o0, nb, off, mk, lo, hi, sgn, qplane(slot, cs, op->dst, op->dst_coff / 4 + jq) + p0,
                         mst);
            }
        }
        return;
    }
    const int y0 = (int)((int64_t)op->OH * pi / pp), y1 = (int)((int64_t)op->OH * (pi + 1) / pp);
    for (int jq = jq0; jq < jq1; jq++) {
        const int o0 = 4 * jq, nb = MIN(4, op->cout - o0);
        const int32_t *src[4];
        int same = 1; /* all channels of the quad read one input plane (no shuffle: an average pool) */
        for (int b = 0; b < 4; b++) {
            src[b] = qplane(slot, cs, op->src, op->koff[o0 + MIN(b, nb - 1)] / 4);
            same &= src[b] == src[0];
        }
        int32_t *dst = qplane(slot, cs, op->dst, op->dst_coff / 4 + jq);
        const int32_t *wq = wp + (ptrdiff_t)o0 * 9, *comp = vnni_comp ? op->comp + o0 : NULL;
        for (int oy = y0; oy < y1; oy++)
            for (int ox0 = 0; ox0 < op->OW; ox0 += VW) {
                int32_t *d = dst + (ptrdiff_t)oy * op->OW + ox0;
                const vm mst = v_mask_n(op->OW - ox0);
                if (same)
                    qdw_s2_vec(1, src, wq, comp, op->m + o0, op->b + o0, nb, H, W, oy, ox0, lo, hi, sgn, d, mst);
                else
                    qdw_s2_vec(0, src, wq, comp, op->m + o0, op->b + o0, nb, H, W, oy, ox0, lo, hi, sgn, d, mst);
            }
    }
}

/* 3x3/2 max pool on the integers (the output keeps the input's scale): bytewise max */
static void qmax_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    const int y0 = (int)((int64_t)op->OH * chunk / n), y1 = (int)((int64_t)op->OH * (chunk + 1) / n);
    const int sgn = op->qflags & Q_SIGNED_SRC;
    const vi fill = vi_set1(sgn ? (int32_t)0x80808080u : 0);
    for (int q = 0; q < CDIV(op->cout, 4); q++) {
        const int32_t *src = qplane(slot, cs, op->src, q);
        int32_t *dst = qplane(slot, cs, op->dst, op->dst_coff / 4 + q);
        for (int oy = y0; oy < y1; oy++)
            for (int ox0 = 0; ox0 < op->OW; ox0 += VW) {
                vi t[9];
                q_taps(src, op->H, op->W, 2, oy, ox0, fill, t);
                vi acc = t[0];
                for (int k = 1; k < 9; k++) acc = sgn ? vi_max_s8(acc, t[k]) : vi_max_u8(acc, t[k]);
                if (sgn && op->act == SN_ACT_RELU) acc = vi_max_s8(acc, vi_zero());
                vi_storem(dst + (ptrdiff_t)oy * op->OW + ox0, acc, v_mask_n(op->OW - ox0));
            }
    }
}

/* Dense 3x3 conv (the stem): wp [cout][nq][9] words (4 input channels each), the taps of every input plane
 * formed once per output vector. */
static void qconv_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    const int y0 = (int)((int64_t)op->OH * chunk / n), y1 = (int)((int64_t)op->OH * (chunk + 1) / n);
    const int sgn = op->qflags & Q_SIGNED_SRC, vnni_comp = Q_VNNI && sgn;
    const int nq = CDIV(op->cin, 4);
    const vf lo = v_set1((float)op->lo), hi = v_set1((float)op->hi);
    const int32_t *wp = (const int32_t *)op->wp;
    qa ta[4 * 9];
    for (int oy = y0; oy < y1; oy++)
        for (int ox0 = 0; ox0 < op->OW; ox0 += VW) {
            for (int q = 0; q < nq && q < 4; q++) {
                vi t[9];
                q_taps(qplane(slot, cs, op->src, q), op->H, op->W, op->stride, oy, ox0, vi_zero(), t);
                for (int k = 0; k < 9; k++) ta[q * 9 + k] = q_prep(t[k], sgn);
            }
            for (int jq = 0; jq < CDIV(op->cout, 4); jq++) {
                /* the quad's four channels as four interleaved chains (a channel past cout repeats the last
                 * one and is not stored) */
                const int o0 = 4 * jq, nb = MIN(4, op->cout - o0);
                vi acc[4];
                const int32_t *wo[4];
                UNROLL for (int b = 0; b < 4; b++) {
                    acc[b] = vnni_comp ? vi_set1(op->comp[o0 + MIN(b, nb - 1)]) : vi_zero();
                    wo[b] = wp + (ptrdiff_t)(o0 + MIN(b, nb - 1)) * nq * 9;
                }
                for (int k = 0; k < nq * 9; k++)
                    UNROLL for (int b = 0; b < 4; b++) acc[b] = q_dot(acc[b], ta[k], q_prepw(wo[b][k]));
                vi out = vi_zero();
                for (int b = 0; b < nb; b++)
                    out = vi_or(out, q_requant(acc[b], op->m[o0 + b], op->b[o0 + b], 0, v_zero(), 0.f, lo, hi, b));
                vi_storem(qplane(slot, cs, op->dst, jq) + (ptrdiff_t)oy * op->OW + ox0, out,
                          v_mask_n(op->OW - ox0));
            }
        }
}

/* Global average pool: per channel the integer sum over the plane, times m_res (scale / pixels), float. */
static void qgap_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int q0, q1;
    part_range(CDIV(op->cout, 4), chunk, n, &q0, &q1);
    const int P = op->H * op->W, sgn = op->qflags & Q_SIGNED_SRC;
    float *out = slot[op->dst] + op->dst_coff;
    for (int q = q0; q < q1; q++) {
        const int32_t *pl = qplane(slot, cs, op->src, q);
        vi acc[4] = {vi_zero(), vi_zero(), vi_zero(), vi_zero()};
        int lanes = 0;
        for (int p = 0; p < P; p += VW, lanes += VW) {
            const qa a = q_prep(vi_loadz(pl + p, v_mask_n(P - p)), sgn);
            for (int b = 0; b < 4; b++) acc[b] = q_dot(acc[b], a, q_prepw(1 << (8 * b)));
        }
        for (int b = 0; b < 4 && 4 * q + b < op->cout; b++) {
            int32_t lane[VW];
            memcpy(lane, &acc[b], sizeof lane);
            int64_t s = 0;
            for (int i = 0; i < VW; i++) s += lane[i];
            if (Q_VNNI && sgn) s -= 128 * (int64_t)lanes;
            out[4 * q + b] = (float)s * op->m_res;
        }
    }
}

/* float NCHW planes -> quad planes: q = round(clamp(x / scale)), NaN -> 0 (Python marks those images).
 * Chunks are ranges of pixel vectors, over all quads. */
static void qpack_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    const int P = op->H * op->W, nvec = CDIV(P, VW);
    const int v0 = (int)((int64_t)nvec * chunk / n), v1 = (int)((int64_t)nvec * (chunk + 1) / n);
    const vf s = v_set1(op->m_res), lo = v_set1(-128.0f), hi = v_set1(127.0f);
    for (int q = 0; q < CDIV(op->cout, 4); q++) {
        int32_t *dst = qplane(slot, cs, op->dst, q);
        const int nb = MIN(4, op->cin - 4 * q);
        const float *src[4];
        for (int b = 0; b < 4; b++) src[b] = slot[op->src] + (ptrdiff_t)(4 * q + MIN(b, nb - 1)) * cs[op->src];
        for (int v = v0; v < v1; v++) {
            const int p = v * VW;
            const vm mk = v_mask_n(P - p);
            vi w = vi_zero();
            for (int b = 0; b < nb; b++) {
                const vf x = v_min(v_max(v_nan0(v_div(v_loadz(src[b] + p, mk), s)), lo), hi);
                w = vi_or(w, vi_sll(vi_and(vf_toi(x), vi_set1(0xFF)), 8 * b));
            }
            vi_storem(dst + p, w, mk);
        }
    }
}

/* quad planes -> float NCHW planes (q * scale), for programs whose output is a feature map */
static void qout_run(const sn_op *op, float *const *slot, const int64_t *cs, int chunk, int n)
{
    int c0, c1;
    part_range(op->cout, chunk, n, &c0, &c1);
    const int P = op->H * op->W, sgn = op->qflags & Q_SIGNED_SRC;
    for (int c = c0; c < c1; c++) {
        const int32_t *src = qplane(slot, cs, op->src, c / 4);
        float *dst = slot[op->dst] + (ptrdiff_t)(op->dst_coff + c) * cs[op->dst];
        for (int p = 0; p < P; p++) {
            const uint32_t x = (uint32_t)src[p] >> (8 * (c % 4));
            dst[p] = (float)(sgn ? (int)(int8_t)x : (int)(x & 0xFF)) * op->m_res;
        }
    }
}

#if SN_ISA == 2
#pragma GCC pop_options
#endif

#endif
