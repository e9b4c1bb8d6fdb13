/*
 * k_optim.c — optimizer updates and gradient compression on the CPU:
 * SGD with momentum, AdamW, IEEE half precision, int8 with error feedback
 * and the Gram-Schmidt step of PowerSGD.
 *
 * Legend: w = weights, g = gradient, m, v = Adam's first and second moments,
 * t = step (from 1), lr = learning rate, wd = weight decay.
 */
#include <math.h>
#include <string.h>

#include "executor/kernels_internal.h"

/* ----------------------------------------------------------------------------
 * Optimizers */

/* The updates are elementwise: each runs over the kernels' fixed pieces of
 * the buffer (k_pieces), spread over the rank's threads, so a weight's new
 * value does not depend on how many threads computed it. Within a piece,
 * fast loops (K_FAST: vectorised, no FMA) over locals the stores cannot
 * alias. */

typedef struct {
    float lr, wd, mom, b1, b2, eps, c1, c2;
} OptConst;

K_FAST void sgd_run(float *restrict w, const float *restrict g, float *restrict mom, int64_t n,
                    OptConst c)
{
    int64_t n8 = n & ~(int64_t)7;
    if (mom) {
        for (int64_t i = 0; i < n8; i++) {
            float d = c.mom * mom[i] + (g[i] + c.wd * w[i]);
            mom[i] = d;
            w[i] -= c.lr * d;
        }
        for (int64_t i = n8; i < n; i++) {
            float d = c.mom * mom[i] + (g[i] + c.wd * w[i]);
            mom[i] = d;
            w[i] -= c.lr * d;
        }
        return;
    }
    for (int64_t i = 0; i < n8; i++) w[i] -= c.lr * (g[i] + c.wd * w[i]);
    for (int64_t i = n8; i < n; i++) w[i] -= c.lr * (g[i] + c.wd * w[i]);
}

/* PyTorch's SGD: g' = g + wd * w; mom = momentum * mom + g'; w -= lr * mom.
 * With mom NULL (or momentum 0) the step is plain w -= lr * g'. */
void kernel_sgd(float *w, const float *g, float *mom, int64_t n, const OptimHyper *h)
{
    OptConst c = { .lr = h->lr, .wd = h->weight_decay, .mom = h->momentum };
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        const int64_t o = k * K_PIECE;
        sgd_run(w + o, g + o, mom ? mom + o : NULL, k_piece_len(n, k), c);
    }
}

K_FAST void adam_run(float *restrict w, const float *restrict g, float *restrict m,
                     float *restrict v, int64_t n, OptConst c)
{
    float a1 = 1 - c.b1, a2 = 1 - c.b2;
    int64_t n8 = n & ~(int64_t)7;
#define ADAM_ONE(i)                                                             \
    do {                                                                        \
        float mi = c.b1 * m[i] + a1 * g[i], vi = c.b2 * v[i] + a2 * g[i] * g[i]; \
        m[i] = mi;                                                              \
        v[i] = vi;                                                              \
        w[i] -= c.lr * (c.wd * w[i] + mi * c.c1 / (sqrtf(vi * c.c2) + c.eps));  \
    } while (0)
    for (int64_t i = 0; i < n8; i++) ADAM_ONE(i);
    for (int64_t i = n8; i < n; i++) ADAM_ONE(i);
#undef ADAM_ONE
}

/* AdamW (Loshchilov and Hutter): the decay acts on the weights directly,
 * w -= lr * wd * w, outside the adaptive step
 * w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). One pass over
 * the four buffers. */
void kernel_adam(float *w, const float *g, float *m, float *v, int64_t n, int64_t step,
                 const OptimHyper *h)
{
    double t = (double)(step > 0 ? step : 1);
    OptConst c = { .lr = h->lr, .wd = h->weight_decay, .b1 = h->beta1, .b2 = h->beta2,
                   .eps = h->eps, .c1 = (float)(1 / (1 - pow(h->beta1, t))),
                   .c2 = (float)(1 / (1 - pow(h->beta2, t))) };
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        const int64_t o = k * K_PIECE;
        adam_run(w + o, g + o, m + o, v + o, k_piece_len(n, k), c);
    }
}

