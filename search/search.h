/*
 * search.h — finding the plan that trains fastest and fits.
 *
 * The space is the strategy representation itself, read through the model's
 * structure so that a decision is made once for what is the same:
 *   mesh       pp x dp x tp over the devices (tp innermost, so it lands on the
 *              fastest links first; not forced there); and an inner data
 *              axis of X of the D data ranks over which some ops split
 *              another letter instead of the batch (the others still split
 *              the batch over all D):
 *                experts   dp_ep, for a model with experts (a route op):
 *                          the expert ops split the experts (expert
 *                          parallelism as DeepSpeed-MoE, Switch Transformer
 *                          and Megatron-LM run it; tokens reach their
 *                          experts by all-to-all)
 *                sequence  dp_cp, for a model with self-attention: every op
 *                          holding the sequence letter splits it (context
 *                          parallelism: attention gathers the keys and values
 *                          of the other positions, Megatron-LM's
 *                          --context-parallel-size)
 *   pipeline   micro-batches M, schedule (1F1B or GPipe), P-1 cuts on block
 *              boundaries (balanced first, then moved one block at a time)
 *   splits     per op group, the one letter split over tp (or none): an op
 *              group is one position in a block kind (blocks whose ops have
 *              the same kinds, specs and sizes), so the 96 layers of GPT-3
 *              share one decision; an op outside blocks is a group alone
 *   recompute  per block kind
 *   sync       per param group (the params an op group reads at one input):
 *              all-reduce (ring, tree, hierarchical), ZeRO-1/2/3, a parameter
 *              server, SFB where it fits; compression and staleness only when
 *              lossy changes are allowed
 * The batch letter is always split over dp and the global batch kept, so a
 * plan trains the same model as one device does unless the user allows
 * lossy changes (and a model with batch norm keeps one micro-batch, whose
 * statistics a split would change).
 *
 * Every candidate is judged by the cost model's prediction of its lowered
 * program (ir_lower_compact + cost_simulate). Candidates that do not
 * validate (a size the split does not divide) are counted as invalid, those
 * that do not fit their devices' memory as infeasible (the lowering's peak,
 * checked before anything is simulated); neither is ever returned.
 *
 * Legend: W = devices, P/D/T = pipeline/data/tensor degree, X = inner data
 * degree (a factor of D), M = micro-batches, B = global batch.
 */
#ifndef STRATA_SEARCH_H
#define STRATA_SEARCH_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "costmodel/costmodel.h"
#include "ir/cluster.h"
#include "ir/err.h"
#include "ir/graph.h"
#include "ir/strategy.h"

/* ----------------------------------------------------------------------------
 * The space */

/* What the inner data axis of a mesh splits instead of the batch. */
typedef enum { INNER_NONE, INNER_EXPERTS, INNER_SEQUENCE, INNER_KINDS } InnerKind;

/* A sync choice of a param group. */
typedef struct {
    SyncMethod method;
    SyncAlgo algo;
    Shard shard;
    Compress compress;              /* lossy */
    int powersgd_rank;
    int staleness;                  /* lossy (PS) */
    int ps_shards;                  /* PS servers: 0 = min(D, 4), else min(this, D) */
    int ps_group;                   /* -1: the servers spread over the data group; g: on its
                                       ranks of the cluster's device group g (as many as
                                       it has there) */
    char name[24];                  /* "ring", "zero3", "ps", "ps:1", "sfb", "fp16", ... */
} SyncChoice;

#define SPACE_MAX_SYNC 24
#define SPACE_MAX_MESHES 1024
#define SPACE_MAX_MICRO_OPTS 256   /* the smallest micro-batch counts a mesh offers */

