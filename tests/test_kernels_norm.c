/*
 * test_kernels_norm.c — the normalising kernels (layernorm, batchnorm,
 * softmax, cross_entropy, route), the optimizers, gradient compression and
 * the deterministic initialisers, on the CPU in fp32.
 *
 * Every forward is checked against a plain double-precision reference on odd
 * shapes; every backward against central finite differences of that
 * reference (in double, so the differences are exact to ~1e-9 and the
 * tolerance measures the kernel, not the check). Sharded runs split a
 * reduce letter over two ranks, run as two threads whose KernelStats
 * all-reduce through a barrier, and must reproduce the unsplit run.
 *
 * Legend: R, C = rows, columns of a reference's [R][C] layout; T = tokens,
 * V = classes; N, Cc, HW = batch, channels, pixels of batchnorm.
 */
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

#include "executor/kernels_internal.h"
#include "ir/graph.h"
#include "ir/util.h"

/* ----------------------------------------------------------------------------
 * Helpers: one-op graphs, shapes, random data, comparisons */

/* A graph with one op of `kind` whose operand shapes follow from `spec` and
 * the letter sizes in `sizes` ("b3s5h7"). `attrs` is extra JSON for the op
 * ("'reduce':'h'", single quotes). Float operands are params, cross_entropy's
 * labels are i32 labels. */
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
    int k = 0;
    for (;;) {
        const char *e = s;
        while (*e && *e != ',' && *e != '-') e++;
        bool out = *s == '>';
        if (out) s++, e = s + strlen(s);
        char name[16];
        snprintf(name, sizeof name, out ? "y" : "in%d", k);
        bool labels = !out && k == 1 && strcmp(kind, "cross_entropy") == 0;
        /* params carry no batch dim, so any label layout ("sb") is accepted */
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
        k++;
        if (out) break;
        s = *e == ',' ? e + 1 : e + 1; /* past ',' or onto '>' of "->" */
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

static void shape_whole(KernelShape *ks, const Op *op)
{
    memset(ks, 0, sizeof *ks);
    ks->op = op;
    for (int l = 0; l < IR_LETTERS; l++) ks->size[l] = ks->total[l] = op->size[l];
}

static int L(char c) { return c - 'a'; }

static uint64_t rng_state = 0x1234567;

static double urand(void) /* [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-52 - 1;
}

static float *frand(int64_t n, double lo, double hi)
{
    float *x = xmalloc(sizeof *x * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * (urand() + 1) / 2);
    return x;
}

static double *to_double(const float *x, int64_t n)
{
    double *d = xmalloc(sizeof *d * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static void fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_at(const char *file, int line, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fail_msg("%s:%d: %s", file, line, buf);
}

/* |got - want| <= atol + rtol * |want| everywhere, else a message with the
 * first index that fails. */
static void check_close_(const float *got, const double *want, int64_t n, double rtol,
                         double atol, const char *what, const char *file, int line)
{
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (!(d <= atol + rtol * fabs(want[i])))
            fail_at(file, line, "%s[%lld]: got %.9g, want %.9g (diff %.3g)", what,
                         (long long)i, got[i], want[i], d);
    }
}
#define check_close(got, want, n, rtol, atol, what) \
    check_close_(got, want, n, rtol, atol, what, __FILE__, __LINE__)

/* Same check, float against float. */
static void check_same_(const float *got, const float *want, int64_t n, double tol,
                        const char *what, const char *file, int line)
{
    double *w = to_double(want, n);
    check_close_(got, w, n, tol, tol, what, file, line);
    free(w);
}
#define check_same(got, want, n, tol, what) check_same_(got, want, n, tol, what, __FILE__, __LINE__)

/* Central differences of a double objective f over in[k] (n elements). */
typedef double (*Objective)(double *const *in, const void *ctx);

static double *fd_grad(Objective f, const void *ctx, double *const *in, int k, int64_t n)
{
    const double h = 1e-5;
    double *g = xmalloc(sizeof *g * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) {
        double save = in[k][i];
        in[k][i] = save + h;
        double fp = f(in, ctx);
        in[k][i] = save - h;
        double fm = f(in, ctx);
        in[k][i] = save;
        g[i] = (fp - fm) / (2 * h);
    }
    return g;
}

/* din after backward minus what it held before (the kernels add). */
static void sub_prefill(float *d, const float *pre, int64_t n)
{
    for (int64_t i = 0; i < n; i++) d[i] -= pre[i];
}

static float *fcopy(const float *x, int64_t n)
{
    float *y = xmalloc(sizeof *y * (size_t)(n ? n : 1));
    memcpy(y, x, sizeof *y * (size_t)n);
    return y;
}

/* ----------------------------------------------------------------------------
 * Two ranks as threads: KernelStats all-reduce through a barrier, summing in
 * rank order on every rank (so all ranks get bit-identical results). */

#define MAX_RANKS 4

typedef struct {
    pthread_barrier_t bar;
    int nranks;
    float *slot[MAX_RANKS];
    int64_t n[MAX_RANKS];
} Group;

typedef struct {
    Group *g;
    int rank;
    int nsum, nmax;               /* calls made */
    int64_t sum_floats;           /* floats all-reduced by sum */
} RankCtx;

static int group_reduce(RankCtx *c, float *buf, int64_t n, bool max, Err *err)
{
    Group *g = c->g;
    g->slot[c->rank] = buf;
    g->n[c->rank] = n;
    pthread_barrier_wait(&g->bar);
    int rc = 0;
    for (int r = 0; r < g->nranks; r++)
        if (g->n[r] != n) rc = err_set(err, "rank %d reduces %lld floats, rank %d %lld", c->rank,
                                       (long long)n, r, (long long)g->n[r]);
    float *tmp = xmalloc(sizeof *tmp * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n && !rc; i++) {
        float a = g->slot[0][i];
        for (int r = 1; r < g->nranks; r++) a = max ? fmaxf(a, g->slot[r][i]) : a + g->slot[r][i];
        tmp[i] = a;
    }
    pthread_barrier_wait(&g->bar); /* all have read every slot before any is overwritten */
    if (!rc) memcpy(buf, tmp, sizeof *tmp * (size_t)n);
    free(tmp);
    return rc;
}

static int cb_sum(void *ctx, float *buf, int64_t n, Err *err)
{
    RankCtx *c = ctx;
    c->nsum++;
    c->sum_floats += n;
    return group_reduce(c, buf, n, false, err);
}

static int cb_max(void *ctx, float *buf, int64_t n, Err *err)
{
    RankCtx *c = ctx;
    c->nmax++;
    return group_reduce(c, buf, n, true, err);
}

typedef int (*RankFn)(void *arg, int rank, const KernelStats *st, Err *err);

typedef struct {
    RankFn fn;
    void *arg;
    RankCtx ctx;
    KernelStats st;
    Err err;
    int rc;
} RankThread;

static void *rank_main(void *p)
{
    RankThread *t = p;
    t->rc = t->fn(t->arg, t->ctx.rank, &t->st, &t->err);
    return NULL;
}

/* Runs fn on n ranks at once; fails the test on any rank's error. Fills
 * calls[r] with rank r's counters when calls is not NULL. */
static void run_ranks(int n, RankFn fn, void *arg, RankCtx *calls)
{
    Group g = {.nranks = n};
    pthread_barrier_init(&g.bar, NULL, (unsigned)n);
    RankThread t[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    for (int r = 0; r < n; r++) {
        memset(&t[r], 0, sizeof t[r]);
        t[r].fn = fn;
        t[r].arg = arg;
        t[r].ctx.g = &g;
        t[r].ctx.rank = r;
        t[r].st = (KernelStats){.sum = cb_sum, .max = cb_max, .ctx = &t[r].ctx};
        pthread_create(&th[r], NULL, rank_main, &t[r]);
    }
    for (int r = 0; r < n; r++) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&g.bar);
    for (int r = 0; r < n; r++) {
        if (t[r].rc) fail_msg("rank %d: %s", r, t[r].err.msg);
        if (calls) calls[r] = t[r].ctx;
    }
}

/* ----------------------------------------------------------------------------
 * layernorm: reference on [R][C] rows, C the normalised letters */

typedef struct {
    int64_t R, C;
    bool g, b;
    const double *w;   /* objective weights on the output */
} NormCtx;