/* ----------------------------------------------------------------------------
 * IEEE binary16, by integer arithmetic so that the rounding does not depend
 * on the FPU's mode or on flush-to-zero flags. */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round-to-nearest-even of mant >> shift (shift >= 1). */
static uint32_t shift_rne(uint32_t mant, int shift)
{
    if (shift > 31) return 0;
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

static uint16_t half_from_float(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)(u >> 16 & 0x8000);
    uint32_t a = u & 0x7fffffff;
    if (a >= 0x7f800000) /* inf, nan (kept quiet, top payload bits kept) */
        return sign | (a == 0x7f800000 ? 0x7c00 : (uint16_t)(0x7e00 | (a >> 13 & 0x3ff)));
    int e = (int)(a >> 23);                 /* biased fp32 exponent */
    if (e < 113) {                          /* below 2^-14: a half subnormal or zero */
        if (e == 0) return sign;            /* fp32 subnormals are far below 2^-25 */
        /* value = mant * 2^(e - 150); in units of 2^-24: mant >> (126 - e) */
        return sign | (uint16_t)shift_rne((a & 0x7fffff) | 0x800000, 126 - e);
    }
    /* rebias and round the 13 dropped bits; a carry into the exponent is
     * right, and past 65504 it lands on infinity (0x7c00) */
    uint32_t r = shift_rne(a - (112u << 23), 13);
    return sign | (uint16_t)(r > 0x7c00 ? 0x7c00 : r);
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = h >> 10 & 0x1f, mant = h & 0x3ff;
    if (e == 0) {
        float v = ldexpf((float)mant, -24);  /* exact */
        return sign ? -v : v;
    }
    if (e == 31)  /* infinity; a NaN comes back quiet, as IEEE converts one */
        return f32_from_bits(sign | 0x7f800000 | mant << 13 | (mant ? 0x400000u : 0));
    return f32_from_bits(sign | (e + 112) << 23 | mant << 13);
}

/* With F16C (x86-64 since 2012) eight at a time in hardware: its
 * conversions are IEEE's, round to nearest even with subnormals, infinities
 * and quiet NaNs (top payload bits kept) as above, so the two paths give the
 * same bits (the tests compare them on every half). */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target)
#include <immintrin.h>
#define HAVE_F16C_PATH 1

__attribute__((target("avx,f16c"))) static int64_t to_fp16_hw(const float *x, uint16_t *h,
                                                               int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return i;
}

__attribute__((target("avx,f16c"))) static int64_t from_fp16_hw(const uint16_t *h, float *x,
                                                                 int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    return i;
}

static bool have_f16c(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif
#endif

bool kernel_fp16_hardware = true;

static void to_fp16_run(const float *x, uint16_t *h, int64_t n, bool hw)
{
    int64_t i = 0;
#ifdef HAVE_F16C_PATH
    if (hw) i = to_fp16_hw(x, h, n);
#else
    (void)hw;
#endif
    for (; i < n; i++) h[i] = half_from_float(x[i]);
}

static void from_fp16_run(const uint16_t *h, float *x, int64_t n, bool hw)
{
    int64_t i = 0;
#ifdef HAVE_F16C_PATH
    if (hw) i = from_fp16_hw(h, x, n);
#else
    (void)hw;
#endif
    for (; i < n; i++) x[i] = half_to_float(h[i]);
}

static bool use_hw(void)
{
#ifdef HAVE_F16C_PATH
    return kernel_fp16_hardware && have_f16c();
#else
    return false;
#endif
}

void kernel_to_fp16(const float *x, uint16_t *h, int64_t n)
{
    const bool hw = use_hw();
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++)
        to_fp16_run(x + k * K_PIECE, h + k * K_PIECE, k_piece_len(n, k), hw);
}

void kernel_from_fp16(const uint16_t *h, float *x, int64_t n)
{
    const bool hw = use_hw();
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++)
        from_fp16_run(h + k * K_PIECE, x + k * K_PIECE, k_piece_len(n, k), hw);
}

