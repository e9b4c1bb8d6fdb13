/*
 * test_strategy.c — the unified strategy: defaults, pattern precedence, every
 * validation error (path and reason), the canonical form and its id, mesh
 * coordinates, and the classic-strategy builders on zoo models.
 *
 * Two hand-written graphs exercise the rules letter by letter:
 *   tiny  a 4-block decoder without weights in attention (b,s,t,h,f,v),
 *   conv  conv -> batchnorm -> relu -> pool -> mean -> fc -> loss (n,c,h,w,...).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/cluster.h"
#include "ir/strategy.h"
#include "ir/util.h"
#include "ir/zoo.h"

/* ----------------------------------------------------------------------------
 * Test graphs */

static void tensor(cJSON *ts, const char *name, int n, const int *shape, const char *dtype,
                   const char *role)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "name", name);
    cJSON_AddItemToObject(t, "shape", cJSON_CreateIntArray(shape, n));
    cJSON_AddStringToObject(t, "dtype", dtype);
    cJSON_AddStringToObject(t, "role", role);
    cJSON_AddItemToArray(ts, t);
}

/* Adds an op; `attr` is "key=value" for one string attribute (reduce, gather) or NULL. */
static cJSON *op(cJSON *os, const char *name, const char *kind, const char *spec,
                 const char *in0, const char *in1, const char *out, int block, const char *attr)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "kind", kind);
    cJSON_AddStringToObject(o, "spec", spec);
    cJSON *in = cJSON_AddArrayToObject(o, "inputs");
    cJSON_AddItemToArray(in, cJSON_CreateString(in0));
    if (in1) cJSON_AddItemToArray(in, cJSON_CreateString(in1));
    cJSON_AddStringToObject(o, "output", out);
    if (block >= 0) cJSON_AddNumberToObject(o, "block", block);
    if (attr) {
        char key[32];
        const char *eq = strchr(attr, '=');
        snprintf(key, sizeof key, "%.*s", (int)(eq - attr), attr);
        cJSON_AddStringToObject(o, key, eq + 1);
    }
    cJSON_AddItemToArray(os, o);
    return o;
}

enum { B = 8, S = 16, H = 32, F = 128, V = 64, NB = 4 };

static Graph *tiny_graph(void)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", "tiny");
    cJSON *ts = cJSON_AddArrayToObject(j, "tensors");
    cJSON *os = cJSON_AddArrayToObject(j, "ops");
    int bs[] = {B, S}, vh[] = {V, H}, bsh[] = {B, S, H}, h[] = {H}, hf[] = {H, F},
        fh[] = {F, H}, bsf[] = {B, S, F}, bst[] = {B, S, S}, bsv[] = {B, S, V}, f[] = {F};
    tensor(ts, "tok", 2, bs, "i32", "input");
    tensor(ts, "lab", 2, bs, "i32", "label");
    tensor(ts, "wte", 2, vh, "f32", "param");
    tensor(ts, "x0", 3, bsh, "f32", "activation");
    op(os, "embed", "embedding", "bs,vh->bsh", "tok", "wte", "x0", -1, "gather=v");
    char prev[64] = "x0";
    for (int k = 0; k < NB; k++) {
        char n[16][64];
        const char *suf[] = {"ln.g", "ln.out", "scores", "probs", "ctx", "r1", "w1", "b1",
                             "h", "hb", "a", "w2", "y", "r2"};
        for (int i = 0; i < 14; i++) snprintf(n[i], sizeof n[i], "blocks.%d.%s", k, suf[i]);
        tensor(ts, n[0], 1, h, "f32", "param");
        tensor(ts, n[1], 3, bsh, "f32", "activation");
        tensor(ts, n[2], 3, bst, "f32", "activation");
        tensor(ts, n[3], 3, bst, "f32", "activation");
        tensor(ts, n[4], 3, bsh, "f32", "activation");
        tensor(ts, n[5], 3, bsh, "f32", "activation");
        tensor(ts, n[6], 2, hf, "f32", "param");
        tensor(ts, n[7], 1, f, "f32", "param");
        tensor(ts, n[8], 3, bsf, "f32", "activation");
        tensor(ts, n[9], 3, bsf, "f32", "activation");
        tensor(ts, n[10], 3, bsf, "f32", "activation");
        tensor(ts, n[11], 2, fh, "f32", "param");
        tensor(ts, n[12], 3, bsh, "f32", "activation");
        tensor(ts, n[13], 3, bsh, "f32", "activation");
        char on[64];
#define OPN(x) (snprintf(on, sizeof on, "blocks.%d.%s", k, x), on)
        op(os, OPN("ln"), "layernorm", "bsh,h->bsh", prev, n[0], n[1], k, "reduce=h");
        op(os, OPN("scores"), "matmul", "bsh,bth->bst", n[1], n[1], n[2], k, NULL);
        cJSON *sm = op(os, OPN("softmax"), "softmax", "bst->bst", n[2], NULL, n[3], k, "reduce=t");
        cJSON_AddBoolToObject(sm, "causal", true);
        op(os, OPN("ctx"), "matmul", "bst,bth->bsh", n[3], n[1], n[4], k, NULL);
        cJSON *add = op(os, OPN("res1"), "add", "bsh,bsh->bsh", prev, n[4], n[5], k, NULL);
        (void)add;
        op(os, OPN("fc1"), "matmul", "bsh,hf->bsf", n[5], n[6], n[8], k, NULL);
        op(os, OPN("bias1"), "bias", "bsf,f->bsf", n[8], n[7], n[9], k, NULL);
        op(os, OPN("gelu"), "gelu", "bsf->bsf", n[9], NULL, n[10], k, NULL);
        op(os, OPN("fc2"), "matmul", "bsf,fh->bsh", n[10], n[11], n[12], k, NULL);
        op(os, OPN("res2"), "add", "bsh,bsh->bsh", n[5], n[12], n[13], k, NULL);
#undef OPN
        snprintf(prev, sizeof prev, "%s", n[13]);
    }
    tensor(ts, "logits", 3, bsv, "f32", "activation");
    int scalar[1];
    tensor(ts, "loss", 0, scalar, "f32", "activation");
    op(os, "head", "matmul", "bsh,vh->bsv", prev, "wte", "logits", -1, NULL);
    op(os, "xent", "cross_entropy", "bsv,bs->", "logits", "lab", "loss", -1, "reduce=v");
    Err err = {{0}};
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("tiny graph: %s", err.msg);
    return g;
}

static Graph *conv_graph(void)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", "conv");
    cJSON *ts = cJSON_AddArrayToObject(j, "tensors");
    cJSON *os = cJSON_AddArrayToObject(j, "ops");
    int img[] = {8, 3, 8, 8}, cw[] = {4, 3, 3, 3}, c1[] = {8, 4, 8, 8}, c4[] = {4},
        p1[] = {8, 4, 4, 4}, m1[] = {8, 4}, fw[] = {4, 10}, lo[] = {8, 10}, lab[] = {8}, sc[1];
    tensor(ts, "img", 4, img, "f32", "input");
    tensor(ts, "lab", 1, lab, "i32", "label");
    tensor(ts, "cw", 4, cw, "f32", "param");
    tensor(ts, "c", 4, c1, "f32", "activation");
    tensor(ts, "bn.g", 1, c4, "f32", "param");
    tensor(ts, "bn.out", 4, c1, "f32", "activation");
    tensor(ts, "act", 4, c1, "f32", "activation");
    tensor(ts, "pool", 4, p1, "f32", "activation");
    tensor(ts, "feat", 2, m1, "f32", "activation");
    tensor(ts, "fw", 2, fw, "f32", "param");
    tensor(ts, "logits", 2, lo, "f32", "activation");
    tensor(ts, "loss", 0, sc, "f32", "activation");
    cJSON *cv = op(os, "conv", "conv2d", "nchw,ocrs->nohw", "img", "cw", "c", 0, NULL);
    cJSON_AddNumberToObject(cv, "pad", 1);
    op(os, "bn", "batchnorm", "nchw,c->nchw", "c", "bn.g", "bn.out", 0, "reduce=nhw");
    op(os, "relu", "relu", "nchw->nchw", "bn.out", NULL, "act", 0, NULL);
    cJSON *pl = op(os, "pool", "pool2d", "nchw->nchw", "act", NULL, "pool", 0, NULL);
    cJSON_AddNumberToObject(pl, "window", 2);
    cJSON_AddNumberToObject(pl, "stride", 2);
    op(os, "mean", "mean", "nchw->nc", "pool", NULL, "feat", -1, NULL);
    op(os, "fc", "matmul", "nc,ck->nk", "feat", "fw", "logits", -1, NULL);
    op(os, "xent", "cross_entropy", "nk,n->", "logits", "lab", "loss", -1, "reduce=k");
    Err err = {{0}};
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("conv graph: %s", err.msg);
    return g;
}

static Graph *zoo(const char *kind)
{
    Err err = {{0}};
    Graph *g;
    if (strcmp(kind, "gpt") == 0) {
        const char *k[] = {"layers", "hidden", "heads", "seq", "vocab", "batch"};
        const char *v[] = {"4", "64", "4", "32", "128", "8"};
        g = zoo_build("gpt", 6, k, v, &err);
    } else {
        g = zoo_build(kind, 0, NULL, NULL, &err);
    }
    if (!g) fail_msg("zoo_build %s: %s", kind, err.msg);
    return g;
}

