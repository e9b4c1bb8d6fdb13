/*
 * graph.h — the model graph: tensors and ops, each op carrying an index spec
 * in einsum letters.
 *
 * The letters name an op's iteration space; a strategy splits letters over
 * mesh axes (see strategy.h) and the lowering (lower.h) derives every
 * collective from those splits. FLOPs and bytes of every op phase follow from
 * the spec and the letter sizes alone, so the same function prices a whole op
 * (model statistics) and a rank's shard of it (lowering, cost model).
 *
 * Legend: b,s,h = batch, sequence, hidden; n,d = heads, head dim; f = ffn;
 * v = vocabulary; e,c = experts, expert capacity; n,c,h,w = image batch,
 * channels, height, width in convolutions; o,r,s = conv out-channels, window.
 */
#ifndef STRATA_GRAPH_H
#define STRATA_GRAPH_H

#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "err.h"

#define IR_MAX_DIMS 8       /* dims of one tensor */
#define IR_MAX_INPUTS 4     /* operands of one op */
#define IR_LETTERS 26       /* letters 'a'..'z' */

typedef enum { DT_F32, DT_BF16, DT_F16, DT_I32, DT_COUNT } DType;
typedef enum { ROLE_INPUT, ROLE_LABEL, ROLE_PARAM, ROLE_ACT, ROLE_COUNT } Role;

typedef struct {
    char *name;
    int ndim;                      /* 0 for a scalar (the loss) */
    int64_t shape[IR_MAX_DIMS];
    DType dtype;
    Role role;
    /* derived on load */
    int producer;                  /* op index, -1 for inputs, labels, params */
    int batch_dim;                 /* dim that carries the batch, -1 if none */
    bool needs_grad;               /* a param, or an activation that depends on one */
    int form;                      /* the first tensor alike in all above but name and
                                      producer (the lowering compares repeated blocks by it) */
} Tensor;

/*
 * Op kinds. What each computes, in terms of its spec:
 *   matmul        product of the two operands, summed over letters not in the output
 *   embedding     out[...h] = table[idx[...], h]; the `gather` letter is the table row
 *   conv2d        "nchw,ocrs->nohw"; h,w are spatial (sizes follow stride/pad), r,s the window
 *   pool2d        "nchw->nchw" max or average over a window; h,w spatial
 *   mean          average over the letters missing from the output (global pooling)
 *   add           elementwise sum of inputs with identical letters (residual)
 *   bias          first input plus the second broadcast (its letters a subset)
 *   gelu, relu    elementwise
 *   layernorm     normalise over the `reduce` letters; optional gamma, beta over them
 *   batchnorm     normalise over the `reduce` letters (n,h,w); gamma, beta over c
 *   softmax       over the `reduce` letter; `causal` masks t > s
 *   cross_entropy "bsv,bs->" mean loss; `reduce` is the class letter
 *   route         switch router: "bse->bsec", top-1 expert and capacity slot per token
 *   concat        "nahw,nbhw->nchw": the inputs laid end to end, in input order, along
 *                 the one letter only the output has (its size the sum of the inputs'
 *                 own letters, the one letter each input has and the output lacks);
 *                 every other letter is in every operand
 *   mse           "bk,bk->" mean over every element of (input 0 - input 1)^2; input 1
 *                 is the target, a float label, in any letter order
 */
typedef enum {
    OP_MATMUL, OP_EMBEDDING, OP_CONV2D, OP_POOL2D, OP_MEAN, OP_ADD, OP_BIAS,
    OP_GELU, OP_RELU, OP_LAYERNORM, OP_BATCHNORM, OP_SOFTMAX, OP_CROSS_ENTROPY,
    OP_ROUTE, OP_CONCAT, OP_MSE, OP_KIND_COUNT
} OpKind;

typedef struct {
    char *name;
    OpKind kind;
    char *spec;                                /* as written: "bsh,hf->bsf" */
    int nin;
    int in[IR_MAX_INPUTS];                     /* tensor indices */
    int out;                                   /* one output tensor */
    char in_letters[IR_MAX_INPUTS][IR_MAX_DIMS + 1];
    char out_letters[IR_MAX_DIMS + 1];
    int block;                                 /* -1: outside the repeated blocks */
    /* attributes (0 / false when the kind has none) */
    uint32_t reduce_mask;                      /* bit (l - 'a'): `reduce` letters */
    uint32_t gather_mask;                      /* embedding's `gather` letter */
    int stride, pad, window;                   /* conv2d (stride, pad), pool2d (all) */
    bool causal;                               /* softmax */
    double scale;                              /* softmax: logits are multiplied by it first; 1 on every other op */
    bool pool_avg;                             /* pool2d: average instead of max */
    /* derived on load */
    uint32_t letters_mask;                     /* every letter of the spec */
    uint32_t spatial_mask;                     /* conv2d/pool2d h,w (input size != output size) */
    uint32_t window_mask;                      /* conv2d kernel letters r,s */
    uint32_t concat_mask;                      /* concat: each input's own letter, the output's */
    int64_t size[IR_LETTERS];                  /* letter sizes (spatial: output size) */
    int batch_letter;                          /* 0..25, or -1 if the op sees no batch */
    int form;                                  /* the first op alike in all but its name,
                                                  operands and block */
} Op;