typedef struct {
    const Graph *g;
    const Cluster *c;
    int world;
    int64_t batch;                  /* B: the batch letter's size */
    bool lossy;
    bool batchnorm;                 /* the model normalises over batches: one micro-batch
                                       (its statistics would change), unless lossy */
    /* meshes: P, D, T, X, kind with P D T = W and X dividing D: the inner
     * data axis of that kind (X = 1: none) */
    int nmesh;
    int (*mesh)[5];
    /* micro-batch counts (space_micro_options), per distinct count of
     * batch ranks among the meshes: micro_d[k] ranks, micro_n[k] counts in
     * micro_opt[k] */
    int nmicro_d;
    int *micro_d, *micro_n;
    int (*micro_opt)[SPACE_MAX_MICRO_OPTS];
    int inner_letter[INNER_KINDS];  /* the letter each kind splits, -1: the model has none */
    bool *op_inner[INNER_KINDS];    /* per op: it splits that letter over the inner axis */
    bool inner_all[INNER_KINDS];    /* every op with a batch splits it: none splits the batch
                                       over the inner axis */
    /* op groups */
    int ngroups;
    int *op_group;                  /* per op */
    int *group_nopt;                /* per group: options, 0 = no split */
    char (*group_letter)[8];        /* per group: letter of option k >= 1 ('a'..) */
    int *group_megatron;            /* per group: the option Megatron-LM takes */
    int *group_first;               /* per group: its first op */
    /* block kinds */
    int nkinds;
    int *op_kind;                   /* per op, -1 outside blocks */
    /* param groups */
    int npgroups;
    int *param_group;               /* per tensor, -1 for what is not a param */
    int *param_reader;              /* per tensor: the first op that reads it, -1: none */
    int *pgroup_first;              /* per param group: its first param */
    int nsync;
    SyncChoice sync[SPACE_MAX_SYNC];
    uint32_t *pgroup_syncs;         /* per param group: bit k: sync[k] applies */
} Space;

/* Builds the space of g on W devices of c (W = 0: all of c); untie: one
 * group per op and per param (no tying by block kind). Fails when the model
 * has no batch letter to split or W does not fit the cluster. Caller frees
 * with space_free. */
int space_init(Space *sp, const Graph *g, const Cluster *c, int world, bool lossy, bool untie,
               Err *err);
void space_free(Space *sp);

/* One point of the space. */
typedef struct {
    int mesh;                       /* index into Space.mesh */
    int micro;                      /* M */
    Schedule sched;
    int ncuts;                      /* P - 1 */
    int *cuts;
    uint8_t *split;                 /* per op group: option */
    uint8_t *recompute;             /* per block kind */
    uint8_t *sync;                  /* per param group: index into Space.sync */
} Cand;

void cand_init(Cand *x, const Space *sp);           /* dp over all, defaults */
void cand_copy(Cand *dst, const Cand *src, const Space *sp);
void cand_free(Cand *x);
/* A point as JSON (indices into the space, as events carry the best), and
 * back: a point of another space is refused with the member that does not
 * fit. x must be cand_init'ed for sp. */
cJSON *cand_to_json(const Cand *x, const Space *sp);
int cand_from_json(const cJSON *j, const Space *sp, Cand *x, Err *err);
uint64_t cand_hash(const Cand *x, const Space *sp);
/* Every param group to sync choice k where the group takes it, to the
 * first choice (ring) elsewhere: the coarse space's one sync decision. */
void cand_sync_all(Cand *x, const Space *sp, int k);
/* Sets the mesh and, to match it, balanced cuts and the micro-batch count
 * nearest to the old one that divides the batch. */
void cand_set_mesh(Cand *x, const Space *sp, int mesh);
/* The strategy of a candidate (not canonicalised), or NULL with err when it
 * does not validate. Caller frees. */
Strategy *cand_strategy(const Cand *x, const Space *sp, Err *err);
/* "pp16 dp8 tp8, 1f1b m192, recompute" into buf. */
const char *cand_describe(const Cand *x, const Space *sp, char *buf, int n);

/* Micro-batch counts valid for D data ranks (those of a mesh of the space):
 * M divides B and D divides B/M, M at most STRATEGY_MAX_MICRO. Fills out
 * (the smallest, at most max and SPACE_MAX_MICRO_OPTS) in increasing order;
 * returns how many. */
int space_micro_options(const Space *sp, int D, int *out, int max);
/* The data ranks of mesh m the batch is split over: D, or D over the inner
 * axis when every op splits that axis's letter instead. */
static inline int space_batch_ranks(const Space *sp, int m)
{
    return sp->inner_all[sp->mesh[m][4]] ? sp->mesh[m][1] / sp->mesh[m][3] : sp->mesh[m][1];
}

/* The coarse (tied) space that exhaustive search enumerates: every mesh,
 * valid M, schedule, balanced cuts, one split pattern for all groups (none
 * or Megatron-LM's), recompute on or off for every block kind, one sync
 * choice for every param group (where it applies; else ring). The k-th
 * point (0 <= k < space_coarse_size) into x. */
int64_t space_coarse_size(const Space *sp);
void space_coarse_point(const Space *sp, int64_t k, Cand *x);