void kernel_half_sum(const uint16_t *a, uint16_t *b, int64_t n)
{
    const bool hw = use_hw();
    float fa[256], fb[256];
    for (int64_t o = 0; o < n; o += 256) {
        int64_t len = n - o < 256 ? n - o : 256;
        from_fp16_run(a + o, fa, len, hw);
        from_fp16_run(b + o, fb, len, hw);
        for (int64_t i = 0; i < len; i++) fb[i] = fa[i] + fb[i];
        to_fp16_run(fb, b + o, len, hw);
    }
}

/* ----------------------------------------------------------------------------
 * int8 with error feedback (1-bit/8-bit SGD, Seide et al.; Karimireddy et
 * al.): what rounding loses this step is added to the next step's input, so
 * the sum of the decoded values tracks the sum of the inputs within one
 * quantum. e may be NULL (no feedback). */

/* The largest |x + e| of a run (e may be NULL), in eight lanes so that the
 * loop vectorises; a maximum is exact, so the lanes change nothing. A NaN
 * never wins (as in a plain `if (a > m) m = a`). */
K_FAST float vec_absmax(const float *restrict x, const float *restrict e, int64_t n)
{
    float m[8] = { 0 };
    int64_t i = 0;
    if (e) {        /* two loops: gcc vectorises neither with the test inside */
        for (const int64_t n8 = n & ~(int64_t)7; i < n8; i += 8)
            for (int j = 0; j < 8; j++) {
                float a = fabsf(x[i + j] + e[i + j]);
                m[j] = a > m[j] ? a : m[j];
            }
    } else {
        for (const int64_t n8 = n & ~(int64_t)7; i < n8; i += 8)
            for (int j = 0; j < 8; j++) {
                float a = fabsf(x[i + j]);
                m[j] = a > m[j] ? a : m[j];
            }
    }
    for (; i < n; i++) {
        float a = fabsf(x[i] + (e ? e[i] : 0));
        m[0] = a > m[0] ? a : m[0];
    }
    float r = m[0];
    for (int j = 1; j < 8; j++) r = m[j] > r ? m[j] : r;
    return r;
}

/* y / scale rounded to the nearest integer (ties to even, as lrintf in the
 * default rounding mode) and held to [-127, 127]: the magnitude is clamped
 * on the float's bits (integer compares, which cannot trap, so the loop
 * vectorises; an infinity is +-127, a NaN -127), then rounded by adding
 * and taking away 1.5 * 2^23, which leaves a float of magnitude below 2^22
 * at its nearest integer. Rounding is monotone and the bounds are
 * integers, so clamping first changes no code. */
static inline float int8_code(float y, float scale)
{
    union { float f; int32_t i; } v = { .f = y / scale };
    int32_t mag = v.i & 0x7fffffff, sgn = v.i & (int32_t)0x80000000;
    sgn = mag > 0x7f800000 ? (int32_t)0x80000000 : sgn;
    mag = mag < 0x42fe0000 ? mag : 0x42fe0000;      /* 127.0f */
    v.i = sgn | mag;
    return (v.f + 12582912.0f) - 12582912.0f;
}

/* Codes of a run, the error fed back (e) or not; the main loops take 32 at
 * a time, a vector of codes. */
K_FAST void vec_int8_encode_fed(const float *restrict x, float *restrict e, int8_t *restrict q,
                                float scale, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n32 = n & ~(int64_t)31; i < n32; i++) {
        float y = x[i] + e[i], r = int8_code(y, scale);
        q[i] = (int8_t)(int32_t)r;
        e[i] = y - r * scale;
    }
    for (; i < n; i++) {
        float y = x[i] + e[i], r = int8_code(y, scale);
        q[i] = (int8_t)(int32_t)r;
        e[i] = y - r * scale;
    }
}

K_FAST void vec_int8_encode(const float *restrict x, int8_t *restrict q, float scale, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n32 = n & ~(int64_t)31; i < n32; i++)
        q[i] = (int8_t)(int32_t)int8_code(x[i], scale);
    for (; i < n; i++) q[i] = (int8_t)(int32_t)int8_code(x[i], scale);
}

