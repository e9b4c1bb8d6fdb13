/*
 * onnx.c — an ONNX model as strata's model JSON (see onnx.h).
 *
 * ONNX values have positional dims; strata's tensors have letters. The
 * import keeps, for every dim of every value, the atoms it is made of: an
 * atom is an index range with a size, and a dim of size 1 has none. Ops
 * that equate dims of their operands (a contraction, a residual, a bias)
 * join the atoms into one class; Reshape regroups a value's atoms (splitting
 * an atom where a new dim boundary falls inside it, which splits its whole
 * class, in every tensor that holds it: a [h, h] weight whose output is
 * reshaped into heads becomes [h, n, d]); Transpose only permutes them.
 * Letters are chosen per op at the end, one per class an op sees, so a
 * layout change never costs a copy and never needs a letter of its own.
 *
 * Legend: leaf = an atom not split further (the final dims of tensors);
 * class = atoms joined by the ops (their root in a union-find).
 */
#include "onnx.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx.pb-c.h"
#include "util.h"

#define MAXD 8                     /* dims of a value, atoms of a tensor */

typedef struct {
    int n;
    int a[MAXD];
} Seq;

typedef struct {
    int64_t size;
    int parent;                    /* union-find */
    int sub[2];                    /* split into these two (major first) */
    bool split;
    char hint;                     /* preferred letter, 0 for none */
} Atom;

typedef enum { V_INPUT, V_PARAM, V_CONST, V_ACT } VKind;

/* An ONNX value: a view of a strata tensor (or a constant). */
typedef struct {
    char *name;
    VKind kind;
    int rank;
    Seq dim[MAXD];                 /* atoms of each dim (once a tensor) */
    int64_t shape[MAXD];
    int tensor;                    /* -1: none yet (an unread initializer, a constant) */
    int dtype;                     /* ONNX elem type */
    double scale;                  /* a constant factor not applied yet (folded into softmax) */
    bool causal;                   /* a causal mask was added */
    const Onnx__TensorProto *tp;   /* an initializer's or Constant's values */
} Val;

typedef struct {
    char *name;
    const char *role;
    const char *dtype;
    Seq at;                        /* atoms in storage order */
    int producer;                  /* op, -1 */
    int consumers;                 /* ops reading it */
} Ten;

typedef struct {
    char *name;
    const char *kind;
    int nin, in[4], out;           /* tensors */
    Seq letter_attr;               /* atoms of "reduce" or "gather" */
    const char *attr_key;
    int nforce;
    struct { int atom; char letter; } force[16];
    int nren;
    struct { int k, from, to; } ren[8];   /* operand k sees class `from` as `to` */
    cJSON *attrs;
    int block;
} Opr;

typedef struct {
    const char *key;
    int val;
} Slot;

typedef struct {
    Atom *at;
    int nat, catt;
    Val *v;
    int nv, cv;
    Slot *vh;                      /* name -> newest value */
    int vhcap;
    Ten *t;
    int nt, ct;
    Opr *op;
    int nop, cop;
    Err *err;
    const Onnx__NodeProto *nd;     /* the node being imported, for messages */
} Imp;

/* protobuf-c leaves an absent string NULL */
static const char *str(const char *s)
{
    return s ? s : "";
}

static int refuse(Imp *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int refuse(Imp *m, const char *fmt, ...)
{
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    const Onnx__NodeProto *nd = m->nd;
    if (!nd) return err_set(m->err, "%s", why);
    return err_set(m->err, "node \"%s\" (%s): %s",
                   nd->name && nd->name[0] ? nd->name : nd->n_output ? str(nd->output[0]) : "",
                   str(nd->op_type), why);
}

/* ----------------------------------------------------------------------------
 * Atoms */

/* p with room for element n of `size` bytes; *cap doubles from 256. */
static void *grow(void *p, int n, int *cap, size_t size)
{
    if (n < *cap) return p;
    *cap = *cap ? 2 * *cap : 256;
    return xrealloc(p, size * (size_t)*cap);
}

static int atom_new(Imp *m, int64_t size, char hint)
{
    m->at = grow(m->at, m->nat, &m->catt, sizeof *m->at);
    m->at[m->nat] = (Atom){ .size = size, .parent = m->nat, .hint = hint };
    return m->nat++;
}

static int root(Imp *m, int a)
{
    while (m->at[a].parent != a) {
        m->at[a].parent = m->at[m->at[a].parent].parent;
        a = m->at[a].parent;
    }
    return a;
}

/* Appends the leaves of atom a (class roots, split ones expanded) to out;
 * returns the new count, or -1 past max. */
static int leaves_of(Imp *m, int a, int *out, int n, int max)
{
    a = root(m, a);
    if (!m->at[a].split) {
        if (n >= max) return -1;
        out[n] = a;
        return n + 1;
    }
    n = leaves_of(m, m->at[a].sub[0], out, n, max);
    return n < 0 ? -1 : leaves_of(m, m->at[a].sub[1], out, n, max);
}

static int seq_leaves(Imp *m, const Seq *s, int *out, int max)
{
    int n = 0;
    for (int i = 0; i < s->n && n >= 0; i++) n = leaves_of(m, s->a[i], out, n, max);
    return n;
}

static int64_t seq_size(Imp *m, const Seq *s)
{
    int64_t p = 1;
    for (int i = 0; i < s->n; i++) p *= m->at[root(m, s->a[i])].size;
    return p;
}

/* Splits leaf a into (first, size / first). */
static void atom_split(Imp *m, int a, int64_t first, char h0, char h1)
{
    int64_t size = m->at[a].size;
    char hint = m->at[a].hint;
    int c0 = atom_new(m, first, h0 ? h0 : hint);
    int c1 = atom_new(m, size / first, h1);
    m->at[a].split = true;
    m->at[a].sub[0] = c0;
    m->at[a].sub[1] = c1;
}

/* Element counts stay below 2^50 (the largest a plan could hold), so no
 * product of sizes overflows. */
#define MAX_ELEMS ((int64_t)1 << 50)

static bool mul_bounded(int64_t *acc, int64_t x)
{
    if (x < 1 || *acc > MAX_ELEMS / x) return false;
    *acc *= x;
    return true;
}

static Seq seq_one(int a)
{
    return (Seq){ .n = 1, .a = { a } };
}

static void seq_cat(Seq *s, const Seq *t)
{
    for (int i = 0; i < t->n && s->n < MAXD; i++) s->a[s->n++] = t->a[i];
}

/* ----------------------------------------------------------------------------
 * Values and tensors */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot of key in an open-addressed table of cap (a power of two)
 * slots: the one holding it, or the empty one where it goes. */
static Slot *slot_of(Slot *tab, int cap, const char *key)
{
    size_t i = hash_str(key) & (size_t)(cap - 1);
    while (tab[i].key && strcmp(tab[i].key, key)) i = (i + 1) & (size_t)(cap - 1);
    return &tab[i];
}

static void vh_put(Imp *m, const char *key, int val)
{
    if (2 * (m->nv + 1) > m->vhcap) {
        Slot *old = m->vh;
        int oc = m->vhcap;
        m->vhcap = m->vhcap ? 2 * m->vhcap : 512;
        m->vh = xmalloc(sizeof *m->vh * (size_t)m->vhcap);
        memset(m->vh, 0, sizeof *m->vh * (size_t)m->vhcap);
        for (int i = 0; i < oc; i++)
            if (old[i].key) vh_put(m, old[i].key, old[i].val);
        free(old);
    }
    Slot *sl = slot_of(m->vh, m->vhcap, key);
    sl->key = key;
    sl->val = val;
}

static int find(Imp *m, const char *name)
{
    if (!m->vhcap) return -1;
    const Slot *sl = slot_of(m->vh, m->vhcap, name);
    return sl->key ? sl->val : -1;
}

static int val_new(Imp *m, const char *name, VKind kind)
{
    m->v = grow(m->v, m->nv, &m->cv, sizeof *m->v);
    Val *v = &m->v[m->nv];
    memset(v, 0, sizeof *v);
    v->name = xstrdup(name);
    v->kind = kind;
    v->tensor = -1;
    v->scale = 1;
    v->dtype = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    vh_put(m, v->name, m->nv);
    return m->nv++;
}

/* A value that is another one seen differently (same tensor, same data). */
static int val_view(Imp *m, const char *name, int src)
{
    int i = val_new(m, name, V_ACT);
    char *nm = m->v[i].name;
    m->v[i] = m->v[src];
    m->v[i].name = nm;
    return i;
}

static bool is_int(int dt)
{
    return dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT32;
}

static const char *dtype_of(int t)
{
    return is_int(t) ? "i32"
         : t == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 ? "f16"
         : t == ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16 ? "bf16" : "f32";
}

static int ten_new(Imp *m, const char *name, const char *role, const char *dtype, const Seq *dims,
                   int rank)
{
    m->t = grow(m->t, m->nt, &m->ct, sizeof *m->t);
    Ten *t = &m->t[m->nt];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->role = role;
    t->dtype = dtype;
    t->producer = -1;
    for (int d = 0; d < rank; d++) seq_cat(&t->at, &dims[d]);
    return m->nt++;
}

/* Dims of a value from its shape: one fresh atom per dim above 1. */
static void dims_fresh(Imp *m, Val *v, const char *hints)
{
    for (int d = 0; d < v->rank; d++) {
        v->dim[d].n = 0;
        char h = hints && (int)strlen(hints) == v->rank ? hints[d] : 0;
        /* a conv's window keeps its letters at size 1 ("ocrs" is its form) */
        if (v->shape[d] > 1 || (hints && !strcmp(hints, "ocrs")))
            v->dim[d] = seq_one(atom_new(m, v->shape[d], h));
    }
}

/* An initializer read as a parameter: its tensor, made on first use. */
static int param_use(Imp *m, int i, const char *hints)
{
    Val *v = &m->v[i];
    if (v->tensor >= 0) return 0;
    if (v->kind != V_PARAM) return refuse(m, "\"%s\" is a constant where a parameter is read", v->name);
    dims_fresh(m, v, hints);
    v = &m->v[i];
    v->tensor = ten_new(m, v->name, "param", dtype_of(v->dtype), v->dim, v->rank);
    return 0;
}

/* A new activation value and its tensor. */
static int act_new(Imp *m, const char *name, const char *suffix, int rank, const Seq *dims, int dtype)
{
    char buf[700];
    snprintf(buf, sizeof buf, "%s%s", name, suffix);
    int i = val_new(m, buf, V_ACT);
    Val *v = &m->v[i];
    v->rank = rank;
    v->dtype = dtype;
    for (int d = 0; d < rank; d++) {
        v->dim[d] = dims[d];
        v->shape[d] = seq_size(m, &dims[d]);
    }
    v->tensor = ten_new(m, buf, "activation", dtype_of(dtype), dims, rank);
    return i;
}

/* ----------------------------------------------------------------------------
 * Constants */

static size_t tp_numel(const Onnx__TensorProto *t)
{
    size_t n = 1;
    for (size_t d = 0; d < t->n_dims; d++) n *= t->dims[d] > 0 ? (size_t)t->dims[d] : 0;
    return n;
}

static float half_to_float(uint16_t h)
{
    int e = h >> 10 & 31, f = h & 1023;
    float v = e == 0 ? ldexpf((float)f, -24) : e == 31 ? (f ? NAN : INFINITY)
                                                       : ldexpf((float)(f | 1024), e - 25);
    return h & 0x8000 ? -v : v;
}

/* Element i of a constant tensor, as a double; false when it has no such
 * element or a type strata does not read. */
static bool tp_value(const Onnx__TensorProto *t, size_t i, double *out)
{
    const uint8_t *raw = t->raw_data.data;
    size_t rl = t->raw_data.len;
    switch (t->data_type) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
        if (i < t->n_float_data) { *out = t->float_data[i]; return true; }
        if (rl >= 4 * (i + 1)) { float f; memcpy(&f, raw + 4 * i, 4); *out = f; return true; }
        return false;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE:
        if (i < t->n_double_data) { *out = t->double_data[i]; return true; }
        if (rl >= 8 * (i + 1)) { memcpy(out, raw + 8 * i, 8); return true; }
        return false;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
        if (i < t->n_int64_data) { *out = (double)t->int64_data[i]; return true; }
        if (rl >= 8 * (i + 1)) { int64_t x; memcpy(&x, raw + 8 * i, 8); *out = (double)x; return true; }
        return false;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL:
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16:
        if (i < t->n_int32_data) {
            *out = t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16
                       ? half_to_float((uint16_t)t->int32_data[i]) : t->int32_data[i];
            return true;
        }
        if (t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL && rl >= i + 1) {
            *out = raw[i] != 0;
            return true;
        }
        if (t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__INT32 && rl >= 4 * (i + 1)) {
            int32_t x; memcpy(&x, raw + 4 * i, 4); *out = x; return true;
        }
        if (t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16 && rl >= 2 * (i + 1)) {
            uint16_t x; memcpy(&x, raw + 2 * i, 2); *out = half_to_float(x); return true;
        }
        return false;
    default:
        return false;
    }
}

