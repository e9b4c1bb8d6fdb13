/*
 * test_cuk_contract.c — the GPU's contracting kernels (executor/cuda/
 * contract.cu: matmul, mean, SGEMM, Gram-Schmidt) against the CPU kernels.
 *
 * Two parts:
 *   1. On the CPU, always: the per-thread bodies and the contraction engine
 *      of contract_body.h run with a host engine (the map bodies for every
 *      output, with 1, 3 or 32 lanes sharing a sum; cblas_sgemm for each GEMM
 *      of a batch, after checking the leading dimensions cuBLAS would check
 *      and that no two GEMMs of a batch write the same element), and must
 *      agree with kernel_forward/kernel_backward, k_map and
 *      kernel_orthonormalize. Matmul runs under each choice of the engine:
 *      pieces of a role left to the batch, copies into GEMM order, and the
 *      default between them.
 *   2. On a GPU, when the build has CUDA and the machine a device: the same
 *      cases through cuk_forward/cuk_backward, cuk_sgemm and
 *      cuk_orthonormalize on device buffers. Skipped with a message elsewhere.
 *   Only the cuBLAS calls and the launches themselves are left to part 2.
 *
 * Shapes are odd (1, 3, 5, 7, 33) so that a swapped dimension cannot pass by
 * accident; sharded shapes cut a letter (local size and offset, the global
 * total unchanged); every backward adds into non-zero gradients.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "executor/cuda/contract_body.h"
#include "executor/kernels_internal.h"
#include "ir/graph.h"
#include "ir/util.h"

#ifdef HAVE_CUDA
#include <cuda_runtime.h>
#include "executor/cuda/cuk.h"
#endif

/* ----------------------------------------------------------------------------
 * Models of one op, values, comparisons */

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float urand(void) /* [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 4503599627370496.0 - 1.0);
}

static float *randv(int64_t n)
{
    float *v = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = urand();
    return v;
}

static float *copyv(const float *x, int64_t n)
{
    float *v = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    memcpy(v, x, (size_t)n * sizeof *v);
    return v;
}

/* A graph of one op `kind` with `spec`, letter sizes "b3 s5 h7"; inputs are
 * params in0.. (with same01, inputs 0 and 1 are one tensor), the output y. */
static Graph *one_op(const char *kind, const char *spec, const char *sizes, bool same01)
{
    int64_t sz[IR_LETTERS] = {0};
    for (const char *s = sizes; *s;) {
        if (*s >= 'a' && *s <= 'z') {
            char *end;
            sz[*s - 'a'] = strtoll(s + 1, &end, 10);
            s = end;
        } else {
            s++;
        }
    }
    char ops[IR_MAX_INPUTS + 1][IR_MAX_DIMS + 1] = {{0}};
    int n = 0, len = 0;
    for (const char *p = spec; *p; p++) {
        if (*p == ',' || *p == '-') {
            n++;
            len = 0;
            if (*p == '-') p++;
        } else {
            ops[n][len++] = *p;
        }
    }
    char buf[4096], *w = buf;
    const char *end = buf + sizeof buf;
    w += snprintf(w, (size_t)(end - w), "{\"name\":\"t\",\"tensors\":[");
    for (int k = 0; k <= n; k++) {
        if (k == 1 && same01) continue;
        char name[8];
        snprintf(name, sizeof name, k == n ? "y" : "in%d", k);
        w += snprintf(w, (size_t)(end - w), "%s{\"name\":\"%s\",\"shape\":[", k ? "," : "", name);
        for (int p = 0; ops[k][p]; p++)
            w += snprintf(w, (size_t)(end - w), "%s%lld", p ? "," : "",
                          (long long)sz[ops[k][p] - 'a']);
        w += snprintf(w, (size_t)(end - w), "],\"role\":\"%s\"}", k == n ? "activation" : "param");
    }
    w += snprintf(w, (size_t)(end - w),
                  "],\"ops\":[{\"name\":\"op\",\"kind\":\"%s\",\"spec\":\"%s\",\"inputs\":[",
                  kind, spec);
    for (int k = 0; k < n; k++)
        w += snprintf(w, (size_t)(end - w), "%s\"in%d\"", k ? "," : "", k == 1 && same01 ? 0 : k);
    snprintf(w, (size_t)(end - w), "],\"output\":\"y\"}]}");
    Err err = {{0}};
    cJSON *j = cJSON_Parse(buf);
    if (!j) fail_msg("test JSON does not parse: %s", buf);
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("model does not load: %s\n%s", err.msg, buf);
    return g;
}

/* One op's shape (whole, or with `cut` split: this rank holds the second
 * part, from `at` on) and its operands: inputs, dout and the gradients'
 * starting values. Inputs 0 and 1 share a buffer when they are one tensor. */
typedef struct {
    Graph *g;
    KernelShape ks;
    int nin;
    int64_t n[IR_MAX_INPUTS + 1];      /* elements per operand; [nin] the output */
    float *x[IR_MAX_INPUTS], *dout, *din0[IR_MAX_INPUTS];
    bool shared;                       /* in[0] and in[1] are one tensor */
} Case;

