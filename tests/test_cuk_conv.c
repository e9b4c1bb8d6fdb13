/*
 * test_cuk_conv.c — the CUDA conv2d, pool2d and route kernels against the
 * CPU kernels (kernel_forward / kernel_backward).
 *
 * Host part (always): the per-thread bodies of executor/cuda/conv_body.h run
 * for every thread index in turn, with the same plans (chunks of images,
 * column-major GEMM arguments) as conv.cu, cblas standing in for cuBLAS.
 * pool2d and route must match the CPU bit for bit; conv2d to float rounding
 * (the GEMMs are the CPU's transposed). im2col and col2im are also checked
 * to be adjoint, which pins down their index maps without any GEMM.
 *
 * GPU part (builds with CUDA, on a machine with a device): the same cases
 * through cuk_forward / cuk_backward on device buffers; otherwise skipped.
 *
 * Every case runs whole and sharded (local sizes below the global ones at a
 * non-zero offset, for the letters the op lets a strategy split), and every
 * backward adds into random non-zero gradients, for each subset of them.
 *
 * Legend: N, C, H, W = images, channels, input height, width; O = out
 * channels; R, S = window; P, Q = output height, width.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <cblas.h>

#include "executor/cuda/conv_body.h"
#include "executor/kernels.h"
#include "ir/graph.h"
#include "ir/util.h"

#ifdef HAVE_CUDA
#include <cuda_runtime.h>
#include "executor/cuda/cuk.h"
#endif

/* ----------------------------------------------------------------------------
 * One-op graphs, random data, comparisons */

static Graph *parse_graph(char *json)
{
    for (char *p = json; *p; p++)
        if (*p == '\'') *p = '"';
    cJSON *j = cJSON_Parse(json);
    if (!j) fail_msg("test JSON does not parse: %s", json);
    Err err = {{0}};
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) fail_msg("graph: %s\n%s", err.msg, json);
    return g;
}

static Graph *conv_graph(const int *k)
{
    /* N C H W O R S stride pad */
    long long N = k[0], C = k[1], H = k[2], W = k[3], O = k[4], R = k[5], S = k[6];
    long long P = (H + 2 * k[8] - R) / k[7] + 1, Q = (W + 2 * k[8] - S) / k[7] + 1;
    char buf[2048];
    snprintf(buf, sizeof buf,
             "{'name':'t','tensors':["
             "{'name':'x','shape':[%lld,%lld,%lld,%lld],'role':'param'},"
             "{'name':'w','shape':[%lld,%lld,%lld,%lld],'role':'param'},"
             "{'name':'y','shape':[%lld,%lld,%lld,%lld],'role':'activation'}],"
             "'ops':[{'name':'conv','kind':'conv2d','spec':'nchw,ocrs->nohw',"
             "'inputs':['x','w'],'output':'y','stride':%d,'pad':%d}]}",
             N, C, H, W, O, C, R, S, N, O, P, Q, k[7], k[8]);
    return parse_graph(buf);
}

static Graph *pool_graph(const int *k)
{
    /* N C H W window stride pad avg */
    long long N = k[0], C = k[1], H = k[2], W = k[3];
    long long P = (H + 2 * k[6] - k[4]) / k[5] + 1, Q = (W + 2 * k[6] - k[4]) / k[5] + 1;
    char buf[2048];
    snprintf(buf, sizeof buf,
             "{'name':'t','tensors':["
             "{'name':'x','shape':[%lld,%lld,%lld,%lld],'role':'param'},"
             "{'name':'y','shape':[%lld,%lld,%lld,%lld],'role':'activation'}],"
             "'ops':[{'name':'pool','kind':'pool2d','spec':'nchw->nchw','inputs':['x'],"
             "'output':'y','window':%d,'stride':%d,'pad':%d,'mode':'%s'}]}",
             N, C, H, W, N, C, P, Q, k[4], k[5], k[6], k[7] ? "avg" : "max");
    return parse_graph(buf);
}

