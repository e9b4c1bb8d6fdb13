/*
 * graph.c — the model graph: reading and validating its JSON, writing it
 * back, and pricing every op phase from its index spec.
 *
 * Reading takes three passes so that every message can be exact:
 *   1. tensors: names, shapes, dtypes, roles;
 *   2. ops one by one: fields, kind, spec syntax, operand names and ranks,
 *      attributes, which op produces which tensor;
 *   3. ops again, in order: topological order, dtypes, the kind's rules,
 *      letter sizes, then the derived fields (sizes, batch, gradients).
 * The first problem stops the load and is reported with its JSON path.
 *
 * Legend: l = a letter 'a'..'z' as 0..25; in0 = an op's first input;
 * P = product of the sizes of all of an op's letters (its iteration space);
 * E = elements an elementwise or normalising op touches.
 */
#include "graph.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/* ----------------------------------------------------------------------------
 * Names of enums */

static const char *const dtype_names[DT_COUNT] = {"f32", "bf16", "f16", "i32"};
static const int dtype_sizes[DT_COUNT] = {4, 2, 2, 4};
static const char *const role_names[ROLE_COUNT] = {"input", "label", "param", "activation"};
static const char *const kind_names[OP_KIND_COUNT] = {
    "matmul", "embedding", "conv2d", "pool2d", "mean", "add", "bias", "gelu", "relu",
    "layernorm", "batchnorm", "softmax", "cross_entropy", "route", "concat", "mse",
};

int dtype_bytes(DType d) { return d >= 0 && d < DT_COUNT ? dtype_sizes[d] : 0; }
const char *dtype_name(DType d) { return d >= 0 && d < DT_COUNT ? dtype_names[d] : "?"; }
const char *role_name(Role r) { return r >= 0 && r < ROLE_COUNT ? role_names[r] : "?"; }
const char *op_kind_name(OpKind k) { return k >= 0 && k < OP_KIND_COUNT ? kind_names[k] : "?"; }
bool op_kind_is_loss(OpKind k) { return k == OP_CROSS_ENTROPY || k == OP_MSE; }

int op_concat_letter(const Op *op, int k)
{
    if (op->kind != OP_CONCAT || k < 0 || k > op->nin) return -1;
    for (const char *p = k == op->nin ? op->out_letters : op->in_letters[k]; *p; p++)
        if (op->concat_mask >> (*p - 'a') & 1) return *p - 'a';
    return -1;
}

int op_causal_letters(const Op *op, int *s, int *t)
{
    if (op->kind != OP_SOFTMAX || !op->causal) return -1;
    const char *l = op->in_letters[0];
    size_t n = strlen(l);
    if (n < 2) return -1;
    *s = l[n - 2] - 'a';
    *t = l[n - 1] - 'a';
    return 0;
}

int dtype_parse(const char *s, DType *out)
{
    for (int i = 0; i < DT_COUNT; i++)
        if (strcmp(s, dtype_names[i]) == 0) { *out = (DType)i; return 0; }
    return -1;
}

int op_kind_parse(const char *s, OpKind *out)
{
    for (int i = 0; i < OP_KIND_COUNT; i++)
        if (strcmp(s, kind_names[i]) == 0) { *out = (OpKind)i; return 0; }
    return -1;
}

static int role_parse(const char *s, Role *out)
{
    for (int i = 0; i < ROLE_COUNT; i++)
        if (strcmp(s, role_names[i]) == 0) { *out = (Role)i; return 0; }
    return -1;
}

/* "a, b, c" of a table of names, into buf. */
static const char *name_list(const char *const *names, int n, char *buf, size_t cap)
{
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        strncat(buf, names[i], cap - strlen(buf) - 1);
        if (i + 1 < n) strncat(buf, ", ", cap - strlen(buf) - 1);
    }
    return buf;
}

int64_t tensor_numel(const Tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];   /* checked on load */
    return n;
}

static uint32_t letters_mask(const char *s)
{
    uint32_t m = 0;
    for (; *s; s++) m |= 1u << (*s - 'a');
    return m;
}

/* ----------------------------------------------------------------------------
 * Name index: open addressing over names borrowed from the graph, so that a
 * model with thousands of ops loads in linear time. */

typedef struct {
    const char **key;
    int *val;
    uint32_t mask;          /* capacity - 1; capacity a power of two */
} NameIndex;

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void index_init(NameIndex *ix, int n)
{
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n + 16) cap *= 2;
    ix->key = xcalloc(cap, sizeof *ix->key);
    ix->val = xcalloc(cap, sizeof *ix->val);
    ix->mask = cap - 1;
}

static void index_free(NameIndex *ix)
{
    free(ix->key);
    free(ix->val);
}

static int index_get(const NameIndex *ix, const char *name)
{
    for (uint32_t i = name_hash(name) & ix->mask; ix->key[i]; i = (i + 1) & ix->mask)
        if (strcmp(ix->key[i], name) == 0) return ix->val[i];
    return -1;
}

/* Adds name -> v; if the name is there already, returns its value instead. */
static int index_put(NameIndex *ix, const char *name, int v)
{
    uint32_t i = name_hash(name) & ix->mask;
    for (; ix->key[i]; i = (i + 1) & ix->mask)
        if (strcmp(ix->key[i], name) == 0) return ix->val[i];
    ix->key[i] = name;
    ix->val[i] = v;
    return -1;
}

/* ----------------------------------------------------------------------------
 * Pass 1: tensors */

static int parse_tensor(Graph *g, int i, const cJSON *jt, NameIndex *ix, Err *err)
{
    static const char *const keys[] = {"name", "shape", "dtype", "role", NULL};
    char path[48];
    snprintf(path, sizeof path, "tensors[%d]", i);
    Tensor *t = &g->tensors[i];
    t->producer = -1;
    t->batch_dim = -1;
    if (json_check_keys(jt, path, keys, err)) return -1;

    const char *s;
    if (json_get_string(jt, path, "name", true, &s, err)) return -1;
    t->name = xstrdup(s);
    int prev = index_put(ix, t->name, i);
    if (prev >= 0)
        return err_set(err, "%s.name: duplicate tensor name \"%s\" (first declared at tensors[%d])",
                       path, s, prev);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(jt, "shape");
    if (!shape) return err_set(err, "%s.shape: missing (required)", path);
    if (!cJSON_IsArray(shape))
        return err_set(err, "%s.shape: expected an array of positive integers", path);
    int n = cJSON_GetArraySize(shape);
    if (n > IR_MAX_DIMS)
        return err_set(err, "%s.shape: %d dims, at most %d are supported", path, n, IR_MAX_DIMS);
    int d = 0;
    int64_t numel = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, shape) {
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
            it->valuedouble != floor(it->valuedouble))
            return err_set(err, "%s.shape[%d]: expected a positive integer", path, d);
        double v = it->valuedouble;
        if (v <= 0) return err_set(err, "%s.shape[%d]: %.0f is not positive", path, d, v);
        if (v > 0x1p62) return err_set(err, "%s.shape[%d]: %.0f is too large", path, d, v);
        t->shape[d] = (int64_t)v;
        if (!mul_ok(numel, t->shape[d], &numel))
            return err_set(err, "%s.shape: the element count of \"%s\" overflows int64", path,
                           t->name);
        d++;
    }
    t->ndim = n;

    t->dtype = DT_F32;
    int rc = json_get_string(jt, path, "dtype", false, &s, err);
    if (rc < 0) return -1;
    if (rc == 0 && dtype_parse(s, &t->dtype)) {
        char list[64];
        return err_set(err, "%s.dtype: unknown dtype \"%s\" (known: %s)", path, s,
                       name_list(dtype_names, DT_COUNT, list, sizeof list));
    }
    if (json_get_string(jt, path, "role", true, &s, err)) return -1;
    if (role_parse(s, &t->role)) {
        char list[64];
        return err_set(err, "%s.role: unknown role \"%s\" (known: %s)", path, s,
                       name_list(role_names, ROLE_COUNT, list, sizeof list));
    }
    if ((t->role == ROLE_INPUT || t->role == ROLE_LABEL) && t->ndim > 0) t->batch_dim = 0;
    t->needs_grad = t->role == ROLE_PARAM;
    if (t->role == ROLE_PARAM && t->dtype == DT_I32)
        return err_set(err, "%s.dtype: param \"%s\" is i32; params are trained, so f32, bf16 or f16",
                       path, t->name);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Pass 2: ops, one at a time */

