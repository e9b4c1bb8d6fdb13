/*
 * test_comm_nccl.c — the NCCL backend of comm.h on this machine's GPU.
 *
 * Runs as a plain program (MPI_Init without mpirun is a world of one), so the
 * group is this one rank and every collective is a round trip through NCCL
 * that must return the data unchanged (a sum over one member is the member).
 * Started under mpirun with one GPU per rank, the same checks hold their
 * closed forms over the whole world. Without a GPU, or in a build without
 * NCCL, the GPU tests are skipped with a message and comm_nccl_open (the
 * backend itself, gpu.h) must say why it cannot work.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "executor/gpu.h"

#if defined(HAVE_NCCL) && defined(HAVE_CUDA) && defined(HAVE_MPI)
#define BUILT 1
#include <cuda_runtime.h>
#include <mpi.h>
#else
#define BUILT 0
#endif

static char no_gpu[512];   /* why the GPU tests are skipped; empty when they run */

/* comm_nccl_open names what is missing: NCCL in the build, or a device. */
static void test_unavailable_says_why(void **state)
{
    (void)state;
    if (!no_gpu[0]) skip();
    Err err = {{0}};
    Comm *c = comm_nccl_open(&err);
    assert_null(c);
#if defined(HAVE_NCCL) && defined(HAVE_CUDA)
    if (!BUILT)       /* NCCL and CUDA, but no MPI to bootstrap it */
        assert_non_null(strstr(err.msg, "strata was built without MPI"));
#else
    if (!BUILT)
        assert_string_equal(err.msg, "strata was built without NCCL (no CUDA toolkit found at build time)");
#endif
    else
        assert_non_null(strstr(err.msg, "no CUDA device"));
}

#if BUILT

static int rank, world = 1;

static float fval(int r, int64_t k) { return (float)((r + 1) * 1000 + k % 997); }
static int hint(int r, int64_t k) { return r % 4 + (int)(k % 8); }

/* Bits of a small non-negative integer in f16 / bf16 (exact below 2048 / 256). */
static uint16_t f16_int(int v)
{
    if (v == 0) return 0;
    int e = 31 - __builtin_clz((unsigned)v);
    return (uint16_t)(((e + 15) << 10) | ((v << (10 - e)) & 0x3ff));
}
static uint16_t bf16_int(int v)
{
    float f = (float)v;
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)(b >> 16);
}

#define CUDA_OK(call)                                                            \
    do {                                                                         \
        cudaError_t rc_ = (call);                                                \
        if (rc_ != cudaSuccess) fail_msg("%s: %s", #call, cudaGetErrorString(rc_)); \
    } while (0)
#define COMM_OK(call)                                                            \
    do {                                                                         \
        if ((call) != 0) fail_msg("%s: %s", #call, err.msg);                     \
    } while (0)

static void *dev(size_t bytes)
{
    void *p = NULL;
    CUDA_OK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}
static void up(void *d, const void *h, size_t bytes) { CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice)); }
static void down(void *h, const void *d, size_t bytes) { CUDA_OK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost)); }

