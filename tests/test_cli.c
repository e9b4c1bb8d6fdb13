/*
 * test_cli.c — the `strata` command line end to end, as a new user meets it:
 * build zoo models, show clusters, build and validate strategies, lower them,
 * store plans and read them back, and every way of getting the input wrong.
 *
 * Runs the binary named by STRATA_BIN (the Makefile exports it: build/strata,
 * or build/san/strata under SAN=1) and reads data under STRATA_ROOT, through
 * the harness in tests/support/cli_harness.h: each run is fork + execv with an
 * argv array (no shell), stdout and stderr captured in files of one temporary
 * directory (mkdtemp), which is also the child's cwd, so a default strata.db
 * can only land there, and any run past DEADLINE_S is killed and fails. Every
 * model, strategy and database the tests make lives in that directory; it is
 * removed at the end (set STRATA_KEEP_TMP=1 to keep it).
 *
 * Exit codes checked everywhere: 0 success, 1 runtime failure (bad file, bad
 * value inside a file, unwritable path), 2 usage error (unknown command or
 * option, missing or malformed option). Error messages must name the file, the
 * option or the JSON path, and the reason.
 */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <sqlite3.h>

#include "tests/support/cli_harness.h"

/* Seconds any one command may take before it is killed and the test fails:
 * every command here takes well under a second, but a sanitizer build on a
 * loaded machine is slow. */
#define DEADLINE_S 120

/* Fixtures built on first use (paths in the temporary directory). */
static struct {
    const char *gpt;             /* gpt --layers 4 --batch 8 (8-way splits divide it) */
    const char *dp4;             /* dp over local-cpu --nodes 4 on `gpt` */
} G;

/* ----------------------------------------------------------------------------
 * Fixtures */

/* The small GPT every strategy test uses: batch 8 so 8-way data parallelism
 * divides it, 4 blocks so 2 and 4 pipeline stages cut it evenly. */
static const char *gpt_model(void)
{
    if (G.gpt) return G.gpt;
    const char *p = tp("gpt4.json");
    Res r = {0};
    STRATA(&r, "model", "build", "gpt", "--layers", "4", "--batch", "8", "-o", p);
    EXPECT_RC(&r, 0);
    res_free(&r);
    return G.gpt = p;
}

/* A pure data-parallel strategy over the 4 devices of local-cpu --nodes 4. */
static const char *dp4_strategy(void)
{
    if (G.dp4) return G.dp4;
    const char *p = tp("dp4.json");
    Res r = {0};
    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--cluster",
           rp("clusters/local-cpu.json"), "--nodes", "4", "-o", p);
    EXPECT_RC(&r, 0);
    EXPECT_ERR(&r, "4 devices");
    res_free(&r);
    return G.dp4 = p;
}

/* Writes models/tiny-mlp.json, changed by `mutate`, to path. */
static void write_mutated(const char *src, const char *path, void (*mutate)(cJSON *))
{
    char *text = slurp(rp(src), NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    mutate(j);
    char *out = cJSON_Print(j);
    write_file(path, out);
    cJSON_free(out);
    cJSON_Delete(j);
}

static cJSON *at(cJSON *j, const char *arr, int i)
{
    cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, arr), i);
    assert_non_null(v);
    return v;
}

static void set(cJSON *obj, const char *key, cJSON *v)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
    else
        cJSON_AddItemToObject(obj, key, v);
}

static void set_shape(cJSON *j, int tensor, double d0, double d1)
{
    double dims[2] = { d0, d1 };
    set(at(j, "tensors", tensor), "shape", cJSON_CreateDoubleArray(dims, 2));
}

static void set_input(cJSON *j, int op, int k, const char *name)
{
    cJSON *ins = cJSON_GetObjectItemCaseSensitive(at(j, "ops", op), "inputs");
    assert_true(cJSON_ReplaceItemInArray(ins, k, cJSON_CreateString(name)));
}

/* tiny-mlp: tensors[0] x [8,16], tensors[2] fc1.w [16,32]; ops[0] fc1 (x, fc1.w),
 * ops[1] fc1_bias (fc1, fc1.b), ops[2] relu1 (fc1_bias) -> relu1. */
static void m_unknown_kind(cJSON *j) { set(at(j, "ops", 0), "kind", cJSON_CreateString("matmull")); }
static void m_undefined_input(cJSON *j) { set_input(j, 1, 1, "nope"); }
static void m_shape_mismatch(cJSON *j) { set_shape(j, 2, 17, 32); }
static void m_produced_later(cJSON *j) { set_input(j, 0, 0, "relu1"); }
static void m_own_output(cJSON *j) { set_input(j, 2, 0, "relu1"); }
static void m_zero_dim(cJSON *j) { set_shape(j, 0, 0, 16); }
static void m_negative_dim(cJSON *j) { set_shape(j, 0, -3, 16); }
static void m_fraction_dim(cJSON *j) { set_shape(j, 0, 8, 16.5); }
static void m_overflow(cJSON *j) { set_shape(j, 0, 4294967296.0, 4294967296.0); }
static void m_unknown_field(cJSON *j) { cJSON_AddNumberToObject(j, "bogus", 1); }
static void m_duplicate_op(cJSON *j) { set(at(j, "ops", 1), "name", cJSON_CreateString("fc1")); }
static void m_ops_not_array(cJSON *j) { set(j, "ops", cJSON_CreateString("fc1")); }
static void m_param_output(cJSON *j) { set(at(j, "tensors", 8), "role", cJSON_CreateString("param")); }
static void m_bad_dtype(cJSON *j) { set(at(j, "tensors", 0), "dtype", cJSON_CreateString("f64")); }
static void m_escape_name(cJSON *j) { set(j, "name", cJSON_CreateString("x\x1b[31mred")); }
static void m_no_ops(cJSON *j)
{
    set(j, "ops", cJSON_CreateArray());
    set(j, "tensors", cJSON_CreateArray());
}

/* local-cpu: devices[0] count 2, levels[0] core x2. */
static void c_count_mismatch(cJSON *j) { set(at(j, "levels", 0), "count", cJSON_CreateNumber(3)); }
static void c_negative_bw(cJSON *j) { set(at(j, "levels", 0), "bw_gbps", cJSON_CreateNumber(-1)); }
static void c_bad_kind(cJSON *j) { set(at(j, "devices", 0), "kind", cJSON_CreateString("tpu")); }
static void c_unknown_field(cJSON *j) { cJSON_AddNumberToObject(j, "bogus", 1); }
static void c_no_levels(cJSON *j) { cJSON_DeleteItemFromObjectCaseSensitive(j, "levels"); }

/* ----------------------------------------------------------------------------
 * Usage: help, unknown commands and options, missing options */

static const char *const SUBCOMMANDS[][3] = {
    { "model", "build", NULL }, { "model", "show", NULL }, { "model", "list", NULL },
    { "cluster", "show", NULL }, { "strategy", "build", NULL }, { "strategy", "show", NULL },
    { "lower", NULL, NULL }, { "plans", "list", NULL }, { "plans", "show", NULL },
};
#define NSUB (int)(sizeof SUBCOMMANDS / sizeof SUBCOMMANDS[0])

