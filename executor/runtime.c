/*
 * runtime.c — interprets one rank's lowered program.
 *
 * Every instruction names its values (lower.h); a value's buffer is its local
 * block of the tensor, row-major, with extents and global offsets that follow
 * from its layout and this rank's mesh coordinates. ZeRO shards are flat
 * 1/D parts of the rank's local block (the last part padded). Buffers live on
 * the run's Device (host memory, or a GPU's) and are touched only through
 * its functions; before a buffer goes to the communication backend the
 * device's queued work is waited for (dev_sync).
 *
 * Legend: t = tensor, v = value, d = dim, G = group size, n = elements.
 */
#include "executor/runtime.h"

#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "executor/pool.h"
#include "ir/util.h"

typedef struct {
    CommReq *req;
    int32_t val;
    float *stage;            /* a copy sent in place of a buffer that changes later */
    float *owned;            /* the value's buffer, freed by the program while in flight:
                                released once the last send of it completes */
    bool done;               /* the progress thread saw it complete */
} Pending;

typedef struct {
    int32_t instr;           /* a parameter-server pull */
    int step;                /* the step that issued it */
} Deferred;

/* What completes a collective in flight once the backend is done with it. */
typedef enum {
    FIN_NONE,                /* an all-reduce in place: nothing */
    FIN_ADD,                 /* a ZeRO reduce-scatter: dst += recv */
    FIN_COPY                 /* a ZeRO all-gather: dst <- recv */
} Finish;

typedef struct {
    int32_t instr;           /* a gradient sync or param gather in flight */
    CommReq *req;
    bool done;
    int32_t busy[2];         /* the values the backend reads or writes (-1: none):
                              * instructions touching them wait */
    uint8_t finish;          /* Finish */
    float *send, *recv, *dst;/* the backend's buffers (released once finished) and dst */
    int64_t n;               /* elements finish moves */
    float *zero;             /* zeroed once finished (a gradient sent in place), nzero floats */
    int64_t nzero;
    float *owned;            /* released once finished: a value freed while the backend
                              * still had it (free_later) */
} Inflight;

struct Runtime {
    const Graph *g;
    const Strategy *s;
    const Plan *p;
    Comm *comm;
    Device *dev;
    bool own_dev;                            /* made here (cfg.dev was NULL) */
    Pool *pool;                              /* every buffer of the run, cached step to step */
    OpTimes times;                           /* where the time went (rt_op_times) */
    double synced_s;                         /* time waiting for the device's queued work:
                                              * compute, wherever the wait happens */
    float *one;                              /* device float 1: the loss's gradient */
    /* every live buffer's bytes, so the high-water mark is the executor's
     * own and not the lowering's prediction of it */
    void **mem_ptr;                          /* open addressing, NULL: empty */
    int64_t *mem_bytes;
    int mem_cap, mem_n;
    int64_t mem_live, mem_high;
    RunConfig cfg;
    const Program *pr;
    int coord[MESH_MAX_AXES];
    AxisMask live;
    int gsize[1 << MESH_MAX_AXES];
    CommGroup *groups[1 << MESH_MAX_AXES];   /* this rank's group along each axis mask */
    CommGroup *tied;                         /* the stages sharing tied params */
    float **buf;                             /* per value (int32 data shares the storage) */
    int64_t *numel;                          /* per value */
    float **opt_a, **opt_b;                  /* per tensor: Adam m, v / SGD momentum */
    float **ef;                              /* per tensor: int8 / PowerSGD error feedback */
    float **psgd_q, **psgd_p, **psgd_m;      /* per tensor: PowerSGD factors and matrix */
    uint8_t *psgd_phase;                     /* per tensor: 0 before P, 1 before Q */
    int32_t *data_hi;                        /* per tensor: int data range, 0 for floats */
    Pending *pend;
    int npend, cap_pend;
    Deferred *defer;         /* stale pulls, received k steps late */
    int ndefer, cap_defer;
    Inflight *fly;           /* collectives overlapping the instructions after them */
    int nfly, cap_fly;
    int loss_op;
    double loss_acc;
    int step;
    bool draining;           /* receiving deferred pulls now */
    int staleness;           /* the largest of the params' */
    /* The progress thread: MPI moves a non-blocking all-reduce or a large send
     * only inside MPI calls, so while this thread computes, that one tests the
     * requests in flight (pend, fly), under `lk`, which guards those lists. */
    int *later;              /* updates set aside until their all-reduce is done */
    int nlater, cap_later;
    pthread_t prog;
    bool prog_on, quit;
    bool in_step;            /* the thread tests only inside rt_step: between steps the
                              * caller may call MPI itself, without the lock */
    pthread_mutex_t lk;
    pthread_cond_t cv;
};

/* Between tests while something is in flight: 50 us while an all-reduce is
 * (Open MPI advances one of its rounds per test); with only sends left,
 * doubling up to 1 ms while nothing completes (a send a slow receiver has not
 * taken yet needs no attention every 50 us), back to 50 us when something
 * does or a request joins. */
#define PROGRESS_MIN_NS 50000
#define PROGRESS_MAX_NS 1000000

/* Tests the all-reduces in flight and marks those done (*moved: one was just
 * now). Returns whether one is still running. */
static bool test_fly(Runtime *rt, bool *moved)
{
    bool running = false;
    Err err;
    for (int k = 0; k < rt->nfly; k++) {
        int done = 0;
        if (!rt->fly[k].done && !rt->comm->ops->test(rt->fly[k].req, &done, &err) && done)
            rt->fly[k].done = *moved = true;
        running |= !rt->fly[k].done;
    }
    return running;
}

static void *progress_main(void *arg)
{
    Runtime *rt = arg;
    const CommOps *o = rt->comm->ops;
    long wait_ns = PROGRESS_MIN_NS;
    pthread_mutex_lock(&rt->lk);
    while (!rt->quit) {
        if (!rt->in_step) {
            pthread_cond_wait(&rt->cv, &rt->lk);
            continue;
        }
        bool moved = false, reducing = test_fly(rt, &moved), busy = reducing;
        Err err;
        for (int k = 0; k < rt->npend; k++) {
            int done = 0;
            if (!rt->pend[k].done && !o->test(rt->pend[k].req, &done, &err) && done)
                rt->pend[k].done = moved = true;
            busy |= !rt->pend[k].done;
        }
        if (!busy) {
            pthread_cond_wait(&rt->cv, &rt->lk);
            wait_ns = PROGRESS_MIN_NS;
            continue;
        }
        wait_ns = moved || reducing ? PROGRESS_MIN_NS
                : wait_ns * 2 > PROGRESS_MAX_NS ? PROGRESS_MAX_NS : wait_ns * 2;
        pthread_mutex_unlock(&rt->lk);
        nanosleep(&(struct timespec){ 0, wait_ns }, NULL);
        pthread_mutex_lock(&rt->lk);
    }
    pthread_mutex_unlock(&rt->lk);
    return NULL;
}

/* A request joins the lists the progress thread watches: call with lk held. */
static void progress_wake(Runtime *rt)
{
    if (rt->prog_on) pthread_cond_signal(&rt->cv);
}

void rt_default_hyper(OptimHyper *h)
{
    *h = (OptimHyper){ .lr = 1e-3f, .momentum = 0.9f, .beta1 = 0.9f, .beta2 = 0.999f,
                       .eps = 1e-8f, .weight_decay = 0.0f };
}

/* ----------------------------------------------------------------------------
 * Geometry of values */

/* Local extents and global offsets (within the micro-batch) of a value that
 * is not a flat shard. Returns the element count. */
static int64_t value_geom(const Runtime *rt, const Layout *l, int t, int64_t *ext, int64_t *off)
{
    const Tensor *T = &rt->g->tensors[t];
    int64_t n = 1;
    for (int d = 0; d < T->ndim; d++) {
        int64_t e = T->shape[d];
        if (d == T->batch_dim) e /= rt->s->microbatches;
        AxisMask m = l->dim[d];
        int G = rt->gsize[m];
        ext[d] = e / G;
        off[d] = (int64_t)ir_group_index(rt->s, rt->coord, m) * ext[d];
        n *= ext[d];
    }
    return n;
}

static int64_t value_numel(const Runtime *rt, int32_t v)
{
    const Value *V = &rt->pr->values[v];
    int64_t ext[IR_MAX_DIMS], off[IR_MAX_DIMS];
    int64_t n = value_geom(rt, &V->layout, V->tensor, ext, off);
    if (V->shard) {
        int D = rt->gsize[V->shard];
        n = (n + D - 1) / D;
    }
    return n;
}

/* n floats of zeroed device memory (int8 codes and halves round up). */
static size_t mem_slot(const Runtime *rt, const void *p)
{
    uintptr_t h = (uintptr_t)p >> 4;
    h ^= h >> 17;
    h *= 0xed5ad4bbu;
    return (size_t)(h & (uintptr_t)(rt->mem_cap - 1));
}

static void mem_insert(Runtime *rt, void *p, int64_t bytes)
{
    if (2 * (rt->mem_n + 1) > rt->mem_cap) {
        void **op = rt->mem_ptr;
        int64_t *ob = rt->mem_bytes;
        int oc = rt->mem_cap;
        rt->mem_cap = oc ? 2 * oc : 1024;
        rt->mem_ptr = xcalloc(rt->mem_cap, sizeof *rt->mem_ptr);
        rt->mem_bytes = xmalloc(sizeof *rt->mem_bytes * rt->mem_cap);
        rt->mem_n = 0;
        /* moved, not allocated again: the live and high-water figures stay */
        int64_t live = rt->mem_live, high = rt->mem_high;
        for (int i = 0; i < oc; i++)
            if (op[i]) mem_insert(rt, op[i], ob[i]);
        rt->mem_live = live;
        rt->mem_high = high;
        free(op);
        free(ob);
    }
    size_t i = mem_slot(rt, p);
    while (rt->mem_ptr[i]) i = (i + 1) & (size_t)(rt->mem_cap - 1);
    rt->mem_ptr[i] = p;
    rt->mem_bytes[i] = bytes;
    rt->mem_n++;
    rt->mem_live += bytes;
    if (rt->mem_live > rt->mem_high) rt->mem_high = rt->mem_live;
}

