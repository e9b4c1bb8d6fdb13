/*
 * test_mlp.c — the multi-layer perceptron of costmodel/mlp.h: gradients
 * against central differences for every activation and a non-identity
 * scaling, mlp_train against the forward/backward/Adam pieces and against
 * known functions, Adam by hand, save/load bit for bit and its refusals,
 * determinism, early stopping, bad input, thread-safe prediction, and a
 * REINFORCE loop driving a softmax policy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel/mlp.h"

/* |a - b| <= abs + rel * |b| */
#define NEAR_TOL(a, b, rel, abs_)                                                        \
    do {                                                                                 \
        double a_ = (a), b_ = (b);                                                       \
        if (!(fabs(a_ - b_) <= (abs_) + (rel) * fabs(b_)))                               \
            fail_msg("%s = %.17g, expected %.17g (tolerance %g + %g relative)", #a, a_,  \
                     b_, (double)(abs_), (double)(rel));                                 \
    } while (0)
#define NEAR_REL(a, b, rel) NEAR_TOL(a, b, rel, 0.0)

#define CONTAINS(msg, sub)                                                               \
    do {                                                                                 \
        if (!strstr((msg), (sub))) fail_msg("message \"%s\" lacks \"%s\"", (msg), (sub)); \
    } while (0)

/* splitmix64: the same data on every platform, unlike rand() */
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

/* uniform in [0, 1) */
static double rng_unif(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1p-53;
}

static Mlp *new_or_fail(int nin, const int *hidden, int nhidden, int nout, MlpAct act,
                        uint64_t seed)
{
    Err err = { { 0 } };
    Mlp *m = mlp_new(nin, hidden, nhidden, nout, act, seed, &err);
    if (!m) fail_msg("mlp_new: %s", err.msg);
    return m;
}

static bool same_params(Mlp *a, Mlp *b)
{
    return mlp_nparams(a) == mlp_nparams(b) &&
           memcmp(mlp_params(a), mlp_params(b), (size_t)mlp_nparams(a) * sizeof(double)) == 0;
}

/* sum of squared errors of the net's predictions against Y over rows with
 * mask[i] == want (every row when mask is NULL), in raw units */
static double sse(const Mlp *m, const double *X, const double *Y, int n, const uint8_t *mask,
                  uint8_t want, int *count)
{
    int nin = mlp_nin(m), nout = mlp_nout(m), c = 0;
    double s = 0, y[8];
    for (int i = 0; i < n; i++) {
        if (mask && (mask[i] != 0) != want) continue;
        mlp_predict(m, X + (size_t)i * nin, y);
        for (int o = 0; o < nout; o++) {
            double e = y[o] - Y[(size_t)i * nout + o];
            s += e * e;
        }
        c++;
    }
    if (count) *count = c;
    return s;
}

/* --- gradients ------------------------------------------------------------ */

/* sum dy * y at x: the function whose gradient mlp_backward(dy) accumulates */
static double dot_out(const Mlp *m, const double *x, const double *dy)
{
    double y[4];
    mlp_predict(m, x, y);
    double s = 0;
    for (int o = 0; o < mlp_nout(m); o++) s += dy[o] * y[o];
    return s;
}

static void gradcheck(MlpAct act)
{
    const int hidden[2] = { 5, 4 };
    Mlp *m = new_or_fail(3, hidden, 2, 2, act, 42 + (uint64_t)act);
    /* a scaling far from the identity: a backward that forgot ystd, or a
     * forward that forgot xstd, is off by these factors */
    const double xmean[3] = { 0.5, -1.0, 2.0 }, xstd[3] = { 2.0, 0.5, 3.0 };
    const double ymean[2] = { 10.0, -3.0 }, ystd[2] = { 4.0, 0.25 };
    mlp_set_scaling(m, xmean, xstd, ymean, ystd);
    uint64_t s = 1000 + (uint64_t)act;
    int np = mlp_nparams(m);
    double *p = mlp_params(m);
    assert_int_equal(np, (3 * 5 + 5) + (5 * 4 + 4) + (4 * 2 + 2));
    for (int i = 0; i < np; i++) p[i] += 0.3 * rng_sym(&s);   /* biases off zero too */

    MlpWork *w = mlp_work_new(m);
    assert_non_null(w);
    for (int trial = 0; trial < 3; trial++) {
        double x[3], dy[2], y[2], yp[2];
        for (int k = 0; k < 3; k++) x[k] = xmean[k] + 2.0 * xstd[k] * rng_sym(&s);
        for (int o = 0; o < 2; o++) dy[o] = rng_sym(&s);
        mlp_forward(m, w, x, y);
        mlp_predict(m, x, yp);
        assert_memory_equal(y, yp, sizeof y);
        mlp_backward(m, w, dy);

        const double *g = mlp_grads(w);
        const double h = 1e-6;
        for (int i = 0; i < np; i++) {
            double keep = p[i];
            p[i] = keep + h;
            double fp = dot_out(m, x, dy);
            p[i] = keep - h;
            double fm = dot_out(m, x, dy);
            p[i] = keep;
            double fd = (fp - fm) / (2 * h);
            if (!(fabs(g[i] - fd) <= 1e-8 + 1e-6 * fmax(fabs(g[i]), fabs(fd))))
                fail_msg("act %d trial %d param %d: backward %.12g, central difference %.12g",
                         (int)act, trial, i, g[i], fd);
        }

        /* a second backward of the same row adds the same gradient again */
        double *g1 = malloc((size_t)np * sizeof *g1);
        memcpy(g1, g, (size_t)np * sizeof *g1);
        mlp_backward(m, w, dy);
        for (int i = 0; i < np; i++) assert_true(mlp_grads(w)[i] == 2 * g1[i]);
        free(g1);

        /* an Adam step consumes the gradient */
        Mlp *c = mlp_clone(m);
        mlp_adam_step(c, w, NULL, 0.5);
        for (int i = 0; i < np; i++) assert_true(mlp_grads(w)[i] == 0);
        mlp_free(c);
    }
    mlp_work_free(w);
    mlp_free(m);
}

