/*
 * strategy.c — the unified strategy: parse, resolve against a graph, validate,
 * canonicalise.
 *
 * Resolution turns a strategy as written (a mesh, a pipeline, and ordered
 * entries of names and `*` patterns) into one OpPolicy per op and one
 * ParamPolicy per tensor. Entries apply in the order written; each sets only
 * the fields and split letters it names. Validation then looks at the
 * resolved policies and names the entry that set the offending value, so the
 * message points at what the user wrote ("ops[\"blocks.*.mlp.fc1\"].split.f"),
 * not at an op the pattern happened to expand to.
 *
 * The canonical form is the resolved strategy written back as JSON: every op
 * and param named exactly, defaults filled, fields that the chosen sync method
 * does not use dropped, keys sorted (the mesh keeps its order: it is the
 * placement). Equivalent strategies, however written, share it and its id.
 *
 * Legend: D = data group size (product of the dp* axes), P = pipeline stages,
 * M = micro-batches, B = the batch letter's size.
 */
#include "strategy.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define MAX_CHUNKS (1 << 16)
#define MIB 1048576.0
#define DEFAULT_BUCKET_MB 25.0
#define DEFAULT_PS_SHARDS 4

static const char *const method_names[] = {"allreduce", "ps", "sfb", NULL};
static const char *const algo_names[] = {"ring", "tree", "hierarchical", NULL};
static const char *const compress_names[] = {"none", "fp16", "int8", "powersgd", NULL};
static const char *const shard_names[] = {"none", "zero1", "zero2", "zero3", NULL};
static const char *const sched_names[] = {"gpipe", "1f1b", "interleaved", NULL};
static const char *const opt_names[] = {"adam", "sgd", NULL};

/* Fields each sync method reads; a sync object that names its method may
 * carry only these. */
static const char *const sync_keys[] = {"method", "algo", "compress", "bucket_mb", "shards",
                                        "placement", "staleness", NULL};
static const char *const method_keys[][5] = {
    [SYNC_ALLREDUCE] = {"method", "algo", "compress", "bucket_mb", NULL},
    [SYNC_PS] = {"method", "shards", "placement", "staleness", NULL},
    [SYNC_SFB] = {"method", NULL},
};

const char *shard_name(Shard s) { return s >= 0 && s <= SHARD_ZERO3 ? shard_names[s] : "?"; }
const char *schedule_name(Schedule s)
{
    return s >= 0 && s <= SCHED_INTERLEAVED ? sched_names[s] : "?";
}
const char *sync_method_name(SyncMethod m)
{
    return m >= 0 && m <= SYNC_SFB ? method_names[m] : "?";
}
const char *compress_name(Compress c)
{
    return c >= 0 && c <= COMPRESS_POWERSGD ? compress_names[c] : "?";
}

static int lookup(const char *s, const char *const *names)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static void list_names(const char *const *names, char *buf, size_t n)
{
    buf[0] = 0;
    for (int i = 0; names[i]; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, "%s%s", i ? ", " : "", names[i]);
    }
}

/* A string field whose value must be one of names; 1 when absent. */
static int get_enum(const cJSON *obj, const char *path, const char *key,
                    const char *const *names, int *out, Err *err)
{
    const char *s;
    int rc = json_get_string(obj, path, key, false, &s, err);
    if (rc) return rc;
    int v = lookup(s, names);
    if (v < 0) {
        char list[256];
        list_names(names, list, sizeof list);
        return err_set(err, "%s.%s: unknown value \"%s\" (one of: %s)", path, key, s, list);
    }
    *out = v;
    return 0;
}

/* err_prefix from err.h, but using snprintf's result: GCC's -Wformat-truncation
 * flags the header's version wherever it is inlined. */
static void prefix(Err *err, const char *head)
{
    if (!err) return;
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    if (snprintf(err->msg, sizeof err->msg, "%s: %s", head, old) < 0) err->msg[0] = 0;
}

/* ----------------------------------------------------------------------------
 * Mesh queries */

int strategy_axis(const Strategy *s, const char *name)
{
    for (int a = 0; a < s->naxes; a++)
        if (strcmp(s->axis_name[a], name) == 0) return a;
    return -1;
}

void strategy_coords(const Strategy *s, int rank, int coord[MESH_MAX_AXES])
{
    for (int a = 0; a < MESH_MAX_AXES; a++)
        coord[a] = a < s->naxes ? (rank / s->axis_stride[a]) % s->axis_size[a] : 0;
}

int strategy_rank(const Strategy *s, const int coord[MESH_MAX_AXES])
{
    int r = 0;
    for (int a = 0; a < s->naxes; a++) r += coord[a] * s->axis_stride[a];
    return r;
}

int strategy_group_size(const Strategy *s, AxisMask mask)
{
    int n = 1;
    for (int a = 0; a < s->naxes; a++)
        if (mask & (1u << a)) n *= s->axis_size[a];
    return n;
}

const char *strategy_axes_name(const Strategy *s, AxisMask mask, char *buf, int n)
{
    if (n <= 0) return buf;
    buf[0] = 0;
    size_t used = 0;
    for (int a = 0; a < s->naxes; a++) {
        if (!(mask & (1u << a))) continue;
        int w = snprintf(buf + used, (size_t)n - used, "%s%s", used ? "+" : "", s->axis_name[a]);
        if (w < 0 || used + (size_t)w >= (size_t)n) break;
        used += (size_t)w;
    }
    return buf;
}

/* `axis "tp" (size 4)` or `axes "dp+tp" (size 16)`, for messages. */
static const char *axes_desc(const Strategy *s, AxisMask mask, char *buf, size_t n)
{
    char names[128];
    strategy_axes_name(s, mask, names, sizeof names);
    bool one = (mask & (mask - 1)) == 0;
    snprintf(buf, n, "%s \"%s\" (size %d)", one ? "axis" : "axes", names,
             strategy_group_size(s, mask));
    return buf;
}

/* ----------------------------------------------------------------------------
 * Resolution state */

typedef struct {
    ParamPolicy p;
    int nplace;              /* entries of an explicit placement; 0: spread */
    const char *sync_from;   /* key of the entry that last set a sync field */
    const char *shard_from;  /* ... the shard */
} ParamWork;

typedef struct {
    const Graph *g;
    const Cluster *c;
    Strategy *s;
    Err *err;
    const char **split_from; /* [op * IR_LETTERS + l]: entry key, NULL = default */
    ParamWork *pw;           /* per tensor */
} Ctx;

static void param_default(ParamPolicy *p)
{
    memset(p, 0, sizeof *p);
    p->method = SYNC_ALLREDUCE;
    p->algo = ALGO_RING;
    p->compress = COMPRESS_NONE;
    p->bucket_bytes = DEFAULT_BUCKET_MB * MIB;
    p->shard = SHARD_NONE;
}

static bool has_letter(const Op *op, int l) { return (op->letters_mask >> l) & 1u; }

/* ----------------------------------------------------------------------------
 * Mesh */

static bool axis_name_ok(const char *n)
{
    if (!*n || strlen(n) > 32) return false;
    for (; *n; n++)
        if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') ||
              (*n >= '0' && *n <= '9') || *n == '_'))
            return false;
    return true;
}

