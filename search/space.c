/*
 * space.c — the search space: groups of what is the same in the model, the
 * choices each group has, and candidates as points of it.
 *
 * Block kinds: two blocks are of one kind when their ops, in order, have the
 * same kinds, specs and letter sizes (the layers of a transformer; a ResNet
 * stage's blocks, but not two stages of different widths). The op at
 * position k of every block of a kind is one op group; an op outside the
 * blocks is a group alone. A param belongs to the group of its first
 * reader at that input, so the 96 fc1 weights of GPT-3 are one param group.
 *
 * Legend: W = devices, P/D/T = pipeline/data/tensor degree, M = micro-batches,
 * B = global batch, nb = blocks.
 */
#include "search.h"

#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/lower.h"
#include "ir/util.h"

#define MAX_OPTS 8

static uint64_t mix64(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h * 0xbf58476d1ce4e5b9ULL;
}

static uint64_t mix_str(uint64_t h, const char *s)
{
    for (; *s; s++) h = mix64(h, (unsigned char)*s);
    return mix64(h, 0xff);
}

/* What makes two ops the same for planning: kind, spec, sizes. */
static uint64_t op_signature(const Op *op)
{
    uint64_t h = mix64(0, (uint64_t)op->kind);
    h = mix_str(h, op->spec);
    for (int l = 0; l < IR_LETTERS; l++)
        if (op->letters_mask >> l & 1u) h = mix64(h, (uint64_t)op->size[l]);
    return h;
}

/* May letter l of op go to the tp axis? Any the strategy may split but the
 * batch letter, which is dp's. */
static bool tp_option(const Op *op, int l)
{
    return (op->letters_mask >> l & 1u) && l != op->batch_letter &&
           strategy_letter_splittable(op, l);
}

/* An expert op of expert letter e: every operand holds e (it works per
 * expert: the experts' matmuls and what lies between them, not the
 * dispatch or the combine, whose all-to-alls the lowering then places) and
 * e may be split. */
static bool expert_op(const Op *op, int e)
{
    if (op->kind == OP_ROUTE || !strchr(op->out_letters, 'a' + e) ||
        !strategy_letter_splittable(op, e))
        return false;
    for (int k = 0; k < op->nin; k++)
        if (!strchr(op->in_letters[k], 'a' + e)) return false;
    return true;
}

static int64_t model_batch(const Graph *g)
{
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *T = &g->tensors[t];
        if (T->role == ROLE_INPUT && T->batch_dim >= 0) return T->shape[T->batch_dim];
    }
    return 0;
}

static void add_sync(Space *sp, SyncMethod m, SyncAlgo a, Shard sh, Compress cp, int rank,
                     int stale, const char *name)
{
    SyncChoice *s = &sp->sync[sp->nsync++];
    *s = (SyncChoice){ .method = m, .algo = a, .shard = sh, .compress = cp, .powersgd_rank = rank,
                       .staleness = stale, .ps_group = -1 };
    snprintf(s->name, sizeof s->name, "%s", name);
}

/* A synchronous parameter server of `shards` servers (SyncChoice.ps_shards). */
static void add_ps(Space *sp, int shards, const char *name)
{
    add_sync(sp, SYNC_PS, ALGO_RING, SHARD_NONE, COMPRESS_NONE, 0, 0, name);
    sp->sync[sp->nsync - 1].ps_shards = shards;
}

/* The micro-batch counts for D batch ranks into out (at most max), the
 * smallest first: M divides B / D, so that the batch splits into M
 * micro-batches each split over the D ranks, and M is at most `most`. The
 * divisors come in pairs (i, B/D/i) around the square root, so this takes
 * at most min(most, sqrt(B/D)) steps: 2^20 for a batch of 2^40, where
 * counting up to B took forever. */
static int micro_counts(int64_t B, int D, int64_t most, int *out, int max)
{
    if (D < 1 || B % D) return 0;
    int64_t q = B / D, n = 0, nhigh = 0;
    int64_t *high = xmalloc(sizeof *high * (size_t)max);     /* the pairs' large halves */
    for (int64_t i = 1; i <= most && i <= q / i && n < max; i++) {
        if (q % i) continue;
        out[n++] = (int)i;
        int64_t j = q / i;
        if (j != i && j <= most && nhigh < max) high[nhigh++] = j;
    }
    /* the large halves, ascending, after the small ones (each small one is
     * at most the square root, each large one above it) */
    for (int64_t k = nhigh - 1; k >= 0 && n < max; k--) out[n++] = (int)high[k];
    free(high);
    return (int)n;
}

