/*
 * lower.c — a strategy lowered to per-rank programs.
 *
 * One mechanism serves every parallelism: each op's split gives its operands
 * and its output a layout on the mesh; between the layout a value is held in
 * and the layout its consumer needs, convert() emits the cheapest exact
 * conversion. Backward runs the same conversion on gradients, and a parameter
 * gradient left partial over some axes is synchronised as its policy says.
 *
 * Legend: t = tensor index, mb = micro-batch, P = partial axes (a mask),
 * D = size of a parameter's synchronisation group.
 */
#include "lower.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "util.h"

/* ----------------------------------------------------------------------------
 * Layouts */

static bool layout_eq(const Layout *a, const Layout *b, int ndim)
{
    if (a->partial != b->partial) return false;
    for (int d = 0; d < ndim; d++)
        if (a->dim[d] != b->dim[d]) return false;
    return true;
}

static AxisMask layout_axes(const Layout *l, int ndim)
{
    AxisMask m = 0;
    for (int d = 0; d < ndim; d++) m |= l->dim[d];
    return m;
}

/* ----------------------------------------------------------------------------
 * Facts shared by every class */

typedef struct {
    Layout in[IR_MAX_INPUTS];              /* layout each operand must arrive in */
    Layout out;                            /* layout of the output as computed */
    AxisMask grad_partial[IR_MAX_INPUTS];  /* d(operand k) is partial over these */
    AxisMask stat_axes;                    /* split reduce letters: statistics all-reduced */
    int64_t stat_elems;                    /* elements of one statistic */
    OpCost cost;                           /* local shard, one micro-batch */
    bool has_bwd;                          /* some input needs a gradient */
    bool has_param;                        /* some input is a param */
} OpFacts;

typedef struct {
    const Graph *g;
    const Cluster *c;
    const Strategy *s;
    int m;                                 /* micro-batches */
    int gsize[1 << MESH_MAX_AXES];         /* group size of each axis mask */
    int64_t (*local)[IR_LETTERS];
    OpFacts *of;                           /* per op, made when first asked for (facts) */
    bool *of_made;
    const int *cons_off, *cons;            /* consumers of each tensor, ascending (the graph's) */
    /* params */
    Layout *home;                          /* layout the param is stored in */
    AxisMask *sync_axes;                   /* its gradient is partial over these */
    uint64_t *stages_using;                /* bit s: stage s consumes it */
    double *dt_bytes;                      /* per tensor: bytes of one element */
    /* shift_of: the ops and tensors found alike under the shift being
     * tried (stamped with its number), each asked about several times */
    int *op_seen, *t_seen, tries;
} Shared;

static int64_t local_bytes(const Shared *S, int t, const Layout *l)
{
    const Tensor *T = &S->g->tensors[t];
    int64_t n = dtype_bytes(T->dtype);
    for (int d = 0; d < T->ndim; d++) {
        int64_t e = T->shape[d];
        if (d == T->batch_dim) e /= S->m;
        e /= S->gsize[l->dim[d]];
        n *= e > 0 ? e : 1;
    }
    return n;
}

/* Axes of size 1 split nothing: they never appear in a layout, so no
 * collective is lowered over a group of one rank. */
static AxisMask live_axes(const Strategy *s)
{
    AxisMask m = 0;
    for (int a = 0; a < s->naxes; a++)
        if (s->axis_size[a] > 1) m |= 1 << a;
    return m;
}

static Layout operand_layout(const Strategy *s, int op, const char *letters)
{
    Layout l = {0};
    AxisMask live = live_axes(s);
    for (int d = 0; letters[d]; d++) l.dim[d] = s->ops[op].split[letters[d] - 'a'] & live;
    return l;
}

static uint32_t letters_of(const char *letters)
{
    uint32_t m = 0;
    for (; *letters; letters++) m |= 1u << (*letters - 'a');
    return m;
}

static AxisMask axes_of_letters(const Strategy *s, int op, uint32_t letters)
{
    AxisMask m = 0;
    for (uint32_t rest = letters & ((1ull << IR_LETTERS) - 1); rest; rest &= rest - 1)
        m |= s->ops[op].split[__builtin_ctz(rest)];
    return m & live_axes(s);
}

/* Statistics of a split reduction: how many small all-reduces per phase, and
 * their elements per statistic row, as the kernels make them. Vocabulary-
 * parallel cross-entropy (Megatron): max, sum of exponentials and target
 * logit in forward; the backward keeps no state, so it all-reduces max and
 * sum again. Synchronised batch norm: one all-reduce of (sum, sum of squares)
 * per channel forward, one of (sum x, sum x^2, sum dy, sum dy*x) backward. */
static void stat_counts(OpKind k, int *fwd, int *bwd, int *per_fwd, int *per_bwd)
{
    *fwd = *bwd = 0;
    *per_fwd = *per_bwd = 1;
    if (k == OP_CROSS_ENTROPY) { *fwd = 3; *bwd = 2; }
    if (k == OP_BATCHNORM) { *fwd = 1; *bwd = 1; *per_fwd = 2; *per_bwd = 4; }
}

/* The layout operand k of op i arrives in, and the axes its gradient is
 * partial over (the letters of the op that operand lacks): part of its
 * facts, and all a param's consumers are asked in shared_init (most of
 * them on stages copied from another, whose ops are never lowered). */
static Layout operand_arrival(const Shared *S, int i, int k, AxisMask *grad_partial)
{
    const Op *op = &S->g->ops[i];
    *grad_partial = axes_of_letters(S->s, i, op->letters_mask & ~letters_of(op->in_letters[k]));
    return operand_layout(S->s, i, op->in_letters[k]);
}

/* The facts of op i: the layouts its operands arrive in and its output
 * leaves in, what its gradients are partial over, its statistics and its
 * cost, for one micro-batch on its shard. Made on first use: a plan whose
 * stages repeat lowers a few of them, and copies the rest (shift_of). */
static const OpFacts *facts(const Shared *S, int i)
{
    OpFacts *f = &S->of[i];
    if (S->of_made[i]) return f;
    const Graph *g = S->g;
    const Strategy *s = S->s;
    const Op *op = &g->ops[i];
    memset(f, 0, sizeof *f);
    for (int k = 0; k < op->nin; k++) {
        f->in[k] = operand_arrival(S, i, k, &f->grad_partial[k]);
        if (g->tensors[op->in[k]].role == ROLE_PARAM) f->has_param = true;
    }
    f->has_bwd = g->tensors[op->out].needs_grad;
    f->out = operand_layout(s, i, op->out_letters);
    uint32_t summed = op->letters_mask & ~letters_of(op->out_letters) & ~op->reduce_mask;
    f->out.partial = axes_of_letters(s, i, summed);
    f->stat_axes = axes_of_letters(s, i, op->reduce_mask);
    f->stat_elems = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!(op->reduce_mask & (1u << (*p - 'a')))) f->stat_elems *= S->local[i][*p - 'a'];
    graph_op_cost(g, i, S->local[i], &f->cost);
    S->of_made[i] = true;
    return f;
}

static int shared_init(Shared *S, const Graph *g, const Cluster *c, const Strategy *s, Err *err)
{
    memset(S, 0, sizeof *S);
    S->g = g;
    S->c = c;
    S->s = s;
    S->m = s->microbatches;
    for (int mask = 0; mask < (1 << MESH_MAX_AXES); mask++) {
        int n = 1;
        for (int a = 0; a < s->naxes; a++)
            if (mask & (1 << a)) n *= s->axis_size[a];
        S->gsize[mask] = n;
    }

    /* consumers: the graph's */
    S->cons_off = g->cons_off;
    S->cons = g->cons;

    /* per-op local sizes; the rest of the facts when first asked for */
    S->local = xmalloc(sizeof *S->local * (g->nops ? g->nops : 1));
    S->of = xmalloc(sizeof *S->of * (g->nops ? g->nops : 1));
    S->of_made = xcalloc(g->nops ? g->nops : 1, sizeof *S->of_made);
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        int64_t *n = S->local[i];
        const AxisMask *split = s->ops[i].split;
        /* an op alike an earlier one and split as it is: the same sizes */
        if (op->form < i && !memcmp(split, s->ops[op->form].split, sizeof s->ops[i].split)) {
            memcpy(n, S->local[op->form], sizeof S->local[i]);
            continue;
        }
        /* the op's sizes, divided where a letter is (most are not) */
        memcpy(n, op->size, sizeof op->size);
        for (int l = 0; l < IR_LETTERS; l++) {
            if (!n[l] || (l != op->batch_letter && !split[l])) continue;
            if (l == op->batch_letter) n[l] /= S->m;
            if (split[l]) n[l] /= S->gsize[split[l]];
            if (n[l] < 1) n[l] = 1;
        }
    }

    /* params: home layout = first consumer's; sync axes = its gradient's partial axes */
    S->home = xcalloc(g->ntensors, sizeof *S->home);
    S->sync_axes = xcalloc(g->ntensors, sizeof *S->sync_axes);
    S->stages_using = xcalloc(g->ntensors, sizeof *S->stages_using);
    for (int t = 0; t < g->ntensors; t++) {
        if (g->tensors[t].role != ROLE_PARAM) continue;
        bool first = true;
        for (int ci = S->cons_off[t]; ci < S->cons_off[t + 1]; ci++) {
            int i = S->cons[ci];
            if (s->op_stage[i] < 64) S->stages_using[t] |= 1ull << s->op_stage[i];
            for (int k = 0; k < g->ops[i].nin; k++) {
                if (g->ops[i].in[k] != t) continue;
                AxisMask p;
                Layout in = operand_arrival(S, i, k, &p);
                if (first) {
                    S->home[t] = in;
                    S->sync_axes[t] = p;
                    first = false;
                } else if (p != S->sync_axes[t] ||
                           !layout_eq(&S->home[t], &in, g->tensors[t].ndim)) {
                    char a[64], b[64];
                    return err_set(err,
                        "param %s: ops %s and %s split it differently (its gradient would be "
                        "partial over \"%s\" from one and \"%s\" from the other, or held in "
                        "other shards); give both ops the same split of it",
                        g->tensors[t].name, g->ops[S->cons[S->cons_off[t]]].name, g->ops[i].name,
                        strategy_axes_name(s, S->sync_axes[t], a, sizeof a),
                        strategy_axes_name(s, p, b, sizeof b));
                }
            }
        }
        uint64_t st = S->stages_using[t];
        const ParamPolicy *pp = &s->params[t];
        if ((st & (st - 1)) && (pp->method == SYNC_PS || pp->shard != SHARD_NONE))
            return err_set(err,
                "param %s: used on several pipeline stages (a tied embedding), it is summed "
                "across them with an all-reduce; %s is not supported for it yet: give it "
                "{\"sync\": {\"method\": \"allreduce\"}, \"shard\": \"none\"}",
                g->tensors[t].name, pp->method == SYNC_PS ? "a parameter server" : "ZeRO sharding");
    }
    return 0;
}

static void shared_free(Shared *S)
{
    free(S->of);
    free(S->of_made);
    free(S->home);
    free(S->sync_axes);
    free(S->stages_using);
    free(S->op_seen);
    free(S->t_seen);
    /* S->local moves into the plan */
}

static int group_index(const Strategy *s, const int coord[MESH_MAX_AXES], AxisMask mask);

Layout ir_operand_layout(const Graph *g, const Strategy *s, int op, int k)
{
    const Op *o = &g->ops[op];
    if (k < o->nin) return operand_layout(s, op, o->in_letters[k]);
    Layout l = operand_layout(s, op, o->out_letters);
    uint32_t summed = o->letters_mask & ~letters_of(o->out_letters) & ~o->reduce_mask;
    l.partial = axes_of_letters(s, op, summed);
    return l;
}

int ir_group_index(const Strategy *s, const int coord[MESH_MAX_AXES], AxisMask mask)
{
    return group_index(s, coord, mask);
}

/* Index of a rank (by its coordinates) within its group along the axes in mask. */
static int group_index(const Strategy *s, const int coord[MESH_MAX_AXES], AxisMask mask)
{
    int idx = 0;
    for (int a = 0; a < s->naxes; a++)
        if (mask & (1 << a)) idx = idx * s->axis_size[a] + coord[a];
    return idx;
}

/* ----------------------------------------------------------------------------
 * Emitting one class's program
 *
 * A Ref names a value and the instruction that made it (-1: ready at the
 * start of the step, as params and loaded data are). */

typedef struct {
    int32_t instr;
    int32_t val;
} Ref;

#define NOREF ((Ref){ -1, -1 })

typedef struct {
    Ref ref;
    Layout layout;
} Conv;

#define CONV_MAX 4

typedef struct {
    Ref ref;
    Layout layout;           /* includes the partial axes */
    int64_t bytes;
    bool folded;             /* summed into another contribution already */
    bool spent;              /* only to be freed (a converted sum) */
    int next;
} Contrib;

typedef struct {
    int tensor;
    Ref grad;
    int32_t upd_grad;
} Deferred;

typedef struct {
    const Shared *S;
    Program *pr;
    int stage;               /* the class's pipeline rank */
    int chunk;               /* model chunk of the pass being lowered */
    int last_micro;          /* micro-batch whose backward runs last */
    int coord[MESH_MAX_AXES];
    /* per tensor on this stage */
    Ref *fwd_val;            /* [at(t, mb)]: the value of t as held here */
    Layout *val_layout;      /* layout of that value */
    int32_t *param_val;      /* params: VAL_PARAM value */
    int32_t *pgrad_val;      /* params: VAL_PARAM_GRAD value (the rank's whole local gradient) */
    int32_t *pshard_val;     /* params: its ZeRO gradient shard (-1: none) */
    /* per op and micro-batch: the values the forward read and wrote */
    int32_t *fwd_args;       /* [at(i, mb) * (IR_MAX_INPUTS + 1) + k], k == nin: out */
    /* per pass (one forward or backward of one micro-batch) */
    int pass;
    int *conv_pass, *conv_n;
    Conv *conv;              /* [t * CONV_MAX] */
    int *contrib_pass, *contrib_head;
    Contrib *contribs;
    int ncontribs, cap_contribs;
    int32_t *pgrad;          /* params: last bwd_weight instr of this micro-batch */
    int *pgrad_pass;
    int32_t *copy_vals;      /* [at(i, mb) * IR_MAX_INPUTS + c]: conversion copies op i made
                                for micro-batch mb (freed in its backward) */
    Deferred *tied;          /* params whose sync waits for the end of the step */
    Err *err;                /* the first conversion the lowering cannot express */
    bool failed;
    int ntied, cap_tied;
    int *ncopy;              /* [at(i, mb)]: how many */
    struct SchedList *sched; /* compact form: the passes of the schedule, in order */
    /* per micro-batch state is kept for the micro-batches lowered: all of
     * them, or the compact form's representatives */
    int nslot;
    int *slot;               /* [mb]: its place, -1: not lowered */
} Low;

/* Where tensor or op x keeps its state of micro-batch mb in the per
 * micro-batch arrays (fwd_val, fwd_args, copy_vals, ncopy). */
static size_t at(const Low *L, int x, int mb)
{
    return (size_t)x * L->nslot + L->slot[mb];
}

/* Grows one of a program's arrays. A plan of a thousand devices holds
 * hundreds of megabytes of instructions; asking for transparent huge pages
 * turns most of the page faults of filling them into a few. */