/* Forgets p (linear probing: the entries after it move up into the gap);
 * returns the bytes it was allocated with, -1 if it is not known. */
static int64_t mem_remove(Runtime *rt, const void *p)
{
    if (!p || !rt->mem_cap) return -1;
    size_t m = (size_t)rt->mem_cap - 1, i = mem_slot(rt, p);
    while (rt->mem_ptr[i] && rt->mem_ptr[i] != p) i = (i + 1) & m;
    if (!rt->mem_ptr[i]) return -1;
    int64_t bytes = rt->mem_bytes[i];
    rt->mem_live -= bytes;
    rt->mem_ptr[i] = NULL;
    rt->mem_n--;
    for (size_t j = (i + 1) & m; rt->mem_ptr[j]; j = (j + 1) & m) {
        void *q = rt->mem_ptr[j];
        int64_t b = rt->mem_bytes[j];
        rt->mem_ptr[j] = NULL;
        size_t k = mem_slot(rt, q);
        while (rt->mem_ptr[k]) k = (k + 1) & m;
        rt->mem_ptr[k] = q;
        rt->mem_bytes[k] = b;
    }
    return bytes;
}

/* n floats from the pool, counted as live; zeroed when asked. */
static float *pool_floats(Runtime *rt, int64_t n, bool zeroed, Err *err)
{
    size_t bytes = sizeof(float) * (size_t)(n > 0 ? n : 1);
    float *p = pool_alloc(rt->pool, bytes, zeroed, err);
    if (p) mem_insert(rt, p, (int64_t)bytes);
    return p;
}

static float *dalloc(Runtime *rt, int64_t n, Err *err)
{
    return pool_floats(rt, n, true, err);
}

/* A buffer the caller overwrites whole before reading it: not zeroed. */
static float *dscratch(Runtime *rt, int64_t n, Err *err)
{
    return pool_floats(rt, n, false, err);
}

static void drelease(Runtime *rt, void *p)
{
    int64_t bytes = mem_remove(rt, p);
    if (bytes >= 0) pool_release(rt->pool, p, (size_t)bytes);
}

/* Does value V live for the whole run: a param, or a gradient the step
 * accumulates (not one a ZeRO-2/3 pass makes and frees)? */
static bool step_long(const Value *V)
{
    return (V->kind == VAL_PARAM || V->kind == VAL_PARAM_GRAD) && V->micro < 0;
}

/* The buffer of value v, zeroed when first asked for; NULL with err. */
static float *val(Runtime *rt, int32_t v, Err *err)
{
    if (!rt->buf[v]) rt->buf[v] = dalloc(rt, rt->numel[v], err);
    if (!rt->buf[v]) err_prefix(err, "value %d (%s)", v, rt->g->tensors[rt->pr->values[v].tensor].name);
    return rt->buf[v];
}

/* The device's queued work done: before the communication backend reads or
 * writes its buffers. */
static int dev_sync(Runtime *rt, Err *err)
{
    double a = now_s();
    int rc = rt->dev->ops->sync(rt->dev, err);
    rt->synced_s += now_s() - a;
    return rc;
}

/* Operand k of op i from value v: the value itself when it holds exactly the
 * block the op needs, else the op's block sliced out of it into *scratch. */
static const float *operand(Runtime *rt, int i, int k, int32_t v, float **scratch, Err *err,
                            int *rc)
{
    const Op *op = &rt->g->ops[i];
    const Value *V = &rt->pr->values[v];
    Layout need = ir_operand_layout(rt->g, rt->s, i, k);
    need.partial = 0;
    int t = V->tensor, nd = rt->g->tensors[t].ndim;
    bool same = true;
    for (int d = 0; d < nd; d++) same &= V->layout.dim[d] == need.dim[d];
    const float *whole = val(rt, v, err);
    if (!whole) {
        *rc = -1;
        return NULL;
    }
    if (same || V->shard) return whole;
    int64_t ve[IR_MAX_DIMS], vo[IR_MAX_DIMS], ne[IR_MAX_DIMS], no[IR_MAX_DIMS], rel[IR_MAX_DIMS];
    value_geom(rt, &V->layout, t, ve, vo);
    int64_t n = value_geom(rt, &need, t, ne, no);
    for (int d = 0; d < nd; d++) {
        rel[d] = no[d] - vo[d];
        if (rel[d] < 0 || rel[d] + ne[d] > ve[d]) {
            *rc = err_set(err, "op %s: operand %d (%s) is not held where the op needs it",
                          op->name, k, rt->g->tensors[t].name);
            return NULL;
        }
    }
    int64_t zero[IR_MAX_DIMS] = {0};
    if (!(*scratch = dalloc(rt, n, err)) ||
        rt->dev->ops->block_copy(rt->dev, *scratch, ne, zero, whole, ve, rel, ne, nd, err)) {
        *rc = -1;
        return NULL;
    }
    return *scratch;
}

/* ----------------------------------------------------------------------------
 * Statistics of split reductions */

typedef struct {
    Runtime *rt;
    CommGroup *grp;
} StatCtx;

static int stat_sum(void *ctx, float *b, int64_t n, Err *err)
{
    StatCtx *c = ctx;
    if (dev_sync(c->rt, err)) return -1;
    return c->rt->comm->ops->allreduce(c->grp, b, n, CT_F32, RED_SUM, err);
}

static int stat_max(void *ctx, float *b, int64_t n, Err *err)
{
    StatCtx *c = ctx;
    if (dev_sync(c->rt, err)) return -1;
    return c->rt->comm->ops->allreduce(c->grp, b, n, CT_F32, RED_MAX, err);
}

/* ----------------------------------------------------------------------------
 * Compute */

static void kernel_shape(Runtime *rt, const Instr *in, KernelShape *ks)
{
    const Op *op = &rt->g->ops[in->op];
    const OpPolicy *pol = &rt->s->ops[in->op];
    memset(ks, 0, sizeof *ks);
    ks->op = op;
    for (int l = 0; l < IR_LETTERS; l++) {
        if (!op->size[l]) continue;
        ks->size[l] = rt->p->local[in->op][l];
        ks->total[l] = op->size[l];
        /* an op sees one micro-batch: batch statistics (batch norm) are over
         * it; only the loss is a mean over the whole batch, summed over
         * micro-batches */
        if (l == op->batch_letter && !op_kind_is_loss(op->kind))
            ks->total[l] = op->size[l] / rt->s->microbatches;
        AxisMask m = pol->split[l] & rt->live;
        ks->off[l] = (int64_t)ir_group_index(rt->s, rt->coord, m) * ks->size[l];
    }
    if (op->kind == OP_CONV2D || op->kind == OP_POOL2D) {
        const Tensor *x = &rt->g->tensors[op->in[0]];
        ks->in_hw[0] = x->shape[2];
        ks->in_hw[1] = x->shape[3];
    }
    /* sufficient factors: the weight gradient is rebuilt from the factors of
     * the whole data group, so the batch letter spans it */
    if (in->phase == PH_BWD_WEIGHT && op->batch_letter >= 0) {
        for (int k = 0; k < op->nin; k++) {
            int t = op->in[k];
            const ParamPolicy *pp = &rt->s->params[t];
            if (rt->g->tensors[t].role != ROLE_PARAM || pp->method != SYNC_SFB) continue;
            AxisMask ax = pol->split[op->batch_letter] & rt->live;
            ks->size[op->batch_letter] *= rt->gsize[ax];
            ks->off[op->batch_letter] = 0;
        }
    }
}

static int exec_op(Runtime *rt, const Instr *in, Err *err)
{
    const Op *op = &rt->g->ops[in->op];
    const int32_t *a = &rt->pr->args[in->arg0];
    int nin = op->nin, rc = 0;
    KernelShape ks;
    kernel_shape(rt, in, &ks);
    StatCtx sc = { rt, NULL };
    KernelStats stats = { stat_sum, stat_max, &sc };
    AxisMask sax = 0;
    for (int l = 0; l < IR_LETTERS; l++)
        if (op->reduce_mask & (1u << l)) sax |= rt->s->ops[in->op].split[l] & rt->live;
    if (sax) {
        sc.grp = rt->groups[sax];
        ks.stats = &stats;
    }

    const void *ins[IR_MAX_INPUTS];
    float *scratch[IR_MAX_INPUTS + 1] = {0};
    Device *dv = rt->dev;
    bool sfb = in->phase == PH_BWD_WEIGHT && ks.size[op->batch_letter >= 0 ? op->batch_letter : 0] !=
                                                 rt->p->local[in->op][op->batch_letter >= 0 ? op->batch_letter : 0];
    int base = in->phase == PH_FWD ? 1 : 2;
    for (int k = 0; k < nin; k++) {
        int32_t v = a[base + k];
        if (v < 0) {
            rc = err_set(err, "op %s: operand %d has no value", op->name, k);
            goto out;
        }
        ins[k] = sfb ? val(rt, v, err) : operand(rt, in->op, k, v, &scratch[k], err, &rc);
        if (!ins[k]) {
            rc = -1;
            goto out;
        }
    }
    if (in->phase == PH_FWD) {
        float *out = val(rt, a[0], err);
        rc = out ? dv->ops->zero(dv, out, sizeof(float) * (size_t)rt->numel[a[0]], err) : -1;
        if (!rc) rc = dv->ops->forward(dv, &ks, ins, out, err);
        if (!rc && in->op == rt->loss_op && !in->recompute) {
            float l = 0;
            rc = dv->ops->download(dv, &l, out, sizeof l, err);
            rt->loss_acc += l;
        }
    } else {
        const float *dout = rt->one, *fout = val(rt, a[1], err);
        if (a[0] >= 0)
            dout = sfb ? val(rt, a[0], err) : operand(rt, in->op, nin, a[0], &scratch[nin], err, &rc);
        if (!dout || !fout) {
            rc = -1;
            goto out;
        }
        float *din[IR_MAX_INPUTS];
        for (int k = 0; k < nin; k++) {
            int32_t v = a[2 + nin + k];
            din[k] = NULL;
            if (v >= 0 && !(din[k] = val(rt, v, err))) {
                rc = -1;
                goto out;
            }
            for (int e = 0; e < k; e++)      /* one buffer for an operand read twice */
                if (din[e] == din[k]) din[k] = NULL;
        }
        rc = dv->ops->backward(dv, &ks, ins, fout, dout, din, err);
    }
out:
    for (int k = 0; k <= nin; k++) drelease(rt, scratch[k]);
    if (rc) err_prefix(err, "op %s (%s)", op->name, phase_name((Phase)in->phase));
    return rc;
}

