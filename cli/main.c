/*
 * main.c — the `strata` command line.
 *
 * Thin: every subcommand parses its options, calls the library (ir/, db/)
 * and prints. Exit status: 0 success, 1 failure, 2 bad usage.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "commands.h"
#include "db/db.h"
#include "executor/blas.h"
#include "ir/cluster.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/util.h"
#include "ir/zoo.h"
#include "ir/onnx.h"
#include "jobs/jobs.h"

#define EXIT_USAGE 2

static int fail(const Err *err)
{
    fprintf(stderr, "strata: %s\n", err->msg);
    return EXIT_FAILURE;
}

static int usage_error(const char *cmd, const Err *err)
{
    fprintf(stderr, "strata %s: %s\n", cmd, err->msg);
    return EXIT_USAGE;
}

/* 1234567 -> "1.23 M" */
static const char *si(double x, char *buf, int n)
{
    const char *u[] = { "", " K", " M", " B", " T", " P", " E" };
    int i = 0;
    while (x >= 1000 && i < 6) { x /= 1000; i++; }
    snprintf(buf, n, i ? "%.2f%s" : "%.0f%s", x, u[i]);
    return buf;
}

static const char *bytes_h(double b, char *buf, int n)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    int i = 0;
    while (b >= 1024 && i < 5) { b /= 1024; i++; }
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
    return buf;
}

/* --help prints to stdout and succeeds; a usage mistake prints to stderr. */
static int usage_for(const Args *a, const char *line, const OptSpec *spec)
{
    bool help = args_has(a, "help");
    FILE *f = help ? stdout : stderr;
    fprintf(f, "usage: %s\n", line);
    if (spec) {
        fprintf(f, "\noptions:\n");
        args_usage(f, spec);
    }
    return help ? 0 : EXIT_USAGE;
}

