/*
 * k_elementwise.c — kernels that touch each element once: add (residuals,
 * any number of inputs), bias (the second input broadcast over the first's
 * letters, in any order: "bsh,h", "bsh,sh", "nchw,c"), gelu (the tanh form
 * of GPT-2), relu, concat (inputs laid end to end along one letter) and the
 * mean squared error loss.
 *
 * All of them are memory-bound; each is one pass with a unit-stride inner
 * loop. None but mse depends on how the op is split: every element is
 * computed from the elements at the same position (concat's concatenated
 * letters are never split); mse divides by the global element count.
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
#include <stdlib.h>
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

/* ----------------------------------------------------------------------------
 * concat: input k fills the output's range [o_k, o_k + a_k) along the
 * output's concatenated letter c, o_k the sum of the inputs' a before it.
 * Each input is one copy: a walk over its elements in the output's letter
 * order (its own letter a in the place of c), with its own strides and the
 * output's (c's stride standing for a), so the writes run along the output
 * and any letter order on either side is one walk. */

typedef struct {
    char par;                      /* the letter whose indices the threads share; 0: none */
    char rest[IR_MAX_DIMS + 1];    /* the walk's other letters, outermost first */
    int64_t sx[IR_LETTERS], sy[IR_LETTERS];
    int64_t base;                  /* input k's first element in the output */
} ConcatPart;

static void concat_part(const KernelShape *ks, int k, ConcatPart *cp)
{
    const Op *op = ks->op;
    int lk = op_concat_letter(op, k), lo = op_concat_letter(op, op->nin);
    k_strides(op->in_letters[k], ks->size, cp->sx);
    k_strides(op->out_letters, ks->size, cp->sy);
    int64_t before = 0;
    for (int j = 0; j < k; j++) before += ks->size[op_concat_letter(op, j)];
    cp->base = before * cp->sy[lo];
    cp->sy[lk] = cp->sy[lo];
    cp->sy[lo] = 0;
    /* the outermost letter of more than one index is shared out */
    cp->par = 0;
    int n = 0;
    for (const char *p = op->out_letters; *p; p++) {
        char l = *p - 'a' == lo ? (char)('a' + lk) : *p;
        if (!cp->par && ks->size[l - 'a'] > 1) cp->par = l;
        else cp->rest[n++] = l;
    }
    cp->rest[n] = 0;
}

/* y[base + walk] = x[walk] (forward), or dx[walk] += dy[base + walk]. */
static void concat_copy(const KernelShape *ks, const ConcatPart *cp, float *x, float *y, bool bwd)
{
    KLoop base;
    kloop_init(&base, cp->rest, ks->size, 2, (const int64_t *const[]){cp->sx, cp->sy});
    const int64_t n0 = cp->par ? ks->size[cp->par - 'a'] : 1;
    const int64_t px = cp->par ? cp->sx[cp->par - 'a'] : 0;
    const int64_t py = cp->par ? cp->sy[cp->par - 'a'] : 0;
    const int64_t each = k_numel(cp->rest, ks->size);
#pragma omp parallel for schedule(static) if (k_par(n0, each))
    for (int64_t i = 0; i < n0; i++) {
        KLoop lp = base;
        const int64_t n1 = lp.inner, x1 = lp.ist[0], y1 = lp.ist[1];
        do {
            float *xi = x + i * px + lp.off[0];
            float *yi = y + cp->base + i * py + lp.off[1];
            if (!bwd && x1 == 1 && y1 == 1)
                memcpy(yi, xi, (size_t)n1 * sizeof *yi);
            else if (!bwd)
                for (int64_t j = 0; j < n1; j++) yi[j * y1] = xi[j * x1];
            else
                for (int64_t j = 0; j < n1; j++) xi[j * x1] += yi[j * y1];
        } while (kloop_next(&lp));
    }
}

int k_concat_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    if (kernel_check_concat(ks, err)) return -1;
    for (int k = 0; k < ks->op->nin; k++) {
        ConcatPart cp;
        concat_part(ks, k, &cp);
        concat_copy(ks, &cp, (float *)in[k], out, false);
    }
    return 0;
}

/* Input by input, so one buffer given for two inputs (x concatenated with
 * itself) receives both slices in turn. */
