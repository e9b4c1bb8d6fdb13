/*
 * test_opmodel.c — the operator cost model: the analytical roofline with
 * its efficiency curves, kind names, the feature function, training on
 * samples of a known efficiency function (whole shapes held out), the
 * stored form and its corruption checks, the analytical fallback for kinds
 * without samples; then `strata costmodel train|list|show` end to end on a
 * profile database made here with synthetic samples, and every bad input.
 *
 * The command tests run build/strata through tests/support/cli_harness.h
 * (STRATA_BIN and STRATA_ROOT, which `make test` exports).
 *
 * Legend: P = peak FLOP/s, W = bytes/s, d = a GEMM's harmonic size
 * 3 / (1/M + 1/N + 1/K), t = seconds.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "costmodel/costmodel.h"
#include "costmodel/train.h"
#include "db/db.h"
#include "ir/util.h"
#include "tests/support/cli_harness.h"
#include "tests/support/store_fixtures.h"

/* training runs ~1 s here, several times that under the sanitizers */
#define DEADLINE_S 300

static int group_setup(void **state)
{
    (void)state;
    static const HarnessConfig cfg = { "test_opmodel", DEADLINE_S, "tests/lsan.supp" };
    return harness_setup(&cfg);
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

/* ----------------------------------------------------------------------------
 * Devices and shapes */

static OpDevice gpu_dev(void)
{
    /* an A100's datasheet figures, as clusters/dgx-a100-80gb.json has them */
    OpDevice d = { .peak_flops = { [DT_F32] = 19.5e12, [DT_BF16] = 312e12, [DT_F16] = 312e12 },
                   .mem_bw = 2039e9, .gpu = true };
    return d;
}

static OpDevice cpu_dev(void)
{
    OpDevice d = { .peak_flops = { [DT_F32] = 1e11, [DT_BF16] = 1e11, [DT_F16] = 1e11 },
                   .mem_bw = 1.5e10, .gpu = false };
    return d;
}

/* "bsh,hf->bsf" with M = b*s, K = h, N = f */
static OpShape matmul(int64_t m, int64_t k, int64_t n, DType dt, Phase ph)
{
    OpShape x = { .kind = OP_MATMUL, .phase = ph, .dtype = dt };
    x.letters = 1u << ('b' - 'a') | 1u << ('h' - 'a') | 1u << ('f' - 'a');
    x.size['b' - 'a'] = m;
    x.size['h' - 'a'] = k;
    x.size['f' - 'a'] = n;
    int eb = dtype_bytes(dt);
    x.flops = 2.0 * m * n * k;
    x.bytes = (double)eb * ((double)m * k + (double)k * n + (double)m * n);
    return x;
}

/* an elementwise op of kind k over n elements: reads one, writes one */
static OpShape elementwise(int kind, int64_t n, DType dt)
{
    OpShape x = { .kind = kind, .phase = PH_FWD, .dtype = dt };
    x.letters = 1u << ('b' - 'a');
    x.size['b' - 'a'] = n;
    x.flops = (double)n;
    x.bytes = 2.0 * dtype_bytes(dt) * n;
    return x;
}

/* ----------------------------------------------------------------------------
 * Kinds */

static void test_kind_names(void **state)
{
    (void)state;
    for (int k = 0; k < CM_KIND_COUNT; k++) {
        int back = -1;
        const char *s = cm_kind_name(k);
        assert_string_not_equal(s, "?");
        assert_int_equal(cm_kind_parse(s, &back), 0);
        assert_int_equal(back, k);
    }
    assert_string_equal(cm_kind_name(OP_MATMUL), "matmul");
    assert_string_equal(cm_kind_name(CM_KIND_ADAM), "adam");
    assert_string_equal(cm_kind_name(CM_KIND_SGD), "sgd");
    assert_string_equal(cm_kind_name(CM_KIND_SUM), "sum");
    assert_string_equal(cm_kind_name(-1), "?");
    assert_string_equal(cm_kind_name(CM_KIND_COUNT), "?");
    int k = 7;
    assert_int_equal(cm_kind_parse("warp", &k), -1);
    assert_int_equal(cm_kind_parse(NULL, &k), -1);
    assert_int_equal(k, 7);

    Phase p;
    assert_int_equal(cm_phase_parse("bwd_weight", &p), 0);
    assert_int_equal(p, PH_BWD_WEIGHT);
    assert_int_equal(cm_phase_parse("sideways", &p), -1);
}

/* ----------------------------------------------------------------------------
 * The analytical model */

static void test_device_from_group(void **state)
{
    (void)state;
    DeviceGroup g = { .name = "a100", .kind = "gpu", .count = 8,
                      .peak_flops = { 19.5e12, 312e12, 312e12, 0 }, .mem_bw = 2039e9 };
    OpDevice d;
    op_device_from_group(&g, &d);
    assert_true(d.gpu);
    assert_true(d.peak_flops[DT_BF16] == 312e12);
    assert_true(d.mem_bw == 2039e9);
    g.kind = "cpu";
    op_device_from_group(&g, &d);
    assert_false(d.gpu);
    DbProfile p = { .backend = "cpu", .peak_flops = 9e10, .mem_bw = 1.6e10 };
    op_device_from_profile(&p, &d);
    assert_false(d.gpu);
    for (int t = 0; t < DT_COUNT; t++) assert_true(d.peak_flops[t] == 9e10);
}

static void test_analytic_gemm_curve(void **state)
{
    (void)state;
    OpDevice g = gpu_dev();
    double prev = 0, prev_eff = 0;
    for (int64_t n = 16; n <= 16384; n *= 2) {
        OpShape x = matmul(n, n, n, DT_BF16, PH_FWD);
        double t = opmodel_analytic_time(&g, &x);
        double eff = x.flops / t / g.peak_flops[DT_BF16];
        /* time grows with size, efficiency grows towards a plateau below peak */
        assert_true(t > prev);
        assert_true(eff >= prev_eff - 1e-12);
        assert_true(eff < 0.9);
        prev = t;
        prev_eff = eff;
    }
    /* large GEMMs reach the published plateau (docs/costmodel.md: ~80% of peak) */
    OpShape big = matmul(16384, 16384, 16384, DT_BF16, PH_FWD);
    double eff = big.flops / opmodel_analytic_time(&g, &big) / g.peak_flops[DT_BF16];
    assert_true(eff > 0.7 && eff < 0.85);
    /* a skinny GEMM (M = 8) is far from it, with the same FLOPs as a square one */
    OpShape skinny = matmul(8, 4096, 4096, DT_BF16, PH_FWD);
    OpShape square = matmul(512, 512, 1024, DT_BF16, PH_FWD);
    assert_true(skinny.flops / opmodel_analytic_time(&g, &skinny) <
                square.flops / opmodel_analytic_time(&g, &square));
    /* bf16 runs at the tensor-core peak, f32 at the f32 one */
    OpShape f32 = matmul(4096, 4096, 4096, DT_F32, PH_FWD);
    OpShape b16 = matmul(4096, 4096, 4096, DT_BF16, PH_FWD);
    assert_true(opmodel_analytic_time(&g, &f32) > 10 * opmodel_analytic_time(&g, &b16));
    /* every phase of a GEMM is priced */
    OpShape bw = matmul(1024, 1024, 1024, DT_BF16, PH_BWD_WEIGHT);
    assert_true(opmodel_analytic_time(&g, &bw) > 0);
}

static void test_analytic_launch_floor(void **state)
{
    (void)state;
    OpDevice g = gpu_dev(), c = cpu_dev();
    OpShape tiny = elementwise(OP_RELU, 1, DT_F32);
    double tg = opmodel_analytic_time(&g, &tiny), tc = opmodel_analytic_time(&c, &tiny);
    /* a kernel launch costs microseconds on a GPU, less on a CPU */
    assert_true(tg >= 2e-6 && tg <= 20e-6);
    assert_true(tc > 0 && tc < 5e-6);
    assert_true(tg > tc);
    OpShape gemm = matmul(2, 2, 2, DT_F32, PH_FWD);
    assert_true(opmodel_analytic_time(&g, &gemm) >= 2e-6);
    assert_true(opmodel_analytic_time(&c, &gemm) > opmodel_analytic_time(&c, &tiny));
    /* no op is priced below its launch, however small */
    OpShape empty = { .kind = OP_ADD, .phase = PH_FWD, .dtype = DT_F32 };
    assert_true(opmodel_analytic_time(&g, &empty) >= 2e-6);
    assert_true(opmodel_roofline(&g, &empty) == 0);
    assert_true(opmodel_roofline_floor(&g, &empty) > 0);
}

static void test_analytic_memory_bound(void **state)
{
    (void)state;
    OpDevice g = gpu_dev();
    const int kinds[] = { OP_RELU, OP_GELU, OP_ADD, OP_LAYERNORM, OP_SOFTMAX, CM_KIND_ADAM,
                          CM_KIND_SGD, CM_KIND_SUM, OP_EMBEDDING, OP_CONCAT, OP_MSE };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        OpShape x = elementwise(kinds[i], 1 << 26, DT_BF16);
        if (kinds[i] >= OP_KIND_COUNT) {
            x.letters = 0;
            x.size[0] = 1 << 26;
        }
        double t = opmodel_analytic_time(&g, &x);
        /* bound by bandwidth: never faster than the device's bandwidth allows,
         * and (1 flop an element) nowhere near its compute roof */
        assert_true(x.bytes / t <= g.mem_bw);
        assert_true(x.bytes / t >= 0.5 * g.mem_bw);
        assert_true(x.flops / t < 0.01 * g.peak_flops[DT_BF16]);
        /* twice the bytes, about twice the time */
        OpShape y = x;
        y.bytes *= 2;
        y.flops *= 2;
        double t2 = opmodel_analytic_time(&g, &y);
        assert_true(t2 > 1.8 * t && t2 < 2.2 * t);
    }
    /* gradient sums are priced like the elementwise work they are */
    OpShape sum = { .kind = CM_KIND_SUM, .phase = PH_BWD_WEIGHT, .dtype = DT_F32,
                    .bytes = 3.0 * 4 * 1e6, .flops = 1e6, .size = { 1000000 } };
    double ts = opmodel_analytic_time(&g, &sum);
    assert_true(ts > sum.bytes / g.mem_bw && ts < 20e-6 + 2 * sum.bytes / g.mem_bw);
    OpModel *a = opmodel_analytic();
    CostSource src = CM_SRC_MLP;
    assert_true(opmodel_time(a, &g, &sum, &src) == ts);
    assert_int_equal(src, CM_SRC_ANALYTIC);
    assert_false(opmodel_covers(a, CM_KIND_SUM));
    assert_false(opmodel_covers(a, OP_MATMUL));
    opmodel_free(a);
    opmodel_free(NULL);
}

