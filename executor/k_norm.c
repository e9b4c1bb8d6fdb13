/*
 * k_norm.c — CPU kernels of the ops that normalise or select over their
 * `reduce` letters: layernorm, batchnorm, softmax, cross_entropy and the
 * switch router (route). fp32 buffers, sums in double.
 *
 * Every kernel walks the same way: operand 0's letters split into *outer*
 * letters (not reduced; one row each) and *inner* letters (the `reduce` ones;
 * the elements of a row), both in operand 0's letter order. A Walk holds, per
 * operand, the offset of every outer and every inner index, so an element is
 * outer[k][i] + inner[k][j] whatever the letter order of operand k (labels
 * "sb" under logits "bsv", gamma over the reduce letters of layernorm or over
 * the kept letter of batchnorm).
 *
 * Fast rows: where operand 0's reduce letters are its last letters (layernorm
 * "bsh" over h, softmax "bnst" over t, cross_entropy "bsv" over v), a row is
 * contiguous and every operand is either laid out like operand 0, or is one
 * row shared by all (gamma, beta), or one element per row (labels). The
 * kernels then skip the index tables and run plain loops over contiguous
 * memory (see "Fast rows" below); any other layout takes the walk.
 *
 * Split reduce letters: only batchnorm (synchronised batch statistics) and
 * cross_entropy (vocabulary-parallel loss, as Megatron-LM) accept one, and
 * call ks->stats to all-reduce their small per-row statistics. Every rank of
 * the group makes the same calls in the same order, and checks that can fail
 * run before the first call, so one rank's error never leaves the others
 * waiting in a collective.
 *
 * Legend: i = outer (row) index, j = inner (reduced) index, N = elements a
 * row is normalised over (global when the reduce letter is split), xh = the
 * normalised input (x - mean) * rstd, rstd = 1 / sqrt(var + eps).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "executor/kernels_internal.h"

#define NORM_EPS 1e-5

/* ----------------------------------------------------------------------------
 * Walks and shape checks */

typedef struct {
    int64_t nouter, ninner;
    int nk;                                        /* operands walked */
    int64_t *outer[IR_MAX_INPUTS + 1];             /* [k][i] */
    int64_t *inner[IR_MAX_INPUTS + 1];             /* [k][j] */
    int64_t *block;                                /* the one allocation */
} Walk;

static const char *operand_letters(const Op *op, int k)
{
    return k < op->nin ? op->in_letters[k] : op->out_letters;
}

static int64_t letters_numel(const KernelShape *ks, const char *letters, uint32_t mask)
{
    int64_t n = 1;
    for (const char *p = letters; *p; p++)
        if (mask >> (*p - 'a') & 1) n *= ks->size[*p - 'a'];
    return n;
}

/* dst[i] for i in row-major order over the letters of `order` in `mask`:
 * the offset of that index inside an operand laid out as `letters` (letters
 * the operand lacks contribute nothing). */
static void walk_fill(const KernelShape *ks, const char *order, uint32_t mask,
                      const char *letters, int64_t n, int64_t *dst)
{
    int64_t stride[IR_LETTERS] = {0}, st = 1;
    for (int p = (int)strlen(letters) - 1; p >= 0; p--) {
        stride[letters[p] - 'a'] = st;
        st *= ks->size[letters[p] - 'a'];
    }
    int lt[IR_MAX_DIMS], nl = 0;
    for (const char *p = order; *p; p++)
        if (mask >> (*p - 'a') & 1) lt[nl++] = *p - 'a';
    int64_t idx[IR_MAX_DIMS] = {0}, cur = 0;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = cur;
        for (int d = nl - 1; d >= 0; d--) {
            int l = lt[d];
            cur += stride[l];
            if (++idx[d] < ks->size[l]) break;
            cur -= stride[l] * ks->size[l];
            idx[d] = 0;
        }
    }
}

/* Walk over operands 0..nk-1 (nk == nin + 1 includes the output). Operands
 * with the same letters in the same order (x, y and dx) share one table. */
static int walk_init(Walk *w, const KernelShape *ks, int nk, Err *err)
{
    const Op *op = ks->op;
    const char *in0 = op->in_letters[0];
    uint32_t m0 = 0;
    for (const char *p = in0; *p; p++) m0 |= 1u << (*p - 'a');
    memset(w, 0, sizeof *w);
    w->nk = nk;
    w->nouter = letters_numel(ks, in0, m0 & ~op->reduce_mask);
    w->ninner = letters_numel(ks, in0, op->reduce_mask);
    int same[IR_MAX_INPUTS + 1], nuniq = 0;
    for (int k = 0; k < nk; k++) {
        same[k] = k;
        for (int k2 = 0; k2 < k && same[k] == k; k2++)
            if (strcmp(operand_letters(op, k), operand_letters(op, k2)) == 0) same[k] = k2;
        nuniq += same[k] == k;
    }
    size_t per = (size_t)(w->nouter + w->ninner);
    w->block = malloc(sizeof *w->block * per * (size_t)nuniq + 1);
    if (!w->block)
        return err_set(err, "op %s: out of memory for %d index tables of %lld entries", op->name,
                       nuniq, (long long)per);
    for (int k = 0, u = 0; k < nk; k++) {
        if (same[k] != k) {
            w->outer[k] = w->outer[same[k]];
            w->inner[k] = w->inner[same[k]];
            continue;
        }
        w->outer[k] = w->block + per * (size_t)u++;
        w->inner[k] = w->outer[k] + w->nouter;
        walk_fill(ks, in0, m0 & ~op->reduce_mask, operand_letters(op, k), w->nouter, w->outer[k]);
        walk_fill(ks, in0, op->reduce_mask, operand_letters(op, k), w->ninner, w->inner[k]);
    }
    return 0;
}

static void walk_free(Walk *w) { free(w->block); }

/* ----------------------------------------------------------------------------
 * Fast rows (k_fast_paths). The loops over a row live in K_FAST functions
 * (see kernels_internal.h) so that gcc -O2 vectorises them. Reductions keep
 * 8 partial results (lanes), so vectorising them reorders nothing the
 * compiler must preserve, and unroll the lanes so that they stay in
 * registers; sums stay in double. */

