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

/* Every letter of the op lies inside its global extent; the letters of
 * `whole` are not split at all. */
static int check_shape(const KernelShape *ks, uint32_t whole, Err *err)
{
    const Op *op = ks->op;
    for (int l = 0; l < IR_LETTERS; l++) {
        if (!(op->letters_mask >> l & 1)) continue;
        if (ks->size[l] < 0 || ks->off[l] < 0 || ks->off[l] + ks->size[l] > ks->total[l])
            return err_set(err, "op %s: letter '%c' has local size %lld at offset %lld, outside "
                           "its global size %lld", op->name, 'a' + l, (long long)ks->size[l],
                           (long long)ks->off[l], (long long)ks->total[l]);
        if ((whole >> l & 1) && ks->size[l] != ks->total[l])
            return err_set(err, "op %s: %s cannot split letter '%c' (local %lld of %lld); keep it "
                           "whole in the strategy", op->name, op_kind_name(op->kind), 'a' + l,
                           (long long)ks->size[l], (long long)ks->total[l]);
    }
    return 0;
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
    if (check_shape(ks, bn ? 0 : op->reduce_mask, err)) return -1;
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
    if (!nm->sync) {
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
    for (int64_t i = 0; i < w.nouter && !rc; i++) {
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
    if (nm.sync) {
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

int k_layernorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    return norm_fwd(ks, in, out, err);
}

int k_layernorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
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
static int64_t softmax_limit(const KernelShape *ks, const Walk *w, int64_t i)
{
    const Op *op = ks->op;
    if (!op->causal) return w->ninner;
    int n = (int)strlen(op->in_letters[0]);
    int s = op->in_letters[0][n - 2] - 'a', t = op->in_letters[0][n - 1] - 'a';
    /* s is the last outer letter: its local index cycles fastest in i */
    int64_t sg = ks->off[s] + (ks->size[s] ? i % ks->size[s] : 0);
    int64_t lim = sg - ks->off[t] + 1;
    return lim < 0 ? 0 : lim > w->ninner ? w->ninner : lim;
}

int k_softmax_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    if (check_shape(ks, op->reduce_mask, err)) return -1;
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    const float *x = in[0];
    float scale = (float)op->scale;
    for (int64_t i = 0; i < w.nouter; i++) {
        const float *xr = x + w.outer[0][i];
        float *yr = out + w.outer[1][i];
        int64_t lim = softmax_limit(ks, &w, i);
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
    if (check_shape(ks, op->reduce_mask, err)) return -1;
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

static int ce_prepare(const KernelShape *ks, const Walk *w, const int32_t *lab, CeMode *cm,
                      Err *err)
{
    const Op *op = ks->op;
    cm->split = ks->stats && ks->stats->sum && ks->stats->max;
    if (check_shape(ks, cm->split ? 0 : op->reduce_mask, err)) return -1;
    cm->v = __builtin_ctz(op->reduce_mask);
    cm->tokens = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!(op->reduce_mask >> (*p - 'a') & 1)) cm->tokens *= (double)ks->total[*p - 'a'];
    /* before any collective: a bad label fails every rank of the group alike */
    for (int64_t i = 0; i < w->nouter; i++) {
        int32_t y = lab[w->outer[1][i]];
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

int k_cross_entropy_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const float *x = in[0];
    const int32_t *lab = in[1];
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    CeMode cm;
    float *buf = NULL;
    int rc = ce_prepare(ks, &w, lab, &cm, err);
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
    Walk w;
    if (walk_init(&w, ks, 2, err)) return -1;
    CeMode cm;
    float *buf = NULL;
    int rc = ce_prepare(ks, &w, lab, &cm, err);
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
    if (check_shape(ks, whole, err)) return -1;
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
