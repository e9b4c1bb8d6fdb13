/*
 * test_graph.c — the model graph: JSON round trip, every validation error
 * (path and reason), derived fields, op costs checked by hand, statistics.
 *
 * JSON in this file is written with single quotes for readability; q()
 * turns them into double quotes before parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "ir/graph.h"
#include "ir/util.h"
#include "ir/zoo.h"

/* ----------------------------------------------------------------------------
 * Helpers */

static cJSON *q(const char *text)
{
    char *s = xstrdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'') *p = '"';
    cJSON *j = cJSON_Parse(s);
    free(s);
    if (!j) fail_msg("test JSON does not parse: %s", text);
    return j;
}

static Graph *parse(const char *text, Err *err)
{
    cJSON *j = q(text);
    Graph *g = graph_from_json(j, err);
    cJSON_Delete(j);
    return g;
}

static Graph *parse_ok(const char *text)
{
    Err err = {{0}};
    Graph *g = parse(text, &err);
    if (!g) fail_msg("unexpected error: %s", err.msg);
    return g;
}

static const char *root(void)
{
    const char *r = getenv("STRATA_ROOT");
    return r ? r : ".";
}

static Graph *load_model(const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/models/%s", root(), file);
    Err err = {{0}};
    Graph *g = graph_load(path, &err);
    if (!g) fail_msg("%s", err.msg);
    return g;
}

static int op_index(const Graph *g, const char *name)
{
    int i = graph_find_op(g, name);
    if (i < 0) fail_msg("no op %s", name);
    return i;
}

static int tensor_index(const Graph *g, const char *name)
{
    int i = graph_find_tensor(g, name);
    if (i < 0) fail_msg("no tensor %s", name);
    return i;
}

static void assert_close(double got, double want, double rel)
{
    double d = got - want, m = want < 0 ? -want : want;
    if ((d < 0 ? -d : d) > rel * (m > 1 ? m : 1))
        fail_msg("got %.17g, want %.17g (relative tolerance %g)", got, want, rel);
}

/* The same JSON printed without spaces, for exact comparison. */
static char *flat(const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    char *r = xstrdup(s);
    cJSON_free(s);
    return r;
}

/* ----------------------------------------------------------------------------
 * Round trip */

static void check_file_round_trip(const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/models/%s", root(), file);
    Err err = {{0}};
    cJSON *j = json_load(path, &err);
    assert_non_null(j);
    Graph *g = graph_from_json(j, &err);
    if (!g) fail_msg("%s", err.msg);
    cJSON *back = graph_to_json(g);
    char *a = flat(j), *b = flat(back);
    assert_string_equal(a, b);     /* the files are written in canonical form */
    free(a);
    free(b);
    cJSON_Delete(back);
    cJSON_Delete(j);
    graph_free(g);
}

static void test_round_trip_files(void **state)
{
    (void)state;
    check_file_round_trip("tiny-mlp.json");
    check_file_round_trip("tiny-cnn.json");
}

/* Every attribute the format has, in canonical form. */
static const char *attrs_model =
    "{'name':'attrs','tensors':["
    "{'name':'tok','shape':[2,4],'dtype':'i32','role':'input'},"
    "{'name':'labels','shape':[2,4],'dtype':'i32','role':'label'},"
    "{'name':'wte','shape':[16,8],'dtype':'bf16','role':'param'},"
    "{'name':'g','shape':[8],'dtype':'bf16','role':'param'},"
    "{'name':'wr','shape':[8,2],'dtype':'bf16','role':'param'},"
    "{'name':'emb','shape':[2,4,8],'dtype':'bf16','role':'activation'},"
    "{'name':'ln','shape':[2,4,8],'dtype':'bf16','role':'activation'},"
    "{'name':'sc','shape':[2,4,4],'dtype':'bf16','role':'activation'},"
    "{'name':'p','shape':[2,4,4],'dtype':'bf16','role':'activation'},"
    "{'name':'r','shape':[2,4,2],'dtype':'bf16','role':'activation'},"
    "{'name':'mask','shape':[2,4,2,3],'dtype':'bf16','role':'activation'},"
    "{'name':'logits','shape':[2,4,16],'dtype':'bf16','role':'activation'},"
    "{'name':'loss','shape':[],'dtype':'f32','role':'activation'}],"
    "'ops':["
    "{'name':'embed','kind':'embedding','spec':'bs,vh->bsh','inputs':['tok','wte'],'output':'emb','gather':'v'},"
    "{'name':'ln','kind':'layernorm','spec':'bsh,h->bsh','inputs':['emb','g'],'output':'ln','block':0,'reduce':'h'},"
    "{'name':'scores','kind':'matmul','spec':'bsh,bth->bst','inputs':['ln','ln'],'output':'sc','block':0},"
    "{'name':'softmax','kind':'softmax','spec':'bst->bst','inputs':['sc'],'output':'p','block':0,'reduce':'t','causal':true,'scale':0.125},"
    "{'name':'router','kind':'matmul','spec':'bsh,he->bse','inputs':['ln','wr'],'output':'r','block':1},"
    "{'name':'route','kind':'route','spec':'bse->bsec','inputs':['r'],'output':'mask','block':1,'reduce':'e'},"
    "{'name':'logits','kind':'matmul','spec':'bsh,vh->bsv','inputs':['ln','wte'],'output':'logits'},"
    "{'name':'loss','kind':'cross_entropy','spec':'bsv,bs->','inputs':['logits','labels'],'output':'loss','reduce':'v'}]}";

/* The model in `text` (canonical form) loads and writes back the same JSON;
 * loaded again from that, it writes the same and has the same id. Returns
 * the first graph. */
static Graph *round_trip(const char *text)
{
    cJSON *j = q(text);
    Err err = {{0}};
    Graph *g = graph_from_json(j, &err);
    if (!g) fail_msg("%s", err.msg);
    cJSON *back = graph_to_json(g);
    char *a = flat(j), *b = flat(back);
    assert_string_equal(a, b);
    Graph *g2 = graph_from_json(back, &err);
    assert_non_null(g2);
    cJSON *back2 = graph_to_json(g2);
    char *c = flat(back2);
    assert_string_equal(b, c);
    char id1[17], id2[17];
    graph_id(g, id1);
    graph_id(g2, id2);
    assert_string_equal(id1, id2);
    assert_int_equal(strlen(id1), 16);
    free(a);
    free(b);
    free(c);
    cJSON_Delete(j);
    cJSON_Delete(back);
    cJSON_Delete(back2);
    graph_free(g2);
    return g;
}

