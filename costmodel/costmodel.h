/*
 * costmodel.h — what a plan costs before it runs: operator times, link
 * times, and a simulation of the lowered program that turns them into a
 * step time, a breakdown and the memory each device needs.
 *
 * Three parts, each replaceable on its own:
 *   ops    the time of one op instance (kind, phase, local letter sizes,
 *          dtype) on one device: an analytical roofline with size-dependent
 *          efficiency curves for any device (constants and their sources in
 *          docs/costmodel.md), or a small MLP (mlp.h) trained on a profile's
 *          samples, falling back to the analytical model for kinds the
 *          profile did not cover. Every time says which model produced it.
 *   links  the time of one collective or transfer: alpha-beta fits from a
 *          profile (collective, group size, topology level) or the cluster's
 *          link figures with the standard algorithm costs (nccl-tests' bus
 *          bandwidth factors); groups spanning several levels cost the
 *          hierarchical way.
 *   sim    list scheduling of the lowered class programs (lower.h) on two
 *          in-order streams per rank (compute, comm): an instruction starts
 *          when its stream is free and its dependencies are done; a
 *          collective starts when the last member of its group is ready; a
 *          receive completes when its matching send has been posted and the
 *          bytes have moved. The simulator reads the program itself, never a
 *          formula of the strategy, so whatever the lowering emits
 *          (recompute, ZeRO gathers, PS pushes and pulls, pipeline sends) is
 *          paid as it will run.
 *
 * Legend: t = seconds, B = bytes (nccl-tests "size"), n = group size,
 * alpha = latency per message, bw = bytes/s per device one direction.
 */
#ifndef STRATA_COSTMODEL_H
#define STRATA_COSTMODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ir/cluster.h"
#include "ir/err.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"

/* --- operators -------------------------------------------------------------- */

/* Work outside model ops, priced like ops: the optimizer update of a
 * param's shard, and gradient sums (compute instructions with op -1). */
enum { CM_KIND_ADAM = OP_KIND_COUNT, CM_KIND_SGD, CM_KIND_SUM, CM_KIND_COUNT };

/* One op instance as a device runs it. */
typedef struct {
    int kind;                       /* OpKind or CM_KIND_* */
    Phase phase;
    DType dtype;
    double flops, bytes;            /* work and traffic (bytes read + written) */
    uint32_t letters;               /* letters of the op's spec (0 for CM_KIND_*) */
    uint32_t in0, in1, out;         /* letters of the first two operands and the output:
                                       a contraction's M, N, K and batch follow from them */
    int64_t size[IR_LETTERS];       /* local letter sizes; CM_KIND_*: size[0] = elements */
    double unmasked;                /* a causal softmax: the share of elements its mask leaves
                                       (opshape_unmasked); 0 or 1: every element */
} OpShape;

/* The share of a causal softmax's elements left unmasked, its last two input
 * letters s and t of local sizes ns and nt from offset 0 (row i weighs its
 * first min(i + 1, nt) elements): (ns + 1) / 2nt when ns <= nt. */
double opshape_unmasked(int64_t ns, int64_t nt);

/* Marks x a causal softmax over s and t of local sizes ns and nt: its
 * unmasked share and, in the forward, its work and traffic scaled by it
 * (the forward kernels stop at each row's mask; the backward runs whole
 * rows), so the roofline and the analytical model price what runs. */
void opshape_set_causal(OpShape *x, int64_t ns, int64_t nt);

/* The device an op runs on: what the analytical model and the MLP's
 * features need. */
typedef struct {
    double peak_flops[DT_COUNT];    /* FLOP/s by dtype */
    double mem_bw;                  /* bytes/s */
    bool gpu;                       /* efficiency curves and launch overhead of a GPU */
} OpDevice;

typedef enum { CM_SRC_ANALYTIC, CM_SRC_MLP, CM_SRC_COUNT } CostSource;

typedef struct OpModel OpModel;

void op_device_from_group(const DeviceGroup *g, OpDevice *d);
/* The analytical model alone. Caller frees with opmodel_free. */
OpModel *opmodel_analytic(void);
/* A trained model from the blob opmodel_save wrote (a stored cost model's
 * weights). Caller frees with opmodel_free. */
OpModel *opmodel_load(const uint8_t *blob, size_t n, Err *err);
void opmodel_free(OpModel *m);
/* Seconds for one instance on device d; *src (may be NULL) says which model
 * answered. Thread-safe on a shared model. */
double opmodel_time(const OpModel *m, const OpDevice *d, const OpShape *x, CostSource *src);
/* The roofline alone (peak compute and bandwidth, no efficiency curves and
 * no launch overhead): the baseline the MLP is compared with. */
