/*
 * norm_body.h — the per-lane and per-element arithmetic of the CUDA kernels
 * of layernorm, batchnorm, softmax and cross_entropy (norm.cu), written once
 * for the device and for the CPU tests (tests/test_cuk_norm.c), which run
 * every lane of every row in turn and compare with executor/k_norm.c.
 *
 * The walk is k_norm.c's: operand 0's letters split into outer letters (one
 * row each) and inner letters (the `reduce` ones, the elements of a row),
 * both in operand 0's order. NbGeo holds, per operand, the stride of every
 * outer and every inner dimension, so element (i, j) of operand k lies at
 * nb_outer(g, k, i) + nb_inner(g, k, j) whatever its letter order. Letters of
 * size 1 are dropped and adjacent dimensions that are contiguous in every
 * operand merge, so the common layouts (a row of contiguous elements,
 * channels-last batch norm) end with one inner dimension and cost a multiply
 * per element; any other layout costs a division per dimension.
 *
 * A row is worked by a group of `nl` lanes (a warp or a block on the device,
 * any count in the tests): lane l takes elements j = l, l + nl, ..., so the
 * lanes of a warp read consecutive addresses where a row is contiguous. The
 * nb_lane_* functions return one lane's part of a row reduction; the caller
 * combines the parts of all lanes (shuffles on the device, a loop in the
 * tests) and hands the result to the next phase. Sums are in double, as in
 * k_norm.c.
 *
 * Legend: i = row (outer index), j = element of a row (inner index), n =
 * elements per row, N = count a row is normalised over (global when the
 * reduce letters are split), xh = (x - mean) * rstd, lim = the unmasked
 * prefix of a causal softmax row.
 */
#ifndef STRATA_NORM_BODY_H
#define STRATA_NORM_BODY_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "executor/cuda/cuk_fn.h"
#include "executor/kernels.h"

#define NB_MAXD 8                /* IR_MAX_DIMS */
#define NB_MAXK 5                /* IR_MAX_INPUTS + the output */
#define NB_EPS 1e-5              /* k_norm.c's NORM_EPS */

typedef struct {
    int64_t rows, n;                           /* outer rows; elements per row */
    int nod, nid;                              /* outer, inner dimensions */
    int64_t osz[NB_MAXD], isz[NB_MAXD];        /* their sizes, in operand 0's order */
    int64_t ost[NB_MAXK][NB_MAXD], ist[NB_MAXK][NB_MAXD];   /* per operand; 0 where absent */
} NbGeo;

/* Fills g for operands 0..nk-1 with letters letters[k] (letters[0]: operand
 * 0, whose order defines rows and elements) at local sizes size['a'..'z'].
 * `reduce`: bit l for each inner letter. Host only. */
static inline void nb_geo_init(NbGeo *g, const char *const *letters, int nk, uint32_t reduce,
                               const int64_t *size)
{
    int64_t st[NB_MAXK][26];
    for (int k = 0; k < nk; k++) {
        int len = 0;
        while (letters[k][len]) len++;
        for (int l = 0; l < 26; l++) st[k][l] = 0;
        int64_t s = 1;
        for (int p = len - 1; p >= 0; p--) {
            st[k][letters[k][p] - 'a'] = s;
            s *= size[letters[k][p] - 'a'];
        }
    }
    g->nod = g->nid = 0;
    g->rows = g->n = 1;
    for (const char *p = letters[0]; *p; p++) {
        int l = *p - 'a';
        if (size[l] == 1) continue;
        bool in = reduce >> l & 1;
        int *nd = in ? &g->nid : &g->nod;
        int64_t *sz = in ? g->isz : g->osz;
        if (in) g->n *= size[l];
        else g->rows *= size[l];
        /* merge into the previous dimension where every operand steps over
         * that one exactly as over a run of this one */
        bool merge = *nd > 0;
        for (int k = 0; k < nk && merge; k++) {
            const int64_t *dst = in ? g->ist[k] : g->ost[k];
            merge = dst[*nd - 1] == st[k][l] * size[l];
        }
        int d = merge ? *nd - 1 : (*nd)++;
        sz[d] = merge ? sz[d] * size[l] : size[l];
        for (int k = 0; k < nk; k++) (in ? g->ist[k] : g->ost[k])[d] = st[k][l];
    }
}

