/*
 * test_cuk_elem.c — the elementwise CUDA kernels (executor/cuda/elem.cu)
 * against the CPU kernels, in two parts.
 *
 * CPU part (every build): the bodies of executor/cuda/elem_body.h run for
 * every thread index in turn, one lane where the device uses a warp (the
 * reductions with a few emulated lanes, so that their striding is checked),
 * on the plans elem.cu builds, and must give what kernel_forward /
 * kernel_backward and the functions of k_optim.c and k_init.c give: to the
 * bit where the GPU promises that (half precision, int8, the initialisers,
 * the forward ops), else to float rounding. Shapes are odd (sizes 1, 3, 7,
 * 33), letters in unusual orders, and split: a letter cut to a local part
 * with an offset into the global size (an embedding table split by rows).
 * Gradients are added into buffers that do not start at zero.
 *
 * GPU part (builds with CUDA, on a machine with a device): the same cases
 * through cuk_forward / cuk_backward and the buffer functions of cuk.h on
 * device memory, against the CPU kernels. Without a device it is skipped
 * with the reason, once.
 *
 * Legend: ks = the kernel shape of a case; n[k] = elements of operand k
 * (k == nin: the output); dy = the output gradient.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "executor/cuda/elem_body.h"
#include "executor/kernels.h"
#include "ir/graph.h"
#include "ir/util.h"

#ifdef HAVE_CUDA
#include <cuda_runtime.h>
#include "executor/cuda/cuk.h"
#endif

/* ----------------------------------------------------------------------------
 * One-op models */

static void append(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t n, const char *fmt, ...)
{
    size_t len = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, n - len, fmt, ap);
    va_end(ap);
}

/* sizes "b3 s5 h7" into sz */
static void parse_sizes(const char *s, int64_t sz[IR_LETTERS])
{
    memset(sz, 0, IR_LETTERS * sizeof *sz);
    while (*s) {
        if (*s >= 'a' && *s <= 'z') {
            char *end;
            sz[*s - 'a'] = strtoll(s + 1, &end, 10);
            s = end;
        } else {
            s++;
        }
    }
}

/* A model of one op `kind` with `spec` ("bsh,h->bsh") at `sizes`; `attrs`
 * is more JSON for the op. Inputs in0.. are params (embedding indices: i32
 * inputs; mse's target: an f32 label); the output is y. */
static Graph *one_op(const char *kind, const char *spec, const char *sizes, const char *attrs)
{
    int64_t sz[IR_LETTERS];
    parse_sizes(sizes, sz);
    char ops[IR_MAX_INPUTS + 1][IR_MAX_DIMS + 1] = {{0}};
    int n = 0, len = 0;
    for (const char *p = spec; *p; p++) {
        if (*p == ',' || *p == '-') {
            ops[n][len] = 0;
            n++;
            len = 0;
            if (*p == '-') p++;
        } else {
            ops[n][len++] = *p;
        }
    }
    int nin = n;
    char buf[4096] = "{\"name\":\"t\",\"tensors\":[";
    for (int k = 0; k <= nin; k++) {
        bool idx = strcmp(kind, "embedding") == 0 && k == 0;
        bool target = strcmp(kind, "mse") == 0 && k == 1;
        char name[8];
        snprintf(name, sizeof name, k == nin ? "y" : "in%d", k);
        append(buf, sizeof buf, "%s{\"name\":\"%s\",\"shape\":[", k ? "," : "", name);
        for (int p = 0; ops[k][p]; p++)
            append(buf, sizeof buf, "%s%lld", p ? "," : "", (long long)sz[ops[k][p] - 'a']);
        append(buf, sizeof buf, "],\"dtype\":\"%s\",\"role\":\"%s\"}", idx ? "i32" : "f32",
               k == nin ? "activation" : idx ? "input" : target ? "label" : "param");
    }
    append(buf, sizeof buf, "],\"ops\":[{\"name\":\"op\",\"kind\":\"%s\",\"spec\":\"%s\",\"inputs\":[",
           kind, spec);
    for (int k = 0; k < nin; k++) append(buf, sizeof buf, "%s\"in%d\"", k ? "," : "", k);
    append(buf, sizeof buf, "],\"output\":\"y\"%s}]}", attrs ? attrs : "");
    cJSON *j = cJSON_Parse(buf);
    if (!j) fail_msg("test JSON does not parse: %s", buf);
    Err err = {{0}};
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("model does not load: %s\n%s", err.msg, buf);
    return g;
}

/* ----------------------------------------------------------------------------
 * Values and comparisons */

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static double urand(void) /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}

static uint32_t rbits(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

static float *randv(int64_t n, double lo, double hi)
{
    float *v = xmalloc(sizeof *v * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) v[i] = (float)(lo + (hi - lo) * urand());
    return v;
}

static float *copyv(const float *x, int64_t n)
{
    float *v = xmalloc(sizeof *v * (size_t)(n > 0 ? n : 1));
    memcpy(v, x, sizeof *v * (size_t)n);
    return v;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* |got - want| <= atol + rtol |want| everywhere (NaN matches NaN; rtol ==
 * atol == 0: the same bits) */
static void check_close(const char *what, const float *got, const float *want, int64_t n,
                        double rtol, double atol)
{
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) && isnan(want[i])) continue;
        bool ok = rtol == 0 && atol == 0
                      ? bits_of(got[i]) == bits_of(want[i])
                      : fabs((double)got[i] - want[i]) <= atol + rtol * fabs((double)want[i]);
        if (!ok)
            fail_msg("%s[%lld]: got %.9g (0x%08x), want %.9g (0x%08x)", what, (long long)i,
                     (double)got[i], bits_of(got[i]), (double)want[i], bits_of(want[i]));
    }
}

/* ----------------------------------------------------------------------------
 * A case: one op, its (possibly split) shape, random inputs */

typedef struct {
    const char *kind, *spec, *sizes, *attrs;
    char split;                        /* letter cut to [off, off + part) of its size; 0: none */
    int64_t off, part;
} OpCase;

typedef struct {
    Graph *g;
    KernelShape ks;
    int nin;
    int64_t n[IR_MAX_INPUTS + 1];
    void *x[IR_MAX_INPUTS];
    bool is_int[IR_MAX_INPUTS];
    char name[160];
} Case;

static void case_init(Case *c, const OpCase *oc)
{
    memset(c, 0, sizeof *c);
    c->g = one_op(oc->kind, oc->spec, oc->sizes, oc->attrs);
    const Op *op = &c->g->ops[0];
    kernel_shape_whole(&c->ks, op, c->g);
    if (oc->split) {
        int l = oc->split - 'a';
        c->ks.size[l] = oc->part;
        c->ks.off[l] = oc->off;
    }
    snprintf(c->name, sizeof c->name, "%s \"%s\" %s", oc->kind, oc->spec, oc->sizes);
    if (oc->split)
        append(c->name, sizeof c->name, " split '%c' [%lld, +%lld)", oc->split,
               (long long)oc->off, (long long)oc->part);
    c->nin = op->nin;
    for (int k = 0; k <= c->nin; k++) c->n[k] = kernel_operand_numel(&c->ks, k);
    for (int k = 0; k < c->nin; k++) {
        c->is_int[k] = c->g->tensors[op->in[k]].dtype == DT_I32;
        if (c->is_int[k]) {
            int g = __builtin_ctz(op->gather_mask);
            int32_t *v = xmalloc(sizeof *v * (size_t)c->n[k]);
            for (int64_t i = 0; i < c->n[k]; i++)
                v[i] = (int32_t)(urand() * (double)c->ks.total[g]);
            c->x[k] = v;
        } else {
            /* gelu's tails too: far below 0, where 1 + tanh cancels */
            bool wide = op->kind == OP_GELU || op->kind == OP_RELU;
            float *v = randv(c->n[k], wide ? -12 : -1, wide ? 12 : 1);
            if (wide && c->n[k] > 3) v[0] = 0, v[1] = -0.0f, v[2] = -95;
            c->x[k] = v;
        }
    }
}