static void test_gpu_cpu_constants(void **state)
{
    (void)state;
    /* one device's figures, once as a GPU and once as a CPU: the constants differ */
    OpDevice g = gpu_dev(), c = gpu_dev();
    c.gpu = false;
    OpShape mid = matmul(256, 256, 256, DT_BF16, PH_FWD);
    OpShape small = elementwise(OP_ADD, 1024, DT_BF16);
    assert_true(opmodel_analytic_time(&g, &mid) != opmodel_analytic_time(&c, &mid));
    assert_true(opmodel_analytic_time(&g, &small) > opmodel_analytic_time(&c, &small));
}

static void test_roofline(void **state)
{
    (void)state;
    OpDevice g = gpu_dev(), c = cpu_dev();
    OpShape x = matmul(4096, 4096, 4096, DT_BF16, PH_FWD);
    double r = opmodel_roofline(&g, &x);
    assert_true(fabs(r - fmax(x.flops / 312e12, x.bytes / 2039e9)) <= 1e-15);
    /* elementwise work has the f32 (vector) roof, not the tensor-core one */
    OpShape e = elementwise(OP_GELU, 1 << 20, DT_BF16);
    e.flops = 1e12;
    assert_true(fabs(opmodel_roofline(&g, &e) - 1e12 / 19.5e12) <= 1e-12);
    /* the analytical model is never faster than the roofline */
    uint64_t s = 12345;
    for (int i = 0; i < 500; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int64_t m = 1 + (int64_t)(s >> 33) % 5000, k = 1 + (int64_t)(s >> 20) % 3000,
                n = 1 + (int64_t)(s >> 8) % 4000;
        OpShape y = matmul(m, k, n, i % 2 ? DT_F32 : DT_BF16, (Phase)(i % 3));
        assert_true(opmodel_analytic_time(&g, &y) >= opmodel_roofline(&g, &y));
        assert_true(opmodel_analytic_time(&c, &y) >= opmodel_roofline(&c, &y));
        OpShape z = elementwise(i % 2 ? OP_RELU : OP_LAYERNORM, m * k, DT_F32);
        assert_true(opmodel_analytic_time(&g, &z) >= opmodel_roofline(&g, &z));
    }
}

/* ----------------------------------------------------------------------------
 * Features */

