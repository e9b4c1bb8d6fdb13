/*
 * conv.cu — conv2d, pool2d and route on the GPU: launches of the per-thread
 * bodies of conv_body.h (which says what each computes and why it gathers
 * rather than scatters), and the cuBLAS calls of the convolution's GEMMs.
 *
 * Only run_gemm's cuBLAS call cannot be checked on a machine without a GPU:
 * the plan around it (conv_run_fwd/bwd, the column-major GEMM arguments) is
 * run on the CPU by tests/test_cuk_conv.c with cblas standing in.
 */
#include "executor/cuda/cuk_internal.h"
#include "executor/cuda/conv_body.h"

/* Column matrices of at most this many floats (256 MiB) at once; bigger
 * batches go through in chunks of images. */
#define CONV_COL_CAP ((int64_t)1 << 26)

/* ----------------------------------------------------------------------------
 * conv2d */

static __global__ void conv_im2col_k(const float *x, float *col, const __grid_constant__ ConvGeom d,
                                     int64_t n)
{
    CUK_FOR(i, n) col[i] = conv_im2col_at(x, &d, i);
}

static __global__ void conv_col2im_k(const float *col, float *dx, const __grid_constant__ ConvGeom d,
                                     int64_t n)
{
    CUK_FOR(i, n) dx[i] = conv_col2im_at(col, &d, i, dx[i]);
}

/* The ConvOps of the GPU: its ctx is a ConvRun. */
typedef struct {
    CuCtx *c;
    Err *err;
} ConvRun;

static int run_im2col(void *ctx, const float *x, float *col, const ConvGeom *d, int64_t nb)
{
    CuCtx *c = ((ConvRun *)ctx)->c;
    Err *err = ((ConvRun *)ctx)->err;
    int64_t n = nb * d->C * d->R * d->S * d->P * d->Q;
    conv_im2col_k<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(x, col, *d, n);
    CUK_LAUNCHED();
    return 0;
}

static int run_col2im(void *ctx, const float *col, float *dx, const ConvGeom *d, int64_t nb)
{
    CuCtx *c = ((ConvRun *)ctx)->c;
    Err *err = ((ConvRun *)ctx)->err;
    int64_t n = nb * d->C * d->H * d->W;
    conv_col2im_k<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(col, dx, *d, n);
    CUK_LAUNCHED();
    return 0;
}

static int run_gemm(void *ctx, const ConvGemm *g, const float *a, const float *b, float *cm)
{
    CuCtx *c = ((ConvRun *)ctx)->c;
    Err *err = ((ConvRun *)ctx)->err;
    const float one = 1.0f;
    CUK_BLAS(cublasSgemmStridedBatched(c->blas, g->ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       g->tb ? CUBLAS_OP_T : CUBLAS_OP_N, g->m, g->n, g->k, &one,
                                       a, g->lda, g->sa, b, g->ldb, g->sb, &g->beta, cm, g->ldc,
                                       g->sc, g->batch));
    return 0;
}

/* Scratch for the column matrices of nb images; NULL (and no error) when
 * the conv is pointwise and needs none. */
static int conv_col(CuCtx *c, const KernelShape *ks, const ConvGeom *d, int64_t nb, float **col,
                    Err *err)
{
    *col = NULL;
    if (conv_pointwise(d)) return 0;
    size_t bytes = sizeof(float) * (size_t)(nb * d->C * d->R * d->S * d->P * d->Q);
    *col = (float *)cuk_scratch(c, bytes, ks->op->name, err);
    return *col ? 0 : -1;
}

int cuk_conv2d_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    ConvGeom d;
    float *col;
    if (conv_geom(ks, &d, err)) return -1;
    /* alpha and beta are host floats, whatever another caller left set */
    CUK_BLAS(cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST));
    int64_t nb = conv_chunk(&d, CONV_COL_CAP);
    if (conv_col(c, ks, &d, nb, &col, err)) return -1;
    ConvRun run = {c, err};
    ConvOps ops = {run_im2col, run_col2im, run_gemm, &run};
    int rc = conv_run_fwd(&ops, &d, (const float *)in[0], (const float *)in[1], out, col, nb);
    cuk_release(c, col);
    return rc;
}