static void test_help(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "help");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "usage: strata COMMAND", "model build", "cluster show", "strategy build",
               "lower", "plans list", "plans show");
    STRATA(&r, "--help");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "usage: strata COMMAND");

    /* no command at all: usage on stderr, exit 2 */
    const char *none[] = { NULL };
    RUNV(&r, none);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "usage: strata COMMAND");
    assert_string_equal(r.out, "");

    /* every subcommand's --help exits 0 with its usage line */
    for (int i = 0; i < NSUB; i++) {
        const char *argv[4] = { SUBCOMMANDS[i][0], SUBCOMMANDS[i][1] ? SUBCOMMANDS[i][1] : "--help",
                                SUBCOMMANDS[i][1] ? "--help" : NULL, NULL };
        RUNV(&r, argv);
        EXPECT_RC(&r, 0);
        char want[64];
        snprintf(want, sizeof want, "usage: strata %s%s%s", SUBCOMMANDS[i][0],
                 SUBCOMMANDS[i][1] ? " " : "", SUBCOMMANDS[i][1] ? SUBCOMMANDS[i][1] : "");
        if (!strstr(r.out, want) && !strstr(r.err, want)) {
            print_error("no \"%s\" in the help\n", want);
            dump(&r);
            fail();
        }
    }
    /* the zoo's help lists every kind and its options */
    STRATA(&r, "model", "build", "gpt", "--help");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "mlp", "gpt", "bert", "vgg16", "resnet", "fire", "moe", "dlrm", "--preset",
               "gpt3-175b", "--loss");
    res_free(&r);
}

/* Regression: help that was asked for goes to stderr (only `model build KIND --help`
 * uses stdout), so `strata lower --help | less` shows nothing. Asked-for help
 * belongs on stdout; usage after a mistake on stderr. */
static void test_help_on_stdout(void **state)
{
    (void)state;
    Res r = {0};
    for (int i = 0; i < NSUB; i++) {
        const char *argv[4] = { SUBCOMMANDS[i][0], SUBCOMMANDS[i][1] ? SUBCOMMANDS[i][1] : "--help",
                                SUBCOMMANDS[i][1] ? "--help" : NULL, NULL };
        RUNV(&r, argv);
        EXPECT_RC(&r, 0);
        EXPECT_OUT(&r, "usage: strata");
    }
    res_free(&r);
}

/* Regression: the top-level usage says "COMMAND --help for its options", yet
 * `strata model --help` exits 2 with "unknown or missing subcommand --help". */
static void test_group_help(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "model", "--help");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "build", "show", "list");
    STRATA(&r, "plans", "-h");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "list", "show");
    res_free(&r);
}

static void test_unknown_command_subcommand_option(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "frobnicate");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown command 'frobnicate'");

    STRATA(&r, "model", "frob");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "frob", "build", "show", "list");

    STRATA(&r, "plans");                       /* missing subcommand */
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "missing subcommand", "list", "show");

    STRATA(&r, "model", "show", rp("models/tiny-mlp.json"), "--bogus");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown option --bogus");

    STRATA(&r, "cluster", "show", rp("clusters/local-cpu.json"), "-x");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown option -x");

    STRATA(&r, "lower", "--strategy", "s.json", "--model", "m.json", "--cluster", "c.json",
           "--bogus=1");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown option --bogus");

    STRATA(&r, "plans", "list", "--json=yes");  /* a flag given a value */
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--json", "takes no value");

    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--world");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--world", "needs a value");
    /* another option where a value belongs is not taken as the value */
    STRATA(&r, "strategy", "build", "dp", "--model", "--json");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--model", "needs a value", "--json is another option");
    /* the zoo's options are open, but one it does not know is named as such */
    STRATA(&r, "model", "build", "mlp", "--bogus");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown option --bogus", "--layers");

    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--world", "eight");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--world", "'eight' is not an integer");

    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--world", "0");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--world", "out of range");

    STRATA(&r, "model", "show", rp("models/tiny-mlp.json"), "extra");   /* one FILE only */
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "usage: strata model show");

    STRATA(&r, "plans", "list", "extra");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "usage: strata plans list");
    res_free(&r);
}

static void test_missing_required_lower(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "lower");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--strategy", "required");

    STRATA(&r, "lower", "--strategy", dp4_strategy());
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--model", "--cluster", "required");

    STRATA(&r, "lower", "--strategy", dp4_strategy(), "--model", gpt_model());
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--cluster", "required");

    STRATA(&r, "model", "show");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "usage: strata model show FILE");

    STRATA(&r, "plans", "show");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "usage: strata plans show ID");
    res_free(&r);
}

/* Regression: `strata lower` with no options names only --strategy; after adding it
 * the user learns about --model and --cluster. One run should name all the
 * missing required options. */
static void test_lower_names_all_missing(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "lower");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--model", "--cluster", "--strategy");
    STRATA(&r, "lower", "--model", gpt_model());
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--cluster", "--strategy");
    res_free(&r);
}

/* Regression: `strategy build`/`strategy show` without --model exit 1 (runtime
 * failure) instead of 2 (usage), unlike `lower` without --model; the message
 * also lacks the "strata strategy build:" prefix other usage errors carry. */
static void test_strategy_missing_model_is_usage(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "strategy", "build", "dp", "--world", "2");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--model", "required");
    STRATA(&r, "strategy", "show", dp4_strategy());
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--model", "required");
    res_free(&r);
}

/* Regression: a bad --nodes is a usage error (2) for `cluster show` but a runtime
 * failure (1) for `strategy build`, `strategy show` and `lower`, which read it
 * in load_model_cluster; so is --nodes without --cluster. */
static void test_nodes_errors_are_usage_everywhere(void **state)
{
    (void)state;
    Res r = {0};
    const char *c = rp("clusters/dgx-a100-80gb.json");
    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--cluster", c, "--nodes", "0");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--nodes", "out of range");
    /* an integer option is digits, a minus sign at most */
    const char *loose[] = { "+2", " 2", "2 ", "0x2", "2.0" };
    for (int k = 0; k < 5; k++) {
        STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--cluster", c, "--nodes",
               loose[k]);
        EXPECT_RC(&r, 2);
        EXPECT_ERR(&r, "--nodes", "is not an integer");
    }
    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--nodes", "2");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--nodes", "--cluster");
    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", c, "--nodes", "x", "--strategy",
           dp4_strategy(), "--no-store");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--nodes", "not an integer");
    res_free(&r);
}

/* Regression: an unknown strategy kind exits 1, while an unknown model kind
 * (`model build bogus`) exits 2; both are a mistyped positional argument. */
static void test_strategy_unknown_kind_is_usage(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "model", "build", "bogus");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown model kind \"bogus\"", "mlp", "dlrm");
    STRATA(&r, "strategy", "build", "bogus", "--model", gpt_model());
    EXPECT_ERR(&r, "unknown strategy kind \"bogus\"", "dp", "megatron", "sfb");
    EXPECT_RC(&r, 2);
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * model build / show */

typedef struct {
    const char *kind;
    const char *opts[12];
    const char *name;         /* the model's name in `model show` */
    double params;            /* exact, or 0 when not checked here */
} ZooCase;

/* Closed forms for the exact counts:
 *   mlp  (in 32, hidden 64 x2, classes 10): 32*64+64 + 64*64+64 + 64*10+10 = 6922
 *   gpt  (l 2, h 64, s 32, v 256, tied): v*h + s*h + l*(12h^2 + 13h) + 2h = 118528 */
static const ZooCase ZOO[] = {
    { "mlp", { "--layers", "2", "--hidden", "64", "--input", "32", "--classes", "10" }, "mlp", 6922 },
    { "gpt", { "--layers", "2", "--hidden", "64", "--heads", "4", "--seq", "32", "--vocab", "256" },
      "gpt", 118528 },
    { "bert", { "--layers", "2", "--hidden", "64", "--seq", "16" }, "bert", 0 },
    { "vgg16", { "--batch", "2", "--image", "32", "--classes", "10" }, "vgg16", 0 },
    { "resnet", { "--batch", "2", "--image", "32", "--classes", "10" }, "resnet50", 0 },
    { "moe", { "--layers", "2", "--experts", "4" }, "moe", 0 },
    { "dlrm", { "--rows", "100", "--batch", "8", "--tables", "2" }, "dlrm", 0 },
    { "fire", { "--batch", "2", "--image", "16" }, "fire", 0 },
    /* the mse head has the ce head's params */
    { "mlp", { "--layers", "2", "--hidden", "64", "--input", "32", "--classes", "10", "--loss",
               "mse" }, "loss=mse", 6922 },
};