/* route with spec "<in>-><out>" at letter sizes "b2s9e3c2", reduce 'e'. */
static Graph *route_graph(const char *in, const char *out, const char *sizes)
{
    int64_t size[IR_LETTERS] = {0};
    for (const char *p = sizes; *p;) {
        int l = *p++ - 'a';
        size[l] = strtoll(p, (char **)&p, 10);
    }
    char sx[128] = "", sy[128] = "";
    for (const char *p = in; *p; p++)
        snprintf(sx + strlen(sx), sizeof sx - strlen(sx), "%s%lld", p > in ? "," : "",
                 (long long)size[*p - 'a']);
    for (const char *p = out; *p; p++)
        snprintf(sy + strlen(sy), sizeof sy - strlen(sy), "%s%lld", p > out ? "," : "",
                 (long long)size[*p - 'a']);
    char buf[2048];
    snprintf(buf, sizeof buf,
             "{'name':'t','tensors':["
             "{'name':'x','shape':[%s],'role':'param'},"
             "{'name':'y','shape':[%s],'role':'activation'}],"
             "'ops':[{'name':'route','kind':'route','spec':'%s->%s','inputs':['x'],"
             "'output':'y','reduce':'e'}]}",
             sx, sy, in, out);
    return parse_graph(buf);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static double urand(void) /* [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-52 - 1;
}

/* n floats in [-1, 1); with `ties`, only -1, -0.5, 0 and 0.5, so that
 * windows and rows hold equal maxima. */
static float *frand(int64_t n, bool ties)
{
    float *x = xmalloc(sizeof *x * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) {
        double v = urand();
        x[i] = ties ? (float)(floor(v * 2) / 2) : (float)v;
    }
    return x;
}

static float *fcopy(const float *x, int64_t n)
{
    float *y = xmalloc(sizeof *y * (size_t)(n ? n : 1));
    memcpy(y, x, sizeof *y * (size_t)n);
    return y;
}

/* |got - want| <= tol * (1 + |want|) everywhere (tol 0: equal floats). */
static void check_near_(const float *got, const float *want, int64_t n, double tol,
                        const char *what, const char *file, int line)
{
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= tol * (1 + fabs(want[i]))))
            fail_msg("%s:%d: %s[%lld]: got %.9g, want %.9g (diff %.3g)", file, line, what,
                     (long long)i, got[i], want[i], d);
    }
}
#define check_near(got, want, n, tol, what) \
    check_near_(got, want, n, tol, what, __FILE__, __LINE__)

/* ----------------------------------------------------------------------------
 * A case: an op, its (possibly sharded) shape and random inputs */

typedef int (*Fwd)(const KernelShape *, const void *const *, float *, Err *);
typedef int (*Bwd)(const KernelShape *, const void *const *, const float *, const float *,
                   float *const *, Err *);

typedef struct {
    Graph *g;
    KernelShape ks;
    int nin;
    int64_t n[IR_MAX_INPUTS + 1];                  /* local elements; [nin]: the output */
    float *in[IR_MAX_INPUTS];
} Case;

/* Letter l local: about half of its global size, at the end (off > 0). */
static void shard(KernelShape *ks, char letter)
{
    int l = letter - 'a';
    int64_t t = ks->total[l], loc = (t + 1) / 2;
    ks->size[l] = loc;
    ks->off[l] = t - loc;
}

/* Takes g; `split` lists the letters to shard ("" for a whole op). */
static void case_init(Case *c, Graph *g, const char *split, bool ties)
{
    memset(c, 0, sizeof *c);
    c->g = g;
    kernel_shape_whole(&c->ks, &g->ops[0], g);
    for (const char *p = split; *p; p++) shard(&c->ks, *p);
    c->nin = g->ops[0].nin;
    for (int k = 0; k <= c->nin; k++) c->n[k] = kernel_operand_numel(&c->ks, k);
    for (int k = 0; k < c->nin; k++) c->in[k] = frand(c->n[k], ties);
}

