/*
 * test_interleaved.c — the interleaved 1F1B schedule (Megatron-LM's virtual
 * pipeline stages, Narayanan et al. SC'21 section 2.2.2): its representation,
 * its validation, its builder and its lowering.
 *
 * The lowering is checked against what the paper and Megatron-LM's
 * forward_backward_pipelining_with_interleaving define, written here
 * independently of ir/lower.c: the schedule table (micro-batches in groups
 * of P, each group through the stage's chunks in turn), the warm-up count
 * min(2(P-r-1) + (V-1)P, MV), one forward and one backward per chunk and
 * micro-batch, the pipeline volume per rank (every chunk boundary, every
 * micro-batch, each way), the tied embedding summed between the first and
 * last stage only. Across ranks, every recv pairs with a send in order per
 * (peer, tag) as MPI matches them, and the programs run to their end under
 * the executor's semantics: sends are posted without waiting, receives
 * block, and freeing a buffer waits until its sends have been received.
 *
 * Legend: P = pipeline stages (mesh pp), V = chunks per stage, M = micro-
 * batches, D/T = data/tensor degree, r = a stage, c = a model chunk (on
 * stage c mod P), bsh = B/(D M) * s * h * 4 (one micro-batch's activation on
 * a chunk boundary, fp32, replicated over tp).
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
#include "tests/support/lower_fixtures.h"

/* ----------------------------------------------------------------------------
 * Helpers */

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

static int op_index(const Graph *g, const char *name)
{
    int i = graph_find_op(g, name);
    if (i < 0) fail_msg("no op %s", name);
    return i;
}

/* strategy_from_json must refuse json, and its message hold every one of
 * the NULL-terminated strings. */
static void expect_invalid(const Graph *g, const char *json, ...)
{
    cJSON *j = cJSON_Parse(json);
    if (!j) fail_msg("bad test JSON: %s", json);
    Err err = {0};
    Strategy *s = strategy_from_json(j, g, NULL, &err);
    cJSON_Delete(j);
    if (s) {
        strategy_free(s);
        fail_msg("accepted: %s", json);
    }
    va_list ap;
    va_start(ap, json);
    for (const char *w; (w = va_arg(ap, const char *));)
        if (!strstr(err.msg, w)) {
            va_end(ap);
            fail_msg("%s\n  refused with \"%s\", which lacks \"%s\"", json, err.msg, w);
        }
    va_end(ap);
}

/* ----------------------------------------------------------------------------
 * The schedule as Megatron-LM defines it (get_schedule_table, the warm-up of
 * get_pp_rank_microbatches, the 1F1B loop of
 * forward_backward_pipelining_with_interleaving), for stage r: the sequence
 * of chunk-passes (chunk, micro-batch, forward?) in program order. */

typedef struct { int chunk, mb; bool fwd; } Pass;

static int megatron_warmup(int P, int V, int M, int r)
{
    int w = (P - r - 1) * 2 + (V - 1) * P;
    return w < M * V ? w : M * V;
}

static int megatron_order(int P, int V, int M, int r, Pass *out)
{
    int n = M * V, k = 0;
    int *tc = malloc(sizeof *tc * n), *tm = malloc(sizeof *tm * n);
    for (int g0 = 0; g0 < M; g0 += P)          /* groups of P micro-batches */
        for (int v = 0; v < V; v++)              /* through each chunk in turn */
            for (int mb = g0; mb < g0 + P; mb++) {
                tc[k] = v;
                tm[k++] = mb;
            }
    int w = megatron_warmup(P, V, M, r), np = 0;
#define FWD(x) (out[np++] = (Pass){ tc[x] * P + r, tm[x], true })
#define BWD(x) (out[np++] = (Pass){ (V - 1 - tc[x]) * P + r, tm[x], false })
    for (int x = 0; x < w; x++) FWD(x);
    for (int x = 0; x < n - w; x++) {
        FWD(w + x);
        BWD(x);
    }
    for (int x = n - w; x < n; x++) BWD(x);
#undef FWD
#undef BWD
    free(tc);
    free(tm);
    return np;
}

/* The chunk-passes a program runs, in order: runs of op computes of one
 * (chunk, micro-batch, direction); a recomputed forward belongs to its
 * backward. Returns how many (at most max). */
static int program_passes(const Strategy *s, const Program *pr, Pass *out, int max)
{
    int n = 0;
    for (int i = 0; i < pr->ninstrs; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind != I_COMPUTE || in->op < 0 || in->micro < 0) continue;
        Pass p = { s->op_chunk[in->op], in->micro, in->phase == PH_FWD && !in->recompute };
        if (n && out[n - 1].chunk == p.chunk && out[n - 1].mb == p.mb && out[n - 1].fwd == p.fwd)
            continue;
        if (n == max) fail_msg("more than %d chunk-passes", max);
        out[n++] = p;
    }
    return n;
}

/* ----------------------------------------------------------------------------
 * Running the stages' programs together, as the executor does: pipeline
 * sends are posted and never wait; a recv waits for the matching send, by
 * (peer, tensor, phase) in order (executor/runtime.c's tag_of: MPI matches
 * by source and tag, non-overtaking); freeing a value never waits (the
 * executor hands a buffer still being sent to the send); a tied all-reduce
 * waits for every stage of its group. Also checks that each recv
 * gets the send of the same micro-batch and size. Returns true when every
 * stage reaches its end. */