static void case_free(Case *c)
{
    for (int k = 0; k < c->nin; k++) free(c->x[k]);
    graph_free(c->g);
}

static const OpCase op_cases[] = {
    {"add", "bsh,bsh->bsh", "b3 s7 h33", NULL, 0, 0, 0},
    {"add", "bsh,bsh,bsh->bsh", "b1 s3 h7", NULL, 0, 0, 0},
    {"add", "ab,ab,ab,ab->ab", "a7 b1", NULL, 0, 0, 0},
    {"add", "h,h->h", "h1", NULL, 0, 0, 0},
    {"bias", "bsh,h->bsh", "b3 s7 h33", NULL, 0, 0, 0},
    {"bias", "bsh,h->bsh", "b3 s5 h7", NULL, 0, 0, 0},
    {"bias", "bsh,h->bsh", "b4 s65 h40", NULL, 0, 0, 0},
    {"bias", "bsh,h->bsh", "b3 s5 h1", NULL, 0, 0, 0},
    {"bias", "bsh,sh->bsh", "b3 s5 h7", NULL, 0, 0, 0},
    {"bias", "bsh,hs->bsh", "b3 s5 h7", NULL, 0, 0, 0},
    {"bias", "nchw,c->nchw", "n3 c5 h7 w4", NULL, 0, 0, 0},
    {"bias", "hb,h->hb", "h33 b7", NULL, 0, 0, 0},
    {"bias", "bsh,b->bsh", "b3 s1 h7", NULL, 0, 0, 0},
    {"bias", "bsh,h->bsh", "b3 s5 h8", NULL, 'h', 4, 4},
    {"gelu", "bsf->bsf", "b3 s7 f33", NULL, 0, 0, 0},
    {"gelu", "f->f", "f1", NULL, 0, 0, 0},
    {"relu", "bsf->bsf", "b3 s7 f33", NULL, 0, 0, 0},
    {"relu", "nchw->nchw", "n1 c3 h7 w1", NULL, 0, 0, 0},
    {"embedding", "bs,vh->bsh", "b3 s5 v7 h4", ",\"gather\":\"v\"", 0, 0, 0},
    {"embedding", "bs,vh->bsh", "b3 s5 v7 h33", ",\"gather\":\"v\"", 'v', 3, 4},
    {"embedding", "bs,vh->bsh", "b3 s5 v7 h33", ",\"gather\":\"v\"", 'v', 0, 3},
    {"embedding", "bs,vh->bsh", "b3 s5 v7 h8", ",\"gather\":\"v\"", 'h', 4, 4},
    {"embedding", "btl,tvh->bth", "b3 t2 l5 v7 h4", ",\"gather\":\"v\"", 0, 0, 0},
    {"embedding", "btl,tvh->bth", "b3 t2 l5 v7 h4", ",\"gather\":\"v\"", 'v', 2, 3},
    {"embedding", "bs,hv->bsh", "b3 s5 v7 h4", ",\"gather\":\"v\"", 0, 0, 0},
    /* bags over a table letter, and over a letter of both indices and table */
    {"embedding", "bs,tvh->bsh", "b3 s5 t3 v7 h4", ",\"gather\":\"v\"", 0, 0, 0},
    {"embedding", "bsl,lvh->bsh", "b3 s5 l3 v7 h33", ",\"gather\":\"v\"", 'v', 1, 5},
    {"embedding", "s,vh->sh", "s1 v1 h1", ",\"gather\":\"v\"", 0, 0, 0},
    {"embedding", "bs,vh->bsh", "b4 s64 v500 h96", ",\"gather\":\"v\"", 'v', 100, 250},
    /* concat: its letter first, last, in the middle; an own extent of 1;
     * three inputs; a shared letter split */
    {"concat", "nahw,nbhw->nchw", "n2 a3 b5 h4 w3 c8", NULL, 0, 0, 0},
    {"concat", "anhw,nhwb->nhcw", "n2 a3 b5 h4 w33 c8", NULL, 0, 0, 0},
    {"concat", "ah,hb,hc->dh", "a2 b3 c1 h5 d6", NULL, 0, 0, 0},
    {"concat", "nahw,nbhw->nchw", "n2 a3 b5 h8 w3 c8", NULL, 'h', 4, 4},
    /* mse: target laid out like the prediction or not; a split letter (the
     * loss a partial sum over the global count) */
    {"mse", "bk,bk->", "b3 k33", NULL, 0, 0, 0},
    {"mse", "bk,kb->", "b3 k33", NULL, 0, 0, 0},
    {"mse", "nchw,nhwc->", "n2 c3 h5 w7", NULL, 0, 0, 0},
    {"mse", "bk,bk->", "b8 k33", NULL, 'b', 4, 4},
    {"mse", "b,b->", "b1", NULL, 0, 0, 0},
};
#define N_OP_CASES (sizeof op_cases / sizeof *op_cases)

/* ----------------------------------------------------------------------------
 * Host emulation of the launches of elem.cu */

static void emu_forward(const KernelShape *ks, const void *const *in, float *out)
{
    const Op *op = ks->op;
    const int64_t n = kernel_operand_numel(ks, op->nin);
    switch (op->kind) {
    case OP_ADD: {
        ElemPtrs p;
        memset(&p, 0, sizeof p);
        p.nin = op->nin;
        for (int k = 0; k < op->nin; k++) p.x[k] = in[k];
        for (int64_t i = 0; i < n; i++) elem_add_fwd(i, out, &p);
        break;
    }
    case OP_BIAS: {
        ElemBiasPlan p;
        elem_bias_plan(&p, ks);
        assert_int_equal(p.n, n);
        for (int64_t i = 0; i < p.n; i++) elem_bias_fwd(i, out, in[0], in[1], &p.fwd);
        break;
    }
    case OP_GELU:
        for (int64_t i = 0; i < n; i++) elem_gelu_fwd(i, out, in[0]);
        break;
    case OP_RELU:
        for (int64_t i = 0; i < n; i++) elem_relu_fwd(i, out, in[0]);
        break;
    case OP_EMBEDDING: {
        ElemEmbedPlan p;
        elem_embed_plan(&p, ks);
        assert_int_equal(p.out.numel, n);
        for (int64_t i = 0; i < n; i++) elem_embed_fwd(i, out, in[0], in[1], &p);
        break;
    }
    case OP_CONCAT: {
        int64_t total = 0;
        for (int k = 0; k < op->nin; k++) {
            ElemConcatPlan p;
            elem_concat_plan(&p, ks, k);
            assert_int_equal(p.w.numel, kernel_operand_numel(ks, k));
            total += p.w.numel;
            for (int64_t i = 0; i < p.w.numel; i++) elem_concat_fwd(i, out, in[k], &p);
        }
        assert_int_equal(total, n);
        break;
    }
    case OP_MSE: {
        /* MSE_BLOCKS blocks of MSE_THREADS threads: a part per block, the
         * parts added in block order, as kern_mse_part / kern_mse_loss */
        enum { MSE_BLOCKS = 3, MSE_THREADS = 7 };
        ElemMsePlan p;
        elem_mse_plan(&p, ks);
        assert_int_equal(p.w.numel, kernel_operand_numel(ks, 0));
        double s = 0;
        for (int b = 0; b < MSE_BLOCKS; b++) {
            double part = 0;
            for (int t = 0; t < MSE_THREADS; t++)
                part += elem_mse_part(in[0], in[1], b * MSE_THREADS + t,
                                      MSE_BLOCKS * MSE_THREADS, &p);
            s += part;
        }
        out[0] = (float)(s / p.count);
        break;
    }
    default:
        fail_msg("no emulation for %s", op_kind_name(op->kind));
    }
}