static void ref_layernorm(const double *x, const double *g, const double *b, int64_t R, int64_t C,
                          double *y)
{
    for (int64_t r = 0; r < R; r++) {
        const double *xr = x + r * C;
        double m = 0, v = 0;
        for (int64_t c = 0; c < C; c++) m += xr[c];
        m /= (double)C;
        for (int64_t c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
        v /= (double)C;
        for (int64_t c = 0; c < C; c++)
            y[r * C + c] = (xr[c] - m) / sqrt(v + 1e-5) * (g ? g[c] : 1) + (b ? b[c] : 0);
    }
}

static double obj_layernorm(double *const *in, const void *p)
{
    const NormCtx *c = p;
    double *y = xmalloc(sizeof *y * (size_t)(c->R * c->C));
    ref_layernorm(in[0], c->g ? in[1] : NULL, c->b ? in[2] : NULL, c->R, c->C, y);
    double s = 0;
    for (int64_t i = 0; i < c->R * c->C; i++) s += c->w[i] * y[i];
    free(y);
    return s;
}

/* "bsh,h,h->bsh" (and without gamma, beta): forward, backward against
 * finite differences, accumulation into din. */
static void layernorm_case(int nin)
{
    const char *spec = nin == 3 ? "bsh,h,h->bsh" : "bsh->bsh";
    Graph *g = op_graph("layernorm", spec, "'reduce':'h'", "b3s5h7");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int64_t R = 15, C = 7;
    float *x = frand(R * C, -2, 3), *ga = frand(C, 0.5, 1.5), *be = frand(C, -1, 1);
    float *y = xmalloc(sizeof *y * R * C);
    Err err = {{0}};
    const void *in[3] = {x, ga, be};
    assert_int_equal(k_layernorm_fwd(&ks, in, y, &err), 0);

    double *xd = to_double(x, R * C), *gd = to_double(ga, C), *bd = to_double(be, C);
    double *want = xmalloc(sizeof *want * R * C);
    ref_layernorm(xd, nin == 3 ? gd : NULL, nin == 3 ? bd : NULL, R, C, want);
    check_close(y, want, R * C, 1e-5, 1e-5, "layernorm y");

    float *dy = frand(R * C, -1, 1);
    float *pre_x = frand(R * C, -1, 1), *pre_g = frand(C, -1, 1), *pre_b = frand(C, -1, 1);
    float *dx = fcopy(pre_x, R * C), *dg = fcopy(pre_g, C), *db = fcopy(pre_b, C);
    float *din[3] = {dx, dg, db};
    assert_int_equal(k_layernorm_bwd(&ks, in, y, dy, din, &err), 0);
    sub_prefill(dx, pre_x, R * C);
    sub_prefill(dg, pre_g, C);
    sub_prefill(db, pre_b, C);

    double *dyd = to_double(dy, R * C);
    NormCtx c = {R, C, nin == 3, nin == 3, dyd};
    double *ind[3] = {xd, gd, bd};
    double *fx = fd_grad(obj_layernorm, &c, ind, 0, R * C);
    check_close(dx, fx, R * C, 1e-4, 1e-5, "layernorm dx");
    if (nin == 3) {
        double *fg = fd_grad(obj_layernorm, &c, ind, 1, C), *fb = fd_grad(obj_layernorm, &c, ind, 2, C);
        check_close(dg, fg, C, 1e-4, 1e-5, "layernorm dgamma");
        check_close(db, fb, C, 1e-4, 1e-5, "layernorm dbeta");
        free(fg);
        free(fb);
    }
    free(fx);
    free(dyd);
    free(want);
    free(xd), free(gd), free(bd);
    free(x), free(ga), free(be), free(y), free(dy);
    free(pre_x), free(pre_g), free(pre_b), free(dx), free(dg), free(db);
    graph_free(g);
}

static void test_layernorm(void **state)
{
    (void)state;
    layernorm_case(3);
    layernorm_case(1);
}

/* The normalised letter in the middle ("bhs") and two normalised letters
 * ("bsh" over s,h with gamma "sh") agree with the same data laid out as
 * [rows][normalised] for the reference. */
static void test_layernorm_layouts(void **state)
{
    (void)state;
    Err err = {{0}};
    /* "bhs,h,h->bhs": b3 h7 s5 */
    {
        Graph *g = op_graph("layernorm", "bhs,h,h->bhs", "'reduce':'h'", "b3s5h7");
        KernelShape ks;
        shape_whole(&ks, &g->ops[0]);
        const int64_t B = 3, H = 7, S = 5;
        float *x = frand(B * H * S, -1, 2), *ga = frand(H, 0.5, 1.5), *be = frand(H, -1, 1);
        float *y = xmalloc(sizeof *y * B * H * S);
        const void *in[3] = {x, ga, be};
        assert_int_equal(k_layernorm_fwd(&ks, in, y, &err), 0);
        double *xr = xmalloc(sizeof *xr * B * S * H), *yr = xmalloc(sizeof *yr * B * S * H);
        double *gd = to_double(ga, H), *bd = to_double(be, H);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t s = 0; s < S; s++) xr[(b * S + s) * H + h] = x[(b * H + h) * S + s];
        ref_layernorm(xr, gd, bd, B * S, H, yr);
        double *want = xmalloc(sizeof *want * B * H * S);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t s = 0; s < S; s++) want[(b * H + h) * S + s] = yr[(b * S + s) * H + h];
        check_close(y, want, B * H * S, 1e-5, 1e-5, "layernorm bhs y");
        free(x), free(ga), free(be), free(y), free(xr), free(yr), free(gd), free(bd), free(want);
        graph_free(g);
    }
    /* "bsh,sh,sh->bsh" over s and h: rows b, the normalised block s*h */
    {
        Graph *g = op_graph("layernorm", "bsh,sh,sh->bsh", "'reduce':'sh'", "b3s5h7");
        KernelShape ks;
        shape_whole(&ks, &g->ops[0]);
        const int64_t R = 3, C = 35;
        float *x = frand(R * C, -1, 2), *ga = frand(C, 0.5, 1.5), *be = frand(C, -1, 1);
        float *y = xmalloc(sizeof *y * R * C);
        const void *in[3] = {x, ga, be};
        assert_int_equal(k_layernorm_fwd(&ks, in, y, &err), 0);
        double *xd = to_double(x, R * C), *gd = to_double(ga, C), *bd = to_double(be, C);
        double *want = xmalloc(sizeof *want * R * C);
        ref_layernorm(xd, gd, bd, R, C, want);
        check_close(y, want, R * C, 1e-5, 1e-5, "layernorm sh y");

        float *dy = frand(R * C, -1, 1), *dx = calloc(R * C, sizeof *dx);
        float *dg = calloc(C, sizeof *dg), *db = calloc(C, sizeof *db);
        float *din[3] = {dx, dg, db};
        assert_int_equal(k_layernorm_bwd(&ks, in, y, dy, din, &err), 0);
        double *dyd = to_double(dy, R * C);
        NormCtx c = {R, C, true, true, dyd};
        double *ind[3] = {xd, gd, bd};
        double *fx = fd_grad(obj_layernorm, &c, ind, 0, R * C), *fg = fd_grad(obj_layernorm, &c, ind, 1, C);
        check_close(dx, fx, R * C, 1e-4, 1e-5, "layernorm sh dx");
        check_close(dg, fg, C, 1e-4, 1e-5, "layernorm sh dgamma");
        free(fx), free(fg), free(dyd), free(dy), free(dx), free(dg), free(db);
        free(x), free(ga), free(be), free(y), free(xd), free(gd), free(bd), free(want);
        graph_free(g);
    }
}

