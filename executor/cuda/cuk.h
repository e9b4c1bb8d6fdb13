/*
 * cuk.h — the CUDA kernels: the contracts of kernels.h on device buffers.
 *
 * Every function queues its work on ctx->stream and returns without waiting
 * for it (the caller synchronises where a result must be read on the host, or
 * handed to a communication stream). Buffers are device memory, laid out as
 * kernels.h says (fp32 row-major over the operand's letters in spec order,
 * int32 for indices and class labels). Scratch comes from the stream-ordered
 * allocator (cudaMallocAsync on ctx->stream) and is freed on it before the
 * function returns, so a function never leaves memory behind.
 *
 * Split reductions (KernelShape.stats): the callbacks receive DEVICE buffers;
 * a kernel synchronises ctx->stream before it calls one (the communication
 * backend reads the buffer from its own stream).
 *
 * Results agree with the CPU kernels (executor/kernels.h) to float rounding:
 * the GPU sums in other orders, so tests compare with a relative tolerance.
 *
 * This header is C and C++: the runtime (C, gcc) calls it; the kernels are
 * CUDA C++ (nvcc) with C linkage. It exists only in builds with CUDA.
 */
#ifndef STRATA_CUK_H
#define STRATA_CUK_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "executor/kernels.h"

/* Opaque to C callers that only pass it along; the .cu files include
 * cuk_internal.h for the CUDA types. */
typedef struct CuCtx CuCtx;

/* Creates a context on the current CUDA device: a non-blocking stream, a
 * cuBLAS handle bound to it. NULL with err (naming the
 * failing call) when there is no device or a library cannot start. */
CuCtx *cuk_new(Err *err);
void cuk_free(CuCtx *c);
/* The stream's work done; -1 with err naming the first asynchronous error. */
int cuk_sync(CuCtx *c, Err *err);

/* --- memory (stream-ordered: cudaMallocAsync / cudaFreeAsync on the stream) --- */
/* bytes of zeroed device memory; NULL with err naming the size */
void *cuk_alloc(CuCtx *c, size_t bytes, Err *err);
void cuk_dealloc(CuCtx *c, void *p);                   /* NULL is fine */
int cuk_zero(CuCtx *c, void *p, size_t bytes, Err *err);
int cuk_copy(CuCtx *c, void *dst, const void *src, size_t bytes, Err *err);   /* device to device */
int cuk_upload(CuCtx *c, void *dst, const void *host, size_t bytes, Err *err);
/* waits for everything queued before it */
int cuk_download(CuCtx *c, void *host, const void *src, size_t bytes, Err *err);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB, CUDA 13.0)" */
void cuk_describe(CuCtx *c, char *buf, size_t n);

/* --- ops: as kernel_forward / kernel_backward -------------------------------- */
int cuk_forward(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err);
int cuk_backward(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);

/* --- buffers ----------------------------------------------------------------- */
/* y += a * x over n floats. */
int cuk_axpy(CuCtx *c, float *y, const float *x, float a, int64_t n, Err *err);
/* x[0..n) = v. */
int cuk_fill(CuCtx *c, float *x, float v, int64_t n, Err *err);
/* The block of `len` (per dim) at `soff` in src (extents sd) to `doff` in dst
 * (extents dd); row-major, nd <= IR_MAX_DIMS dims (nd == 0: one element). */
int cuk_block_copy(CuCtx *c, float *dst, const int64_t *dd, const int64_t *doff, const float *src,
                   const int64_t *sd, const int64_t *soff, const int64_t *len, int nd, Err *err);

/* --- optimizers, compression, deterministic values: as kernels.h ------------- */
int cuk_sgd(CuCtx *c, float *w, const float *g, float *mom, int64_t n, const OptimHyper *h,
            Err *err);
int cuk_adam(CuCtx *c, float *w, const float *g, float *m, float *v, int64_t n, int64_t step,
             const OptimHyper *h, Err *err);
int cuk_to_fp16(CuCtx *c, const float *x, uint16_t *h, int64_t n, Err *err);
int cuk_from_fp16(CuCtx *c, const uint16_t *h, float *x, int64_t n, Err *err);
/* The scale is returned in *scale_dev (one float of DEVICE memory), so that
 * it can be gathered by the communication backend without a host trip. */
int cuk_int8_encode(CuCtx *c, const float *x, float *e, int8_t *q, float *scale_dev, int64_t n,
                    Err *err);
/* x = q * scale (scale: device float). */
int cuk_int8_decode(CuCtx *c, const int8_t *q, const float *scale_dev, float *x, int64_t n,
                    Err *err);
int cuk_init_fill(CuCtx *c, float *buf, uint64_t seed, const char *name, int ndim,
                  const int64_t *shape, const int64_t *offset, const int64_t *local, float scale,
                  Err *err);
int cuk_init_fill_int(CuCtx *c, int32_t *buf, uint64_t seed, const char *name, int ndim,
                      const int64_t *shape, const int64_t *offset, const int64_t *local,
                      int32_t hi, Err *err);
/* Row-major C (m x n) = alpha * op(A) op(B) + beta * C, as cblas_sgemm with
 * CblasRowMajor (lda, ldb, ldc: row strides). */
int cuk_sgemm(CuCtx *c, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta, float *cm, int ldc,
              Err *err);
/* As kernel_orthonormalize, on device memory. */
int cuk_orthonormalize(CuCtx *c, float *p, int64_t rows, int r, Err *err);

#ifdef __cplusplus
}
#endif

#endif
