/*
 * mpi_gpt2.c — how fast the CPU executor trains GPT-2 small (124 M params,
 * batch 4, sequence 64, fp32, Adam), against the machine's own SGEMM peak
 * measured in the same run.
 *
 * make bench starts it on 2 ranks. First rank 0 alone, on all of the
 * machine's cores (rank 1 sleeps meanwhile, polling a barrier every
 * millisecond rather than spinning): training steps, each steady one
 * followed by a 2048^3 SGEMM, so that the peak is sampled under the same
 * load from the rest of the machine as the steps are (it is shared and
 * noisy). The ratio is the median step's FLOP/s over the median SGEMM's;
 * the best SGEMM is printed too. Then both ranks, data parallel, each on
 * its share of the cores, against the same peak.
 *
 * Printed: training FLOPs (from the graph: forward, backward and
 * recompute-free), the first step and the median of the steady steps, the
 * achieved FLOP/s as a fraction of the peak, the page faults of a steady
 * step (counted by the kernel, getrusage) with the time they cost (a fault's
 * cost measured here, touching fresh pages), and the blocks the buffer pool
 * asked of the system in a steady step. Figures, not pass/fail.
 */
#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "executor/blas.h"
#include "executor/comm.h"
#include "executor/runtime.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/zoo.h"

#define STEADY 5

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static long faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt + u.ru_majflt;
}

/* One 2048^3 SGEMM, in FLOP/s. */
#define PEAK_N 2048
typedef struct {
    float *a, *b, *c;
} Peak;

static double sgemm_rate(const Peak *p)
{
    const int n = PEAK_N;
    double t = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, p->a, n, p->b, n, 0, p->c, n);
    return 2.0 * n * n * n / (now_s() - t);
}

/* Seconds one page fault costs: fresh 4 KiB pages touched one by one. */
static double fault_cost(void)
{
    const size_t bytes = (size_t)64 << 20;
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
    madvise(p, bytes, MADV_NOHUGEPAGE);
    long f0 = faults();
    double t = now_s();
    for (size_t o = 0; o < bytes; o += 4096) p[o] = 1;
    t = now_s() - t;
    long nf = faults() - f0;
    munmap(p, bytes);
    return nf > 0 ? t / (double)nf : 0;
}

typedef struct {
    double first, steady;          /* seconds: step 0, median of the steady steps */
    double peak_med, peak_best;    /* SGEMM FLOP/s after each steady step (peak given) */
    double faults;                 /* page faults per steady step (the slowest rank's) */
    int64_t allocs;                /* pool blocks asked of the system in the last step */
} Figures;

/* Steps 0 .. STEADY on comm c; the slowest rank's times; with pk, an SGEMM
 * after every steady step. */
static int train(const Graph *g, const Strategy *s, const Plan *p, Comm *c, MPI_Comm mc,
                 const Peak *pk, Figures *f, Err *err)
{
    RunConfig cfg = { .seed = 1 };
    rt_default_hyper(&cfg.hyper);
    Runtime *rt = rt_new(g, s, p, c, &cfg, err);
    if (!rt) return -1;
    double t[STEADY], r[STEADY];
    long f0 = 0, fpk = 0;
    int rc = 0;
    StepStat st = {0};
    for (int i = 0; i <= STEADY && !rc; i++) {
        if (i == 1) f0 = faults();
        rc = rt_step(rt, i, &st, err);
        double mine = st.step_s, slowest = mine;
        MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, mc);
        if (i == 0) f->first = slowest;
        else t[i - 1] = slowest;
        if (i > 0 && pk) {
            long before = faults();
            r[i - 1] = sgemm_rate(pk);
            fpk += faults() - before;          /* not the step's */
        }
    }
    double fl = (double)(faults() - f0 - fpk) / STEADY, fmax = fl;
    MPI_Allreduce(&fl, &fmax, 1, MPI_DOUBLE, MPI_MAX, mc);
    f->faults = fmax;
    f->allocs = st.device_allocs;
    rt_free(rt);
    if (rc) return -1;
    qsort(t, STEADY, sizeof *t, cmp);
    f->steady = t[STEADY / 2];
    if (pk) {
        qsort(r, STEADY, sizeof *r, cmp);
        f->peak_med = r[STEADY / 2];
        f->peak_best = r[STEADY - 1];
    }
    return 0;
}

