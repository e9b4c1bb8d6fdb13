/*
 * cluster.c — cluster specs: parsing, validation, node scaling, topology
 * queries.
 *
 * The JSON keeps human units in its keys (peak_tflops, memory_gib,
 * memory_bw_gbps, bw_gbps, latency_us); the struct holds SI units (FLOP/s,
 * bytes, bytes/s, seconds). cluster_to_json converts back, rounded to 12
 * significant digits so a file survives a round trip unchanged.
 *
 * Legend: level i's item holds span(i) = count[0] * ... * count[i] devices;
 * ranks r and q share an item of level i iff r / span(i) == q / span(i).
 */
#include "cluster.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/* a million devices: five times the largest GPU clusters built so far; a
 * plan keeps lists per rank, so each is that long */
#define MAX_DEVICES (1 << 20)
#define GIB 1073741824.0

static const char *const dtype_keys[DT_COUNT] = {"f32", "bf16", "f16", NULL};

/* A figure within [lo, hi] in the unit the file gives it in: the bounds
 * keep it, once converted to SI units, finite and its results printable
 * (a 1e300 TFLOP/s device overflows to infinity; a 1e-300 GiB one makes a
 * step of 1e290 seconds). */
static int get_figure(const cJSON *obj, const char *path, const char *key, double lo, double hi,
                      double *out, Err *err)
{
    double v;
    /* a figure past its bounds (infinity included) is told its own range */
    if (json_get_number(obj, path, key, true, -1e300, 1e300, &v, err)) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(obj, key);
        if (!cJSON_IsNumber(x) || (isfinite(x->valuedouble) && fabs(x->valuedouble) <= 1e300))
            return -1;
        return err_set(err, "%s.%s: %g is out of range [%g, %g]", path, key, x->valuedouble, lo,
                       hi);
    }
    if (!(v > 0)) return err_set(err, "%s.%s: must be > 0, got %g", path, key, v);
    if (v < lo || v > hi)
        return err_set(err, "%s.%s: %g is out of range [%g, %g]", path, key, v, lo, hi);
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

/* Rounds to 12 significant digits: undoes the last-bit noise of unit scaling. */
static double round12(double v)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%.12g", v);
    return strtod(buf, NULL);
}

/* ----------------------------------------------------------------------------
 * Parsing */

static int parse_group(const cJSON *d, const char *path, bool need_count,
                       DeviceGroup *g, Err *err)
{
    static const char *const keys[] = {"name", "kind", "count", "peak_tflops", "memory_gib",
                                       "memory_bw_gbps", "notes", NULL};
    if (json_check_keys(d, path, keys, err)) return -1;
    const char *s;
    if (json_get_string(d, path, "name", true, &s, err)) return -1;
    g->name = xstrdup(s);
    if (json_get_string(d, path, "kind", true, &s, err)) return -1;
    if (strcmp(s, "gpu") != 0 && strcmp(s, "cpu") != 0)
        return err_set(err, "%s.kind: \"%s\" is not a device kind (gpu or cpu)", path, s);
    g->kind = xstrdup(s);
    int64_t n = 0;
    int rc = json_get_int(d, path, "count", need_count, 1, MAX_DEVICES, &n, err);
    if (rc < 0) return -1;
    g->count = rc == 0 ? (int)n : 0;   /* 0: the whole cluster, filled by the caller */
    if (json_get_string(d, path, "notes", false, &s, err) < 0) return -1;

    char sub[600];
    snprintf(sub, sizeof sub, "%s.peak_tflops", path);
    const cJSON *pk = cJSON_GetObjectItemCaseSensitive(d, "peak_tflops");
    if (!pk || cJSON_IsNull(pk))
        return err_set(err, "%s: missing (required)", sub);
    if (json_check_keys(pk, sub, dtype_keys, err)) return -1;
    if (get_figure(pk, sub, "f32", 1e-6, 1e6, &g->peak_flops[DT_F32], err)) return -1;
    for (int t = DT_BF16; t < DT_I32; t++) {
        /* a dtype without its own figure runs at the f32 rate (emulated) */
        g->peak_flops[t] = g->peak_flops[DT_F32];
        if (cJSON_GetObjectItemCaseSensitive(pk, dtype_keys[t]) &&
            get_figure(pk, sub, dtype_keys[t], 1e-6, 1e6, &g->peak_flops[t], err))
            return -1;
    }
    for (int t = 0; t < DT_COUNT; t++)
        if (t != DT_I32) g->peak_flops[t] *= 1e12;
    if (get_figure(d, path, "memory_gib", 1e-6, 1e6, &g->mem_bytes, err)) return -1;
    g->mem_bytes *= GIB;
    if (get_figure(d, path, "memory_bw_gbps", 1e-3, 1e7, &g->mem_bw, err)) return -1;
    g->mem_bw *= 1e9;
    return 0;
}

