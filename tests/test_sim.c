/*
 * test_sim.c — the simulator against timelines computed by hand, and on
 * lowered plans of every strategy kind.
 *
 * The hand-built programs price each instruction themselves (SimOpts
 * callbacks): a compute instruction takes `flops` seconds and a
 * communication `mem_bytes` seconds, so every makespan below follows from
 * the schedule alone.
 *
 * Legend: P = stages, m = micro-batches, f/b = forward/backward time of one
 * micro-batch on one stage, F_k/B_k = forward/backward of micro-batch k.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "costmodel/costmodel.h"
#include "costmodel/train.h"
#include "ir/cluster.h"
#include "ir/util.h"
#include "tests/support/lower_fixtures.h"

#define EPS 1e-9

static double own_compute(void *ctx, int cls, const Instr *in)
{
    (void)ctx;
    (void)cls;
    return in->flops;
}

static double own_comm(void *ctx, int cls, const Instr *in)
{
    (void)ctx;
    (void)cls;
    return in->mem_bytes;
}

static Cluster *cluster_kind(int n, double mem_gib, const char *kind)
{
    char js[1024];
    snprintf(js, sizeof js,
             "{\"name\":\"test\",\"devices\":[{\"name\":\"d\",\"kind\":\"%s\",\"count\":%d,"
             "\"peak_tflops\":{\"f32\":10},\"memory_gib\":%g,\"memory_bw_gbps\":1000}],"
             "\"levels\":[{\"name\":\"gpu\",\"count\":%d,\"link\":\"nvlink\",\"bw_gbps\":100,"
             "\"latency_us\":1}]}", kind, n, mem_gib, n);
    cJSON *j = cJSON_Parse(js);
    Err err = {0};
    Cluster *c = cluster_from_json(j, 0, &err);
    cJSON_Delete(j);
    if (!c) fail_msg("cluster: %s", err.msg);
    return c;
}

static Cluster *cluster_n(int n, double mem_gib)
{
    return cluster_kind(n, mem_gib, "gpu");
}

/* ----------------------------------------------------------------------------
 * Hand-built programs */

typedef struct {
    Plan p;
    Program pr[4];
    int rank_class[4];
    int ranks[4];
} Hand;

static void hand_init(Hand *h, int nclasses)
{
    memset(h, 0, sizeof *h);
    h->p.world = nclasses;
    h->p.nclasses = nclasses;
    h->p.classes = h->pr;
    h->p.rank_class = h->rank_class;
    for (int c = 0; c < nclasses; c++) {
        h->rank_class[c] = c;
        h->ranks[c] = c;
        h->pr[c].nranks = 1;
        h->pr[c].ranks = &h->ranks[c];
        h->pr[c].cap_instrs = 64;
        h->pr[c].instrs = calloc(64, sizeof(Instr));
        h->pr[c].cap_deps = 256;
        h->pr[c].deps = calloc(256, sizeof(int32_t));
    }
}

static void hand_free(Hand *h)
{
    for (int c = 0; c < h->p.nclasses; c++) {
        free(h->pr[c].instrs);
        free(h->pr[c].deps);
    }
}

/* Appends an instruction to class c: seconds is its duration; deps end with -1. */
static int32_t add(Hand *h, int c, InstrKind k, Phase ph, Why why, AxisMask axes, int peer,
                   int tensor, double seconds, ...)
{
    Program *pr = &h->pr[c];
    Instr *in = &pr->instrs[pr->ninstrs];
    memset(in, 0, sizeof *in);
    in->kind = k;
    in->stream = k == I_COMPUTE ? STREAM_COMPUTE : STREAM_COMM;
    in->phase = ph;
    in->why = why;
    in->axes = axes;
    in->peer = peer;
    in->op = -1;
    in->tensor = tensor;
    in->micro = -1;
    /* what the lowering marks (instr_may_run_behind): gradient syncs in
     * place, ZeRO's scatters into and gathers of shards */
    in->behind = (k == I_ALLREDUCE && (why == WHY_GRAD_SYNC || why == WHY_TIED)) ||
                 (k == I_REDUCE_SCATTER && why == WHY_GRAD_SYNC) ||
                 (k == I_ALLGATHER && why == WHY_PARAM_GATHER);
    if (k == I_COMPUTE) in->flops = (float)seconds;
    else in->mem_bytes = (float)seconds;
    in->dep0 = pr->ndeps;
    va_list ap;
    va_start(ap, seconds);
    for (int32_t d; (d = va_arg(ap, int32_t)) >= 0;) pr->deps[pr->ndeps++] = d;
    va_end(ap);
    in->ndeps = pr->ndeps - in->dep0;
    return pr->ninstrs++;
}

static void simulate(const Graph *g, const Cluster *c, const Strategy *s, const Plan *p,
                     SimResult *r)
{
    SimOpts o = { .compute_time = own_compute, .comm_time = own_comm };
    Err err = {0};
    if (cost_simulate(g, c, s, p, &o, r, &err)) fail_msg("simulate: %s", err.msg);
}

/* Stage s's micro-batch: forward (f), send the activation on; later receive
 * its gradient and run the backward (b). `order` lists F/B passes. */
static void pipeline_stage(Hand *h, int st, int P, const char *order, double f, double b,
                           double comm)
{
    int32_t fwd_recv[8], last_bwd = -1;
    int nf = 0, nb = 0;
    (void)last_bwd;
    for (const char *o = order; *o; o++) {
        if (*o == 'F') {
            int mb = nf++;
            int32_t dep = -1;
            if (st > 0) dep = add(h, st, I_RECV, PH_FWD, WHY_PIPELINE, 1, st - 1, 100 + mb, comm, -1);
            int32_t x = add(h, st, I_COMPUTE, PH_FWD, WHY_NONE, 0, -1, -1, f, dep, -1);
            fwd_recv[mb] = x;
            if (st < P - 1) add(h, st, I_SEND, PH_FWD, WHY_PIPELINE, 1, st + 1, 100 + mb, comm, x, -1);
        } else {
            int mb = nb++;
            int32_t dep = fwd_recv[mb];
            int32_t r = -1;
            if (st < P - 1) r = add(h, st, I_RECV, PH_BWD_DATA, WHY_PIPELINE, 1, st + 1, 100 + mb, comm, -1);
            int32_t x = add(h, st, I_COMPUTE, PH_BWD_DATA, WHY_NONE, 0, -1, -1, b, dep, r, -1);
            if (st > 0) add(h, st, I_SEND, PH_BWD_DATA, WHY_PIPELINE, 1, st - 1, 100 + mb, comm, x, -1);
        }
    }
}