int cuk_conv2d_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    (void)out;
    ConvGeom d;
    float *col;
    if (conv_geom(ks, &d, err)) return -1;
    if (!din[0] && !din[1]) return 0;
    CUK_BLAS(cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST));
    int64_t nb = conv_chunk(&d, CONV_COL_CAP);
    if (conv_col(c, ks, &d, nb, &col, err)) return -1;
    ConvRun run = {c, err};
    ConvOps ops = {run_im2col, run_col2im, run_gemm, &run};
    int rc = conv_run_bwd(&ops, &d, (const float *)in[0], (const float *)in[1], dout, din[0],
                          din[1], col, nb);
    cuk_release(c, col);
    return rc;
}

/* ----------------------------------------------------------------------------
 * pool2d */

static __global__ void pool_fwd_k(const float *x, float *out, const __grid_constant__ PoolGeom d,
                                  int64_t n)
{
    CUK_FOR(i, n) out[i] = pool_fwd_at(x, &d, i);
}

static __global__ void pool_argmax_k(const float *x, int64_t *arg,
                                     const __grid_constant__ PoolGeom d, int64_t n)
{
    CUK_FOR(i, n) arg[i] = pool_argmax_at(x, &d, i);
}

static __global__ void pool_bwd_k(const float *dout, const int64_t *arg, float *dx,
                                  const __grid_constant__ PoolGeom d, int64_t n)
{
    CUK_FOR(i, n) dx[i] = pool_bwd_at(dout, arg, &d, i, dx[i]);
}

int cuk_pool2d_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    PoolGeom d;
    if (pool_geom(ks, &d, err)) return -1;
    int64_t n = d.planes * d.P * d.Q;
    pool_fwd_k<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>((const float *)in[0], out, d, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_pool2d_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    (void)out;
    PoolGeom d;
    if (pool_geom(ks, &d, err)) return -1;
    if (!din[0]) return 0;
    const float *x = (const float *)in[0];
    int64_t nout = d.planes * d.P * d.Q, nin = d.planes * d.H * d.W;
    int64_t *arg = NULL;
    if (!d.avg) {
        arg = (int64_t *)cuk_scratch(c, sizeof *arg * (size_t)nout, ks->op->name, err);
        if (!arg) return -1;
        pool_argmax_k<<<cuk_blocks(c, nout), CUK_THREADS, 0, c->stream>>>(x, arg, d, nout);
    }
    pool_bwd_k<<<cuk_blocks(c, nin), CUK_THREADS, 0, c->stream>>>(dout, arg, din[0], d, nin);
    int rc = 0;
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) rc = cuk_cuda_fail(err, e, "pool2d backward launch", __FILE__, __LINE__);
    cuk_release(c, arg);
    return rc;
}

/* ----------------------------------------------------------------------------
 * route */

static __global__ void route_best_k(const float *x, int32_t *best,
                                    const __grid_constant__ RouteGeom g, int64_t n)
{
    CUK_FOR(i, n) best[i] = route_best_at(x, &g, i);
}

static __global__ void route_slots_k(const int32_t *best, float *out,
                                     const __grid_constant__ RouteGeom g, int64_t n)
{
    CUK_FOR(t, n) route_slots_at(best, out, &g, t);
}

int cuk_route_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    RouteGeom g;
    if (route_geom(ks, &g, err)) return -1;
    int32_t *best = (int32_t *)cuk_scratch(c, sizeof *best * (size_t)g.nouter, ks->op->name, err);
    if (!best) return -1;
    int rc = 0;
    int64_t nslot = g.nouter / g.nseq * g.ninner;
    cudaError_t e = cudaMemsetAsync(out, 0, sizeof *out * (size_t)g.out_numel, c->stream);
    if (e != cudaSuccess) {
        rc = cuk_cuda_fail(err, e, "cudaMemsetAsync", __FILE__, __LINE__);
        goto out;
    }
    route_best_k<<<cuk_blocks(c, g.nouter), CUK_THREADS, 0, c->stream>>>((const float *)in[0],
                                                                         best, g, g.nouter);
    route_slots_k<<<cuk_blocks(c, nslot), CUK_THREADS, 0, c->stream>>>(best, out, g, nslot);
    if ((e = cudaGetLastError()) != cudaSuccess)
        rc = cuk_cuda_fail(err, e, "route launch", __FILE__, __LINE__);
out:
    cuk_release(c, best);
    return rc;
}

/* The routing is a discrete choice: no gradient flows through it (as the CPU). */
int cuk_route_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                  const float *dout, float *const *din, Err *err)
{
    (void)c, (void)ks, (void)in, (void)out, (void)dout, (void)din, (void)err;
    return 0;
}