/* Where operand k's elements of row i lie: ROW_ALL has operand 0's letters
 * (row i at i * n), ROW_SHARED only the reduce letters (one row for every i:
 * gamma, beta), ROW_ONE only the other letters (element i: labels). */
enum { ROW_ALL, ROW_SHARED, ROW_ONE };

typedef struct {
    int64_t rows, n;                 /* rows; elements per row (N) */
    int kind[IR_MAX_INPUTS + 1];     /* per operand */
} Rows;

/* Fills r for operands 0..nk-1 (nk == nin + 1 includes the output) when the
 * layout allows; false sends the kernel down the walk. */
static bool rows_init(Rows *r, const KernelShape *ks, int nk)
{
    const Op *op = ks->op;
    const char *in0 = op->in_letters[0];
    size_t len = strlen(in0), nred = 0;
    for (size_t p = 0; p < len; p++) nred += op->reduce_mask >> (in0[p] - 'a') & 1;
    if (!k_fast_paths || nred == 0) return false;
    size_t nkeep = len - nred;
    for (size_t p = nkeep; p < len; p++)
        if (!(op->reduce_mask >> (in0[p] - 'a') & 1)) return false;
    for (int k = 0; k < nk; k++) {
        const char *L = operand_letters(op, k);
        if (strcmp(L, in0) == 0)
            r->kind[k] = ROW_ALL;
        else if (strcmp(L, in0 + nkeep) == 0)
            r->kind[k] = ROW_SHARED;
        else if (strlen(L) == nkeep && strncmp(L, in0, nkeep) == 0)
            r->kind[k] = ROW_ONE;
        else
            return false;
    }
    uint32_t m0 = 0;
    for (const char *p = in0; *p; p++) m0 |= 1u << (*p - 'a');
    r->rows = letters_numel(ks, in0, m0 & ~op->reduce_mask);
    r->n = letters_numel(ks, in0, op->reduce_mask);
    return true;
}

/* Floats of operand k under r. */
static int64_t rows_numel(const Rows *r, int k)
{
    return r->kind[k] == ROW_ALL ? r->rows * r->n : r->kind[k] == ROW_SHARED ? r->n : r->rows;
}

/* The max of x[j] * scale; NaN never wins (as `z > m` in the walks). */
K_FAST float row_max(const float *restrict x, int64_t n, float scale)
{
    float lane[8], m = -INFINITY;
    for (int k = 0; k < 8; k++) lane[k] = -INFINITY;
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j += 8)
        for (int k = 0; k < 8; k++) {     /* in registers without the pragma */
            float z = x[j + k] * scale;
            lane[k] = z > lane[k] ? z : lane[k];
        }
    for (int k = 0; k < 8; k++) m = lane[k] > m ? lane[k] : m;
    for (; j < n; j++) {
        float z = x[j] * scale;
        m = z > m ? z : m;
    }
    return m;
}

K_FAST double row_sum(const float *restrict x, int64_t n)
{
    double lane[8] = {0}, s = 0;
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j += 8)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) lane[k] += x[j + k];
    for (int k = 0; k < 8; k++) s += lane[k];
    for (; j < n; j++) s += x[j];
    return s;
}

/* sum of (x[j] - mean)^2 */
K_FAST double row_sqdev(const float *restrict x, int64_t n, double mean)
{
    double lane[8] = {0}, s = 0;
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j += 8)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            double d = x[j + k] - mean;
            lane[k] += d * d;
        }
    for (int k = 0; k < 8; k++) s += lane[k];
    for (; j < n; j++) {
        double d = x[j] - mean;
        s += d * d;
    }
    return s;
}

/* sum of a[j] * b[j], each product exact in double */
K_FAST double row_dot(const float *restrict a, const float *restrict b, int64_t n)
{
    double lane[8] = {0}, s = 0;
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j += 8)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) lane[k] += (double)a[j + k] * b[j + k];
    for (int k = 0; k < 8; k++) s += lane[k];
    for (; j < n; j++) s += (double)a[j] * b[j];
    return s;
}

/* y[j] = e^(x[j] * scale - m) */
K_FAST void row_exp(float *restrict y, const float *restrict x, int64_t n, float scale, float m)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) y[j] = k_expf(x[j] * scale - m);
    for (; j < n; j++) y[j] = k_expf(x[j] * scale - m);
}

K_FAST void row_scale(float *restrict y, int64_t n, float a)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) y[j] *= a;
    for (; j < n; j++) y[j] *= a;
}

/* y = a * b */
K_FAST void row_mul(float *restrict y, const float *restrict a, const float *restrict b, int64_t n)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) y[j] = a[j] * b[j];
    for (; j < n; j++) y[j] = a[j] * b[j];
}

/* y += a */
K_FAST void row_acc(float *restrict y, const float *restrict a, int64_t n)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) y[j] += a[j];
    for (; j < n; j++) y[j] += a[j];
}

static bool stats_sum_on(const KernelShape *ks)
{
    return ks->stats && ks->stats->sum;
}

static int stats_sum(const KernelShape *ks, float *buf, int64_t n, Err *err)
{
    if (ks->stats->sum(ks->stats->ctx, buf, n, err))
        return err_prefix(err, "op %s: all-reduce (sum) of %lld statistics", ks->op->name,
                          (long long)n);
    return 0;
}

static int stats_max(const KernelShape *ks, float *buf, int64_t n, Err *err)
{
    if (ks->stats->max(ks->stats->ctx, buf, n, err))
        return err_prefix(err, "op %s: all-reduce (max) of %lld statistics", ks->op->name,
                          (long long)n);
    return 0;
}

/* ----------------------------------------------------------------------------
 * layernorm and batchnorm: one body. Both normalise each outer row over its
 * inner (reduce) elements; they differ in where gamma and beta live (the
 * reduce letters for layernorm, the kept letter c for batchnorm), which the
 * walk's offsets absorb, and in that batchnorm's reduce letters (n, and h, w
 * under spatial splits) may be split: with ks->stats the per-channel sum and
 * sum of squares are all-reduced, and N counts the global elements. Without
 * stats a split batchnorm normalises by its local statistics (per-replica
 * batch norm). */

typedef struct {
    bool sync;          /* statistics all-reduced over the split reduce letters */
    double count;       /* N */
} NormMode;