typedef struct {
    int src, dst, tensor, phase;
    int nsent, nrecv, cap;
    int *mb;
    int64_t *bytes;
} Channel;

typedef struct {
    Channel *ch;
    int nch, cap;
} Channels;

static int channel(Channels *cs, int src, int dst, int tensor, int phase)
{
    for (int k = 0; k < cs->nch; k++) {
        Channel *c = &cs->ch[k];
        if (c->src == src && c->dst == dst && c->tensor == tensor && c->phase == phase) return k;
    }
    if (cs->nch == cs->cap) {
        cs->cap = cs->cap ? 2 * cs->cap : 16;
        cs->ch = realloc(cs->ch, sizeof *cs->ch * cs->cap);
    }
    cs->ch[cs->nch] = (Channel){ src, dst, tensor, phase, 0, 0, 0, NULL, NULL };
    return cs->nch++;
}

static bool pipeline_completes(const Plan *p, const Strategy *s)
{
    int P = s->nstages;
    const Program **pr = calloc(P, sizeof *pr);
    int *pc = calloc(P, sizeof *pc), *tied = calloc(P, sizeof *tied);
    bool *waiting = calloc(P, sizeof *waiting);
    Channels cs = {0};
    for (int r = 0; r < P; r++) pr[r] = stage_prog(p, r);
    bool moved = true;
    while (moved) {
        moved = false;
        for (int r = 0; r < P; r++)
            while (pc[r] < pr[r]->ninstrs) {
                const Instr *in = &pr[r]->instrs[pc[r]];
                if (in->why == WHY_PIPELINE && in->kind == I_SEND) {
                    int k = channel(&cs, r, in->peer, in->tensor, in->phase);
                    Channel *c = &cs.ch[k];
                    if (c->nsent == c->cap) {
                        c->cap = c->cap ? 2 * c->cap : 16;
                        c->mb = realloc(c->mb, sizeof *c->mb * c->cap);
                        c->bytes = realloc(c->bytes, sizeof *c->bytes * c->cap);
                    }
                    c->mb[c->nsent] = in->micro;
                    c->bytes[c->nsent++] = in->bytes;
                } else if (in->why == WHY_PIPELINE && in->kind == I_RECV) {
                    Channel *c = &cs.ch[channel(&cs, in->peer, r, in->tensor, in->phase)];
                    if (c->nrecv == c->nsent) break;
                    if (c->mb[c->nrecv] != in->micro || c->bytes[c->nrecv] != in->bytes)
                        fail_msg("stage %d <- %d, tensor %d phase %d: recv %d (mb %d, %lld B) "
                                 "gets the send of mb %d, %lld B", r, in->peer, in->tensor,
                                 in->phase, c->nrecv, in->micro, (long long)in->bytes,
                                 c->mb[c->nrecv], (long long)c->bytes[c->nrecv]);
                    c->nrecv++;
                } else if (in->kind == I_ALLREDUCE && in->why == WHY_TIED) {
                    if (!waiting[r]) {      /* arrives at its tied[r]-th all-reduce */
                        tied[r]++;
                        waiting[r] = true;
                    }
                    bool all = true;
                    for (int q = 0; q < P; q++)
                        if ((in->peer >> q) & 1) all &= tied[q] >= tied[r];
                    if (!all) break;
                    waiting[r] = false;
                }
                pc[r]++;
                moved = true;
            }
    }
    bool done = true;
    for (int r = 0; r < P; r++) done &= pc[r] == pr[r]->ninstrs;
    /* and nothing sent that nobody received */
    for (int k = 0; k < cs.nch && done; k++)
        if (cs.ch[k].nsent != cs.ch[k].nrecv)
            fail_msg("stage %d -> %d, tensor %d phase %d: %d sent, %d received", cs.ch[k].src,
                     cs.ch[k].dst, cs.ch[k].tensor, cs.ch[k].phase, cs.ch[k].nsent,
                     cs.ch[k].nrecv);
    for (int k = 0; k < cs.nch; k++) {
        free(cs.ch[k].mb);
        free(cs.ch[k].bytes);
    }
    free(cs.ch);
    free(pr);
    free(pc);
    free(tied);
    free(waiting);
    return done;
}

/* ----------------------------------------------------------------------------
 * Representation */

/* Chunk k of P*V holds blocks [cuts[k-1], cuts[k]) and runs on stage k mod P:
 * with 8 blocks, P = 2, V = 2, stage 0 holds blocks 0-1 and 4-5 (and the
 * embedding before them), stage 1 blocks 2-3 and 6-7 (and the head after). */