static const char *plural(int n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

void cli_seconds(double t, char *out, int n)
{
    if (!isfinite(t)) snprintf(out, n, "-");
    else if (t < 1e-3) snprintf(out, n, "%.1f us", t * 1e6);
    else if (t < 1) snprintf(out, n, "%.2f ms", t * 1e3);
    else snprintf(out, n, "%.3f s", t);
}

/* A number field of a stored JSON object, 0 when absent (the store is not trusted
 * to hold what this strata wrote). */
static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void print_json(cJSON *j)
{
    char *s = cJSON_Print(j);
    puts(s);
    cJSON_free(s);
}

/* ----------------------------------------------------------------------------
 * model */

static const OptSpec MODEL_BUILD_OPTS[] = {
    { "output", 'o', true, "FILE  write the model JSON here (default: stdout)" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const OptSpec MODEL_SHOW_OPTS[] = {
    { "json", 0, false, "print JSON (params, train_flops, per block)" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const OptSpec DB_OPTS[] = {
    { "db", 0, true, "PATH  database (default strata.db)" },
    { "json", 0, false, "print JSON" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

int check_id_option(const Args *a, const char *opt, const char *noun, Err *err)
{
    const char *id = args_get(a, opt);
    if (!id || !db_id_check(noun, id, err)) return 0;
    return err_prefix(err, "--%s", opt);
}

Db *cli_open_store(int argc, char **argv, const char *cmd, const char *usage, int npos,
                   const char *id_noun, Args *a, int *rc)
{
    Err err = {0};
    if (args_parse(argc, argv, DB_OPTS, false, a, &err)) {
        *rc = usage_error(cmd, &err);
        return NULL;
    }
    if (args_has(a, "help") || a->npos != npos) {
        *rc = usage_for(a, usage, DB_OPTS);
        return NULL;
    }
    if (id_noun && db_id_check(id_noun, a->pos[0], &err)) {
        *rc = usage_error(cmd, &err);
        return NULL;
    }
    const char *path = args_get(a, "db") ? args_get(a, "db") : CLI_DEFAULT_DB;
    Db *db = db_open_existing(path, &err);
    *rc = db ? 0 : fail(&err);
    return db;
}

void cli_settle_profiles(Db *db)
{
    Err err = {0};
    int n = 0;
    if (db_profile_interrupt_dead(db, &n, &err))
        fprintf(stderr, "strata: warning: %s\n", err.msg);
    else if (n)
        fprintf(stderr, "strata: %d profile%s whose process ended before closing %s marked "
                "interrupted (what %s measured is kept)\n", n, n == 1 ? "" : "s",
                n == 1 ? "it" : "them", n == 1 ? "it" : "they");
}

void cli_settle_searches(Db *db)
{
    Err err = {0};
    int n = 0;
    if (db_search_interrupt(db, false, &n, &err))
        fprintf(stderr, "strata: warning: %s\n", err.msg);
    else if (n)
        fprintf(stderr, "strata: %d search%s whose process ended before %s did marked "
                "interrupted (`strata serve` resumes %s from %s best)\n", n, n == 1 ? "" : "es",
                n == 1 ? "it" : "they", n == 1 ? "it" : "them", n == 1 ? "its" : "their");
}

static int cmd_model_build(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, MODEL_BUILD_OPTS, true, &a, &err))
        return usage_error("model build", &err);
    if (args_has(&a, "help") || a.npos != 1) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        fprintf(f, "usage: strata model build KIND [--option value ...] [-o FILE]\n\n");
        zoo_usage(f);
        return args_has(&a, "help") ? 0 : EXIT_USAGE;
    }
    if (args_out_file(&a, "output", "-o", NULL, &err)) return usage_error("model build", &err);
    const char *keys[ARGS_MAX], *vals[ARGS_MAX];
    int n = 0;
    for (int i = 0; i < a.n; i++) {
        if (strcmp(a.key[i], "output") == 0) continue;
        keys[n] = a.key[i];
        vals[n++] = a.val[i];
    }
    Graph *g = zoo_build(a.pos[0], n, keys, vals, &err);
    if (!g) return usage_error("model build", &err);
    const char *out = args_get(&a, "output");
    cJSON *j = graph_to_json(g);
    int rc = json_save(j, out, &err);
    cJSON_Delete(j);
    if (!rc && out && strcmp(out, "-") != 0) {
        GraphStats st;
        char b[32];
        if (graph_stats(g, &st, &err) == 0) {
            fprintf(stderr, "wrote %s: %d ops, %s params to %s\n", g->name, g->nops,
                    si(st.params, b, sizeof b), out);
            graph_stats_free(&st);
        }
    }
    graph_free(g);
    return rc ? fail(&err) : 0;
}

static int cmd_model_import(int argc, char **argv)
{
    static const OptSpec OPTS[] = {
        { "batch", 0, true, "N  the batch (the input's first dim; needed when it is dynamic)" },
        { "name", 0, true, "NAME  the model's name (default: the ONNX graph's)" },
        { "loss", 0, true, "cross_entropy|mse  the loss added over the output (default cross_entropy)" },
        { "output", 'o', true, "FILE  write the model JSON here (default: stdout)" },
        { "help", 'h', false, "show this help" },
        { NULL, 0, false, NULL },
    };
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, OPTS, false, &a, &err)) return usage_error("model import", &err);
    if (args_has(&a, "help") || a.npos != 1)
        return usage_for(&a, "strata model import FILE.onnx [--batch N] [--name NAME] "
                             "[--loss cross_entropy|mse] [-o model.json]", OPTS);
    int64_t batch = 0;
    if (args_int(&a, "batch", 1, 1 << 30, &batch, &err) ||
        args_out_file(&a, "output", "-o", NULL, &err))
        return usage_error("model import", &err);
    OnnxOpts o = { .batch = batch, .name = args_get(&a, "name"), .loss = args_get(&a, "loss") };
    if (onnx_check_opts(&o, &err)) {
        Err e = {0};
        err_set(&e, "--%s", err.msg);
        return usage_error("model import", &e);
    }
    cJSON *j = onnx_import_file(a.pos[0], &o, &err);
    Graph *g = j ? graph_from_json(j, &err) : NULL;
    if (!g) {
        cJSON_Delete(j);
        return fail(&err);
    }
    const char *out = args_get(&a, "output");
    cJSON *gj = graph_to_json(g);
    int rc = json_save(gj, out, &err);
    cJSON_Delete(gj);
    cJSON_Delete(j);
    if (!rc && out && strcmp(out, "-") != 0) {
        GraphStats st;
        char b[32];
        if (graph_stats(g, &st, &err) == 0) {
            fprintf(stderr, "imported %s: %d ops in %d blocks, %s params, %.4g forward FLOPs; "
                    "wrote %s\n", g->name, g->nops, g->nblocks, si(st.params, b, sizeof b),
                    st.fwd_flops, out);
            graph_stats_free(&st);
        }
    }
    graph_free(g);
    return rc ? fail(&err) : 0;
}

/* Prints blocks with identical figures as one row ("0-95"). */
static void print_blocks(const GraphStats *st)
{
    char a[32], b[32], c[32];
    printf("\n  %-14s %14s %16s %14s\n", "block", "params", "train FLOPs", "activations");
    for (int i = 0; i < st->nblocks;) {
        int j = i;
        while (j + 1 < st->nblocks && st->block_params[j + 1] == st->block_params[i] &&
               st->block_flops[j + 1] == st->block_flops[i] &&
               st->block_act_bytes[j + 1] == st->block_act_bytes[i])
            j++;
        char name[32];
        if (j > i) snprintf(name, sizeof name, "%d-%d (each)", i, j);
        else snprintf(name, sizeof name, "%d", i);
        printf("  %-14s %14s %16.4g %14s\n", name, si(st->block_params[i], a, sizeof a),
               st->block_flops[i], bytes_h(st->block_act_bytes[i], c, sizeof c));
        (void)b;
        i = j + 1;
    }
    int o = st->nblocks;
    printf("  %-14s %14s %16.4g %14s\n", "outside", si(st->block_params[o], a, sizeof a),
           st->block_flops[o], bytes_h(st->block_act_bytes[o], c, sizeof c));
}

static int cmd_model_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, MODEL_SHOW_OPTS, false, &a, &err))
        return usage_error("model show", &err);
    if (args_has(&a, "help") || a.npos != 1)
        return usage_for(&a, "strata model show FILE [--json]", MODEL_SHOW_OPTS);
    Graph *g = graph_load(a.pos[0], &err);
    if (!g) return fail(&err);
    GraphStats st;
    if (graph_stats(g, &st, &err)) {
        graph_free(g);
        return fail(&err);
    }
    char id[17];
    graph_id(g, id);
    if (args_has(&a, "json")) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", g->name);
        cJSON_AddStringToObject(j, "id", id);
        cJSON_AddNumberToObject(j, "ops", g->nops);
        cJSON_AddNumberToObject(j, "tensors", g->ntensors);
        cJSON_AddNumberToObject(j, "blocks", g->nblocks);
        cJSON_AddNumberToObject(j, "params", st.params);
        cJSON_AddNumberToObject(j, "param_bytes", st.param_bytes);
        cJSON_AddNumberToObject(j, "train_flops", st.train_flops);
        cJSON_AddNumberToObject(j, "fwd_flops", st.fwd_flops);
        cJSON_AddNumberToObject(j, "act_bytes", st.act_bytes);
        cJSON *pb = cJSON_AddArrayToObject(j, "per_block");
        for (int i = 0; i <= st.nblocks; i++) {
            cJSON *o = cJSON_CreateObject();
            if (i < st.nblocks) cJSON_AddNumberToObject(o, "block", i);
            else cJSON_AddNullToObject(o, "block");
            cJSON_AddNumberToObject(o, "params", st.block_params[i]);
            cJSON_AddNumberToObject(o, "train_flops", st.block_flops[i]);
            cJSON_AddNumberToObject(o, "act_bytes", st.block_act_bytes[i]);
            cJSON_AddItemToArray(pb, o);
        }
        print_json(j);
        cJSON_Delete(j);
    } else {
        char p[32], b[32], act[32];
        printf("model %s (id %s): %d ops, %d tensors, %d blocks\n", g->name, id, g->nops,
               g->ntensors, g->nblocks);
        printf("  parameters         %s (%s)\n", si(st.params, p, sizeof p),
               bytes_h(st.param_bytes, b, sizeof b));
        printf("  FLOPs per step     %.4g training (forward + backward, no recompute), "
               "%.4g forward\n", st.train_flops, st.fwd_flops);
        printf("  activations        %s per step\n", bytes_h(st.act_bytes, act, sizeof act));
        print_blocks(&st);
    }
    graph_stats_free(&st);
    graph_free(g);
    return 0;
}

