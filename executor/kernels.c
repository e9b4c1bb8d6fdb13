/*
 * kernels.c — the front of the CPU kernels: dispatch on the op kind to the
 * k_<kind>_fwd/bwd functions of the kernel files, the shape of a whole
 * (unsplit) op, and the loop helpers every kernel file shares.
 *
 * The helpers exist so that no kernel needs a per-kind special case for the
 * order of its letters: a buffer is described by per-letter strides (0 for a
 * letter it lacks), and one loop nest (KLoop) walks any set of buffers over
 * any letters, merging adjacent letters into long inner loops where the
 * strides allow. Broadcasting (stride 0 on the written side is a sum, on the
 * read side a repeat) follows without extra code.
 *
 * Legend: l = a letter 'a'..'z' as 0..25; st[l] = a buffer's stride along l.
 */
#include "kernels_internal.h"

#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * Dispatch */

typedef int (*KFwd)(const KernelShape *, const void *const *, float *, Err *);
typedef int (*KBwd)(const KernelShape *, const void *const *, const float *, const float *,
                    float *const *, Err *);

static const struct {
    KFwd fwd;
    KBwd bwd;
} kinds[OP_KIND_COUNT] = {
    [OP_MATMUL] = {k_matmul_fwd, k_matmul_bwd},
    [OP_EMBEDDING] = {k_embedding_fwd, k_embedding_bwd},
    [OP_CONV2D] = {k_conv2d_fwd, k_conv2d_bwd},
    [OP_POOL2D] = {k_pool2d_fwd, k_pool2d_bwd},
    [OP_MEAN] = {k_mean_fwd, k_mean_bwd},
    [OP_ADD] = {k_add_fwd, k_add_bwd},
    [OP_BIAS] = {k_bias_fwd, k_bias_bwd},
    [OP_GELU] = {k_gelu_fwd, k_gelu_bwd},
    [OP_RELU] = {k_relu_fwd, k_relu_bwd},
    [OP_LAYERNORM] = {k_layernorm_fwd, k_layernorm_bwd},
    [OP_BATCHNORM] = {k_batchnorm_fwd, k_batchnorm_bwd},
    [OP_SOFTMAX] = {k_softmax_fwd, k_softmax_bwd},
    [OP_CROSS_ENTROPY] = {k_cross_entropy_fwd, k_cross_entropy_bwd},
    [OP_ROUTE] = {k_route_fwd, k_route_bwd},
    [OP_CONCAT] = {k_concat_fwd, k_concat_bwd},
    [OP_MSE] = {k_mse_fwd, k_mse_bwd},
};

static int check_shape(const KernelShape *ks, Err *err)
{
    if (!ks || !ks->op) return err_set(err, "kernel: no op given");
    if (ks->op->kind < 0 || ks->op->kind >= OP_KIND_COUNT || !kinds[ks->op->kind].fwd)
        return err_set(err, "op \"%s\": no CPU kernel for kind %d", ks->op->name,
                       (int)ks->op->kind);
    for (int l = 0; l < IR_LETTERS; l++)
        if ((ks->op->letters_mask >> l & 1) && ks->size[l] <= 0)
            return err_set(err, "op \"%s\": local size of letter '%c' is %lld; every letter "
                           "needs at least one element", ks->op->name, 'a' + l,
                           (long long)ks->size[l]);
    return 0;
}

int kernel_forward(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    if (check_shape(ks, err)) return -1;
    return kinds[ks->op->kind].fwd(ks, in, out, err);
}

int kernel_backward(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
    if (check_shape(ks, err)) return -1;
    return kinds[ks->op->kind].bwd(ks, in, out, dout, din, err);
}

/* ----------------------------------------------------------------------------
 * Shapes */

void kernel_shape_whole(KernelShape *ks, const Op *op, const Graph *g)
{
    memset(ks, 0, sizeof *ks);
    ks->op = op;
    memcpy(ks->size, op->size, sizeof ks->size);
    memcpy(ks->total, op->size, sizeof ks->total);
    if (op->kind == OP_CONV2D || op->kind == OP_POOL2D) {
        const Tensor *x = &g->tensors[op->in[0]];
        ks->in_hw[0] = x->shape[2];
        ks->in_hw[1] = x->shape[3];
    }
}

int kernel_check_extents(const KernelShape *ks, uint32_t whole, Err *err)
{
    const Op *op = ks->op;
    for (int l = 0; l < IR_LETTERS; l++) {
        if (!(op->letters_mask >> l & 1)) continue;
        if (ks->size[l] < 0 || ks->off[l] < 0 || ks->off[l] + ks->size[l] > ks->total[l])
            return err_set(err, "op %s: letter '%c' has local size %lld at offset %lld, outside "
                           "its global size %lld", op->name, 'a' + l, (long long)ks->size[l],
                           (long long)ks->off[l], (long long)ks->total[l]);
        if ((whole >> l & 1) && ks->size[l] != ks->total[l])
            return err_set(err, "op %s: %s cannot split letter '%c' (local %lld of %lld); keep it "
                           "whole in the strategy", op->name, op_kind_name(op->kind), 'a' + l,
                           (long long)ks->size[l], (long long)ks->total[l]);
    }
    return 0;
}

int kernel_check_concat(const KernelShape *ks, Err *err)
{
    const Op *op = ks->op;
    if (kernel_check_extents(ks, op->concat_mask, err)) return -1;
    int64_t sum = 0;
    for (int k = 0; k < op->nin; k++) sum += ks->size[op_concat_letter(op, k)];
    int lo = op_concat_letter(op, op->nin);
    if (lo < 0 || sum != ks->size[lo])
        return err_set(err, "op %s: concat's output letter '%c' has local size %lld but its "
                       "inputs' own letters %lld together", op->name, lo < 0 ? '?' : 'a' + lo,
                       lo < 0 ? 0LL : (long long)ks->size[lo], (long long)sum);
    return 0;
}

