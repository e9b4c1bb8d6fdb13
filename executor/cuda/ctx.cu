/*
 * ctx.cu — the CUDA context of the kernels (stream, cuBLAS and cuDNN handles
 * bound to it), their error messages and stream-ordered scratch.
 */
#include "executor/cuda/cuk_internal.h"

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

int cuk_dnn_fail(Err *err, cudnnStatus_t rc, const char *call, const char *file, int line)
{
    return err_set(err, "%s:%d: %.*s failed: %s", file, line, call_len(call), call,
                   cudnnGetErrorString(rc));
}

static int ctx_start(CuCtx *c, Err *err)
{
    int dev = 0, n = 0;
    CUK_CUDA(cudaGetDeviceCount(&n));
    if (n < 1) return err_set(err, "no CUDA device found");
    CUK_CUDA(cudaGetDevice(&dev));
    CUK_CUDA(cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, dev));
    CUK_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUK_BLAS(cublasCreate(&c->blas));
    CUK_BLAS(cublasSetStream(c->blas, c->stream));
    /* fp32 GEMMs stay fp32: no TF32, so results compare with the CPU's */
    CUK_BLAS(cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH));
    CUK_DNN(cudnnCreate(&c->dnn));
    CUK_DNN(cudnnSetStream(c->dnn, c->stream));
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
    if (c->dnn) cudnnDestroy(c->dnn);
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
