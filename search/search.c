/*
 * search.c — judging candidates, the baselines, exhaustive search of the
 * coarse space and Metropolis-Hastings over the whole one.
 *
 * A candidate's score is its predicted step time. Candidates that do not
 * validate are invalid and rejected; those whose lowered program does not
 * fit (the lowering's peak against the devices' memory, before any
 * simulation) are infeasible, and scored worse than every plan that fits,
 * by how far they overflow, so that a chain started in the infeasible
 * region walks towards memory it has. Scores are cached by candidate, so a
 * chain that comes back pays nothing.
 *
 * The baselines are candidates too (each classic strategy is a point of the
 * space: test_search checks they equal strategy_build's), so they are
 * predicted by the very same path and the best of them starts the chain.
 *
 * Legend: E = score (log seconds; infeasible: above every feasible one),
 * T = temperature, P/D/T = pipeline/data/tensor degree, M = micro-batches.
 */
#include "search.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel/mlp.h"
#include "ir/lower.h"
#include "ir/util.h"

#define INFEASIBLE_E 50.0           /* above log(any step time) */

static const char *const algo_names[] = { "auto", "exhaustive", "mcmc", "rl", "baselines" };

const char *search_algo_name(SearchAlgo a)
{
    return a >= 0 && a <= SEARCH_BASELINES ? algo_names[a] : "?";
}

int search_algo_parse(const char *s, SearchAlgo *a)
{
    for (int k = 0; k <= SEARCH_BASELINES; k++)
        if (strcmp(s, algo_names[k]) == 0) {
            *a = (SearchAlgo)k;
            return 0;
        }
    return -1;
}

/* ----------------------------------------------------------------------------
 * State */

typedef struct {
    uint64_t key;
    double e;                       /* score; NAN: invalid */
    double step, mem;
    double lower;                   /* > 0: not simulated, its step is at least this */
    bool used;
} Cached;

typedef struct {
    Cand x;
    uint64_t key;
    double step, mem;
} Kept;

/* What the chains of a search run in threads share: counts over all of
 * them and the best step, under one lock that also orders their events. */
typedef struct {
    pthread_mutex_t mu;
    long proposals, evals, invalid, infeasible, bounded;
    double best;
} Shared;

typedef struct {
    const Graph *g;
    const Cluster *c;
    const Space *sp;
    const SearchOpts *o;
    SearchResult *r;
    Shared *sh;                     /* NULL on one thread */
    int chain;
    int nchains;                    /* exhaustive on threads: this chain takes every nchains-th point */
    double t0, last_event;
    uint64_t rng;
    Cached *cache;
    int ccap, cn;
    long proposals, accepted;
    Kept best;                      /* best.step INFINITY: none yet */
    Kept top[SEARCH_TOP];
    int ntop;
    double least_over;              /* smallest overflow of an infeasible plan */
    char least_desc[200];
    double current;                 /* the chain's current step (progress) */
    bool out_of_budget;
    bool untimed;                   /* judge whole, past the time budget (the baselines,
                                       reported whatever the budget) */
} Ctx;

static uint64_t rng_next(Ctx *C) { return splitmix64(&C->rng); }

static double rng_unit(Ctx *C) { return (double)(rng_next(C) >> 11) * 0x1p-53; }
static int rng_int(Ctx *C, int n) { return n > 0 ? (int)(rng_next(C) % (uint64_t)n) : 0; }

static double elapsed(const Ctx *C) { return now_s() - C->t0; }

/* Has the budget run out (or a stop been asked for)? */
static bool done(Ctx *C)
{
    if (C->o->stop && *C->o->stop) {
        snprintf(C->r->ended, sizeof C->r->ended, "stopped");
        return true;
    }
    if ((C->o->budget_evals > 0 && C->proposals >= C->o->budget_evals) ||
        (C->o->budget_s > 0 && elapsed(C) >= C->o->budget_s)) {
        snprintf(C->r->ended, sizeof C->r->ended, "budget");
        C->out_of_budget = true;
        return true;
    }
    return false;
}

/* ----------------------------------------------------------------------------
 * Events */

static cJSON *plan_brief(const Ctx *C, const Kept *k)
{
    const Space *sp = C->sp;
    cJSON *b = cJSON_CreateObject();
    int m = k->x.mesh;
    cJSON *mesh = cJSON_AddObjectToObject(b, "mesh");
    cJSON_AddNumberToObject(mesh, "pp", sp->mesh[m][0]);
    cJSON_AddNumberToObject(mesh, "dp", sp->mesh[m][1]);
    cJSON_AddNumberToObject(mesh, "tp", sp->mesh[m][2]);
    if (sp->mesh[m][3] > 1)
        cJSON_AddNumberToObject(mesh, sp->mesh[m][4] == INNER_EXPERTS ? "ep" : "cp", sp->mesh[m][3]);
    cJSON_AddNumberToObject(b, "microbatches", k->x.micro);
    cJSON_AddStringToObject(b, "schedule", sp->mesh[m][0] > 1 ? schedule_name(k->x.sched) : "none");
    char d[200];
    cJSON_AddStringToObject(b, "summary", cand_describe(&k->x, sp, d, sizeof d));
    cJSON_AddItemToObject(b, "point", cand_to_json(&k->x, sp));
    return b;
}

static void set_num(cJSON *ev, const char *k, double v)
{
    if (cJSON_GetObjectItemCaseSensitive(ev, k)) cJSON_ReplaceItemInObject(ev, k, cJSON_CreateNumber(v));
    else cJSON_AddNumberToObject(ev, k, v);
}

/* With chains on threads, the counts of an event are those of every chain
 * when it goes out, so that they never fall from one event to the next. */
static void emit(Ctx *C, cJSON *ev)
{
    if (C->sh) {
        pthread_mutex_lock(&C->sh->mu);
        double t = elapsed(C);
        set_num(ev, "evaluations", (double)C->sh->proposals);
        set_num(ev, "simulated", (double)C->sh->evals);
        set_num(ev, "evaluations_per_s", t > 0 ? C->sh->proposals / t : 0);
        set_num(ev, "infeasible", (double)C->sh->infeasible);
        set_num(ev, "invalid", (double)C->sh->invalid);
        set_num(ev, "bounded", (double)C->sh->bounded);
        if (isfinite(C->sh->best)) set_num(ev, "best_step_s", C->sh->best);
        cJSON_AddNumberToObject(ev, "chain", C->chain);
    }
    if (C->o->event) C->o->event(C->o->ctx, ev);
    if (C->sh) pthread_mutex_unlock(&C->sh->mu);
    cJSON_Delete(ev);
}

static cJSON *event_new(Ctx *C, const char *kind)
{
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "event", kind);
    double t = elapsed(C);
    cJSON_AddNumberToObject(ev, "elapsed_s", t);
    cJSON_AddNumberToObject(ev, "evaluations", (double)C->proposals);
    cJSON_AddNumberToObject(ev, "simulated", (double)C->r->evals);
    cJSON_AddNumberToObject(ev, "evaluations_per_s", t > 0 ? C->proposals / t : 0);
    if (isfinite(C->best.step)) cJSON_AddNumberToObject(ev, "best_step_s", C->best.step);
    else cJSON_AddNullToObject(ev, "best_step_s");
    cJSON_AddNumberToObject(ev, "infeasible", (double)C->r->infeasible);
    cJSON_AddNumberToObject(ev, "invalid", (double)C->r->invalid);
    cJSON_AddNumberToObject(ev, "bounded", (double)C->r->bounded);
    return ev;
}

static void progress(Ctx *C, bool force)
{
    if (C->sh && C->chain) return;          /* the first chain speaks for all */
    double every = C->o->event_every_s > 0 ? C->o->event_every_s : 0.5;
    double t = elapsed(C);
    if (!force && t - C->last_event < every) return;
    C->last_event = t;
    cJSON *ev = event_new(C, "progress");
    if (isfinite(C->current)) cJSON_AddNumberToObject(ev, "current_step_s", C->current);
    else cJSON_AddNullToObject(ev, "current_step_s");
    cJSON_AddNumberToObject(ev, "acceptance", C->proposals ? (double)C->accepted / C->proposals : 0);
    if (isfinite(C->best.step)) cJSON_AddItemToObject(ev, "best", plan_brief(C, &C->best));
    emit(C, ev);
}

/* ----------------------------------------------------------------------------
 * Judging a candidate */

static Cached *cache_slot(Ctx *C, uint64_t key)
{
    if (2 * (C->cn + 1) > C->ccap) {
        Cached *old = C->cache;
        int oc = C->ccap;
        C->ccap = oc ? 2 * oc : 4096;
        C->cache = xcalloc(C->ccap, sizeof *C->cache);
        C->cn = 0;
        for (int i = 0; i < oc; i++)
            if (old[i].used) {
                Cached *s = cache_slot(C, old[i].key);
                *s = old[i];
                C->cn++;
            }
        free(old);
    }
    for (int i = (int)(key & (uint64_t)(C->ccap - 1));; i = (i + 1) & (C->ccap - 1))
        if (!C->cache[i].used || C->cache[i].key == key) return &C->cache[i];
}

static void keep_top(Ctx *C, const Cand *x, uint64_t key, double step, double mem)
{
    for (int k = 0; k < C->ntop; k++)
        if (C->top[k].key == key) return;
    if (C->ntop == SEARCH_TOP && step >= C->top[SEARCH_TOP - 1].step) return;
    int at = C->ntop < SEARCH_TOP ? C->ntop++ : SEARCH_TOP - 1;
    if (!C->top[at].x.split) cand_init(&C->top[at].x, C->sp);
    Kept tmp = C->top[at];
    cand_copy(&tmp.x, x, C->sp);
    tmp.key = key;
    tmp.step = step;
    tmp.mem = mem;
    while (at > 0 && C->top[at - 1].step > step) {
        C->top[at] = C->top[at - 1];
        at--;
    }
    C->top[at] = tmp;
}

/* A lower bound of the bytes the fullest stage of s holds all step (its
 * params, gradients and optimizer state), over the largest device memory
 * of the cluster; > 1: the plan cannot fit, whatever its activations. It
 * mirrors the lowering's static state (ir/lower.c param_state_bytes) with
 * every param split over the tensor axis at most, which is all a
 * candidate of this space can split it over, so it never exceeds what the
 * lowering would find. */