static void test_chunks(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 8, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                           "\"schedule\":\"interleaved\",\"virtual\":2}}");
    assert_int_equal(s->schedule, SCHED_INTERLEAVED);
    assert_int_equal(s->nstages, 2);
    assert_int_equal(s->virtual_stages, 2);
    assert_int_equal(s->nchunks, 4);
    assert_int_equal(s->cuts[0], 2);
    assert_int_equal(s->cuts[1], 4);
    assert_int_equal(s->cuts[2], 6);
    struct { const char *op; int chunk; } want[] = {
        { "embed", 0 }, { "blocks.0.ln1", 0 }, { "blocks.1.mlp.residual", 0 },
        { "blocks.2.ln1", 1 }, { "blocks.3.mlp.fc1", 1 }, { "blocks.4.attn.q", 2 },
        { "blocks.5.mlp.residual", 2 }, { "blocks.6.ln1", 3 }, { "blocks.7.ln2", 3 },
        { "ln_f", 3 }, { "logits", 3 }, { "loss", 3 },
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        int i = op_index(g, want[k].op);
        if (s->op_chunk[i] != want[k].chunk || s->op_stage[i] != want[k].chunk % 2)
            fail_msg("op %s: chunk %d stage %d, want chunk %d stage %d", want[k].op,
                     s->op_chunk[i], s->op_stage[i], want[k].chunk, want[k].chunk % 2);
    }
    for (int i = 0; i < g->nops; i++) assert_int_equal(s->op_stage[i], s->op_chunk[i] % 2);
    assert_string_equal(schedule_name(s->schedule), "interleaved");
    /* without interleaving the chunk is the stage */
    Strategy *o = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4}}");
    assert_int_equal(o->virtual_stages, 1);
    assert_int_equal(o->nchunks, 2);
    for (int i = 0; i < g->nops; i++) assert_int_equal(o->op_chunk[i], o->op_stage[i]);
    strategy_free(o);
    strategy_free(s);
    graph_free(g);
}

/* The canonical form keeps the schedule and V: interleaved and 1F1B differ,
 * so do V = 2 and V = 4, and V = 1 interleaved from 1F1B (its warm-up is
 * deeper); the same strategy written with its default cuts or without them
 * is one. */
static void test_canonical(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 8, true };
    Graph *g = gpt(x);
    Strategy *a = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                           "\"schedule\":\"interleaved\",\"virtual\":2}}");
    Strategy *b = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[2,4,6],"
                           "\"microbatches\":4,\"virtual\":2,\"schedule\":\"interleaved\"}}");
    Strategy *c = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                           "\"schedule\":\"1f1b\"}}");
    Strategy *d = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                           "\"schedule\":\"interleaved\",\"virtual\":4}}");
    Strategy *e = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                           "\"schedule\":\"interleaved\",\"virtual\":1}}");
    assert_string_equal(a->id, b->id);
    assert_string_not_equal(a->id, c->id);
    assert_string_not_equal(a->id, d->id);
    assert_string_not_equal(c->id, e->id);
    assert_string_not_equal(a->id, e->id);
    const cJSON *pipe = cJSON_GetObjectItemCaseSensitive(a->canonical, "pipeline");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(pipe, "virtual")->valueint, 2);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(pipe, "schedule")->valuestring,
                        "interleaved");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(pipe, "cuts")), 3);
    /* 1F1B's canonical form has no "virtual" */
    pipe = cJSON_GetObjectItemCaseSensitive(c->canonical, "pipeline");
    assert_null(cJSON_GetObjectItemCaseSensitive(pipe, "virtual"));
    /* the canonical form parses back to the same strategy */
    Err err = {0};
    Strategy *a2 = strategy_from_json(a->canonical, g, NULL, &err);
    if (!a2) fail_msg("canonical form refused: %s", err.msg);
    assert_string_equal(a2->id, a->id);
    assert_int_equal(a2->virtual_stages, 2);
    strategy_free(a2);
    strategy_free(a);
    strategy_free(b);
    strategy_free(c);
    strategy_free(d);
    strategy_free(e);
    graph_free(g);
}

