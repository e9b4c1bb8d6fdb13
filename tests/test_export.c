/*
 * test_export.c — `strata plans export` as a user runs it: Megatron-LM
 * arguments, a DeepSpeed JSON config and a torchtitan TOML from stored
 * plans, every name emitted checked against the frameworks' own (the lists
 * below, with where they were read), the values against the plan; a plan a
 * framework cannot express refused with what does not map and the closest
 * plan it can, stored and itself exportable; bad input refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/cli_harness.h"

/* Megatron-LM core_v0.15.0 (tag 0d7e02bd), megatron/training/arguments.py */
static const char *const MEGATRON_FLAGS[] = {
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size",
    "--num-layers-per-virtual-pipeline-stage", "--expert-model-parallel-size",
    "--micro-batch-size", "--global-batch-size", "--recompute-granularity", "--recompute-method",
    "--recompute-num-layers", "--sequence-parallel", "--use-distributed-optimizer",
    "--use-megatron-fsdp", "--data-parallel-sharding-strategy", "--overlap-grad-reduce", "--bf16",
    "--fp16", "--accumulate-allreduce-grads-in-fp32", "--optimizer", "--num-layers",
    "--hidden-size", "--num-attention-heads", "--ffn-hidden-size", "--seq-length",
    "--max-position-embeddings", "--padded-vocab-size", "--num-experts", "--moe-layer-freq",
    "--moe-router-topk", "--moe-expert-capacity-factor", "--context-parallel-size",
    "--untie-embeddings-and-output-weights", NULL,
};

/* DeepSpeed v0.19.5 (tag cf443004), docs/_pages/config-json.md and
 * deepspeed/runtime/zero/config.py (which rejects unknown keys) */
static const char *const DEEPSPEED_KEYS[] = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16",
    "fp16", "communication_data_type", "zero_optimization", "activation_checkpointing",
    "pipeline", "optimizer", NULL,
};
static const char *const DEEPSPEED_ZERO_KEYS[] = {
    "stage", "overlap_comm", "contiguous_gradients", "reduce_bucket_size", "reduce_scatter",
    "allgather_partitions", "allgather_bucket_size", "stage3_prefetch_bucket_size", NULL,
};
static const char *const DEEPSPEED_AC_KEYS[] = {
    "partition_activations", "contiguous_memory_optimization", "cpu_checkpointing",
    "number_checkpoints", "synchronize_checkpoint_boundary", "profile", NULL,
};

/* torchtitan v0.2.2 (tag 73a0e697), torchtitan/config/job_config.py */
static const char *const TORCHTITAN_KEYS[] = {
    "training.local_batch_size", "training.global_batch_size", "training.seq_len",
    "training.mixed_precision_param", "training.mixed_precision_reduce",
    "parallelism.data_parallel_replicate_degree", "parallelism.data_parallel_shard_degree",
    "parallelism.fsdp_reshard_after_forward", "parallelism.tensor_parallel_degree",
    "parallelism.disable_loss_parallel", "parallelism.pipeline_parallel_degree",
    "parallelism.pipeline_parallel_schedule", "parallelism.pipeline_parallel_microbatch_size",
    "parallelism.pipeline_parallel_layers_per_stage", "parallelism.expert_parallel_degree",
    "parallelism.context_parallel_degree", "activation_checkpoint.mode", NULL,
};

static bool listed(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (!strcmp(*list, s)) return true;
    return false;
}

static const char *db;

/* The strategy file st for the model on `nodes` DGX A100 nodes, estimated
 * and stored; its plan id into id. */
static void estimated(const char *model, const char *nodes, const char *st, char id[17])
{
    Res r = { 0 };
    STRATA(&r, "estimate", "--model", model, "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", nodes, "--strategy", st, "--db", db, "--json");
    EXPECT_RC(&r, 0);
    snprintf(id, 17, "%s", JSTR(JSON_OUT(&r), "plan_id"));
}

/* A strategy built by `strata strategy build KIND args...` for the model on
 * `nodes` DGX A100 nodes, estimated and stored; its plan id into id. */