static void test_features(void **state)
{
    (void)state;
    OpDevice d = cpu_dev();
    OpShape x = matmul(512, 768, 3072, DT_F32, PH_BWD_DATA);
    double a[OPMODEL_NFEAT], b[OPMODEL_NFEAT];
    memset(a, 0xff, sizeof a);
    memset(b, 0, sizeof b);
    opmodel_features(&d, &x, a);
    opmodel_features(&d, &x, b);
    assert_memory_equal(a, b, sizeof a);
    for (int i = 0; i < OPMODEL_NFEAT; i++) assert_true(isfinite(a[i]));
    /* the largest letter sizes come sorted: 3072, 768, 512 */
    assert_true(fabs(a[7] - log(3072)) < 1e-12);
    assert_true(fabs(a[8] - log(768)) < 1e-12);
    assert_true(fabs(a[9] - log(512)) < 1e-12);
    assert_true(a[10] == 0);
    assert_true(a[13] == 3);
    /* one-hots: exactly one kind, one phase, one dtype */
    int ones = 0;
    for (int i = OPMODEL_NFEAT - (CM_KIND_COUNT + PH_COUNT + DT_COUNT); i < OPMODEL_NFEAT; i++) {
        assert_true(a[i] == 0 || a[i] == 1);
        ones += a[i] == 1;
    }
    assert_int_equal(ones, 3);
    /* another kind, phase or device changes the vector */
    OpShape y = x;
    y.kind = OP_CONV2D;
    opmodel_features(&d, &y, b);
    assert_memory_not_equal(a, b, sizeof a);
    OpDevice g = gpu_dev();
    opmodel_features(&g, &x, b);
    assert_memory_not_equal(a, b, sizeof a);
    /* a causal softmax differs from the same shape unmasked in one
     * feature: the share its mask leaves, by hand for s = t = 4 (rows
     * weigh 1, 2, 3, 4 of 4), s = 2 < t = 4 (1, 2 of 4) and s = 4 > t = 2
     * (1, 2, 2, 2 of 2) */
    assert_true(fabs(opshape_unmasked(4, 4) - 10.0 / 16) < 1e-15);
    assert_true(fabs(opshape_unmasked(2, 4) - 3.0 / 8) < 1e-15);
    assert_true(fabs(opshape_unmasked(4, 2) - 7.0 / 8) < 1e-15);
    assert_true(opshape_unmasked(1, 1) == 1 && opshape_unmasked(0, 5) == 1);
    OpShape sm = elementwise(OP_SOFTMAX, 4 * 128 * 128, DT_F32), smc = sm;
    smc.unmasked = opshape_unmasked(128, 128);
    opmodel_features(&d, &sm, a);
    opmodel_features(&d, &smc, b);
    int differ = 0;
    for (int i = 0; i < OPMODEL_NFEAT; i++) differ += a[i] != b[i];
    assert_int_equal(differ, 1);
    assert_true(a[18] == 0 && fabs(b[18] - log(129.0 / 256)) < 1e-12);
    /* marked causal, its work and traffic are the share the kernels run:
     * the roofline and the analytical model price that */
    OpShape smk = sm;
    opshape_set_causal(&smk, 128, 128);
    assert_true(smk.unmasked == smc.unmasked);
    assert_true(fabs(smk.flops - sm.flops * 129.0 / 256) < 1e-9 * sm.flops);
    assert_true(fabs(smk.bytes - sm.bytes * 129.0 / 256) < 1e-9 * sm.bytes);
    assert_true(fabs(opmodel_roofline(&d, &smk) - opmodel_roofline(&d, &sm) * 129.0 / 256) <
                1e-9 * opmodel_roofline(&d, &sm));
    assert_true(opmodel_analytic_time(&d, &smk) < opmodel_analytic_time(&d, &sm));
    /* the backward runs whole rows: its share is a feature, its work whole */
    OpShape smb = sm;
    smb.phase = PH_BWD_DATA;
    opshape_set_causal(&smb, 128, 128);
    assert_true(smb.unmasked == smc.unmasked && smb.flops == sm.flops && smb.bytes == sm.bytes);
    /* a contraction too small for SGEMM is flagged (the CPU executor runs it
     * as plain loops), whichever phase: 8 x 8 x 8 is, the GEMM above is not */
    assert_true(a[49] == 0 || a[49] == 1);
    OpShape sx = matmul(8, 8, 8, DT_F32, PH_BWD_WEIGHT), lx = matmul(64, 64, 64, DT_F32, PH_FWD);
    OpShape *ops[3] = { &sx, &lx, &x };
    for (int i = 0; i < 3; i++) {
        ops[i]->in0 = cm_letter_mask("bh");
        ops[i]->in1 = cm_letter_mask("hf");
        ops[i]->out = cm_letter_mask("bf");
        opmodel_features(&d, ops[i], b);
        assert_true(b[45] > 0 && b[46] > 0 && b[47] > 0);
        assert_true(b[49] == (i == 0));
    }
    /* degenerate shapes still give finite features */
    OpShape z = { .kind = CM_KIND_SUM, .phase = PH_BWD_WEIGHT, .dtype = DT_F32 };
    opmodel_features(&d, &z, b);
    for (int i = 0; i < OPMODEL_NFEAT; i++) assert_true(isfinite(b[i]));
    OpDevice none = { 0 };
    opmodel_features(&none, &x, b);
    for (int i = 0; i < OPMODEL_NFEAT; i++) assert_true(isfinite(b[i]));
}

