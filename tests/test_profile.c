/*
 * test_profile.c — `strata profile` end to end: a small real profile on this
 * machine (device, ops, links under mpirun), what it stores, the alpha-beta
 * fits recomputed from the stored samples, the cluster JSON it writes, an
 * interrupted profile, and every way of getting the input wrong. Also the op
 * grid through the library: the cases it plans and one measurement.
 *
 * Runs build/strata through tests/support/cli_harness.h (fork + execv, a
 * temporary directory, a hard deadline per command).
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
#include <cjson/cJSON.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ir/cluster.h"
#include "profiler/profile.h"
#include "profiler/stats.h"
#include "tests/support/cli_harness.h"

/* a small profile takes ~10 s here; sanitizer builds are several times slower */
#define DEADLINE_S 300

static int group_setup(void **state)
{
    (void)state;
    static const HarnessConfig cfg = { "test_profile", DEADLINE_S, "tests/lsan.supp" };
    return harness_setup(&cfg);
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

static bool in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(s, *list)) return true;
    return false;
}

/* ----------------------------------------------------------------------------
 * Bad input */

static void test_bad_options(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("bad.db");
    STRATA(&r, "profile", "--backend", "tpu", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--backend", "tpu", "cpu or cuda");
    STRATA(&r, "profile", "--max-bytes", "3", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--max-bytes", "4 bytes");
    STRATA(&r, "profile", "--max-bytes", "lots", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--max-bytes", "lots", "not a size");
    STRATA(&r, "profile", "--kinds", "matmul,warp", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--kinds", "warp", "not an op kind");
    STRATA(&r, "profile", "--ranks", "0", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--ranks");
    STRATA(&r, "profile", "--seconds", "-1", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--seconds");
    STRATA(&r, "profile", "now", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unexpected argument", "now");
    /* none of these started a profile, or even a database */
    EXPECT_ABSENT(db);
    res_free(&r);
}

static void test_cuda_without_gpu(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("cuda.db");
    STRATA(&r, "profile", "--backend", "cuda", "--db", db);
    EXPECT_RC(&r, 1);
    /* whichever of the three holds here, it is said plainly */
    bool said = strstr(r.err, "no CUDA device found") || strstr(r.err, "built without CUDA") ||
                strstr(r.err, "CUDA backend is not built");
    if (!said) dump(&r);
    assert_true(said);
    EXPECT_ABSENT(db);
    res_free(&r);
}

static void test_unwritable_db(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "profile", "--quick", "--db", harness_dir());
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, harness_dir(), "is a directory");
    /* a store that cannot be made there: the option's fault, before any measuring */
    STRATA(&r, "profile", "--quick", "--db", "/proc/nonexistent/p.db");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--db", "/proc/nonexistent/p.db", "is not there");
    res_free(&r);
}

static void test_show_errors(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("empty.db");
    STRATA(&r, "profile", "list", "--db", db);        /* read-only: never creates */
    EXPECT_RC(&r, 1);
    EXPECT_ABSENT(db);
    STRATA(&r, "profile", "--quick", "--kinds", "relu", "--seconds", "0.2", "--no-links",
           "--quiet", "--db", db);
    EXPECT_RC(&r, 0);
    STRATA(&r, "profile", "show", "abc", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "abc", "not a profile id");
    STRATA(&r, "profile", "show", "99", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "99");
    STRATA(&r, "profile", "show", "--db", db);
    EXPECT_RC(&r, 2);
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * A real profile */

static const cJSON *item(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v) fail_msg("missing \"%s\"", k);
    return v;
}

static void test_small_profile(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("small.db"), *cl = tp("small-cluster.json");
    STRATA(&r, "profile", "--quick", "--kinds", "matmul,layernorm,adam", "--seconds", "3",
           "--max-bytes", "64K", "--ranks", "2", "--db", db, "-o", cl);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "profile 1: complete", "cluster written to");
    EXPECT_ERR(&r, "device:", "ops:", "links:");

    STRATA(&r, "profile", "show", "1", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_string_equal(JSTR(j, "status"), "complete");
    assert_true(cJSON_IsTrue(item(j, "complete")));
    assert_int_equal((int)JNUM(j, "ranks"), 2);
    const cJSON *dev = JOBJ(j, "device");
    double peak = JNUM(dev, "peak_flops"), bw = JNUM(dev, "mem_bw");
    assert_true(peak > 1e8 && peak < 1e14);
    assert_true(bw > 1e8 && bw < 1e13);
    assert_true(JNUM(dev, "mem_bytes") > 1e8);
    /* the device measured at the start and after each of the three rounds,
     * the best kept: the rates stored are the highest the notes list */
    const char *notes = JSTR(dev, "notes"), *at = strstr(notes, "the best of 4 measurements");
    assert_non_null(at);
    const char *gf = strstr(at, "GFLOP/s"), *gb = strstr(at, "GB/s");
    assert_non_null(gf);
    assert_non_null(gb);
    double best_gf = 0, best_gb = 0;
    char *end = (char *)gf + strlen("GFLOP/s");
    for (int k = 0; k < 4; k++) {
        double v = strtod(end + (k ? 1 : 0), &end);
        assert_true(v > 0);
        best_gf = fmax(best_gf, v);
    }
    end = (char *)gb + strlen("GB/s");
    for (int k = 0; k < 4; k++) {
        double v = strtod(end + (k ? 1 : 0), &end);
        assert_true(v > 0);
        best_gb = fmax(best_gb, v);
    }
    assert_float_equal(peak / 1e9, best_gf, 0.051);
    assert_float_equal(bw / 1e9, best_gb, 0.051);

    /* ops: only the kinds asked for, every phase they have, sane statistics */
    static const char *const kinds[] = { "matmul", "layernorm", "adam", NULL };
    const cJSON *ops = JARR(j, "ops"), *o;
    int n = 0, zoo = 0, random = 0;
    bool fwd = false, bwd_d = false, bwd_w = false, upd = false;
    cJSON_ArrayForEach(o, ops) {
        n++;
        const char *kind = JSTR(o, "kind"), *ph = JSTR(o, "phase");
        assert_true(in_list(kind, kinds));
        if (!strcmp(kind, "matmul")) {
            fwd |= !strcmp(ph, "fwd");
            bwd_d |= !strcmp(ph, "bwd_data");
            bwd_w |= !strcmp(ph, "bwd_weight");
            assert_non_null(cJSON_GetObjectItem(JOBJ(o, "shape"), "sizes"));
            assert_non_null(cJSON_GetObjectItem(JOBJ(o, "shape"), "spec"));
        }
        if (!strcmp(kind, "adam")) {
            upd |= !strcmp(ph, "update");
            assert_true(JNUM(JOBJ(o, "shape"), "n") >= 1);
        }
        double med = JNUM(o, "median_s"), p10 = JNUM(o, "p10_s"), p90 = JNUM(o, "p90_s");
        assert_true(med > 0 && p10 > 0);
        assert_true(p10 <= med && med <= p90);
        assert_true(JNUM(o, "reps") >= 3);
        assert_true(JNUM(o, "flops") > 0 && JNUM(o, "bytes") > 0);
        /* nothing beats the device's own peak by much (timer noise aside) */
        assert_true(JNUM(o, "flops") / med < 3 * peak);
        zoo += !strcmp(JSTR(o, "source"), "zoo");
        random += !strcmp(JSTR(o, "source"), "random");
    }
    assert_true(n >= 10);
    assert_true(fwd && bwd_d && bwd_w && upd);
    assert_true(zoo > 0 && random > 0);

    /* links: every collective, sizes 4 B .. 64 KiB, bandwidths as nccl-tests defines them */
    const cJSON *links = JARR(j, "links"), *l;
    int per[COLLECTIVE_COUNT] = {0};
    cJSON_ArrayForEach(l, links) {
        const char *c = JSTR(l, "collective");
        int k = 0;
        while (k < COLLECTIVE_COUNT && strcmp(COLLECTIVE_NAMES[k], c)) k++;
        assert_true(k < COLLECTIVE_COUNT);
        per[k]++;
        assert_int_equal((int)JNUM(l, "group_size"), 2);
        assert_string_equal(JSTR(l, "level"), "core");
        double bytes = JNUM(l, "bytes"), t = JNUM(l, "time_s");
        assert_true(bytes >= 4 && bytes <= 65536);
        assert_true(t > 0);
        assert_float_equal(JNUM(l, "algbw"), bytes / t, 1e-6 * bytes / t);
        assert_float_equal(JNUM(l, "busbw"), bytes / t * coll_bus_factor(c, 2), 1e-6 * bytes / t);
        assert_true(JNUM(l, "iters") >= 3);
    }
    for (int k = 0; k < COLLECTIVE_COUNT; k++) assert_true(per[k] >= 10);   /* 4 B .. 64 KiB */

    /* the stored fits are the fits of the stored samples */
    const cJSON *fits = JARR(j, "fits"), *f;
    assert_int_equal(cJSON_GetArraySize(fits), COLLECTIVE_COUNT);
    cJSON_ArrayForEach(f, fits) {
        double x[64], t[64];
        int m = 0;
        cJSON_ArrayForEach(l, links) {
            if (strcmp(JSTR(l, "collective"), JSTR(f, "collective"))) continue;
            assert_true(m < 64);
            x[m] = JNUM(l, "bytes");
            t[m++] = JNUM(l, "time_s");
        }
        AlphaBeta ab;
        assert_int_equal(ab_fit(x, t, m, &ab), 0);
        assert_int_equal((int)JNUM(f, "n"), m);
        assert_float_equal(JNUM(f, "alpha_s"), ab.alpha, 1e-9 * (ab.alpha + 1e-12) + 1e-15);
        assert_float_equal(JNUM(f, "beta_s"), ab.beta, 1e-9 * ab.beta + 1e-21);
        assert_float_equal(JNUM(f, "rms_rel_err"), ab.rms_rel_err, 1e-9);
        /* the fit's constraints; its values are measurements: on a loaded
         * machine the times of sizes up to 64 KiB need not grow with the
         * size, and beta is then held at 0 */
        assert_true(JNUM(f, "beta_s") >= 0 && JNUM(f, "alpha_s") >= 0 &&
                    JNUM(f, "alpha_s") + JNUM(f, "beta_s") > 0);
        /* a single alpha-beta over 4 B .. 64 KiB is rough, not absurd */
        assert_true(JNUM(f, "rms_rel_err") < 1.0);
    }

    /* the cluster file: loadable where clusters are, numbers from the profile */
    Err err = {0};
    Cluster *c = cluster_load(cl, 0, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(c->ndevices, 2);
    assert_int_equal(c->nlevels, 1);
    assert_float_equal(c->groups[0].peak_flops[DT_F32], peak, 1e-3 * peak);
    assert_float_equal(c->groups[0].mem_bw, bw, 1e-3 * bw);
    const cJSON *sr = NULL;
    cJSON_ArrayForEach(f, fits) if (!strcmp(JSTR(f, "collective"), "send_recv")) sr = f;
    assert_non_null(sr);
    double lbw = 1 / JNUM(sr, "beta_s");
    assert_float_equal(c->levels[0].bw, lbw, 1e-3 * lbw);
    cluster_free(c);
    const cJSON *inside = JOBJ(j, "cluster");
    const char *name = JSTR(inside, "name");
    assert_true(strlen(name) > 10 && !strcmp(name + strlen(name) - 10, "-profile-1"));
    STRATA(&r, "cluster", "show", cl);
    EXPECT_RC(&r, 0);

    /* the text view names what the issue of a profile is: rates and fits */
    STRATA(&r, "profile", "show", "1", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "matmul", "bwd_weight", "% of the", "alpha us", "busbw GB/s", "send_recv");
    STRATA(&r, "profile", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "complete");
    res_free(&r);
}

static void test_one_device(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("one.db"), *cl = tp("one.json");
    STRATA(&r, "profile", "--quick", "--kinds", "relu,sgd", "--seconds", "1", "--ranks", "1",
           "--db", db, "-o", cl, "--quiet");
    EXPECT_RC(&r, 0);
    STRATA(&r, "profile", "show", "1", "--db", db, "--json");
    cJSON *j = JSON_OUT(&r);
    assert_int_equal(cJSON_GetArraySize(JARR(j, "links")), 0);
    assert_int_equal(cJSON_GetArraySize(JARR(j, "fits")), 0);
    assert_true(cJSON_GetArraySize(JARR(j, "ops")) > 0);
    Err err = {0};
    Cluster *c = cluster_load(cl, 0, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(c->ndevices, 1);
    cluster_free(c);
    char *text = track(slurp(cl, NULL));
    assert_non_null(strstr(text, "no link measured"));
    res_free(&r);
}

/* Ctrl-C: what was measured stays, the profile is marked interrupted, no
 * cluster is written, and the database takes the next profile as usual. */
static void test_interrupted(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("int.db"), *cl = tp("int.json");
    RunOpts o = { .prog = "timeout", .may_be_killed = true };   /* 130: stopped by SIGINT */
    RUNO(&r, &o, "-s", "INT", "--preserve-status", "8", harness_bin(), "profile", "--quick",
         "--seconds", "500", "--db", db, "-o", cl);
    EXPECT_RC(&r, 130);
    EXPECT_OUT(&r, "interrupted", "no cluster written");
    EXPECT_ABSENT(cl);
    STRATA(&r, "profile", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    const cJSON *p = cJSON_GetArrayItem(j, 0);
    assert_non_null(p);
    assert_string_equal(JSTR(p, "status"), "interrupted");
    assert_true(cJSON_IsFalse(item(p, "complete")));
    assert_non_null(cJSON_GetObjectItem(p, "finished"));
    STRATA(&r, "profile", "--quick", "--kinds", "gelu", "--seconds", "0.2", "--no-links",
           "--quiet", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "profile 2: complete");
    res_free(&r);
}

/* The op samples stored in db so far (0 while it has none, or no table). */
static int stored_ops(const char *db)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    int n = 0;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(h, "SELECT count(*) FROM profile_ops", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return n;
}

/* Killed outright (SIGKILL: nothing closes the row) in its op grid, once
 * its first round is stored: what the rounds timed so far is kept, and the
 * next command that reads profiles finds the process gone and marks the
 * profile interrupted, which a cost model can then be trained on. */
static void test_killed(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("killed.db");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *o = freopen("/dev/null", "w", stdout);
        (void)o;
        execl(harness_bin(), "strata", "profile", "--quick", "--kinds", "relu,bias", "--seconds",
              "24", "--no-links", "--quiet", "--db", db, (char *)NULL);
        _exit(127);
    }
    int stored = 0, ws = 0;
    for (int t = 0; t < 1200 && stored < 10; t++) {
        usleep(50 * 1000);
        stored = stored_ops(db);
        if (waitpid(pid, &ws, WNOHANG) == pid) fail_msg("the profile ended first (status %d)", ws);
    }
    if (stored < 10) fail_msg("no round stored after 60 s (%d samples)", stored);
    kill(pid, SIGKILL);
    /* reaped or not, its process has ended: a zombie counts as gone */
    for (int t = 0; t < 100; t++) {
        STRATA(&r, "profile", "list", "--db", db, "--json");
        EXPECT_RC(&r, 0);
        if (strstr(r.err, "marked interrupted")) break;
        usleep(100 * 1000);
    }
    EXPECT_ERR(&r, "1 profile whose process ended before closing it marked interrupted");
    cJSON *j = JSON_OUT(&r);
    const cJSON *p = cJSON_GetArrayItem(j, 0);
    assert_non_null(p);
    assert_string_equal(JSTR(p, "status"), "interrupted");
    assert_true(cJSON_IsFalse(item(p, "complete")));
    STRATA(&r, "profile", "show", "1", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    const cJSON *ops = JARR(j, "ops"), *op;
    int n = 0;
    cJSON_ArrayForEach(op, ops) {
        n++;
        double med = JNUM(op, "median_s");
        assert_true(med > 0 && JNUM(op, "p10_s") <= med && med <= JNUM(op, "p90_s"));
        assert_true(JNUM(op, "reps") >= 1);
    }
    if (n < stored) fail_msg("%d op samples kept from a profile killed with %d stored", n, stored);
    /* again: nothing left to mark */
    STRATA(&r, "profile", "list", "--db", db);
    EXPECT_RC(&r, 0);
    assert_null(strstr(r.err, "marked interrupted"));
    res_free(&r);
    waitpid(pid, NULL, 0);
}

/* ----------------------------------------------------------------------------
 * The op grid through the library */

static void test_grid(void **state)
{
    (void)state;
    /* a made-up device: the grid only uses its peaks for estimates */
    ProfDevice d = { .peak_flops = 1e11, .mem_bw = 1e10, .mem_bytes = 1e10, .threads = 1 };
    Err err = {0};
    OpGridOpts o = { .quick = true, .budget_s = 1e9, .kinds = "conv2d,pool2d", .seed = 1 };
    OpGrid *g = opgrid_new(&o, &d, &err);
    if (!g) fail_msg("%s", err.msg);
    int n = opgrid_count(g), conv = 0, pool = 0;
    assert_true(n > 10);
    for (int i = 0; i < n; i++) {
        const char *lab = opgrid_label(g, i);
        conv += !strncmp(lab, "conv2d ", 7);
        pool += !strncmp(lab, "pool2d ", 7);
        assert_true(opgrid_estimate(g, i) > 0);
    }
    assert_int_equal(conv + pool, n);
    assert_true(conv > 0 && pool > 0);
    /* the cheapest case, timed: a real measurement with its shape */
    int best = 0;
    for (int i = 1; i < n; i++)
        if (opgrid_estimate(g, i) < opgrid_estimate(g, best)) best = i;
    DbProfileOp s;
    assert_int_equal(opgrid_sample(g, best, &s), 1);         /* nothing timed yet */
    assert_int_equal(opgrid_measure(g, best, 1, &err), -1);  /* in order */
    for (int r = 0; r < opgrid_rounds(g); r++) assert_int_equal(opgrid_measure(g, best, r, &err), 0);
    /* each round once */
    assert_int_equal(opgrid_measure(g, best, 0, &err), -1);
    assert_non_null(strstr(err.msg, "each once"));
    assert_int_equal(opgrid_sample(g, best, &s), 0);
    assert_true(s.median_s > 0 && s.reps >= 3);
    assert_true(s.p10_s <= s.median_s && s.median_s <= s.p90_s);
    cJSON *sh = cJSON_Parse(s.shape_json);
    assert_non_null(sh);
    assert_non_null(cJSON_GetObjectItem(sh, "in_hw"));
    assert_non_null(cJSON_GetObjectItem(sh, "from"));
    cJSON_Delete(sh);
    opgrid_free(g);

    /* concat and mse: from the fire CNNs and the mse MLPs, forward and the
     * data gradient (no params of their own). Random shapes around a concat
     * keep its output the sum of its inputs: the cheapest cases of both
     * sources measure (the kernel refuses a concat that does not add up). */
    o.kinds = "concat,mse";
    g = opgrid_new(&o, &d, &err);
    if (!g) fail_msg("%s", err.msg);
    n = opgrid_count(g);
    int seen[4] = {0}, measured[2] = {0};
    static const char *const labs[4] = {"concat fwd", "concat bwd_data", "mse fwd", "mse bwd_data"};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) seen[k] += !strcmp(opgrid_label(g, i), labs[k]);
    for (int k = 0; k < 4; k++) assert_true(seen[k] > 0);
    bool *done = calloc((size_t)n, sizeof *done);
    assert_non_null(done);
    for (int tries = 0; tries < n && !(measured[0] && measured[1]); tries++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!done[i] && strncmp(opgrid_label(g, i), "concat ", 7) == 0 &&
                (best < 0 || opgrid_estimate(g, i) < opgrid_estimate(g, best)))
                best = i;
        assert_true(best >= 0);
        done[best] = true;
        DbProfileOp m;
        if (opgrid_measure(g, best, 0, &err)) fail_msg("%s", err.msg);
        assert_int_equal(opgrid_sample(g, best, &m), 0);     /* one round of three */
        measured[strcmp(m.source, "random") == 0]++;
        assert_true(m.median_s > 0);
        cJSON *sh = cJSON_Parse(m.shape_json);
        assert_non_null(sh);
        const cJSON *sz = cJSON_GetObjectItem(sh, "sizes");
        /* "nahw,nbhw->nchw" */
        assert_int_equal(cJSON_GetObjectItem(sz, "c")->valueint,
                         cJSON_GetObjectItem(sz, "a")->valueint +
                             cJSON_GetObjectItem(sz, "b")->valueint);
        cJSON_Delete(sh);
    }
    free(done);
    assert_true(measured[0] && measured[1]);
    opgrid_free(g);

    /* a budget thins the grid but keeps every kind and phase */
    o.kinds = "matmul";
    o.budget_s = 1e9;
    g = opgrid_new(&o, &d, &err);
    assert_non_null(g);
    int all = opgrid_count(g);
    opgrid_free(g);
    o.budget_s = 0.01;
    g = opgrid_new(&o, &d, &err);
    assert_non_null(g);
    int few = opgrid_count(g);
    bool ph[3] = { false, false, false };
    for (int i = 0; i < few; i++) {
        const char *lab = opgrid_label(g, i);
        ph[0] |= !strcmp(lab, "matmul fwd");
        ph[1] |= !strcmp(lab, "matmul bwd_data");
        ph[2] |= !strcmp(lab, "matmul bwd_weight");
    }
    opgrid_free(g);
    assert_true(few < all);
    assert_true(ph[0] && ph[1] && ph[2]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_options, harness_release_all),
        cmocka_unit_test_teardown(test_cuda_without_gpu, harness_release_all),
        cmocka_unit_test_teardown(test_unwritable_db, harness_release_all),
        cmocka_unit_test_teardown(test_show_errors, harness_release_all),
        cmocka_unit_test_teardown(test_grid, harness_release_all),
        cmocka_unit_test_teardown(test_small_profile, harness_release_all),
        cmocka_unit_test_teardown(test_one_device, harness_release_all),
        cmocka_unit_test_teardown(test_interrupted, harness_release_all),
        cmocka_unit_test_teardown(test_killed, harness_release_all),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
