/*
 * test_lower_hybrid.c — the lowering of hybrid and less common strategies
 * against closed forms, plus invariants that span classes (pipeline send/recv
 * pairing, dependency order, pipeline memory).
 *
 * Covers what test_lower.c does not: Megatron sequence parallelism
 * (Korthikanti et al. 2022), dp x pp and dp x tp x pp grids, sufficient-factor
 * broadcast (Poseidon), PowerSGD and int8 payloads, ZeRO-3 with tensor
 * parallelism, VGG16 (convolutions) data parallel and "data-parallel convs +
 * tensor-parallel FC" (Krizhevsky's one weird trick), DLRM table-wise and
 * row-wise embedding sharding, expert parallelism volumes, ResNet (SyncBN)
 * and BERT data parallel; and, across classes, pipeline send/recv pairing,
 * deadlock freedom, dependency order, instruction payloads against the
 * values they name, rank classes and pipeline activation peaks.
 *
 * Legend: B = global batch, s = sequence, h = hidden, l = layers, V = vocab,
 * D/T/P = data/tensor/pipeline degree, m = micro-batches, r = PowerSGD rank,
 * bsh = B/(D m) * s * h * 4 (one micro-batch's activation on one rank, fp32).
 * Volumes are payload bytes per rank per step as nccl-tests counts them (the
 * all-reduce buffer, the all-gather output, the reduce-scatter input, the
 * all-to-all and send/recv local buffer).
 *
 * Tests marked "Regression:" pin down defects the lowering once had; they
 * state what the literature (or the design) says the program should hold.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/util.h"
#include "ir/zoo.h"
#include "tests/support/lower_fixtures.h"

/* ----------------------------------------------------------------------------
 * Helpers (as in test_lower.c) */

static Graph *zoo(const char *kind, int n, const char *const *keys, const char *const *vals)
{
    Err err = {0};
    Graph *g = zoo_build(kind, n, keys, vals, &err);
    if (!g) fail_msg("%s: %s", kind, err.msg);
    return g;
}

static int64_t tbytes(const Graph *g, int t)
{
    return tensor_numel(&g->tensors[t]) * dtype_bytes(g->tensors[t].dtype);
}

static int tensor(const Graph *g, const char *name)
{
    int t = graph_find_tensor(g, name);
    if (t < 0) fail_msg("no tensor %s", name);
    return t;
}

static int count(const Program *pr, InstrKind k, Why why)
{
    int n = 0;
    for (int i = 0; i < pr->ninstrs; i++)
        n += pr->instrs[i].kind == k && (why == WHY_COUNT || pr->instrs[i].why == why);
    return n;
}

static bool is_comm(int k) { return k >= I_ALLREDUCE && k <= I_RECV; }

static int64_t comm_total(const Program *pr)
{
    int64_t b = 0;
    for (int k = I_ALLREDUCE; k <= I_RECV; k++) b += program_comm_bytes(pr, (InstrKind)k, WHY_COUNT);
    return b;
}

/* Bytes of instructions of one kind and reason moving tensor t (-1: any). */
static int64_t bytes_of(const Program *pr, InstrKind k, Why why, int t)
{
    int64_t b = 0;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == k && (why == WHY_COUNT || in->why == why) && (t < 0 || in->tensor == t))
            b += in->bytes;
    }
    return b;
}

/* Bytes and count of one kind and reason over groups of more than one rank
 * (a mesh axis of size 1 moves nothing). */
static int64_t gbytes(const Program *pr, const Strategy *s, InstrKind k, Why why)
{
    int64_t b = 0;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == k && (why == WHY_COUNT || in->why == why) &&
            strategy_group_size(s, in->axes) > 1)
            b += in->bytes;
    }
    return b;
}

static int gcount(const Program *pr, const Strategy *s, InstrKind k, Why why)
{
    int n = 0;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        n += in->kind == k && (why == WHY_COUNT || in->why == why) &&
             strategy_group_size(s, in->axes) > 1;
    }
    return n;
}

/* A failure noted now and reported after the test has freed what it made
 * (so a sanitizer run shows only the failures, not leaks). */
static char bug[1024];

#define NOTE_BUG(...) do { if (!bug[0]) snprintf(bug, sizeof bug, __VA_ARGS__); } while (0)

static void report_bug(void)
{
    if (bug[0]) {
        char m[sizeof bug];
        memcpy(m, bug, sizeof m);
        bug[0] = 0;
        fail_msg("%s", m);
    }
}

/* Comm instructions of any kind on tensor t. */
static int comm_on(const Program *pr, int t)
{
    int n = 0;
    for (int i = 0; i < pr->ninstrs; i++)
        n += is_comm(pr->instrs[i].kind) && pr->instrs[i].tensor == t;
    return n;
}

static AxisMask axis(const Strategy *s, const char *name)
{
    int a = strategy_axis(s, name);
    if (a < 0) fail_msg("no axis %s", name);
    return (AxisMask)(1u << a);
}

/* Invariants every program keeps: dependencies point backwards, memory
 * events balance, compute is on the compute stream and comm on comm. */
static void check_program(const Program *pr)
{
    int64_t mem = 0;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        for (int d = 0; d < in->ndeps; d++) {
            int32_t dep = pr->deps[in->dep0 + d];
            assert_true(dep >= 0 && dep < i);
        }
        if (in->kind == I_ALLOC) mem += in->bytes;
        if (in->kind == I_FREE) mem -= in->bytes;
        if (in->kind == I_COMPUTE) assert_int_equal(in->stream, STREAM_COMPUTE);
        if (is_comm(in->kind)) assert_int_equal(in->stream, STREAM_COMM);
    }
    assert_int_equal(mem, 0);
    assert_true(pr->peak_mem >= pr->static_mem);
}

static void check_plan(const Plan *p)
{
    int total = 0;
    for (int k = 0; k < p->nclasses; k++) {
        check_program(&p->classes[k]);
        total += p->classes[k].nranks;
    }
    assert_int_equal(total, p->world);
}

/* Activation peak of a class: the alloc/free walk above the resident state. */
static int64_t act_peak(const Program *pr) { return pr->peak_mem - pr->static_mem; }

/* The class program of pipeline stage st (pipelines here have one class per stage). */
static const Program *stage_prog(const Plan *p, int st)
{
    const Program *found = NULL;
    for (int k = 0; k < p->nclasses; k++)
        if (p->classes[k].stage == st) {
            if (found) fail_msg("stage %d has several classes", st);
            found = &p->classes[k];
        }
    if (!found) fail_msg("no class for stage %d", st);
    return found;
}

/* Sum of param bytes whose consumers sit on stage st. */
static int64_t stage_param_bytes(const Graph *g, const Strategy *s, int st)
{
    int64_t b = 0;
    for (int t = 0; t < g->ntensors; t++) {
        if (g->tensors[t].role != ROLE_PARAM) continue;
        bool on = false;
        for (int i = 0; i < g->nops; i++)
            for (int k = 0; k < g->ops[i].nin; k++)
                on |= g->ops[i].in[k] == t && s->op_stage[i] == st;
        if (on) b += tbytes(g, t);
    }
    return b;
}

/* Megatron ops JSON: heads, ffn and vocab split on tp; with sp, s split on tp
 * in the norms, residuals and row-parallel biases (sequence parallelism). */
static void megatron_ops(char *buf, size_t n, bool sp)
{
    snprintf(buf, n,
             "\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}%s}",
             sp ? ",\"pos_embed\":{\"split\":{\"s\":\"tp\"}},\"ln_f\":{\"split\":{\"s\":\"tp\"}},"
                  "\"blocks.*.ln1\":{\"split\":{\"s\":\"tp\"}},"
                  "\"blocks.*.ln2\":{\"split\":{\"s\":\"tp\"}},"
                  "\"blocks.*.attn.residual\":{\"split\":{\"s\":\"tp\"}},"
                  "\"blocks.*.mlp.residual\":{\"split\":{\"s\":\"tp\"}},"
                  "\"blocks.*.attn.proj_bias\":{\"split\":{\"s\":\"tp\"}},"
                  "\"blocks.*.mlp.fc2_bias\":{\"split\":{\"s\":\"tp\"}}"
                : "");
}

/* ----------------------------------------------------------------------------
 * Cross-class pipeline checks */