static void test_opshape_from_sample(void **state)
{
    (void)state;
    Err err = {0};
    OpShape x;
    DbProfileOp s = { .kind = "matmul", .phase = "bwd_weight", .dtype = "f32",
                      .shape_json = "{\"from\":\"gpt dp2\",\"op\":\"fc1\",\"spec\":\"bsh,hf->bsf\","
                                    "\"sizes\":{\"b\":4,\"s\":128,\"h\":256,\"f\":1024}}",
                      .flops = 2.0 * 4 * 128 * 256 * 1024, .bytes = 1e6, .median_s = 1e-3 };
    assert_int_equal(opshape_from_sample(&s, &x, &err), 0);
    assert_int_equal(x.kind, OP_MATMUL);
    assert_int_equal(x.phase, PH_BWD_WEIGHT);
    assert_int_equal(x.size['s' - 'a'], 128);
    assert_int_equal(x.size['f' - 'a'], 1024);
    assert_int_equal(__builtin_popcount(x.letters), 4);
    assert_true(x.unmasked == 0);
    DbProfileOp sm = { .kind = "softmax", .phase = "fwd", .dtype = "f32",
                       .shape_json = "{\"spec\":\"bnst->bnst\",\"sizes\":{\"b\":2,\"n\":4,"
                                     "\"s\":64,\"t\":64},\"causal\":true}",
                       .flops = 5.0 * 2 * 4 * 64 * 64, .bytes = 1e5, .median_s = 1e-4 };
    assert_int_equal(opshape_from_sample(&sm, &x, &err), 0);
    assert_true(fabs(x.unmasked - 65.0 / 128) < 1e-15);
    sm.shape_json = "{\"spec\":\"bnst->bnst\",\"sizes\":{\"b\":2,\"n\":4,\"s\":32,\"t\":64},"
                    "\"causal\":true}";
    assert_int_equal(opshape_from_sample(&sm, &x, &err), 0);
    assert_true(fabs(x.unmasked - 33.0 / 128) < 1e-15);
    sm.shape_json = "{\"spec\":\"bnst->bnst\",\"sizes\":{\"b\":2,\"n\":4,\"s\":64,\"t\":64},"
                    "\"causal\":1}";
    assert_int_equal(opshape_from_sample(&sm, &x, &err), -1);
    assert_non_null(strstr(err.msg, "shape_json.causal"));
    sm.shape_json = "{\"spec\":\"t->t\",\"sizes\":{\"t\":64},\"causal\":true}";
    assert_int_equal(opshape_from_sample(&sm, &x, &err), -1);
    assert_non_null(strstr(err.msg, "shape_json.spec"));
    assert_non_null(strstr(err.msg, "two letters to mask"));
    DbProfileOp u = { .kind = "adam", .phase = "update", .dtype = "f32",
                      .shape_json = "{\"from\":\"mlp\",\"n\":4096}", .flops = 1, .bytes = 1 };
    assert_int_equal(opshape_from_sample(&u, &x, &err), 0);
    assert_int_equal(x.kind, CM_KIND_ADAM);
    assert_int_equal(x.size[0], 4096);
    assert_int_equal(x.letters, 0);

    DbProfileOp bad = s;
    bad.shape_json = "{\"spec\":\"bsh,hf->bsf\",\"sizes\":{\"b\":4,\"s\":128,\"h\":256}}";
    assert_int_equal(opshape_from_sample(&bad, &x, &err), -1);
    assert_non_null(strstr(err.msg, "sizes.f"));
    bad.shape_json = "[1,2]";
    assert_int_equal(opshape_from_sample(&bad, &x, &err), -1);
    assert_non_null(strstr(err.msg, "shape_json"));
    bad = s;
    bad.kind = "warp";
    assert_int_equal(opshape_from_sample(&bad, &x, &err), -1);
    assert_non_null(strstr(err.msg, "warp"));
    bad = s;
    bad.phase = "later";
    assert_int_equal(opshape_from_sample(&bad, &x, &err), -1);
    assert_non_null(strstr(err.msg, "later"));
    u.shape_json = "{\"n\":0}";
    assert_int_equal(opshape_from_sample(&u, &x, &err), -1);
    assert_non_null(strstr(err.msg, "shape_json.n"));
}

/* ----------------------------------------------------------------------------
 * Synthetic profiles: times from a known efficiency function */

typedef struct {
    DbProfileOp *ops;
    int n;
    char **strings;                 /* shape_json texts, freed with the set */
} Samples;

static uint64_t rnd(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ULL;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* log-uniform in [lo, hi] */
static int64_t lsize(uint64_t *s, double lo, double hi)
{
    double u = (double)(rnd(s) >> 11) / 9007199254740992.0;
    return (int64_t)floor(exp(log(lo) + u * (log(hi) - log(lo))));
}

static void add_sample(Samples *S, const char *kind, const char *phase, const char *json,
                       double flops, double bytes, double t)
{
    S->ops = xrealloc(S->ops, sizeof *S->ops * (size_t)(S->n + 1));
    S->strings = xrealloc(S->strings, sizeof *S->strings * (size_t)(S->n + 1));
    S->strings[S->n] = xstrdup(json);
    S->ops[S->n] = (DbProfileOp){ .kind = (char *)kind, .phase = (char *)phase,
                                  .shape_json = S->strings[S->n], .dtype = "f32",
                                  .source = "random", .flops = flops, .bytes = bytes,
                                  .median_s = t, .p10_s = 0.98 * t, .p90_s = 1.02 * t,
                                  .reps = 5 };
    S->n++;
}

/* The known truth, on cpu_dev(): GEMMs reach 90% of peak at large harmonic
 * size (d_half 40) after a 2 us call; elementwise ops run at 70% of the
 * bandwidth (backward 1.5x the forward) after 0.3 us; Adam at 40% after
 * 0.2 us. Times carry +-2% noise. */
static Samples synthetic(int nshapes, uint64_t seed)
{
    Samples S = {0};
    uint64_t s = seed;
    const double P = 1e11, W = 1.5e10;
    char js[256];
    for (int i = 0; i < nshapes; i++) {
        int64_t b = lsize(&s, 1, 64), h = lsize(&s, 16, 2048), f = lsize(&s, 16, 4096);
        double fl = 2.0 * b * h * f, by = 4.0 * ((double)b * h + (double)h * f + (double)b * f);
        double d = 6 * fl / by, eff = 0.9 * d / (d + 40);
        snprintf(js, sizeof js, "{\"from\":\"synthetic\",\"spec\":\"bh,hf->bf\",\"sizes\":"
                 "{\"b\":%lld,\"h\":%lld,\"f\":%lld}}", (long long)b, (long long)h, (long long)f);
        static const char *const PH[] = { "fwd", "bwd_data", "bwd_weight" };
        for (int p = 0; p < 3; p++) {
            double noise = 1 + 0.02 * ((double)(rnd(&s) % 2001) / 1000 - 1);
            add_sample(&S, "matmul", PH[p], js, fl, by, (2e-6 + fl / (P * eff)) * noise * (1 + 0.1 * p));
        }
    }
    for (int i = 0; i < nshapes; i++) {
        int64_t b = lsize(&s, 1, 512), f = lsize(&s, 16, 8192);
        double n = (double)b * f;
        snprintf(js, sizeof js, "{\"from\":\"synthetic\",\"spec\":\"bf->bf\",\"sizes\":"
                 "{\"b\":%lld,\"f\":%lld}}", (long long)b, (long long)f);
        double noise = 1 + 0.02 * ((double)(rnd(&s) % 2001) / 1000 - 1);
        add_sample(&S, "relu", "fwd", js, n, 8 * n, (0.3e-6 + 8 * n / (0.7 * W)) * noise);
        add_sample(&S, "relu", "bwd_data", js, n, 12 * n, (0.3e-6 + 1.5 * 12 * n / (0.7 * W)) * noise);
    }
    for (int i = 0; i < nshapes / 2; i++) {
        int64_t n = lsize(&s, 16, 1 << 24);
        snprintf(js, sizeof js, "{\"from\":\"synthetic\",\"n\":%lld}", (long long)n);
        double noise = 1 + 0.02 * ((double)(rnd(&s) % 2001) / 1000 - 1);
        add_sample(&S, "adam", "update", js, 12.0 * n, 28.0 * n, (0.2e-6 + 28.0 * n / (0.4 * W)) * noise);
    }
    return S;
}

static void samples_free(Samples *S)
{
    for (int i = 0; i < S->n; i++) free(S->strings[i]);
    free(S->strings);
    free(S->ops);
    memset(S, 0, sizeof *S);
}

/* One training shared by the tests below (a second is a second of CPU). */
static struct {
    Samples S;
    TrainResult r;
    bool done;
} T;

static void trained(void)
{
    if (T.done) return;
    T.S = synthetic(90, 42);
    OpDevice d = cpu_dev();
    Err err = {0};
    TrainOpts o = { .seed = 7 };
    if (costmodel_train(&d, T.S.ops, T.S.n, &o, &T.r, &err)) fail_msg("%s", err.msg);
    T.done = true;
}

static const cJSON *kind_metrics(const cJSON *m, const char *kind)
{
    const cJSON *k;
    cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(m, "kinds"))
    {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(k, "kind");
        if (cJSON_IsString(nm) && !strcmp(nm->valuestring, kind)) return k;
    }
    fail_msg("no metrics for kind %s", kind);
    return NULL;
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("metrics: %s is not a number", key);
    return v->valuedouble;
}