static int cmd_model_list(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "model list", "strata model list [--db PATH] [--json]", 0,
                            NULL, &a, &rc);
    if (!db) return rc;
    DbModel *rows;
    int n;
    if (db_model_list(db, &rows, &n, &err)) {
        db_close(db);
        return fail(&err);
    }
    if (args_has(&a, "json")) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_model(&rows[i], false));
        print_json(arr);
        cJSON_Delete(arr);
    } else {
        int wn = 4;
        for (int i = 0; i < n; i++)
            if ((int)strlen(rows[i].name) > wn) wn = (int)strlen(rows[i].name);
        printf("%-16s  %-*s  %12s  %12s  %s\n", "id", wn, "name", "params", "train FLOPs", "created");
        for (int i = 0; i < n; i++) {
            char p[32];
            printf("%-16s  %-*s  %12s  %12.4g  %s\n", rows[i].id, wn, rows[i].name,
                   si(rows[i].params, p, sizeof p), rows[i].train_flops, rows[i].created);
        }
    }
    db_model_list_free(rows, n);
    db_close(db);
    return 0;
}

/* ----------------------------------------------------------------------------
 * cluster */

static const OptSpec CLUSTER_SHOW_OPTS[] = {
    { "nodes", 0, true, "N  number of nodes (replaces the outermost level's count)" },
    { "json", 0, false, "print JSON" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static int cmd_cluster_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, CLUSTER_SHOW_OPTS, false, &a, &err))
        return usage_error("cluster show", &err);
    if (args_has(&a, "help") || a.npos != 1)
        return usage_for(&a, "strata cluster show FILE [--nodes N] [--json]", CLUSTER_SHOW_OPTS);
    int64_t nodes = 0;
    if (args_int(&a, "nodes", 1, 1 << 20, &nodes, &err)) return usage_error("cluster show", &err);
    Cluster *c = cluster_load(a.pos[0], (int)nodes, &err);
    if (!c) return fail(&err);
    if (args_has(&a, "json")) {
        cJSON *j = cluster_to_json(c);
        cJSON_AddNumberToObject(j, "ndevices", c->ndevices);
        print_json(j);
        cJSON_Delete(j);
    } else {
        char id[17], m[32];
        cluster_id(c, id);
        printf("cluster %s (id %s): %d devices\n", c->name, id, c->ndevices);
        for (int i = 0; i < c->ngroups; i++) {
            const DeviceGroup *d = &c->groups[i];
            printf("  %d x %s (%s): %s memory at %.0f GB/s; peak", d->count, d->name, d->kind,
                   bytes_h(d->mem_bytes, m, sizeof m), d->mem_bw / 1e9);
            for (int t = 0; t < DT_I32; t++)
                if (d->peak_flops[t] > 0)
                    printf(" %s %.4g TFLOP/s", dtype_name((DType)t), d->peak_flops[t] / 1e12);
            printf("\n");
        }
        printf("  topology, innermost first:\n");
        for (int l = 0; l < c->nlevels; l++) {
            const Level *v = &c->levels[l];
            printf("    %-8s x%-5d over %-12s %8.1f GB/s per device, %6.1f us\n", v->name,
                   v->count, v->link, v->bw / 1e9, v->latency * 1e6);
        }
    }
    cluster_free(c);
    return 0;
}

