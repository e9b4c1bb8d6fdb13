/*
 * test_run.c — `strata run`, the executor, end to end: the correctness matrix.
 *
 * Every case trains a small model for real on an MPI job of 4 ranks (2 where
 * the plan asks for 2) with --verify: rank 0 also trains the same model on one
 * rank and compares the per-step losses and the final params, so a case passes
 * only when `strata run` exits 0 and prints "verify: OK". Each case also lowers
 * its plan (`strata lower --json`) and checks that every mesh axis of size > 1
 * moves bytes, so that no case passes by quietly replicating the work (the
 * `megatron` builder on the mlp has no letter to split, hence the hand-written
 * mlp tensor-parallel strategies below).
 *
 * Matrix: mlp and GPT under data parallel, Megatron tensor parallel, GPipe and
 * 1F1B (2 stages, 4 micro-batches), ZeRO-1, -2 (GPT: 2 micro-batches) and -3, a synchronous parameter
 * server, fp16-compressed all-reduce, dp2 x tp2 and pp2 x dp2; the interleaved
 * 1F1B schedule (2 stages x 2 chunks of a 4-block mlp alone, of a 4-block GPT
 * with dp2 and with tp2); a VGG-style CNN
 * data parallel and with data-parallel convolutions and tensor-parallel
 * fully-connected layers; a 2-rank MoE with its experts split across ranks
 * (and all-to-all bytes in its plan); the fire CNN (concat) data parallel and
 * with its concats split along h; the mlp with the mse loss data parallel
 * and with its classes split; a parameter server with staleness 2 on
 * GPT for 8 steps (its looser bound printed, and it trains).
 * Then the ways a run must fail: a world that does not match the strategy,
 * unknown and unbuilt backends, a plan that does not fit in memory, a rank
 * that dies mid-run; and a stored run read back with `runs list|show`.
 *
 * Harness: tests/support/cli_harness.h, as test_cli.c: STRATA_BIN and
 * STRATA_ROOT (the Makefile exports both), fork + execv(p) with an argv array,
 * stdout and stderr captured in files of one mkdtemp directory that is also the
 * child's cwd, removed at the end (STRATA_KEEP_TMP=1 keeps it). Every child runs
 * in its own process group under a hard deadline: past it the whole group gets
 * SIGTERM, then SIGKILL, and the test fails, so a deadlocked collective cannot
 * hang CI.
 *
 * Under SAN=1 LeakSanitizer in the ranks reads tests/lsan.supp, which
 * suppresses only leaks whose stack is inside Open MPI and its libraries.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "tests/support/cli_harness.h"

/* Seconds any one command may take before it is killed and the test fails. */
#define DEADLINE_S 300
/* ... and the run with a rank killed mid-way, which must end by itself. */
#define FAULT_DEADLINE_S 60
#define STEPS "3"

enum { M_MLP, M_GPT, M_VGG, M_MOE, M_MLP4, M_GPT4, M_FIRE, M_MSE, M_COUNT };

static struct {
    const char *model[M_COUNT];  /* models built on first use (paths in the temp dir) */
} G;

/* ----------------------------------------------------------------------------
 * Reading what a run printed */

/* The training losses rank 0 printed, "step   N  loss X ..." lines (the verify
 * table's lines are indented and not counted), into loss[]; returns how many. */
static int step_losses(const char *out, double *loss, int max)
{
    int n = 0;
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        int st;
        double l;
        if (strncmp(p, "step ", 5) != 0 || sscanf(p, "step %d loss %lf", &st, &l) != 2) continue;
        assert_int_equal(st, n);
        assert_true(n < max);
        loss[n++] = l;
    }
    return n;
}

/* ----------------------------------------------------------------------------
 * Fixtures: the four models, built on first use */

static const char *const MODEL_ARGS[M_COUNT][24] = {
    [M_MLP] = { "mlp", "--layers", "2", "--hidden", "32", "--input", "16", "--classes", "8",
                "--batch", "8" },
    [M_GPT] = { "gpt", "--layers", "2", "--hidden", "32", "--heads", "4", "--seq", "16", "--vocab",
                "64", "--batch", "8" },
    [M_VGG] = { "vgg16", "--width", "4", "--fc", "32", "--image", "32", "--batch", "8",
                "--classes", "10" },
    [M_MOE] = { "moe", "--layers", "2", "--hidden", "32", "--heads", "4", "--seq", "16", "--vocab",
                "64", "--batch", "4", "--experts", "2", "--every", "1" },
    /* 4 blocks: 2 stages x 2 chunks each for the interleaved schedule */
    [M_MLP4] = { "mlp", "--layers", "4", "--hidden", "32", "--input", "16", "--classes", "8",
                 "--batch", "8" },
    [M_GPT4] = { "gpt", "--layers", "4", "--hidden", "32", "--heads", "4", "--seq", "16",
                 "--vocab", "64", "--batch", "8" },
    /* concat: two fire modules on 8 x 8 maps; mse: the mlp regressing 8 outputs */
    [M_FIRE] = { "fire", "--batch", "8", "--image", "16", "--fires", "2" },
    [M_MSE] = { "mlp", "--layers", "2", "--hidden", "32", "--input", "16", "--classes", "8",
                "--batch", "8", "--loss", "mse" },
};

