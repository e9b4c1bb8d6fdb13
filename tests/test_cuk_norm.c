/*
 * test_cuk_norm.c — the CUDA kernels of layernorm, batchnorm, softmax and
 * cross_entropy (executor/cuda/norm.cu) against the CPU kernels.
 *
 * Two implementations run the same cases and are compared with
 * kernel_forward / kernel_backward on the same inputs:
 *   - the host emulation (always): the bodies of executor/cuda/norm_body.h
 *     run for every row and every lane in turn, in the order of phases that
 *     norm.cu's launches follow, with 1, 3 and 32 lanes per row (the parts of
 *     a row reduction summed as the shuffles would), so the index mapping and
 *     the arithmetic are checked without a GPU;
 *   - the kernels themselves (builds with CUDA, on a machine with a device;
 *     skipped with a message otherwise).
 *
 * A case is an op, its global letter sizes and how one letter is split over
 * ranks. Ranks run as threads; with `stats` their KernelStats all-reduce
 * through a barrier (device buffers are copied through the host), and the
 * CPU kernels run the same ranks the same way, so every rank's output, dx
 * and dgamma are compared with the CPU's for the same shard. Backward adds
 * into random non-zero gradients, and some cases ask for only some of them.
 *
 * Legend: R = ranks, nl = lanes per row of the emulation.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "executor/cuda/norm_body.h"
#include "executor/kernels.h"
#include "ir/graph.h"
#include "ir/util.h"

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#include "executor/cuda/cuk.h"
#endif

_Static_assert(NB_MAXD == IR_MAX_DIMS && NB_MAXK == IR_MAX_INPUTS + 1, "norm_body.h limits");

#define MAX_RANKS 4

/* ----------------------------------------------------------------------------
 * One-op graphs and random data (as test_kernels_norm.c) */

/* A graph with one op of `kind` whose operand shapes follow from `spec` and
 * the letter sizes in `sizes` ("b3s5h7"); `attrs` is extra JSON for the op
 * (single quotes). Float operands are params, cross_entropy's labels i32. */
static Graph *op_graph(const char *kind, const char *spec, const char *attrs, const char *sizes)
{
    int64_t size[IR_LETTERS] = {0};
    for (const char *p = sizes; *p;) {
        int l = *p++ - 'a';
        size[l] = strtoll(p, (char **)&p, 10);
    }
    char json[4096], *w = json;
    const char *end = json + sizeof json;
    w += snprintf(w, (size_t)(end - w), "{'name':'t','tensors':[");
    char ins[256] = "";
    const char *s = spec;
    for (int k = 0;; k++) {
        const char *e = s;
        while (*e && *e != ',' && *e != '-') e++;
        bool out = *s == '>';
        if (out) s++, e = s + strlen(s);
        char name[16];
        snprintf(name, sizeof name, out ? "y" : "in%d", k);
        bool labels = !out && k == 1 && strcmp(kind, "cross_entropy") == 0;
        const char *role = out ? "activation" : labels ? "label" : "param";
        w += snprintf(w, (size_t)(end - w), "%s{'name':'%s','dtype':'%s','role':'%s','shape':[",
                      k ? "," : "", name, labels ? "i32" : "f32", role);
        for (const char *p = s; p < e; p++)
            w += snprintf(w, (size_t)(end - w), "%s%lld", p > s ? "," : "",
                          (long long)size[*p - 'a']);
        w += snprintf(w, (size_t)(end - w), "]}");
        if (!out) {
            size_t n = strlen(ins);
            snprintf(ins + n, sizeof ins - n, "%s'%s'", k ? "," : "", name);
        }
        if (out) break;
        s = e + 1; /* past ',' or onto '>' of "->" */
    }
    snprintf(w, (size_t)(end - w),
             "],'ops':[{'name':'op','kind':'%s','spec':'%s','inputs':[%s],'output':'y'%s%s}]}",
             kind, spec, ins, *attrs ? "," : "", attrs);
    for (char *p = json; *p; p++)
        if (*p == '\'') *p = '"';
    cJSON *j = cJSON_Parse(json);
    if (!j) fail_msg("test JSON does not parse: %s", json);
    Err err = {{0}};
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("graph: %s\n%s", err.msg, json);
    return g;
}

static uint64_t rng_state = 0x5eed1234;

static double urand(void) /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}


static bool is_labels(const Op *op, int k) { return op->kind == OP_CROSS_ENTROPY && k == 1; }

/* ----------------------------------------------------------------------------
 * Ranks as threads: KernelStats all-reduce through a barrier, combining in
 * rank order on every rank. With `device`, the buffers are device memory and
 * travel through the host. */

typedef struct {
    pthread_barrier_t bar;
    int nranks;
    float *slot[MAX_RANKS];
    int64_t n[MAX_RANKS];
} Group;

typedef struct {
    Group *g;
    int rank;
    bool device;
    int nsum, nmax;
} RankCtx;

static int to_host(float *h, const float *buf, int64_t n, bool device, Err *err);
static int to_buf(float *buf, const float *h, int64_t n, bool device, Err *err);

static int group_reduce(RankCtx *c, float *buf, int64_t n, bool max, Err *err)
{
    Group *g = c->g;
    float *h = xmalloc(sizeof *h * (size_t)(n ? n : 1)), *tmp = xmalloc(sizeof *tmp * (size_t)(n ? n : 1));
    int rc = to_host(h, buf, n, c->device, err);
    g->slot[c->rank] = h;
    g->n[c->rank] = rc ? -1 : n;
    pthread_barrier_wait(&g->bar);
    for (int r = 0; r < g->nranks && !rc; r++)
        if (g->n[r] != n)
            rc = err_set(err, "rank %d reduces %lld floats, rank %d %lld", c->rank, (long long)n,
                         r, (long long)g->n[r]);
    for (int64_t i = 0; i < n && !rc; i++) {
        float a = g->slot[0][i];
        for (int r = 1; r < g->nranks; r++) a = max ? fmaxf(a, g->slot[r][i]) : a + g->slot[r][i];
        tmp[i] = a;
    }
    pthread_barrier_wait(&g->bar); /* every slot read before any is freed */
    if (!rc) rc = to_buf(buf, tmp, n, c->device, err);
    free(h);
    free(tmp);
    return rc;
}

static int cb_sum(void *ctx, float *buf, int64_t n, Err *err)
{
    RankCtx *c = ctx;
    c->nsum++;
    return group_reduce(c, buf, n, false, err);
}