static void case_init(Case *c, const char *kind, const char *spec, const char *sizes,
                      bool same01, char cut, int64_t at)
{
    memset(c, 0, sizeof *c);
    c->g = one_op(kind, spec, sizes, same01);
    const Op *op = &c->g->ops[0];
    kernel_shape_whole(&c->ks, op, c->g);
    if (cut) {
        int l = cut - 'a';
        assert_true(at > 0 && at < c->ks.total[l]);
        c->ks.size[l] = c->ks.total[l] - at;
        c->ks.off[l] = at;
    }
    c->nin = op->nin;
    c->shared = same01;
    for (int k = 0; k <= c->nin; k++) c->n[k] = kernel_operand_numel(&c->ks, k);
    for (int k = 0; k < c->nin; k++) {
        c->x[k] = k == 1 && same01 ? c->x[0] : randv(c->n[k]);
        c->din0[k] = k == 1 && same01 ? c->din0[0] : randv(c->n[k]);
    }
    c->dout = randv(c->n[c->nin]);
}

static void case_free(Case *c)
{
    for (int k = 0; k < c->nin; k++)
        if (!(k == 1 && c->shared)) {
            free(c->x[k]);
            free(c->din0[k]);
        }
    free(c->dout);
    graph_free(c->g);
}

/* |got - want| <= rtol * max(1, max |want|) over the buffer */
static void assert_close(const char *what, const float *got, const float *want, int64_t n,
                         double rtol)
{
    double scale = 1;
    for (int64_t i = 0; i < n; i++)
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= rtol * scale))
            fail_msg("%s: element %lld is %.9g, the CPU kernel gives %.9g (scale %.3g)", what,
                     (long long)i, got[i], want[i], scale);
}

/* The CPU kernels' results of a case: forward output, and each gradient
 * (starting from din0) with every other gradient NULL, then all at once. */
typedef struct {
    float *out, *din[IR_MAX_INPUTS], *all[IR_MAX_INPUTS];
} Want;

static void want_init(Want *w, const Case *c)
{
    Err err = {{0}};
    const void *in[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++) in[k] = c->x[k];
    w->out = randv(c->n[c->nin]);
    if (kernel_forward(&c->ks, in, w->out, &err)) fail_msg("CPU forward: %s", err.msg);
    for (int k = 0; k < c->nin; k++) {
        float *din[IR_MAX_INPUTS] = {0};
        din[k] = w->din[k] = copyv(c->din0[k], c->n[k]);
        if (kernel_backward(&c->ks, in, w->out, c->dout, din, &err))
            fail_msg("CPU backward: %s", err.msg);
    }
    /* all at once: with one tensor twice, both gradients land in one buffer */
    float *all[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++)
        all[k] = w->all[k] = k == 1 && c->shared ? w->all[0] : copyv(c->din0[k], c->n[k]);
    if (kernel_backward(&c->ks, in, w->out, c->dout, all, &err))
        fail_msg("CPU backward: %s", err.msg);
}

static void want_free(Want *w, const Case *c)
{
    free(w->out);
    for (int k = 0; k < c->nin; k++) {
        free(w->din[k]);
        if (!(k == 1 && c->shared)) free(w->all[k]);
    }
}

/* ----------------------------------------------------------------------------
 * The host engine: what the GPU runs, one step after another on the CPU */

typedef struct {
    int64_t lanes;                     /* lanes sharing one output's sum */
    int live;                          /* scratch buffers not yet released */
    int maps, gemms, batched;          /* steps run; GEMMs with pointer batches */
    int scratch_left;                  /* scratch requests that succeed; -1: all */
    bool colmajor;                     /* GEMMs as the column-major call cuBLAS gets */
} Host;

static float *host_scratch(void *ctx, int64_t n, Err *err)
{
    Host *h = ctx;
    if (h->scratch_left == 0) {
        err_set(err, "no scratch left");
        return NULL;
    }
    if (h->scratch_left > 0) h->scratch_left--;
    float *p = k_scratch(n, "test scratch", err);
    if (p) {
        h->live++;
        for (int64_t i = 0; i < n; i++) p[i] = NAN; /* scratch starts as garbage */
    }
    return p;
}

static void host_release(void *ctx, float *p)
{
    Host *h = ctx;
    if (p) h->live--;
    free(p);
}

static int host_map(void *ctx, const CuMap *m, float *dst, const float *src, Err *err)
{
    (void)err;
    Host *h = ctx;
    h->maps++;
    for (int64_t o = 0; o < m->nout; o++) {
        float s = 0;
        for (int64_t lane = 0; lane < h->lanes; lane++)
            s += cu_map_partial(m, src, o, lane, h->lanes);
        cu_map_store(m, dst, o, s);
    }
    return 0;
}

/* The call contract.cu makes to cuBLAS, made to cblas: its arguments are
 * checked as cuBLAS checks them (column-major: an N operand of r rows needs
 * ld >= r, a T operand of r rows ld >= its k). */
static void colmajor_sgemm(CuColMajor x, float alpha, const float *a, const float *b, float beta,
                           float *c)
{
    assert_true(x.ldx >= (x.tx ? x.k : x.m) && x.ldx >= 1);
    assert_true(x.ldy >= (x.ty ? x.n : x.k) && x.ldy >= 1);
    assert_true(x.ldc >= x.m && x.ldc >= 1);
    cblas_sgemm(CblasColMajor, x.tx ? CblasTrans : CblasNoTrans, x.ty ? CblasTrans : CblasNoTrans,
                x.m, x.n, x.k, alpha, b, x.ldx, a, x.ldy, beta, c, x.ldc);
}

/* Each GEMM of the batch, after the checks cuBLAS makes (and one it cannot:
 * that the GEMMs of a batch write disjoint elements). */