double space_static_overflow(const Space *sp, const Strategy *s)
{
    const Graph *g = sp->g;
    double mem = 0;
    for (int k = 0; k < sp->c->ngroups; k++) mem = fmax(mem, sp->c->groups[k].mem_bytes);
    if (!(mem > 0)) return 0;
    int T = 1, D = 1;
    for (int a = 0; a < s->naxes; a++) {
        if (a == s->pp_axis) continue;
        if (s->data_axes >> a & 1u) D *= s->axis_size[a];
        else T *= s->axis_size[a];
    }
    double stage[64] = { 0 }, worst = 0;
    int nst = s->nstages < 64 ? s->nstages : 64;
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *X = &g->tensors[t];
        if (X->role != ROLE_PARAM) continue;
        const ParamPolicy *pp = &s->params[t];
        bool half = X->dtype != DT_F32;
        /* split over the data axes its first reader splits one of its
         * letters over (an expert param over dp_ep) */
        int i = sp->param_reader[t], E = 1;
        for (int q = 0; i >= 0 && q < g->ops[i].nin; q++)
            if (g->ops[i].in[q] == t) {
                Layout L = ir_operand_layout(g, s, i, q);
                AxisMask split = 0;
                for (int d = 0; d < X->ndim; d++) split |= L.dim[d];
                E = strategy_group_size(s, split & s->data_axes);
                break;
            }
        double elems = (double)tensor_numel(X) / T / E, b = elems * dtype_bytes(X->dtype);
        double opt = s->optimizer == OPT_ADAM ? (half ? 12 : 8) : (half ? 8 : 4);
        double p = b, gr = b, o = elems * opt;
        if (pp->method == SYNC_PS && D / E > 1) {
            o = 0;
        } else {
            /* sharded over the data ranks that hold it whole */
            if (pp->shard >= SHARD_ZERO1) o /= D / E;
            if (pp->shard >= SHARD_ZERO2) gr /= D / E;
            if (pp->shard >= SHARD_ZERO3) p /= D / E;
        }
        /* the stage of its first reader holds it */
        if (i >= 0) stage[s->op_stage[i] < nst ? s->op_stage[i] : nst - 1] += p + gr + o;
    }
    for (int k = 0; k < nst; k++) worst = fmax(worst, stage[k]);
    return worst / mem;
}

/* Counts x as not fitting, by `over` times its devices' memory (it needs
 * `need` bytes per device, "at least" when only a bound is known), keeps
 * the least hungry such plan's description and returns x's score. */
static double infeasible(Ctx *C, const Cand *x, double over, double need, const char *least,
                         const char *what)
{
    C->r->infeasible++;
    if (!(C->least_over > 0) || over < C->least_over) {
        C->least_over = over;
        char d[160];
        snprintf(C->least_desc, sizeof C->least_desc, "%s needs %s%.2f GiB per device%s, %.0f%% "
                 "of what its devices have", cand_describe(x, C->sp, d, sizeof d), least,
                 need / (1024.0 * 1024 * 1024), what, 100 * over);
    }
    return INFEASIBLE_E + log(over);
}

/* Not simulated: the candidate's lower bound reached the bound it was
 * judged with (branch and bound; see SIM_BOUND). */
static double bounded(Ctx *C, double *step)
{
    C->r->bounded++;
    *step = INFINITY;
    return INFINITY;
}

/* The score of x (NAN: invalid; INFINITY: its step is at least `bound`,
 * not simulated; bound 0: none); *step its predicted step time (INFINITY
 * when it does not fit or was bounded). Counts one evaluation. */
static double judge(Ctx *C, const Cand *x, double bound, double *step)
{
    C->proposals++;
    uint64_t key = cand_hash(x, C->sp);
    Cached *slot = cache_slot(C, key);
    if (slot->used && slot->lower > 0 && bound > 0 && slot->lower >= bound) {
        C->r->cache_hits++;         /* a repeat, bounded again */
        *step = INFINITY;
        return INFINITY;
    }
    if (slot->used && !(slot->lower > 0)) {
        C->r->cache_hits++;
        *step = slot->step;
        return slot->e;
    }
    Err err = { { 0 } };
    double e = NAN, mem = 0;
    *step = INFINITY;
    Strategy *s = cand_strategy(x, C->sp, &err);
    double pre = s ? space_static_overflow(C->sp, s) : 0;
    /* a time budget holds inside a long lowering or simulation too */
    double deadline = C->o->budget_s > 0 && !C->untimed ? C->t0 + C->o->budget_s : 0;
    Plan *p = s && pre <= 1 ? ir_lower_compact_until(C->g, C->c, s, deadline, &err) : NULL;
    if (!p && s && pre <= 1 && !strcmp(err.msg, LOWER_LATE)) {
        strategy_free(s);           /* not judged: the budget ran out first (nothing kept) */
        return NAN;
    }
    if (s && pre > 1) {
        /* cannot fit: no need to lower it to know */
        double have = 0;
        for (int k = 0; k < C->c->ngroups; k++) have = fmax(have, C->c->groups[k].mem_bytes);
        e = infeasible(C, x, pre, pre * have, "at least ", " for params, gradients and "
                       "optimizer state alone");
    } else if (!p) {
        C->r->invalid++;
    } else {
        double over = 0;
        for (int k = 0; k < p->nclasses; k++) {
            const Program *pr = &p->classes[k];
            mem = fmax(mem, (double)pr->peak_mem);
            if (pr->device_mem > 0) over = fmax(over, (double)pr->peak_mem / pr->device_mem);
        }
        if (over > 1) {
            e = infeasible(C, x, over, mem, "", "");
        } else {
            SimOpts so = { .ops = C->o->ops, .links = C->o->links, .deadline = deadline,
                           .bound = bound };
            SimResult sr;
            if (cost_simulate(C->g, C->c, s, p, &so, &sr, &err) == 0) {
                C->r->evals++;
                *step = sr.step_time;
                e = log(fmax(sr.step_time, 1e-300));
                sim_result_free(&sr);
            } else if (!strcmp(err.msg, SIM_LATE)) {
                /* not judged: the budget ran out first (nothing kept) */
                plan_free(p);
                strategy_free(s);
                return NAN;
            } else if (!strcmp(err.msg, SIM_BOUND)) {
                plan_free(p);
                strategy_free(s);
                if (!slot->used) C->cn++;
                *slot = (Cached){ .key = key, .e = INFINITY, .step = INFINITY,
                                  .lower = sr.lower_bound, .used = true };
                if (C->sh) {
                    pthread_mutex_lock(&C->sh->mu);
                    C->sh->proposals++;
                    C->sh->bounded++;
                    pthread_mutex_unlock(&C->sh->mu);
                }
                progress(C, false);
                return bounded(C, step);
            } else {
                C->r->invalid++;
            }
        }
    }
    plan_free(p);
    strategy_free(s);
    if (!slot->used) C->cn++;
    *slot = (Cached){ .key = key, .e = e, .step = *step, .mem = mem, .used = true };
    bool global = true;
    if (C->sh) {
        pthread_mutex_lock(&C->sh->mu);
        C->sh->proposals++;
        C->sh->evals += isfinite(*step);
        C->sh->invalid += isnan(e);
        C->sh->infeasible += !isnan(e) && e >= INFEASIBLE_E;
        global = isfinite(*step) && *step < C->sh->best;
        if (global) C->sh->best = *step;
        pthread_mutex_unlock(&C->sh->mu);
    }
    if (isfinite(*step)) {
        keep_top(C, x, key, *step, mem);
        if (*step < C->best.step) {
            cand_copy(&C->best.x, x, C->sp);
            C->best.key = key;
            C->best.step = *step;
            C->best.mem = mem;
            if (global) {
                cJSON *ev = event_new(C, "best");
                cJSON_AddItemToObject(ev, "best", plan_brief(C, &C->best));
                emit(C, ev);
            }
        }
    }
    progress(C, false);
    return e;
}

/* ----------------------------------------------------------------------------
 * Baselines, as points of the space */

typedef enum { B_DP, B_ZERO1, B_ZERO2, B_ZERO3, B_MEGATRON, B_GPIPE, B_PS, B_PARALLAX, B_SFB,
               B_COUNT } Baseline;

static const char *const baseline_names[] = { "dp", "zero1", "zero2", "zero3", "megatron",
                                              "gpipe", "ps", "parallax", "sfb" };

static int sync_index(const Space *sp, const char *name)
{
    for (int k = 0; k < sp->nsync; k++)
        if (strcmp(sp->sync[k].name, name) == 0) return k;
    return 0;
}

/* Every sync group to one choice (where it applies; else ring), or, for
 * parallax, ps for the tables embeddings gather from. */
static void set_sync(const Space *sp, Cand *x, Baseline b)
{
    int k = b == B_ZERO1 ? sync_index(sp, "zero1") : b == B_ZERO2 ? sync_index(sp, "zero2")
          : b == B_ZERO3 ? sync_index(sp, "zero3") : b == B_PS ? sync_index(sp, "ps")
          : b == B_SFB ? sync_index(sp, "sfb") : 0;
    for (int p = 0; p < sp->npgroups; p++) {
        int kk = k;
        if (b == B_PARALLAX)
            kk = graph_read_by(sp->g, sp->pgroup_first[p], OP_EMBEDDING) ? sync_index(sp, "ps") : 0;
        x->sync[p] = (uint8_t)(sp->pgroup_syncs[p] >> kk & 1u ? kk : 0);
    }
}

/* Micro-batch counts a Megatron-LM user tries: micro-batches of 1, 2, 4, 8
 * samples per data rank (where they divide). */
static int grid_micro(const Space *sp, int D, int *out)
{
    int n = 0;
    for (int mbs = 1; mbs <= 8; mbs *= 2) {
        int64_t per = sp->batch / D;
        if (sp->batch % D || per % mbs) continue;
        out[n++] = (int)(per / mbs);
    }
    return n;
}

/* The sync choice that is choice k with its state sharded one ZeRO stage
 * further (ring to zero1, zero1 to zero2, ...), -1 if none. */
static int shard_up(const Space *sp, int k)
{
    const SyncChoice *a = &sp->sync[k];
    if (a->method != SYNC_ALLREDUCE || a->shard >= SHARD_ZERO3) return -1;
    for (int j = 0; j < sp->nsync; j++) {
        const SyncChoice *b = &sp->sync[j];
        if (b->method == a->method && b->algo == a->algo && b->compress == a->compress &&
            b->powersgd_rank == a->powersgd_rank && b->shard == a->shard + 1)
            return j;
    }
    return -1;
}

/* x with every param group's state sharded one ZeRO stage further where
 * it can be, into y; false when none can. */
static bool shard_further(const Space *sp, const Cand *x, Cand *y)
{
    cand_copy(y, x, sp);
    bool any = false;
    for (int p = 0; p < sp->npgroups; p++) {
        int k = shard_up(sp, x->sync[p]);
        if (k >= 0 && sp->pgroup_syncs[p] >> k & 1u) {
            y->sync[p] = (uint8_t)k;
            any = true;
        }
    }
    return any;
}