static Cluster *shipped(const char *name, int nodes)
{
    const char *r = getenv("STRATA_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/clusters/%s.json", r && *r ? r : ".", name);
    Err err = {{0}};
    Cluster *c = cluster_load(path, nodes, &err);
    if (!c) fail_msg("%s", err.msg);
    return c;
}

/* ----------------------------------------------------------------------------
 * Helpers */

static Strategy *parse_c(const Graph *g, const Cluster *c, const char *text, Err *err)
{
    cJSON *j = cJSON_Parse(text);
    if (!j) fail_msg("test JSON does not parse: %s", text);
    Strategy *s = strategy_from_json(j, g, c, err);
    cJSON_Delete(j);
    return s;
}

static Strategy *ok(const Graph *g, const char *text)
{
    Err err = {{0}};
    Strategy *s = parse_c(g, NULL, text, &err);
    if (!s) fail_msg("rejected: %s\n  strategy: %s", err.msg, text);
    return s;
}

/* Must fail with a message containing every one of the NULL-terminated parts. */
static void bad_c(const Graph *g, const Cluster *c, const char *text, ...)
{
    Err err = {{0}};
    Strategy *s = parse_c(g, c, text, &err);
    if (s) {
        strategy_free(s);
        fail_msg("accepted, expected an error: %s", text);
    }
    va_list ap;
    va_start(ap, text);
    for (const char *want; (want = va_arg(ap, const char *));)
        if (!strstr(err.msg, want)) {
            va_end(ap);
            fail_msg("error \"%s\"\n  lacks \"%s\"\n  strategy: %s", err.msg, want, text);
        }
    va_end(ap);
}
#define bad(g, text, ...) bad_c(g, NULL, text, __VA_ARGS__, (const char *)NULL)

static int opi(const Graph *g, const char *name)
{
    int i = graph_find_op(g, name);
    if (i < 0) fail_msg("no op %s", name);
    return i;
}

static int tni(const Graph *g, const char *name)
{
    int t = graph_find_tensor(g, name);
    if (t < 0) fail_msg("no tensor %s", name);
    return t;
}

static AxisMask split_of(const Graph *g, const Strategy *s, const char *opname, char l)
{
    return s->ops[opi(g, opname)].split[l - 'a'];
}

static AxisMask ax(const Strategy *s, const char *name)
{
    int a = strategy_axis(s, name);
    if (a < 0) fail_msg("no axis %s", name);
    return (AxisMask)(1u << a);
}

static void same_id(const Graph *g, const char *a, const char *b)
{
    Strategy *x = ok(g, a), *y = ok(g, b);
    if (strcmp(x->id, y->id) != 0) fail_msg("ids differ:\n  %s\n  %s", a, b);
    assert_true(cJSON_Compare(x->canonical, y->canonical, 1));
    strategy_free(x);
    strategy_free(y);
}

static void diff_id(const Graph *g, const char *a, const char *b)
{
    Strategy *x = ok(g, a), *y = ok(g, b);
    if (strcmp(x->id, y->id) == 0) fail_msg("ids equal:\n  %s\n  %s", a, b);
    strategy_free(x);
    strategy_free(y);
}

/* The canonical form parses back (as a tree and as text) to the same id,
 * and is written with its keys sorted (the mesh's in its order). */
static void round_trip(const Graph *g, const Cluster *c, const Strategy *s)
{
    Err err = {{0}};
    static const char *const keep[] = {"mesh", NULL};
    cJSON *so = json_sorted(s->canonical, keep);
    char *a = cJSON_PrintUnformatted(s->canonical), *b = cJSON_PrintUnformatted(so);
    assert_string_equal(a, b);
    cJSON_free(a);
    cJSON_free(b);
    cJSON_Delete(so);
    Strategy *t = strategy_from_json(s->canonical, g, c, &err);
    if (!t) fail_msg("canonical form rejected: %s", err.msg);
    assert_string_equal(s->id, t->id);
    assert_true(cJSON_Compare(s->canonical, t->canonical, 1));
    assert_int_equal(s->world, t->world);
    assert_int_equal(s->microbatches, t->microbatches);
    for (int i = 0; i < g->nops; i++) {
        assert_memory_equal(&s->ops[i], &t->ops[i], sizeof s->ops[i]);
        assert_int_equal(s->op_stage[i], t->op_stage[i]);
    }
    for (int k = 0; k < g->ntensors; k++)
        assert_memory_equal(&s->params[k], &t->params[k], sizeof s->params[k]);
    strategy_free(t);

    char *text = cJSON_Print(s->canonical);
    cJSON *j = cJSON_Parse(text);
    cJSON_free(text);
    t = strategy_from_json(j, g, c, &err);
    cJSON_Delete(j);
    if (!t) fail_msg("printed canonical form rejected: %s", err.msg);
    assert_string_equal(s->id, t->id);
    strategy_free(t);
}

/* ----------------------------------------------------------------------------
 * Defaults and the mesh */

static void test_defaults(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    assert_int_equal(g->nblocks, NB);
    Strategy *s = ok(g, "{\"mesh\":{\"dp\":4}}");
    assert_int_equal(s->naxes, 1);
    assert_int_equal(s->world, 4);
    assert_int_equal(s->data_axes, 1);
    assert_int_equal(s->pp_axis, -1);
    assert_int_equal(s->nstages, 1);
    assert_int_equal(s->microbatches, 1);
    assert_int_equal(s->schedule, SCHED_1F1B);
    assert_int_equal(s->optimizer, OPT_ADAM);
    assert_int_equal(s->nops, g->nops);
    for (int i = 0; i < g->nops; i++) {
        const Op *o = &g->ops[i];
        assert_int_equal(s->op_stage[i], 0);
        assert_false(s->ops[i].recompute);
        assert_true(o->batch_letter >= 0);
        for (int l = 0; l < IR_LETTERS; l++)
            assert_int_equal(s->ops[i].split[l], l == o->batch_letter ? 1 : 0);
    }
    for (int t = 0; t < g->ntensors; t++) {
        const ParamPolicy *p = &s->params[t];
        assert_int_equal(p->method, SYNC_ALLREDUCE);
        assert_int_equal(p->algo, ALGO_RING);
        assert_int_equal(p->compress, COMPRESS_NONE);
        assert_int_equal(p->shard, SHARD_NONE);
        assert_true(p->bucket_bytes == 25.0 * 1048576);
    }
    assert_int_equal(strlen(s->id), 16);
    round_trip(g, NULL, s);
    strategy_free(s);

    /* no mesh at all: one device, nothing split */
    s = ok(g, "{}");
    assert_int_equal(s->world, 1);
    assert_int_equal(s->naxes, 0);
    assert_int_equal(s->data_axes, 0);
    for (int i = 0; i < g->nops; i++)
        for (int l = 0; l < IR_LETTERS; l++) assert_int_equal(s->ops[i].split[l], 0);
    round_trip(g, NULL, s);
    strategy_free(s);

    /* several data axes: the batch goes over all of them */
    s = ok(g, "{\"mesh\":{\"dp_inter\":2,\"tp\":1,\"dp\":2}}");
    assert_int_equal(s->data_axes, ax(s, "dp_inter") | ax(s, "dp"));
    assert_int_equal(split_of(g, s, "blocks.2.fc1", 'b'), s->data_axes);
    char buf[64];
    assert_string_equal(strategy_axes_name(s, s->data_axes, buf, sizeof buf), "dp_inter+dp");
    round_trip(g, NULL, s);
    strategy_free(s);
    graph_free(g);
}

static void test_mesh_coords(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    Strategy *s = ok(g, "{\"mesh\":{\"pp\":2,\"dp\":2,\"tp\":4},"
                        "\"ops\":{\"*\":{\"split\":{\"f\":\"tp\"}}}}");
    assert_int_equal(s->world, 16);
    assert_int_equal(s->pp_axis, 0);
    assert_int_equal(s->axis_stride[0], 8);
    assert_int_equal(s->axis_stride[1], 4);
    assert_int_equal(s->axis_stride[2], 1);
    assert_int_equal(strategy_axis(s, "tp"), 2);
    assert_int_equal(strategy_axis(s, "ep"), -1);
    int c[MESH_MAX_AXES];
    strategy_coords(s, 13, c);   /* 13 = 1*8 + 1*4 + 1 */
    assert_int_equal(c[0], 1);
    assert_int_equal(c[1], 1);
    assert_int_equal(c[2], 1);
    for (int r = 0; r < s->world; r++) {
        strategy_coords(s, r, c);
        assert_int_equal(strategy_rank(s, c), r);
    }
    assert_int_equal(strategy_group_size(s, 0), 1);
    assert_int_equal(strategy_group_size(s, ax(s, "dp") | ax(s, "tp")), 8);
    char buf[64];
    assert_string_equal(strategy_axes_name(s, 0, buf, sizeof buf), "");
    assert_string_equal(strategy_axes_name(s, ax(s, "dp") | ax(s, "tp"), buf, sizeof buf), "dp+tp");
    assert_string_equal(strategy_axes_name(s, 7, buf, sizeof buf), "pp+dp+tp");
    assert_string_equal(strategy_axes_name(s, 7, buf, 6), "pp+dp");   /* truncates whole names */
    assert_string_equal(shard_name(SHARD_ZERO2), "zero2");
    assert_string_equal(sync_method_name(SYNC_SFB), "sfb");
    assert_string_equal(compress_name(COMPRESS_INT8), "int8");
    strategy_free(s);

    /* a smaller mesh than the cluster is fine; a larger one is not */
    Cluster *cl = shipped("local-cpu", 0);
    Err err = {{0}};
    s = parse_c(g, cl, "{\"mesh\":{\"dp\":1}}", &err);
    assert_non_null(s);
    strategy_free(s);
    s = parse_c(g, cl, "{\"mesh\":{\"dp\":2}}", &err);
    assert_non_null(s);
    strategy_free(s);
    bad_c(g, cl, "{\"mesh\":{\"dp\":2,\"tp\":2}}",
          "mesh: 4 ranks (dp 2 x tp 2) but cluster local-cpu has only 2 devices", (char *)NULL);
    cluster_free(cl);
    graph_free(g);
}

