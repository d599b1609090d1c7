/* A small vector layer so that one kernel source compiles for AVX-512 (SN_ISA 2), AVX2+FMA (SN_ISA 1) and
 * portable C (SN_ISA 0, GCC/Clang vector extensions: SSE2 on x86-64, NEON on arm64).
 *
 * vf: VW floats. vm: a lane mask. Loads and stores are unaligned. Masked loads never touch masked-off lanes
 * (so they are safe at the end of a buffer) and give zero (v_loadz) or `fill` (v_loadf) there.
 *
 * NaN. v_max(a, b) is the instruction's: b when either is NaN (x86 maxps; the portable build does the same).
 * v_maxp(a, b) propagates a NaN from either side (as torch.max_pool2d), and v_relu(a) keeps a NaN (as
 * torch.relu), so a NaN input pixel reaches the outputs it touches, as in eager PyTorch.
 */
#ifndef SN_SIMD_H
#define SN_SIMD_H

#include <stdint.h>
#include <string.h>

#ifndef SN_ISA
#define SN_ISA 0
#endif

#define SN_INLINE static inline __attribute__((always_inline))

#if SN_ISA == 2
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
typedef __mmask16 vm;
SN_INLINE vf v_zero(void) { return _mm512_setzero_ps(); }
SN_INLINE vf v_set1(float a) { return _mm512_set1_ps(a); }
SN_INLINE vf v_load(const float *p) { return _mm512_loadu_ps(p); }
SN_INLINE void v_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
SN_INLINE vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
SN_INLINE vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
SN_INLINE vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
SN_INLINE vf v_div(vf a, vf b) { return _mm512_div_ps(a, b); }
SN_INLINE vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
SN_INLINE vf v_maxp(vf a, vf b) { return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a); }
SN_INLINE vm v_mask_all(void) { return (vm)0xFFFF; }
SN_INLINE vm v_mask_n(int n) { return n >= 16 ? (vm)0xFFFF : n <= 0 ? (vm)0 : (vm)((1u << n) - 1u); }
SN_INLINE vm v_mask_bits(uint32_t b) { return (vm)b; }
SN_INLINE vm v_mask_and(vm a, vm b) { return (vm)(a & b); }
SN_INLINE vm v_mask_andnot(vm a, vm b) { return (vm)(~a & b); }
SN_INLINE vf v_loadz(const float *p, vm m) { return _mm512_maskz_loadu_ps(m, p); }
SN_INLINE vf v_loadf(const float *p, vm m, vf fill) { return _mm512_mask_loadu_ps(fill, m, p); }
SN_INLINE void v_storem(float *p, vf v, vm m) { _mm512_mask_storeu_ps(p, m, v); }
SN_INLINE float v_hsum(vf v) { return _mm512_reduce_add_ps(v); }
SN_INLINE vf v_even(vf lo, vf hi) {
    const __m512i idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_ps(lo, idx, hi);
}
SN_INLINE vf v_odd(vf lo, vf hi) {
    const __m512i idx = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_ps(lo, idx, hi);
}

#elif SN_ISA == 1
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
typedef __m256i vm;
SN_INLINE vf v_zero(void) { return _mm256_setzero_ps(); }
SN_INLINE vf v_set1(float a) { return _mm256_set1_ps(a); }
SN_INLINE vf v_load(const float *p) { return _mm256_loadu_ps(p); }
SN_INLINE void v_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
SN_INLINE vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
SN_INLINE vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
SN_INLINE vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
SN_INLINE vf v_div(vf a, vf b) { return _mm256_div_ps(a, b); }
SN_INLINE vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
SN_INLINE vf v_maxp(vf a, vf b) { return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
SN_INLINE vm v_mask_all(void) { return _mm256_set1_epi32(-1); }
SN_INLINE vm v_mask_n(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
SN_INLINE vm v_mask_bits(uint32_t b) {
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)b), bits), bits);
}
SN_INLINE vm v_mask_and(vm a, vm b) { return _mm256_and_si256(a, b); }
SN_INLINE vm v_mask_andnot(vm a, vm b) { return _mm256_andnot_si256(a, b); }
SN_INLINE vf v_loadz(const float *p, vm m) { return _mm256_maskload_ps(p, m); }
SN_INLINE vf v_loadf(const float *p, vm m, vf fill) {
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
SN_INLINE void v_storem(float *p, vf v, vm m) { _mm256_maskstore_ps(p, m, v); }
SN_INLINE float v_hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
SN_INLINE vf v_even(vf lo, vf hi) {
    __m256 t = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
}
SN_INLINE vf v_odd(vf lo, vf hi) {
    __m256 t = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
}

#else
#define VW 4
typedef float vf __attribute__((vector_size(16)));
typedef uint32_t vm;
SN_INLINE vf v_zero(void) { vf z = {0.f, 0.f, 0.f, 0.f}; return z; }
SN_INLINE vf v_set1(float a) { vf z = {a, a, a, a}; return z; }
SN_INLINE vf v_load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
SN_INLINE void v_store(float *p, vf v) { memcpy(p, &v, sizeof v); }
SN_INLINE vf v_fma(vf a, vf b, vf c) { return a * b + c; }
SN_INLINE vf v_add(vf a, vf b) { return a + b; }
SN_INLINE vf v_mul(vf a, vf b) { return a * b; }
SN_INLINE vf v_div(vf a, vf b) { return a / b; }
SN_INLINE vf v_max(vf a, vf b) {
    vf r;
    for (int i = 0; i < VW; i++) r[i] = a[i] > b[i] ? a[i] : b[i];
    return r;
}
SN_INLINE vf v_maxp(vf a, vf b) {
    vf r;
    for (int i = 0; i < VW; i++) r[i] = (a[i] != a[i] || a[i] > b[i]) ? a[i] : b[i];
    return r;
}
SN_INLINE vm v_mask_all(void) { return 0xFu; }
SN_INLINE vm v_mask_n(int n) { return n >= VW ? 0xFu : n <= 0 ? 0u : (1u << n) - 1u; }
SN_INLINE vm v_mask_bits(uint32_t b) { return b; }
SN_INLINE vm v_mask_and(vm a, vm b) { return a & b; }
SN_INLINE vm v_mask_andnot(vm a, vm b) { return ~a & b; }
SN_INLINE vf v_loadf(const float *p, vm m, vf fill) {
    vf r = fill;
    for (int i = 0; i < VW; i++)
        if (m >> i & 1u) r[i] = p[i];
    return r;
}
SN_INLINE vf v_loadz(const float *p, vm m) { return v_loadf(p, m, v_zero()); }
SN_INLINE void v_storem(float *p, vf v, vm m) {
    for (int i = 0; i < VW; i++)
        if (m >> i & 1u) p[i] = v[i];
}
SN_INLINE float v_hsum(vf v) { return (v[0] + v[1]) + (v[2] + v[3]); }
SN_INLINE vf v_even(vf lo, vf hi) { vf r = {lo[0], lo[2], hi[0], hi[2]}; return r; }
SN_INLINE vf v_odd(vf lo, vf hi) { vf r = {lo[1], lo[3], hi[1], hi[3]}; return r; }
#endif

/* max(0, a), a when a is NaN (v_max returns its second operand then) */
SN_INLINE vf v_relu(vf a) { return v_max(v_zero(), a); }
/* lanes i with lo <= i < hi */
SN_INLINE vm v_mask_range(int lo, int hi) { return v_mask_andnot(v_mask_n(lo), v_mask_n(hi)); }

#endif
