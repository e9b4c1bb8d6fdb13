/*
 * lower.h — a strategy lowered to per-rank programs.
 *
 * A program is an ordered list of instructions with explicit dependencies on
 * two streams (compute, comm). The simulator and the executor both consume it,
 * so a prediction and a measurement always describe the same work.
 *
 * Collectives come from layouts, mechanically. The layout of a tensor on the
 * mesh gives, per dim, the axes it is split over, plus the axes over which the
 * local value is only one addend of a sum (partial). Between a producer's
 * layout and the one a consumer needs, the lowering inserts the cheapest exact
 * conversion: partial -> all_reduce (or reduce_scatter when the consumer wants
 * a dim split on that axis); split but wanted whole -> all_gather; split on the
 * wrong dim -> all_to_all; wanted split but held whole -> a free local slice.
 * Backward mirrors forward; a weight gradient left partial over data axes is
 * synchronised as its `sync` and `shard` say.
 *
 * Ranks that do the same work form a class; one program is lowered per class.
 * In the compact form, a class whose stage does what an earlier one does on
 * other ops (the middle stages of a model of repeated blocks) is that
 * class's program renumbered, not lowered again: it shares that class's
 * instructions and reads them shifted (Program.shared).
 * A class is one pipeline stage (and parameter-server role); under the
 * interleaved schedule its program runs the passes of all of the stage's
 * model chunks, in Megatron-LM's order.
 * Peers and groups are written relative to the mesh (an axis set and an index
 * along it), so one program serves every rank of its class.
 */
#ifndef STRATA_LOWER_H
#define STRATA_LOWER_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "cluster.h"
#include "err.h"
#include "graph.h"
#include "strategy.h"

typedef enum {
    I_COMPUTE, I_ALLREDUCE, I_ALLGATHER, I_REDUCE_SCATTER, I_ALL_TO_ALL,
    I_BROADCAST, I_SEND, I_RECV, I_ALLOC, I_FREE, I_KIND_COUNT
} InstrKind;

typedef enum { PH_FWD, PH_BWD_DATA, PH_BWD_WEIGHT, PH_UPDATE, PH_COUNT } Phase;
typedef enum { STREAM_COMPUTE, STREAM_COMM } Stream;

/* Why a communication instruction exists (for summaries and the executor). */
typedef enum {
    WHY_NONE,          /* compute, memory */
    WHY_RESHARD,       /* layout conversion of an activation or its gradient */
    WHY_STATS,         /* statistics of a split reduction (vocab-parallel loss) */
    WHY_GRAD_SYNC,     /* gradient synchronisation of a parameter */
    WHY_PARAM_GATHER,  /* ZeRO: all_gather a sharded parameter */
    WHY_PIPELINE,      /* activation or gradient between stages */
    WHY_PS,            /* parameter server push/pull */
    WHY_TIED,          /* gradient of a parameter used on several stages */
    WHY_COUNT
} Why;

typedef struct {
    uint8_t kind;          /* InstrKind */
    uint8_t stream;        /* Stream */
    uint8_t phase;         /* Phase (compute; the phase a comm serves otherwise) */
    uint8_t why;           /* Why */
    uint8_t recompute;     /* compute: forward rerun in backward */
    uint8_t compress;      /* Compress of a gradient sync */
    uint8_t nargs;         /* values it touches: Program.args[arg0 .. arg0+nargs) */
    uint8_t behind;        /* a collective an interpreter may start and leave in flight
                              (instr_may_run_behind) */
    AxisMask axes;         /* collective group / peer axis */
    int16_t part, nparts;  /* a flat part of the value (PS shards): part k of nparts; 0, 0: whole */
    int16_t pad2_;
    int32_t op;            /* compute: op index; comm: op that needs it or -1 */
    int32_t tensor;        /* tensor moved, allocated or freed; -1 if none */
    int32_t micro;         /* micro-batch, -1 for once-per-step work */
    int32_t peer;          /* send/recv: index of the peer along `axes`;
                              WHY_TIED all_reduce: bit s set for each pp index s in the group */
    int64_t bytes;         /* payload (nccl-tests "size"): all_reduce the buffer,
                              all_gather the output, reduce_scatter the input,
                              all_to_all/send/recv the local buffer, alloc/free */
    float flops;           /* compute */
    float mem_bytes;       /* compute: bytes read + written */
    int32_t dep0;          /* dependencies: Program.deps[dep0 .. dep0+ndeps) */
    int32_t ndeps;
    int32_t arg0;
} Instr;

/*
 * Values: the buffers a program reads and writes. Instruction arguments
 * (Program.args) are value ids, by kind:
 *   compute fwd        [out, in_0 .. in_{n-1}]
 *   compute bwd_data   [dout, out, in_0 .. in_{n-1}, din_0 .. din_{n-1}]  (din -1: none)
 *   compute bwd_weight the same, din_k the param's gradient (accumulated into)
 *   compute, op -1     [dst, src...]: dst = sum of srcs (gradient sums), or
 *                      PH_UPDATE [param, grad, pushed...]: optimizer step
 *   collectives        [dst, src] (dst == src: in place)
 *   WHY_STATS          [out]: the statistics all-reduces inside the op's kernel
 *   send               [src]        recv   [dst]
 *   alloc, free        [value]
 */
