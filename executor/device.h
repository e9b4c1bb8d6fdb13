/*
 * device.h — where a rank's buffers live and its kernels run, behind one
 * small table of functions with two backends: the CPU (host memory, the
 * kernels of kernels.h, OpenBLAS) and CUDA (device memory, the kernels of
 * executor/cuda/, cuBLAS and cuDNN, all queued on one stream).
 *
 * The runtime touches a buffer only through these functions, so one
 * interpreter serves both. Work may be queued and still running when a
 * function returns (CUDA); `sync` waits for it, and the runtime calls it
 * before handing buffers to the communication backend, whose collectives
 * read them from their own stream or thread. `download` waits by itself.
 * Buffers handed to the communication backend must be of the kind it
 * expects (host memory for MPI, device memory for NCCL).
 *
 * Every function returns 0, or -1 with err naming the call that failed.
 */
#ifndef STRATA_DEVICE_H
#define STRATA_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "executor/kernels.h"
#include "ir/err.h"

typedef struct Device Device;

typedef struct {
    const char *name;                   /* "cpu", "cuda" */
    /* bytes of zeroed memory; NULL with err */
    void *(*alloc)(Device *d, size_t bytes, Err *err);
    void (*release)(Device *d, void *p);            /* NULL is fine */
    int (*zero)(Device *d, void *p, size_t bytes, Err *err);
    int (*copy)(Device *d, void *dst, const void *src, size_t bytes, Err *err);
    int (*upload)(Device *d, void *dst, const void *host, size_t bytes, Err *err);
    /* waits for the work queued before it */
    int (*download)(Device *d, void *host, const void *src, size_t bytes, Err *err);
    int (*sync)(Device *d, Err *err);
    /* y += a * x */
    int (*axpy)(Device *d, float *y, const float *x, float a, int64_t n, Err *err);
    int (*fill)(Device *d, float *x, float v, int64_t n, Err *err);
    /* the block of `len` at `soff` in src (extents sd) to `doff` in dst
     * (extents dd); row-major over nd dims */
    int (*block_copy)(Device *d, float *dst, const int64_t *dd, const int64_t *doff,
                      const float *src, const int64_t *sd, const int64_t *soff,
                      const int64_t *len, int nd, Err *err);
    /* kernels.h's contracts, on this device's buffers */
    int (*forward)(Device *d, const KernelShape *ks, const void *const *in, float *out, Err *err);
    int (*backward)(Device *d, const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
    int (*sgd)(Device *d, float *w, const float *g, float *mom, int64_t n, const OptimHyper *h,
               Err *err);
    int (*adam)(Device *d, float *w, const float *g, float *m, float *v, int64_t n, int64_t step,
                const OptimHyper *h, Err *err);
    int (*to_fp16)(Device *d, const float *x, uint16_t *h, int64_t n, Err *err);
    int (*from_fp16)(Device *d, const uint16_t *h, float *x, int64_t n, Err *err);
    /* the scale goes to *scale, one float of this device's memory */
    int (*int8_encode)(Device *d, const float *x, float *e, int8_t *q, float *scale, int64_t n,
                       Err *err);
    int (*int8_decode)(Device *d, const int8_t *q, const float *scale, float *x, int64_t n,
                       Err *err);
    int (*init_fill)(Device *d, float *buf, uint64_t seed, const char *name, int ndim,
                     const int64_t *shape, const int64_t *offset, const int64_t *local,
                     float scale, Err *err);
    int (*init_fill_int)(Device *d, int32_t *buf, uint64_t seed, const char *name, int ndim,
                         const int64_t *shape, const int64_t *offset, const int64_t *local,
                         int32_t hi, Err *err);
    /* row-major C = alpha op(A) op(B) + beta C, as cblas_sgemm */
    int (*sgemm)(Device *d, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                 Err *err);
    int (*orthonormalize)(Device *d, float *p, int64_t rows, int r, Err *err);
    /* one line for logs: "cpu (OpenBLAS ...)", "cuda: NVIDIA H100 ..., 80 GiB" */
    void (*describe)(Device *d, char *buf, size_t n);
    /* bytes of memory this device has in all (the machine's, for the CPU) */
    double (*memory)(Device *d);
    void (*destroy)(Device *d);
} DeviceOps;

struct Device {
    const DeviceOps *ops;
    void *impl;
};

/* The CPU. Caller frees with device_free. */
Device *device_cpu_new(Err *err);
/* The CUDA device of rank `local_rank` of the `local_size` ranks on this
 * machine, made current for the calling thread: device local_rank when the
 * machine shows at least local_size devices, else device 0 when it shows one
 * and CUDA_VISIBLE_DEVICES is set (a launcher that gives each rank its own
 * GPU). NCCL wants one GPU per rank. NULL with err when strata was built
 * without CUDA, there is no device, or too few. */
Device *device_cuda_new(int local_rank, int local_size, Err *err);
/* The CUDA devices this machine shows; -1 with err when there are none,
 * or strata was built without CUDA. (Both load the CUDA backend, gpu.h.) */
int cuda_device_count(Err *err);
void device_free(Device *d);

#endif
