/*
 * links.c — every collective of the comm table, timed the way nccl-tests
 * times it: results checked on patterned data, warm-up, then timed
 * iterations; the time of a size is the slowest member's mean per iteration,
 * algbw = size / time, busbw = algbw * the collective's bus factor.
 *
 * Groups: ranks on one host form the innermost level (`level_inner`), one
 * rank per host the next ("node"); at each level the group sizes 2, 4, 8, ...
 * and the level's full width. One group runs at a time while the others wait,
 * so a measurement never shares a link with another. Every rank walks the same
 * loops; two world all-reduces per size agree on the iteration count, a wrong
 * result and a stop request (Ctrl-C), and take the slowest member's time.
 *
 * Legend: W = world, g = group size, me = index in the group, S = size in
 * bytes (nccl-tests' "size": the all_reduce buffer, the all_gather output,
 * the reduce_scatter input, the all_to_all buffer, one send).
 */
#include "profiler/profile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "executor/kernels.h"
#include "ir/util.h"
#include "profiler/stats.h"

/* in COLLECTIVE_NAMES order */
enum { C_ALLREDUCE, C_ALLGATHER, C_REDUCE_SCATTER, C_ALL_TO_ALL, C_BROADCAST, C_SEND_RECV,
       C_ALLREDUCE_F16 };

typedef struct {
    const char *level;
    int g;
    int *ranks;                    /* world ranks, group order */
} GroupSpec;

typedef struct {
    Comm *c;
    CommGroup *world;
    CommGroup *grp;                /* NULL when this rank is not a member */
    int g, me;
    float *send, *recv;            /* max_bytes each */
} Ctx;

/* --- one collective call ------------------------------------------------------ */

/* Elements per call for size S; 0 when S is too small for the group (a block
 * of at least one element per member). */
static int64_t coll_count(int coll, int64_t S, int g)
{
    int64_t e = S / 4;
    switch (coll) {
    case C_ALLREDUCE_F16: return S / 2;
    case C_ALLGATHER: case C_REDUCE_SCATTER: case C_ALL_TO_ALL: return e / g;
    default: return e;
    }
}

/* The size a call of `count` elements really moves (S rounded down). */
static int64_t coll_bytes(int coll, int64_t count, int g)
{
    switch (coll) {
    case C_ALLGATHER: case C_REDUCE_SCATTER: case C_ALL_TO_ALL: return count * g * 4;
    case C_ALLREDUCE_F16: return count * 2;
    default: return count * 4;
    }
}

static int coll_run(Ctx *x, int coll, int64_t n, Err *err)
{
    const CommOps *o = x->c->ops;
    switch (coll) {
    case C_ALLREDUCE: return o->allreduce(x->grp, x->recv, n, CT_F32, RED_SUM, err);
    case C_ALLGATHER: return o->allgather(x->grp, x->send, x->recv, n, CT_F32, err);
    case C_REDUCE_SCATTER: return o->reduce_scatter(x->grp, x->send, x->recv, n, CT_F32, err);
    case C_ALL_TO_ALL: return o->all_to_all(x->grp, x->send, x->recv, n, CT_F32, err);
    case C_BROADCAST: return o->broadcast(x->grp, x->recv, n, CT_F32, 0, err);
    case C_ALLREDUCE_F16: return o->allreduce(x->grp, x->recv, n, CT_F16, RED_SUM, err);
    default: {
        /* a ring: send to the next member, receive from the previous */
        CommReq *req = NULL;
        int next = (x->me + 1) % x->g, prev = (x->me + x->g - 1) % x->g;
        if (o->isend(x->grp, x->send, n, CT_F32, next, 1, &req, err)) return -1;
        int rc = o->recv(x->grp, x->recv, n, CT_F32, prev, 1, err);
        int rw = o->wait(req, rc ? NULL : err);
        return rc || rw ? -1 : 0;
    }
    }
}

/* Patterned data whose results are exact in f32 (small integers), and the
 * check of them. Returns the number of wrong elements. */