/* ----------------------------------------------------------------------------
 * strategy */

static const OptSpec STRATEGY_BUILD_OPTS[] = {
    { "model", 0, true, "FILE  model JSON (required)" },
    { "cluster", 0, true, "FILE  cluster JSON (sets the world size)" },
    { "nodes", 0, true, "N  nodes of the cluster template" },
    { "world", 0, true, "W  devices to use (default: the cluster's)" },
    { "tp", 0, true, "T  tensor-parallel degree (megatron)" },
    { "pp", 0, true, "P  pipeline stages (megatron, gpipe)" },
    { "dp", 0, true, "D  data-parallel degree (default: world / (tp*pp))" },
    { "microbatches", 0, true, "M  micro-batches per step (default: P)" },
    { "virtual", 0, true, "V  megatron: model chunks per pipeline stage (V > 1: interleaved 1F1B)" },
    { "zero", 0, true, "1|2|3  ZeRO stage (zero; default 3)" },
    { "ps-shards", 0, true, "S  parameter-server shards (ps, parallax)" },
    { "staleness", 0, true, "K  parameter-server staleness bound (0 = synchronous)" },
    { "compress", 0, true, "none|fp16|int8|powersgd:R  gradient compression" },
    { "recompute", 0, false, "recompute block activations in backward" },
    { "sequence-parallel", 0, false, "megatron: split the sequence outside attention/MLP" },
    { "output", 'o', true, "FILE  write the strategy JSON here (default: stdout)" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const OptSpec STRATEGY_SHOW_OPTS[] = {
    { "model", 0, true, "FILE  model JSON (required)" },
    { "cluster", 0, true, "FILE  cluster JSON" },
    { "nodes", 0, true, "N  nodes of the cluster template" },
    { "json", 0, false, "print the canonical form" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

/* Usage checks of --model, --cluster, --nodes (and `also`, another required
 * option, or NULL): every missing option is named at once. */
int check_model_cluster(const Args *a, bool need_cluster, const char *also, Err *err)
{
    char missing[128] = "";
    if (also && !args_get(a, also)) snprintf(missing + strlen(missing), 40, " --%s", also);
    if (!args_get(a, "model")) strcat(missing, " --model");
    if (need_cluster && !args_get(a, "cluster")) strcat(missing, " --cluster");
    if (missing[0]) return err_set(err, "missing required option%s:%s", strchr(missing + 1, ' ') ? "s" : "", missing);
    int64_t nodes = 0;
    if (args_int(a, "nodes", 1, 1 << 20, &nodes, err)) return -1;
    if (args_get(a, "nodes") && !args_get(a, "cluster")) return err_set(err, "--nodes needs --cluster");
    return 0;
}

/* Loads --model and, when given, --cluster [--nodes] (checked already). */
int load_model_cluster(const Args *a, Graph **g, Cluster **c, Err *err)
{
    *g = NULL;
    *c = NULL;
    const char *mp = args_get(a, "model"), *cp = args_get(a, "cluster");
    int64_t nodes = 0;
    if (args_int(a, "nodes", 1, 1 << 20, &nodes, err)) return -1;
    *g = graph_load(mp, err);
    if (!*g) return -1;
    if (cp) {
        *c = cluster_load(cp, (int)nodes, err);
        if (!*c) {
            graph_free(*g);
            *g = NULL;
            return -1;
        }
    }
    return 0;
}

static int cmd_strategy_build(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, STRATEGY_BUILD_OPTS, false, &a, &err))
        return usage_error("strategy build", &err);
    if (args_has(&a, "help") || a.npos != 1)
        return usage_for(&a, "strata strategy build KIND --model FILE [options] [-o FILE]\n"
                             "  KIND: dp, zero (zero1, zero2, zero3), megatron, gpipe, ps, "
                             "parallax, sfb", STRATEGY_BUILD_OPTS);
    static const char *const kinds[] = { "dp", "zero", "zero1", "zero2", "zero3", "megatron",
                                         "gpipe", "ps", "parallax", "sfb", NULL };
    bool known = false;
    for (const char *const *k = kinds; *k; k++) known |= strcmp(*k, a.pos[0]) == 0;
    if (!known) {
        err_set(&err, "unknown strategy kind \"%s\" (one of: dp, zero, zero1, zero2, zero3, "
                      "megatron, gpipe, ps, parallax, sfb)", a.pos[0]);
        return usage_error("strategy build", &err);
    }
    if (check_model_cluster(&a, false, NULL, &err)) return usage_error("strategy build", &err);
    StrategyOpts o = {0};
    int64_t v;
    struct { const char *k; int *dst; int64_t lo, hi; } ints[] = {
        { "world", &o.world, 1, STRATEGY_MAX_WORLD }, { "tp", &o.tp, 1, 1 << 16 },
        { "pp", &o.pp, 1, 1 << 16 }, { "dp", &o.dp, 1, STRATEGY_MAX_WORLD },
        { "microbatches", &o.microbatches, 1, STRATEGY_MAX_MICRO },
        { "virtual", &o.virtual_stages, 1, 1 << 16 },
        { "zero", &o.zero, 1, 3 }, { "ps-shards", &o.ps_shards, 1, PS_MAX_SHARDS },
        { "staleness", &o.staleness, 0, STRATEGY_MAX_STALENESS },
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        v = 0;
        if (args_int(&a, ints[i].k, ints[i].lo, ints[i].hi, &v, &err))
            return usage_error("strategy build", &err);
        *ints[i].dst = (int)v;
    }
    o.compress = args_get(&a, "compress");
    if (o.compress) {
        Compress c;
        int r;
        if (strategy_parse_compress(o.compress, "--compress", &c, &r, &err))
            return usage_error("strategy build", &err);
        if (c == COMPRESS_NONE) o.compress = NULL;
    }
    o.recompute = args_has(&a, "recompute");
    o.sequence_parallel = args_has(&a, "sequence-parallel");
    if (args_out_file(&a, "output", "-o", NULL, &err) || strategy_opts_check(a.pos[0], &o, &err))
        return usage_error("strategy build", &err);
    const char *kind = a.pos[0];
    Graph *g;
    Cluster *c;
    if (load_model_cluster(&a, &g, &c, &err)) return fail(&err);
    int rc = 0;
    cJSON *j = strategy_build(kind, g, c, &o, &err);
    Strategy *s = j ? strategy_from_json(j, g, c, &err) : NULL;
    if (!s) {
        rc = fail(&err);
    } else {
        const char *out = args_get(&a, "output");
        if (json_save(j, out, &err)) rc = fail(&err);
        else if (out && strcmp(out, "-") != 0)
            fprintf(stderr, "wrote %s strategy (id %s, %d %s) to %s\n", a.pos[0], s->id,
                    s->world, plural(s->world, "device", "devices"), out);
    }
    strategy_free(s);
    cJSON_Delete(j);
    cluster_free(c);
    graph_free(g);
    return rc;
}

static void print_strategy(const Strategy *s, const Graph *g)
{
    printf("strategy %s: %d %s, mesh", s->id, s->world, plural(s->world, "device", "devices"));
    for (int a = 0; a < s->naxes; a++)
        printf(" %s%s=%d", a ? "x " : "", s->axis_name[a], s->axis_size[a]);
    printf("\n  pipeline: %d stage%s, %d micro-batch%s, %s", s->nstages, s->nstages == 1 ? "" : "s",
           s->microbatches, s->microbatches == 1 ? "" : "es",
           schedule_name(s->schedule));
    if (s->schedule == SCHED_INTERLEAVED) printf(" (%d chunks per stage)", s->virtual_stages);
    if (s->nstages > 1) {
        printf(", cuts at blocks");
        for (int i = 0; i < s->nchunks - 1; i++) printf(" %d", s->cuts[i]);
    }
    printf("\n  optimizer: %s\n", s->optimizer == OPT_ADAM ? "adam" : "sgd");
    int nrecompute = 0, nsplit = 0;
    for (int i = 0; i < g->nops; i++) {
        nrecompute += s->ops[i].recompute && g->ops[i].block >= 0;   /* checkpointing is per block */
        for (int l = 0; l < IR_LETTERS; l++)
            if (l != g->ops[i].batch_letter && s->ops[i].split[l]) { nsplit++; break; }
    }
    printf("  ops: %d of %d split beyond the batch, %d recomputed in backward\n", nsplit, g->nops,
           nrecompute);
    /* params grouped by policy */
    int counts[3][4] = {{0}};
    for (int t = 0; t < g->ntensors; t++)
        if (g->tensors[t].role == ROLE_PARAM)
            counts[s->params[t].method][s->params[t].shard]++;
    for (int m = 0; m < 3; m++)
        for (int sh = 0; sh < 4; sh++)
            if (counts[m][sh])
                printf("  params: %d synced by %s, shard %s\n", counts[m][sh],
                       sync_method_name((SyncMethod)m), shard_name((Shard)sh));
}

static int cmd_strategy_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, STRATEGY_SHOW_OPTS, false, &a, &err))
        return usage_error("strategy show", &err);
    if (args_has(&a, "help") || a.npos != 1)
        return usage_for(&a, "strata strategy show FILE --model FILE [--cluster FILE] [--json]",
                         STRATEGY_SHOW_OPTS);
    if (check_model_cluster(&a, false, NULL, &err)) return usage_error("strategy show", &err);
    Graph *g;
    Cluster *c;
    if (load_model_cluster(&a, &g, &c, &err)) return fail(&err);
    Strategy *s = strategy_load(a.pos[0], g, c, &err);
    int rc = 0;
    if (!s) rc = fail(&err);
    else if (args_has(&a, "json")) print_json(s->canonical);
    else print_strategy(s, g);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
    return rc;
}