static void test_round_trip_attrs(void **state)
{
    (void)state;
    Graph *g = round_trip(attrs_model);

    int sm = op_index(g, "softmax");
    assert_true(g->ops[sm].causal);
    assert_close(g->ops[sm].scale, 0.125, 0);
    assert_close(g->ops[op_index(g, "ln")].scale, 1, 0);
    assert_int_equal(g->ops[sm].reduce_mask, 1u << ('t' - 'a'));
    assert_int_equal(g->ops[op_index(g, "embed")].gather_mask, 1u << ('v' - 'a'));
    assert_int_equal(g->nblocks, 2);
    assert_int_equal(g->ops[op_index(g, "embed")].block, -1);

    /* routing is not differentiable; everything downstream of a param is */
    assert_false(g->tensors[tensor_index(g, "mask")].needs_grad);
    assert_true(g->tensors[tensor_index(g, "r")].needs_grad);
    assert_true(g->tensors[tensor_index(g, "emb")].needs_grad);
    assert_false(g->tensors[tensor_index(g, "tok")].needs_grad);
    assert_int_equal(g->tensors[tensor_index(g, "mask")].batch_dim, 0);
    assert_int_equal(g->tensors[tensor_index(g, "loss")].batch_dim, -1);
    assert_int_equal(g->ops[op_index(g, "route")].size['c' - 'a'], 3);
    assert_int_equal(g->ops[op_index(g, "scores")].batch_letter, 'b' - 'a');
    graph_free(g);
}

/* concat with its letter in another place in every operand, its output
 * compared with a float target in another letter order by mse */
static const char *concat_mse_model =
    "{'name':'cat','tensors':["
    "{'name':'img','shape':[2,3,4,4],'dtype':'f32','role':'input'},"
    "{'name':'p','shape':[2,4,4,5],'dtype':'f32','role':'param'},"
    "{'name':'t','shape':[2,8,4,4],'dtype':'f32','role':'label'},"
    "{'name':'cat','shape':[2,4,8,4],'dtype':'f32','role':'activation'},"
    "{'name':'loss','shape':[],'dtype':'f32','role':'activation'}],"
    "'ops':["
    "{'name':'cat','kind':'concat','spec':'nahw,nhwb->nhcw','inputs':['img','p'],'output':'cat','block':0},"
    "{'name':'loss','kind':'mse','spec':'nhcw,ncwh->','inputs':['cat','t'],'output':'loss'}]}";

static void test_concat_mse(void **state)
{
    (void)state;
    Graph *g = round_trip(concat_mse_model);

    const Op *cat = &g->ops[op_index(g, "cat")], *loss = &g->ops[op_index(g, "loss")];
    assert_int_equal(cat->kind, OP_CONCAT);
    assert_int_equal(cat->concat_mask, 1u << ('a' - 'a') | 1u << ('b' - 'a') | 1u << ('c' - 'a'));
    assert_int_equal(op_concat_letter(cat, 0), 'a' - 'a');
    assert_int_equal(op_concat_letter(cat, 1), 'b' - 'a');
    assert_int_equal(op_concat_letter(cat, 2), 'c' - 'a');
    assert_int_equal(op_concat_letter(loss, 0), -1);
    assert_int_equal(cat->size['c' - 'a'], 8);
    assert_int_equal(cat->batch_letter, 'n' - 'a');
    assert_int_equal(cat->reduce_mask, 0);
    assert_int_equal(g->tensors[tensor_index(g, "cat")].batch_dim, 0);
    assert_true(g->tensors[tensor_index(g, "cat")].needs_grad);    /* from the param */
    assert_int_equal(loss->kind, OP_MSE);
    assert_int_equal(loss->concat_mask, 0);
    assert_int_equal(loss->batch_letter, 'n' - 'a');
    assert_false(g->tensors[tensor_index(g, "t")].needs_grad);
    assert_int_equal(g->tensors[tensor_index(g, "loss")].batch_dim, -1);
    assert_true(op_kind_is_loss(OP_MSE) && op_kind_is_loss(OP_CROSS_ENTROPY));
    assert_false(op_kind_is_loss(OP_CONCAT) || op_kind_is_loss(OP_MEAN));

    /* costs: concat moves bytes and computes nothing; its backward reads
     * and writes the param's slice only (the image needs no gradient) */
    OpCost c;
    graph_op_cost(g, op_index(g, "cat"), cat->size, &c);
    assert_close(c.flops[COST_FWD] + c.flops[COST_BWD_DATA] + c.flops[COST_BWD_WEIGHT], 0, 0);
    assert_close(c.bytes[COST_FWD], (96 + 160 + 256) * 4.0, 0);
    assert_close(c.bytes[COST_BWD_DATA], 0, 0);
    assert_close(c.bytes[COST_BWD_WEIGHT], 2 * 160 * 4.0, 0);
    /* mse: 3 flops an element forward, twice that backward */
    graph_op_cost(g, op_index(g, "loss"), loss->size, &c);
    assert_close(c.flops[COST_FWD], 3 * 256, 0);
    assert_close(c.flops[COST_BWD_DATA], 6 * 256, 0);
    assert_close(c.bytes[COST_FWD], (256 + 256 + 1) * 4.0, 0);

    /* a concat of up to four inputs, one of them twice */
    graph_free(g);
    g = parse_ok("{'name':'c4','tensors':["
                 "{'name':'x','shape':[2,3],'role':'input'},{'name':'y','shape':[2,1],'role':'input'},"
                 "{'name':'o','shape':[2,10],'role':'activation'}],'ops':["
                 "{'name':'c','kind':'concat','spec':'na,nb,na,nd->nc','inputs':['x','y','x','x'],'output':'o'}]}");
    assert_int_equal(g->ops[0].size['c' - 'a'], 10);
    assert_int_equal(op_concat_letter(&g->ops[0], 2), 'a' - 'a');
    assert_int_equal(op_concat_letter(&g->ops[0], 3), 'd' - 'a');
    graph_free(g);
}

static void test_save_load(void **state)
{
    (void)state;
    Graph *g = load_model("tiny-cnn.json");
    char path[] = "/tmp/strata_test_graph_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    Err err = {{0}};
    assert_int_equal(graph_save(g, path, &err), 0);
    Graph *h = graph_load(path, &err);
    if (!h) fail_msg("%s", err.msg);
    char a[17], b[17];
    graph_id(g, a);
    graph_id(h, b);
    assert_string_equal(a, b);
    remove(path);
    graph_free(g);
    graph_free(h);

    /* a load error names the file */
    assert_null(graph_load("/nonexistent/model.json", &err));
    assert_non_null(strstr(err.msg, "/nonexistent/model.json"));
    graph_free(NULL);
}

/* ----------------------------------------------------------------------------
 * Validation: each case must fail with the path and the reason */

