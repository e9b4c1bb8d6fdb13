/*
 * test_onnx.c — `strata model import` on models no one here wrote: the
 * reduced ("light") ResNet-50 and VGG-19 the `onnx` package ships in its
 * backend test data (build/venv; `sh scripts/setup.sh test` installs it),
 * their parameters and forward FLOPs against the published figures; models
 * written with onnx.helper (an MLP with either loss, a GPT-2-style decoder,
 * SqueezeNet's fire modules: tests/support/onnx_models.py), whose imports
 * must equal the zoo's own; the imports lowered, estimated, searched, and
 * run with --verify on 2 CPU ranks; what does not map refused with the node
 * named. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/cli_harness.h"

static const char *py, *light;

/* Runs a Python snippet of the venv with args; fails the test on error. */
static void python(const char *code, const char *a1, const char *a2)
{
    const char *args[] = { "-c", code, a1, a2, NULL };
    RunOpts o = { .prog = py };
    Res r = { 0 };
    harness_run_at(__FILE__, __LINE__, &r, &o, args);
    EXPECT_RC(&r, 0);
}

/* params and forward FLOPs of a model file (strata model show --json) */
static void stats(const char *model, double *params, double *fwd)
{
    Res r = { 0 };
    STRATA(&r, "model", "show", model, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    *params = JNUM(j, "params");
    *fwd = JNUM(j, "fwd_flops");
}

static void test_light_models_match_the_published_figures(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        double params;      /* published, millions */
        double gflops;      /* forward, per image: 2 x the published multiply-adds */
        int blocks;
    } m[] = {
        /* He et al. 2016 / torchvision: 25.6 M params, 4.1 G multiply-adds at 224x224 */
        { "light_resnet50.onnx", 25.6, 8.2, 16 },
        /* Simonyan and Zisserman 2015: 143.7 M params, 19.6 G multiply-adds */
        { "light_vgg19.onnx", 143.7, 39.2, 5 },
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        char src[4096];
        snprintf(src, sizeof src, "%s/%s", light, m[i].file);
        const char *out = tp("imported.json");
        Res r = { 0 };
        STRATA(&r, "model", "import", src, "--batch", "4", "-o", out);
        EXPECT_RC(&r, 0);
        double params, fwd;
        stats(out, &params, &fwd);
        print_message("%s: %.3f M params (published %.1f M), %.2f GFLOPs forward per image "
                      "(published %.1f)\n", m[i].file, params / 1e6, m[i].params, fwd / 4e9,
                      m[i].gflops);
        assert_true(fabs(params / 1e6 - m[i].params) <= 0.005 * m[i].params);
        assert_true(fabs(fwd / 4e9 - m[i].gflops) <= 0.03 * m[i].gflops);
        STRATA(&r, "model", "show", out, "--json");
        assert_int_equal((int)JNUM(JSON_OUT(&r), "blocks"), m[i].blocks);
    }
}

/* Writes a model of tests/support/onnx_models.py. */
static void model_py(const char *kind, const char *out)
{
    const char *args[] = { rp("tests/support/onnx_models.py"), kind, out, NULL };
    RunOpts o = { .prog = py };
    Res r = { 0 };
    harness_run_at(__FILE__, __LINE__, &r, &o, args);
    EXPECT_RC(&r, 0);
}

/* The model summaries of two files agree on every count. */
static void expect_same_model(const char *a, const char *b)
{
    Res r = { 0 };
    STRATA(&r, "model", "show", a, "--json");
    cJSON *x = JSON_OUT(&r);
    STRATA(&r, "model", "show", b, "--json");
    cJSON *y = JSON_OUT(&r);
    static const char *const keys[] = { "ops", "tensors", "blocks", "params", "param_bytes",
                                        "train_flops", "fwd_flops", "act_bytes" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (JNUM(x, keys[i]) != JNUM(y, keys[i]))
            fail_msg("%s: %s has %.17g, %s %.17g", keys[i], a, JNUM(x, keys[i]), b, JNUM(y, keys[i]));
    }
}