static void check_fill(Ctx *x, int coll, int64_t n)
{
    int me = x->me, g = x->g;
    if (coll == C_ALLREDUCE_F16) {
        /* halves of 1 and 2: sums exact in half precision up to 1024 ranks */
        uint16_t h[2], *r = (uint16_t *)x->recv;
        kernel_to_fp16((const float[]){ 1, 2 }, h, 2);
        for (int64_t i = 0; i < n; i++) r[i] = h[i % 2];
        return;
    }
    int64_t ns = coll == C_ALLGATHER ? n : coll == C_REDUCE_SCATTER || coll == C_ALL_TO_ALL ? n * g : n;
    for (int64_t i = 0; i < ns; i++) {
        switch (coll) {
        case C_ALLREDUCE: x->recv[i] = (float)((me + 1) * (i % 7 + 1)); break;
        case C_ALLGATHER: x->send[i] = (float)(me * 1000 + i % 1000); break;
        case C_REDUCE_SCATTER: x->send[i] = (float)((me + 1) * (i % 5 + 1)); break;
        case C_ALL_TO_ALL: x->send[i] = (float)(me * 64 + i / n + (i % 4) * 4096); break;
        case C_BROADCAST: x->recv[i] = me == 0 ? (float)(i % 251 + 1) : 0; break;
        default: x->send[i] = (float)(me * 7 + i % 11); break;
        }
    }
}

static int64_t check_count(const Ctx *x, int coll, int64_t n)
{
    int me = x->me, g = x->g;
    int64_t wrong = 0, nr = coll == C_ALLGATHER || coll == C_ALL_TO_ALL ? n * g : n;
    float tri = (float)(g * (g + 1) / 2);
    if (coll == C_ALLREDUCE_F16) {
        uint16_t h[2];
        const uint16_t *r = (const uint16_t *)x->recv;
        kernel_to_fp16((const float[]){ (float)g, (float)(2 * g) }, h, 2);
        for (int64_t i = 0; i < n; i++) wrong += r[i] != h[i % 2];
        return wrong;
    }
    for (int64_t i = 0; i < nr; i++) {
        float want;
        switch (coll) {
        case C_ALLREDUCE: want = tri * (float)(i % 7 + 1); break;
        case C_ALLGATHER: want = (float)((i / n) * 1000 + (i % n) % 1000); break;
        case C_REDUCE_SCATTER: want = tri * (float)((me * n + i) % 5 + 1); break;
        case C_ALL_TO_ALL: want = (float)((i / n) * 64 + me + ((me * n + i % n) % 4) * 4096); break;
        case C_BROADCAST: want = (float)(i % 251 + 1); break;
        default: want = (float)(((me + g - 1) % g) * 7 + i % 11); break;
        }
        if (x->recv[i] != want) wrong++;
    }
    return wrong;
}

/* --- the world agrees ----------------------------------------------------------- */

/* Element-wise max over the world of v[0..n). */
static int world_max(Ctx *x, float *v, int n, Err *err)
{
    return x->c->ops->allreduce(x->world, v, n, CT_F32, RED_MAX, err);
}

typedef struct {
    int warmup, min_iters, max_iters;
    double target;         /* timed seconds per size */
} Iters;

/* Measures one size; *t the slowest member's seconds per iteration. Returns
 * 1 when a stop was requested (nothing measured), -1 on error. */
