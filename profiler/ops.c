/*
 * ops.c — the operator grid: which shard shapes to time, and timing them
 * with the executor's kernels.
 *
 * Shapes come from the lowering itself: each zoo model is lowered under the
 * classic strategies (data parallel, Megatron tensor parallel with and
 * without sequence parallelism, GPipe micro-batches) and every op's local
 * letter sizes (Plan.local) are a case, so the grid holds exactly the shards
 * a search will ask about. Random shapes around them (each letter scaled by
 * up to 2x either way) fill the gaps between. A case runs as a one-rank op of
 * its local sizes: a split reduce letter's statistics all-reduce is comm, and
 * the profiler's links measure that.
 *
 * Phases: fwd (kernel_forward), bwd_data (gradients of the activation
 * operands only), bwd_weight (of the param operands only), update (the
 * optimizers over a param's local elements, and over its 1/D ZeRO shard).
 * An op's operands are timed warm in the caches, as a step runs them (an
 * activation is read just after it is made); an update's cold (evict), as
 * a step runs it: a param's optimizer state is touched once a step.
 *
 * Legend: W = world of a strategy, T = tensor-parallel degree, M =
 * micro-batches, est = estimated seconds from the device's peaks.
 */
#include "profiler/profile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <emmintrin.h>
#endif

#include "executor/kernels.h"
#include "ir/cluster.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/util.h"
#include "ir/zoo.h"
#include "profiler/stats.h"

enum { UPD_SGD, UPD_ADAM };
#define ROUNDS 3                   /* rounds each case is timed in: see the timing policy */
static const char *const UPD_NAME[] = { "sgd", "adam" };

typedef struct {
    int model;                     /* index into OpGrid.graphs */
    int op;                        /* -1: optimizer update */
    int phase;                     /* Phase */
    int64_t size[IR_LETTERS];      /* local letter sizes */
    int64_t n;                     /* update: elements */
    int upd;                       /* update: UPD_* */
    bool random;
    const char *from;              /* "gpt dp4": where the shape was first seen */
    double flops, bytes;
    double est;                    /* seconds: every round with its warm-ups */
    char *key;                     /* identity, for deduplication */
    double *t;                     /* the runs timed so far, over the rounds */
    int nt;
    double med[ROUNDS];            /* each round's median */
    int nmed;
} OpCase;

typedef struct {
    const char *name;              /* shown in `from` */
    const char *kind;
    const char *opts;              /* "--key value ..." */
} ZooSource;

/* Models sized so that their shards span what a CPU or a GPU plan would run:
 * the full-size ones mostly show up as data- and tensor-parallel shards. */
static const ZooSource MODELS[] = {
    { "mlp", "mlp", "--layers 2 --hidden 1024 --input 784 --classes 10 --batch 256" },
    { "gpt-small", "gpt", "--layers 2 --hidden 256 --heads 4 --seq 128 --vocab 8192 --batch 8" },
    { "gpt2-small", "gpt", "--preset gpt2-small --layers 2" },
    { "bert-base", "bert", "--preset bert-base --layers 2 --batch 8" },
    { "cnn-small", "vgg16", "--batch 8 --image 32 --width 16 --fc 256 --classes 10" },
    { "vgg16", "vgg16", "--batch 32" },
    { "resnet50", "resnet", "--depth 50 --batch 32" },
    { "moe-small", "moe", "--layers 2 --hidden 256 --heads 4 --seq 128 --vocab 8192 --batch 8 --experts 8" },
    { "dlrm", "dlrm", "--rows 100000" },
    /* concat: the fire modules' channel concatenations, small and ImageNet-sized */
    { "fire-small", "fire", "--batch 8 --image 32" },
    { "fire", "fire", "--batch 32 --image 112 --stem 64 --fires 3 --squeeze 16 --expand 64" },
    /* mse: a regression head over a few to many outputs */
    { "mlp-mse", "mlp", "--layers 2 --hidden 1024 --input 784 --classes 10 --batch 256 --loss mse" },
    { "mlp-mse-wide", "mlp", "--layers 1 --hidden 512 --input 256 --classes 4096 --batch 128 --loss mse" },
};
#define NMODELS ((int)(sizeof MODELS / sizeof MODELS[0]))

typedef struct {
    const char *name;
    const char *kind;
    int world, tp, pp, micro;
    bool sp;
} StratSource;