/* Each refusal names the field and says why (and the fix where one is known). */
static void test_validation(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 12, true };
    Graph *g = gpt(x);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"interleaved\",\"virtual\":0}}",
                   "pipeline.virtual", "at least one", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"interleaved\",\"virtual\":-3}}",
                   "pipeline.virtual", "virtual >= 1", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"interleaved\"}}",
                   "pipeline.virtual", "needs the number of model chunks", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"1f1b\",\"virtual\":2}}",
                   "pipeline.virtual", "interleaved schedule only", "\"1f1b\"", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,\"virtual\":2}}",
                   "pipeline.virtual", "interleaved schedule only", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"gpipe\",\"virtual\":1}}",
                   "pipeline.virtual", "\"gpipe\"", NULL);
    /* P*V - 1 cuts */
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[4],\"microbatches\":4,"
                      "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.cuts", "1 cut(s) make 2 model chunks", "4 chunks (3 cut(s))", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1,2,3,4,5],"
                      "\"microbatches\":4,\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.cuts", "5 cut(s)", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[2,2,6],\"microbatches\":4,"
                      "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.cuts[1]", "strictly increasing", NULL);
    /* M a multiple of P, with the fix */
    expect_invalid(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":3,"
                      "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.microbatches", "not a multiple of mesh.pp 2", "use 2 or 4", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":4},\"pipeline\":{\"microbatches\":2,"
                      "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.microbatches", "use 4", NULL);
    /* more chunks than blocks */
    expect_invalid(g, "{\"mesh\":{\"pp\":4},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"interleaved\",\"virtual\":3}}",
                   "pipeline.virtual", "12 model chunks", "8 block(s)", NULL);
    /* the most stages and chunks there can be: refused by count */
    expect_invalid(g, "{\"mesh\":{\"pp\":64},\"pipeline\":{\"microbatches\":64,"
                      "\"schedule\":\"interleaved\",\"virtual\":65536}}",
                   "pipeline.virtual", "4194304 model chunks", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":1000000},\"pipeline\":{\"microbatches\":4,"
                      "\"schedule\":\"interleaved\",\"virtual\":65536}}",
                   "mesh.pp", "1000000 pipeline stages", "at most 64", NULL);
    /* no pipeline to interleave */
    expect_invalid(g, "{\"mesh\":{\"dp\":2},\"pipeline\":{\"microbatches\":2,"
                      "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.schedule", "needs a pipeline", NULL);
    expect_invalid(g, "{\"mesh\":{\"pp\":1,\"dp\":2},\"pipeline\":{\"microbatches\":2,"
                      "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.schedule", "pp of size 1", NULL);
    graph_free(g);

    /* an activation that skips a chunk (block 2 reads block 0's output) */
    static const char SKIP[] =
        "{\"name\":\"skip\",\"tensors\":["
        "{\"name\":\"x\",\"shape\":[4,8],\"dtype\":\"f32\",\"role\":\"input\"},"
        "{\"name\":\"y\",\"shape\":[4],\"dtype\":\"i32\",\"role\":\"label\"},"
        "{\"name\":\"w0\",\"shape\":[8,8],\"dtype\":\"f32\",\"role\":\"param\"},"
        "{\"name\":\"w1\",\"shape\":[8,8],\"dtype\":\"f32\",\"role\":\"param\"},"
        "{\"name\":\"w3\",\"shape\":[8,8],\"dtype\":\"f32\",\"role\":\"param\"},"
        "{\"name\":\"h0\",\"shape\":[4,8],\"dtype\":\"f32\",\"role\":\"activation\"},"
        "{\"name\":\"h1\",\"shape\":[4,8],\"dtype\":\"f32\",\"role\":\"activation\"},"
        "{\"name\":\"h2\",\"shape\":[4,8],\"dtype\":\"f32\",\"role\":\"activation\"},"
        "{\"name\":\"h3\",\"shape\":[4,8],\"dtype\":\"f32\",\"role\":\"activation\"},"
        "{\"name\":\"loss\",\"shape\":[],\"dtype\":\"f32\",\"role\":\"activation\"}],\"ops\":["
        "{\"name\":\"b0\",\"kind\":\"matmul\",\"spec\":\"bi,ih->bh\",\"inputs\":[\"x\",\"w0\"],"
        "\"output\":\"h0\",\"block\":0},"
        "{\"name\":\"b1\",\"kind\":\"matmul\",\"spec\":\"bi,ih->bh\",\"inputs\":[\"h0\",\"w1\"],"
        "\"output\":\"h1\",\"block\":1},"
        "{\"name\":\"b2\",\"kind\":\"add\",\"spec\":\"bh,bh->bh\",\"inputs\":[\"h1\",\"h0\"],"
        "\"output\":\"h2\",\"block\":2},"
        "{\"name\":\"b3\",\"kind\":\"matmul\",\"spec\":\"bi,ih->bh\",\"inputs\":[\"h2\",\"w3\"],"
        "\"output\":\"h3\",\"block\":3},"
        "{\"name\":\"loss\",\"kind\":\"cross_entropy\",\"spec\":\"bh,b->\",\"inputs\":[\"h3\","
        "\"y\"],\"output\":\"loss\",\"reduce\":\"h\"}]}";
    cJSON *mj = cJSON_Parse(SKIP);
    Err err = {0};
    Graph *sk = graph_from_json(mj, &err);
    cJSON_Delete(mj);
    if (!sk) fail_msg("skip model: %s", err.msg);
    expect_invalid(sk, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":2,"
                       "\"schedule\":\"interleaved\",\"virtual\":2}}",
                   "pipeline.cuts", "op b2 (chunk 2) consumes h0", "chunk 0",
                   "only to the next chunk", NULL);
    /* the same graph pipelines without interleaving (stage 0 -> 1 only) */
    Strategy *ok = strat(sk, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":2}}");
    strategy_free(ok);
    graph_free(sk);
}

/* strategy_build megatron with V > 1: P*V chunks cut evenly, the interleaved
 * schedule; V = 1 keeps 1F1B; other kinds and pp 1 refuse V. */
