/*
 * test_lower.c — the lowering against the closed forms of the literature.
 *
 * Also the two kinds lowered like elementwise ops: concat (the fire CNN) and
 * the mse loss (an MLP regression).
 *
 * Legend: B = global batch, s = sequence, h = hidden, l = layers, V = vocab,
 * D/T/P = data/tensor/pipeline degree, m = micro-batches, Psi = parameter
 * bytes (the "2 Psi" of the ZeRO paper counts elements; bytes here are fp32).
 * Volumes are payload bytes per rank per step as nccl-tests counts them
 * ("size": the all-reduce buffer, the all-gather output, the reduce-scatter
 * input, the send/recv buffer).
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

static int count(const Program *pr, InstrKind k, Why why)
{
    int n = 0;
    for (int i = 0; i < pr->ninstrs; i++)
        n += pr->instrs[i].kind == k && (why == WHY_COUNT || pr->instrs[i].why == why);
    return n;
}

static int64_t comm_total(const Program *pr)
{
    int64_t b = 0;
    for (int k = I_ALLREDUCE; k <= I_RECV; k++) b += program_comm_bytes(pr, (InstrKind)k, WHY_COUNT);
    return b;
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
        if (in->kind >= I_ALLREDUCE && in->kind <= I_RECV) assert_int_equal(in->stream, STREAM_COMM);
    }
    assert_int_equal(mem, 0);
    assert_true(pr->peak_mem >= pr->static_mem);

    /* every value an instruction reads was written before (or lives for the
     * whole step: params, their gradients, loaded data) */
    bool *written = calloc(pr->nvalues + 1, 1);
    for (int v = 0; v < pr->nvalues; v++) {
        int k = pr->values[v].kind;
        written[v] = k == VAL_PARAM || k == VAL_PARAM_GRAD || k == VAL_DATA;
    }
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        const int32_t *a = &pr->args[in->arg0];
        int first_read = 1, last_read = in->nargs, w0 = 0, w1 = 1;
        if (in->kind == I_SEND || in->kind == I_ALLOC || in->kind == I_FREE || in->why == WHY_STATS) {
            first_read = 0;
            w1 = 0;
        } else if (in->kind == I_COMPUTE && in->op >= 0 && in->phase != PH_FWD) {
            int nin = (in->nargs - 2) / 2;
            first_read = 0;
            last_read = 2 + nin;
            w0 = 2 + nin;
            w1 = in->nargs;
        }
        for (int x = first_read; x < last_read; x++) {
            assert_true(a[x] >= -1 && a[x] < pr->nvalues);
            if (a[x] >= 0 && !written[a[x]])
                fail_msg("instr %d (%s, op %d) reads value %d (%s of %d) before it is written", i,
                         instr_kind_name((InstrKind)in->kind), in->op, a[x],
                         value_kind_name((ValueKind)pr->values[a[x]].kind), pr->values[a[x]].tensor);
        }
        for (int x = w0; x < w1; x++)
            if (a[x] >= 0) written[a[x]] = true;
    }
    free(written);
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

/* --- data parallel: one all-reduce of every gradient, Psi bytes ---------- */
static void test_data_parallel(void **state)
{
    (void)state;
    GptShape shapes[] = { { 2, 64, 4, 16, 128, 8, true }, { 3, 96, 6, 32, 256, 16, false } };
    int degrees[] = { 2, 4, 8 };
    for (int a = 0; a < 2; a++)
        for (int d = 0; d < 3; d++) {
            Graph *g = gpt(shapes[a]);
            char js[128];
            snprintf(js, sizeof js, "{\"mesh\":{\"dp\":%d}}", degrees[d]);
            Strategy *s = strat(g, js);
            Plan *p = lower(g, s);
            check_plan(p);
            assert_int_equal(p->nclasses, 1);
            const Program *pr = &p->classes[0];
            assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g));
            assert_int_equal(comm_total(pr), param_bytes(g));
            assert_int_equal(count(pr, I_ALLREDUCE, WHY_GRAD_SYNC), nparams(g));
            /* Adam in fp32: params 4 + grads 4 + moments 8 bytes per element */
            assert_int_equal(pr->static_mem, param_bytes(g) * 4);
            plan_free(p);
            strategy_free(s);
            graph_free(g);
        }
}