static void test_gradcheck_relu(void **state)
{
    (void)state;
    gradcheck(MLP_RELU);
}

static void test_gradcheck_tanh(void **state)
{
    (void)state;
    gradcheck(MLP_TANH);
}

static void test_gradcheck_gelu(void **state)
{
    (void)state;
    gradcheck(MLP_GELU);
}

/* gelu's value at known points (tanh form): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) */
static void test_gelu_values(void **state)
{
    (void)state;
    const double pts[] = { -3.0, -1.0, -0.1, 0.0, 0.5, 2.0 };
    /* a 1-1-1 net with W_0 = 1, W_1 = 1: y = gelu(x) */
    const int hidden[1] = { 1 };
    Mlp *m = new_or_fail(1, hidden, 1, 1, MLP_GELU, 1);
    double *p = mlp_params(m);
    p[0] = 1, p[1] = 0, p[2] = 1, p[3] = 0;
    for (size_t i = 0; i < sizeof pts / sizeof *pts; i++) {
        double x = pts[i], y;
        double want = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        mlp_predict(m, &x, &y);
        NEAR_TOL(y, want, 1e-14, 1e-300);
    }
    mlp_free(m);
}

/* --- Adam -------------------------------------------------------------- */

/* A 1 -> 1 linear net (params w, b): two steps computed by hand. */
static void test_adam_by_hand(void **state)
{
    (void)state;
    Mlp *m = new_or_fail(1, NULL, 0, 1, MLP_RELU, 3);
    MlpWork *wk = mlp_work_new(m);
    double *p = mlp_params(m);
    assert_int_equal(mlp_nparams(m), 2);
    p[0] = 0.5, p[1] = 0.25;
    const MlpAdam a = { .lr = 0.1, .weight_decay = 0.5 };
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8, lr = 0.1, wd = 0.5, scale = 0.5;

    double x = 2.0, y, w = p[0], b = p[1], mw = 0, mb = 0, vw = 0, vb = 0;
    const double dys[2] = { 3.0, -1.0 };
    for (int t = 1; t <= 2; t++) {
        mlp_forward(m, wk, &x, &y);
        mlp_backward(m, wk, &dys[t - 1]);
        NEAR_REL(mlp_grads(wk)[0], dys[t - 1] * x, 1e-15);   /* dy/dw = x */
        NEAR_REL(mlp_grads(wk)[1], dys[t - 1], 1e-15);       /* dy/db = 1 */
        mlp_adam_step(m, wk, &a, scale);

        double gw = dys[t - 1] * x * scale, gb = dys[t - 1] * scale;
        mw = b1 * mw + (1 - b1) * gw, vw = b2 * vw + (1 - b2) * gw * gw;
        mb = b1 * mb + (1 - b1) * gb, vb = b2 * vb + (1 - b2) * gb * gb;
        double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
        /* decoupled decay on the weight only */
        w -= lr * ((mw / c1) / (sqrt(vw / c2) + eps) + wd * w);
        b -= lr * ((mb / c1) / (sqrt(vb / c2) + eps));
        NEAR_REL(p[0], w, 1e-13);
        NEAR_REL(p[1], b, 1e-13);
    }

    /* zero fields take the defaults: lr 1e-3, and a first step of lr * sign(g) */
    Mlp *d = new_or_fail(1, NULL, 0, 1, MLP_RELU, 3);
    double *q = mlp_params(d);
    q[0] = 0.5, q[1] = 0.25;
    double dy = 7.0;
    mlp_forward(d, wk, &x, &y);
    mlp_backward(d, wk, &dy);
    MlpAdam zero = { 0 };
    mlp_adam_step(d, wk, &zero, 1.0);
    NEAR_REL(q[0], 0.5 - 1e-3 * 14.0 / (14.0 + 1e-8), 1e-13);
    NEAR_REL(q[1], 0.25 - 1e-3 * 7.0 / (7.0 + 1e-8), 1e-13);

    mlp_work_free(wk);
    mlp_free(m);
    mlp_free(d);
}

/* mlp_train runs its own batched forward and backward; with one batch of
 * every row, three epochs must equal three full-batch steps made of
 * mlp_forward, mlp_backward and mlp_adam_step (up to the order of sums). */