double opmodel_roofline(const OpDevice *d, const OpShape *x);
/* What measured runs taught the model (strata costmodel train --runs): the
 * simulator multiplies compute times by *compute and communication times by
 * *comm, and charges *per_instr seconds for each instruction the
 * interpreter's stream runs (its bookkeeping between kernels). An
 * uncalibrated model, or m NULL: 1, 1, 0. */
void opmodel_calibration(const OpModel *m, double *compute, double *comm, double *per_instr);
/* A copy of a stored model's blob with another calibration (the rest
 * byte-identical). *out is new; caller frees. */
int opmodel_recalibrate(const uint8_t *blob, size_t n, const double calib[3], uint8_t **out,
                        size_t *nout, Err *err);
/* Does the trained part cover this kind (else the analytical model answers)? */
bool opmodel_covers(const OpModel *m, int kind);
/* The letters of one operand of a spec ("bsh") as a mask (bit l - 'a'). */
uint32_t cm_letter_mask(const char *letters);
/* A contraction's extents from its operand letters: m (first operand and
 * output only), n (second and output), k (both operands, not the output)
 * and batch (all three); each the product of the local sizes, 1 if none. */
void opshape_gemm_dims(const OpShape *x, double *m, double *n, double *k, double *batch);
/* "matmul", ..., "adam", "sgd", "sum" */
const char *cm_kind_name(int kind);
int cm_kind_parse(const char *s, int *kind);

/* The OpShape of one compute instruction of a lowered program: op kind,
 * phase, the op's local letter sizes (plan->local), flops and bytes as the
 * lowering priced them; updates and sums from the instruction. */
void opshape_of_instr(const Graph *g, const Strategy *s, const Plan *p, const Instr *in,
                      OpShape *x);

/* --- links ------------------------------------------------------------------ */

typedef struct LinkModel LinkModel;

/* Link times from the cluster's level figures and the standard algorithm
 * costs. The cluster must outlive the model. Caller frees. */
LinkModel *linkmodel_from_cluster(const Cluster *c, Err *err);
void linkmodel_free(LinkModel *m);
/* One alpha-beta fit (t = alpha + beta * B) of a profile for one collective
 * ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast",
 * "send_recv", "all_reduce_f16"), group size and level name: where a fit exists for the level
 * a group spans it replaces the analytical cost (scaled by the algorithm's
 * factor where the group size differs). */
int linkmodel_add_fit(LinkModel *m, const char *collective, int group_size, const char *level,
                      double alpha_s, double beta_s, Err *err);
/* One measured size of that fit's collective, group size and level (the
 * fit must have been added): with two or more, a group of exactly that
 * size is priced from the measured times themselves, piecewise linear
 * between sizes (an alpha and beta per segment: bandwidth that rises and
 * falls with size, as caches and protocols make it, which one line
 * cannot follow), by the largest segment's beta beyond them and the
 * smallest size's time below them. */
int linkmodel_add_point(LinkModel *m, const char *collective, int group_size, const char *level,
                        int64_t bytes, double time_s, Err *err);
/* linkmodel_time's kind for the all-reduce of a gradient compressed to
 * fp16: priced by the profile's "all_reduce_f16" fits where it has them
 * (the backend's half reduction is not the float one), else as an
 * all-reduce of its bytes. */
#define LINK_ALLREDUCE_F16 ((InstrKind)I_KIND_COUNT)
/* Seconds for one instance of collective `kind` (I_ALLREDUCE .. I_RECV, or
 * LINK_ALLREDUCE_F16) of B bytes over the group of ranks `ranks[0..n)`
 * (send/recv: the two ends). algo: the sync algorithm of a gradient
 * all-reduce (ALGO_RING otherwise). */
double linkmodel_time(const LinkModel *m, InstrKind kind, SyncAlgo algo, int64_t bytes,
                      const int *ranks, int n);
/* "analytic (cluster link figures)" or "profile N fits (+ analytic where none)" */
const char *linkmodel_describe(const LinkModel *m);

/* --- simulation ------------------------------------------------------------- */

typedef struct {
    int nranks, stage;
    double busy_compute;            /* seconds the compute stream works */
    double recompute;               /* of which recomputed forwards */
    double busy_comm;               /* seconds the comm stream moves data */
    double exposed_comm;            /* comm time the compute stream waits for */
    double idle;                    /* step - busy_compute - exposed_comm */
    double flops;                   /* executed per step, recompute included */
    int64_t main_instrs;            /* instructions the interpreter's stream ran */
    int64_t peak_mem, static_mem;   /* bytes, from the lowering's alloc/free walk */
    double device_mem;              /* bytes of the smallest device of the class (0: unknown) */
    bool fits;
} SimClass;