static void plan(const char *model, int nodes, char id[17], const char *kind, ...)
{
    const char *args[40] = { "strategy", "build", kind, "--model", model, "--cluster",
                             rp("clusters/dgx-a100-80gb.json"), "--nodes", NULL };
    char n[16];
    snprintf(n, sizeof n, "%d", nodes);
    int k = 8;
    args[k++] = n;
    va_list ap;
    va_start(ap, kind);
    for (const char *a; (a = va_arg(ap, const char *));) args[k++] = a;
    va_end(ap);
    const char *out = tp("strategy.json");
    args[k++] = "-o";
    args[k++] = out;
    args[k] = NULL;
    Res r = { 0 };
    harness_run_at(__FILE__, __LINE__, &r, NULL, args);
    EXPECT_RC(&r, 0);
    estimated(model, n, out, id);
}

static const char *gpt13(void)
{
    static const char *path;
    if (!path) {
        path = tp("gpt13.json");
        Res r = { 0 };
        STRATA(&r, "model", "build", "gpt", "--preset", "gpt3-1.3b", "--batch", "512", "-o", path);
        EXPECT_RC(&r, 0);
    }
    return path;
}

/* The flags of Megatron-LM arguments: every one known, the value of `want`
 * (NULL: present without a value) equal to val. */