static void test_layernorm_rejects_split(void **state)
{
    (void)state;
    Graph *g = op_graph("layernorm", "bsh,h,h->bsh", "'reduce':'h'", "b3s5h8");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    ks.size[L('h')] = 4;
    float x[60] = {0}, ga[4] = {0}, be[4] = {0}, y[60];
    const void *in[3] = {x, ga, be};
    Err err = {{0}};
    assert_int_equal(k_layernorm_fwd(&ks, in, y, &err), -1);
    assert_non_null(strstr(err.msg, "'h'"));
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * batchnorm "nchw,c,c->nchw": reference on [N][Cc][HW] */

typedef struct {
    int64_t N, Cc, HW;
    bool affine;
    const double *w;
} BnCtx;

static void ref_batchnorm(const double *x, const double *g, const double *b, int64_t N, int64_t Cc,
                          int64_t HW, double *y)
{
    for (int64_t c = 0; c < Cc; c++) {
        double m = 0, v = 0, cnt = (double)(N * HW);
        for (int64_t n = 0; n < N; n++)
            for (int64_t p = 0; p < HW; p++) m += x[(n * Cc + c) * HW + p];
        m /= cnt;
        for (int64_t n = 0; n < N; n++)
            for (int64_t p = 0; p < HW; p++) {
                double d = x[(n * Cc + c) * HW + p] - m;
                v += d * d;
            }
        v /= cnt;
        for (int64_t n = 0; n < N; n++)
            for (int64_t p = 0; p < HW; p++) {
                int64_t i = (n * Cc + c) * HW + p;
                y[i] = (x[i] - m) / sqrt(v + 1e-5) * (g ? g[c] : 1) + (b ? b[c] : 0);
            }
    }
}

static double obj_batchnorm(double *const *in, const void *p)
{
    const BnCtx *c = p;
    int64_t n = c->N * c->Cc * c->HW;
    double *y = xmalloc(sizeof *y * (size_t)n);
    ref_batchnorm(in[0], c->affine ? in[1] : NULL, c->affine ? in[2] : NULL, c->N, c->Cc, c->HW, y);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += c->w[i] * y[i];
    free(y);
    return s;
}

enum { BN_N = 5, BN_C = 3, BN_H = 3, BN_W = 5, BN_HW = BN_H * BN_W, BN_NUM = BN_N * BN_C * BN_HW };

static void test_batchnorm(void **state)
{
    (void)state;
    for (int affine = 1; affine >= 0; affine--) {
        Graph *g = op_graph("batchnorm", affine ? "nchw,c,c->nchw" : "nchw->nchw",
                            "'reduce':'nhw'", "n5c3h3w5");
        KernelShape ks;
        shape_whole(&ks, &g->ops[0]);
        float *x = frand(BN_NUM, -1, 3), *ga = frand(BN_C, 0.5, 1.5), *be = frand(BN_C, -1, 1);
        float *y = xmalloc(sizeof *y * BN_NUM);
        Err err = {{0}};
        const void *in[3] = {x, ga, be};
        assert_int_equal(k_batchnorm_fwd(&ks, in, y, &err), 0);
        double *xd = to_double(x, BN_NUM), *gd = to_double(ga, BN_C), *bd = to_double(be, BN_C);
        double *want = xmalloc(sizeof *want * BN_NUM);
        ref_batchnorm(xd, affine ? gd : NULL, affine ? bd : NULL, BN_N, BN_C, BN_HW, want);
        check_close(y, want, BN_NUM, 1e-5, 1e-5, "batchnorm y");

        float *dy = frand(BN_NUM, -1, 1), *pre = frand(BN_NUM, -1, 1);
        float *dx = fcopy(pre, BN_NUM), *dg = calloc(BN_C, sizeof *dg), *db = calloc(BN_C, sizeof *db);
        float *din[3] = {dx, dg, db};
        assert_int_equal(k_batchnorm_bwd(&ks, in, y, dy, din, &err), 0);
        sub_prefill(dx, pre, BN_NUM);
        double *dyd = to_double(dy, BN_NUM);
        BnCtx c = {BN_N, BN_C, BN_HW, affine, dyd};
        double *ind[3] = {xd, gd, bd};
        double *fx = fd_grad(obj_batchnorm, &c, ind, 0, BN_NUM);
        check_close(dx, fx, BN_NUM, 1e-4, 1e-5, "batchnorm dx");
        if (affine) {
            double *fg = fd_grad(obj_batchnorm, &c, ind, 1, BN_C), *fb = fd_grad(obj_batchnorm, &c, ind, 2, BN_C);
            check_close(dg, fg, BN_C, 1e-4, 1e-5, "batchnorm dgamma");
            check_close(db, fb, BN_C, 1e-4, 1e-5, "batchnorm dbeta");
            free(fg), free(fb);
        }
        free(fx), free(dyd), free(dy), free(pre), free(dx), free(dg), free(db);
        free(x), free(ga), free(be), free(y), free(xd), free(gd), free(bd), free(want);
        graph_free(g);
    }
}

/* Synchronised batchnorm: the batch n = 5 split 2 + 3 over two ranks. The
 * outputs and dx of both halves equal the unsplit ones at their rows; dgamma
 * and dbeta are partial sums that add up to the unsplit ones; one all-reduce
 * per phase, as the lowering counts. */
typedef struct {
    const Op *op;
    const float *x, *ga, *be, *dy;
    int64_t n0[2], nl[2];
    float *y, *dx, *dg[2], *db[2];
} BnSplit;

static int bn_rank(void *arg, int r, const KernelStats *st, Err *err)
{
    BnSplit *a = arg;
    KernelShape ks;
    shape_whole(&ks, a->op);
    ks.size[L('n')] = a->nl[r];
    ks.off[L('n')] = a->n0[r];
    ks.stats = st;
    int64_t base = a->n0[r] * BN_C * BN_HW;
    const void *in[3] = {a->x + base, a->ga, a->be};
    if (k_batchnorm_fwd(&ks, in, a->y + base, err)) return -1;
    float *din[3] = {a->dx + base, a->dg[r], a->db[r]};
    return k_batchnorm_bwd(&ks, in, a->y + base, a->dy + base, din, err);
}

static void test_batchnorm_split(void **state)
{
    (void)state;
    Graph *g = op_graph("batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n5c3h3w5");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    float *x = frand(BN_NUM, -1, 3), *ga = frand(BN_C, 0.5, 1.5), *be = frand(BN_C, -1, 1);
    float *dy = frand(BN_NUM, -1, 1);
    float *y = xmalloc(sizeof *y * BN_NUM), *dx = calloc(BN_NUM, sizeof *dx);
    float dg[BN_C] = {0}, db[BN_C] = {0};
    Err err = {{0}};
    const void *in[3] = {x, ga, be};
    float *din[3] = {dx, dg, db};
    assert_int_equal(k_batchnorm_fwd(&ks, in, y, &err), 0);
    assert_int_equal(k_batchnorm_bwd(&ks, in, y, dy, din, &err), 0);

    float dg2[2][BN_C] = {{0}}, db2[2][BN_C] = {{0}};
    BnSplit a = {.op = &g->ops[0], .x = x, .ga = ga, .be = be, .dy = dy,
                 .n0 = {0, 2}, .nl = {2, 3},
                 .y = xmalloc(sizeof(float) * BN_NUM), .dx = calloc(BN_NUM, sizeof(float)),
                 .dg = {dg2[0], dg2[1]}, .db = {db2[0], db2[1]}};
    RankCtx calls[2];
    run_ranks(2, bn_rank, &a, calls);
    check_same(a.y, y, BN_NUM, 1e-5, "split batchnorm y");
    check_same(a.dx, dx, BN_NUM, 1e-5, "split batchnorm dx");
    float dgs[BN_C], dbs[BN_C];
    for (int c = 0; c < BN_C; c++) dgs[c] = dg2[0][c] + dg2[1][c], dbs[c] = db2[0][c] + db2[1][c];
    check_same(dgs, dg, BN_C, 1e-5, "split batchnorm dgamma (sum of partials)");
    check_same(dbs, db, BN_C, 1e-5, "split batchnorm dbeta (sum of partials)");
    for (int r = 0; r < 2; r++) {
        assert_int_equal(calls[r].nsum, 2);  /* one forward, one backward */
        assert_int_equal(calls[r].nmax, 0);
    }
    free(a.y), free(a.dx);
    free(x), free(ga), free(be), free(dy), free(y), free(dx);
    graph_free(g);
}

/* A split batch without stats normalises each half by its own statistics
 * (per-replica batch norm): the first half equals an unsplit run on it. */
static void test_batchnorm_local(void **state)
{
    (void)state;
    Graph *g = op_graph("batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n5c3h3w5");
    Graph *g2 = op_graph("batchnorm", "nchw,c,c->nchw", "'reduce':'nhw'", "n2c3h3w5");
    KernelShape ks, ks2;
    shape_whole(&ks, &g->ops[0]);
    ks.size[L('n')] = 2;
    shape_whole(&ks2, &g2->ops[0]);
    float *x = frand(2 * BN_C * BN_HW, -1, 1), ga[BN_C] = {1, 2, 3}, be[BN_C] = {0, 1, 0};
    float *y = xmalloc(sizeof *y * 2 * BN_C * BN_HW), *y2 = xmalloc(sizeof *y2 * 2 * BN_C * BN_HW);
    const void *in[3] = {x, ga, be};
    Err err = {{0}};
    assert_int_equal(k_batchnorm_fwd(&ks, in, y, &err), 0);
    assert_int_equal(k_batchnorm_fwd(&ks2, in, y2, &err), 0);
    check_same(y, y2, 2 * BN_C * BN_HW, 1e-6, "local batchnorm");
    free(x), free(y), free(y2);
    graph_free(g);
    graph_free(g2);
}

/* ----------------------------------------------------------------------------
 * softmax: reference on [R][C] rows; causal rows know their s position */

typedef struct {
    int64_t R, C, S;       /* S: rows cycle through s positions 0..S-1 (causal) */
    double scale;
    bool causal;
    const double *w;
} SmCtx;

static void ref_softmax(const double *x, const SmCtx *c, double *y)
{
    for (int64_t r = 0; r < c->R; r++) {
        int64_t lim = c->causal ? r % c->S + 1 : c->C;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < lim; j++) m = fmax(m, c->scale * x[r * c->C + j]);
        for (int64_t j = 0; j < lim; j++) s += exp(c->scale * x[r * c->C + j] - m);
        for (int64_t j = 0; j < c->C; j++)
            y[r * c->C + j] = j < lim ? exp(c->scale * x[r * c->C + j] - m) / s : 0;
    }
}

static double obj_softmax(double *const *in, const void *p)
{
    const SmCtx *c = p;
    double *y = xmalloc(sizeof *y * (size_t)(c->R * c->C));
    ref_softmax(in[0], c, y);
    double s = 0;
    for (int64_t i = 0; i < c->R * c->C; i++) s += c->w[i] * y[i];
    free(y);
    return s;
}

static void softmax_case(bool causal)
{
    Graph *g = op_graph("softmax", "bnst->bnst",
                        causal ? "'reduce':'t','causal':true,'scale':0.5" : "'reduce':'t','scale':0.5",
                        "b2n3s7t7");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int64_t R = 2 * 3 * 7, C = 7, n = R * C;
    float *x = frand(n, -3, 3), *y = xmalloc(sizeof *y * n);
    Err err = {{0}};
    const void *in[1] = {x};
    assert_int_equal(k_softmax_fwd(&ks, in, y, &err), 0);
    double *xd = to_double(x, n), *want = xmalloc(sizeof *want * n);
    SmCtx c = {R, C, 7, 0.5, causal, NULL};
    ref_softmax(xd, &c, want);
    check_close(y, want, n, 1e-5, 1e-6, causal ? "causal softmax y" : "softmax y");

    float *dy = frand(n, -1, 1), *pre = frand(n, -1, 1), *dx = fcopy(pre, n);
    float *din[1] = {dx};
    assert_int_equal(k_softmax_bwd(&ks, in, y, dy, din, &err), 0);
    sub_prefill(dx, pre, n);
    double *dyd = to_double(dy, n);
    c.w = dyd;
    double *ind[1] = {xd};
    double *fx = fd_grad(obj_softmax, &c, ind, 0, n);
    check_close(dx, fx, n, 1e-4, 1e-6, causal ? "causal softmax dx" : "softmax dx");
    free(fx), free(dyd), free(dy), free(pre), free(dx), free(x), free(y), free(xd), free(want);
    graph_free(g);
}

static void test_softmax(void **state)
{
    (void)state;
    softmax_case(false);
    softmax_case(true);
    /* a row of -inf (a fully masked score row) gives zeros, not NaN */
    Graph *g = op_graph("softmax", "st->st", "'reduce':'t'", "s2t3");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    float x[6] = {-INFINITY, -INFINITY, -INFINITY, 0, 0, 0}, y[6];
    const void *in[1] = {x};
    Err err = {{0}};
    assert_int_equal(k_softmax_fwd(&ks, in, y, &err), 0);
    for (int j = 0; j < 3; j++) assert_true(y[j] == 0 && fabsf(y[3 + j] - 1.0f / 3) < 1e-7f);
    graph_free(g);
}

/* Reduce letter first ("tbs", reduce t): the walk handles strided rows. */
static void test_softmax_strided(void **state)
{
    (void)state;
    Graph *g = op_graph("softmax", "tbs->tbs", "'reduce':'t'", "t5b3s4");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int64_t T = 5, R = 12, n = T * R;
    float *x = frand(n, -2, 2), *y = xmalloc(sizeof *y * n);
    Err err = {{0}};
    const void *in[1] = {x};
    assert_int_equal(k_softmax_fwd(&ks, in, y, &err), 0);
    double *xt = xmalloc(sizeof *xt * n), *yt = xmalloc(sizeof *yt * n), *want = xmalloc(sizeof *want * n);
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < R; r++) xt[r * T + t] = x[t * R + r];
    SmCtx c = {R, T, 1, 1.0, false, NULL};
    ref_softmax(xt, &c, yt);
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < R; r++) want[t * R + r] = yt[r * T + t];
    check_close(y, want, n, 1e-5, 1e-6, "softmax tbs y");
    free(x), free(y), free(xt), free(yt), free(want);
    graph_free(g);
}

/* Causal softmax with s split 3 + 4 (sequence parallelism): each shard's
 * rows equal the whole tensor's rows at the same global s, forward and
 * backward. */
