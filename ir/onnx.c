/*
 * onnx.c — an ONNX model as strata's model JSON (see onnx.h).
 */
#include "onnx.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx.pb-c.h"
#include "util.h"

/* A value of the ONNX graph, as strata sees it. */
typedef enum { V_NONE, V_INPUT, V_PARAM, V_ACT, V_SHAPE } VKind;

typedef struct {
    char *name;                    /* ONNX name */
    VKind kind;
    int rank;
    int64_t shape[4];
    int dtype;                     /* ONNX elem type */
    int alias;                     /* >= 0: this value is that one (Dropout, Reshape...) */
    int flat_of;                   /* >= 0: [n, c*h*w] of that 4-D value (folded into a weight) */
    int64_t ints[8];               /* V_SHAPE: an int64 initializer's values */
    int nints;
    bool used;                     /* a param some op reads */
    bool emitted;                  /* a param or activation in the JSON */
    int consumers;                 /* strata ops reading it */
    int producer;                  /* strata op making it, -1 */
} Val;

typedef struct {
    Val *v;
    int n, cap;
    cJSON *tensors, *ops;
    int nops;
    int *op_block;                 /* per strata op, filled at the end */
    char **op_kind;
    int **op_ins;                  /* per strata op: value indices read */
    int *op_nin, *op_out;
    Err *err;
} Imp;

/* protobuf-c leaves an absent string NULL */
static const char *str(const char *s)
{
    return s ? s : "";
}

static int find(Imp *m, const char *name)
{
    for (int i = m->n - 1; i >= 0; i--)
        if (!strcmp(m->v[i].name, name)) return i;
    return -1;
}

static int add_val(Imp *m, const char *name, VKind kind)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 256;
        m->v = xrealloc(m->v, sizeof *m->v * (size_t)m->cap);
    }
    Val *v = &m->v[m->n];
    memset(v, 0, sizeof *v);
    v->name = xstrdup(name);
    v->kind = kind;
    v->alias = v->flat_of = v->producer = -1;
    v->dtype = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    return m->n++;
}

/* Follows aliases. */
static int real(const Imp *m, int i)
{
    while (i >= 0 && m->v[i].alias >= 0) i = m->v[i].alias;
    return i;
}

static const char *dtype_of(int t)
{
    return t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ? "f16"
         : t == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16 ? "bf16" : "f32";
}

/* The JSON tensor of value i (once). */
static void emit_tensor(Imp *m, int i, const char *role)
{
    Val *v = &m->v[i];
    if (v->emitted) return;
    v->emitted = true;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "name", v->name);
    cJSON *sh = cJSON_AddArrayToObject(t, "shape");
    for (int d = 0; d < v->rank; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)v->shape[d]));
    cJSON_AddStringToObject(t, "dtype", !strcmp(role, "label") ? "i32" : dtype_of(v->dtype));
    cJSON_AddStringToObject(t, "role", role);
    cJSON_AddItemToArray(m->tensors, t);
}

/* A strata op reading ins (value indices, params emitted as they are first
 * read), writing value out. Returns the JSON op for extra attributes. */
static cJSON *emit_op(Imp *m, const char *name, const char *kind, const char *spec,
                      const int *ins, int nin, int out)
{
    for (int k = 0; k < nin; k++) {
        Val *v = &m->v[ins[k]];
        if (v->kind == V_PARAM) emit_tensor(m, ins[k], "param");
        v->consumers++;
    }
    emit_tensor(m, out, "activation");
    m->v[out].producer = m->nops;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "kind", kind);
    cJSON_AddStringToObject(o, "spec", spec);
    cJSON *in = cJSON_AddArrayToObject(o, "inputs");
    for (int k = 0; k < nin; k++) cJSON_AddItemToArray(in, cJSON_CreateString(m->v[ins[k]].name));
    cJSON_AddStringToObject(o, "output", m->v[out].name);
    cJSON_AddItemToArray(m->ops, o);
    m->op_kind = xrealloc(m->op_kind, sizeof *m->op_kind * (size_t)(m->nops + 1));
    m->op_ins = xrealloc(m->op_ins, sizeof *m->op_ins * (size_t)(m->nops + 1));
    m->op_nin = xrealloc(m->op_nin, sizeof *m->op_nin * (size_t)(m->nops + 1));
    m->op_out = xrealloc(m->op_out, sizeof *m->op_out * (size_t)(m->nops + 1));
    m->op_kind[m->nops] = xstrdup(kind);
    m->op_ins[m->nops] = xmalloc(sizeof(int) * (size_t)(nin ? nin : 1));
    memcpy(m->op_ins[m->nops], ins, sizeof(int) * (size_t)nin);
    m->op_nin[m->nops] = nin;
    m->op_out[m->nops] = out;
    m->nops++;
    return o;
}