static const StratSource STRATS[] = {
    { "single", "dp", 1, 0, 0, 0, false },
    { "dp2", "dp", 2, 0, 0, 0, false },
    { "dp4", "dp", 4, 0, 0, 0, false },
    { "dp8", "dp", 8, 0, 0, 0, false },
    { "tp2", "megatron", 2, 2, 1, 0, false },
    { "tp4", "megatron", 4, 4, 1, 0, false },
    { "tp8", "megatron", 8, 8, 1, 0, false },
    { "tp4-sp", "megatron", 4, 4, 1, 0, true },
    { "tp2-dp4", "megatron", 8, 2, 1, 0, false },
    { "gpipe2-m4", "gpipe", 2, 0, 2, 4, false },
};
#define NSTRATS ((int)(sizeof STRATS / sizeof STRATS[0]))
#define MAX_WORLD 8

struct OpGrid {
    OpGridOpts o;
    ProfDevice d;
    Graph *graphs[NMODELS];
    OpCase *cases;
    int n, cap;
    char from[NMODELS * NSTRATS][48];
    char label[64];
    char *shape;                   /* shape_json of the last measurement */
    float *arena;                  /* every buffer of a measurement */
    int64_t arena_n, used;         /* floats */
    float *evict;                  /* written over before each timed update (evict; not x86) */
    int64_t evict_n;               /* floats */
};

/* --- timing policy ------------------------------------------------------------ */

/* Each case is timed in ROUNDS rounds, every case of the grid in one round
 * before any in the next, so a case's rounds lie minutes apart. Its time is
 * the median of its rounds' medians: on a shared machine the load moves in
 * bursts of seconds to minutes (two full profiles of one machine taken one
 * after the other differed by 17.6% on the same cases, whole kinds by 20-30%
 * as the runs of each fell into a busy or a quiet spell), and a burst now
 * moves one round of a case rather than its time. */

typedef struct {
    int min_reps, max_reps;
    double min_time;       /* keep repeating until this much was timed */
    double max_one;        /* a case estimated slower than this per run is left out */
    double max_mem;        /* ... or needing more bytes than this */
} Policy;

/* The policy of one round: the case's runs and time shared over the rounds. */
static Policy policy(bool quick)
{
    Policy p = quick ? (Policy){ 3, 20, 0.02, 0.25, 512.0 * (1 << 20) }
                     : (Policy){ 5, 100, 0.1, 2.0, 2048.0 * (1 << 20) };
    p.min_reps = (p.min_reps + ROUNDS - 1) / ROUNDS;
    p.max_reps = (p.max_reps + ROUNDS - 1) / ROUNDS;
    p.min_time /= ROUNDS;
    return p;
}

/* A run this long needs no warm-up of its own in the later rounds: what a
 * cold cache costs it is below its noise (the first round's warm-up has
 * touched its pages). */
#define WARM_ONCE_ABOVE 0.01

/* per-call overhead of a kernel that the peaks do not cover */
#define CALL_OVERHEAD 20e-6

static double est_one(const OpGrid *g, double flops, double bytes)
{
    return fmax(flops / g->d.peak_flops, bytes / g->d.mem_bw) + CALL_OVERHEAD;
}

static int round_reps(const Policy *p, double one)
{
    double reps = ceil(p->min_time / one);
    if (reps < p->min_reps) reps = p->min_reps;
    if (reps > p->max_reps) reps = p->max_reps;
    return (int)reps;
}

/* Every round with its warm-ups. */
static double est_total(const Policy *p, double one)
{
    int warm = one > WARM_ONCE_ABOVE ? 1 : ROUNDS;
    return one * (ROUNDS * round_reps(p, one) + warm);
}

/* --- the cases ---------------------------------------------------------------- */

static bool kind_wanted(const OpGridOpts *o, const char *kind)
{
    if (!o->kinds) return true;
    size_t n = strlen(kind);
    for (const char *p = o->kinds; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, kind, n) == 0) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

static const char *case_kind(const OpGrid *g, const OpCase *c)
{
    return c->op < 0 ? UPD_NAME[c->upd] : op_kind_name(g->graphs[c->model]->ops[c->op].kind);
}

/* Bytes of the buffers one measurement holds: operands, output, and for the
 * backward the output's gradient and the operands' gradients. */