static void test_softmax_causal_split(void **state)
{
    (void)state;
    Graph *g = op_graph("softmax", "bnst->bnst", "'reduce':'t','causal':true,'scale':0.5",
                        "b2n3s7t7");
    const Op *op = &g->ops[0];
    KernelShape ks;
    shape_whole(&ks, op);
    const int64_t BN = 6, S = 7, T = 7, n = BN * S * T;
    float *x = frand(n, -3, 3), *dy = frand(n, -1, 1), *y = xmalloc(sizeof *y * n);
    float *dx = calloc(n, sizeof *dx);
    Err err = {{0}};
    const void *in[1] = {x};
    float *din[1] = {dx};
    assert_int_equal(k_softmax_fwd(&ks, in, y, &err), 0);
    assert_int_equal(k_softmax_bwd(&ks, in, y, dy, din, &err), 0);
    const int64_t s0[2] = {0, 3}, sl[2] = {3, 4};
    for (int r = 0; r < 2; r++) {
        int64_t m = BN * sl[r] * T;
        float *xl = xmalloc(sizeof *xl * m), *dyl = xmalloc(sizeof *dyl * m);
        float *yl = xmalloc(sizeof *yl * m), *dxl = calloc(m, sizeof *dxl);
        float *yw = xmalloc(sizeof *yw * m), *dxw = xmalloc(sizeof *dxw * m);
        for (int64_t bn = 0; bn < BN; bn++)
            for (int64_t s = 0; s < sl[r]; s++)
                for (int64_t t = 0; t < T; t++) {
                    int64_t li = (bn * sl[r] + s) * T + t, gi = (bn * S + s0[r] + s) * T + t;
                    xl[li] = x[gi], dyl[li] = dy[gi], yw[li] = y[gi], dxw[li] = dx[gi];
                }
        KernelShape kl;
        shape_whole(&kl, op);
        kl.size[L('s')] = sl[r];
        kl.off[L('s')] = s0[r];
        const void *inl[1] = {xl};
        float *dinl[1] = {dxl};
        assert_int_equal(k_softmax_fwd(&kl, inl, yl, &err), 0);
        assert_int_equal(k_softmax_bwd(&kl, inl, yl, dyl, dinl, &err), 0);
        check_same(yl, yw, m, 0, "causal softmax shard y");
        check_same(dxl, dxw, m, 0, "causal softmax shard dx");
        free(xl), free(dyl), free(yl), free(dxl), free(yw), free(dxw);
    }
    free(x), free(dy), free(y), free(dx);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * cross_entropy "bsv,bs->": reference on [T][V] */

typedef struct {
    int64_t T, V;
    const int32_t *lab;
    double count, dout;
} CeCtx;

static double ref_ce(const double *x, const CeCtx *c)
{
    double loss = 0;
    for (int64_t t = 0; t < c->T; t++) {
        const double *xr = x + t * c->V;
        double m = -INFINITY, s = 0;
        for (int64_t v = 0; v < c->V; v++) m = fmax(m, xr[v]);
        for (int64_t v = 0; v < c->V; v++) s += exp(xr[v] - m);
        loss += m + log(s) - xr[c->lab[t]];
    }
    return loss / c->count;
}

static double obj_ce(double *const *in, const void *p)
{
    const CeCtx *c = p;
    return c->dout * ref_ce(in[0], c);
}

enum { CE_B = 3, CE_S = 5, CE_T = CE_B * CE_S, CE_V = 11 };

static int32_t *labels_rand(int64_t n, int32_t hi)
{
    int32_t *l = xmalloc(sizeof *l * (size_t)n);
    for (int64_t i = 0; i < n; i++) l[i] = (int32_t)((urand() + 1) / 2 * hi) % hi;
    return l;
}

static void test_cross_entropy(void **state)
{
    (void)state;
    Graph *g = op_graph("cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    float *x = frand(CE_T * CE_V, -4, 4), loss;
    int32_t *lab = labels_rand(CE_T, CE_V);
    lab[0] = 0, lab[1] = CE_V - 1;
    Err err = {{0}};
    const void *in[2] = {x, lab};
    assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss, &err), 0);
    double *xd = to_double(x, CE_T * CE_V);
    CeCtx c = {CE_T, CE_V, lab, CE_T, 0.7};
    double want = ref_ce(xd, &c);
    assert_true(fabs(loss - want) <= 1e-5 * fabs(want));

    float dout = 0.7f, *pre = frand(CE_T * CE_V, -1, 1), *dx = fcopy(pre, CE_T * CE_V);
    float *din[2] = {dx, NULL};
    assert_int_equal(k_cross_entropy_bwd(&ks, in, &loss, &dout, din, &err), 0);
    sub_prefill(dx, pre, CE_T * CE_V);
    double *ind[1] = {xd};
    double *fx = fd_grad(obj_ce, &c, ind, 0, CE_T * CE_V);
    check_close(dx, fx, CE_T * CE_V, 1e-4, 1e-6, "cross_entropy dx");

    /* a label outside the classes is an error naming the op */
    lab[3] = CE_V;
    assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss, &err), -1);
    assert_non_null(strstr(err.msg, "label 11"));
    free(fx), free(pre), free(dx), free(xd), free(x), free(lab);
    graph_free(g);
}

/* "nk,n->" (the CNN form) and labels laid out "sb" under logits "bsv". */
static void test_cross_entropy_layouts(void **state)
{
    (void)state;
    Err err = {{0}};
    {
        Graph *g = op_graph("cross_entropy", "nk,n->", "'reduce':'k'", "n6k9");
        KernelShape ks;
        shape_whole(&ks, &g->ops[0]);
        float *x = frand(54, -2, 2), loss;
        int32_t *lab = labels_rand(6, 9);
        const void *in[2] = {x, lab};
        assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss, &err), 0);
        double *xd = to_double(x, 54);
        CeCtx c = {6, 9, lab, 6, 1};
        assert_true(fabs(loss - ref_ce(xd, &c)) <= 1e-5 * fabs(loss));
        free(x), free(lab), free(xd);
        graph_free(g);
    }
    {
        Graph *g = op_graph("cross_entropy", "bsv,sb->", "'reduce':'v'", "b3s5v11");
        KernelShape ks;
        shape_whole(&ks, &g->ops[0]);
        float *x = frand(CE_T * CE_V, -2, 2), loss;
        int32_t *lab_sb = labels_rand(CE_T, CE_V), lab_bs[CE_T];
        for (int b = 0; b < CE_B; b++)
            for (int s = 0; s < CE_S; s++) lab_bs[b * CE_S + s] = lab_sb[s * CE_B + b];
        const void *in[2] = {x, lab_sb};
        assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss, &err), 0);
        double *xd = to_double(x, CE_T * CE_V);
        CeCtx c = {CE_T, CE_V, lab_bs, CE_T, 1};
        assert_true(fabs(loss - ref_ce(xd, &c)) <= 1e-5 * fabs(loss));
        free(x), free(lab_sb), free(xd);
        graph_free(g);
    }
}

/* Batch split 1 + 2 without stats: the partial losses divide by the global
 * token count, so they add up to the whole loss; dx rows match. */
static void test_cross_entropy_batch_split(void **state)
{
    (void)state;
    Graph *g = op_graph("cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11");
    const Op *op = &g->ops[0];
    KernelShape ks;
    shape_whole(&ks, op);
    float *x = frand(CE_T * CE_V, -4, 4), loss, dout = 1.3f;
    int32_t *lab = labels_rand(CE_T, CE_V);
    float *dx = calloc(CE_T * CE_V, sizeof *dx), *dxs = calloc(CE_T * CE_V, sizeof *dxs);
    Err err = {{0}};
    const void *in[2] = {x, lab};
    float *din[2] = {dx, NULL};
    assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss, &err), 0);
    assert_int_equal(k_cross_entropy_bwd(&ks, in, &loss, &dout, din, &err), 0);
    double sum = 0;
    const int64_t b0[2] = {0, 1}, bl[2] = {1, 2};
    for (int r = 0; r < 2; r++) {
        KernelShape kl;
        shape_whole(&kl, op);
        kl.size[L('b')] = bl[r];
        kl.off[L('b')] = b0[r];
        const void *inl[2] = {x + b0[r] * CE_S * CE_V, lab + b0[r] * CE_S};
        float *dinl[2] = {dxs + b0[r] * CE_S * CE_V, NULL}, part;
        assert_int_equal(k_cross_entropy_fwd(&kl, inl, &part, &err), 0);
        assert_int_equal(k_cross_entropy_bwd(&kl, inl, &part, &dout, dinl, &err), 0);
        sum += part;
    }
    assert_true(fabs(sum - loss) <= 1e-6 * fabs(loss));
    check_same(dxs, dx, CE_T * CE_V, 1e-7, "batch-split cross_entropy dx");
    free(x), free(lab), free(dx), free(dxs);
    graph_free(g);
}

/* Vocabulary-parallel: v = 11 split 5 + 6 over two ranks (Megatron-LM). Both
 * ranks get the whole loss; their dlogits columns equal the unsplit ones.
 * Forward makes three small all-reduces (max, sum of exps, target logit),
 * backward two (the kernel keeps no state between phases). */
typedef struct {
    const Op *op;
    const float *x;
    const int32_t *lab;
    float dout;
    int64_t v0[2], vl[2];
    float loss[2];
    float *dx;          /* [T][V], each rank writes its columns */
} CeSplit;

static int ce_rank(void *arg, int r, const KernelStats *st, Err *err)
{
    CeSplit *a = arg;
    KernelShape ks;
    shape_whole(&ks, a->op);
    ks.size[L('v')] = a->vl[r];
    ks.off[L('v')] = a->v0[r];
    ks.stats = st;
    int64_t vl = a->vl[r];
    float *xl = xmalloc(sizeof *xl * CE_T * (size_t)vl), *dxl = calloc(CE_T * (size_t)vl, sizeof *dxl);
    for (int64_t t = 0; t < CE_T; t++)
        for (int64_t v = 0; v < vl; v++) xl[t * vl + v] = a->x[t * CE_V + a->v0[r] + v];
    const void *in[2] = {xl, a->lab};
    float *din[2] = {dxl, NULL};
    int rc = k_cross_entropy_fwd(&ks, in, &a->loss[r], err);
    if (!rc) rc = k_cross_entropy_bwd(&ks, in, &a->loss[r], &a->dout, din, err);
    for (int64_t t = 0; t < CE_T && !rc; t++)
        for (int64_t v = 0; v < vl; v++) a->dx[t * CE_V + a->v0[r] + v] = dxl[t * vl + v];
    free(xl);
    free(dxl);
    return rc;
}

static void test_cross_entropy_vocab_split(void **state)
{
    (void)state;
    Graph *g = op_graph("cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v11");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    float *x = frand(CE_T * CE_V, -4, 4), loss, dout = 0.9f;
    int32_t *lab = labels_rand(CE_T, CE_V);
    lab[0] = 4, lab[1] = 5, lab[2] = 0, lab[3] = 10;  /* both sides of the cut */
    float *dx = calloc(CE_T * CE_V, sizeof *dx);
    Err err = {{0}};
    const void *in[2] = {x, lab};
    float *din[2] = {dx, NULL};
    assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss, &err), 0);
    assert_int_equal(k_cross_entropy_bwd(&ks, in, &loss, &dout, din, &err), 0);

    CeSplit a = {.op = &g->ops[0], .x = x, .lab = lab, .dout = dout, .v0 = {0, 5}, .vl = {5, 6},
                 .dx = calloc(CE_T * CE_V, sizeof(float))};
    RankCtx calls[2];
    run_ranks(2, ce_rank, &a, calls);
    for (int r = 0; r < 2; r++) {
        assert_true(fabs(a.loss[r] - loss) <= 1e-6 * fabs(loss));
        assert_int_equal(calls[r].nmax, 2);
        assert_int_equal(calls[r].nsum, 3);
        assert_int_equal(calls[r].sum_floats, 3 * CE_T);
    }
    assert_true(a.loss[0] == a.loss[1]);
    check_same(a.dx, dx, CE_T * CE_V, 1e-6, "vocab-split cross_entropy dx");
    free(a.dx), free(x), free(lab), free(dx);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * route "bse->bsec" */