static void test_train_matches_pieces(void **state)
{
    (void)state;
    enum { N = 40, NIN = 4, NOUT = 2, EPOCHS = 3 };
    const int hidden[2] = { 11, 9 };   /* odd widths: the kernels' tails too */
    uint64_t s = 77;
    double X[N * NIN], Y[N * NOUT];
    for (int i = 0; i < N * NIN; i++) X[i] = 3.0 * rng_sym(&s) + 1.0;
    for (int i = 0; i < N * NOUT; i++) Y[i] = 10.0 * rng_sym(&s) - 4.0;
    const double xmean[NIN] = { 1, 0.5, -1, 2 }, xstd[NIN] = { 3, 2, 1.5, 0.7 };
    const double ymean[NOUT] = { -4, 1 }, ystd[NOUT] = { 6, 0.5 };

    /* squared error, then a Huber delta that the errors (up to ~10 standard
     * units here) cross both ways */
    for (int run = 0; run < 2 * (MLP_GELU + 1); run++) {
        int act = run % (MLP_GELU + 1);
        double huber = run > MLP_GELU ? 0.3 : 0;
        Mlp *m = new_or_fail(NIN, hidden, 2, NOUT, (MlpAct)act, 9);
        mlp_set_scaling(m, xmean, xstd, ymean, ystd);
        Mlp *ref = mlp_clone(m);
        MlpTrainOpts o = { .adam = { .lr = 0.01, .weight_decay = 0.1 },
                           .epochs = EPOCHS, .batch = 1000, .seed = 5, .huber = huber };
        MlpTrainResult r;
        Err err = { { 0 } };
        assert_int_equal(mlp_train(m, X, Y, N, &o, &r, &err), 0);
        assert_int_equal(r.epochs, EPOCHS);
        assert_int_equal(r.best_epoch, EPOCHS);
        assert_int_equal(r.ntrain, N);
        assert_int_equal(r.nval, 0);
        assert_true(isnan(r.val_loss));

        MlpWork *w = mlp_work_new(ref);
        for (int e = 0; e < EPOCHS; e++) {
            for (int i = 0; i < N; i++) {
                double y[NOUT], dy[NOUT];
                mlp_forward(ref, w, X + i * NIN, y);
                /* L = mean_o (z - t)^2 with z, t standardised: dL/dy = 2 (y - Y) / (nout ystd^2);
                 * Huber: the slope 2e clipped to +-2 delta, e = (y - Y) / ystd */
                for (int o2 = 0; o2 < NOUT; o2++) {
                    double e = (y[o2] - Y[i * NOUT + o2]) / ystd[o2];
                    double g = huber > 0 && fabs(e) > huber ? copysign(2 * huber, e) : 2 * e;
                    dy[o2] = g / (NOUT * ystd[o2]);
                }
                mlp_backward(ref, w, dy);
            }
            mlp_adam_step(ref, w, &o.adam, 1.0 / N);
        }
        const double *a = mlp_params(m), *b = mlp_params(ref);
        for (int i = 0; i < mlp_nparams(m); i++) NEAR_TOL(a[i], b[i], 1e-10, 1e-12);

        /* the reported training loss is that of the final weights */
        double want = 0;
        for (int i = 0; i < N; i++) {
            double y[NOUT];
            mlp_predict(m, X + i * NIN, y);
            for (int o2 = 0; o2 < NOUT; o2++) {
                double e = (y[o2] - Y[i * NOUT + o2]) / ystd[o2];
                want += huber > 0 && fabs(e) > huber ? huber * (2 * fabs(e) - huber) : e * e;
            }
        }
        NEAR_REL(r.train_loss, want / (N * NOUT), 1e-10);
        mlp_work_free(w);
        mlp_free(ref);
        mlp_free(m);
    }
}

/* --- learning known functions ------------------------------------------------ */

static void test_learns_nonlinear(void **state)
{
    (void)state;
    enum { N = 2000, NT = 500 };
    double *X = malloc(sizeof(double) * (N + NT) * 3), *Y = malloc(sizeof(double) * (N + NT));
    uint64_t s = 11;
    for (int i = 0; i < N + NT; i++) {
        double *x = X + i * 3;
        for (int k = 0; k < 3; k++) x[k] = 2.0 * rng_sym(&s);
        /* raw units far from standard ones: the scaling has to do its job */
        Y[i] = 100.0 * (sin(x[0]) + x[1] * x[2]) + 500.0;
    }
    const int hidden[2] = { 32, 32 };
    Mlp *m = new_or_fail(3, hidden, 2, 1, MLP_TANH, 1);
    MlpTrainOpts o = { .adam = { .lr = 3e-3 }, .epochs = 200, .batch = 32, .val_frac = 0.1,
                       .patience = 30, .seed = 2, .fit_scaling = true };
    MlpTrainResult r;
    Err err = { { 0 } };
    assert_int_equal(mlp_train(m, X, Y, N, &o, &r, &err), 0);
    assert_int_equal(r.nval, 200);
    assert_int_equal(r.ntrain, N - 200);

    /* R^2 on rows never seen */
    double mean = 0, var = 0;
    for (int i = N; i < N + NT; i++) mean += Y[i];
    mean /= NT;
    for (int i = N; i < N + NT; i++) var += (Y[i] - mean) * (Y[i] - mean);
    double err_ss = sse(m, X + N * 3, Y + N, NT, NULL, 0, NULL);
    double r2 = 1 - err_ss / var;
    if (!(r2 > 0.98)) fail_msg("held-out R^2 = %.4f (val loss %.4g)", r2, r.val_loss);
    mlp_free(m);
    free(X);
    free(Y);
}

static void test_learns_linear(void **state)
{
    (void)state;
    enum { N = 400, NIN = 4, NOUT = 2 };
    double X[N * NIN], Y[N * NOUT];
    uint64_t s = 21;
    for (int i = 0; i < N; i++) {
        double *x = X + i * NIN;
        for (int k = 0; k < NIN; k++) x[k] = 5.0 * rng_sym(&s) + k;
        Y[i * NOUT] = 3 * x[0] - 2 * x[1] + 0.5 * x[2] + 7;
        Y[i * NOUT + 1] = -x[0] + 4 * x[3] - 1;
    }
    /* no hidden layer: the net is linear and can fit exactly */
    Mlp *m = new_or_fail(NIN, NULL, 0, NOUT, MLP_RELU, 4);
    MlpTrainOpts o = { .adam = { .lr = 1e-2 }, .epochs = 400, .batch = 32, .seed = 3,
                       .fit_scaling = true };
    MlpTrainResult r;
    Err err = { { 0 } };
    assert_int_equal(mlp_train(m, X, Y, N, &o, &r, &err), 0);
    if (!(r.train_loss < 1e-12)) fail_msg("linear fit: training loss %.3g", r.train_loss);

    /* off the training points, away from the data's range too */
    const double x[NIN] = { 12.0, -9.0, 3.5, 0.25 };
    double y[NOUT];
    mlp_predict(m, x, y);
    NEAR_TOL(y[0], 3 * 12.0 + 2 * 9.0 + 0.5 * 3.5 + 7, 0, 1e-6);
    NEAR_TOL(y[1], -12.0 + 4 * 0.25 - 1, 0, 1e-6);
    mlp_free(m);
}

/* A line y = 2x + 1 through N points of which one in ten (i % 10 == 3) is
 * a gross outlier, 40 above it. */
enum { LINE_N = 400 };