static void check_megatron(const char *text)
{
    char *t = track(strdup(text)), *save = NULL;
    int n = 0;
    for (char *l = strtok_r(t, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (l[0] == '#') continue;
        char flag[80];
        assert_int_equal(sscanf(l, "%79s", flag), 1);
        if (!listed(MEGATRON_FLAGS, flag)) fail_msg("not a Megatron-LM flag: %s", flag);
        n++;
    }
    assert_true(n >= 6);
}

static void expect_flag(const char *text, const char *flag_and_value)
{
    char want[120];
    snprintf(want, sizeof want, "\n%s", flag_and_value);
    if (!strstr(text, want)) fail_msg("no \"%s\" in:\n%s", flag_and_value, text);
}

static void test_megatron(void **state)
{
    (void)state;
    char id[17];
    plan(gpt13(), 4, id, "megatron", "--tp", "4", "--pp", "2", "--microbatches", "16",
         "--recompute", (char *)NULL);
    Res r = { 0 };
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    expect_flag(r.out, "--tensor-model-parallel-size 4 \\");
    expect_flag(r.out, "--pipeline-model-parallel-size 2 \\");
    expect_flag(r.out, "--micro-batch-size 8 \\");      /* 512 / (4 data x 16 micro-batches) */
    expect_flag(r.out, "--global-batch-size 512 \\");
    expect_flag(r.out, "--recompute-granularity full \\");
    expect_flag(r.out, "--bf16 \\");
    expect_flag(r.out, "--num-layers 24 \\");
    expect_flag(r.out, "--hidden-size 2048 \\");
    expect_flag(r.out, "--num-attention-heads 16 \\");
    expect_flag(r.out, "--padded-vocab-size 51200");
    assert_null(strstr(r.out, "--sequence-parallel"));
    assert_null(strstr(r.out, "--untie"));      /* tied, as Megatron-LM's default */
    /* the last line ends the command */
    size_t n = strlen(r.out);
    assert_true(n > 2 && r.out[n - 1] == '\n' && r.out[n - 2] != '\\');

    /* an output layer of its own: said, or Megatron-LM would tie it */
    const char *untied = tp("gpt13-untied.json");
    STRATA(&r, "model", "build", "gpt", "--preset", "gpt3-1.3b", "--batch", "512", "--tied", "0",
           "-o", untied);
    EXPECT_RC(&r, 0);
    plan(untied, 4, id, "megatron", "--tp", "4", "--pp", "2", "--microbatches", "16",
         (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    expect_flag(r.out, "--untie-embeddings-and-output-weights");

    /* interleaved, sequence parallel, the distributed optimizer: each named */
    plan(gpt13(), 4, id, "megatron", "--tp", "2", "--pp", "2", "--virtual", "3",
         "--microbatches", "16", "--sequence-parallel", (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    expect_flag(r.out, "--num-layers-per-virtual-pipeline-stage 4 \\");   /* 24 / (2 x 3) */
    expect_flag(r.out, "--sequence-parallel \\");
    plan(gpt13(), 1, id, "zero", "--zero", "1", (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db, "-o", tp("args.txt"));
    EXPECT_RC(&r, 0);
    char *text = track(slurp(tp("args.txt"), NULL));
    check_megatron(text);
    expect_flag(text, "--use-distributed-optimizer \\");
    expect_flag(text, "--tensor-model-parallel-size 1 \\");
}

/* A switch MoE whose searched plan spreads the experts over data ranks:
 * Megatron-LM's expert parallelism, with the experts, the layers that
 * route and the capacity. */
static void test_megatron_experts(void **state)
{
    (void)state;
    Res r = { 0 };
    const char *model = tp("moe.json");
    STRATA(&r, "model", "build", "moe", "--layers", "2", "--hidden", "256", "--heads", "4",
           "--seq", "64", "--vocab", "1024", "--batch", "64", "--experts", "8", "-o", model);
    EXPECT_RC(&r, 0);
    STRATA(&r, "search", "--model", model, "--cluster", rp("clusters/dgx-a100-80gb.json"),
           "--nodes", "1", "--algo", "exhaustive", "--db", db, "--json");
    EXPECT_RC(&r, 0);
    char id[17];
    snprintf(id, sizeof id, "%s", JSTR(JSON_OUT(&r), "plan_id"));
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    assert_non_null(strstr(r.out, "\n--expert-model-parallel-size "));
    assert_non_null(strstr(r.out, "data parallel = world / (tensor x pipeline) = 8)"));
    expect_flag(r.out, "--num-experts 8 \\");
    expect_flag(r.out, "--moe-layer-freq '[0,1]' \\");       /* the zoo's every 2nd block */
    expect_flag(r.out, "--moe-router-topk 1 \\");
    expect_flag(r.out, "--moe-expert-capacity-factor 1.25");
}

/* Context parallelism (the sequence over dp_cp, the batch over dp): the
 * frameworks count it apart from data parallelism, so the micro-batch is
 * the batch over dp alone. */
static void test_context_parallel(void **state)
{
    (void)state;
    const char *st = tp("cp.json");
    write_file(st, "{\"mesh\": {\"dp\": 4, \"dp_cp\": 2}, "
                   "\"ops\": {\"*\": {\"split\": {\"s\": \"dp_cp\", \"b\": \"dp\"}}}}");
    char id[17];
    estimated(gpt13(), "1", st, id);
    Res r = { 0 };
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    expect_flag(r.out, "--context-parallel-size 2 \\");
    expect_flag(r.out, "--micro-batch-size 128 \\");         /* 512 / 4 data ranks */
    assert_non_null(strstr(r.out, "(tensor x pipeline x context) = 4)"));
    STRATA(&r, "plans", "export", id, "--to", "torchtitan", "--db", db);
    EXPECT_RC(&r, 0);
    assert_non_null(strstr(r.out, "\ncontext_parallel_degree = 2\n"));
    assert_non_null(strstr(r.out, "\ndata_parallel_replicate_degree = 4\n"));
    assert_non_null(strstr(r.out, "\nlocal_batch_size = 128\n"));
    STRATA(&r, "plans", "export", id, "--to", "deepspeed", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "context (sequence) parallelism of degree 2");

    /* refused (a parameter server), the closest plan keeps the context
     * parallelism: a batch of 2 on 4 devices leaves no plan without it */
    const char *model = tp("gpt13-b2.json");
    Res m = { 0 };
    STRATA(&m, "model", "build", "gpt", "--preset", "gpt3-1.3b", "--batch", "2", "-o", model);
    EXPECT_RC(&m, 0);
    const char *ps = tp("cp-ps.json");
    write_file(ps, "{\"mesh\": {\"dp\": 2, \"dp_cp\": 2}, "
                   "\"ops\": {\"*\": {\"split\": {\"s\": \"dp_cp\", \"b\": \"dp\"}}}, "
                   "\"params\": {\"embed.wpe\": {\"sync\": {\"method\": \"ps\"}}}}");
    estimated(model, "1", ps, id);
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db, "--json");
    EXPECT_RC(&r, 1);
    cJSON *j = JSON_OUT(&r);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "closest");
    char closest[17];
    snprintf(closest, sizeof closest, "%s", JSTR(c, "plan_id"));
    STRATA(&r, "plans", "export", closest, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    expect_flag(r.out, "--context-parallel-size 2 \\");
}

/* ZeRO-1 everywhere but the tied embedding, which strata keeps whole on a
 * pipeline: still Megatron-LM's distributed optimizer, not mixed stages */
static void test_tied_embedding_stays_whole(void **state)
{
    (void)state;
    const char *st = tp("tied.json");
    Res r = { 0 };
    STRATA(&r, "strategy", "build", "megatron", "--model", gpt13(), "--cluster",
           rp("clusters/dgx-a100-80gb.json"), "--nodes", "2", "--tp", "2", "--pp", "2",
           "--microbatches", "8", "--recompute", "-o", st);
    EXPECT_RC(&r, 0);
    char *txt = track(slurp(st, NULL));
    assert_non_null(txt);
    cJSON *j = track_json(cJSON_Parse(txt));
    assert_non_null(j);
    cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "params");
    if (!params) params = cJSON_AddObjectToObject(j, "params");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(params, "*"), "shard", "zero1");
    cJSON_DeleteItemFromObjectCaseSensitive(params, "embed.wte");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(params, "embed.wte"), "shard", "none");
    char *text = cJSON_Print(j);
    write_file(st, text);
    cJSON_free(text);
    char id[17];
    estimated(gpt13(), "2", st, id);
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);
    expect_flag(r.out, "--use-distributed-optimizer \\");
}

static void check_keys(const cJSON *o, const char *const *allowed, const char *what)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, o)
        if (!listed(allowed, it->string)) fail_msg("not a DeepSpeed %s key: %s", what, it->string);
}