static void test_model_build_and_show_every_kind(void **state)
{
    (void)state;
    Res r = {0};
    for (size_t k = 0; k < sizeof ZOO / sizeof ZOO[0]; k++) {
        const ZooCase *z = &ZOO[k];
        char file[64];
        snprintf(file, sizeof file, "zoo-%s.json", z->kind);
        const char *path = tp(file);
        const char *argv[20] = { "model", "build", z->kind };
        int n = 3;
        for (int i = 0; z->opts[i]; i++) argv[n++] = z->opts[i];
        argv[n++] = "-o";
        argv[n++] = path;
        argv[n] = NULL;
        RUNV(&r, argv);
        EXPECT_RC(&r, 0);
        EXPECT_ERR(&r, "wrote ", path);
        assert_string_equal(r.out, "");          /* -o: nothing on stdout */
        assert_true(exists(path));

        STRATA(&r, "model", "show", path);
        EXPECT_RC(&r, 0);
        EXPECT_OUT(&r, "model ", z->name, "parameters", "FLOPs per step", "activations", "block");
        char text_id[17];
        id_after(r.out, "(id ", text_id);

        STRATA(&r, "model", "show", path, "--json");
        EXPECT_RC(&r, 0);
        cJSON *j = JSON_OUT(&r);
        double params = JNUM(j, "params"), flops = JNUM(j, "train_flops");
        double fwd = JNUM(j, "fwd_flops"), pbytes = JNUM(j, "param_bytes");
        assert_true(params > 0);
        assert_true(flops > fwd && fwd > 0);     /* backward costs something */
        assert_true(pbytes == 4 * params);       /* every zoo default is f32 */
        assert_string_equal(JSTR(j, "id"), text_id);
        assert_non_null(strstr(JSTR(j, "name"), z->name));
        if (z->params > 0 && params != z->params) {
            print_error("%s: params %.0f, expected %.0f\n", z->kind, params, z->params);
            fail();
        }
        /* the per-block rows add up to the totals */
        const cJSON *pb = JARR(j, "per_block"), *row;
        double sum_p = 0, sum_f = 0;
        cJSON_ArrayForEach(row, pb) {
            sum_p += JNUM(row, "params");
            sum_f += JNUM(row, "train_flops");
        }
        assert_true(sum_p == params);
        assert_true(fabs(sum_f - flops) <= 1e-9 * flops);
        release(j);
    }
    res_free(&r);
}

static void test_model_build_dtype_and_stdout(void **state)
{
    (void)state;
    Res r = {0};
    /* without -o the JSON goes to stdout and is a loadable model */
    STRATA(&r, "model", "build", "mlp", "--dtype", "bf16");
    EXPECT_RC(&r, 0);
    cJSON *m = JSON_OUT(&r);
    assert_true(cJSON_IsArray(JARR(m, "tensors")) && cJSON_IsArray(JARR(m, "ops")));
    char *text = cJSON_Print(m);
    const char *path = tp("mlp-bf16.json");
    write_file(path, text);
    cJSON_free(text);
    release(m);

    STRATA(&r, "model", "show", path, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_true(JNUM(j, "param_bytes") == 2 * JNUM(j, "params"));   /* bf16: 2 bytes */
    release(j);

    /* -o through a link (as /dev/stdout is one) writes where it points and
     * leaves the link a link */
    const char *target = tp("target.json"), *link = tp("link.json");
    write_file(target, "");
    assert_int_equal(symlink(target, link), 0);
    STRATA(&r, "model", "build", "mlp", "-o", link);
    EXPECT_RC(&r, 0);
    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    STRATA(&r, "model", "show", target, "--json");
    EXPECT_RC(&r, 0);
    res_free(&r);
}

static void test_gpt3_175b(void **state)
{
    (void)state;
    Res r = {0};
    const char *path = tp("gpt3-175b.json");
    STRATA(&r, "model", "build", "gpt", "--preset", "gpt3-175b", "-o", path);
    EXPECT_RC(&r, 0);
    STRATA(&r, "model", "show", path, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    double p = JNUM(j, "params"), f = JNUM(j, "train_flops");
    if (fabs(p - 174.6e9) > 1e-3 * 174.6e9) {
        print_error("GPT-3 175B: %.4g params, expected 174.6e9 within 0.1%%\n", p);
        fail();
    }
    assert_int_equal((int)JNUM(j, "blocks"), 96);
    /* Narayanan et al. (2021), without recompute: 72 B s l h^2 (1 + s/6h + V/12hl),
     * B = 1536, s = 2048, l = 96, h = 12288, V = 51200. */
    double B = 1536, s = 2048, l = 96, h = 12288, V = 51200;
    double want = 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * h * l));
    if (fabs(f - want) > 0.01 * want) {
        print_error("GPT-3 175B: %.4g training FLOPs, expected %.4g within 1%%\n", f, want);
        fail();
    }
    release(j);

    /* One lowering at full scale: Megatron's 1024-GPU layout (tp 8, pp 16, dp 8). */
    const char *c = rp("clusters/dgx-a100-80gb.json"), *sp = tp("gpt3-megatron.json");
    STRATA(&r, "strategy", "build", "megatron", "--model", path, "--cluster", c, "--nodes", "128",
           "--tp", "8", "--pp", "16", "-o", sp);
    EXPECT_RC(&r, 0);
    EXPECT_ERR(&r, "1024 devices");
    STRATA(&r, "lower", "--model", path, "--cluster", c, "--nodes", "128", "--strategy", sp,
           "--json", "--no-store");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    assert_int_equal((int)JNUM(j, "ranks"), 1024);
    const cJSON *cls = JARR(j, "classes"), *it;
    int nranks = 0;
    bool stage_seen[16] = { false };
    cJSON_ArrayForEach(it, cls) {
        nranks += cJSON_GetArraySize(JARR(it, "ranks"));
        int st = (int)JNUM(it, "stage");
        assert_in_range(st, 0, 15);
        stage_seen[st] = true;
        const cJSON *cb = JOBJ(it, "comm_bytes");
        assert_true(JNUM(cb, "allreduce") > 0);  /* tensor and data parallel both all-reduce */
    }
    assert_int_equal(nranks, 1024);              /* every rank in exactly one class */
    for (int i = 0; i < 16; i++) assert_true(stage_seen[i]);
    release(j);
    EXPECT_ABSENT(tp("strata.db"));
    res_free(&r);
}

static void test_model_build_bad_options(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "model", "build", "gpt", "--layers", "0");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--layers", "out of range");
    STRATA(&r, "model", "build", "gpt", "--layerz", "3");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "unknown option --layerz", "--layers");
    STRATA(&r, "model", "build", "gpt", "--heads", "5");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--heads", "does not divide");
    STRATA(&r, "model", "build", "gpt", "--preset", "gpt5");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--preset", "\"gpt5\"", "gpt3-175b");
    STRATA(&r, "model", "build", "gpt", "--hidden=abc");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--hidden", "not an integer");
    STRATA(&r, "model", "build", "mlp", "--dtype", "f64");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--dtype", "f64");
    STRATA(&r, "model", "build", "dlrm", "--top", "1,2,x");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--top", "1,2,x");
    STRATA(&r, "model", "build", "resnet", "--depth", "34");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--depth", "50, 101, 152");
    STRATA(&r, "model", "build", "mlp", "-o");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--output", "needs a value");
    /* an -o nowhere is refused before any work, naming the path */
    STRATA(&r, "model", "build", "mlp", "-o", "/proc/nonexistent/m.json");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "/proc/nonexistent/m.json", "is not there");
    res_free(&r);
}

