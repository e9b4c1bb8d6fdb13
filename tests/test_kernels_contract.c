/*
 * test_kernels_contract.c — the contracting and elementwise CPU kernels
 * (matmul, embedding, conv2d, pool2d, mean, add, bias, gelu, relu, concat,
 * and the mse loss) against
 * plain reference loops in double precision, their gradients against central
 * finite differences, and split ops against the whole op.
 *
 * Every case is one op in a one-op model (graph_from_json), on odd sizes so
 * that a swapped dimension cannot pass by accident. Matmul cases run under
 * each path of the contraction engine: GEMM on the caller's buffers with
 * loops, GEMM after copies into GEMM order, plain loops, and the default
 * choice between them.
 *
 * A split case cuts one letter into two halves (two KernelShapes with the
 * halves' size and offset, the global total unchanged), runs both and checks
 * that the halves' results are slices of the whole result (a kept letter) or
 * add up to it (a summed letter: a partial sum), forward and backward.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "executor/kernels.h"
#include "executor/kernels_internal.h"
#include "ir/graph.h"
#include "ir/util.h"

/* ----------------------------------------------------------------------------
 * Models of one op */

static cJSON *q(const char *text)
{
    char *s = xstrdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'') *p = '"';
    cJSON *j = cJSON_Parse(s);
    free(s);
    if (!j) fail_msg("test JSON does not parse: %s", text);
    return j;
}

static Graph *parse_ok(const char *text)
{
    Err err = {{0}};
    cJSON *j = q(text);
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("model does not load: %s\n%s", err.msg, text);
    return g;
}

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

/* A model of one op `kind` with `spec`; letter sizes from `sizes`; `attrs`
 * is more JSON for the op (single quotes), e.g. ",'gather':'v'". Inputs are
 * params in0.. (embedding indices: i32 inputs; mse's target: an f32 label);
 * with same01, inputs 0 and 1 are one tensor. The output is "y". */
static Graph *one_op(const char *kind, const char *spec, const char *sizes, const char *attrs,
                     bool same01)
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
    char buf[4096] = "{'name':'t','tensors':[";
    for (int k = 0; k <= nin; k++) {
        if (k == 1 && same01) continue;
        bool idx = strcmp(kind, "embedding") == 0 && k == 0;
        bool target = strcmp(kind, "mse") == 0 && k == 1;
        char name[8];
        snprintf(name, sizeof name, k == nin ? "y" : "in%d", k);
        append(buf, sizeof buf, "%s{'name':'%s','shape':[", k ? "," : "", name);
        for (int p = 0; ops[k][p]; p++)
            append(buf, sizeof buf, "%s%lld", p ? "," : "", (long long)sz[ops[k][p] - 'a']);
        append(buf, sizeof buf, "],'dtype':'%s','role':'%s'}", idx ? "i32" : "f32",
               k == nin ? "activation" : idx ? "input" : target ? "label" : "param");
    }
    append(buf, sizeof buf, "],'ops':[{'name':'op','kind':'%s','spec':'%s','inputs':[", kind, spec);
    for (int k = 0; k < nin; k++)
        append(buf, sizeof buf, "%s'in%d'", k ? "," : "", k == 1 && same01 ? 0 : k);
    append(buf, sizeof buf, "],'output':'y'%s}]}", attrs ? attrs : "");
    return parse_ok(buf);
}

static Graph *conv_model(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t R,
                         int64_t S, int stride, int pad)
{
    int64_t P = (H + 2 * pad - R) / stride + 1, Q = (W + 2 * pad - S) / stride + 1;
    char buf[2048];
    snprintf(buf, sizeof buf,
             "{'name':'t','tensors':["
             "{'name':'in0','shape':[%lld,%lld,%lld,%lld],'role':'param'},"
             "{'name':'in1','shape':[%lld,%lld,%lld,%lld],'role':'param'},"
             "{'name':'y','shape':[%lld,%lld,%lld,%lld],'role':'activation'}],"
             "'ops':[{'name':'op','kind':'conv2d','spec':'nchw,ocrs->nohw',"
             "'inputs':['in0','in1'],'output':'y','stride':%d,'pad':%d}]}",
             (long long)N, (long long)C, (long long)H, (long long)W, (long long)O, (long long)C,
             (long long)R, (long long)S, (long long)N, (long long)O, (long long)P, (long long)Q,
             stride, pad);
    return parse_ok(buf);
}

static Graph *pool_model(int64_t N, int64_t C, int64_t H, int64_t W, int win, int stride, int pad,
                         bool avg)
{
    int64_t P = (H + 2 * pad - win) / stride + 1, Q = (W + 2 * pad - win) / stride + 1;
    char buf[2048];
    snprintf(buf, sizeof buf,
             "{'name':'t','tensors':["
             "{'name':'in0','shape':[%lld,%lld,%lld,%lld],'role':'param'},"
             "{'name':'y','shape':[%lld,%lld,%lld,%lld],'role':'activation'}],"
             "'ops':[{'name':'op','kind':'pool2d','spec':'nchw->nchw','inputs':['in0'],"
             "'output':'y','window':%d,'stride':%d,'pad':%d,'mode':'%s'}]}",
             (long long)N, (long long)C, (long long)H, (long long)W, (long long)N, (long long)C,
             (long long)P, (long long)Q, win, stride, pad, avg ? "avg" : "max");
    return parse_ok(buf);
}

/* ----------------------------------------------------------------------------
 * Deterministic values */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void)      /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float *randv(int64_t n, float scale)
{
    float *v = xmalloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = (float)((2 * urand() - 1) * scale);
    return v;
}

/* Distinct values 0.01 apart, shuffled (max pooling: no near ties). */
static float *distinct(int64_t n)
{
    float *v = xmalloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = (float)(i - n / 2) * 0.01f;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(urand() * (double)(i + 1));
        float t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
    return v;
}

/* ----------------------------------------------------------------------------
 * A case: one op's model, shape and input buffers */

typedef struct {
    Graph *g;
    const Op *op;
    KernelShape ks;
    int nin;
    int64_t n[IR_MAX_INPUTS + 1];      /* elements per operand; [nin] the output */
    void *x[IR_MAX_INPUTS];
    bool is_int[IR_MAX_INPUTS];
    int owner[IR_MAX_INPUTS];          /* first input with the same tensor */
} Case;