static void test_deepspeed(void **state)
{
    (void)state;
    char id[17];
    plan(gpt13(), 1, id, "zero", "--zero", "2", "--microbatches", "8", "--recompute", (char *)NULL);
    Res r = { 0 };
    STRATA(&r, "plans", "export", id, "--to", "deepspeed", "--db", db);
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    check_keys(j, DEEPSPEED_KEYS, "config");
    check_keys(cJSON_GetObjectItemCaseSensitive(j, "zero_optimization"), DEEPSPEED_ZERO_KEYS,
               "zero_optimization");
    check_keys(cJSON_GetObjectItemCaseSensitive(j, "activation_checkpointing"), DEEPSPEED_AC_KEYS,
               "activation_checkpointing");
    /* DeepSpeed's rule: train_batch_size = micro x accumulation x data-parallel ranks */
    double B = JNUM(j, "train_batch_size"), mb = JNUM(j, "train_micro_batch_size_per_gpu");
    double gas = JNUM(j, "gradient_accumulation_steps");
    assert_true(B == 512 && gas == 8 && mb * gas * 8 == B);
    assert_int_equal((int)JNUM(cJSON_GetObjectItemCaseSensitive(j, "zero_optimization"), "stage"), 2);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(j, "bf16"), "enabled")));

    /* fp16 gradient compression is DeepSpeed's communication_data_type */
    plan(gpt13(), 1, id, "dp", "--compress", "fp16", (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "deepspeed", "--db", db);
    EXPECT_RC(&r, 0);
    assert_string_equal(JSTR(JSON_OUT(&r), "communication_data_type"), "fp16");
}

