/*
 * cuk_internal.h — what the CUDA kernel files share: the context, error
 * checks, stream-ordered scratch, launch sizes, and the macro that makes a
 * function callable from both host and device.
 *
 * Per-thread work lives in the <area>_body.h headers as CUK_FN functions that compile
 * as C11 under gcc as well as CUDA C++ under nvcc: the CPU tests
 * (tests/test_cuk_*.c) run them for every thread index in turn and compare
 * with the CPU kernels, so the index arithmetic and the maths are checked on
 * machines without a GPU. Only the launches, the warp and block reductions
 * and the cuBLAS calls need a device to be checked.
 */
#ifndef STRATA_CUK_INTERNAL_H
#define STRATA_CUK_INTERNAL_H

#include "executor/cuda/cuk_fn.h"

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "executor/cuda/cuk.h"

struct CuCtx {
    cudaStream_t stream;
    cublasHandle_t blas;
    int sms;                          /* multiprocessors, for grid sizes */
};

int cuk_cuda_fail(Err *err, cudaError_t rc, const char *call, const char *file, int line);
int cuk_blas_fail(Err *err, cublasStatus_t rc, const char *call, const char *file, int line);

/* Each returns -1 from the enclosing function with err naming the call. */
#define CUK_CUDA(call)                                                                    \
    do {                                                                                  \
        cudaError_t rc_ = (call);                                                         \
        if (rc_ != cudaSuccess) return cuk_cuda_fail(err, rc_, #call, __FILE__, __LINE__); \
    } while (0)
#define CUK_BLAS(call)                                                                    \
    do {                                                                                  \
        cublasStatus_t rc_ = (call);                                                      \
        if (rc_ != CUBLAS_STATUS_SUCCESS)                                                 \
            return cuk_blas_fail(err, rc_, #call, __FILE__, __LINE__);                    \
    } while (0)
/* After a <<<...>>> launch: a bad configuration shows here. */
#define CUK_LAUNCHED() CUK_CUDA(cudaGetLastError())

/* One forward and one backward per op kind, behind cuk_forward/cuk_backward
 * (cuk.cu checks the shape and dispatches); contracts as there. */
#define CUK_KIND(k)                                                                       \
    int cuk_##k##_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out,  \
                      Err *err);                                                          \
    int cuk_##k##_bwd(CuCtx *c, const KernelShape *ks, const void *const *in,              \
                      const float *out, const float *dout, float *const *din, Err *err);
CUK_KIND(matmul)
CUK_KIND(embedding)
CUK_KIND(conv2d)
CUK_KIND(pool2d)
CUK_KIND(mean)
CUK_KIND(add)
CUK_KIND(bias)
CUK_KIND(gelu)
CUK_KIND(relu)
CUK_KIND(layernorm)
CUK_KIND(batchnorm)
CUK_KIND(softmax)
CUK_KIND(cross_entropy)
CUK_KIND(route)
CUK_KIND(concat)
CUK_KIND(mse)
#undef CUK_KIND

/* Stream-ordered scratch (cudaMallocAsync on c->stream); NULL with err. */
void *cuk_scratch(CuCtx *c, size_t bytes, const char *what, Err *err);
void cuk_release(CuCtx *c, void *p);

/* Blocks of 256 threads covering n items, capped at 32 blocks per SM (the
 * kernels stride over the rest). */
#define CUK_THREADS 256
static inline unsigned cuk_blocks(const CuCtx *c, int64_t n)
{
    int64_t b = (n + CUK_THREADS - 1) / CUK_THREADS, cap = (int64_t)c->sms * 32;
    if (b < 1) b = 1;
    return (unsigned)(b < cap ? b : cap);
}
/* for (i = this thread; i < n; i += every thread) */
#define CUK_FOR(i, n)                                                                     \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);             \
         i += (int64_t)gridDim.x * blockDim.x)
#endif

#endif