/* Every pipeline send has a recv on its peer stage with the same tensor,
 * micro-batch, phase and bytes, in the same order on each (src, dst) channel,
 * and vice versa. */
static void check_pipeline_pairs(const Plan *p, const Strategy *s)
{
    int P = s->nstages;
    for (int a = 0; a < P; a++)
        for (int b = 0; b < P; b++) {
            if (a == b) continue;
            const Program *src = stage_prog(p, a), *dst = stage_prog(p, b);
            int i = 0, j = 0, pairs = 0;
            for (;;) {
                while (i < src->ninstrs && !(src->instrs[i].kind == I_SEND &&
                                             src->instrs[i].why == WHY_PIPELINE &&
                                             src->instrs[i].peer == b))
                    i++;
                while (j < dst->ninstrs && !(dst->instrs[j].kind == I_RECV &&
                                             dst->instrs[j].why == WHY_PIPELINE &&
                                             dst->instrs[j].peer == a))
                    j++;
                if (i == src->ninstrs || j == dst->ninstrs) break;
                const Instr *sd = &src->instrs[i], *rv = &dst->instrs[j];
                if (sd->tensor != rv->tensor || sd->micro != rv->micro || sd->bytes != rv->bytes ||
                    sd->phase != rv->phase)
                    fail_msg("stage %d -> %d, pair %d: send (t %d, mb %d, %lld B, ph %d) vs recv "
                             "(t %d, mb %d, %lld B, ph %d)", a, b, pairs, sd->tensor, sd->micro,
                             (long long)sd->bytes, sd->phase, rv->tensor, rv->micro,
                             (long long)rv->bytes, rv->phase);
                assert_true(sd->axes == (AxisMask)(1u << s->pp_axis));
                assert_true(rv->axes == (AxisMask)(1u << s->pp_axis));
                assert_true(sd->ndeps >= 1);      /* a send waits for its value */
                assert_true(sd->micro >= 0);
                pairs++;
                i++;
                j++;
            }
            /* nothing left over on either side */
            if (i != src->ninstrs || j != dst->ninstrs) {
                while (i < src->ninstrs) {
                    const Instr *in = &src->instrs[i++];
                    if (in->kind == I_SEND && in->why == WHY_PIPELINE && in->peer == b)
                        fail_msg("stage %d -> %d: unmatched send of tensor %d mb %d", a, b,
                                 in->tensor, in->micro);
                }
                while (j < dst->ninstrs) {
                    const Instr *in = &dst->instrs[j++];
                    if (in->kind == I_RECV && in->why == WHY_PIPELINE && in->peer == a)
                        fail_msg("stage %d <- %d: unmatched recv of tensor %d mb %d", b, a,
                                 in->tensor, in->micro);
                }
            }
        }
}

/* Runs the pipeline programs of every stage in program order with buffered
 * (eager) sends: a send completes at once, a recv once its send has run.
 * Returns true when every stage reaches its end (no deadlock). With
 * `rendezvous`, a send and its recv complete only together. */
static bool pipeline_runs(const Plan *p, const Strategy *s, bool rendezvous)
{
    int P = s->nstages;
    const Program **pr = calloc(P, sizeof *pr);
    int *pc = calloc(P, sizeof *pc);
    int *sent = calloc((size_t)P * P, sizeof *sent), *recvd = calloc((size_t)P * P, sizeof *recvd);
    for (int st = 0; st < P; st++) pr[st] = stage_prog(p, st);
    bool progress = true;
    while (progress) {
        progress = false;
        for (int st = 0; st < P; st++) {
            for (;;) {
                while (pc[st] < pr[st]->ninstrs &&
                       !((pr[st]->instrs[pc[st]].kind == I_SEND ||
                          pr[st]->instrs[pc[st]].kind == I_RECV) &&
                         pr[st]->instrs[pc[st]].why == WHY_PIPELINE))
                    pc[st]++;
                if (pc[st] == pr[st]->ninstrs) break;
                const Instr *in = &pr[st]->instrs[pc[st]];
                int peer = in->peer;
                if (in->kind == I_SEND && !rendezvous) {
                    sent[st * P + peer]++;
                } else if (in->kind == I_RECV && !rendezvous) {
                    if (recvd[peer * P + st] >= sent[peer * P + st]) break;
                    recvd[peer * P + st]++;
                } else {
                    /* rendezvous: the peer's head must be the matching op */
                    int q = pc[peer];
                    while (q < pr[peer]->ninstrs &&
                           !((pr[peer]->instrs[q].kind == I_SEND ||
                              pr[peer]->instrs[q].kind == I_RECV) &&
                             pr[peer]->instrs[q].why == WHY_PIPELINE))
                        q++;
                    pc[peer] = q;
                    if (q == pr[peer]->ninstrs) break;
                    const Instr *o = &pr[peer]->instrs[q];
                    if (o->peer != st || o->kind == in->kind) break;
                    pc[peer]++;
                }
                pc[st]++;
                progress = true;
            }
        }
    }
    bool done = true;
    for (int st = 0; st < P; st++) {
        while (pc[st] < pr[st]->ninstrs &&
               !((pr[st]->instrs[pc[st]].kind == I_SEND || pr[st]->instrs[pc[st]].kind == I_RECV) &&
                 pr[st]->instrs[pc[st]].why == WHY_PIPELINE))
            pc[st]++;
        done &= pc[st] == pr[st]->ninstrs;
    }
    free(pr);
    free(pc);
    free(sent);
    free(recvd);
    return done;
}

/* Dependency invariants of one program beyond "deps point backwards":
 * an op's backward for a micro-batch comes after its forward for that
 * micro-batch; every op of the stage runs forward once per micro-batch
 * (recompute aside); gradient syncs by all-reduce and reduce-scatter wait
 * for a weight gradient. */
static void check_deps(const Graph *g, const Strategy *s, const Program *pr)
{
    int m = s->microbatches;
    int *fwd = malloc(sizeof *fwd * g->nops * m);
    int *nfwd = calloc(g->nops * m, sizeof *nfwd);
    for (int i = 0; i < g->nops * m; i++) fwd[i] = -1;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == I_COMPUTE && in->op >= 0 && in->micro >= 0) {
            assert_true(in->micro < m);
            assert_int_equal(s->op_stage[in->op], pr->stage);
            int key = in->op * m + in->micro;
            if (in->phase == PH_FWD && !in->recompute) {
                nfwd[key]++;
                if (fwd[key] < 0) fwd[key] = i;
            } else if (in->phase == PH_BWD_DATA || in->phase == PH_BWD_WEIGHT) {
                if (fwd[key] < 0 || fwd[key] > i)
                    fail_msg("op %s mb %d: backward at %d before its forward", g->ops[in->op].name,
                             in->micro, i);
            }
        }
        if (in->why == WHY_GRAD_SYNC && (in->kind == I_ALLREDUCE || in->kind == I_REDUCE_SCATTER)) {
            /* walk the dependency chain back to a weight-gradient compute */
            int cur = i;
            bool found = false;
            while (!found) {
                const Instr *c = &pr->instrs[cur];
                if (c->ndeps == 0) break;
                int d = pr->deps[c->dep0];
                const Instr *di = &pr->instrs[d];
                if (di->kind == I_COMPUTE && di->phase == PH_BWD_WEIGHT) found = true;
                cur = d;
            }
            if (!found)
                fail_msg("gradient sync %d of %s does not wait for a weight gradient", i,
                         g->tensors[in->tensor].name);
        }
    }
    for (int i = 0; i < g->nops; i++) {
        if (s->op_stage[i] != pr->stage) continue;
        for (int mb = 0; mb < m; mb++)
            if (nfwd[i * m + mb] != 1)
                fail_msg("op %s mb %d: %d forwards on stage %d", g->ops[i].name, mb,
                         nfwd[i * m + mb], pr->stage);
    }
    free(fwd);
    free(nfwd);
}

/* ----------------------------------------------------------------------------
 * Values: what each instruction's payload says agrees with the buffers it
 * names. all_reduce: src and dst hold `bytes`; all_gather: dst (the output)
 * holds `bytes`; reduce_scatter: src (the input) holds `bytes`; all_to_all,
 * send: src; recv: dst; alloc, free: the value. Compressed syncs and
 * parameter-server parts carry fewer bytes than their buffers and are
 * skipped. */