static void micro_init(Space *sp)
{
    /* batch norm's statistics are per micro-batch: more than one changes
     * the model's mathematics, which only lossy changes may */
    int64_t most = sp->batchnorm && !sp->lossy ? 1 : STRATEGY_MAX_MICRO;
    sp->micro_d = xmalloc(sizeof *sp->micro_d * (size_t)sp->nmesh);
    sp->micro_n = xmalloc(sizeof *sp->micro_n * (size_t)sp->nmesh);
    sp->micro_opt = xmalloc(sizeof *sp->micro_opt * (size_t)sp->nmesh);
    for (int m = 0; m < sp->nmesh; m++) {
        int D = space_batch_ranks(sp, m), k = 0;
        while (k < sp->nmicro_d && sp->micro_d[k] != D) k++;
        if (k < sp->nmicro_d) continue;
        sp->micro_d[k] = D;
        sp->micro_n[k] = micro_counts(sp->batch, D, most, sp->micro_opt[k], SPACE_MAX_MICRO_OPTS);
        sp->nmicro_d++;
    }
}

int space_init(Space *sp, const Graph *g, const Cluster *c, int world, bool lossy, bool untie,
               Err *err)
{
    memset(sp, 0, sizeof *sp);
    sp->g = g;
    sp->c = c;
    sp->lossy = lossy;
    int W = world > 0 ? world : c ? c->ndevices : 1;
    if (c && W > c->ndevices)
        return err_set(err, "search: %d devices asked for, cluster %s has %d", W, c->name,
                       c->ndevices);
    sp->world = W;
    sp->batch = model_batch(g);
    for (int i = 0; i < g->nops; i++) sp->batchnorm |= g->ops[i].kind == OP_BATCHNORM;
    if (sp->batch < 1)
        return err_set(err, "search: model %s has no input with a batch dimension; strata "
                            "plans by splitting the batch", g->name);

    /* inner data axes: experts, the letter route ops route over, split by
     * the ops that work per expert; the sequence, the query position of
     * self-attention, split by every op that holds it */
    int64_t isize[INNER_KINDS] = { 0 };
    for (int k = 0; k < INNER_KINDS; k++) {
        sp->inner_letter[k] = -1;
        sp->op_inner[k] = xcalloc(g->nops ? g->nops : 1, sizeof *sp->op_inner[k]);
    }
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        int e = op->reduce_mask ? __builtin_ctz(op->reduce_mask) : -1, q = 's' - 'a';
        if (op->kind == OP_ROUTE && e >= 0 && sp->inner_letter[INNER_EXPERTS] < 0)
            sp->inner_letter[INNER_EXPERTS] = e;
        if (op->kind == OP_SOFTMAX && e >= 0 && e != q && (op->letters_mask >> q & 1u) &&
            op->size[q] == op->size[e] && q != op->batch_letter)
            sp->inner_letter[INNER_SEQUENCE] = q;
    }
    for (int k = INNER_EXPERTS; k < INNER_KINDS; k++) {
        int l = sp->inner_letter[k];
        sp->inner_all[k] = l >= 0;
        for (int i = 0; i < g->nops && l >= 0; i++) {
            const Op *op = &g->ops[i];
            bool on = k == INNER_EXPERTS ? expert_op(op, l)
                                         : (op->letters_mask >> l & 1u) &&
                                           strategy_letter_splittable(op, l);
            sp->op_inner[k][i] = on;
            if (on && !isize[k]) isize[k] = op->size[l];
            if (!on && op->batch_letter >= 0) sp->inner_all[k] = false;
        }
    }

    /* meshes: P cannot exceed the blocks, an inner degree X must divide its
     * letter and D, and the data ranks that split the batch the batch */
    sp->mesh = xmalloc(sizeof *sp->mesh * SPACE_MAX_MESHES);
    for (int P = 1; P <= W; P++) {
        if (W % P || (P > 1 && P > g->nblocks)) continue;
        for (int D = 1; D <= W / P; D++) {
            if ((W / P) % D) continue;
            for (int k = 0; k < INNER_KINDS; k++)
                for (int X = k ? 2 : 1; X <= (k ? D : 1) && sp->nmesh < SPACE_MAX_MESHES; X++) {
                    if (D % X || (k && (!isize[k] || isize[k] % X))) continue;
                    int *m = sp->mesh[sp->nmesh];
                    m[0] = P;
                    m[1] = D;
                    m[2] = W / P / D;
                    m[3] = X;
                    m[4] = k;
                    if (sp->batch % space_batch_ranks(sp, sp->nmesh) == 0) sp->nmesh++;
                }
        }
    }
    if (!sp->nmesh) {
        space_free(sp);
        return err_set(err, "search: no mesh of %d devices divides the batch %lld", W,
                       (long long)sp->batch);
    }
    micro_init(sp);

    /* block kinds, by the signatures of their ops in order */
    int nb = g->nblocks;
    uint64_t *bsig = xcalloc(nb ? nb : 1, sizeof *bsig);
    int *bkind = xmalloc(sizeof *bkind * (nb ? nb : 1));
    for (int i = 0; i < g->nops; i++)
        if (g->ops[i].block >= 0) bsig[g->ops[i].block] = mix64(bsig[g->ops[i].block],
                                                                 op_signature(&g->ops[i]));
    for (int b = 0; b < nb; b++) {
        bkind[b] = sp->nkinds;
        for (int a = 0; a < b && !untie; a++)
            if (bsig[a] == bsig[b]) {
                bkind[b] = bkind[a];
                break;
            }
        if (bkind[b] == sp->nkinds) sp->nkinds++;
    }
    sp->op_kind = xmalloc(sizeof *sp->op_kind * (g->nops ? g->nops : 1));
    sp->op_group = xmalloc(sizeof *sp->op_group * (g->nops ? g->nops : 1));
    int *pos = xcalloc(nb ? nb : 1, sizeof *pos);
    /* group of (kind, position): kind_pos[kind] lists the groups by position */
    int **kind_pos = xcalloc(sp->nkinds ? sp->nkinds : 1, sizeof *kind_pos);
    int *kind_npos = xcalloc(sp->nkinds ? sp->nkinds : 1, sizeof *kind_npos);
    for (int i = 0; i < g->nops; i++) {
        int b = g->ops[i].block;
        sp->op_kind[i] = b >= 0 ? bkind[b] : -1;
        if (b < 0 || untie) {
            sp->op_group[i] = sp->ngroups++;
            if (b >= 0) pos[b]++;
            continue;
        }
        int k = bkind[b], p = pos[b]++;
        if (p >= kind_npos[k]) {
            kind_pos[k] = xrealloc(kind_pos[k], sizeof *kind_pos[k] * (p + 1));
            while (kind_npos[k] <= p) kind_pos[k][kind_npos[k]++] = -1;
        }
        if (kind_pos[k][p] < 0) kind_pos[k][p] = sp->ngroups++;
        sp->op_group[i] = kind_pos[k][p];
    }
    for (int k = 0; k < sp->nkinds; k++) free(kind_pos[k]);
    free(kind_pos);
    free(kind_npos);
    free(pos);
    free(bsig);
    free(bkind);

    int ng = sp->ngroups ? sp->ngroups : 1;
    sp->group_nopt = xcalloc(ng, sizeof *sp->group_nopt);
    sp->group_letter = xcalloc(ng, sizeof *sp->group_letter);
    sp->group_megatron = xcalloc(ng, sizeof *sp->group_megatron);
    sp->group_first = xmalloc(sizeof *sp->group_first * ng);
    for (int q = 0; q < ng; q++) sp->group_first[q] = -1;
    for (int i = 0; i < g->nops; i++) {
        int q = sp->op_group[i];
        if (sp->group_first[q] >= 0) continue;
        sp->group_first[q] = i;
        const Op *op = &g->ops[i];
        int n = 1;
        for (int l = 0; l < IR_LETTERS && n < MAX_OPTS; l++)
            if (tp_option(op, l)) sp->group_letter[q][n++] = (char)('a' + l);
        sp->group_nopt[q] = n;
        char meg = strategy_tp_letter(op);
        for (int k = 1; k < n && meg; k++)
            if (sp->group_letter[q][k] == meg) sp->group_megatron[q] = k;
    }

    /* param groups: (op group of the first reader, input) */
    sp->param_group = xmalloc(sizeof *sp->param_group * (g->ntensors ? g->ntensors : 1));
    sp->param_reader = xmalloc(sizeof *sp->param_reader * (g->ntensors ? g->ntensors : 1));
    int *key = xmalloc(sizeof *key * (g->ntensors ? g->ntensors : 1) * 2);
    sp->pgroup_first = xmalloc(sizeof *sp->pgroup_first * (g->ntensors ? g->ntensors : 1));
    for (int t = 0; t < g->ntensors; t++) {
        sp->param_group[t] = sp->param_reader[t] = -1;
        if (g->tensors[t].role != ROLE_PARAM) continue;
        int reader = -1, slot = 0;
        for (int i = 0; i < g->nops && reader < 0; i++)
            for (int q = 0; q < g->ops[i].nin; q++)
                if (g->ops[i].in[q] == t) {
                    reader = i;
                    slot = q;
                    break;
                }
        sp->param_reader[t] = reader;
        int k0 = reader >= 0 ? sp->op_group[reader] : -1 - t, found = -1;
        for (int p = 0; p < sp->npgroups && !untie && reader >= 0; p++)
            if (key[2 * p] == k0 && key[2 * p + 1] == slot) found = p;
        if (found < 0) {
            found = sp->npgroups++;
            key[2 * found] = k0;
            key[2 * found + 1] = slot;
            sp->pgroup_first[found] = t;
        }
        sp->param_group[t] = found;
    }
    free(key);

    /* sync choices */
    add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_NONE, COMPRESS_NONE, 0, 0, "ring");
    add_sync(sp, SYNC_ALLREDUCE, ALGO_TREE, SHARD_NONE, COMPRESS_NONE, 0, 0, "tree");
    add_sync(sp, SYNC_ALLREDUCE, ALGO_HIERARCHICAL, SHARD_NONE, COMPRESS_NONE, 0, 0,
             "hierarchical");
    add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_ZERO1, COMPRESS_NONE, 0, 0, "zero1");
    add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_ZERO2, COMPRESS_NONE, 0, 0, "zero2");
    add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_ZERO3, COMPRESS_NONE, 0, 0, "zero3");
    add_sync(sp, SYNC_PS, ALGO_RING, SHARD_NONE, COMPRESS_NONE, 0, 0, "ps");
    /* parameter servers: how many, and where */
    add_ps(sp, 1, "ps:1");
    add_ps(sp, 2, "ps:2");
    /* at most 8: each server rank serves other shards, so is a class of its
     * own, and on a large data group one per data rank made programs of
     * tens of millions of instructions (GBs to lower one candidate) */
    add_ps(sp, 8, "ps:8");
    /* where the cluster's devices differ, where the servers are matters: on
     * one device group's ranks (on a uniform cluster every placement of
     * distinct servers is the same by symmetry, and they spread) */
    for (int k = 0; c && c->ngroups > 1 && k < c->ngroups && sp->nsync < SPACE_MAX_SYNC - 5; k++) {
        char name[24];
        snprintf(name, sizeof name, "ps@%.20s", c->groups[k].name);
        add_ps(sp, 0, name);
        sp->sync[sp->nsync - 1].ps_group = k;
    }
    add_sync(sp, SYNC_SFB, ALGO_RING, SHARD_NONE, COMPRESS_NONE, 0, 0, "sfb");
    if (lossy) {
        add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_NONE, COMPRESS_FP16, 0, 0, "fp16");
        add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_NONE, COMPRESS_INT8, 0, 0, "int8");
        add_sync(sp, SYNC_ALLREDUCE, ALGO_RING, SHARD_NONE, COMPRESS_POWERSGD, 4, 0,
                 "powersgd:4");
        add_sync(sp, SYNC_PS, ALGO_RING, SHARD_NONE, COMPRESS_NONE, 0, 1, "ps stale 1");
    }
    int np = sp->npgroups ? sp->npgroups : 1;
    sp->pgroup_syncs = xcalloc(np, sizeof *sp->pgroup_syncs);
    char why[256];
    for (int p = 0; p < sp->npgroups; p++) {
        int t = sp->pgroup_first[p];
        for (int k = 0; k < sp->nsync; k++) {
            const SyncChoice *s = &sp->sync[k];
            if (s->method == SYNC_SFB && strategy_sfb_unfit(g, t, why, (int)sizeof why)) continue;
            if (s->compress == COMPRESS_POWERSGD && g->tensors[t].ndim < 2) continue;
            sp->pgroup_syncs[p] |= 1u << k;
        }
    }
    return 0;
}

