/*
 * estimate.c — the estimate job: lower a strategy, simulate the lowered
 * program with a cost model, store the plan with its prediction.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobs.h"
#include "db/db.h"
#include "executor/build.h"
#include "ir/util.h"

int job_store_plan(const char *db_path, const Graph *g, const Cluster *c, const Strategy *s,
                   const Plan *p, const cJSON *summary, char plan_id[17], Err *err)
{
    DbPlan dp = { .world = p->world };
    if (job_store_model_cluster(db_path, g, c, dp.model_id, dp.cluster_id, err)) return -1;
    Db *db = db_open(db_path, err);
    if (!db) return -1;
    char *stext = cJSON_PrintUnformatted(s->canonical), *sumtext = cJSON_PrintUnformatted(summary);
    dp.strategy_json = stext;
    dp.summary_json = sumtext;
    memcpy(dp.strategy_id, s->id, 17);
    char key[64];
    snprintf(key, sizeof key, "%s/%s/%s", dp.model_id, dp.cluster_id, s->id);
    hash_hex(key, strlen(key), dp.id);
    memcpy(plan_id, dp.id, 17);
    int rc = db_plan_put(db, &dp, err);
    cJSON_free(stext);
    cJSON_free(sumtext);
    db_close(db);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Predictors */

/* The analytical model's mean error on Megatron-LM's Table 1 (bench_megatron). */
#define ANALYTIC_ERROR 0.10

/* Warns (into pd->warning, after what is there) when the predictor's
 * trained op model meets devices other than the profiled one: another kind,
 * or a peak or bandwidth off by more than 2x. The network then extrapolates
 * beyond what it was trained on. */
static void check_devices(const DbProfile *prof, const Cluster *c, Predictor *pd)
{
    if (!pd->cost_model_id[0]) return;
    bool gpu = prof->backend && strcmp(prof->backend, "cuda") == 0;
    for (int k = 0; k < c->ngroups; k++) {
        const DeviceGroup *d = &c->groups[k];
        double rf = prof->peak_flops > 0 ? d->peak_flops[DT_F32] / prof->peak_flops : 1;
        double rb = prof->mem_bw > 0 ? d->mem_bw / prof->mem_bw : 1;
        if ((strcmp(d->kind, "gpu") == 0) == gpu && rf <= 2 && rf >= 0.5 && rb <= 2 && rb >= 0.5)
            continue;
        size_t at = strlen(pd->warning);
        snprintf(pd->warning + at, sizeof pd->warning - at,
                 "%scost model %s was trained on profile %lld (%s, %.3g TFLOP/s, %.3g GB/s); "
                 "cluster %s's \"%s\" devices (%s, %.3g TFLOP/s f32, %.3g GB/s) are other hardware, "
                 "where it extrapolates: without --costmodel the analytical model answers",
                 at ? "; " : "", pd->cost_model_id, (long long)prof->id, gpu ? "gpu" : "cpu",
                 prof->peak_flops / 1e12, prof->mem_bw / 1e9, c->name, d->name, d->kind,
                 d->peak_flops[DT_F32] / 1e12, d->mem_bw / 1e9);
        return;
    }
}

/* Adds the link fits of profile id to the predictor, for the levels its
 * cluster shares with the profiled machine; returns how many. Warns when the
 * profile came from another build of the kernels, or the cost model meets
 * other devices (check_devices). */