static int parse_mesh(Ctx *x, const cJSON *j)
{
    Strategy *s = x->s;
    Err *err = x->err;
    s->pp_axis = -1;
    s->world = 1;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "mesh");
    if (m && !cJSON_IsNull(m)) {
        if (!cJSON_IsObject(m))
            return err_set(err, "mesh: expected an object of axis sizes, outermost first "
                                "({\"pp\":2,\"dp\":4,\"tp\":8})");
        const cJSON *it;
        cJSON_ArrayForEach(it, m) {
            const char *name = it->string;
            if (!axis_name_ok(name))
                return err_set(err, "mesh: \"%s\" is not an axis name (letters, digits and _, "
                                    "at most 32)", name);
            if (s->naxes == MESH_MAX_AXES)
                return err_set(err, "mesh.%s: more than %d axes", name, MESH_MAX_AXES);
            for (int a = 0; a < s->naxes; a++)
                if (strcmp(s->axis_name[a], name) == 0)
                    return err_set(err, "mesh.%s: axis named twice", name);
            int64_t size;
            if (json_get_int(m, "mesh", name, true, 1, STRATEGY_MAX_WORLD, &size, err))
                return -1;
            int a = s->naxes++;
            s->axis_name[a] = xstrdup(name);
            s->axis_size[a] = (int)size;
            if ((int64_t)s->world * size > STRATEGY_MAX_WORLD)
                return err_set(err, "mesh.%s: the mesh has more than %d ranks", name,
                               STRATEGY_MAX_WORLD);
            s->world *= (int)size;
            if (strcmp(name, "pp") == 0) s->pp_axis = a;
            if (strncmp(name, "dp", 2) == 0) s->data_axes |= (AxisMask)(1u << a);
        }
    }
    int stride = 1;
    for (int a = s->naxes - 1; a >= 0; a--) {
        s->axis_stride[a] = stride;
        stride *= s->axis_size[a];
    }
    if (x->c && s->world > x->c->ndevices) {
        char prod[256] = "";
        for (int a = 0; a < s->naxes; a++) {
            size_t len = strlen(prod);
            snprintf(prod + len, sizeof prod - len, "%s%s %d", a ? " x " : "", s->axis_name[a],
                     s->axis_size[a]);
        }
        return err_set(err, "mesh: %d ranks (%s) but cluster %s has only %d devices", s->world,
                       prod, x->c->name, x->c->ndevices);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Pipeline */

/* The pipeline: stages (the pp axis), the schedule, then the cuts, which make
 * one model chunk per stage, or V per stage when the schedule is interleaved
 * (Megatron-LM's virtual pipeline stages: chunk k runs on stage k mod P). */
static int parse_pipeline(Ctx *x, const cJSON *j)
{
    Strategy *s = x->s;
    Err *err = x->err;
    int nb = x->g->nblocks;
    static const char *const keys[] = {"cuts", "microbatches", "schedule", "virtual", NULL};
    int P = s->nstages = s->pp_axis >= 0 ? s->axis_size[s->pp_axis] : 1;
    if (P > MAX_STAGES)
        return err_set(err, "mesh.%s: %d pipeline stages; strata runs at most %d",
                       s->axis_name[s->pp_axis], P, MAX_STAGES);
    s->microbatches = P;
    s->schedule = SCHED_1F1B;
    s->virtual_stages = 1;

    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pipeline");
    if (p && cJSON_IsNull(p)) p = NULL;
    if (p && json_check_keys(p, "pipeline", keys, err)) return -1;

    if (p) {
        int v, rc;
        if ((rc = get_enum(p, "pipeline", "schedule", sched_names, &v, err)) < 0) return -1;
        if (rc == 0) s->schedule = (Schedule)v;
        int64_t vs;
        if ((rc = json_get_int(p, "pipeline", "virtual", false, INT_MIN, MAX_CHUNKS, &vs, err)) < 0)
            return -1;
        if (rc == 0 && s->schedule != SCHED_INTERLEAVED)
            return err_set(err, "pipeline.virtual: model chunks per stage apply to the "
                                "interleaved schedule only, and the schedule is \"%s\" (set "
                                "\"schedule\": \"interleaved\", or drop \"virtual\")",
                           sched_names[s->schedule]);
        if (rc == 0 && vs < 1)
            return err_set(err, "pipeline.virtual: %lld model chunks per stage; each stage holds "
                                "at least one (virtual >= 1)", (long long)vs);
        if (rc == 1 && s->schedule == SCHED_INTERLEAVED)
            return err_set(err, "pipeline.virtual: the interleaved schedule needs the number of "
                                "model chunks per stage (\"virtual\": V, V >= 1; the cuts "
                                "then make pp x V chunks)");
        if (rc == 0) s->virtual_stages = (int)vs;
        if (s->schedule == SCHED_INTERLEAVED && P < 2)
            return err_set(err, "pipeline.schedule: interleaved needs a pipeline (a mesh axis "
                                "\"pp\" of size >= 2), the mesh has %s",
                           s->pp_axis < 0 ? "none" : "pp of size 1");
    }
    bool inter = s->schedule == SCHED_INTERLEAVED;
    if (inter && (int64_t)P * s->virtual_stages > nb)
        return err_set(err, "pipeline.virtual: mesh.pp %d x virtual %d = %lld model chunks but "
                            "the model has %d block(s); each chunk needs at least one", P,
                       s->virtual_stages, (long long)P * s->virtual_stages, nb);
    int n = s->nchunks = P * s->virtual_stages;
    s->cuts = xcalloc(n, sizeof *s->cuts);

    const cJSON *cuts = p ? cJSON_GetObjectItemCaseSensitive(p, "cuts") : NULL;
    if (cuts && !cJSON_IsNull(cuts)) {
        if (!cJSON_IsArray(cuts))
            return err_set(err, "pipeline.cuts: expected an array of block indices");
        int nc = cJSON_GetArraySize(cuts);
        if (nc != n - 1) {
            if (inter)
                return err_set(err, "pipeline.cuts: %d cut(s) make %d model chunks, but the "
                                    "interleaved schedule with mesh.pp %d and pipeline.virtual "
                                    "%d needs pp x virtual = %d chunks (%d cut(s))", nc, nc + 1,
                               P, s->virtual_stages, n, n - 1);
            if (s->pp_axis < 0)
                return err_set(err, "pipeline.cuts: %d cut(s) make %d stages, but the mesh has "
                                    "no pp axis (1 stage, no cuts)", nc, nc + 1);
            return err_set(err, "pipeline.cuts: %d cut(s) make %d stages, but mesh.pp is %d "
                                "(needs %d cut(s))", nc, nc + 1, P, P - 1);
        }
        int i = 0, prev = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, cuts) {
            double d = it->valuedouble;
            if (!cJSON_IsNumber(it) || !(d >= INT_MIN && d <= INT_MAX) || d != (double)(int)d)
                return err_set(err, "pipeline.cuts[%d]: expected a block index (an integer)", i);
            int v = (int)d;
            if (v <= 0 || v >= nb)
                return err_set(err, "pipeline.cuts[%d]: %d is not inside (0, %d): a %s starts "
                                    "at a block boundary and holds at least one of the model's "
                                    "%d blocks", i, v, nb, inter ? "model chunk" : "stage", nb);
            if (i > 0 && v <= prev)
                return err_set(err, "pipeline.cuts[%d]: %d does not follow %d: cuts must be "
                                    "strictly increasing", i, v, prev);
            s->cuts[i++] = prev = v;
        }
    } else if (n > 1) {
        if (n > nb)
            return err_set(err, "mesh.pp: %d stages but the model has %d block(s); each stage "
                                "needs at least one", P, nb);
        /* as even as integers allow: chunk i starts at floor(i * nb / n) */
        for (int i = 1; i < n; i++) s->cuts[i - 1] = (int)((int64_t)i * nb / n);
    }

    if (p) {
        int64_t mb;
        int rc = json_get_int(p, "pipeline", "microbatches", false, 1, STRATEGY_MAX_MICRO, &mb,
                              err);
        if (rc < 0) return -1;
        if (rc == 0) s->microbatches = (int)mb;
    }
    int M = s->microbatches;
    if (inter && M % P) {
        /* Megatron-LM runs the micro-batches in groups of P through each chunk */
        if (M < P)
            return err_set(err, "pipeline.microbatches: %d is not a multiple of mesh.pp %d; the "
                                "interleaved schedule runs micro-batches through each chunk in "
                                "groups of pp: use %d (or a multiple)", M, P, P);
        return err_set(err, "pipeline.microbatches: %d is not a multiple of mesh.pp %d; the "
                            "interleaved schedule runs micro-batches through each chunk in "
                            "groups of pp: use %d or %d", M, P, M / P * P, (M / P + 1) * P);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Ops */

/* The value of one split letter: null, "axis" or ["axis", ...]. */
static int parse_axes(Ctx *x, const cJSON *v, const char *path, AxisMask *out)
{
    Strategy *s = x->s;
    Err *err = x->err;
    *out = 0;
    if (cJSON_IsNull(v)) return 0;
    const cJSON *one = v, *it;
    int n = 1, i = 0;
    if (cJSON_IsArray(v)) {
        n = cJSON_GetArraySize(v);
        one = v->child;
    } else if (!cJSON_IsString(v)) {
        return err_set(err, "%s: expected an axis name, an array of them, or null", path);
    }
    for (it = one; i < n; it = it->next, i++) {
        if (!cJSON_IsString(it))
            return err_set(err, "%s[%d]: expected an axis name", path, i);
        int a = strategy_axis(s, it->valuestring);
        if (a < 0) {
            char list[256] = "";
            for (int k = 0; k < s->naxes; k++) {
                size_t len = strlen(list);
                snprintf(list + len, sizeof list - len, "%s%s", k ? ", " : "", s->axis_name[k]);
            }
            return err_set(err, "%s: no mesh axis \"%s\" (the mesh has: %s)", path,
                           it->valuestring, s->naxes ? list : "no axes");
        }
        if (a == s->pp_axis)
            return err_set(err, "%s: \"pp\" is the pipeline axis; it picks stages and cannot "
                                "split a letter", path);
        if (*out & (1u << a))
            return err_set(err, "%s: axis \"%s\" listed twice", path, it->valuestring);
        *out |= (AxisMask)(1u << a);
    }
    return 0;
}

/* Ops an entry names: one exact op, or every op a pattern matches. */
static int match_ops(Ctx *x, const char *key, const char *path, int *idx, int *n)
{
    const Graph *g = x->g;
    *n = 0;
    if (strchr(key, '*')) {
        for (int i = 0; i < g->nops; i++)
            if (glob_match(key, g->ops[i].name)) idx[(*n)++] = i;
        if (!*n) return err_set(x->err, "%s: the pattern matches no op", path);
        return 0;
    }
    int i = graph_find_op(g, key);
    if (i < 0) {
        int t = graph_find_tensor(g, key);
        if (t >= 0 && g->tensors[t].role == ROLE_PARAM)
            return err_set(x->err, "%s: no op named \"%s\"; it is a param (list it under "
                                   "\"params\")", path, key);
        return err_set(x->err, "%s: no op named \"%s\"", path, key);
    }
    idx[(*n)++] = i;
    return 0;
}

static int parse_ops(Ctx *x, const cJSON *j)
{
    static const char *const keys[] = {"split", "recompute", NULL};
    const Graph *g = x->g;
    Strategy *s = x->s;
    Err *err = x->err;
    const cJSON *ops = cJSON_GetObjectItemCaseSensitive(j, "ops");
    if (!ops || cJSON_IsNull(ops)) return 0;
    if (!cJSON_IsObject(ops))
        return err_set(err, "ops: expected an object of op names or patterns");
    int *idx = xmalloc(sizeof *idx * (g->nops ? g->nops : 1));
    char path[640], lpath[700];
    int rc = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, ops) {
        const char *key = e->string ? e->string : "";
        bool pattern = strchr(key, '*') != NULL;
        snprintf(path, sizeof path, "ops[\"%s\"]", key);
        int n;
        if (json_check_keys(e, path, keys, err)) goto out;
        if (match_ops(x, key, path, idx, &n)) goto out;
        bool rec;
        int got = json_get_bool(e, path, "recompute", false, &rec, err);
        if (got < 0) goto out;
        if (got == 0)
            for (int k = 0; k < n; k++) s->ops[idx[k]].recompute = rec;

        const cJSON *split = cJSON_GetObjectItemCaseSensitive(e, "split");
        if (!split || cJSON_IsNull(split)) continue;
        if (!cJSON_IsObject(split)) {
            err_set(err, "%s.split: expected an object of letter: axis", path);
            goto out;
        }
        const cJSON *lv;
        cJSON_ArrayForEach(lv, split) {
            const char *ls = lv->string;
            if (!(ls[0] >= 'a' && ls[0] <= 'z' && ls[1] == 0)) {
                err_set(err, "%s.split: \"%s\" is not an index letter (one of a..z)", path, ls);
                goto out;
            }
            int l = ls[0] - 'a';
            snprintf(lpath, sizeof lpath, "%s.split.%c", path, ls[0]);
            AxisMask mask;
            if (parse_axes(x, lv, lpath, &mask)) goto out;
            int used = 0;
            for (int k = 0; k < n; k++) {
                const Op *op = &g->ops[idx[k]];
                if (!has_letter(op, l)) {
                    if (pattern) continue;      /* patterns skip what an op lacks */
                    err_set(err, "%s: op %s has no letter %c (spec \"%s\")", lpath, op->name,
                            ls[0], op->spec);
                    goto out;
                }
                s->ops[idx[k]].split[l] = mask;
                x->split_from[idx[k] * IR_LETTERS + l] = key;
                used++;
            }
            if (n > 0 && !used && strcmp(key, "*")) {
                /* ... but a narrower one that splits nothing is a typo, not
                 * a choice ("*" alone is the model-wide default, written for
                 * any model) */
                err_set(err, "%s: none of the %d op%s \"%s\" matches has letter %c", lpath, n,
                        n == 1 ? "" : "s", key, ls[0]);
                goto out;
            }
        }
    }
    rc = 0;
out:
    free(idx);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Params */

typedef struct {
    bool method, algo, compress, bucket, shards, placement, staleness;
    ParamPolicy v;
    int nplace;
} SyncPatch;

int strategy_parse_compress(const char *str, const char *path, Compress *c, int *rank, Err *err)
{
    *rank = 0;
    if (strncmp(str, "powersgd:", 9) == 0) {
        char *end;
        long r = strtol(str + 9, &end, 10);
        if (end == str + 9 || *end || r < 1 || r > STRATEGY_MAX_POWERSGD_RANK)
            return err_set(err, "%s: \"%s\": the rank R of powersgd:R must be an integer in "
                                "[1, %d]", path, str, STRATEGY_MAX_POWERSGD_RANK);
        *c = COMPRESS_POWERSGD;
        *rank = (int)r;
        return 0;
    }
    int v = lookup(str, compress_names);
    if (v < 0 || v == COMPRESS_POWERSGD)
        return err_set(err, "%s: unknown value \"%s\" (one of: none, fp16, int8, powersgd:R)",
                       path, str);
    *c = (Compress)v;
    return 0;
}

static int parse_sync(const cJSON *o, const char *path, SyncPatch *sp, Err *err)
{
    memset(sp, 0, sizeof *sp);
    if (json_check_keys(o, path, sync_keys, err)) return -1;
    int v, rc;
    if ((rc = get_enum(o, path, "method", method_names, &v, err)) < 0) return -1;
    if (rc == 0) {
        sp->method = true;
        sp->v.method = (SyncMethod)v;
        const cJSON *it;
        cJSON_ArrayForEach(it, o) {
            if (lookup(it->string, method_keys[v]) >= 0) continue;
            char list[128];
            list_names(method_keys[v], list, sizeof list);
            return err_set(err, "%s.%s: does not apply to method %s (its fields: %s)", path,
                           it->string, method_names[v], list);
        }
    }
    if ((rc = get_enum(o, path, "algo", algo_names, &v, err)) < 0) return -1;
    if (rc == 0) {
        sp->algo = true;
        sp->v.algo = (SyncAlgo)v;
    }
    const char *str;
    if ((rc = json_get_string(o, path, "compress", false, &str, err)) < 0) return -1;
    if (rc == 0) {
        char cpath[800];
        snprintf(cpath, sizeof cpath, "%s.compress", path);
        if (strategy_parse_compress(str, cpath, &sp->v.compress, &sp->v.powersgd_rank, err))
            return -1;
        sp->compress = true;
    }
    double mb;
    if ((rc = json_get_number(o, path, "bucket_mb", false, -1e300, 1e6, &mb, err)) < 0) return -1;
    if (rc == 0) {
        if (!(mb > 0)) return err_set(err, "%s.bucket_mb: must be > 0, got %g", path, mb);
        sp->bucket = true;
        sp->v.bucket_bytes = mb * MIB;
    }
    int64_t n;
    if ((rc = json_get_int(o, path, "shards", false, 1, PS_MAX_SHARDS, &n, err)) < 0) return -1;
    if (rc == 0) {
        sp->shards = true;
        sp->v.ps_shards = (int)n;
    }
    if ((rc = json_get_int(o, path, "staleness", false, 0, STRATEGY_MAX_STALENESS, &n, err)) < 0)
        return -1;
    if (rc == 0) {
        sp->staleness = true;
        sp->v.staleness = (int)n;
    }
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(o, "placement");
    if (pl && !cJSON_IsNull(pl)) {
        sp->placement = true;
        if (cJSON_IsString(pl) && strcmp(pl->valuestring, "spread") == 0) {
            sp->nplace = 0;
        } else if (cJSON_IsArray(pl)) {
            int k = 0, np = cJSON_GetArraySize(pl);
            if (np < 1 || np > PS_MAX_SHARDS)
                return err_set(err, "%s.placement: expected 1 to %d server indices", path,
                               PS_MAX_SHARDS);
            const cJSON *it;
            cJSON_ArrayForEach(it, pl) {
                double d = it->valuedouble;
                if (!cJSON_IsNumber(it) || !(d >= 0 && d <= INT_MAX) || d != (double)(int)d)
                    return err_set(err, "%s.placement[%d]: expected an index in the data group "
                                        "(an integer >= 0)", path, k);
                sp->v.ps_placement[k++] = (int)d;
            }
            sp->nplace = np;
        } else {
            return err_set(err, "%s.placement: expected \"spread\" or an array of indices in "
                                "the data group", path);
        }
    }
    return 0;
}

static void apply_sync(ParamWork *w, const SyncPatch *sp, const char *from)
{
    ParamPolicy *p = &w->p;
    if (sp->method) p->method = sp->v.method;
    if (sp->algo) p->algo = sp->v.algo;
    if (sp->compress) {
        p->compress = sp->v.compress;
        p->powersgd_rank = sp->v.powersgd_rank;
    }
    if (sp->bucket) p->bucket_bytes = sp->v.bucket_bytes;
    if (sp->shards) p->ps_shards = sp->v.ps_shards;
    if (sp->staleness) p->staleness = sp->v.staleness;
    if (sp->placement) {
        w->nplace = sp->nplace;
        memcpy(p->ps_placement, sp->v.ps_placement, sizeof p->ps_placement);
    }
    w->sync_from = from;
}

static int match_params(Ctx *x, const char *key, const char *path, int *idx, int *n)
{
    const Graph *g = x->g;
    *n = 0;
    if (strchr(key, '*')) {
        for (int t = 0; t < g->ntensors; t++)
            if (g->tensors[t].role == ROLE_PARAM && glob_match(key, g->tensors[t].name))
                idx[(*n)++] = t;
        if (!*n) return err_set(x->err, "%s: the pattern matches no param", path);
        return 0;
    }
    int t = graph_find_tensor(g, key);
    if (t < 0) {
        if (graph_find_op(g, key) >= 0)
            return err_set(x->err, "%s: no param named \"%s\"; it is an op (list it under "
                                   "\"ops\")", path, key);
        return err_set(x->err, "%s: no param named \"%s\"", path, key);
    }
    if (g->tensors[t].role != ROLE_PARAM)
        return err_set(x->err, "%s: tensor \"%s\" is a%s %s, not a param", path, key,
                       g->tensors[t].role == ROLE_INPUT || g->tensors[t].role == ROLE_ACT
                           ? "n" : "", role_name(g->tensors[t].role));
    idx[(*n)++] = t;
    return 0;
}

static int parse_params(Ctx *x, const cJSON *j)
{
    static const char *const keys[] = {"sync", "shard", NULL};
    const Graph *g = x->g;
    Err *err = x->err;
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "params");
    if (!ps || cJSON_IsNull(ps)) return 0;
    if (!cJSON_IsObject(ps))
        return err_set(err, "params: expected an object of param names or patterns");
    int *idx = xmalloc(sizeof *idx * (g->ntensors ? g->ntensors : 1));
    char path[640], spath[700];
    int rc = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, ps) {
        const char *key = e->string ? e->string : "";
        snprintf(path, sizeof path, "params[\"%s\"]", key);
        int n;
        if (json_check_keys(e, path, keys, err)) goto out;
        if (match_params(x, key, path, idx, &n)) goto out;
        int v, got = get_enum(e, path, "shard", shard_names, &v, err);
        if (got < 0) goto out;
        if (got == 0)
            for (int k = 0; k < n; k++) {
                x->pw[idx[k]].p.shard = (Shard)v;
                x->pw[idx[k]].shard_from = key;
            }
        const cJSON *sy = cJSON_GetObjectItemCaseSensitive(e, "sync");
        if (!sy || cJSON_IsNull(sy)) continue;
        snprintf(spath, sizeof spath, "%s.sync", path);
        SyncPatch sp;
        if (parse_sync(sy, spath, &sp, err)) goto out;
        for (int k = 0; k < n; k++) apply_sync(&x->pw[idx[k]], &sp, key);
    }
    rc = 0;
out:
    free(idx);
    return rc;
}

