/*
 * test_zoo.c — the model zoo: closed forms for parameters and FLOPs
 * (Megatron-LM for GPT, torchvision counts for VGG and ResNet), the names
 * other modules rely on, option errors, and a JSON round trip of every kind.
 *
 * Legend: l,h,s,V,B = layers, hidden, sequence, vocabulary, batch; f = ffn;
 * E = experts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <cmocka.h>

#include "ir/util.h"
#include "ir/zoo.h"

/* ----------------------------------------------------------------------------
 * Helpers */

#define MAXOPT 16

/* zoo_build from "--key value ..." in one string. */
static Graph *build(const char *kind, const char *args, Err *err)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", args ? args : "");
    const char *keys[MAXOPT], *vals[MAXOPT];
    int n = 0;
    char *save = NULL;
    for (char *k = strtok_r(buf, " ", &save); k && n < MAXOPT; k = strtok_r(NULL, " ", &save)) {
        keys[n] = k + 2;    /* skip "--" */
        vals[n] = strtok_r(NULL, " ", &save);
        n++;
    }
    return zoo_build(kind, n, keys, vals, err);
}

static Graph *build_ok(const char *kind, const char *args)
{
    Err err = {{0}};
    Graph *g = build(kind, args, &err);
    if (!g) fail_msg("zoo %s %s: %s", kind, args ? args : "", err.msg);
    return g;
}

static void expect_error(const char *kind, const char *args, const char *want)
{
    Err err = {{0}};
    Graph *g = build(kind, args, &err);
    if (g) {
        graph_free(g);
        fail_msg("zoo %s %s: accepted, want \"%s\"", kind, args, want);
    }
    if (!strstr(err.msg, want)) fail_msg("zoo %s %s: got \"%s\", want \"%s\"", kind, args, err.msg, want);
}

static GraphStats stats(const Graph *g)
{
    GraphStats st;
    Err err = {{0}};
    if (graph_stats(g, &st, &err)) fail_msg("%s", err.msg);
    return st;
}

static const Op *op(const Graph *g, const char *name)
{
    int i = graph_find_op(g, name);
    if (i < 0) fail_msg("%s: no op %s", g->name, name);
    return &g->ops[i];
}

static const Tensor *tensor(const Graph *g, const char *name)
{
    int i = graph_find_tensor(g, name);
    if (i < 0) fail_msg("%s: no tensor %s", g->name, name);
    return &g->tensors[i];
}

static const char *in_name(const Graph *g, const Op *o, int k) { return g->tensors[o->in[k]].name; }

static void assert_rel(double got, double want, double rel)
{
    if (fabs(got - want) > rel * fabs(want))
        fail_msg("got %.6g, want %.6g (off by %.3g%%, allowed %.3g%%)", got, want,
                 100 * fabs(got / want - 1), 100 * rel);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ----------------------------------------------------------------------------
 * GPT against Megatron-LM's closed forms (Narayanan et al. 2021):
 *   P = 12 l h^2 + 13 l h + (V + s) h + 2h   (tied embedding, final LN)
 *   F = 72 B s l h^2 (1 + s/(6h) + V/(12 l h))   training FLOPs, no recompute
 * The FLOPs form counts matmuls only; ours adds the elementwise ops, which
 * stay well under 1% from 1024 hidden up. */

static void check_megatron(const char *args, double l, double h, double s, double V, double B)
{
    double t0 = now();
    Graph *g = build_ok("gpt", args);
    double dt = now() - t0;
    GraphStats st = stats(g);
    double P = 12 * l * h * h + 13 * l * h + (V + s) * h + 2 * h;
    double F = 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h));
    if (st.params != P) fail_msg("%s: %.0f params, Megatron's formula gives %.0f", args, st.params, P);
    assert_rel(st.train_flops, F, 0.01);
    assert_true(g->train_flops == st.train_flops);
    assert_true(st.fwd_flops < st.train_flops / 2.9 && st.fwd_flops > st.train_flops / 3.1);
    assert_int_equal(g->nblocks, (int)l);
    print_message("%-22s %6d ops  %.0f params  train %.4g FLOPs (%+.3f%% vs closed form)  built in %.3f s\n",
                  g->name, g->nops, st.params, st.train_flops, 100 * (st.train_flops / F - 1), dt);