#define M(tensors, ops) "{'name':'t','tensors':[" tensors "],'ops':[" ops "]}"
#define X "{'name':'x','shape':[8,16],'role':'input'}"
#define W "{'name':'w','shape':[16,32],'role':'param'}"
#define H "{'name':'h','shape':[8,32],'role':'activation'}"
#define H2 "{'name':'h2','shape':[8,32],'role':'activation'}"
#define FC "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h'}"
#define RELU2 "{'name':'relu','kind':'relu','spec':'bh->bh','inputs':['h'],'output':'h2'}"
#define TOK(dt) "{'name':'tok','shape':[2,4],'dtype':'" dt "','role':'input'}"
#define WTE "{'name':'wte','shape':[16,8],'role':'param'}"
#define EMB "{'name':'emb','shape':[2,4,8],'role':'activation'}"
#define IMG "{'name':'img','shape':[2,3,16,16],'role':'input'}"
#define KER "{'name':'k','shape':[4,3,3,3],'role':'param'}"
#define SC(s) "{'name':'sc','shape':[" s "],'role':'input'}"
#define P(s) "{'name':'p','shape':[" s "],'role':'activation'}"
#define CA(s) "{'name':'ca','shape':[" s "],'role':'input'}"
#define CB(s) "{'name':'cb','shape':[" s "],'role':'input'}"
#define CO(s) "{'name':'co','shape':[" s "],'role':'activation'}"
#define CAT(spec) "{'name':'cat','kind':'concat','spec':'" spec "','inputs':['ca','cb'],'output':'co'}"
#define PRED "{'name':'pr','shape':[8,4],'role':'input'}"
#define LOSS "{'name':'loss','shape':[],'role':'activation'}"
#define TGT(s, dt, role) "{'name':'tg','shape':[" s "],'dtype':'" dt "','role':'" role "'}"
#define MSE(spec) "{'name':'mse','kind':'mse','spec':'" spec "','inputs':['pr','tg'],'output':'loss'}"