/* SFB ships the factors of dW = X^T dY, which exist only for a 2-D weight of
 * matmuls whose batch letter the weight lacks (the gradient sums over it). */
const char *strategy_sfb_unfit(const Graph *g, int t, char *buf, int nbuf)
{
    size_t n = nbuf > 0 ? (size_t)nbuf : 0;
    const Tensor *w = &g->tensors[t];
    if (w->ndim != 2) {
        snprintf(buf, n, "it has %d dims, sfb needs a 2-D matmul weight", w->ndim);
        return buf;
    }
    int uses = 0;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        for (int k = 0; k < op->nin; k++) {
            if (op->in[k] != t) continue;
            uses++;
            if (op->kind != OP_MATMUL) {
                snprintf(buf, n, "%s op %s consumes it; sfb needs matmul weights only",
                         op_kind_name(op->kind), op->name);
                return buf;
            }
            if (op->batch_letter < 0 || strchr(op->in_letters[k], 'a' + op->batch_letter)) {
                snprintf(buf, n, "its gradient in op %s does not sum over the batch", op->name);
                return buf;
            }
        }
    }
    if (!uses) {
        snprintf(buf, n, "no op consumes it");
        return buf;
    }
    return NULL;
}

AxisMask strategy_param_sync_axes(const Graph *g, const Strategy *s, int t)
{
    for (int i = 0; i < g->nops; i++)
        for (int k = 0; k < g->ops[i].nin; k++) {
            if (g->ops[i].in[k] != t) continue;
            AxisMask m = 0;
            for (int l = 0; l < IR_LETTERS; l++)
                if ((g->ops[i].letters_mask >> l & 1u) && !strchr(g->ops[i].in_letters[k], 'a' + l))
                    m |= s->ops[i].split[l];
            return m;
        }
    return s->data_axes;
}

