/*
 * mpi_comm.c — the MPI backend of comm.h, run under mpirun (-np 4; any size
 * works). Every rank contributes values that are a function of its world rank
 * and the element index, so each collective's result is checked exactly
 * against its closed form: for the whole world, for the two axes of a 2x2 mesh
 * ({0,1},{2,3} and {0,2},{1,3}), for a reversed group, for a rotated group of
 * three beside a group of one, and for groups of one. Everything runs twice:
 * once with MPI's own counts, once with calls cut into pieces of 7 elements
 * (STRATA_MPI_MAX_COUNT), the path taken by buffers over INT_MAX elements.
 *
 * Not cmocka: the verdict of a case is the verdict of every rank, so each rank
 * counts its failed checks, the counts meet in an MPI_Allreduce, and rank 0
 * prints one line per case and the closing "N passed, N failed". A comm call
 * that fails where it should not aborts the job (other ranks would wait in
 * the next collective forever).
 *
 * Legend: W = world size, n = group size, me = group index, g[j] = world rank
 * of member j, count = elements per block.
 */
#include <math.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "executor/comm.h"

#define MAXW 64

static int rank, world;
static int case_failures;   /* failed checks of this rank in the current case */
static Err err;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            if (case_failures++ < 8) {                                           \
                fprintf(stderr, "rank %d: %s:%d: %s: ", rank, __FILE__, __LINE__, #cond); \
                fprintf(stderr, __VA_ARGS__);                                    \
                fputc('\n', stderr);                                             \
            }                                                                    \
        }                                                                        \
    } while (0)

/* A comm call that must succeed. */
#define OK(call)                                                                 \
    do {                                                                         \
        if ((call) != 0) {                                                       \
            fprintf(stderr, "rank %d: %s:%d: %s failed: %s\n", rank, __FILE__, __LINE__, #call, \
                    err.msg);                                                    \
            MPI_Abort(MPI_COMM_WORLD, 2);                                        \
        }                                                                        \
    } while (0)

/* A call that must fail with a message containing `want`. */
#define FAILS(call, want)                                                        \
    do {                                                                         \
        err.msg[0] = 0;                                                          \
        int rc_ = (call);                                                        \
        CHECK(rc_ != 0, "%s succeeded, expected an error with \"%s\"", #call, want); \
        CHECK(strstr(err.msg, want) != NULL, "error \"%s\" lacks \"%s\"", err.msg, want); \
    } while (0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "rank %d: out of memory (%zu bytes)\n", rank, n);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}

/* ------------------------------------------------------------------------- */
/* groups of this rank, per layout                                            */

typedef struct {
    int g[MAXW];
    int n, me;
} Members;

enum { L_WORLD, L_REVERSED, L_MESH_INNER, L_MESH_OUTER, L_ROTATED, L_SELF, L_COUNT };
static const char *layout_name[L_COUNT] = {
    "world", "reversed world", "mesh inner axis {0,1},{2,3}", "mesh outer axis {0,2},{1,3}",
    "rotated three + one", "self"};

/* This rank's group under `layout` (every rank is in exactly one). */
static Members members(int layout)
{
    Members m = {.n = 0};
    int W = world;
    switch (layout) {
    case L_WORLD:
        for (int r = 0; r < W; r++) m.g[m.n++] = r;
        break;
    case L_REVERSED:
        for (int r = W - 1; r >= 0; r--) m.g[m.n++] = r;
        break;
    case L_MESH_INNER:  /* 2 x W/2 mesh, last axis fastest: pairs of neighbours */
        if (W % 2) return members(L_WORLD);
        m.g[m.n++] = rank & ~1;
        m.g[m.n++] = rank | 1;
        break;
    case L_MESH_OUTER:  /* stride 2: the other axis */
        if (W % 2) return members(L_WORLD);
        for (int r = rank % 2; r < W; r += 2) m.g[m.n++] = r;
        break;
    case L_ROTATED:     /* rank W-2 alone; the rest starting at W-1, wrapping */
        if (W < 2 || rank == W - 2) {
            m.g[m.n++] = rank;
        } else {
            for (int i = 0; i < W; i++) {
                int r = (W - 1 + i) % W;
                if (r != W - 2) m.g[m.n++] = r;
            }
        }
        break;
    default:
        m.g[m.n++] = rank;
    }
    for (int j = 0; j < m.n; j++)
        if (m.g[j] == rank) m.me = j;
    return m;
}

/* ------------------------------------------------------------------------- */
/* contributions: pure functions of (world rank, index)                       */

