/*
 * norm.cu — CUDA kernels of the ops that normalise over their `reduce`
 * letters: layernorm, batchnorm, softmax and cross_entropy, forward and
 * backward, with the semantics of executor/k_norm.c (the walk over any
 * letter order, shards by off/total, split reductions through ks->stats).
 *
 * The arithmetic lives in norm_body.h, shared with the CPU tests; here are
 * the launches. A row is worked by a group of lanes: a warp for rows of up
 * to 1024 elements (eight rows to a block), a block of 256 or 1024 threads
 * for longer ones; the group's partial results combine by warp shuffles and,
 * across the warps of a block, through shared memory. Every lane ends with
 * the same value, so the phases of a row (max, sum, write) follow each other
 * without another pass over memory for the statistics.
 *
 * Host round trips happen only where the CPU kernel's contract needs them:
 * before a stats callback (it receives device buffers after the stream is
 * synchronised), and where cross_entropy must report a label outside the
 * classes as an error (one flag read back per call).
 *
 * Legend: G = lanes per row (32, 256 or 1024), i = row, j = element of a
 * row, n = elements per row, N = count a row is normalised over.
 */
#include "executor/cuda/cuk_internal.h"
#include "executor/cuda/norm_body.h"

#include <string.h>

static_assert(NB_MAXD == IR_MAX_DIMS && NB_MAXK == IR_MAX_INPUTS + 1, "norm_body.h limits");

/* No bad label: the flag cross_entropy's check leaves untouched. */
#define CE_NONE 0xFFFFFFFFFFFFFFFFull

/* Inside a function with `int rc` and an `out:` label that releases what it
 * holds: set rc with err naming the call and jump there. */