static Graph *tiny(void)
{
    return gpt((GptShape){ .l = 2, .h = 16, .n = 2, .s = 8, .V = 32, .B = 4 });
}

static void test_gpipe_two_stages(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_n(2, 80);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1],\"microbatches\":2,"
                           "\"schedule\":\"gpipe\"}}");
    Hand h;
    hand_init(&h, 2);
    pipeline_stage(&h, 0, 2, "FFBB", 1, 2, 0);
    pipeline_stage(&h, 1, 2, "FFBB", 1, 2, 0);
    SimResult r;
    simulate(g, c, s, &h.p, &r);
    /* (m + P - 1)(f + b) = 3 x 3 */
    assert_true(fabs(r.step_time - 9) < EPS);
    assert_true(fabs(r.classes[0].busy_compute - 6) < EPS);
    assert_true(fabs(r.classes[1].idle - 3) < EPS);
    sim_result_free(&r);

    /* with 0.5 s per transfer, which moves once the sender has posted it and
     * the receiver (blocked in its receive, as the executor is) has reached
     * it: S0 F0 [0,1] F1 [1,2]; S1 receives [1,1.5], F0 [1.5,2.5], receives
     * [2.5,3], F1 [3,4], B0 [4,6], B1 [6,8]; S0 receives [6,6.5], B0
     * [6.5,8.5], receives [8.5,9], B1 [9,11] */
    hand_free(&h);
    hand_init(&h, 2);
    pipeline_stage(&h, 0, 2, "FFBB", 1, 2, 0.5);
    pipeline_stage(&h, 1, 2, "FFBB", 1, 2, 0.5);
    simulate(g, c, s, &h.p, &r);
    assert_true(fabs(r.step_time - 11) < EPS);
    assert_true(fabs(r.classes[0].exposed_comm - 1) < EPS);
    sim_result_free(&r);
    hand_free(&h);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

static void test_1f1b_two_stages(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_n(2, 80);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1],\"microbatches\":2,"
                           "\"schedule\":\"1f1b\"}}");
    Hand h;
    hand_init(&h, 2);
    /* stage 0 warms up with P-1 = 1 forward; the last stage alternates */
    pipeline_stage(&h, 0, 2, "FFBB", 1, 2, 0);
    pipeline_stage(&h, 1, 2, "FBFB", 1, 2, 0);
    SimResult r;
    simulate(g, c, s, &h.p, &r);
    /* S1: F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7]; S0: B0 [4,6] B1 [7,9] */
    assert_true(fabs(r.step_time - 9) < EPS);
    assert_true(fabs(r.classes[1].busy_compute - 6) < EPS);
    sim_result_free(&r);

    /* four micro-batches: S0 F F F B F B B B ... the makespan of 1F1B with
     * equal stages is (m + P - 1)(f + b) as for GPipe: 5 x 3 */
    hand_free(&h);
    hand_init(&h, 2);
    pipeline_stage(&h, 0, 2, "FFBFBFBB", 1, 2, 0);
    pipeline_stage(&h, 1, 2, "FBFBFBFB", 1, 2, 0);
    simulate(g, c, s, &h.p, &r);
    assert_true(fabs(r.step_time - 15) < EPS);
    assert_true(r.bubble > 0.19 && r.bubble < 0.21);   /* 3 idle of 15 on each stage */
    sim_result_free(&r);
    hand_free(&h);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

/* The GPU executor waits for every collective (comm_nccl.c): a gradient
 * all-reduce holds the interpreter as a resharding one does, and the
 * backward of the layer below starts after it. */