static void *grow(void *p, size_t bytes)
{
    p = xrealloc(p, bytes);
#ifdef MADV_HUGEPAGE
    const size_t huge = 2u << 20;
    if (bytes >= 2 * huge) {
        uintptr_t a = ((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1);
        uintptr_t e = ((uintptr_t)p + bytes) & ~(uintptr_t)(huge - 1);
        if (e > a) madvise((void *)a, e - a, MADV_HUGEPAGE);
    }
#endif
    return p;
}

static int32_t new_value(Low *L, ValueKind kind, int t, int mb, const Layout *l, AxisMask shard)
{
    Program *pr = L->pr;
    if (pr->nvalues == pr->cap_values) {
        pr->cap_values = pr->cap_values ? pr->cap_values * 2 : 1024;
        pr->values = grow(pr->values, sizeof *pr->values * pr->cap_values);
    }
    Value *v = &pr->values[pr->nvalues];
    memset(v, 0, sizeof *v);
    v->tensor = t;
    v->micro = mb;
    v->kind = kind;
    v->shard = shard;
    if (l) v->layout = *l;
    int64_t b = l ? local_bytes(L->S, t, l) : 0;
    if (shard) {
        int64_t e = b / dtype_bytes(L->S->g->tensors[t].dtype), D = L->S->gsize[shard];
        b = (e + D - 1) / D * dtype_bytes(L->S->g->tensors[t].dtype);
    }
    v->bytes = b;
    return pr->nvalues++;
}

static int32_t emit(Low *L, InstrKind kind, Phase ph, Why why, AxisMask axes, int op, int t,
                    int mb, int64_t bytes, const int32_t *deps, int ndeps, const int32_t *args,
                    int nargs)
{
    Program *pr = L->pr;
    if (pr->ninstrs == pr->cap_instrs) {
        pr->cap_instrs = pr->cap_instrs ? pr->cap_instrs * 2 : 1024;
        pr->instrs = grow(pr->instrs, sizeof *pr->instrs * pr->cap_instrs);
    }
    while (pr->ndeps + ndeps > pr->cap_deps) {
        pr->cap_deps = pr->cap_deps ? pr->cap_deps * 2 : 1024;
        pr->deps = grow(pr->deps, sizeof *pr->deps * pr->cap_deps);
    }
    while (pr->nargs + nargs > pr->cap_args) {
        pr->cap_args = pr->cap_args ? pr->cap_args * 2 : 1024;
        pr->args = grow(pr->args, sizeof *pr->args * pr->cap_args);
    }
    Instr *in = &pr->instrs[pr->ninstrs];
    memset(in, 0, sizeof *in);
    in->kind = kind;
    in->stream = (kind == I_COMPUTE || kind == I_ALLOC || kind == I_FREE) ? STREAM_COMPUTE
                                                                         : STREAM_COMM;
    in->phase = ph;
    in->why = why;
    in->axes = axes;
    in->op = op;
    in->tensor = t;
    in->micro = mb;
    in->peer = -1;
    in->bytes = bytes;
    in->dep0 = pr->ndeps;
    for (int i = 0; i < ndeps; i++) {
        bool dup = deps[i] < 0;
        for (int j = in->dep0; j < pr->ndeps && !dup; j++) dup = pr->deps[j] == deps[i];
        if (!dup) pr->deps[pr->ndeps++] = deps[i];
    }
    in->ndeps = pr->ndeps - in->dep0;
    in->arg0 = pr->nargs;
    for (int i = 0; i < nargs; i++) pr->args[pr->nargs++] = args[i];
    in->nargs = (uint8_t)nargs;
    in->behind = instr_may_run_behind(pr, in);
    return pr->ninstrs++;
}

bool instr_may_run_behind(const Program *pr, const Instr *in)
{
    if (in->nargs < 2) return false;
    const int32_t *a = &pr->args[in->arg0];
    int32_t dst = a[0], src = a[1];
    if (dst < 0 || src < 0) return false;
    const Value *D = &pr->values[dst], *S = &pr->values[src];
    switch ((InstrKind)in->kind) {
    case I_ALLREDUCE:
        return dst == src && in->compress == COMPRESS_NONE &&
               (in->why == WHY_GRAD_SYNC || in->why == WHY_TIED);
    case I_REDUCE_SCATTER:
        return D->shard != 0;
    case I_ALLGATHER:
        return S->shard != 0 || (dst == src && D->kind == VAL_PARAM);
    default:
        return false;
    }
}

bool instr_sends_copy(const Program *pr, const Instr *in)
{
    if (in->kind != I_SEND || in->nargs < 1 || pr->args[in->arg0] < 0) return false;
    int kind = pr->values[pr->args[in->arg0]].kind;
    return kind == VAL_PARAM || kind == VAL_PARAM_GRAD;
}

/* A compute instruction; op -1 with a tensor for work outside ops (sums, updates). */
static int32_t emit_compute(Low *L, int op, int t, Phase ph, int mb, double flops, double bytes,
                            bool recompute, const int32_t *deps, int ndeps, const int32_t *args,
                            int nargs)
{
    int32_t i = emit(L, I_COMPUTE, ph, WHY_NONE, 0, op, t, mb, 0, deps, ndeps, args, nargs);
    L->pr->instrs[i].flops = (float)flops;
    L->pr->instrs[i].mem_bytes = (float)bytes;
    L->pr->instrs[i].recompute = recompute;
    return i;
}

/* Compresses gradient sync i, which can change whether it runs behind. */
static void set_compress(Low *L, int32_t i, Compress c)
{
    Instr *in = &L->pr->instrs[i];
    in->compress = (uint8_t)c;
    in->behind = instr_may_run_behind(L->pr, in);
}

/* A collective from value src into a new value (or in place when dst >= 0). */
static Ref emit_coll(Low *L, InstrKind kind, Phase ph, Why why, AxisMask axes, int op, int t,
                     int mb, int64_t bytes, Ref src, int32_t dst)
{
    int32_t args[2] = { dst, src.val };
    int32_t i = emit(L, kind, ph, why, axes, op, t, mb, bytes, &src.instr, 1, args, 2);
    return (Ref){ i, dst };
}

static void emit_mem(Low *L, InstrKind kind, int32_t val, int32_t dep)
{
    const Value *v = &L->pr->values[val];
    emit(L, kind, PH_FWD, WHY_NONE, 0, -1, v->tensor, v->micro, v->bytes, &dep, 1, &val, 1);
}

/* Converts value src of tensor t, held in layout `from`, into `to`. Partial
 * axes of `to` are left partial (a parameter gradient waiting for its sync);
 * every other partial axis is summed. Returns src when nothing moved. */
/* A dim split over several axes holds its pieces in mesh order, the first
 * axis outermost. Only the innermost axes of a dim can be added, removed or
 * moved as whole blocks; anything else would interleave the pieces. */
static bool inner_of(AxisMask outer, AxisMask inner)
{
    if (!outer || !inner) return true;
    int hi = 31 - __builtin_clz((unsigned)outer), lo = __builtin_ctz((unsigned)inner);
    return lo > hi;
}

static void cannot_nest(Low *L, int t, AxisMask moved, AxisMask kept, const char *what)
{
    if (L->failed) return;
    L->failed = true;
    char a[96], b[96];
    err_set(L->err, "tensor %s: %s axis %s of a dim also split over %s, which is inner to it: "
            "only the innermost axes of a dim can be gathered, scattered or moved; list %s "
            "after %s in the mesh, or split that dim over one axis",
            L->S->g->tensors[t].name, what, strategy_axes_name(L->S->s, moved, a, sizeof a),
            strategy_axes_name(L->S->s, kept, b, sizeof b), a, b);
}

static Ref convert(Low *L, int t, int mb, Layout from, const Layout *to, Ref src, ValueKind vk,
                   int op, Phase ph, Why why)
{
    const Shared *S = L->S;
    int nd = S->g->tensors[t].ndim;
    for (int d = 0; d < nd; d++) {
        /* what this conversion takes off each dim, and what it puts on */
        AxisMask off = from.dim[d] & ~to->dim[d], on = to->dim[d] & ~from.dim[d];
        AxisMask stay = from.dim[d] & to->dim[d];
        if (!inner_of(stay, off)) cannot_nest(L, t, off, stay, "taking off");
        if (!inner_of(stay, on)) cannot_nest(L, t, on, stay, "putting on");
    }
    Layout cur = from;
    Ref last = src;

    /* 1. partial sums: reduce_scatter onto a dim the target splits, else all_reduce */
    AxisMask sum = cur.partial & ~to->partial;
    AxisMask held = layout_axes(&cur, nd);
    AxisMask ar = 0, rs[IR_MAX_DIMS] = {0};
    for (int a = 0; a < S->s->naxes; a++) {
        AxisMask bit = 1 << a;
        if (!(sum & bit)) continue;
        int d = -1;
        for (int e = 0; e < nd && !(held & bit); e++)
            if (to->dim[e] & bit) d = e;
        if (d >= 0) rs[d] |= bit;
        else ar |= bit;
    }
    if (ar) {
        int64_t b = local_bytes(S, t, &cur);
        cur.partial &= ~ar;
        last = emit_coll(L, I_ALLREDUCE, ph, why, ar, op, t, mb, b, last,
                         new_value(L, vk, t, mb, &cur, 0));
    }
    for (int d = 0; d < nd; d++) {
        if (!rs[d]) continue;
        int64_t b = local_bytes(S, t, &cur);
        cur.dim[d] |= rs[d];
        cur.partial &= ~rs[d];
        last = emit_coll(L, I_REDUCE_SCATTER, ph, why, rs[d], op, t, mb, b, last,
                         new_value(L, vk, t, mb, &cur, 0));
    }

    /* 2. split on the wrong dim: all_to_all */
    for (int a = 0; a < S->s->naxes; a++) {
        AxisMask bit = 1 << a;
        int from_d = -1, to_d = -1;
        for (int d = 0; d < nd; d++) {
            if (cur.dim[d] & bit) from_d = d;
            if (to->dim[d] & bit) to_d = d;
        }
        if (from_d < 0 || to_d < 0 || from_d == to_d) continue;
        int64_t b = local_bytes(S, t, &cur);
        cur.dim[from_d] &= ~bit;
        cur.dim[to_d] |= bit;
        last = emit_coll(L, I_ALL_TO_ALL, ph, why, bit, op, t, mb, b, last,
                         new_value(L, vk, t, mb, &cur, 0));
    }

    /* 3. split but wanted whole: all_gather (bytes of the gathered output) */
    AxisMask want = layout_axes(to, nd), ag = 0;
    for (int d = 0; d < nd; d++) {
        ag |= cur.dim[d] & ~want;
        cur.dim[d] &= want;
    }
    if (ag)
        last = emit_coll(L, I_ALLGATHER, ph, why, ag, op, t, mb, local_bytes(S, t, &cur), last,
                         new_value(L, vk, t, mb, &cur, 0));

    /* 4. wanted split but held whole: a local slice, free; the consumer reads
     * its part of the value (the layouts say which part) */
    return last;
}

/* ----------------------------------------------------------------------------
 * Forward */

static bool zero3(const Shared *S, int t)
{
    return S->g->tensors[t].role == ROLE_PARAM && S->s->params[t].shard == SHARD_ZERO3 &&
           S->sync_axes[t];
}

/* ZeRO-2 and -3 reduce-scatter a param's gradient every micro-batch into
 * the rank's shard, so the whole gradient lives only from the backward
 * that makes it to its reduce-scatter: a value of that pass (pass_grad),
 * not one of the step. */
static bool grad_per_pass(const Shared *S, int t)
{
    const ParamPolicy *pp = &S->s->params[t];
    return S->g->tensors[t].role == ROLE_PARAM && S->sync_axes[t] && pp->shard >= SHARD_ZERO2 &&
           pp->method != SYNC_SFB && pp->method != SYNC_PS;
}

/* The value param t's gradient accumulates into in this pass: the step's,
 * or (grad_per_pass) one made for the pass when first written, zeroed then;
 * *fresh says it was made now (the caller allocates it after its writer). */
static int32_t pass_grad(Low *L, int t, int mb, bool *fresh)
{
    *fresh = false;
    if (!grad_per_pass(L->S, t) || L->pgrad_pass[t] == L->pass) return L->pgrad_val[t];
    L->pgrad_val[t] = new_value(L, VAL_PARAM_GRAD, t, mb, &L->S->home[t], 0);
    L->pgrad_pass[t] = L->pass;
    L->pgrad[t] = -1;
    *fresh = true;
    return L->pgrad_val[t];
}

/* A param as op i needs it: ZeRO-3 gathers it for this use (the copy is
 * freed after the use); a use in another layout converts it. */
static Ref param_use(Low *L, int i, int k, int mb, Phase ph, bool *gathered)
{
    const Shared *S = L->S;
    int t = S->g->ops[i].in[k];
    const Layout *need = &facts(S, i)->in[k];
    Ref v = { -1, L->param_val[t] };
    *gathered = false;
    if (zero3(S, t)) {
        v = emit_coll(L, I_ALLGATHER, ph, WHY_PARAM_GATHER, S->sync_axes[t], i, t, mb,
                      local_bytes(S, t, &S->home[t]), v,
                      new_value(L, VAL_PARAM_USE, t, mb, &S->home[t], 0));
        emit_mem(L, I_ALLOC, v.val, v.instr);
        *gathered = true;
    }
    if (!layout_eq(&S->home[t], need, S->g->tensors[t].ndim))
        v = convert(L, t, mb, S->home[t], need, v, VAL_PARAM_USE, i, ph, WHY_RESHARD);
    return v;
}

/* The value of input k of op i in the layout the op needs, for micro-batch mb. */
static Ref input_value(Low *L, int i, int k, int mb)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    int t = g->ops[i].in[k];
    const Tensor *T = &g->tensors[t];
    const Layout *need = &facts(S, i)->in[k];

    if (T->role == ROLE_PARAM) {
        bool gathered;
        return param_use(L, i, k, mb, PH_FWD, &gathered);
    }
    if (T->role == ROLE_INPUT || T->role == ROLE_LABEL) {
        /* loaded per micro-batch in the layout its consumer needs */
        Ref *d = &L->fwd_val[at(L, t, mb)];
        if (d->val >= 0 && layout_eq(&L->pr->values[d->val].layout, need, T->ndim)) return *d;
        d->val = new_value(L, VAL_DATA, t, mb, need, 0);
        return *d;
    }

    /* an activation: produced here or received; converted once per pass and layout */
    if (L->conv_pass[t] != L->pass) {
        L->conv_pass[t] = L->pass;
        L->conv_n[t] = 0;
    }
    Conv *cv = &L->conv[t * CONV_MAX];
    for (int c = 0; c < L->conv_n[t]; c++)
        if (layout_eq(&cv[c].layout, need, T->ndim)) return cv[c].ref;
    Ref src = L->fwd_val[at(L, t, mb)];
    Ref v = convert(L, t, mb, L->val_layout[t], need, src, VAL_ACT, i, PH_FWD, WHY_RESHARD);
    if (v.val != src.val) {
        emit_mem(L, I_ALLOC, v.val, v.instr);
        /* the copy lives until op i's backward */
        int *n = &L->ncopy[at(L, i, mb)];
        if (*n < IR_MAX_INPUTS) L->copy_vals[at(L, i, mb) * IR_MAX_INPUTS + (*n)++] = v.val;
        if (L->conv_n[t] < CONV_MAX) cv[L->conv_n[t]++] = (Conv){ v, *need };
    }
    return v;
}

