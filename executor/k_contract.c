/*
 * k_contract.c — the contracting kernels: matmul (any einsum of two or three
 * operands), embedding (a gather that behaves as a contraction over the
 * table row), conv2d (im2col + GEMM), pool2d and mean.
 *
 * One engine, k_contract2, serves every matmul spec and every gradient of
 * one. It sorts an einsum's letters into the roles of a batched GEMM
 *     batch = in A, B and C      M = in A and C      N = in B and C
 *     K     = in A and B (summed)
 * and views each operand as a matrix through strides alone: the letters of a
 * role merge into one GEMM dimension when they sit next to each other, in the
 * same order, in both operands that hold them, and an operand is a matrix
 * when one of its two dimensions has unit stride (it is then passed as is or
 * transposed, with its leading dimension). Batch letters, and the pieces of a
 * role that do not merge, become loops around cblas_sgemm. Only an operand
 * that is no matrix under any of these views is copied into GEMM order, so
 * every matmul of the zoo (and every gradient of one) calls SGEMM on the
 * caller's buffers directly. Small contractions (fewer multiply-adds per GEMM
 * than a call costs) run as plain loops instead.
 *
 * Legend: A, B = the operands, C = the result; M, N, K = GEMM rows, columns,
 * summed length; la/lb/lc = their letters; sa/sb/sc = per-letter strides
 * (0 for a letter the buffer lacks); n,c,h,w / o,r,s = image batch, channels,
 * input spatial / out-channels, window; P, Q = output height, width.
 */
#include "kernels_internal.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * Letters and masks (bit l = letter 'a' + l; only letters longer than 1 count,
 * since a letter of size 1 changes no offset) */

static uint32_t big_mask(const char *L, const int64_t size[IR_LETTERS])
{
    uint32_t m = 0;
    for (const char *p = L; *p; p++)
        if (size[*p - 'a'] > 1) m |= 1u << (*p - 'a');
    return m;
}

static int64_t mask_numel(uint32_t m, const int64_t size[IR_LETTERS])
{
    int64_t n = 1;
    for (int l = 0; l < IR_LETTERS; l++)
        if (m >> l & 1) n *= size[l];
    return n;
}

/* Appends the letters of L that are in m to out (n letters so far). */
static int add_letters(char *out, int n, const char *L, uint32_t m)
{
    for (const char *p = L; *p; p++)
        if ((m >> (*p - 'a') & 1) && !memchr(out, *p, (size_t)n)) out[n++] = *p;
    out[n] = 0;
    return n;
}

/* ----------------------------------------------------------------------------
 * GEMM views */

/* The letters of one GEMM dimension, outermost first. */
typedef struct {
    int n;
    char l[IR_LETTERS + 1];
    int64_t numel;
} Run;

static void run_from(Run *r, uint32_t m, const char *L, const int64_t size[IR_LETTERS])
{
    r->n = add_letters(r->l, 0, L, m);
    r->numel = mask_numel(m, size);
}

static uint32_t run_mask(const Run *r)
{
    uint32_t m = 0;
    for (int i = 0; i < r->n; i++) m |= 1u << (r->l[i] - 'a');
    return m;
}

/* A run is one dimension of a buffer when stepping each letter equals running
 * through the next one. */
static bool run_merges(const Run *r, const int64_t st[IR_LETTERS], const int64_t size[IR_LETTERS])
{
    for (int i = 0; i + 1 < r->n; i++) {
        int a = r->l[i] - 'a', b = r->l[i + 1] - 'a';
        if (st[a] != st[b] * size[b]) return false;
    }
    return true;
}

static int64_t run_stride(const Run *r, const int64_t st[IR_LETTERS])
{
    return r->n ? st[r->l[r->n - 1] - 'a'] : 0;
}

/* The GEMM dimension of the role with letters m, held by buffers P and Q: the
 * largest piece that merges in both, when that is all of them or big enough
 * to leave the rest to loops; otherwise all of them, in the order of the
 * bigger buffer that they merge in (the other buffer will be copied). */