/* The best grid point of Megatron-LM's (T within a node, any P, M, with and
 * without recompute, 1F1B; a point that does not fit also with the
 * distributed optimizer, ZeRO-1, as its users add it) or GPipe's (T = 1)
 * layouts; false when none validates. */
static bool grid_best(Ctx *C, Baseline b, Cand *out, double *best_step)
{
    const Space *sp = C->sp;
    int node = C->c && C->c->nlevels ? C->c->levels[0].count : sp->world;
    Cand x, y;
    cand_init(&x, sp);
    cand_init(&y, sp);
    bool any = false;
    *best_step = INFINITY;
    double best_e = INFINITY;
    for (int m = 0; m < sp->nmesh && !done(C); m++) {
        int P = sp->mesh[m][0], D = sp->mesh[m][1], T = sp->mesh[m][2];
        if (sp->mesh[m][3] > 1 || (b == B_GPIPE ? (T > 1 || P < 2) : T > node)) continue;
        int ms[8], nm = grid_micro(sp, D, ms);
        for (int k = 0; k < nm; k++)
            for (int rec = 0; rec < (sp->nkinds ? 2 : 1); rec++) {
                cand_set_mesh(&x, sp, m);
                x.micro = ms[k];
                x.sched = b == B_GPIPE ? SCHED_GPIPE : SCHED_1F1B;
                for (int q = 0; q < sp->ngroups; q++)
                    x.split[q] = (uint8_t)(b == B_MEGATRON ? sp->group_megatron[q] : 0);
                for (int kd = 0; kd < sp->nkinds; kd++) x.recompute[kd] = (uint8_t)rec;
                set_sync(sp, &x, B_DP);
                double step, e = judge(C, &x, 0, &step);
                if (b == B_MEGATRON && e >= INFEASIBLE_E && shard_further(sp, &x, &y)) {
                    cand_copy(&x, &y, sp);
                    e = judge(C, &x, 0, &step);
                }
                if (isnan(e)) continue;
                if (!any || e < best_e) {
                    cand_copy(out, &x, sp);
                    best_e = e;
                    *best_step = step;
                    any = true;
                }
            }
    }
    cand_free(&x);
    cand_free(&y);
    return any;
}

/* The candidate of baseline b into x; false when b does not apply. */
static bool baseline_cand(Ctx *C, Baseline b, Cand *x, char *why, int nwhy)
{
    const Space *sp = C->sp;
    if (b == B_MEGATRON || b == B_GPIPE) {
        double step;
        if (grid_best(C, b, x, &step)) return true;
        snprintf(why, (size_t)nwhy, "no %s layout validates on %d devices", baseline_names[b],
                 sp->world);
        return false;
    }
    int dp = -1;
    for (int m = 0; m < sp->nmesh; m++)
        if (sp->mesh[m][0] == 1 && sp->mesh[m][2] == 1 && sp->mesh[m][3] == 1) dp = m;
    if (dp < 0) {
        snprintf(why, (size_t)nwhy, "batch %lld is not divisible by %d data ranks",
                 (long long)sp->batch, sp->world);
        return false;
    }
    x->micro = 1;
    cand_set_mesh(x, sp, dp);
    x->micro = 1;
    memset(x->split, 0, sp->ngroups);
    memset(x->recompute, 0, sp->nkinds);
    set_sync(sp, x, b);
    if (b == B_SFB || b == B_PARALLAX) {
        int want = sync_index(sp, b == B_SFB ? "sfb" : "ps"), n = 0;
        for (int p = 0; p < sp->npgroups; p++) n += x->sync[p] == want;
        if (!n) {
            snprintf(why, (size_t)nwhy, b == B_SFB ? "no param fits sufficient-factor broadcast"
                                                   : "the model has no embedding table");
            return false;
        }
    }
    return true;
}

/* A kept plan as an entry of the result: its strategy canonicalised. */
static void entry_of(Ctx *C, const Cand *x, double step, double mem, SearchEntry *e)
{
    Err err = { { 0 } };
    e->s = cand_strategy(x, C->sp, &err);
    if (e->s) strategy_canonicalize(e->s, C->g);
    else snprintf(e->why, sizeof e->why, "%.*s", (int)sizeof e->why - 1, err.msg);
    e->step_s = step;
    e->peak_mem = mem;
    e->feasible = isfinite(step);
    cand_describe(x, C->sp, e->name, (int)sizeof e->name);
}

/* Predicts every baseline; the best into *start (false: none fits). */
static bool run_baselines(Ctx *C, Cand *start)
{
    SearchResult *r = C->r;
    r->baselines = xcalloc(B_COUNT, sizeof *r->baselines);
    Cand x;
    cand_init(&x, C->sp);
    double best = INFINITY;
    bool any = false;
    C->untimed = true;
    for (int b = 0; b < B_COUNT; b++) {
        SearchEntry *e = &r->baselines[r->nbaselines++];
        char why[300] = "";
        if (!baseline_cand(C, (Baseline)b, &x, why, sizeof why)) {
            snprintf(e->name, sizeof e->name, "%s", baseline_names[b]);
            snprintf(e->why, sizeof e->why, "%s", why);
            e->step_s = INFINITY;
        } else {
            double step;
            double sc = judge(C, &x, 0, &step);
            uint64_t key = cand_hash(&x, C->sp);
            double mem = cache_slot(C, key)->mem;
            entry_of(C, &x, step, mem, e);
            char desc[sizeof e->name];
            snprintf(desc, sizeof desc, "%s", e->name);
            snprintf(e->name, sizeof e->name, "%s (%.*s)", baseline_names[b],
                     (int)sizeof e->name - 16, desc);
            if (isnan(sc)) snprintf(e->why, sizeof e->why, "does not validate");
            else if (!isfinite(step)) snprintf(e->why, sizeof e->why, "does not fit in memory");
            if (isfinite(step) && step < best) {
                best = step;
                cand_copy(start, &x, C->sp);
                any = true;
            }
        }
        cJSON *ev = event_new(C, "baseline");
        cJSON_AddStringToObject(ev, "name", e->name);
        if (isfinite(e->step_s)) cJSON_AddNumberToObject(ev, "step_s", e->step_s);
        else cJSON_AddNullToObject(ev, "step_s");
        if (e->why[0]) cJSON_AddStringToObject(ev, "why", e->why);
        emit(C, ev);
    }
    C->untimed = false;
    cand_free(&x);
    return any;
}

/* ----------------------------------------------------------------------------
 * Exhaustive */

/* The step at or above which a plan can change nothing this chain keeps
 * (0: every plan can): the slowest of a full top list, or, when `above`
 * says a plan slower than that is of no use either, the faster of the two. */
static double keep_bound(const Ctx *C, double above)
{
    return C->ntop == SEARCH_TOP ? fmax(above, C->top[SEARCH_TOP - 1].step) : 0;
}

/* Every point of the coarse space, each simulated unless its lower bound
 * shows it slower than the top plans kept so far (branch and bound). */
static void run_exhaustive(Ctx *C)
{
    Cand x;
    cand_init(&x, C->sp);
    int64_t n = C->r->space_size, stride = C->nchains > 1 ? C->nchains : 1;
    for (int64_t k = C->nchains > 1 ? C->chain : 0; k < n && !done(C); k += stride) {
        space_coarse_point(C->sp, k, &x);
        double step;
        judge(C, &x, keep_bound(C, 0), &step);
    }
    cand_free(&x);
}

/* ----------------------------------------------------------------------------
 * Metropolis-Hastings */

/* Does option opt of op group q divide by T? */
static bool split_ok(const Space *sp, int q, int opt, int T)
{
    if (opt == 0) return true;
    const Op *op = &sp->g->ops[sp->group_first[q]];
    return op->size[sp->group_letter[q][opt] - 'a'] % T == 0;
}

/* The micro-batch count next to x's among its mesh's valid ones, d = +1
 * up (smaller micro-batches) or -1 down; 0 past either end. */
static int micro_next(const Space *sp, const Cand *x, int d)
{
    int opts[256], n = space_micro_options(sp, space_batch_ranks(sp, x->mesh), opts, 256), at = 0;
    while (at < n && opts[at] != x->micro) at++;
    return at + d >= 0 && at + d < n ? opts[at + d] : 0;
}

#define REPAIRS 4      /* at most, of one candidate (repairs) */

/* y (a copy of x) on another mesh, its micro-batches as large as x's: a
 * mesh with 8x the pipeline stages and 1/8 of the data ranks keeps the
 * step's per-device work with 8x the micro-batches, and changing one
 * without the other is two moves, the first of them usually uphill (a
 * deep pipeline with few micro-batches is mostly bubble). An op group's
 * split the new tensor degree cannot take becomes none. */
static void move_mesh(const Space *sp, const Cand *x, Cand *y, int mesh)
{
    int64_t from = space_batch_ranks(sp, x->mesh), to = space_batch_ranks(sp, mesh);
    y->micro = (int)((int64_t)x->micro * from / to > 0 ? (int64_t)x->micro * from / to : 1);
    cand_set_mesh(y, sp, mesh);
    int T = sp->mesh[mesh][2];
    bool any = false;
    for (int q = 0; q < sp->ngroups; q++) {
        if (!split_ok(sp, q, y->split[q], T)) y->split[q] = 0;
        any |= y->split[q] > 0;
    }
    /* a tensor axis that would split nothing (from a mesh without one)
     * splits as Megatron-LM does, where the degree allows */
    for (int q = 0; q < sp->ngroups && T > 1 && !any; q++)
        if (split_ok(sp, q, sp->group_megatron[q], T)) y->split[q] = (uint8_t)sp->group_megatron[q];
}