static void outlier_line(double *X, double *Y)
{
    uint64_t s = 41;
    for (int i = 0; i < LINE_N; i++) {
        X[i] = 4.0 * rng_sym(&s);
        Y[i] = 2 * X[i] + 1 + (i % 10 == 3 ? 40.0 : 0.0);
    }
}

/* A one-layer net trained on the line with o's loss and weights (epochs,
 * batch, step size and seed set here); *miss its largest distance from the
 * line over x = -3..3. Caller frees. */
static Mlp *fit_line(const double *X, const double *Y, MlpTrainOpts o, double *miss)
{
    Mlp *m = new_or_fail(1, NULL, 0, 1, MLP_RELU, 4);
    o.adam = (MlpAdam){ .lr = 1e-2 };
    o.epochs = 300;
    o.batch = 32;
    o.seed = 3;
    o.fit_scaling = true;
    Err err = { { 0 } };
    assert_int_equal(mlp_train(m, X, Y, LINE_N, &o, NULL, &err), 0);
    *miss = 0;
    for (int t = -3; t <= 3; t++) {
        double x = t, y;
        mlp_predict(m, &x, &y);
        *miss = fmax(*miss, fabs(y - (2 * x + 1)));
    }
    return m;
}

/* Squared error is pulled off the line by the outliers, the Huber loss
 * (linear beyond delta) is not. */
static void test_huber_outliers(void **state)
{
    (void)state;
    double X[LINE_N], Y[LINE_N], miss[2];
    outlier_line(X, Y);
    for (int k = 0; k < 2; k++)
        mlp_free(fit_line(X, Y, (MlpTrainOpts){ .huber = k ? 0.05 : 0 }, &miss[k]));
    /* squared error: the line lifted by about the outliers' mean, 4 */
    if (!(miss[0] > 2)) fail_msg("squared error off the line by %.3f: expected > 2", miss[0]);
    if (!(miss[1] < 0.5)) fail_msg("Huber off the line by %.3f: expected < 0.5", miss[1]);
}

/* The same under the squared error with the outliers given weight 0: the
 * fit is the line's, as if they were not there; and a weight of 2 on every
 * row gives the same fit as 1 (the loss doubled, Adam's steps the same). */
static void test_row_weights(void **state)
{
    (void)state;
    double X[LINE_N], Y[LINE_N], w[LINE_N], two[LINE_N], miss[2];
    outlier_line(X, Y);
    for (int i = 0; i < LINE_N; i++) {
        w[i] = i % 10 == 3 ? 0 : 1;
        two[i] = 2 * w[i];
    }
    Mlp *one = fit_line(X, Y, (MlpTrainOpts){ .row_weight = w }, &miss[0]);
    Mlp *dbl = fit_line(X, Y, (MlpTrainOpts){ .row_weight = two }, &miss[1]);
    /* (the scaling is fitted on every row, outliers too: a small offset) */
    if (!(miss[0] < 0.5)) fail_msg("weighted fit off the line by %.3f: expected < 0.5", miss[0]);
    for (int t = -3; t <= 3; t++) {
        double x = t, y0, y1;
        mlp_predict(one, &x, &y0);
        mlp_predict(dbl, &x, &y1);
        NEAR_TOL(y0, y1, 1e-6, 1e-6);
    }
    mlp_free(one);
    mlp_free(dbl);
}

/* --- save and load ---------------------------------------------------------- */

static Mlp *trained_net(void)
{
    enum { N = 200 };
    double X[N * 3], Y[N * 2];
    uint64_t s = 31;
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 3; k++) X[i * 3 + k] = rng_sym(&s) * 4 + 1;
        Y[i * 2] = X[i * 3] * X[i * 3 + 1] + 2;
        Y[i * 2 + 1] = cos(X[i * 3 + 2]) * 30;
    }
    const int hidden[2] = { 8, 6 };
    Mlp *m = new_or_fail(3, hidden, 2, 2, MLP_GELU, 8);
    MlpTrainOpts o = { .epochs = 5, .val_frac = 0.2, .seed = 4, .fit_scaling = true,
                       .adam = { .weight_decay = 0.01 } };
    Err err = { { 0 } };
    if (mlp_train(m, X, Y, N, &o, NULL, &err) < 0) fail_msg("mlp_train: %s", err.msg);
    return m;
}

/* a and b predict alike bit for bit, and one more identical Adam step keeps
 * them alike (so the moments and the step count came across too) */
static void check_twins(Mlp *a, Mlp *b)
{
    int nin = mlp_nin(a), nout = mlp_nout(a);
    assert_int_equal(nin, mlp_nin(b));
    assert_int_equal(nout, mlp_nout(b));
    assert_true(nin <= 8 && nout <= 8);
    assert_true(same_params(a, b));
    uint64_t s = 5;
    double x[8], dy[8], ya[8], yb[8];
    for (int t = 0; t < 20; t++) {
        for (int k = 0; k < nin; k++) x[k] = 3 * rng_sym(&s);
        mlp_predict(a, x, ya);
        mlp_predict(b, x, yb);
        assert_memory_equal(ya, yb, (size_t)nout * sizeof *ya);
    }
    MlpWork *wa = mlp_work_new(a), *wb = mlp_work_new(b);
    for (int o = 0; o < nout; o++) dy[o] = rng_sym(&s);
    const MlpAdam adam = { .lr = 0.05, .weight_decay = 0.1 };
    mlp_forward(a, wa, x, ya);
    mlp_backward(a, wa, dy);
    mlp_adam_step(a, wa, &adam, 1.0);
    mlp_forward(b, wb, x, yb);
    mlp_backward(b, wb, dy);
    mlp_adam_step(b, wb, &adam, 1.0);
    assert_true(same_params(a, b));
    mlp_work_free(wa);
    mlp_work_free(wb);
}