/* Offset of index i over nd dimensions of sizes sz and strides st. */
CUK_FN int64_t nb_off(int nd, const int64_t *sz, const int64_t *st, int64_t i)
{
    if (nd == 1) return i * st[0];
    int64_t off = 0;
    for (int d = nd - 1; d > 0; d--) {
        int64_t q = i / sz[d];
        off += (i - q * sz[d]) * st[d];
        i = q;
    }
    return nd ? off + i * st[0] : 0;
}

CUK_FN int64_t nb_outer(const NbGeo *g, int k, int64_t i)
{
    return nb_off(g->nod, g->osz, g->ost[k], i);
}

CUK_FN int64_t nb_inner(const NbGeo *g, int k, int64_t j)
{
    return nb_off(g->nid, g->isz, g->ist[k], j);
}

/* ----------------------------------------------------------------------------
 * One lane's part of a row reduction over operand k's elements j < lim of the
 * row at offset base. */

CUK_FN double nb_lane_sum(const NbGeo *g, int k, const float *x, int64_t base, int64_t lim,
                          int lane, int nl)
{
    double s = 0;
    for (int64_t j = lane; j < lim; j += nl) s += x[base + nb_inner(g, k, j)];
    return s;
}

/* sum of (x - mean)^2 */
CUK_FN double nb_lane_sqdev(const NbGeo *g, int k, const float *x, int64_t base, int64_t lim,
                            double mean, int lane, int nl)
{
    double s = 0;
    for (int64_t j = lane; j < lim; j += nl) {
        double d = x[base + nb_inner(g, k, j)] - mean;
        s += d * d;
    }
    return s;
}

/* The max of x * scale; NaN never wins (as `z > m` in k_norm.c), so parts
 * combine with nb_max too. */
CUK_FN float nb_max(float a, float b) { return b > a ? b : a; }

CUK_FN float nb_lane_max(const NbGeo *g, int k, const float *x, int64_t base, int64_t lim,
                         float scale, int lane, int nl)
{
    float m = -INFINITY;
    for (int64_t j = lane; j < lim; j += nl) m = nb_max(m, x[base + nb_inner(g, k, j)] * scale);
    return m;
}

/* sum of e^(x * scale - m) */
CUK_FN double nb_lane_sumexp(const NbGeo *g, int k, const float *x, int64_t base, int64_t lim,
                             float scale, float m, int lane, int nl)
{
    double s = 0;
    for (int64_t j = lane; j < lim; j += nl) s += expf(x[base + nb_inner(g, k, j)] * scale - m);
    return s;
}

/* ----------------------------------------------------------------------------
 * layernorm and batchnorm. Row statistics: mean and rstd = 1 / sqrt(var + eps)
 * from two passes (sum, then sum of squared deviations), or, for synchronised
 * batch norm, from the all-reduced sum and sum of squares. */

typedef struct {
    double mean, rstd;
} NbStat;

CUK_FN NbStat nb_stat_two_pass(double mean, double sqdev, double count)
{
    NbStat s;
    s.mean = mean;
    s.rstd = 1 / sqrt(sqdev / count + NB_EPS);
    return s;
}

/* From sum x and sum x^2 over N elements: var = E[x^2] - E[x]^2, never < 0. */
CUK_FN NbStat nb_stat_moments(double sum, double sumsq, double count)
{
    NbStat s;
    double var = sumsq / count - (sum / count) * (sum / count);
    s.mean = sum / count;
    s.rstd = 1 / sqrt((var > 0 ? var : 0) + NB_EPS);
    return s;
}

/* layernorm forward, one lane of row i: y = xh * gamma + beta (nin: operands
 * in; gamma operand 1 and beta operand 2 where present, y operand nin). */
CUK_FN void ln_lane_out(const NbGeo *g, int nin, const float *x, const float *gam,
                        const float *bet, float *y, int64_t i, NbStat st, int lane, int nl)
{
    int64_t xo = nb_outer(g, 0, i), yo = nb_outer(g, nin, i);
    for (int64_t j = lane; j < g->n; j += nl) {
        double v = (x[xo + nb_inner(g, 0, j)] - st.mean) * st.rstd;
        if (gam) v *= gam[nb_inner(g, 1, j)];
        if (bet) v += bet[nb_inner(g, 2, j)];
        y[yo + nb_inner(g, nin, j)] = (float)v;
    }
}