static void check_values(const Graph *g, const Program *pr, const char *what)
{
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->compress != COMPRESS_NONE || in->nparts) continue;
        if (in->kind == I_COMPUTE || in->kind == I_BROADCAST) continue;
        if (in->why == WHY_STATS) continue;            /* statistics, not the value */
        if (in->why == WHY_GRAD_SYNC && in->kind == I_ALLGATHER) continue;   /* sfb factors */
        const int32_t *a = &pr->args[in->arg0];
        int32_t v;
        switch ((InstrKind)in->kind) {
        case I_ALLREDUCE: case I_ALLGATHER: case I_RECV: case I_ALLOC: case I_FREE:
            v = a[0];
            break;
        default:      /* reduce_scatter, all_to_all, send: the source */
            v = in->kind == I_SEND ? a[0] : a[1];
            break;
        }
        assert_true(in->nargs >= 1);
        if (v < 0 || v >= pr->nvalues) fail_msg("%s: instr %d (%s) names value %d", what, i,
                                                instr_kind_name(in->kind), v);
        const Value *val = &pr->values[v];
        if (val->bytes != in->bytes)
            fail_msg("%s: instr %d %s (why %d) of %s: %lld B, but its value %d holds %lld B", what,
                     i, instr_kind_name(in->kind), in->why, g->tensors[val->tensor].name,
                     (long long)in->bytes, v, (long long)val->bytes);
        if (in->kind == I_ALLREDUCE && a[1] >= 0 && pr->values[a[1]].bytes != in->bytes)
            fail_msg("%s: all_reduce %d: source holds %lld B, payload %lld B", what, i,
                     (long long)pr->values[a[1]].bytes, (long long)in->bytes);
    }
}

/* ----------------------------------------------------------------------------
 * Sequence parallelism (Korthikanti et al. 2022): per layer, forward 2
 * all-gathers + 2 reduce-scatters of b*s*h instead of 2 all-reduces, and the
 * same in backward. Outside the blocks: the vocab-parallel embedding's partial
 * sum is reduce-scattered into the s-split pos_embed (forward; all-gather in
 * backward) and ln_f's output is all-gathered for the logits (forward;
 * reduce-scatter of the logits' input gradient in backward). The params the
 * s-split ops use (layernorms, row-parallel biases) have gradients partial
 * over tp: all-reduced over tp, as Megatron does for sequence-parallel params. */
static void check_sp(const Graph *g, const Strategy *s, const Plan *p, GptShape x, int T)
{
    check_plan(p);
    assert_int_equal(p->nclasses, 1);
    const Program *pr = &p->classes[0];
    int64_t bsh = (int64_t)x.B * x.s * x.h * 4;
    AxisMask tp = axis(s, "tp");
    assert_int_equal(gbytes(pr, s, I_ALLGATHER, WHY_RESHARD), (4 * x.l + 2) * bsh);
    assert_int_equal(gbytes(pr, s, I_REDUCE_SCATTER, WHY_RESHARD), (4 * x.l + 2) * bsh);
    assert_int_equal(gcount(pr, s, I_ALLGATHER, WHY_RESHARD), 4 * x.l + 2);
    assert_int_equal(gcount(pr, s, I_REDUCE_SCATTER, WHY_RESHARD), 4 * x.l + 2);
    assert_int_equal(gbytes(pr, s, I_ALLREDUCE, WHY_RESHARD), 0);
    assert_int_equal(gbytes(pr, s, I_ALL_TO_ALL, WHY_COUNT), 0);
    assert_int_equal(gbytes(pr, s, I_ALLREDUCE, WHY_STATS), 5LL * x.B * x.s * 4);
    /* per layer ln1, ln2 (g, b), attn.bo, mlp.b2; plus ln_f */
    int64_t h = x.h;
    assert_int_equal(gbytes(pr, s, I_ALLREDUCE, WHY_GRAD_SYNC), (6 * x.l * h + 2 * h) * 4);
    assert_int_equal(gcount(pr, s, I_ALLREDUCE, WHY_GRAD_SYNC), 6 * x.l + 2);
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (!is_comm(in->kind) || strategy_group_size(s, in->axes) == 1) continue;
        assert_true(in->axes & tp);
        assert_int_equal(strategy_group_size(s, in->axes), T);
        if (in->why == WHY_RESHARD) assert_int_equal(in->bytes, bsh);
    }
    (void)g;
}

static void test_sequence_parallel(void **state)
{
    (void)state;
    GptShape shapes[] = { { 2, 64, 4, 16, 128, 8, true }, { 3, 128, 8, 32, 256, 4, false } };
    int degrees[] = { 2, 4 };
    for (int a = 0; a < 2; a++)
        for (int d = 0; d < 2; d++) {
            GptShape x = shapes[a];
            int T = degrees[d];
            Graph *g = gpt(x);
            char ops[2048], js[2200];
            megatron_ops(ops, sizeof ops, true);
            snprintf(js, sizeof js, "{\"mesh\":{\"tp\":%d},%s}", T, ops);
            Strategy *s = strat(g, js);
            Plan *p = lower(g, s);
            check_sp(g, s, p, x, T);

            /* sequence parallelism holds the norm/residual activations 1/T: a
             * lower activation peak than plain tensor parallelism */
            megatron_ops(ops, sizeof ops, false);
            snprintf(js, sizeof js, "{\"mesh\":{\"tp\":%d},%s}", T, ops);
            Strategy *s0 = strat(g, js);
            Plan *p0 = lower(g, s0);
            check_plan(p0);
            assert_true(act_peak(&p->classes[0]) < act_peak(&p0->classes[0]));
            /* same total bytes per layer: 2 all-reduces == 1 all-gather + 1
             * reduce-scatter of the same buffer (ring cost 2(T-1)/T each way) */
            assert_int_equal(program_comm_bytes(&p0->classes[0], I_ALLREDUCE, WHY_RESHARD),
                             (4 * x.l + 2) * (int64_t)x.B * x.s * x.h * 4);

            plan_free(p0);
            strategy_free(s0);
            plan_free(p);
            strategy_free(s);
            graph_free(g);
        }
}

/* The megatron builder's sequence_parallel option yields the same program. */
static void test_sequence_parallel_builder(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    StrategyOpts o = {0};
    o.tp = 2;
    o.world = 2;
    o.sequence_parallel = true;
    Err err = {0};
    cJSON *j = strategy_build("megatron", g, NULL, &o, &err);
    if (!j) fail_msg("build: %s", err.msg);
    Strategy *s = strategy_from_json(j, g, NULL, &err);
    cJSON_Delete(j);
    if (!s) fail_msg("strategy: %s", err.msg);
    Plan *p = lower(g, s);
    check_sp(g, s, p, x, 2);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* Sequence parallelism across a pipeline: the boundary activation is s-split,
 * so each tp rank sends 1/T of it (Megatron's scatter-gather optimisation
 * falls out of the layouts). */
static void test_sequence_parallel_pipeline(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 16, false };
    int D = 2, T = 2, P = 2, m = 4;
    Graph *g = gpt(x);
    char ops[2048], js[2300];
    megatron_ops(ops, sizeof ops, true);
    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d,\"dp\":%d,\"tp\":%d},\"pipeline\":{\"microbatches\":%d},%s}",
             P, D, T, m, ops);
    Strategy *s = strat(g, js);
    Plan *p = lower(g, s);
    check_plan(p);
    check_pipeline_pairs(p, s);
    assert_true(pipeline_runs(p, s, false));
    int64_t boundary = (int64_t)x.B / (D * m) * (x.s / T) * x.h * 4;
    for (int st = 0; st < P; st++) {
        const Program *pr = stage_prog(p, st);
        assert_int_equal(count(pr, I_SEND, WHY_PIPELINE), m);
        assert_int_equal(program_comm_bytes(pr, I_SEND, WHY_PIPELINE), m * boundary);
        assert_int_equal(program_comm_bytes(pr, I_RECV, WHY_PIPELINE), m * boundary);
        check_deps(g, s, pr);
    }
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * dp x pp: each stage all-reduces the gradients of its own params over dp
 * only (never over pp); the boundary carries one micro-batch of the local
 * batch, B/(D m) * s * h, forward and back. */
