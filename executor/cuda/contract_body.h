/*
 * contract_body.h — the contracting kernels of the GPU (matmul, mean) and the
 * PowerSGD helper (orthonormalize), as code that gcc compiles as C11 and nvcc
 * as CUDA C++, so that tests/test_cuk_contract.c runs all of it on the CPU.
 *
 * Three layers:
 *   1. Per-thread bodies (CUK_FN): a strided map with summed and broadcast
 *      letters (the GPU's k_map), the batch offsets of a batched GEMM, and
 *      Gram-Schmidt over a block of threads. contract.cu's kernels compute a
 *      thread's index and call them; the test calls them for every index.
 *   2. A contraction engine (host code) that sorts an einsum's letters into
 *      the roles of a batched GEMM, exactly as k_contract2 does on the CPU,
 *      and views each operand as a matrix through strides alone. Where a
 *      role's letters do not merge into one GEMM dimension, the largest piece
 *      that does stays in the GEMM and the rest become batch letters (the CPU
 *      loops over them instead); only an operand that is no matrix under
 *      these views is copied into GEMM order, by a map. The engine runs its
 *      steps through a CuEngine: the GPU's (cuBLAS and the map kernels), or
 *      the test's (cblas_sgemm and the map bodies on the host).
 *   3. The op front: matmul forward/backward and mean, on a CuEngine.
 *
 * Legend: A, B = the GEMM operands, C = the result; M, N, K = GEMM rows,
 * columns and summed length; la/lb/lc = letters, sa/sb/sc = per-letter
 * strides (0 for a letter the buffer lacks). A letter of size 1 changes no
 * offset and takes no part in any role.
 */
#ifndef STRATA_CONTRACT_BODY_H
#define STRATA_CONTRACT_BODY_H

#include <limits.h>
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

/* ----------------------------------------------------------------------------
 * Letters (host) */

/* Bit l of the letters of L longer than 1. */
static inline uint32_t cu_big_mask(const char *L, const int64_t size[IR_LETTERS])
{
    uint32_t m = 0;
    for (const char *p = L; *p; p++)
        if (size[*p - 'a'] > 1) m |= 1u << (*p - 'a');
    return m;
}

static inline int64_t cu_mask_numel(uint32_t m, const int64_t size[IR_LETTERS])
{
    int64_t n = 1;
    for (int l = 0; l < IR_LETTERS; l++)
        if (m >> l & 1) n *= size[l];
    return n;
}

static inline int64_t cu_numel(const char *L, const int64_t size[IR_LETTERS])
{
    int64_t n = 1;
    for (const char *p = L; *p; p++) n *= size[*p - 'a'];
    return n;
}

/* Row-major strides of L (0 for every other letter). */
static inline void cu_strides(const char *L, const int64_t size[IR_LETTERS],
                              int64_t st[IR_LETTERS])
{
    for (int l = 0; l < IR_LETTERS; l++) st[l] = 0;
    int64_t s = 1;
    for (int p = (int)strlen(L) - 1; p >= 0; p--) {
        st[L[p] - 'a'] = s;
        s *= size[L[p] - 'a'];
    }
}

/* Appends the letters of L in m, not yet in out (n letters so far). */
static inline int cu_add_letters(char *out, int n, const char *L, uint32_t m)
{
    for (const char *p = L; *p; p++)
        if ((m >> (*p - 'a') & 1) && !memchr(out, *p, (size_t)n)) out[n++] = *p;
    out[n] = 0;
    return n;
}

/* ----------------------------------------------------------------------------
 * Per-thread bodies */

/* Offset of flat index i over dims cnt[0..n) (outermost first) with strides st. */
CUK_FN int64_t cu_unflat(int n, const int64_t *cnt, const int64_t *st, int64_t i)
{
    int64_t off = 0;
    for (int d = n - 1; d > 0; d--) {
        int64_t q = i / cnt[d];
        off += (i - q * cnt[d]) * st[d];
        i = q;
    }
    return n > 0 ? off + i * st[0] : 0;
}