/* --- Megatron tensor parallelism: per layer two all-reduces of b*s*h in
 * forward and two in backward; plus the vocab-parallel embedding (forward),
 * the logits' input gradient (backward) and the statistics of the
 * vocab-parallel loss (b*s fp32 each: max, sum, target logit forward; max and
 * sum again backward, which keeps no state). No gradient sync without a data axis. */
static void test_megatron_tp(void **state)
{
    (void)state;
    GptShape shapes[] = { { 2, 64, 4, 16, 128, 8, true }, { 4, 128, 8, 32, 512, 4, true } };
    int degrees[] = { 2, 4 };
    for (int a = 0; a < 2; a++)
        for (int d = 0; d < 2; d++) {
            GptShape x = shapes[a];
            Graph *g = gpt(x);
            char js[256];
            snprintf(js, sizeof js,
                     "{\"mesh\":{\"tp\":%d},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\","
                     "\"v\":\"tp\"}}}}", degrees[d]);
            Strategy *s = strat(g, js);
            Plan *p = lower(g, s);
            check_plan(p);
            assert_int_equal(p->nclasses, 1);
            const Program *pr = &p->classes[0];
            int64_t bsh = (int64_t)x.B * x.s * x.h * 4;
            assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_RESHARD), (4 * x.l + 2) * bsh);
            assert_int_equal(count(pr, I_ALLREDUCE, WHY_RESHARD), 4 * x.l + 2);
            assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_STATS), 5LL * x.B * x.s * 4);
            assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), 0);
            assert_int_equal(comm_total(pr), (4 * x.l + 2) * bsh + 5LL * x.B * x.s * 4);
            plan_free(p);
            strategy_free(s);
            graph_free(g);
        }
}

/* --- dp x tp: tensor-parallel volumes on the local batch, and a gradient
 * all-reduce over dp of the params each tp rank holds. */
static void test_megatron_dp_tp(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    int D = 2, T = 2;
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":"
                           "{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    int64_t bsh = (int64_t)x.B / D * x.s * x.h * 4;
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_RESHARD), (4 * x.l + 2) * bsh);
    /* params split over tp: every matrix and bias with n, f or v; the rest replicated */
    int64_t h = x.h, V = x.V, sq = x.s;
    int64_t split = x.l * (12 * h * h + 3 * h + 4 * h) + V * h;       /* qkv,proj w; qkv b; fc1 b */
    int64_t repl = x.l * (h + h + 4 * h) + sq * h + 2 * h;           /* proj b, fc2 b, 2 LN; wpe; ln_f */
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), (split / T + repl) * 4);
    assert_int_equal(param_bytes(g), (split + repl) * 4);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* --- pipeline: each boundary carries B*s*h forward and its gradient back;
 * 1F1B and GPipe order the micro-batches as the literature draws them. */
static void micro_order(const Program *pr, char *out, int cap)
{
    /* one letter pair per pass: F0, B0 ... taken from the first compute of a new pass */
    int at = 0, last_mb = -2, last_ph = -1;
    out[0] = 0;
    for (int i = 0; i < pr->ninstrs && at < cap - 8; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind != I_COMPUTE || in->phase == PH_UPDATE || in->micro < 0) continue;
        int ph = in->phase == PH_FWD && !in->recompute ? 0 : 1;
        if (in->micro == last_mb && ph == last_ph) continue;
        at += snprintf(out + at, cap - at, "%s%c%d", at ? " " : "", ph ? 'B' : 'F', in->micro);
        last_mb = in->micro;
        last_ph = ph;
    }
}