static void pick_run(Run *out, uint32_t m, const char *lp, const int64_t sp[IR_LETTERS],
                     int64_t np, const char *lq, const int64_t sq[IR_LETTERS], int64_t nq,
                     const int64_t size[IR_LETTERS])
{
    Run all, best = {.numel = 1}, cur = {.numel = 1};
    run_from(&all, m, lp, size);
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
    if (best.n == all.n || best.numel >= k_gemm_min_run) {
        *out = best;
        return;
    }
    Run alt;
    run_from(&alt, m, lq, size);
    bool mp = run_merges(&all, sp, size), mq = run_merges(&alt, sq, size);
    *out = mq && (!mp || nq > np) ? alt : all;
}

/* A matrix X[i][j] at i*si + j*sj (r rows, c columns) as BLAS takes it:
 * row-major with leading dimension ld, or transposed. */
typedef struct {
    bool trans;
    int64_t ld;
} Mat;

static bool orient(int64_t r, int64_t c, int64_t si, int64_t sj, Mat *m)
{
    if (c == 1 || sj == 1) {
        m->trans = false;
        m->ld = r == 1 ? c : si;
        return true;
    }
    if (r == 1 || si == 1) {
        m->trans = true;
        m->ld = sj;
        return true;
    }
    return false;
}

static bool as_matrix(const Run *rows, const Run *cols, const int64_t st[IR_LETTERS],
                      const int64_t size[IR_LETTERS], Mat *m)
{
    return run_merges(rows, st, size) && run_merges(cols, st, size) &&
           orient(rows->numel, cols->numel, run_stride(rows, st), run_stride(cols, st), m);
}

/* Letters of a copy of a buffer in GEMM order: its loop letters as they were,
 * then the two runs. */
static void gemm_order(char *out, const char *L, uint32_t loops, const Run *r1, const Run *r2)
{
    int n = add_letters(out, 0, L, loops);
    memcpy(out + n, r1->l, (size_t)r1->n);
    memcpy(out + n + r1->n, r2->l, (size_t)r2->n);
    out[n + r1->n + r2->n] = 0;
}

/* ----------------------------------------------------------------------------
 * The contraction engine */

/* Plain loops, for contractions too small for a GEMM call to pay: C's letters
 * outside, the summed letters inside (so the sum stays in a register). */
static void contract_loops(float *c, const char *lc, const float *a, const char *la,
                           const float *b, const char *lb, const int64_t size[IR_LETTERS],
                           bool acc)
{
    int64_t sa[IR_LETTERS], sb[IR_LETTERS], sc[IR_LETTERS];
    k_strides(la, size, sa);
    k_strides(lb, size, sb);
    k_strides(lc, size, sc);
    if (!acc) memset(c, 0, (size_t)k_numel(lc, size) * sizeof *c);
    char order[IR_LETTERS + 1];
    int n = add_letters(order, 0, lc, ~0u);
    n = add_letters(order, n, la, ~0u);
    add_letters(order, n, lb, ~0u);

    KLoop lp;
    kloop_init(&lp, order, size, 3, (const int64_t *const[]){sa, sb, sc});
    const int64_t n1 = lp.inner, a1 = lp.ist[0], b1 = lp.ist[1], c1 = lp.ist[2];
    do {
        const float *x = a + lp.off[0], *y = b + lp.off[1];
        float *z = c + lp.off[2];
        if (c1 == 0) {
            float s = 0;
            if (a1 == 1 && b1 == 1)
                for (int64_t i = 0; i < n1; i++) s += x[i] * y[i];
            else
                for (int64_t i = 0; i < n1; i++) s += x[i * a1] * y[i * b1];
            *z += s;
        } else if (c1 == 1 && a1 == 1 && b1 == 0) {
            const float yv = *y;
            for (int64_t i = 0; i < n1; i++) z[i] += x[i] * yv;
        } else if (c1 == 1 && a1 == 0 && b1 == 1) {
            const float xv = *x;
            for (int64_t i = 0; i < n1; i++) z[i] += xv * y[i];
        } else {
            for (int64_t i = 0; i < n1; i++) z[i * c1] += x[i * a1] * y[i * b1];
        }
    } while (kloop_next(&lp));
}