void space_free(Space *sp)
{
    if (!sp) return;
    free(sp->mesh);
    free(sp->micro_d);
    free(sp->micro_n);
    free(sp->micro_opt);
    for (int k = 0; k < INNER_KINDS; k++) free(sp->op_inner[k]);
    free(sp->op_group);
    free(sp->group_nopt);
    free(sp->group_letter);
    free(sp->group_megatron);
    free(sp->group_first);
    free(sp->op_kind);
    free(sp->param_group);
    free(sp->param_reader);
    free(sp->pgroup_first);
    free(sp->pgroup_syncs);
    memset(sp, 0, sizeof *sp);
}

int space_micro_options(const Space *sp, int D, int *out, int max)
{
    for (int k = 0; k < sp->nmicro_d; k++)
        if (sp->micro_d[k] == D) {
            int n = sp->micro_n[k] < max ? sp->micro_n[k] : max;
            memcpy(out, sp->micro_opt[k], sizeof *out * (size_t)n);
            return n;
        }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Candidates */

void cand_init(Cand *x, const Space *sp)
{
    memset(x, 0, sizeof *x);
    x->cuts = xcalloc(sp->world, sizeof *x->cuts);
    x->split = xcalloc(sp->ngroups ? sp->ngroups : 1, 1);
    x->recompute = xcalloc(sp->nkinds ? sp->nkinds : 1, 1);
    x->sync = xcalloc(sp->npgroups ? sp->npgroups : 1, 1);
    x->sched = SCHED_1F1B;
    x->micro = 1;
    int dp = 0;
    for (int m = 0; m < sp->nmesh; m++)
        if (sp->mesh[m][0] == 1 && sp->mesh[m][2] == 1 && sp->mesh[m][3] == 1) dp = m;
    cand_set_mesh(x, sp, dp);
}

void cand_copy(Cand *d, const Cand *s, const Space *sp)
{
    d->mesh = s->mesh;
    d->micro = s->micro;
    d->sched = s->sched;
    d->ncuts = s->ncuts;
    memcpy(d->cuts, s->cuts, sizeof *d->cuts * sp->world);
    memcpy(d->split, s->split, sp->ngroups);
    memcpy(d->recompute, s->recompute, sp->nkinds);
    memcpy(d->sync, s->sync, sp->npgroups);
}

cJSON *cand_to_json(const Cand *x, const Space *sp)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "mesh", x->mesh);
    cJSON_AddNumberToObject(j, "micro", x->micro);
    cJSON_AddNumberToObject(j, "sched", x->sched);
    cJSON_AddItemToObject(j, "cuts", cJSON_CreateIntArray(x->cuts, x->ncuts));
    cJSON *a = cJSON_AddArrayToObject(j, "split");
    for (int q = 0; q < sp->ngroups; q++) cJSON_AddItemToArray(a, cJSON_CreateNumber(x->split[q]));
    a = cJSON_AddArrayToObject(j, "recompute");
    for (int k = 0; k < sp->nkinds; k++) cJSON_AddItemToArray(a, cJSON_CreateNumber(x->recompute[k]));
    a = cJSON_AddArrayToObject(j, "sync");
    for (int p = 0; p < sp->npgroups; p++) cJSON_AddItemToArray(a, cJSON_CreateNumber(x->sync[p]));
    return j;
}