static void case_init(Case *c, Graph *g, bool distinct_values)
{
    memset(c, 0, sizeof *c);
    c->g = g;
    c->op = &g->ops[0];
    kernel_shape_whole(&c->ks, c->op, g);
    c->nin = c->op->nin;
    for (int k = 0; k <= c->nin; k++) c->n[k] = kernel_operand_numel(&c->ks, k);
    for (int k = 0; k < c->nin; k++) {
        c->owner[k] = k;
        for (int j = 0; j < k; j++)
            if (c->op->in[j] == c->op->in[k]) c->owner[k] = c->owner[j];
        c->is_int[k] = g->tensors[c->op->in[k]].dtype == DT_I32;
        if (c->owner[k] != k) {
            c->x[k] = c->x[c->owner[k]];
        } else if (c->is_int[k]) {
            int g_l = __builtin_ctz(c->op->gather_mask);
            int32_t *v = xmalloc((size_t)c->n[k] * sizeof *v);
            for (int64_t i = 0; i < c->n[k]; i++)
                v[i] = (int32_t)(urand() * (double)c->ks.total[g_l]);
            c->x[k] = v;
        } else {
            c->x[k] = distinct_values ? distinct(c->n[k]) : randv(c->n[k], 1.0f);
        }
    }
}

static void case_free(Case *c)
{
    for (int k = 0; k < c->nin; k++)
        if (c->owner[k] == k) free(c->x[k]);
    graph_free(c->g);
}

static void forward_ok(const KernelShape *ks, const void *const *in, float *out)
{
    Err err = {{0}};
    if (kernel_forward(ks, in, out, &err)) fail_msg("forward: %s", err.msg);
}

static void backward_ok(const KernelShape *ks, const void *const *in, const float *out,
                        const float *dout, float *const *din)
{
    Err err = {{0}};
    if (kernel_backward(ks, in, out, dout, din, &err)) fail_msg("backward: %s", err.msg);
}

/* ----------------------------------------------------------------------------
 * Reference loops (double precision, every letter its own loop) */

static int64_t offset(const char *L, const int64_t size[IR_LETTERS], const int64_t idx[IR_LETTERS])
{
    int64_t o = 0;
    for (const char *p = L; *p; p++) o = o * size[*p - 'a'] + idx[*p - 'a'];
    return o;
}

/* Steps idx over every combination of the letters in mask; false at the end. */
static bool step(uint32_t mask, const int64_t size[IR_LETTERS], int64_t idx[IR_LETTERS])
{
    for (int l = IR_LETTERS - 1; l >= 0; l--) {
        if (!(mask >> l & 1)) continue;
        if (++idx[l] < size[l]) return true;
        idx[l] = 0;
    }
    return false;
}

static uint32_t mask_of(const char *L)
{
    uint32_t m = 0;
    for (; *L; L++) m |= 1u << (*L - 'a');
    return m;
}

/* out = scale * sum over the letters missing from lo of prod_k x_k */
static void ref_einsum(double *out, const char *lo, int n, const float *const *x,
                       const char *const *lx, const int64_t size[IR_LETTERS], double scale)
{
    uint32_t m = mask_of(lo);
    for (int k = 0; k < n; k++) m |= mask_of(lx[k]);
    int64_t numel = 1;
    for (const char *p = lo; *p; p++) numel *= size[*p - 'a'];
    for (int64_t i = 0; i < numel; i++) out[i] = 0;
    int64_t idx[IR_LETTERS] = {0};
    do {
        double v = scale;
        for (int k = 0; k < n; k++) v *= x[k][offset(lx[k], size, idx)];
        out[offset(lo, size, idx)] += v;
    } while (step(m, size, idx));
}

static void ref_embedding(const Case *c, const KernelShape *ks, const void *const *in, double *out)
{
    const Op *op = c->op;
    const int32_t *ix = in[0];
    const float *tab = in[1];
    int g = __builtin_ctz(op->gather_mask);
    uint32_t m = (op->letters_mask) & ~(1u << g);
    int64_t idx[IR_LETTERS] = {0};
    for (int64_t i = 0; i < k_numel(op->out_letters, ks->size); i++) out[i] = 0;
    do {
        int64_t row = ix[offset(op->in_letters[0], ks->size, idx)] - ks->off[g];
        if (row < 0 || row >= ks->size[g]) continue;
        idx[g] = row;
        out[offset(op->out_letters, ks->size, idx)] += tab[offset(op->in_letters[1], ks->size, idx)];
        idx[g] = 0;
    } while (step(m, ks->size, idx));
}

static void ref_conv(const KernelShape *ks, const float *x, const float *w, double *out)
{
    const Op *op = ks->op;
    const int64_t *z = ks->size;
    int64_t N = z['n' - 'a'], C = z['c' - 'a'], O = z['o' - 'a'], R = z['r' - 'a'],
            S = z['s' - 'a'], P = z['h' - 'a'], Q = z['w' - 'a'], H = ks->in_hw[0],
            W = ks->in_hw[1];
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t p = 0; p < P; p++)
                for (int64_t qq = 0; qq < Q; qq++) {
                    double s = 0;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t r = 0; r < R; r++)
                            for (int64_t t = 0; t < S; t++) {
                                int64_t ih = p * op->stride - op->pad + r;
                                int64_t iw = qq * op->stride - op->pad + t;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                s += (double)x[((n * C + c) * H + ih) * W + iw] *
                                     w[((o * C + c) * R + r) * S + t];
                            }
                    out[((n * O + o) * P + p) * Q + qq] = s;
                }
}

static void ref_pool(const KernelShape *ks, const float *x, double *out)
{
    const Op *op = ks->op;
    const int64_t *z = ks->size;
    int64_t NC = z['n' - 'a'] * z['c' - 'a'], P = z['h' - 'a'], Q = z['w' - 'a'],
            H = ks->in_hw[0], W = ks->in_hw[1];
    for (int64_t pl = 0; pl < NC; pl++)
        for (int64_t p = 0; p < P; p++)
            for (int64_t qq = 0; qq < Q; qq++) {
                double best = -INFINITY, sum = 0;
                for (int64_t r = 0; r < op->window; r++)
                    for (int64_t t = 0; t < op->window; t++) {
                        int64_t ih = p * op->stride - op->pad + r, iw = qq * op->stride - op->pad + t;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        double v = x[(pl * H + ih) * W + iw];
                        sum += v;
                        if (v > best) best = v;
                    }
                out[(pl * P + p) * Q + qq] =
                    op->pool_avg ? sum / (double)(op->window * op->window) : best;
            }
}