static int parse_level(const cJSON *l, const char *path, Level *lv, Err *err)
{
    static const char *const keys[] = {"name", "count", "link", "bw_gbps", "latency_us",
                                       "notes", NULL};
    if (json_check_keys(l, path, keys, err)) return -1;
    const char *s;
    if (json_get_string(l, path, "name", true, &s, err)) return -1;
    lv->name = xstrdup(s);
    if (json_get_string(l, path, "link", true, &s, err)) return -1;
    lv->link = xstrdup(s);
    if (json_get_string(l, path, "notes", false, &s, err) < 0) return -1;
    int64_t n;
    if (json_get_int(l, path, "count", true, 1, MAX_DEVICES, &n, err)) return -1;
    lv->count = (int)n;
    if (get_figure(l, path, "bw_gbps", 1e-6, 1e7, &lv->bw, err)) return -1;
    lv->bw *= 1e9;
    if (get_figure(l, path, "latency_us", 1e-6, 1e9, &lv->latency, err)) return -1;
    lv->latency /= 1e6;
    return 0;
}

Cluster *cluster_from_json(const cJSON *j, int nodes, Err *err)
{
    static const char *const keys[] = {"name", "devices", "levels", "notes", NULL};
    Cluster *c = xcalloc(1, sizeof *c);
    char path[512];
    const char *s;

    if (json_check_keys(j, "cluster", keys, err)) goto fail;
    if (json_get_string(j, "cluster", "name", true, &s, err)) goto fail;
    c->name = xstrdup(s);
    if (json_get_string(j, "cluster", "notes", false, &s, err) < 0) goto fail;

    /* levels first: a lone device group takes its count from them */
    const cJSON *lv = cJSON_GetObjectItemCaseSensitive(j, "levels");
    if (!cJSON_IsArray(lv) || cJSON_GetArraySize(lv) == 0) {
        err_set(err, "levels: %s", lv ? "expected a non-empty array of levels, innermost first"
                                      : "missing (required)");
        goto fail;
    }
    if (cJSON_GetArraySize(lv) > CLUSTER_MAX_LEVELS) {
        err_set(err, "levels: %d levels, at most %d are supported", cJSON_GetArraySize(lv),
                CLUSTER_MAX_LEVELS);
        goto fail;
    }
    int64_t total = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, lv) {
        int i = c->nlevels++;
        snprintf(path, sizeof path, "levels[%d]", i);
        if (parse_level(it, path, &c->levels[i], err)) goto fail;
        for (int k = 0; k < i; k++)
            if (strcmp(c->levels[k].name, c->levels[i].name) == 0) {
                err_set(err, "%s.name: \"%s\" is already the name of levels[%d]", path,
                        c->levels[i].name, k);
                goto fail;
            }
        total *= c->levels[i].count;
        if (total > MAX_DEVICES) {
            err_set(err, "%s.count: the levels multiply to more than %d devices", path,
                    MAX_DEVICES);
            goto fail;
        }
    }

    const cJSON *dv = cJSON_GetObjectItemCaseSensitive(j, "devices");
    if (!cJSON_IsArray(dv) || cJSON_GetArraySize(dv) == 0) {
        err_set(err, "devices: %s", dv ? "expected a non-empty array of device groups"
                                       : "missing (required)");
        goto fail;
    }
    int ng = cJSON_GetArraySize(dv);
    c->groups = xcalloc(ng, sizeof *c->groups);
    int64_t sum = 0;
    cJSON_ArrayForEach(it, dv) {
        int i = c->ngroups++;
        snprintf(path, sizeof path, "devices[%d]", i);
        if (parse_group(it, path, ng > 1, &c->groups[i], err)) goto fail;
        for (int k = 0; k < i; k++)
            if (strcmp(c->groups[k].name, c->groups[i].name) == 0) {
                err_set(err, "%s.name: \"%s\" is already the name of devices[%d]", path,
                        c->groups[i].name, k);
                goto fail;
            }
        if (c->groups[i].count == 0) c->groups[i].count = (int)total;
        sum += c->groups[i].count;
    }
    if (sum != total) {
        char prod[256] = "";
        for (int i = 0; i < c->nlevels; i++)
            snprintf(prod + strlen(prod), sizeof prod - strlen(prod), "%s%s %d",
                     i ? " x " : "", c->levels[i].name, c->levels[i].count);
        err_set(err, "devices: the group counts sum to %lld but the levels multiply to %lld (%s)",
                (long long)sum, (long long)total, prod);
        goto fail;
    }

    if (nodes > 0) {
        Level *outer = &c->levels[c->nlevels - 1];
        int64_t old = outer->count;
        if ((total / old) * (int64_t)nodes > MAX_DEVICES) {
            err_set(err, "nodes: %d %s(s) would make more than %d devices", nodes, outer->name,
                    MAX_DEVICES);
            goto fail;
        }
        for (int i = 0; i < c->ngroups; i++) {
            int64_t n = (int64_t)c->groups[i].count * nodes;
            if (n % old) {
                err_set(err, "devices[%d].count: %d devices over %lld %s(s) do not scale to "
                        "%d %s(s) (not a whole number)", i, c->groups[i].count,
                        (long long)old, outer->name, nodes, outer->name);
                goto fail;
            }
            c->groups[i].count = (int)(n / old);
        }
        total = total / old * nodes;
        outer->count = nodes;
    }
    c->ndevices = (int)total;
    return c;