static const char *model(int m)
{
    if (G.model[m]) return G.model[m];
    char name[64];
    snprintf(name, sizeof name, "model-%s-%d.json", MODEL_ARGS[m][0], m);
    const char *p = tp(name);
    const char *argv[32] = { "model", "build" };
    int n = 2;
    for (int i = 0; MODEL_ARGS[m][i]; i++) argv[n++] = MODEL_ARGS[m][i];
    argv[n++] = "-o";
    argv[n++] = p;
    argv[n] = NULL;
    Res r = {0};
    RUNV(&r, argv);
    EXPECT_RC(&r, 0);
    res_free(&r);
    return G.model[m] = p;
}

/* ----------------------------------------------------------------------------
 * The matrix */

typedef struct {
    const char *name;            /* also the strategy's file name */
    int model;
    const char *build[12];       /* `strategy build` arguments after the kind ... */
    const char *json;            /* ... or a hand-written strategy */
    int world;
    const char *tolerance;       /* what verify must announce */
} RunCase;

#define EXACT "tolerance 1e-05 relative"

/* mlp ops: blocks.B.fc "bi,ih->bh", blocks.B.fc_bias "bh,h->bh", blocks.B.relu
 * "bh->bh", head "bh,hk->bk". Megatron's MLP split: block 0 column-parallel
 * (h split: fc, bias, relu), block 1 row-parallel (its contraction letter i
 * split, a partial sum all-reduced before its bias). The megatron builder
 * splits only n/f/v/e, letters the mlp lacks, so it cannot express this. */
#define MLP_TP_SPLITS                                                                              \
    "\"blocks.0.fc\": {\"split\": {\"h\": \"tp\"}}, \"blocks.0.fc_bias\": {\"split\": {\"h\": "   \
    "\"tp\"}}, \"blocks.0.relu\": {\"split\": {\"h\": \"tp\"}}, \"blocks.1.fc\": {\"split\": "     \
    "{\"i\": \"tp\"}}"