#define TRY(call)                                                                         \
    do {                                                                                  \
        cudaError_t rc_ = (call);                                                         \
        if (rc_ != cudaSuccess) {                                                         \
            rc = cuk_cuda_fail(err, rc_, #call, __FILE__, __LINE__);                      \
            goto out;                                                                     \
        }                                                                                 \
    } while (0)
#define TRY_LAUNCHED() TRY(cudaGetLastError())

/* ----------------------------------------------------------------------------
 * Shapes, geometry, launch sizes (host) */




/* Lanes per row, block size and grid of a row kernel. */
typedef struct {
    int g;
    unsigned block, grid;
} RowLaunch;

static RowLaunch row_launch(const CuCtx *c, int64_t rows, int64_t n)
{
    RowLaunch r;
    r.g = n <= 1024 ? 32 : n <= 16384 ? 256 : 1024;
    r.block = r.g == 32 ? CUK_THREADS : (unsigned)r.g;
    int64_t per = r.g == 32 ? CUK_THREADS / 32 : 1;
    int64_t b = (rows + per - 1) / per, cap = (int64_t)c->sms * (r.g == 1024 ? 2 : 8);
    r.grid = (unsigned)(b < 1 ? 1 : b < cap ? b : cap);
    return r;
}

/* kern<G><<<...>>>(args) for the G of rl. */
#define LAUNCH_ROWS(rl, kern, ...)                                                        \
    do {                                                                                  \
        if ((rl).g == 32)                                                                 \
            kern<32><<<(rl).grid, (rl).block, 0, c->stream>>>(__VA_ARGS__);               \
        else if ((rl).g == 256)                                                           \
            kern<256><<<(rl).grid, (rl).block, 0, c->stream>>>(__VA_ARGS__);              \
        else                                                                              \
            kern<1024><<<(rl).grid, (rl).block, 0, c->stream>>>(__VA_ARGS__);             \
    } while (0)

/* ----------------------------------------------------------------------------
 * Row groups (device) */

#define FULL_MASK 0xFFFFFFFFu

/* for (each row i of this group) with `lane` its lane: a warp per row when G
 * is 32, else the block. */
#define FOR_ROWS(G, rows, i, lane)                                                        \
    const int lane = (G) == 32 ? (int)(threadIdx.x & 31) : (int)threadIdx.x;              \
    const int64_t per_block_ = (G) == 32 ? blockDim.x / 32 : 1;                           \
    for (int64_t i = (int64_t)blockIdx.x * per_block_ + ((G) == 32 ? threadIdx.x / 32 : 0); \
         i < (rows); i += (int64_t)gridDim.x * per_block_)

__device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = nb_max(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* The sum over the G lanes of a row, in every lane (the butterfly gives each
 * lane the same float: its additions differ only in operand order). */
template <int G> __device__ __forceinline__ double group_sum(double v)
{
    v = warp_sum(v);
    if (G > 32) {
        __shared__ double part[G > 32 ? G / 32 : 1];
        const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
        if (l == 0) part[w] = v;
        __syncthreads();
        v = l < G / 32 ? part[l] : 0.0;
        v = warp_sum(v);
        __syncthreads();            /* part is free for the next call */
    }
    return v;
}

template <int G> __device__ __forceinline__ float group_max(float v)
{
    v = warp_max(v);
    if (G > 32) {
        __shared__ float part[G > 32 ? G / 32 : 1];
        const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
        if (l == 0) part[w] = v;
        __syncthreads();
        v = l < G / 32 ? part[l] : -INFINITY;
        v = warp_max(v);
        __syncthreads();
    }
    return v;
}

/* Row statistics by two passes (layernorm; unsynchronised batchnorm). */
template <int G>
__device__ __forceinline__ NbStat row_stat(const NbGeo *g, const float *x, int64_t i, int lane)
{
    int64_t xo = nb_outer(g, 0, i);
    double count = (double)g->n;
    double mean = group_sum<G>(nb_lane_sum(g, 0, x, xo, g->n, lane, G)) / count;
    return nb_stat_two_pass(mean, group_sum<G>(nb_lane_sqdev(g, 0, x, xo, g->n, mean, lane, G)),
                            count);
}

/* ----------------------------------------------------------------------------
 * layernorm */

template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ln_fwd_k(const __grid_constant__ NbGeo g, int nin, const float *x, const float *gam,
         const float *bet, float *y)
{
    FOR_ROWS(G, g.rows, i, lane) {
        NbStat st = row_stat<G>(&g, x, i, lane);
        ln_lane_out(&g, nin, x, gam, bet, y, i, st, lane, G);
    }
}

/* mean[i], rstd[i] for the dgamma and dbeta columns */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ln_stats_k(const __grid_constant__ NbGeo g, const float *x, double *mean, double *rstd)
{
    FOR_ROWS(G, g.rows, i, lane) {
        NbStat st = row_stat<G>(&g, x, i, lane);
        if (lane == 0) mean[i] = st.mean, rstd[i] = st.rstd;
    }
}

/* dx; the statistics from mean/rstd where given, else computed here */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ln_dx_k(const __grid_constant__ NbGeo g, int nin, const float *x, const float *gam,
        const float *dy, float *dx, const double *mean, const double *rstd)
{
    FOR_ROWS(G, g.rows, i, lane) {
        NbStat st;
        if (mean) st.mean = mean[i], st.rstd = rstd[i];
        else st = row_stat<G>(&g, x, i, lane);
        double a, b;
        ln_lane_dsums(&g, nin, x, gam, dy, i, st, lane, G, &a, &b);
        a = group_sum<G>(a);
        b = group_sum<G>(b);
        ln_lane_dx(&g, nin, x, gam, dy, dx, i, st, a, b, lane, G);
    }
}

/* dgamma, dbeta by columns: block (32 columns) x (8 row lanes); block row
 * blockIdx.y takes rows blockIdx.y * 8 + ty, stepping gridDim.y * 8. Its
 * sums go to part[blockIdx.y][j] (pg, pb), added up in order by ln_cols_k. */
#define COL_X 32
#define COL_Y 8

__global__ void __launch_bounds__(COL_X *COL_Y)
ln_col_k(const __grid_constant__ NbGeo g, int nin, const float *x, const float *dy,
         const double *mean, const double *rstd, double *pg, double *pb)
{
    __shared__ double sg[COL_Y][COL_X], sb[COL_Y][COL_X];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t j = (int64_t)blockIdx.x * COL_X + tx;
    double a = 0, b = 0;
    if (j < g.n)
        ln_col_part(&g, nin, x, dy, mean, rstd, j, (int64_t)blockIdx.y * COL_Y + ty,
                    (int64_t)gridDim.y * COL_Y, &a, &b);
    sg[ty][tx] = a;
    sb[ty][tx] = b;
    __syncthreads();
    if (ty == 0 && j < g.n) {
        for (int r = 1; r < COL_Y; r++) a += sg[r][tx], b += sb[r][tx];
        pg[blockIdx.y * g.n + j] = a;
        pb[blockIdx.y * g.n + j] = b;
    }
}

__global__ void ln_cols_k(const __grid_constant__ NbGeo g, int chunks, const double *pg,
                          const double *pb, float *dg, float *db)
{
    CUK_FOR(j, g.n) {
        double a = 0, b = 0;
        for (int r = 0; r < chunks; r++) a += pg[r * g.n + j], b += pb[r * g.n + j];
        if (dg) dg[nb_inner(&g, 1, j)] += (float)a;
        if (db) db[nb_inner(&g, 2, j)] += (float)b;
    }
}

int cuk_layernorm_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out,
                      Err *err)
{
    const Op *op = ks->op;
    if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
    NbGeo g;
    nb_geo_of(&g, ks, op->nin + 1);
    RowLaunch rl = row_launch(c, g.rows, g.n);
    LAUNCH_ROWS(rl, ln_fwd_k, g, op->nin, (const float *)in[0],
                op->nin > 1 ? (const float *)in[1] : NULL,
                op->nin > 2 ? (const float *)in[2] : NULL, out);
    CUK_LAUNCHED();
    return 0;
}

/* dgamma and dbeta first, dx last: dx may share memory with dy or x. */
int cuk_layernorm_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                      const float *dout, float *const *din, Err *err)
{
    (void)out;
    const Op *op = ks->op;
    int rc = 0;
    const float *x = (const float *)in[0], *gam = op->nin > 1 ? (const float *)in[1] : NULL;
    float *dx = din[0], *dg = op->nin > 1 ? din[1] : NULL, *db = op->nin > 2 ? din[2] : NULL;
    double *st = NULL, *part = NULL;
    NbGeo g;
    RowLaunch rl;
    int64_t xblocks = 0, chunks = 0;
    if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
    nb_geo_of(&g, ks, op->nin + 1);
    rl = row_launch(c, g.rows, g.n);
    if (dg || db) {
        /* enough column blocks to fill the device, each over >= 8 rows */
        xblocks = (g.n + COL_X - 1) / COL_X;
        chunks = ((int64_t)c->sms * 8 + xblocks - 1) / xblocks;
        if (chunks > (g.rows + COL_Y - 1) / COL_Y) chunks = (g.rows + COL_Y - 1) / COL_Y;
        if (chunks > 65535) chunks = 65535;
        if (chunks < 1) chunks = 1;
        st = (double *)cuk_scratch(c, sizeof *st * (size_t)(2 * g.rows), op->name, err);
        part = (double *)cuk_scratch(c, sizeof *part * (size_t)(2 * chunks * g.n), op->name, err);
        if (!st || !part) {
            rc = -1;
            goto out;
        }
        LAUNCH_ROWS(rl, ln_stats_k, g, x, st, st + g.rows);
        TRY_LAUNCHED();
        ln_col_k<<<dim3((unsigned)xblocks, (unsigned)chunks), dim3(COL_X, COL_Y), 0, c->stream>>>(
            g, op->nin, x, dout, st, st + g.rows, part, part + chunks * g.n);
        TRY_LAUNCHED();
        ln_cols_k<<<cuk_blocks(c, g.n), CUK_THREADS, 0, c->stream>>>(
            g, (int)chunks, part, part + chunks * g.n, dg, db);
        TRY_LAUNCHED();
    }
    if (dx) {
        LAUNCH_ROWS(rl, ln_dx_k, g, op->nin, x, gam, dout, dx, st, st ? st + g.rows : NULL);
        TRY_LAUNCHED();
    }
out:
    cuk_release(c, part);
    cuk_release(c, st);
    return rc;
}