static void test_builder(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 8, true };
    Graph *g = gpt(x);
    Err err = {0};
    StrategyOpts o = { .world = 4, .tp = 1, .pp = 2, .microbatches = 4, .virtual_stages = 2 };
    cJSON *j = strategy_build("megatron", g, NULL, &o, &err);
    if (!j) fail_msg("megatron --virtual 2: %s", err.msg);
    const cJSON *pipe = cJSON_GetObjectItemCaseSensitive(j, "pipeline");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(pipe, "schedule")->valuestring,
                        "interleaved");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(pipe, "virtual")->valueint, 2);
    const cJSON *cuts = cJSON_GetObjectItemCaseSensitive(pipe, "cuts");
    assert_int_equal(cJSON_GetArraySize(cuts), 3);
    for (int k = 0; k < 3; k++) assert_int_equal(cJSON_GetArrayItem(cuts, k)->valueint, 2 * (k + 1));
    Strategy *s = strategy_from_json(j, g, NULL, &err);
    if (!s) fail_msg("built strategy refused: %s", err.msg);
    assert_int_equal(s->nchunks, 4);
    assert_int_equal(s->microbatches, 4);
    strategy_free(s);
    cJSON_Delete(j);

    /* 4 stages x 2 chunks over 8 blocks: one block per chunk */
    o = (StrategyOpts){ .world = 4, .tp = 1, .pp = 4, .virtual_stages = 2 };
    j = strategy_build("megatron", g, NULL, &o, &err);
    if (!j) fail_msg("megatron pp 4 --virtual 2: %s", err.msg);
    cuts = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "pipeline"), "cuts");
    assert_int_equal(cJSON_GetArraySize(cuts), 7);
    for (int k = 0; k < 7; k++) assert_int_equal(cJSON_GetArrayItem(cuts, k)->valueint, k + 1);
    cJSON_Delete(j);

    o = (StrategyOpts){ .world = 2, .tp = 1, .pp = 2, .microbatches = 4, .virtual_stages = 1 };
    j = strategy_build("megatron", g, NULL, &o, &err);
    if (!j) fail_msg("megatron --virtual 1: %s", err.msg);
    pipe = cJSON_GetObjectItemCaseSensitive(j, "pipeline");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(pipe, "schedule")->valuestring, "1f1b");
    assert_null(cJSON_GetObjectItemCaseSensitive(pipe, "virtual"));
    cJSON_Delete(j);

    o = (StrategyOpts){ .world = 2, .pp = 2, .microbatches = 4, .virtual_stages = 2 };
    assert_null(strategy_build("gpipe", g, NULL, &o, &err));
    assert_non_null(strstr(err.msg, "only megatron interleaves"));
    o = (StrategyOpts){ .world = 2, .tp = 2, .pp = 1, .virtual_stages = 2 };
    assert_null(strategy_build("megatron", g, NULL, &o, &err));
    assert_non_null(strstr(err.msg, "pp is 1"));
    /* M not a multiple of P: the parser's reason, with the builder's sizes */
    o = (StrategyOpts){ .world = 2, .tp = 1, .pp = 2, .microbatches = 1, .virtual_stages = 2 };
    assert_null(strategy_build("megatron", g, NULL, &o, &err));
    if (!strstr(err.msg, "V 2") || !strstr(err.msg, "pipeline.microbatches"))
        fail_msg("megatron M 1 V 2: %s", err.msg);
    o = (StrategyOpts){ .world = 2, .tp = 1, .pp = 2, .virtual_stages = -1 };
    assert_null(strategy_build("megatron", g, NULL, &o, &err));
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Lowering */

/* One plan's checks: schedule order and warm-up per stage, one forward and
 * one backward per (chunk, micro-batch), the closed-form pipeline volume,
 * pairing and completion across stages. */