/* Frees the conversion copies op i made for micro-batch mb. */
static void release_copies(Low *L, int i, int mb, int32_t after)
{
    size_t x = at(L, i, mb);
    for (int c = 0; c < L->ncopy[x]; c++)
        emit_mem(L, I_FREE, L->copy_vals[x * IR_MAX_INPUTS + c], after);
}

/* Frees the ZeRO-3 gathers op i made for one use. */
static void release_gathers(Low *L, const int32_t *vals, int n, int32_t after)
{
    for (int k = 0; k < n; k++) emit_mem(L, I_FREE, vals[k], after);
}

static void forward_op(Low *L, int i, int mb, bool recompute)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    const Op *op = &g->ops[i];
    const OpFacts *f = facts(S, i);
    int32_t deps[IR_MAX_INPUTS], args[IR_MAX_INPUTS + 1], gathered[IR_MAX_INPUTS];
    int ng = 0;
    L->ncopy[at(L, i, mb)] = 0;
    for (int k = 0; k < op->nin; k++) {
        Ref r = input_value(L, i, k, mb);
        deps[k] = r.instr;
        args[k + 1] = r.val;
        if (zero3(S, op->in[k])) gathered[ng++] = r.val;
    }
    args[0] = new_value(L, VAL_ACT, op->out, mb, &f->out, 0);
    int32_t c = emit_compute(L, i, op->out, PH_FWD, mb, f->cost.flops[COST_FWD],
                             f->cost.bytes[COST_FWD], recompute, deps, op->nin, args, op->nin + 1);
    emit_mem(L, I_ALLOC, args[0], c);
    int nf, nb, pf, pb;
    stat_counts(op->kind, &nf, &nb, &pf, &pb);
    if (f->stat_axes)
        for (int r = 0; r < nf; r++)
            c = emit(L, I_ALLREDUCE, PH_FWD, WHY_STATS, f->stat_axes, i, op->out, mb,
                     f->stat_elems * pf * 4, &c, 1, args, 1);
    release_gathers(L, gathered, ng, c);

    /* the backward reads what the forward read and wrote */
    int32_t *fa = &L->fwd_args[at(L, i, mb) * (IR_MAX_INPUTS + 1)];
    for (int k = 0; k < op->nin; k++) fa[k] = zero3(S, op->in[k]) ? -1 : args[k + 1];
    fa[op->nin] = args[0];
    L->fwd_val[at(L, op->out, mb)] = (Ref){ c, args[0] };
    L->val_layout[op->out] = f->out;
}

/* The first consumer of t in the chunk of consumer S->cons[ci]: the receiver
 * of a pipeline transfer takes t in the layout that one needs. */
static bool first_in_chunk(const Shared *S, int t, int ci)
{
    int c = S->s->op_chunk[S->cons[ci]];
    for (int e = S->cons_off[t]; e < ci; e++)
        if (S->s->op_chunk[S->cons[e]] == c) return false;
    return true;
}

/* Sends the activations this chunk made that later chunks consume, one
 * transfer per consuming chunk, to the stage that runs it. */
static void send_forward(Low *L, int i, int mb)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    int t = g->ops[i].out;
    for (int ci = S->cons_off[t]; ci < S->cons_off[t + 1]; ci++) {
        int j = S->cons[ci];
        if (S->s->op_chunk[j] <= L->chunk || !first_in_chunk(S, t, ci)) continue;
        int st = S->s->op_stage[j];
        int k = 0;
        while (g->ops[j].in[k] != t) k++;
        const Layout *need = &facts(S, j)->in[k];
        Ref v = convert(L, t, mb, L->val_layout[t], need, L->fwd_val[at(L, t, mb)], VAL_ACT, j,
                        PH_FWD, WHY_RESHARD);
        int32_t sd = emit(L, I_SEND, PH_FWD, WHY_PIPELINE, 1 << S->s->pp_axis, j, t, mb,
                          local_bytes(S, t, need), &v.instr, 1, &v.val, 1);
        L->pr->instrs[sd].peer = st;
    }
}

/* Receives, before op i needs them, activations made in earlier chunks. */
static void recv_forward(Low *L, int i, int mb)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    const Op *op = &g->ops[i];
    for (int k = 0; k < op->nin; k++) {
        int t = op->in[k];
        const Tensor *T = &g->tensors[t];
        if (T->role != ROLE_ACT || T->producer < 0) continue;
        int ps = S->s->op_stage[T->producer];
        if (S->s->op_chunk[T->producer] == L->chunk || L->fwd_val[at(L, t, mb)].val >= 0)
            continue;
        /* the first consumer in this chunk fixes the layout it travels in */
        const Layout *l = &facts(S, i)->in[k];
        int32_t v = new_value(L, VAL_ACT, t, mb, l, 0);
        int32_t r = emit(L, I_RECV, PH_FWD, WHY_PIPELINE, 1 << S->s->pp_axis, i, t, mb,
                         local_bytes(S, t, l), NULL, 0, &v, 1);
        L->pr->instrs[r].peer = ps;
        emit_mem(L, I_ALLOC, v, r);
        L->fwd_val[at(L, t, mb)] = (Ref){ r, v };
        L->val_layout[t] = *l;
    }
}

/* ----------------------------------------------------------------------------
 * Backward */

static void add_contrib(Low *L, int t, Ref ref, const Layout *l, bool spent)
{
    if (L->contrib_pass[t] != L->pass) {
        L->contrib_pass[t] = L->pass;
        L->contrib_head[t] = -1;
    }
    if (L->ncontribs == L->cap_contribs) {
        L->cap_contribs = L->cap_contribs ? L->cap_contribs * 2 : 256;
        L->contribs = xrealloc(L->contribs, sizeof *L->contribs * L->cap_contribs);
    }
    L->contribs[L->ncontribs] = (Contrib){ ref, *l, L->pr->values[ref.val].bytes, false, spent,
                                           L->contrib_head[t] };
    L->contrib_head[t] = L->ncontribs++;
}

/* Sums the gradient contributions of activation t (local ones and those
 * received from later stages) and converts them to `want`. Returns NOREF for
 * the loss, whose gradient is seeded (the kernel starts from 1). */
static Ref gradient_value(Low *L, int t, int mb, const Layout *want)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    int nd = g->tensors[t].ndim;
    double eb = dtype_bytes(g->tensors[t].dtype);

    /* the gradient of a tensor made in this chunk from later chunks arrives by
     * recv, in the layout t was sent in (a tensor received from an earlier
     * chunk sends its gradient back there: later chunks send theirs to its
     * producer too, not here) */
    int p = g->tensors[t].producer;
    for (int ci = S->cons_off[t]; p >= 0 && S->s->op_chunk[p] == L->chunk &&
                                  ci < S->cons_off[t + 1]; ci++) {
        int j = S->cons[ci];
        if (S->s->op_chunk[j] <= L->chunk || !first_in_chunk(S, t, ci)) continue;
        int st = S->s->op_stage[j];
        int k = 0;
        while (g->ops[j].in[k] != t) k++;
        int32_t v = new_value(L, VAL_GRAD, t, mb, &facts(S, j)->in[k], 0);
        int32_t r = emit(L, I_RECV, PH_BWD_DATA, WHY_PIPELINE, 1 << S->s->pp_axis, j, t, mb,
                         L->pr->values[v].bytes, NULL, 0, &v, 1);
        L->pr->instrs[r].peer = st;
        emit_mem(L, I_ALLOC, v, r);
        add_contrib(L, t, (Ref){ r, v }, &facts(S, j)->in[k], false);
    }
    if (L->contrib_pass[t] != L->pass) return NOREF;

    /* sum contributions that share a layout locally, convert each group, then sum */
    Ref outs[16];
    int32_t spent[16];
    int nouts = 0, nspent = 0;
    for (int c = L->contrib_head[t]; c >= 0; c = L->contribs[c].next) {
        Contrib *a = &L->contribs[c];
        if (a->folded || a->spent) continue;
        int32_t deps[16], args[17];
        int n = 0;
        deps[n] = a->ref.instr;
        args[++n] = a->ref.val;
        for (int e = a->next; e >= 0; e = L->contribs[e].next) {
            Contrib *b = &L->contribs[e];
            if (!b->folded && !b->spent && layout_eq(&a->layout, &b->layout, nd) && n < 16) {
                deps[n] = b->ref.instr;
                args[++n] = b->ref.val;
                b->folded = true;
            }
        }
        Ref src = a->ref;
        if (n > 1) {   /* the local sum rides on the compute stream */
            args[0] = new_value(L, VAL_GRAD, t, mb, &a->layout, 0);
            int32_t c2 = emit_compute(L, -1, t, PH_BWD_DATA, mb, (n - 1) * a->bytes / eb,
                                      (n + 1) * (double)a->bytes, false, deps, n, args, n + 1);
            emit_mem(L, I_ALLOC, args[0], c2);
            src = (Ref){ c2, args[0] };
            if (nspent < 16) spent[nspent++] = args[0];
        }
        Ref v = convert(L, t, mb, a->layout, want, src, VAL_GRAD, g->tensors[t].producer,
                        PH_BWD_DATA, WHY_RESHARD);
        if (v.val != src.val) {
            emit_mem(L, I_ALLOC, v.val, v.instr);
            if (nspent < 16) spent[nspent++] = v.val;
        }
        if (nouts < 16) outs[nouts++] = v;
    }
    /* sums and converted buffers are freed with the contributions */
    for (int c = 0; c < nspent; c++) add_contrib(L, t, (Ref){ -1, spent[c] }, want, true);
    if (nouts == 1) return outs[0];
    int32_t deps[16], args[17];
    args[0] = new_value(L, VAL_GRAD, t, mb, want, 0);
    for (int c = 0; c < nouts; c++) {
        deps[c] = outs[c].instr;
        args[c + 1] = outs[c].val;
    }
    double b = (double)L->pr->values[args[0]].bytes;
    int32_t c = emit_compute(L, -1, t, PH_BWD_DATA, mb, (nouts - 1) * b / eb, (nouts + 1) * b,
                             false, deps, nouts, args, nouts + 1);
    emit_mem(L, I_ALLOC, args[0], c);
    add_contrib(L, t, (Ref){ c, args[0] }, want, true);
    return (Ref){ c, args[0] };
}

/* Frees every gradient buffer of t held in this pass, after instruction
 * `after`. */
static void free_contribs(Low *L, int t, int32_t after)
{
    if (L->contrib_pass[t] != L->pass) return;
    for (int c = L->contrib_head[t]; c >= 0; c = L->contribs[c].next)
        emit_mem(L, I_FREE, L->contribs[c].ref.val, after);
    L->contrib_pass[t] = -1;
}

static double update_flops(const Strategy *s)
{
    return s->optimizer == OPT_ADAM ? 12.0 : 4.0;   /* per element: Adam, SGD with momentum */
}

/* PowerSGD sees the local gradient as a matrix: its first dim by the rest. */
static void powersgd_dims(const Shared *S, int t, int64_t *rows, int64_t *cols)
{
    const Tensor *T = &S->g->tensors[t];
    const Layout *h = &S->home[t];
    *rows = T->ndim ? T->shape[0] / S->gsize[h->dim[0]] : 1;
    *cols = 1;
    for (int d = 1; d < T->ndim; d++) *cols *= T->shape[d] / S->gsize[h->dim[d]];
}

/* The compressed size of a gradient sync payload of `bytes` for param t. */
static int64_t compressed(const Shared *S, int t, int64_t bytes)
{
    const Tensor *T = &S->g->tensors[t];
    const ParamPolicy *pp = &S->s->params[t];
    int64_t elems = bytes / dtype_bytes(T->dtype);
    switch ((Compress)pp->compress) {
    case COMPRESS_FP16: return elems * 2;
    case COMPRESS_INT8: return elems + 4;              /* codes plus one scale */
    case COMPRESS_POWERSGD: {
        int64_t rows, cols;
        powersgd_dims(S, t, &rows, &cols);
        return (int64_t)pp->powersgd_rank * (rows + cols) * 4;
    }
    default: return bytes;
    }
}

/* Bytes of flat part k of n parts of a buffer of `elems` elements. */
static int64_t part_bytes(int64_t elems, int k, int n, int eb)
{
    return (elems / n + (k < elems % n ? 1 : 0)) * eb;
}

/* Parameter server: every worker pushes each shard of the gradient to the
 * shard's server; a server sums what D-1 workers pushed into its own
 * gradient, steps the optimizer on its shard and sends it back. */
static void sync_ps(Low *L, int t, Ref grad)
{
    const Shared *S = L->S;
    const Strategy *s = S->s;
    const ParamPolicy *pp = &s->params[t];
    AxisMask ax = S->sync_axes[t];
    int D = S->gsize[ax], eb = dtype_bytes(S->g->tensors[t].dtype);
    int64_t elems = local_bytes(S, t, &S->home[t]) / eb;
    int me = group_index(s, L->coord, ax);
    int32_t param = L->param_val[t], pg = grad.val;
    for (int k = 0; k < pp->ps_shards; k++) {
        int srv = pp->ps_placement[k];
        int64_t b = part_bytes(elems, k, pp->ps_shards, eb);
        if (srv == me) {
            int32_t deps[PS_MAX_SHARDS + 1024], args[1024 + 2];
            int nd = 0, na = 0;
            deps[nd++] = grad.instr;
            args[na++] = param;
            args[na++] = pg;
            for (int w = 0; w < D; w++) {
                if (w == srv) continue;
                int32_t v = new_value(L, VAL_PARAM_GRAD, t, -1, &S->home[t], 0);
                int32_t r = emit(L, I_RECV, PH_UPDATE, WHY_PS, ax, -1, t, -1, b, NULL, 0, &v, 1);
                L->pr->instrs[r].peer = w;
                L->pr->instrs[r].part = (int16_t)k;
                L->pr->instrs[r].nparts = (int16_t)pp->ps_shards;
                if (nd < 1024) deps[nd++] = r;
                if (na < 1024) args[na++] = v;
            }
            int32_t u = emit_compute(L, -1, t, PH_UPDATE, -1, (double)(b / eb) * (update_flops(s) + D - 1),
                                     (double)b * (D + 3), false, deps, nd, args, na);
            L->pr->instrs[u].part = (int16_t)k;
            L->pr->instrs[u].nparts = (int16_t)pp->ps_shards;
            for (int w = 0; w < D; w++) {
                if (w == srv) continue;
                int32_t sd = emit(L, I_SEND, PH_UPDATE, WHY_PS, ax, -1, t, -1, b, &u, 1, &param, 1);
                L->pr->instrs[sd].peer = w;
                L->pr->instrs[sd].part = (int16_t)k;
                L->pr->instrs[sd].nparts = (int16_t)pp->ps_shards;
            }
        } else {
            int32_t sd = emit(L, I_SEND, PH_UPDATE, WHY_PS, ax, -1, t, -1, b, &grad.instr, 1, &pg, 1);
            int32_t r = emit(L, I_RECV, PH_UPDATE, WHY_PS, ax, -1, t, -1, b, &sd, 1, &param, 1);
            Instr *x = &L->pr->instrs[sd], *y = &L->pr->instrs[r];
            x->peer = y->peer = srv;
            x->part = y->part = (int16_t)k;
            x->nparts = y->nparts = (int16_t)pp->ps_shards;
        }
    }
}

