/*
 * sim.c — one training step of a lowered plan, simulated instruction by
 * instruction.
 *
 * Each class is simulated through one representative rank (its first): the
 * ranks of a class run the same program, so they reach each point at the
 * same time. Every rank has the in-order stream of its interpreter, which
 * runs compute and every blocking communication, and one per communicator
 * for the collectives the executor runs behind it (stream_code says which).
 * An instruction starts when its stream is free and its dependencies have
 * finished; alloc and free take no time and hold no stream.
 *
 *   collective  the k-th collective a class issues on one group key (its
 *               live mesh axes; tied-param sums have a key of their own, as
 *               they have a communicator of their own) meets the k-th of
 *               every other class with members in the group, as MPI and
 *               NCCL match calls on a communicator in order. It starts when
 *               the last member is ready and holds every member's stream
 *               until it ends.
 *   send        is posted (it does not hold the stream: the executor posts
 *               sends without waiting) and completes when its bytes have
 *               moved.
 *   recv        holds its stream from when it is ready until the
 *               matching send's bytes have arrived. Transfers between two
 *               classes match in order per (peer, tag), as MPI's
 *               non-overtaking rule orders messages.
 *   stale pull  a parameter-server pull with staleness k is taken k steps
 *               later by the executor, so this step does not wait for it.
 *
 * The loop advances each class as far as its streams can go, then the next
 * class, until every instruction has finished; a round in which no class
 * moves means some collective or receive is never matched, which is a
 * lowering bug and reported as such.
 *
 * Legend: c, d = classes, i = instruction, K = group key, k = occurrence.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel.h"
#include "ir/util.h"

/* Streams of a simulated rank: the interpreter's (compute and every
 * blocking communication), then one per collective group for the
 * all-reduces a CPU rank starts without waiting (as MPI progresses each
 * communicator's requests on their own). */
enum { S_MAIN, S_GROUPS };

#define KEYS (1 << (MESH_MAX_AXES + 1))     /* axis masks, and the same for tied sums */
#define TIED_KEY (1 << MESH_MAX_AXES)

/* ----------------------------------------------------------------------------
 * A small open-addressing map from a 4-int tuple to an index */

typedef struct {
    int64_t k[4];
    int32_t v;
    bool used;
} Slot;

typedef struct {
    Slot *slots;
    int cap, n;
} Map;

/* fmax and fmin as the C library defines them (a NaN argument gives the
 * other), inline: the simulator's hot loops call them, and the library's
 * are calls */
static inline double max2(double a, double b) { return a > b || isnan(b) ? a : b; }
static inline double min2(double a, double b) { return a < b || isnan(b) ? a : b; }

static uint64_t mix(const int64_t k[4])
{
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 4; i++) {
        h ^= (uint64_t)k[i] + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
        h *= 0xbf58476d1ce4e5b9ULL;
    }
    return h ^ (h >> 31);
}

static void map_grow(Map *m);

/* The slot of key k; created with v = -1 when absent. */
static Slot *map_at(Map *m, int64_t a, int64_t b, int64_t c, int64_t d)
{
    if (2 * (m->n + 1) > m->cap) map_grow(m);
    int64_t k[4] = { a, b, c, d };
    uint64_t h = mix(k);
    for (int i = (int)(h & (uint64_t)(m->cap - 1));; i = (i + 1) & (m->cap - 1)) {
        Slot *s = &m->slots[i];
        if (!s->used) {
            memcpy(s->k, k, sizeof k);
            s->v = -1;
            s->used = true;
            m->n++;
            return s;
        }
        if (s->k[0] == a && s->k[1] == b && s->k[2] == c && s->k[3] == d) return s;
    }
}

static void map_grow(Map *m)
{
    Map old = *m;
    m->cap = m->cap ? m->cap * 2 : 16;
    m->slots = xcalloc(m->cap, sizeof *m->slots);
    m->n = 0;
    for (int i = 0; i < old.cap; i++) {
        if (!old.slots[i].used) continue;
        Slot *s = map_at(m, old.slots[i].k[0], old.slots[i].k[1], old.slots[i].k[2],
                         old.slots[i].k[3]);
        s->v = old.slots[i].v;
    }
    free(old.slots);
}