static void test_pipeline(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    Strategy *s = ok(g, "{\"mesh\":{\"pp\":2,\"dp\":2}}");
    assert_int_equal(s->microbatches, 2);   /* defaults to the stage count */
    strategy_free(s);
    s = ok(g, "{\"mesh\":{\"pp\":3,\"dp\":2},\"pipeline\":{\"microbatches\":4}}");
    assert_int_equal(s->nstages, 3);
    assert_int_equal(s->cuts[0], 1);   /* 4 blocks over 3 stages: [0,1) [1,2) [2,4) */
    assert_int_equal(s->cuts[1], 2);
    assert_int_equal(s->microbatches, 4);
    assert_int_equal(s->op_stage[opi(g, "embed")], 0);
    assert_int_equal(s->op_stage[opi(g, "blocks.0.fc2")], 0);
    assert_int_equal(s->op_stage[opi(g, "blocks.1.ln")], 1);
    assert_int_equal(s->op_stage[opi(g, "blocks.2.ln")], 2);
    assert_int_equal(s->op_stage[opi(g, "blocks.3.res2")], 2);
    assert_int_equal(s->op_stage[opi(g, "head")], 2);
    assert_int_equal(s->op_stage[opi(g, "xent")], 2);
    round_trip(g, NULL, s);
    strategy_free(s);
    bad(g, "{\"mesh\":{\"pp\":3,\"dp\":2}}", "pipeline.microbatches: 3 does not divide the batch");

    s = ok(g, "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"cuts\":[3],\"microbatches\":4,"
              "\"schedule\":\"gpipe\"},\"optimizer\":\"sgd\"}");
    assert_int_equal(s->cuts[0], 3);
    assert_int_equal(s->microbatches, 4);
    assert_int_equal(s->schedule, SCHED_GPIPE);
    assert_int_equal(s->optimizer, OPT_SGD);
    assert_int_equal(s->op_stage[opi(g, "blocks.2.fc1")], 0);
    assert_int_equal(s->op_stage[opi(g, "blocks.3.fc1")], 1);
    round_trip(g, NULL, s);
    strategy_free(s);

    /* micro-batches without a pipeline: gradient accumulation */
    s = ok(g, "{\"mesh\":{\"dp\":2},\"pipeline\":{\"microbatches\":2}}");
    assert_int_equal(s->nstages, 1);
    assert_int_equal(s->microbatches, 2);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Entries: precedence and patterns */

static void test_precedence(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    Strategy *s = ok(g,
        "{\"mesh\":{\"dp\":2,\"tp\":4},"
        " \"ops\":{\"*\":{\"split\":{\"f\":\"tp\",\"v\":\"tp\"}},"
        "          \"blocks.1.*\":{\"split\":{\"f\":null},\"recompute\":true},"
        "          \"blocks.1.fc1\":{\"split\":{\"b\":[\"dp\",\"tp\"]}},"
        "          \"blocks.2.fc2\":{\"split\":{\"b\":null}},"
        "          \"blocks.3.fc1\":{\"recompute\":true}},"
        " \"params\":{\"*\":{\"sync\":{\"algo\":\"tree\",\"bucket_mb\":50}},"
        "             \"blocks.*.w1\":{\"sync\":{\"compress\":\"fp16\"},\"shard\":\"zero2\"},"
        "             \"blocks.0.w1\":{\"sync\":{\"method\":\"allreduce\",\"compress\":\"powersgd:4\"}},"
        "             \"wte\":{\"sync\":{\"method\":\"ps\",\"placement\":[1,0]}},"
        "             \"blocks.3.w2\":{\"sync\":{\"method\":\"sfb\"}}}}");
    AxisMask dp = ax(s, "dp"), tp = ax(s, "tp");
    /* "*" reaches every op that has f or v, and skips the letters others lack */
    assert_int_equal(split_of(g, s, "blocks.0.fc1", 'f'), tp);
    assert_int_equal(split_of(g, s, "blocks.0.gelu", 'f'), tp);
    assert_int_equal(split_of(g, s, "head", 'v'), tp);
    assert_int_equal(split_of(g, s, "xent", 'v'), tp);   /* vocab-parallel loss is allowed */
    assert_int_equal(split_of(g, s, "embed", 'v'), tp);
    assert_int_equal(split_of(g, s, "blocks.0.ln", 'h'), 0);
    /* the later pattern undoes f in block 1 only, and leaves b alone */
    assert_int_equal(split_of(g, s, "blocks.1.fc1", 'f'), 0);
    assert_int_equal(split_of(g, s, "blocks.1.gelu", 'f'), 0);
    assert_int_equal(split_of(g, s, "blocks.1.gelu", 'b'), dp);
    assert_int_equal(split_of(g, s, "blocks.2.fc1", 'f'), tp);
    /* an exact entry overrides one letter and keeps the rest */
    assert_int_equal(split_of(g, s, "blocks.1.fc1", 'b'), dp | tp);
    assert_int_equal(split_of(g, s, "blocks.2.fc2", 'b'), 0);
    assert_int_equal(split_of(g, s, "blocks.2.fc2", 'f'), tp);
    assert_true(s->ops[opi(g, "blocks.1.ln")].recompute);
    assert_true(s->ops[opi(g, "blocks.3.fc1")].recompute);
    assert_false(s->ops[opi(g, "blocks.3.fc2")].recompute);
    assert_false(s->ops[opi(g, "blocks.0.fc1")].recompute);

    const ParamPolicy *p = &s->params[tni(g, "blocks.2.w1")];
    assert_int_equal(p->algo, ALGO_TREE);          /* from "*" */
    assert_int_equal(p->compress, COMPRESS_FP16);  /* from blocks.*.w1 */
    assert_true(p->bucket_bytes == 50.0 * 1048576);
    assert_int_equal(p->shard, SHARD_ZERO2);
    p = &s->params[tni(g, "blocks.0.w1")];
    assert_int_equal(p->compress, COMPRESS_POWERSGD);
    assert_int_equal(p->powersgd_rank, 4);
    assert_int_equal(p->algo, ALGO_TREE);
    p = &s->params[tni(g, "blocks.2.ln.g")];
    assert_int_equal(p->algo, ALGO_TREE);
    assert_int_equal(p->compress, COMPRESS_NONE);
    assert_int_equal(p->shard, SHARD_NONE);
    p = &s->params[tni(g, "wte")];
    assert_int_equal(p->method, SYNC_PS);
    assert_int_equal(p->ps_shards, 2);             /* from the placement's length */
    assert_int_equal(p->ps_placement[0], 1);
    assert_int_equal(p->ps_placement[1], 0);
    assert_int_equal(p->staleness, 0);
    assert_int_equal(p->algo, ALGO_RING);          /* fields ps does not read are reset */
    assert_true(p->bucket_bytes == 25.0 * 1048576);
    assert_int_equal(s->params[tni(g, "blocks.3.w2")].method, SYNC_SFB);
    round_trip(g, NULL, s);
    strategy_free(s);

    /* ps defaults: min(D, 4) shards spread over the data group */
    s = ok(g, "{\"mesh\":{\"dp\":8},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"staleness\":2}}}}");
    p = &s->params[tni(g, "blocks.0.w2")];
    assert_int_equal(p->ps_shards, 4);
    assert_int_equal(p->ps_placement[0], 0);
    assert_int_equal(p->ps_placement[1], 2);
    assert_int_equal(p->ps_placement[3], 6);
    assert_int_equal(p->staleness, 2);
    round_trip(g, NULL, s);
    strategy_free(s);
    s = ok(g, "{\"mesh\":{\"dp\":2},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\"}}}}");
    assert_int_equal(s->params[tni(g, "wte")].ps_shards, 2);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Validation: every error names its path and reason */

static void test_errors_structure(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    bad(g, "[1]", "strategy: expected an object");
    bad(g, "{\"mseh\":{}}", "strategy: unknown field \"mseh\"");
    bad(g, "{\"mesh\":[2]}", "mesh: expected an object");
    bad(g, "{\"mesh\":{\"tp\":0}}", "mesh.tp: 0 is out of range");
    bad(g, "{\"mesh\":{\"tp\":-2}}", "mesh.tp: -2 is out of range");
    bad(g, "{\"mesh\":{\"tp\":1.5}}", "mesh.tp: expected an integer");
    bad(g, "{\"mesh\":{\"t p\":2}}", "mesh: \"t p\" is not an axis name");
    bad(g, "{\"mesh\":{\"dp\":2,\"dp\":2}}", "mesh.dp: axis named twice");
    bad(g, "{\"mesh\":{\"dp\":8192,\"tp\":8192}}", "mesh.tp: the mesh has more than");
    /* an axis that splits nothing (not a data axis, no op split over it) */
    bad(g, "{\"mesh\":{\"data\":2}}", "mesh.data: its 2 ranks split no op",
        "repeat the others' work");
    bad(g, "{\"mesh\":{\"dp\":2,\"tp\":2}}", "mesh.tp: its 2 ranks split no op");
    bad(g, "{\"optimizer\":\"lamb\"}", "strategy.optimizer: unknown value \"lamb\"");
    bad(g, "{\"pipeline\":{\"stages\":2}}", "pipeline: unknown field \"stages\"");
    bad(g, "{\"pipeline\":{\"microbatches\":0}}", "pipeline.microbatches: 0 is out of range");
    bad(g, "{\"pipeline\":{\"schedule\":\"zb\"}}", "pipeline.schedule: unknown value \"zb\"",
        "gpipe, 1f1b");
    bad(g, "{\"ops\":[]}", "ops: expected an object");
    bad(g, "{\"params\":3}", "params: expected an object");
    bad(g, "{\"ops\":{\"*\":{\"splt\":{}}}}", "ops[\"*\"]: unknown field \"splt\"");
    bad(g, "{\"mesh\":{\"dp\":2},\"ops\":{\"*.*\":{\"split\":{\"q\":\"dp\"}}}}",
        "ops[\"*.*\"].split.q: none of the");
    /* "*" alone is the model-wide default, written for any model */
    strategy_free(ok(g, "{\"mesh\":{\"dp\":2},\"ops\":{\"*\":{\"split\":{\"q\":\"dp\"}}}}"));
    bad(g, "{\"ops\":{\"*\":{\"split\":[\"b\"]}}}", "ops[\"*\"].split: expected an object");
    bad(g, "{\"ops\":{\"*\":{\"recompute\":1}}}", "ops[\"*\"].recompute: expected true or false");
    bad(g, "{\"params\":{\"*\":{\"shard\":\"zero4\"}}}",
        "params[\"*\"].shard: unknown value \"zero4\"");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"algorithm\":\"tree\"}}}}",
        "params[\"*\"].sync: unknown field \"algorithm\"");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"method\":\"sfb\",\"algo\":\"tree\"}}}}",
        "params[\"*\"].sync.algo: does not apply to method sfb");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"method\":\"allreduce\",\"shards\":2}}}}",
        "params[\"*\"].sync.shards: does not apply to method allreduce");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"method\":\"gossip\"}}}}",
        "params[\"*\"].sync.method: unknown value \"gossip\"");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"algo\":\"butterfly\"}}}}",
        "params[\"*\"].sync.algo: unknown value \"butterfly\"");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"compress\":\"zip\"}}}}",
        "params[\"*\"].sync.compress: unknown value \"zip\"");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"compress\":\"powersgd\"}}}}",
        "params[\"*\"].sync.compress: unknown value \"powersgd\"");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"compress\":\"powersgd:0\"}}}}",
        "params[\"*\"].sync.compress: \"powersgd:0\": the rank R");
    bad(g, "{\"params\":{\"*\":{\"sync\":{\"bucket_mb\":0}}}}",
        "params[\"*\"].sync.bucket_mb: must be > 0");
    bad(g, "{\"params\":{\"*\":{\"sync\":[]}}}", "params[\"*\"].sync: expected an object");
    graph_free(g);
}

