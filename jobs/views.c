/*
 * views.c — one JSON form per stored object, for `--json` on the command
 * line and for the REST API alike: a field is named once, here.
 */
#include <math.h>
#include <string.h>

#include "jobs.h"

/* A JSON text the store holds, parsed; a text that does not parse (the store
 * is not trusted to hold what this strata wrote) is kept as a string. */
static void add_parsed(cJSON *o, const char *key, const char *text)
{
    if (!text) return;
    cJSON *j = cJSON_Parse(text);
    cJSON_AddItemToObject(o, key, j ? j : cJSON_CreateString(text));
}

/* A JSON text the store holds, as it is (not parsed and printed again: a
 * plan's strategy runs to hundreds of kilobytes). Only an object's text is
 * taken so; anything else is parsed. */
static void add_raw(cJSON *o, const char *key, const char *text)
{
    if (!text) return;
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ')) n--;
    if (n >= 2 && text[0] == '{' && text[n - 1] == '}') cJSON_AddItemToObject(o, key, cJSON_CreateRaw(text));
    else add_parsed(o, key, text);
}

static void add_str(cJSON *o, const char *key, const char *s)
{
    if (s) cJSON_AddStringToObject(o, key, s);
}

cJSON *view_model(const DbModel *m, bool full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", m->id);
    add_str(o, "name", m->name);
    cJSON_AddNumberToObject(o, "params", m->params);
    cJSON_AddNumberToObject(o, "train_flops", m->train_flops);
    add_str(o, "created", m->created);
    if (full) add_raw(o, "model", m->json);
    return o;
}

cJSON *view_cluster(const DbCluster *c, bool full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    add_str(o, "name", c->name);
    cJSON_AddNumberToObject(o, "devices", c->ndevices);
    add_str(o, "created", c->created);
    if (full) add_parsed(o, "cluster", c->json);
    return o;
}

cJSON *view_plan(Db *db, const DbPlan *p, bool full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", p->id);
    cJSON_AddStringToObject(o, "model_id", p->model_id);
    add_str(o, "model", p->model_name);
    cJSON_AddStringToObject(o, "cluster_id", p->cluster_id);
    add_str(o, "cluster", p->cluster_name);
    cJSON_AddStringToObject(o, "strategy_id", p->strategy_id);
    cJSON_AddNumberToObject(o, "world", p->world);
    add_str(o, "created", p->created);
    /* the latest prediction, and with the whole plan every one and the
     * search that found it (its table against the baselines) */
    DbEstimate *e;
    int ne = 0;
    Err err = {0};
    cJSON *arr = full ? cJSON_AddArrayToObject(o, "estimates") : NULL;
    if (db && !db_estimate_list(db, p->id, &e, &ne, &err)) {
        if (ne > 0) {
            cJSON_AddNumberToObject(o, "step_time_s", e[0].step_time_s);
            cJSON_AddBoolToObject(o, "feasible", e[0].feasible);
        }
        for (int i = 0; arr && i < ne; i++) cJSON_AddItemToArray(arr, view_estimate(&e[i]));
        db_estimate_list_free(e, ne);
    }
    if (full) {
        add_raw(o, "strategy", p->strategy_json);
        add_raw(o, "summary", p->summary_json);
    }
    DbSearch x;
    if (db && full && db_search_of_plan(db, p->id, &x, &err) == 0) {
        cJSON *res = x.result_json ? cJSON_Parse(x.result_json) : NULL;
        cJSON *found = cJSON_AddObjectToObject(o, "search");
        cJSON_AddStringToObject(found, "id", x.id);
        cJSON *bl = cJSON_DetachItemFromObjectCaseSensitive(res, "baselines");
        cJSON_AddItemToObject(found, "baselines", bl ? bl : cJSON_CreateArray());
        cJSON_Delete(res);
        db_search_free(&x);
    }
    return o;
}

cJSON *view_estimate(const DbEstimate *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)e->id);
    cJSON_AddStringToObject(o, "plan_id", e->plan_id);
    if (e->cost_model_id) cJSON_AddStringToObject(o, "cost_model_id", e->cost_model_id);
    else cJSON_AddNullToObject(o, "cost_model_id");
    if (e->profile_id) cJSON_AddNumberToObject(o, "profile_id", (double)e->profile_id);
    else cJSON_AddNullToObject(o, "profile_id");
    cJSON_AddNumberToObject(o, "step_time_s", e->step_time_s);
    cJSON_AddNumberToObject(o, "peak_mem_bytes", e->peak_mem_bytes);
    cJSON_AddBoolToObject(o, "feasible", e->feasible);
    add_str(o, "created", e->created);
    add_raw(o, "estimate", e->json);
    return o;
}

cJSON *view_search(const DbSearch *x, bool full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", x->id);
    cJSON_AddStringToObject(o, "model_id", x->model_id);
    add_str(o, "model", x->model_name);
    cJSON_AddStringToObject(o, "cluster_id", x->cluster_id);
    add_str(o, "cluster", x->cluster_name);
    cJSON_AddNumberToObject(o, "devices", x->devices);
    add_str(o, "algo", x->method);
    cJSON_AddNumberToObject(o, "seed", (double)x->seed);
    add_str(o, "status", x->status);
    add_parsed(o, "budget", x->budget_json);
    add_parsed(o, "options", x->options_json);
    cJSON_AddNumberToObject(o, "events", x->nevents);
    if (x->best_plan_id[0]) cJSON_AddStringToObject(o, "best_plan_id", x->best_plan_id);
    cJSON *res = x->result_json ? cJSON_Parse(x->result_json) : NULL;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(res, "step_time_s");
    if (cJSON_IsNumber(st) && isfinite(st->valuedouble))
        cJSON_AddNumberToObject(o, "step_time_s", st->valuedouble);
    add_str(o, "created", x->created);
    /* a search queued or running again (resumed) has not ended: its last
     * end and result stay in the row, its best so far above */
    bool ended = x->status && strcmp(x->status, "queued") && strcmp(x->status, "running");
    if (ended) add_str(o, "finished", x->finished);
    if (full && res && ended) cJSON_AddItemToObject(o, "result", res);
    else cJSON_Delete(res);
    return o;
}

