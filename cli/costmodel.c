/*
 * costmodel.c — `strata costmodel train|list|show`: learn operator times
 * from a stored profile, keep the model, and say how well it predicts.
 *
 * train reads a profile's op samples, trains the op-time MLP on them
 * (costmodel/train.h: whole shapes held out as the test set), stores the
 * weights with their per-kind held-out errors, and prints the same table
 * that `show` prints later from the store: per op kind the samples, the
 * held-out samples and the held-out MAPE of the MLP beside those of the
 * analytical model and of the plain roofline on the same samples.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "costmodel/costmodel.h"
#include "costmodel/train.h"
#include "db/db.h"
#include "ir/util.h"
#include "jobs/jobs.h"
#include "profiler/profile.h"

#define EXIT_USAGE 2

static const OptSpec TRAIN_OPTS[] = {
    { "profile", 0, true, "ID  the profile whose op samples to learn from (required)" },
    { "seed", 0, true, "N  seed of the held-out split and of the nets (default 1)" },
    { "runs", 0, false, "also learn from the runs strata validate measured on this profile's "
      "machine (the closed loop)" },
    { "db", 0, true, "PATH  database (default strata.db)" },
    { "json", 0, false, "print JSON" },
    { "quiet", 0, false, "no progress on stderr" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

#define TRAIN_USAGE "strata costmodel train --profile ID [--seed N] [--runs] [--db PATH] [--json] [--quiet]"

/* ----------------------------------------------------------------------------
 * Printing (train and show print the same) */

static double jnum(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* "12.3%", or "-" when the value is null or absent */
static const char *pct(const cJSON *o, const char *key, char *buf, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return "-";
    snprintf(buf, n, "%.1f%%", 100 * v->valuedouble);
    return buf;
}

/* The per-kind table of a cost model's metrics (as train stored them; the
 * store is not trusted to hold exactly that, so every field is optional). */
static void print_table(const cJSON *m)
{
    printf("\n  %-14s %8s %9s %9s %9s %9s\n", "kind", "samples", "held out", "MLP", "analytic",
           "roofline");
    const cJSON *kinds = cJSON_GetObjectItemCaseSensitive(m, "kinds");
    const cJSON *k;
    int fallback = 0;
    cJSON_ArrayForEach(k, kinds)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(k, "kind");
        const char *nm = cJSON_IsString(name) ? name->valuestring : "?";
        int n = (int)jnum(k, "samples", 0), held = (int)jnum(k, "heldout", 0);
        bool covered = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(k, "covered"));
        if (!covered) {
            printf("  %-14s %8d %9s   no samples: the analytical model answers\n", nm, n, "-");
            fallback++;
            continue;
        }
        if (!held) {
            printf("  %-14s %8d %9d   too few shapes to hold one out\n", nm, n, 0);
            continue;
        }
        char a[16], b[16], c[16];
        printf("  %-14s %8d %9d %9s %9s %9s\n", nm, n, held, pct(k, "mape_mlp", a, sizeof a),
               pct(k, "mape_analytic", b, sizeof b), pct(k, "mape_roofline", c, sizeof c));
    }
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(m, "overall");
    if (o) {
        char a[16], b[16], c[16];
        printf("  %-14s %8d %9d %9s %9s %9s\n", "all", (int)jnum(o, "samples", 0),
               (int)jnum(o, "heldout", 0), pct(o, "mape_mlp", a, sizeof a),
               pct(o, "mape_analytic", b, sizeof b), pct(o, "mape_roofline", c, sizeof c));
    }
    if (o && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "wape_mlp"))) {
        char a[16], b[16], c[16];
        printf("  %-14s %8s %9s %9s %9s %9s\n", "time-weighted", "", "", pct(o, "wape_mlp", a, sizeof a),
               pct(o, "wape_analytic", b, sizeof b), pct(o, "wape_roofline", c, sizeof c));
    }
    printf("\n  MAPE: mean |predicted - measured| / measured over the held-out samples, whole\n"
           "  shapes (every phase) the nets never saw. Time-weighted: sum |predicted - measured|\n"
           "  / sum measured, the error a sum of op times sees.\n");
    if (fallback) printf("  Kinds without samples are priced by the analytical model.\n");
}

