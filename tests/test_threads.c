/*
 * test_threads.c — the CPU kernels on the rank's OpenMP threads.
 *
 * strata's own kernels (everything but the GEMMs: elementwise, norms,
 * softmax, cross-entropy, embedding, pooling, the optimizers, the flat
 * helpers) cut their work into pieces that do not depend on the thread
 * count (kernels_internal.h): on 1, 2 or 3 threads they must give bitwise
 * the same floats. Every such op of six zoo models is run forward and
 * backward on random data at each count and compared: a GPT (layernorm,
 * causal softmax, gelu, bias, add, cross-entropy, embedding), a ResNet
 * (batchnorm, pooling, relu), a VGG (max pooling), a DLRM (embedding
 * bags), a fire CNN (concat, mean) and an MLP with the mse loss, sized so
 * that every kernel takes its parallel path.
 *
 * OpenBLAS's SGEMM does not keep that promise (its partition of a product
 * changes the rounding), so whole training steps are checked run to run at
 * one thread count (bitwise), and across counts by the first step's loss,
 * within a tolerance.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "executor/blas.h"
#include "executor/kernels.h"
#include "executor/runtime.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/zoo.h"

typedef struct {
    const char *kind;
    int n;
    const char *const *keys, *const *vals;
} Model;

static const char *const gpt_k[] = { "layers", "hidden", "heads", "seq", "vocab", "batch", "tied" };
static const char *const gpt_v[] = { "2", "128", "4", "64", "1024", "4", "0" };
static const char *const res_k[] = { "depth", "batch", "image", "classes" };
static const char *const res_v[] = { "50", "2", "32", "10" };
static const char *const vgg_k[] = { "batch", "image", "classes", "width", "fc" };
static const char *const vgg_v[] = { "2", "32", "10", "16", "64" };
static const char *const dlrm_k[] = { "batch", "tables", "rows", "dim", "lookups", "bottom", "top" };
static const char *const dlrm_v[] = { "128", "2", "500", "256", "3", "64,256", "64" };
/* 4 images of 16 x 32 x 32 per concat input: 4 pieces of 16384 */
static const char *const fire_k[] = { "batch", "image", "squeeze", "expand" };
static const char *const fire_v[] = { "4", "64", "8", "16" };
/* 64 x 1024 predictions: 4 pieces of mse's sum */
static const char *const mse_k[] = { "layers", "hidden", "input", "classes", "batch", "loss" };
static const char *const mse_v[] = { "1", "64", "64", "1024", "64", "mse" };

static const Model models[] = {
    { "gpt", 7, gpt_k, gpt_v },
    { "resnet", 4, res_k, res_v },
    { "vgg16", 5, vgg_k, vgg_v },
    { "dlrm", 7, dlrm_k, dlrm_v },
    { "fire", 4, fire_k, fire_v },
    { "mlp", 6, mse_k, mse_v },
};

static Graph *build(const Model *m)
{
    Err err = {0};
    Graph *g = zoo_build(m->kind, m->n, m->keys, m->vals, &err);
    if (!g) fail_msg("%s: %s", m->kind, err.msg);
    return g;
}

/* ----------------------------------------------------------------------------
 * Kernels, op by op */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)         /* [-1, 1) */
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) * 0x1p-23 - 1);
}

typedef struct {
    void *in[IR_MAX_INPUTS];
    float *out, *dout, *din[IR_MAX_INPUTS];
    int64_t nin[IR_MAX_INPUTS], nout;
} OpRun;

static bool is_int(const Graph *g, const Op *op, int k)
{
    return g->tensors[op->in[k]].dtype == DT_I32;
}

/* Forward then backward of op on the inputs in r (fresh outputs), on t threads. */
static void run_op(const Graph *g, const Op *op, OpRun *r, int t)
{
    blas_set_threads(t);
    KernelShape ks;
    kernel_shape_whole(&ks, op, g);
    Err err = {0};
    memset(r->out, 0, sizeof(float) * (size_t)r->nout);
    if (kernel_forward(&ks, (const void *const *)r->in, r->out, &err))
        fail_msg("op %s forward: %s", op->name, err.msg);
    float *din[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < op->nin; k++)
        if (r->din[k]) {
            memset(r->din[k], 0, sizeof(float) * (size_t)r->nin[k]);
            din[k] = r->din[k];
        }
    if (kernel_backward(&ks, (const void *const *)r->in, r->out, r->dout, din, &err))
        fail_msg("op %s backward: %s", op->name, err.msg);
}