typedef enum {
    VAL_DATA,          /* an input or label of one micro-batch, loaded deterministically */
    VAL_ACT,           /* an activation in some layout (produced, converted, received) */
    VAL_GRAD,          /* a gradient of an activation */
    VAL_PARAM,         /* a param as stored: home layout, or its ZeRO-3 flat shard */
    VAL_PARAM_USE,     /* a param as one use needs it (gathered, resharded) */
    VAL_PARAM_GRAD,    /* a param's gradient, accumulated over the step */
    VAL_KIND_COUNT
} ValueKind;

typedef struct {
    AxisMask dim[IR_MAX_DIMS];     /* mesh axes each dim is split over */
    AxisMask partial;              /* the local value is one addend over these axes */
} Layout;

typedef struct {
    int32_t tensor;
    int32_t micro;                 /* -1: lives for the whole step */
    uint8_t kind;                  /* ValueKind */
    uint8_t pad_;
    AxisMask shard;                /* ZeRO: a flat 1/|group| shard over these axes */
    Layout layout;
    int64_t bytes;                 /* local bytes (of the shard when sharded) */
} Value;

/* The compact form of a program (ir_lower_compact). A pass runs one
 * micro-batch forward or backward through one model chunk; passes of the
 * same kind and chunk do the same work for every micro-batch but the first
 * and the last, so each distinct pass is lowered once, as a body, and the
 * schedule lists which body every pass runs. */
typedef enum { BODY_FWD, BODY_BWD, BODY_TAIL } BodyKind;

typedef struct {
    uint8_t kind;                  /* BodyKind; the tail (tied-param sums) runs after every pass */
    uint8_t pad_;
    int16_t chunk;                 /* the stage's model chunk (0 without interleaving) */
    int32_t micro;                 /* the micro-batch it was lowered for */
    int32_t i0, i1;                /* its instructions */
    int32_t v0, v1;                /* the values it makes */
    int64_t mem_net, mem_peak;     /* bytes: alloc minus free over it, and the highest prefix */
    int64_t mem_data;              /* bytes of the data (inputs, labels) among its values */
} Body;

typedef struct {
    int32_t body;
    int32_t micro;
} PassRef;

/* How far a copied class's ops, tensors and pipeline peers lie from the
 * instructions it shares (Program.shift). */
typedef struct {
    int32_t op, tensor, peer;
} ProgramShift;

typedef struct {
    int stage;
    int nranks;
    int *ranks;                    /* ranks of this class, ascending */
    int ninstrs, cap_instrs;
    Instr *instrs;
    int ndeps, cap_deps;
    int32_t *deps;                 /* instruction indices */
    int nargs, cap_args;
    int32_t *args;                 /* value ids */
    int nvalues, cap_values;
    Value *values;
    int64_t peak_mem;              /* bytes: resident state plus the alloc/free walk */
    int64_t static_mem;            /* params, grads, optimizer state */
    double device_mem;             /* memory of this class's devices (0: unknown) */
    /* compact form only (nbodies > 0): instrs, deps, args and values above
     * hold the bodies back to back, values [0, nhead) being the step's own;
     * the tail is the last body */
    int nhead;
    int nbodies, cap_bodies;
    Body *bodies;
    int nsched;
    PassRef *sched;                /* every pass of the step, in order */
    int nmicro, nchunks;
    int like;                      /* compact form: the earlier class whose bodies these are,
                                      renumbered to this stage's ops (classes alike), or -1 */
    /* such a copy shares instrs, deps, args and values with the class it was
     * first copied from (they are not its own to free) and reads them
     * renumbered: ops, tensors and pipeline peers `shift` further on.
     * program_instr_at and program_value_at give them renumbered; the kinds,
     * dependencies, arguments, bytes and streams read as they are */
    bool shared;
    ProgramShift shift;
} Program;

typedef struct {
    int world;
    int nclasses;
    Program *classes;
    int *rank_class;               /* per rank: index into classes */
    int nops;
    int64_t (*local)[IR_LETTERS];  /* per op: local letter sizes of one micro-batch */
} Plan;

/* The layout operand k of op i must arrive in (k == nin: the output's layout
 * as the op computes it, partial axes included). Axes of size 1 never appear. */
Layout ir_operand_layout(const Graph *g, const Strategy *s, int op, int k);
/* Index of a rank (by its mesh coordinates) in its group along the axes in
 * mask: row-major over those axes in mesh order. */
int ir_group_index(const Strategy *s, const int coord[MESH_MAX_AXES], AxisMask mask);

/* Lowers every class of the plan. Caller frees with plan_free. */
Plan *ir_lower(const Graph *g, const Cluster *c, const Strategy *s, Err *err);
/* The same plan in the compact form: each class's distinct passes lowered
 * once, with the schedule; peak_mem and static_mem as the full program's.
 * Costs about what a few micro-batches do, whatever the micro-batch count. */