static const RunCase CASES[] = {
    { "mlp-dp", M_MLP, { "dp", "--world", "4" }, NULL, 4, EXACT },
    { "mlp-tp4", M_MLP, { NULL }, "{\"mesh\": {\"tp\": 4}, \"ops\": {" MLP_TP_SPLITS "}}", 4, EXACT },
    /* the other tensor-parallel form: every layer column-parallel, the
     * activations resharded (all-gathered) between them */
    { "mlp-tp4-columns", M_MLP, { NULL },
      "{\"mesh\": {\"tp\": 4}, \"ops\": {\"blocks.*.fc\": {\"split\": {\"h\": \"tp\"}}, "
      "\"blocks.*.fc_bias\": {\"split\": {\"h\": \"tp\"}}, \"blocks.*.relu\": {\"split\": {\"h\": "
      "\"tp\"}}}}", 4, EXACT },
    { "mlp-gpipe", M_MLP, { "gpipe", "--world", "2", "--pp", "2", "--microbatches", "4" }, NULL, 2,
      EXACT },
    { "mlp-1f1b", M_MLP, { "megatron", "--world", "2", "--tp", "1", "--pp", "2", "--microbatches",
      "4" }, NULL, 2, EXACT },
    { "mlp-zero1", M_MLP, { "zero1", "--world", "4" }, NULL, 4, EXACT },
    { "mlp-zero2", M_MLP, { "zero2", "--world", "4" }, NULL, 4, EXACT },
    { "mlp-zero3", M_MLP, { "zero3", "--world", "4" }, NULL, 4, EXACT },
    { "mlp-ps", M_MLP, { "ps", "--world", "4" }, NULL, 4, EXACT },
    { "mlp-dp-fp16", M_MLP, { "dp", "--world", "4", "--compress", "fp16" }, NULL, 4,
      "tolerance 1e-02 relative: fp16-compressed gradients" },
    { "mlp-dp2-tp2", M_MLP, { NULL },
      "{\"mesh\": {\"dp\": 2, \"tp\": 2}, \"ops\": {" MLP_TP_SPLITS "}}", 4, EXACT },
    { "mlp-pp2-dp2", M_MLP, { "megatron", "--world", "4", "--tp", "1", "--pp", "2",
      "--microbatches", "4" }, NULL, 4, EXACT },

    { "gpt-dp", M_GPT, { "dp", "--world", "4" }, NULL, 4, EXACT },
    { "gpt-tp4", M_GPT, { "megatron", "--world", "4", "--tp", "4" }, NULL, 4, EXACT },
    { "gpt-gpipe", M_GPT, { "gpipe", "--world", "2", "--pp", "2", "--microbatches", "4" }, NULL, 2,
      EXACT },
    { "gpt-1f1b", M_GPT, { "megatron", "--world", "2", "--tp", "1", "--pp", "2", "--microbatches",
      "4" }, NULL, 2, EXACT },
    { "gpt-zero1", M_GPT, { "zero1", "--world", "4" }, NULL, 4, EXACT },
    { "gpt-zero2", M_GPT, { "zero2", "--world", "4", "--microbatches", "2" }, NULL, 4, EXACT },
    { "gpt-zero3", M_GPT, { "zero3", "--world", "4" }, NULL, 4, EXACT },
    { "gpt-ps", M_GPT, { "ps", "--world", "4" }, NULL, 4, EXACT },
    { "gpt-dp-fp16", M_GPT, { "dp", "--world", "4", "--compress", "fp16" }, NULL, 4,
      "tolerance 1e-02 relative: fp16-compressed gradients" },
    { "gpt-dp2-tp2", M_GPT, { "megatron", "--world", "4", "--tp", "2" }, NULL, 4, EXACT },
    { "gpt-pp2-dp2", M_GPT, { "megatron", "--world", "4", "--tp", "1", "--pp", "2",
      "--microbatches", "4" }, NULL, 4, EXACT },
    /* four stages of one block each: the third stage's class is the
     * second's program renumbered (shared, not lowered again), and the
     * second's rank gives it instructions of its own as it expands */
    { "gpt4-pp4", M_GPT4, { "megatron", "--world", "4", "--tp", "1", "--pp", "4",
      "--microbatches", "4" }, NULL, 4, EXACT },

    { "vgg-dp", M_VGG, { "dp", "--world", "4" }, NULL, 4, EXACT },
    /* data-parallel convolutions (the batch over all 4 ranks), tensor-parallel
     * fully-connected layers (fc1 column-, fc2 row-parallel on tp, batch on dp) */
    { "vgg-dpconv-tpfc", M_VGG, { NULL },
      "{\"mesh\": {\"dp\": 2, \"tp\": 2}, \"ops\": {\"*\": {\"split\": {\"n\": [\"dp\", \"tp\"]}}, "
      "\"blocks.5.*\": {\"split\": {\"n\": \"dp\", \"f\": \"tp\"}}, \"blocks.6.fc\": {\"split\": "
      "{\"n\": \"dp\", \"f\": \"tp\"}}, \"blocks.6.fc_bias\": {\"split\": {\"n\": \"dp\"}}, "
      "\"blocks.6.relu\": {\"split\": {\"n\": \"dp\"}}, \"blocks.7.*\": {\"split\": {\"n\": "
      "\"dp\"}}, \"loss\": {\"split\": {\"n\": \"dp\"}}}}", 4, EXACT },

    /* experts split across the 2 ranks (expert parallelism on the dp axis):
     * the expert ops keep the whole batch, tokens move by all-to-all */
    { "moe-experts", M_MOE, { NULL },
      "{\"mesh\": {\"dp\": 2}, \"ops\": {\"blocks.*.moe.fc1\": {\"split\": {\"b\": null, \"e\": "
      "\"dp\"}}, \"blocks.*.moe.gelu\": {\"split\": {\"b\": null, \"e\": \"dp\"}}, "
      "\"blocks.*.moe.fc2\": {\"split\": {\"b\": null, \"e\": \"dp\"}}}}", 2, EXACT },

    /* context parallelism: the sequence over dp_cp, the batch over dp;
     * attention gathers the other positions' keys and values */
    { "gpt-context-parallel", M_GPT, { NULL },
      "{\"mesh\": {\"dp\": 2, \"dp_cp\": 2}, \"ops\": {\"*\": {\"split\": {\"s\": \"dp_cp\", "
      "\"b\": \"dp\"}}}}", 4, EXACT },
    /* ... with every param through parameter servers: the position
     * embedding, split over dp_cp by the sequence, has a server group per
     * part (its dp ranks), the others one over all four ranks */
    { "gpt-context-parallel-ps", M_GPT, { NULL },
      "{\"mesh\": {\"dp\": 2, \"dp_cp\": 2}, \"ops\": {\"*\": {\"split\": {\"s\": \"dp_cp\", "
      "\"b\": \"dp\"}}}, \"params\": {\"*\": {\"sync\": {\"method\": \"ps\", \"shards\": 2}}}}",
      4, EXACT },

    /* the batch over tp+dp in block 0, over tp after it, blocks.1.fc also
     * contracting over dp: the tokens move from b to i by an all_to_all on dp
     * while b stays split on tp (dp the inner axis of b's split; the other
     * way round is refused, see test_outer_axis_refused) */
    { "mlp-tp2-dp2-inner-a2a", M_MLP, { NULL },
      "{\"mesh\": {\"tp\": 2, \"dp\": 2}, \"ops\": {\"*\": {\"split\": {\"b\": \"tp\"}}, "
      "\"blocks.0.*\": {\"split\": {\"b\": [\"tp\", \"dp\"]}}, \"blocks.1.fc\": {\"split\": "
      "{\"b\": \"tp\", \"i\": \"dp\"}}}}", 4, EXACT },
    /* the interleaved schedule (Megatron-LM's virtual stages): 4 blocks in 4
     * chunks, stage 0 runs chunks 0 and 2, stage 1 chunks 1 and 3, the last
     * chunk's activations wrap from stage 1 back to stage 0; alone, with dp2,
     * and with tp2 (whose resharded copies live per micro-batch) */
    { "mlp-interleaved-pp2", M_MLP4, { "megatron", "--world", "2", "--tp", "1", "--pp", "2",
      "--virtual", "2", "--microbatches", "4" }, NULL, 2, EXACT },
    { "gpt-interleaved-pp2-dp2", M_GPT4, { "megatron", "--world", "4", "--tp", "1", "--pp", "2",
      "--virtual", "2", "--microbatches", "4" }, NULL, 4, EXACT },
    { "gpt-interleaved-pp2-tp2", M_GPT4, { "megatron", "--world", "4", "--tp", "2", "--pp", "2",
      "--virtual", "2", "--microbatches", "4" }, NULL, 4, EXACT },
    /* int8-compressed gradients on pp2 x dp2 with 2 micro-batches (Adam) */
    { "gpt-pp2-dp2-int8", M_GPT, { "megatron", "--world", "4", "--tp", "1", "--pp", "2",
      "--microbatches", "2", "--compress", "int8" }, NULL, 4,
      "tolerance 5e-02 relative: int8-compressed gradients" },

    /* concat: data parallel; and h of the concats split over tp with the 1x1
     * expand convs' out-channels split too (gathered before the relu, the
     * concat's output gathered for the next conv), with 2 micro-batches */
    { "fire-dp", M_FIRE, { "dp", "--world", "2" }, NULL, 2, EXACT },
    { "fire-tp2-concat-h", M_FIRE, { NULL },
      "{\"mesh\": {\"tp\": 2}, \"pipeline\": {\"microbatches\": 2}, \"ops\": {"
      "\"blocks.*.concat\": {\"split\": {\"h\": \"tp\"}}, \"blocks.*.expand1\": {\"split\": "
      "{\"o\": \"tp\"}}}}", 2, EXACT },
    /* mse: data parallel (the loss a partial mean on each rank); and the
     * classes split over tp in the head, its bias and the loss, whose target
     * is loaded split, with 2 micro-batches (the loss a sum of their parts) */
    { "mse-dp", M_MSE, { "dp", "--world", "2" }, NULL, 2, EXACT },
    { "mse-tp2-classes", M_MSE, { NULL },
      "{\"mesh\": {\"tp\": 2}, \"pipeline\": {\"microbatches\": 2}, \"ops\": {"
      "\"head\": {\"split\": {\"k\": \"tp\"}}, "
      "\"head_bias\": {\"split\": {\"k\": \"tp\"}}, \"loss\": {\"split\": {\"k\": \"tp\"}}}}",
      2, EXACT },
};
#define NCASES (sizeof CASES / sizeof CASES[0])