static void alloc_like(const Graph *g, const Op *op, OpRun *r, const OpRun *src)
{
    KernelShape ks;
    kernel_shape_whole(&ks, op, g);
    r->nout = kernel_operand_numel(&ks, op->nin);
    r->out = malloc(sizeof(float) * (size_t)(r->nout + 1));
    r->dout = src ? src->dout : malloc(sizeof(float) * (size_t)(r->nout + 1));
    assert_true(r->out && r->dout);
    uint32_t lm = op->gather_mask ? op->gather_mask : op->reduce_mask;
    int64_t bound = lm ? ks.total[__builtin_ctz(lm)] : 1;
    for (int k = 0; k < op->nin; k++) {
        r->nin[k] = kernel_operand_numel(&ks, k);
        r->din[k] = is_int(g, op, k) ? NULL : malloc(sizeof(float) * (size_t)(r->nin[k] + 1));
        assert_true(is_int(g, op, k) || r->din[k]);
        if (src) {
            r->in[k] = src->in[k];
            continue;
        }
        r->in[k] = malloc(sizeof(float) * (size_t)(r->nin[k] + 1));
        assert_non_null(r->in[k]);
        for (int64_t i = 0; i < r->nin[k]; i++) {
            if (is_int(g, op, k))
                ((int32_t *)r->in[k])[i] = (int32_t)((i * 7919) % bound);
            else
                ((float *)r->in[k])[i] = frand();
        }
    }
    for (int64_t i = 0; i < r->nout && !src; i++) r->dout[i] = frand();
}

static void free_run(OpRun *r, bool inputs)
{
    free(r->out);
    for (int k = 0; k < IR_MAX_INPUTS; k++) {
        free(r->din[k]);
        if (inputs) free(r->in[k]);
    }
    if (inputs) free(r->dout);
}

static void same(const char *what, const Op *op, const float *a, const float *b, int64_t n, int t)
{
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
            fail_msg("op %s (%s): element %lld of %lld is %.9g on 1 thread, %.9g on %d", op->name,
                     what, (long long)i, (long long)n, a[i], b[i], t);
}

/* Every op of the model but the GEMMs, at 1, 2 and 3 threads. */
static void kernels_invariant(const Model *m)
{
    Graph *g = build(m);
    int checked = 0;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        if (op->kind == OP_MATMUL || op->kind == OP_CONV2D) continue;
        OpRun one = {0};
        alloc_like(g, op, &one, NULL);
        run_op(g, op, &one, 1);
        for (int t = 2; t <= 3; t++) {
            OpRun many = {0};
            alloc_like(g, op, &many, &one);
            run_op(g, op, &many, t);
            same("forward", op, one.out, many.out, one.nout, t);
            for (int k = 0; k < op->nin; k++)
                if (one.din[k]) same("backward", op, one.din[k], many.din[k], one.nin[k], t);
            free_run(&many, false);
        }
        free_run(&one, true);
        checked++;
    }
    assert_true(checked > 0);
    graph_free(g);
    blas_set_threads(2);
}

static void test_kernels_gpt(void **state) { (void)state; kernels_invariant(&models[0]); }
static void test_kernels_resnet(void **state) { (void)state; kernels_invariant(&models[1]); }
static void test_kernels_vgg(void **state) { (void)state; kernels_invariant(&models[2]); }
static void test_kernels_dlrm(void **state) { (void)state; kernels_invariant(&models[3]); }
static void test_kernels_fire(void **state) { (void)state; kernels_invariant(&models[4]); }
static void test_kernels_mse(void **state) { (void)state; kernels_invariant(&models[5]); }

/* ----------------------------------------------------------------------------
 * Training steps */

#define STEPS 2

typedef struct {
    double loss[STEPS];
    float *params;          /* every param, whole, one after another */
    int64_t n;
} Outcome;

/* STEPS steps of the model on one rank with t threads. */
static Outcome train(const Model *m, int t)
{
    blas_set_threads(t);
    Err err = {0};
    const char *kind = m->kind;
    Graph *g = build(m);
    cJSON *j = cJSON_Parse("{\"mesh\":{\"dp\":1}}");
    Strategy *s = strategy_from_json(j, g, NULL, &err);
    cJSON_Delete(j);
    if (!s) fail_msg("%s: %s", kind, err.msg);
    Plan *p = ir_lower(g, NULL, s, &err);
    if (!p) fail_msg("%s: %s", kind, err.msg);
    Comm one = { .ops = NULL, .rank = 0, .world = 1 };
    RunConfig cfg = { .seed = 3 };
    rt_default_hyper(&cfg.hyper);
    Runtime *rt = rt_new(g, s, p, &one, &cfg, &err);
    if (!rt) fail_msg("%s: %s", kind, err.msg);
    Outcome o = {0};
    for (int st = 0; st < STEPS; st++) {
        StepStat ss;
        if (rt_step(rt, st, &ss, &err)) fail_msg("%s, step %d: %s", kind, st, err.msg);
        o.loss[st] = ss.loss;
    }
    for (int i = 0; i < g->ntensors; i++)
        if (g->tensors[i].role == ROLE_PARAM) o.n += tensor_numel(&g->tensors[i]);
    o.params = malloc(sizeof(float) * (size_t)o.n);
    assert_non_null(o.params);
    for (int i = 0, at = 0; i < g->ntensors; i++) {
        if (g->tensors[i].role != ROLE_PARAM) continue;
        if (rt_gather_param(rt, i, o.params + at, &err)) fail_msg("%s: %s", kind, err.msg);
        at += (int)tensor_numel(&g->tensors[i]);
    }
    rt_free(rt);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
    return o;
}

