/*
 * opmodel.c — the time of one op instance on one device: an analytical
 * roofline with size-dependent efficiency curves, or a trained MLP that
 * answers for the kinds its profile covered.
 *
 * Analytical model, per op class (the three classes of Ivanov et al.,
 * "Data Movement Is All You Need", MLSys 2021):
 *   gemm   matmul, conv2d (every phase): compute-bound when large;
 *          eff = plateau * d / (d + d_half), d the GEMM's harmonic size
 *   elem   elementwise, gathers, concat and mse (copies and one pass over
 *          the elements: memory-bound), optimizer updates, gradient sums
 *   norm   layernorm, batchnorm, softmax, cross_entropy (reductions)
 *   t = launch + max(flops / (peak * eff_compute), bytes / (bw * eff_bw))
 * with one set of constants for GPUs and one for CPUs; the constants, what
 * they rest on and what they do not are in docs/costmodel.md.
 *
 * Trained model: an ensemble of MLPs over opmodel_features predicts
 * log(t / roofline) (their mean); kinds outside its covered mask fall back
 * to the analytical model.
 *
 * Legend: F = flops, B = bytes read + written, P = peak FLOP/s, W = bytes/s,
 * eb = bytes per element, d = 3 / (1/M + 1/N + 1/K) of a GEMM = 1.5 eb F / B.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel/costmodel.h"
#include "costmodel/mlp.h"
#include "costmodel/train.h"
#include "executor/kernels.h"
#include "ir/util.h"

/* The trained part: an ensemble of nets of one shape over one scaling,
 * and for each net its weights laid out for a fast forward pass (the Mlp's
 * own is a chain of dependent adds, ~2 us a net; this one ~0.4 us). */
typedef struct {
    Mlp *net;
    double *wt[MLP_MAX_LAYERS];     /* layer l: wt[k * no + j] = W_l[j][k]; layer 0 takes raw
                                       features (the x scaling folded in), so a zero feature
                                       (one-hots, absent letters) costs nothing */
    const double *b[MLP_MAX_LAYERS];
} Net;

struct OpModel {
    int nnets;                      /* 0: analytical only */
    Net *nets;
    uint32_t covered;               /* bit k: kind k answered by the nets */
    MlpAct act;
    int nlayers;                    /* hidden + output */
    int w[MLP_MAX_LAYERS + 1];      /* widths, w[0] = OPMODEL_NFEAT, w[nlayers] = 1 */
    double xmean[OPMODEL_NFEAT], xinv[OPMODEL_NFEAT];   /* x scaling (1 / std) */
    double ymean, ystd;
    double calib[3];                /* compute scale, comm scale, seconds per instruction */
};

/* ----------------------------------------------------------------------------
 * Kinds */

static const char *const CM_NAMES[] = { "adam", "sgd", "sum" };

const char *cm_kind_name(int kind)
{
    if (kind >= 0 && kind < OP_KIND_COUNT) return op_kind_name((OpKind)kind);
    if (kind >= OP_KIND_COUNT && kind < CM_KIND_COUNT) return CM_NAMES[kind - OP_KIND_COUNT];
    return "?";
}

int cm_kind_parse(const char *s, int *kind)
{
    if (!s) return -1;
    OpKind k;
    if (op_kind_parse(s, &k) == 0) {
        *kind = (int)k;
        return 0;
    }
    for (int i = 0; i < CM_KIND_COUNT - OP_KIND_COUNT; i++)
        if (strcmp(s, CM_NAMES[i]) == 0) {
            *kind = OP_KIND_COUNT + i;
            return 0;
        }
    return -1;
}

/* ----------------------------------------------------------------------------
 * Devices */

void op_device_from_group(const DeviceGroup *g, OpDevice *d)
{
    memset(d, 0, sizeof *d);
    if (!g) return;
    for (int t = 0; t < DT_COUNT; t++) d->peak_flops[t] = g->peak_flops[t];
    d->mem_bw = g->mem_bw;
    d->gpu = g->kind && strcmp(g->kind, "gpu") == 0;
}

/* The compute roof of a GEMM at dtype t: its own peak, else the f32 one. */
static double gemm_peak(const OpDevice *d, DType t)
{
    double p = t >= 0 && t < DT_COUNT ? d->peak_flops[t] : 0;
    return p > 0 ? p : d->peak_flops[DT_F32];
}

/* Everything else runs on the vector units (a GPU's CUDA cores, a CPU's
 * SIMD lanes): the f32 peak whatever the storage dtype. */