/* A lower bound of what the fullest pipeline stage of s holds all step
 * (params, gradients, optimizer state), over the largest device memory of
 * the cluster: above 1, the candidate cannot fit and need not be lowered.
 * Sound for this space's candidates (a param is split over tp, and an
 * expert param over dp_ep, at most). */
double space_static_overflow(const Space *sp, const Strategy *s);

/* ----------------------------------------------------------------------------
 * Searching */

typedef enum { SEARCH_AUTO, SEARCH_EXHAUSTIVE, SEARCH_MCMC, SEARCH_RL, SEARCH_BASELINES } SearchAlgo;
const char *search_algo_name(SearchAlgo a);
int search_algo_parse(const char *s, SearchAlgo *a);    /* -1: unknown */

/* The most threads (chains) a search is given, from either front-end. */
#define SEARCH_THREADS_MAX 256

typedef struct {
    SearchAlgo algo;
    int world;                      /* devices to plan for; 0: the cluster's */
    double budget_s;                /* wall clock; 0: none */
    long budget_evals;              /* candidates simulated; 0: none */
    uint64_t seed;
    int threads;                    /* mcmc, rl: one chain a thread (0, 1: one) */
    bool lossy;                     /* allow compression and staleness */
    bool untie;                     /* one decision per op and per param */
    int64_t exhaustive_limit;       /* largest space exhaustive enumerates (0: 200000) */
    const OpModel *ops;             /* NULL: analytical */
    const LinkModel *links;         /* NULL: from the cluster */
    /* progress: one JSON object per event (the callee does not keep it) */
    void (*event)(void *ctx, const cJSON *ev);
    void *ctx;
    double event_every_s;           /* progress events at most this often (0: 0.5 s) */
    volatile sig_atomic_t *stop;    /* becomes non-zero: stop, keep the best */
    double model_error;             /* the predictor's measured error (fraction; 0: 0.10):
                                       top plans closer than it to the best are flagged */
    struct Mlp *policy;             /* rl: the policy to start from and train (NULL: a new
                                       one); the caller keeps it, trained */
    const cJSON *resume;            /* a point of this space (an event's best.point) the
                                       search starts from when it beats every baseline:
                                       an interrupted search continued; NULL: none */
} SearchOpts;

#define SEARCH_TOP 10

typedef struct {
    char name[160];                 /* baseline or description */
    Strategy *s;                    /* canonicalised; NULL: the baseline does not apply */
    double step_s;                  /* predicted; INFINITY when infeasible */
    double peak_mem;                /* largest class peak, bytes */
    bool feasible;
    bool within_error;              /* a top plan within the model's error of the best */
    char why[300];                  /* why it does not apply or does not fit */
} SearchEntry;

typedef struct {
    SearchEntry best;               /* best.s NULL: no feasible plan found */
    SimResult best_sim;
    SearchEntry top[SEARCH_TOP];    /* distinct plans, fastest first */
    int ntop;
    SearchEntry *baselines;
    int nbaselines;
    int64_t space_size;             /* the coarse space's plans (exhaustive) */
    long evals, invalid, infeasible, cache_hits;
    long bounded;                   /* not simulated: their lower bound showed them slower
                                       than anything kept (SIM_BOUND) */
    double elapsed_s;
    char ended[16];                 /* "exhausted", "budget", "stopped" */
    char algo[16];                  /* what ran (auto resolves to one) */
    char smallest[300];             /* no feasible plan: what the least hungry one needed */
    double model_error;             /* what within_error was judged with */
} SearchResult;

/* Runs a search of g on c. The result holds the best plan and the
 * baselines (each predicted), also when stopped early; a search that finds
 * no feasible plan returns 0 with best.s NULL and says why. Errors are bad
 * options and models strata cannot plan. Caller frees with
 * search_result_free. */
int search_run(const Graph *g, const Cluster *c, const SearchOpts *o, SearchResult *r, Err *err);
/* What search_run refuses, refused without searching (0: it would run). */
int search_check(const Graph *g, const Cluster *c, const SearchOpts *o, Err *err);
void search_result_free(SearchResult *r);

/* The RL policy: a new one (deterministic for seed), or a check that a
 * stored one (mlp_load) has the features this build's policy reads. A
 * policy given in SearchOpts.policy starts the search and comes back
 * trained, so it can start the search of another model. */
struct Mlp *search_policy_new(uint64_t seed, Err *err);
int search_policy_check(const struct Mlp *m, Err *err);

/* The result as JSON (best, top, baselines, counts); caller deletes. */
cJSON *search_result_json(const SearchResult *r);

#endif