static double gelu_ref(double x)
{
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

static void reference(const Case *c, const KernelShape *ks, const void *const *in, double *out)
{
    const Op *op = c->op;
    const float *f[IR_MAX_INPUTS];
    const char *lx[IR_MAX_INPUTS];
    for (int k = 0; k < op->nin; k++) {
        f[k] = in[k];
        lx[k] = op->in_letters[k];
    }
    int64_t n = k_numel(op->out_letters, ks->size);
    switch (op->kind) {
    case OP_MATMUL:
        ref_einsum(out, op->out_letters, op->nin, f, lx, ks->size, 1);
        break;
    case OP_MEAN: {
        double count = 1;
        for (const char *p = lx[0]; *p; p++)
            if (!strchr(op->out_letters, *p)) count *= (double)ks->total[*p - 'a'];
        ref_einsum(out, op->out_letters, 1, f, lx, ks->size, 1 / count);
        break;
    }
    case OP_EMBEDDING: ref_embedding(c, ks, in, out); break;
    case OP_CONV2D: ref_conv(ks, f[0], f[1], out); break;
    case OP_POOL2D: ref_pool(ks, f[0], out); break;
    case OP_ADD:
    case OP_BIAS: {
        /* a sum of every input, each broadcast over the output's letters */
        for (int64_t i = 0; i < n; i++) out[i] = 0;
        int64_t idx[IR_LETTERS] = {0};
        do {
            double s = 0;
            for (int k = 0; k < op->nin; k++) s += f[k][offset(lx[k], ks->size, idx)];
            out[offset(op->out_letters, ks->size, idx)] = s;
        } while (step(mask_of(op->out_letters), ks->size, idx));
        break;
    }
    case OP_GELU:
        for (int64_t i = 0; i < n; i++) out[i] = gelu_ref(f[0][i]);
        break;
    case OP_RELU:
        for (int64_t i = 0; i < n; i++) out[i] = f[0][i] > 0 ? f[0][i] : 0;
        break;
    case OP_CONCAT: {
        /* element by element of the output: the input whose range along
         * the concatenated letter holds it, at its own index */
        int lo = op_concat_letter(op, op->nin);
        int64_t idx[IR_LETTERS] = {0};
        do {
            int64_t v = idx[lo], at = 0;
            int k = 0;
            while (v - at >= ks->size[op_concat_letter(op, k)])
                at += ks->size[op_concat_letter(op, k++)];
            int64_t in_idx[IR_LETTERS];
            memcpy(in_idx, idx, sizeof in_idx);
            in_idx[op_concat_letter(op, k)] = v - at;
            out[offset(op->out_letters, ks->size, idx)] = f[k][offset(lx[k], ks->size, in_idx)];
        } while (step(mask_of(op->out_letters), ks->size, idx));
        break;
    }
    case OP_MSE: {
        double count = 1, sum = 0;
        for (const char *p = lx[0]; *p; p++) count *= (double)ks->total[*p - 'a'];
        int64_t idx[IR_LETTERS] = {0};
        do {
            double d = (double)f[0][offset(lx[0], ks->size, idx)] -
                       f[1][offset(lx[1], ks->size, idx)];
            sum += d * d;
        } while (step(mask_of(lx[0]), ks->size, idx));
        out[0] = sum / count;
        break;
    }
    default:
        fail_msg("no reference for %s", op_kind_name(op->kind));
    }
}

/* ----------------------------------------------------------------------------
 * Checks */

/* The path of the contraction engine under test, named in failures. */
static const char *const mode_names[] = {"default", "gemm+loops", "gemm+copies", "loops"};
static const char *mode_now = "default";

static void assert_close(const char *what, int64_t i, double got, double want, double rtol,
                         double atol)
{
    if (!(fabs(got - want) <= atol + rtol * fabs(want)))
        fail_msg("%s[%lld] (engine path %s): got %.7g, want %.7g (|diff| %.3g)", what,
                 (long long)i, mode_now, got, want, fabs(got - want));
}

/* Forward against the reference; the output starts as NaN, so every element
 * must be written. */
static void check_forward(Case *c)
{
    int64_t n = c->n[c->nin];
    float *out = xmalloc((size_t)n * sizeof *out);
    double *want = xmalloc((size_t)n * sizeof *want);
    for (int64_t i = 0; i < n; i++) out[i] = NAN;
    forward_ok(&c->ks, (const void *const *)c->x, out);
    reference(c, &c->ks, (const void *const *)c->x, want);
    char what[128];
    snprintf(what, sizeof what, "%s \"%s\" forward", op_kind_name(c->op->kind), c->op->spec);
    for (int64_t i = 0; i < n; i++) assert_close(what, i, out[i], want[i], 1e-4, 1e-5);
    free(out);
    free(want);
}

static double loss(Case *c, const float *r, float *out)
{
    forward_ok(&c->ks, (const void *const *)c->x, out);
    double s = 0;
    for (int64_t i = 0; i < c->n[c->nin]; i++) s += (double)out[i] * r[i];
    return s;
}

/* Backward against central differences of L = sum(out * r). The gradient
 * buffers start at 0.25 (backward adds); inputs that are one tensor share
 * one gradient buffer, which then receives both contributions. */
static void check_grads(Case *c, float eps)
{
    const int64_t no = c->n[c->nin];
    float *r = randv(no, 1.0f), *out = xmalloc((size_t)no * sizeof *out);
    float *din[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < c->nin; k++) {
        if (c->is_int[k]) continue;
        if (c->owner[k] != k) {
            din[k] = din[c->owner[k]];
            continue;
        }
        din[k] = xmalloc((size_t)c->n[k] * sizeof *din[k]);
        for (int64_t i = 0; i < c->n[k]; i++) din[k][i] = 0.25f;
    }
    forward_ok(&c->ks, (const void *const *)c->x, out);
    backward_ok(&c->ks, (const void *const *)c->x, out, r, din);

    char what[128];
    for (int k = 0; k < c->nin; k++) {
        if (c->is_int[k] || c->owner[k] != k) continue;
        snprintf(what, sizeof what, "%s \"%s\" d(input %d)", op_kind_name(c->op->kind),
                 c->op->spec, k);
        float *x = c->x[k];
        for (int64_t i = 0; i < c->n[k]; i++) {
            float v = x[i], hi = v + eps, lo = v - eps;
            x[i] = hi;
            double lp = loss(c, r, out);
            x[i] = lo;
            double lm = loss(c, r, out);
            x[i] = v;
            double fd = (lp - lm) / ((double)hi - (double)lo);
            assert_close(what, i, din[k][i] - 0.25, fd, 1e-2, 1e-3);
        }
    }
    for (int k = 0; k < c->nin; k++)
        if (c->owner[k] == k) free(din[k]);
    free(r);
    free(out);
}

/* Backward against the reference einsum of the gradient: for matmul cases
 * too big for finite differences. */
static void check_grads_einsum(Case *c)
{
    const Op *op = c->op;
    const int64_t no = c->n[c->nin];
    float *r = randv(no, 1.0f), *out = xmalloc((size_t)no * sizeof *out);
    forward_ok(&c->ks, (const void *const *)c->x, out);
    for (int k = 0; k < op->nin; k++) {
        float *din[IR_MAX_INPUTS] = {0};
        din[k] = xcalloc((size_t)c->n[k], sizeof *din[k]);
        backward_ok(&c->ks, (const void *const *)c->x, out, r, din);
        const float *f[IR_MAX_INPUTS] = {r};
        const char *lx[IR_MAX_INPUTS] = {op->out_letters};
        int n = 1;
        for (int j = 0; j < op->nin; j++)
            if (j != k) {
                f[n] = c->x[j];
                lx[n++] = op->in_letters[j];
            }
        double *want = xmalloc((size_t)c->n[k] * sizeof *want);
        ref_einsum(want, op->in_letters[k], n, f, lx, c->ks.size, 1);
        char what[128];
        snprintf(what, sizeof what, "matmul \"%s\" d(input %d)", op->spec, k);
        for (int64_t i = 0; i < c->n[k]; i++) assert_close(what, i, din[k][i], want[i], 1e-4, 1e-4);
        free(want);
        free(din[k]);
    }
    free(r);
    free(out);
}

/* The paths of the contraction engine: {k_gemm_min_work, k_gemm_min_run}. */
static const int64_t modes[][2] = {
    {4096, 64},               /* the default choice */
    {0, 1},                   /* GEMM always, loops around pieces that do not merge */
    {0, INT64_MAX},           /* GEMM always, copies into GEMM order */
    {INT64_MAX, 64},          /* plain loops always */
};

static void set_mode(int m)
{
    mode_now = mode_names[m];
    k_gemm_min_work = modes[m][0];
    k_gemm_min_run = modes[m][1];
}

static int teardown_mode(void **state)
{
    (void)state;
    set_mode(0);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Matmul */

static const struct {
    const char *spec, *sizes;
    bool same01;
} einsums[] = {
    {"bi,ih->bh", "b3 i5 h7", false},
    {"bsh,hf->bsf", "b3 s5 h7 f4", false},
    {"bsnd,btnd->bnst", "b2 s5 n3 d7 t4", false},
    {"bnst,btnd->bsnd", "b2 s5 n3 d7 t4", false},
    {"bsnd,ndh->bsh", "b2 s5 n3 d7 h4", false},
    {"bech,ehf->becf", "b2 e3 c5 h7 f4", false},
    {"bsh,bsec->bech", "b2 s5 e3 c4 h7", false},
    {"bech,bsec,bse->bsh", "b2 s5 e3 c4 h7", false},
    {"nchw,chwf->nf", "n3 c2 h5 w3 f7", false},
    {"btu,tuf->bf", "b3 t5 u5 f7", false},
    {"bth,buh->btu", "b3 t5 u5 h7", true},
    /* the engine's corners: a letter in one operand only (summed first, and
     * broadcast in its gradient), a batch letter innermost (copied), the
     * result transposed, an outer product, letters in scrambled orders */
    {"bij,jk->bk", "b3 i5 j7 k4", false},
    {"sb,bt->bst", "s5 b3 t7", false},
    {"ij,jk->ki", "i5 j7 k3", false},
    {"bi,bj->bij", "b3 i5 j7", false},
    {"abc,cbd->dba", "a3 b5 c7 d4", false},
    {"xai,iay,ayz->zx", "x3 a5 i7 y4 z3", false},
    {"aij,jik->ak", "a3 i5 j7 k4", false},       /* summed letters in two orders */
};

static void test_matmul(void **state)
{
    (void)state;
    for (size_t e = 0; e < sizeof einsums / sizeof *einsums; e++)
        for (int m = 0; m < 4; m++) {
            set_mode(m);
            Case c;
            case_init(&c, one_op("matmul", einsums[e].spec, einsums[e].sizes, NULL,
                                 einsums[e].same01), false);
            check_forward(&c);
            check_grads(&c, 1e-2f);
            case_free(&c);
        }
}

/* Sizes where the default path takes GEMM, checked against the references. */
static void test_matmul_large(void **state)
{
    (void)state;
    static const struct {
        const char *spec, *sizes;
    } big[] = {
        {"bsh,hf->bsf", "b4 s33 h65 f31"},
        {"bsnd,btnd->bnst", "b2 s33 n3 d17 t29"},
        {"bnst,btnd->bsnd", "b2 s33 n3 d17 t29"},
        {"bsnd,ndh->bsh", "b2 s17 n3 d9 h31"},
        {"bech,ehf->becf", "b2 e3 c17 h33 f19"},
        {"bsh,bsec->bech", "b2 s17 e3 c9 h33"},
        {"bech,bsec,bse->bsh", "b2 s17 e3 c9 h33"},
        {"nchw,chwf->nf", "n9 c4 h5 w7 f33"},
    };
    for (size_t e = 0; e < sizeof big / sizeof *big; e++)
        for (int m = 0; m < 3; m++) {
            set_mode(m);
            Case c;
            case_init(&c, one_op("matmul", big[e].spec, big[e].sizes, NULL, false), false);
            check_forward(&c);
            check_grads_einsum(&c);
            case_free(&c);
        }
}

/* ----------------------------------------------------------------------------
 * The other kinds */

static void test_embedding(void **state)
{
    (void)state;
    static const struct {
        const char *spec, *sizes;
    } cases[] = {
        {"bs,vh->bsh", "b3 s5 v7 h4"},
        {"btl,tvh->bth", "b3 t2 l5 v7 h4"},      /* bags of l lookups per table t */
        {"bs,hv->bsh", "b3 s5 v7 h4"},           /* the row letter not last */
    };
    for (size_t e = 0; e < sizeof cases / sizeof *cases; e++) {
        Case c;
        case_init(&c, one_op("embedding", cases[e].spec, cases[e].sizes, ",'gather':'v'", false),
                  false);
        check_forward(&c);
        check_grads(&c, 1e-2f);
        case_free(&c);
    }
}

static void test_embedding_bad_index(void **state)
{
    (void)state;
    Case c;
    case_init(&c, one_op("embedding", "bs,vh->bsh", "b3 s5 v7 h4", ",'gather':'v'", false), false);
    ((int32_t *)c.x[0])[4] = 7;
    float out[3 * 5 * 4];
    Err err = {{0}};
    assert_int_equal(kernel_forward(&c.ks, (const void *const *)c.x, out, &err), -1);
    assert_non_null(strstr(err.msg, "index 7 is outside the table's 7 rows"));
    case_free(&c);
}

static void test_conv2d(void **state)
{
    (void)state;
    static const int cfg[][9] = {
        /* N C H W O R S stride pad */
        {2, 3, 7, 5, 4, 3, 3, 1, 1},
        {2, 3, 9, 7, 5, 3, 2, 2, 1},
        {3, 5, 4, 6, 7, 1, 1, 1, 0},     /* pointwise: no im2col */
        {2, 3, 7, 7, 4, 1, 1, 2, 0},     /* 1x1 of stride 2 */
        {1, 2, 6, 7, 3, 5, 5, 3, 2},
    };
    for (size_t e = 0; e < sizeof cfg / sizeof *cfg; e++) {
        const int *k = cfg[e];
        Case c;
        case_init(&c, conv_model(k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]), false);
        assert_int_equal(c.ks.in_hw[0], k[2]);
        assert_int_equal(c.ks.in_hw[1], k[3]);
        assert_int_equal(c.n[0], k[0] * k[1] * k[2] * k[3]);
        check_forward(&c);
        check_grads(&c, 1e-2f);
        case_free(&c);
    }
}

static void test_pool2d(void **state)
{
    (void)state;
    static const int cfg[][8] = {
        /* N C H W window stride pad avg */
        {2, 3, 7, 5, 2, 2, 0, 0},
        {2, 3, 9, 7, 3, 2, 1, 0},
        {2, 3, 7, 5, 2, 2, 0, 1},
        {2, 3, 9, 7, 3, 2, 1, 1},
        {1, 2, 5, 5, 3, 1, 1, 0},
    };
    for (size_t e = 0; e < sizeof cfg / sizeof *cfg; e++) {
        const int *k = cfg[e];
        Case c;
        case_init(&c, pool_model(k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]), true);
        check_forward(&c);
        check_grads(&c, 2e-3f);
        case_free(&c);
    }
}