static int host_gemm(void *ctx, const CuGemm *g, const float *a, const float *b, float *c,
                     Err *err)
{
    (void)err;
    Host *h = ctx;
    h->gemms++;
    h->batched += g->nb > 1;
    assert_true(g->m >= 1 && g->n >= 1 && g->k >= 1 && g->count >= 1);
    assert_true(g->lda >= (g->ta ? g->m : g->k));
    assert_true(g->ldb >= (g->tb ? g->k : g->n));
    assert_true(g->ldc >= g->n);
    int64_t span = 0;
    for (int64_t t = 0; t < g->count; t++) {
        int64_t oa, ob, oc;
        cu_gemm_offsets(g, t, &oa, &ob, &oc);
        if (oc + (g->m - 1) * g->ldc + g->n > span) span = oc + (g->m - 1) * g->ldc + g->n;
    }
    unsigned char *hit = calloc((size_t)span, 1);
    assert_non_null(hit);
    for (int64_t t = 0; t < g->count; t++) {
        int64_t oa, ob, oc;
        cu_gemm_offsets(g, t, &oa, &ob, &oc);
        for (int64_t i = 0; i < g->m; i++)
            for (int64_t j = 0; j < g->n; j++) {
                if (hit[oc + i * g->ldc + j]) fail_msg("two GEMMs of a batch write one element");
                hit[oc + i * g->ldc + j] = 1;
            }
        if (h->colmajor)
            colmajor_sgemm(cu_gemm_colmajor(g), 1.0f, a + oa, b + ob, g->beta, c + oc);
        else
            cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                        g->tb ? CblasTrans : CblasNoTrans, (int)g->m, (int)g->n, (int)g->k, 1.0f,
                        a + oa, (int)g->lda, b + ob, (int)g->ldb, g->beta, c + oc, (int)g->ldc);
    }
    free(hit);
    return 0;
}

static CuEngine host_engine(Host *h, int64_t lanes, int64_t min_run)
{
    memset(h, 0, sizeof *h);
    h->lanes = lanes;
    h->scratch_left = -1;
    CuEngine e;
    e.ctx = h;
    e.min_run = min_run;
    e.scratch = host_scratch;
    e.release = host_release;
    e.map = host_map;
    e.gemm = host_gemm;
    return e;
}

/* ----------------------------------------------------------------------------
 * Cases */

typedef struct {
    const char *spec, *sizes;
    bool same01;
    char cut;                          /* 0, or a letter split at its middle */
} Einsum;

static const Einsum einsums[] = {
    {"bi,ih->bh", "b3 i5 h7", false, 0},
    {"bsh,hf->bsf", "b3 s5 h7 f4", false, 0},
    {"bsh,hf->bsf", "b4 s33 h65 f31", false, 0},
    {"bsh,hnd->bsnd", "b3 s5 h7 n3 d4", false, 0},
    {"bsnd,btnd->bnst", "b2 s5 n3 d7 t4", false, 0},
    {"bsnd,btnd->bnst", "b2 s33 n3 d17 t29", false, 0},
    {"bnst,btnd->bsnd", "b2 s5 n3 d7 t4", false, 0},
    {"bnst,btnd->bsnd", "b2 s33 n3 d17 t29", false, 0},
    {"bsnd,ndh->bsh", "b2 s5 n3 d7 h4", false, 0},
    {"bsh,vh->bsv", "b3 s5 h7 v33", false, 0},
    {"bech,ehf->becf", "b2 e3 c5 h7 f4", false, 0},
    {"bech,ehf->becf", "b2 e3 c17 h33 f19", false, 0},
    {"bsh,bsec->bech", "b2 s5 e3 c4 h7", false, 0},
    {"bech,bsec,bse->bsh", "b2 s5 e3 c4 h7", false, 0},
    {"bech,bsec,bse->bsh", "b2 s17 e3 c9 h33", false, 0},
    {"nchw,chwf->nf", "n3 c2 h5 w3 f7", false, 0},
    {"btu,tuf->bf", "b3 t5 u5 f7", false, 0},
    {"bth,buh->btu", "b3 t5 u5 h7", true, 0},
    /* the engine's corners: a letter in one operand only (summed first, and
     * broadcast in its gradient), a batch letter innermost, the result
     * transposed, an outer product, letters in scrambled orders, summed
     * letters in two orders, letters of size 1 */
    {"bij,jk->bk", "b3 i5 j7 k4", false, 0},
    {"sb,bt->bst", "s5 b3 t7", false, 0},
    {"ij,jk->ki", "i5 j7 k3", false, 0},
    {"bi,bj->bij", "b3 i5 j7", false, 0},
    {"abc,cbd->dba", "a3 b5 c7 d4", false, 0},
    {"xai,iay,ayz->zx", "x3 a5 i7 y4 z3", false, 0},
    {"aij,jik->ak", "a3 i5 j7 k4", false, 0},
    {"bsh,hf->bsf", "b1 s1 h7 f1", false, 0},
    {"bi,ih->bh", "b1 i1 h1", false, 0},
    {"ab,bc->abc", "a1 b3 c1", false, 0},
    /* shards: a kept letter, a summed letter (a partial sum), a batch letter */
    {"bsh,hf->bsf", "b3 s7 h5 f4", false, 's'},
    {"bsh,hf->bsf", "b3 s5 h7 f4", false, 'h'},
    {"bsnd,btnd->bnst", "b2 s5 n3 d7 t4", false, 'n'},
    {"bech,bsec,bse->bsh", "b2 s5 e3 c4 h7", false, 'e'},
};