/* dst = sum of srcs (gradient contributions in one layout). */
static int exec_sum(Runtime *rt, const Instr *in, Err *err)
{
    Device *dv = rt->dev;
    const int32_t *a = &rt->pr->args[in->arg0];
    float *dst = val(rt, a[0], err);
    int64_t n = rt->numel[a[0]];
    if (!dst || dv->ops->zero(dv, dst, sizeof(float) * (size_t)n, err)) return -1;
    for (int k = 1; k < in->nargs; k++) {
        const float *src = val(rt, a[k], err);
        if (!src || dv->ops->axpy(dv, dst, src, 1.0f, n, err)) return -1;
    }
    return 0;
}

/* Flat part k of n parts of `elems` elements: [lo, lo + len). */
static void part_range(int64_t elems, int k, int n, int64_t *lo, int64_t *len)
{
    int64_t q = elems / n, r = elems % n;
    *lo = k * q + (k < r ? k : r);
    *len = q + (k < r ? 1 : 0);
}

/* What an update (args [param, grad, pushed...]) steps: param elements
 * [wlo, wlo + len) from gradient elements at glo; optimizer state as long as
 * what this rank steps (ZeRO-1/2: its shard, as the lowering's memory
 * accounts for; a PS server: the whole param), the step's at offset so. */
typedef struct {
    int64_t wlo, glo, len, nstate, so;
} UpdateSpan;

static UpdateSpan update_span(const Runtime *rt, const Instr *in)
{
    const int32_t *a = &rt->pr->args[in->arg0];
    const Value *P = &rt->pr->values[a[0]], *Gv = &rt->pr->values[a[1]];
    int64_t np = rt->numel[a[0]];
    UpdateSpan u = { 0, 0, np, np, -1 };
    if (in->nparts > 0) {
        part_range(np, in->part, in->nparts, &u.wlo, &u.len);
        u.glo = u.wlo;
    } else if (Gv->shard && !P->shard) {
        /* ZeRO-1/2: the full param, this rank's shard of the gradient */
        int64_t chunk = rt->numel[a[1]];
        int idx = ir_group_index(rt->s, rt->coord, Gv->shard);
        u.wlo = (int64_t)idx * chunk;
        u.len = u.wlo >= np ? 0 : (u.wlo + chunk > np ? np - u.wlo : chunk);
        u.nstate = chunk;
        u.so = 0;
    }
    if (u.so < 0) u.so = u.wlo;
    return u;
}

/* The optimizer state of the update's tensor, made when first needed. */
static int update_state(Runtime *rt, const Instr *in, const UpdateSpan *u, Err *err)
{
    int t = rt->pr->values[rt->pr->args[in->arg0]].tensor;
    if (!rt->opt_a[t] && !(rt->opt_a[t] = dalloc(rt, u->nstate, err))) return -1;
    if (!rt->opt_b[t] && rt->s->optimizer == OPT_ADAM && !(rt->opt_b[t] = dalloc(rt, u->nstate, err)))
        return -1;
    return 0;
}

/* Optimizer step: a PS server first adds the pushed parts; ZeRO steps only
 * this rank's shard. */
static int exec_update(Runtime *rt, const Instr *in, Err *err)
{
    Device *dv = rt->dev;
    const int32_t *a = &rt->pr->args[in->arg0];
    int t = rt->pr->values[a[0]].tensor;
    float *w = val(rt, a[0], err), *gr = val(rt, a[1], err);
    if (!w || !gr) return -1;
    UpdateSpan u = update_span(rt, in);
    if (in->nparts > 0)
        for (int k = 2; k < in->nargs; k++) {
            const float *push = val(rt, a[k], err);
            if (!push || dv->ops->axpy(dv, gr + u.glo, push + u.glo, 1.0f, u.len, err)) return -1;
        }
    if (update_state(rt, in, &u, err)) return -1;
    if (rt->s->optimizer == OPT_ADAM)
        return dv->ops->adam(dv, w + u.wlo, gr + u.glo, rt->opt_a[t] + u.so, rt->opt_b[t] + u.so,
                             u.len, rt->step + 1, &rt->cfg.hyper, err);
    return dv->ops->sgd(dv, w + u.wlo, gr + u.glo, rt->opt_a[t] + u.so, u.len, &rt->cfg.hyper, err);
}

/* Before the first step, what every step needs: the buffers that live for
 * the whole run (gradients, optimizer state) made, and the program's
 * allocations walked once, in order, through the pool, so that the first
 * step finds its buffers cached as every later one does. The page faults
 * and the zeroing of fresh memory happen here, not in step 0. */
static int warm_up(Runtime *rt, Err *err)
{
    const Program *pr = rt->pr;
    int rc = 0;
    for (int v = 0; v < pr->nvalues && !rc; v++)
        if (step_long(&pr->values[v]) && pr->values[v].kind == VAL_PARAM_GRAD && !val(rt, v, err))
            rc = -1;
    /* the state first: made after the walk, it would push the walk's cached
     * blocks out of the pool's bound */
    for (int i = 0; i < pr->ninstrs && !rc; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == I_COMPUTE && in->op < 0 && in->phase == PH_UPDATE) {
            UpdateSpan u = update_span(rt, in);
            rc = update_state(rt, in, &u, err);
        }
    }
    float **tmp = xcalloc((size_t)pr->nvalues, sizeof *tmp);
    for (int i = 0; i < pr->ninstrs && !rc; i++) {
        const Instr *in = &pr->instrs[i];
        if (in->kind == I_COMPUTE && in->op < 0 && in->phase == PH_UPDATE) continue;
        /* every value an instruction touches is made when first touched
         * (val), an alloc's or not, and goes back at its free */
        for (int k = 0; k < in->nargs && !rc; k++) {
            int32_t v = pr->args[in->arg0 + k];
            if (v < 0 || rt->buf[v]) continue;
            if (in->kind != I_FREE && !tmp[v] && !(tmp[v] = dscratch(rt, rt->numel[v], err)))
                rc = -1;
            if (in->kind == I_FREE && tmp[v]) {
                drelease(rt, tmp[v]);
                tmp[v] = NULL;
            }
        }
    }
    for (int v = 0; v < pr->nvalues; v++) drelease(rt, tmp[v]);
    free(tmp);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Communication */

static CommGroup *group_of(Runtime *rt, const Instr *in, Err *err)
{
    CommGroup *gr = in->why == WHY_TIED ? rt->tied : rt->groups[in->axes & rt->live];
    if (!gr) err_set(err, "no group for axes %d (why %d)", in->axes, in->why);
    return gr;
}

/* The gradient all-reduces of a step, started in program order and
 * waited for together, once before the first step on the zeroed gradients
 * (a sum of zeros changes nothing): the communication library's first-use
 * costs (its temporary buffers growing the heap, its schedules) are paid
 * here rather than in step 0, as the pool's are in warm_up. */
static int warm_collectives(Runtime *rt, Err *err)
{
    const Program *pr = rt->pr;
    if (rt->comm->world < 2 || !rt->comm->ops) return 0;
    if (dev_sync(rt, err)) return -1;            /* the zeroed gradients, once */
    CommReq **reqs = xcalloc((size_t)pr->ninstrs + 1, sizeof *reqs);
    int n = 0, rc = 0;
    for (int i = 0; i < pr->ninstrs && !rc; i++) {
        const Instr *in = &pr->instrs[i];
        /* the all-reduces exec_coll starts behind the step */
        if (in->kind != I_ALLREDUCE || !in->behind) continue;
        int32_t v = pr->args[in->arg0];
        if (pr->values[v].kind != VAL_PARAM_GRAD || !rt->buf[v]) continue;
        CommGroup *gr = group_of(rt, in, err);
        if (!gr || rt->comm->ops->iallreduce(gr, rt->buf[v], rt->numel[v], CT_F32, RED_SUM,
                                             &reqs[n++], err))
            rc = -1;
    }
    for (int k = 0; k < n; k++)
        if (rt->comm->ops->wait(reqs[k], rc ? NULL : err)) rc = -1;
    free(reqs);
    return rc;
}

/* PowerSGD (Vogels et al., 2019), rank r, with error feedback, in the two
 * all-reduces the lowering emits: P = M Q summed and orthonormalised, then
 * Q = M^T P summed; the gradient becomes P Q^T (a sum over the group, as an
 * uncompressed all-reduce's is). M is the local gradient plus the error. */