static void test_collectives(void **state)
{
    (void)state;
    if (no_gpu[0]) {
        print_message("no GPU: NCCL tests skipped (%s)\n", no_gpu);
        skip();
    }
    Err err = {{0}};
    Comm *c = comm_nccl_open(&err);
    if (!c) fail_msg("comm_nccl_open: %s", err.msg);
    assert_string_equal(c->ops->name, "nccl");
    assert_int_equal(c->rank, rank);
    assert_int_equal(c->world, world);

    int n = world, me = rank, ranks[64];
    assert_true(n <= 64);
    for (int r = 0; r < n; r++) ranks[r] = r;
    CommGroup *g = c->ops->group_new(c, ranks, n, me, &err);
    if (!g) fail_msg("group_new: %s", err.msg);

    enum { COUNT = 100003 };
    size_t fb = COUNT * sizeof(float);
    float *h = malloc(fb * (size_t)n), *h2 = malloc(fb * (size_t)n);
    uint16_t *hh = malloc(COUNT * 2);
    assert_non_null(h);
    assert_non_null(h2);
    assert_non_null(hh);
    float *d = dev(fb * (size_t)n), *d2 = dev(fb * (size_t)n);

    /* allreduce f32: sum and max */
    for (int k = 0; k < COUNT; k++) h[k] = fval(me, k);
    up(d, h, fb);
    COMM_OK(c->ops->allreduce(g, d, COUNT, CT_F32, RED_SUM, &err));
    down(h, d, fb);
    for (int k = 0; k < COUNT; k++) {
        double want = 0;
        for (int r = 0; r < n; r++) want += fval(r, k);
        if (h[k] != want) fail_msg("allreduce sum [%d] = %g, want %g", k, h[k], want);
    }
    for (int k = 0; k < COUNT; k++) h[k] = fval(me, k);
    up(d, h, fb);
    COMM_OK(c->ops->allreduce(g, d, COUNT, CT_F32, RED_MAX, &err));
    down(h, d, fb);
    for (int k = 0; k < COUNT; k++)
        if (h[k] != fval(n - 1, k)) fail_msg("allreduce max [%d] = %g, want %g", k, h[k], fval(n - 1, k));

    /* allreduce f16 and bf16 on small integers: exact */
    for (int t = 0; t < 2; t++) {
        for (int k = 0; k < COUNT; k++) hh[k] = t ? bf16_int(hint(me, k)) : f16_int(hint(me, k));
        up(d, hh, COUNT * 2);
        COMM_OK(c->ops->allreduce(g, d, COUNT, t ? CT_BF16 : CT_F16, RED_SUM, &err));
        down(hh, d, COUNT * 2);
        for (int k = 0; k < COUNT; k++) {
            int want = 0;
            for (int r = 0; r < n; r++) want += hint(r, k);
            uint16_t wb = t ? bf16_int(want) : f16_int(want);
            if (hh[k] != wb) fail_msg("%s allreduce [%d] = %#x, want %#x", t ? "bf16" : "f16", k, hh[k], wb);
        }
    }

    /* allgather */
    for (int k = 0; k < COUNT; k++) h[k] = fval(me, k);
    up(d, h, fb);
    COMM_OK(c->ops->allgather(g, d, d2, COUNT, CT_F32, &err));
    down(h2, d2, fb * (size_t)n);
    for (int j = 0; j < n; j++)
        for (int k = 0; k < COUNT; k++)
            if (h2[(size_t)j * COUNT + k] != fval(j, k)) fail_msg("allgather block %d [%d]", j, k);

    /* reduce_scatter, then in place (send == recv) */
    for (int in_place = 0; in_place < 2; in_place++) {
        for (size_t k = 0; k < (size_t)COUNT * n; k++) h2[k] = fval(me, (int64_t)k);
        up(d2, h2, fb * (size_t)n);
        COMM_OK(c->ops->reduce_scatter(g, d2, in_place ? (void *)d2 : (void *)d, COUNT, CT_F32, &err));
        down(h, in_place ? d2 : d, fb);
        for (int k = 0; k < COUNT; k++) {
            double want = 0;
            for (int r = 0; r < n; r++) want += fval(r, (int64_t)me * COUNT + k);
            if (h[k] != want) fail_msg("reduce_scatter%s [%d] = %g, want %g", in_place ? " in place" : "",
                                       k, h[k], want);
        }
    }

    /* all_to_all: block j of member r is r * 100 + j */
    for (int j = 0; j < n; j++)
        for (int k = 0; k < COUNT; k++) h2[(size_t)j * COUNT + k] = (float)(me * 100 + j) + (float)(k % 7);
    up(d2, h2, fb * (size_t)n);
    COMM_OK(c->ops->all_to_all(g, d2, d, COUNT, CT_F32, &err));
    down(h2, d, fb * (size_t)n);
    for (int j = 0; j < n; j++)
        for (int k = 0; k < COUNT; k++)
            if (h2[(size_t)j * COUNT + k] != (float)(j * 100 + me) + (float)(k % 7))
                fail_msg("all_to_all block %d [%d]", j, k);

    /* broadcast from the last member */
    for (int k = 0; k < COUNT; k++) h[k] = me == n - 1 ? fval(me, k) : -1;
    up(d, h, fb);
    COMM_OK(c->ops->broadcast(g, d, COUNT, CT_F32, n - 1, &err));
    down(h, d, fb);
    for (int k = 0; k < COUNT; k++)
        if (h[k] != fval(n - 1, k)) fail_msg("broadcast [%d] = %g", k, h[k]);

    /* send/recv around the ring (to oneself with one rank); even members send first */
    int next = (me + 1) % n, prev = (me + n - 1) % n;
    for (int k = 0; k < COUNT; k++) h[k] = fval(me, k);
    up(d, h, fb);
    for (int phase = 0; phase < 2; phase++) {
        if ((phase == 0) == (me % 2 == 0)) COMM_OK(c->ops->send(g, d, COUNT, CT_F32, next, 3, &err));
        else COMM_OK(c->ops->recv(g, d2, COUNT, CT_F32, prev, 3, &err));
    }
    down(h, d2, fb);
    for (int k = 0; k < COUNT; k++)
        if (h[k] != fval(prev, k)) fail_msg("recv from %d [%d] = %g", prev, k, h[k]);

    /* isend to next, then recv from prev, then wait: crossed sends */
    CommReq *q = NULL;
    for (int k = 0; k < COUNT; k++) h[k] = fval(me, k) + 1;
    up(d, h, fb);
    COMM_OK(c->ops->isend(g, d, COUNT, CT_F32, next, 4, &q, &err));
    COMM_OK(c->ops->recv(g, d2, COUNT, CT_F32, prev, 4, &err));
    COMM_OK(c->ops->wait(q, &err));
    down(h, d2, fb);
    for (int k = 0; k < COUNT; k++)
        if (h[k] != fval(prev, k) + 1) fail_msg("isend/recv from %d [%d] = %g", prev, k, h[k]);

    /* wrong arguments are named */
    assert_int_equal(c->ops->allreduce(g, d, 4, CT_BYTE, RED_SUM, &err), -1);
    assert_non_null(strstr(err.msg, "cannot reduce byte"));
    assert_int_equal(c->ops->broadcast(g, d, 4, CT_F32, n, &err), -1);
    assert_non_null(strstr(err.msg, "root"));

    cudaFree(d);
    cudaFree(d2);
    free(h);
    free(h2);
    free(hh);
    c->ops->group_free(g);
    comm_free(c);
}