static void test_gpu_collectives_block(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_n(2, 80);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Hand h;
    hand_init(&h, 1);
    h.p.world = 2;
    h.rank_class[1] = 0;
    h.ranks[1] = 1;
    h.pr[0].nranks = 2;
    /* backward of layer 2 [0,2]; its all-reduce [2,5]; layer 1's backward
     * [5,7] and all-reduce [7,10]; the updates [10,11] and [11,12] */
    int32_t b2 = add(&h, 0, I_COMPUTE, PH_BWD_WEIGHT, WHY_NONE, 0, -1, -1, 2, -1);
    int32_t a2 = add(&h, 0, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, 1, -1, -1, 3, b2, -1);
    int32_t b1 = add(&h, 0, I_COMPUTE, PH_BWD_WEIGHT, WHY_NONE, 0, -1, -1, 2, b2, -1);
    int32_t a1 = add(&h, 0, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, 1, -1, -1, 3, b1, -1);
    add(&h, 0, I_COMPUTE, PH_UPDATE, WHY_NONE, 0, -1, -1, 1, a2, -1);
    add(&h, 0, I_COMPUTE, PH_UPDATE, WHY_NONE, 0, -1, -1, 1, a1, -1);
    SimResult r;
    simulate(g, c, s, &h.p, &r);
    assert_true(fabs(r.step_time - 12) < EPS);
    assert_true(fabs(r.classes[0].busy_comm - 6) < EPS);
    assert_true(fabs(r.classes[0].exposed_comm - 6) < EPS);
    assert_true(fabs(r.classes[0].idle - 0) < EPS);
    sim_result_free(&r);
    hand_free(&h);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

static void test_collective_waits_for_slowest(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_n(2, 80);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Hand h;
    hand_init(&h, 2);
    /* rank 0 computes 1 s, rank 1 3 s; the all-reduce (2 s) starts at 3 */
    double work[2] = { 1, 3 };
    for (int k = 0; k < 2; k++) {
        int32_t x = add(&h, k, I_COMPUTE, PH_BWD_WEIGHT, WHY_NONE, 0, -1, -1, work[k], -1);
        int32_t a = add(&h, k, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, 1, -1, -1, 2, x, -1);
        add(&h, k, I_COMPUTE, PH_UPDATE, WHY_NONE, 0, -1, -1, 1, a, -1);
    }
    SimResult r;
    simulate(g, c, s, &h.p, &r);
    assert_true(fabs(r.step_time - 6) < EPS);
    assert_true(fabs(r.classes[0].exposed_comm - 2) < EPS);
    assert_true(fabs(r.classes[0].idle - 2) < EPS);             /* waited for rank 1 */
    assert_true(fabs(r.classes[1].idle - 0) < EPS);
    sim_result_free(&r);
    hand_free(&h);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

/* The CPU executor interprets on one thread: a resharding all-reduce
 * blocks it; a gradient all-reduce runs behind it, but on the rank's own
 * core, so the interpreter loses the all-reduce's time too (the step is
 * the core's work, end to end). */
static void test_cpu_interpreter_blocks(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_kind(2, 80, "cpu");
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Hand h;
    hand_init(&h, 1);
    h.p.world = 2;
    h.rank_class[1] = 0;
    h.ranks[1] = 1;
    h.pr[0].nranks = 2;
    /* x1 [0,1]; reshard [1,3] on the interpreter; x2 [3,4]; the gradient
     * all-reduce [4,7] takes the core: the update [7,8], x3 [8,9] */
    int32_t x1 = add(&h, 0, I_COMPUTE, PH_FWD, WHY_NONE, 0, -1, -1, 1, -1);
    int32_t a = add(&h, 0, I_ALLREDUCE, PH_FWD, WHY_RESHARD, 1, -1, -1, 2, x1, -1);
    int32_t x2 = add(&h, 0, I_COMPUTE, PH_BWD_WEIGHT, WHY_NONE, 0, -1, -1, 1, a, -1);
    int32_t gs = add(&h, 0, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, 1, -1, -1, 3, x2, -1);
    add(&h, 0, I_COMPUTE, PH_UPDATE, WHY_NONE, 0, -1, -1, 1, gs, -1);
    add(&h, 0, I_COMPUTE, PH_BWD_DATA, WHY_NONE, 0, -1, -1, 1, x2, -1);
    SimResult r;
    simulate(g, c, s, &h.p, &r);
    assert_true(fabs(r.step_time - 9) < EPS);
    assert_true(fabs(r.classes[0].busy_compute - 4) < EPS);
    assert_true(fabs(r.classes[0].exposed_comm - 5) < EPS);
    assert_true(fabs(r.classes[0].idle) < EPS);
    sim_result_free(&r);

    hand_free(&h);
    cluster_free(c);
    strategy_free(s);
    graph_free(g);
}

/* ZeRO's reduce-scatters go behind a CPU rank's interpreter as its
 * gradient all-reduces do: a rank ready first goes on with the work that
 * does not need the scatter while it waits for its group (the collective's
 * own time still costs its core). On a GPU the call holds the interpreter.
 * Rank 0: b [0,1], x 2 s, the update 1 s; rank 1: b [0,3], the update.
 * The scatter (2 s) starts when rank 1 is ready, at 3.
 *   CPU: rank 0 runs x [1,3], the scatter [3,5] on its core, the update
 *        [5,6]; rank 1 the scatter [3,5], the update [5,6]: 6.
 *   GPU: rank 0 waits in the scatter [1,5], x [5,7], the update [7,8]: 8. */
static void test_cpu_zero_collectives_behind(void **state)
{
    (void)state;
    Graph *g = tiny();
    const char *kinds[2] = { "cpu", "gpu" };
    double want[2] = { 6, 8 };
    for (int k = 0; k < 2; k++) {
        Cluster *c = cluster_kind(2, 80, kinds[k]);
        Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
        Hand h;
        hand_init(&h, 2);
        double work[2] = { 1, 3 };
        for (int q = 0; q < 2; q++) {
            int32_t b = add(&h, q, I_COMPUTE, PH_BWD_WEIGHT, WHY_NONE, 0, -1, -1, work[q], -1);
            int32_t rs = add(&h, q, I_REDUCE_SCATTER, PH_BWD_WEIGHT, WHY_GRAD_SYNC, 1, -1, -1, 2, b, -1);
            if (q == 0) add(&h, q, I_COMPUTE, PH_BWD_DATA, WHY_NONE, 0, -1, -1, 2, b, -1);
            add(&h, q, I_COMPUTE, PH_UPDATE, WHY_NONE, 0, -1, -1, 1, rs, -1);
        }
        SimResult r;
        simulate(g, c, s, &h.p, &r);
        if (fabs(r.step_time - want[k]) > EPS)
            fail_msg("%s: step %.9g, want %.9g", kinds[k], r.step_time, want[k]);
        assert_true(fabs(r.classes[0].busy_compute - 4) < EPS);
        assert_true(fabs(r.classes[1].busy_compute - 4) < EPS);
        sim_result_free(&r);
        hand_free(&h);
        strategy_free(s);
        cluster_free(c);
    }
    graph_free(g);
}

/* The lowering marks what may run behind: ZeRO-3's scatters and gathers,
 * never a tensor-parallel layer's all-reduces. */
static void test_lowering_marks_behind(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_kind(2, 80, "cpu");
    const char *js[2] = { "{\"mesh\":{\"dp\":2},\"params\":{\"*\":{\"shard\":\"zero3\"}}}",
                          "{\"mesh\":{\"tp\":2},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\"}}}}" };
    for (int k = 0; k < 2; k++) {
        Strategy *s = strat(g, js[k]);
        Err err = {0};
        Plan *p = ir_lower(g, c, s, &err);
        if (!p) fail_msg("lower: %s", err.msg);
        int n[I_KIND_COUNT][2] = { { 0 } };
        const Program *pr = &p->classes[0];
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            n[in->kind][in->behind]++;
            if (in->behind) assert_true(in->why == WHY_GRAD_SYNC || in->why == WHY_PARAM_GATHER ||
                                        in->why == WHY_TIED);
            assert_int_equal(in->behind, instr_may_run_behind(pr, in));
        }
        if (k == 0) {
            assert_true(n[I_REDUCE_SCATTER][1] > 0 && n[I_REDUCE_SCATTER][0] == 0);
            assert_true(n[I_ALLGATHER][1] > 0 && n[I_ALLGATHER][0] == 0);
        } else {
            assert_int_equal(n[I_REDUCE_SCATTER][1] + n[I_ALLGATHER][1] + n[I_ALLREDUCE][1], 0);
            assert_true(n[I_ALLREDUCE][0] > 0);
        }
        plan_free(p);
        strategy_free(s);
    }
    cluster_free(c);
    graph_free(g);
}

static void test_unmatched_receive_is_reported(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_n(2, 80);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1],\"microbatches\":1}}");
    Hand h;
    hand_init(&h, 2);
    add(&h, 0, I_COMPUTE, PH_FWD, WHY_NONE, 0, -1, -1, 1, -1);
    add(&h, 1, I_RECV, PH_FWD, WHY_PIPELINE, 1, 0, 7, 1, -1);
    SimResult r;
    SimOpts o = { .compute_time = own_compute, .comm_time = own_comm };
    Err err = {0};
    assert_int_equal(cost_simulate(g, c, s, &h.p, &o, &r, &err), -1);
    assert_non_null(strstr(err.msg, "waits forever"));
    assert_non_null(strstr(err.msg, "recv"));
    hand_free(&h);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Lowered plans */