static void case_free(Case *c)
{
    for (int k = 0; k < c->nin; k++) free(c->in[k]);
    graph_free(c->g);
}

/* fwd/bwd against kernel_forward/kernel_backward on c's inputs: the output
 * (written over garbage), then the gradients for every subset of `grads`
 * (operand bits), added into random values. */
static void compare(const Case *c, Fwd fwd, Bwd bwd, unsigned grads, double tol, const char *who)
{
    const KernelShape *ks = &c->ks;
    const void *const *in = (const void *const *)c->in;
    const int64_t no = c->n[c->nin];
    Err err = {{0}};
    float *want = xmalloc(sizeof *want * (size_t)no), *got = xmalloc(sizeof *got * (size_t)no);
    memset(got, 0x7f, sizeof *got * (size_t)no);
    if (kernel_forward(ks, in, want, &err)) fail_msg("CPU forward: %s", err.msg);
    if (fwd(ks, in, got, &err)) fail_msg("%s forward: %s", who, err.msg);
    char what[160];
    snprintf(what, sizeof what, "%s %s forward", who, ks->op->name);
    check_near(got, want, no, tol, what);

    float *dout = frand(no, false);
    for (unsigned sub = 0; sub <= grads; sub++) {
        if (sub & ~grads) continue;
        float *dw[IR_MAX_INPUTS] = {0}, *dg[IR_MAX_INPUTS] = {0};
        for (int k = 0; k < c->nin; k++)
            if (sub >> k & 1) {
                dw[k] = frand(c->n[k], false);
                dg[k] = fcopy(dw[k], c->n[k]);
            }
        if (kernel_backward(ks, in, want, dout, dw, &err))
            fail_msg("CPU backward: %s", err.msg);
        if (bwd(ks, in, got, dout, dg, &err)) fail_msg("%s backward: %s", who, err.msg);
        for (int k = 0; k < c->nin; k++) {
            if (!dw[k]) continue;
            snprintf(what, sizeof what, "%s %s backward (grads %#x) d%d", who, ks->op->name,
                     sub, k);
            check_near(dg[k], dw[k], c->n[k], tol, what);
            free(dw[k]), free(dg[k]);
        }
    }
    free(dout), free(want), free(got);
}

/* ----------------------------------------------------------------------------
 * Host emulation of conv.cu: the same plans and bodies, a loop for a launch */

static int64_t emu_cap = (int64_t)1 << 26;         /* conv.cu's CONV_COL_CAP */
static int64_t emu_gemms;                          /* GEMM calls, to see the chunks */

static int host_im2col(void *ctx, const float *x, float *col, const ConvGeom *d, int64_t nb)
{
    (void)ctx;
    int64_t n = nb * d->C * d->R * d->S * d->P * d->Q;
    for (int64_t i = 0; i < n; i++) col[i] = conv_im2col_at(x, d, i);
    return 0;
}

static int host_col2im(void *ctx, const float *col, float *dx, const ConvGeom *d, int64_t nb)
{
    (void)ctx;
    int64_t n = nb * d->C * d->H * d->W;
    for (int64_t i = 0; i < n; i++) dx[i] = conv_col2im_at(col, d, i, dx[i]);
    return 0;
}

/* cublasSgemmStridedBatched, column-major, through cblas. */
static int host_gemm(void *ctx, const ConvGemm *g, const float *a, const float *b, float *cm)
{
    (void)ctx;
    for (int i = 0; i < g->batch; i++) {
        cblas_sgemm(CblasColMajor, g->ta ? CblasTrans : CblasNoTrans,
                    g->tb ? CblasTrans : CblasNoTrans, g->m, g->n, g->k, 1.0f, a + i * g->sa,
                    g->lda, b + i * g->sb, g->ldb, g->beta, cm + i * g->sc, g->ldc);
        emu_gemms++;
    }
    return 0;
}

static const ConvOps host_ops = {host_im2col, host_col2im, host_gemm, NULL};

