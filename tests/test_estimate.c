/*
 * test_estimate.c — `strata estimate` and `strata validate` from the
 * command line: what they print, store and refuse.
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

#include "db/db.h"
#include "tests/support/cli_harness.h"
#include "tests/support/store_fixtures.h"

static const char *small_gpt(void)
{
    static const char *p;
    if (p) return p;
    p = tp("gpt-small.json");
    Res r = {0};
    STRATA(&r, "model", "build", "gpt", "--layers", "4", "--hidden", "256", "--heads", "4",
           "--seq", "128", "--vocab", "1024", "--batch", "32", "-o", p);
    EXPECT_RC(&r, 0);
    res_free(&r);
    return p;
}

static const char *megatron(const char *name, const char *tp_, const char *pp)
{
    const char *p = tp(name);
    Res r = {0};
    STRATA(&r, "strategy", "build", "megatron", "--model", small_gpt(), "--world", "16", "--tp",
           tp_, "--pp", pp, "--microbatches", "4", "-o", p);
    EXPECT_RC(&r, 0);
    res_free(&r);
    return p;
}

static void test_estimate_prints_and_stores(void **state)
{
    (void)state;
    const char *s = megatron("meg.json", "4", "2"), *db = tp("est.db");
    Res r = {0};
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "step time", "throughput", "tokens/s", "MFU", "bubble", "memory        fits",
               "class", "stored as plan", "analytic");
    char plan[17];
    id_after(r.out, "stored as plan ", plan);

    /* a timeline written over the store would destroy it: refused before
     * anything is done (the store is read below) */
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--db", db, "--svg", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--svg", "is the store");
    /* nor does a command without --db write over a store, or over its input */
    STRATA(&r, "strategy", "build", "dp", "--model", small_gpt(), "-o", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "-o", "SQLite database");
    STRATA(&r, "strategy", "build", "dp", "--model", small_gpt(), "-o", small_gpt());
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "-o", "is also given as --model");
    /* an input that never ends is refused, not read into all the memory */
    STRATA(&r, "model", "show", "/dev/zero");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "/dev/zero", "pipe or device");

    /* the same as JSON; the prediction is stored with the plan */
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    double t = JNUM(j, "step_time_s");
    assert_true(t > 0 && t < 10);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "feasible")));
    assert_true(JNUM(j, "mfu") > 0 && JNUM(j, "mfu") < 1);
    assert_true(JNUM(j, "bubble_fraction") > 0);
    assert_true(JNUM(j, "tokens_per_s") > 0);
    assert_int_equal(cJSON_GetArraySize(JARR(j, "classes")), 2);
    assert_string_equal(JSTR(j, "plan_id"), plan);
    Err err = {0};
    Db *d = db_open_existing(db, &err);
    assert_non_null(d);
    DbEstimate *rows = NULL;
    int n = 0;
    assert_int_equal(db_estimate_list(d, plan, &rows, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_true(fabs(rows[0].step_time_s - t) <= 1e-14 * t);    /* cJSON prints 15 digits */
    assert_true(rows[0].feasible == 1 && rows[0].peak_mem_bytes > 0);
    db_estimate_list_free(rows, n);
    db_close(d);

    /* a timeline a browser shows */
    const char *svg = tp("t.svg");
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--no-store", "--svg", svg);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "timeline written to");
    EXPECT_NOT_OUT(&r, "stored as plan");
    char *text = track(slurp(svg, NULL));
    assert_non_null(text);
    assert_non_null(strstr(text, "<svg"));
    assert_non_null(strstr(text, "time (ms)"));
    assert_non_null(strstr(text, "class 1, stage 1"));
    res_free(&r);
}

static void test_estimate_infeasible_is_an_answer(void **state)
{
    (void)state;
    const char *c = tp("small-mem.json");
    write_file(c, "{\"name\":\"tiny-mem\",\"devices\":[{\"name\":\"d\",\"kind\":\"gpu\",\"count\":16,"
                  "\"peak_tflops\":{\"f32\":10},\"memory_gib\":0.001,\"memory_bw_gbps\":1000}],"
                  "\"levels\":[{\"name\":\"gpu\",\"count\":16,\"link\":\"nvlink\",\"bw_gbps\":100,"
                  "\"latency_us\":1}]}");
    Res r = {0};
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", c, "--strategy",
           megatron("m2.json", "4", "2"), "--no-store", "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "feasible")));
    assert_non_null(strstr(JSTR(j, "why_infeasible"), "needs"));
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", c, "--strategy",
           megatron("m2.json", "4", "2"), "--no-store");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "DOES NOT FIT", "GiB");
    res_free(&r);
}