static void param_update(Low *L, int t, Ref last, int32_t upd_grad);

/* Synchronises param t's gradient (made by instruction `grad`). `final` is
 * the last micro-batch of the step: accumulate-then-sync methods run then;
 * ZeRO-2/3 reduce-scatter every micro-batch. */
static void sync_param(Low *L, int t, int mb, int32_t grad, bool final)
{
    const Shared *S = L->S;
    const Strategy *s = S->s;
    const ParamPolicy *pp = &s->params[t];
    AxisMask ax = S->sync_axes[t];
    int64_t b = local_bytes(S, t, &S->home[t]);
    bool per_micro = pp->shard == SHARD_ZERO2 || pp->shard == SHARD_ZERO3;
    bool own = grad_per_pass(S, t);
    if (own) {
        /* no backward of this pass wrote it: reduce-scatter zeros */
        bool fresh;
        int32_t v = pass_grad(L, t, mb, &fresh);
        if (fresh) emit_mem(L, I_ALLOC, v, -1);
    }
    Ref last = { grad, L->pgrad_val[t] };
    int32_t upd_grad = L->pgrad_val[t];

    if (pp->method == SYNC_SFB) {
        if (!final) return;     /* factor all-gathers in backward made the whole gradient */
    } else if (ax && pp->method == SYNC_PS) {
        if (final) sync_ps(L, t, last);
        return;
    } else if (ax && (per_micro || pp->shard == SHARD_ZERO1)) {
        if (pp->shard == SHARD_ZERO1 && !final) return;
        /* each micro-batch's reduce-scatter adds into the rank's gradient
         * shard and clears the whole gradient for the next micro-batch */
        last = emit_coll(L, I_REDUCE_SCATTER, PH_BWD_WEIGHT, WHY_GRAD_SYNC, ax, -1, t, mb,
                         compressed(S, t, b), last, L->pshard_val[t]);
        set_compress(L, last.instr, pp->compress);
        if (own) emit_mem(L, I_FREE, L->pgrad_val[t], last.instr);
        upd_grad = L->pshard_val[t];
        if (!final) return;
    } else if (ax) {
        if (!final) return;
        if (pp->compress == COMPRESS_POWERSGD) {
            /* two small all-reduces: P = M Q (rows x r), then Q = M^T P (cols x r) */
            int64_t rows, cols;
            powersgd_dims(S, t, &rows, &cols);
            last = emit_coll(L, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, ax, -1, t, mb,
                             (int64_t)pp->powersgd_rank * rows * 4, last, last.val);
            set_compress(L, last.instr, pp->compress);
            last = emit_coll(L, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, ax, -1, t, mb,
                             (int64_t)pp->powersgd_rank * cols * 4, last, last.val);
        } else {
            last = emit_coll(L, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_GRAD_SYNC, ax, -1, t, mb,
                             compressed(S, t, b), last, last.val);
        }
        set_compress(L, last.instr, pp->compress);
    } else if (!final) {
        return;
    }

    /* a param used on several pipeline stages (tied embeddings) is summed
     * across them after the pipeline has drained, as Megatron-LM does: inline,
     * the last stage would wait in it for a first stage that still waits for
     * the last stage's gradients */
    uint64_t st = S->stages_using[t];
    if (st & (st - 1)) {
        if (L->ntied < L->cap_tied)
            L->tied[L->ntied++] = (Deferred){ t, last, upd_grad };
        return;
    }
    param_update(L, t, last, upd_grad);
}

/* The tied-parameter sums and updates deferred to the end of the step. */
static void sync_tied(Low *L)
{
    const Strategy *s = L->S->s;
    for (int k = 0; k < L->ntied; k++) {
        Deferred *d = &L->tied[k];
        int t = d->tensor;
        Ref last = emit_coll(L, I_ALLREDUCE, PH_BWD_WEIGHT, WHY_TIED, 1 << s->pp_axis, -1, t, -1,
                             local_bytes(L->S, t, &L->S->home[t]), d->grad, d->grad.val);
        L->pr->instrs[last.instr].peer = (int32_t)L->S->stages_using[t];
        param_update(L, t, last, d->upd_grad);
    }
}

/* Optimizer step on what this rank owns, then re-assembly of ZeRO-1/2 params. */
static void param_update(Low *L, int t, Ref last, int32_t upd_grad)
{
    const Shared *S = L->S;
    const Strategy *s = S->s;
    const ParamPolicy *pp = &s->params[t];
    AxisMask ax = S->sync_axes[t];
    int64_t b = local_bytes(S, t, &S->home[t]);
    int D = S->gsize[ax];
    int64_t elems = b / dtype_bytes(S->g->tensors[t].dtype);
    bool sharded = ax && pp->shard != SHARD_NONE;
    int64_t own = sharded ? (elems + D - 1) / D : elems;
    int32_t args[2] = { L->param_val[t], upd_grad };
    int32_t u = emit_compute(L, -1, t, PH_UPDATE, -1, (double)own * update_flops(s),
                             (double)own * dtype_bytes(S->g->tensors[t].dtype) * 4, false,
                             &last.instr, 1, args, 2);
    if (sharded && (pp->shard == SHARD_ZERO1 || pp->shard == SHARD_ZERO2))
        emit_coll(L, I_ALLGATHER, PH_UPDATE, WHY_PARAM_GATHER, ax, -1, t, -1, b,
                  (Ref){ u, L->param_val[t] }, L->param_val[t]);
}

/* Runs after the backward of op i: a param whose first use on this stage is
 * op i has all of this micro-batch's gradient now. */
static void params_ready(Low *L, int i, int mb)
{
    const Shared *S = L->S;
    const Op *op = &S->g->ops[i];
    for (int k = 0; k < op->nin; k++) {
        int t = op->in[k];
        if (S->g->tensors[t].role != ROLE_PARAM) continue;
        int first = -1;
        for (int ci = S->cons_off[t]; ci < S->cons_off[t + 1] && first < 0; ci++)
            if (S->s->op_stage[S->cons[ci]] == L->stage) first = S->cons[ci];
        if (first != i) continue;
        bool dup = false;     /* a param read twice by this op is synced once */
        for (int e = 0; e < k; e++) dup |= op->in[e] == t;
        if (dup) continue;
        sync_param(L, t, mb, L->pgrad_pass[t] == L->pass ? L->pgrad[t] : -1, mb == L->last_micro);
    }
}

static void backward_op(Low *L, int i, int mb)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    const Op *op = &g->ops[i];
    const OpFacts *f = facts(S, i);
    int t_out = op->out, nin = op->nin;
    const int32_t *fa = &L->fwd_args[at(L, i, mb) * (IR_MAX_INPUTS + 1)];

    if (!f->has_bwd) {
        release_copies(L, i, mb, -1);
        emit_mem(L, I_FREE, fa[nin], -1);
        return;
    }
    Layout want = f->out;
    want.partial = 0;           /* the gradient of a partial sum is the whole gradient */
    Ref dy = gradient_value(L, t_out, mb, &want);

    /* args: dout, out, inputs (ZeRO-3 params gathered again), then gradients */
    int32_t args[2 + 2 * IR_MAX_INPUTS], deps[IR_MAX_INPUTS + 1], gathered[IR_MAX_INPUTS];
    int nd = 0, ng = 0;
    args[0] = dy.val;
    args[1] = fa[nin];
    deps[nd++] = dy.instr;
    for (int k = 0; k < nin; k++) {
        args[2 + k] = fa[k];
        if (zero3(S, op->in[k])) {
            bool gd;
            Ref p = param_use(L, i, k, mb, PH_BWD_DATA, &gd);
            args[2 + k] = p.val;
            deps[nd++] = p.instr;
            if (gd) gathered[ng++] = p.val;
        }
        args[2 + nin + k] = -1;
    }

    Ref last = dy;
    /* input gradients */
    if (f->cost.flops[COST_BWD_DATA] > 0 || f->cost.bytes[COST_BWD_DATA] > 0) {
        int32_t grads[IR_MAX_INPUTS];
        Layout gl[IR_MAX_INPUTS];
        for (int k = 0; k < nin; k++) {
            int t = op->in[k];
            const Tensor *T = &g->tensors[t];
            grads[k] = -1;
            if (!T->needs_grad || T->role == ROLE_PARAM) continue;
            bool dup = false;
            for (int e = 0; e < k; e++) dup |= op->in[e] == t;
            if (dup) {        /* read twice: both reads' gradients add into one buffer */
                for (int e = 0; e < k; e++)
                    if (op->in[e] == t) args[2 + nin + k] = args[2 + nin + e];
                continue;
            }
            gl[k] = f->in[k];
            gl[k].partial = f->grad_partial[k];
            grads[k] = new_value(L, VAL_GRAD, t, mb, &gl[k], 0);
            args[2 + nin + k] = grads[k];
        }
        int32_t c = emit_compute(L, i, t_out, PH_BWD_DATA, mb, f->cost.flops[COST_BWD_DATA],
                                 f->cost.bytes[COST_BWD_DATA], false, deps, nd, args, 2 + 2 * nin);
        int nf, nb, pf, pb;
        stat_counts(op->kind, &nf, &nb, &pf, &pb);
        if (f->stat_axes)
            for (int r = 0; r < nb; r++)
                c = emit(L, I_ALLREDUCE, PH_BWD_DATA, WHY_STATS, f->stat_axes, i, t_out, mb,
                         f->stat_elems * pb * 4, &c, 1, args + 1, 1);
        last = (Ref){ c, -1 };
        for (int k = 0; k < nin; k++) {
            if (grads[k] < 0) continue;
            emit_mem(L, I_ALLOC, grads[k], c);
            add_contrib(L, op->in[k], (Ref){ c, grads[k] }, &gl[k], false);
        }
    }
    /* weight gradients */
    if (f->has_param && f->cost.flops[COST_BWD_WEIGHT] + f->cost.bytes[COST_BWD_WEIGHT] > 0) {
        double flops = f->cost.flops[COST_BWD_WEIGHT];
        int32_t wargs[2 + 2 * IR_MAX_INPUTS], wdeps[2 * IR_MAX_INPUTS + 2], sfb_vals[4];
        int32_t made[IR_MAX_INPUTS];    /* gradients made for this pass (pass_grad) */
        int nw = 0, nsfb = 0, nmade = 0;
        memcpy(wargs, args, sizeof wargs);
        for (int k = 0; k < nin; k++) wargs[2 + nin + k] = -1;
        for (int e = 0; e < nd; e++) wdeps[nw++] = deps[e];
        for (int k = 0; k < nin; k++) {
            int t = op->in[k];
            if (g->tensors[t].role != ROLE_PARAM) continue;
            bool fresh;
            wargs[2 + nin + k] = pass_grad(L, t, mb, &fresh);
            if (fresh) made[nmade++] = wargs[2 + nin + k];
            if (S->s->params[t].method != SYNC_SFB || !S->sync_axes[t]) continue;
            /* sufficient factors: all-gather the input and the output gradient over
             * the data group, then rebuild the whole weight gradient locally */
            AxisMask ax = S->sync_axes[t];
            int D = S->gsize[ax], ox = k == 0 ? 1 : 0, other = op->in[ox];
            Layout xl = f->in[ox], yl = want;
            int bd = g->tensors[other].batch_dim, yd = g->tensors[t_out].batch_dim;
            if (bd >= 0) xl.dim[bd] &= ~ax;
            if (yd >= 0) yl.dim[yd] &= ~ax;
            Ref gx = emit_coll(L, I_ALLGATHER, PH_BWD_WEIGHT, WHY_GRAD_SYNC, ax, i, other, mb,
                               local_bytes(S, other, &f->in[ox]) * D, (Ref){ last.instr, args[2 + ox] },
                               new_value(L, VAL_ACT, other, mb, &xl, 0));
            Ref gy = emit_coll(L, I_ALLGATHER, PH_BWD_WEIGHT, WHY_GRAD_SYNC, ax, i, t_out, mb,
                               local_bytes(S, t_out, &want) * D, dy,
                               new_value(L, VAL_GRAD, t_out, mb, &yl, 0));
            emit_mem(L, I_ALLOC, gx.val, gx.instr);
            emit_mem(L, I_ALLOC, gy.val, gy.instr);
            sfb_vals[nsfb++] = gx.val;
            sfb_vals[nsfb++] = gy.val;
            wargs[2 + ox] = gx.val;
            wargs[0] = gy.val;
            wdeps[nw++] = gx.instr;
            wdeps[nw++] = gy.instr;
            flops *= D;
        }
        int32_t w = emit_compute(L, i, t_out, PH_BWD_WEIGHT, mb, flops,
                                 f->cost.bytes[COST_BWD_WEIGHT], false, wdeps, nw, wargs, 2 + 2 * nin);
        for (int k = 0; k < nsfb; k++) emit_mem(L, I_FREE, sfb_vals[k], w);
        for (int k = 0; k < nmade; k++) emit_mem(L, I_ALLOC, made[k], w);
        for (int k = 0; k < nin; k++) {
            int t = op->in[k];
            if (g->tensors[t].role != ROLE_PARAM) continue;
            L->pgrad[t] = w;
            L->pgrad_pass[t] = L->pass;
        }
        last = (Ref){ w, -1 };
    }
    release_gathers(L, gathered, ng, last.instr);
    release_copies(L, i, mb, last.instr);

    /* the output and its gradient are no longer needed */
    free_contribs(L, t_out, last.instr);
    emit_mem(L, I_FREE, fa[nin], last.instr);
    params_ready(L, i, mb);
}

/* After the backward of op i: activations received from an earlier chunk
 * whose last use in this chunk was op i send their gradient back. */
static void send_backward(Low *L, int i, int mb)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    const Op *op = &g->ops[i];
    for (int k = 0; k < op->nin; k++) {
        int t = op->in[k];
        const Tensor *T = &g->tensors[t];
        if (T->role != ROLE_ACT || T->producer < 0) continue;
        int ps = S->s->op_stage[T->producer];
        if (S->s->op_chunk[T->producer] == L->chunk) continue;
        int first = -1;
        for (int ci = S->cons_off[t]; ci < S->cons_off[t + 1] && first < 0; ci++)
            if (S->s->op_chunk[S->cons[ci]] == L->chunk) first = S->cons[ci];
        if (first != i) continue;
        bool dup = false;
        for (int e = 0; e < k; e++) dup |= op->in[e] == t;
        if (dup) continue;
        Ref dv = NOREF;
        if (T->needs_grad) {
            dv = gradient_value(L, t, mb, &L->val_layout[t]);
            int32_t sd = emit(L, I_SEND, PH_BWD_DATA, WHY_PIPELINE, 1 << S->s->pp_axis, i, t, mb,
                              local_bytes(S, t, &L->val_layout[t]), &dv.instr, 1, &dv.val, 1);
            L->pr->instrs[sd].peer = ps;
            /* freed once sent: the executor does not wait in the free
             * but hands the buffer to the send in flight (waiting there
             * could close a cycle through the interleaved schedule's
             * wrap-around), so every send behaves as buffered and the
             * schedules are deadlock-free as Megatron-LM's are */
            free_contribs(L, t, sd);
        }
        emit_mem(L, I_FREE, L->fwd_val[at(L, t, mb)].val, dv.instr);
    }
}

