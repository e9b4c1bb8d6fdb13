/*
 * mpi_allreduce.c — the executor's all-reduce against a bare MPI_Allreduce.
 *
 * Run under mpirun (make bench starts it on 2 ranks). For each size: warm-up,
 * then timed iterations of each, in the same run; bus bandwidth as
 * nccl-tests defines it (algbw x 2(n-1)/n), and the executor's as a fraction
 * of MPI's. Results are checked. Figures, not pass/fail.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "executor/comm.h"

#define ITERS 20

static double busbw(double bytes, double t, int n)
{
    return bytes / t * 2.0 * (n - 1) / n / 1e9;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    Err err = {0};
    Comm *c = comm_mpi_new(&err);
    int *ranks = malloc(sizeof *ranks * n);
    for (int i = 0; i < n; i++) ranks[i] = i;
    CommGroup *g = c ? c->ops->group_new(c, ranks, n, rank, &err) : NULL;
    if (!g) {
        fprintf(stderr, "mpi_allreduce: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == 0)
        printf("all-reduce on %d ranks (bus bandwidth, GB/s; nccl-tests' definition):\n"
               "  %12s %12s %12s %8s %7s\n", n, "bytes", "executor", "MPI", "ratio", "#wrong");
    int wrong_total = 0;
    for (long bytes = 4096; bytes <= 64L << 20; bytes *= 4) {
        long cnt = bytes / 4;
        float *b = malloc(bytes);
        double t[2] = {0, 0};
        int wrong = 0;
        for (int which = 0; which < 2; which++) {
            for (int it = -3; it < ITERS; it++) {
                for (long e = 0; e < cnt; e++) b[e] = (float)(rank + 1);
                MPI_Barrier(MPI_COMM_WORLD);
                double a = MPI_Wtime();
                if (which == 0) c->ops->allreduce(g, b, cnt, CT_F32, RED_SUM, &err);
                else MPI_Allreduce(MPI_IN_PLACE, b, (int)cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                double d = MPI_Wtime() - a;
                if (it >= 0) t[which] += d;
                float want = (float)n * (n + 1) / 2;
                for (long e = 0; e < cnt; e += 997) wrong += b[e] != want;
            }
            t[which] /= ITERS;
        }
        double tmax[2];
        MPI_Reduce(t, tmax, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        int wsum = 0;
        MPI_Reduce(&wrong, &wsum, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
        wrong_total += wsum;
        if (rank == 0)
            printf("  %12ld %12.2f %12.2f %8.2f %7d\n", bytes, busbw(bytes, tmax[0], n),
                   busbw(bytes, tmax[1], n), tmax[1] / tmax[0], wsum);
        free(b);
    }
    c->ops->group_free(g);
    comm_free(c);
    free(ranks);
    MPI_Finalize();
    return wrong_total ? 1 : 0;
}
