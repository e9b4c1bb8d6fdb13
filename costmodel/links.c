/*
 * links.c — the time of a collective or a transfer.
 *
 * Without measurements the cluster's level figures (per-device bandwidth one
 * direction, latency) price the standard algorithms, with nccl-tests' bus
 * bandwidth factors: a ring all-reduce moves 2(n-1)/n of the buffer over its
 * slowest link and pays 2(n-1) latencies; all-gather, reduce-scatter and
 * all-to-all move (n-1)/n; a broadcast and a send move the buffer once.
 * A group that spans several topology levels (two GPUs on each of four
 * nodes) costs the hierarchical way when the sync asks for it: reduce-scatter
 * inside the inner level, the reduced shard across the outer one, all-gather
 * inside again; a flat ring across levels runs at the outer level's speed.
 * Bandwidths are per device, so the groups that cross a level side by side
 * (the eight data-parallel groups of a node, each GPU with its own NIC) are
 * each given their device's share, as NCCL's rings over one NIC per GPU do.
 *
 * A profile's alpha-beta fits (t = alpha + beta B per collective, group size
 * and level) replace the analytical cost of a group that spans that level
 * (an fp16-compressed all-reduce takes the half-precision fits);
 * a group size the profile did not measure is scaled from the nearest one by
 * the algorithm's factors. A group size it did measure is priced from the
 * measured sizes themselves where they were given (linkmodel_add_point):
 * one line through sizes from 4 B to 256 MB misses by 30-60% at either end
 * where caches (on CPUs) or protocols (NCCL's) make the bandwidth rise and
 * fall with the size.
 *
 * Legend: B = bytes (nccl-tests size), n = group size, f[l] = members of the
 * group per item of level l (fan-out), bw/alpha = a level's figures.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel.h"
#include "ir/util.h"

#define LINK_MAX_FITS 256

typedef struct {
    int coll;               /* InstrKind (I_SEND stands for send_recv) */
    int group_size;
    int level;              /* index into the cluster's levels */
    double alpha, beta;
    double (*pt)[2];        /* measured (bytes, seconds), ascending in bytes */
    int npt;
} Fit;

struct LinkModel {
    const Cluster *c;
    int nfits;
    Fit fits[LINK_MAX_FITS];
    char describe[128];
};

LinkModel *linkmodel_from_cluster(const Cluster *c, Err *err)
{
    if (!c || c->nlevels < 1) {
        err_set(err, "cluster: no topology levels, so no link figures to price communication");
        return NULL;
    }
    for (int l = 0; l < c->nlevels; l++) {
        if (!(c->levels[l].bw > 0) || !(c->levels[l].latency >= 0)) {
            err_set(err, "cluster %s: levels[%d] (%s) has no link bandwidth; give bw_gbps and "
                    "latency_us", c->name, l, c->levels[l].name);
            return NULL;
        }
    }
    LinkModel *m = xcalloc(1, sizeof *m);
    m->c = c;
    snprintf(m->describe, sizeof m->describe, "analytic (cluster %s link figures)", c->name);
    return m;
}

void linkmodel_free(LinkModel *m)
{
    if (!m) return;
    for (int i = 0; i < m->nfits; i++) free(m->fits[i].pt);
    free(m);
}

static int coll_parse(const char *s)
{
    static const struct { const char *name; int kind; } t[] = {
        { "all_reduce", I_ALLREDUCE }, { "all_gather", I_ALLGATHER },
        { "reduce_scatter", I_REDUCE_SCATTER }, { "all_to_all", I_ALL_TO_ALL },
        { "broadcast", I_BROADCAST }, { "send_recv", I_SEND },
        { "all_reduce_f16", LINK_ALLREDUCE_F16 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].name)) return t[i].kind;
    return -1;
}

/* Index of the cluster's level called `name`; nlevels when none is. */
static int level_of(const LinkModel *m, const char *name)
{
    int l = 0;
    while (l < m->c->nlevels && strcmp(m->c->levels[l].name, name)) l++;
    return l;
}