/* One instruction's place on the timeline (for --svg). */
typedef struct {
    double start, end;
    int32_t instr;
    uint8_t stream, kind, phase, why, recompute;
    int32_t micro;
} SimSpan;

typedef struct {
    double step_time;               /* seconds, the slowest class */
    double lower_bound;             /* seconds, a compact plan's bound (SimOpts.bound), else 0 */
    int nclasses;
    SimClass *classes;
    double bubble;                  /* pipeline bubble: share of the step the compute
                                       streams idle, averaged over stages; 0 without pp */
    double samples_per_s;           /* global batch / step time */
    double tokens_per_s;            /* samples x sequence (0: the model has no sequence) */
    double model_flops;             /* per step, the graph's training FLOPs (no recompute) */
    double hw_flops;                /* per step over all devices, recompute included */
    double peak_flops;              /* sum over the devices of their peak at the model's dtype */
    double mfu, hfu;
    bool feasible;
    char why_infeasible[256];       /* "class 0 (stage 0) needs 93.1 GiB, its devices have 80 GiB" */
    int op_count[CM_SRC_COUNT];     /* compute instructions priced by each op model */
    uint32_t analytic_kinds;        /* bit k: kind k answered by the analytical model */
    int64_t passes, passes_whole;   /* a compact plan: passes of the step over its classes,
                                       and how many of them the simulator ran whole */
    int64_t passes_evaluated;       /* of those, how many it evaluated (not replayed) */
    int64_t passes_skipped;         /* of those, how many it neither evaluated nor replayed:
                                       periods of a steady state repeating, stepped over */
    /* with SimOpts.trace: per class, its spans (caller frees through sim_result_free) */
    SimSpan **spans;
    int *nspans;
} SimResult;

typedef struct {
    const OpModel *ops;             /* NULL: the analytical model */
    const LinkModel *links;         /* NULL: from the cluster's figures */
    bool trace;                     /* keep every instruction's span */
    /* Optional: a caller's own prices (hand-computed timelines in tests,
     * what-if studies). Each returns seconds for one instruction of class
     * cls, or a negative value to let the models answer. */
    double (*compute_time)(void *ctx, int cls, const Instr *in);
    double (*comm_time)(void *ctx, int cls, const Instr *in);
    void *ctx;
    double deadline;                /* now_s() to give up at (0: none): cost_simulate then
                                       fails, its error saying so (a search's time budget) */
    double bound;                   /* a step time the caller has no use for a plan at or
                                       above (0: none); see SIM_BOUND */
    bool every_pass;                /* run every pass of a steady state, none stepped over
                                       (the reference the stepping is held to) */
} SimOpts;

/* Simulates one step of the plan. Memory is checked first: a class whose
 * peak exceeds its devices' memory makes the plan infeasible (feasible
 * false, why_infeasible says which class, the bytes needed and available),
 * and the step is still simulated. Returns 0, or -1 with err when the
 * program cannot be scheduled (a collective or a receive no peer ever
 * reaches: a lowering bug) or SimOpts.deadline passed (err starts with
 * SIM_LATE). Caller frees with sim_result_free. */
#define SIM_LATE "simulate: stopped at its deadline"
/* A lower bound of a compact plan's step, known before any pass runs:
 * the busiest stream of any class, everything it runs end to end with no
 * wait (every stream runs one instruction at a time, each for the same
 * time the simulation gives it). Computed for every compact plan simulated
 * whole (SimResult.lower_bound); when it reaches SimOpts.bound, the step
 * is not simulated: cost_simulate fails with err SIM_BOUND and leaves the
 * bound in r->lower_bound (nothing else in r; nothing to free). A search
 * skips so the plans it would discard anyway (branch and bound). */
#define SIM_BOUND "simulate: its lower bound reached the bound"
int cost_simulate(const Graph *g, const Cluster *c, const Strategy *s, const Plan *p,
                  const SimOpts *o, SimResult *r, Err *err);
void sim_result_free(SimResult *r);

/* The estimate as JSON (step_time_s, breakdown per class, bubble,
 * throughput, MFU/HFU, memory, feasibility, which models answered).
 * Caller deletes. */
cJSON *sim_result_json(const SimResult *r, const Strategy *s, const char *op_model,
                       const char *link_model);
/* A timeline a person reads in a browser: one row per class with its
 * compute and comm streams, forward and backward coloured per micro-batch,
 * gradient sync and idle time visible, a labelled time axis. Needs a result
 * simulated with trace. */
int sim_write_svg(const SimResult *r, const Strategy *s, const char *title, const char *path,
                  Err *err);
/* The same to an open stream. */
int sim_svg_write(const SimResult *r, const Strategy *s, const char *title, FILE *f, Err *err);

#endif