static void test_dp_pp(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 16, false };
    const char *scheds[] = { "gpipe", "1f1b" };
    int Ds[] = { 2, 4 };
    for (int sc = 0; sc < 2; sc++)
        for (int di = 0; di < 2; di++) {
            int D = Ds[di], P = 2, m = 2;
            Graph *g = gpt(x);
            char js[256];
            snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d,\"dp\":%d},\"pipeline\":{\"microbatches\":%d,"
                                    "\"schedule\":\"%s\"}}", P, D, m, scheds[sc]);
            Strategy *s = strat(g, js);
            Plan *p = lower(g, s);
            check_plan(p);
            assert_int_equal(p->nclasses, P);
            check_pipeline_pairs(p, s);
            assert_true(pipeline_runs(p, s, false));
            AxisMask dp = axis(s, "dp");
            int64_t bsh = (int64_t)x.B / (D * m) * x.s * x.h * 4;
            int64_t sum = 0;
            for (int st = 0; st < P; st++) {
                const Program *pr = stage_prog(p, st);
                assert_int_equal(pr->nranks, D);
                check_deps(g, s, pr);
                int64_t own = stage_param_bytes(g, s, st);
                assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), own);
                sum += own;
                for (int i = 0; i < pr->ninstrs; i++) {
                    const Instr *in = &pr->instrs[i];
                    if (in->kind == I_ALLREDUCE) {
                        assert_int_equal(in->why, WHY_GRAD_SYNC);
                        assert_true(in->axes == dp);
                        assert_int_equal(in->micro, m - 1);   /* once, after the last micro-batch */
                    }
                    if (in->kind == I_SEND || in->kind == I_RECV) assert_int_equal(in->bytes, bsh);
                }
                assert_int_equal(program_comm_bytes(pr, I_SEND, WHY_PIPELINE), m * bsh);
                assert_int_equal(program_comm_bytes(pr, I_RECV, WHY_PIPELINE), m * bsh);
                assert_int_equal(comm_total(pr), own + 2 * m * bsh);
                /* Adam fp32: 16 bytes per element of the stage's params */
                assert_int_equal(pr->static_mem, own * 4);
            }
            assert_int_equal(sum, param_bytes(g));
            /* rank r sits on stage r / D (pp outermost) */
            for (int r = 0; r < p->world; r++)
                assert_int_equal(p->classes[p->rank_class[r]].stage, r / D);
            plan_free(p);
            strategy_free(s);
            graph_free(g);
        }
}

/* ----------------------------------------------------------------------------
 * dp x tp x pp (Megatron's 3-D grid): per stage, the tensor-parallel
 * all-reduces of its layers on the local micro-batch, a dp all-reduce of the
 * tp shard of its own params, full b*s*h on the pipeline boundary. */
static void test_dp_tp_pp(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 16, false };
    int P = 2, D = 2, T = 2, m = 4;
    Graph *g = gpt(x);
    char ops[1024], js[1200];
    megatron_ops(ops, sizeof ops, false);
    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d,\"dp\":%d,\"tp\":%d},\"pipeline\":{\"microbatches\":%d},%s}",
             P, D, T, m, ops);
    Strategy *s = strat(g, js);
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(p->nclasses, P);
    check_pipeline_pairs(p, s);
    assert_true(pipeline_runs(p, s, false));
    AxisMask dp = axis(s, "dp"), tp = axis(s, "tp");
    int64_t h = x.h, V = x.V, sq = x.s, L2 = x.l / 2;
    int64_t bsh = (int64_t)x.B / (D * m) * x.s * x.h * 4;
    /* stage 0: blocks 0..l/2-1, the embedding (wte v-split) and positions;
     * stage 1: the rest, ln_f and the untied head (v-split) */
    int64_t split[2] = { L2 * (12 * h * h + 7 * h) + V * h, L2 * (12 * h * h + 7 * h) + V * h };
    int64_t repl[2] = { L2 * 6 * h + sq * h, L2 * 6 * h + 2 * h };
    for (int st = 0; st < P; st++) {
        const Program *pr = stage_prog(p, st);
        assert_int_equal(pr->nranks, D * T);
        check_deps(g, s, pr);
        int64_t sync = (split[st] / T + repl[st]) * 4;
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), sync);
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_RESHARD), m * (4 * L2 + 1) * bsh);
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_STATS),
                         st == P - 1 ? 5LL * m * (x.B / (D * m)) * x.s * 4 : 0);
        assert_int_equal(program_comm_bytes(pr, I_SEND, WHY_PIPELINE), m * bsh);
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            if (in->why == WHY_GRAD_SYNC) assert_true(in->axes == dp);
            if (in->why == WHY_RESHARD || in->why == WHY_STATS) assert_true(in->axes == tp);
        }
    }
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Sufficient-factor broadcast (Poseidon, Zhang et al. 2017): for a matmul
 * weight W = X^T dY, every micro-batch all-gathers X and dY over the data
 * group and rebuilds the whole gradient locally; those params are never
 * all-reduced. Biases keep their all-reduce. */
static void test_sfb(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "input", "classes", "batch" };
    const char *vals[] = { "2", "64", "32", "10", "16" };
    int D = 4, m = 2, B = 16;
    Graph *g = zoo("mlp", 5, keys, vals);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":4},\"pipeline\":{\"microbatches\":2},"
                           "\"params\":{\"*.w\":{\"sync\":{\"method\":\"sfb\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    check_deps(g, s, pr);
    check_values(g, pr, "sfb");
    int64_t want_ag = 0, bias = 0;
    int nw = 0;
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *T = &g->tensors[t];
        if (T->role != ROLE_PARAM) continue;
        if (T->ndim == 2) {
            /* in x out weight: X is (B/m) x in, dY is (B/m) x out after the gather */
            want_ag += (int64_t)B * (T->shape[0] + T->shape[1]) * 4;
            nw++;
            assert_int_equal(bytes_of(pr, I_ALLREDUCE, WHY_COUNT, t), 0);
            assert_int_equal(bytes_of(pr, I_REDUCE_SCATTER, WHY_COUNT, t), 0);
        } else {
            bias += tbytes(g, t);
            assert_int_equal(bytes_of(pr, I_ALLREDUCE, WHY_GRAD_SYNC, t), tbytes(g, t));
        }
    }
    assert_int_equal(nw, 3);
    assert_int_equal(program_comm_bytes(pr, I_ALLGATHER, WHY_GRAD_SYNC), want_ag);
    assert_int_equal(count(pr, I_ALLGATHER, WHY_GRAD_SYNC), 2 * m * nw);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), bias);
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == I_ALLGATHER) {
            assert_int_equal(strategy_group_size(s, in->axes), D);
            assert_true(in->micro >= 0 && in->micro < m);
        }
    }
    /* One optimizer update per param per step. (Commit 3a1f71c's sync_param
     * fell through the SYNC_SFB branch on every micro-batch and updated sfb
     * params m times a step; the working copy returns until the last one.) */
    for (int t = 0; t < g->ntensors; t++) {
        if (g->tensors[t].role != ROLE_PARAM) continue;
        int updates = 0;
        for (int i = 0; i < pr->ninstrs; i++)
            updates += pr->instrs[i].kind == I_COMPUTE && pr->instrs[i].phase == PH_UPDATE &&
                       pr->instrs[i].tensor == t;
        if (updates != 1)
            fail_msg("param %s has %d optimizer updates in one step (m = %d)",
                     g->tensors[t].name, updates, m);
    }
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * PowerSGD (Vogels et al. 2019): a gradient viewed as rows x cols (first dim
 * by the rest) is all-reduced as two rank-r factors, P = M Q (rows x r) and
 * then Q = M^T P (cols x r), fp32. 1-D params stay uncompressed. */