/* Writes the case's strategy into the temporary directory; returns its path. */
static const char *case_strategy(const RunCase *c)
{
    char name[96];
    snprintf(name, sizeof name, "strategy-%s.json", c->name);
    const char *p = tp(name);
    if (c->json) {
        write_file(p, c->json);
        return p;
    }
    const char *argv[32] = { "strategy", "build", c->build[0], "--model", model(c->model) };
    int n = 5;
    for (int i = 1; c->build[i]; i++) argv[n++] = c->build[i];
    argv[n++] = "-o";
    argv[n++] = p;
    argv[n] = NULL;
    Res r = {0};
    RUNV(&r, argv);
    EXPECT_RC(&r, 0);
    res_free(&r);
    return p;
}

/* Lowers the plan over 4 local-cpu devices and checks that every mesh axis of
 * size > 1 carries bytes in some class (no silently replicated axis). Returns
 * the plan's --json (tracked) for more checks. */
static cJSON *lower_check_axes(const char *mdl, const char *strategy, const char *name)
{
    Res r = {0};
    STRATA(&r, "lower", "--model", mdl, "--cluster", rp("clusters/local-cpu.json"), "--nodes", "4",
           "--strategy", strategy, "--json", "--no-store");
    EXPECT_RC(&r, 0);
    cJSON *plan = JSON_OUT(&r);
    res_free(&r);

    char *text = slurp(strategy, NULL);
    assert_non_null(text);
    cJSON *s = cJSON_Parse(text);
    free(text);
    assert_non_null(s);
    track_json(s);
    const cJSON *ax;
    cJSON_ArrayForEach(ax, JOBJ(s, "mesh")) {
        if (ax->valueint <= 1) continue;
        double bytes = 0;
        const cJSON *cl, *kv;
        cJSON_ArrayForEach(cl, JARR(plan, "classes")) {
            cJSON_ArrayForEach(kv, JOBJ(cl, "comm_bytes_by_axis")) {
                /* keys are axes joined by '+': "tp", "dp+tp" */
                char key[128];
                snprintf(key, sizeof key, "+%s+", kv->string);
                char want[64];
                snprintf(want, sizeof want, "+%s+", ax->string);
                if (strstr(key, want)) bytes += kv->valuedouble;
            }
        }
        if (!(bytes > 0)) {
            char *p = cJSON_PrintUnformatted(plan);
            print_error("%s: mesh axis %s (size %d) moves no bytes: the strategy does not really "
                        "use it\n  plan: %.2000s\n", name, ax->string, ax->valueint, p ? p : "?");
            cJSON_free(p);
            fail();
        }
    }
    release(s);
    return plan;
}

/* `strata run ... --steps N --verify --no-store`: exit 0, trained on `world`
 * ranks, N steps printed, the tolerance announced, "verify: OK". */
static void run_verified(Res *r, const char *mdl, const char *strategy, const char *steps,
                         int world, const char *tolerance)
{
    RUNO(r, NULL, "run", "--model", mdl, "--strategy", strategy, "--steps", steps, "--verify",
         "--no-store");
    EXPECT_RC(r, 0);
    char ranks[64], head[64];
    snprintf(ranks, sizeof ranks, "on %d ranks (cpu", world);
    snprintf(head, sizeof head, ", %s steps\n", steps);
    EXPECT_OUT(r, ranks, head, tolerance, "verify: OK\n");
    EXPECT_NOT_OUT(r, "FAILED");
    /* the buffer pool: the warm-up before the first step walks the step's
     * allocations, so the steps find (nearly) every buffer cached. Not always
     * all: a collective in flight finishes when the first instruction needing
     * it waits, so ZeRO-3's gathered params may outlive one another a little
     * differently from step to step. */
    const char *al = strstr(r->out, "allocations from the device: ");
    long first = -1, last = -1, used = -1;
    if (!al || sscanf(al, "allocations from the device: %ld in the first step, %ld in the last "
                      "(of %ld buffers it used)", &first, &last, &used) != 3 ||
        first < 0 || last < 0 || used <= 0 || last * 10 > used) {
        print_error("the buffer pool did not reuse: %ld allocations in the first step, %ld in "
                    "the last, of %ld buffers\n", first, last, used);
        dump(r);
        fail();
    }
    double loss[64];
    int n = step_losses(r->out, loss, 64);
    if (n != atoi(steps)) {
        print_error("%d training steps printed, expected %s\n", n, steps);
        dump(r);
        fail();
    }
    for (int i = 0; i < n; i++) assert_true(isfinite(loss[i]) && loss[i] > 0);
}

