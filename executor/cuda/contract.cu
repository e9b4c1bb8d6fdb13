/*
 * contract.cu — the contracting kernels on the GPU: matmul (any einsum of two
 * or three operands), mean, the row-major SGEMM wrapper and Gram-Schmidt.
 *
 * The contraction engine and every per-thread body live in contract_body.h,
 * where the CPU tests run them; this file is the device glue: the engine's
 * steps as kernel launches and cuBLAS calls on c->stream.
 *
 * Matmul runs as batched GEMMs on the caller's buffers wherever strides allow
 * (every matmul of the zoo and its gradients, the attention ones included,
 * needs no copy): one cublasSgemm, a strided batch when the batch letters
 * merge into one stride, or a batch of pointers built on the device when
 * they do not ("bsnd,btnd->bnst": b and n). cuBLAS is in pedantic math mode
 * (ctx.cu): fp32 throughout, no TF32.
 *
 * Every cuBLAS call passes B before A: row-major C = A'B' is column-major
 * C^T = B'^T A'^T (cu_gemm_colmajor, which the CPU tests check with cblas).
 */
#include "executor/cuda/cuk_internal.h"
#include "executor/cuda/contract_body.h"

/* ----------------------------------------------------------------------------
 * Maps: one output per thread, per warp or per block, as the sum is long and
 * laid out (the body is the same; only the lanes that share a sum differ) */

static __global__ void map_thread(const __grid_constant__ CuMap m, float *dst, const float *src)
{
    CUK_FOR(o, m.nout) cu_map_store(&m, dst, o, cu_map_partial(&m, src, o, 0, 1));
}

static __global__ void map_warp(const __grid_constant__ CuMap m, float *dst, const float *src)
{
    const int64_t lane = threadIdx.x & 31, warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < m.nout;
         o += warps) {
        float s = cu_warp_sum(cu_map_partial(&m, src, o, lane, 32));
        if (lane == 0) cu_map_store(&m, dst, o, s);
    }
}

static __global__ void map_block(const __grid_constant__ CuMap m, float *dst, const float *src)
{
    for (int64_t o = blockIdx.x; o < m.nout; o += gridDim.x) {
        double s = cu_block_sum(cu_map_partial(&m, src, o, threadIdx.x, blockDim.x));
        if (threadIdx.x == 0) cu_map_store(&m, dst, o, (float)s);
    }
}

/* A sum over contiguous elements goes to a warp (coalesced reads) while there
 * are outputs enough to fill the GPU with warps, else to a block; a strided
 * sum stays in one thread (neighbouring threads read neighbouring elements)
 * unless it is long and there are too few outputs to fill the GPU. */
