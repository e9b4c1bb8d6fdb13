/*
 * elem_body.h — the per-thread work of the elementwise CUDA kernels (add,
 * bias, gelu, relu, embedding, concat, mse), of the buffer functions (axpy,
 * fill, block copy), the optimizers, gradient compression and the
 * deterministic initialisers; elem.cu launches them.
 *
 * Everything here is C11 that nvcc also compiles as C++ (see cuk_fn.h): the
 * CPU test runs each body for every thread index in turn and compares with
 * the CPU kernels. The plans (elem_*_plan) are host code: they turn an op's
 * letters into ElemWalks, loops over merged dimensions with one stride per
 * buffer, which a thread decomposes its flat index into.
 *
 * What must match the CPU bit for bit does: half precision and int8 are
 * integer arithmetic or single IEEE operations with no FMA to contract into
 * (ELEM_MUL), the initialisers are the same SplitMix64 counter and the same
 * double-precision scaling, and an embedding sums a bag in the CPU's order.
 * The rest agrees to float rounding (nvcc contracts a * b + c into one FMA).
 *
 * Legend: i = a thread's flat index; n = element count; x = input, y =
 * output, dy = output gradient, e = error feedback; J, M = bias elements and
 * the elements summed into each; P = table rows held by this rank.
 */
#ifndef STRATA_ELEM_BODY_H
#define STRATA_ELEM_BODY_H

#include <math.h>
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

/* a * b rounded on its own: never fused with a following add */
#ifdef __CUDA_ARCH__
#define ELEM_MUL(a, b) __fmul_rn((a), (b))
#else
#define ELEM_MUL(a, b) ((a) * (b))
#endif

