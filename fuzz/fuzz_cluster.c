/*
 * fuzz_cluster.c — libFuzzer harness of the cluster JSON reader: any bytes,
 * parsed and validated (as is, and scaled to a few nodes), and when accepted
 * written back.
 */
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "ir/util.h"
#include "ir/cluster.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    /* as a file is read (json_load): one value, each key once */
    size_t at;
    cJSON *j = json_parse_strict((const char *)data, n, &at, &(Err){ { 0 } });
    if (!j) return 0;
    for (int nodes = 0; nodes <= 3; nodes += 3) {
        Err err = {0};
        Cluster *c = cluster_from_json(j, nodes, &err);
        if (!c) continue;
        cJSON_Delete(cluster_to_json(c));
        cluster_free(c);
    }
    cJSON_Delete(j);
    return 0;
}