static void test_estimate_bad_input(void **state)
{
    (void)state;
    const char *s = megatron("m3.json", "4", "2"), *db = tp("bad.db");
    Res r = {0};
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"));
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--strategy");
    STRATA(&r, "estimate", "--model", small_gpt(), "--strategy", s);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--cluster");
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--bogus");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--bogus");

    /* a mesh larger than the cluster */
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--strategy", s, "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "16");

    /* a cost model that is not there */
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--db", db);
    EXPECT_RC(&r, 0);
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--db", db, "--costmodel", "abcdef0123456789");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "cost model", "abcdef0123456789");
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--db", tp("none.db"), "--costmodel", "abcd");
    EXPECT_RC(&r, 1);

    /* a cluster without link figures */
    const char *c = tp("nolinks.json");
    write_file(c, "{\"name\":\"x\",\"devices\":[{\"name\":\"d\",\"kind\":\"gpu\",\"count\":16,"
                  "\"peak_tflops\":{\"f32\":10},\"memory_gib\":80,\"memory_bw_gbps\":1000}],"
                  "\"levels\":[{\"name\":\"gpu\",\"count\":16,\"link\":\"nvlink\"}]}");
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", c, "--strategy", s, "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "levels[0]", "bw_gbps");

    /* an unwritable timeline */
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--no-store", "--svg", "/nonexistent/dir/t.svg");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "/nonexistent/dir/t.svg", "is not there");
    STRATA(&r, "estimate", "--model", small_gpt(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "2", "--strategy", s, "--no-store", "--svg", "/tmp");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--svg /tmp", "is a directory");
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * validate */

/* A store with one complete profile of a 2-device CPU machine (its cluster
 * is the shipped local-cpu.json), as `strata profile` leaves it. */
static const char *profiled_db(const char *name)
{
    const char *db = tp(name);
    Err err = {0};
    Db *d = db_open(db, &err);
    assert_non_null(d);
    DbProfileFit fit = { .collective = "all_reduce", .group_size = 2, .level = "core",
                         .alpha_s = 5e-6, .beta_s = 2.5e-10, .n = 10 };
    fixture_cpu_profile(d, &fit, 1);
    db_close(d);
    return db;
}

static void test_validate_small_suite(void **state)
{
    (void)state;
    const char *db = profiled_db("val.db"), *suite = tp("suite.json");
    write_file(suite,
               "{\"plans\":["
               "{\"name\":\"mlp-1\",\"model\":{\"kind\":\"mlp\",\"layers\":2,\"hidden\":256,\"batch\":32},"
               " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
               "{\"name\":\"mlp-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":2,\"hidden\":256,\"batch\":32},"
               " \"strategy\":{\"build\":\"dp\",\"world\":2}},"
               "{\"name\":\"too-big\",\"model\":{\"kind\":\"mlp\",\"layers\":2,\"hidden\":256,\"batch\":32},"
               " \"strategy\":{\"build\":\"dp\",\"world\":4}},"
               "{\"name\":\"broken\",\"model\":{\"kind\":\"nosuchmodel\"},"
               " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
               "{\"name\":\"bad-world\",\"model\":{\"kind\":\"mlp\"},"
               " \"strategy\":{\"build\":\"dp\",\"world\":-1}}]}");
    Res r = {0};
    STRATA(&r, "validate", "--suite", suite, "--db", db, "--steps", "3", "--json");
    EXPECT_RC(&r, 0);
    EXPECT_ERR(&r, "mlp-1", "mlp-dp2", "predicted", "measured", "broken", "nosuchmodel",
               "plans[4].strategy.world: -1 is not a device count");
    cJSON *j = JSON_OUT(&r);
    assert_int_equal((int)JNUM(j, "plans"), 2);
    assert_null(cJSON_GetObjectItem(j, "warnings"));     /* the profile is this build's */
    assert_null(strstr(r.err, "warning"));
    assert_true(JNUM(j, "mape_step_time") >= 0);
    assert_true(JNUM(j, "kendall_tau") >= -1 && JNUM(j, "kendall_tau") <= 1);
    const cJSON *rows = JARR(j, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 4);        /* the 4-rank plan is not for -np 2 */
    for (int k = 0; k < 2; k++) {
        const cJSON *x = cJSON_GetArrayItem(rows, k);
        assert_true(JNUM(x, "measured_s") > 0 && JNUM(x, "predicted_s") > 0);
        assert_true(JNUM(x, "measured_mem_bytes") > 0);
        /* memory: the lowering's walk against the executor's high-water mark */
        double pm = JNUM(x, "predicted_mem_bytes"), mm = JNUM(x, "measured_mem_bytes");
        assert_true(pm > 0.5 * mm && pm < 1.5 * mm);
    }
    assert_non_null(cJSON_GetObjectItem(cJSON_GetArrayItem(rows, 2), "error"));
    assert_non_null(cJSON_GetObjectItem(cJSON_GetArrayItem(rows, 3), "error"));
    double vid = JNUM(j, "validation_id");

    /* a run that outlives --timeout is stopped, and the plan reported as such */
    Res t = {0};
    const char *slow = tp("slow-suite.json");
    write_file(slow, "{\"plans\":[{\"name\":\"slow\",\"model\":{\"kind\":\"mlp\",\"layers\":4,"
                     "\"hidden\":512,\"batch\":64},\"strategy\":{\"build\":\"dp\",\"world\":2}}]}");
    STRATA(&t, "validate", "--suite", slow, "--db", db, "--steps", "100000", "--timeout", "2");
    EXPECT_ERR(&t, "slow", "did not finish within 2 s");
    res_free(&t);

    /* --repeats: rounds over the suite, the measured step their median */
    const char *one = tp("one-suite.json");
    write_file(one, "{\"plans\":[{\"name\":\"mlp-1\",\"model\":{\"kind\":\"mlp\",\"layers\":2,"
                    "\"hidden\":256,\"batch\":32},\"strategy\":{\"build\":\"dp\",\"world\":1}},"
                    "{\"name\":\"mlp-dp2\",\"model\":{\"kind\":\"mlp\",\"layers\":2,\"hidden\":256,"
                    "\"batch\":32},\"strategy\":{\"build\":\"dp\",\"world\":2}}]}");
    STRATA(&t, "validate", "--suite", one, "--db", db, "--steps", "3", "--repeats", "3", "--json");
    EXPECT_RC(&t, 0);
    EXPECT_ERR(&t, "round 1/3", "round 3/3");
    /* round by round: the second plan's first run comes before the first's second */
    const char *a1 = strstr(t.err, "round 1/3 [ 2/2]"), *b2 = strstr(t.err, "round 2/3 [ 1/2]");
    assert_true(a1 && b2 && a1 < b2);
    cJSON *tj = JSON_OUT(&t);
    assert_int_equal((int)JNUM(tj, "repeats"), 3);
    const cJSON *tr = JARR(tj, "rows");
    for (int k = 0; k < 2; k++) assert_int_equal((int)JNUM(cJSON_GetArrayItem(tr, k), "rounds"), 3);
    res_free(&t);

    Err err = {0};
    Db *d = db_open_existing(db, &err);
    DbValidation v;
    DbValidationPlan *vr = NULL;
    int n = 0;
    assert_int_equal(db_validation_get(d, (int64_t)vid, &v, &vr, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(vr[0].name, "mlp-1");
    assert_true(vr[1].measured_s > 0 && vr[1].run_id[0]);
    db_validation_plans_free(vr, n);
    db_validation_free(&v);
    db_close(d);
    res_free(&r);
}

static void test_validate_bad_input(void **state)
{
    (void)state;
    Res r = {0};
    const char *empty = tp("empty.db");
    Err err = {0};
    Db *d = db_open(empty, &err);
    db_close(d);
    STRATA(&r, "validate", "--db", empty);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no complete CPU profile", "strata profile");
    STRATA(&r, "validate", "--db", tp("missing.db"));
    EXPECT_RC(&r, 1);
    STRATA(&r, "validate", "--steps", "1");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--steps");
    STRATA(&r, "validate", "--np", "zero");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--np");
    STRATA(&r, "validate", "--repeats", "0");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--repeats");
    STRATA(&r, "validate", "--timeout", "0");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--timeout");
    const char *db = profiled_db("val2.db");
    STRATA(&r, "validate", "--db", db, "--suite", tp("no-such-suite.json"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--suite");
    const char *bad = tp("bad-suite.json");
    write_file(bad, "{\"plans\": 3}");
    STRATA(&r, "validate", "--db", db, "--suite", bad);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "plans");
    write_file(bad, "{\"plans\":[{\"name\":\"x\",\"model\":{\"kind\":\"mlp\"},"
                    "\"strategy\":{\"build\":\"dp\",\"wrold\":1}}]}");
    STRATA(&r, "validate", "--db", db, "--suite", bad);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "plans[0].strategy.wrold", "no plan could be");
    STRATA(&r, "validate", "--db", db, "--costmodel", "0123456789abcdef");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "0123456789abcdef");
    res_free(&r);
}

/* Synthetic matmul and relu samples on the profile (times from a known
 * efficiency), so a cost model can be trained on it. */
static void add_samples(const char *db, int64_t id)
{
    Err err = {0};
    Db *d = db_open(db, &err);
    assert_non_null(d);
    enum { N = 120 };
    DbProfileOp ops[N];
    char shapes[N][160];
    for (int i = 0; i < N; i++) {
        int m = 32 << (i % 5), k = 64 << ((i / 5) % 4), n = 16 << ((i / 20) % 6);
        bool mm = i % 2 == 0;
        double flops = mm ? 2.0 * m * k * n : (double)m * k, bytes = mm ? 4.0 * (m * k + k * n + m * n)
                                                                         : 8.0 * m * k;
        if (mm)
            snprintf(shapes[i], sizeof shapes[i], "{\"spec\":\"bi,ih->bh\",\"sizes\":{\"b\":%d,"
                     "\"i\":%d,\"h\":%d}}", m, k, n);
        else
            snprintf(shapes[i], sizeof shapes[i], "{\"spec\":\"bh->bh\",\"sizes\":{\"b\":%d,"
                     "\"h\":%d}}", m, k);
        double t = mm ? 2e-6 + flops / (1.45e11 * (0.3 + 0.6 * m / (m + 128.0)))
                      : 1e-6 + bytes / 5e9;
        ops[i] = (DbProfileOp){ .kind = mm ? "matmul" : "relu", .phase = "fwd",
                                .shape_json = shapes[i], .dtype = "f32", .source = "random",
                                .flops = flops, .bytes = bytes, .median_s = t, .p10_s = t,
                                .p90_s = t, .reps = 5 };
    }
    (void)id;
    /* samples go to a running profile: open a second one like the first */
    DbProfile p = { .host = "test", .device = "test cpu", .backend = "cpu", .ranks = 2,
                    .notes = "1 BLAS thread per device" };
    int64_t pid = 0;
    assert_int_equal(db_profile_begin(d, &p, &pid, &err), 0);
    assert_int_equal(db_profile_set_device(d, pid, "test cpu", 1.45e11, 1e10, 12e9,
                                           "1 BLAS thread per device", &err), 0);
    assert_int_equal(db_profile_add_ops(d, pid, ops, N, &err), 0);
    char *cj = track(slurp(rp("clusters/local-cpu.json"), NULL));
    assert_int_equal(db_profile_finish(d, pid, 1, "complete", NULL, 0, cj, &err), 0);
    db_close(d);
}

/* The closed loop: runs measured by validate calibrate a trained model. */
static void test_costmodel_train_runs(void **state)
{
    (void)state;
    const char *db = tp("loop.db"), *suite = tp("suite3.json");
    Err err = {0};
    Db *d = db_open(db, &err);
    db_close(d);
    add_samples(db, 0);
    Res r = {0};
    /* nothing measured yet */
    STRATA(&r, "costmodel", "train", "--profile", "1", "--runs", "--db", db, "--quiet");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--runs", "0 measured plans", "strata validate");
    write_file(suite,
               "{\"plans\":["
               "{\"name\":\"a\",\"model\":{\"kind\":\"mlp\",\"layers\":2,\"hidden\":256,\"batch\":32},"
               " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
               "{\"name\":\"b\",\"model\":{\"kind\":\"mlp\",\"layers\":3,\"hidden\":512,\"batch\":64},"
               " \"strategy\":{\"build\":\"dp\",\"world\":1}},"
               "{\"name\":\"c\",\"model\":{\"kind\":\"mlp\",\"layers\":2,\"hidden\":256,\"batch\":32},"
               " \"strategy\":{\"build\":\"dp\",\"world\":2}}]}");
    STRATA(&r, "validate", "--suite", suite, "--db", db, "--steps", "3");
    EXPECT_RC(&r, 0);
    STRATA(&r, "costmodel", "train", "--profile", "1", "--runs", "--db", db, "--quiet");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "closed loop: 3 plans", "before", "after", "leave-one-out", "per instruction");
    char id[17];
    id_after(r.out, "strata costmodel show ", id);
    STRATA(&r, "costmodel", "show", id, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    const cJSON *m = cJSON_GetObjectItem(j, "metrics");
    const cJSON *cl = m ? cJSON_GetObjectItem(m, "closed_loop") : NULL;
    assert_non_null(cl);
    assert_int_equal((int)JNUM(cl, "runs"), 3);
    assert_true(JNUM(cl, "compute_scale") > 0 && JNUM(cl, "comm_scale") > 0);
    assert_true(JNUM(cl, "mape_after") >= 0);
    /* the calibrated model predicts, and says that its profile (stored
     * without a build, as profiles made before builds were recorded) may
     * not hold for this build */
    STRATA(&r, "validate", "--suite", suite, "--db", db, "--steps", "3", "--costmodel", id, "--json");
    EXPECT_RC(&r, 0);
    EXPECT_ERR(&r, "strata validate: warning: profile 1 does not say which build of the kernels "
                   "measured it");
    j = JSON_OUT(&r);
    const cJSON *w = cJSON_GetObjectItem(j, "warnings");
    assert_true(cJSON_IsArray(w) && cJSON_GetArraySize(w) == 1);
    res_free(&r);
}

static int setup(void **state)
{
    (void)state;
    static const HarnessConfig cfg = { .name = "test_estimate", .deadline_s = 600,
                                       .lsan_supp = "tests/lsan.supp" };
    return harness_setup(&cfg);
}

static int teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_estimate_prints_and_stores, harness_release_all),
        cmocka_unit_test_teardown(test_estimate_infeasible_is_an_answer, harness_release_all),
        cmocka_unit_test_teardown(test_estimate_bad_input, harness_release_all),
        cmocka_unit_test_teardown(test_validate_small_suite, harness_release_all),
        cmocka_unit_test_teardown(test_validate_bad_input, harness_release_all),
        cmocka_unit_test_teardown(test_costmodel_train_runs, harness_release_all),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
