/*
 * test_profile_stats.c — the profiler's statistics: quantiles and summaries
 * of repeated timings, the alpha-beta fit (exact on noiseless data, close on
 * noisy data, its constraints and refusals) and the bus bandwidth factors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "profiler/stats.h"

#define MIB 1048576.0
#define NSIZES 27   /* 4 B, 8 B, ..., 256 MiB */

/* |a - b| <= rel * |b| */
#define NEAR_REL(a, b, rel)                                                              \
    do {                                                                                 \
        double a_ = (a), b_ = (b);                                                       \
        if (!(fabs(a_ - b_) <= (rel) * fabs(b_)))                                        \
            fail_msg("%s = %.17g, expected %.17g (relative tolerance %g)", #a, a_, b_,   \
                     (double)(rel));                                                     \
    } while (0)
#define NEAR(a, b) NEAR_REL(a, b, 1e-12)

static void sizes_4b_to_256mib(double *x)
{
    for (int i = 0; i < NSIZES; i++) x[i] = ldexp(1.0, i + 2);
}

/* sum ((fit - t) / t)^2: what ab_fit minimises */
static double objective(double alpha, double beta, const double *x, const double *t, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) {
        double r = (alpha + beta * x[i] - t[i]) / t[i];
        s += r * r;
    }
    return s;
}

/* The reported errors and count must be what ab_time gives back. */
static void check_errors(const AlphaBeta *f, const double *x, const double *t, int n)
{
    double ss = 0, worst = 0;
    for (int i = 0; i < n; i++) {
        double r = fabs(ab_time(f, x[i]) - t[i]) / t[i];
        ss += r * r;
        if (r > worst) worst = r;
    }
    assert_int_equal(f->n, n);
    NEAR_REL(f->rms_rel_err, sqrt(ss / n), 1e-9);
    NEAR_REL(f->max_rel_err, worst, 1e-9);
}

/* splitmix64: the same noise on every platform, unlike rand() */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static double rng_sym(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1p-52 - 1.0;
}

/* --- quantiles and summaries ------------------------------------------- */

static void test_quantile_odd(void **state)
{
    (void)state;
    const double s[] = { 1, 2, 3, 4, 5 };
    NEAR(stats_quantile(s, 5, 0.0), 1);
    NEAR(stats_quantile(s, 5, 0.1), 1.4);   /* position 0.4 */
    NEAR(stats_quantile(s, 5, 0.5), 3);
    NEAR(stats_quantile(s, 5, 0.9), 4.6);   /* position 3.6 */
    NEAR(stats_quantile(s, 5, 1.0), 5);
    NEAR(stats_quantile(s, 5, 0.25), 2);
    NEAR(stats_quantile(s, 5, 0.3), 2.2);   /* position 1.2 */
}

static void test_quantile_even(void **state)
{
    (void)state;
    const double s[] = { 10, 20, 30, 40 };
    NEAR(stats_quantile(s, 4, 0.5), 25);    /* position 1.5 */
    NEAR(stats_quantile(s, 4, 0.1), 13);    /* position 0.3 */
    NEAR(stats_quantile(s, 4, 0.9), 37);    /* position 2.7 */
    NEAR(stats_quantile(s, 4, 0.0), 10);
    NEAR(stats_quantile(s, 4, 1.0), 40);
}

static void test_quantile_one_and_duplicates(void **state)
{
    (void)state;
    const double one[] = { 7.5 };
    assert_true(stats_quantile(one, 1, 0.0) == 7.5);
    assert_true(stats_quantile(one, 1, 0.1) == 7.5);
    assert_true(stats_quantile(one, 1, 0.5) == 7.5);
    assert_true(stats_quantile(one, 1, 1.0) == 7.5);

    const double d[] = { 2, 2, 2, 7 };
    assert_true(stats_quantile(d, 4, 0.1) == 2);   /* between equal values: exactly 2 */
    assert_true(stats_quantile(d, 4, 0.5) == 2);
    NEAR(stats_quantile(d, 4, 0.9), 5.5);            /* position 2.7: 2 + 0.7 * 5 */

    const double same[] = { 3e-6, 3e-6, 3e-6 };
    for (double q = 0; q <= 1.0; q += 0.125) assert_true(stats_quantile(same, 3, q) == 3e-6);
}

