/*
 * validate.c — `strata validate`: predicted against measured on this machine.
 *
 * Thin: parses, calls job_validate (jobs/), prints a line per plan as it
 * goes and the figures at the end (or the JSON).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "jobs/jobs.h"

#define EXIT_USAGE 2

static const OptSpec VALIDATE_OPTS[] = {
    { "suite", 0, true, "default|FILE  the plans to run (default: the built-in suite)" },
    { "np", 0, true, "N  run the plans of at most N ranks (default 2)" },
    { "steps", 0, true, "N  steps per run, the first a warm-up (default 6)" },
    { "repeats", 0, true, "N  runs per plan, in rounds over the suite; the measured step is their median (default 1)" },
    { "timeout", 0, true, "S  stop a run still going after S seconds (default 600)" },
    { "profile", 0, true, "ID  the profile whose cluster and threads to use (default: newest)" },
    { "costmodel", 0, true, "ID  the cost model (default: newest trained on the profile)" },
    { "db", 0, true, "PATH  the store (default strata.db)" },
    { "json", 0, false, "print the result as one JSON object" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static void human_s(double t, char *out, int n)
{
    if (t < 1) snprintf(out, n, "%.2f ms", t * 1e3);
    else snprintf(out, n, "%.3f s", t);
}

static void progress(void *ctx, int i, int n, const ValidateRow *r)
{
    int repeats = *(const int *)ctx;
    if (r->error[0]) {
        fprintf(stderr, "[%2d/%d] %-20s %s\n", i + 1, n, r->name, r->error);
        return;
    }
    if (repeats > 1) fprintf(stderr, "round %d/%d ", r->rounds, repeats);
    char p[32], m[32];
    human_s(r->predicted_s, p, sizeof p);
    human_s(r->measured_s, m, sizeof m);
    double et = 100 * (r->predicted_s - r->measured_s) / r->measured_s;
    double em = r->measured_mem > 0 ? 100 * (r->predicted_mem - r->measured_mem) / r->measured_mem : NAN;
    fprintf(stderr, "[%2d/%d] %-20s %d rank%s  step %10s predicted, %10s measured (%+6.1f%%)  "
            "memory %7.1f MiB vs %7.1f MiB (%+6.1f%%)\n", i + 1, n, r->name, r->world,
            r->world == 1 ? " " : "s", p, m, et, r->predicted_mem / 1048576.0,
            r->measured_mem / 1048576.0, em);
}

static bool self_path(char *out, size_t n)
{
    ssize_t k = readlink("/proc/self/exe", out, n - 1);
    if (k <= 0) return false;
    out[k] = 0;
    return true;
}

int cmd_validate(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, VALIDATE_OPTS, false, &a, &err)) {
        fprintf(stderr, "strata validate: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_has(&a, "help") || a.npos) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        fprintf(f, "usage: strata validate [--suite default|FILE] [--np N] [--steps N] "
                   "[--repeats N] [--timeout S] [--profile ID] [--costmodel ID] [--db PATH] [--json]\n\n"
                   "options:\n");
        args_usage(f, VALIDATE_OPTS);
        return args_has(&a, "help") ? 0 : EXIT_USAGE;
    }
    int64_t np = 2, steps = 6, profile = 0, timeout = 600, repeats = 1;
    if (args_int(&a, "np", 1, 4096, &np, &err) || args_int(&a, "steps", 2, 100000, &steps, &err) ||
        args_int(&a, "repeats", 1, 63, &repeats, &err) ||
        args_int(&a, "timeout", 1, 7 * 86400, &timeout, &err) ||
        args_int(&a, "profile", 1, INT64_MAX, &profile, &err) ||
        check_id_option(&a, "costmodel", "cost model", &err) || args_store(&a, &err)) {
        fprintf(stderr, "strata validate: %s\n", err.msg);
        return EXIT_USAGE;
    }
    char self[4096];
    if (!self_path(self, sizeof self)) {
        fprintf(stderr, "strata validate: cannot find this program's own path\n");
        return EXIT_FAILURE;
    }
    ValidateOpts o = { .db_path = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB,
                       .suite = args_get(&a, "suite"), .np = (int)np, .steps = (int)steps,
                       .repeats = (int)repeats, .ctx = &(int){ (int)repeats },
                       .timeout_s = (double)timeout,
                       .profile_id = profile, .costmodel_id = args_get(&a, "costmodel"),
                       .strata_bin = self, .progress = progress };
    Validation v;
    if (job_validate(&o, &v, &err)) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    if (v.warning[0]) fprintf(stderr, "strata validate: warning: %s\n", v.warning);
    if (args_has(&a, "json")) {
        char *t = cJSON_Print(v.json);
        puts(t);
        cJSON_free(t);
    } else {
        printf("validation %lld: %d plans predicted and run (profile %lld, %s)\n",
               (long long)v.id, v.nok, (long long)v.profile_id, v.op_model);
        printf("  step time    MAPE %.1f%%, Kendall tau %.3f\n", 100 * v.mape_time, v.kendall_tau);
        if (isfinite(v.mape_mem)) printf("  peak memory  MAPE %.1f%%\n", 100 * v.mape_mem);
        int failed = v.nrows - v.nok;
        if (failed) printf("  %d plan%s could not be compared (see above)\n", failed,
                           failed == 1 ? "" : "s");
    }
    validation_free(&v);
    return 0;
}