static void print_model(const DbCostModel *c, const cJSON *m)
{
    printf("cost model %s (%s)", c->id, c->kind ? c->kind : "?");
    if (c->profile_id > 0) printf(" trained on profile %lld", (long long)c->profile_id);
    else printf(" (its profile was deleted)");
    printf(", seed %lld\n", (long long)c->seed);
    if (c->device) printf("  device: %s\n", c->device);
    if (c->heldout_error >= 0)
        printf("  held-out MAPE %.1f%% (the MLP, over every held-out sample)\n",
               100 * c->heldout_error);
    if (!m) {
        printf("  (no metrics stored)\n");
        return;
    }
    const cJSON *hid = cJSON_GetObjectItemCaseSensitive(m, "hidden");
    char shape[64] = "";
    const cJSON *h;
    cJSON_ArrayForEach(h, hid)
    {
        size_t l = strlen(shape);
        if (cJSON_IsNumber(h))
            snprintf(shape + l, sizeof shape - l, "%s%d", l ? "x" : "", h->valueint);
    }
    printf("  %d samples: %d trained on, %d stopping early, %d held out; %d skipped\n",
           (int)jnum(m, "samples", 0), (int)jnum(m, "train_samples", 0),
           (int)jnum(m, "val_samples", 0), (int)jnum(m, "heldout_samples", 0),
           (int)jnum(m, "skipped", 0));
    /* the loss: a Huber delta (standardised units) or, stored by builds
     * before it, the squared error */
    double delta = jnum(m, "huber_delta", 0);
    char loss[48] = "squared error";
    if (delta > 0) snprintf(loss, sizeof loss, "Huber loss, delta %g", delta);
    printf("  %d net%s of %s (ReLU, %s), %d epochs, %.1f s; training-set MAPE %.1f%%\n",
           (int)jnum(m, "nets", 1), (int)jnum(m, "nets", 1) == 1 ? "" : "s",
           shape[0] ? shape : "?", loss, (int)jnum(m, "epochs", 0), jnum(m, "train_seconds", 0),
           100 * jnum(m, "train_mape", 0));
    print_table(m);
}

/* The row as JSON: what list shows per model, plus the metrics for show. */
static cJSON *model_json(const DbCostModel *c, bool metrics)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "kind", c->kind ? c->kind : "");
    if (c->profile_id > 0) cJSON_AddNumberToObject(o, "profile_id", (double)c->profile_id);
    else cJSON_AddNullToObject(o, "profile_id");
    if (c->heldout_error >= 0) cJSON_AddNumberToObject(o, "heldout_error", c->heldout_error);
    else cJSON_AddNullToObject(o, "heldout_error");
    cJSON_AddNumberToObject(o, "seed", (double)c->seed);
    if (c->device) cJSON_AddStringToObject(o, "device", c->device);
    cJSON_AddBoolToObject(o, "with_runs", c->with_runs);
    cJSON_AddNumberToObject(o, "weights_bytes", (double)c->nweights);
    if (c->created) cJSON_AddStringToObject(o, "created", c->created);
    if (metrics) {
        cJSON *m = c->metrics_json ? cJSON_Parse(c->metrics_json) : NULL;
        cJSON_AddItemToObject(o, "metrics", m ? m : cJSON_CreateNull());
    }
    return o;
}

static void print_json(cJSON *j)
{
    char *s = cJSON_Print(j);
    puts(s);
    cJSON_free(s);
}

/* ----------------------------------------------------------------------------
 * train */

typedef struct {
    Progress pr;
    bool started, quiet;
    int last;
} TrainProgress;

/* Early stopping ends most nets well before their last allowed epoch, so
 * the bar counts against that ceiling and ends with "done" early. */
static int on_epoch(void *ctx, int epoch, int max_total, double train_loss, double val_loss)
{
    TrainProgress *t = ctx;
    char what[64];
    if (!t->started) {
        progress_begin(&t->pr, "train", max_total, t->quiet);
        t->started = true;
    }
    if (isnan(val_loss)) snprintf(what, sizeof what, "epoch %d, loss %.4f", epoch, train_loss);
    else snprintf(what, sizeof what, "epoch %d, val loss %.4f", epoch, val_loss);
    progress_add(&t->pr, epoch - t->last, what);
    t->last = epoch;
    return 0;
}

/* A profile id: a positive integer. */
static int parse_profile_id(const char *s, int64_t *id)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 1) return -1;
    *id = v;
    return 0;
}