Plan *ir_lower_compact(const Graph *g, const Cluster *c, const Strategy *s, Err *err);
/* The same with every class lowered itself, none copied from an alike
 * one (the reference the copies are held to). */
Plan *ir_lower_compact_each(const Graph *g, const Cluster *c, const Strategy *s, Err *err);
/* The same, giving up (err LOWER_LATE) when now_s() passes deadline
 * between two classes (0: never): a search's time budget. */
#define LOWER_LATE "lower: stopped at its deadline"
Plan *ir_lower_compact_until(const Graph *g, const Cluster *c, const Strategy *s,
                             double deadline, Err *err);
/* The full program of a compact one: instruction for instruction what
 * ir_lower gives. out is overwritten; free with program_free. */
void program_expand(const Program *compact, Program *out);
/* The program from pass `first` of the schedule on (then the tail), for a simulation that has run the passes before it by
 * other means. A dependency on an instruction of an earlier pass becomes
 * outside(ctx, pass, index in its body), or is dropped when that returns
 * -1; values made before `first` read as -1. */
void program_expand_from(const Program *compact, int first, Program *out,
                         int32_t (*outside)(void *ctx, int pass, int32_t local), void *ctx);
/* Per pass slot of a compact program, the pass's index in the schedule
 * (nsched: the tail); for program_pass_of. Caller frees. */
int32_t *program_pass_index(const Program *compact);
/* The pass that instruction x of the bodies (a dependency of an instruction
 * of pass `pass`; nsched: the tail) belongs to as pass `pass` runs, and
 * (*local) its index within that pass's body. */
int program_pass_of(const Program *compact, const int32_t *pass_index, int pass, int32_t x,
                    int32_t *local);
/* The same for a dependency x of body `body` on an instruction of another
 * body, resolved once for every run of the body: as the body runs
 * micro-batch m, that instruction's pass is pass_index[base + m]. */
int32_t program_ref_base(const Program *compact, int body, int32_t x);
/* A full plan from a compact one (classes already full are copied). */
Plan *plan_expand(const Plan *p);
/* Expands class k of a compact plan in place (a rank runs only its own
 * class; the others stay compact). */
void plan_expand_class(Plan *p, int k);
static inline bool program_is_compact(const Program *pr) { return pr->nbodies > 0; }
/* Instruction i of pr, and value v, as this class runs them (a shared
 * copy's renumbered; Program.shared), byte for byte. */
static inline void program_instr_at(const Program *pr, int i, Instr *out)
{
    memcpy(out, &pr->instrs[i], sizeof *out);
    if (pr->shared) {
        if (out->op >= 0) out->op += pr->shift.op;
        if (out->tensor >= 0) out->tensor += pr->shift.tensor;
        if (out->kind == I_SEND || out->kind == I_RECV) out->peer += pr->shift.peer;
    }
}
static inline void program_value_at(const Program *pr, int v, Value *out)
{
    memcpy(out, &pr->values[v], sizeof *out);
    if (pr->shared && out->tensor >= 0) out->tensor += pr->shift.tensor;
}
static inline Instr program_instr(const Program *pr, int i)
{
    Instr in;
    program_instr_at(pr, i, &in);
    return in;
}
void program_free(Program *pr);
void plan_free(Plan *p);

/* Per-class summary as JSON: {"ranks":N,"classes":[{"ranks":[...],"stage":..,
 * "instrs":{kind:count},"comm_bytes":{kind:bytes},"comm_bytes_by_axis":{axes:bytes},
 * "peak_mem_bytes":..}]}. Caller deletes. */
cJSON *plan_summary_json(const Plan *p, const Strategy *s);
/* The same as text, for people. */
void plan_summary_print(const Plan *p, const Strategy *s, FILE *f);

/* Can an interpreter start collective `in` of pr and go on without waiting
 * for it, until an instruction that needs it (one that depends on it, or
 * touches a value it reads or writes)? The gradient all-reduces in place,
 * uncompressed; ZeRO's reduce-scatters into a shard; its all-gathers of a
 * shard, or of a param in place. Everything else needs the collective's
 * result at once or is transformed around it. A CPU rank (MPI's
 * non-blocking calls) leaves these behind it; the GPU executor waits for
 * every call. Set on every instruction as it is lowered (Instr.behind), so
 * the executor and the simulator read one answer. */
bool instr_may_run_behind(const Program *pr, const Instr *in);

/* Does send `in` send a copy of its value? A param or a param's gradient
 * (a parameter server's pull and push) changes before a slow receiver
 * takes it, so the executor copies it and posts the copy; other values
 * (activations between stages) are sent as they are. The simulator
 * charges the copy. */
bool instr_sends_copy(const Program *pr, const Instr *in);

/* Total payload bytes of one class by instruction kind (I_ALLREDUCE..I_RECV),
 * optionally restricted to one reason (WHY_COUNT = all). */
int64_t program_comm_bytes(const Program *pr, InstrKind kind, Why why);

const char *instr_kind_name(InstrKind k);
const char *value_kind_name(ValueKind k);
const char *phase_name(Phase p);

#endif
