/*
 * validate.c — the validation job: every plan of a suite predicted by the
 * cost model and measured by the executor on this machine, both stored, and
 * the errors over the suite (MAPE of step time and of peak memory, Kendall's
 * tau of the step times: does the model order plans as the machine does?).
 *
 * The plans run through `strata run` itself in a child process, exactly as
 * a user runs them, on the profile's cluster and with the BLAS threads per
 * rank the profile was measured with, so the prediction and the measurement
 * describe the same executor.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobs.h"
#include "db/db.h"
#include "ir/util.h"
#include "ir/zoo.h"

double kendall_tau(const double *a, const double *b, int n)
{
    double conc = 0, disc = 0, ta = 0, tb = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            double x = a[i] - a[j], y = b[i] - b[j];
            if (x == 0 && y == 0) continue;
            if (x == 0) ta++;
            else if (y == 0) tb++;
            else if ((x > 0) == (y > 0)) conc++;
            else disc++;
        }
    double d = sqrt((conc + disc + ta) * (conc + disc + tb));
    return d > 0 ? (conc - disc) / d : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ----------------------------------------------------------------------------
 * Building a plan of the suite */

/* A JSON value as a builder option string ("4", "f32", "1" for true). */
static int opt_string(const cJSON *v, char *out, int n)
{
    int k;
    if (cJSON_IsString(v)) k = snprintf(out, n, "%s", v->valuestring);
    else if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
             fabs(v->valuedouble) < 1e15)
        k = snprintf(out, n, "%.0f", v->valuedouble);
    else if (cJSON_IsNumber(v)) k = snprintf(out, n, "%.15g", v->valuedouble);
    else if (cJSON_IsBool(v)) k = snprintf(out, n, "%d", cJSON_IsTrue(v));
    else return -1;
    return k >= 0 && k < n ? 0 : -1;
}

static Graph *suite_model(const cJSON *m, const char *path, Err *err)
{
    if (!cJSON_IsObject(m)) {
        err_set(err, "%s: want an object {\"kind\": ..., options} or {\"file\": ...}", path);
        return NULL;
    }
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(m, "file");
    if (cJSON_IsString(file)) {
        Graph *g = graph_load(file->valuestring, err);
        if (!g) err_prefix(err, "%s.file", path);
        return g;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(m, "kind");
    if (!cJSON_IsString(kind)) {
        err_set(err, "%s: \"kind\" (a zoo model kind) or \"file\" is required", path);
        return NULL;
    }
    const char *keys[64], *vals[64];
    char buf[64][64];
    int n = 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, m) {
        if (!strcmp(o->string, "kind")) continue;
        if (n == 64 || opt_string(o, buf[n], sizeof buf[n])) {
            err_set(err, "%s.%s: want a number or a string of at most 63 characters (and at "
                    "most 64 options)", path, o->string);
            return NULL;
        }
        keys[n] = o->string;
        vals[n] = buf[n];
        n++;
    }
    Graph *g = zoo_build(kind->valuestring, n, keys, vals, err);
    if (!g) err_prefix(err, "%s", path);
    return g;
}