/* A local move from x into y (a copy of x changed in one decision). */
static void propose(Ctx *C, const Cand *x, Cand *y)
{
    const Space *sp = C->sp;
    cand_copy(y, x, sp);
    int P = sp->mesh[x->mesh][0], D = sp->mesh[x->mesh][1], T = sp->mesh[x->mesh][2];
    for (int tries = 0; tries < 16; tries++) {
        switch (rng_int(C, 11)) {
        case 0: {   /* one op group's split */
            if (T < 2 || !sp->ngroups) break;
            int q = rng_int(C, sp->ngroups), n = sp->group_nopt[q];
            if (n < 2) break;
            int opt = rng_int(C, n);
            if (opt == x->split[q] || !split_ok(sp, q, opt, T)) break;
            y->split[q] = (uint8_t)opt;
            return;
        }
        case 1: {   /* one param group's sync */
            if (D < 2 || !sp->npgroups) break;
            int p = rng_int(C, sp->npgroups), k = rng_int(C, sp->nsync);
            if (k == x->sync[p] || !(sp->pgroup_syncs[p] >> k & 1u)) break;
            y->sync[p] = (uint8_t)k;
            return;
        }
        case 2: {   /* recompute of one block kind */
            if (!sp->nkinds) break;
            int k = rng_int(C, sp->nkinds);
            y->recompute[k] = !x->recompute[k];
            return;
        }
        case 3: {   /* refactor the mesh: mostly a neighbour (one degree kept, a factor of
                       at most 4 traded between the other two, the inner data axis kept),
                       sometimes any mesh */
            if (sp->nmesh < 2) break;
            const int *a = sp->mesh[x->mesh];
            int near[64], nn = 0;
            for (int k = 0; k < sp->nmesh && nn < 64; k++) {
                const int *b = sp->mesh[k];
                int same = (a[0] == b[0]) + (a[1] == b[1]) + (a[2] == b[2]);
                int grow = 1;
                for (int d = 0; d < 3; d++)
                    if (b[d] > a[d]) grow = b[d] / a[d];
                bool inner = a[3] == b[3] && a[4] == b[4];
                if (k != x->mesh && same == 1 && grow <= 4 && inner) near[nn++] = k;
            }
            int m = nn && rng_unit(C) < 0.8 ? near[rng_int(C, nn)] : rng_int(C, sp->nmesh);
            if (m == x->mesh) break;
            move_mesh(sp, x, y, m);
            return;
        }
        case 10: {  /* only the inner data axis: another degree or kind (experts or the
                       sequence over data ranks), or none */
            const int *a = sp->mesh[x->mesh];
            int alt[64], na = 0;
            for (int k = 0; k < sp->nmesh && na < 64; k++) {
                const int *b = sp->mesh[k];
                if (k != x->mesh && a[0] == b[0] && a[1] == b[1] && a[2] == b[2]) alt[na++] = k;
            }
            if (!na) break;
            move_mesh(sp, x, y, alt[rng_int(C, na)]);
            memcpy(y->cuts, x->cuts, sizeof *y->cuts * x->ncuts);   /* the same stages */
            return;
        }
        case 4: {   /* move one pipeline cut by a block */
            if (P < 2) break;
            int i = rng_int(C, x->ncuts), d = rng_int(C, 2) ? 1 : -1, v = x->cuts[i] + d;
            int lo = i ? x->cuts[i - 1] : 0, hi = i + 1 < x->ncuts ? x->cuts[i + 1] : sp->g->nblocks;
            if (v <= lo || v >= hi) break;
            y->cuts[i] = v;
            return;
        }
        case 5: {   /* micro-batches: the next count up or down */
            int m = micro_next(sp, x, rng_int(C, 2) ? 1 : -1);
            if (!m) break;
            y->micro = m;
            return;
        }
        case 6:     /* schedule */
            if (P < 2) break;
            y->sched = x->sched == SCHED_1F1B ? SCHED_GPIPE : SCHED_1F1B;
            return;
        /* moves of the coarse space, so that a chain can take in one step
         * what the tied space decides at once */
        case 7: {   /* every param group to one sync choice (where it applies) */
            if (D < 2 || !sp->npgroups) break;
            cand_sync_all(y, sp, rng_int(C, sp->nsync));
            if (!memcmp(y->sync, x->sync, sp->npgroups)) break;
            return;
        }
        case 8: {   /* every op group to no split, or to Megatron-LM's */
            if (T < 2 || !sp->ngroups) break;
            int meg = rng_int(C, 2);
            for (int q = 0; q < sp->ngroups; q++) {
                int opt = meg ? sp->group_megatron[q] : 0;
                y->split[q] = (uint8_t)(split_ok(sp, q, opt, T) ? opt : 0);
            }
            if (!memcmp(y->split, x->split, sp->ngroups)) break;
            return;
        }
        case 9: {   /* recompute every block kind, or none */
            if (sp->nkinds < 2) break;
            memset(y->recompute, rng_int(C, 2), sp->nkinds);
            if (!memcmp(y->recompute, x->recompute, sp->nkinds)) break;
            return;
        }
        }
    }
}

/* Ways to make x, which does not fit in memory, fit: copies of x with its
 * state sharded one ZeRO stage further, with the next micro-batch count up
 * (smaller micro-batches), with recompute on for every block kind, with
 * the sequence split over twice as many of the data ranks (activations
 * halved, as context parallelism does). Writes those that differ from x
 * into out; returns how many. */
static int repairs(const Space *sp, const Cand *x, Cand out[REPAIRS])
{
    int n = 0, up = micro_next(sp, x, 1);
    if (shard_further(sp, x, &out[n])) n++;
    if (up) {
        cand_copy(&out[n], x, sp);
        out[n++].micro = up;
    }
    bool all = true;
    for (int k = 0; k < sp->nkinds; k++) all &= x->recompute[k];
    if (sp->nkinds && !all) {
        cand_copy(&out[n], x, sp);
        memset(out[n++].recompute, 1, sp->nkinds);
    }
    const int *a = sp->mesh[x->mesh];
    int want = a[4] == INNER_SEQUENCE ? 2 * a[3] : a[3] > 1 ? 0 : 2;
    for (int m = 0; m < sp->nmesh && want; m++) {
        const int *b = sp->mesh[m];
        if (b[0] == a[0] && b[1] == a[1] && b[2] == a[2] && b[4] == INNER_SEQUENCE && b[3] == want) {
            cand_copy(&out[n], x, sp);
            move_mesh(sp, x, &out[n], m);
            memcpy(out[n].cuts, x->cuts, sizeof *out[n].cuts * x->ncuts);   /* the same stages */
            n++;
            break;
        }
    }
    return n;
}

/* The k-th move tried around a new best: recompute of every block kind
 * turned the other way (k = 0), the next micro-batch count up (1) and down
 * (2), every param group to one sync choice (3, ...: each choice in turn,
 * where it applies; plans whose syncs differ by under a percent are many
 * single-group moves apart, each too small a gain to lead a chain there),
 * then every other inner data axis on the same mesh (the sequence or the
 * experts over another number of data ranks, or none), then a factor of 2
 * traded between the data and the tensor degrees (the pipeline and the
 * inner axis kept). Returns 1 when y is that move, 0 when it changes
 * nothing, -1 past the last. */
static int polish_move(const Space *sp, const Cand *x, Cand *y, int k)
{
    cand_copy(y, x, sp);
    if (k == 0) {
        int on = 0;
        for (int q = 0; q < sp->nkinds; q++) on += x->recompute[q];
        memset(y->recompute, 2 * on < sp->nkinds, sp->nkinds);
        return sp->nkinds && memcmp(y->recompute, x->recompute, sp->nkinds);
    }
    if (k <= 2) {
        y->micro = micro_next(sp, x, k == 1 ? 1 : -1);
        return y->micro > 0;
    }
    const int *a = sp->mesh[x->mesh];
    if (k < 3 + sp->nsync) {
        if (a[1] < 2 || !sp->npgroups) return 0;
        cand_sync_all(y, sp, k - 3);
        return memcmp(y->sync, x->sync, sp->npgroups) != 0;
    }
    int n = 3 + sp->nsync;
    for (int m = 0; m < sp->nmesh; m++) {
        const int *b = sp->mesh[m];
        if (m == x->mesh || a[0] != b[0] || a[1] != b[1] || a[2] != b[2]) continue;
        if (n++ < k) continue;
        move_mesh(sp, x, y, m);
        memcpy(y->cuts, x->cuts, sizeof *y->cuts * x->ncuts);   /* the same stages */
        return 1;
    }
    for (int m = 0; m < sp->nmesh; m++) {
        const int *b = sp->mesh[m];
        bool trade = (b[1] == 2 * a[1] && 2 * b[2] == a[2]) || (2 * b[1] == a[1] && b[2] == 2 * a[2]);
        if (a[0] != b[0] || a[3] != b[3] || a[4] != b[4] || !trade) continue;
        if (n++ < k) continue;
        move_mesh(sp, x, y, m);
        memcpy(y->cuts, x->cuts, sizeof *y->cuts * x->ncuts);   /* the same stages */
        return 1;
    }
    return -1;
}

#define SCAN_KEEP 12    /* meshes a scan re-tunes */

/* Every other mesh once, from x (its micro-batches as large, its other
 * decisions kept where the mesh allows them; where that does not fit, its
 * best repair); this chain's share of them when several run. The SCAN_KEEP
 * fastest are then re-tuned where a mesh changes what pays most: every
 * param group to one sync choice (each in turn), recompute all or none.
 * A deep pipeline over few data ranks is several mesh moves from a shallow
 * one, each uphill alone while the decisions tuned for one mesh are kept;
 * one evaluation a mesh (most stopped at their lower bound) and the
 * re-tuning cost 2-4 s of a 10 s 175B search. Returns the fastest found that beats `than` in
 * *x (its step in *step), or false. */
static bool scan_meshes(Ctx *C, Cand *x, double than, double *step)
{
    const Space *sp = C->sp;
    int share = C->o->threads > 1 ? C->o->threads : 1;
    Cand y, keep[SCAN_KEEP], fix[REPAIRS];
    double ks[SCAN_KEEP];
    cand_init(&y, sp);
    for (int k = 0; k < SCAN_KEEP; k++) {
        cand_init(&keep[k], sp);
        ks[k] = INFINITY;
    }
    for (int k = 0; k < REPAIRS; k++) cand_init(&fix[k], sp);
    for (int m = C->chain % share; m < sp->nmesh && !done(C); m += share) {
        if (m == x->mesh) continue;
        cand_copy(&y, x, sp);
        move_mesh(sp, x, &y, m);
        /* bounded by the slowest kept: what cannot be kept need not finish */
        double bound = isfinite(ks[SCAN_KEEP - 1]) ? ks[SCAN_KEEP - 1] : 0;
        double sy, e = judge(C, &y, bound, &sy);
        int nr = isfinite(e) && e >= INFEASIBLE_E ? repairs(sp, &y, fix) : 0;
        for (int k = 0; k < nr && !done(C); k++) {
            double s2;
            judge(C, &fix[k], bound, &s2);
            if (s2 < sy) {
                cand_copy(&y, &fix[k], sp);
                sy = s2;
            }
        }
        for (int k = 0; k < SCAN_KEEP; k++)
            if (sy < ks[k]) {
                for (int j = SCAN_KEEP - 1; j > k; j--) {
                    cand_copy(&keep[j], &keep[j - 1], sp);
                    ks[j] = ks[j - 1];
                }
                cand_copy(&keep[k], &y, sp);
                ks[k] = sy;
                break;
            }
    }
    double sbest = than;
    for (int k = 0; k < SCAN_KEEP && isfinite(ks[k]); k++) {
        if (ks[k] < sbest) {
            sbest = ks[k];
            cand_copy(x, &keep[k], sp);
        }
        for (int v = 0; v < sp->nsync + 2 && !done(C); v++) {
            cand_copy(&y, &keep[k], sp);
            if (v < sp->nsync) {
                cand_sync_all(&y, sp, v);
                if (!memcmp(y.sync, keep[k].sync, sp->npgroups)) continue;
            } else {
                memset(y.recompute, v == sp->nsync, sp->nkinds);
                if (!sp->nkinds || !memcmp(y.recompute, keep[k].recompute, sp->nkinds)) continue;
            }
            double sy;
            judge(C, &y, sbest, &sy);
            if (sy < sbest) {
                sbest = sy;
                cand_copy(x, &y, sp);
            }
        }
    }
    cand_free(&y);
    for (int k = 0; k < SCAN_KEEP; k++) cand_free(&keep[k]);
    for (int k = 0; k < REPAIRS; k++) cand_free(&fix[k]);
    if (sbest < than) *step = sbest;
    return sbest < than;
}