static void test_torchtitan(void **state)
{
    (void)state;
    char id[17];
    plan(gpt13(), 4, id, "megatron", "--tp", "4", "--pp", "2", "--microbatches", "16",
         "--recompute", (char *)NULL);
    const char *toml = tp("job.toml");
    Res r = { 0 };
    STRATA(&r, "plans", "export", id, "--to", "torchtitan", "--db", db, "-o", toml);
    EXPECT_RC(&r, 0);
    /* parsed by a real TOML parser (tomli, in build/venv), its keys listed */
    const char *py = rp("build/venv/bin/python");
    if (!harness_exists(py)) fail_msg("%s is missing: run sh scripts/setup.sh test", py);
    static const char script[] =
        "import sys, json, tomli\n"
        "d = tomli.load(open(sys.argv[1], 'rb'))\n"
        "print(json.dumps({s + '.' + k: v for s, t in d.items() for k, v in t.items()}))\n";
    const char *args[] = { "-c", script, toml, NULL };
    RunOpts o = { .prog = py };
    harness_run_at(__FILE__, __LINE__, &r, &o, args);
    EXPECT_RC(&r, 0);
    cJSON *j = JSON_OUT(&r);
    const cJSON *it;
    cJSON_ArrayForEach(it, j)
        if (!listed(TORCHTITAN_KEYS, it->string)) fail_msg("not a torchtitan key: %s", it->string);
    assert_int_equal((int)JNUM(j, "parallelism.tensor_parallel_degree"), 4);
    assert_int_equal((int)JNUM(j, "parallelism.pipeline_parallel_degree"), 2);
    assert_int_equal((int)JNUM(j, "parallelism.data_parallel_replicate_degree"), 4);
    assert_int_equal((int)JNUM(j, "parallelism.pipeline_parallel_layers_per_stage"), 12);
    assert_int_equal((int)JNUM(j, "parallelism.pipeline_parallel_microbatch_size"), 8);
    assert_int_equal((int)JNUM(j, "training.global_batch_size"), 512);
    assert_int_equal((int)JNUM(j, "training.local_batch_size"), 128);
    assert_string_equal(JSTR(j, "parallelism.pipeline_parallel_schedule"), "1F1B");
    assert_string_equal(JSTR(j, "activation_checkpoint.mode"), "full");
}

static void test_refused_with_the_closest(void **state)
{
    (void)state;
    char id[17];
    plan(gpt13(), 1, id, "ps", (char *)NULL);
    Res r = { 0 };
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "cannot be expressed in megatron", "parameter server", "closest plan");
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db, "--json");
    EXPECT_RC(&r, 1);
    cJSON *j = JSON_OUT(&r);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "exported")));
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "unmapped")) >= 1);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "closest");
    char closest[17];
    snprintf(closest, sizeof closest, "%s", JSTR(c, "plan_id"));
    assert_true(JNUM(c, "step_time_s") > 0);
    /* the closest plan is stored and exports */
    STRATA(&r, "plans", "export", closest, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 0);
    check_megatron(r.out);

    /* tensor parallelism is not a DeepSpeed config's */
    plan(gpt13(), 1, id, "megatron", "--tp", "8", (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "deepspeed", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "tensor parallelism of degree 8");
    /* a batch too small for any DeepSpeed plan over these devices: said so,
     * not blamed on memory */
    const char *small = tp("gpt-b4.json");
    STRATA(&r, "model", "build", "gpt", "--batch", "4", "-o", small);
    EXPECT_RC(&r, 0);
    plan(small, 1, id, "megatron", "--tp", "2", "--pp", "2", (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "deepspeed", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "could be made here", "does not divide the batch");
    assert_null(strstr(r.err, "memory"));
    /* GPipe is not Megatron-LM's */
    plan(gpt13(), 1, id, "gpipe", "--pp", "2", "--microbatches", "4", (char *)NULL);
    STRATA(&r, "plans", "export", id, "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "GPipe");
    STRATA(&r, "plans", "export", id, "--to", "torchtitan", "--db", db);
    EXPECT_RC(&r, 0);
    EXPECT_OUT(&r, "pipeline_parallel_schedule = \"GPipe\"");
}

static void test_bad_input(void **state)
{
    (void)state;
    Res r = { 0 };
    STRATA(&r, "plans", "export", "0123456789abcdef", "--to", "jax", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--to", "jax");
    STRATA(&r, "plans", "export", "0123456789abcdef", "--db", db);
    EXPECT_RC(&r, 2);
    EXPECT_ERR(&r, "--to");
    STRATA(&r, "plans", "export", "0123456789abcdef", "--to", "megatron", "--db", db);
    EXPECT_RC(&r, 1);
    EXPECT_ERR(&r, "0123456789abcdef");
}

static int group_setup(void **state)
{
    (void)state;
    if (harness_setup(&(HarnessConfig){ .name = "test_export", .deadline_s = 300 })) return -1;
    db = tp("export.db");
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
        T(test_megatron), T(test_megatron_experts), T(test_context_parallel),
        T(test_tied_embedding_stays_whole),
        T(test_deepspeed), T(test_torchtitan),
        T(test_refused_with_the_closest),
        T(test_bad_input),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