static float fval(int r, int64_t i) { return (float)((r + 1) * 1000 + i % 997); }
static float mval(int r, int64_t i) { return (float)((r * 37 + i * 11) % 101 - 50); }
static int32_t ival(int r, int64_t i) { return (int32_t)((r + 1) * 1000003 + i); }
static uint8_t bval(int r, int64_t i) { return (uint8_t)(r * 31 + i * 7); }
/* block j of member r's all_to_all send */
static float aval(int r, int j, int64_t k) { return (float)(r * 1000000 + j * 10000 + k % 10000); }
/* small integers: their sums are exact in f16 and bf16 */
static int hint(int r, int64_t i) { return r % 4 + (int)(i % 8); }

/* ------------------------------------------------------------------------- */
/* reference half precision, written independently of the backend: exact
 * decoding from the fields, rounding by nearbyint on a scaled value          */

typedef struct {
    int p, emin, ebits;   /* significand bits (with the implicit one), min normal exponent, exponent bits */
    double max;
} HalfFmt;
static const HalfFmt F16 = {11, -14, 5, 65504.0};
static const HalfFmt BF16 = {8, -126, 8, 3.3895313892515355e38};

static double half_decode(const HalfFmt *f, uint16_t h)
{
    int mbits = f->p - 1, bias = (1 << (f->ebits - 1)) - 1;
    int e = (h >> mbits) & ((1 << f->ebits) - 1);
    int m = h & ((1 << mbits) - 1);
    double s = (h & 0x8000) ? -1.0 : 1.0;
    if (e == (1 << f->ebits) - 1) return m ? NAN : s * INFINITY;
    if (e == 0) return s * ldexp(m, f->emin - mbits);
    return s * ldexp(m + (1 << mbits), e - bias - mbits);
}

/* Round x to the format, nearest even, overflow to infinity. */
static double half_round(const HalfFmt *f, double x)
{
    if (x == 0 || isnan(x) || isinf(x)) return x;
    int e;
    frexp(x, &e);
    int lead = e - 1 < f->emin ? f->emin : e - 1;
    double ulp = ldexp(1.0, lead - (f->p - 1));
    double r = nearbyint(x / ulp) * ulp;
    return fabs(r) > f->max ? copysign(INFINITY, x) : r;
}

/* Bits of an exactly representable value (search is fine at test sizes). */
static uint16_t half_encode(const HalfFmt *f, double x)
{
    /* sign, then the positive patterns are ordered like their values: bisect */
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    uint16_t lo = 0, hi = (uint16_t)(((1 << f->ebits) - 1) << (f->p - 1));  /* +inf */
    while (lo < hi) {
        uint16_t mid = (uint16_t)(lo + (hi - lo) / 2);
        if (half_decode(f, mid) < a) lo = (uint16_t)(mid + 1);
        else hi = mid;
    }
    return (uint16_t)(sign | lo);
}