static int powersgd(Runtime *rt, CommGroup *gr, float *b, int64_t n, int t, int64_t rows, Err *err)
{
    const CommOps *o = rt->comm->ops;
    Device *dv = rt->dev;
    int r = rt->s->params[t].powersgd_rank;
    int64_t cols = n / rows;
    if (r > rows) r = (int)rows;
    if (r > cols) r = (int)cols;
    if (!rt->psgd_q[t]) {
        int64_t shape[2] = { cols, r }, zero[2] = { 0, 0 };
        char name[300];
        snprintf(name, sizeof name, "%s.powersgd_q", rt->g->tensors[t].name);
        /* all four or none: a later call takes a set Q for the lot */
        float *q = dalloc(rt, cols * r, err), *p = q ? dalloc(rt, rows * r, err) : NULL;
        float *m = p ? dalloc(rt, n, err) : NULL, *ef = m ? dalloc(rt, n, err) : NULL;
        if (!ef || dv->ops->init_fill(dv, q, rt->cfg.seed, name, 2, shape, zero, shape, 1.0f, err)) {
            drelease(rt, q);
            drelease(rt, p);
            drelease(rt, m);
            drelease(rt, ef);
            return -1;
        }
        rt->psgd_q[t] = q;
        rt->psgd_p[t] = p;
        rt->psgd_m[t] = m;
        rt->ef[t] = ef;
    }
    float *Q = rt->psgd_q[t], *P = rt->psgd_p[t], *M = rt->psgd_m[t], *e = rt->ef[t];
    int R = (int)rows, C = (int)cols;
    if (rt->psgd_phase[t] == 0) {
        /* M = b + e; P = M Q */
        if (dv->ops->copy(dv, M, b, sizeof(float) * (size_t)n, err) ||
            dv->ops->axpy(dv, M, e, 1.0f, n, err) ||
            dv->ops->sgemm(dv, false, false, R, r, C, 1.0f, M, C, Q, r, 0.0f, P, r, err) ||
            dev_sync(rt, err) || o->allreduce(gr, P, rows * r, CT_F32, RED_SUM, err) ||
            dv->ops->orthonormalize(dv, P, rows, r, err))
            return -1;
        rt->psgd_phase[t] = 1;
        return 0;
    }
    rt->psgd_phase[t] = 0;
    /* local Q = M^T P; the error is what P Q^T leaves of M */
    if (dv->ops->sgemm(dv, true, false, C, r, R, 1.0f, M, C, P, r, 0.0f, Q, r, err) ||
        dv->ops->copy(dv, e, M, sizeof(float) * (size_t)n, err) ||
        dv->ops->sgemm(dv, false, true, R, C, r, -1.0f, P, r, Q, r, 1.0f, e, C, err) ||
        dev_sync(rt, err) || o->allreduce(gr, Q, cols * r, CT_F32, RED_SUM, err))
        return -1;
    return dv->ops->sgemm(dv, false, true, R, C, r, 1.0f, P, r, Q, r, 0.0f, b, C, err);
}

/* int8 codes do not add up: every member's codes and scale are gathered,
 * decoded and summed here. */
static int allreduce_int8(Runtime *rt, CommGroup *gr, float *b, int64_t n, int t, Err *err)
{
    const CommOps *o = rt->comm->ops;
    Device *dv = rt->dev;
    int G = 1;
    for (int m = 0; m < (1 << rt->s->naxes); m++)
        if (rt->groups[m] == gr) G = rt->gsize[m];
    if (!rt->ef[t] && !(rt->ef[t] = dalloc(rt, n, err))) return -1;
    int64_t qf = (n + 3) / 4;                /* floats that hold n int8 codes */
    int8_t *q = (int8_t *)dalloc(rt, qf, err), *all = (int8_t *)dalloc(rt, qf * G, err);
    float *scale = dalloc(rt, 1, err), *scales = dalloc(rt, G, err), *tmp = dalloc(rt, n, err);
    int rc = -1;
    if (!q || !all || !scale || !scales || !tmp) goto out;
    if (dv->ops->int8_encode(dv, b, rt->ef[t], q, scale, n, err) || dev_sync(rt, err) ||
        o->allgather(gr, q, all, n, CT_BYTE, err) || o->allgather(gr, scale, scales, 1, CT_F32, err) ||
        dv->ops->zero(dv, b, sizeof(float) * (size_t)n, err))
        goto out;
    for (int j = 0; j < G; j++)
        if (dv->ops->int8_decode(dv, all + (int64_t)j * n, scales + j, tmp, n, err) ||
            dv->ops->axpy(dv, b, tmp, 1.0f, n, err))
            goto out;
    rc = 0;
out:
    drelease(rt, q);
    drelease(rt, all);
    drelease(rt, scale);
    drelease(rt, scales);
    drelease(rt, tmp);
    return rc;
}

static int allreduce_sum(Runtime *rt, CommGroup *gr, float *b, int64_t n, Compress c, int t,
                         int64_t rows, Err *err)
{
    const CommOps *o = rt->comm->ops;
    Device *dv = rt->dev;
    if (c == COMPRESS_POWERSGD) return powersgd(rt, gr, b, n, t, rows, err);
    if (c == COMPRESS_INT8) return allreduce_int8(rt, gr, b, n, t, err);
    if (c == COMPRESS_FP16) {
        uint16_t *h = (uint16_t *)dalloc(rt, (n + 1) / 2, err);
        int rc = !h || dv->ops->to_fp16(dv, b, h, n, err) || dev_sync(rt, err) ||
                 o->allreduce(gr, h, n, CT_F16, RED_SUM, err) ||
                 dv->ops->from_fp16(dv, h, b, n, err) ? -1 : 0;
        drelease(rt, h);
        return rc;
    }
    if (dev_sync(rt, err)) return -1;
    return o->allreduce(gr, b, n, CT_F32, RED_SUM, err);
}

/* Completes what the backend finished of collective f and lets go of its
 * buffers. */
static int fly_finish(Runtime *rt, const Inflight *f, Err *err)
{
    Device *dv = rt->dev;
    int rc = 0;
    if (f->finish == FIN_ADD) rc = dv->ops->axpy(dv, f->dst, f->recv, 1.0f, f->n, err);
    if (f->finish == FIN_COPY) rc = dv->ops->copy(dv, f->dst, f->recv, sizeof(float) * (size_t)f->n, err);
    if (!rc && f->zero) rc = dv->ops->zero(dv, f->zero, sizeof(float) * (size_t)f->nzero, err);
    drelease(rt, f->send);
    drelease(rt, f->recv);
    drelease(rt, f->owned);
    return rc;
}

/* A collective started with request req joins the ones in flight (req NULL:
 * it is complete, and finishes now). The instruction's deps name it: the
 * first instruction that needs its result, or touches f.busy, waits. */
static int fly(Runtime *rt, const Instr *in, CommReq *req, Inflight f, Err *err)
{
    if (!req) return fly_finish(rt, &f, err);
    f.instr = (int32_t)(in - rt->pr->instrs);
    f.req = req;
    f.done = false;
    pthread_mutex_lock(&rt->lk);
    if (rt->nfly == rt->cap_fly) {
        rt->cap_fly = rt->cap_fly ? rt->cap_fly * 2 : 64;
        rt->fly = xrealloc(rt->fly, sizeof *rt->fly * rt->cap_fly);
    }
    rt->fly[rt->nfly++] = f;
    progress_wake(rt);
    pthread_mutex_unlock(&rt->lk);
    return 0;
}

/* The dim of the layouts where `axes` split one and not the other. */
static int moved_dim(const Layout *with, const Layout *without, AxisMask axes, int nd)
{
    for (int d = 0; d < nd; d++)
        if ((with->dim[d] & axes) && !(without->dim[d] & axes)) return d;
    return -1;
}

/* The collectives take the source value (a[1]) to the destination (a[0]):
 * every branch works in device buffers and waits for the device's queued
 * work (dev_sync) before the backend sees them. */