static void test_save_load_roundtrip(void **state)
{
    (void)state;
    Mlp *m = trained_net();
    double *p = mlp_params(m);
    /* values that a decimal format would bend: -0, a subnormal, pi's last bit */
    p[0] = -0.0;
    p[1] = 0x1p-1070;
    p[2] = M_PI;

    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    Err err = { { 0 } };
    assert_int_equal(mlp_save(m, &buf, &len, &err), 0);
    Mlp *l = mlp_load(buf, len, &err);
    if (!l) fail_msg("mlp_load: %s", err.msg);
    assert_int_equal(mlp_nparams(l), mlp_nparams(m));
    assert_memory_equal(mlp_params(l), p, (size_t)mlp_nparams(m) * sizeof(double));

    /* saving what was loaded gives the same bytes: scaling, moments, step count */
    assert_int_equal(mlp_save(l, &buf2, &len2, &err), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(buf2, buf, len);

    Mlp *c = mlp_clone(m), *l2 = mlp_load(buf2, len2, &err);
    assert_non_null(c);
    assert_non_null(l2);
    check_twins(m, l);
    check_twins(c, l2);
    check_twins(c, m);
    free(buf);
    free(buf2);
    mlp_free(c);
    mlp_free(l);
    mlp_free(l2);
    mlp_free(m);
}

static void expect_refused(const uint8_t *buf, size_t len, const char *sub)
{
    Err err = { { 0 } };
    Mlp *m = mlp_load(buf, len, &err);
    if (m) {
        mlp_free(m);
        fail_msg("mlp_load accepted a bad buffer (%zu bytes; expected \"%s\")", len, sub);
    }
    CONTAINS(err.msg, sub);
}

static void test_load_rejects(void **state)
{
    (void)state;
    Mlp *m = trained_net();
    uint8_t *buf = NULL;
    size_t len = 0;
    Err err = { { 0 } };
    assert_int_equal(mlp_save(m, &buf, &len, &err), 0);
    uint8_t *b = malloc(len + 1);

    expect_refused(NULL, 0, "too short");
    expect_refused(buf, 0, "too short");
    expect_refused(buf, 20, "too short");
    expect_refused(buf, 30, "truncated");          /* inside the hidden widths */
    expect_refused(buf, len - 1, "truncated");
    expect_refused(buf, len / 2, "truncated");

    memcpy(b, buf, len);
    b[0] ^= 0x20;
    expect_refused(b, len, "magic");
    memcpy(b, "{\"layers\": [1, 2]}", 18);        /* someone else's format */
    expect_refused(b, len, "magic");

    memcpy(b, buf, len);
    b[8] = 2;                                      /* version */
    expect_refused(b, len, "version");

    memcpy(b, buf, len);
    b[12] = 4;                                     /* nin 3 -> 4: the size no longer fits */
    expect_refused(b, len, "corrupt size");
    memcpy(b, buf, len);
    b[12] = 2;                                     /* nin 3 -> 2: too many bytes for it */
    expect_refused(b, len, "corrupt size");
    memcpy(b, buf, len);
    b[13] = 0x40;                                  /* nin 16387 */
    expect_refused(b, len, "corrupt shape");
    memcpy(b, buf, len);
    b[20] = 99;                                    /* 99 hidden layers */
    expect_refused(b, len, "hidden layers");
    memcpy(b, buf, len);
    b[28] = 0;                                     /* hidden[0] = 0 */
    expect_refused(b, len, "hidden[0]");
    memcpy(b, buf, len);
    b[24] = 9;                                     /* activation */
    expect_refused(b, len, "activation");

    memcpy(b, buf, len);
    b[len / 2] ^= 1;                               /* one bit of one weight */
    expect_refused(b, len, "checksum");
    memcpy(b, buf, len);
    b[len] = 0;
    expect_refused(b, len + 1, "trailing");

    /* the pristine buffer still loads */
    Mlp *l = mlp_load(buf, len, &err);
    assert_non_null(l);
    mlp_free(l);
    free(b);
    free(buf);
    mlp_free(m);
}

/* --- determinism ------------------------------------------------------------ */

static void make_data(double *X, double *Y, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++) X[i * 4 + k] = rng_sym(&seed) * 2;
        Y[i] = X[i * 4] * X[i * 4 + 1] - X[i * 4 + 2] + 0.1 * rng_sym(&seed);
    }
}

static Mlp *train_with(uint64_t init_seed, uint64_t train_seed, const double *X, const double *Y,
                       int n, MlpTrainResult *r)
{
    const int hidden[2] = { 16, 16 };
    Mlp *m = new_or_fail(4, hidden, 2, 1, MLP_RELU, init_seed);
    MlpTrainOpts o = { .epochs = 15, .batch = 16, .val_frac = 0.25, .seed = train_seed,
                       .fit_scaling = true };
    Err err = { { 0 } };
    if (mlp_train(m, X, Y, n, &o, r, &err) < 0) fail_msg("mlp_train: %s", err.msg);
    return m;
}

static void test_determinism(void **state)
{
    (void)state;
    enum { N = 300 };
    double X[N * 4], Y[N];
    make_data(X, Y, N, 3);
    MlpTrainResult ra, rb, rc, rd;
    Mlp *a = train_with(1, 2, X, Y, N, &ra);
    Mlp *b = train_with(1, 2, X, Y, N, &rb);
    Mlp *c = train_with(1, 3, X, Y, N, &rc);   /* another split and order */
    Mlp *d = train_with(7, 2, X, Y, N, &rd);   /* other initial weights */
    assert_true(same_params(a, b));
    assert_memory_equal(&ra, &rb, sizeof ra);
    assert_false(same_params(a, c));
    assert_false(same_params(a, d));
    assert_true(ra.val_loss != rc.val_loss);

    /* and the initial weights alone */
    const int hidden[2] = { 16, 16 };
    Mlp *e = new_or_fail(4, hidden, 2, 1, MLP_RELU, 1);
    Mlp *f = new_or_fail(4, hidden, 2, 1, MLP_RELU, 1);
    Mlp *g = new_or_fail(4, hidden, 2, 1, MLP_RELU, 2);
    assert_true(same_params(e, f));
    assert_false(same_params(e, g));
    mlp_free(a), mlp_free(b), mlp_free(c), mlp_free(d), mlp_free(e), mlp_free(f), mlp_free(g);
}