/* layernorm backward, one lane's part of sum(dg) and sum(dg * xh) of row i,
 * dg = dy * gamma. */
CUK_FN void ln_lane_dsums(const NbGeo *g, int nin, const float *x, const float *gam,
                          const float *dy, int64_t i, NbStat st, int lane, int nl, double *sdg,
                          double *sdgx)
{
    int64_t xo = nb_outer(g, 0, i), yo = nb_outer(g, nin, i);
    double a = 0, b = 0;
    for (int64_t j = lane; j < g->n; j += nl) {
        double d = dy[yo + nb_inner(g, nin, j)];
        if (gam) d *= gam[nb_inner(g, 1, j)];
        a += d;
        b += d * (x[xo + nb_inner(g, 0, j)] - st.mean) * st.rstd;
    }
    *sdg = a;
    *sdgx = b;
}

/* dx += rstd (dg - sum(dg)/N - xh sum(dg xh)/N), one lane of row i. */
CUK_FN void ln_lane_dx(const NbGeo *g, int nin, const float *x, const float *gam,
                       const float *dy, float *dx, int64_t i, NbStat st, double sdg, double sdgx,
                       int lane, int nl)
{
    int64_t xo = nb_outer(g, 0, i), yo = nb_outer(g, nin, i);
    double count = (double)g->n;
    for (int64_t j = lane; j < g->n; j += nl) {
        int64_t xj = xo + nb_inner(g, 0, j);
        double d = dy[yo + nb_inner(g, nin, j)], xh = (x[xj] - st.mean) * st.rstd;
        if (gam) d *= gam[nb_inner(g, 1, j)];
        dx[xj] += (float)(st.rstd * (d - sdg / count - xh * sdgx / count));
    }
}

/* layernorm dgamma and dbeta: element j sums dy xh and dy over the rows; this
 * is the part of rows i0, i0 + istep, ... (mean, rstd: per row). */
CUK_FN void ln_col_part(const NbGeo *g, int nin, const float *x, const float *dy,
                        const double *mean, const double *rstd, int64_t j, int64_t i0,
                        int64_t istep, double *pg, double *pb)
{
    int64_t xj = nb_inner(g, 0, j), yj = nb_inner(g, nin, j);
    double a = 0, b = 0;
    for (int64_t i = i0; i < g->rows; i += istep) {
        double d = dy[nb_outer(g, nin, i) + yj];
        a += d * (x[nb_outer(g, 0, i) + xj] - mean[i]) * rstd[i];
        b += d;
    }
    *pg = a;
    *pb = b;
}

/* batchnorm parts: sum x and sum x^2 (synchronised forward); those and sum dy,
 * sum dy x (synchronised backward), one lane of row i. */
CUK_FN void bn_lane_moments(const NbGeo *g, const float *x, int64_t i, int lane, int nl,
                            double *s, double *ss)
{
    int64_t xo = nb_outer(g, 0, i);
    double a = 0, b = 0;
    for (int64_t j = lane; j < g->n; j += nl) {
        double v = x[xo + nb_inner(g, 0, j)];
        a += v;
        b += v * v;
    }
    *s = a;
    *ss = b;
}

CUK_FN void bn_lane_moments4(const NbGeo *g, int nin, const float *x, const float *dy, int64_t i,
                             int lane, int nl, double *part)
{
    int64_t xo = nb_outer(g, 0, i), yo = nb_outer(g, nin, i);
    double s = 0, ss = 0, sd = 0, sdx = 0;
    for (int64_t j = lane; j < g->n; j += nl) {
        double v = x[xo + nb_inner(g, 0, j)], d = dy[yo + nb_inner(g, nin, j)];
        s += v;
        ss += v * v;
        sd += d;
        sdx += d * v;
    }
    part[0] = s, part[1] = ss, part[2] = sd, part[3] = sdx;
}

/* sum dy and sum dy xh of row i under its (global) statistics */
CUK_FN void bn_lane_dsums(const NbGeo *g, int nin, const float *x, const float *dy, int64_t i,
                          NbStat st, int lane, int nl, double *sd, double *sdx)
{
    int64_t xo = nb_outer(g, 0, i), yo = nb_outer(g, nin, i);
    double a = 0, b = 0;
    for (int64_t j = lane; j < g->n; j += nl) {
        double d = dy[yo + nb_inner(g, nin, j)];
        a += d;
        b += d * (x[xo + nb_inner(g, 0, j)] - st.mean) * st.rstd;
    }
    *sd = a;
    *sdx = b;
}