/* Drops the fields the final method does not read, fills ps defaults, and
 * checks each param's policy against the graph and the mesh. */
static int finish_params(Ctx *x)
{
    const Graph *g = x->g;
    Strategy *s = x->s;
    Err *err = x->err;
    char why[512], dname[128];
    for (int t = 0; t < g->ntensors; t++) {
        ParamWork *w = &x->pw[t];
        ParamPolicy *p = &w->p;
        const char *sf = w->sync_from ? w->sync_from : "?";
        if (p->method != SYNC_ALLREDUCE) {
            p->algo = ALGO_RING;
            p->compress = COMPRESS_NONE;
            p->powersgd_rank = 0;
            p->bucket_bytes = DEFAULT_BUCKET_MB * MIB;
        }
        if (p->method != SYNC_PS) {
            p->ps_shards = 0;
            p->staleness = 0;
            memset(p->ps_placement, 0, sizeof p->ps_placement);
            w->nplace = 0;
        }
        if (g->tensors[t].role != ROLE_PARAM) {
            param_default(p);
            continue;
        }
        const char *name = g->tensors[t].name;
        if (p->method == SYNC_SFB && strategy_sfb_unfit(g, t, why, (int)sizeof why))
            return err_set(err, "params[\"%s\"].sync.method: sfb does not fit param %s: %s", sf,
                           name, why);
        if (p->compress == COMPRESS_POWERSGD && g->tensors[t].ndim < 2)
            return err_set(err, "params[\"%s\"].sync.compress: powersgd needs a param of at "
                                "least 2 dims; %s has %d", sf, name, g->tensors[t].ndim);
        if (p->shard != SHARD_NONE && !s->data_axes)
            return err_set(err, "params[\"%s\"].shard: %s shards over the data axes, but the "
                                "mesh has none (add an axis named dp*)", w->shard_from,
                           shard_names[p->shard]);
        if (p->method == SYNC_PS) {
            /* the data ranks that hold the same part of it (a param split
             * over a data axis, as the sequence over dp_cp splits the
             * position embedding, has one group per part) */
            AxisMask ax = strategy_param_sync_axes(g, s, t);
            int D = strategy_group_size(s, ax);
            strategy_axes_name(s, ax, dname, sizeof dname);
            if (p->shard != SHARD_NONE)
                return err_set(err, "params[\"%s\"].sync.method: ps keeps the param on its "
                                    "servers and cannot be combined with shard %s (set by "
                                    "params[\"%s\"]) for param %s", sf,
                               shard_names[p->shard], w->shard_from, name);
            if (w->nplace && p->ps_shards && w->nplace != p->ps_shards)
                return err_set(err, "params[\"%s\"].sync.placement: %d server indices for %d "
                                    "shards (param %s)", sf, w->nplace, p->ps_shards, name);
            if (!p->ps_shards)
                p->ps_shards = w->nplace ? w->nplace
                                         : (D < DEFAULT_PS_SHARDS ? D : DEFAULT_PS_SHARDS);
            if (p->ps_shards > D)
                return err_set(err, "params[\"%s\"].sync.shards: %d shards but the data group "
                                    "(%s) has %d rank(s) to serve them (param %s)", sf,
                               p->ps_shards, D > 1 ? dname : "no data axes", D, name);
            if (w->nplace) {
                for (int k = 0; k < w->nplace; k++)
                    if (p->ps_placement[k] >= D)
                        return err_set(err, "params[\"%s\"].sync.placement[%d]: %d is not an "
                                            "index in the data group of param %s (%s, size %d)",
                                       sf, k, p->ps_placement[k], name,
                                       D > 1 ? dname : "no data axes", D);
            } else {
                /* spread: servers evenly over the data group */
                for (int k = 0; k < p->ps_shards; k++)
                    p->ps_placement[k] = (int)((int64_t)k * D / p->ps_shards);
            }
        }
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Op validation and stages */

static bool reduce_splittable(OpKind k) { return k == OP_CROSS_ENTROPY || k == OP_BATCHNORM; }

static int check_ops(Ctx *x)
{
    const Graph *g = x->g;
    Strategy *s = x->s;
    Err *err = x->err;
    int M = s->microbatches;
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        int b = op->batch_letter;
        if (b >= 0 && op->size[b] % M)
            return err_set(err, "pipeline.microbatches: %d does not divide the batch (letter %c, "
                                "size %lld) of op %s", M, 'a' + b, (long long)op->size[b],
                           op->name);
    }
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        AxisMask used = 0;
        int used_by[MESH_MAX_AXES] = {0};
        for (int l = 0; l < IR_LETTERS; l++) {
            AxisMask m = s->ops[i].split[l];
            if (!m) continue;
            int64_t size = op->size[l];
            int gs = strategy_group_size(s, m);
            bool per_micro = l == op->batch_letter && M > 1;
            bool bad = (m & used) || (((op->reduce_mask >> l) & 1u) && !reduce_splittable(op->kind))
                       || (op->concat_mask >> l & 1u)
                       || ((op->spatial_mask | op->window_mask) >> l & 1u)
                       || (per_micro ? (size / M) % gs : size % gs);
            if (!bad) {
                used |= m;
                for (int a = 0; a < s->naxes; a++)
                    if (m >> a & 1u) used_by[a] = l;
                continue;
            }
            /* the message, formatted only when there is one to give */
            const char *from = x->split_from[i * IR_LETTERS + l];
            char path[700], ax[192];
            if (from)
                snprintf(path, sizeof path, "ops[\"%s\"].split.%c", from, 'a' + l);
            else
                snprintf(path, sizeof path, "mesh (by default the batch letter %c of every op "
                                            "is split over the data axes)", 'a' + l);
            axes_desc(s, m, ax, sizeof ax);
            if (m & used) {
                int a = __builtin_ctz(m & used);
                return err_set(err, "%s: axis \"%s\" already splits letter %c of op %s; one axis "
                                    "can split only one letter of an op", path, s->axis_name[a],
                               'a' + used_by[a], op->name);
            }
            if (((op->reduce_mask >> l) & 1u) && !reduce_splittable(op->kind))
                return err_set(err, "%s: letter %c is a reduction letter of %s op %s and cannot "
                                    "be split (only cross_entropy's and batchnorm's can)", path,
                               'a' + l, op_kind_name(op->kind), op->name);
            if (op->concat_mask >> l & 1u)
                return err_set(err, "%s: letter %c is a concatenated letter of concat op %s (%s); "
                                    "the inputs are laid end to end along it, so it cannot be "
                                    "split: split another letter", path, 'a' + l, op->name,
                               l == op_concat_letter(op, op->nin) ? "the output's"
                                                                  : "an input's own extent");
            if ((op->spatial_mask | op->window_mask) >> l & 1u)
                return err_set(err, "%s: letter %c is a %s letter of %s op %s; splitting it "
                                    "would need a halo exchange, which strata does not do", path,
                               'a' + l, (op->window_mask >> l & 1u) ? "window" : "spatial",
                               op_kind_name(op->kind), op->name);
            if (per_micro)
                return err_set(err, "%s: %s does not divide letter %c (size %lld, %lld per "
                                    "micro-batch of %d) of op %s", path, ax, 'a' + l,
                               (long long)size, (long long)(size / M), M, op->name);
            return err_set(err, "%s: %s does not divide letter %c (size %lld) of op %s", path,
                           ax, 'a' + l, (long long)size, op->name);
        }
    }
    return 0;
}