static int norm_mode(const KernelShape *ks, NormMode *nm, Err *err)
{
    const Op *op = ks->op;
    bool bn = op->kind == OP_BATCHNORM;
    if (kernel_check_extents(ks, bn ? 0 : op->reduce_mask, err)) return -1;
    nm->sync = bn && stats_sum_on(ks);
    nm->count = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (op->reduce_mask >> (*p - 'a') & 1)
            nm->count *= (double)(nm->sync ? ks->total[*p - 'a'] : ks->size[*p - 'a']);
    return 0;
}

/* mean[i], rstd[i] of every row. Unsynchronised: two passes over the local
 * row. Synchronised: local sum and sum of squares (in double, sent as fp32),
 * one all-reduce of 2 * rows floats, then var = E[x^2] - E[x]^2. */
static int norm_stats(const KernelShape *ks, const Walk *w, const NormMode *nm, const float *x,
                      double *mean, double *rstd, Err *err)
{
    const bool par = k_par(w->nouter, w->ninner);
    if (!nm->sync) {
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < w->nouter; i++) {
            const float *xr = x + w->outer[0][i];
            double s = 0, ss = 0;
            for (int64_t j = 0; j < w->ninner; j++) s += xr[w->inner[0][j]];
            double m = w->ninner ? s / nm->count : 0;
            for (int64_t j = 0; j < w->ninner; j++) {
                double d = xr[w->inner[0][j]] - m;
                ss += d * d;
            }
            mean[i] = m;
            rstd[i] = 1 / sqrt((w->ninner ? ss / nm->count : 0) + NORM_EPS);
        }
        return 0;
    }
    float *buf = malloc(sizeof *buf * (size_t)(2 * w->nouter + 1));
    if (!buf) return err_set(err, "op %s: out of memory for statistics", ks->op->name);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < w->nouter; i++) {
        const float *xr = x + w->outer[0][i];
        double s = 0, ss = 0;
        for (int64_t j = 0; j < w->ninner; j++) {
            double v = xr[w->inner[0][j]];
            s += v;
            ss += v * v;
        }
        buf[i] = (float)s;
        buf[w->nouter + i] = (float)ss;
    }
    if (stats_sum(ks, buf, 2 * w->nouter, err)) {
        free(buf);
        return -1;
    }
    for (int64_t i = 0; i < w->nouter; i++) {
        double m = buf[i] / nm->count, var = buf[w->nouter + i] / nm->count - m * m;
        mean[i] = m;
        rstd[i] = 1 / sqrt((var > 0 ? var : 0) + NORM_EPS);
    }
    free(buf);
    return 0;
}

static int norm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    NormMode nm;
    if (norm_mode(ks, &nm, err)) return -1;
    Walk w;
    if (walk_init(&w, ks, op->nin + 1, err)) return -1;
    const float *x = in[0];
    const float *g = op->nin > 1 ? in[1] : NULL, *b = op->nin > 2 ? in[2] : NULL;
    double *mean = malloc(sizeof *mean * (size_t)(2 * w.nouter + 1));
    if (!mean) {
        walk_free(&w);
        return err_set(err, "op %s: out of memory for statistics", op->name);
    }
    double *rstd = mean + w.nouter;
    int rc = norm_stats(ks, &w, &nm, x, mean, rstd, err);
    const int64_t rows = rc ? 0 : w.nouter;
#pragma omp parallel for schedule(static) if (k_par(rows, w.ninner))
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < w.ninner; j++) {
            double y = (x[w.outer[0][i] + w.inner[0][j]] - mean[i]) * rstd[i];
            if (g) y *= g[w.outer[1][i] + w.inner[1][j]];
            if (b) y += b[w.outer[2][i] + w.inner[2][j]];
            out[w.outer[op->nin][i] + w.inner[op->nin][j]] = (float)y;
        }
    }
    free(mean);
    walk_free(&w);
    return rc;
}

/* dx = gamma * rstd * (dy - sum(dy)/N - xh * sum(dy * xh)/N) for batchnorm
 * (gamma constant along a row); layernorm's gamma varies along the row, so
 * there the sums run over dxh = dy * gamma instead. Synchronised batchnorm
 * all-reduces (sum x, sum x^2, sum dy, sum dy*x) per channel in one call and
 * gets sum(dy * xh) = (sum(dy*x) - mean * sum(dy)) * rstd. dgamma, dbeta
 * take the local elements only: over a split batch they are partial sums,
 * resolved as every weight gradient is (gradient synchronisation). */
static int norm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
    (void)out;
    const Op *op = ks->op;
    NormMode nm;
    if (norm_mode(ks, &nm, err)) return -1;
    Walk w;
    if (walk_init(&w, ks, op->nin + 1, err)) return -1;
    const float *x = in[0];
    const float *g = op->nin > 1 ? in[1] : NULL;
    float *dx = din[0], *dg = op->nin > 1 ? din[1] : NULL, *db = op->nin > 2 ? din[2] : NULL;
    const int64_t *xo = w.outer[0], *xi = w.inner[0], *yo = w.outer[op->nin], *yi = w.inner[op->nin];
    int rc = 0;
    double *st = malloc(sizeof *st * (size_t)(4 * w.nouter + 1));
    float *buf = nm.sync ? malloc(sizeof *buf * (size_t)(4 * w.nouter + 1)) : NULL;
    if (!st || (nm.sync && !buf)) {
        rc = err_set(err, "op %s: out of memory for statistics", op->name);
        goto done;
    }
    /* st: mean, rstd, sum(dxh), sum(dxh * xh) per row */
    double *mean = st, *rstd = st + w.nouter, *sdy = st + 2 * w.nouter, *sdyx = st + 3 * w.nouter;
    /* rows in parallel; layernorm's walk adds every row into one dgamma, so
     * its last loop stays on one thread */
    const bool par = k_par(w.nouter, w.ninner);
    if (nm.sync) {
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < w.nouter; i++) {
            double s = 0, ss = 0, sd = 0, sdx = 0;
            for (int64_t j = 0; j < w.ninner; j++) {
                double v = x[xo[i] + xi[j]], d = dout[yo[i] + yi[j]];
                s += v;
                ss += v * v;
                sd += d;
                sdx += d * v;
            }
            buf[i] = (float)s;
            buf[w.nouter + i] = (float)ss;
            buf[2 * w.nouter + i] = (float)sd;
            buf[3 * w.nouter + i] = (float)sdx;
        }
        if ((rc = stats_sum(ks, buf, 4 * w.nouter, err))) goto done;
        for (int64_t i = 0; i < w.nouter; i++) {
            double m = buf[i] / nm.count, var = buf[w.nouter + i] / nm.count - m * m;
            mean[i] = m;
            rstd[i] = 1 / sqrt((var > 0 ? var : 0) + NORM_EPS);
            sdy[i] = buf[2 * w.nouter + i];
            sdyx[i] = (buf[3 * w.nouter + i] - m * sdy[i]) * rstd[i];
        }
        /* batchnorm's gamma is constant along the row: scale the sums by it */
        for (int64_t i = 0; i < w.nouter && g; i++) {
            double gi = g[w.outer[1][i]];
            sdy[i] *= gi;
            sdyx[i] *= gi;
        }
    } else {
        if ((rc = norm_stats(ks, &w, &nm, x, mean, rstd, err))) goto done;
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < w.nouter; i++) {
            double sd = 0, sdx = 0;
            for (int64_t j = 0; j < w.ninner; j++) {
                double d = dout[yo[i] + yi[j]];
                if (g) d *= g[w.outer[1][i] + w.inner[1][j]];
                sd += d;
                sdx += d * (x[xo[i] + xi[j]] - mean[i]) * rstd[i];
            }
            sdy[i] = sd;
            sdyx[i] = sdx;
        }
    }