/* ----------------------------------------------------------------------------
 * Schedules */

/* Activation checkpointing works per block: a recomputed op's output is kept
 * (a checkpoint) when something on its stage outside its block, or not
 * recomputed, reads it; everything else inside the block is recomputed in
 * backward. An output only later stages read is sent and not kept (the
 * receiver keeps it as its input), as Megatron-LM frees a stage's output
 * once sent: the last block of a stage holds its input alone. Ops outside
 * blocks keep their outputs. */
static bool checkpoint(const Shared *S, int i)
{
    const Op *op = &S->g->ops[i];
    if (op->block < 0) return true;
    for (int ci = S->cons_off[op->out]; ci < S->cons_off[op->out + 1]; ci++) {
        int j = S->cons[ci];
        if (S->s->op_stage[j] != S->s->op_stage[i]) continue;
        if (!S->s->ops[j].recompute || S->g->ops[j].block != op->block) return true;
    }
    return S->cons_off[op->out] == S->cons_off[op->out + 1];
}

/* A stage's ops by model chunk: its v-th chunk (model chunk v * P + stage)
 * holds ops[off[v] .. off[v+1]), in graph order. Without interleaving the
 * stage has one chunk. */
typedef struct {
    int *ops;
    int off[];
} StageOps;

/* One forward of micro-batch mb through the stage's v-th chunk. */
static void forward_pass(Low *L, const StageOps *so, int v, int mb)
{
    const int *ops = so->ops + so->off[v];
    int nops = so->off[v + 1] - so->off[v];
    L->pass++;
    L->chunk = v * L->S->s->nstages + L->stage;
    for (int x = 0; x < nops; x++) {
        int i = ops[x];
        recv_forward(L, i, mb);
        forward_op(L, i, mb, false);
        send_forward(L, i, mb);
    }
    /* recomputed ops keep only their checkpoints; other outputs and copies go
     * now and come back in backward */
    const Shared *S = L->S;
    for (int x = 0; x < nops; x++) {
        int i = ops[x];
        if (!S->s->ops[i].recompute || checkpoint(S, i)) continue;
        release_copies(L, i, mb, -1);
        emit_mem(L, I_FREE, L->fwd_val[at(L, S->g->ops[i].out, mb)].val, -1);
    }
}

static void backward_pass(Low *L, const StageOps *so, int v, int mb)
{
    const Shared *S = L->S;
    const int *ops = so->ops + so->off[v];
    int nops = so->off[v + 1] - so->off[v];
    L->pass++;
    L->chunk = v * S->s->nstages + L->stage;
    int seg_block = -2;
    for (int x = nops - 1; x >= 0; x--) {
        int i = ops[x];
        const Op *op = &S->g->ops[i];
        /* entering a recomputed segment (a block, or a lone op outside blocks):
         * rerun its forward first, as activation checkpointing does */
        if (S->s->ops[i].recompute && (op->block < 0 || op->block != seg_block)) {
            int lo = x;
            if (op->block >= 0)
                while (lo > 0 && S->g->ops[ops[lo - 1]].block == op->block) lo--;
            for (int y = lo; y <= x; y++)
                if (S->s->ops[ops[y]].recompute && !checkpoint(S, ops[y]))
                    forward_op(L, ops[y], mb, true);
            seg_block = op->block;
        }
        backward_op(L, i, mb);
        send_backward(L, i, mb);
    }
}

/* The k-th forward (fwd) or backward chunk-pass of a stage under the
 * interleaved schedule: micro-batches pass through the stage's V chunks in
 * groups of P, a group through one chunk after the other (forward: chunks
 * ascending; backward: descending), as get_model_chunk_id and the schedule
 * table of Megatron-LM's forward_backward_pipelining_with_interleaving
 * order them (M a multiple of P). Gives the local chunk v and micro-batch. */
static void interleaved_pass(int k, int P, int V, bool fwd, int *v, int *mb)
{
    int step = (k / P) % V;
    *v = fwd ? step : V - 1 - step;
    *mb = k / (P * V) * P + k % P;
}

/* Micro-batch order of one stage: GPipe runs every forward, then every
 * backward; 1F1B (PipeDream-Flush, as in Megatron-LM) warms up with P-s-1
 * forwards, then alternates one forward and one backward, then cools down.
 * Interleaved 1F1B (Narayanan et al. SC'21, 2.2.2) does the same over the
 * M*V chunk-passes of the stage (interleaved_pass), warming up with
 * 2(P-s-1) + (V-1)P forwards (at most M*V). */
typedef void (*PassFn)(Low *L, const StageOps *so, bool fwd, int v, int mb);

static void run_schedule(Low *L, const StageOps *so, PassFn pass)
{
    const Strategy *s = L->S->s;
    int m = s->microbatches, P = s->nstages, st = L->stage;
    if (s->schedule == SCHED_GPIPE) {
        for (int mb = 0; mb < m; mb++) pass(L, so, true, 0, mb);
        for (int mb = 0; mb < m; mb++) pass(L, so, false, 0, mb);
        return;
    }
    if (s->schedule == SCHED_INTERLEAVED) {
        int V = s->virtual_stages, n = m * V, v, mb;
        int64_t w = (int64_t)(P - st - 1) * 2 + (int64_t)(V - 1) * P;
        int warm = w < n ? (int)w : n;
        for (int k = 0; k < warm; k++) {
            interleaved_pass(k, P, V, true, &v, &mb);
            pass(L, so, true, v, mb);
        }
        for (int k = 0; k < n - warm; k++) {
            interleaved_pass(warm + k, P, V, true, &v, &mb);
            pass(L, so, true, v, mb);
            interleaved_pass(k, P, V, false, &v, &mb);
            pass(L, so, false, v, mb);
        }
        for (int k = n - warm; k < n; k++) {
            interleaved_pass(k, P, V, false, &v, &mb);
            pass(L, so, false, v, mb);
        }
        return;
    }
    int warm = P - st - 1 < m ? P - st - 1 : m;
    for (int mb = 0; mb < warm; mb++) pass(L, so, true, 0, mb);
    for (int k = 0; k < m - warm; k++) {
        pass(L, so, true, 0, warm + k);
        pass(L, so, false, 0, k);
    }
    for (int mb = m - warm; mb < m; mb++) pass(L, so, false, 0, mb);
}

/* The full program lowers every pass of the schedule in turn. */
static void lower_pass(Low *L, const StageOps *so, bool fwd, int v, int mb)
{
    if (fwd) forward_pass(L, so, v, mb);
    else backward_pass(L, so, v, mb);
}

/* ----------------------------------------------------------------------------
 * Memory */

static int64_t param_state_bytes(const Shared *S, int t, const Low *L)
{
    const Tensor *T = &S->g->tensors[t];
    const ParamPolicy *pp = &S->s->params[t];
    int64_t b = local_bytes(S, t, &S->home[t]);
    int64_t elems = b / dtype_bytes(T->dtype);
    int D = S->gsize[S->sync_axes[t]];
    bool half = T->dtype != DT_F32;
    /* optimizer state per element: Adam m, v (+ fp32 master for half params);
     * SGD momentum (+ master) */
    int64_t opt = S->s->optimizer == OPT_ADAM ? (half ? 12 : 8) : (half ? 8 : 4);
    int64_t p = b, g = b, o = elems * opt;
    if (pp->method == SYNC_PS && S->sync_axes[t]) {
        /* workers keep no optimizer state; a server keeps it for the whole
         * param (the executor's update indexes it by element) and, per
         * shard it serves, a gradient of the param's size from each other
         * worker (sync_ps: the pushed values) */
        int me = group_index(S->s, L->coord, S->sync_axes[t]), served = 0;
        for (int k = 0; k < pp->ps_shards; k++) served += pp->ps_placement[k] == me;
        return p + g + (served ? o + (int64_t)served * (D - 1) * b : 0);
    }
    /* ZeRO: the optimizer state of the rank's shard and the gradient's
     * shard the reduce-scatters fill. ZeRO-1 also keeps the whole gradient
     * the micro-batches accumulate into; under ZeRO-2 and -3 it lives from
     * each backward to its reduce-scatter (grad_per_pass: the alloc/free
     * walk counts it); ZeRO-3 keeps the param's shard alone */
    if (pp->shard >= SHARD_ZERO1) o /= D;
    if (grad_per_pass(S, t)) g = 0;
    if (L->pshard_val[t] >= 0) g += L->pr->values[L->pshard_val[t]].bytes;
    if (pp->shard >= SHARD_ZERO3) p /= D;
    /* what a compressed all-reduce keeps from step to step (the executor's
     * float buffers): int8, the error fed back; PowerSGD, the error, the
     * matrix it compresses and its two factors */
    int64_t keep = 0;
    if (pp->method == SYNC_ALLREDUCE && S->sync_axes[t] && D > 1) {
        if (pp->compress == COMPRESS_INT8) keep = elems * 4;
        if (pp->compress == COMPRESS_POWERSGD) {
            int64_t rows, cols, r = pp->powersgd_rank;
            powersgd_dims(S, t, &rows, &cols);
            if (r > rows) r = rows;
            if (r > cols) r = cols;
            keep = 4 * (2 * elems + (rows + cols) * r);
        }
    }
    return p + g + o + keep;
}

/* The buffers of its own that a ZeRO collective left in flight holds
 * while it runs (the executor's, for a reduce-scatter: the shard it
 * receives into before adding it to the rank's; for an all-gather: the
 * shard it sends; either way, the whole padded to a multiple of the group
 * when the group does not divide it). 0 for anything else. */
static int64_t inflight_scratch(const Shared *S, const Program *pr, const Instr *in)
{
    if (!in->behind || (in->kind != I_REDUCE_SCATTER && in->kind != I_ALLGATHER) ||
        in->tensor < 0)
        return 0;
    AxisMask sh = in->axes;
    if (in->kind == I_ALLGATHER && in->nargs > 0 && pr->values[pr->args[in->arg0]].shard)
        sh = pr->values[pr->args[in->arg0]].shard;
    int64_t eb = dtype_bytes(S->g->tensors[in->tensor].dtype), G = S->gsize[sh];
    if (eb < 1 || G < 1) return 0;
    int64_t elems = in->bytes / eb, chunk = (elems + G - 1) / G;
    return eb * (chunk + (chunk * G != elems ? chunk * G : 0));
}

/* The alloc/free walk over instructions [i0, i1): bytes allocated minus
 * freed, and the highest that reaches (0 at least). A ZeRO collective left
 * in flight counts its own buffers where it starts (inflight_scratch), and
 * the value it writes that the program allocates just after it (the
 * executor has both when it starts the collective, and lets go of the
 * scratch once it is done, which is no earlier). */
static void mem_walk(const Shared *S, const Program *pr, int i0, int i1, int64_t *net,
                     int64_t *peak)
{
    int64_t cur = 0;
    *peak = 0;
    for (int i = i0; i < i1; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == I_ALLOC) cur += in->bytes;
        else if (in->kind == I_FREE) cur -= in->bytes;
        int64_t at = cur, extra = inflight_scratch(S, pr, in);
        if (extra) {
            at += extra;
            const Instr *nx = i + 1 < i1 ? &pr->instrs[i + 1] : NULL;
            for (int a = 0; nx && nx->kind == I_ALLOC && nx->nargs && a < in->nargs; a++)
                if (pr->args[in->arg0 + a] == pr->args[nx->arg0]) {
                    at += nx->bytes;
                    break;
                }
        }
        if (at > *peak) *peak = at;
    }
    *net = cur;
}

/* The bytes of the data (inputs and labels) among values [v0, v1): the
 * executor loads every micro-batch's as the step starts and keeps it all
 * step, under everything the walk counts. */
static int64_t data_bytes(const Program *pr, int v0, int v1)
{
    int64_t b = 0;
    for (int v = v0; v < v1; v++)
        if (pr->values[v].kind == VAL_DATA) b += pr->values[v].bytes;
    return b;
}

/* Params, gradients and optimizer state this class holds all step. */
static int64_t static_state(const Low *L)
{
    const Shared *S = L->S;
    int64_t st = 0;
    for (int t = 0; t < S->g->ntensors; t++) {
        if (S->g->tensors[t].role != ROLE_PARAM) continue;
        if (!(S->stages_using[t] & (1ull << L->stage))) continue;
        st += param_state_bytes(S, t, L);
    }
    return st;
}

static void account_memory(Low *L)
{
    Program *pr = L->pr;
    int64_t st = static_state(L);
    int64_t net, peak;
    mem_walk(L->S, pr, 0, pr->ninstrs, &net, &peak);
    pr->static_mem = st;
    pr->peak_mem = st + data_bytes(pr, 0, pr->nvalues) + peak;
}

/* ----------------------------------------------------------------------------
 * Classes */

/* The parameter-server shards a rank serves: ranks of one stage that serve
 * the same shards run the same program. `ps` lists the n params a server
 * keeps (synchronised by parameter servers over some axis). */
static uint64_t ps_role(const Shared *S, const int *ps, int n, const int coord[MESH_MAX_AXES])
{
    uint64_t h = 1469598103934665603ULL;
    for (int x = 0; x < n; x++) {
        int t = ps[x];
        const ParamPolicy *pp = &S->s->params[t];
        int me = group_index(S->s, coord, S->sync_axes[t]);
        for (int k = 0; k < pp->ps_shards; k++)
            if (pp->ps_placement[k] == me)
                h = (h ^ ((uint64_t)t * PS_MAX_SHARDS + k)) * 1099511628211ULL;
    }
    return h;
}

/* Scratch of the lowering, allocated once per plan and reset per class: a
 * 1024-device plan lowers 16 classes through the same pages. */
static void low_alloc(Low *L, const Shared *S, bool compact)
{
    const Graph *g = S->g;
    int nt = g->ntensors;
    memset(L, 0, sizeof *L);
    L->S = S;
    L->slot = xmalloc(sizeof *L->slot * S->m);
    for (int mb = 0; mb < S->m; mb++) {
        int rep = !compact || mb == 0 || mb == S->m - 1;
        L->slot[mb] = rep ? L->nslot++ : -1;
    }
    L->fwd_val = xmalloc(sizeof *L->fwd_val * (size_t)nt * L->nslot);
    L->val_layout = xcalloc(nt, sizeof *L->val_layout);
    L->fwd_args = xmalloc(sizeof *L->fwd_args * (size_t)g->nops * L->nslot * (IR_MAX_INPUTS + 1));
    L->param_val = xmalloc(sizeof *L->param_val * nt);
    L->pgrad_val = xmalloc(sizeof *L->pgrad_val * nt);
    L->pshard_val = xmalloc(sizeof *L->pshard_val * nt);
    L->conv_pass = xmalloc(sizeof *L->conv_pass * nt);
    L->contrib_pass = xmalloc(sizeof *L->contrib_pass * nt);
    L->pgrad_pass = xmalloc(sizeof *L->pgrad_pass * nt);
    L->conv_n = xcalloc(nt, sizeof *L->conv_n);
    L->conv = xmalloc(sizeof *L->conv * nt * CONV_MAX);
    L->contrib_head = xmalloc(sizeof *L->contrib_head * nt);
    L->pgrad = xmalloc(sizeof *L->pgrad * nt);
    L->copy_vals = xmalloc(sizeof *L->copy_vals * (size_t)g->nops * L->nslot * IR_MAX_INPUTS);
    L->ncopy = xcalloc((size_t)g->nops * L->nslot, sizeof *L->ncopy);
    L->cap_tied = nt;
    L->tied = xmalloc(sizeof *L->tied * (nt ? nt : 1));
}