static float *emu_col(const ConvGeom *d, int64_t nb)
{
    return conv_pointwise(d) ? NULL : xmalloc(sizeof(float) * (size_t)(nb * d->C * d->R * d->S *
                                                                         d->P * d->Q));
}

static int emu_conv_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    ConvGeom d;
    if (conv_geom(ks, &d, err)) return -1;
    int64_t nb = conv_chunk(&d, emu_cap);
    float *col = emu_col(&d, nb);
    int rc = conv_run_fwd(&host_ops, &d, in[0], in[1], out, col, nb);
    free(col);
    return rc;
}

static int emu_conv_bwd(const KernelShape *ks, const void *const *in, const float *out,
                        const float *dout, float *const *din, Err *err)
{
    (void)out;
    ConvGeom d;
    if (conv_geom(ks, &d, err)) return -1;
    if (!din[0] && !din[1]) return 0;
    int64_t nb = conv_chunk(&d, emu_cap);
    float *col = emu_col(&d, nb);
    int rc = conv_run_bwd(&host_ops, &d, in[0], in[1], dout, din[0], din[1], col, nb);
    free(col);
    return rc;
}

static int emu_pool_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    PoolGeom d;
    if (pool_geom(ks, &d, err)) return -1;
    for (int64_t i = 0; i < d.planes * d.P * d.Q; i++) out[i] = pool_fwd_at(in[0], &d, i);
    return 0;
}

static int emu_pool_bwd(const KernelShape *ks, const void *const *in, const float *out,
                        const float *dout, float *const *din, Err *err)
{
    (void)out;
    PoolGeom d;
    if (pool_geom(ks, &d, err)) return -1;
    if (!din[0]) return 0;
    int64_t nout = d.planes * d.P * d.Q, *arg = NULL;
    if (!d.avg) {
        arg = xmalloc(sizeof *arg * (size_t)nout);
        for (int64_t i = 0; i < nout; i++) arg[i] = pool_argmax_at(in[0], &d, i);
    }
    for (int64_t i = 0; i < d.planes * d.H * d.W; i++)
        din[0][i] = pool_bwd_at(dout, arg, &d, i, din[0][i]);
    free(arg);
    return 0;
}

static int emu_route_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    RouteGeom g;
    if (route_geom(ks, &g, err)) return -1;
    assert_int_equal(g.out_numel, kernel_operand_numel(ks, 1));
    int32_t *best = xmalloc(sizeof *best * (size_t)g.nouter);
    memset(out, 0, sizeof *out * (size_t)g.out_numel);
    for (int64_t i = 0; i < g.nouter; i++) best[i] = route_best_at(in[0], &g, i);
    for (int64_t t = 0; t < g.nouter / g.nseq * g.ninner; t++) route_slots_at(best, out, &g, t);
    free(best);
    return 0;
}

static int emu_route_bwd(const KernelShape *ks, const void *const *in, const float *out,
                         const float *dout, float *const *din, Err *err)
{
    (void)ks, (void)in, (void)out, (void)dout, (void)din, (void)err;
    return 0;
}

/* ----------------------------------------------------------------------------
 * The device: cuk_forward / cuk_backward on copies of the host buffers */

#ifdef HAVE_CUDA
static CuCtx *gpu_ctx;
static int gpu_state;                              /* 0 not asked, 1 ready, -1 none */

static CuCtx *gpu(void)
{
    if (!gpu_state) {
        int n = 0;
        cudaError_t rc = cudaGetDeviceCount(&n);
        if (rc != cudaSuccess || n < 1) {
            printf("GPU tests skipped: no CUDA device (%s)\n",
                   rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
            gpu_state = -1;
            return NULL;
        }
        Err err = {{0}};
        if (!(gpu_ctx = cuk_new(&err))) fail_msg("cuk_new: %s", err.msg);
        gpu_state = 1;
    }
    return gpu_ctx;
}

#define CUDA_OK(call)                                                                    \
    do {                                                                                 \
        cudaError_t rc_ = (call);                                                        \
        if (rc_ != cudaSuccess) fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call,     \
                                         cudaGetErrorString(rc_));                       \
    } while (0)