static int measure(Ctx *x, const LinkOpts *o, const Iters *it, int coll, int64_t n, double *t,
                   int *iters, Err *err)
{
    float agree[3] = { 0, 0, 0 };  /* one iteration's time, wrong elements, stop */
    if (x->grp) {
        check_fill(x, coll, n);
        if (coll_run(x, coll, n, err)) return -1;
        agree[1] = (float)check_count(x, coll, n);
        /* timing runs on zeros: an in-place all-reduce would grow the data */
        memset(x->send, 0, (size_t)coll_bytes(coll, n, x->g) * 1);
        memset(x->recv, 0, (size_t)coll_bytes(coll, n, x->g) * 1);
        for (int w = 0; w < it->warmup; w++)
            if (coll_run(x, coll, n, err)) return -1;
        double t0 = prof_now();
        if (coll_run(x, coll, n, err)) return -1;
        agree[0] = (float)(prof_now() - t0);
    }
    agree[2] = o->stop && *o->stop ? 1 : 0;
    if (world_max(x, agree, 3, err)) return -1;
    if (agree[1] > 0)
        return err_set(err, "%s of %lld bytes over %d ranks returned %.0f wrong elements",
                       COLLECTIVE_NAMES[coll], (long long)coll_bytes(coll, n, x->g), x->g,
                       (double)agree[1]);
    if (agree[2] > 0) return 1;
    int k = (int)ceil(it->target / fmax(agree[0], 1e-7));
    if (k < it->min_iters) k = it->min_iters;
    if (k > it->max_iters) k = it->max_iters;
    float tm[1] = { 0 };
    if (x->grp) {
        double t0 = prof_now();
        for (int i = 0; i < k; i++)
            if (coll_run(x, coll, n, err)) return -1;
        tm[0] = (float)((prof_now() - t0) / k);
    }
    if (world_max(x, tm, 1, err)) return -1;
    *t = tm[0];
    *iters = k;
    return 0;
}

/* --- groups ---------------------------------------------------------------------- */

/* Host of every world rank, as the index of its first rank's host. */
static int hosts(Ctx *x, int *host, Err *err)
{
    enum { HN = 64 };
    char me[HN] = {0};
    gethostname(me, HN - 1);
    char *all = xcalloc((size_t)x->c->world, HN);
    int rc = x->c->ops->allgather(x->world, me, all, HN, CT_BYTE, err);
    if (!rc) {
        for (int r = 0; r < x->c->world; r++) {
            host[r] = r;
            for (int q = 0; q < r; q++)
                if (!memcmp(all + (size_t)q * HN, all + (size_t)r * HN, HN)) {
                    host[r] = host[q];
                    break;
                }
        }
    }
    free(all);
    return rc;
}

/* Group sizes 2, 4, 8, ... up to width, and width itself. */
static int group_sizes(int width, int *out)
{
    int n = 0;
    for (int g = 2; g <= width; g *= 2) out[n++] = g;
    if (width >= 2 && (n == 0 || out[n - 1] != width)) out[n++] = width;
    return n;
}

static int plan_groups(Ctx *x, const LinkOpts *o, GroupSpec **out, Err *err)
{
    int W = x->c->world;
    int *host = xmalloc((size_t)W * sizeof *host);
    if (hosts(x, host, err)) {
        free(host);
        return -1;
    }
    /* ranks on the first host; the first rank of every host */
    int *local = xmalloc((size_t)W * sizeof *local), *heads = xmalloc((size_t)W * sizeof *heads);
    int nlocal = 0, nheads = 0;
    for (int r = 0; r < W; r++) {
        if (host[r] == host[0]) local[nlocal++] = r;
        if (host[r] == r) heads[nheads++] = r;
    }
    GroupSpec *gs = xcalloc(64, sizeof *gs);
    int n = 0, sz[40];
    int k = group_sizes(nlocal, sz);
    for (int i = 0; i < k; i++) {
        gs[n] = (GroupSpec){ o->level_inner, sz[i], xmalloc((size_t)sz[i] * sizeof(int)) };
        memcpy(gs[n++].ranks, local, (size_t)sz[i] * sizeof(int));
    }
    k = group_sizes(nheads, sz);
    for (int i = 0; i < k; i++) {
        gs[n] = (GroupSpec){ "node", sz[i], xmalloc((size_t)sz[i] * sizeof(int)) };
        memcpy(gs[n++].ranks, heads, (size_t)sz[i] * sizeof(int));
    }
    free(host);
    free(local);
    free(heads);
    *out = gs;
    return n;
}

/* --- the sweep --------------------------------------------------------------------- */

static int nsizes(int64_t max_bytes)
{
    int n = 0;
    for (int64_t s = 4; s <= max_bytes; s *= 2) n++;
    return n;
}