#pragma omp parallel for schedule(static) if (par && op->kind == OP_BATCHNORM)
    for (int64_t i = 0; i < w.nouter; i++) {
        double dgi = 0, dbi = 0;  /* batchnorm: one gamma per row */
        for (int64_t j = 0; j < w.ninner; j++) {
            double d = dout[yo[i] + yi[j]], xh = (x[xo[i] + xi[j]] - mean[i]) * rstd[i];
            double gj = g ? g[w.outer[1][i] + w.inner[1][j]] : 1;
            if (dx)
                dx[xo[i] + xi[j]] +=
                    (float)(rstd[i] * (d * gj - sdy[i] / nm.count - xh * sdyx[i] / nm.count));
            if (op->kind == OP_LAYERNORM) {
                if (dg) dg[w.outer[1][i] + w.inner[1][j]] += (float)(d * xh);
                if (db) db[w.outer[2][i] + w.inner[2][j]] += (float)d;
            } else {
                dgi += d * xh;
                dbi += d;
            }
        }
        if (op->kind == OP_BATCHNORM) {
            if (dg) dg[w.outer[1][i]] += (float)dgi;
            if (db) db[w.outer[2][i]] += (float)dbi;
        }
    }
done:
    free(buf);
    free(st);
    walk_free(&w);
    return rc;
}

/* Layernorm over contiguous rows, gamma and beta one row each. Statistics
 * as norm_stats (two passes, double); the rest in float, with x - mean
 * taken as (x - hi) - lo, mean = hi + lo in two floats, so that a mean far
 * from zero loses nothing to cancellation. */

typedef struct {
    float hi, lo, rstd;
} LnRow;

static LnRow ln_row(const float *restrict x, int64_t n)
{
    double mean = n ? row_sum(x, n) / (double)n : 0;
    double var = n ? row_sqdev(x, n, mean) / (double)n : 0;
    LnRow r;
    r.hi = (float)mean;
    r.lo = (float)(mean - r.hi);
    r.rstd = (float)(1 / sqrt(var + NORM_EPS));
    return r;
}

/* xh[j] = (x[j] - mean) * rstd */
K_FAST void ln_xhat(float *restrict xh, const float *restrict x, int64_t n, LnRow r)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) xh[j] = ((x[j] - r.hi) - r.lo) * r.rstd;
    for (; j < n; j++) xh[j] = ((x[j] - r.hi) - r.lo) * r.rstd;
}

/* y[j] = xh[j] * g[j] + b[j], xh computed on the fly */
K_FAST void ln_out(float *restrict y, const float *restrict x, const float *restrict g,
                   const float *restrict b, int64_t n, LnRow r)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++)
        y[j] = ((x[j] - r.hi) - r.lo) * r.rstd * g[j] + b[j];
    for (; j < n; j++) y[j] = ((x[j] - r.hi) - r.lo) * r.rstd * g[j] + b[j];
}

/* dx[j] += rstd (dg[j] - a - xh[j] c) */
K_FAST void ln_dx(float *restrict dx, const float *restrict dg, const float *restrict xh, int64_t n,
                  float rstd, float a, float c)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) dx[j] += rstd * (dg[j] - a - xh[j] * c);
    for (; j < n; j++) dx[j] += rstd * (dg[j] - a - xh[j] * c);
}

/* gamma and (b not NULL) beta, or rows of ones and zeros in their place
 * (the products and sums with them are exact). *unit is the scratch to
 * free. */
static int ln_params(const Rows *r, const void *const *in, int nin, const float **g,
                     const float **b, float **unit, const char *name, Err *err)
{
    *g = nin > 1 ? in[1] : NULL;
    if (b) *b = nin > 2 ? in[2] : NULL;
    *unit = NULL;
    if (*g && (!b || *b)) return 0;
    if (!(*unit = k_scratch(2 * r->n, name, err))) return -1;
    for (int64_t j = 0; j < r->n; j++) (*unit)[j] = 1, (*unit)[r->n + j] = 0;
    if (!*g) *g = *unit;
    if (b && !*b) *b = *unit + r->n;
    return 0;
}

static int ln_fwd_rows(const KernelShape *ks, const Rows *r, const void *const *in, float *out,
                       Err *err)
{
    const float *x = in[0], *g, *b;
    float *unit;
    if (ln_params(r, in, ks->op->nin, &g, &b, &unit, ks->op->name, err)) return -1;
    const int64_t n = r->n;
#pragma omp parallel for schedule(static) if (k_par(r->rows, n))
    for (int64_t i = 0; i < r->rows; i++)
        ln_out(out + i * n, x + i * n, g, b, n, ln_row(x + i * n, n));
    free(unit);
    return 0;
}

