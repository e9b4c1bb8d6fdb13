/*
 * test_compact.c — the compact form of a lowered plan (ir_lower_compact):
 * each class's distinct passes lowered once plus the schedule. Expanded, it
 * must be the full program instruction for instruction (every field, every
 * dependency, every argument, every value) with the same memory peak, for
 * every family of strategy, schedule and micro-batch count; and it must
 * stay small when the micro-batch count grows. Its simulation's lower
 * bound (SimOpts.bound) never exceeds the step.
 *
 * Legend: P = pipeline stages, V = chunks per stage, M = micro-batches.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <cmocka.h>

#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/util.h"
#include "ir/zoo.h"
#include "costmodel/costmodel.h"
#include "tests/support/lower_fixtures.h"

/* Fails, naming the plan and the first difference, unless `got` (expanded
 * from the compact form) is `want` (the full lowering). */
static void expect_same_program(const Program *want, const Program *got, const char *what, int k)
{
    if (want->ninstrs != got->ninstrs || want->nvalues != got->nvalues ||
        want->ndeps != got->ndeps || want->nargs != got->nargs)
        fail_msg("%s class %d: %d instrs %d values %d deps %d args, expanded %d %d %d %d", what, k,
                 want->ninstrs, want->nvalues, want->ndeps, want->nargs, got->ninstrs,
                 got->nvalues, got->ndeps, got->nargs);
    for (int i = 0; i < want->ninstrs; i++) {
        Instr bi;
        program_instr_at(got, i, &bi);          /* a shared copy's, renumbered */
        const Instr *a = &want->instrs[i], *b = &bi;
        bool same = !memcmp(a, b, sizeof *a) &&
                    !memcmp(&want->deps[a->dep0], &got->deps[b->dep0],
                            sizeof *want->deps * a->ndeps) &&
                    !memcmp(&want->args[a->arg0], &got->args[b->arg0],
                            sizeof *want->args * a->nargs);
        if (!same)
            fail_msg("%s class %d: instruction %d differs: %s micro %d tensor %d op %d "
                     "(expanded: %s micro %d tensor %d op %d, %d deps vs %d)", what, k, i,
                     instr_kind_name((InstrKind)a->kind), a->micro, a->tensor, a->op,
                     instr_kind_name((InstrKind)b->kind), b->micro, b->tensor, b->op,
                     a->ndeps, b->ndeps);
    }
    for (int v = 0; v < want->nvalues; v++) {
        Value gv;
        program_value_at(got, v, &gv);
        if (memcmp(&want->values[v], &gv, sizeof gv))
            fail_msg("%s class %d: value %d differs (tensor %d micro %d, expanded %d micro %d)",
                     what, k, v, want->values[v].tensor, want->values[v].micro, gv.tensor,
                     gv.micro);
    }
    if (want->peak_mem != got->peak_mem || want->static_mem != got->static_mem)
        fail_msg("%s class %d: peak %lld static %lld, compact says %lld %lld", what, k,
                 (long long)want->peak_mem, (long long)want->static_mem,
                 (long long)got->peak_mem, (long long)got->static_mem);
    if (want->stage != got->stage || want->nranks != got->nranks ||
        memcmp(want->ranks, got->ranks, sizeof *want->ranks * want->nranks))
        fail_msg("%s class %d: stage or ranks differ", what, k);
}

/* Eight devices, four to a node, of a kind ("gpu" or "cpu": the simulator
 * gives each its own streams). */
static Cluster *cluster8(const char *kind)
{
    char js[1024];
    snprintf(js, sizeof js,
             "{\"name\":\"t\",\"devices\":[{\"name\":\"d\",\"kind\":\"%s\",\"count\":8,"
             "\"peak_tflops\":{\"f32\":10},\"memory_gib\":80,\"memory_bw_gbps\":1000}],"
             "\"levels\":[{\"name\":\"gpu\",\"count\":4,\"link\":\"nvlink\",\"bw_gbps\":100,"
             "\"latency_us\":1},{\"name\":\"node\",\"count\":2,\"link\":\"ib\",\"bw_gbps\":10,"
             "\"latency_us\":5}]}", kind);
    cJSON *j = cJSON_Parse(js);
    Err err = { 0 };
    Cluster *c = cluster_from_json(j, 0, &err);
    cJSON_Delete(j);
    if (!c) fail_msg("cluster: %s", err.msg);
    return c;
}