static const struct { const char *json, *want1, *want2; } bad[] = {
    /* structure and names */
    {M(X "," W "," H, "{'name':'fc','kind':'matmull','spec':'bi,ih->bh','inputs':['x','w'],'output':'h'}"),
     "ops[0]: unknown kind \"matmull\"", "(known: matmul, embedding, conv2d"},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','foo'],'output':'h'}"),
     "ops[0].inputs[1]: tensor \"foo\" is not defined", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'zz'}"),
     "ops[0].output: tensor \"zz\" is not defined", NULL},
    {M(X "," W "," H, FC "," FC), "ops[1].name: duplicate op name \"fc\"", NULL},
    {M(X "," W "," H, FC ",{'name':'fc2','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h'}"),
     "ops[1].output: tensor \"h\" is already produced by ops[0] (\"fc\")", NULL},
    {M(X "," W "," H "," H2, FC), "tensors[3]: activation \"h2\" is never produced", NULL},
    {M(X "," W "," H "," H2 ",{'name':'h3','shape':[8,32],'role':'activation'}",
       FC ",{'name':'r','kind':'relu','spec':'bh->bh','inputs':['h2'],'output':'h3'}"),
     "ops[1].inputs[0]: activation \"h2\" is never produced", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bi','inputs':['x','w'],'output':'x'}"),
     "ops[0].output: tensor \"x\" has role input", "ops produce only activations"},
    {M(X "," W "," H "," X, FC), "tensors[3].name: duplicate tensor name \"x\"", "tensors[0]"},
    {M(X "," W "," H "," H2, RELU2 "," FC), "ops[0].inputs[0]: tensor \"h\" is produced later, by ops[1] (\"fc\")",
     "topological order"},
    {M(X "," W "," H "," H2, FC ",{'name':'r','kind':'relu','spec':'bh->bh','inputs':['h2'],'output':'h2'}"),
     "ops[1].inputs[0]: tensor \"h2\" is this op's own output", "cycle"},
    {M(X "," W "," H, FC ",{'name':'fc','kind':'relu'}"), "ops[1].name: duplicate op name", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: missing (required)", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h','reduce':'h'}"),
     "ops[0]: unknown field \"reduce\"", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h','block':'one'}"),
     "ops[0].block: expected an integer", NULL},
    {"{'name':'t','tensors':{},'ops':[]}", "tensors: expected an array", NULL},
    {"{'name':'t','tensors':[],'ops':[],'extra':1}", "unknown field \"extra\"", NULL},

    /* tensors */
    {M("{'name':'x','shape':[8,-4],'role':'input'}", ""), "tensors[0].shape[1]: -4 is not positive", NULL},
    {M("{'name':'x','shape':[8,0],'role':'input'}", ""), "tensors[0].shape[1]: 0 is not positive", NULL},
    {M("{'name':'x','shape':[8,2.5],'role':'input'}", ""), "tensors[0].shape[1]: expected a positive integer", NULL},
    {M("{'name':'x','shape':[4294967296,4294967296],'role':'input'}", ""),
     "tensors[0].shape: the element count of \"x\" overflows int64", NULL},
    {M("{'name':'x','shape':[8,16],'dtype':'f64','role':'input'}", ""),
     "tensors[0].dtype: unknown dtype \"f64\"", "f32, bf16, f16, i32"},
    {M("{'name':'x','shape':[8,16],'role':'weights'}", ""), "tensors[0].role: unknown role \"weights\"", NULL},
    {M("{'name':'x','shape':[8,16]}", ""), "tensors[0].role: missing (required)", NULL},
    {M("{'name':'w','shape':[8,16],'dtype':'i32','role':'param'}", ""), "tensors[0].dtype: param \"w\" is i32", NULL},
    {M("{'name':'x','shape':[8,16],'role':'input','dims':'bs'}", ""), "tensors[0]: unknown field \"dims\"", NULL},

    /* spec syntax */
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bI,ih->bh','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: 'I' in \"bI,ih->bh\" is not a letter a-z", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: \"bi,ih\" has no \"->\"", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi->bh','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: \"bi->bh\" has 1 input operand but the op has 2 inputs", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bij,ih->bh','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: input 0 \"bij\" has 3 letters but tensor \"x\" has 2 dims", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bhz','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: output \"bhz\" has 3 letters but tensor \"h\" has 2 dims", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,hh->bh','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: letter 'h' repeats in operand \"hh\"", NULL},
    {M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bz','inputs':['x','w'],'output':'h'}"),
     "ops[0].spec: output letter 'z' is in no input", NULL},

    /* sizes */
    {M(X ",{'name':'w','shape':[8,32],'role':'param'}," H, FC),
     "ops[0].spec: letter 'i' has size 16 in input 0 but 8 in input 1", NULL},
    {M(X "," W ",{'name':'h','shape':[8,33],'role':'activation'}", FC),
     "ops[0].spec: letter 'h' has size 32 in input 1 but 33 in the output", NULL},
    {M("{'name':'x','shape':[1048576,1048576],'role':'input'},{'name':'w','shape':[1048576,16777216],'role':'param'},"
       "{'name':'h','shape':[1048576,16777216],'role':'activation'}", FC),
     "ops[0]: the iteration space", "overflows int64"},
    /* bytes past what memory is counted in: one tensor, and the sum */
    {M("{'name':'x','shape':[1073741824,1073741824],'role':'input'}," W "," H, FC),
     "tensors[0].shape: with \"x\"", "more than the 2^56 (64 PiB)"},
    {M("{'name':'x','shape':[8,33554432,33554432],'role':'input'},{'name':'y','shape':[8,33554432,33554432],'role':'input'},"
       "{'name':'z','shape':[8,33554432,33554432],'role':'input'}", FC),
     "tensors[2].shape: with \"z\" (3.6e+16 bytes) the model's tensors hold 1.08e+17 bytes", NULL},
    /* blocks without gaps */
    {M(X "," W "," H ",{'name':'y','shape':[8,32],'role':'activation'}",
       "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h','block':0},"
       "{'name':'r','kind':'relu','spec':'bh->bh','inputs':['h'],'output':'y','block':2}"),
     "ops[1].block: 2, but no op is in block 1; blocks are numbered 0, 1, 2, ... without gaps", NULL},

    /* dtypes */
    {M(TOK("f32") "," WTE "," EMB, "{'name':'e','kind':'embedding','spec':'bs,vh->bsh','inputs':['tok','wte'],'output':'emb','gather':'v'}"),
     "ops[0].inputs[0]: tensor \"tok\" is f32, but embedding indices must be i32", NULL},
    {M(TOK("i32") ",{'name':'w','shape':[4,8],'role':'param'}," EMB,
       "{'name':'m','kind':'matmul','spec':'bs,sh->bsh','inputs':['tok','w'],'output':'emb'}"),
     "ops[0].inputs[0]: tensor \"tok\" is i32; only embedding indices and cross_entropy labels", NULL},
    {M("{'name':'lg','shape':[2,4,16],'role':'input'},{'name':'lab','shape':[2,4],'role':'label'},"
       "{'name':'loss','shape':[],'role':'activation'}",
       "{'name':'loss','kind':'cross_entropy','spec':'bsv,bs->','inputs':['lg','lab'],'output':'loss','reduce':'v'}"),
     "ops[0].inputs[1]: tensor \"lab\" is f32, but cross_entropy labels must be i32", NULL},
    {M(X "," W ",{'name':'h','shape':[8,32],'dtype':'i32','role':'activation'}", FC),
     "ops[0].output: tensor \"h\" is i32", NULL},

    /* kind rules */
    {M(X "," H "," H2, "{'name':'a','kind':'relu','spec':'bi->bi','inputs':['x','h'],'output':'h2'}"),
     "ops[0].inputs: relu takes 1 input, got 2", NULL},
    {M(X "," W "," H "," H2 ",{'name':'h3','shape':[32,8],'role':'activation'}",
       FC ",{'name':'r','kind':'relu','spec':'bh->bh','inputs':['h'],'output':'h2'},"
       "{'name':'a','kind':'add','spec':'bh,hb->bh','inputs':['h','h2'],'output':'h3'}"),
     "ops[2].spec: add needs identical letters in every input and the output", "input 1 has \"hb\""},
    {M(X "," W "," H "," H2 ",{'name':'bb','shape':[8],'role':'param'}",
       FC ",{'name':'b','kind':'bias','spec':'bh,z->bh','inputs':['h','bb'],'output':'h2'}"),
     "ops[1].spec: bias letters \"z\" must be a subset of input 0's \"bh\"", NULL},
    {M(X "," W "," H "," H2 ",{'name':'g','shape':[8],'role':'param'}",
       FC ",{'name':'ln','kind':'layernorm','spec':'bh,b->bh','inputs':['h','g'],'output':'h2','reduce':'h'}"),
     "ops[1].spec: layernorm's gamma \"b\" must have exactly the normalised (reduce) letters", NULL},
    {M(X "," W "," H "," H2,
       FC ",{'name':'ln','kind':'layernorm','spec':'bh->bh','inputs':['h'],'output':'h2','reduce':'q'}"),
     "ops[1].reduce: letter 'q' is not in input 0 \"bh\"", NULL},
    {M(SC("2,4,4") "," P("2,4,4"), "{'name':'s','kind':'softmax','spec':'bts->bts','inputs':['sc'],'output':'p','reduce':'t','causal':true}"),
     "ops[0].causal: the causal mask needs the reduce letter last", NULL},
    {M(SC("2,4,8") "," P("2,4,8"), "{'name':'s','kind':'softmax','spec':'bst->bst','inputs':['sc'],'output':'p','reduce':'t','causal':true}"),
     "ops[0].causal: the causal mask needs 's' and 't' of equal size, got 4 and 8", NULL},
    {M(SC("2,4,8") "," P("2,4,8"), "{'name':'s','kind':'softmax','spec':'bst->bst','inputs':['sc'],'output':'p','reduce':'st'}"),
     "ops[0].reduce: softmax reduces over exactly one letter", NULL},
    {M(SC("2,4,8") "," P("2,4,8"), "{'name':'s','kind':'softmax','spec':'bst->bst','inputs':['sc'],'output':'p','reduce':'t','scale':0}"),
     "ops[0].scale: 0 is not positive", NULL},
    {M(SC("2,4,8") "," P("2,4,8"), "{'name':'s','kind':'softmax','spec':'bst->bst','inputs':['sc'],'output':'p'}"),
     "ops[0].reduce: missing (required)", NULL},
    {M("{'name':'lg','shape':[2,4,16],'role':'input'},{'name':'lab','shape':[2,4],'dtype':'i32','role':'label'},"
       "{'name':'loss','shape':[2],'role':'activation'}",
       "{'name':'loss','kind':'cross_entropy','spec':'bsv,bs->b','inputs':['lg','lab'],'output':'loss','reduce':'v'}"),
     "ops[0].spec: cross_entropy's output is the scalar loss", NULL},
    {M("{'name':'lg','shape':[2,4,16],'role':'input'},{'name':'lab','shape':[2,4],'dtype':'i32','role':'label'},"
       "{'name':'loss','shape':[],'role':'activation'}",
       "{'name':'loss','kind':'cross_entropy','spec':'bsv,bs->','inputs':['lg','lab'],'output':'loss','reduce':'s'}"),
     "ops[0].spec: the labels' letters \"bs\" must be the logits' \"bsv\" without the class letter", NULL},
    {M(SC("2,4,8") ",{'name':'m','shape':[2,4,8,3,3],'role':'activation'}",
       "{'name':'r','kind':'route','spec':'bse->bsecd','inputs':['sc'],'output':'m','reduce':'e'}"),
     "ops[0].spec: route's output is its input's letters plus one capacity letter", NULL},
    {M(TOK("i32") "," WTE "," EMB,
       "{'name':'e','kind':'embedding','spec':'bs,vh->bsh','inputs':['tok','wte'],'output':'emb','gather':'s'}"),
     "ops[0].gather: letter 's' is not in the table's letters \"vh\"", NULL},
    {M(TOK("i32") ",{'name':'wte','shape':[4,8],'role':'param'}," EMB,
       "{'name':'e','kind':'embedding','spec':'bs,sh->bsh','inputs':['tok','wte'],'output':'emb','gather':'s'}"),
     "ops[0].gather: the gathered letter may be only in the table", NULL},
    {M(IMG "," KER ",{'name':'o','shape':[2,4,7,16],'role':'activation'}",
       "{'name':'c','kind':'conv2d','spec':'nchw,ocrs->nohw','inputs':['img','k'],'output':'o','pad':1}"),
     "ops[0].spec: letter 'h' has size 7 in the output but (16 + 2*1 - 3)/1 + 1 = 16 from input 0", NULL},
    {M(IMG "," KER ",{'name':'o','shape':[2,4,16,16],'role':'activation'}",
       "{'name':'c','kind':'conv2d','spec':'nchw,ocrs->nhwo','inputs':['img','k'],'output':'o','pad':1}"),
     "ops[0].spec: conv2d takes the form \"nchw,ocrs->nohw\"", NULL},
    {M("{'name':'img','shape':[2,3,2,2],'role':'input'}," KER ",{'name':'o','shape':[2,4,1,1],'role':'activation'}",
       "{'name':'c','kind':'conv2d','spec':'nchw,ocrs->nohw','inputs':['img','k'],'output':'o'}"),
     "ops[0].spec: window 3 along 'h' is larger than the padded input 2", NULL},
    {M(IMG ",{'name':'o','shape':[2,3,8,8],'role':'activation'}",
       "{'name':'p','kind':'pool2d','spec':'nchw->nchw','inputs':['img'],'output':'o','stride':2}"),
     "ops[0].window: missing (required)", NULL},
    {M(IMG ",{'name':'o','shape':[2,3,8,8],'role':'activation'}",
       "{'name':'p','kind':'pool2d','spec':'nchw->nchw','inputs':['img'],'output':'o','window':2,'mode':'min'}"),
     "ops[0].mode: unknown mode \"min\"", NULL},
    {M(IMG ",{'name':'o','shape':[2,3,8,8],'role':'activation'}",
       "{'name':'p','kind':'pool2d','spec':'nchw->nchw','inputs':['img'],'output':'o','window':2,'stride':0}"),
     "ops[0].stride: 0 is out of range", NULL},
    {M(X ",{'name':'y','shape':[16,8],'role':'input'},{'name':'z','shape':[8],'role':'activation'}",
       "{'name':'m','kind':'matmul','spec':'bi,ib->b','inputs':['x','y'],'output':'z'}"),
     "ops[0]: inputs disagree on the batch letter: 'b' in input 0 (\"x\") but 'i' in input 1 (\"y\")", NULL},

    /* concat */
    {M(CA("2,3,4") "," CB("2,5,4") "," CO("2,8,4"), "{'name':'cat','kind':'concat','spec':'nah->nch','inputs':['ca'],'output':'co'}"),
     "ops[0].inputs: concat takes 2 to 4 inputs, got 1", NULL},
    {M(CA("2,3,4") "," CB("2,5,4") "," CO("2,3,4"), CAT("nah,nbh->nah")),
     "ops[0].spec: concat's output \"nah\" needs exactly one letter that no input has", "got 0"},
    {M(CA("2,3,4") "," CB("2,5,4") ",{'name':'co','shape':[2,8,4,1],'role':'activation'}", CAT("nah,nbh->ncdh")),
     "ops[0].spec: concat's output \"ncdh\" needs exactly one letter that no input has", "got 2"},
    {M(CA("2,4") "," CB("2,5,4") "," CO("2,8,4"), CAT("nh,nbh->nch")),
     "ops[0].spec: concat's input 0 \"nh\" needs exactly one letter that the output \"nch\" lacks",
     "got 0"},
    {M(CA("2,3,4") "," CB("2,5,4") "," CO("2,8,4"), CAT("nah,nbd->nch")),
     "ops[0].spec: concat's input 1 \"nbd\" needs exactly one letter that the output \"nch\" lacks",
     "got 2"},
    {M(CA("2,3") "," CB("2,5,4") "," CO("2,8,4"), CAT("na,nbh->nch")),
     "ops[0].spec: concat's input 0 \"na\" must have every letter of the output \"nch\" but the "
     "concatenated 'c'", NULL},
    {M(CA("2,3,4") "," CB("2,5,4") "," CO("2,96,4"), CAT("nah,nbh->nch")),
     "ops[0].spec: concat: output letter 'c' has 96 but its inputs' 'a','b' sum to 8", NULL},
    {M(CA("2,3,4") "," CB("2,5,3") "," CO("2,8,4"), CAT("nah,nbh->nch")),
     "ops[0].spec: letter 'h' has size 4 in input 0 but 3 in input 1", NULL},
    {M(CA("3,4") ",{'name':'cb','shape':[5,4],'role':'param'}," CO("8,4"), CAT("ah,bh->ch")),
     "ops[0].spec: concat along the batch letter 'a' of input 0 (\"ca\")",
     "must be in every input and the output"},
    {M(CA("3,4") "," CB("5,4") "," CO("8,4"), CAT("ah,bh->ch")),
     "ops[0]: inputs disagree on the batch letter", NULL},

    /* mse */
    {M(PRED "," TGT("8,4", "f32", "label") ",{'name':'loss','shape':[8],'role':'activation'}", MSE("bk,bk->b")),
     "ops[0].spec: mse's output is the scalar loss, write \"->\" with no letters", NULL},
    {M(PRED "," TGT("8,4", "f32", "label") "," LOSS, MSE("bk,bj->")),
     "ops[0].spec: mse's target letters \"bj\" must be the prediction's \"bk\" (in any order)", NULL},
    {M(PRED "," TGT("8,4", "i32", "label") "," LOSS, MSE("bk,bk->")),
     "ops[0].inputs[1]: tensor \"tg\" is i32, but mse's target must be a float label",
     "i32 class labels are for cross_entropy"},
    {M(PRED "," TGT("8,4", "f32", "input") "," LOSS, MSE("bk,bk->")),
     "ops[0].inputs[1]: tensor \"tg\" has role input, but mse's target must be a tensor with role label",
     NULL},
    {M(PRED "," TGT("8,5", "f32", "label") "," LOSS, MSE("bk,bk->")),
     "ops[0].spec: letter 'k' has size 4 in input 0 but 5 in input 1", NULL},
    {M(PRED "," TGT("8,4", "f32", "label") "," LOSS, "{'name':'mse','kind':'mse','spec':'bk,bk->','inputs':['pr'],'output':'loss'}"),
     "ops[0].inputs: mse takes 2 inputs, got 1", NULL},
    {M(PRED "," TGT("8,4", "f32", "label") "," LOSS,
       "{'name':'mse','kind':'mse','spec':'bk,bk->','inputs':['pr','tg'],'output':'loss','reduce':'k'}"),
     "ops[0]: unknown field \"reduce\"", NULL},
};