static void test_pipeline(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 8, false };
    int Ps[] = { 2, 4 };
    const char *scheds[] = { "gpipe", "1f1b" };
    for (int a = 0; a < 2; a++)
        for (int sc = 0; sc < 2; sc++) {
            int P = Ps[a], m = 4;
            Graph *g = gpt(x);
            char js[256];
            snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d},\"pipeline\":{\"microbatches\":%d,"
                                    "\"schedule\":\"%s\"}}", P, m, scheds[sc]);
            Strategy *s = strat(g, js);
            Plan *p = lower(g, s);
            check_plan(p);
            assert_int_equal(p->nclasses, P);
            int64_t bsh = (int64_t)x.B * x.s * x.h * 4;
            for (int k = 0; k < p->nclasses; k++) {
                const Program *pr = &p->classes[k];
                int st = pr->stage;
                int edges = (st > 0) + (st < P - 1);
                assert_int_equal(program_comm_bytes(pr, I_SEND, WHY_PIPELINE), edges * bsh);
                assert_int_equal(program_comm_bytes(pr, I_RECV, WHY_PIPELINE), edges * bsh);
                assert_int_equal(count(pr, I_SEND, WHY_PIPELINE), edges * m);
                char order[256];
                micro_order(pr, order, sizeof order);
                if (sc == 0) {
                    assert_string_equal(order, "F0 F1 F2 F3 B0 B1 B2 B3");
                } else if (P == 2 && st == 0) {
                    assert_string_equal(order, "F0 F1 B0 F2 B1 F3 B2 B3");
                } else if (st == P - 1) {
                    assert_string_equal(order, "F0 B0 F1 B1 F2 B2 F3 B3");
                } else if (P == 4 && st == 0) {
                    assert_string_equal(order, "F0 F1 F2 F3 B0 B1 B2 B3");
                } else if (P == 4 && st == 1) {
                    assert_string_equal(order, "F0 F1 F2 B0 F3 B1 B2 B3");
                }
            }
            plan_free(p);
            strategy_free(s);
            graph_free(g);
        }
}

/* --- a tied embedding on the first and last stage: its gradient is summed
 * across those two stages (Megatron's embedding group). */
static void test_pipeline_tied(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":2}}");
    Plan *p = lower(g, s);
    check_plan(p);
    for (int k = 0; k < p->nclasses; k++)
        assert_int_equal(program_comm_bytes(&p->classes[k], I_ALLREDUCE, WHY_TIED),
                         (int64_t)x.V * x.h * 4);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* --- ZeRO (Rajbhandari et al.): stage 1 and 2 move 2 Psi (reduce-scatter of
 * gradients, all-gather of parameters), stage 3 moves 3 Psi (an all-gather
 * before forward and before backward). Stages 2 and 3 reduce-scatter every
 * micro-batch; stage 3 gathers every micro-batch. */
static void test_zero(void **state)
{
    (void)state;
    /* untied: a tied table is gathered at each of its two uses */
    GptShape x = { 2, 64, 4, 16, 128, 8, false };
    for (int stage = 1; stage <= 3; stage++)
        for (int m = 1; m <= 2; m++)
            for (int D = 2; D <= 4; D += 2) {
                Graph *g = gpt(x);
                char js[256];
                snprintf(js, sizeof js, "{\"mesh\":{\"dp\":%d},\"pipeline\":{\"microbatches\":%d},"
                                        "\"params\":{\"*\":{\"shard\":\"zero%d\"}}}", D, m, stage);
                Strategy *s = strat(g, js);
                Plan *p = lower(g, s);
                check_plan(p);
                const Program *pr = &p->classes[0];
                int64_t psi = param_bytes(g);
                int64_t rs = stage == 1 ? psi : m * psi;
                int64_t ag = stage == 3 ? 2 * m * psi : psi;
                assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_COUNT), 0);
                assert_int_equal(program_comm_bytes(pr, I_REDUCE_SCATTER, WHY_GRAD_SYNC), rs);
                assert_int_equal(program_comm_bytes(pr, I_ALLGATHER, WHY_COUNT), ag);
                /* memory held all step: the param (ZeRO-3: its shard), the
                 * gradient's shard the reduce-scatters fill (ZeRO-1 also the
                 * whole gradient the micro-batches accumulate into), the
                 * optimizer state's shard (Adam: 8 bytes an element), as
                 * the paper's table has it */
                int64_t e = psi / 4;
                int64_t want = (stage == 3 ? 4 * e / D : 4 * e) + (stage == 1 ? 4 * e : 0) +
                               (4 * e + 8 * e) / D;
                assert_true(llabs(pr->static_mem - want) <= 64 * nparams(g));
                /* stages 2 and 3: each micro-batch's backward allocates the
                 * whole gradient and frees it after its reduce-scatter */
                int64_t made = 0, freed = 0;
                for (int i = 0; i < pr->ninstrs; i++) {
                    const Instr *in = &pr->instrs[i];
                    if (in->kind != I_ALLOC && in->kind != I_FREE) continue;
                    const Value *v = &pr->values[pr->args[in->arg0]];
                    if (v->kind != VAL_PARAM_GRAD) continue;
                    assert_true(v->micro >= 0);
                    *(in->kind == I_ALLOC ? &made : &freed) += in->bytes;
                }
                assert_int_equal(made, stage == 1 ? 0 : m * psi);
                assert_int_equal(freed, made);
                plan_free(p);
                strategy_free(s);
                graph_free(g);
            }
}