/* Sum over the 32 lanes of a warp; the identity in a one-lane emulation. */
CUK_FN float cu_warp_sum(float v)
{
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
#endif
    return v;
}

/* Sum over the threads of a block (blockDim.x a multiple of 32), the same
 * value in every thread; the identity in a one-thread emulation. Every
 * thread of the block must call it. */
CUK_FN double cu_block_sum(double v)
{
#ifdef __CUDA_ARCH__
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int nw = (int)(blockDim.x >> 5);
    __syncthreads(); /* the previous call's readers are done with part[] */
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = 0;
    for (int w = 0; w < nw; w++) v += part[w]; /* one order: equal in every thread */
#endif
    return v;
}

/* dst = (acc ? dst : 0) + alpha * src, where src's letters missing from dst
 * are summed and dst's letters missing from src are broadcast (k_map). Output
 * o is dst[o] (dst is packed); its sum runs over src + base(o) + sum(j). */
typedef struct {
    int nd, ns;                        /* output dims, summed dims (merged) */
    int64_t dcnt[IR_LETTERS], dsrc[IR_LETTERS]; /* output dims: extent, src stride */
    int64_t scnt[IR_LETTERS], ssrc[IR_LETTERS]; /* summed dims: extent, src stride */
    int64_t nout, nsum;
    float alpha;
    int acc;
} CuMap;

/* The part of output o's sum that lane `lane` of `lanes` adds: the summed
 * elements j = lane, lane + lanes, ... */
CUK_FN float cu_map_partial(const CuMap *m, const float *src, int64_t o, int64_t lane,
                            int64_t lanes)
{
    const float *s = src + cu_unflat(m->nd, m->dcnt, m->dsrc, o);
    float t = 0;
    if (m->ns <= 1) {
        const int64_t st = m->ns ? m->ssrc[0] : 0;
        for (int64_t j = lane; j < m->nsum; j += lanes) t += s[j * st];
    } else {
        for (int64_t j = lane; j < m->nsum; j += lanes)
            t += s[cu_unflat(m->ns, m->scnt, m->ssrc, j)];
    }
    return t;
}

CUK_FN void cu_map_store(const CuMap *m, float *dst, int64_t o, float sum)
{
    const float v = m->alpha * sum;
    dst[o] = m->acc ? dst[o] + v : v;
}

/* A batched GEMM in row-major terms (cblas_sgemm with CblasRowMajor, alpha 1):
 * for every batch index t, C_t = A_t' B_t' + beta C_t, where X' is X or its
 * transpose and X_t = X + the offset of t over the batch dims. */
typedef struct {
    bool ta, tb;
    int64_t m, n, k, lda, ldb, ldc;
    int nb;                            /* batch dims (merged), outermost first */
    int64_t bcnt[IR_LETTERS], bsa[IR_LETTERS], bsb[IR_LETTERS], bsc[IR_LETTERS];
    int64_t count;                     /* product of bcnt */
    float beta;
} CuGemm;

/* The column-major call (cuBLAS's) that computes a row-major product: row-
 * major C = A'B' is column-major C^T = B'^T A'^T, so B comes first (x = B,
 * y = A), with the row-major transposes and leading dimensions as they are. */
typedef struct {
    bool tx, ty;
    int m, n, k, ldx, ldy, ldc;
} CuColMajor;

static inline CuColMajor cu_gemm_colmajor(const CuGemm *g)
{
    CuColMajor c;
    c.tx = g->tb;
    c.ty = g->ta;
    c.m = (int)g->n;
    c.n = (int)g->m;
    c.k = (int)g->k;
    c.ldx = (int)g->ldb;
    c.ldy = (int)g->lda;
    c.ldc = (int)g->ldc;
    return c;
}

CUK_FN void cu_gemm_offsets(const CuGemm *g, int64_t t, int64_t *oa, int64_t *ob, int64_t *oc)
{
    int64_t a = 0, b = 0, c = 0;
    for (int d = g->nb - 1; d >= 0; d--) {
        int64_t q = d ? t / g->bcnt[d] : 0, i = t - q * g->bcnt[d];
        a += i * g->bsa[d];
        b += i * g->bsb[d];
        c += i * g->bsc[d];
        t = q;
    }
    *oa = a;
    *ob = b;
    *oc = c;
}

