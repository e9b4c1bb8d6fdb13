/*
 * k_elementwise.c — kernels that touch each element once: add (residuals,
 * any number of inputs), bias (the second input broadcast over the first's
 * letters, in any order: "bsh,h", "bsh,sh", "nchw,c"), gelu (the tanh form
 * of GPT-2) and relu.
 *
 * All of them are memory-bound; each is one pass with a unit-stride inner
 * loop. None depends on how the op is split: every element is computed from
 * the elements at the same position.
 *
 * Fast paths (k_fast_paths, buffers that do not overlap): restrict-qualified
 * loops over whole buffers, in K_FAST functions (see kernels_internal.h) so
 * that gcc -O2 vectorises them. gelu's fast path computes
 * 0.5 (1 + tanh(u)) as the logistic 1 / (1 + e^(-2u)) with k_expf: one
 * vectorised exp instead of a libm tanhf per element, and accurate where
 * 1 + tanh(u) cancels (x well below 0). The generic paths are the plain
 * loops, kept for overlapping buffers and as the tests' reference.
 *
 * Legend: x = input 0, y = the output, b = the bias, dy = the output gradient.
 */
#include "kernels_internal.h"

#include <math.h>
#include <string.h>

bool k_fast_paths = true;

/* ----------------------------------------------------------------------------
 * Fast loops: y = a + b, y += a, y += a (twice, into y1 and y2) */

K_FAST void vec_add(float *restrict y, const float *restrict a, const float *restrict b, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) y[i] = a[i] + b[i];
    for (; i < n; i++) y[i] = a[i] + b[i];
}

K_FAST void vec_acc(float *restrict y, const float *restrict a, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) y[i] += a[i];
    for (; i < n; i++) y[i] += a[i];
}

K_FAST void vec_acc2(float *restrict y1, float *restrict y2, const float *restrict a, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) y1[i] += a[i], y2[i] += a[i];
    for (; i < n; i++) y1[i] += a[i], y2[i] += a[i];
}

/* ----------------------------------------------------------------------------
 * add */

/* The output overlaps none of the inputs (inputs may be one buffer: x + x). */
static bool add_fast(const KernelShape *ks, const void *const *in, const float *out, int64_t n)
{
    bool ok = k_fast_paths;
    for (int k = 0; k < ks->op->nin && ok; k++) ok = k_apart(out, n, in[k], n);
    return ok;
}

int k_add_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const int64_t n = kernel_operand_numel(ks, ks->op->nin);
    const float *x0 = in[0], *x1 = in[1];
    if (add_fast(ks, in, out, n)) {
        vec_add(out, x0, x1, n);
        for (int k = 2; k < ks->op->nin; k++) vec_acc(out, in[k], n);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) out[i] = x0[i] + x1[i];
    for (int k = 2; k < ks->op->nin; k++) {
        const float *xk = in[k];
        for (int64_t i = 0; i < n; i++) out[i] += xk[i];
    }
    return 0;
}

int k_add_bwd(const KernelShape *ks, const void *const *in, const float *out,
              const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out, (void)err;
    const int64_t n = kernel_operand_numel(ks, ks->op->nin);
    for (int k = 0; k < ks->op->nin; k++) {
        float *d = din[k];
        if (d && k_fast_paths && k_apart(d, n, dout, n))
            vec_acc(d, dout, n);
        else if (d)
            for (int64_t i = 0; i < n; i++) d[i] += dout[i];
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * bias: y = x + b broadcast over x's letters missing from b */

/* The fast layout: y has x's letters and b's letters end them ("bsh,h",
 * "bsh,sh", "bsnd,nd"), so x is rows of b's cols elements. */
static bool bias_rows(const KernelShape *ks, int64_t *rows, int64_t *cols)
{
    const Op *op = ks->op;
    const char *lx = op->in_letters[0], *lb = op->in_letters[1];
    size_t nx = strlen(lx), nb = strlen(lb);
    if (!k_fast_paths || strcmp(op->out_letters, lx) != 0 || nb == 0 || nb > nx ||
        strcmp(lx + nx - nb, lb) != 0)
        return false;
    *cols = k_numel(lb, ks->size);
    *rows = *cols ? k_numel(lx, ks->size) / *cols : 0;
    return true;
}

int k_bias_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const Op *op = ks->op;
    const float *x = in[0], *b = in[1];
    int64_t rows, cols;
    if (bias_rows(ks, &rows, &cols) && k_apart(out, rows * cols, x, rows * cols) &&
        k_apart(out, rows * cols, b, cols)) {
        for (int64_t r = 0; r < rows; r++) vec_add(out + r * cols, x + r * cols, b, cols);
        return 0;
    }
    int64_t sx[IR_LETTERS], sb[IR_LETTERS];
    k_strides(op->in_letters[0], ks->size, sx);
    k_strides(op->in_letters[1], ks->size, sb);
    KLoop lp;
    kloop_init(&lp, op->in_letters[0], ks->size, 2, (const int64_t *const[]){sx, sb});
    const int64_t n1 = lp.inner, b1 = lp.ist[1];
    do {
        const float *xi = x + lp.off[0], *bi = b + lp.off[1];
        float *yi = out + lp.off[0];
        if (b1 == 0) {
            const float bv = *bi;
            for (int64_t i = 0; i < n1; i++) yi[i] = xi[i] + bv;
        } else if (b1 == 1) {
            for (int64_t i = 0; i < n1; i++) yi[i] = xi[i] + bi[i];
        } else {
            for (int64_t i = 0; i < n1; i++) yi[i] = xi[i] + bi[i * b1];
        }
    } while (kloop_next(&lp));
    return 0;
}

/* dx (rows x cols), db (cols) and dy (rows x cols) share no byte. */
static bool bias_grads_apart(float *const *din, const float *dout, int64_t rows, int64_t cols)
{
    const int64_t nx = rows * cols;
    if (din[0] && !k_apart(din[0], nx, dout, nx)) return false;
    if (din[1] && !k_apart(din[1], cols, dout, nx)) return false;
    return !din[0] || !din[1] || k_apart(din[1], cols, din[0], nx);
}

int k_bias_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out, (void)err;
    const Op *op = ks->op;
    int64_t rows, cols;
    /* db sums dy over the rows in row order, as k_map does: the same floats */
    if (bias_rows(ks, &rows, &cols) && bias_grads_apart(din, dout, rows, cols)) {
        for (int64_t r = 0; r < rows; r++) {
            const float *d = dout + r * cols;
            if (din[0] && din[1])
                vec_acc2(din[0] + r * cols, din[1], d, cols);
            else if (din[0])
                vec_acc(din[0] + r * cols, d, cols);
            else if (din[1])
                vec_acc(din[1], d, cols);
        }
        return 0;
    }
    if (din[0]) {
        const int64_t n = kernel_operand_numel(ks, 0);
        float *d = din[0];
        for (int64_t i = 0; i < n; i++) d[i] += dout[i];
    }
    if (din[1])
        k_map(din[1], op->in_letters[1], dout, op->out_letters, ks->size, 1, true);
    return 0;
}