/* Bitwise equal, or (tol > 0) within tol relative of the larger. */
static void compare(const char *kind, const Outcome *a, const Outcome *b, int ta, int tb,
                    double tol)
{
    /* across thread counts, the first loss only: Adam's first update moves
     * each weight by about lr times the sign of its gradient, so gradients
     * near zero that differ in rounding move weights apart by lr */
    for (int st = 0; st < (tol ? 1 : STEPS); st++) {
        double x = a->loss[st], y = b->loss[st];
        if (tol ? fabs(x - y) > tol * fmax(fabs(x), fabs(y)) : memcmp(&x, &y, sizeof x) != 0)
            fail_msg("%s: step %d loss %.9g on %d threads, %.9g on %d", kind, st, x, ta, y, tb);
    }
    assert_int_equal(a->n, b->n);
    if (tol) return;
    for (int64_t i = 0; i < a->n; i++)
        if (memcmp(&a->params[i], &b->params[i], sizeof(float)) != 0)
            fail_msg("%s: param element %lld is %.9g on %d threads, %.9g on %d", kind,
                     (long long)i, a->params[i], ta, b->params[i], tb);
}

static void steps_deterministic(const Model *m)
{
    Outcome a = train(m, 3), b = train(m, 3), c = train(m, 1);
    compare(m->kind, &a, &b, 3, 3, 0);
    compare(m->kind, &a, &c, 3, 1, 1e-3);
    free(a.params);
    free(b.params);
    free(c.params);
    blas_set_threads(2);
}

static void test_steps_gpt(void **state) { (void)state; steps_deterministic(&models[0]); }
static void test_steps_resnet(void **state) { (void)state; steps_deterministic(&models[1]); }
static void test_steps_dlrm(void **state) { (void)state; steps_deterministic(&models[3]); }
static void test_steps_fire(void **state) { (void)state; steps_deterministic(&models[4]); }
static void test_steps_mse(void **state) { (void)state; steps_deterministic(&models[5]); }

/* The flat helpers, the optimizers and the compression kernels on lengths
 * around the piece size. */
static void test_flat(void **state)
{
    (void)state;
    const int64_t lens[] = { 1, 7, 16384, 16385, 3 * 16384 + 5, 200003 };
    for (size_t c = 0; c < sizeof lens / sizeof lens[0]; c++) {
        int64_t n = lens[c];
        float *ref[5], *got[5];
        for (int t = 0; t < 2; t++) {
            blas_set_threads(t ? 3 : 1);
            float **b = t ? got : ref;
            for (int k = 0; k < 5; k++) {
                b[k] = malloc(sizeof(float) * (size_t)n);
                assert_non_null(b[k]);
                for (int64_t i = 0; i < n; i++) b[k][i] = (float)((i * 7919 + k * 104729) % 1000) / 997.0f - 0.5f;
            }
            kernel_axpy(b[0], b[1], 0.37f, n);
            OptimHyper h;
            rt_default_hyper(&h);
            h.weight_decay = 0.01f;
            for (int64_t i = 0; i < n; i++) b[4][i] = b[4][i] * b[4][i];   /* v >= 0 */
            kernel_adam(b[2], b[1], b[3], b[4], n, 3, &h);
            kernel_sgd(b[1], b[0], b[3], n, &h);
            kernel_copy(b[0] + n / 2, b[2], sizeof(float) * (size_t)(n - n / 2));
            kernel_fill(b[3], 0.25f, n / 3);
            kernel_zero(b[4], sizeof(float) * (size_t)(n / 5));
            /* compression: fp16 both ways into b[1]; int8 with feedback in b[4] */
            uint16_t *half = malloc(sizeof *half * (size_t)n);
            int8_t *q = malloc((size_t)n);
            assert_true(half && q);
            kernel_to_fp16(b[2], half, n);
            kernel_from_fp16(half, b[1], n);
            float scale = kernel_int8_encode(b[0], b[4], q, n);
            kernel_int8_decode(q, scale, b[3], n);
            free(half);
            free(q);
        }
        for (int k = 0; k < 5; k++) {
            assert_memory_equal(ref[k], got[k], sizeof(float) * (size_t)n);
            free(ref[k]);
            free(got[k]);
        }
    }
    blas_set_threads(2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flat),
        cmocka_unit_test(test_kernels_gpt),
        cmocka_unit_test(test_kernels_resnet),
        cmocka_unit_test(test_kernels_vgg),
        cmocka_unit_test(test_kernels_dlrm),
        cmocka_unit_test(test_kernels_fire),
        cmocka_unit_test(test_kernels_mse),
        cmocka_unit_test(test_steps_gpt),
        cmocka_unit_test(test_steps_resnet),
        cmocka_unit_test(test_steps_dlrm),
        cmocka_unit_test(test_steps_fire),
        cmocka_unit_test(test_steps_mse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