int linkmodel_add_fit(LinkModel *m, const char *collective, int group_size, const char *level,
                      double alpha_s, double beta_s, Err *err)
{
    int k = coll_parse(collective);
    if (k < 0) return err_set(err, "fit: unknown collective \"%s\"", collective);
    int l = level_of(m, level);
    if (l == m->c->nlevels)
        return err_set(err, "fit of %s: level \"%s\" is not a level of cluster %s", collective,
                       level, m->c->name);
    if (group_size < 2 || !(alpha_s >= 0) || !(beta_s > 0) || !isfinite(alpha_s + beta_s))
        return err_set(err, "fit of %s over %d ranks at %s: alpha %g s, beta %g s/B is not a "
                       "usable line", collective, group_size, level, alpha_s, beta_s);
    if (m->nfits == LINK_MAX_FITS) return err_set(err, "more than %d link fits", LINK_MAX_FITS);
    m->fits[m->nfits++] = (Fit){ .coll = k, .group_size = group_size, .level = l,
                                 .alpha = alpha_s, .beta = beta_s };
    snprintf(m->describe, sizeof m->describe,
             "profile alpha-beta fits (%d; analytic from cluster %s where none)", m->nfits,
             m->c->name);
    return 0;
}

int linkmodel_add_point(LinkModel *m, const char *collective, int group_size, const char *level,
                        int64_t bytes, double time_s, Err *err)
{
    int k = coll_parse(collective), l = level_of(m, level);
    Fit *f = NULL;
    for (int i = 0; i < m->nfits && !f; i++)
        if (m->fits[i].coll == k && m->fits[i].group_size == group_size && m->fits[i].level == l)
            f = &m->fits[i];
    if (k < 0 || l == m->c->nlevels || !f)
        return err_set(err, "point of %s over %d ranks at %s: no fit of it to add to", collective,
                       group_size, level);
    if (bytes <= 0 || !(time_s > 0) || !isfinite(time_s))
        return err_set(err, "point of %s over %d ranks at %s: %lld bytes in %g s is not a "
                       "measurement", collective, group_size, level, (long long)bytes, time_s);
    int j = f->npt;
    f->pt = xrealloc(f->pt, sizeof *f->pt * (size_t)(f->npt + 1));
    while (j > 0 && f->pt[j - 1][0] > (double)bytes) {
        f->pt[j][0] = f->pt[j - 1][0];
        f->pt[j][1] = f->pt[j - 1][1];
        j--;
    }
    if (j > 0 && f->pt[j - 1][0] == (double)bytes) {
        /* the same size again: keep the mean (undo the shift) */
        f->pt[j - 1][1] = 0.5 * (f->pt[j - 1][1] + time_s);
        memmove(&f->pt[j], &f->pt[j + 1], sizeof *f->pt * (size_t)(f->npt - j));
        return 0;
    }
    f->pt[j][0] = (double)bytes;
    f->pt[j][1] = time_s;
    f->npt++;
    snprintf(m->describe, sizeof m->describe,
             "profile fits (%d) with their measured sizes; analytic from cluster %s where none",
             m->nfits, m->c->name);
    return 0;
}

const char *linkmodel_describe(const LinkModel *m)
{
    return m->describe;
}

/* nccl-tests' bus bandwidth factor: the share of the buffer each rank moves. */
static double bus_factor(InstrKind k, int n)
{
    if (n < 2) return 0;
    switch (k) {
    case I_ALLREDUCE: return 2.0 * (n - 1) / n;
    case I_ALLGATHER: case I_REDUCE_SCATTER: case I_ALL_TO_ALL: return (double)(n - 1) / n;
    default: return 1;
    }
}