int64_t kernel_operand_numel(const KernelShape *ks, int k)
{
    const Op *op = ks->op;
    const char *L = k >= op->nin ? op->out_letters : op->in_letters[k];
    bool spatial_in = k == 0 && (op->kind == OP_CONV2D || op->kind == OP_POOL2D);
    int64_t n = 1;
    for (int p = 0; L[p]; p++)
        n *= spatial_in && p >= 2 ? ks->in_hw[p - 2] : ks->size[L[p] - 'a'];
    return n;
}

/* ----------------------------------------------------------------------------
 * Shared helpers */

int64_t k_numel(const char *letters, const int64_t size[IR_LETTERS])
{
    int64_t n = 1;
    for (const char *p = letters; *p; p++) n *= size[*p - 'a'];
    return n;
}

void k_strides(const char *letters, const int64_t size[IR_LETTERS], int64_t st[IR_LETTERS])
{
    memset(st, 0, IR_LETTERS * sizeof *st);
    int64_t s = 1;
    for (int p = (int)strlen(letters) - 1; p >= 0; p--) {
        st[letters[p] - 'a'] = s;
        s *= size[letters[p] - 'a'];
    }
}

void kloop_init(KLoop *lp, const char *order, const int64_t size[IR_LETTERS], int nops,
                const int64_t *const st[])
{
    memset(lp, 0, sizeof *lp);
    lp->nops = nops;
    int n = 0;
    for (const char *p = order; *p; p++) {
        int l = *p - 'a';
        if (size[l] <= 1) continue;
        /* merge into the previous loop when, for every buffer, stepping the
         * previous letter equals running through this one */
        bool merge = n > 0;
        for (int k = 0; k < nops && merge; k++)
            merge = lp->st[k][n - 1] == st[k][l] * size[l];
        if (merge) {
            lp->cnt[n - 1] *= size[l];
            for (int k = 0; k < nops; k++) lp->st[k][n - 1] = st[k][l];
        } else {
            lp->cnt[n] = size[l];
            for (int k = 0; k < nops; k++) lp->st[k][n] = st[k][l];
            n++;
        }
    }
    lp->inner = 1;
    if (n > 0) {
        n--;
        lp->inner = lp->cnt[n];
        for (int k = 0; k < nops; k++) lp->ist[k] = lp->st[k][n];
    }
    lp->n = n;
}

bool kloop_next(KLoop *lp)
{
    for (int d = lp->n - 1; d >= 0; d--) {
        for (int k = 0; k < lp->nops; k++) lp->off[k] += lp->st[k][d];
        if (++lp->idx[d] < lp->cnt[d]) return true;
        for (int k = 0; k < lp->nops; k++) lp->off[k] -= lp->st[k][d] * lp->cnt[d];
        lp->idx[d] = 0;
    }
    return false;
}

void k_map(float *dst, const char *dl, const float *src, const char *sl,
           const int64_t size[IR_LETTERS], float alpha, bool acc)
{
    int64_t sd[IR_LETTERS], ss[IR_LETTERS];
    k_strides(dl, size, sd);
    k_strides(sl, size, ss);
    uint32_t md = 0, ms = 0;
    for (const char *p = dl; *p; p++) md |= 1u << (*p - 'a');
    for (const char *p = sl; *p; p++) ms |= 1u << (*p - 'a');
    bool sums = false;
    for (int l = 0; l < IR_LETTERS; l++) sums |= (ms & ~md) >> l & 1 && size[l] > 1;
    if (sums && !acc) {
        memset(dst, 0, (size_t)k_numel(dl, size) * sizeof *dst);
        acc = true;
    }

    /* Walk the bigger buffer in its own order (its innermost letter last, so
     * its reads or writes are contiguous), then the other's extra letters. */
    char order[IR_LETTERS + 1];
    int n = 0;
    const char *big = k_numel(sl, size) >= k_numel(dl, size) ? sl : dl;
    const char *small = big == sl ? dl : sl;
    for (const char *p = small; *p; p++)
        if (!strchr(big, *p)) order[n++] = *p;
    for (const char *p = big; *p; p++) order[n++] = *p;
    order[n] = 0;

    KLoop lp;
    kloop_init(&lp, order, size, 2, (const int64_t *const[]){sd, ss});
    const int64_t n1 = lp.inner, d1 = lp.ist[0], s1 = lp.ist[1];
    do {
        float *d = dst + lp.off[0];
        const float *s = src + lp.off[1];
        if (d1 == 0) {                                  /* summed letter innermost */
            float t = 0;
            for (int64_t i = 0; i < n1; i++) t += s[i * s1];
            *d = acc ? *d + alpha * t : alpha * t;
        } else if (acc) {
            if (d1 == 1 && s1 == 1)
                for (int64_t i = 0; i < n1; i++) d[i] += alpha * s[i];
            else
                for (int64_t i = 0; i < n1; i++) d[i * d1] += alpha * s[i * s1];
        } else {
            if (d1 == 1 && s1 == 1 && alpha == 1)
                memcpy(d, s, (size_t)n1 * sizeof *d);
            else
                for (int64_t i = 0; i < n1; i++) d[i * d1] = alpha * s[i * s1];
        }
    } while (kloop_next(&lp));
}

float *k_scratch(int64_t n, const char *what, Err *err)
{
    float *p = n > 0 ? malloc((size_t)n * sizeof *p) : malloc(sizeof *p);
    if (!p)
        err_set(err, "%s: out of memory for %lld floats of scratch", what, (long long)n);
    return p;
}