static void run_mcmc(Ctx *C, const Cand *start)
{
    const Space *sp = C->sp;
    Cand cur, y, fix[REPAIRS];
    cand_init(&cur, sp);
    cand_init(&y, sp);
    for (int k = 0; k < REPAIRS; k++) cand_init(&fix[k], sp);
    cand_copy(&cur, start, sp);
    double step, ecur = judge(C, &cur, 0, &step);
    if (isnan(ecur)) ecur = INFINITY;
    C->current = step;
    /* T: a move 10% slower is accepted with probability e^-1 at first on
     * the first chain; each further chain runs 4x colder (2.5%, 0.6%, ...),
     * so that some chains climb down at once while others roam */
    const double T0 = log(1 + 0.1 / pow(4, C->chain)), Tmin = fmin(T0, log(1.001));
    double T = T0, ebest = isfinite(C->best.step) ? log(C->best.step) : INFINITY;
    long since = 0;
    bool scanned = false;           /* the meshes scanned from the best (scan_meshes) */
    int polish = 0;                 /* the next move to try around the best (polish_move;
                                       -1: none), the start's first */
    while (!done(C)) {
        bool forced = false;
        while (polish >= 0 && !forced) {
            int r = polish_move(sp, &cur, &y, polish++);
            if (r < 0) polish = -1;
            forced = r > 0;
        }
        if (!forced) propose(C, &cur, &y);
        /* the move is accepted when its score is below ecur - T log u:
         * one slower than that (and than every top plan) is rejected
         * whatever it is, so its simulation stops at its lower bound */
        double u = rng_unit(C), bound = isfinite(ecur) ? keep_bound(C, exp(ecur - T * log(u))) : 0;
        double e = judge(C, &y, bound, &step);
        /* a move that no longer fits in memory: the best of its repairs
         * (repairs) is proposed instead, so that a move whose gain needs
         * memory found elsewhere (a deeper data axis and ZeRO, recompute
         * off and smaller micro-batches) is one step */
        int nr = isfinite(e) && e >= INFEASIBLE_E ? repairs(sp, &y, fix) : 0;
        for (int k = 0; k < nr && !done(C); k++) {
            double step2, e2 = judge(C, &fix[k], bound, &step2);
            if (!isnan(e2) && e2 < e) {
                cand_copy(&y, &fix[k], sp);
                e = e2;
                step = step2;
            }
        }
        if (isnan(e)) continue;
        if (e <= ecur || u < exp(-(e - ecur) / T)) {
            Cand t = cur;
            cur = y;
            y = t;
            ecur = e;
            C->current = step;
            C->accepted++;
        }
        T = fmax(Tmin, T * 0.995);
        if (ecur < ebest - 1e-12) {
            ebest = ecur;
            since = 0;
            polish = 0;
        } else if (!scanned && ++since >= 30 && isfinite(C->best.step)) {
            /* stalled the first time: every other mesh from the best */
            scanned = true;
            since = 0;
            double sx = INFINITY;
            cand_copy(&y, &C->best.x, sp);
            if (scan_meshes(C, &y, C->best.step, &sx)) {
                Cand t = cur;
                cur = y;
                y = t;
                ecur = log(sx);
                C->current = sx;
                polish = 0;
            }
        } else if (scanned && ++since >= 150 && isfinite(C->best.step)) {
            /* restart from the best, hot again */
            cand_copy(&cur, &C->best.x, sp);
            ecur = log(C->best.step);
            C->current = C->best.step;
            T = T0;
            since = 0;
        }
    }
    cand_free(&cur);
    cand_free(&y);
    for (int k = 0; k < REPAIRS; k++) cand_free(&fix[k]);
}

/* ----------------------------------------------------------------------------
 * Reinforcement learning
 *
 * A policy scores every option of every decision with one small MLP
 * (costmodel/mlp.h) over features that say what the option is in terms any
 * model has (degrees, sizes, kinds, bytes; never names), so a policy
 * trained on one model can start the search of another. A candidate is one
 * episode: each decision samples its option from the softmax of the scores
 * (options the sampled mesh cannot take are masked). REINFORCE with a
 * moving-average baseline and an entropy bonus updates the policy after
 * every batch of episodes; the reward is -log(step / reference) for a plan
 * that fits, a penalty growing with the overflow for one that does not.
 *
 * Legend: A = advantage, H = entropy of a decision, beta = entropy weight,
 * NF = features of an option. */

enum {
    F_MESH, F_MICRO, F_SCHED, F_RECOMPUTE, F_SPLIT, F_SYNC,     /* decision type */
    F_LOGP = 6, F_LOGD, F_LOGT, F_CROSS_NODE, F_DEPTH, F_LOGE, F_LOGQ,  /* mesh */
    F_LOGM, F_LOGMBS, F_M_PER_P,                                 /* micro-batches */
    F_GPIPE,                                                     /* schedule */
    F_ON, F_KIND_ACT, F_PRESSURE,                                /* recompute */
    F_NONE, F_CONTRACTED, F_IN_OUT, F_LOGSIZE, F_MATMUL, F_ELEMENT, F_GATHER_LOSS,
    F_LOGFLOPS,                                                  /* split */
    F_ALLREDUCE, F_PS, F_SFB, F_SHARD, F_COMPRESS, F_LOGBYTES, F_EMBED, F_TREE, F_HIER,
    F_PS_SHARDS, F_PS_PEAK,                                      /* sync */
    F_GLOBAL, F_PER_GROUP,                                       /* one choice for all, or not */
    NF
};

#define RL_BATCH 8
#define RL_MAX_OPTS SPACE_MAX_MESHES    /* options of a decision: every mesh of the space */
#define RL_MAX_MICRO 64

typedef struct {
    int nopt;
    int chosen;
    int first;                      /* its options' rows in the episode's feature table */
} Decision;

typedef struct {
    Decision *d;
    int nd, capd;
    double *x;                      /* option features, NF per row */
    int nx, capx;
    double reward;
} Episode;

typedef struct {
    Ctx *C;
    Mlp *pol;
    MlpWork *w;
    double *split_x;                /* per (group, option): NF features */
    double *sync_x;                 /* per (param group, sync choice) */
    double *kind_x;                 /* per block kind: features of "on" */
    double ref;                     /* log of the reference step time */
    double all_bytes;               /* F_LOGBYTES of every param together */
    double base, var;               /* moving average of the reward and of its square */
    bool have_base;
    double beta;
} Rl;

static double *ep_row(Episode *e)
{
    if (e->nx == e->capx) {
        e->capx = e->capx ? 2 * e->capx : 256;
        e->x = xrealloc(e->x, sizeof *e->x * NF * e->capx);
    }
    double *r = &e->x[NF * e->nx++];
    memset(r, 0, sizeof *r * NF);
    return r;
}

static Decision *ep_decision(Episode *e)
{
    if (e->nd == e->capd) {
        e->capd = e->capd ? 2 * e->capd : 64;
        e->d = xrealloc(e->d, sizeof *e->d * e->capd);
    }
    Decision *d = &e->d[e->nd++];
    d->nopt = 0;
    d->chosen = 0;
    d->first = e->nx;
    return d;
}

/* Samples one option of the decision whose rows were just added, or takes
 * option `follow` (>= 0). */
static int rl_choose(Rl *R, Episode *e, Decision *d, int follow)
{
    if (follow >= 0) {
        d->chosen = follow < d->nopt ? follow : 0;
        return d->chosen;
    }
    double l[RL_MAX_OPTS], mx = -INFINITY, z = 0;
    for (int k = 0; k < d->nopt; k++) {
        mlp_predict(R->pol, &e->x[NF * (d->first + k)], &l[k]);
        mx = fmax(mx, l[k]);
    }
    for (int k = 0; k < d->nopt; k++) z += l[k] = exp(l[k] - mx);
    double u = rng_unit(R->C) * z;
    int a = 0;
    while (a < d->nopt - 1 && (u -= l[a]) > 0) a++;
    d->chosen = a;
    return a;
}

static double lg2(double v) { return log2(fmax(v, 1)); }

/* Peak compute of device group k (its best dtype's) over the cluster's
 * fastest group's. */
static double group_peak(const Cluster *c, int k)
{
    double best = 0, mine = 0;
    for (int j = 0; j < c->ngroups; j++)
        for (int d = 0; d < DT_COUNT; d++) {
            best = fmax(best, c->groups[j].peak_flops[d]);
            if (j == k) mine = fmax(mine, c->groups[j].peak_flops[d]);
        }
    return best > 0 ? mine / best : 0;
}