/* One SGEMM per iteration of the loop letters, on the caller's buffers. */
static void gemm_loops(KLoop *lp, const float *a, const Mat *A, const float *b, const Mat *B,
                       float *c, const Mat *C, int64_t M, int64_t N, int64_t K, float beta)
{
    const enum CBLAS_TRANSPOSE ta = A->trans ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = B->trans ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE nta = A->trans ? CblasNoTrans : CblasTrans;
    const enum CBLAS_TRANSPOSE ntb = B->trans ? CblasNoTrans : CblasTrans;
    do {
        for (int64_t i = 0; i < lp->inner; i++) {
            const float *xa = a + lp->off[0] + i * lp->ist[0];
            const float *xb = b + lp->off[1] + i * lp->ist[1];
            float *xc = c + lp->off[2] + i * lp->ist[2];
            if (!C->trans)
                cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, 1.0f, xa, (int)A->ld,
                            xb, (int)B->ld, beta, xc, (int)C->ld);
            else /* C stored transposed: C^T = B^T A^T */
                cblas_sgemm(CblasRowMajor, ntb, nta, (int)N, (int)M, (int)K, 1.0f, xb,
                            (int)B->ld, xa, (int)A->ld, beta, xc, (int)C->ld);
        }
    } while (kloop_next(lp));
}

static bool blas_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

int k_contract2(float *c, const char *lc, const float *a, const char *la, const float *b,
                const char *lb, const int64_t size[IR_LETTERS], bool acc, Err *err)
{
    uint32_t ma = big_mask(la, size), mb = big_mask(lb, size), mc = big_mask(lc, size);
    uint32_t only_a = ma & ~mb & ~mc, only_b = mb & ~ma & ~mc, only_c = mc & ~ma & ~mb;
    int rc = 0;

    /* A letter in one operand alone is summed out of it first; a letter of
     * the result alone is a broadcast of the result without it. */
    if (only_a || only_b) {
        char la2[IR_LETTERS + 1], lb2[IR_LETTERS + 1];
        float *ta = NULL, *tb = NULL;
        add_letters(la2, 0, la, ~only_a);
        add_letters(lb2, 0, lb, ~only_b);
        if (only_a && !(ta = k_scratch(k_numel(la2, size), "contraction", err))) return -1;
        if (only_b && !(tb = k_scratch(k_numel(lb2, size), "contraction", err))) {
            free(ta);
            return -1;
        }
        if (ta) k_map(ta, la2, a, la, size, 1, false);
        if (tb) k_map(tb, lb2, b, lb, size, 1, false);
        rc = k_contract2(c, lc, ta ? ta : a, la2, tb ? tb : b, lb2, size, acc, err);
        free(ta);
        free(tb);
        return rc;
    }
    if (only_c) {
        char lc2[IR_LETTERS + 1];
        add_letters(lc2, 0, lc, ~only_c);
        float *t = k_scratch(k_numel(lc2, size), "contraction", err);
        if (!t) return -1;
        rc = k_contract2(t, lc2, a, la, b, lb, size, false, err);
        if (!rc) k_map(c, lc, t, lc2, size, 1, acc);
        free(t);
        return rc;
    }

    uint32_t mm = ma & mc & ~mb, mn = mb & mc & ~ma, mk = ma & mb & ~mc;
    if (mask_numel(mm, size) * mask_numel(mn, size) * mask_numel(mk, size) < k_gemm_min_work) {
        contract_loops(c, lc, a, la, b, lb, size, acc);
        return 0;
    }

    int64_t sa[IR_LETTERS], sb[IR_LETTERS], sc[IR_LETTERS];
    k_strides(la, size, sa);
    k_strides(lb, size, sb);
    k_strides(lc, size, sc);
    int64_t na = k_numel(la, size), nb = k_numel(lb, size), nc = k_numel(lc, size);
    Run rm, rn, rk;
    pick_run(&rm, mm, la, sa, na, lc, sc, nc, size);
    pick_run(&rn, mn, lb, sb, nb, lc, sc, nc, size);
    pick_run(&rk, mk, la, sa, na, lb, sb, nb, size);
    uint32_t loops = (ma | mb | mc) & ~(run_mask(&rm) | run_mask(&rn) | run_mask(&rk));

    /* Operands that are no matrix under these runs are copied into GEMM
     * order (the result: computed in that order, then added back). */
    Mat A, B, C;
    float *ta = NULL, *tb = NULL, *tc = NULL;
    char la2[IR_LETTERS + 1], lb2[IR_LETTERS + 1], lc2[IR_LETTERS + 1];
    if (!as_matrix(&rm, &rk, sa, size, &A)) {
        gemm_order(la2, la, loops, &rm, &rk);
        if (!(ta = k_scratch(na, "contraction", err))) goto fail;
        k_map(ta, la2, a, la, size, 1, false);
        k_strides(la2, size, sa);
        as_matrix(&rm, &rk, sa, size, &A);
    }
    if (!as_matrix(&rk, &rn, sb, size, &B)) {
        gemm_order(lb2, lb, loops, &rk, &rn);
        if (!(tb = k_scratch(nb, "contraction", err))) goto fail;
        k_map(tb, lb2, b, lb, size, 1, false);
        k_strides(lb2, size, sb);
        as_matrix(&rk, &rn, sb, size, &B);
    }
    if (!as_matrix(&rm, &rn, sc, size, &C)) {
        gemm_order(lc2, lc, loops, &rm, &rn);
        if (!(tc = k_scratch(nc, "contraction", err))) goto fail;
        k_strides(lc2, size, sc);
        as_matrix(&rm, &rn, sc, size, &C);
    }
    if (!blas_int(rm.numel) || !blas_int(rn.numel) || !blas_int(rk.numel) || !blas_int(A.ld) ||
        !blas_int(B.ld) || !blas_int(C.ld)) {
        err_set(err, "contraction: a GEMM dimension (M %lld, N %lld, K %lld) or leading "
                "dimension exceeds the BLAS integer range", (long long)rm.numel,
                (long long)rn.numel, (long long)rk.numel);
        goto fail;
    }
    /* Summed letters left to loops add their GEMMs into one block of C. */
    bool cacc = tc ? false : acc;
    float *pc = tc ? tc : c;
    if ((loops & mk) && !cacc) {
        memset(pc, 0, (size_t)nc * sizeof *pc);
        cacc = true;
    }
    char order[IR_LETTERS + 1];
    int n = add_letters(order, 0, la, loops);
    n = add_letters(order, n, lb, loops);
    add_letters(order, n, lc, loops);
    KLoop lp;
    kloop_init(&lp, order, size, 3, (const int64_t *const[]){sa, sb, sc});
    gemm_loops(&lp, ta ? ta : a, &A, tb ? tb : b, &B, pc, &C, rm.numel, rn.numel, rk.numel,
               cacc ? 1.0f : 0.0f);
    if (tc) k_map(c, lc, tc, lc2, size, 1, acc);
    free(ta);
    free(tb);
    free(tc);
    return 0;
fail:
    free(ta);
    free(tb);
    free(tc);
    return -1;
}

