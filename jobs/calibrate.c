/*
 * calibrate.c — the closed loop: what the executor's measured runs teach a
 * trained cost model.
 *
 * The operator model learns from kernels timed alone; a training step also
 * pays what happens between them (the interpreter's bookkeeping, memory,
 * caches shared with communication) and communication as the executor runs
 * it. The runs that `strata validate` stored on the profiled machine measure
 * all of that. Each is simulated again with the new model, and its step is
 * split into compute C, exposed communication X, idle I and the
 * instructions N of the interpreter's stream of the slowest class; then
 *     measured ~ a C + b X + c N + I
 * is fitted by least squares on relative errors (every plan weighs alike),
 * under a prior that keeps what the runs cannot tell apart from noise at
 * the profile's own figures, and (a, b, c) become the model's calibration.
 * The report gives the suite's step-time MAPE before and after (simulated
 * again with the calibration), and leave-one-out: each plan predicted by a
 * fit on the others, which is what a new plan can expect.
 *
 * Legend: a, b = compute and communication scales, c = seconds per
 * instruction, y = measured step, MAPE = mean |predicted - y| / y.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "db/db.h"
#include "ir/util.h"

typedef struct {
    char name[64];
    double y;                       /* measured */
    double C, X, I, N;              /* of the slowest class, uncalibrated */
    double before, after;           /* simulated step, uncalibrated and calibrated */
    double loo;                     /* predicted by a fit on the others */
} Obs;

/* One stored plan simulated with ops/links; NAN when it cannot be. */
static double simulate_plan(Db *db, const char *plan_id, const OpModel *ops,
                            const LinkModel *links, const Cluster *profile_cluster, Obs *o,
                            Err *err)
{
    DbPlan p;
    DbModel m;
    double t = NAN;
    if (db_plan_get(db, plan_id, &p, err)) return NAN;
    if (db_model_get(db, p.model_id, &m, err)) {
        db_plan_free(&p);
        return NAN;
    }
    cJSON *gj = cJSON_Parse(m.json), *sj = cJSON_Parse(p.strategy_json);
    Graph *g = gj ? graph_from_json(gj, err) : NULL;
    Strategy *s = g && sj ? strategy_from_json(sj, g, profile_cluster, err) : NULL;
    Plan *pl = s ? ir_lower_compact(g, profile_cluster, s, err) : NULL;
    if (pl) {
        SimOpts so = { .ops = ops, .links = links };
        SimResult r;
        if (cost_simulate(g, profile_cluster, s, pl, &so, &r, err) == 0) {
            t = r.step_time;
            /* the slowest class: most busy compute and exposed comm */
            int w = 0;
            for (int k = 1; k < r.nclasses; k++)
                if (r.classes[k].busy_compute + r.classes[k].exposed_comm >
                    r.classes[w].busy_compute + r.classes[w].exposed_comm)
                    w = k;
            if (o) {
                o->C = r.classes[w].busy_compute;
                o->X = r.classes[w].exposed_comm;
                o->I = r.classes[w].idle;
                o->N = (double)r.classes[w].main_instrs;
            }
            sim_result_free(&r);
        }
    }
    plan_free(pl);
    strategy_free(s);
    graph_free(g);
    cJSON_Delete(gj);
    cJSON_Delete(sj);
    db_model_free(&m);
    db_plan_free(&p);
    return t;
}

/* Least squares of (a, b, c) on relative errors over the observations
 * except `skip`, with a prior (below); the scales stay within [0.2, 5],
 * c >= 0. */
static void fit(const Obs *o, int n, int skip, double out[3])
{
    double A[3][3] = { { 0 } }, v[3] = { 0 };
    for (int i = 0; i < n; i++) {
        if (i == skip) continue;
        double w = 1 / o[i].y, x[3] = { o[i].C * w, o[i].X * w, o[i].N * w };
        double r = (o[i].y - o[i].I) * w;
        for (int a = 0; a < 3; a++) {
            v[a] += x[a] * r;
            for (int b = 0; b < 3; b++) A[a][b] += x[a] * x[b];
        }
    }
    /* a prior: the scales about 1 give or take 1, the instruction's cost
     * about 0 give or take 100 us, against runs measured to about 5%
     * (the most likely fit under both: ridge weights of noise^2 / prior^2
     * on the relative errors' scale). A direction the runs barely see
     * (communication exposed for 1% of every step) stays near the
     * profile's own figure instead of fitting the noise to a bound; one
     * they see well (26 plans with communication) follows them. */
    static const double prior[3] = { 1, 1, 0 }, spread[3] = { 1, 1, 100e-6 };
    const double noise = 0.05;
    for (int a = 0; a < 3; a++) {
        double k = (noise / spread[a]) * (noise / spread[a]);
        A[a][a] += k;
        v[a] += k * prior[a];
    }
    /* Gaussian elimination with partial pivoting */
    for (int c = 0; c < 3; c++) {
        int piv = c;
        for (int r = c + 1; r < 3; r++)
            if (fabs(A[r][c]) > fabs(A[piv][c])) piv = r;
        for (int k = 0; k < 3; k++) {
            double t = A[c][k];
            A[c][k] = A[piv][k];
            A[piv][k] = t;
        }
        double t = v[c];
        v[c] = v[piv];
        v[piv] = t;
        if (fabs(A[c][c]) < 1e-300) continue;
        for (int r = c + 1; r < 3; r++) {
            double f = A[r][c] / A[c][c];
            for (int k = c; k < 3; k++) A[r][k] -= f * A[c][k];
            v[r] -= f * v[c];
        }
    }
    for (int c = 2; c >= 0; c--) {
        double s = v[c];
        for (int k = c + 1; k < 3; k++) s -= A[c][k] * out[k];
        out[c] = fabs(A[c][c]) > 1e-300 ? s / A[c][c] : prior[c];
    }
    out[0] = fmin(5, fmax(0.2, out[0]));
    out[1] = fmin(5, fmax(0.2, out[1]));
    out[2] = fmax(0, out[2]);
}