#if defined(__SANITIZE_ADDRESS__)
    double limit = 5;     /* the sanitizers slow the build several times */
#else
    double limit = 1;
#endif
    if (dt > limit) fail_msg("%s built in %.2f s, want under %.0f s", args, dt, limit);
    graph_stats_free(&st);
    graph_free(g);
}

static void test_gpt_megatron(void **state)
{
    (void)state;
    check_megatron("--preset gpt3-175b", 96, 12288, 2048, 51200, 1536);
    check_megatron("--preset gpt3-1.3b", 24, 2048, 2048, 51200, 512);
    check_megatron("--preset gpt2-medium", 24, 1024, 1024, 50304, 8);
    check_megatron("--layers 8 --hidden 4096 --heads 32 --seq 1024 --vocab 32000 --batch 4", 8, 4096,
                   1024, 32000, 4);
}

static void test_gpt_structure(void **state)
{
    (void)state;
    Graph *g = build_ok("gpt", NULL);   /* small: l=2 h=64 n=4 s=32 V=256 B=4 */
    assert_string_equal(g->name, "gpt-small");
    assert_int_equal(tensor(g, "tokens")->dtype, DT_I32);
    assert_int_equal(tensor(g, "tokens")->role, ROLE_INPUT);
    assert_int_equal(tensor(g, "labels")->role, ROLE_LABEL);
    assert_int_equal(tensor(g, "labels")->dtype, DT_I32);
    assert_int_equal(tensor(g, "embed.wte")->shape[0], 256);
    assert_int_equal(tensor(g, "embed.wpe")->shape[0], 32);

    const Op *o = op(g, "embed");
    assert_int_equal(o->kind, OP_EMBEDDING);
    assert_string_equal(o->spec, "bs,vh->bsh");
    assert_int_equal(o->gather_mask, 1u << ('v' - 'a'));
    assert_string_equal(op(g, "pos_embed")->spec, "bsh,sh->bsh");
    assert_int_equal(op(g, "pos_embed")->block, -1);

    static const char *const names[][2] = {
        {"ln1", "bsh,h,h->bsh"}, {"attn.q", "bsh,hnd->bsnd"}, {"attn.k", "bsh,hnd->bsnd"},
        {"attn.v", "bsh,hnd->bsnd"}, {"attn.q_bias", "bsnd,nd->bsnd"},
        {"attn.k_bias", "bsnd,nd->bsnd"}, {"attn.v_bias", "bsnd,nd->bsnd"},
        {"attn.scores", "bsnd,btnd->bnst"}, {"attn.softmax", "bnst->bnst"},
        {"attn.context", "bnst,btnd->bsnd"}, {"attn.proj", "bsnd,ndh->bsh"},
        {"attn.proj_bias", "bsh,h->bsh"}, {"attn.residual", "bsh,bsh->bsh"},
        {"ln2", "bsh,h,h->bsh"}, {"mlp.fc1", "bsh,hf->bsf"}, {"mlp.fc1_bias", "bsf,f->bsf"},
        {"mlp.gelu", "bsf->bsf"}, {"mlp.fc2", "bsf,fh->bsh"}, {"mlp.fc2_bias", "bsh,h->bsh"},
        {"mlp.residual", "bsh,bsh->bsh"},
    };
    for (int b = 0; b < 2; b++)
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            char n[64];
            snprintf(n, sizeof n, "blocks.%d.%s", b, names[i][0]);
            assert_string_equal(op(g, n)->spec, names[i][1]);
            assert_int_equal(op(g, n)->block, b);
        }
    const Op *q = op(g, "blocks.1.attn.q"), *sm = op(g, "blocks.1.attn.softmax");
    assert_string_equal(in_name(g, q, 1), "blocks.1.attn.wq");
    assert_int_equal(tensor(g, "blocks.1.attn.wq")->ndim, 3);
    assert_int_equal(tensor(g, "blocks.1.attn.wq")->shape[2], 16);    /* d = 64/4 */
    assert_string_equal(in_name(g, op(g, "blocks.0.ln1"), 1), "blocks.0.ln1.g");
    assert_string_equal(in_name(g, op(g, "blocks.0.ln1"), 2), "blocks.0.ln1.b");
    assert_string_equal(in_name(g, op(g, "blocks.0.attn.scores"), 0), "blocks.0.attn.q_bias");
    assert_string_equal(in_name(g, op(g, "blocks.0.attn.scores"), 1), "blocks.0.attn.k_bias");
    assert_string_equal(in_name(g, op(g, "blocks.0.attn.context"), 1), "blocks.0.attn.v_bias");
    assert_true(sm->causal);
    assert_true(fabs(sm->scale - 0.25) < 1e-15);
    assert_int_equal(sm->reduce_mask, 1u << ('t' - 'a'));
    assert_int_equal(op(g, "blocks.0.attn.scores")->size['t' - 'a'], 32);
    assert_int_equal(op(g, "blocks.0.mlp.fc1")->size['f' - 'a'], 256);

    assert_int_equal(op(g, "ln_f")->block, -1);
    const Op *lg = op(g, "logits");
    assert_string_equal(lg->spec, "bsh,vh->bsv");
    assert_string_equal(in_name(g, lg, 1), "embed.wte");   /* tied */
    const Op *loss = op(g, "loss");
    assert_int_equal(loss->kind, OP_CROSS_ENTROPY);
    assert_string_equal(loss->spec, "bsv,bs->");
    assert_int_equal(loss->reduce_mask, 1u << ('v' - 'a'));
    assert_string_equal(g->tensors[loss->out].name, "loss");
    assert_int_equal(g->tensors[loss->out].ndim, 0);
    assert_int_equal(g->tensors[g->ops[g->nops - 1].out].ndim, 0);
    assert_int_equal(op(g, "blocks.0.mlp.fc1")->batch_letter, 'b' - 'a');
    assert_int_equal(tensor(g, "blocks.0.attn.scores")->batch_dim, 0);
    graph_free(g);

    /* untied head, explicit ffn, bf16 */
    g = build_ok("gpt", "--tied 0 --ffn 100 --dtype bf16 --layers 3");
    assert_string_equal(g->name, "gpt,layers=3,ffn=100,tied=0,dtype=bf16");
    assert_string_equal(in_name(g, op(g, "logits"), 1), "head.w");
    assert_int_equal(tensor(g, "blocks.2.mlp.w1")->shape[1], 100);
    assert_int_equal(tensor(g, "blocks.2.mlp.w1")->dtype, DT_BF16);
    assert_int_equal(tensor(g, "loss")->dtype, DT_BF16);
    assert_int_equal(tensor(g, "tokens")->dtype, DT_I32);
    GraphStats st = stats(g);
    double h = 64, f = 100, l = 3, V = 256, s = 32;
    /* per block: 4h^2 + 4h (attention) + 2hf + f + h (mlp) + 4h (two LNs) */
    assert_true(st.params == l * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * V * h + s * h + 2 * h);
    assert_rel(st.param_bytes, 2 * st.params, 0);
    graph_stats_free(&st);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * BERT: P = l(12h^2 + 13h) + (V + s)h + 2h (embedding LN)
 *         + h^2 + h (head.dense) + 2h (head.ln) + V (decoder bias).
 * bert-large: 335,172,410 (HuggingFace's BertModel, 335,141,888, has a
 * token-type table 2h and a pooler h^2 + h instead of our MLM head). */