static bool same_value(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------- */
/* the checks of one group                                                    */

typedef struct {
    const CommOps *o;
    CommGroup *grp;
    Members m;
} G;

static void check_allreduce(G *x, int64_t count)
{
    int n = x->m.n;
    float *f = xmalloc((size_t)count * sizeof *f);
    int32_t *v = xmalloc((size_t)count * sizeof *v);
    uint16_t *h = xmalloc((size_t)count * sizeof *h);

    for (int64_t k = 0; k < count; k++) f[k] = fval(rank, k);
    OK(x->o->allreduce(x->grp, f, count, CT_F32, RED_SUM, &err));
    for (int64_t k = 0; k < count; k++) {
        double want = 0;
        for (int j = 0; j < n; j++) want += fval(x->m.g[j], k);
        CHECK(f[k] == want, "f32 sum [%lld] = %g, want %g", (long long)k, f[k], want);
    }

    for (int64_t k = 0; k < count; k++) f[k] = mval(rank, k);
    OK(x->o->allreduce(x->grp, f, count, CT_F32, RED_MAX, &err));
    for (int64_t k = 0; k < count; k++) {
        float want = -INFINITY;
        for (int j = 0; j < n; j++) want = fmaxf(want, mval(x->m.g[j], k));
        CHECK(f[k] == want, "f32 max [%lld] = %g, want %g", (long long)k, f[k], want);
    }

    for (int64_t k = 0; k < count; k++) v[k] = ival(rank, k);
    OK(x->o->allreduce(x->grp, v, count, CT_I32, RED_SUM, &err));
    for (int64_t k = 0; k < count; k++) {
        int64_t want = 0;
        for (int j = 0; j < n; j++) want += ival(x->m.g[j], k);
        CHECK(v[k] == want, "i32 sum [%lld] = %d, want %lld", (long long)k, v[k], (long long)want);
    }

    for (int64_t k = 0; k < count; k++) v[k] = (int32_t)mval(rank, k);
    OK(x->o->allreduce(x->grp, v, count, CT_I32, RED_MAX, &err));
    for (int64_t k = 0; k < count; k++) {
        int32_t want = INT32_MIN;
        for (int j = 0; j < n; j++) {
            int32_t c = (int32_t)mval(x->m.g[j], k);
            if (c > want) want = c;
        }
        CHECK(v[k] == want, "i32 max [%lld] = %d, want %d", (long long)k, v[k], want);
    }

    /* f16 / bf16: exact on small integers, within the rounding bound on fractions */
    const HalfFmt *fmts[2] = {&F16, &BF16};
    const CommType cts[2] = {CT_F16, CT_BF16};
    for (int t = 0; t < 2; t++) {
        const HalfFmt *hf = fmts[t];
        for (int64_t k = 0; k < count; k++) h[k] = half_encode(hf, hint(rank, k));
        OK(x->o->allreduce(x->grp, h, count, cts[t], RED_SUM, &err));
        for (int64_t k = 0; k < count; k++) {
            int want = 0;
            for (int j = 0; j < n; j++) want += hint(x->m.g[j], k);
            CHECK(half_decode(hf, h[k]) == want, "%s sum [%lld] = %g, want %d", t ? "bf16" : "f16",
                  (long long)k, half_decode(hf, h[k]), want);
        }

        for (int64_t k = 0; k < count; k++) h[k] = half_encode(hf, mval(rank, k));
        OK(x->o->allreduce(x->grp, h, count, cts[t], RED_MAX, &err));
        for (int64_t k = 0; k < count; k++) {
            double want = -INFINITY;
            for (int j = 0; j < n; j++) want = fmax(want, mval(x->m.g[j], k));
            CHECK(half_decode(hf, h[k]) == want, "%s max [%lld] = %g, want %g", t ? "bf16" : "f16",
                  (long long)k, half_decode(hf, h[k]), want);
        }

        /* 0.1 (r+1) + 0.001 (i mod 1000), rounded to the format first; n - 1
         * roundings of at most half an ulp (u = 2^-p) of a partial sum each */
#define FRAC(r, i) half_round(hf, 0.1 * ((r) + 1) + 0.001 * (double)((i) % 1000))
        for (int64_t k = 0; k < count; k++) h[k] = half_encode(hf, FRAC(rank, k));
        OK(x->o->allreduce(x->grp, h, count, cts[t], RED_SUM, &err));
        double u = ldexp(1.0, -hf->p);
        for (int64_t k = 0; k < count; k++) {
            double want = 0, mag = 0;
            for (int j = 0; j < n; j++) {
                want += FRAC(x->m.g[j], k);
                mag += fabs(FRAC(x->m.g[j], k));
            }
            double got = half_decode(hf, h[k]), tol = n * u * mag;
            CHECK(fabs(got - want) <= tol, "%s fraction sum [%lld] = %.6g, want %.6g +- %.3g",
                  t ? "bf16" : "f16", (long long)k, got, want, tol);
        }
#undef FRAC
    }
    free(f);
    free(v);
    free(h);
}

static void check_allgather(G *x, int64_t count)
{
    int n = x->m.n, me = x->m.me;
    float *s = xmalloc((size_t)count * sizeof *s), *r = xmalloc((size_t)count * n * sizeof *r);
    uint8_t *bs = xmalloc((size_t)count), *br = xmalloc((size_t)count * n);
    int32_t *vs = xmalloc((size_t)count * 4), *vr = xmalloc((size_t)count * n * 4);

    for (int64_t k = 0; k < count; k++) {
        s[k] = fval(rank, k);
        bs[k] = bval(rank, k);
        vs[k] = ival(rank, k);
    }
    for (int64_t k = 0; k < count * n; k++) r[k] = -1;
    memset(br, 0xee, (size_t)(count * n));
    OK(x->o->allgather(x->grp, s, r, count, CT_F32, &err));
    OK(x->o->allgather(x->grp, bs, br, count, CT_BYTE, &err));
    OK(x->o->allgather(x->grp, vs, vr, count, CT_I32, &err));
    for (int j = 0; j < n; j++)
        for (int64_t k = 0; k < count; k++) {
            CHECK(r[j * count + k] == fval(x->m.g[j], k), "f32 block %d [%lld] = %g, want %g", j,
                  (long long)k, r[j * count + k], fval(x->m.g[j], k));
            CHECK(br[j * count + k] == bval(x->m.g[j], k), "byte block %d [%lld] = %d, want %d", j,
                  (long long)k, br[j * count + k], bval(x->m.g[j], k));
            CHECK(vr[j * count + k] == ival(x->m.g[j], k), "i32 block %d [%lld] wrong", j,
                  (long long)k);
        }

    /* in place: this member's block already sits at its place in recv */
    for (int64_t k = 0; k < count * n; k++) r[k] = -1;
    for (int64_t k = 0; k < count; k++) r[me * count + k] = fval(rank, k);
    OK(x->o->allgather(x->grp, r + me * count, r, count, CT_F32, &err));
    for (int j = 0; j < n; j++)
        for (int64_t k = 0; k < count; k++)
            CHECK(r[j * count + k] == fval(x->m.g[j], k), "in place: block %d [%lld] = %g, want %g",
                  j, (long long)k, r[j * count + k], fval(x->m.g[j], k));
    free(s);
    free(r);
    free(bs);
    free(br);
    free(vs);
    free(vr);
}

static void check_reduce_scatter(G *x, int64_t count)
{
    int n = x->m.n, me = x->m.me;
    float *s = xmalloc((size_t)count * n * sizeof *s), *r = xmalloc((size_t)count * sizeof *r);
    int32_t *vs = xmalloc((size_t)count * n * 4), *vr = xmalloc((size_t)count * 4);
    uint16_t *hs = xmalloc((size_t)count * n * 2), *hr = xmalloc((size_t)count * 2);

    for (int64_t k = 0; k < count * n; k++) {
        s[k] = fval(rank, k);
        vs[k] = ival(rank, k);
        hs[k] = half_encode(&F16, hint(rank, k));
    }
    for (int64_t k = 0; k < count; k++) r[k] = -1;
    OK(x->o->reduce_scatter(x->grp, s, r, count, CT_F32, &err));
    OK(x->o->reduce_scatter(x->grp, vs, vr, count, CT_I32, &err));
    OK(x->o->reduce_scatter(x->grp, hs, hr, count, CT_F16, &err));
    for (int64_t k = 0; k < count; k++) {
        int64_t i = me * count + k;
        double want = 0;
        int64_t vwant = 0;
        int hwant = 0;
        for (int j = 0; j < n; j++) {
            want += fval(x->m.g[j], i);
            vwant += ival(x->m.g[j], i);
            hwant += hint(x->m.g[j], i);
        }
        CHECK(r[k] == want, "f32 [%lld] = %g, want %g", (long long)k, r[k], want);
        CHECK(vr[k] == vwant, "i32 [%lld] = %d, want %lld", (long long)k, vr[k], (long long)vwant);
        CHECK(half_decode(&F16, hr[k]) == hwant, "f16 [%lld] = %g, want %d", (long long)k,
              half_decode(&F16, hr[k]), hwant);
    }

    /* in place (send == recv): the result is the first block */
    for (int64_t k = 0; k < count * n; k++) s[k] = fval(rank, k);
    OK(x->o->reduce_scatter(x->grp, s, s, count, CT_F32, &err));
    for (int64_t k = 0; k < count; k++) {
        double want = 0;
        for (int j = 0; j < n; j++) want += fval(x->m.g[j], me * count + k);
        CHECK(s[k] == want, "in place [%lld] = %g, want %g", (long long)k, s[k], want);
    }
    free(s);
    free(r);
    free(vs);
    free(vr);
    free(hs);
    free(hr);
}

static void check_all_to_all(G *x, int64_t count)
{
    int n = x->m.n, me = x->m.me;
    float *s = xmalloc((size_t)count * n * sizeof *s), *r = xmalloc((size_t)count * n * sizeof *r);
    uint8_t *bs = xmalloc((size_t)count * n), *br = xmalloc((size_t)count * n);
    for (int j = 0; j < n; j++)
        for (int64_t k = 0; k < count; k++) {
            s[j * count + k] = aval(rank, j, k);
            bs[j * count + k] = (uint8_t)(rank * 16 + j + k);
            r[j * count + k] = -1;
        }
    OK(x->o->all_to_all(x->grp, s, r, count, CT_F32, &err));
    OK(x->o->all_to_all(x->grp, bs, br, count, CT_BYTE, &err));
    for (int j = 0; j < n; j++)
        for (int64_t k = 0; k < count; k++) {
            float want = aval(x->m.g[j], me, k);
            CHECK(r[j * count + k] == want, "block %d [%lld] = %g, want %g", j, (long long)k,
                  r[j * count + k], want);
            CHECK(br[j * count + k] == (uint8_t)(x->m.g[j] * 16 + me + k), "byte block %d [%lld]",
                  j, (long long)k);
        }
    free(s);
    free(r);
    free(bs);
    free(br);
}

static void check_broadcast(G *x, int64_t count)
{
    int n = x->m.n, me = x->m.me;
    float *f = xmalloc((size_t)count * sizeof *f);
    uint16_t *h = xmalloc((size_t)count * 2);
    int roots[2] = {n - 1, n / 2};  /* the last member, then one in the middle */
    for (int t = 0; t < 2; t++) {
        int root = roots[t], gr = x->m.g[root];
        for (int64_t k = 0; k < count; k++) {
            f[k] = me == root ? fval(rank, k) : -1;
            h[k] = me == root ? half_encode(&BF16, hint(rank, k)) : 0xffff;
        }
        OK(x->o->broadcast(x->grp, f, count, CT_F32, root, &err));
        OK(x->o->broadcast(x->grp, h, count, CT_BF16, root, &err));
        for (int64_t k = 0; k < count; k++) {
            CHECK(f[k] == fval(gr, k), "root %d: [%lld] = %g, want %g", root, (long long)k, f[k],
                  fval(gr, k));
            CHECK(half_decode(&BF16, h[k]) == hint(gr, k), "root %d: bf16 [%lld]", root,
                  (long long)k);
        }
    }
    free(f);
    free(h);
}

/* A ring: member i sends to i+1 and receives from i-1. Even members send
 * first, odd ones receive first, so blocking sends of any size cannot
 * deadlock. Two messages per hop, told apart by their tags. Then the same
 * with sends posted by isend in both directions before any recv. */
static void check_ring(G *x, int64_t count)
{
    int n = x->m.n, me = x->m.me, next = (me + 1) % n, prev = (me + n - 1) % n;
    int gp = x->m.g[prev];
    float *a = xmalloc((size_t)count * sizeof *a), *ra = xmalloc((size_t)count * sizeof *ra);
    int32_t *b = xmalloc((size_t)count * 4), *rb = xmalloc((size_t)count * 4);
    for (int64_t k = 0; k < count; k++) {
        a[k] = fval(rank, k);
        b[k] = ival(rank, k);
        ra[k] = -1;
        rb[k] = -1;
    }
    for (int phase = 0; phase < 2; phase++) {
        if ((phase == 0) == (me % 2 == 0)) {
            OK(x->o->send(x->grp, a, count, CT_F32, next, 11, &err));
            OK(x->o->send(x->grp, b, count, CT_I32, next, 12, &err));
        } else {
            OK(x->o->recv(x->grp, ra, count, CT_F32, prev, 11, &err));
            OK(x->o->recv(x->grp, rb, count, CT_I32, prev, 12, &err));
        }
    }
    for (int64_t k = 0; k < count; k++) {
        CHECK(ra[k] == fval(gp, k), "from member %d: [%lld] = %g, want %g", prev, (long long)k, ra[k],
              fval(gp, k));
        CHECK(rb[k] == ival(gp, k), "from member %d: i32 [%lld] = %d", prev, (long long)k, rb[k]);
    }

    /* Crossed, as 1F1B's neighbouring stages: everyone posts both sends
     * (forward to next, backward to prev) before receiving either. */
    int gn = x->m.g[next];
    for (int64_t k = 0; k < count; k++) {
        ra[k] = -1;
        rb[k] = -1;
    }
    CommReq *qa = NULL, *qb = NULL;
    OK(x->o->isend(x->grp, a, count, CT_F32, next, 21, &qa, &err));
    OK(x->o->isend(x->grp, b, count, CT_I32, prev, 22, &qb, &err));
    OK(x->o->recv(x->grp, ra, count, CT_F32, prev, 21, &err));
    OK(x->o->recv(x->grp, rb, count, CT_I32, next, 22, &err));
    OK(x->o->wait(qa, &err));
    OK(x->o->wait(qb, &err));
    for (int64_t k = 0; k < count; k++) {
        CHECK(ra[k] == fval(gp, k), "crossed, from member %d: [%lld] = %g", prev, (long long)k, ra[k]);
        CHECK(rb[k] == ival(gn, k), "crossed, from member %d: i32 [%lld] = %d", next, (long long)k,
              rb[k]);
    }
    free(a);
    free(ra);
    free(b);
    free(rb);
}

static const int64_t counts_plain[] = {0, 1, 7, 1000, 100003};
static const int64_t counts_pieces[] = {0, 1, 6, 7, 8, 22};

static void run_layout(Comm *c, int layout, bool pieces)
{
    G x = {.o = c->ops, .m = members(layout)};
    x.grp = c->ops->group_new(c, x.m.g, x.m.n, x.m.me, &err);
    if (!x.grp) {
        fprintf(stderr, "rank %d: group_new (%s) failed: %s\n", rank, layout_name[layout], err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const int64_t *counts = pieces ? counts_pieces : counts_plain;
    int nc = pieces ? (int)(sizeof counts_pieces / sizeof *counts_pieces)
                    : (int)(sizeof counts_plain / sizeof *counts_plain);
    for (int i = 0; i < nc; i++) {
        check_allreduce(&x, counts[i]);
        check_allgather(&x, counts[i]);
        check_reduce_scatter(&x, counts[i]);
        check_all_to_all(&x, counts[i]);
        check_broadcast(&x, counts[i]);
        check_ring(&x, counts[i]);
    }
    c->ops->group_free(x.grp);
}

/* ------------------------------------------------------------------------- */
/* cases that need no layout                                                  */

/* f16/bf16 rounding of sums: ranks 0 and 1 contribute a and b, the rest zero,
 * so the result is round(a + b) whatever order MPI combines them in. Every
 * f16 pattern round-trips (a + 0), random pairs match the reference, and a
 * few ties, overflows and subnormals are spelled out. */
static void check_half_rounding(Comm *c)
{
    if (world < 2) return;
    Members m = members(L_WORLD);
    CommGroup *g = c->ops->group_new(c, m.g, m.n, m.me, &err);
    if (!g) {
        fprintf(stderr, "rank %d: group_new: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    enum { N = 65536 + 4096 };
    uint16_t *a = xmalloc(N * 2), *b = xmalloc(N * 2), *h = xmalloc(N * 2);
    const HalfFmt *fmts[2] = {&F16, &BF16};
    for (int t = 0; t < 2; t++) {
        const HalfFmt *hf = fmts[t];
        uint64_t seed = 42 + (uint64_t)t;
        for (int i = 0; i < 65536; i++) {
            a[i] = (uint16_t)i;
            b[i] = 0;
        }
        for (int i = 65536; i < N; i++) {
            uint64_t z = splitmix(&seed);
            a[i] = (uint16_t)z;
            /* b within a few binades of a, so the sum rounds for real */
            b[i] = (uint16_t)((z >> 16) & 0x83ff) | (uint16_t)(a[i] & 0x7c00);
            if (t) b[i] = (uint16_t)(((z >> 16) & 0x807f) | (a[i] & 0x7f80));
        }
        /* spelled-out cases: [a, b, want] */
        static const uint16_t f16_cases[][3] = {
            {0x3c00, 0x1000, 0x3c00},  /* 1 + 2^-11: a tie, to even 1 */
            {0x3c01, 0x1000, 0x3c02},  /* 1+2^-10 + 2^-11: a tie, to even 1+2^-9 */
            {0x7bff, 0x4c00, 0x7c00},  /* 65504 + 16 = 65520 overflows to inf */
            {0x7bff, 0x4bff, 0x7bff},  /* 65504 + 15.99 stays 65504 */
            {0x0001, 0x0001, 0x0002},  /* subnormals add exactly */
            {0x03ff, 0x0001, 0x0400},  /* the largest subnormal + the least = 2^-14 */
            {0xbc00, 0x3c00, 0x0000},  /* -1 + 1 = +0 */
        };
        static const uint16_t bf16_cases[][3] = {
            {0x3f80, 0x3b80, 0x3f80},  /* 1 + 2^-8: a tie, to even 1 */
            {0x3f81, 0x3b80, 0x3f82},  /* 1+2^-7 + 2^-8: a tie, to even 1+2^-6 */
            {0x7f7f, 0x7f7f, 0x7f80},  /* max + max overflows to inf */
            {0x0001, 0x0001, 0x0002},  /* subnormals */
        };
        const uint16_t(*cases)[3] = t ? bf16_cases : f16_cases;
        int ncases = t ? (int)(sizeof bf16_cases / sizeof *bf16_cases)
                       : (int)(sizeof f16_cases / sizeof *f16_cases);
        for (int i = 0; i < ncases; i++) {
            a[N - ncases + i] = cases[i][0];
            b[N - ncases + i] = cases[i][1];
        }
        for (int i = 0; i < N; i++) h[i] = rank == 0 ? a[i] : rank == 1 ? b[i] : 0;
        OK(c->ops->allreduce(g, h, N, t ? CT_BF16 : CT_F16, RED_SUM, &err));
        for (int i = 0; i < N; i++) {
            double want = half_round(hf, half_decode(hf, a[i]) + half_decode(hf, b[i]));
            if (i >= N - ncases) want = half_decode(hf, cases[i - (N - ncases)][2]);
            CHECK(same_value(half_decode(hf, h[i]), want), "%s: %#06x + %#06x = %#06x (%g), want %g",
                  t ? "bf16" : "f16", a[i], b[i], h[i], half_decode(hf, h[i]), want);
        }
    }
    free(a);
    free(b);
    free(h);
    c->ops->group_free(g);
}

/* Sends to oneself are queued and matched by tag, in any order. */
static void check_self_tags(Comm *c)
{
    int me = rank;
    CommGroup *g = c->ops->group_new(c, &me, 1, 0, &err);
    if (!g) {
        fprintf(stderr, "rank %d: group_new: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    float a[3] = {1, 2, 3}, b[2] = {4, 5}, r[3] = {0};
    OK(c->ops->send(g, a, 3, CT_F32, 0, 5, &err));
    OK(c->ops->send(g, b, 2, CT_F32, 0, 6, &err));
    a[0] = -1;  /* the send copied: changing the buffer now changes nothing */
    OK(c->ops->recv(g, r, 2, CT_F32, 0, 6, &err));
    CHECK(r[0] == 4 && r[1] == 5, "tag 6 got %g %g", r[0], r[1]);
    OK(c->ops->recv(g, r, 3, CT_F32, 0, 5, &err));
    CHECK(r[0] == 1 && r[1] == 2 && r[2] == 3, "tag 5 got %g %g %g", r[0], r[1], r[2]);
    FAILS(c->ops->recv(g, r, 3, CT_F32, 0, 5, &err), "no matching send");
    CommReq *q = (CommReq *)&q;
    OK(c->ops->isend(g, b, 2, CT_F32, 0, 8, &q, &err));
    CHECK(q == NULL, "an isend to self completes at once");
    OK(c->ops->wait(q, &err));
    OK(c->ops->recv(g, r, 2, CT_F32, 0, 8, &err));
    CHECK(r[0] == 4 && r[1] == 5, "isend tag 8 got %g %g", r[0], r[1]);
    OK(c->ops->send(g, a, 3, CT_F32, 0, 7, &err));
    FAILS(c->ops->recv(g, r, 2, CT_F32, 0, 7, &err), "expects 8 bytes, the send carried 12");
    c->ops->group_free(g);  /* frees the unmatched message */
}

/* Only some ranks make a group (as a pipeline's first and last stages tie
 * their embeddings); the world's next group still forms and works. */
static void check_partial_groups(Comm *c)
{
    if (world >= 2 && rank < 2) {
        int pair[2] = {1, 0};
        CommGroup *g = c->ops->group_new(c, pair, 2, 1 - rank, &err);
        if (!g) {
            fprintf(stderr, "rank %d: group_new: %s\n", rank, err.msg);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        int32_t v = rank + 1;
        OK(c->ops->allreduce(g, &v, 1, CT_I32, RED_SUM, &err));
        CHECK(v == 3, "pair sum %d", v);
        c->ops->group_free(g);
    }
    Members m = members(L_WORLD);
    CommGroup *g = c->ops->group_new(c, m.g, m.n, m.me, &err);
    if (!g) {
        fprintf(stderr, "rank %d: group_new: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int32_t v = rank;
    OK(c->ops->allreduce(g, &v, 1, CT_I32, RED_SUM, &err));
    CHECK(v == world * (world - 1) / 2, "world sum %d", v);
    c->ops->group_free(g);
}

/* Wrong arguments are named, and MPI's own errors come back as an Err. */
static void check_errors(Comm *c)
{
    int me = rank, two[2] = {rank, rank}, out[1] = {world};
    CommGroup *g;
    FAILS(c->ops->group_new(c, two, 2, 0, &err) == NULL ? -1 : 0, "appears twice");
    FAILS(c->ops->group_new(c, out, 1, 0, &err) == NULL ? -1 : 0, "outside a world");
    FAILS(c->ops->group_new(c, &me, 1, 1, &err) == NULL ? -1 : 0, "outside a group");
    FAILS(c->ops->group_new(c, &me, 0, 0, &err) == NULL ? -1 : 0, "at least one rank");
    if (world > 1) {
        int other = (rank + 1) % world;
        FAILS(c->ops->group_new(c, &other, 1, 0, &err) == NULL ? -1 : 0, "but this process is rank");
    }

    Members m = members(L_WORLD);
    g = c->ops->group_new(c, m.g, m.n, m.me, &err);
    if (!g) {
        fprintf(stderr, "rank %d: group_new: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    uint8_t q[8] = {0};
    float f[16] = {0};
    FAILS(c->ops->allreduce(g, q, 8, CT_BYTE, RED_SUM, &err), "cannot reduce byte");
    FAILS(c->ops->reduce_scatter(g, q, q, 1, CT_BYTE, &err), "cannot reduce byte");
    FAILS(c->ops->allreduce(g, f, -1, CT_F32, RED_SUM, &err), "negative count");
    FAILS(c->ops->allreduce(g, f, 1, CT_F32, (RedOp)7, &err), "unknown reduction");
    FAILS(c->ops->broadcast(g, f, 1, CT_F32, world, &err), "root");
    FAILS(c->ops->send(g, f, 1, CT_F32, -1, 0, &err), "peer -1 is outside");
    FAILS(c->ops->recv(g, f, 1, CT_F32, 0, -3, &err), "tag -3 is outside");
    FAILS(c->ops->all_to_all(g, f, f, 1, CT_F32, &err), "in place");
    FAILS(c->ops->allgather(g, f, f, 1, (CommType)99, &err), "unknown element type");

    /* Member 1 receives fewer elements than member 0 sent: MPI reports a
     * truncation, which must come back (MPI_ERRORS_RETURN) with file:line.
     * Then it receives more than was sent: the backend names the mismatch. */
    if (world > 1 && m.me < 2) {
        int32_t v[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        if (m.me == 0) {
            OK(c->ops->send(g, v, 10, CT_I32, 1, 9, &err));
            OK(c->ops->send(g, v, 3, CT_I32, 1, 10, &err));
            OK(c->ops->send(g, v, 1, CT_I32, 1, 11, &err));
        } else {
            FAILS(c->ops->recv(g, v, 5, CT_I32, 0, 9, &err), "MPI_Recv failed");
            CHECK(strstr(err.msg, "comm_mpi.c:") != NULL, "no file:line in \"%s\"", err.msg);
            CHECK(strstr(err.msg, "TRUNCATE") != NULL || strstr(err.msg, "truncat") != NULL,
                  "\"%s\" is not MPI's truncation message", err.msg);
            FAILS(c->ops->recv(g, v, 5, CT_I32, 0, 10, &err), "expected 5 i32 elements, got 3");
            /* the communicator still works after both */
            OK(c->ops->recv(g, v, 1, CT_I32, 0, 11, &err));
            CHECK(v[0] == 1, "after errors: got %d", v[0]);
        }
    }
    c->ops->group_free(g);

    setenv("STRATA_MPI_MAX_COUNT", "0", 1);
    Comm *bad = comm_mpi_new(&err);
    CHECK(bad == NULL && strstr(err.msg, "STRATA_MPI_MAX_COUNT") != NULL, "bad max count: %s", err.msg);
    comm_free(bad);
    unsetenv("STRATA_MPI_MAX_COUNT");
    comm_free(NULL);
}

/* ------------------------------------------------------------------------- */

static int passed, failed;

/* Every rank's checks of the case count: one failing rank fails it. */
static void verdict(const char *name)
{
    int bad = case_failures > 0, ranks_bad = 0;
    MPI_Allreduce(&bad, &ranks_bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (ranks_bad) failed++;
    else passed++;
    if (rank == 0) {
        if (ranks_bad) printf("[  FAILED  ] %s (on %d of %d ranks)\n", name, ranks_bad, world);
        else printf("[       OK ] %s\n", name);
        fflush(stdout);
    }
    case_failures = 0;
}

int main(int argc, char **argv)
{
    int level = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &level) != MPI_SUCCESS) {
        fprintf(stderr, "mpi_comm: MPI_Init_thread failed\n");
        return 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world > MAXW) {
        if (rank == 0) fprintf(stderr, "mpi_comm: at most %d ranks\n", MAXW);
        MPI_Finalize();
        return 1;
    }
    if (rank == 0) printf("[==========] mpi_comm on %d ranks (thread level %d)\n", world, level);

    Comm *c = comm_mpi_new(&err);
    if (!c) {
        fprintf(stderr, "rank %d: comm_mpi_new: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    CHECK(c->rank == rank && c->world == world, "comm says rank %d of %d", c->rank, c->world);
    CHECK(strcmp(c->ops->name, "mpi") == 0, "backend is called %s", c->ops->name);
    verdict("comm_mpi_new records rank and world");

    setenv("STRATA_MPI_MAX_COUNT", "7", 1);
    Comm *cp = comm_mpi_new(&err);
    unsetenv("STRATA_MPI_MAX_COUNT");
    if (!cp) {
        fprintf(stderr, "rank %d: comm_mpi_new (pieces): %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }

    char name[160];
    for (int pieces = 0; pieces < 2; pieces++)
        for (int l = 0; l < L_COUNT; l++) {
            run_layout(pieces ? cp : c, l, pieces);
            snprintf(name, sizeof name, "every collective, %s%s", layout_name[l],
                     pieces ? ", in pieces of 7" : "");
            verdict(name);
        }
    check_partial_groups(c);
    check_partial_groups(c);
    verdict("groups made by some ranks only, then by all");
    check_half_rounding(c);
    verdict("f16/bf16 sums round to nearest even (every pattern, 4096 random pairs, ties)");
    check_self_tags(c);
    check_self_tags(cp);
    verdict("send to self is matched by tag");
    check_errors(c);
    verdict("bad arguments and MPI errors come back as messages");

    comm_free(cp);
    comm_free(c);
    if (rank == 0) {
        printf("[==========] mpi_comm: %d passed, %d failed\n", passed, failed);
        fflush(stdout);
    }
    MPI_Finalize();
    return failed ? 1 : 0;
}
