/*
 * bench_search.c — what the searcher finds and how fast.
 *
 *   S1  time to plan: GPT-3 175B on 128 DGX A100 nodes, global batch 1536.
 *       With STRATA_BENCH_EXHAUSTIVE=1 the optimum of the coarse (tied)
 *       space is found by exhaustive search on 2 threads, however long that
 *       takes (about 40 minutes; its size and time printed); then `auto`
 *       with a 10 s budget on seeds 1 to 4, and how close each gets.
 *   S2  plan quality: each zoo model on DGX A100 nodes, the found plan's
 *       predicted step against the best baseline's and plain data
 *       parallelism's.
 *   S4  small spaces: MCMC and RL with 800 evaluations against the
 *       exhaustive optimum; and whether an RL policy trained on one model
 *       shortens the search of another.
 * Figures, not pass/fail.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel/mlp.h"
#include "ir/util.h"
#include "ir/zoo.h"
#include "search/search.h"

static Graph *zoo(const char *kind, const char *opts)
{
    const char *k[8], *v[8];
    char buf[256];
    snprintf(buf, sizeof buf, "%s", opts);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t && n < 8; t = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(t, '=');
        if (!eq) continue;
        *eq = 0;
        k[n] = t;
        v[n++] = eq + 1;
    }
    Err err = { { 0 } };
    Graph *g = zoo_build(kind, n, k, v, &err);
    if (!g) fprintf(stderr, "bench_search: %s %s: %s\n", kind, opts, err.msg);
    return g;
}

static double best_of(const SearchResult *r, const char *prefix)
{
    double b = INFINITY;
    for (int k = 0; k < r->nbaselines; k++)
        if (r->baselines[k].feasible && (!prefix || !strncmp(r->baselines[k].name, prefix, strlen(prefix))))
            b = fmin(b, r->baselines[k].step_s);
    return b;
}

/* When a search's best last improved (seconds since it started). */
static void on_improve(void *ctx, const cJSON *ev)
{
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(ev, "event");
    if (cJSON_IsString(k) && !strcmp(k->valuestring, "best"))
        *(double *)ctx = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ev, "elapsed_s"));
}

static double last_best;