static double case_mem(const OpGrid *g, const OpCase *c)
{
    if (c->op < 0) return 4.0 * 4 * c->n;
    const Graph *gr = g->graphs[c->model];
    const Op *op = &gr->ops[c->op];
    KernelShape ks;
    kernel_shape_whole(&ks, op, gr);
    memcpy(ks.size, c->size, sizeof ks.size);
    double e = 0;
    for (int k = 0; k <= op->nin; k++) e += (double)kernel_operand_numel(&ks, k);
    return 4.0 * e * (c->phase == PH_FWD ? 1 : 2);
}

static void case_key(const OpGrid *g, OpCase *c)
{
    char buf[512];
    int k = 0;
    if (c->op < 0) {
        k = snprintf(buf, sizeof buf, "%s|%lld", UPD_NAME[c->upd], (long long)c->n);
    } else {
        const Graph *gr = g->graphs[c->model];
        const Op *op = &gr->ops[c->op];
        int64_t hw0 = 0, hw1 = 0;
        if (op->kind == OP_CONV2D || op->kind == OP_POOL2D) {
            hw0 = gr->tensors[op->in[0]].shape[2];
            hw1 = gr->tensors[op->in[0]].shape[3];
        }
        k = snprintf(buf, sizeof buf, "%s|%s|%d|%d|%d|%d|%d|%g|%u|%u|%lld|%lld|%s|",
                     op_kind_name(op->kind), op->spec, op->stride, op->pad, op->window,
                     op->causal, op->pool_avg, op->scale, op->reduce_mask, op->gather_mask,
                     (long long)hw0, (long long)hw1, phase_name((Phase)c->phase));
        for (int l = 0; l < IR_LETTERS && k < (int)sizeof buf - 24; l++)
            if (op->letters_mask & (1u << l))
                k += snprintf(buf + k, sizeof buf - k, "%c%lld,", 'a' + l, (long long)c->size[l]);
    }
    c->key = xstrdup(buf);
}

static void push(OpGrid *g, const OpCase *c)
{
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 256;
        g->cases = xrealloc(g->cases, (size_t)g->cap * sizeof *g->cases);
    }
    g->cases[g->n] = *c;
    case_key(g, &g->cases[g->n]);
    g->n++;
}

/* Whether phase ph of op exists: a backward needs the output's gradient, and
 * bwd_data an activation operand that needs one, bwd_weight a param. */
static bool phase_exists(const Graph *gr, const Op *op, int ph)
{
    if (ph == PH_FWD) return true;
    if (!gr->tensors[op->out].needs_grad) return false;
    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &gr->tensors[op->in[k]];
        bool param = t->role == ROLE_PARAM;
        if (ph == PH_BWD_WEIGHT ? param : (!param && t->needs_grad)) return true;
    }
    return false;
}

/* Work and traffic of op case c at its sizes and phase. */
static void op_case_cost(const OpGrid *g, OpCase *c)
{
    static const int cost_of[] = { [PH_FWD] = COST_FWD, [PH_BWD_DATA] = COST_BWD_DATA,
                                   [PH_BWD_WEIGHT] = COST_BWD_WEIGHT };
    OpCost cost;
    graph_op_cost(g->graphs[c->model], c->op, c->size, &cost);
    c->flops = cost.flops[cost_of[c->phase]];
    c->bytes = cost.bytes[cost_of[c->phase]];
}

static void add_op_cases(OpGrid *g, int model, int i, const int64_t size[IR_LETTERS], bool random,
                         const char *from)
{
    const Graph *gr = g->graphs[model];
    const Op *op = &gr->ops[i];
    if (!kind_wanted(&g->o, op_kind_name(op->kind))) return;
    for (int ph = PH_FWD; ph <= PH_BWD_WEIGHT; ph++) {
        if (!phase_exists(gr, op, ph)) continue;
        OpCase c = { .model = model, .op = i, .phase = ph, .random = random, .from = from };
        memcpy(c.size, size, sizeof c.size);
        op_case_cost(g, &c);
        push(g, &c);
    }
}