/* ----------------------------------------------------------------------------
 * lower */

static const OptSpec LOWER_OPTS[] = {
    { "model", 0, true, "FILE  model JSON (required)" },
    { "cluster", 0, true, "FILE  cluster JSON (required)" },
    { "nodes", 0, true, "N  nodes of the cluster template" },
    { "strategy", 0, true, "FILE  strategy JSON (required)" },
    { "json", 0, false, "print the summary as JSON" },
    { "db", 0, true, "PATH  store model, cluster and plan here (default strata.db)" },
    { "no-store", 0, false, "do not store anything" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static int cmd_lower(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, LOWER_OPTS, false, &a, &err)) return usage_error("lower", &err);
    if (args_has(&a, "help") || a.npos)
        return usage_for(&a, "strata lower --model FILE --cluster FILE [--nodes N] "
                             "--strategy FILE [--json] [--db PATH] [--no-store]", LOWER_OPTS);
    if (check_model_cluster(&a, true, "strategy", &err)) return usage_error("lower", &err);
    Graph *g;
    Cluster *c;
    if (load_model_cluster(&a, &g, &c, &err)) return fail(&err);
    int rc = 0;
    Plan *p = NULL;
    cJSON *sum = NULL;
    Strategy *s = strategy_load(args_get(&a, "strategy"), g, c, &err);
    if (!s) {
        rc = fail(&err);
        goto out;
    }
    double t0 = now_s();
    p = ir_lower_compact(g, c, s, &err);
    double dt = now_s() - t0;
    if (!p) {
        rc = fail(&err);
        goto out;
    }
    sum = plan_summary_json(p, s);
    cJSON_AddNumberToObject(sum, "lower_seconds", dt);
    char plan_id[17] = "";
    if (!args_has(&a, "no-store")) {
        const char *path = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
        if (job_store_plan(path, g, c, s, p, sum, plan_id, &err)) {
            rc = fail(&err);
            goto out;
        }
        cJSON_AddStringToObject(sum, "plan_id", plan_id);
    }
    if (args_has(&a, "json")) {
        print_json(sum);
    } else {
        plan_summary_print(p, s, stdout);
        printf("\nlowered %d ranks as %d class%s in %.1f ms", p->world, p->nclasses,
               p->nclasses == 1 ? "" : "es", dt * 1e3);
        if (plan_id[0]) printf("; stored as plan %s", plan_id);
        printf("\n");
    }
out:
    cJSON_Delete(sum);
    plan_free(p);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
    return rc;
}