/* ----------------------------------------------------------------------------
 * batchnorm: row kernels for the statistics (a row is a channel), element
 * kernels for y and dx, so that a few long rows still fill the device. */

/* Unsynchronised: two passes per row. */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
bn_stats_k(const __grid_constant__ NbGeo g, const float *x, NbStat *st)
{
    FOR_ROWS(G, g.rows, i, lane) {
        NbStat s = row_stat<G>(&g, x, i, lane);
        if (lane == 0) st[i] = s;
    }
}

/* Synchronised: buf = sum x per row, then sum x^2 per row (nm == 2); with dy,
 * also sum dy, sum dy x (nm == 4). */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
bn_moments_k(const __grid_constant__ NbGeo g, int nin, const float *x, const float *dy,
             float *buf)
{
    FOR_ROWS(G, g.rows, i, lane) {
        double p[4] = {0, 0, 0, 0};
        if (dy) bn_lane_moments4(&g, nin, x, dy, i, lane, G, p);
        else bn_lane_moments(&g, x, i, lane, G, &p[0], &p[1]);
        const int nm = dy ? 4 : 2;
        for (int m = 0; m < nm; m++) {
            double s = group_sum<G>(p[m]);
            if (lane == 0) buf[m * g.rows + i] = (float)s;
        }
    }
}