/* kernel_orthonormalize run by thread `tid` of `nt` (one block): modified
 * Gram-Schmidt, each column projected out twice, dot products in double. A
 * thread touches only rows tid, tid + nt, ..., so only the dot products cross
 * threads (cu_block_sum, which every thread reaches with the same value, so
 * the branches below are taken by all threads alike). */
CUK_FN double cu_col_dot(const float *p, int64_t rows, int r, int a, int b, int64_t tid,
                         int64_t nt)
{
    double s = 0;
    for (int64_t i = tid; i < rows; i += nt) s += (double)p[i * r + a] * p[i * r + b];
    return cu_block_sum(s);
}

CUK_FN void cu_col_project_out(float *p, int64_t rows, int r, int j, int64_t tid, int64_t nt)
{
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < j; k++) {
            double d = cu_col_dot(p, rows, r, k, j, tid, nt);
            for (int64_t i = tid; i < rows; i += nt) p[i * r + j] -= (float)(d * p[i * r + k]);
        }
}

/* Column j := e_k minus its projection on columns 0..j-1; returns its norm. */
CUK_FN double cu_col_set_unit(float *p, int64_t rows, int r, int j, int64_t k, int64_t tid,
                              int64_t nt)
{
    for (int64_t i = tid; i < rows; i += nt) p[i * r + j] = i == k ? 1.0f : 0.0f;
    cu_col_project_out(p, rows, r, j, tid, nt);
    return sqrt(cu_col_dot(p, rows, r, j, j, tid, nt));
}

CUK_FN void cu_orthonormalize(float *p, int64_t rows, int r, int64_t tid, int64_t nt)
{
    for (int j = 0; j < r; j++) {
        double before = sqrt(cu_col_dot(p, rows, r, j, j, tid, nt));
        cu_col_project_out(p, rows, r, j, tid, nt);
        double nrm = sqrt(cu_col_dot(p, rows, r, j, j, tid, nt));
        /* a residue at rounding level of the input carries no direction:
         * take the first e_k that keeps half its length, else the best */
        if (!(nrm > 1e-4 * before && nrm > 1e-30)) {
            int64_t best = -1;
            double best_nrm = 0;
            for (int64_t k = 0; k < rows; k++) {
                nrm = cu_col_set_unit(p, rows, r, j, k, tid, nt);
                if (nrm > 0.5) {
                    best = -1;
                    break;
                }
                if (nrm > best_nrm) best = k, best_nrm = nrm;
            }
            if (best >= 0) nrm = cu_col_set_unit(p, rows, r, j, best, tid, nt);
        }
        if (!(nrm > 1e-30)) { /* r > rows: no direction is left */
            for (int64_t i = tid; i < rows; i += nt) p[i * r + j] = 0;
            continue;
        }
        for (int64_t i = tid; i < rows; i += nt) p[i * r + j] = (float)(p[i * r + j] / nrm);
    }
}

/* ----------------------------------------------------------------------------
 * Plans (host) */

/* The map dst (letters dl) = (acc ? dst : 0) + alpha * src (letters sl).
 * Output dims follow dst's order, summed dims src's; adjacent letters merge
 * where src's strides allow (dst is packed, so its own always do). */