/* A device copy of n floats at h (uninitialised when h is NULL). Synchronous
 * with the device, so the context's non-blocking stream sees it. */
static float *dev_of(const float *h, int64_t n)
{
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, sizeof(float) * (size_t)(n ? n : 1)));
    if (h) CUDA_OK(cudaMemcpy(d, h, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    CUDA_OK(cudaDeviceSynchronize());
    return d;
}

static void host_of(float *h, const float *d, int64_t n)
{
    CUDA_OK(cudaMemcpy(h, d, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost));
}

static int gpu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    const Op *op = ks->op;
    const float *dx[IR_MAX_INPUTS] = {0};
    for (int k = 0; k < op->nin; k++) dx[k] = dev_of(in[k], kernel_operand_numel(ks, k));
    int64_t no = kernel_operand_numel(ks, op->nin);
    float *dy = dev_of(out, no);                   /* the garbage, to see it overwritten */
    int rc = cuk_forward(gpu_ctx, ks, (const void *const *)dx, dy, err);
    if (!rc) rc = cuk_sync(gpu_ctx, err);
    if (!rc) host_of(out, dy, no);
    for (int k = 0; k < op->nin; k++) CUDA_OK(cudaFree((void *)dx[k]));
    CUDA_OK(cudaFree(dy));
    return rc;
}

static int gpu_bwd(const KernelShape *ks, const void *const *in, const float *out,
                   const float *dout, float *const *din, Err *err)
{
    const Op *op = ks->op;
    const float *dx[IR_MAX_INPUTS] = {0};
    float *dg[IR_MAX_INPUTS] = {0};
    int64_t no = kernel_operand_numel(ks, op->nin);
    for (int k = 0; k < op->nin; k++) {
        dx[k] = dev_of(in[k], kernel_operand_numel(ks, k));
        if (din[k]) dg[k] = dev_of(din[k], kernel_operand_numel(ks, k));
    }
    float *dy = dev_of(out, no), *ddy = dev_of(dout, no);
    int rc = cuk_backward(gpu_ctx, ks, (const void *const *)dx, dy, ddy, dg, err);
    if (!rc) rc = cuk_sync(gpu_ctx, err);
    for (int k = 0; k < op->nin; k++) {
        if (!rc && din[k]) host_of(din[k], dg[k], kernel_operand_numel(ks, k));
        CUDA_OK(cudaFree((void *)dx[k]));
        if (dg[k]) CUDA_OK(cudaFree(dg[k]));
    }
    CUDA_OK(cudaFree(dy));
    CUDA_OK(cudaFree(ddy));
    return rc;
}

static int gpu_teardown(void **state)
{
    (void)state;
    cuk_free(gpu_ctx);
    gpu_ctx = NULL;
    return 0;
}
#define GPU_OR_SKIP()                                                                    \
    do {                                                                                 \
        if (!gpu()) skip();                                                              \
    } while (0)
#else
static bool gpu_said;
#define GPU_OR_SKIP()                                                                    \
    do {                                                                                 \
        if (!gpu_said) printf("GPU tests skipped: built without CUDA\n");               \
        gpu_said = true;                                                                 \
        skip();                                                                          \
    } while (0)
#endif

/* ----------------------------------------------------------------------------
 * conv2d */

static const int conv_cfg[][9] = {
    /* N C H W O R S stride pad */
    {2, 3, 7, 5, 4, 3, 3, 1, 1},
    {2, 3, 9, 7, 5, 3, 2, 2, 1},
    {3, 5, 4, 6, 7, 1, 1, 1, 0},                   /* pointwise: no im2col */
    {2, 3, 7, 7, 4, 1, 1, 2, 0},                   /* 1x1 of stride 2 */
    {1, 2, 6, 7, 3, 5, 5, 3, 2},
    {1, 1, 1, 1, 1, 1, 1, 1, 0},
    {3, 7, 33, 3, 1, 3, 3, 1, 1},
    {5, 3, 7, 5, 2, 3, 3, 2, 1},
};
/* the conv's n, c and o may be split (c: partial sums); h, w, r, s never */
static const char *const conv_splits[] = {"", "n", "c", "o", "nco"};

