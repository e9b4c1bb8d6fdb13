"""Models written with onnx.helper for test_onnx.c, in the forms exporters
emit: a GPT-2-style decoder (the zoo's `gpt` preset `small`) and a CNN with
Concat (SqueezeNet's fire modules).

    python onnx_models.py gpt OUT.onnx
    python onnx_models.py gpt-tiny OUT.onnx
    python onnx_models.py fire OUT.onnx

The GPT's two layers use different spellings of the same thing, so one
model checks them all: LayerNormalization and the layer norm written out
(ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add); GELU written out with erf and
with tanh; the 1/sqrt(d) scale as a Div of the scores and as a Mul of the
queries; the causal mask as an added constant and as a Where.
"""
import math
import sys

import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper
import numpy as np

nodes, inits = [], []
count = [0]


def name(prefix):
    count[0] += 1
    return "%s_%d" % (prefix, count[0])


def param(prefix, shape):
    n = name(prefix)
    inits.append(numpy_helper.from_array(np.zeros(shape, np.float32), n))
    return n


def const(value, dtype=np.float32):
    n = name("c")
    inits.append(numpy_helper.from_array(np.array(value, dtype), n))
    return n


def node(op, inputs, **attrs):
    out = name(op.lower())
    nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
    return out


def layernorm(x, h, written_out):
    g, b = param("ln_g", [h]), param("ln_b", [h])
    if not written_out:
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)
    mean = node("ReduceMean", [x, const([-1], np.int64)])
    d = node("Sub", [x, mean])
    var = node("ReduceMean", [node("Pow", [d, const(2.0)]), const([-1], np.int64)])
    std = node("Sqrt", [node("Add", [var, const(1e-5)])])
    return node("Add", [node("Mul", [node("Div", [d, std]), g]), b])


def gelu(x, form):
    if form == "erf":
        e = node("Erf", [node("Div", [x, const(math.sqrt(2))])])
        return node("Mul", [node("Mul", [x, node("Add", [e, const(1.0)])]), const(0.5)])
    cube = node("Mul", [const(0.044715), node("Pow", [x, const(3.0)])])
    inner = node("Mul", [const(math.sqrt(2 / math.pi)), node("Add", [x, cube])])
    t = node("Add", [const(1.0), node("Tanh", [inner])])
    return node("Mul", [node("Mul", [const(0.5), x]), t])


def dense(x, k, n):
    return node("Add", [node("MatMul", [x, param("w", [k, n])]), param("b", [n])])


def gpt(path, L=2, H=64, NH=4, S=32, V=256):
    D = H // NH
    wte, wpe = param("wte", [V, H]), param("wpe", [S, H])
    pos = name("positions")
    nodes.append(helper.make_node("Constant", [], [pos], value=numpy_helper.from_array(
        np.arange(S, dtype=np.int64), pos)))
    x = node("Add", [node("Gather", [wte, "tokens"]), node("Gather", [wpe, pos])])
    heads = const([0, 0, NH, D], np.int64)
    merged = const([0, 0, H], np.int64)
    causal = np.tril(np.ones((S, S), bool))
    for i in range(L):
        h = layernorm(x, H, written_out=i == 1)
        q = node("Transpose", [node("Reshape", [dense(h, H, H), heads])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [dense(h, H, H), heads])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [dense(h, H, H), heads])], perm=[0, 2, 1, 3])
        if i == 0:
            scores = node("Div", [node("MatMul", [q, k]), const(math.sqrt(D))])
            mask = np.where(causal, 0.0, -1e9).astype(np.float32)
            scores = node("Add", [scores, const(mask)])
        else:
            scores = node("MatMul", [node("Mul", [q, const(1 / math.sqrt(D))]), k])
            scores = node("Where", [const(causal[None, None], bool), scores, const(-np.inf)])
        p = node("Softmax", [scores], axis=-1)
        ctx = node("Transpose", [node("MatMul", [p, v])], perm=[0, 2, 1, 3])
        x = node("Add", [x, dense(node("Reshape", [ctx, merged]), H, H)])
        h = layernorm(x, H, written_out=i == 0)
        x = node("Add", [x, dense(gelu(dense(h, H, 4 * H), "erf" if i == 0 else "tanh"), 4 * H, H)])
    x = layernorm(x, H, written_out=False)
    logits = node("MatMul", [x, node("Transpose", [wte], perm=[1, 0])])
    g = helper.make_graph(nodes, "gpt", [helper.make_tensor_value_info("tokens", T.INT64, ["N", S])],
                          [helper.make_tensor_value_info(logits, T.FLOAT, ["N", S, V])], inits)
    onnx.save(helper.make_model(g), path)


def fire(path):
    """A SqueezeNet-style CNN, the zoo's `fire`: a 3x3 stride-2 stem, then
    twice a squeeze 1x1 and 1x1 and 3x3 expands concatenated over the
    channels; global pooling; a classifier."""
    def conv(x, cin, cout, k, pad=0, stride=1):
        y = node("Conv", [x, param("conv_w", [cout, cin, k, k]), param("conv_b", [cout])],
                 pads=[pad] * 4, strides=[stride] * 2)
        return node("Relu", [y])

    x = conv("image", 3, 16, 3, pad=1, stride=2)
    c = 16
    for squeeze, expand in ((8, 16), (8, 16)):
        s = conv(x, c, squeeze, 1)
        x = node("Concat", [conv(s, squeeze, expand, 1), conv(s, squeeze, expand, 3, pad=1)], axis=1)
        c = 2 * expand
    x = node("Flatten", [node("GlobalAveragePool", [x])], axis=1)
    logits = node("Gemm", [x, param("fc_w", [10, c]), param("fc_b", [10])], transB=1)
    g = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("image", T.FLOAT, ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info(logits, T.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(g), path)


if __name__ == "__main__":
    # gpt-tiny: the same graph at sizes small enough for a fuzzing seed
    {"gpt": gpt, "gpt-tiny": lambda p: gpt(p, L=2, H=8, NH=2, S=4, V=16),
     "fire": fire}[sys.argv[1]](sys.argv[2])
