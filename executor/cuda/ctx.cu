/*
 * ctx.cu — the CUDA context of the kernels (stream, cuBLAS handle
 * bound to it), their error messages and stream-ordered scratch.
 */
#include "executor/cuda/cuk_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keeps only the function name of a stringised call. */
static int call_len(const char *call) { return (int)strcspn(call, "("); }

int cuk_cuda_fail(Err *err, cudaError_t rc, const char *call, const char *file, int line)
{
    return err_set(err, "%s:%d: %.*s failed: %s: %s", file, line, call_len(call), call,
                   cudaGetErrorName(rc), cudaGetErrorString(rc));
}

int cuk_blas_fail(Err *err, cublasStatus_t rc, const char *call, const char *file, int line)
{
    return err_set(err, "%s:%d: %.*s failed: %s", file, line, call_len(call), call,
                   cublasGetStatusString(rc));
}


static int ctx_start(CuCtx *c, Err *err)
{
    int dev = 0, n = 0;
    CUK_CUDA(cudaGetDeviceCount(&n));
    if (n < 1) return err_set(err, "no CUDA device found");
    CUK_CUDA(cudaGetDevice(&dev));
    CUK_CUDA(cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, dev));
    /* the buffers of a step come and go: the stream-ordered pool keeps what
     * is freed for the next allocation instead of handing it back to the
     * driver at every synchronisation */
    cudaMemPool_t pool;
    uint64_t keep = UINT64_MAX;
    CUK_CUDA(cudaDeviceGetDefaultMemPool(&pool, dev));
    CUK_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    CUK_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUK_BLAS(cublasCreate(&c->blas));
    CUK_BLAS(cublasSetStream(c->blas, c->stream));
    /* fp32 GEMMs stay fp32 (the default math mode: TF32 only when asked for),
     * so results compare with the CPU's */
    CUK_BLAS(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    return 0;
}

CuCtx *cuk_new(Err *err)
{
    CuCtx *c = (CuCtx *)calloc(1, sizeof *c);
    if (!c) {
        err_set(err, "cuda: out of memory");
        return NULL;
    }
    if (ctx_start(c, err)) {
        cuk_free(c);
        return NULL;
    }
    return c;
}

void cuk_free(CuCtx *c)
{
    if (!c) return;
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->blas) cublasDestroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

int cuk_sync(CuCtx *c, Err *err)
{
    CUK_CUDA(cudaStreamSynchronize(c->stream));
    CUK_CUDA(cudaGetLastError());
    return 0;
}

void *cuk_scratch(CuCtx *c, size_t bytes, const char *what, Err *err)
{
    void *p = NULL;
    cudaError_t rc = cudaMallocAsync(&p, bytes ? bytes : 4, c->stream);
    if (rc != cudaSuccess) {
        err_set(err, "%s: no device memory for %zu bytes of scratch: %s", what, bytes,
                cudaGetErrorString(rc));
        return NULL;
    }
    return p;
}

void cuk_release(CuCtx *c, void *p)
{
    if (p) cudaFreeAsync(p, c->stream);
}

/* ----------------------------------------------------------------------------
 * Memory */

void *cuk_alloc(CuCtx *c, size_t bytes, Err *err)
{
    void *p = cuk_scratch(c, bytes, "cuda", err);
    if (p && cuk_zero(c, p, bytes, err)) {
        cuk_release(c, p);
        return NULL;
    }
    return p;
}

void cuk_dealloc(CuCtx *c, void *p)
{
    cuk_release(c, p);
}

int cuk_zero(CuCtx *c, void *p, size_t bytes, Err *err)
{
    if (bytes) CUK_CUDA(cudaMemsetAsync(p, 0, bytes, c->stream));
    return 0;
}

int cuk_copy(CuCtx *c, void *dst, const void *src, size_t bytes, Err *err)
{
    if (bytes && dst != src)
        CUK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return 0;
}

int cuk_upload(CuCtx *c, void *dst, const void *host, size_t bytes, Err *err)
{
    /* from pageable memory the call returns once the data is staged, so the
     * host buffer may change at once */
    if (bytes) CUK_CUDA(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, c->stream));
    return 0;
}

int cuk_download(CuCtx *c, void *host, const void *src, size_t bytes, Err *err)
{
    if (bytes) CUK_CUDA(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    return cuk_sync(c, err);
}

void cuk_describe(CuCtx *c, char *buf, size_t n)
{
    (void)c;
    int dev = 0, rt = 0;
    cudaDeviceProp pr;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&pr, dev) != cudaSuccess) {
        snprintf(buf, n, "cuda device (properties unavailable)");
        return;
    }
    cudaRuntimeGetVersion(&rt);
    snprintf(buf, n, "%s (sm_%d%d, %.1f GiB, CUDA runtime %d.%d)", pr.name, pr.major, pr.minor,
             (double)pr.totalGlobalMem / (1 << 30), rt / 1000, rt % 1000 / 10);
}