static Plan *lower_c(const Graph *g, const Cluster *c, const Strategy *s)
{
    Err err = {0};
    Plan *p = ir_lower(g, c, s, &err);
    if (!p) fail_msg("lower: %s", err.msg);
    return p;
}

/* Every classic strategy lowers to programs the simulator can schedule, with
 * memory exactly the lowering's walk and times that add up. */
static void test_every_strategy_schedules(void **state)
{
    (void)state;
    Graph *g = gpt((GptShape){ .l = 4, .h = 32, .n = 4, .s = 16, .V = 64, .B = 64, .tied = true });
    Cluster *c = cluster_n(8, 80);
    static const char *const cases[] = {
        "{\"mesh\":{\"dp\":8}}",
        "{\"mesh\":{\"dp\":2,\"tp\":4},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}}",
        "{\"mesh\":{\"pp\":2,\"dp\":4},\"pipeline\":{\"cuts\":[2],\"microbatches\":4,\"schedule\":\"gpipe\"}}",
        "{\"mesh\":{\"pp\":4,\"dp\":2},\"pipeline\":{\"cuts\":[1,2,3],\"microbatches\":8,\"schedule\":\"1f1b\"},"
        "\"ops\":{\"blocks.*\":{\"recompute\":true}}}",
        "{\"mesh\":{\"pp\":2,\"dp\":2,\"tp\":2},\"pipeline\":{\"cuts\":[2],\"microbatches\":4,\"schedule\":\"1f1b\"},"
        "\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}}",
        "{\"mesh\":{\"dp\":8},\"params\":{\"*\":{\"shard\":\"zero1\"}}}",
        "{\"mesh\":{\"dp\":8},\"params\":{\"*\":{\"shard\":\"zero3\"}}}",
        /* ZeRO-3's re-gather queued behind a ZeRO-1 param's post-update gather */
        "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"shard\":\"zero1\"},"
        "\"blocks.1.*\":{\"shard\":\"zero3\"}}}",
        "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"shard\":\"zero2\"},"
        "\"blocks.0.*\":{\"shard\":\"zero3\"}}}",
        "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2}}}}",
        /* servers over data x tensor ranks for the norms' params (their
         * gradients partial over tp): classes by server role, whose ranks
         * push to servers of different classes */
        "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"blocks.*.ln*\":{\"split\":{\"s\":\"tp\"}}},"
        "\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2}}}}",
        "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2,\"staleness\":2}}}}",
        "{\"mesh\":{\"dp\":8},\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"fp16\"}}}}",
        "{\"mesh\":{\"dp\":8},\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"algo\":\"tree\"}}}}",
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        Strategy *s = strat(g, cases[k]);
        Plan *p = lower_c(g, c, s);
        SimResult r;
        Err err = {0};
        if (cost_simulate(g, c, s, p, NULL, &r, &err)) fail_msg("case %zu: %s", k, err.msg);
        assert_true(r.step_time > 0 && isfinite(r.step_time));
        assert_true(r.feasible);
        assert_int_equal(r.nclasses, p->nclasses);
        for (int ci = 0; ci < p->nclasses; ci++) {
            const SimClass *o = &r.classes[ci];
            assert_int_equal(o->peak_mem, p->classes[ci].peak_mem);
            assert_true(o->busy_compute > 0);
            assert_true(o->busy_compute + o->exposed_comm + o->idle <= r.step_time * (1 + 1e-9) + 1e-12);
            assert_true(o->idle >= 0 && o->exposed_comm >= 0);
        }
        assert_true(r.mfu > 0 && r.mfu <= 1);
        assert_true(r.hfu >= r.mfu * (1 - 1e-9));
        assert_true(r.samples_per_s > 0 && r.tokens_per_s == r.samples_per_s * 16);
        sim_result_free(&r);
        plan_free(p);
        strategy_free(s);
    }
    cluster_free(c);
    graph_free(g);
}