static const struct {
    const char *spec, *sizes;
    char cut;
} means[] = {
    {"nchw->nc", "n3 c5 h7 w4", 0},
    {"bsh->bh", "b3 s5 h7", 0},
    {"bsh->", "b3 s5 h7", 0},
    {"bsh->hb", "b3 s5 h7", 0},
    {"bsh->bsh", "b3 s1 h7", 0},
    {"bsh->bh", "b2 s100 h7", 0},
    {"nchw->nc", "n33 c7 h1 w3", 0},
    /* shards: the divisor counts the whole averaged letter */
    {"bsh->bh", "b3 s7 h5", 's'},
    {"bsh->bh", "b3 s5 h7", 'h'},
    {"nchw->nc", "n3 c5 h7 w4", 'h'},
};

static int64_t at_middle(const Case *c, char cut)
{
    return c->ks.total[cut - 'a'] / 2;
}

static void einsum_case(Case *c, const Einsum *e)
{
    case_init(c, "matmul", e->spec, e->sizes, e->same01, 0, 0);
    if (e->cut) {
        int64_t at = at_middle(c, e->cut);
        case_free(c);
        case_init(c, "matmul", e->spec, e->sizes, e->same01, e->cut, at);
    }
}

/* ----------------------------------------------------------------------------
 * Part 1: the bodies and the engine on the CPU */

static void test_map_bodies(void **state)
{
    (void)state;
    static const struct {
        const char *dl, *sl, *sizes;
    } maps[] = {
        {"bsh", "bsh", "b3 s5 h7"},       /* a copy */
        {"bhs", "bsh", "b3 s5 h7"},       /* a permutation */
        {"hsb", "bsh", "b3 s5 h7"},
        {"bh", "bsh", "b3 s5 h7"},        /* sums */
        {"hb", "bsh", "b3 s5 h7"},
        {"", "bsh", "b3 s5 h7"},
        {"s", "bsh", "b3 s33 h7"},
        {"bsh", "bh", "b3 s5 h7"},        /* broadcasts */
        {"hsb", "b", "b3 s5 h7"},
        {"bsh", "", "b3 s5 h7"},
        {"bnsd", "bsnd", "b2 s5 n3 d7"},
        {"ndb", "bsnd", "b2 s5 n3 d7"},   /* a sum and a permutation */
        {"bsh", "bsh", "b1 s5 h1"},
        {"nc", "nchw", "n3 c5 h1 w1"},
    };
    static const int64_t lanes[] = {1, 3, 32};
    for (size_t i = 0; i < sizeof maps / sizeof *maps; i++)
        for (int acc = 0; acc < 2; acc++)
            for (size_t ln = 0; ln < sizeof lanes / sizeof *lanes; ln++) {
                int64_t size[IR_LETTERS];
                for (int l = 0; l < IR_LETTERS; l++) size[l] = 1;
                for (const char *s = maps[i].sizes; *s; s++)
                    if (*s >= 'a' && *s <= 'z') size[*s - 'a'] = strtoll(s + 1, NULL, 10);
                int64_t nd = cu_numel(maps[i].dl, size), ns = cu_numel(maps[i].sl, size);
                float *src = randv(ns), *want = randv(nd), *got = copyv(want, nd);
                const float alpha = 0.75f;
                k_map(want, maps[i].dl, src, maps[i].sl, size, alpha, acc);
                Host h;
                CuEngine e = host_engine(&h, lanes[ln], CU_MIN_RUN);
                Err err = {{0}};
                assert_int_equal(cu_map(&e, got, maps[i].dl, src, maps[i].sl, size, alpha, acc,
                                        &err), 0);
                char what[128];
                snprintf(what, sizeof what, "map %s <- %s (acc %d, %lld lanes)", maps[i].dl,
                         maps[i].sl, acc, (long long)lanes[ln]);
                assert_close(what, got, want, nd, 1e-6);
                free(src);
                free(want);
                free(got);
            }
}

/* Runs the GPU's matmul through a host engine and compares with the CPU. */
static void check_matmul_host(const Case *c, const Want *w, int64_t lanes, int64_t min_run,
                              bool colmajor, const char *tag)
{
    const Op *op = c->ks.op;
    const void *in[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++) in[k] = c->x[k];
    char what[256];
    Err err = {{0}};
    Host h;
    CuEngine e = host_engine(&h, lanes, min_run);
    h.colmajor = colmajor;

    float *out = randv(c->n[c->nin]);
    if (cu_matmul_forward(&e, &c->ks, in, out, &err)) fail_msg("%s: %s", op->spec, err.msg);
    assert_int_equal(h.live, 0);
    snprintf(what, sizeof what, "%s (%s) forward, %s", op->spec, tag, op->name);
    assert_close(what, out, w->out, c->n[c->nin], 1e-5);
    free(out);

    for (int k = 0; k < c->nin; k++) {
        float *din[IR_MAX_INPUTS] = {0};
        din[k] = copyv(c->din0[k], c->n[k]);
        if (cu_matmul_backward(&e, &c->ks, in, c->dout, din, &err))
            fail_msg("%s: %s", op->spec, err.msg);
        snprintf(what, sizeof what, "%s (%s) gradient of input %d", op->spec, tag, k);
        assert_close(what, din[k], w->din[k], c->n[k], 1e-5);
        free(din[k]);
    }
    float *all[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++)
        all[k] = k == 1 && c->shared ? all[0] : copyv(c->din0[k], c->n[k]);
    if (cu_matmul_backward(&e, &c->ks, in, c->dout, all, &err))
        fail_msg("%s: %s", op->spec, err.msg);
    for (int k = 0; k < c->nin; k++) {
        snprintf(what, sizeof what, "%s (%s) gradients together, input %d", op->spec, tag, k);
        assert_close(what, all[k], w->all[k], c->n[k], 1e-5);
    }
    for (int k = 0; k < c->nin; k++)
        if (!(k == 1 && c->shared)) free(all[k]);
    assert_int_equal(h.live, 0);
}