static void test_errors_names(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    bad(g, "{\"ops\":{\"nope\":{}}}", "ops[\"nope\"]: no op named \"nope\"");
    bad(g, "{\"ops\":{\"wte\":{}}}", "ops[\"wte\"]: no op named \"wte\"; it is a param");
    bad(g, "{\"ops\":{\"blocks.9.*\":{}}}", "ops[\"blocks.9.*\"]: the pattern matches no op");
    bad(g, "{\"params\":{\"nope\":{}}}", "params[\"nope\"]: no param named \"nope\"");
    bad(g, "{\"params\":{\"head\":{}}}", "params[\"head\"]: no param named \"head\"; it is an op");
    bad(g, "{\"params\":{\"x0\":{}}}", "params[\"x0\"]: tensor \"x0\" is an activation, not a param");
    bad(g, "{\"params\":{\"tok\":{}}}", "params[\"tok\"]: tensor \"tok\" is an input, not a param");
    bad(g, "{\"params\":{\"blocks.*.wq\":{}}}", "params[\"blocks.*.wq\"]: the pattern matches no param");
    /* activations do not count as pattern matches either */
    bad(g, "{\"params\":{\"blocks.0.h*\":{}}}", "the pattern matches no param");
    graph_free(g);
}

static void test_errors_splits(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    const char *m = "{\"mesh\":{\"pp\":2,\"dp\":2,\"tp\":4},\"ops\":";
    char buf[1024];
#define WITH(ops) (snprintf(buf, sizeof buf, "%s%s}", m, ops), buf)
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"f\":\"tq\"}}}"),
        "ops[\"blocks.0.fc1\"].split.f: no mesh axis \"tq\" (the mesh has: pp, dp, tp)");
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"f\":[\"tp\",\"tp\"]}}}"),
        "ops[\"blocks.0.fc1\"].split.f: axis \"tp\" listed twice");
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"f\":3}}}"),
        "ops[\"blocks.0.fc1\"].split.f: expected an axis name");
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"ff\":\"tp\"}}}"),
        "ops[\"blocks.0.fc1\"].split: \"ff\" is not an index letter");
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"v\":\"tp\"}}}"),
        "ops[\"blocks.0.fc1\"].split.v: op blocks.0.fc1 has no letter v (spec \"bsh,hf->bsf\")");
    bad(g, WITH("{\"blocks.*.fc1\":{\"split\":{\"f\":\"pp\"}}}"),
        "ops[\"blocks.*.fc1\"].split.f: \"pp\" is the pipeline axis");
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"b\":\"tp\",\"f\":\"tp\"}}}"),
        "ops[\"blocks.0.fc1\"].split.f: axis \"tp\" already splits letter b of op blocks.0.fc1");
    /* the default batch split collides with an entry's use of dp */
    bad(g, WITH("{\"blocks.0.fc1\":{\"split\":{\"f\":\"dp\"}}}"),
        "ops[\"blocks.0.fc1\"].split.f: axis \"dp\" already splits letter b");
    bad(g, WITH("{\"*\":{\"split\":{\"h\":\"tp\"}}}"),
        "ops[\"*\"].split.h: letter h is a reduction letter of layernorm op blocks.0.ln");
    bad(g, WITH("{\"blocks.*.softmax\":{\"split\":{\"t\":\"tp\"}}}"),
        "ops[\"blocks.*.softmax\"].split.t: letter t is a reduction letter of softmax op "
        "blocks.0.softmax");
    graph_free(g);

    g = tiny_graph();
    /* sizes: f = 128, b = 8, s = 16 */
    bad(g, "{\"mesh\":{\"tp\":3},\"ops\":{\"blocks.*.fc1\":{\"split\":{\"f\":\"tp\"}}}}",
        "ops[\"blocks.*.fc1\"].split.f: axis \"tp\" (size 3) does not divide letter f (size 128) "
        "of op blocks.0.fc1");
    bad(g, "{\"mesh\":{\"dp\":3}}",
        "mesh (by default the batch letter b of every op is split over the data axes): axis "
        "\"dp\" (size 3) does not divide letter b (size 8) of op embed");
    bad(g, "{\"mesh\":{\"dp\":4},\"pipeline\":{\"microbatches\":4}}",
        "axis \"dp\" (size 4) does not divide letter b (size 8, 2 per micro-batch of 4) of op "
        "embed");
    bad(g, "{\"mesh\":{\"dp\":2,\"sp\":2,\"tp\":3},\"ops\":{\"head\":{\"split\":{\"s\":[\"sp\",\"tp\"]}}}}",
        "ops[\"head\"].split.s: axes \"sp+tp\" (size 6) does not divide letter s (size 16)");
    bad(g, "{\"pipeline\":{\"microbatches\":3}}",
        "pipeline.microbatches: 3 does not divide the batch (letter b, size 8) of op embed");
    graph_free(g);

    g = conv_graph();
    Strategy *s = ok(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"bn\":{\"split\":{\"h\":\"tp\"}},"
                        "\"fc\":{\"split\":{\"k\":\"tp\"}},\"xent\":{\"split\":{\"k\":\"tp\"}},"
                        "\"conv\":{\"split\":{\"o\":\"tp\"}}}}");
    assert_int_equal(split_of(g, s, "bn", 'h'), ax(s, "tp"));   /* sync batchnorm */
    assert_int_equal(split_of(g, s, "conv", 'n'), ax(s, "dp"));
    round_trip(g, NULL, s);
    strategy_free(s);
    bad(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"conv\":{\"split\":{\"h\":\"tp\"}}}}",
        "ops[\"conv\"].split.h: letter h is a spatial letter of conv2d op conv", "halo");
    bad(g, "{\"mesh\":{\"tp\":3},\"ops\":{\"conv\":{\"split\":{\"r\":\"tp\"}}}}",
        "ops[\"conv\"].split.r: letter r is a window letter of conv2d op conv");
    bad(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"pool\":{\"split\":{\"w\":\"tp\"}}}}",
        "ops[\"pool\"].split.w: letter w is a spatial letter of pool2d op pool");
    /* mean reduces linearly: its h is a contraction, split freely */
    s = ok(g, "{\"mesh\":{\"tp\":2},\"ops\":{\"mean\":{\"split\":{\"h\":\"tp\"}}}}");
    strategy_free(s);
    graph_free(g);