/* Each op's model chunk (by the cuts) and the stage that runs it. Without
 * interleaving chunks are stages; with it, chunk k runs on stage k mod P. */
static int assign_stages(Ctx *x)
{
    const Graph *g = x->g;
    Strategy *s = x->s;
    int first = -1, last = -1;
    for (int i = 0; i < g->nops; i++)
        if (g->ops[i].block >= 0) {
            if (first < 0) first = i;
            last = i;
        }
    int cur = 0;
    for (int i = 0; i < g->nops; i++) {
        int blk = g->ops[i].block, ch;
        if (blk >= 0) {
            ch = 0;
            while (ch < s->nchunks - 1 && s->cuts[ch] <= blk) ch++;
            cur = ch;
        } else if (first < 0 || i < first) {
            ch = 0;
        } else if (i > last) {
            ch = s->nchunks - 1;
        } else {
            ch = cur;   /* between blocks: with the block before it */
        }
        s->op_chunk[i] = ch;
        s->op_stage[i] = ch % s->nstages;
    }
    /* a pipeline only sends forward: every consumer in its producer's chunk or
     * a later one; interleaved, only in the next one (chunk k hands its
     * activations to chunk k+1 alone, as Megatron-LM's schedule assumes) */
    bool inter = s->schedule == SCHED_INTERLEAVED;
    const char *unit = inter ? "chunk" : "stage";
    for (int i = 0; i < g->nops; i++) {
        const Op *op = &g->ops[i];
        for (int k = 0; k < op->nin; k++) {
            int p = g->tensors[op->in[k]].producer;
            if (p < 0) continue;
            int cp = s->op_chunk[p], ci = s->op_chunk[i];
            if (cp > ci)
                return err_set(x->err, "pipeline.cuts: op %s (%s %d) consumes %s from op %s "
                                       "in the later %s %d; %ss must follow the graph", op->name,
                               unit, ci, g->tensors[op->in[k]].name, g->ops[p].name, unit, cp,
                               unit);
            if (inter && ci > cp + 1)
                return err_set(x->err, "pipeline.cuts: op %s (chunk %d) consumes %s from op %s "
                                       "in chunk %d; with the interleaved schedule an activation "
                                       "passes only to the next chunk: cut so that no chunk is "
                                       "skipped", op->name, ci, g->tensors[op->in[k]].name,
                               g->ops[p].name, cp);
        }
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Canonical form */

static cJSON *axes_json(const Strategy *s, AxisMask m)
{
    if (!m) return cJSON_CreateNull();
    if (!(m & (m - 1))) return cJSON_CreateString(s->axis_name[__builtin_ctz(m)]);
    cJSON *a = cJSON_CreateArray();
    for (int k = 0; k < s->naxes; k++)
        if (m >> k & 1u) cJSON_AddItemToArray(a, cJSON_CreateString(s->axis_name[k]));
    return a;
}

/* Keys in sorted order (see strategy_canonicalize). */
static cJSON *sync_json(const ParamPolicy *p)
{
    cJSON *o = cJSON_CreateObject();
    if (p->method == SYNC_ALLREDUCE) {
        cJSON_AddStringToObject(o, "algo", algo_names[p->algo]);
        cJSON_AddNumberToObject(o, "bucket_mb", p->bucket_bytes / MIB);
        char c[32];
        if (p->compress == COMPRESS_POWERSGD)
            snprintf(c, sizeof c, "powersgd:%d", p->powersgd_rank);
        else
            snprintf(c, sizeof c, "%s", compress_names[p->compress]);
        cJSON_AddStringToObject(o, "compress", c);
    }
    cJSON_AddStringToObject(o, "method", method_names[p->method]);
    if (p->method == SYNC_PS) {
        cJSON *pl = cJSON_AddArrayToObject(o, "placement");
        for (int k = 0; k < p->ps_shards; k++)
            cJSON_AddItemToArray(pl, cJSON_CreateNumber(p->ps_placement[k]));
        cJSON_AddNumberToObject(o, "shards", p->ps_shards);
        cJSON_AddNumberToObject(o, "staleness", p->staleness);
    }
    return o;
}

typedef struct {
    const char *name;
    int i;
} Named;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const Named *)a)->name, ((const Named *)b)->name);
}