/* dgamma[j] += dy[j] xh[j], xh computed as ln_xhat does (the same floats) */
K_FAST void ln_dgamma(float *restrict dgam, const float *restrict dy, const float *restrict x,
                      int64_t n, LnRow r)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++)
        dgam[j] += dy[j] * (((x[j] - r.hi) - r.lo) * r.rstd);
    for (; j < n; j++) dgam[j] += dy[j] * (((x[j] - r.hi) - r.lo) * r.rstd);
}

/* Per row, with dg = dy * gamma: dx += rstd (dg - sum(dg)/N - xh sum(dg xh)/N),
 * dgamma += dy xh, dbeta += dy, as norm_bwd. dx in parallel by rows, each
 * thread with its own xh and dg rows; dgamma and dbeta by ranges of columns,
 * adding the rows in order, from each row's statistics kept in `st`. */
static int ln_bwd_rows(const KernelShape *ks, const Rows *r, const void *const *in,
                       const float *dout, float *const *din, Err *err)
{
    const Op *op = ks->op;
    const float *x = in[0], *g;
    float *unit, *dx = din[0], *dgam = op->nin > 1 ? din[1] : NULL;
    float *dbet = op->nin > 2 ? din[2] : NULL;
    if (ln_params(r, in, op->nin, &g, NULL, &unit, op->name, err)) return -1;
    const int64_t n = r->n, rows = r->rows;
    const int nt = k_threads();
    float *tmp = k_scratch(2 * n * nt + (int64_t)(sizeof(LnRow) / sizeof(float)) * rows,
                           op->name, err);
    if (!tmp) {
        free(unit);
        return -1;
    }
    LnRow *st = (LnRow *)(tmp + 2 * n * nt);
#pragma omp parallel for schedule(static) if (k_par(rows, n))
    for (int64_t i = 0; i < rows; i++) {
        const float *xr = x + i * n, *dyr = dout + i * n;
        LnRow lr = st[i] = ln_row(xr, n);
        if (dx) {
            float *xh = tmp + 2 * n * k_thread(), *dg = xh + n;
            ln_xhat(xh, xr, n, lr);
            row_mul(dg, dyr, g, n);
            float a = (float)(row_sum(dg, n) / (double)n);
            float c = (float)(row_dot(dg, xh, n) / (double)n);
            ln_dx(dx + i * n, dg, xh, n, lr.rstd, a, c);
        }
    }
    const int64_t pieces = dgam || dbet ? (n + K_COLS - 1) / K_COLS : 0;
#pragma omp parallel for schedule(static) if (k_par(pieces, K_COLS * rows))
    for (int64_t p = 0; p < pieces; p++) {
        const int64_t c0 = p * K_COLS, len = n - c0 < K_COLS ? n - c0 : K_COLS;
        for (int64_t i = 0; i < rows; i++) {
            if (dgam) ln_dgamma(dgam + c0, dout + i * n + c0, x + i * n + c0, len, st[i]);
            if (dbet) row_acc(dbet + c0, dout + i * n + c0, len);
        }
    }
    free(tmp);
    free(unit);
    return 0;
}

/* The fast layout: x and y rows, gamma and beta one row each, and the
 * written buffers w[] overlap none of the others (restrict in the loops). */
static bool ln_rows(const Rows *r, int nin, const void *const *in, const float *dout,
                    float *const *w, int nw)
{
    if (r->kind[0] != ROW_ALL || r->kind[nin] != ROW_ALL) return false;
    for (int k = 1; k < nin; k++)    /* reduce letters only: a row of all when rows == 1 */
        if (r->kind[k] != ROW_SHARED && !(r->kind[k] == ROW_ALL && r->rows == 1)) return false;
    for (int a = 0; a < nw; a++) {
        if (!w[a]) continue;
        int64_t na = rows_numel(r, a < nin ? a : nin);
        for (int k = 0; k < nin; k++)
            if (!k_apart(w[a], na, in[k], rows_numel(r, k))) return false;
        if (dout && !k_apart(w[a], na, dout, rows_numel(r, nin))) return false;
        for (int c = 0; c < a; c++)
            if (w[c] && !k_apart(w[a], na, w[c], rows_numel(r, c < nin ? c : nin))) return false;
    }
    return true;
}

int k_layernorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    Rows r;
    if (rows_init(&r, ks, op->nin + 1)) {
        if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
        float *w[IR_MAX_INPUTS + 1] = {0};
        w[op->nin] = out;
        if (ln_rows(&r, op->nin, in, NULL, w, op->nin + 1))
            return ln_fwd_rows(ks, &r, in, out, err);
    }
    return norm_fwd(ks, in, out, err);
}

int k_layernorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
    const Op *op = ks->op;
    Rows r;
    if (rows_init(&r, ks, op->nin + 1)) {
        if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
        if (ln_rows(&r, op->nin, in, dout, din, op->nin))
            return ln_bwd_rows(ks, &r, in, dout, din, err);
    }
    return norm_bwd(ks, in, out, dout, din, err);
}

int k_batchnorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    return norm_fwd(ks, in, out, err);
}

int k_batchnorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
    return norm_bwd(ks, in, out, dout, din, err);
}

/* ----------------------------------------------------------------------------
 * softmax over the reduce letter t of scale * x. Causal: t is the last letter
 * and s the one before it (the graph checks both); element (s, t) is masked
 * where t's global position exceeds s's, so a shard split along s (sequence
 * parallelism) masks exactly the rows the whole tensor would. A row with
 * nothing left to weigh (every element masked, or every input -inf) is all
 * zero rather than NaN. */

/* Unmasked prefix of row i: elements j < limit. */
static int64_t softmax_limit(const KernelShape *ks, int64_t ninner, int64_t i)
{
    int s, t;
    if (op_causal_letters(ks->op, &s, &t)) return ninner;
    /* s is the last outer letter: its local index cycles fastest in i */
    int64_t sg = ks->off[s] + (ks->size[s] ? i % ks->size[s] : 0);
    int64_t lim = sg - ks->off[t] + 1;
    return lim < 0 ? 0 : lim > ninner ? ninner : lim;
}

/* The fast layout: y laid out as x, rows of N contiguous elements, and no
 * overlap between the buffers written and read. */
