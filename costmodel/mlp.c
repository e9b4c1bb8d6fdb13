/*
 * mlp.c — the multi-layer perceptron of mlp.h: initialisation, the forward
 * and backward passes, Adam, supervised training with early stopping, and
 * the byte format of mlp_save.
 *
 * Two paths compute the same arithmetic. The row path (mlp_predict,
 * mlp_forward, mlp_backward) takes one row at a time on the stack, so a
 * shared Mlp can predict from many threads; it is the reference that the
 * gradient check of tests/test_mlp.c holds to. The batch path (mlp_train)
 * takes a mini-batch as matrices and runs the products through gemm_acc,
 * whose loops GCC and clang vectorise at -O2; every sum in it runs in the
 * same order as in the row path.
 *
 * Legend: L = layers (hidden + output), w[l] = width of layer l's input
 * (w[0] = nin, w[L] = nout), W_l (w[l+1] x w[l], row-major), b_l,
 * u_l = input of layer l (u_0 = standardised x), h = W_l u_l + b_l,
 * g = act'(h), z = network output in standardised units, t = standardised
 * target, B = rows in a mini-batch.
 */
#include "costmodel/mlp.h"
#include "ir/util.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct Mlp {
    int nlayers;                    /* L */
    int w[MLP_MAX_LAYERS + 1];      /* w[0] = nin ... w[L] = nout */
    MlpAct act;
    int nparams;
    int woff[MLP_MAX_LAYERS];       /* W_l in theta; b_l follows it */
    int uoff[MLP_MAX_LAYERS];       /* u_l in MlpWork.u */
    int goff[MLP_MAX_LAYERS];       /* g of hidden layer l in MlpWork.g */
    int nu, ng;                     /* sizes of MlpWork.u and .g */
    uint64_t adam_t;                /* Adam steps taken, for the bias correction */
    /* one block, in this order (mlp_clone and mlp_save rely on it): */
    double *theta;                  /* nparams: W_0 b_0 W_1 b_1 ... */
    double *adam_m, *adam_v;        /* nparams each: Adam's first and second moments */
    double *xmean, *xstd;           /* nin each */
    double *ymean, *ystd;           /* nout each */
};

struct MlpWork {
    double *grad;                   /* accumulated dL/dtheta, laid out as theta */
    double *u;                      /* u_l of the last forward, layer by layer */
    double *g;                      /* g of every hidden unit of the last forward */
};

static int nin_of(const Mlp *m) { return m->w[0]; }
static int nout_of(const Mlp *m) { return m->w[m->nlayers]; }
/* doubles in the block at theta */
static size_t nblock(const Mlp *m)
{
    return 3 * (size_t)m->nparams + 2 * (size_t)(nin_of(m) + nout_of(m));
}

/* ----------------------------------------------------------------------------
 * Random numbers: SplitMix64, a counter run through a mixer, so a stream is
 * the same on every platform and needs no state beyond the counter. */

typedef struct {
    uint64_t s;
} Rng;

static uint64_t rng_next(Rng *r) { return splitmix64(&r->s); }

/* uniform in [0, 1), 53 bits */
static double rng_unif(Rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1p-53;
}

#define TWO_PI 6.283185307179586

/* standard normal by Box-Muller; only the cosine half is used, which costs a
 * second log per draw but keeps the stream free of hidden state */