/* Lanes of the emulated reductions: each sums every LANES-th element. */
#define LANES 5

static void emu_backward(const KernelShape *ks, const void *const *in, const float *dy,
                         float *const *din)
{
    const Op *op = ks->op;
    const int64_t n = kernel_operand_numel(ks, op->nin);
    switch (op->kind) {
    case OP_ADD: {
        ElemPtrs p;
        memset(&p, 0, sizeof p);
        p.nin = op->nin;
        for (int k = 0; k < op->nin; k++) p.d[k] = din[k];
        for (int64_t i = 0; i < n; i++) elem_add_bwd(i, dy, &p);
        break;
    }
    case OP_BIAS: {
        ElemBiasPlan p;
        elem_bias_plan(&p, ks);
        if (din[0])
            for (int64_t i = 0; i < p.n; i++) elem_acc(i, din[0], dy);
        if (din[1]) {
            assert_int_equal(p.kept.numel * p.summed.numel, p.n);
            assert_int_equal(p.kept.numel, kernel_operand_numel(ks, 1));
            for (int64_t j = 0; j < p.kept.numel; j++) {
                float t = 0;
                for (int l = 0; l < LANES; l++)
                    t += elem_lane_sum(elem_bias_partial(dy, j, l, LANES, &p.kept, &p.summed));
                din[1][j] += t;
            }
        }
        break;
    }
    case OP_GELU:
        if (din[0])
            for (int64_t i = 0; i < n; i++) elem_gelu_bwd(i, din[0], in[0], dy);
        break;
    case OP_RELU:
        if (din[0])
            for (int64_t i = 0; i < n; i++) elem_relu_bwd(i, din[0], in[0], dy);
        break;
    case OP_EMBEDDING: {
        if (!din[1]) break;
        ElemEmbedPlan p;
        elem_embed_plan(&p, ks);
        for (int64_t i = 0; i < p.all.numel; i++) elem_embed_bwd(i, din[1], in[0], dy, &p);
        break;
    }
    case OP_CONCAT:
        for (int k = 0; k < op->nin; k++) {
            if (!din[k]) continue;
            ElemConcatPlan p;
            elem_concat_plan(&p, ks, k);
            for (int64_t i = 0; i < p.w.numel; i++) elem_concat_bwd(i, din[k], dy, &p);
        }
        break;
    case OP_MSE: {
        ElemMsePlan p;
        elem_mse_plan(&p, ks);
        const float c = (float)(2.0 * dy[0] / p.count);     /* as kern_mse_bwd */
        for (int64_t i = 0; i < p.w.numel; i++)
            elem_mse_bwd(i, din[0], din[1], in[0], in[1], c, &p);
        break;
    }
    default:
        fail_msg("no emulation for %s", op_kind_name(op->kind));
    }
}

/* Gradient buffers that start at 0.25 + noise (backward adds) for every
 * float input; NULL for indices. */
static void grads_new(const Case *c, float **din)
{
    for (int k = 0; k < IR_MAX_INPUTS; k++) din[k] = NULL;
    for (int k = 0; k < c->nin; k++)
        if (!c->is_int[k]) din[k] = randv(c->n[k], 0.2, 0.3);
}

static void grads_free(float **din)
{
    for (int k = 0; k < IR_MAX_INPUTS; k++) free(din[k]);
}

static void cpu_forward(const Case *c, float *out)
{
    Err err = {{0}};
    if (kernel_forward(&c->ks, (const void *const *)c->x, out, &err))
        fail_msg("%s: CPU forward: %s", c->name, err.msg);
}

static void cpu_backward(const Case *c, const float *out, const float *dy, float *const *din)
{
    Err err = {{0}};
    if (kernel_backward(&c->ks, (const void *const *)c->x, out, dy, din, &err))
        fail_msg("%s: CPU backward: %s", c->name, err.msg);
}

/* Forward to the bit (the same operations in the same order; gelu to an
 * ulp, in case the CPU's vector clone rounds an exp differently); backward
 * to float rounding (bias sums in another order). */
static void test_ops_host(void **state)
{
    (void)state;
    for (size_t e = 0; e < N_OP_CASES; e++) {
        Case c;
        case_init(&c, &op_cases[e]);
        const int64_t no = c.n[c.nin];
        float *want = xmalloc(sizeof *want * (size_t)no), *got = xmalloc(sizeof *got * (size_t)no);
        for (int64_t i = 0; i < no; i++) got[i] = NAN;
        cpu_forward(&c, want);
        emu_forward(&c.ks, (const void *const *)c.x, got);
        char what[256];
        snprintf(what, sizeof what, "%s forward", c.name);
        /* mse sums in another order */
        bool gelu = c.g->ops[0].kind == OP_GELU, mse = c.g->ops[0].kind == OP_MSE;
        check_close(what, got, want, no, gelu ? 2e-7 : mse ? 1e-6 : 0, gelu ? 1e-30 : 0);

        float *dy = randv(no, -1, 1), *dc[IR_MAX_INPUTS], *de[IR_MAX_INPUTS];
        grads_new(&c, dc);
        for (int k = 0; k < IR_MAX_INPUTS; k++) de[k] = dc[k] ? copyv(dc[k], c.n[k]) : NULL;
        cpu_backward(&c, want, dy, dc);
        emu_backward(&c.ks, (const void *const *)c.x, dy, de);
        for (int k = 0; k < c.nin; k++) {
            if (!dc[k]) continue;
            snprintf(what, sizeof what, "%s d(input %d)", c.name, k);
            check_close(what, de[k], dc[k], c.n[k], 1e-5, 1e-5);
        }
        /* only some gradients wanted: the others stay NULL */
        if (c.nin == 2 && dc[0] && dc[1]) {
            free(de[0]);
            de[0] = NULL;
            emu_backward(&c.ks, (const void *const *)c.x, dy, de);
            float *dc0 = dc[0];
            dc[0] = NULL;
            cpu_backward(&c, want, dy, dc);
            dc[0] = dc0;
            snprintf(what, sizeof what, "%s d(input 1) alone", c.name);
            check_close(what, de[1], dc[1], c.n[1], 1e-5, 1e-5);
        }
        grads_free(dc);
        grads_free(de);
        free(dy);
        free(want);
        free(got);
        case_free(&c);
    }
}