static void low_free(Low *L)
{
    free(L->slot);
    free(L->fwd_val);
    free(L->val_layout);
    free(L->fwd_args);
    free(L->param_val);
    free(L->pgrad_val);
    free(L->pshard_val);
    free(L->copy_vals);
    free(L->tied);
    free(L->ncopy);
    free(L->conv_pass);
    free(L->contrib_pass);
    free(L->pgrad_pass);
    free(L->conv_n);
    free(L->conv);
    free(L->contrib_head);
    free(L->contribs);
    free(L->pgrad);
}

/* Items [0, n) of `items` (NULL: the numbers 0 .. n-1) grouped by
 * k = key[item] / div, in their order within a group: group k is
 * out[off[k] .. off[k + 1]) (off has nk + 1 entries). Items whose key is
 * negative or whose k is nk or more are left out. */
static void group_by(const int *items, int n, const int *key, int div, int nk, int *out,
                     int *off)
{
    memset(off, 0, sizeof *off * ((size_t)nk + 1));
    for (int x = 0; x < n; x++) {
        int v = key[items ? items[x] : x];
        if (v >= 0 && v / div < nk) off[v / div + 1]++;
    }
    for (int k = 0; k < nk; k++) off[k + 1] += off[k];
    for (int x = 0; x < n; x++) {
        int i = items ? items[x] : x, v = key[i];
        if (v >= 0 && v / div < nk) out[off[v / div]++] = i;
    }
    for (int k = nk; k > 0; k--) off[k] = off[k - 1];
    off[0] = 0;
}

/* The ops of one stage by chunk (its v-th chunk, model chunk v * P +
 * stage, holds ops[off[v] .. off[v+1]), in graph order), from the stage's
 * n ops `mine` in graph order. Caller frees with stage_ops_free. */
static StageOps *stage_ops(const Strategy *s, const int *mine, int n)
{
    int V = s->virtual_stages;
    StageOps *so = xcalloc(1, sizeof *so + sizeof *so->off * (V + 1));
    so->ops = xmalloc(sizeof *so->ops * (n + 1));
    group_by(mine, n, s->op_chunk, s->nstages, V, so->ops, so->off);
    return so;
}

/* Every op by stage, in graph order within one (stage st's are
 * by[at[st] .. at[st + 1])): one pass over the model, not one a class. */
static int *ops_by_stage(const Strategy *s, int nops, int **at)
{
    int P = s->nstages > 0 ? s->nstages : 1;
    *at = xmalloc(sizeof **at * ((size_t)P + 1));
    int *by = xmalloc(sizeof *by * (nops ? nops : 1));
    group_by(NULL, nops, s->op_stage, 1, P, by, *at);
    return by;
}

static void stage_ops_free(StageOps *so)
{
    if (so) free(so->ops);
    free(so);
}

/* The memory of the smallest device of the class (on a heterogeneous
 * cluster the class must fit it); 0 without a cluster. */
static double class_device_mem(const Cluster *c, const Program *pr)
{
    double mem = 0;
    for (int k = 0; c && k < pr->nranks; k++) {
        double m = cluster_device(c, pr->ranks[k])->mem_bytes;
        if (k == 0 || m < mem) mem = m;
    }
    return mem;
}

/* Sets up the lowering of the class of `rank`, whose stage's ops are so:
 * the values that live for the whole step. */
static void class_begin(Low *L, Program *pr, int rank, const StageOps *so)
{
    const Shared *S = L->S;
    const Graph *g = S->g;
    const Strategy *s = S->s;
    int nt = g->ntensors;
    strategy_coords(s, rank, L->coord);
    L->pr = pr;
    L->stage = s->pp_axis >= 0 ? L->coord[s->pp_axis] : 0;
    L->chunk = L->stage;
    L->last_micro = s->microbatches - 1;
    L->pass = 0;
    L->ncontribs = 0;
    L->ntied = 0;
    pr->stage = L->stage;
    pr->device_mem = class_device_mem(S->c, pr);

    /* only this stage's tensors and ops are ever touched */
    const int *ops = so->ops;
    int nops = so->off[s->virtual_stages];
    for (int x = 0; x < nops; x++) {
        const Op *op = &g->ops[ops[x]];
        for (int sl = 0; sl < L->nslot; sl++) {     /* each micro-batch lowered */
            size_t i = (size_t)ops[x] * L->nslot + sl;
            for (int k = 0; k <= IR_MAX_INPUTS; k++) L->fwd_args[i * (IR_MAX_INPUTS + 1) + k] = -1;
            for (int k = 0; k <= op->nin; k++)
                L->fwd_val[(size_t)(k < op->nin ? op->in[k] : op->out) * L->nslot + sl] = NOREF;
            L->ncopy[i] = 0;
        }
    }
    for (int t = 0; t < nt; t++) {
        L->conv_pass[t] = L->contrib_pass[t] = L->pgrad_pass[t] = -1;
        L->conv_n[t] = 0;
        L->param_val[t] = L->pgrad_val[t] = L->pshard_val[t] = -1;
        if (g->tensors[t].role != ROLE_PARAM || !(S->stages_using[t] & (1ull << L->stage)))
            continue;
        /* values that live for the whole step: the param as stored (ZeRO-3: its
         * shard), its gradient and, under ZeRO, the rank's shard of the
         * gradient that reduce-scatters fill */
        const ParamPolicy *pp = &s->params[t];
        AxisMask ax = S->sync_axes[t];
        L->param_val[t] = new_value(L, VAL_PARAM, t, -1, &S->home[t], zero3(S, t) ? ax : 0);
        if (!grad_per_pass(S, t)) L->pgrad_val[t] = new_value(L, VAL_PARAM_GRAD, t, -1, &S->home[t], 0);
        if (ax && pp->method != SYNC_SFB && pp->method != SYNC_PS && pp->shard >= SHARD_ZERO1)
            L->pshard_val[t] = new_value(L, VAL_PARAM_GRAD, t, -1, &S->home[t], ax);
    }
}

/* The full program: every pass of the schedule, then the sums of tied
 * params. */
static void lower_class(Low *L, Program *pr, int rank, const StageOps *so)
{
    class_begin(L, pr, rank, so);
    run_schedule(L, so, lower_pass);
    sync_tied(L);
    account_memory(L);
}

/* ----------------------------------------------------------------------------
 * The compact form
 *
 * A pass of one micro-batch through one chunk reads nothing of other
 * micro-batches' passes but values made in passes of its own micro-batch
 * (its forward, earlier chunks), and only the last micro-batch differs from
 * the rest (it synchronises gradients). So a class is lowered for the
 * representative micro-batches 0 and M-1 only: each of those passes becomes
 * a body, and the schedule names, for every pass, the body that stands for
 * it (micro-batch 0's for all but the last). program_expand rebuilds the full program from
 * them; a reference from a body to another pass resolves to the pass of the
 * same kind and chunk whose micro-batch lies as far from the expanded pass's
 * as the two representatives lie apart. */

typedef struct {
    bool fwd;
    int v, mb;
} SchedPass;

struct SchedList {
    SchedPass *v;
    int n, cap;
};

static void record_pass(Low *L, const StageOps *so, bool fwd, int v, int mb)
{
    (void)so;
    struct SchedList *sl = L->sched;
    if (sl->n == sl->cap) {
        sl->cap = sl->cap ? 2 * sl->cap : 64;
        sl->v = xrealloc(sl->v, sizeof *sl->v * sl->cap);
    }
    sl->v[sl->n++] = (SchedPass){ fwd, v, mb };
}

/* Lowers one pass (or, BODY_TAIL, the step's tail) as a body of the
 * compact program. */
static void body_pass(Low *L, const StageOps *so, BodyKind kind, int v, int mb)
{
    Program *pr = L->pr;
    if (pr->nbodies == pr->cap_bodies) {
        pr->cap_bodies = pr->cap_bodies ? 2 * pr->cap_bodies : 16;
        pr->bodies = xrealloc(pr->bodies, sizeof *pr->bodies * pr->cap_bodies);
    }
    Body *b = &pr->bodies[pr->nbodies];
    memset(b, 0, sizeof *b);
    b->kind = (uint8_t)kind;
    b->chunk = (int16_t)v;
    b->micro = mb;
    b->i0 = pr->ninstrs;
    b->v0 = pr->nvalues;
    if (kind == BODY_FWD) forward_pass(L, so, v, mb);
    else if (kind == BODY_BWD) backward_pass(L, so, v, mb);
    else sync_tied(L);
    b->i1 = pr->ninstrs;
    b->v1 = pr->nvalues;
    mem_walk(L->S, pr, b->i0, b->i1, &b->mem_net, &b->mem_peak);
    b->mem_data = data_bytes(pr, b->v0, b->v1);
    pr->nbodies++;
}

static int body_of(const Program *pr, int kind, int v, int mb)
{
    for (int k = 0; k < pr->nbodies; k++)
        if (pr->bodies[k].kind == kind && pr->bodies[k].chunk == v && pr->bodies[k].micro == mb)
            return k;
    return -1;
}

/* data_bytes of a compact program: every pass's, as the full program has
 * them. */
static int64_t compact_data_bytes(const Program *pr)
{
    int64_t data = data_bytes(pr, 0, pr->nhead) + pr->bodies[pr->nbodies - 1].mem_data;
    for (int k = 0; k < pr->nsched; k++) data += pr->bodies[pr->sched[k].body].mem_data;
    return data;
}

/* The compact program's schedule (the body each pass of the class's stage
 * runs) and its memory: the static state, then the alloc/free walk over
 * the passes. The bodies are in place. */
static void compact_schedule(Low *L, Program *pr, int64_t static_mem)
{
    const Strategy *s = L->S->s;
    struct SchedList sl = { 0 };
    L->sched = &sl;
    run_schedule(L, NULL, record_pass);
    pr->nsched = sl.n;
    pr->sched = xmalloc(sizeof *pr->sched * (sl.n ? sl.n : 1));
    pr->nmicro = s->microbatches;
    pr->nchunks = s->virtual_stages;
    for (int k = 0; k < sl.n; k++) {
        const SchedPass *q = &sl.v[k];
        int rep = L->slot[q->mb] >= 0 ? q->mb : 0;     /* lowered itself, or stood for by 0 */
        pr->sched[k] = (PassRef){ body_of(pr, q->fwd ? BODY_FWD : BODY_BWD, q->v, rep), q->mb };
    }
    free(sl.v);
    L->sched = NULL;

    pr->static_mem = static_mem;
    int64_t cur = 0, peak = 0;
    for (int k = 0; k < pr->nsched; k++) {
        const Body *b = &pr->bodies[pr->sched[k].body];
        if (cur + b->mem_peak > peak) peak = cur + b->mem_peak;
        cur += b->mem_net;
    }
    const Body *tail = &pr->bodies[pr->nbodies - 1];
    if (cur + tail->mem_peak > peak) peak = cur + tail->mem_peak;
    pr->peak_mem = pr->static_mem + compact_data_bytes(pr) + peak;
}

static void lower_class_compact(Low *L, Program *pr, int rank, const StageOps *so)
{
    const Strategy *s = L->S->s;
    int m = s->microbatches, V = s->virtual_stages;
    class_begin(L, pr, rank, so);
    pr->nhead = pr->nvalues;
    int reps[2], nreps = 0;
    for (int mb = 0; mb < m; mb++)
        if (L->slot[mb] >= 0) reps[nreps++] = mb;
    for (int r = 0; r < nreps; r++)
        for (int v = 0; v < V; v++) body_pass(L, so, BODY_FWD, v, reps[r]);
    for (int r = 0; r < nreps; r++)
        for (int v = V - 1; v >= 0; v--) body_pass(L, so, BODY_BWD, v, reps[r]);
    body_pass(L, so, BODY_TAIL, 0, 0);          /* the sums of tied params */
    compact_schedule(L, pr, static_state(L));
}

/* ----------------------------------------------------------------------------
 * Classes alike
 *
 * The middle stages of a model of repeated blocks do the same work on
 * other ops: stage b's ops are stage a's shifted by a constant in the
 * graph's numbering, and so are the tensors they touch, the ops on either
 * side of them and the stages those run on. Such a class is not lowered
 * again: its bodies are a's with ops, tensors and pipeline peers
 * renumbered (translate_class), instruction for instruction what lowering
 * it would give. shift_of decides, comparing everything a pass's lowering
 * reads of the ops and tensors it touches; where anything differs, or a
 * rank's place in its data group matters (parameter servers) or a param is
 * summed across stages (tied), the class is lowered itself. */

typedef struct {
    int dop, dt, dstage, dblock;
} Shift;

static bool tensor_alike_once(const Shared *S, int t, const Shift *d)
{
    const Graph *g = S->g;
    int u = t + d->dt;
    if (u < 0 || u >= g->ntensors) return false;
    const Tensor *a = &g->tensors[t], *b = &g->tensors[u];
    if (a->form != b->form ||
        (a->producer < 0 ? b->producer >= 0 : b->producer != a->producer + d->dop))
        return false;
    int n = S->cons_off[t + 1] - S->cons_off[t];
    if (n != S->cons_off[u + 1] - S->cons_off[u]) return false;
    for (int k = 0; k < n; k++)
        if (S->cons[S->cons_off[u] + k] != S->cons[S->cons_off[t] + k] + d->dop) return false;
    if (a->role != ROLE_PARAM) return true;
    const ParamPolicy *p = &S->s->params[t], *q = &S->s->params[u];
    uint64_t st = S->stages_using[t];
    return !(st & (st - 1)) && S->stages_using[u] == st << d->dstage &&
           p->method == q->method && p->method != SYNC_PS && p->algo == q->algo &&
           p->compress == q->compress && p->powersgd_rank == q->powersgd_rank &&
           p->bucket_bytes == q->bucket_bytes && p->staleness == q->staleness &&
           p->shard == q->shard && S->sync_axes[t] == S->sync_axes[u] &&
           !memcmp(&S->home[t], &S->home[u], sizeof S->home[t]);
}

/* Op i and op i + dop, as the lowering of stage sa reads them (an op of
 * another stage: what a transfer to or from it needs, its recompute
 * flag aside). */