/* A stale pull is taken in a later step: the worker does not wait for it. */
static void test_stale_pull_does_not_wait(void **state)
{
    (void)state;
    Graph *g = gpt((GptShape){ .l = 2, .h = 32, .n = 4, .s = 16, .V = 64, .B = 8 });
    Cluster *c = cluster_n(4, 80);
    double t[2];
    for (int k = 0; k < 2; k++) {
        Strategy *s = strat(g, k ? "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\","
                                   "\"shards\":1,\"placement\":[0],\"staleness\":1}}}}"
                                 : "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\","
                                   "\"shards\":1,\"placement\":[0],\"staleness\":0}}}}");
        Plan *p = lower_c(g, c, s);
        SimResult r;
        Err err = {0};
        if (cost_simulate(g, c, s, p, NULL, &r, &err)) fail_msg("%s", err.msg);
        t[k] = r.step_time;
        sim_result_free(&r);
        plan_free(p);
        strategy_free(s);
    }
    assert_true(t[1] < t[0]);
    cluster_free(c);
    graph_free(g);
}

/* A parameter server's push and pull send a copy of the gradient or the
 * param (the executor copies them before posting): the copy holds the
 * sender's interpreter for the price of the gradient sum that moves the
 * same bytes, then the transfer follows. */
static void test_ps_send_copies(void **state)
{
    (void)state;
    Graph *g = gpt((GptShape){ .l = 2, .h = 32, .n = 4, .s = 16, .V = 64, .B = 8 });
    Cluster *c = cluster_kind(2, 80, "cpu");
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\","
                           "\"shards\":1,\"placement\":[0]}}}}");
    Plan *p = lower_c(g, c, s);
    SimResult r;
    Err err = {0};
    SimOpts o = { .trace = true };
    if (cost_simulate(g, c, s, p, &o, &r, &err)) fail_msg("%s", err.msg);
    OpModel *m = opmodel_analytic();
    OpDevice dev;
    op_device_from_group(&c->groups[0], &dev);
    int copies = 0;
    for (int ci = 0; ci < p->nclasses; ci++) {
        const Program *pr = &p->classes[ci];
        for (int k = 0; k < r.nspans[ci]; k++) {
            const SimSpan *a = &r.spans[ci][k];
            const Instr *in = &pr->instrs[a->instr];
            if (in->kind != I_SEND) continue;
            int kind = pr->values[pr->args[in->arg0]].kind;
            assert_true(kind == VAL_PARAM || kind == VAL_PARAM_GRAD);  /* pushes and pulls */
            assert_true(instr_sends_copy(pr, in));
            /* the copy's span, then the transfer's, of the same send */
            assert_true(k + 1 < r.nspans[ci]);
            const SimSpan *b = NULL;
            for (int j = k + 1; j < r.nspans[ci] && !b; j++)
                if (r.spans[ci][j].instr == a->instr) b = &r.spans[ci][j];
            assert_non_null(b);
            OpShape x = { .kind = CM_KIND_SUM, .phase = PH_BWD_WEIGHT, .dtype = DT_F32 };
            x.bytes = 2.0 * (double)in->bytes;
            x.size[0] = 2 * in->bytes / (3 * 4);
            x.flops = (double)x.size[0];
            double want = opmodel_time(m, &dev, &x, NULL);
            assert_true(fabs((a->end - a->start) - want) <= 1e-9 * want + 1e-15);
            assert_true(b->start >= a->end - 1e-15);
            copies++;
            k = (int)(b - r.spans[ci]);     /* past the transfer */
        }
    }
    assert_true(copies > 0);
    /* a pipeline's sends carry activations, sent as they are */
    Strategy *s2 = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":2}}");
    Plan *p2 = lower_c(g, c, s2);
    int sends = 0;
    for (int ci = 0; ci < p2->nclasses; ci++)
        for (int i = 0; i < p2->classes[ci].ninstrs; i++)
            if (p2->classes[ci].instrs[i].kind == I_SEND) {
                assert_false(instr_sends_copy(&p2->classes[ci], &p2->classes[ci].instrs[i]));
                sends++;
            }
    assert_true(sends > 0);
    plan_free(p2);
    strategy_free(s2);
    opmodel_free(m);
    sim_result_free(&r);
    plan_free(p);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

static void test_infeasible_plan(void **state)
{
    (void)state;
    Graph *g = gpt((GptShape){ .l = 2, .h = 64, .n = 4, .s = 32, .V = 256, .B = 8 });
    Cluster *c = cluster_n(2, 0.0001);      /* about 100 KiB per device */
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Plan *p = lower_c(g, c, s);
    SimResult r;
    Err err = {0};
    assert_int_equal(cost_simulate(g, c, s, p, NULL, &r, &err), 0);
    assert_false(r.feasible);
    assert_false(r.classes[0].fits);
    assert_non_null(strstr(r.why_infeasible, "class 0"));
    assert_non_null(strstr(r.why_infeasible, "GiB"));
    assert_true(r.step_time > 0);
    cJSON *j = sim_result_json(&r, s, NULL, NULL);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "feasible")));
    assert_non_null(cJSON_GetObjectItem(j, "why_infeasible"));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "step_time_s")));
    cJSON_Delete(j);
    sim_result_free(&r);
    plan_free(p);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