static void test_powersgd_total(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "input", "classes", "batch" };
    const char *vals[] = { "2", "64", "32", "10", "8" };
    Graph *g = zoo("mlp", 5, keys, vals);
    int r = 4;
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2},\"params\":{\"*.w\":{\"sync\":{\"method\":"
                           "\"allreduce\",\"compress\":\"powersgd:4\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    int64_t want = 0;
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *T = &g->tensors[t];
        if (T->role != ROLE_PARAM) continue;
        if (T->ndim == 2) {
            int64_t w = (int64_t)r * (T->shape[0] + T->shape[1]) * 4;
            assert_int_equal(bytes_of(pr, I_ALLREDUCE, WHY_GRAD_SYNC, t), w);
            want += w;
            int n = 0;
            for (int i = 0; i < pr->ninstrs; i++)
                if (pr->instrs[i].kind == I_ALLREDUCE && pr->instrs[i].tensor == t) {
                    assert_int_equal(pr->instrs[i].compress, COMPRESS_POWERSGD);
                    n++;
                }
            assert_int_equal(n, 2);
        } else {
            want += tbytes(g, t);
            assert_int_equal(bytes_of(pr, I_ALLREDUCE, WHY_GRAD_SYNC, t), tbytes(g, t));
        }
    }
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), want);
    assert_true(want < param_bytes(g));
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* Regression: lower.c sync_param (the COMPRESS_POWERSGD branch) splits the
 * compressed payload in two equal halves; the first all-reduce carries P
 * (rows x r) and the second Q (cols x r), which differ unless rows == cols
 * (head.w is 64 x 10: P is 1024 B, Q is 160 B, not 592 + 592). */
static void test_powersgd_factor_sizes(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "input", "classes", "batch" };
    const char *vals[] = { "1", "64", "32", "10", "8" };
    Graph *g = zoo("mlp", 5, keys, vals);
    int r = 4;
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2},\"params\":{\"*.w\":{\"sync\":{\"method\":"
                           "\"allreduce\",\"compress\":\"powersgd:4\"}}}}");
    Plan *p = lower(g, s);
    const Program *pr = &p->classes[0];
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *T = &g->tensors[t];
        if (T->role != ROLE_PARAM || T->ndim != 2) continue;
        int64_t got[2] = {0, 0};
        int n = 0;
        for (int i = 0; i < pr->ninstrs && n < 2; i++)
            if (pr->instrs[i].kind == I_ALLREDUCE && pr->instrs[i].tensor == t)
                got[n++] = pr->instrs[i].bytes;
        assert_int_equal(n, 2);
        int64_t P_ = (int64_t)r * T->shape[0] * 4, Q_ = (int64_t)r * T->shape[1] * 4;
        if (got[0] != P_ || got[1] != Q_)
            NOTE_BUG("BUG: %s (%lld x %lld): PowerSGD all-reduces %lld + %lld B, want P %lld + Q %lld",
                     T->name, (long long)T->shape[0], (long long)T->shape[1], (long long)got[0],
                     (long long)got[1], (long long)P_, (long long)Q_);
    }
    plan_free(p);
    strategy_free(s);
    graph_free(g);
    report_bug();
}

/* Regression: lower.c compressed() (COMPRESS_POWERSGD) assumes a sharded param is
 * cut along its first dim (rows = shape[0] / (numel / local elems)). A
 * column-parallel weight (ih split on h over tp) is local i x h/T, so its
 * factors are r (i + h/T); the lowering prices r (i/T + h). */
static void test_powersgd_tensor_parallel(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "input", "classes", "batch" };
    const char *vals[] = { "1", "64", "32", "10", "8" };
    Graph *g = zoo("mlp", 5, keys, vals);
    int r = 4, T = 2;
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"blocks.*.fc*\":{\"split\":"
                           "{\"h\":\"tp\"}}},\"params\":{\"*.w\":{\"sync\":{\"method\":\"allreduce\","
                           "\"compress\":\"powersgd:4\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    int w = tensor(g, "blocks.0.fc.w");     /* 32 x 64, columns split: local 32 x 32 */
    const Tensor *W = &g->tensors[w];
    int64_t want = (int64_t)r * (W->shape[0] + W->shape[1] / T) * 4;
    int64_t got = bytes_of(pr, I_ALLREDUCE, WHY_GRAD_SYNC, w);
    if (got != want)
        NOTE_BUG("BUG: column-parallel %s: PowerSGD payload %lld B, want r (i + h/T) * 4 = %lld B",
                 W->name, (long long)got, (long long)want);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
    report_bug();
}

/* ----------------------------------------------------------------------------
 * int8 compression: one byte per element plus one fp32 scale per tensor. */
static void test_int8(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":"
                           "{\"method\":\"allreduce\",\"compress\":\"int8\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    int64_t want = 0;
    for (int t = 0; t < g->ntensors; t++)
        if (g->tensors[t].role == ROLE_PARAM) want += tensor_numel(&g->tensors[t]) + 4;
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), want);
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_GRAD_SYNC), nparams(g));
    assert_int_equal(comm_total(pr), want);
    for (int i = 0; i < pr->ninstrs; i++)
        if (pr->instrs[i].kind == I_ALLREDUCE) assert_int_equal(pr->instrs[i].compress, COMPRESS_INT8);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * ZeRO-3 with tensor parallelism: ZeRO shards each rank's tp shard over dp.
 * Per micro-batch: all-gather (forward and backward) and reduce-scatter of
 * Psi_tp = the tp-local param bytes, over dp only; no gradient all-reduce;
 * Megatron's tp all-reduces unchanged; resident state 16 Psi_tp / (4 D). */
static void test_zero3_tp(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, false };
    int D = 2, T = 2;
    for (int m = 1; m <= 2; m++) {
        Graph *g = gpt(x);
        char ops[1024], js[1300];
        megatron_ops(ops, sizeof ops, false);
        snprintf(js, sizeof js, "{\"mesh\":{\"dp\":%d,\"tp\":%d},\"pipeline\":{\"microbatches\":%d},"
                                "\"params\":{\"*\":{\"shard\":\"zero3\"}},%s}", D, T, m, ops);
        Strategy *s = strat(g, js);
        Plan *p = lower(g, s);
        check_plan(p);
        assert_int_equal(p->nclasses, 1);
        const Program *pr = &p->classes[0];
        check_deps(g, s, pr);
        AxisMask dp = axis(s, "dp"), tp = axis(s, "tp");
        int64_t h = x.h, V = x.V;
        int64_t split = x.l * (12 * h * h + 7 * h) + 2 * V * h;      /* wte and head.w v-split */
        int64_t repl = x.l * 6 * h + (int64_t)x.s * h + 2 * h;
        int64_t psi_tp = (split / T + repl) * 4;
        assert_int_equal(program_comm_bytes(pr, I_ALLGATHER, WHY_PARAM_GATHER), 2 * m * psi_tp);
        assert_int_equal(program_comm_bytes(pr, I_REDUCE_SCATTER, WHY_GRAD_SYNC), m * psi_tp);
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), 0);
        int64_t bsh = (int64_t)x.B / (D * m) * x.s * x.h * 4;
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_RESHARD), m * (4 * x.l + 2) * bsh);
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            if (in->why == WHY_PARAM_GATHER || in->why == WHY_GRAD_SYNC) assert_true(in->axes == dp);
            if (in->why == WHY_RESHARD) assert_true(in->axes == tp);
        }
        /* the param's shard, the gradient's shard, Adam's state of the
         * shard (test_lower.c's test_zero); the whole gradient lives from
         * each backward to its reduce-scatter */
        int64_t e = psi_tp / 4;
        int64_t want = 16 * e / D;
        assert_true(llabs(pr->static_mem - want) <= 64 * nparams(g));
        plan_free(p);
        strategy_free(s);
        graph_free(g);
    }
}

/* ----------------------------------------------------------------------------
 * VGG16: convolutions lower like any other op; data parallel moves Psi. */
static void test_vgg16_dp(void **state)
{
    (void)state;
    const char *keys[] = { "batch", "image", "classes" };
    const char *vals[] = { "16", "32", "10" };
    Graph *g = zoo("vgg16", 3, keys, vals);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":4}}");
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(p->nclasses, 1);
    const Program *pr = &p->classes[0];
    check_deps(g, s, pr);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g));
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_GRAD_SYNC), nparams(g));
    assert_int_equal(comm_total(pr), param_bytes(g));
    assert_int_equal(pr->static_mem, 4 * param_bytes(g));
    /* 13 convs + 3 fc, each a weight and a bias */
    assert_int_equal(nparams(g), 32);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* "One weird trick" (Krizhevsky 2014) on a dp x tp mesh: the convolutions
 * are data parallel over every rank (n split on dp and tp), the classifier is
 * tensor parallel (fc6 column-split on tp, fc7 row-split, fc8 replicated over
 * tp), data parallel over dp. Expected:
 *   forward:  all-gather over tp of the conv features (n: dp+tp -> dp),
 *             all-reduce over tp of fc7's partial output;
 *   backward: reduce-scatter over tp of fc6's input gradient (partial over tp,
 *             wanted split on n over dp+tp); nothing for fc7's input gradient;
 *   gradient sync: conv params over dp+tp (whole), fc6 (w, b) and fc7.w
 *             over dp (their tp halves), fc7.b and fc8 over dp (whole). */