#define OP_KEYS "name", "kind", "spec", "inputs", "output", "block"
static const char *const keys_plain[] = {OP_KEYS, NULL};
static const char *const keys_reduce[] = {OP_KEYS, "reduce", NULL};
static const char *const keys_embedding[] = {OP_KEYS, "gather", NULL};
static const char *const keys_conv[] = {OP_KEYS, "stride", "pad", NULL};
static const char *const keys_pool[] = {OP_KEYS, "window", "stride", "pad", "mode", NULL};
static const char *const keys_softmax[] = {OP_KEYS, "reduce", "causal", "scale", NULL};

static const char *const *op_keys(OpKind k)
{
    switch (k) {
    case OP_LAYERNORM: case OP_BATCHNORM: case OP_CROSS_ENTROPY: case OP_ROUTE:
        return keys_reduce;
    case OP_SOFTMAX: return keys_softmax;
    case OP_EMBEDDING: return keys_embedding;
    case OP_CONV2D: return keys_conv;
    case OP_POOL2D: return keys_pool;
    default: return keys_plain;
    }
}

/* Inputs each kind takes (layernorm and batchnorm: gamma and beta optional). */
static const struct { int8_t min, max; } arity[OP_KIND_COUNT] = {
    [OP_MATMUL] = {2, 3},    [OP_EMBEDDING] = {2, 2}, [OP_CONV2D] = {2, 2},
    [OP_POOL2D] = {1, 1},    [OP_MEAN] = {1, 1},      [OP_ADD] = {2, IR_MAX_INPUTS},
    [OP_BIAS] = {2, 2},      [OP_GELU] = {1, 1},      [OP_RELU] = {1, 1},
    [OP_LAYERNORM] = {1, 3}, [OP_BATCHNORM] = {1, 3}, [OP_SOFTMAX] = {1, 1},
    [OP_CROSS_ENTROPY] = {2, 2}, [OP_ROUTE] = {1, 1}, [OP_CONCAT] = {2, IR_MAX_INPUTS},
    [OP_MSE] = {2, 2},
};

/* One operand's letters, [b, e) of the spec, into out. */
static int parse_operand(const char *b, const char *e, char out[IR_MAX_DIMS + 1],
                         const char *path, const char *spec, Err *err)
{
    int n = 0;
    for (const char *p = b; p < e; p++) {
        if (*p < 'a' || *p > 'z')
            return err_set(err, "%s.spec: '%c' in \"%s\" is not a letter a-z", path, *p, spec);
        if (n == IR_MAX_DIMS)
            return err_set(err, "%s.spec: operand \"%.*s\" has more than %d letters", path,
                           (int)(e - b), b, IR_MAX_DIMS);
        if (memchr(out, *p, n))
            return err_set(err, "%s.spec: letter '%c' repeats in operand \"%.*s\"", path, *p,
                           (int)(e - b), b);
        out[n++] = *p;
    }
    out[n] = 0;
    return 0;
}

/* "ab,bc->ac" into op->in_letters and op->out_letters; syntax only. */
static int parse_spec(Op *op, const char *path, Err *err)
{
    const char *s = op->spec, *arrow = strstr(s, "->");
    if (!arrow)
        return err_set(err, "%s.spec: \"%s\" has no \"->\" (write e.g. \"bi,ih->bh\")", path, s);
    if (strstr(arrow + 2, "->"))
        return err_set(err, "%s.spec: \"%s\" has more than one \"->\"", path, s);
    int k = 0;
    const char *b = s;
    for (;;) {
        const char *e = b;
        while (e < arrow && *e != ',') e++;
        if (k < IR_MAX_INPUTS && parse_operand(b, e, op->in_letters[k], path, s, err)) return -1;
        k++;
        if (e == arrow) break;
        b = e + 1;
    }
    if (k != op->nin)
        return err_set(err, "%s.spec: \"%s\" has %d input operand%s but the op has %d input%s",
                       path, s, k, k == 1 ? "" : "s", op->nin, op->nin == 1 ? "" : "s");
    return parse_operand(arrow + 2, arrow + 2 + strlen(arrow + 2), op->out_letters, path, s, err);
}

/* Letters of `s` (a `reduce` or `gather` value) as a mask; each in `within`. */
static int parse_letter_attr(const char *s, const char *within, const char *where,
                             const char *path, const char *key, uint32_t *mask, Err *err)
{
    *mask = 0;
    for (const char *p = s; *p; p++) {
        if (*p < 'a' || *p > 'z')
            return err_set(err, "%s.%s: '%c' in \"%s\" is not a letter a-z", path, key, *p, s);
        if (*mask >> (*p - 'a') & 1)
            return err_set(err, "%s.%s: letter '%c' repeats in \"%s\"", path, key, *p, s);
        if (!strchr(within, *p))
            return err_set(err, "%s.%s: letter '%c' is not in %s \"%s\"", path, key, *p, where,
                           within);
        *mask |= 1u << (*p - 'a');
    }
    return 0;
}