/* The value's constant data, or NULL (an activation, or a weight stripped
 * of its values). */
static const Onnx__TensorProto *const_of(Imp *m, int i)
{
    const Val *v = &m->v[i];
    if (v->kind != V_CONST && v->kind != V_PARAM) return NULL;
    if (!v->tp || !tp_numel(v->tp)) return NULL;
    double x;
    return tp_value(v->tp, tp_numel(v->tp) - 1, &x) ? v->tp : NULL;
}

static bool const_scalar(Imp *m, int i, double *x)
{
    const Onnx__TensorProto *t = const_of(m, i);
    return t && tp_numel(t) == 1 && tp_value(t, 0, x);
}

static int const_ints(Imp *m, int i, int64_t *out, int max)
{
    const Onnx__TensorProto *t = const_of(m, i);
    if (!t || !is_int(t->data_type) || tp_numel(t) > (size_t)max || t->n_dims > 1) return -1;
    for (size_t k = 0; k < tp_numel(t); k++) {
        /* read as integers: a double would round large values */
        const uint8_t *raw = t->raw_data.data;
        bool wide = t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
        if (wide && k < t->n_int64_data) out[k] = t->int64_data[k];
        else if (!wide && k < t->n_int32_data) out[k] = t->int32_data[k];
        else if (wide && t->raw_data.len >= 8 * (k + 1)) memcpy(&out[k], raw + 8 * k, 8);
        else if (!wide && t->raw_data.len >= 4 * (k + 1)) {
            int32_t x;
            memcpy(&x, raw + 4 * k, 4);
            out[k] = x;
        } else return -1;
    }
    return (int)tp_numel(t);
}

/* ----------------------------------------------------------------------------
 * Nodes: attributes and inputs */

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

/* Input k of nd as a value index, -1 after refusing. */
static int input(Imp *m, size_t k)
{
    const Onnx__NodeProto *nd = m->nd;
    if (k >= nd->n_input || !nd->input[k][0]) {
        refuse(m, "input %zu is missing", k);
        return -1;
    }
    int i = find(m, nd->input[k]);
    if (i < 0) {
        refuse(m, "input \"%s\" is neither a graph input, an initializer nor made by an "
               "earlier node", nd->input[k]);
        return -1;
    }
    return i;
}

/* Input k as an activation (the graph input or a node's output), with no
 * pending factor or mask unless allowed. */
static int act_input(Imp *m, size_t k, bool scaled_ok)
{
    int i = input(m, k);
    if (i < 0) return -1;
    const Val *v = &m->v[i];
    if (v->kind != V_ACT && v->kind != V_INPUT) {
        refuse(m, "input %zu (\"%s\") is a %s where strata needs an activation", k, v->name,
               v->kind == V_PARAM ? "parameter" : "constant");
        return -1;
    }
    if (!scaled_ok && (v->scale != 1 || v->causal)) {
        refuse(m, "it reads \"%s\" %s, which strata folds only into a softmax", v->name,
               v->causal ? "with an attention mask added" : "multiplied by a constant");
        return -1;
    }
    return i;
}