int k_contract3(float *c, const char *lc, const float *const x[3], const char *const lx[3],
                const int64_t size[IR_LETTERS], bool acc, Err *err)
{
    /* Contract the pair (i, j) that makes the two steps cheapest, keeping the
     * letters the third operand or the result still needs. */
    uint32_t mx[3], mc = big_mask(lc, size);
    for (int k = 0; k < 3; k++) mx[k] = big_mask(lx[k], size);
    int third = 2;
    double best = 0;
    for (int t = 2; t >= 0; t--) {
        int i = (t + 1) % 3, j = (t + 2) % 3;
        uint32_t pair = mx[i] | mx[j], keep = pair & (mx[t] | mc);
        double cost = (double)mask_numel(pair, size) + (double)mask_numel(keep | mx[t] | mc, size);
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
    int n = add_letters(li, 0, lc, keep & mx[third]);
    n = add_letters(li, n, lc, keep & ~mx[third]);
    add_letters(li, n, lx[third], keep & ~mc);

    float *t = k_scratch(k_numel(li, size), "contraction", err);
    if (!t) return -1;
    int rc = k_contract2(t, li, x[i], lx[i], x[j], lx[j], size, false, err);
    if (!rc) rc = k_contract2(c, lc, t, li, x[third], lx[third], size, acc, err);
    free(t);
    return rc;
}

/* ----------------------------------------------------------------------------
 * matmul */

int k_matmul_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    int rc;
    if (op->nin == 2)
        rc = k_contract2(out, op->out_letters, in[0], op->in_letters[0], in[1],
                         op->in_letters[1], ks->size, false, err);
    else
        rc = k_contract3(out, op->out_letters, (const float *const[]){in[0], in[1], in[2]},
                         (const char *const[]){op->in_letters[0], op->in_letters[1],
                                               op->in_letters[2]},
                         ks->size, false, err);
    return rc ? err_prefix(err, "op \"%s\" (matmul \"%s\")", op->name, op->spec) : 0;
}