static void expect_close(double want, double got, const char *what, const char *json, int k)
{
    if (fabs(want - got) > 1e-9 * fmax(fabs(want), 1e-9))
        fail_msg("%s: class %d %s: full simulation %.12g, compact %.12g", json, k, what, want, got);
}

/* The simulation of the compact plan (regular passes run whole) gives what
 * the instruction-level simulation of the full program gives. */
static void check_simulation(const Graph *g, const Strategy *s, const Plan *full,
                             const Plan *cp, const char *json)
{
    const char *kinds[] = { "gpu", "cpu" };
    for (int d = 0; d < 2; d++) {
        Cluster *c = cluster8(kinds[d]);
        SimResult a, b;
        Err err = { 0 };
        if (cost_simulate(g, c, s, full, NULL, &a, &err)) fail_msg("%s: %s", json, err.msg);
        if (cost_simulate(g, c, s, cp, NULL, &b, &err)) fail_msg("%s (compact): %s", json, err.msg);
        expect_close(a.step_time, b.step_time, "step time", json, -1);
        expect_close(a.bubble, b.bubble, "bubble", json, -1);
        for (int k = 0; k < a.nclasses; k++) {
            expect_close(a.classes[k].busy_compute, b.classes[k].busy_compute, "busy compute", json, k);
            expect_close(a.classes[k].busy_comm, b.classes[k].busy_comm, "busy comm", json, k);
            expect_close(a.classes[k].exposed_comm, b.classes[k].exposed_comm, "exposed comm", json, k);
            expect_close(a.classes[k].flops, b.classes[k].flops, "flops", json, k);
            expect_close((double)a.classes[k].peak_mem, (double)b.classes[k].peak_mem, "peak", json, k);
        }
        for (int q = 0; q < CM_SRC_COUNT; q++) assert_int_equal(a.op_count[q], b.op_count[q]);
        /* the lower bound holds, and a bound at it stops the simulation
         * there; just above it, the step is simulated as before */
        if (!(b.lower_bound > 0 && b.lower_bound <= b.step_time * (1 + 1e-12)))
            fail_msg("%s (%s): lower bound %.12g, step %.12g", json, kinds[d], b.lower_bound,
                     b.step_time);
        SimOpts at = { .bound = b.lower_bound }, above = { .bound = b.lower_bound * 1.000001 };
        SimResult e;
        assert_int_equal(cost_simulate(g, c, s, cp, &at, &e, &err), -1);
        assert_string_equal(err.msg, SIM_BOUND);
        assert_true(e.lower_bound == b.lower_bound && e.classes == NULL);
        if (b.step_time > above.bound) {
            if (cost_simulate(g, c, s, cp, &above, &e, &err)) fail_msg("%s: %s", json, err.msg);
            assert_true(e.step_time == b.step_time);
            sim_result_free(&e);
        }
        sim_result_free(&a);
        sim_result_free(&b);
        cluster_free(c);
    }
}

/* The compact plan with classes copied from alike ones (cp) is the one
 * with every class lowered itself, field for field; returns how many
 * classes were copies. */