static inline void cu_map_plan(CuMap *m, const char *dl, const char *sl,
                               const int64_t size[IR_LETTERS], float alpha, bool acc)
{
    int64_t ss[IR_LETTERS];
    cu_strides(sl, size, ss);
    memset(m, 0, sizeof *m);
    m->alpha = alpha;
    m->acc = acc;
    m->nout = m->nsum = 1;
    for (const char *p = dl; *p; p++) {
        const int l = *p - 'a';
        if (size[l] <= 1) continue;
        m->nout *= size[l];
        if (m->nd && m->dsrc[m->nd - 1] == ss[l] * size[l]) {
            m->dcnt[m->nd - 1] *= size[l];
            m->dsrc[m->nd - 1] = ss[l];
        } else {
            m->dcnt[m->nd] = size[l];
            m->dsrc[m->nd++] = ss[l];
        }
    }
    for (const char *p = sl; *p; p++) {
        const int l = *p - 'a';
        if (size[l] <= 1 || strchr(dl, *p)) continue;
        m->nsum *= size[l];
        if (m->ns && m->ssrc[m->ns - 1] == ss[l] * size[l]) {
            m->scnt[m->ns - 1] *= size[l];
            m->ssrc[m->ns - 1] = ss[l];
        } else {
            m->scnt[m->ns] = size[l];
            m->ssrc[m->ns++] = ss[l];
        }
    }
}

/* What runs the steps of a contraction: scratch of n floats (NULL with err),
 * a map (CuMap), a batched GEMM (CuGemm). Each step returns 0 or -1 with err.
 * min_run: a role whose letters merge into a GEMM dimension only in pieces
 * keeps its largest piece in the GEMM (the rest become batch letters) when
 * that piece has min_run elements or more; otherwise the operands are copied
 * into GEMM order (k_gemm_min_run on the CPU; tests vary it). */
typedef struct {
    void *ctx;
    int64_t min_run;
    float *(*scratch)(void *ctx, int64_t n, Err *err);
    void (*release)(void *ctx, float *p);
    int (*map)(void *ctx, const CuMap *m, float *dst, const float *src, Err *err);
    int (*gemm)(void *ctx, const CuGemm *g, const float *a, const float *b, float *c, Err *err);
} CuEngine;

#define CU_MIN_RUN 64

static inline int cu_map(const CuEngine *e, float *dst, const char *dl, const float *src,
                         const char *sl, const int64_t size[IR_LETTERS], float alpha, bool acc,
                         Err *err)
{
    CuMap m;
    cu_map_plan(&m, dl, sl, size, alpha, acc);
    return e->map(e->ctx, &m, dst, src, err);
}

/* The letters of one GEMM dimension, outermost first. */
typedef struct {
    int n;
    char l[IR_LETTERS + 1];
    int64_t numel;
} CuRun;

static inline void cu_run_from(CuRun *r, uint32_t m, const char *L,
                               const int64_t size[IR_LETTERS])
{
    r->n = cu_add_letters(r->l, 0, L, m);
    r->numel = cu_mask_numel(m, size);
}

static inline uint32_t cu_run_mask(const CuRun *r)
{
    uint32_t m = 0;
    for (int i = 0; i < r->n; i++) m |= 1u << (r->l[i] - 'a');
    return m;
}

/* A run is one dimension of a buffer when stepping each letter equals running
 * through the next one. */
static inline bool cu_run_merges(const CuRun *r, const int64_t st[IR_LETTERS],
                                 const int64_t size[IR_LETTERS])
{
    for (int i = 0; i + 1 < r->n; i++) {
        int a = r->l[i] - 'a', b = r->l[i + 1] - 'a';
        if (st[a] != st[b] * size[b]) return false;
    }
    return true;
}

static inline int64_t cu_run_stride(const CuRun *r, const int64_t st[IR_LETTERS])
{
    return r->n ? st[r->l[r->n - 1] - 'a'] : 0;
}

/* The GEMM dimension of the role with letters m, held by buffers P and Q (np,
 * nq elements): the largest piece that merges in both, when that is all of
 * them or has min_run elements; otherwise all of them, in the order of the
 * bigger buffer that they merge in (the other buffer will be copied). As
 * pick_run in k_contract.c. */