/* x + x: one gradient buffer receives both inputs' gradients. */
static void test_add_same_buffer_host(void **state)
{
    (void)state;
    const OpCase oc = {"add", "bh,bh->bh", "b3 h7", NULL, 0, 0, 0};
    Case c;
    case_init(&c, &oc);
    float *dy = randv(21, -1, 1), *d1 = randv(21, -1, 1), *d2 = copyv(d1, 21);
    float *dc[IR_MAX_INPUTS] = {d1, d1}, *de[IR_MAX_INPUTS] = {d2, d2};
    cpu_backward(&c, dy, dy, dc);
    emu_backward(&c.ks, (const void *const *)c.x, dy, de);
    check_close("add x + x gradient", d2, d1, 21, 0, 0);
    free(dy);
    free(d1);
    free(d2);
    case_free(&c);
}

/* The walks merge what kloop_init merges, and a split size of 1 drops out. */
static void test_walks(void **state)
{
    (void)state;
    const OpCase oc = {"bias", "bsh,h->bsh", "b3 s5 h7", NULL, 0, 0, 0};
    Case c;
    case_init(&c, &oc);
    ElemBiasPlan p;
    elem_bias_plan(&p, &c.ks);
    assert_int_equal(p.fwd.nd, 2);              /* (bs) and h */
    assert_int_equal(p.fwd.n[0], 15);
    assert_int_equal(p.fwd.st[0][0], 0);
    assert_int_equal(p.fwd.st[0][1], 1);
    assert_int_equal(p.summed.nd, 1);           /* (bs), stride h */
    assert_int_equal(p.summed.st[0][0], 7);
    assert_true(p.cols);
    case_free(&c);

    const OpCase oc2 = {"bias", "nchw,c->nchw", "n3 c5 h7 w4", NULL, 0, 0, 0};
    case_init(&c, &oc2);
    elem_bias_plan(&p, &c.ks);
    assert_false(p.cols);                       /* a block per channel */
    assert_int_equal(p.summed.nd, 2);           /* n and (hw) */
    case_free(&c);

    /* the 64-bit path of the index decomposition */
    ElemWalk w;
    elem_walk_begin(&w, 1);
    int64_t st = 70000;
    elem_walk_add(&w, 70001, &st);
    st = 1;
    elem_walk_add(&w, 69999, &st);
    assert_false(w.small);
    int64_t off;
    elem_walk_off(&w, (int64_t)70000 * 69999 + 12345, &off);
    assert_int_equal(off, (int64_t)70000 * 70000 + 12345);
    w.small = 1;
    elem_walk_off(&w, 69999 * 3 + 7, &off);
    assert_int_equal(off, 70000 * 3 + 7);
}

/* ----------------------------------------------------------------------------
 * Buffers, optimizers, compression, initialisers on the host */

/* The block of `len` at soff in src (extents sd) to doff in dst, by
 * multi-index: the reference of the block copy. */
static void ref_block_copy(float *dst, const int64_t *dd, const int64_t *doff, const float *src,
                           const int64_t *sd, const int64_t *soff, const int64_t *len, int nd)
{
    int64_t idx[IR_MAX_DIMS] = {0}, total = 1;
    for (int d = 0; d < nd; d++) total *= len[d];
    for (int64_t e = 0; e < total; e++) {
        int64_t so = 0, dof = 0;
        for (int d = 0; d < nd; d++) {
            so = so * sd[d] + soff[d] + idx[d];
            dof = dof * dd[d] + doff[d] + idx[d];
        }
        dst[dof] = src[so];
        for (int d = nd - 1; d >= 0; d--) {
            if (++idx[d] < len[d]) break;
            idx[d] = 0;
        }
    }
}

typedef struct {
    int nd;
    int64_t sd[4], soff[4], dd[4], doff[4], len[4];
} CopyCase;

static const CopyCase copy_cases[] = {
    {0, {0}, {0}, {0}, {0}, {0}},
    {1, {33}, {5}, {40}, {7}, {21}},
    {2, {7, 9}, {2, 0}, {5, 9}, {1, 0}, {3, 9}},       /* whole rows: merged */
    {3, {3, 7, 33}, {1, 2, 3}, {5, 8, 40}, {2, 0, 1}, {2, 5, 29}},
    {4, {2, 3, 5, 7}, {1, 0, 2, 1}, {1, 3, 3, 6}, {0, 0, 0, 0}, {1, 3, 3, 6}},
};

static void emu_block_copy(float *dst, const CopyCase *cc, const float *src)
{
    ElemCopyPlan p;
    elem_copy_plan(&p, cc->dd, cc->doff, cc->sd, cc->soff, cc->len, cc->nd);
    for (int64_t i = 0; i < p.w.numel; i++) elem_block_copy(i, dst, src, &p);
}

static int64_t prod(const int64_t *x, int n)
{
    int64_t p = 1;
    for (int d = 0; d < n; d++) p *= x[d];
    return p;
}

static void test_buffers_host(void **state)
{
    (void)state;
    for (size_t e = 0; e < sizeof copy_cases / sizeof *copy_cases; e++) {
        const CopyCase *cc = &copy_cases[e];
        int64_t ns = prod(cc->sd, cc->nd), ndst = prod(cc->dd, cc->nd);
        float *src = randv(ns, -1, 1), *a = randv(ndst, -1, 1), *b = copyv(a, ndst);
        ref_block_copy(a, cc->dd, cc->doff, src, cc->sd, cc->soff, cc->len, cc->nd);
        emu_block_copy(b, cc, src);
        check_close("block copy", b, a, ndst, 0, 0);
        free(src);
        free(a);
        free(b);
    }
    float *x = randv(37, -1, 1), *y = randv(37, -1, 1), *z = copyv(y, 37);
    for (int64_t i = 0; i < 37; i++) elem_axpy(i, y, x, 0.3f);
    for (int64_t i = 0; i < 37; i++) z[i] += 0.3f * x[i];
    check_close("axpy", y, z, 37, 0, 0);
    for (int64_t i = 0; i < 37; i++) elem_fill(i, y, -2.5f);
    for (int64_t i = 0; i < 37; i++) assert_true(y[i] == -2.5f);
    free(x);
    free(y);
    free(z);
}

static const OptimHyper hyper = {0.01f, 0.9f, 0.9f, 0.999f, 1e-8f, 0.01f};

