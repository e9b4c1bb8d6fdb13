/*
 * zoo.c — builders for the model zoo: mlp, gpt, bert, vgg16, resnet, fire,
 * moe, dlrm.
 *
 * Each builder writes the JSON a user could write by hand (tensors declared
 * with their shapes, ops with their index specs) and loads it through
 * graph_from_json, so a zoo model is validated like any other. An op's output
 * tensor is named after the op; its shape follows from the spec and the
 * input shapes (conv/pool spatial sizes from stride and padding).
 *
 * Legend: b,s,h = batch, sequence, hidden; n,d = heads, head dim; t = the
 * attended-to position; f = ffn; v = vocabulary; e,c = experts, capacity;
 * l = layers. Images: n,c,h,w = batch, channels, height, width; o,r,s =
 * out-channels and window. DLRM: t,u = tables, l = lookups per table.
 */
#include "zoo.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "util.h"

/* ----------------------------------------------------------------------------
 * Options: --key value pairs over a kind's table of options and presets */

#define ZOO_MAX_OPTS 20
#define ZOO_MAX_LIST 16

typedef struct {
    const char *key;
    char type;              /* 'i' integer, 'n' number, 'l' integer list, 'c' choice */
    const char *def;
    double lo, hi;          /* range of 'i' and of each list item; 'n': (lo, hi] */
    const char *choices;    /* 'c': "a|b|c"; NULL for --preset (the kind's presets) */
    const char *help;
} OptDef;

typedef struct Builder Builder;
typedef struct Opts Opts;

typedef struct {
    const char *name;
    const char *help;
    const char *const *presets;      /* "name key=value ...", NULL-terminated, or NULL */
    const OptDef *opts;              /* ends with a NULL key */
    int (*build)(Builder *b, const Opts *o, Err *err);
} ZooKind;

struct Opts {
    const ZooKind *kind;
    int n;
    const char *val[ZOO_MAX_OPTS];
    bool given[ZOO_MAX_OPTS];        /* set on the command line (names the model) */
    char preset[256];                /* the chosen preset's text, split in place */
};

static int opt_index(const ZooKind *k, const char *key)
{
    for (int i = 0; k->opts[i].key; i++)
        if (strcmp(k->opts[i].key, key) == 0) return i;
    return -1;
}

static bool parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    if (!(*s == '-' || *s == '+' || (*s >= '0' && *s <= '9'))) return false;
    long long v = strtoll(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

/* Checks one value against its definition. */
static int opt_check(const ZooKind *k, const OptDef *d, const char *v, Err *err)
{
    const char *kn = k->name;
    if (d->type == 'i' || d->type == 'l') {
        const char *p = v;
        int items = 0;
        char item[64];
        do {
            size_t len = d->type == 'l' ? strcspn(p, ",") : strlen(p);
            int64_t x = 0;
            bool ok = len < sizeof item;
            if (ok) {
                memcpy(item, p, len);
                item[len] = 0;
                ok = parse_i64(item, &x);
            }
            if (!ok)
                return err_set(err, "zoo %s: option --%s: \"%s\" is not %s", kn, d->key, v,
                               d->type == 'l' ? "a comma-separated list of integers" : "an integer");
            if (x < d->lo || x > d->hi)
                return err_set(err, "zoo %s: option --%s: %lld is out of range [%.0f, %.0f]", kn,
                               d->key, (long long)x, d->lo, d->hi);
            if (++items > ZOO_MAX_LIST)
                return err_set(err, "zoo %s: option --%s: more than %d items", kn, d->key,
                               ZOO_MAX_LIST);
            p += len;
        } while (d->type == 'l' && *p++ == ',');
        return 0;
    }
    if (d->type == 'n') {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return err_set(err, "zoo %s: option --%s: \"%s\" is not a number", kn, d->key, v);
        if (x <= d->lo || x > d->hi)
            return err_set(err, "zoo %s: option --%s: %g is out of range (%g, %g]", kn, d->key, x,
                           d->lo, d->hi);
        return 0;
    }
    /* a choice */
    char list[256] = "";
    if (d->choices) {
        snprintf(list, sizeof list, "%s", d->choices);
    } else {
        for (int i = 0; k->presets[i]; i++) {
            size_t at = strlen(list);
            snprintf(list + at, sizeof list - at, "%s%.*s", i ? "|" : "",
                     (int)strcspn(k->presets[i], " "), k->presets[i]);
        }
    }
    size_t n = strlen(v);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, "|");
        if (len == n && strncmp(p, v, n) == 0) return 0;
        p += len + (p[len] == '|');
    }
    char known[384];
    size_t at = 0;
    for (const char *p = list; *p && at + 3 < sizeof known; p++) {
        if (*p == '|') known[at++] = ',', known[at++] = ' ';
        else known[at++] = *p;
    }
    known[at] = 0;
    return err_set(err, "zoo %s: option --%s: unknown value \"%s\" (known: %s)", kn, d->key, v,
                   known);
}

/* Defaults, then the preset (if the kind has them), then the command line. */
static int opts_resolve(const ZooKind *k, Opts *o, int nopts, const char *const *keys,
                        const char *const *vals, Err *err)
{
    memset(o, 0, sizeof *o);
    o->kind = k;
    while (k->opts[o->n].key) {
        o->val[o->n] = k->opts[o->n].def;
        o->n++;
    }
    for (int i = 0; i < nopts; i++) {
        int at = opt_index(k, keys[i]);
        if (at < 0) {
            char list[512] = "";
            for (int j = 0; k->opts[j].key; j++) {
                size_t len = strlen(list);
                snprintf(list + len, sizeof list - len, "%s--%s", j ? ", " : "", k->opts[j].key);
            }
            return err_set(err, "zoo %s: unknown option --%s (known: %s)", k->name, keys[i], list);
        }
        if (!vals[i]) return err_set(err, "zoo %s: option --%s needs a value", k->name, keys[i]);
    }
    int p = opt_index(k, "preset");
    if (p >= 0) {
        for (int i = 0; i < nopts; i++)
            if (strcmp(keys[i], "preset") == 0) o->val[p] = vals[i];
        if (opt_check(k, &k->opts[p], o->val[p], err)) return -1;
        size_t n = strlen(o->val[p]);
        for (int i = 0; k->presets[i]; i++)
            if (strncmp(k->presets[i], o->val[p], n) == 0 && k->presets[i][n] == ' ')
                snprintf(o->preset, sizeof o->preset, "%s", k->presets[i] + n + 1);
        char *save = NULL;
        for (char *s = strtok_r(o->preset, " ", &save); s; s = strtok_r(NULL, " ", &save)) {
            char *eq = strchr(s, '=');
            if (!eq) continue;
            *eq = 0;
            int at = opt_index(k, s);
            if (at >= 0) o->val[at] = eq + 1;
        }
    }
    for (int i = 0; i < nopts; i++) {
        int at = opt_index(k, keys[i]);
        o->val[at] = vals[i];
        o->given[at] = at != p;
    }
    for (int i = 0; i < o->n; i++)
        if (opt_check(k, &k->opts[i], o->val[i], err)) return -1;
    return 0;
}