static int cb_max(void *ctx, float *buf, int64_t n, Err *err)
{
    RankCtx *c = ctx;
    c->nmax++;
    return group_reduce(c, buf, n, true, err);
}

/* ----------------------------------------------------------------------------
 * Implementations: the CPU kernels, the host emulation of norm.cu, the GPU.
 * Buffers are host memory in every case; ctx is the rank's context. */

typedef struct {
    const char *name;
    int (*fwd)(void *ctx, const KernelShape *ks, const void *const *in, float *out, Err *err);
    int (*bwd)(void *ctx, const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
    bool device;                 /* stats buffers are device memory */
    void *ctx[MAX_RANKS];
} Impl;

static int cpu_fwd(void *ctx, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)ctx;
    return kernel_forward(ks, in, out, err);
}

static int cpu_bwd(void *ctx, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    (void)ctx;
    return kernel_backward(ks, in, out, dout, din, err);
}



/* --- the emulation: norm.cu's launches, every lane of every row in turn ---- */

/* The two-pass statistics of row i (norm.cu's row_stat). */
static NbStat emu_row_stat(const NbGeo *g, const float *x, int64_t i, int nl)
{
    int64_t xo = nb_outer(g, 0, i);
    double s = 0, q = 0;
    for (int l = 0; l < nl; l++) s += nb_lane_sum(g, 0, x, xo, g->n, l, nl);
    double mean = s / (double)g->n;
    for (int l = 0; l < nl; l++) q += nb_lane_sqdev(g, 0, x, xo, g->n, mean, l, nl);
    return nb_stat_two_pass(mean, q, (double)g->n);
}

static float emu_row_max(const NbGeo *g, const float *x, int64_t i, int64_t lim, float scale,
                         int nl)
{
    float m = -INFINITY;
    for (int l = 0; l < nl; l++)
        m = nb_max(m, nb_lane_max(g, 0, x, nb_outer(g, 0, i), lim, scale, l, nl));
    return m;
}

static double emu_row_sumexp(const NbGeo *g, const float *x, int64_t i, int64_t lim, float scale,
                             float m, int nl)
{
    double s = 0;
    for (int l = 0; l < nl; l++) s += nb_lane_sumexp(g, 0, x, nb_outer(g, 0, i), lim, scale, m, l, nl);
    return s;
}

static int emu_layernorm_fwd(int nl, const KernelShape *ks, const void *const *in, float *out)
{
    const Op *op = ks->op;
    NbGeo g;
    nb_geo_of(&g, ks, op->nin + 1);
    const float *x = in[0], *gam = op->nin > 1 ? in[1] : NULL, *bet = op->nin > 2 ? in[2] : NULL;
    for (int64_t i = 0; i < g.rows; i++) {
        NbStat st = emu_row_stat(&g, x, i, nl);
        for (int l = 0; l < nl; l++) ln_lane_out(&g, op->nin, x, gam, bet, out, i, st, l, nl);
    }
    return 0;
}

static int emu_layernorm_bwd(int nl, const KernelShape *ks, const void *const *in,
                             const float *dout, float *const *din)
{
    const Op *op = ks->op;
    NbGeo g;
    nb_geo_of(&g, ks, op->nin + 1);
    const float *x = in[0], *gam = op->nin > 1 ? in[1] : NULL;
    float *dx = din[0], *dg = op->nin > 1 ? din[1] : NULL, *db = op->nin > 2 ? din[2] : NULL;
    double *mean = NULL, *rstd = NULL;
    if (dg || db) {
        mean = xmalloc(sizeof *mean * (size_t)g.rows);
        rstd = xmalloc(sizeof *rstd * (size_t)g.rows);
        for (int64_t i = 0; i < g.rows; i++) {
            NbStat st = emu_row_stat(&g, x, i, nl);
            mean[i] = st.mean, rstd[i] = st.rstd;
        }
        /* nl + 1 row chunks per column, as ln_col_k's blocks */
        for (int64_t j = 0; j < g.n; j++) {
            double a = 0, b = 0;
            for (int r = 0; r <= nl; r++) {
                double pa, pb;
                ln_col_part(&g, op->nin, x, dout, mean, rstd, j, r, nl + 1, &pa, &pb);
                a += pa, b += pb;
            }
            if (dg) dg[nb_inner(&g, 1, j)] += (float)a;
            if (db) db[nb_inner(&g, 2, j)] += (float)b;
        }
    }
    for (int64_t i = 0; i < g.rows && dx; i++) {
        NbStat st;
        if (mean) st.mean = mean[i], st.rstd = rstd[i];
        else st = emu_row_stat(&g, x, i, nl);
        double a = 0, b = 0;
        for (int l = 0; l < nl; l++) {
            double pa, pb;
            ln_lane_dsums(&g, op->nin, x, gam, dout, i, st, l, nl, &pa, &pb);
            a += pa, b += pb;
        }
        for (int l = 0; l < nl; l++) ln_lane_dx(&g, op->nin, x, gam, dout, dx, i, st, a, b, l, nl);
    }
    free(mean);
    free(rstd);
    return 0;
}

static bool bn_mode(const KernelShape *ks, double *count)
{
    const Op *op = ks->op;
    bool sync = ks->stats && ks->stats->sum;
    *count = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (op->reduce_mask >> (*p - 'a') & 1)
            *count *= (double)(sync ? ks->total[*p - 'a'] : ks->size[*p - 'a']);
    return sync;
}

static int emu_batchnorm_fwd(int nl, const KernelShape *ks, const void *const *in, float *out,
                             Err *err)
{
    const Op *op = ks->op;
    NbGeo g;
    nb_geo_of(&g, ks, op->nin + 1);
    double count;
    bool sync = bn_mode(ks, &count);
    const float *x = in[0];
    NbStat *st = xmalloc(sizeof *st * (size_t)g.rows);
    float *buf = xmalloc(sizeof *buf * (size_t)(2 * g.rows));
    int rc = 0;
    for (int64_t i = 0; i < g.rows; i++) {
        if (!sync) {
            st[i] = emu_row_stat(&g, x, i, nl);
            continue;
        }
        double s = 0, ss = 0;
        for (int l = 0; l < nl; l++) {
            double a, b;
            bn_lane_moments(&g, x, i, l, nl, &a, &b);
            s += a, ss += b;
        }
        buf[i] = (float)s, buf[g.rows + i] = (float)ss;
    }
    if (sync && !(rc = nb_stats_call(ks, false, buf, 2 * g.rows, err)))
        for (int64_t i = 0; i < g.rows; i++) st[i] = nb_stat_moments(buf[i], buf[g.rows + i], count);
    for (int64_t e = 0; e < g.rows * g.n && !rc; e++)
        bn_elem_out(&g, op->nin, x, op->nin > 1 ? in[1] : NULL, op->nin > 2 ? in[2] : NULL, out,
                    st, e);
    free(st);
    free(buf);
    return rc;
}