__global__ void bn_sync_stats_k(int64_t rows, const float *buf, double count, NbStat *st)
{
    CUK_FOR(i, rows) st[i] = nb_stat_moments(buf[i], buf[rows + i], count);
}

__global__ void bn_sync_rows_k(int64_t rows, const __grid_constant__ NbGeo g, const float *buf,
                               double count, const float *gam, BnRow *r)
{
    CUK_FOR(i, rows) r[i] = bn_row_sync(buf, rows, i, count, gam ? gam[nb_outer(&g, 1, i)] : 1.0);
}

/* dgamma += sum dy xh, dbeta += sum dy per row (local elements); without
 * sync, also the row's statistics and sums of dg, dg xh into r. */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
bn_dsums_k(const __grid_constant__ NbGeo g, int nin, bool sync, const float *x, const float *gam,
           const float *dy, BnRow *r, float *dg, float *db)
{
    FOR_ROWS(G, g.rows, i, lane) {
        NbStat st;
        if (sync) st.mean = r[i].mean, st.rstd = r[i].rstd;
        else st = row_stat<G>(&g, x, i, lane);
        double a, b;
        bn_lane_dsums(&g, nin, x, dy, i, st, lane, G, &a, &b);
        a = group_sum<G>(a);
        b = group_sum<G>(b);
        if (lane == 0) {
            if (dg) dg[nb_outer(&g, 1, i)] += (float)b;
            if (db) db[nb_outer(&g, 2, i)] += (float)a;
            if (!sync) {
                double gi = gam ? gam[nb_outer(&g, 1, i)] : 1.0;
                r[i].mean = st.mean, r[i].rstd = st.rstd;
                r[i].sdg = gi * a, r[i].sdgx = gi * b;
            }
        }
    }
}

__global__ void bn_out_k(const __grid_constant__ NbGeo g, int nin, const float *x,
                         const float *gam, const float *bet, float *y, const NbStat *st)
{
    CUK_FOR(e, g.rows * g.n) bn_elem_out(&g, nin, x, gam, bet, y, st, e);
}

__global__ void bn_dx_k(const __grid_constant__ NbGeo g, int nin, const float *x,
                        const float *gam, const float *dy, float *dx, const BnRow *r,
                        double count)
{
    CUK_FOR(e, g.rows * g.n) bn_elem_dx(&g, nin, x, gam, dy, dx, r, count, e);
}

/* Synchronised when ks->stats has a sum; N counts the global elements then. */
static bool bn_mode(const KernelShape *ks, double *count)
{
    const Op *op = ks->op;
    bool sync = ks->stats && ks->stats->sum;
    *count = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (op->reduce_mask >> (*p - 'a') & 1)
            *count *= (double)(sync ? ks->total[*p - 'a'] : ks->size[*p - 'a']);
    return sync;
}

int cuk_batchnorm_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out,
                      Err *err)
{
    const Op *op = ks->op;
    int rc = 0;
    const float *x = (const float *)in[0];
    NbStat *st = NULL;
    float *buf = NULL;
    NbGeo g;
    RowLaunch rl;
    double count;
    bool sync;
    if (kernel_check_extents(ks, 0, err)) return -1;
    sync = bn_mode(ks, &count);
    nb_geo_of(&g, ks, op->nin + 1);
    rl = row_launch(c, g.rows, g.n);
    st = (NbStat *)cuk_scratch(c, sizeof *st * (size_t)g.rows, op->name, err);
    if (!st) return -1;
    if (sync) {
        if (!(buf = (float *)cuk_scratch(c, sizeof *buf * (size_t)(2 * g.rows), op->name, err))) {
            rc = -1;
            goto out;
        }
        LAUNCH_ROWS(rl, bn_moments_k, g, op->nin, x, (const float *)NULL, buf);
        TRY_LAUNCHED();
        TRY(cudaStreamSynchronize(c->stream));
        if ((rc = nb_stats_call(ks, false, buf, 2 * g.rows, err))) goto out;
        bn_sync_stats_k<<<cuk_blocks(c, g.rows), CUK_THREADS, 0, c->stream>>>(g.rows, buf, count,
                                                                              st);
    } else {
        LAUNCH_ROWS(rl, bn_stats_k, g, x, st);
    }
    TRY_LAUNCHED();
    bn_out_k<<<cuk_blocks(c, g.rows * g.n), CUK_THREADS, 0, c->stream>>>(
        g, op->nin, x, op->nin > 1 ? (const float *)in[1] : NULL,
        op->nin > 2 ? (const float *)in[2] : NULL, out, st);
    TRY_LAUNCHED();
out:
    cuk_release(c, buf);
    cuk_release(c, st);
    return rc;
}