static void ref_route(const float *x, int64_t B, int64_t S, int64_t E, int64_t Cap, float *out)
{
    memset(out, 0, sizeof *out * (size_t)(B * S * E * Cap));
    for (int64_t b = 0; b < B; b++) {
        int64_t used[16] = {0};
        for (int64_t s = 0; s < S; s++) {
            const float *xr = x + (b * S + s) * E;
            int64_t e = 0;
            for (int64_t k = 1; k < E; k++)
                if (xr[k] > xr[e]) e = k;
            int64_t c = used[e]++;
            if (c < Cap) out[((b * S + s) * E + e) * Cap + c] = 1;
        }
    }
}

static void test_route(void **state)
{
    (void)state;
    Graph *g = op_graph("route", "bse->bsec", "'reduce':'e'", "b2s9e3c2");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    enum { B = 2, S = 9, E = 3, CAP = 2, NO = B * S * E * CAP };
    float *x = frand(B * S * E, 0, 1), y[NO], want[NO];
    Err err = {{0}};
    const void *in[1] = {x};
    memset(y, 0x7f, sizeof y);    /* forward overwrites everything */
    assert_int_equal(k_route_fwd(&ks, in, y, &err), 0);
    ref_route(x, B, S, E, CAP, want);
    check_same(y, want, NO, 0, "route");

    /* every token of batch 0 to expert 1: slots 0 and 1, then dropped */
    for (int s = 0; s < S; s++) x[s * E + 0] = 0, x[s * E + 1] = 1, x[s * E + 2] = 0.5f;
    assert_int_equal(k_route_fwd(&ks, in, y, &err), 0);
    for (int s = 0; s < S; s++)
        for (int e = 0; e < E; e++)
            for (int c = 0; c < CAP; c++)
                assert_true(y[((0 * S + s) * E + e) * CAP + c] == (e == 1 && s == c));

    /* no gradient: din untouched */
    float dx[B * S * E], dy[NO] = {0};
    for (int i = 0; i < B * S * E; i++) dx[i] = 5;
    float *din[1] = {dx};
    assert_int_equal(k_route_bwd(&ks, in, y, dy, din, &err), 0);
    for (int i = 0; i < B * S * E; i++) assert_true(dx[i] == 5);
    free(x);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * optimizers */

static void test_sgd(void **state)
{
    (void)state;
    OptimHyper h = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
    float w[3] = {1, -2, 0.5f}, mom[3] = {0}, g[3];
    double wd[3] = {1, -2, 0.5}, md[3] = {0};
    for (int step = 0; step < 4; step++) {
        for (int i = 0; i < 3; i++) g[i] = (float)urand();
        kernel_sgd(w, g, mom, 3, &h);
        for (int i = 0; i < 3; i++) {
            double d = g[i] + 0.01 * wd[i];
            md[i] = 0.9 * md[i] + d;
            wd[i] -= 0.1 * md[i];
        }
    }
    check_close(w, wd, 3, 1e-5, 1e-6, "sgd w");
    check_close(mom, md, 3, 1e-5, 1e-6, "sgd momentum");
    /* no momentum buffer: plain steps */
    float w2[2] = {1, 1}, g2[2] = {0.5f, -0.5f};
    h.weight_decay = 0;
    kernel_sgd(w2, g2, NULL, 2, &h);
    assert_true(fabsf(w2[0] - 0.95f) < 1e-7f && fabsf(w2[1] - 1.05f) < 1e-7f);
}

static void test_adam(void **state)
{
    (void)state;
    OptimHyper h = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    enum { N = 5 };
    float w[N], m[N] = {0}, v[N] = {0}, g[N];
    double wd[N], md[N] = {0}, vd[N] = {0};
    for (int i = 0; i < N; i++) w[i] = (float)urand(), wd[i] = w[i];
    for (int step = 1; step <= 6; step++) {
        for (int i = 0; i < N; i++) g[i] = (float)urand();
        kernel_adam(w, g, m, v, N, step, &h);
        for (int i = 0; i < N; i++) {
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.999 * vd[i] + 0.001 * (double)g[i] * g[i];
            double mh = md[i] / (1 - pow(0.9, step)), vh = vd[i] / (1 - pow(0.999, step));
            wd[i] -= 0.01 * (0.1 * wd[i] + mh / (sqrt(vh) + 1e-8));
        }
    }
    check_close(w, wd, N, 1e-5, 1e-6, "adam w");
    check_close(m, md, N, 1e-5, 1e-7, "adam m");
    check_close(v, vd, N, 1e-4, 1e-8, "adam v");
    /* first step of bias-corrected Adam moves each weight by about lr */
    float w1 = 0, m1 = 0, v1 = 0, g1 = 3;
    h.weight_decay = 0;
    kernel_adam(&w1, &g1, &m1, &v1, 1, 1, &h);
    assert_true(fabsf(w1 + 0.01f) < 1e-6f);
}

/* ----------------------------------------------------------------------------
 * fp16 */

static void test_fp16_known(void **state)
{
    (void)state;
    static const struct { float f; uint16_t h; } cases[] = {
        {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000},
        {0.5f, 0x3800}, {0.1f, 0x2e66}, {1.0f / 3, 0x3555}, {65504.0f, 0x7bff},
        {65519.0f, 0x7bff},                 /* just below the midpoint to infinity */
        {65520.0f, 0x7c00}, {1e6f, 0x7c00}, {-1e6f, 0xfc00},
        {0x1p-14f, 0x0400},                 /* smallest normal */
        {0x1p-24f, 0x0001},                 /* smallest subnormal */
        {0x1p-25f, 0x0000},                 /* tie: to even (zero) */
        {0x1.8p-25f, 0x0001}, {0x3p-25f, 0x0002},     /* 1.5 ulps: tie to even 2 */
        {0x5p-25f, 0x0002},                 /* 2.5 ulps: tie to even 2 */
        {0x1.ff8p-15f, 0x03ff},             /* largest subnormal */
        {0x1.ffcp-15f, 0x0400},             /* tie above it: up into the normals (even) */
        {1e-10f, 0x0000}, {-1e-10f, 0x8000}, {0x1p-149f, 0x0000},  /* fp32 subnormal */
        {1.0f + 0x1p-11f, 0x3c00},          /* tie: stays even */
        {1.0f + 0x3p-11f, 0x3c02},          /* tie: up to even */
        {1.0f + 0x1.8p-11f, 0x3c01},
        {2048.0f + 1, 0x6800}, {2048.0f + 3, 0x6802},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint16_t h;
        kernel_to_fp16(&cases[i].f, &h, 1);
        if (h != cases[i].h)
            fail_msg("to_fp16(%a) = 0x%04x, want 0x%04x", cases[i].f, h, cases[i].h);
    }
    float sp[4] = {INFINITY, -INFINITY, NAN, -NAN};
    uint16_t h[4];
    kernel_to_fp16(sp, h, 4);
    assert_int_equal(h[0], 0x7c00);
    assert_int_equal(h[1], 0xfc00);
    assert_true((h[2] & 0x7c00) == 0x7c00 && (h[2] & 0x3ff));
    assert_true((h[3] & 0x7c00) == 0x7c00 && (h[3] & 0x3ff) && (h[3] & 0x8000));
    float back[4];
    kernel_from_fp16(h, back, 4);
    assert_true(isinf(back[0]) && back[0] > 0 && isinf(back[1]) && back[1] < 0);
    assert_true(isnan(back[2]) && isnan(back[3]));
    uint16_t hs[3] = {0x0001, 0x03ff, 0x7bff};
    kernel_from_fp16(hs, back, 3);
    assert_true(back[0] == 0x1p-24f && back[1] == 0x3ffp-24f && back[2] == 65504.0f);
}

/* Every half value survives half -> float -> half; random floats go to the
 * nearest half (ties to an even mantissa). */
/* The hardware conversions (F16C, where the CPU has them) against the
 * portable integer ones: every half widened, a million float bit patterns
 * (normals, subnormals, both infinities, NaNs with payloads) rounded, and
 * sums of halves, bit for bit. */
static void test_fp16_hardware_matches(void **state)
{
    (void)state;
    enum { NH = 65536, NF = 1 << 20 };
    uint16_t *h = xmalloc(sizeof *h * NH), *q[2], *s[2];
    float *f[2], *x = xmalloc(sizeof *x * NF);
    for (int p = 0; p < 2; p++) {
        f[p] = xmalloc(sizeof *f[p] * NF);
        q[p] = xmalloc(sizeof *q[p] * NF);
        s[p] = xmalloc(sizeof *s[p] * NH);
    }
    for (int i = 0; i < NH; i++) h[i] = (uint16_t)i;
    for (int i = 0; i < NF; i++) {
        uint32_t b = (uint32_t)i * 4093u + (uint32_t)(i & 7);   /* every exponent, odd mantissas */
        memcpy(&x[i], &b, sizeof b);
    }
    for (int p = 0; p < 2; p++) {
        kernel_fp16_hardware = p == 1;
        kernel_from_fp16(h, f[p], NH);
        kernel_to_fp16(x, q[p], NF);
        for (int i = 0; i < NH; i++) s[p][i] = (uint16_t)(i * 40503u);
        kernel_half_sum(h, s[p], NH);
    }
    kernel_fp16_hardware = true;
    assert_memory_equal(f[0], f[1], sizeof(float) * NH);
    for (int i = 0; i < NF; i++)
        if (q[0][i] != q[1][i]) fail_msg("to_fp16(%a): 0x%04x portable, 0x%04x hardware", x[i], q[0][i], q[1][i]);
    assert_memory_equal(s[0], s[1], sizeof(uint16_t) * NH);
    for (int p = 0; p < 2; p++) free(f[p]), free(q[p]), free(s[p]);
    free(h), free(x);
}

static void test_fp16_round_trip(void **state)
{
    (void)state;
    enum { NH = 65536 };
    uint16_t *h = xmalloc(sizeof *h * NH), *h2 = xmalloc(sizeof *h2 * NH);
    float *f = xmalloc(sizeof *f * NH);
    for (int i = 0; i < NH; i++) h[i] = (uint16_t)i;
    kernel_from_fp16(h, f, NH);
    kernel_to_fp16(f, h2, NH);
    for (int i = 0; i < NH; i++) {
        bool nan = (i & 0x7c00) == 0x7c00 && (i & 0x3ff);
        if (nan ? !isnan(f[i]) || (h2[i] & 0x7fff) <= 0x7c00 : h2[i] != h[i])
            fail_msg("half 0x%04x -> %a -> 0x%04x", i, f[i], h2[i]);
    }
    for (int k = 0; k < 20000; k++) {
        float x = (float)(urand() * pow(2, 40 * urand() - 12)), y;
        uint16_t q, lo, hi;
        kernel_to_fp16(&x, &q, 1);
        kernel_from_fp16(&q, &y, 1);
        if (isinf(y)) {
            assert_true(fabsf(x) >= 65520.0f);
            continue;
        }
        /* the neighbours of q (same sign) are no closer */
        uint16_t mag = q & 0x7fff, sgn = q & 0x8000;
        lo = mag ? (uint16_t)(sgn | (mag - 1)) : q;
        hi = (uint16_t)(sgn | (mag + 1));
        float fl, fh;
        kernel_from_fp16(&lo, &fl, 1);
        kernel_from_fp16(&hi, &fh, 1);
        double d = fabs((double)x - y), dl = fabs((double)x - fl), dh = fabs((double)x - fh);
        if (d > dl || d > dh || ((d == dl || d == dh) && (q & 1) && mag))
            fail_msg("to_fp16(%a) = %a, neighbours %a %a", x, y, fl, fh);
    }
    free(h), free(h2), free(f);
}

/* ----------------------------------------------------------------------------
 * int8 with error feedback */

static void test_int8_error_feedback(void **state)
{
    (void)state;
    enum { N = 97, STEPS = 400 };
    float x[N], e[N] = {0}, dec[N];
    int8_t q[N];
    double sx[N] = {0}, sd[N] = {0};
    float scale = 0;
    for (int step = 0; step < STEPS; step++) {
        double mag = step % 7 == 0 ? 10 : 0.01;   /* some steps dwarf the others */
        for (int i = 0; i < N; i++) x[i] = (float)(mag * urand());
        scale = kernel_int8_encode(x, e, q, N);
        kernel_int8_decode(q, scale, dec, N);
        for (int i = 0; i < N; i++) {
            sx[i] += x[i];
            sd[i] += dec[i];
            assert_true(q[i] >= -127 && q[i] <= 127);
        }
    }
    /* the running sums differ by exactly the residual, at most half a quantum */
    for (int i = 0; i < N; i++) {
        assert_true(fabs(sx[i] - sd[i] - e[i]) < 1e-3);
        assert_true(fabs(e[i]) <= 0.5 * scale * (1 + 1e-5) + 1e-7);
    }
    /* all zero: scale 0, codes 0 */
    float z[N] = {0};
    assert_true(kernel_int8_encode(z, NULL, q, N) == 0);
    for (int i = 0; i < N; i++) assert_int_equal(q[i], 0);
}

/* The codes and errors are exactly those of the plain definition: the
 * largest |x + e| over 127 as the scale, each x + e over it rounded to
 * the nearest integer (ties to even) and held to [-127, 127], whatever the
 * length (vector loops, their tails, several threads' pieces) and with
 * values on rounding ties and at the bounds. */
static void test_int8_exact(void **state)
{
    (void)state;
    const int64_t lens[] = { 1, 31, 32, 33, 1000, 3 * 16384 + 77 };
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
        int64_t n = lens[l];
        float *x = malloc(sizeof *x * n), *e = malloc(sizeof *e * n), *e0 = malloc(sizeof *e0 * n);
        int8_t *q = malloc((size_t)n), *q0 = malloc((size_t)n);
        assert_non_null(x), assert_non_null(e), assert_non_null(e0), assert_non_null(q), assert_non_null(q0);
        for (int64_t i = 0; i < n; i++) {
            /* |x + e| < 127 but for the last, 127: the scale is 1, and every
             * 15th (no error added) lies on a rounding tie */
            x[i] = i % 5 == 0 ? (float)(i % 200) - 99.5f : (float)(126 * urand());
            e[i] = e0[i] = i % 3 ? (float)(0.5 * urand()) : 0;
        }
        x[n - 1] = 127.0f;
        e[n - 1] = e0[n - 1] = 0;
        float amax = 0;
        for (int64_t i = 0; i < n; i++) {
            float a = fabsf(x[i] + e0[i]);
            if (a > amax) amax = a;
        }
        float scale0 = amax / 127;
        for (int64_t i = 0; i < n; i++) {
            float y = x[i] + e0[i];
            long r = lrintf(y / scale0);
            r = r > 127 ? 127 : r < -127 ? -127 : r;
            q0[i] = (int8_t)r;
            e0[i] = y - (float)r * scale0;
        }
        assert_true(scale0 == 1.0f);
        float scale = kernel_int8_encode(x, e, q, n);
        assert_true(scale == scale0);
        for (int64_t i = 0; i < n; i++) {
            assert_int_equal(q[i], q0[i]);
            assert_true(e[i] == e0[i]);
        }
        free(x), free(e), free(e0), free(q), free(q0);
    }
}