/* ----------------------------------------------------------------------------
 * plans */

static int cmd_plans_list(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "plans list", "strata plans list [--db PATH] [--json]", 0,
                            NULL, &a, &rc);
    if (!db) return rc;
    const char *path = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
    DbPlan *rows;
    int n;
    if (db_plan_list(db, &rows, &n, &err)) {
        db_close(db);
        return fail(&err);
    }
    if (args_has(&a, "json")) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_plan(db, &rows[i], false));
        print_json(arr);
        cJSON_Delete(arr);
    } else {
        int wm = 5, wc = 7;
        for (int i = 0; i < n; i++) {
            if ((int)strlen(rows[i].model_name) > wm) wm = (int)strlen(rows[i].model_name);
            if ((int)strlen(rows[i].cluster_name) > wc) wc = (int)strlen(rows[i].cluster_name);
        }
        printf("%-16s  %-*s  %-*s  %6s  %-16s  %s\n", "plan", wm, "model", wc, "cluster", "ranks",
               "strategy", "created");
        for (int i = 0; i < n; i++)
            printf("%-16s  %-*s  %-*s  %6d  %-16s  %s\n", rows[i].id, wm, rows[i].model_name, wc,
                   rows[i].cluster_name, rows[i].world, rows[i].strategy_id, rows[i].created);
        if (!n) printf("(no plans in %s; `strata lower` stores one)\n", path);
    }
    db_plan_list_free(rows, n);
    db_close(db);
    return 0;
}

static int cmd_plans_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "plans show", "strata plans show ID [--db PATH] [--json]",
                            1, "plan", &a, &rc);
    if (!db) return rc;
    DbPlan p;
    rc = db_plan_get(db, a.pos[0], &p, &err);
    cJSON *view = rc || !args_has(&a, "json") ? NULL : view_plan(db, &p, true);
    db_close(db);
    if (rc) return fail(&err);
    cJSON *strategy = cJSON_Parse(p.strategy_json), *summary = cJSON_Parse(p.summary_json);
    if (view) {
        print_json(view);
        cJSON_Delete(view);
    } else {
        printf("plan %s: model %s (%s) on cluster %s (%s), %d %s, strategy %s, stored %s\n",
               p.id, p.model_name, p.model_id, p.cluster_name, p.cluster_id, p.world,
               plural(p.world, "rank", "ranks"), p.strategy_id, p.created);
        const cJSON *mesh = cJSON_GetObjectItemCaseSensitive(strategy, "mesh");
        const cJSON *it;
        printf("  mesh:");
        cJSON_ArrayForEach(it, mesh) printf(" %s=%d", it->string, it->valueint);
        printf("\n");
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(summary, "classes");
        int k = 0;
        cJSON_ArrayForEach(it, cls) {
            int nr = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(it, "ranks"));
            const cJSON *cb = cJSON_GetObjectItemCaseSensitive(it, "comm_bytes");
            printf("  class %d: stage %.0f, %d %s, %.0f instructions, peak memory %s\n", k++,
                   num(it, "stage"), nr, plural(nr, "rank", "ranks"),
                   num(cJSON_GetObjectItemCaseSensitive(it, "instrs"), "total"),
                   bytes_h(num(it, "peak_mem_bytes"), (char[32]){0}, 32));
            const cJSON *b;
            printf("    bytes per step:");
            cJSON_ArrayForEach(b, cb)
                if (b->valuedouble > 0) printf(" %s %s", b->string, bytes_h(b->valuedouble, (char[32]){0}, 32));
            printf("\n");
        }
    }
    cJSON_Delete(strategy);
    cJSON_Delete(summary);
    db_plan_free(&p);
    return 0;
}