typedef struct {
    const char *file;
    void (*mutate)(cJSON *);
    const char *where, *why;
} BadCase;

static const BadCase BAD_MODELS[] = {
    { "bad-kind.json", m_unknown_kind, "ops[0]", "unknown kind \"matmull\"" },
    { "bad-undefined.json", m_undefined_input, "ops[1].inputs[1]", "tensor \"nope\" is not defined" },
    { "bad-shape.json", m_shape_mismatch, "ops[0].spec", "letter 'i' has size 16" },
    { "bad-later.json", m_produced_later, "ops[0].inputs[0]", "produced later" },
    { "bad-cycle.json", m_own_output, "ops[2].inputs[0]", "cycle" },
    { "bad-zero.json", m_zero_dim, "tensors[0].shape[0]", "not positive" },
    { "bad-negative.json", m_negative_dim, "tensors[0].shape[0]", "-3 is not positive" },
    { "bad-fraction.json", m_fraction_dim, "tensors[0].shape[1]", "positive integer" },
    { "bad-overflow.json", m_overflow, "tensors[0].shape", "overflows" },
    { "bad-field.json", m_unknown_field, "unknown field \"bogus\"", "allowed" },
    { "bad-dup.json", m_duplicate_op, "ops[1].name", "duplicate op name \"fc1\"" },
    { "bad-ops.json", m_ops_not_array, "ops", "expected an array" },
    { "bad-role.json", m_param_output, "ops[0].output", "role param" },
    { "bad-dtype.json", m_bad_dtype, "tensors[0].dtype", "\"f64\"" },
    { "bad-no-ops.json", m_no_ops, "ops", "at least one op" },
};

static void test_bad_model_files(void **state)
{
    (void)state;
    Res r = {0};
    /* the unchanged file loads: the mutations below are the only fault */
    STRATA(&r, "model", "show", rp("models/tiny-mlp.json"));
    EXPECT_RC(&r, 0);

    for (size_t i = 0; i < sizeof BAD_MODELS / sizeof BAD_MODELS[0]; i++) {
        const BadCase *b = &BAD_MODELS[i];
        const char *path = tp(b->file);
        write_mutated("models/tiny-mlp.json", path, b->mutate);
        STRATA(&r, "model", "show", path);
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, path, b->where, b->why);
        assert_string_equal(r.out, "");
        /* every command that reads a model says the same */
        STRATA(&r, "strategy", "build", "dp", "--model", path, "--world", "2");
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, path, b->where);
    }

    /* invalid JSON: file, line and column of the fault */
    const char *inv = tp("bad-syntax.json");
    write_file(inv, "{\n  \"name\": \"x\",\n  \"ops\": [1,\n  }\n");
    STRATA(&r, "model", "show", inv, "--json");
    EXPECT_RC(&r, 1);
    char want[PATH_MAX + 16];
    snprintf(want, sizeof want, "%s:4:3", inv);
    EXPECT_ERR(&r, want, "invalid JSON");

    /* one value, each key once, no NUL in a string: the rest would be
     * silently dropped or cut */
    const char *more = tp("two-values.json");
    write_file(more, "{\"mesh\": {\"dp\": 2}}\n  }}}garbage\n");
    STRATA(&r, "strategy", "show", more, "--model", rp("models/tiny-mlp.json"));
    EXPECT_RC(&r, 1);
    snprintf(want, sizeof want, "%s:2:3", more);
    EXPECT_ERR(&r, want, "more after the JSON value");
    const char *twice = tp("twice.json");
    write_file(twice, "{\"name\": \"x\", \"ops\": [{\"kind\": \"matmul\", \"kind\": \"add\"}]}");
    STRATA(&r, "model", "show", twice);
    EXPECT_RC(&r, 1);
    snprintf(want, sizeof want, "%s:1:42", twice);
    EXPECT_ERR(&r, want, "ops[0]: \"kind\" is given twice");
    const char *nul = tp("nul.json");
    write_file(nul, "{\"name\": \"x\\u0000y\"}");
    STRATA(&r, "model", "show", nul);
    EXPECT_RC(&r, 1);
    snprintf(want, sizeof want, "%s:1:12", nul);
    EXPECT_ERR(&r, want, "\\u0000");

    /* names are printed back: no terminal escapes, UTF-8 only */
    const char *esc = tp("escape.json");
    write_mutated("models/tiny-mlp.json", esc, m_escape_name);
    STRATA(&r, "model", "show", esc);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "model.name: holds a control character (byte 1, 0x1b)");
    const char *latin = tp("latin1.json");
    write_file(latin, "{\"name\": \"caf\xe9\", \"tensors\": [], \"ops\": []}");
    STRATA(&r, "model", "show", latin);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "model.name: is not UTF-8 text (byte 3)");

    const char *empty = tp("empty.json");
    write_file(empty, "");
    STRATA(&r, "model", "show", empty);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, empty, "invalid JSON");

    STRATA(&r, "model", "show", tp("no-such-model.json"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no-such-model.json", "cannot open", "No such file");
    res_free(&r);
}

/* Regression: a directory given as a model file says "read error" (EISDIR lost);
 * the db layer says "is a directory", the model loader should too. */
static void test_model_file_is_directory(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "model", "show", harness_dir());
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, harness_dir(), "directory");
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * cluster show */

static void test_cluster_show(void **state)
{
    (void)state;
    Res r = {0};
    const char *dgx = rp("clusters/dgx-a100-80gb.json");
    STRATA(&r, "cluster", "show", dgx);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "cluster dgx-a100-80gb", ": 8 devices", "nvswitch", "infiniband");

    STRATA(&r, "cluster", "show", dgx, "--nodes", "4");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, ": 32 devices", "32 x a100-80gb");

    STRATA(&r, "cluster", "show", dgx, "--nodes", "4", "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_int_equal((int)JNUM(j, "ndevices"), 32);
    assert_string_equal(JSTR(j, "name"), "dgx-a100-80gb");
    /* the levels multiply to the device count */
    const cJSON *lv;
    int prod = 1;
    cJSON_ArrayForEach(lv, JARR(j, "levels")) prod *= (int)JNUM(lv, "count");
    assert_int_equal(prod, 32);
    release(j);

    /* every shipped cluster loads */
    const char *shipped[] = { "clusters/dgx-h100.json", "clusters/local-cpu.json" };
    for (int i = 0; i < 2; i++) {
        STRATA(&r, "cluster", "show", rp(shipped[i]), "--json");
        EXPECT_RC(&r, 0);
        j = JSON_OUT(&r);
        assert_true(JNUM(j, "ndevices") >= 1);
        release(j);
    }
    res_free(&r);
}

