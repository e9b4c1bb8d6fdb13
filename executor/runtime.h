/*
 * runtime.h — interprets one rank's lowered program, for real.
 *
 * The rank runs its class's program instruction by instruction: compute on
 * a Device (the CPU's kernels or a GPU's), communication through a Comm
 * backend, every buffer a value of the program. Parameters and data are a pure function of (seed, tensor
 * name, global element index), so a shard holds exactly what the whole tensor
 * would hold there and a parallel run can be compared with a one-rank run.
 *
 * Sends are posted without waiting (a send's buffer is kept until it is
 * delivered), receives and collectives wait: that is what lets 1F1B's crossed
 * sends and receives between neighbouring stages make progress. Gradient
 * all-reduces start where the lowering puts them and are waited for by the
 * first instruction that depends on them; meanwhile a progress thread keeps
 * them (and the sends) moving while this thread computes: compute and
 * communication overlap as far as the program's dependencies allow.
 */
#ifndef STRATA_RUNTIME_H
#define STRATA_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>
#include "executor/comm.h"
#include "executor/device.h"
#include "executor/kernels.h"
#include "ir/err.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"

typedef struct {
    Device *dev;            /* where buffers live and kernels run (NULL: the CPU);
                             * it must outlive the runtime, and its buffers must be
                             * the kind the Comm backend expects */
    uint64_t seed;          /* params and data */
    OptimHyper hyper;       /* learning rate, momentum, Adam betas, ... */
    bool no_overlap;        /* true: every instruction waits for the all-reduces it
                             * depends on at its place in the program, and
                             * requests progress only between instructions (the
                             * default sets waiting updates aside and keeps
                             * requests moving from a progress thread) */
    bool profile_ops;       /* time every instruction on its own: on a GPU, wait for
                             * each compute instruction's kernels (slower, but the
                             * time lands on the op that spent it) */
} RunConfig;

/* Where a rank's time went, summed over the steps since rt_new or the last
 * rt_op_times_reset: compute by op kind and phase (a forward rerun in the
 * backward under RECOMPUTE), optimizer updates, gradient sums, and
 * communication by instruction kind (waiting for peers included). */
enum { RECOMPUTE = PH_COUNT };
typedef struct {
    double op_s[OP_KIND_COUNT][PH_COUNT + 1];
    int64_t op_n[OP_KIND_COUNT][PH_COUNT + 1];
    double update_s, sum_s;
    int64_t update_n, sum_n;
    double comm_s[I_KIND_COUNT];
    int64_t comm_n[I_KIND_COUNT];
    double wait_s;          /* waiting for collectives that run behind the step */
} OpTimes;

typedef struct {
    double loss;            /* the step's loss over the global batch (same on every rank) */
    double step_s;          /* this rank's wall time of the step */
    double compute_s;       /* time in compute instructions */
    double comm_s;          /* time in communication, waiting for peers included */
    double idle_s;          /* the rest: interpretation, memory, bookkeeping */
    double peak_mem_bytes;  /* high-water mark of this rank's buffers since the start */
    double held_mem_bytes;  /* high-water mark of what its buffer pool held (in use and
                             * cached) since the start */
    int64_t device_allocs;  /* blocks the pool asked of the device during the step
                             * (0 in steady state) */
    int64_t buffer_requests; /* buffers the step asked of its pool (cached or not) */
} StepStat;

typedef struct Runtime Runtime;

/* Prepares this process's rank (comm->rank) of plan p: its groups (every rank
 * of the world must call this, in step), its params initialised from the seed.
 * g, s, p and comm must outlive the runtime. Caller frees with rt_free. */
Runtime *rt_new(const Graph *g, const Strategy *s, const Plan *p, Comm *comm,
                const RunConfig *cfg, Err *err);
/* One training step (numbered from 0: the step number picks the data). */
int rt_step(Runtime *rt, int step, StepStat *st, Err *err);
/* The whole of param t, assembled on world rank 0 into `out` (numel floats;
 * other ranks pass NULL). Every rank must call it, in step. */
int rt_gather_param(Runtime *rt, int t, float *out, Err *err);
void rt_op_times(const Runtime *rt, OpTimes *out);
void rt_op_times_reset(Runtime *rt);
void rt_free(Runtime *rt);

/* Default hyper-parameters: Adam (lr 1e-3, 0.9, 0.999, 1e-8), SGD momentum 0.9. */
void rt_default_hyper(OptimHyper *h);

#endif