static int cmd_plans_export(int argc, char **argv)
{
    static const OptSpec OPTS[] = {
        { "to", 0, true, "megatron|deepspeed|torchtitan  the framework" },
        { "output", 'o', true, "FILE  write the configuration here (default: stdout)" },
        { "db", 0, true, "PATH  database (default strata.db)" },
        { "json", 0, false, "print the result as JSON (configuration, what does not map, notes)" },
        { "help", 'h', false, "show this help" },
        { NULL, 0, false, NULL },
    };
    const char *line = "strata plans export ID --to megatron|deepspeed|torchtitan [-o FILE] "
                       "[--db PATH] [--json]";
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, OPTS, false, &a, &err)) return usage_error("plans export", &err);
    if (args_has(&a, "help") || a.npos != 1) return usage_for(&a, line, OPTS);
    if (db_id_check("plan", a.pos[0], &err)) return usage_error("plans export", &err);
    ExportTarget to;
    if (!args_get(&a, "to") || export_target_parse(args_get(&a, "to"), &to)) {
        err_set(&err, "--to: %s%s%s (one of: megatron, deepspeed, torchtitan)",
                args_get(&a, "to") ? "unknown framework \"" : "required",
                args_get(&a, "to") ? args_get(&a, "to") : "", args_get(&a, "to") ? "\"" : "");
        return usage_error("plans export", &err);
    }
    const char *db = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
    if (args_out_file(&a, "output", "-o", db, &err)) return usage_error("plans export", &err);
    if (args_get(&a, "output") && args_has(&a, "json")) {
        err_set(&err, "-o and --json: -o writes the configuration alone, --json prints it with "
                "what does not map and the notes; give one");
        return usage_error("plans export", &err);
    }
    Export x;
    if (job_export(db, a.pos[0], to, &x, &err)) return fail(&err);
    int rc = 0;
    if (args_has(&a, "json")) {
        cJSON *j = export_json(&x);
        print_json(j);
        cJSON_Delete(j);
        rc = x.text ? 0 : EXIT_FAILURE;
    } else if (x.text) {
        const char *out = args_get(&a, "output");
        FILE *f = out ? fopen(out, "w") : stdout;
        if (!f) {
            err_set(&err, "-o %s: cannot write it: %s", out, strerror(errno));
            export_free(&x);
            return fail(&err);
        }
        bool ok = fputs(x.text, f) >= 0;
        if (out && fclose(f)) ok = false;
        if (out && !ok) {
            err_set(&err, "-o %s: cannot write it: %s", out, strerror(errno));
            export_free(&x);
            return fail(&err);
        }
        if (out) fprintf(stderr, "wrote the %s configuration of plan %s to %s\n",
                         export_target_name(to), x.plan_id, out);
        for (int i = 0; i < x.nnotes; i++) fprintf(stderr, "note: %s\n", x.notes[i]);
    } else {
        fprintf(stderr, "strata: plan %s cannot be expressed in %s:\n", x.plan_id,
                export_target_name(to));
        for (int i = 0; i < x.nunmapped; i++) fprintf(stderr, "  - %s\n", x.unmapped[i]);
        char t0[32], t1[32];
        if (x.closest_plan_id[0]) {
            cli_seconds(x.step_s, t0, sizeof t0);
            cli_seconds(x.closest_step_s, t1, sizeof t1);
            fprintf(stderr, "the closest plan %s can express is stored as %s: predicted %s per "
                    "step against this plan's %s (analytical model)\n  strata plans export %s "
                    "--to %s\n", export_target_name(to), x.closest_plan_id, t1, t0,
                    x.closest_plan_id, export_target_name(to));
        } else {
            fprintf(stderr, "no plan %s can express was found: %s\n", export_target_name(to),
                    x.closest_why);
        }
        rc = EXIT_FAILURE;
    }
    export_free(&x);
    return rc;
}

/* ----------------------------------------------------------------------------
 * dispatch */

typedef struct {
    const char *group, *verb;
    int (*fn)(int, char **);
    const char *args, *help;
} Command;

