/*
 * onnx.h — an ONNX model as strata's model JSON.
 *
 * The protobuf is read by protobuf-c from the onnx.proto schema (compiled at
 * build time from Debian's python3-onnx, ONNX 1.12, Expat licence). Weights
 * are not needed to plan: parameters are the initializers the ops read as
 * operands, and the outputs of ConstantOfShape nodes whose shape is a
 * constant (how models stripped of their weights store them); initializers
 * and Constant nodes read for their values are constants (shapes, axes,
 * scalars, masks).
 *
 * Letters: every dim of every ONNX value is kept as the index ranges it is
 * made of; ops that equate dims join them into one letter, Reshape regroups
 * them (splitting a range, and so every tensor that holds it: a [h, h]
 * weight whose output is reshaped into heads becomes [h, n, d]), Transpose
 * permutes them. Letters are chosen per op at the end (onnx.c).
 *
 * Operators, each onto strata's kinds:
 *   Conv (square kernel, equal strides and pads, one group) -> conv2d (+ bias)
 *   BatchNormalization -> batchnorm; Relu, Gelu -> relu, gelu; GELU written
 *   out with erf or tanh -> gelu; LayerNormalization, and the layer norm
 *   written out (ReduceMean, Sub, Pow, Sqrt, Div, then Mul, Add) -> layernorm
 *   MaxPool, AveragePool -> pool2d; GlobalAveragePool, or an AveragePool over
 *   the whole image, and ReduceMean -> mean
 *   MatMul (numpy broadcasting; weights or two activations), Gemm -> matmul
 *   Add, Sub, Sum -> add (activations) or bias (a parameter broadcast);
 *   Mul, Div by a parameter or of two activations -> matmul (elementwise)
 *   Mul, Div by a scalar constant, an added causal mask or a Where with one
 *   -> the `scale` and `causal` of the softmax that reads the value
 *   Softmax -> softmax, or dropped at the graph's output (the loss takes the
 *   logits); Gather -> embedding, or the table itself when constant indices
 *   read it whole in order (learned positions); Concat -> concat
 *   Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Dropout, Identity ->
 *   nothing (the same data, named anew)
 * A subtraction plans as an addition and a division by a parameter as a
 * product: the cost is the same, and strata trains with values it
 * initialises itself. A graph ending in SoftmaxCrossEntropyLoss (its labels
 * a second graph input) keeps it as cross_entropy; otherwise a loss is
 * added: cross-entropy over the output's last dim (labels of the other dims)
 * or mse (a target of the output's shape).
 * What does not map (an operator, a dynamic shape without a batch, a
 * layout letters cannot name, a mask that is not causal) is refused, naming
 * the node, its op type and why.
 *
 * Blocks: repeated structure is found from the graph's shape. Residual
 * networks: the ops from one fork (a value two ops read) to the next form a
 * segment, and segments repeating with a period p make one block of p
 * (a transformer layer: layer norm, attention, MLP; a ResNet bottleneck:
 * one); the stem before the first fork and the head after the last join
 * stay outside blocks. Networks of concatenated branches (SqueezeNet,
 * Inception): a block ends at each concat, the first block's ops before the
 * shape the second has being the stem. Otherwise a block ends at each
 * pooling (VGG's stages), else at each activation (an MLP's layers).
 */
#ifndef STRATA_ONNX_H
#define STRATA_ONNX_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "err.h"

typedef struct {
    int64_t batch;                 /* the input's batch dim (0: as the model says) */
    const char *name;              /* the model's name (NULL: the graph's) */
    const char *loss;              /* "cross_entropy" (NULL: the same) or "mse" */
} OnnxOpts;

/* The model JSON (graph_from_json accepts it), or NULL with err. Caller
 * deletes. */
/* The options' own faults (an unknown loss, an empty name), named as the
 * fields they are ("loss: ..."), before any model is read. */
int onnx_check_opts(const OnnxOpts *o, Err *err);
cJSON *onnx_import(const uint8_t *data, size_t n, const OnnxOpts *o, Err *err);
cJSON *onnx_import_file(const char *path, const OnnxOpts *o, Err *err);

#endif