static int add_fits(Db *db, int64_t id, const Cluster *c, Predictor *pd)
{
    DbProfile prof;
    DbProfileFit *fits = NULL;
    DbProfileLink *links = NULL;
    int nfits = 0, nlinks = 0, used = 0;
    Err ignore = { { 0 } };
    LinkModel *m = pd->links;
    if (db_profile_get(db, id, &prof, NULL, NULL, &links, &nlinks, &fits, &nfits, &ignore))
        return 0;
    build_check_profile(prof.build_json, (long long)id, pd->warning, sizeof pd->warning);
    check_devices(&prof, c, pd);
    for (int k = 0; k < nfits; k++)
        if (linkmodel_add_fit(m, fits[k].collective, fits[k].group_size, fits[k].level,
                              fits[k].alpha_s, fits[k].beta_s, &ignore) == 0)
            used++;
    /* and the sizes they were fitted to (a level this cluster lacks has no fit) */
    for (int k = 0; k < nlinks; k++)
        linkmodel_add_point(m, links[k].collective, links[k].group_size, links[k].level,
                            links[k].bytes, links[k].time_s, &ignore);
    db_profile_free(&prof);
    db_profile_samples_free(NULL, 0, links, nlinks, fits, nfits);
    return used;
}

int predictor_load(const char *db_path, const char *costmodel_id, int64_t profile_id,
                   const Cluster *c, Predictor *pd, Err *err)
{
    memset(pd, 0, sizeof *pd);
    if (!(pd->links = linkmodel_from_cluster(c, err))) return -1;
    snprintf(pd->op_model, sizeof pd->op_model, "analytic (roofline with efficiency curves)");
    snprintf(pd->link_model, sizeof pd->link_model, "%s", linkmodel_describe(pd->links));
    pd->error = ANALYTIC_ERROR;
    if (!costmodel_id && profile_id <= 0) {
        pd->ops = opmodel_analytic();
        return 0;
    }
    Db *db = db_open_existing(db_path, err);
    if (!db) {
        predictor_free(pd);
        return costmodel_id ? err_prefix(err, "--costmodel %s", costmodel_id) : -1;
    }
    if (costmodel_id) {
        DbCostModel m;
        if (db_costmodel_get(db, costmodel_id, &m, err)) {
            db_close(db);
            predictor_free(pd);
            return -1;
        }
        memcpy(pd->cost_model_id, m.id, 17);
        if (m.heldout_error >= 0) pd->error = m.heldout_error;
        if (profile_id <= 0) profile_id = m.profile_id;
        pd->ops = opmodel_load(m.weights, m.nweights, err);
        if (pd->ops)
            snprintf(pd->op_model, sizeof pd->op_model, "mlp %s (profile %lld; analytic for "
                     "kinds it has no samples of)", m.id, (long long)m.profile_id);
        else
            err_prefix(err, "cost model %s", m.id);
        db_costmodel_free(&m);
        if (!pd->ops) {
            db_close(db);
            predictor_free(pd);
            return -1;
        }
    } else {
        pd->ops = opmodel_analytic();
    }
    pd->profile_id = profile_id;
    int used = profile_id > 0 ? add_fits(db, profile_id, c, pd) : 0;
    if (used)
        snprintf(pd->link_model, sizeof pd->link_model, "profile %lld link sweeps (%d; "
                 "piecewise over their measured sizes; analytic from cluster %s where none)",
                 (long long)profile_id, used, c->name);
    db_close(db);
    return 0;
}

void predictor_free(Predictor *pd)
{
    if (!pd) return;
    opmodel_free(pd->ops);
    linkmodel_free(pd->links);
    memset(pd, 0, sizeof *pd);
}

/* ----------------------------------------------------------------------------
 * The job */