/* ----------------------------------------------------------------------------
 * gelu, tanh form: y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) */

#define GELU_K 0.7978845608028654f   /* sqrt(2/pi) */
#define GELU_C 0.044715f

/* With t = tanh(u), e = e^(-2u): s = 0.5 (1 + t) = 1 / (1 + e), and
 * 1 - t^2 = 4 s (1 - s) = 4 s (e s): no difference of near-equal numbers. */
static inline float gelu_fast(float v)
{
    float e = k_expf(-2.0f * GELU_K * (v + GELU_C * v * v * v));
    return v / (1.0f + e);
}

/* dy/dx = s + 0.5 x (1 - t^2) du = s + 2 x s (e s) du, multiplied in that
 * order: far below 0, where s underflows and e is e^88, x s is tiny first
 * and e s is 1, so no product overflows. */
static inline float gelu_grad_fast(float v)
{
    float e = k_expf(-2.0f * GELU_K * (v + GELU_C * v * v * v));
    float s = 1.0f / (1.0f + e), du = GELU_K * (1.0f + 3.0f * GELU_C * v * v);
    return s + 2.0f * v * s * (e * s) * du;
}

K_FAST void gelu_fwd_fast(float *restrict y, const float *restrict x, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) y[i] = gelu_fast(x[i]);
    for (; i < n; i++) y[i] = gelu_fast(x[i]);
}

K_FAST void gelu_bwd_fast(float *restrict d, const float *restrict x, const float *restrict dy,
                          int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) d[i] += dy[i] * gelu_grad_fast(x[i]);
    for (; i < n; i++) d[i] += dy[i] * gelu_grad_fast(x[i]);
}

int k_gelu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    if (k_fast_paths && k_apart(out, n, x, n)) {
        gelu_fwd_fast(out, x, n);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + tanhf(GELU_K * (v + GELU_C * v * v * v)));
    }
    return 0;
}

int k_gelu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)out, (void)err;
    if (!din[0]) return 0;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    float *d = din[0];
    if (k_fast_paths && k_apart(d, n, x, n) && k_apart(d, n, dout, n)) {
        gelu_bwd_fast(d, x, dout, n);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], t = tanhf(GELU_K * (v + GELU_C * v * v * v));
        float du = GELU_K * (1.0f + 3.0f * GELU_C * v * v);
        d[i] += dout[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * relu */

K_FAST void relu_fwd_fast(float *restrict y, const float *restrict x, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) y[i] = x[i] > 0 ? x[i] : 0;
    for (; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0;
}

K_FAST void relu_bwd_fast(float *restrict d, const float *restrict x, const float *restrict dy,
                          int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) {
        float g = dy[i];            /* read unconditionally: the select vectorises */
        d[i] += x[i] > 0 ? g : 0;
    }
    for (; i < n; i++) d[i] += x[i] > 0 ? dy[i] : 0;
}

int k_relu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    if (k_fast_paths && k_apart(out, n, x, n)) {
        relu_fwd_fast(out, x, n);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0;
    return 0;
}

int k_relu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)out, (void)err;
    if (!din[0]) return 0;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    float *d = din[0];
    if (k_fast_paths && k_apart(d, n, x, n) && k_apart(d, n, dout, n)) {
        relu_bwd_fast(d, x, dout, n);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) d[i] += x[i] > 0 ? dout[i] : 0;
    return 0;
}