/* He init for relu: the weights of the first layer have variance 2 / nin */
static void test_init_scale(void **state)
{
    (void)state;
    const int hidden[1] = { 500 };
    Mlp *m = new_or_fail(200, hidden, 1, 1, MLP_RELU, 6);
    const double *p = mlp_params(m);
    double s = 0, ss = 0;
    int nw = 200 * 500;
    for (int i = 0; i < nw; i++) s += p[i], ss += p[i] * p[i];
    NEAR_TOL(s / nw, 0.0, 0, 1.5e-3);            /* 5 sd of the mean: 0.1 / sqrt(1e5) */
    NEAR_REL(ss / nw, 2.0 / 200, 0.02);
    for (int i = nw; i < nw + 500; i++) assert_true(p[i] == 0);   /* biases */
    mlp_free(m);

    Mlp *t = new_or_fail(200, hidden, 1, 1, MLP_TANH, 6);   /* Xavier: 2 / (200 + 500) */
    p = mlp_params(t);
    ss = 0;
    for (int i = 0; i < nw; i++) ss += p[i] * p[i];
    NEAR_REL(ss / nw, 2.0 / 700, 0.02);
    mlp_free(t);
}

/* --- early stopping --------------------------------------------------------- */

typedef struct {
    int calls;
    int stop_at;
    double val[1000];
} Trace;

static int record(void *ctx, int epoch, double train_loss, double val_loss)
{
    Trace *t = ctx;
    t->calls++;
    if (epoch != t->calls) fail_msg("progress: epoch %d on call %d", epoch, t->calls);
    assert_true(isfinite(train_loss));
    t->val[epoch - 1] = val_loss;
    return t->stop_at && epoch >= t->stop_at;
}

static void test_early_stopping(void **state)
{
    (void)state;
    enum { N = 150, EPOCHS = 600, PATIENCE = 10 };
    double X[N * 4], Y[N];
    make_data(X, Y, N, 8);
    for (int i = 0; i < N; i++) Y[i] += 0.5 * sin(37.0 * i);   /* noise a wide net will chase */
    uint8_t mask[N];
    for (int i = 0; i < N; i++) mask[i] = i % 3 == 0;   /* 50 validation rows */

    const int hidden[2] = { 64, 64 };
    Mlp *m = new_or_fail(4, hidden, 2, 1, MLP_RELU, 5);
    Trace tr = { 0 };
    MlpTrainOpts o = { .adam = { .lr = 1e-2 }, .epochs = EPOCHS, .batch = 16,
                       .val_frac = 0.9,   /* ignored: the mask decides */
                       .val_mask = mask, .patience = PATIENCE, .seed = 1,
                       .progress = record, .ctx = &tr };
    MlpTrainResult r;
    Err err = { { 0 } };
    assert_int_equal(mlp_train(m, X, Y, N, &o, &r, &err), 0);
    assert_int_equal(r.nval, 50);
    assert_int_equal(r.ntrain, 100);
    assert_int_equal(tr.calls, r.epochs);
    assert_true(r.best_epoch >= 1 && r.best_epoch <= r.epochs);
    /* it overfits, so patience ends it well before the last epoch */
    if (!(r.epochs < EPOCHS)) fail_msg("ran all %d epochs (best %d)", r.epochs, r.best_epoch);
    assert_int_equal(r.epochs - r.best_epoch, PATIENCE);
    /* the kept epoch is the best one seen */
    for (int e = 0; e < r.epochs; e++) assert_true(tr.val[e] >= r.val_loss);
    assert_true(tr.val[r.best_epoch - 1] == r.val_loss);

    /* the kept weights give the reported losses (identity scaling: raw = standardised) */
    int nv = 0, nt = 0;
    NEAR_REL(sse(m, X, Y, N, mask, 1, &nv) / 50, r.val_loss, 1e-12);
    NEAR_REL(sse(m, X, Y, N, mask, 0, &nt) / 100, r.train_loss, 1e-12);
    assert_int_equal(nv, 50);
    assert_int_equal(nt, 100);
    mlp_free(m);

    /* a progress callback that says stop */
    Mlp *m2 = new_or_fail(4, hidden, 2, 1, MLP_RELU, 5);
    Trace t2 = { .stop_at = 3 };
    o.ctx = &t2;
    assert_int_equal(mlp_train(m2, X, Y, N, &o, &r, &err), 0);
    assert_int_equal(r.epochs, 3);
    assert_int_equal(t2.calls, 3);
    assert_true(r.best_epoch <= 3);
    mlp_free(m2);
}

/* fit_scaling sees the training rows only: the same as fitting them by hand */
static void test_fit_scaling_training_rows(void **state)
{
    (void)state;
    enum { N = 120 };
    double X[N * 4], Y[N], Xt[N * 4], Yt[N];
    make_data(X, Y, N, 12);
    uint8_t mask[N];
    int nt = 0;
    for (int i = 0; i < N; i++) {
        mask[i] = i >= 90;
        X[i * 4] += mask[i] ? 50 : 0;   /* validation rows far off: they would move the mean */
        if (!mask[i]) {
            memcpy(Xt + nt * 4, X + i * 4, 4 * sizeof *X);
            Yt[nt++] = Y[i];
        }
    }
    const int hidden[1] = { 8 };
    Mlp *a = new_or_fail(4, hidden, 1, 1, MLP_TANH, 3), *b = mlp_clone(a);
    MlpTrainOpts o = { .epochs = 4, .val_mask = mask, .seed = 1, .fit_scaling = true };
    Err err = { { 0 } };
    assert_int_equal(mlp_train(a, X, Y, N, &o, NULL, &err), 0);
    mlp_fit_scaling(b, Xt, Yt, nt);
    o.fit_scaling = false;
    assert_int_equal(mlp_train(b, X, Y, N, &o, NULL, &err), 0);
    check_twins(a, b);
    mlp_free(a);
    mlp_free(b);
}