K_FAST void vec_int8_decode(const int8_t *restrict q, float scale, float *restrict x, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n32 = n & ~(int64_t)31; i < n32; i++) x[i] = (float)q[i] * scale;
    for (; i < n; i++) x[i] = (float)q[i] * scale;
}

float kernel_int8_encode(const float *x, float *e, int8_t *q, int64_t n)
{
    const int64_t pieces = k_pieces(n);
    /* a maximum is exact: the same whichever thread finds which piece's
     * (vec_absmax never returns a NaN) */
    float amax = 0;
#pragma omp parallel for schedule(static) reduction(max : amax) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        int64_t o = k * K_PIECE;
        float a = vec_absmax(x + o, e ? e + o : NULL, k_piece_len(n, k));
        amax = a > amax ? a : amax;
    }
    float scale = amax / 127;
    if (!(scale > 0)) {
        /* nothing to scale by: every code 0, the input kept as the error */
        if (n > 0) memset(q, 0, (size_t)n);
        if (e)
            for (int64_t i = 0; i < n; i++) e[i] = x[i] + e[i];
        return scale;
    }
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        int64_t o = k * K_PIECE;
        if (e) vec_int8_encode_fed(x + o, e + o, q + o, scale, k_piece_len(n, k));
        else vec_int8_encode(x + o, q + o, scale, k_piece_len(n, k));
    }
    return scale;
}

void kernel_int8_decode(const int8_t *q, float scale, float *x, int64_t n)
{
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++)
        vec_int8_decode(q + k * K_PIECE, scale, x + k * K_PIECE, k_piece_len(n, k));
}

/* ----------------------------------------------------------------------------
 * Orthonormal columns: modified Gram-Schmidt, each column projected out
 * twice ("twice is enough", Giraud et al.) with dot products in double. A
 * column that vanishes (zero, or dependent on the earlier ones) becomes the
 * first unit vector e_k that the earlier columns leave a clear residue of,
 * so the result is deterministic and P^T P = I whenever r <= rows. */

static double col_dot(const float *p, int64_t rows, int r, int a, int b)
{
    double s = 0;
    for (int64_t i = 0; i < rows; i++) s += (double)p[i * r + a] * p[i * r + b];
    return s;
}

static void col_project_out(float *p, int64_t rows, int r, int j)
{
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < j; k++) {
            double d = col_dot(p, rows, r, k, j);
            for (int64_t i = 0; i < rows; i++) p[i * r + j] -= (float)(d * p[i * r + k]);
        }
}

/* Column j := e_k minus its projection on columns 0..j-1; returns its norm. */
static double col_set_unit(float *p, int64_t rows, int r, int j, int64_t k)
{
    for (int64_t i = 0; i < rows; i++) p[i * r + j] = i == k;
    col_project_out(p, rows, r, j);
    return sqrt(col_dot(p, rows, r, j, j));
}

void kernel_orthonormalize(float *p, int64_t rows, int r)
{
    for (int j = 0; j < r; j++) {
        double before = sqrt(col_dot(p, rows, r, j, j));
        col_project_out(p, rows, r, j);
        double nrm = sqrt(col_dot(p, rows, r, j, j));
        /* a residue at rounding level of the input carries no direction */
        if (!(nrm > 1e-4 * before && nrm > 1e-30)) {
            /* some e_k keeps at least sqrt((rows - j) / rows) of its length:
             * take the first that keeps half, else the one that keeps most */
            int64_t best = -1;
            double best_nrm = 0;
            for (int64_t k = 0; k < rows; k++) {
                nrm = col_set_unit(p, rows, r, j, k);
                if (nrm > 0.5) {
                    best = -1;
                    break;
                }
                if (nrm > best_nrm) best = k, best_nrm = nrm;
            }
            if (best >= 0) nrm = col_set_unit(p, rows, r, j, best);
        }
        if (!(nrm > 1e-30)) { /* r > rows: no direction is left */
            for (int64_t i = 0; i < rows; i++) p[i * r + j] = 0;
            continue;
        }
        for (int64_t i = 0; i < rows; i++) p[i * r + j] = (float)(p[i * r + j] / nrm);
    }
}