static Strategy *suite_strategy(const cJSON *j, const Graph *g, const Cluster *c,
                                const char *path, Err *err)
{
    if (!cJSON_IsObject(j)) {
        err_set(err, "%s: want {\"build\": KIND, options} or {\"json\": {...}}", path);
        return NULL;
    }
    const cJSON *inl = cJSON_GetObjectItemCaseSensitive(j, "json");
    if (inl) {
        Strategy *s = strategy_from_json(inl, g, c, err);
        if (!s) err_prefix(err, "%s.json", path);
        return s;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "build");
    if (!cJSON_IsString(kind)) {
        err_set(err, "%s: \"build\" (a strategy kind) or \"json\" is required", path);
        return NULL;
    }
    StrategyOpts so = { 0 };
    static const struct { const char *key; size_t off; } ints[] = {
        { "world", offsetof(StrategyOpts, world) }, { "tp", offsetof(StrategyOpts, tp) },
        { "pp", offsetof(StrategyOpts, pp) }, { "dp", offsetof(StrategyOpts, dp) },
        { "microbatches", offsetof(StrategyOpts, microbatches) },
        { "zero", offsetof(StrategyOpts, zero) }, { "ps_shards", offsetof(StrategyOpts, ps_shards) },
        { "staleness", offsetof(StrategyOpts, staleness) },
        { "virtual", offsetof(StrategyOpts, virtual_stages) },
    };
    const cJSON *o;
    cJSON_ArrayForEach(o, j) {
        if (!strcmp(o->string, "build")) continue;
        size_t k = 0;
        while (k < sizeof ints / sizeof ints[0] && strcmp(ints[k].key, o->string)) k++;
        if (k < sizeof ints / sizeof ints[0]) {
            if (!cJSON_IsNumber(o) || !(o->valuedouble >= 0 && o->valuedouble <= INT_MAX) ||
                o->valuedouble != floor(o->valuedouble)) {
                err_set(err, "%s.%s: want a whole number >= 0", path, o->string);
                return NULL;
            }
            *(int *)((char *)&so + ints[k].off) = (int)o->valuedouble;
        } else if (!strcmp(o->string, "compress") && cJSON_IsString(o)) {
            so.compress = o->valuestring;
        } else if (!strcmp(o->string, "recompute") && cJSON_IsBool(o)) {
            so.recompute = cJSON_IsTrue(o);
        } else if (!strcmp(o->string, "sequence_parallel") && cJSON_IsBool(o)) {
            so.sequence_parallel = cJSON_IsTrue(o);
        } else {
            err_set(err, "%s.%s: not an option of a built strategy (world, tp, pp, dp, "
                    "microbatches, zero, ps_shards, staleness, virtual, compress, recompute, "
                    "sequence_parallel)", path, o->string);
            return NULL;
        }
    }
    cJSON *built = strategy_build(kind->valuestring, g, c, &so, err);
    if (!built) {
        err_prefix(err, "%s", path);
        return NULL;
    }
    Strategy *s = strategy_from_json(built, g, c, err);
    cJSON_Delete(built);
    if (!s) err_prefix(err, "%s", path);
    return s;
}

/* The ranks a suite strategy asks for: its "world", or the product of its
 * mesh; 0 when it does not say. */
static int spec_world(const cJSON *j)
{
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(j, "world");
    if (cJSON_IsNumber(w))      /* -1: not a device count (said by the caller) */
        return w->valuedouble >= 1 && w->valuedouble <= (1 << 20) &&
                       w->valuedouble == floor(w->valuedouble) ? (int)w->valuedouble : -1;
    const cJSON *mesh = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "json"),
                                                         "mesh");
    if (!cJSON_IsObject(mesh)) return 0;
    double n = 1;
    const cJSON *a;
    cJSON_ArrayForEach(a, mesh) n *= cJSON_IsNumber(a) && a->valuedouble >= 1 ? a->valuedouble : 1;
    return n <= INT_MAX ? (int)n : INT_MAX;
}

/* ----------------------------------------------------------------------------
 * Running a plan */

/* Runs `strata run` on the files and returns the stored run's id. A run
 * still going after o->timeout_s seconds is stopped (its whole process
 * group: mpirun and its ranks) and reported as such. */