/* Per-row state of the batchnorm backward (k_norm.c's st): statistics and
 * the sums of dg = dy gamma and dg xh (global when synchronised). */
typedef struct {
    double mean, rstd, sdg, sdgx;
} BnRow;

/* Row i of a synchronised backward from the all-reduced sums buf (sum x,
 * sum x^2, sum dy, sum dy x; `rows` floats each) and gamma_i (1 without). */
CUK_FN BnRow bn_row_sync(const float *buf, int64_t rows, int64_t i, double count, double gi)
{
    NbStat st = nb_stat_moments(buf[i], buf[rows + i], count);
    BnRow r;
    r.mean = st.mean;
    r.rstd = st.rstd;
    r.sdg = buf[2 * rows + i];
    r.sdgx = (buf[3 * rows + i] - r.mean * r.sdg) * r.rstd;
    r.sdg *= gi;
    r.sdgx *= gi;
    return r;
}

/* Element e (row-major over rows x n) of the batchnorm output; gamma and
 * beta are one per row. */
CUK_FN void bn_elem_out(const NbGeo *g, int nin, const float *x, const float *gam,
                        const float *bet, float *y, const NbStat *st, int64_t e)
{
    int64_t i = e / g->n, j = e - i * g->n;
    double v = (x[nb_outer(g, 0, i) + nb_inner(g, 0, j)] - st[i].mean) * st[i].rstd;
    if (gam) v *= gam[nb_outer(g, 1, i)];
    if (bet) v += bet[nb_outer(g, 2, i)];
    y[nb_outer(g, nin, i) + nb_inner(g, nin, j)] = (float)v;
}

/* dx += rstd (dy gamma - sdg/N - xh sdgx/N) at element e. */
CUK_FN void bn_elem_dx(const NbGeo *g, int nin, const float *x, const float *gam,
                       const float *dy, float *dx, const BnRow *r, double count, int64_t e)
{
    int64_t i = e / g->n, j = e - i * g->n;
    int64_t xe = nb_outer(g, 0, i) + nb_inner(g, 0, j);
    double d = dy[nb_outer(g, nin, i) + nb_inner(g, nin, j)];
    double xh = (x[xe] - r[i].mean) * r[i].rstd;
    if (gam) d *= gam[nb_outer(g, 1, i)];
    dx[xe] += (float)(r[i].rstd * (d - r[i].sdg / count - xh * r[i].sdgx / count));
}

/* ----------------------------------------------------------------------------
 * softmax over one reduce letter t of scale * x. Causal: t last, s the last
 * outer letter, so row i's s index is i % size[s]; element j is masked where
 * the global t position exceeds the global s position. */

typedef struct {
    bool causal;
    int64_t s_size, s_off, t_off;    /* local size and offset of s; offset of t */
} SmMask;

/* Elements j < sm_limit are unmasked. */
CUK_FN int64_t sm_limit(const SmMask *mk, int64_t n, int64_t i)
{
    if (!mk->causal) return n;
    int64_t lim = mk->s_off + i % mk->s_size - mk->t_off + 1;
    return lim < 0 ? 0 : lim > n ? n : lim;
}

/* y = e^(x scale - m) * inv below lim, 0 from lim on; one lane of row i. */
CUK_FN void sm_lane_out(const NbGeo *g, const float *x, float *y, int64_t i, int64_t lim,
                        float scale, float m, float inv, int lane, int nl)
{
    int64_t xo = nb_outer(g, 0, i), yo = nb_outer(g, 1, i);
    for (int64_t j = lane; j < g->n; j += nl)
        y[yo + nb_inner(g, 1, j)] = j < lim ? expf(x[xo + nb_inner(g, 0, j)] * scale - m) * inv : 0;
}

/* sum of y * dy over a lane's part of row i (y, dy: operand 1's layout) */
CUK_FN double sm_lane_dot(const NbGeo *g, const float *y, const float *dy, int64_t i, int lane,
                          int nl)
{
    int64_t yo = nb_outer(g, 1, i);
    double s = 0;
    for (int64_t j = lane; j < g->n; j += nl) {
        int64_t yj = yo + nb_inner(g, 1, j);
        s += (double)y[yj] * dy[yj];
    }
    return s;
}