static bool softmax_rows(Rows *r, const KernelShape *ks, const float *w, const float *r1,
                         const float *r2)
{
    if (!rows_init(r, ks, 2) || r->kind[0] != ROW_ALL || r->kind[1] != ROW_ALL) return false;
    int64_t n = r->rows * r->n;
    return k_apart(w, n, r1, n) && (!r2 || k_apart(w, n, r2, n));
}

static void softmax_fwd_rows(const KernelShape *ks, const Rows *r, const float *x, float *out)
{
    const float scale = (float)ks->op->scale;
    const int64_t n = r->n;
#pragma omp parallel for schedule(static) if (k_par(r->rows, n))
    for (int64_t i = 0; i < r->rows; i++) {
        const float *xr = x + i * n;
        float *yr = out + i * n;
        int64_t lim = softmax_limit(ks, n, i);
        float m = row_max(xr, lim, scale);
        if (!(m > -INFINITY)) lim = 0;  /* inputs all -inf (or NaN): an all-zero row */
        row_exp(yr, xr, lim, scale, m);
        row_scale(yr, lim, (float)(1 / row_sum(yr, lim)));
        memset(yr + lim, 0, sizeof *yr * (size_t)(n - lim));
    }
}

/* dx[j] += scale y[j] (dy[j] - dot) */
K_FAST void softmax_dx(float *restrict dx, const float *restrict y, const float *restrict dy,
                       int64_t n, float scale, float dot)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) dx[j] += scale * y[j] * (dy[j] - dot);
    for (; j < n; j++) dx[j] += scale * y[j] * (dy[j] - dot);
}

int k_softmax_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
    Rows r;
    if (softmax_rows(&r, ks, out, in[0], NULL)) {
        softmax_fwd_rows(ks, &r, in[0], out);
        return 0;
    }
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    const float *x = in[0];
    float scale = (float)op->scale;
    for (int64_t i = 0; i < w.nouter; i++) {
        const float *xr = x + w.outer[0][i];
        float *yr = out + w.outer[1][i];
        int64_t lim = softmax_limit(ks, w.ninner, i);
        float m = -INFINITY;
        for (int64_t j = 0; j < lim; j++) {
            float z = xr[w.inner[0][j]] * scale;
            if (z > m) m = z;
        }
        if (!(m > -INFINITY)) lim = 0;  /* inputs all -inf (or NaN): an all-zero row */
        double sum = 0;
        for (int64_t j = 0; j < lim; j++) {
            float e = expf(xr[w.inner[0][j]] * scale - m);
            yr[w.inner[1][j]] = e;
            sum += e;
        }
        float inv = (float)(1 / sum);
        for (int64_t j = 0; j < lim; j++) yr[w.inner[1][j]] *= inv;
        for (int64_t j = lim; j < w.ninner; j++) yr[w.inner[1][j]] = 0;
    }
    walk_free(&w);
    return 0;
}

/* dx = scale * y * (dy - sum(dy * y)), from the forward output y. */
int k_softmax_bwd(const KernelShape *ks, const void *const *in, const float *out,
                  const float *dout, float *const *din, Err *err)
{
    (void)in;
    const Op *op = ks->op;
    if (!din[0]) return 0;
    if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
    Rows r;
    if (softmax_rows(&r, ks, din[0], out, dout)) {
        const int64_t n = r.n;
#pragma omp parallel for schedule(static) if (k_par(r.rows, n))
        for (int64_t i = 0; i < r.rows; i++) {
            const float *yr = out + i * n, *dyr = dout + i * n;
            softmax_dx(din[0] + i * n, yr, dyr, n, (float)op->scale, (float)row_dot(yr, dyr, n));
        }
        return 0;
    }
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    for (int64_t i = 0; i < w.nouter; i++) {
        const float *yr = out + w.outer[1][i], *dyr = dout + w.outer[1][i];
        float *dxr = din[0] + w.outer[0][i];
        double dot = 0;
        for (int64_t j = 0; j < w.ninner; j++) dot += (double)yr[w.inner[1][j]] * dyr[w.inner[1][j]];
        for (int64_t j = 0; j < w.ninner; j++) {
            double y = yr[w.inner[1][j]];
            dxr[w.inner[0][j]] += (float)(op->scale * y * (dyr[w.inner[1][j]] - dot));
        }
    }
    walk_free(&w);
    return 0;
}

/* ----------------------------------------------------------------------------
 * cross_entropy "bsv,bs->": loss = sum over local tokens of
 * (lse - x[label]) / T, T the global token count (product of the global sizes
 * of every letter but v), so the partial losses of a batch- or sequence-split
 * run add up to the mean. Vocabulary-parallel (v split, ks->stats set): each
 * rank holds the logits [off[v], off[v] + size[v]); the row maxima are
 * all-reduced (max), then the sums of exp(x - max), then the target logits
 * (the one rank holding the label contributes it, the others 0) — the three
 * small all-reduces of Megatron-LM's loss, after which every rank of the
 * group holds the same loss. The backward repeats the first two (the kernel
 * keeps no state between phases). */

typedef struct {
    int v;                  /* class letter */
    bool split;             /* vocabulary-parallel */
    double tokens;          /* T */
} CeMode;

/* lab_off: the offset of row i's label (NULL: the fast rows' i). */
static int ce_prepare(const KernelShape *ks, int64_t rows, const int64_t *lab_off,
                      const int32_t *lab, CeMode *cm, Err *err)
{
    const Op *op = ks->op;
    cm->split = ks->stats && ks->stats->sum && ks->stats->max;
    if (kernel_check_extents(ks, cm->split ? 0 : op->reduce_mask, err)) return -1;
    cm->v = __builtin_ctz(op->reduce_mask);
    cm->tokens = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!(op->reduce_mask >> (*p - 'a') & 1)) cm->tokens *= (double)ks->total[*p - 'a'];
    /* before any collective: a bad label fails every rank of the group alike */
    for (int64_t i = 0; i < rows; i++) {
        int32_t y = lab[lab_off ? lab_off[i] : i];
        if (y < 0 || y >= ks->total[cm->v])
            return err_set(err, "op %s: label %d at local token %lld is outside the %lld "
                           "classes", op->name, y, (long long)i, (long long)ks->total[cm->v]);
    }
    return 0;
}

