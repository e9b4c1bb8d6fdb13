/*
 * bench_estimate.c — how long a prediction takes: lowering plus simulation
 * of GPT-3 175B plans on 1024 A100s, cold (each plan lowered and simulated
 * from nothing), and the rate of estimates over a loop of varied plans
 * (micro-batches, recompute, pipeline depth), per core: with each
 * strategy built and read from JSON, and from strategies already built
 * (as the searcher has its candidates). The fast path (the
 * compact form, regular passes run whole) is timed beside the reference
 * (the full program, instruction by instruction), and the two predictions
 * are compared. Figures, not pass/fail; the targets (2 ms cold, 5,000
 * estimates/s) are printed beside them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "costmodel/costmodel.h"
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

/* The megatron strategy of o, built and read from its JSON as a user's
 * would be; NULL (said) when it cannot be. */
static Strategy *build(const Graph *g, const Cluster *c, StrategyOpts o)
{
    Err err = {0};
    cJSON *j = strategy_build("megatron", g, c, &o, &err);
    Strategy *s = j ? strategy_from_json(j, g, c, &err) : NULL;
    cJSON_Delete(j);
    if (!s) fprintf(stderr, "bench_estimate: %s\n", err.msg);
    return s;
}

/* Lowers (compact or full) and simulates the plan of a built strategy; the
 * two times go to *tl and *ts. */
static int estimate_built(const Graph *g, const Cluster *c, const Strategy *s, bool compact,
                          double *tl, double *ts, SimResult *out, long *instrs)
{
    Err err = {0};
    double t0 = now_s();
    Plan *p = compact ? ir_lower_compact(g, c, s, &err) : ir_lower(g, c, s, &err);
    double t1 = now_s();
    SimResult r;
    int rc = p ? cost_simulate(g, c, s, p, NULL, &r, &err) : -1;
    double t2 = now_s();
    if (rc) fprintf(stderr, "bench_estimate: %s\n", err.msg);
    *tl = t1 - t0;
    *ts = t2 - t1;
    if (!rc && instrs) {
        *instrs = 0;
        for (int k = 0; k < p->nclasses; k++) *instrs += p->classes[k].ninstrs;
    }
    if (!rc && out) *out = r;
    else if (!rc) sim_result_free(&r);
    plan_free(p);
    return rc;
}

/* Builds the strategy of o (untimed), then estimate_built. */
static int estimate(const Graph *g, const Cluster *c, StrategyOpts o, bool compact, double *tl,
                    double *ts, SimResult *out, long *instrs)
{
    Strategy *s = build(g, c, o);
    int rc = s ? estimate_built(g, c, s, compact, tl, ts, out, instrs) : -1;
    strategy_free(s);
    return rc;
}

/* The loop's varied plans (micro-batches, recompute, pipeline depth). */
static const struct { int tp, pp, mb; bool rc; } VAR[] = {
    { 8, 16, 192, true }, { 8, 16, 96, true }, { 8, 8, 96, true }, { 8, 8, 48, false },
    { 4, 16, 96, true }, { 8, 32, 96, true }, { 8, 16, 48, true }, { 8, 8, 32, true },
};
enum { NVAR = sizeof VAR / sizeof VAR[0] };

static StrategyOpts varied(int i)
{
    return (StrategyOpts){ .world = 1024, .tp = VAR[i].tp, .pp = VAR[i].pp,
                           .microbatches = VAR[i].mb, .recompute = VAR[i].rc };
}