typedef struct {
    char *name;
    Tensor *tensors;
    int ntensors;
    Op *ops;                                   /* in a valid topological order */
    int nops;
    int nblocks;                               /* 1 + the largest block id */
    double train_flops;                        /* one step: forward and backward of every
                                                  op (graph_stats' train_flops, kept) */
    /* derived on load: the ops that read tensor t, ascending, each once
     * (an op reading it twice, "bth,buh", counts once):
     * cons[cons_off[t] .. cons_off[t + 1]) */
    int *cons_off, *cons;
} Graph;

/* Work and traffic of one op phase. Bytes are those read plus written. */
typedef struct {
    double flops[3];                           /* [PH_FWD, PH_BWD_DATA, PH_BWD_WEIGHT] */
    double bytes[3];
} OpCost;

enum { COST_FWD = 0, COST_BWD_DATA = 1, COST_BWD_WEIGHT = 2 };

typedef struct {
    double params;                             /* elements */
    double param_bytes;
    double train_flops;                        /* forward + backward, no recompute */
    double fwd_flops;
    double act_bytes;                          /* activations kept for the backward */
    int nblocks;
    /* per block, index 0..nblocks-1; [nblocks] is everything outside blocks */
    double *block_params, *block_flops, *block_act_bytes;
} GraphStats;

/* Parses and validates. Returns NULL with err naming the JSON path
 * (`ops[12].inputs[1]`) and the reason. Caller frees with graph_free. */
Graph *graph_from_json(const cJSON *j, Err *err);
Graph *graph_load(const char *path, Err *err);
/* Returns a new cJSON the caller deletes; graph_from_json(graph_to_json(g)) == g. */
cJSON *graph_to_json(const Graph *g);
int graph_save(const Graph *g, const char *path, Err *err);
void graph_free(Graph *g);

int graph_find_tensor(const Graph *g, const char *name);   /* -1 if absent */
int graph_find_op(const Graph *g, const char *name);
/* Does an op of this kind read tensor t? */
bool graph_read_by(const Graph *g, int t, OpKind kind);
/* Stable 16-hex-digit id of the graph's canonical JSON. */
void graph_id(const Graph *g, char out[17]);
/* The canonical JSON on one line (the text a store keeps) and its id, from
 * one print. Caller frees the text with cJSON_free. */
char *graph_text(const Graph *g, char id[17]);

/* Cost of an op with the given letter sizes (op->size for the whole op, or a
 * rank's local sizes). Phases that do not exist (no input needs a gradient,
 * no param operand) cost 0. */
void graph_op_cost(const Graph *g, int op, const int64_t size[IR_LETTERS], OpCost *c);

/* Totals for a training step. Caller frees with graph_stats_free. */
int graph_stats(const Graph *g, GraphStats *st, Err *err);
void graph_stats_free(GraphStats *st);

int64_t tensor_numel(const Tensor *t);
int dtype_bytes(DType d);
const char *dtype_name(DType d);
int dtype_parse(const char *s, DType *out);
const char *op_kind_name(OpKind k);
int op_kind_parse(const char *s, OpKind *out);
/* cross_entropy and mse: a scalar mean over the whole batch (summed over
 * micro-batches), whose gradient the step starts from. */
bool op_kind_is_loss(OpKind k);
/* A list of kinds to measure or model ("matmul,adam"): not empty, each an
 * op kind or an optimizer (sgd, adam); the first that is not is said in
 * err. */
int op_kinds_check(const char *list, Err *err);
/* The letter of operand k (k == nin: the output) along which a concat lays
 * its inputs end to end, as 0..25; -1 for any other kind. */
int op_concat_letter(const Op *op, int k);
/* The letters a causal softmax masks, as 0..25: element (s, t) is masked
 * where t's position exceeds s's; s and t are its input's last two letters
 * (the graph checks). 0 with both set; -1 for any other op. */
int op_causal_letters(const Op *op, int *s, int *t);
const char *role_name(Role r);

#endif