static int parse_attrs(Op *op, const cJSON *jo, const char *path, Err *err)
{
    const char *s;
    int64_t v;
    switch (op->kind) {
    case OP_LAYERNORM: case OP_BATCHNORM: case OP_SOFTMAX: case OP_CROSS_ENTROPY: case OP_ROUTE:
        if (json_get_string(jo, path, "reduce", true, &s, err)) return -1;
        if (parse_letter_attr(s, op->in_letters[0], "input 0", path, "reduce",
                              &op->reduce_mask, err))
            return -1;
        if (op->kind != OP_LAYERNORM && op->kind != OP_BATCHNORM && strlen(s) != 1)
            return err_set(err, "%s.reduce: %s reduces over exactly one letter, got \"%s\"", path,
                           kind_names[op->kind], s);
        break;
    case OP_EMBEDDING:
        if (json_get_string(jo, path, "gather", true, &s, err)) return -1;
        if (strlen(s) != 1)
            return err_set(err, "%s.gather: expected one letter (the table row), got \"%s\"",
                           path, s);
        if (parse_letter_attr(s, op->in_letters[1], "the table's letters", path, "gather",
                              &op->gather_mask, err))
            return -1;
        break;
    case OP_CONV2D:
    case OP_POOL2D:
        if (op->kind == OP_POOL2D) {
            if (json_get_int(jo, path, "window", true, 1, 4096, &v, err)) return -1;
            op->window = (int)v;
        }
        v = op->kind == OP_POOL2D ? op->window : 1;
        if (json_get_int(jo, path, "stride", false, 1, 4096, &v, err) < 0) return -1;
        op->stride = (int)v;
        v = 0;
        if (json_get_int(jo, path, "pad", false, 0, 4096, &v, err) < 0) return -1;
        op->pad = (int)v;
        if (op->kind == OP_POOL2D) {
            if (2 * op->pad > op->window)
                return err_set(err, "%s.pad: %d is more than half the window %d", path, op->pad,
                               op->window);
            int rc = json_get_string(jo, path, "mode", false, &s, err);
            if (rc < 0) return -1;
            if (rc == 0 && strcmp(s, "max") != 0 && strcmp(s, "avg") != 0)
                return err_set(err, "%s.mode: unknown mode \"%s\" (known: max, avg)", path, s);
            op->pool_avg = rc == 0 && strcmp(s, "avg") == 0;
        }
        break;
    default:
        break;
    }
    if (op->kind == OP_SOFTMAX) {
        if (json_get_bool(jo, path, "causal", false, &op->causal, err) < 0) return -1;
        if (json_get_number(jo, path, "scale", false, 0, 1e30, &op->scale, err) < 0) return -1;
        if (!(op->scale > 0))
            return err_set(err, "%s.scale: %g is not positive", path, op->scale);
    }
    return 0;
}

static int parse_op(Graph *g, int i, const cJSON *jo, const NameIndex *tix, NameIndex *oix,
                    Err *err)
{
    char path[48];
    snprintf(path, sizeof path, "ops[%d]", i);
    Op *op = &g->ops[i];
    op->out = -1;
    op->block = -1;
    op->batch_letter = -1;
    op->scale = 1;
    if (!cJSON_IsObject(jo)) return err_set(err, "%s: expected an object", path);

    const char *s;
    if (json_get_string(jo, path, "name", true, &s, err)) return -1;
    op->name = xstrdup(s);
    int prev = index_put(oix, op->name, i);
    if (prev >= 0)
        return err_set(err, "%s.name: duplicate op name \"%s\" (first at ops[%d])", path, s, prev);

    if (json_get_string(jo, path, "kind", true, &s, err)) return -1;
    if (op_kind_parse(s, &op->kind)) {
        char list[256];
        return err_set(err, "%s: unknown kind \"%s\" (known: %s)", path, s,
                       name_list(kind_names, OP_KIND_COUNT, list, sizeof list));
    }
    if (json_check_keys(jo, path, op_keys(op->kind), err)) return -1;
    if (json_get_string(jo, path, "spec", true, &s, err)) return -1;
    op->spec = xstrdup(s);

    const cJSON *ins = cJSON_GetObjectItemCaseSensitive(jo, "inputs");
    if (!ins) return err_set(err, "%s.inputs: missing (required)", path);
    if (!cJSON_IsArray(ins))
        return err_set(err, "%s.inputs: expected an array of tensor names", path);
    int n = cJSON_GetArraySize(ins);
    if (n < arity[op->kind].min || n > arity[op->kind].max) {
        if (arity[op->kind].min == arity[op->kind].max)
            return err_set(err, "%s.inputs: %s takes %d input%s, got %d", path,
                           kind_names[op->kind], arity[op->kind].min,
                           arity[op->kind].min == 1 ? "" : "s", n);
        return err_set(err, "%s.inputs: %s takes %d to %d inputs, got %d", path,
                       kind_names[op->kind], arity[op->kind].min, arity[op->kind].max, n);
    }
    op->nin = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, ins) {
        int k = op->nin;
        if (!cJSON_IsString(it) || !it->valuestring[0])
            return err_set(err, "%s.inputs[%d]: expected a tensor name", path, k);
        op->in[k] = index_get(tix, it->valuestring);
        if (op->in[k] < 0)
            return err_set(err, "%s.inputs[%d]: tensor \"%s\" is not defined", path, k,
                           it->valuestring);
        op->nin++;
    }

    if (json_get_string(jo, path, "output", true, &s, err)) return -1;
    op->out = index_get(tix, s);
    if (op->out < 0) return err_set(err, "%s.output: tensor \"%s\" is not defined", path, s);
    Tensor *out = &g->tensors[op->out];
    if (out->role != ROLE_ACT)
        return err_set(err, "%s.output: tensor \"%s\" has role %s; ops produce only activations",
                       path, s, role_names[out->role]);
    if (out->producer >= 0)
        return err_set(err, "%s.output: tensor \"%s\" is already produced by ops[%d] (\"%s\")",
                       path, s, out->producer, g->ops[out->producer].name);
    out->producer = i;

    int64_t block = -1;
    if (json_get_int(jo, path, "block", false, -1, 1 << 20, &block, err) < 0) return -1;
    op->block = (int)block;

    if (parse_spec(op, path, err)) return -1;
    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &g->tensors[op->in[k]];
        int nl = (int)strlen(op->in_letters[k]);
        if (nl != t->ndim)
            return err_set(err, "%s.spec: input %d \"%s\" has %d letter%s but tensor \"%s\" has %d dim%s",
                           path, k, op->in_letters[k], nl, nl == 1 ? "" : "s", t->name, t->ndim,
                           t->ndim == 1 ? "" : "s");
    }
    int nl = (int)strlen(op->out_letters);
    if (nl != out->ndim)
        return err_set(err, "%s.spec: output \"%s\" has %d letter%s but tensor \"%s\" has %d dim%s",
                       path, op->out_letters, nl, nl == 1 ? "" : "s", out->name, out->ndim,
                       out->ndim == 1 ? "" : "s");
    return parse_attrs(op, jo, path, err);
}

/* ----------------------------------------------------------------------------
 * Pass 3: ops again, in order — each sees its producers finished */