static int run_plan(const ValidateOpts *o, const char *model, const char *strategy,
                    const char *cluster, int threads, char run_id[17], Err *err)
{
    char steps[16], th[16];
    snprintf(steps, sizeof steps, "%d", o->steps);
    snprintf(th, sizeof th, "%d", threads);
    const char *argv[] = { o->strata_bin, "run", "--model", model, "--strategy", strategy,
                           "--cluster", cluster, "--steps", steps, "--threads", th,
                           "--db", o->db_path, NULL };
    int fd[2];
    if (pipe(fd)) return err_set(err, "pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return err_set(err, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        setpgid(0, 0);
        dup2(fd[1], STDOUT_FILENO);
        dup2(fd[1], STDERR_FILENO);
        close(fd[0]);
        close(fd[1]);
        execv(o->strata_bin, (char *const *)argv);
        fprintf(stderr, "cannot start %s: %s\n", o->strata_bin, strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(fd[1]);
    size_t cap = 4096, len = 0;
    char *out = xmalloc(cap);
    double deadline = now_s() + o->timeout_s, killed_at = 0;
    bool timed_out = false;
    for (;;) {
        double left = (killed_at > 0 ? killed_at + 5 : deadline) - now_s();
        if (left <= 0) {
            if (killed_at > 0) {
                kill(-pid, SIGKILL);       /* it ignored the polite signal */
                break;
            }
            kill(-pid, SIGTERM);
            timed_out = true;
            killed_at = now_s();
            continue;
        }
        struct pollfd pf = { fd[0], POLLIN, 0 };
        int pr = poll(&pf, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        if (len + 1024 > cap) out = xrealloc(out, cap *= 2);
        ssize_t k = read(fd[0], out + len, cap - len - 1);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        len += (size_t)k;
    }
    out[len] = 0;
    close(fd[0]);
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {}
    const char *at = strstr(out, "stored as run ");
    int rc = 0;
    if (timed_out) {
        rc = err_set(err, "strata run did not finish within %g s (--timeout); stopped",
                     o->timeout_s);
    } else if (w != pid) {
        rc = err_set(err, "strata run: cannot wait for it (%s)", strerror(errno));
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !at) {
        /* the run's own last line says why */
        char *last = out + len;
        while (last > out && (last[-1] == '\n' || last[-1] == ' ')) *--last = 0;
        while (last > out && last[-1] != '\n') last--;
        rc = err_set(err, "strata run failed (exit %d): %s",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1, last);
    } else {
        snprintf(run_id, 17, "%.16s", at + strlen("stored as run "));
    }
    free(out);
    return rc;
}

/* Median over the steps after the first of the slowest rank's step time;
 * the largest high-water mark of any rank. */
static int measured(const char *db_path, const char *run_id, double *t, double *mem, Err *err)
{
    Db *db = db_open_existing(db_path, err);
    if (!db) return -1;
    DbRun r;
    DbRunStep *st = NULL;
    int n = 0;
    int rc = db_run_get(db, run_id, &r, &st, &n, err);
    db_close(db);
    if (rc) return -1;
    int steps = r.steps, world = r.world;
    double *per = xcalloc(steps > 0 ? steps : 1, sizeof *per);
    *mem = 0;
    for (int k = 0; k < n; k++) {
        if (st[k].step >= 0 && st[k].step < steps && st[k].step_s > per[st[k].step])
            per[st[k].step] = st[k].step_s;
        if (st[k].peak_mem_bytes > *mem) *mem = st[k].peak_mem_bytes;
    }
    int from = steps > 1 ? 1 : 0;
    qsort(per + from, steps - from, sizeof *per, cmp_double);
    int m = steps - from;
    *t = m > 0 ? (m % 2 ? per[from + m / 2] : 0.5 * (per[from + m / 2 - 1] + per[from + m / 2])) : 0;
    (void)world;
    free(per);
    free(st);
    db_run_free(&r);
    return *t > 0 ? 0 : err_set(err, "run %s has no step times", run_id);
}

/* The model and strategy files of suite plan i, kept in dir for its runs. */
static void plan_files(const char *dir, int i, char mpath[64], char spath[64])
{
    snprintf(mpath, 64, "%s/model-%d.json", dir, i);
    snprintf(spath, 64, "%s/strategy-%d.json", dir, i);
}

static int write_text(const char *path, const cJSON *j, Err *err)
{
    return json_save(j, path, err);
}

/* ----------------------------------------------------------------------------
 * The job */

static int newest_profile(Db *db, int64_t want, DbProfile *out, Err *err)
{
    if (want > 0) {
        int rc = db_profile_get(db, want, out, NULL, NULL, NULL, NULL, NULL, NULL, err);
        if (rc) return -1;
        if (!out->cluster_json) {
            db_profile_free(out);
            return err_set(err, "profile %lld has no cluster (it is %s); run `strata profile` "
                           "to completion first", (long long)want, "not complete");
        }
        return 0;
    }
    DbProfile *rows = NULL;
    int n = 0;
    if (db_profile_list(db, &rows, &n, err)) return -1;
    int pick = -1;
    for (int k = 0; k < n && pick < 0; k++)
        if (rows[k].complete && rows[k].cluster_json && !strcmp(rows[k].backend, "cpu")) pick = k;
    if (pick < 0) {
        db_profile_list_free(rows, n);
        return err_set(err, "no complete CPU profile of this machine in the store; run "
                       "`strata profile` first");
    }
    int64_t id = rows[pick].id;
    db_profile_list_free(rows, n);
    return db_profile_get(db, id, out, NULL, NULL, NULL, NULL, NULL, NULL, err) ? -1 : 0;
}

int job_validate(const ValidateOpts *o0, Validation *v, Err *err)
{
    memset(v, 0, sizeof *v);
    ValidateOpts o = *o0;
    if (o.np <= 0) o.np = 2;
    if (!(o.timeout_s > 0)) o.timeout_s = 600;
    if (o.steps <= 0) o.steps = 6;
    if (o.repeats <= 0) o.repeats = 1;
    if (o.repeats > 63) o.repeats = 63;
    if (!o.strata_bin) return err_set(err, "validate: no strata executable to run plans with");
    const char *suite_name = o.suite && strcmp(o.suite, "default") ? o.suite : "default";

    cJSON *suite = NULL;
    if (!strcmp(suite_name, "default")) suite = cJSON_Parse(SUITE_DEFAULT);
    else if (!(suite = json_load(suite_name, err))) return err_prefix(err, "--suite");
    const cJSON *plans = cJSON_GetObjectItemCaseSensitive(suite, "plans");
    if (!cJSON_IsArray(plans) || cJSON_GetArraySize(plans) == 0) {
        cJSON_Delete(suite);
        return err_set(err, "--suite %s: \"plans\" must be a non-empty array", suite_name);
    }

    Db *db = db_open_existing(o.db_path, err);
    if (!db) {
        cJSON_Delete(suite);
        return -1;
    }
    DbProfile prof;
    int rc = newest_profile(db, o.profile_id, &prof, err);
    bool prof_loaded = rc == 0;
    char cm_id[17] = "";
    if (!rc && !o.costmodel_id) {
        DbCostModel cm;
        int got = db_costmodel_latest(db, prof.id, &cm, err);
        if (got < 0) rc = -1;
        if (got == 0) {
            memcpy(cm_id, cm.id, 17);
            db_costmodel_free(&cm);
        }
    }
    db_close(db);
    if (rc) {
        if (prof_loaded) db_profile_free(&prof);
        cJSON_Delete(suite);
        return -1;
    }
    v->profile_id = prof.id;
    int threads = 0;
    if (!prof.notes || sscanf(prof.notes, "%d BLAS thread", &threads) != 1 || threads < 1) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = prof.ranks > 0 && cores > prof.ranks ? (int)(cores / prof.ranks) : 1;
    }
    cJSON *cj = cJSON_Parse(prof.cluster_json);
    Cluster *c = cj ? cluster_from_json(cj, 0, err) : NULL;
    if (!cj) err_set(err, "profile %lld: its stored cluster is not JSON", (long long)prof.id);
    Predictor pd;
    bool have_pd = false;
    int *index = NULL;
    char dir[] = "/tmp/strata-validate-XXXXXX";
    bool have_dir = false;
    if (!c) goto fail;
    const char *use_cm = o.costmodel_id ? o.costmodel_id : cm_id[0] ? cm_id : NULL;
    if (predictor_load(o.db_path, use_cm, prof.id, c, &pd, err)) goto fail;
    have_pd = true;
    memcpy(v->cost_model_id, pd.cost_model_id, 17);
    snprintf(v->op_model, sizeof v->op_model, "%s", pd.op_model);
    snprintf(v->warning, sizeof v->warning, "%s", pd.warning);
    if (!mkdtemp(dir)) {
        err_set(err, "validate: cannot make a scratch folder: %s", strerror(errno));
        goto fail;
    }
    have_dir = true;
    char cpath[64];
    snprintf(cpath, sizeof cpath, "%s/cluster.json", dir);
    if (write_text(cpath, cj, err)) goto fail;

    int n = cJSON_GetArraySize(plans);
    v->rows = xcalloc(n, sizeof *v->rows);
    index = xcalloc(n + 1, sizeof *index);          /* row -> the plan's index in the suite */
    /* every plan predicted first, its model and strategy kept for its runs */
    for (int i = 0; i < n; i++) {
        const cJSON *pl = cJSON_GetArrayItem(plans, i);
        ValidateRow *row = &v->rows[v->nrows];
        memset(row, 0, sizeof *row);
        index[v->nrows] = i;
        char path[64], mp[80], sp[80];
        snprintf(path, sizeof path, "plans[%d]", i);
        snprintf(mp, sizeof mp, "%s.model", path);
        snprintf(sp, sizeof sp, "%s.strategy", path);
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(pl, "name");
        snprintf(row->name, sizeof row->name, "%s", cJSON_IsString(nm) ? nm->valuestring : path);
        const cJSON *sj = cJSON_GetObjectItemCaseSensitive(pl, "strategy");
        int sw = spec_world(sj);
        if (sw < 0) {
            snprintf(row->error, sizeof row->error, "%s.world: %g is not a device count (an "
                     "integer from 1 to 1048576)", sp,
                     cJSON_GetObjectItemCaseSensitive(sj, "world")->valuedouble);
            v->nrows++;
            if (o.progress) o.progress(o.ctx, i, n, row);
            continue;
        }
        if (sw > o.np) continue;      /* not for this many ranks */
        Err e2 = { { 0 } };
        Graph *g = suite_model(cJSON_GetObjectItemCaseSensitive(pl, "model"), mp, &e2);
        Strategy *s = g ? suite_strategy(sj, g, c, sp, &e2) : NULL;
        if (!s) {
            snprintf(row->error, sizeof row->error, "%s", e2.msg);
            v->nrows++;
            if (o.progress) o.progress(o.ctx, i, n, row);
            graph_free(g);
            continue;
        }
        row->world = s->world;
        if (s->world > o.np) {
            strategy_free(s);
            graph_free(g);
            continue;
        }
        Estimate est;
        EstimateOpts eo = { .db_path = o.db_path, .pred = &pd };
        if (job_estimate(g, c, s, &eo, &est, &e2)) {
            snprintf(row->error, sizeof row->error, "predict: %s", e2.msg);
        } else {
            row->predicted_s = est.sim.step_time;
            for (int k = 0; k < est.sim.nclasses; k++)
                if ((double)est.sim.classes[k].peak_mem > row->predicted_mem)
                    row->predicted_mem = (double)est.sim.classes[k].peak_mem;
            row->feasible = est.sim.feasible;
            row->estimate_id = est.estimate_id;
            memcpy(row->plan_id, est.plan_id, 17);
            estimate_free(&est);
            char mpath[64], spath[64];
            plan_files(dir, i, mpath, spath);
            if (graph_save(g, mpath, &e2) || json_save(s->canonical, spath, &e2))
                snprintf(row->error, sizeof row->error, "run: %s", e2.msg);
        }
        v->nrows++;
        if (row->error[0] && o.progress) o.progress(o.ctx, i, n, row);
        strategy_free(s);
        graph_free(g);
    }
    /* then the runs, round after round over the suite (so a slow spell of
     * a shared machine falls on every plan alike): a plan's measured step
     * is the median of its rounds' */
    double *mt_r = xcalloc((size_t)v->nrows * o.repeats + 1, sizeof *mt_r);
    double *mm_r = xcalloc((size_t)v->nrows * o.repeats + 1, sizeof *mm_r);
    char (*id_r)[17] = xcalloc((size_t)v->nrows * o.repeats + 1, sizeof *id_r);
    for (int round = 0; round < o.repeats; round++)
        for (int k = 0; k < v->nrows; k++) {
            ValidateRow *row = &v->rows[k];
            if (row->error[0] || !row->plan_id[0]) continue;
            int i = index[k];
            char mpath[64], spath[64];
            plan_files(dir, i, mpath, spath);
            Err e2 = { { 0 } };
            size_t at = (size_t)k * o.repeats;
            if (run_plan(&o, mpath, spath, cpath, threads, id_r[at + round], &e2) ||
                measured(o.db_path, id_r[at + round], &mt_r[at + round], &mm_r[at + round], &e2)) {
                snprintf(row->error, sizeof row->error, "run: %s", e2.msg);
            } else {
                /* the median of the rounds so far, and the run that measured it */
                double sorted[64];
                int m = round + 1, med = 0;
                memcpy(sorted, &mt_r[at], sizeof *sorted * m);
                qsort(sorted, m, sizeof *sorted, cmp_double);
                while (mt_r[at + med] != sorted[(m - 1) / 2]) med++;
                row->measured_s = mt_r[at + med];
                row->measured_mem = mm_r[at + med];
                memcpy(row->run_id, id_r[at + med], 17);
                row->rounds = m;
            }
            if (o.progress) o.progress(o.ctx, i, n, row);
        }
    free(mt_r);
    free(mm_r);
    free(id_r);

    /* the figures over the plans with both numbers */
    double *pt = xcalloc(v->nrows + 1, sizeof *pt), *mt = xcalloc(v->nrows + 1, sizeof *mt);
    double et = 0, em = 0;
    int nm = 0;
    for (int i = 0; i < v->nrows; i++) {
        const ValidateRow *r = &v->rows[i];
        if (r->error[0] || !(r->measured_s > 0)) continue;
        pt[v->nok] = r->predicted_s;
        mt[v->nok] = r->measured_s;
        et += fabs(r->predicted_s - r->measured_s) / r->measured_s;
        if (r->measured_mem > 0) {
            em += fabs(r->predicted_mem - r->measured_mem) / r->measured_mem;
            nm++;
        }
        v->nok++;
    }
    v->mape_time = v->nok ? et / v->nok : NAN;
    v->mape_mem = nm ? em / nm : NAN;
    v->kendall_tau = kendall_tau(pt, mt, v->nok);
    free(pt);
    free(mt);
    if (!v->nok) {
        err_set(err, "validate: no plan could be both predicted and run (first: %s: %s)",
                v->nrows ? v->rows[0].name : "-", v->nrows ? v->rows[0].error : "no plans");
        goto fail;
    }

    /* store */
    DbValidation dv = { .suite = (char *)suite_name, .np = o.np, .steps = o.steps,
                        .profile_id = prof.id,
                        .cost_model_id = pd.cost_model_id[0] ? pd.cost_model_id : NULL,
                        .mape_time = v->mape_time, .mape_mem = v->mape_mem,
                        .kendall_tau = v->kendall_tau };
    DbValidationPlan *dr = xcalloc(v->nrows + 1, sizeof *dr);
    int nd = 0;
    for (int i = 0; i < v->nrows; i++) {
        const ValidateRow *r = &v->rows[i];
        if (!r->plan_id[0]) continue;       /* nothing stored to point at */
        dr[nd] = (DbValidationPlan){ .name = (char *)r->name, .estimate_id = r->estimate_id,
                                     .predicted_s = r->predicted_s,
                                     .measured_s = r->error[0] ? NAN : r->measured_s,
                                     .predicted_mem = r->predicted_mem,
                                     .measured_mem = r->error[0] ? NAN : r->measured_mem };
        memcpy(dr[nd].plan_id, r->plan_id, 17);
        memcpy(dr[nd].run_id, r->run_id, 17);
        nd++;
    }
    if (!(db = db_open(o.db_path, err))) {
        free(dr);
        goto fail;
    }
    rc = db_validation_put(db, &dv, dr, nd, &v->id, err);
    db_close(db);
    free(dr);
    if (rc) goto fail;

    v->json = cJSON_CreateObject();
    cJSON_AddNumberToObject(v->json, "validation_id", (double)v->id);
    cJSON_AddStringToObject(v->json, "suite", suite_name);
    cJSON_AddNumberToObject(v->json, "profile_id", (double)prof.id);
    if (v->cost_model_id[0]) cJSON_AddStringToObject(v->json, "cost_model_id", v->cost_model_id);
    cJSON_AddStringToObject(v->json, "op_model", v->op_model);
    if (v->warning[0])
        cJSON_AddItemToArray(cJSON_AddArrayToObject(v->json, "warnings"),
                             cJSON_CreateString(v->warning));
    cJSON_AddNumberToObject(v->json, "threads_per_rank", threads);
    cJSON_AddNumberToObject(v->json, "steps", o.steps);
    cJSON_AddNumberToObject(v->json, "repeats", o.repeats);
    cJSON_AddNumberToObject(v->json, "plans", v->nok);
    cJSON_AddNumberToObject(v->json, "mape_step_time", v->mape_time);
    if (isfinite(v->mape_mem)) cJSON_AddNumberToObject(v->json, "mape_peak_mem", v->mape_mem);
    cJSON_AddNumberToObject(v->json, "kendall_tau", v->kendall_tau);
    cJSON *arr = cJSON_AddArrayToObject(v->json, "rows");
    for (int i = 0; i < v->nrows; i++) {
        const ValidateRow *r = &v->rows[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", r->name);
        cJSON_AddNumberToObject(x, "ranks", r->world);
        if (r->plan_id[0]) cJSON_AddStringToObject(x, "plan_id", r->plan_id);
        if (r->run_id[0]) cJSON_AddStringToObject(x, "run_id", r->run_id);
        cJSON_AddNumberToObject(x, "predicted_s", r->predicted_s);
        cJSON_AddNumberToObject(x, "predicted_mem_bytes", r->predicted_mem);
        if (r->error[0]) {
            cJSON_AddStringToObject(x, "error", r->error);
        } else {
            cJSON_AddNumberToObject(x, "measured_s", r->measured_s);
            cJSON_AddNumberToObject(x, "measured_mem_bytes", r->measured_mem);
            cJSON_AddNumberToObject(x, "rounds", r->rounds);
        }
        cJSON_AddItemToArray(arr, x);
    }
    rc = 0;
    goto out;
fail:
    rc = -1;
out:
    if (have_dir) {
        char p[96];
        snprintf(p, sizeof p, "%s/cluster.json", dir);
        unlink(p);
        for (int i = 0; i < cJSON_GetArraySize(plans); i++) {
            char mpath[64], spath[64];
            plan_files(dir, i, mpath, spath);
            unlink(mpath);
            unlink(spath);
        }
        rmdir(dir);
    }
    free(index);
    if (have_pd) predictor_free(&pd);
    cluster_free(c);
    cJSON_Delete(cj);
    db_profile_free(&prof);
    cJSON_Delete(suite);
    if (rc) validation_free(v);
    return rc;
}

void validation_free(Validation *v)
{
    if (!v) return;
    free(v->rows);
    cJSON_Delete(v->json);
    memset(v, 0, sizeof *v);
}