static const Command COMMANDS[] = {
    { "model", "build", cmd_model_build, "KIND [--opt V ...] [-o FILE]", "build a zoo model" },
    { "model", "import", cmd_model_import, "FILE.onnx [--batch N] [-o FILE]",
      "an ONNX model as strata's JSON" },
    { "model", "show", cmd_model_show, "FILE [--json]", "parameters, FLOPs, activations" },
    { "model", "list", cmd_model_list, "[--db PATH] [--json]", "stored models" },
    { "cluster", "show", cmd_cluster_show, "FILE [--nodes N] [--json]", "devices and links" },
    { "strategy", "build", cmd_strategy_build, "KIND --model FILE [...]", "a classic strategy" },
    { "strategy", "show", cmd_strategy_show, "FILE --model FILE [--json]",
      "validate; canonical form and id" },
    { "lower", NULL, cmd_lower, "--model F --cluster F --strategy F", "per-rank programs" },
    { "estimate", NULL, cmd_estimate, "--model F --cluster F --strategy F",
      "predict step time and memory" },
    { "validate", NULL, cmd_validate, "[--suite default|FILE] [--np N]",
      "predicted against measured, here" },
    { "search", NULL, cmd_search, "--model F --cluster F [--budget B]",
      "find the fastest plan that fits" },
    { "searches", "list", cmd_searches_list, "[--db PATH] [--json]", "stored searches" },
    { "searches", "show", cmd_searches_show, "ID [--db PATH] [--json]",
      "one search: best plan, baselines" },
    { "searches", "events", cmd_searches_events, "ID [--after N] [--db PATH]",
      "its progress, as JSON lines" },
    { "serve", NULL, cmd_serve, "[--listen HOST:PORT] [--db PATH]",
      "the REST API and its page" },
    { "plans", "list", cmd_plans_list, "[--db PATH] [--json]", "stored plans" },
    { "plans", "show", cmd_plans_show, "ID [--db PATH] [--json]", "one stored plan" },
    { "plans", "export", cmd_plans_export, "ID --to megatron|deepspeed|torchtitan",
      "the plan as a framework's configuration" },
    { "run", NULL, cmd_run, "--model F --strategy F | --plan ID", "train the plan for real" },
    { "runs", "list", cmd_runs_list, "[--db PATH] [--json]", "stored runs" },
    { "runs", "show", cmd_runs_show, "ID [--db PATH] [--json]", "one run's measurements" },
    /* `profile list|show` before `profile`, which takes every other argument list */
    { "profile", "list", cmd_profile_list, "[--db PATH] [--json]", "stored profiles" },
    { "profile", "show", cmd_profile_show, "ID [--db PATH] [--json]", "op and link tables" },
    { "profile", NULL, cmd_profile, "[--quick] [-o cluster.json]", "measure this machine" },
    { "costmodel", "train", cmd_costmodel_train, "--profile ID [--seed N]", "learn op times" },
    { "costmodel", "list", cmd_costmodel_list, "[--db PATH] [--json]", "stored cost models" },
    { "costmodel", "show", cmd_costmodel_show, "ID [--db PATH] [--json]", "held-out error per kind" },
};
#define NCOMMANDS (int)(sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f)
{
    fprintf(f, "strata: find how to parallelise a model's training, and prove it\n\n"
               "usage: strata COMMAND [options]   (COMMAND --help for its options)\n\n");
    for (int i = 0; i < NCOMMANDS; i++) {
        char name[32];
        snprintf(name, sizeof name, "%s%s%s", COMMANDS[i].group, COMMANDS[i].verb ? " " : "",
                 COMMANDS[i].verb ? COMMANDS[i].verb : "");
        fprintf(f, "  %-15s %-36s %s\n", name, COMMANDS[i].args, COMMANDS[i].help);
    }
}

/* rc, unless what the command printed could not all be written (a full
 * disk, a closed pipe's reader gone): then the command failed, said so. */
static int written(int rc)
{
    if (fflush(stdout) == 0 && !ferror(stdout)) return rc;
    fprintf(stderr, "strata: writing the output: %s\n", errno ? strerror(errno) : "failed");
    return rc ? rc : EXIT_FAILURE;
}

int main(int argc, char **argv)
{
    blas_fix_coretype(argv);
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    bool group_known = false;
    for (int i = 0; i < NCOMMANDS; i++) {
        if (strcmp(argv[1], COMMANDS[i].group) != 0) continue;
        group_known = true;
        if (!COMMANDS[i].verb) return written(COMMANDS[i].fn(argc - 2, argv + 2));
        if (argc >= 3 && strcmp(argv[2], COMMANDS[i].verb) == 0)
            return written(COMMANDS[i].fn(argc - 3, argv + 3));
    }
    if (group_known && argc >= 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
        for (int i = 0; i < NCOMMANDS; i++)
            if (strcmp(argv[1], COMMANDS[i].group) == 0)
                printf("  strata %s %-8s %-36s %s\n", COMMANDS[i].group,
                       COMMANDS[i].verb ? COMMANDS[i].verb : "", COMMANDS[i].args, COMMANDS[i].help);
        return 0;
    }
    if (group_known) {
        fprintf(stderr, "strata %s: unknown or missing subcommand%s%s; one of:", argv[1],
                argc >= 3 ? " " : "", argc >= 3 ? argv[2] : "");
        for (int i = 0; i < NCOMMANDS; i++)
            if (strcmp(argv[1], COMMANDS[i].group) == 0) fprintf(stderr, " %s", COMMANDS[i].verb);
        fprintf(stderr, "\n");
    } else {
        fprintf(stderr, "strata: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
    }
    return EXIT_USAGE;
}
