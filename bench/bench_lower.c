/*
 * bench_lower.c — how long lowering takes for large plans.
 *
 * GPT-3 175B under Megatron-LM's 1024-GPU layout (t=8, p=16, d=8, 192
 * micro-batches) and two smaller layouts; prints the median of a few runs,
 * the classes and the instructions lowered, for the full program, the
 * compact form (each distinct pass once, plus the schedule) and the
 * expansion of the compact form. Figures, not pass/fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ir/cluster.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/zoo.h"
#include "ir/util.h"

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int bench(const char *label, const Graph *g, const Cluster *c, StrategyOpts o, int reps)
{
    Err err = {0};
    cJSON *j = strategy_build("megatron", g, c, &o, &err);
    Strategy *s = j ? strategy_from_json(j, g, c, &err) : NULL;
    cJSON_Delete(j);
    if (!s) {
        fprintf(stderr, "bench_lower: %s: %s\n", label, err.msg);
        return 1;
    }
    double t[3][16];
    long instrs[2] = { 0, 0 };
    int classes = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        Plan *p = ir_lower(g, c, s, &err);
        double t1 = now_s();
        Plan *cp = p ? ir_lower_compact(g, c, s, &err) : NULL;
        double t2 = now_s();
        Plan *ex = cp ? plan_expand(cp) : NULL;
        double t3 = now_s();
        t[0][r] = t1 - t0;
        t[1][r] = t2 - t1;
        t[2][r] = t3 - t2;
        if (!ex) {
            fprintf(stderr, "bench_lower: %s: %s\n", label, err.msg);
            plan_free(p);
            strategy_free(s);
            return 1;
        }
        instrs[0] = instrs[1] = 0;
        for (int k = 0; k < p->nclasses; k++) {
            instrs[0] += p->classes[k].ninstrs;
            instrs[1] += cp->classes[k].ninstrs;
        }
        classes = p->nclasses;
        plan_free(p);
        plan_free(cp);
        plan_free(ex);
    }
    for (int k = 0; k < 3; k++) qsort(t[k], reps, sizeof t[k][0], cmp);
    printf("  %-44s %5d ranks %3d classes (median of %d)\n", label, s->world, classes, reps);
    printf("    full    %9ld instrs  %8.2f ms\n", instrs[0], t[0][reps / 2] * 1e3);
    printf("    compact %9ld instrs  %8.2f ms  (%.0fx faster)\n", instrs[1], t[1][reps / 2] * 1e3,
           t[0][reps / 2] / t[1][reps / 2]);
    printf("    expand  %9ld instrs  %8.2f ms\n", instrs[0], t[2][reps / 2] * 1e3);
    strategy_free(s);
    return 0;
}

int main(void)
{
    Err err = {0};
    const char *k[] = { "preset" }, *v[] = { "gpt3-175b" };
    double t0 = now_s();
    Graph *g = zoo_build("gpt", 1, k, v, &err);
    if (!g) {
        fprintf(stderr, "bench_lower: %s\n", err.msg);
        return 1;
    }
    double tb = now_s() - t0;
    Cluster *c = cluster_load("clusters/dgx-a100-80gb.json", 128, &err);
    if (!c) {
        fprintf(stderr, "bench_lower: %s\n", err.msg);
        graph_free(g);
        return 1;
    }
    printf("lowering (GPT-3 175B, %d ops; built in %.1f ms):\n", g->nops, tb * 1e3);
    int rc = 0;
    rc |= bench("megatron t8 p16 d8, 192 micro-batches", g, c,
                (StrategyOpts){ .world = 1024, .tp = 8, .pp = 16, .microbatches = 192 }, 5);
    rc |= bench("megatron t8 p8 d16, 96 micro-batches", g, c,
                (StrategyOpts){ .world = 1024, .tp = 8, .pp = 8, .microbatches = 96 }, 5);
    rc |= bench("megatron t8 p16 d8, 16 micro-batches", g, c,
                (StrategyOpts){ .world = 1024, .tp = 8, .pp = 16, .microbatches = 16 }, 5);
    cluster_free(c);
    graph_free(g);
    return rc;
}
