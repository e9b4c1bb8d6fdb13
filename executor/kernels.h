/*
 * kernels.h — CPU kernels for every op kind of the zoo, forward and backward,
 * on a rank's local shard, plus optimizer updates and gradient compression.
 *
 * Buffers are fp32 (int32 for indices and class labels), row-major over the
 * operand's letters in spec order, at the local letter sizes. A kernel never
 * allocates what its caller must free; scratch it needs comes from malloc and
 * is released before it returns.
 *
 * Sharding: `size` holds the local letter sizes, `off` the global index of a
 * rank's first element along each letter and `total` the global sizes, so a
 * shard computes exactly its part of the whole: a vocabulary-split embedding
 * gathers only the rows it holds (the rest is another rank's addend), a causal
 * softmax masks by global positions, a loss divides by the global token count.
 * Ops whose `reduce` letter is split (vocabulary-parallel cross-entropy,
 * synchronised batch norm) call back into `stats` to all-reduce their small
 * statistics across the ranks that hold the other parts.
 *
 * Legend: b,s,h = batch, sequence, hidden; v = vocabulary; n,c,h,w / o,r,s =
 * image batch, channels, spatial / conv out-channels, window.
 */
#ifndef STRATA_KERNELS_H
#define STRATA_KERNELS_H

#include <stdbool.h>
#include <stdint.h>
#include "ir/err.h"
#include "ir/graph.h"

#ifdef __cplusplus
extern "C" {             /* the CUDA kernels (C++) call the shape helpers */
#endif

/* All-reduces of small statistics across the ranks holding the other parts of
 * a split reduce letter. NULL (or a NULL function) when the letter is whole. */
typedef struct {
    int (*sum)(void *ctx, float *buf, int64_t n, Err *err);
    int (*max)(void *ctx, float *buf, int64_t n, Err *err);
    void *ctx;
} KernelStats;

typedef struct {
    const Op *op;
    int64_t size[IR_LETTERS];    /* local sizes (conv/pool spatial letters: output size) */
    int64_t off[IR_LETTERS];     /* global index of the first local element */
    int64_t total[IR_LETTERS];   /* global sizes */
    int64_t in_hw[2];            /* conv2d/pool2d: local input height, width */
    const KernelStats *stats;
} KernelShape;

/* Fills ks for op with local == global sizes (a one-rank run). */
void kernel_shape_whole(KernelShape *ks, const Op *op, const Graph *g);

/* Every letter of the op lies inside its global extent (size and offset
 * within total); the letters in `whole` (bits l - 'a') are not split at all.
 * The CPU and the CUDA kernels check their shapes with it, with one message. */
int kernel_check_extents(const KernelShape *ks, uint32_t whole, Err *err);

/* A concat's shape: its concatenated letters whole (kernel_check_extents)
 * and the output's as long as the inputs' own together. */
int kernel_check_concat(const KernelShape *ks, Err *err);

/* Local element count of operand k (k == nin: the output). */
int64_t kernel_operand_numel(const KernelShape *ks, int k);

/* out = op(in...). `in[k]` is operand k (const float* or const int32_t*). */
int kernel_forward(const KernelShape *ks, const void *const *in, float *out, Err *err);

/* Backward of op: given the forward inputs, the forward output and dout,
 * ADDS the gradient of operand k into din[k] for every k with din[k] != NULL
 * (params and activations alike; NULL for operands that need none). */
int kernel_backward(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);

/* --- flat buffers, on all of the rank's threads ---------------------------- */
void kernel_zero(void *p, size_t bytes);
void kernel_copy(void *dst, const void *src, size_t bytes);   /* may overlap */
void kernel_axpy(float *y, const float *x, float a, int64_t n); /* y += a x */
void kernel_fill(float *x, float v, int64_t n);

/* --- optimizers (in place, n elements) ------------------------------------ */
typedef struct {
    float lr, momentum, beta1, beta2, eps, weight_decay;
} OptimHyper;

void kernel_sgd(float *w, const float *g, float *mom, int64_t n, const OptimHyper *h);
/* step counts from 1 (bias correction). */
void kernel_adam(float *w, const float *g, float *m, float *v, int64_t n, int64_t step,
                 const OptimHyper *h);

/* --- gradient compression -------------------------------------------------- */
/* IEEE half precision, round to nearest even. */
void kernel_to_fp16(const float *x, uint16_t *h, int64_t n);
void kernel_from_fp16(const uint16_t *h, float *x, int64_t n);
/* b[i] = half(float(a[i]) + float(b[i])), rounded to nearest even: the sum a
 * half-precision all-reduce combines with. One thread. */
void kernel_half_sum(const uint16_t *a, uint16_t *b, int64_t n);
/* false: the conversions above take the portable integer path even where
 * the CPU converts in hardware (the tests compare the two). */
extern bool kernel_fp16_hardware;
/* int8 with one scale per buffer and error feedback: q = round((x + e) / scale),
 * e <- (x + e) - q * scale. Returns the scale (max |x + e| / 127). */
float kernel_int8_encode(const float *x, float *e, int8_t *q, int64_t n);
void kernel_int8_decode(const int8_t *q, float scale, float *x, int64_t n);
/* Orthonormalises the r columns of P (rows x r, row-major) in place
 * (Gram-Schmidt, as PowerSGD does between its two all-reduces). */
void kernel_orthonormalize(float *p, int64_t rows, int r);

/* --- deterministic values --------------------------------------------------- */
/* Value of element `index` (global, row-major) of tensor `name` under `seed`:
 * a pure function (SplitMix64 over seed, name hash and index), uniform in
 * [-scale, scale). A shard therefore holds exactly what the whole tensor
 * holds at its positions, whatever the strategy. */
float kernel_init_value(uint64_t seed, const char *name, int64_t index, float scale);
/* Fills a local block of a tensor of global shape `shape` (ndim dims) whose
 * first element sits at global `offset` with local extents `local`. */
void kernel_init_fill(float *buf, uint64_t seed, const char *name, int ndim,
                      const int64_t *shape, const int64_t *offset, const int64_t *local,
                      float scale);
/* The same for int32 data in [0, hi) (token ids, labels). */
void kernel_init_fill_int(int32_t *buf, uint64_t seed, const char *name, int ndim,
                          const int64_t *shape, const int64_t *offset, const int64_t *local,
                          int32_t hi);

/* Whether k_contract2 runs a contraction of m x n x k multiply-adds per GEMM
 * call (the batch letters outside) as plain loops instead of calling SGEMM:
 * the two paths differ several times in speed, so the cost model's features
 * say which one an op takes. */
bool kernel_contract_loops(double m, double n, double k);

#ifdef __cplusplus
}
#endif

#endif