static int emu_batchnorm_bwd(int nl, const KernelShape *ks, const void *const *in,
                             const float *dout, float *const *din, Err *err)
{
    const Op *op = ks->op;
    NbGeo g;
    nb_geo_of(&g, ks, op->nin + 1);
    double count;
    bool sync = bn_mode(ks, &count);
    const float *x = in[0], *gam = op->nin > 1 ? in[1] : NULL;
    float *dx = din[0], *dg = op->nin > 1 ? din[1] : NULL, *db = op->nin > 2 ? din[2] : NULL;
    BnRow *r = xmalloc(sizeof *r * (size_t)g.rows);
    float *buf = xmalloc(sizeof *buf * (size_t)(4 * g.rows));
    int rc = 0;
    if (sync) {
        for (int64_t i = 0; i < g.rows; i++) {
            double p[4] = {0, 0, 0, 0}, q[4];
            for (int l = 0; l < nl; l++) {
                bn_lane_moments4(&g, op->nin, x, dout, i, l, nl, q);
                for (int m = 0; m < 4; m++) p[m] += q[m];
            }
            for (int m = 0; m < 4; m++) buf[m * g.rows + i] = (float)p[m];
        }
        if (!(rc = nb_stats_call(ks, false, buf, 4 * g.rows, err)))
            for (int64_t i = 0; i < g.rows; i++)
                r[i] = bn_row_sync(buf, g.rows, i, count, gam ? gam[nb_outer(&g, 1, i)] : 1.0);
    }
    for (int64_t i = 0; i < g.rows && !rc; i++) {
        NbStat st;
        if (sync) st.mean = r[i].mean, st.rstd = r[i].rstd;
        else st = emu_row_stat(&g, x, i, nl);
        double a = 0, b = 0;
        for (int l = 0; l < nl; l++) {
            double pa, pb;
            bn_lane_dsums(&g, op->nin, x, dout, i, st, l, nl, &pa, &pb);
            a += pa, b += pb;
        }
        if (dg) dg[nb_outer(&g, 1, i)] += (float)b;
        if (db) db[nb_outer(&g, 2, i)] += (float)a;
        if (!sync) {
            double gi = gam ? gam[nb_outer(&g, 1, i)] : 1.0;
            r[i].mean = st.mean, r[i].rstd = st.rstd;
            r[i].sdg = gi * a, r[i].sdgx = gi * b;
        }
    }
    for (int64_t e = 0; e < g.rows * g.n && dx && !rc; e++)
        bn_elem_dx(&g, op->nin, x, gam, dout, dx, r, count, e);
    free(r);
    free(buf);
    return rc;
}

static SmMask sm_mask(const KernelShape *ks)
{
    const Op *op = ks->op;
    SmMask mk;
    memset(&mk, 0, sizeof mk);
    mk.causal = op->causal;
    if (mk.causal) {
        int n = (int)strlen(op->in_letters[0]);
        int s = op->in_letters[0][n - 2] - 'a', t = op->in_letters[0][n - 1] - 'a';
        mk.s_size = ks->size[s];
        mk.s_off = ks->off[s];
        mk.t_off = ks->off[t];
    }
    return mk;
}

static int emu_softmax_fwd(int nl, const KernelShape *ks, const void *const *in, float *out)
{
    NbGeo g;
    nb_geo_of(&g, ks, 2);
    SmMask mk = sm_mask(ks);
    const float *x = in[0];
    float scale = (float)ks->op->scale;
    for (int64_t i = 0; i < g.rows; i++) {
        int64_t lim = sm_limit(&mk, g.n, i);
        float m = emu_row_max(&g, x, i, lim, scale, nl);
        if (!(m > -INFINITY)) lim = 0;
        double s = emu_row_sumexp(&g, x, i, lim, scale, m, nl);
        for (int l = 0; l < nl; l++) sm_lane_out(&g, x, out, i, lim, scale, m, (float)(1 / s), l, nl);
    }
    return 0;
}

static int emu_softmax_bwd(int nl, const KernelShape *ks, const float *out, const float *dout,
                           float *const *din)
{
    if (!din[0]) return 0;
    NbGeo g;
    nb_geo_of(&g, ks, 2);
    for (int64_t i = 0; i < g.rows; i++) {
        double dot = 0;
        for (int l = 0; l < nl; l++) dot += sm_lane_dot(&g, out, dout, i, l, nl);
        for (int l = 0; l < nl; l++) sm_lane_dx(&g, out, dout, din[0], i, ks->op->scale, dot, l, nl);
    }
    return 0;
}

static bool ce_mode(const KernelShape *ks, NbGeo *g, CeClasses *cc)
{
    const Op *op = ks->op;
    int v = __builtin_ctz(op->reduce_mask);
    cc->v_off = ks->off[v];
    cc->v_total = ks->total[v];
    cc->tokens = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!(op->reduce_mask >> (*p - 'a') & 1)) cc->tokens *= (double)ks->total[*p - 'a'];
    nb_geo_of(g, ks, 2);
    return ks->stats && ks->stats->sum && ks->stats->max;
}

/* ce_check_k and ce_labels_ok: the first bad row fails, before any collective. */
static int emu_ce_labels(const KernelShape *ks, const NbGeo *g, const CeClasses *cc,
                         const int32_t *lab, Err *err)
{
    for (int64_t i = 0; i < g->rows; i++)
        if (ce_label_bad(g, lab, cc, i))
            return err_set(err, "op %s: label %d at local token %lld is outside the %lld classes",
                           ks->op->name, lab[nb_outer(g, 1, i)], (long long)i,
                           (long long)cc->v_total);
    return 0;
}

