/*
 * test_cli_search.c — `strata search`, `strata searches` and `strata run
 * --plan` as a user runs them: a search stores its row, its events, its
 * best plan with the estimate; the events replay as JSON lines; the stored
 * plan runs and verifies on 2 CPU ranks and its run lands beside it; bad
 * input is refused with the option named and nothing stored.
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

#include "db/db.h"
#include "tests/support/cli_harness.h"

static void test_search_stores_and_replays(void **state)
{
    (void)state;
    Res r = { 0 };
    const char *db = tp("search.db"), *log = tp("search.log");
    STRATA(&r, "search", "--model", rp("models/tiny-mlp.json"), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--devices", "4", "--budget", "200evals",
           "--seed", "5", "--log", log, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    double step = JNUM(j, "step_time_s");
    assert_true(step > 0);
    char sid[17], pid[17];
    snprintf(sid, sizeof sid, "%s", JSTR(j, "search_id"));
    snprintf(pid, sizeof pid, "%s", JSTR(j, "plan_id"));
    assert_true(cJSON_GetArraySize(JARR(j, "baselines")) >= 8);
    assert_true(cJSON_GetArraySize(JARR(j, "top")) >= 1);

    /* the log: one JSON object a line, evaluations never falling, ending with "end" */
    char *text = track(slurp(log, NULL));
    assert_non_null(text);
    int lines = 0;
    double last = 0;
    char *save = NULL, *end = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *e = track_json(cJSON_Parse(l));
        assert_non_null(e);
        double n = JNUM(e, "evaluations");
        assert_true(n >= last);
        last = n;
        end = l;
        lines++;
    }
    assert_true(lines >= 5);
    assert_non_null(strstr(end, "\"event\":\"end\""));

    /* the store: the search, its events (the same lines), its plan and estimate */
    STRATA(&r, "searches", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, sid, pid, "\"status\":\t\"done\"");
    STRATA(&r, "searches", "show", sid, "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "megatron", "zero3", "baseline", "top plans", "1.000x");
    STRATA(&r, "searches", "events", sid, "--db", db);
    EXPECT_RC(&r, 0);
    int n = 0;
    for (const char *p = r.out; (p = strchr(p, '\n')); p++) n++;
    assert_int_equal(n, lines);
    STRATA(&r, "searches", "events", sid, "--after", "3", "--db", db);
    EXPECT_RC(&r, 0);
    n = 0;
    for (const char *p = r.out; (p = strchr(p, '\n')); p++) n++;
    assert_int_equal(n, lines - 3);
    STRATA(&r, "plans", "show", pid, "--db", db);
    EXPECT_RC(&r, 0);

    /* an rl search keeps its policy, which starts the search of another model */
    STRATA(&r, "search", "--model", rp("models/tiny-mlp.json"), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--devices", "4", "--budget", "60evals",
           "--algo", "rl", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *jr = JSON_OUT(&r);
    char rid[17];
    snprintf(rid, sizeof rid, "%s", JSTR(jr, "search_id"));
    STRATA(&r, "search", "--model", rp("models/tiny-cnn.json"), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--devices", "2", "--budget", "40evals",
           "--algo", "rl", "--policy-from", rid, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    STRATA(&r, "search", "--model", rp("models/tiny-mlp.json"), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--algo", "mcmc", "--policy-from", rid, "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--policy-from", "--algo rl");
    STRATA(&r, "search", "--model", rp("models/tiny-mlp.json"), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--algo", "rl", "--policy-from", sid, "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "kept no policy");

    /* the same seed and evaluation budget find the same plan */
    STRATA(&r, "search", "--model", rp("models/tiny-mlp.json"), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--devices", "4", "--budget", "200evals",
           "--seed", "5", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j2 = JSON_OUT(&r);
    assert_string_equal(JSTR(j2, "plan_id"), pid);
    assert_true(JNUM(j2, "step_time_s") == step);
    res_free(&r);
}

/* Searched for this machine, the best plan runs, verifies, and its run is
 * stored beside it. */
static void test_run_plan(void **state)
{
    (void)state;
    Res r = { 0 };
    const char *db = tp("runplan.db");
    STRATA(&r, "search", "--model", rp("models/tiny-mlp.json"), "--cluster",
           rp("clusters/local-cpu.json"), "--devices", "2", "--budget", "100evals", "--db", db,
           "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    char pid[17];
    snprintf(pid, sizeof pid, "%s", JSTR(j, "plan_id"));
    STRATA(&r, "run", "--plan", pid, "--steps", "2", "--verify", "--db", db, "--run-id",
           "00000000000000AA");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "verify: OK", pid);
    STRATA(&r, "runs", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, pid, "00000000000000aa");
    /* the id taken: refused before any rank starts, the stored run kept */
    STRATA(&r, "run", "--plan", pid, "--steps", "2", "--db", db, "--run-id", "00000000000000aa");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--run-id 00000000000000aa", "already stored");
    STRATA(&r, "runs", "show", "00000000000000aa", "--db", db);
    EXPECT_RC(&r, 0);

    /* a run a server took and lost (killed while it was queued): shown with
     * why, and the run itself, given its id, completes the row */
    Err err = { { 0 } };
    Db *h = db_open(db, &err);
    assert_non_null(h);
    DbRun q = { .backend = "cpu", .world = 2, .steps = 2 };
    memcpy(q.id, "00000000000000bb", 17);
    memcpy(q.plan_id, pid, 17);
    int n = 0;
    assert_int_equal(db_run_submit(h, &q, &err), 0);
    assert_int_equal(db_run_interrupt(h, true, &n, &err), 0);
    assert_int_equal(n, 1);
    db_close(h);
    STRATA(&r, "runs", "show", "00000000000000bb", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "interrupted", "error: the server stopped before the run ended");
    STRATA(&r, "run", "--plan", pid, "--steps", "2", "--db", db, "--run-id", "00000000000000bb");
    EXPECT_RC(&r, 0);
    STRATA(&r, "runs", "show", "00000000000000bb", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *done = JSON_OUT(&r);
    assert_string_equal(JSTR(done, "status"), "ok");
    assert_null(cJSON_GetObjectItemCaseSensitive(done, "error"));

    /* a model without a loss has nothing to train: refused, not run */
    const char *noloss = tp("noloss.json"), *dp1 = tp("dp1.json");
    write_file(noloss, "{\"name\": \"noloss\", \"tensors\": ["
               "{\"name\": \"x\", \"shape\": [8, 16], \"dtype\": \"f32\", \"role\": \"input\"},"
               "{\"name\": \"w\", \"shape\": [16, 4], \"dtype\": \"f32\", \"role\": \"param\"},"
               "{\"name\": \"y\", \"shape\": [8, 4], \"dtype\": \"f32\", \"role\": \"activation\"}],"
               "\"ops\": [{\"name\": \"fc\", \"kind\": \"matmul\", \"spec\": \"bi,io->bo\","
               "\"inputs\": [\"x\", \"w\"], \"output\": \"y\"}]}");
    write_file(dp1, "{\"mesh\": {\"dp\": 1}}");
    STRATA(&r, "model", "show", noloss);
    EXPECT_RC(&r, 0);
    STRATA(&r, "run", "--model", noloss, "--strategy", dp1, "--steps", "1", "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "noloss", "no loss op");
    /* a run writes the store: an empty file given as one becomes one */
    const char *empty = tp("empty-run.db");
    write_file(empty, "");
    STRATA(&r, "run", "--model", rp("models/tiny-mlp.json"), "--strategy", dp1, "--steps", "1",
           "--db", empty);
    EXPECT_RC(&r, 0);
    STRATA(&r, "runs", "list", "--db", empty);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "tiny");

    STRATA(&r, "run", "--plan", pid, "--model", rp("models/tiny-mlp.json"), "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--plan");
    STRATA(&r, "run", "--plan", "ffffffffffffffff", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no plan");
    res_free(&r);
}

/* A small MoE on this machine's 2 ranks: the search shares its experts
 * out over the data ranks (their gradients then need no all-reduce), and
 * that plan runs and verifies against one rank. */
static void test_expert_plan_runs(void **state)
{
    (void)state;
    Res r = { 0 };
    const char *db = tp("experts.db"), *model = tp("tiny-moe.json");
    STRATA(&r, "model", "build", "moe", "--layers", "2", "--hidden", "32", "--heads", "4",
           "--seq", "16", "--vocab", "64", "--batch", "8", "--experts", "4", "--every", "1",
           "-o", model);
    EXPECT_RC(&r, 0);
    STRATA(&r, "search", "--model", model, "--cluster", rp("clusters/local-cpu.json"),
           "--devices", "2", "--algo", "exhaustive", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    char pid[17];
    snprintf(pid, sizeof pid, "%s", JSTR(j, "plan_id"));
    STRATA(&r, "plans", "show", pid, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "\"dp_ep\"");
    STRATA(&r, "run", "--plan", pid, "--steps", "2", "--verify", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "verify: OK");
    res_free(&r);
}

/* Ctrl-C (SIGINT) stops a search, which keeps and stores the best so far. */
static void test_search_interrupted(void **state)
{
    (void)state;
    Res r = { 0 };
    const char *db = tp("stop.db"), *model = tp("gpt2.json");
    STRATA(&r, "model", "build", "gpt", "--preset", "gpt2-small", "--batch", "64", "-o", model);
    EXPECT_RC(&r, 0);
    RunOpts o = { .prog = "timeout" };
    RUNO(&r, &o, "--preserve-status", "-s", "INT", "4", harness_bin(), "search", "--model",
         model, "--cluster", rp("clusters/dgx-a100-80gb.json"), "--budget", "10m", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "ended: stopped", "best: ");
    STRATA(&r, "searches", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "stopped");
    res_free(&r);
}

static void test_search_bad_input(void **state)
{
    (void)state;
    Res r = { 0 };
    const char *db = tp("bad.db");
    const char *m = rp("models/tiny-mlp.json"), *c = rp("clusters/dgx-a100-80gb.json");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--algo", "annealing", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--algo", "annealing");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--budget", "0s", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--budget");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--log", db, "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--log", "is the store");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--db", "-");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--db -", "not standard output");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--budget", "25h", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--budget", "at most a day");
    /* a plain decimal only: no exponent, hex, sign or blank */
    const char *loose[] = { "1e308h", "0x1s", "+5s", " 5s", "1.s", ".5s", "5.0evals" };
    for (int k = 0; k < 7; k++) {
        STRATA(&r, "search", "--model", m, "--cluster", c, "--budget", loose[k], "--db", db);
        EXPECT_RC(&r, 2);
        EXPECT_ERR(&r, "--budget", "expected a positive time");
    }
    STRATA(&r, "search", "--model", m, "--cluster", c, "--budget", "soon", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--budget", "soon");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--budget", "12.5evals", "--db", db);
    EXPECT_RC(&r, 2);
    STRATA(&r, "search", "--cluster", c, "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--model");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--devices", "64", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--devices 64");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--algo", "exhaustive", "--limit", "5",
           "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "exhaustive");
    EXPECT_ABSENT(tp("strata.db"));
    /* refused before anything was stored: no store made at all */
    EXPECT_ABSENT(db);

    /* a model no plan fits: exit 1, what the least hungry plan needs, and the
     * search stored as such */
    const char *big = tp("big.json");
    STRATA(&r, "model", "build", "gpt", "--preset", "gpt3-175b", "--batch", "8", "-o", big);
    EXPECT_RC(&r, 0);
    STRATA(&r, "search", "--model", big, "--cluster", c, "--algo", "mcmc", "--budget", "40evals",
           "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no plan of", "GiB per device");
    STRATA(&r, "searches", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "no plan");
    STRATA(&r, "searches", "show", "0123", "--db", db);
    EXPECT_RC(&r, 1);
    STRATA(&r, "searches", "events", "--db", db);
    EXPECT_RC(&r, 2);
    res_free(&r);
}

static int group_setup(void **state)
{
    (void)state;
    return harness_setup(&(HarnessConfig){ .name = "test_cli_search", .deadline_s = 300,
                                            .lsan_supp = "tests/lsan.supp" });
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_search_stores_and_replays, harness_release_all),
        cmocka_unit_test_teardown(test_run_plan, harness_release_all),
        cmocka_unit_test_teardown(test_expert_plan_runs, harness_release_all),
        cmocka_unit_test_teardown(test_search_interrupted, harness_release_all),
        cmocka_unit_test_teardown(test_search_bad_input, harness_release_all),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
