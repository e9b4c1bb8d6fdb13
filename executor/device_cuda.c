/*
 * device_cuda.c — the CUDA backend of device.h: device memory and the
 * kernels of executor/cuda/ (cuk.h), every call queued on the context's one
 * stream, in order. Part of libstrata-cuda.so (gpu.h); built only with
 * the CUDA toolkit, otherwise device_cuda_open says so.
 */
#include "executor/gpu.h"

#ifdef HAVE_CUDA

#include <cuda_runtime.h>
#include <stdlib.h>

#include "executor/cuda/cuk.h"

#define CTX(d) ((CuCtx *)(d)->impl)

static void *g_alloc(Device *d, size_t bytes, Err *err) { return cuk_alloc(CTX(d), bytes, err); }
static void g_release(Device *d, void *p) { cuk_dealloc(CTX(d), p); }
static int g_zero(Device *d, void *p, size_t bytes, Err *err) { return cuk_zero(CTX(d), p, bytes, err); }

static int g_copy(Device *d, void *dst, const void *src, size_t bytes, Err *err)
{
    return cuk_copy(CTX(d), dst, src, bytes, err);
}

static int g_upload(Device *d, void *dst, const void *host, size_t bytes, Err *err)
{
    return cuk_upload(CTX(d), dst, host, bytes, err);
}

static int g_download(Device *d, void *host, const void *src, size_t bytes, Err *err)
{
    return cuk_download(CTX(d), host, src, bytes, err);
}

static int g_sync(Device *d, Err *err) { return cuk_sync(CTX(d), err); }

static int g_axpy(Device *d, float *y, const float *x, float a, int64_t n, Err *err)
{
    return cuk_axpy(CTX(d), y, x, a, n, err);
}

static int g_fill(Device *d, float *x, float v, int64_t n, Err *err)
{
    return cuk_fill(CTX(d), x, v, n, err);
}

static int g_block_copy(Device *d, float *dst, const int64_t *dd, const int64_t *doff,
                        const float *src, const int64_t *sd, const int64_t *soff,
                        const int64_t *len, int nd, Err *err)
{
    return cuk_block_copy(CTX(d), dst, dd, doff, src, sd, soff, len, nd, err);
}

static int g_forward(Device *d, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    return cuk_forward(CTX(d), ks, in, out, err);
}

static int g_backward(Device *d, const KernelShape *ks, const void *const *in, const float *out,
                      const float *dout, float *const *din, Err *err)
{
    return cuk_backward(CTX(d), ks, in, out, dout, din, err);
}

static int g_sgd(Device *d, float *w, const float *g, float *mom, int64_t n, const OptimHyper *h,
                 Err *err)
{
    return cuk_sgd(CTX(d), w, g, mom, n, h, err);
}

static int g_adam(Device *d, float *w, const float *g, float *m, float *v, int64_t n,
                  int64_t step, const OptimHyper *h, Err *err)
{
    return cuk_adam(CTX(d), w, g, m, v, n, step, h, err);
}

static int g_to_fp16(Device *d, const float *x, uint16_t *h, int64_t n, Err *err)
{
    return cuk_to_fp16(CTX(d), x, h, n, err);
}

static int g_from_fp16(Device *d, const uint16_t *h, float *x, int64_t n, Err *err)
{
    return cuk_from_fp16(CTX(d), h, x, n, err);
}

static int g_int8_encode(Device *d, const float *x, float *e, int8_t *q, float *scale, int64_t n,
                         Err *err)
{
    return cuk_int8_encode(CTX(d), x, e, q, scale, n, err);
}

static int g_int8_decode(Device *d, const int8_t *q, const float *scale, float *x, int64_t n,
                         Err *err)
{
    return cuk_int8_decode(CTX(d), q, scale, x, n, err);
}

static int g_init_fill(Device *d, float *buf, uint64_t seed, const char *name, int ndim,
                       const int64_t *shape, const int64_t *offset, const int64_t *local,
                       float scale, Err *err)
{
    return cuk_init_fill(CTX(d), buf, seed, name, ndim, shape, offset, local, scale, err);
}

static int g_init_fill_int(Device *d, int32_t *buf, uint64_t seed, const char *name, int ndim,
                           const int64_t *shape, const int64_t *offset, const int64_t *local,
                           int32_t hi, Err *err)
{
    return cuk_init_fill_int(CTX(d), buf, seed, name, ndim, shape, offset, local, hi, err);
}

static int g_sgemm(Device *d, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                   const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                   Err *err)
{
    return cuk_sgemm(CTX(d), trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, err);
}

static int g_orthonormalize(Device *d, float *p, int64_t rows, int r, Err *err)
{
    return cuk_orthonormalize(CTX(d), p, rows, r, err);
}

static void g_describe(Device *d, char *buf, size_t n) { cuk_describe(CTX(d), buf, n); }

static double g_memory(Device *d)
{
    (void)d;
    size_t free_b = 0, total = 0;
    return cudaMemGetInfo(&free_b, &total) == cudaSuccess ? (double)total : 0;
}

static void g_destroy(Device *d)
{
    cuk_free(CTX(d));
    free(d);
}

static const DeviceOps cuda_ops = {
    .name = "cuda",
    .alloc = g_alloc,
    .release = g_release,
    .zero = g_zero,
    .copy = g_copy,
    .upload = g_upload,
    .download = g_download,
    .sync = g_sync,
    .axpy = g_axpy,
    .fill = g_fill,
    .block_copy = g_block_copy,
    .forward = g_forward,
    .backward = g_backward,
    .sgd = g_sgd,
    .adam = g_adam,
    .to_fp16 = g_to_fp16,
    .from_fp16 = g_from_fp16,
    .int8_encode = g_int8_encode,
    .int8_decode = g_int8_decode,
    .init_fill = g_init_fill,
    .init_fill_int = g_init_fill_int,
    .sgemm = g_sgemm,
    .orthonormalize = g_orthonormalize,
    .describe = g_describe,
    .memory = g_memory,
    .destroy = g_destroy,
};

int cuda_count_devices(Err *err)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess || n < 1)
        return err_set(err, "no CUDA device found (%s)",
                       rc != cudaSuccess ? cudaGetErrorString(rc) : "cudaGetDeviceCount found none");
    return n;
}

Device *device_cuda_open(int local_rank, int local_size, Err *err)
{
    int n = cuda_count_devices(err), index = local_rank;
    if (n < 1) return NULL;
    if (n < local_size) {
        if (n == 1 && getenv("CUDA_VISIBLE_DEVICES")) {
            index = 0;
        } else {
            err_set(err, "%d ranks run on this machine, which shows %d CUDA device%s: run at most "
                         "one rank per GPU", local_size, n, n == 1 ? "" : "s");
            return NULL;
        }
    }
    cudaError_t rc = cudaSetDevice(index);
    if (rc != cudaSuccess) {
        err_set(err, "cudaSetDevice(%d) failed: %s", index, cudaGetErrorString(rc));
        return NULL;
    }
    CuCtx *c = cuk_new(err);
    if (!c) return NULL;
    Device *d = calloc(1, sizeof *d);
    if (!d) {
        cuk_free(c);
        err_set(err, "cuda: out of memory");
        return NULL;
    }
    d->ops = &cuda_ops;
    d->impl = c;
    return d;
}

#else

Device *device_cuda_open(int local_rank, int local_size, Err *err)
{
    (void)local_rank, (void)local_size;
    err_set(err, "%s", GPU_NO_CUDA);
    return NULL;
}

int cuda_count_devices(Err *err)
{
    return err_set(err, "%s", GPU_NO_CUDA);
}

#endif
