/*
 * fuzz_model.c — libFuzzer harness of the model JSON reader: any bytes,
 * parsed as a file is (strictly), validated, and when accepted measured and
 * written back.
 */
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "ir/util.h"
#include "ir/graph.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    /* as a file is read (json_load): one value, each key once */
    size_t at;
    cJSON *j = json_parse_strict((const char *)data, n, &at, &(Err){ { 0 } });
    if (!j) return 0;
    Err err = {0};
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) return 0;
    GraphStats st;
    if (graph_stats(g, &st, &err) == 0) graph_stats_free(&st);
    cJSON_Delete(graph_to_json(g));
    graph_free(g);
    return 0;
}