static void map_free(Map *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------------------------
 * State */

typedef struct {
    double ready, start, end;       /* NAN until known */
} Meet;

/* A collective's time, remembered by what it depends on besides the group
 * (compile_body: a layer's collectives repeat layer after layer). */
typedef struct {
    int64_t bytes;
    int32_t tensor;                 /* PowerSGD's sizes; -1 otherwise */
    uint8_t kind, compress, algo, used;
    double t;
} CollTime;

/* enough for a layer's distinct gradient sizes (the last backward's
 * all-reduces, param by param) and its activations' */
#define COLL_TIMES 16

typedef struct {
    Meet *v;
    int n, cap;
    int *ranks, nranks;             /* the representative's group */
    int *members, nmembers;         /* distinct classes in it */
    CollTime times[COLL_TIMES];
    int next_time;
    int key;                        /* its group key (key_of) */
} MeetList;

/* A point-to-point message between two classes, matched in order. */
typedef struct {
    double send_t, recv_ready, end;
    int send_class;
    int32_t send_instr;
} Msg;

/* The messages from one class to another with one tag, in order (a line);
 * the transfers a class has made with one peer rank and tag are counted
 * on a channel. A body resolves its lines and channels once
 * (compile_body), so a pass run whole finds its messages by index. */
typedef struct {
    Msg *v;
    int n, cap;
} Line;

/* An update set aside: it runs once its dependencies are done and the
 * interpreter's clock has passed their end. Until then the dependency last
 * seen unfinished (`wait`, -1: none) is checked first, and once all are
 * done their end (`t`) is kept, so the interpreter's every step looks at
 * each set-aside update in constant time. */
typedef struct {
    int32_t i;
    int32_t wait;
    double t;                       /* NAN while a dependency is unfinished */
} SetAside;

typedef struct {
    const Program *pr;
    int rep;
    int coord[MESH_MAX_AXES];
    int device;                     /* index of the rep's device group */
    OpDevice dev;
    double *start, *end;            /* per instruction */
    int32_t *seq;                   /* comm: occurrence index once registered, else -1 */
    int32_t *line;                  /* a receive registered (seq >= 0): its message line,
                                       so polling it until its send is posted costs no lookup */
    int nstreams;
    int16_t key_stream[KEYS];       /* collective group key -> its stream, -1: none yet */
    uint16_t *sid;                  /* per instruction: its stream */
    int32_t *list;                  /* instructions by stream, in order (CSR by list_off) */
    int *list_off, *cur;            /* per stream: start in list, next to run (absolute) */
    double *free_t;                 /* per stream: when it is free */
    MeetList **meet;                /* the groups it meets in, by key (meet_get) */
    int nmeet, cap_meet;
    SimClass out;
    SetAside *later;                /* updates set aside, in order (see main_step) */
    int nlater;
    /* a compact program (see "Passes"): the passes run whole before the
     * instruction-level loop takes over at pass `first` */
    const Program *cp;
    int32_t *pass_at;               /* program_pass_index */
    int first;
    double afree[S_GROUPS + KEYS];  /* by stream code: free after the passes run whole */
    double base_end;                /* latest end among them (and their sends) */
    int *xoff;                      /* per pass: its exports' first slot in x* */
    double *xstart, *xend;          /* per export slot of a pass run whole */
    int16_t *xcode;                 /* its stream code (stream_code) */
    double *xlast;                  /* per pass: its exports' latest end (INFINITY: one
                                       not known when it ran) */
} CState;

typedef struct {
    double t;
    uint8_t src;                    /* CostSource */
} SmallTime;

typedef struct {
    const Graph *g;
    const Cluster *c;
    const Strategy *s;
    const Plan *p;
    const OpModel *ops;
    const LinkModel *links;
    const SimOpts *o;
    OpModel *own_ops;
    LinkModel *own_links;
    CState *cs;
    AxisMask live;
    Map chan_at;                    /* (class, peer rank, tag, 0) -> channel */
    int *chan_n;                    /* per channel: its transfers so far, from -1 */
    int nchan, cap_chan;
    Map line_at;                    /* (src class, dst class, tag, 0) -> line */
    Line *lines;
    int nlines, cap_lines;
    double *op_time;                /* [(device * nops + op) * PH_COUNT + phase], NAN: not yet */
    Map small_at;                   /* (device and phase, dtype, FLOPs, bytes) -> small */
    SmallTime *small;               /* the times of updates and sums (op_time) */
    int nsmall, cap_small;
    double calib[3];                /* the op model's calibration (opmodel_calibration) */
    SimResult *r;
    bool trace;
    bool release;                   /* nothing moved: set aside what waits_async cannot tell */
    bool bounded;                   /* the lower bound reached SimOpts.bound */
    int skip_tries;                 /* attempts to skip a steady state that went as far
                                       as the schedule (try_skip) */
    struct Passes_ *passes;         /* per class, while the passes run whole (run_passes) */
    Err *err;
} Sim;

/* ----------------------------------------------------------------------------
 * Operators */

void opshape_of_instr(const Graph *g, const Strategy *s, const Plan *p, const Instr *in,
                      OpShape *x)
{
    memset(x, 0, sizeof *x);
    x->phase = (Phase)in->phase;
    x->flops = in->flops;
    x->bytes = in->mem_bytes;
    if (in->op >= 0) {
        const Op *op = &g->ops[in->op];
        x->kind = op->kind;
        x->dtype = g->tensors[op->out].dtype;
        x->letters = op->letters_mask;
        x->in0 = cm_letter_mask(op->in_letters[0]);
        x->in1 = op->nin > 1 ? cm_letter_mask(op->in_letters[1]) : 0;
        x->out = cm_letter_mask(op->out_letters);
        memcpy(x->size, p->local[in->op], sizeof x->size);
        int s, t;
        if (op_causal_letters(op, &s, &t) == 0) opshape_set_causal(x, x->size[s], x->size[t]);
        return;
    }
    x->dtype = in->tensor >= 0 ? g->tensors[in->tensor].dtype : DT_F32;
    int eb = dtype_bytes(x->dtype);
    if (in->phase == PH_UPDATE) {
        /* the update reads and writes param, gradient and state: 4 words an element */
        x->kind = s->optimizer == OPT_ADAM ? CM_KIND_ADAM : CM_KIND_SGD;
        x->size[0] = (int64_t)(in->mem_bytes / (4.0 * eb));
    } else {
        /* a gradient sum reads two addends and writes one */
        x->kind = CM_KIND_SUM;
        x->size[0] = (int64_t)(in->mem_bytes / (3.0 * eb));
    }
    if (x->size[0] < 1) x->size[0] = 1;
}

static double op_time(Sim *S, CState *c, const Instr *in, CostSource *src)
{
    if (S->o->compute_time) {
        double t = S->o->compute_time(S->o->ctx, (int)(c - S->cs), in);
        if (t >= 0) return t;
    }
    if (in->op >= 0) {
        size_t k = ((size_t)c->device * S->g->nops + in->op) * PH_COUNT + in->phase;
        if (!isnan(S->op_time[k])) {
            *src = opmodel_covers(S->ops, S->g->ops[in->op].kind) ? CM_SRC_MLP : CM_SRC_ANALYTIC;
            return S->op_time[k];
        }
        OpShape x;
        opshape_of_instr(S->g, S->s, S->p, in, &x);
        S->op_time[k] = opmodel_time(S->ops, &c->dev, &x, src) * S->calib[0] + S->calib[2];
        return S->op_time[k];
    }
    /* an update or a gradient sum: its shape is its phase, dtype and
     * sizes, and the params of a model's layers repeat them */
    DType dt = in->tensor >= 0 ? S->g->tensors[in->tensor].dtype : DT_F32;
    int64_t fb, mb;
    double fl = in->flops, mem = in->mem_bytes;
    memcpy(&fb, &fl, sizeof fb);
    memcpy(&mb, &mem, sizeof mb);
    Slot *sl = map_at(&S->small_at, (int64_t)c->device * PH_COUNT + in->phase, dt, fb, mb);
    if (sl->v >= 0) {
        *src = (CostSource)S->small[sl->v].src;
        return S->small[sl->v].t;
    }
    OpShape x;
    opshape_of_instr(S->g, S->s, S->p, in, &x);
    double t = opmodel_time(S->ops, &c->dev, &x, src) * S->calib[0] + S->calib[2];
    if (S->nsmall == S->cap_small) {
        S->cap_small = S->cap_small ? 2 * S->cap_small : 64;
        S->small = xrealloc(S->small, sizeof *S->small * S->cap_small);
    }
    S->small[S->nsmall] = (SmallTime){ t, (uint8_t)*src };
    sl->v = S->nsmall++;
    return t;
}

/* ----------------------------------------------------------------------------
 * Groups and peers */

/* The rank whose coordinates are `coord` with the axes of mask set to the
 * group index idx (row-major over those axes in mesh order). */
static int rank_at(const Strategy *s, const int coord[MESH_MAX_AXES], AxisMask mask, int idx)
{
    int c[MESH_MAX_AXES];
    memcpy(c, coord, sizeof c);
    for (int a = s->naxes - 1; a >= 0; a--) {
        if (!(mask & (1 << a))) continue;
        c[a] = idx % s->axis_size[a];
        idx /= s->axis_size[a];
    }
    return strategy_rank(s, c);
}

/* Class c's meet list of group key `key`, made (empty) when first asked
 * for: a class meets in a few groups of the KEYS there could be. */
static MeetList *meet_get(CState *c, int key)
{
    for (int k = 0; k < c->nmeet; k++)
        if (c->meet[k]->key == key) return c->meet[k];
    if (c->nmeet == c->cap_meet) {
        c->cap_meet = c->cap_meet ? 2 * c->cap_meet : 4;
        c->meet = xrealloc(c->meet, sizeof *c->meet * c->cap_meet);
    }
    MeetList *ml = xcalloc(1, sizeof *ml);
    ml->key = key;
    return c->meet[c->nmeet++] = ml;
}

static MeetList *meet_list(Sim *S, int ci, const Instr *in, int key)
{
    CState *c = &S->cs[ci];
    MeetList *ml = meet_get(c, key);
    if (ml->ranks) return ml;
    AxisMask ax = (AxisMask)(key & (TIED_KEY - 1));
    int n = strategy_group_size(S->s, ax);
    ml->ranks = xmalloc(sizeof *ml->ranks * (n ? n : 1));
    ml->members = xmalloc(sizeof *ml->members * (n ? n : 1));
    /* a tied sum runs among the stages that use the param (read from the
     * graph, as the executor does: any number of stages, at most
     * MAX_STAGES) */
    uint64_t using = 0;
    for (int i = 0; i < S->g->nops && (key & TIED_KEY); i++)
        for (int q = 0; q < S->g->ops[i].nin; q++)
            if (S->g->ops[i].in[q] == in->tensor && S->s->op_stage[i] < 64)
                using |= 1ull << S->s->op_stage[i];
    for (int k = 0; k < n; k++) {
        int r = rank_at(S->s, c->coord, ax, k);
        if (key & TIED_KEY) {
            int co[MESH_MAX_AXES];
            strategy_coords(S->s, r, co);
            if (!(using >> co[S->s->pp_axis] & 1)) continue;
        }
        ml->ranks[ml->nranks++] = r;
        int cls = S->p->rank_class[r], j = 0;
        while (j < ml->nmembers && ml->members[j] != cls) j++;
        if (j == ml->nmembers) ml->members[ml->nmembers++] = cls;
    }
    return ml;
}

static Meet *meet_at(MeetList *ml, int k)
{
    while (ml->n <= k) {
        if (ml->n == ml->cap) {
            ml->cap = ml->cap ? ml->cap * 2 : 16;
            ml->v = xrealloc(ml->v, sizeof *ml->v * ml->cap);
        }
        ml->v[ml->n++] = (Meet){ NAN, NAN, NAN };
    }
    return &ml->v[k];
}

static int key_of(const Sim *S, const Instr *in)
{
    int key = in->axes & S->live;
    if (in->why == WHY_TIED) key |= TIED_KEY;
    return key;
}

/* The tag that orders messages between two ranks: the value's tensor, its
 * direction and (parameter server) its part. */
static int64_t tag_of(const Instr *in)
{
    return ((int64_t)in->tensor * 4 + (in->phase == PH_FWD ? 0 : 1) + (in->why == WHY_PS ? 2 : 0))
           * 65536 + (in->nparts > 0 ? in->part : 0);
}

static SyncAlgo algo_of(const Sim *S, const Instr *in)
{
    if (in->why == WHY_GRAD_SYNC && in->tensor >= 0) return S->s->params[in->tensor].algo;
    return ALGO_RING;
}

/* ----------------------------------------------------------------------------
 * Scheduling */

/* A dependency d <= -2 is an instruction of a pass run whole (see
 * "Passes"): export slot -2 - d. */
static bool is_ext(int32_t d)
{
    return d <= -2;
}

/* End of instruction d of class c, resolving alloc/free (which take no time)
 * from their own dependencies; NAN while unknown. */
static double dep_end(const CState *c, int32_t d)
{
    if (is_ext(d)) return c->xend[-2 - d];
    const Instr *in = &c->pr->instrs[d];
    if (!isnan(c->end[d]) || (in->kind != I_ALLOC && in->kind != I_FREE)) return c->end[d];
    double t = 0;
    for (int k = 0; k < in->ndeps; k++) {
        double e = dep_end(c, c->pr->deps[in->dep0 + k]);
        if (isnan(e)) return NAN;
        if (e > t) t = e;
    }
    c->end[d] = t;
    return t;
}

/* The time instruction i may start on its stream, or NAN while a dependency
 * is unfinished; *binding receives the dependency that decided it (-1: the
 * stream itself). */
static double ready_at(const CState *c, int32_t i, int stream, int32_t *binding)
{
    const Instr *in = &c->pr->instrs[i];
    double t = c->free_t[stream];
    *binding = -1;
    for (int k = 0; k < in->ndeps; k++) {
        int32_t d = c->pr->deps[in->dep0 + k];
        double e = dep_end(c, d);
        if (isnan(e)) return NAN;
        if (e > t) {
            t = e;
            *binding = d;
        }
    }
    return t;
}

static void span(Sim *S, int ci, int32_t i, double start, double end)
{
    if (!S->trace) return;
    SimResult *r = S->r;
    const Instr *in = &S->cs[ci].pr->instrs[i];
    int n = r->nspans[ci];
    if ((n & (n - 1)) == 0)
        r->spans[ci] = xrealloc(r->spans[ci], sizeof *r->spans[ci] * (n ? 2 * n : 64));
    r->spans[ci][n] = (SimSpan){ start, end, i, in->stream, in->kind, in->phase, in->why,
                                 in->recompute, in->micro };
    r->nspans[ci] = n + 1;
}

/* Does the class's interpreter ever leave a collective in flight behind
 * it? Only a CPU rank's does (the GPU executor waits for every call). */
static bool runs_behind(const CState *c)
{
    return !c->dev.gpu;
}

/* The stream an instruction runs on, by how the backend executes the
 * program. Both executors interpret it on one thread. The CPU one (MPI)
 * blocks in every communication except the collectives it starts without
 * waiting (Instr.behind: gradient all-reduces in place, ZeRO's
 * reduce-scatters and all-gathers) and the sends it posts. The GPU
 * one (NCCL, executor/comm_nccl.c) waits for the device's queued kernels
 * before each call and for the call to finish, so every collective holds
 * the interpreter; a send is queued and launched with the next receive,
 * which holds the interpreter until its bytes arrive (the receive's time is
 * the pair's), so only the posting is free. Modelling NCCL streams running
 * beside the compute stream instead predicted Megatron-LM's published
 * pipelined runs 13-17% fast: their collectives block too. */
static int stream_code(const Sim *S, const CState *c, const Instr *in)
{
    if (in->kind == I_ALLOC || in->kind == I_FREE) return -1;
    return runs_behind(c) && in->behind ? S_GROUPS + key_of(S, in) : S_MAIN;
}

/* The same as a stream of this class's instruction-level loop: the first
 * group met gets the first stream after S_MAIN. */
static int stream_of(const Sim *S, CState *c, const Instr *in)
{
    int code = stream_code(S, c, in);
    if (code < S_GROUPS) return code;
    int key = code - S_GROUPS;
    if (c->key_stream[key] < 0) c->key_stream[key] = (int16_t)c->nstreams++;
    return c->key_stream[key];
}

/* Did dependency d run on a stream other than the interpreter's, and for
 * how long (*moved)? */
static bool on_comm_stream(const CState *c, int32_t d, double *moved)
{
    if (is_ext(d)) {
        *moved = c->xend[-2 - d] - c->xstart[-2 - d];
        return c->xcode[-2 - d] != S_MAIN;
    }
    *moved = c->end[d] - c->start[d];
    return c->sid[d] != S_MAIN;
}

static bool run_compute(Sim *S, int ci, int32_t i)
{
    CState *c = &S->cs[ci];
    const Instr *in = &c->pr->instrs[i];
    int32_t bind;
    double t = ready_at(c, i, S_MAIN, &bind);
    if (isnan(t)) return false;
    CostSource src = CM_SRC_ANALYTIC;
    double dur = op_time(S, c, in, &src);
    S->r->op_count[src]++;
    if (src == CM_SRC_ANALYTIC) {
        int kind = in->op >= 0 ? (int)S->g->ops[in->op].kind
                 : in->phase == PH_UPDATE ? (S->s->optimizer == OPT_ADAM ? CM_KIND_ADAM : CM_KIND_SGD)
                 : CM_KIND_SUM;
        S->r->analytic_kinds |= 1u << kind;
    }
    /* a wait for communication is exposed comm up to the transfer's length;
     * the rest is a wait for a peer (a bubble, a slower member) */
    double gap = t - c->free_t[S_MAIN];
    double moved;
    if (gap > 0 && bind != -1 && on_comm_stream(c, bind, &moved))
        c->out.exposed_comm += min2(gap, max2(0, moved));
    c->start[i] = t;
    c->end[i] = t + dur;
    c->free_t[S_MAIN] = t + dur;
    c->out.busy_compute += dur;
    c->out.main_instrs++;
    c->out.flops += in->flops;
    if (in->recompute) c->out.recompute += dur;
    span(S, ci, i, t, t + dur);
    return true;
}

/* Does a collective on stream code `code` take its time from the
 * interpreter's too? Only a CPU rank runs collectives behind its
 * interpreter, and they do: the executor gives a rank its cores' worth of
 * threads, so the collective progresses on the same cores, and what it
 * takes the interpreter loses (the bench's all-reduce overlapping a
 * backward was 1.09x slower than in program order). */
static bool cpu_shares(int code)
{
    return code >= S_GROUPS;
}

/* A transfer or collective of class ci held its stream from start to end;
 * on the interpreter's own stream nothing else ran meanwhile. */
static void finish_comm(Sim *S, int ci, int32_t i, double start, double end)
{
    CState *c = &S->cs[ci];
    int st = c->sid[i];
    c->start[i] = start;
    c->end[i] = end;
    c->free_t[st] = end;
    c->out.busy_comm += end - start;
    if (st == S_MAIN) c->out.main_instrs++;
    if (st == S_MAIN) c->out.exposed_comm += end - start;
    if (cpu_shares(st)) {
        c->free_t[S_MAIN] = max2(c->free_t[S_MAIN], start) + (end - start);
        c->out.exposed_comm += end - start;
    }
    span(S, ci, i, start, end);
}

/* Seconds of one pass of elementwise work over `elems` floats moving
 * `bytes_per` bytes each (read and written), priced as the op model prices
 * a gradient sum, the same kind of kernel. */
static double pass_time(const Sim *S, const CState *c, double elems, double bytes_per)
{
    OpShape x = { .kind = CM_KIND_SUM, .phase = PH_UPDATE, .dtype = DT_F32, .flops = elems,
                  .bytes = elems * bytes_per };
    x.size[0] = (int64_t)elems;
    return opmodel_time(S->ops, &c->dev, &x, NULL);
}

/* A collective as the executor runs it. A compressed gradient all-reduce
 * also pays its coding passes, elementwise kernels priced like the op
 * model's (pass_time), and int8 codes, which do not add up, are
 * all-gathered and each member's decoded and summed (the executor's
 * algorithm: n times the codes cross the links). PowerSGD's two small
 * all-reduces each come with their matrix products. */
static double compressed_time(const Sim *S, const CState *c, const Instr *in, const MeetList *ml)
{
    InstrKind kind = (InstrKind)in->kind;
    int64_t bytes = in->bytes;
    double extra = 0, bw = c->dev.mem_bw > 0 ? c->dev.mem_bw : 1e10;
    int n = ml->nranks;
    if (kind == I_ALLREDUCE && in->compress == COMPRESS_INT8) {
        double elems = (double)(bytes > 4 ? bytes - 4 : 1);
        kind = I_ALLGATHER;
        bytes = (int64_t)(elems * n);
        /* encode: gradient and error read twice (the scale, then the
         * codes), codes and error written, and the sum cleared; per member
         * its codes decoded (in, floats out) and added (both in, the sum
         * out) */
        extra = pass_time(S, c, elems, 8 + 8 + 1 + 4 + 4) + n * pass_time(S, c, elems, 1 + 4 + 4 + 4 + 4);
    } else if (kind == I_ALLREDUCE && in->compress == COMPRESS_FP16) {
        double elems = (double)bytes / 2;
        extra = 2 * pass_time(S, c, elems, 4 + 2);  /* to half and back */
        kind = LINK_ALLREDUCE_F16;                  /* summed in halves */
    } else if (kind == I_ALLREDUCE && in->compress == COMPRESS_POWERSGD && in->tensor >= 0) {
        /* rows x cols gradient, rank r: P = M Q or Q = M^T P, then (for Q)
         * the error and the product P Q^T: about two GEMMs of 2 rows cols r */
        const Tensor *T = &S->g->tensors[in->tensor];
        double total = (double)tensor_numel(T), r = S->s->params[in->tensor].powersgd_rank;
        double peak = c->dev.peak_flops[DT_F32] > 0 ? c->dev.peak_flops[DT_F32] : 1e12;
        extra = 2 * 2 * total * r / peak + 3 * total * 4 / bw;
    }
    return linkmodel_time(S->links, kind, algo_of(S, in), bytes, ml->ranks, ml->nranks) *
               S->calib[1] + extra * S->calib[0];
}

/* compressed_time, remembered in the meet list (per class and group). */
static double coll_time(const Sim *S, const CState *c, const Instr *in, MeetList *ml)
{
    CollTime x = { .bytes = in->bytes, .kind = in->kind, .compress = in->compress,
                   .algo = (uint8_t)algo_of(S, in), .used = 1,
                   .tensor = in->compress == COMPRESS_POWERSGD ? in->tensor : -1 };
    for (int k = 0; k < COLL_TIMES; k++) {
        const CollTime *y = &ml->times[k];
        if (y->used && y->bytes == x.bytes && y->tensor == x.tensor && y->kind == x.kind &&
            y->compress == x.compress && y->algo == x.algo)
            return y->t;
    }
    x.t = compressed_time(S, c, in, ml);
    ml->times[ml->next_time] = x;
    ml->next_time = (ml->next_time + 1) % COLL_TIMES;
    return x.t;
}

static bool run_collective(Sim *S, int ci, int32_t i)
{
    CState *c = &S->cs[ci];
    const Instr *in = &c->pr->instrs[i];
    int st = c->sid[i];
    int key = key_of(S, in);
    MeetList *ml = meet_list(S, ci, in, key);
    if (ml->nranks < 2) {
        /* a group of one (an axis of size 1 at run time): nothing moves */
        int32_t bind;
        double t = ready_at(c, i, st, &bind);
        if (isnan(t)) return false;
        finish_comm(S, ci, i, t, t + (st == S_MAIN ? S->calib[2] : 0));
        return true;
    }
    if (c->seq[i] < 0) {
        int32_t bind;
        double t = ready_at(c, i, st, &bind);
        if (isnan(t)) return false;
        c->seq[i] = ml->n;
        meet_at(ml, ml->n)->ready = t;
    }
    Meet *me = meet_at(ml, c->seq[i]);
    if (isnan(me->end)) {
        double start = 0;
        for (int m = 0; m < ml->nmembers; m++) {
            MeetList *other = meet_get(&S->cs[ml->members[m]], key);
            if (other->n <= c->seq[i] || isnan(other->v[c->seq[i]].ready)) return false;
            start = max2(start, other->v[c->seq[i]].ready);
        }
        double dur = S->o->comm_time ? S->o->comm_time(S->o->ctx, ci, in) : -1;
        if (dur < 0)
            dur = coll_time(S, c, in, ml);
        if (st == S_MAIN) dur += S->calib[2];
        for (int m = 0; m < ml->nmembers; m++) {
            Meet *o = meet_at(meet_get(&S->cs[ml->members[m]], key), c->seq[i]);
            o->start = start;
            o->end = start + dur;
        }
    }
    finish_comm(S, ci, i, me->start, me->end);
    return true;
}

static int peer_rank(const Sim *S, const CState *c, const Instr *in)
{
    return rank_at(S->s, c->coord, in->axes & S->live, in->peer);
}

static int line_of(Sim *S, int src, int dst, int64_t tag)
{
    Slot *sl = map_at(&S->line_at, src, dst, tag, 0);
    if (sl->v < 0) {
        if (S->nlines == S->cap_lines) {
            S->cap_lines = S->cap_lines ? S->cap_lines * 2 : 64;
            S->lines = xrealloc(S->lines, sizeof *S->lines * S->cap_lines);
        }
        S->lines[S->nlines] = (Line){ 0 };
        sl->v = S->nlines++;
    }
    return sl->v;
}

/* Message n of line l (its pointer holds until the line grows). */
static Msg *line_msg(Sim *S, int l, int n)
{
    Line *L = &S->lines[l];
    if (n >= L->n) {
        if (n >= L->cap) {
            while (L->cap <= n) L->cap = L->cap ? 2 * L->cap : 64;
            L->v = xrealloc(L->v, sizeof *L->v * L->cap);
        }
        for (; L->n <= n; L->n++) L->v[L->n] = (Msg){ NAN, NAN, NAN, -1, -1 };
    }
    return &L->v[n];
}

static Msg *msg_for(Sim *S, int src, int dst, int64_t tag, int n)
{
    return line_msg(S, line_of(S, src, dst, tag), n);
}

static int chan_of(Sim *S, int ci, int peer, int64_t tag)
{
    Slot *sl = map_at(&S->chan_at, ci, peer, tag, 0);
    if (sl->v < 0) {
        if (S->nchan == S->cap_chan) {
            S->cap_chan = S->cap_chan ? S->cap_chan * 2 : 64;
            S->chan_n = xrealloc(S->chan_n, sizeof *S->chan_n * S->cap_chan);
        }
        S->chan_n[S->nchan] = -1;
        sl->v = S->nchan++;
    }
    return sl->v;
}

/* The next occurrence number of a message to or from `peer` with `tag`. */
static int next_seq(Sim *S, int ci, int peer, int64_t tag)
{
    int ch = chan_of(S, ci, peer, tag);     /* first: it may move chan_n */
    return ++S->chan_n[ch];
}

static double p2p_time(const Sim *S, const CState *c, const Instr *in, int peer)
{
    if (S->o->comm_time) {
        double t = S->o->comm_time(S->o->ctx, (int)(c - S->cs), in);
        if (t >= 0) return t;
    }
    int ends[2] = { c->rep, peer };
    return linkmodel_time(S->links, I_SEND, ALGO_RING, in->bytes, ends, 2) * S->calib[1];
}

/* Is in (of program pr) a pull the step does not wait for? */
static bool stale_pull(const Sim *S, const Program *pr, const Instr *in)
{
    if (in->why != WHY_PS || in->kind != I_RECV || in->tensor < 0) return false;
    const Value *v = &pr->values[pr->args[in->arg0]];
    return v->kind == VAL_PARAM && S->s->params[in->tensor].staleness > 0;
}

static void message_done(Sim *S, Msg *m, double start, double end, double dur);

/* The other ranks of class ci send and receive too, each with its own
 * peer. Where that peer's class is not the representative's peer's
 * (parameter servers split the ranks of a group into classes by role),
 * their sends are posted as well, or a receiver there would wait for them
 * forever, and their messages are counted on both sides, as the peer
 * counts them. One message stands for all the sends of the class to one
 * class. */
static void post_for_others(Sim *S, int ci, int32_t i, double t, int rep_dst)
{
    CState *c = &S->cs[ci];
    const Program *pr = &S->p->classes[ci];
    const Instr *in = &c->pr->instrs[i];
    int done[64], nd = 0;
    done[nd++] = rep_dst;
    for (int k = 1; k < pr->nranks && nd < 64; k++) {
        int coord[MESH_MAX_AXES];
        strategy_coords(S->s, pr->ranks[k], coord);
        int peer = rank_at(S->s, coord, in->axes & S->live, in->peer), dc = S->p->rank_class[peer];
        bool seen = false;
        for (int j = 0; j < nd; j++) seen |= done[j] == dc;
        if (seen) continue;
        done[nd++] = dc;
        int64_t tag = tag_of(in);
        int n = next_seq(S, ci, peer, tag);
        if (in->kind == I_RECV) {
            /* received at the representative's time; a send already posted
             * learns when its bytes left */
            Msg *m = msg_for(S, dc, ci, tag, n);
            if (isnan(m->recv_ready)) m->recv_ready = t;
            if (!isnan(m->send_t)) {
                double dur = p2p_time(S, c, in, peer), start = max2(m->send_t, t);
                message_done(S, m, start, start + dur, dur);
            }
            continue;
        }
        Msg *m = msg_for(S, ci, dc, tag, n);
        m->send_t = t;
        m->send_class = ci;
        m->send_instr = i;
    }
}

/* The copy a send makes first (instr_sends_copy: a parameter server's push
 * and pull) holds its stream; it is priced as the gradient sum that moves
 * the same bytes (a sum reads two words and writes one an element, a copy
 * one and one). 0 for a value sent as it is, and where the caller prices
 * instructions itself (SimOpts.compute_time, .comm_time: the send's price
 * is all of it). */
static double stage_time(Sim *S, CState *c, const Instr *in)
{
    if (S->o->compute_time || S->o->comm_time || !instr_sends_copy(c->pr, in)) return 0;
    int eb = dtype_bytes(in->tensor >= 0 ? S->g->tensors[in->tensor].dtype : DT_F32);
    Instr sum = { .kind = I_COMPUTE, .phase = PH_BWD_WEIGHT, .op = -1, .tensor = in->tensor };
    sum.mem_bytes = (float)(2 * in->bytes);
    sum.flops = (float)(2 * in->bytes / (3 * eb));
    CostSource src;
    return op_time(S, c, &sum, &src);
}

/* A send is posted when its stream reaches it (and has made its copy, if
 * it sends one) and holds nothing more: the stream moves on, and the send
 * completes when its bytes have moved. */
static bool run_send(Sim *S, int ci, int32_t i)
{
    CState *c = &S->cs[ci];
    const Instr *in = &c->pr->instrs[i];
    int32_t bind;
    double t = ready_at(c, i, c->sid[i], &bind);
    if (isnan(t)) return false;
    double copy = stage_time(S, c, in);
    if (copy > 0) {
        c->free_t[c->sid[i]] = t + copy;
        c->out.busy_comm += copy;
        if (c->sid[i] == S_MAIN) c->out.exposed_comm += copy;
        span(S, ci, i, t, t + copy);            /* the copy, then (below) the transfer */
        t += copy;
    }
    int peer = peer_rank(S, c, in);
    int64_t tag = tag_of(in);
    Msg *m = msg_for(S, ci, S->p->rank_class[peer], tag, next_seq(S, ci, peer, tag));
    m->send_t = t;
    m->send_class = ci;
    m->send_instr = i;
    c->start[i] = t;
    if (!isnan(m->recv_ready)) {
        double dur = p2p_time(S, c, in, peer);
        m->end = max2(t, m->recv_ready) + dur;
        c->end[i] = m->end;
        c->out.busy_comm += dur;
        span(S, ci, i, m->end - dur, m->end);
    }
    /* last: posting may move the messages (m) */
    post_for_others(S, ci, i, t, S->p->rank_class[peer]);
    return true;
}

/* A message's bytes have arrived at `end` (dur of moving them): the first
 * to learn it records it, and the sender learns when its bytes left. A
 * send posted by a pass run whole (see "Passes") has no instruction of
 * its own left to mark. */
static void message_done(Sim *S, Msg *m, double start, double end, double dur)
{
    if (!isnan(m->end)) return;
    m->end = end;
    CState *sc = &S->cs[m->send_class];
    if (m->send_instr < 0) {
        sc->base_end = max2(sc->base_end, end);
        sc->out.busy_comm += dur;
    } else if (isnan(sc->end[m->send_instr])) {
        sc->end[m->send_instr] = end;
        sc->out.busy_comm += dur;
        span(S, m->send_class, m->send_instr, start, end);
    }
}

static bool run_recv(Sim *S, int ci, int32_t i)
{
    CState *c = &S->cs[ci];
    const Instr *in = &c->pr->instrs[i];
    if (c->seq[i] < 0) {
        int32_t bind;
        double t = ready_at(c, i, c->sid[i], &bind);
        if (isnan(t)) return false;
        if (stale_pull(S, c->pr, in)) {
            finish_comm(S, ci, i, t, t + (c->sid[i] == S_MAIN ? S->calib[2] : 0));
            return true;
        }
        int peer = peer_rank(S, c, in);
        int64_t tag = tag_of(in);
        c->seq[i] = next_seq(S, ci, peer, tag);
        post_for_others(S, ci, i, t, S->p->rank_class[peer]);
        c->start[i] = t;
        c->line[i] = line_of(S, S->p->rank_class[peer], ci, tag);
        Msg *m = line_msg(S, c->line[i], c->seq[i]);
        if (isnan(m->recv_ready)) m->recv_ready = t;
    }
    Msg *m = line_msg(S, c->line[i], c->seq[i]);
    if (isnan(m->send_t)) return false;
    int peer = peer_rank(S, c, in);
    double dur = p2p_time(S, c, in, peer);
    double start = max2(m->send_t, c->start[i]), end = start + dur;
    if (c->sid[i] == S_MAIN) end += S->calib[2];     /* the interpreter's step, as counted */
    message_done(S, m, start, end, dur);
    finish_comm(S, ci, i, start, end);
    return true;
}

static bool run_instr(Sim *S, int ci, int32_t i)
{
    switch ((InstrKind)S->cs[ci].pr->instrs[i].kind) {
    case I_COMPUTE: return run_compute(S, ci, i);
    case I_SEND: return run_send(S, ci, i);
    case I_RECV: return run_recv(S, ci, i);
    default: return run_collective(S, ci, i);
    }
}

/* The executor sets an optimizer update aside when it would wait for a
 * gradient all-reduce still in flight, so the rest of the backward runs
 * meanwhile; the update runs at the first instruction boundary after the
 * all-reduce is done, before an instruction that needs it, or at the end of
 * the step. The interpreter's stream does the same here. Whether the
 * all-reduce is done at the boundary may not be known yet (the other
 * classes of its group have not reached it): the interpreter then waits
 * until it is, so the answer does not hang on the order the classes are
 * visited in, unless nothing else can move (Sim.release).
 * Returns 0: run it now, 1: set it aside, -1: not known yet. */
static int waits_async(const Sim *S, const CState *c, int32_t i)
{
    const Instr *in = &c->pr->instrs[i];
    if (in->kind != I_COMPUTE || in->op >= 0 || in->phase != PH_UPDATE) return 0;
    int r = 0;
    for (int k = 0; k < in->ndeps; k++) {
        int32_t d = c->pr->deps[in->dep0 + k];
        if (is_ext(d)) {
            if (c->xcode[-2 - d] != S_MAIN && c->xend[-2 - d] > c->free_t[S_MAIN]) return 1;
            continue;
        }
        if (c->sid[d] == S_MAIN || c->sid[d] == UINT16_MAX) continue;
        if (c->end[d] > c->free_t[S_MAIN]) return 1;
        if (isnan(c->end[d])) r = S->release ? 1 : -1;
    }
    return r;
}

/* The time set-aside update k may start, or NAN while a dependency is
 * unfinished. */
static double later_ready(const CState *c, int k)
{
    SetAside *a = &c->later[k];
    if (!isnan(a->t)) return max2(a->t, c->free_t[S_MAIN]);
    if (a->wait != -1 && isnan(dep_end(c, a->wait))) return NAN;
    const Instr *in = &c->pr->instrs[a->i];
    double t = 0;
    for (int j = 0; j < in->ndeps; j++) {
        int32_t d = c->pr->deps[in->dep0 + j];
        double e = dep_end(c, d);
        if (isnan(e)) {
            a->wait = d;
            return NAN;
        }
        t = max2(t, e);
    }
    a->t = t;
    return max2(t, c->free_t[S_MAIN]);
}

static void later_remove(CState *c, int k)
{
    memmove(&c->later[k], &c->later[k + 1], sizeof *c->later * (size_t)(c->nlater - k - 1));
    c->nlater--;
}

static bool main_step(Sim *S, int ci)
{
    CState *c = &S->cs[ci];
    /* set-aside updates whose all-reduce is done by now */
    for (int k = 0; k < c->nlater; k++) {
        double t = later_ready(c, k);
        if (isnan(t) || t > c->free_t[S_MAIN]) continue;
        run_compute(S, ci, c->later[k].i);
        later_remove(c, k);
        return true;
    }
    int *cur = &c->cur[S_MAIN];
    if (*cur == c->list_off[S_MAIN + 1]) {
        /* the end of the step waits for the rest */
        if (!c->nlater || !run_compute(S, ci, c->later[0].i)) return false;
        later_remove(c, 0);
        return true;
    }
    int32_t i = c->list[*cur];
    const Instr *in = &c->pr->instrs[i];
    for (int k = 0; k < in->ndeps; k++) {
        int32_t d = c->pr->deps[in->dep0 + k];
        if (is_ext(d) || c->seq[d] != -2 || !isnan(c->end[d])) continue;
        if (!run_compute(S, ci, d)) return false;
        for (int j = 0; j < c->nlater; j++)
            if (c->later[j].i == d) later_remove(c, j--);
        return true;
    }
    int wa = waits_async(S, c, i);
    if (wa < 0) return false;
    if (wa) {
        c->seq[i] = -2;
        c->later[c->nlater++] = (SetAside){ i, -1, NAN };
        (*cur)++;
        return true;
    }
    if (!run_instr(S, ci, i)) return false;
    (*cur)++;
    return true;
}

/* Nothing can move: an interpreter waits on a collective queued behind
 * one that needs an update it set aside (ZeRO-3's re-gather behind a
 * ZeRO-1 param's post-update all-gather), and the update waits for the
 * interpreter's clock to pass its reduce-scatter. The executor runs a
 * ready update while it waits; so does this, the earliest ready one of
 * each class. Returns whether any ran. */
static bool run_set_aside(Sim *S)
{
    bool ran = false;
    for (int ci = 0; ci < S->p->nclasses; ci++) {
        CState *c = &S->cs[ci];
        int best = -1;
        double tb = INFINITY;
        for (int k = 0; k < c->nlater; k++) {
            double t = later_ready(c, k);
            if (!isnan(t) && t < tb) tb = t, best = k;
        }
        if (best >= 0 && run_compute(S, ci, c->later[best].i)) {
            later_remove(c, best);
            ran = true;
        }
    }
    return ran;
}

/* Advances class ci as far as its streams go; returns instructions done.
 * The other streams go as far as they can before each step of the
 * interpreter's, so that a set-aside update sees its all-reduce finish at
 * the first boundary after it does (whatever order the classes are
 * visited in). */
static int advance(Sim *S, int ci)
{
    CState *c = &S->cs[ci];
    int moved = 0;
    for (;;) {
        bool any = false;
        for (int st = S_MAIN + 1; st < c->nstreams; st++)
            while (c->cur[st] < c->list_off[st + 1] && run_instr(S, ci, c->list[c->cur[st]])) {
                c->cur[st]++;
                moved++;
                any = true;
            }
        if (main_step(S, ci)) {
            moved++;
            any = true;
        }
        if (!any) break;
    }
    return moved;
}

/* ----------------------------------------------------------------------------
 * Passes
 *
 * A compact program (ir_lower_compact) lists the passes of the step and the
 * body each runs. A pass with no optimizer update the interpreter may
 * set aside (waits_async: only where collectives run behind it), no
 * collective behind a CPU rank's interpreter (cpu_shares), no collective
 * shared with another class, no parameter-server traffic and no tied sum
 * is regular: once every message it receives has been posted,
 * its times follow from its streams' free times, those messages and the
 * instructions of earlier passes it reads, by the very rules of the
 * instruction-level loop above, in one sweep over the body in program
 * order. Passes run whole that way, class after class, as long as some
 * class can; the rest of the step (the tail, and on a CPU rank the last
 * micro-batch's backward with its updates) then runs instruction by
 * instruction, from where the streams stand. Only
 * instructions another pass reads keep their times (the exports).
 *
 * A collective shared with other classes starts when the last of them is
 * ready, which one class alone cannot know; but twin classes (the same
 * stage lowered alike, told apart only by a parameter-server role their
 * passes do not touch) meet it at the same moment. So a pass whose only
 * irregularity is such collectives runs whole, for all its twins together,
 * when each of them is at that pass with the same body, instruction for
 * instruction, and the same inputs (the memo's key, below, and the same
 * start): each twin then finds every other ready when it is, and the
 * collective starts then for all. Otherwise those classes go on
 * instruction by instruction from that pass. */

/* A pass run once, remembered: its inputs and outputs relative to when
 * its interpreter's stream was free (T0). Times shift with T0 (every rule
 * is a max of sums), so a pass meeting the same relative inputs again
 * yields the same outputs shifted. Inputs match when each lies within q
 * of the remembered one, q being 2^-36 of the body's own busy time (or a
 * few hundred units in the last place of T0, if more: what rounding moves
 * as T0 grows): a hit is off by at most q, and errors do not grow through
 * max and plus, so a step of N passes is off by at most N q. */
#define MEMO_WAYS 4

typedef struct {
    double *key;                    /* inputs relative to T0, nk of them (NAN: none yet;
                                       +-INFINITY: sentinels of pass_key, inputs that
                                       cannot bind or a run's head) */
    double *out;                    /* outputs: streams after, p2p times, exports, latest end */
    double exposed;                 /* exposed communication of the pass */
    int nk;                         /* the key's length */
    uint32_t gen;                   /* times the entry was written (a pass that replayed
                                       it names it by its address and this) */
    bool used;
} Memo;

typedef struct {
    Memo memo[MEMO_WAYS];
    int next;
    int last;                       /* the way that last matched: tried first */
} MemoSet;

typedef struct {
    void *block;                    /* the arrays below but twins and the memo's, in one */
    bool regular;
    int *twins, ntwins;             /* classes it meets in collectives, itself included,
                                       ascending; ntwins > 1: runs whole only with them */
    int16_t *code;                  /* stream code (stream_code); -1: alloc/free */
    double *dur;
    uint8_t *src;                   /* compute: CostSource */
    int32_t *peer;                  /* send/recv: the peer's rank */
    int32_t *nth;                   /* recv: earlier sends/recvs of the body with its peer and tag */
    /* what is the same every time the body runs */
    SimClass add;                   /* busy compute, own comm, instructions, FLOPs, recompute */
    double scale;                   /* its busy time, for the memo's quantum */
    int op_count[CM_SRC_COUNT];
    uint32_t analytic_kinds;
    /* inputs and outputs of a run, for the memo */
    int nstream;                    /* stream codes the body uses */
    int16_t *streams;
    double *busy;                   /* per stream used: its instructions end to end (lower_bound) */
    int np2p, nrecv;                /* its sends and receives, in order; how many receive */
    int32_t *p2p;
    int ncoll;                      /* its collectives, in order */
    int32_t *coll;
    int32_t *chan, *line;           /* per send or receive: its channel and line */
    int next;                       /* dependencies on other passes: (instruction, dependency),
                                       ordered by the pass they read */
    int32_t (*ext)[2];
    int32_t *xbase;                 /* per dependency: program_ref_base */
    int ngrp;                       /* runs of ext reading one pass: [grp[g], grp[g + 1]) */
    int32_t *grp;
    uint8_t *grp_main;              /* every reader of the run on the interpreter's stream */
    int nexp;                       /* its exports: (instruction, slot) */
    int32_t (*exp)[2];
    /* the sweep of eval_pass: the instructions on a stream (an alloc or
     * free is on none), each with its kind and its dependencies that can
     * bind: on an instruction of the body (its place), or on one of
     * another pass (~e: that pass is pass_at[xdep[e][0] + micro], the
     * instruction its export xdep[e][1]). A copy's are its twin's. */
    int nrun;
    int32_t *run, *rdep, *rdeps;    /* rdep[r] .. rdep[r + 1]: run[r]'s, in rdeps */
    uint8_t *rkind;
    int32_t (*xdep)[2];
    int nkey, nout;
    MemoSet own;
    MemoSet *ms;                    /* &own, or the memo of the body of the class this
                                       one copies, when the two are alike (share_memo) */
} Compiled;

typedef struct Passes_ {
    Compiled *cb;                   /* per body, compiled on first use */
    int *export_slot;               /* per body instruction: its export index, -1 */
    int *nexports;                  /* per body */
    double *start, *end;            /* scratch: the pass being run */
    double *key;                    /* scratch: its memo key */
    Map alike;                      /* (body, other class, its body, 0) -> alike (1) or not */
    /* per pass run whole (see "Skipping a steady state"): the free time of
     * the interpreter's stream it started from (T0), and the memo entry it
     * replayed with that entry's generation (NULL: evaluated) */
    double *h_t0;
    const Memo **h_memo;
    uint32_t *h_gen;
    int32_t *h_from;                /* a pass skipped: the pass run whole it repeats, else -1 */
    double *h_shift;                /* and how much later */
    int h_run;                      /* passes from here on were run (none skipped) */
    int s_from, s_L, s_E, s_D;      /* the last scan of the schedule: from pass s_from with
                                       period s_L (0: none yet), it repeats up to s_E,
                                       reading s_D back (so a try needs s_D + s_L passes
                                       repeated: Steady.W) */
    int s_period;                   /* schedule_period */
} Passes;

/* Numbers, body by body, every instruction a pass other than its own
 * reads (the exports). */
static void find_exports(const Program *cp, Passes *P)
{
    int n = cp->ninstrs ? cp->ninstrs : 1;
    bool *read = xcalloc(n, sizeof *read);
    for (int b = 0; b < cp->nbodies; b++) {
        const Body *B = &cp->bodies[b];
        for (int i = B->i0; i < B->i1; i++) {
            const Instr *in = &cp->instrs[i];
            for (int k = 0; k < in->ndeps; k++) {
                int32_t d = cp->deps[in->dep0 + k];
                if (d < B->i0 || d >= B->i1) read[d] = true;
            }
        }
    }
    P->export_slot = xmalloc(sizeof *P->export_slot * n);
    P->nexports = xcalloc(cp->nbodies, sizeof *P->nexports);
    for (int b = 0; b < cp->nbodies; b++)
        for (int i = cp->bodies[b].i0; i < cp->bodies[b].i1; i++)
            P->export_slot[i] = read[i] ? P->nexports[b]++ : -1;
    free(read);
}

/* Adds class m to the body's twins (kept ascending, without repeats). */
static void add_twin(const Sim *S, Compiled *k, int m)
{
    if (!k->twins) k->twins = xmalloc(sizeof *k->twins * S->p->nclasses);
    int j = 0;
    while (j < k->ntwins && k->twins[j] < m) j++;
    if (j < k->ntwins && k->twins[j] == m) return;
    memmove(&k->twins[j + 1], &k->twins[j], sizeof *k->twins * (k->ntwins - j));
    k->twins[j] = m;
    k->ntwins++;
}

/* Do two compiled bodies of n instructions each run alike: the same
 * streams, costs, transfers and, by position only, dependencies on other
 * passes (they name instructions of each class's own program; the memo's
 * key compares their times)? */
static bool compiled_alike(const Compiled *ka, const Compiled *kb, int n)
{
    bool same = ka->regular == kb->regular && ka->nstream == kb->nstream &&
                ka->np2p == kb->np2p && ka->next == kb->next && ka->nexp == kb->nexp &&
                ka->nkey == kb->nkey && ka->nout == kb->nout && ka->scale == kb->scale &&
                !memcmp(ka->streams, kb->streams, sizeof *ka->streams * ka->nstream) &&
                !memcmp(ka->p2p, kb->p2p, sizeof *ka->p2p * ka->np2p) &&
                !memcmp(ka->code, kb->code, sizeof *ka->code * n) &&
                !memcmp(ka->dur, kb->dur, sizeof *ka->dur * n);
    for (int x = 0; same && x < ka->next; x++) same = ka->ext[x][0] == kb->ext[x][0];
    same = same && ka->ngrp == kb->ngrp &&
           !memcmp(ka->grp, kb->grp, sizeof *ka->grp * (ka->ngrp + 1));
    return same;
}

/* A class copied from an alike one (Program.like: its instructions and
 * dependencies are that class's renumbered) whose body b also runs alike
 * (the same costs: the middle stages of a pipeline) meets in it what that
 * class met: the two share one memo, since an entry is relative to the
 * pass's start and names instructions by their place in the body. */
static void share_memo(Sim *S, int ci, int b)
{
    const Program *cp = S->cs[ci].cp;
    int src = cp->like;
    if (src < 0 || src >= ci || !S->passes[src].cb[b].code) return;
    Compiled *k = &S->passes[ci].cb[b], *from = &S->passes[src].cb[b];
    if (compiled_alike(k, from, cp->bodies[b].i1 - cp->bodies[b].i0)) k->ms = from->ms;
}

/* Orders a body's dependencies on other passes by the pass they read
 * (their program_ref_base), keeping program order within one. */
typedef struct {
    int32_t base, pos, e0, e1;
} ExtSort;

static int by_base(const void *a, const void *b)
{
    const ExtSort *x = a, *y = b;
    if (x->base != y->base) return x->base < y->base ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static void sort_exts(Compiled *k)
{
    ExtSort *t = xmalloc(sizeof *t * (k->next ? k->next : 1));
    for (int x = 0; x < k->next; x++) t[x] = (ExtSort){ k->xbase[x], x, k->ext[x][0], k->ext[x][1] };
    qsort(t, (size_t)k->next, sizeof *t, by_base);
    for (int x = 0; x < k->next; x++) {
        k->xbase[x] = t[x].base;
        k->ext[x][0] = t[x].e0;
        k->ext[x][1] = t[x].e1;
    }
    free(t);
}

/* The runs of dependencies that read one pass (pass_key). */
static void group_exts(Compiled *k)
{
    k->ngrp = 0;
    for (int x = 0; x < k->next; x++) {
        if (x == 0 || k->xbase[x] != k->xbase[x - 1]) {
            k->grp[k->ngrp] = x;
            k->grp_main[k->ngrp++] = 1;
        }
        if (k->code[k->ext[x][0]] != S_MAIN) k->grp_main[k->ngrp - 1] = 0;
    }
    k->grp[k->ngrp] = k->next;
}

/* Instruction x of a body, a send or a receive: its peer, channel, line,
 * time and place among the body's transfers. */
static void compile_p2p(Sim *S, int ci, Compiled *k, Map *seen, int x, const Instr *in)
{
    k->peer[x] = peer_rank(S, &S->cs[ci], in);
    int64_t tag = tag_of(in);
    int other = S->p->rank_class[k->peer[x]];
    k->chan[k->np2p] = chan_of(S, ci, k->peer[x], tag);
    k->line[k->np2p] = in->kind == I_SEND ? line_of(S, ci, other, tag) : line_of(S, other, ci, tag);
    k->p2p[k->np2p++] = x;
    k->nrecv += in->kind == I_RECV;
    k->dur[x] = p2p_time(S, &S->cs[ci], in, k->peer[x]);
    /* earlier transfers of the body with the same peer and tag */
    k->nth[x] = ++map_at(seen, k->peer[x], tag, 0, 0)->v;
}

/* Instruction x of a body, a collective on stream `code`: the classes it
 * meets, its time. */
static void compile_coll(Sim *S, int ci, Compiled *k, int x, const Instr *in, int code)
{
    MeetList *ml = meet_list(S, ci, in, key_of(S, in));
    /* a tied sum (never in a pass run whole) joins stages, not twins */
    for (int m = 0; m < ml->nmembers && ml->nmembers > 1 && in->why != WHY_TIED; m++)
        add_twin(S, k, ml->members[m]);
    k->dur[x] = ml->nranks < 2 ? 0 : coll_time(S, &S->cs[ci], in, ml);
    if (code == S_MAIN) k->dur[x] += S->calib[2];
    k->coll[k->ncoll++] = x;
}

/* Body k of a class copied from an alike one on the same device
 * (Program.like), compiled from that class's body tw: the same streams and
 * op times, so only its transfers and collectives, which name other ranks,
 * are compiled again. False when one of those takes another time than
 * tw's (a pipeline neighbour over another link, a group spanning other
 * levels): the body's sums are then its own, made instruction by
 * instruction. */
static bool compile_from_twin(Sim *S, int ci, Compiled *k, const Compiled *tw, const Body *B,
                              int n)
{
    const Program *cp = S->cs[ci].cp;
    memcpy(k->code, tw->code, sizeof *k->code * n);
    memcpy(k->dur, tw->dur, sizeof *k->dur * n);
    memcpy(k->src, tw->src, sizeof *k->src * n);
    bool same = true;
    Map seen = { 0 };
    for (int q = 0; q < tw->np2p; q++) {
        int x = tw->p2p[q];
        Instr in = program_instr(cp, B->i0 + x);
        compile_p2p(S, ci, k, &seen, x, &in);
        same = same && k->dur[x] == tw->dur[x];
    }
    map_free(&seen);
    for (int q = 0; q < tw->ncoll; q++) {
        int x = tw->coll[q];
        Instr in = program_instr(cp, B->i0 + x);
        compile_coll(S, ci, k, x, &in, tw->code[x]);
        same = same && k->dur[x] == tw->dur[x];
    }
    if (!same) {
        k->np2p = k->nrecv = k->ncoll = 0;
        return false;
    }
    k->regular = tw->regular;
    k->nstream = tw->nstream;
    memcpy(k->streams, tw->streams, sizeof *k->streams * tw->nstream);
    memcpy(k->busy, tw->busy, sizeof *k->busy * tw->nstream);
    k->add = tw->add;
    memcpy(k->op_count, tw->op_count, sizeof k->op_count);
    k->analytic_kinds = tw->analytic_kinds;
    return true;
}

/* The sweep of body b (Compiled.run): its code is compiled, and its
 * dependencies on other passes are listed in k->ext and k->xbase in the
 * order this walk meets them (before sort_exts). A dependency on an alloc
 * or free never binds (they are on no stream). */
static void compile_sweep(const Program *cp, const Passes *P, int b, Compiled *k)
{
    const Body *B = &cp->bodies[b];
    int nr = 0, nq = 0, ne = 0;
    for (int x = 0; x < B->i1 - B->i0; x++) {
        if (k->code[x] < 0) continue;
        const Instr *in = &cp->instrs[B->i0 + x];
        k->run[nr] = x;
        k->rkind[nr] = in->kind;
        k->rdep[nr++] = nq;
        for (int q = 0; q < in->ndeps; q++) {
            int32_t d = cp->deps[in->dep0 + q];
            if (d >= B->i0 && d < B->i1) {
                if (k->code[d - B->i0] >= 0) k->rdeps[nq++] = d - B->i0;
                continue;
            }
            k->xdep[ne][0] = k->xbase[ne];
            k->xdep[ne][1] = P->export_slot[d];
            k->rdeps[nq++] = ~ne++;
        }
    }
    k->rdep[nr] = nq;
    k->nrun = nr;
}

static void compile_body(Sim *S, int ci, Passes *P, int b)
{
    CState *c = &S->cs[ci];
    const Program *cp = c->cp;
    const Body *B = &cp->bodies[b];
    Compiled *k = &P->cb[b];
    int n = B->i1 - B->i0 ? B->i1 - B->i0 : 1;
    /* a class copied from an alike one (Program.like) on the same device
     * runs the same ops renumbered: their times are that class's, and its
     * dependencies on other passes and its exports are that class's too
     * (the same bodies, the same instructions and dependencies) */
    const Compiled *twin = NULL;
    if (cp->like >= 0 && !S->o->compute_time && S->cs[cp->like].device == c->device &&
        S->passes[cp->like].cb[b].code)
        twin = &S->passes[cp->like].cb[b];
    int nd = 1;
    if (twin) {
        nd += twin->next;
    } else {
        for (int x = B->i0; x < B->i1; x++) nd += cp->instrs[x].ndeps;
    }
    /* its arrays in one block (Compiled.block), widest first: per
     * instruction, per stream code, per dependency on another pass */
    size_t ns = S_GROUPS + KEYS;
    size_t nr = twin ? 0 : (size_t)n;           /* the sweep's (a copy's are its twin's) */
    size_t nrd = twin ? 0 : (size_t)nd;
    size_t bytes = sizeof *k->dur * n + sizeof *k->busy * ns + sizeof *k->ext * nd +
                   sizeof *k->exp * n + sizeof *k->xdep * nrd +
                   sizeof(int32_t) * (6 * (size_t)n + 2 * nd + 1 + 2 * nr + 1 + nrd) +
                   sizeof *k->code * n + sizeof *k->streams * ns + (size_t)n + nd + nr;
    char *m = k->block = xmalloc(bytes);
    k->dur = (double *)m;
    m += sizeof *k->dur * n;
    k->busy = (double *)m;
    m += sizeof *k->busy * ns;
    k->ext = (int32_t (*)[2])m;
    m += sizeof *k->ext * nd;
    k->exp = (int32_t (*)[2])m;
    m += sizeof *k->exp * n;
    k->xdep = (int32_t (*)[2])m;
    m += sizeof *k->xdep * nrd;
    int32_t *w = (int32_t *)m;
    k->peer = w, w += n;
    k->nth = w, w += n;
    k->p2p = w, w += n;
    k->coll = w, w += n;
    k->chan = w, w += n;
    k->line = w, w += n;
    k->xbase = w, w += nd;
    k->grp = w, w += nd + 1;
    k->run = w, w += nr;
    k->rdep = w, w += nr + 1;
    k->rdeps = w, w += nrd;
    k->code = (int16_t *)w;
    k->streams = k->code + n;
    k->src = (uint8_t *)(k->streams + ns);
    k->grp_main = k->src + n;
    k->rkind = k->grp_main + nd;
    /* a copy's code, times and sources come whole from its twin; a
     * transfer's peer and count are read for transfers only */
    if (!twin) {
        memset(k->dur, 0, sizeof *k->dur * n);
        memset(k->src, 0, (size_t)n);
    }
    k->regular = B->kind != BODY_TAIL;
    int16_t at[S_GROUPS + KEYS];     /* stream code -> its place in k->streams, -1: unused */
    memset(at, -1, sizeof at);
    Map seen = { 0 };               /* (peer, tag) -> transfers so far, from -1 */
    if (twin) {
        k->next = twin->next;
        memcpy(k->ext, twin->ext, sizeof *k->ext * twin->next);
        memcpy(k->xbase, twin->xbase, sizeof *k->xbase * twin->next);
    }
    bool copied = twin && compile_from_twin(S, ci, k, twin, B, n);
    for (int x = 0; x < B->i1 - B->i0 && !copied; x++) {
        /* as this class runs it (a shared copy's renumbered) */
        Instr ins;
        const Instr *in = &cp->instrs[B->i0 + x];
        if (cp->shared) {
            program_instr_at(cp, B->i0 + x, &ins);
            in = &ins;
        }
        int code = stream_code(S, c, in);
        k->code[x] = (int16_t)code;
        if (code < 0) continue;
        /* a collective behind a CPU rank's interpreter takes its core as
         * the instruction-level loop interleaves the streams, which one
         * sweep in program order does not follow */
        if (cpu_shares(code)) k->regular = false;
        if (at[code] < 0) {
            at[code] = (int16_t)k->nstream;
            k->busy[k->nstream] = 0;
            k->streams[k->nstream++] = (int16_t)code;
        }
        for (int q = 0; q < in->ndeps && !twin; q++) {
            int32_t d = cp->deps[in->dep0 + q];
            if (d < B->i0 || d >= B->i1) {
                k->xbase[k->next] = program_ref_base(cp, b, d);
                k->ext[k->next][0] = x;
                k->ext[k->next++][1] = d;
            }
        }
        if (in->kind == I_COMPUTE) {
            /* an update may be set aside for an all-reduce in flight
             * (waits_async); with nothing ever in flight it runs in its
             * place, like any op */
            if (in->op < 0 && in->phase == PH_UPDATE && runs_behind(c)) k->regular = false;
            CostSource src = CM_SRC_ANALYTIC;
            if (twin) {
                k->dur[x] = twin->dur[x];
                src = (CostSource)twin->src[x];
                /* and the op's own, for the rest of the step run
                 * instruction by instruction (op_time) */
                if (in->op >= 0)
                    S->op_time[((size_t)c->device * S->g->nops + in->op) * PH_COUNT + in->phase] =
                        k->dur[x];
            } else {
                k->dur[x] = op_time(S, c, in, &src);
            }
            k->src[x] = (uint8_t)src;
            k->op_count[src]++;
            if (src == CM_SRC_ANALYTIC)
                k->analytic_kinds |= 1u << (in->op >= 0 ? (int)S->g->ops[in->op].kind : CM_KIND_SUM);
            k->add.busy_compute += k->dur[x];
            k->add.main_instrs++;
            k->add.flops += in->flops;
            if (in->recompute) k->add.recompute += k->dur[x];
        } else if (in->kind == I_SEND || in->kind == I_RECV) {
            if (in->why == WHY_PS) k->regular = false;
            compile_p2p(S, ci, k, &seen, x, in);
        } else {
            if (in->why == WHY_TIED || in->why == WHY_PS) k->regular = false;
            compile_coll(S, ci, k, x, in, code);
        }
        if (in->kind != I_COMPUTE && in->kind != I_SEND) {
            double own = k->dur[x] + (in->kind == I_RECV && code == S_MAIN ? S->calib[2] : 0);
            k->add.busy_comm += own;
            if (code == S_MAIN) {
                k->add.main_instrs++;
                k->add.exposed_comm += own;
            }
        }
        /* the lower bound's share: sends take no time of their stream,
         * a stale pull none */
        if (in->kind != I_SEND) {
            double d = k->dur[x];
            if (in->kind == I_RECV)
                d = (stale_pull(S, cp, in) ? 0 : d) + (code == S_MAIN ? S->calib[2] : 0);
            k->busy[at[code]] += d;
        }
    }
    map_free(&seen);
    if (twin) {
        k->nexp = twin->nexp;
        memcpy(k->exp, twin->exp, sizeof *k->exp * twin->nexp);
    }
    for (int x = 0; x < B->i1 - B->i0 && !twin; x++)
        if (P->export_slot[B->i0 + x] >= 0) {
            k->exp[k->nexp][0] = x;
            k->exp[k->nexp++][1] = P->export_slot[B->i0 + x];
        }
    if (twin) {
        k->nrun = twin->nrun;
        k->run = twin->run;
        k->rdep = twin->rdep;
        k->rdeps = twin->rdeps;
        k->rkind = twin->rkind;
        k->xdep = twin->xdep;
    } else {
        compile_sweep(cp, P, b, k);
        sort_exts(k);
    }
    group_exts(k);
    k->scale = k->add.busy_compute + k->add.busy_comm;
    k->nkey = k->nstream + k->nrecv + 2 * k->next + k->ngrp;
    k->nout = k->nstream + k->np2p + k->nrecv + 3 * k->nexp + 1;
    for (int w = 0; w < MEMO_WAYS; w++) {
        k->own.memo[w].key = xmalloc(sizeof *k->own.memo[w].key * (k->nkey ? k->nkey : 1));
        k->own.memo[w].out = xmalloc(sizeof *k->own.memo[w].out * k->nout);
    }
    k->ms = &k->own;
    share_memo(S, ci, b);
}

/* The message send or receive q of the body will be, without taking it. */
static Msg *p2p_msg(Sim *S, const Compiled *k, int q)
{
    return line_msg(S, k->line[q], S->chan_n[k->chan[q]] + 1 + k->nth[k->p2p[q]]);
}

/* The message send or receive q of the body is, taking it. */
static Msg *p2p_take(Sim *S, const Compiled *k, int q)
{
    return line_msg(S, k->line[q], ++S->chan_n[k->chan[q]]);
}

/* Has every message the pass receives been posted? */
static bool pass_ready(Sim *S, int ci, Passes *P, int pass)
{
    CState *c = &S->cs[ci];
    const Program *cp = c->cp;
    int b = cp->sched[pass].body;
    if (!P->cb[b].code) compile_body(S, ci, P, b);
    const Compiled *k = &P->cb[b];
    if (!k->regular) return false;
    const Body *B = &cp->bodies[b];
    for (int q = 0; q < k->np2p; q++) {
        const Instr *in = &cp->instrs[B->i0 + k->p2p[q]];
        if (in->kind == I_RECV && isnan(p2p_msg(S, k, q)->send_t)) return false;
    }
    return true;
}

/* Slot in c->x* of instruction `local` of pass `pass` (nsched: the tail),
 * -1 when no other pass reads it. */
static int export_at(const CState *c, const Passes *P, int pass, int32_t local)
{
    const Program *cp = c->cp;
    int body = pass < cp->nsched ? cp->sched[pass].body : cp->nbodies - 1;
    int slot = P->export_slot[cp->bodies[body].i0 + local];
    return slot < 0 ? -1 : c->xoff[pass] + slot;
}

/* Do two memo keys match: every input within q of the other, the
 * unknown and the unbinding ones exactly alike? */
static bool keys_match(const double *a, const double *b, int n, double q)
{
    for (int x = 0; x < n; x++) {
        double d = a[x] - b[x];
        if (d == d) {
            if (fabs(d) > q) return false;
        } else if (!(a[x] == b[x] || (isnan(a[x]) && isnan(b[x])))) {
            return false;
        }
    }
    return true;
}

/* An export of pass `pass` ends at e (NAN: not known yet). */
static void last_export(CState *c, int pass, double e)
{
    if (isnan(e)) e = INFINITY;
    if (!(c->xlast[pass] >= e)) c->xlast[pass] = e;
}

/* Evaluates the pass instruction by instruction, by the rules of the loop
 * above, writing its outputs relative to T0 into out (Compiled.nout).
 * Returns false when a send finds its receiver already waiting (the pass
 * then depends on more than its key says and is not remembered). */
static bool eval_pass(Sim *S, int ci, Passes *P, int pass, double T0, double *out,
                      double *exposed)
{
    CState *c = &S->cs[ci];
    const Program *cp = c->cp;
    int b = cp->sched[pass].body;
    const Body *B = &cp->bodies[b];
    const Compiled *k = &P->cb[b];
    double *st = P->start, *en = P->end, *fr = c->afree, last = -INFINITY;
    double *o_p2p = out + k->nstream;
    int np = 0, nx = 0;
    bool plain = true;
    *exposed = 0;
    /* outputs after the streams: per p2p op its time (send: posted;
     * receive: ready) then per receive its end; then per export start, end,
     * code; then the latest end */
    double *o_recv_end = o_p2p + k->np2p, *o_x = o_recv_end + k->nrecv;
    int nr = 0, micro = cp->sched[pass].micro;
    for (int r = 0; r < k->nrun; r++) {
        int x = k->run[r], i = B->i0 + x;
        int code = k->code[x];
        /* ready: the stream, then every dependency (the first latest binds) */
        double t = fr[code], bs = NAN, be = NAN;
        int bcode = S_MAIN;
        for (int q = k->rdep[r]; q < k->rdep[r + 1]; q++) {
            int32_t d = k->rdeps[q];
            double e, s0;
            int dc;
            if (d >= 0) {
                e = en[d];
                s0 = st[d];
                dc = k->code[d];
            } else {
                const int32_t *xd = k->xdep[~d];
                int slot = c->xoff[c->pass_at[xd[0] + micro]] + xd[1];
                e = c->xend[slot];
                s0 = c->xstart[slot];
                dc = c->xcode[slot];
            }
            if (e > t) {
                t = e;
                bs = s0;
                be = e;
                bcode = dc;
            }
        }
        double dur = k->dur[x], s1 = t, e1;
        switch ((InstrKind)k->rkind[r]) {
        case I_COMPUTE: {
            double gap = t - fr[S_MAIN];
            if (gap > 0 && !isnan(be) && bcode != S_MAIN) *exposed += min2(gap, max2(0, be - bs));
            e1 = t + dur;
            fr[S_MAIN] = e1;
            break;
        }
        case I_SEND: {
            Msg *m = p2p_take(S, k, np);
            m->send_t = t;
            m->send_class = ci;
            m->send_instr = -1;
            e1 = NAN;
            if (!isnan(m->recv_ready)) {
                m->end = max2(t, m->recv_ready) + dur;
                e1 = m->end;
                c->out.busy_comm += dur;
                plain = false;
            }
            o_p2p[np++] = t - T0;
            break;
        }
        case I_RECV: {
            Msg *m = p2p_take(S, k, np);
            if (isnan(m->recv_ready)) m->recv_ready = t;
            s1 = max2(m->send_t, t);
            e1 = s1 + dur + (code == S_MAIN ? S->calib[2] : 0);
            message_done(S, m, s1, e1, dur);
            o_p2p[np++] = t - T0;
            o_recv_end[nr++] = e1 - T0;
            fr[code] = e1;
            break;
        }
        default:
            e1 = t + dur;
            fr[code] = e1;
            if (cpu_shares(code)) {
                fr[S_MAIN] = max2(fr[S_MAIN], t) + dur;
                *exposed += dur;
            }
        }
        st[x] = s1;
        en[x] = e1;
        if (!isnan(e1)) last = max2(last, e1);
        int slot = P->export_slot[i];
        if (slot >= 0) {
            c->xstart[c->xoff[pass] + slot] = s1;
            c->xend[c->xoff[pass] + slot] = e1;
            c->xcode[c->xoff[pass] + slot] = (int16_t)code;
            last_export(c, pass, e1);
            o_x[nx++] = s1 - T0;
            o_x[nx++] = e1 - T0;
            o_x[nx++] = code;
        }
    }
    for (int q = 0; q < k->nstream; q++) out[q] = fr[k->streams[q]] - T0;
    out[k->nout - 1] = last - T0;
    if (last > -INFINITY) c->base_end = max2(c->base_end, last);
    return plain;
}

/* Replays a remembered pass at T0; false (nothing done) when a send of it
 * would find its receiver waiting already. */
static bool replay_pass(Sim *S, int ci, Passes *P, int pass, double T0, const Memo *me)
{
    CState *c = &S->cs[ci];
    const Program *cp = c->cp;
    const Body *B = &cp->bodies[cp->sched[pass].body];
    const Compiled *k = &P->cb[cp->sched[pass].body];
    for (int q = 0; q < k->np2p; q++) {
        const Instr *in = &cp->instrs[B->i0 + k->p2p[q]];
        if (in->kind == I_SEND && !isnan(p2p_msg(S, k, q)->recv_ready)) return false;
    }
    const double *o_p2p = me->out + k->nstream, *o_recv_end = o_p2p + k->np2p;
    int nr = 0;
    for (int q = 0; q < k->np2p; q++) {
        int x = k->p2p[q];
        const Instr *in = &cp->instrs[B->i0 + x];
        Msg *m = p2p_take(S, k, q);
        if (in->kind == I_SEND) {
            m->send_t = T0 + o_p2p[q];
            m->send_class = ci;
            m->send_instr = -1;
            continue;
        }
        double e1 = T0 + o_recv_end[nr++];
        if (isnan(m->recv_ready)) m->recv_ready = T0 + o_p2p[q];
        message_done(S, m, e1 - k->dur[x], e1, k->dur[x]);
    }
    const double *o_x = o_recv_end + nr;
    for (int q = 0; q < k->nexp; q++) {
        int slot = c->xoff[pass] + k->exp[q][1];
        c->xstart[slot] = T0 + o_x[3 * q];
        c->xend[slot] = T0 + o_x[3 * q + 1];
        last_export(c, pass, c->xend[slot]);
        c->xcode[slot] = (int16_t)o_x[3 * q + 2];
    }
    for (int q = 0; q < k->nstream; q++) c->afree[k->streams[q]] = T0 + me->out[q];
    if (me->out[k->nout - 1] > -INFINITY) c->base_end = max2(c->base_end, T0 + me->out[k->nout - 1]);
    c->out.exposed_comm += me->exposed;
    return true;
}

/* 256 units in the last place of t (at least 1e-300), a power of two:
 * ldexp(1, e - 44) for t = m 2^e, 1/2 <= m < 1, read from t's exponent
 * bits (frexp and ldexp cost as much as the rest of a memo key). */
static double ulps256(double t)
{
    t = max2(t, 1e-300);
    uint64_t bits;
    memcpy(&bits, &t, sizeof bits);
    int64_t e = (int64_t)(bits >> 52 & 0x7ff);      /* biased: t = 1.f 2^(e - 1023) */
    if (e <= 43 || e == 0x7ff) {
        int bin;
        frexp(t, &bin);
        return ldexp(1.0, bin - 52 + 8);
    }
    uint64_t q = (uint64_t)(e - 43) << 52;           /* 2^(e - 1023 + 1 - 44) */
    double r;
    memcpy(&r, &q, sizeof r);
    return r;
}

/* The memo key of pass `pass` of class ci, into P->key; returns its
 * length, with the interpreter's stream's free time *T0 and the quantum *q
 * it was taken with. */
static int pass_key(Sim *S, int ci, Passes *P, int pass, double *T0p, double *qp)
{
    CState *c = &S->cs[ci];
    const Program *cp = c->cp;
    const Body *B = &cp->bodies[cp->sched[pass].body];
    const Compiled *k = &P->cb[cp->sched[pass].body];
    double T0 = c->afree[S_MAIN];
    double q = max2(k->scale * 0x1p-36, ulps256(T0));
    double *key = P->key;
    int nk = 0;
    for (int x = 0; x < k->nstream; x++) key[nk++] = c->afree[k->streams[x]] - T0;
    for (int x = 0; x < k->np2p; x++) {
        const Instr *in = &cp->instrs[B->i0 + k->p2p[x]];
        if (in->kind != I_RECV) continue;
        /* a receive on the interpreter's stream is ready at T0 or later, and
         * starts at the later of that and its send: a send posted by T0
         * cannot bind (nor, to the quantum, one posted by T0 + q: so that
         * a time a rounding away from T0 keys alike) */
        double s = p2p_msg(S, k, x)->send_t - T0;
        key[nk++] = s <= q && k->code[k->p2p[x]] == S_MAIN ? -INFINITY : s;
    }
    int micro = cp->sched[pass].micro;
    for (int g = 0; g < k->ngrp; g++) {
        /* the pass a run of dependencies reads (as eval_pass resolves it,
         * compiled). Each entry is headed by whether the whole run is done
         * before the interpreter's stream is free and read there, so that
         * it cannot bind (one INFINITY), or not (-INFINITY, then the run):
         * keys equal entry for entry then have runs of the same length */
        int src = c->pass_at[k->xbase[k->grp[g]] + micro];
        if (k->grp_main[g] && c->xlast[src] <= T0 + q) {
            key[nk++] = INFINITY;
            continue;
        }
        key[nk++] = -INFINITY;
        for (int x = k->grp[g]; x < k->grp[g + 1]; x++) {
            int slot = c->xoff[src] + P->export_slot[k->ext[x][1]];
            if (k->code[k->ext[x][0]] == S_MAIN && c->xend[slot] <= T0 + q) {
                /* done before the interpreter's stream is free (to the
                 * quantum): it cannot bind */
                key[nk++] = INFINITY;
                key[nk++] = INFINITY;
                continue;
            }
            key[nk++] = c->xend[slot] - T0;
            key[nk++] = c->xstart[slot] - T0;
        }
    }
    *T0p = T0;
    *qp = q;
    return nk;
}

/* Adds n runs of what a body (or a period of them) adds to a class's
 * figures: busy compute and communication, exposed communication,
 * instructions, FLOPs, recompute. */
static void add_runs(SimClass *o, const SimClass *a, int64_t n)
{
    o->busy_compute += n * a->busy_compute;
    o->busy_comm += n * a->busy_comm;
    o->exposed_comm += n * a->exposed_comm;
    o->main_instrs += n * a->main_instrs;
    o->flops += n * a->flops;
    o->recompute += n * a->recompute;
}

/* Runs pass `pass` of class ci whole (it is regular and ready, with its
 * twins if it has any): replayed when it meets inputs it has met before,
 * else evaluated and remembered. */
static void run_pass(Sim *S, int ci, Passes *P, int pass)
{
    CState *c = &S->cs[ci];
    Compiled *k = &P->cb[c->cp->sched[pass].body];
    double T0, q;
    int nk = pass_key(S, ci, P, pass, &T0, &q);
    const double *key = P->key;
    bool done = false;
    MemoSet *ms = k->ms;
    P->h_t0[pass] = T0;
    P->h_memo[pass] = NULL;
    for (int x = 0; x < MEMO_WAYS && !done; x++) {
        int w = (ms->last + x) % MEMO_WAYS;
        const Memo *me = &ms->memo[w];
        if (me->used && me->nk == nk && keys_match(me->key, key, nk, q)) {
            done = replay_pass(S, ci, P, pass, T0, me);
            ms->last = w;
            if (done) {
                P->h_memo[pass] = me;
                P->h_gen[pass] = me->gen;
            }
        }
    }
    if (!done) {
        Memo *me = &ms->memo[ms->next];
        S->r->passes_evaluated++;
        me->gen++;
        if (eval_pass(S, ci, P, pass, T0, me->out, &me->exposed)) {
            memcpy(me->key, key, sizeof *key * nk);
            me->nk = nk;
            me->used = true;
            ms->next = (ms->next + 1) % MEMO_WAYS;
        } else {
            me->used = false;
        }
        c->out.exposed_comm += me->exposed;
    }
    /* what every run of the body adds */
    add_runs(&c->out, &k->add, 1);
    for (int x = 0; x < CM_SRC_COUNT; x++) S->r->op_count[x] += k->op_count[x];
    S->r->analytic_kinds |= k->analytic_kinds;
}

/* Are body ba of class ci and body bb of class cj the same instruction
 * for instruction, with the same costs and dependencies? */
static bool bodies_alike(Sim *S, Passes *P, int ci, int ba, int cj, int bb)
{
    Slot *sl = map_at(&P[ci].alike, ba, cj, bb, 0);
    if (sl->v >= 0) return sl->v == 1;
    const Program *pa = S->cs[ci].cp, *pb = S->cs[cj].cp;
    const Body *A = &pa->bodies[ba], *B = &pb->bodies[bb];
    int n = A->i1 - A->i0;
    bool same = n == B->i1 - B->i0 && compiled_alike(&P[ci].cb[ba], &P[cj].cb[bb], n);
    for (int x = 0; same && x < n; x++) {
        const Instr *a = &pa->instrs[A->i0 + x], *b = &pb->instrs[B->i0 + x];
        same = a->kind == b->kind && a->ndeps == b->ndeps;
        for (int d = 0; same && d < a->ndeps; d++) {
            int32_t da = pa->deps[a->dep0 + d] - A->i0, db = pb->deps[b->dep0 + d] - B->i0;
            bool ina = da >= 0 && da < n, inb = db >= 0 && db < n;
            same = ina == inb && (!ina || da == db);
        }
    }
    map_at(&P[ci].alike, ba, cj, bb, 0)->v = same;
    return same;
}

/* Runs pass `pass` whole for every class of ci's twin set grp (see
 * "Passes") when they all stand at it alike; false when they do not
 * (yet). */
static bool run_twins(Sim *S, Passes *P, int *next, int ci, int pass, const int *grp, int n)
{
    int b = S->cs[ci].cp->sched[pass].body;
    double T0, q;
    int nk = pass_key(S, ci, &P[ci], pass, &T0, &q);
    for (int g = 0; g < n; g++) {
        int m = grp[g];
        const Program *pm = S->cs[m].cp;
        double T1, q1;
        if (m != ci && !(next[m] == pass && pass < pm->nsched && pass_ready(S, m, &P[m], pass) &&
                         bodies_alike(S, P, ci, b, m, pm->sched[pass].body) &&
                         pass_key(S, m, &P[m], pass, &T1, &q1) == nk &&
                         fabs(T1 - T0) <= min2(q, q1) &&
                         keys_match(P[m].key, P[ci].key, nk, min2(q, q1))))
            return false;
    }
    for (int g = 0; g < n; g++) run_pass(S, grp[g], &P[grp[g]], next[grp[g]]++);
    return true;
}

/* ----------------------------------------------------------------------------
 * Skipping a steady state
 *
 * Between a pipeline's warm-up and its drain (1F1B's steady state) every
 * class repeats a period of L passes: each pass replays the memo entry
 * the pass L before it replayed, and starts a time d after it, the same d
 * for every class (the stages are coupled, so all move at the pace of the
 * slowest). A pass's inputs are its class's streams, the messages it
 * receives and the exports of its class's passes up to D passes back;
 * every rule is a max of sums. So when every class's last D + L passes
 * each repeat the one L before them, shifted by d, and every message in
 * flight was sent by one of them, the next period's inputs are this
 * one's shifted by d, and so on by induction for as long as the schedule
 * repeats (the same bodies, reading passes the same distance back). K
 * such periods are then stepped over at once: every class's passes,
 * channels and messages in flight move on by K periods and its times by
 * K d, and what a period adds (busy time, FLOPs, instructions, exposed
 * communication, the senders' share of the messages received) is added K
 * times. A skipped pass's exports are written only when something reads
 * them (a pass after the skipped ones, or the rest of the step run
 * instruction by instruction): the exports of the pass whole periods
 * before it, shifted. The tests hold the result to the instruction-level
 * simulation of the full program; SimResult.passes_skipped counts what
 * was stepped over. */

/* full attempts (periods found, the schedule and messages examined) that
 * may fail before skipping is given up for the step */
#define SKIP_TRIES 16

typedef struct {
    int n;                          /* the class's next pass */
    int L;                          /* its period, in passes */
    int W;                          /* the passes before n that must repeat: D + L */
    int E;                          /* the first pass from n on that does not repeat */
} Steady;

/* Did passes x and y replay the same memo entry, unchanged between? */
static bool replayed_alike(const Passes *Q, int x, int y)
{
    return Q->h_memo[x] && Q->h_memo[x] == Q->h_memo[y] && Q->h_gen[x] == Q->h_gen[y];
}

/* Does each of the passes [from, n) repeat the pass L before it, d later
 * (to tol)? */
static bool repeats(const Program *cp, const Passes *Q, int from, int n, int L, double d,
                    double tol)
{
    if (from - L < Q->h_run) return false;
    for (int x = from; x < n; x++)
        if (!replayed_alike(Q, x, x - L) || cp->sched[x].body != cp->sched[x - L].body ||
            !(fabs(Q->h_t0[x] - Q->h_t0[x - L] - d) <= tol))
            return false;
    return true;
}

/* The period of class ci standing at pass n (its length, and the time *d
 * it takes), or false when its last passes do not repeat. */
static bool period_of(const Sim *S, const Passes *Q, int ci, int n, int *L, double *d)
{
    const Program *cp = S->cs[ci].cp;
    int l = Q->s_period;
    if (n >= cp->nsched || !l || n - 3 * l < Q->h_run || !Q->h_memo[n - 1 - l]) return false;
    double dl = Q->h_t0[n - 1] - Q->h_t0[n - 1 - l];
    if (!(dl > 0) || !repeats(cp, Q, n - 2 * l, n, l, dl, ulps256(Q->h_t0[n - 1]))) return false;
    *L = l;
    *d = dl;
    return true;
}

/* The period of a class's schedule, in passes: the shortest with which
 * the bodies of its middle half repeat (1F1B's steady state: a forward
 * and a backward; interleaved, 2 V P), or 0 when none does. */
static int schedule_period(const Program *cp)
{
    int a = cp->nsched / 4, b = cp->nsched - cp->nsched / 4;
    for (int l = 1; 3 * l <= cp->nsched && l <= a; l++) {
        int x = a;
        while (x < b && cp->sched[x].body == cp->sched[x - l].body) x++;
        if (x == b) return l;
    }
    return 0;
}

/* How far the schedule of class ci repeats from pass n on with period L
 * (st->E), and how far back its passes read there (st->W = D + L); then
 * whether its last W passes repeat. */
static bool steady_class(Sim *S, Passes *Q, int ci, double d, Steady *st)
{
    CState *c = &S->cs[ci];
    const Program *cp = c->cp;
    int n = st->n, L = st->L, D = 0, x;
    if (Q->s_L == L && Q->s_from <= n && n <= Q->s_E) {
        /* scanned before from an earlier pass: the same end, and at most
         * the same reach back */
        st->E = Q->s_E;
        st->W = Q->s_D + L;
        return repeats(cp, Q, n - st->W, n, L, d, ulps256(Q->h_t0[n - 1]));
    }
    for (x = n; x < cp->nsched; x++) {
        int b = cp->sched[x].body;
        if (b != cp->sched[x - L].body) break;
        const Compiled *k = &Q->cb[b];      /* compiled: it ran L passes before */
        int m = cp->sched[x].micro, m0 = cp->sched[x - L].micro;
        bool same = true;
        for (int g = 0; g < k->ngrp && same; g++) {
            int base = k->xbase[k->grp[g]];
            int src = c->pass_at[base + m], src0 = c->pass_at[base + m0];
            same = src - x == src0 - (x - L);
            if (x - src > D) D = x - src;
        }
        if (!same) break;
    }
    st->E = Q->s_E = x;
    st->W = D + L;
    Q->s_L = L;
    Q->s_D = D;
    Q->s_from = n;
    return repeats(cp, Q, n - st->W, n, L, d, ulps256(Q->h_t0[n - 1]));
}

/* Writes the exports of pass y, if it was skipped: those of the pass it
 * repeats, shifted. */
static void fill_pass(CState *c, const Passes *Q, int y)
{
    int y0 = Q->h_from[y];
    if (y0 < 0) return;
    double sh = Q->h_shift[y];
    int a = c->xoff[y], a0 = c->xoff[y0], n = c->xoff[y + 1] - a;
    for (int s = 0; s < n; s++) {
        c->xstart[a + s] = c->xstart[a0 + s] + sh;
        c->xend[a + s] = c->xend[a0 + s] + sh;
        c->xcode[a + s] = c->xcode[a0 + s];
    }
    c->xlast[y] = c->xlast[y0] + sh;
}

/* Per line and channel, what one period of every class does with them. */
typedef struct {
    int *sends, *recvs;             /* per line: messages a period sends, receives */
    int *schan, *rchan;             /* per line: the sender's and the receiver's channel */
    int *src;                       /* per line: the sending class */
    int *per_chan;                  /* per channel: transfers a period makes */
    int *line_of;                   /* per channel: the one line it serves */
} Traffic;

/* Steps over K periods of every class when all of them stand in a steady
 * state together (see above); false when they do not. */
static bool try_skip(Sim *S, Passes *P, int *next)
{
    int nc = S->p->nclasses;
    Steady *st = xmalloc(sizeof *st * nc);
    Traffic T = { 0 };
    bool ok = true, skipped = false;
    double d = NAN, tol = 0;
    for (int ci = 0; ci < nc && ok; ci++) {
        double dc;
        st[ci].n = next[ci];
        ok = period_of(S, &P[ci], ci, next[ci], &st[ci].L, &dc);
        if (ok && isnan(d)) {
            /* replays of the same entries: the periods agree but for
             * rounding, a few units in the last place of the time */
            d = dc;
            tol = ulps256(P[ci].h_t0[next[ci] - 1]) / 16;
        }
        /* the passes it needed to repeat last time, if known, repeat now */
        int need = P[ci].s_L ? P[ci].s_D + P[ci].s_L : 0;
        ok = ok && fabs(dc - d) <= tol &&
             repeats(S->cs[ci].cp, &P[ci], next[ci] - need, next[ci], st[ci].L, dc, tol);
    }
    if (!ok || S->skip_tries++ >= SKIP_TRIES) goto out;
    /* every class examined, even after one fails: each then knows how
     * many passes it must have repeated before the next try */
    int K = INT32_MAX;
    for (int ci = 0; ci < nc; ci++) {
        ok = steady_class(S, &P[ci], ci, d, &st[ci]) && ok;
        if ((st[ci].E - st[ci].n) / st[ci].L < K) K = (st[ci].E - st[ci].n) / st[ci].L;
    }
    if (!ok || K < 1) goto out;

    /* the messages: each line a period sends on, received as often, by
     * one channel a side, and every message in flight sent within the
     * sender's passes that repeat. The lines and channels known now:
     * compiling a body below may add others, which no period uses */
    int nlines = S->nlines, nchan = S->nchan;
    T.sends = xcalloc(nlines + 1, sizeof *T.sends);
    T.recvs = xcalloc(nlines + 1, sizeof *T.recvs);
    T.schan = xmalloc(sizeof *T.schan * (nlines + 1));
    T.rchan = xmalloc(sizeof *T.rchan * (nlines + 1));
    T.src = xmalloc(sizeof *T.src * (nlines + 1));
    T.per_chan = xcalloc(nchan + 1, sizeof *T.per_chan);
    T.line_of = xmalloc(sizeof *T.line_of * (nchan + 1));
    for (int ch = 0; ch < nchan; ch++) T.line_of[ch] = -1;
    for (int l = 0; l < nlines; l++) T.schan[l] = T.rchan[l] = T.src[l] = -1;
    for (int ci = 0; ci < nc && ok; ci++) {
        const Program *cp = S->cs[ci].cp;
        for (int x = st[ci].n - st[ci].L; x < st[ci].n && ok; x++) {
            const Compiled *k = &P[ci].cb[cp->sched[x].body];
            const Body *B = &cp->bodies[cp->sched[x].body];
            for (int q = 0; q < k->np2p && ok; q++) {
                int l = k->line[q], ch = k->chan[q];
                bool send = cp->instrs[B->i0 + k->p2p[q]].kind == I_SEND;
                int *own = send ? T.schan : T.rchan;
                ok = (own[l] < 0 || own[l] == ch) && (T.line_of[ch] < 0 || T.line_of[ch] == l);
                own[l] = ch;
                T.line_of[ch] = l;
                if (send) {
                    T.sends[l]++;
                    T.src[l] = ci;
                } else {
                    T.recvs[l]++;
                }
                T.per_chan[ch]++;
            }
        }
    }
    for (int l = 0; l < nlines && ok; l++) {
        if (!T.sends[l] && !T.recvs[l]) continue;
        ok = T.sends[l] == T.recvs[l];
        if (!ok) break;
        /* the periods of the sender that sent what is in flight repeat too */
        int s = T.src[l], flight = S->chan_n[T.schan[l]] - S->chan_n[T.rchan[l]];
        int back = (flight + T.sends[l] - 1) / T.sends[l] * st[s].L;
        ok = flight >= 0 && repeats(S->cs[s].cp, &P[s], st[s].n - back, st[s].n, st[s].L, d, tol);
    }
    if (!ok) goto out;

    /* step over K periods */
    double shift = K * d;
    double *sender_busy = xcalloc(nc, sizeof *sender_busy);
    for (int ci = 0; ci < nc; ci++) {
        CState *c = &S->cs[ci];
        Passes *Q = &P[ci];
        const Program *cp = c->cp;
        int n = st[ci].n, L = st[ci].L;
        SimClass add = { 0 };
        int ops[CM_SRC_COUNT] = { 0 };
        bool used[S_GROUPS + KEYS] = { false };
        for (int x = n - L; x < n; x++) {
            const Compiled *k = &Q->cb[cp->sched[x].body];
            const Body *B = &cp->bodies[cp->sched[x].body];
            add_runs(&add, &k->add, 1);
            add.exposed_comm += Q->h_memo[x]->exposed;
            for (int q = 0; q < CM_SRC_COUNT; q++) ops[q] += k->op_count[q];
            for (int q = 0; q < k->nstream; q++) used[k->streams[q]] = true;
            for (int q = 0; q < k->np2p; q++) {
                int xi = k->p2p[q];
                if (cp->instrs[B->i0 + xi].kind == I_RECV) sender_busy[T.src[k->line[q]]] += k->dur[xi];
            }
        }
        add_runs(&c->out, &add, K);
        for (int q = 0; q < CM_SRC_COUNT; q++) S->r->op_count[q] += K * ops[q];
        for (int q = 0; q < S_GROUPS + KEYS; q++)
            if (used[q]) c->afree[q] += shift;
        c->base_end += shift;
        for (int y = n; y < n + K * L; y++) {
            int j = (y - n) / L + 1, y0 = y - j * L;
            Q->h_from[y] = y0;
            Q->h_shift[y] = j * d;
            Q->h_t0[y] = Q->h_t0[y0] + j * d;
            Q->h_memo[y] = Q->h_memo[y0];
            Q->h_gen[y] = Q->h_gen[y0];
        }
        next[ci] = n + K * L;
        Q->h_run = next[ci];
        S->r->passes_skipped += K * L;
        /* the exports the passes after the skipped ones read */
        for (int x = next[ci]; x < cp->nsched; x++) {
            int b = cp->sched[x].body;
            if (!Q->cb[b].code) compile_body(S, ci, Q, b);
            const Compiled *k = &Q->cb[b];
            for (int g = 0; g < k->ngrp; g++) fill_pass(c, Q, c->pass_at[k->xbase[k->grp[g]] + cp->sched[x].micro]);
        }
    }
    for (int ci = 0; ci < nc; ci++) S->cs[ci].out.busy_comm += K * sender_busy[ci];
    free(sender_busy);
    /* the messages in flight, K periods on */
    for (int l = 0; l < nlines; l++) {
        if (!T.sends[l]) continue;
        int by = K * T.sends[l], cs = S->chan_n[T.schan[l]], cr = S->chan_n[T.rchan[l]];
        for (int i = cs; i > cr; i--) {
            Msg m = *line_msg(S, l, i);
            m.send_t += shift;
            m.recv_ready += shift;
            m.end += shift;
            *line_msg(S, l, i + by) = m;
        }
    }
    for (int ch = 0; ch < nchan; ch++) S->chan_n[ch] += K * T.per_chan[ch];
    skipped = true;
out:
    free(st);
    free(T.sends);
    free(T.recvs);
    free(T.schan);
    free(T.rchan);
    free(T.src);
    free(T.per_chan);
    free(T.line_of);
    return skipped;
}

/* Is SimOpts.deadline past? */
static bool late(const Sim *S)
{
    return S->o->deadline > 0 && now_s() > S->o->deadline;
}

static int root_of(int *up, int x)
{
    while (up[x] != x) x = up[x] = up[up[x]];
    return x;
}

typedef struct {
    CState *c;
    const Passes *P;
} Outside;

/* A dependency of the instruction-level rest on an instruction of pass
 * `pass`, run whole: its export slot (every instruction another pass reads
 * has one). */
static int32_t outside_dep(void *ctx, int pass, int32_t local)
{
    const Outside *o = ctx;
    fill_pass(o->c, o->P, pass);
    int slot = export_at(o->c, o->P, pass, local);
    return slot < 0 ? -1 : -2 - slot;
}

/* Runs the regular passes of every class whole, as far as they go, and
 * gives each class the program of the rest (*rest, to free). */
/* SimResult.lower_bound: per class, the busiest stream's instructions
 * end to end, every body as often as the schedule runs it (the tail
 * once). Sends take no time of their own stream here, and a stale pull
 * none. */
static double lower_bound(Sim *S, Passes *P)
{
    double lb = 0;
    double busy[S_GROUPS + KEYS];
    for (int ci = 0; ci < S->p->nclasses && !late(S); ci++) {
        CState *c = &S->cs[ci];
        const Program *cp = c->cp;
        int *runs = xcalloc(cp->nbodies, sizeof *runs);
        for (int k = 0; k <= cp->nsched; k++) runs[k < cp->nsched ? cp->sched[k].body : cp->nbodies - 1]++;
        memset(busy, 0, sizeof busy);
        for (int b = 0; b < cp->nbodies; b++) {
            if (!runs[b]) continue;
            if (!P[ci].cb[b].code) compile_body(S, ci, &P[ci], b);
            const Compiled *k = &P[ci].cb[b];
            for (int q = 0; q < k->nstream; q++) busy[k->streams[q]] += runs[b] * k->busy[q];
        }
        for (int q = 0; q < S_GROUPS + KEYS; q++) lb = max2(lb, busy[q]);
        free(runs);
    }
    return lb;
}

static void run_passes(Sim *S, Program *rest, bool whole)
{
    int nc = S->p->nclasses;
    Passes *P = xcalloc(nc, sizeof *P);
    S->passes = P;
    int *next = xcalloc(nc, sizeof *next);
    int scratch = 1;
    for (int ci = 0; ci < nc; ci++) {
        CState *c = &S->cs[ci];
        const Program *cp = c->cp = &S->p->classes[ci];
        c->pass_at = program_pass_index(cp);
        if (cp->like >= 0 && cp->like < ci) {
            /* a copy of an earlier class has its dependencies, so its exports */
            const Passes *from = &P[cp->like];
            P[ci].export_slot = xmemdup(from->export_slot, sizeof *from->export_slot * cp->ninstrs);
            P[ci].nexports = xmemdup(from->nexports, sizeof *from->nexports * cp->nbodies);
        } else {
            find_exports(cp, &P[ci]);
        }
        P[ci].cb = xcalloc(cp->nbodies, sizeof *P[ci].cb);
        c->xoff = xmalloc(sizeof *c->xoff * (cp->nsched + 2));
        c->xoff[0] = 0;
        for (int k = 0; k <= cp->nsched; k++) {
            int b = k < cp->nsched ? cp->sched[k].body : cp->nbodies - 1;
            c->xoff[k + 1] = c->xoff[k] + P[ci].nexports[b];
        }
        int nx = c->xoff[cp->nsched + 1] ? c->xoff[cp->nsched + 1] : 1;
        c->xstart = xmalloc(sizeof *c->xstart * nx);
        c->xend = xmalloc(sizeof *c->xend * nx);
        c->xcode = xcalloc(nx, sizeof *c->xcode);
        c->xlast = xmalloc(sizeof *c->xlast * (cp->nsched + 1));
        for (int x = 0; x <= cp->nsched; x++) c->xlast[x] = NAN;
        for (int x = 0; x < nx; x++) c->xstart[x] = c->xend[x] = NAN;
        for (int b = 0; b < cp->nbodies; b++)
            if (cp->bodies[b].i1 - cp->bodies[b].i0 > scratch) scratch = cp->bodies[b].i1 - cp->bodies[b].i0;
    }
    for (int ci = 0; ci < nc && whole; ci++) {
        int ns = S->cs[ci].cp->nsched + 1;
        P[ci].h_t0 = xmalloc(sizeof *P[ci].h_t0 * ns);
        P[ci].h_memo = xcalloc(ns, sizeof *P[ci].h_memo);
        P[ci].h_gen = xmalloc(sizeof *P[ci].h_gen * ns);
        P[ci].h_from = xmalloc(sizeof *P[ci].h_from * ns);
        P[ci].h_shift = xmalloc(sizeof *P[ci].h_shift * ns);
        for (int x = 0; x < ns; x++) P[ci].h_from[x] = -1;
        P[ci].s_period = schedule_period(S->cs[ci].cp);
        P[ci].start = xmalloc(sizeof *P[ci].start * scratch);
        P[ci].end = xmalloc(sizeof *P[ci].end * scratch);
        P[ci].key = xmalloc(sizeof *P[ci].key * (3 * S->cs[ci].cp->ndeps + S_GROUPS + KEYS + scratch));
    }
    if (whole) {
        S->r->lower_bound = lower_bound(S, P);
        S->bounded = S->o->bound > 0 && S->r->lower_bound >= S->o->bound;
    }
    /* twin sets: the classes that meet in collectives, joined. Only
     * classes of one stage can (a tied sum joins none), so without two
     * such there is nothing to join and the bodies compile as they run */
    int *up = xmalloc(sizeof *up * nc), *grp = xmalloc(sizeof *grp * nc);
    int *grp_off = xcalloc(nc + 1, sizeof *grp_off), *grp_n = xcalloc(nc, sizeof *grp_n);
    bool shared_stage = false;
    for (int ci = 0; ci < nc; ci++) {
        up[ci] = ci;
        for (int cj = 0; cj < ci && !shared_stage; cj++)
            shared_stage = S->cs[ci].cp->stage == S->cs[cj].cp->stage;
    }
    for (int ci = 0; ci < nc && whole && shared_stage; ci++)
        for (int b = 0; b < S->cs[ci].cp->nbodies; b++) {
            if (!P[ci].cb[b].code) compile_body(S, ci, &P[ci], b);
            for (int j = 0; j < P[ci].cb[b].ntwins; j++)
                up[root_of(up, P[ci].cb[b].twins[j])] = root_of(up, ci);
        }
    for (int ci = 0; ci < nc; ci++) grp_n[root_of(up, ci)]++;
    for (int ci = 0; ci < nc; ci++) grp_off[ci + 1] = grp_off[ci] + grp_n[ci];
    memset(grp_n, 0, sizeof *grp_n * nc);
    for (int ci = 0; ci < nc; ci++) {
        int r = root_of(up, ci);
        grp[grp_off[r] + grp_n[r]++] = ci;
    }
    for (bool moved = whole && !S->bounded; moved && !late(S);) {
        moved = false;
        for (int ci = 0; ci < nc; ci++)
            while (next[ci] < S->cs[ci].cp->nsched && pass_ready(S, ci, &P[ci], next[ci])) {
                int r = root_of(up, ci);
                if (grp_n[r] > 1) {
                    if (!run_twins(S, P, next, ci, next[ci], &grp[grp_off[r]], grp_n[r])) break;
                } else if (P[ci].cb[S->cs[ci].cp->sched[next[ci]].body].ntwins > 1) {
                    break;      /* it meets another class, never joined to it: not whole */
                } else {
                    run_pass(S, ci, &P[ci], next[ci]++);
                }
                moved = true;
            }
        /* twins run together, which a skip of whole periods does not follow */
        if (moved && !shared_stage && !S->o->every_pass) try_skip(S, P, next);
    }
    for (int ci = 0; ci < nc; ci++) {
        CState *c = &S->cs[ci];
        c->first = next[ci];
        S->r->passes += c->cp->nsched;
        S->r->passes_whole += c->first;
        Outside o = { c, &P[ci] };
        if (!S->bounded && !late(S)) program_expand_from(c->cp, c->first, &rest[ci], outside_dep, &o);
        for (int b = 0; b < c->cp->nbodies; b++) {
            Compiled *k = &P[ci].cb[b];
            free(k->block);
            free(k->twins);
            for (int w = 0; w < MEMO_WAYS; w++) {
                free(k->own.memo[w].key);
                free(k->own.memo[w].out);
            }
        }
        free(P[ci].cb);
        free(P[ci].export_slot);
        free(P[ci].nexports);
        free(P[ci].start);
        free(P[ci].end);
        free(P[ci].key);
        free(P[ci].h_t0);
        free(P[ci].h_memo);
        free(P[ci].h_gen);
        free(P[ci].h_from);
        free(P[ci].h_shift);
    }
    for (int ci = 0; ci < nc; ci++) map_free(&P[ci].alike);
    free(up);
    free(grp);
    free(grp_off);
    free(grp_n);
    free(P);
    S->passes = NULL;
    free(next);
}

/* ----------------------------------------------------------------------------
 * Set-up and results */

static int device_index(const Cluster *cl, int rank)
{
    const DeviceGroup *d = cluster_device(cl, rank);
    return (int)(d - cl->groups);
}

/* Who the class is: its representative rank, its device. */
static void class_ident(Sim *S, int ci)
{
    CState *c = &S->cs[ci];
    const Program *pr = &S->p->classes[ci];
    c->rep = pr->ranks[0];
    strategy_coords(S->s, c->rep, c->coord);
    c->device = S->c ? device_index(S->c, c->rep) : 0;
    op_device_from_group(cluster_device(S->c, c->rep), &c->dev);
    for (int k = 0; k < KEYS; k++) c->key_stream[k] = -1;
}

/* The instruction-level state of the program pr the class runs, its
 * streams starting where the passes run whole left them. */
static void class_init(Sim *S, int ci, const Program *pr)
{
    CState *c = &S->cs[ci];
    c->pr = pr;
    int n = pr->ninstrs ? pr->ninstrs : 1;
    c->start = xmalloc(sizeof *c->start * n);
    c->end = xmalloc(sizeof *c->end * n);
    c->seq = xmalloc(sizeof *c->seq * n);
    c->line = xmalloc(sizeof *c->line * n);
    c->sid = xmalloc(sizeof *c->sid * n);
    c->list = xmalloc(sizeof *c->list * n);
    c->later = xmalloc(sizeof *c->later * n);
    c->nlater = 0;
    c->nstreams = S_GROUPS;
    for (int i = 0; i < pr->ninstrs; i++) {
        c->start[i] = c->end[i] = NAN;
        c->seq[i] = -1;
        const Instr *in = &pr->instrs[i];
        c->sid[i] = in->kind == I_ALLOC || in->kind == I_FREE ? UINT16_MAX
                  : (uint16_t)stream_of(S, c, in);
    }
    /* the lists of every stream, in program order */
    c->list_off = xcalloc(c->nstreams + 1, sizeof *c->list_off);
    c->cur = xmalloc(sizeof *c->cur * c->nstreams);
    c->free_t = xcalloc(c->nstreams, sizeof *c->free_t);
    for (int i = 0; i < pr->ninstrs; i++)
        if (c->sid[i] != UINT16_MAX) c->list_off[c->sid[i] + 1]++;
    for (int st = 0; st < c->nstreams; st++) {
        c->list_off[st + 1] += c->list_off[st];
        c->cur[st] = c->list_off[st];
    }
    for (int i = 0; i < pr->ninstrs; i++)
        if (c->sid[i] != UINT16_MAX) c->list[c->cur[c->sid[i]]++] = i;
    for (int st = 0; st < c->nstreams; st++) c->cur[st] = c->list_off[st];
    c->free_t[S_MAIN] = c->afree[S_MAIN];
    for (int k = 0; k < KEYS; k++)
        if (c->key_stream[k] >= 0) c->free_t[c->key_stream[k]] = c->afree[S_GROUPS + k];
    SimClass *o = &c->out;
    o->nranks = pr->nranks;
    o->stage = pr->stage;
    o->peak_mem = pr->peak_mem;
    o->static_mem = pr->static_mem;
    o->device_mem = pr->device_mem;
    o->fits = !(pr->device_mem > 0) || (double)pr->peak_mem <= pr->device_mem;
}

static void class_free(CState *c)
{
    free(c->start);
    free(c->end);
    free(c->seq);
    free(c->line);
    free(c->sid);
    free(c->later);
    free(c->list);
    free(c->list_off);
    free(c->cur);
    free(c->free_t);
    free(c->pass_at);
    free(c->xoff);
    free(c->xstart);
    free(c->xend);
    free(c->xcode);
    free(c->xlast);
    for (int k = 0; k < c->nmeet; k++) {
        free(c->meet[k]->v);
        free(c->meet[k]->ranks);
        free(c->meet[k]->members);
        free(c->meet[k]);
    }
    free(c->meet);
}

static void gib(double b, char *out, int n)
{
    snprintf(out, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
}

/* The dtype most of the model's FLOPs run in: the output dtype of its
 * first matmul or convolution (f32 for a model with neither). */
static DType model_dtype(const Graph *g)
{
    for (int i = 0; i < g->nops; i++)
        if (g->ops[i].kind == OP_MATMUL || g->ops[i].kind == OP_CONV2D)
            return g->tensors[g->ops[i].out].dtype;
    return DT_F32;
}

static void summarise(Sim *S)
{
    SimResult *r = S->r;
    const Strategy *s = S->s;
    double step = 0;
    for (int ci = 0; ci < r->nclasses; ci++) {
        CState *c = &S->cs[ci];
        double e = c->base_end;
        for (int i = 0; i < c->pr->ninstrs; i++)
            if (!isnan(c->end[i]) && c->end[i] > e) e = c->end[i];
        if (e > step) step = e;
    }
    r->step_time = step;
    double bubble = 0, hw = 0;
    int staged = 0;
    r->feasible = true;
    for (int ci = 0; ci < r->nclasses; ci++) {
        SimClass *o = &S->cs[ci].out;
        o->idle = max2(0, step - o->busy_compute - o->exposed_comm);
        r->classes[ci] = *o;
        hw += o->flops * o->nranks;
        if (s->nstages > 1) {
            bubble += (step > 0 ? o->idle / step : 0) * o->nranks;
            staged += o->nranks;
        }
        if (!o->fits && r->feasible) {
            char need[32], have[32];
            gib((double)o->peak_mem, need, sizeof need);
            gib(o->device_mem, have, sizeof have);
            snprintf(r->why_infeasible, sizeof r->why_infeasible,
                     "class %d (stage %d, %d ranks) needs %s at its peak, its devices have %s",
                     ci, o->stage, o->nranks, need, have);
            r->feasible = false;
        }
    }
    r->bubble = staged ? bubble / staged : 0;
    r->hw_flops = hw;

    r->model_flops = S->g->train_flops;
    DType dt = model_dtype(S->g);
    r->peak_flops = 0;
    for (int rk = 0; rk < s->world; rk++)
        r->peak_flops += S->c ? cluster_device(S->c, rk)->peak_flops[dt] : 0;
    if (step > 0 && r->peak_flops > 0) {
        r->mfu = r->model_flops / (step * r->peak_flops);
        r->hfu = r->hw_flops / (step * r->peak_flops);
    }
    /* throughput: the global batch of the input, and the sequence of an
     * embedding's output where the model has one */
    int64_t batch = 0, seq = 0;
    for (int t = 0; t < S->g->ntensors && !batch; t++) {
        const Tensor *T = &S->g->tensors[t];
        if (T->role == ROLE_INPUT && T->batch_dim >= 0) batch = T->shape[T->batch_dim];
    }
    for (int i = 0; i < S->g->nops && !seq; i++) {
        const Op *op = &S->g->ops[i];
        if (op->kind == OP_EMBEDDING && strchr(op->out_letters, 's')) seq = op->size['s' - 'a'];
    }
    if (step > 0) {
        r->samples_per_s = (double)batch / step;
        r->tokens_per_s = seq ? r->samples_per_s * (double)seq : 0;
    }
}

int cost_simulate(const Graph *g, const Cluster *c, const Strategy *s, const Plan *p,
                  const SimOpts *o, SimResult *r, Err *err)
{
    memset(r, 0, sizeof *r);
    if (!c) return err_set(err, "simulate: a cluster is needed (devices and links)");
    if (p->world > c->ndevices)
        return err_set(err, "simulate: the plan needs %d devices, cluster %s has %d", p->world,
                       c->name, c->ndevices);
    int ncompact = 0;
    for (int ci = 0; ci < p->nclasses; ci++) ncompact += program_is_compact(&p->classes[ci]);
    if (ncompact && ncompact < p->nclasses)
        return err_set(err, "simulate: %d of the plan's %d classes are expanded; give it whole "
                       "(ir_lower) or compact (ir_lower_compact)", p->nclasses - ncompact,
                       p->nclasses);
    SimOpts none = { 0 };
    if (!o) o = &none;
    Sim S = { .g = g, .c = c, .s = s, .p = p, .ops = o->ops, .links = o->links, .o = o, .r = r,
              .trace = o->trace, .err = err };
    if (!S.ops) S.ops = S.own_ops = opmodel_analytic();
    opmodel_calibration(S.ops, &S.calib[0], &S.calib[1], &S.calib[2]);
    if (!S.links && !(S.links = S.own_links = linkmodel_from_cluster(c, err))) {
        opmodel_free(S.own_ops);
        return -1;
    }
    for (int a = 0; a < s->naxes; a++)
        if (s->axis_size[a] > 1) S.live |= (AxisMask)(1 << a);
    r->nclasses = p->nclasses;
    r->classes = xcalloc(p->nclasses, sizeof *r->classes);
    if (o->trace) {
        r->spans = xcalloc(p->nclasses, sizeof *r->spans);
        r->nspans = xcalloc(p->nclasses, sizeof *r->nspans);
    }
    S.cs = xcalloc(p->nclasses, sizeof *S.cs);
    size_t nt = (size_t)c->ngroups * g->nops * PH_COUNT;
    S.op_time = xmalloc(sizeof *S.op_time * (nt ? nt : 1));
    for (size_t k = 0; k < nt; k++) S.op_time[k] = NAN;
    for (int ci = 0; ci < p->nclasses; ci++) class_ident(&S, ci);
    /* a compact plan: regular passes whole (unless every instruction's
     * span is wanted, or a caller prices instructions itself), the rest
     * instruction by instruction */
    Program *rest = NULL;
    if (ncompact) {
        rest = xcalloc(p->nclasses, sizeof *rest);
        run_passes(&S, rest, !o->trace && !o->compute_time && !o->comm_time);
    }
    int rc = 0;
    if (S.bounded) {
        err_set(err, SIM_BOUND);
        rc = -1;
    } else if (late(&S)) {          /* the rest of the step was not expanded */
        err_set(err, SIM_LATE);
        rc = -1;
    }
    for (int ci = 0; ci < p->nclasses && !rc; ci++)
        class_init(&S, ci, rest ? &rest[ci] : &p->classes[ci]);

    for (; !rc;) {
        if (late(&S)) {
            err_set(err, SIM_LATE);
            rc = -1;
            break;
        }
        int moved = 0;
        bool all = true;
        for (int ci = 0; ci < p->nclasses; ci++) {
            moved += advance(&S, ci);
            CState *cs = &S.cs[ci];
            for (int st = 0; st < cs->nstreams; st++) all &= cs->cur[st] == cs->list_off[st + 1];
            all &= cs->nlater == 0;
        }
        if (all) break;
        if (moved) S.release = false;
        if (!moved && !S.release) {
            S.release = true;
            continue;
        }
        if (!moved && run_set_aside(&S)) continue;
        if (!moved) {
            for (int ci = 0; ci < p->nclasses; ci++) {
                CState *cs = &S.cs[ci];
                int st = 0;
                while (st < cs->nstreams && cs->cur[st] == cs->list_off[st + 1]) st++;
                if (st == cs->nstreams && !cs->nlater) continue;
                int32_t i = st < cs->nstreams ? cs->list[cs->cur[st]] : cs->later[0].i;
                const Instr *in = &cs->pr->instrs[i];
                err_set(err, "simulate: class %d (stage %d) waits forever at instruction %d "
                        "(%s of tensor %s, micro-batch %d): no peer reaches it; the program "
                        "cannot run as lowered", ci, cs->pr->stage, i,
                        instr_kind_name((InstrKind)in->kind),
                        in->tensor >= 0 ? g->tensors[in->tensor].name : "-", in->micro);
                break;
            }
            rc = -1;
            break;
        }
    }
    if (!rc) summarise(&S);
    for (int ci = 0; ci < p->nclasses; ci++) class_free(&S.cs[ci]);
    for (int ci = 0; rest && ci < p->nclasses; ci++) program_free(&rest[ci]);
    free(rest);
    free(S.cs);
    free(S.op_time);
    for (int l = 0; l < S.nlines; l++) free(S.lines[l].v);
    free(S.lines);
    free(S.chan_n);
    map_free(&S.chan_at);
    map_free(&S.line_at);
    map_free(&S.small_at);
    free(S.small);
    opmodel_free(S.own_ops);
    linkmodel_free(S.own_links);
    double lb = r->lower_bound;
    if (rc) sim_result_free(r);
    if (S.bounded) r->lower_bound = lb;
    return rc;
}

void sim_result_free(SimResult *r)
{
    if (!r) return;
    if (r->spans)
        for (int ci = 0; ci < r->nclasses; ci++) free(r->spans[ci]);
    free(r->spans);
    free(r->nspans);
    free(r->classes);
    memset(r, 0, sizeof *r);
}