static int expect_same_compact(const Graph *g, const Strategy *s, const Plan *cp, const char *what)
{
    Err err = { 0 };
    Plan *each = ir_lower_compact_each(g, NULL, s, &err);
    if (!each) fail_msg("%s (each class lowered): %s", what, err.msg);
    assert_int_equal(each->nclasses, cp->nclasses);
    int copies = 0;
    for (int k = 0; k < cp->nclasses; k++) {
        const Program *a = &each->classes[k], *b = &cp->classes[k];
        assert_int_equal(a->like, -1);
        if (b->like >= 0) {
            copies++;
            assert_true(b->like < k);
            /* a copy shares its instructions, not copies them */
            assert_true(b->shared);
            assert_ptr_equal(b->instrs, cp->classes[b->like].instrs);
            assert_ptr_equal(b->values, cp->classes[b->like].values);
        } else {
            assert_false(b->shared);
        }
        expect_same_program(a, b, what, k);
        if (a->nbodies != b->nbodies || a->nsched != b->nsched || a->nhead != b->nhead ||
            a->stage != b->stage || a->device_mem != b->device_mem ||
            memcmp(a->bodies, b->bodies, sizeof *a->bodies * a->nbodies) ||
            memcmp(a->sched, b->sched, sizeof *a->sched * a->nsched))
            fail_msg("%s class %d (a copy of class %d): bodies or schedule differ", what, k, b->like);
    }
    plan_free(each);
    return copies;
}

/* Lowers the strategy both ways and compares every class; returns the
 * compact form's body count summed over classes. */
static int check_plan(const Graph *g, const char *json)
{
    Strategy *s = strat(g, json);
    Err err = { 0 };
    Plan *full = ir_lower(g, NULL, s, &err);
    if (!full) fail_msg("%s: %s", json, err.msg);
    Plan *cp = ir_lower_compact(g, NULL, s, &err);
    if (!cp) fail_msg("%s (compact): %s", json, err.msg);
    /* a deadline already past stops the lowering before its first class */
    Err late = { 0 };
    assert_null(ir_lower_compact_until(g, NULL, s, now_s() - 1, &late));
    assert_string_equal(late.msg, LOWER_LATE);
    for (int k = 0; k < cp->nclasses; k++) assert_true(program_is_compact(&cp->classes[k]));
    assert_int_equal(cp->nclasses, full->nclasses);
    expect_same_compact(g, s, cp, json);
    int bodies = 0;
    Plan *ex = plan_expand(cp);
    for (int k = 0; k < full->nclasses; k++) {
        bodies += cp->classes[k].nbodies;
        /* the compact form states the full program's memory without expanding */
        assert_int_equal(cp->classes[k].peak_mem, full->classes[k].peak_mem);
        expect_same_program(&full->classes[k], &ex->classes[k], json, k);
    }
    for (int r = 0; r < full->world; r++) assert_int_equal(ex->rank_class[r], full->rank_class[r]);
    check_simulation(g, s, full, cp, json);
    /* the summary of a plan is the same compact or full */
    cJSON *sf = plan_summary_json(full, s), *sc = plan_summary_json(cp, s);
    if (!cJSON_Compare(sf, sc, true)) {
        char *a = cJSON_PrintUnformatted(sf), *b = cJSON_PrintUnformatted(sc);
        fail_msg("%s: summaries differ:\n  full    %s\n  compact %s", json, a, b);
    }
    cJSON_Delete(sf);
    cJSON_Delete(sc);
    /* a rank expands its own class only, in place */
    int last = full->nclasses - 1;
    plan_expand_class(cp, last);
    assert_false(program_is_compact(&cp->classes[last]));
    expect_same_program(&full->classes[last], &cp->classes[last], json, last);
    if (cp->nclasses > 1) {       /* a plan partly expanded is not simulated */
        Cluster *c = cluster8("gpu");
        SimResult r;
        Err e = { 0 };
        assert_int_equal(cost_simulate(g, c, s, cp, NULL, &r, &e), -1);
        assert_non_null(strstr(e.msg, "expanded"));
        cluster_free(c);
    }
    /* and the rest, the classes others share first: those copies then
     * have instructions of their own, expanded as before */
    for (int k = 0; k < last; k++) {
        plan_expand_class(cp, k);
        expect_same_program(&full->classes[k], &cp->classes[k], json, k);
    }
    /* expanding a full plan copies it */
    Plan *copy = plan_expand(full);
    for (int k = 0; k < full->nclasses; k++)
        expect_same_program(&full->classes[k], &copy->classes[k], json, k);
    plan_free(copy);
    plan_free(ex);
    plan_free(cp);
    plan_free(full);
    strategy_free(s);
    return bodies;
}