/* Member key of j as an integer in [lo, hi], into *v. */
static int point_int(const cJSON *j, const char *key, long lo, long hi, long *v, Err *err)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < lo ||
        x->valuedouble > hi)
        return err_set(err, "point.%s: expected an integer from %ld to %ld", key, lo, hi);
    *v = (long)x->valuedouble;
    return 0;
}

/* Array key of j, n integers, each in [0, bound(i)), into out. */
static int point_array(const cJSON *j, const char *key, int n, const int *bound, int fixed,
                       uint8_t *out, Err *err)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, key), *it;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
        return err_set(err, "point.%s: expected an array of %d integers (another space?)", key, n);
    int i = 0;
    cJSON_ArrayForEach(it, a) {
        int hi = bound ? bound[i] : fixed;
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            it->valuedouble < 0 || it->valuedouble >= hi)
            return err_set(err, "point.%s[%d]: expected an integer from 0 to %d", key, i, hi - 1);
        out[i++] = (uint8_t)it->valuedouble;
    }
    return 0;
}

int cand_from_json(const cJSON *j, const Space *sp, Cand *x, Err *err)
{
    long mesh, micro, sched;
    if (!cJSON_IsObject(j)) return err_set(err, "point: expected an object");
    if (point_int(j, "mesh", 0, sp->nmesh - 1, &mesh, err) ||
        point_int(j, "micro", 1, sp->batch, &micro, err) ||
        point_int(j, "sched", SCHED_GPIPE, SCHED_1F1B, &sched, err))
        return -1;
    cand_set_mesh(x, sp, (int)mesh);
    x->micro = (int)micro;
    x->sched = (Schedule)sched;
    const cJSON *cuts = cJSON_GetObjectItemCaseSensitive(j, "cuts"), *it;
    if (!cJSON_IsArray(cuts) || cJSON_GetArraySize(cuts) != x->ncuts)
        return err_set(err, "point.cuts: expected %d cuts for mesh %ld", x->ncuts, mesh);
    int i = 0, prev = 0;
    cJSON_ArrayForEach(it, cuts) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            it->valuedouble <= prev || it->valuedouble >= sp->g->nblocks)
            return err_set(err, "point.cuts[%d]: expected a block boundary after %d", i, prev);
        x->cuts[i++] = prev = (int)it->valuedouble;
    }
    int *syncs = xcalloc(sp->npgroups ? sp->npgroups : 1, sizeof *syncs);
    for (int p = 0; p < sp->npgroups; p++) syncs[p] = sp->nsync;
    int rc = point_array(j, "split", sp->ngroups, sp->group_nopt, 0, x->split, err) ||
             point_array(j, "recompute", sp->nkinds, NULL, 2, x->recompute, err) ||
             point_array(j, "sync", sp->npgroups, syncs, 0, x->sync, err);
    free(syncs);
    if (rc) return -1;
    for (int p = 0; p < sp->npgroups; p++)
        if (x->sync[p] && !(sp->pgroup_syncs[p] >> x->sync[p] & 1u))
            return err_set(err, "point.sync[%d]: choice %d does not apply to that param group", p,
                           x->sync[p]);
    return 0;
}