static void test_cluster_bad_nodes(void **state)
{
    (void)state;
    Res r = {0};
    const char *dgx = rp("clusters/dgx-a100-80gb.json");
    const char *bad[][2] = {
        { "0", "out of range" }, { "-1", "out of range" }, { "abc", "not an integer" },
        { "4x", "not an integer" }, { "", "the value is empty" }, { "99999999999", "out of range" },
        { "99999999999999999999", "out of range" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        STRATA(&r, "cluster", "show", dgx, "--nodes", bad[i][0]);
        EXPECT_RC(&r, 2);
        EXPECT_ERR(&r, "--nodes", bad[i][1]);
        assert_string_equal(r.out, "");
    }
    STRATA(&r, "cluster", "show", dgx, "--nodes");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--nodes", "needs a value");
    res_free(&r);
}

static const BadCase BAD_CLUSTERS[] = {
    { "badc-count.json", c_count_mismatch, "devices", "sum to 2 but the levels multiply to 3" },
    { "badc-bw.json", c_negative_bw, "levels[0].bw_gbps", "must be > 0" },
    { "badc-kind.json", c_bad_kind, "devices[0].kind", "\"tpu\"" },
    { "badc-field.json", c_unknown_field, "unknown field \"bogus\"", "allowed" },
    { "badc-levels.json", c_no_levels, "levels", "missing (required)" },
};

static void test_cluster_bad_files(void **state)
{
    (void)state;
    Res r = {0};
    for (size_t i = 0; i < sizeof BAD_CLUSTERS / sizeof BAD_CLUSTERS[0]; i++) {
        const BadCase *b = &BAD_CLUSTERS[i];
        const char *path = tp(b->file);
        write_mutated("clusters/local-cpu.json", path, b->mutate);
        STRATA(&r, "cluster", "show", path);
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, path, b->where, b->why);
    }
    const char *inv = tp("badc-syntax.json");
    write_file(inv, "{\"name\": \"x\",\n \"devices\": [}\n");
    STRATA(&r, "cluster", "show", inv);
    EXPECT_RC(&r, 1);
    char want[PATH_MAX + 16];
    snprintf(want, sizeof want, "%s:2:", inv);
    EXPECT_ERR(&r, want, "invalid JSON");
    STRATA(&r, "cluster", "show", tp("no-such-cluster.json"));
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no-such-cluster.json", "cannot open");
    /* the largest cluster is accepted: 131072 nodes x 8 GPUs; one node more is refused */
    STRATA(&r, "cluster", "show", rp("clusters/dgx-a100-80gb.json"), "--nodes", "131072");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "1048576 devices");
    STRATA(&r, "cluster", "show", rp("clusters/dgx-a100-80gb.json"), "--nodes", "131073");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "nodes: 131073", "more than 1048576 devices");
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * strategy build / show */

typedef struct {
    const char *kind;
    const char *opts[6];
    const char *mesh;         /* expected mesh, "pp=2 x dp=2 x tp=2" as printed */
    const char *sync;         /* a sync method some param must use, or NULL */
    const char *shard;        /* the shard every param must have, or NULL */
    const char *schedule;
} StratCase;

static const StratCase STRATS[] = {
    { "dp", { NULL }, "mesh dp=8\n", "allreduce", "none", "1f1b" },
    { "zero3", { NULL }, "mesh dp=8\n", "allreduce", "zero3", "1f1b" },
    { "megatron", { "--tp", "2", "--pp", "2" }, "mesh pp=2 x dp=2 x tp=2\n", "allreduce", "none",
      "1f1b" },
    { "gpipe", { "--pp", "4" }, "mesh pp=4 x dp=2\n", "allreduce", NULL, "gpipe" },
    { "ps", { NULL }, "mesh dp=8\n", "ps", NULL, "1f1b" },
    { "parallax", { NULL }, "mesh dp=8\n", "ps", NULL, "1f1b" },
    { "sfb", { NULL }, "mesh dp=8\n", "sfb", NULL, "1f1b" },
};

static void test_strategy_build_and_show_classics(void **state)
{
    (void)state;
    Res r = {0};
    const char *model = gpt_model();
    const char *dgx = rp("clusters/dgx-a100-80gb.json");
    for (size_t k = 0; k < sizeof STRATS / sizeof STRATS[0]; k++) {
        const StratCase *sc = &STRATS[k];
        char file[64];
        snprintf(file, sizeof file, "strat-%s.json", sc->kind);
        const char *path = tp(file);
        /* alternate between the world size from a cluster and from --world */
        const char *argv[24] = { "strategy", "build", sc->kind, "--model", model };
        int n = 5;
        if (k % 2) {
            argv[n++] = "--world";
            argv[n++] = "8";
        } else {
            argv[n++] = "--cluster";
            argv[n++] = dgx;
        }
        for (int i = 0; sc->opts[i]; i++) argv[n++] = sc->opts[i];
        argv[n++] = "-o";
        argv[n++] = path;
        argv[n] = NULL;
        RUNV(&r, argv);
        EXPECT_RC(&r, 0);
        EXPECT_ERR(&r, "8 devices");
        char id[17];
        id_after(r.err, "(id ", id);

        /* show: the same id, the mesh, the schedule */
        STRATA(&r, "strategy", "show", path, "--model", model, "--cluster", dgx);
        EXPECT_RC(&r, 0);
        char head[64];
        snprintf(head, sizeof head, "strategy %s: 8 devices", id);
        EXPECT_OUT(&r, head, sc->mesh, sc->schedule);

        /* --json: the canonical form, with every param's policy spelled out */
        STRATA(&r, "strategy", "show", path, "--model", model, "--json");
        EXPECT_RC(&r, 0);
        cJSON *j = JSON_OUT(&r);
        const cJSON *mesh = JOBJ(j, "mesh"), *ax;
        int world = 1;
        cJSON_ArrayForEach(ax, mesh) world *= ax->valueint;
        assert_int_equal(world, 8);
        assert_string_equal(JSTR(JOBJ(j, "pipeline"), "schedule"), sc->schedule);
        const cJSON *params = JOBJ(j, "params"), *p;
        bool sync_seen = false;
        int nparams = 0;
        cJSON_ArrayForEach(p, params) {
            nparams++;
            const char *m = JSTR(JOBJ(p, "sync"), "method");
            if (sc->sync && strcmp(m, sc->sync) == 0) sync_seen = true;
            if (sc->shard && strcmp(JSTR(p, "shard"), sc->shard) != 0) {
                print_error("%s: param %s has shard %s, expected %s\n", sc->kind, p->string,
                            JSTR(p, "shard"), sc->shard);
                fail();
            }
        }
        assert_true(nparams > 0);
        if (sc->sync && !sync_seen) {
            print_error("%s: no param synced by %s\n", sc->kind, sc->sync);
            fail();
        }
        release(j);

        /* the canonical form is a fixed point: shown again, same id and text */
        const char *canon = tp("canonical.json");
        write_file(canon, r.out);
        char *first = track(strdup(r.out));
        STRATA(&r, "strategy", "show", canon, "--model", model, "--json");
        EXPECT_RC(&r, 0);
        assert_string_equal(r.out, first);
        release(first);
        STRATA(&r, "strategy", "show", canon, "--model", model);
        EXPECT_RC(&r, 0);
        EXPECT_OUT(&r, head);
    }
    res_free(&r);
}

static void test_strategy_builder_errors(void **state)
{
    (void)state;
    Res r = {0};
    const char *model = gpt_model();
    /* 16-way data parallelism over a batch of 8 */
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "16");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "axis \"dp\" (size 16) does not divide letter b (size 8)");
    STRATA(&r, "strategy", "build", "megatron", "--model", model, "--world", "8", "--tp", "3");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "tp 3", "does not divide world 8");
    STRATA(&r, "strategy", "build", "megatron", "--model", model, "--world", "8", "--tp", "2",
           "--pp", "2", "--dp", "4");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "dp 4");
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--cluster",
           rp("clusters/local-cpu.json"), "--world", "4");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "world 4", "2 devices", "local-cpu");
    /* an option the kind does not take is the options' fault: a usage error */
    STRATA(&r, "strategy", "build", "ps", "--model", model, "--world", "2", "--compress", "fp16");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "compress");
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--tp", "2");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "tp 2", "only megatron");
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "2", "--compress", "zip");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "compress", "\"zip\"", "powersgd:R");
    /* the options' ranges are the strategy reader's: refused as options */
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "2", "--compress",
           "powersgd:2000");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--compress", "[1, 1024]");
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "16777216");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--world");
    STRATA(&r, "strategy", "build", "dp", "--model", model, "--world", "2", "-o",
           "/proc/nonexistent/s.json");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "/proc/nonexistent/s.json", "is not there");
    res_free(&r);
}