#else

static void test_collectives(void **state)
{
    (void)state;
    print_message("no GPU: NCCL tests skipped (%s)\n", no_gpu);
    skip();
}

#endif

int main(void)
{
#if BUILT
    int ndev = 0;
    cudaError_t rc = cudaGetDeviceCount(&ndev);
    if (rc != cudaSuccess)
        snprintf(no_gpu, sizeof no_gpu, "cudaGetDeviceCount: %s", cudaGetErrorString(rc));
    else if (ndev == 0)
        snprintf(no_gpu, sizeof no_gpu, "cudaGetDeviceCount found no device");
    /* MPI only where NCCL will run: it bootstraps the groups */
    if (!no_gpu[0]) {
        int level = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &level) != MPI_SUCCESS) {
            fprintf(stderr, "test_comm_nccl: MPI_Init_thread failed\n");
            return 1;
        }
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &world);
        if (world > ndev) {
            if (rank == 0)
                fprintf(stderr, "test_comm_nccl: %d ranks but %d GPUs: NCCL needs one GPU per rank\n",
                        world, ndev);
            MPI_Finalize();
            return 1;
        }
        if (cudaSetDevice(rank % ndev) != cudaSuccess) {
            fprintf(stderr, "test_comm_nccl: cudaSetDevice(%d) failed\n", rank % ndev);
            MPI_Finalize();
            return 1;
        }
    }
#else
    snprintf(no_gpu, sizeof no_gpu, "strata was built without NCCL");
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unavailable_says_why),
        cmocka_unit_test(test_collectives),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
#if BUILT
    if (!no_gpu[0]) MPI_Finalize();
#endif
    return failed;
}