static void add_update_cases(OpGrid *g, int model, int64_t n, const char *from)
{
    for (int u = UPD_SGD; u <= UPD_ADAM; u++) {
        if (!kind_wanted(&g->o, UPD_NAME[u])) continue;
        /* counted per element: sgd 3 FLOPs, reads w, g, m and writes w, m;
         * adam 12 FLOPs (moments, bias corrections, sqrt, divide), reads w, g,
         * m, v and writes w, m, v */
        OpCase c = { .model = model, .op = -1, .phase = PH_UPDATE, .n = n, .upd = u, .from = from,
                     .flops = (u == UPD_SGD ? 3.0 : 12.0) * n,
                     .bytes = (u == UPD_SGD ? 5.0 : 7.0) * 4 * n };
        push(g, &c);
    }
}

/* Local elements of param t under plan p: its letters at the local sizes of
 * the first op that reads it. */
static int64_t param_local(const Graph *gr, const Plan *p, int t)
{
    for (int i = 0; i < gr->nops; i++) {
        const Op *op = &gr->ops[i];
        for (int k = 0; k < op->nin; k++) {
            if (op->in[k] != t) continue;
            int64_t n = 1;
            for (const char *l = op->in_letters[k]; *l; l++) n *= p->local[i][*l - 'a'];
            return n;
        }
    }
    return 0;
}

static Cluster *grid_cluster(Err *err)
{
    char js[512];
    snprintf(js, sizeof js,
             "{\"name\":\"grid\",\"devices\":[{\"name\":\"any\",\"kind\":\"gpu\","
             "\"peak_tflops\":{\"f32\":100},\"memory_gib\":100000,\"memory_bw_gbps\":1000}],"
             "\"levels\":[{\"name\":\"gpu\",\"count\":%d,\"link\":\"any\",\"bw_gbps\":100,"
             "\"latency_us\":1}]}", MAX_WORLD);
    cJSON *j = cJSON_Parse(js);
    Cluster *c = cluster_from_json(j, 0, err);
    cJSON_Delete(j);
    return c;
}

/* Shapes of model m under every strategy that suits it (the others are skipped:
 * not every model has letters Megatron splits, or a batch that divides by 8). */