static void test_optim_host(void **state)
{
    (void)state;
    const int64_t n = 333;
    float *g = randv(n, -1, 1), *w0 = randv(n, -1, 1), *m0 = randv(n, -0.1, 0.1),
          *v0 = randv(n, 0, 0.01);
    for (int withmom = 0; withmom < 2; withmom++) {
        float *wa = copyv(w0, n), *wb = copyv(w0, n), *ma = copyv(m0, n), *mb = copyv(m0, n);
        kernel_sgd(wa, g, withmom ? ma : NULL, n, &hyper);
        for (int64_t i = 0; i < n; i++)
            elem_sgd(i, wb, g, withmom ? mb : NULL, hyper.lr, hyper.momentum, hyper.weight_decay);
        check_close("sgd w", wb, wa, n, 0, 0);
        check_close("sgd momentum", mb, ma, n, 0, 0);
        free(wa), free(wb), free(ma), free(mb);
    }
    const int64_t steps[] = {0, 1, 7, 1000};
    for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
        float *wa = copyv(w0, n), *wb = copyv(w0, n), *ma = copyv(m0, n), *mb = copyv(m0, n);
        float *va = copyv(v0, n), *vb = copyv(v0, n);
        kernel_adam(wa, g, ma, va, n, steps[s], &hyper);
        ElemAdam a;
        elem_adam_hyper(&a, &hyper, steps[s]);
        for (int64_t i = 0; i < n; i++) elem_adam(i, wb, g, mb, vb, &a);
        check_close("adam w", wb, wa, n, 1e-6, 1e-9);
        check_close("adam m", mb, ma, n, 1e-6, 1e-9);
        check_close("adam v", vb, va, n, 1e-6, 1e-12);
        free(wa), free(wb), free(ma), free(mb), free(va), free(vb);
    }
    free(g), free(w0), free(m0), free(v0);
}

/* Floats that exercise every branch of the conversion to half: zeros, fp32
 * subnormals, half subnormals and their ties, the largest half and the
 * first value that rounds to infinity, infinities, NaNs with payloads. */
static const uint32_t half_specials[] = {
    0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x33000000, 0x33000001, 0x32ffffff,
    0x33800000, 0x33c00000, 0x34200000, 0x387fc000, 0x387fe000, 0x38800000, 0x38801000,
    0x38802000, 0x3f800000, 0x3f801000, 0x3f803000, 0x477fe000, 0x477fefff, 0x477ff000,
    0x47800000, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001,
    0x7fa5a000, 0xc7fff000, 0x00800000, 0x3555f000,
};
#define N_HALF_SPECIALS (sizeof half_specials / sizeof *half_specials)
#define N_HALF_RANDOM 100000

/* The test floats for half precision: the specials, then random bits */
static float *half_inputs(int64_t *n)
{
    *n = N_HALF_SPECIALS + N_HALF_RANDOM;
    float *x = xmalloc(sizeof *x * (size_t)*n);
    for (size_t i = 0; i < N_HALF_SPECIALS; i++) memcpy(&x[i], &half_specials[i], sizeof *x);
    for (int64_t i = N_HALF_SPECIALS; i < *n; i++) {
        uint32_t u = rbits();
        /* half the draws near the half range, where the rounding happens */
        if (i & 1) u = (u & 0x80ffffffu) | ((uint32_t)(0x66 + rbits() % 0x1c) << 23);
        memcpy(&x[i], &u, sizeof u);
    }
    return x;
}

static void test_fp16_host(void **state)
{
    (void)state;
    int64_t n;
    float *x = half_inputs(&n);
    uint16_t *ha = xmalloc(sizeof *ha * (size_t)n), *hb = xmalloc(sizeof *hb * (size_t)n);
    kernel_to_fp16(x, ha, n);
    for (int64_t i = 0; i < n; i++) elem_to_fp16(i, x, hb);
    for (int64_t i = 0; i < n; i++)
        if (ha[i] != hb[i])
            fail_msg("to_fp16(0x%08x) = 0x%04x, want 0x%04x", bits_of(x[i]), hb[i], ha[i]);
    free(x), free(ha), free(hb);

    uint16_t *all = xmalloc(sizeof *all * 65536);
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    float *fa = xmalloc(sizeof *fa * 65536), *fb = xmalloc(sizeof *fb * 65536);
    kernel_from_fp16(all, fa, 65536);
    for (int64_t i = 0; i < 65536; i++) elem_from_fp16(i, all, fb);
    for (int i = 0; i < 65536; i++)
        if (bits_of(fa[i]) != bits_of(fb[i]))
            fail_msg("from_fp16(0x%04x) = 0x%08x, want 0x%08x", i, bits_of(fb[i]), bits_of(fa[i]));
    free(all), free(fa), free(fb);
}

/* A buffer for int8: random, or all zero (scale 0), or with a NaN. */
static float *int8_input(int kind, int64_t n)
{
    float *x = randv(n, -3, 3);
    if (kind == 1) memset(x, 0, sizeof *x * (size_t)n);
    if (kind == 2) x[n / 2] = NAN;
    return x;
}

static void test_int8_host(void **state)
{
    (void)state;
    const int64_t n = 1001;
    for (int kind = 0; kind < 3; kind++)
        for (int fb = 0; fb < 2; fb++) {
            float *x = int8_input(kind, n), *ea = randv(n, -0.01, 0.01), *eb = copyv(ea, n);
            int8_t *qa = xmalloc((size_t)n), *qb = xmalloc((size_t)n);
            for (int round = 0; round < 3; round++) {   /* the feedback carries over */
                float sa = kernel_int8_encode(x, fb ? ea : NULL, qa, n);
                float m = 0;
                for (int l = 0; l < LANES; l++)
                    m = elem_max(m, elem_lane_max(elem_int8_absmax(x, fb ? eb : NULL, l, LANES, n)));
                float sb = elem_int8_scale(m);
                assert_true(bits_of(sa) == bits_of(sb));
                for (int64_t i = 0; i < n; i++) elem_int8_encode(i, x, fb ? eb : NULL, qb, sb);
                assert_memory_equal(qa, qb, (size_t)n);
                check_close("int8 error feedback", eb, ea, n, 0, 0);
                float *da = xmalloc(sizeof *da * (size_t)n), *db = xmalloc(sizeof *db * (size_t)n);
                kernel_int8_decode(qa, sa, da, n);
                for (int64_t i = 0; i < n; i++) elem_int8_decode(i, qb, sb, db);
                check_close("int8 decode", db, da, n, 0, 0);
                free(da), free(db);
            }
            free(x), free(ea), free(eb), free(qa), free(qb);
        }
}

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[4], offset[4], local[4];
} InitCase;

static const InitCase init_cases[] = {
    {"wte", 2, {50, 33}, {0, 0}, {50, 33}},
    {"h.0.attn.w", 2, {12, 40}, {3, 8}, {7, 16}},
    {"x", 3, {3, 7, 33}, {1, 0, 0}, {2, 7, 33}},         /* whole trailing dims: merged */
    {"layer.3.bias", 1, {1}, {0}, {1}},
    {"", 0, {0}, {0}, {0}},                               /* a scalar, and an empty name */
    {"conv", 4, {4, 3, 5, 5}, {1, 1, 2, 0}, {3, 2, 3, 5}},
};
static const float init_scales[] = {1.0f, 0.02f, 3.0f, 1e-30f, -1.0f, -0.37f, 0.0f,
                                    -0.0f, INFINITY, -INFINITY, 16777216.0f};