enum { GRAD_X = 1, GRAD_W = 2 };

static void conv_cases(bool on_gpu)
{
    for (size_t e = 0; e < sizeof conv_cfg / sizeof *conv_cfg; e++)
        for (size_t s = 0; s < sizeof conv_splits / sizeof *conv_splits; s++) {
            Case c;
            case_init(&c, conv_graph(conv_cfg[e]), conv_splits[s], false);
#ifdef HAVE_CUDA
            if (on_gpu) {
                compare(&c, gpu_fwd, gpu_bwd, GRAD_X | GRAD_W, 2e-5, "GPU");
                case_free(&c);
                continue;
            }
#endif
            (void)on_gpu;
            emu_cap = (int64_t)1 << 26;
            compare(&c, emu_conv_fwd, emu_conv_bwd, GRAD_X | GRAD_W, 1e-5, "host");
            /* chunks of one image, and of two (the last one short) */
            ConvGeom d;
            Err err = {{0}};
            assert_int_equal(conv_geom(&c.ks, &d, &err), 0);
            int64_t per = d.C * d.R * d.S * d.P * d.Q;
            emu_cap = 1;
            emu_gemms = 0;
            compare(&c, emu_conv_fwd, emu_conv_bwd, GRAD_X | GRAD_W, 1e-5, "host, chunked");
            if (!conv_pointwise(&d)) assert_true(emu_gemms >= 4 * d.N);
            emu_cap = 2 * per + 1;
            compare(&c, emu_conv_fwd, emu_conv_bwd, GRAD_X | GRAD_W, 1e-5, "host, chunks of 2");
            emu_cap = (int64_t)1 << 26;
            case_free(&c);
        }
}

static void test_conv_host(void **state)
{
    (void)state;
    conv_cases(false);
}

/* <im2col(x), y> == <x, col2im(y)>: each takes exactly what the other gives. */
static void test_conv_adjoint(void **state)
{
    (void)state;
    for (size_t e = 0; e < sizeof conv_cfg / sizeof *conv_cfg; e++) {
        const int *k = conv_cfg[e];
        ConvGeom d = {k[0], k[1], k[2], k[3], k[4], k[5], k[6],
                      (k[2] + 2 * k[8] - k[5]) / k[7] + 1, (k[3] + 2 * k[8] - k[6]) / k[7] + 1,
                      k[7], k[8]};
        int64_t nx = d.N * d.C * d.H * d.W, ncol = d.N * d.C * d.R * d.S * d.P * d.Q;
        float *x = frand(nx, false), *y = frand(ncol, false), *col = frand(ncol, false);
        float *back = xcalloc((size_t)nx, sizeof *back);
        host_im2col(NULL, x, col, &d, d.N);
        host_col2im(NULL, y, back, &d, d.N);
        double a = 0, b = 0, mag = 0;
        for (int64_t i = 0; i < ncol; i++) a += (double)col[i] * y[i], mag += fabs(col[i] * y[i]);
        for (int64_t i = 0; i < nx; i++) b += (double)x[i] * back[i];
        if (!(fabs(a - b) <= 1e-6 * (1 + mag)))
            fail_msg("conv case %zu: <im2col x, y> = %.9g but <x, col2im y> = %.9g", e, a, b);
        free(x), free(y), free(col), free(back);
    }
}

static void test_conv_gpu(void **state)
{
    (void)state;
    GPU_OR_SKIP();
    conv_cases(true);
}

/* ----------------------------------------------------------------------------
 * pool2d */