/* The kind's rules on letters, before any size is looked at. */
static int check_kind(const Graph *g, const Op *op, const char *path, Err *err)
{
    const char *in0 = op->in_letters[0], *out = op->out_letters;
    uint32_t m0 = letters_mask(in0), mo = letters_mask(out), mall = 0;
    for (int k = 0; k < op->nin; k++) mall |= letters_mask(op->in_letters[k]);
    const char *kind = kind_names[op->kind];

    if (op->kind != OP_ROUTE && op->kind != OP_CONCAT)
        for (const char *p = out; *p; p++)
            if (!(mall >> (*p - 'a') & 1))
                return err_set(err, "%s.spec: output letter '%c' is in no input", path, *p);

    switch (op->kind) {
    case OP_MATMUL:
    case OP_MEAN:
        break;
    case OP_EMBEDDING:
        if ((m0 | mo) & op->gather_mask)
            return err_set(err, "%s.gather: the gathered letter may be only in the table (input 1), "
                           "not in the indices or the output", path);
        break;
    case OP_CONV2D: {
        const char *k = op->in_letters[1];
        bool ok = strlen(in0) == 4 && strlen(k) == 4 && strlen(out) == 4 && out[0] == in0[0] &&
                  out[1] == k[0] && out[2] == in0[2] && out[3] == in0[3] && k[1] == in0[1] &&
                  !((m0 | mo) & (1u << (k[2] - 'a') | 1u << (k[3] - 'a')));
        if (!ok)
            return err_set(err, "%s.spec: conv2d takes the form \"nchw,ocrs->nohw\" (batch, "
                           "channels, 2 spatial; kernel out- and in-channels, 2 window), got \"%s\"",
                           path, op->spec);
        break;
    }
    case OP_POOL2D:
        if (strlen(in0) != 4)
            return err_set(err, "%s.spec: pool2d takes the form \"nchw->nchw\", got \"%s\"", path,
                           op->spec);
        /* fall through */
    case OP_GELU: case OP_RELU: case OP_SOFTMAX: case OP_LAYERNORM: case OP_BATCHNORM:
    case OP_BIAS:
        if (strcmp(out, in0) != 0)
            return err_set(err, "%s.spec: %s keeps its input's letters, but the output \"%s\" "
                           "differs from input 0 \"%s\"", path, kind, out, in0);
        break;
    case OP_ADD:
        for (int k = 0; k < op->nin; k++)
            if (strcmp(op->in_letters[k], out) != 0)
                return err_set(err, "%s.spec: add needs identical letters in every input and the "
                               "output, but input %d has \"%s\" and the output \"%s\"", path, k,
                               op->in_letters[k], out);
        break;
    case OP_CROSS_ENTROPY:
        if (*out)
            return err_set(err, "%s.spec: cross_entropy's output is the scalar loss, write \"->\" "
                           "with no letters, got \"%s\"", path, op->spec);
        if (letters_mask(op->in_letters[1]) != (m0 & ~op->reduce_mask))
            return err_set(err, "%s.spec: the labels' letters \"%s\" must be the logits' \"%s\" "
                           "without the class letter", path, op->in_letters[1], in0);
        break;
    case OP_CONCAT: {
        uint32_t own_out = mo & ~mall, shared = mo & ~own_out;
        if (__builtin_popcount(own_out) != 1)
            return err_set(err, "%s.spec: concat's output \"%s\" needs exactly one letter that no "
                           "input has (the concatenated dim), got %d", path, out,
                           __builtin_popcount(own_out));
        for (int k = 0; k < op->nin; k++) {
            uint32_t mk = letters_mask(op->in_letters[k]);
            if (__builtin_popcount(mk & ~mo) != 1)
                return err_set(err, "%s.spec: concat's input %d \"%s\" needs exactly one letter "
                               "that the output \"%s\" lacks (its extent along the concatenated "
                               "dim), got %d", path, k, op->in_letters[k], out,
                               __builtin_popcount(mk & ~mo));
            if ((mk & mo) != shared)
                return err_set(err, "%s.spec: concat's input %d \"%s\" must have every letter of "
                               "the output \"%s\" but the concatenated '%c'", path, k,
                               op->in_letters[k], out, 'a' + __builtin_ctz(own_out));
        }
        break;
    }
    case OP_MSE:
        if (*out)
            return err_set(err, "%s.spec: mse's output is the scalar loss, write \"->\" with no "
                           "letters, got \"%s\"", path, op->spec);
        if (letters_mask(op->in_letters[1]) != m0)
            return err_set(err, "%s.spec: mse's target letters \"%s\" must be the prediction's "
                           "\"%s\" (in any order)", path, op->in_letters[1], in0);
        break;
    case OP_ROUTE: {
        int extra = 0;
        for (const char *p = out; *p; p++) extra += !(m0 >> (*p - 'a') & 1);
        if ((mo & m0) != m0 || extra != 1)
            return err_set(err, "%s.spec: route's output is its input's letters plus one capacity "
                           "letter, got \"%s\"", path, op->spec);
        break;
    }
    default:
        break;
    }

    if (op->kind == OP_BIAS && (letters_mask(op->in_letters[1]) & ~m0))
        return err_set(err, "%s.spec: bias letters \"%s\" must be a subset of input 0's \"%s\"",
                       path, op->in_letters[1], in0);
    if (op->kind == OP_LAYERNORM || op->kind == OP_BATCHNORM) {
        uint32_t want = op->kind == OP_LAYERNORM ? op->reduce_mask : m0 & ~op->reduce_mask;
        for (int k = 1; k < op->nin; k++)
            if (letters_mask(op->in_letters[k]) != want)
                return err_set(err, "%s.spec: %s's %s \"%s\" must have exactly the %s letters",
                               path, kind, k == 1 ? "gamma" : "beta", op->in_letters[k],
                               op->kind == OP_LAYERNORM ? "normalised (reduce)" : "non-reduced");
    }
    if (op->kind == OP_SOFTMAX && op->causal) {
        const Tensor *t = &g->tensors[op->in[0]];
        int n = (int)strlen(in0);
        if (n < 2 || !(op->reduce_mask >> (in0[n - 1] - 'a') & 1))
            return err_set(err, "%s.causal: the causal mask needs the reduce letter last in \"%s\"",
                           path, in0);
        if (t->shape[n - 1] != t->shape[n - 2])
            return err_set(err, "%s.causal: the causal mask needs '%c' and '%c' of equal size, "
                           "got %lld and %lld", path, in0[n - 2], in0[n - 1],
                           (long long)t->shape[n - 2], (long long)t->shape[n - 1]);
    }
    return 0;
}

static void where_name(int from, char *buf, size_t n)
{
    if (from < 0) snprintf(buf, n, "the output");
    else snprintf(buf, n, "input %d", from);
}

/* Sizes of every letter, agreeing across operands; the spatial letters of
 * conv2d/pool2d follow (in + 2*pad - window)/stride + 1 instead. */
static int check_sizes(const Graph *g, Op *op, const char *path, Err *err)
{
    int64_t sz[IR_LETTERS] = {0};
    int from[IR_LETTERS];
    uint32_t spatial = 0;
    if (op->kind == OP_CONV2D || op->kind == OP_POOL2D) {
        spatial = 1u << (op->in_letters[0][2] - 'a') | 1u << (op->in_letters[0][3] - 'a');
        if (op->kind == OP_CONV2D)
            op->window_mask = 1u << (op->in_letters[1][2] - 'a') |
                              1u << (op->in_letters[1][3] - 'a');
    }
    for (int step = 0; step <= op->nin; step++) {
        /* inputs first, the output last, so messages read in spec order */
        int kk = step < op->nin ? step : -1;
        const char *L = kk < 0 ? op->out_letters : op->in_letters[kk];
        const Tensor *t = &g->tensors[kk < 0 ? op->out : op->in[kk]];
        for (int p = 0; L[p]; p++) {
            int l = L[p] - 'a';
            if (kk == 0 && (spatial >> l & 1)) continue;
            if (!sz[l]) {
                sz[l] = t->shape[p];
                from[l] = kk;
            } else if (sz[l] != t->shape[p]) {
                char a[24], b[24];
                where_name(from[l], a, sizeof a);
                where_name(kk, b, sizeof b);
                return err_set(err, "%s.spec: letter '%c' has size %lld in %s but %lld in %s",
                               path, L[p], (long long)sz[l], a, (long long)t->shape[p], b);
            }
        }
    }
    for (int p = 2; p < 4 && spatial; p++) {
        int l = op->in_letters[0][p] - 'a';
        int64_t in = g->tensors[op->in[0]].shape[p];
        int64_t win = op->kind == OP_CONV2D ? sz[op->in_letters[1][p] - 'a'] : op->window;
        int64_t num = in + 2 * (int64_t)op->pad - win;
        if (num < 0)
            return err_set(err, "%s.spec: window %lld along '%c' is larger than the padded input "
                           "%lld", path, (long long)win, 'a' + l, (long long)(in + 2 * op->pad));
        int64_t want = num / op->stride + 1;
        if (sz[l] != want)
            return err_set(err, "%s.spec: letter '%c' has size %lld in the output but "
                           "(%lld + 2*%d - %lld)/%d + 1 = %lld from input 0", path, 'a' + l,
                           (long long)sz[l], (long long)in, op->pad, (long long)win, op->stride,
                           (long long)want);
    }
    memcpy(op->size, sz, sizeof sz);
    op->spatial_mask = spatial;
    return 0;
}

