/*
 * strategy.h — the unified representation of a parallelisation strategy.
 *
 * One JSON object; every classic strategy is a value of it:
 *   mesh      named axes and sizes, outermost first: {"pp":2,"dp":4,"tp":8}.
 *             Rank r has row-major coordinates (last axis fastest, on the
 *             innermost topology level). "pp" is the pipeline axis; axes whose
 *             name starts with "dp" are data axes (the batch letter's default).
 *   pipeline  {"cuts":[12], "microbatches":8, "schedule":"1f1b"|"gpipe"}:
 *             stage i+1 starts at block cuts[i]; ops outside blocks go to the
 *             first stage (before the blocks) or the last (after them).
 *             {"cuts":[3,6,9], "microbatches":8, "schedule":"interleaved",
 *              "virtual":2}: Megatron-LM's interleaved 1F1B (virtual pipeline
 *             stages): the cuts make P*V model chunks, chunk k runs on
 *             pipeline rank k mod P; M must be a multiple of P.
 *   ops       {"name or pattern": {"split": {"f":"tp", "b":["dp"]}, "recompute": true}}
 *   params    {"name or pattern": {"sync": {...}, "shard": "none|zero1|zero2|zero3"}}
 *             sync: {"method":"allreduce","algo":"ring|tree|hierarchical",
 *                    "compress":"none|fp16|int8|powersgd:R","bucket_mb":25}
 *                   {"method":"ps","shards":S,"placement":"spread"|[group indices],"staleness":K}
 *                   {"method":"sfb"}
 *   optimizer "adam" (default) or "sgd" (momentum)
 * Entries of ops/params apply in the order written; a later entry overrides
 * the fields (and split letters) it names. A pattern is a name with `*`
 * wildcards; a pattern skips split letters a matched op lacks, an exact name
 * does not, and a pattern other than "*" alone must match at least one op
 * that has each letter it splits (else it is a typo). Whatever no entry names takes the defaults: the batch letter split
 * over the data axes, no recompute, ring all-reduce without compression, no
 * sharding.
 *
 * Legend: D/T/P = data/tensor/pipeline degree.
 */
#ifndef STRATA_STRATEGY_H
#define STRATA_STRATEGY_H

#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "cluster.h"
#include "err.h"
#include "graph.h"

#define MESH_MAX_AXES 8
#define PS_MAX_SHARDS 64
#define MAX_STAGES 64                /* pipeline stages: the stages that use a param are a
                                        64-bit set (lowering, executor) */

typedef uint16_t AxisMask;           /* bit a: mesh axis a */

typedef enum { SYNC_ALLREDUCE, SYNC_PS, SYNC_SFB } SyncMethod;
typedef enum { ALGO_RING, ALGO_TREE, ALGO_HIERARCHICAL } SyncAlgo;
typedef enum { COMPRESS_NONE, COMPRESS_FP16, COMPRESS_INT8, COMPRESS_POWERSGD } Compress;
typedef enum { SHARD_NONE, SHARD_ZERO1, SHARD_ZERO2, SHARD_ZERO3 } Shard;
typedef enum { SCHED_GPIPE, SCHED_1F1B, SCHED_INTERLEAVED } Schedule;
typedef enum { OPT_ADAM, OPT_SGD } Optimizer;

/* The most micro-batches a pipeline step may run; the most ranks a mesh has
 * (as a cluster's devices); a parameter server's staleness bound; PowerSGD's
 * rank. */
#define STRATEGY_MAX_MICRO (1 << 20)
#define STRATEGY_MAX_WORLD (1 << 20)
#define STRATEGY_MAX_STALENESS 1000000
#define STRATEGY_MAX_POWERSGD_RANK 1024

typedef struct {
    AxisMask split[IR_LETTERS];      /* letter -> axes it is split over (0: whole) */
    bool recompute;
} OpPolicy;