static void test_validation_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Err err = {{0}};
        Graph *g = parse(bad[i].json, &err);
        if (g) {
            graph_free(g);
            fail_msg("case %zu: accepted, want \"%s\"", i, bad[i].want1);
        }
        if (!strstr(err.msg, bad[i].want1) || (bad[i].want2 && !strstr(err.msg, bad[i].want2)))
            fail_msg("case %zu: got \"%s\"\n  want \"%s\"%s%s", i, err.msg, bad[i].want1,
                     bad[i].want2 ? " and " : "", bad[i].want2 ? bad[i].want2 : "");
    }
}

/* json_parse_strict: one value, each key once, no NUL in a string; the
 * offset of the fault and its reason */
static void test_strict_json(void **state)
{
    (void)state;
    static const struct { const char *text; size_t at; const char *why; } BAD[] = {
        { "{\"a\": 1} x", 9, "more after the JSON value" },
        { "[1] [2]", 4, "more after the JSON value" },
        /* a key given twice: where it is given the second time */
        { "{\"a\": 1, \"b\": {\"c\": 2, \"c\": 3}}", 23, "b: \"c\" is given twice" },
        { "[{\"k\": 1}, {\"k\": 2, \"k\": 2}]", 20, "[1]: \"k\" is given twice" },
        { "{\"a\": 1, \"a\": 1}", 9, "\"a\" is given twice" },
        { "{\"x\": \"}\\\"{\", \"y\": [], \"x\": 1}", 23, "\"x\" is given twice" },
        { "{\"b\": 1, \"a\": {}, \"a\": 2, \"b\": 3}", 18, "\"a\" is given twice" },
        { "{\"n\": \"x\\u0000\"}", 8, "\\u0000" },
        { "{", 1, "ends before the value does" },
        /* what cJSON alone takes: numbers not in JSON's form or past a
         * double, raw control characters in strings */
        { "{\"a\": 007}", 6, "leading zero" },
        { "[1, 2.]", 4, "decimal point" },
        { "[-]", 1, "minus sign" },
        { "[1e]", 1, "exponent without digits" },
        { "[1e+]", 1, "exponent without digits" },
        { "{\"a\": 1e999}", 6, "too large for a double" },
        { "[-1e400]", 1, "too large for a double" },
        { "{\"a\": \"x\ty\"}", 8, "raw control character" },
        { "{\"a\": \"x\ny\"}", 8, "raw control character" },
        { "{\"a\": \"x\001\"}", 8, "raw control character" },
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        size_t at = 99;
        Err err = {0};
        cJSON *j = json_parse_strict(BAD[i].text, strlen(BAD[i].text), &at, &err);
        if (j || !strstr(err.msg, BAD[i].why) || (BAD[i].at && at != BAD[i].at))
            fail_msg("case %zu: %s at %zu, want \"%s\" at %zu", i, err.msg, at, BAD[i].why,
                     BAD[i].at);
    }
    /* well formed but deeper than the parser goes: said so, where */
    char deep[2 * 1200 + 1];
    for (int i = 0; i < 1200; i++) deep[i] = '[', deep[1200 + i] = ']';
    deep[2400] = 0;
    size_t at;
    Err err = {0};
    assert_null(json_parse_strict(deep, 2400, &at, &err));
    assert_non_null(strstr(err.msg, "nested deeper than"));
    assert_int_equal(at, 1000);
    /* a NUL byte anywhere (the text goes on after it) */
    static const char nul[] = "{\"name\": \"x\0junk\"}";
    assert_null(json_parse_strict(nul, sizeof nul - 1, &at, &err));
    assert_non_null(strstr(err.msg, "a NUL byte"));
    assert_int_equal(at, 11);
    static const char nul2[] = "{\"a\": 1}\0";
    assert_null(json_parse_strict(nul2, sizeof nul2 - 1, &at, &err));
    assert_int_equal(at, 8);
    /* white space after the value; an escaped backslash before u0000; the
     * same key in two objects */
    static const char *const GOOD[] = { "{\"a\": 1}\n\t \r\n", "{\"n\": \"x\\\\u0000\"}",
                                        "[{\"k\": 1}, {\"k\": 2}]",
                                        "[0, -0, 0.5, -12.25e-3, 1E+2, 3e0, 1.7976931348623157e308]",
                                        "{\"t\": \"a\\tb\\n\\u0001\\\"\"}" };
    for (size_t i = 0; i < sizeof GOOD / sizeof GOOD[0]; i++) {
        size_t at;
        Err err = {0};
        cJSON *j = json_parse_strict(GOOD[i], strlen(GOOD[i]), &at, &err);
        if (!j) fail_msg("good case %zu: %s", i, err.msg);
        cJSON_Delete(j);
    }
}