CUK_FN uint32_t elem_f32_bits(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

CUK_FN float elem_f32_from_bits(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* The sum / max over the lanes of a warp; one lane (the identity) on the
 * host, where the test runs a launch one thread at a time. */
CUK_FN float elem_lane_sum(float v)
{
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
#endif
    return v;
}

/* max that ignores NaN as `a > m` does in kernel_int8_encode */
CUK_FN float elem_max(float m, float a) { return a > m ? a : m; }

CUK_FN float elem_lane_max(float v)
{
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) v = elem_max(v, __shfl_xor_sync(0xffffffffu, v, o));
#endif
    return v;
}

/* ----------------------------------------------------------------------------
 * Walks: a row-major loop nest over merged dimensions, up to ELEM_BUFS
 * buffers with a stride each (0 where a buffer lacks the dimension). A flat
 * index i < numel decomposes into one offset per buffer. */

#define ELEM_MAXD IR_LETTERS
#define ELEM_BUFS 3

typedef struct {
    int nd, nbuf;
    int small;                         /* numel < 2^32: 32-bit divisions */
    int64_t numel;
    int64_t n[ELEM_MAXD];              /* outermost first */
    int64_t st[ELEM_BUFS][ELEM_MAXD];
} ElemWalk;

static inline void elem_walk_begin(ElemWalk *w, int nbuf)
{
    memset(w, 0, sizeof *w);
    w->nbuf = nbuf;
    w->numel = 1;
    w->small = 1;
}

/* Appends a dimension of n elements (strides st[0..nbuf)) inside the last
 * one, merging the two where every buffer steps the outer one by running
 * through the inner one (as kloop_init does); size 1 adds nothing. */
static inline void elem_walk_add(ElemWalk *w, int64_t n, const int64_t *st)
{
    if (n <= 1) return;
    int d = w->nd;
    bool merge = d > 0;
    for (int b = 0; b < w->nbuf && merge; b++) merge = w->st[b][d - 1] == st[b] * n;
    if (merge) {
        w->n[d - 1] *= n;
        for (int b = 0; b < w->nbuf; b++) w->st[b][d - 1] = st[b];
    } else {
        w->n[d] = n;
        for (int b = 0; b < w->nbuf; b++) w->st[b][d] = st[b];
        w->nd++;
    }
    w->numel *= n;
    w->small = w->numel <= (int64_t)UINT32_MAX;
}

/* Row-major strides of `letters` into st, 0 for every other letter (as
 * k_strides). */
static inline void elem_strides(const char *letters, const int64_t *size, int64_t *st)
{
    memset(st, 0, IR_LETTERS * sizeof *st);
    int64_t s = 1;
    for (int p = (int)strlen(letters) - 1; p >= 0; p--) {
        st[letters[p] - 'a'] = s;
        s *= size[letters[p] - 'a'];
    }
}

/* The letters of `order` (sizes `size`), buffer b with per-letter strides
 * lst[b] (as elem_strides gives: 0 for a letter the buffer lacks). */
static inline void elem_walk_letters(ElemWalk *w, const char *order, const int64_t *size,
                                     int nbuf, const int64_t *const *lst)
{
    elem_walk_begin(w, nbuf);
    for (const char *p = order; *p; p++) {
        int64_t st[ELEM_BUFS] = {0};
        for (int b = 0; b < nbuf; b++) st[b] = lst[b][*p - 'a'];
        elem_walk_add(w, size[*p - 'a'], st);
    }
}

/* Offsets of flat index i (< numel) in each buffer. The outermost
 * coordinate is what is left of i, so a walk of one dimension divides
 * nothing. */
CUK_FN void elem_walk_off(const ElemWalk *w, int64_t i, int64_t *off)
{
    /* loops over b run to the constant ELEM_BUFS so that they unroll and
     * off[] stays in registers */
    for (int b = 0; b < ELEM_BUFS; b++)
        if (b < w->nbuf) off[b] = 0;
    for (int d = w->nd - 1; d > 0; d--) {
        int64_t c;
        if (w->small) {
            uint32_t a = (uint32_t)i, n = (uint32_t)w->n[d], q = a / n;
            c = (int64_t)(a - q * n);
            i = (int64_t)q;
        } else {
            c = i % w->n[d];
            i /= w->n[d];
        }
        for (int b = 0; b < ELEM_BUFS; b++)
            if (b < w->nbuf) off[b] += c * w->st[b][d];
    }
    if (w->nd > 0)
        for (int b = 0; b < ELEM_BUFS; b++)
            if (b < w->nbuf) off[b] += i * w->st[b][0];
}

/* ----------------------------------------------------------------------------
 * add, gelu, relu: one element per thread, in place allowed */

typedef struct {
    const float *x[IR_MAX_INPUTS];
    float *d[IR_MAX_INPUTS];
    int nin;
} ElemPtrs;

/* y = x0 + x1 (+ x2 ...), added in input order as k_add_fwd does */
CUK_FN void elem_add_fwd(int64_t i, float *y, const ElemPtrs *p)
{
    float s = p->x[0][i] + p->x[1][i];
    for (int k = 2; k < IR_MAX_INPUTS; k++)   /* a constant count: unrolled */
        if (k < p->nin) s += p->x[k][i];
    y[i] = s;
}

/* d_k += dy for every d_k given, dy read again each time (d_k may be dy) */
CUK_FN void elem_add_bwd(int64_t i, const float *dy, const ElemPtrs *p)
{
    for (int k = 0; k < IR_MAX_INPUTS; k++)
        if (k < p->nin && p->d[k]) p->d[k][i] += dy[i];
}

/* y += dy (bias's input gradient) */
CUK_FN void elem_acc(int64_t i, float *y, const float *dy) { y[i] += dy[i]; }

/* e^x as k_expf (kernels_internal.h): the same polynomial and the same ends */
CUK_FN float elem_expf(float x)
{
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t eb = (elem_f32_bits(t) - 0x4B3FFF81u) << 23;
    uint32_t yb = elem_f32_bits(p * elem_f32_from_bits(eb));
    uint32_t hi = -(uint32_t)(x > 88.0f), lo = -(uint32_t)(x < -87.33654f);
    yb = ((yb & ~hi) | (0x7EF882B7u & hi)) & ~lo;
    return elem_f32_from_bits(yb);
}

#define ELEM_GELU_K 0.7978845608028654f   /* sqrt(2/pi) */
#define ELEM_GELU_C 0.044715f

/* As the CPU's fast path (k_elementwise.c): y = x s, s = 1 / (1 + e^(-2u)),
 * u = sqrt(2/pi) (x + 0.044715 x^3), so that no 1 + tanh(u) cancels. */
CUK_FN void elem_gelu_fwd(int64_t i, float *y, const float *x)
{
    float v = x[i];
    float e = elem_expf(-2.0f * ELEM_GELU_K * (v + ELEM_GELU_C * v * v * v));
    y[i] = v / (1.0f + e);
}

/* dx += dy (s + 2 x s (e s) du), multiplied in that order (no overflow far
 * below 0, where e is e^88 and s underflows) */
CUK_FN void elem_gelu_bwd(int64_t i, float *dx, const float *x, const float *dy)
{
    float v = x[i];
    float e = elem_expf(-2.0f * ELEM_GELU_K * (v + ELEM_GELU_C * v * v * v));
    float s = 1.0f / (1.0f + e), du = ELEM_GELU_K * (1.0f + 3.0f * ELEM_GELU_C * v * v);
    dx[i] += dy[i] * (s + 2.0f * v * s * (e * s) * du);
}

CUK_FN void elem_relu_fwd(int64_t i, float *y, const float *x)
{
    float v = x[i];
    y[i] = v > 0 ? v : 0;
}

CUK_FN void elem_relu_bwd(int64_t i, float *dx, const float *x, const float *dy)
{
    float g = dy[i];
    dx[i] += x[i] > 0 ? g : 0;
}

/* ----------------------------------------------------------------------------
 * bias: y = x + b, b broadcast over the letters of x it lacks, in any order.
 *
 * Forward: `fwd` walks x's letters with b's strides (x and y are contiguous
 * in that order, so their offset is i). Backward: db[j] sums dy over the
 * broadcast letters; `kept` walks b's letters in b's order with dy's strides
 * (j is db's own flat index), `summed` the letters of x missing from b, in
 * x's order, with dy's strides; element m of bias element j sits at
 * kept(j) + summed(m). */

typedef struct {
    ElemWalk fwd, kept, summed;
    int64_t n;                         /* elements of x */
    bool cols;                         /* neighbouring j are neighbours in dy */
} ElemBiasPlan;

static inline void elem_bias_plan(ElemBiasPlan *p, const KernelShape *ks)
{
    const Op *op = ks->op;
    const char *lx = op->in_letters[0], *lb = op->in_letters[1];
    int64_t sx[IR_LETTERS], sb[IR_LETTERS];
    elem_strides(lx, ks->size, sx);
    elem_strides(lb, ks->size, sb);
    const int64_t *pb[1] = {sb}, *px[1] = {sx};
    elem_walk_letters(&p->fwd, lx, ks->size, 1, pb);
    elem_walk_letters(&p->kept, lb, ks->size, 1, px);
    char rest[IR_LETTERS + 1];
    int n = 0;
    for (const char *q = lx; *q; q++)
        if (!strchr(lb, *q)) rest[n++] = *q;
    rest[n] = 0;
    elem_walk_letters(&p->summed, rest, ks->size, 1, px);
    p->n = p->fwd.numel;
    /* the last kept dimension has unit stride in dy: a warp reads a row of
     * neighbouring j; else threads along one j read neighbouring m */
    p->cols = p->kept.nd > 0 && p->kept.st[0][p->kept.nd - 1] == 1;
}

CUK_FN void elem_bias_fwd(int64_t i, float *y, const float *x, const float *b,
                          const ElemWalk *w)
{
    int64_t ob;
    elem_walk_off(w, i, &ob);
    y[i] = x[i] + b[ob];
}

/* The sum of the elements m0, m0 + mstep, ... of bias element j's set. */
CUK_FN float elem_bias_partial(const float *dy, int64_t j, int64_t m0, int64_t mstep,
                               const ElemWalk *kept, const ElemWalk *summed)
{
    int64_t base, om;
    elem_walk_off(kept, j, &base);
    float t = 0;
    for (int64_t m = m0; m < summed->numel; m += mstep) {
        elem_walk_off(summed, m, &om);
        t += dy[base + om];
    }
    return t;
}

/* ----------------------------------------------------------------------------
 * embedding: out[..., h] = table[idx[...] - off[v], h] for the rows this rank
 * holds (v = the gather letter, P = its local size); letters of the indices
 * or the table missing from the output (a bag) are summed. Buffers of the
 * walks: 0 = indices, 1 = table (the gather letter's stride set apart as
 * `sg`), 2 = output.
 *
 * Forward: a thread per output element walks its bag in the CPU's order
 * (the index letters the output lacks, then the table's), from 0, so the sum
 * is the CPU's to the bit. Backward: a thread per (output element, bag
 * entry), the row letters innermost, adds dy into the table gradient
 * atomically (indices repeat). An index outside the table is skipped: the
 * CPU kernel reports it, which a device cannot without a host round trip. */

typedef struct {
    ElemWalk out, bag, all;
    int64_t sg, lo, rows, total;       /* gather stride, first row held, rows held, table rows */
} ElemEmbedPlan;

static inline void elem_embed_plan(ElemEmbedPlan *p, const KernelShape *ks)
{
    const Op *op = ks->op;
    const int64_t *size = ks->size;
    const char *li = op->in_letters[0], *lt = op->in_letters[1], *lo = op->out_letters;
    int g = 0;
    while (g < IR_LETTERS && !(op->gather_mask >> g & 1)) g++;
    int64_t si[IR_LETTERS], st[IR_LETTERS], so[IR_LETTERS];
    elem_strides(li, size, si);
    elem_strides(lt, size, st);
    elem_strides(lo, size, so);
    p->sg = g < IR_LETTERS ? st[g] : 0;
    if (g < IR_LETTERS) st[g] = 0;
    p->lo = g < IR_LETTERS ? ks->off[g] : 0;
    p->rows = g < IR_LETTERS ? size[g] : 1;
    p->total = g < IR_LETTERS ? ks->total[g] : 1;

    /* the bag: index letters, then table letters, that the output lacks */
    char bag[IR_LETTERS + 1];
    int nb = 0;
    for (int k = 0; k < 2; k++)
        for (const char *q = k ? lt : li; *q; q++)
            if (*q - 'a' != g && !strchr(lo, *q) && !memchr(bag, *q, (size_t)nb)) bag[nb++] = *q;
    bag[nb] = 0;
    const int64_t *ls[ELEM_BUFS] = {si, st, so};
    elem_walk_letters(&p->out, lo, size, 3, ls);
    elem_walk_letters(&p->bag, bag, size, 3, ls);

    /* backward: the output's letters but its trailing row (the letters the
     * output shares with the table's end, contiguous in both), the bag, the
     * row */
    int nt = (int)strlen(lt), no = (int)strlen(lo), r = 0;
    while (r < nt && r < no && lt[nt - 1 - r] == lo[no - 1 - r] && lt[nt - 1 - r] - 'a' != g &&
           !strchr(li, lt[nt - 1 - r]))
        r++;
    char all[IR_LETTERS + 1];
    int na = 0;
    for (int q = 0; q < no - r; q++) all[na++] = lo[q];
    for (int q = 0; q < nb; q++) all[na++] = bag[q];
    for (int q = no - r; q < no; q++) all[na++] = lo[q];
    all[na] = 0;
    elem_walk_letters(&p->all, all, size, 3, ls);
}

/* The table offset of the row an index names, or -1 when another rank holds
 * it (or it is outside the table). */
CUK_FN int64_t elem_embed_row(const ElemEmbedPlan *p, int32_t v)
{
    if (v < 0 || (int64_t)v >= p->total) return -1;
    int64_t rw = (int64_t)v - p->lo;
    return rw >= 0 && rw < p->rows ? rw * p->sg : -1;
}

CUK_FN void elem_embed_fwd(int64_t i, float *y, const int32_t *idx, const float *table,
                           const ElemEmbedPlan *p)
{
    int64_t o[ELEM_BUFS], b[ELEM_BUFS];
    elem_walk_off(&p->out, i, o);
    float acc = 0;
    for (int64_t m = 0; m < p->bag.numel; m++) {
        elem_walk_off(&p->bag, m, b);
        int64_t rw = elem_embed_row(p, idx[o[0] + b[0]]);
        if (rw >= 0) acc += table[rw + o[1] + b[1]];
    }
    y[o[2]] = acc;
}

/* d += v, atomically on the device (other threads add to the same row) */
CUK_FN void elem_atomic_add(float *d, float v)
{
#ifdef __CUDA_ARCH__
    atomicAdd(d, v);
#else
    *d += v;
#endif
}

CUK_FN void elem_embed_bwd(int64_t i, float *dtable, const int32_t *idx, const float *dy,
                           const ElemEmbedPlan *p)
{
    int64_t o[ELEM_BUFS];
    elem_walk_off(&p->all, i, o);
    int64_t rw = elem_embed_row(p, idx[o[0]]);
    if (rw >= 0) elem_atomic_add(&dtable[rw + o[1]], dy[o[2]]);
}

/* ----------------------------------------------------------------------------
 * concat: input k fills the output's range [o_k, o_k + a_k) along the
 * output's concatenated letter c (o_k: the inputs' own sizes before it), as
 * k_elementwise.c. One launch per input, a thread per input element: a walk
 * over the output's letters with input k's own letter a in the place of c,
 * buffer 0 the input, buffer 1 the output (c's stride standing for a), so
 * consecutive threads write consecutive output elements. */

typedef struct {
    ElemWalk w;
    int64_t base;                      /* input k's first element in the output */
} ElemConcatPlan;

static inline void elem_concat_plan(ElemConcatPlan *p, const KernelShape *ks, int k)
{
    const Op *op = ks->op;
    int lk = op_concat_letter(op, k), lo = op_concat_letter(op, op->nin);
    int64_t sx[IR_LETTERS], sy[IR_LETTERS];
    elem_strides(op->in_letters[k], ks->size, sx);
    elem_strides(op->out_letters, ks->size, sy);
    int64_t before = 0;
    for (int j = 0; j < k; j++) before += ks->size[op_concat_letter(op, j)];
    p->base = before * sy[lo];
    sy[lk] = sy[lo];
    sy[lo] = 0;
    char order[IR_MAX_DIMS + 1];
    int n = 0;
    for (const char *q = op->out_letters; *q; q++)
        order[n++] = *q - 'a' == lo ? (char)('a' + lk) : *q;
    order[n] = 0;
    const int64_t *ls[2] = {sx, sy};
    elem_walk_letters(&p->w, order, ks->size, 2, ls);
}

CUK_FN void elem_concat_fwd(int64_t i, float *y, const float *x, const ElemConcatPlan *p)
{
    int64_t o[ELEM_BUFS];
    elem_walk_off(&p->w, i, o);
    y[p->base + o[1]] = x[o[0]];
}

CUK_FN void elem_concat_bwd(int64_t i, float *dx, const float *dy, const ElemConcatPlan *p)
{
    int64_t o[ELEM_BUFS];
    elem_walk_off(&p->w, i, o);
    dx[o[0]] += dy[p->base + o[1]];
}

/* ----------------------------------------------------------------------------
 * mse: loss = sum of (p - t)^2 over the local elements / N, N the global
 * element count, as k_elementwise.c; t in any letter order. A walk over p's
 * letters, buffer 0 the prediction (and its gradient), 1 the target. The
 * forward's threads each sum a strided set of elements in double; the
 * launch adds the parts in a fixed order. */

typedef struct {
    ElemWalk w;
    double count;                      /* N */
} ElemMsePlan;

static inline void elem_mse_plan(ElemMsePlan *p, const KernelShape *ks)
{
    const Op *op = ks->op;
    int64_t sp[IR_LETTERS], st[IR_LETTERS];
    elem_strides(op->in_letters[0], ks->size, sp);
    elem_strides(op->in_letters[1], ks->size, st);
    const int64_t *ls[2] = {sp, st};
    elem_walk_letters(&p->w, op->in_letters[0], ks->size, 2, ls);
    p->count = 1;
    for (const char *q = op->in_letters[0]; *q; q++) p->count *= (double)ks->total[*q - 'a'];
}

/* The sum of (p - t)^2 over the elements i0, i0 + step, ... */
CUK_FN double elem_mse_part(const float *pr, const float *t, int64_t i0, int64_t step,
                            const ElemMsePlan *p)
{
    double s = 0;
    for (int64_t i = i0; i < p->w.numel; i += step) {
        int64_t o[ELEM_BUFS];
        elem_walk_off(&p->w, i, o);
        double d = (double)pr[o[0]] - t[o[1]];
        s += d * d;
    }
    return s;
}

/* dp += c (p - t), dt -= c (p - t) (either may be NULL), c = 2 dout / N */
CUK_FN void elem_mse_bwd(int64_t i, float *dp, float *dt, const float *pr, const float *t,
                         float c, const ElemMsePlan *p)
{
    int64_t o[ELEM_BUFS];
    elem_walk_off(&p->w, i, o);
    float g = c * (pr[o[0]] - t[o[1]]);
    if (dp) dp[o[0]] += g;
    if (dt) dt[o[1]] -= g;
}

/* ----------------------------------------------------------------------------
 * Buffers */

CUK_FN void elem_axpy(int64_t i, float *y, const float *x, float a) { y[i] += a * x[i]; }

CUK_FN void elem_fill(int64_t i, float *x, float v) { x[i] = v; }

/* The block copy of cuk_block_copy: `w` walks the block's extents with the
 * strides of dst (buffer 0) and src (buffer 1); dbase, sbase = the offsets
 * of the block's first element. */
typedef struct {
    ElemWalk w;
    int64_t dbase, sbase;
} ElemCopyPlan;

static inline void elem_copy_plan(ElemCopyPlan *p, const int64_t *dd, const int64_t *doff,
                                  const int64_t *sd, const int64_t *soff, const int64_t *len,
                                  int nd)
{
    int64_t dst = 1, sst = 1;
    int64_t dstr[IR_MAX_DIMS], sstr[IR_MAX_DIMS];
    for (int d = nd - 1; d >= 0; d--) {
        dstr[d] = dst;
        sstr[d] = sst;
        dst *= dd[d];
        sst *= sd[d];
    }
    elem_walk_begin(&p->w, 2);
    p->dbase = p->sbase = 0;
    for (int d = 0; d < nd; d++) {
        int64_t st[2] = {dstr[d], sstr[d]};
        p->dbase += doff[d] * dstr[d];
        p->sbase += soff[d] * sstr[d];
        elem_walk_add(&p->w, len[d], st);
    }
    /* a zero extent copies nothing */
    for (int d = 0; d < nd; d++)
        if (len[d] <= 0) p->w.numel = 0;
}

CUK_FN void elem_block_copy(int64_t i, float *dst, const float *src, const ElemCopyPlan *p)
{
    int64_t o[ELEM_BUFS];
    elem_walk_off(&p->w, i, o);
    dst[p->dbase + o[0]] = src[p->sbase + o[1]];
}

/* ----------------------------------------------------------------------------
 * Optimizers: the formulas of k_optim.c */

/* PyTorch's SGD; mom may be NULL (plain step) */
CUK_FN void elem_sgd(int64_t i, float *w, const float *g, float *mom, float lr, float momentum,
                     float wd)
{
    float d = g[i] + wd * w[i];
    if (mom) {
        mom[i] = momentum * mom[i] + d;
        d = mom[i];
    }
    w[i] -= lr * d;
}

/* AdamW; c1 = 1 / (1 - b1^t), c2 = 1 / (1 - b2^t) as elem_adam_hyper makes them */
typedef struct {
    float lr, beta1, beta2, eps, wd, c1, c2;
} ElemAdam;

static inline void elem_adam_hyper(ElemAdam *a, const OptimHyper *h, int64_t step)
{
    double t = (double)(step > 0 ? step : 1);
    a->lr = h->lr;
    a->beta1 = h->beta1;
    a->beta2 = h->beta2;
    a->eps = h->eps;
    a->wd = h->weight_decay;
    a->c1 = (float)(1 / (1 - pow(h->beta1, t)));
    a->c2 = (float)(1 / (1 - pow(h->beta2, t)));
}

CUK_FN void elem_adam(int64_t i, float *w, const float *g, float *m, float *v,
                      const ElemAdam *a)
{
    float gi = g[i];
    float mi = a->beta1 * m[i] + (1 - a->beta1) * gi;
    float vi = a->beta2 * v[i] + (1 - a->beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float mh = mi * a->c1, vh = vi * a->c2;
    w[i] -= a->lr * (a->wd * w[i] + mh / (sqrtf(vh) + a->eps));
}

/* ----------------------------------------------------------------------------
 * IEEE binary16 by integer arithmetic, as k_optim.c: bit for bit */

CUK_FN uint32_t elem_shift_rne(uint32_t mant, int shift)
{
    if (shift > 31) return 0;
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

CUK_FN uint16_t elem_half_from_float(float f)
{
    uint32_t u = elem_f32_bits(f);
    uint16_t sign = (uint16_t)(u >> 16 & 0x8000);
    uint32_t a = u & 0x7fffffff;
    if (a >= 0x7f800000)
        return (uint16_t)(sign | (a == 0x7f800000 ? 0x7c00 : (0x7e00 | (a >> 13 & 0x3ff))));
    int e = (int)(a >> 23);
    if (e < 113) {
        if (e == 0) return sign;
        return (uint16_t)(sign | elem_shift_rne((a & 0x7fffff) | 0x800000, 126 - e));
    }
    uint32_t r = elem_shift_rne(a - (112u << 23), 13);
    return (uint16_t)(sign | (r > 0x7c00 ? 0x7c00 : r));
}

CUK_FN float elem_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (uint32_t)h >> 10 & 0x1f, mant = h & 0x3ff;
    if (e == 0) {
        float v = (float)mant * 5.9604644775390625e-8f;   /* mant * 2^-24: exact */
        return sign ? -v : v;
    }
    if (e == 31)  /* infinity; a NaN comes back quiet, as the CPU path gives it */
        return elem_f32_from_bits(sign | 0x7f800000 | mant << 13 | (mant ? 0x400000u : 0));
    return elem_f32_from_bits(sign | (e + 112) << 23 | mant << 13);
}

CUK_FN void elem_to_fp16(int64_t i, const float *x, uint16_t *h) { h[i] = elem_half_from_float(x[i]); }

CUK_FN void elem_from_fp16(int64_t i, const uint16_t *h, float *x) { x[i] = elem_half_to_float(h[i]); }

/* ----------------------------------------------------------------------------
 * int8 with error feedback, as kernel_int8_encode: amax = max |x + e| (a
 * reduction whose order cannot change a max), scale = amax / 127, then per
 * element the CPU's operations (lrintf is round to nearest even, NaN and
 * overflow to the most negative integer, as x86 does). e may be NULL. */

CUK_FN float elem_int8_absmax(const float *x, const float *e, int64_t i0, int64_t step,
                              int64_t n)
{
    float m = 0;
    for (int64_t i = i0; i < n; i += step) m = elem_max(m, fabsf(x[i] + (e ? e[i] : 0)));
    return m;
}

CUK_FN float elem_int8_scale(float amax) { return amax / 127; }

CUK_FN void elem_int8_encode(int64_t i, const float *x, float *e, int8_t *q, float scale)
{
    float y = x[i] + (e ? e[i] : 0);
    long long r = 0;
    if (scale > 0) {
#ifdef __CUDA_ARCH__
        float t = y / scale;
        r = fabsf(t) < 9.2e18f ? __float2ll_rn(t) : -127;   /* NaN too */
#else
        r = lrintf(y / scale);
#endif
    }
    if (r > 127) r = 127;
    if (r < -127) r = -127;
    q[i] = (int8_t)r;
    if (e) e[i] = y - ELEM_MUL((float)r, scale);
}

CUK_FN void elem_int8_decode(int64_t i, const int8_t *q, float scale, float *x)
{
    x[i] = (float)q[i] * scale;
}

/* ----------------------------------------------------------------------------
 * Deterministic values, as k_init.c: key = mix(seed ^ FNV-1a(name)) (made on
 * the host), element g of the whole tensor = mix(key + (g + 1) golden). The
 * block walk gives each local element its global index. */

#define ELEM_GOLDEN 0x9e3779b97f4a7c15ull

CUK_FN uint64_t elem_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t elem_init_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *s = name; s && *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return elem_mix64(seed ^ h);
}

/* nextafterf(s, 0): one step toward zero (0 and NaN stay: s == 0 gives +0,
 * as nextafterf returns its second argument when the two are equal) */
CUK_FN float elem_toward_zero(float s)
{
    if (s == 0) return 0.0f;
    if (s != s) return s;
    return elem_f32_from_bits(elem_f32_bits(s) - 1);
}

CUK_FN float elem_uniform_pm(uint64_t bits, float scale)
{
    double u = (double)(bits >> 40) * 0x1p-24;
    float v = (float)((2 * u - 1) * scale);
    return v >= scale ? elem_toward_zero(scale) : v;
}

typedef struct {
    ElemWalk w;                        /* local extents, global strides */
    int64_t base;                      /* global index of the first element */
    uint64_t key;
} ElemInitPlan;

static inline void elem_init_plan(ElemInitPlan *p, uint64_t seed, const char *name, int ndim,
                                  const int64_t *shape, const int64_t *offset,
                                  const int64_t *local)
{
    int64_t gst[IR_MAX_DIMS], s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        gst[d] = s;
        s *= shape[d];
    }
    elem_walk_begin(&p->w, 1);
    p->base = 0;
    for (int d = 0; d < ndim; d++) {
        p->base += offset[d] * gst[d];
        elem_walk_add(&p->w, local[d], &gst[d]);
    }
    for (int d = 0; d < ndim; d++)
        if (local[d] <= 0) p->w.numel = 0;
    p->key = elem_init_key(seed, name);
}

CUK_FN uint64_t elem_init_bits(const ElemInitPlan *p, int64_t i)
{
    int64_t g;
    elem_walk_off(&p->w, i, &g);
    return elem_mix64(p->key + ((uint64_t)(p->base + g) + 1) * ELEM_GOLDEN);
}

CUK_FN void elem_init_fill(int64_t i, float *buf, const ElemInitPlan *p, float scale)
{
    buf[i] = elem_uniform_pm(elem_init_bits(p, i), scale);
}

CUK_FN void elem_init_fill_int(int64_t i, int32_t *buf, const ElemInitPlan *p, uint64_t range)
{
    buf[i] = (int32_t)(((elem_init_bits(p, i) >> 32) * range) >> 32);
}

#endif