static void report(const char *what, const Figures *f, double flops, const Figures *peak,
                   double fault_s, int threads)
{
    double rate = flops / f->steady;
    printf("  %-24s %d thr  first step %5.0f ms  steady %5.0f ms (x%.2f)  %5.1f GFLOP/s = "
           "%4.1f%% of the SGEMM peak (%.1f%% of the best SGEMM)\n", what, threads,
           f->first * 1e3, f->steady * 1e3, f->first / f->steady, rate / 1e9,
           100 * rate / peak->peak_med, 100 * rate / peak->peak_best);
    printf("  %-24s        page faults per steady step %.0f (%.2f%% of the step at %.2f us "
           "each); pool blocks from the system in the last step: %lld\n", "", f->faults,
           100 * f->faults * fault_s / f->steady, fault_s * 1e6, (long long)f->allocs);
}

/* Sleeps until every rank reaches this point (a barrier that leaves the
 * cores to whoever works meanwhile). */
static void quiet_barrier(void)
{
    MPI_Request rq;
    MPI_Ibarrier(MPI_COMM_WORLD, &rq);
    for (int done = 0; !done;) {
        MPI_Test(&rq, &done, MPI_STATUS_IGNORE);
        if (!done) nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
}

static Plan *plan_for(const Graph *g, int dp, Strategy **s, Err *err)
{
    char js[64];
    snprintf(js, sizeof js, "{\"mesh\":{\"dp\":%d}}", dp);
    cJSON *j = cJSON_Parse(js);
    *s = strategy_from_json(j, g, NULL, err);
    cJSON_Delete(j);
    return *s ? ir_lower(g, NULL, *s, err) : NULL;
}

int main(int argc, char **argv)
{
    blas_fix_coretype(argv);
    int provided, rank, n;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    Err err = {0};
    const char *k[] = { "preset", "seq", "batch" };
    const char *v[] = { "gpt2-small", "64", "4" };
    Graph *g = zoo_build("gpt", 3, k, v, &err);
    GraphStats gs = {0};
    int rc = g && !graph_stats(g, &gs, &err) ? 0 : -1;
    Strategy *s1 = NULL, *sn = NULL;
    Plan *p1 = NULL, *pn = NULL;
    double fault_s = 0;
    Figures one = {0}, many = {0};

    /* rank 0 alone, on every core */
    if (!rc && rank == 0) {
        blas_set_threads((int)cores);
        size_t nn = (size_t)PEAK_N * PEAK_N;
        Peak pk = { malloc(sizeof(float) * nn), malloc(sizeof(float) * nn),
                    malloc(sizeof(float) * nn) };
        rc = pk.a && pk.b && pk.c ? 0 : err_set(&err, "out of memory for the SGEMM");
        for (size_t i = 0; i < nn && !rc; i++)
            pk.a[i] = (float)(i % 7) * 0.01f, pk.b[i] = (float)(i % 5) * 0.01f, pk.c[i] = 0;
        if (!rc) sgemm_rate(&pk);                        /* OpenBLAS's buffers, once */
        fault_s = fault_cost();
        Comm self = { .ops = NULL, .rank = 0, .world = 1 };
        if (!rc)
            rc = !(p1 = plan_for(g, 1, &s1, &err)) ||
                 train(g, s1, p1, &self, MPI_COMM_SELF, &pk, &one, &err);
        free(pk.a), free(pk.b), free(pk.c);
    }
    quiet_barrier();
    int bad = rc != 0, anybad = bad;
    MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    /* every rank, data parallel */
    Comm *c = NULL;
    if (!anybad && n > 1) {
        blas_threads(n);
        c = comm_mpi_new(&err);
        rc = !c || !(pn = plan_for(g, n, &sn, &err)) ||
             train(g, sn, pn, c, MPI_COMM_WORLD, NULL, &many, &err);
    }
    if (rc || anybad) {
        fprintf(stderr, "mpi_gpt2: rank %d: %s\n", rank, err.msg[0] ? err.msg : "failed");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0) {
        char blas[256];
        printf("GPT-2 small training on this machine's CPUs (%s; batch 4, sequence 64, fp32, "
               "Adam; %.1f M params, %.1f GFLOP a step):\n", blas_describe(blas, sizeof blas),
               gs.params / 1e6, gs.train_flops / 1e9);
        printf("  SGEMM peak (2048^3, %ld threads, after each steady step): median %.1f, best "
               "%.1f GFLOP/s\n", cores, one.peak_med / 1e9, one.peak_best / 1e9);
        report("one rank, all cores", &one, gs.train_flops, &one, fault_s, (int)cores);
        if (n > 1) {
            char what[64];
            snprintf(what, sizeof what, "%d ranks, data parallel", n);
            report(what, &many, gs.train_flops, &one, fault_s,
                   (int)(cores / n > 0 ? cores / n : 1));
        }
    }
    graph_stats_free(&gs);
    comm_free(c);
    plan_free(p1);
    plan_free(pn);
    strategy_free(s1);
    strategy_free(sn);
    graph_free(g);
    MPI_Finalize();
    return 0;
}