/* The canonical form is written in its sorted order directly (keys sorted
 * as json_sorted sorts them, ops and params by name), so it needs neither
 * a second tree nor a sort of one; test_strategy holds it to json_sorted. */
void strategy_canonicalize(Strategy *s, const Graph *g)
{
    if (s->canonical) return;
    cJSON *j = cJSON_CreateObject();
    cJSON *mesh = cJSON_AddObjectToObject(j, "mesh");
    for (int a = 0; a < s->naxes; a++)
        cJSON_AddNumberToObject(mesh, s->axis_name[a], s->axis_size[a]);

    Named *by = xmalloc(sizeof *by * (size_t)((g->nops > g->ntensors ? g->nops : g->ntensors) + 1));
    for (int i = 0; i < g->nops; i++) by[i] = (Named){ g->ops[i].name, i };
    qsort(by, g->nops, sizeof *by, cmp_named);
    cJSON *ops = cJSON_AddObjectToObject(j, "ops");
    for (int n = 0; n < g->nops; n++) {
        int i = by[n].i;
        const Op *op = &g->ops[i];
        cJSON *o = cJSON_AddObjectToObject(ops, op->name);
        cJSON_AddBoolToObject(o, "recompute", s->ops[i].recompute);
        cJSON *sp = cJSON_AddObjectToObject(o, "split");
        /* the batch letter always appears: left out, it would take the default */
        for (int l = 0; l < IR_LETTERS; l++)
            if (s->ops[i].split[l] || l == op->batch_letter) {
                char k[2] = {(char)('a' + l), 0};
                cJSON_AddItemToObject(sp, k, axes_json(s, s->ops[i].split[l]));
            }
    }
    cJSON_AddStringToObject(j, "optimizer", opt_names[s->optimizer]);

    int np = 0;
    for (int t = 0; t < g->ntensors; t++)
        if (g->tensors[t].role == ROLE_PARAM) by[np++] = (Named){ g->tensors[t].name, t };
    qsort(by, np, sizeof *by, cmp_named);
    cJSON *params = cJSON_AddObjectToObject(j, "params");
    for (int n = 0; n < np; n++) {
        int t = by[n].i;
        cJSON *o = cJSON_AddObjectToObject(params, g->tensors[t].name);
        cJSON_AddStringToObject(o, "shard", shard_names[s->params[t].shard]);
        cJSON_AddItemToObject(o, "sync", sync_json(&s->params[t]));
    }
    free(by);

    cJSON *pipe = cJSON_AddObjectToObject(j, "pipeline");
    cJSON *cuts = cJSON_AddArrayToObject(pipe, "cuts");
    for (int i = 0; i < s->nchunks - 1; i++)
        cJSON_AddItemToArray(cuts, cJSON_CreateNumber(s->cuts[i]));
    cJSON_AddNumberToObject(pipe, "microbatches", s->microbatches);
    cJSON_AddStringToObject(pipe, "schedule", sched_names[s->schedule]);
    if (s->schedule == SCHED_INTERLEAVED) cJSON_AddNumberToObject(pipe, "virtual", s->virtual_stages);
    s->canonical = j;
    json_hash(s->canonical, s->id);
}