/* The features of what does not depend on the mesh, once. */
static void rl_tables(Rl *R)
{
    const Space *sp = R->C->sp;
    const Graph *g = sp->g;
    double devmem = R->C->c->groups[0].mem_bytes > 0 ? R->C->c->groups[0].mem_bytes : 1;
    GraphStats st;
    Err err = { { 0 } };
    bool stats = graph_stats(g, &st, &err) == 0;
    R->split_x = xcalloc((size_t)(sp->ngroups ? sp->ngroups : 1) * 8 * NF, sizeof *R->split_x);
    for (int q = 0; q < sp->ngroups; q++) {
        const Op *op = &g->ops[sp->group_first[q]];
        OpCost oc;
        graph_op_cost(g, sp->group_first[q], op->size, &oc);
        for (int k = 0; k < sp->group_nopt[q]; k++) {
            double *x = &R->split_x[NF * (q * 8 + k)];
            x[F_SPLIT] = 1;
            x[F_NONE] = k == 0;
            x[F_MATMUL] = op->kind == OP_MATMUL || op->kind == OP_CONV2D;
            x[F_GATHER_LOSS] = op->kind == OP_EMBEDDING || op_kind_is_loss(op->kind);
            x[F_ELEMENT] = !x[F_MATMUL] && !x[F_GATHER_LOSS];
            x[F_LOGFLOPS] = log10(fmax(oc.flops[0], 1)) / 10;
            if (k == 0) continue;
            char l = sp->group_letter[q][k];
            x[F_IN_OUT] = strchr(op->out_letters, l) != NULL;
            x[F_CONTRACTED] = !x[F_IN_OUT];
            x[F_LOGSIZE] = lg2((double)op->size[l - 'a']) / 16;
        }
    }
    R->sync_x = xcalloc((size_t)(sp->npgroups ? sp->npgroups : 1) * SPACE_MAX_SYNC * NF,
                        sizeof *R->sync_x);
    for (int p = 0; p < sp->npgroups; p++) {
        int t = sp->pgroup_first[p];
        double bytes = (double)tensor_numel(&g->tensors[t]) * dtype_bytes(g->tensors[t].dtype);
        for (int k = 0; k < sp->nsync; k++) {
            const SyncChoice *c = &sp->sync[k];
            double *x = &R->sync_x[NF * (p * SPACE_MAX_SYNC + k)];
            x[F_SYNC] = 1;
            x[F_ALLREDUCE] = c->method == SYNC_ALLREDUCE;
            x[F_PS] = c->method == SYNC_PS;
            x[F_SFB] = c->method == SYNC_SFB;
            x[F_SHARD] = c->shard / 3.0;
            x[F_COMPRESS] = c->compress != COMPRESS_NONE;
            x[F_TREE] = c->algo == ALGO_TREE;
            x[F_HIER] = c->algo == ALGO_HIERARCHICAL;
            x[F_LOGBYTES] = log10(fmax(bytes, 1)) / 10;
            x[F_EMBED] = graph_read_by(g, t, OP_EMBEDDING);
            /* how many servers: 4 by default (0.5), else log2(S + 1) / 8 */
            x[F_PS_SHARDS] = c->method != SYNC_PS ? 0
                           : c->ps_shards == 0 ? 0.5 : log2(c->ps_shards + 1) / 8;
            /* servers placed on one device group: its peak against the best group's */
            x[F_PS_PEAK] = c->ps_group < 0 ? 0 : group_peak(R->C->c, c->ps_group);
        }
    }
    double total = 0;
    for (int t = 0; t < g->ntensors; t++)
        if (g->tensors[t].role == ROLE_PARAM)
            total += (double)tensor_numel(&g->tensors[t]) * dtype_bytes(g->tensors[t].dtype);
    R->all_bytes = log10(fmax(total, 1)) / 10;
    R->kind_x = xcalloc((size_t)(sp->nkinds ? sp->nkinds : 1) * NF, sizeof *R->kind_x);
    for (int i = 0; i < g->nops && stats; i++) {
        int k = sp->op_kind[i];
        if (k >= 0 && R->kind_x[NF * k + F_KIND_ACT] == 0)
            R->kind_x[NF * k + F_KIND_ACT] = log10(fmax(st.block_act_bytes[g->ops[i].block], 1)) / 10;
    }
    for (int k = 0; k < sp->nkinds; k++) {
        R->kind_x[NF * k + F_RECOMPUTE] = 1;
        R->kind_x[NF * k + F_ON] = 1;
        R->kind_x[NF * k + F_PRESSURE] = stats ? log10(fmax(st.param_bytes * 4 / devmem, 1e-6)) / 3 : 0;
    }
    if (stats) graph_stats_free(&st);
}

/* The index of v in a[0..n), 0 when absent. */
static int index_of(const int *a, int n, int v)
{
    for (int k = 0; k < n; k++)
        if (a[k] == v) return k;
    return 0;
}

/* One episode: every decision sampled into x, or (f not NULL) the
 * decisions of candidate f taken, to imitate it. */
static void rl_episode(Rl *R, Episode *e, Cand *x, const Cand *f)
{
    const Space *sp = R->C->sp;
    int node = R->C->c->nlevels ? R->C->c->levels[0].count : sp->world;
    e->nd = e->nx = 0;
    /* the mesh */
    Decision *d = ep_decision(e);
    for (int m = 0; m < sp->nmesh && d->nopt < RL_MAX_OPTS; m++, d->nopt++) {
        double *r = ep_row(e);
        r[F_MESH] = 1;
        r[F_LOGP] = lg2(sp->mesh[m][0]) / 8;
        r[F_LOGD] = lg2(sp->mesh[m][1]) / 8;
        r[F_LOGT] = lg2(sp->mesh[m][2]) / 8;
        r[F_CROSS_NODE] = sp->mesh[m][2] > node;
        r[F_DEPTH] = sp->g->nblocks ? (double)sp->mesh[m][0] / sp->g->nblocks : 0;
        r[sp->mesh[m][4] == INNER_SEQUENCE ? F_LOGQ : F_LOGE] = lg2(sp->mesh[m][3]) / 8;
    }
    int m = rl_choose(R, e, d, f ? f->mesh : -1);
    cand_set_mesh(x, sp, m);
    int P = sp->mesh[m][0], D = sp->mesh[m][1], T = sp->mesh[m][2];
    /* micro-batches */
    int ms[RL_MAX_MICRO], nm = space_micro_options(sp, space_batch_ranks(sp, m), ms, RL_MAX_MICRO);
    d = ep_decision(e);
    for (int k = 0; k < nm; k++, d->nopt++) {
        double *r = ep_row(e);
        r[F_MICRO] = 1;
        r[F_LOGM] = lg2(ms[k]) / 10;
        r[F_LOGMBS] = lg2((double)sp->batch / D / ms[k]) / 10;
        r[F_M_PER_P] = log2((double)ms[k] / P) / 10;
    }
    x->micro = ms[rl_choose(R, e, d, f ? index_of(ms, nm, f->micro) : -1)];
    x->sched = SCHED_1F1B;
    if (P > 1) {
        d = ep_decision(e);
        for (int k = 0; k < 2; k++, d->nopt++) {
            double *r = ep_row(e);
            r[F_SCHED] = 1;
            r[F_GPIPE] = k;
        }
        x->sched = rl_choose(R, e, d, f ? f->sched == SCHED_GPIPE : -1) ? SCHED_GPIPE : SCHED_1F1B;
    }
    for (int k = 0; k < sp->nkinds; k++) {
        d = ep_decision(e);
        for (int on = 0; on < 2; on++, d->nopt++) {
            double *r = ep_row(e);
            memcpy(r, &R->kind_x[NF * k], sizeof *r * NF);
            r[F_ON] = on;
        }
        x->recompute[k] = (uint8_t)rl_choose(R, e, d, f ? f->recompute[k] != 0 : -1);
    }
    /* splits: Megatron-LM's for all, or one decision a group (none for all
     * is no plan: the tensor axis would split nothing) */
    memset(x->split, 0, sp->ngroups);
    bool per_group = false;
    if (T > 1 && sp->ngroups) {
        int want = -1;
        if (f) {
            bool none = true, meg = true;
            for (int q = 0; q < sp->ngroups; q++) {
                none &= f->split[q] == 0;
                meg &= f->split[q] == (split_ok(sp, q, sp->group_megatron[q], T)
                                       ? sp->group_megatron[q] : 0);
            }
            want = none ? -1 : meg ? 0 : 1;
        }
        d = ep_decision(e);
        for (int k = 1; k < 3; k++, d->nopt++) {
            double *r = ep_row(e);
            r[F_SPLIT] = 1;
            r[F_GLOBAL] = k < 2;
            r[F_PER_GROUP] = k == 2;
            r[F_NONE] = k == 0;
            r[F_MATMUL] = k == 1;
        }
        int k = 1 + rl_choose(R, e, d, want);
        per_group = k == 2;
        for (int q = 0; q < sp->ngroups && k == 1; q++)
            x->split[q] = (uint8_t)(split_ok(sp, q, sp->group_megatron[q], T)
                                    ? sp->group_megatron[q] : 0);
    }
    for (int q = 0; q < sp->ngroups && T > 1 && per_group; q++) {
        int opts[8], n = 0;
        for (int k = 0; k < sp->group_nopt[q]; k++)
            if (split_ok(sp, q, k, T)) opts[n++] = k;
        if (n < 2) continue;
        d = ep_decision(e);
        for (int k = 0; k < n; k++, d->nopt++)
            memcpy(ep_row(e), &R->split_x[NF * (q * 8 + opts[k])], sizeof(double) * NF);
        x->split[q] = (uint8_t)opts[rl_choose(R, e, d, f ? index_of(opts, n, f->split[q]) : -1)];
    }
    /* syncs: one choice for every group (where it applies), or one a group */
    memset(x->sync, 0, sp->npgroups);
    per_group = false;
    if (D > 1 && sp->npgroups) {
        int want = -1;
        if (f) {
            want = sp->nsync;
            for (int k = 0; k < sp->nsync && want == sp->nsync; k++) {
                bool all = true;
                for (int p = 0; p < sp->npgroups; p++)
                    all &= f->sync[p] == (sp->pgroup_syncs[p] >> k & 1u ? k : 0);
                if (all) want = k;
            }
        }
        d = ep_decision(e);
        for (int k = 0; k <= sp->nsync; k++, d->nopt++) {
            double *r = ep_row(e);
            if (k < sp->nsync) memcpy(r, &R->sync_x[NF * k], sizeof *r * NF);
            r[F_SYNC] = 1;
            r[F_EMBED] = 0;
            r[F_LOGBYTES] = R->all_bytes;
            r[F_GLOBAL] = k < sp->nsync;
            r[F_PER_GROUP] = k == sp->nsync;
        }
        int k = rl_choose(R, e, d, want);
        per_group = k == sp->nsync;
        if (!per_group) cand_sync_all(x, sp, k);
    }
    for (int p = 0; p < sp->npgroups && D > 1 && per_group; p++) {
        int opts[16], n = 0;
        for (int k = 0; k < sp->nsync; k++)
            if (sp->pgroup_syncs[p] >> k & 1u) opts[n++] = k;
        if (n < 2) continue;
        d = ep_decision(e);
        for (int k = 0; k < n; k++, d->nopt++)
            memcpy(ep_row(e), &R->sync_x[NF * (p * SPACE_MAX_SYNC + opts[k])], sizeof(double) * NF);
        x->sync[p] = (uint8_t)opts[rl_choose(R, e, d, f ? index_of(opts, n, f->sync[p]) : -1)];
    }
}