static void test_vgg16_dp_conv_tp_fc(void **state)
{
    (void)state;
    const char *keys[] = { "batch", "image", "classes" };
    const char *vals[] = { "16", "32", "10" };
    int B = 16, D = 2, T = 2;
    Graph *g = zoo("vgg16", 3, keys, vals);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{"
                           "\"blocks.*\":{\"split\":{\"n\":[\"dp\",\"tp\"]}},"
                           "\"blocks.5.*\":{\"split\":{\"n\":\"dp\",\"f\":\"tp\"}},"
                           "\"blocks.6.fc\":{\"split\":{\"n\":\"dp\",\"f\":\"tp\"}},"
                           "\"blocks.6.fc_bias\":{\"split\":{\"n\":\"dp\"}},"
                           "\"blocks.6.relu\":{\"split\":{\"n\":\"dp\"}},"
                           "\"blocks.7.*\":{\"split\":{\"n\":\"dp\"}},"
                           "\"loss\":{\"split\":{\"n\":\"dp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(p->nclasses, 1);
    const Program *pr = &p->classes[0];
    check_deps(g, s, pr);
    check_values(g, pr, "vgg16 dp convs + tp fc");
    AxisMask dp = axis(s, "dp"), tp = axis(s, "tp");
    int feat = tensor(g, "blocks.4.pool");             /* B x 512 x 1 x 1 */
    int fc7 = tensor(g, "blocks.6.fc");                 /* B x 4096 */
    int64_t feat_b = tbytes(g, feat) / D, fc7_b = tbytes(g, fc7) / D;
    assert_int_equal(feat_b, (int64_t)B / D * 512 * 4);

    /* resharding: exactly three collectives, all over tp */
    assert_int_equal(count(pr, I_ALLGATHER, WHY_RESHARD), 1);
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_RESHARD), 1);
    assert_int_equal(count(pr, I_REDUCE_SCATTER, WHY_RESHARD), 1);
    assert_int_equal(count(pr, I_ALL_TO_ALL, WHY_COUNT), 0);
    assert_int_equal(bytes_of(pr, I_ALLGATHER, WHY_RESHARD, feat), feat_b);
    assert_int_equal(bytes_of(pr, I_REDUCE_SCATTER, WHY_RESHARD, feat), feat_b);
    assert_int_equal(bytes_of(pr, I_ALLREDUCE, WHY_RESHARD, fc7), fc7_b);
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->why == WHY_RESHARD) {
            assert_true(in->axes == tp);
            assert_int_equal(in->phase, in->kind == I_REDUCE_SCATTER ? PH_BWD_DATA : PH_FWD);
        }
    }

    /* gradient sync */
    int64_t conv = 0, fc_dp = 0;
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *Tn = &g->tensors[t];
        if (Tn->role != ROLE_PARAM) continue;
        bool is_fc = strstr(Tn->name, ".fc.") != NULL;
        bool tp_half = strncmp(Tn->name, "blocks.5.", 9) == 0 || strcmp(Tn->name, "blocks.6.fc.w") == 0;
        int64_t want = tp_half ? tbytes(g, t) / T : tbytes(g, t);
        assert_int_equal(bytes_of(pr, I_ALLREDUCE, WHY_GRAD_SYNC, t), want);
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            if (in->tensor == t && in->why == WHY_GRAD_SYNC)
                assert_true(in->axes == (is_fc ? dp : (AxisMask)(dp | tp)));
        }
        if (is_fc) fc_dp += want;
        else conv += want;
    }
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), conv + fc_dp);
    assert_int_equal(comm_total(pr), conv + fc_dp + 2 * feat_b + fc7_b);
    /* the classifier's big matrices are held halved */
    int64_t fc_half = (tbytes(g, tensor(g, "blocks.5.fc.w")) + tbytes(g, tensor(g, "blocks.6.fc.w"))) / T;
    assert_true(pr->static_mem <= 4 * (param_bytes(g) - fc_half));
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * DLRM embedding sharding (Naumov et al. 2019; TorchRec).
 * Table-wise: each rank owns T/D whole tables and looks them up for the whole
 * batch; an all-to-all turns (all samples, my tables) into (my samples, all
 * tables) forward and back. The tables' gradients are local: no sync.
 * Row-wise: each rank owns V/D rows of every table; the lookups are partial
 * sums, reduce-scattered onto the batch forward and all-gathered back. */
static void test_dlrm_sharding(void **state)
{
    (void)state;
    const char *keys[] = { "batch", "tables", "rows", "dim", "bottom", "top" };
    const char *vals[] = { "32", "8", "1000", "16", "64,16", "64,32" };
    int B = 32, Tn = 8, dim = 16, D = 4;
    for (int mode = 0; mode < 2; mode++) {
        Graph *g = zoo("dlrm", 6, keys, vals);
        Strategy *s = strat(g, mode == 0
            ? "{\"mesh\":{\"dp\":4},\"ops\":{\"sparse\":{\"split\":{\"b\":null,\"t\":\"dp\"}}}}"
            : "{\"mesh\":{\"dp\":4},\"ops\":{\"sparse\":{\"split\":{\"b\":null,\"v\":\"dp\"}}}}");
        Plan *p = lower(g, s);
        check_plan(p);
        assert_int_equal(p->nclasses, 1);
        const Program *pr = &p->classes[0];
        check_deps(g, s, pr);
        check_values(g, pr, "dlrm");
        int tab = tensor(g, "sparse.tables"), emb = tensor(g, "sparse");
        int64_t dense = param_bytes(g) - tbytes(g, tab);
        assert_int_equal(comm_on(pr, tab), 0);
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), dense);
        if (mode == 0) {
            int64_t a2a = (int64_t)B * (Tn / D) * dim * 4;
            assert_int_equal(count(pr, I_ALL_TO_ALL, WHY_RESHARD), 2);
            assert_int_equal(bytes_of(pr, I_ALL_TO_ALL, WHY_RESHARD, emb), 2 * a2a);
            assert_int_equal(comm_total(pr), dense + 2 * a2a);
        } else {
            int64_t full = (int64_t)B * Tn * dim * 4;
            assert_int_equal(count(pr, I_REDUCE_SCATTER, WHY_RESHARD), 1);
            assert_int_equal(count(pr, I_ALLGATHER, WHY_RESHARD), 1);
            assert_int_equal(bytes_of(pr, I_REDUCE_SCATTER, WHY_RESHARD, emb), full);
            assert_int_equal(bytes_of(pr, I_ALLGATHER, WHY_RESHARD, emb), full);
            assert_int_equal(comm_total(pr), dense + 2 * full);
        }
        /* one conversion forward, its mirror in backward, both on the lookups */
        int fwd = 0, bwd = 0;
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            if (in->why != WHY_RESHARD) continue;
            assert_int_equal(in->tensor, emb);
            fwd += in->phase == PH_FWD;
            bwd += in->phase == PH_BWD_DATA;
        }
        assert_int_equal(fwd, 1);
        assert_int_equal(bwd, 1);
        /* the table lives sharded: 16 B per element over D ranks */
        assert_true(pr->static_mem == 4 * dense + 4 * tbytes(g, tab) / D);
        plan_free(p);
        strategy_free(s);
        graph_free(g);
    }
}

/* ----------------------------------------------------------------------------
 * Expert parallelism (GShard, Lepikhin et al. 2020; Switch): with the expert
 * letter split over the data axis, each MoE layer moves its dispatched tokens
 * (B/D samples x E experts x C slots x h) by all-to-all to the experts'
 * owners and back: 2 in forward, 2 in backward. Expert weights live on their
 * owner and are never synchronised; everything else is data parallel. */