static inline void cu_pick_run(CuRun *out, uint32_t m, const char *lp,
                               const int64_t sp[IR_LETTERS], int64_t np, const char *lq,
                               const int64_t sq[IR_LETTERS], int64_t nq,
                               const int64_t size[IR_LETTERS], int64_t min_run)
{
    CuRun all, best, cur;
    memset(&best, 0, sizeof best);
    memset(&cur, 0, sizeof cur);
    best.numel = cur.numel = 1;
    cu_run_from(&all, m, lp, size);
    for (int i = 0; i <= all.n; i++) {
        int l = i < all.n ? all.l[i] - 'a' : -1;
        if (l >= 0 && cur.n) {
            int prev = cur.l[cur.n - 1] - 'a';
            if (sp[prev] == sp[l] * size[l] && sq[prev] == sq[l] * size[l]) {
                cur.l[cur.n++] = (char)('a' + l);
                cur.l[cur.n] = 0;
                cur.numel *= size[l];
                continue;
            }
        }
        if (cur.numel > best.numel) best = cur;
        if (l >= 0) {
            cur.n = 1;
            cur.l[0] = (char)('a' + l);
            cur.l[1] = 0;
            cur.numel = size[l];
        }
    }
    if (best.n == all.n || best.numel >= min_run) {
        *out = best;
        return;
    }
    CuRun alt;
    cu_run_from(&alt, m, lq, size);
    bool mp = cu_run_merges(&all, sp, size), mq = cu_run_merges(&alt, sq, size);
    *out = mq && (!mp || nq > np) ? alt : all;
}

/* A matrix X[i][j] at i*si + j*sj (r rows, c columns) as BLAS takes it:
 * row-major with leading dimension ld, or transposed; false when neither
 * dimension has unit stride, or the leading dimension is one BLAS refuses. */
typedef struct {
    bool trans;
    int64_t ld;
} CuMat;

static inline bool cu_orient(int64_t r, int64_t c, int64_t si, int64_t sj, CuMat *m)
{
    if (c == 1 || sj == 1) {
        m->trans = false;
        m->ld = r == 1 ? c : si;
        return m->ld >= c;
    }
    if (r == 1 || si == 1) {
        m->trans = true;
        m->ld = sj;
        return m->ld >= r;
    }
    return false;
}

static inline bool cu_as_matrix(const CuRun *rows, const CuRun *cols, const int64_t st[IR_LETTERS],
                                const int64_t size[IR_LETTERS], CuMat *m)
{
    return cu_run_merges(rows, st, size) && cu_run_merges(cols, st, size) &&
           cu_orient(rows->numel, cols->numel, cu_run_stride(rows, st), cu_run_stride(cols, st), m);
}

/* Letters of a copy of a buffer in GEMM order: its batch letters as they
 * were, then the two runs. */
static inline void cu_gemm_order(char *out, const char *L, uint32_t batch, const CuRun *r1,
                                 const CuRun *r2)
{
    int n = cu_add_letters(out, 0, L, batch);
    memcpy(out + n, r1->l, (size_t)r1->n);
    memcpy(out + n + r1->n, r2->l, (size_t)r2->n);
    out[n + r1->n + r2->n] = 0;
}

static inline bool cu_blas_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* Fills g's batch dims: the batch letters in the order of A's, then B's, then
 * C's letters, adjacent ones merged where all three strides allow. */
static inline void cu_gemm_batch(CuGemm *g, uint32_t batch, const char *la, const char *lb,
                                 const char *lc, const int64_t sa[IR_LETTERS],
                                 const int64_t sb[IR_LETTERS], const int64_t sc[IR_LETTERS],
                                 const int64_t size[IR_LETTERS])
{
    char order[IR_LETTERS + 1];
    int n = cu_add_letters(order, 0, la, batch);
    n = cu_add_letters(order, n, lb, batch);
    cu_add_letters(order, n, lc, batch);
    g->nb = 0;
    g->count = 1;
    for (const char *p = order; *p; p++) {
        const int l = *p - 'a', d = g->nb - 1;
        g->count *= size[l];
        if (d >= 0 && g->bsa[d] == sa[l] * size[l] && g->bsb[d] == sb[l] * size[l] &&
            g->bsc[d] == sc[l] * size[l]) {
            g->bcnt[d] *= size[l];
            g->bsa[d] = sa[l];
            g->bsb[d] = sb[l];
            g->bsc[d] = sc[l];
            continue;
        }
        g->bcnt[g->nb] = size[l];
        g->bsa[g->nb] = sa[l];
        g->bsb[g->nb] = sb[l];
        g->bsc[g->nb++] = sc[l];
    }
}