/* d(operand k) = the einsum of dout and the other operands onto k's letters. */
int k_matmul_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)out;
    const Op *op = ks->op;
    for (int k = 0; k < op->nin; k++) {
        if (!din[k]) continue;
        int rc;
        if (op->nin == 2)
            rc = k_contract2(din[k], op->in_letters[k], dout, op->out_letters, in[1 - k],
                             op->in_letters[1 - k], ks->size, true, err);
        else {
            int o1 = k == 0 ? 1 : 0, o2 = k == 2 ? 1 : 2;
            rc = k_contract3(din[k], op->in_letters[k],
                             (const float *const[]){dout, in[o1], in[o2]},
                             (const char *const[]){op->out_letters, op->in_letters[o1],
                                                   op->in_letters[o2]},
                             ks->size, true, err);
        }
        if (rc) return err_prefix(err, "op \"%s\" (matmul \"%s\") gradient of input %d",
                                  op->name, op->spec, k);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * embedding: out[..., h] = table[idx[...] - off[v], h] for the rows this rank
 * holds; letters of the indices missing from the output (a bag) are summed. */

/* Walks every (index, table row) pair that meets on this rank, moving rows of
 * `row` contiguous elements: forward adds table rows into out, backward adds
 * dout rows into dtable. */
static int embedding_walk(const KernelShape *ks, const int32_t *idx, const float *from,
                          float *to, bool backward, Err *err)
{
    const Op *op = ks->op;
    const int64_t *size = ks->size;
    const char *li = op->in_letters[0], *lt = op->in_letters[1], *lo = op->out_letters;
    int g = __builtin_ctz(op->gather_mask);

    /* trailing letters shared by table and output (h): copied as rows */
    int nt = (int)strlen(lt), no = (int)strlen(lo), r = 0;
    while (r < nt && r < no && lt[nt - 1 - r] == lo[no - 1 - r] && lt[nt - 1 - r] - 'a' != g &&
           !strchr(li, lt[nt - 1 - r]))
        r++;
    const int64_t row = k_numel(lt + nt - r, size);

    int64_t si[IR_LETTERS], st[IR_LETTERS], so[IR_LETTERS];
    k_strides(li, size, si);
    k_strides(lt, size, st);
    k_strides(lo, size, so);
    const int64_t sg = st[g];
    st[g] = 0;
    char order[IR_LETTERS + 1];
    int n = 0;
    for (const char *p = lo; p < lo + no - r; p++) order[n++] = *p;
    order[n] = 0;
    uint32_t skip = 1u << g;
    for (const char *p = lt + nt - r; *p; p++) skip |= 1u << (*p - 'a');
    n = add_letters(order, n, li, ~skip);
    add_letters(order, n, lt, ~skip);

    const int64_t lo_g = ks->off[g], n_g = size[g], tot = ks->total[g];
    const int64_t nidx = k_numel(li, size);
    for (int64_t i = 0; i < nidx; i++)
        if (idx[i] < 0 || idx[i] >= tot)
            return err_set(err, "op \"%s\": index %d is outside the table's %lld rows",
                           op->name, (int)idx[i], (long long)tot);
    /* in parallel by ranges of a row's columns: every thread walks all the
     * pairs, each adds into its own columns, in the walk's order (two
     * indices naming one table row add into it in the same order as one
     * thread would) */
    const int64_t pieces = (row + K_COLS - 1) / K_COLS;
#pragma omp parallel for schedule(static) if (k_par(pieces, K_COLS * nidx))
    for (int64_t p = 0; p < pieces; p++) {
        const int64_t j0 = p * K_COLS, j1 = row - j0 < K_COLS ? row : j0 + K_COLS;
        KLoop lp;
        kloop_init(&lp, order, size, 3, (const int64_t *const[]){si, st, so});
        do {
            for (int64_t i = 0; i < lp.inner; i++) {
                int64_t rw = idx[lp.off[0] + i * lp.ist[0]] - lo_g;
                if (rw < 0 || rw >= n_g) continue;   /* another rank's row: its addend */
                int64_t ot = lp.off[1] + i * lp.ist[1] + rw * sg, oo = lp.off[2] + i * lp.ist[2];
                const float *f = from + (backward ? oo : ot);
                float *d = to + (backward ? ot : oo);
                for (int64_t j = j0; j < j1; j++) d[j] += f[j];
            }
        } while (kloop_next(&lp));
    }
    return 0;
}

int k_embedding_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    memset(out, 0, (size_t)kernel_operand_numel(ks, ks->op->nin) * sizeof *out);
    return embedding_walk(ks, in[0], in[1], out, false, err);
}