static void test_case(void **state)
{
    const RunCase *c = *state;
    const char *strategy = case_strategy(c);
    cJSON *plan = lower_check_axes(model(c->model), strategy, c->name);
    assert_int_equal((int)JNUM(plan, "ranks"), c->world);
    if (c->model == M_MOE) {
        /* tokens travel to their expert's rank and back */
        double a2a = 0;
        const cJSON *cl;
        cJSON_ArrayForEach(cl, JARR(plan, "classes")) a2a += JNUM(JOBJ(cl, "comm_bytes"), "all_to_all");
        if (!(a2a > 0)) {
            print_error("%s: the plan has no all_to_all bytes\n", c->name);
            fail();
        }
    }
    release(plan);
    Res r = {0};
    run_verified(&r, model(c->model), strategy, STEPS, c->world, c->tolerance);
    res_free(&r);
}

/* A parameter server with staleness 2: verify holds it to the looser bound
 * it announces, and it still trains over 8 steps. */
static void test_ps_stale(void **state)
{
    (void)state;
    const RunCase c = { "gpt-ps-stale2", M_GPT, { "ps", "--world", "4", "--staleness", "2" }, NULL,
                        4, NULL };
    const char *strategy = case_strategy(&c);
    release(lower_check_axes(model(M_GPT), strategy, c.name));
    Res r = {0};
    run_verified(&r, model(M_GPT), strategy, "8", 4,
                 "tolerance 2e-01 relative: stale parameter-server pulls");
    double loss[8];
    assert_int_equal(step_losses(r.out, loss, 8), 8);
    if (!(loss[7] < loss[0])) {
        print_error("no training: loss %.6f at step 0, %.6f at step 7\n", loss[0], loss[7]);
        dump(&r);
        fail();
    }
    res_free(&r);
}

/* The batch over dp+tp everywhere but block 1 of the mlp (tp only): dp+tp ->
 * tp is an all_gather on dp, tp -> dp+tp a local slice that only ranks 0 and
 * 3 hold. The strategy validates, so the run must train and verify; above
 * all it must end by itself, whatever happens on some of its ranks. */
/* A dim split over two axes holds its pieces in mesh order; moving its
 * outer axis alone (all_to_all, all_gather or a slice) would interleave them.
 * Such plans are refused by every rank alike, at once, naming the tensor;
 * they do not hang. */
static void test_outer_axis_refused(void **state)
{
    (void)state;
    const char *plans[] = {
        "{\"mesh\": {\"dp\": 2, \"tp\": 2}, \"ops\": {\"*\": {\"split\": {\"b\": \"tp\"}}, "
        "\"blocks.0.*\": {\"split\": {\"b\": [\"dp\", \"tp\"]}}, \"blocks.1.fc\": {\"split\": "
        "{\"b\": \"tp\", \"i\": \"dp\"}}}}",
        "{\"mesh\": {\"dp\": 2, \"tp\": 2}, \"ops\": {\"*\": {\"split\": {\"b\": "
        "[\"dp\", \"tp\"]}}, \"blocks.1.*\": {\"split\": {\"b\": \"tp\"}}}}",
    };
    for (int k = 0; k < 2; k++) {
        const RunCase c = { k ? "mlp-dp2-tp2-batch-then-tp" : "mlp-dp2-tp2-outer-a2a", M_MLP,
                            { NULL }, plans[k], 4, EXACT };
        const char *strategy = case_strategy(&c);
        Res r = {0};
        const RunOpts o = { .deadline_s = FAULT_DEADLINE_S };
        RUNO(&r, &o, "run", "--model", model(M_MLP), "--strategy", strategy, "--steps", STEPS,
             "--verify", "--no-store");
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, "axis dp", "only the innermost axes");
        res_free(&r);
    }
}

/* Batch normalisation over a batch cut into micro-batches: conv, batchnorm,
 * relu, mean, fc, loss on dp2 with 2 micro-batches. --verify must compare it
 * with a reference that means the same thing (or the strategy be refused). */