/* A new activation value named after the ONNX output (suffix: a second
 * value the same node makes, e.g. a conv's before its bias). */
static int new_act(Imp *m, const char *name, const char *suffix, int rank, const int64_t *shape,
                   int dtype)
{
    char buf[600];
    snprintf(buf, sizeof buf, "%s%s", name, suffix);
    int i = add_val(m, buf, V_ACT);
    m->v[i].rank = rank;
    memcpy(m->v[i].shape, shape, sizeof(int64_t) * (size_t)rank);
    m->v[i].dtype = dtype;
    return i;
}

/* ----------------------------------------------------------------------------
 * Attributes */

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *nd, const char *name)
{
    for (size_t i = 0; i < nd->n_attribute; i++)
        if (!strcmp(str(nd->attribute[i]->name), name)) return nd->attribute[i];
    return NULL;
}

static int64_t attr_int(const Onnx__NodeProto *nd, const char *name, int64_t dflt)
{
    const Onnx__AttributeProto *a = attr(nd, name);
    return a && a->has_i ? a->i : dflt;
}

static float attr_float(const Onnx__NodeProto *nd, const char *name, float dflt)
{
    const Onnx__AttributeProto *a = attr(nd, name);
    return a && a->has_f ? a->f : dflt;
}

/* All the ints of attribute name equal (n of them, or none): into *v. */
static bool attr_same(const Onnx__NodeProto *nd, const char *name, int64_t *v)
{
    const Onnx__AttributeProto *a = attr(nd, name);
    if (!a || !a->n_ints) return true;
    for (size_t i = 1; i < a->n_ints; i++)
        if (a->ints[i] != a->ints[0]) return false;
    *v = a->ints[0];
    return true;
}

