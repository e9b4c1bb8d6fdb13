/*
 * kernels_internal.h — one forward and one backward function per op kind,
 * behind kernel_forward/kernel_backward (kernels.c dispatches on op->kind).
 * Same contracts as those two; see kernels.h.
 */
#ifndef STRATA_KERNELS_INTERNAL_H
#define STRATA_KERNELS_INTERNAL_H

#include "kernels.h"

int k_matmul_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_matmul_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_embedding_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_embedding_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
int k_conv2d_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_conv2d_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_pool2d_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_pool2d_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_mean_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_mean_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_add_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_add_bwd(const KernelShape *ks, const void *const *in, const float *out,
              const float *dout, float *const *din, Err *err);
int k_bias_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_bias_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_gelu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_gelu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_relu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_relu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_layernorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_layernorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
int k_batchnorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_batchnorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
int k_softmax_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_softmax_bwd(const KernelShape *ks, const void *const *in, const float *out,
                  const float *dout, float *const *din, Err *err);
int k_cross_entropy_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_cross_entropy_bwd(const KernelShape *ks, const void *const *in, const float *out,
                        const float *dout, float *const *din, Err *err);
int k_route_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_route_bwd(const KernelShape *ks, const void *const *in, const float *out,
                const float *dout, float *const *din, Err *err);

#endif