static double vector_peak(const OpDevice *d, DType t)
{
    return d->peak_flops[DT_F32] > 0 ? d->peak_flops[DT_F32] : gemm_peak(d, t);
}

/* ----------------------------------------------------------------------------
 * The analytical model */

typedef enum { CL_GEMM, CL_ELEM, CL_NORM, CL_COUNT } OpClass;

static OpClass op_class(int kind)
{
    switch (kind) {
    case OP_MATMUL:
    case OP_CONV2D:
        return CL_GEMM;
    case OP_LAYERNORM:
    case OP_BATCHNORM:
    case OP_SOFTMAX:
    case OP_CROSS_ENTROPY:
        return CL_NORM;
    case OP_CONCAT:     /* a copy */
    case OP_MSE:        /* one pass over prediction and target to a scalar */
        return CL_ELEM;
    default:
        return CL_ELEM;
    }
}

typedef struct {
    double launch;      /* seconds per kernel */
    double plateau;     /* gemm: fraction of peak at large sizes; others: of the vector peak */
    double d_half;      /* gemm: harmonic size at which half the plateau is reached */
    double bw_eff;      /* fraction of the device bandwidth achieved */
} ClassConst;

/* Sources and the reasoning behind every number: docs/costmodel.md,
 * "Constants". GPU figures rest on published measurements; CPU figures were
 * fitted on profile 1 of the development machine (its peaks are the
 * profiler's own measured SGEMM rate and STREAM triad). Changing any of them
 * changes a feature: bump OPMODEL_FEAT_VERSION. */
static const ClassConst GPU_CONST[CL_COUNT] = {
    [CL_GEMM] = { 5e-6, 0.80, 128, 0.85 },
    [CL_ELEM] = { 5e-6, 0.50, 0, 0.85 },
    [CL_NORM] = { 5e-6, 0.50, 0, 0.70 },
};
static const ClassConst CPU_CONST[CL_COUNT] = {
    [CL_GEMM] = { 1.5e-6, 0.85, 32, 1.00 },
    [CL_ELEM] = { 0.1e-6, 0.05, 0, 2.00 },
    [CL_NORM] = { 0.2e-6, 0.02, 0, 0.50 },
};

uint32_t cm_letter_mask(const char *letters)
{
    uint32_t m = 0;
    for (const char *c = letters; c && *c; c++)
        if (*c >= 'a' && *c <= 'z') m |= 1u << (*c - 'a');
    return m;
}

void opshape_gemm_dims(const OpShape *x, double *m, double *n, double *k, double *batch)
{
    uint32_t sets[4] = { x->in0 & x->out & ~x->in1, x->in1 & x->out & ~x->in0,
                         x->in0 & x->in1 & ~x->out, x->in0 & x->in1 & x->out };
    double v[4] = { 1, 1, 1, 1 };
    for (int s = 0; s < 4; s++)
        for (int l = 0; l < IR_LETTERS; l++)
            if (sets[s] >> l & 1 && x->size[l] > 1) v[s] *= (double)x->size[l];
    *m = v[0];
    *n = v[1];
    *k = v[2];
    *batch = v[3];
}

double opshape_unmasked(int64_t ns, int64_t nt)
{
    if (ns < 1 || nt < 1) return 1;
    double s = (double)ns, t = (double)nt;
    /* rows 0 .. min(s, t) - 1 weigh i + 1 elements; any rows after, all t */
    double m = s < t ? s : t;
    return (m * (m + 1) / 2 + (s - m) * t) / (s * t);
}

void opshape_set_causal(OpShape *x, int64_t ns, int64_t nt)
{
    x->unmasked = opshape_unmasked(ns, nt);
    if (x->phase != PH_FWD) return;     /* the backward runs whole rows */
    x->flops *= x->unmasked;
    x->bytes *= x->unmasked;
}

/* d = 3 / (1/M + 1/N + 1/K) from F = 2MNK and B = eb (MK + KN + MN). */
static double gemm_size(const OpShape *x)
{
    int eb = dtype_bytes(x->dtype);
    if (x->bytes <= 0) return 1e6;
    double d = 1.5 * eb * x->flops / x->bytes;
    return d < 1 ? 1 : d;
}