static int exec_coll(Runtime *rt, const Instr *in, Err *err)
{
    if (in->why == WHY_STATS) return 0;          /* done inside the op's kernel */
    const CommOps *o = rt->comm->ops;
    Device *dv = rt->dev;
    const int32_t *a = &rt->pr->args[in->arg0];
    int32_t dvl = a[0], sv = a[1];
    const Value *D = &rt->pr->values[dvl], *S = &rt->pr->values[sv];
    int t = S->tensor, nd = rt->g->tensors[t].ndim;
    CommGroup *gr = group_of(rt, in, err);
    if (!gr) return -1;
    AxisMask ax = in->why == WHY_TIED ? 0 : in->axes & rt->live;
    int G = in->why == WHY_TIED ? 0 : rt->gsize[ax];
    float *src = val(rt, sv, err), *dst = src ? val(rt, dvl, err) : NULL;
    if (!src || !dst) return -1;
    int64_t ns = rt->numel[sv];
    size_t fb = sizeof(float);

    if (in->kind == I_ALLREDUCE && in->behind) {
        /* a gradient sync runs behind the rest of the backward: started here,
         * waited for by the first instruction that depends on it */
        CommReq *req = NULL;
        if (dev_sync(rt, err) || o->iallreduce(gr, src, ns, CT_F32, RED_SUM, &req, err)) return -1;
        return fly(rt, in, req, (Inflight){ .busy = { dvl, -1 }, .finish = FIN_NONE }, err);
    }
    if (in->kind == I_ALLREDUCE) {
        if (dv->ops->copy(dv, dst, src, fb * (size_t)ns, err)) return -1;
        int64_t ext[IR_MAX_DIMS], off[IR_MAX_DIMS];
        value_geom(rt, &S->layout, t, ext, off);
        return allreduce_sum(rt, gr, dst, ns, (Compress)in->compress, t, nd ? ext[0] : 1, err);
    }

    int rc = -1;
    float *send = NULL, *recv = NULL;
    if (in->kind == I_REDUCE_SCATTER && in->behind) {
        /* ZeRO: the flat gradient, padded to G parts, summed part-wise into
         * this rank's shard; the whole gradient restarts from zero. Unpadded,
         * the gradient itself is sent, and zeroed once the backend is done
         * with it (instructions touching it wait till then). */
        int64_t chunk = rt->numel[dvl];
        bool padded = chunk * G != ns;
        CommReq *req = NULL;
        if (!(recv = dscratch(rt, chunk, err))) goto out;
        if (padded && (!(send = dalloc(rt, chunk * G, err)) ||
                       dv->ops->copy(dv, send, src, fb * (size_t)ns, err) ||
                       dv->ops->zero(dv, src, fb * (size_t)ns, err)))
            goto out;
        if (dev_sync(rt, err) ||
            o->ireduce_scatter(gr, padded ? send : src, recv, chunk, CT_F32, &req, err))
            goto out;
        return fly(rt, in, req, (Inflight){ .busy = { dvl, padded ? -1 : sv }, .finish = FIN_ADD,
                                            .send = send, .recv = recv, .dst = dst, .n = chunk,
                                            .zero = padded ? NULL : src, .nzero = ns }, err);
    }
    if (in->kind == I_ALLGATHER && in->behind) {
        /* ZeRO: flat shards of the param gathered into the whole: straight
         * into it when the shards tile it exactly, else through a padded
         * buffer */
        int64_t n = dvl == sv ? ns : rt->numel[dvl];
        AxisMask sh = S->shard ? S->shard : ax;
        int Gs = rt->gsize[sh];
        int64_t chunk = (n + Gs - 1) / Gs;
        int idx = ir_group_index(rt->s, rt->coord, sh);
        int64_t lo = (int64_t)idx * chunk, len = lo >= n ? 0 : (lo + chunk > n ? n - lo : chunk);
        bool padded = chunk * Gs != n;
        CommReq *req = NULL;
        if (!(send = dalloc(rt, chunk, err)) || (padded && !(recv = dscratch(rt, chunk * Gs, err))) ||
            dv->ops->copy(dv, send, S->shard ? src : src + lo,
                          fb * (size_t)(S->shard ? chunk : len), err) ||
            dev_sync(rt, err) ||
            o->iallgather(rt->groups[sh], send, padded ? recv : dst, chunk, CT_F32, &req, err))
            goto out;
        return fly(rt, in, req, (Inflight){ .busy = { dvl, -1 }, .finish = padded ? FIN_COPY : FIN_NONE,
                                            .send = send, .recv = recv, .dst = dst, .n = n }, err);
    }

    int64_t se[IR_MAX_DIMS], so[IR_MAX_DIMS], de[IR_MAX_DIMS], dof[IR_MAX_DIMS];
    value_geom(rt, &S->layout, t, se, so);
    int64_t nd_ = value_geom(rt, &D->layout, t, de, dof);
    int64_t zero[IR_MAX_DIMS] = {0};

    if (in->kind == I_REDUCE_SCATTER) {
        /* blocks along the scattered dim, one per member, then summed */
        int d = moved_dim(&D->layout, &S->layout, ax, nd);
        if (d < 0) return err_set(err, "reduce_scatter of %s: no dim to scatter", rt->g->tensors[t].name);
        int64_t len[IR_MAX_DIMS], soff[IR_MAX_DIMS] = {0};
        memcpy(len, se, sizeof len);
        len[d] = se[d] / G;
        if (!(send = dalloc(rt, ns, err))) goto out;
        for (int j = 0; j < G; j++) {
            soff[d] = j * len[d];
            if (dv->ops->block_copy(dv, send + (int64_t)j * nd_, len, zero, src, se, soff, len, nd,
                                    err))
                goto out;
        }
        if (dev_sync(rt, err) || o->reduce_scatter(gr, send, dst, nd_, CT_F32, err)) goto out;
        rc = 0;
        goto out;
    }
    if (in->kind == I_ALLGATHER) {
        /* one axis at a time, innermost first, each along the dim it splits;
         * send holds the current block, recv the members' blocks */
        Layout cur = S->layout;
        if (!(send = dalloc(rt, ns, err)) || dv->ops->copy(dv, send, src, fb * (size_t)ns, err))
            goto out;
        for (int x = rt->s->naxes - 1; x >= 0; x--) {
            AxisMask bit = 1 << x;
            if (!(ax & bit)) continue;
            int d = -1;
            for (int e = 0; e < nd; e++)
                if (cur.dim[e] & bit) d = e;
            if (d < 0) continue;
            int64_t ce[IR_MAX_DIMS], co[IR_MAX_DIMS];
            int64_t n = value_geom(rt, &cur, t, ce, co);
            int Gx = rt->gsize[bit];
            float *nb = NULL;
            if (!(recv = dalloc(rt, n * Gx, err)) || dev_sync(rt, err) ||
                o->allgather(rt->groups[bit], send, recv, n, CT_F32, err) ||
                !(nb = dalloc(rt, n * Gx, err)))
                goto out;
            int64_t ne[IR_MAX_DIMS], doff[IR_MAX_DIMS] = {0};
            memcpy(ne, ce, sizeof ne);
            ne[d] *= Gx;
            drelease(rt, send);
            send = nb;
            for (int j = 0; j < Gx; j++) {
                doff[d] = j * ce[d];
                if (dv->ops->block_copy(dv, nb, ne, doff, recv + (int64_t)j * n, ce, zero, ce, nd,
                                        err))
                    goto out;
            }
            drelease(rt, recv);
            recv = NULL;
            cur.dim[d] &= ~bit;
        }
        if (dv->ops->copy(dv, dst, send, fb * (size_t)nd_, err)) goto out;
        rc = 0;
        goto out;
    }
    if (in->kind == I_ALL_TO_ALL) {
        int d1 = moved_dim(&S->layout, &D->layout, ax, nd);   /* split before */
        int d2 = moved_dim(&D->layout, &S->layout, ax, nd);   /* split after */
        if (d1 < 0 || d2 < 0) return err_set(err, "all_to_all of %s: dims not found", rt->g->tensors[t].name);
        int64_t blk = ns / G;
        int64_t len[IR_MAX_DIMS], off[IR_MAX_DIMS] = {0};
        memcpy(len, se, sizeof len);
        len[d2] = se[d2] / G;
        if (!(send = dalloc(rt, ns, err)) || !(recv = dalloc(rt, ns, err))) goto out;
        for (int j = 0; j < G; j++) {
            off[d2] = j * len[d2];
            if (dv->ops->block_copy(dv, send + j * blk, len, zero, src, se, off, len, nd, err))
                goto out;
        }
        if (dev_sync(rt, err) || o->all_to_all(gr, send, recv, blk, CT_F32, err)) goto out;
        int64_t doff[IR_MAX_DIMS] = {0};
        for (int i = 0; i < G; i++) {
            doff[d1] = i * len[d1];
            if (dv->ops->block_copy(dv, dst, de, doff, recv + i * blk, len, zero, len, nd, err))
                goto out;
        }
        rc = 0;
        goto out;
    }
    return err_set(err, "unknown collective %d", in->kind);
out:
    drelease(rt, send);
    drelease(rt, recv);
    return rc;
}

static int tag_of(const Instr *in)
{
    if (in->why == WHY_PS) return (in->tensor % 4096) * 8 + (in->part % 8);
    return (in->tensor % 8192) * 2 + (in->phase == PH_FWD ? 0 : 1);
}

static int exec_p2p(Runtime *rt, const Instr *in, Err *err)
{
    const CommOps *o = rt->comm->ops;
    int32_t v = rt->pr->args[in->arg0];
    CommGroup *gr = rt->groups[in->axes & rt->live];
    if (!gr) return err_set(err, "no group for a %s", instr_kind_name((InstrKind)in->kind));
    int64_t lo = 0, len = rt->numel[v];
    if (in->nparts > 0) part_range(rt->numel[v], in->part, in->nparts, &lo, &len);
    float *b = val(rt, v, err);
    if (!b) return -1;
    b += lo;
    const Value *V = &rt->pr->values[v];
    if (in->kind == I_RECV) {
        /* a stale pull (staleness k) is received k steps later, before the
         * forward that may first use it */
        if (in->why == WHY_PS && V->kind == VAL_PARAM && rt->s->params[V->tensor].staleness > 0 &&
            !rt->draining) {
            if (rt->ndefer == rt->cap_defer) {
                rt->cap_defer = rt->cap_defer ? rt->cap_defer * 2 : 64;
                rt->defer = xrealloc(rt->defer, sizeof *rt->defer * rt->cap_defer);
            }
            rt->defer[rt->ndefer++] = (Deferred){ (int32_t)(in - rt->pr->instrs), rt->step };
            return 0;
        }
        if (dev_sync(rt, err)) return -1;
        return o->recv(gr, b, len, CT_F32, in->peer, tag_of(in), err);
    }
    /* params and their gradients change before a slow receiver takes them:
     * send a copy */
    float *stage = NULL;
    if (instr_sends_copy(rt->pr, in)) {
        if (!(stage = dalloc(rt, len, err)) ||
            rt->dev->ops->copy(rt->dev, stage, b, sizeof(float) * (size_t)len, err)) {
            drelease(rt, stage);
            return -1;
        }
        b = stage;
    }
    CommReq *req = NULL;
    if (dev_sync(rt, err) || o->isend(gr, b, len, CT_F32, in->peer, tag_of(in), &req, err)) {
        drelease(rt, stage);
        return -1;
    }
    pthread_mutex_lock(&rt->lk);
    if (rt->npend == rt->cap_pend) {
        rt->cap_pend = rt->cap_pend ? rt->cap_pend * 2 : 64;
        rt->pend = xrealloc(rt->pend, sizeof *rt->pend * rt->cap_pend);
    }
    rt->pend[rt->npend++] = (Pending){ req, v, stage, NULL, false };
    progress_wake(rt);
    pthread_mutex_unlock(&rt->lk);
    return 0;
}

/* Waits for the sends of every unstaged value (v == -1: the end of a step)
 * or of everything (v == -2). Staged copies may stay in flight across
 * steps: a stale receiver takes them late. */
static int wait_sends(Runtime *rt, int32_t v, Err *err)
{
    int rc = 0, w = 0;
    pthread_mutex_lock(&rt->lk);
    for (int i = 0; i < rt->npend; i++) {
        Pending *q = &rt->pend[i];
        bool now = v == -2 || (v == -1 && !q->stage);
        if (!now) {
            rt->pend[w++] = *q;
            continue;
        }
        if (rt->comm->ops->wait(q->req, err)) rc = -1;
        drelease(rt, q->stage);
        drelease(rt, q->owned);
    }
    rt->npend = w;
    pthread_mutex_unlock(&rt->lk);
    return rc;
}