#undef WITH
}

static void test_errors_pipeline(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    bad(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1,2]}}",
        "pipeline.cuts: 2 cut(s) make 3 stages, but mesh.pp is 2 (needs 1 cut(s))");
    bad(g, "{\"mesh\":{\"dp\":2},\"pipeline\":{\"cuts\":[2]}}",
        "pipeline.cuts: 1 cut(s) make 2 stages, but the mesh has no pp axis");
    bad(g, "{\"mesh\":{\"pp\":3},\"pipeline\":{\"cuts\":[2,2],\"microbatches\":1}}",
        "pipeline.cuts[1]: 2 does not follow 2: cuts must be strictly increasing");
    bad(g, "{\"mesh\":{\"pp\":3},\"pipeline\":{\"cuts\":[3,1],\"microbatches\":1}}",
        "pipeline.cuts[1]: 1 does not follow 3");
    bad(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[0]}}",
        "pipeline.cuts[0]: 0 is not inside (0, 4)");
    bad(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[4]}}",
        "pipeline.cuts[0]: 4 is not inside (0, 4)");
    bad(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1.5]}}",
        "pipeline.cuts[0]: expected a block index");
    bad(g, "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":\"even\"}}",
        "pipeline.cuts: expected an array");
    bad(g, "{\"mesh\":{\"pp\":8}}", "mesh.pp: 8 stages but the model has 4 block(s)");
    /* the stages that use a param are a 64-bit set */
    bad(g, "{\"mesh\":{\"pp\":65}}", "mesh.pp: 65 pipeline stages; strata runs at most 64");
    Err err = {0};
    const char *names[] = {"pp"};
    int sizes[] = {65};
    Strategy *s = strategy_new(g, 1, names, sizes, &err);
    if (s) {
        assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
        strategy_free(s);
    }
    assert_non_null(strstr(err.msg, "65 pipeline stages; strata runs at most 64"));
    graph_free(g);
}

static void test_errors_sync(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"blocks.*\":{\"sync\":{\"method\":\"sfb\"}}}}",
        "params[\"blocks.*\"].sync.method: sfb does not fit param blocks.0.ln.g",
        "it has 1 dims");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"sfb\"}}}}",
        "params[\"wte\"].sync.method: sfb does not fit param wte",
        "embedding op embed consumes it");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"blocks.0.b1\":{\"sync\":{\"compress\":\"powersgd:2\"}}}}",
        "params[\"blocks.0.b1\"].sync.compress: powersgd needs a param of at least 2 dims; "
        "blocks.0.b1 has 1");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"shard\":\"zero1\"},"
           "\"wte\":{\"sync\":{\"method\":\"ps\"}}}}",
        "params[\"wte\"].sync.method: ps keeps the param on its servers and cannot be combined "
        "with shard zero1 (set by params[\"*\"])");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"shards\":8}}}}",
        "params[\"wte\"].sync.shards: 8 shards but the data group (dp) has 4 rank(s)");
    bad(g, "{\"mesh\":{\"tp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"shards\":2}}}}",
        "params[\"wte\"].sync.shards: 2 shards but the data group (no data axes) has 1 rank(s)");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"shards\":0}}}}",
        "params[\"wte\"].sync.shards: 0 is out of range");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"placement\":[0,4]}}}}",
        "params[\"wte\"].sync.placement[1]: 4 is not an index in the data group of param wte (dp, size 4)");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"placement\":[0,-1]}}}}",
        "params[\"wte\"].sync.placement[1]: expected an index in the data group");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"shards\":3,"
           "\"placement\":[0,1]}}}}",
        "params[\"wte\"].sync.placement: 2 server indices for 3 shards");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"placement\":\"far\"}}}}",
        "params[\"wte\"].sync.placement: expected \"spread\" or an array");
    bad(g, "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"staleness\":-1}}}}",
        "params[\"wte\"].sync.staleness: -1 is out of range");
    bad(g, "{\"mesh\":{\"tp\":2},\"params\":{\"blocks.*\":{\"shard\":\"zero2\"}}}",
        "params[\"blocks.*\"].shard: zero2 shards over the data axes, but the mesh has none");
    /* a later entry can switch a param back to all-reduce, dropping ps fields */
    Strategy *s = ok(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\","
                        "\"shards\":4}},\"wte\":{\"sync\":{\"method\":\"allreduce\"}}}}");
    assert_int_equal(s->params[tni(g, "wte")].method, SYNC_ALLREDUCE);
    assert_int_equal(s->params[tni(g, "wte")].ps_shards, 0);
    assert_int_equal(s->params[tni(g, "blocks.0.w1")].ps_shards, 4);
    strategy_free(s);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * The canonical form and its id */

static void test_canonical(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    /* key order and whitespace */
    same_id(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":{\"f\":\"tp\"},\"recompute\":true}}}",
            "{ \"ops\" : { \"*\" : { \"recompute\" : true, \"split\" : { \"f\" : \"tp\" } } },\n"
            "  \"mesh\" : { \"dp\" : 2, \"tp\" : 2 } }");
    /* defaults written out or left out */
    same_id(g, "{\"mesh\":{\"dp\":2}}",
            "{\"mesh\":{\"dp\":2},\"pipeline\":{\"cuts\":[],\"microbatches\":1,\"schedule\":\"1f1b\"},"
            "\"optimizer\":\"adam\",\"ops\":{\"*\":{\"split\":{\"b\":\"dp\"},\"recompute\":false}},"
            "\"params\":{\"*\":{\"shard\":\"none\",\"sync\":{\"method\":\"allreduce\",\"algo\":\"ring\","
            "\"compress\":\"none\",\"bucket_mb\":25}}}}");
    same_id(g, "{\"mesh\":{\"pp\":2,\"dp\":2}}",
            "{\"mesh\":{\"pp\":2,\"dp\":2},\"pipeline\":{\"cuts\":[2],\"microbatches\":2}}");
    /* equivalent patterns: one glob, exact names, a string or a one-axis array */
    same_id(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"blocks.*.fc1\":{\"split\":{\"f\":\"tp\"}}}}",
            "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"blocks.0.fc1\":{\"split\":{\"f\":\"tp\"}},"
            "\"blocks.1.fc1\":{\"split\":{\"f\":[\"tp\"]}},\"blocks.2.fc1\":{\"split\":{\"f\":\"tp\"}},"
            "\"blocks.3.*1\":{\"split\":{\"f\":\"tp\"}},\"blocks.3.bias1\":{\"split\":{\"f\":null}}}}");
    same_id(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":{\"b\":[\"tp\",\"dp\"]}}}}",
            "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":{\"b\":[\"dp\",\"tp\"]}}}}");
    /* fields the method does not read do not count */
    same_id(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"algo\":\"tree\"}},"
               "\"wte\":{\"sync\":{\"method\":\"ps\"}}}}",
            "{\"mesh\":{\"dp\":4},\"params\":{\"wte\":{\"sync\":{\"method\":\"ps\",\"shards\":4,"
            "\"placement\":[0,1,2,3],\"staleness\":0}},\"blocks.*\":{\"sync\":{\"algo\":\"tree\"}}}}");
    same_id(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"shards\":2,"
               "\"placement\":\"spread\"}}}}",
            "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"placement\":[0,2]}}}}");
    /* different strategies, different ids */
    diff_id(g, "{\"mesh\":{\"dp\":2}}", "{\"mesh\":{\"dp\":4}}");
    diff_id(g, "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"*\":{\"split\":{\"f\":\"tp\"}}}}",
            "{\"mesh\":{\"tp\":2,\"dp\":2},\"ops\":{\"*\":{\"split\":{\"f\":\"tp\"}}}}");   /* placement */
    diff_id(g, "{\"mesh\":{\"dp\":2}}", "{\"mesh\":{\"dp\":2},\"ops\":{\"head\":{\"recompute\":true}}}");
    diff_id(g, "{\"mesh\":{\"dp\":2}}", "{\"mesh\":{\"dp\":2},\"ops\":{\"head\":{\"split\":{\"b\":null}}}}");
    diff_id(g, "{\"mesh\":{\"dp\":2}}", "{\"mesh\":{\"dp\":2},\"params\":{\"wte\":{\"sync\":{\"bucket_mb\":24}}}}");
    diff_id(g, "{\"mesh\":{\"dp\":2}}", "{\"mesh\":{\"dp\":2},\"params\":{\"wte\":{\"shard\":\"zero1\"}}}");
    diff_id(g, "{\"mesh\":{\"dp\":2}}", "{\"mesh\":{\"dp\":2},\"optimizer\":\"sgd\"}");
    diff_id(g, "{\"mesh\":{\"pp\":2}}", "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1]}}");
    diff_id(g, "{\"mesh\":{\"pp\":2}}", "{\"mesh\":{\"pp\":2},\"pipeline\":{\"schedule\":\"gpipe\"}}");
    diff_id(g, "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"staleness\":1}}}}",
            "{\"mesh\":{\"dp\":4},\"params\":{\"*\":{\"sync\":{\"method\":\"ps\",\"staleness\":2}}}}");

    /* the canonical form's shape: every op and param, mesh order kept, sorted keys */
    Strategy *s = ok(g, "{\"mesh\":{\"tp\":2,\"dp\":2},\"ops\":{\"head\":{\"split\":{\"b\":null,\"v\":\"tp\"}}},"
                        "\"notes\":\"ignored by the id\"}");
    const cJSON *c = s->canonical;
    assert_string_equal(c->child->string, "mesh");
    assert_string_equal(cJSON_GetObjectItem(c, "mesh")->child->string, "tp");
    const cJSON *ops = cJSON_GetObjectItem(c, "ops");
    assert_int_equal(cJSON_GetArraySize(ops), g->nops);
    int nparams = 0;
    for (int t = 0; t < g->ntensors; t++) nparams += g->tensors[t].role == ROLE_PARAM;
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(c, "params")), nparams);
    const cJSON *prev = NULL, *it;
    cJSON_ArrayForEach(it, ops) {
        if (prev) assert_true(strcmp(prev->string, it->string) < 0);
        prev = it;
    }
    const cJSON *head = cJSON_GetObjectItem(cJSON_GetObjectItem(ops, "head"), "split");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(head, "b")));   /* unsplit batch, explicit */
    assert_string_equal(cJSON_GetObjectItem(head, "v")->valuestring, "tp");
    assert_null(cJSON_GetObjectItem(c, "notes"));
    round_trip(g, NULL, s);
    strategy_free(s);
    graph_free(g);
}