static void test_summary_fields(void **state)
{
    (void)state;
    /* mean 5, population sd 2, sample sd sqrt(32/7) */
    double t[] = { 9, 4, 2, 5, 7, 4, 5, 4 };
    TimeStats s;
    stats_summarize(t, 8, &s);
    assert_int_equal(s.n, 8);
    assert_true(s.min == 2);
    assert_true(s.max == 9);
    NEAR(s.mean, 5);
    NEAR(s.sd, sqrt(32.0 / 7.0));
    NEAR(s.median, 4.5);   /* 2 4 4 4 5 5 7 9: position 3.5 */
    NEAR(s.p10, 3.4);      /* position 0.7: 2 + 0.7 * 2 */
    NEAR(s.p90, 7.6);      /* position 6.3: 7 + 0.3 * 2 */

    /* sorted in place */
    const double sorted[] = { 2, 4, 4, 4, 5, 5, 7, 9 };
    for (int i = 0; i < 8; i++) assert_true(t[i] == sorted[i]);
}

static void test_summary_unsorted_and_small(void **state)
{
    (void)state;
    double t[] = { 5e-6, 1e-6, 4e-6, 2e-6, 3e-6 };
    TimeStats s;
    stats_summarize(t, 5, &s);
    for (int i = 0; i < 4; i++) assert_true(t[i] <= t[i + 1]);
    NEAR(s.median, 3e-6);
    NEAR(s.p10, 1.4e-6);
    NEAR(s.p90, 4.6e-6);
    NEAR(s.mean, 3e-6);
    NEAR(s.sd, sqrt(2.5) * 1e-6);
    assert_true(s.min == 1e-6);
    assert_true(s.max == 5e-6);

    double one[] = { 0.25 };
    stats_summarize(one, 1, &s);
    assert_int_equal(s.n, 1);
    assert_true(s.min == 0.25 && s.max == 0.25 && s.mean == 0.25);
    assert_true(s.median == 0.25 && s.p10 == 0.25 && s.p90 == 0.25);
    assert_true(s.sd == 0);

    /* a spread small beside the mean: a one-pass variance would lose it */
    double close[] = { 1 + 1e-9, 1 - 1e-9, 1 + 1e-9, 1 - 1e-9 };
    stats_summarize(close, 4, &s);
    NEAR_REL(s.sd, 1e-9 * sqrt(4.0 / 3.0), 1e-6);
}

/* --- the alpha-beta fit ------------------------------------------------- */

static void fit_exact(double alpha, double beta)
{
    double x[NSIZES], t[NSIZES];
    sizes_4b_to_256mib(x);
    for (int i = 0; i < NSIZES; i++) t[i] = alpha + beta * x[i];
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, NSIZES, &f), 0);
    NEAR_REL(f.alpha, alpha, 1e-9);
    NEAR_REL(f.beta, beta, 1e-9);
    check_errors(&f, x, t, NSIZES);
    assert_true(f.max_rel_err < 1e-12);
    for (int i = 0; i < NSIZES; i++) NEAR_REL(ab_time(&f, x[i]), t[i], 1e-12);
}

static void test_fit_noiseless(void **state)
{
    (void)state;
    fit_exact(5e-6, 1 / 50e9);            /* NVLink-like: 5 us, 50 GB/s */
    fit_exact(1e-6, 1 / (256 * MIB));     /* 1 us .. 1 s over the range */
    fit_exact(30e-6, 1 / 12.5e9);         /* InfiniBand-like */
    fit_exact(2e-6, 1 / 900e9);           /* latency-bound almost everywhere */
    fit_exact(0.5, 1e-12);                /* bandwidth a ~1e-4 correction at 256 MiB */

    /* two samples at two sizes are enough */
    const double x[] = { 1024, 1 * MIB }, t[] = { 1e-5 + 1024e-10, 1e-5 + MIB * 1e-10 };
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, 2, &f), 0);
    NEAR_REL(f.alpha, 1e-5, 1e-9);
    NEAR_REL(f.beta, 1e-10, 1e-9);
}

static void test_fit_pure_bandwidth(void **state)
{
    (void)state;
    const double beta = 1 / 100e9;
    double x[NSIZES], t[NSIZES];
    sizes_4b_to_256mib(x);
    for (int i = 0; i < NSIZES; i++) t[i] = beta * x[i];
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, NSIZES, &f), 0);
    assert_true(f.alpha >= 0);
    assert_true(f.alpha <= 1e-9 * t[0]);   /* negligible beside the smallest time */
    NEAR_REL(f.beta, beta, 1e-9);
    check_errors(&f, x, t, NSIZES);
    assert_true(f.max_rel_err < 1e-9);
}