static bool op_alike_once(const Shared *S, int i, const Shift *d, int sa)
{
    const Graph *g = S->g;
    const Strategy *s = S->s;
    int j = i + d->dop;
    if (j < 0 || j >= g->nops) return false;
    const Op *a = &g->ops[i], *b = &g->ops[j];
    /* (the same form and split: the same local sizes too) */
    if (a->form != b->form || b->out != a->out + d->dt ||
        (a->block < 0 ? b->block >= 0 : b->block != a->block + d->dblock) ||
        memcmp(s->ops[i].split, s->ops[j].split, sizeof s->ops[i].split) ||
        (s->op_stage[i] == sa && s->ops[i].recompute != s->ops[j].recompute) ||
        s->op_stage[j] != s->op_stage[i] + d->dstage || s->op_chunk[j] != s->op_chunk[i] + d->dstage)
        return false;
    for (int k = 0; k < a->nin; k++)
        if (b->in[k] != a->in[k] + d->dt) return false;
    return true;
}

/* The same, each op and tensor decided once per shift tried: a shift
 * fails at the first op or tensor that differs, so only those found alike
 * are remembered. */
static bool tensor_alike(Shared *S, int t, const Shift *d)
{
    if (S->t_seen[t] == S->tries) return true;
    if (!tensor_alike_once(S, t, d)) return false;
    S->t_seen[t] = S->tries;
    return true;
}

static bool op_alike(Shared *S, int i, const Shift *d, int sa)
{
    if (S->op_seen[i] == S->tries) return true;
    if (!op_alike_once(S, i, d, sa)) return false;
    S->op_seen[i] = S->tries;
    return true;
}

/* The shift that carries stage sa's work onto stage sb (ops soa and sob),
 * or false when there is none. */
static bool shift_of(Shared *S, const StageOps *soa, int sa, const StageOps *sob, int sb,
                     Shift *d)
{
    const Graph *g = S->g;
    int V = S->s->virtual_stages, n = soa->off[V];
    for (int v = 0; v <= V; v++)
        if (soa->off[v] != sob->off[v]) return false;
    if (!n) return false;
    if (!S->op_seen) {
        S->op_seen = xcalloc(g->nops, sizeof *S->op_seen);
        S->t_seen = xcalloc(g->ntensors, sizeof *S->t_seen);
    }
    S->tries++;
    int first = soa->ops[0];
    *d = (Shift){ sob->ops[0] - first, g->ops[sob->ops[0]].out - g->ops[first].out, sb - sa, 0 };
    for (int x = 0; x < n; x++) {
        const Op *op = &g->ops[soa->ops[x]];
        if (sob->ops[x] != soa->ops[x] + d->dop) return false;
        if (op->block >= 0 && g->ops[sob->ops[x]].block >= 0 && !d->dblock)
            d->dblock = g->ops[sob->ops[x]].block - op->block;
    }
    for (int x = 0; x < n; x++) {
        int i = soa->ops[x];
        const Op *op = &g->ops[i];
        if (!op_alike(S, i, d, sa) || !tensor_alike(S, op->out, d)) return false;
        /* the ops on either side: consumers of what it makes, producers of
         * what it reads (pipeline transfers name them and their stages) */
        for (int c = S->cons_off[op->out]; c < S->cons_off[op->out + 1]; c++)
            if (!op_alike(S, S->cons[c], d, sa)) return false;
        for (int k = 0; k < op->nin; k++) {
            int t = op->in[k];
            if (!tensor_alike(S, t, d)) return false;
            if (g->tensors[t].producer >= 0 && !op_alike(S, g->tensors[t].producer, d, sa))
                return false;
        }
    }
    return true;
}

/* dst's instructions, dependencies, arguments and values: copies of src's
 * as src runs them (a shared copy's renumbered), dst's own. */
static void copy_code(Program *dst, const Program *src)
{
    dst->ninstrs = dst->cap_instrs = src->ninstrs;
    dst->ndeps = dst->cap_deps = src->ndeps;
    dst->nargs = dst->cap_args = src->nargs;
    dst->nvalues = dst->cap_values = src->nvalues;
    dst->deps = xmemdup(src->deps, sizeof *src->deps * src->ndeps);
    dst->args = xmemdup(src->args, sizeof *src->args * src->nargs);
    dst->instrs = xmalloc(sizeof *dst->instrs * (src->ninstrs ? src->ninstrs : 1));
    for (int i = 0; i < src->ninstrs; i++) program_instr_at(src, i, &dst->instrs[i]);
    dst->values = xmalloc(sizeof *dst->values * (src->nvalues ? src->nvalues : 1));
    for (int v = 0; v < src->nvalues; v++) program_value_at(src, v, &dst->values[v]);
    dst->shared = false;
    dst->shift = (ProgramShift){ 0, 0, 0 };
}

/* Class pr (stage sb) as class from's bodies renumbered by d: it shares
 * the instructions from shares (or has), its shift d further on; the
 * schedule and memory walk are its own. */
static void translate_class(Low *L, Program *pr, const Program *from, int like, int sb,
                            const Shift *d)
{
    pr->stage = sb;
    pr->device_mem = class_device_mem(L->S->c, pr);
    pr->ninstrs = from->ninstrs;
    pr->ndeps = from->ndeps;
    pr->nargs = from->nargs;
    pr->nvalues = from->nvalues;
    pr->instrs = from->instrs;
    pr->deps = from->deps;
    pr->args = from->args;
    pr->values = from->values;
    pr->shared = true;
    pr->shift = (ProgramShift){ from->shift.op + d->dop, from->shift.tensor + d->dt,
                                from->shift.peer + d->dstage };
    pr->nbodies = pr->cap_bodies = from->nbodies;
    pr->bodies = xmemdup(from->bodies, sizeof *from->bodies * from->nbodies);
    pr->nhead = from->nhead;
    L->pr = pr;
    L->stage = sb;
    compact_schedule(L, pr, from->static_mem);
    pr->like = like;
}

static Plan *lower_plan(const Graph *g, const Cluster *c, const Strategy *s, bool compact,
                        bool share, double deadline, Err *err)
{
    if (s->nops != g->nops || s->ntensors != g->ntensors) {
        err_set(err, "strategy was resolved against another model (%d ops, model has %d)",
                s->nops, g->nops);
        return NULL;
    }
    if (c && s->world > c->ndevices) {
        err_set(err, "mesh needs %d devices, cluster %s has %d", s->world, c->name, c->ndevices);
        return NULL;
    }
    Shared S;
    if (shared_init(&S, g, c, s, err)) {
        shared_free(&S);
        free(S.local);
        return NULL;
    }
    Plan *p = xcalloc(1, sizeof *p);
    p->world = s->world;
    p->nops = g->nops;
    p->local = S.local;
    p->rank_class = xmalloc(sizeof *p->rank_class * s->world);

    /* class key: (stage, parameter-server role) */
    bool any_ps = false;
    int *ps = xmalloc(sizeof *ps * (g->ntensors ? g->ntensors : 1)), nps = 0;
    for (int t = 0; t < g->ntensors; t++) {
        bool is_ps = g->tensors[t].role == ROLE_PARAM && s->params[t].method == SYNC_PS;
        any_ps |= is_ps;
        if (is_ps && S.sync_axes[t]) ps[nps++] = t;
    }
    int *first_rank = xmalloc(sizeof *first_rank * s->world);
    int *class_stage = xmalloc(sizeof *class_stage * s->world);
    uint64_t *class_role = xmalloc(sizeof *class_role * s->world);
    /* per stage, its classes (one without parameter servers) chained
     * through next_class, newest first */
    int *stage_class = xmalloc(sizeof *stage_class * s->nstages);
    int *next_class = xmalloc(sizeof *next_class * s->world);
    for (int st = 0; st < s->nstages; st++) stage_class[st] = -1;
    int coord[MESH_MAX_AXES];
    for (int r = 0; r < s->world; r++) {
        int st = s->pp_axis >= 0 ? r / s->axis_stride[s->pp_axis] % s->axis_size[s->pp_axis] : 0;
        uint64_t role = 0;
        if (any_ps) {
            strategy_coords(s, r, coord);
            role = ps_role(&S, ps, nps, coord);
        }
        int k = stage_class[st];
        while (k >= 0 && class_role[k] != role) k = next_class[k];
        if (k < 0) {
            k = p->nclasses++;
            class_stage[k] = st;
            class_role[k] = role;
            first_rank[k] = r;
            next_class[k] = stage_class[st];
            stage_class[st] = k;
        }
        p->rank_class[r] = k;
    }
    free(stage_class);
    free(next_class);
    free(ps);
    p->classes = xcalloc(p->nclasses, sizeof *p->classes);
    for (int k = 0; k < p->nclasses; k++) {
        Program *pr = &p->classes[k];
        pr->ranks = xmalloc(sizeof *pr->ranks * s->world);
    }
    for (int r = 0; r < s->world; r++) {
        Program *pr = &p->classes[p->rank_class[r]];
        pr->ranks[pr->nranks++] = r;
    }
    Low L;
    low_alloc(&L, &S, compact);
    L.err = err;
    StageOps **so = xcalloc(p->nclasses, sizeof *so);
    int *stage_at, *by_stage = ops_by_stage(s, g->nops, &stage_at);
    for (int k = 0; k < p->nclasses; k++) {
        Program *pr = &p->classes[k];
        pr->like = -1;
        if (deadline > 0 && now_s() > deadline) {
            err_set(err, LOWER_LATE);
            L.failed = true;
            break;
        }
        int st = class_stage[k];
        so[k] = stage_ops(s, by_stage + stage_at[st], stage_at[st + 1] - stage_at[st]);
        Shift d;
        int like = -1;
        for (int a = k - 1; a >= 0 && compact && share && !any_ps && like < 0; a--)
            if (shift_of(&S, so[a], class_stage[a], so[k], class_stage[k], &d)) like = a;
        if (like >= 0) {
            translate_class(&L, pr, &p->classes[like], like, class_stage[k], &d);
            continue;
        }
        /* classes of one plan are alike in size: reserve what the last one took */
        if (k > 0) {
            pr->cap_instrs = p->classes[k - 1].ninstrs + p->classes[k - 1].ninstrs / 16 + 64;
            pr->cap_deps = p->classes[k - 1].ndeps + p->classes[k - 1].ndeps / 16 + 64;
            pr->cap_args = p->classes[k - 1].nargs + p->classes[k - 1].nargs / 16 + 64;
            pr->cap_values = p->classes[k - 1].nvalues + p->classes[k - 1].nvalues / 16 + 64;
            pr->instrs = grow(NULL, sizeof *pr->instrs * pr->cap_instrs);
            pr->deps = grow(NULL, sizeof *pr->deps * pr->cap_deps);
            pr->args = grow(NULL, sizeof *pr->args * pr->cap_args);
            pr->values = grow(NULL, sizeof *pr->values * pr->cap_values);
        }
        if (compact) lower_class_compact(&L, pr, first_rank[k], so[k]);
        else lower_class(&L, pr, first_rank[k], so[k]);
    }
    for (int k = 0; k < p->nclasses; k++) stage_ops_free(so[k]);
    free(so);
    free(by_stage);
    free(stage_at);
    low_free(&L);
    if (L.failed) {
        free(first_rank);
        free(class_stage);
        free(class_role);
        shared_free(&S);
        plan_free(p);
        return NULL;
    }

    free(first_rank);
    free(class_stage);
    free(class_role);
    shared_free(&S);
    return p;
}

Plan *ir_lower(const Graph *g, const Cluster *c, const Strategy *s, Err *err)
{
    return lower_plan(g, c, s, false, false, 0, err);
}

Plan *ir_lower_compact(const Graph *g, const Cluster *c, const Strategy *s, Err *err)
{
    return lower_plan(g, c, s, true, true, 0, err);
}

Plan *ir_lower_compact_each(const Graph *g, const Cluster *c, const Strategy *s, Err *err)
{
    return lower_plan(g, c, s, true, false, 0, err);
}

Plan *ir_lower_compact_until(const Graph *g, const Cluster *c, const Strategy *s,
                             double deadline, Err *err)
{
    return lower_plan(g, c, s, true, true, deadline, err);
}

/* ----------------------------------------------------------------------------
 * Expanding the compact form */

typedef struct {
    const Program *cp;
    Program *out;
    const int32_t *pass_at;        /* [slot]: index of that pass in the schedule (program_pass_index) */
    int32_t *ibase, *vbase;        /* per pass: where it landed; -1 before `first` */
    int32_t (*outside)(void *ctx, int pass, int32_t local);
    void *ctx;
} Expand;

/* The body of the compact program holding instruction i (by = 0) or value i (by = 1). */
static const Body *body_holding(const Program *cp, int32_t i, int by)
{
    int lo = 0, hi = cp->nbodies - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((by ? cp->bodies[mid].v0 : cp->bodies[mid].i0) <= i) lo = mid;
        else hi = mid - 1;
    }
    return &cp->bodies[lo];
}

/* Where a pass of body kind/chunk and micro-batch sits in pass_at. */
static size_t pass_slot(const Program *cp, const Body *b, int micro)
{
    return ((size_t)b->kind * cp->nchunks + b->chunk) * cp->nmicro + micro;
}

int32_t *program_pass_index(const Program *cp)
{
    size_t n = (size_t)3 * cp->nchunks * cp->nmicro;
    int32_t *at = xmalloc(sizeof *at * (n ? n : 1));
    for (size_t k = 0; k < n; k++) at[k] = -1;
    for (int k = 0; k < cp->nsched; k++)
        at[pass_slot(cp, &cp->bodies[cp->sched[k].body], cp->sched[k].micro)] = k;
    const Body *tail = &cp->bodies[cp->nbodies - 1];
    at[pass_slot(cp, tail, tail->micro)] = cp->nsched;
    return at;
}

static int pass_micro(const Program *cp, int pass)
{
    return pass < cp->nsched ? cp->sched[pass].micro : cp->bodies[cp->nbodies - 1].micro;
}

static const Body *pass_body(const Program *cp, int pass)
{
    return &cp->bodies[pass < cp->nsched ? cp->sched[pass].body : cp->nbodies - 1];
}

int program_pass_of(const Program *cp, const int32_t *pass_at, int pass, int32_t x, int32_t *local)
{
    const Body *b = pass_body(cp, pass);
    if (x >= b->i0 && x < b->i1) {
        *local = x - b->i0;
        return pass;
    }
    const Body *o = body_holding(cp, x, 0);
    *local = x - o->i0;
    return pass_at[pass_slot(cp, o, pass_micro(cp, pass) + o->micro - b->micro)];
}

int32_t program_ref_base(const Program *cp, int body, int32_t x)
{
    const Body *b = &cp->bodies[body], *o = body_holding(cp, x, 0);
    return (int32_t)pass_slot(cp, o, 0) + o->micro - b->micro;
}

/* Instruction (by = 0) or value (by = 1) x of the body of `pass`, in the
 * expanded program. Outside the expanded range: what E->outside says of an
 * instruction, -1 for a value. */
static int32_t relocate(const Expand *E, int pass, int32_t x, int by)
{
    const Program *cp = E->cp;
    if (x < 0) return x;
    if (by && x < cp->nhead) return x;
    const Body *b = pass_body(cp, pass);
    /* most references stay in the pass's own body, expanded at its base */
    if (by ? x >= b->v0 && x < b->v1 : x >= b->i0 && x < b->i1)
        return by ? E->vbase[pass] + (x - b->v0) : E->ibase[pass] + (x - b->i0);
    const Body *o = body_holding(cp, x, by);
    int q = E->pass_at[pass_slot(cp, o, pass_micro(cp, pass) + o->micro - b->micro)];
    if (E->ibase[q] < 0)
        return by || !E->outside ? -1 : E->outside(E->ctx, q, x - o->i0);
    return by ? E->vbase[q] + (x - o->v0) : E->ibase[q] + (x - o->i0);
}