static void test_expert_parallel(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "heads", "seq", "vocab", "batch", "experts", "every" };
    const char *vals[] = { "2", "64", "4", "16", "128", "8", "4", "1" };
    int B = 8, E = 4, h = 64, s_ = 16, D = 2, L = 2;
    int C = (int)((5 * s_ + 4 * E - 1) / (4 * E));      /* ceil(1.25 s / E) */
    Graph *g = zoo("moe", 8, keys, vals);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2},\"ops\":{\"blocks.*.moe.fc1\":{\"split\":{\"b\":null,"
                           "\"e\":\"dp\"}},\"blocks.*.moe.gelu\":{\"split\":{\"b\":null,\"e\":\"dp\"}},"
                           "\"blocks.*.moe.fc2\":{\"split\":{\"b\":null,\"e\":\"dp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    check_deps(g, s, pr);
    check_values(g, pr, "moe");
    int64_t a2a = (int64_t)B / D * E * C * h * 4;
    assert_int_equal(count(pr, I_ALL_TO_ALL, WHY_RESHARD), 4 * L);
    assert_int_equal(program_comm_bytes(pr, I_ALL_TO_ALL, WHY_RESHARD), 4 * L * a2a);
    int64_t experts = 0;
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *T = &g->tensors[t];
        if (T->role != ROLE_PARAM) continue;
        if (strstr(T->name, "moe.w1") || strstr(T->name, "moe.w2")) {
            assert_int_equal(comm_on(pr, t), 0);
            experts += tbytes(g, t);
        }
    }
    assert_true(experts > 0);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g) - experts);
    assert_int_equal(comm_total(pr), param_bytes(g) - experts + 4 * L * a2a);
    assert_int_equal(pr->static_mem, 4 * (param_bytes(g) - experts) + 4 * experts / D);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ResNet-50 data parallel: gradients all-reduced once (Psi), and, because
 * the batch letter n is also batchnorm's reduction letter, every batchnorm
 * becomes synchronised batchnorm: one all-reduce of (sum, sum of squares)
 * forward and one of (sum dy, sum dy x) backward, 2 c fp32 each. This is the
 * exact (one-rank-equivalent) semantics; PyTorch DDP's default keeps
 * batchnorm local. */
static void test_resnet_dp_syncbn(void **state)
{
    (void)state;
    const char *keys[] = { "batch", "image", "classes" };
    const char *vals[] = { "8", "32", "10" };
    Graph *g = zoo("resnet", 3, keys, vals);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    check_deps(g, s, pr);
    check_values(g, pr, "resnet");
    int nbn = 0;
    int64_t stats = 0;
    for (int i = 0; i < g->nops; i++)
        if (g->ops[i].kind == OP_BATCHNORM) {
            nbn++;
            stats += (2 + 4) * g->ops[i].size['c' - 'a'] * 4;   /* sum, sumsq forward; 4 sums backward */
        }
    assert_int_equal(nbn, 53);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g));
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_STATS), 2 * nbn);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_STATS), stats);
    assert_int_equal(comm_total(pr), param_bytes(g) + stats);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* BERT data parallel (tied decoder plus its bias): one all-reduce per param. */
static void test_bert_dp(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "heads", "seq", "vocab", "batch" };
    const char *vals[] = { "2", "64", "4", "16", "128", "8" };
    Graph *g = zoo("bert", 6, keys, vals);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":4}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    check_deps(g, s, pr);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g));
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_GRAD_SYNC), nparams(g));
    assert_int_equal(comm_total(pr), param_bytes(g));
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Pipelines across classes: every recv pairs with a send of the same tensor,
 * micro-batch and size, in the same order on every channel; the programs run
 * to the end with buffered sends; dependencies respect forward-before-
 * backward per op and micro-batch. */
static void test_pipeline_pairing(void **state)
{
    (void)state;
    GptShape x = { 8, 64, 4, 16, 128, 16, true };
    const char *scheds[] = { "gpipe", "1f1b" };
    const char *meshes[] = { "\"pp\":4", "\"pp\":2,\"dp\":2", "\"pp\":4,\"dp\":2,\"tp\":2" };
    int ms[] = { 2, 4, 8 };
    for (int sc = 0; sc < 2; sc++)
        for (int me = 0; me < 3; me++)
            for (int mi = 0; mi < 3; mi++) {
                Graph *g = gpt(x);
                char ops[1024], js[1400];
                megatron_ops(ops, sizeof ops, false);
                int D = me == 0 ? 1 : 2;
                if (x.B % (D * ms[mi])) {
                    graph_free(g);
                    continue;
                }
                snprintf(js, sizeof js, "{\"mesh\":{%s},\"pipeline\":{\"microbatches\":%d,"
                                        "\"schedule\":\"%s\"}%s%s}",
                         meshes[me], ms[mi], scheds[sc], me == 2 ? "," : "", me == 2 ? ops : "");
                Strategy *s = strat(g, js);
                Plan *p = lower(g, s);
                check_plan(p);
                check_pipeline_pairs(p, s);
                if (!pipeline_runs(p, s, false))
                    fail_msg("pipeline %s deadlocks with buffered sends", js);
                for (int k = 0; k < p->nclasses; k++) {
                    check_deps(g, s, &p->classes[k]);
                    check_values(g, &p->classes[k], js);
                }
                /* per stage: m forward sends per downstream edge, m gradient
                 * sends per upstream edge */
                for (int st = 0; st < s->nstages; st++) {
                    const Program *pr = stage_prog(p, st);
                    int edges = (st > 0) + (st < s->nstages - 1);
                    assert_int_equal(count(pr, I_SEND, WHY_PIPELINE), edges * ms[mi]);
                    assert_int_equal(count(pr, I_RECV, WHY_PIPELINE), edges * ms[mi]);
                }
                plan_free(p);
                strategy_free(s);
                graph_free(g);
            }
}

/* Rank classes: each rank's class is its stage's (stage = pp coordinate);
 * classes partition the ranks; ranks of a class are ascending. */
static void test_rank_classes(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 16, true };
    Graph *g = gpt(x);
    /* pp in the middle: the stage is not r / (D T) */
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2,\"pp\":2,\"tp\":2},\"pipeline\":{\"microbatches\":2},"
                           "\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(p->nclasses, 2);
    int seen[8] = {0};
    for (int k = 0; k < p->nclasses; k++) {
        const Program *pr = &p->classes[k];
        assert_int_equal(pr->nranks, 4);
        for (int i = 0; i < pr->nranks; i++) {
            int r = pr->ranks[i], c[MESH_MAX_AXES];
            if (i) assert_true(pr->ranks[i - 1] < r);
            strategy_coords(s, r, c);
            assert_int_equal(c[s->pp_axis], pr->stage);
            assert_int_equal(p->rank_class[r], k);
            seen[r]++;
        }
    }
    for (int r = 0; r < 8; r++) assert_int_equal(seen[r], 1);
    check_pipeline_pairs(p, s);
    assert_true(pipeline_runs(p, s, false));
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Pipeline memory: GPipe keeps all m micro-batches' activations alive on
 * every stage; 1F1B keeps min(P - s, m) on stage s, so stage 0 holds the
 * most and the last stage one. */
