/*
 * stats.h — what the profiler keeps of repeated timings, and the alpha-beta
 * model of a collective fitted on them.
 *
 * Times are seconds, sizes bytes. A collective's "size" and its algorithm and
 * bus bandwidths follow nccl-tests (doc/PERFORMANCE.md there): algbw = size /
 * time, busbw = algbw * factor, the factor making busbw comparable with the
 * hardware's link bandwidth whatever the group size.
 */
#ifndef STRATA_STATS_H
#define STRATA_STATS_H

#include <stdint.h>

typedef struct {
    int n;
    double min, max, mean, sd;   /* sd: sample standard deviation (0 for n < 2) */
    double median, p10, p90;     /* quantiles, linear interpolation between order statistics */
} TimeStats;

/* Summarises t[0..n) (n >= 1); sorts t in place. */
void stats_summarize(double *t, int n, TimeStats *out);
/* Quantile q in [0, 1] of sorted[0..n), n >= 1, interpolating linearly
 * between the order statistics at positions q*(n-1). */
double stats_quantile(const double *sorted, int n, double q);

/* t(bytes) = alpha + beta * bytes, fitted by least squares on the relative
 * error (each sample weighted by 1/t^2, so 4-byte and 256-MiB messages count
 * alike), with alpha >= 0 and beta >= 0: when the free fit breaks one, the
 * other is refitted alone. Errors are relative: |fit - t| / t. */
typedef struct {
    double alpha;        /* s */
    double beta;         /* s per byte; 1/beta is the asymptotic bandwidth */
    double rms_rel_err;
    double max_rel_err;
    int n;
} AlphaBeta;

/* Fits n >= 2 samples (times > 0, bytes >= 0, at least two distinct sizes).
 * Returns 0, or -1 when the samples cannot determine a fit. */
int ab_fit(const double *bytes, const double *t, int n, AlphaBeta *out);
/* The fitted time for `bytes`. */
double ab_time(const AlphaBeta *f, double bytes);

/* nccl-tests' bus bandwidth factor of a collective over a group of n:
 * all_reduce (either precision) 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n;
 * broadcast and send_recv 1. Names as in COLLECTIVE_NAMES below; 0 for an
 * unknown name. */
double coll_bus_factor(const char *collective, int n);

/* The collectives the profiler measures, by the names it stores:
 * "all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast",
 * "send_recv", and "all_reduce_f16", the all-reduce of halves a gradient
 * compressed to fp16 takes (its sum is the backend's half reduction). */
#define COLLECTIVE_COUNT 7
extern const char *const COLLECTIVE_NAMES[COLLECTIVE_COUNT];

#endif