void cand_free(Cand *x)
{
    if (!x) return;
    free(x->cuts);
    free(x->split);
    free(x->recompute);
    free(x->sync);
    memset(x, 0, sizeof *x);
}

/* Decisions a mesh makes moot (splits without tp, sync without dp, the
 * schedule without a pipeline) are left out, so two candidates that make
 * the same strategy hash the same. */
uint64_t cand_hash(const Cand *x, const Space *sp)
{
    int P = sp->mesh[x->mesh][0], D = sp->mesh[x->mesh][1], T = sp->mesh[x->mesh][2];
    uint64_t h = mix64(mix64(mix64(0, (uint64_t)x->mesh), (uint64_t)x->micro),
                       P > 1 ? x->sched : 0);
    for (int i = 0; i < x->ncuts; i++) h = mix64(h, (uint64_t)x->cuts[i]);
    for (int q = 0; q < sp->ngroups; q++) h = mix64(h, T > 1 ? x->split[q] : 0);
    for (int k = 0; k < sp->nkinds; k++) h = mix64(h, x->recompute[k]);
    for (int p = 0; p < sp->npgroups; p++) h = mix64(h, D > 1 ? x->sync[p] : 0);
    return h ^ (h >> 29);
}

void cand_set_mesh(Cand *x, const Space *sp, int mesh)
{
    x->mesh = mesh;
    int P = sp->mesh[mesh][0];
    x->ncuts = P - 1;
    for (int i = 1; i < P; i++) x->cuts[i - 1] = (int)((int64_t)i * sp->g->nblocks / P);
    int opts[256], n = space_micro_options(sp, space_batch_ranks(sp, mesh), opts, 256);
    int best = n ? opts[0] : 1;
    for (int k = 0; k < n; k++)
        if (abs(opts[k] - x->micro) < abs(best - x->micro)) best = opts[k];
    x->micro = best;
}