static void test_fit_pure_latency(void **state)
{
    (void)state;
    const double alpha = 7e-6;
    double x[NSIZES], t[NSIZES];
    sizes_4b_to_256mib(x);
    for (int i = 0; i < NSIZES; i++) t[i] = alpha;
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, NSIZES, &f), 0);
    NEAR_REL(f.alpha, alpha, 1e-9);
    assert_true(f.beta >= 0);
    assert_true(f.beta * x[NSIZES - 1] <= 1e-9 * alpha);
    check_errors(&f, x, t, NSIZES);
    assert_true(f.max_rel_err < 1e-9);

    /* a size of 0 bytes is a valid sample */
    const double x0[] = { 0, 4096 }, t0[] = { 3e-6, 3e-6 };
    assert_int_equal(ab_fit(x0, t0, 2, &f), 0);
    NEAR_REL(f.alpha, 3e-6, 1e-12);
}

static void test_fit_noisy(void **state)
{
    (void)state;
    enum { REPS = 8, N = NSIZES * REPS };
    const double alpha = 8e-6, beta = 1 / 40e9, noise = 0.05;
    double x[N], t[N];
    uint64_t seed = 42;
    for (int r = 0; r < REPS; r++)
        for (int i = 0; i < NSIZES; i++) {
            int k = r * NSIZES + i;
            x[k] = ldexp(1.0, i + 2);
            t[k] = (alpha + beta * x[k]) * (1 + noise * rng_sym(&seed));
        }
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, N, &f), 0);
    NEAR_REL(f.alpha, alpha, 0.01);
    NEAR_REL(f.beta, beta, 0.01);
    check_errors(&f, x, t, N);
    /* uniform noise of +-5% has an rms of 2.9%; the fit cannot do much better */
    assert_true(f.rms_rel_err > 0.02 && f.rms_rel_err < 0.04);
    assert_true(f.max_rel_err >= f.rms_rel_err && f.max_rel_err < 0.07);

    /* it is the minimum of the relative squared error: every step away costs */
    double best = objective(f.alpha, f.beta, x, t, N);
    const double steps[] = { 1e-3, -1e-3, 1e-5, -1e-5 };
    for (int s = 0; s < 4; s++) {
        assert_true(objective(f.alpha * (1 + steps[s]), f.beta, x, t, N) > best);
        assert_true(objective(f.alpha, f.beta * (1 + steps[s]), x, t, N) > best);
    }
    /* and not the unweighted fit, which the large messages would dominate */
    double sx = 0, st = 0, sxx = 0, sxt = 0;
    for (int i = 0; i < N; i++) {
        sx += x[i];
        st += t[i];
        sxx += x[i] * x[i];
        sxt += x[i] * t[i];
    }
    double b_ols = (N * sxt - sx * st) / (N * sxx - sx * sx);
    double a_ols = (st - b_ols * sx) / N;
    assert_true(objective(fmax(a_ols, 0), b_ols, x, t, N) > best);
}

static void test_fit_negative_alpha_clamped(void **state)
{
    (void)state;
    /* linear data whose intercept is negative: t = 1e-10 x - 5e-5 */
    const double x[] = { 1 * MIB, 2 * MIB, 4 * MIB, 8 * MIB, 16 * MIB };
    double t[5];
    for (int i = 0; i < 5; i++) t[i] = 1e-10 * x[i] - 5e-5;
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, 5, &f), 0);
    assert_true(f.alpha == 0);
    /* beta alone: minimises sum (beta x/t - 1)^2 */
    double s1 = 0, s2 = 0;
    for (int i = 0; i < 5; i++) {
        s1 += x[i] / t[i];
        s2 += (x[i] / t[i]) * (x[i] / t[i]);
    }
    NEAR_REL(f.beta, s1 / s2, 1e-12);
    assert_true(f.beta > 0);
    check_errors(&f, x, t, 5);
    double best = objective(0, f.beta, x, t, 5);
    assert_true(objective(0, f.beta * (1 + 1e-6), x, t, 5) > best);
    assert_true(objective(0, f.beta * (1 - 1e-6), x, t, 5) > best);
    /* no feasible alpha > 0 does better with this beta */
    assert_true(objective(1e-9, f.beta, x, t, 5) > best);
}

static void test_fit_negative_beta_clamped(void **state)
{
    (void)state;
    /* times falling with size: t = 2e-5 - 1e-11 x */
    const double x[] = { 4, 4096, 65536, 256 * 1024, 1 * MIB };
    double t[5];
    for (int i = 0; i < 5; i++) t[i] = 2e-5 - 1e-11 * x[i];
    AlphaBeta f;
    assert_int_equal(ab_fit(x, t, 5, &f), 0);
    assert_true(f.beta == 0);
    /* alpha alone: the mean of t weighted by 1/t^2 */
    double s1 = 0, s2 = 0;
    for (int i = 0; i < 5; i++) {
        s1 += 1 / t[i];
        s2 += 1 / (t[i] * t[i]);
    }
    NEAR_REL(f.alpha, s1 / s2, 1e-12);
    assert_true(f.alpha > t[4] && f.alpha < t[0]);
    check_errors(&f, x, t, 5);
    for (int i = 0; i < 5; i++) assert_true(ab_time(&f, x[i]) == f.alpha);
}