static int search_seed(const Graph *g, const Cluster *c, SearchAlgo algo, double secs,
                       long evals, int threads, uint64_t seed, SearchResult *r)
{
    Err err = { { 0 } };
    last_best = 0;
    SearchOpts o = { .algo = algo, .budget_s = secs, .budget_evals = evals, .seed = seed,
                     .threads = threads, .event = on_improve, .ctx = &last_best,
                     .exhaustive_limit = INT64_MAX };
    if (search_run(g, c, &o, r, &err)) {
        fprintf(stderr, "bench_search: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int search(const Graph *g, const Cluster *c, SearchAlgo algo, double secs, long evals,
                  int threads, SearchResult *r)
{
    return search_seed(g, c, algo, secs, evals, threads, 1, r);
}

static void s1(void)
{
    Err err = { { 0 } };
    Graph *g = zoo("gpt", "preset=gpt3-175b batch=1536");
    Cluster *c = cluster_load("clusters/dgx-a100-80gb.json", 128, &err);
    if (!g || !c) return;
    printf("S1 time to plan: GPT-3 175B, batch 1536, 128 x DGX A100 (1024 GPUs), analytical model\n");
    SearchResult ex = { 0 }, au;
    /* the exhaustive search of this space takes about 40 minutes on 2
     * cores, even with the plans slower than the kept ones bounded: only
     * when asked for */
    bool have_ex = getenv("STRATA_BENCH_EXHAUSTIVE") && !getenv("STRATA_BENCH_QUICK");
    if (!have_ex)
        printf("  exhaustive search of the coarse space skipped (STRATA_BENCH_EXHAUSTIVE=1 runs it; "
               "about 40 minutes)\n");
    if (have_ex && search(g, c, SEARCH_EXHAUSTIVE, 0, 0, 2, &ex) == 0)
        printf("  exhaustive (2 threads), coarse space of %lld plans: %.4f s per step (%s), found "
               "in %.0f s (%ld simulated, %ld bounded, %ld infeasible, %ld invalid)\n",
               (long long)ex.space_size, ex.best.step_s, ex.best.name, ex.elapsed_s, ex.evals,
               ex.bounded, ex.infeasible, ex.invalid);
    for (int seed = 1; seed <= (getenv("STRATA_BENCH_QUICK") ? 1 : 4); seed++) {
        if (search_seed(g, c, SEARCH_AUTO, 10, 0, 2, (uint64_t)seed, &au)) continue;
        long n = au.evals + au.infeasible + au.invalid + au.bounded + au.cache_hits;
        printf("  auto (%s, 2 threads, seed %d), 10 s budget: %.4f s per step (%s), found %.1f s "
               "in, ended after %.1f s; %.1f evaluations/s\n", au.algo, seed, au.best.step_s,
               au.best.name, last_best, au.elapsed_s, n / au.elapsed_s);
        double meg = best_of(&au, "megatron");
        printf("    against Megatron-LM's best grid point %.4f s: %.3fx", meg, meg / au.best.step_s);
        if (have_ex && ex.best.s)
            printf("; against the coarse optimum: %+.2f%% (target: within 1%%)",
                   100 * (au.best.step_s / ex.best.step_s - 1));
        printf("\n");
        search_result_free(&au);
    }
    search_result_free(&ex);
    cluster_free(c);
    graph_free(g);
}

static void s2(void)
{
    static const struct { const char *kind, *opts, *label; int nodes; } models[] = {
        { "gpt", "preset=gpt2-small batch=64", "gpt2-small, batch 64", 1 },
        { "gpt", "preset=gpt2-small batch=512", "gpt2-small, batch 512", 8 },
        { "bert", "preset=bert-large batch=256", "bert-large, batch 256", 2 },
        { "vgg16", "batch=256", "vgg16, batch 256", 4 },
        { "resnet", "depth=50 batch=256", "resnet50, batch 256", 4 },
        { "moe", "preset=gpt2-medium experts=16 batch=64", "moe gpt2-medium 16 experts, b 64", 2 },
        { "dlrm", "batch=4096", "dlrm, batch 4096", 2 },
    };
    printf("S2 plan quality: auto, 2000 evaluations, analytical model, DGX A100 nodes\n");
    printf("  %-30s %5s %11s %11s %11s %9s %9s  %s\n", "model", "GPUs", "found", "best base",
           "dp", "vs base", "vs dp", "found plan");
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        Err err = { { 0 } };
        Graph *g = zoo(models[i].kind, models[i].opts);
        Cluster *c = g ? cluster_load("clusters/dgx-a100-80gb.json", models[i].nodes, &err) : NULL;
        SearchResult r;
        if (!c || search(g, c, SEARCH_AUTO, 0, 2000, 1, &r)) {
            if (g && !c) fprintf(stderr, "bench_search: %s\n", err.msg);
            graph_free(g);
            continue;
        }
        double base = best_of(&r, NULL), dp = best_of(&r, "dp ");
        if (r.best.s)
            printf("  %-30s %5d %9.2f ms %8.2f ms %8.2f ms %8.2fx %8.2fx  %s\n", models[i].label,
                   c->ndevices, r.best.step_s * 1e3, base * 1e3, dp * 1e3, base / r.best.step_s,
                   dp / r.best.step_s, r.best.name);
        else
            printf("  %-30s %5d no plan fits: %s\n", models[i].label, c->ndevices, r.smallest);
        search_result_free(&r);
        cluster_free(c);
        graph_free(g);
    }
}

static void s4(void)
{
    static const struct { const char *kind, *opts; int world; } spaces[] = {
        { "gpt", "layers=4 hidden=128 heads=8 seq=32 vocab=256 batch=16", 8 },
        { "mlp", "batch=32 layers=2 hidden=2048 input=2048", 4 },
        { "mlp", "batch=64 layers=3 hidden=4096 input=1024", 4 },
        { "gpt", "layers=2 hidden=256 heads=8 seq=64 vocab=50000 batch=16", 8 },
        { "moe", "layers=2 hidden=256 heads=4 seq=64 vocab=1024 batch=16 experts=8", 8 },
        { "mlp", "batch=16 layers=4 hidden=8192 input=1024", 8 },
        { "mlp", "batch=64 layers=4 hidden=4096 input=4096", 8 },
        { "gpt", "layers=8 hidden=2048 heads=16 seq=1024 vocab=32000 batch=32", 16 },
    };
    Err err = { { 0 } };
    Cluster *c = cluster_load("clusters/dgx-a100-80gb.json", 2, &err);
    if (!c) return;
    printf("S4 small spaces: MCMC and RL with 800 evaluations against the exhaustive optimum "
           "of the coarse space (they search the whole space, so they may beat it)\n");
    int okm = 0, okr = 0, n = 0;
    for (size_t i = 0; i < sizeof spaces / sizeof spaces[0]; i++) {
        Graph *g = zoo(spaces[i].kind, spaces[i].opts);
        if (!g) continue;
        SearchResult ex, mc, rl;
        SearchOpts o = { .algo = SEARCH_EXHAUSTIVE, .world = spaces[i].world, .seed = 1 };
        if (search_run(g, c, &o, &ex, &err)) {
            graph_free(g);
            continue;
        }
        o.algo = SEARCH_MCMC;
        o.budget_evals = 800;
        o.seed = 7;
        search_run(g, c, &o, &mc, &err);
        o.algo = SEARCH_RL;
        search_run(g, c, &o, &rl, &err);
        double opt = ex.best.step_s, m = mc.best.s ? mc.best.step_s : INFINITY,
               r = rl.best.s ? rl.best.step_s : INFINITY;
        okm += m <= opt * (1 + 1e-9);
        okr += r <= opt * (1 + 1e-9);
        n++;
        printf("  %-4s %-58s W%-3d %5lld plans  optimum %9.4f ms (%.2fx the best baseline)  "
               "mcmc %+6.1f%%  rl %+6.1f%%\n", spaces[i].kind, spaces[i].opts, spaces[i].world,
               (long long)ex.space_size, opt * 1e3, best_of(&ex, NULL) / opt,
               100 * (m / opt - 1), 100 * (r / opt - 1));
        search_result_free(&ex);
        search_result_free(&mc);
        search_result_free(&rl);
        graph_free(g);
    }
    printf("  reached the optimum (or better): mcmc %d of %d, rl %d of %d\n", okm, n, okr, n);
    cluster_free(c);
}

/* Evaluations at which a search's best first reached `target`. */
typedef struct {
    double target;
    double at;
} Reach;

static void on_best(void *ctx, const cJSON *ev)
{
    Reach *r = ctx;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(ev, "best_step_s");
    if (r->at < 0 && cJSON_IsNumber(b) && b->valuedouble <= r->target * (1 + 1e-9))
        r->at = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ev, "evaluations"));
}