static void add_model(OpGrid *g, int m, const Cluster *cl)
{
    const Graph *gr = g->graphs[m];
    for (int si = 0; si < NSTRATS; si++) {
        const StratSource *ss = &STRATS[si];
        StrategyOpts so = { .world = ss->world, .tp = ss->tp, .pp = ss->pp,
                            .microbatches = ss->micro, .sequence_parallel = ss->sp };
        Err e = {0};
        cJSON *j = strategy_build(ss->kind, gr, cl, &so, &e);
        Strategy *s = j ? strategy_parse(j, gr, cl, &e) : NULL;
        Plan *p = s ? ir_lower(gr, cl, s, &e) : NULL;
        if (p) {
            char *from = g->from[m * NSTRATS + si];
            snprintf(from, sizeof g->from[0], "%s %s", MODELS[m].name, ss->name);
            for (int i = 0; i < gr->nops; i++) add_op_cases(g, m, i, p->local[i], false, from);
            for (int t = 0; t < gr->ntensors; t++) {
                if (gr->tensors[t].role != ROLE_PARAM) continue;
                int64_t n = param_local(gr, p, t);
                if (n <= 0) continue;
                add_update_cases(g, m, n, from);
                /* ZeRO keeps 1/D of the optimizer state and updates only that */
                if (!strcmp(ss->kind, "dp") && ss->world > 1 && n / ss->world > 0)
                    add_update_cases(g, m, n / ss->world, from);
            }
        }
        plan_free(p);
        strategy_free(s);
        cJSON_Delete(j);
    }
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The top 53 bits of x as a double in [-1, 1). */
static double uniform_pm1(uint64_t x)
{
    return (double)(x >> 11) / 9007199254740992.0 * 2 - 1;
}

/* A shape around case c: each free letter (not a window, not spatial, whose
 * sizes tie to the input image) scaled by 2^u, u uniform in [-1, 1], with
 * probability 1/2. Update cases scale their element count. */
static void add_random(OpGrid *g, const OpCase *c, uint64_t *rng)
{
    if (c->op < 0) {
        double u = uniform_pm1(splitmix(rng));
        int64_t n = (int64_t)llround(c->n * pow(2, u));
        if (n < 1) n = 1;
        OpCase r = *c;
        r.n = n;
        r.random = true;
        r.flops = c->flops * n / c->n;
        r.bytes = c->bytes * n / c->n;
        push(g, &r);
        return;
    }
    const Graph *gr = g->graphs[c->model];
    const Op *op = &gr->ops[c->op];
    int64_t size[IR_LETTERS];
    memcpy(size, c->size, sizeof size);
    uint32_t fixed = op->spatial_mask | op->window_mask;
    int cat = op_concat_letter(op, op->nin);
    for (int l = 0; l < IR_LETTERS; l++) {
        if (!(op->letters_mask & (1u << l)) || (fixed & (1u << l)) || l == cat) continue;
        uint64_t x = splitmix(rng);
        if (x & 1) continue;
        double u = uniform_pm1(x);
        size[l] = (int64_t)llround(size[l] * pow(2, u));
        if (size[l] < 1) size[l] = 1;
    }
    /* a concat's output holds its inputs end to end */
    if (cat >= 0) {
        size[cat] = 0;
        for (int k = 0; k < op->nin; k++) size[cat] += size[op_concat_letter(op, k)];
    }
    OpCase r = *c;
    memcpy(r.size, size, sizeof size);
    r.random = true;
    op_case_cost(g, &r);
    push(g, &r);
}

static int by_key(const void *a, const void *b)
{
    const OpCase *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (int)x->random - (int)y->random;   /* a zoo shape wins over a random one */
}

static void dedupe(OpGrid *g)
{
    qsort(g->cases, (size_t)g->n, sizeof *g->cases, by_key);
    int k = 0;
    for (int i = 0; i < g->n; i++) {
        if (k && !strcmp(g->cases[k - 1].key, g->cases[i].key)) {
            free(g->cases[i].key);
            continue;
        }
        g->cases[k++] = g->cases[i];
    }
    g->n = k;
}

static int by_label_flops(const void *a, const void *b, void *ctx)
{
    const OpGrid *g = ctx;
    const OpCase *x = a, *y = b;
    int c = strcmp(case_kind(g, x), case_kind(g, y));
    if (c) return c;
    if (x->phase != y->phase) return x->phase - y->phase;
    if (x->flops != y->flops) return x->flops < y->flops ? -1 : 1;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? -1 : 1;
    return strcmp(x->key, y->key);
}

/* Keeps about budget/total of each kind-and-phase group, evenly over its sizes
 * (always its smallest and largest case, so the span survives). */
static void thin(OpGrid *g, double budget)
{
    double total = 0;
    for (int i = 0; i < g->n; i++) total += g->cases[i].est;
    if (total <= budget) return;
    double keep = budget / total, acc = 0;
    int k = 0;
    for (int i = 0; i < g->n; i++) {
        OpCase *c = &g->cases[i];
        bool first = i == 0 || strcmp(case_kind(g, &g->cases[i - 1]), case_kind(g, c)) ||
                     g->cases[i - 1].phase != c->phase;
        bool last = i == g->n - 1 || strcmp(case_kind(g, &g->cases[i + 1]), case_kind(g, c)) ||
                    g->cases[i + 1].phase != c->phase;
        acc += keep;
        if (first || last || acc >= 1) {
            if (acc >= 1) acc -= 1;
            g->cases[k++] = *c;
        } else {
            free(c->key);
        }
    }
    g->n = k;
}

OpGrid *opgrid_new(const OpGridOpts *o, const ProfDevice *d, Err *err)
{
    if (d->peak_flops <= 0 || d->mem_bw <= 0) {
        err_set(err, "the device's peaks must be measured before the op grid is planned");
        return NULL;
    }
    OpGrid *g = xcalloc(1, sizeof *g);
    g->o = *o;
    g->d = *d;
    Cluster *cl = grid_cluster(err);
    if (!cl) goto fail;
    for (int m = 0; m < NMODELS; m++) {
        const char *keys[32], *vals[32];
        char buf[256];
        snprintf(buf, sizeof buf, "%s", MODELS[m].opts);
        int n = 0;
        for (char *w = strtok(buf, " "); w && n < 32; w = strtok(NULL, " ")) {
            keys[n] = w + 2;                 /* "--layers" -> "layers" */
            vals[n] = strtok(NULL, " ");
            n++;
        }
        g->graphs[m] = zoo_build(MODELS[m].kind, n, keys, vals, err);
        if (!g->graphs[m]) {
            err_prefix(err, "building the grid's model %s", MODELS[m].name);
            cluster_free(cl);
            goto fail;
        }
        add_model(g, m, cl);
    }
    cluster_free(cl);
    dedupe(g);

    /* random shapes: one around each zoo shape (one in four with --quick) */
    uint64_t rng = o->seed ? o->seed : 1;
    int nzoo = g->n;
    for (int i = 0; i < nzoo; i++)
        if (!o->quick || i % 4 == 0) add_random(g, &g->cases[i], &rng);
    dedupe(g);

    /* estimates; too slow or too big for one measurement: out */
    Policy pol = policy(o->quick);
    int k = 0;
    for (int i = 0; i < g->n; i++) {
        OpCase *c = &g->cases[i];
        double one = est_one(g, c->flops, c->bytes);
        if (one > pol.max_one || case_mem(g, c) > pol.max_mem) {
            free(c->key);
            continue;
        }
        /* + filling the inputs each round, about half the buffers, at memory speed */
        c->est = est_total(&pol, one) + ROUNDS * 0.5 * case_mem(g, c) / g->d.mem_bw;
        g->cases[k++] = *c;
    }
    g->n = k;
    qsort_r(g->cases, (size_t)g->n, sizeof *g->cases, by_label_flops, g);
    thin(g, o->budget_s);
    if (!g->n) {
        err_set(err, "no op case fits this device and the kinds asked for (--kinds %s)",
                o->kinds ? o->kinds : "all");
        goto fail;
    }
    return g;
fail:
    opgrid_free(g);
    return NULL;
}

void opgrid_free(OpGrid *g)
{
    if (!g) return;
    for (int i = 0; i < g->n; i++) {
        free(g->cases[i].key);
        free(g->cases[i].t);
    }
    free(g->cases);
    for (int m = 0; m < NMODELS; m++) graph_free(g->graphs[m]);
    free(g->shape);
    free(g->arena);
    free(g->evict);
    free(g);
}

int opgrid_count(const OpGrid *g) { return g->n; }
int opgrid_rounds(const OpGrid *g) { (void)g; return ROUNDS; }
double opgrid_estimate(const OpGrid *g, int i) { return g->cases[i].est; }

const char *opgrid_label(const OpGrid *g, int i)
{
    OpGrid *mg = (OpGrid *)g;
    snprintf(mg->label, sizeof mg->label, "%s %s", case_kind(g, &g->cases[i]),
             phase_name((Phase)g->cases[i].phase));
    return mg->label;
}

/* --- measuring ------------------------------------------------------------------ */

/* The shape as stored: what a cost model needs to rebuild the case. */
static char *shape_json(const OpGrid *g, const OpCase *c)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "from", c->from);
    if (c->op < 0) {
        cJSON_AddNumberToObject(j, "n", (double)c->n);
    } else {
        const Graph *gr = g->graphs[c->model];
        const Op *op = &gr->ops[c->op];
        cJSON_AddStringToObject(j, "op", op->name);
        cJSON_AddStringToObject(j, "spec", op->spec);
        cJSON *sz = cJSON_AddObjectToObject(j, "sizes");
        for (int l = 0; l < IR_LETTERS; l++) {
            if (!(op->letters_mask & (1u << l))) continue;
            char key[2] = { (char)('a' + l), 0 };
            cJSON_AddNumberToObject(sz, key, (double)c->size[l]);
        }
        if (op->kind == OP_CONV2D || op->kind == OP_POOL2D) {
            const Tensor *x = &gr->tensors[op->in[0]];
            double hw[2] = { (double)x->shape[2], (double)x->shape[3] };
            cJSON_AddItemToObject(j, "in_hw", cJSON_CreateDoubleArray(hw, 2));
            cJSON_AddNumberToObject(j, "stride", op->stride);
            cJSON_AddNumberToObject(j, "pad", op->pad);
            cJSON_AddNumberToObject(j, "window", op->window);
        }
        if (op->kind == OP_SOFTMAX) cJSON_AddBoolToObject(j, "causal", op->causal);
        if (op->kind == OP_POOL2D) cJSON_AddBoolToObject(j, "avg", op->pool_avg);
    }
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char *out = xstrdup(s);
    cJSON_free(s);
    return out;
}