static void test_init_host(void **state)
{
    (void)state;
    /* the one step toward zero is nextafterf's */
    for (size_t s = 0; s < sizeof init_scales / sizeof *init_scales; s++) {
        float a = nextafterf(init_scales[s], 0), b = elem_toward_zero(init_scales[s]);
        assert_true(bits_of(a) == bits_of(b));
    }
    for (size_t e = 0; e < sizeof init_cases / sizeof *init_cases; e++) {
        const InitCase *ic = &init_cases[e];
        int64_t n = prod(ic->local, ic->ndim);
        ElemInitPlan p;
        elem_init_plan(&p, 42 + e, ic->name, ic->ndim, ic->shape, ic->offset, ic->local);
        assert_int_equal(p.w.numel, n);
        float *a = xmalloc(sizeof *a * (size_t)n), *b = xmalloc(sizeof *b * (size_t)n);
        for (size_t s = 0; s < sizeof init_scales / sizeof *init_scales; s++) {
            kernel_init_fill(a, 42 + e, ic->name, ic->ndim, ic->shape, ic->offset, ic->local,
                             init_scales[s]);
            for (int64_t i = 0; i < n; i++) elem_init_fill(i, b, &p, init_scales[s]);
            check_close("init fill", b, a, n, 0, 0);
        }
        int32_t *ia = xmalloc(sizeof *ia * (size_t)n), *ib = xmalloc(sizeof *ib * (size_t)n);
        const int32_t his[] = {1, 7, 50257, 0, -3, INT32_MAX};
        for (size_t h = 0; h < sizeof his / sizeof *his; h++) {
            kernel_init_fill_int(ia, 42 + e, ic->name, ic->ndim, ic->shape, ic->offset, ic->local,
                                 his[h]);
            for (int64_t i = 0; i < n; i++)
                elem_init_fill_int(i, ib, &p, his[h] > 0 ? (uint64_t)his[h] : 0);
            assert_memory_equal(ia, ib, sizeof *ia * (size_t)n);
        }
        free(a), free(b), free(ia), free(ib);
    }
}

/* ----------------------------------------------------------------------------
 * GPU part */

#ifdef HAVE_CUDA

static CuCtx *gpu;
static char no_gpu[512];                /* why the GPU tests are skipped; empty when they run */

static int gpu_setup(void **state)
{
    (void)state;
    int ndev = 0;
    cudaError_t rc = cudaGetDeviceCount(&ndev);
    if (rc != cudaSuccess) {
        snprintf(no_gpu, sizeof no_gpu, "%s", cudaGetErrorString(rc));
    } else if (ndev < 1) {
        snprintf(no_gpu, sizeof no_gpu, "cudaGetDeviceCount found no device");
    } else {
        Err err = {{0}};
        gpu = cuk_new(&err);
        if (!gpu) snprintf(no_gpu, sizeof no_gpu, "cuk_new: %.400s", err.msg);
    }
    if (no_gpu[0]) print_message("GPU tests skipped: no CUDA device (%s)\n", no_gpu);
    return 0;
}

static int gpu_teardown(void **state)
{
    (void)state;
    cuk_free(gpu);
    gpu = NULL;
    return 0;
}

#define NEED_GPU()                                                                        \
    do {                                                                                  \
        if (!gpu) skip();                                                                 \
    } while (0)

#define CU(call)                                                                          \
    do {                                                                                  \
        cudaError_t rc_ = (call);                                                         \
        if (rc_ != cudaSuccess)                                                           \
            fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(rc_)); \
    } while (0)

#define CK(call)                                                                          \
    do {                                                                                  \
        Err err_ = {{0}};                                                                 \
        if ((call) != 0) fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call, err_.msg);  \
    } while (0)

/* device copy of n bytes at h (NULL h: uninitialised); NULL for NULL when n == 0 too */
static void *to_dev(const void *h, size_t n)
{
    void *d = NULL;
    CU(cudaMalloc(&d, n ? n : 4));
    if (h && n) CU(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
    return d;
}

static void to_host(void *h, const void *d, size_t n)
{
    Err err = {{0}};
    if (cuk_sync(gpu, &err)) fail_msg("cuk_sync: %s", err.msg);
    if (n) CU(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost));
}

static size_t operand_bytes(const Case *c, int k)
{
    return (size_t)c->n[k] * (c->is_int[k] ? sizeof(int32_t) : sizeof(float));
}

static void test_ops_gpu(void **state)
{
    (void)state;
    NEED_GPU();
    for (size_t e = 0; e < N_OP_CASES; e++) {
        Case c;
        case_init(&c, &op_cases[e]);
        const int64_t no = c.n[c.nin];
        void *dx[IR_MAX_INPUTS] = {0};
        for (int k = 0; k < c.nin; k++) dx[k] = to_dev(c.x[k], operand_bytes(&c, k));
        float *want = xmalloc(sizeof *want * (size_t)no), *got = xmalloc(sizeof *got * (size_t)no);
        for (int64_t i = 0; i < no; i++) got[i] = NAN;
        float *dout = to_dev(got, sizeof *got * (size_t)no);   /* NaN: every element written */
        cpu_forward(&c, want);
        Err err = {{0}};
        if (cuk_forward(gpu, &c.ks, (const void *const *)dx, dout, &err))
            fail_msg("%s: cuk_forward: %s", c.name, err.msg);
        to_host(got, dout, sizeof *got * (size_t)no);
        char what[256];
        snprintf(what, sizeof what, "%s GPU forward", c.name);
        check_close(what, got, want, no, 1e-5, 1e-6);

        float *dy = randv(no, -1, 1), *dc[IR_MAX_INPUTS], *dd[IR_MAX_INPUTS] = {0};
        float *ddy = to_dev(dy, sizeof *dy * (size_t)no);
        grads_new(&c, dc);
        for (int k = 0; k < c.nin; k++)
            if (dc[k]) dd[k] = to_dev(dc[k], sizeof(float) * (size_t)c.n[k]);
        cpu_backward(&c, want, dy, dc);
        if (cuk_backward(gpu, &c.ks, (const void *const *)dx, dout, ddy, dd, &err))
            fail_msg("%s: cuk_backward: %s", c.name, err.msg);
        for (int k = 0; k < c.nin; k++) {
            if (!dc[k]) continue;
            float *g = xmalloc(sizeof *g * (size_t)c.n[k]);
            to_host(g, dd[k], sizeof *g * (size_t)c.n[k]);
            snprintf(what, sizeof what, "%s GPU d(input %d)", c.name, k);
            check_close(what, g, dc[k], c.n[k], 1e-5, 1e-5);
            free(g);
        }
        for (int k = 0; k < c.nin; k++) {
            cudaFree(dx[k]);
            cudaFree(dd[k]);
        }
        cudaFree(dout);
        cudaFree(ddy);
        grads_free(dc);
        free(dy);
        free(want);
        free(got);
        case_free(&c);
    }
}