/* Regression: `--compress powersgd:R` (offered by `strategy build --help`) fails for
 * every zoo model: the builder applies it to params["*"], and the validator
 * rejects the 1-D biases and norm gains ("powersgd needs a param of at least 2
 * dims"). The builder should compress only the matrices (or the pattern should
 * skip params it cannot apply to, as patterns do for split letters). */
static void test_strategy_powersgd(void **state)
{
    (void)state;
    Res r = {0};
    STRATA(&r, "strategy", "build", "dp", "--model", gpt_model(), "--world", "2", "--compress",
           "powersgd:4");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    release(j);
    res_free(&r);
}

typedef struct {
    const char *file, *json, *where, *why;
    bool small_cluster;       /* check against local-cpu (2 devices) */
} BadStrategy;

static const BadStrategy BAD_STRATEGIES[] = {
    { "bs-letter.json", "{\"mesh\":{\"dp\":2,\"tp\":2},\"ops\":{\"embed\":{\"split\":{\"z\":\"tp\"}}}}",
      "ops[\"embed\"].split.z", "has no letter z", false },
    { "bs-divide.json",
      "{\"mesh\":{\"dp\":2,\"tp\":3},\"ops\":{\"blocks.0.mlp.fc1\":{\"split\":{\"f\":\"tp\"}}}}",
      "ops[\"blocks.0.mlp.fc1\"].split.f", "(size 3) does not divide letter f (size 256)", false },
    { "bs-cut-range.json", "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[7]}}",
      "pipeline.cuts[0]", "7 is not inside (0, 4)", false },
    { "bs-cut-zero.json", "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[0]}}",
      "pipeline.cuts[0]", "0 is not inside", false },
    { "bs-cut-order.json", "{\"mesh\":{\"pp\":3},\"pipeline\":{\"cuts\":[3,1]}}",
      "pipeline.cuts[1]", "strictly increasing", false },
    { "bs-cut-count.json", "{\"mesh\":{\"pp\":2},\"pipeline\":{\"cuts\":[1,2]}}",
      "pipeline.cuts", "mesh.pp is 2", false },
    { "bs-big.json", "{\"mesh\":{\"dp\":64}}", "mesh", "64 ranks", true },
    { "bs-key.json", "{\"mesh\":{\"dp\":2},\"bogus\":1}", "unknown field \"bogus\"", "mesh", false },
    { "bs-opkey.json", "{\"mesh\":{\"dp\":2},\"ops\":{\"embed\":{\"splt\":{}}}}",
      "ops[\"embed\"]", "unknown field \"splt\"", false },
    { "bs-op.json", "{\"mesh\":{\"dp\":2},\"ops\":{\"nosuchop\":{\"recompute\":true}}}",
      "ops[\"nosuchop\"]", "no op named", false },
    { "bs-axis.json", "{\"mesh\":{\"dp\":2},\"ops\":{\"blocks.0.mlp.fc1\":{\"split\":{\"f\":\"xx\"}}}}",
      "split.f", "no mesh axis \"xx\"", false },
    { "bs-method.json", "{\"mesh\":{\"dp\":2},\"params\":{\"embed.wte\":{\"sync\":{\"method\":\"nope\"}}}}",
      "params[\"embed.wte\"].sync.method", "\"nope\"", false },
    { "bs-size.json", "{\"mesh\":{\"dp\":0}}", "mesh.dp", "out of range", false },
    { "bs-syntax.json", "{\"mesh\":{\"dp\":2}", ":1:", "invalid JSON", false },
};

static void test_bad_strategies(void **state)
{
    (void)state;
    Res r = {0};
    const char *model = gpt_model(), *cpu = rp("clusters/local-cpu.json");
    for (size_t i = 0; i < sizeof BAD_STRATEGIES / sizeof BAD_STRATEGIES[0]; i++) {
        const BadStrategy *b = &BAD_STRATEGIES[i];
        const char *path = tp(b->file);
        write_file(path, b->json);
        if (b->small_cluster)
            STRATA(&r, "strategy", "show", path, "--model", model, "--cluster", cpu);
        else
            STRATA(&r, "strategy", "show", path, "--model", model);
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, path, b->where, b->why);
        assert_string_equal(r.out, "");
        /* lower refuses the same file with the same message */
        STRATA(&r, "lower", "--model", model, "--cluster", cpu, "--nodes", "8", "--strategy", path,
               "--no-store");
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, path, b->where);
    }
    STRATA(&r, "strategy", "show", tp("no-such-strategy.json"), "--model", model);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no-such-strategy.json", "cannot open");
    EXPECT_ABSENT(tp("strata.db"));
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * lower, the store, plans */

/* A model's params, param bytes and id, from `model show --json`. */
static void model_facts(const char *model, double *params, double *param_bytes, char id[17])
{
    Res r = {0};
    STRATA(&r, "model", "show", model, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    *params = JNUM(j, "params");
    *param_bytes = JNUM(j, "param_bytes");
    snprintf(id, 17, "%s", JSTR(j, "id"));
    release(j);
    res_free(&r);
}

static void test_lower_json_dp_allreduce_bytes(void **state)
{
    (void)state;
    Res r = {0};
    double params, pbytes;
    char mid[17];
    model_facts(gpt_model(), &params, &pbytes, mid);
    assert_true(pbytes == 4 * params);           /* f32 */

    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", rp("clusters/local-cpu.json"),
           "--nodes", "4", "--strategy", dp4_strategy(), "--json", "--no-store");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    assert_int_equal((int)JNUM(j, "ranks"), 4);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "plan_id"));   /* nothing stored */
    const cJSON *cls = JARR(j, "classes"), *c;
    assert_true(cJSON_GetArraySize(cls) >= 1);
    int nranks = 0;
    cJSON_ArrayForEach(c, cls) {
        nranks += cJSON_GetArraySize(JARR(c, "ranks"));
        const cJSON *cb = JOBJ(c, "comm_bytes");
        /* Pure data parallelism: each rank all-reduces every gradient once, so
         * its all-reduce payload is the model's param bytes, and nothing else moves. */
        double ar = JNUM(cb, "allreduce");
        if (ar != pbytes) {
            print_error("allreduce bytes %.0f, expected the param bytes %.0f (%.0f params x 4)\n",
                        ar, pbytes, params);
            fail();
        }
        assert_true(JNUM(cb, "allgather") == 0 && JNUM(cb, "reduce_scatter") == 0);
        assert_true(JNUM(cb, "send") == 0 && JNUM(cb, "recv") == 0);
        assert_true(JNUM(c, "flops") > 0);
    }
    assert_int_equal(nranks, 4);
    release(j);
    /* --no-store: no database, neither the default one in the cwd ... */
    EXPECT_ABSENT(tp("strata.db"));

    /* ... nor the one named by --db */
    const char *db = tp("nostore.db");
    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", rp("clusters/local-cpu.json"),
           "--nodes", "4", "--strategy", dp4_strategy(), "--db", db, "--no-store");
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "lowered 4 ranks");
    assert_null(strstr(r.out, "stored as plan"));
    EXPECT_ABSENT(db);
    EXPECT_ABSENT(tp("nostore.db-wal"));

    /* the mesh must fit the cluster: 4 ranks on the 2 devices of local-cpu */
    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", rp("clusters/local-cpu.json"),
           "--strategy", dp4_strategy(), "--no-store");
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, dp4_strategy(), "mesh", "4 ranks", "only 2 devices");
    res_free(&r);
}

