/*
 * estimate.c — `strata estimate`: predict a plan's step time and memory.
 *
 * Thin: parses, loads, calls job_estimate (jobs/), prints the breakdown, the
 * JSON or the SVG timeline. Exit 0 also for an infeasible plan (that is an
 * answer: "feasible": false with the reason); 1 when something could not be
 * read, lowered or stored; 2 on a usage mistake.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "jobs/jobs.h"

#define EXIT_USAGE 2

static const OptSpec ESTIMATE_OPTS[] = {
    { "model", 0, true, "FILE  model JSON (required)" },
    { "cluster", 0, true, "FILE  cluster JSON (required)" },
    { "nodes", 0, true, "N  nodes of the cluster template" },
    { "strategy", 0, true, "FILE  strategy JSON (required)" },
    { "costmodel", 0, true, "ID  a trained cost model (default: the analytical model)" },
    { "json", 0, false, "print the estimate as one JSON object" },
    { "svg", 0, true, "FILE  write a timeline of the step (open it in a browser)" },
    { "db", 0, true, "PATH  store plan and estimate here (default strata.db)" },
    { "no-store", 0, false, "store nothing" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const char *USAGE = "strata estimate --model FILE --cluster FILE [--nodes N] --strategy FILE "
                           "[--costmodel ID] [--json] [--svg FILE] [--db PATH] [--no-store]";

static void gib(double b, char *out, int n)
{
    snprintf(out, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
}

static void print_estimate(const Estimate *e, const Graph *g, const Cluster *c, const Strategy *s)
{
    const SimResult *r = &e->sim;
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(e->json, "models");
    char a[32], b[32];
    printf("estimate: %s on %s, %d rank%s in %d class%s (strategy %s)\n", g->name, c->name,
           s->world, s->world == 1 ? "" : "s", r->nclasses, r->nclasses == 1 ? "" : "es", s->id);
    printf("  op model    %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(models, "ops")));
    printf("  link model  %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(models, "links")));
    if (r->op_count[CM_SRC_MLP] && r->analytic_kinds) {
        printf("  analytical model for:");
        for (int k = 0; k < CM_KIND_COUNT; k++)
            if (r->analytic_kinds & (1u << k)) printf(" %s", cm_kind_name(k));
        printf(" (no profile samples of these kinds)\n");
    }
    cli_seconds(r->step_time, a, sizeof a);
    printf("\nstep time     %s", a);
    cli_seconds(e->lower_s, a, sizeof a);
    cli_seconds(e->simulate_s, b, sizeof b);
    printf("   (lowered in %s, simulated in %s)\n", a, b);
    printf("throughput    %.4g samples/s", r->samples_per_s);
    if (r->tokens_per_s > 0) printf(", %.4g tokens/s", r->tokens_per_s);
    printf("\nMFU           %.1f%%  (HFU %.1f%% with recompute and updates; %.3g model FLOP per "
           "step)\n",
           100 * r->mfu, 100 * r->hfu, r->model_flops);
    if (s->nstages > 1)
        printf("bubble        %.1f%% of the step, averaged over the stages\n", 100 * r->bubble);
    if (r->feasible) printf("memory        fits\n");
    else printf("memory        DOES NOT FIT: %s\n", r->why_infeasible);

    printf("\n  %-5s %-5s %6s %11s %11s %11s %11s %11s %21s\n", "class", "stage", "ranks",
           "compute", "recompute", "comm", "exposed", "idle", "peak mem / device");
    for (int k = 0; k < r->nclasses; k++) {
        const SimClass *o = &r->classes[k];
        char t[5][32];
        cli_seconds(o->busy_compute, t[0], 32);
        cli_seconds(o->recompute, t[1], 32);
        cli_seconds(o->busy_comm, t[2], 32);
        cli_seconds(o->exposed_comm, t[3], 32);
        cli_seconds(o->idle, t[4], 32);
        gib((double)o->peak_mem, a, sizeof a);
        if (o->device_mem > 0) gib(o->device_mem, b, sizeof b);
        else snprintf(b, sizeof b, "?");
        printf("  %-5d %-5d %6d %11s %11s %11s %11s %11s %10s / %-10s%s\n", k, o->stage,
               o->nranks, t[0], t[1], t[2], t[3], t[4], a, b, o->fits ? "" : " !");
    }
    if (e->plan_id[0])
        printf("\nstored as plan %s, estimate %lld\n", e->plan_id, (long long)e->estimate_id);
}

int cmd_estimate(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, ESTIMATE_OPTS, false, &a, &err)) {
        fprintf(stderr, "strata estimate: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_has(&a, "help") || a.npos) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        fprintf(f, "usage: %s\n\noptions:\n", USAGE);
        args_usage(f, ESTIMATE_OPTS);
        return args_has(&a, "help") ? 0 : EXIT_USAGE;
    }
    if (check_model_cluster(&a, true, "strategy", &err) ||
        args_out_file(&a, "svg", "--svg", args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB,
                      &err) ||
        check_id_option(&a, "costmodel", "cost model", &err) ||
        (!args_has(&a, "no-store") && args_store(&a, &err))) {
        fprintf(stderr, "strata estimate: %s\n", err.msg);
        return EXIT_USAGE;
    }
    Graph *g = NULL;
    Cluster *c = NULL;
    Strategy *s = NULL;
    Predictor pd;
    bool have_pd = false;
    Estimate e;
    memset(&e, 0, sizeof e);
    int rc = EXIT_FAILURE;
    const char *db = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
    if (load_model_cluster(&a, &g, &c, &err)) goto out;
    if (!(s = strategy_load(args_get(&a, "strategy"), g, c, &err))) goto out;
    if (predictor_load(db, args_get(&a, "costmodel"), 0, c, &pd, &err)) goto out;
    have_pd = true;
    if (pd.warning[0]) fprintf(stderr, "strata estimate: warning: %s\n", pd.warning);
    EstimateOpts o = { .db_path = args_has(&a, "no-store") ? NULL : db, .pred = &pd,
                       .trace = args_get(&a, "svg") != NULL };
    if (job_estimate(g, c, s, &o, &e, &err)) goto out;
    if (args_get(&a, "svg")) {
        char title[256];
        snprintf(title, sizeof title, "%s on %d x %s — strategy %s", g->name, s->world, c->name,
                 s->id);
        if (sim_write_svg(&e.sim, s, title, args_get(&a, "svg"), &err)) goto out;
    }
    if (args_has(&a, "json")) {
        char *text = cJSON_Print(e.json);
        puts(text);
        cJSON_free(text);
    } else {
        print_estimate(&e, g, c, s);
        if (args_get(&a, "svg")) printf("timeline written to %s\n", args_get(&a, "svg"));
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "strata: %s\n", err.msg);
    estimate_free(&e);
    if (have_pd) predictor_free(&pd);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
    return rc;
}