static void test_matmul_host(void **state)
{
    (void)state;
    static const struct {
        int64_t lanes, min_run;
        bool colmajor;
        const char *tag;
    } modes[] = {
        {1, CU_MIN_RUN, false, "default"},
        {1, CU_MIN_RUN, true, "default, as cuBLAS is called"},
        {3, 1, true, "pieces to the batch"},
        {32, INT64_MAX, true, "copies into GEMM order"},
    };
    for (size_t i = 0; i < sizeof einsums / sizeof *einsums; i++) {
        Case c;
        einsum_case(&c, &einsums[i]);
        Want w;
        want_init(&w, &c);
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++)
            check_matmul_host(&c, &w, modes[m].lanes, modes[m].min_run, modes[m].colmajor,
                              modes[m].tag);
        want_free(&w, &c);
        case_free(&c);
    }
}

/* The common layouts run on the caller's buffers: one GEMM (a batch for
 * attention), no copies, in both directions. */
static void test_matmul_no_copies(void **state)
{
    (void)state;
    static const struct {
        const char *spec, *sizes;
        int batched;                   /* GEMMs with pointer batches, forward */
    } cases[] = {
        {"bsh,hf->bsf", "b4 s33 h65 f31", 0},
        {"bsh,hnd->bsnd", "b2 s33 h65 n3 d17", 0},
        {"bsnd,btnd->bnst", "b2 s33 n3 d17 t33", 1},
        {"bnst,btnd->bsnd", "b2 s33 n3 d17 t33", 1},
        {"bsnd,ndh->bsh", "b2 s33 n3 d17 h65", 0},
        {"bsh,vh->bsv", "b2 s33 h65 v97", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Case c;
        case_init(&c, "matmul", cases[i].spec, cases[i].sizes, false, 0, 0);
        const void *in[IR_MAX_INPUTS] = {c.x[0], c.x[1]};
        float *out = randv(c.n[2]);
        Err err = {{0}};
        Host h;
        CuEngine e = host_engine(&h, 1, CU_MIN_RUN);
        assert_int_equal(cu_matmul_forward(&e, &c.ks, in, out, &err), 0);
        if (h.maps || h.gemms != 1 || h.batched != cases[i].batched)
            fail_msg("%s forward: %d maps, %d GEMM calls (%d with pointers); want no map and "
                     "one call", cases[i].spec, h.maps, h.gemms, h.batched);
        e = host_engine(&h, 1, CU_MIN_RUN);
        assert_int_equal(cu_matmul_backward(&e, &c.ks, in, c.dout, c.din0, &err), 0);
        if (h.maps || h.gemms != 2)
            fail_msg("%s backward: %d maps, %d GEMM calls; want no map and two calls",
                     cases[i].spec, h.maps, h.gemms);
        free(out);
        case_free(&c);
    }
}

/* Scratch that runs out at each request in turn: an error that names the op,
 * and every buffer taken released. */
static void test_matmul_scratch_fails(void **state)
{
    (void)state;
    static const Einsum cases[] = {
        {"bech,ehf->becf", "b2 e3 c5 h7 f4", false, 0},
        {"bech,bsec,bse->bsh", "b2 s5 e3 c4 h7", false, 0},
        {"bij,jk->bk", "b3 i5 j7 k4", false, 0},
        {"aij,jik->ak", "a3 i5 j7 k4", false, 0},
        {"sb,bt->bst", "s5 b3 t7", false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Case c;
        einsum_case(&c, &cases[i]);
        const void *in[IR_MAX_INPUTS] = {c.x[0], c.x[1], c.x[2]};
        float *out = randv(c.n[c.nin]);
        for (int left = 0;; left++) {
            Host h;
            CuEngine e = host_engine(&h, 1, CU_MIN_RUN);
            h.scratch_left = left;
            Err err = {{0}};
            int rc = cu_matmul_forward(&e, &c.ks, in, out, &err);
            if (rc == 0) rc = cu_matmul_backward(&e, &c.ks, in, c.dout, c.din0, &err);
            assert_int_equal(h.live, 0);
            if (rc == 0) break;
            assert_non_null(strstr(err.msg, "no scratch left"));
            assert_non_null(strstr(err.msg, "op \"op\" (matmul"));
        }
        free(out);
        case_free(&c);
    }
}

static void check_mean_host(const Case *c, const Want *w, int64_t lanes)
{
    const Op *op = c->ks.op;
    Host h;
    CuEngine e = host_engine(&h, lanes, CU_MIN_RUN);
    Err err = {{0}};
    char what[256];
    CuMap m;
    float *out = randv(c->n[1]);
    cu_mean_plan(&m, &c->ks, false);
    assert_int_equal(e.map(e.ctx, &m, out, c->x[0], &err), 0);
    snprintf(what, sizeof what, "mean %s [%s] forward, %lld lanes", op->spec, op->name,
             (long long)lanes);
    assert_close(what, out, w->out, c->n[1], 1e-6);
    float *din = copyv(c->din0[0], c->n[0]);
    cu_mean_plan(&m, &c->ks, true);
    assert_int_equal(e.map(e.ctx, &m, din, c->dout, &err), 0);
    snprintf(what, sizeof what, "mean %s backward", op->spec);
    assert_close(what, din, w->din[0], c->n[0], 1e-6);
    free(out);
    free(din);
}

static void mean_case(Case *c, size_t i)
{
    case_init(c, "mean", means[i].spec, means[i].sizes, false, 0, 0);
    if (means[i].cut) {
        int64_t at = at_middle(c, means[i].cut);
        case_free(c);
        case_init(c, "mean", means[i].spec, means[i].sizes, false, means[i].cut, at);
    }
}

static void test_mean_host(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof means / sizeof *means; i++) {
        Case c;
        mean_case(&c, i);
        Want w;
        want_init(&w, &c);
        check_mean_host(&c, &w, 1);
        check_mean_host(&c, &w, 3);
        check_mean_host(&c, &w, 32);
        want_free(&w, &c);
        case_free(&c);
    }
}

/* Gram-Schmidt cases: random columns; a column twice another (dependent); a
 * zero column; more columns than rows; one column. */
static const struct {
    int64_t rows;
    int r;
    int dependent, zero;               /* column made dependent / zero, or -1 */
} orthos[] = {
    {37, 4, -1, -1}, {5, 3, 2, -1}, {7, 3, -1, 1}, {3, 5, -1, -1}, {1, 1, -1, -1},
    {1000, 8, 5, 2}, {33, 1, -1, -1},
};

static float *ortho_input(size_t i)
{
    int64_t rows = orthos[i].rows;
    int r = orthos[i].r;
    float *p = randv(rows * r);
    for (int64_t k = 0; k < rows; k++) {
        if (orthos[i].dependent >= 0) p[k * r + orthos[i].dependent] = 2 * p[k * r];
        if (orthos[i].zero >= 0) p[k * r + orthos[i].zero] = 0;
    }
    return p;
}

/* P^T P = I over the first min(rows, r) columns. (Columns past rows are
 * what rounding leaves when no direction is: kernel_orthonormalize
 * normalises that residue, so they are neither zero nor comparable.) */
static int ortho_cols(int64_t rows, int r) { return rows < r ? (int)rows : r; }

static void assert_orthonormal(const float *p, int64_t rows, int r, double tol)
{
    const int n = ortho_cols(rows, r);
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++) {
            double s = 0;
            for (int64_t i = 0; i < rows; i++) s += (double)p[i * r + a] * p[i * r + b];
            double want = a == b ? 1 : 0;
            if (!(fabs(s - want) <= tol))
                fail_msg("columns %d, %d: dot %.9g, want %g", a, b, s, want);
        }
}

