/*
 * lower_fixtures.c — cases for the lowering tests (see lower_fixtures.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "ir/zoo.h"
#include "tests/support/lower_fixtures.h"

Graph *fixture_gpt(GptShape x)
{
    char l[16], h[16], n[16], s[16], V[16], B[16];
    snprintf(l, sizeof l, "%d", x.l);
    snprintf(h, sizeof h, "%d", x.h);
    snprintf(n, sizeof n, "%d", x.n);
    snprintf(s, sizeof s, "%d", x.s);
    snprintf(V, sizeof V, "%d", x.V);
    snprintf(B, sizeof B, "%d", x.B);
    const char *keys[] = { "layers", "hidden", "heads", "seq", "vocab", "batch", "tied" };
    const char *vals[] = { l, h, n, s, V, B, x.tied ? "1" : "0" };
    Err err = {0};
    Graph *g = zoo_build("gpt", 7, keys, vals, &err);
    if (!g) fail_msg("gpt: %s", err.msg);
    return g;
}

Strategy *fixture_strategy(const Graph *g, const char *json)
{
    Err err = {0};
    cJSON *j = cJSON_Parse(json);
    if (!j) fail_msg("bad test JSON: %s", json);
    Strategy *s = strategy_from_json(j, g, NULL, &err);
    cJSON_Delete(j);
    if (!s) fail_msg("strategy: %s", err.msg);
    return s;
}

Plan *fixture_lower(const Graph *g, const Strategy *s)
{
    Err err = {0};
    Plan *p = ir_lower(g, NULL, s, &err);
    if (!p) fail_msg("lower: %s", err.msg);
    return p;
}

int64_t fixture_param_bytes(const Graph *g)
{
    int64_t b = 0;
    for (int t = 0; t < g->ntensors; t++)
        if (g->tensors[t].role == ROLE_PARAM)
            b += tensor_numel(&g->tensors[t]) * dtype_bytes(g->tensors[t].dtype);
    return b;
}

int fixture_nparams(const Graph *g)
{
    int n = 0;
    for (int t = 0; t < g->ntensors; t++) n += g->tensors[t].role == ROLE_PARAM;
    return n;
}
