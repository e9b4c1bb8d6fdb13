/*
 * dispatch.cu — cuk_forward / cuk_backward: the shape checks of the CPU
 * front (kernels.c), then the kind's CUDA function.
 */
#include "executor/cuda/cuk_internal.h"

typedef int (*CFwd)(CuCtx *, const KernelShape *, const void *const *, float *, Err *);
typedef int (*CBwd)(CuCtx *, const KernelShape *, const void *const *, const float *,
                    const float *, float *const *, Err *);

struct CKind {
    CFwd fwd;
    CBwd bwd;
};

static const CKind *kind_of(OpKind k)
{
    static const CKind kinds[OP_KIND_COUNT] = {
        {cuk_matmul_fwd, cuk_matmul_bwd},       {cuk_embedding_fwd, cuk_embedding_bwd},
        {cuk_conv2d_fwd, cuk_conv2d_bwd},       {cuk_pool2d_fwd, cuk_pool2d_bwd},
        {cuk_mean_fwd, cuk_mean_bwd},           {cuk_add_fwd, cuk_add_bwd},
        {cuk_bias_fwd, cuk_bias_bwd},           {cuk_gelu_fwd, cuk_gelu_bwd},
        {cuk_relu_fwd, cuk_relu_bwd},           {cuk_layernorm_fwd, cuk_layernorm_bwd},
        {cuk_batchnorm_fwd, cuk_batchnorm_bwd}, {cuk_softmax_fwd, cuk_softmax_bwd},
        {cuk_cross_entropy_fwd, cuk_cross_entropy_bwd}, {cuk_route_fwd, cuk_route_bwd},
        {cuk_concat_fwd, cuk_concat_bwd},       {cuk_mse_fwd, cuk_mse_bwd},
    };
    /* the table above is in OpKind order */
    static_assert(OP_MATMUL == 0 && OP_ROUTE == 13 && OP_CONCAT == 14 && OP_MSE == 15 &&
                      OP_KIND_COUNT == 16,
                  "OpKind order");
    return k >= 0 && k < OP_KIND_COUNT ? &kinds[k] : NULL;
}

static const CKind *check(const KernelShape *ks, Err *err)
{
    if (!ks || !ks->op) {
        err_set(err, "cuda kernel: no op given");
        return NULL;
    }
    const CKind *k = kind_of(ks->op->kind);
    if (!k) {
        err_set(err, "op \"%s\": no CUDA kernel for kind %d", ks->op->name, (int)ks->op->kind);
        return NULL;
    }
    for (int l = 0; l < IR_LETTERS; l++)
        if ((ks->op->letters_mask >> l & 1) && ks->size[l] <= 0) {
            err_set(err, "op \"%s\": local size of letter '%c' is %lld; every letter needs at "
                    "least one element", ks->op->name, 'a' + l, (long long)ks->size[l]);
            return NULL;
        }
    return k;
}

int cuk_forward(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const CKind *k = check(ks, err);
    return k ? k->fwd(c, ks, in, out, err) : -1;
}

int cuk_backward(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    const CKind *k = check(ks, err);
    return k ? k->bwd(c, ks, in, out, dout, din, err) : -1;
}