/* Seconds without the launch: max(compute, memory) at the class efficiencies. */
static double analytic_body(const OpDevice *d, const OpShape *x, const ClassConst *c, OpClass cl)
{
    double tc = 0, tm = 0;
    if (x->flops > 0) {
        double p = cl == CL_GEMM ? gemm_peak(d, x->dtype) : vector_peak(d, x->dtype);
        double eff = c->plateau;
        if (cl == CL_GEMM) {
            double s = gemm_size(x);
            eff *= s / (s + c->d_half);
        }
        if (p > 0 && eff > 0) tc = x->flops / (p * eff);
    }
    if (x->bytes > 0 && d->mem_bw > 0) tm = x->bytes / (d->mem_bw * c->bw_eff);
    return tc > tm ? tc : tm;
}

double opmodel_analytic_time(const OpDevice *d, const OpShape *x)
{
    OpClass cl = op_class(x->kind);
    const ClassConst *c = d->gpu ? &GPU_CONST[cl] : &CPU_CONST[cl];
    return c->launch + analytic_body(d, x, c, cl);
}

double opmodel_roofline(const OpDevice *d, const OpShape *x)
{
    double p = op_class(x->kind) == CL_GEMM ? gemm_peak(d, x->dtype) : vector_peak(d, x->dtype);
    double tc = x->flops > 0 && p > 0 ? x->flops / p : 0;
    double tm = x->bytes > 0 && d->mem_bw > 0 ? x->bytes / d->mem_bw : 0;
    return tc > tm ? tc : tm;
}

double opmodel_roofline_floor(const OpDevice *d, const OpShape *x)
{
    double r = opmodel_roofline(d, x);
    return r > 1e-9 ? r : 1e-9;
}

/* ----------------------------------------------------------------------------
 * Features: the one function training and prediction share.
 *
 *   0  log F          1  log B          2  log roofline     3  log (F+1)/(B+1)
 *   4  log(analytic / roofline): the analytical model's efficiency, a prior
 *   5  log compute roof (F / P)         6  log memory roof (B / W)
 *   7..12  log of the 6 largest local letter sizes, sorted (0 = none)
 *   13 number of letters                14 log d (the GEMM harmonic size)
 *   15 log P          16 log W          17 gpu (0/1)
 *   18 log of the share of a causal softmax's elements unmasked (0: all): the
 *      same shape as an unmasked softmax, a fraction of its work
 *   19..44 log of each letter's size, a..z (0 when absent: which letters an
 *      op has says what it is, as the zoo names them consistently)
 *   45..48 log M, N, K, batch of the GEMM a two-operand op's phase runs (0 otherwise)
 *   49 1 when the CPU executor runs that contraction as plain loops, too
 *      small a GEMM for SGEMM's call to pay (kernel_contract_loops)
 *   then one-hots of kind, phase, dtype
 */

static double lg(double v) { return log(v > 1e-300 ? v : 1e-300); }

