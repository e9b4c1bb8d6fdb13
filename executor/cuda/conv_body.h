/*
 * conv_body.h — what the CUDA conv2d, pool2d and route kernels compute, per
 * thread, and the host-side plans around them; C11 for gcc and CUDA C++ for
 * nvcc, so tests/test_cuk_conv.c runs every body on the CPU and compares it
 * with the CPU kernels (k_contract.c, k_norm.c).
 *
 * conv2d is im2col and GEMM, as the CPU does it: the window of every output
 * pixel into the columns of `col`, one strided-batched GEMM per chunk of
 * images, and for dx the adjoint, col2im, as a gather (one thread per input
 * pixel summing its (r, s) taps in the CPU's order, so no atomics). cuDNN 9.19
 * marks its whole legacy convolution and pooling API deprecated, and its
 * graph API cannot be checked without a device; cuBLAS and these bodies can.
 *
 * pool2d gathers too: the backward of max first finds every window's argmax
 * (ties to the first, as the CPU), then each input pixel sums, in the CPU's
 * (p, q) order, the gradients of the windows that chose it. Forward and
 * backward are therefore bit-identical to the CPU's.
 *
 * route: one thread per token finds its expert, then one thread per (group,
 * expert) walks the group's tokens in order handing out slots, which is the
 * CPU's sequential assignment split by expert.
 *
 * Legend: N, C, H, W = images, channels, input height, width; O = out
 * channels; R, S = window; P, Q = output height, width; CRS = C*R*S rows of a
 * column matrix, PQ = its columns; nb = images per chunk.
 */
#ifndef STRATA_CONV_BODY_H
#define STRATA_CONV_BODY_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "executor/cuda/cuk_fn.h"
#ifdef __cplusplus
extern "C" {
#endif
#include "executor/kernels.h"
#ifdef __cplusplus
}
#endif

/* a * b rounded on its own: nvcc would fuse `acc += a * b` into one FMA,
 * which the CPU kernels (built without FMA) do not, and the sums would differ
 * in the last bit. */