/* A classic strategy of the model on 2 ranks (kind, and its option
 * set to 2 when given) estimated, and run 3 steps checked against one rank. */
static void estimate_and_verify(const char *model, const char *kind, const char *opt)
{
    const char *st = tp("two-ranks.json");
    Res r = { 0 };
    if (opt) STRATA(&r, "strategy", "build", kind, "--model", model, "--world", "2", opt, "2", "-o", st);
    else STRATA(&r, "strategy", "build", kind, "--model", model, "--world", "2", "-o", st);
    EXPECT_RC(&r, 0);
    STRATA(&r, "estimate", "--model", model, "--cluster", rp("clusters/local-cpu.json"),
           "--strategy", st, "--no-store");
    EXPECT_RC(&r, 0);
    STRATA(&r, "run", "--model", model, "--strategy", st, "--steps", "3", "--verify", "--no-store");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "verify: OK");
}

static void test_helper_mlp_equals_the_zoo(void **state)
{
    (void)state;
    static const char gen[] =
        "import sys, onnx\n"
        "from onnx import helper, TensorProto as T\n"
        "dims = [32, 64, 64, 10]\n"
        "nodes, inits, x = [], [], 'x'\n"
        "for i in range(3):\n"
        "    w = helper.make_tensor('w%d' % i, T.FLOAT, [dims[i], dims[i + 1]], [0.0] * (dims[i] * dims[i + 1]))\n"
        "    b = helper.make_tensor('b%d' % i, T.FLOAT, [dims[i + 1]], [0.0] * dims[i + 1])\n"
        "    inits += [w, b]\n"
        "    nodes.append(helper.make_node('MatMul', [x, 'w%d' % i], ['mm%d' % i], name='fc%d' % i))\n"
        "    nodes.append(helper.make_node('Add', ['mm%d' % i, 'b%d' % i], ['add%d' % i]))\n"
        "    x = 'add%d' % i\n"
        "    if i < 2:\n"
        "        nodes.append(helper.make_node('Relu', [x], ['relu%d' % i]))\n"
        "        x = 'relu%d' % i\n"
        "ins = [helper.make_tensor_value_info('x', T.FLOAT, ['N', 32])]\n"
        "out = helper.make_tensor_value_info(x, T.FLOAT, ['N', 10])\n"
        "if sys.argv[2] == 'loss':  # the graph's own loss, its labels an input\n"
        "    nodes.append(helper.make_node('SoftmaxCrossEntropyLoss', [x, 'y'], ['loss']))\n"
        "    ins.append(helper.make_tensor_value_info('y', T.INT64, ['N']))\n"
        "    out = helper.make_tensor_value_info('loss', T.FLOAT, [])\n"
        "onnx.save(helper.make_model(helper.make_graph(nodes, 'mlp', ins, [out], inits)), sys.argv[1])\n";
    const char *onnx = tp("mlp.onnx"), *imported = tp("mlp-imported.json"), *zoo = tp("mlp-zoo.json");
    python(gen, onnx, "logits");
    Res r = { 0 };
    /* its batch is dynamic: refused without --batch, naming it */
    STRATA(&r, "model", "import", onnx, "-o", imported);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "\"x\"", "dynamic", "--batch");
    STRATA(&r, "model", "import", onnx, "--batch", "8", "-o", imported);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "build", "mlp", "-o", zoo);
    EXPECT_RC(&r, 0);
    expect_same_model(imported, zoo);

    /* it lowers, estimates and runs, checked against one rank, on 2 CPU ranks */
    estimate_and_verify(imported, "dp", NULL);

    /* with a squared-error loss against float targets, the zoo's mlp --loss mse */
    STRATA(&r, "model", "import", onnx, "--batch", "8", "--loss", "mse", "-o", imported);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "build", "mlp", "--loss", "mse", "-o", zoo);
    EXPECT_RC(&r, 0);
    expect_same_model(imported, zoo);
    estimate_and_verify(imported, "dp", NULL);

    /* a graph that ends in its own loss (SoftmaxCrossEntropyLoss, the labels
     * a second input) keeps it: the zoo's mlp again, and no second loss */
    const char *with_loss = tp("mlp-loss.onnx");
    python(gen, with_loss, "loss");
    STRATA(&r, "model", "import", with_loss, "--batch", "8", "-o", imported);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "build", "mlp", "-o", zoo);
    EXPECT_RC(&r, 0);
    expect_same_model(imported, zoo);
    STRATA(&r, "model", "import", with_loss, "--batch", "8", "--loss", "mse");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--loss mse", "its own loss");
}