/* As k_norm.c's norm_bwd: synchronised, one all-reduce of sum x, sum x^2,
 * sum dy, sum dy x per channel; dgamma and dbeta are the local partial sums. */
int cuk_batchnorm_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                      const float *dout, float *const *din, Err *err)
{
    (void)out;
    const Op *op = ks->op;
    int rc = 0;
    const float *x = (const float *)in[0], *gam = op->nin > 1 ? (const float *)in[1] : NULL;
    float *dx = din[0], *dg = op->nin > 1 ? din[1] : NULL, *db = op->nin > 2 ? din[2] : NULL;
    BnRow *r = NULL;
    float *buf = NULL;
    NbGeo g;
    RowLaunch rl;
    double count;
    bool sync;
    if (kernel_check_extents(ks, 0, err)) return -1;
    sync = bn_mode(ks, &count);
    nb_geo_of(&g, ks, op->nin + 1);
    rl = row_launch(c, g.rows, g.n);
    r = (BnRow *)cuk_scratch(c, sizeof *r * (size_t)g.rows, op->name, err);
    if (!r) return -1;
    if (sync) {
        if (!(buf = (float *)cuk_scratch(c, sizeof *buf * (size_t)(4 * g.rows), op->name, err))) {
            rc = -1;
            goto out;
        }
        LAUNCH_ROWS(rl, bn_moments_k, g, op->nin, x, dout, buf);
        TRY_LAUNCHED();
        TRY(cudaStreamSynchronize(c->stream));
        if ((rc = nb_stats_call(ks, false, buf, 4 * g.rows, err))) goto out;
        bn_sync_rows_k<<<cuk_blocks(c, g.rows), CUK_THREADS, 0, c->stream>>>(g.rows, g, buf,
                                                                             count, gam, r);
        TRY_LAUNCHED();
    }
    LAUNCH_ROWS(rl, bn_dsums_k, g, op->nin, sync, x, gam, dout, r, dg, db);
    TRY_LAUNCHED();
    if (dx) {
        bn_dx_k<<<cuk_blocks(c, g.rows * g.n), CUK_THREADS, 0, c->stream>>>(g, op->nin, x, gam,
                                                                            dout, dx, r, count);
        TRY_LAUNCHED();
    }
out:
    cuk_release(c, buf);
    cuk_release(c, r);
    return rc;
}

/* ----------------------------------------------------------------------------
 * softmax */

template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
sm_fwd_k(const __grid_constant__ NbGeo g, SmMask mk, float scale, const float *x, float *y)
{
    FOR_ROWS(G, g.rows, i, lane) {
        int64_t xo = nb_outer(&g, 0, i), lim = sm_limit(&mk, g.n, i);
        float m = group_max<G>(nb_lane_max(&g, 0, x, xo, lim, scale, lane, G));
        if (!(m > -INFINITY)) lim = 0;  /* inputs all -inf (or NaN): an all-zero row */
        double s = group_sum<G>(nb_lane_sumexp(&g, 0, x, xo, lim, scale, m, lane, G));
        sm_lane_out(&g, x, y, i, lim, scale, m, (float)(1 / s), lane, G);
    }
}

template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
sm_bwd_k(const __grid_constant__ NbGeo g, double scale, const float *y, const float *dy,
         float *dx)
{
    FOR_ROWS(G, g.rows, i, lane) {
        double dot = group_sum<G>(sm_lane_dot(&g, y, dy, i, lane, G));
        sm_lane_dx(&g, y, dy, dx, i, scale, dot, lane, G);
    }
}

static SmMask sm_mask(const KernelShape *ks)
{
    const Op *op = ks->op;
    SmMask mk;
    memset(&mk, 0, sizeof mk);
    int s, t;
    mk.causal = op_causal_letters(op, &s, &t) == 0;
    if (mk.causal) {
        mk.s_size = ks->size[s];
        mk.s_off = ks->off[s];
        mk.t_off = ks->off[t];
    }
    return mk;
}