/* ----------------------------------------------------------------------------
 * Entry points */

/* Every axis but the pipeline's splits some op: the ranks along one that
 * splits none would each repeat the others' work. */
static int check_axes_used(const Strategy *s, const Graph *g, Err *err)
{
    AxisMask want = 0, used = 0;
    for (int a = 0; a < s->naxes; a++)
        if (a != s->pp_axis && s->axis_size[a] > 1) want |= (AxisMask)(1u << a);
    for (int i = 0; i < g->nops && (used & want) != want; i++)
        for (int l = 0; l < IR_LETTERS; l++) used |= s->ops[i].split[l];
    for (int a = 0; a < s->naxes; a++)
        if ((want & ~used) >> a & 1u)
            return err_set(err, "mesh.%s: its %d ranks split no op, so each would repeat the "
                           "others' work (split a letter over it in ops, or leave it out)",
                           s->axis_name[a], s->axis_size[a]);
    return 0;
}

/* Resolution after the entries have applied: the params' final policies, the
 * ops checked (and the axes used), the stages assigned. */
static int resolve(Ctx *x)
{
    Strategy *s = x->s;
    if (finish_params(x)) return -1;
    for (int t = 0; t < x->g->ntensors; t++) s->params[t] = x->pw[t].p;
    if (check_ops(x) || check_axes_used(s, x->g, x->err)) return -1;
    return assign_stages(x);
}

/* Policies of every op and param at their defaults: the batch letter split
 * over the data axes, ring all-reduce, nothing recomputed or sharded. */
static void alloc_policies(Strategy *s, const Graph *g)
{
    s->nops = g->nops;
    s->ops = xcalloc(g->nops ? g->nops : 1, sizeof *s->ops);
    s->op_stage = xcalloc(g->nops ? g->nops : 1, sizeof *s->op_stage);
    s->op_chunk = xcalloc(g->nops ? g->nops : 1, sizeof *s->op_chunk);
    for (int i = 0; i < g->nops; i++)
        if (g->ops[i].batch_letter >= 0)
            s->ops[i].split[g->ops[i].batch_letter] = s->data_axes;
    s->ntensors = g->ntensors;
    s->params = xmalloc(sizeof *s->params * (g->ntensors ? g->ntensors : 1));
    for (int t = 0; t < g->ntensors; t++) param_default(&s->params[t]);
}

Strategy *strategy_from_json(const cJSON *j, const Graph *g, const Cluster *c, Err *err)
{
    Strategy *s = strategy_parse(j, g, c, err);
    if (s) strategy_canonicalize(s, g);
    return s;
}

Strategy *strategy_parse(const cJSON *j, const Graph *g, const Cluster *c, Err *err)
{
    static const char *const keys[] = {"mesh", "pipeline", "ops", "params", "optimizer",
                                       "notes", NULL};
    Strategy *s = xcalloc(1, sizeof *s);
    s->pp_axis = -1;
    Ctx x = {.g = g, .c = c, .s = s, .err = err};
    x.split_from = xcalloc((size_t)(g->nops ? g->nops : 1) * IR_LETTERS, sizeof *x.split_from);
    x.pw = xcalloc(g->ntensors ? g->ntensors : 1, sizeof *x.pw);

    if (json_check_keys(j, "strategy", keys, err)) goto fail;
    const char *str;
    if (json_get_string(j, "strategy", "notes", false, &str, err) < 0) goto fail;
    if (parse_mesh(&x, j)) goto fail;
    if (parse_pipeline(&x, j)) goto fail;
    int v, rc = get_enum(j, "strategy", "optimizer", opt_names, &v, err);
    if (rc < 0) goto fail;
    s->optimizer = rc == 0 ? (Optimizer)v : OPT_ADAM;

    alloc_policies(s, g);
    if (parse_ops(&x, j)) goto fail;
    for (int t = 0; t < g->ntensors; t++) x.pw[t].p = s->params[t];
    if (parse_params(&x, j)) goto fail;
    if (resolve(&x)) goto fail;
    free(x.split_from);
    free(x.pw);
    return s;
fail:
    free(x.split_from);
    free(x.pw);
    strategy_free(s);
    return NULL;
}