int prof_links(Comm *c, const LinkOpts *o, bool *stopped, Err *err)
{
    *stopped = false;
    if (o->max_bytes < 4) return err_set(err, "the largest message must be at least 4 bytes");
    Ctx x = { .c = c };
    int *all = xmalloc((size_t)c->world * sizeof *all);
    for (int r = 0; r < c->world; r++) all[r] = r;
    x.world = c->ops->group_new(c, all, c->world, c->rank, err);
    free(all);
    if (!x.world) return -1;
    GroupSpec *gs = NULL;
    int ng = plan_groups(&x, o, &gs, err), rc = -1;
    DbProfileLink *samples = NULL;
    if (ng < 0) goto done;
    x.send = xmalloc((size_t)o->max_bytes);
    x.recv = xmalloc((size_t)o->max_bytes);
    Iters it = o->quick ? (Iters){ 2, 3, 50, 0.02 } : (Iters){ 5, 5, 200, 0.1 };
    int ns = nsizes(o->max_bytes);
    samples = xcalloc((size_t)ns, sizeof *samples);

    /* progress: a size weighs its bytes (at ~1 GB/s) plus a fixed cost */
    Progress pr;
    double total = 0;
    for (int s = 0; s < ns; s++) total += 0.01 + (double)((int64_t)4 << s) * 1e-9;
    progress_begin(&pr, "links", total * ng * COLLECTIVE_COUNT, o->quiet || c->rank != 0);

    for (int gi = 0; gi < ng && !*stopped; gi++) {
        GroupSpec *g = &gs[gi];
        x.g = g->g;
        x.me = -1;
        for (int i = 0; i < g->g; i++)
            if (g->ranks[i] == c->rank) x.me = i;
        x.grp = x.me >= 0 ? c->ops->group_new(c, g->ranks, g->g, x.me, err) : NULL;
        if (x.me >= 0 && !x.grp) goto done;
        for (int coll = 0; coll < COLLECTIVE_COUNT && !*stopped; coll++) {
            int nsamp = 0;
            char what[48];
            snprintf(what, sizeof what, "%s g=%d %s", COLLECTIVE_NAMES[coll], g->g, g->level);
            for (int s = 0; s < ns; s++) {
                int64_t S = (int64_t)4 << s, n = coll_count(coll, S, g->g);
                progress_add(&pr, 0.01 + S * 1e-9, what);
                if (n < 1) continue;
                double t = 0;
                int iters = 0, r = measure(&x, o, &it, coll, n, &t, &iters, err);
                if (r < 0) {
                    err_prefix(err, "%s", what);
                    if (x.grp) c->ops->group_free(x.grp);
                    x.grp = NULL;
                    goto done;
                }
                if (r > 0) {
                    *stopped = true;
                    break;
                }
                int64_t B = coll_bytes(coll, n, g->g);
                double alg = B / t;
                samples[nsamp++] = (DbProfileLink){
                    .collective = (char *)COLLECTIVE_NAMES[coll], .group_size = g->g,
                    .level = (char *)g->level, .bytes = B, .time_s = t, .algbw = alg,
                    .busbw = alg * coll_bus_factor(COLLECTIVE_NAMES[coll], g->g), .iters = iters };
            }
            /* a sweep cut short is not stored: its fit would be skewed. The
             * world learns whether rank 0 could store it. */
            float failed[1] = { 0 };
            if (!*stopped && c->rank == 0 && nsamp && o->sink && o->sink(o->ctx, samples, nsamp, err))
                failed[0] = 1;
            Err e2 = {0};
            if (world_max(&x, failed, 1, failed[0] ? &e2 : err) || failed[0]) {
                if (c->rank != 0 && failed[0]) err_set(err, "rank 0 could not store the samples");
                if (x.grp) c->ops->group_free(x.grp);
                x.grp = NULL;
                goto done;
            }
        }
        if (x.grp) c->ops->group_free(x.grp);
        x.grp = NULL;
    }
    progress_end(&pr, *stopped);
    rc = 0;
done:
    for (int i = 0; i < ng; i++) free(gs[i].ranks);
    free(gs);
    free(samples);
    free(x.send);
    free(x.recv);
    c->ops->group_free(x.world);
    return rc;
}
