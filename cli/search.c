/*
 * search.c — `strata search` (find the plan) and `strata searches` (what
 * was searched).
 *
 * Thin: parses, loads, calls job_search (jobs/), prints. Ctrl-C or SIGTERM
 * stops a search, which keeps and stores the best it has. Exit 0 with a
 * plan; 1 when no plan fits (the message says what the least hungry one
 * needs) or something could not be read or stored; 2 on a usage mistake.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "jobs/jobs.h"

#define EXIT_USAGE 2

static const OptSpec SEARCH_OPTS[] = {
    { "model", 0, true, "FILE  model JSON (required)" },
    { "cluster", 0, true, "FILE  cluster JSON (required)" },
    { "nodes", 0, true, "N  nodes of the cluster template" },
    { "devices", 0, true, "N  plan for N of the cluster's devices (default: all)" },
    { "algo", 0, true, "A  auto (default), exhaustive, mcmc, rl or baselines" },
    { "budget", 0, true, "B  30s (default), 2m, or 20000evals: when to stop" },
    { "seed", 0, true, "N  random seed (default 1); with an evaluation budget the result "
                        "depends on nothing else" },
    { "threads", 0, true, "N  mcmc and rl: one chain a thread; exhaustive: a stripe of the space a thread; merged at the end (default 1)" },
    { "policy-from", 0, true, "ID  rl: start from the policy a stored rl search trained (on "
                               "another model too)" },
    { "limit", 0, true, "N  largest coarse space exhaustive search enumerates (default 200000)" },
    { "allow-lossy", 0, false, "also search gradient compression and parameter-server staleness" },
    { "untie", 0, false, "one decision per op and per param, not per block kind" },
    { "costmodel", 0, true, "ID  a trained cost model (default: the analytical model)" },
    { "log", 0, true, "FILE  write the progress events here, one JSON object a line" },
    { "json", 0, false, "print the result as one JSON object" },
    { "db", 0, true, "PATH  store (default strata.db)" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const char *USAGE =
    "strata search --model FILE --cluster FILE [--nodes N] [--devices N] [--algo A] "
    "[--budget 30s|20000evals] [--seed N] [--threads N] [--allow-lossy] [--costmodel ID] [--log FILE] "
    "[--db PATH] [--json]";

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Where the events go: the live line on stderr, and --log, opened at the
 * first event (so a search refused before it starts leaves the file as it
 * was). */
typedef struct {
    bool live;
    const char *log_path;
    FILE *log;
} Progress;

static void on_event(void *ctx, const cJSON *ev)
{
    Progress *pg = ctx;
    if (pg->log_path && !pg->log && !(pg->log = fopen(pg->log_path, "w"))) {
        fprintf(stderr, "strata search: warning: --log %s: cannot write it: %s\n", pg->log_path,
                strerror(errno));
        pg->log_path = NULL;
    }
    if (pg->log) {
        char *text = cJSON_PrintUnformatted(ev);
        fprintf(pg->log, "%s\n", text);
        fflush(pg->log);
        cJSON_free(text);
    }
    if (!pg->live) return;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(ev, "event");
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "progress")) return;
    char best[32], cur[32];
    cli_seconds(num(ev, "best_step_s"), best, sizeof best);
    cli_seconds(num(ev, "current_step_s"), cur, sizeof cur);
    fprintf(stderr, "\r  %6.1f s  %8.0f evaluations (%.0f/s)  best %s  current %s  accept %2.0f%%"
            "  infeasible %.0f   ", num(ev, "elapsed_s"), num(ev, "evaluations"),
            num(ev, "evaluations_per_s"), best, cur, 100 * num(ev, "acceptance"),
            num(ev, "infeasible"));
    fflush(stderr);
}

static void gib(double b, char *out, int n)
{
    snprintf(out, n, "%.1f GiB", b / (1024.0 * 1024 * 1024));
}

static void print_entry(const SearchEntry *e, double best)
{
    char t[32], m[32];
    cli_seconds(e->step_s, t, sizeof t);
    gib(e->peak_mem, m, sizeof m);
    const char *id = e->s ? e->s->id : "-";
    if (isfinite(e->step_s))
        printf("%s %-70.70s %11s %8.3fx %10s  %.8s\n", e->within_error ? " ~" : "  ", e->name, t,
               e->step_s / best, m, id);
    else
        printf("   %-70.70s %11s %9s %10s  %-8.8s  %s\n", e->name, "-", "", e->peak_mem > 0 ? m : "",
               id, e->why);
}