/* m, s of every row; all-reduced when split (ce_max_k, ce_sum_k). */
static int emu_ce_lse(int nl, const KernelShape *ks, const NbGeo *g, bool split, const float *x,
                      float *m, float *s, Err *err)
{
    for (int64_t i = 0; i < g->rows; i++) m[i] = emu_row_max(g, x, i, g->n, 1.0f, nl);
    if (split && nb_stats_call(ks, true, m, g->rows, err)) return -1;
    for (int64_t i = 0; i < g->rows; i++) s[i] = (float)emu_row_sumexp(g, x, i, g->n, 1.0f, m[i], nl);
    if (split && nb_stats_call(ks, false, s, g->rows, err)) return -1;
    return 0;
}

static int emu_ce_fwd(int nl, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    NbGeo g;
    CeClasses cc;
    bool split = ce_mode(ks, &g, &cc);
    const float *x = in[0];
    const int32_t *lab = in[1];
    if (emu_ce_labels(ks, &g, &cc, lab, err)) return -1;
    float *buf = xmalloc(sizeof *buf * (size_t)(3 * g.rows));
    float *m = buf, *s = buf + g.rows, *tgt = buf + 2 * g.rows;
    int rc = emu_ce_lse(nl, ks, &g, split, x, m, s, err);
    for (int64_t i = 0; i < g.rows && !rc; i++) tgt[i] = ce_target(&g, x, lab, &cc, i);
    if (!rc && split) rc = nb_stats_call(ks, false, tgt, g.rows, err);
    if (!rc) {
        double loss = 0;
        for (int64_t i = 0; i < g.rows; i++) loss += ce_term(m[i], s[i], tgt[i]);
        out[0] = (float)(loss / cc.tokens);
    }
    free(buf);
    return rc;
}

static int emu_ce_bwd(int nl, const KernelShape *ks, const void *const *in, const float *dout,
                      float *const *din, Err *err)
{
    NbGeo g;
    CeClasses cc;
    bool split = ce_mode(ks, &g, &cc);
    const float *x = in[0];
    const int32_t *lab = in[1];
    if (emu_ce_labels(ks, &g, &cc, lab, err)) return -1;
    float *buf = xmalloc(sizeof *buf * (size_t)(2 * g.rows));
    int rc = emu_ce_lse(nl, ks, &g, split, x, buf, buf + g.rows, err);
    for (int64_t i = 0; i < g.rows && !rc && din[0]; i++)
        for (int l = 0; l < nl; l++)
            ce_lane_dx(&g, x, lab, &cc, din[0], i, buf[i], buf[g.rows + i], dout[0] / cc.tokens,
                       l, nl);
    free(buf);
    return rc;
}

static int emu_fwd(void *ctx, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    int nl = *(const int *)ctx;
    switch (ks->op->kind) {
    case OP_LAYERNORM: return emu_layernorm_fwd(nl, ks, in, out);
    case OP_BATCHNORM: return emu_batchnorm_fwd(nl, ks, in, out, err);
    case OP_SOFTMAX: return emu_softmax_fwd(nl, ks, in, out);
    case OP_CROSS_ENTROPY: return emu_ce_fwd(nl, ks, in, out, err);
    default: return err_set(err, "no emulation of %s", op_kind_name(ks->op->kind));
    }
}

static int emu_bwd(void *ctx, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    int nl = *(const int *)ctx;
    switch (ks->op->kind) {
    case OP_LAYERNORM: return emu_layernorm_bwd(nl, ks, in, dout, din);
    case OP_BATCHNORM: return emu_batchnorm_bwd(nl, ks, in, dout, din, err);
    case OP_SOFTMAX: return emu_softmax_bwd(nl, ks, out, dout, din);
    case OP_CROSS_ENTROPY: return emu_ce_bwd(nl, ks, in, dout, din, err);
    default: return err_set(err, "no emulation of %s", op_kind_name(ks->op->kind));
    }
}

/* --- the GPU: host buffers copied to the device and back -------------------- */

#ifdef HAVE_CUDA
static int cuda_err(Err *err, cudaError_t rc, const char *what)
{
    return err_set(err, "%s: %s", what, cudaGetErrorString(rc));
}
#endif

static int to_host(float *h, const float *buf, int64_t n, bool device, Err *err)
{
    if (!device) {
        memcpy(h, buf, sizeof *h * (size_t)n);
        return 0;
    }
#ifdef HAVE_CUDA
    cudaError_t rc = cudaMemcpy(h, buf, sizeof *h * (size_t)n, cudaMemcpyDeviceToHost);
    return rc == cudaSuccess ? 0 : cuda_err(err, rc, "statistics to the host");
#else
    return err_set(err, "device buffers in a build without CUDA");
#endif
}

static int to_buf(float *buf, const float *h, int64_t n, bool device, Err *err)
{
    if (!device) {
        memcpy(buf, h, sizeof *h * (size_t)n);
        return 0;
    }
#ifdef HAVE_CUDA
    /* from pageable memory the copy may still be in flight when cudaMemcpy
     * returns, and the kernel's stream does not wait for the default one */
    cudaError_t rc = cudaMemcpy(buf, h, sizeof *h * (size_t)n, cudaMemcpyHostToDevice);
    if (rc == cudaSuccess) rc = cudaDeviceSynchronize();
    return rc == cudaSuccess ? 0 : cuda_err(err, rc, "statistics to the device");
#else
    return err_set(err, "device buffers in a build without CUDA");
#endif
}

#ifdef HAVE_CUDA
/* Device copies of operands 0..nin-1 (in), the output and dout (out, dout),
 * din: NULL where the host pointer is NULL. */
typedef struct {
    void *in[IR_MAX_INPUTS];
    float *out, *dout, *din[IR_MAX_INPUTS];
} DevBufs;

static void dev_free(DevBufs *d)
{
    for (int k = 0; k < IR_MAX_INPUTS; k++) cudaFree(d->in[k]), cudaFree(d->din[k]);
    cudaFree(d->out);
    cudaFree(d->dout);
}

static int dev_copy(void **d, const void *h, int64_t n, Err *err)
{
    cudaError_t rc = cudaMalloc(d, 4 * (size_t)(n ? n : 1));
    if (rc == cudaSuccess && h) rc = cudaMemcpy(*d, h, 4 * (size_t)n, cudaMemcpyHostToDevice);
    return rc == cudaSuccess ? 0 : cuda_err(err, rc, "test buffers to the device");
}