void opmodel_features(const OpDevice *d, const OpShape *x, double f[OPMODEL_NFEAT])
{
    memset(f, 0, sizeof(double) * OPMODEL_NFEAT);
    double roof = opmodel_roofline_floor(d, x);
    double p = op_class(x->kind) == CL_GEMM ? gemm_peak(d, x->dtype) : vector_peak(d, x->dtype);
    f[0] = lg(x->flops + 1);
    f[1] = lg(x->bytes + 1);
    f[2] = lg(roof);
    f[3] = lg((x->flops + 1) / (x->bytes + 1));
    f[4] = lg(opmodel_analytic_time(d, x) / roof);
    f[5] = lg(p > 0 ? (x->flops + 1) / p : 1e-12);
    f[6] = lg(d->mem_bw > 0 ? (x->bytes + 1) / d->mem_bw : 1e-12);

    /* the largest letter sizes, by insertion into a short sorted list */
    double top[OPMODEL_SIZES] = { 0 };
    int nl = 0;
    uint32_t letters = x->letters ? x->letters : (x->size[0] > 0 ? 1u : 0u);
    for (int l = 0; l < IR_LETTERS; l++) {
        if (!(letters >> l & 1)) continue;
        nl++;
        double v = lg(x->size[l] > 1 ? (double)x->size[l] : 1);
        for (int i = 0; i < OPMODEL_SIZES; i++)
            if (v > top[i]) {
                memmove(&top[i + 1], &top[i], sizeof(double) * (OPMODEL_SIZES - 1 - i));
                top[i] = v;
                break;
            }
    }
    for (int i = 0; i < OPMODEL_SIZES; i++) f[7 + i] = top[i];
    f[13] = nl;
    f[14] = lg(gemm_size(x));
    f[15] = lg(p > 0 ? p : 1);
    f[16] = lg(d->mem_bw > 0 ? d->mem_bw : 1);
    f[17] = d->gpu ? 1 : 0;
    f[18] = x->unmasked > 0 && x->unmasked < 1 ? log(x->unmasked) : 0;
    int o = 19;
    for (int l = 0; l < IR_LETTERS; l++)
        if ((x->letters >> l & 1) && x->size[l] > 1) f[o + l] = log((double)x->size[l]);
    o += IR_LETTERS;
    /* a contraction's M, N, K and batch: what a GEMM's efficiency depends on,
     * as the phase runs it. The backward of out[M,N] = in0[M,K] in1[K,N] is
     * two other GEMMs: d in0[M,K] = d out[M,N] in1^T (N contracted) and
     * d in1[K,N] = in0^T d out (M contracted); a skinny forward (M a few
     * rows) is a long thin contraction in bwd_weight. */
    if (x->in0 && x->in1) {
        double m, n, k, b;
        opshape_gemm_dims(x, &m, &n, &k, &b);
        double g[3] = { m, n, k };
        if (x->phase == PH_BWD_DATA) g[1] = k, g[2] = n;
        else if (x->phase == PH_BWD_WEIGHT) g[0] = k, g[2] = m;
        f[o] = log(g[0]);
        f[o + 1] = log(g[1]);
        f[o + 2] = log(g[2]);
        f[o + 3] = log(b);
        f[o + 4] = kernel_contract_loops(m, n, k);
    }
    o += 5;
    if (x->kind >= 0 && x->kind < CM_KIND_COUNT) f[o + x->kind] = 1;
    o += CM_KIND_COUNT;
    if (x->phase >= 0 && x->phase < PH_COUNT) f[o + x->phase] = 1;
    o += PH_COUNT;
    if (x->dtype >= 0 && x->dtype < DT_COUNT) f[o + x->dtype] = 1;
}

/* ----------------------------------------------------------------------------
 * Models */

OpModel *opmodel_analytic(void)
{
    OpModel *m = xcalloc(1, sizeof(OpModel));
    m->calib[0] = m->calib[1] = 1;
    return m;
}

void opmodel_calibration(const OpModel *m, double *compute, double *comm, double *per_instr)
{
    *compute = m ? m->calib[0] : 1;
    *comm = m ? m->calib[1] : 1;
    *per_instr = m ? m->calib[2] : 0;
}

void opmodel_free(OpModel *m)
{
    if (!m) return;
    for (int i = 0; i < m->nnets; i++) {
        mlp_free(m->nets[i].net);
        free(m->nets[i].wt[0]);
    }
    free(m->nets);
    free(m);
}

bool opmodel_covers(const OpModel *m, int kind)
{
    return m && m->nnets > 0 && kind >= 0 && kind < CM_KIND_COUNT && (m->covered >> kind & 1);
}

uint32_t opmodel_covered(const OpModel *m)
{
    return m && m->nnets > 0 ? m->covered : 0;
}

/* h[0..no) = b + sum over k of u[k] * wt[k][0..no), skipping zero u[k].
 * Blocks of 8 outputs keep their sums in four 2-wide vector registers across
 * the whole k loop (GCC/Clang vector extension: SSE2 on x86-64, NEON on
 * ARM). The Mlp's own forward pass is one dot product per output, a chain of
 * dependent adds, ~4x slower. */
typedef double V2 __attribute__((vector_size(16)));
typedef int64_t V2i __attribute__((vector_size(16)));