static const char BN_MODEL[] =
    "{\"name\":\"bnnet\",\"tensors\":["
    "{\"name\":\"image\",\"shape\":[8,4,4,4],\"dtype\":\"f32\",\"role\":\"input\"},"
    "{\"name\":\"labels\",\"shape\":[8],\"dtype\":\"i32\",\"role\":\"label\"},"
    "{\"name\":\"conv.w\",\"shape\":[6,4,3,3],\"dtype\":\"f32\",\"role\":\"param\"},"
    "{\"name\":\"conv\",\"shape\":[8,6,4,4],\"dtype\":\"f32\",\"role\":\"activation\"},"
    "{\"name\":\"bn.g\",\"shape\":[6],\"dtype\":\"f32\",\"role\":\"param\"},"
    "{\"name\":\"bn.b\",\"shape\":[6],\"dtype\":\"f32\",\"role\":\"param\"},"
    "{\"name\":\"bn\",\"shape\":[8,6,4,4],\"dtype\":\"f32\",\"role\":\"activation\"},"
    "{\"name\":\"relu\",\"shape\":[8,6,4,4],\"dtype\":\"f32\",\"role\":\"activation\"},"
    "{\"name\":\"pool\",\"shape\":[8,6],\"dtype\":\"f32\",\"role\":\"activation\"},"
    "{\"name\":\"fc.w\",\"shape\":[6,3],\"dtype\":\"f32\",\"role\":\"param\"},"
    "{\"name\":\"fc\",\"shape\":[8,3],\"dtype\":\"f32\",\"role\":\"activation\"},"
    "{\"name\":\"fc.b\",\"shape\":[3],\"dtype\":\"f32\",\"role\":\"param\"},"
    "{\"name\":\"fc_bias\",\"shape\":[8,3],\"dtype\":\"f32\",\"role\":\"activation\"},"
    "{\"name\":\"loss\",\"shape\":[],\"dtype\":\"f32\",\"role\":\"activation\"}],\"ops\":["
    "{\"name\":\"conv\",\"kind\":\"conv2d\",\"spec\":\"nchw,ocrs->nohw\",\"inputs\":[\"image\","
    "\"conv.w\"],\"output\":\"conv\",\"stride\":1,\"pad\":1},"
    "{\"name\":\"bn\",\"kind\":\"batchnorm\",\"spec\":\"nchw,c,c->nchw\",\"inputs\":[\"conv\","
    "\"bn.g\",\"bn.b\"],\"output\":\"bn\",\"reduce\":\"nhw\"},"
    "{\"name\":\"relu\",\"kind\":\"relu\",\"spec\":\"nchw->nchw\",\"inputs\":[\"bn\"],\"output\":\"relu\"},"
    "{\"name\":\"pool\",\"kind\":\"mean\",\"spec\":\"nchw->nc\",\"inputs\":[\"relu\"],\"output\":\"pool\"},"
    "{\"name\":\"fc\",\"kind\":\"matmul\",\"spec\":\"nc,ck->nk\",\"inputs\":[\"pool\",\"fc.w\"],"
    "\"output\":\"fc\"},"
    "{\"name\":\"fc_bias\",\"kind\":\"bias\",\"spec\":\"nk,k->nk\",\"inputs\":[\"fc\",\"fc.b\"],"
    "\"output\":\"fc_bias\"},"
    "{\"name\":\"loss\",\"kind\":\"cross_entropy\",\"spec\":\"nk,n->\",\"inputs\":[\"fc_bias\","
    "\"labels\"],\"output\":\"loss\",\"reduce\":\"k\"}]}";

static void test_batchnorm_microbatches(void **state)
{
    (void)state;
    const char *mdl = tp("model-bnnet.json");
    write_file(mdl, BN_MODEL);
    const RunCase c = { "bn-dp2-mb2", 0, { NULL },
                        "{\"mesh\": {\"dp\": 2}, \"pipeline\": {\"microbatches\": 2}}", 2, EXACT };
    const char *strategy = case_strategy(&c);
    Res r = {0};
    run_verified(&r, mdl, strategy, STEPS, 2, EXACT);
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * Failures */

static const char *dp4(int m)
{
    const RunCase c = { m == M_MLP ? "mlp-dp4" : "gpt-dp4", m, { "dp", "--world", "4" }, NULL, 4,
                        NULL };
    return case_strategy(&c);
}

/* mpirun -np 2 of a 4-rank strategy: every rank refuses, naming both sizes. */
static void test_wrong_world(void **state)
{
    (void)state;
    Res r = {0};
    const RunOpts o = { .prog = "mpirun" };
    RUNO(&r, &o, "--allow-run-as-root", "--oversubscribe", "-np", "2", harness_bin(), "run",
         "--model", model(M_GPT), "--strategy", dp4(M_GPT), "--steps", STEPS, "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "needs 4 ranks", "has 2", "mpirun -np 2");
    EXPECT_NOT_OUT(&r, "step ");
    res_free(&r);
}

/* --profile-ops: the table of where a step goes names the ops, the
 * optimizer and the all-reduces of a data-parallel MLP, and its rows are
 * parts of the step (they add up to no more than it). */
static void test_profile_ops(void **state)
{
    (void)state;
    Res r = {0};
    RUNO(&r, NULL, "run", "--model", model(M_MLP), "--strategy", dp4(M_MLP), "--steps", STEPS,
         "--no-store", "--profile-ops");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "where a step goes (mean over 4 ranks and 2 steps after the first):\n",
               "matmul forward ", "matmul backward (weight) ", "optimizer update ", "allreduce ");
    const char *p = strstr(r.out, "where a step goes");
    double sum = 0, step = -1;
    for (p = strchr(p, '\n') + 1; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        char line[256];
        size_t len = strcspn(p, "\n");
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, p, len);
        line[len] = 0;
        double n, ms, share;
        if (strncmp(line, "  step ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%lf", &step), 1);
            break;
        }
        /* "  what   per-step   ms   share%" */
        char *pct = strrchr(line, '%');
        if (!pct) continue;
        *pct = 0;
        char *c = strrchr(line, ' ');
        share = atof(c);
        *c = 0;
        c = strrchr(line, ' ');
        ms = atof(c);
        *c = 0;
        c = strrchr(line, ' ');
        n = atof(c);
        assert_true(n >= 0 && ms >= 0 && share >= 0);
        sum += ms;
    }
    if (!(step > 0) || sum > step * 1.05) {
        print_error("the rows add up to %.3f ms, the step is %.3f ms\n", sum, step);
        dump(&r);
        fail();
    }
    res_free(&r);
}