static void test_orthonormalize_host(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof orthos / sizeof *orthos; i++) {
        int64_t rows = orthos[i].rows, n = rows * orthos[i].r;
        float *want = ortho_input(i), *got = copyv(want, n);
        kernel_orthonormalize(want, rows, orthos[i].r);
        cu_orthonormalize(got, rows, orthos[i].r, 0, 1);
        assert_close("orthonormalize", got, want, n, 1e-6);
        assert_orthonormal(got, rows, orthos[i].r, 1e-5);
        free(want);
        free(got);
    }
}

/* cuk_sgemm's cases: m n k, and a pad added to every leading dimension */
static const int sgemms[][4] = {
    {7, 5, 3, 0}, {33, 17, 65, 3}, {1, 7, 5, 1}, {128, 96, 256, 0}, {5, 1, 1, 2},
};

/* cuk_sgemm is cu_gemm_colmajor and one cuBLAS call: the translation, made
 * to cblas column-major, must give the row-major product. */
static void test_sgemm_colmajor(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof sgemms / sizeof *sgemms; i++)
        for (int t = 0; t < 4; t++) {
            const int m = sgemms[i][0], n = sgemms[i][1], k = sgemms[i][2], pad = sgemms[i][3];
            CuGemm g;
            memset(&g, 0, sizeof g);
            g.ta = t & 1, g.tb = t & 2;
            g.m = m, g.n = n, g.k = k;
            g.lda = (g.ta ? m : k) + pad, g.ldb = (g.tb ? k : n) + pad, g.ldc = n + pad;
            const int64_t na = (g.ta ? k : m) * g.lda, nb = (g.tb ? n : k) * g.ldb;
            const int64_t nc = m * g.ldc;
            float *a = randv(na), *b = randv(nb), *want = randv(nc), *got = copyv(want, nc);
            cblas_sgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans,
                        g.tb ? CblasTrans : CblasNoTrans, m, n, k, 0.5f, a, (int)g.lda, b,
                        (int)g.ldb, 0.25f, want, (int)g.ldc);
            colmajor_sgemm(cu_gemm_colmajor(&g), 0.5f, a, b, 0.25f, got);
            assert_close("sgemm as cuBLAS is called", got, want, nc, 1e-6);
            free(a);
            free(b);
            free(want);
            free(got);
        }
}

/* ----------------------------------------------------------------------------
 * Part 2: the same on a GPU */