typedef struct {
    SyncMethod method;
    SyncAlgo algo;
    Compress compress;
    int powersgd_rank;               /* R of powersgd:R */
    double bucket_bytes;
    int ps_shards;
    int ps_placement[PS_MAX_SHARDS]; /* index in the data group of each shard's server */
    bool ps_placed;                  /* a strategy made in code: ps_placement is the caller's
                                        (strategy_finish checks it), else spread */
    int staleness;
    Shard shard;
} ParamPolicy;

typedef struct {
    int naxes;
    char *axis_name[MESH_MAX_AXES];
    int axis_size[MESH_MAX_AXES];
    int axis_stride[MESH_MAX_AXES];  /* rank stride of one step along the axis */
    AxisMask data_axes;              /* axes named dp* */
    int pp_axis;                     /* -1 without a pipeline */
    int world;                       /* product of the axis sizes */

    int nstages;                     /* size of pp, or 1: pipeline ranks */
    int virtual_stages;              /* V: model chunks per pipeline rank (interleaved), else 1 */
    int nchunks;                     /* nstages * virtual_stages model chunks */
    int *cuts;                       /* nchunks-1 block indices: chunk k+1 starts at cuts[k] */
    int microbatches;                /* 1 .. STRATEGY_MAX_MICRO */
    Schedule schedule;
    Optimizer optimizer;

    int nops;                        /* == graph->nops */
    OpPolicy *ops;                   /* per op, indexed like graph->ops */
    int ntensors;
    ParamPolicy *params;             /* per tensor, meaningful for params */
    int *op_stage;                   /* per op: the pipeline rank (pp index) that runs it */
    int *op_chunk;                   /* per op: its model chunk; chunk k runs on rank k mod P
                                        (without interleaving the chunk is the stage) */

    cJSON *canonical;                /* owned: defaults filled, patterns expanded, keys sorted;
                                        NULL for a strategy made in code until
                                        strategy_canonicalize */
    char id[17];                     /* stable hash of the canonical form ("" without one) */
} Strategy;

/* A gradient compression as written ("none", "fp16", "int8", "powersgd:R"
 * with R in [1, STRATEGY_MAX_POWERSGD_RANK]) into *c and *rank (0 but for
 * PowerSGD); an error naming path otherwise. */
int strategy_parse_compress(const char *str, const char *path, Compress *c, int *rank, Err *err);

/* Parses, resolves against the graph and cluster, and validates. Errors name
 * the JSON path and the reason (a split letter the op lacks, an axis size that
 * does not divide the dim, stages that do not cover the blocks in order, a
 * mesh larger than the cluster, ...). cluster may be NULL (no size check).
 * Caller frees with strategy_free. */
Strategy *strategy_from_json(const cJSON *j, const Graph *g, const Cluster *c, Err *err);
/* The same without the canonical form and its id (strategy_canonicalize
 * makes them later if wanted): for a caller that only checks a strategy,
 * since for a large model the JSON costs more than the rest. */
Strategy *strategy_parse(const cJSON *j, const Graph *g, const Cluster *c, Err *err);
Strategy *strategy_load(const char *path, const Graph *g, const Cluster *c, Err *err);
void strategy_free(Strategy *s);

/* A strategy made in code (a searcher's candidates), without JSON:
 * strategy_new gives the mesh (axes outermost first, named as in JSON) with
 * one even cut per stage, M = P, 1F1B, Adam and every policy at its
 * default; the caller sets what it wants (cuts, microbatches, schedule,
 * ops[], params[]; nchunks = P x virtual_stages), then strategy_finish
 * checks it by the rules strategy_from_json applies, fills the params'
 * derived fields (PS placement, unless ps_placed) and assigns each op its
 * stage. Messages
 * name the op or param at fault. A finished strategy has no canonical form
 * until strategy_canonicalize makes it (and its id): the JSON costs more
 * than the rest, and a search needs it only for what it keeps. Caller frees
 * with strategy_free. */
Strategy *strategy_new(const Graph *g, int naxes, const char *const names[], const int sizes[],
                       Err *err);
int strategy_finish(Strategy *s, const Graph *g, const Cluster *c, Err *err);
void strategy_canonicalize(Strategy *s, const Graph *g);    /* no-op when it has one */
Strategy *strategy_copy(const Strategy *s);                 /* deep; caller frees */