/* Concat: the letters not in every operand (each input's own, the
 * output's) are its concat_mask, and the output's size along its own letter
 * is the sum of the inputs' along theirs. */
static int check_concat_sizes(Op *op, const char *path, Err *err)
{
    uint32_t all = letters_mask(op->out_letters), every = all;
    for (int k = 0; k < op->nin; k++) {
        all |= letters_mask(op->in_letters[k]);
        every &= letters_mask(op->in_letters[k]);
    }
    op->concat_mask = all & ~every;
    int lo = op_concat_letter(op, op->nin);
    int64_t sum = 0;
    char names[4 * IR_MAX_INPUTS + 1] = "";
    for (int k = 0; k < op->nin; k++) {
        int l = op_concat_letter(op, k);
        if (__builtin_add_overflow(sum, op->size[l], &sum))
            return err_set(err, "%s.spec: concat: the sizes of the inputs' own letters overflow "
                           "int64", path);
        size_t at = strlen(names);
        snprintf(names + at, sizeof names - at, "%s'%c'", k ? "," : "", 'a' + l);
    }
    if (sum != op->size[lo])
        return err_set(err, "%s.spec: concat: output letter '%c' has %lld but its inputs' %s sum "
                       "to %lld", path, 'a' + lo, (long long)op->size[lo], names, (long long)sum);
    return 0;
}

static int check_op(Graph *g, int i, Err *err)
{
    char path[48];
    snprintf(path, sizeof path, "ops[%d]", i);
    Op *op = &g->ops[i];
    Tensor *out = &g->tensors[op->out];

    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &g->tensors[op->in[k]];
        if (t->role != ROLE_ACT) continue;
        if (t->producer < 0)
            return err_set(err, "%s.inputs[%d]: activation \"%s\" is never produced by an op",
                           path, k, t->name);
        if (t->producer == i)
            return err_set(err, "%s.inputs[%d]: tensor \"%s\" is this op's own output (a cycle)",
                           path, k, t->name);
        if (t->producer > i)
            return err_set(err, "%s.inputs[%d]: tensor \"%s\" is produced later, by ops[%d] "
                           "(\"%s\"); list ops in a topological order (a cycle has none)", path,
                           k, t->name, t->producer, g->ops[t->producer].name);
    }
    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &g->tensors[op->in[k]];
        if (op->kind == OP_MSE && k == 1) {
            if (t->dtype == DT_I32)
                return err_set(err, "%s.inputs[1]: tensor \"%s\" is i32, but mse's target must be "
                               "a float label (f32, bf16 or f16); i32 class labels are for "
                               "cross_entropy", path, t->name);
            if (t->role != ROLE_LABEL)
                return err_set(err, "%s.inputs[1]: tensor \"%s\" has role %s, but mse's target "
                               "must be a tensor with role label", path, t->name,
                               role_names[t->role]);
        }
        bool index = (op->kind == OP_EMBEDDING && k == 0) || (op->kind == OP_CROSS_ENTROPY && k == 1);
        if (index && t->dtype != DT_I32)
            return err_set(err, "%s.inputs[%d]: tensor \"%s\" is %s, but %s %s must be i32", path,
                           k, t->name, dtype_names[t->dtype], kind_names[op->kind],
                           op->kind == OP_EMBEDDING ? "indices" : "labels");
        if (!index && t->dtype == DT_I32)
            return err_set(err, "%s.inputs[%d]: tensor \"%s\" is i32; only embedding indices and "
                           "cross_entropy labels may be integers", path, k, t->name);
    }
    if (out->dtype == DT_I32)
        return err_set(err, "%s.output: tensor \"%s\" is i32; ops produce floating-point tensors",
                       path, out->name);
    if (check_kind(g, op, path, err) || check_sizes(g, op, path, err)) return -1;
    if (op->kind == OP_CONCAT && check_concat_sizes(op, path, err)) return -1;

    op->letters_mask = letters_mask(op->out_letters);
    for (int k = 0; k < op->nin; k++) op->letters_mask |= letters_mask(op->in_letters[k]);
    int64_t space = 1;
    for (int l = 0; l < IR_LETTERS; l++)
        if ((op->letters_mask >> l & 1) && !mul_ok(space, op->size[l], &space))
            return err_set(err, "%s: the iteration space (the product of all letter sizes) "
                           "overflows int64", path);

    /* The batch letter is whatever letter sits at the batch dim of the inputs. */
    int who = -1;
    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &g->tensors[op->in[k]];
        if (t->batch_dim < 0) continue;
        int l = op->in_letters[k][t->batch_dim] - 'a';
        if (who < 0) {
            op->batch_letter = l;
            who = k;
        } else if (l != op->batch_letter) {
            return err_set(err, "%s: inputs disagree on the batch letter: '%c' in input %d "
                           "(\"%s\") but '%c' in input %d (\"%s\")", path,
                           'a' + op->batch_letter, who, g->tensors[op->in[who]].name, 'a' + l, k,
                           t->name);
        }
    }
    if (op->batch_letter >= 0 && (op->concat_mask >> op->batch_letter & 1))
        return err_set(err, "%s.spec: concat along the batch letter '%c' of input %d (\"%s\"); "
                       "the batch letter must be in every input and the output", path,
                       'a' + op->batch_letter, who, g->tensors[op->in[who]].name);
    out->batch_dim = -1;
    for (int p = 0; op->batch_letter >= 0 && op->out_letters[p]; p++)
        if (op->out_letters[p] - 'a' == op->batch_letter) out->batch_dim = p;

    /* Routing is a discrete choice: no gradient flows through it. */
    out->needs_grad = false;
    for (int k = 0; k < op->nin && op->kind != OP_ROUTE; k++)
        out->needs_grad |= g->tensors[op->in[k]].needs_grad;
    return 0;
}

/* ----------------------------------------------------------------------------
 * Whole graphs */

static int count_array(const cJSON *j, const char *key, int *n, Err *err)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!a) return err_set(err, "%s: missing (required)", key);
    if (!cJSON_IsArray(a)) return err_set(err, "%s: expected an array of objects", key);
    *n = cJSON_GetArraySize(a);
    return 0;
}

/* Tensors alike in everything but name and producer, and ops alike in
 * everything but name, operands and block: each names the first of its
 * kind (Tensor.form, Op.form), found by hashing and checked field by
 * field. */
static bool tensors_alike(const Tensor *a, const Tensor *b)
{
    return a->ndim == b->ndim && a->dtype == b->dtype && a->role == b->role &&
           a->batch_dim == b->batch_dim && a->needs_grad == b->needs_grad &&
           !memcmp(a->shape, b->shape, sizeof *a->shape * (size_t)a->ndim);
}

