/*
 * strategy_build.c — the classic strategies, written as values of the unified
 * representation.
 *
 * Each builder only writes JSON: a mesh, a pipeline and a few entries. What a
 * strategy means is settled by strategy_from_json alone, and every builder's
 * output goes through it before it is returned, so a builder cannot hand out
 * a strategy the parser would refuse.
 *
 * Legend: D/T/P = data/tensor/pipeline degree, W = world (devices used),
 * M = micro-batches, V = model chunks per pipeline stage (interleaving).
 */
#include "strategy.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

typedef enum {
    K_DP, K_ZERO, K_MEGATRON, K_GPIPE, K_PS, K_PARALLAX, K_SFB
} Kind;

static const struct {
    const char *name;
    Kind kind;
    int zero;
} kinds[] = {
    {"dp", K_DP, 0},           {"zero", K_ZERO, 0},     {"zero1", K_ZERO, 1},
    {"zero2", K_ZERO, 2},      {"zero3", K_ZERO, 3},    {"megatron", K_MEGATRON, 0},
    {"gpipe", K_GPIPE, 0},     {"ps", K_PS, 0},         {"parallax", K_PARALLAX, 0},
    {"sfb", K_SFB, 0},
};
#define NKINDS (int)(sizeof kinds / sizeof kinds[0])

/* Letters Megatron splits over tp, in the order it prefers them when one op
 * has several (an MoE expert matmul has e and f: experts win). */
static const char tp_letters[] = "envf";

static bool has(const Op *op, char l) { return (op->letters_mask >> (l - 'a')) & 1u; }

static bool splittable(const Op *op, char l) { return strategy_letter_splittable(op, l - 'a'); }

bool strategy_letter_splittable(const Op *op, int l)
{
    uint32_t bit = 1u << l;
    if ((op->reduce_mask & bit) && op->kind != OP_CROSS_ENTROPY && op->kind != OP_BATCHNORM)
        return false;
    return !((op->spatial_mask | op->window_mask | op->concat_mask) & bit);
}

char strategy_tp_letter(const Op *op)
{
    for (const char *l = tp_letters; *l; l++)
        if (has(op, *l) && splittable(op, *l) && *l - 'a' != op->batch_letter) return *l;
    return 0;
}

/* Sequence parallelism: s split over tp in the norm/residual/bias ops that lie
 * outside attention and the MLP (those that have no tp letter at all). */
static bool seq_parallel_op(const Op *op)
{
    if (op->kind != OP_LAYERNORM && op->kind != OP_ADD && op->kind != OP_BIAS) return false;
    if (!has(op, 's') || !splittable(op, 's')) return false;
    for (const char *l = tp_letters; *l; l++)
        if (has(op, *l)) return false;
    return true;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Default T: the largest divisor of W/P that fits the innermost topology level
 * (tensor parallelism wants the fastest links) and divides every letter it
 * would split; 1 when the model has no letter Megatron splits. */
static int default_tp(const Graph *g, const Cluster *c, int avail, bool sp)
{
    int64_t dims = 0;   /* gcd of the sizes T must divide */
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        char l = strategy_tp_letter(op);
        if (l) dims = gcd64(dims, op->size[l - 'a']);
        if (sp && seq_parallel_op(op)) dims = gcd64(dims, op->size['s' - 'a']);
    }
    if (dims == 0) return 1;   /* nothing to split: a tp axis would only replicate */
    int cap = c ? c->levels[0].count : avail;
    for (int t = cap < avail ? cap : avail; t > 1; t--)
        if (avail % t == 0 && dims % t == 0) return t;
    return 1;
}

/* Default P for GPipe: the largest divisor of avail that leaves each stage a block. */
static int default_pp(const Graph *g, int avail)
{
    for (int p = avail < g->nblocks ? avail : g->nblocks; p > 1; p--)
        if (avail % p == 0) return p;
    return 1;
}

static cJSON *ps_sync(int shards, int staleness)
{
    cJSON *sy = cJSON_CreateObject();
    cJSON_AddStringToObject(sy, "method", "ps");
    cJSON_AddNumberToObject(sy, "shards", shards);
    cJSON_AddNumberToObject(sy, "staleness", staleness);
    return sy;
}