static void test_mean(void **state)
{
    (void)state;
    static const struct {
        const char *spec, *sizes;
    } cases[] = {
        {"nchw->nc", "n3 c5 h7 w4"},
        {"bsh->bh", "b3 s5 h7"},
        {"bsh->", "b3 s5 h7"},
        {"bsh->hb", "b3 s5 h7"},
    };
    for (size_t e = 0; e < sizeof cases / sizeof *cases; e++) {
        Case c;
        case_init(&c, one_op("mean", cases[e].spec, cases[e].sizes, NULL, false), false);
        check_forward(&c);
        check_grads(&c, 1e-2f);
        case_free(&c);
    }
}

static void test_elementwise(void **state)
{
    (void)state;
    static const struct {
        const char *kind, *spec, *sizes;
        bool same01;
    } cases[] = {
        {"add", "bsh,bsh->bsh", "b3 s5 h7", false},
        {"add", "bsh,bsh,bsh->bsh", "b3 s5 h7", false},
        {"add", "bsh,bsh->bsh", "b3 s5 h7", true},       /* x + x */
        {"bias", "bsh,h->bsh", "b3 s5 h7", false},
        {"bias", "bsh,sh->bsh", "b3 s5 h7", false},
        {"bias", "nchw,c->nchw", "n3 c5 h7 w4", false},
        {"bias", "bsh,hs->bsh", "b3 s5 h7", false},      /* bias letters in another order */
        {"bias", "bsh,b->bsh", "b3 s5 h7", false},
        {"gelu", "bsf->bsf", "b3 s5 f7", false},
        {"relu", "bh->bh", "b5 h7", false},
        /* concat with its letter first, last, in the middle; own extents of
         * 1; up to four inputs; one tensor twice (its gradient buffer takes
         * both slices) */
        {"concat", "nahw,nbhw->nchw", "n2 a3 b5 h4 w3 c8", false},
        {"concat", "anhw,nhwb->nhcw", "n2 a3 b5 h4 w3 c8", false},
        {"concat", "ah,hb,hc->dh", "a2 b3 c1 h5 d6", false},
        {"concat", "na,nb,nd,ne->nc", "n3 a2 b1 d4 e3 c10", false},
        {"concat", "na,na->cn", "n3 a4 c8", true},
        {"concat", "an,bn->cn", "n1 a1 b1 c2", false},
        /* mse with the target's letters in the prediction's order and others */
        {"mse", "bk,bk->", "b5 k7", false},
        {"mse", "bk,kb->", "b5 k7", false},
        {"mse", "nchw,nhwc->", "n2 c3 h4 w5", false},
        {"mse", "b,b->", "b1", false},
    };
    for (size_t e = 0; e < sizeof cases / sizeof *cases; e++) {
        Case c;
        case_init(&c, one_op(cases[e].kind, cases[e].spec, cases[e].sizes, NULL, cases[e].same01),
                  false);
        check_forward(&c);
        check_grads(&c, 1e-2f);
        case_free(&c);
    }
}