static void test_lower_store_and_plans(void **state)
{
    (void)state;
    Res r = {0};
    const char *db = tp("plans.db"), *cpu = rp("clusters/local-cpu.json");
    double params, pbytes;
    char mid[17];
    model_facts(gpt_model(), &params, &pbytes, mid);

    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", cpu, "--nodes", "4", "--strategy",
           dp4_strategy(), "--db", db, "--json");
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    char plan[17];
    snprintf(plan, sizeof plan, "%s", JSTR(j, "plan_id"));
    assert_int_equal(strlen(plan), 16);
    release(j);
    assert_true(exists(db));
    EXPECT_ABSENT(tp("strata.db"));       /* --db, not the default */

    /* text mode says where it stored the plan */
    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", cpu, "--nodes", "4", "--strategy",
           dp4_strategy(), "--db", db);
    EXPECT_RC(&r, 0);
    char stored[64];
    snprintf(stored, sizeof stored, "stored as plan %s", plan);
    EXPECT_OUT(&r, "lowered 4 ranks", stored);

    /* a second, different plan in the same database: Megatron on one DGX */
    const char *meg = tp("plans-megatron.json");
    STRATA(&r, "strategy", "build", "megatron", "--model", gpt_model(), "--world", "8", "--tp", "2",
           "--pp", "2", "-o", meg);
    EXPECT_RC(&r, 0);
    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--strategy", meg, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    char plan2[17];
    snprintf(plan2, sizeof plan2, "%s", JSTR(j, "plan_id"));
    assert_string_not_equal(plan, plan2);
    release(j);

    /* plans list: both, once each (lowering the same plan again stores no copy) */
    STRATA(&r, "plans", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, plan, plan2, "local-cpu", "dgx-a100-80gb");
    assert_null(strstr(strstr(r.out, plan) + 16, plan));
    STRATA(&r, "plans", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    assert_true(cJSON_IsArray(j));
    assert_int_equal(cJSON_GetArraySize(j), 2);
    const cJSON *row;
    bool found = false;
    cJSON_ArrayForEach(row, j) {
        if (strcmp(JSTR(row, "id"), plan) != 0) continue;
        found = true;
        assert_int_equal((int)JNUM(row, "world"), 4);
        assert_string_equal(JSTR(row, "cluster"), "local-cpu");
    }
    assert_true(found);
    release(j);

    /* plans show: by id and by a 6-digit prefix, the same plan */
    STRATA(&r, "plans", "show", plan, "--db", db);
    EXPECT_RC(&r, 0);
    char head[64];
    snprintf(head, sizeof head, "plan %s:", plan);
    EXPECT_OUT(&r, head, "4 ranks", "mesh: dp=4", "class 0", "allreduce");
    char *full = track(strdup(r.out));
    char prefix[7];
    memcpy(prefix, plan, 6);
    prefix[6] = 0;
    STRATA(&r, "plans", "show", prefix, "--db", db);
    EXPECT_RC(&r, 0);
    assert_string_equal(r.out, full);
    release(full);
    /* the pipelined plan shows its classes */
    STRATA(&r, "plans", "show", plan2, "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "mesh: pp=2 dp=2 tp=2", "class 1", "send");

    STRATA(&r, "plans", "show", prefix, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    assert_string_equal(JSTR(j, "id"), plan);
    assert_string_equal(JSTR(j, "model_id"), mid);
    assert_int_equal((int)JNUM(j, "world"), 4);
    assert_int_equal((int)JNUM(JOBJ(JOBJ(j, "strategy"), "mesh"), "dp"), 4);
    const cJSON *sum = JOBJ(j, "summary");
    assert_int_equal((int)JNUM(sum, "ranks"), 4);
    const cJSON *c0 = cJSON_GetArrayItem(JARR(sum, "classes"), 0);
    assert_non_null(c0);
    assert_true(JNUM(JOBJ(c0, "comm_bytes"), "allreduce") == pbytes);
    release(j);

    /* model list: the model, by the id `model show` gives it */
    STRATA(&r, "model", "list", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, mid, "gpt");
    STRATA(&r, "model", "list", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    j = JSON_OUT(&r);
    assert_int_equal(cJSON_GetArraySize(j), 1);  /* two plans, one model */
    row = cJSON_GetArrayItem(j, 0);
    assert_string_equal(JSTR(row, "id"), mid);
    assert_true(JNUM(row, "params") == params);
    release(j);

    /* ids that are not there, or not ids */
    STRATA(&r, "plans", "show", "deadbeefdeadbeef", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "no plan", "deadbeefdeadbeef");
    assert_string_equal(r.out, "");
    STRATA(&r, "plans", "show", "5", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "'5'", "at least 4");
    STRATA(&r, "plans", "show", "xyz!", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "'xyz!'", "hex");
    STRATA(&r, "plans", "show", "0123456789abcdef0", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "too long");
    res_free(&r);
}

static void test_db_unwritable(void **state)
{
    (void)state;
    Res r = {0};
    const char *bad = "/proc/nonexistent/x.db";
    STRATA(&r, "lower", "--model", gpt_model(), "--cluster", rp("clusters/local-cpu.json"),
           "--nodes", "4", "--strategy", dp4_strategy(), "--db", bad);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, bad, "cannot create", "/proc/nonexistent");
    assert_null(strstr(r.out, "stored as plan"));
    STRATA(&r, "plans", "list", "--db", bad);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, bad);
    /* a directory given as the database */
    STRATA(&r, "model", "list", "--db", harness_dir());
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, harness_dir(), "is a directory");
    /* an empty path: SQLite would open a private temporary database */
    STRATA(&r, "plans", "list", "--db", "");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--db", "the value is empty");
    res_free(&r);
}

/* A token file is read whole and its token checked before the server
 * listens: never cut to a buffer's size. */
static void test_serve_token_file(void **state)
{
    (void)state;
    Res r = {0};
    const char *f = tp("token.txt");
    static const struct { const char *text, *why; } BAD[] = {
        { "", "the file is empty" },
        { "\nsecret-token-0123456789\n", "its first line is empty" },
        { "short\n", "at least 16 characters" },
        { "secret token with spaces\n", "without spaces" },
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        write_file(f, BAD[i].text);
        STRATA(&r, "serve", "--listen", "127.0.0.1:0", "--db", tp("serve.db"), "--token-file", f);
        EXPECT_RC(&r, 2);
        EXPECT_ERR(&r, "--token-file", BAD[i].why);
    }
    char *big = malloc(5001);
    assert_non_null(big);
    memset(big, 'x', 5000);
    big[5000] = 0;
    write_file(f, big);
    free(big);
    STRATA(&r, "serve", "--listen", "127.0.0.1:0", "--db", tp("serve.db"), "--token-file", f);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--token-file", "at most 4096 characters");
    STRATA(&r, "serve", "--listen", "127.0.0.1:0", "--db", tp("serve.db"), "--token-file",
           harness_dir());
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--token-file", "is a directory");
    /* the address and the store's place are the options' faults, known
     * before anything opens */
    static const char *const listens[][2] = { { "bogus", "host:port" },
                                              { "127.0.0.1:99999", "not a port" },
                                              { "0.0.0.0:0", "loopback" } };
    for (int i = 0; i < 3; i++) {
        STRATA(&r, "serve", "--listen", listens[i][0], "--db", tp("serve.db"));
        EXPECT_RC(&r, 2);
        EXPECT_ERR(&r, "--listen", listens[i][1]);
    }
    STRATA(&r, "serve", "--listen", "127.0.0.1:0", "--db", "/proc/nonexistent/s.db");
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--db", "is not there");
    res_free(&r);
}

/* Bytes that are not a database: a deterministic pseudo-random page. */
static void write_junk(const char *path, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        fputc((int)(x & 0xff), f);
    }
    assert_int_equal(fclose(f), 0);
}