static inline V2 v2_load(const double *p)
{
    V2 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline V2 v2_relu(V2 a)
{
    V2 z = { 0, 0 };
    return (V2)((V2i)(a > z) & (V2i)a);
}

/* h = relu?(b + sum over k of u[k] wt[k]), over the inputs listed in idx
 * (nu of them; NULL: all ni). Layer 0 lists the non-zero raw features (the
 * one-hots and absent letters are zero): ~20 of ~70 inputs. */
static void layer(double *restrict h, const double *restrict wt, const double *restrict b,
                  const double *restrict u, const int *restrict idx, int nu, int no, bool relu)
{
    int j = 0;
    for (; j + 8 <= no; j += 8) {
        V2 a0 = v2_load(b + j), a1 = v2_load(b + j + 2), a2 = v2_load(b + j + 4),
           a3 = v2_load(b + j + 6);
        for (int q = 0; q < nu; q++) {
            int k = idx ? idx[q] : q;
            const double *w = wt + (size_t)k * no + j;
            V2 s = { u[q], u[q] };
            a0 += s * v2_load(w);
            a1 += s * v2_load(w + 2);
            a2 += s * v2_load(w + 4);
            a3 += s * v2_load(w + 6);
        }
        if (relu) {
            a0 = v2_relu(a0);
            a1 = v2_relu(a1);
            a2 = v2_relu(a2);
            a3 = v2_relu(a3);
        }
        memcpy(h + j, &a0, sizeof a0);
        memcpy(h + j + 2, &a1, sizeof a1);
        memcpy(h + j + 4, &a2, sizeof a2);
        memcpy(h + j + 6, &a3, sizeof a3);
    }
    for (; j < no; j++) {
        double a = b[j];
        for (int q = 0; q < nu; q++) a += u[q] * wt[(size_t)(idx ? idx[q] : q) * no + j];
        h[j] = relu && !(a > 0) ? 0 : a;
    }
}

/* One net's output in raw units for the raw features listed in (idx, val). */
static double net_forward(const OpModel *m, const Net *n, const int *idx, const double *val,
                          int nnz)
{
    double buf[2][MLP_MAX_WIDTH];
    const double *u = val;
    double *h = buf[0];
    for (int l = 0; l < m->nlayers; l++) {
        bool hidden = l < m->nlayers - 1;
        layer(h, n->wt[l], n->b[l], u, l == 0 ? idx : NULL, l == 0 ? nnz : m->w[l], m->w[l + 1],
              hidden && m->act == MLP_RELU);
        if (hidden && m->act == MLP_TANH)
            for (int j = 0; j < m->w[l + 1]; j++) h[j] = tanh(h[j]);
        u = h;
        h = h == buf[0] ? buf[1] : buf[0];
    }
    return u[0] * m->ystd + m->ymean;
}

/* The ensemble's mean of log(t / roofline) for features f. */
static double ensemble_y(const OpModel *m, const double *f)
{
    int idx[OPMODEL_NFEAT], nnz = 0;
    double val[OPMODEL_NFEAT];
    for (int k = 0; k < OPMODEL_NFEAT; k++)
        if (f[k] != 0) {
            idx[nnz] = k;
            val[nnz++] = f[k];
        }
    double sum = 0;
    for (int i = 0; i < m->nnets; i++) sum += net_forward(m, &m->nets[i], idx, val, nnz);
    return sum / m->nnets;
}

double opmodel_time(const OpModel *m, const OpDevice *d, const OpShape *x, CostSource *src)
{
    if (!opmodel_covers(m, x->kind)) {
        if (src) *src = CM_SRC_ANALYTIC;
        return opmodel_analytic_time(d, x);
    }
    double f[OPMODEL_NFEAT];
    opmodel_features(d, x, f);
    double y = ensemble_y(m, f);
    /* a time under a tenth of the roofline or above 1e4 times it is no
     * efficiency the nets can have learned: clamp an extrapolation */
    if (!(y > -2.3)) y = -2.3;
    if (y > 9.2) y = 9.2;
    if (src) *src = CM_SRC_MLP;
    return opmodel_roofline_floor(d, x) * exp(y);
}

/* ----------------------------------------------------------------------------
 * Stored form (all integers little-endian, doubles as their IEEE bits)
 *
 *   0  "SCMO"              magic
 *   4  u32                 blob format version (1)
 *   8  u32                 feature version (OPMODEL_FEAT_VERSION)
 *  12  u32                 features (OPMODEL_NFEAT)
 *  16  u32                 covered-kinds mask
 *  20  u32                 activation (MlpAct: relu or tanh)
 *  24  u32                 nets in the ensemble (1..OPMODEL_MAX_NETS)
 *  28  u32                 hidden layers
 *  32  u32 x 8             hidden widths (unused ones 0)
 *  64  f64 x NFEAT         x mean, then x std, then y mean, y std
 *  ..  f64 x 3             calibration from measured runs: compute scale,
 *                          communication scale, seconds per instruction
 *  ..  per net             u64 n, u64 FNV-1a of the n bytes, mlp_save's n bytes
 */

#define BLOB_MAGIC "SCMO"
#define BLOB_VERSION 2u
#define BLOB_HEAD 64

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void putf(uint8_t *p, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    put64(p, u);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static double getf(const uint8_t *p)
{
    uint64_t u = get64(p);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define SCALE_BYTES ((2 * OPMODEL_NFEAT + 2 + 3) * 8)

static int check_shape(int nhidden, const int *hidden, MlpAct act, int nnets, Err *err)
{
    if (act != MLP_RELU && act != MLP_TANH)
        return err_set(err, "activation %d: an op model uses relu or tanh", (int)act);
    if (nnets < 1 || nnets > OPMODEL_MAX_NETS)
        return err_set(err, "%d nets: an ensemble has 1 to %d", nnets, OPMODEL_MAX_NETS);
    if (nhidden < 1 || nhidden > MLP_MAX_LAYERS - 1)
        return err_set(err, "%d hidden layers: 1 to %d", nhidden, MLP_MAX_LAYERS - 1);
    for (int i = 0; i < nhidden; i++)
        if (hidden[i] < 1 || hidden[i] > MLP_MAX_WIDTH)
            return err_set(err, "hidden width %d: 1 to %d", hidden[i], MLP_MAX_WIDTH);
    return 0;
}

static int expected_params(int nhidden, const int *hidden)
{
    int n = 0, prev = OPMODEL_NFEAT;
    for (int i = 0; i <= nhidden; i++) {
        int w = i < nhidden ? hidden[i] : 1;
        n += w * prev + w;
        prev = w;
    }
    return n;
}

int opmodel_save(const OpNets *s, uint8_t **buf, size_t *len, Err *err)
{
    *buf = NULL;
    *len = 0;
    if (check_shape(s->nhidden, s->hidden, s->act, s->nnets, err)) return err_prefix(err, "opmodel_save");
    uint8_t *nb[OPMODEL_MAX_NETS] = { 0 };
    size_t nn[OPMODEL_MAX_NETS] = { 0 }, total = BLOB_HEAD + SCALE_BYTES;
    int rc = -1;
    for (int i = 0; i < s->nnets; i++) {
        const Mlp *net = s->nets[i];
        if (mlp_nin(net) != OPMODEL_NFEAT || mlp_nout(net) != 1 ||
            mlp_nparams(net) != expected_params(s->nhidden, s->hidden)) {
            err_set(err, "opmodel_save: net %d has another shape than the ensemble's", i);
            goto done;
        }
        if (mlp_save(net, &nb[i], &nn[i], err)) {
            err_prefix(err, "opmodel_save");
            goto done;
        }
        total += 16 + nn[i];
    }
    uint8_t *b = xcalloc(total, 1);
    memcpy(b, BLOB_MAGIC, 4);
    put32(b + 4, BLOB_VERSION);
    put32(b + 8, OPMODEL_FEAT_VERSION);
    put32(b + 12, OPMODEL_NFEAT);
    put32(b + 16, s->covered);
    put32(b + 20, (uint32_t)s->act);
    put32(b + 24, (uint32_t)s->nnets);
    put32(b + 28, (uint32_t)s->nhidden);
    for (int i = 0; i < s->nhidden; i++) put32(b + 32 + 4 * i, (uint32_t)s->hidden[i]);
    uint8_t *p = b + BLOB_HEAD;
    for (int k = 0; k < OPMODEL_NFEAT; k++, p += 8) putf(p, s->xmean[k]);
    for (int k = 0; k < OPMODEL_NFEAT; k++, p += 8) putf(p, s->xstd[k] > 0 ? s->xstd[k] : 1);
    putf(p, s->ymean);
    putf(p + 8, s->ystd > 0 ? s->ystd : 1);
    p += 16;
    /* an uncalibrated model scales nothing */
    putf(p, s->calib[0] > 0 ? s->calib[0] : 1);
    putf(p + 8, s->calib[1] > 0 ? s->calib[1] : 1);
    putf(p + 16, s->calib[2] > 0 ? s->calib[2] : 0);
    p += 24;
    for (int i = 0; i < s->nnets; i++) {
        put64(p, nn[i]);
        put64(p + 8, fnv1a(nb[i], nn[i]));
        memcpy(p + 16, nb[i], nn[i]);
        p += 16 + nn[i];
    }
    *buf = b;
    *len = total;
    rc = 0;
done:
    for (int i = 0; i < s->nnets; i++) free(nb[i]);
    return rc;
}

/* Net n's fast form from its parameters (every W_l, then b_l, layer by
 * layer): transposed, and in layer 0 the x scaling folded in:
 * W (f - mean) / std + b = (W / std) f + (b - W (mean / std)). */
static void net_prepare(OpModel *m, Net *n)
{
    const double *theta = mlp_params(n->net);
    size_t tot = (size_t)m->w[1];              /* layer 0's folded bias */
    for (int l = 0; l < m->nlayers; l++) tot += (size_t)m->w[l] * m->w[l + 1];
    double *block = xmalloc(sizeof(double) * tot);
    for (int l = 0; l < m->nlayers; l++) {
        int ni = m->w[l], no = m->w[l + 1];
        n->wt[l] = block;
        for (int j = 0; j < no; j++)
            for (int k = 0; k < ni; k++) {
                double w = theta[(size_t)j * ni + k];
                block[(size_t)k * no + j] = l == 0 ? w * m->xinv[k] : w;
            }
        block += (size_t)no * ni;
        if (l == 0) {
            const double *b = theta + (size_t)no * ni;
            for (int j = 0; j < no; j++) {
                double s = b[j];
                for (int k = 0; k < ni; k++)
                    s -= theta[(size_t)j * ni + k] * m->xmean[k] * m->xinv[k];
                block[j] = s;
            }
            n->b[0] = block;
            block += no;
        } else {
            n->b[l] = theta + (size_t)no * ni;
        }
        theta += (size_t)no * ni + no;
    }
}

#define LOAD_FAIL(...)                                                                             \
    do {                                                                                           \
        err_set(err, "cost model weights: " __VA_ARGS__);                                          \
        goto fail;                                                                                 \
    } while (0)

OpModel *opmodel_load(const uint8_t *blob, size_t n, Err *err)
{
    OpModel *m = NULL;
    /* the header first: a model of another build has another length */
    if (!blob || n < BLOB_HEAD) {
        err_set(err, "cost model weights: %zu bytes, too short for an op model (at least %d)", n,
                BLOB_HEAD + SCALE_BYTES);
        return NULL;
    }
    if (memcmp(blob, BLOB_MAGIC, 4) != 0)
        LOAD_FAIL("bad magic (not an op model written by strata costmodel train)");
    uint32_t ver = get32(blob + 4), fver = get32(blob + 8), nf = get32(blob + 12);
    if (ver != BLOB_VERSION)
        LOAD_FAIL("format version %u, this strata reads version %u; retrain with strata "
                  "costmodel train", ver, BLOB_VERSION);
    /* the features include a one-hot of the op kinds: a build with other
     * kinds (or other features) reads other inputs into the same weights */
    if (fver != OPMODEL_FEAT_VERSION || nf != OPMODEL_NFEAT)
        LOAD_FAIL("trained by another build of strata (feature version %u, %u features; this "
                  "build computes version %u, %d features, over %d op kinds): its predictions "
                  "would be meaningless here, retrain it with strata costmodel train", fver, nf,
                  OPMODEL_FEAT_VERSION, OPMODEL_NFEAT, (int)OP_KIND_COUNT);
    if (n < BLOB_HEAD + SCALE_BYTES)
        LOAD_FAIL("%zu bytes, too short for an op model (at least %d)", n, BLOB_HEAD + SCALE_BYTES);
    m = xcalloc(1, sizeof *m);
    m->covered = get32(blob + 16);
    if (m->covered >> CM_KIND_COUNT) LOAD_FAIL("covered-kinds mask 0x%x names unknown kinds", m->covered);
    uint32_t act = get32(blob + 20), nnets = get32(blob + 24), nhidden = get32(blob + 28);
    int hidden[8] = { 0 };
    for (int i = 0; i < 8; i++) hidden[i] = (int)(get32(blob + 32 + 4 * i) & 0x7fffffff);
    Err e2 = { 0 };
    if (nnets > OPMODEL_MAX_NETS || nhidden > MLP_MAX_LAYERS - 1 ||
        check_shape((int)nhidden, hidden, (MlpAct)act, (int)nnets, &e2))
        LOAD_FAIL("bad shape (%s)", e2.msg);
    m->act = (MlpAct)act;
    m->nlayers = (int)nhidden + 1;
    m->w[0] = OPMODEL_NFEAT;
    for (int i = 0; i < (int)nhidden; i++) m->w[i + 1] = hidden[i];
    m->w[m->nlayers] = 1;
    const uint8_t *p = blob + BLOB_HEAD;
    for (int k = 0; k < OPMODEL_NFEAT; k++) m->xmean[k] = getf(p + 8 * k);
    for (int k = 0; k < OPMODEL_NFEAT; k++) {
        double sd = getf(p + 8 * (OPMODEL_NFEAT + k));
        if (!(sd > 0) || !isfinite(sd) || !isfinite(m->xmean[k]))
            LOAD_FAIL("feature %d has scaling (%g, %g): corrupt", k, m->xmean[k], sd);
        m->xinv[k] = 1 / sd;
    }
    m->ymean = getf(p + 16 * OPMODEL_NFEAT);
    m->ystd = getf(p + 16 * OPMODEL_NFEAT + 8);
    if (!isfinite(m->ymean) || !(m->ystd > 0) || !isfinite(m->ystd))
        LOAD_FAIL("target scaling (%g, %g): corrupt", m->ymean, m->ystd);
    for (int k = 0; k < 3; k++) m->calib[k] = getf(p + 16 * OPMODEL_NFEAT + 16 + 8 * k);
    if (!(m->calib[0] > 0) || !(m->calib[1] > 0) || !(m->calib[2] >= 0) ||
        !isfinite(m->calib[0] + m->calib[1] + m->calib[2]))
        LOAD_FAIL("calibration (%g, %g, %g): corrupt", m->calib[0], m->calib[1], m->calib[2]);
    p += SCALE_BYTES;
    m->nets = xcalloc(nnets, sizeof *m->nets);
    int want = expected_params((int)nhidden, hidden);
    for (uint32_t i = 0; i < nnets; i++) {
        size_t left = (size_t)(blob + n - p);
        if (left < 16) LOAD_FAIL("net %u of %u is missing (truncated)", i + 1, nnets);
        uint64_t nb = get64(p);
        if (nb > left - 16)
            LOAD_FAIL("net %u should have %llu bytes, %zu are left (truncated or corrupt)", i + 1,
                      (unsigned long long)nb, left - 16);
        if (fnv1a(p + 16, (size_t)nb) != get64(p + 8)) LOAD_FAIL("net %u: checksum mismatch (corrupt)", i + 1);
        Mlp *net = mlp_load(p + 16, (size_t)nb, err);
        if (!net) {
            err_prefix(err, "cost model weights: net %u", i + 1);
            goto fail;
        }
        m->nets[m->nnets++].net = net;
        if (mlp_nin(net) != OPMODEL_NFEAT || mlp_nout(net) != 1 || mlp_nparams(net) != want)
            LOAD_FAIL("net %u has %d inputs, %d outputs and %d parameters; the header says %d, 1 "
                      "and %d", i + 1, mlp_nin(net), mlp_nout(net), mlp_nparams(net),
                      OPMODEL_NFEAT, want);
        net_prepare(m, &m->nets[i]);
        p += 16 + nb;
    }
    if (p != blob + n) LOAD_FAIL("%zu bytes after the last net (corrupt)", (size_t)(blob + n - p));
    /* The fast pass must agree with each net's own: this catches a header
     * (activation, scaling) that does not belong to the nets. */
    for (int i = 0; i < m->nnets; i++) {
        double f[OPMODEL_NFEAT], y;
        for (int k = 0; k < OPMODEL_NFEAT; k++) f[k] = m->xmean[k] + (k % 3 - 1) / m->xinv[k];
        mlp_predict(m->nets[i].net, f, &y);
        int idx[OPMODEL_NFEAT];
        for (int k = 0; k < OPMODEL_NFEAT; k++) idx[k] = k;
        double z = net_forward(m, &m->nets[i], idx, f, OPMODEL_NFEAT);
        if (!(fabs(z - y) <= 1e-6 * (1 + fabs(y))))
            LOAD_FAIL("net %d does not match the stored scaling or activation (corrupt)", i + 1);
    }
    return m;
fail:
    opmodel_free(m);
    return NULL;
}

int opmodel_recalibrate(const uint8_t *blob, size_t n, const double calib[3], uint8_t **out,
                        size_t *nout, Err *err)
{
    *out = NULL;
    *nout = 0;
    OpModel *m = opmodel_load(blob, n, err);
    if (!m) return -1;
    opmodel_free(m);
    if (!(calib[0] > 0) || !(calib[1] > 0) || !(calib[2] >= 0) ||
        !isfinite(calib[0] + calib[1] + calib[2]))
        return err_set(err, "calibration (%g, %g, %g): scales must be > 0 and the per-instruction "
                       "time >= 0", calib[0], calib[1], calib[2]);
    uint8_t *b = xmalloc(n);
    memcpy(b, blob, n);
    uint8_t *p = b + BLOB_HEAD + 8 * (2 * OPMODEL_NFEAT + 2);
    for (int k = 0; k < 3; k++) putf(p + 8 * k, calib[k]);
    *out = b;
    *nout = n;
    return 0;
}
