/*
 * mlp.h — a small multi-layer perceptron in plain C: dense layers, one
 * activation, Adam, input/target standardisation, a validation split with
 * early stopping, and a byte-exact save/load.
 *
 * One module serves two users: the cost model (costmodel/) regresses the
 * time of an operator from its features, and the searcher's RL policy
 * (search/) emits logits over decisions and trains them with REINFORCE. So
 * besides mlp_train (supervised, mean squared error) it exposes the pieces a
 * policy-gradient loop needs: a forward pass that keeps its activations, a
 * backward pass from any output gradient that accumulates parameter
 * gradients, and an Adam step on what was accumulated.
 *
 * Values in and out are raw: the network standardises x with the stored
 * (mean, std) per input and returns y = z * ystd + ymean per output, so a
 * caller never handles scaled values. Scaling defaults to the identity.
 *
 * Everything is deterministic for a seed: initialisation, the validation
 * split and the batch order use a counter-based generator (SplitMix64), and
 * the sums run in a fixed order.
 *
 * Legend: L = layers (hidden + output), n_l = width of layer l,
 * W_l (n_l x n_{l-1}, row-major), b_l, x = input, z = network output in
 * standardised units, y = output in raw units.
 */
#ifndef STRATA_MLP_H
#define STRATA_MLP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ir/err.h"

#define MLP_MAX_LAYERS 8        /* hidden layers + the output layer */
#define MLP_MAX_WIDTH 512       /* widest layer (inputs included) */

typedef enum { MLP_RELU, MLP_TANH, MLP_GELU } MlpAct;

typedef struct Mlp Mlp;
typedef struct MlpWork MlpWork;

/* A network nin -> hidden[0] -> ... -> hidden[nhidden-1] -> nout, the
 * activation after every hidden layer and none after the output. Weights
 * are He/Xavier-initialised from seed, biases zero, Adam state zero.
 * Returns NULL with err on a bad shape (a width < 1 or > MLP_MAX_WIDTH, more
 * than MLP_MAX_LAYERS - 1 hidden layers). Caller frees with mlp_free. */
Mlp *mlp_new(int nin, const int *hidden, int nhidden, int nout, MlpAct act, uint64_t seed,
             Err *err);
void mlp_free(Mlp *m);
/* A deep copy (weights, scaling and Adam state). Caller frees. */
Mlp *mlp_clone(const Mlp *m);

int mlp_nin(const Mlp *m);
int mlp_nout(const Mlp *m);

/* Scaling: any pointer may be NULL (that side keeps what it has). A std of
 * 0 (a constant feature) is stored as 1. */
void mlp_set_scaling(Mlp *m, const double *xmean, const double *xstd, const double *ymean,
                     const double *ystd);
/* Sets the scaling to the mean and standard deviation of the n rows of X
 * (n x nin, row-major) and Y (n x nout; may be NULL: y scaling unchanged). */
void mlp_fit_scaling(Mlp *m, const double *X, const double *Y, int n);

/* y (nout values) for one input row x (nin values). Thread-safe on a shared
 * Mlp: it keeps no state. */
void mlp_predict(const Mlp *m, const double *x, double *y);

/* --- training -------------------------------------------------------------- */
typedef struct {
    double lr;              /* Adam step size (default 1e-3 when 0) */
    double beta1, beta2;    /* defaults 0.9, 0.999 when 0 */
    double eps;             /* default 1e-8 when 0 */
    double weight_decay;    /* decoupled (AdamW); 0: none */
} MlpAdam;

typedef struct {
    MlpAdam adam;
    int epochs;             /* at most this many passes (default 200 when 0) */
    int batch;              /* mini-batch rows (default 64 when 0) */
    double val_frac;        /* share of rows held out for early stopping (0: none) */
    const uint8_t *val_mask;/* or: rows with val_mask[i] != 0 are the validation set
                               (overrides val_frac; lets a caller hold out whole groups) */
    int patience;           /* stop after this many epochs without a better validation
                               loss, keeping the best weights (default 20 when 0) */
    uint64_t seed;          /* split and batch order */
    double huber;           /* 0: squared error; > 0: Huber loss with this delta, in
                               standardised units (quadratic within it, linear beyond) */
    const double *row_weight; /* per row of X: how much its loss counts (finite, >= 0;
                               NULL: 1 each), in training and in the validation loss */
    bool fit_scaling;       /* first set the scaling from the training rows */
    /* called after every epoch (1, 2, ...) with the mean loss over that epoch's
     * mini-batches and the validation loss (NAN without validation rows); a
     * non-zero return stops training (keeping the best) */
    int (*progress)(void *ctx, int epoch, double train_loss, double val_loss);
    void *ctx;
} MlpTrainOpts;

typedef struct {
    int epochs;             /* epochs run */
    int best_epoch;         /* the epoch whose weights were kept (0: the weights given,
                               when no epoch improved the validation loss; without
                               validation rows, the last epoch) */
    double train_loss;      /* mean over rows and outputs of (z - t)^2 (or its Huber
                               loss; times the row's weight, with row_weight), t the
                               standardised target, of the kept weights on the
                               training rows */
    double val_loss;        /* the same on the validation rows (NAN without any) */
    int ntrain, nval;
} MlpTrainResult;

/* Minimises the mean squared error (or Huber loss) of z against the standardised Y over
 * X (n x nin) and Y (n x nout), with Adam on mini-batches. Deterministic for
 * opts->seed. Returns 0, or -1 with err (n < 1, a non-finite value, a
 * validation set that takes every row). */
int mlp_train(Mlp *m, const double *X, const double *Y, int n, const MlpTrainOpts *opts,
              MlpTrainResult *res, Err *err);

/* --- the pieces of a training loop (for REINFORCE and tests) ---------------- */
/* Scratch for one forward/backward: activations of the last forward and the
 * accumulated parameter gradients (zero at creation). Caller frees. */
MlpWork *mlp_work_new(const Mlp *m);
void mlp_work_free(MlpWork *w);
/* Forward pass of one row, keeping its activations in w; y as mlp_predict. */
void mlp_forward(const Mlp *m, MlpWork *w, const double *x, double *y);
/* Given dL/dy (raw units) for the row of the last mlp_forward, adds dL/dtheta
 * to w's gradient. */
void mlp_backward(const Mlp *m, MlpWork *w, const double *dy);
/* One Adam step with the accumulated gradient times `scale` (1/batch for a
 * mean), then zeroes the accumulated gradient. */
void mlp_adam_step(Mlp *m, MlpWork *w, const MlpAdam *a, double scale);

/* The flat parameter vector (every W_l then b_l, layer by layer) and the
 * matching accumulated gradient; for gradient checks. */
int mlp_nparams(const Mlp *m);
double *mlp_params(Mlp *m);
const double *mlp_grads(const MlpWork *w);

/* --- storage ---------------------------------------------------------------- */
/* Serialises shape, activation, weights, scaling and Adam state into a new
 * buffer (*buf, *len; caller frees *buf): a magic, a version and
 * little-endian IEEE doubles, so a load gives back bit-identical values. */
int mlp_save(const Mlp *m, uint8_t **buf, size_t *len, Err *err);
/* Reads what mlp_save wrote; a short, corrupt or foreign buffer is an error
 * saying which. Caller frees with mlp_free. */
Mlp *mlp_load(const uint8_t *buf, size_t len, Err *err);

#endif