static void test_backend_unknown_is_usage(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "run", "--model", model(M_MLP), "--strategy", dp4(M_MLP), "--backend", "gpu",
           "--no-store");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--backend", "\"gpu\"", "cpu or cuda");
    assert_string_equal(r.out, "");
    res_free(&r);
}

/* Without a GPU (or a build without CUDA) every rank says why it cannot run;
 * with one GPU, the 4 ranks of dp4 are 3 too many. */
static void test_backend_cuda_needs_gpus(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "run", "--model", model(M_MLP), "--strategy", dp4(M_MLP), "--backend", "cuda",
           "--no-store");
    EXPECT_RC(&r, 1);
    bool said = strstr(r.err, "no CUDA device found") || strstr(r.err, "built without CUDA") ||
                strstr(r.err, "one rank per GPU");
    if (!said) dump(&r);
    assert_true(said);
    EXPECT_NOT_OUT(&r, "step ");
    res_free(&r);
}

/* One rank on the GPU, every zoo model of the matrix, --verify against the
 * same run on the CPU. Skipped, saying why, where there is no GPU. */
static void test_cuda_verify(void **state)
{
    (void)state;
    static const char *names[M_COUNT] = { "mlp-dp1", "gpt-dp1", "vgg-dp1", "moe-dp1",
                                          "mlp4-dp1", "gpt4-dp1", "fire-dp1", "mse-dp1" };
    for (int m = 0; m < M_COUNT; m++) {
        const RunCase c = { names[m], m, { "dp", "--world", "1" }, NULL, 1, NULL };
        const char *strategy = case_strategy(&c);
        Res r = {0};
        RUNO(&r, NULL, "run", "--model", model(m), "--strategy", strategy, "--steps", STEPS,
             "--backend", "cuda", "--verify", "--no-store");
        if (r.rc != 0 && (strstr(r.err, "no CUDA device found") || strstr(r.err, "built without CUDA"))) {
            const char *why = strstr(r.err, "no CUDA device found") ? "no CUDA device found"
                                                                     : "strata was built without CUDA";
            print_message("GPU tests skipped: %s\n", why);
            res_free(&r);
            skip();
        }
        if (r.rc != 0) dump(&r);
        EXPECT_RC(&r, 0);
        EXPECT_OUT(&r, "on 1 rank (", "verify against one CPU rank", "verify: OK\n");
        EXPECT_NOT_OUT(&r, "FAILED");
        res_free(&r);
    }
}

/* A cluster like local-cpu, with 4 devices of about 1 KiB each. */
static const char *tiny_cluster(void)
{
    char *text = slurp(rp("clusters/local-cpu.json"), NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    track_json(j);
    cJSON_ReplaceItemInObjectCaseSensitive(j, "name", cJSON_CreateString("tiny-memory"));
    cJSON *dev = cJSON_GetArrayItem(JARR(j, "devices"), 0), *lev = cJSON_GetArrayItem(JARR(j, "levels"), 0);
    assert_non_null(dev);
    assert_non_null(lev);
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(dev, "count", cJSON_CreateNumber(4)));
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(dev, "memory_gib", cJSON_CreateNumber(0.000001)));
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(lev, "count", cJSON_CreateNumber(4)));
    char *out = cJSON_Print(j);
    const char *p = tp("tiny-memory.json");
    write_file(p, out);
    cJSON_free(out);
    release(j);
    return p;
}