int k_concat_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out;
    if (kernel_check_concat(ks, err)) return -1;
    for (int k = 0; k < ks->op->nin; k++) {
        if (!din[k]) continue;
        ConcatPart cp;
        concat_part(ks, k, &cp);
        concat_copy(ks, &cp, din[k], (float *)dout, true);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * mse "bk,bk->": loss = sum over the local elements of (p - t)^2 / N, N the
 * global element count (the product of every letter's global size), so the
 * partial losses of a split run add up to the mean, as cross_entropy's do.
 * The target t may hold its letters in another order than the prediction p.
 * Sums in double, over pieces of K_PIECE elements added in order: the same
 * loss for any thread count. */

static double mse_count(const KernelShape *ks)
{
    double n = 1;
    for (const char *p = ks->op->in_letters[0]; *p; p++) n *= (double)ks->total[*p - 'a'];
    return n;
}

/* p and t laid out alike: flat loops (the walk stays the tests' reference) */
static bool mse_flat(const KernelShape *ks)
{
    return k_fast_paths && strcmp(ks->op->in_letters[0], ks->op->in_letters[1]) == 0;
}

/* Otherwise a walk over p's letters: offsets of p (and dp) and of t (and dt). */
static void mse_walk(const KernelShape *ks, KLoop *lp)
{
    int64_t sp[IR_LETTERS], st[IR_LETTERS];
    k_strides(ks->op->in_letters[0], ks->size, sp);
    k_strides(ks->op->in_letters[1], ks->size, st);
    kloop_init(lp, ks->op->in_letters[0], ks->size, 2, (const int64_t *const[]){sp, st});
}

int k_mse_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    if (kernel_check_extents(ks, 0, err)) return -1;
    const float *p = in[0], *t = in[1];
    const int64_t n = k_numel(op->in_letters[0], ks->size);
    double loss = 0;
    if (mse_flat(ks)) {
        const int64_t pieces = k_pieces(n);
        double *part = malloc(sizeof *part * (size_t)(pieces ? pieces : 1));
        if (!part) return err_set(err, "op %s: out of memory for %lld partial sums", op->name,
                                  (long long)pieces);
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t q = 0; q < pieces; q++) {
            const float *pq = p + q * K_PIECE, *tq = t + q * K_PIECE;
            double s = 0;
            for (int64_t i = 0, len = k_piece_len(n, q); i < len; i++) {
                double d = (double)pq[i] - tq[i];
                s += d * d;
            }
            part[q] = s;
        }
        for (int64_t q = 0; q < pieces; q++) loss += part[q];
        free(part);
    } else {
        KLoop lp;
        mse_walk(ks, &lp);
        do {
            const float *pi = p + lp.off[0], *ti = t + lp.off[1];
            for (int64_t i = 0; i < lp.inner; i++) {
                double d = (double)pi[i * lp.ist[0]] - ti[i * lp.ist[1]];
                loss += d * d;
            }
        } while (kloop_next(&lp));
    }
    out[0] = (float)(loss / mse_count(ks));
    return 0;
}

/* dp += c (p - t), dt -= c (p - t), c = 2 dout / N. */
int k_mse_bwd(const KernelShape *ks, const void *const *in, const float *out,
              const float *dout, float *const *din, Err *err)
{
    (void)out;
    const Op *op = ks->op;
    if (kernel_check_extents(ks, 0, err)) return -1;
    if (!din[0] && !din[1]) return 0;
    const float *p = in[0], *t = in[1];
    float *dp = din[0], *dt = din[1];
    const float c = (float)(2.0 * dout[0] / mse_count(ks));
    const int64_t n = k_numel(op->in_letters[0], ks->size);
    if (mse_flat(ks)) {
        const int64_t pieces = k_pieces(n);
#pragma omp parallel for schedule(static) if (pieces > 1)
        for (int64_t q = 0; q < pieces; q++)
            for (int64_t i = q * K_PIECE, end = i + k_piece_len(n, q); i < end; i++) {
                float g = c * (p[i] - t[i]);
                if (dp) dp[i] += g;
                if (dt) dt[i] -= g;
            }
        return 0;
    }
    KLoop lp;
    mse_walk(ks, &lp);
    do {
        for (int64_t i = 0; i < lp.inner; i++) {
            int64_t a = lp.off[0] + i * lp.ist[0], b = lp.off[1] + i * lp.ist[1];
            float g = c * (p[a] - t[b]);
            if (dp) dp[a] += g;
            if (dt) dt[b] -= g;
        }
    } while (kloop_next(&lp));
    return 0;
}