/* GPT-2 small's shapes: bias over 8 x 1024 rows of 768, gelu on 3072. */
static void test_ops_gpu_large(void **state)
{
    (void)state;
    NEED_GPU();
    static const OpCase big[] = {
        {"bias", "bsh,h->bsh", "b8 s1024 h768", NULL, 0, 0, 0},
        {"bias", "nchw,c->nchw", "n16 c64 h56 w56", NULL, 0, 0, 0},
        {"gelu", "bsf->bsf", "b8 s256 f3072", NULL, 0, 0, 0},
        {"embedding", "bs,vh->bsh", "b8 s1024 v50257 h768", ",\"gather\":\"v\"", 'v', 25000, 25257},
        {"concat", "nahw,nbhw->nchw", "n16 a64 b64 h56 w56 c128", NULL, 0, 0, 0},
        {"mse", "bk,bk->", "b256 k4096", NULL, 0, 0, 0},
    };
    for (size_t e = 0; e < sizeof big / sizeof *big; e++) {
        Case c;
        case_init(&c, &big[e]);
        const int64_t no = c.n[c.nin];
        void *dx[IR_MAX_INPUTS] = {0};
        for (int k = 0; k < c.nin; k++) dx[k] = to_dev(c.x[k], operand_bytes(&c, k));
        float *want = xmalloc(sizeof *want * (size_t)no), *got = xmalloc(sizeof *got * (size_t)no);
        float *dout = to_dev(NULL, sizeof *got * (size_t)no);
        cpu_forward(&c, want);
        Err err = {{0}};
        if (cuk_forward(gpu, &c.ks, (const void *const *)dx, dout, &err))
            fail_msg("%s: cuk_forward: %s", c.name, err.msg);
        to_host(got, dout, sizeof *got * (size_t)no);
        char what[256];
        snprintf(what, sizeof what, "%s GPU forward", c.name);
        check_close(what, got, want, no, 1e-5, 1e-6);
        float *dy = randv(no, -1, 1), *dc[IR_MAX_INPUTS], *dd[IR_MAX_INPUTS] = {0};
        float *ddy = to_dev(dy, sizeof *dy * (size_t)no);
        grads_new(&c, dc);
        for (int k = 0; k < c.nin; k++)
            if (dc[k]) dd[k] = to_dev(dc[k], sizeof(float) * (size_t)c.n[k]);
        cpu_backward(&c, want, dy, dc);
        if (cuk_backward(gpu, &c.ks, (const void *const *)dx, dout, ddy, dd, &err))
            fail_msg("%s: cuk_backward: %s", c.name, err.msg);
        for (int k = 0; k < c.nin; k++) {
            if (!dc[k]) continue;
            float *g = xmalloc(sizeof *g * (size_t)c.n[k]);
            to_host(g, dd[k], sizeof *g * (size_t)c.n[k]);
            snprintf(what, sizeof what, "%s GPU d(input %d)", c.name, k);
            /* sums of thousands of terms of either sign, in other orders */
            check_close(what, g, dc[k], c.n[k], 1e-4, 1e-3);
            free(g);
        }
        for (int k = 0; k < c.nin; k++) {
            cudaFree(dx[k]);
            cudaFree(dd[k]);
        }
        cudaFree(dout);
        cudaFree(ddy);
        grads_free(dc);
        free(dy);
        free(want);
        free(got);
        case_free(&c);
    }
}

static void test_buffers_gpu(void **state)
{
    (void)state;
    NEED_GPU();
    for (size_t e = 0; e < sizeof copy_cases / sizeof *copy_cases; e++) {
        const CopyCase *cc = &copy_cases[e];
        int64_t ns = prod(cc->sd, cc->nd), ndst = prod(cc->dd, cc->nd);
        float *src = randv(ns, -1, 1), *a = randv(ndst, -1, 1), *b = xmalloc(sizeof *b * (size_t)ndst);
        float *ds = to_dev(src, sizeof *src * (size_t)ns), *dd = to_dev(a, sizeof *a * (size_t)ndst);
        ref_block_copy(a, cc->dd, cc->doff, src, cc->sd, cc->soff, cc->len, cc->nd);
        CK(cuk_block_copy(gpu, dd, cc->dd, cc->doff, ds, cc->sd, cc->soff, cc->len, cc->nd, &err_));
        to_host(b, dd, sizeof *b * (size_t)ndst);
        check_close("GPU block copy", b, a, ndst, 0, 0);
        cudaFree(ds), cudaFree(dd);
        free(src), free(a), free(b);
    }
    const int64_t n = 100003;
    float *x = randv(n, -1, 1), *y = randv(n, -1, 1), *got = xmalloc(sizeof *got * (size_t)n);
    float *dx = to_dev(x, sizeof *x * (size_t)n), *dy = to_dev(y, sizeof *y * (size_t)n);
    CK(cuk_axpy(gpu, dy, dx, 0.3f, n, &err_));
    for (int64_t i = 0; i < n; i++) y[i] += 0.3f * x[i];
    to_host(got, dy, sizeof *got * (size_t)n);
    check_close("GPU axpy", got, y, n, 1e-5, 1e-6);   /* the GPU may fuse the multiply-add */
    CK(cuk_fill(gpu, dy, -2.5f, n, &err_));
    to_host(got, dy, sizeof *got * (size_t)n);
    for (int64_t i = 0; i < n; i++) assert_true(got[i] == -2.5f);
    cudaFree(dx), cudaFree(dy);
    free(x), free(y), free(got);
}

static void test_optim_gpu(void **state)
{
    (void)state;
    NEED_GPU();
    const int64_t n = 100003;
    const size_t bytes = sizeof(float) * (size_t)n;
    float *g = randv(n, -1, 1), *w = randv(n, -1, 1), *m = randv(n, -0.1, 0.1),
          *v = randv(n, 0, 0.01), *got = xmalloc(bytes);
    float *dg = to_dev(g, bytes);
    for (int withmom = 0; withmom < 2; withmom++) {
        float *dw = to_dev(w, bytes), *dm = to_dev(m, bytes);
        float *wa = copyv(w, n), *ma = copyv(m, n);
        kernel_sgd(wa, g, withmom ? ma : NULL, n, &hyper);
        CK(cuk_sgd(gpu, dw, dg, withmom ? dm : NULL, n, &hyper, &err_));
        to_host(got, dw, bytes);
        check_close("GPU sgd w", got, wa, n, 1e-5, 1e-6);
        to_host(got, dm, bytes);
        check_close("GPU sgd momentum", got, ma, n, 1e-5, 1e-6);
        cudaFree(dw), cudaFree(dm);
        free(wa), free(ma);
    }
    for (int64_t step = 1; step <= 7; step += 6) {
        float *dw = to_dev(w, bytes), *dm = to_dev(m, bytes), *dv = to_dev(v, bytes);
        float *wa = copyv(w, n), *ma = copyv(m, n), *va = copyv(v, n);
        kernel_adam(wa, g, ma, va, n, step, &hyper);
        CK(cuk_adam(gpu, dw, dg, dm, dv, n, step, &hyper, &err_));
        to_host(got, dw, bytes);
        check_close("GPU adam w", got, wa, n, 1e-5, 1e-7);
        to_host(got, dm, bytes);
        check_close("GPU adam m", got, ma, n, 1e-5, 1e-7);
        to_host(got, dv, bytes);
        check_close("GPU adam v", got, va, n, 1e-5, 1e-9);
        cudaFree(dw), cudaFree(dm), cudaFree(dv);
        free(wa), free(ma), free(va);
    }
    cudaFree(dg);
    free(g), free(w), free(m), free(v), free(got);
}

