/*
 * elem.cu — the elementwise op kinds (add, bias, gelu, relu, concat), the
 * mse loss, embedding, and the buffer, optimizer, compression and
 * initialisation functions of cuk.h, on device buffers.
 *
 * Each kernel here is a launch shape around a body of elem_body.h, where the
 * arithmetic and the index mapping live (and are tested on the CPU). Every
 * elementwise kernel is a grid-stride loop over its elements. The two
 * reductions are:
 *   - bias's gradient db[j] = sum over m of dy[kept(j) + summed(m)]: when
 *     neighbouring j are neighbours in dy ("bsh,h"), blocks of 32 j x 8 rows
 *     sum a strip of m each into partials[y][j], which a second kernel adds
 *     up in order; otherwise ("nchw,c") a block per j sums its m.
 *   - int8's max |x + e|: a max per block, combined by atomicMax on the
 *     float's bits (non-negative floats order as their bits), so the scale
 *     is the CPU's exactly and stays on the device.
 * Neither depends on atomics of floats, so both are deterministic; the
 * embedding gradient is a scatter-add (atomicAdd), as indices repeat.
 *
 * Legend: n = elements; J, M = bias elements and the elements summed into
 * each; gx, gy = grid size along j and m.
 */
#include "executor/cuda/cuk_internal.h"
#include "executor/cuda/elem_body.h"

/* ----------------------------------------------------------------------------
 * Block reductions (blockDim.x a multiple of 32, at most 1024); every thread
 * gets the result. */

static __device__ float block_reduce(float v, bool max)
{
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = max ? elem_lane_max(v) : elem_lane_sum(v);
    __syncthreads();                        /* part[] free from a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0;         /* 0 is neutral for both: max runs over |.| */
    return max ? elem_lane_max(v) : elem_lane_sum(v);
}

/* ----------------------------------------------------------------------------
 * add, gelu, relu */

static __global__ void kern_add_fwd(float *y, ElemPtrs p, int64_t n)
{
    CUK_FOR(i, n) elem_add_fwd(i, y, &p);
}

static __global__ void kern_add_bwd(const float *dy, ElemPtrs p, int64_t n)
{
    CUK_FOR(i, n) elem_add_bwd(i, dy, &p);
}

static __global__ void kern_acc(float *y, const float *dy, int64_t n)
{
    CUK_FOR(i, n) elem_acc(i, y, dy);
}

static __global__ void kern_gelu_fwd(float *y, const float *x, int64_t n)
{
    CUK_FOR(i, n) elem_gelu_fwd(i, y, x);
}

static __global__ void kern_gelu_bwd(float *dx, const float *x, const float *dy, int64_t n)
{
    CUK_FOR(i, n) elem_gelu_bwd(i, dx, x, dy);
}

static __global__ void kern_relu_fwd(float *y, const float *x, int64_t n)
{
    CUK_FOR(i, n) elem_relu_fwd(i, y, x);
}

static __global__ void kern_relu_bwd(float *dx, const float *x, const float *dy, int64_t n)
{
    CUK_FOR(i, n) elem_relu_bwd(i, dx, x, dy);
}