static void print_result(const SearchJob *j, const Graph *g, const Cluster *c)
{
    const SearchResult *r = &j->r;
    printf("search %s: %s on %d x %s, %s", j->id, g->name, r->best_sim.nclasses ?
           r->best.s->world : c->ndevices, c->name, r->algo);
    if (!strcmp(r->algo, "exhaustive")) printf(" (coarse space: %lld plans)", (long long)r->space_size);
    printf(", ended: %s after %.1f s\n", r->ended, r->elapsed_s);
    printf("  %ld simulated, %ld bounded (slower than what was kept, by a lower bound), "
           "%ld infeasible (memory), %ld invalid, %ld repeats\n", r->evals, r->bounded,
           r->infeasible, r->invalid, r->cache_hits);
    if (!r->best.s) {
        printf("no plan fits: %s\n", r->smallest);
        return;
    }
    const SimResult *s = &r->best_sim;
    char t[32], m[32];
    cli_seconds(r->best.step_s, t, sizeof t);
    gib(r->best.peak_mem, m, sizeof m);
    printf("\nbest: %s\n", r->best.name);
    printf("  %s per step, %.1f samples/s", t, s->samples_per_s);
    if (s->tokens_per_s > 0) printf(", %.0f tokens/s", s->tokens_per_s);
    printf(", MFU %.1f%%, bubble %.1f%%, peak memory %s\n", 100 * s->mfu, 100 * s->bubble, m);
    printf("  plan %s (strata plans show %s), strategy %s\n", j->plan_id, j->plan_id,
           r->best.s->id);
    if (j->baseline_plan_id[0] && strcmp(j->baseline_plan_id, j->plan_id))
        printf("  the best baseline is stored as plan %s: `strata run --plan` runs either\n",
               j->baseline_plan_id);
    printf("\n   %-70s %11s %9s %10s  %s\n", "baseline", "step", "vs best", "memory", "strategy");
    for (int k = 0; k < r->nbaselines; k++) print_entry(&r->baselines[k], r->best.step_s);
    printf("\n   %-70s %11s %9s %10s  %s\n", "top plans", "step", "vs best", "memory", "strategy");
    int close = 0;
    for (int k = 0; k < r->ntop; k++) {
        print_entry(&r->top[k], r->best.step_s);
        close += r->top[k].within_error;
    }
    if (close)
        printf("  ~ %d of them within the cost model's measured error (%.0f%%) of the best: the "
               "prediction cannot tell them apart; `strata run --plan` can\n", close,
               100 * r->model_error);
}