static double rng_normal(Rng *r)
{
    double u1 = 1.0 - rng_unif(r);   /* (0, 1]: log stays finite */
    double u2 = rng_unif(r);
    return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

/* uniform integer in [0, k) */
static int rng_below(Rng *r, int k)
{
    int i = (int)(rng_unif(r) * k);
    return i < k ? i : k - 1;
}

/* Fisher-Yates */
static void rng_shuffle(Rng *r, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = rng_below(r, i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* Each use of a seed gets its own stream, so the split and batch order of
 * mlp_train do not repeat the draws that initialised the weights. */
#define STREAM_INIT 0x696e6974ull   /* "init" */
#define STREAM_TRAIN 0x74726e00ull  /* "trn" */

static Rng rng_stream(uint64_t seed, uint64_t stream)
{
    Rng r = { seed ^ (stream * 0xd1342543de82ef95ull) };
    rng_next(&r);
    return r;
}

/* ----------------------------------------------------------------------------
 * Activations. The derivative is taken in the forward pass, where tanh has
 * just been computed, and kept for the backward pass. */

#define GELU_C 0.7978845608028654   /* sqrt(2 / pi) */
#define GELU_K 0.044715

/* h[i] = act(h[i]) and g[i] = act'(h[i]) for n units. The switch sits
 * outside the loops so each loop is plain arithmetic. */
static void act_apply(MlpAct act, double *h, double *g, size_t n)
{
    switch (act) {
    case MLP_RELU:
        /* a product, not a branch: signs are random, so a branch mispredicts
         * half the time (it cost a sixth of training); -0 for h < 0 is harmless */
        for (size_t i = 0; i < n; i++) {
            double on = h[i] > 0 ? 1.0 : 0.0;
            g[i] = on;
            h[i] *= on;
        }
        break;
    case MLP_TANH:
        for (size_t i = 0; i < n; i++) {
            double a = tanh(h[i]);
            g[i] = 1.0 - a * a;
            h[i] = a;
        }
        break;
    case MLP_GELU:
        /* 0.5 h (1 + tanh(c (h + k h^3))), the tanh form of GPT-2 and BERT */
        for (size_t i = 0; i < n; i++) {
            double x = h[i], t = tanh(GELU_C * (x + GELU_K * x * x * x));
            double dt = (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_K * x * x);
            g[i] = 0.5 * (1.0 + t) + 0.5 * x * dt;
            h[i] = 0.5 * x * (1.0 + t);
        }
        break;
    }
}

/* ----------------------------------------------------------------------------
 * Creation */

/* Points the arrays into the block that starts at m->theta. */
static void carve(Mlp *m)
{
    m->adam_m = m->theta + m->nparams;
    m->adam_v = m->adam_m + m->nparams;
    m->xmean = m->adam_v + m->nparams;
    m->xstd = m->xmean + nin_of(m);
    m->ymean = m->xstd + nin_of(m);
    m->ystd = m->ymean + nout_of(m);
}

/* The shape, offsets and one zeroed block of doubles; the caller fills them. */
static Mlp *mlp_alloc(int nin, const int *hidden, int nhidden, int nout, MlpAct act)
{
    Mlp *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->nlayers = nhidden + 1;
    m->act = act;
    m->w[0] = nin;
    for (int l = 0; l < nhidden; l++) m->w[l + 1] = hidden[l];
    m->w[m->nlayers] = nout;
    int np = 0, nu = 0, ng = 0;
    for (int l = 0; l < m->nlayers; l++) {
        m->woff[l] = np;
        np += m->w[l + 1] * m->w[l] + m->w[l + 1];
        m->uoff[l] = nu;
        nu += m->w[l];
        m->goff[l] = ng;
        if (l < m->nlayers - 1) ng += m->w[l + 1];
    }
    m->nparams = np;
    m->nu = nu;
    m->ng = ng;
    m->theta = calloc(nblock(m), sizeof(double));
    if (!m->theta) {
        free(m);
        return NULL;
    }
    carve(m);
    for (int k = 0; k < nin; k++) m->xstd[k] = 1.0;
    for (int o = 0; o < nout; o++) m->ystd[o] = 1.0;
    return m;
}

static int check_shape(int nin, const int *hidden, int nhidden, int nout, MlpAct act, Err *err)
{
    if (nin < 1 || nin > MLP_MAX_WIDTH)
        return err_set(err, "nin = %d: the input width must be in 1..%d", nin, MLP_MAX_WIDTH);
    if (nout < 1 || nout > MLP_MAX_WIDTH)
        return err_set(err, "nout = %d: the output width must be in 1..%d", nout, MLP_MAX_WIDTH);
    if (nhidden < 0 || nhidden > MLP_MAX_LAYERS - 1)
        return err_set(err, "%d hidden layers: at most %d (MLP_MAX_LAYERS counts the output layer)",
                       nhidden, MLP_MAX_LAYERS - 1);
    if (nhidden > 0 && !hidden)
        return err_set(err, "%d hidden layers but no widths (hidden is NULL)", nhidden);
    for (int l = 0; l < nhidden; l++)
        if (hidden[l] < 1 || hidden[l] > MLP_MAX_WIDTH)
            return err_set(err, "hidden[%d] = %d: a layer width must be in 1..%d", l, hidden[l],
                           MLP_MAX_WIDTH);
    if (act != MLP_RELU && act != MLP_TANH && act != MLP_GELU)
        return err_set(err, "activation %d is none of MLP_RELU, MLP_TANH, MLP_GELU", (int)act);
    return 0;
}

Mlp *mlp_new(int nin, const int *hidden, int nhidden, int nout, MlpAct act, uint64_t seed,
             Err *err)
{
    if (check_shape(nin, hidden, nhidden, nout, act, err) < 0) {
        err_prefix(err, "mlp_new");
        return NULL;
    }
    Mlp *m = mlp_alloc(nin, hidden, nhidden, nout, act);
    if (!m) {
        err_set(err, "mlp_new: out of memory");
        return NULL;
    }
    /* He (std sqrt(2/fan_in)) keeps the variance through relu and gelu, which
     * zero about half their inputs; Xavier (sqrt(2/(fan_in+fan_out))) suits
     * tanh. The output layer has no activation after it, so it takes Xavier
     * whatever the hidden layers use. */
    Rng r = rng_stream(seed, STREAM_INIT);
    for (int l = 0; l < m->nlayers; l++) {
        int ni = m->w[l], no = m->w[l + 1];
        bool he = l < m->nlayers - 1 && act != MLP_TANH;
        double sd = he ? sqrt(2.0 / ni) : sqrt(2.0 / (ni + no));
        double *W = m->theta + m->woff[l];
        for (int i = 0; i < no * ni; i++) W[i] = sd * rng_normal(&r);
    }
    return m;
}

void mlp_free(Mlp *m)
{
    if (!m) return;
    free(m->theta);
    free(m);
}

Mlp *mlp_clone(const Mlp *m)
{
    Mlp *c = malloc(sizeof *c);
    if (!c) return NULL;
    *c = *m;
    c->theta = malloc(nblock(m) * sizeof(double));
    if (!c->theta) {
        free(c);
        return NULL;
    }
    memcpy(c->theta, m->theta, nblock(m) * sizeof(double));
    carve(c);
    return c;
}

int mlp_nin(const Mlp *m) { return nin_of(m); }
int mlp_nout(const Mlp *m) { return nout_of(m); }
int mlp_nparams(const Mlp *m) { return m->nparams; }
double *mlp_params(Mlp *m) { return m->theta; }
const double *mlp_grads(const MlpWork *w) { return w->grad; }

/* ----------------------------------------------------------------------------
 * Scaling */

/* A std that is 0 (a constant column) would divide by zero, and one that is
 * negative or not finite cannot come from data: both are stored as 1. */
static double std_or_one(double s)
{
    return s > 0 && isfinite(s) ? s : 1.0;
}

void mlp_set_scaling(Mlp *m, const double *xmean, const double *xstd, const double *ymean,
                     const double *ystd)
{
    int nin = nin_of(m), nout = nout_of(m);
    for (int k = 0; k < nin; k++) {
        if (xmean) m->xmean[k] = xmean[k];
        if (xstd) m->xstd[k] = std_or_one(xstd[k]);
    }
    for (int o = 0; o < nout; o++) {
        if (ymean) m->ymean[o] = ymean[o];
        if (ystd) m->ystd[o] = std_or_one(ystd[o]);
    }
}

/* Mean and population std of column c of the rows of V (ld values a row)
 * listed in rows (all n rows when rows is NULL). Two passes: the deviations
 * from the mean, not sum(v^2) - n*mean^2, which cancels. A constant column
 * gets std 0 exactly (stored as 1), not the rounding noise of its mean. */
static void column_stats(const double *V, int ld, int c, const int *rows, int n, double *mean,
                         double *sd)
{
    double s = 0, lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        double v = V[(size_t)(rows ? rows[i] : i) * (size_t)ld + (size_t)c];
        s += v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    *mean = s / n;
    if (lo == hi) {
        *sd = 0;
        return;
    }
    double ss = 0;
    for (int i = 0; i < n; i++) {
        double d = V[(size_t)(rows ? rows[i] : i) * (size_t)ld + (size_t)c] - *mean;
        ss += d * d;
    }
    *sd = sqrt(ss / n);
}

static void fit_scaling_rows(Mlp *m, const double *X, const double *Y, const int *rows, int n)
{
    if (n < 1) return;
    int nin = nin_of(m), nout = nout_of(m);
    for (int k = 0; k < nin; k++) {
        double mu, sd;
        column_stats(X, nin, k, rows, n, &mu, &sd);
        m->xmean[k] = mu;
        m->xstd[k] = std_or_one(sd);
    }
    if (!Y) return;
    for (int o = 0; o < nout; o++) {
        double mu, sd;
        column_stats(Y, nout, o, rows, n, &mu, &sd);
        m->ymean[o] = mu;
        m->ystd[o] = std_or_one(sd);
    }
}

void mlp_fit_scaling(Mlp *m, const double *X, const double *Y, int n)
{
    fit_scaling_rows(m, X, Y, NULL, n);
}

/* ----------------------------------------------------------------------------
 * The row path */

/* One row through the network on the stack. keep_u and keep_g (both NULL or
 * both MlpWork's) receive every u_l and g for mlp_backward. */
static void forward_row(const Mlp *m, const double *x, double *y, double *keep_u, double *keep_g)
{
    double buf[2][MLP_MAX_WIDTH];
    double *u = buf[0], *h = buf[1];
    int nin = nin_of(m), nout = nout_of(m), L = m->nlayers;
    for (int k = 0; k < nin; k++) u[k] = (x[k] - m->xmean[k]) / m->xstd[k];
    for (int l = 0; l < L; l++) {
        int ni = m->w[l], no = m->w[l + 1];
        const double *W = m->theta + m->woff[l], *b = W + (size_t)no * ni;
        if (keep_u) memcpy(keep_u + m->uoff[l], u, (size_t)ni * sizeof *u);
        for (int j = 0; j < no; j++) {
            const double *wj = W + (size_t)j * ni;
            double s = b[j];
            for (int k = 0; k < ni; k++) s += u[k] * wj[k];
            h[j] = s;
        }
        if (l < L - 1) {
            double gbuf[MLP_MAX_WIDTH];
            act_apply(m->act, h, keep_g ? keep_g + m->goff[l] : gbuf, (size_t)no);
        }
        double *t = u;
        u = h;
        h = t;
    }
    for (int o = 0; o < nout; o++) y[o] = u[o] * m->ystd[o] + m->ymean[o];
}

void mlp_predict(const Mlp *m, const double *x, double *y)
{
    forward_row(m, x, y, NULL, NULL);
}

MlpWork *mlp_work_new(const Mlp *m)
{
    MlpWork *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    /* one block: grad, u, g (at least one double so calloc never sees 0) */
    size_t n = (size_t)m->nparams + (size_t)m->nu + (size_t)m->ng;
    w->grad = calloc(n ? n : 1, sizeof(double));
    if (!w->grad) {
        free(w);
        return NULL;
    }
    w->u = w->grad + m->nparams;
    w->g = w->u + m->nu;
    return w;
}

void mlp_work_free(MlpWork *w)
{
    if (!w) return;
    free(w->grad);
    free(w);
}

void mlp_forward(const Mlp *m, MlpWork *w, const double *x, double *y)
{
    forward_row(m, x, y, w->u, w->g);
}

/* Back from dL/dz: for each layer from the output, dW += d u^T, db += d, and
 * below the first layer d <- (W^T d) * g. No gradient is formed for x. */
static void backward_row(const Mlp *m, MlpWork *w, double *d)
{
    double buf[MLP_MAX_WIDTH];
    double *du = buf;
    for (int l = m->nlayers - 1; l >= 0; l--) {
        int ni = m->w[l], no = m->w[l + 1];
        const double *u = w->u + m->uoff[l];
        double *gW = w->grad + m->woff[l], *gb = gW + (size_t)no * ni;
        for (int j = 0; j < no; j++) {
            double dj = d[j];
            double *gw = gW + (size_t)j * ni;
            for (int k = 0; k < ni; k++) gw[k] += dj * u[k];
            gb[j] += dj;
        }
        if (l == 0) break;
        const double *W = m->theta + m->woff[l];
        for (int k = 0; k < ni; k++) du[k] = 0;
        for (int j = 0; j < no; j++) {
            double dj = d[j];
            const double *wj = W + (size_t)j * ni;
            for (int k = 0; k < ni; k++) du[k] += dj * wj[k];
        }
        const double *g = w->g + m->goff[l - 1];
        for (int k = 0; k < ni; k++) du[k] *= g[k];
        double *t = d;
        d = du;
        du = t;
    }
}

void mlp_backward(const Mlp *m, MlpWork *w, const double *dy)
{
    double d[MLP_MAX_WIDTH];
    /* y = z * ystd + ymean, so dL/dz = dL/dy * ystd */
    for (int o = 0; o < nout_of(m); o++) d[o] = dy[o] * m->ystd[o];
    backward_row(m, w, d);
}

/* ----------------------------------------------------------------------------
 * Adam */

static MlpAdam adam_resolve(const MlpAdam *a)
{
    MlpAdam o = a ? *a : (MlpAdam){ 0 };
    if (o.lr == 0) o.lr = 1e-3;
    if (o.beta1 == 0) o.beta1 = 0.9;
    if (o.beta2 == 0) o.beta2 = 0.999;
    if (o.eps == 0) o.eps = 1e-8;
    return o;
}

/* theta -= lr (mhat / (sqrt(vhat) + eps) + wd theta), with mhat, vhat the
 * bias-corrected moments of grad * scale; then grad = 0. Weight decay is
 * decoupled from the gradient as in AdamW (PyTorch's form, lr * wd) and
 * spares the biases, which set offsets, not the size of the function. */
static void adam_update(Mlp *m, double *grad, const MlpAdam *a, double scale)
{
    MlpAdam o = adam_resolve(a);
    m->adam_t++;
    /* mhat / (sqrt(vhat) + eps) = (m / c1) / (sqrt(v) / sqrt(c2) + eps): one
     * division and one root per parameter, where they cost as much as the
     * rest of the step together */
    double c1 = 1.0 - pow(o.beta1, (double)m->adam_t);
    double rc2 = 1.0 / sqrt(1.0 - pow(o.beta2, (double)m->adam_t));
    double lr1 = o.lr / c1, lrwd = o.lr * o.weight_decay;
    for (int l = 0; l < m->nlayers; l++) {
        int nw = m->w[l + 1] * m->w[l];
        int lo = m->woff[l], hi = lo + nw + m->w[l + 1];
        for (int i = lo; i < hi; i++) {
            double g = grad[i] * scale;
            double mi = o.beta1 * m->adam_m[i] + (1.0 - o.beta1) * g;
            double vi = o.beta2 * m->adam_v[i] + (1.0 - o.beta2) * g * g;
            m->adam_m[i] = mi;
            m->adam_v[i] = vi;
            double decay = i < lo + nw ? lrwd * m->theta[i] : 0.0;
            m->theta[i] -= lr1 * mi / (sqrt(vi) * rc2 + o.eps) + decay;
            grad[i] = 0;
        }
    }
}

void mlp_adam_step(Mlp *m, MlpWork *w, const MlpAdam *a, double scale)
{
    adam_update(m, w->grad, a, scale);
}

/* ----------------------------------------------------------------------------
 * The batch path of mlp_train.
 *
 * gemm_acc: C (R x N) += A (R x K) * B (K x N), B and C row-major and
 * contiguous, A read through strides (A(i,k) = A[i*ars + k*acs]) so that
 * one kernel also takes a transposed A. Eight columns of C stay in named
 * accumulators across the k loop: GCC and clang turn them into vector
 * registers at -O2 (about 4 GMAC/s in doubles on one x86-64 core without
 * -march), where a plain loop over columns would go through memory. Each
 * element still sums k = 0, 1, ... in order, as the row path does. */
static void gemm_acc(int R, int N, int K, const double *A, int ars, int acs, const double *B,
                     double *C)
{
    for (int i = 0; i < R; i++) {
        const double *a = A + (size_t)i * ars;
        double *c = C + (size_t)i * N;
        int n = 0;
        for (; n + 8 <= N; n += 8) {
            double c0 = c[n], c1 = c[n + 1], c2 = c[n + 2], c3 = c[n + 3];
            double c4 = c[n + 4], c5 = c[n + 5], c6 = c[n + 6], c7 = c[n + 7];
            const double *b = B + n;
            for (int k = 0; k < K; k++, b += N) {
                double ak = a[(size_t)k * acs];
                c0 += ak * b[0];
                c1 += ak * b[1];
                c2 += ak * b[2];
                c3 += ak * b[3];
                c4 += ak * b[4];
                c5 += ak * b[5];
                c6 += ak * b[6];
                c7 += ak * b[7];
            }
            c[n] = c0, c[n + 1] = c1, c[n + 2] = c2, c[n + 3] = c3;
            c[n + 4] = c4, c[n + 5] = c5, c[n + 6] = c6, c[n + 7] = c7;
        }
        for (; n < N; n++) {
            double s = c[n];
            for (int k = 0; k < K; k++) s += a[(size_t)k * acs] * B[(size_t)k * N + n];
            c[n] = s;
        }
    }
}

/* Scratch for up to cap rows, carved from one allocation. */
typedef struct {
    int cap;
    double *u[MLP_MAX_LAYERS];      /* u_l of each row: cap x w[l] */
    double *g[MLP_MAX_LAYERS];      /* g of hidden layer l: cap x w[l+1] */
    double *z, *t;                  /* output and target: cap x nout */
    double *d[2];                   /* dL/dh going down: cap x widest */
    double *wt;                     /* W_l^T at W_l's offset, for the forward product */
    double *grad;                   /* laid out as theta */
    double *block;
    double huber;                   /* 0: squared error; else its delta (MlpTrainOpts) */
    const double *row_weight;       /* per row of X, or NULL: 1 (MlpTrainOpts) */
    double *rw;                     /* the batch's rows' weights: cap */
} Batch;

static int batch_init(Batch *bt, const Mlp *m, int cap)
{
    memset(bt, 0, sizeof *bt);
    int L = m->nlayers, widest = 0;
    size_t n = 0;
    for (int l = 0; l <= L; l++) widest = m->w[l] > widest ? m->w[l] : widest;
    for (int l = 0; l < L; l++) n += (size_t)cap * m->w[l];
    n += (size_t)cap * m->ng + 2 * (size_t)cap * nout_of(m) + 2 * (size_t)cap * widest;
    n += 2 * (size_t)m->nparams + (size_t)cap;
    bt->block = malloc(n * sizeof(double));
    if (!bt->block) return -1;
    double *p = bt->block;
    bt->cap = cap;
    for (int l = 0; l < L; l++) {
        bt->u[l] = p;
        p += (size_t)cap * m->w[l];
        if (l < L - 1) {
            bt->g[l] = p;
            p += (size_t)cap * m->w[l + 1];
        }
    }
    bt->z = p, p += (size_t)cap * nout_of(m);
    bt->t = p, p += (size_t)cap * nout_of(m);
    bt->d[0] = p, p += (size_t)cap * widest;
    bt->d[1] = p, p += (size_t)cap * widest;
    bt->wt = p, p += m->nparams;
    bt->grad = p, p += m->nparams;
    bt->rw = p;
    memset(bt->grad, 0, (size_t)m->nparams * sizeof(double));
    return 0;
}

/* Copies rows idx[0..rows) of X and Y, standardised as the row path does. */
static void batch_gather(const Mlp *m, Batch *bt, const double *X, const double *Y, const int *idx,
                         int rows)
{
    int nin = nin_of(m), nout = nout_of(m);
    for (int r = 0; r < rows; r++) {
        const double *x = X + (size_t)idx[r] * nin, *y = Y + (size_t)idx[r] * nout;
        double *u = bt->u[0] + (size_t)r * nin, *t = bt->t + (size_t)r * nout;
        bt->rw[r] = bt->row_weight ? bt->row_weight[idx[r]] : 1;
        for (int k = 0; k < nin; k++) u[k] = (x[k] - m->xmean[k]) / m->xstd[k];
        for (int o = 0; o < nout; o++) t[o] = (y[o] - m->ymean[o]) / m->ystd[o];
    }
}

/* W^T of every layer, after each change of the weights: the forward product
 * wants the input index outermost. */
static void batch_sync(const Mlp *m, Batch *bt)
{
    for (int l = 0; l < m->nlayers; l++) {
        int ni = m->w[l], no = m->w[l + 1];
        const double *W = m->theta + m->woff[l];
        double *T = bt->wt + m->woff[l];
        for (int j = 0; j < no; j++)
            for (int k = 0; k < ni; k++) T[(size_t)k * no + j] = W[(size_t)j * ni + k];
    }
}

/* The loss of one error e = z - t: e^2, or with a Huber delta h, e^2 up to
 * |e| = h and 2h|e| - h^2 beyond (the same slope where they meet), so an
 * outlier pulls by a constant, not by its size. */
static inline double loss_of(double e, double h)
{
    double a = fabs(e);
    return h > 0 && a > h ? h * (2 * a - h) : e * e;
}

/* Its derivative. */
static inline double dloss_of(double e, double h)
{
    return h > 0 && fabs(e) > h ? (e > 0 ? 2 * h : -2 * h) : 2 * e;
}

/* Returns the sum of the loss over the batch, each row's times its weight. */
static double batch_forward(const Mlp *m, Batch *bt, int rows)
{
    int L = m->nlayers, nout = nout_of(m);
    for (int l = 0; l < L; l++) {
        int ni = m->w[l], no = m->w[l + 1];
        const double *b = m->theta + m->woff[l] + (size_t)no * ni;
        double *h = l < L - 1 ? bt->u[l + 1] : bt->z;
        for (int r = 0; r < rows; r++) memcpy(h + (size_t)r * no, b, (size_t)no * sizeof *b);
        gemm_acc(rows, no, ni, bt->u[l], ni, 1, bt->wt + m->woff[l], h);
        if (l < L - 1) act_apply(m->act, h, bt->g[l], (size_t)rows * no);
    }
    double ss = 0;
    for (size_t i = 0; i < (size_t)rows * nout; i++)
        ss += bt->rw[i / nout] * loss_of(bt->z[i] - bt->t[i], bt->huber);
    return ss;
}

/* Adds the gradient of the sum over rows of weight times mean_o loss(z - t) to
 * bt->grad. */
static void batch_backward(const Mlp *m, Batch *bt, int rows)
{
    int nout = nout_of(m);
    double *d = bt->d[0], *du = bt->d[1];
    for (size_t i = 0; i < (size_t)rows * nout; i++)
        d[i] = bt->rw[i / nout] * dloss_of(bt->z[i] - bt->t[i], bt->huber) / nout;
    for (int l = m->nlayers - 1; l >= 0; l--) {
        int ni = m->w[l], no = m->w[l + 1];
        double *gW = bt->grad + m->woff[l], *gb = gW + (size_t)no * ni;
        /* dW (no x ni) += d^T (no x rows) u_l (rows x ni) */
        gemm_acc(no, ni, rows, d, 1, no, bt->u[l], gW);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < no; j++) gb[j] += d[(size_t)r * no + j];
        if (l == 0) break;
        /* du (rows x ni) = d (rows x no) W_l (no x ni), then times g */
        memset(du, 0, (size_t)rows * ni * sizeof *du);
        gemm_acc(rows, ni, no, d, no, 1, m->theta + m->woff[l], du);
        const double *g = bt->g[l - 1];
        for (size_t i = 0; i < (size_t)rows * ni; i++) du[i] *= g[i];
        double *t = d;
        d = du;
        du = t;
    }
}

/* Mean over rows and outputs of loss(z - t), each row's times its weight, for
 * the n rows in idx. */
static double batch_loss(const Mlp *m, Batch *bt, const double *X, const double *Y, const int *idx,
                         int n)
{
    double ss = 0;
    batch_sync(m, bt);
    for (int i = 0; i < n; i += bt->cap) {
        int rows = n - i < bt->cap ? n - i : bt->cap;
        batch_gather(m, bt, X, Y, idx + i, rows);
        ss += batch_forward(m, bt, rows);
    }
    return ss / ((double)n * nout_of(m));
}

/* ----------------------------------------------------------------------------
 * mlp_train */

/* What the optimiser changes, so the best epoch can be put back. */
typedef struct {
    double *block;                  /* theta, adam_m, adam_v */
    uint64_t adam_t;
} Snapshot;

static void snap_take(Snapshot *s, const Mlp *m)
{
    memcpy(s->block, m->theta, 3 * (size_t)m->nparams * sizeof(double));
    s->adam_t = m->adam_t;
}

static void snap_restore(const Snapshot *s, Mlp *m)
{
    memcpy(m->theta, s->block, 3 * (size_t)m->nparams * sizeof(double));
    m->adam_t = s->adam_t;
}

static int check_finite(const double *V, int n, int ncol, const char *name, Err *err)
{
    for (size_t i = 0; i < (size_t)n * ncol; i++)
        if (!isfinite(V[i]))
            return err_set(err, "%s[%zu][%zu] = %g: every value must be finite", name,
                           i / (size_t)ncol, i % (size_t)ncol, V[i]);
    return 0;
}

static int check_opts(const MlpTrainOpts *o, const MlpAdam *a, Err *err)
{
    if (o->epochs < 0) return err_set(err, "epochs = %d: must be >= 0 (0: 200)", o->epochs);
    if (o->batch < 0) return err_set(err, "batch = %d: must be >= 0 (0: 64)", o->batch);
    if (o->patience < 0) return err_set(err, "patience = %d: must be >= 0 (0: 20)", o->patience);
    if (!o->val_mask && !(o->val_frac >= 0 && o->val_frac < 1))
        return err_set(err, "val_frac = %g: must be in [0, 1)", o->val_frac);
    if (!(a->lr > 0) || !isfinite(a->lr)) return err_set(err, "adam.lr = %g: must be > 0", a->lr);
    if (!(a->beta1 > 0 && a->beta1 < 1) || !(a->beta2 > 0 && a->beta2 < 1))
        return err_set(err, "adam.beta1 = %g, beta2 = %g: each must be in (0, 1)", a->beta1,
                       a->beta2);
    if (!(a->eps > 0)) return err_set(err, "adam.eps = %g: must be > 0", a->eps);
    if (!(o->huber >= 0) || !isfinite(o->huber))
        return err_set(err, "huber = %g: must be >= 0 (0: squared error)", o->huber);
    if (!(a->weight_decay >= 0) || !isfinite(a->weight_decay))
        return err_set(err, "adam.weight_decay = %g: must be >= 0", a->weight_decay);
    return 0;
}

/* Row weights, where given: each finite and >= 0. */
static int check_weights(const double *w, int n, Err *err)
{
    for (int i = 0; w && i < n; i++)
        if (!(w[i] >= 0) || !isfinite(w[i]))
            return err_set(err, "row_weight[%d] = %g: must be finite and >= 0", i, w[i]);
    return 0;
}

/* Puts the training rows in idx[0..ntrain) and the validation rows after
 * them, each part in row order, so the split does not depend on how it was
 * drawn. The validation rows are the mask's, or the first round(val_frac n)
 * of a shuffle. Returns nval, or -1 with err. */
static int split_rows(const MlpTrainOpts *o, int n, Rng *rng, int *idx, Err *err)
{
    int nval = 0;
    if (o->val_mask) {
        for (int i = 0; i < n; i++) nval += o->val_mask[i] != 0;
    } else if (o->val_frac > 0) {
        nval = (int)lround(o->val_frac * n);
        if (nval < 1) nval = 1;   /* validation was asked for: give it a row */
    }
    if (nval >= n)
        return err_set(err, "the validation set takes all %d rows, leaving none to train on; "
                            "lower val_frac or leave rows out of val_mask", n);
    uint8_t *isval = calloc((size_t)n, 1);
    if (!isval) return err_set(err, "out of memory (%d rows)", n);
    if (o->val_mask) {
        for (int i = 0; i < n; i++) isval[i] = o->val_mask[i] != 0;
    } else if (nval > 0) {
        for (int i = 0; i < n; i++) idx[i] = i;
        rng_shuffle(rng, idx, n);
        for (int i = 0; i < nval; i++) isval[idx[i]] = 1;
    }
    int a = 0, b = n - nval;
    for (int i = 0; i < n; i++) idx[isval[i] ? b++ : a++] = i;
    free(isval);
    return nval;
}

int mlp_train(Mlp *m, const double *X, const double *Y, int n, const MlpTrainOpts *opts,
              MlpTrainResult *res, Err *err)
{
    MlpTrainOpts o = opts ? *opts : (MlpTrainOpts){ 0 };
    MlpAdam adam = adam_resolve(&o.adam);
    MlpTrainResult r = { .val_loss = NAN };
    int nin = nin_of(m), nout = nout_of(m);
    int *idx = NULL;
    Batch bt = { 0 };
    Snapshot best = { 0 };
    double best_val = INFINITY;

    if (n < 1) return err_set(err, "mlp_train: n = %d rows: need at least one", n);
    if (!X || !Y) return err_set(err, "mlp_train: X or Y is NULL");
    if (check_opts(&o, &adam, err) < 0 || check_finite(X, n, nin, "X", err) < 0 ||
        check_finite(Y, n, nout, "Y", err) < 0 || check_weights(o.row_weight, n, err) < 0)
        return err_prefix(err, "mlp_train");
    if (o.epochs == 0) o.epochs = 200;
    if (o.batch == 0) o.batch = 64;
    if (o.patience == 0) o.patience = 20;

    Rng rng = rng_stream(o.seed, STREAM_TRAIN);
    idx = malloc((size_t)n * sizeof *idx);
    if (!idx) {
        err_set(err, "out of memory (%d rows)", n);
        goto err;
    }
    int nval = split_rows(&o, n, &rng, idx, err);
    if (nval < 0) goto err;
    int ntrain = n - nval;
    int *tr = idx;                  /* reshuffled every epoch */
    const int *va = idx + ntrain;
    r.ntrain = ntrain;
    r.nval = nval;

    if (o.fit_scaling) fit_scaling_rows(m, X, Y, tr, ntrain);

    if (batch_init(&bt, m, o.batch < ntrain ? o.batch : ntrain) < 0) {
        err_set(err, "out of memory (batch of %d rows)", o.batch);
        goto err;
    }
    bt.huber = o.huber;
    bt.row_weight = o.row_weight;
    if (nval > 0) {
        best.block = malloc(3 * (size_t)m->nparams * sizeof(double));
        if (!best.block) {
            err_set(err, "out of memory (%d parameters)", m->nparams);
            goto err;
        }
        /* epoch 0, the weights as given: kept if no epoch beats them */
        best_val = batch_loss(m, &bt, X, Y, va, nval);
        snap_take(&best, m);
    }

    for (int e = 1; e <= o.epochs; e++) {
        rng_shuffle(&rng, tr, ntrain);
        double ss = 0;
        for (int i = 0; i < ntrain; i += bt.cap) {
            int rows = ntrain - i < bt.cap ? ntrain - i : bt.cap;
            batch_sync(m, &bt);
            batch_gather(m, &bt, X, Y, tr + i, rows);
            ss += batch_forward(m, &bt, rows);
            batch_backward(m, &bt, rows);
            adam_update(m, bt.grad, &adam, 1.0 / rows);
        }
        double train_loss = ss / ((double)ntrain * nout);
        double val_loss = NAN;
        bool stop = false;
        r.epochs = e;
        if (nval > 0) {
            val_loss = batch_loss(m, &bt, X, Y, va, nval);
            if (val_loss < best_val) {   /* NaN (a diverged net) never counts as better */
                best_val = val_loss;
                r.best_epoch = e;
                snap_take(&best, m);
            } else if (e - r.best_epoch >= o.patience) {
                stop = true;
            }
        } else {
            r.best_epoch = e;   /* nothing to choose by: the last weights stay */
        }
        if (o.progress && o.progress(o.ctx, e, train_loss, val_loss) != 0) stop = true;
        if (stop) break;
    }

    if (nval > 0) {
        if (r.best_epoch != r.epochs) snap_restore(&best, m);
        r.val_loss = best_val;
    }
    /* the loss of the weights kept, not the mean over an epoch in which they moved */
    r.train_loss = batch_loss(m, &bt, X, Y, tr, ntrain);
    if (res) *res = r;
    free(best.block);
    free(bt.block);
    free(idx);
    return 0;

err:
    err_prefix(err, "mlp_train");
    free(best.block);
    free(bt.block);
    free(idx);
    return -1;
}

/* ----------------------------------------------------------------------------
 * Storage. Every field little-endian, written a byte at a time so the host's
 * byte order never matters; a double goes as the bit pattern of its IEEE
 * binary64, so it comes back bit for bit (NaN payloads included).
 *
 *   offset  size        field
 *   0       8           magic "STRATMLP"
 *   8       4           version (1)
 *   12      4           nin
 *   16      4           nout
 *   20      4           nhidden
 *   24      4           activation (MlpAct)
 *   28      4 nhidden   hidden widths
 *   ...     8           Adam steps taken
 *   ...     8 count     doubles: theta, adam_m, adam_v (nparams each),
 *                       xmean, xstd (nin each), ymean, ystd (nout each)
 *   ...     8           FNV-1a 64 of every byte before it
 */

#define MLP_MAGIC "STRATMLP"
#define MLP_VERSION 1u

static void put_u32(uint8_t **p, uint32_t v)
{
    for (int i = 0; i < 4; i++) *(*p)++ = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t **p, uint64_t v)
{
    for (int i = 0; i < 8; i++) *(*p)++ = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* a stored count as an int; one beyond INT_MAX is out of every range anyway */
static int u32_to_int(uint32_t v)
{
    return v > INT_MAX ? INT_MAX : (int)v;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static size_t saved_len(int nhidden, size_t ndoubles)
{
    return 28 + 4 * (size_t)nhidden + 8 + 8 * ndoubles + 8;
}

int mlp_save(const Mlp *m, uint8_t **buf, size_t *len, Err *err)
{
    size_t nd = nblock(m), n = saved_len(m->nlayers - 1, nd);
    uint8_t *b = malloc(n);
    if (!b) return err_set(err, "mlp_save: out of memory (%zu bytes)", n);
    uint8_t *p = b;
    memcpy(p, MLP_MAGIC, 8);
    p += 8;
    put_u32(&p, MLP_VERSION);
    put_u32(&p, (uint32_t)nin_of(m));
    put_u32(&p, (uint32_t)nout_of(m));
    put_u32(&p, (uint32_t)(m->nlayers - 1));
    put_u32(&p, (uint32_t)m->act);
    for (int l = 1; l < m->nlayers; l++) put_u32(&p, (uint32_t)m->w[l]);
    put_u64(&p, m->adam_t);
    for (size_t i = 0; i < nd; i++) {
        uint64_t bits;
        memcpy(&bits, &m->theta[i], 8);
        put_u64(&p, bits);
    }
    put_u64(&p, fnv1a(b, (size_t)(p - b)));
    *buf = b;
    *len = n;
    return 0;
}

Mlp *mlp_load(const uint8_t *buf, size_t len, Err *err)
{
    if (!buf || len < 28) {
        err_set(err, "mlp_load: %zu bytes: too short for a saved MLP (the header alone is 28)",
                buf ? len : 0);
        return NULL;
    }
    if (memcmp(buf, MLP_MAGIC, 8) != 0) {
        err_set(err, "mlp_load: bad magic: not a saved MLP (expected \"%s\")", MLP_MAGIC);
        return NULL;
    }
    uint32_t version = get_u32(buf + 8);
    if (version != MLP_VERSION) {
        err_set(err, "mlp_load: version %u: this build reads version %u", version, MLP_VERSION);
        return NULL;
    }
    uint32_t nin = get_u32(buf + 12), nout = get_u32(buf + 16), nhidden = get_u32(buf + 20);
    uint32_t act = get_u32(buf + 24);
    if (nhidden > MLP_MAX_LAYERS - 1) {
        err_set(err, "mlp_load: corrupt: %u hidden layers (at most %d)", nhidden,
                MLP_MAX_LAYERS - 1);
        return NULL;
    }
    if (len < 28 + 4 * (size_t)nhidden) {
        err_set(err, "mlp_load: truncated: %zu bytes end inside the header", len);
        return NULL;
    }
    int hidden[MLP_MAX_LAYERS];
    for (uint32_t l = 0; l < nhidden; l++) hidden[l] = u32_to_int(get_u32(buf + 28 + 4 * l));
    Err e = { { 0 } };
    if (check_shape(u32_to_int(nin), hidden, (int)nhidden, u32_to_int(nout),
                    (MlpAct)u32_to_int(act), &e) < 0) {
        err_set(err, "mlp_load: corrupt shape: %s", e.msg);
        return NULL;
    }
    Mlp *m = mlp_alloc((int)nin, hidden, (int)nhidden, (int)nout, (MlpAct)act);
    if (!m) {
        err_set(err, "mlp_load: out of memory");
        return NULL;
    }
    size_t nd = nblock(m), want = saved_len((int)nhidden, nd);
    if (len != want) {
        err_set(err, "mlp_load: %s: %zu bytes, but the shape in the header needs %zu",
                len < want ? "truncated or corrupt size" : "trailing bytes or corrupt size", len,
                want);
        goto err;
    }
    if (get_u64(buf + want - 8) != fnv1a(buf, want - 8)) {
        err_set(err, "mlp_load: corrupt: the checksum does not match the contents");
        goto err;
    }
    const uint8_t *p = buf + 28 + 4 * (size_t)nhidden;
    m->adam_t = get_u64(p);
    p += 8;
    for (size_t i = 0; i < nd; i++, p += 8) {
        uint64_t bits = get_u64(p);
        memcpy(&m->theta[i], &bits, 8);
    }
    /* mlp_set_scaling never stores a std that is not finite and > 0 */
    for (int k = 0; k < (int)nin; k++)
        if (!(m->xstd[k] > 0 && isfinite(m->xstd[k]))) {
            err_set(err, "mlp_load: corrupt: xstd[%d] = %g", k, m->xstd[k]);
            goto err;
        }
    for (int o = 0; o < (int)nout; o++)
        if (!(m->ystd[o] > 0 && isfinite(m->ystd[o]))) {
            err_set(err, "mlp_load: corrupt: ystd[%d] = %g", o, m->ystd[o]);
            goto err;
        }
    return m;

err:
    mlp_free(m);
    return NULL;
}