static void test_train_synthetic(void **state)
{
    (void)state;
    trained();
    const cJSON *m = T.r.metrics;
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(m, "overall");
    double mlp = jnum(all, "mape_mlp"), roof = jnum(all, "mape_roofline");
    print_message("synthetic: held-out MAPE %.1f%% (roofline %.1f%%, analytic %.1f%%), %d held out\n",
                  100 * mlp, 100 * roof, 100 * jnum(all, "mape_analytic"), (int)jnum(all, "heldout"));
    /* the nets learn the efficiency curve: a small error on shapes never seen,
     * far below the plain roofline's */
    assert_true(mlp < 0.08);
    assert_true(mlp < 0.3 * roof);
    assert_true(fabs(T.r.heldout_mape - mlp) < 1e-12);
    for (int i = 0; i < 3; i++) {
        const char *k = (const char *[]){ "matmul", "relu", "adam" }[i];
        const cJSON *km = kind_metrics(m, k);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(km, "covered")));
        assert_true(jnum(km, "heldout") > 0);
        assert_true(jnum(km, "mape_mlp") < 0.12);
    }
    /* kinds without samples: not covered, no error figures */
    const cJSON *sum = kind_metrics(m, "sum");
    assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sum, "covered")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(sum, "mape_mlp")));
    assert_int_equal((int)jnum(m, "samples"), T.S.n);
    assert_int_equal((int)jnum(m, "skipped"), 0);
    assert_int_equal((int)(jnum(m, "train_samples") + jnum(m, "val_samples") + jnum(m, "heldout_samples")),
                     T.S.n);
    uint32_t want = 1u << OP_MATMUL | 1u << OP_RELU | 1u << CM_KIND_ADAM;
    assert_int_equal(T.r.covered, want);
}

static void test_train_deterministic(void **state)
{
    (void)state;
    trained();
    OpDevice d = cpu_dev();
    Err err = {0};
    TrainOpts o = { .seed = 7 };
    TrainResult r2;
    assert_int_equal(costmodel_train(&d, T.S.ops, T.S.n, &o, &r2, &err), 0);
    assert_int_equal(r2.nblob, T.r.nblob);
    assert_memory_equal(r2.blob, T.r.blob, r2.nblob);
    train_result_free(&r2);
    o.seed = 8;
    assert_int_equal(costmodel_train(&d, T.S.ops, T.S.n, &o, &r2, &err), 0);
    assert_true(r2.nblob != T.r.nblob || memcmp(r2.blob, T.r.blob, r2.nblob) != 0);
    train_result_free(&r2);
}

/* The key of a sample's shape as the split must see it: kind and sizes. */
static char *shape_of(const DbProfileOp *s)
{
    cJSON *j = cJSON_Parse(s->shape_json);
    cJSON_DeleteItemFromObjectCaseSensitive(j, "from");
    char *t = cJSON_PrintUnformatted(j);
    size_t n = strlen(t) + strlen(s->kind) + 2;
    char *k = xmalloc(n);
    snprintf(k, n, "%s|%s", s->kind, t);
    cJSON_free(t);
    cJSON_Delete(j);
    return k;
}

static void test_split_whole_shapes(void **state)
{
    (void)state;
    Samples S = synthetic(60, 3);
    int8_t *a = xmalloc((size_t)S.n), *b = xmalloc((size_t)S.n), *c = xmalloc((size_t)S.n);
    char **keys = xmalloc(sizeof *keys * (size_t)S.n);
    for (int i = 0; i < S.n; i++) keys[i] = shape_of(&S.ops[i]);
    costmodel_split(S.ops, S.n, 11, 0.2, 0, a);
    costmodel_split(S.ops, S.n, 11, 0.2, 0, b);
    assert_memory_equal(a, b, (size_t)S.n);               /* deterministic for the seed */
    int test = 0, val = 0;
    for (int i = 0; i < S.n; i++) {
        assert_true(a[i] >= 0 && a[i] <= 2);
        test += a[i] == 1;
        val += a[i] == 2;
        /* every phase of a shape lands in the same set */
        for (int j = 0; j < i; j++)
            if (!strcmp(keys[i], keys[j])) assert_int_equal(a[i], a[j]);
    }
    assert_true(test > 0.15 * S.n && test < 0.25 * S.n);
    assert_true(val > 0.05 * S.n && val < 0.2 * S.n);
    /* the same split whatever the order of the samples */
    DbProfileOp *rev = xmalloc(sizeof *rev * (size_t)S.n);
    for (int i = 0; i < S.n; i++) rev[i] = S.ops[S.n - 1 - i];
    costmodel_split(rev, S.n, 11, 0.2, 0, c);
    for (int i = 0; i < S.n; i++) assert_int_equal(c[S.n - 1 - i], a[i]);
    /* another ensemble member: the same test set, other validation shapes */
    costmodel_split(S.ops, S.n, 11, 0.2, 1, b);
    bool other = false;
    for (int i = 0; i < S.n; i++) {
        assert_int_equal(a[i] == 1, b[i] == 1);
        other = other || a[i] != b[i];
    }
    assert_true(other);
    /* another seed: another test set */
    costmodel_split(S.ops, S.n, 12, 0.2, 0, b);
    other = false;
    for (int i = 0; i < S.n; i++) other = other || (a[i] == 1) != (b[i] == 1);
    assert_true(other);
    /* an unreadable sample is in no set */
    S.ops[0].shape_json = "{";
    costmodel_split(S.ops, S.n, 11, 0.2, 0, b);
    assert_int_equal(b[0], -1);
    S.ops[0].shape_json = S.strings[0];
    for (int i = 0; i < S.n; i++) free(keys[i]);
    free(keys);
    free(rev);
    free(a);
    free(b);
    free(c);
    samples_free(&S);
}