static int32_t remicro(int32_t micro, const Body *b, int mb)
{
    return micro < 0 ? micro : micro - b->micro + mb;
}

static void *reserve(void *p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return p;
    while (*cap < need) *cap = *cap ? 2 * *cap : 1024;
    return grow(p, elem * (size_t)*cap);
}

/* Appends the body of `pass` as it runs there. */
static void expand_pass(Expand *E, int pass)
{
    const Program *cp = E->cp;
    Program *o = E->out;
    const Body *b = pass_body(cp, pass);
    int mb = pass_micro(cp, pass);
    E->ibase[pass] = o->ninstrs;
    E->vbase[pass] = o->nvalues;
    int nv = b->v1 - b->v0, ni = b->i1 - b->i0;
    o->values = reserve(o->values, &o->cap_values, o->nvalues + nv, sizeof *o->values);
    for (int v = b->v0; v < b->v1; v++) {
        Value *x = &o->values[o->nvalues++];
        program_value_at(cp, v, x);
        x->micro = remicro(x->micro, b, mb);
    }
    o->instrs = reserve(o->instrs, &o->cap_instrs, o->ninstrs + ni, sizeof *o->instrs);
    for (int i = b->i0; i < b->i1; i++) {
        const Instr *src = &cp->instrs[i];
        o->deps = reserve(o->deps, &o->cap_deps, o->ndeps + src->ndeps, sizeof *o->deps);
        o->args = reserve(o->args, &o->cap_args, o->nargs + src->nargs, sizeof *o->args);
        Instr *x = &o->instrs[o->ninstrs++];
        program_instr_at(cp, i, x);
        x->micro = remicro(x->micro, b, mb);
        x->dep0 = o->ndeps;
        x->arg0 = o->nargs;
        /* relocate, with the pass's own body (most references) inline */
        for (int d = 0; d < src->ndeps; d++) {
            int32_t y = cp->deps[src->dep0 + d];
            int32_t r = y >= b->i0 && y < b->i1 ? E->ibase[pass] + (y - b->i0)
                                                : relocate(E, pass, y, 0);
            if (r != -1) o->deps[o->ndeps++] = r;
        }
        x->ndeps = o->ndeps - x->dep0;
        for (int a = 0; a < src->nargs; a++) {
            int32_t y = cp->args[src->arg0 + a];
            o->args[o->nargs++] = y >= b->v0 && y < b->v1 && y >= cp->nhead
                                      ? E->vbase[pass] + (y - b->v0)
                                      : relocate(E, pass, y, 1);
        }
    }
}

void program_expand_from(const Program *cp, int first, Program *out,
                         int32_t (*outside)(void *ctx, int pass, int32_t local), void *ctx)
{
    memset(out, 0, sizeof *out);
    out->stage = cp->stage;
    out->like = -1;
    out->nranks = cp->nranks;
    out->ranks = xmalloc(sizeof *out->ranks * (cp->nranks ? cp->nranks : 1));
    memcpy(out->ranks, cp->ranks, sizeof *out->ranks * cp->nranks);
    out->peak_mem = cp->peak_mem;
    out->static_mem = cp->static_mem;
    out->device_mem = cp->device_mem;
    int32_t *at = program_pass_index(cp);
    Expand E = { cp, out, at, xmalloc(sizeof *E.ibase * (cp->nsched + 1)),
                 xmalloc(sizeof *E.vbase * (cp->nsched + 1)), outside, ctx };
    for (int k = 0; k <= cp->nsched; k++) E.ibase[k] = E.vbase[k] = -1;
    out->values = reserve(NULL, &out->cap_values, cp->nhead + 1, sizeof *out->values);
    for (int v = 0; v < cp->nhead; v++) program_value_at(cp, v, &out->values[v]);
    out->nvalues = cp->nhead;
    for (int k = first; k < cp->nsched; k++) expand_pass(&E, k);
    expand_pass(&E, cp->nsched);
    free(at);
    free(E.ibase);
    free(E.vbase);
}

void program_expand(const Program *cp, Program *out)
{
    program_expand_from(cp, 0, out, NULL, NULL);
}

Plan *plan_expand(const Plan *p)
{
    Plan *q = xcalloc(1, sizeof *q);
    q->world = p->world;
    q->nclasses = p->nclasses;
    q->nops = p->nops;
    q->local = xmalloc(sizeof *q->local * (p->nops ? p->nops : 1));
    memcpy(q->local, p->local, sizeof *q->local * p->nops);
    q->rank_class = xmalloc(sizeof *q->rank_class * p->world);
    memcpy(q->rank_class, p->rank_class, sizeof *q->rank_class * p->world);
    q->classes = xcalloc(p->nclasses, sizeof *q->classes);
    for (int k = 0; k < p->nclasses; k++) {
        const Program *src = &p->classes[k];
        Program *dst = &q->classes[k];
        if (program_is_compact(src)) {
            program_expand(src, dst);
            continue;
        }
        *dst = *src;
        dst->ranks = xmemdup(src->ranks, sizeof *src->ranks * src->nranks);
        copy_code(dst, src);
    }
    return q;
}

void plan_expand_class(Plan *p, int k)
{
    Program full, *pr = &p->classes[k];
    if (!program_is_compact(pr)) return;
    /* the copies that share its instructions get their own first */
    for (int j = 0; j < p->nclasses && !pr->shared; j++) {
        Program *q = &p->classes[j];
        if (j != k && q->shared && q->instrs == pr->instrs) {
            Program was = *q;
            copy_code(q, &was);
        }
    }
    program_expand(pr, &full);
    program_free(pr);
    *pr = full;
}

void program_free(Program *pr)
{
    free(pr->ranks);
    if (!pr->shared) {
        free(pr->instrs);
        free(pr->deps);
        free(pr->args);
        free(pr->values);
    }
    free(pr->bodies);
    free(pr->sched);
    memset(pr, 0, sizeof *pr);
}

void plan_free(Plan *p)
{
    if (!p) return;
    for (int k = 0; k < p->nclasses; k++) program_free(&p->classes[k]);
    free(p->classes);
    free(p->rank_class);
    free(p->local);
    free(p);
}

/* ----------------------------------------------------------------------------
 * Summaries */

static const char *KIND_NAMES[I_KIND_COUNT] = {
    "compute", "allreduce", "allgather", "reduce_scatter", "all_to_all",
    "broadcast", "send", "recv", "alloc", "free",
};

const char *instr_kind_name(InstrKind k)
{
    return k < I_KIND_COUNT ? KIND_NAMES[k] : "?";
}

const char *value_kind_name(ValueKind k)
{
    static const char *n[VAL_KIND_COUNT] = { "data", "act", "grad", "param", "param_use",
                                             "param_grad" };
    return k < VAL_KIND_COUNT ? n[k] : "?";
}

const char *phase_name(Phase p)
{
    static const char *n[PH_COUNT] = { "fwd", "bwd_data", "bwd_weight", "update" };
    return p < PH_COUNT ? n[p] : "?";
}

static bool is_comm(InstrKind k)
{
    return k >= I_ALLREDUCE && k <= I_RECV;
}

/* What a class does in one step, by instruction kind and mesh axes. */
typedef struct {
    int64_t total, count[I_KIND_COUNT], bytes[I_KIND_COUNT];
    double flops;
    AxisMask axes[64];                   /* bytes per axis set, in first-seen order */
    int64_t axb[64];
    int nax;
    InstrKind kind;                      /* sel_bytes: bytes of this kind and reason only */
    Why why;
    int64_t sel_bytes;
} Tally;

static void tally_one(Tally *t, const Instr *in, int64_t times)
{
    t->total += times;
    t->count[in->kind] += times;
    if (in->kind == I_COMPUTE) t->flops += (double)in->flops * (double)times;
    if (in->kind == t->kind && (t->why == WHY_COUNT || in->why == t->why))
        t->sel_bytes += in->bytes * times;
    if (!is_comm(in->kind)) return;
    t->bytes[in->kind] += in->bytes * times;
    int a = 0;
    while (a < t->nax && t->axes[a] != in->axes) a++;
    if (a == t->nax && t->nax < 64) {
        t->axes[t->nax] = in->axes;
        t->axb[t->nax++] = 0;
    }
    if (a < t->nax) t->axb[a] += in->bytes * times;
}

/* Every instruction of the step with how many times it runs: once each in a
 * full program; in a compact one, each body's as often as the schedule runs
 * it (the tail once). */
static void tally(const Program *pr, Tally *t, InstrKind kind, Why why)
{
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->why = why;
    if (!program_is_compact(pr)) {
        for (int i = 0; i < pr->ninstrs; i++) tally_one(t, &pr->instrs[i], 1);
        return;
    }
    int64_t *times = xcalloc(pr->nbodies, sizeof *times);
    for (int k = 0; k < pr->nsched; k++) times[pr->sched[k].body]++;
    times[pr->nbodies - 1] = 1;
    for (int b = 0; b < pr->nbodies; b++)
        for (int i = pr->bodies[b].i0; i < pr->bodies[b].i1 && times[b]; i++)
            tally_one(t, &pr->instrs[i], times[b]);
    free(times);
}

int64_t program_comm_bytes(const Program *pr, InstrKind kind, Why why)
{
    Tally t;
    tally(pr, &t, kind, why);
    return t.sel_bytes;
}

cJSON *plan_summary_json(const Plan *p, const Strategy *s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "ranks", p->world);
    cJSON *cls = cJSON_AddArrayToObject(j, "classes");
    for (int k = 0; k < p->nclasses; k++) {
        const Program *pr = &p->classes[k];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(cls, o);
        cJSON_AddItemToObject(o, "ranks", cJSON_CreateIntArray(pr->ranks, pr->nranks));
        cJSON_AddNumberToObject(o, "stage", pr->stage);
        Tally t;
        tally(pr, &t, I_KIND_COUNT, WHY_COUNT);
        cJSON *ic = cJSON_AddObjectToObject(o, "instrs");
        for (int kk = 0; kk < I_KIND_COUNT; kk++)
            cJSON_AddNumberToObject(ic, KIND_NAMES[kk], (double)t.count[kk]);
        cJSON_AddNumberToObject(ic, "total", (double)t.total);
        cJSON *cb = cJSON_AddObjectToObject(o, "comm_bytes");
        for (int kk = I_ALLREDUCE; kk <= I_RECV; kk++)
            cJSON_AddNumberToObject(cb, KIND_NAMES[kk], (double)t.bytes[kk]);
        cJSON *ca = cJSON_AddObjectToObject(o, "comm_bytes_by_axis");
        for (int a = 0; a < t.nax; a++) {
            char name[96];
            cJSON_AddNumberToObject(ca, strategy_axes_name(s, t.axes[a], name, sizeof name),
                                    (double)t.axb[a]);
        }
        cJSON_AddNumberToObject(o, "flops", t.flops);
        cJSON_AddNumberToObject(o, "static_mem_bytes", (double)pr->static_mem);
        cJSON_AddNumberToObject(o, "peak_mem_bytes", (double)pr->peak_mem);
        if (pr->device_mem > 0) {
            cJSON_AddNumberToObject(o, "device_mem_bytes", pr->device_mem);
            cJSON_AddBoolToObject(o, "fits", pr->peak_mem <= pr->device_mem);
        }
    }
    return j;
}

static void human_bytes(double b, char *out, int n)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    int i = 0;
    while (fabs(b) >= 1024 && i < 5) { b /= 1024; i++; }
    snprintf(out, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
}

static void rank_ranges(const int *r, int n, char *out, int cap)
{
    int at = 0;
    out[0] = 0;
    for (int i = 0; i < n && at < cap - 24; ) {
        int j = i;
        while (j + 1 < n && r[j + 1] == r[j] + 1) j++;
        at += snprintf(out + at, cap - at, j > i ? "%s%d-%d" : "%s%d", i ? "," : "", r[i], r[j]);
        i = j + 1;
        if (i < n && at >= cap - 24) { snprintf(out + at, cap - at, ",..."); break; }
    }
}

void plan_summary_print(const Plan *p, const Strategy *s, FILE *f)
{
    char mesh[256] = "";
    for (int a = 0; a < s->naxes; a++) {
        char x[48];
        snprintf(x, sizeof x, "%s%s=%d", a ? " x " : "", s->axis_name[a], s->axis_size[a]);
        strncat(mesh, x, sizeof mesh - strlen(mesh) - 1);
    }
    char sched[48];
    if (s->schedule == SCHED_INTERLEAVED)
        snprintf(sched, sizeof sched, "interleaved, %d chunks per stage", s->virtual_stages);
    else
        snprintf(sched, sizeof sched, "%s", schedule_name(s->schedule));
    fprintf(f, "plan: %d ranks, mesh %s, %d stage%s, %d micro-batch%s (%s), %d class%s\n",
            p->world, mesh, s->nstages, s->nstages == 1 ? "" : "s", s->microbatches,
            s->microbatches == 1 ? "" : "es", sched, p->nclasses, p->nclasses == 1 ? "" : "es");
    for (int k = 0; k < p->nclasses; k++) {
        const Program *pr = &p->classes[k];
        char ranks[160], a[32], b[32], c[32];
        rank_ranges(pr->ranks, pr->nranks, ranks, sizeof ranks);
        Tally t;
        tally(pr, &t, I_KIND_COUNT, WHY_COUNT);
        fprintf(f, "\nclass %d: stage %d, %d rank%s [%s]\n", k, pr->stage, pr->nranks,
                pr->nranks == 1 ? "" : "s", ranks);
        fprintf(f, "  instructions %lld:", (long long)t.total);
        for (int kk = 0; kk < I_KIND_COUNT; kk++)
            if (t.count[kk]) fprintf(f, " %s %lld", KIND_NAMES[kk], (long long)t.count[kk]);
        fprintf(f, "\n  compute %.3g FLOP per step\n", t.flops);
        fprintf(f, "  bytes moved per step:");
        bool any = false;
        for (int kk = I_ALLREDUCE; kk <= I_RECV; kk++) {
            if (!t.bytes[kk]) continue;
            human_bytes((double)t.bytes[kk], a, sizeof a);
            fprintf(f, " %s %s", KIND_NAMES[kk], a);
            any = true;
        }
        fprintf(f, any ? "\n" : " none\n");
        if (t.nax) {
            fprintf(f, "  by mesh axis:");
            for (int x = 0; x < t.nax; x++) {
                char name[96];
                human_bytes((double)t.axb[x], a, sizeof a);
                fprintf(f, " %s %s", strategy_axes_name(s, t.axes[x], name, sizeof name), a);
            }
            fprintf(f, "\n");
        }
        human_bytes((double)pr->static_mem, a, sizeof a);
        human_bytes((double)pr->peak_mem, b, sizeof b);
        fprintf(f, "  memory: params+grads+optimizer %s, peak %s", a, b);
        if (pr->device_mem > 0) {
            human_bytes(pr->device_mem, c, sizeof c);
            fprintf(f, " of %s%s", c, pr->peak_mem <= pr->device_mem ? "" : "  DOES NOT FIT");
        }
        fprintf(f, "\n");
    }
}