/* ----------------------------------------------------------------------------
 * orthonormalize */

static void check_orthonormal(const float *p, int64_t rows, int r, double tol)
{
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double s = 0;
            for (int64_t i = 0; i < rows; i++) s += (double)p[i * r + a] * p[i * r + b];
            if (fabs(s - (a == b)) > tol) fail_msg("P^T P[%d][%d] = %.9g", a, b, s);
        }
}

static void test_orthonormalize(void **state)
{
    (void)state;
    enum { ROWS = 37, R = 5 };
    float *p = frand(ROWS * R, -1, 1);
    double pd[ROWS * R];
    for (int i = 0; i < ROWS * R; i++) pd[i] = p[i];
    kernel_orthonormalize(p, ROWS, R);
    check_orthonormal(p, ROWS, R, 1e-6);
    /* the same columns as Gram-Schmidt in double: span and sign kept */
    for (int j = 0; j < R; j++) {
        for (int k = 0; k < j; k++) {
            double d = 0;
            for (int i = 0; i < ROWS; i++) d += pd[i * R + k] * pd[i * R + j];
            for (int i = 0; i < ROWS; i++) pd[i * R + j] -= d * pd[i * R + k];
        }
        double n = 0;
        for (int i = 0; i < ROWS; i++) n += pd[i * R + j] * pd[i * R + j];
        for (int i = 0; i < ROWS; i++) pd[i * R + j] /= sqrt(n);
    }
    check_close(p, pd, ROWS * R, 1e-4, 1e-5, "orthonormalize vs double Gram-Schmidt");
    free(p);

    /* a zero column and a dependent one become deterministic unit vectors */
    enum { R2 = 4, ROWS2 = 9 };
    float a[ROWS2 * R2], b[ROWS2 * R2];
    for (int i = 0; i < ROWS2; i++) {
        a[i * R2 + 0] = (float)urand();
        a[i * R2 + 1] = 0;
        a[i * R2 + 2] = (float)urand();
        a[i * R2 + 3] = 2 * a[i * R2 + 0] - a[i * R2 + 2];
    }
    memcpy(b, a, sizeof a);
    kernel_orthonormalize(a, ROWS2, R2);
    kernel_orthonormalize(b, ROWS2, R2);
    check_orthonormal(a, ROWS2, R2, 1e-6);
    assert_memory_equal(a, b, sizeof a);
    /* an all-zero matrix: the unit vectors e_0, e_1, ... */
    float zero[3 * 2] = {0};
    kernel_orthonormalize(zero, 3, 2);
    check_orthonormal(zero, 3, 2, 1e-7);
    assert_true(zero[0] == 1 && zero[3] == 1);
}

/* ----------------------------------------------------------------------------
 * deterministic init */

static void test_init(void **state)
{
    (void)state;
    enum { D0 = 5, D1 = 7, D2 = 3, NW = D0 * D1 * D2 };
    const int64_t shape[3] = {D0, D1, D2}, zero[3] = {0, 0, 0};
    float whole[NW];
    kernel_init_fill(whole, 42, "blocks.0.mlp.w1", 3, shape, zero, shape, 0.02f);
    double mean = 0;
    for (int i = 0; i < NW; i++) {
        assert_true(whole[i] >= -0.02f && whole[i] < 0.02f);
        assert_true(whole[i] == kernel_init_value(42, "blocks.0.mlp.w1", i, 0.02f));
        mean += whole[i];
    }
    assert_true(fabs(mean / NW) < 0.004);
    /* a shard holds the whole tensor's values at its positions */
    const int64_t off[3] = {2, 3, 1}, loc[3] = {2, 4, 2};
    float shard[16];
    kernel_init_fill(shard, 42, "blocks.0.mlp.w1", 3, shape, off, loc, 0.02f);
    int k = 0;
    for (int i = 0; i < loc[0]; i++)
        for (int j = 0; j < loc[1]; j++)
            for (int l = 0; l < loc[2]; l++, k++)
                assert_true(shard[k] == whole[((off[0] + i) * D1 + off[1] + j) * D2 + off[2] + l]);
    /* other names and seeds give other values */
    int same_name = 0, same_seed = 0;
    for (int i = 0; i < NW; i++) {
        same_name += whole[i] == kernel_init_value(42, "blocks.1.mlp.w1", i, 0.02f);
        same_seed += whole[i] == kernel_init_value(43, "blocks.0.mlp.w1", i, 0.02f);
    }
    assert_true(same_name < 3 && same_seed < 3);
    /* the scale is an open bound even where rounding would reach it */
    for (int i = 0; i < 100000; i++) {
        float v = kernel_init_value(7, "x", i, 0.1f);
        assert_true(v >= -0.1f && v < 0.1f);
    }

    /* integers: [0, hi), shards agree with the whole, every value is hit */
    int32_t iw[NW], is[16];
    kernel_init_fill_int(iw, 1, "tokens", 3, shape, zero, shape, 13);
    kernel_init_fill_int(is, 1, "tokens", 3, shape, off, loc, 13);
    int seen[13] = {0};
    for (int i = 0; i < NW; i++) {
        assert_true(iw[i] >= 0 && iw[i] < 13);
        seen[iw[i]] = 1;
    }
    for (int v = 0; v < 13; v++) assert_true(seen[v]);
    k = 0;
    for (int i = 0; i < loc[0]; i++)
        for (int j = 0; j < loc[1]; j++)
            for (int l = 0; l < loc[2]; l++, k++)
                assert_int_equal(is[k], iw[((off[0] + i) * D1 + off[1] + j) * D2 + off[2] + l]);
}