int cuk_softmax_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out,
                    Err *err)
{
    const Op *op = ks->op;
    if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
    NbGeo g;
    nb_geo_of(&g, ks, 2);
    RowLaunch rl = row_launch(c, g.rows, g.n);
    LAUNCH_ROWS(rl, sm_fwd_k, g, sm_mask(ks), (float)op->scale, (const float *)in[0], out);
    CUK_LAUNCHED();
    return 0;
}

/* dx += scale y (dy - sum(dy y)), from the forward output y. */
int cuk_softmax_bwd(CuCtx *c, const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err)
{
    (void)in;
    const Op *op = ks->op;
    if (!din[0]) return 0;
    if (kernel_check_extents(ks, op->reduce_mask, err)) return -1;
    NbGeo g;
    nb_geo_of(&g, ks, 2);
    RowLaunch rl = row_launch(c, g.rows, g.n);
    LAUNCH_ROWS(rl, sm_bwd_k, g, op->scale, out, dout, din[0]);
    CUK_LAUNCHED();
    return 0;
}

/* ----------------------------------------------------------------------------
 * cross_entropy "bsv,bs->" (any letter order). With the vocabulary whole, a
 * row's max, sum of exps and loss term (or dx) come from one kernel. Split
 * (vocabulary-parallel, ks->stats with sum and max): the row maxima, the sums
 * of exps and the target logits are all-reduced in turn, as k_norm.c does,
 * so every rank ends with the same loss. A bad label fails before the first
 * collective, on every rank alike. */

__global__ void ce_check_k(const __grid_constant__ NbGeo g, CeClasses cc, const int32_t *lab,
                           unsigned long long *bad)
{
    CUK_FOR(i, g.rows)
        if (ce_label_bad(&g, lab, &cc, i)) atomicMin(bad, (unsigned long long)i);
}

/* Whole vocabulary: term[i] = lse - x[label] */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ce_fwd_k(const __grid_constant__ NbGeo g, CeClasses cc, const float *x, const int32_t *lab,
         double *term)
{
    FOR_ROWS(G, g.rows, i, lane) {
        int64_t xo = nb_outer(&g, 0, i);
        float m = group_max<G>(nb_lane_max(&g, 0, x, xo, g.n, 1.0f, lane, G));
        float s = (float)group_sum<G>(nb_lane_sumexp(&g, 0, x, xo, g.n, 1.0f, m, lane, G));
        if (lane == 0) term[i] = ce_term(m, s, ce_target(&g, x, lab, &cc, i));
    }
}

/* Split: the local max, then the local sum of e^(x - m) under the global m. */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ce_max_k(const __grid_constant__ NbGeo g, const float *x, float *m)
{
    FOR_ROWS(G, g.rows, i, lane) {
        float v = group_max<G>(nb_lane_max(&g, 0, x, nb_outer(&g, 0, i), g.n, 1.0f, lane, G));
        if (lane == 0) m[i] = v;
    }
}

template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ce_sum_k(const __grid_constant__ NbGeo g, const float *x, const float *m, float *s)
{
    FOR_ROWS(G, g.rows, i, lane) {
        double v = group_sum<G>(
            nb_lane_sumexp(&g, 0, x, nb_outer(&g, 0, i), g.n, 1.0f, m[i], lane, G));
        if (lane == 0) s[i] = (float)v;
    }
}

__global__ void ce_target_k(const __grid_constant__ NbGeo g, CeClasses cc, const float *x,
                            const int32_t *lab, float *tgt)
{
    CUK_FOR(i, g.rows) tgt[i] = ce_target(&g, x, lab, &cc, i);
}

/* One block: out = sum of the row terms / tokens (term[i], or from m, s, tgt),
 * in a fixed order; nothing written when a label was bad. */
#define LOSS_THREADS 1024

__global__ void __launch_bounds__(LOSS_THREADS)
ce_loss_k(int64_t rows, double tokens, const double *term, const float *m, const float *s,
          const float *tgt, const unsigned long long *bad, float *out)
{
    double v = 0;
    for (int64_t i = threadIdx.x; i < rows; i += LOSS_THREADS)
        v += term ? term[i] : ce_term(m[i], s[i], tgt[i]);
    v = group_sum<LOSS_THREADS>(v);
    if (threadIdx.x == 0 && (!bad || *bad == CE_NONE)) out[0] = (float)(v / tokens);
}

/* dx += (softmax(x) - onehot(label)) dout / tokens; m, s given when split,
 * else computed here. Nothing written when a label was bad. */