static void check_bert(const char *args, double l, double h, double s, double V, double want)
{
    Graph *g = build_ok("bert", args);
    GraphStats st = stats(g);
    double P = l * (12 * h * h + 13 * h) + (V + s) * h + 2 * h + h * h + h + 2 * h + V;
    if (st.params != P) fail_msg("%s: %.0f params, formula gives %.0f", args, st.params, P);
    if (want && P != want) fail_msg("%s: formula gives %.0f, want %.0f", args, P, want);
    graph_stats_free(&st);
    graph_free(g);
}

static void test_bert(void **state)
{
    (void)state;
    check_bert("--preset bert-large", 24, 1024, 512, 30522, 335172410);
    check_bert("--preset bert-base", 12, 768, 512, 30522, 0);
    Graph *g = build_ok("bert", "--preset bert-base");
    assert_string_equal(g->name, "bert-base");
    assert_false(op(g, "blocks.3.attn.softmax")->causal);
    assert_string_equal(op(g, "embed.ln")->spec, "bsh,h,h->bsh");
    /* post-LN: ln1 normalises the attention residual */
    assert_string_equal(in_name(g, op(g, "blocks.0.ln1"), 0), "blocks.0.attn.residual");
    assert_string_equal(in_name(g, op(g, "blocks.0.mlp.fc1"), 0), "blocks.0.ln1");
    assert_string_equal(in_name(g, op(g, "blocks.0.attn.q"), 0), "embed.ln");
    assert_int_equal(op(g, "head.dense")->kind, OP_MATMUL);
    assert_int_equal(op(g, "head.gelu")->kind, OP_GELU);
    assert_int_equal(op(g, "head.ln")->kind, OP_LAYERNORM);
    assert_string_equal(in_name(g, op(g, "logits"), 1), "embed.wte");
    assert_string_equal(op(g, "logits_bias")->spec, "bsv,v->bsv");
    assert_string_equal(in_name(g, op(g, "loss"), 0), "logits_bias");
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * CNNs against torchvision's parameter counts */

static void check_params(const char *kind, const char *args, double want)
{
    Graph *g = build_ok(kind, args);
    GraphStats st = stats(g);
    if (st.params != want) fail_msg("%s %s: %.0f params, want %.0f", kind, args ? args : "", st.params, want);
    graph_stats_free(&st);
    graph_free(g);
}

static void test_cnn_params(void **state)
{
    (void)state;
    check_params("vgg16", NULL, 138357544);
    check_params("resnet", NULL, 25557032);
    check_params("resnet", "--depth 101", 44549160);
    check_params("resnet", "--depth 152", 60192808);
}

static void test_vgg_structure(void **state)
{
    (void)state;
    Graph *g = build_ok("vgg16", "--batch 2");
    assert_int_equal(g->nblocks, 8);
    const Op *c = op(g, "blocks.0.conv1");
    assert_string_equal(c->spec, "nchw,ocrs->nohw");
    assert_int_equal(c->stride, 1);
    assert_int_equal(c->pad, 1);
    const Op *p = op(g, "blocks.4.pool");
    assert_int_equal(p->kind, OP_POOL2D);
    assert_int_equal(p->window, 2);
    assert_int_equal(p->size['h' - 'a'], 7);
    const Op *fc = op(g, "blocks.5.fc");
    assert_string_equal(fc->spec, "nchw,chwf->nf");
    assert_int_equal(tensor(g, "blocks.5.fc.w")->shape[1], 7);
    assert_int_equal(tensor(g, "blocks.7.fc")->shape[1], 1000);
    assert_int_equal(op(g, "loss")->block, -1);
    /* forward FLOPs of VGG-16 at 224: about 15.5 GMACs = 31 GFLOPs per image */
    GraphStats st = stats(g);
    assert_rel(st.fwd_flops / 2, 31.0e9, 0.03);
    graph_stats_free(&st);
    graph_free(g);
}

static void test_resnet_structure(void **state)
{
    (void)state;
    Graph *g = build_ok("resnet", "--batch 2");
    assert_string_equal(g->name, "resnet50,batch=2");
    assert_int_equal(g->nblocks, 16);
    /* v1.5: the stride sits on the 3x3 of the first bottleneck of a stage */
    assert_int_equal(op(g, "blocks.3.conv1")->stride, 1);
    assert_int_equal(op(g, "blocks.3.conv2")->stride, 2);
    assert_int_equal(op(g, "blocks.3.down.conv")->stride, 2);
    assert_int_equal(graph_find_op(g, "blocks.4.down.conv"), -1);
    assert_int_equal(op(g, "blocks.0.down.conv")->stride, 1);    /* projection, 64 -> 256 */
    const Op *bn = op(g, "blocks.0.bn1");
    assert_string_equal(bn->spec, "nchw,c,c->nchw");
    assert_int_equal(bn->reduce_mask, 1u << ('n' - 'a') | 1u << ('h' - 'a') | 1u << ('w' - 'a'));
    assert_int_equal(op(g, "stem.pool")->size['h' - 'a'], 56);
    assert_int_equal(op(g, "blocks.15.conv3")->size['h' - 'a'], 7);
    assert_string_equal(op(g, "pool")->spec, "nchw->nc");
    assert_string_equal(op(g, "fc")->spec, "nc,ck->nk");
    assert_int_equal(op(g, "blocks.5.residual")->kind, OP_ADD);
    /* ResNet-50 forward: about 4.1 GMACs per image at 224 */
    GraphStats st = stats(g);
    assert_rel(st.fwd_flops / 2 / 2, 4.1e9, 0.05);
    graph_stats_free(&st);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * MoE and DLRM */

static void test_moe(void **state)
{
    (void)state;
    Graph *g = build_ok("moe", "--experts 4 --every 2 --layers 4 --seq 30");
    /* c = ceil(1.25 * 30 / 4) = 10 */
    const Op *r = op(g, "blocks.1.moe.route");
    assert_int_equal(r->kind, OP_ROUTE);
    assert_string_equal(r->spec, "bse->bsec");
    assert_int_equal(r->size['c' - 'a'], 10);
    assert_int_equal(r->size['e' - 'a'], 4);
    assert_false(g->tensors[r->out].needs_grad);
    assert_true(tensor(g, "blocks.1.moe.gate")->needs_grad);
    assert_string_equal(op(g, "blocks.1.moe.router")->spec, "bsh,he->bse");
    assert_int_equal(op(g, "blocks.1.moe.gate")->reduce_mask, 1u << ('e' - 'a'));
    assert_string_equal(op(g, "blocks.1.moe.dispatch")->spec, "bsh,bsec->bech");
    assert_string_equal(op(g, "blocks.1.moe.fc1")->spec, "bech,ehf->becf");
    assert_string_equal(op(g, "blocks.1.moe.fc2")->spec, "becf,efh->bech");
    const Op *c = op(g, "blocks.3.moe.combine");
    assert_string_equal(c->spec, "bech,bsec,bse->bsh");
    assert_int_equal(c->nin, 3);
    assert_string_equal(in_name(g, c, 0), "blocks.3.moe.fc2");
    assert_string_equal(in_name(g, c, 1), "blocks.3.moe.route");
    assert_string_equal(in_name(g, c, 2), "blocks.3.moe.gate");
    assert_int_equal(op(g, "blocks.3.moe.residual")->kind, OP_ADD);
    /* dense FFN in the other blocks */
    assert_int_equal(graph_find_op(g, "blocks.0.moe.route"), -1);
    assert_int_equal(op(g, "blocks.2.mlp.fc1")->kind, OP_MATMUL);
    /* params: gpt's, with each MoE block's FFN (2hf + f + h) replaced by
     * the router hE and E experts of 2hf each */
    GraphStats st = stats(g);
    double l = 4, h = 64, s = 30, V = 256, f = 256, E = 4, moe = 2;
    double P = 12 * l * h * h + 13 * l * h + (V + s) * h + 2 * h - moe * (2 * h * f + f + h) +
               moe * (h * E + 2 * E * h * f);
    if (st.params != P) fail_msg("moe: %.0f params, want %.0f", st.params, P);
    graph_stats_free(&st);
    graph_free(g);

    g = build_ok("moe", "--every 1 --experts 2 --capacity-factor 1");
    assert_int_equal(op(g, "blocks.0.moe.route")->size['c' - 'a'], 16);
    graph_free(g);
}

static void test_dlrm(void **state)
{
    (void)state;
    Graph *g = build_ok("dlrm", NULL);
    const Op *e = op(g, "sparse");
    assert_string_equal(e->spec, "btl,tvh->bth");
    assert_int_equal(e->gather_mask, 1u << ('v' - 'a'));
    assert_int_equal(tensor(g, "indices")->dtype, DT_I32);
    const Op *in = op(g, "interact");
    assert_string_equal(in->spec, "bth,buh->btu");
    assert_int_equal(in->in[0], in->in[1]);
    assert_string_equal(op(g, "top.0.fc")->spec, "btu,tuf->bf");
    assert_string_equal(op(g, "top.0.fc_dense")->spec, "bh,hf->bf");
    assert_int_equal(op(g, "top.0.add")->kind, OP_ADD);
    assert_int_equal(op(g, "logits")->size['k' - 'a'], 2);
    GraphStats st = stats(g);
    double T = 8, R = 1e6, D = 64;
    double P = T * R * D + (13 * 512 + 512) + (512 * 256 + 256) + (256 * 64 + 64) +
               (T * T * 512 + 64 * 512 + 512) + (512 * 256 + 256) + (256 * 2 + 2);
    if (st.params != P) fail_msg("dlrm: %.0f params, want %.0f", st.params, P);
    graph_stats_free(&st);
    graph_free(g);

    g = build_ok("dlrm", "--lookups 3 --bottom 32 --top 16,8,4 --rows 100 --tables 3");
    assert_int_equal(op(g, "sparse")->size['l' - 'a'], 3);
    assert_int_equal(op(g, "top.2.fc")->size['h' - 'a'], 4);
    assert_int_equal(g->nblocks, 4);
    graph_free(g);
}

static void test_mlp(void **state)
{
    (void)state;
    Graph *g = build_ok("mlp", "--layers 3 --hidden 16 --input 8 --classes 4 --batch 2");
    assert_int_equal(g->nblocks, 3);
    assert_string_equal(op(g, "blocks.2.fc")->spec, "bi,ih->bh");
    assert_int_equal(op(g, "blocks.2.relu")->kind, OP_RELU);
    assert_int_equal(op(g, "loss")->kind, OP_CROSS_ENTROPY);
    GraphStats st = stats(g);
    assert_true(st.params == (8 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 4 + 4));
    graph_stats_free(&st);
    graph_free(g);

    /* the regression head: f32 targets [b, classes], the mse loss, the
     * same params */
    g = build_ok("mlp", "--layers 3 --hidden 16 --input 8 --classes 4 --batch 2 --loss mse");
    assert_string_equal(g->name, "mlp,layers=3,hidden=16,input=8,classes=4,batch=2,loss=mse");
    const Op *loss = op(g, "loss");
    assert_int_equal(loss->kind, OP_MSE);
    assert_string_equal(loss->spec, "bk,bk->");
    assert_int_equal(loss->reduce_mask, 0);
    const Tensor *y = tensor(g, "labels");
    assert_int_equal(y->role, ROLE_LABEL);
    assert_int_equal(y->dtype, DT_F32);
    assert_int_equal(y->ndim, 2);
    assert_int_equal(y->shape[0], 2);
    assert_int_equal(y->shape[1], 4);
    assert_int_equal(tensor(g, "loss")->ndim, 0);
    assert_int_equal(g->ops[g->nops - 1].kind, OP_MSE);
    st = stats(g);
    assert_true(st.params == (8 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 4 + 4));
    graph_stats_free(&st);
    graph_free(g);
    expect_error("mlp", "--loss l1", "zoo mlp: option --loss: unknown value \"l1\" (known: ce, mse)");
}

/* fire: a stride-2 stem, then per block a squeeze and two expands whose
 * outputs a concat lays end to end along the channels. */
static void test_fire(void **state)
{
    (void)state;
    Graph *g = build_ok("fire", "--batch 4 --image 20 --fires 3 --stem 12 --squeeze 6 --expand 10");
    assert_int_equal(g->nblocks, 3);
    assert_int_equal(op(g, "stem.conv")->block, -1);
    assert_int_equal(op(g, "stem.conv")->stride, 2);
    assert_int_equal(op(g, "blocks.0.expand3")->pad, 1);
    assert_int_equal(op(g, "blocks.0.expand1")->pad, 0);
    for (int b = 0; b < 3; b++) {
        char name[32];
        snprintf(name, sizeof name, "blocks.%d.concat", b);
        const Op *c = op(g, name);
        assert_int_equal(c->kind, OP_CONCAT);
        assert_string_equal(c->spec, "nahw,nbhw->nchw");
        assert_int_equal(c->block, b);
        assert_int_equal(c->size['a' - 'a'], 10);
        assert_int_equal(c->size['b' - 'a'], 10);
        assert_int_equal(c->size['c' - 'a'], 20);
        assert_int_equal(c->size['h' - 'a'], 10);          /* (20 + 2 - 3) / 2 + 1 */
        assert_int_equal(c->batch_letter, 'n' - 'a');
        snprintf(name, sizeof name, "blocks.%d.expand1_relu", b);
        assert_string_equal(in_name(g, c, 0), name);
        snprintf(name, sizeof name, "blocks.%d.expand3_relu", b);
        assert_string_equal(in_name(g, c, 1), name);
    }
    /* the next squeeze reads the concat's 20 channels */
    assert_int_equal(tensor(g, "blocks.1.squeeze.w")->shape[1], 20);
    assert_int_equal(tensor(g, "blocks.0.squeeze.w")->shape[1], 12);
    assert_int_equal(op(g, "loss")->kind, OP_CROSS_ENTROPY);
    assert_int_equal(tensor(g, "pool")->shape[1], 20);
    GraphStats st = stats(g);
    /* stem 12x3x3x3 + 12; per fire squeeze 6xCx1x1 + 6, expand1 10x6 + 10,
     * expand3 10x6x3x3 + 10; fc 20x10 + 10 */
    double fire = 6 + 10 * 6 + 10 + 10 * 6 * 9 + 10;
    double P = 12 * 27 + 12 + (6 * 12 + fire) + 2 * (6 * 20 + fire) + 20 * 10 + 10;
    if (st.params != P) fail_msg("fire: %.0f params, want %.0f", st.params, P);
    graph_stats_free(&st);
    graph_free(g);
}

/* ----------------------------------------------------------------------------
 * Every kind: builds, validates, and survives graph_to_json -> graph_from_json */

static void test_all_kinds_round_trip(void **state)
{
    (void)state;
    static const char *const kinds[][2] = {
        {"mlp", NULL}, {"gpt", NULL}, {"bert", NULL}, {"vgg16", "--image 64"},
        {"resnet", "--image 64"}, {"moe", NULL}, {"dlrm", NULL}, {"fire", NULL},
        {"mlp", "--loss mse"},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        Graph *g = build_ok(kinds[i][0], kinds[i][1]);
        cJSON *j = graph_to_json(g);
        Err err = {{0}};
        Graph *h = graph_from_json(j, &err);
        if (!h) fail_msg("%s: %s", kinds[i][0], err.msg);
        cJSON *k = graph_to_json(h);
        char *a = cJSON_PrintUnformatted(j), *b = cJSON_PrintUnformatted(k);
        assert_string_equal(a, b);
        char ia[17], ib[17];
        graph_id(g, ia);
        graph_id(h, ib);
        assert_string_equal(ia, ib);
        assert_int_equal(g->nops, h->nops);
        assert_int_equal(g->nblocks, h->nblocks);
        GraphStats sa = stats(g), sb = stats(h);
        assert_true(sa.params == sb.params && sa.train_flops == sb.train_flops);
        assert_true(sa.params > 0 && sa.train_flops > sa.fwd_flops && sa.act_bytes > 0);
        graph_stats_free(&sa);
        graph_stats_free(&sb);
        cJSON_free(a);
        cJSON_free(b);
        cJSON_Delete(j);
        cJSON_Delete(k);
        graph_free(g);
        graph_free(h);
    }
}

/* ----------------------------------------------------------------------------
 * Options */

static void test_option_errors(void **state)
{
    (void)state;
    expect_error("gptx", NULL, "zoo: unknown model kind \"gptx\" (known: mlp, gpt, bert, vgg16, resnet, fire, moe, dlrm)");
    expect_error("gpt", "--layerz 3", "zoo gpt: unknown option --layerz (known: --preset, --layers");
    expect_error("gpt", "--layers abc", "zoo gpt: option --layers: \"abc\" is not an integer");
    expect_error("gpt", "--layers 2.5", "option --layers: \"2.5\" is not an integer");
    expect_error("gpt", "--layers 0", "zoo gpt: option --layers: 0 is out of range [1, 1024]");
    expect_error("gpt", "--preset gpt5", "option --preset: unknown value \"gpt5\" (known: small, gpt2-small");
    expect_error("gpt", "--heads 5", "zoo gpt: option --heads: 5 does not divide --hidden 64");
    expect_error("gpt", "--dtype f64", "option --dtype: unknown value \"f64\" (known: f32, bf16, f16)");
    expect_error("gpt", "--tied 2", "option --tied: 2 is out of range [0, 1]");
    expect_error("gpt", "--experts 4", "zoo gpt: unknown option --experts");
    expect_error("moe", "--capacity-factor x", "zoo moe: option --capacity-factor: \"x\" is not a number");
    expect_error("moe", "--capacity-factor 0", "option --capacity-factor: 0 is out of range");
    expect_error("resnet", "--depth 34", "zoo resnet: option --depth: unknown value \"34\" (known: 50, 101, 152)");
    expect_error("vgg16", "--image 16", "option --image: 16 is out of range [32,");
    expect_error("dlrm", "--bottom 64,x", "option --bottom: \"64,x\" is not a comma-separated list of integers");
    expect_error("dlrm", "--top 64,0", "option --top: 0 is out of range");
    expect_error("mlp", "--layers", "zoo mlp: option --layers needs a value");
    expect_error("moe", "--layers 2 --every 5", "zoo moe: option --every: 5 is more than --layers 2");
    expect_error("gpt", "--batch 100000 --vocab 1000000000 --seq 100000", "overflows int64");

    /* the preset applies first, options override it, the last one wins */
    Graph *g = build_ok("gpt", "--preset gpt2-small --layers 2 --batch 1 --batch 3");
    assert_string_equal(g->name, "gpt2-small,layers=2,batch=3");
    assert_int_equal(g->nblocks, 2);
    assert_int_equal(tensor(g, "tokens")->shape[0], 3);
    assert_int_equal(tensor(g, "embed.wte")->shape[0], 50304);
    graph_free(g);
}

static void test_usage(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    zoo_usage(f);
    fclose(f);
    static const char *const want[] = {"mlp", "gpt", "bert", "vgg16", "resnet", "fire", "moe", "dlrm",
                                       "--loss", "ce|mse", "--expand", "--squeeze",
                                       "gpt3-175b", "bert-large", "--capacity-factor", "[1.25]",
                                       "--depth", "50|101|152", "[512,256,64]"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i])) fail_msg("zoo_usage lacks \"%s\":\n%s", want[i], text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt_megatron),
        cmocka_unit_test(test_gpt_structure),
        cmocka_unit_test(test_bert),
        cmocka_unit_test(test_cnn_params),
        cmocka_unit_test(test_vgg_structure),
        cmocka_unit_test(test_resnet_structure),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_dlrm),
        cmocka_unit_test(test_mlp),
        cmocka_unit_test(test_fire),
        cmocka_unit_test(test_all_kinds_round_trip),
        cmocka_unit_test(test_option_errors),
        cmocka_unit_test(test_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