/* Latency terms of one algorithm instance: a ring pays a step per peer. */
static double hops(InstrKind k, SyncAlgo algo, int n)
{
    if (n < 2) return 0;
    if (k == I_ALLREDUCE && algo == ALGO_TREE) return 2 * ceil(log2(n));
    if (k == I_ALLREDUCE) return 2.0 * (n - 1);
    if (k == I_SEND || k == I_RECV) return 1;
    return n - 1;
}

static double flat(const Level *L, InstrKind k, SyncAlgo algo, double B, int n)
{
    if (n < 2) return 0;
    double factor = bus_factor(k, n);
    /* a tree all-reduce moves the buffer up and down once each */
    if (k == I_ALLREDUCE && algo == ALGO_TREE) factor = 2;
    return hops(k, algo, n) * L->latency + factor * B / L->bw;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Fan-out of the group per level: f[l] members (l = 0) or level-(l-1) items
 * (l > 0) inside the first member's level-l item. Returns the outermost
 * level with f > 1 (-1 for a group of one). */
static int fanout(const Cluster *c, const int *ranks, int n, int f[CLUSTER_MAX_LEVELS])
{
    int outer = -1;
    int64_t span = 1;
    /* the groups of a plan are small: on the stack, sorted in place */
    int64_t small[64];
    int64_t *seen = n <= 64 ? small : xmalloc(sizeof *seen * (size_t)n);
    for (int l = 0; l < c->nlevels; l++) {
        int64_t below = span;      /* devices in one level-(l-1) item (1 at l = 0) */
        span *= c->levels[l].count;
        int64_t item = ranks[0] / span;
        /* distinct sub-items of the first member's level-l item, counted
         * sorted (a group of a million ranks: not a million squared) */
        int nsub = 0, nseen = 0;
        for (int i = 0; i < n; i++)
            if (ranks[i] / span == item) seen[nsub++] = ranks[i] / below;
        if (nsub <= 64) {
            for (int i = 1; i < nsub; i++)
                for (int j = i; j > 0 && seen[j - 1] > seen[j]; j--) {
                    int64_t x = seen[j];
                    seen[j] = seen[j - 1];
                    seen[j - 1] = x;
                }
        } else {
            qsort(seen, (size_t)nsub, sizeof *seen, cmp_i64);
        }
        for (int i = 0; i < nsub; i++) nseen += i == 0 || seen[i] != seen[i - 1];
        f[l] = nseen > 0 ? nseen : 1;
        if (f[l] > 1) outer = l;
    }
    if (seen != small) free(seen);
    return outer;
}

static const Fit *find_fit(const LinkModel *m, InstrKind k, int level, int n)
{
    int kk = (k == I_RECV) ? I_SEND : k;
    const Fit *best = NULL;
    for (int i = 0; i < m->nfits; i++) {
        const Fit *f = &m->fits[i];
        if (f->coll != kk || f->level != level) continue;
        if (!best || abs(f->group_size - n) < abs(best->group_size - n)) best = f;
    }
    return best;
}

/* The fit for kind k (an fp16 all-reduce falls back to the float one's). */
static const Fit *fit_of(const LinkModel *m, InstrKind k, int level, int n)
{
    const Fit *f = find_fit(m, k, level, n);
    return f || k != LINK_ALLREDUCE_F16 ? f : find_fit(m, I_ALLREDUCE, level, n);
}

/* The measured times of f at B bytes, piecewise linear (see
 * linkmodel_add_point). */
static double from_points(const Fit *f, double B)
{
    const double (*p)[2] = f->pt;
    int n = f->npt;
    if (B <= p[0][0]) return p[0][1];
    int j = 1;
    while (j < n - 1 && p[j][0] < B) j++;
    double beta = (p[j][1] - p[j - 1][1]) / (p[j][0] - p[j - 1][0]);
    if (B > p[n - 1][0])            /* on from the largest (its own bandwidth if noise fell) */
        return p[n - 1][1] + (beta > 0 ? beta : p[n - 1][1] / p[n - 1][0]) * (B - p[n - 1][0]);
    return fmax(p[j - 1][1] + beta * (B - p[j - 1][0]), p[0][1]);
}

static double from_fit(const Fit *f, InstrKind k, SyncAlgo algo, double B, int n)
{
    if (f->group_size == n && f->npt >= 2) return from_points(f, B);
    if (f->group_size == n) return f->alpha + f->beta * B;
    double hs = hops(k, algo, n) / fmax(1, hops(k, algo, f->group_size));
    double bs = bus_factor(k, n) / fmax(1e-9, bus_factor(k, f->group_size));
    return f->alpha * hs + f->beta * B * bs;
}

/* Hierarchical cost over levels lo..hi of fan-outs f: reduce-scatter or
 * gather inside the innermost level with f > 1, the rest on the shard. */
static double hier(const LinkModel *m, InstrKind k, SyncAlgo algo, double B, const int *f, int lo,
                   int hi)
{
    while (lo <= hi && f[lo] < 2) lo++;
    if (lo > hi) return 0;
    const Level *L = &m->c->levels[lo];
    if (lo == hi) {
        const Fit *fit = find_fit(m, k, lo, f[lo]);
        return fit ? from_fit(fit, k, algo, B, f[lo]) : flat(L, k, algo, B, f[lo]);
    }
    int n = f[lo];
    switch (k) {
    case I_ALLREDUCE: {
        double rs = flat(L, I_REDUCE_SCATTER, ALGO_RING, B, n);
        return 2 * rs + hier(m, I_ALLREDUCE, algo, B / n, f, lo + 1, hi);
    }
    case I_ALLGATHER: case I_REDUCE_SCATTER:
        /* the outer part moves whole inner blocks, the inner part the buffer */
        return flat(L, k, ALGO_RING, B, n) + hier(m, k, algo, B / n, f, lo + 1, hi);
    default:
        return flat(L, k, algo, B, n) + hier(m, k, algo, B, f, lo + 1, hi);
    }
}

double linkmodel_time(const LinkModel *m, InstrKind how, SyncAlgo algo, int64_t bytes,
                      const int *ranks, int n)
{
    const Cluster *c = m->c;
    /* `how` picks the fits; the algorithm is the kind's */
    InstrKind kind = how == LINK_ALLREDUCE_F16 ? I_ALLREDUCE : how;
    double B = (double)bytes;
    if (n < 2 || bytes < 0) return 0;
    if (kind == I_SEND || kind == I_RECV) {
        int l = cluster_common_level(c, ranks[0], ranks[1]);
        const Fit *fit = find_fit(m, I_SEND, l, 2);
        return fit ? from_fit(fit, I_SEND, ALGO_RING, B, 2) : flat(&c->levels[l], I_SEND, algo, B, 2);
    }
    int f[CLUSTER_MAX_LEVELS];
    int outer = fanout(c, ranks, n, f);
    if (outer < 0) return 0;
    int inner = 0;
    while (f[inner] < 2) inner++;
    if (inner == outer) {
        const Fit *fit = fit_of(m, how, outer, n);
        return fit ? from_fit(fit, kind, algo, B, n) : flat(&c->levels[outer], kind, algo, B, n);
    }
    if (kind == I_ALLREDUCE && algo == ALGO_HIERARCHICAL)
        return hier(m, kind, algo, B, f, 0, outer);
    /* one flat ring (or tree) over every member: the slowest level's links
     * carry the buffer, each level's latency is paid on its hops */
    const Fit *fit = fit_of(m, how, outer, n);
    if (fit) return from_fit(fit, kind, algo, B, n);
    double bw = c->levels[outer].bw, lat = 0;
    for (int l = 0; l <= outer; l++) {
        if (c->levels[l].bw < bw) bw = c->levels[l].bw;
        if (c->levels[l].latency > lat) lat = c->levels[l].latency;
    }
    Level L = { .bw = bw, .latency = lat };
    return flat(&L, kind, algo, B, n);
}