/* Sizes where the kernels share the work out among threads (the copy by its
 * outermost letter, mse's sums by pieces): forward against the reference,
 * backward against its closed form (concat: dx = dy's slice; mse: dp =
 * 2 (p - t) / N dy, dt = -dp), on gradient buffers that do not start at 0. */
static void test_concat_mse_large(void **state)
{
    (void)state;
    static const struct {
        const char *kind, *spec, *sizes;
    } cases[] = {
        {"concat", "nahw,nbhw->nchw", "n4 a16 b24 h32 w32 c40"},
        {"concat", "hwna,bhwn->nhwc", "n4 a16 b24 h32 w32 c40"},
        {"mse", "bk,bk->", "b64 k1031"},
        {"mse", "bk,kb->", "b64 k1031"},
    };
    for (size_t e = 0; e < sizeof cases / sizeof *cases; e++) {
        Case c;
        case_init(&c, one_op(cases[e].kind, cases[e].spec, cases[e].sizes, NULL, false), false);
        check_forward(&c);
        const Op *op = c.op;
        const int64_t no = c.n[c.nin];
        float *r = randv(no, 1.0f), *out = xmalloc((size_t)no * sizeof *out);
        float *din[IR_MAX_INPUTS] = {0};
        for (int k = 0; k < c.nin; k++) din[k] = randv(c.n[k], 1.0f);
        float *before[IR_MAX_INPUTS] = {0};
        for (int k = 0; k < c.nin; k++) {
            before[k] = xmalloc((size_t)c.n[k] * sizeof *before[k]);
            memcpy(before[k], din[k], (size_t)c.n[k] * sizeof *before[k]);
        }
        forward_ok(&c.ks, (const void *const *)c.x, out);
        backward_ok(&c.ks, (const void *const *)c.x, out, r, din);
        char what[128];
        for (int k = 0; k < c.nin; k++) {
            snprintf(what, sizeof what, "%s \"%s\" d(input %d)", cases[e].kind, op->spec, k);
            const float *x = c.x[k];
            int64_t idx[IR_LETTERS] = {0};
            const char *L = op->in_letters[k];
            do {
                int64_t i = offset(L, c.ks.size, idx);
                double want;
                if (op->kind == OP_CONCAT) {
                    int64_t o[IR_LETTERS], at = 0;
                    memcpy(o, idx, sizeof o);
                    for (int j = 0; j < k; j++) at += c.ks.size[op_concat_letter(op, j)];
                    o[op_concat_letter(op, op->nin)] = at + idx[op_concat_letter(op, k)];
                    want = r[offset(op->out_letters, c.ks.size, o)];
                } else {
                    const float *p = c.x[0], *t = c.x[1];
                    double d = (double)p[offset(op->in_letters[0], c.ks.size, idx)] -
                               t[offset(op->in_letters[1], c.ks.size, idx)];
                    want = 2 * d / (double)c.n[0] * r[0] * (k == 0 ? 1 : -1);
                    (void)x;
                }
                assert_close(what, i, din[k][i] - before[k][i], want, 1e-5, 1e-7);
            } while (step(mask_of(L), c.ks.size, idx));
        }
        for (int k = 0; k < c.nin; k++) {
            free(din[k]);
            free(before[k]);
        }
        free(r);
        free(out);
        case_free(&c);
    }
}

/* A backward asked for no gradient at all (every din NULL) does nothing and
 * succeeds, on the bias's fast layout and on its generic one. */
