/*
 * fuzz_strategy.c — libFuzzer harness of the strategy JSON reader against a
 * small GPT on 8 A100s: any bytes, parsed and validated, and when accepted
 * lowered in the compact form (what every estimate does next).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cjson/cJSON.h>
#include "ir/util.h"
#include "ir/cluster.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/zoo.h"

static Graph *g;
static Cluster *c;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    Err err = {0};
    const char *k[] = { "preset", "batch" }, *v[] = { "small", "8" };
    g = zoo_build("gpt", 2, k, v, &err);
    const char *root = getenv("STRATA_ROOT") ? getenv("STRATA_ROOT") : ".";
    char path[4096];
    snprintf(path, sizeof path, "%s/clusters/dgx-a100-80gb.json", root);
    c = g ? cluster_load(path, 1, &err) : NULL;
    if (!c) {
        fprintf(stderr, "fuzz_strategy: %s\n", err.msg);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    /* as a file is read (json_load): one value, each key once */
    size_t at;
    cJSON *j = json_parse_strict((const char *)data, n, &at, &(Err){ { 0 } });
    if (!j) return 0;
    Err err = {0};
    Strategy *s = strategy_from_json(j, g, c, &err);
    cJSON_Delete(j);
    if (!s) return 0;
    Plan *p = ir_lower_compact(g, c, s, &err);
    plan_free(p);
    strategy_free(s);
    return 0;
}
