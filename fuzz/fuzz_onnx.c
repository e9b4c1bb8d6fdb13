/*
 * fuzz_onnx.c — libFuzzer harness of the ONNX importer: any bytes, read as
 * a model (protobuf-c), imported, and when accepted validated as strata's
 * model JSON.
 */
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "ir/graph.h"
#include "ir/onnx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    Err err = {0};
    OnnxOpts o = { .batch = 4 };
    cJSON *j = onnx_import(data, n, &o, &err);
    if (!j) return 0;
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    graph_free(g);
    return 0;
}