static void test_deterministic_trace_deadline(void **state)
{
    (void)state;
    Graph *g = gpt((GptShape){ .l = 4, .h = 32, .n = 4, .s = 16, .V = 64, .B = 8 });
    Cluster *c = cluster_n(4, 80);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"cuts\":[2],"
                           "\"microbatches\":4,\"schedule\":\"1f1b\"}}");
    Plan *p = lower_c(g, c, s);
    SimResult a, b;
    SimOpts o = { .trace = true };
    Err err = {0};
    assert_int_equal(cost_simulate(g, c, s, p, NULL, &a, &err), 0);
    assert_int_equal(cost_simulate(g, c, s, p, &o, &b, &err), 0);
    assert_true(a.step_time == b.step_time);
    /* a deadline ahead changes nothing; one past gives up (a search's
     * time budget holds inside a simulation), saying so, nothing to free */
    SimResult d;
    SimOpts ahead = { .deadline = now_s() + 3600 }, past = { .deadline = now_s() - 1 };
    assert_int_equal(cost_simulate(g, c, s, p, &ahead, &d, &err), 0);
    assert_true(a.step_time == d.step_time);
    sim_result_free(&d);
    assert_int_equal(cost_simulate(g, c, s, p, &past, &d, &err), -1);
    assert_string_equal(err.msg, SIM_LATE);
    assert_non_null(b.spans);
    int ncomp = 0;
    for (int i = 0; i < p->classes[0].ninstrs; i++) ncomp += p->classes[0].instrs[i].kind != I_ALLOC &&
                                                             p->classes[0].instrs[i].kind != I_FREE;
    assert_int_equal(b.nspans[0], ncomp);
    for (int k = 0; k < b.nspans[0]; k++) {
        assert_true(b.spans[0][k].end >= b.spans[0][k].start);
        assert_true(b.spans[0][k].end <= b.step_time * (1 + 1e-12));
    }
    char path[] = "/tmp/strata-test-sim-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(sim_write_svg(&b, s, "test <plan>", path, &err), 0);
    size_t len = 0;
    char *svg = file_read(path, &len, &err);
    assert_non_null(svg);
    assert_non_null(strstr(svg, "<svg"));
    assert_non_null(strstr(svg, "test &lt;plan>"));
    assert_non_null(strstr(svg, "time (")); /* a labelled axis */
    assert_non_null(strstr(svg, "forward"));
    assert_non_null(strstr(svg, "backward"));
    free(svg);
    unlink(path);
    assert_int_equal(sim_write_svg(&a, s, "x", path, &err), -1);   /* no trace kept */
    sim_result_free(&a);
    sim_result_free(&b);
    plan_free(p);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

static void test_cluster_without_links(void **state)
{
    (void)state;
    Cluster *c = cluster_n(2, 80);
    c->levels[0].bw = 0;
    Err err = {0};
    assert_null(linkmodel_from_cluster(c, &err));
    assert_non_null(strstr(err.msg, "levels[0]"));
    assert_non_null(strstr(err.msg, "bandwidth"));
    cluster_free(c);
}

/* ----------------------------------------------------------------------------
 * Links */