/* params[key] = {"sync": sync}; takes sync. */
static void add_param_sync(cJSON *params, const char *key, cJSON *sync)
{
    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToObject(e, "sync", sync);
    cJSON_AddItemToObject(params, key, e);
}

/* The kinds table's entry of kind, or -1 (said). */
static int kind_index(const char *kind, Err *err)
{
    for (int i = 0; i < NKINDS; i++)
        if (strcmp(kind, kinds[i].name) == 0) return i;
    err_set(err, "unknown strategy kind \"%s\" (one of: dp, zero, zero1, zero2, zero3, "
                 "megatron, gpipe, ps, parallax, sfb)", kind);
    return -1;
}

int strategy_opts_check(const char *kind, const StrategyOpts *opts, Err *err)
{
    StrategyOpts o = {0};
    if (opts) o = *opts;
    int ki = kind_index(kind, err);
    if (ki < 0) return -1;
    Kind k = kinds[ki].kind;
    /* options that do not fit the kind are errors, not silently ignored */
    if (o.world < 0 || o.tp < 0 || o.pp < 0 || o.dp < 0 || o.microbatches < 0 ||
        o.ps_shards < 0 || o.staleness < 0 || o.virtual_stages < 0) {
        err_set(err, "%s: world, tp, pp, dp, microbatches, virtual, ps_shards and staleness "
                     "must be >= 0", kind);
        return -1;
    }
    if (o.virtual_stages > 1 && k != K_MEGATRON) {
        err_set(err, "%s: virtual %d: only megatron interleaves its pipeline stages (use "
                     "--strategy megatron)", kind, o.virtual_stages);
        return -1;
    }
    if (o.tp > 1 && k != K_MEGATRON) {
        err_set(err, "%s: tp %d: only megatron splits tensors (use --strategy megatron)", kind,
                o.tp);
        return -1;
    }
    if (o.pp > 1 && k != K_MEGATRON && k != K_GPIPE) {
        err_set(err, "%s: pp %d: only megatron and gpipe are pipelined", kind, o.pp);
        return -1;
    }
    int zero = kinds[ki].zero;
    if (o.zero && k != K_ZERO) {
        err_set(err, "%s: zero %d applies to the zero strategy only", kind, o.zero);
        return -1;
    }
    if (k == K_ZERO) {
        if (o.zero && (o.zero > 3 || (zero && o.zero != zero))) {
            err_set(err, "%s: zero %d: the stage must be 1, 2 or 3%s", kind, o.zero,
                    zero ? " and match the kind's" : "");
            return -1;
        }
    }
    if ((o.ps_shards || o.staleness) && k != K_PS && k != K_PARALLAX) {
        err_set(err, "%s: ps_shards and staleness apply to ps and parallax only", kind);
        return -1;
    }
    if (o.sequence_parallel && k != K_MEGATRON) {
        err_set(err, "%s: sequence parallelism is a megatron option", kind);
        return -1;
    }
    if (o.compress && k == K_PS) {
        err_set(err, "ps: compress applies to all-reduce; with ps no param is all-reduced");
        return -1;
    }
    return 0;
}