static bool ops_alike(const Op *a, const Op *b)
{
    return a->kind == b->kind && a->nin == b->nin && !strcmp(a->spec, b->spec) &&
           a->reduce_mask == b->reduce_mask && a->gather_mask == b->gather_mask &&
           a->stride == b->stride && a->pad == b->pad && a->window == b->window &&
           a->causal == b->causal && a->scale == b->scale && a->pool_avg == b->pool_avg &&
           a->batch_letter == b->batch_letter && !memcmp(a->size, b->size, sizeof a->size);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t k = 0; k < n; k++) h = (h ^ c[k]) * 1099511628211ULL;
    return h;
}

static void find_consumers(Graph *g)
{
    g->cons_off = xcalloc((size_t)g->ntensors + 1, sizeof *g->cons_off);
    for (int i = 0; i < g->nops; i++)
        for (int k = 0; k < g->ops[i].nin; k++) g->cons_off[g->ops[i].in[k] + 1]++;
    for (int t = 0; t < g->ntensors; t++) g->cons_off[t + 1] += g->cons_off[t];
    g->cons = xmalloc(sizeof *g->cons * ((size_t)g->cons_off[g->ntensors] + 1));
    int *fill = xcalloc((size_t)g->ntensors + 1, sizeof *fill);
    for (int i = 0; i < g->nops; i++)
        for (int k = 0; k < g->ops[i].nin; k++) {
            int t = g->ops[i].in[k];
            g->cons[g->cons_off[t] + fill[t]++] = i;
        }
    /* ascending already (ops in order); a second read by one op dropped */
    int w = 0;
    for (int t = 0; t < g->ntensors; t++) {
        int lo = g->cons_off[t], hi = lo + fill[t];
        g->cons_off[t] = w;
        for (int x = lo; x < hi; x++)
            if (x == lo || g->cons[x] != g->cons[x - 1]) g->cons[w++] = g->cons[x];
    }
    g->cons_off[g->ntensors] = w;
    free(fill);
}

static void find_forms(Graph *g)
{
    int n = g->ntensors > g->nops ? g->ntensors : g->nops, cap = 16;
    while (cap < 2 * n) cap *= 2;
    int *slot = xmalloc(sizeof *slot * (size_t)cap);
    for (int k = 0; k < cap; k++) slot[k] = -1;
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *a = &g->tensors[t];
        uint64_t h = fnv(14695981039346656037ULL, a->shape, sizeof *a->shape * (size_t)a->ndim);
        h = fnv(h, &a->role, sizeof a->role) ^ (uint64_t)(a->ndim * 131 + a->dtype * 17 +
                                                          a->batch_dim * 5 + a->needs_grad);
        size_t k = (size_t)(h * 0x9e3779b97f4a7c15ULL >> 32) & (size_t)(cap - 1);
        while (slot[k] >= 0 && !tensors_alike(&g->tensors[slot[k]], a)) k = (k + 1) & (size_t)(cap - 1);
        if (slot[k] < 0) slot[k] = t;
        g->tensors[t].form = slot[k];
    }
    for (int k = 0; k < cap; k++) slot[k] = -1;
    for (int i = 0; i < g->nops; i++) {
        const Op *a = &g->ops[i];
        uint64_t h = fnv(14695981039346656037ULL, a->spec, strlen(a->spec));
        h = fnv(h, a->size, sizeof a->size) ^ (uint64_t)a->kind;
        size_t k = (size_t)(h * 0x9e3779b97f4a7c15ULL >> 32) & (size_t)(cap - 1);
        while (slot[k] >= 0 && !ops_alike(&g->ops[slot[k]], a)) k = (k + 1) & (size_t)(cap - 1);
        if (slot[k] < 0) slot[k] = i;
        g->ops[i].form = slot[k];
    }
    free(slot);
}

Graph *graph_from_json(const cJSON *j, Err *err)
{
    static const char *const keys[] = {"name", "tensors", "ops", NULL};
    if (json_check_keys(j, "model", keys, err)) return NULL;
    const char *name;
    int nt = 0, no = 0;
    if (json_get_string(j, "model", "name", true, &name, err) ||
        count_array(j, "tensors", &nt, err) || count_array(j, "ops", &no, err))
        return NULL;

    Graph *g = xcalloc(1, sizeof *g);
    g->name = xstrdup(name);
    g->tensors = xcalloc(nt ? nt : 1, sizeof *g->tensors);
    g->ops = xcalloc(no ? no : 1, sizeof *g->ops);
    g->ntensors = nt;
    g->nops = no;
    NameIndex tix, oix;
    index_init(&tix, nt);
    index_init(&oix, no);

    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "tensors")) {
        if (parse_tensor(g, i++, it, &tix, err)) goto err;
    }
    /* memory is counted in bytes in 64-bit integers, as sums and multiples
     * of the tensors' (a param's gradient and optimizer state, every
     * micro-batch's activations): 2^56 bytes in all leaves that room */
    double total = 0;
    for (i = 0; i < nt; i++) {
        const Tensor *t = &g->tensors[i];
        double b = (double)dtype_bytes(t->dtype);
        for (int d = 0; d < t->ndim; d++) b *= (double)t->shape[d];
        total += b;
        if (total > 0x1p56) {
            err_set(err, "tensors[%d].shape: with \"%s\" (%.3g bytes) the model's tensors hold "
                    "%.3g bytes, more than the 2^56 (64 PiB) strata's memory accounting takes",
                    i, t->name, b, total);
            goto err;
        }
    }
    if (no == 0) {
        err_set(err, "ops: empty; a model needs at least one op");
        goto err;
    }
    i = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "ops")) {
        if (parse_op(g, i++, it, &tix, &oix, err)) goto err;
    }
    for (i = 0; i < no; i++) {
        if (check_op(g, i, err)) goto err;
        if (g->ops[i].block + 1 > g->nblocks) g->nblocks = g->ops[i].block + 1;
    }
    /* blocks are numbered 0, 1, 2, ...: a pipeline cuts between them, and
     * a number no op has would be a stage of no work */
    if (g->nblocks) {
        bool *has = xcalloc((size_t)g->nblocks, sizeof *has);
        for (i = 0; i < no; i++)
            if (g->ops[i].block >= 0) has[g->ops[i].block] = true;
        int gap = 0;
        while (gap < g->nblocks && has[gap]) gap++;
        free(has);
        if (gap < g->nblocks) {
            int after = -1;
            for (i = 0; i < no && after < 0; i++)
                if (g->ops[i].block > gap) after = i;
            err_set(err, "ops[%d].block: %d, but no op is in block %d; blocks are numbered 0, 1, "
                    "2, ... without gaps", after, g->ops[after].block, gap);
            goto err;
        }
    }
    for (i = 0; i < nt; i++)
        if (g->tensors[i].role == ROLE_ACT && g->tensors[i].producer < 0) {
            err_set(err, "tensors[%d]: activation \"%s\" is never produced by an op (add the op "
                    "that computes it, or give it another role)", i, g->tensors[i].name);
            goto err;
        }
    for (i = 0; i < no; i++) {
        OpCost c;
        graph_op_cost(g, i, g->ops[i].size, &c);
        g->train_flops += c.flops[COST_FWD] + c.flops[COST_BWD_DATA] + c.flops[COST_BWD_WEIGHT];
    }
    find_consumers(g);
    find_forms(g);
    index_free(&tix);
    index_free(&oix);
    return g;