/* ----------------------------------------------------------------------------
 * Fast rows against the walks. Each kernel runs on the same inputs with
 * k_fast_paths on (plain loops over contiguous rows, k_expf) and off (the
 * index walks, libm's expf); the two must agree to float rounding, and both
 * must match the references above. Rows whose length is not a multiple of 8
 * run the loops' scalar tails too. */

/* Restores the default when a test that turned the fast paths off fails. */
static int fast_paths_on(void **state)
{
    (void)state;
    k_fast_paths = true;
    return 0;
}

/* k_expf against exp in double: within 1 ulp on [-87.33, 88]; 0 below
 * (masked -inf logits stay exactly 0), e^88 above, NaN for NaN. */
static void test_expf(void **state)
{
    (void)state;
    double worst = 0;
    float at = 0;
    for (int64_t i = 0; i <= 2000000; i++) {
        float x = (float)(-87.33 + 175.33 * (double)i / 2000000);
        if (i % 2) x = (float)(20 * urand());   /* and the range softmax sees most */
        double want = exp((double)x);
        float wf = (float)want;
        double ulp = (double)nextafterf(wf, INFINITY) - wf;
        double e = fabs(k_expf(x) - want) / ulp;
        if (e > worst) worst = e, at = x;
    }
    if (!(worst <= 1.0)) fail_msg("k_expf: %.3f ulp at %.9g", worst, at);
    assert_true(k_expf(0) == 1.0f);
    assert_true(k_expf(-INFINITY) == 0 && k_expf(-87.4f) == 0 && k_expf(-1e30f) == 0);
    assert_true(k_expf(INFINITY) == k_expf(88.0f) && k_expf(1e30f) == k_expf(88.0f));
    assert_true(isfinite(k_expf(88.0f)) && fabs(k_expf(88.0f) / exp(88.0) - 1) < 1e-6);
    assert_true(isnan(k_expf(NAN)));
}

/* Layernorm `spec` ("bsh..." reduce h) on R rows of C, x around `shift`:
 * forward and backward (into prefilled gradients) by both paths. */
static void ln_both(const char *spec, const char *sizes, int64_t R, int64_t C, double shift)
{
    Graph *g = op_graph("layernorm", spec, "'reduce':'h'", sizes);
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int nin = g->ops[0].nin;
    const int64_t n = R * C;
    float *x = frand(n, shift - 2, shift + 3), *ga = frand(C, 0.5, 1.5), *be = frand(C, -1, 1);
    float *dy = frand(n, -1, 1), *pre = frand(n, -1, 1), *pre_p = frand(C, -1, 1);
    float *y[2], *dx[2], *dg[2], *db[2];
    const void *in[3] = {x, ga, be};
    Err err = {{0}};
    for (int f = 0; f < 2; f++) {   /* 0: fast rows, 1: walk */
        k_fast_paths = f == 0;
        y[f] = xmalloc(sizeof *y[f] * (size_t)n);
        dx[f] = fcopy(pre, n), dg[f] = fcopy(pre_p, C), db[f] = fcopy(pre_p, C);
        float *din[3] = {dx[f], nin > 1 ? dg[f] : NULL, nin > 2 ? db[f] : NULL};
        assert_int_equal(k_layernorm_fwd(&ks, in, y[f], &err), 0);
        assert_int_equal(k_layernorm_bwd(&ks, in, y[f], dy, din, &err), 0);
        sub_prefill(dx[f], pre, n);
        sub_prefill(dg[f], pre_p, C);
        sub_prefill(db[f], pre_p, C);
    }
    k_fast_paths = true;
    check_same(y[0], y[1], n, 1e-6, "layernorm y, fast against walk");
    check_same(dx[0], dx[1], n, 1e-6, "layernorm dx, fast against walk");
    check_same(dg[0], dg[1], C, 2e-6, "layernorm dgamma, fast against walk");
    check_same(db[0], db[1], C, 1e-6, "layernorm dbeta, fast against walk");

    double *xd = to_double(x, n), *gd = to_double(ga, C), *bd = to_double(be, C);
    double *want = xmalloc(sizeof *want * (size_t)n), *dyd = to_double(dy, n);
    ref_layernorm(xd, nin > 1 ? gd : NULL, nin > 2 ? bd : NULL, R, C, want);
    NormCtx c = {R, C, nin > 1, nin > 2, dyd};
    double *ind[3] = {xd, gd, bd};
    double *fx = fd_grad(obj_layernorm, &c, ind, 0, n);
    for (int f = 0; f < 2; f++) {
        check_close(y[f], want, n, 1e-5, 1e-5, f ? "layernorm y (walk)" : "layernorm y (fast)");
        check_close(dx[f], fx, n, 1e-4, 1e-5, f ? "layernorm dx (walk)" : "layernorm dx (fast)");
    }
    if (nin > 1) {
        double *fg = fd_grad(obj_layernorm, &c, ind, 1, C);
        check_close(dg[0], fg, C, 1e-4, 1e-5, "layernorm dgamma (fast)");
        free(fg);
    }
    if (nin > 2) {
        double *fb = fd_grad(obj_layernorm, &c, ind, 2, C);
        check_close(db[0], fb, C, 1e-4, 1e-5, "layernorm dbeta (fast)");
        free(fb);
    }
    for (int f = 0; f < 2; f++) free(y[f]), free(dx[f]), free(dg[f]), free(db[f]);
    free(fx), free(want), free(dyd), free(xd), free(gd), free(bd);
    free(x), free(ga), free(be), free(dy), free(pre), free(pre_p);
    graph_free(g);
}

/* h of 37 (four blocks of 8 and a tail), 64 (no tail), 5 (a tail only);
 * with and without gamma, beta; a mean of 1000 against a spread of 2.5,
 * where x - mean taken in float alone would lose ~4e-5. */
static void test_layernorm_fast(void **state)
{
    (void)state;
    ln_both("bsh,h,h->bsh", "b3s5h37", 15, 37, 0);
    ln_both("bsh,h,h->bsh", "b2s3h64", 6, 64, 1000);
    ln_both("bsh,h,h->bsh", "b3s5h5", 15, 5, 0);
    ln_both("bsh,h->bsh", "b3s5h13", 15, 13, 0);
    ln_both("bsh->bsh", "b3s5h37", 15, 37, -3);
}

/* Softmax "bnst->bnst" over t by both paths, against each other and the
 * reference; S is both s and t. */
static void sm_both(bool causal, int64_t S, double scale)
{
    char sizes[64], attrs[96];
    snprintf(sizes, sizeof sizes, "b2n3s%lldt%lld", (long long)S, (long long)S);
    snprintf(attrs, sizeof attrs, "'reduce':'t','causal':%s,'scale':%g", causal ? "true" : "false",
             scale);
    Graph *g = op_graph("softmax", "bnst->bnst", attrs, sizes);
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int64_t R = 6 * S, n = R * S;
    float *x = frand(n, -3, 3), *dy = frand(n, -1, 1), *pre = frand(n, -1, 1);
    x[5] = -INFINITY;   /* a masked score inside the kept prefix */
    float *y[2], *dx[2];
    const void *in[1] = {x};
    Err err = {{0}};
    for (int f = 0; f < 2; f++) {
        k_fast_paths = f == 0;
        y[f] = xmalloc(sizeof *y[f] * (size_t)n);
        dx[f] = fcopy(pre, n);
        float *din[1] = {dx[f]};
        assert_int_equal(k_softmax_fwd(&ks, in, y[f], &err), 0);
        assert_int_equal(k_softmax_bwd(&ks, in, y[f], dy, din, &err), 0);
        sub_prefill(dx[f], pre, n);
    }
    k_fast_paths = true;
    const char *what = causal ? "causal softmax" : "softmax";
    char msg[96];
    snprintf(msg, sizeof msg, "%s y (t %lld), fast against walk", what, (long long)S);
    check_same(y[0], y[1], n, 1e-6, msg);
    snprintf(msg, sizeof msg, "%s dx (t %lld), fast against walk", what, (long long)S);
    check_same(dx[0], dx[1], n, 1e-6, msg);
    assert_true(y[0][5] == 0);

    double *xd = to_double(x, n), *dyd = to_double(dy, n);
    double *want = xmalloc(sizeof *want * (size_t)n);
    SmCtx c = {R, S, S, scale, causal, dyd};
    ref_softmax(xd, &c, want);
    snprintf(msg, sizeof msg, "%s y (t %lld, fast)", what, (long long)S);
    check_close(y[0], want, n, 1e-5, 1e-6, msg);
    xd[5] = -1e30;      /* finite for the differences: exp underflows to 0 all the same */
    double *ind[1] = {xd};
    double *fx = fd_grad(obj_softmax, &c, ind, 0, n);
    snprintf(msg, sizeof msg, "%s dx (t %lld, fast)", what, (long long)S);
    check_close(dx[0], fx, n, 1e-4, 1e-6, msg);
    for (int f = 0; f < 2; f++) free(y[f]), free(dx[f]);
    free(fx), free(dyd), free(want), free(xd), free(x), free(dy), free(pre);
    graph_free(g);
}

static void test_softmax_fast(void **state)
{
    (void)state;
    sm_both(false, 19, 0.5);
    sm_both(true, 19, 0.5);
    sm_both(false, 40, 1.0);
    sm_both(true, 40, 0.125);
    sm_both(true, 3, 2.0);
}

/* Causal softmax with s = 19 split 7 + 12 (sequence parallel): each shard,
 * by the fast rows, masks by its global s offset, so its rows equal the
 * fast whole run's exactly and the walk's whole run to rounding, forward
 * and backward. */