int cmd_costmodel_train(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, TRAIN_OPTS, false, &a, &err)) {
        fprintf(stderr, "strata costmodel train: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_has(&a, "help") || a.npos) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        if (a.npos) fprintf(f, "strata costmodel train: unexpected argument \"%s\"\n", a.pos[0]);
        fprintf(f, "usage: %s\n\noptions:\n", TRAIN_USAGE);
        args_usage(f, TRAIN_OPTS);
        return a.npos ? EXIT_USAGE : 0;
    }
    int64_t pid = 0, seed = 1;
    if (!args_get(&a, "profile")) {
        fprintf(stderr, "strata costmodel train: missing required option --profile (the id from "
                        "strata profile list)\n");
        return EXIT_USAGE;
    }
    if (parse_profile_id(args_get(&a, "profile"), &pid)) {
        fprintf(stderr, "strata costmodel train: --profile: \"%s\" is not a profile id (a "
                        "positive integer, from strata profile list)\n", args_get(&a, "profile"));
        return EXIT_USAGE;
    }
    if (args_int(&a, "seed", 0, INT64_MAX, &seed, &err)) {
        fprintf(stderr, "strata costmodel train: %s (a seed is a non-negative integer)\n", err.msg);
        return EXIT_USAGE;
    }
    bool json = args_has(&a, "json"), quiet = args_has(&a, "quiet");
    const char *path = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;

    Db *db = db_open_existing(path, &err);
    if (!db) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return 1;
    }
    cli_settle_profiles(db);
    DbProfile p;
    DbProfileOp *ops = NULL;
    int nops = 0, rc = 1;
    int got = db_profile_get(db, pid, &p, &ops, &nops, NULL, NULL, NULL, NULL, &err);
    if (got) {
        if (got > 0)
            fprintf(stderr, "strata costmodel train: --profile %lld: no such profile in %s "
                            "(strata profile list shows the stored ones)\n", (long long)pid, path);
        else fprintf(stderr, "strata: %s\n", err.msg);
        db_close(db);
        return 1;
    }
    TrainResult r = {0};
    const char *status = p.status ? p.status : "?";
    if (!p.finished || !strcmp(status, "running")) {
        fprintf(stderr, "strata costmodel train: --profile %lld is still running (started %s); "
                        "train on it once it has finished\n", (long long)pid,
                p.started ? p.started : "?");
        goto out;
    }
    if (!p.complete && strcmp(status, "interrupted") != 0) {
        fprintf(stderr, "strata costmodel train: --profile %lld is not complete (status \"%s\"); "
                        "measure again with strata profile\n", (long long)pid, status);
        goto out;
    }
    if (!nops) {
        fprintf(stderr, "strata costmodel train: --profile %lld has no op samples (it measured "
                        "links only, or stopped before the ops): nothing to learn from\n",
                (long long)pid);
        goto out;
    }
    if (!(p.peak_flops > 0) || !(p.mem_bw > 0)) {
        fprintf(stderr, "strata costmodel train: --profile %lld has no device peaks (peak "
                        "FLOP/s %g, memory bandwidth %g): the roofline the model learns against "
                        "is undefined\n", (long long)pid, p.peak_flops, p.mem_bw);
        goto out;
    }
    if (!p.complete)
        fprintf(stderr, "strata costmodel train: warning: profile %lld was interrupted; training "
                        "on the %d op samples it stored (some kinds may be missing)\n",
                (long long)pid, nops);

    OpDevice d;
    op_device_from_profile(&p, &d);
    TrainProgress tp = { .quiet = quiet };
    TrainOpts to = { .seed = (uint64_t)seed, .progress = on_epoch, .ctx = &tp };
    if (!quiet)
        fprintf(stderr, "training on profile %lld: %d op samples of %s\n", (long long)pid, nops,
                p.device ? p.device : "?");
    if (costmodel_train(&d, ops, nops, &to, &r, &err)) {
        if (tp.started) progress_end(&tp.pr, true);
        fprintf(stderr, "strata costmodel train: profile %lld: %s\n", (long long)pid, err.msg);
        goto out;
    }
    if (tp.started) progress_end(&tp.pr, false);

    /* the closed loop: the measured runs calibrate what the kernels taught */
    Calibration cal;
    bool runs = args_has(&a, "runs");
    if (runs) {
        db_close(db);
        db = NULL;
        uint8_t *nb = NULL;
        size_t nn = 0;
        if (job_calibrate(path, pid, r.blob, r.nblob, &cal, &err) ||
            opmodel_recalibrate(r.blob, r.nblob, cal.calib, &nb, &nn, &err)) {
            fprintf(stderr, "strata costmodel train: %s\n", err.msg);
            goto out;
        }
        free(r.blob);
        r.blob = nb;
        r.nblob = nn;
        cJSON *cl = cJSON_AddObjectToObject(r.metrics, "closed_loop");
        cJSON_AddNumberToObject(cl, "runs", cal.nruns);
        cJSON_AddNumberToObject(cl, "compute_scale", cal.calib[0]);
        cJSON_AddNumberToObject(cl, "comm_scale", cal.calib[1]);
        cJSON_AddNumberToObject(cl, "instr_overhead_s", cal.calib[2]);
        cJSON_AddNumberToObject(cl, "mape_before", cal.mape_before);
        cJSON_AddNumberToObject(cl, "mape_after", cal.mape_after);
        cJSON_AddNumberToObject(cl, "mape_leave_one_out", cal.mape_loo);
        if (!(db = db_open_existing(path, &err))) {
            fprintf(stderr, "strata: %s\n", err.msg);
            goto out;
        }
    }

    char *metrics = cJSON_PrintUnformatted(r.metrics);
    DbCostModel cm = { .profile_id = pid, .kind = "mlp", .weights = r.blob, .nweights = r.nblob,
                       .heldout_error = r.heldout_mape, .metrics_json = metrics,
                       .device = p.device, .seed = seed, .with_runs = runs };
    hash_hex(r.blob, r.nblob, cm.id);
    int put = db_costmodel_put(db, &cm, &err);
    if (put) {
        fprintf(stderr, "strata: cannot store the cost model in %s: %s\n", path, err.msg);
        cJSON_free(metrics);
        goto out;
    }
    DbCostModel stored;
    if (db_costmodel_get(db, cm.id, &stored, &err) == 0) {
        if (json) {
            cJSON *j = model_json(&stored, true);
            print_json(j);
            cJSON_Delete(j);
        } else {
            print_model(&stored, r.metrics);
            if (runs)
                printf("\nclosed loop: %d plans measured by strata validate on this machine: "
                       "step-time MAPE %.1f%% before, %.1f%% after (%.1f%% leave-one-out); "
                       "compute x%.3f, communication x%.3f, %.2f us per instruction\n",
                       cal.nruns, 100 * cal.mape_before, 100 * cal.mape_after,
                       100 * cal.mape_loo, cal.calib[0], cal.calib[1], cal.calib[2] * 1e6);
            printf("\nstored in %s; strata costmodel show %s%s%s\n", path, stored.id,
                   strcmp(path, CLI_DEFAULT_DB) ? " --db " : "",
                   strcmp(path, CLI_DEFAULT_DB) ? path : "");
        }
        db_costmodel_free(&stored);
        rc = 0;
    } else {
        fprintf(stderr, "strata: the cost model was stored but cannot be read back: %s\n", err.msg);
    }
    cJSON_free(metrics);
