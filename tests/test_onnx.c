/*
 * test_onnx.c — `strata model import` on models no one here wrote: the
 * reduced ("light") ResNet-50 and VGG-19 the `onnx` package ships in its
 * backend test data (build/venv; `sh scripts/setup.sh test` installs it),
 * their parameters and forward FLOPs against the published figures; an MLP
 * written with onnx.helper, whose import must equal the zoo's own; the
 * imported models lowered, estimated, searched, and the MLP run with
 * --verify on 2 CPU ranks; what does not map refused with the node named.
 */
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
        "g = helper.make_graph(nodes, 'mlp', [helper.make_tensor_value_info('x', T.FLOAT, ['N', 32])],\n"
        "                      [helper.make_tensor_value_info(x, T.FLOAT, ['N', 10])], inits)\n"
        "onnx.save(helper.make_model(g), sys.argv[1])\n";
    const char *onnx = tp("mlp.onnx"), *imported = tp("mlp-imported.json"), *zoo = tp("mlp-zoo.json");
    python(gen, onnx, "");
    Res r = { 0 };
    /* its batch is dynamic: refused without --batch, naming it */
    STRATA(&r, "model", "import", onnx, "-o", imported);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "\"x\"", "dynamic", "--batch");
    STRATA(&r, "model", "import", onnx, "--batch", "8", "-o", imported);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "build", "mlp", "-o", zoo);
    EXPECT_RC(&r, 0);
    double p1, f1, p2, f2;
    stats(imported, &p1, &f1);
    stats(zoo, &p2, &f2);
    assert_true(p1 == p2 && f1 == f2);
    STRATA(&r, "model", "show", imported, "--json");
    cJSON *a = JSON_OUT(&r);
    STRATA(&r, "model", "show", zoo, "--json");
    cJSON *b = JSON_OUT(&r);
    assert_int_equal((int)JNUM(a, "blocks"), (int)JNUM(b, "blocks"));
    assert_true(JNUM(a, "train_flops") == JNUM(b, "train_flops"));

    /* it lowers, estimates and runs, checked against one rank, on 2 CPU ranks */
    const char *st = tp("mlp-dp.json");
    STRATA(&r, "strategy", "build", "dp", "--model", imported, "--world", "2", "-o", st);
    EXPECT_RC(&r, 0);
    STRATA(&r, "estimate", "--model", imported, "--cluster", rp("clusters/local-cpu.json"),
           "--strategy", st, "--no-store");
    EXPECT_RC(&r, 0);
    STRATA(&r, "run", "--model", imported, "--strategy", st, "--steps", "3", "--verify",
           "--no-store");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "verify");
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
    char src[4096];
    snprintf(src, sizeof src, "%s/light_vgg19.onnx", light);
    STRATA(&r, "model", "import", src, "--loss", "mse");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "--loss mse");
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
        T(test_imported_resnet_searches), T(test_refusals),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