static const int pool_cfg[][8] = {
    /* N C H W window stride pad avg */
    {2, 3, 7, 5, 2, 2, 0, 0},
    {2, 3, 9, 7, 3, 2, 1, 0},
    {2, 3, 7, 5, 2, 2, 0, 1},
    {2, 3, 9, 7, 3, 2, 1, 1},
    {1, 2, 5, 5, 3, 1, 1, 0},                      /* overlapping windows */
    {1, 2, 5, 5, 3, 1, 1, 1},
    {1, 1, 1, 1, 1, 1, 0, 0},
    {1, 1, 1, 1, 1, 1, 0, 1},
    {3, 2, 33, 7, 3, 3, 1, 0},
    {3, 7, 8, 33, 2, 1, 1, 1},
    {2, 1, 6, 6, 4, 1, 2, 0},                      /* pad of half the window */
};
static const char *const pool_splits[] = {"", "n", "c", "nc"};

static void pool_cases(bool on_gpu)
{
    for (size_t e = 0; e < sizeof pool_cfg / sizeof *pool_cfg; e++)
        for (size_t s = 0; s < sizeof pool_splits / sizeof *pool_splits; s++)
            for (int ties = 0; ties < 2; ties++) {
                Case c;
                case_init(&c, pool_graph(pool_cfg[e]), pool_splits[s], ties);
#ifdef HAVE_CUDA
                if (on_gpu) {
                    compare(&c, gpu_fwd, gpu_bwd, GRAD_X, 1e-6, "GPU");
                    case_free(&c);
                    continue;
                }
#endif
                (void)on_gpu;
                compare(&c, emu_pool_fwd, emu_pool_bwd, GRAD_X, 0, "host");
                case_free(&c);
            }
}

static void test_pool_host(void **state)
{
    (void)state;
    pool_cases(false);
}

/* A constant image: every window ties everywhere, and the first element of
 * each (clipped) window takes the whole gradient. */
static void test_pool_ties(void **state)
{
    (void)state;
    static const int k[8] = {1, 1, 5, 5, 3, 1, 1, 0};
    Case c;
    case_init(&c, pool_graph(k), "", false);
    for (int64_t i = 0; i < c.n[0]; i++) c.in[0][i] = 2.0f;
    float dout[25], dx[25] = {0}, *din[1] = {dx}, out[25];
    for (int i = 0; i < 25; i++) dout[i] = 1.0f;
    Err err = {{0}};
    const void *const *in = (const void *const *)c.in;
    assert_int_equal(emu_pool_fwd(&c.ks, in, out, &err), 0);
    assert_int_equal(emu_pool_bwd(&c.ks, in, out, dout, din, &err), 0);
    /* window (p, q) covers rows p-1..p+1 clipped: its first is (max(p-1,0), max(q-1,0)) */
    float want[25] = {0};
    for (int p = 0; p < 5; p++)
        for (int q = 0; q < 5; q++) want[(p ? p - 1 : 0) * 5 + (q ? q - 1 : 0)] += 1.0f;
    check_near(dx, want, 25, 0, "pool2d ties");
    compare(&c, emu_pool_fwd, emu_pool_bwd, GRAD_X, 0, "host");
    case_free(&c);
}

static void test_pool_gpu(void **state)
{
    (void)state;
    GPU_OR_SKIP();
    pool_cases(true);
}

/* ----------------------------------------------------------------------------
 * route */

static const struct {
    const char *in, *out, *sizes, *split;
    bool ties;
} route_cfg[] = {
    {"bse", "bsec", "b2s9e3c2", "", false},
    {"bse", "bsec", "b3s33e7c5", "", true},
    {"bse", "bsec", "b1s1e1c1", "", false},
    {"bse", "bsec", "b4s7e3c1", "b", true},
    {"bse", "bsce", "b2s9e3c3", "", true},       /* capacity letter not last */
    {"bes", "bsec", "b3s7e5c2", "", true},       /* expert letter not last */
    {"sbe", "sbec", "b3s7e5c2", "s", false},     /* groups along b; s may split */
};