/* SqueezeNet's fire modules (Concat of two expands) written with
 * onnx.helper: the import is the zoo's fire, with its stem outside the two
 * blocks, and trains data parallel checked against one rank. */
static void test_helper_fire_equals_the_zoo(void **state)
{
    (void)state;
    const char *onnx = tp("fire.onnx"), *imported = tp("fire-imported.json"), *zoo = tp("fire-zoo.json");
    model_py("fire", onnx);
    Res r = { 0 };
    STRATA(&r, "model", "import", onnx, "--batch", "8", "-o", imported);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "build", "fire", "-o", zoo);
    EXPECT_RC(&r, 0);
    expect_same_model(imported, zoo);
    estimate_and_verify(imported, "dp", NULL);
}

/* A GPT-2-style decoder written the ways exporters write it (layer norm and
 * GELU as one op and spelled out, the mask added and as a Where, the scale
 * on the scores and on the queries, heads by Reshape and Transpose, the
 * logits tied to the embedding): the import is the zoo's gpt, op for op. */
static void test_helper_gpt_equals_the_zoo(void **state)
{
    (void)state;
    const char *onnx = tp("gpt.onnx"), *imported = tp("gpt-imported.json"), *zoo = tp("gpt-zoo.json");
    model_py("gpt", onnx);
    Res r = { 0 };
    STRATA(&r, "model", "import", onnx, "--batch", "4", "-o", imported);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "build", "gpt", "--preset", "small", "-o", zoo);
    EXPECT_RC(&r, 0);
    expect_same_model(imported, zoo);
    /* the attention as the zoo writes it: heads and positions have letters */
    char *text = harness_slurp(imported, NULL);
    cJSON *m = cJSON_Parse(text), *op;
    free(text);
    assert_non_null(m);
    int causal = 0, heads = 0;
    cJSON_ArrayForEach(op, cJSON_GetObjectItem(m, "ops")) {
        const char *spec = cJSON_GetObjectItem(op, "spec")->valuestring;
        if (!strcmp(cJSON_GetObjectItem(op, "kind")->valuestring, "softmax")) {
            causal += cJSON_IsTrue(cJSON_GetObjectItem(op, "causal"));
            assert_true(fabs(cJSON_GetObjectItem(op, "scale")->valuedouble - 0.25) < 1e-6);
        }
        heads += !strcmp(spec, "bsh,hnd->bsnd") || !strcmp(spec, "bsnd,btnd->bnst");
    }
    cJSON_Delete(m);
    assert_int_equal(causal, 2);
    assert_int_equal(heads, 2 * 4);

    /* tensor parallel over the heads, checked against one rank */
    estimate_and_verify(imported, "megatron", "--tp");
}

static void test_imported_resnet_searches(void **state)
{
    (void)state;
    char src[4096];
    snprintf(src, sizeof src, "%s/light_resnet50.onnx", light);
    const char *out = tp("resnet.json");
    Res r = { 0 };
    STRATA(&r, "model", "import", src, "--batch", "64", "--name", "resnet50-onnx", "-o", out);
    EXPECT_RC(&r, 0);
    STRATA(&r, "search", "--model", out, "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--budget", "150evals", "--db", tp("onnx.db"), "--json");
    EXPECT_RC(&r, 0);
    assert_true(JNUM(JSON_OUT(&r), "step_time_s") > 0);
}