/* a constant column gets std 1, not the rounding noise of its mean */
static void test_constant_column(void **state)
{
    (void)state;
    double X[5 * 2], Y[5];
    for (int i = 0; i < 5; i++) X[i * 2] = i, X[i * 2 + 1] = 0.1, Y[i] = 7;
    const int hidden[1] = { 4 };
    Mlp *m = new_or_fail(2, hidden, 1, 1, MLP_TANH, 1), *c = mlp_clone(m);
    mlp_fit_scaling(m, X, Y, 5);
    const double x1[2] = { 2, 1.1 };
    double y, yc;
    mlp_predict(m, x1, &y);
    assert_true(isfinite(y) && fabs(y - 7) < 10);   /* ystd 1 too: y = 7 + z */

    /* a std of 0 given by hand is stored as 1 */
    const double mean[2] = { 2, 0.1 }, sd0[2] = { 0, 0 }, sd1[2] = { 1, 1 };
    mlp_set_scaling(m, mean, sd0, NULL, sd0);
    mlp_set_scaling(c, mean, sd1, NULL, sd1);
    const double ym = 7;
    mlp_set_scaling(c, NULL, NULL, &ym, NULL);
    mlp_predict(m, x1, &y);
    mlp_predict(c, x1, &yc);
    assert_true(y == yc);
    mlp_free(m);
    mlp_free(c);
}

/* --- bad input ---------------------------------------------------------------- */

static void test_bad_input(void **state)
{
    (void)state;
    Err err;
    const int h2[2] = { 4, 4 }, h8[8] = { 4, 4, 4, 4, 4, 4, 4, 4 }, hbad[2] = { 4, 0 };
    const int hwide[1] = { MLP_MAX_WIDTH + 1 };
#define REFUSED_NEW(call, sub)                                                           \
    do {                                                                                 \
        err.msg[0] = 0;                                                                  \
        Mlp *m_ = (call);                                                                \
        if (m_) {                                                                        \
            mlp_free(m_);                                                                \
            fail_msg("%s accepted", #call);                                              \
        }                                                                                \
        assert_true(err.msg[0] != 0);                                                    \
        CONTAINS(err.msg, sub);                                                          \
    } while (0)
    REFUSED_NEW(mlp_new(0, h2, 2, 1, MLP_RELU, 1, &err), "nin = 0");
    REFUSED_NEW(mlp_new(MLP_MAX_WIDTH + 1, h2, 2, 1, MLP_RELU, 1, &err), "nin");
    REFUSED_NEW(mlp_new(3, h2, 2, 0, MLP_RELU, 1, &err), "nout = 0");
    REFUSED_NEW(mlp_new(3, h8, 8, 1, MLP_RELU, 1, &err), "8 hidden layers");
    REFUSED_NEW(mlp_new(3, h2, -1, 1, MLP_RELU, 1, &err), "hidden layers");
    REFUSED_NEW(mlp_new(3, hbad, 2, 1, MLP_RELU, 1, &err), "hidden[1] = 0");
    REFUSED_NEW(mlp_new(3, hwide, 1, 1, MLP_RELU, 1, &err), "hidden[0]");
    REFUSED_NEW(mlp_new(3, NULL, 2, 1, MLP_RELU, 1, &err), "NULL");
    REFUSED_NEW(mlp_new(3, h2, 2, 1, (MlpAct)7, 1, &err), "activation");
    /* the widest and deepest allowed are fine */
    Mlp *ok = mlp_new(MLP_MAX_WIDTH, h8, MLP_MAX_LAYERS - 1, MLP_MAX_WIDTH, MLP_RELU, 1, &err);
    assert_non_null(ok);
    mlp_free(ok);

    enum { N = 10 };
    double X[N * 4], Y[N];
    make_data(X, Y, N, 1);
    Mlp *m = new_or_fail(4, h2, 2, 1, MLP_RELU, 1);
    Mlp *before = mlp_clone(m);
    MlpTrainOpts o = { .epochs = 2, .fit_scaling = true };
#define REFUSED_TRAIN(x, y, n, opts, sub)                                                \
    do {                                                                                 \
        err.msg[0] = 0;                                                                  \
        assert_int_equal(mlp_train(m, x, y, n, opts, NULL, &err), -1);                   \
        assert_true(err.msg[0] != 0);                                                    \
        CONTAINS(err.msg, sub);                                                          \
        assert_true(same_params(m, before)); /* a refusal changes nothing */            \
    } while (0)
    REFUSED_TRAIN(X, Y, 0, &o, "n = 0");
    REFUSED_TRAIN(X, Y, -3, &o, "n = -3");
    X[3 * 4 + 1] = NAN;
    REFUSED_TRAIN(X, Y, N, &o, "X[3][1]");
    X[3 * 4 + 1] = 0;
    Y[7] = INFINITY;
    REFUSED_TRAIN(X, Y, N, &o, "Y[7][0]");
    Y[7] = 0;

    MlpTrainOpts v = o;
    v.val_frac = 1.0;
    REFUSED_TRAIN(X, Y, N, &v, "val_frac");
    v.val_frac = 0.97;   /* rounds to all 10 rows */
    REFUSED_TRAIN(X, Y, N, &v, "takes all 10 rows");
    uint8_t all[N];
    memset(all, 1, sizeof all);
    v.val_frac = 0;
    v.val_mask = all;
    REFUSED_TRAIN(X, Y, N, &v, "takes all 10 rows");
    v = o;
    v.adam.lr = -1;
    REFUSED_TRAIN(X, Y, N, &v, "lr");
    v = o;
    v.adam.beta1 = 1.0;
    REFUSED_TRAIN(X, Y, N, &v, "beta1");
    v = o;
    v.batch = -1;
    REFUSED_TRAIN(X, Y, N, &v, "batch");
    v = o;
    v.huber = -0.1;
    REFUSED_TRAIN(X, Y, N, &v, "huber");
    v.huber = NAN;
    REFUSED_TRAIN(X, Y, N, &v, "huber");
    REFUSED_TRAIN(X, NULL, N, &o, "NULL");
    double rw[N];
    for (int i = 0; i < N; i++) rw[i] = 1;
    v = o;
    v.row_weight = rw;
    rw[7] = -1;
    REFUSED_TRAIN(X, Y, N, &v, "row_weight[7]");
    rw[7] = INFINITY;
    REFUSED_TRAIN(X, Y, N, &v, "row_weight[7]");
    rw[7] = 0;
    assert_int_equal(mlp_train(m, X, Y, N, &v, NULL, &err), 0);

    /* one row, no validation: fine */
    assert_int_equal(mlp_train(m, X, Y, 1, &o, NULL, &err), 0);
    /* NULL options: every default */
    MlpTrainResult r;
    assert_int_equal(mlp_train(m, X, Y, N, NULL, &r, &err), 0);
    assert_int_equal(r.epochs, 200);
    mlp_free(before);
    mlp_free(m);

    mlp_free(NULL);
    mlp_work_free(NULL);
}

/* --- thread-safe prediction --------------------------------------------------- */

enum { TROWS = 500 };
typedef struct {
    const Mlp *m;
    const double *X;
    double Y[TROWS * 2];
} Job;

static void *predict_all(void *arg)
{
    Job *j = arg;
    for (int i = 0; i < TROWS; i++) mlp_predict(j->m, j->X + i * 5, j->Y + i * 2);
    return NULL;
}

static void test_predict_threads(void **state)
{
    (void)state;
    const int hidden[2] = { 32, 32 };
    Mlp *m = new_or_fail(5, hidden, 2, 2, MLP_GELU, 2);
    double *X = malloc(sizeof(double) * TROWS * 5);
    uint64_t s = 9;
    for (int i = 0; i < TROWS * 5; i++) X[i] = rng_sym(&s) * 3;
    Job *jobs = calloc(5, sizeof *jobs);
    for (int t = 0; t < 5; t++) jobs[t].m = m, jobs[t].X = X;
    predict_all(&jobs[4]);   /* the serial answer */
    pthread_t th[4];
    for (int t = 0; t < 4; t++)
        assert_int_equal(pthread_create(&th[t], NULL, predict_all, &jobs[t]), 0);
    for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < 4; t++) assert_memory_equal(jobs[t].Y, jobs[4].Y, sizeof jobs[t].Y);
    free(jobs);
    free(X);
    mlp_free(m);
}