/* The program frees value v. A buffer still being sent is not waited for
 * (a receiver may be waiting on this rank in turn, as the interleaved
 * schedule's wrap-around has it): the send takes it over and it is
 * released when the last send of it completes, as NCCL and PyTorch keep a
 * buffer alive for a send in flight. Sends already complete let go of
 * theirs on the way. */
static int free_value(Runtime *rt, int32_t v, Err *err)
{
    const CommOps *o = rt->comm->ops;
    int rc = 0, w = 0, last = -1;
    float *b = rt->buf[v];
    bool param = step_long(&rt->pr->values[v]);
    pthread_mutex_lock(&rt->lk);
    for (int i = 0; i < rt->npend; i++) {
        Pending q = rt->pend[i];
        int done = q.done;
        if (!done && o->test(q.req, &done, err)) rc = -1;
        if (done) {
            if (o->wait(q.req, err)) rc = -1;      /* complete: this only lets go of it */
            drelease(rt, q.stage);
            /* the buffer passes to another send of it still in flight */
            int j = i + 1;
            while (q.owned && j < rt->npend && rt->pend[j].val != q.val) j++;
            if (q.owned && j < rt->npend) rt->pend[j].owned = q.owned;
            else drelease(rt, q.owned);
            continue;
        }
        if (q.val == v && !q.stage) last = w;
        rt->pend[w++] = q;
    }
    rt->npend = w;
    if (!param && b && last >= 0) {
        rt->pend[last].owned = b;
        b = NULL;
    }
    pthread_mutex_unlock(&rt->lk);
    if (!param) {
        drelease(rt, b);
        rt->buf[v] = NULL;
    }
    return rc;
}

/* Whether instruction `in` must wait for collective f: it depends on it, or
 * touches a value f reads or writes. */
static bool needs(const Program *pr, const Instr *in, const Inflight *f)
{
    for (int d = 0; d < in->ndeps; d++)
        if (pr->deps[in->dep0 + d] == f->instr) return true;
    for (int x = 0; x < in->nargs; x++) {
        int32_t v = pr->args[in->arg0 + x];
        if (v >= 0 && (v == f->busy[0] || v == f->busy[1])) return true;
    }
    return false;
}

/* Waits for the collectives in flight that instruction i needs (every one:
 * i < 0) and finishes them, in the order they started. */
static int wait_inflight(Runtime *rt, int32_t i, Err *err)
{
    const Program *pr = rt->pr;
    int rc = 0, w = 0;
    pthread_mutex_lock(&rt->lk);
    for (int k = 0; k < rt->nfly; k++) {
        Inflight f = rt->fly[k];
        if (i >= 0 && !needs(pr, &pr->instrs[i], &f)) {
            rt->fly[w++] = f;
            continue;
        }
        if (rt->comm->ops->wait(f.req, rc ? NULL : err)) rc = -1;
        if (fly_finish(rt, &f, rc ? NULL : err)) rc = -1;
    }
    rt->nfly = w;
    pthread_mutex_unlock(&rt->lk);
    return rc;
}

/* Finishes the collectives in flight that the backend is done with, from
 * the first started up to one it is not (the order wait_inflight keeps):
 * what they hold goes back to the pool before the program needs them. */
static int reap_done(Runtime *rt, Err *err)
{
    int rc = 0, k = 0;
    pthread_mutex_lock(&rt->lk);
    while (k < rt->nfly && rt->fly[k].done) {
        if (rt->comm->ops->wait(rt->fly[k].req, rc ? NULL : err)) rc = -1;
        if (fly_finish(rt, &rt->fly[k], rc ? NULL : err)) rc = -1;
        k++;
    }
    memmove(rt->fly, rt->fly + k, sizeof *rt->fly * (size_t)(rt->nfly - k));
    rt->nfly -= k;
    pthread_mutex_unlock(&rt->lk);
    return rc;
}

/* Lets the all-reduces in flight progress (MPI moves them only inside its
 * calls), where no progress thread does it. */
static void progress(Runtime *rt)
{
    bool moved = false;
    if (!rt->prog_on) test_fly(rt, &moved);
}

/* Receives the stale pulls issued at or before step `upto` (all: INT_MAX). */
static int take_pulls(Runtime *rt, int upto, Err *err)
{
    int rc = 0, w = 0;
    rt->draining = true;
    for (int i = 0; i < rt->ndefer; i++) {
        if (rt->defer[i].step > upto || rc) {
            rt->defer[w++] = rt->defer[i];
            continue;
        }
        rc = exec_p2p(rt, &rt->pr->instrs[rt->defer[i].instr], err);
    }
    rt->draining = false;
    rt->ndefer = w;
    return rc;
}

/* ----------------------------------------------------------------------------
 * Data and parameters */

static uint64_t data_seed(const Runtime *rt, int step)
{
    return rt->cfg.seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(step + 1));
}

static int load_data(Runtime *rt, int32_t v, Err *err)
{
    const Value *V = &rt->pr->values[v];
    const Tensor *T = &rt->g->tensors[V->tensor];
    int64_t ext[IR_MAX_DIMS], off[IR_MAX_DIMS];
    value_geom(rt, &V->layout, V->tensor, ext, off);
    if (T->batch_dim >= 0) off[T->batch_dim] += (int64_t)V->micro * (T->shape[T->batch_dim] / rt->s->microbatches);
    float *b = val(rt, v, err);
    if (!b) return -1;
    Device *dv = rt->dev;
    if (rt->data_hi[V->tensor] > 0)
        return dv->ops->init_fill_int(dv, (int32_t *)b, data_seed(rt, rt->step), T->name, T->ndim,
                                      T->shape, off, ext, rt->data_hi[V->tensor], err);
    return dv->ops->init_fill(dv, b, data_seed(rt, rt->step), T->name, T->ndim, T->shape, off, ext,
                              1.0f, err);
}

/* Initial value of param t: norm scales 1, norm shifts 0, the rest uniform
 * with scale 1/sqrt(fan-in) (fan-in: every dim but the last). */
static float param_scale(const Runtime *rt, int t, float *constant)
{
    const Graph *g = rt->g;
    *constant = NAN;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        if (op->kind != OP_LAYERNORM && op->kind != OP_BATCHNORM) continue;
        if (op->nin > 1 && op->in[1] == t) *constant = 1.0f;
        if (op->nin > 2 && op->in[2] == t) *constant = 0.0f;
    }
    const Tensor *T = &g->tensors[t];
    int64_t fan = T->ndim > 1 ? tensor_numel(T) / T->shape[T->ndim - 1] : T->shape[0];
    return 1.0f / sqrtf((float)(fan > 0 ? fan : 1));
}