static void test_load(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    char path[] = "/tmp/strata-test-strategy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"mesh\": {\"dp\": 2}, \"ops\": {\"head\": {\"split\": {\"v\": \"tp\"}}}}", f);
    fclose(f);
    Err err = {{0}};
    assert_null(strategy_load(path, g, NULL, &err));
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "ops[\"head\"].split.v: no mesh axis \"tp\""));
    f = fopen(path, "w");
    fputs("{\"mesh\": {\"dp\": 2}}", f);
    fclose(f);
    Strategy *s = strategy_load(path, g, NULL, &err);
    assert_non_null(s);
    assert_int_equal(s->world, 2);
    strategy_free(s);
    remove(path);
    assert_null(strategy_load("/nonexistent/s.json", g, NULL, &err));
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Builders */

static Strategy *build(const char *kind, const Graph *g, const Cluster *c, const StrategyOpts *o)
{
    Err err = {{0}};
    cJSON *j = strategy_build(kind, g, c, o, &err);
    if (!j) fail_msg("strategy_build %s on %s: %s", kind, g->name, err.msg);
    Strategy *s = strategy_from_json(j, g, c, &err);
    if (!s) fail_msg("strategy_build %s on %s wrote a strategy that does not parse: %s", kind,
                     g->name, err.msg);
    cJSON_Delete(j);
    round_trip(g, c, s);
    return s;
}

static void build_bad(const char *kind, const Graph *g, const Cluster *c, const StrategyOpts *o,
                      const char *want)
{
    Err err = {{0}};
    cJSON *j = strategy_build(kind, g, c, o, &err);
    if (j) {
        char *t = cJSON_PrintUnformatted(j);
        fail_msg("strategy_build %s accepted, expected \"%s\": %s", kind, want, t);
    }
    if (!strstr(err.msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err.msg, want);
}

static void mesh_is(const Strategy *s, const char *want)
{
    char got[128] = "";
    for (int a = 0; a < s->naxes; a++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s=%d", a ? "," : "",
                 s->axis_name[a], s->axis_size[a]);
    if (strcmp(got, want) != 0) fail_msg("mesh %s, want %s", got, want);
}

/* Ops of g that have letter l. */
static int with_letter(const Graph *g, char l)
{
    int n = 0;
    for (int i = 0; i < g->nops; i++) n += (g->ops[i].letters_mask >> (l - 'a')) & 1u;
    return n;
}

static void check_data_parallel(const Graph *g, const Strategy *s)
{
    for (int i = 0; i < g->nops; i++) {
        const Op *o = &g->ops[i];
        for (int l = 0; l < IR_LETTERS; l++)
            assert_int_equal(s->ops[i].split[l], l == o->batch_letter ? s->data_axes : 0);
    }
}

static void test_build_simple(void **state)
{
    (void)state;
    const char *models[] = {"gpt", "mlp"};
    Cluster *dgx = shipped("dgx-a100-80gb", 0);
    for (int m = 0; m < 2; m++) {
        Graph *g = zoo(models[m]);
        StrategyOpts o = {0};
        Strategy *s = build("dp", g, dgx, &o);
        mesh_is(s, "dp=8");
        check_data_parallel(g, s);
        for (int t = 0; t < g->ntensors; t++) {
            assert_int_equal(s->params[t].method, SYNC_ALLREDUCE);
            assert_int_equal(s->params[t].shard, SHARD_NONE);
        }
        strategy_free(s);

        o.world = 4;
        o.compress = "fp16";
        o.recompute = true;
        s = build("dp", g, dgx, &o);
        mesh_is(s, "dp=4");
        for (int i = 0; i < g->nops; i++) assert_true(s->ops[i].recompute);
        for (int t = 0; t < g->ntensors; t++)
            if (g->tensors[t].role == ROLE_PARAM)
                assert_int_equal(s->params[t].compress, COMPRESS_FP16);
        strategy_free(s);

        const char *zk[] = {"zero", "zero1", "zero2", "zero3"};
        const Shard zs[] = {SHARD_ZERO3, SHARD_ZERO1, SHARD_ZERO2, SHARD_ZERO3};
        for (int z = 0; z < 4; z++) {
            StrategyOpts oz = {0};
            s = build(zk[z], g, dgx, &oz);
            mesh_is(s, "dp=8");
            for (int t = 0; t < g->ntensors; t++)
                if (g->tensors[t].role == ROLE_PARAM) assert_int_equal(s->params[t].shard, zs[z]);
            strategy_free(s);
        }
        StrategyOpts oz = {.zero = 2};
        s = build("zero", g, dgx, &oz);
        for (int t = 0; t < g->ntensors; t++)
            if (g->tensors[t].role == ROLE_PARAM) assert_int_equal(s->params[t].shard, SHARD_ZERO2);
        strategy_free(s);

        StrategyOpts op = {.ps_shards = 2, .staleness = 1};
        s = build("ps", g, dgx, &op);
        mesh_is(s, "dp=8");
        check_data_parallel(g, s);
        for (int t = 0; t < g->ntensors; t++)
            if (g->tensors[t].role == ROLE_PARAM) {
                assert_int_equal(s->params[t].method, SYNC_PS);
                assert_int_equal(s->params[t].ps_shards, 2);
                assert_int_equal(s->params[t].staleness, 1);
            }
        strategy_free(s);
        StrategyOpts od = {0};
        s = build("ps", g, dgx, &od);
        for (int t = 0; t < g->ntensors; t++)
            if (g->tensors[t].role == ROLE_PARAM) assert_int_equal(s->params[t].ps_shards, 4);
        strategy_free(s);

        s = build("parallax", g, dgx, &od);
        int nps = 0;
        for (int t = 0; t < g->ntensors; t++) {
            if (g->tensors[t].role != ROLE_PARAM) continue;
            bool emb = false;
            for (int i = 0; i < g->nops; i++)
                for (int k = 0; k < g->ops[i].nin; k++)
                    emb |= g->ops[i].in[k] == t && g->ops[i].kind == OP_EMBEDDING;
            assert_int_equal(s->params[t].method, emb ? SYNC_PS : SYNC_ALLREDUCE);
            nps += emb;
        }
        if (m == 0) assert_true(nps >= 1);   /* gpt has its token table */
        strategy_free(s);

        s = build("sfb", g, dgx, &od);
        int nsfb = 0;
        char why[256];
        for (int t = 0; t < g->ntensors; t++) {
            if (g->tensors[t].role != ROLE_PARAM) continue;
            bool fit = !strategy_sfb_unfit(g, t, why, sizeof why);
            assert_int_equal(s->params[t].method, fit ? SYNC_SFB : SYNC_ALLREDUCE);
            nsfb += fit;
        }
        assert_true(nsfb >= 2);
        strategy_free(s);

        /* without a cluster: world from the options, or 1 */
        s = build("dp", g, NULL, &od);
        mesh_is(s, "dp=1");
        strategy_free(s);
        graph_free(g);
    }
    cluster_free(dgx);
}

static void test_build_parallel(void **state)
{
    (void)state;
    Cluster *dgx = shipped("dgx-a100-80gb", 0);
    Graph *g = zoo("gpt");
    assert_int_equal(g->nblocks, 4);

    /* megatron defaults on one DGX: T fits the node and divides the heads (4) */
    StrategyOpts o = {0};
    Strategy *s = build("megatron", g, dgx, &o);
    mesh_is(s, "pp=1,dp=2,tp=4");
    AxisMask tp = ax(s, "tp");
    int nsplit = 0;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        for (const char *l = "nfv"; *l; l++) {
            int k = *l - 'a';
            if (!(op->letters_mask >> k & 1u)) continue;
            if (op->reduce_mask >> k & 1u && op->kind != OP_CROSS_ENTROPY) {
                assert_int_equal(s->ops[i].split[k], 0);
                continue;
            }
            assert_int_equal(s->ops[i].split[k], tp);
            nsplit++;
        }
        if (op->batch_letter >= 0) assert_int_equal(s->ops[i].split[op->batch_letter], ax(s, "dp"));
    }
    assert_true(nsplit >= 4 * 4);   /* q, k, v / attention / fc1 / fc2 per block at least */
    assert_true(with_letter(g, 'n') > 0 && with_letter(g, 'f') > 0 && with_letter(g, 'v') > 0);
    strategy_free(s);

    /* megatron with a pipeline */
    StrategyOpts o2 = {.tp = 2, .pp = 2};
    s = build("megatron", g, dgx, &o2);
    mesh_is(s, "pp=2,dp=2,tp=2");
    assert_int_equal(s->nstages, 2);
    assert_int_equal(s->cuts[0], 2);
    assert_int_equal(s->microbatches, 2);
    assert_int_equal(s->schedule, SCHED_1F1B);
    assert_int_equal(s->op_stage[0], 0);
    assert_int_equal(s->op_stage[g->nops - 1], 1);
    strategy_free(s);

    /* sequence parallelism: s over tp in the layernorms and residual adds */
    StrategyOpts o3 = {.tp = 4, .sequence_parallel = true, .recompute = true};
    s = build("megatron", g, dgx, &o3);
    mesh_is(s, "pp=1,dp=2,tp=4");
    int nsp = 0;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        AxisMask sm = s->ops[i].split['s' - 'a'];
        if (op->kind == OP_LAYERNORM) {
            assert_int_equal(sm, ax(s, "tp"));
            nsp++;
        }
        if (op->kind == OP_MATMUL) assert_int_equal(sm, 0);
        assert_true(s->ops[i].recompute);
    }
    assert_true(nsp >= 2 * 4);
    strategy_free(s);

    /* gpipe: P = the most stages the blocks allow within the world */
    StrategyOpts o4 = {0};
    s = build("gpipe", g, dgx, &o4);
    mesh_is(s, "pp=4,dp=2");
    assert_int_equal(s->schedule, SCHED_GPIPE);
    assert_int_equal(s->microbatches, 4);
    assert_int_equal(s->cuts[0], 1);
    assert_int_equal(s->cuts[2], 3);
    check_data_parallel(g, s);
    strategy_free(s);
    StrategyOpts o5 = {.pp = 2, .microbatches = 4, .world = 4};
    s = build("gpipe", g, dgx, &o5);
    mesh_is(s, "pp=2,dp=2");
    assert_int_equal(s->microbatches, 4);
    strategy_free(s);

    /* several nodes: megatron keeps T inside a node */
    Cluster *four = shipped("dgx-a100-80gb", 4);
    StrategyOpts o6 = {.pp = 4};
    s = build("megatron", g, four, &o6);
    mesh_is(s, "pp=4,dp=2,tp=4");
    strategy_free(s);
    cluster_free(four);

    /* mlp: megatron splits its f letter if it has one; a tp axis that would
     * split nothing (every rank doing the same work) is refused */
    graph_free(g);
    g = zoo("mlp");
    StrategyOpts o7 = {.tp = 2};
    if (with_letter(g, 'f')) {
        s = build("megatron", g, dgx, &o7);
        mesh_is(s, "pp=1,dp=4,tp=2");
        int nf = 0;
        for (int i = 0; i < g->nops; i++)
            if (g->ops[i].letters_mask >> ('f' - 'a') & 1u) {
                assert_int_equal(s->ops[i].split['f' - 'a'], ax(s, "tp"));
                nf++;
            }
        assert_true(nf > 0);
        strategy_free(s);
    } else {
        build_bad("megatron", g, dgx, &o7, "tp 2 would split nothing");
    }
    if (g->nblocks >= 2) {
        StrategyOpts o8 = {.pp = 2};
        s = build("gpipe", g, dgx, &o8);
        mesh_is(s, "pp=2,dp=4");
        strategy_free(s);
    }
    graph_free(g);
    cluster_free(dgx);
}

