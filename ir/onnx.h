/*
 * onnx.h — an ONNX model as strata's model JSON.
 *
 * The protobuf is read by protobuf-c from the onnx.proto schema (compiled at
 * build time from Debian's python3-onnx, ONNX 1.12, Expat licence). Weights
 * are not needed to plan: parameters are the initializers the ops read as
 * weights, biases and scales, and the outputs of ConstantOfShape nodes whose
 * shape is an initializer (how models stripped of their weights store them).
 *
 * Operators, each onto strata's kinds and einsum letters:
 *   Conv (square kernel, equal strides and pads, one group) -> conv2d (+ bias)
 *   BatchNormalization -> batchnorm; Relu, Gelu -> relu, gelu
 *   MaxPool, AveragePool -> pool2d; GlobalAveragePool, or an AveragePool over
 *   the whole image -> mean (global pooling, the 1x1 dims dropped)
 *   Add, Sum -> add (two activations) or bias (a parameter over the last dim)
 *   Gemm (transB), MatMul with a weight -> matmul (+ bias); a Flatten or
 *   Reshape of an image to [n, c*h*w] feeding one is folded into the
 *   weight's letters (its shape becomes [m, c, h, w])
 *   Reshape, Flatten, Squeeze that only drop 1-sized dims, Dropout, Identity
 *   -> nothing (the value itself)
 *   Softmax -> softmax, or dropped when it is the graph's output (the loss
 *   takes the logits)
 * A cross-entropy loss over the output's last dim is added, with the labels
 * tensor it implies. What does not map (an operator, a dynamic shape without
 * a batch, a layout letters cannot name) is refused, naming the node, its
 * op type and why.
 *
 * Blocks: repeated structure is found from the graph's shape. Residual
 * networks: a block runs from one fork (a value two ops read, skip and
 * branch) to the next, the stem before the first fork and the head after
 * the last join outside blocks. Without residuals, a block ends at each
 * pooling (VGG's stages), else at each activation (an MLP's layers); what
 * follows the last one is the head.
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
    const char *loss;              /* "cross_entropy" (NULL: the same) */
} OnnxOpts;

/* The model JSON (graph_from_json accepts it), or NULL with err. Caller
 * deletes. */
cJSON *onnx_import(const uint8_t *data, size_t n, const OnnxOpts *o, Err *err);
cJSON *onnx_import_file(const char *path, const OnnxOpts *o, Err *err);

#endif