CUK_FN float conv_mul(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

/* ----------------------------------------------------------------------------
 * conv2d "nchw,ocrs->nohw" */

typedef struct {
    int64_t N, C, H, W, O, R, S, P, Q;
    int64_t st, pad;
} ConvGeom;

static inline bool conv_blas_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* The geometry of ks, with the CPU's checks and messages. */
static inline int conv_geom(const KernelShape *ks, ConvGeom *d, Err *err)
{
    const Op *op = ks->op;
    const char *x = op->in_letters[0], *w = op->in_letters[1];
    const int64_t *sz = ks->size;
    d->N = sz[x[0] - 'a'];
    d->C = sz[x[1] - 'a'];
    d->H = ks->in_hw[0];
    d->W = ks->in_hw[1];
    d->O = sz[w[0] - 'a'];
    d->R = sz[w[2] - 'a'];
    d->S = sz[w[3] - 'a'];
    d->P = sz[x[2] - 'a'];
    d->Q = sz[x[3] - 'a'];
    d->st = op->stride > 0 ? op->stride : 1;
    d->pad = op->pad;
    if (d->H <= 0 || d->W <= 0)
        return err_set(err, "op \"%s\": input height and width (in_hw) not set", op->name);
    int64_t crs = d->C * d->R * d->S, pq = d->P * d->Q;
    if (!conv_blas_int(crs) || !conv_blas_int(pq) || !conv_blas_int(d->O) ||
        !conv_blas_int(d->C))
        return err_set(err, "op \"%s\": conv2d dimensions exceed the BLAS integer range",
                       op->name);
    return 0;
}

/* A 1x1 window of stride 1 without padding: the image is its own column
 * matrix (C x HW), so no im2col. */
static inline bool conv_pointwise(const ConvGeom *d)
{
    return d->R == 1 && d->S == 1 && d->st == 1 && d->pad == 0 && d->P == d->H &&
           d->Q == d->W;
}

/* Images per chunk so that the column matrices take at most cap floats (at
 * least one image, whatever cap). */
static inline int64_t conv_chunk(const ConvGeom *d, int64_t cap)
{
    int64_t per = d->C * d->R * d->S * d->P * d->Q, nb = per > 0 ? cap / per : d->N;
    if (nb < 1) nb = 1;
    return nb < d->N ? nb : d->N;
}

/* Element i of the column matrices of nb images at x: col[n][c r s][p q],
 * the input pixel under tap (r, s) of output (p, q), 0 in the padding. */
CUK_FN float conv_im2col_at(const float *x, const ConvGeom *d, int64_t i)
{
    int64_t q = i % d->Q, t = i / d->Q;
    int64_t p = t % d->P;
    t /= d->P;
    int64_t s = t % d->S;
    t /= d->S;
    int64_t r = t % d->R;
    t /= d->R;                                     /* t = n * C + c */
    int64_t ih = p * d->st - d->pad + r, iw = q * d->st - d->pad + s;
    if (ih < 0 || ih >= d->H || iw < 0 || iw >= d->W) return 0.0f;
    return x[(t * d->H + ih) * d->W + iw];
}

/* Input pixel i (over nb images: n, c, ih, iw) of dx plus every column entry
 * that im2col took from it, added in (r, s) order onto `acc` (dx[i]), as the
 * CPU's col2im adds them. */
CUK_FN float conv_col2im_at(const float *col, const ConvGeom *d, int64_t i, float acc)
{
    int64_t iw = i % d->W, t = i / d->W;
    int64_t ih = t % d->H;
    t /= d->H;                                     /* t = n * C + c */
    const float *base = col + t * d->R * d->S * d->P * d->Q;
    for (int64_t r = 0; r < d->R; r++) {
        int64_t hp = ih + d->pad - r;              /* p * st */
        if (hp < 0) break;
        if (hp % d->st || hp / d->st >= d->P) continue;
        int64_t p = hp / d->st;
        for (int64_t s = 0; s < d->S; s++) {
            int64_t wq = iw + d->pad - s;
            if (wq < 0) break;
            if (wq % d->st || wq / d->st >= d->Q) continue;
            acc += base[((r * d->S + s) * d->P + p) * d->Q + wq / d->st];
        }
    }
    return acc;
}

/* One column-major GEMM call, as cublasSgemmStridedBatched takes it:
 * C_b = op(A_b) op(B_b) + beta C_b for b < batch, X_b = X + b * sx. */
typedef struct {
    bool ta, tb;
    int m, n, k, lda, ldb, ldc, batch;
    long long sa, sb, sc;
    float beta;
} ConvGemm;

/* The steps of a conv on some machine: the two gathers over nb images and
 * GEMM; each returns 0 or -1 (with its own error report in ctx). */
typedef struct {
    int (*im2col)(void *ctx, const float *x, float *col, const ConvGeom *d, int64_t nb);
    int (*col2im)(void *ctx, const float *col, float *dx, const ConvGeom *d, int64_t nb);
    int (*gemm)(void *ctx, const ConvGemm *g, const float *a, const float *b, float *c);
    void *ctx;
} ConvOps;

/* Row-major out_n (O x PQ) = W (O x CRS) col_n (CRS x PQ) for nb images:
 * column-major, out_n^T = col_n^T W^T. */
static inline ConvGemm conv_gemm_fwd(const ConvGeom *d, int64_t nb)
{
    int64_t crs = d->C * d->R * d->S, pq = d->P * d->Q;
    ConvGemm g;
    memset(&g, 0, sizeof g);
    g.m = (int)pq, g.n = (int)d->O, g.k = (int)crs;
    g.lda = (int)pq, g.ldb = (int)crs, g.ldc = (int)pq;
    g.sa = crs * pq, g.sb = 0, g.sc = d->O * pq;
    g.batch = (int)nb;
    return g;
}

/* dcol_n (CRS x PQ) = W^T dy_n: column-major, dcol_n^T = dy_n^T W. With
 * beta 1 (pointwise) it adds straight into dx. */
static inline ConvGemm conv_gemm_dx(const ConvGeom *d, int64_t nb, float beta)
{
    int64_t crs = d->C * d->R * d->S, pq = d->P * d->Q;
    ConvGemm g;
    memset(&g, 0, sizeof g);
    g.tb = true;
    g.m = (int)pq, g.n = (int)crs, g.k = (int)d->O;
    g.lda = (int)pq, g.ldb = (int)crs, g.ldc = (int)pq;
    g.sa = d->O * pq, g.sb = 0, g.sc = crs * pq;
    g.batch = (int)nb;
    g.beta = beta;
    return g;
}

/* dW (O x CRS) += dy_n col_n^T for one image: column-major, dW^T += col_n dy_n^T. */
static inline ConvGemm conv_gemm_dw(const ConvGeom *d)
{
    int64_t crs = d->C * d->R * d->S, pq = d->P * d->Q;
    ConvGemm g;
    memset(&g, 0, sizeof g);
    g.ta = true;
    g.m = (int)crs, g.n = (int)d->O, g.k = (int)pq;
    g.lda = (int)pq, g.ldb = (int)pq, g.ldc = (int)crs;
    g.batch = 1;
    g.beta = 1.0f;
    return g;
}

/* out = conv(x, w), nb images at a time through col (nb * CRS * PQ floats;
 * unused, may be NULL, when pointwise). */
static inline int conv_run_fwd(const ConvOps *o, const ConvGeom *d, const float *x,
                               const float *w, float *out, float *col, int64_t nb)
{
    const bool point = conv_pointwise(d);
    const int64_t chw = d->C * d->H * d->W, opq = d->O * d->P * d->Q;
    for (int64_t n0 = 0; n0 < d->N; n0 += nb) {
        int64_t m = d->N - n0 < nb ? d->N - n0 : nb;
        const float *a = x + n0 * chw;
        if (!point) {
            if (o->im2col(o->ctx, a, col, d, m)) return -1;
            a = col;
        }
        ConvGemm g = conv_gemm_fwd(d, m);
        if (o->gemm(o->ctx, &g, a, w, out + n0 * opq)) return -1;
    }
    return 0;
}

/* dx += conv^T(dy, w) and dw += sum_n dy_n col_n^T (either may be NULL), as
 * k_conv2d_bwd: per chunk the data gradient first, then the weight's over
 * the chunk's images in order. col as for conv_run_fwd. */
static inline int conv_run_bwd(const ConvOps *o, const ConvGeom *d, const float *x,
                               const float *w, const float *dy, float *dx, float *dw,
                               float *col, int64_t nb)
{
    const bool point = conv_pointwise(d);
    const int64_t chw = d->C * d->H * d->W, opq = d->O * d->P * d->Q;
    const int64_t cpq = d->C * d->R * d->S * d->P * d->Q;
    for (int64_t n0 = 0; n0 < d->N; n0 += nb) {
        int64_t m = d->N - n0 < nb ? d->N - n0 : nb;
        const float *dyc = dy + n0 * opq;
        if (dx) {
            ConvGemm g = conv_gemm_dx(d, m, point ? 1.0f : 0.0f);
            if (o->gemm(o->ctx, &g, dyc, w, point ? dx + n0 * chw : col)) return -1;
            if (!point && o->col2im(o->ctx, col, dx + n0 * chw, d, m)) return -1;
        }
        if (dw) {
            const float *a = x + n0 * chw;
            int64_t sa = chw;
            if (!point) {
                if (o->im2col(o->ctx, a, col, d, m)) return -1;
                a = col;
                sa = cpq;
            }
            ConvGemm g = conv_gemm_dw(d);
            for (int64_t j = 0; j < m; j++)
                if (o->gemm(o->ctx, &g, a + j * sa, dyc + j * d->O * d->P * d->Q, dw)) return -1;
        }
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * pool2d "nchw->nchw": max (padding never wins) or average (divided by the
 * whole window). planes = N * C. */

typedef struct {
    int64_t planes, H, W, P, Q, win, st, pad;
    bool avg;
} PoolGeom;

static inline int pool_geom(const KernelShape *ks, PoolGeom *d, Err *err)
{
    const Op *op = ks->op;
    const char *x = op->in_letters[0];
    const int64_t *sz = ks->size;
    d->planes = sz[x[0] - 'a'] * sz[x[1] - 'a'];
    d->H = ks->in_hw[0];
    d->W = ks->in_hw[1];
    d->P = sz[x[2] - 'a'];
    d->Q = sz[x[3] - 'a'];
    d->win = op->window;
    d->st = op->stride > 0 ? op->stride : op->window;
    d->pad = op->pad;
    d->avg = op->pool_avg;
    if (d->H <= 0 || d->W <= 0)
        return err_set(err, "op \"%s\": input height and width (in_hw) not set", op->name);
    if (d->win <= 0)
        return err_set(err, "op \"%s\": pool2d window is %lld", op->name, (long long)d->win);
    return 0;
}

/* The window of output (p, q) clipped to the input: rows [r0, r1), cols [c0, c1). */
CUK_FN void pool_window(const PoolGeom *d, int64_t p, int64_t q, int64_t *r0, int64_t *r1,
                        int64_t *c0, int64_t *c1)
{
    int64_t h = p * d->st - d->pad, w = q * d->st - d->pad;
    *r0 = h < 0 ? 0 : h;
    *r1 = h + d->win < d->H ? h + d->win : d->H;
    *c0 = w < 0 ? 0 : w;
    *c1 = w + d->win < d->W ? w + d->win : d->W;
}

/* Offset in its plane of the maximum of window i (over planes * P * Q), the
 * first of equals; -1 for a window wholly in the padding. */
CUK_FN int64_t pool_argmax_at(const float *x, const PoolGeom *d, int64_t i)
{
    int64_t q = i % d->Q, t = i / d->Q, p = t % d->P, pl = t / d->P;
    const float *xp = x + pl * d->H * d->W;
    int64_t r0, r1, c0, c1, at = -1;
    pool_window(d, p, q, &r0, &r1, &c0, &c1);
    float best = 0.0f;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++)
            if (at < 0 || xp[r * d->W + c] > best) {
                best = xp[r * d->W + c];
                at = r * d->W + c;
            }
    return at;
}

/* Output i (over planes * P * Q). */
CUK_FN float pool_fwd_at(const float *x, const PoolGeom *d, int64_t i)
{
    if (!d->avg) {
        int64_t at = pool_argmax_at(x, d, i);
        return at < 0 ? 0.0f : x[i / (d->P * d->Q) * d->H * d->W + at];
    }
    int64_t q = i % d->Q, t = i / d->Q, p = t % d->P, pl = t / d->P;
    const float *xp = x + pl * d->H * d->W;
    int64_t r0, r1, c0, c1;
    pool_window(d, p, q, &r0, &r1, &c0, &c1);
    float s = 0.0f;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++) s += xp[r * d->W + c];
    return s * (1.0f / (float)(d->win * d->win));
}

/* The outputs along one axis whose window covers input index h: [*lo, *hi). */
CUK_FN void pool_covering(const PoolGeom *d, int64_t h, int64_t n, int64_t *lo, int64_t *hi)
{
    int64_t a = h + d->pad - d->win + 1;           /* p * st >= a */
    *lo = a <= 0 ? 0 : (a + d->st - 1) / d->st;
    *hi = (h + d->pad) / d->st + 1;                /* p * st <= h + pad */
    if (*hi > n) *hi = n;
    if (*lo > *hi) *lo = *hi;
}

/* Input pixel i (over planes * H * W) of dx: acc (its old value) plus the
 * gradient of every window that covers it (average) or chose it (max: arg
 * holds pool_argmax_at of every window), added in the CPU's (p, q) order. */
CUK_FN float pool_bwd_at(const float *dout, const int64_t *arg, const PoolGeom *d, int64_t i,
                         float acc)
{
    int64_t iw = i % d->W, t = i / d->W, ih = t % d->H, pl = t / d->H;
    int64_t p0, p1, q0, q1;
    pool_covering(d, ih, d->P, &p0, &p1);
    pool_covering(d, iw, d->Q, &q0, &q1);
    const float *gp = dout + pl * d->P * d->Q;
    const float inv = 1.0f / (float)(d->win * d->win);
    for (int64_t p = p0; p < p1; p++)
        for (int64_t q = q0; q < q1; q++) {
            if (d->avg)
                acc += conv_mul(gp[p * d->Q + q], inv);
            else if (arg[pl * d->P * d->Q + p * d->Q + q] == ih * d->W + iw)
                acc += gp[p * d->Q + q];
        }
    return acc;
}

/* ----------------------------------------------------------------------------
 * route "bse->bsec": rows are operand 0's kept letters (its order), a row's
 * elements its reduce letters; a group is nseq consecutive rows (the last
 * kept letter), in which tokens take their expert's next of cap slots. */

#define ROUTE_MAX_DIMS 8

typedef struct {
    int nod, nid;                                  /* outer, inner letters */
    int64_t osz[ROUTE_MAX_DIMS], ox[ROUTE_MAX_DIMS], oy[ROUTE_MAX_DIMS];
    int64_t isz[ROUTE_MAX_DIMS], ix[ROUTE_MAX_DIMS], iy[ROUTE_MAX_DIMS];
    int64_t nouter, ninner, nseq, cap, cstride, out_numel;
} RouteGeom;

/* Strides of the letters in `letters` (row-major), 0 for the rest. */
static inline void route_strides(const KernelShape *ks, const char *letters, int64_t st[26])
{
    int64_t s = 1;
    for (int l = 0; l < 26; l++) st[l] = 0;
    for (int p = (int)strlen(letters) - 1; p >= 0; p--) {
        st[letters[p] - 'a'] = s;
        s *= ks->size[letters[p] - 'a'];
    }
}

/* The geometry of ks, with the CPU's checks: every letter inside its global
 * extent, and the reduce letters, the capacity letter and the sequence letter
 * whole (a slot depends on every earlier token of its group). */
static inline int route_geom(const KernelShape *ks, RouteGeom *g, Err *err)
{
    const Op *op = ks->op;
    const char *in0 = op->in_letters[0];
    uint32_t m0 = 0;
    for (const char *p = in0; *p; p++) m0 |= 1u << (*p - 'a');
    int c = -1, seq = -1;
    for (const char *p = op->out_letters; *p; p++)
        if (!(m0 >> (*p - 'a') & 1)) c = *p - 'a';
    for (const char *p = in0; *p; p++)
        if (!(op->reduce_mask >> (*p - 'a') & 1)) seq = *p - 'a';
    if (c < 0)
        return err_set(err, "op %s: route output \"%s\" has no capacity letter", op->name,
                       op->out_letters);
    uint32_t whole = op->reduce_mask | 1u << c | (seq >= 0 ? 1u << seq : 0);
    if (kernel_check_extents(ks, whole, err)) return -1;
    int64_t sx[26], sy[26];
    route_strides(ks, in0, sx);
    route_strides(ks, op->out_letters, sy);
    memset(g, 0, sizeof *g);
    g->nouter = g->ninner = 1;
    for (const char *p = in0; *p; p++) {
        int l = *p - 'a';
        if (op->reduce_mask >> l & 1) {
            g->isz[g->nid] = ks->size[l], g->ix[g->nid] = sx[l], g->iy[g->nid++] = sy[l];
            g->ninner *= ks->size[l];
        } else {
            g->osz[g->nod] = ks->size[l], g->ox[g->nod] = sx[l], g->oy[g->nod++] = sy[l];
            g->nouter *= ks->size[l];
        }
    }
    g->nseq = seq >= 0 ? ks->size[seq] : 1;
    g->cap = ks->size[c];
    g->cstride = sy[c];
    g->out_numel = 1;
    for (const char *p = op->out_letters; *p; p++) g->out_numel *= ks->size[*p - 'a'];
    return 0;
}

/* Offset of row-major index i over dims (sz) in a buffer with strides st. */
CUK_FN int64_t route_offset(int64_t i, int nd, const int64_t *sz, const int64_t *st)
{
    int64_t o = 0;
    for (int d = nd - 1; d >= 0; d--) {
        o += i % sz[d] * st[d];
        i /= sz[d];
    }
    return o;
}

/* The expert (inner index) of row i: its maximum, the first of equals. */
CUK_FN int32_t route_best_at(const float *x, const RouteGeom *g, int64_t i)
{
    const float *xr = x + route_offset(i, g->nod, g->osz, g->ox);
    int64_t best = 0;
    float bv = xr[route_offset(0, g->nid, g->isz, g->ix)];
    for (int64_t j = 1; j < g->ninner; j++) {
        float v = xr[route_offset(j, g->nid, g->isz, g->ix)];
        if (v > bv) best = j, bv = v;
    }
    return (int32_t)best;
}

/* Thread t (over groups * ninner): expert e = t % ninner of group t / ninner
 * walks the group's tokens in order and marks slot k of its k-th token
 * (out zeroed before; tokens past cap are dropped). */
CUK_FN void route_slots_at(const int32_t *best, float *out, const RouteGeom *g, int64_t t)
{
    int64_t e = t % g->ninner, i0 = t / g->ninner * g->nseq, slot = 0;
    int64_t oe = route_offset(e, g->nid, g->isz, g->iy);
    for (int64_t i = i0; i < i0 + g->nseq && slot < g->cap; i++)
        if (best[i] == e)
            out[route_offset(i, g->nod, g->osz, g->oy) + oe + slot++ * g->cstride] = 1.0f;
}

#endif