template <int G>
__global__ void __launch_bounds__(G == 32 ? CUK_THREADS : G)
ce_dx_k(const __grid_constant__ NbGeo g, CeClasses cc, const float *x, const int32_t *lab,
        const float *dout, const float *m, const float *s, const unsigned long long *bad,
        float *dx)
{
    if (bad && *bad != CE_NONE) return;
    const double k = dout[0] / cc.tokens;
    FOR_ROWS(G, g.rows, i, lane) {
        float mi, si;
        if (m) {
            mi = m[i], si = s[i];
        } else {
            int64_t xo = nb_outer(&g, 0, i);
            mi = group_max<G>(nb_lane_max(&g, 0, x, xo, g.n, 1.0f, lane, G));
            si = (float)group_sum<G>(nb_lane_sumexp(&g, 0, x, xo, g.n, 1.0f, mi, lane, G));
        }
        ce_lane_dx(&g, x, lab, &cc, dx, i, mi, si, k, lane, G);
    }
}

/* The class letter, whether split, T; every shape check of k_norm.c. */
static int ce_mode(const KernelShape *ks, NbGeo *g, CeClasses *cc, bool *split, Err *err)
{
    const Op *op = ks->op;
    *split = ks->stats && ks->stats->sum && ks->stats->max;
    if (kernel_check_extents(ks, *split ? 0 : op->reduce_mask, err)) return -1;
    int v = __builtin_ctz(op->reduce_mask);
    cc->v_off = ks->off[v];
    cc->v_total = ks->total[v];
    cc->tokens = 1;
    for (const char *p = op->in_letters[0]; *p; p++)
        if (!(op->reduce_mask >> (*p - 'a') & 1)) cc->tokens *= (double)ks->total[*p - 'a'];
    nb_geo_of(g, ks, 2);
    return 0;
}

/* Reads the flag of ce_check_k (synchronising the stream): -1 with k_norm.c's
 * message when a label is outside the classes. */
static int ce_labels_ok(CuCtx *c, const KernelShape *ks, const NbGeo *g, const CeClasses *cc,
                        const int32_t *lab, const unsigned long long *bad, Err *err)
{
    unsigned long long row = 0;
    int32_t y = 0;
    CUK_CUDA(cudaMemcpyAsync(&row, bad, sizeof row, cudaMemcpyDeviceToHost, c->stream));
    CUK_CUDA(cudaStreamSynchronize(c->stream));
    if (row == CE_NONE) return 0;
    CUK_CUDA(cudaMemcpyAsync(&y, lab + nb_outer(g, 1, (int64_t)row), sizeof y,
                             cudaMemcpyDeviceToHost, c->stream));
    CUK_CUDA(cudaStreamSynchronize(c->stream));
    return err_set(err, "op %s: label %d at local token %lld is outside the %lld classes",
                   ks->op->name, y, (long long)row, (long long)cc->v_total);
}

/* Scratch of cross_entropy: the flag, then rows of three floats (m, s, tgt)
 * or of one double (term); doubles first for their alignment. */
typedef struct {
    unsigned long long *bad;
    double *term;
    float *m, *s, *tgt;
} CeScratch;

static void *ce_scratch(CuCtx *c, const KernelShape *ks, int64_t rows, CeScratch *cs, Err *err)
{
    size_t bytes = sizeof(unsigned long long) + (sizeof(double) + 3 * sizeof(float)) * (size_t)rows;
    char *p = (char *)cuk_scratch(c, bytes, ks->op->name, err);
    if (!p) return NULL;
    cs->bad = (unsigned long long *)p;
    cs->term = (double *)(p + sizeof(unsigned long long));
    cs->m = (float *)(cs->term + rows);
    cs->s = cs->m + rows;
    cs->tgt = cs->s + rows;
    return p;
}