/* dx += scale y (dy - dot) */
CUK_FN void sm_lane_dx(const NbGeo *g, const float *y, const float *dy, float *dx, int64_t i,
                       double scale, double dot, int lane, int nl)
{
    int64_t yo = nb_outer(g, 1, i), xo = nb_outer(g, 0, i);
    for (int64_t j = lane; j < g->n; j += nl) {
        int64_t yj = yo + nb_inner(g, 1, j);
        double yv = y[yj];
        dx[xo + nb_inner(g, 0, j)] += (float)(scale * yv * (dy[yj] - dot));
    }
}

/* ----------------------------------------------------------------------------
 * cross_entropy: logits operand 0 (rows of the local classes), labels operand
 * 1 (one per row). The classes of this rank are [v_off, v_off + n) of
 * v_total. */

typedef struct {
    int64_t v_off, v_total;
    double tokens;                   /* the global token count */
} CeClasses;

/* Row i's label outside the global classes. */
CUK_FN bool ce_label_bad(const NbGeo *g, const int32_t *lab, const CeClasses *cc, int64_t i)
{
    int32_t y = lab[nb_outer(g, 1, i)];
    return y < 0 || y >= cc->v_total;
}

/* The local index of row i's label, or -1 when another rank holds it. */
CUK_FN int64_t ce_local_label(const NbGeo *g, const int32_t *lab, const CeClasses *cc, int64_t i)
{
    int64_t y = (int64_t)lab[nb_outer(g, 1, i)] - cc->v_off;
    return y >= 0 && y < g->n ? y : -1;
}

/* The logit of row i's label, 0 where another rank holds it. */
CUK_FN float ce_target(const NbGeo *g, const float *x, const int32_t *lab, const CeClasses *cc,
                       int64_t i)
{
    int64_t y = ce_local_label(g, lab, cc, i);
    return y >= 0 ? x[nb_outer(g, 0, i) + nb_inner(g, 0, y)] : 0;
}

/* Row i's part of the loss sum: lse - x[label] (m, s: global max and sum of
 * e^(x - m); tgt: global target logit). */
CUK_FN double ce_term(float m, float s, float tgt) { return m + log((double)s) - tgt; }

/* dx += (e^(x - m) / s - [j == label]) k, k = dout / tokens; one lane of row i. */
CUK_FN void ce_lane_dx(const NbGeo *g, const float *x, const int32_t *lab, const CeClasses *cc,
                       float *dx, int64_t i, float m, float s, double k, int lane, int nl)
{
    int64_t xo = nb_outer(g, 0, i), y = ce_local_label(g, lab, cc, i);
    double inv = 1.0 / s;
    for (int64_t j = lane; j < g->n; j += nl) {
        int64_t xj = xo + nb_inner(g, 0, j);
        double p = expf(x[xj] - m) * inv - (j == y);
        dx[xj] += (float)(p * k);
    }
}

/* ----------------------------------------------------------------------------
 * Host helpers of norm.cu's launches, shared with the CPU emulation */

static inline const char *nb_operand_letters(const Op *op, int k)
{
    return k < op->nin ? op->in_letters[k] : op->out_letters;
}

/* Operands 0..nk-1 (nk == nin + 1: with the output). */
static inline void nb_geo_of(NbGeo *g, const KernelShape *ks, int nk)
{
    const char *letters[NB_MAXK];
    for (int k = 0; k < nk; k++) letters[k] = nb_operand_letters(ks->op, k);
    nb_geo_init(g, letters, nk, ks->op->reduce_mask, ks->size);
}

/* The split reduction's all-reduce of n statistics (buf: where the kernels
 * compute, synchronised by the caller). */
static inline int nb_stats_call(const KernelShape *ks, bool max, float *buf, int64_t n, Err *err)
{
    int (*fn)(void *, float *, int64_t, Err *) = max ? ks->stats->max : ks->stats->sum;
    if (fn(ks->stats->ctx, buf, n, err))
        return err_prefix(err, "op %s: all-reduce (%s) of %lld statistics", ks->op->name,
                          max ? "max" : "sum", (long long)n);
    return 0;
}

#endif