out:
    train_result_free(&r);
    db_profile_samples_free(ops, nops, NULL, 0, NULL, 0);
    db_profile_free(&p);
    db_close(db);
    return rc;
}

/* ----------------------------------------------------------------------------
 * list / show */

int cmd_costmodel_list(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "costmodel list", "strata costmodel list [--db PATH] [--json]",
                            0, NULL, &a, &rc);
    if (!db) return rc;
    DbCostModel *rows = NULL;
    int n = 0;
    rc = db_costmodel_list(db, &rows, &n, &err);
    db_close(db);
    if (rc) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return 1;
    }
    if (args_has(&a, "json")) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, model_json(&rows[i], false));
        print_json(arr);
        cJSON_Delete(arr);
    } else if (!n) {
        printf("no cost models stored (strata costmodel train --profile ID makes one)\n");
    } else {
        printf("%-16s  %-4s  %7s  %9s  %6s  %-24s  %s\n", "id", "kind", "profile", "held-out",
               "seed", "created", "device");
        for (int i = 0; i < n; i++) {
            char prof[24] = "-", err_s[16] = "-";
            if (rows[i].profile_id > 0) snprintf(prof, sizeof prof, "%lld", (long long)rows[i].profile_id);
            if (rows[i].heldout_error >= 0)
                snprintf(err_s, sizeof err_s, "%.1f%%", 100 * rows[i].heldout_error);
            printf("%-16s  %-4s  %7s  %9s  %6lld  %-24s  %s\n", rows[i].id,
                   rows[i].kind ? rows[i].kind : "?", prof, err_s, (long long)rows[i].seed,
                   rows[i].created ? rows[i].created : "-", rows[i].device ? rows[i].device : "-");
        }
    }
    db_costmodel_list_free(rows, n);
    return 0;
}

int cmd_costmodel_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "costmodel show",
                            "strata costmodel show ID [--db PATH] [--json]", 1, "cost model",
                            &a, &rc);
    if (!db) return rc;
    DbCostModel c;
    int got = db_costmodel_get(db, a.pos[0], &c, &err);
    db_close(db);
    if (got) {
        if (got > 0)
            fprintf(stderr, "strata costmodel show: no cost model \"%s\" (strata costmodel list "
                            "shows the stored ones)\n", a.pos[0]);
        else fprintf(stderr, "strata costmodel show: %s\n", err.msg);
        return 1;
    }
    cJSON *m = c.metrics_json ? cJSON_Parse(c.metrics_json) : NULL;
    /* can this build use it? (a model of another feature version cannot) */
    OpModel *om = opmodel_load(c.weights, c.nweights, &err);
    if (args_has(&a, "json")) {
        cJSON *j = model_json(&c, true);
        cJSON_AddBoolToObject(j, "usable", om != NULL);
        if (!om) cJSON_AddStringToObject(j, "unusable_because", err.msg);
        print_json(j);
        cJSON_Delete(j);
    } else {
        print_model(&c, m);
        if (!om) printf("\n  this build cannot use it: %s\n", err.msg);
    }
    opmodel_free(om);
    cJSON_Delete(m);
    db_costmodel_free(&c);
    return 0;
}