/* ----------------------------------------------------------------------------
 * The contraction engine (host code driving e's steps) */

/* c = (acc ? c : 0) + einsum(a, b): the product summed over the letters of a
 * and b missing from c; letters of c in neither are broadcast (k_contract2). */
static inline int cu_contract2(const CuEngine *e, float *c, const char *lc, const float *a,
                               const char *la, const float *b, const char *lb,
                               const int64_t size[IR_LETTERS], bool acc, Err *err)
{
    uint32_t ma = cu_big_mask(la, size), mb = cu_big_mask(lb, size), mc = cu_big_mask(lc, size);
    uint32_t only_a = ma & ~mb & ~mc, only_b = mb & ~ma & ~mc, only_c = mc & ~ma & ~mb;
    int rc = -1;

    /* A letter in one operand alone is summed out of it first; a letter of
     * the result alone is a broadcast of the result without it. */
    if (only_a || only_b) {
        char la2[IR_LETTERS + 1], lb2[IR_LETTERS + 1];
        float *ta = NULL, *tb = NULL;
        cu_add_letters(la2, 0, la, ~only_a);
        cu_add_letters(lb2, 0, lb, ~only_b);
        if (only_a && (!(ta = e->scratch(e->ctx, cu_numel(la2, size), err)) ||
                       cu_map(e, ta, la2, a, la, size, 1, false, err)))
            goto out_ab;
        if (only_b && (!(tb = e->scratch(e->ctx, cu_numel(lb2, size), err)) ||
                       cu_map(e, tb, lb2, b, lb, size, 1, false, err)))
            goto out_ab;
        rc = cu_contract2(e, c, lc, ta ? ta : a, la2, tb ? tb : b, lb2, size, acc, err);
    out_ab:
        e->release(e->ctx, ta);
        e->release(e->ctx, tb);
        return rc;
    }
    if (only_c) {
        char lc2[IR_LETTERS + 1];
        cu_add_letters(lc2, 0, lc, ~only_c);
        float *t = e->scratch(e->ctx, cu_numel(lc2, size), err);
        if (!t) return -1;
        rc = cu_contract2(e, t, lc2, a, la, b, lb, size, false, err);
        if (!rc) rc = cu_map(e, c, lc, t, lc2, size, 1, acc, err);
        e->release(e->ctx, t);
        return rc;
    }

    uint32_t mm = ma & mc & ~mb, mn = mb & mc & ~ma, mk = ma & mb & ~mc;
    int64_t sa[IR_LETTERS], sb[IR_LETTERS], sc[IR_LETTERS];
    cu_strides(la, size, sa);
    cu_strides(lb, size, sb);
    cu_strides(lc, size, sc);
    const int64_t na = cu_numel(la, size), nb = cu_numel(lb, size), nc = cu_numel(lc, size);
    /* M and N may leave pieces to the batch; K may not (GEMMs of one batch
     * write disjoint blocks of C, never a sum), so it is whole or copied */
    CuRun rm, rn, rk;
    cu_pick_run(&rm, mm, la, sa, na, lc, sc, nc, size, e->min_run);
    cu_pick_run(&rn, mn, lb, sb, nb, lc, sc, nc, size, e->min_run);
    cu_pick_run(&rk, mk, la, sa, na, lb, sb, nb, size, INT64_MAX);
    const uint32_t batch =
        (ma | mb | mc) & ~(cu_run_mask(&rm) | cu_run_mask(&rn) | cu_run_mask(&rk));

    /* Operands that are no matrix under these runs are copied into GEMM
     * order (the result: computed in that order, then added back). */
    CuMat A, B, C;
    CuGemm g;
    float *ta = NULL, *tb = NULL, *tc = NULL, *pc;
    const float *pa, *pb;
    char la2[IR_LETTERS + 1], lb2[IR_LETTERS + 1], lc2[IR_LETTERS + 1];
    const char *lap = la, *lbp = lb, *lcp = lc;
    if (!cu_as_matrix(&rm, &rk, sa, size, &A)) {
        cu_gemm_order(la2, la, batch, &rm, &rk);
        if (!(ta = e->scratch(e->ctx, na, err)) || cu_map(e, ta, la2, a, la, size, 1, false, err))
            goto out;
        lap = la2;
        cu_strides(la2, size, sa);
        cu_as_matrix(&rm, &rk, sa, size, &A);
    }
    if (!cu_as_matrix(&rk, &rn, sb, size, &B)) {
        cu_gemm_order(lb2, lb, batch, &rk, &rn);
        if (!(tb = e->scratch(e->ctx, nb, err)) || cu_map(e, tb, lb2, b, lb, size, 1, false, err))
            goto out;
        lbp = lb2;
        cu_strides(lb2, size, sb);
        cu_as_matrix(&rk, &rn, sb, size, &B);
    }
    if (!cu_as_matrix(&rm, &rn, sc, size, &C)) {
        cu_gemm_order(lc2, lc, batch, &rm, &rn);
        if (!(tc = e->scratch(e->ctx, nc, err))) goto out;
        lcp = lc2;
        cu_strides(lc2, size, sc);
        cu_as_matrix(&rm, &rn, sc, size, &C);
    }

    memset(&g, 0, sizeof g);
    pa = ta ? ta : a;
    pb = tb ? tb : b;
    pc = tc ? tc : c;
    g.beta = tc || !acc ? 0.0f : 1.0f;
    g.k = rk.numel;
    if (!C.trans) {
        g.ta = A.trans, g.tb = B.trans;
        g.m = rm.numel, g.n = rn.numel;
        g.lda = A.ld, g.ldb = B.ld;
        cu_gemm_batch(&g, batch, lap, lbp, lcp, sa, sb, sc, size);
    } else { /* C stored transposed: C^T = B^T A^T */
        const float *t = pa;
        pa = pb;
        pb = t;
        g.ta = !B.trans, g.tb = !A.trans;
        g.m = rn.numel, g.n = rm.numel;
        g.lda = B.ld, g.ldb = A.ld;
        cu_gemm_batch(&g, batch, lap, lbp, lcp, sb, sa, sc, size);
    }
    g.ldc = C.ld;
    if (!cu_blas_int(g.m) || !cu_blas_int(g.n) || !cu_blas_int(g.k) || !cu_blas_int(g.lda) ||
        !cu_blas_int(g.ldb) || !cu_blas_int(g.ldc) || !cu_blas_int(g.count)) {
        err_set(err, "contraction: a GEMM dimension (M %lld, N %lld, K %lld, batch %lld) or "
                "leading dimension exceeds the BLAS integer range", (long long)rm.numel,
                (long long)rn.numel, (long long)rk.numel, (long long)g.count);
        goto out;
    }
    if (e->gemm(e->ctx, &g, pa, pb, pc, err)) goto out;
    rc = tc ? cu_map(e, c, lc, tc, lc2, size, 1, acc, err) : 0;
out:
    e->release(e->ctx, ta);
    e->release(e->ctx, tb);
    e->release(e->ctx, tc);
    return rc;
}