static int dev_up(DevBufs *d, const KernelShape *ks, const void *const *in, const float *out,
                  const float *dout, float *const *din, Err *err)
{
    const Op *op = ks->op;
    memset(d, 0, sizeof *d);
    int64_t nout = kernel_operand_numel(ks, op->nin);
    for (int k = 0; k < op->nin; k++)
        if (dev_copy(&d->in[k], in[k], kernel_operand_numel(ks, k), err)) return -1;
    if (dev_copy((void **)&d->out, out, nout, err)) return -1;
    if (dout && dev_copy((void **)&d->dout, dout, nout, err)) return -1;
    for (int k = 0; din && k < op->nin; k++)
        if (din[k] && dev_copy((void **)&d->din[k], din[k], kernel_operand_numel(ks, k), err))
            return -1;
    cudaError_t rc = cudaDeviceSynchronize();   /* the copies landed (see to_buf) */
    return rc == cudaSuccess ? 0 : cuda_err(err, rc, "test buffers to the device");
}

static int dev_down(void *h, const void *d, int64_t n, Err *err)
{
    cudaError_t rc = cudaMemcpy(h, d, 4 * (size_t)n, cudaMemcpyDeviceToHost);
    return rc == cudaSuccess ? 0 : cuda_err(err, rc, "results to the host");
}

static int gpu_fwd(void *ctx, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    CuCtx *c = ctx;
    DevBufs d;
    int rc = dev_up(&d, ks, in, NULL, NULL, NULL, err);
    const void *const *din_in = (const void *const *)d.in;
    if (!rc) {
        rc = cuk_forward(c, ks, din_in, d.out, err);
    }
    if (!rc) rc = cuk_sync(c, err);
    if (!rc) rc = dev_down(out, d.out, kernel_operand_numel(ks, ks->op->nin), err);
    dev_free(&d);
    return rc;
}

static int gpu_bwd(void *ctx, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    CuCtx *c = ctx;
    const Op *op = ks->op;
    DevBufs d;
    int rc = dev_up(&d, ks, in, out, dout, din, err);
    const void *const *din_in = (const void *const *)d.in;
    if (!rc) {
        rc = cuk_backward(c, ks, din_in, d.out, d.dout, d.din, err);
    }
    if (!rc) rc = cuk_sync(c, err);
    for (int k = 0; k < op->nin && !rc; k++)
        if (din[k]) rc = dev_down(din[k], d.din[k], kernel_operand_numel(ks, k), err);
    dev_free(&d);
    return rc;
}
#endif

/* ----------------------------------------------------------------------------
 * Cases: an op, its global sizes, a letter split over ranks */

enum { SP_NONE, SP_NEG_INF_ROW, SP_BAD_LABEL, SP_MEAN_1000 };

typedef struct {
    const char *kind, *spec, *attrs, *sizes;
    char split;                    /* letter split over the ranks; 0: one rank holds all */
    int64_t parts[MAX_RANKS];      /* its local size on each rank (0 ends the list) */
    bool stats;                    /* ranks all-reduce through ks->stats */
    unsigned din;                  /* bit k: the gradient of operand k is asked for */
    int special;
} Case;

/* One rank's shard of a case: its shape and local inputs. */
typedef struct {
    KernelShape ks;
    void *in[IR_MAX_INPUTS];
    float *dout, *pre[IR_MAX_INPUTS];
    int64_t n[IR_MAX_INPUTS + 1];  /* local elements per operand (nin: the output) */
} Shard;

/* What an implementation gave on one rank. */
typedef struct {
    float *out, *din[IR_MAX_INPUTS];
    int rc;
    Err err;
    RankCtx rctx;
} Result;

typedef struct {
    const Case *c;
    Graph *g;
    int nranks;
    Shard sh[MAX_RANKS];
} Setup;

/* Global index of the local element e of an operand with `letters` (local
 * sizes size, offsets off, global sizes total). */
static int64_t global_index(const char *letters, const KernelShape *ks, int64_t e)
{
    int len = (int)strlen(letters);
    int64_t gi = 0, st = 1;
    for (int p = len - 1; p >= 0; p--) {
        int l = letters[p] - 'a';
        gi += (ks->off[l] + e % ks->size[l]) * st;
        e /= ks->size[l];
        st *= ks->total[l];
    }
    return gi;
}

static void setup_case(Setup *s, const Case *c)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->g = op_graph(c->kind, c->spec, c->attrs, c->sizes);
    const Op *op = &s->g->ops[0];
    int v = __builtin_ctz(op->reduce_mask);
    KernelShape whole;
    kernel_shape_whole(&whole, op, s->g);
    /* whole inputs, drawn once; each shard takes its block */
    void *win[IR_MAX_INPUTS];
    int64_t wn[IR_MAX_INPUTS + 1];
    for (int k = 0; k <= op->nin; k++) wn[k] = kernel_operand_numel(&whole, k);
    for (int k = 0; k < op->nin; k++) {
        win[k] = xmalloc(4 * (size_t)wn[k]);
        for (int64_t e = 0; e < wn[k]; e++) {
            if (is_labels(op, k)) {
                ((int32_t *)win[k])[e] = (int32_t)(urand() * (double)op->size[v]);
            } else {
                bool param = k > 0;     /* gamma around 1, beta and x around 0 */
                double lo = param && k == 1 ? 0.5 : -3, hi = param && k == 1 ? 1.5 : 3;
                if (c->special == SP_MEAN_1000 && k == 0) lo += 1000, hi = lo + 2.5;
                ((float *)win[k])[e] = (float)(lo + (hi - lo) * urand());
            }
        }
    }
    if (c->special == SP_NEG_INF_ROW)
        for (int64_t e = 0; e < op->size[v]; e++) ((float *)win[0])[e] = -INFINITY;
    if (c->special == SP_BAD_LABEL) ((int32_t *)win[1])[wn[1] / 2] = (int32_t)op->size[v];
    s->nranks = 0;
    int64_t off = 0;
    do {
        Shard *sh = &s->sh[s->nranks];
        sh->ks = whole;
        if (c->split) {
            int l = c->split - 'a';
            sh->ks.size[l] = c->parts[s->nranks];
            sh->ks.off[l] = off;
            off += c->parts[s->nranks];
        }
        for (int k = 0; k <= op->nin; k++) sh->n[k] = kernel_operand_numel(&sh->ks, k);
        for (int k = 0; k < op->nin; k++) {
            sh->in[k] = xmalloc(4 * (size_t)sh->n[k]);
            for (int64_t e = 0; e < sh->n[k]; e++)
                memcpy((char *)sh->in[k] + 4 * e,
                       (char *)win[k] + 4 * global_index(op->in_letters[k], &sh->ks, e), 4);
            sh->pre[k] = xmalloc(sizeof(float) * (size_t)sh->n[k]);
            for (int64_t e = 0; e < sh->n[k]; e++) sh->pre[k][e] = (float)(2 * urand() - 1);
        }
        sh->dout = xmalloc(sizeof(float) * (size_t)sh->n[op->nin]);
        for (int64_t e = 0; e < sh->n[op->nin]; e++) sh->dout[e] = (float)(2 * urand() - 1);
        s->nranks++;
    } while (c->split && s->nranks < MAX_RANKS && c->parts[s->nranks]);
    for (int k = 0; k < op->nin; k++) free(win[k]);
}