int job_calibrate(const char *db_path, int64_t profile_id, const uint8_t *blob, size_t nblob,
                  Calibration *cal, Err *err)
{
    memset(cal, 0, sizeof *cal);
    Db *db = db_open_existing(db_path, err);
    if (!db) return -1;
    DbProfile prof;
    if (db_profile_get(db, profile_id, &prof, NULL, NULL, NULL, NULL, NULL, NULL, err)) {
        db_close(db);
        return -1;
    }
    cJSON *cj = prof.cluster_json ? cJSON_Parse(prof.cluster_json) : NULL;
    Cluster *c = cj ? cluster_from_json(cj, 0, err) : NULL;
    if (!cj) err_set(err, "profile %lld has no cluster (not complete)", (long long)profile_id);
    OpModel *ops = c ? opmodel_load(blob, nblob, err) : NULL;
    DbValidation *vs = NULL;
    int nv = 0, n = 0, cap = 0, rc = -1;
    /* the links every plan is priced with: the profile's fits, read once */
    Predictor pd;
    bool have_pd = false;
    Obs *o = NULL;
    if (!ops || predictor_load(db_path, NULL, profile_id, c, &pd, err)) goto out;
    have_pd = true;
    if (db_validation_list(db, &vs, &nv, err)) goto out;
    /* every measured row of every validation on this profile, newest first;
     * a plan measured several times counts once (its newest run) */
    for (int k = 0; k < nv; k++) {
        if (vs[k].profile_id != profile_id) continue;
        DbValidation v;
        DbValidationPlan *rows = NULL;
        int nr = 0;
        if (db_validation_get(db, vs[k].id, &v, &rows, &nr, err)) goto out;
        for (int i = 0; i < nr; i++) {
            if (!(rows[i].measured_s > 0) || !rows[i].run_id[0]) continue;
            bool dup = false;
            for (int j = 0; j < n && !dup; j++) dup = !strcmp(o[j].name, rows[i].plan_id);
            if (dup) continue;
            if (n == cap) o = xrealloc(o, sizeof *o * (size_t)(cap = cap ? 2 * cap : 32));
            memset(&o[n], 0, sizeof o[n]);
            snprintf(o[n].name, sizeof o[n].name, "%s", rows[i].plan_id);
            o[n].y = rows[i].measured_s;
            Err e2 = { { 0 } };
            o[n].before = simulate_plan(db, rows[i].plan_id, ops, pd.links, c, &o[n], &e2);
            if (isfinite(o[n].before)) n++;
        }
        db_validation_plans_free(rows, nr);
        db_validation_free(&v);
    }
    if (n < 3) {
        err_set(err, "--runs: %d measured plan%s of profile %lld in the store; the closed loop "
                "needs 3 or more: run `strata validate` first", n, n == 1 ? "" : "s",
                (long long)profile_id);
        goto out;
    }
    fit(o, n, -1, cal->calib);
    for (int i = 0; i < n; i++) {
        double f[3];
        fit(o, n, i, f);
        o[i].loo = f[0] * o[i].C + f[1] * o[i].X + f[2] * o[i].N + o[i].I;
    }
    /* after: the plans simulated again with the calibrated model */
    uint8_t *nb = NULL;
    size_t nn = 0;
    if (opmodel_recalibrate(blob, nblob, cal->calib, &nb, &nn, err)) goto out;
    OpModel *cops = opmodel_load(nb, nn, err);
    free(nb);
    if (!cops) goto out;
    for (int i = 0; i < n; i++) {
        Err e2 = { { 0 } };
        o[i].after = simulate_plan(db, o[i].name, cops, pd.links, c, NULL, &e2);
    }
    opmodel_free(cops);
    cal->nruns = n;
    for (int i = 0; i < n; i++) {
        cal->mape_before += fabs(o[i].before - o[i].y) / o[i].y / n;
        cal->mape_after += fabs(o[i].after - o[i].y) / o[i].y / n;
        cal->mape_loo += fabs(o[i].loo - o[i].y) / o[i].y / n;
    }
    rc = 0;
out:
    free(o);
    db_validation_list_free(vs, nv);
    if (have_pd) predictor_free(&pd);
    opmodel_free(ops);
    cluster_free(c);
    cJSON_Delete(cj);
    db_profile_free(&prof);
    db_close(db);
    return rc;
}