/* Getters, after opts_resolve has checked every value. */
static const char *opt_s(const Opts *o, const char *key)
{
    return o->val[opt_index(o->kind, key)];
}

static int64_t opt_i(const Opts *o, const char *key)
{
    int64_t v = 0;
    parse_i64(opt_s(o, key), &v);
    return v;
}

static double opt_n(const Opts *o, const char *key)
{
    return strtod(opt_s(o, key), NULL);
}

static int opt_list(const Opts *o, const char *key, int64_t out[ZOO_MAX_LIST])
{
    int n = 0;
    const char *p = opt_s(o, key);
    while (*p && n < ZOO_MAX_LIST) {
        char *end;
        out[n++] = strtoll(p, &end, 10);
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* ----------------------------------------------------------------------------
 * Builder: accumulates the model's JSON; ops derive their output's shape */

typedef struct {
    char *name;
    int ndim;
    int64_t shape[IR_MAX_DIMS];
} BTensor;

struct Builder {
    cJSON *root, *tensors, *ops;
    BTensor *t;
    int nt, cap;
    DType dt;               /* float dtype of params and activations */
    int block;              /* block of the ops being added; -1 outside */
    char prefix[64];        /* prepended to names: "blocks.3." */
    char bug[256];          /* first inconsistency in a builder (a bug, reported) */
};

typedef struct {
    const char *reduce, *gather, *mode;
    int stride, pad, window;  /* conv2d, pool2d */
    bool causal;
    double scale;             /* softmax; 0: not written */
    int64_t extra;            /* route: size of the output's capacity letter */
} Attr;

#define NOATTR ((Attr){0})
#define SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                   (const int64_t[]){__VA_ARGS__}
#define IN(...) (int)(sizeof((int[]){__VA_ARGS__}) / sizeof(int)), (const int[]){__VA_ARGS__}

static void b_init(Builder *b, const char *name)
{
    memset(b, 0, sizeof *b);
    b->root = cJSON_CreateObject();
    cJSON_AddStringToObject(b->root, "name", name);
    b->tensors = cJSON_AddArrayToObject(b->root, "tensors");
    b->ops = cJSON_AddArrayToObject(b->root, "ops");
    b->dt = DT_F32;
    b->block = -1;
}

static void b_free(Builder *b)
{
    for (int i = 0; i < b->nt; i++) free(b->t[i].name);
    free(b->t);
    cJSON_Delete(b->root);
}

/* Ops and params that follow belong to block `i` (-1: outside), their names
 * starting with `fmt`'s expansion, e.g. "blocks.3.". */
static void b_scope(Builder *b, int i, const char *fmt)
{
    b->block = i;
    snprintf(b->prefix, sizeof b->prefix, fmt, i);
}

static int b_tensor_abs(Builder *b, const char *name, Role role, DType dt, int ndim,
                        const int64_t *shape)
{
    if (b->nt == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        b->t = xrealloc(b->t, sizeof *b->t * b->cap);
    }
    BTensor *t = &b->t[b->nt];
    t->name = xstrdup(name);
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof *shape * ndim);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    for (int d = 0; d < ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)shape[d]));
    cJSON_AddStringToObject(o, "dtype", dtype_name(dt));
    cJSON_AddStringToObject(o, "role", role_name(role));
    cJSON_AddItemToArray(b->tensors, o);
    return b->nt++;
}

/* A param named prefix + suffix, in the model's dtype. */
static int b_param(Builder *b, const char *suffix, int ndim, const int64_t *shape)
{
    char name[192];
    snprintf(name, sizeof name, "%s%s", b->prefix, suffix);
    return b_tensor_abs(b, name, ROLE_PARAM, b->dt, ndim, shape);
}

/* Adds op prefix + suffix and its output tensor (same name); returns the
 * output. The output's shape comes from the letters of the inputs. */
static int b_op(Builder *b, const char *suffix, OpKind kind, const char *spec, Attr a, int nin,
                const int *in)
{
    char name[192];
    snprintf(name, sizeof name, "%s%s", b->prefix, suffix);
    const char *arrow = strstr(spec, "->");
    int64_t sz[IR_LETTERS] = {0};
    const char *p = spec;
    int k = 0;
    for (; k < nin && p < arrow; k++) {
        const BTensor *t = &b->t[in[k]];
        for (int d = 0; p < arrow && *p != ','; p++, d++)
            if (d < t->ndim && !sz[*p - 'a']) sz[*p - 'a'] = t->shape[d];
        if (*p == ',') p++;
    }
    if ((k != nin || p != arrow) && !b->bug[0])
        snprintf(b->bug, sizeof b->bug, "%s: spec \"%s\" does not match %d inputs", name, spec, nin);

    int stride = a.stride ? a.stride : kind == OP_POOL2D ? a.window : 1;
    int64_t shape[IR_MAX_DIMS];
    int n = 0;
    for (p = arrow + 2; *p && n < IR_MAX_DIMS; p++, n++) {
        if ((kind == OP_CONV2D || kind == OP_POOL2D) && n >= 2) {
            int64_t len = b->t[in[0]].shape[n];
            int64_t win = kind == OP_CONV2D ? b->t[in[1]].shape[n] : a.window;
            shape[n] = (len + 2 * a.pad - win) / stride + 1;
        } else if (sz[*p - 'a']) {
            shape[n] = sz[*p - 'a'];
        } else {
            shape[n] = a.extra;
        }
        if (shape[n] <= 0 && !b->bug[0])
            snprintf(b->bug, sizeof b->bug, "%s: no size for output letter '%c'", name, *p);
    }
    int out = b_tensor_abs(b, name, ROLE_ACT, b->dt, n, shape);

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "kind", op_kind_name(kind));
    cJSON_AddStringToObject(o, "spec", spec);
    cJSON *ins = cJSON_AddArrayToObject(o, "inputs");
    for (int k = 0; k < nin; k++) cJSON_AddItemToArray(ins, cJSON_CreateString(b->t[in[k]].name));
    cJSON_AddStringToObject(o, "output", name);
    if (b->block >= 0) cJSON_AddNumberToObject(o, "block", b->block);
    if (a.reduce) cJSON_AddStringToObject(o, "reduce", a.reduce);
    if (a.gather) cJSON_AddStringToObject(o, "gather", a.gather);
    if (kind == OP_POOL2D) cJSON_AddNumberToObject(o, "window", a.window);
    if (kind == OP_CONV2D || kind == OP_POOL2D) {
        cJSON_AddNumberToObject(o, "stride", stride);
        cJSON_AddNumberToObject(o, "pad", a.pad);
    }
    if (kind == OP_POOL2D) cJSON_AddStringToObject(o, "mode", a.mode ? a.mode : "max");
    if (a.causal) cJSON_AddBoolToObject(o, "causal", true);
    if (a.scale) cJSON_AddNumberToObject(o, "scale", a.scale);
    cJSON_AddItemToArray(b->ops, o);
    return out;
}