int cuk_cross_entropy_fwd(CuCtx *c, const KernelShape *ks, const void *const *in, float *out,
                          Err *err)
{
    const float *x = (const float *)in[0];
    const int32_t *lab = (const int32_t *)in[1];
    int rc = 0;
    void *mem = NULL;
    CeScratch cs;
    NbGeo g;
    CeClasses cc;
    RowLaunch rl;
    bool split;
    if (ce_mode(ks, &g, &cc, &split, err)) return -1;
    rl = row_launch(c, g.rows, g.n);
    if (!(mem = ce_scratch(c, ks, g.rows, &cs, err))) return -1;
    TRY(cudaMemsetAsync(cs.bad, 0xFF, sizeof *cs.bad, c->stream));
    ce_check_k<<<cuk_blocks(c, g.rows), CUK_THREADS, 0, c->stream>>>(g, cc, lab, cs.bad);
    TRY_LAUNCHED();
    if (!split) {
        LAUNCH_ROWS(rl, ce_fwd_k, g, cc, x, lab, cs.term);
        TRY_LAUNCHED();
        ce_loss_k<<<1, LOSS_THREADS, 0, c->stream>>>(g.rows, cc.tokens, cs.term, NULL, NULL, NULL,
                                                     cs.bad, out);
        TRY_LAUNCHED();
        rc = ce_labels_ok(c, ks, &g, &cc, lab, cs.bad, err);
        goto out;
    }
    LAUNCH_ROWS(rl, ce_max_k, g, x, cs.m);
    TRY_LAUNCHED();
    if ((rc = ce_labels_ok(c, ks, &g, &cc, lab, cs.bad, err))) goto out;
    if ((rc = nb_stats_call(ks, true, cs.m, g.rows, err))) goto out;
    LAUNCH_ROWS(rl, ce_sum_k, g, x, cs.m, cs.s);
    TRY_LAUNCHED();
    ce_target_k<<<cuk_blocks(c, g.rows), CUK_THREADS, 0, c->stream>>>(g, cc, x, lab, cs.tgt);
    TRY_LAUNCHED();
    TRY(cudaStreamSynchronize(c->stream));
    if ((rc = nb_stats_call(ks, false, cs.s, g.rows, err))) goto out;
    if ((rc = nb_stats_call(ks, false, cs.tgt, g.rows, err))) goto out;
    ce_loss_k<<<1, LOSS_THREADS, 0, c->stream>>>(g.rows, cc.tokens, NULL, cs.m, cs.s, cs.tgt,
                                                 NULL, out);
    TRY_LAUNCHED();
out:
    cuk_release(c, mem);
    return rc;
}

/* dx = (softmax(x) - onehot(label)) * dout / T on the local classes; dout is
 * one float of device memory. Split, the statistics are collective: a rank
 * without dx still takes part. */
int cuk_cross_entropy_bwd(CuCtx *c, const KernelShape *ks, const void *const *in,
                          const float *out, const float *dout, float *const *din, Err *err)
{
    (void)out;
    const float *x = (const float *)in[0];
    const int32_t *lab = (const int32_t *)in[1];
    float *dx = din[0];
    int rc = 0;
    void *mem = NULL;
    CeScratch cs;
    NbGeo g;
    CeClasses cc;
    RowLaunch rl;
    bool split;
    if (ce_mode(ks, &g, &cc, &split, err)) return -1;
    rl = row_launch(c, g.rows, g.n);
    if (!(mem = ce_scratch(c, ks, g.rows, &cs, err))) return -1;
    TRY(cudaMemsetAsync(cs.bad, 0xFF, sizeof *cs.bad, c->stream));
    ce_check_k<<<cuk_blocks(c, g.rows), CUK_THREADS, 0, c->stream>>>(g, cc, lab, cs.bad);
    TRY_LAUNCHED();
    if (!split) {
        if (dx) {
            LAUNCH_ROWS(rl, ce_dx_k, g, cc, x, lab, dout, (const float *)NULL,
                        (const float *)NULL, cs.bad, dx);
            TRY_LAUNCHED();
        }
        rc = ce_labels_ok(c, ks, &g, &cc, lab, cs.bad, err);
        goto out;
    }
    LAUNCH_ROWS(rl, ce_max_k, g, x, cs.m);
    TRY_LAUNCHED();
    if ((rc = ce_labels_ok(c, ks, &g, &cc, lab, cs.bad, err))) goto out;
    if ((rc = nb_stats_call(ks, true, cs.m, g.rows, err))) goto out;
    LAUNCH_ROWS(rl, ce_sum_k, g, x, cs.m, cs.s);
    TRY_LAUNCHED();
    TRY(cudaStreamSynchronize(c->stream));
    if ((rc = nb_stats_call(ks, false, cs.s, g.rows, err))) goto out;
    if (dx) {
        LAUNCH_ROWS(rl, ce_dx_k, g, cc, x, lab, dout, cs.m, cs.s,
                    (const unsigned long long *)NULL, dx);
        TRY_LAUNCHED();
    }
out:
    cuk_release(c, mem);
    return rc;
}