static void test_pipeline_memory(void **state)
{
    (void)state;
    /* small vocab, so the blocks dominate every stage's activations */
    GptShape x = { 4, 64, 4, 16, 16, 16, false };
    int P = 4, m = 8;
    Graph *g = gpt(x);
    char js[256];
    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d},\"pipeline\":{\"microbatches\":%d,\"schedule\":\"gpipe\"}}", P, m);
    Strategy *sg = strat(g, js);
    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d},\"pipeline\":{\"microbatches\":%d,\"schedule\":\"1f1b\"}}", P, m);
    Strategy *s1 = strat(g, js);
    Plan *pg = lower(g, sg), *p1 = lower(g, s1);
    check_plan(pg);
    check_plan(p1);
    int64_t a1[4], ag[4];
    for (int st = 0; st < P; st++) {
        a1[st] = act_peak(stage_prog(p1, st));
        ag[st] = act_peak(stage_prog(pg, st));
        /* the same params either way */
        assert_int_equal(stage_prog(p1, st)->static_mem, stage_prog(pg, st)->static_mem);
    }
    /* 1F1B: stage 0 holds the most, each later stage no more than the one before */
    for (int st = 1; st < P; st++) assert_true(a1[st] <= a1[st - 1]);
    assert_true(a1[0] > a1[P - 1]);
    /* GPipe holds m micro-batches everywhere; 1F1B's stage 0 min(P, m) */
    for (int st = 0; st < P; st++) assert_true(ag[st] >= a1[st]);
    double ratio = (double)ag[0] / (double)a1[0], want = (double)m / P;
    if (ratio < 0.8 * want || ratio > 1.25 * want)
        fail_msg("GPipe / 1F1B activation peak on stage 0: %.2f, want about m / P = %.2f", ratio, want);
    /* the last stage under 1F1B holds one micro-batch; under GPipe m */
    ratio = (double)ag[P - 1] / (double)a1[P - 1];
    if (ratio < 0.6 * m || ratio > 1.25 * m)
        fail_msg("GPipe / 1F1B activation peak on the last stage: %.2f, want about m = %d", ratio, m);
    plan_free(pg);
    plan_free(p1);
    strategy_free(sg);
    strategy_free(s1);

    /* m <= P - 1: 1F1B's warm-up covers every micro-batch on stage 0, so its
     * order (and peak) is GPipe's */
    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":4},\"pipeline\":{\"microbatches\":2,\"schedule\":\"gpipe\"}}");
    sg = strat(g, js);
    snprintf(js, sizeof js, "{\"mesh\":{\"pp\":4},\"pipeline\":{\"microbatches\":2,\"schedule\":\"1f1b\"}}");
    s1 = strat(g, js);
    pg = lower(g, sg);
    p1 = lower(g, s1);
    assert_int_equal(stage_prog(p1, 0)->peak_mem, stage_prog(pg, 0)->peak_mem);
    assert_true(act_peak(stage_prog(p1, 3)) < act_peak(stage_prog(pg, 3)));
    plan_free(pg);
    plan_free(p1);
    strategy_free(sg);
    strategy_free(s1);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Bugs in parameter gradients across layouts and stages */

/* Plans the lowering cannot express are refused with the param named. */
static void expect_refused(const Graph *g, const char *json, const char *what)
{
    Strategy *s = strat(g, json);
    Err err = {0};
    Plan *p = ir_lower(g, NULL, s, &err);
    if (p) fail_msg("lowered a plan it should refuse: %s", json);
    if (!strstr(err.msg, "embed.wte") || !strstr(err.msg, what))
        fail_msg("refusal does not name the param and \"%s\": %s", what, err.msg);
    strategy_free(s);
}

/* A param whose consumers split it differently (the tied table held whole by
 * the embedding but v-split by the logits) would need its gradient
 * contributions converted to one layout; refused. */
static void test_tied_param_mixed_split(void **state)
{
    (void)state;
    GptShape x = { 1, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    expect_refused(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\"}},"
                      "\"logits\":{\"split\":{\"v\":\"tp\"}},\"loss\":{\"split\":{\"v\":\"tp\"}}}}",
                   "split it differently");
    graph_free(g);
}

/* A tied param on two pipeline stages is summed across them by an
 * all-reduce; a parameter server for it would update two copies apart, so
 * the plan is refused. */
static void test_tied_param_ps_pipeline(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    expect_refused(g, "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"microbatches\":2},"
                      "\"params\":{\"embed.wte\":{\"sync\":{\"method\":\"ps\",\"shards\":1}}}}",
                   "parameter server");
    graph_free(g);
}

static void test_value_consistency(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 16, false };
    char ops[2048], sp[2048], js[3000];
    megatron_ops(ops, sizeof ops, false);
    megatron_ops(sp, sizeof sp, true);
    struct { const char *mesh, *pipe, *params, *ops; } cases[] = {
        { "\"dp\":4", "", "", "" },
        { "\"tp\":4", "", "", ops },
        { "\"tp\":2", "", "", sp },
        { "\"pp\":2,\"dp\":2,\"tp\":2", ",\"pipeline\":{\"microbatches\":4}", "", sp },
        { "\"pp\":2,\"dp\":2,\"tp\":2", ",\"pipeline\":{\"microbatches\":2}", "", ops },
        { "\"dp\":2,\"tp\":2", ",\"pipeline\":{\"microbatches\":2}",
          ",\"params\":{\"*\":{\"shard\":\"zero1\"}}", ops },
        { "\"dp\":2,\"tp\":2", ",\"pipeline\":{\"microbatches\":2}",
          ",\"params\":{\"*\":{\"shard\":\"zero2\"}}", ops },
        { "\"dp\":2,\"tp\":2", ",\"pipeline\":{\"microbatches\":2}",
          ",\"params\":{\"*\":{\"shard\":\"zero3\"}}", ops },
        { "\"dp\":4", ",\"pipeline\":{\"microbatches\":2}",
          ",\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2}}}", "" },
        { "\"pp\":2,\"tp\":2", ",\"pipeline\":{\"microbatches\":2}", "",
          "\"ops\":{\"*\":{\"recompute\":true,\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        Graph *g = gpt(x);
        snprintf(js, sizeof js, "{\"mesh\":{%s}%s%s%s%s}", cases[c].mesh, cases[c].pipe,
                 cases[c].params, cases[c].ops[0] ? "," : "", cases[c].ops);
        Strategy *s = strat(g, js);
        Plan *p = lower(g, s);
        check_plan(p);
        for (int k = 0; k < p->nclasses; k++) {
            check_values(g, &p->classes[k], js);
            check_deps(g, s, &p->classes[k]);
        }
        if (s->nstages > 1) {
            check_pipeline_pairs(p, s);
            assert_true(pipeline_runs(p, s, false));
        }
        plan_free(p);
        strategy_free(s);
        graph_free(g);
    }
}

/* A tied param on two stages under ZeRO would all-reduce a reduce-scattered
 * shard across stages; refused until the cross-stage sum precedes the
 * scatter. */
static void test_tied_zero_pipeline(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 16, true };
    Graph *g = gpt(x);
    for (int z = 1; z <= 2; z++) {
        char js[256];
        snprintf(js, sizeof js, "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"microbatches\":2},"
                                "\"params\":{\"*\":{\"shard\":\"zero%d\"}}}", z);
        expect_refused(g, js, "ZeRO");
    }
    graph_free(g);
}

/* Regression: a mesh axis of size 1 still gets collectives. strategy_build's
 * megatron always writes a dp axis, so tensor parallelism over the whole
 * world (dp = 1) lowers a gradient all-reduce of every param over a group of
 * one rank (and a default batch split over it): bytes in every summary and
 * a latency term in the simulator for traffic that never leaves the device.
 * Fix: drop size-1 axes from partial/split masks (shared_init: mask sync_axes
 * and the layouts with the axes of size > 1), or skip collectives whose
 * group has one rank. */
static void test_size1_axis(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":1,\"tp\":2},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\","
                           "\"f\":\"tp\",\"v\":\"tp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    int n = 0;
    int64_t b = 0;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (is_comm(in->kind) && strategy_group_size(s, in->axes) == 1) {
            n++;
            b += in->bytes;
        }
    }
    if (n)
        NOTE_BUG("BUG: %d collectives (%lld B) over a group of one rank (mesh dp=1)", n,
                 (long long)b);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
    report_bug();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequence_parallel),
        cmocka_unit_test(test_sequence_parallel_builder),
        cmocka_unit_test(test_sequence_parallel_pipeline),
        cmocka_unit_test(test_dp_pp),
        cmocka_unit_test(test_dp_tp_pp),
        cmocka_unit_test(test_sfb),
        cmocka_unit_test(test_powersgd_total),
        cmocka_unit_test(test_powersgd_factor_sizes),
        cmocka_unit_test(test_powersgd_tensor_parallel),
        cmocka_unit_test(test_int8),
        cmocka_unit_test(test_zero3_tp),
        cmocka_unit_test(test_vgg16_dp),
        cmocka_unit_test(test_vgg16_dp_conv_tp_fc),
        cmocka_unit_test(test_dlrm_sharding),
        cmocka_unit_test(test_expert_parallel),
        cmocka_unit_test(test_resnet_dp_syncbn),
        cmocka_unit_test(test_bert_dp),
        cmocka_unit_test(test_pipeline_pairing),
        cmocka_unit_test(test_rank_classes),
        cmocka_unit_test(test_pipeline_memory),
        cmocka_unit_test(test_tied_param_mixed_split),
        cmocka_unit_test(test_tied_param_ps_pipeline),
        cmocka_unit_test(test_value_consistency),
        cmocka_unit_test(test_tied_zero_pipeline),
        cmocka_unit_test(test_size1_axis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