static void setup_free(Setup *s)
{
    for (int r = 0; r < s->nranks; r++) {
        for (int k = 0; k < IR_MAX_INPUTS; k++) free(s->sh[r].in[k]), free(s->sh[r].pre[k]);
        free(s->sh[r].dout);
    }
    graph_free(s->g);
}

static void result_free(Result *res, int nranks)
{
    for (int r = 0; r < nranks; r++) {
        free(res[r].out);
        for (int k = 0; k < IR_MAX_INPUTS; k++) free(res[r].din[k]);
    }
}

typedef struct {
    const Setup *s;
    const Impl *im;
    int rank;
    Group *grp;
    KernelStats st;
    Result *res;
} RankRun;

/* Forward, then backward from that forward's output into the prefilled
 * gradients the case asks for. */
static void *rank_run(void *p)
{
    RankRun *rr = p;
    const Setup *s = rr->s;
    const Shard *sh = &s->sh[rr->rank];
    const Op *op = &s->g->ops[0];
    Result *res = rr->res;
    KernelShape ks = sh->ks;
    res->rctx.g = rr->grp;
    res->rctx.rank = rr->rank;
    res->rctx.device = rr->im->device;
    if (s->c->stats) {
        rr->st.sum = cb_sum;
        rr->st.max = cb_max;
        rr->st.ctx = &res->rctx;
        ks.stats = &rr->st;
    }
    res->out = xmalloc(sizeof(float) * (size_t)sh->n[op->nin]);
    for (int64_t e = 0; e < sh->n[op->nin]; e++) res->out[e] = 12345;  /* never kept */
    void *ctx = rr->im->ctx[rr->rank];
    const void *const *in = (const void *const *)sh->in;
    res->rc = rr->im->fwd(ctx, &ks, in, res->out, &res->err);
    if (res->rc) return NULL;
    for (int k = 0; k < op->nin; k++) {
        if (!(s->c->din >> k & 1)) continue;
        res->din[k] = xmalloc(sizeof(float) * (size_t)sh->n[k]);
        memcpy(res->din[k], sh->pre[k], sizeof(float) * (size_t)sh->n[k]);
    }
    res->rc = rr->im->bwd(ctx, &ks, in, res->out, sh->dout, res->din, &res->err);
    return NULL;
}