/* ----------------------------------------------------------------------------
 * The stored form */

static void test_blob_roundtrip(void **state)
{
    (void)state;
    trained();
    Err err = {0};
    OpModel *m1 = opmodel_load(T.r.blob, T.r.nblob, &err);
    OpModel *m2 = opmodel_load(T.r.blob, T.r.nblob, &err);
    assert_non_null(m1);
    assert_non_null(m2);
    assert_int_equal(opmodel_covered(m1), T.r.covered);
    assert_true(opmodel_covers(m1, OP_MATMUL));
    assert_true(opmodel_covers(m1, CM_KIND_ADAM));
    assert_false(opmodel_covers(m1, OP_SOFTMAX));
    assert_false(opmodel_covers(m1, -1));
    assert_false(opmodel_covers(m1, CM_KIND_COUNT));
    OpDevice d = cpu_dev();
    for (int i = 0; i < T.S.n; i++) {
        OpShape x;
        assert_int_equal(opshape_from_sample(&T.S.ops[i], &x, &err), 0);
        CostSource s1, s2;
        double t1 = opmodel_time(m1, &d, &x, &s1), t2 = opmodel_time(m2, &d, &x, &s2);
        assert_true(t1 == t2);                   /* bit for bit */
        assert_int_equal(s1, CM_SRC_MLP);
        assert_true(t1 > 0 && isfinite(t1));
    }
    /* the trained model prices a GEMM it never saw sensibly: within 2x of the truth */
    OpShape x = matmul(48, 700, 900, DT_F32, PH_FWD);
    double fl = x.flops, d6 = 6 * fl / x.bytes;
    double truth = 2e-6 + fl / (1e11 * 0.9 * d6 / (d6 + 40));
    double got = opmodel_time(m1, &d, &x, NULL);
    assert_true(got > truth / 2 && got < truth * 2);
    opmodel_free(m1);
    opmodel_free(m2);
}

static void test_uncovered_kind(void **state)
{
    (void)state;
    trained();
    Err err = {0};
    OpModel *m = opmodel_load(T.r.blob, T.r.nblob, &err);
    assert_non_null(m);
    OpDevice d = cpu_dev();
    const int kinds[] = { OP_SOFTMAX, OP_CONV2D, CM_KIND_SUM, CM_KIND_SGD };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        OpShape x = elementwise(kinds[i], 1 << 16, DT_F32);
        CostSource src = CM_SRC_MLP;
        double t = opmodel_time(m, &d, &x, &src);
        assert_int_equal(src, CM_SRC_ANALYTIC);
        assert_true(t == opmodel_analytic_time(&d, &x));
    }
    OpShape y = elementwise(OP_RELU, 1 << 16, DT_F32);
    CostSource src = CM_SRC_ANALYTIC;
    opmodel_time(m, &d, &y, &src);
    assert_int_equal(src, CM_SRC_MLP);
    opmodel_time(m, &d, &y, NULL);                   /* src may be NULL */
    opmodel_free(m);
}

static void expect_load_error(const uint8_t *b, size_t n, const char *needle)
{
    Err err = {0};
    OpModel *m = opmodel_load(b, n, &err);
    if (m) {
        opmodel_free(m);
        fail_msg("a corrupt blob (%s) was accepted", needle);
    }
    if (!strstr(err.msg, needle)) fail_msg("expected \"%s\" in: %s", needle, err.msg);
}

static void test_blob_corrupt(void **state)
{
    (void)state;
    trained();
    size_t n = T.r.nblob;
    uint8_t *b = xmalloc(n);
    memcpy(b, T.r.blob, n);
    expect_load_error(NULL, 0, "too short");
    expect_load_error(b, 10, "too short");
    b[0] = 'X';
    expect_load_error(b, n, "magic");
    memcpy(b, T.r.blob, n);
    b[4] = 9;                                        /* format version */
    expect_load_error(b, n, "format version 9");
    memcpy(b, T.r.blob, n);
    b[8] = 99;                                       /* feature version */
    expect_load_error(b, n, "feature version 99");
    memcpy(b, T.r.blob, n);
    b[n - 100] ^= 0x40;                              /* inside the last net */
    expect_load_error(b, n, "checksum");
    memcpy(b, T.r.blob, n);
    expect_load_error(b, n - 1, "truncated");
    b[20] = (uint8_t)MLP_TANH;                       /* another activation than the nets' */
    expect_load_error(b, n, "does not match");
    memcpy(b, T.r.blob, n);
    b[16] = 0xff;                                    /* covered mask with unknown kinds */
    b[19] = 0xff;
    expect_load_error(b, n, "unknown kinds");
    free(b);
    /* and the intact one still loads */
    Err err = {0};
    OpModel *m = opmodel_load(T.r.blob, T.r.nblob, &err);
    assert_non_null(m);
    opmodel_free(m);
}

/* A model written by a build with fewer op kinds (before concat and mse:
 * two fewer one-hot features, feature version 2) has the same header and a
 * shorter scaling block. It is refused by its header, saying so, never read
 * into this build's features; also when its version field was left as this
 * build's. */
static uint8_t *older_blob(uint32_t fver, size_t *n)
{
    const uint32_t nf = OPMODEL_NFEAT - 2;
    const size_t head = 64, cut = 2 * 2 * sizeof(double);
    *n = T.r.nblob - cut;
    uint8_t *b = xmalloc(*n);
    memcpy(b, T.r.blob, head);
    for (int i = 0; i < 4; i++) {
        b[8 + i] = (uint8_t)(fver >> (8 * i));
        b[12 + i] = (uint8_t)(nf >> (8 * i));
    }
    const uint8_t *mean = T.r.blob + head, *std = mean + OPMODEL_NFEAT * sizeof(double);
    memcpy(b + head, mean, nf * sizeof(double));
    memcpy(b + head + nf * sizeof(double), std, nf * sizeof(double));
    const uint8_t *rest = std + OPMODEL_NFEAT * sizeof(double);
    memcpy(b + head + 2 * nf * sizeof(double), rest, (size_t)(T.r.blob + T.r.nblob - rest));
    return b;
}