int cmd_search(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, SEARCH_OPTS, false, &a, &err)) {
        fprintf(stderr, "strata search: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_has(&a, "help") || a.npos) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        fprintf(f, "usage: %s\n\noptions:\n", USAGE);
        args_usage(f, SEARCH_OPTS);
        return args_has(&a, "help") ? 0 : EXIT_USAGE;
    }
    SearchJobOpts o = { .search = { .algo = SEARCH_AUTO, .seed = 1, .budget_s = 30 } };
    int64_t v;
    const char *algo = args_get(&a, "algo");
    if (check_model_cluster(&a, true, NULL, &err) ||
        (algo && search_algo_parse(algo, &o.search.algo) &&
         err_set(&err, "--algo \"%s\": unknown (one of: auto, exhaustive, mcmc, rl, baselines)",
                 algo)) ||
        (args_get(&a, "budget") && job_parse_budget(args_get(&a, "budget"), &o.search.budget_s,
                                                    &o.search.budget_evals, &err) &&
         err_prefix(&err, "--budget"))) {
        fprintf(stderr, "strata search: %s\n", err.msg);
        return EXIT_USAGE;
    }
    v = 1;
    if (args_int(&a, "seed", 0, INT64_MAX, &v, &err)) goto usage;
    o.search.seed = (uint64_t)v;
    v = 0;
    if (args_int(&a, "devices", 1, 1 << 20, &v, &err)) goto usage;
    o.search.world = (int)v;
    v = 1;
    if (args_int(&a, "threads", 1, SEARCH_THREADS_MAX, &v, &err)) goto usage;
    o.search.threads = (int)v;
    v = 0;
    if (args_int(&a, "limit", 1, INT64_MAX, &v, &err)) goto usage;
    o.search.exhaustive_limit = v;
    o.search.lossy = args_has(&a, "allow-lossy");
    o.search.untie = args_has(&a, "untie");
    o.budget_text = args_get(&a, "budget") ? args_get(&a, "budget") : "30s";
    o.policy_from = args_get(&a, "policy-from");
    if (o.policy_from && o.search.algo != SEARCH_RL) {
        err_set(&err, "--policy-from starts an rl search: give --algo rl");
        goto usage;
    }
    if (check_id_option(&a, "policy-from", "search", &err) ||
        check_id_option(&a, "costmodel", "cost model", &err))
        goto usage;
    if (args_out_file(&a, "log", "--log", args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB,
                      &err) || args_store(&a, &err))
        goto usage;

    Graph *g = NULL;
    Cluster *c = NULL;
    Predictor pd;
    bool have_pd = false;
    Progress pg = { .live = isatty(2) && !args_has(&a, "json"), .log_path = args_get(&a, "log") };
    SearchJob j;
    memset(&j, 0, sizeof j);
    int rc = EXIT_FAILURE;
    const char *db = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
    if (load_model_cluster(&a, &g, &c, &err)) goto out;
    if (o.search.world > c->ndevices) {
        err_set(&err, "--devices %d: cluster %s has %d devices", o.search.world, c->name,
                c->ndevices);
        rc = EXIT_USAGE;    /* the option's fault, as a range is */
        goto out;
    }
    if (predictor_load(db, args_get(&a, "costmodel"), 0, c, &pd, &err)) goto out;
    have_pd = true;
    /* kept with the search, whole, for a resume: the id as resolved */
    o.costmodel_id = pd.cost_model_id[0] ? pd.cost_model_id : NULL;
    if (pd.warning[0]) fprintf(stderr, "strata search: warning: %s\n", pd.warning);
    /* writable (created when missing, not emptied yet: on_event) */
    FILE *probe = pg.log_path ? fopen(pg.log_path, "a") : NULL;
    if (pg.log_path && !probe) {
        err_set(&err, "--log %s: cannot write it: %s", pg.log_path, strerror(errno));
        goto out;
    }
    if (probe) fclose(probe);
    o.db_path = db;
    o.pred = &pd;
    o.event = on_event;
    o.ctx = &pg;
    o.search.stop = &stop_flag;
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int jrc = job_search(g, c, &o, &j, &err);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (pg.live) fprintf(stderr, "\n");
    if (jrc) goto out;
    if (args_has(&a, "json")) {
        char *text = cJSON_Print(j.json);
        puts(text);
        cJSON_free(text);
    } else {
        print_result(&j, g, c);
    }
    if (!j.r.best.s) {
        err_set(&err, "no plan of %s fits %s: %s", g->name, c->name, j.r.smallest);
        goto out;
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "strata: %s\n", err.msg);
    if (pg.log) fclose(pg.log);
    search_job_free(&j);
    if (have_pd) predictor_free(&pd);
    cluster_free(c);
    graph_free(g);
    return rc;
usage:
    fprintf(stderr, "strata search: %s\n", err.msg);
    return EXIT_USAGE;
}

/* ----------------------------------------------------------------------------
 * What was searched */

int cmd_searches_list(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "searches list",
                            "strata searches list [--db PATH] [--json]", 0, NULL, &a,
                            &rc);
    if (!db) return rc;
    DbSearch *rows;
    int n;
    cli_settle_searches(db);
    rc = db_search_list(db, &rows, &n, &err);
    db_close(db);
    if (rc) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    if (args_has(&a, "json")) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_search(&rows[i], false));
        char *text = cJSON_Print(arr);
        puts(text);
        cJSON_free(text);
        cJSON_Delete(arr);
    } else {
        printf("%-16s  %-16s  %-16s  %7s  %-10s  %-8s  %-16s  %11s  %s\n", "search", "model",
               "cluster", "devices", "algo", "status", "best plan", "step", "created");
        for (int i = 0; i < n; i++) {
            cJSON *res = rows[i].result_json ? cJSON_Parse(rows[i].result_json) : NULL;
            char t[32];
            cli_seconds(num(res, "step_time_s"), t, sizeof t);
            cJSON_Delete(res);
            printf("%-16s  %-16.16s  %-16.16s  %7d  %-10s  %-8s  %-16s  %11s  %s\n", rows[i].id,
                   rows[i].model_name, rows[i].cluster_name, rows[i].devices, rows[i].method,
                   rows[i].status, rows[i].best_plan_id[0] ? rows[i].best_plan_id : "-", t,
                   rows[i].created);
        }
        if (!n) printf("(no searches yet; `strata search` runs one)\n");
    }
    db_search_list_free(rows, n);
    return 0;
}