static void test_accepts_minimal(void **state)
{
    (void)state;
    /* dtype defaults to f32; block null or -1 means outside the blocks */
    Graph *g = parse_ok(M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h','block':null}"));
    assert_int_equal(g->tensors[0].dtype, DT_F32);
    assert_int_equal(g->ops[0].block, -1);
    assert_int_equal(g->nblocks, 0);
    graph_free(g);
    g = parse_ok(M(X "," W "," H, "{'name':'fc','kind':'matmul','spec':'bi,ih->bh','inputs':['x','w'],'output':'h','block':-1}"));
    assert_int_equal(g->ops[0].block, -1);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Derived fields */

static void test_derived(void **state)
{
    (void)state;
    Graph *g = load_model("tiny-mlp.json");
    assert_string_equal(g->name, "tiny-mlp");
    assert_int_equal(g->nblocks, 2);
    int x = tensor_index(g, "x"), fc1 = tensor_index(g, "fc1"), loss = tensor_index(g, "loss");
    assert_int_equal(g->tensors[x].producer, -1);
    assert_int_equal(g->tensors[x].batch_dim, 0);
    assert_false(g->tensors[x].needs_grad);
    assert_int_equal(g->tensors[tensor_index(g, "labels")].batch_dim, 0);
    assert_int_equal(g->tensors[tensor_index(g, "fc1.w")].batch_dim, -1);
    assert_true(g->tensors[tensor_index(g, "fc1.w")].needs_grad);
    assert_int_equal(g->tensors[fc1].producer, op_index(g, "fc1"));
    assert_int_equal(g->tensors[fc1].batch_dim, 0);
    assert_true(g->tensors[fc1].needs_grad);
    assert_int_equal(g->tensors[loss].ndim, 0);
    assert_int_equal(g->tensors[loss].batch_dim, -1);
    assert_int_equal(tensor_numel(&g->tensors[loss]), 1);
    assert_int_equal(graph_find_tensor(g, "nope"), -1);
    assert_int_equal(graph_find_op(g, "nope"), -1);

    const Op *op = &g->ops[op_index(g, "fc1")];
    assert_int_equal(op->letters_mask, 1u << ('b' - 'a') | 1u << ('i' - 'a') | 1u << ('h' - 'a'));
    assert_int_equal(op->size['b' - 'a'], 8);
    assert_int_equal(op->size['i' - 'a'], 16);
    assert_int_equal(op->size['h' - 'a'], 32);
    assert_int_equal(op->batch_letter, 'b' - 'a');
    assert_string_equal(op->in_letters[1], "ih");
    assert_string_equal(op->out_letters, "bh");
    assert_int_equal(g->ops[op_index(g, "loss")].reduce_mask, 1u << ('k' - 'a'));
    graph_free(g);

    g = load_model("tiny-cnn.json");
    const Op *c1 = &g->ops[op_index(g, "conv1")], *c2 = &g->ops[op_index(g, "conv2")];
    uint32_t hw = 1u << ('h' - 'a') | 1u << ('w' - 'a'), rs = 1u << ('r' - 'a') | 1u << ('s' - 'a');
    assert_int_equal(c1->spatial_mask, hw);
    assert_int_equal(c1->window_mask, rs);
    assert_int_equal(c1->size['h' - 'a'], 16);
    assert_int_equal(c2->size['h' - 'a'], 4);        /* spatial letters hold the output size */
    assert_int_equal(c2->size['r' - 'a'], 3);
    assert_int_equal(c2->stride, 2);
    assert_int_equal(c2->pad, 1);
    const Op *p1 = &g->ops[op_index(g, "pool1")];
    assert_int_equal(p1->window, 2);
    assert_int_equal(p1->stride, 2);
    assert_false(p1->pool_avg);
    assert_int_equal(p1->spatial_mask, hw);
    assert_int_equal(g->ops[op_index(g, "bn1")].reduce_mask,
                     1u << ('n' - 'a') | 1u << ('h' - 'a') | 1u << ('w' - 'a'));
    assert_int_equal(g->tensors[tensor_index(g, "pool")].batch_dim, 0);
    graph_free(g);
}

/* Ops and tensors alike but for names, operands and blocks share a form:
 * the first of them. */
static void test_forms(void **state)
{
    (void)state;
    const char *k[] = { "layers", "hidden", "heads", "seq", "vocab", "batch" };
    const char *v[] = { "3", "64", "4", "16", "100", "2" };
    Err err = { 0 };
    Graph *g = zoo_build("gpt", 6, k, v, &err);
    if (!g) fail_msg("%s", err.msg);
    int q0 = op_index(g, "blocks.0.attn.q"), q2 = op_index(g, "blocks.2.attn.q");
    int f0 = op_index(g, "blocks.0.mlp.fc1"), f1 = op_index(g, "blocks.1.mlp.fc1");
    int h0 = op_index(g, "blocks.0.mlp.fc2");
    assert_int_equal(g->ops[q2].form, q0);
    assert_int_equal(g->ops[f1].form, f0);
    assert_int_equal(g->tensors[g->ops[q2].out].form, g->tensors[g->ops[q0].out].form);
    assert_int_equal(g->tensors[g->ops[q2].in[1]].form, g->tensors[g->ops[q0].in[1]].form);
    /* a matmul of other sizes: fc1 (h -> 4h), fc2 (4h -> h) */
    assert_int_equal(g->ops[f0].kind, g->ops[h0].kind);
    assert_int_not_equal(g->ops[f0].form, g->ops[h0].form);
    assert_int_not_equal(g->tensors[g->ops[f0].in[1]].form, g->tensors[g->ops[h0].in[1]].form);
    assert_int_not_equal(g->ops[op_index(g, "embed")].form, g->ops[q0].form);
    for (int i = 0; i < g->nops; i++) {
        const Op *a = &g->ops[i], *b = &g->ops[a->form];
        assert_true(a->form <= i);
        assert_int_equal(b->form, a->form);
        assert_int_equal(a->kind, b->kind);
        assert_string_equal(a->spec, b->spec);
        assert_memory_equal(a->size, b->size, sizeof a->size);
        /* and no earlier op alike has another form */
        for (int j = 0; j < i; j++)
            if (g->ops[j].kind == a->kind && !strcmp(g->ops[j].spec, a->spec) &&
                !memcmp(g->ops[j].size, a->size, sizeof a->size) &&
                g->ops[j].scale == a->scale && g->ops[j].causal == a->causal)
                assert_int_equal(g->ops[j].form, a->form);
    }
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *a = &g->tensors[t], *b = &g->tensors[a->form];
        assert_true(a->form <= t);
        assert_int_equal(a->ndim, b->ndim);
        assert_int_equal(a->role, b->role);
        assert_memory_equal(a->shape, b->shape, sizeof *a->shape * (size_t)a->ndim);
    }
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Costs, checked by hand */

static void test_cost_matmul(void **state)
{
    (void)state;
    Graph *g = load_model("tiny-mlp.json");
    OpCost c;

    /* fc1 "bi,ih->bh", b=8 i=16 h=32; x is data (no gradient), w a param */
    int i = op_index(g, "fc1");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 2.0 * 8 * 16 * 32, 0);
    assert_close(c.flops[COST_BWD_DATA], 0, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], 2.0 * 8 * 16 * 32, 0);
    assert_close(c.bytes[COST_FWD], (8 * 16 + 16 * 32 + 8 * 32) * 4.0, 0);
    assert_close(c.bytes[COST_BWD_DATA], 0, 0);
    /* dY (8x32) and x (8x16) in, dW (16x32) out */
    assert_close(c.bytes[COST_BWD_WEIGHT], (8 * 32 + 8 * 16 + 16 * 32) * 4.0, 0);

    /* fc2: its input needs a gradient, so both backward phases exist */
    i = op_index(g, "fc2");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 2.0 * 8 * 32 * 32, 0);
    assert_close(c.flops[COST_BWD_DATA], 2.0 * 8 * 32 * 32, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], 2.0 * 8 * 32 * 32, 0);

    /* a rank's shard: b split in 2, h split in 4 */
    int64_t local[IR_LETTERS];
    memcpy(local, g->ops[i].size, sizeof local);
    local['b' - 'a'] = 4;
    local['h' - 'a'] = 8;
    graph_op_cost(g, i, local, &c);
    assert_close(c.flops[COST_FWD], 2.0 * 4 * 32 * 8, 0);
    assert_close(c.bytes[COST_FWD], (4 * 32 + 32 * 8 + 4 * 8) * 4.0, 0);

    /* elementwise: relu 1/elt forward, twice that backward; bias adds a
     * param gradient of 1/elt; cross_entropy 5 per logit */
    i = op_index(g, "relu1");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 256, 0);
    assert_close(c.flops[COST_BWD_DATA], 512, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], 0, 0);
    assert_close(c.bytes[COST_FWD], 2 * 256 * 4.0, 0);
    i = op_index(g, "fc1_bias");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 256, 0);
    assert_close(c.flops[COST_BWD_DATA], 512, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], 256, 0);
    i = op_index(g, "loss");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 5 * 80, 0);
    assert_close(c.flops[COST_BWD_DATA], 10 * 80, 0);
    assert_close(c.bytes[COST_FWD], (80 + 8 + 1) * 4.0, 0);
    graph_free(g);
}