static void test_blob_other_build(void **state)
{
    (void)state;
    trained();
    char want[160];
    snprintf(want, sizeof want, "this build computes version %d, %d features, over %d op kinds",
             OPMODEL_FEAT_VERSION, OPMODEL_NFEAT, OP_KIND_COUNT);
    size_t n;
    uint8_t *b = older_blob(2, &n);
    expect_load_error(b, n, "cost model weights: trained by another build of strata");
    expect_load_error(b, n, "feature version 2");
    expect_load_error(b, n, want);
    expect_load_error(b, n, "retrain it with strata costmodel train");
    expect_load_error(b, 64, "trained by another build");     /* the header is enough */
    free(b);
    b = older_blob(OPMODEL_FEAT_VERSION, &n);
    expect_load_error(b, n, "trained by another build of strata");

    /* stored: `costmodel show` says this build cannot use it, an estimate
     * that names it fails with the reason */
    const char *db = tp("other-build.db");
    Err err = {0};
    Db *h = db_open(db, &err);
    assert_non_null(h);
    DbCostModel cm = { .profile_id = 0, .kind = "mlp", .weights = b, .nweights = n,
                       .heldout_error = 0.1, .device = "Synthetic CPU", .seed = 1 };
    hash_hex(b, n, cm.id);
    if (db_costmodel_put(h, &cm, &err)) fail_msg("%s", err.msg);
    db_close(h);
    Res r = {0};
    STRATA(&r, "costmodel", "show", cm.id, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "usable")));
    assert_non_null(strstr(JSTR(j, "unusable_because"), "trained by another build of strata"));
    const char *model = tp("other-build-mlp.json"), *strat = tp("other-build-dp.json");
    STRATA(&r, "model", "build", "mlp", "-o", model);
    EXPECT_RC(&r, 0);
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "2", "-o", strat);
    EXPECT_RC(&r, 0);
    STRATA(&r, "estimate", "--model", model, "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--strategy", strat, "--db", db, "--costmodel", cm.id);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "trained by another build of strata", "retrain it with strata costmodel train");
    res_free(&r);
    free(b);
}

/* A cost model met with other hardware than it was trained on says so: a
 * CPU's network asked for A100 times extrapolates. */
static void test_costmodel_other_device_warns(void **state)
{
    (void)state;
    trained();
    const char *db = tp("device.db");
    Err err = {0};
    Db *h = db_open(db, &err);
    assert_non_null(h);
    int64_t id = fixture_cpu_profile(h, NULL, 0);
    DbCostModel cm = { .profile_id = id, .kind = "mlp", .weights = T.r.blob, .nweights = T.r.nblob,
                       .heldout_error = 0.1, .device = "test cpu", .seed = 7 };
    hash_hex(T.r.blob, T.r.nblob, cm.id);
    if (db_costmodel_put(h, &cm, &err)) fail_msg("%s", err.msg);
    db_close(h);
    Res r = {0};
    const char *model = tp("device-mlp.json"), *strat = tp("device-dp.json");
    STRATA(&r, "model", "build", "mlp", "-o", model);
    EXPECT_RC(&r, 0);
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "2", "-o", strat);
    EXPECT_RC(&r, 0);
    STRATA(&r, "estimate", "--model", model, "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--strategy", strat, "--db", db, "--costmodel", cm.id, "--no-store");
    EXPECT_RC(&r, 0);
    EXPECT_ERR(&r, "warning: cost model", "was trained on profile", "\"a100-80gb\" devices",
               "other hardware");
    /* the machine it was trained on: no warning */
    STRATA(&r, "estimate", "--model", model, "--cluster", rp("clusters/local-cpu.json"),
           "--strategy", strat, "--db", db, "--costmodel", cm.id, "--no-store");
    EXPECT_RC(&r, 0);
    assert_null(strstr(r.err, "warning"));
    res_free(&r);
}

static void test_prediction_speed(void **state)
{
    (void)state;
    trained();
    Err err = {0};
    OpModel *m = opmodel_load(T.r.blob, T.r.nblob, &err);
    assert_non_null(m);
    OpDevice d = cpu_dev();
    OpShape x = matmul(64, 512, 512, DT_F32, PH_FWD);
    struct timespec t0, t1;
    double sum = 0;
    int N = 20000;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
        x.size['b' - 'a'] = 64 + i % 13;
        x.flops = 2.0 * x.size['b' - 'a'] * 512 * 512;
        sum += opmodel_time(m, &d, &x, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9) / N * 1e6;
    print_message("opmodel_time with the MLP: %.2f us a call\n", us);
    assert_true(sum > 0);
    /* a generous bound: a shared machine or a sanitizer build is slower */
    assert_true(us < 200);
    opmodel_free(m);
}

/* ----------------------------------------------------------------------------
 * The command line */

/* A store with profiles in every state: 1 complete, 2 interrupted, 3 still
 * running, 4 complete without op samples, 5 failed. */
static const char *make_store(void)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s", tp("cm.db"));
    if (exists(path)) return path;
    Err err = {0};
    Db *db = db_open(path, &err);
    if (!db) fail_msg("%s", err.msg);
    Samples S = synthetic(60, 5);
    DbProfile p = { .host = "testhost", .device = "cpu", .backend = "cpu", .ranks = 1, .quick = 1 };
    for (int k = 1; k <= 5; k++) {
        int64_t id = 0;
        if (db_profile_begin(db, &p, &id, &err)) fail_msg("%s", err.msg);
        assert_int_equal(id, k);
        if (db_profile_set_device(db, id, "Synthetic CPU (1 core)", 1e11, 1.5e10, 8e9, NULL, &err))
            fail_msg("%s", err.msg);
        if (k != 4 && db_profile_add_ops(db, id, S.ops, k == 2 ? S.n / 2 : S.n, &err))
            fail_msg("%s", err.msg);
        if (k == 1 || k == 4) {
            if (db_profile_finish(db, id, 1, "complete", NULL, 0, NULL, &err)) fail_msg("%s", err.msg);
        } else if (k == 2) {
            if (db_profile_finish(db, id, 0, "interrupted", NULL, 0, NULL, &err)) fail_msg("%s", err.msg);
        } else if (k == 5) {
            if (db_profile_finish(db, id, 0, "failed: mpirun died", NULL, 0, NULL, &err))
                fail_msg("%s", err.msg);
        }
    }
    db_close(db);
    samples_free(&S);
    return path;
}