int job_estimate(const Graph *g, const Cluster *c, const Strategy *s, const EstimateOpts *o,
                 Estimate *e, Err *err)
{
    memset(e, 0, sizeof *e);
    Predictor own;
    const Predictor *pd = o->pred;
    if (!pd) {
        if (predictor_load(NULL, NULL, 0, c, &own, err)) return -1;
        pd = &own;
    }
    int rc = -1;
    double t0 = now_s();
    e->plan = ir_lower_compact(g, c, s, err);
    e->lower_s = now_s() - t0;
    if (!e->plan) {
        err_prefix(err, "the strategy does not lower");
        goto out;
    }
    SimOpts so = { .ops = pd->ops, .links = pd->links, .trace = o->trace };
    t0 = now_s();
    if (cost_simulate(g, c, s, e->plan, &so, &e->sim, err)) goto out;
    e->simulate_s = now_s() - t0;
    e->json = sim_result_json(&e->sim, s, pd->op_model, pd->link_model);
    if (pd->cost_model_id[0]) cJSON_AddStringToObject(e->json, "cost_model_id", pd->cost_model_id);
    if (pd->warning[0])
        cJSON_AddItemToArray(cJSON_AddArrayToObject(e->json, "warnings"),
                             cJSON_CreateString(pd->warning));
    cJSON_AddNumberToObject(e->json, "lower_s", e->lower_s);
    cJSON_AddNumberToObject(e->json, "simulate_s", e->simulate_s);
    cJSON_AddStringToObject(e->json, "strategy_id", s->id);
    if (o->db_path) {
        cJSON *sum = plan_summary_json(e->plan, s);
        int src = job_store_plan(o->db_path, g, c, s, e->plan, sum, e->plan_id, err);
        cJSON_Delete(sum);
        if (src) goto out;
        Db *db = db_open(o->db_path, err);
        if (!db) goto out;
        char *text = cJSON_PrintUnformatted(e->json);
        DbEstimate de = { .cost_model_id = pd->cost_model_id[0] ? (char *)pd->cost_model_id : NULL,
                          .profile_id = pd->profile_id, .step_time_s = e->sim.step_time,
                          .feasible = e->sim.feasible, .json = text };
        memcpy(de.plan_id, e->plan_id, 17);
        for (int k = 0; k < e->sim.nclasses; k++)
            if ((double)e->sim.classes[k].peak_mem > de.peak_mem_bytes)
                de.peak_mem_bytes = (double)e->sim.classes[k].peak_mem;
        int prc = db_estimate_put(db, &de, &e->estimate_id, err);
        cJSON_free(text);
        db_close(db);
        if (prc) goto out;
        cJSON_AddStringToObject(e->json, "plan_id", e->plan_id);
        cJSON_AddNumberToObject(e->json, "estimate_id", (double)e->estimate_id);
    }
    rc = 0;
out:
    if (pd == &own) predictor_free(&own);
    if (rc) estimate_free(e);
    return rc;
}

void estimate_free(Estimate *e)
{
    if (!e) return;
    plan_free(e->plan);
    sim_result_free(&e->sim);
    cJSON_Delete(e->json);
    memset(e, 0, sizeof *e);
}

int job_load_plan(Db *db, const char *id, LoadedPlan *lp, Err *err)
{
    memset(lp, 0, sizeof *lp);
    DbModel m = { 0 };
    DbCluster dc = { 0 };
    int rc = db_plan_get(db, id, &lp->row, err);
    if (rc) return rc;
    rc = db_model_get(db, lp->row.model_id, &m, err);
    if (!rc && (rc = db_cluster_get(db, lp->row.cluster_id, &dc, err))) db_model_free(&m);
    if (rc) {
        db_plan_free(&lp->row);
        return -1;
    }
    cJSON *mj = cJSON_Parse(m.json), *cj = cJSON_Parse(dc.json), *sj = cJSON_Parse(lp->row.strategy_json);
    if (mj && cj && sj) {
        lp->g = graph_from_json(mj, err);
        lp->c = lp->g ? cluster_from_json(cj, 0, err) : NULL;
        lp->s = lp->c ? strategy_from_json(sj, lp->g, lp->c, err) : NULL;
    } else {
        err_set(err, "its stored JSON does not parse");
    }
    cJSON_Delete(mj);
    cJSON_Delete(cj);
    cJSON_Delete(sj);
    db_model_free(&m);
    db_cluster_free(&dc);
    if (!lp->s) {
        err_prefix(err, "plan %s", lp->row.id);
        loaded_plan_free(lp);
        return -1;
    }
    return 0;
}

void loaded_plan_free(LoadedPlan *lp)
{
    strategy_free(lp->s);
    cluster_free(lp->c);
    graph_free(lp->g);
    db_plan_free(&lp->row);
    memset(lp, 0, sizeof *lp);
}