/* All-reduce on a ring, unsharded: the default sync. */
static void param_ring(ParamPolicy *pp)
{
    pp->method = SYNC_ALLREDUCE;
    pp->algo = ALGO_RING;
    pp->shard = SHARD_NONE;
    pp->compress = COMPRESS_NONE;
    pp->powersgd_rank = 0;
    pp->staleness = 0;
    pp->ps_shards = 0;
    pp->ps_placed = false;
}

/* The servers of pp on the data-group indices whose ranks (of the first
 * data group) are devices of group k, spread over them; at most as many
 * servers as there are such ranks. None there: left to spread. */
static void place_on_group(const Strategy *s, const Cluster *c, int k, AxisMask ax,
                           ParamPolicy *pp)
{
    int idx[PS_MAX_SHARDS * 16], n = 0, coord[MESH_MAX_AXES];
    for (int r = 0; r < s->world && n < (int)(sizeof idx / sizeof *idx); r++) {
        strategy_coords(s, r, coord);
        bool first = true;
        for (int a = 0; a < s->naxes; a++)
            if (!(ax >> a & 1u) && coord[a]) first = false;
        if (first && cluster_device(c, r) == &c->groups[k])
            idx[n++] = ir_group_index(s, coord, ax);
    }
    if (!n) return;
    if (pp->ps_shards > n) pp->ps_shards = n;
    for (int j = 0; j < pp->ps_shards; j++) pp->ps_placement[j] = idx[(int64_t)j * n / pp->ps_shards];
    pp->ps_placed = true;
}