static void check_interleaved(const Graph *g, const Strategy *s, const Plan *p, GptShape x,
                              const char *what)
{
    int P = s->nstages, V = s->virtual_stages, M = s->microbatches;
    int D = 1;
    for (int a = 0; a < s->naxes; a++)
        if (s->axis_name[a][0] == 'd' && s->axis_name[a][1] == 'p') D *= s->axis_size[a];
    int64_t bsh = (int64_t)x.B / (D * M) * x.s * x.h * 4;
    int max = 4 * M * V + 8;
    Pass *got = malloc(sizeof *got * max), *want = malloc(sizeof *want * max);
    for (int r = 0; r < P; r++) {
        const Program *pr = stage_prog(p, r);
        /* every instruction's op runs on this stage */
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            if (in->kind == I_COMPUTE && in->op >= 0 && s->op_stage[in->op] != r)
                fail_msg("%s: stage %d computes op %s of stage %d", what, r,
                         g->ops[in->op].name, s->op_stage[in->op]);
            for (int d = 0; d < in->ndeps; d++)
                assert_true(pr->deps[in->dep0 + d] < i);
        }
        int n = program_passes(s, pr, got, max);
        int nw = megatron_order(P, V, M, r, want);
        /* M*V forward and M*V backward chunk-passes, each (chunk, mb) once */
        int nf = 0, nb = 0;
        for (int k = 0; k < n; k++) {
            nf += got[k].fwd;
            nb += !got[k].fwd;
            for (int e = 0; e < k; e++)
                if (got[e].chunk == got[k].chunk && got[e].mb == got[k].mb &&
                    got[e].fwd == got[k].fwd)
                    fail_msg("%s: stage %d runs %s of chunk %d mb %d twice", what, r,
                             got[k].fwd ? "the forward" : "the backward", got[k].chunk, got[k].mb);
        }
        if (nf != M * V || nb != M * V)
            fail_msg("%s: stage %d runs %d forward and %d backward chunk-passes, want %d each",
                     what, r, nf, nb, M * V);
        /* warm-up: the forwards before the first backward, less the steady
         * state's first forward (none when the warm-up takes all M*V) */
        int ahead = 0;
        while (ahead < n && got[ahead].fwd) ahead++;
        int warm = ahead < M * V ? ahead - 1 : ahead;
        if (warm != megatron_warmup(P, V, M, r))
            fail_msg("%s: stage %d warms up with %d forwards, Megatron-LM %d", what, r, warm,
                     megatron_warmup(P, V, M, r));
        /* the whole order */
        assert_int_equal(n, nw);
        for (int k = 0; k < n; k++)
            if (got[k].chunk != want[k].chunk || got[k].mb != want[k].mb ||
                got[k].fwd != want[k].fwd)
                fail_msg("%s: stage %d, chunk-pass %d: %s of chunk %d mb %d, Megatron-LM runs "
                         "the %s of chunk %d mb %d", what, r, k, got[k].fwd ? "forward" : "backward",
                         got[k].chunk, got[k].mb, want[k].fwd ? "forward" : "backward",
                         want[k].chunk, want[k].mb);

        /* volume: each boundary of this stage's chunks, each micro-batch, each way */
        int fwd_out = V - (r == P - 1), bwd_out = V - (r == 0);   /* chunks with a next/previous */
        int64_t sendb = 0, recvb = 0;
        int sends = 0, recvs = 0;
        int *per = calloc((size_t)M * 4, sizeof *per);   /* [mb][send fwd, send bwd, recv fwd, recv bwd] */
        for (int i = 0; i < pr->ninstrs; i++) {
            const Instr *in = &pr->instrs[i];
            if (in->why != WHY_PIPELINE) continue;
            assert_true(in->kind == I_SEND || in->kind == I_RECV);
            assert_int_equal(in->bytes, bsh);
            assert_true(in->axes == (AxisMask)(1u << s->pp_axis));
            bool fw = in->phase == PH_FWD, sd = in->kind == I_SEND;
            /* forward goes to the next stage (wrapping), gradients come back */
            int peer = (sd == fw) ? (r + 1) % P : (r + P - 1) % P;
            if (in->peer != peer)
                fail_msg("%s: stage %d %s %s with stage %d, want %d", what, r,
                         sd ? "sends" : "receives", fw ? "an activation" : "a gradient",
                         in->peer, peer);
            per[in->micro * 4 + (sd ? 0 : 2) + (fw ? 0 : 1)]++;
            if (sd) {
                sendb += in->bytes;
                sends++;
            } else {
                recvb += in->bytes;
                recvs++;
            }
        }
        for (int mb = 0; mb < M; mb++) {
            int *q = &per[mb * 4];
            if (q[0] != fwd_out || q[1] != bwd_out || q[2] != bwd_out || q[3] != fwd_out)
                fail_msg("%s: stage %d mb %d: sends %d fwd %d bwd, recvs %d fwd %d bwd; want "
                         "%d %d, %d %d", what, r, mb, q[0], q[1], q[2], q[3], fwd_out, bwd_out,
                         bwd_out, fwd_out);
        }
        free(per);
        assert_int_equal(sends, (fwd_out + bwd_out) * M);
        assert_int_equal(recvs, (fwd_out + bwd_out) * M);
        assert_int_equal(sendb, (int64_t)(fwd_out + bwd_out) * M * bsh);
        assert_int_equal(recvb, (int64_t)(fwd_out + bwd_out) * M * bsh);
        assert_int_equal(program_comm_bytes(pr, I_SEND, WHY_PIPELINE), sendb);

        /* memory events balance */
        int64_t mem = 0;
        for (int i = 0; i < pr->ninstrs; i++) {
            if (pr->instrs[i].kind == I_ALLOC) mem += pr->instrs[i].bytes;
            if (pr->instrs[i].kind == I_FREE) mem -= pr->instrs[i].bytes;
        }
        assert_int_equal(mem, 0);
    }
    free(got);
    free(want);
    if (!pipeline_completes(p, s)) fail_msg("%s: the stages deadlock", what);
}

/* The matrix: P in {2, 4}, V in {1, 2, 4} (as far as 8 blocks allow), M in
 * {P, 2P, 4P}, data and tensor parallel around it.
 * Regression: when the executor's free of a sent buffer waited for the
 * send, `strata run` deadlocked on 2 stages x 2 chunks: stage 0 waited in
 * the free of the gradient chunk 2 sent for micro-batch 0 until stage 1
 * reached chunk 1's backward of it, while stage 1 waited in the free of the
 * gradient chunk 3 sent for micro-batch 1 until stage 0 reached chunk 2's
 * backward of that one. The executor now hands such a buffer to the send
 * (tests/test_run.c runs interleaved plans on 2 ranks). */