/* Does a policy trained on one model help the search of another? RL on
 * space B from a new policy and from one trained first on space A: the
 * evaluations each needs to reach B's exhaustive optimum, over 5 seeds. */
static void rl_transfer(void)
{
    static const struct { const char *kind, *opts; int world; } pairs[][2] = {
        { { "gpt", "layers=4 hidden=128 heads=8 seq=32 vocab=256 batch=16", 8 },
          { "gpt", "layers=2 hidden=256 heads=8 seq=64 vocab=50000 batch=16", 8 } },
        { { "mlp", "batch=32 layers=2 hidden=2048 input=2048", 4 },
          { "mlp", "batch=16 layers=4 hidden=8192 input=1024", 8 } },
        { { "gpt", "layers=2 hidden=256 heads=8 seq=64 vocab=50000 batch=16", 8 },
          { "moe", "layers=2 hidden=256 heads=4 seq=64 vocab=1024 batch=16 experts=8", 8 } },
    };
    Err err = { { 0 } };
    Cluster *c = cluster_load("clusters/dgx-a100-80gb.json", 2, &err);
    if (!c) return;
    printf("RL transfer: evaluations to reach the exhaustive optimum of B (at most 1500; mean of 5 "
           "seeds), from a new policy and from one trained for 800 evaluations on A\n");
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        Graph *ga = zoo(pairs[i][0].kind, pairs[i][0].opts), *gb = zoo(pairs[i][1].kind, pairs[i][1].opts);
        if (!ga || !gb) {
            graph_free(ga);
            graph_free(gb);
            continue;
        }
        SearchResult ex;
        SearchOpts o = { .algo = SEARCH_EXHAUSTIVE, .world = pairs[i][1].world, .seed = 1 };
        if (search_run(gb, c, &o, &ex, &err)) continue;
        double sum[2] = { 0, 0 };
        int miss[2] = { 0, 0 };
        for (int seed = 1; seed <= 5; seed++) {
            for (int warm = 0; warm < 2; warm++) {
                Mlp *pol = search_policy_new((uint64_t)seed, &err);
                SearchResult r;
                if (warm) {
                    SearchOpts a = { .algo = SEARCH_RL, .world = pairs[i][0].world,
                                     .budget_evals = 800, .seed = (uint64_t)seed, .policy = pol };
                    if (search_run(ga, c, &a, &r, &err) == 0) search_result_free(&r);
                }
                Reach re = { .target = ex.best.step_s, .at = -1 };
                SearchOpts b = { .algo = SEARCH_RL, .world = pairs[i][1].world, .budget_evals = 1500,
                                 .seed = (uint64_t)seed + 100, .policy = pol, .event = on_best,
                                 .ctx = &re };
                if (search_run(gb, c, &b, &r, &err) == 0) search_result_free(&r);
                if (re.at < 0) miss[warm]++;
                sum[warm] += re.at < 0 ? 1500 : re.at;
                mlp_free(pol);
            }
        }
        printf("  A %-4s %-52s -> B %-4s %-60s  new %6.0f (%d missed)  trained on A %6.0f (%d missed)\n",
               pairs[i][0].kind, pairs[i][0].opts, pairs[i][1].kind, pairs[i][1].opts, sum[0] / 5,
               miss[0], sum[1] / 5, miss[1]);
        search_result_free(&ex);
        graph_free(ga);
        graph_free(gb);
    }
    cluster_free(c);
}

int main(void)
{
    s4();
    rl_transfer();
    s2();
    s1();
    return 0;
}