/* --- parameter server: a worker pushes Psi and pulls Psi; a server of
 * shard k also receives that shard from the D-1 other workers and sends it
 * back to them. */
static void test_parameter_server(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    int D = 4;
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\","
                           "\"shards\":2,\"placement\":[0,2],\"staleness\":0}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(p->nclasses, 3);     /* server 0, server 2, plain workers 1 and 3 */
    for (int k = 0; k < p->nclasses; k++) {
        const Program *pr = &p->classes[k];
        int r = pr->ranks[0];
        int64_t own = 0, all = 0;
        for (int t = 0; t < g->ntensors; t++) {
            if (g->tensors[t].role != ROLE_PARAM) continue;
            int64_t b = tensor_numel(&g->tensors[t]) * 4;
            int64_t e = b / 4, shard0 = (e / 2 + e % 2) * 4, shard1 = e / 2 * 4;
            all += b;
            if (r == 0) own += shard0;
            if (r == 2) own += shard1;
        }
        int64_t want = all - own + (D - 1) * own;
        assert_int_equal(program_comm_bytes(pr, I_SEND, WHY_PS), want);
        assert_int_equal(program_comm_bytes(pr, I_RECV, WHY_PS), want);
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_COUNT), 0);
        /* memory kept all step: params and gradients; a server (one shard of
         * every param) also the optimizer state of the whole param, as the
         * executor keeps it, and the D-1 gradients pushed to it */
        int64_t opt = s->optimizer == OPT_ADAM ? 2 : 1;
        bool server = r == 0 || r == 2;
        assert_int_equal(pr->static_mem, 2 * all + (server ? opt * all + (D - 1) * all : 0));
    }
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* A 2-rank data-parallel plan's static memory, the params matching
 * `pattern` synchronised with compression `compress`. */
static int64_t kept_all_step(const Graph *g, const char *compress, const char *pattern)
{
    char js[256];
    snprintf(js, sizeof js, "{\"mesh\":{\"dp\":2},\"params\":{\"%s\":{\"sync\":"
             "{\"method\":\"allreduce\",\"compress\":\"%s\"}}}}", pattern, compress);
    Strategy *s = strat(g, js);
    Plan *p = lower(g, s);
    check_plan(p);
    int64_t m = p->classes[0].static_mem;
    plan_free(p);
    strategy_free(s);
    return m;
}

/* --- compression shrinks the all-reduce payload exactly */
static void test_compression(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2},\"params\":{\"*\":{\"sync\":"
                           "{\"method\":\"allreduce\",\"compress\":\"fp16\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(program_comm_bytes(&p->classes[0], I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g) / 2);
    int64_t opt = s->optimizer == OPT_ADAM ? 2 : 1, plain = (2 + opt) * param_bytes(g);
    assert_int_equal(p->classes[0].static_mem, plain);      /* fp16 keeps nothing between steps */
    plan_free(p);
    strategy_free(s);
    /* int8 keeps the error it feeds back, a float per element; PowerSGD the
     * error, the matrix it compresses and its two factors */
    assert_int_equal(kept_all_step(g, "int8", "*"), plain + param_bytes(g));
    int64_t kept = 0;
    for (int t = 0; t < g->ntensors; t++)
        if (strstr(g->tensors[t].name, ".attn.wq")) kept += 2 * tensor_numel(&g->tensors[t]) * 4;
    assert_true(kept > 0);
    assert_true(kept_all_step(g, "powersgd:2", "blocks.*.attn.wq") > plain + kept);
    graph_free(g);
}