/* Every token of the first group prefers expert 1: slots 0..cap-1, then dropped. */
static void route_crowd(Case *c)
{
    RouteGeom g;
    Err err = {{0}};
    assert_int_equal(route_geom(&c->ks, &g, &err), 0);
    for (int64_t t = 0; t < g.nseq; t++)
        for (int64_t j = 0; j < g.ninner; j++)
            c->in[0][route_offset(t, g.nod, g.osz, g.ox) + route_offset(j, g.nid, g.isz, g.ix)] =
                j == 1 % g.ninner ? 1.0f : 0.5f;
}

static void route_cases(bool on_gpu)
{
    for (size_t e = 0; e < sizeof route_cfg / sizeof *route_cfg; e++)
        for (int crowd = 0; crowd < 2; crowd++) {
            Case c;
            case_init(&c, route_graph(route_cfg[e].in, route_cfg[e].out, route_cfg[e].sizes),
                      route_cfg[e].split, route_cfg[e].ties);
            if (crowd) route_crowd(&c);
#ifdef HAVE_CUDA
            if (on_gpu) {
                compare(&c, gpu_fwd, gpu_bwd, GRAD_X, 0, "GPU");
                case_free(&c);
                continue;
            }
#endif
            (void)on_gpu;
            compare(&c, emu_route_fwd, emu_route_bwd, GRAD_X, 0, "host");
            case_free(&c);
        }
}

static void test_route_host(void **state)
{
    (void)state;
    route_cases(false);
}

/* The first group crowded onto one expert: exactly cap slots taken, in order. */
static void test_route_drops(void **state)
{
    (void)state;
    Case c;
    case_init(&c, route_graph("bse", "bsec", "b2s9e3c2"), "", false);
    route_crowd(&c);
    float y[2 * 9 * 3 * 2];
    Err err = {{0}};
    assert_int_equal(emu_route_fwd(&c.ks, (const void *const *)c.in, y, &err), 0);
    for (int s = 0; s < 9; s++)
        for (int e = 0; e < 3; e++)
            for (int k = 0; k < 2; k++)
                assert_true(y[(s * 3 + e) * 2 + k] == (e == 1 && s == k));
    case_free(&c);
}

/* A split sequence, expert or capacity letter is refused, as by the CPU. */
static void route_rejects(bool on_gpu)
{
    static const char *const splits[] = {"s", "e", "c"};
    for (size_t i = 0; i < sizeof splits / sizeof *splits; i++) {
        Case c;
        case_init(&c, route_graph("bse", "bsec", "b2s9e3c2"), splits[i], false);
        Err want = {{0}}, got = {{0}};
        float y[2 * 9 * 3 * 2];
        const void *const *in = (const void *const *)c.in;
        assert_int_equal(kernel_forward(&c.ks, in, y, &want), -1);
#ifdef HAVE_CUDA
        if (on_gpu) {
            /* refused before any device buffer is touched */
            const void *none[1] = {NULL};
            assert_int_equal(cuk_forward(gpu_ctx, &c.ks, none, NULL, &got), -1);
        } else
#endif
            assert_int_equal(emu_route_fwd(&c.ks, in, y, &got), -1);
        (void)on_gpu;
        assert_string_equal(got.msg, want.msg);
        case_free(&c);
    }
}

static void test_route_rejects(void **state)
{
    (void)state;
    route_rejects(false);
}

static void test_route_gpu(void **state)
{
    (void)state;
    GPU_OR_SKIP();
    route_cases(true);
    route_rejects(true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_host),
        cmocka_unit_test(test_conv_adjoint),
        cmocka_unit_test(test_pool_host),
        cmocka_unit_test(test_pool_ties),
        cmocka_unit_test(test_route_host),
        cmocka_unit_test(test_route_drops),
        cmocka_unit_test(test_route_rejects),
        cmocka_unit_test(test_conv_gpu),
        cmocka_unit_test(test_pool_gpu),
        cmocka_unit_test(test_route_gpu),
    };
#ifdef HAVE_CUDA
    return cmocka_run_group_tests(tests, NULL, gpu_teardown);
#else
    return cmocka_run_group_tests(tests, NULL, NULL);
#endif
}