static int refuse(Imp *m, const Onnx__NodeProto *nd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(Imp *m, const Onnx__NodeProto *nd, const char *fmt, ...)
{
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return err_set(m->err, "node \"%s\" (%s): %s",
                   nd->name && nd->name[0] ? nd->name : nd->n_output ? nd->output[0] : "",
                   str(nd->op_type), why);
}

/* Input k of nd as a value index (aliases followed), -1 after refusing. */
static int input(Imp *m, const Onnx__NodeProto *nd, size_t k)
{
    if (k >= nd->n_input || !nd->input[k][0]) {
        refuse(m, nd, "input %zu is missing", k);
        return -1;
    }
    int i = find(m, nd->input[k]);
    if (i < 0) {
        refuse(m, nd, "input \"%s\" is neither a graph input, an initializer nor made by an "
               "earlier node", nd->input[k]);
        return -1;
    }
    return real(m, i);
}


/* Letters of an activation of rank r: "nk", "nck"..., for elementwise ops. */
static const char *letters(int r)
{
    return r == 1 ? "n" : r == 2 ? "nk" : r == 3 ? "nsk" : "nchw";
}

/* ----------------------------------------------------------------------------
 * Operators */

static int do_conv(Imp *m, const Onnx__NodeProto *nd)
{
    int x = input(m, nd, 0), w = x >= 0 ? input(m, nd, 1) : -1;
    if (w < 0) return -1;
    if (m->v[x].kind == V_PARAM || m->v[x].rank != 4)
        return refuse(m, nd, "its input is not a 4-D image (n, c, h, w)");
    if (m->v[w].kind != V_PARAM || m->v[w].rank != 4)
        return refuse(m, nd, "its weight is not a 4-D initializer (o, c, r, s)");
    m->v[w].used = true;
    if (attr_int(nd, "group", 1) != 1)
        return refuse(m, nd, "group %lld: strata's conv2d has no groups",
                      (long long)attr_int(nd, "group", 1));
    int64_t stride = 1, pad = 0, dil = 1;
    if (!attr_same(nd, "strides", &stride) || !attr_same(nd, "pads", &pad) ||
        !attr_same(nd, "dilations", &dil) || dil != 1)
        return refuse(m, nd, "strides, pads and dilations must be equal in every direction, and "
                      "dilation 1 (strata's conv2d takes one stride and one pad)");
    const Onnx__AttributeProto *ap = attr(nd, "auto_pad");
    if (ap && ap->has_s && ap->s.len && strncmp((const char *)ap->s.data, "NOTSET", ap->s.len))
        return refuse(m, nd, "auto_pad: write the pads out");
    const Val *X = &m->v[x], *W = &m->v[w];
    if (W->shape[2] != W->shape[3]) return refuse(m, nd, "a %lldx%lld kernel (strata's are square)",
                                                  (long long)W->shape[2], (long long)W->shape[3]);
    if (W->shape[1] != X->shape[1])
        return refuse(m, nd, "the weight takes %lld channels, the input has %lld",
                      (long long)W->shape[1], (long long)X->shape[1]);
    int64_t r = W->shape[2];
    int64_t sh[4] = { X->shape[0], W->shape[0], (X->shape[2] + 2 * pad - r) / stride + 1,
                      (X->shape[3] + 2 * pad - r) / stride + 1 };
    bool bias = nd->n_input > 2 && nd->input[2][0];
    int y = new_act(m, nd->output[0], bias ? ".conv" : "", 4, sh, X->dtype);
    cJSON *o = emit_op(m, m->v[y].name, "conv2d", "nchw,ocrs->nohw", (int[]){ x, w }, 2, y);
    cJSON_AddNumberToObject(o, "stride", (double)stride);
    cJSON_AddNumberToObject(o, "pad", (double)pad);
    if (!bias) return 0;
    int b = input(m, nd, 2);
    if (b < 0) return -1;
    if (m->v[b].kind != V_PARAM || m->v[b].rank != 1 || m->v[b].shape[0] != sh[1])
        return refuse(m, nd, "its bias is not a 1-D initializer of %lld", (long long)sh[1]);
    m->v[b].used = true;
    int z = new_act(m, nd->output[0], "", 4, sh, X->dtype);
    emit_op(m, nd->output[0], "bias", "nchw,c->nchw", (int[]){ y, b }, 2, z);
    return 0;
}

static int do_batchnorm(Imp *m, const Onnx__NodeProto *nd)
{
    int x = input(m, nd, 0), g = x >= 0 ? input(m, nd, 1) : -1, b = g >= 0 ? input(m, nd, 2) : -1;
    if (b < 0) return -1;
    const Val *X = &m->v[x];
    if (X->rank != 4 && X->rank != 2) return refuse(m, nd, "its input is neither 4-D nor 2-D");
    if (m->v[g].kind != V_PARAM || m->v[b].kind != V_PARAM)
        return refuse(m, nd, "its scale and bias are not initializers");
    m->v[g].used = m->v[b].used = true;
    int y = new_act(m, nd->output[0], "", X->rank, X->shape, X->dtype);
    cJSON *o = emit_op(m, nd->output[0], "batchnorm", X->rank == 4 ? "nchw,c,c->nchw" : "nc,c,c->nc",
                       (int[]){ x, g, b }, 3, y);
    cJSON_AddStringToObject(o, "reduce", X->rank == 4 ? "nhw" : "n");
    return 0;
}

static int do_unary(Imp *m, const Onnx__NodeProto *nd, const char *kind)
{
    int x = input(m, nd, 0);
    if (x < 0) return -1;
    const Val *X = &m->v[x];
    if (X->kind == V_PARAM) return refuse(m, nd, "it reads a parameter directly");
    if (X->flat_of >= 0) x = X->flat_of, X = &m->v[x];
    if (X->rank < 1 || X->rank > 4) return refuse(m, nd, "a %d-D input", X->rank);
    char spec[32];
    snprintf(spec, sizeof spec, "%s->%s", letters(X->rank), letters(X->rank));
    int y = new_act(m, nd->output[0], "", X->rank, X->shape, X->dtype);
    emit_op(m, nd->output[0], kind, spec, &x, 1, y);
    return 0;
}

static int do_pool(Imp *m, const Onnx__NodeProto *nd, bool avg, bool global)
{
    int x = input(m, nd, 0);
    if (x < 0) return -1;
    const Val *X = &m->v[x];
    if (X->rank != 4) return refuse(m, nd, "its input is not a 4-D image");
    int64_t k = X->shape[2], stride = 1, pad = 0;
    if (!global) {
        const Onnx__AttributeProto *ks = attr(nd, "kernel_shape");
        if (!ks || ks->n_ints != 2 || ks->ints[0] != ks->ints[1])
            return refuse(m, nd, "a non-square or missing kernel_shape (strata's windows are square)");
        k = ks->ints[0];
        if (!attr_same(nd, "strides", &stride) || !attr_same(nd, "pads", &pad))
            return refuse(m, nd, "strides and pads must be equal in every direction");
        if (attr_int(nd, "ceil_mode", 0))
            return refuse(m, nd, "ceil_mode 1: strata's pooling rounds down");
        if (avg && pad && !attr_int(nd, "count_include_pad", 0))
            return refuse(m, nd, "padding left out of the average (count_include_pad 0)");
    }
    if (avg && pad == 0 && X->shape[2] == k && X->shape[3] == k && (global || stride >= 1)) {
        /* the whole image: global average pooling, the 1x1 dims dropped */
        int64_t sh[2] = { X->shape[0], X->shape[1] };
        int y = new_act(m, nd->output[0], "", 2, sh, X->dtype);
        emit_op(m, nd->output[0], "mean", "nchw->nc", &x, 1, y);
        return 0;
    }
    if (global) return refuse(m, nd, "global max pooling (strata's mean averages)");
    int64_t sh[4] = { X->shape[0], X->shape[1], (X->shape[2] + 2 * pad - k) / stride + 1,
                      (X->shape[3] + 2 * pad - k) / stride + 1 };
    int y = new_act(m, nd->output[0], "", 4, sh, X->dtype);
    cJSON *o = emit_op(m, nd->output[0], "pool2d", "nchw->nchw", &x, 1, y);
    cJSON_AddNumberToObject(o, "window", (double)k);
    cJSON_AddNumberToObject(o, "stride", (double)stride);
    cJSON_AddNumberToObject(o, "pad", (double)pad);
    cJSON_AddStringToObject(o, "mode", avg ? "avg" : "max");
    return 0;
}

static bool same_shape(const Val *a, const Val *b)
{
    if (a->rank != b->rank) return false;
    for (int d = 0; d < a->rank; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

static int do_add(Imp *m, const Onnx__NodeProto *nd)
{
    int in[32], n = 0, params = 0;
    if (nd->n_input < 2 || nd->n_input > 32) return refuse(m, nd, "%zu inputs", nd->n_input);
    for (size_t k = 0; k < nd->n_input; k++) {
        if ((in[n] = input(m, nd, k)) < 0) return -1;
        const Val *v = &m->v[in[n]];
        params += v->kind == V_PARAM;
        if (v->rank < 1 || v->rank > 4 || v->flat_of >= 0)
            return refuse(m, nd, "input %zu is not a value of 1 to 4 dims", k);
        n++;
    }
    if (params == 1 && n == 2) {
        /* a bias over the last dim (or the channels of an image) */
        int a = m->v[in[0]].kind == V_PARAM ? in[1] : in[0], b = m->v[in[0]].kind == V_PARAM ? in[0] : in[1];
        const Val *A = &m->v[a], *B = &m->v[b];
        int64_t want = A->rank == 4 ? A->shape[1] : A->shape[A->rank - 1];
        if (B->rank != 1 || B->shape[0] != want)
            return refuse(m, nd, "it adds a parameter that is not a bias over the last dim");
        m->v[b].used = true;
        int y = new_act(m, nd->output[0], "", A->rank, A->shape, A->dtype);
        char spec[32];
        snprintf(spec, sizeof spec, "%s,%c->%s", letters(A->rank), A->rank == 4 ? 'c' : 'k',
                 letters(A->rank));
        emit_op(m, nd->output[0], "bias", spec, (int[]){ a, b }, 2, y);
        return 0;
    }
    if (params) return refuse(m, nd, "it adds parameters to each other");
    for (int k = 1; k < n; k++)
        if (!same_shape(&m->v[in[0]], &m->v[in[k]]))
            return refuse(m, nd, "its inputs differ in shape (broadcasting between activations "
                          "has no letters in strata)");
    const Val *A = &m->v[in[0]];
    int acc = in[0];
    for (int k = 1; k < n; k += 3) {
        int take = n - k < 3 ? n - k : 3, ins[4] = { acc }, ni = 1;
        for (int t = 0; t < take; t++) ins[ni++] = in[k + t];
        bool last = k + take >= n;
        char suffix[24] = "";
        if (!last) snprintf(suffix, sizeof suffix, ".sum%d", k);
        int y = new_act(m, nd->output[0], suffix, A->rank, A->shape, A->dtype);
        char spec[64] = "";
        for (int t = 0; t < ni; t++) {
            strcat(spec, letters(A->rank));
            strcat(spec, t + 1 < ni ? "," : "->");
        }
        strcat(spec, letters(A->rank));
        emit_op(m, m->v[y].name, "add", spec, ins, ni, y);
        acc = y;
    }
    return 0;
}

/* Reshape, Flatten, Squeeze: only as a name for the same data. */
static int do_reshape(Imp *m, const Onnx__NodeProto *nd)
{
    int x = input(m, nd, 0);
    if (x < 0) return -1;
    const Val *X = &m->v[x];
    int64_t want[8];
    int nw = 0;
    if (!strcmp(nd->op_type, "Flatten")) {
        int64_t axis = attr_int(nd, "axis", 1);
        if (axis != 1) return refuse(m, nd, "axis %lld (only 1 keeps the batch)", (long long)axis);
        int64_t rest = 1;
        for (int d = 1; d < X->rank; d++) rest *= X->shape[d];
        want[0] = X->shape[0];
        want[1] = rest;
        nw = 2;
    } else if (!strcmp(nd->op_type, "Squeeze")) {
        for (int d = 0; d < X->rank; d++)
            if (X->shape[d] != 1 || d == 0) want[nw++] = X->shape[d];
    } else {
        int s = input(m, nd, 1);
        if (s < 0) return -1;
        if (m->v[s].kind != V_SHAPE) return refuse(m, nd, "its shape is not an initializer");
        nw = m->v[s].nints;
        for (int d = 0; d < nw; d++) {
            want[d] = m->v[s].ints[d];
            if (want[d] == 0 && d < X->rank) want[d] = X->shape[d];
            if (d == 0 && (want[d] == -1 || want[d] == 1)) want[d] = X->shape[0];
        }
        int64_t total = 1, known = 1;
        int minus = -1;
        for (int d = 0; d < X->rank; d++) total *= X->shape[d];
        for (int d = 0; d < nw; d++) {
            if (want[d] == -1) minus = d;
            else known *= want[d];
        }
        if (minus >= 0 && known) want[minus] = total / known;
    }
    /* the same dims, 1s dropped: the same value */
    int64_t a[8], b[8];
    int na = 0, nb = 0;
    for (int d = 0; d < X->rank; d++) if (X->shape[d] != 1 || d == 0) a[na++] = X->shape[d];
    for (int d = 0; d < nw; d++) if (want[d] != 1 || d == 0) b[nb++] = want[d];
    bool same = na == nb;
    for (int d = 0; same && d < na; d++) same = a[d] == b[d];
    int y = add_val(m, nd->output[0], V_ACT);
    if (same && nw == X->rank) {
        m->v[y].alias = x;
        return 0;
    }
    if (same) {
        /* a squeeze: the data unchanged, fewer dims; strata's value has them already */
        if (X->rank == na) {
            m->v[y].alias = x;
            return 0;
        }
        return refuse(m, nd, "dropping 1-sized dims of a value strata keeps them in");
    }
    if (X->rank == 4 && nw == 2 && want[0] == X->shape[0] &&
        want[1] == X->shape[1] * X->shape[2] * X->shape[3]) {
        /* an image flattened for a dense layer: folded into its weight */
        m->v[y].flat_of = x;
        m->v[y].rank = 2;
        m->v[y].shape[0] = want[0];
        m->v[y].shape[1] = want[1];
        m->v[y].dtype = X->dtype;
        return 0;
    }
    return refuse(m, nd, "a layout strata cannot name with letters (only dropping 1-sized dims, "
                  "or flattening an image for a dense layer)");
}

static int do_dense(Imp *m, const Onnx__NodeProto *nd, bool gemm)
{
    int a = input(m, nd, 0), w = a >= 0 ? input(m, nd, 1) : -1;
    if (w < 0) return -1;
    if (gemm && (attr_int(nd, "transA", 0) || attr_float(nd, "alpha", 1) != 1 ||
                 attr_float(nd, "beta", 1) != 1))
        return refuse(m, nd, "transA, or alpha or beta other than 1");
    bool tb = gemm && attr_int(nd, "transB", 0);
    Val *A = &m->v[a], *W = &m->v[w];
    if (W->kind != V_PARAM || W->rank != 2)
        return refuse(m, nd, "its second operand is not a 2-D weight (a product of two "
                      "activations, as in attention, is not imported yet)");
    W->used = true;
    int64_t k = tb ? W->shape[1] : W->shape[0], mo = tb ? W->shape[0] : W->shape[1];
    const char *spec;
    int src = a;
    if (A->flat_of >= 0) {
        /* [n, c*h*w] of an image: the weight takes the image's letters */
        const Val *I = &m->v[A->flat_of];
        if (I->shape[1] * I->shape[2] * I->shape[3] != k)
            return refuse(m, nd, "the weight takes %lld inputs, the flattened image has %lld",
                          (long long)k, (long long)(I->shape[1] * I->shape[2] * I->shape[3]));
        src = A->flat_of;
        if (tb) {
            int64_t s4[4] = { mo, I->shape[1], I->shape[2], I->shape[3] };
            memcpy(W->shape, s4, sizeof s4);
            spec = "nchw,mchw->nm";
        } else {
            int64_t s4[4] = { I->shape[1], I->shape[2], I->shape[3], mo };
            memcpy(W->shape, s4, sizeof s4);
            spec = "nchw,chwm->nm";
        }
        W->rank = 4;
    } else if (A->rank == 2) {
        if (A->shape[1] != k)
            return refuse(m, nd, "the weight takes %lld inputs, the activation has %lld",
                          (long long)k, (long long)A->shape[1]);
        spec = tb ? "nk,mk->nm" : "nk,km->nm";
    } else if (A->rank == 3 && !gemm) {
        if (A->shape[2] != k)
            return refuse(m, nd, "the weight takes %lld inputs, the activation has %lld",
                          (long long)k, (long long)A->shape[2]);
        spec = "nsk,km->nsm";
    } else {
        return refuse(m, nd, "a %d-D input", A->rank);
    }
    int r = A->rank == 3 ? 3 : 2;
    int64_t sh[3] = { A->shape[0], r == 3 ? A->shape[1] : mo, mo };
    bool bias = gemm && nd->n_input > 2 && nd->input[2][0];
    int y = new_act(m, nd->output[0], bias ? ".matmul" : "", r, sh, A->dtype);
    emit_op(m, m->v[y].name, "matmul", spec, (int[]){ src, w }, 2, y);
    if (!bias) return 0;
    int b = input(m, nd, 2);
    if (b < 0) return -1;
    if (m->v[b].kind != V_PARAM || m->v[b].rank != 1 || m->v[b].shape[0] != mo)
        return refuse(m, nd, "its C is not a bias of %lld", (long long)mo);
    m->v[b].used = true;
    int z = new_act(m, nd->output[0], "", r, sh, A->dtype);
    emit_op(m, nd->output[0], "bias", r == 3 ? "nsm,m->nsm" : "nm,m->nm", (int[]){ y, b }, 2, z);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Blocks */

static bool is_elementwise(const char *k)
{
    return !strcmp(k, "relu") || !strcmp(k, "gelu") || !strcmp(k, "bias") ||
           !strcmp(k, "batchnorm");
}

static void assign_blocks(Imp *m)
{
    m->op_block = xmalloc(sizeof(int) * (size_t)(m->nops ? m->nops : 1));
    for (int i = 0; i < m->nops; i++) m->op_block[i] = -1;
    /* residual joins: adds of two activations */
    int last_join = -1;
    for (int i = 0; i < m->nops; i++)
        if (!strcmp(m->op_kind[i], "add")) last_join = i;
    if (last_join >= 0) {
        int end = last_join;
        while (end + 1 < m->nops && is_elementwise(m->op_kind[end + 1])) end++;
        /* forks: ops whose output two ops read */
        int block = -1;
        for (int i = 0; i <= end; i++) {
            if (block >= 0) m->op_block[i] = block;
            if (m->v[m->op_out[i]].consumers >= 2 && i < end) block++;
        }
        return;
    }
    const char *ender = "pool2d";
    bool pools = false;
    for (int i = 0; i < m->nops; i++) pools |= !strcmp(m->op_kind[i], "pool2d");
    int last = -1, block = 0;
    for (int i = 0; i < m->nops; i++) {
        bool ends = pools ? !strcmp(m->op_kind[i], ender)
                          : !strcmp(m->op_kind[i], "relu") || !strcmp(m->op_kind[i], "gelu");
        if (ends) last = i;
    }
    for (int i = 0; i <= last; i++) {
        m->op_block[i] = block;
        bool ends = pools ? !strcmp(m->op_kind[i], ender)
                          : !strcmp(m->op_kind[i], "relu") || !strcmp(m->op_kind[i], "gelu");
        if (ends) block++;
    }
}

/* ----------------------------------------------------------------------------
 * The model */

static bool int64_values(const Onnx__TensorProto *t, int64_t *out, int *n)
{
    if (t->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__INT64) return false;
    size_t cnt = t->n_int64_data ? t->n_int64_data : t->raw_data.len / 8;
    if (cnt > 8) return false;
    for (size_t i = 0; i < cnt; i++) {
        if (t->n_int64_data) out[i] = t->int64_data[i];
        else memcpy(&out[i], t->raw_data.data + 8 * i, 8);
    }
    *n = (int)cnt;
    return true;
}

static int shape_of(Imp *m, Val *v, size_t nd, const int64_t *dims, const char *what)
{
    if (nd > 4) return err_set(m->err, "%s \"%s\": %zu dims (strata imports up to 4)", what, v->name, nd);
    v->rank = (int)nd;
    for (size_t d = 0; d < nd; d++) {
        if (dims[d] <= 0) return err_set(m->err, "%s \"%s\": dim %zu is %lld", what, v->name, d,
                                         (long long)dims[d]);
        v->shape[d] = dims[d];
    }
    return 0;
}

static cJSON *import_graph(Imp *m, const Onnx__GraphProto *G, const OnnxOpts *o)
{
    /* initializers: params, or the int64 shapes Reshape and ConstantOfShape read */
    for (size_t i = 0; i < G->n_initializer; i++) {
        const Onnx__TensorProto *t = G->initializer[i];
        int v = add_val(m, str(t->name), V_PARAM);
        if (int64_values(t, m->v[v].ints, &m->v[v].nints) && t->n_dims <= 1) {
            m->v[v].kind = V_SHAPE;
            continue;
        }
        m->v[v].dtype = t->data_type;
        if (shape_of(m, &m->v[v], t->n_dims, t->dims, "initializer")) return NULL;
    }
    /* ConstantOfShape of an initializer: a parameter stripped of its values */
    for (size_t i = 0; i < G->n_node; i++) {
        const Onnx__NodeProto *nd = G->node[i];
        if (strcmp(str(nd->op_type), "ConstantOfShape")) continue;
        int s = nd->n_input ? find(m, nd->input[0]) : -1;
        if (s < 0 || m->v[s].kind != V_SHAPE || !nd->n_output) {
            refuse(m, nd, "its shape is not an initializer");
            return NULL;
        }
        int v = add_val(m, nd->output[0], V_PARAM);
        if (shape_of(m, &m->v[v], (size_t)m->v[s].nints, m->v[s].ints, "ConstantOfShape")) return NULL;
    }
    /* the data input: the graph input that is no parameter */
    int data = -1;
    for (size_t i = 0; i < G->n_input; i++) {
        const Onnx__ValueInfoProto *in = G->input[i];
        if (find(m, str(in->name)) >= 0) continue;
        if (data >= 0) {
            err_set(m->err, "graph inputs \"%s\" and \"%s\": strata imports models of one input",
                    m->v[data].name, str(in->name));
            return NULL;
        }
        const Onnx__TypeProto *tp = in->type;
        if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type->shape) {
            err_set(m->err, "graph input \"%s\": not a tensor of known shape", str(in->name));
            return NULL;
        }
        const Onnx__TensorShapeProto *sh = tp->tensor_type->shape;
        data = add_val(m, str(in->name), V_INPUT);
        Val *v = &m->v[data];
        v->dtype = tp->tensor_type->elem_type;
        if (sh->n_dim < 2 || sh->n_dim > 4) {
            err_set(m->err, "graph input \"%s\": %zu dims (strata imports 2 to 4)", str(in->name),
                    sh->n_dim);
            return NULL;
        }
        v->rank = (int)sh->n_dim;
        for (size_t d = 0; d < sh->n_dim; d++) {
            const Onnx__TensorShapeProto__Dimension *dim = sh->dim[d];
            bool known = dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                         dim->dim_value > 0;
            if (d == 0 && o->batch > 0) v->shape[0] = o->batch;
            else if (known) v->shape[d] = dim->dim_value;
            else {
                err_set(m->err, "graph input \"%s\": dim %zu is dynamic (%s)%s", str(in->name), d,
                        dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM
                            ? str(dim->dim_param) : "no size",
                        d == 0 ? ": give the batch with --batch" : "");
                return NULL;
            }
        }
    }
    if (data < 0) {
        err_set(m->err, "the graph has no input other than its initializers");
        return NULL;
    }
    emit_tensor(m, data, "input");
    /* the nodes, in order (ONNX keeps them topologically sorted) */
    const char *out_name = G->n_output ? str(G->output[0]->name) : NULL;
    for (size_t i = 0; i < G->n_node; i++) {
        const Onnx__NodeProto *nd = G->node[i];
        const char *t = str(nd->op_type);
        int rc = 0;
        if (!strcmp(t, "ConstantOfShape")) continue;
        if (nd->n_output < 1) {
            refuse(m, nd, "no output");
            return NULL;
        }
        if (!strcmp(t, "Conv")) rc = do_conv(m, nd);
        else if (!strcmp(t, "BatchNormalization")) rc = do_batchnorm(m, nd);
        else if (!strcmp(t, "Relu")) rc = do_unary(m, nd, "relu");
        else if (!strcmp(t, "Gelu")) rc = do_unary(m, nd, "gelu");
        else if (!strcmp(t, "MaxPool")) rc = do_pool(m, nd, false, false);
        else if (!strcmp(t, "AveragePool")) rc = do_pool(m, nd, true, false);
        else if (!strcmp(t, "GlobalAveragePool")) rc = do_pool(m, nd, true, true);
        else if (!strcmp(t, "Add") || !strcmp(t, "Sum")) rc = do_add(m, nd);
        else if (!strcmp(t, "Reshape") || !strcmp(t, "Flatten") || !strcmp(t, "Squeeze"))
            rc = do_reshape(m, nd);
        else if (!strcmp(t, "Gemm")) rc = do_dense(m, nd, true);
        else if (!strcmp(t, "MatMul")) rc = do_dense(m, nd, false);
        else if (!strcmp(t, "Dropout") || !strcmp(t, "Identity")) {
            int x = input(m, nd, 0);
            if (x < 0) return NULL;
            m->v[add_val(m, nd->output[0], V_ACT)].alias = x;
        } else if (!strcmp(t, "Softmax")) {
            int x = input(m, nd, 0);
            if (x < 0) return NULL;
            if (out_name && !strcmp(nd->output[0], out_name)) {
                /* the output's softmax: the loss takes the logits */
                m->v[add_val(m, nd->output[0], V_ACT)].alias = x;
            } else {
                const Val *X = &m->v[x];
                if (X->kind == V_PARAM || X->flat_of >= 0 || X->rank < 1 || X->rank > 4) {
                    refuse(m, nd, "its input is not an activation of 1 to 4 dims");
                    return NULL;
                }
                int64_t axis = attr_int(nd, "axis", -1);
                if (axis != -1 && axis != X->rank - 1) {
                    refuse(m, nd, "softmax over dim %lld, not the last", (long long)axis);
                    return NULL;
                }
                char spec[32];
                snprintf(spec, sizeof spec, "%s->%s", letters(X->rank), letters(X->rank));
                int y = new_act(m, nd->output[0], "", X->rank, X->shape, X->dtype);
                cJSON *op = emit_op(m, nd->output[0], "softmax", spec, &x, 1, y);
                char red[2] = { letters(X->rank)[X->rank - 1], 0 };
                cJSON_AddStringToObject(op, "reduce", red);
            }
        } else {
            refuse(m, nd, "an operator strata does not import");
            return NULL;
        }
        if (rc) return NULL;
    }
    /* the loss over the output's last dim, with its labels */
    if (!out_name || find(m, out_name) < 0) {
        err_set(m->err, "the graph has no output");
        return NULL;
    }
    int y = real(m, find(m, out_name));
    const Val *Y = &m->v[y];
    if (Y->kind != V_ACT || Y->rank != 2 || Y->flat_of >= 0) {
        err_set(m->err, "graph output \"%s\": a cross-entropy loss needs [batch, classes] "
                "logits", out_name);
        return NULL;
    }
    char lname[600];
    snprintf(lname, sizeof lname, "%s.labels", out_name);
    int lab = add_val(m, lname, V_INPUT);
    m->v[lab].rank = 1;
    m->v[lab].shape[0] = Y->shape[0];
    emit_tensor(m, lab, "label");
    snprintf(lname, sizeof lname, "%s.loss", out_name);
    int loss = add_val(m, lname, V_ACT);
    m->v[loss].rank = 0;
    cJSON *op = emit_op(m, lname, "cross_entropy", "nk,n->", (int[]){ y, lab }, 2, loss);
    cJSON_AddStringToObject(op, "reduce", "k");
    assign_blocks(m);
    int k = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, m->ops) {
        if (m->op_block[k] >= 0) cJSON_AddNumberToObject(it, "block", m->op_block[k]);
        k++;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", o->name ? o->name : G->name && G->name[0] ? G->name : "onnx");
    cJSON_AddItemToObject(j, "tensors", m->tensors);
    cJSON_AddItemToObject(j, "ops", m->ops);
    m->tensors = m->ops = NULL;
    return j;
}

cJSON *onnx_import(const uint8_t *data, size_t n, const OnnxOpts *o, Err *err)
{
    static const OnnxOpts none = { 0 };
    if (!o) o = &none;
    if (o->loss && strcmp(o->loss, "cross_entropy")) {
        err_set(err, "--loss %s: strata adds a cross_entropy loss only (it has no %s op yet)",
                o->loss, o->loss);
        return NULL;
    }
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, n, data);
    if (!mp || !mp->graph) {
        if (mp) onnx__model_proto__free_unpacked(mp, NULL);
        err_set(err, "not an ONNX model (the protobuf does not parse as a ModelProto with a graph)");
        return NULL;
    }
    Imp m = { .tensors = cJSON_CreateArray(), .ops = cJSON_CreateArray(), .err = err };
    cJSON *j = import_graph(&m, mp->graph, o);
    for (int i = 0; i < m.n; i++) free(m.v[i].name);
    for (int i = 0; i < m.nops; i++) {
        free(m.op_kind[i]);
        free(m.op_ins[i]);
    }
    free(m.v);
    free(m.op_kind);
    free(m.op_ins);
    free(m.op_nin);
    free(m.op_out);
    free(m.op_block);
    cJSON_Delete(m.tensors);
    cJSON_Delete(m.ops);
    onnx__model_proto__free_unpacked(mp, NULL);
    return j;
}

cJSON *onnx_import_file(const char *path, const OnnxOpts *o, Err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) buf = xrealloc(buf, cap = cap ? 2 * cap : 1 << 20);
        size_t k = fread(buf + n, 1, cap - n, f);
        if (!k) break;
        n += k;
    }
    fclose(f);
    cJSON *j = onnx_import(buf, n, o, err);
    free(buf);
    if (!j) err_prefix(err, "%s", path);
    return j;
}