static void test_schedule_matrix(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 16, true };
    Graph *g = gpt(x);
    static const char TP_OPS[] = ",\"ops\":{\"*\":{\"split\":{\"n\":\"tp\",\"f\":\"tp\",\"v\":\"tp\"}}}";
    struct { const char *mesh; int P; bool tp; } meshes[] = {
        { "\"pp\":2", 2, false }, { "\"pp\":2,\"dp\":2", 2, false },
        { "\"pp\":4", 4, false }, { "\"pp\":2,\"dp\":2,\"tp\":2", 2, true },
        { "\"dp\":2,\"pp\":4", 4, false },
    };
    int Vs[] = { 1, 2, 4 }, Ms[] = { 1, 2, 4 };
    int cases = 0;
    for (size_t me = 0; me < sizeof meshes / sizeof meshes[0]; me++)
        for (int vi = 0; vi < 3; vi++)
            for (int mi = 0; mi < 3; mi++) {
                int P = meshes[me].P, V = Vs[vi], M = Ms[mi] * P;
                bool dp = strstr(meshes[me].mesh, "dp") != NULL;
                if (P * V > x.l || x.B % ((dp ? 2 : 1) * M)) continue;
                char js[512];
                snprintf(js, sizeof js, "{\"mesh\":{%s},\"pipeline\":{\"microbatches\":%d,"
                                        "\"schedule\":\"interleaved\",\"virtual\":%d}%s}",
                         meshes[me].mesh, M, V, meshes[me].tp ? TP_OPS : "");
                Strategy *s = strat(g, js);
                Plan *p = lower(g, s);
                check_interleaved(g, s, p, x, js);
                plan_free(p);
                strategy_free(s);
                cases++;
            }
    assert_true(cases >= 20);
    graph_free(g);
}

/* The earlier schedules still pass the same cross-stage run (the executor's
 * free-waits-for-send included), with the same pipeline volume. */
static void test_other_schedules_complete(void **state)
{
    (void)state;
    GptShape x = { 4, 32, 4, 16, 64, 16, true };
    Graph *g = gpt(x);
    const char *scheds[] = { "gpipe", "1f1b" };
    for (int sc = 0; sc < 2; sc++)
        for (int P = 2; P <= 4; P += 2)
            for (int M = 2; M <= 8; M *= 2) {
                char js[256];
                snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d},\"pipeline\":{\"microbatches\":%d,"
                                        "\"schedule\":\"%s\"}}", P, M, scheds[sc]);
                Strategy *s = strat(g, js);
                Plan *p = lower(g, s);
                if (!pipeline_completes(p, s)) fail_msg("%s: the stages deadlock", js);
                int64_t bsh = (int64_t)x.B / M * x.s * x.h * 4;
                for (int r = 0; r < P; r++) {
                    int edges = (r > 0) + (r < P - 1);
                    assert_int_equal(program_comm_bytes(stage_prog(p, r), I_SEND, WHY_PIPELINE),
                                     edges * M * bsh);
                }
                plan_free(p);
                strategy_free(s);
            }
    graph_free(g);
}

/* The tied embedding (chunk 0 on stage 0, the logits in chunk P*V-1 on stage
 * P-1) is summed between those two stages only, once, after the pipeline
 * has drained; the stages between hold no copy. */
static void test_tied_embedding(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 8, true };
    Graph *g = gpt(x);
    int wte = graph_find_tensor(g, "embed.wte");
    assert_true(wte >= 0);
    int64_t wb = tensor_numel(&g->tensors[wte]) * 4;
    for (int P = 2; P <= 4; P += 2) {
        char js[256];
        snprintf(js, sizeof js, "{\"mesh\":{\"pp\":%d},\"pipeline\":{\"microbatches\":%d,"
                                "\"schedule\":\"interleaved\",\"virtual\":2}}", P, P);
        Strategy *s = strat(g, js);
        Plan *p = lower(g, s);
        for (int r = 0; r < P; r++) {
            const Program *pr = stage_prog(p, r);
            int n = 0, after = 0;
            for (int i = 0; i < pr->ninstrs; i++) {
                const Instr *in = &pr->instrs[i];
                if (in->kind == I_COMPUTE && in->op >= 0) after = 0;
                if (in->why != WHY_TIED) continue;
                n++;
                after = 1;
                assert_int_equal(in->tensor, wte);
                assert_int_equal(in->bytes, wb);
                assert_int_equal(in->peer, 1 | 1 << (P - 1));
            }
            assert_int_equal(n, r == 0 || r == P - 1 ? 1 : 0);
            /* no op compute after it: the pipeline has drained */
            if (n) assert_int_equal(after, 1);
        }
        if (!pipeline_completes(p, s)) fail_msg("%s: the stages deadlock", js);
        plan_free(p);
        strategy_free(s);
    }
    graph_free(g);
}

/* Recompute, ZeRO 1/2/3 and a parameter server (an untied GPT: a tied table
 * on two stages refuses ZeRO and ps) lower with interleaving, keep the
 * schedule and complete; ZeRO-1 and all-reduce sync each param once, after
 * its chunk's last backward. */
