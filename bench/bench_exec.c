/*
 * bench_exec.c — the executor on one CPU rank.
 *
 * 1. The compute rate of the matmul kernels (einsum contractions through
 *    OpenBLAS) as a fraction of OpenBLAS's own SGEMM on the same M, N, K:
 *    what the generality of the einsum front costs.
 * 2. The step time of a small GPT on one rank, and its achieved FLOP/s.
 * Figures, not pass/fail; medians of a few repetitions.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "executor/blas.h"
#include "executor/kernels.h"
#include "executor/runtime.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/zoo.h"
#include "ir/util.h"

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define REPS 7

/* One matmul op of the given spec and sizes (b,s,h,f or as named). */
static int bench_matmul(const char *label, const char *spec, const char *a_letters,
                        const int64_t *a_shape, int an, const char *b_letters,
                        const int64_t *b_shape, int bn, const int64_t *o_shape, int on,
                        int64_t M, int64_t N, int64_t K)
{
    char js[2048];
    char as[128] = "", bs[128] = "", os[128] = "";
    for (int i = 0; i < an; i++) snprintf(as + strlen(as), 32, "%s%lld", i ? "," : "", (long long)a_shape[i]);
    for (int i = 0; i < bn; i++) snprintf(bs + strlen(bs), 32, "%s%lld", i ? "," : "", (long long)b_shape[i]);
    for (int i = 0; i < on; i++) snprintf(os + strlen(os), 32, "%s%lld", i ? "," : "", (long long)o_shape[i]);
    snprintf(js, sizeof js,
             "{\"name\":\"m\",\"tensors\":[{\"name\":\"a\",\"shape\":[%s],\"role\":\"input\"},"
             "{\"name\":\"w\",\"shape\":[%s],\"role\":\"param\"},"
             "{\"name\":\"o\",\"shape\":[%s],\"role\":\"activation\"}],"
             "\"ops\":[{\"name\":\"mm\",\"kind\":\"matmul\",\"spec\":\"%s\",\"inputs\":[\"a\",\"w\"],"
             "\"output\":\"o\"}]}", as, bs, os, spec);
    (void)a_letters;
    (void)b_letters;
    Err err = {0};
    cJSON *j = cJSON_Parse(js);
    Graph *g = graph_from_json(j, &err);
    cJSON_Delete(j);
    if (!g) {
        fprintf(stderr, "bench_exec: %s\n", err.msg);
        return 1;
    }
    KernelShape ks;
    kernel_shape_whole(&ks, &g->ops[0], g);
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N),
          *C = malloc(sizeof(float) * M * N);
    for (int64_t i = 0; i < M * K; i++) A[i] = (float)((i * 7) % 13) / 13.0f;
    for (int64_t i = 0; i < K * N; i++) B[i] = (float)((i * 5) % 11) / 11.0f;
    const void *in[2] = { A, B };
    /* the kernel and OpenBLAS on the equivalent plain GEMM, alternated so
     * that both see the same machine */
    double a[REPS], b[REPS];
    int rc = kernel_forward(&ks, in, C, &err);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                (int)K, B, (int)N, 0.0f, C, (int)N);
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        rc |= kernel_forward(&ks, in, C, &err);
        double t1 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                    (int)K, B, (int)N, 0.0f, C, (int)N);
        a[r] = t1 - t0;
        b[r] = now_s() - t1;
    }
    qsort(a, REPS, sizeof a[0], cmp);
    qsort(b, REPS, sizeof b[0], cmp);
    double tk = a[REPS / 2], tb = b[REPS / 2];
    double fl = 2.0 * M * N * K;
    printf("  %-26s %-16s M %5lld N %5lld K %5lld  kernel %7.1f GFLOP/s  sgemm %7.1f GFLOP/s  "
           "ratio %.2f\n", label, spec, (long long)M, (long long)N, (long long)K, fl / tk / 1e9,
           fl / tb / 1e9, tb / tk);
    if (rc) fprintf(stderr, "bench_exec: %s\n", err.msg);
    free(A);
    free(B);
    free(C);
    graph_free(g);
    return rc;
}

static int bench_step(void)
{
    const char *k[] = { "layers", "hidden", "heads", "seq", "vocab", "batch" };
    const char *v[] = { "4", "256", "4", "128", "4096", "8" };
    Err err = {0};
    Graph *g = zoo_build("gpt", 6, k, v, &err);
    cJSON *j = cJSON_Parse("{\"mesh\":{\"dp\":1}}");
    Strategy *s = g ? strategy_from_json(j, g, NULL, &err) : NULL;
    cJSON_Delete(j);
    Plan *p = s ? ir_lower(g, NULL, s, &err) : NULL;
    Comm one = { .ops = NULL, .rank = 0, .world = 1 };   /* one rank: no group, no message */
    RunConfig cfg = { .seed = 1 };
    rt_default_hyper(&cfg.hyper);
    Runtime *rt = p ? rt_new(g, s, p, &one, &cfg, &err) : NULL;
    int rc = rt ? 0 : 1;
    double t[REPS + 1];
    StepStat st = {0};
    for (int i = 0; i <= REPS && !rc; i++) {
        double a = now_s();
        rc = rt_step(rt, i, &st, &err);
        t[i] = now_s() - a;
    }
    if (!rc) {
        qsort(t + 1, REPS, sizeof t[0], cmp);
        GraphStats gs;
        graph_stats(g, &gs, &err);
        printf("  small GPT (4 layers, h 256, s 128, batch 8, vocab 4096, %.2f M params): "
               "step %.1f ms, %.1f GFLOP/s (compute %.1f ms, median of %d)\n", gs.params / 1e6,
               t[1 + REPS / 2] * 1e3, gs.train_flops / t[1 + REPS / 2] / 1e9, st.compute_s * 1e3,
               REPS);
        graph_stats_free(&gs);
    } else {
        fprintf(stderr, "bench_exec: %s\n", err.msg);
    }
    rt_free(rt);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
    return rc;
}

int main(int argc, char **argv)
{
    (void)argc;
    blas_fix_coretype(argv);
    char blas[256];
    printf("executor on one CPU rank (%s):\n", blas_describe(blas, sizeof blas));
    printf(" matmul kernels against OpenBLAS SGEMM on the same shapes:\n");
    int rc = 0;
    int64_t B = 8, S = 128, H = 256, F = 1024;
    rc |= bench_matmul("mlp.fc1 (bsh,hf->bsf)", "bsh,hf->bsf", "bsh", (int64_t[]){ B, S, H }, 3,
                       "hf", (int64_t[]){ H, F }, 2, (int64_t[]){ B, S, F }, 3, B * S, F, H);
    rc |= bench_matmul("mlp.fc2 (bsf,fh->bsh)", "bsf,fh->bsh", "bsf", (int64_t[]){ B, S, F }, 3,
                       "fh", (int64_t[]){ F, H }, 2, (int64_t[]){ B, S, H }, 3, B * S, H, F);
    rc |= bench_matmul("square 1024", "ik,kj->ij", "ik", (int64_t[]){ 1024, 1024 }, 2, "kj",
                       (int64_t[]){ 1024, 1024 }, 2, (int64_t[]){ 1024, 1024 }, 2, 1024, 1024, 1024);
    rc |= bench_matmul("logits (bsh,vh->bsv)", "bsh,vh->bsv", "bsh", (int64_t[]){ B, S, H }, 3, "vh",
                       (int64_t[]){ 4096, H }, 2, (int64_t[]){ B, S, 4096 }, 3, B * S, 4096, H);
    rc |= bench_step();
    return rc;
}