/* The same for three operands: the cheapest pair first (k_contract3). */
static inline int cu_contract3(const CuEngine *e, float *c, const char *lc, const float *const x[3],
                               const char *const lx[3], const int64_t size[IR_LETTERS], bool acc,
                               Err *err)
{
    uint32_t mx[3], mc = cu_big_mask(lc, size);
    for (int k = 0; k < 3; k++) mx[k] = cu_big_mask(lx[k], size);
    int third = 2;
    double best = 0;
    for (int t = 2; t >= 0; t--) {
        int i = (t + 1) % 3, j = (t + 2) % 3;
        uint32_t pair = mx[i] | mx[j], keep = pair & (mx[t] | mc);
        double cost = (double)cu_mask_numel(pair, size) +
                      (double)cu_mask_numel(keep | mx[t] | mc, size);
        if (t == 2 || cost < best) {
            best = cost;
            third = t;
        }
    }
    int i = third == 0 ? 1 : 0, j = third == 2 ? 1 : 2;
    uint32_t keep = (mx[i] | mx[j]) & (mx[third] | mc);

    /* The intermediate as the second step wants it, [batch][M][K]: letters
     * shared with the third and the result, then the result's own, then the
     * third's own. */
    char li[IR_LETTERS + 1];
    int n = cu_add_letters(li, 0, lc, keep & mx[third]);
    n = cu_add_letters(li, n, lc, keep & ~mx[third]);
    cu_add_letters(li, n, lx[third], keep & ~mc);

    float *t = e->scratch(e->ctx, cu_numel(li, size), err);
    if (!t) return -1;
    int rc = cu_contract2(e, t, li, x[i], lx[i], x[j], lx[j], size, false, err);
    if (!rc) rc = cu_contract2(e, c, lc, t, li, x[third], lx[third], size, acc, err);
    e->release(e->ctx, t);
    return rc;
}