static void test_cost_conv(void **state)
{
    (void)state;
    Graph *g = load_model("tiny-cnn.json");
    OpCost c;

    /* conv1: n=4 c=3 h=w=16 o=8 r=s=3, stride 1 pad 1, input is the image */
    int i = op_index(g, "conv1");
    graph_op_cost(g, i, g->ops[i].size, &c);
    double f = 2.0 * 4 * 3 * 16 * 16 * 8 * 3 * 3;
    assert_close(c.flops[COST_FWD], f, 0);
    assert_close(c.flops[COST_BWD_DATA], 0, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], f, 0);
    assert_close(c.bytes[COST_FWD], (4 * 3 * 16 * 16 + 8 * 3 * 3 * 3 + 4 * 8 * 16 * 16) * 4.0, 0);

    /* conv2: 8x8 input, stride 2 pad 1 -> 4x4; flops use the output size,
     * the input's bytes its own (4 output positions x stride 2 = 8) */
    i = op_index(g, "conv2");
    graph_op_cost(g, i, g->ops[i].size, &c);
    f = 2.0 * 4 * 8 * 4 * 4 * 16 * 3 * 3;
    assert_close(c.flops[COST_FWD], f, 0);
    assert_close(c.flops[COST_BWD_DATA], f, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], f, 0);
    assert_close(c.bytes[COST_FWD], (4 * 8 * 8 * 8 + 16 * 8 * 3 * 3 + 4 * 16 * 4 * 4) * 4.0, 0);

    /* pool 2x2: 4 compares per output element */
    i = op_index(g, "pool1");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 4.0 * 4 * 8 * 8 * 8, 0);
    assert_close(c.bytes[COST_FWD], (4 * 8 * 16 * 16 + 4 * 8 * 8 * 8) * 4.0, 0);
    graph_free(g);
}