cJSON *view_run(const DbRun *r, const DbRunStep *st, int nsteps, bool full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "plan_id", r->plan_id);
    add_str(o, "model", r->model_name);
    add_str(o, "backend", r->backend);
    cJSON_AddNumberToObject(o, "world", r->world);
    cJSON_AddNumberToObject(o, "steps", r->steps);
    add_str(o, "status", r->status);
    add_str(o, "started", r->started);
    add_str(o, "finished", r->finished);
    add_str(o, "error", r->error);
    if (!full) return o;
    add_parsed(o, "verify", r->verify_json);
    cJSON *arr = cJSON_AddArrayToObject(o, "measurements");
    for (int i = 0; i < nsteps; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "step", st[i].step);
        cJSON_AddNumberToObject(x, "rank", st[i].rank);
        cJSON_AddNumberToObject(x, "loss", st[i].loss);
        cJSON_AddNumberToObject(x, "step_s", st[i].step_s);
        cJSON_AddNumberToObject(x, "compute_s", st[i].compute_s);
        cJSON_AddNumberToObject(x, "comm_s", st[i].comm_s);
        cJSON_AddNumberToObject(x, "idle_s", st[i].idle_s);
        if (st[i].peak_mem_bytes > 0)
            cJSON_AddNumberToObject(x, "peak_mem_bytes", st[i].peak_mem_bytes);
        cJSON_AddItemToArray(arr, x);
    }
    return o;
}

cJSON *view_profile(const DbProfile *p, const ProfileSamples *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)p->id);
    add_str(o, "status", p->status);
    cJSON_AddBoolToObject(o, "complete", p->complete);
    add_str(o, "host", p->host);
    add_str(o, "backend", p->backend);
    add_str(o, "started", p->started);
    add_str(o, "finished", p->finished);
    cJSON_AddNumberToObject(o, "ranks", p->ranks);
    cJSON_AddBoolToObject(o, "quick", p->quick);
    cJSON_AddNumberToObject(o, "op_samples", p->nops);
    cJSON_AddNumberToObject(o, "link_samples", p->nlinks);
    cJSON *d = cJSON_AddObjectToObject(o, "device");
    add_str(d, "name", p->device);
    cJSON_AddNumberToObject(d, "peak_flops", p->peak_flops);
    cJSON_AddNumberToObject(d, "mem_bw", p->mem_bw);
    cJSON_AddNumberToObject(d, "mem_bytes", p->mem_bytes);
    add_str(d, "notes", p->notes);
    cJSON *b = p->build_json ? cJSON_Parse(p->build_json) : NULL;
    cJSON_AddItemToObject(o, "build", b ? b : cJSON_CreateNull());
    if (!s) return o;
    cJSON *arr = cJSON_AddArrayToObject(o, "ops");
    for (int i = 0; i < s->nops; i++) {
        const DbProfileOp *op = &s->ops[i];
        cJSON *x = cJSON_CreateObject();
        add_str(x, "kind", op->kind);
        add_str(x, "phase", op->phase);
        add_parsed(x, "shape", op->shape_json);
        add_str(x, "dtype", op->dtype);
        add_str(x, "source", op->source);
        cJSON_AddNumberToObject(x, "flops", op->flops);
        cJSON_AddNumberToObject(x, "bytes", op->bytes);
        cJSON_AddNumberToObject(x, "median_s", op->median_s);
        cJSON_AddNumberToObject(x, "p10_s", op->p10_s);
        cJSON_AddNumberToObject(x, "p90_s", op->p90_s);
        cJSON_AddNumberToObject(x, "reps", op->reps);
        cJSON_AddItemToArray(arr, x);
    }
    arr = cJSON_AddArrayToObject(o, "links");
    for (int i = 0; i < s->nlinks; i++) {
        const DbProfileLink *l = &s->links[i];
        cJSON *x = cJSON_CreateObject();
        add_str(x, "collective", l->collective);
        cJSON_AddNumberToObject(x, "group_size", l->group_size);
        add_str(x, "level", l->level);
        cJSON_AddNumberToObject(x, "bytes", (double)l->bytes);
        cJSON_AddNumberToObject(x, "time_s", l->time_s);
        cJSON_AddNumberToObject(x, "algbw", l->algbw);
        cJSON_AddNumberToObject(x, "busbw", l->busbw);
        cJSON_AddNumberToObject(x, "iters", l->iters);
        cJSON_AddItemToArray(arr, x);
    }
    arr = cJSON_AddArrayToObject(o, "fits");
    for (int i = 0; i < s->nfits; i++) {
        const DbProfileFit *f = &s->fits[i];
        cJSON *x = cJSON_CreateObject();
        add_str(x, "collective", f->collective);
        cJSON_AddNumberToObject(x, "group_size", f->group_size);
        add_str(x, "level", f->level);
        cJSON_AddNumberToObject(x, "alpha_s", f->alpha_s);
        cJSON_AddNumberToObject(x, "beta_s", f->beta_s);
        cJSON_AddNumberToObject(x, "rms_rel_err", f->rms_rel_err);
        cJSON_AddNumberToObject(x, "max_rel_err", f->max_rel_err);
        cJSON_AddNumberToObject(x, "n", f->n);
        cJSON_AddItemToArray(arr, x);
    }
    add_parsed(o, "cluster", p->cluster_json);
    return o;
}