typedef struct {
    const OpCase *c;
    KernelShape ks;
    void *in[IR_MAX_INPUTS];
    float *out, *dout;
    float *din[IR_MAX_INPUTS];
    float *w, *gr, *m, *v;         /* update */
    OptimHyper h;
} Bench;

/* Buffers come from one arena, allocated and touched once: fresh buffers
 * for every case would cost more in page faults than many kernels take. */
static float *take(OpGrid *g, int64_t n)
{
    float *p = g->arena + g->used;
    g->used += (n + 15) & ~(int64_t)15;          /* 64-byte aligned */
    return p;
}

/* Values do not change a kernel's time (no data-dependent branches beyond
 * max and sign), so a cheap pattern in [-scale, scale) does; the executor's
 * deterministic generator would cost more than many of the kernels timed. */
static float *filled(OpGrid *g, int64_t n, float scale)
{
    float *p = take(g, n);
    int64_t m = n < 4096 ? n : 4096;
    for (int64_t i = 0; i < m; i++)
        p[i] = scale * ((float)((uint32_t)(i * 2654435761u) >> 16) / 32768.0f - 1.0f);
    for (int64_t i = m; i < n; i += m)          /* the rest at memcpy speed */
        memcpy(p + i, p, (size_t)(n - i < m ? n - i : m) * sizeof *p);
    return p;
}