static void test_with_other_policies(void **state)
{
    (void)state;
    GptShape x = { 8, 32, 4, 16, 64, 16, false };
    Graph *g = gpt(x);
    /* once: sync after the last micro-batch (all-reduce, ZeRO-1); ps: a
     * stage's ranks serve different shards, so a stage has several classes */
    const struct { const char *json; bool once, ps; } extra[] = {
        { ",\"ops\":{\"*\":{\"recompute\":true}}", true, false },
        { ",\"params\":{\"*\":{\"shard\":\"zero1\"}}", true, false },
        { ",\"params\":{\"*\":{\"shard\":\"zero2\"}}", false, false },
        { ",\"params\":{\"*\":{\"shard\":\"zero3\"}}", false, false },
        { ",\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2}}}", false, true },
        { "", true, false },
    };
    for (size_t e = 0; e < sizeof extra / sizeof extra[0]; e++) {
        char js[512];
        snprintf(js, sizeof js, "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"microbatches\":4,"
                                "\"schedule\":\"interleaved\",\"virtual\":2}%s}", extra[e].json);
        Strategy *s = strat(g, js);
        Plan *p = lower(g, s);
        if (extra[e].ps) {
            /* ps roles split a stage into classes; check each */
            for (int k = 0; k < p->nclasses; k++) {
                const Program *pr = &p->classes[k];
                Pass got[64], want[64];
                int n = program_passes(s, pr, got, 64);
                assert_int_equal(n, megatron_order(2, 2, 4, pr->stage, want));
            }
        } else {
            check_interleaved(g, s, p, x, js);
        }
        if (extra[e].once) {
            /* accumulate-then-sync: each param synced once, with its chunk's last
             * micro-batch, and only after that chunk's last backward compute */
            for (int r = 0; r < 2; r++) {
                const Program *pr = stage_prog(p, r);
                for (int t = 0; t < g->ntensors; t++) {
                    if (g->tensors[t].role != ROLE_PARAM) continue;
                    int syncs = 0, at = -1, last_bwd = -1;
                    for (int i = 0; i < pr->ninstrs; i++) {
                        const Instr *in = &pr->instrs[i];
                        if (in->why == WHY_GRAD_SYNC && in->tensor == t &&
                            (in->kind == I_ALLREDUCE || in->kind == I_REDUCE_SCATTER)) {
                            syncs++;
                            at = i;
                            assert_int_equal(in->micro, 3);
                        }
                        if (in->kind == I_COMPUTE && in->phase == PH_BWD_WEIGHT && in->op >= 0)
                            for (int k = 0; k < pr->instrs[i].nargs; k++)
                                if (pr->args[in->arg0 + k] >= 0 &&
                                    pr->values[pr->args[in->arg0 + k]].kind == VAL_PARAM_GRAD &&
                                    pr->values[pr->args[in->arg0 + k]].tensor == t)
                                    last_bwd = i;
                    }
                    if (last_bwd < 0) continue;      /* not on this stage */
                    if (syncs != 1 || at < last_bwd)
                        fail_msg("%s: stage %d param %s: %d syncs, at %d, last gradient at %d",
                                 js, r, g->tensors[t].name, syncs, at, last_bwd);
                }
            }
        }
        if (!extra[e].ps && !pipeline_completes(p, s)) fail_msg("%s: the stages deadlock", js);
        plan_free(p);
        strategy_free(s);
    }
    graph_free(g);
}

/* Interleaving trades memory for a smaller bubble: stage 0 keeps more
 * micro-batch chunks in flight than under 1F1B (its warm-up runs
 * 2(P-1) + (V-1)P chunk-passes, each a 1/V of the stage's layers), and each
 * stage holds the same params as the 1F1B stage with its share of blocks. */
static void test_memory(void **state)
{
    (void)state;
    GptShape x = { 8, 64, 4, 16, 16, 16, false };
    Graph *g = gpt(x);
    Strategy *a = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":8,"
                           "\"schedule\":\"1f1b\"}}");
    Strategy *b = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":8,"
                           "\"schedule\":\"interleaved\",\"virtual\":2}}");
    Plan *pa = lower(g, a), *pb = lower(g, b);
    int64_t sa = 0, sb = 0;
    for (int r = 0; r < 2; r++) {
        sa += stage_prog(pa, r)->static_mem;
        sb += stage_prog(pb, r)->static_mem;
    }
    assert_int_equal(sa, sb);
    int64_t act_a = stage_prog(pa, 0)->peak_mem - stage_prog(pa, 0)->static_mem;
    int64_t act_b = stage_prog(pb, 0)->peak_mem - stage_prog(pb, 0)->static_mem;
    /* 1F1B: 2 micro-batches of 4 blocks; interleaved: 4 chunk-passes of 2
     * blocks at the end of warm-up, then one more before the first backward */
    if (!(act_b > act_a))
        fail_msg("stage 0 activation peak: interleaved %lld, 1F1B %lld; want more",
                 (long long)act_b, (long long)act_a);
    plan_free(pa);
    plan_free(pb);
    strategy_free(a);
    strategy_free(b);
    graph_free(g);
}

/* The summary names the schedule and V. */
static void test_summary(void **state)
{
    (void)state;
    GptShape x = { 4, 32, 4, 16, 64, 8, true };
    Graph *g = gpt(x);
    Strategy *s = strat(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"microbatches\":2,"
                           "\"schedule\":\"interleaved\",\"virtual\":2}}");
    Plan *p = lower(g, s);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    plan_summary_print(p, s, f);
    fclose(f);
    assert_non_null(strstr(buf, "(interleaved, 2 chunks per stage)"));
    free(buf);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_canonical),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_builder),
        cmocka_unit_test(test_schedule_matrix),
        cmocka_unit_test(test_other_schedules_complete),
        cmocka_unit_test(test_tied_embedding),
        cmocka_unit_test(test_with_other_policies),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