int k_embedding_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
    (void)out;
    if (!din[1]) return 0;                       /* indices take no gradient */
    return embedding_walk(ks, in[0], dout, din[1], true, err);
}

/* ----------------------------------------------------------------------------
 * conv2d "nchw,ocrs->nohw": per image, out (O x PQ) = W (O x CRS) col (CRS x PQ),
 * where col holds the input patches (im2col). A 1x1 convolution of stride 1
 * and no padding needs no col: the image is already (C x HW). */

typedef struct {
    int64_t N, C, H, W, O, R, S, P, Q;
    int64_t st, pad;
} Conv;

static int conv_dims(const KernelShape *ks, Conv *d, Err *err)
{
    const Op *op = ks->op;
    const char *x = op->in_letters[0], *w = op->in_letters[1];
    const int64_t *sz = ks->size;
    *d = (Conv){sz[x[0] - 'a'], sz[x[1] - 'a'], ks->in_hw[0], ks->in_hw[1], sz[w[0] - 'a'],
                sz[w[2] - 'a'], sz[w[3] - 'a'], sz[x[2] - 'a'], sz[x[3] - 'a'], op->stride, op->pad};
    if (d->H <= 0 || d->W <= 0)
        return err_set(err, "op \"%s\": input height and width (in_hw) not set", op->name);
    if (d->st <= 0) d->st = 1;
    int64_t crs = d->C * d->R * d->S, pq = d->P * d->Q;
    if (!blas_int(crs) || !blas_int(pq) || !blas_int(d->O) || !blas_int(d->C))
        return err_set(err, "op \"%s\": conv2d dimensions exceed the BLAS integer range", op->name);
    return 0;
}

static bool conv_is_pointwise(const Conv *d)
{
    return d->R == 1 && d->S == 1 && d->st == 1 && d->pad == 0 && d->P == d->H && d->Q == d->W;
}

/* Output columns q whose input column q*st - pad + s lies in [0, W). */
static void conv_cols(const Conv *d, int64_t s, int64_t *q0, int64_t *q1)
{
    int64_t lo = d->pad - s, hi = d->W - 1 + d->pad - s;
    *q0 = lo > 0 ? (lo + d->st - 1) / d->st : 0;
    *q1 = hi >= 0 ? hi / d->st + 1 : 0;
    if (*q1 > d->Q) *q1 = d->Q;
    if (*q0 > *q1) *q0 = *q1;
}

/* Both directions run channels in parallel: channel c reads and writes its
 * own rows of col and its own plane of x only. */
static void im2col(const float *x, float *col, const Conv *d)
{
    const int64_t pq = d->P * d->Q;
#pragma omp parallel for schedule(static) if (k_par(d->C, d->R * d->S * pq))
    for (int64_t c = 0; c < d->C; c++)
        for (int64_t r = 0; r < d->R; r++)
            for (int64_t s = 0; s < d->S; s++) {
                float *dst = col + ((c * d->R + r) * d->S + s) * pq;
                int64_t q0, q1;
                conv_cols(d, s, &q0, &q1);
                for (int64_t p = 0; p < d->P; p++, dst += d->Q) {
                    int64_t ih = p * d->st - d->pad + r;
                    if (ih < 0 || ih >= d->H) {
                        memset(dst, 0, (size_t)d->Q * sizeof *dst);
                        continue;
                    }
                    const float *src = x + (c * d->H + ih) * d->W - d->pad + s;
                    for (int64_t q = 0; q < q0; q++) dst[q] = 0;
                    if (d->st == 1)
                        memcpy(dst + q0, src + q0, (size_t)(q1 - q0) * sizeof *dst);
                    else
                        for (int64_t q = q0; q < q1; q++) dst[q] = src[q * d->st];
                    for (int64_t q = q1; q < d->Q; q++) dst[q] = 0;
                }
            }
}