fail:
    cluster_free(c);
    return NULL;
}

Cluster *cluster_load(const char *path, int nodes, Err *err)
{
    cJSON *j = json_load(path, err);
    if (!j) return NULL;
    Cluster *c = cluster_from_json(j, nodes, err);
    cJSON_Delete(j);
    if (!c) prefix(err, path);
    return c;
}

/* ----------------------------------------------------------------------------
 * Writing */

cJSON *cluster_to_json(const Cluster *c)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", c->name);
    cJSON *dv = cJSON_AddArrayToObject(j, "devices");
    for (int i = 0; i < c->ngroups; i++) {
        const DeviceGroup *g = &c->groups[i];
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", g->name);
        cJSON_AddStringToObject(d, "kind", g->kind);
        cJSON_AddNumberToObject(d, "count", g->count);
        cJSON *pk = cJSON_AddObjectToObject(d, "peak_tflops");
        for (int t = 0; t < DT_I32; t++)
            cJSON_AddNumberToObject(pk, dtype_keys[t], round12(g->peak_flops[t] / 1e12));
        cJSON_AddNumberToObject(d, "memory_gib", round12(g->mem_bytes / GIB));
        cJSON_AddNumberToObject(d, "memory_bw_gbps", round12(g->mem_bw / 1e9));
        cJSON_AddItemToArray(dv, d);
    }
    cJSON *lv = cJSON_AddArrayToObject(j, "levels");
    for (int i = 0; i < c->nlevels; i++) {
        const Level *l = &c->levels[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", l->name);
        cJSON_AddNumberToObject(o, "count", l->count);
        cJSON_AddStringToObject(o, "link", l->link);
        cJSON_AddNumberToObject(o, "bw_gbps", round12(l->bw / 1e9));
        cJSON_AddNumberToObject(o, "latency_us", round12(l->latency * 1e6));
        cJSON_AddItemToArray(lv, o);
    }
    return j;
}

void cluster_id(const Cluster *c, char out[17])
{
    cJSON *j = cluster_to_json(c);
    cJSON *s = json_sorted(j, NULL);
    json_hash(s, out);
    cJSON_Delete(s);
    cJSON_Delete(j);
}

void cluster_free(Cluster *c)
{
    if (!c) return;
    free(c->name);
    for (int i = 0; i < c->ngroups; i++) {
        free(c->groups[i].name);
        free(c->groups[i].kind);
    }
    free(c->groups);
    for (int i = 0; i < c->nlevels; i++) {
        free(c->levels[i].name);
        free(c->levels[i].link);
    }
    free(c);
}

/* ----------------------------------------------------------------------------
 * Topology queries */

const DeviceGroup *cluster_device(const Cluster *c, int rank)
{
    if (rank < 0) return NULL;
    for (int i = 0; i < c->ngroups; i++) {
        if (rank < c->groups[i].count) return &c->groups[i];
        rank -= c->groups[i].count;
    }
    return NULL;
}

int cluster_common_level(const Cluster *c, int a, int b)
{
    int64_t span = 1;
    for (int i = 0; i < c->nlevels; i++) {
        span *= c->levels[i].count;
        if (a / span == b / span) return i;
    }
    return c->nlevels - 1;
}