err:
    index_free(&tix);
    index_free(&oix);
    graph_free(g);
    return NULL;
}

Graph *graph_load(const char *path, Err *err)
{
    cJSON *j = json_load(path, err);
    if (!j) return NULL;
    Graph *g = graph_from_json(j, err);
    cJSON_Delete(j);
    if (!g && err) {
        /* err_prefix, with bounds the compiler can see (no truncation warning) */
        char msg[sizeof err->msg];
        memcpy(msg, err->msg, sizeof msg);
        err_set(err, "%.200s: %.800s", path, msg);
    }
    return g;
}

void graph_free(Graph *g)
{
    if (!g) return;
    for (int i = 0; i < g->ntensors; i++) free(g->tensors[i].name);
    for (int i = 0; i < g->nops; i++) {
        free(g->ops[i].name);
        free(g->ops[i].spec);
    }
    free(g->tensors);
    free(g->ops);
    free(g->name);
    free(g->cons_off);
    free(g->cons);
    free(g);
}

int graph_find_tensor(const Graph *g, const char *name)
{
    for (int i = 0; i < g->ntensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return i;
    return -1;
}

bool graph_read_by(const Graph *g, int t, OpKind kind)
{
    for (int i = 0; i < g->nops; i++)
        for (int k = 0; k < g->ops[i].nin; k++)
            if (g->ops[i].in[k] == t && g->ops[i].kind == kind) return true;
    return false;
}

int graph_find_op(const Graph *g, const char *name)
{
    for (int i = 0; i < g->nops; i++)
        if (strcmp(g->ops[i].name, name) == 0) return i;
    return -1;
}

/* ----------------------------------------------------------------------------
 * Writing: the canonical form (attributes of the kind only, defaults written
 * out, `block` only inside blocks, `reduce` letters in input order). */

static void add_letters(cJSON *o, const char *key, const char *letters, uint32_t mask)
{
    char s[IR_MAX_DIMS + 1];
    int n = 0;
    for (const char *p = letters; *p; p++)
        if (mask >> (*p - 'a') & 1) s[n++] = *p;
    s[n] = 0;
    cJSON_AddStringToObject(o, key, s);
}

cJSON *graph_to_json(const Graph *g)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", g->name);
    cJSON *ts = cJSON_AddArrayToObject(j, "tensors");
    for (int i = 0; i < g->ntensors; i++) {
        const Tensor *t = &g->tensors[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", t->name);
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddStringToObject(o, "dtype", dtype_names[t->dtype]);
        cJSON_AddStringToObject(o, "role", role_names[t->role]);
        cJSON_AddItemToArray(ts, o);
    }
    cJSON *os = cJSON_AddArrayToObject(j, "ops");
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", op->name);
        cJSON_AddStringToObject(o, "kind", kind_names[op->kind]);
        cJSON_AddStringToObject(o, "spec", op->spec);
        cJSON *ins = cJSON_AddArrayToObject(o, "inputs");
        for (int k = 0; k < op->nin; k++)
            cJSON_AddItemToArray(ins, cJSON_CreateString(g->tensors[op->in[k]].name));
        cJSON_AddStringToObject(o, "output", g->tensors[op->out].name);
        if (op->block >= 0) cJSON_AddNumberToObject(o, "block", op->block);
        switch (op->kind) {
        case OP_LAYERNORM: case OP_BATCHNORM: case OP_SOFTMAX: case OP_CROSS_ENTROPY:
        case OP_ROUTE:
            add_letters(o, "reduce", op->in_letters[0], op->reduce_mask);
            break;
        case OP_EMBEDDING:
            add_letters(o, "gather", op->in_letters[1], op->gather_mask);
            break;
        case OP_POOL2D:
            cJSON_AddNumberToObject(o, "window", op->window);
            /* fall through */
        case OP_CONV2D:
            cJSON_AddNumberToObject(o, "stride", op->stride);
            cJSON_AddNumberToObject(o, "pad", op->pad);
            if (op->kind == OP_POOL2D)
                cJSON_AddStringToObject(o, "mode", op->pool_avg ? "avg" : "max");
            break;
        default:
            break;
        }
        if (op->kind == OP_SOFTMAX && op->causal) cJSON_AddBoolToObject(o, "causal", true);
        if (op->kind == OP_SOFTMAX && op->scale != 1) cJSON_AddNumberToObject(o, "scale", op->scale);
        cJSON_AddItemToArray(os, o);
    }
    return j;
}

int graph_save(const Graph *g, const char *path, Err *err)
{
    cJSON *j = graph_to_json(g);
    int rc = json_save(j, path, err);
    cJSON_Delete(j);
    return rc;
}

char *graph_text(const Graph *g, char id[17])
{
    cJSON *j = graph_to_json(g);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    hash_hex(text, strlen(text), id);
    return text;
}

void graph_id(const Graph *g, char out[17])
{
    cJSON_free(graph_text(g, out));
}

/* ----------------------------------------------------------------------------
 * Costs
 *
 * Contractions (matmul, conv2d): forward 2*P*(nin-1) flops (a multiply per
 * extra operand and an add, at every point of the iteration space); each
 * operand's gradient is another contraction of the same size, counted under
 * backward-data for activations and backward-weight for params.
 *
 * Elementwise and normalising kinds: forward elt_fwd flops per element of
 * input 0 (pool2d: per output element, times the window area); the gradient
 * of the data inputs costs twice the forward; a param operand's gradient (bias,
 * gamma and beta) costs elt_wgrad per element of input 0, a reduction of dY.
 *
 * Bytes of a phase: the operands it reads plus what it writes. Backward reads
 * dY and the saved operands it needs and writes each gradient. Concat
 * computes nothing: forward copies every input, backward the slices of dY
 * whose inputs need a gradient. */

static const struct { double fwd, wgrad; } elt_cost[OP_KIND_COUNT] = {
    [OP_POOL2D] = {1, 0},        /* one compare or add per window element */
    [OP_MEAN] = {1, 0},
    [OP_ADD] = {1, 1},           /* per extra input */
    [OP_BIAS] = {1, 1},
    [OP_GELU] = {8, 0},          /* tanh approximation */
    [OP_RELU] = {1, 0},
    [OP_LAYERNORM] = {8, 3},     /* mean, variance, normalise, scale, shift; dgamma 2 + dbeta 1 */
    [OP_BATCHNORM] = {8, 3},
    [OP_SOFTMAX] = {5, 0},       /* scale, max, exp, sum, divide */
    [OP_CROSS_ENTROPY] = {5, 0}, /* per logit: max, exp, sum, log, pick */
    [OP_ROUTE] = {3, 0},         /* argmax over experts, capacity slot */
    [OP_CONCAT] = {0, 0},        /* copies only */
    [OP_MSE] = {3, 0},           /* per element: subtract, square, sum */
};

/* Elements of operand k (k = -1: the output) at the given letter sizes. A
 * spatial letter of a conv/pool input spans `stride` output positions. */
static double operand_elems(const Op *op, int k, const int64_t size[IR_LETTERS])
{
    const char *L = k < 0 ? op->out_letters : op->in_letters[k];
    double n = 1;
    for (; *L; L++) {
        int l = *L - 'a';
        double s = (double)size[l];
        if (k == 0 && (op->spatial_mask >> l & 1)) s *= op->stride;
        n *= s;
    }
    return n;
}

