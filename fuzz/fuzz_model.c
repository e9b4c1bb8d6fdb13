/*
 * fuzz_model.c — libFuzzer harness of the model JSON reader: any bytes,
 * parsed, validated, and when accepted measured and written back.
 */
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "ir/graph.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    cJSON *j = cJSON_ParseWithLength((const char *)data, n);
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