cJSON *strategy_build(const char *kind, const Graph *g, const Cluster *c,
                      const StrategyOpts *opts, Err *err)
{
    StrategyOpts o = {0};
    if (opts) o = *opts;
    if (strategy_opts_check(kind, &o, err)) return NULL;
    int ki = kind_index(kind, err);
    Kind k = kinds[ki].kind;
    int zero = kinds[ki].zero;
    if (k == K_ZERO && !zero) zero = o.zero ? o.zero : 3;

    /* --- mesh sizes */
    int W = o.world;
    if (!W) W = c ? c->ndevices : (o.tp ? o.tp : 1) * (o.pp ? o.pp : 1) * (o.dp ? o.dp : 1);
    if (c && W > c->ndevices) {
        err_set(err, "%s: world %d exceeds the %d devices of cluster %s", kind, W, c->ndevices,
                c->name);
        return NULL;
    }
    int T = 1, P = 1, D;
    if (k == K_MEGATRON || k == K_GPIPE) {
        P = o.pp;
        if (k == K_MEGATRON) {
            if (!P) P = (o.tp && o.dp && W % (o.tp * o.dp) == 0) ? W / (o.tp * o.dp) : 1;
            if (W % P) {
                err_set(err, "%s: pp %d does not divide world %d", kind, P, W);
                return NULL;
            }
            T = o.tp;
            if (!T) T = o.dp ? (W / P) / o.dp : default_tp(g, c, W / P, o.sequence_parallel);
            if (T < 1) T = 1;
        } else if (!P) {
            P = o.dp ? W / o.dp : default_pp(g, W);
            if (P < 1) P = 1;
        }
    }
    if ((int64_t)T * P > W || W % (T * P)) {
        err_set(err, "%s: tp %d x pp %d does not divide world %d", kind, T, P, W);
        return NULL;
    }
    D = W / (T * P);
    if (o.dp && o.dp != D) {
        err_set(err, "%s: dp %d, but world %d / (tp %d x pp %d) = %d", kind, o.dp, W, T, P, D);
        return NULL;
    }
    int M = o.microbatches ? o.microbatches : P;
    /* V model chunks per stage: Megatron-LM's interleaved schedule */
    int V = o.virtual_stages > 1 ? o.virtual_stages : 1;
    if (V > 1 && P < 2) {
        err_set(err, "%s: virtual %d interleaves pipeline stages, but pp is %d: give --pp 2 or "
                     "more", kind, V, P);
        return NULL;
    }

    /* --- the strategy */
    cJSON *j = cJSON_CreateObject();
    cJSON *mesh = cJSON_AddObjectToObject(j, "mesh");
    if (k == K_MEGATRON || k == K_GPIPE) cJSON_AddNumberToObject(mesh, "pp", P);
    cJSON_AddNumberToObject(mesh, "dp", D);
    if (k == K_MEGATRON) cJSON_AddNumberToObject(mesh, "tp", T);

    if (P > 1 || M > 1) {
        cJSON *pipe = cJSON_AddObjectToObject(j, "pipeline");
        int64_t n = (int64_t)P * V;   /* model chunks, cut evenly */
        if (P > 1 && n <= g->nblocks) {   /* else the parser says why not */
            cJSON *cuts = cJSON_AddArrayToObject(pipe, "cuts");
            for (int64_t i = 1; i < n; i++)
                cJSON_AddItemToArray(
                    cuts, cJSON_CreateNumber((double)(i * g->nblocks / n)));
        }
        cJSON_AddNumberToObject(pipe, "microbatches", M);
        if (P > 1)
            cJSON_AddStringToObject(pipe, "schedule",
                                    k == K_GPIPE ? "gpipe" : V > 1 ? "interleaved" : "1f1b");
        if (V > 1) cJSON_AddNumberToObject(pipe, "virtual", V);
    }

    cJSON *ops = cJSON_CreateObject();
    cJSON *all = cJSON_CreateObject();   /* ops["*"] */
    uint32_t present = 0;   /* tp letters Megatron splits somewhere */
    if (k == K_MEGATRON) {
        /* one pattern splits every tp letter present; the few ops where it
         * cannot apply (a reduction letter, two tp letters, the batch letter)
         * get it undone */
        for (int i = 0; i < g->nops; i++) {
            char l = strategy_tp_letter(&g->ops[i]);
            if (l) present |= 1u << (l - 'a');
        }
        if (!present && T > 1) {
            cJSON_Delete(j);
            cJSON_Delete(ops);
            cJSON_Delete(all);
            err_set(err, "megatron: tp %d would split nothing: the model has none of the letters "
                    "n, f, v, e (heads, ffn, vocabulary, experts) that Megatron splits; write the "
                    "ops' splits yourself, or use --tp 1", T);
            return NULL;
        }
        if (present) {
            cJSON *split = cJSON_AddObjectToObject(all, "split");
            for (const char *l = tp_letters; *l; l++)
                if (present & (1u << (*l - 'a'))) {
                    char key[2] = {*l, 0};
                    cJSON_AddStringToObject(split, key, "tp");
                }
        }
    }
    if (o.recompute) cJSON_AddBoolToObject(all, "recompute", true);
    if (all->child) cJSON_AddItemToObject(ops, "*", all);
    else cJSON_Delete(all);
    if (k == K_MEGATRON) {
        for (int i = 0; i < g->nops; i++) {
            const Op *op = &g->ops[i];
            char keep = strategy_tp_letter(op);
            cJSON *split = NULL;
            for (const char *l = tp_letters; *l; l++) {
                if (!has(op, *l) || *l == keep || !(present & (1u << (*l - 'a')))) continue;
                if (!split) {
                    cJSON *e = cJSON_AddObjectToObject(ops, op->name);
                    split = cJSON_AddObjectToObject(e, "split");
                }
                char key[2] = {*l, 0};
                if (*l - 'a' == op->batch_letter) cJSON_AddStringToObject(split, key, "dp");
                else cJSON_AddNullToObject(split, key);
            }
            if (o.sequence_parallel && seq_parallel_op(op)) {
                if (!split) {
                    cJSON *e = cJSON_AddObjectToObject(ops, op->name);
                    split = cJSON_AddObjectToObject(e, "split");
                }
                cJSON_AddStringToObject(split, "s", "tp");
            }
        }
    }
    if (ops->child) cJSON_AddItemToObject(j, "ops", ops);
    else cJSON_Delete(ops);

    cJSON *params = cJSON_CreateObject();
    int shards = o.ps_shards ? o.ps_shards : (D < 4 ? D : 4);
    /* PowerSGD compresses matrices: 1-D params (biases, norms) stay uncompressed */
    bool lowrank = o.compress && strncmp(o.compress, "powersgd", 8) == 0;
    if (lowrank && k != K_PS) {
        for (int t = 0; t < g->ntensors; t++) {
            if (g->tensors[t].role != ROLE_PARAM || g->tensors[t].ndim < 2) continue;
            cJSON *sy = cJSON_CreateObject();
            cJSON_AddStringToObject(sy, "method", "allreduce");
            cJSON_AddStringToObject(sy, "compress", o.compress);
            add_param_sync(params, g->tensors[t].name, sy);
        }
    }
    if ((o.compress && !lowrank) || k == K_ZERO || k == K_PS) {
        cJSON *e = cJSON_AddObjectToObject(params, "*");
        if (k == K_ZERO) {
            char name[8];
            snprintf(name, sizeof name, "zero%d", zero);
            cJSON_AddStringToObject(e, "shard", name);
        }
        if (k == K_PS) {
            cJSON_AddItemToObject(e, "sync", ps_sync(shards, o.staleness));
        } else if (o.compress && !lowrank) {
            cJSON *sy = cJSON_AddObjectToObject(e, "sync");
            cJSON_AddStringToObject(sy, "method", "allreduce");
            cJSON_AddStringToObject(sy, "compress", o.compress);
        }
    }
    if (k == K_PARALLAX || k == K_SFB) {
        char why[256];
        for (int t = 0; t < g->ntensors; t++) {
            if (g->tensors[t].role != ROLE_PARAM) continue;
            if (k == K_PARALLAX && graph_read_by(g, t, OP_EMBEDDING))
                add_param_sync(params, g->tensors[t].name, ps_sync(shards, o.staleness));
            if (k == K_SFB && !strategy_sfb_unfit(g, t, why, (int)sizeof why)) {
                cJSON *sy = cJSON_CreateObject();
                cJSON_AddStringToObject(sy, "method", "sfb");
                add_param_sync(params, g->tensors[t].name, sy);
            }
        }
    }
    if (params->child) cJSON_AddItemToObject(j, "params", params);
    else cJSON_Delete(params);

    Strategy *s = strategy_parse(j, g, c, err);
    if (!s) {
        if (err) {
            char old[sizeof err->msg];
            memcpy(old, err->msg, sizeof old);
            int w = V > 1 ? snprintf(err->msg, sizeof err->msg, "%s (D %d, T %d, P %d, V %d, "
                                     "M %d): %s", kind, D, T, P, V, M, old)
                          : snprintf(err->msg, sizeof err->msg, "%s (D %d, T %d, P %d, M %d): %s",
                                     kind, D, T, P, M, old);
            if (w < 0)
                err->msg[0] = 0;
        }
        cJSON_Delete(j);
        return NULL;
    }
    strategy_free(s);
    return j;
}
