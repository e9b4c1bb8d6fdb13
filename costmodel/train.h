/*
 * train.h — learning operator times from a profile: the MLP's features, its
 * stored form, and training with a held-out test set.
 *
 * The analytical model and the trained model live in opmodel.c (costmodel.h
 * "operators"); this header is what training and its tests need beyond
 * that: the one feature function that training and prediction share, the
 * blob format opmodel_load reads, and costmodel_train itself.
 *
 * What the MLP predicts is y = log(t / roofline): the roofline carries the
 * scale across sizes and devices, the net learns only an efficiency, which
 * is bounded and extrapolates better than a raw time (docs/costmodel.md).
 *
 * Legend: t = measured seconds (the sample's median), roofline =
 * opmodel_roofline, MAPE = mean of |predicted - t| / t over samples.
 */
#ifndef STRATA_COSTMODEL_TRAIN_H
#define STRATA_COSTMODEL_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "costmodel/costmodel.h"
#include "costmodel/mlp.h"
#include "db/db.h"
#include "ir/err.h"

/* --- features (opmodel.c) ---------------------------------------------------- */

/* Bumped whenever a feature, its order, the target, the op kinds (their
 * one-hot is a feature) or the analytical constants (one feature is the
 * analytical model's efficiency) change: a stored model of another version
 * is refused on load. 3: concat and mse joined the op kinds. 4: the share a
 * softmax's causal mask leaves; M, N, K as each phase's GEMM has them.
 * 5: whether the CPU executor runs a contraction as plain loops. 6: a causal
 * softmax's forward FLOPs and bytes scaled by that share (the target's
 * roofline moves with them). */
#define OPMODEL_FEAT_VERSION 6
#define OPMODEL_SIZES 6                 /* the largest letter sizes, sorted */
#define OPMODEL_NFEAT (19 + IR_LETTERS + 5 + CM_KIND_COUNT + PH_COUNT + DT_COUNT)

/* The feature vector of one op instance on device d, in f[OPMODEL_NFEAT];
 * the same function serves training and prediction. Pure: no allocation,
 * no state. */
void opmodel_features(const OpDevice *d, const OpShape *x, double f[OPMODEL_NFEAT]);
/* The roofline floored at 1 ns: what the target log(t / roofline) divides
 * by (an op with no flops and no bytes still has a defined ratio). */
double opmodel_roofline_floor(const OpDevice *d, const OpShape *x);
/* The analytical model's seconds (what opmodel_analytic answers). */
double opmodel_analytic_time(const OpDevice *d, const OpShape *x);

/* What a trained model is made of: an ensemble of nets of one shape
 * (OPMODEL_NFEAT inputs, the hidden widths, one output) that were trained
 * over one input and target scaling (set on each net with mlp_set_scaling
 * too: the load checks that they agree). */
#define OPMODEL_MAX_NETS 8
typedef struct {
    Mlp *const *nets;
    int nnets;
    const int *hidden;
    int nhidden;
    MlpAct act;                 /* MLP_RELU or MLP_TANH */
    const double *xmean, *xstd; /* OPMODEL_NFEAT each */
    double ymean, ystd;
    uint32_t covered;           /* bit k: kind k answered by the nets */
    double calib[3];            /* compute scale, comm scale, seconds per instruction
                                   (zeros: uncalibrated, 1, 1, 0) */
} OpNets;

/* The stored form of a trained model: a magic, the blob format version,
 * the feature version, the covered-kinds mask, the ensemble's shape and
 * scaling, and each net as mlp_save writes it with a checksum. *buf is
 * new; caller frees. */
int opmodel_save(const OpNets *s, uint8_t **buf, size_t *len, Err *err);
/* The covered-kinds mask of a loaded model (0 for the analytical one). */
uint32_t opmodel_covered(const OpModel *m);

/* --- profile samples (train.c) ------------------------------------------------ */

/* The device a profile describes: its measured peak (every dtype, as the
 * CPU executor computes in f32) and bandwidth; a GPU when the backend is
 * "cuda". */
void op_device_from_profile(const DbProfile *p, OpDevice *d);
/* The OpShape of one profile sample: kind, phase and dtype by name, the
 * letters and sizes from shape_json ({"spec":..,"sizes":{..}}, or {"n":..}
 * for adam and sgd), flops and bytes as measured. Returns -1 with err
 * naming what is wrong. */
int opshape_from_sample(const DbProfileOp *s, OpShape *x, Err *err);
/* "fwd" .. "update" -> Phase; -1 when unknown. */
int cm_phase_parse(const char *s, Phase *out);

/* --- training (train.c) ----------------------------------------------------------- */

typedef struct {
    uint64_t seed;
    double holdout;             /* share of each kind's shapes held out for the test (0: 0.2) */
    int max_epochs;             /* per learning-rate stage (0: 400) */
    /* called after every epoch (epoch counts across stages, of at most
     * max_total); a non-zero return stops training (keeping the best) */
    int (*progress)(void *ctx, int epoch, int max_total, double train_loss, double val_loss);
    void *ctx;
} TrainOpts;

typedef struct {
    uint8_t *blob;              /* opmodel_save's bytes; caller frees (train_result_free) */
    size_t nblob;
    cJSON *metrics;             /* per kind: samples, held out, MAPE of MLP / analytic / roofline */
    double heldout_mape;        /* the MLP's over every held-out sample (fraction); < 0: none held out */
    uint32_t covered;
} TrainResult;

/* Trains an op-time MLP on n samples of a profile whose device is d.
 * Samples are grouped by shape (kind and sizes, every phase together);
 * about opts->holdout of each kind's shapes are held out whole as the test
 * set, and another share of the remaining shapes stops training early.
 * Samples that cannot be read are skipped and counted in the metrics.
 * Deterministic for opts->seed. Returns 0, or -1 with err (no usable
 * sample, a failing MLP). */
int costmodel_train(const OpDevice *d, const DbProfileOp *ops, int n, const TrainOpts *opts,
                    TrainResult *r, Err *err);
void train_result_free(TrainResult *r);

/* Which shapes are held out: out[i] = 1 for a test sample, 2 for a
 * validation sample (early stopping) of ensemble member `member`, 0 for
 * training, -1 for a sample that cannot be read. Whole shapes go to one
 * set; the test set depends on the seed only, the validation set on the
 * seed and the member. Exposed for tests. */
void costmodel_split(const DbProfileOp *ops, int n, uint64_t seed, double holdout, int member,
                     int8_t *out);

#endif