int strategy_axis(const Strategy *s, const char *name);     /* -1 if absent */
/* Rank <-> mesh coordinates (row-major, last axis fastest). */
void strategy_coords(const Strategy *s, int rank, int coord[MESH_MAX_AXES]);
int strategy_rank(const Strategy *s, const int coord[MESH_MAX_AXES]);
/* Product of the sizes of the axes in mask. */
int strategy_group_size(const Strategy *s, AxisMask mask);
/* "dp", "dp+tp", "" for an empty mask; into buf. */
const char *strategy_axes_name(const Strategy *s, AxisMask mask, char *buf, int n);

/* Builders for the classic strategies. Each returns a strategy JSON (caller
 * deletes) that strategy_from_json accepts for this graph, or NULL with err.
 *   dp        D = world                     plain data parallel
 *   zero3     D = world, every param zero3 (opts->zero picks 1/2/3)
 *   megatron  mesh pp x dp x tp; letters n,f,v (heads, ffn, vocabulary) and
 *             e (experts) split on tp, blocks cut evenly, 1F1B; with
 *             virtual_stages V > 1 the blocks are cut evenly into P*V chunks
 *             and the schedule is interleaved
 *   gpipe     mesh pp x dp, blocks cut evenly, GPipe schedule
 *   ps        data parallel, every param through a parameter server
 *   parallax  ps for gathered (embedding) params, all-reduce for dense ones
 *   sfb       sufficient-factor broadcast for matmul weights, all-reduce else */
typedef struct {
    int world;          /* devices to use; 0 = cluster size (or 1 without one) */
    int tp, pp, dp;     /* 0 = derived */
    int microbatches;   /* 0 = pp (or 1) */
    int virtual_stages; /* megatron: model chunks per pipeline rank; 0 = 1 (no interleaving) */
    int zero;           /* 1, 2, 3 for zero; 0 = default */
    int ps_shards;      /* 0 = min(dp, 4) */
    int staleness;
    const char *compress;     /* NULL = none */
    bool recompute;
    bool sequence_parallel;   /* megatron: split s on tp outside attention/MLP */
} StrategyOpts;

/* The options' own faults for a kind (an unknown kind, an option the kind
 * does not take, a negative size), before any model is read: what
 * strategy_build refuses first. */
int strategy_opts_check(const char *kind, const StrategyOpts *o, Err *err);
cJSON *strategy_build(const char *kind, const Graph *g, const Cluster *c,
                      const StrategyOpts *o, Err *err);

/* May letter l (0..25) of op be split over a mesh axis at all: not a
 * spatial or window letter, nor a concat's concatenated letter (an input's
 * own or the output's), nor a reduction letter of a non-linear op
 * (cross_entropy's and batchnorm's are computed split)? The rule
 * strategy_from_json enforces, for builders that must stay within it. */
bool strategy_letter_splittable(const Op *op, int l);
/* The axes param t's gradient is summed over (the lowering synchronises
 * it over them): those that split a letter of its first consumer that the
 * param lacks, such as the batch. Its parameter servers are indices in
 * this group: a param split over a data axis (the position embedding when
 * dp_cp splits the sequence) has one group per part. */
AxisMask strategy_param_sync_axes(const Graph *g, const Strategy *s, int t);
/* The one letter Megatron-LM splits over tp in op: e, n, v or f, in that
 * order of preference, splittable and never the batch letter (an image
 * batch is also called n); 0 for none. */
char strategy_tp_letter(const Op *op);

/* Why param `tensor` cannot use sufficient-factor broadcast, into buf; NULL
 * when it can (a 2-D weight used only by matmuls whose gradient sums over the
 * batch letter). */
const char *strategy_sfb_unfit(const Graph *g, int tensor, char *buf, int n);

const char *shard_name(Shard s);
const char *schedule_name(Schedule s);
const char *sync_method_name(SyncMethod m);
const char *compress_name(Compress c);

#endif
