/*
 * search.c — the search job: a search of the space with its row, events,
 * best plan and result kept in the store.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "db/db.h"
#include "costmodel/mlp.h"
#include "ir/util.h"

int job_parse_budget(const char *s, double *secs, long *evals, Err *err)
{
    /* a plain decimal (digits, a fraction at most), then the unit: strtod
     * alone takes blanks, signs, hex and exponents */
    size_t d = strspn(s, "0123456789");
    bool frac = d && s[d] == '.' && s[d + 1] >= '0' && s[d + 1] <= '9';
    if (frac) d += 1 + strspn(s + d + 1, "0123456789");
    const char *end = s + d;
    double v = d ? strtod(s, NULL) : 0;
    *secs = 0;
    *evals = 0;
    if (!d || !(v > 0) || !isfinite(v))
        return err_set(err, "\"%s\": expected a positive time (30s, 2m, 1h) or "
                            "evaluation count (20000evals)", s);
    if (strcmp(end, "s") == 0) *secs = v;
    else if (strcmp(end, "m") == 0) *secs = v * 60;
    else if (strcmp(end, "h") == 0) *secs = v * 3600;
    else if (strcmp(end, "evals") == 0 && !frac && v <= 1e9) *evals = (long)v;
    else
        return err_set(err, "\"%s\": expected a positive time (30s, 2m, 1h) or "
                            "evaluation count (20000evals, at most 1e9)", s);
    /* a day, as the REST API allows: longer than any search needs (the
     * exhaustive one of GPT-3 on 1024 GPUs takes an hour); a longer figure
     * is a typo, and 1e308h an endless search */
    if (*secs > 86400) return err_set(err, "\"%s\": at most a day (24h)", s);
    return 0;
}

int job_store_model_cluster(const char *db_path, const Graph *g, const Cluster *c,
                            char model_out[17], char cluster_out[17], Err *err)
{
    Db *db = db_open(db_path, err);
    if (!db) return -1;
    GraphStats st;
    if (graph_stats(g, &st, err)) {
        db_close(db);
        return -1;
    }
    DbModel m = { .name = g->name, .params = st.params, .train_flops = st.train_flops };
    char *gtext = graph_text(g, m.id);
    m.json = gtext;
    cJSON *cj = cluster_to_json(c);
    char *ctext = cJSON_PrintUnformatted(cj);
    DbCluster dc = { .name = c->name, .json = ctext, .ndevices = c->ndevices };
    cluster_id(c, dc.id);
    int rc = db_model_put(db, &m, err);
    if (!rc) rc = db_cluster_put(db, &dc, err);
    memcpy(model_out, m.id, 17);
    memcpy(cluster_out, dc.id, 17);
    cJSON_free(gtext);
    cJSON_free(ctext);
    cJSON_Delete(cj);
    graph_stats_free(&st);
    db_close(db);
    return rc;
}

typedef struct {
    const SearchJobOpts *o;
    Db *db;
    const char *id;
    int seq;
    Err err;                        /* the first failure to store an event */
    bool failed;
} Sink;

static void sink(void *ctx, const cJSON *ev)
{
    Sink *k = ctx;
    char *text = cJSON_PrintUnformatted(ev);
    if (k->o->log) {
        fprintf(k->o->log, "%s\n", text);
        fflush(k->o->log);
    }
    if (!k->failed && db_search_event(k->db, k->id, ++k->seq, text, &k->err)) k->failed = true;
    cJSON_free(text);
    if (k->o->event) k->o->event(k->o->ctx, ev);
}

/* The row of a search about to be stored (a new random id); its budget
 * and options texts are the caller's to free (search_row_free). */
static void search_row(const Cluster *c, const SearchJobOpts *o, const char *status,
                       DbSearch *row)
{
    *row = (DbSearch){ .method = (char *)search_algo_name(o->search.algo),
                       .status = (char *)status, .seed = (int64_t)o->search.seed };
    cJSON *budget = cJSON_CreateObject();
    if (o->budget_text) cJSON_AddStringToObject(budget, "asked", o->budget_text);
    if (o->search.budget_s > 0) cJSON_AddNumberToObject(budget, "seconds", o->search.budget_s);
    if (o->search.budget_evals > 0)
        cJSON_AddNumberToObject(budget, "evaluations", (double)o->search.budget_evals);
    row->budget_json = cJSON_PrintUnformatted(budget);
    cJSON_Delete(budget);
    cJSON *opts = cJSON_CreateObject();
    cJSON_AddBoolToObject(opts, "allow_lossy", o->search.lossy);
    cJSON_AddNumberToObject(opts, "threads", o->search.threads > 1 ? o->search.threads : 1);
    cJSON_AddBoolToObject(opts, "untie", o->search.untie);
    if (o->costmodel_id) cJSON_AddStringToObject(opts, "costmodel", o->costmodel_id);
    row->options_json = cJSON_PrintUnformatted(opts);
    cJSON_Delete(opts);
    row->devices = o->search.world > 0 ? o->search.world : c->ndevices;
    random_id(row->id);
}

static void search_row_free(DbSearch *row)
{
    cJSON_free(row->budget_json);
    cJSON_free(row->options_json);
}