/* Accumulates the gradient of -A log pi(episode) - beta H into R->w. */
static void rl_backward(Rl *R, const Episode *e, double A)
{
    double l[RL_MAX_OPTS], p[RL_MAX_OPTS];
    for (int i = 0; i < e->nd; i++) {
        const Decision *d = &e->d[i];
        double mx = -INFINITY, z = 0, H = 0;
        for (int k = 0; k < d->nopt; k++) {
            mlp_predict(R->pol, &e->x[NF * (d->first + k)], &l[k]);
            mx = fmax(mx, l[k]);
        }
        for (int k = 0; k < d->nopt; k++) z += p[k] = exp(l[k] - mx);
        for (int k = 0; k < d->nopt; k++) {
            p[k] /= z;
            if (p[k] > 0) H -= p[k] * log(p[k]);
        }
        for (int k = 0; k < d->nopt; k++) {
            double y, lp = p[k] > 0 ? log(p[k]) : -745;
            double g = -A * ((k == d->chosen) - p[k]) + R->beta * p[k] * (lp + H);
            mlp_forward(R->pol, R->w, &e->x[NF * (d->first + k)], &y);
            mlp_backward(R->pol, R->w, &g);
        }
    }
}

static double rl_reward(const Rl *R, double e)
{
    if (isnan(e)) return -4;                            /* does not validate */
    if (e >= INFEASIBLE_E) return -2 - (e - INFEASIBLE_E);  /* does not fit: by how much */
    return -(e - R->ref);
}

/* Self-imitation (Oh et al., 2018): the best episodes so far are replayed
 * with the part of their advantage that is positive, so what the policy
 * has found it keeps finding; the best baseline seeds them. */
#define RL_ELITE 4

typedef struct {
    Episode e;
    uint64_t key;
    bool used;
} Elite;

static void elite_offer(Elite *el, const Episode *e, uint64_t key)
{
    int worst = 0;
    for (int k = 0; k < RL_ELITE; k++) {
        if (el[k].used && el[k].key == key) return;
        if (!el[k].used) {
            worst = k;
            break;
        }
        if (el[k].e.reward < el[worst].e.reward) worst = k;
    }
    Elite *w = &el[worst];
    if (w->used && w->e.reward >= e->reward) return;
    w->used = true;
    w->key = key;
    w->e.reward = e->reward;
    w->e.nd = e->nd;
    w->e.nx = e->nx;
    if (w->e.capd < e->nd) {
        w->e.capd = e->nd;
        w->e.d = xrealloc(w->e.d, sizeof *w->e.d * w->e.capd);
    }
    if (w->e.capx < e->nx) {
        w->e.capx = e->nx;
        w->e.x = xrealloc(w->e.x, sizeof *w->e.x * NF * w->e.capx);
    }
    memcpy(w->e.d, e->d, sizeof *e->d * e->nd);
    memcpy(w->e.x, e->x, sizeof *e->x * NF * e->nx);
}

Mlp *search_policy_new(uint64_t seed, Err *err)
{
    const int hidden[] = { 64, 64 };
    return mlp_new(NF, hidden, 2, 1, MLP_TANH, seed ^ 0x5eed, err);
}

int search_policy_check(const Mlp *m, Err *err)
{
    if (mlp_nin(m) != NF || mlp_nout(m) != 1)
        return err_set(err, "the policy takes %d features to %d outputs; this strata's takes %d "
                            "to 1 (it was trained by another version)", mlp_nin(m), mlp_nout(m), NF);
    return 0;
}

static void run_rl(Ctx *C, const Cand *start, Mlp *policy)
{
    Rl R = { .C = C, .beta = 0.01 };
    Err err = { { 0 } };
    R.pol = policy ? policy : search_policy_new(C->o->seed, &err);
    R.w = mlp_work_new(R.pol);
    rl_tables(&R);
    R.ref = isfinite(C->best.step) ? log(C->best.step) : 0;
    Episode ep[RL_BATCH] = { { 0 } };
    Elite el[RL_ELITE];
    memset(el, 0, sizeof el);
    Cand x;
    cand_init(&x, C->sp);
    if (start) {
        double step;
        rl_episode(&R, &ep[0], &x, start);
        ep[0].reward = rl_reward(&R, judge(C, &x, 0, &step));
        elite_offer(el, &ep[0], cand_hash(&x, C->sp));
    }
    MlpAdam adam = { .lr = 3e-3 };
    while (!done(C)) {
        int n = 0;
        for (; n < RL_BATCH && !done(C); n++) {
            rl_episode(&R, &ep[n], &x, NULL);
            double step, e = judge(C, &x, 0, &step);
            ep[n].reward = rl_reward(&R, e);
            elite_offer(el, &ep[n], cand_hash(&x, C->sp));
            if (isfinite(step)) C->current = step;
            if (!R.have_base) {
                R.base = ep[n].reward;
                R.var = 1;
                R.have_base = true;
            }
        }
        /* advantages against the moving baseline, scaled by its spread */
        double sd = sqrt(R.var + 1e-6);
        for (int k = 0; k < n; k++) {
            double A = (ep[k].reward - R.base) / sd;
            if (A > 0) C->accepted++;
            rl_backward(&R, &ep[k], A);
        }
        for (int k = 0; k < RL_ELITE; k++)
            if (el[k].used && el[k].e.reward > R.base)
                rl_backward(&R, &el[k].e, (el[k].e.reward - R.base) / sd);
        for (int k = 0; k < n; k++) {
            double dv = ep[k].reward - R.base;
            R.base += 0.05 * dv;
            R.var = 0.95 * R.var + 0.05 * dv * dv;
        }
        if (n) mlp_adam_step(R.pol, R.w, &adam, 1.0 / n);
    }
    for (int k = 0; k < RL_BATCH; k++) {
        free(ep[k].d);
        free(ep[k].x);
    }
    for (int k = 0; k < RL_ELITE; k++) {
        free(el[k].e.d);
        free(el[k].e.x);
    }
    cand_free(&x);
    free(R.split_x);
    free(R.sync_x);
    free(R.kind_x);
    mlp_work_free(R.w);
    if (R.pol != policy) mlp_free(R.pol);
}

/* ----------------------------------------------------------------------------
 * Chains on threads: each runs its own MCMC chain or RL policy from the same
 * start with a seed of its own, or its stripe of the coarse space
 * (exhaustive), and its share of an evaluation budget (the whole of a time
 * budget), then their bests and top plans are merged. */

typedef struct {
    Ctx C;
    SearchOpts o;
    SearchResult r;
    SearchAlgo algo;
    const Cand *start;
    Mlp *policy;
} Chain;

static void *chain_main(void *arg)
{
    Chain *k = arg;
    if (k->algo == SEARCH_RL) run_rl(&k->C, k->start, k->policy);
    else if (k->algo == SEARCH_EXHAUSTIVE) run_exhaustive(&k->C);
    else run_mcmc(&k->C, k->start);
    return NULL;
}

static void run_chains(Ctx *C, SearchAlgo algo, const Cand *start, int n)
{
    Shared sh = { .best = C->best.step, .proposals = C->proposals, .evals = C->r->evals,
                  .invalid = C->r->invalid, .infeasible = C->r->infeasible,
                  .bounded = C->r->bounded };
    pthread_mutex_init(&sh.mu, NULL);
    Chain *ch = xcalloc(n, sizeof *ch);
    pthread_t *th = xcalloc(n, sizeof *th);
    bool *started = xcalloc(n, sizeof *started);
    /* the chains read the start while the merge below writes C->best: a copy */
    Cand from;
    cand_init(&from, C->sp);
    if (start) cand_copy(&from, start, C->sp);
    for (int k = 0; k < n; k++) {
        Chain *q = &ch[k];
        q->o = *C->o;
        if (q->o.budget_evals > 0) {
            long left = q->o.budget_evals > C->proposals ? q->o.budget_evals - C->proposals : 1;
            q->o.budget_evals = left / n + (k < left % n);
            if (q->o.budget_evals < 1) q->o.budget_evals = 1;
        }
        q->algo = algo;
        q->r.space_size = C->r->space_size;
        q->start = start ? &from : NULL;
        q->policy = k == 0 ? C->o->policy : NULL;
        q->C = (Ctx){ .g = C->g, .c = C->c, .sp = C->sp, .o = &q->o, .r = &q->r, .sh = &sh,
                      .chain = k, .nchains = algo == SEARCH_EXHAUSTIVE ? n : 0, .t0 = C->t0,
                      .rng = C->o->seed + 0x9e3779b97f4a7c15ULL * (uint64_t)k,
                      .current = INFINITY };
        cand_init(&q->C.best.x, C->sp);
        q->C.best.step = INFINITY;
        started[k] = pthread_create(&th[k], NULL, chain_main, q) == 0;
        if (!started[k]) chain_main(q);     /* no thread to be had: run it here */
    }
    for (int k = 0; k < n; k++) {
        if (started[k]) pthread_join(th[k], NULL);
        Chain *q = &ch[k];
        C->proposals += q->C.proposals;
        C->accepted += q->C.accepted;
        C->r->evals += q->r.evals;
        C->r->invalid += q->r.invalid;
        C->r->infeasible += q->r.infeasible;
        C->r->bounded += q->r.bounded;
        C->r->cache_hits += q->r.cache_hits;
        /* a chain that ran out of work says nothing: the search's own word
         * (exhausted) stands */
        if (q->r.ended[0] && (k == 0 || !strcmp(q->r.ended, "stopped")))
            snprintf(C->r->ended, sizeof C->r->ended, "%s", q->r.ended);
        if (q->C.best.step < C->best.step) {
            cand_copy(&C->best.x, &q->C.best.x, C->sp);
            C->best.key = q->C.best.key;
            C->best.step = q->C.best.step;
            C->best.mem = q->C.best.mem;
        }
        for (int t = 0; t < q->C.ntop; t++) {
            keep_top(C, &q->C.top[t].x, q->C.top[t].key, q->C.top[t].step, q->C.top[t].mem);
            cand_free(&q->C.top[t].x);
        }
        if (q->C.least_over > 0 && (!(C->least_over > 0) || q->C.least_over < C->least_over)) {
            C->least_over = q->C.least_over;
            memcpy(C->least_desc, q->C.least_desc, sizeof C->least_desc);
        }
        cand_free(&q->C.best.x);
        free(q->C.cache);
    }
    pthread_mutex_destroy(&sh.mu);
    cand_free(&from);
    free(started);
    free(th);
    free(ch);
}