static int64_t dim(const Builder *b, int t, int d) { return b->t[t].shape[d]; }

/* ----------------------------------------------------------------------------
 * mlp */

static const OptDef mlp_opts[] = {
    {"layers", 'i', "2", 1, 1024, NULL, "hidden layers (each a block)"},
    {"hidden", 'i', "64", 1, 1 << 20, NULL, "width of each hidden layer"},
    {"input", 'i', "32", 1, 1 << 20, NULL, "input features"},
    {"classes", 'i', "10", 1, 1 << 20, NULL, "output classes"},
    {"batch", 'i', "8", 1, 1 << 24, NULL, "global batch size"},
    {"loss", 'c', "ce", 0, 0, "ce|mse",
     "ce: cross-entropy on class labels; mse: squared error to f32 targets [batch, classes]"},
    {"dtype", 'c', "f32", 0, 0, "f32|bf16|f16", "dtype of params and activations"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static int build_mlp(Builder *b, const Opts *o, Err *err)
{
    (void)err;
    int64_t L = opt_i(o, "layers"), H = opt_i(o, "hidden"), B = opt_i(o, "batch");
    int64_t K = opt_i(o, "classes");
    bool mse = strcmp(opt_s(o, "loss"), "mse") == 0;
    int x = b_tensor_abs(b, "x", ROLE_INPUT, b->dt, SHAPE(B, opt_i(o, "input")));
    int y = mse ? b_tensor_abs(b, "labels", ROLE_LABEL, DT_F32, SHAPE(B, K))
                : b_tensor_abs(b, "labels", ROLE_LABEL, DT_I32, SHAPE(B));
    for (int i = 0; i < L; i++) {
        b_scope(b, i, "blocks.%d.");
        int w = b_param(b, "fc.w", SHAPE(dim(b, x, 1), H));
        x = b_op(b, "fc", OP_MATMUL, "bi,ih->bh", NOATTR, IN(x, w));
        int bias = b_param(b, "fc.b", SHAPE(H));
        x = b_op(b, "fc_bias", OP_BIAS, "bh,h->bh", NOATTR, IN(x, bias));
        x = b_op(b, "relu", OP_RELU, "bh->bh", NOATTR, IN(x));
    }
    b_scope(b, -1, "");
    int w = b_param(b, "head.w", SHAPE(H, K));
    x = b_op(b, "head", OP_MATMUL, "bh,hk->bk", NOATTR, IN(x, w));
    int bias = b_param(b, "head.b", SHAPE(K));
    x = b_op(b, "head_bias", OP_BIAS, "bk,k->bk", NOATTR, IN(x, bias));
    if (mse)
        b_op(b, "loss", OP_MSE, "bk,bk->", NOATTR, IN(x, y));
    else
        b_op(b, "loss", OP_CROSS_ENTROPY, "bk,b->", (Attr){.reduce = "k"}, IN(x, y));
    return 0;
}

/* ----------------------------------------------------------------------------
 * Transformers: gpt (pre-LN decoder), bert (post-LN encoder + MLM head),
 * moe (gpt with switch-style experts in every k-th block) */

/* GPT-2's 50257-token vocabulary padded to 50304 (a multiple of 128), as
 * Megatron-LM and nanoGPT do, so the vocabulary splits over tensor ranks. */
static const char *const gpt_presets[] = {
    "small layers=2 hidden=64 heads=4 seq=32 vocab=256 batch=4",
    "gpt2-small layers=12 hidden=768 heads=12 seq=1024 vocab=50304 batch=8",
    "gpt2-medium layers=24 hidden=1024 heads=16 seq=1024 vocab=50304 batch=8",
    "gpt3-1.3b layers=24 hidden=2048 heads=16 seq=2048 vocab=51200 batch=512 dtype=bf16",
    "gpt3-175b layers=96 hidden=12288 heads=96 seq=2048 vocab=51200 batch=1536 dtype=bf16",
    NULL,
};

static const char *const bert_presets[] = {
    "small layers=2 hidden=64 heads=4 seq=32 vocab=256 batch=4",
    "bert-base layers=12 hidden=768 heads=12 seq=512 vocab=30522 batch=32",
    "bert-large layers=24 hidden=1024 heads=16 seq=512 vocab=30522 batch=32",
    NULL,
};

#define TF_OPTS                                                                               \
    {"preset", 'c', "small", 0, 0, NULL, "sizes to start from; the options below override"},  \
    {"layers", 'i', "2", 1, 1024, NULL, "transformer blocks"},                                 \
    {"hidden", 'i', "64", 1, 1 << 20, NULL, "hidden size h"},                                 \
    {"heads", 'i', "4", 1, 4096, NULL, "attention heads n (must divide hidden)"},             \
    {"seq", 'i', "32", 1, 1 << 24, NULL, "sequence length s"},                                \
    {"vocab", 'i', "256", 1, 1 << 30, NULL, "vocabulary size v"},                             \
    {"batch", 'i', "4", 1, 1 << 24, NULL, "global batch size b"},                             \
    {"ffn", 'i', "0", 0, 1 << 24, NULL, "ffn size f (0: 4*hidden)"},                          \
    {"tied", 'i', "1", 0, 1, NULL, "1: the logits reuse the token embedding"},                \
    {"dtype", 'c', "f32", 0, 0, "f32|bf16|f16", "dtype of params and activations"}

static const OptDef gpt_opts[] = {TF_OPTS, {NULL, 0, NULL, 0, 0, NULL, NULL}};
static const OptDef moe_opts[] = {
    TF_OPTS,
    {"experts", 'i', "8", 1, 1 << 16, NULL, "experts E per MoE layer"},
    {"every", 'i', "2", 1, 1024, NULL, "MoE FFN in every k-th block (blocks k-1, 2k-1, ...)"},
    {"capacity-factor", 'n', "1.25", 0, 1000, NULL, "expert capacity c = ceil(cf * seq / E)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

typedef struct {
    int64_t l, h, n, d, s, v, b, f, e, every, cap;
    bool tied, causal, post_ln;
} Tf;

static int tf_read(const Opts *o, Tf *c, Err *err)
{
    memset(c, 0, sizeof *c);
    c->l = opt_i(o, "layers");
    c->h = opt_i(o, "hidden");
    c->n = opt_i(o, "heads");
    c->s = opt_i(o, "seq");
    c->v = opt_i(o, "vocab");
    c->b = opt_i(o, "batch");
    c->f = opt_i(o, "ffn");
    c->tied = opt_i(o, "tied");
    if (!c->f) c->f = 4 * c->h;
    if (c->h % c->n)
        return err_set(err, "zoo %s: option --heads: %lld does not divide --hidden %lld",
                       o->kind->name, (long long)c->n, (long long)c->h);
    c->d = c->h / c->n;
    if (opt_index(o->kind, "experts") >= 0) {
        c->e = opt_i(o, "experts");
        c->every = opt_i(o, "every");
        if (c->every > c->l)
            return err_set(err, "zoo %s: option --every: %lld is more than --layers %lld, so no "
                           "block would have experts", o->kind->name, (long long)c->every,
                           (long long)c->l);
        c->cap = (int64_t)ceil(opt_n(o, "capacity-factor") * (double)c->s / (double)c->e);
        if (c->cap < 1) c->cap = 1;
    }
    return 0;
}

/* Layernorm over h with gamma and beta params named after the op. */
static int tf_ln(Builder *b, const char *name, int x, int64_t h)
{
    char g[96], be[96];
    snprintf(g, sizeof g, "%s.g", name);
    snprintf(be, sizeof be, "%s.b", name);
    int pg = b_param(b, g, SHAPE(h)), pb = b_param(b, be, SHAPE(h));
    return b_op(b, name, OP_LAYERNORM, "bsh,h,h->bsh", (Attr){.reduce = "h"}, IN(x, pg, pb));
}

/* Self-attention without reshapes: heads get their own letter n, the
 * attended-to position its own letter t. Returns the projected output. */
static int tf_attention(Builder *b, const Tf *c, int x)
{
    static const char *const qkv[3] = {"q", "k", "v"};
    int out[3];
    for (int i = 0; i < 3; i++) {
        char w[32], bn[32], op[32], opb[32];
        snprintf(w, sizeof w, "attn.w%s", qkv[i]);
        snprintf(bn, sizeof bn, "attn.b%s", qkv[i]);
        snprintf(op, sizeof op, "attn.%s", qkv[i]);
        snprintf(opb, sizeof opb, "attn.%s_bias", qkv[i]);
        int pw = b_param(b, w, SHAPE(c->h, c->n, c->d));
        int y = b_op(b, op, OP_MATMUL, "bsh,hnd->bsnd", NOATTR, IN(x, pw));
        int pb = b_param(b, bn, SHAPE(c->n, c->d));
        out[i] = b_op(b, opb, OP_BIAS, "bsnd,nd->bsnd", NOATTR, IN(y, pb));
    }
    int sc = b_op(b, "attn.scores", OP_MATMUL, "bsnd,btnd->bnst", NOATTR, IN(out[0], out[1]));
    Attr sm = {.reduce = "t", .causal = c->causal, .scale = 1 / sqrt((double)c->d)};
    int p = b_op(b, "attn.softmax", OP_SOFTMAX, "bnst->bnst", sm, IN(sc));
    int ctx = b_op(b, "attn.context", OP_MATMUL, "bnst,btnd->bsnd", NOATTR, IN(p, out[2]));
    int wo = b_param(b, "attn.wo", SHAPE(c->n, c->d, c->h));
    int y = b_op(b, "attn.proj", OP_MATMUL, "bsnd,ndh->bsh", NOATTR, IN(ctx, wo));
    int bo = b_param(b, "attn.bo", SHAPE(c->h));
    return b_op(b, "attn.proj_bias", OP_BIAS, "bsh,h->bsh", NOATTR, IN(y, bo));
}

static int tf_mlp(Builder *b, const Tf *c, int x)
{
    int w1 = b_param(b, "mlp.w1", SHAPE(c->h, c->f));
    x = b_op(b, "mlp.fc1", OP_MATMUL, "bsh,hf->bsf", NOATTR, IN(x, w1));
    int b1 = b_param(b, "mlp.b1", SHAPE(c->f));
    x = b_op(b, "mlp.fc1_bias", OP_BIAS, "bsf,f->bsf", NOATTR, IN(x, b1));
    x = b_op(b, "mlp.gelu", OP_GELU, "bsf->bsf", NOATTR, IN(x));
    int w2 = b_param(b, "mlp.w2", SHAPE(c->f, c->h));
    x = b_op(b, "mlp.fc2", OP_MATMUL, "bsf,fh->bsh", NOATTR, IN(x, w2));
    int b2 = b_param(b, "mlp.b2", SHAPE(c->h));
    return b_op(b, "mlp.fc2_bias", OP_BIAS, "bsh,h->bsh", NOATTR, IN(x, b2));
}

/* Switch FFN: a top-1 router picks an expert per token; tokens travel to
 * their expert's capacity slots (dispatch), the experts run as one batched
 * matmul over e, and combine weighs their outputs by the gate. */
static int tf_moe(Builder *b, const Tf *c, int x)
{
    int wr = b_param(b, "moe.wr", SHAPE(c->h, c->e));
    int r = b_op(b, "moe.router", OP_MATMUL, "bsh,he->bse", NOATTR, IN(x, wr));
    int gate = b_op(b, "moe.gate", OP_SOFTMAX, "bse->bse", (Attr){.reduce = "e"}, IN(r));
    int mask = b_op(b, "moe.route", OP_ROUTE, "bse->bsec", (Attr){.reduce = "e", .extra = c->cap},
                    IN(gate));
    int y = b_op(b, "moe.dispatch", OP_MATMUL, "bsh,bsec->bech", NOATTR, IN(x, mask));
    int w1 = b_param(b, "moe.w1", SHAPE(c->e, c->h, c->f));
    y = b_op(b, "moe.fc1", OP_MATMUL, "bech,ehf->becf", NOATTR, IN(y, w1));
    y = b_op(b, "moe.gelu", OP_GELU, "becf->becf", NOATTR, IN(y));
    int w2 = b_param(b, "moe.w2", SHAPE(c->e, c->f, c->h));
    y = b_op(b, "moe.fc2", OP_MATMUL, "becf,efh->bech", NOATTR, IN(y, w2));
    return b_op(b, "moe.combine", OP_MATMUL, "bech,bsec,bse->bsh", NOATTR, IN(y, mask, gate));
}

/* Token embedding plus learned positions; returns [b,s,h] and the table. */
static int tf_embed(Builder *b, const Tf *c, int *wte, int *labels)
{
    int tok = b_tensor_abs(b, "tokens", ROLE_INPUT, DT_I32, SHAPE(c->b, c->s));
    *labels = b_tensor_abs(b, "labels", ROLE_LABEL, DT_I32, SHAPE(c->b, c->s));
    *wte = b_param(b, "embed.wte", SHAPE(c->v, c->h));
    int x = b_op(b, "embed", OP_EMBEDDING, "bs,vh->bsh", (Attr){.gather = "v"}, IN(tok, *wte));
    int wpe = b_param(b, "embed.wpe", SHAPE(c->s, c->h));
    return b_op(b, "pos_embed", OP_BIAS, "bsh,sh->bsh", NOATTR, IN(x, wpe));
}

static int tf_logits_loss(Builder *b, const Tf *c, int x, int wte, int labels, bool bias)
{
    int w = c->tied ? wte : b_param(b, "head.w", SHAPE(c->v, c->h));
    x = b_op(b, "logits", OP_MATMUL, "bsh,vh->bsv", NOATTR, IN(x, w));
    if (bias) {
        int pb = b_param(b, "head.bias", SHAPE(c->v));
        x = b_op(b, "logits_bias", OP_BIAS, "bsv,v->bsv", NOATTR, IN(x, pb));
    }
    return b_op(b, "loss", OP_CROSS_ENTROPY, "bsv,bs->", (Attr){.reduce = "v"}, IN(x, labels));
}

/* GPT (and MoE): pre-LN blocks, x + attn(ln1(x)), then x + mlp(ln2(x)). */
static int build_decoder(Builder *b, const Tf *c)
{
    int wte, labels;
    int x = tf_embed(b, c, &wte, &labels);
    for (int i = 0; i < c->l; i++) {
        b_scope(b, i, "blocks.%d.");
        int y = tf_attention(b, c, tf_ln(b, "ln1", x, c->h));
        x = b_op(b, "attn.residual", OP_ADD, "bsh,bsh->bsh", NOATTR, IN(x, y));
        bool moe = c->e && i % c->every == c->every - 1;
        int m = tf_ln(b, "ln2", x, c->h);
        y = moe ? tf_moe(b, c, m) : tf_mlp(b, c, m);
        x = b_op(b, moe ? "moe.residual" : "mlp.residual", OP_ADD, "bsh,bsh->bsh", NOATTR,
                 IN(x, y));
    }
    b_scope(b, -1, "");
    x = tf_ln(b, "ln_f", x, c->h);
    tf_logits_loss(b, c, x, wte, labels, false);
    return 0;
}

static int build_gpt(Builder *b, const Opts *o, Err *err)
{
    Tf c;
    if (tf_read(o, &c, err)) return -1;
    c.causal = true;
    return build_decoder(b, &c);
}

static int build_moe(Builder *b, const Opts *o, Err *err)
{
    Tf c;
    if (tf_read(o, &c, err)) return -1;
    c.causal = true;
    return build_decoder(b, &c);
}

/* BERT: embeddings then LN, post-LN blocks ln1(x + attn(x)), ln2(x + mlp(x)),
 * and the masked-LM head: dense, gelu, LN, tied decoder plus a bias. No
 * token-type embedding, no pooler or next-sentence head. */
static int build_bert(Builder *b, const Opts *o, Err *err)
{
    Tf c;
    if (tf_read(o, &c, err)) return -1;
    int wte, labels;
    int x = tf_embed(b, &c, &wte, &labels);
    x = tf_ln(b, "embed.ln", x, c.h);
    for (int i = 0; i < c.l; i++) {
        b_scope(b, i, "blocks.%d.");
        int y = tf_attention(b, &c, x);
        x = b_op(b, "attn.residual", OP_ADD, "bsh,bsh->bsh", NOATTR, IN(x, y));
        x = tf_ln(b, "ln1", x, c.h);
        y = tf_mlp(b, &c, x);
        x = b_op(b, "mlp.residual", OP_ADD, "bsh,bsh->bsh", NOATTR, IN(x, y));
        x = tf_ln(b, "ln2", x, c.h);
    }
    b_scope(b, -1, "");
    int w = b_param(b, "head.dense.w", SHAPE(c.h, c.h));
    x = b_op(b, "head.dense", OP_MATMUL, "bsh,hg->bsg", NOATTR, IN(x, w));
    int pb = b_param(b, "head.dense.b", SHAPE(c.h));
    x = b_op(b, "head.dense_bias", OP_BIAS, "bsh,h->bsh", NOATTR, IN(x, pb));
    x = b_op(b, "head.gelu", OP_GELU, "bsh->bsh", NOATTR, IN(x));
    x = tf_ln(b, "head.ln", x, c.h);
    tf_logits_loss(b, &c, x, wte, labels, true);
    return 0;
}

/* ----------------------------------------------------------------------------
 * CNNs: vgg16 and resnet (torchvision layouts) */

static const OptDef vgg_opts[] = {
    {"batch", 'i', "32", 1, 1 << 24, NULL, "global batch size"},
    {"image", 'i', "224", 32, 1 << 16, NULL, "image height and width"},
    {"classes", 'i', "1000", 1, 1 << 24, NULL, "output classes"},
    {"width", 'i', "64", 1, 1 << 16, NULL, "channels of the first stage (then 2x, 4x, 8x, 8x)"},
    {"fc", 'i', "4096", 1, 1 << 24, NULL, "width of the two hidden fully-connected layers"},
    {"dtype", 'c', "f32", 0, 0, "f32|bf16|f16", "dtype of params and activations"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* VGG-16; --width and --fc shrink it to a VGG-style network of the same shape. */
static int build_vgg16(Builder *b, const Opts *o, Err *err)
{
    (void)err;
    static const int convs[5] = {2, 2, 3, 3, 3}, scale[5] = {1, 2, 4, 8, 8};
    int64_t B = opt_i(o, "batch"), S = opt_i(o, "image"), K = opt_i(o, "classes");
    int64_t W = opt_i(o, "width"), F = opt_i(o, "fc");
    int64_t width[5];
    for (int st = 0; st < 5; st++) width[st] = W * scale[st];
    int x = b_tensor_abs(b, "image", ROLE_INPUT, b->dt, SHAPE(B, 3, S, S));
    int y = b_tensor_abs(b, "labels", ROLE_LABEL, DT_I32, SHAPE(B));
    for (int st = 0; st < 5; st++) {
        b_scope(b, st, "blocks.%d.");
        for (int j = 1; j <= convs[st]; j++) {
            char n[32], nw[32], nb[32], nbias[32], nr[32];
            snprintf(n, sizeof n, "conv%d", j);
            snprintf(nw, sizeof nw, "conv%d.w", j);
            snprintf(nb, sizeof nb, "conv%d.b", j);
            snprintf(nbias, sizeof nbias, "conv%d_bias", j);
            snprintf(nr, sizeof nr, "relu%d", j);
            int w = b_param(b, nw, SHAPE(width[st], dim(b, x, 1), 3, 3));
            x = b_op(b, n, OP_CONV2D, "nchw,ocrs->nohw", (Attr){.stride = 1, .pad = 1}, IN(x, w));
            int pb = b_param(b, nb, SHAPE(width[st]));
            x = b_op(b, nbias, OP_BIAS, "nchw,c->nchw", NOATTR, IN(x, pb));
            x = b_op(b, nr, OP_RELU, "nchw->nchw", NOATTR, IN(x));
        }
        x = b_op(b, "pool", OP_POOL2D, "nchw->nchw", (Attr){.window = 2, .stride = 2}, IN(x));
    }
    /* the classifier reads the feature map directly: no reshape */
    b_scope(b, 5, "blocks.%d.");
    int w = b_param(b, "fc.w", SHAPE(dim(b, x, 1), dim(b, x, 2), dim(b, x, 3), F));
    x = b_op(b, "fc", OP_MATMUL, "nchw,chwf->nf", NOATTR, IN(x, w));
    int pb = b_param(b, "fc.b", SHAPE(F));
    x = b_op(b, "fc_bias", OP_BIAS, "nf,f->nf", NOATTR, IN(x, pb));
    x = b_op(b, "relu", OP_RELU, "nf->nf", NOATTR, IN(x));
    b_scope(b, 6, "blocks.%d.");
    w = b_param(b, "fc.w", SHAPE(F, F));
    x = b_op(b, "fc", OP_MATMUL, "nf,fg->ng", NOATTR, IN(x, w));
    pb = b_param(b, "fc.b", SHAPE(F));
    x = b_op(b, "fc_bias", OP_BIAS, "nf,f->nf", NOATTR, IN(x, pb));
    x = b_op(b, "relu", OP_RELU, "nf->nf", NOATTR, IN(x));
    b_scope(b, 7, "blocks.%d.");
    w = b_param(b, "fc.w", SHAPE(F, K));
    x = b_op(b, "fc", OP_MATMUL, "nf,fk->nk", NOATTR, IN(x, w));
    pb = b_param(b, "fc.b", SHAPE(K));
    x = b_op(b, "fc_bias", OP_BIAS, "nk,k->nk", NOATTR, IN(x, pb));
    b_scope(b, -1, "");
    b_op(b, "loss", OP_CROSS_ENTROPY, "nk,n->", (Attr){.reduce = "k"}, IN(x, y));
    return 0;
}

static const OptDef resnet_opts[] = {
    {"depth", 'c', "50", 0, 0, "50|101|152", "layers"},
    {"batch", 'i', "32", 1, 1 << 24, NULL, "global batch size"},
    {"image", 'i', "224", 32, 1 << 16, NULL, "image height and width"},
    {"classes", 'i', "1000", 1, 1 << 24, NULL, "output classes"},
    {"dtype", 'c', "f32", 0, 0, "f32|bf16|f16", "dtype of params and activations"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* conv (no bias) then batchnorm with gamma and beta. */
static int conv_bn(Builder *b, const char *conv, const char *bn, int x, int64_t cout, int k,
                   int stride, int pad)
{
    char nw[64], ng[64], nb[64];
    snprintf(nw, sizeof nw, "%s.w", conv);
    snprintf(ng, sizeof ng, "%s.g", bn);
    snprintf(nb, sizeof nb, "%s.b", bn);
    int w = b_param(b, nw, SHAPE(cout, dim(b, x, 1), k, k));
    x = b_op(b, conv, OP_CONV2D, "nchw,ocrs->nohw", (Attr){.stride = stride, .pad = pad}, IN(x, w));
    int g = b_param(b, ng, SHAPE(cout)), be = b_param(b, nb, SHAPE(cout));
    return b_op(b, bn, OP_BATCHNORM, "nchw,c,c->nchw", (Attr){.reduce = "nhw"}, IN(x, g, be));
}

/* Outside the blocks: global average pooling of the feature map x, a linear
 * classifier to K classes, cross-entropy against the labels y. */
static void pooled_head(Builder *b, int x, int64_t K, int y)
{
    b_scope(b, -1, "");
    x = b_op(b, "pool", OP_MEAN, "nchw->nc", NOATTR, IN(x));
    int w = b_param(b, "fc.w", SHAPE(dim(b, x, 1), K));
    x = b_op(b, "fc", OP_MATMUL, "nc,ck->nk", NOATTR, IN(x, w));
    int pb = b_param(b, "fc.b", SHAPE(K));
    x = b_op(b, "fc_bias", OP_BIAS, "nk,k->nk", NOATTR, IN(x, pb));
    b_op(b, "loss", OP_CROSS_ENTROPY, "nk,n->", (Attr){.reduce = "k"}, IN(x, y));
}

/* ResNet v1.5: bottlenecks 1x1, 3x3 (carrying the stride), 1x1 x4 channels;
 * a projection shortcut opens each stage. */
static int build_resnet(Builder *b, const Opts *o, Err *err)
{
    (void)err;
    static const int stages[3][4] = {{3, 4, 6, 3}, {3, 4, 23, 3}, {3, 8, 36, 3}};
    int64_t depth = opt_i(o, "depth"), B = opt_i(o, "batch"), S = opt_i(o, "image");
    int64_t K = opt_i(o, "classes");
    const int *nb = stages[depth == 50 ? 0 : depth == 101 ? 1 : 2];
    int x = b_tensor_abs(b, "image", ROLE_INPUT, b->dt, SHAPE(B, 3, S, S));
    int y = b_tensor_abs(b, "labels", ROLE_LABEL, DT_I32, SHAPE(B));

    b_scope(b, -1, "stem.");
    x = conv_bn(b, "conv", "bn", x, 64, 7, 2, 3);
    x = b_op(b, "relu", OP_RELU, "nchw->nchw", NOATTR, IN(x));
    x = b_op(b, "pool", OP_POOL2D, "nchw->nchw", (Attr){.window = 3, .stride = 2, .pad = 1}, IN(x));
    int blk = 0;
    for (int st = 0; st < 4; st++) {
        int64_t w = 64 << st;
        for (int j = 0; j < nb[st]; j++) {
            int stride = st > 0 && j == 0 ? 2 : 1;
            b_scope(b, blk++, "blocks.%d.");
            int in = x;
            x = conv_bn(b, "conv1", "bn1", in, w, 1, 1, 0);
            x = b_op(b, "relu1", OP_RELU, "nchw->nchw", NOATTR, IN(x));
            x = conv_bn(b, "conv2", "bn2", x, w, 3, stride, 1);
            x = b_op(b, "relu2", OP_RELU, "nchw->nchw", NOATTR, IN(x));
            x = conv_bn(b, "conv3", "bn3", x, 4 * w, 1, 1, 0);
            int sc = j == 0 ? conv_bn(b, "down.conv", "down.bn", in, 4 * w, 1, stride, 0) : in;
            x = b_op(b, "residual", OP_ADD, "nchw,nchw->nchw", NOATTR, IN(x, sc));
            x = b_op(b, "relu", OP_RELU, "nchw->nchw", NOATTR, IN(x));
        }
    }
    pooled_head(b, x, K, y);
    return 0;
}

/* ----------------------------------------------------------------------------
 * fire: a small SqueezeNet-style CNN (Iandola et al. 2016), the zoo's model
 * with a concat. A 3x3 stride-2 stem conv, then fire modules, each a block:
 * a 1x1 squeeze conv, then a 1x1 and a 3x3 expand conv side by side on the
 * squeezed map, their outputs concatenated along the channels; global
 * average pooling and a linear classifier. No max pooling between modules:
 * the map stays at half the image. */

static const OptDef fire_opts[] = {
    {"batch", 'i', "8", 1, 1 << 24, NULL, "global batch size"},
    {"image", 'i', "32", 2, 1 << 16, NULL, "image height and width"},
    {"classes", 'i', "10", 1, 1 << 24, NULL, "output classes"},
    {"stem", 'i', "16", 1, 1 << 16, NULL, "channels of the 3x3 stride-2 stem conv"},
    {"fires", 'i', "2", 1, 256, NULL, "fire modules (each a block)"},
    {"squeeze", 'i', "8", 1, 1 << 16, NULL, "channels of each squeeze (1x1) conv"},
    {"expand", 'i', "16", 1, 1 << 16, NULL,
     "channels of each expand conv, 1x1 and 3x3 (the concat has twice as many)"},
    {"dtype", 'c', "f32", 0, 0, "f32|bf16|f16", "dtype of params and activations"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* conv k x k (padding k/2: at stride 1 the map keeps its size) + bias + relu */
static int conv_relu(Builder *b, const char *name, int x, int64_t cout, int k, int stride)
{
    char nw[64], nb[64], nbias[64], nr[64];
    snprintf(nw, sizeof nw, "%s.w", name);
    snprintf(nb, sizeof nb, "%s.b", name);
    snprintf(nbias, sizeof nbias, "%s_bias", name);
    snprintf(nr, sizeof nr, "%s_relu", name);
    int w = b_param(b, nw, SHAPE(cout, dim(b, x, 1), k, k));
    x = b_op(b, name, OP_CONV2D, "nchw,ocrs->nohw", (Attr){.stride = stride, .pad = k / 2},
             IN(x, w));
    int pb = b_param(b, nb, SHAPE(cout));
    x = b_op(b, nbias, OP_BIAS, "nchw,c->nchw", NOATTR, IN(x, pb));
    return b_op(b, nr, OP_RELU, "nchw->nchw", NOATTR, IN(x));
}

static int build_fire(Builder *b, const Opts *o, Err *err)
{
    (void)err;
    int64_t B = opt_i(o, "batch"), S = opt_i(o, "image"), K = opt_i(o, "classes");
    int64_t Q = opt_i(o, "squeeze"), E = opt_i(o, "expand");
    int x = b_tensor_abs(b, "image", ROLE_INPUT, b->dt, SHAPE(B, 3, S, S));
    int y = b_tensor_abs(b, "labels", ROLE_LABEL, DT_I32, SHAPE(B));
    b_scope(b, -1, "stem.");
    x = conv_relu(b, "conv", x, opt_i(o, "stem"), 3, 2);
    for (int i = 0; i < opt_i(o, "fires"); i++) {
        b_scope(b, i, "blocks.%d.");
        int sq = conv_relu(b, "squeeze", x, Q, 1, 1);
        int e1 = conv_relu(b, "expand1", sq, E, 1, 1);
        int e3 = conv_relu(b, "expand3", sq, E, 3, 1);
        x = b_op(b, "concat", OP_CONCAT, "nahw,nbhw->nchw", (Attr){.extra = 2 * E}, IN(e1, e3));
    }
    pooled_head(b, x, K, y);
    return 0;
}

/* ----------------------------------------------------------------------------
 * dlrm: embedding bags, pairwise interaction, bottom and top MLPs */

static const OptDef dlrm_opts[] = {
    {"batch", 'i', "128", 1, 1 << 24, NULL, "global batch size"},
    {"dense", 'i', "13", 1, 1 << 20, NULL, "dense features"},
    {"tables", 'i', "8", 1, 4096, NULL, "embedding tables t"},
    {"rows", 'i', "1000000", 1, 1e10, NULL, "rows per table"},
    {"dim", 'i', "64", 1, 1 << 16, NULL, "embedding dim"},
    {"lookups", 'i', "1", 1, 4096, NULL, "lookups per table and sample (summed: a bag)"},
    {"bottom", 'l', "512,256,64", 1, 1 << 20, NULL, "bottom MLP widths (on the dense features)"},
    {"top", 'l', "512,256", 1, 1 << 20, NULL, "top MLP widths (before the 2-class logits)"},
    {"dtype", 'c', "f32", 0, 0, "f32|bf16|f16", "dtype of params and activations"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static int dlrm_layer(Builder *b, int x, int64_t width)
{
    int w = b_param(b, "fc.w", SHAPE(dim(b, x, 1), width));
    x = b_op(b, "fc", OP_MATMUL, "bi,ih->bh", NOATTR, IN(x, w));
    int pb = b_param(b, "fc.b", SHAPE(width));
    x = b_op(b, "fc_bias", OP_BIAS, "bh,h->bh", NOATTR, IN(x, pb));
    return b_op(b, "relu", OP_RELU, "bh->bh", NOATTR, IN(x));
}

static int build_dlrm(Builder *b, const Opts *o, Err *err)
{
    (void)err;
    int64_t B = opt_i(o, "batch"), T = opt_i(o, "tables"), bottom[ZOO_MAX_LIST], top[ZOO_MAX_LIST];
    int nbot = opt_list(o, "bottom", bottom), ntop = opt_list(o, "top", top);
    int dense = b_tensor_abs(b, "dense", ROLE_INPUT, b->dt, SHAPE(B, opt_i(o, "dense")));
    int idx = b_tensor_abs(b, "indices", ROLE_INPUT, DT_I32, SHAPE(B, T, opt_i(o, "lookups")));
    int y = b_tensor_abs(b, "labels", ROLE_LABEL, DT_I32, SHAPE(B));

    /* one table per letter-t slice; a bag sums its l lookups */
    int tab = b_param(b, "sparse.tables", SHAPE(T, opt_i(o, "rows"), opt_i(o, "dim")));
    int emb = b_op(b, "sparse", OP_EMBEDDING, "btl,tvh->bth", (Attr){.gather = "v"}, IN(idx, tab));
    int inter = b_op(b, "interact", OP_MATMUL, "bth,buh->btu", NOATTR, IN(emb, emb));

    int blk = 0, x = dense;
    for (int i = 0; i < nbot; i++) {
        char pre[32];
        snprintf(pre, sizeof pre, "bottom.%d.", i);
        b_scope(b, blk++, pre);
        x = dlrm_layer(b, x, bottom[i]);
    }
    for (int i = 0; i < ntop; i++) {
        char pre[32];
        snprintf(pre, sizeof pre, "top.%d.", i);
        b_scope(b, blk++, pre);
        if (i > 0) {
            x = dlrm_layer(b, x, top[i]);
            continue;
        }
        /* the interaction and the bottom output meet in the first top layer */
        int w = b_param(b, "fc.w", SHAPE(T, T, top[0]));
        int z = b_op(b, "fc", OP_MATMUL, "btu,tuf->bf", NOATTR, IN(inter, w));
        int wd = b_param(b, "fc_dense.w", SHAPE(dim(b, x, 1), top[0]));
        x = b_op(b, "fc_dense", OP_MATMUL, "bh,hf->bf", NOATTR, IN(x, wd));
        x = b_op(b, "add", OP_ADD, "bf,bf->bf", NOATTR, IN(z, x));
        int pb = b_param(b, "fc.b", SHAPE(top[0]));
        x = b_op(b, "fc_bias", OP_BIAS, "bf,f->bf", NOATTR, IN(x, pb));
        x = b_op(b, "relu", OP_RELU, "bf->bf", NOATTR, IN(x));
    }
    b_scope(b, -1, "");
    int w = b_param(b, "logits.w", SHAPE(dim(b, x, 1), 2));
    x = b_op(b, "logits", OP_MATMUL, "bh,hk->bk", NOATTR, IN(x, w));
    int pb = b_param(b, "logits.b", SHAPE(2));
    x = b_op(b, "logits_bias", OP_BIAS, "bk,k->bk", NOATTR, IN(x, pb));
    b_op(b, "loss", OP_CROSS_ENTROPY, "bk,b->", (Attr){.reduce = "k"}, IN(x, y));
    return 0;
}

/* ----------------------------------------------------------------------------
 * The table of kinds */

static const ZooKind kinds[] = {
    {"mlp", "multilayer perceptron: matmul + bias + relu per block, cross-entropy or mse loss",
     NULL, mlp_opts, build_mlp},
    {"gpt", "Megatron-style GPT decoder (pre-LN, learned positions, causal attention)",
     gpt_presets, gpt_opts, build_gpt},
    {"bert", "BERT encoder (post-LN) with the masked-LM head, tied decoder",
     bert_presets, gpt_opts, build_bert},
    {"vgg16", "VGG-16 (torchvision layout, no batchnorm), fc layers without reshape",
     NULL, vgg_opts, build_vgg16},
    {"resnet", "ResNet v1.5 with bottlenecks and batchnorm (torchvision layout)",
     NULL, resnet_opts, build_resnet},
    {"fire", "SqueezeNet-style CNN: fire modules whose 1x1 and 3x3 expand convs are concatenated",
     NULL, fire_opts, build_fire},
    {"moe", "GPT with switch-transformer experts (top-1 routing) in every k-th block",
     gpt_presets, moe_opts, build_moe},
    {"dlrm", "DLRM: embedding bags, pairwise interaction, bottom and top MLPs",
     NULL, dlrm_opts, build_dlrm},
};
#define NKINDS (int)(sizeof kinds / sizeof kinds[0])

/* "gpt3-175b", "moe-small", "resnet50", plus ",key=value" for each option
 * given beyond the preset; without a preset named, options given make it
 * "gpt,layers=8,...". */
static void model_name(const Opts *o, bool preset_given, char *buf, size_t n)
{
    const ZooKind *k = o->kind;
    int p = opt_index(k, "preset");
    bool others = false;
    for (int i = 0; i < o->n; i++) others |= o->given[i];
    if (p >= 0 && !preset_given && others)
        snprintf(buf, n, "%s", k->name);
    else if (p >= 0 && strncmp(o->val[p], k->name, strlen(k->name)) == 0)
        snprintf(buf, n, "%s", o->val[p]);
    else if (p >= 0)
        snprintf(buf, n, "%s-%s", k->name, o->val[p]);
    else if (strcmp(k->name, "resnet") == 0)
        snprintf(buf, n, "resnet%s", opt_s(o, "depth"));
    else
        snprintf(buf, n, "%s", k->name);
    for (int i = 0; i < o->n; i++) {
        if (!o->given[i] || (strcmp(k->name, "resnet") == 0 && strcmp(k->opts[i].key, "depth") == 0))
            continue;
        size_t at = strlen(buf);
        snprintf(buf + at, n - at, ",%s=%s", k->opts[i].key, o->val[i]);
    }
}

Graph *zoo_build(const char *kind, int nopts, const char *const *keys,
                 const char *const *vals, Err *err)
{
    const ZooKind *k = NULL;
    for (int i = 0; i < NKINDS; i++)
        if (strcmp(kinds[i].name, kind) == 0) k = &kinds[i];
    if (!k) {
        char list[128] = "";
        for (int i = 0; i < NKINDS; i++) {
            size_t at = strlen(list);
            snprintf(list + at, sizeof list - at, "%s%s", i ? ", " : "", kinds[i].name);
        }
        err_set(err, "zoo: unknown model kind \"%s\" (known: %s)", kind, list);
        return NULL;
    }
    Opts o;
    if (opts_resolve(k, &o, nopts, keys, vals, err)) return NULL;

    char name[512];
    bool preset_given = false;
    for (int i = 0; i < nopts; i++) preset_given |= strcmp(keys[i], "preset") == 0;
    model_name(&o, preset_given, name, sizeof name);
    Builder b;
    b_init(&b, name);
    dtype_parse(opt_s(&o, "dtype"), &b.dt);
    Graph *g = NULL;
    if (k->build(&b, &o, err) == 0) {
        if (b.bug[0]) {
            err_set(err, "zoo %s: builder bug: %s", k->name, b.bug);
        } else if (!(g = graph_from_json(b.root, err))) {
            /* the sizes asked for are too large (overflow), or a builder bug */
            char msg[sizeof err->msg];
            memcpy(msg, err->msg, sizeof msg);
            err_set(err, "zoo %s: %.900s", k->name, msg);
        }
    }
    b_free(&b);
    return g;
}

void zoo_usage(FILE *f)
{
    fprintf(f, "Model kinds and their options (--option value; defaults in brackets):\n");
    for (int i = 0; i < NKINDS; i++) {
        const ZooKind *k = &kinds[i];
        fprintf(f, "\n  %s — %s\n", k->name, k->help);
        for (int j = 0; k->opts[j].key; j++) {
            const OptDef *d = &k->opts[j];
            char arg[160];
            if (d->type == 'c' && d->choices) {
                snprintf(arg, sizeof arg, "%s", d->choices);
            } else if (d->type == 'c') {
                snprintf(arg, sizeof arg, "NAME (listed below)");
            } else {
                snprintf(arg, sizeof arg, "%s", d->type == 'n' ? "X" : d->type == 'l' ? "N,N,..." : "N");
            }
            fprintf(f, "    --%-16s %-22s %s [%s]\n", d->key, arg, d->help, d->def);
        }
        for (int p = 0; k->presets && k->presets[p]; p++) {
            int len = (int)strcspn(k->presets[p], " ");
            fprintf(f, "      preset %-12.*s %s\n", len, k->presets[p], k->presets[p] + len + 1);
        }
    }
}