static int init_param(Runtime *rt, int32_t v, Err *err)
{
    Device *dv = rt->dev;
    const Value *V = &rt->pr->values[v];
    const Tensor *T = &rt->g->tensors[V->tensor];
    int64_t ext[IR_MAX_DIMS], off[IR_MAX_DIMS];
    int64_t n = value_geom(rt, &V->layout, V->tensor, ext, off);
    float c, scale = param_scale(rt, V->tensor, &c);
    float *b = val(rt, v, err), *full = b ? dalloc(rt, n, err) : NULL;
    int rc = -1;
    if (!full) goto out;
    if (!isnan(c) ? dv->ops->fill(dv, full, c, n, err)
                  : dv->ops->init_fill(dv, full, rt->cfg.seed, T->name, T->ndim, T->shape, off,
                                       ext, scale, err))
        goto out;
    int64_t lo = 0, len = n;
    if (V->shard) {
        int64_t chunk = rt->numel[v];
        lo = (int64_t)ir_group_index(rt->s, rt->coord, V->shard) * chunk;
        len = lo >= n ? 0 : (lo + chunk > n ? n - lo : chunk);
    }
    rc = dv->ops->copy(dv, b, full + lo, sizeof(float) * (size_t)len, err);
out:
    drelease(rt, full);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Life cycle */

/* The ranks of this rank's group along mask (ordered by group index). */
static int group_ranks(const Runtime *rt, AxisMask mask, int *ranks, int *me)
{
    const Strategy *s = rt->s;
    int n = 0;
    int c[MESH_MAX_AXES];
    for (int r = 0; r < s->world; r++) {
        strategy_coords(s, r, c);
        bool same = true;
        for (int a = 0; a < s->naxes; a++)
            if (!(mask & (1 << a)) && c[a] != rt->coord[a]) same = false;
        if (!same) continue;
        ranks[ir_group_index(s, c, mask)] = r;
        n++;
    }
    *me = ir_group_index(s, rt->coord, mask);
    return n;
}

/* What the step's code takes from malloc rather than from the pool (kernel
 * scratch, the MPI library's temporary buffers for a collective) stays in
 * the heap once freed, up to 32 MiB a block, so a steady step faults no
 * page in: glibc would otherwise map such blocks afresh each time, or trim
 * the heap that held them. Process-wide, and only ever raised. */
static void keep_heap(void)
{
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

Runtime *rt_new(const Graph *g, const Strategy *s, const Plan *p, Comm *comm,
                const RunConfig *cfg, Err *err)
{
    if (comm->world != s->world) {
        err_set(err, "the strategy needs %d ranks, this run has %d", s->world, comm->world);
        return NULL;
    }
    keep_heap();
    Runtime *rt = xcalloc(1, sizeof *rt);
    pthread_mutex_init(&rt->lk, NULL);
    pthread_cond_init(&rt->cv, NULL);
    rt->g = g;
    rt->s = s;
    rt->p = p;
    rt->comm = comm;
    rt->cfg = *cfg;

    rt->pr = &p->classes[p->rank_class[comm->rank]];
    strategy_coords(s, comm->rank, rt->coord);
    for (int a = 0; a < s->naxes; a++)
        if (s->axis_size[a] > 1) rt->live |= 1 << a;
    for (int m = 0; m < (1 << MESH_MAX_AXES); m++) rt->gsize[m] = strategy_group_size(s, m & ((1 << s->naxes) - 1));

    /* groups: every rank walks the same list in the same order */
    int *ranks = xmalloc(sizeof *ranks * s->world);
    rt->dev = cfg->dev;
    if (!rt->dev) {
        if (!(rt->dev = device_cpu_new(err))) goto fail;
        rt->own_dev = true;
    }
    rt->pool = pool_new(rt->dev);
    for (int m = 1; m < (1 << s->naxes); m++) {
        if ((m & rt->live) != m) continue;
        int me, n = group_ranks(rt, (AxisMask)m, ranks, &me);
        rt->groups[m] = comm->ops->group_new(comm, ranks, n, me, err);
        if (!rt->groups[m]) goto fail;
    }
    /* the stages that share tied params: one set, made last */
    uint64_t tied = 0;
    for (int t = 0; t < g->ntensors; t++) {
        if (g->tensors[t].role != ROLE_PARAM) continue;
        uint64_t st = 0;
        for (int i = 0; i < g->nops; i++)
            for (int k = 0; k < g->ops[i].nin; k++)
                if (g->ops[i].in[k] == t) st |= 1ull << s->op_stage[i];
        if (!(st & (st - 1))) continue;
        if (tied && tied != st) {
            err_set(err, "params tied across different sets of pipeline stages are not supported");
            goto fail;
        }
        tied = st;
    }
    if (tied && s->pp_axis >= 0 && ((tied >> rt->coord[s->pp_axis]) & 1)) {
        int n = 0, me = 0, c[MESH_MAX_AXES];
        memcpy(c, rt->coord, sizeof c);
        for (int st = 0; st < s->nstages; st++) {
            if (!((tied >> st) & 1)) continue;
            c[s->pp_axis] = st;
            if (st == rt->coord[s->pp_axis]) me = n;
            ranks[n++] = strategy_rank(s, c);
        }
        rt->tied = comm->ops->group_new(comm, ranks, n, me, err);
        if (!rt->tied) goto fail;
    }
    free(ranks);
    ranks = NULL;

    int nv = rt->pr->nvalues;
    rt->buf = xcalloc(nv ? nv : 1, sizeof *rt->buf);
    rt->numel = xmalloc(sizeof *rt->numel * (nv ? nv : 1));
    for (int v = 0; v < nv; v++) rt->numel[v] = value_numel(rt, v);
    rt->opt_a = xcalloc(g->ntensors, sizeof *rt->opt_a);
    rt->opt_b = xcalloc(g->ntensors, sizeof *rt->opt_b);
    rt->ef = xcalloc(g->ntensors, sizeof *rt->ef);
    rt->psgd_q = xcalloc(g->ntensors, sizeof *rt->psgd_q);
    rt->psgd_p = xcalloc(g->ntensors, sizeof *rt->psgd_p);
    rt->psgd_m = xcalloc(g->ntensors, sizeof *rt->psgd_m);
    rt->psgd_phase = xcalloc(g->ntensors, 1);
    rt->data_hi = xcalloc(g->ntensors, sizeof *rt->data_hi);
    rt->loss_op = -1;
    for (int t = 0; t < g->ntensors; t++)
        if (g->tensors[t].role == ROLE_PARAM && s->params[t].method == SYNC_PS &&
            s->params[t].staleness > rt->staleness)
            rt->staleness = s->params[t].staleness;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        if (op->kind == OP_EMBEDDING)
            for (int l = 0; l < IR_LETTERS; l++)
                if (op->gather_mask & (1u << l)) rt->data_hi[op->in[0]] = (int32_t)op->size[l];
        /* class labels are ints below the class count; mse's targets are
         * floats, filled like any float data */
        if (op->kind == OP_CROSS_ENTROPY)
            for (int l = 0; l < IR_LETTERS; l++)
                if (op->reduce_mask & (1u << l)) rt->data_hi[op->in[1]] = (int32_t)op->size[l];
        if (op_kind_is_loss(op->kind)) rt->loss_op = i;
    }
    float one = 1.0f;
    if (!(rt->one = dalloc(rt, 1, err)) || rt->dev->ops->upload(rt->dev, rt->one, &one, sizeof one, err))
        goto fail;
    for (int v = 0; v < nv; v++)
        if (rt->pr->values[v].kind == VAL_PARAM && init_param(rt, v, err)) goto fail;
    if (warm_up(rt, err) || warm_collectives(rt, err)) goto fail;
    if (!cfg->no_overlap && comm->world > 1)
        rt->prog_on = pthread_create(&rt->prog, NULL, progress_main, rt) == 0;
    return rt;

fail:
    free(ranks);
    rt_free(rt);
    return NULL;
}

/* Frees value v, a step's own (not a param's), without waiting for the
 * collective in flight that still reads or writes it: that collective
 * takes the buffer and lets go of it when it finishes (a ZeRO-2 gradient
 * freed after its reduce-scatter, which the backward goes on past).
 * Returns false, having done nothing, unless exactly one collective and no
 * send holds v; the program's own free then runs. */
static bool free_later(Runtime *rt, int32_t v)
{
    float *b = rt->buf[v];
    int n = 0, at = -1;
    pthread_mutex_lock(&rt->lk);
    for (int k = 0; k < rt->nfly; k++)
        if (rt->fly[k].busy[0] == v || rt->fly[k].busy[1] == v) n++, at = k;
    for (int k = 0; k < rt->npend && n < 2; k++) n += rt->pend[k].val == v ? 2 : 0;
    bool taken = n == 1 && b && !rt->fly[at].owned;
    if (taken) {
        Inflight *f = &rt->fly[at];
        if (f->zero == b) f->zero = NULL;       /* it goes away: no need to clear it */
        f->busy[f->busy[0] == v ? 0 : 1] = -1;
        f->owned = b;
        rt->buf[v] = NULL;
    }
    pthread_mutex_unlock(&rt->lk);
    return taken;
}

/* Runs instruction i, first waiting for the all-reduces in flight it depends on. */
static int exec_instr(Runtime *rt, int i, StepStat *st, Err *err)
{
    const Program *pr = rt->pr;
    int rc = 0;
    const Instr *in = &pr->instrs[i];
    double a = now_s(), synced = rt->synced_s;
    if (in->kind == I_FREE && rt->nfly && !step_long(&pr->values[pr->args[in->arg0]])) {
        progress(rt);
        if (reap_done(rt, err)) return -1;
        if (free_later(rt, pr->args[in->arg0])) return 0;
    }
    if (rt->nfly) {
        rc = wait_inflight(rt, i, err);
        double waited = now_s() - a;
        st->comm_s += waited;
        rt->times.wait_s += waited;
        a = now_s();
        if (rc) return rc;
    }
    OpTimes *T = &rt->times;
    switch ((InstrKind)in->kind) {
    case I_COMPUTE: {
        if (in->op >= 0) rc = exec_op(rt, in, err);
        else if (in->phase == PH_UPDATE) rc = exec_update(rt, in, err);
        else rc = exec_sum(rt, in, err);
        if (!rc && rt->cfg.profile_ops) rc = dev_sync(rt, err);
        double dt = now_s() - a;
        st->compute_s += dt;
        if (in->op >= 0) {
            int ph = in->recompute ? RECOMPUTE : in->phase;
            T->op_s[rt->g->ops[in->op].kind][ph] += dt;
            T->op_n[rt->g->ops[in->op].kind][ph]++;
        } else if (in->phase == PH_UPDATE) {
            T->update_s += dt;
            T->update_n++;
        } else {
            T->sum_s += dt;
            T->sum_n++;
        }
        if (rt->nfly) progress(rt);
        break;
    }
    case I_ALLREDUCE: case I_ALLGATHER: case I_REDUCE_SCATTER: case I_ALL_TO_ALL:
    case I_BROADCAST: case I_SEND: case I_RECV: {
        bool p2p = in->kind == I_SEND || in->kind == I_RECV;
        rc = p2p ? exec_p2p(rt, in, err) : exec_coll(rt, in, err);
        double dt = now_s() - a;
        st->comm_s += dt;
        T->comm_s[in->kind] += dt;
        T->comm_n[in->kind]++;
        break;
    }
    case I_ALLOC:
        if (!val(rt, pr->args[in->arg0], err)) rc = -1;
        break;
    case I_FREE:
        rc = free_value(rt, pr->args[in->arg0], err);
        st->comm_s += now_s() - a;
        break;
    default:
        rc = err_set(err, "instruction %d: unknown kind %d", i, in->kind);
    }
    /* a communication that first waited for queued kernels (a GPU's) spent
     * that time computing */
    if (in->kind != I_COMPUTE && rt->synced_s > synced) {
        st->comm_s -= rt->synced_s - synced;
        st->compute_s += rt->synced_s - synced;
    }
    if (rc) err_prefix(err, "rank %d, step %d, instruction %d (%s)", rt->comm->rank, rt->step, i,
                       instr_kind_name((InstrKind)in->kind));
    return rc;
}

/* An optimizer update waiting for its gradient's all-reduce does not hold up
 * the instructions after it: it is set aside (the rest of the backward runs,
 * and the all-reduce with it) and runs once the all-reduce is done, before
 * any later instruction that touches its values, or at the end of the step. */
static bool deferrable(Runtime *rt, int i)
{
    const Instr *in = &rt->pr->instrs[i];
    if (rt->cfg.no_overlap || !rt->nfly || in->kind != I_COMPUTE || in->op >= 0 ||
        in->phase != PH_UPDATE)
        return false;
    bool waits = false;
    pthread_mutex_lock(&rt->lk);
    for (int k = 0; k < rt->nfly && !waits; k++)
        waits = !rt->fly[k].done && needs(rt->pr, in, &rt->fly[k]);
    pthread_mutex_unlock(&rt->lk);
    return waits;
}

static bool touches_same(const Program *pr, const Instr *a, const Instr *b)
{
    for (int x = 0; x < a->nargs; x++)
        for (int y = 0; y < b->nargs; y++)
            if (pr->args[a->arg0 + x] >= 0 && pr->args[a->arg0 + x] == pr->args[b->arg0 + y])
                return true;
    return false;
}

/* Runs the set-aside updates that may or must run before instruction i (all
 * of them: i < 0), in their order. */
static int run_later(Runtime *rt, int i, StepStat *st, Err *err)
{
    const Program *pr = rt->pr;
    progress(rt);
    int w = 0, rc = 0;
    for (int k = 0; k < rt->nlater; k++) {
        int j = rt->later[k];
        bool now = rc == 0 && (i < 0 || !deferrable(rt, j) ||
                               touches_same(pr, &pr->instrs[j], &pr->instrs[i]));
        if (now) rc = exec_instr(rt, j, st, err);
        else rt->later[w++] = j;
    }
    rt->nlater = rc ? 0 : w;
    return rc;
}

static int step_body(Runtime *rt, int step, StepStat *st, Err *err);

int rt_step(Runtime *rt, int step, StepStat *st, Err *err)
{
    pthread_mutex_lock(&rt->lk);
    rt->in_step = true;
    progress_wake(rt);
    pthread_mutex_unlock(&rt->lk);
    int rc = step_body(rt, step, st, err);
    /* once this is set under the lock, the thread makes no MPI call until
     * the next step */
    pthread_mutex_lock(&rt->lk);
    rt->in_step = false;
    pthread_mutex_unlock(&rt->lk);
    return rc;
}

static int step_body(Runtime *rt, int step, StepStat *st, Err *err)
{
    const Program *pr = rt->pr;
    rt->step = step;
    rt->loss_acc = 0;
    memset(st, 0, sizeof *st);
    double t0 = now_s();
    PoolStats ps0, ps1;
    pool_stats(rt->pool, &ps0);
    int rc = 0;
    for (int v = 0; v < pr->nvalues && !rc; v++) {
        const Value *V = &pr->values[v];
        if (V->kind == VAL_PARAM_GRAD && step_long(V) && rt->buf[v])
            rc = rt->dev->ops->zero(rt->dev, rt->buf[v], sizeof(float) * (size_t)rt->numel[v], err);
        if (V->kind == VAL_DATA && !rc) rc = load_data(rt, v, err);
    }
    /* pulls a stale worker may no longer skip: issued k+1 or more steps ago */
    if (!rc) rc = take_pulls(rt, step - 1 - rt->staleness, err);
    rt->nlater = 0;
    for (int i = 0; i < pr->ninstrs && !rc; i++) {
        if (rt->nlater) rc = run_later(rt, i, st, err);
        if (rc) break;
        if (deferrable(rt, i)) {
            if (rt->nlater == rt->cap_later) {
                rt->cap_later = rt->cap_later ? rt->cap_later * 2 : 64;
                rt->later = xrealloc(rt->later, sizeof *rt->later * rt->cap_later);
            }
            rt->later[rt->nlater++] = i;
            continue;
        }
        rc = exec_instr(rt, i, st, err);
    }
    if (!rc && rt->nlater) rc = run_later(rt, -1, st, err);
    if (!rc) {
        double a = now_s();
        rc = wait_inflight(rt, -1, err);
        double waited = now_s() - a;
        st->comm_s += waited;
        rt->times.wait_s += waited;
    }
    if (!rc) rc = wait_sends(rt, -1, err);
    if (!rc) {
        double a = now_s();
        rc = dev_sync(rt, err);
        st->compute_s += now_s() - a;
    }

    /* the loss: summed over micro-batches on the ranks holding it, counted
     * once per replica, then over the world */
    double loss = 0;
    if (!rc && rt->loss_op >= 0 && rt->s->op_stage[rt->loss_op] == pr->stage) {
        Layout lo = ir_operand_layout(rt->g, rt->s, rt->loss_op, rt->g->ops[rt->loss_op].nin);
        AxisMask repl = rt->live & ~lo.partial;
        if (rt->s->pp_axis >= 0) repl &= ~(1 << rt->s->pp_axis);
        loss = rt->loss_acc / rt->gsize[repl];
    }
    float lf = (float)loss;
    AxisMask all = rt->live;
    if (!rc && all) {
        /* through a device float: NCCL reduces device memory only */
        float *d = dalloc(rt, 1, err);
        rc = !d || rt->dev->ops->upload(rt->dev, d, &lf, sizeof lf, err) || dev_sync(rt, err) ||
             rt->comm->ops->allreduce(rt->groups[all], d, 1, CT_F32, RED_SUM, err) ||
             rt->dev->ops->download(rt->dev, &lf, d, sizeof lf, err) ? -1 : 0;
        drelease(rt, d);
    }
    st->loss = lf;
    st->step_s = now_s() - t0;
    st->idle_s = st->step_s - st->compute_s - st->comm_s;
    st->peak_mem_bytes = (double)rt->mem_high;
    pool_stats(rt->pool, &ps1);
    st->held_mem_bytes = (double)ps1.held_high;
    st->device_allocs = ps1.device_allocs - ps0.device_allocs;
    st->buffer_requests = st->device_allocs + ps1.reuses - ps0.reuses;
    if (st->idle_s < 0) st->idle_s = 0;
    return rc;
}

void rt_op_times(const Runtime *rt, OpTimes *out)
{
    *out = rt->times;
}

void rt_op_times_reset(Runtime *rt)
{
    memset(&rt->times, 0, sizeof rt->times);
}

int rt_gather_param(Runtime *rt, int t, float *out, Err *err)
{
    const Tensor *T = &rt->g->tensors[t];
    int64_t n = tensor_numel(T);
    /* the training is over: every pull and send completes first */
    int rc = take_pulls(rt, 1 << 30, err);
    if (!rc) rc = wait_sends(rt, -2, err);
    float *whole = rc ? NULL : dalloc(rt, n, err);
    if (!whole) return -1;
    for (int v = 0; v < rt->pr->nvalues && !rc; v++) {
        const Value *V = &rt->pr->values[v];
        if (V->kind != VAL_PARAM || V->tensor != t) continue;
        int64_t ext[IR_MAX_DIMS], off[IR_MAX_DIMS];
        value_geom(rt, &V->layout, t, ext, off);
        float *local = val(rt, v, err), *tmp = NULL;
        if (!local) {
            rc = -1;
            break;
        }
        if (V->shard) {      /* ZeRO-3: the shards of the local block first */
            int D = rt->gsize[V->shard];
            int64_t chunk = rt->numel[v];
            tmp = dalloc(rt, chunk * D, err);
            rc = !tmp || dev_sync(rt, err) ||
                 rt->comm->ops->allgather(rt->groups[V->shard], local, tmp, chunk, CT_F32, err) ? -1 : 0;
            local = tmp;
        }
        /* one replica of each block writes it: index 0 along the axes that
         * replicate it, and the first stage that holds it */
        AxisMask held = 0;
        for (int d = 0; d < T->ndim; d++) held |= V->layout.dim[d];
        bool primary = true;
        for (int a = 0; a < rt->s->naxes; a++)
            if (!(held & (1 << a)) && a != rt->s->pp_axis && rt->coord[a] != 0) primary = false;
        if (rt->s->pp_axis >= 0)
            for (int i = 0; i < rt->g->nops; i++) {
                bool uses = false;
                for (int k = 0; k < rt->g->ops[i].nin; k++) uses |= rt->g->ops[i].in[k] == t;
                if (uses) {
                    primary &= rt->s->op_stage[i] == rt->pr->stage;
                    break;
                }
            }
        if (primary && !rc) {
            int64_t zero[IR_MAX_DIMS] = {0};
            rc = rt->dev->ops->block_copy(rt->dev, whole, T->shape, off, local, ext, zero, ext,
                                          T->ndim, err);
        }
        drelease(rt, tmp);
        break;
    }
    if (!rc) rc = dev_sync(rt, err);
    if (!rc && rt->live) rc = rt->comm->ops->allreduce(rt->groups[rt->live], whole, n, CT_F32, RED_SUM, err);
    if (!rc && out) rc = rt->dev->ops->download(rt->dev, out, whole, sizeof(float) * (size_t)n, err);
    drelease(rt, whole);
    return rc;
}

void rt_free(Runtime *rt)
{
    if (!rt) return;
    Err err;
    if (rt->prog_on) {
        pthread_mutex_lock(&rt->lk);
        rt->quit = true;
        pthread_cond_signal(&rt->cv);
        pthread_mutex_unlock(&rt->lk);
        pthread_join(rt->prog, NULL);
        rt->prog_on = false;
    }
    if (rt->pr) {
        take_pulls(rt, 1 << 30, &err);
        wait_sends(rt, -2, &err);
    }
    free(rt->pend);
    free(rt->defer);
    if (rt->pr) wait_inflight(rt, -1, &err);
    free(rt->fly);
    free(rt->later);
    if (rt->buf)
        for (int v = 0; v < rt->pr->nvalues; v++) drelease(rt, rt->buf[v]);
    free(rt->buf);
    free(rt->numel);
    if (rt->opt_a)
        for (int t = 0; t < rt->g->ntensors; t++) {
            drelease(rt, rt->opt_a[t]);
            drelease(rt, rt->opt_b[t]);
            drelease(rt, rt->ef[t]);
            drelease(rt, rt->psgd_q[t]);
            drelease(rt, rt->psgd_p[t]);
            drelease(rt, rt->psgd_m[t]);
        }
    free(rt->opt_a);
    free(rt->opt_b);
    free(rt->ef);
    free(rt->psgd_q);
    free(rt->psgd_p);
    free(rt->psgd_m);
    free(rt->psgd_phase);
    free(rt->data_hi);
    for (int m = 0; m < (1 << MESH_MAX_AXES); m++)
        if (rt->groups[m]) rt->comm->ops->group_free(rt->groups[m]);
    if (rt->tied) rt->comm->ops->group_free(rt->tied);
    if (rt->dev) drelease(rt, rt->one);
    pool_free(rt->pool);
    if (rt->own_dev) device_free(rt->dev);
    free(rt->mem_ptr);
    free(rt->mem_bytes);
    pthread_mutex_destroy(&rt->lk);
    pthread_cond_destroy(&rt->cv);
    free(rt);
}