static int map_run(CuCtx *c, const CuMap *m, float *dst, const float *src, Err *err)
{
    const int64_t resident = (int64_t)c->sms * 2048;   /* threads the GPU holds at once */
    const bool contiguous = m->ns > 0 && m->ssrc[m->ns - 1] == 1;
    if (m->nsum == 1 || (!contiguous && (m->nsum <= 32 || m->nout >= resident / 4)))
        map_thread<<<cuk_blocks(c, m->nout), CUK_THREADS, 0, c->stream>>>(*m, dst, src);
    else if (contiguous && m->nout * 32 >= resident)
        map_warp<<<cuk_blocks(c, m->nout * 32), CUK_THREADS, 0, c->stream>>>(*m, dst, src);
    else {
        const int64_t cap = (int64_t)c->sms * 32;
        map_block<<<(unsigned)(m->nout < cap ? m->nout : cap), CUK_THREADS, 0, c->stream>>>(
            *m, dst, src);
    }
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * Batched GEMMs */

static __global__ void gemm_pointers(const __grid_constant__ CuGemm g, const float *a,
                                     const float *b, float *cm, const float **pa,
                                     const float **pb, float **pc)
{
    CUK_FOR(t, g.count) {
        int64_t oa, ob, oc;
        cu_gemm_offsets(&g, t, &oa, &ob, &oc);
        pa[t] = a + oa;
        pb[t] = b + ob;
        pc[t] = cm + oc;
    }
}

static cublasOperation_t op_of(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

static int gemm_run(CuCtx *c, const CuGemm *g, const float *a, const float *b, float *cm,
                    Err *err)
{
    const float one = 1.0f;
    const CuColMajor x = cu_gemm_colmajor(g);
    if (g->count == 1) {
        CUK_BLAS(cublasSgemm(c->blas, op_of(x.tx), op_of(x.ty), x.m, x.n, x.k, &one, b, x.ldx, a,
                             x.ldy, &g->beta, cm, x.ldc));
        return 0;
    }
    if (g->nb == 1) {
        CUK_BLAS(cublasSgemmStridedBatched(c->blas, op_of(x.tx), op_of(x.ty), x.m, x.n, x.k, &one,
                                           b, x.ldx, g->bsb[0], a, x.ldy, g->bsa[0], &g->beta,
                                           cm, x.ldc, g->bsc[0], (int)g->count));
        return 0;
    }
    /* batch letters that share no one stride: a pointer per GEMM */
    void *ptrs = cuk_scratch(c, 3 * (size_t)g->count * sizeof(float *), "batched GEMM", err);
    if (!ptrs) return -1;
    const float **pa = (const float **)ptrs, **pb = pa + g->count;
    float **pc = (float **)(pb + g->count);
    gemm_pointers<<<cuk_blocks(c, g->count), CUK_THREADS, 0, c->stream>>>(*g, a, b, cm, pa, pb,
                                                                          pc);
    cudaError_t launched = cudaGetLastError();
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    if (launched == cudaSuccess)
        st = cublasSgemmBatched(c->blas, op_of(x.tx), op_of(x.ty), x.m, x.n, x.k, &one, pb,
                                x.ldx, pa, x.ldy, &g->beta, pc, x.ldc, (int)g->count);
    cuk_release(c, ptrs);
    if (launched != cudaSuccess)
        return cuk_cuda_fail(err, launched, "gemm_pointers<<<>>>", __FILE__, __LINE__);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cuk_blas_fail(err, st, "cublasSgemmBatched", __FILE__, __LINE__);
    return 0;
}

/* ----------------------------------------------------------------------------
 * The engine of contract_body.h on this context */

static float *eng_scratch(void *ctx, int64_t n, Err *err)
{
    return (float *)cuk_scratch((CuCtx *)ctx, (size_t)n * sizeof(float), "contraction", err);
}

static void eng_release(void *ctx, float *p) { cuk_release((CuCtx *)ctx, p); }

static int eng_map(void *ctx, const CuMap *m, float *dst, const float *src, Err *err)
{
    return map_run((CuCtx *)ctx, m, dst, src, err);
}

static int eng_gemm(void *ctx, const CuGemm *g, const float *a, const float *b, float *cm,
                    Err *err)
{
    return gemm_run((CuCtx *)ctx, g, a, b, cm, err);
}

static CuEngine engine(CuCtx *c)
{
    CuEngine e;
    e.ctx = c;
    e.min_run = CU_MIN_RUN;
    e.scratch = eng_scratch;
    e.release = eng_release;
    e.map = eng_map;
    e.gemm = eng_gemm;
    return e;
}

/* ----------------------------------------------------------------------------
 * The ops */

int cuk_matmul_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    CuEngine e = engine(c);
    return cu_matmul_forward(&e, ks, in, out, err);
}

int cuk_matmul_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    (void)out;
    CuEngine e = engine(c);
    return cu_matmul_backward(&e, ks, in, dout, din, err);
}

int cuk_mean_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    CuMap m;
    cu_mean_plan(&m, ks, false);
    return map_run(c, &m, out, (const float *)in[0], err);
}

int cuk_mean_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out;
    if (!din[0]) return 0;
    CuMap m;
    cu_mean_plan(&m, ks, true);
    return map_run(c, &m, din[0], dout, err);
}

/* ----------------------------------------------------------------------------
 * SGEMM and Gram-Schmidt */

int cuk_sgemm(CuCtx *c, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
              const float *a, int lda, const float *b, int ldb, float beta, float *cm, int ldc,
              Err *err)
{
    CuGemm g;
    memset(&g, 0, sizeof g);
    g.ta = trans_a, g.tb = trans_b;
    g.m = m, g.n = n, g.k = k;
    g.lda = lda, g.ldb = ldb, g.ldc = ldc;
    g.count = 1;
    const CuColMajor x = cu_gemm_colmajor(&g);
    CUK_BLAS(cublasSgemm(c->blas, op_of(x.tx), op_of(x.ty), x.m, x.n, x.k, &alpha, b, x.ldx, a,
                         x.ldy, &beta, cm, x.ldc));
    return 0;
}

/* One block does it all: r is a handful of columns, and each step needs the
 * whole of the previous one. */
#define ORTHO_THREADS 1024

static __global__ void __launch_bounds__(ORTHO_THREADS)
    orthonormalize(float *p, int64_t rows, int r)
{
    cu_orthonormalize(p, rows, r, threadIdx.x, blockDim.x);
}

int cuk_orthonormalize(CuCtx *c, float *p, int64_t rows, int r, Err *err)
{
    if (rows <= 0 || r <= 0) return 0;
    orthonormalize<<<1, ORTHO_THREADS, 0, c->stream>>>(p, rows, r);
    CUK_LAUNCHED();
    return 0;
}