/* Axis attribute or input into 0..rank-1. */
static int axis_of(Imp *m, int64_t a, int rank, int *out)
{
    if (a < -rank || a >= rank) return refuse(m, "axis %lld of a %d-D value", (long long)a, rank);
    *out = (int)(a < 0 ? a + rank : a);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Ops: records first, letters at the end */

static Opr *op_new(Imp *m, const char *name, const char *kind)
{
    m->op = grow(m->op, m->nop, &m->cop, sizeof *m->op);
    Opr *o = &m->op[m->nop++];
    memset(o, 0, sizeof *o);
    o->name = xstrdup(name);
    o->kind = kind;
    o->out = -1;
    o->block = -1;
    o->attrs = cJSON_CreateObject();
    return o;
}

static void op_in(Imp *m, Opr *o, int val)
{
    o->in[o->nin++] = m->v[val].tensor;
    m->t[m->v[val].tensor].consumers++;
}

static void op_out(Imp *m, Opr *o, int val)
{
    o->out = m->v[val].tensor;
    m->t[o->out].producer = (int)(o - m->op);
}

static void op_force(Opr *o, const Seq *s, char letter)
{
    for (int i = 0; i < s->n && o->nforce < 16; i++) {
        o->force[o->nforce].atom = s->a[i];
        o->force[o->nforce++].letter = letter;
    }
}

/* Does one operand of o hold both classes? (Joining them would make a
 * diagonal.) */
static bool clash(Imp *m, const Opr *o, int ra, int rb)
{
    for (int k = 0; k < o->nin; k++) {
        int lv[MAXD * 4], n = seq_leaves(m, &m->t[o->in[k]].at, lv, MAXD * 4);
        bool a = false, b = false;
        for (int i = 0; i < n; i++) a |= lv[i] == ra, b |= lv[i] == rb;
        if (a && b) return true;
    }
    return false;
}

/* Leaves of size 1 index nothing: they pair with no other. */
static int drop_ones(Imp *m, int *lv, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (m->at[lv[i]].size > 1) lv[k++] = lv[i];
    return k;
}

/* Dims a (of any operand) and b (of operand kb) of op o index the same
 * range: their leaves are aligned (splitting where sizes differ) and joined,
 * or, where joining would fold two dims of one operand, operand kb sees b's
 * classes as a's in this op only. */
static int pair(Imp *m, Opr *o, const Seq *a, const Seq *b, int kb)
{
    if (seq_size(m, a) != seq_size(m, b))
        return refuse(m, "dims of %lld and %lld meet", (long long)seq_size(m, a),
                      (long long)seq_size(m, b));
    int la[MAXD * 4], lb[MAXD * 4], na, nb;
    for (;;) {
        na = seq_leaves(m, a, la, MAXD * 4);
        nb = seq_leaves(m, b, lb, MAXD * 4);
        if (na < 0 || nb < 0) return refuse(m, "a dim made of too many parts");
        na = drop_ones(m, la, na);
        nb = drop_ones(m, lb, nb);
        bool again = false;
        for (int i = 0; i < na && i < nb && !again; i++) {
            int64_t sa = m->at[la[i]].size, sb = m->at[lb[i]].size;
            if (sa == sb) continue;
            int big = sa > sb ? la[i] : lb[i];
            int64_t small = sa > sb ? sb : sa;
            if (m->at[big].size % small)
                return refuse(m, "dims of %lld and %lld cannot be aligned (a layout strata "
                              "cannot name with letters)", (long long)sa, (long long)sb);
            atom_split(m, big, small, 0, 0);
            again = true;
        }
        if (!again) break;
    }
    for (int i = 0; i < na; i++) {
        int ra = root(m, la[i]), rb = root(m, lb[i]);
        if (ra == rb) continue;
        if (clash(m, o, ra, rb)) {
            if (o->nren == 8) return refuse(m, "too many dims renamed in one op");
            o->ren[o->nren].k = kb;
            o->ren[o->nren].from = rb;
            o->ren[o->nren++].to = ra;
        } else if (ra < rb) {
            m->at[rb].parent = ra;
        } else {
            m->at[ra].parent = rb;
        }
    }
    return 0;
}

/* Pairs the dims of b (operand kb) with a's, aligned from the right as ONNX
 * broadcasts; a dim of size 1 (no atoms) pairs with anything. */
static int pair_broadcast(Imp *m, Opr *o, const Val *a, const Val *b, int kb)
{
    for (int i = 1; i <= a->rank && i <= b->rank; i++) {
        const Seq *x = &a->dim[a->rank - i], *y = &b->dim[b->rank - i];
        if (!x->n || !y->n) continue;
        if (pair(m, o, x, y, kb)) return -1;
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Operators */

static int do_conv(Imp *m)
{
    const Onnx__NodeProto *nd = m->nd;
    int x = act_input(m, 0, false), w = x >= 0 ? input(m, 1) : -1;
    if (w < 0) return -1;
    if (m->v[x].rank != 4) return refuse(m, "its input is not a 4-D image (n, c, h, w)");
    if (m->v[w].kind != V_PARAM || m->v[w].rank != 4)
        return refuse(m, "its weight is not a 4-D initializer (o, c, r, s)");
    if (attr_int(nd, "group", 1) != 1)
        return refuse(m, "group %lld: strata's conv2d has no groups",
                      (long long)attr_int(nd, "group", 1));
    int64_t stride = 1, pad = 0, dil = 1;
    if (!attr_same(nd, "strides", &stride) || !attr_same(nd, "pads", &pad) ||
        !attr_same(nd, "dilations", &dil) || dil != 1)
        return refuse(m, "strides, pads and dilations must be equal in every direction, and "
                      "dilation 1 (strata's conv2d takes one stride and one pad)");
    if (stride < 1 || stride > 1 << 20 || pad < 0 || pad > 1 << 20)
        return refuse(m, "a stride or pad out of range");
    const Onnx__AttributeProto *ap = attr(nd, "auto_pad");
    if (ap && ap->has_s && ap->s.len && strncmp((const char *)ap->s.data, "NOTSET", ap->s.len))
        return refuse(m, "auto_pad: write the pads out");
    if (param_use(m, w, "ocrs")) return -1;
    Val *X = &m->v[x], *W = &m->v[w];
    if (W->shape[2] != W->shape[3])
        return refuse(m, "a %lldx%lld kernel (strata's are square)", (long long)W->shape[2],
                      (long long)W->shape[3]);
    if (W->shape[1] != X->shape[1])
        return refuse(m, "the weight takes %lld channels, the input has %lld",
                      (long long)W->shape[1], (long long)X->shape[1]);
    int64_t r = W->shape[2];
    int64_t oh = (X->shape[2] + 2 * pad - r) / stride + 1, ow = (X->shape[3] + 2 * pad - r) / stride + 1;
    if (oh < 1 || ow < 1 || X->shape[2] < 2 || X->shape[3] < 2)
        return refuse(m, "an image of %lldx%lld (strata's conv2d needs at least 2x2 in and 1x1 "
                      "out)", (long long)X->shape[2], (long long)X->shape[3]);
    int64_t total = X->shape[0];
    if (!mul_bounded(&total, W->shape[0]) || !mul_bounded(&total, oh) || !mul_bounded(&total, ow))
        return refuse(m, "an output of more than 2^50 elements");
    bool bias = nd->n_input > 2 && nd->input[2][0];
    Opr *o = op_new(m, "", "conv2d");
    op_in(m, o, x);
    op_in(m, o, w);
    X = &m->v[x], W = &m->v[w];
    if (pair(m, o, &X->dim[1], &W->dim[1], 1)) return -1;
    X = &m->v[x], W = &m->v[w];
    Seq d[4] = { X->dim[0], W->dim[0], seq_one(atom_new(m, oh, 'h')), seq_one(atom_new(m, ow, 'w')) };
    X = &m->v[x], W = &m->v[w];
    op_force(o, &X->dim[0], 'n'), op_force(o, &X->dim[1], 'c');
    op_force(o, &X->dim[2], 'h'), op_force(o, &X->dim[3], 'w');
    op_force(o, &W->dim[0], 'o'), op_force(o, &W->dim[2], 'r'), op_force(o, &W->dim[3], 's');
    op_force(o, &d[2], 'h'), op_force(o, &d[3], 'w');
    int y = act_new(m, nd->output[0], bias ? ".conv" : "", 4, d, X->dtype);
    o = &m->op[m->nop - 1];
    free(o->name);
    o->name = xstrdup(m->v[y].name);
    op_out(m, o, y);
    cJSON_AddNumberToObject(o->attrs, "stride", (double)stride);
    cJSON_AddNumberToObject(o->attrs, "pad", (double)pad);
    if (!bias) return 0;
    int b = input(m, 2);
    if (b < 0) return -1;
    if (m->v[b].kind != V_PARAM || m->v[b].rank != 1 || m->v[b].shape[0] != m->v[y].shape[1])
        return refuse(m, "its bias is not a 1-D initializer of %lld", (long long)m->v[y].shape[1]);
    if (param_use(m, b, "c")) return -1;
    o = op_new(m, nd->output[0], "bias");
    op_in(m, o, y);
    op_in(m, o, b);
    if (pair(m, o, &m->v[y].dim[1], &m->v[b].dim[0], 1)) return -1;
    int z = act_new(m, nd->output[0], "", 4, m->v[y].dim, m->v[y].dtype);
    op_out(m, &m->op[m->nop - 1], z);
    return 0;
}

/* Forces n,c,h,w on the dims of an image value (the CNN kinds name them so). */
static void force_image(Opr *o, const Val *v)
{
    static const char l[] = "nchw";
    for (int d = 0; d < v->rank && d < 4; d++) op_force(o, &v->dim[d], v->rank == 4 ? l[d] : "nc"[d]);
}

static int do_batchnorm(Imp *m)
{
    int x = act_input(m, 0, false), g = x >= 0 ? input(m, 1) : -1, b = g >= 0 ? input(m, 2) : -1;
    if (b < 0) return -1;
    if (m->v[x].rank != 4 && m->v[x].rank != 2) return refuse(m, "its input is neither 4-D nor 2-D");
    if (m->v[g].kind != V_PARAM || m->v[b].kind != V_PARAM || m->v[g].rank != 1 ||
        m->v[b].rank != 1)
        return refuse(m, "its scale and bias are not 1-D initializers");
    if (param_use(m, g, "c") || param_use(m, b, "c")) return -1;
    Opr *o = op_new(m, m->nd->output[0], "batchnorm");
    op_in(m, o, x), op_in(m, o, g), op_in(m, o, b);
    if (pair(m, o, &m->v[x].dim[1], &m->v[g].dim[0], 1) ||
        pair(m, o, &m->v[x].dim[1], &m->v[b].dim[0], 2))
        return -1;
    const Val *X = &m->v[x];
    force_image(o, X);
    o->attr_key = "reduce";
    seq_cat(&o->letter_attr, &X->dim[0]);
    if (X->rank == 4) seq_cat(&o->letter_attr, &X->dim[2]), seq_cat(&o->letter_attr, &X->dim[3]);
    int y = act_new(m, m->nd->output[0], "", X->rank, X->dim, X->dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

/* An elementwise op of one activation: relu, gelu. */
static int emit_unary(Imp *m, int x, const char *kind, const char *out)
{
    if (m->v[x].rank < 1) return refuse(m, "a scalar input");
    Opr *o = op_new(m, out, kind);
    op_in(m, o, x);
    int y = act_new(m, out, "", m->v[x].rank, m->v[x].dim, m->v[x].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

static int do_unary(Imp *m, const char *kind)
{
    int x = act_input(m, 0, false);
    if (x < 0) return -1;
    if (!strcmp(str(m->nd->op_type), "Gelu")) {
        const Onnx__AttributeProto *a = attr(m->nd, "approximate");
        if (a && a->has_s && a->s.len && strncmp((const char *)a->s.data, "none", a->s.len) &&
            strncmp((const char *)a->s.data, "tanh", a->s.len))
            return refuse(m, "approximate must be none or tanh");
    }
    return emit_unary(m, x, kind, m->nd->output[0]);
}

static int do_pool(Imp *m, bool avg, bool global)
{
    const Onnx__NodeProto *nd = m->nd;
    int x = act_input(m, 0, false);
    if (x < 0) return -1;
    const Val *X = &m->v[x];
    if (X->rank != 4) return refuse(m, "its input is not a 4-D image");
    int64_t k = X->shape[2], stride = 1, pad = 0;
    if (!global) {
        const Onnx__AttributeProto *ks = attr(nd, "kernel_shape");
        if (!ks || ks->n_ints != 2 || ks->ints[0] != ks->ints[1])
            return refuse(m, "a non-square or missing kernel_shape (strata's windows are square)");
        k = ks->ints[0];
        if (!attr_same(nd, "strides", &stride) || !attr_same(nd, "pads", &pad))
            return refuse(m, "strides and pads must be equal in every direction");
        if (attr_int(nd, "ceil_mode", 0)) return refuse(m, "ceil_mode 1: strata's pooling rounds down");
        if (avg && pad && !attr_int(nd, "count_include_pad", 0))
            return refuse(m, "padding left out of the average (count_include_pad 0)");
        if (k < 1 || k > 1 << 20 || stride < 1 || stride > 1 << 20 || pad < 0 || pad > 1 << 20)
            return refuse(m, "a window, stride or pad out of range");
    }
    if (avg && pad == 0 && X->shape[2] == k && X->shape[3] == k) {
        /* the whole image: global average pooling, the 1x1 dims kept as no atoms */
        Seq d[4] = { X->dim[0], X->dim[1], { 0 }, { 0 } };
        Opr *o = op_new(m, nd->output[0], "mean");
        op_in(m, o, x);
        force_image(o, X);
        int y = act_new(m, nd->output[0], "", 4, d, X->dtype);
        op_out(m, &m->op[m->nop - 1], y);
        return 0;
    }
    if (global) return refuse(m, "global max pooling (strata's mean averages)");
    int64_t oh = (X->shape[2] + 2 * pad - k) / stride + 1, ow = (X->shape[3] + 2 * pad - k) / stride + 1;
    if (oh < 1 || ow < 1) return refuse(m, "a window larger than the image");
    Opr *o = op_new(m, nd->output[0], "pool2d");
    op_in(m, o, x);
    X = &m->v[x];
    Seq d[4] = { X->dim[0], X->dim[1], seq_one(atom_new(m, oh, 'h')), seq_one(atom_new(m, ow, 'w')) };
    o = &m->op[m->nop - 1];
    force_image(o, &m->v[x]);
    op_force(o, &d[2], 'h'), op_force(o, &d[3], 'w');
    int y = act_new(m, nd->output[0], "", 4, d, m->v[x].dtype);
    o = &m->op[m->nop - 1];
    op_out(m, o, y);
    cJSON_AddNumberToObject(o->attrs, "window", (double)k);
    cJSON_AddNumberToObject(o->attrs, "stride", (double)stride);
    cJSON_AddNumberToObject(o->attrs, "pad", (double)pad);
    cJSON_AddStringToObject(o->attrs, "mode", avg ? "avg" : "max");
    return 0;
}

/* How a mask marks the positions attention may see (t <= s). */
typedef enum { MASK_ADD, MASK_KEEP, MASK_DROP } MaskForm;

/* Is constant c a causal mask for a [.., s, t] value, in every slice?
 * MASK_ADD: 0 where seen, very negative elsewhere (added to the scores);
 * MASK_KEEP: true where seen; MASK_DROP: true where hidden (a Where's
 * condition). */
static bool causal_mask(Imp *m, int c, const Val *x, MaskForm form)
{
    const Onnx__TensorProto *t = const_of(m, c);
    if (!t || x->rank < 2 || t->n_dims < 2) return false;
    int64_t s = t->dims[t->n_dims - 2], tt = t->dims[t->n_dims - 1];
    if (s != x->shape[x->rank - 2] || tt != x->shape[x->rank - 1] || s != tt) return false;
    size_t n = tp_numel(t);
    for (size_t i = 0; i < n; i++) {
        double v;
        if (!tp_value(t, i, &v)) return false;
        int64_t col = (int64_t)(i % (size_t)tt), row = (int64_t)(i / (size_t)tt % (size_t)s);
        bool keep = col <= row;
        bool ok = form == MASK_KEEP ? (v != 0) == keep : form == MASK_DROP ? (v != 0) != keep
                : keep ? v == 0 : v <= -1e4;
        if (!ok) return false;
    }
    return true;
}

/* Values all 0 or very negative, some of them negative: an attention mask
 * (an initializer a bias would not be). */
static bool looks_like_mask(Imp *m, int c)
{
    const Onnx__TensorProto *t = const_of(m, c);
    if (!t || t->n_dims < 2) return false;
    bool neg = false;
    for (size_t i = 0, n = tp_numel(t); i < n; i++) {
        double v;
        if (!tp_value(t, i, &v) || (v != 0 && !(v <= -1e4))) return false;
        neg |= v != 0;
    }
    return neg;
}

/* A bias: activation x plus parameter b broadcast over it. */
static int emit_bias(Imp *m, int x, int b, const char *out)
{
    if (param_use(m, b, NULL)) return -1;
    if (m->v[b].rank > m->v[x].rank)
        return refuse(m, "it adds a parameter of more dims than the activation");
    Opr *o = op_new(m, out, "bias");
    op_in(m, o, x), op_in(m, o, b);
    if (pair_broadcast(m, o, &m->v[x], &m->v[b], 1)) return -1;
    int y = act_new(m, out, "", m->v[x].rank, m->v[x].dim, m->v[x].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

static bool same_shape(const Val *a, const Val *b)
{
    if (a->rank != b->rank) return false;
    for (int d = 0; d < a->rank; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

/* An n-ary ONNX op as a chain of strata ops of at most 4 inputs: the
 * group at k reads the result so far (acc) and up to 3 more inputs. The op
 * is named after the node's output, with a tag and k unless it is the last;
 * *take says how many inputs it read, suffix its output's suffix. */
static Opr *chain_op(Imp *m, const char *kind, const char *tag, int acc, const int *in, int n,
                     int k, int *take, char suffix[24])
{
    *take = n - k < 3 ? n - k : 3;
    suffix[0] = 0;
    if (k + *take < n) snprintf(suffix, 24, ".%s%d", tag, k);
    char name[700];
    snprintf(name, sizeof name, "%s%s", m->nd->output[0], suffix);
    Opr *o = op_new(m, name, kind);
    op_in(m, o, acc);
    for (int t = 0; t < *take; t++) op_in(m, o, in[k + t]);
    return o;
}

/* Add, Sub, Sum: activations summed (add), an activation and a parameter
 * (bias), an activation and a causal mask (folded into the softmax). A
 * subtraction plans as an addition: the cost is the same, and strata trains
 * with values it initialises itself. */
static int do_add(Imp *m)
{
    const Onnx__NodeProto *nd = m->nd;
    int in[32], n = 0, params = 0, consts = 0;
    if (nd->n_input < 2 || nd->n_input > 32) return refuse(m, "%zu inputs", nd->n_input);
    for (size_t k = 0; k < nd->n_input; k++) {
        if ((in[n] = input(m, k)) < 0) return -1;
        params += m->v[in[n]].kind == V_PARAM;
        consts += m->v[in[n]].kind == V_CONST;
        n++;
    }
    if (n == 2 && params + consts == 1) {
        int p = m->v[in[0]].kind == V_PARAM || m->v[in[0]].kind == V_CONST ? 0 : 1;
        int x = in[1 - p], b = in[p];
        if (m->v[x].kind != V_ACT && m->v[x].kind != V_INPUT) return refuse(m, "no activation read");
        if (causal_mask(m, b, &m->v[x], MASK_ADD)) {
            m->v[val_view(m, nd->output[0], x)].causal = true;
            return 0;
        }
        if (m->v[b].kind == V_CONST || looks_like_mask(m, b) ||
            (m->v[b].kind == V_PARAM && const_of(m, b) && tp_numel(const_of(m, b)) == 1))
            return refuse(m, "it adds a constant that is no causal attention mask (strata has "
                          "no op for it)");
        if (m->v[x].scale != 1 || m->v[x].causal)
            return refuse(m, "it adds a bias to a value scaled or masked for a softmax");
        return emit_bias(m, x, b, nd->output[0]);
    }
    if (params || consts) return refuse(m, "it adds parameters or constants to each other");
    for (int k = 0; k < n; k++) {
        const Val *v = &m->v[in[k]];
        if (v->scale != 1 || v->causal) return refuse(m, "an input is scaled or masked");
        if (!same_shape(&m->v[in[0]], v))
            return refuse(m, "its inputs differ in shape (broadcasting between activations "
                          "has no letters in strata)");
    }
    int acc = in[0];
    for (int k = 1, take; k < n; k += take) {
        char suffix[24];
        Opr *o = chain_op(m, "add", "sum", acc, in, n, k, &take, suffix);
        for (int t = 0; t < take; t++)
            for (int d = 0; d < m->v[acc].rank; d++)
                if (pair(m, o, &m->v[acc].dim[d], &m->v[in[k + t]].dim[d], 1 + t)) return -1;
        int y = act_new(m, nd->output[0], suffix, m->v[acc].rank, m->v[acc].dim, m->v[acc].dtype);
        op_out(m, &m->op[m->nop - 1], y);
        acc = y;
    }
    return 0;
}

/* A contraction of activations and parameters: out's dims are given; every
 * operand's dims are paired with out's (right-aligned) or each other's by
 * the caller. */
static int do_mul(Imp *m, bool div)
{
    const Onnx__NodeProto *nd = m->nd;
    int a = input(m, 0), b = a >= 0 ? input(m, 1) : -1;
    if (b < 0) return -1;
    double c;
    bool act_a = m->v[a].kind == V_ACT || m->v[a].kind == V_INPUT;
    bool act_b = m->v[b].kind == V_ACT || m->v[b].kind == V_INPUT;
    if (act_a && !act_b && const_scalar(m, b, &c)) {
        if (c == 0) return refuse(m, "a multiplication by zero");
        int y = val_view(m, nd->output[0], a);
        m->v[y].scale *= div ? 1 / c : c;
        return 0;
    }
    if (!act_a && act_b && !div && const_scalar(m, a, &c)) {
        int y = val_view(m, nd->output[0], b);
        m->v[y].scale *= c;
        return 0;
    }
    if (!act_a && !act_b) return refuse(m, "it multiplies constants or parameters");
    if (div && !act_a) return refuse(m, "it divides by an activation (strata has no op for it)");
    if (div && act_b) return refuse(m, "it divides activations (strata has no op for it)");
    /* an elementwise product: a matmul that sums over no letter; a division by
     * a parameter plans as a product by one */
    int x = act_a ? a : b, p = act_a ? b : a;
    if (m->v[x].scale != 1 || m->v[x].causal || m->v[p].scale != 1 || m->v[p].causal)
        return refuse(m, "an input is scaled or masked");
    if (m->v[p].kind == V_CONST) return refuse(m, "it multiplies by a constant tensor");
    if (m->v[p].kind == V_PARAM && param_use(m, p, NULL)) return -1;
    const Val *X = &m->v[x], *P = &m->v[p];
    if (P->rank > X->rank) return refuse(m, "its second operand has more dims than the first");
    for (int i = 1; i <= P->rank; i++)
        if (P->shape[P->rank - i] != 1 && P->shape[P->rank - i] != X->shape[X->rank - i])
            return refuse(m, "its operands broadcast both ways (strata's product keeps the "
                          "first operand's shape)");
    Opr *o = op_new(m, nd->output[0], "matmul");
    op_in(m, o, x), op_in(m, o, p);
    if (pair_broadcast(m, o, &m->v[x], &m->v[p], 1)) return -1;
    int y = act_new(m, nd->output[0], "", m->v[x].rank, m->v[x].dim, m->v[x].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

/* Fresh atoms with the leaf sizes of s (a dim an op needs twice). */
static Seq seq_copy_fresh(Imp *m, const Seq *s, char hint)
{
    int lv[MAXD * 4], n = seq_leaves(m, s, lv, MAXD * 4);
    Seq out = { 0 };
    for (int i = 0; i < n && out.n < MAXD; i++)
        out.a[out.n++] = atom_new(m, m->at[lv[i]].size, i ? 0 : hint);
    return out;
}

static bool seq_has(Imp *m, const Seq *s, int r)
{
    int lv[MAXD * 4], n = seq_leaves(m, s, lv, MAXD * 4);
    for (int i = 0; i < n; i++)
        if (lv[i] == r) return true;
    return false;
}

/* MatMul (numpy semantics) and Gemm: a matmul, plus a bias for Gemm's C. */
static int do_dense(Imp *m, bool gemm)
{
    const Onnx__NodeProto *nd = m->nd;
    int a = input(m, 0), b = a >= 0 ? input(m, 1) : -1;
    if (b < 0) return -1;
    for (int k = 0; k < 2; k++) {
        int i = k ? b : a;
        if (m->v[i].kind == V_CONST) return refuse(m, "operand %d is a constant", k);
        if (m->v[i].kind == V_PARAM && param_use(m, i, NULL)) return -1;
        if (m->v[i].causal) return refuse(m, "operand %d carries an attention mask", k);
    }
    Val A = m->v[a], B = m->v[b];
    if (A.rank < 2 || B.rank < 2) return refuse(m, "a product with a vector (strata's operands have 2 dims or more here)");
    if (gemm) {
        if (A.rank != 2 || B.rank != 2) return refuse(m, "Gemm of operands that are not 2-D");
        if (attr_int(nd, "transA", 0)) { Seq t = A.dim[0]; A.dim[0] = A.dim[1]; A.dim[1] = t; }
        if (attr_int(nd, "transB", 0)) { Seq t = B.dim[0]; B.dim[0] = B.dim[1]; B.dim[1] = t; }
    }
    Opr *o = op_new(m, "", "matmul");
    op_in(m, o, a), op_in(m, o, b);
    if (pair(m, o, &A.dim[A.rank - 1], &B.dim[B.rank - 2], 1)) return -1;
    /* batch dims, broadcast from the right */
    int nb = (A.rank > B.rank ? A.rank : B.rank) - 2;
    Seq d[MAXD];
    for (int i = 0; i < nb; i++) {
        int ia = A.rank - 2 - nb + i, ib = B.rank - 2 - nb + i;
        const Seq *x = ia >= 0 ? &A.dim[ia] : NULL, *y = ib >= 0 ? &B.dim[ib] : NULL;
        if (x && y && x->n && y->n && pair(m, &m->op[m->nop - 1], x, y, 1)) return -1;
        d[i] = x && x->n ? *x : y ? *y : (Seq){ 0 };
    }
    d[nb] = A.dim[A.rank - 2];
    d[nb + 1] = B.dim[B.rank - 1];
    /* a column dim of the same class as a row or batch dim (attention's
     * positions): B's sees a copy in this op */
    o = &m->op[m->nop - 1];
    Seq rows = { 0 };
    for (int i = 0; i <= nb; i++) seq_cat(&rows, &d[i]);
    int lv[MAXD * 4], n = seq_leaves(m, &d[nb + 1], lv, MAXD * 4);
    bool dup = false;
    for (int i = 0; i < n; i++) dup |= seq_has(m, &rows, lv[i]);
    if (dup) {
        Seq f = seq_copy_fresh(m, &d[nb + 1], 't');
        for (int i = 0; i < n && o->nren < 8; i++) {
            o->ren[o->nren].k = 1;
            o->ren[o->nren].from = lv[i];
            o->ren[o->nren++].to = f.a[i];
        }
        d[nb + 1] = f;
    }
    int64_t total = 1;
    for (int i = 0; i < nb + 2; i++)
        if (!mul_bounded(&total, seq_size(m, &d[i])))
            return refuse(m, "a product of more than 2^50 elements");
    bool bias = gemm && nd->n_input > 2 && nd->input[2][0];
    int y = act_new(m, nd->output[0], bias ? ".matmul" : "", nb + 2, d, m->v[a].dtype);
    o = &m->op[m->nop - 1];
    free(o->name);
    o->name = xstrdup(m->v[y].name);
    op_out(m, o, y);
    double alpha = gemm ? attr_float(nd, "alpha", 1) : 1;
    m->v[y].scale = m->v[a].scale * m->v[b].scale * alpha;
    if (!bias) return 0;
    int c = input(m, 2);
    if (c < 0) return -1;
    if (m->v[c].kind != V_PARAM) return refuse(m, "its C is not a parameter");
    if (m->v[y].scale != 1) return refuse(m, "alpha other than 1 with a bias");
    return emit_bias(m, y, c, nd->output[0]);
}

/* LayerNormalization over dims axis.. with optional scale and bias. */
static int emit_layernorm(Imp *m, int x, int g, int b, int axis, const char *out)
{
    if (g >= 0 && (m->v[g].kind != V_PARAM || param_use(m, g, NULL)))
        return refuse(m, "its scale is not a parameter");
    if (b >= 0 && (m->v[b].kind != V_PARAM || param_use(m, b, NULL)))
        return refuse(m, "its bias is not a parameter");
    Opr *o = op_new(m, out, "layernorm");
    op_in(m, o, x);
    if (g >= 0) op_in(m, o, g);
    if (b >= 0 && g < 0) return refuse(m, "a bias without a scale");
    if (b >= 0) op_in(m, o, b);
    for (int k = 1; k < o->nin; k++) {
        const Val *p = &m->v[k == 1 ? g : b];
        if (p->rank > m->v[x].rank - axis) return refuse(m, "its scale or bias has more dims than are normalised");
        if (pair_broadcast(m, &m->op[m->nop - 1], &m->v[x], p, k)) return -1;
    }
    o = &m->op[m->nop - 1];
    o->attr_key = "reduce";
    for (int d = axis; d < m->v[x].rank; d++) seq_cat(&o->letter_attr, &m->v[x].dim[d]);
    if (!o->letter_attr.n) return refuse(m, "it normalises over dims of size 1");
    int y = act_new(m, out, "", m->v[x].rank, m->v[x].dim, m->v[x].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

static int do_layernorm(Imp *m)
{
    int x = act_input(m, 0, false);
    if (x < 0) return -1;
    int g = m->nd->n_input > 1 && m->nd->input[1][0] ? input(m, 1) : -2;
    int b = g >= 0 && m->nd->n_input > 2 && m->nd->input[2][0] ? input(m, 2) : -2;
    if (g == -1 || b == -1) return -1;
    int axis = 0;
    if (axis_of(m, attr_int(m->nd, "axis", -1), m->v[x].rank, &axis)) return -1;
    if (m->nd->n_output > 1 && ((m->nd->n_output > 1 && m->nd->output[1][0]) ||
                                (m->nd->n_output > 2 && m->nd->output[2][0])))
        return refuse(m, "its mean and inverse deviation outputs are read (strata keeps them inside)");
    return emit_layernorm(m, x, g < 0 ? -1 : g, b < 0 ? -1 : b, axis, m->nd->output[0]);
}

static int do_softmax(Imp *m, bool graph_out)
{
    const Onnx__NodeProto *nd = m->nd;
    int x = act_input(m, 0, true);
    if (x < 0) return -1;
    const Val *X = &m->v[x];
    int axis = 0;
    if (X->rank < 1) return refuse(m, "a scalar input");
    if (axis_of(m, attr_int(nd, "axis", -1), X->rank, &axis)) return -1;
    if (graph_out && axis == X->rank - 1 && X->scale == 1 && !X->causal) {
        /* the output's softmax: the loss takes the logits */
        val_view(m, nd->output[0], x);
        return 0;
    }
    if (!strcmp(str(nd->op_type), "LogSoftmax"))
        return refuse(m, "a log-softmax that is not the graph's output");
    if (X->causal && axis != X->rank - 1) return refuse(m, "a masked softmax over a dim not the last");
    if (X->dim[axis].n != 1) return refuse(m, "a softmax over a dim of size 1 or of merged dims");
    Opr *o = op_new(m, nd->output[0], "softmax");
    op_in(m, o, x);
    o->attr_key = "reduce";
    o->letter_attr = m->v[x].dim[axis];
    if (m->v[x].causal) cJSON_AddBoolToObject(o->attrs, "causal", true);
    if (m->v[x].scale != 1) cJSON_AddNumberToObject(o->attrs, "scale", m->v[x].scale);
    int y = act_new(m, nd->output[0], "", m->v[x].rank, m->v[x].dim, m->v[x].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

/* Where(mask, scores, -inf) or Where(not mask, -inf, scores): a causal mask. */
static int do_where(Imp *m)
{
    int c = input(m, 0), a = c >= 0 ? input(m, 1) : -1, b = a >= 0 ? input(m, 2) : -1;
    if (b < 0) return -1;
    bool a_act = m->v[a].kind == V_ACT, b_act = m->v[b].kind == V_ACT;
    int x = a_act ? a : b, fill = a_act ? b : a;
    double f;
    if (a_act == b_act || !const_scalar(m, fill, &f) || !(f <= -1e4) ||
        !causal_mask(m, c, &m->v[x], a_act ? MASK_KEEP : MASK_DROP))
        return refuse(m, "only a causal attention mask (a constant lower-triangular condition "
                      "and a very negative fill) is imported");
    m->v[val_view(m, m->nd->output[0], x)].causal = true;
    return 0;
}

/* Regroups x's atoms into the dims of shape want (splitting atoms where a
 * boundary falls inside one). */
static int regroup(Imp *m, int x, const int64_t *want, int nw)
{
    const Onnx__NodeProto *nd = m->nd;
    const Val *X = &m->v[x];
    int64_t total = 1, got = 1;
    for (int d = 0; d < X->rank; d++) total *= X->shape[d];
    for (int d = 0; d < nw; d++)
        if (!mul_bounded(&got, want[d])) return refuse(m, "a new shape of more than 2^50 elements");
    if (got != total || nw > MAXD)
        return refuse(m, "a new shape of %lld elements for %lld", (long long)got, (long long)total);
    Seq all = { 0 };
    for (int d = 0; d < X->rank; d++) seq_cat(&all, &X->dim[d]);
    int lv[MAXD * 4], n = seq_leaves(m, &all, lv, MAXD * 4);
    if (n < 0) return refuse(m, "a value of too many parts");
    Seq out[MAXD];
    int pos = 0;
    bool heads = X->rank == 3 && nw == 4;
    for (int d = 0; d < nw; d++) {
        out[d].n = 0;
        int64_t need = want[d];
        while (need > 1) {
            if (pos >= n) return refuse(m, "a layout strata cannot name with letters");
            int64_t s = m->at[lv[pos]].size;
            if (s <= need) {
                if (need % s) return refuse(m, "a layout strata cannot name with letters (dims of %lld and %lld)",
                                            (long long)need, (long long)s);
                if (out[d].n == MAXD) return refuse(m, "a dim of too many parts");
                out[d].a[out[d].n++] = lv[pos++];
                need /= s;
            } else {
                if (s % need) return refuse(m, "a layout strata cannot name with letters (dims of %lld and %lld)",
                                            (long long)need, (long long)s);
                atom_split(m, lv[pos], need, heads ? 'n' : 0, heads ? 'd' : 0);
                n = seq_leaves(m, &all, lv, MAXD * 4);
                if (n < 0) return refuse(m, "a value of too many parts");
            }
        }
    }
    int y = val_view(m, nd->output[0], x);
    Val *Y = &m->v[y];
    Y->rank = nw;
    for (int d = 0; d < nw; d++) {
        Y->dim[d] = out[d];
        Y->shape[d] = want[d];
    }
    return 0;
}

/* The node's axes: an attribute (up to opset 12) or a constant input 1;
 * *na = -1 when it has none. */
static int node_axes(Imp *m, int64_t axes[MAXD], int *na)
{
    const Onnx__NodeProto *nd = m->nd;
    const Onnx__AttributeProto *aa = attr(nd, "axes");
    *na = -1;
    if (aa) {
        if (aa->n_ints > MAXD) return refuse(m, "%zu axes", aa->n_ints);
        *na = (int)aa->n_ints;
        for (int i = 0; i < *na; i++) axes[i] = aa->ints[i];
    } else if (nd->n_input > 1 && nd->input[1][0]) {
        int s = input(m, 1);
        if (s < 0) return -1;
        if ((*na = const_ints(m, s, axes, MAXD)) < 0) return refuse(m, "its axes are not a constant");
    }
    return 0;
}

/* Reshape, Flatten, Squeeze, Unsqueeze: the same data named anew. */
static int do_reshape(Imp *m)
{
    const Onnx__NodeProto *nd = m->nd;
    const char *t = str(nd->op_type);
    int x = input(m, 0);
    if (x < 0) return -1;
    const Val *X = &m->v[x];
    if (X->kind == V_CONST || (X->kind == V_PARAM && X->tensor < 0 && param_use(m, x, NULL)))
        return refuse(m, "it reshapes a constant");
    X = &m->v[x];
    int64_t want[MAXD + 1];
    int nw = 0;
    if (!strcmp(t, "Flatten")) {
        int axis = 0;
        if (axis_of(m, attr_int(nd, "axis", 1), X->rank + 1, &axis)) return -1;
        int64_t a = 1, b = 1;
        for (int d = 0; d < X->rank; d++) *(d < axis ? &a : &b) *= X->shape[d];
        want[0] = a, want[1] = b, nw = 2;
    } else if (!strcmp(t, "Squeeze") || !strcmp(t, "Unsqueeze")) {
        int64_t axes[MAXD];
        int na;
        if (node_axes(m, axes, &na)) return -1;
        bool sq = !strcmp(t, "Squeeze");
        int out_rank = sq ? X->rank - (na < 0 ? 0 : na) : X->rank + na;
        if (na < 0) {
            if (!sq) return refuse(m, "no axes");
            for (int d = 0; d < X->rank; d++) if (X->shape[d] != 1) want[nw++] = X->shape[d];
        } else {
            if (out_rank < 0 || out_rank > MAXD) return refuse(m, "a result of %d dims", out_rank);
            bool mark[MAXD + 1] = { false };
            for (int i = 0; i < na; i++) {
                int a = 0;
                if (axis_of(m, axes[i], sq ? X->rank : out_rank, &a)) return -1;
                if (sq && X->shape[a] != 1) return refuse(m, "it squeezes dim %d of size %lld", a,
                                                          (long long)X->shape[a]);
                mark[a] = true;
            }
            for (int d = 0, k = 0; d < (sq ? X->rank : out_rank); d++) {
                if (sq) { if (!mark[d]) want[nw++] = X->shape[d]; }
                else want[nw++] = mark[d] ? 1 : X->shape[k++];
            }
        }
    } else {
        int s = input(m, 1);
        if (s < 0) return -1;
        nw = const_ints(m, s, want, MAXD);
        if (nw < 0) return refuse(m, "its shape is not a constant of at most %d dims", MAXD);
        int64_t total = 1, known = 1;
        int minus = -1;
        for (int d = 0; d < X->rank; d++) total *= X->shape[d];
        for (int d = 0; d < nw; d++) {
            if (want[d] == 0 && !attr_int(nd, "allowzero", 0)) {
                if (d >= X->rank) return refuse(m, "a 0 in the shape past the input's dims");
                want[d] = X->shape[d];
            }
            if (d == 0 && want[0] == 1 && X->shape[0] != 1 && X->rank > 0)
                want[0] = X->shape[0];  /* exported at batch 1: the batch given */
            if (want[d] == -1) {
                if (minus >= 0) return refuse(m, "two -1s in the shape");
                minus = d;
            } else if (want[d] < 1) {
                return refuse(m, "a dim of %lld in the shape", (long long)want[d]);
            } else if (!mul_bounded(&known, want[d])) {
                return refuse(m, "a new shape of more than 2^50 elements");
            }
        }
        if (minus >= 0) {
            if (total % known) return refuse(m, "the shape does not divide the input");
            want[minus] = total / known;
        }
    }
    return regroup(m, x, want, nw);
}

static int do_transpose(Imp *m)
{
    int x = input(m, 0);
    if (x < 0) return -1;
    if (m->v[x].kind == V_CONST) return refuse(m, "it transposes a constant");
    if (m->v[x].kind == V_PARAM && param_use(m, x, NULL)) return -1;
    const Val *X = &m->v[x];
    const Onnx__AttributeProto *p = attr(m->nd, "perm");
    int perm[MAXD];
    bool seen[MAXD] = { false };
    for (int d = 0; d < X->rank; d++) perm[d] = X->rank - 1 - d;
    if (p) {
        if ((int)p->n_ints != X->rank) return refuse(m, "perm of %zu for %d dims", p->n_ints, X->rank);
        for (int d = 0; d < X->rank; d++) {
            if (p->ints[d] < 0 || p->ints[d] >= X->rank || seen[p->ints[d]])
                return refuse(m, "perm is not a permutation");
            seen[p->ints[d]] = true;
            perm[d] = (int)p->ints[d];
        }
    }
    Val old = *X;
    int y = val_view(m, m->nd->output[0], x);
    for (int d = 0; d < old.rank; d++) {
        m->v[y].dim[d] = old.dim[perm[d]];
        m->v[y].shape[d] = old.shape[perm[d]];
    }
    return 0;
}

/* Gather: an embedding (a parameter table, integer indices), or a whole
 * table read in order by constant indices (learned positions): the table. */
static int do_gather(Imp *m)
{
    const Onnx__NodeProto *nd = m->nd;
    int tab = input(m, 0), idx = tab >= 0 ? input(m, 1) : -1;
    if (idx < 0) return -1;
    if (m->v[tab].kind != V_PARAM || m->v[tab].rank != 2)
        return refuse(m, "it gathers from something other than a 2-D parameter table");
    if (attr_int(nd, "axis", 0) != 0) return refuse(m, "axis other than 0");
    const Val *I = &m->v[idx];
    if (I->kind == V_CONST || I->kind == V_PARAM) {
        const Onnx__TensorProto *t = const_of(m, idx);
        size_t n = t ? tp_numel(t) : 0;
        bool arange = t && is_int(t->data_type) && n == (size_t)m->v[tab].shape[0];
        for (size_t i = 0; arange && i < n; i++) {
            double v;
            arange = tp_value(t, i, &v) && v == (double)i;
        }
        if (!arange) return refuse(m, "constant indices other than every row in order");
        if (param_use(m, tab, "sh")) return -1;
        val_view(m, nd->output[0], tab);
        return 0;
    }
    if (!is_int(I->dtype)) return refuse(m, "its indices are not integers");
    if (param_use(m, tab, "vh")) return -1;
    I = &m->v[idx];
    const Val *T = &m->v[tab];
    if (!T->dim[0].n || !T->dim[1].n) return refuse(m, "a table of one row or one column");
    Seq d[MAXD];
    if (I->rank + 1 > MAXD) return refuse(m, "indices of too many dims");
    for (int i = 0; i < I->rank; i++) d[i] = I->dim[i];
    d[I->rank] = T->dim[1];
    int64_t total = 1;
    for (int i = 0; i <= I->rank; i++)
        if (!mul_bounded(&total, seq_size(m, &d[i])))
            return refuse(m, "an embedding of more than 2^50 elements");
    Opr *o = op_new(m, nd->output[0], "embedding");
    op_in(m, o, idx), op_in(m, o, tab);
    o->attr_key = "gather";
    o->letter_attr = m->v[tab].dim[0];
    int y = act_new(m, nd->output[0], "", I->rank + 1, d, m->v[tab].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

static int do_concat(Imp *m)
{
    const Onnx__NodeProto *nd = m->nd;
    int in[64], n = (int)nd->n_input;
    if (n < 1 || n > 64) return refuse(m, "%d inputs", n);
    for (int k = 0; k < n; k++)
        if ((in[k] = act_input(m, (size_t)k, false)) < 0) return -1;
    if (n == 1) {
        val_view(m, nd->output[0], in[0]);
        return 0;
    }
    int axis = 0;
    if (axis_of(m, attr_int(nd, "axis", 0), m->v[in[0]].rank, &axis)) return -1;
    for (int k = 1; k < n; k++)
        if (m->v[in[k]].rank != m->v[in[0]].rank) return refuse(m, "inputs of different ranks");
    int acc = in[0];
    for (int k = 1, take; k < n; k += take) {
        char suffix[24];
        chain_op(m, "concat", "cat", acc, in, n, k, &take, suffix);
        int64_t sum = 0;
        for (int t = 0; t <= take; t++) {
            const Val *v = &m->v[t ? in[k + t - 1] : acc];
            if (v->dim[axis].n != 1) return refuse(m, "input %d is 1 or several dims along the axis", t);
            sum += v->shape[axis];
            for (int d = 0; d < v->rank; d++) {
                if (d == axis || !t) continue;
                if (v->shape[d] != m->v[acc].shape[d]) return refuse(m, "inputs differ off the axis");
                if (v->dim[d].n && pair(m, &m->op[m->nop - 1], &m->v[acc].dim[d], &v->dim[d], t))
                    return -1;
            }
        }
        Seq d[MAXD];
        for (int i = 0; i < m->v[acc].rank; i++) d[i] = m->v[acc].dim[i];
        d[axis] = seq_one(atom_new(m, sum, m->at[root(m, m->v[acc].dim[axis].a[0])].hint));
        int y = act_new(m, nd->output[0], suffix, m->v[acc].rank, d, m->v[acc].dtype);
        op_out(m, &m->op[m->nop - 1], y);
        acc = y;
    }
    return 0;
}

/* ReduceMean outside a layer norm: a mean over the reduced dims. */
static int do_reduce_mean(Imp *m)
{
    const Onnx__NodeProto *nd = m->nd;
    int x = act_input(m, 0, false);
    if (x < 0) return -1;
    int64_t axes[MAXD];
    int na;
    if (node_axes(m, axes, &na)) return -1;
    const Val *X = &m->v[x];
    bool red[MAXD] = { false };
    for (int i = 0; i < na; i++) {
        int a = 0;
        if (axis_of(m, axes[i], X->rank, &a)) return -1;
        red[a] = true;
    }
    if (na < 0) for (int d = 0; d < X->rank; d++) red[d] = true;
    bool keep = attr_int(nd, "keepdims", 1);
    Seq d[MAXD];
    int r = 0;
    for (int i = 0; i < X->rank; i++) {
        if (red[i] && !keep) continue;
        d[r++] = red[i] ? (Seq){ 0 } : X->dim[i];
    }
    Opr *o = op_new(m, nd->output[0], "mean");
    op_in(m, o, x);
    if (X->rank == 4) force_image(o, X);
    int y = act_new(m, nd->output[0], "", r, d, m->v[x].dtype);
    op_out(m, &m->op[m->nop - 1], y);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Decomposed operators: the layer norm and the GELU exporters write out */

typedef struct {
    const Onnx__GraphProto *G;
    Slot *prod;                    /* output name -> node */
    int cap;
    int *uses;                     /* per node output 0: how many inputs read it */
} Nodes;

static int node_of(const Nodes *N, const char *name)
{
    if (!name || !name[0]) return -1;
    const Slot *sl = slot_of(N->prod, N->cap, name);
    return sl->key ? sl->val : -1;
}

static bool is_op(const Nodes *N, int i, const char *t)
{
    return i >= 0 && !strcmp(str(N->G->node[i]->op_type), t) && N->G->node[i]->n_output >= 1 &&
           N->G->node[i]->n_input >= 1;
}

/* The consumer of node i's output 0, when exactly one node reads it. */
static int only_user(const Nodes *N, int i)
{
    if (i < 0 || N->uses[i] != 1) return -1;
    const char *o = N->G->node[i]->output[0];
    for (size_t j = (size_t)i + 1; j < N->G->n_node; j++)
        for (size_t k = 0; k < N->G->node[j]->n_input; k++)
            if (!strcmp(str(N->G->node[j]->input[k]), o)) return (int)j;
    return -1;
}

/* Scalar value of a node input that is an initializer or a Constant. */
static bool in_scalar(Imp *m, const Onnx__NodeProto *nd, size_t k, double *x)
{
    if (k >= nd->n_input) return false;
    int i = find(m, nd->input[k]);
    return i >= 0 && const_scalar(m, i, x);
}

/* For a binary node with one scalar constant input of value near want: the
 * other input's index (0/1), else -1. */
static int other_of_const(Imp *m, const Onnx__NodeProto *nd, double want, double tol)
{
    if (nd->n_input != 2) return -1;
    for (int k = 0; k < 2; k++) {
        double x;
        if (in_scalar(m, nd, (size_t)k, &x) && fabs(x - want) <= tol * fabs(want)) return 1 - k;
    }
    return -1;
}

typedef struct {
    const char *kind;              /* "gelu", "layernorm" */
    const char *x, *g, *b, *out;
    int64_t axis;
} Fused;

/* The tail every GELU form shares, from t (erf or tanh of the inner): 
 * x * 0.5 * (1 + t), the two products in either order. Returns the last
 * node, marking the rest in skip. */
static int gelu_tail(Imp *m, const Nodes *N, int t, const char *x, bool *skip)
{
    int a = only_user(N, t);
    if (!is_op(N, a, "Add") || other_of_const(m, N->G->node[a], 1, 1e-6) < 0) return -1;
    int p = only_user(N, a);
    if (!is_op(N, p, "Mul") || N->G->node[p]->n_input != 2) return -1;
    const Onnx__NodeProto *P = N->G->node[p];
    const char *other = !strcmp(P->input[0], N->G->node[a]->output[0]) ? P->input[1] : P->input[0];
    int last;
    if (!strcmp(other, x)) {
        last = only_user(N, p);
        if (!is_op(N, last, "Mul") || other_of_const(m, N->G->node[last], 0.5, 1e-6) < 0) return -1;
        skip[p] = true;
    } else {
        int h = node_of(N, other);
        if (!is_op(N, h, "Mul") || N->uses[h] != 1) return -1;
        int k = other_of_const(m, N->G->node[h], 0.5, 1e-6);
        if (k < 0 || strcmp(N->G->node[h]->input[k], x)) return -1;
        skip[h] = true;
        last = p;
    }
    skip[t] = skip[a] = true;
    return last;
}

/* GELU as erf: x * 0.5 * (1 + erf(x / sqrt 2)) (or x * (1 / sqrt 2)). */
static int gelu_erf(Imp *m, const Nodes *N, int e, bool *skip, Fused *f)
{
    int d = node_of(N, N->G->node[e]->input[0]);
    if (d < 0 || N->uses[d] != 1) return -1;
    int k = is_op(N, d, "Div") ? other_of_const(m, N->G->node[d], sqrt(2), 1e-3)
          : is_op(N, d, "Mul") ? other_of_const(m, N->G->node[d], 1 / sqrt(2), 1e-3) : -1;
    if (k != 0) return -1;
    const char *x = N->G->node[d]->input[0];
    int last = gelu_tail(m, N, e, x, skip);
    if (last < 0) return -1;
    skip[d] = true;
    *f = (Fused){ .kind = "gelu", .x = x, .out = N->G->node[last]->output[0] };
    return last;
}

/* GELU as tanh: x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))). */
static int gelu_tanh(Imp *m, const Nodes *N, int t, bool *skip, Fused *f)
{
    int s = node_of(N, N->G->node[t]->input[0]);
    if (!is_op(N, s, "Mul") || N->uses[s] != 1) return -1;
    int k = other_of_const(m, N->G->node[s], sqrt(2 / M_PI), 1e-3);
    if (k < 0) return -1;
    int u = node_of(N, N->G->node[s]->input[k]);
    if (!is_op(N, u, "Add") || N->uses[u] != 1 || N->G->node[u]->n_input != 2) return -1;
    for (int side = 0; side < 2; side++) {
        const char *x = N->G->node[u]->input[side];
        int c = node_of(N, N->G->node[u]->input[1 - side]);
        if (!is_op(N, c, "Mul") || N->uses[c] != 1) continue;
        int kc = other_of_const(m, N->G->node[c], 0.044715, 1e-3);
        if (kc < 0) continue;
        int p = node_of(N, N->G->node[c]->input[kc]);
        double three;
        if (!is_op(N, p, "Pow") || N->uses[p] != 1 || strcmp(N->G->node[p]->input[0], x) ||
            !in_scalar(m, N->G->node[p], 1, &three) || three != 3)
            continue;
        int last = gelu_tail(m, N, t, x, skip);
        if (last < 0) return -1;
        skip[s] = skip[u] = skip[c] = skip[p] = true;
        *f = (Fused){ .kind = "gelu", .x = x, .out = N->G->node[last]->output[0] };
        return last;
    }
    return -1;
}

/* Axes of a ReduceMean node (attribute or constant input): true when they
 * are exactly the last `*n` dims, counted as negative or from rank. */
static bool reduce_axes(Imp *m, const Onnx__NodeProto *nd, int64_t *axis)
{
    int64_t ax[MAXD];
    int na = -1;
    const Onnx__AttributeProto *a = attr(nd, "axes");
    if (a && a->n_ints >= 1 && a->n_ints <= MAXD) {
        na = (int)a->n_ints;
        for (int i = 0; i < na; i++) ax[i] = a->ints[i];
    } else if (nd->n_input > 1) {
        int s = find(m, nd->input[1]);
        na = s >= 0 ? const_ints(m, s, ax, MAXD) : -1;
    }
    if (na != 1 || !attr_int(nd, "keepdims", 1)) return false;
    *axis = ax[0];
    return true;
}

/* Layer norm written out: d = x - mean(x); y = d / sqrt(mean(d^2) + eps),
 * then optionally * gamma + beta (parameters). */
static int layernorm_decomposed(Imp *m, const Nodes *N, int r1, bool *skip, Fused *f)
{
    const Onnx__NodeProto *R1 = N->G->node[r1];
    int64_t axis;
    if (!reduce_axes(m, R1, &axis) || axis >= 0) return -1;
    const char *x = R1->input[0];
    int s = only_user(N, r1);
    if (!is_op(N, s, "Sub") || N->G->node[s]->n_input != 2 || strcmp(N->G->node[s]->input[0], x) ||
        strcmp(N->G->node[s]->input[1], R1->output[0]) || N->uses[s] < 2)
        return -1;
    const char *d = N->G->node[s]->output[0];
    int pw = -1, dv = -1;
    for (size_t j = (size_t)s + 1; j < N->G->n_node; j++) {
        const Onnx__NodeProto *J = N->G->node[j];
        bool reads = false;
        for (size_t k = 0; k < J->n_input; k++) reads |= !strcmp(str(J->input[k]), d);
        if (!reads) continue;
        double two;
        if ((is_op(N, (int)j, "Pow") && in_scalar(m, J, 1, &two) && two == 2) ||
            (is_op(N, (int)j, "Mul") && J->n_input == 2 && !strcmp(J->input[0], d) &&
             !strcmp(J->input[1], d)))
            pw = (int)j;
        else if (is_op(N, (int)j, "Div") && J->n_input == 2 && !strcmp(J->input[0], d))
            dv = (int)j;
        else
            return -1;
    }
    if (pw < 0 || dv < 0) return -1;
    int r2 = only_user(N, pw), e = only_user(N, r2), q = only_user(N, e);
    int64_t axis2;
    double eps;
    if (!is_op(N, r2, "ReduceMean") || !reduce_axes(m, N->G->node[r2], &axis2) || axis2 != axis ||
        !is_op(N, e, "Add") || N->G->node[e]->n_input != 2 || !is_op(N, q, "Sqrt") ||
        only_user(N, q) != dv || strcmp(N->G->node[dv]->input[1], N->G->node[q]->output[0]))
        return -1;
    const Onnx__NodeProto *E = N->G->node[e];
    int ke = !strcmp(E->input[0], N->G->node[r2]->output[0]) ? 1 : 0;
    if (!in_scalar(m, E, (size_t)ke, &eps) || eps < 0 || eps > 1) return -1;
    int last = dv;
    const char *g = NULL, *b = NULL;
    int mu = only_user(N, dv);
    if (is_op(N, mu, "Mul") && N->G->node[mu]->n_input == 2) {
        const Onnx__NodeProto *M = N->G->node[mu];
        const char *p = !strcmp(M->input[0], N->G->node[dv]->output[0]) ? M->input[1] : M->input[0];
        int pv = find(m, p);
        if (pv >= 0 && m->v[pv].kind == V_PARAM && !const_scalar(m, pv, &eps)) {
            g = p;
            last = mu;
            int ad = only_user(N, mu);
            if (is_op(N, ad, "Add") && N->G->node[ad]->n_input == 2) {
                const Onnx__NodeProto *A = N->G->node[ad];
                const char *bb = !strcmp(A->input[0], M->output[0]) ? A->input[1] : A->input[0];
                int bv = find(m, bb);
                if (bv >= 0 && m->v[bv].kind == V_PARAM && !const_scalar(m, bv, &eps)) {
                    b = bb;
                    last = ad;
                    skip[mu] = true;
                }
            }
        }
    }
    skip[r1] = skip[s] = skip[pw] = skip[r2] = skip[e] = skip[q] = true;
    if (last != dv) skip[dv] = true;
    skip[last] = false;
    *f = (Fused){ .kind = "layernorm", .x = x, .g = g, .b = b,
                  .out = N->G->node[last]->output[0], .axis = axis };
    return last;
}

/* Finds the decomposed forms; fused[i] is set at each one's last node. */
static void find_fused(Imp *m, const Onnx__GraphProto *G, bool *skip, Fused *fused, bool *has)
{
    Nodes N = { .G = G };
    N.cap = 16;
    while ((size_t)N.cap < 2 * G->n_node + 2) N.cap *= 2;
    N.prod = xmalloc(sizeof *N.prod * (size_t)N.cap);
    memset(N.prod, 0, sizeof *N.prod * (size_t)N.cap);
    N.uses = xmalloc(sizeof(int) * (G->n_node ? G->n_node : 1));
    for (size_t i = 0; i < G->n_node; i++) {
        N.uses[i] = 0;
        if (!G->node[i]->n_output || !str(G->node[i]->output[0])[0]) continue;
        Slot *sl = slot_of(N.prod, N.cap, G->node[i]->output[0]);
        if (sl->key) continue;              /* a name made twice: the first maker */
        sl->key = G->node[i]->output[0];
        sl->val = (int)i;
    }
    for (size_t i = 0; i < G->n_node; i++)
        for (size_t k = 0; k < G->node[i]->n_input; k++) {
            int p = node_of(&N, G->node[i]->input[k]);
            if (p >= 0) N.uses[p]++;
        }
    for (size_t i = 0; i < G->n_output; i++) {
        int p = node_of(&N, str(G->output[i]->name));
        if (p >= 0) N.uses[p] += 2;        /* a graph output is never folded away */
    }
    for (size_t i = 0; i < G->n_node; i++) {
        if (skip[i]) continue;
        Fused f;
        int last = is_op(&N, (int)i, "Erf") ? gelu_erf(m, &N, (int)i, skip, &f)
                 : is_op(&N, (int)i, "Tanh") ? gelu_tanh(m, &N, (int)i, skip, &f)
                 : is_op(&N, (int)i, "ReduceMean") ? layernorm_decomposed(m, &N, (int)i, skip, &f)
                 : -1;
        if (last < 0) continue;
        skip[last] = false;
        fused[last] = f;
        has[last] = true;
    }
    free(N.prod);
    free(N.uses);
}

static int emit_fused(Imp *m, const Fused *f)
{
    int x = find(m, f->x);
    if (x < 0) return refuse(m, "its input \"%s\" is not made by an earlier node", f->x);
    const Val *X = &m->v[x];
    if ((X->kind != V_ACT && X->kind != V_INPUT) || X->scale != 1 || X->causal)
        return refuse(m, "a %s of something other than a plain activation", f->kind);
    if (!strcmp(f->kind, "gelu")) return emit_unary(m, x, "gelu", f->out);
    int axis = 0;
    if (axis_of(m, f->axis, X->rank, &axis)) return -1;
    return emit_layernorm(m, x, f->g ? find(m, f->g) : -1, f->b ? find(m, f->b) : -1, axis, f->out);
}

/* ----------------------------------------------------------------------------
 * Blocks: repeated structure */

static bool is_elementwise(const char *k)
{
    return !strcmp(k, "relu") || !strcmp(k, "gelu") || !strcmp(k, "bias") ||
           !strcmp(k, "batchnorm");
}

/* Networks of concatenated branches (SqueezeNet's fire modules, Inception):
 * a block ends at each concat (the last of a chain), and what the first
 * block has before the shape of the second (the kinds of its ops) is the
 * stem; what follows the last concat is the head. False when there is no
 * concat. */
static bool concat_blocks(Imp *m)
{
    int *end = xmalloc(sizeof(int) * (size_t)(m->nop + 1)), n = 0;
    for (int i = 0; i < m->nop; i++) {
        if (strcmp(m->op[i].kind, "concat")) continue;
        bool chained = false;
        for (int j = i + 1; j < m->nop; j++)
            for (int k = 0; k < m->op[j].nin; k++)
                chained |= m->op[j].in[k] == m->op[i].out && !strcmp(m->op[j].kind, "concat");
        if (!chained) end[n++] = i;
    }
    if (!n) {
        free(end);
        return false;
    }
    int stem = 0;
    if (n >= 2) {
        int l0 = end[0] + 1, l1 = end[1] - end[0];
        bool same = l0 > l1;
        for (int k = 0; same && k < l1; k++)
            same = !strcmp(m->op[end[0] - k].kind, m->op[end[1] - k].kind);
        if (same) stem = l0 - l1;
    }
    for (int b = 0, i = stem; b < n; b++)
        for (; i <= end[b]; i++) m->op[i].block = b;
    free(end);
    return true;
}

/* Residual networks: the ops between one fork (a value two ops read, skip
 * and branch) and the next form a segment; when the segments repeat with a
 * period (a transformer layer is an attention segment and an MLP segment),
 * that many segments make one block. Without residuals, a block ends at
 * each pooling (VGG's stages), else at each activation (an MLP's layers). */
static void assign_blocks(Imp *m)
{
    int last_join = -1;
    for (int i = 0; i < m->nop; i++)
        if (!strcmp(m->op[i].kind, "add")) last_join = i;
    if (last_join >= 0) {
        int end = last_join;
        while (end + 1 < m->nop && is_elementwise(m->op[end + 1].kind)) end++;
        int *seg = xmalloc(sizeof(int) * (size_t)m->nop), nseg = 0;
        int *start = xmalloc(sizeof(int) * (size_t)(m->nop + 1));
        for (int i = 0; i <= end; i++) {
            seg[i] = nseg - 1;
            if (m->t[m->op[i].out].consumers >= 2 && i < end) start[nseg++] = i + 1;
        }
        start[nseg] = end + 1;
        /* the shortest period p (segments of equal kind sequences) */
        int period = 1;
        for (int p = 1; p <= nseg / 2; p++) {
            if (nseg % p) continue;
            bool ok = true;
            for (int s = 0; s + p < nseg && ok; s++) {
                int a = start[s], b = start[s + p], la = start[s + 1] - a, lb = start[s + p + 1] - b;
                ok = la == lb;
                for (int k = 0; ok && k < la; k++) ok = !strcmp(m->op[a + k].kind, m->op[b + k].kind);
            }
            if (ok) { period = p; break; }
        }
        for (int i = 0; i <= end; i++)
            if (seg[i] >= 0) m->op[i].block = seg[i] / period;
        free(seg);
        free(start);
        return;
    }
    if (concat_blocks(m)) return;
    bool pools = false;
    for (int i = 0; i < m->nop; i++) pools |= !strcmp(m->op[i].kind, "pool2d");
    int last = -1, block = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < m->nop && (pass == 0 || i <= last); i++) {
            const char *k = m->op[i].kind;
            bool ends = pools ? !strcmp(k, "pool2d") : !strcmp(k, "relu") || !strcmp(k, "gelu");
            if (pass == 0) {
                if (ends) last = i;
                continue;
            }
            m->op[i].block = block;
            if (ends) block++;
        }
}

/* ----------------------------------------------------------------------------
 * Letters, and the JSON */

typedef struct {
    int cls[64];
    char let[64];
    int n;
    uint32_t used;
} LMap;

static char lmap_get(const LMap *L, int c)
{
    for (int i = 0; i < L->n; i++)
        if (L->cls[i] == c) return L->let[i];
    return 0;
}

static void lmap_set(LMap *L, int c, char l)
{
    if (L->n == 64) return;
    L->cls[L->n] = c;
    L->let[L->n++] = l;
    L->used |= 1u << (l - 'a');
}

static char lmap_letter(Imp *m, LMap *L, int c)
{
    char l = lmap_get(L, c);
    if (l) return l;
    char h = m->at[c].hint;
    if (!h || (L->used >> (h - 'a') & 1)) {
        static const char order[] = "hfkmjpqiuxyzglvtesrdcnbaow";
        h = 0;
        for (const char *p = order; *p && !h; p++)
            if (!(L->used >> (*p - 'a') & 1)) h = *p;
        if (!h) return 0;
        if (!m->at[c].hint) m->at[c].hint = h;   /* the same letter in the ops that follow */
    }
    lmap_set(L, c, h);
    return h;
}

/* Letters of operand k of op o (k == nin: the output) into buf. */
static int operand_letters(Imp *m, const Opr *o, int k, LMap *L, char *buf)
{
    const Ten *t = &m->t[k == o->nin ? o->out : o->in[k]];
    int lv[MAXD * 4], n = seq_leaves(m, &t->at, lv, MAXD * 4);
    if (n < 0 || n > 8)
        return refuse(m, "op \"%s\": tensor \"%s\" has more than 8 dims once its dims are "
                      "named", o->name, t->name);
    for (int i = 0; i < n; i++) {
        int c = lv[i];
        for (int r = 0; r < o->nren; r++) {
            if (o->ren[r].k != k) continue;
            int fl[MAXD * 4], tl[MAXD * 4];
            int nf = leaves_of(m, o->ren[r].from, fl, 0, MAXD * 4);
            int ntl = leaves_of(m, o->ren[r].to, tl, 0, MAXD * 4);
            if (nf != ntl)
                return refuse(m, "op \"%s\": a dim read twice was regrouped afterwards (a layout "
                              "strata cannot name with letters)", o->name);
            for (int j = 0; j < nf; j++)
                if (fl[j] == c) { c = tl[j]; break; }
        }
        char l = lmap_letter(m, L, c);
        if (!l) return refuse(m, "op \"%s\": more than 26 letters", o->name);
        for (int j = 0; j < i; j++)
            if (buf[j] == l)
                return refuse(m, "op \"%s\": one dim of \"%s\" twice (a diagonal strata cannot "
                              "name)", o->name, t->name);
        buf[i] = l;
    }
    buf[n] = 0;
    return 0;
}

static cJSON *op_json(Imp *m, const Opr *o)
{
    LMap L = { .n = 0 };
    for (int f = 0; f < o->nforce; f++) {
        int lv[MAXD * 4], n = leaves_of(m, o->force[f].atom, lv, 0, MAXD * 4);
        if (n != 1) {
            refuse(m, "op \"%s\": an image dim was regrouped (a layout strata cannot name with "
                   "letters)", o->name);
            return NULL;
        }
        if (!lmap_get(&L, lv[0])) lmap_set(&L, lv[0], o->force[f].letter);
    }
    char spec[128] = "", let[MAXD + 1];
    for (int k = 0; k <= o->nin; k++) {
        if (operand_letters(m, o, k, &L, let)) return NULL;
        strcat(spec, let);
        strcat(spec, k + 1 < o->nin ? "," : k + 1 == o->nin ? "->" : "");
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", o->name);
    cJSON_AddStringToObject(j, "kind", o->kind);
    cJSON_AddStringToObject(j, "spec", spec);
    cJSON *in = cJSON_AddArrayToObject(j, "inputs");
    for (int k = 0; k < o->nin; k++) cJSON_AddItemToArray(in, cJSON_CreateString(m->t[o->in[k]].name));
    cJSON_AddStringToObject(j, "output", m->t[o->out].name);
    if (o->attr_key) {
        int lv[MAXD * 4], n = seq_leaves(m, &o->letter_attr, lv, MAXD * 4);
        char s[MAXD * 4 + 1];
        for (int i = 0; i < n; i++) s[i] = lmap_get(&L, lv[i]);
        s[n > 0 ? n : 0] = 0;
        cJSON_AddStringToObject(j, o->attr_key, s);
    }
    cJSON *a;
    cJSON_ArrayForEach(a, o->attrs) cJSON_AddItemToObject(j, a->string, cJSON_Duplicate(a, true));
    if (o->block >= 0) cJSON_AddNumberToObject(j, "block", o->block);
    return j;
}

static cJSON *ten_json(Imp *m, const Ten *t)
{
    int lv[MAXD * 4], n = seq_leaves(m, &t->at, lv, MAXD * 4);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", t->name);
    cJSON *sh = cJSON_AddArrayToObject(j, "shape");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)m->at[lv[i]].size));
    cJSON_AddStringToObject(j, "dtype", t->dtype);
    cJSON_AddStringToObject(j, "role", t->role);
    return j;
}

/* ----------------------------------------------------------------------------
 * The model */

static int shape_of(Imp *m, Val *v, size_t nd, const int64_t *dims, const char *what)
{
    if (nd > MAXD) return err_set(m->err, "%s \"%s\": %zu dims (strata imports up to %d)", what,
                                  v->name, nd, MAXD);
    v->rank = (int)nd;
    int64_t total = 1;
    for (size_t d = 0; d < nd; d++) {
        if (dims[d] <= 0) return err_set(m->err, "%s \"%s\": dim %zu is %lld", what, v->name, d,
                                         (long long)dims[d]);
        if (!mul_bounded(&total, dims[d]))
            return err_set(m->err, "%s \"%s\": more than 2^50 elements", what, v->name);
        v->shape[d] = dims[d];
    }
    return 0;
}

/* The loss over the output: cross-entropy over its last dim (labels: the
 * other dims), or mse against a target of its shape. */
static int add_loss(Imp *m, const char *out_name, const char *loss)
{
    int y = out_name ? find(m, out_name) : -1;
    if (y < 0) return err_set(m->err, "the graph has no output");
    const Val *Y = &m->v[y];
    if (Y->kind != V_ACT || Y->scale != 1 || Y->causal || Y->rank < 1)
        return err_set(m->err, "graph output \"%s\": not an activation a loss can read", out_name);
    bool ce = !strcmp(loss, "cross_entropy");
    if (ce && (Y->rank < 2 || Y->dim[Y->rank - 1].n == 0))
        return err_set(m->err, "graph output \"%s\": a cross-entropy loss needs [batch, ..., "
                       "classes] logits", out_name);
    char lname[700];
    snprintf(lname, sizeof lname, "%s.labels", out_name);
    int lab = val_new(m, lname, V_INPUT);
    Val *L = &m->v[lab];
    Y = &m->v[y];
    L->rank = ce ? Y->rank - 1 : Y->rank;
    for (int d = 0; d < L->rank; d++) L->dim[d] = Y->dim[d], L->shape[d] = Y->shape[d];
    L->tensor = ten_new(m, lname, "label", ce ? "i32" : dtype_of(Y->dtype), L->dim, L->rank);
    snprintf(lname, sizeof lname, "%s.loss", out_name);
    Opr *o = op_new(m, lname, ce ? "cross_entropy" : "mse");
    op_in(m, o, y), op_in(m, o, lab);
    for (int d = 0; d < m->v[lab].rank; d++)
        if (m->v[lab].dim[d].n && pair(m, &m->op[m->nop - 1], &m->v[y].dim[d], &m->v[lab].dim[d], 1))
            return -1;
    o = &m->op[m->nop - 1];
    if (ce) {
        o->attr_key = "reduce";
        o->letter_attr = m->v[y].dim[m->v[y].rank - 1];
    }
    int l = val_new(m, lname, V_ACT);
    m->v[l].tensor = ten_new(m, lname, "activation", dtype_of(m->v[y].dtype), NULL, 0);
    op_out(m, o, l);
    return 0;
}

/* Is name the labels (input 1) of a loss node of the graph? */
static bool loss_labels(const Onnx__GraphProto *G, const char *name)
{
    for (size_t i = 0; i < G->n_node; i++) {
        const Onnx__NodeProto *nd = G->node[i];
        if (strcmp(str(nd->op_type), "SoftmaxCrossEntropyLoss") || nd->n_input < 2) continue;
        if (!strcmp(str(nd->input[1]), name)) return true;
    }
    return false;
}

/* SoftmaxCrossEntropyLoss(scores [N, C, d1...], labels [N, d1...]): the
 * graph's own loss, a cross_entropy over the class dim (1), averaged. */
static int do_softmax_ce(Imp *m, const char *out_name)
{
    const Onnx__NodeProto *nd = m->nd;
    int x = act_input(m, 0, false), lab = x >= 0 ? input(m, 1) : -1;
    if (lab < 0) return -1;
    const Onnx__AttributeProto *red = attr(nd, "reduction");
    if (red && red->has_s && red->s.len && strncmp((const char *)red->s.data, "mean", red->s.len))
        return refuse(m, "reduction other than mean (strata's cross-entropy averages)");
    if (attr(nd, "ignore_index") || (nd->n_input > 2 && nd->input[2][0]))
        return refuse(m, "class weights or an ignored index");
    if ((nd->n_output > 1 && nd->output[1][0]) || !out_name || strcmp(nd->output[0], out_name))
        return refuse(m, "a loss that is not the graph's first output, or its log-probabilities read");
    Val *X = &m->v[x], *L = &m->v[lab];
    if (X->rank < 2 || L->kind != V_INPUT || L->rank != X->rank - 1 || !is_int(L->dtype))
        return refuse(m, "scores [N, C, ...] and integer labels [N, ...] of the graph's inputs");
    /* the labels are this loss's: the input's tensor becomes the label */
    m->t[L->tensor].role = "label";
    Opr *o = op_new(m, nd->output[0], "cross_entropy");
    op_in(m, o, x), op_in(m, o, lab);
    for (int d = 0, k = 0; d < X->rank; d++) {
        if (d == 1) continue;
        X = &m->v[x], L = &m->v[lab];
        if (X->shape[d] != L->shape[k]) return refuse(m, "labels of another shape than the scores");
        if (X->dim[d].n && pair(m, &m->op[m->nop - 1], &X->dim[d], &L->dim[k], 1)) return -1;
        k++;
    }
    o = &m->op[m->nop - 1];
    o->attr_key = "reduce";
    o->letter_attr = m->v[x].dim[1];
    int l = val_new(m, nd->output[0], V_ACT);
    m->v[l].tensor = ten_new(m, nd->output[0], "activation", dtype_of(m->v[x].dtype), NULL, 0);
    op_out(m, o, l);
    return 0;
}

static int import_input(Imp *m, const Onnx__ValueInfoProto *in, const OnnxOpts *o)
{
    const char *name = str(in->name);
    const Onnx__TypeProto *tp = in->type;
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type->shape)
        return err_set(m->err, "graph input \"%s\": not a tensor of known shape", name);
    const Onnx__TensorShapeProto *sh = tp->tensor_type->shape;
    int i = val_new(m, name, V_INPUT);
    Val *v = &m->v[i];
    v->dtype = tp->tensor_type->elem_type;
    if (sh->n_dim < 1 || sh->n_dim > 4)
        return err_set(m->err, "graph input \"%s\": %zu dims (strata imports 1 to 4)", name, sh->n_dim);
    v->rank = (int)sh->n_dim;
    for (size_t d = 0; d < sh->n_dim; d++) {
        const Onnx__TensorShapeProto__Dimension *dim = sh->dim[d];
        bool known = dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                     dim->dim_value > 0;
        if (d == 0 && o->batch > 0) v->shape[0] = o->batch;
        else if (known && dim->dim_value <= MAX_ELEMS) v->shape[d] = dim->dim_value;
        else if (known)
            return err_set(m->err, "graph input \"%s\": dim %zu is %lld", name, d,
                           (long long)dim->dim_value);
        else
            return err_set(m->err, "graph input \"%s\": dim %zu is dynamic (%s)%s", name, d,
                           dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM
                               ? str(dim->dim_param) : "no size",
                           d == 0 ? ": give the batch with --batch" : "");
    }
    int64_t total = 1;
    for (int d = 0; d < v->rank; d++)
        if (!mul_bounded(&total, v->shape[d]))
            return err_set(m->err, "graph input \"%s\": more than 2^50 elements", name);
    const char *hints = v->rank == 4 ? "nchw" : is_int(v->dtype) ? (v->rank == 2 ? "bs" : "b")
                      : v->rank == 3 ? "bsh" : v->rank == 2 ? "bi" : "b";
    dims_fresh(m, v, hints);
    v = &m->v[i];
    v->tensor = ten_new(m, name, "input", dtype_of(v->dtype), v->dim, v->rank);
    return 0;
}

static int import_node(Imp *m, const Onnx__NodeProto *nd, const char *out_name)
{
    const char *t = str(nd->op_type);
    if (nd->n_output < 1 || !str(nd->output[0])[0]) return refuse(m, "no output");
    for (size_t k = 1; k < nd->n_output; k++)
        if (str(nd->output[k])[0] && strcmp(t, "Dropout") && strcmp(t, "LayerNormalization") &&
            strcmp(t, "BatchNormalization"))
            return refuse(m, "a second output");
    if (!strcmp(t, "Conv")) return do_conv(m);
    if (!strcmp(t, "BatchNormalization")) return do_batchnorm(m);
    if (!strcmp(t, "Relu")) return do_unary(m, "relu");
    if (!strcmp(t, "Gelu")) return do_unary(m, "gelu");
    if (!strcmp(t, "MaxPool")) return do_pool(m, false, false);
    if (!strcmp(t, "AveragePool")) return do_pool(m, true, false);
    if (!strcmp(t, "GlobalAveragePool")) return do_pool(m, true, true);
    if (!strcmp(t, "Add") || !strcmp(t, "Sum") || !strcmp(t, "Sub")) return do_add(m);
    if (!strcmp(t, "Mul")) return do_mul(m, false);
    if (!strcmp(t, "Div")) return do_mul(m, true);
    if (!strcmp(t, "Reshape") || !strcmp(t, "Flatten") || !strcmp(t, "Squeeze") ||
        !strcmp(t, "Unsqueeze"))
        return do_reshape(m);
    if (!strcmp(t, "Transpose")) return do_transpose(m);
    if (!strcmp(t, "Gemm")) return do_dense(m, true);
    if (!strcmp(t, "MatMul")) return do_dense(m, false);
    if (!strcmp(t, "LayerNormalization")) return do_layernorm(m);
    if (!strcmp(t, "Softmax") || !strcmp(t, "LogSoftmax"))
        return do_softmax(m, out_name && !strcmp(nd->output[0], out_name));
    if (!strcmp(t, "Where")) return do_where(m);
    if (!strcmp(t, "Gather")) return do_gather(m);
    if (!strcmp(t, "Concat")) return do_concat(m);
    if (!strcmp(t, "SoftmaxCrossEntropyLoss")) return do_softmax_ce(m, out_name);
    if (!strcmp(t, "ReduceMean")) return do_reduce_mean(m);
    if (!strcmp(t, "Dropout") || !strcmp(t, "Identity")) {
        int x = input(m, 0);
        if (x < 0) return -1;
        if (m->v[x].kind == V_PARAM && param_use(m, x, NULL)) return -1;
        val_view(m, nd->output[0], x);
        return 0;
    }
    return refuse(m, "an operator strata does not import");
}

static cJSON *import_graph(Imp *m, const Onnx__GraphProto *G, const OnnxOpts *o)
{
    /* initializers: parameters when an op reads them as operands, constants
     * when it reads their values (shapes, scalars, masks) */
    for (size_t i = 0; i < G->n_initializer; i++) {
        const Onnx__TensorProto *t = G->initializer[i];
        int v = val_new(m, str(t->name), V_PARAM);
        m->v[v].dtype = t->data_type;
        m->v[v].tp = t;
        if (shape_of(m, &m->v[v], t->n_dims, t->dims, "initializer")) return NULL;
    }
    /* Constant nodes and ConstantOfShape of a constant (a parameter stripped
     * of its values) */
    for (size_t i = 0; i < G->n_node; i++) {
        const Onnx__NodeProto *nd = G->node[i];
        m->nd = nd;
        if (!strcmp(str(nd->op_type), "Constant")) {
            const Onnx__AttributeProto *a = attr(nd, "value");
            if (!nd->n_output || !a || !a->t) {
                refuse(m, "only a tensor value is imported");
                return NULL;
            }
            int v = val_new(m, nd->output[0], V_CONST);
            m->v[v].tp = a->t;
            m->v[v].dtype = a->t->data_type;
            if (shape_of(m, &m->v[v], a->t->n_dims, a->t->dims, "Constant")) return NULL;
            continue;
        }
        if (strcmp(str(nd->op_type), "ConstantOfShape")) continue;
        int s = nd->n_input ? find(m, nd->input[0]) : -1;
        int64_t dims[MAXD];
        int n = s >= 0 ? const_ints(m, s, dims, MAXD) : -1;
        if (n < 0 || !nd->n_output) {
            refuse(m, "its shape is not a constant");
            return NULL;
        }
        int v = val_new(m, nd->output[0], V_PARAM);
        const Onnx__AttributeProto *a = attr(nd, "value");
        if (a && a->t) m->v[v].dtype = a->t->data_type;
        if (shape_of(m, &m->v[v], (size_t)n, dims, "ConstantOfShape")) return NULL;
    }
    m->nd = NULL;
    /* the data input: the graph input that is no initializer (nor the labels
     * of a loss the graph has) */
    int inputs = 0;
    for (size_t i = 0; i < G->n_input; i++) {
        if (find(m, str(G->input[i]->name)) >= 0) continue;
        if (loss_labels(G, str(G->input[i]->name))) {
            if (import_input(m, G->input[i], o)) return NULL;
            continue;
        }
        if (inputs++) {
            err_set(m->err, "graph input \"%s\": strata imports models of one input (the data)",
                    str(G->input[i]->name));
            return NULL;
        }
        if (import_input(m, G->input[i], o)) return NULL;
    }
    if (!inputs) {
        err_set(m->err, "the graph has no input other than its initializers");
        return NULL;
    }
    /* the nodes, in order (ONNX keeps them topologically sorted), with the
     * written-out layer norms and GELUs as one op each */
    size_t nn = G->n_node ? G->n_node : 1;
    bool *skip = xmalloc(nn), *has = xmalloc(nn);
    memset(skip, 0, nn);
    memset(has, 0, nn);
    Fused *fused = xmalloc(sizeof *fused * nn);
    find_fused(m, G, skip, fused, has);
    const char *out_name = G->n_output ? str(G->output[0]->name) : NULL;
    int rc = 0;
    for (size_t i = 0; i < G->n_node && !rc; i++) {
        const Onnx__NodeProto *nd = G->node[i];
        m->nd = nd;
        if (skip[i] || !strcmp(str(nd->op_type), "Constant") ||
            !strcmp(str(nd->op_type), "ConstantOfShape"))
            continue;
        rc = has[i] ? emit_fused(m, &fused[i]) : import_node(m, nd, out_name);
    }
    free(skip);
    free(has);
    free(fused);
    m->nd = NULL;
    /* a loss unless the graph ends with its own */
    int last = out_name ? find(m, out_name) : -1;
    bool has_loss = last >= 0 && m->v[last].kind == V_ACT && m->v[last].tensor >= 0 &&
                    m->t[m->v[last].tensor].producer >= 0 &&
                    !strcmp(m->op[m->t[m->v[last].tensor].producer].kind, "cross_entropy");
    if (!rc && has_loss && o->loss && !strcmp(o->loss, "mse")) {
        err_set(m->err, "--loss mse: the graph has its own loss (SoftmaxCrossEntropyLoss)");
        return NULL;
    }
    if (rc || (!has_loss &&
               add_loss(m, out_name, o->loss && !strcmp(o->loss, "mse") ? "mse" : "cross_entropy")))
        return NULL;
    assign_blocks(m);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", o->name ? o->name : G->name && G->name[0] ? G->name : "onnx");
    cJSON *ts = cJSON_AddArrayToObject(j, "tensors"), *os = cJSON_AddArrayToObject(j, "ops");
    for (int i = 0; i < m->nt; i++)
        if (m->t[i].consumers || m->t[i].producer >= 0) cJSON_AddItemToArray(ts, ten_json(m, &m->t[i]));
    for (int i = 0; i < m->nop; i++) {
        cJSON *op = op_json(m, &m->op[i]);
        if (!op) {
            cJSON_Delete(j);
            return NULL;
        }
        cJSON_AddItemToArray(os, op);
    }
    return j;
}

int onnx_check_opts(const OnnxOpts *o, Err *err)
{
    if (o->loss && strcmp(o->loss, "cross_entropy") && strcmp(o->loss, "ce") && strcmp(o->loss, "mse"))
        return err_set(err, "loss: \"%s\" is not a loss strata adds (cross_entropy, ce or mse)",
                       o->loss);
    if (o->name && !o->name[0]) return err_set(err, "name: the model's name is empty");
    return 0;
}

cJSON *onnx_import(const uint8_t *data, size_t n, const OnnxOpts *o, Err *err)
{
    static const OnnxOpts none = { 0 };
    if (!o) o = &none;
    if (onnx_check_opts(o, err)) return NULL;
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, n, data);
    if (!mp || !mp->graph) {
        if (mp) onnx__model_proto__free_unpacked(mp, NULL);
        err_set(err, "not an ONNX model (the protobuf does not parse as a ModelProto with a graph)");
        return NULL;
    }
    Imp m = { .err = err };
    cJSON *j = import_graph(&m, mp->graph, o);
    for (int i = 0; i < m.nv; i++) free(m.v[i].name);
    for (int i = 0; i < m.nt; i++) free(m.t[i].name);
    for (int i = 0; i < m.nop; i++) {
        free(m.op[i].name);
        cJSON_Delete(m.op[i].attrs);
    }
    free(m.v);
    free(m.vh);
    free(m.t);
    free(m.op);
    free(m.at);
    onnx__model_proto__free_unpacked(mp, NULL);
    return j;
}

cJSON *onnx_import_file(const char *path, const OnnxOpts *o, Err *err)
{
    size_t n;
    uint8_t *buf = (uint8_t *)file_read(path, &n, err);     /* says a directory is one */
    if (!buf) return NULL;
    cJSON *j = onnx_import(buf, n, o, err);
    free(buf);
    if (!j) err_prefix(err, "%s", path);
    return j;
}