static void test_bias_no_grads(void **state)
{
    (void)state;
    static const char *const specs[] = { "bsh,h->bsh", "bsh,hs->bsh" };
    for (size_t e = 0; e < sizeof specs / sizeof *specs; e++) {
        Case c;
        case_init(&c, one_op("bias", specs[e], "b3 s5 h7", NULL, false), false);
        float *out = xmalloc((size_t)c.n[c.nin] * sizeof *out), *r = randv(c.n[c.nin], 1.0f);
        float *din[IR_MAX_INPUTS] = {0};
        forward_ok(&c.ks, (const void *const *)c.x, out);
        backward_ok(&c.ks, (const void *const *)c.x, out, r, din);
        free(out), free(r);
        case_free(&c);
    }
}

/* GELU at a few points against the closed form's known values. */
static void test_gelu_values(void **state)
{
    (void)state;
    Case c;
    case_init(&c, one_op("gelu", "b->b", "b5", NULL, false), false);
    float x[5] = {-3, -1, 0, 1, 3}, y[5];
    forward_ok(&c.ks, (const void *const[]){x}, y);
    const double want[5] = {-0.0036373920, -0.1588079940, 0, 0.8411920060, 2.9963626080};
    for (int i = 0; i < 5; i++) assert_close("gelu", i, y[i], want[i], 1e-5, 1e-6);
    case_free(&c);
}

/* ----------------------------------------------------------------------------
 * Split ops: two halves of one letter against the whole */

/* dst = the block of src (letters L at `size`) with letter l in [from, from + len). */
static void slice(void *dst, const void *src, const char *L, const int64_t size[IR_LETTERS],
                  int l, int64_t from, int64_t len)
{
    int64_t part[IR_LETTERS], idx[IR_LETTERS] = {0};
    memcpy(part, size, sizeof part);
    part[l] = len;
    const uint32_t *s = src;
    uint32_t *d = dst, m = mask_of(L);
    do {
        int64_t i = offset(L, part, idx);
        idx[l] += from;
        d[i] = s[offset(L, size, idx)];
        idx[l] -= from;
    } while (step(m, part, idx));
}

static void check_split(Case *c, char letter)
{
    const Op *op = c->op;
    const int l = letter - 'a';
    const int64_t whole = c->ks.size[l], half[2][2] = {{0, whole / 2}, {whole / 2, whole - whole / 2}};
    const int no = c->nin;
    const char *lo = op->out_letters;
    const bool out_split = strchr(lo, letter) != NULL;

    /* the whole op */
    float *out = xmalloc((size_t)c->n[no] * sizeof *out), *r = randv(c->n[no], 1.0f);
    float *din[IR_MAX_INPUTS] = {0};
    forward_ok(&c->ks, (const void *const *)c->x, out);
    for (int k = 0; k < no; k++)
        if (!c->is_int[k]) din[k] = xcalloc((size_t)c->n[k], sizeof *din[k]);
    backward_ok(&c->ks, (const void *const *)c->x, out, r, din);

    /* sums over the halves, for results that do not hold the letter */
    double *osum = xcalloc((size_t)c->n[no], sizeof *osum);
    double *dsum[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < no; k++)
        if (din[k]) dsum[k] = xcalloc((size_t)c->n[k], sizeof *dsum[k]);

    char what[128];
    for (int h = 0; h < 2; h++) {
        KernelShape ks = c->ks;
        ks.size[l] = half[h][1];
        ks.off[l] = half[h][0];
        void *x[IR_MAX_INPUTS] = {0};
        float *dx[IR_MAX_INPUTS] = {0};
        bool has[IR_MAX_INPUTS + 1];
        for (int k = 0; k <= no; k++) {
            const char *L = k < no ? op->in_letters[k] : lo;
            has[k] = strchr(L, letter) != NULL;
            if (k == no) break;
            int64_t n = kernel_operand_numel(&ks, k);
            if (has[k]) {
                x[k] = xmalloc((size_t)n * 4);
                slice(x[k], c->x[k], L, c->ks.size, l, half[h][0], half[h][1]);
            } else {
                x[k] = c->x[k];
            }
            if (din[k]) dx[k] = xcalloc((size_t)n, sizeof *dx[k]);
        }
        int64_t n_out = kernel_operand_numel(&ks, no);
        float *o = xmalloc((size_t)n_out * sizeof *o), *dy = r, *want = NULL;
        forward_ok(&ks, (const void *const *)x, o);
        if (out_split) {
            want = xmalloc((size_t)n_out * sizeof *want);
            dy = xmalloc((size_t)n_out * sizeof *dy);
            slice(want, out, lo, c->ks.size, l, half[h][0], half[h][1]);
            slice(dy, r, lo, c->ks.size, l, half[h][0], half[h][1]);
            snprintf(what, sizeof what, "%s split '%c' half %d output", op->spec, letter, h);
            for (int64_t i = 0; i < n_out; i++) assert_close(what, i, o[i], want[i], 1e-5, 1e-6);
        } else {
            for (int64_t i = 0; i < n_out; i++) osum[i] += o[i];
        }
        backward_ok(&ks, (const void *const *)x, o, dy, dx);
        for (int k = 0; k < no; k++) {
            if (!din[k]) continue;
            int64_t n = kernel_operand_numel(&ks, k);
            if (has[k]) {
                float *w = xmalloc((size_t)n * sizeof *w);
                slice(w, din[k], op->in_letters[k], c->ks.size, l, half[h][0], half[h][1]);
                snprintf(what, sizeof what, "%s split '%c' half %d d(input %d)", op->spec,
                         letter, h, k);
                for (int64_t i = 0; i < n; i++) assert_close(what, i, dx[k][i], w[i], 1e-5, 1e-6);
                free(w);
            } else {
                for (int64_t i = 0; i < n; i++) dsum[k][i] += dx[k][i];
            }
            free(dx[k]);
        }
        for (int k = 0; k < no; k++)
            if (has[k]) free(x[k]);
        free(o);
        free(want);
        if (dy != r) free(dy);
    }
    if (!out_split) {
        snprintf(what, sizeof what, "%s split '%c': sum of the halves' outputs", op->spec, letter);
        for (int64_t i = 0; i < c->n[no]; i++) assert_close(what, i, osum[i], out[i], 1e-5, 1e-6);
    }
    for (int k = 0; k < no; k++) {
        if (!din[k] || strchr(op->in_letters[k], letter)) continue;
        snprintf(what, sizeof what, "%s split '%c': sum of the halves' d(input %d)", op->spec,
                 letter, k);
        for (int64_t i = 0; i < c->n[k]; i++) assert_close(what, i, dsum[k][i], din[k][i], 1e-5, 1e-6);
    }
    for (int k = 0; k < no; k++) {
        free(din[k]);
        free(dsum[k]);
    }
    free(osum);
    free(out);
    free(r);
}