/* m[i] = max of row i, s[i] = sum of exp(x - m[i]), both global when split. */
static int ce_lse(const KernelShape *ks, const Walk *w, const CeMode *cm, const float *x,
                  float *m, float *s, Err *err)
{
    for (int64_t i = 0; i < w->nouter; i++) {
        const float *xr = x + w->outer[0][i];
        float mx = -INFINITY;
        for (int64_t j = 0; j < w->ninner; j++)
            if (xr[w->inner[0][j]] > mx) mx = xr[w->inner[0][j]];
        m[i] = mx;
    }
    if (cm->split && stats_max(ks, m, w->nouter, err)) return -1;
    for (int64_t i = 0; i < w->nouter; i++) {
        const float *xr = x + w->outer[0][i];
        double sum = 0;
        for (int64_t j = 0; j < w->ninner; j++) sum += expf(xr[w->inner[0][j]] - m[i]);
        s[i] = (float)sum;
    }
    if (cm->split && stats_sum(ks, s, w->nouter, err)) return -1;
    return 0;
}

/* Fast rows: logits rows of N contiguous classes, one label per row. The
 * same statistics and collectives as ce_lse, in the same order. With the
 * vocabulary whole (no collective between the max and the sum) each row is
 * done while it sits in cache: its max, then its exps into a scratch row
 * `e`, then their sum (and in the backward dx from those same exps). */
static bool ce_rows(Rows *r, const KernelShape *ks)
{
    return rows_init(r, ks, 2) && r->kind[0] == ROW_ALL && r->kind[1] == ROW_ONE;
}

/* m, s as ce_lse; e is scratch for one row of N per thread (k_threads). */
static int ce_lse_rows(const KernelShape *ks, const Rows *r, const CeMode *cm, const float *x,
                       float *m, float *s, float *e, Err *err)
{
    const int64_t n = r->n;
    const bool par = k_par(r->rows, n);
    if (!cm->split) {
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < r->rows; i++) {
            float *ei = e + n * k_thread();
            m[i] = row_max(x + i * n, n, 1.0f);
            row_exp(ei, x + i * n, n, 1.0f, m[i]);
            s[i] = (float)row_sum(ei, n);
        }
        return 0;
    }
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < r->rows; i++) m[i] = row_max(x + i * n, n, 1.0f);
    if (stats_max(ks, m, r->rows, err)) return -1;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < r->rows; i++) {
        float *ei = e + n * k_thread();
        row_exp(ei, x + i * n, n, 1.0f, m[i]);
        s[i] = (float)row_sum(ei, n);
    }
    return stats_sum(ks, s, r->rows, err);
}

static int ce_fwd_rows(const KernelShape *ks, const Rows *r, const float *x, const int32_t *lab,
                       float *out, Err *err)
{
    CeMode cm;
    if (ce_prepare(ks, r->rows, NULL, lab, &cm, err)) return -1;
    const int64_t n = r->n;
    float *buf = k_scratch(3 * r->rows + n * k_threads(), ks->op->name, err);
    if (!buf) return -1;
    float *m = buf, *s = buf + r->rows, *tgt = buf + 2 * r->rows, *e = buf + 3 * r->rows;
    int rc = ce_lse_rows(ks, r, &cm, x, m, s, e, err);
    for (int64_t i = 0; i < r->rows && !rc; i++) {
        int64_t y = (int64_t)lab[i] - ks->off[cm.v];
        tgt[i] = y >= 0 && y < n ? x[i * n + y] : 0;
    }
    if (!rc && cm.split) rc = stats_sum(ks, tgt, r->rows, err);
    if (!rc) {
        double loss = 0;
        for (int64_t i = 0; i < r->rows; i++) loss += m[i] + log(s[i]) - tgt[i];
        out[0] = (float)(loss / cm.tokens);
    }
    free(buf);
    return rc;
}

/* dx[j] += e^(x[j] - m) c */
K_FAST void ce_dx(float *restrict dx, const float *restrict x, int64_t n, float m, float c)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) dx[j] += k_expf(x[j] - m) * c;
    for (; j < n; j++) dx[j] += k_expf(x[j] - m) * c;
}

/* dx[j] += e[j] c */
K_FAST void row_axpy(float *restrict dx, const float *restrict e, int64_t n, float c)
{
    int64_t j = 0;
    for (const int64_t n8 = n & ~(int64_t)7; j < n8; j++) dx[j] += e[j] * c;
    for (; j < n; j++) dx[j] += e[j] * c;
}

/* As k_cross_entropy_bwd: dx += p k over the row, then -k at the label.
 * Rows in parallel, each thread with its own row of exps. */
static int ce_bwd_rows(const KernelShape *ks, const Rows *r, const float *x, const int32_t *lab,
                       const float *dout, float *dx, Err *err)
{
    CeMode cm;
    if (ce_prepare(ks, r->rows, NULL, lab, &cm, err)) return -1;
    const int64_t n = r->n;
    float *buf = k_scratch(2 * r->rows + n * k_threads(), ks->op->name, err);
    if (!buf) return -1;
    float *m = buf, *s = buf + r->rows, *e = buf + 2 * r->rows;
    /* the statistics are collective: a rank without dx still takes part */
    int rc = cm.split ? ce_lse_rows(ks, r, &cm, x, m, s, e, err) : 0;
    const double k = dx ? dout[0] / cm.tokens : 0;
    const int64_t rows = rc || !dx ? 0 : r->rows;
#pragma omp parallel for schedule(static) if (k_par(rows, n))
    for (int64_t i = 0; i < rows; i++) {
        const float *xr = x + i * n;
        float *dxr = dx + i * n;
        int64_t y = (int64_t)lab[i] - ks->off[cm.v];
        if (cm.split) {
            ce_dx(dxr, xr, n, m[i], (float)(k / s[i]));
        } else {            /* as ce_lse_rows, this row's exps kept for dx */
            float *ei = e + n * k_thread();
            m[i] = row_max(xr, n, 1.0f);
            row_exp(ei, xr, n, 1.0f, m[i]);
            s[i] = (float)row_sum(ei, n);
            row_axpy(dxr, ei, n, (float)(k / s[i]));
        }
        if (y >= 0 && y < n) dxr[y] -= (float)k;
    }
    free(buf);
    return rc;
}