static void test_cli_train_list_show(void **state)
{
    (void)state;
    const char *db = make_store();
    Res r = {0};
    STRATA(&r, "costmodel", "train", "--profile", "1", "--db", db, "--seed", "3");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "cost model ", "trained on profile 1", "matmul", "relu", "adam", "held out",
               "analytic", "roofline", "no samples: the analytical model answers", "sum");
    EXPECT_ERR(&r, "train");
    char id[17];
    id_after(r.out, "cost model ", id);

    /* the same seed on the same samples gives the same model, stored once */
    STRATA(&r, "costmodel", "train", "--profile", "1", "--db", db, "--seed", "3", "--json",
           "--quiet");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_string_equal(JSTR(j, "id"), id);
    assert_true(JNUM(j, "profile_id") == 1);
    assert_string_equal(JSTR(j, "kind"), "mlp");
    assert_true(JNUM(j, "heldout_error") > 0 && JNUM(j, "heldout_error") < 0.15);
    const cJSON *m = JOBJ(j, "metrics");
    assert_true(cJSON_GetArraySize(JARR(m, "kinds")) == CM_KIND_COUNT);
    assert_true(r.err[0] == 0);                      /* --quiet: nothing on stderr */

    STRATA(&r, "costmodel", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, id, "mlp", "Synthetic CPU");
    STRATA(&r, "costmodel", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *l = JSON_OUT(&r);
    assert_int_equal(cJSON_GetArraySize(l), 1);
    assert_string_equal(JSTR(cJSON_GetArrayItem(l, 0), "id"), id);

    STRATA(&r, "costmodel", "show", id, "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, id, "matmul", "held out", "no samples: the analytical model answers");
    char prefix[8];
    snprintf(prefix, sizeof prefix, "%.6s", id);
    STRATA(&r, "costmodel", "show", prefix, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *s = JSON_OUT(&r);
    assert_string_equal(JSTR(s, "id"), id);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "usable")));
    assert_true(cJSON_GetArraySize(JARR(JOBJ(s, "metrics"), "kinds")) == CM_KIND_COUNT);

    /* the weights stored are the ones opmodel_load reads */
    Err err = {0};
    Db *h = db_open_existing(db, &err);
    assert_non_null(h);
    DbCostModel cm;
    assert_int_equal(db_costmodel_get(h, id, &cm, &err), 0);
    OpModel *om = opmodel_load(cm.weights, cm.nweights, &err);
    assert_non_null(om);
    assert_true(opmodel_covers(om, OP_MATMUL));
    char hex[17];
    hash_hex(cm.weights, cm.nweights, hex);
    assert_string_equal(hex, id);
    opmodel_free(om);
    db_costmodel_free(&cm);
    db_close(h);
}

static void test_cli_profiles_in_every_state(void **state)
{
    (void)state;
    const char *db = make_store();
    Res r = {0};
    /* interrupted: trains, with a warning */
    STRATA(&r, "costmodel", "train", "--profile", "2", "--db", db, "--quiet");
    EXPECT_RC(&r, 0);
    EXPECT_ERR(&r, "warning", "interrupted");
    /* running, empty, failed: refused, naming the profile */
    STRATA(&r, "costmodel", "train", "--profile", "3", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--profile 3", "still running");
    STRATA(&r, "costmodel", "train", "--profile", "4", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--profile 4", "no op samples");
    STRATA(&r, "costmodel", "train", "--profile", "5", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--profile 5", "not complete", "failed");
    STRATA(&r, "costmodel", "train", "--profile", "99", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--profile 99", "no such profile");
}

static void test_cli_bad_input(void **state)
{
    (void)state;
    const char *db = make_store();
    Res r = {0};
    STRATA(&r, "costmodel", "train", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--profile", "missing");
    STRATA(&r, "costmodel", "train", "--profile", "one", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--profile", "one");
    STRATA(&r, "costmodel", "train", "--profile", "1", "--seed", "abc", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--seed", "abc");
    STRATA(&r, "costmodel", "train", "--profile", "1", "--seed", "-1", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--seed");
    STRATA(&r, "costmodel", "train", "--profile", "1", "--epochs", "3", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--epochs");
    STRATA(&r, "costmodel", "train", "now", "--profile", "1", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unexpected argument", "now");
    STRATA(&r, "costmodel", "train", "--profile", "1", "--db", tp("absent.db"));
    EXPECT_RC(&r, 1);
    EXPECT_ABSENT(tp("absent.db"));
    STRATA(&r, "costmodel", "show", "0123456789abcdef", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "0123456789abcdef", "costmodel list");
    STRATA(&r, "costmodel", "show", "--db", db);
    EXPECT_RC(&r, 2);
    STRATA(&r, "costmodel", "list", "extra", "--db", db);
    EXPECT_RC(&r, 2);
    STRATA(&r, "costmodel");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "train", "list", "show");
    STRATA(&r, "costmodel", "train", "--help");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "--profile", "--seed");
}

static void test_cli_empty_list(void **state)
{
    (void)state;
    Err err = {0};
    const char *path = tp("empty.db");
    Db *db = db_open(path, &err);
    assert_non_null(db);
    db_close(db);
    Res r = {0};
    STRATA(&r, "costmodel", "list", "--db", path);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "no cost models stored");
    STRATA(&r, "costmodel", "list", "--db", path, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_true(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 0);
}

static int teardown_all(void **state)
{
    train_result_free(&T.r);
    samples_free(&T.S);
    T.done = false;
    return group_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kind_names, harness_release_all),
        cmocka_unit_test_teardown(test_device_from_group, harness_release_all),
        cmocka_unit_test_teardown(test_analytic_gemm_curve, harness_release_all),
        cmocka_unit_test_teardown(test_analytic_launch_floor, harness_release_all),
        cmocka_unit_test_teardown(test_analytic_memory_bound, harness_release_all),
        cmocka_unit_test_teardown(test_gpu_cpu_constants, harness_release_all),
        cmocka_unit_test_teardown(test_roofline, harness_release_all),
        cmocka_unit_test_teardown(test_features, harness_release_all),
        cmocka_unit_test_teardown(test_opshape_from_sample, harness_release_all),
        cmocka_unit_test_teardown(test_train_synthetic, harness_release_all),
        cmocka_unit_test_teardown(test_train_deterministic, harness_release_all),
        cmocka_unit_test_teardown(test_split_whole_shapes, harness_release_all),
        cmocka_unit_test_teardown(test_blob_roundtrip, harness_release_all),
        cmocka_unit_test_teardown(test_uncovered_kind, harness_release_all),
        cmocka_unit_test_teardown(test_blob_corrupt, harness_release_all),
        cmocka_unit_test_teardown(test_blob_other_build, harness_release_all),
        cmocka_unit_test_teardown(test_prediction_speed, harness_release_all),
        cmocka_unit_test_teardown(test_cli_train_list_show, harness_release_all),
        cmocka_unit_test_teardown(test_cli_profiles_in_every_state, harness_release_all),
        cmocka_unit_test_teardown(test_cli_bad_input, harness_release_all),
        cmocka_unit_test_teardown(test_costmodel_other_device_warns, harness_release_all),
        cmocka_unit_test_teardown(test_cli_empty_list, harness_release_all),
    };
    return cmocka_run_group_tests(tests, group_setup, teardown_all);
}