static void test_link_formulas(void **state)
{
    (void)state;
    Cluster *c = cluster_n(8, 80);      /* 100 GB/s, 1 us */
    Err err = {0};
    LinkModel *m = linkmodel_from_cluster(c, &err);
    assert_non_null(m);
    int r8[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    double B = 1e9, bw = 100e9, a = 1e-6;
    double ar = linkmodel_time(m, I_ALLREDUCE, ALGO_RING, (int64_t)B, r8, 8);
    assert_true(fabs(ar - (14 * a + 2.0 * 7 / 8 * B / bw)) < 1e-12);
    double ag = linkmodel_time(m, I_ALLGATHER, ALGO_RING, (int64_t)B, r8, 8);
    assert_true(fabs(ag - (7 * a + 7.0 / 8 * B / bw)) < 1e-12);
    double p2p = linkmodel_time(m, I_SEND, ALGO_RING, (int64_t)B, r8, 2);
    assert_true(fabs(p2p - (a + B / bw)) < 1e-12);
    assert_true(linkmodel_time(m, I_ALLREDUCE, ALGO_RING, (int64_t)B, r8, 1) == 0);
    /* a profile fit replaces the figure for its level */
    assert_int_equal(linkmodel_add_fit(m, "all_reduce", 8, "gpu", 5e-6, 1e-10, &err), 0);
    ar = linkmodel_time(m, I_ALLREDUCE, ALGO_RING, (int64_t)B, r8, 8);
    assert_true(fabs(ar - (5e-6 + 0.1)) < 1e-12);
    /* an fp16-compressed all-reduce takes the float fit until the profile
     * measured the half one (the backend's half reduction costs its own) */
    double h = linkmodel_time(m, LINK_ALLREDUCE_F16, ALGO_RING, (int64_t)B, r8, 8);
    assert_true(fabs(h - ar) < 1e-12);
    assert_int_equal(linkmodel_add_fit(m, "all_reduce_f16", 8, "gpu", 7e-6, 3e-10, &err), 0);
    h = linkmodel_time(m, LINK_ALLREDUCE_F16, ALGO_RING, (int64_t)B, r8, 8);
    assert_true(fabs(h - (7e-6 + 0.3)) < 1e-12);
    assert_true(linkmodel_time(m, I_ALLREDUCE, ALGO_RING, (int64_t)B, r8, 8) == ar);
    assert_int_equal(linkmodel_add_fit(m, "all_reduce", 8, "rack", 5e-6, 1e-10, &err), -1);
    assert_non_null(strstr(err.msg, "rack"));
    assert_int_equal(linkmodel_add_fit(m, "gossip", 8, "gpu", 5e-6, 1e-10, &err), -1);

    /* the measured sizes of a fit price its group size piecewise: 1 KB in
     * 10 us, 1 MB in 20 us, 64 MB in 10 ms (bandwidth falling) */
    assert_int_equal(linkmodel_add_fit(m, "all_gather", 8, "gpu", 1e-5, 1e-10, &err), 0);
    assert_int_equal(linkmodel_add_point(m, "all_gather", 8, "gpu", 1 << 20, 2e-5, &err), 0);
    double ag1 = linkmodel_time(m, I_ALLGATHER, ALGO_RING, 1 << 20, r8, 8);
    assert_true(fabs(ag1 - (1e-5 + 1e-10 * (1 << 20))) < 1e-15);    /* one point: the fit */
    assert_int_equal(linkmodel_add_point(m, "all_gather", 8, "gpu", 64 << 20, 1e-2, &err), 0);
    assert_int_equal(linkmodel_add_point(m, "all_gather", 8, "gpu", 1024, 1e-5, &err), 0);
    assert_true(fabs(linkmodel_time(m, I_ALLGATHER, ALGO_RING, 1 << 20, r8, 8) - 2e-5) < 1e-15);
    assert_true(fabs(linkmodel_time(m, I_ALLGATHER, ALGO_RING, 64 << 20, r8, 8) - 1e-2) < 1e-15);
    /* between sizes: on the segment; below the smallest: its time */
    double mid = linkmodel_time(m, I_ALLGATHER, ALGO_RING, (1 << 20) + (63 << 19), r8, 8);
    assert_true(fabs(mid - (2e-5 + 1e-2) / 2) < 1e-12);
    assert_true(fabs(linkmodel_time(m, I_ALLGATHER, ALGO_RING, 4, r8, 8) - 1e-5) < 1e-15);
    /* beyond the largest: the last segment's beta */
    double seg = (1e-2 - 2e-5) / (double)((64 << 20) - (1 << 20));
    double big = linkmodel_time(m, I_ALLGATHER, ALGO_RING, 128 << 20, r8, 8);
    assert_true(fabs(big - (1e-2 + seg * (64 << 20))) < 1e-12);
    /* a group size it did not measure: the fit, scaled */
    int r4[4] = { 0, 1, 2, 3 };
    double ag4 = linkmodel_time(m, I_ALLGATHER, ALGO_RING, 64 << 20, r4, 4);
    assert_true(fabs(ag4 - (1e-5 * 3 / 7 + 1e-10 * (64 << 20) * (3.0 / 4) / (7.0 / 8))) < 1e-12);
    /* a point with no fit to go with, or no measurement */
    assert_int_equal(linkmodel_add_point(m, "broadcast", 8, "gpu", 1024, 1e-5, &err), -1);
    assert_non_null(strstr(err.msg, "no fit"));
    assert_int_equal(linkmodel_add_point(m, "all_gather", 8, "gpu", 1024, -1, &err), -1);
    assert_non_null(strstr(err.msg, "not a measurement"));
    linkmodel_free(m);
    cluster_free(c);

    /* two levels: 8 per node at 300 GB/s, nodes at 25 GB/s */
    cJSON *j = cJSON_Parse("{\"name\":\"two\",\"devices\":[{\"name\":\"d\",\"kind\":\"gpu\",\"count\":16,"
                           "\"peak_tflops\":{\"f32\":10},\"memory_gib\":80,\"memory_bw_gbps\":1000}],"
                           "\"levels\":[{\"name\":\"gpu\",\"count\":8,\"link\":\"nvlink\",\"bw_gbps\":300,"
                           "\"latency_us\":0.000001},{\"name\":\"node\",\"count\":2,\"link\":\"ib\",\"bw_gbps\":25,"
                           "\"latency_us\":0.000001}]}");
    c = cluster_from_json(j, 0, &err);
    cJSON_Delete(j);
    if (!c) fail_msg("%s", err.msg);
    m = linkmodel_from_cluster(c, &err);
    int r16[16];
    for (int i = 0; i < 16; i++) r16[i] = i;
    double flat = linkmodel_time(m, I_ALLREDUCE, ALGO_RING, (int64_t)B, r16, 16);
    assert_true(fabs(flat - 2.0 * 15 / 16 * B / 25e9) < 1e-9);
    double hier = linkmodel_time(m, I_ALLREDUCE, ALGO_HIERARCHICAL, (int64_t)B, r16, 16);
    /* reduce-scatter and all-gather in the node, all-reduce of B/8 across */
    double want = 2 * (7.0 / 8 * B / 300e9) + 2.0 * 1 / 2 * (B / 8) / 25e9;
    assert_true(fabs(hier - want) < 1e-9);
    assert_true(hier < flat);
    int pair[2] = { 0, 8 };
    assert_true(fabs(linkmodel_time(m, I_SEND, ALGO_RING, (int64_t)B, pair, 2) - B / 25e9) < 1e-9);
    linkmodel_free(m);
    cluster_free(c);

    /* 128 nodes: a group of one GPU per node spans 128 items of the node
     * level (more than any fixed table would hold) */
    j = cJSON_Parse("{\"name\":\"big\",\"devices\":[{\"name\":\"d\",\"kind\":\"gpu\",\"count\":1024,"
                    "\"peak_tflops\":{\"f32\":10},\"memory_gib\":80,\"memory_bw_gbps\":1000}],"
                    "\"levels\":[{\"name\":\"gpu\",\"count\":8,\"link\":\"nvlink\",\"bw_gbps\":300,"
                    "\"latency_us\":0.000001},{\"name\":\"node\",\"count\":128,\"link\":\"ib\","
                    "\"bw_gbps\":25,\"latency_us\":0.000001}]}");
    c = cluster_from_json(j, 0, &err);
    cJSON_Delete(j);
    if (!c) fail_msg("%s", err.msg);
    m = linkmodel_from_cluster(c, &err);
    int *r128 = malloc(sizeof *r128 * 1024);
    for (int i = 0; i < 128; i++) r128[i] = 8 * i + 3;
    double dp = linkmodel_time(m, I_ALLREDUCE, ALGO_HIERARCHICAL, (int64_t)B, r128, 128);
    assert_true(fabs(dp - 2.0 * 127 / 128 * B / 25e9) < 1e-6);
    for (int i = 0; i < 1024; i++) r128[i] = i;
    double all = linkmodel_time(m, I_ALLREDUCE, ALGO_HIERARCHICAL, (int64_t)B, r128, 1024);
    want = 2 * (7.0 / 8 * B / 300e9) + 2.0 * 127 / 128 * (B / 8) / 25e9;
    assert_true(fabs(all - want) < 1e-6);
    free(r128);
    linkmodel_free(m);
    cluster_free(c);
}

/* An int8-compressed all-reduce runs as the executor runs it: the codes of
 * every member all-gathered, plus the coding passes over memory. */
static void test_compressed_allreduce_priced_as_run(void **state)
{
    (void)state;
    Graph *g = tiny();
    Cluster *c = cluster_kind(2, 80, "cpu");      /* 100 GB/s links, 1 us, 1000 GB/s memory */
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Hand h;
    hand_init(&h, 1);
    h.p.world = 2;
    h.rank_class[1] = 0;
    h.ranks[1] = 1;
    h.pr[0].nranks = 2;
    int32_t a = add(&h, 0, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, 1, -1, -1, 0, -1);
    h.pr[0].instrs[a].compress = COMPRESS_INT8;
    h.pr[0].instrs[a].bytes = 1000000 + 4;          /* 1e6 codes and a scale */
    SimOpts o = { .compute_time = own_compute };    /* links from the cluster */
    SimResult r;
    Err err = {0};
    assert_int_equal(cost_simulate(g, c, s, &h.p, &o, &r, &err), 0);
    double gather = 1e-6 + 0.5 * 2e6 / 100e9;          /* all-gather of 2 x 1e6 bytes */
    /* the coding passes, elementwise kernels priced as the analytical model
     * prices a gradient sum: encode, in twice (8 + 8), codes and error out
     * (1 + 4), the sum cleared (4); per member decode (1 + 4) and add
     * (4 + 4 + 4) */
    OpDevice dev;
    op_device_from_group(&c->groups[0], &dev);
    OpShape enc = { .kind = CM_KIND_SUM, .phase = PH_UPDATE, .dtype = DT_F32, .flops = 1e6,
                    .bytes = 25e6 }, mem = enc;
    enc.size[0] = mem.size[0] = 1000000;
    mem.bytes = 17e6;
    double coding = opmodel_analytic_time(&dev, &enc) + 2 * opmodel_analytic_time(&dev, &mem);
    assert_true(coding > 25e6 / 1000e9 / 4);             /* bandwidth-bound passes, not free */
    assert_true(fabs(r.step_time - (gather + coding)) < 1e-12);
    sim_result_free(&r);

    /* fp16: the conversions, and the all-reduce of halves by the profile's
     * half-precision fit */
    h.pr[0].instrs[a].compress = COMPRESS_FP16;
    h.pr[0].instrs[a].bytes = 2000000;             /* 1e6 halves */
    LinkModel *lm = linkmodel_from_cluster(c, &err);
    assert_int_equal(linkmodel_add_fit(lm, "all_reduce_f16", 2, c->levels[0].name, 1e-3, 1e-8,
                                       &err), 0);
    o.links = lm;
    assert_int_equal(cost_simulate(g, c, s, &h.p, &o, &r, &err), 0);
    OpShape cv = enc;
    cv.bytes = 6e6;                                  /* floats in, halves out, and back */
    double convert = 2 * opmodel_analytic_time(&dev, &cv);
    assert_true(fabs(r.step_time - (1e-3 + 1e-8 * 2e6 + convert)) < 1e-12);
    sim_result_free(&r);
    linkmodel_free(lm);
    hand_free(&h);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
}

/* A contraction's M, N, K and batch from its operand letters. */
static void test_gemm_dims(void **state)
{
    (void)state;
    OpShape x = { .kind = OP_MATMUL };
    x.in0 = cm_letter_mask("bsh");
    x.in1 = cm_letter_mask("hf");
    x.out = cm_letter_mask("bsf");
    x.size['b' - 'a'] = 4;
    x.size['s' - 'a'] = 128;
    x.size['h' - 'a'] = 768;
    x.size['f' - 'a'] = 3072;
    double m, n, k, b;
    opshape_gemm_dims(&x, &m, &n, &k, &b);
    assert_true(m == 512 && n == 3072 && k == 768 && b == 1);
    /* attention scores: bsnd,btnd->bnst: batch b n, M s, N t, K d */
    OpShape y = { .kind = OP_MATMUL };
    y.in0 = cm_letter_mask("bsnd");
    y.in1 = cm_letter_mask("btnd");
    y.out = cm_letter_mask("bnst");
    y.size['b' - 'a'] = 2;
    y.size['s' - 'a'] = 64;
    y.size['t' - 'a'] = 64;
    y.size['n' - 'a'] = 12;
    y.size['d' - 'a'] = 64;
    opshape_gemm_dims(&y, &m, &n, &k, &b);
    assert_true(m == 64 && n == 64 && k == 64 && b == 24);
    /* and the lowering's instructions carry them */
    Graph *g = tiny();
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":1}}");
    Plan *p = lower(g, s);
    bool seen = false;
    for (int i = 0; i < p->classes[0].ninstrs && !seen; i++) {
        const Instr *in = &p->classes[0].instrs[i];
        if (in->kind != I_COMPUTE || in->op < 0 || g->ops[in->op].kind != OP_MATMUL) continue;
        OpShape z;
        opshape_of_instr(g, s, p, in, &z);
        assert_int_equal(z.in0, cm_letter_mask(g->ops[in->op].in_letters[0]));
        assert_int_equal(z.out, cm_letter_mask(g->ops[in->op].out_letters));
        assert_true(z.flops > 0);
        seen = true;
    }
    assert_true(seen);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpipe_two_stages),
        cmocka_unit_test(test_1f1b_two_stages),
        cmocka_unit_test(test_gpu_collectives_block),
        cmocka_unit_test(test_collective_waits_for_slowest),
        cmocka_unit_test(test_cpu_interpreter_blocks),
        cmocka_unit_test(test_cpu_zero_collectives_behind),
        cmocka_unit_test(test_lowering_marks_behind),
        cmocka_unit_test(test_unmatched_receive_is_reported),
        cmocka_unit_test(test_every_strategy_schedules),
        cmocka_unit_test(test_stale_pull_does_not_wait),
        cmocka_unit_test(test_ps_send_copies),
        cmocka_unit_test(test_infeasible_plan),
        cmocka_unit_test(test_deterministic_trace_deadline),
        cmocka_unit_test(test_cluster_without_links),
        cmocka_unit_test(test_link_formulas),
        cmocka_unit_test(test_gemm_dims),
        cmocka_unit_test(test_compressed_allreduce_priced_as_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