int cuk_add_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    const int64_t n = kernel_operand_numel(ks, op->nin);
    ElemPtrs p;
    memset(&p, 0, sizeof p);
    p.nin = op->nin;
    for (int k = 0; k < op->nin; k++) p.x[k] = (const float *)in[k];
    kern_add_fwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(out, p, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_add_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out;
    const Op *op = ks->op;
    const int64_t n = kernel_operand_numel(ks, op->nin);
    ElemPtrs p;
    memset(&p, 0, sizeof p);
    p.nin = op->nin;
    bool any = false;
    for (int k = 0; k < op->nin; k++) any |= (p.d[k] = din[k]) != NULL;
    if (!any) return 0;
    kern_add_bwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(dout, p, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_gelu_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const int64_t n = kernel_operand_numel(ks, 0);
    kern_gelu_fwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(out, (const float *)in[0], n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_gelu_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)out;
    if (!din[0]) return 0;
    const int64_t n = kernel_operand_numel(ks, 0);
    kern_gelu_bwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(din[0], (const float *)in[0],
                                                                     dout, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_relu_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const int64_t n = kernel_operand_numel(ks, 0);
    kern_relu_fwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(out, (const float *)in[0], n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_relu_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)out;
    if (!din[0]) return 0;
    const int64_t n = kernel_operand_numel(ks, 0);
    kern_relu_bwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(din[0], (const float *)in[0],
                                                                     dout, n);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * bias */

#define COLS_X 32                           /* j per block of the column sum */
#define COLS_Y 8                            /* strips of m per block */

static __global__ void kern_bias_fwd(float *y, const float *x, const float *b, ElemWalk w,
                                     int64_t n)
{
    CUK_FOR(i, n) elem_bias_fwd(i, y, x, b, &w);
}

/* partial[blockIdx.y][j] = the sum of dy over the m of this block's strips */
static __global__ void kern_bias_db_cols(const float *dy, float *partial, ElemWalk kept,
                                         ElemWalk summed, int64_t J)
{
    __shared__ float s[COLS_Y][COLS_X + 1];
    const int64_t j = (int64_t)blockIdx.x * COLS_X + threadIdx.x;
    const int64_t m0 = (int64_t)blockIdx.y * COLS_Y + threadIdx.y,
                  mstep = (int64_t)gridDim.y * COLS_Y;
    s[threadIdx.y][threadIdx.x] = j < J ? elem_bias_partial(dy, j, m0, mstep, &kept, &summed) : 0;
    __syncthreads();
    if (threadIdx.y == 0 && j < J) {
        float t = 0;
        for (int r = 0; r < COLS_Y; r++) t += s[r][threadIdx.x];
        partial[(int64_t)blockIdx.y * J + j] = t;
    }
}

static __global__ void kern_bias_db_sum(float *db, const float *partial, int gy, int64_t J)
{
    CUK_FOR(j, J) {
        float t = 0;
        for (int r = 0; r < gy; r++) t += partial[(int64_t)r * J + j];
        db[j] += t;
    }
}

/* a block per j: its threads stride over m */
static __global__ void kern_bias_db_rows(float *db, const float *dy, ElemWalk kept,
                                         ElemWalk summed, int64_t J)
{
    for (int64_t j = blockIdx.x; j < J; j += gridDim.x) {
        float t = elem_bias_partial(dy, j, threadIdx.x, blockDim.x, &kept, &summed);
        t = block_reduce(t, false);
        if (threadIdx.x == 0) db[j] += t;
    }
}

int cuk_bias_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    ElemBiasPlan p;
    elem_bias_plan(&p, ks);
    kern_bias_fwd<<<cuk_blocks(c, p.n), CUK_THREADS, 0, c->stream>>>(
        out, (const float *)in[0], (const float *)in[1], p.fwd, p.n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_bias_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out;
    ElemBiasPlan p;
    elem_bias_plan(&p, ks);
    if (din[0]) {
        kern_acc<<<cuk_blocks(c, p.n), CUK_THREADS, 0, c->stream>>>(din[0], dout, p.n);
        CUK_LAUNCHED();
    }
    if (!din[1]) return 0;
    const int64_t J = p.kept.numel, M = p.summed.numel;
    if (!(p.cols && J >= COLS_X)) {
        int64_t cap = (int64_t)c->sms * 8;
        kern_bias_db_rows<<<(unsigned)(J < cap ? J : cap), CUK_THREADS, 0, c->stream>>>(
            din[1], dout, p.kept, p.summed, J);
        CUK_LAUNCHED();
        return 0;
    }
    /* enough strips of m to give every SM a few blocks, each strip at least
     * one row per thread */
    const int64_t gx = (J + COLS_X - 1) / COLS_X;
    int64_t gy = (int64_t)c->sms * 8 / gx, rows = (M + COLS_Y - 1) / COLS_Y;
    if (gy > rows) gy = rows;
    if (gy > 65535) gy = 65535;
    if (gy < 1) gy = 1;
    float *partial = (float *)cuk_scratch(c, sizeof(float) * (size_t)(gy * J),
                                          "bias gradient partial sums", err);
    if (!partial) return -1;
    int rc = -1;
    dim3 grid((unsigned)gx, (unsigned)gy), block(COLS_X, COLS_Y);
    kern_bias_db_cols<<<grid, block, 0, c->stream>>>(dout, partial, p.kept, p.summed, J);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        kern_bias_db_sum<<<cuk_blocks(c, J), CUK_THREADS, 0, c->stream>>>(din[1], partial,
                                                                          (int)gy, J);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) {
        cuk_cuda_fail(err, e, "bias gradient launch", __FILE__, __LINE__);
        goto out;
    }
    rc = 0;
out:
    cuk_release(c, partial);
    return rc;
}

/* ----------------------------------------------------------------------------
 * embedding */

static __global__ void kern_embed_fwd(float *y, const int32_t *idx, const float *table,
                                      ElemEmbedPlan p, int64_t n)
{
    CUK_FOR(i, n) elem_embed_fwd(i, y, idx, table, &p);
}

static __global__ void kern_embed_bwd(float *dtable, const int32_t *idx, const float *dy,
                                      ElemEmbedPlan p, int64_t n)
{
    CUK_FOR(i, n) elem_embed_bwd(i, dtable, idx, dy, &p);
}

int cuk_embedding_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out,
                      Err *err)
{
    ElemEmbedPlan p;
    elem_embed_plan(&p, ks);
    const int64_t n = p.out.numel;
    kern_embed_fwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(
        out, (const int32_t *)in[0], (const float *)in[1], p, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_embedding_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                      const float *dout, float *const *din, Err *err)
{
    (void)out;
    if (!din[1]) return 0;                  /* indices take no gradient */
    ElemEmbedPlan p;
    elem_embed_plan(&p, ks);
    const int64_t n = p.all.numel;
    kern_embed_bwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(
        din[1], (const int32_t *)in[0], dout, p, n);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * concat: a launch per input */

static __global__ void kern_concat_fwd(float *y, const float *x, ElemConcatPlan p, int64_t n)
{
    CUK_FOR(i, n) elem_concat_fwd(i, y, x, &p);
}

static __global__ void kern_concat_bwd(float *dx, const float *dy, ElemConcatPlan p, int64_t n)
{
    CUK_FOR(i, n) elem_concat_bwd(i, dx, dy, &p);
}

int cuk_concat_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    if (kernel_check_concat(ks, err)) return -1;
    for (int k = 0; k < ks->op->nin; k++) {
        ElemConcatPlan p;
        elem_concat_plan(&p, ks, k);
        const int64_t n = p.w.numel;
        kern_concat_fwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(
            out, (const float *)in[k], p, n);
        CUK_LAUNCHED();
    }
    return 0;
}

/* One input after the other on the stream: a buffer given for two inputs
 * receives both slices in turn. */
int cuk_concat_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out;
    if (kernel_check_concat(ks, err)) return -1;
    for (int k = 0; k < ks->op->nin; k++) {
        if (!din[k]) continue;
        ElemConcatPlan p;
        elem_concat_plan(&p, ks, k);
        const int64_t n = p.w.numel;
        kern_concat_bwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(din[k], dout, p, n);
        CUK_LAUNCHED();
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * mse: a part per block (its threads' strided sums, added in the block in a
 * fixed order), then one thread adds the parts in block order: the same loss
 * for the same grid, run after run. */

static __device__ double block_sum_double(double v)
{
    __shared__ double part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __global__ void kern_mse_part(const float *pr, const float *t, ElemMsePlan p, double *part)
{
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    double s = elem_mse_part(pr, t, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, step, &p);
    s = block_sum_double(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

static __global__ void kern_mse_loss(const double *part, unsigned nparts, double count, float *out)
{
    double s = 0;
    for (unsigned b = 0; b < nparts; b++) s += part[b];
    out[0] = (float)(s / count);
}

static __global__ void kern_mse_bwd(float *dp, float *dt, const float *pr, const float *t,
                                    const float *dout, ElemMsePlan p, int64_t n)
{
    const float c = (float)(2.0 * dout[0] / p.count);
    CUK_FOR(i, n) elem_mse_bwd(i, dp, dt, pr, t, c, &p);
}

int cuk_mse_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    if (kernel_check_extents(ks, 0, err)) return -1;
    ElemMsePlan p;
    elem_mse_plan(&p, ks);
    const unsigned nb = cuk_blocks(c, p.w.numel);
    double *part = (double *)cuk_scratch(c, sizeof(double) * nb, ks->op->name, err);
    if (!part) return -1;
    kern_mse_part<<<nb, CUK_THREADS, 0, c->stream>>>((const float *)in[0], (const float *)in[1],
                                                      p, part);
    cudaError_t rc = cudaGetLastError();
    if (rc == cudaSuccess) {
        kern_mse_loss<<<1, 1, 0, c->stream>>>(part, nb, p.count, out);
        rc = cudaGetLastError();
    }
    cuk_release(c, part);
    return rc == cudaSuccess ? 0 : cuk_cuda_fail(err, rc, "kern_mse", __FILE__, __LINE__);
}

/* dout is one float of device memory. */
int cuk_mse_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                const float *dout, float *const *din, Err *err)
{
    (void)out;
    if (kernel_check_extents(ks, 0, err)) return -1;
    if (!din[0] && !din[1]) return 0;
    ElemMsePlan p;
    elem_mse_plan(&p, ks);
    const int64_t n = p.w.numel;
    kern_mse_bwd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(
        din[0], din[1], (const float *)in[0], (const float *)in[1], dout, p, n);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * Buffers */

static __global__ void kern_axpy(float *y, const float *x, float a, int64_t n)
{
    CUK_FOR(i, n) elem_axpy(i, y, x, a);
}

static __global__ void kern_fill(float *x, float v, int64_t n)
{
    CUK_FOR(i, n) elem_fill(i, x, v);
}

static __global__ void kern_block_copy(float *dst, const float *src, ElemCopyPlan p, int64_t n)
{
    CUK_FOR(i, n) elem_block_copy(i, dst, src, &p);
}

int cuk_axpy(CuCtx *c, float *y, const float *x, float a, int64_t n, Err *err)
{
    if (n <= 0) return 0;
    kern_axpy<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(y, x, a, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_fill(CuCtx *c, float *x, float v, int64_t n, Err *err)
{
    if (n <= 0) return 0;
    kern_fill<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(x, v, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_block_copy(CuCtx *c, float *dst, const int64_t *dd, const int64_t *doff, const float *src,
                   const int64_t *sd, const int64_t *soff, const int64_t *len, int nd, Err *err)
{
    if (nd < 0 || nd > IR_MAX_DIMS)
        return err_set(err, "block copy: %d dims, at most %d", nd, IR_MAX_DIMS);
    ElemCopyPlan p;
    elem_copy_plan(&p, dd, doff, sd, soff, len, nd);
    const int64_t n = p.w.numel;
    if (n <= 0) return 0;
    kern_block_copy<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(dst, src, p, n);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * Optimizers */

static __global__ void kern_sgd(float *w, const float *g, float *mom, float lr, float momentum,
                                float wd, int64_t n)
{
    CUK_FOR(i, n) elem_sgd(i, w, g, mom, lr, momentum, wd);
}

static __global__ void kern_adam(float *w, const float *g, float *m, float *v, ElemAdam a,
                                 int64_t n)
{
    CUK_FOR(i, n) elem_adam(i, w, g, m, v, &a);
}

int cuk_sgd(CuCtx *c, float *w, const float *g, float *mom, int64_t n, const OptimHyper *h,
            Err *err)
{
    if (n <= 0) return 0;
    kern_sgd<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(w, g, mom, h->lr, h->momentum,
                                                              h->weight_decay, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_adam(CuCtx *c, float *w, const float *g, float *m, float *v, int64_t n, int64_t step,
             const OptimHyper *h, Err *err)
{
    if (n <= 0) return 0;
    ElemAdam a;
    elem_adam_hyper(&a, h, step);
    kern_adam<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(w, g, m, v, a, n);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * Compression */

static __global__ void kern_to_fp16(const float *x, uint16_t *h, int64_t n)
{
    CUK_FOR(i, n) elem_to_fp16(i, x, h);
}

static __global__ void kern_from_fp16(const uint16_t *h, float *x, int64_t n)
{
    CUK_FOR(i, n) elem_from_fp16(i, h, x);
}

/* *bits = max(*bits, this block's max |x + e|), as the bits of a float */
static __global__ void kern_int8_absmax(const float *x, const float *e, unsigned *bits, int64_t n)
{
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x,
                  step = (int64_t)gridDim.x * blockDim.x;
    float m = block_reduce(elem_int8_absmax(x, e, t, step, n), true);
    if (threadIdx.x == 0) atomicMax(bits, elem_f32_bits(m));
}

static __global__ void kern_int8_scale(const unsigned *bits, float *scale)
{
    *scale = elem_int8_scale(elem_f32_from_bits(*bits));
}

static __global__ void kern_int8_encode(const float *x, float *e, int8_t *q, const float *scale,
                                        int64_t n)
{
    const float s = *scale;
    CUK_FOR(i, n) elem_int8_encode(i, x, e, q, s);
}

static __global__ void kern_int8_decode(const int8_t *q, const float *scale, float *x, int64_t n)
{
    const float s = *scale;
    CUK_FOR(i, n) elem_int8_decode(i, q, s, x);
}

int cuk_to_fp16(CuCtx *c, const float *x, uint16_t *h, int64_t n, Err *err)
{
    if (n <= 0) return 0;
    kern_to_fp16<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(x, h, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_from_fp16(CuCtx *c, const uint16_t *h, float *x, int64_t n, Err *err)
{
    if (n <= 0) return 0;
    kern_from_fp16<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(h, x, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_int8_encode(CuCtx *c, const float *x, float *e, int8_t *q, float *scale_dev, int64_t n,
                    Err *err)
{
    if (n < 0) n = 0;
    unsigned *bits = (unsigned *)cuk_scratch(c, sizeof *bits, "int8 scale", err);
    if (!bits) return -1;
    int rc = -1;
    cudaError_t ce = cudaMemsetAsync(bits, 0, sizeof *bits, c->stream);
    if (ce != cudaSuccess) {
        cuk_cuda_fail(err, ce, "cudaMemsetAsync(int8 scale)", __FILE__, __LINE__);
        goto out;
    }
    kern_int8_absmax<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(x, e, bits, n);
    kern_int8_scale<<<1, 1, 0, c->stream>>>(bits, scale_dev);
    if (n > 0) kern_int8_encode<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(x, e, q, scale_dev, n);
    ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        cuk_cuda_fail(err, ce, "int8 encode launch", __FILE__, __LINE__);
        goto out;
    }
    rc = 0;
out:
    cuk_release(c, bits);
    return rc;
}

int cuk_int8_decode(CuCtx *c, const int8_t *q, const float *scale_dev, float *x, int64_t n,
                    Err *err)
{
    if (n <= 0) return 0;
    kern_int8_decode<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(q, scale_dev, x, n);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * Deterministic values */

static __global__ void kern_init_fill(float *buf, ElemInitPlan p, float scale, int64_t n)
{
    CUK_FOR(i, n) elem_init_fill(i, buf, &p, scale);
}

static __global__ void kern_init_fill_int(int32_t *buf, ElemInitPlan p, uint64_t range, int64_t n)
{
    CUK_FOR(i, n) elem_init_fill_int(i, buf, &p, range);
}

static int init_check(int ndim, Err *err)
{
    if (ndim < 0 || ndim > IR_MAX_DIMS)
        return err_set(err, "init fill: %d dims, at most %d", ndim, IR_MAX_DIMS);
    return 0;
}

int cuk_init_fill(CuCtx *c, float *buf, uint64_t seed, const char *name, int ndim,
                  const int64_t *shape, const int64_t *offset, const int64_t *local, float scale,
                  Err *err)
{
    if (init_check(ndim, err)) return -1;
    ElemInitPlan p;
    elem_init_plan(&p, seed, name, ndim, shape, offset, local);
    const int64_t n = p.w.numel;
    if (n <= 0) return 0;
    kern_init_fill<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(buf, p, scale, n);
    CUK_LAUNCHED();
    return 0;
}

int cuk_init_fill_int(CuCtx *c, int32_t *buf, uint64_t seed, const char *name, int ndim,
                      const int64_t *shape, const int64_t *offset, const int64_t *local,
                      int32_t hi, Err *err)
{
    if (init_check(ndim, err)) return -1;
    ElemInitPlan p;
    elem_init_plan(&p, seed, name, ndim, shape, offset, local);
    const int64_t n = p.w.numel;
    if (n <= 0) return 0;
    kern_init_fill_int<<<cuk_blocks(c, n), CUK_THREADS, 0, c->stream>>>(
        buf, p, hi > 0 ? (uint64_t)hi : 0, n);
    CUK_LAUNCHED();
    return 0;
}
