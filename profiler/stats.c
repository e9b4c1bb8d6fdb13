/*
 * stats.c — summaries of repeated timings, the alpha-beta fit of a
 * collective's time against its size, and nccl-tests' bus bandwidth factors.
 */
#include "profiler/stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const COLLECTIVE_NAMES[COLLECTIVE_COUNT] = {
    "all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv",
    "all_reduce_f16",
};

/* --- summaries --------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double stats_quantile(const double *sorted, int n, double q)
{
    if (n < 1) return NAN;
    if (!(q > 0)) return sorted[0];   /* NaN q lands here too */
    if (q >= 1) return sorted[n - 1];
    double pos = q * (n - 1);
    int i = (int)pos;
    if (i >= n - 1) return sorted[n - 1];
    double frac = pos - i;
    return sorted[i] + frac * (sorted[i + 1] - sorted[i]);
}

void stats_summarize(double *t, int n, TimeStats *out)
{
    memset(out, 0, sizeof *out);
    if (n < 1) return;
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    out->n = n;
    out->min = t[0];
    out->max = t[n - 1];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += t[i];
    out->mean = sum / n;
    /* two passes: the deviations from the mean, not sum(t^2) - n*mean^2,
     * which cancels when the spread is small beside the mean */
    if (n > 1) {
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (t[i] - out->mean) * (t[i] - out->mean);
        out->sd = sqrt(ss / (n - 1));
    }
    out->median = stats_quantile(t, n, 0.5);
    out->p10 = stats_quantile(t, n, 0.1);
    out->p90 = stats_quantile(t, n, 0.9);
}

/* --- the alpha-beta fit -------------------------------------------------
 * x, t = size (bytes), time (s) of a sample; w = 1/t^2 its weight.
 * Minimises  sum w (alpha + beta x - t)^2  =  sum ((fit - t) / t)^2.
 *
 * Sizes run from 4 B to 256 MiB and times from 1e-6 to 1 s, so both are first
 * divided by a power of two near their largest value: exact, and it keeps
 * every sum near 1 whatever the units. The 2x2 normal equations are then
 * solved with the intercept eliminated, i.e. in weighted-centred form
 *   beta = Sxt / Sxx,  alpha = tbar - beta xbar,
 *   xbar = sum w x / sum w,  Sxx = sum w (x - xbar)^2,  Sxt = sum w (x - xbar)(t - tbar),
 * which is the same solution as Cramer's rule on the raw sums but without
 * its determinant  sum w * sum w x^2 - (sum w x)^2, which cancels badly when
 * the weights favour the small messages as they do here. Sxx is a sum of
 * non-negative terms, zero only when every size is the same.
 *
 * The constraints: the free fit never breaks both (alpha, beta < 0 predicts
 * negative times, worse than predicting 0), and when it breaks one, the
 * constrained optimum lies on that one's edge (the segment from the free
 * optimum to any point on the other edge crosses it inside the quadrant, and
 * the objective is convex), so refitting the other alone is exact. */

/* 2^k with 2^k <= v < 2^(k+1), for v > 0. */
static double pow2_below(double v)
{
    int e;
    frexp(v, &e);
    return ldexp(1.0, e - 1);
}

static int finite_nonneg(double v)
{
    return isfinite(v) && v >= 0;
}

double ab_time(const AlphaBeta *f, double bytes)
{
    return f->alpha + f->beta * bytes;
}

int ab_fit(const double *bytes, const double *t, int n, AlphaBeta *out)
{
    memset(out, 0, sizeof *out);
    if (!bytes || !t || n < 2) return -1;
    double xmax = 0, tmax = 0;
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        if (!finite_nonneg(bytes[i]) || !isfinite(t[i]) || t[i] <= 0) return -1;
        if (bytes[i] > xmax) xmax = bytes[i];
        if (t[i] > tmax) tmax = t[i];
        if (bytes[i] != bytes[0]) distinct = 1;
    }
    if (!distinct) return -1;
    double sx = pow2_below(xmax), st = pow2_below(tmax);   /* xmax > 0: two sizes >= 0 differ */

    /* X, T, W: scaled size, scaled time, weight 1/T^2 */
    double sw = 0, swx = 0, swt = 0;
    for (int i = 0; i < n; i++) {
        double X = bytes[i] / sx, T = t[i] / st, W = 1 / (T * T);
        sw += W;
        swx += W * X;
        swt += W * T;
    }
    double xbar = swx / sw, tbar = swt / sw;
    double sxx = 0, sxt = 0;
    for (int i = 0; i < n; i++) {
        double X = bytes[i] / sx, T = t[i] / st, W = 1 / (T * T);
        sxx += W * (X - xbar) * (X - xbar);
        sxt += W * (X - xbar) * (T - tbar);
    }
    if (!(sxx > 0)) return -1;
    double B = sxt / sxx, A = tbar - B * xbar;

    if (A < 0) {
        /* alpha = 0: minimise sum (B X/T - 1)^2 */
        double s1 = 0, s2 = 0;
        for (int i = 0; i < n; i++) {
            double v = (bytes[i] / sx) / (t[i] / st);
            s1 += v;
            s2 += v * v;
        }
        A = 0;
        B = s1 / s2;   /* s2 > 0: some size is > 0 */
    } else if (B < 0) {
        /* beta = 0: minimise sum (A/T - 1)^2, the mean of T weighted by 1/T^2 */
        double s1 = 0, s2 = 0;
        for (int i = 0; i < n; i++) {
            double u = st / t[i];
            s1 += u;
            s2 += u * u;
        }
        A = s1 / s2;
        B = 0;
    }

    out->alpha = A * st;
    out->beta = B * (st / sx);
    if (!isfinite(out->alpha) || !isfinite(out->beta)) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    double ss = 0, worst = 0;
    for (int i = 0; i < n; i++) {
        double r = fabs(ab_time(out, bytes[i]) - t[i]) / t[i];
        ss += r * r;
        if (r > worst) worst = r;
    }
    out->rms_rel_err = sqrt(ss / n);
    out->max_rel_err = worst;
    out->n = n;
    return 0;
}

/* --- bus bandwidth ------------------------------------------------------ */

double coll_bus_factor(const char *collective, int n)
{
    if (!collective || n < 1) return 0;
    if (strcmp(collective, "all_reduce") == 0 || strcmp(collective, "all_reduce_f16") == 0)
        return 2.0 * (n - 1) / n;
    if (strcmp(collective, "all_gather") == 0 || strcmp(collective, "reduce_scatter") == 0 ||
        strcmp(collective, "all_to_all") == 0)
        return (double)(n - 1) / n;
    if (strcmp(collective, "broadcast") == 0 || strcmp(collective, "send_recv") == 0) return 1;
    return 0;
}