static void test_db_not_a_database(void **state)
{
    (void)state;
    Res r = {0};
    const char *junk = tp("junk.db"), *text = tp("notes.db");
    write_junk(junk, 3000);
    write_file(text, "these are my notes, not a database\n");
    const char *files[] = { junk, text };
    for (int f = 0; f < 2; f++) {
        size_t n;
        char *before = track(slurp(files[f], &n));
        assert_non_null(before);
        STRATA(&r, "lower", "--model", gpt_model(), "--cluster", rp("clusters/local-cpu.json"),
               "--nodes", "4", "--strategy", dp4_strategy(), "--db", files[f]);
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, files[f], "not a SQLite database");
        STRATA(&r, "plans", "list", "--db", files[f]);
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, files[f], "not a SQLite database");
        STRATA(&r, "plans", "show", "abcd", "--db", files[f]);
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, files[f], "not a SQLite database");
        STRATA(&r, "model", "list", "--db", files[f], "--json");
        EXPECT_RC(&r, 1);
        EXPECT_ERR(&r, files[f], "not a SQLite database");
        EXPECT_SAME_BYTES(files[f], before, n);
        char side[PATH_MAX];
        snprintf(side, sizeof side, "%s-wal", files[f]);
        EXPECT_ABSENT(side);
        snprintf(side, sizeof side, "%s-journal", files[f]);
        EXPECT_ABSENT(side);
        release(before);
    }
    res_free(&r);
}

/* Regression: a SQLite database that is not strata's (here: someone's notes table)
 * is silently taken over by a read-only command: `plans list` adds strata's
 * ~30 tables and switches it to WAL. db_open should refuse a database with
 * user_version 0 that already holds tables, and leave the file as it was. */
static void test_db_foreign_sqlite_untouched(void **state)
{
    (void)state;
    Res r = {0};
    const char *path = tp("foreign.db");
    sqlite3 *h;
    assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES('mine');",
                                  NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(h), SQLITE_OK);
    size_t n;
    char *before = track(slurp(path, &n));
    assert_non_null(before);

    STRATA(&r, "plans", "list", "--db", path);
    EXPECT_SAME_BYTES(path, before, n);
    release(before);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, path, "strata");
    res_free(&r);
}

/* Regression: the read-only commands create the database they are asked to read: a
 * typo in `plans list --db` leaves a fresh 150 KB strata database behind and
 * reports "no plans" instead of "no such database". */
static void test_read_commands_create_no_db(void **state)
{
    (void)state;
    Res r = {0};
    const char *path = tp("typo.db");
    STRATA(&r, "plans", "list", "--db", path);
    EXPECT_ABSENT(path);
    STRATA(&r, "model", "list", "--db", path);
    EXPECT_ABSENT(path);
    STRATA(&r, "plans", "show", "abcd", "--db", path);
    EXPECT_RC(&r, 1);
    EXPECT_ABSENT(path);
    res_free(&r);
}

/* A malformed id is a mistyped argument, exit 2 wherever an id is taken,
 * said before the store is opened; a well-formed one that matches nothing
 * is a failed lookup, exit 1. A command that only reads leaves an empty
 * file empty. */
static void test_malformed_ids_are_usage(void **state)
{
    (void)state;
    Res r = {0};
    const char *path = tp("empty.db");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    const char *cmds[][3] = { { "plans", "show", "x1" },     { "runs", "show", "-1" },
                              { "searches", "show", "abc" }, { "searches", "events", "zz" },
                              { "costmodel", "show", "q" },  { "plans", "export", "0123456789abcdef0" } };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (!strcmp(cmds[i][1], "export"))
            STRATA(&r, cmds[i][0], cmds[i][1], cmds[i][2], "--to", "megatron", "--db", path);
        else
            STRATA(&r, cmds[i][0], cmds[i][1], cmds[i][2], "--db", path);
        EXPECT_RC(&r, 2);
        EXPECT_ERR(&r, "id");
    }
    STRATA(&r, "run", "--plan", "ab!d", "--db", path);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--plan", "not a hex digit");
    /* and an id given to an option */
    const char *m = rp("models/tiny-mlp.json"), *c = rp("clusters/local-cpu.json");
    STRATA(&r, "estimate", "--model", m, "--cluster", c, "--strategy", dp4_strategy(),
           "--costmodel", "zz!", "--db", path);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--costmodel", "not a hex digit");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--costmodel", "12", "--db", path);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--costmodel", "at least 4");
    STRATA(&r, "search", "--model", m, "--cluster", c, "--algo", "rl", "--policy-from", "x",
           "--db", path);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--policy-from", "not a hex digit");
    STRATA(&r, "validate", "--costmodel", "x", "--db", path);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--costmodel", "not a hex digit");
    STRATA(&r, "plans", "show", "abcd", "--db", path);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "the file is empty");
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    res_free(&r);
}

/* ----------------------------------------------------------------------------
 * main */

static int group_setup(void **state)
{
    (void)state;
    return harness_setup(&(HarnessConfig){ .name = "test_cli", .deadline_s = DEADLINE_S });
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_teardown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_help, harness_release_all),
        cmocka_unit_test_teardown(test_unknown_command_subcommand_option, harness_release_all),
        cmocka_unit_test_teardown(test_missing_required_lower, harness_release_all),
        cmocka_unit_test_teardown(test_model_build_and_show_every_kind, harness_release_all),
        cmocka_unit_test_teardown(test_model_build_dtype_and_stdout, harness_release_all),
        cmocka_unit_test_teardown(test_gpt3_175b, harness_release_all),
        cmocka_unit_test_teardown(test_model_build_bad_options, harness_release_all),
        cmocka_unit_test_teardown(test_bad_model_files, harness_release_all),
        cmocka_unit_test_teardown(test_cluster_show, harness_release_all),
        cmocka_unit_test_teardown(test_cluster_bad_nodes, harness_release_all),
        cmocka_unit_test_teardown(test_cluster_bad_files, harness_release_all),
        cmocka_unit_test_teardown(test_strategy_build_and_show_classics, harness_release_all),
        cmocka_unit_test_teardown(test_strategy_builder_errors, harness_release_all),
        cmocka_unit_test_teardown(test_bad_strategies, harness_release_all),
        cmocka_unit_test_teardown(test_lower_json_dp_allreduce_bytes, harness_release_all),
        cmocka_unit_test_teardown(test_lower_store_and_plans, harness_release_all),
        cmocka_unit_test_teardown(test_db_unwritable, harness_release_all),
        cmocka_unit_test_teardown(test_malformed_ids_are_usage, harness_release_all),
        cmocka_unit_test_teardown(test_serve_token_file, harness_release_all),
        cmocka_unit_test_teardown(test_db_not_a_database, harness_release_all),
        /* regressions: each of these was a defect once */
        cmocka_unit_test_teardown(test_help_on_stdout, harness_release_all),
        cmocka_unit_test_teardown(test_group_help, harness_release_all),
        cmocka_unit_test_teardown(test_lower_names_all_missing, harness_release_all),
        cmocka_unit_test_teardown(test_strategy_missing_model_is_usage, harness_release_all),
        cmocka_unit_test_teardown(test_nodes_errors_are_usage_everywhere, harness_release_all),
        cmocka_unit_test_teardown(test_strategy_unknown_kind_is_usage, harness_release_all),
        cmocka_unit_test_teardown(test_model_file_is_directory, harness_release_all),
        cmocka_unit_test_teardown(test_strategy_powersgd, harness_release_all),
        cmocka_unit_test_teardown(test_db_foreign_sqlite_untouched, harness_release_all),
        cmocka_unit_test_teardown(test_read_commands_create_no_db, harness_release_all),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