Strategy *cand_strategy(const Cand *x, const Space *sp, Err *err)
{
    const Graph *g = sp->g;
    int P = sp->mesh[x->mesh][0], D = sp->mesh[x->mesh][1], T = sp->mesh[x->mesh][2];
    int X = sp->mesh[x->mesh][3], kind = sp->mesh[x->mesh][4];
    const char *names[4];
    int sizes[4], n = 0, tp = -1, in = -1;
    if (P > 1) {
        names[n] = "pp";
        sizes[n++] = P;
    }
    if (D / X > 1) {
        names[n] = "dp";
        sizes[n++] = D / X;
    }
    if (X > 1) {
        in = n;
        names[n] = kind == INNER_EXPERTS ? "dp_ep" : "dp_cp";
        sizes[n++] = X;
    }
    if (T > 1) {
        tp = n;
        names[n] = "tp";
        sizes[n++] = T;
    }
    /* a tensor axis that splits no op would have its ranks repeat each
     * other's work: a plan on fewer devices, not one on these (strategy
     * build refuses it too) */
    bool splits = false;
    for (int q = 0; q < sp->ngroups && T > 1 && !splits; q++)
        splits = x->split[q] > 0 && x->split[q] < sp->group_nopt[q];
    if (T > 1 && !splits) {
        err_set(err, "tp %d splits no op: its ranks would each repeat the same work", T);
        return NULL;
    }
    Strategy *s = strategy_new(g, n, names, sizes, err);
    if (!s) return NULL;
    s->microbatches = x->micro;
    s->schedule = P > 1 ? x->sched : SCHED_1F1B;
    for (int i = 0; i < x->ncuts; i++) s->cuts[i] = x->cuts[i];
    for (int i = 0; i < g->nops; i++) {
        int q = sp->op_group[i], opt = x->split[q];
        if (tp >= 0 && opt > 0 && opt < sp->group_nopt[q])
            s->ops[i].split[sp->group_letter[q][opt] - 'a'] = (AxisMask)(1u << tp);
        if (in >= 0 && sp->op_inner[kind][i]) {
            /* the inner axis's letter over it, the batch over the other data axes */
            s->ops[i].split[sp->inner_letter[kind]] |= (AxisMask)(1u << in);
            if (g->ops[i].batch_letter >= 0)
                s->ops[i].split[g->ops[i].batch_letter] &= (AxisMask)~(1u << in);
        }
        s->ops[i].recompute = sp->op_kind[i] >= 0 && x->recompute[sp->op_kind[i]];
    }
    for (int t = 0; t < g->ntensors; t++) {
        int p = sp->param_group[t];
        if (p < 0) continue;
        const SyncChoice *c = &sp->sync[x->sync[p]];
        /* with one data rank there is nothing to synchronise or shard */
        if (D == 1) continue;
        ParamPolicy *pp = &s->params[t];
        pp->method = c->method;
        pp->algo = c->algo;
        pp->shard = c->shard;
        pp->compress = c->compress;
        pp->powersgd_rank = c->powersgd_rank;
        pp->staleness = c->staleness;
        if (c->method != SYNC_PS) continue;
        /* servers among the ranks that hold the same part of the param */
        AxisMask ax = strategy_param_sync_axes(g, s, t);
        int S = c->ps_shards == 0 ? 4 : c->ps_shards, G = strategy_group_size(s, ax);
        if (S > G) S = G;
        if (S > PS_MAX_SHARDS) S = PS_MAX_SHARDS;
        pp->ps_shards = S;              /* placed by strategy_finish: spread */
        if (c->ps_group >= 0) place_on_group(s, sp->c, c->ps_group, ax, pp);
    }
    if (strategy_finish(s, g, sp->c, err)) {
        strategy_free(s);
        return NULL;
    }
    /* a param read on several pipeline stages (a tied embedding) is summed
     * across them with an all-reduce, which ZeRO and a parameter server do
     * not compose with yet (ir/lower.c): such a param keeps the ring */
    bool changed = false;
    if (s->nstages > 1) {
        for (int i = 0; i < g->nops; i++)
            for (int q = 0; q < g->ops[i].nin; q++) {
                int t = g->ops[i].in[q], r = sp->param_reader[t];
                ParamPolicy *pp = &s->params[t];
                if (r < 0 || s->op_stage[r] == s->op_stage[i]) continue;
                if (pp->method != SYNC_PS && pp->shard == SHARD_NONE) continue;
                param_ring(pp);
                changed = true;
            }
    }
    if (changed && strategy_finish(s, g, sp->c, err)) {
        strategy_free(s);
        return NULL;
    }
    return s;
}