static void test_fp16_gpu(void **state)
{
    (void)state;
    NEED_GPU();
    int64_t n;
    float *x = half_inputs(&n);
    uint16_t *ha = xmalloc(sizeof *ha * (size_t)n), *hb = xmalloc(sizeof *hb * (size_t)n);
    float *dx = to_dev(x, sizeof *x * (size_t)n);
    uint16_t *dh = to_dev(NULL, sizeof *dh * (size_t)n);
    kernel_to_fp16(x, ha, n);
    CK(cuk_to_fp16(gpu, dx, dh, n, &err_));
    to_host(hb, dh, sizeof *hb * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        if (ha[i] != hb[i])
            fail_msg("GPU to_fp16(0x%08x) = 0x%04x, want 0x%04x", bits_of(x[i]), hb[i], ha[i]);
    cudaFree(dx), cudaFree(dh);
    free(x), free(ha), free(hb);

    uint16_t *all = xmalloc(sizeof *all * 65536);
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    float *fa = xmalloc(sizeof *fa * 65536), *fb = xmalloc(sizeof *fb * 65536);
    uint16_t *dall = to_dev(all, sizeof *all * 65536);
    float *df = to_dev(NULL, sizeof *fb * 65536);
    kernel_from_fp16(all, fa, 65536);
    CK(cuk_from_fp16(gpu, dall, df, 65536, &err_));
    to_host(fb, df, sizeof *fb * 65536);
    for (int i = 0; i < 65536; i++)
        if (bits_of(fa[i]) != bits_of(fb[i]))
            fail_msg("GPU from_fp16(0x%04x) = 0x%08x, want 0x%08x", i, bits_of(fb[i]),
                     bits_of(fa[i]));
    cudaFree(dall), cudaFree(df);
    free(all), free(fa), free(fb);
}

static void test_int8_gpu(void **state)
{
    (void)state;
    NEED_GPU();
    const int64_t sizes[] = {1, 1001, 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (int kind = 0; kind < 3; kind++)
            for (int fb = 0; fb < 2; fb++) {
                const int64_t n = sizes[s];
                const size_t bytes = sizeof(float) * (size_t)n;
                float *x = int8_input(kind, n), *e = randv(n, -0.01, 0.01), *got = xmalloc(bytes);
                int8_t *q = xmalloc((size_t)n), *qg = xmalloc((size_t)n);
                float *dx = to_dev(x, bytes), *de = to_dev(e, bytes), *dscale = to_dev(NULL, 4);
                int8_t *dq = to_dev(NULL, (size_t)n);
                for (int round = 0; round < 2; round++) {
                    float scale = kernel_int8_encode(x, fb ? e : NULL, q, n), sg;
                    CK(cuk_int8_encode(gpu, dx, fb ? de : NULL, dq, dscale, n, &err_));
                    to_host(&sg, dscale, sizeof sg);
                    if (bits_of(sg) != bits_of(scale))
                        fail_msg("GPU int8 scale of %lld: %a, want %a", (long long)n, sg, scale);
                    to_host(qg, dq, (size_t)n);
                    assert_memory_equal(qg, q, (size_t)n);
                    if (fb) {
                        to_host(got, de, bytes);
                        check_close("GPU int8 error feedback", got, e, n, 0, 0);
                    }
                    CK(cuk_int8_decode(gpu, dq, dscale, dx, n, &err_));   /* x := decoded */
                    to_host(got, dx, bytes);
                    kernel_int8_decode(q, scale, x, n);
                    check_close("GPU int8 decode", got, x, n, 0, 0);
                }
                cudaFree(dx), cudaFree(de), cudaFree(dscale), cudaFree(dq);
                free(x), free(e), free(got), free(q), free(qg);
            }
}

static void test_init_gpu(void **state)
{
    (void)state;
    NEED_GPU();
    static const InitCase big = {"wte", 2, {50257, 768}, {25000, 0}, {25257, 768}};
    for (size_t e = 0; e <= sizeof init_cases / sizeof *init_cases; e++) {
        const InitCase *ic = e < sizeof init_cases / sizeof *init_cases ? &init_cases[e] : &big;
        const int64_t n = prod(ic->local, ic->ndim);
        float *a = xmalloc(sizeof *a * (size_t)n), *b = xmalloc(sizeof *b * (size_t)n);
        float *db = to_dev(NULL, sizeof *b * (size_t)n);
        for (size_t s = 0; s < sizeof init_scales / sizeof *init_scales; s++) {
            kernel_init_fill(a, 7 + e, ic->name, ic->ndim, ic->shape, ic->offset, ic->local,
                             init_scales[s]);
            CK(cuk_init_fill(gpu, db, 7 + e, ic->name, ic->ndim, ic->shape, ic->offset, ic->local,
                             init_scales[s], &err_));
            to_host(b, db, sizeof *b * (size_t)n);
            check_close("GPU init fill", b, a, n, 0, 0);
        }
        int32_t *ia = xmalloc(sizeof *ia * (size_t)n), *ib = xmalloc(sizeof *ib * (size_t)n);
        int32_t *dib = to_dev(NULL, sizeof *ib * (size_t)n);
        const int32_t his[] = {1, 7, 50257, 0, -3, INT32_MAX};
        for (size_t h = 0; h < sizeof his / sizeof *his; h++) {
            kernel_init_fill_int(ia, 7 + e, ic->name, ic->ndim, ic->shape, ic->offset, ic->local,
                                 his[h]);
            CK(cuk_init_fill_int(gpu, dib, 7 + e, ic->name, ic->ndim, ic->shape, ic->offset,
                                 ic->local, his[h], &err_));
            to_host(ib, dib, sizeof *ib * (size_t)n);
            assert_memory_equal(ia, ib, sizeof *ia * (size_t)n);
        }
        cudaFree(db), cudaFree(dib);
        free(a), free(b), free(ia), free(ib);
    }
}

#endif /* HAVE_CUDA */

int main(void)
{
    const struct CMUnitTest host[] = {
        cmocka_unit_test(test_ops_host),
        cmocka_unit_test(test_add_same_buffer_host),
        cmocka_unit_test(test_walks),
        cmocka_unit_test(test_buffers_host),
        cmocka_unit_test(test_optim_host),
        cmocka_unit_test(test_fp16_host),
        cmocka_unit_test(test_int8_host),
        cmocka_unit_test(test_init_host),
    };
    int failed = cmocka_run_group_tests_name("cuk elem (host emulation)", host, NULL, NULL);
#ifdef HAVE_CUDA
    const struct CMUnitTest dev[] = {
        cmocka_unit_test(test_ops_gpu),
        cmocka_unit_test(test_ops_gpu_large),
        cmocka_unit_test(test_buffers_gpu),
        cmocka_unit_test(test_optim_gpu),
        cmocka_unit_test(test_fp16_gpu),
        cmocka_unit_test(test_int8_gpu),
        cmocka_unit_test(test_init_gpu),
    };
    failed += cmocka_run_group_tests_name("cuk elem (GPU)", dev, gpu_setup, gpu_teardown);
#endif
    return failed ? 1 : 0;
}