/* --- REINFORCE ---------------------------------------------------------------- */

static void softmax3(const double *z, double *p)
{
    double mx = fmax(z[0], fmax(z[1], z[2])), s = 0;
    for (int i = 0; i < 3; i++) s += p[i] = exp(z[i] - mx);
    for (int i = 0; i < 3; i++) p[i] /= s;
}

/* A policy over 3 actions on one fixed input learns to pick the one that pays
 * most, from sampled episodes only: the loop search/ will run. */
static void test_reinforce_softmax(void **state)
{
    (void)state;
    const int hidden[1] = { 16 };
    Mlp *pol = new_or_fail(2, hidden, 1, 3, MLP_TANH, 5);
    MlpWork *w = mlp_work_new(pol);
    const double x[2] = { 0.3, -0.7 }, reward[3] = { 0.2, 1.0, 0.5 };
    const MlpAdam adam = { .lr = 0.01 };
    double z[3], p[3], baseline = 0;
    mlp_predict(pol, x, z);
    softmax3(z, p);
    assert_true(p[1] < 0.6);   /* not there already */

    uint64_t s = 123;
    enum { STEPS = 300, EPISODES = 8 };
    for (int step = 0; step < STEPS; step++) {
        double mean_r = 0;
        for (int e = 0; e < EPISODES; e++) {
            mlp_forward(pol, w, x, z);
            softmax3(z, p);
            double u = rng_unif(&s);
            int a = u < p[0] ? 0 : u < p[0] + p[1] ? 1 : 2;
            double adv = reward[a] - baseline;
            /* loss -adv log p[a]: d/dz_i = -adv (1[i == a] - p_i) */
            double dz[3];
            for (int i = 0; i < 3; i++) dz[i] = -adv * ((i == a) - p[i]);
            mlp_backward(pol, w, dz);
            mean_r += reward[a] / EPISODES;
        }
        mlp_adam_step(pol, w, &adam, 1.0 / EPISODES);
        baseline = 0.9 * baseline + 0.1 * mean_r;
    }
    mlp_predict(pol, x, z);
    softmax3(z, p);
    if (!(p[1] > 0.9)) fail_msg("after %d steps p = (%.3f, %.3f, %.3f)", STEPS, p[0], p[1], p[2]);
    mlp_work_free(w);
    mlp_free(pol);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck_relu),
        cmocka_unit_test(test_gradcheck_tanh),
        cmocka_unit_test(test_gradcheck_gelu),
        cmocka_unit_test(test_gelu_values),
        cmocka_unit_test(test_adam_by_hand),
        cmocka_unit_test(test_train_matches_pieces),
        cmocka_unit_test(test_learns_nonlinear),
        cmocka_unit_test(test_learns_linear),
        cmocka_unit_test(test_huber_outliers),
        cmocka_unit_test(test_row_weights),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_load_rejects),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_init_scale),
        cmocka_unit_test(test_early_stopping),
        cmocka_unit_test(test_fit_scaling_training_rows),
        cmocka_unit_test(test_constant_column),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_predict_threads),
        cmocka_unit_test(test_reinforce_softmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