int main(void)
{
    Err err = {0};
    const char *k[] = { "preset", "batch" }, *v[] = { "gpt3-175b", "1536" };
    Graph *g = zoo_build("gpt", 2, k, v, &err);
    Cluster *c = g ? cluster_load("clusters/dgx-a100-80gb.json", 128, &err) : NULL;
    if (!c) {
        fprintf(stderr, "bench_estimate: %s\n", err.msg);
        graph_free(g);
        return 1;
    }
    printf("estimate (lower + simulate), GPT-3 175B, global batch 1536, 1024 x A100 80GB, "
           "analytical model, one core:\n");
    StrategyOpts base = { .world = 1024, .tp = 8, .pp = 16, .microbatches = 192, .recompute = true };
    SimResult ref, r;
    long instrs = 0, cinstrs = 0;
    double tl[5], ts[5], tt[5], rl, rs;
    if (estimate(g, c, base, false, &rl, &rs, &ref, &instrs)) return 1;
    printf("  megatron t8 p16 d8, 192 micro-batches, recompute:\n");
    printf("    reference (full program, %ld instrs): lower %.1f ms + simulate %.1f ms = %.1f ms\n",
           instrs, rl * 1e3, rs * 1e3, (rl + rs) * 1e3);
    for (int rep = 0; rep < 5; rep++) {
        if (estimate(g, c, base, true, &tl[rep], &ts[rep], rep == 0 ? &r : NULL, &cinstrs)) return 1;
        tt[rep] = tl[rep] + ts[rep];
    }
    qsort(tl, 5, sizeof *tl, cmp);
    qsort(ts, 5, sizeof *ts, cmp);
    qsort(tt, 5, sizeof *tt, cmp);
    printf("    fast (compact, %ld instrs in its bodies): lower %.2f ms + simulate %.2f ms = %.2f ms "
           "(median of 5; %.0fx faster; target 2 ms)\n", cinstrs, tl[2] * 1e3, ts[2] * 1e3,
           tt[2] * 1e3, (rl + rs) / tt[2]);
    {
        /* the lowering's share of it: classes alike copied, or each lowered */
        Strategy *s = build(g, c, base);
        if (!s) return 1;
        double te[5], tc[5];
        int copies = 0, nclasses = 0;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now_s();
            Plan *pe = ir_lower_compact_each(g, c, s, &err);
            double t1 = now_s();
            Plan *pc = ir_lower_compact(g, c, s, &err);
            double t2 = now_s();
            if (!pe || !pc) {
                fprintf(stderr, "bench_estimate: %s\n", err.msg);
                return 1;
            }
            te[rep] = t1 - t0;
            tc[rep] = t2 - t1;
            copies = 0;
            nclasses = pc->nclasses;
            for (int k = 0; k < pc->nclasses; k++) copies += pc->classes[k].like >= 0;
            plan_free(pe);
            plan_free(pc);
        }
        qsort(te, 5, sizeof *te, cmp);
        qsort(tc, 5, sizeof *tc, cmp);
        printf("    its lowering: %d of %d classes copied from alike ones, %.2f ms; every class "
               "lowered itself, %.2f ms\n", copies, nclasses, tc[2] * 1e3, te[2] * 1e3);
        strategy_free(s);
    }
    printf("    predicted step %.4f s (reference %.4f s, %+.2e relative), %.0f samples/s, MFU %.1f%%, "
           "bubble %.1f%%, %s\n", r.step_time, ref.step_time, r.step_time / ref.step_time - 1,
           r.samples_per_s, 100 * r.mfu, 100 * r.bubble, r.feasible ? "fits" : r.why_infeasible);
    printf("    its passes: %lld over the classes, %lld run whole: %lld of those evaluated, %lld "
           "stepped over (a steady state repeating), the rest replayed from the memo\n",
           (long long)r.passes, (long long)r.passes_whole, (long long)r.passes_evaluated,
           (long long)r.passes_skipped);
    sim_result_free(&r);
    sim_result_free(&ref);

    /* a loop of varied plans, as a search would ask: timed whole (each
     * strategy built by strategy_build and read from its JSON, as a user's
     * would be), and from strategies already built (the searcher builds
     * its candidates in memory, without JSON) */
    double t0 = now_s(), lower = 0, sim = 0;
    for (int i = 0; i < NVAR; i++) {
        double a, b;
        if (estimate(g, c, varied(i), true, &a, &b, NULL, NULL)) return 1;
        lower += a;
        sim += b;
    }
    double dt = now_s() - t0;
    printf("  %d varied plans: %.1f estimates/s per core (lower %.0f%%, simulate %.0f%% of "
           "the time, the rest building and reading the strategies' JSON; target 5000/s)\n",
           NVAR, NVAR / dt, 100 * lower / dt, 100 * sim / dt);
    Strategy *built[NVAR];
    for (int i = 0; i < NVAR; i++)
        if (!(built[i] = build(g, c, varied(i)))) return 1;
    t0 = now_s();
    for (int i = 0; i < NVAR; i++) {
        double a, b;
        if (estimate_built(g, c, built[i], true, &a, &b, NULL, NULL)) return 1;
    }
    dt = now_s() - t0;
    printf("  the same plans from strategies already built (as the searcher has them): %.1f "
           "estimates/s per core\n", NVAR / dt);
    for (int i = 0; i < NVAR; i++) strategy_free(built[i]);
    cluster_free(c);
    graph_free(g);
    return 0;
}
