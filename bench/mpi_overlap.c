/*
 * mpi_overlap.c — does communication really overlap computation?
 *
 * Data parallel on the ranks of the job (make bench starts 2): each gradient
 * all-reduce starts as the backward produces the gradient. Overlapped, the
 * optimizer update that waits for it is set aside and the rest of the
 * backward runs while a progress thread keeps the all-reduce moving (MPI
 * moves a non-blocking operation only inside MPI calls); in program order,
 * the update waits where the program puts it, right after the all-reduce.
 * The same plan runs both ways in the same job.
 * Figures, not pass/fail.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "executor/blas.h"
#include "executor/comm.h"
#include "executor/runtime.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/zoo.h"

#define WARM 2
#define REPS 7

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over REPS steps of the slowest rank's step time and of its time
 * waiting for communication. */
static int run(const Graph *g, const Strategy *s, const Plan *p, Comm *c, bool overlap,
               double *step, double *wait, double *compute, Err *err)
{
    RunConfig cfg = { .seed = 1, .no_overlap = !overlap };
    rt_default_hyper(&cfg.hyper);
    Runtime *rt = rt_new(g, s, p, c, &cfg, err);
    if (!rt) return -1;
    double ts[REPS], tw[REPS], tc[REPS];
    int rc = 0;
    for (int i = 0; i < WARM + REPS && !rc; i++) {
        StepStat st;
        rc = rt_step(rt, i, &st, err);
        double v[3] = { st.step_s, st.comm_s, st.compute_s }, m[3];
        MPI_Allreduce(v, m, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (i >= WARM) {
            ts[i - WARM] = m[0];
            tw[i - WARM] = m[1];
            tc[i - WARM] = m[2];
        }
    }
    rt_free(rt);
    if (rc) return -1;
    qsort(ts, REPS, sizeof *ts, cmp);
    qsort(tw, REPS, sizeof *tw, cmp);
    qsort(tc, REPS, sizeof *tc, cmp);
    *step = ts[REPS / 2];
    *wait = tw[REPS / 2];
    *compute = tc[REPS / 2];
    return 0;
}

int main(int argc, char **argv)
{
    blas_fix_coretype(argv);
    int provided, rank, n;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    blas_threads(n);
    Err err = {0};
    /* an MLP whose gradients (68 MB) take about as long to all-reduce here
     * as its backward takes to compute */
    const char *k[] = { "layers", "hidden", "input", "classes", "batch" };
    const char *v[] = { "4", "2048", "2048", "16", "64" };
    Graph *g = zoo_build("mlp", 5, k, v, &err);
    char js[64];
    snprintf(js, sizeof js, "{\"mesh\":{\"dp\":%d}}", n);
    cJSON *j = cJSON_Parse(js);
    Strategy *s = g ? strategy_from_json(j, g, NULL, &err) : NULL;
    cJSON_Delete(j);
    Plan *p = s ? ir_lower(g, NULL, s, &err) : NULL;
    Comm *c = p ? comm_mpi_new(&err) : NULL;
    double step[2], wait[2], comp[2];
    int rc = c ? 0 : -1;
    for (int m = 0; m < 2 && !rc; m++) rc = run(g, s, p, c, m == 0, &step[m], &wait[m], &comp[m], &err);
    if (rc) {
        fprintf(stderr, "mpi_overlap: rank %d: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0) {
        GraphStats gs;
        graph_stats(g, &gs, &err);
        printf("gradient all-reduce overlapping the backward (data parallel, %d ranks, MLP 4 x 2048, "
               "%.1f M params, median of %d steps, slowest rank):\n", n, gs.params / 1e6, REPS);
        printf("  %-26s %10s %10s %12s\n", "", "step ms", "compute ms", "comm wait ms");
        printf("  %-26s %10.1f %10.1f %12.1f\n", "overlapped", step[0] * 1e3,
               comp[0] * 1e3, wait[0] * 1e3);
        printf("  %-26s %10.1f %10.1f %12.1f\n", "in program order", step[1] * 1e3,
               comp[1] * 1e3, wait[1] * 1e3);
        printf("  step time overlapped / in order: %.2f\n", step[0] / step[1]);
        graph_stats_free(&gs);
    }
    comm_free(c);
    plan_free(p);
    strategy_free(s);
    graph_free(g);
    MPI_Finalize();
    return 0;
}