/* Builders on the hand-written graphs: no zoo needed, every rule in reach. */
static void test_build_hand_graphs(void **state)
{
    (void)state;
    Graph *g = tiny_graph();
    StrategyOpts o = {.tp = 2, .pp = 2, .world = 8, .microbatches = 4};
    Strategy *s = build("megatron", g, NULL, &o);
    mesh_is(s, "pp=2,dp=2,tp=2");
    AxisMask tp = ax(s, "tp");
    assert_int_equal(split_of(g, s, "blocks.0.fc1", 'f'), tp);
    assert_int_equal(split_of(g, s, "blocks.3.gelu", 'f'), tp);
    assert_int_equal(split_of(g, s, "embed", 'v'), tp);
    assert_int_equal(split_of(g, s, "head", 'v'), tp);
    assert_int_equal(split_of(g, s, "xent", 'v'), tp);
    assert_int_equal(split_of(g, s, "blocks.0.softmax", 't'), 0);
    assert_int_equal(s->microbatches, 4);
    strategy_free(s);
    StrategyOpts o2 = {.world = 4, .sequence_parallel = true};
    s = build("megatron", g, NULL, &o2);
    mesh_is(s, "pp=1,dp=1,tp=4");   /* T as large as the world allows */
    assert_int_equal(split_of(g, s, "blocks.1.ln", 's'), ax(s, "tp"));
    assert_int_equal(split_of(g, s, "blocks.1.res1", 's'), ax(s, "tp"));
    assert_int_equal(split_of(g, s, "blocks.1.res2", 's'), ax(s, "tp"));
    assert_int_equal(split_of(g, s, "blocks.1.bias1", 's'), 0);   /* inside the MLP */
    assert_int_equal(split_of(g, s, "blocks.1.scores", 's'), 0);
    strategy_free(s);
    graph_free(g);

    /* an image batch is also called n: megatron must leave it to dp, and
     * with nothing else to split, tp is refused rather than idle */
    g = conv_graph();
    StrategyOpts o3 = {.tp = 2, .world = 4};
    build_bad("megatron", g, NULL, &o3, "tp 2 would split nothing");
    StrategyOpts o3b = {.tp = 1, .world = 4};
    s = build("megatron", g, NULL, &o3b);
    check_data_parallel(g, s);
    strategy_free(s);
    StrategyOpts o4 = {.world = 2};
    s = build("sfb", g, NULL, &o4);
    assert_int_equal(s->params[tni(g, "fw")].method, SYNC_SFB);
    assert_int_equal(s->params[tni(g, "cw")].method, SYNC_ALLREDUCE);
    assert_int_equal(s->params[tni(g, "bn.g")].method, SYNC_ALLREDUCE);
    strategy_free(s);
    s = build("parallax", g, NULL, &o4);   /* no embedding: all-reduce throughout */
    for (int t = 0; t < g->ntensors; t++) assert_int_equal(s->params[t].method, SYNC_ALLREDUCE);
    strategy_free(s);
    graph_free(g);
}

/* MoE: experts (e) over tp; the router's reduction over e stays whole. */
static void test_build_moe(void **state)
{
    (void)state;
    Graph *g = zoo("moe");
    StrategyOpts o = {.tp = 2, .world = 4};
    Strategy *s = build("megatron", g, NULL, &o);
    mesh_is(s, "pp=1,dp=2,tp=2");
    AxisMask tp = ax(s, "tp");
    const int e = 'e' - 'a', f = 'f' - 'a';
    int nexp = 0, route = -1;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        bool has_e = op->letters_mask >> e & 1u, has_f = op->letters_mask >> f & 1u;
        if (op->kind == OP_ROUTE) route = i;
        if (has_e && (op->reduce_mask >> e & 1u)) assert_int_equal(s->ops[i].split[e], 0);
        if (has_e && has_f && op->kind == OP_MATMUL) {
            assert_int_equal(s->ops[i].split[e], tp);   /* expert parallel, not ffn-split */
            assert_int_equal(s->ops[i].split[f], 0);
            nexp++;
        }
    }
    assert_true(nexp >= 2);
    assert_true(route >= 0);
    strategy_free(s);

    char text[512], want[256];
    snprintf(text, sizeof text, "{\"mesh\":{\"dp\":2,\"ep\":2},\"ops\":{\"%s\":{\"split\":{\"e\":\"ep\"}}}}",
             g->ops[route].name);
    snprintf(want, sizeof want, "ops[\"%s\"].split.e: letter e is a reduction letter of route op %s",
             g->ops[route].name, g->ops[route].name);
    bad(g, text, want);
    graph_free(g);
}