/* ----------------------------------------------------------------------------
 * Entry points */

/* The space of the options, or an error naming what is wrong with them. */
static int check_opts(const Graph *g, const Cluster *c, const SearchOpts *o, Space *sp, Err *err)
{
    if (!c) return err_set(err, "search: a cluster is needed");
    if (o->budget_s < 0 || o->budget_evals < 0)
        return err_set(err, "search: the budget must be positive");
    if (o->algo < SEARCH_AUTO || o->algo > SEARCH_BASELINES)
        return err_set(err, "search: unknown algorithm %d", (int)o->algo);
    if (space_init(sp, g, c, o->world, o->lossy, o->untie, err)) return -1;
    int64_t limit = o->exhaustive_limit > 0 ? o->exhaustive_limit : 200000, n = space_coarse_size(sp);
    if (o->algo == SEARCH_EXHAUSTIVE && n > limit) {
        err_set(err, "search: the coarse space of %s on %d devices has %lld plans, more than "
                     "exhaustive search takes (%lld); use --algo mcmc or auto", g->name,
                sp->world, (long long)n, (long long)limit);
        space_free(sp);
        return -1;
    }
    return 0;
}

int search_check(const Graph *g, const Cluster *c, const SearchOpts *o, Err *err)
{
    Space sp;
    if (check_opts(g, c, o, &sp, err)) return -1;
    space_free(&sp);
    return 0;
}

int search_run(const Graph *g, const Cluster *c, const SearchOpts *o, SearchResult *r, Err *err)
{
    memset(r, 0, sizeof *r);
    Space sp;
    if (check_opts(g, c, o, &sp, err)) return -1;
    Ctx C = { .g = g, .c = c, .sp = &sp, .o = o, .r = r, .t0 = now_s(), .rng = o->seed,
              .least_over = 0 };
    cand_init(&C.best.x, &sp);
    C.best.step = INFINITY;
    C.current = INFINITY;
    r->space_size = space_coarse_size(&sp);
    int64_t limit = o->exhaustive_limit > 0 ? o->exhaustive_limit : 200000;
    SearchAlgo algo = o->algo;
    snprintf(r->ended, sizeof r->ended, "exhausted");

    cJSON *ev = event_new(&C, "start");
    cJSON_AddStringToObject(ev, "algo", search_algo_name(algo));
    cJSON_AddNumberToObject(ev, "devices", sp.world);
    cJSON_AddNumberToObject(ev, "meshes", sp.nmesh);
    cJSON_AddNumberToObject(ev, "op_groups", sp.ngroups);
    cJSON_AddNumberToObject(ev, "block_kinds", sp.nkinds);
    cJSON_AddNumberToObject(ev, "param_groups", sp.npgroups);
    cJSON_AddNumberToObject(ev, "sync_choices", sp.nsync);
    cJSON_AddNumberToObject(ev, "coarse_space", (double)r->space_size);
    emit(&C, ev);

    Cand start;
    cand_init(&start, &sp);
    bool have = run_baselines(&C, &start);
    if (o->resume) {
        /* an earlier search's best: judged again here, the start when it wins */
        Cand x;
        cand_init(&x, &sp);
        Err perr = {0};
        double step = INFINITY;
        if (cand_from_json(o->resume, &sp, &x, &perr) == 0) judge(&C, &x, 0, &step);
        ev = event_new(&C, "resume");
        if (isfinite(step)) cJSON_AddNumberToObject(ev, "step_s", step);
        else cJSON_AddStringToObject(ev, "why", perr.msg[0] ? perr.msg : "it no longer fits");
        emit(&C, ev);
        if (isfinite(step) && step <= C.best.step) {
            cand_copy(&start, &x, &sp);
            have = true;
        }
        cand_free(&x);
    }
    if (algo == SEARCH_AUTO) {
        /* exhaustive when the coarse space fits in half of what is left of
         * the budget, at the rate the baselines were judged; else MCMC */
        double per = C.proposals ? elapsed(&C) / C.proposals : 0;
        bool small = r->space_size <= limit &&
                     (o->budget_evals <= 0 || 2 * r->space_size <= o->budget_evals - C.proposals) &&
                     (o->budget_s <= 0 || 2 * r->space_size * per <= o->budget_s - elapsed(&C));
        algo = small ? SEARCH_EXHAUSTIVE : SEARCH_MCMC;
        ev = event_new(&C, "algo");
        cJSON_AddStringToObject(ev, "algo", search_algo_name(algo));
        cJSON_AddStringToObject(ev, "why", small ? "the coarse space fits the budget"
                                : r->space_size > limit ? "the coarse space is above the limit"
                                : "the coarse space does not fit the budget");
        emit(&C, ev);
    }
    snprintf(r->algo, sizeof r->algo, "%s", search_algo_name(algo));
    if (!done(&C)) {
        if (algo == SEARCH_EXHAUSTIVE) {
            if (o->threads > 1) run_chains(&C, SEARCH_EXHAUSTIVE, NULL, o->threads);
            else run_exhaustive(&C);
            /* what budget is left refines the best in the whole space */
            if (o->algo == SEARCH_AUTO && !done(&C) && isfinite(C.best.step) &&
                (o->budget_s > 0 || o->budget_evals > 0)) {
                if (o->threads > 1) run_chains(&C, SEARCH_MCMC, &C.best.x, o->threads);
                else run_mcmc(&C, &C.best.x);
            }
        } else if ((algo == SEARCH_MCMC || algo == SEARCH_RL) && o->threads > 1) {
            run_chains(&C, algo, have ? &start : algo == SEARCH_MCMC ? &C.best.x : NULL, o->threads);
        } else if (algo == SEARCH_MCMC) {
            run_mcmc(&C, have ? &start : &C.best.x);
        } else if (algo == SEARCH_RL) {
            run_rl(&C, have ? &start : NULL, o->policy);
        }
    }
    progress(&C, true);

    /* the result: best with its full prediction, the distinct top plans */
    if (isfinite(C.best.step)) {
        entry_of(&C, &C.best.x, C.best.step, C.best.mem, &r->best);
        Plan *p = r->best.s ? ir_lower_compact(g, c, r->best.s, err) : NULL;
        SimOpts so = { .ops = o->ops, .links = o->links };
        if (!p || cost_simulate(g, c, r->best.s, p, &so, &r->best_sim, err)) {
            plan_free(p);
            for (int k = 0; k < C.ntop; k++) cand_free(&C.top[k].x);
            cand_free(&start);
            cand_free(&C.best.x);
            free(C.cache);
            space_free(&sp);
            search_result_free(r);
            return err_prefix(err, "search: the best plan no longer lowers");
        }
        plan_free(p);
    } else {
        snprintf(r->smallest, sizeof r->smallest, "%s", C.least_desc[0] ? C.least_desc
                 : "no candidate validated");
    }
    r->model_error = o->model_error > 0 ? o->model_error : 0.10;
    for (int k = 0; k < C.ntop; k++) {
        SearchEntry *e = &r->top[r->ntop++];
        entry_of(&C, &C.top[k].x, C.top[k].step, C.top[k].mem, e);
        e->within_error = k > 0 && C.top[k].step <= C.best.step * (1 + r->model_error);
        cand_free(&C.top[k].x);
    }
    r->elapsed_s = elapsed(&C);
    ev = event_new(&C, "end");
    cJSON_AddStringToObject(ev, "ended", r->ended);
    if (r->best.s) cJSON_AddItemToObject(ev, "best", plan_brief(&C, &C.best));
    emit(&C, ev);
    cand_free(&start);
    cand_free(&C.best.x);
    free(C.cache);
    space_free(&sp);
    return 0;
}

static void entry_free(SearchEntry *e)
{
    strategy_free(e->s);
    e->s = NULL;
}

void search_result_free(SearchResult *r)
{
    if (!r) return;
    entry_free(&r->best);
    sim_result_free(&r->best_sim);
    for (int k = 0; k < r->ntop; k++) entry_free(&r->top[k]);
    for (int k = 0; k < r->nbaselines; k++) entry_free(&r->baselines[k]);
    free(r->baselines);
    memset(r, 0, sizeof *r);
}

static cJSON *entry_json(const SearchEntry *e, double best)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", e->name);
    if (e->s) cJSON_AddStringToObject(o, "strategy_id", e->s->id);
    if (isfinite(e->step_s)) {
        cJSON_AddNumberToObject(o, "step_s", e->step_s);
        if (isfinite(best)) cJSON_AddNumberToObject(o, "best_speedup", e->step_s / best);
    } else {
        cJSON_AddNullToObject(o, "step_s");
    }
    cJSON_AddNumberToObject(o, "peak_mem_bytes", e->peak_mem);
    cJSON_AddBoolToObject(o, "feasible", e->feasible);
    if (e->within_error) cJSON_AddBoolToObject(o, "within_model_error", true);
    if (e->why[0]) cJSON_AddStringToObject(o, "why", e->why);
    return o;
}

cJSON *search_result_json(const SearchResult *r)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "algo", r->algo);
    cJSON_AddStringToObject(j, "ended", r->ended);
    double best = r->best.s ? r->best.step_s : INFINITY;
    if (r->best.s) {
        cJSON_AddNumberToObject(j, "step_time_s", r->best.step_s);
        cJSON_AddItemToObject(j, "best", entry_json(&r->best, best));
    } else {
        cJSON_AddNullToObject(j, "step_time_s");
        cJSON_AddStringToObject(j, "no_plan", r->smallest);
    }
    cJSON_AddNumberToObject(j, "evaluations_simulated", (double)r->evals);
    cJSON_AddNumberToObject(j, "invalid", (double)r->invalid);
    cJSON_AddNumberToObject(j, "infeasible", (double)r->infeasible);
    cJSON_AddNumberToObject(j, "bounded", (double)r->bounded);
    cJSON_AddNumberToObject(j, "cache_hits", (double)r->cache_hits);
    cJSON_AddNumberToObject(j, "elapsed_s", r->elapsed_s);
    cJSON_AddNumberToObject(j, "coarse_space", (double)r->space_size);
    cJSON_AddNumberToObject(j, "model_error", r->model_error);
    cJSON *t = cJSON_AddArrayToObject(j, "top");
    for (int k = 0; k < r->ntop; k++) cJSON_AddItemToArray(t, entry_json(&r->top[k], best));
    cJSON *b = cJSON_AddArrayToObject(j, "baselines");
    for (int k = 0; k < r->nbaselines; k++)
        cJSON_AddItemToArray(b, entry_json(&r->baselines[k], best));
    return j;
}