int k_cross_entropy_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const float *x = in[0];
    const int32_t *lab = in[1];
    Rows r;
    if (ce_rows(&r, ks)) return ce_fwd_rows(ks, &r, x, lab, out, err);
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    CeMode cm;
    float *buf = NULL;
    int rc = ce_prepare(ks, w.nouter, w.outer[1], lab, &cm, err);
    if (rc) goto done;
    buf = malloc(sizeof *buf * (size_t)(3 * w.nouter + 1));
    if (!buf) {
        rc = err_set(err, "op %s: out of memory for loss statistics", ks->op->name);
        goto done;
    }
    float *m = buf, *s = buf + w.nouter, *tgt = buf + 2 * w.nouter;
    if ((rc = ce_lse(ks, &w, &cm, x, m, s, err))) goto done;
    for (int64_t i = 0; i < w.nouter; i++) {
        int64_t y = (int64_t)lab[w.outer[1][i]] - ks->off[cm.v];
        tgt[i] = y >= 0 && y < ks->size[cm.v] ? x[w.outer[0][i] + w.inner[0][y]] : 0;
    }
    if (cm.split && (rc = stats_sum(ks, tgt, w.nouter, err))) goto done;
    double loss = 0;
    for (int64_t i = 0; i < w.nouter; i++) loss += m[i] + log(s[i]) - tgt[i];
    out[0] = (float)(loss / cm.tokens);
done:
    free(buf);
    walk_free(&w);
    return rc;
}

/* dx = (softmax(x) - onehot(label)) * dout / T on the local classes. */
int k_cross_entropy_bwd(const KernelShape *ks, const void *const *in, const float *out,
                        const float *dout, float *const *din, Err *err)
{
    (void)out;
    const float *x = in[0];
    const int32_t *lab = in[1];
    Rows r;
    if (ce_rows(&r, ks) && (!din[0] || (k_apart(din[0], r.rows * r.n, x, r.rows * r.n) &&
                                        k_apart(din[0], r.rows * r.n, dout, 1) &&
                                        k_apart(din[0], r.rows * r.n, lab, r.rows))))
        return ce_bwd_rows(ks, &r, x, lab, dout, din[0], err);
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    CeMode cm;
    float *buf = NULL;
    int rc = ce_prepare(ks, w.nouter, w.outer[1], lab, &cm, err);
    if (rc) goto done;
    /* the statistics are collective: a rank without din[0] still takes part */
    buf = malloc(sizeof *buf * (size_t)(2 * w.nouter + 1));
    if (!buf) {
        rc = err_set(err, "op %s: out of memory for loss statistics", ks->op->name);
        goto done;
    }
    float *m = buf, *s = buf + w.nouter;
    if ((rc = ce_lse(ks, &w, &cm, x, m, s, err)) || !din[0]) goto done;
    double k = dout[0] / cm.tokens;
    for (int64_t i = 0; i < w.nouter; i++) {
        const float *xr = x + w.outer[0][i];
        float *dxr = din[0] + w.outer[0][i];
        int64_t y = (int64_t)lab[w.outer[1][i]] - ks->off[cm.v];
        double inv = 1.0 / s[i];
        for (int64_t j = 0; j < w.ninner; j++) {
            double p = expf(xr[w.inner[0][j]] - m[i]) * inv - (j == y);
            dxr[w.inner[0][j]] += (float)(p * k);
        }
    }
done:
    free(buf);
    walk_free(&w);
    return rc;
}

/* ----------------------------------------------------------------------------
 * route "bse->bsec": top-1 switch routing with capacity. Within each group
 * (every letter but the reduce letter e and the sequence letter s, the last
 * kept letter), tokens in order of s take their argmax expert's next slot c;
 * a token whose expert is full is dropped (an all-zero row). The slot depends
 * on every earlier token of the group, so s, e and c must be whole. */

int k_route_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    const char *in0 = op->in_letters[0];
    uint32_t m0 = 0;
    for (const char *p = in0; *p; p++) m0 |= 1u << (*p - 'a');
    int c = -1, seq = -1;
    for (const char *p = op->out_letters; *p; p++)
        if (!(m0 >> (*p - 'a') & 1)) c = *p - 'a';
    for (const char *p = in0; *p; p++)
        if (!(op->reduce_mask >> (*p - 'a') & 1)) seq = *p - 'a';
    uint32_t whole = op->reduce_mask | 1u << c | (seq >= 0 ? 1u << seq : 0);
    if (kernel_check_extents(ks, whole, err)) return -1;
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    int64_t cap = ks->size[c], nseq = seq >= 0 ? ks->size[seq] : 1, cstride = 1;
    for (const char *p = strchr(op->out_letters, 'a' + c) + 1; *p; p++) cstride *= ks->size[*p - 'a'];
    int64_t *used = calloc((size_t)w.ninner + 1, sizeof *used);
    if (!used) {
        walk_free(&w);
        return err_set(err, "op %s: out of memory for expert counts", op->name);
    }
    memset(out, 0, sizeof *out * (size_t)letters_numel(ks, op->out_letters, op->letters_mask));
    for (int64_t i = 0; i < w.nouter; i++) {
        if (nseq && i % nseq == 0) memset(used, 0, sizeof *used * (size_t)w.ninner);
        const float *xr = in[0];
        xr += w.outer[0][i];
        int64_t best = 0;
        for (int64_t j = 1; j < w.ninner; j++)
            if (xr[w.inner[0][j]] > xr[w.inner[0][best]]) best = j;
        if (!w.ninner) continue;
        int64_t slot = used[best]++;
        if (slot < cap) out[w.outer[1][i] + w.inner[1][best] + slot * cstride] = 1;
    }
    free(used);
    walk_free(&w);
    return 0;
}

/* The routing is a discrete choice: no gradient flows through it (the gate
 * probabilities that weigh the expert outputs carry the router's gradient). */
int k_route_bwd(const KernelShape *ks, const void *const *in, const float *out,
                const float *dout, float *const *din, Err *err)
{
    (void)ks, (void)in, (void)out, (void)dout, (void)din, (void)err;
    return 0;
}