static void test_softmax_fast_causal_split(void **state)
{
    (void)state;
    Graph *g = op_graph("softmax", "bnst->bnst", "'reduce':'t','causal':true,'scale':0.5",
                        "b2n3s19t19");
    const Op *op = &g->ops[0];
    KernelShape ks;
    shape_whole(&ks, op);
    const int64_t BN = 6, S = 19, T = 19, n = BN * S * T;
    float *x = frand(n, -3, 3), *dy = frand(n, -1, 1), *y[2], *dx[2];
    Err err = {{0}};
    const void *in[1] = {x};
    for (int f = 0; f < 2; f++) {
        k_fast_paths = f == 0;
        y[f] = xmalloc(sizeof *y[f] * (size_t)n);
        dx[f] = xcalloc((size_t)n, sizeof *dx[f]);
        float *din[1] = {dx[f]};
        assert_int_equal(k_softmax_fwd(&ks, in, y[f], &err), 0);
        assert_int_equal(k_softmax_bwd(&ks, in, y[f], dy, din, &err), 0);
    }
    k_fast_paths = true;
    const int64_t s0[2] = {0, 7}, sl[2] = {7, 12};
    for (int r = 0; r < 2; r++) {
        int64_t m = BN * sl[r] * T;
        float *xl = xmalloc(sizeof *xl * m), *dyl = xmalloc(sizeof *dyl * m);
        float *yl = xmalloc(sizeof *yl * m), *dxl = xcalloc((size_t)m, sizeof *dxl);
        float *yw[2], *dxw[2];
        for (int f = 0; f < 2; f++) {
            yw[f] = xmalloc(sizeof *yw[f] * m);
            dxw[f] = xmalloc(sizeof *dxw[f] * m);
        }
        for (int64_t bn = 0; bn < BN; bn++)
            for (int64_t s = 0; s < sl[r]; s++)
                for (int64_t t = 0; t < T; t++) {
                    int64_t li = (bn * sl[r] + s) * T + t, gi = (bn * S + s0[r] + s) * T + t;
                    xl[li] = x[gi], dyl[li] = dy[gi];
                    for (int f = 0; f < 2; f++) yw[f][li] = y[f][gi], dxw[f][li] = dx[f][gi];
                }
        KernelShape kl;
        shape_whole(&kl, op);
        kl.size[L('s')] = sl[r];
        kl.off[L('s')] = s0[r];
        const void *inl[1] = {xl};
        float *dinl[1] = {dxl};
        assert_int_equal(k_softmax_fwd(&kl, inl, yl, &err), 0);
        assert_int_equal(k_softmax_bwd(&kl, inl, yl, dyl, dinl, &err), 0);
        check_same(yl, yw[0], m, 0, "causal softmax shard y (fast) against the fast whole");
        check_same(dxl, dxw[0], m, 0, "causal softmax shard dx (fast) against the fast whole");
        check_same(yl, yw[1], m, 1e-6, "causal softmax shard y (fast) against the walk's whole");
        check_same(dxl, dxw[1], m, 1e-6, "causal softmax shard dx (fast) against the walk's whole");
        for (int f = 0; f < 2; f++) free(yw[f]), free(dxw[f]);
        free(xl), free(dyl), free(yl), free(dxl);
    }
    for (int f = 0; f < 2; f++) free(y[f]), free(dx[f]);
    free(x), free(dy);
    graph_free(g);
}

/* cross_entropy "bsv,bs->" with v = 37 (a tail of 5): loss and dx (into a
 * prefilled buffer: both paths add) by both paths, and against the
 * reference. */
enum { CF_T = CE_T, CF_V = 37 };

static void test_cross_entropy_fast(void **state)
{
    (void)state;
    Graph *g = op_graph("cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v37");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int64_t n = CF_T * CF_V;
    float *x = frand(n, -4, 4), *pre = frand(n, -1, 1), loss[2], dout = 0.7f, *dx[2];
    x[3 * CF_V + 36] = 30;      /* a confident row: the others' exps far below 1 */
    int32_t *lab = labels_rand(CF_T, CF_V);
    lab[0] = 0, lab[1] = CF_V - 1, lab[2] = 32, lab[3] = 36;
    const void *in[2] = {x, lab};
    Err err = {{0}};
    for (int f = 0; f < 2; f++) {
        k_fast_paths = f == 0;
        dx[f] = fcopy(pre, n);
        float *din[2] = {dx[f], NULL};
        assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss[f], &err), 0);
        assert_int_equal(k_cross_entropy_bwd(&ks, in, &loss[f], &dout, din, &err), 0);
        sub_prefill(dx[f], pre, n);
    }
    k_fast_paths = true;
    assert_true(fabs(loss[0] - loss[1]) <= 1e-6 * fabs(loss[1]));
    check_same(dx[0], dx[1], n, 1e-6, "cross_entropy dx, fast against walk");
    double *xd = to_double(x, n);
    CeCtx c = {CF_T, CF_V, lab, CF_T, dout};
    double want = ref_ce(xd, &c);
    assert_true(fabs(loss[0] - want) <= 1e-5 * fabs(want));
    double *ind[1] = {xd};
    double *fx = fd_grad(obj_ce, &c, ind, 0, n);
    check_close(dx[0], fx, n, 1e-4, 1e-6, "cross_entropy dx (fast)");
    free(fx), free(xd), free(x), free(pre), free(dx[0]), free(dx[1]), free(lab);
    graph_free(g);
}

/* Vocabulary-parallel by the fast rows: v = 37 split 17 + 20, labels on
 * both sides of the cut and at both ends. The same collectives as the walk
 * (two max, three sum of T floats forward and backward together); losses
 * and dlogits columns equal the unsplit runs' of both paths. */
typedef struct {
    const Op *op;
    const float *x;
    const int32_t *lab;
    float dout;
    int64_t v0[2], vl[2];
    float loss[2];
    float *dx;          /* [T][V], each rank writes its columns */
} CeFastSplit;

static int ce_fast_rank(void *arg, int r, const KernelStats *st, Err *err)
{
    CeFastSplit *a = arg;
    KernelShape ks;
    shape_whole(&ks, a->op);
    ks.size[L('v')] = a->vl[r];
    ks.off[L('v')] = a->v0[r];
    ks.stats = st;
    int64_t vl = a->vl[r];
    float *xl = xmalloc(sizeof *xl * CF_T * (size_t)vl);
    float *dxl = xcalloc(CF_T * (size_t)vl, sizeof *dxl);
    for (int64_t t = 0; t < CF_T; t++)
        for (int64_t v = 0; v < vl; v++) xl[t * vl + v] = a->x[t * CF_V + a->v0[r] + v];
    const void *in[2] = {xl, a->lab};
    float *din[2] = {dxl, NULL};
    int rc = k_cross_entropy_fwd(&ks, in, &a->loss[r], err);
    if (!rc) rc = k_cross_entropy_bwd(&ks, in, &a->loss[r], &a->dout, din, err);
    for (int64_t t = 0; t < CF_T && !rc; t++)
        for (int64_t v = 0; v < vl; v++) a->dx[t * CF_V + a->v0[r] + v] = dxl[t * vl + v];
    free(xl);
    free(dxl);
    return rc;
}

static void test_cross_entropy_fast_vocab_split(void **state)
{
    (void)state;
    Graph *g = op_graph("cross_entropy", "bsv,bs->", "'reduce':'v'", "b3s5v37");
    KernelShape ks;
    shape_whole(&ks, &g->ops[0]);
    const int64_t n = CF_T * CF_V;
    float *x = frand(n, -4, 4), loss[2], dout = 0.9f, *dx[2];
    int32_t *lab = labels_rand(CF_T, CF_V);
    lab[0] = 16, lab[1] = 17, lab[2] = 0, lab[3] = 36;
    Err err = {{0}};
    const void *in[2] = {x, lab};
    for (int f = 0; f < 2; f++) {
        k_fast_paths = f == 0;
        dx[f] = xcalloc((size_t)n, sizeof *dx[f]);
        float *din[2] = {dx[f], NULL};
        assert_int_equal(k_cross_entropy_fwd(&ks, in, &loss[f], &err), 0);
        assert_int_equal(k_cross_entropy_bwd(&ks, in, &loss[f], &dout, din, &err), 0);
    }
    k_fast_paths = true;
    CeFastSplit a = {.op = &g->ops[0], .x = x, .lab = lab, .dout = dout, .v0 = {0, 17},
                     .vl = {17, 20}, .dx = xcalloc((size_t)n, sizeof(float))};
    RankCtx calls[2];
    run_ranks(2, ce_fast_rank, &a, calls);
    for (int r = 0; r < 2; r++) {
        for (int f = 0; f < 2; f++) assert_true(fabs(a.loss[r] - loss[f]) <= 1e-6 * fabs(loss[f]));
        assert_int_equal(calls[r].nmax, 2);
        assert_int_equal(calls[r].nsum, 3);
        assert_int_equal(calls[r].sum_floats, 3 * CF_T);
    }
    assert_true(a.loss[0] == a.loss[1]);
    check_same(a.dx, dx[0], n, 1e-6, "vocab-split cross_entropy dx (fast) against the fast whole");
    check_same(a.dx, dx[1], n, 1e-6,
               "vocab-split cross_entropy dx (fast) against the walk's whole");
    free(a.dx), free(x), free(lab), free(dx[0]), free(dx[1]);
    graph_free(g);
}

/* The earlier tests run the fast rows wherever the layout allows (the
 * default); here the same tests run the walks. */
static void test_walks(void **state)
{
    k_fast_paths = false;
    test_layernorm(state);
    test_layernorm_layouts(state);
    test_softmax(state);
    test_softmax_causal_split(state);
    test_cross_entropy(state);
    test_cross_entropy_batch_split(state);
    test_cross_entropy_vocab_split(state);
    k_fast_paths = true;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_layernorm_layouts),
        cmocka_unit_test(test_layernorm_rejects_split),
        cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_batchnorm_split),
        cmocka_unit_test(test_batchnorm_local),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_softmax_strided),
        cmocka_unit_test(test_softmax_causal_split),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_layouts),
        cmocka_unit_test(test_cross_entropy_batch_split),
        cmocka_unit_test(test_cross_entropy_vocab_split),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_sgd),
        cmocka_unit_test(test_adam),
        cmocka_unit_test(test_fp16_known),
        cmocka_unit_test(test_fp16_round_trip),
        cmocka_unit_test(test_fp16_hardware_matches),
        cmocka_unit_test(test_int8_error_feedback),
        cmocka_unit_test(test_int8_exact),
        cmocka_unit_test(test_orthonormalize),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_expf),
        cmocka_unit_test_teardown(test_layernorm_fast, fast_paths_on),
        cmocka_unit_test_teardown(test_softmax_fast, fast_paths_on),
        cmocka_unit_test_teardown(test_softmax_fast_causal_split, fast_paths_on),
        cmocka_unit_test_teardown(test_cross_entropy_fast, fast_paths_on),
        cmocka_unit_test_teardown(test_cross_entropy_fast_vocab_split, fast_paths_on),
        cmocka_unit_test_teardown(test_walks, fast_paths_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