static void test_fit_refusals(void **state)
{
    (void)state;
    double x[] = { 4, 1024, 1 * MIB }, t[] = { 5e-6, 6e-6, 3e-5 };
    AlphaBeta f;
    /* the data itself fits: each refusal below is that one change */
    assert_int_equal(ab_fit(x, t, 3, &f), 0);

    assert_int_equal(ab_fit(x, t, 1, &f), -1);
    assert_int_equal(ab_fit(x, t, 0, &f), -1);
    assert_int_equal(ab_fit(x, t, -1, &f), -1);

    const double same_x[] = { 4096, 4096, 4096 }, same_t[] = { 5e-6, 6e-6, 7e-6 };
    assert_int_equal(ab_fit(same_x, same_t, 3, &f), -1);
    assert_int_equal(ab_fit(same_x, same_t, 2, &f), -1);

    const double bad_t[] = { 0.0, -1e-6, NAN, INFINITY };
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 3; i++) {
            double tt[3];
            memcpy(tt, t, sizeof tt);
            tt[i] = bad_t[k];
            if (ab_fit(x, tt, 3, &f) != -1) fail_msg("t[%d] = %g accepted", i, bad_t[k]);
        }
    const double bad_x[] = { -1.0, NAN, INFINITY, -INFINITY };
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 3; i++) {
            double xx[3];
            memcpy(xx, x, sizeof xx);
            xx[i] = bad_x[k];
            if (ab_fit(xx, t, 3, &f) != -1) fail_msg("bytes[%d] = %g accepted", i, bad_x[k]);
        }
}

/* --- bus bandwidth ------------------------------------------------------ */

static void test_bus_factors(void **state)
{
    (void)state;
    const char *want[COLLECTIVE_COUNT] = { "all_reduce", "all_gather", "reduce_scatter",
                                           "all_to_all", "broadcast", "send_recv",
                                           "all_reduce_f16" };
    for (int i = 0; i < COLLECTIVE_COUNT; i++) {
        assert_non_null(COLLECTIVE_NAMES[i]);
        assert_string_equal(COLLECTIVE_NAMES[i], want[i]);
    }
    /* per name: n = 1, 2, 8 */
    const double f[COLLECTIVE_COUNT][3] = {
        { 0, 1, 1.75 },   /* 2(n-1)/n */
        { 0, 0.5, 0.875 },
        { 0, 0.5, 0.875 },
        { 0, 0.5, 0.875 },
        { 1, 1, 1 },
        { 1, 1, 1 },
        { 0, 1, 1.75 },   /* the all-reduce of halves: the same algorithm */
    };
    const int ns[3] = { 1, 2, 8 };
    for (int i = 0; i < COLLECTIVE_COUNT; i++)
        for (int j = 0; j < 3; j++) {
            double got = coll_bus_factor(COLLECTIVE_NAMES[i], ns[j]);
            if (fabs(got - f[i][j]) > 1e-15)
                fail_msg("%s over %d: %g, expected %g", COLLECTIVE_NAMES[i], ns[j], got, f[i][j]);
        }
    NEAR(coll_bus_factor("all_reduce", 3), 4.0 / 3.0);
    NEAR(coll_bus_factor("all_gather", 3), 2.0 / 3.0);

    assert_true(coll_bus_factor("allreduce", 8) == 0);
    assert_true(coll_bus_factor("AllReduce", 8) == 0);
    assert_true(coll_bus_factor("", 8) == 0);
    assert_true(coll_bus_factor("all_reduce", 0) == 0);
    assert_true(coll_bus_factor("broadcast", 0) == 0);
    assert_true(coll_bus_factor("send_recv", -2) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantile_odd),
        cmocka_unit_test(test_quantile_even),
        cmocka_unit_test(test_quantile_one_and_duplicates),
        cmocka_unit_test(test_summary_fields),
        cmocka_unit_test(test_summary_unsorted_and_small),
        cmocka_unit_test(test_fit_noiseless),
        cmocka_unit_test(test_fit_pure_bandwidth),
        cmocka_unit_test(test_fit_pure_latency),
        cmocka_unit_test(test_fit_noisy),
        cmocka_unit_test(test_fit_negative_alpha_clamped),
        cmocka_unit_test(test_fit_negative_beta_clamped),
        cmocka_unit_test(test_fit_refusals),
        cmocka_unit_test(test_bus_factors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