/* ----------------------------------------------------------------------------
 * The ops (k_matmul_*, k_mean_* in k_contract.c) */

static inline int cu_matmul_forward(const CuEngine *e, const KernelShape *ks,
                                    const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    int rc;
    if (op->nin == 2) {
        rc = cu_contract2(e, out, op->out_letters, (const float *)in[0], op->in_letters[0],
                          (const float *)in[1], op->in_letters[1], ks->size, false, err);
    } else {
        const float *x[3] = {(const float *)in[0], (const float *)in[1], (const float *)in[2]};
        const char *lx[3] = {op->in_letters[0], op->in_letters[1], op->in_letters[2]};
        rc = cu_contract3(e, out, op->out_letters, x, lx, ks->size, false, err);
    }
    return rc ? err_prefix(err, "op \"%s\" (matmul \"%s\")", op->name, op->spec) : 0;
}

/* d(operand k) += the einsum of dout and the other operands onto k's letters. */
static inline int cu_matmul_backward(const CuEngine *e, const KernelShape *ks,
                                     const void *const *in, const float *dout,
                                     float *const *din, Err *err)
{
    const Op *op = ks->op;
    for (int k = 0; k < op->nin; k++) {
        if (!din[k]) continue;
        int rc;
        if (op->nin == 2) {
            rc = cu_contract2(e, din[k], op->in_letters[k], dout, op->out_letters,
                              (const float *)in[1 - k], op->in_letters[1 - k], ks->size, true,
                              err);
        } else {
            int o1 = k == 0 ? 1 : 0, o2 = k == 2 ? 1 : 2;
            const float *x[3] = {dout, (const float *)in[o1], (const float *)in[o2]};
            const char *lx[3] = {op->out_letters, op->in_letters[o1], op->in_letters[o2]};
            rc = cu_contract3(e, din[k], op->in_letters[k], x, lx, ks->size, true, err);
        }
        if (rc) return err_prefix(err, "op \"%s\" (matmul \"%s\") gradient of input %d",
                                  op->name, op->spec, k);
    }
    return 0;
}

/* The mean's divisor is the GLOBAL count of the averaged letters, so the
 * shards of a split letter hold exact addends of the whole mean. */
static inline float cu_mean_scale(const KernelShape *ks)
{
    const Op *op = ks->op;
    double count = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!strchr(op->out_letters, *p)) count *= (double)ks->total[*p - 'a'];
    return (float)(1.0 / count);
}

/* Forward: out = scale * (in summed over the averaged letters); backward:
 * din += scale * dout broadcast over them. */
static inline void cu_mean_plan(CuMap *m, const KernelShape *ks, bool backward)
{
    const Op *op = ks->op;
    if (!backward)
        cu_map_plan(m, op->out_letters, op->in_letters[0], ks->size, cu_mean_scale(ks), false);
    else
        cu_map_plan(m, op->in_letters[0], op->out_letters, ks->size, cu_mean_scale(ks), true);
}

#endif