static void run_impl(const Setup *s, const Impl *im, Result *res)
{
    Group grp;
    memset(&grp, 0, sizeof grp);
    grp.nranks = s->nranks;
    pthread_barrier_init(&grp.bar, NULL, (unsigned)s->nranks);
    RankRun rr[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    memset(res, 0, sizeof *res * (size_t)s->nranks);
    for (int r = 0; r < s->nranks; r++) {
        memset(&rr[r], 0, sizeof rr[r]);
        rr[r].s = s, rr[r].im = im, rr[r].rank = r, rr[r].grp = &grp, rr[r].res = &res[r];
    }
    if (s->nranks == 1) {
        rank_run(&rr[0]);
    } else {
        for (int r = 0; r < s->nranks; r++) pthread_create(&th[r], NULL, rank_run, &rr[r]);
        for (int r = 0; r < s->nranks; r++) pthread_join(th[r], NULL);
    }
    pthread_barrier_destroy(&grp.bar);
}

/* got against want, both added into pre (NULL: into nothing): the part
 * each added, d = want - pre, may differ by tol |d| plus tol times d's rms
 * over the buffer, and the sums by a few roundings of their own size. */
static void check_near(const float *got, const float *want, const float *pre, int64_t n,
                       const char *what, const Case *c, const Impl *im, int rank)
{
    const double tol = 1e-5;
    double ss = 0;
    for (int64_t e = 0; e < n; e++) {
        double d = (double)want[e] - (pre ? pre[e] : 0);
        if (isfinite(d)) ss += d * d;
    }
    double rms = n ? sqrt(ss / (double)n) : 0;
    for (int64_t e = 0; e < n; e++) {
        double d = fabs((double)got[e] - want[e]), part = fabs((double)want[e] - (pre ? pre[e] : 0));
        double big = fmax(fabs((double)got[e]), fabs((double)want[e]));
        bool same = got[e] == want[e];      /* infinities included */
        if (!same && !(d <= tol * (part + rms) + 4 * FLT_EPSILON * big))
            fail_msg("%s %s (%s on %s, rank %d): %s[%lld] is %.9g, the CPU's %.9g (diff %.3g)",
                     c->kind, c->spec, im->name, c->sizes, rank, what, (long long)e, got[e],
                     want[e], d);
    }
}

/* Runs case c on im and on the CPU kernels; the same outputs, gradients and
 * collectives on every rank, or the same error. */
static void check_case(const Case *c, const Impl *im)
{
    Setup s;
    setup_case(&s, c);
    Impl cpu = {"cpu", cpu_fwd, cpu_bwd, false, {NULL}};
    Result want[MAX_RANKS], got[MAX_RANKS];
    run_impl(&s, &cpu, want);
    run_impl(&s, im, got);
    const Op *op = &s.g->ops[0];
    for (int r = 0; r < s.nranks; r++) {
        if (want[r].rc || got[r].rc) {
            if (!want[r].rc || !got[r].rc || strcmp(want[r].err.msg, got[r].err.msg) != 0)
                fail_msg("%s %s (%s on %s, rank %d): error \"%s\", the CPU's \"%s\"", c->kind,
                         c->spec, im->name, c->sizes, r, got[r].rc ? got[r].err.msg : "(none)",
                         want[r].rc ? want[r].err.msg : "(none)");
            continue;
        }
        check_near(got[r].out, want[r].out, NULL, s.sh[r].n[op->nin], "y", c, im, r);
        for (int k = 0; k < op->nin; k++) {
            char what[32];
            snprintf(what, sizeof what, "din[%d]", k);
            if (want[r].din[k])
                check_near(got[r].din[k], want[r].din[k], s.sh[r].pre[k], s.sh[r].n[k], what, c,
                           im, r);
        }
        if (got[r].rctx.nsum != want[r].rctx.nsum || got[r].rctx.nmax != want[r].rctx.nmax)
            fail_msg("%s %s (%s, rank %d): %d sum and %d max all-reduces, the CPU %d and %d",
                     c->kind, c->spec, im->name, r, got[r].rctx.nsum, got[r].rctx.nmax,
                     want[r].rctx.nsum, want[r].rctx.nmax);
    }
    result_free(want, s.nranks);
    result_free(got, s.nranks);
    setup_free(&s);
}

/* ----------------------------------------------------------------------------
 * The cases. Sizes of 1, 3, 7, 33; rows of more than 1024 and 16384
 * elements (a block of 256 and of 1024 lanes on the device); shards with
 * off != 0; split reductions through stats. */

/* gradients asked for: dx; dx, dgamma, dbeta */
#define DX 1u
#define DXGB 7u

static const Case layernorm_cases[] = {
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b3s5h7", 0, {0}, false, DXGB, 0},
    {"layernorm", "bsh->bsh", "'reduce':'h'", "b3s5h33", 0, {0}, false, DX, 0},
    {"layernorm", "bsh,h->bsh", "'reduce':'h'", "b1s7h3", 0, {0}, false, 3, 0},
    {"layernorm", "bhs,h,h->bhs", "'reduce':'h'", "b3s5h7", 0, {0}, false, DXGB, 0},
    {"layernorm", "bsh,sh,hs->bsh", "'reduce':'sh'", "b2s3h33", 0, {0}, false, DXGB, 0},
    {"layernorm", "hbs,h,h->hbs", "'reduce':'h'", "b1s1h1", 0, {0}, false, DXGB, 0},
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b2s3h1100", 0, {0}, false, DXGB, 0},
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b1s2h17000", 0, {0}, false, DXGB, 0},
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b2s3h64", 0, {0}, false, DXGB, SP_MEAN_1000},
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b3s5h7", 'b', {1, 2}, false, DXGB, 0},
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b3s5h7", 0, {0}, false, 6, 0},
    {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b3s5h7", 0, {0}, false, 0, 0},
};

static const Case batchnorm_cases[] = {
    {"batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n5c3h3w5", 0, {0}, false, DXGB, 0},
    {"batchnorm", "nchw->nchw", "'reduce':'nhw'", "n5c3h3w5", 0, {0}, false, DX, 0},
    {"batchnorm", "nhwc,c,c->nhwc", "'reduce':'nhw'", "n3c7h1w33", 0, {0}, false, DXGB, 0},
    {"batchnorm", "cnhw,c,c->cnhw", "'reduce':'nhw'", "n2c1h3w7", 0, {0}, false, DXGB, 0},
    {"batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n4c2h33w33", 0, {0}, false, DXGB, 0},
    {"batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n5c3h3w5", 'n', {2, 3}, true, DXGB, 0},
    {"batchnorm", "nchw->nchw", "'reduce':'nhw'", "n5c3h3w5", 'n', {2, 3}, true, DX, 0},
    {"batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n5c3h3w5", 'n', {2, 3}, false, DXGB, 0},
    {"batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n5c3h3w5", 'n', {2, 3}, true, 6, 0},
};

static const Case softmax_cases[] = {
    {"softmax", "bnst->bnst", "'reduce':'t','scale':0.5", "b2n3s7t7", 0, {0}, false, DX, 0},
    {"softmax", "bnst->bnst", "'reduce':'t','causal':true,'scale':0.5", "b2n3s7t7", 0, {0},
     false, DX, 0},
    {"softmax", "bnst->bnst", "'reduce':'t','causal':true,'scale':0.5", "b2n3s7t7", 's',
     {3, 4}, false, DX, 0},
    {"softmax", "bst->bst", "'reduce':'t','causal':true", "b1s33t33", 's', {16, 17}, false, DX, 0},
    {"softmax", "tbs->tbs", "'reduce':'t'", "t5b3s4", 0, {0}, false, DX, 0},
    {"softmax", "st->st", "'reduce':'t','scale':0.125", "s3t1500", 0, {0}, false, DX, 0},
    {"softmax", "st->st", "'reduce':'t'", "s2t17000", 0, {0}, false, DX, 0},
    {"softmax", "st->st", "'reduce':'t'", "s2t3", 0, {0}, false, DX, SP_NEG_INF_ROW},
    {"softmax", "bnst->bnst", "'reduce':'t'", "b1n1s1t1", 0, {0}, false, DX, 0},
    {"softmax", "bnst->bnst", "'reduce':'t'", "b2n3s7t7", 'b', {1, 1}, false, 0, 0},
};

static const Case ce_cases[] = {
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 0, {0}, false, DX, 0},
    {"cross_entropy", "nk,n->", "'reduce':'k'", "n6k9", 0, {0}, false, DX, 0},
    {"cross_entropy", "bsv,sb->", "'reduce':'v'", "b3s5v11", 0, {0}, false, DX, 0},
    {"cross_entropy", "vbs,sb->", "'reduce':'v'", "b3s7v33", 0, {0}, false, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b1s1v1", 0, {0}, false, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b2s3v2000", 0, {0}, false, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b1s3v20000", 0, {0}, false, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 'b', {1, 2}, false, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 'v', {5, 6}, true, DX, 0},
    {"cross_entropy", "bsv,sb->", "'reduce':'v'", "b3s5v33", 'v', {7, 1, 25}, true, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b1s4v20000", 'v', {9000, 11000}, true, DX, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 'v', {5, 6}, true, 0, 0},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 0, {0}, false, DX, SP_BAD_LABEL},
    {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 'v', {5, 6}, true, DX, SP_BAD_LABEL},
};

#define NCASES(a) (sizeof(a) / sizeof *(a))

static void check_cases(const Case *cases, size_t n, const Impl *im)
{
    for (size_t i = 0; i < n; i++) check_case(&cases[i], im);
}

/* ----------------------------------------------------------------------------
 * CPU part: the emulation with 1, 3 and 32 lanes per row */

static const int lanes[] = {1, 3, 32};

static void emu_all(const Case *cases, size_t n)
{
    for (size_t i = 0; i < sizeof lanes / sizeof *lanes; i++) {
        Impl im = {"emulation", emu_fwd, emu_bwd, false, {NULL}};
        char name[32];
        snprintf(name, sizeof name, "emulation, %d lanes", lanes[i]);
        im.name = name;
        for (int r = 0; r < MAX_RANKS; r++) im.ctx[r] = (void *)&lanes[i];
        check_cases(cases, n, &im);
    }
}

static void test_emu_layernorm(void **state)
{
    (void)state;
    emu_all(layernorm_cases, NCASES(layernorm_cases));
}

static void test_emu_batchnorm(void **state)
{
    (void)state;
    emu_all(batchnorm_cases, NCASES(batchnorm_cases));
}

static void test_emu_softmax(void **state)
{
    (void)state;
    emu_all(softmax_cases, NCASES(softmax_cases));
}

static void test_emu_cross_entropy(void **state)
{
    (void)state;
    emu_all(ce_cases, NCASES(ce_cases));
}

/* The geometry merges what is contiguous in every operand and keeps apart
 * what is not. */
static void test_geometry(void **state)
{
    (void)state;
    int64_t size[26] = {0};
    size['b' - 'a'] = 3, size['s' - 'a'] = 5, size['h' - 'a'] = 7, size['n' - 'a'] = 1;
    NbGeo g;
    const char *ln[3] = {"bsh", "h", "bsh"};
    nb_geo_init(&g, ln, 3, 1u << ('h' - 'a'), size);
    assert_int_equal(g.nod, 1);              /* b, s merge: one row index */
    assert_int_equal(g.rows, 15);
    assert_int_equal(g.nid, 1);
    assert_int_equal(g.n, 7);
    assert_int_equal(g.ost[0][0], 7);
    assert_int_equal(g.ost[1][0], 0);
    const char *bhs[2] = {"bhs", "bhs"};
    nb_geo_init(&g, bhs, 2, 1u << ('h' - 'a'), size);
    assert_int_equal(g.nod, 2);              /* b and s are apart */
    assert_int_equal(g.ist[0][0], 5);
    assert_int_equal(nb_outer(&g, 0, 7), 1 * 35 + 2);  /* b 1, s 2 */
    const char *nb[2] = {"bns", "sb"};       /* n of size 1 dropped; s, b apart in labels */
    nb_geo_init(&g, nb, 2, 1u << ('s' - 'a'), size);
    assert_int_equal(g.nod, 1);
    assert_int_equal(g.nid, 1);
    assert_int_equal(nb_inner(&g, 1, 4), 12);
}

/* ----------------------------------------------------------------------------
 * GPU part */

#ifdef HAVE_CUDA
static CuCtx *gpu_ctx[MAX_RANKS];
static char no_gpu[512];          /* why the GPU tests are skipped; empty when they run */

static int gpu_setup(void **state)
{
    (void)state;
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess || n < 1) {
        snprintf(no_gpu, sizeof no_gpu, "no CUDA device (%s)",
                 rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
        print_message("GPU tests skipped: %s\n", no_gpu);
        return 0;
    }
    for (int r = 0; r < MAX_RANKS; r++) {
        Err err = {{0}};
        if (!(gpu_ctx[r] = cuk_new(&err))) {
            snprintf(no_gpu, sizeof no_gpu, "cuk_new: %.400s", err.msg);
            print_message("GPU tests skipped: %s\n", no_gpu);
            return 0;
        }
    }
    return 0;
}

static int gpu_teardown(void **state)
{
    (void)state;
    for (int r = 0; r < MAX_RANKS; r++) cuk_free(gpu_ctx[r]), gpu_ctx[r] = NULL;
    return 0;
}

static void gpu_all(const Case *cases, size_t n)
{
    if (no_gpu[0]) skip();
    Impl im = {"gpu", gpu_fwd, gpu_bwd, true, {NULL}};
    for (int r = 0; r < MAX_RANKS; r++) im.ctx[r] = gpu_ctx[r];
    check_cases(cases, n, &im);
}

static void test_gpu_layernorm(void **state)
{
    (void)state;
    gpu_all(layernorm_cases, NCASES(layernorm_cases));
}

static void test_gpu_batchnorm(void **state)
{
    (void)state;
    gpu_all(batchnorm_cases, NCASES(batchnorm_cases));
}

static void test_gpu_softmax(void **state)
{
    (void)state;
    gpu_all(softmax_cases, NCASES(softmax_cases));
}

static void test_gpu_cross_entropy(void **state)
{
    (void)state;
    gpu_all(ce_cases, NCASES(ce_cases));
}

/* The shape checks of k_norm.c, with its messages. */
static void test_gpu_rejects(void **state)
{
    (void)state;
    if (no_gpu[0]) skip();
    static const Case split_h = {"layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b3s5h8", 'h',
                                 {4, 4}, false, DXGB, 0};
    static const Case split_t = {"softmax", "st->st", "'reduce':'t'", "s3t8", 't', {4, 4},
                                 false, DX, 0};
    static const Case split_v = {"cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11", 'v',
                                 {5, 6}, false, DX, 0};
    Impl im = {"gpu", gpu_fwd, gpu_bwd, true, {NULL}};
    for (int r = 0; r < MAX_RANKS; r++) im.ctx[r] = gpu_ctx[r];
    check_case(&split_h, &im);
    check_case(&split_t, &im);
    check_case(&split_v, &im);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_emu_layernorm),
        cmocka_unit_test(test_emu_batchnorm),
        cmocka_unit_test(test_emu_softmax),
        cmocka_unit_test(test_emu_cross_entropy),
#ifdef HAVE_CUDA
        cmocka_unit_test(test_gpu_layernorm),
        cmocka_unit_test(test_gpu_batchnorm),
        cmocka_unit_test(test_gpu_softmax),
        cmocka_unit_test(test_gpu_cross_entropy),
        cmocka_unit_test(test_gpu_rejects),
#endif
    };
#ifdef HAVE_CUDA
    return cmocka_run_group_tests(tests, gpu_setup, gpu_teardown);
#else
    print_message("GPU tests skipped: strata was built without CUDA\n");
    return cmocka_run_group_tests(tests, NULL, NULL);
#endif
}