static float *zeroed(OpGrid *g, int64_t n)
{
    float *p = take(g, n);
    memset(p, 0, (size_t)n * sizeof *p);
    return p;
}

static void bench_setup(OpGrid *g, const OpCase *c, Bench *b)
{
    memset(b, 0, sizeof *b);
    if (!g->arena) {
        g->arena_n = (int64_t)(policy(g->o.quick).max_mem / 4) + 16 * 16;
        g->arena = xcalloc((size_t)g->arena_n, sizeof *g->arena);
        memset(g->arena, 0, (size_t)g->arena_n * sizeof *g->arena);   /* touch every page */
    }
    g->used = 0;
    b->c = c;
    b->h = (OptimHyper){ .lr = 1e-3f, .momentum = 0.9f, .beta1 = 0.9f, .beta2 = 0.999f,
                         .eps = 1e-8f };
    if (c->op < 0) {
        b->w = filled(g, c->n, 1);
        b->gr = filled(g, c->n, 1);
        b->m = zeroed(g, c->n);
        b->v = zeroed(g, c->n);
        return;
    }
    const Graph *gr = g->graphs[c->model];
    const Op *op = &gr->ops[c->op];
    kernel_shape_whole(&b->ks, op, gr);
    memcpy(b->ks.size, c->size, sizeof b->ks.size);
    memcpy(b->ks.total, c->size, sizeof b->ks.total);
    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &gr->tensors[op->in[k]];
        int64_t n = kernel_operand_numel(&b->ks, k);
        if (t->dtype == DT_I32) {
            /* indices into the local table, labels among the local classes */
            uint32_t mask = op->kind == OP_EMBEDDING ? op->gather_mask : op->reduce_mask;
            int32_t hi = mask ? (int32_t)c->size[__builtin_ctz(mask)] : 1;
            if (hi < 1) hi = 1;
            int32_t *p = (int32_t *)take(g, n);
            for (int64_t q = 0; q < n; q++) p[q] = (int32_t)((uint32_t)(q * 2654435761u) % (uint32_t)hi);
            b->in[k] = p;
        } else {
            b->in[k] = filled(g, n, 1);
        }
        bool param = t->role == ROLE_PARAM;
        bool want = c->phase == PH_BWD_WEIGHT ? param
                  : c->phase == PH_BWD_DATA ? !param && t->needs_grad : false;
        if (want) b->din[k] = zeroed(g, n);
    }
    /* the backward reads the forward's output: any values of its range do */
    int64_t no = kernel_operand_numel(&b->ks, op->nin);
    b->out = c->phase == PH_FWD ? take(g, no) : filled(g, no, 0.5f);
    if (c->phase != PH_FWD) b->dout = filled(g, no, 1e-3f);
}

static int bench_run(Bench *b, int rep, Err *err)
{
    const OpCase *c = b->c;
    if (c->op < 0) {
        if (c->upd == UPD_ADAM) kernel_adam(b->w, b->gr, b->m, b->v, c->n, rep + 1, &b->h);
        else kernel_sgd(b->w, b->gr, b->m, c->n, &b->h);
        return 0;
    }
    if (c->phase == PH_FWD) return kernel_forward(&b->ks, (const void *const *)b->in, b->out, err);
    return kernel_backward(&b->ks, (const void *const *)b->in, b->out, b->dout, b->din, err);
}