static void test_does_not_fit(void **state)
{
    (void)state;
    Res r = {0};
    RUNO(&r, NULL, "run", "--model", model(M_GPT), "--strategy", dp4(M_GPT), "--cluster",
         tiny_cluster(), "--steps", STEPS, "--verify", "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "does not fit", "needs", "has");
    EXPECT_NOT_OUT(&r, "step ");
    res_free(&r);
}

/* STRATA_FAULT=1:1 kills rank 1 at the start of step 1: the job must end by
 * itself, non-zero, and say which rank died. */
static void test_rank_dies(void **state)
{
    (void)state;
    Res r = {0};
    const RunOpts o = { .env = "STRATA_FAULT=1:1", .deadline_s = FAULT_DEADLINE_S,
                        .may_be_killed = true };
    RUNO(&r, &o, "run", "--model", model(M_GPT), "--strategy", dp4(M_GPT), "--steps", STEPS,
         "--verify", "--no-store");
    if (r.rc == 0) {
        print_error("a run that lost rank 1 exited 0\n");
        dump(&r);
        fail();
    }
    if (!strstr(r.out, "rank 1") && !strstr(r.err, "rank 1")) {
        print_error("the output does not name \"rank 1\"\n");
        dump(&r);
        fail();
    }
    EXPECT_NOT_OUT(&r, "verify: OK");
    EXPECT_NOT_OUT(&r, "step   2");
    res_free(&r);
}

/* --verify compares the final params with one rank's: a wrong update of a
 * whole row (STRATA_FAULT_PARAM adds 1e-3 to the first 64 elements of a
 * param, as gathered) fails it; one element off by less than Adam's step,
 * as rounding noise in a near-zero gradient leaves it, does not. */
static void test_verify_catches_wrong_params(void **state)
{
    (void)state;
    Res r = {0};
    RunOpts o = { .env = "STRATA_FAULT_PARAM=blocks.0.mlp.w1:0.001:64" };
    RUNO(&r, &o, "run", "--model", model(M_GPT), "--strategy", dp4(M_GPT), "--steps", STEPS,
         "--verify", "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "verify FAILED", "blocks.0.mlp.w1");
    o.env = "STRATA_FAULT_PARAM=blocks.0.mlp.w1:0.0005:1";
    RUNO(&r, &o, "run", "--model", model(M_GPT), "--strategy", dp4(M_GPT), "--steps", STEPS,
         "--verify", "--no-store");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "rounding noise in a few elements", "verify: OK");
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * Storing */

static void test_store_run(void **state)
{
    (void)state;
    /* the --no-store runs before this one left no default database behind */
    assert_false(exists(tp("strata.db")));
    Res r = {0};
    const char *db = tp("runs.db");
    STRATA(&r, "run", "--model", model(M_MLP), "--strategy", dp4(M_MLP), "--steps", STEPS,
           "--verify", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "verify: OK", "stored as run ");
    char run[17], plan[17];
    id_after(r.out, "stored as run ", run);
    id_after(r.out, " (plan ", plan);
    assert_true(exists(db));
    assert_false(exists(tp("strata.db")));

    STRATA(&r, "runs", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, run, plan, "mlp", "cpu", "ok");
    STRATA(&r, "runs", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    const cJSON *row = cJSON_GetArrayItem(j, 0);
    assert_string_equal(JSTR(row, "id"), run);
    assert_string_equal(JSTR(row, "plan_id"), plan);
    assert_int_equal((int)JNUM(row, "world"), 4);
    assert_int_equal((int)JNUM(row, "steps"), 3);
    assert_string_equal(JSTR(row, "status"), "ok");
    /* its start to the millisecond, as every time in the store */
    const char *started = JSTR(row, "started");
    assert_true(strlen(started) == 24 && started[19] == '.' && started[23] == 'Z');
    release(j);

    /* runs show: one row per rank and step, 4 x 3 */
    STRATA(&r, "runs", "show", run, "--db", db);
    EXPECT_RC(&r, 0);
    char head[64];
    snprintf(head, sizeof head, "run %s:", run);
    EXPECT_OUT(&r, head, plan, "4 ranks on cpu", "3 steps", "verify:");
    STRATA(&r, "runs", "show", run, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    assert_int_equal((int)JNUM(j, "world"), 4);
    assert_int_equal((int)JNUM(j, "steps"), 3);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(JOBJ(j, "verify"), "pass")));
    const cJSON *ms = JARR(j, "measurements"), *m;
    assert_int_equal(cJSON_GetArraySize(ms), 12);
    int seen[3][4] = {{0}};
    cJSON_ArrayForEach(m, ms) {
        int st = (int)JNUM(m, "step"), rk = (int)JNUM(m, "rank");
        assert_true(st >= 0 && st < 3 && rk >= 0 && rk < 4);
        seen[st][rk]++;
        double loss = JNUM(m, "loss"), step_s = JNUM(m, "step_s");
        assert_true(isfinite(loss) && loss > 0);
        assert_true(step_s > 0);
        assert_true(JNUM(m, "compute_s") >= 0 && JNUM(m, "comm_s") >= 0 && JNUM(m, "idle_s") >= 0);
    }
    for (int st = 0; st < 3; st++)
        for (int rk = 0; rk < 4; rk++) assert_int_equal(seen[st][rk], 1);
    release(j);

    /* the run's plan is stored too */
    STRATA(&r, "plans", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, plan, "mlp");
    STRATA(&r, "plans", "show", plan, "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "4 ranks", "mesh: dp=4");
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * main */

static int group_setup(void **state)
{
    (void)state;
    /* LeakSanitizer (SAN=1) in the ranks: Open MPI's own allocations at exit
     * are suppressed, nothing of strata's */
    return harness_setup(&(HarnessConfig){ .name = "test_run", .deadline_s = DEADLINE_S,
                                           .lsan_supp = "tests/lsan.supp" });
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

int main(void)
{
    static const struct CMUnitTest after[] = {
        cmocka_unit_test_teardown(test_ps_stale, harness_release_all),
        cmocka_unit_test_teardown(test_outer_axis_refused, harness_release_all),
        cmocka_unit_test_teardown(test_batchnorm_microbatches, harness_release_all),
        cmocka_unit_test_teardown(test_wrong_world, harness_release_all),
        cmocka_unit_test_teardown(test_profile_ops, harness_release_all),
        cmocka_unit_test_teardown(test_backend_unknown_is_usage, harness_release_all),
        cmocka_unit_test_teardown(test_backend_cuda_needs_gpus, harness_release_all),
        cmocka_unit_test_teardown(test_cuda_verify, harness_release_all),
        cmocka_unit_test_teardown(test_does_not_fit, harness_release_all),
        cmocka_unit_test_teardown(test_rank_dies, harness_release_all),
        cmocka_unit_test_teardown(test_verify_catches_wrong_params, harness_release_all),
        cmocka_unit_test_teardown(test_store_run, harness_release_all),
    };
    enum { NAFTER = sizeof after / sizeof after[0] };
    struct CMUnitTest tests[NCASES + NAFTER];
    /* one named test per matrix case; its state is the case */
    for (size_t i = 0; i < NCASES; i++)
        tests[i] = (struct CMUnitTest){ .name = CASES[i].name, .test_func = test_case,
                                        .teardown_func = harness_release_all,
                                        .initial_state = (void *)&CASES[i] };
    for (size_t i = 0; i < NAFTER; i++) tests[NCASES + i] = after[i];
    return _cmocka_run_group_tests("test_run", tests, NCASES + NAFTER, group_setup, group_teardown);
}