/* --- recompute reruns block forwards (and their tensor-parallel all-reduces)
 * and lowers the activation peak */
static void test_recompute(void **state)
{
    (void)state;
    GptShape x = { 4, 64, 4, 32, 128, 8, true };
    Graph *g = gpt(x);
    Strategy *a = strat(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\","
                           "\"f\":\"tp\",\"v\":\"tp\"}}}}");
    Strategy *b = strat(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\","
                           "\"f\":\"tp\",\"v\":\"tp\"}},\"blocks.*\":{\"recompute\":true}}}");
    Plan *pa = lower(g, a), *pb = lower(g, b);
    check_plan(pa);
    check_plan(pb);
    int64_t bsh = (int64_t)x.B * x.s * x.h * 4;
    /* both forward all-reduces of every block are rerun (the whole block
     * forward is, up to its checkpointed output) */
    assert_true(program_comm_bytes(&pb->classes[0], I_ALLREDUCE, WHY_RESHARD) >
                program_comm_bytes(&pa->classes[0], I_ALLREDUCE, WHY_RESHARD));
    assert_int_equal(program_comm_bytes(&pb->classes[0], I_ALLREDUCE, WHY_RESHARD) -
                         program_comm_bytes(&pa->classes[0], I_ALLREDUCE, WHY_RESHARD),
                     2 * (int64_t)x.l * bsh);
    assert_true(pb->classes[0].peak_mem < pa->classes[0].peak_mem);
    /* recompute asked of every op: outside blocks it keeps outputs and copies
     * (the embedding's all-reduced output here) until backward, once */
    Strategy *c = strat(g, "{\"mesh\":{\"pp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":{\"n\":\"tp\","
                           "\"f\":\"tp\",\"v\":\"tp\"},\"recompute\":true}}}");
    Plan *pc = lower(g, c);
    check_plan(pc);
    plan_free(pc);
    strategy_free(c);
    plan_free(pa);
    plan_free(pb);
    strategy_free(a);
    strategy_free(b);
    graph_free(g);
}

/* --- 1024 ranks of t8 x p16 x d8 lower as 16 classes (one per stage) */
static void test_classes_gpt3_shape(void **state)
{
    (void)state;
    GptShape x = { 32, 256, 8, 64, 512, 64, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":16,\"dp\":8,\"tp\":8},\"pipeline\":{\"microbatches\":8},"
                           "\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    assert_int_equal(p->world, 1024);
    assert_int_equal(p->nclasses, 16);
    for (int k = 0; k < 16; k++) assert_int_equal(p->classes[k].nranks, 64);
    /* rank r's stage is r / 64 (pp outermost) */
    for (int r = 0; r < 1024; r++) assert_int_equal(p->classes[p->rank_class[r]].stage, r / 64);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* --- expert parallelism: tokens travel to their experts by all_to_all */
static void test_moe_all_to_all(void **state)
{
    (void)state;
    const char *keys[] = { "layers", "hidden", "heads", "seq", "vocab", "batch", "experts", "every" };
    const char *vals[] = { "2", "64", "4", "16", "128", "8", "4", "1" };
    Err err = {0};
    Graph *g = zoo_build("moe", 8, keys, vals, &err);
    if (!g) fail_msg("moe: %s", err.msg);
    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2},\"ops\":{\"blocks.*.moe.fc1\":{\"split\":{\"b\":null,"
                           "\"e\":\"dp\"}},\"blocks.*.moe.gelu\":{\"split\":{\"b\":null,\"e\":\"dp\"}},"
                           "\"blocks.*.moe.fc2\":{\"split\":{\"b\":null,\"e\":\"dp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    /* per MoE layer: dispatch out and combine in, forward and backward */
    assert_int_equal(count(pr, I_ALL_TO_ALL, WHY_RESHARD), 4 * 2);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

/* --- a dim split over two axes: only its inner axis can move alone */
static void test_outer_axis_refused(void **state)
{
    (void)state;
    GptShape x = { 2, 64, 4, 16, 128, 8, true };
    Graph *g = gpt(x);
    Strategy *bad = strat(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":"
                             "{\"b\":[\"dp\",\"tp\"]}},\"blocks.1.*\":{\"split\":{\"b\":\"tp\"}}}}");
    Err err = {0};
    Plan *p = ir_lower(g, NULL, bad, &err);
    assert_null(p);
    assert_non_null(strstr(err.msg, "only the innermost axes"));
    assert_non_null(strstr(err.msg, "axis dp"));
    /* the same with dp inner: the pieces nest, tp stays, dp is gathered */
    Strategy *good = strat(g, "{\"mesh\":{\"tp\":2,\"dp\":2},\"ops\":{\"*\":{\"split\":"
                              "{\"b\":[\"tp\",\"dp\"]}},\"blocks.1.*\":{\"split\":{\"b\":\"tp\"}}}}");
    p = lower(g, good);
    check_plan(p);
    assert_true(program_comm_bytes(&p->classes[0], I_ALLGATHER, WHY_RESHARD) > 0);
    plan_free(p);
    strategy_free(bad);
    strategy_free(good);
    graph_free(g);
}

/* --- concat (the fire CNN) and mse (an MLP regression) ------------------- */

static Graph *zoo_model(const char *kind, int n, const char *const *keys, const char *const *vals)
{
    Err err = {0};
    Graph *g = zoo_build(kind, n, keys, vals, &err);
    if (!g) fail_msg("%s: %s", kind, err.msg);
    return g;
}

/* fire: B = 8 images of 16 x 16 (8 x 8 after the stem), expand E = 16 a
 * side: each concat [8, 32, 8, 8]. Data parallel, it syncs only gradients;
 * with h of the concats split over tp, each concat's output is gathered
 * for its consumer (a conv or the global pool, which need h whole) and the
 * gradients of its two inputs (split by the concat's backward, wanted whole
 * by the relus) are gathered too: 3 all_gathers of 8 x 16 x 8 x 8 or twice
 * that per fire module. */
static void test_concat_fire(void **state)
{
    (void)state;
    static const char *const k[] = { "batch", "image", "fires", "squeeze", "expand" };
    static const char *const v[] = { "8", "16", "2", "8", "16" };
    Graph *g = zoo_model("fire", 5, k, v);
    int cat = graph_find_op(g, "blocks.0.concat");
    assert_true(cat >= 0);
    for (int D = 2; D <= 4; D *= 2) {
        char js[64];
        snprintf(js, sizeof js, "{\"mesh\":{\"dp\":%d}}", D);
        Strategy *s = strat(g, js);
        Plan *p = lower(g, s);
        check_plan(p);
        const Program *pr = &p->classes[0];
        assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g));
        assert_int_equal(comm_total(pr), param_bytes(g));
        assert_int_equal(p->local[cat]['n' - 'a'], 8 / D);
        assert_int_equal(p->local[cat]['c' - 'a'], 32);
        plan_free(p);
        strategy_free(s);
    }
    Strategy *s = strat(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"blocks.*.concat\":{\"split\":{\"h\":\"tp\"}}}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    assert_int_equal(p->local[cat]['h' - 'a'], 4);
    assert_int_equal(p->local[cat]['a' - 'a'], 16);
    const int64_t half = 8 * 16 * 8 * 8 * 4;     /* one concat input's bytes */
    assert_int_equal(count(pr, I_ALLGATHER, WHY_RESHARD), 2 * 3);
    assert_int_equal(program_comm_bytes(pr, I_ALLGATHER, WHY_RESHARD), 2 * (2 * half + 2 * half));
    /* no data axis: nothing else moves */
    assert_int_equal(comm_total(pr), program_comm_bytes(pr, I_ALLGATHER, WHY_RESHARD));
    plan_free(p);
    strategy_free(s);

    /* its concatenated letters, by name or by pattern, are never split */
    static const char *const bad[] = {
        "{\"mesh\":{\"tp\":2},\"ops\":{\"blocks.0.concat\":{\"split\":{\"c\":\"tp\"}}}}",
        "{\"mesh\":{\"tp\":2},\"ops\":{\"blocks.1.concat\":{\"split\":{\"b\":\"tp\"}}}}",
        "{\"mesh\":{\"tp\":2},\"ops\":{\"*\":{\"split\":{\"a\":\"tp\"}}}}",
    };
    static const char *const want[] = {
        "ops[\"blocks.0.concat\"].split.c: letter c is a concatenated letter of concat op "
        "blocks.0.concat (the output's)",
        "ops[\"blocks.1.concat\"].split.b: letter b is a concatenated letter of concat op "
        "blocks.1.concat (an input's own extent)",
        "ops[\"*\"].split.a: letter a is a concatenated letter of concat op blocks.0.concat",
    };
    for (int i = 0; i < 3; i++) {
        Err err = {0};
        cJSON *j = cJSON_Parse(bad[i]);
        Strategy *b = strategy_from_json(j, g, NULL, &err);
        cJSON_Delete(j);
        if (b) {
            strategy_free(b);
            fail_msg("%s: accepted", bad[i]);
        }
        if (!strstr(err.msg, want[i])) fail_msg("%s:\n  got  %s\n  want %s", bad[i], err.msg, want[i]);
    }
    graph_free(g);
}

/* mlp with mse: data parallel, the loss partial over dp (each rank's part
 * of the global mean); with the classes k split over tp in the head, its
 * bias and the loss, the loss is partial over tp too, its target [b, k]
 * loaded split, and no statistics move (mse has no reduce letter), only the
 * head input's gradient (partial over tp) is all-reduced. */
static void test_mse_mlp(void **state)
{
    (void)state;
    static const char *const k[] = { "layers", "hidden", "input", "classes", "batch", "loss" };
    static const char *const v[] = { "2", "32", "16", "8", "8", "mse" };
    Graph *g = zoo_model("mlp", 6, k, v);
    int loss = graph_find_op(g, "loss"), labels = graph_find_tensor(g, "labels");
    assert_int_equal(g->ops[loss].kind, OP_MSE);
    assert_int_equal(g->tensors[labels].dtype, DT_F32);

    Strategy *s = strat(g, "{\"mesh\":{\"dp\":2}}");
    Plan *p = lower(g, s);
    check_plan(p);
    const Program *pr = &p->classes[0];
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_GRAD_SYNC), param_bytes(g));
    assert_int_equal(comm_total(pr), param_bytes(g));
    Layout lo = ir_operand_layout(g, s, loss, 2);
    assert_int_equal(lo.partial, 1);
    assert_int_equal(p->local[loss]['b' - 'a'], 4);
    plan_free(p);
    strategy_free(s);

    s = strat(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"head\":{\"split\":{\"k\":\"tp\"}},"
                 "\"head_bias\":{\"split\":{\"k\":\"tp\"}},\"loss\":{\"split\":{\"k\":\"tp\"}}}}");
    p = lower(g, s);
    check_plan(p);
    pr = &p->classes[0];
    lo = ir_operand_layout(g, s, loss, 2);
    assert_int_equal(lo.partial, 1);
    Layout lt = ir_operand_layout(g, s, loss, 1);
    assert_int_equal(lt.dim[0], 0);
    assert_int_equal(lt.dim[1], 1);                 /* the target's k on tp */
    assert_int_equal(p->local[loss]['k' - 'a'], 4);
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_STATS), 0);
    /* the head's input gradient: partial over tp, all-reduced, b x h floats */
    assert_int_equal(count(pr, I_ALLREDUCE, WHY_RESHARD), 1);
    assert_int_equal(program_comm_bytes(pr, I_ALLREDUCE, WHY_RESHARD), 8 * 32 * 4);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_parallel),
        cmocka_unit_test(test_megatron_tp),
        cmocka_unit_test(test_megatron_dp_tp),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_pipeline_tied),
        cmocka_unit_test(test_zero),
        cmocka_unit_test(test_parameter_server),
        cmocka_unit_test(test_compression),
        cmocka_unit_test(test_recompute),
        cmocka_unit_test(test_classes_gpt3_shape),
        cmocka_unit_test(test_moe_all_to_all),
        cmocka_unit_test(test_outer_axis_refused),
        cmocka_unit_test(test_concat_fire),
        cmocka_unit_test(test_mse_mlp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