#define TP_OPS ",\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}"

/* Every schedule at every micro-batch count from 1 to 9, with and without
 * data and tensor parallelism and the tied embedding. */
static void test_schedules(void **state)
{
    (void)state;
    const char *meshes[] = { "\"pp\":2", "\"pp\":4", "\"dp\":2,\"pp\":2", "\"pp\":2,\"tp\":2" };
    const char *scheds[] = { "gpipe", "1f1b", "interleaved" };
    int cases = 0;
    for (int tied = 0; tied < 2; tied++) {
        GptShape x = { 8, 32, 4, 16, 64, 72, tied };
        Graph *g = gpt(x);
        for (size_t me = 0; me < sizeof meshes / sizeof *meshes; me++)
            for (int sc = 0; sc < 3; sc++)
                for (int M = 1; M <= 9; M++) {
                    int P = strstr(meshes[me], "\"pp\":4") ? 4 : 2;
                    bool dp = strstr(meshes[me], "dp") != NULL;
                    if (x.B % ((dp ? 2 : 1) * M)) continue;
                    if (sc == 2 && M % P) continue;      /* interleaving wants M a multiple of P */
                    char js[2048];
                    snprintf(js, sizeof js, "{\"mesh\":{%s},\"pipeline\":{\"microbatches\":%d,"
                             "\"schedule\":\"%s\"%s}%s}", meshes[me], M, scheds[sc],
                             sc == 2 ? ",\"virtual\":2" : "",
                             strstr(meshes[me], "tp") ? TP_OPS : "");
                    check_plan(g, js);
                    cases++;
                }
        graph_free(g);
    }
    assert_true(cases >= 60);
}

/* Gradient synchronisation of every kind, recompute and compression, with
 * and without a pipeline. */
static void test_policies(void **state)
{
    (void)state;
    GptShape x = { 4, 32, 4, 16, 64, 24, false };
    Graph *g = gpt(x);
    const char *policies[] = {
        "",
        ",\"ops\":{\"*\":{\"recompute\":true}}",
        ",\"ops\":{\"blocks.*\":{\"recompute\":true}}",
        ",\"params\":{\"*\":{\"shard\":\"zero1\"}}",
        ",\"params\":{\"*\":{\"shard\":\"zero2\"}}",
        ",\"params\":{\"*\":{\"shard\":\"zero3\"}}",
        ",\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2}}}",
        ",\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2,\"staleness\":1}}}",
        ",\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"fp16\"}}}",
        ",\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"int8\"}}}",
        ",\"params\":{\"blocks.*.mlp.w*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"powersgd:2\"}}}",
        ",\"params\":{\"blocks.*.mlp.w1\":{\"sync\":{\"method\":\"sfb\"}}}",
    };
    const char *pipes[] = { "\"dp\":2", "\"dp\":2,\"pp\":2" };
    for (size_t e = 0; e < sizeof policies / sizeof *policies; e++)
        for (int pi = 0; pi < 2; pi++)
            for (int M = 1; M <= 6; M++) {
                if (x.B % (2 * M)) continue;
                char js[1024];
                snprintf(js, sizeof js, "{\"mesh\":{%s},\"pipeline\":{\"microbatches\":%d}%s}",
                         pipes[pi], M, policies[e]);
                check_plan(g, js);
            }
    graph_free(g);
}

/* Other model families: an MLP, a mixture of experts with expert
 * parallelism, a CNN. */