int job_search_queue(const Graph *g, const Cluster *c, const SearchJobOpts *o, char id[17],
                     Err *err)
{
    if (!o->db_path) return err_set(err, "search: a store is needed (--db)");
    if (search_check(g, c, &o->search, err)) return -1;
    if (o->policy_from && o->search.algo != SEARCH_RL)
        return err_set(err, "search: a policy starts an rl search only (--algo rl)");
    DbSearch row;
    search_row(c, o, "queued", &row);
    Db *db = NULL;
    int rc = job_store_model_cluster(o->db_path, g, c, row.model_id, row.cluster_id, err);
    if (!rc) rc = (db = db_open(o->db_path, err)) ? db_search_put(db, &row, err) : -1;
    if (!rc) memcpy(id, row.id, 17);
    db_close(db);
    search_row_free(&row);
    return rc;
}

int job_search(const Graph *g, const Cluster *c, const SearchJobOpts *o, SearchJob *j, Err *err)
{
    memset(j, 0, sizeof *j);
    if (!o->db_path) return err_set(err, "search: a store is needed (--db)");
    if (search_check(g, c, &o->search, err)) return -1;
    if (o->policy_from && o->search.algo != SEARCH_RL)
        return err_set(err, "search: a policy starts an rl search only (--algo rl)");
    /* rl: a policy to train and keep, new or from a stored search */
    Mlp *policy = NULL;
    if (o->search.algo == SEARCH_RL && o->policy_from) {
        Db *pdb = db_open_existing(o->db_path, err);
        uint8_t *blob = NULL;
        size_t nb = 0;
        int prc = pdb ? db_search_policy(pdb, o->policy_from, &blob, &nb, err) : -1;
        db_close(pdb);
        if (!prc) policy = mlp_load(blob, nb, err);
        free(blob);
        if (policy && search_policy_check(policy, err)) {
            mlp_free(policy);
            policy = NULL;
        }
        if (!policy) return err_prefix(err, "--policy-from %s", o->policy_from);
    } else if (o->search.algo == SEARCH_RL && !(policy = search_policy_new(o->search.seed, err))) {
        return -1;
    }
    DbSearch row;
    search_row(c, o, "running", &row);
    memcpy(j->id, o->row_id ? o->row_id : row.id, 17);
    Db *db = NULL;
    int rc = -1;
    if (o->row_id) {
        if (!(db = db_open(o->db_path, err))) goto out;
        if (db_search_set_status(db, j->id, "running", err)) goto out;
    } else {
        if (job_store_model_cluster(o->db_path, g, c, row.model_id, row.cluster_id, err)) goto out;
        if (!(db = db_open(o->db_path, err))) goto out;
        if (db_search_put(db, &row, err)) goto out;
    }

    Sink k = { .o = o, .db = db, .id = j->id, .seq = o->first_seq };
    SearchOpts so = o->search;
    so.event = sink;
    so.ctx = &k;
    so.policy = policy;
    if (o->pred) {
        so.ops = o->pred->ops;
        so.links = o->pred->links;
        so.model_error = o->pred->error;
    }
    if (search_run(g, c, &so, &j->r, err)) {
        db_search_finish(db, j->id, "failed", NULL, NULL, &(Err){ { 0 } });
        goto out;
    }
    if (k.failed) {
        *err = k.err;
        db_search_finish(db, j->id, "failed", NULL, NULL, &(Err){ { 0 } });
        goto out;
    }
    /* the best plan and the best baseline, stored with their estimates like
     * `strata estimate` does, so that both can be run (`run --plan`) */
    const SearchEntry *base = NULL;
    for (int k = 0; k < j->r.nbaselines; k++)
        if (j->r.baselines[k].feasible && j->r.baselines[k].s &&
            (!base || j->r.baselines[k].step_s < base->step_s))
            base = &j->r.baselines[k];
    for (int k = 0; k < 2; k++) {
        const Strategy *s = k ? (base ? base->s : NULL) : j->r.best.s;
        if (!s) continue;
        Estimate e;
        EstimateOpts eo = { .db_path = o->db_path, .pred = o->pred };
        if (job_estimate(g, c, s, &eo, &e, err)) {
            db_search_finish(db, j->id, "failed", NULL, NULL, &(Err){ { 0 } });
            goto out;
        }
        memcpy(k ? j->baseline_plan_id : j->plan_id, e.plan_id, 17);
        estimate_free(&e);
    }
    if (policy) {
        uint8_t *blob = NULL;
        size_t nb = 0;
        int prc = mlp_save(policy, &blob, &nb, err);
        if (!prc) prc = db_search_set_policy(db, j->id, blob, nb, err);
        free(blob);
        if (prc) {
            db_search_finish(db, j->id, "failed", NULL, NULL, &(Err){ { 0 } });
            goto out;
        }
    }
    j->json = search_result_json(&j->r);
    cJSON_AddStringToObject(j->json, "search_id", j->id);
    if (j->plan_id[0]) cJSON_AddStringToObject(j->json, "plan_id", j->plan_id);
    if (j->baseline_plan_id[0])
        cJSON_AddStringToObject(j->json, "best_baseline_plan_id", j->baseline_plan_id);
    char *rtext = cJSON_PrintUnformatted(j->json);
    const char *status = !j->r.best.s ? "no plan"
                       : strcmp(j->r.ended, "stopped") == 0 ? "stopped" : "done";
    int frc = db_search_finish(db, j->id, status, j->plan_id, rtext, err);
    cJSON_free(rtext);
    if (frc) goto out;
    rc = 0;
out:
    mlp_free(policy);
    search_row_free(&row);
    db_close(db);
    if (rc) search_job_free(j);
    return rc;
}

void search_job_free(SearchJob *j)
{
    if (!j) return;
    search_result_free(&j->r);
    cJSON_Delete(j->json);
    j->json = NULL;
}