/* The adjoint of im2col: adds every patch element back where it came from. */
static void col2im_add(const float *col, float *x, const Conv *d)
{
    const int64_t pq = d->P * d->Q;
#pragma omp parallel for schedule(static) if (k_par(d->C, d->R * d->S * pq))
    for (int64_t c = 0; c < d->C; c++)
        for (int64_t r = 0; r < d->R; r++)
            for (int64_t s = 0; s < d->S; s++) {
                const float *src = col + ((c * d->R + r) * d->S + s) * pq;
                int64_t q0, q1;
                conv_cols(d, s, &q0, &q1);
                for (int64_t p = 0; p < d->P; p++, src += d->Q) {
                    int64_t ih = p * d->st - d->pad + r;
                    if (ih < 0 || ih >= d->H) continue;
                    float *dst = x + (c * d->H + ih) * d->W - d->pad + s;
                    if (d->st == 1)
                        for (int64_t q = q0; q < q1; q++) dst[q] += src[q];
                    else
                        for (int64_t q = q0; q < q1; q++) dst[q * d->st] += src[q];
                }
            }
}

int k_conv2d_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    Conv d;
    if (conv_dims(ks, &d, err)) return -1;
    const float *x = in[0], *w = in[1];
    const int64_t crs = d.C * d.R * d.S, pq = d.P * d.Q, hw = d.H * d.W;
    if (conv_is_pointwise(&d)) {
        for (int64_t n = 0; n < d.N; n++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d.O, (int)pq, (int)d.C,
                        1.0f, w, (int)d.C, x + n * d.C * hw, (int)pq, 0.0f, out + n * d.O * pq,
                        (int)pq);
        return 0;
    }
    float *col = k_scratch(crs * pq, ks->op->name, err);
    if (!col) return -1;
    for (int64_t n = 0; n < d.N; n++) {
        im2col(x + n * d.C * hw, col, &d);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d.O, (int)pq, (int)crs, 1.0f,
                    w, (int)crs, col, (int)pq, 0.0f, out + n * d.O * pq, (int)pq);
    }
    free(col);
    return 0;
}

int k_conv2d_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)out;
    Conv d;
    if (conv_dims(ks, &d, err)) return -1;
    const float *x = in[0], *w = in[1];
    float *dx = din[0], *dw = din[1];
    const int64_t crs = d.C * d.R * d.S, pq = d.P * d.Q, hw = d.H * d.W;
    const bool point = conv_is_pointwise(&d);
    float *col = NULL;
    if (!point && !(col = k_scratch(crs * pq, ks->op->name, err))) return -1;

    for (int64_t n = 0; n < d.N; n++) {
        const float *dy = dout + n * d.O * pq, *xn = x + n * d.C * hw;
        if (dx) {
            /* dcol = W^T dy, then back into the image */
            if (point)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d.C, (int)pq, (int)d.O,
                            1.0f, w, (int)d.C, dy, (int)pq, 1.0f, dx + n * d.C * hw, (int)pq);
            else {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)crs, (int)pq, (int)d.O,
                            1.0f, w, (int)crs, dy, (int)pq, 0.0f, col, (int)pq);
                col2im_add(col, dx + n * d.C * hw, &d);
            }
        }
        if (dw) {
            /* dW += dy col^T */
            const float *cn = xn;
            if (!point) {
                im2col(xn, col, &d);
                cn = col;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d.O, (int)crs, (int)pq,
                        1.0f, dy, (int)pq, cn, (int)pq, 1.0f, dw, (int)crs);
        }
    }
    free(col);
    return 0;
}

/* ----------------------------------------------------------------------------
 * pool2d "nchw->nchw": max (padding never wins) or average (divided by the
 * whole window, padding counted as zeros, as PyTorch's default). The argmax
 * is recomputed in backward rather than stored; ties go to the first. */

typedef struct {
    int64_t planes, H, W, P, Q, win, st, pad;
} Pool;

static int pool_dims(const KernelShape *ks, Pool *d, Err *err)
{
    const Op *op = ks->op;
    const char *x = op->in_letters[0];
    const int64_t *sz = ks->size;
    *d = (Pool){sz[x[0] - 'a'] * sz[x[1] - 'a'], ks->in_hw[0], ks->in_hw[1], sz[x[2] - 'a'],
                sz[x[3] - 'a'], op->window, op->stride > 0 ? op->stride : op->window, op->pad};
    if (d->H <= 0 || d->W <= 0)
        return err_set(err, "op \"%s\": input height and width (in_hw) not set", op->name);
    if (d->win <= 0) return err_set(err, "op \"%s\": pool2d window is %lld", op->name,
                                    (long long)d->win);
    return 0;
}