static void test_models(void **state)
{
    (void)state;
    struct {
        const char *kind;
        const char *keys[4], *vals[4];
        int nopts;
        const char *json;
    } cases[] = {
        { "mlp", { "layers", "batch" }, { "4", "16" }, 2,
          "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"microbatches\":4}}" },
        { "moe", { "layers", "batch" }, { "2", "8" }, 2,
          "{\"mesh\":{\"dp\":2},\"pipeline\":{\"microbatches\":4},"
          "\"ops\":{\"blocks.*.moe.fc*\":{\"split\":{\"b\":null,\"e\":\"dp\"}},"
          "\"blocks.*.moe.gelu\":{\"split\":{\"b\":null,\"e\":\"dp\"}}}}" },
        { "vgg16", { "batch", "image" }, { "8", "32" }, 2,
          "{\"mesh\":{\"dp\":2},\"pipeline\":{\"microbatches\":4}}" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        Err err = { 0 };
        Graph *g = zoo_build(cases[c].kind, cases[c].nopts, cases[c].keys, cases[c].vals, &err);
        if (!g) fail_msg("%s: %s", cases[c].kind, err.msg);
        Strategy *s = NULL;
        cJSON *j = cJSON_Parse(cases[c].json);
        s = strategy_from_json(j, g, NULL, &err);
        cJSON_Delete(j);
        if (!s) {
            graph_free(g);
            fail_msg("%s: %s", cases[c].json, err.msg);
        }
        strategy_free(s);
        check_plan(g, cases[c].json);
        graph_free(g);
    }
}

/* Context parallelism beside parameter servers: the sequence's gathers
 * join ranks of different server roles, so classes meet in collectives
 * inside every pass. Twin classes run those passes whole together, and
 * the result is still the instruction-level one. */
static void test_twins(void **state)
{
    (void)state;
    GptShape x = { 2, 32, 4, 16, 64, 16, false };
    Graph *g = gpt(x);
    /* "*": the position embedding too, whose servers serve each part of it */
    const char *ps[] = { "blocks.*.attn.bo", "blocks.*", "*" };
    for (size_t e = 0; e < sizeof ps / sizeof *ps; e++)
        for (int M = 1; M <= 4; M *= 2) {
            char js[1024];
            snprintf(js, sizeof js, "{\"mesh\":{\"pp\":2,\"dp\":2,\"dp_cp\":2},\"pipeline\":"
                     "{\"microbatches\":%d},\"ops\":{\"*\":{\"split\":{\"b\":\"dp\","
                     "\"s\":\"dp_cp\"}}},\"params\":{\"%s\":{\"sync\":{\"method\":\"ps\","
                     "\"shards\":2}}}}", M, ps[e]);
            check_plan(g, js);
            Strategy *s = strat(g, js);
            Plan *cp = lower(g, s);
            Err err = { 0 };
            Plan *c2 = ir_lower_compact(g, NULL, s, &err);
            Cluster *c = cluster8("gpu");
            SimResult r;
            if (cost_simulate(g, c, s, c2, NULL, &r, &err)) fail_msg("%s: %s", js, err.msg);
            /* more classes than stages: the server roles split them */
            assert_true(c2->nclasses > 2);
            /* every pass but each class's last backward (its gradients
             * go to the servers) runs whole */
            if (r.passes_whole < r.passes - c2->nclasses)
                fail_msg("%s: %lld of %lld passes run whole", js, (long long)r.passes_whole,
                         (long long)r.passes);
            sim_result_free(&r);
            cluster_free(c);
            plan_free(c2);
            plan_free(cp);
            strategy_free(s);
        }
    graph_free(g);
}

/* The compact plan of json (strategy *s, caller frees both), held to
 * the one with every class lowered itself; *copies: how many classes
 * were copies. */
static Plan *lower_alike(const Graph *g, const char *json, Strategy **s, int *copies)
{
    *s = strat(g, json);
    Err err = { 0 };
    Plan *cp = ir_lower_compact(g, NULL, *s, &err);
    if (!cp) fail_msg("%s: %s", json, err.msg);
    *copies = expect_same_compact(g, *s, cp, json);
    return cp;
}

/* Classes alike: the middle stages of an 8-stage pipeline over 16 blocks
 * are copies of the first of them, under every family of policy, and
 * field for field what lowering each gives; the first and last stages
 * (embedding, head) and a stage whose blocks a policy singles out are
 * lowered themselves. */
static void test_alike(void **state)
{
    (void)state;
    GptShape x = { 16, 32, 4, 16, 64, 16, false };
    Graph *g = gpt(x);
    const char *policies[] = {
        "",
        ",\"ops\":{\"blocks.*\":{\"recompute\":true}}",
        ",\"params\":{\"*\":{\"shard\":\"zero1\"}}",
        ",\"params\":{\"*\":{\"shard\":\"zero3\"}}",
        ",\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"int8\"}}}",
        ",\"params\":{\"blocks.*.mlp.w*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"powersgd:2\"}}}",
        ",\"params\":{\"blocks.*.mlp.w1\":{\"sync\":{\"method\":\"sfb\"}}}",
        TP_OPS,
    };
    const char *pipes[] = { "\"schedule\":\"1f1b\"", "\"schedule\":\"gpipe\"",
                            "\"schedule\":\"interleaved\",\"virtual\":2" };
    for (size_t e = 0; e < sizeof policies / sizeof *policies; e++)
        for (int pi = 0; pi < 3; pi++) {
            char js[1024];
            snprintf(js, sizeof js, "{\"mesh\":{\"pp\":8,\"%s\":2},\"pipeline\":"
                     "{\"microbatches\":8,%s}%s}", strstr(policies[e], "\"tp\"") ? "tp" : "dp",
                     pipes[pi], policies[e]);
            Strategy *s;
            int copies;
            Plan *cp = lower_alike(g, js, &s, &copies);
            /* stages 1..6 hold blocks alike; interleaved, each stage's two
             * chunks hold the embedding's or the head's neighbours */
            if (pi < 2 && copies != 5) fail_msg("%s: %d classes copied, want 5", js, copies);
            assert_int_equal(cp->classes[0].like, -1);
            assert_int_equal(cp->classes[1].like, -1);
            assert_int_equal(cp->classes[7].like, -1);
            plan_free(cp);
            strategy_free(s);
        }
    /* eight stages over two nodes of four: stages 3 and 4, copies of
     * stage 1, send or receive over the slower link, so their transfers
     * take other times than stage 1's; the simulation is still the full
     * program's */
    check_plan(g, "{\"mesh\":{\"pp\":8},\"pipeline\":{\"microbatches\":8}}");
    /* uneven cuts: stages of other sizes are lowered themselves; the
     * two of two blocks each after the first copy it */
    Strategy *s;
    int copies;
    Plan *cp = lower_alike(g, "{\"mesh\":{\"pp\":4,\"dp\":2},\"pipeline\":{\"microbatches\":4,"
                              "\"cuts\":[5,7,9]}}", &s, &copies);
    assert_int_equal(copies, 1);
    assert_int_equal(cp->classes[2].like, 1);
    plan_free(cp);
    strategy_free(s);
    /* recompute on blocks 6 and 7 alone (stage 3): stage 3 is lowered
     * itself, stages 4-6 copy stage 2 */
    cp = lower_alike(g, "{\"mesh\":{\"pp\":8,\"dp\":2},\"pipeline\":{\"microbatches\":4},"
                        "\"ops\":{\"blocks.6.*\":{\"recompute\":true},"
                        "\"blocks.7.*\":{\"recompute\":true}}}", &s, &copies);
    assert_int_equal(copies, 4);
    assert_int_equal(cp->classes[3].like, -1);
    assert_int_equal(cp->classes[4].like, 2);
    plan_free(cp);
    strategy_free(s);
    graph_free(g);

    /* other families on four stages: a mixture of experts (dense and
     * expert blocks) and VGG-16 (every stage's convolutions of their own
     * sizes), each class held to the one lowered itself */
    struct {
        const char *kind, *keys[2], *vals[2], *json;
    } fam[] = {
        { "moe", { "layers", "batch" }, { "8", "16" },
          "{\"mesh\":{\"pp\":4,\"dp\":2},\"pipeline\":{\"microbatches\":4},"
          "\"ops\":{\"blocks.*.moe.fc*\":{\"split\":{\"b\":null,\"e\":\"dp\"}},"
          "\"blocks.*.moe.gelu\":{\"split\":{\"b\":null,\"e\":\"dp\"}}}}" },
        { "vgg16", { "batch", "image" }, { "8", "32" },
          "{\"mesh\":{\"pp\":4,\"dp\":2},\"pipeline\":{\"microbatches\":4}}" },
    };
    for (size_t f = 0; f < sizeof fam / sizeof *fam; f++) {
        Err err = { 0 };
        Graph *gf = zoo_build(fam[f].kind, 2, fam[f].keys, fam[f].vals, &err);
        if (!gf) fail_msg("%s: %s", fam[f].kind, err.msg);
        Strategy *sf;
        Plan *pf = lower_alike(gf, fam[f].json, &sf, &copies);
        printf("  %s on 4 stages: %d of %d classes copied\n", fam[f].kind, copies, pf->nclasses);
        plan_free(pf);
        strategy_free(sf);
        graph_free(gf);
    }
}

/* The simulation of json's compact plan on devices of `kind`, held to the
 * one that runs every pass (SimOpts.every_pass): the same figures, to
 * rounding, and no more passes evaluated. A pass after the skipped ones
 * meets the inputs it would have met, so it replays what it would have
 * replayed; an input left stale by the skip would miss the memo instead.
 * (Fewer is possible: a steady state that drifts by less than the memo's
 * quantum per period is taken as repeating, where running every pass
 * meets the drift's sum and evaluates again.) */
static SimResult steady_against_every_pass(const Graph *g, const char *js, const char *kind)
{
    Strategy *s = strat(g, js);
    Err err = { 0 };
    Plan *cp = ir_lower_compact(g, NULL, s, &err);
    Cluster *c = cluster8(kind);
    SimResult r, a;
    SimOpts every = { .every_pass = true };
    if (!cp || cost_simulate(g, c, s, cp, NULL, &r, &err) ||
        cost_simulate(g, c, s, cp, &every, &a, &err))
        fail_msg("%s: %s", js, err.msg);
    assert_int_equal(a.passes_skipped, 0);
    assert_true(r.passes_skipped <= r.passes_whole - r.passes_evaluated);
    assert_int_equal(r.passes_whole, a.passes_whole);
    if (r.passes_evaluated > a.passes_evaluated)
        fail_msg("%s (%s): %lld passes evaluated, %lld running every pass", js, kind,
                 (long long)r.passes_evaluated, (long long)a.passes_evaluated);
    for (int q = 0; q < CM_SRC_COUNT; q++) assert_int_equal(r.op_count[q], a.op_count[q]);
    const double tight = 1e-12;
    struct { const char *what; double a, b; } f[] = {
        { "step time", a.step_time, r.step_time }, { "bubble", a.bubble, r.bubble },
    };
    for (size_t k = 0; k < sizeof f / sizeof *f; k++)
        if (fabs(f[k].a - f[k].b) > tight * fabs(f[k].a))
            fail_msg("%s: %s %.17g running every pass, %.17g skipping", js, f[k].what, f[k].a, f[k].b);
    for (int k = 0; k < a.nclasses; k++) {
        const SimClass *x = &a.classes[k], *y = &r.classes[k];
        struct { const char *what; double a, b; } h[] = {
            { "busy compute", x->busy_compute, y->busy_compute },
            { "busy comm", x->busy_comm, y->busy_comm },
            { "exposed comm", x->exposed_comm, y->exposed_comm },
            { "recompute", x->recompute, y->recompute },
            { "flops", x->flops, y->flops },
            { "instructions", (double)x->main_instrs, (double)y->main_instrs },
        };
        for (size_t q = 0; q < sizeof h / sizeof *h; q++)
            if (fabs(h[q].a - h[q].b) > tight * fabs(h[q].a))
                fail_msg("%s: class %d %s %.17g running every pass, %.17g skipping", js, k,
                         h[q].what, h[q].a, h[q].b);
    }
    sim_result_free(&a);
    cluster_free(c);
    plan_free(cp);
    strategy_free(s);
    return r;
}

/* A long steady state: with many more micro-batches than stages, 1F1B
 * repeats one forward and one backward per stage for most of the step,
 * and the simulator steps over those periods instead of running them.
 * The result is still the instruction-level simulation of the full
 * program (check_plan) and the simulation running every pass, under every
 * family of policy and on both kinds of device; interleaving (which skips
 * less: its period is 2 V P passes) and GPipe (which never repeats with
 * every stage at once) are held to them too. */
static void test_steady(void **state)
{
    (void)state;
    const char *policies[] = {
        "",
        ",\"ops\":{\"blocks.*\":{\"recompute\":true}}",
        ",\"params\":{\"blocks.*\":{\"shard\":\"zero1\"}}",
        ",\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"fp16\"}}}",
        TP_OPS,
    };
    /* 1F1B balanced, with the last stage and with the first the slowest
     * (the stages upstream wait for gradients, or those downstream for
     * activations), interleaved, GPipe */
    const char *pipes[] = { "\"schedule\":\"1f1b\"", "\"schedule\":\"1f1b\",\"cuts\":[1,2,3]",
                            "\"schedule\":\"1f1b\",\"cuts\":[5,6,7]",
                            "\"schedule\":\"interleaved\",\"virtual\":2", "\"schedule\":\"gpipe\"" };
    for (int tied = 0; tied < 2; tied++) {
        GptShape x = { 8, 32, 4, 16, 64, 64, tied };
        Graph *g = gpt(x);
        for (size_t e = 0; e < sizeof policies / sizeof *policies; e++)
            for (int pi = 0; pi < 5; pi++)
                for (int M = 16; M <= 32; M *= 2) {
                    bool tp = strstr(policies[e], "\"tp\"") != NULL;
                    char js[1024];
                    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":4,\"%s\":2},\"pipeline\":"
                             "{\"microbatches\":%d,%s}%s}", tp ? "tp" : "dp", M, pipes[pi],
                             policies[e]);
                    check_plan(g, js);
                    if (pi > 3) continue;
                    SimResult r = steady_against_every_pass(g, js, "cpu");
                    sim_result_free(&r);
                    r = steady_against_every_pass(g, js, "gpu");
                    /* 1F1B on GPUs: passes stepped over, half of them at M 32 */
                    if (pi < 3 && r.passes_skipped * (M == 16 ? 4 : 2) < r.passes)
                        fail_msg("%s: %lld of %lld passes skipped", js,
                                 (long long)r.passes_skipped, (long long)r.passes);
                    sim_result_free(&r);
                }
        graph_free(g);
    }
}