static void test_split(void **state)
{
    (void)state;
    static const struct {
        const char *kind, *spec, *sizes, *attrs;
        const char *letters;
    } cases[] = {
        {"matmul", "bsh,hf->bsf", "b3 s5 h7 f4", NULL, "hfbs"},
        {"matmul", "bsnd,btnd->bnst", "b2 s5 n3 d7 t4", NULL, "ndst"},
        {"matmul", "bsnd,ndh->bsh", "b2 s5 n3 d7 h4", NULL, "nh"},
        {"matmul", "bech,ehf->becf", "b2 e3 c5 h7 f4", NULL, "ehf"},
        {"matmul", "bech,bsec,bse->bsh", "b2 s5 e3 c4 h7", NULL, "ech"},
        {"embedding", "bs,vh->bsh", "b3 s5 v7 h4", ",'gather':'v'", "vhb"},
        {"embedding", "btl,tvh->bth", "b3 t2 l5 v7 h4", ",'gather':'v'", "vtl"},
        {"mean", "nchw->nc", "n3 c5 h7 w4", NULL, "hc"},
        {"mean", "bsh->", "b3 s5 h7", NULL, "s"},
        {"bias", "bsh,h->bsh", "b3 s5 h7", NULL, "hb"},
        {"gelu", "bsf->bsf", "b3 s5 f7", NULL, "f"},
        {"concat", "anhw,nhwb->nhcw", "n3 a3 b5 h5 w3 c8", NULL, "nhw"},
        {"mse", "bk,kb->", "b5 k7", NULL, "bk"},
        {"mse", "bk,bk->", "b5 k7", NULL, "bk"},
    };
    for (size_t e = 0; e < sizeof cases / sizeof *cases; e++)
        for (const char *p = cases[e].letters; *p; p++)
            for (int m = 0; m < 4; m++) {
                set_mode(m);
                Case c;
                case_init(&c, one_op(cases[e].kind, cases[e].spec, cases[e].sizes, cases[e].attrs,
                                     false), false);
                check_split(&c, *p);
                case_free(&c);
            }
}

static void test_split_conv(void **state)
{
    (void)state;
    for (const char *p = "con"; *p; p++) {
        Case c;
        case_init(&c, conv_model(3, 5, 7, 6, 4, 3, 3, 1, 1), false);
        check_split(&c, *p);
        case_free(&c);
    }
}

/* ----------------------------------------------------------------------------
 * Shapes and dispatch */

static void test_shape_whole(void **state)
{
    (void)state;
    Graph *g = conv_model(2, 3, 9, 7, 5, 3, 2, 2, 1);
    KernelShape ks;
    kernel_shape_whole(&ks, &g->ops[0], g);
    assert_ptr_equal(ks.op, &g->ops[0]);
    assert_null(ks.stats);
    assert_int_equal(ks.in_hw[0], 9);
    assert_int_equal(ks.in_hw[1], 7);
    for (int l = 0; l < IR_LETTERS; l++) {
        assert_int_equal(ks.size[l], g->ops[0].size[l]);
        assert_int_equal(ks.total[l], g->ops[0].size[l]);
        assert_int_equal(ks.off[l], 0);
    }
    assert_int_equal(kernel_operand_numel(&ks, 0), 2 * 3 * 9 * 7);
    assert_int_equal(kernel_operand_numel(&ks, 1), 5 * 3 * 3 * 2);
    assert_int_equal(kernel_operand_numel(&ks, 2), 2 * 5 * 5 * 4);   /* (9+2-3)/2+1, (7+2-2)/2+1 */
    graph_free(g);

    g = one_op("mean", "bsh->", "b3 s5 h7", NULL, false);
    kernel_shape_whole(&ks, &g->ops[0], g);
    assert_int_equal(kernel_operand_numel(&ks, 0), 105);
    assert_int_equal(kernel_operand_numel(&ks, 1), 1);
    graph_free(g);
}