Strategy *strategy_new(const Graph *g, int naxes, const char *const names[], const int sizes[],
                       Err *err)
{
    if (naxes < 0 || naxes > MESH_MAX_AXES) {
        err_set(err, "mesh: %d axes (at most %d)", naxes, MESH_MAX_AXES);
        return NULL;
    }
    Strategy *s = xcalloc(1, sizeof *s);
    s->pp_axis = -1;
    s->world = 1;
    for (int a = 0; a < naxes; a++) {
        if (!axis_name_ok(names[a]) || sizes[a] < 1 || strategy_axis(s, names[a]) >= 0 ||
            (int64_t)s->world * sizes[a] > STRATEGY_MAX_WORLD) {
            err_set(err, "mesh.%s: a distinct axis name and a size in [1, %d] are needed",
                    names[a], STRATEGY_MAX_WORLD);
            strategy_free(s);
            return NULL;
        }
        s->axis_name[a] = xstrdup(names[a]);
        s->axis_size[a] = sizes[a];
        s->naxes = a + 1;
        s->world *= sizes[a];
        if (strcmp(names[a], "pp") == 0) s->pp_axis = a;
        if (strncmp(names[a], "dp", 2) == 0) s->data_axes |= (AxisMask)(1u << a);
    }
    int stride = 1;
    for (int a = s->naxes - 1; a >= 0; a--) {
        s->axis_stride[a] = stride;
        stride *= s->axis_size[a];
    }
    s->nstages = s->pp_axis >= 0 ? s->axis_size[s->pp_axis] : 1;
    s->virtual_stages = 1;
    s->nchunks = s->nstages;
    s->cuts = xcalloc(s->nchunks, sizeof *s->cuts);
    for (int i = 1; i < s->nchunks; i++)
        s->cuts[i - 1] = g->nblocks ? (int)((int64_t)i * g->nblocks / s->nchunks) : 0;
    s->microbatches = s->nstages;
    s->schedule = SCHED_1F1B;
    s->optimizer = OPT_ADAM;
    alloc_policies(s, g);
    return s;
}

int strategy_finish(Strategy *s, const Graph *g, const Cluster *c, Err *err)
{
    cJSON_Delete(s->canonical);
    s->canonical = NULL;
    s->id[0] = 0;
    if (c && s->world > c->ndevices)
        return err_set(err, "mesh: %d ranks but cluster %s has only %d devices", s->world,
                       c->name, c->ndevices);
    int P = s->nstages, V = s->virtual_stages, nb = g->nblocks;
    bool inter = s->schedule == SCHED_INTERLEAVED;
    if (P > MAX_STAGES)
        return err_set(err, "mesh: %d pipeline stages; strata runs at most %d", P, MAX_STAGES);
    if (V < 1 || (!inter && V != 1) || (inter && P < 2) || s->nchunks != P * V)
        return err_set(err, "pipeline: %d stages x %d model chunks each is not a pipeline the "
                            "%s schedule runs", P, V, sched_names[s->schedule]);
    for (int i = 0; i < s->nchunks - 1; i++)
        if (s->cuts[i] <= (i ? s->cuts[i - 1] : 0) || s->cuts[i] >= nb)
            return err_set(err, "pipeline.cuts[%d]: %d is not inside (%d, %d): cuts increase "
                                "and leave every %s at least one of the model's %d blocks", i,
                           s->cuts[i], i ? s->cuts[i - 1] : 0, nb, inter ? "chunk" : "stage",
                           nb);
    if (s->microbatches < 1 || s->microbatches > STRATEGY_MAX_MICRO ||
        (inter && s->microbatches % P))
        return err_set(err, "pipeline.microbatches: %d is not a count the %s schedule runs",
                       s->microbatches, sched_names[s->schedule]);
    Ctx x = {.g = g, .c = c, .s = s, .err = err};
    /* messages name the op or param itself: there are no entries to point at */
    x.split_from = xmalloc(sizeof *x.split_from * (size_t)(g->nops ? g->nops : 1) * IR_LETTERS);
    for (int i = 0; i < g->nops; i++)
        for (int l = 0; l < IR_LETTERS; l++)
            x.split_from[i * IR_LETTERS + l] = l != g->ops[i].batch_letter ? g->ops[i].name : NULL;
    x.pw = xmalloc(sizeof *x.pw * (g->ntensors ? g->ntensors : 1));
    for (int t = 0; t < g->ntensors; t++) {
        x.pw[t].p = s->params[t];
        x.pw[t].sync_from = x.pw[t].shard_from = g->tensors[t].name;
        x.pw[t].nplace = s->params[t].method == SYNC_PS && s->params[t].ps_placed
                             ? s->params[t].ps_shards : 0;
    }
    int rc = resolve(&x);
    free(x.split_from);
    free(x.pw);
    return rc;
}

Strategy *strategy_copy(const Strategy *s)
{
    Strategy *d = xmalloc(sizeof *d);
    *d = *s;
    for (int a = 0; a < s->naxes; a++) d->axis_name[a] = xstrdup(s->axis_name[a]);
    d->cuts = xmalloc(sizeof *d->cuts * (s->nchunks ? s->nchunks : 1));
    memcpy(d->cuts, s->cuts, sizeof *d->cuts * (s->nchunks ? s->nchunks : 1));
    int no = s->nops ? s->nops : 1, nt = s->ntensors ? s->ntensors : 1;
    d->ops = xmalloc(sizeof *d->ops * no);
    memcpy(d->ops, s->ops, sizeof *d->ops * no);
    d->op_stage = xmalloc(sizeof *d->op_stage * no);
    memcpy(d->op_stage, s->op_stage, sizeof *d->op_stage * no);
    d->op_chunk = xmalloc(sizeof *d->op_chunk * no);
    memcpy(d->op_chunk, s->op_chunk, sizeof *d->op_chunk * no);
    d->params = xmalloc(sizeof *d->params * nt);
    memcpy(d->params, s->params, sizeof *d->params * nt);
    d->canonical = s->canonical ? cJSON_Duplicate(s->canonical, true) : NULL;
    return d;
}

Strategy *strategy_load(const char *path, const Graph *g, const Cluster *c, Err *err)
{
    cJSON *j = json_load(path, err);
    if (!j) return NULL;
    Strategy *s = strategy_from_json(j, g, c, err);
    cJSON_Delete(j);
    if (!s) prefix(err, path);
    return s;
}

void strategy_free(Strategy *s)
{
    if (!s) return;
    for (int a = 0; a < s->naxes; a++) free(s->axis_name[a]);
    free(s->cuts);
    free(s->ops);
    free(s->params);
    free(s->op_stage);
    free(s->op_chunk);
    cJSON_Delete(s->canonical);
    free(s);
}