static const char *text_or(const char *s)
{
    return s ? s : "?";
}

int cmd_searches_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "searches show",
                            "strata searches show ID [--db PATH] [--json]", 1, "search",
                            &a, &rc);
    if (!db) return rc;
    DbSearch x;
    cli_settle_searches(db);
    rc = db_search_get(db, a.pos[0], &x, &err);
    db_close(db);
    if (rc) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    cJSON *res = x.result_json ? cJSON_Parse(x.result_json) : NULL;
    if (args_has(&a, "json")) {
        cJSON *o = view_search(&x, true);
        char *text = cJSON_Print(o);
        puts(text);
        cJSON_free(text);
        cJSON_Delete(o);
    } else {
        printf("search %s: %s on %d x %s, %s, seed %lld, %s, %d events, started %s%s%s\n", x.id,
               x.model_name, x.devices, x.cluster_name, x.method, (long long)x.seed, x.status,
               x.nevents, x.created, x.finished ? ", finished " : "", x.finished ? x.finished : "");
        if (x.best_plan_id[0]) printf("  best plan %s\n", x.best_plan_id);
        const cJSON *best = cJSON_GetObjectItemCaseSensitive(res, "best"), *it;
        /* the stored result is read as it is: a field missing prints as "?" */
#define TEXT(o, k) text_or(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k)))
        if (best) {
            char t[32];
            cli_seconds(num(best, "step_s"), t, sizeof t);
            printf("  best: %s, %s per step\n", TEXT(best, "name"), t);
        }
        printf("  %-70s %11s %9s\n", "baseline", "step", "vs best");
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(res, "baselines")) {
            char t[32];
            cli_seconds(num(it, "step_s"), t, sizeof t);
            const char *why = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "why"));
            printf("  %-70.70s %11s", TEXT(it, "name"), t);
            if (isfinite(num(it, "best_speedup"))) printf(" %8.2fx", num(it, "best_speedup"));
            printf("%s%s\n", why ? "  " : "", why ? why : "");
        }
        const cJSON *top = cJSON_GetObjectItemCaseSensitive(res, "top");
        if (cJSON_GetArraySize(top)) printf("  %-70s %11s %9s\n", "top plans", "step", "vs best");
        cJSON_ArrayForEach(it, top) {
            char t[32];
            cli_seconds(num(it, "step_s"), t, sizeof t);
            bool close = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "within_model_error"));
            printf("%s%-70.70s %11s %8.3fx\n", close ? "~ " : "  ", TEXT(it, "name"), t,
                   num(it, "best_speedup"));
        }
#undef TEXT
    }
    cJSON_Delete(res);
    db_search_free(&x);
    return 0;
}

int cmd_searches_events(int argc, char **argv)
{
    static const OptSpec OPTS[] = {
        { "after", 0, true, "N  only the events after the N-th" },
        { "db", 0, true, "PATH  store (default strata.db)" },
        { "help", 'h', false, "show this help" },
        { NULL, 0, false, NULL },
    };
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, OPTS, false, &a, &err) || (!args_has(&a, "help") && a.npos != 1)) {
        fprintf(stderr, "strata searches events: %s\nusage: strata searches events ID [--after N] "
                "[--db PATH]\n", err.msg[0] ? err.msg : "one search id is needed");
        return EXIT_USAGE;
    }
    if (args_has(&a, "help")) {
        printf("usage: strata searches events ID [--after N] [--db PATH]\n\noptions:\n");
        args_usage(stdout, OPTS);
        return 0;
    }
    int64_t after = 0;
    if (db_id_check("search", a.pos[0], &err)) {
        fprintf(stderr, "strata searches events: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_int(&a, "after", 0, INT32_MAX, &after, &err)) {
        fprintf(stderr, "strata searches events: %s\n", err.msg);
        return EXIT_USAGE;
    }
    Db *db = db_open_existing(args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB, &err);
    DbSearch x;
    char **ev = NULL;
    int n = 0, rc = EXIT_FAILURE;
    if (!db) goto out;
    if (db_search_get(db, a.pos[0], &x, &err)) goto out;
    if (db_search_events(db, x.id, (int)after, &ev, &n, &err) == 0) rc = 0;
    db_search_free(&x);
    for (int i = 0; i < n; i++) puts(ev[i]);
    db_search_events_free(ev, n);
out:
    if (rc) fprintf(stderr, "strata: %s\n", err.msg);
    db_close(db);
    return rc;
}