/* The window of output (p, q) clipped to the input: rows [r0, r1), cols [c0, c1). */
static void pool_window(const Pool *d, int64_t p, int64_t q, int64_t *r0, int64_t *r1,
                        int64_t *c0, int64_t *c1)
{
    int64_t h = p * d->st - d->pad, w = q * d->st - d->pad;
    *r0 = h < 0 ? 0 : h;
    *r1 = h + d->win < d->H ? h + d->win : d->H;
    *c0 = w < 0 ? 0 : w;
    *c1 = w + d->win < d->W ? w + d->win : d->W;
}

/* Offset in the plane of the window's maximum, -1 for an empty window. */
static int64_t pool_argmax(const float *x, const Pool *d, int64_t p, int64_t q)
{
    int64_t r0, r1, c0, c1, at = -1;
    pool_window(d, p, q, &r0, &r1, &c0, &c1);
    float best = -INFINITY;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++)
            if (at < 0 || x[r * d->W + c] > best) {
                best = x[r * d->W + c];
                at = r * d->W + c;
            }
    return at;
}

int k_pool2d_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    Pool d;
    if (pool_dims(ks, &d, err)) return -1;
    const float *x = in[0];
    const float inv = 1.0f / (float)(d.win * d.win);
#pragma omp parallel for schedule(static) if (k_par(d.planes, d.H * d.W))
    for (int64_t pl = 0; pl < d.planes; pl++) {
        const float *xp = x + pl * d.H * d.W;
        float *op = out + pl * d.P * d.Q;
        for (int64_t p = 0; p < d.P; p++)
            for (int64_t q = 0; q < d.Q; q++) {
                if (!ks->op->pool_avg) {
                    int64_t at = pool_argmax(xp, &d, p, q);
                    op[p * d.Q + q] = at < 0 ? 0 : xp[at];
                    continue;
                }
                int64_t r0, r1, c0, c1;
                pool_window(&d, p, q, &r0, &r1, &c0, &c1);
                float s = 0;
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) s += xp[r * d.W + c];
                op[p * d.Q + q] = s * inv;
            }
    }
    return 0;
}

int k_pool2d_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)out;
    Pool d;
    if (pool_dims(ks, &d, err)) return -1;
    if (!din[0]) return 0;
    const float *x = in[0];
    const float inv = 1.0f / (float)(d.win * d.win);
#pragma omp parallel for schedule(static) if (k_par(d.planes, d.H * d.W))
    for (int64_t pl = 0; pl < d.planes; pl++) {
        const float *xp = x + pl * d.H * d.W, *gp = dout + pl * d.P * d.Q;
        float *dp = din[0] + pl * d.H * d.W;
        for (int64_t p = 0; p < d.P; p++)
            for (int64_t q = 0; q < d.Q; q++) {
                float g = gp[p * d.Q + q];
                if (!ks->op->pool_avg) {
                    int64_t at = pool_argmax(xp, &d, p, q);
                    if (at >= 0) dp[at] += g;
                    continue;
                }
                int64_t r0, r1, c0, c1;
                pool_window(&d, p, q, &r0, &r1, &c0, &c1);
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) dp[r * d.W + c] += g * inv;
            }
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * mean: average over the letters missing from the output. The divisor is the
 * GLOBAL count of those letters, so the shards of a split letter hold exact
 * addends of the whole mean. */

static float mean_scale(const KernelShape *ks)
{
    const Op *op = ks->op;
    double count = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!strchr(op->out_letters, *p)) count *= (double)ks->total[*p - 'a'];
    return (float)(1.0 / count);
}

int k_mean_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const Op *op = ks->op;
    k_map(out, op->out_letters, in[0], op->in_letters[0], ks->size, mean_scale(ks), false);
    return 0;
}

int k_mean_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out, (void)err;
    const Op *op = ks->op;
    if (din[0])
        k_map(din[0], op->in_letters[0], dout, op->out_letters, ks->size, mean_scale(ks), true);
    return 0;
}