static double operand_bytes(const Graph *g, const Op *op, int k, const int64_t size[IR_LETTERS])
{
    const Tensor *t = &g->tensors[k < 0 ? op->out : op->in[k]];
    return operand_elems(op, k, size) * dtype_bytes(t->dtype);
}

void graph_op_cost(const Graph *g, int i, const int64_t size[IR_LETTERS], OpCost *c)
{
    const Op *op = &g->ops[i];
    memset(c, 0, sizeof *c);
    double out_b = operand_bytes(g, op, -1, size), in_b[IR_MAX_INPUTS], all_in = 0;
    for (int k = 0; k < op->nin; k++) all_in += in_b[k] = operand_bytes(g, op, k, size);
    c->bytes[COST_FWD] = all_in + out_b;

    if (op->kind == OP_MATMUL || op->kind == OP_CONV2D) {
        double P = 1;
        for (int l = 0; l < IR_LETTERS; l++)
            if (op->letters_mask >> l & 1) P *= (double)size[l];
        double f = 2 * P * (op->nin - 1);
        c->flops[COST_FWD] = f;
        for (int k = 0; k < op->nin; k++) {
            const Tensor *t = &g->tensors[op->in[k]];
            if (!t->needs_grad) continue;
            int ph = t->role == ROLE_PARAM ? COST_BWD_WEIGHT : COST_BWD_DATA;
            c->flops[ph] += f;
            c->bytes[ph] += out_b + all_in;   /* dY and the other operands in, dX_k out */
        }
        return;
    }

    if (op->kind == OP_EMBEDDING) {
        /* Rows gathered: every letter but the table row, e.g. b*s*h, or
         * b*t*l*h for a bag of l lookups that forward sums into b*t*h. */
        const Tensor *table = &g->tensors[op->in[1]];
        double rows = 1;
        for (int l = 0; l < IR_LETTERS; l++)
            if ((op->letters_mask & ~op->gather_mask) >> l & 1) rows *= (double)size[l];
        double rows_b = rows * dtype_bytes(table->dtype);
        c->flops[COST_FWD] = rows - operand_elems(op, -1, size);
        c->bytes[COST_FWD] = in_b[0] + rows_b + out_b;
        if (table->needs_grad) {
            int ph = table->role == ROLE_PARAM ? COST_BWD_WEIGHT : COST_BWD_DATA;
            c->flops[ph] = rows;                  /* scatter-add of dY into the rows */
            c->bytes[ph] = out_b + in_b[0] + rows_b;
        }
        return;
    }

    double E = operand_elems(op, 0, size), per = elt_cost[op->kind].fwd;
    if (op->kind == OP_POOL2D) {
        E = operand_elems(op, -1, size);
        per = (double)op->window * op->window;
    }
    if (op->kind == OP_ADD) per = op->nin - 1;
    c->flops[COST_FWD] = per * E;
    if (op->kind == OP_ROUTE) return;
    if (op->kind == OP_CONCAT) {
        /* no arithmetic: the backward reads the slices of dY the gradients
         * need and writes them */
        for (int k = 0; k < op->nin; k++) {
            const Tensor *t = &g->tensors[op->in[k]];
            if (t->needs_grad)
                c->bytes[t->role == ROLE_PARAM ? COST_BWD_WEIGHT : COST_BWD_DATA] += 2 * in_b[k];
        }
        return;
    }
    double data_b = 0, weight_b = 0;
    for (int k = 0; k < op->nin; k++) {
        const Tensor *t = &g->tensors[op->in[k]];
        if (!t->needs_grad) continue;
        if (t->role == ROLE_PARAM) weight_b += in_b[k];
        else data_b += in_b[k];
    }
    if (data_b > 0) {
        c->flops[COST_BWD_DATA] = 2 * per * E;
        c->bytes[COST_BWD_DATA] = out_b + all_in + data_b;
    }
    if (weight_b > 0) {
        c->flops[COST_BWD_WEIGHT] = elt_cost[op->kind].wgrad * E;
        c->bytes[COST_BWD_WEIGHT] = out_b + in_b[0] + weight_b;
    }
}

/* ----------------------------------------------------------------------------
 * Statistics */

int graph_stats(const Graph *g, GraphStats *st, Err *err)
{
    memset(st, 0, sizeof *st);
    if (!g) return err_set(err, "graph_stats: no graph");
    int nb = g->nblocks;
    st->nblocks = nb;
    st->block_params = xcalloc(nb + 1, sizeof *st->block_params);
    st->block_flops = xcalloc(nb + 1, sizeof *st->block_flops);
    st->block_act_bytes = xcalloc(nb + 1, sizeof *st->block_act_bytes);

    /* A param counts towards the block of its first consumer (a tied
     * embedding, read at both ends of a model, counts once). */
    int *pblock = xmalloc(sizeof *pblock * (g->ntensors ? g->ntensors : 1));
    for (int t = 0; t < g->ntensors; t++) pblock[t] = nb;
    bool *seen = xcalloc(g->ntensors ? g->ntensors : 1, sizeof *seen);
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        int blk = op->block >= 0 ? op->block : nb;
        for (int k = 0; k < op->nin; k++)
            if (!seen[op->in[k]]) {
                seen[op->in[k]] = true;
                pblock[op->in[k]] = blk;
            }
        OpCost c;
        graph_op_cost(g, i, op->size, &c);
        double train = c.flops[COST_FWD] + c.flops[COST_BWD_DATA] + c.flops[COST_BWD_WEIGHT];
        st->fwd_flops += c.flops[COST_FWD];
        st->train_flops += train;
        st->block_flops[blk] += train;
    }
    for (int t = 0; t < g->ntensors; t++) {
        const Tensor *x = &g->tensors[t];
        double n = (double)tensor_numel(x), b = n * dtype_bytes(x->dtype);
        if (x->role == ROLE_PARAM) {
            st->params += n;
            st->param_bytes += b;
            st->block_params[pblock[t]] += n;
        } else if (x->role == ROLE_ACT) {
            st->act_bytes += b;
            int blk = g->ops[x->producer].block;
            st->block_act_bytes[blk >= 0 ? blk : nb] += b;
        }
    }
    free(pblock);
    free(seen);
    return 0;
}

void graph_stats_free(GraphStats *st)
{
    if (!st) return;
    free(st->block_params);
    free(st->block_flops);
    free(st->block_act_bytes);
    st->block_params = st->block_flops = st->block_act_bytes = NULL;
}

int op_kinds_check(const char *list, Err *err)
{
    char buf[512];
    if (strlen(list) >= sizeof buf) return err_set(err, "too long a list");
    snprintf(buf, sizeof buf, "%s", list);
    if (!*buf) return err_set(err, "an empty list; name op kinds, or leave it out for all");
    char *save = NULL;
    for (char *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        OpKind k;
        if (strcmp(w, "sgd") && strcmp(w, "adam") && op_kind_parse(w, &k)) {
            char kinds[256] = "";
            for (int i = 0; i < OP_KIND_COUNT; i++) {
                size_t at = strlen(kinds);
                snprintf(kinds + at, sizeof kinds - at, "%s%s", i ? ", " : "",
                         op_kind_name((OpKind)i));
            }
            return err_set(err, "\"%s\" is not an op kind (%s) or optimizer (sgd, adam)", w,
                           kinds);
        }
    }
    return 0;
}
