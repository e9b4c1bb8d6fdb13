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
#include <omp.h>
#include <string.h>

bool k_fast_paths = true;

int k_threads(void) { return omp_get_max_threads(); }
int k_thread(void) { return omp_get_thread_num(); }

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

K_FAST void vec_axpy(float *restrict y, const float *restrict x, float a, int64_t n)
{
    int64_t i = 0;
    for (const int64_t n8 = n & ~(int64_t)7; i < n8; i++) y[i] += a * x[i];
    for (; i < n; i++) y[i] += a * x[i];
}

/* ----------------------------------------------------------------------------
 * Flat buffers (the device table's zero, copy, axpy and fill on the CPU) */

void kernel_zero(void *p, size_t bytes)
{
    const size_t piece = K_PIECE * sizeof(float);
    const int64_t pieces = (int64_t)((bytes + piece - 1) / piece);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        size_t o = (size_t)k * piece, len = bytes - o < piece ? bytes - o : piece;
        memset((char *)p + o, 0, len);
    }
}

void kernel_copy(void *dst, const void *src, size_t bytes)
{
    const size_t piece = K_PIECE * sizeof(float);
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (bytes < 2 * piece || (d < s + bytes && s < d + bytes)) {  /* small, or overlapping */
        if (bytes && dst != src) memmove(dst, src, bytes);
        return;
    }
    const int64_t pieces = (int64_t)((bytes + piece - 1) / piece);
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < pieces; k++) {
        size_t o = (size_t)k * piece, len = bytes - o < piece ? bytes - o : piece;
        memcpy((char *)dst + o, (const char *)src + o, len);
    }
}

void kernel_axpy(float *y, const float *x, float a, int64_t n)
{
    if (!k_apart(y, n, x, n)) {     /* the same buffer, or overlapping: in order */
        for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
        return;
    }
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++)
        vec_axpy(y + k * K_PIECE, x + k * K_PIECE, a, k_piece_len(n, k));
}

void kernel_fill(float *x, float v, int64_t n)
{
    const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        float *p = x + k * K_PIECE;
        for (int64_t i = 0, len = k_piece_len(n, k); i < len; i++) p[i] = v;
    }
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
        const int64_t pieces = k_pieces(n);
        const int nin = ks->op->nin;
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t p = 0; p < pieces; p++) {
            const int64_t o = p * K_PIECE, len = k_piece_len(n, p);
            vec_add(out + o, x0 + o, x1 + o, len);
            for (int k = 2; k < nin; k++) vec_acc(out + o, (const float *)in[k] + o, len);
        }
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
            kernel_axpy(d, dout, 1.0f, n);
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
#pragma omp parallel for schedule(static) if (k_par(rows, cols))
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
    /* db sums dy over the rows in row order, as k_map does: the same floats.
     * In parallel, dx by rows and db by ranges of columns. */
    if (bias_rows(ks, &rows, &cols) && bias_grads_apart(din, dout, rows, cols)) {
        float *dx = din[0], *db = din[1];
        if (!k_par(rows, cols)) {
            for (int64_t r = 0; r < rows; r++) {
                const float *d = dout + r * cols;
                if (dx && db)
                    vec_acc2(dx + r * cols, db, d, cols);
                else if (dx)
                    vec_acc(dx + r * cols, d, cols);
                else if (db)
                    vec_acc(db, d, cols);
            }
            return 0;
        }
        if (dx) kernel_axpy(dx, dout, 1.0f, rows * cols);
        const int64_t pieces = db ? (cols + K_COLS - 1) / K_COLS : 0;
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < pieces; p++) {
            const int64_t c0 = p * K_COLS, len = cols - c0 < K_COLS ? cols - c0 : K_COLS;
            for (int64_t r = 0; r < rows; r++) vec_acc(db + c0, dout + r * cols + c0, len);
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
        const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t p = 0; p < pieces; p++)
            gelu_fwd_fast(out + p * K_PIECE, x + p * K_PIECE, k_piece_len(n, p));
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
        const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t p = 0; p < pieces; p++) {
            const int64_t o = p * K_PIECE;
            gelu_bwd_fast(d + o, x + o, dout + o, k_piece_len(n, p));
        }
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
        const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t p = 0; p < pieces; p++)
            relu_fwd_fast(out + p * K_PIECE, x + p * K_PIECE, k_piece_len(n, p));
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
        const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t p = 0; p < pieces; p++) {
            const int64_t o = p * K_PIECE;
            relu_bwd_fast(d + o, x + o, dout + o, k_piece_len(n, p));
        }
        return 0;
    }
    for (int64_t i = 0; i < n; i++) d[i] += x[i] > 0 ? dout[i] : 0;
    return 0;
}