static void test_refusals(void **state)
{
    (void)state;
    static const char gen[] =
        "import sys, onnx\n"
        "from onnx import helper, TensorProto as T\n"
        "n = helper.make_node('LSTM', ['x', 'w', 'r'], ['y'], name='rnn0', hidden_size=8)\n"
        "inits = [helper.make_tensor('w', T.FLOAT, [1, 32, 4], [0.0] * 128),\n"
        "         helper.make_tensor('r', T.FLOAT, [1, 32, 8], [0.0] * 256)]\n"
        "g = helper.make_graph([n], 'rnn', [helper.make_tensor_value_info('x', T.FLOAT, [5, 2, 4])],\n"
        "                      [helper.make_tensor_value_info('y', T.FLOAT, None)], inits)\n"
        "onnx.save(helper.make_model(g), sys.argv[1])\n";
    const char *onnx = tp("rnn.onnx");
    python(gen, onnx, "");
    Res r = { 0 };
    STRATA(&r, "model", "import", onnx);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "rnn0", "LSTM", "does not import");
    write_file(tp("junk.onnx"), "this is not a protobuf of any kind");
    STRATA(&r, "model", "import", tp("junk.onnx"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "not an ONNX model");
    STRATA(&r, "model", "import", onnx, "--loss", "hinge");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--loss", "\"hinge\"", "cross_entropy, ce or mse");
    /* an attention mask that is not causal, and a quotient of activations */
    static const char masks[] =
        "import sys, onnx, numpy as np\n"
        "from onnx import helper, numpy_helper, TensorProto as T\n"
        "bad = numpy_helper.from_array(np.triu(np.full((4, 4), -1e9, np.float32)), 'mask')\n"
        "w = numpy_helper.from_array(np.zeros((4, 4), np.float32), 'w')\n"
        "op = sys.argv[2]\n"
        "n = [helper.make_node('MatMul', ['x', 'w'], ['y']),\n"
        "     helper.make_node('Add', ['y', 'mask'], ['z'], name='masked') if op == 'mask' else\n"
        "     helper.make_node('Div', ['y', 'x'], ['z'], name='ratio')]\n"
        "g = helper.make_graph(n, 'm', [helper.make_tensor_value_info('x', T.FLOAT, [4, 4])],\n"
        "                      [helper.make_tensor_value_info('z', T.FLOAT, [4, 4])], [bad, w])\n"
        "onnx.save(helper.make_model(g), sys.argv[1])\n";
    python(masks, tp("mask.onnx"), "mask");
    STRATA(&r, "model", "import", tp("mask.onnx"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "\"masked\" (Add)", "no causal attention mask");
    python(masks, tp("ratio.onnx"), "ratio");
    STRATA(&r, "model", "import", tp("ratio.onnx"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "\"ratio\" (Div)", "divides activations");
    STRATA(&r, "model", "import", tp("missing.onnx"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "missing.onnx");
}

static int group_setup(void **state)
{
    (void)state;
    if (harness_setup(&(HarnessConfig){ .name = "test_onnx", .deadline_s = 600,
                                        .lsan_supp = "tests/lsan.supp" }))
        return -1;
    py = rp("build/venv/bin/python");
    static char dir[4096];
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s -c 'import onnx, os; print(os.path.dirname(onnx.__file__))' "
             "2>/dev/null", py);
    FILE *p = harness_exists(py) ? popen(cmd, "r") : NULL;
    char line[3000] = "";
    if (p) {
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        pclose(p);
    }
    line[strcspn(line, "\n")] = 0;
    snprintf(dir, sizeof dir, "%s/backend/test/data/light", line);
    light = dir;
    if (!line[0] || !harness_exists(light)) {
        fprintf(stderr, "test_onnx: %s or the onnx package in it is missing: run sh "
                "scripts/setup.sh test\n", py);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

#define T(f) cmocka_unit_test_teardown(f, harness_release_all)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_light_models_match_the_published_figures), T(test_helper_mlp_equals_the_zoo),
        T(test_helper_gpt_equals_the_zoo), T(test_helper_fire_equals_the_zoo),
        T(test_imported_resnet_searches), T(test_refusals),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