/* Takes an update's operands out of the caches before it is timed: in a
 * step the optimizer state of a param was last touched a step before, and
 * a model's state is larger than the caches. Timed warm, a 2 MB Adam
 * shard took 190 us where the executor's steps took 300-450 us. On x86,
 * each operand's cache lines are flushed (a cost in proportion to the
 * update); elsewhere a buffer twice the last level's size is written
 * over, a float a cache line. */
static void evict(OpGrid *g, const Bench *b)
{
#if defined(__x86_64__) || defined(__i386__)
    (void)g;
    float *const ops[] = { b->w, b->gr, b->m, b->v };
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
        if (ops[k])
            for (int64_t e = 0; e < b->c->n; e += 16) _mm_clflush(ops[k] + e);
    _mm_mfence();
#else
    (void)b;
    if (!g->evict) {
        long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
        int64_t bytes = 2 * (llc > 0 ? (int64_t)llc : 32 << 20);
        if (bytes < 16 << 20) bytes = 16 << 20;
        if (bytes > 256 << 20) bytes = 256 << 20;
        g->evict_n = bytes / (int64_t)sizeof *g->evict;
        g->evict = xcalloc((size_t)g->evict_n, sizeof *g->evict);
    }
    for (int64_t k = 0; k < g->evict_n; k += 16) g->evict[k] += 1.0f;
#endif
}

int opgrid_measure(OpGrid *g, int i, int round, Err *err)
{
    OpCase *c = &g->cases[i];
    if (round < 0 || round >= ROUNDS || c->nmed != round)
        return err_set(err, "round %d of case %d: the rounds are 0 .. %d, each once, in order",
                       round, i, ROUNDS - 1);
    Policy pol = policy(g->o.quick);
    Bench b;
    int rc = -1;
    bench_setup(g, c, &b);
    /* warm-up: pages, caches, BLAS threads */
    bool warm = round == 0 || est_one(g, c->flops, c->bytes) <= WARM_ONCE_ABOVE;
    if (warm && bench_run(&b, 0, err)) goto done;
    if (!c->t) c->t = xmalloc((size_t)(ROUNDS * pol.max_reps) * sizeof *c->t);
    double *t = c->t + c->nt, sum = 0;
    int n = 0;
    while (n < pol.max_reps && (n < pol.min_reps || sum < pol.min_time)) {
        if (c->op < 0) evict(g, &b);
        double t0 = prof_now();
        if (bench_run(&b, c->nt + n + 1, err)) goto done;
        t[n] = prof_now() - t0;
        sum += t[n++];
    }
    c->nt += n;
    double *sorted = xmalloc((size_t)n * sizeof *sorted);
    memcpy(sorted, t, (size_t)n * sizeof *sorted);
    TimeStats st;
    stats_summarize(sorted, n, &st);     /* sorts its copy */
    c->med[c->nmed++] = st.median;
    free(sorted);
    rc = 0;
done:
    if (rc && c->op >= 0)
        err_prefix(err, "timing %s", g->graphs[c->model]->ops[c->op].name);
    return rc;
}

int opgrid_sample(OpGrid *g, int i, DbProfileOp *out)
{
    OpCase *c = &g->cases[i];
    if (!c->nmed) return 1;
    /* (rounds with more runs weigh more in the pooled percentiles than in
     * the median of medians, which may then lie outside them: the interval
     * is widened to hold it) */
    double med[ROUNDS];
    memcpy(med, c->med, sizeof med);
    TimeStats rounds, st;
    stats_summarize(med, c->nmed, &rounds);
    double *t = xmalloc((size_t)c->nt * sizeof *t);
    memcpy(t, c->t, (size_t)c->nt * sizeof *t);
    stats_summarize(t, c->nt, &st);
    free(t);
    free(g->shape);
    g->shape = shape_json(g, c);
    *out = (DbProfileOp){ .kind = (char *)case_kind(g, c),
                          .phase = (char *)phase_name((Phase)c->phase),
                          .shape_json = g->shape, .dtype = "f32",
                          .source = c->random ? "random" : "zoo",
                          .flops = c->flops, .bytes = c->bytes,
                          .median_s = rounds.median, .p10_s = fmin(st.p10, rounds.median),
                          .p90_s = fmax(st.p90, rounds.median), .reps = c->nt };
    return 0;
}