const char *cand_describe(const Cand *x, const Space *sp, char *buf, int n)
{
    int P = sp->mesh[x->mesh][0], D = sp->mesh[x->mesh][1], T = sp->mesh[x->mesh][2];
    int rec = 0, tp = 0;
    for (int k = 0; k < sp->nkinds; k++) rec += x->recompute[k] != 0;
    for (int q = 0; q < sp->ngroups; q++) tp += x->split[q] != 0;
    char inner[40] = "";
    if (sp->mesh[x->mesh][3] > 1)
        snprintf(inner, sizeof inner, " (%s over %d)",
                 sp->mesh[x->mesh][4] == INNER_EXPERTS ? "experts" : "sequence", sp->mesh[x->mesh][3]);
    int len = snprintf(buf, (size_t)n, "pp%d dp%d%s tp%d, %s m%d", P, D, inner, T,
                       P > 1 ? schedule_name(x->sched) : "no pipeline", x->micro);
    if (T > 1 && len < n) len += snprintf(buf + len, (size_t)(n - len), ", %d/%d op groups split", tp,
                                          sp->ngroups);
    if (rec && len < n)
        len += snprintf(buf + len, (size_t)(n - len), ", recompute %d/%d", rec, sp->nkinds);
    /* the sync choices in use, most common first */
    int count[SPACE_MAX_SYNC] = { 0 };
    for (int p = 0; p < sp->npgroups; p++) count[x->sync[p]]++;
    for (int r = 0; r < 3 && D > 1 && len < n; r++) {
        int top = -1;
        for (int k = 0; k < sp->nsync; k++)
            if (count[k] && (top < 0 || count[k] > count[top])) top = k;
        if (top < 0) break;
        len += snprintf(buf + len, (size_t)(n - len), "%s%s", r ? "+" : ", ", sp->sync[top].name);
        count[top] = 0;
    }
    return buf;
}

/* ----------------------------------------------------------------------------
 * The coarse space */

/* Points of the coarse space on mesh m. */
static int64_t coarse_on_mesh(const Space *sp, int m, int *nmicro)
{
    int opts[256];
    int P = sp->mesh[m][0], D = sp->mesh[m][1], T = sp->mesh[m][2];
    *nmicro = space_micro_options(sp, space_batch_ranks(sp, m), opts, 256);
    int64_t n = *nmicro;
    n *= P > 1 ? 2 : 1;                         /* schedule */
    n *= T > 1 ? 2 : 1;                         /* split pattern */
    n *= sp->nkinds ? 2 : 1;                    /* recompute */
    n *= D > 1 ? sp->nsync : 1;                 /* sync */
    return n;
}

int64_t space_coarse_size(const Space *sp)
{
    int64_t n = 0;
    int nm;
    for (int m = 0; m < sp->nmesh; m++) n += coarse_on_mesh(sp, m, &nm);
    return n;
}

void space_coarse_point(const Space *sp, int64_t k, Cand *x)
{
    int m = 0, nmicro = 0;
    for (; m < sp->nmesh; m++) {
        int64_t n = coarse_on_mesh(sp, m, &nmicro);
        if (k < n) break;
        k -= n;
    }
    if (m == sp->nmesh) m = sp->nmesh - 1;
    int P = sp->mesh[m][0], D = sp->mesh[m][1], T = sp->mesh[m][2];
    int opts[256];
    space_micro_options(sp, space_batch_ranks(sp, m), opts, 256);
    cand_set_mesh(x, sp, m);
    x->micro = opts[k % nmicro];
    k /= nmicro;
    x->sched = SCHED_1F1B;
    if (P > 1) {
        x->sched = k % 2 ? SCHED_GPIPE : SCHED_1F1B;
        k /= 2;
    }
    int pattern = 0;
    if (T > 1) {
        pattern = (int)(k % 2);
        k /= 2;
    }
    for (int q = 0; q < sp->ngroups; q++) x->split[q] = (uint8_t)(pattern ? sp->group_megatron[q] : 0);
    int rec = 0;
    if (sp->nkinds) {
        rec = (int)(k % 2);
        k /= 2;
    }
    for (int kd = 0; kd < sp->nkinds; kd++) x->recompute[kd] = (uint8_t)rec;
    cand_sync_all(x, sp, D > 1 ? (int)(k % sp->nsync) : 0);
}

void cand_sync_all(Cand *x, const Space *sp, int k)
{
    for (int p = 0; p < sp->npgroups; p++)
        x->sync[p] = (uint8_t)(sp->pgroup_syncs[p] >> k & 1u ? k : 0);
}