static void test_cost_embedding(void **state)
{
    (void)state;
    Graph *g = parse_ok(attrs_model);
    OpCost c;
    int i = op_index(g, "embed");   /* "bs,vh->bsh" b=2 s=4 v=16 h=8, bf16 table */
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 0, 0);
    assert_close(c.flops[COST_BWD_DATA], 0, 0);
    assert_close(c.flops[COST_BWD_WEIGHT], 2 * 4 * 8, 0);
    assert_close(c.bytes[COST_FWD], 2 * 4 * 4 + 2 * (2 * 4 * 8) * 2.0, 0);
    /* routing has no backward */
    i = op_index(g, "route");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_true(c.flops[COST_FWD] > 0);
    assert_close(c.flops[COST_BWD_DATA] + c.flops[COST_BWD_WEIGHT], 0, 0);
    /* a matmul reading one tensor twice: a gradient for each operand */
    i = op_index(g, "scores");
    graph_op_cost(g, i, g->ops[i].size, &c);
    assert_close(c.flops[COST_FWD], 2.0 * 2 * 4 * 4 * 8, 0);
    assert_close(c.flops[COST_BWD_DATA], 2 * 2.0 * 2 * 4 * 4 * 8, 0);
    graph_free(g);
}

static void test_stats(void **state)
{
    (void)state;
    Graph *g = load_model("tiny-mlp.json");
    GraphStats st;
    Err err = {{0}};
    assert_int_equal(graph_stats(g, &st, &err), 0);
    assert_close(st.params, (16 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10), 0);
    assert_close(st.param_bytes, 4.0 * 1930, 0);
    /* matmuls 8192 + 16384 + 5120, biases 256+256+80, relus 256+256, loss 400 */
    assert_close(st.fwd_flops, 31200, 0);
    /* fc1 2x, fc2 and head 3x, biases fwd+2fwd+wgrad, relus 3x, loss 3x */
    assert_close(st.train_flops, 16384 + 1024 + 768 + 49152 + 1024 + 768 + 15360 + 320 + 1200, 0);
    assert_close(g->train_flops, st.train_flops, 0);     /* kept from loading */
    assert_close(st.act_bytes, (6 * 256 + 2 * 80 + 1) * 4.0, 0);
    assert_int_equal(st.nblocks, 2);
    assert_close(st.block_params[0], 544, 0);
    assert_close(st.block_params[1], 1056, 0);
    assert_close(st.block_params[2], 330, 0);
    assert_close(st.block_flops[0], 16384 + 1024 + 768, 0);
    assert_close(st.block_act_bytes[2], (2 * 80 + 1) * 4.0, 0);
    graph_stats_free(&st);
    graph_stats_free(&st);   /* freeing twice is harmless */
    graph_free(g);
}

static void test_names(void **state)
{
    (void)state;
    DType d;
    OpKind k;
    assert_int_equal(dtype_parse("bf16", &d), 0);
    assert_int_equal(d, DT_BF16);
    assert_int_equal(dtype_parse("f64", &d), -1);
    assert_int_equal(dtype_bytes(DT_F16), 2);
    assert_int_equal(dtype_bytes(DT_I32), 4);
    assert_string_equal(dtype_name(DT_I32), "i32");
    assert_int_equal(op_kind_parse("cross_entropy", &k), 0);
    assert_int_equal(k, OP_CROSS_ENTROPY);
    assert_int_equal(op_kind_parse("conv", &k), -1);
    for (int i = 0; i < OP_KIND_COUNT; i++) {
        assert_int_equal(op_kind_parse(op_kind_name((OpKind)i), &k), 0);
        assert_int_equal(k, i);
    }
    assert_string_equal(role_name(ROLE_ACT), "activation");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strict_json),
        cmocka_unit_test(test_round_trip_files),
        cmocka_unit_test(test_round_trip_attrs),
        cmocka_unit_test(test_concat_mse),
        cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_validation_errors),
        cmocka_unit_test(test_accepts_minimal),
        cmocka_unit_test(test_derived),
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_cost_matmul),
        cmocka_unit_test(test_cost_conv),
        cmocka_unit_test(test_cost_embedding),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