static void test_build_errors(void **state)
{
    (void)state;
    Cluster *dgx = shipped("dgx-a100-80gb", 0);
    Graph *g = zoo("gpt");
    StrategyOpts o = {0};
    build_bad("hybrid", g, dgx, &o, "unknown strategy kind \"hybrid\"");
    StrategyOpts a = {.tp = 2};
    build_bad("dp", g, dgx, &a, "dp: tp 2: only megatron splits tensors");
    StrategyOpts b = {.pp = 2};
    build_bad("ps", g, dgx, &b, "ps: pp 2: only megatron and gpipe are pipelined");
    StrategyOpts c = {.world = 16};
    build_bad("dp", g, dgx, &c, "dp: world 16 exceeds the 8 devices of cluster dgx-a100-80gb");
    StrategyOpts d = {.tp = 3};
    build_bad("megatron", g, dgx, &d, "megatron: tp 3 x pp 1 does not divide world 8");
    StrategyOpts e = {.zero = 4};
    build_bad("zero", g, dgx, &e, "zero: zero 4");
    StrategyOpts e2 = {.zero = 2};
    build_bad("zero3", g, dgx, &e2, "match the kind");
    build_bad("dp", g, dgx, &e2, "dp: zero 2 applies to the zero strategy only");
    StrategyOpts f = {.staleness = 2};
    build_bad("megatron", g, dgx, &f, "staleness apply to ps and parallax only");
    StrategyOpts h = {.sequence_parallel = true};
    build_bad("dp", g, dgx, &h, "sequence parallelism is a megatron option");
    StrategyOpts i = {.dp = 2};
    build_bad("dp", g, dgx, &i, "dp: dp 2, but world 8");
    StrategyOpts k = {.compress = "int8"};
    build_bad("ps", g, dgx, &k, "compress applies to all-reduce");
    StrategyOpts l = {.compress = "lz4"};
    build_bad("dp", g, dgx, &l, "unknown value \"lz4\"");
    /* the parser's verdict comes back, with the sizes that were chosen */
    StrategyOpts m = {.pp = 8};
    build_bad("gpipe", g, dgx, &m, "gpipe (D 1, T 1, P 8, M 8): mesh.pp: 8 stages but the model has 4");
    StrategyOpts n = {.tp = 8};
    build_bad("megatron", g, dgx, &n, "does not divide letter n (size 4)");
    graph_free(g);
    cluster_free(dgx);
}

/* A concat's concatenated letters (each input's own, the output's) split
 * nowhere: not by any builder, not by the default, and strategy_finish
 * refuses them as the parser does; its other letters split like an
 * elementwise op's. */
static void test_build_concat(void **state)
{
    (void)state;
    Graph *g = zoo("fire");
    int cat = graph_find_op(g, "blocks.1.concat");
    assert_true(cat >= 0);
    const Op *op = &g->ops[cat];
    for (const char *l = "abc"; *l; l++) assert_false(strategy_letter_splittable(op, *l - 'a'));
    for (const char *l = "nhw"; *l; l++) assert_true(strategy_letter_splittable(op, *l - 'a'));
    assert_int_equal(strategy_tp_letter(op), 0);

    static const char *const kinds[] = {"dp", "zero1", "zero3", "megatron", "gpipe", "ps",
                                        "parallax", "sfb"};
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        StrategyOpts o = {.world = 4, .pp = strcmp(kinds[k], "gpipe") == 0 ? 2 : 0};
        Strategy *s = build(kinds[k], g, NULL, &o);
        for (int i = 0; i < g->nops; i++)
            for (int l = 0; l < IR_LETTERS; l++)
                if (g->ops[i].concat_mask >> l & 1u)
                    assert_int_equal(s->ops[i].split[l], 0);
        if (strcmp(kinds[k], "gpipe") != 0)
            assert_int_equal(s->ops[cat].split['n' - 'a'], ax(s, "dp"));
        strategy_free(s);
    }

    Err err = {0};
    const char *names[] = {"dp", "tp"};
    int sizes[] = {2, 2};
    Strategy *s = strategy_new(g, 2, names, sizes, &err);
    assert_non_null(s);
    s->ops[cat].split['h' - 'a'] = 1u << 1;
    assert_int_equal(strategy_finish(s, g, NULL, &err), 0);
    s->ops[cat].split['c' - 'a'] = 1u << 1;
    s->ops[cat].split['h' - 'a'] = 0;
    assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "letter c is a concatenated letter of concat op blocks.1.concat"));
    s->ops[cat].split['c' - 'a'] = 0;
    s->ops[cat].split['a' - 'a'] = 1u << 1;
    assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "letter a is a concatenated letter"));
    strategy_free(s);
    graph_free(g);
}

/* A strategy made in code (strategy_new, policies set, strategy_finish) is
 * the same strategy as its JSON parsed: equal canonical form and id. And
 * strategy_finish refuses what the parser refuses, naming the op. */
static void test_made_in_code(void **state)
{
    (void)state;
    Err err = {0};
    const char *k[] = {"preset", "layers", "batch"}, *v[] = {"gpt2-small", "4", "8"};
    Graph *g = zoo_build("gpt", 3, k, v, &err);
    assert_non_null(g);
    StrategyOpts o = {.world = 16, .tp = 4, .pp = 2, .microbatches = 4, .recompute = true,
                      .zero = 0};
    cJSON *j = strategy_build("megatron", g, NULL, &o, &err);
    assert_non_null(j);
    Strategy *ref = strategy_from_json(j, g, NULL, &err);
    assert_non_null(ref);
    cJSON_Delete(j);

    const char *names[] = {"pp", "dp", "tp"};
    int sizes[] = {2, 2, 4};
    Strategy *s = strategy_new(g, 3, names, sizes, &err);
    assert_non_null(s);
    assert_null(s->canonical);
    s->microbatches = 4;
    for (int i = 0; i < g->nops; i++) s->ops[i] = ref->ops[i];
    s->params[graph_find_tensor(g, "blocks.0.mlp.w1")].shard = SHARD_ZERO1;
    assert_int_equal(strategy_finish(s, g, NULL, &err), 0);
    assert_null(s->canonical);
    assert_memory_equal(s->op_stage, ref->op_stage, sizeof *s->op_stage * g->nops);
    /* the one difference: the zero1 param */
    ref->params[graph_find_tensor(g, "blocks.0.mlp.w1")].shard = SHARD_ZERO1;
    cJSON_Delete(ref->canonical);
    ref->canonical = NULL;
    strategy_canonicalize(ref, g);
    strategy_canonicalize(s, g);
    assert_true(cJSON_Compare(s->canonical, ref->canonical, true));
    assert_string_equal(s->id, ref->id);
    Strategy *d = strategy_copy(s);
    assert_string_equal(d->id, s->id);
    assert_true(cJSON_Compare(d->canonical, s->canonical, true));

    /* what the parser refuses, finish refuses */
    s->ops[graph_find_op(g, "blocks.1.ln1")].split['h' - 'a'] = 1u << 2;
    assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "blocks.1.ln1"));
    assert_non_null(strstr(err.msg, "reduction letter"));
    s->ops[graph_find_op(g, "blocks.1.ln1")].split['h' - 'a'] = 0;
    s->cuts[0] = 4;
    assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "pipeline.cuts[0]"));
    s->cuts[0] = 2;
    s->microbatches = 3;
    assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "microbatches"));
    s->microbatches = 4;
    s->params[graph_find_tensor(g, "blocks.0.mlp.w1")].method = SYNC_PS;
    assert_int_equal(strategy_finish(s, g, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "blocks.0.mlp.w1"));
    Cluster *c = cluster_load("clusters/dgx-a100-80gb.json", 1, &err);
    assert_non_null(c);
    s->params[graph_find_tensor(g, "blocks.0.mlp.w1")].method = SYNC_ALLREDUCE;
    assert_int_equal(strategy_finish(s, g, c, &err), -1);
    assert_non_null(strstr(err.msg, "only 8 devices"));
    assert_int_equal(strategy_finish(s, g, NULL, &err), 0);
    cluster_free(c);
    strategy_free(d);
    strategy_free(s);
    strategy_free(ref);
    graph_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_mesh_coords),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_errors_structure),
        cmocka_unit_test(test_errors_names),
        cmocka_unit_test(test_errors_splits),
        cmocka_unit_test(test_errors_pipeline),
        cmocka_unit_test(test_errors_sync),
        cmocka_unit_test(test_canonical),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_build_hand_graphs),
        cmocka_unit_test(test_build_simple),
        cmocka_unit_test(test_build_parallel),
        cmocka_unit_test(test_build_moe),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_made_in_code),
        cmocka_unit_test(test_build_concat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