static void test_bad_shape(void **state)
{
    (void)state;
    Graph *g = one_op("relu", "bh->bh", "b3 h5", NULL, false);
    KernelShape ks;
    kernel_shape_whole(&ks, &g->ops[0], g);
    ks.size['h' - 'a'] = 0;
    float x[15] = {0}, y[15];
    Err err = {{0}};
    assert_int_equal(kernel_forward(&ks, (const void *const[]){x}, y, &err), -1);
    assert_non_null(strstr(err.msg, "letter 'h'"));
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Fast paths against the plain loops (k_fast_paths): the same inputs through
 * both, forward and backward. add, bias and relu do the same float
 * operations in the same order either way, so they must agree bit for bit;
 * gelu's fast path (the logistic form, k_expf) to float rounding. Both paths
 * also pass the references. Rows of 37 run the loops' scalar tails. */

static int fast_paths_on(void **state)
{
    (void)state;
    k_fast_paths = true;
    return 0;
}

/* out and din of one case by one path; din starts at 0.25 (backward adds). */
static void run_path(Case *c, bool fast, const float *r, float *out, float *din[IR_MAX_INPUTS])
{
    k_fast_paths = fast;
    for (int k = 0; k < c->nin; k++) {
        if (c->is_int[k] || c->owner[k] != k) {
            din[k] = c->owner[k] != k ? din[c->owner[k]] : NULL;
            continue;
        }
        din[k] = xmalloc((size_t)c->n[k] * sizeof *din[k]);
        for (int64_t i = 0; i < c->n[k]; i++) din[k][i] = 0.25f;
    }
    forward_ok(&c->ks, (const void *const *)c->x, out);
    backward_ok(&c->ks, (const void *const *)c->x, out, r, din);
    k_fast_paths = true;
}

static void test_elementwise_fast(void **state)
{
    (void)state;
    static const struct {
        const char *kind, *spec, *sizes;
        bool same01;
    } cases[] = {
        {"add", "bsh,bsh->bsh", "b3 s5 h37", false},
        {"add", "bsh,bsh,bsh->bsh", "b3 s5 h37", false},
        {"add", "bsh,bsh->bsh", "b3 s5 h37", true},      /* x + x */
        {"bias", "bsh,h->bsh", "b3 s5 h37", false},
        {"bias", "bsh,sh->bsh", "b3 s5 h7", false},
        {"bias", "bsnd,nd->bsnd", "b2 s5 n3 d7", false},
        {"bias", "bsh,h->bsh", "b3 s5 h3", false},       /* rows shorter than 8 */
        {"bias", "nchw,c->nchw", "n3 c5 h7 w4", false},  /* not the fast layout */
        {"bias", "bsh,hs->bsh", "b3 s5 h7", false},      /* nor this */
        {"gelu", "bsf->bsf", "b3 s5 f37", false},
        {"relu", "bh->bh", "b5 h37", false},
    };
    for (size_t e = 0; e < sizeof cases / sizeof *cases; e++) {
        Case c;
        case_init(&c, one_op(cases[e].kind, cases[e].spec, cases[e].sizes, NULL, cases[e].same01),
                  false);
        const int64_t no = c.n[c.nin];
        float *r = randv(no, 1.0f), *out[2], *din[2][IR_MAX_INPUTS] = {{0}};
        for (int f = 0; f < 2; f++) {
            out[f] = xmalloc((size_t)no * sizeof *out[f]);
            run_path(&c, f == 0, r, out[f], din[f]);
        }
        const bool exact = c.op->kind != OP_GELU;
        char what[128];
        snprintf(what, sizeof what, "%s \"%s\" forward, fast against plain", cases[e].kind,
                 cases[e].spec);
        for (int64_t i = 0; i < no; i++)
            assert_close(what, i, out[0][i], out[1][i], exact ? 0 : 1e-6, exact ? 0 : 1e-7);
        for (int k = 0; k < c.nin; k++) {
            if (!din[0][k] || c.owner[k] != k) continue;
            snprintf(what, sizeof what, "%s \"%s\" d(input %d), fast against plain",
                     cases[e].kind, cases[e].spec, k);
            for (int64_t i = 0; i < c.n[k]; i++)
                assert_close(what, i, din[0][k][i], din[1][k][i], exact ? 0 : 1e-6,
                             exact ? 0 : 1e-7);
        }
        /* and each path against the references (relu's kink spoils the
         * differences at this many points; test_elementwise has its own) */
        for (int f = 0; f < 2; f++) {
            k_fast_paths = f == 0;
            check_forward(&c);
            if (c.op->kind != OP_RELU) check_grads(&c, 1e-2f);
        }
        k_fast_paths = true;
        for (int f = 0; f < 2; f++) {
            for (int k = 0; k < c.nin; k++)
                if (c.owner[k] == k) free(din[f][k]);
            free(out[f]);
        }
        free(r);
        case_free(&c);
    }
}

/* d/dx of the closed form, in double */
static double gelu_grad_ref(double x)
{
    double k = sqrt(2 / M_PI), t = tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
}

/* GELU over [-12, 12] and at far points, by both paths, against the closed
 * form and its derivative in double; in place (output over the input) the
 * fast path stands aside and the result is the plain loop's. */
static void test_gelu_fast(void **state)
{
    (void)state;
    enum { NG = 2421 };
    Case c;
    case_init(&c, one_op("gelu", "b->b", "b2421", NULL, false), false);
    float x[NG], dy[NG], y[2][NG], dx[2][NG];
    static const float far[] = {-1e6f, -100, -40, -20, -10, 10, 20, 40, 100, 1e6f, -0.0f, 1e-30f};
    const int nfar = (int)(sizeof far / sizeof *far);
    for (int i = 0; i < NG; i++) {
        x[i] = i < nfar ? far[i] : (float)(-12 + 24.0 * (i - nfar) / (NG - nfar - 1));
        dy[i] = (float)(2 * urand() - 1);
    }
    for (int f = 0; f < 2; f++) {
        k_fast_paths = f == 0;
        memset(dx[f], 0, sizeof dx[f]);
        forward_ok(&c.ks, (const void *const[]){x}, y[f]);
        backward_ok(&c.ks, (const void *const[]){x}, y[f], dy, (float *const[]){dx[f]});
    }
    k_fast_paths = true;
    for (int i = 0; i < NG; i++) {
        double w = gelu_ref(x[i]), dw = dy[i] * gelu_grad_ref(x[i]);
        if (fabs(x[i]) > 20) w = x[i] > 0 ? x[i] : 0, dw = x[i] > 0 ? dy[i] : 0;
        assert_close("gelu fast", i, y[0][i], w, 1e-6, 1e-7);
        assert_close("gelu plain", i, y[1][i], w, 1e-6, 1e-7);
        assert_close("gelu fast, against plain", i, y[0][i], y[1][i], 1e-6, 1e-7);
        assert_close("gelu' fast", i, dx[0][i], dw, 1e-5, 1e-7);
        /* looser: below x = -5 tanhf rounds to -1 and the plain loop's 1 - t^2
         * to 0, so there it is the less exact of the two */
        assert_close("gelu' fast, against plain", i, dx[0][i], dx[1][i], 1e-5, 1e-6);
    }
    /* in place: the plain loop's floats exactly */
    float io[NG];
    memcpy(io, x, sizeof io);
    forward_ok(&c.ks, (const void *const[]){io}, io);
    for (int i = 0; i < NG; i++) assert_true(memcmp(&io[i], &y[1][i], sizeof io[i]) == 0);
    case_free(&c);
}

/* Mse's flat loops (prediction and target laid out alike) against its walk
 * (k_fast_paths off), and a concat whose local shape does not add up. */
static void test_concat_mse_paths(void **state)
{
    (void)state;
    Case c;
    case_init(&c, one_op("mse", "bk,bk->", "b64 k1031", NULL, false), false);
    float r = 0.75f, out[2];
    float *din[2][IR_MAX_INPUTS] = {{0}};
    for (int f = 0; f < 2; f++) run_path(&c, f == 0, &r, &out[f], din[f]);
    assert_close("mse fast against plain", 0, out[0], out[1], 1e-6, 0);
    for (int k = 0; k < 2; k++) {
        for (int64_t i = 0; i < c.n[k]; i++)
            assert_close("mse d(input) fast against plain", i, din[0][k][i], din[1][k][i], 1e-6,
                         1e-9);
        free(din[0][k]);
        free(din[1][k]);
    }
    case_free(&c);

    case_init(&c, one_op("concat", "na,nb->nc", "n2 a3 b5 c8", NULL, false), false);
    KernelShape ks = c.ks;
    ks.size['c' - 'a'] = ks.total['c' - 'a'] = 7;
    float y[16];
    Err err = {{0}};
    assert_int_equal(kernel_forward(&ks, (const void *const *)c.x, y, &err), -1);
    assert_non_null(strstr(err.msg, "concat's output letter 'c' has local size 7"));
    ks = c.ks;
    ks.size['a' - 'a'] = 2;       /* a part of an input's own extent: never split */
    ks.size['c' - 'a'] = 7;
    assert_int_equal(kernel_forward(&ks, (const void *const *)c.x, y, &err), -1);
    assert_non_null(strstr(err.msg, "cannot split letter 'a'"));
    case_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shape_whole),
        cmocka_unit_test(test_bad_shape),
        cmocka_unit_test_teardown(test_matmul, teardown_mode),
        cmocka_unit_test_teardown(test_matmul_large, teardown_mode),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_embedding_bad_index),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_pool2d),
        cmocka_unit_test(test_mean),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_bias_no_grads),
        cmocka_unit_test(test_concat_mse_large),
        cmocka_unit_test_teardown(test_concat_mse_paths, fast_paths_on),
        cmocka_unit_test(test_gelu_values),
        cmocka_unit_test_teardown(test_split, teardown_mode),
        cmocka_unit_test(test_split_conv),
        cmocka_unit_test_teardown(test_elementwise_fast, fast_paths_on),
        cmocka_unit_test_teardown(test_gelu_fast, fast_paths_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
