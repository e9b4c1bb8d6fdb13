/*
 * lower_fixtures.h — what the lowering tests build their cases from: a GPT of
 * given sizes, a strategy from JSON text, a lowered plan, and parameter
 * counts. Each fails the running cmocka test (fail_msg) instead of returning
 * an error. The caller frees what it gets (graph_free, strategy_free,
 * plan_free).
 */
#ifndef STRATA_LOWER_FIXTURES_H
#define STRATA_LOWER_FIXTURES_H

#include <stdbool.h>
#include <stdint.h>
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"

/* Legend: l layers, h hidden, n heads, s sequence, V vocabulary, B batch. */
typedef struct { int l, h, n, s, V, B; bool tied; } GptShape;

Graph *fixture_gpt(GptShape x);
Strategy *fixture_strategy(const Graph *g, const char *json);   /* no cluster */
Plan *fixture_lower(const Graph *g, const Strategy *s);
int64_t fixture_param_bytes(const Graph *g);
int fixture_nparams(const Graph *g);

#define gpt fixture_gpt
#define strat fixture_strategy
#define lower fixture_lower
#define param_bytes fixture_param_bytes
#define nparams fixture_nparams

#endif