/* The compact form holds a fixed number of bodies whatever M is: two
 * forward and two backward per chunk (the first micro-batch's, standing for
 * all but the last, and the last's), and the tail. */
static void test_size(void **state)
{
    (void)state;
    GptShape x = { 4, 32, 4, 16, 64, 64, true };
    Graph *g = gpt(x);
    char js[256];
    int bodies[2];
    int Ms[2] = { 8, 64 };
    for (int k = 0; k < 2; k++) {
        snprintf(js, sizeof js, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":%d,"
                                "\"schedule\":\"interleaved\",\"virtual\":2}}", Ms[k]);
        Strategy *s = strat(g, js);
        Err err = { 0 };
        Plan *cp = ir_lower_compact(g, NULL, s, &err);
        assert_non_null(cp);
        bodies[k] = 0;
        for (int c = 0; c < cp->nclasses; c++) {
            const Program *pr = &cp->classes[c];
            bodies[k] += pr->nbodies;
            assert_int_equal(pr->nbodies, 2 * 2 * 2 + 1);
            assert_int_equal(pr->nsched, 2 * 2 * Ms[k]);
        }
        plan_free(cp);
        strategy_free(s);
    }
    assert_int_equal(bodies[0], bodies[1]);
    graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_twins),
        cmocka_unit_test(test_alike),
        cmocka_unit_test(test_steady),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