static char no_gpu[512];               /* why the GPU tests are skipped; empty when they run */

#ifdef HAVE_CUDA

static CuCtx *ctx;
static char ctx_failed[1100];          /* a device, but no context on it: why */

#define CUDA_OK(call)                                                                     \
    do {                                                                                  \
        cudaError_t rc_ = (call);                                                         \
        if (rc_ != cudaSuccess) fail_msg("%s: %s", #call, cudaGetErrorString(rc_));       \
    } while (0)

static float *dev_from(const float *h, int64_t n)
{
    void *p = NULL;
    CUDA_OK(cudaMalloc(&p, (size_t)(n > 0 ? n : 1) * sizeof(float)));
    if (h) CUDA_OK(cudaMemcpy(p, h, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    /* a copy from pageable memory may still be in flight when cudaMemcpy
     * returns, and the kernels' stream does not wait for the default one */
    CUDA_OK(cudaDeviceSynchronize());
    return p;
}

static float *host_from(const float *d, int64_t n)
{
    Err err = {{0}};
    if (cuk_sync(ctx, &err)) fail_msg("cuk_sync: %s", err.msg);
    float *h = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    CUDA_OK(cudaMemcpy(h, d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

static bool gpu_ready(void)
{
    static bool said;
    if (ctx_failed[0]) fail_msg("cuk_new: %s", ctx_failed);
    if (!ctx && !said) {
        print_message("GPU tests skipped: %s\n", no_gpu);
        said = true;
    }
    return ctx != NULL;
}

/* A case on the device: forward, each gradient alone, then all together. */
static void check_gpu(const Case *c, const Want *w, double rtol)
{
    const Op *op = c->ks.op;
    char what[256];
    Err err = {{0}};
    float *dx[IR_MAX_INPUTS] = {0};
    const void *in[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++) {
        dx[k] = k == 1 && c->shared ? dx[0] : dev_from(c->x[k], c->n[k]);
        in[k] = dx[k];
    }
    float *dout = dev_from(c->dout, c->n[c->nin]);
    float *out = dev_from(NULL, c->n[c->nin]);
    CUDA_OK(cudaMemset(out, 0xff, (size_t)c->n[c->nin] * sizeof(float))); /* NaNs */
    CUDA_OK(cudaDeviceSynchronize());

    if (cuk_forward(ctx, &c->ks, in, out, &err)) fail_msg("cuk_forward: %s", err.msg);
    float *h = host_from(out, c->n[c->nin]);
    snprintf(what, sizeof what, "GPU %s \"%s\" forward", op->name, op->spec);
    assert_close(what, h, w->out, c->n[c->nin], rtol);
    free(h);

    for (int k = 0; k < c->nin; k++) {
        float *din[IR_MAX_INPUTS] = {0};
        din[k] = dev_from(c->din0[k], c->n[k]);
        if (cuk_backward(ctx, &c->ks, in, out, dout, din, &err))
            fail_msg("cuk_backward: %s", err.msg);
        h = host_from(din[k], c->n[k]);
        snprintf(what, sizeof what, "GPU %s \"%s\" gradient of input %d", op->name, op->spec, k);
        assert_close(what, h, w->din[k], c->n[k], rtol);
        free(h);
        CUDA_OK(cudaFree(din[k]));
    }
    float *all[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++)
        all[k] = k == 1 && c->shared ? all[0] : dev_from(c->din0[k], c->n[k]);
    if (cuk_backward(ctx, &c->ks, in, out, dout, all, &err))
        fail_msg("cuk_backward: %s", err.msg);
    for (int k = 0; k < c->nin; k++) {
        h = host_from(all[k], c->n[k]);
        snprintf(what, sizeof what, "GPU %s \"%s\" gradients together, input %d", op->name,
                 op->spec, k);
        assert_close(what, h, w->all[k], c->n[k], rtol);
        free(h);
    }
    for (int k = 0; k < c->nin; k++)
        if (!(k == 1 && c->shared)) {
            CUDA_OK(cudaFree(all[k]));
            CUDA_OK(cudaFree(dx[k]));
        }
    CUDA_OK(cudaFree(dout));
    CUDA_OK(cudaFree(out));
}

static void test_matmul_gpu(void **state)
{
    (void)state;
    if (!gpu_ready()) skip();
    for (size_t i = 0; i < sizeof einsums / sizeof *einsums; i++) {
        Case c;
        einsum_case(&c, &einsums[i]);
        Want w;
        want_init(&w, &c);
        check_gpu(&c, &w, 3e-5);
        want_free(&w, &c);
        case_free(&c);
    }
    /* sizes where the GEMMs are real ones */
    static const Einsum big[] = {
        {"bsh,hf->bsf", "b4 s128 h256 f384", false, 0},
        {"bsnd,btnd->bnst", "b2 s128 n4 d64 t128", false, 0},
        {"bnst,btnd->bsnd", "b2 s128 n4 d64 t128", false, 0},
        {"bech,ehf->becf", "b2 e4 c65 h128 f96", false, 0},
    };
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        Case c;
        einsum_case(&c, &big[i]);
        Want w;
        want_init(&w, &c);
        check_gpu(&c, &w, 3e-5);
        want_free(&w, &c);
        case_free(&c);
    }
}

static void test_mean_gpu(void **state)
{
    (void)state;
    if (!gpu_ready()) skip();
    for (size_t i = 0; i < sizeof means / sizeof *means; i++) {
        Case c;
        mean_case(&c, i);
        Want w;
        want_init(&w, &c);
        check_gpu(&c, &w, 1e-5);
        want_free(&w, &c);
        case_free(&c);
    }
    /* enough outputs for a warp each (a contiguous sum), and few outputs of
     * long strided and contiguous sums (a block each) */
    static const struct {
        const char *spec, *sizes;
    } big[] = {
        {"nchw->nc", "n64 c200 h7 w7"},
        {"bsh->bh", "b2 s1000 h7"},
        {"bsh->", "b3 s500 h65"},
        {"bsh->h", "b16 s512 h768"},
    };
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        Case c;
        case_init(&c, "mean", big[i].spec, big[i].sizes, false, 0, 0);
        Want w;
        want_init(&w, &c);
        check_gpu(&c, &w, 1e-5);
        want_free(&w, &c);
        case_free(&c);
    }
}

static void test_sgemm_gpu(void **state)
{
    (void)state;
    if (!gpu_ready()) skip();
    for (size_t i = 0; i < sizeof sgemms / sizeof *sgemms; i++)
        for (int t = 0; t < 4; t++) {
            const int m = sgemms[i][0], n = sgemms[i][1], k = sgemms[i][2], pad = sgemms[i][3];
            const bool ta = t & 1, tb = t & 2;
            const int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
            const int64_t na = (int64_t)(ta ? k : m) * lda, nb = (int64_t)(tb ? n : k) * ldb;
            const int64_t nc = (int64_t)m * ldc;
            float *a = randv(na), *b = randv(nb), *want = randv(nc);
            float *da = dev_from(a, na), *db = dev_from(b, nb), *dc = dev_from(want, nc);
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                        tb ? CblasTrans : CblasNoTrans, m, n, k, 0.5f, a, lda, b, ldb, 0.25f,
                        want, ldc);
            Err err = {{0}};
            if (cuk_sgemm(ctx, ta, tb, m, n, k, 0.5f, da, lda, db, ldb, 0.25f, dc, ldc, &err))
                fail_msg("cuk_sgemm: %s", err.msg);
            float *got = host_from(dc, nc);
            char what[128];
            snprintf(what, sizeof what, "cuk_sgemm m %d n %d k %d trans %d %d", m, n, k, ta, tb);
            assert_close(what, got, want, nc, 3e-5);
            free(a);
            free(b);
            free(want);
            free(got);
            CUDA_OK(cudaFree(da));
            CUDA_OK(cudaFree(db));
            CUDA_OK(cudaFree(dc));
        }
}

static void test_orthonormalize_gpu(void **state)
{
    (void)state;
    if (!gpu_ready()) skip();
    for (size_t i = 0; i < sizeof orthos / sizeof *orthos; i++) {
        int64_t rows = orthos[i].rows, n = rows * orthos[i].r;
        float *want = ortho_input(i);
        float *d = dev_from(want, n);
        kernel_orthonormalize(want, rows, orthos[i].r);
        Err err = {{0}};
        if (cuk_orthonormalize(ctx, d, rows, orthos[i].r, &err))
            fail_msg("cuk_orthonormalize: %s", err.msg);
        float *got = host_from(d, n);
        const int r = orthos[i].r, cols = ortho_cols(rows, r);
        for (int64_t k = 0; k < rows; k++) /* columns past rows: rounding noise */
            for (int j = cols; j < r; j++) got[k * r + j] = want[k * r + j];
        assert_close("GPU orthonormalize", got, want, n, 1e-4);
        assert_orthonormal(got, rows, orthos[i].r, 1e-5);
        free(want);
        free(got);
        CUDA_OK(cudaFree(d));
    }
}

static int gpu_setup(void **state)
{
    (void)state;
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess || n < 1) {
        snprintf(no_gpu, sizeof no_gpu, "no CUDA device (%s)",
                 rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
        return 0;
    }
    Err err = {{0}};
    ctx = cuk_new(&err);
    if (!ctx) snprintf(ctx_failed, sizeof ctx_failed, "%s", err.msg);
    return 0;
}

static int gpu_teardown(void **state)
{
    (void)state;
    cuk_free(ctx);
    ctx = NULL;
    return 0;
}

#else

static bool gpu_ready(void)
{
    print_message("GPU tests skipped: %s\n", no_gpu);
    return false;
}

static void test_gpu(void **state)
{
    (void)state;
    gpu_ready();
    skip();
}

static int gpu_setup(void **state)
{
    (void)state;
    snprintf(no_gpu, sizeof no_gpu, "strata was built without CUDA");
    return 0;
}

static int gpu_teardown(void **state)
{
    (void)state;
    return 0;
}

#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_bodies),
        cmocka_unit_test(test_matmul_host),
        cmocka_unit_test(test_matmul_no_copies),
        cmocka_unit_test(test_matmul_scratch_fails),
        cmocka_unit_test(test_mean_host),
        cmocka_unit_test(test_orthonormalize_host),
        cmocka_unit_test(test_sgemm_colmajor),
#ifdef HAVE_CUDA
        cmocka_unit_test(test_matmul_gpu),
        cmocka_unit_test(test_mean_gpu),
        cmocka_unit_test(test_sgemm_gpu),
        cmocka_unit_test(test_orthonormalize_gpu),
#else
        cmocka_unit_test(test_gpu),
#endif
    };
    return cmocka_run_group_tests(tests, gpu_setup, gpu_teardown);
}
