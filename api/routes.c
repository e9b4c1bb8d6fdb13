/*
 * routes.c — what each endpoint does: parse and check the request, call the
 * same functions as the command line (jobs/, db/), answer with the same
 * views (jobs/views.c). And what a worker does with a queued job.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "db/db.h"
#include "ir/util.h"
#include "ir/onnx.h"
#include "ir/zoo.h"
#include "jobs/jobs.h"

extern char **environ;
char *server_metrics(Server *S, size_t *n);

/* ----------------------------------------------------------------------------
 * Helpers */

static Db *open_db(Req *r, enum MHD_Result *out)
{
    Err err = {0};
    Db *db = server_db(r->S, &err);
    if (!db) *out = reply_error(r, 500, "", "the store: %s", err.msg);
    return db;
}

static void close_db(Req *r, Db *db)
{
    server_db_put(r->S, db);
}

static bool is_id(const char *s)
{
    return strlen(s) == 16 && strspn(s, "0123456789abcdef") == 16;
}

/* The leading JSON path of a message ("ops[3].inputs[0]: ...") joined to
 * prefix, into path; the path is prefix alone when the message has none. */
static void err_path(const char *prefix, const char *msg, char *path, size_t n)
{
    /* names, dots, [index] and ["key"] (a strategy's op or param pattern) */
    static const char name[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.";
    size_t k = 0;
    for (;;) {
        size_t w = strspn(msg + k, name);
        k += w;
        if (msg[k] == '[' && msg[k + 1] == '"') {
            const char *q = strchr(msg + k + 2, '"');
            if (!q || q[1] != ']') break;
            k = (size_t)(q + 2 - msg);
        } else if (msg[k] == '[' && msg[k + 1] >= '0' && msg[k + 1] <= '9') {
            size_t d = strspn(msg + k + 1, "0123456789");
            if (msg[k + 1 + d] != ']') break;
            k += d + 2;
        } else if (!w) {
            break;
        }
    }
    if (!(k > 0 && msg[k] == ':' && msg[k + 1] == ' ')) {
        snprintf(path, n, "%s", prefix);
        return;
    }
    /* the readers name the document they read ("model.name"); here the
     * document is the body, or the member `prefix` of it */
    static const char *const roots[] = { "model", "cluster", "strategy" };
    for (int i = 0; i < 3; i++) {
        size_t m = strlen(roots[i]);
        if (k >= m && !strncmp(msg, roots[i], m) && (k == m || msg[m] == '.')) {
            msg += k == m ? m : m + 1;
            k -= k == m ? m : m + 1;
            break;
        }
    }
    snprintf(path, n, "%s%s%.*s", prefix, prefix[0] && k ? "." : "", (int)k, msg);
    /* a reader's 'PATH: unknown field "KEY"' is about the field PATH.KEY */
    static const char unknown[] = ": unknown field \"";
    const char *key = msg + k;
    if (!strncmp(key, unknown, sizeof unknown - 1)) {
        key += sizeof unknown - 1;
        size_t m = strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
        size_t used = strlen(path);
        if (m > 0 && key[m] == '"' && used + 1 + m < n)
            snprintf(path + used, n - used, "%s%.*s", used ? "." : "", (int)m, key);
    }
}

static enum MHD_Result bad(Req *r, const char *prefix, const Err *err)
{
    char path[200];
    err_path(prefix, err->msg, path, sizeof path);
    return reply_error(r, 400, path, "%s", err->msg);
}

/* The most threads this server gives one search (the command line's
 * bound is SEARCH_THREADS_MAX: a server is shared). */
#define API_THREADS_MAX 64

/* The largest seed a JSON number holds exactly, and none past it rounds
 * to (2^53 - 1, JavaScript's MAX_SAFE_INTEGER). */
#define SEED_MAX (((int64_t)1 << 53) - 1)

/* Is the request's Content-Type one a JSON body may come with: none,
 * application/json or a +json type, or curl's default for -d (which sends
 * the bytes as they are)? */
static bool json_content_type(const Req *r)
{
    const char *t = req_header(r, "Content-Type");
    if (!t) return true;
    size_t n = strcspn(t, "; \t");
    static const char *const ok[] = { "application/json", "application/x-www-form-urlencoded" };
    for (int i = 0; i < 2; i++)
        if (n == strlen(ok[i]) && !strncasecmp(t, ok[i], n)) return true;
    return n > 17 && !strncasecmp(t, "application/", 12) && !strncasecmp(t + n - 5, "+json", 5);
}

/* The body as a JSON object; NULL after answering 400 (415 for a body
 * declared as something else). */
static cJSON *body_object(Req *r, enum MHD_Result *out)
{
    if (!json_content_type(r)) {
        const char *t = req_header(r, "Content-Type");
        *out = reply_error(r, 415, "", "Content-Type %.*s: this body is read as JSON (send "
                           "application/json)", (int)strcspn(t, ";"), t);
        return NULL;
    }
    if (!r->body || !r->len) {
        *out = reply_error(r, 400, "", "the request needs a JSON object as its body");
        return NULL;
    }
    size_t at;
    Err err = { { 0 } };
    cJSON *j = json_parse_strict(r->body, r->len, &at, &err);
    if (!j) {
        *out = reply_error(r, 400, "", "the body is not one JSON value (near byte %zu): %s", at,
                           err.msg);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        *out = reply_error(r, 400, "", "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* The JSON path of member key of the object being read (Req.in). */
static void field_path(const Req *r, const char *key, char *path, size_t n)
{
    snprintf(path, n, "%s%s%s", r->in ? r->in : "", r->in ? "." : "", key);
}

/* Every member of a request object is one of `keys` (NULL-terminated): a
 * typo is a 400 naming it, not a default silently used. 0, or -1 after
 * answering. */
static int known_fields(Req *r, const cJSON *o, const char *const *keys, enum MHD_Result *out)
{
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next) {
        int i = 0;
        while (keys[i] && strcmp(c->string, keys[i])) i++;
        if (keys[i]) continue;
        char list[256] = "", path[160];
        for (i = 0; keys[i]; i++) {
            size_t at = strlen(list);
            snprintf(list + at, sizeof list - at, "%s%s", i ? ", " : "", keys[i]);
        }
        field_path(r, c->string, path, sizeof path);
        *out = reply_error(r, 400, path, "%s: unknown field (known: %s)", path, list);
        return -1;
    }
    return 0;
}

/* Optional members of a request object, checked: 0 ok (absent leaves *v), -1
 * after answering 400 with the member's path. */
static int opt_int(Req *r, const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *v,
                   enum MHD_Result *out)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x) return 0;
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < lo ||
        x->valuedouble > hi) {
        char path[160];
        field_path(r, key, path, sizeof path);
        *out = reply_error(r, 400, path, "%s: expected an integer from %lld to %lld", path,
                           (long long)lo, (long long)hi);
        return -1;
    }
    *v = (int64_t)x->valuedouble;
    return 0;
}

static int opt_str(Req *r, const cJSON *o, const char *key, const char **v, enum MHD_Result *out)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x) return 0;
    if (!cJSON_IsString(x)) {
        char path[160];
        field_path(r, key, path, sizeof path);
        *out = reply_error(r, 400, path, "%s: expected a string", path);
        return -1;
    }
    *v = x->valuestring;
    return 0;
}

static int opt_bool(Req *r, const cJSON *o, const char *key, bool *v, enum MHD_Result *out)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x) return 0;
    if (!cJSON_IsBool(x)) {
        char path[160];
        field_path(r, key, path, sizeof path);
        *out = reply_error(r, 400, path, "%s: expected true or false", path);
        return -1;
    }
    *v = cJSON_IsTrue(x);
    return 0;
}

/* Query integer: absent leaves *v; bad: 400 naming it. */
static int query_int(Req *r, const char *key, int64_t lo, int64_t hi, int64_t *v,
                     enum MHD_Result *out)
{
    const char *s = req_query(r, key);
    if (!s) return 0;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    /* digits, with a leading '-' at most: no blanks or '+', which strtoll
     * would skip */
    bool plain = isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1]));
    if (!plain || errno || end == s || *end || x < lo || x > hi) {
        *out = reply_error(r, 400, key, "query %s=%s: expected an integer from %lld to %lld", key,
                           s, (long long)lo, (long long)hi);
        return -1;
    }
    *v = x;
    return 0;
}

/* A stored model or cluster named by body member key (an id): loaded, or
 * NULL after answering. */
static Graph *stored_model(Req *r, Db *db, const cJSON *body, char id[17], enum MHD_Result *out)
{
    const char *s = NULL;
    if (opt_str(r, body, "model", &s, out)) return NULL;
    if (!s || !is_id(s)) {
        *out = reply_error(r, 400, "model", "model: the id of a stored model (16 hex digits, "
                           "from POST /v1/models) is needed");
        return NULL;
    }
    DbModel m;
    Err err = {0};
    int rc = db_model_get(db, s, &m, &err);
    if (rc) {
        *out = rc > 0 ? reply_error(r, 400, "model", "model: no stored model has id %s", s)
                      : reply_error(r, 500, "", "%s", err.msg);
        return NULL;
    }
    cJSON *j = cJSON_Parse(m.json);
    Graph *g = j ? graph_from_json(j, &err) : NULL;
    cJSON_Delete(j);
    db_model_free(&m);
    if (!g) *out = reply_error(r, 500, "", "stored model %s does not load: %s", s, err.msg);
    else memcpy(id, s, 17);
    return g;
}

static Cluster *stored_cluster(Req *r, Db *db, const cJSON *body, char id[17],
                               enum MHD_Result *out)
{
    const char *s = NULL;
    if (opt_str(r, body, "cluster", &s, out)) return NULL;
    if (!s || !is_id(s)) {
        *out = reply_error(r, 400, "cluster", "cluster: the id of a stored cluster (16 hex "
                           "digits, from POST /v1/clusters) is needed");
        return NULL;
    }
    DbCluster dc;
    Err err = {0};
    int rc = db_cluster_get(db, s, &dc, &err);
    if (rc) {
        *out = rc > 0 ? reply_error(r, 400, "cluster", "cluster: no stored cluster has id %s", s)
                      : reply_error(r, 500, "", "%s", err.msg);
        return NULL;
    }
    cJSON *j = cJSON_Parse(dc.json);
    Cluster *c = j ? cluster_from_json(j, 0, &err) : NULL;
    cJSON_Delete(j);
    db_cluster_free(&dc);
    if (!c) *out = reply_error(r, 500, "", "stored cluster %s does not load: %s", s, err.msg);
    else memcpy(id, s, 17);
    return c;
}

/* ----------------------------------------------------------------------------
 * Service */

static enum MHD_Result h_healthz(Req *r)
{
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    close_db(r, db);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", "ok");
    pthread_mutex_lock(&r->S->mu);
    cJSON_AddNumberToObject(j, "queued", r->S->queued);
    cJSON_AddNumberToObject(j, "running", r->S->running);
    pthread_mutex_unlock(&r->S->mu);
    return reply_json(r, 200, j);
}

static enum MHD_Result h_metrics(Req *r)
{
    size_t n = 0;
    char *text = server_metrics(r->S, &n);
    return reply_text(r, 200, "text/plain; version=0.0.4", text, n);
}

static enum MHD_Result h_page(Req *r)
{
    return reply_text(r, 200, "text/html; charset=utf-8", xstrdup(PAGE_HTML), strlen(PAGE_HTML));
}

/* ----------------------------------------------------------------------------
 * Models and clusters */

static enum MHD_Result h_models_list(Req *r)
{
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbModel *rows;
    int n;
    Err err = {0};
    int rc = db_model_list(db, &rows, &n, &err);
    close_db(r, db);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_model(&rows[i], false));
    db_model_list_free(rows, n);
    return reply_json(r, 200, arr);
}

static enum MHD_Result h_model_get(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a model id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbModel m;
    Err err = {0};
    int rc = db_model_get(db, r->params[0], &m, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no model with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *j = view_model(&m, true);
    db_model_free(&m);
    return reply_json(r, 200, j);
}

/* {"zoo": kind, "options": {key: value}}: the zoo's model. */
static Graph *zoo_model(Req *r, const cJSON *body, enum MHD_Result *out)
{
    const char *kind = NULL;
    static const char *const fields[] = { "zoo", "options", NULL };
    if (known_fields(r, body, fields, out) || opt_str(r, body, "zoo", &kind, out)) return NULL;
    if (!kind) {
        *out = reply_error(r, 400, "zoo", "zoo: expected the name of a zoo model");
        return NULL;
    }
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(body, "options"), *it;
    if (opts && !cJSON_IsObject(opts)) {
        *out = reply_error(r, 400, "options", "options: expected an object of zoo options");
        return NULL;
    }
    int n = cJSON_GetArraySize(opts), k = 0;
    const char **keys = xcalloc((size_t)n + 1, sizeof *keys);
    char **vals = xcalloc((size_t)n + 1, sizeof *vals);
    Graph *g = NULL;
    cJSON_ArrayForEach(it, opts) {
        keys[k] = it->string;
        if (cJSON_IsString(it)) vals[k] = xstrdup(it->valuestring);
        else if (cJSON_IsNumber(it) || cJSON_IsBool(it)) vals[k] = cJSON_PrintUnformatted(it);
        else {
            char path[160];
            snprintf(path, sizeof path, "options.%s", it->string);
            *out = reply_error(r, 400, path, "%s: expected a number, string or boolean", path);
            goto out;
        }
        k++;
    }
    Err err = {0};
    g = zoo_build(kind, n, keys, (const char *const *)vals, &err);
    if (!g) {
        /* the zoo names an option as the command line spells it ("option --heads") */
        const char *at = strstr(err.msg, "option --");
        char path[160] = "options";
        if (at) {
            at += strlen("option --");
            snprintf(path, sizeof path, "options.%.*s", (int)strcspn(at, " :"), at);
        } else if (!strncmp(err.msg, "zoo: unknown model kind", 23)) {
            snprintf(path, sizeof path, "zoo");
        }
        *out = reply_error(r, 400, path, "%s", err.msg);
    }
out:
    for (int i = 0; i < n; i++) {
        if (vals[i] && cJSON_IsString(cJSON_GetArrayItem(opts, i))) free(vals[i]);
        else if (vals[i]) cJSON_free(vals[i]);
    }
    free(keys);
    free(vals);
    return g;
}

static enum MHD_Result h_models_post(Req *r)
{
    const char *type = req_header(r, "Content-Type");
    enum MHD_Result out;
    Err err = {0};
    Graph *g = NULL;
    /* application/onnx, in any case, with parameters or not */
    if (type && strcspn(type, "; \t") == 16 && !strncasecmp(type, "application/onnx", 16)) {
        /* an ONNX model: imported as `strata model import` does */
        int64_t batch = 0;
        if (query_int(r, "batch", 1, 1 << 30, &batch, &out)) return out;
        if (!r->body || !r->len) return reply_error(r, 400, "", "the request needs the ONNX "
                                                    "model as its body");
        OnnxOpts o = { .batch = batch, .name = req_query(r, "name"), .loss = req_query(r, "loss") };
        if (onnx_check_opts(&o, &err)) return bad(r, "", &err);     /* names loss or name */
        cJSON *j = onnx_import((const uint8_t *)r->body, r->len, &o, &err);
        g = j ? graph_from_json(j, &err) : NULL;
        cJSON_Delete(j);
        if (!g) return reply_error(r, 400, "", "%s", err.msg);
    } else {
        cJSON *body = body_object(r, &out);
        if (!body) return out;
        g = cJSON_GetObjectItemCaseSensitive(body, "zoo") ? zoo_model(r, body, &out)
                                                          : graph_from_json(body, &err);
        bool answered = cJSON_GetObjectItemCaseSensitive(body, "zoo") != NULL;
        cJSON_Delete(body);
        if (!g) return answered ? out : bad(r, "", &err);
    }
    GraphStats st;
    if (graph_stats(g, &st, &err)) {
        graph_free(g);
        return bad(r, "", &err);
    }
    DbModel m = { .name = g->name, .params = st.params, .train_flops = st.train_flops };
    char *text = graph_text(g, m.id);
    m.json = text;
    graph_stats_free(&st);
    Db *db = open_db(r, &out);
    int rc = db ? db_model_put(db, &m, &err) : -1;
    DbModel got;
    if (!rc) rc = db_model_get(db, m.id, &got, &err);
    close_db(r, db);
    cJSON_free(text);
    graph_free(g);
    if (!db) return out;
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *j = view_model(&got, false);
    db_model_free(&got);
    return reply_json(r, 201, j);
}

static enum MHD_Result h_clusters_list(Req *r)
{
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbCluster *rows;
    int n;
    Err err = {0};
    int rc = db_cluster_list(db, &rows, &n, &err);
    close_db(r, db);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_cluster(&rows[i], false));
    db_cluster_list_free(rows, n);
    return reply_json(r, 200, arr);
}

static enum MHD_Result h_cluster_get(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a cluster id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbCluster c;
    Err err = {0};
    int rc = db_cluster_get(db, r->params[0], &c, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no cluster with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *j = view_cluster(&c, true);
    db_cluster_free(&c);
    return reply_json(r, 200, j);
}

/* A cluster JSON; ?nodes=N scales a template to N nodes. */
static enum MHD_Result h_clusters_post(Req *r)
{
    enum MHD_Result out;
    int64_t nodes = 0;
    if (query_int(r, "nodes", 1, 1 << 20, &nodes, &out)) return out;
    cJSON *body = body_object(r, &out);
    if (!body) return out;
    Err err = {0};
    Cluster *c = cluster_from_json(body, (int)nodes, &err);
    cJSON_Delete(body);
    if (!c) return bad(r, "", &err);
    cJSON *cj = cluster_to_json(c);
    char *text = cJSON_PrintUnformatted(cj);
    DbCluster dc = { .name = c->name, .json = text, .ndevices = c->ndevices };
    cluster_id(c, dc.id);
    cJSON_Delete(cj);
    Db *db = open_db(r, &out);
    int rc = db ? db_cluster_put(db, &dc, &err) : -1;
    DbCluster got;
    if (!rc) rc = db_cluster_get(db, dc.id, &got, &err);
    close_db(r, db);
    cluster_free(c);
    cJSON_free(text);
    if (!db) return out;
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *j = view_cluster(&got, false);
    db_cluster_free(&got);
    return reply_json(r, 201, j);
}

/* ----------------------------------------------------------------------------
 * Searches */

static enum MHD_Result h_searches_list(Req *r)
{
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbSearch *rows;
    int n;
    Err err = {0};
    int rc = db_search_list(db, &rows, &n, &err);
    close_db(r, db);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_search(&rows[i], false));
    db_search_list_free(rows, n);
    return reply_json(r, 200, arr);
}

static enum MHD_Result h_searches_post(Req *r)
{
    enum MHD_Result out;
    cJSON *body = body_object(r, &out);
    if (!body) return out;
    Db *db = open_db(r, &out);
    Job *j = xcalloc(1, sizeof *j);
    j->kind = JOB_SEARCH;
    j->search = (SearchOpts){ .algo = SEARCH_AUTO, .seed = 1, .budget_s = 30 };
    Graph *g = NULL;
    Cluster *c = NULL;
    const char *algo = NULL, *budget = NULL, *cm = NULL;
    int64_t seed = 1, threads = 1, devices = 0;
    bool lossy = false;
    Err err = {0};
    static const char *const keys[] = { "model", "cluster", "algo", "budget", "seed", "threads",
                                        "devices", "allow_lossy", "costmodel", NULL };
    if (!db || known_fields(r, body, keys, &out)) goto fail;
    if (!(g = stored_model(r, db, body, j->model_id, &out))) goto fail;
    if (!(c = stored_cluster(r, db, body, j->cluster_id, &out))) goto fail;
    if (opt_str(r, body, "algo", &algo, &out) || opt_str(r, body, "costmodel", &cm, &out) ||
        opt_int(r, body, "seed", 0, SEED_MAX, &seed, &out) ||
        opt_int(r, body, "threads", 1, API_THREADS_MAX, &threads, &out) ||
        opt_int(r, body, "devices", 1, 1 << 20, &devices, &out) ||
        opt_bool(r, body, "allow_lossy", &lossy, &out))
        goto fail;
    if (algo && search_algo_parse(algo, &j->search.algo)) {
        out = reply_error(r, 400, "algo", "algo \"%s\": unknown (one of: auto, exhaustive, mcmc, "
                          "rl, baselines)", algo);
        goto fail;
    }
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(body, "budget");
    if (cJSON_IsNumber(b)) {
        if (!(b->valuedouble > 0) || !isfinite(b->valuedouble) || b->valuedouble > 86400) {
            out = reply_error(r, 400, "budget", "budget: seconds, more than 0 and at most 86400, or a text "
                              "such as \"30s\" or \"20000evals\"");
            goto fail;
        }
        j->search.budget_s = b->valuedouble;
        snprintf(j->budget_text, sizeof j->budget_text, "%gs", b->valuedouble);
    } else if (b) {
        if (opt_str(r, body, "budget", &budget, &out)) goto fail;
        if (job_parse_budget(budget, &j->search.budget_s, &j->search.budget_evals, &err)) {
            out = reply_error(r, 400, "budget", "budget: %s", err.msg);
            goto fail;
        }
        snprintf(j->budget_text, sizeof j->budget_text, "%.63s", budget);
    } else {
        snprintf(j->budget_text, sizeof j->budget_text, "30s");
    }
    if (cm) {
        DbCostModel m;
        int rc = is_id(cm) ? db_costmodel_get(db, cm, &m, &err) : 1;
        if (rc) {
            out = reply_error(r, 400, "costmodel", "costmodel: no stored cost model has id %s", cm);
            goto fail;
        }
        db_costmodel_free(&m);
        snprintf(j->costmodel_id, sizeof j->costmodel_id, "%s", cm);
    }
    if (devices > c->ndevices) {
        out = reply_error(r, 400, "devices", "devices: %lld asked for, cluster %s has %d",
                          (long long)devices, c->name, c->ndevices);
        goto fail;
    }
    j->search.seed = (uint64_t)seed;
    j->search.threads = (int)threads;
    j->search.world = (int)devices;
    j->search.lossy = lossy;
    /* a place in the queue first, so a full queue leaves no row behind */
    if (!server_reserve(r->S)) {
        out = reply_error(r, 429, "", "the job queue is full (%d waiting); try again later",
                          r->S->o.queue);
        goto fail;
    }
    SearchJobOpts jo = { .db_path = r->S->db_path, .search = j->search,
                         .budget_text = j->budget_text, .costmodel_id = cm };
    if (job_search_queue(g, c, &jo, j->id, &err)) {
        server_unreserve(r->S);
        /* what is left is about the model and cluster together, no one field */
        out = reply_error(r, 400, "", "%s", err.msg);
        goto fail;
    }
    server_enqueue_reserved(r->S, j);
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "id", j->id);
    cJSON_AddStringToObject(res, "status", "queued");
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/searches/%s", j->id);
    cJSON_Delete(body);
    graph_free(g);
    cluster_free(c);
    close_db(r, db);
    struct MHD_Response *resp = json_response(res);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Location", loc);
    return reply_response(r, 202, resp);
fail:
    free(j);
    cJSON_Delete(body);
    graph_free(g);
    cluster_free(c);
    close_db(r, db);
    return out;
}

static enum MHD_Result h_search_get(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a search id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbSearch x;
    Err err = {0};
    int rc = db_search_get(db, r->params[0], &x, &err);
    char **ev = NULL;
    int n = 0;
    if (!rc && x.nevents > 0) rc = db_search_events(db, x.id, x.nevents - 1, &ev, &n, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no search with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *j = view_search(&x, true);
    cJSON *last = n ? cJSON_Parse(ev[n - 1]) : NULL;
    if (last) cJSON_AddItemToObject(j, "latest_event", last);
    db_search_events_free(ev, n);
    db_search_free(&x);
    return reply_json(r, 200, j);
}

static enum MHD_Result h_search_delete(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a search id (16 hex digits)", r->params[0]);
    Server *S = r->S;
    pthread_mutex_lock(&S->mu);
    Job *j = server_find(S, r->params[0]);
    char status[24] = "";
    if (j && j->kind == JOB_SEARCH) {
        snprintf(status, sizeof status, "%s", j->status);
        j->stop = 1;
        /* a queued one leaves the queue now: its place is free, and a
         * second cancel finds it cancelled */
        if (!strcmp(status, "queued")) {
            server_unqueue(S, j);
            snprintf(j->status, sizeof j->status, "cancelled");
        }
    }
    pthread_mutex_unlock(&S->mu);
    enum MHD_Result out;
    if (!strcmp(status, "queued")) {
        Db *db = open_db(r, &out);
        if (!db) return out;
        Err err = {0};
        int rc = db_search_finish(db, r->params[0], "cancelled", NULL, NULL, &err);
        close_db(r, db);
        if (rc) return reply_error(r, 500, "", "%s", err.msg);
        cJSON *res = cJSON_CreateObject();
        cJSON_AddStringToObject(res, "id", r->params[0]);
        cJSON_AddStringToObject(res, "status", "cancelled");
        return reply_json(r, 200, res);
    }
    if (!strcmp(status, "running")) {
        cJSON *res = cJSON_CreateObject();
        cJSON_AddStringToObject(res, "id", r->params[0]);
        cJSON_AddStringToObject(res, "status", "stopping");
        return reply_json(r, 202, res);
    }
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbSearch x;
    Err err = {0};
    int rc = db_search_get(db, r->params[0], &x, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no search with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    out = reply_error(r, 409, "", "search %s is not running (%s); nothing to cancel", x.id,
                      x.status);
    db_search_free(&x);
    return out;
}

/* Continues a search a server left interrupted (or one stopped): the same
 * model, cluster, algorithm, seed and budget, from the best point its
 * events recorded, in the same row, its events numbered on. */
static enum MHD_Result h_search_resume(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a search id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbSearch x;
    Err err = {0};
    int rc = db_search_get(db, r->params[0], &x, &err);
    if (rc) {
        close_db(r, db);
        return rc > 0 ? reply_error(r, 404, "", "no search with id %s", r->params[0])
                      : reply_error(r, 500, "", "%s", err.msg);
    }
    Job *j = NULL;
    char **ev = NULL;
    int n = 0;
    if (strcmp(x.status, "interrupted") && strcmp(x.status, "stopped")) {
        out = reply_error(r, 409, "", "search %s is %s; only an interrupted or stopped search "
                          "resumes", x.id, x.status);
        goto done;
    }
    j = xcalloc(1, sizeof *j);
    j->kind = JOB_SEARCH;
    memcpy(j->id, x.id, 17);
    memcpy(j->model_id, x.model_id, 17);
    memcpy(j->cluster_id, x.cluster_id, 17);
    j->first_seq = x.nevents;
    j->search = (SearchOpts){ .seed = (uint64_t)x.seed, .world = x.devices };
    if (search_algo_parse(x.method, &j->search.algo)) j->search.algo = SEARCH_AUTO;
    cJSON *b = x.budget_json ? cJSON_Parse(x.budget_json) : NULL;
    const cJSON *v;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(b, "seconds"))) j->search.budget_s = v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(b, "evaluations")))
        j->search.budget_evals = (long)v->valuedouble;
    const char *asked = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "asked"));
    snprintf(j->budget_text, sizeof j->budget_text, "%.63s", asked ? asked : "30s");
    cJSON_Delete(b);
    if (j->search.budget_s <= 0 && j->search.budget_evals <= 0) j->search.budget_s = 30;
    /* and the options it searched with: the same space, the same cost model */
    cJSON *opts = x.options_json ? cJSON_Parse(x.options_json) : NULL;
    j->search.lossy = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(opts, "allow_lossy"));
    j->search.untie = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(opts, "untie"));
    /* threads as it had them, up to what this server gives a search */
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(opts, "threads")) &&
        v->valuedouble >= 1 && v->valuedouble <= SEARCH_THREADS_MAX)
        j->search.threads = v->valuedouble > API_THREADS_MAX ? API_THREADS_MAX : (int)v->valuedouble;
    const char *cmid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(opts, "costmodel"));
    if (cmid && is_id(cmid)) snprintf(j->costmodel_id, sizeof j->costmodel_id, "%s", cmid);
    cJSON_Delete(opts);
    /* the best point its events recorded, the latest first */
    if (db_search_events(db, x.id, 0, &ev, &n, &err) == 0)
        for (int i = n - 1; i >= 0 && !j->resume; i--) {
            cJSON *e = cJSON_Parse(ev[i]);
            const cJSON *pt = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(e, "best"), "point");
            if (cJSON_IsObject(pt)) j->resume = cJSON_PrintUnformatted(pt);
            cJSON_Delete(e);
        }
    /* one resume wins: the status moves from what was read, or another
     * request moved it first */
    rc = db_search_move_status(db, x.id, x.status, "queued", &err);
    if (rc) {
        out = rc > 0 ? reply_error(r, 409, "", "search %s is being resumed already", x.id)
                     : reply_error(r, 500, "", "%s", err.msg);
        goto done;
    }
    if (!server_enqueue(r->S, j)) {
        db_search_set_status(db, x.id, x.status, &err);
        out = reply_error(r, 429, "", "the job queue is full (%d waiting); try again later",
                          r->S->o.queue);
        goto done;
    }
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "id", x.id);
    cJSON_AddStringToObject(res, "status", "queued");
    cJSON_AddBoolToObject(res, "from_best", j->resume != NULL);
    j = NULL;
    out = reply_json(r, 202, res);
done:
    if (j) {
        free(j->resume);
        free(j);
    }
    db_search_events_free(ev, n);
    db_search_free(&x);
    close_db(r, db);
    return out;
}

/* Events of a search that is still going, as they happen. */
typedef struct {
    Server *S;
    Waiter w;                      /* its connection, suspended while nothing is new */
    char id[17];
    int after;
    bool sse, done;
    bool counted;                  /* in Server.open_streams */
    char *buf;
    size_t len, off;
    double last_write;
} EventStream;

static bool finished(const char *status)
{
    return strcmp(status, "queued") && strcmp(status, "running");
}

/* Appends the events after st->after; sets done when the search has ended
 * and every event is out. */
static void stream_fill(EventStream *st)
{
    Err err = {0};
    Db *db = server_db(st->S, &err);
    DbSearch x;
    char **ev = NULL;
    int n = 0;
    if (!db || db_search_get(db, st->id, &x, &err)) {
        server_db_put(st->S, db);
        st->done = true;
        return;
    }
    bool over = finished(x.status);
    char status[24];
    snprintf(status, sizeof status, "%s", x.status);
    db_search_free(&x);
    if (db_search_events(db, st->id, st->after, &ev, &n, &err)) n = 0;
    server_db_put(st->S, db);
    FILE *f = open_memstream(&st->buf, &st->len);
    for (int i = 0; i < n; i++) {
        st->after++;
        if (st->sse) fprintf(f, "id: %d\nevent: search\ndata: %s\n\n", st->after, ev[i]);
        else fprintf(f, "%s\n", ev[i]);
    }
    db_search_events_free(ev, n);
    if (over && n == 0) {
        st->done = true;
        if (st->sse) fprintf(f, "event: end\ndata: {\"status\":\"%s\"}\n\n", status);
    }
    fclose(f);
    st->off = 0;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    EventStream *st = cls;
    Server *S = st->S;
    for (;;) {
        if (st->off < st->len) {
            size_t k = st->len - st->off < max ? st->len - st->off : max;
            memcpy(out, st->buf + st->off, k);
            st->off += k;
            st->last_write = now_s();
            return (ssize_t)k;
        }
        free(st->buf);
        st->buf = NULL;
        st->len = st->off = 0;
        if (st->done) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&S->mu);
        uint64_t gen = S->news_gen;
        bool end = S->streams_end;
        pthread_mutex_unlock(&S->mu);
        stream_fill(st);
        if (st->len || st->done) continue;
        if (end) {
            st->done = true;
            continue;
        }
        /* SSE: a comment now and then keeps proxies from closing it */
        if (st->sse && now_s() - st->last_write >= 15) {
            st->buf = xstrdup(":\n\n");
            st->len = 3;
            continue;
        }
        /* nothing new: the connection sleeps until news (or the next tick) */
        if (!st->w.con || !server_wait(S, &st->w, gen)) continue;
        MHD_suspend_connection(st->w.con);
        return 0;
    }
}

static void stream_free(void *cls)
{
    EventStream *st = cls;
    if (st->w.con) server_forget(st->S, &st->w);
    if (st->counted) {
        pthread_mutex_lock(&st->S->mu);
        st->S->open_streams--;
        pthread_cond_broadcast(&st->S->tick);
        pthread_mutex_unlock(&st->S->mu);
    }
    free(st->buf);
    free(st);
}

static enum MHD_Result h_search_events(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a search id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    int64_t after = 0, follow = 0;
    if (query_int(r, "after", 0, INT32_MAX, &after, &out) ||
        query_int(r, "follow", 0, 1, &follow, &out))
        return out;
    const char *accept = req_header(r, "Accept");
    bool sse = accept && strstr(accept, "text/event-stream");
    const char *last = req_header(r, "Last-Event-ID");
    if (sse && last) {
        char *end;
        long v = strtol(last, &end, 10);
        if (end != last && !*end && v >= 0 && v <= INT32_MAX) after = v;
    }
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbSearch x;
    Err err = {0};
    int rc = db_search_get(db, r->params[0], &x, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no search with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    EventStream *st = xcalloc(1, sizeof *st);
    st->S = r->S;
    memcpy(st->id, x.id, 17);
    db_search_free(&x);
    st->after = (int)after;
    st->sse = sse;
    st->w.con = r->con;
    st->last_write = now_s();
    const char *type = sse ? "text/event-stream" : "application/x-ndjson";
    if (!follow) {
        stream_fill(st);
        char *text = st->buf ? st->buf : xstrdup("");
        size_t n = st->buf ? st->len : 0;
        st->buf = NULL;
        stream_free(st);
        return reply_text(r, 200, type, text, n);
    }
    pthread_mutex_lock(&r->S->mu);
    r->S->open_streams++;
    st->counted = true;
    pthread_mutex_unlock(&r->S->mu);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                                                  stream_read, st, stream_free);
    if (!resp) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    return reply_response(r, 200, resp);
}

/* ----------------------------------------------------------------------------
 * Estimates and plans */

/* The field of a strategy shorthand a builder's message is about, into
 * path: "megatron: tp 3 does not divide world 8" is strategy.tp; an
 * unknown kind is strategy.kind; anything else the strategy as a whole. */
static void shorthand_path(const char *msg, const char *const *keys, char *path, size_t n)
{
    snprintf(path, n, "strategy");
    if (!strncmp(msg, "unknown strategy kind", 21)) {
        snprintf(path, n, "strategy.kind");
        return;
    }
    const char *w = strstr(msg, ": ");
    if (!w) return;
    w += 2;
    /* the built strategy's own path ("pipeline.microbatches: ...",
     * "params[\"*\"].sync.compress: ...") names the option by its last part */
    size_t tok = strcspn(w, ": ");
    const char *last = w;
    for (size_t i = 0; w[tok] == ':' && i < tok; i++)
        if (w[i] == '.') last = w + i + 1;
    w = last;
    size_t k = strspn(w, "abcdefghijklmnopqrstuvwxyz_");
    static const struct { const char *word, *key; } alias[] = {
        { "virtual", "virtual_stages" }, { "sequence", "sequence_parallel" },
    };
    for (size_t a = 0; a < sizeof alias / sizeof alias[0]; a++)
        if (k == strlen(alias[a].word) && !strncmp(w, alias[a].word, k)) {
            snprintf(path, n, "strategy.%s", alias[a].key);
            return;
        }
    for (int i = 0; keys[i]; i++)
        if (k == strlen(keys[i]) && !strncmp(w, keys[i], k)) {
            snprintf(path, n, "strategy.%s", keys[i]);
            return;
        }
}

/* The strategy member: a strategy JSON, or {"kind": "megatron", "options"...}
 * as `strata strategy build` takes it. */
static Strategy *body_strategy(Req *r, const cJSON *body, const Graph *g, const Cluster *c,
                               enum MHD_Result *out)
{
    const cJSON *sj = cJSON_GetObjectItemCaseSensitive(body, "strategy");
    Err err = {0};
    if (!cJSON_IsObject(sj)) {
        *out = reply_error(r, 400, "strategy", "strategy: a strategy JSON object is needed "
                           "(or {\"kind\": \"megatron\", \"tp\": 8, ...})");
        return NULL;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(sj, "kind");
    if (kind) {
        if (!cJSON_IsString(kind)) {
            *out = reply_error(r, 400, "strategy.kind", "strategy.kind: expected a string");
            return NULL;
        }
        StrategyOpts o = {0};
        enum { NINT = 8 };
        int64_t v[NINT] = { 0 };
        static const char *const keys[] = { "tp", "pp", "dp", "microbatches", "virtual_stages",
                                             "zero", "ps_shards", "staleness", "kind", "recompute",
                                             "sequence_parallel", "compress", NULL };
        bool rc = false, sp = false;
        r->in = "strategy";
        int bad_field = known_fields(r, sj, keys, out);
        for (int i = 0; i < NINT && !bad_field; i++)
            bad_field = opt_int(r, sj, keys[i], 0, 1 << 20, &v[i], out);
        if (!bad_field) bad_field = opt_bool(r, sj, "recompute", &rc, out);
        if (!bad_field) bad_field = opt_bool(r, sj, "sequence_parallel", &sp, out);
        if (!bad_field) bad_field = opt_str(r, sj, "compress", &o.compress, out);
        r->in = NULL;
        if (bad_field) return NULL;
        o.tp = (int)v[0];
        o.pp = (int)v[1];
        o.dp = (int)v[2];
        o.microbatches = (int)v[3];
        o.virtual_stages = (int)v[4];
        o.zero = (int)v[5];
        o.ps_shards = (int)v[6];
        o.staleness = (int)v[7];
        o.recompute = rc;
        o.sequence_parallel = sp;
        cJSON *built = strategy_build(kind->valuestring, g, c, &o, &err);
        Strategy *s = built ? strategy_from_json(built, g, c, &err) : NULL;
        cJSON_Delete(built);
        if (!s) {
            char path[64];
            shorthand_path(err.msg, keys, path, sizeof path);
            *out = reply_error(r, 400, path, "%s", err.msg);
        }
        return s;
    }
    Strategy *s = strategy_from_json(sj, g, c, &err);
    if (!s) *out = bad(r, "strategy", &err);
    return s;
}

static enum MHD_Result h_estimate(Req *r)
{
    enum MHD_Result out;
    cJSON *body = body_object(r, &out);
    if (!body) return out;
    Db *db = open_db(r, &out);
    Graph *g = NULL;
    Cluster *c = NULL;
    Strategy *s = NULL;
    char mid[17], cid[17];
    const char *cm = NULL;
    Predictor pd;
    bool have_pd = false;
    Err err = {0};
    static const char *const keys[] = { "model", "cluster", "strategy", "costmodel", NULL };
    if (!db || known_fields(r, body, keys, &out) || !(g = stored_model(r, db, body, mid, &out)) ||
        !(c = stored_cluster(r, db, body, cid, &out)) || opt_str(r, body, "costmodel", &cm, &out))
        goto done;
    close_db(r, db);
    db = NULL;
    if (cm && !is_id(cm)) {
        out = reply_error(r, 400, "costmodel", "costmodel: '%s' is not a cost model id", cm);
        goto done;
    }
    if (!(s = body_strategy(r, body, g, c, &out))) goto done;
    if (predictor_load(r->S->db_path, cm, 0, c, &pd, &err)) {
        out = reply_error(r, 400, "costmodel", "%s", err.msg);
        goto done;
    }
    have_pd = true;
    Estimate e;
    EstimateOpts eo = { .db_path = r->S->db_path, .pred = &pd };
    if (job_estimate(g, c, s, &eo, &e, &err)) {
        out = bad(r, "strategy", &err);
        goto done;
    }
    cJSON *j = cJSON_Duplicate(e.json, true);
    if (e.plan_id[0]) cJSON_AddStringToObject(j, "plan_id", e.plan_id);
    if (e.estimate_id) cJSON_AddNumberToObject(j, "estimate_id", (double)e.estimate_id);
    if (pd.warning[0]) cJSON_AddItemToObject(j, "warnings", cJSON_CreateStringArray(
                                                 (const char *const[]){ pd.warning }, 1));
    estimate_free(&e);
    out = reply_json(r, 200, j);
done:
    if (have_pd) predictor_free(&pd);
    strategy_free(s);
    cluster_free(c);
    graph_free(g);
    close_db(r, db);
    cJSON_Delete(body);
    return out;
}

typedef struct {
    cJSON *item;
    double step;       /* newest estimate's, INFINITY without */
} PlanItem;

static int by_step(const void *a, const void *b)
{
    double x = ((const PlanItem *)a)->step, y = ((const PlanItem *)b)->step;
    return (x > y) - (x < y);
}

static enum MHD_Result h_plans_list(Req *r)
{
    enum MHD_Result out;
    int64_t limit = 100;
    if (query_int(r, "limit", 1, 10000, &limit, &out)) return out;
    const char *model = req_query(r, "model"), *cluster = req_query(r, "cluster");
    const char *order = req_query(r, "order");
    if (order && strcmp(order, "predicted") && strcmp(order, "created"))
        return reply_error(r, 400, "order", "query order=%s: expected predicted or created", order);
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbPlan *rows;
    int n;
    Err err = {0};
    if (db_plan_list(db, &rows, &n, &err)) {
        close_db(r, db);
        return reply_error(r, 500, "", "%s", err.msg);
    }
    PlanItem *items = xcalloc((size_t)n + 1, sizeof *items);
    int k = 0;
    for (int i = 0; i < n; i++) {
        const DbPlan *p = &rows[i];
        if (model && strcmp(model, p->model_id) && strcmp(model, p->model_name)) continue;
        if (cluster && strcmp(cluster, p->cluster_id) && strcmp(cluster, p->cluster_name)) continue;
        items[k].item = view_plan(db, p, false);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(items[k].item, "step_time_s");
        items[k].step = st && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(items[k].item,
                                                                               "feasible"))
                      ? st->valuedouble : INFINITY;
        k++;
    }
    close_db(r, db);
    db_plan_list_free(rows, n);
    if (order && !strcmp(order, "predicted")) qsort(items, (size_t)k, sizeof *items, by_step);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < k; i++) {
        if (i < limit) cJSON_AddItemToArray(arr, items[i].item);
        else cJSON_Delete(items[i].item);
    }
    free(items);
    return reply_json(r, 200, arr);
}

static enum MHD_Result h_plan_get(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a plan id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbPlan p;
    Err err = {0};
    int rc = db_plan_get(db, r->params[0], &p, &err);
    if (rc) {
        close_db(r, db);
        return rc > 0 ? reply_error(r, 404, "", "no plan with id %s", r->params[0])
                      : reply_error(r, 500, "", "%s", err.msg);
    }
    cJSON *j = view_plan(db, &p, true);
    close_db(r, db);
    db_plan_free(&p);
    return reply_json(r, 200, j);
}

static enum MHD_Result h_plan_svg(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a plan id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    LoadedPlan lp;
    Err err = {0};
    int rc = job_load_plan(db, r->params[0], &lp, &err);
    if (rc) {
        close_db(r, db);
        return rc > 0 ? reply_error(r, 404, "", "no plan with id %s", r->params[0])
                      : reply_error(r, 500, "", "%s", err.msg);
    }
    /* predicted by the model of its newest estimate */
    DbEstimate *e = NULL;
    int ne = 0;
    char cm[17] = "";
    int64_t prof = 0;
    if (!db_estimate_list(db, lp.row.id, &e, &ne, &err) && ne > 0) {
        if (e[0].cost_model_id) snprintf(cm, sizeof cm, "%s", e[0].cost_model_id);
        prof = e[0].profile_id;
    }
    if (ne > 0) db_estimate_list_free(e, ne);
    close_db(r, db);
    char title[300];
    snprintf(title, sizeof title, "%s on %d x %s, plan %s", lp.row.model_name, lp.row.world,
             lp.row.cluster_name, lp.row.id);
    Predictor pd;
    bool have_pd = false;
    Estimate est;
    bool have_est = false;
    char *svg = NULL;
    size_t n = 0;
    if (predictor_load(r->S->db_path, cm[0] ? cm : NULL, prof, lp.c, &pd, &err)) goto fail;
    have_pd = true;
    EstimateOpts eo = { .db_path = NULL, .pred = &pd, .trace = true };
    if (job_estimate(lp.g, lp.c, lp.s, &eo, &est, &err)) goto fail;
    have_est = true;
    FILE *f = open_memstream(&svg, &n);
    rc = sim_svg_write(&est.sim, lp.s, title, f, &err);
    fclose(f);
    if (rc) goto fail;
    out = reply_text(r, 200, "image/svg+xml", svg, n);
    svg = NULL;
    goto done;
fail:
    out = reply_error(r, 500, "", "the timeline: %s", err.msg);
done:
    free(svg);
    if (have_est) estimate_free(&est);
    if (have_pd) predictor_free(&pd);
    loaded_plan_free(&lp);
    return out;
}

/* A plan as a framework's configuration: JSON with the text, what does not
 * map and the closest plan that does (exported false); raw=1: the text
 * alone, as the file a launcher reads (422 when refused). */
static enum MHD_Result h_plan_export(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a plan id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    const char *to = req_query(r, "to");
    ExportTarget t;
    int64_t raw = 0;
    if (!to || export_target_parse(to, &t))
        return reply_error(r, 400, "to", "query to=%s: expected megatron, deepspeed or "
                           "torchtitan", to ? to : "(missing)");
    if (query_int(r, "raw", 0, 1, &raw, &out)) return out;
    Export x;
    Err err = {0};
    int rc = job_export(r->S->db_path, r->params[0], t, &x, &err);
    if (rc > 0) return reply_error(r, 404, "", "no plan with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    if (raw && x.text) {
        const char *type = t == EXPORT_DEEPSPEED ? "application/json"
                         : t == EXPORT_TORCHTITAN ? "application/toml" : "text/plain";
        char *text = x.text;
        x.text = NULL;
        export_free(&x);
        return reply_text(r, 200, type, text, strlen(text));
    }
    if (raw) {
        out = reply_error(r, 422, "to", "plan %s cannot be expressed in %s (%d thing(s) do "
                          "not map; without raw=1 the answer lists them and the closest plan)",
                          x.plan_id, to, x.nunmapped);
        export_free(&x);
        return out;
    }
    cJSON *j = export_json(&x);
    export_free(&x);
    return reply_json(r, 200, j);
}

/* ----------------------------------------------------------------------------
 * Runs */

static enum MHD_Result h_plan_runs_post(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a plan id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    cJSON *body = r->body && r->len ? body_object(r, &out) : cJSON_CreateObject();
    if (!body) return out;
    int64_t steps = 5, np = 0;
    bool verify = false;
    static const char *const keys[] = { "steps", "np", "verify", NULL };
    if (known_fields(r, body, keys, &out) || opt_int(r, body, "steps", 1, 100000, &steps, &out) ||
        opt_int(r, body, "np", 1, 4096, &np, &out) || opt_bool(r, body, "verify", &verify, &out)) {
        cJSON_Delete(body);
        return out;
    }
    cJSON_Delete(body);
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbPlan p;
    Err err = {0};
    int rc = db_plan_get(db, r->params[0], &p, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no plan with id %s", r->params[0]);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    int world = p.world;
    char plan_id[17];
    memcpy(plan_id, p.id, 17);
    db_plan_free(&p);
    if (np && np != world)
        return reply_error(r, 400, "np", "np: the plan runs on %d ranks, not %lld", world,
                           (long long)np);
    if (!server_reserve(r->S))
        return reply_error(r, 429, "", "the job queue is full (%d waiting); try again later",
                           r->S->o.queue);
    Job *j = xcalloc(1, sizeof *j);
    j->kind = JOB_RUN;
    random_id(j->id);
    memcpy(j->plan_id, plan_id, 17);
    j->steps = (int)steps;
    j->world = world;
    j->verify = verify;
    /* the run is a row from now on: queued, running, then what it stored
     * or why it did not */
    DbRun row = { .backend = "cpu", .world = world, .steps = j->steps };
    memcpy(row.id, j->id, 17);
    memcpy(row.plan_id, j->plan_id, 17);
    db = open_db(r, &out);
    rc = db ? db_run_submit(db, &row, &err) : -1;
    if (db) close_db(r, db);
    if (rc) {
        server_unreserve(r->S);
        free(j);
        return db ? reply_error(r, 500, "", "%s", err.msg) : out;
    }
    server_enqueue_reserved(r->S, j);
    db = open_db(r, &out);
    DbRun x;
    DbRunStep *st = NULL;
    int n = 0;
    rc = db ? db_run_get(db, j->id, &x, &st, &n, &err) : -1;
    if (db) close_db(r, db);
    if (rc) return db ? reply_error(r, 500, "", "%s", err.msg) : out;
    cJSON *res = view_run(&x, st, n, false);
    free(st);
    db_run_free(&x);
    return reply_json(r, 202, res);
}

static enum MHD_Result h_runs_list(Req *r)
{
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbRun *rows = NULL;
    int n = 0;
    Err err = {0};
    int rc = db_run_list(db, &rows, &n, &err);
    close_db(r, db);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_run(&rows[i], NULL, 0, false));
    db_run_list_free(rows, n);
    return reply_json(r, 200, arr);
}

static enum MHD_Result h_run_get(Req *r)
{
    if (!is_id(r->params[0]))
        return reply_error(r, 400, "id", "'%s' is not a run id (16 hex digits)", r->params[0]);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbRun x;
    DbRunStep *st = NULL;
    int n = 0;
    Err err = {0};
    int rc = db_run_get(db, r->params[0], &x, &st, &n, &err);
    close_db(r, db);
    if (rc == 0) {
        cJSON *j = view_run(&x, st, n, true);
        free(st);
        db_run_free(&x);
        return reply_json(r, 200, j);
    }
    if (rc < 0) return reply_error(r, 500, "", "%s", err.msg);
    return reply_error(r, 404, "", "no run with id %s", r->params[0]);
}

/* ----------------------------------------------------------------------------
 * Profiles */

static enum MHD_Result h_profiles_list(Req *r)
{
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbProfile *rows = NULL;
    int n = 0;
    Err err = {0};
    int rc = db_profile_list(db, &rows, &n, &err);
    close_db(r, db);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    cJSON *arr = cJSON_CreateArray();
    /* profile jobs of this server not yet done (their rows follow when they start) */
    pthread_mutex_lock(&r->S->mu);
    for (Job *j = r->S->all; j; j = j->next_all) {
        if (j->kind != JOB_PROFILE || !strcmp(j->status, "ok")) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "job", j->id);
        cJSON_AddStringToObject(o, "status", j->status);
        if (j->error[0]) cJSON_AddStringToObject(o, "error", j->error);
        cJSON_AddItemToArray(arr, o);
    }
    pthread_mutex_unlock(&r->S->mu);
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_profile(&rows[i], NULL));
    db_profile_list_free(rows, n);
    return reply_json(r, 200, arr);
}

/* Measures this machine: `strata profile` as a queued job. Its row appears
 * in GET /v1/profiles when it starts; until then, and after a failure, the
 * job is listed there by its id. */
static enum MHD_Result h_profiles_post(Req *r)
{
    enum MHD_Result out;
    cJSON *body = r->body && r->len ? body_object(r, &out) : cJSON_CreateObject();
    if (!body) return out;
    bool quick = true, no_links = false;
    int64_t ranks = 0, seconds = 0;
    const char *kinds = NULL;
    static const char *const keys[] = { "quick", "no_links", "ranks", "seconds", "kinds", NULL };
    if (known_fields(r, body, keys, &out) || opt_bool(r, body, "quick", &quick, &out) ||
        opt_bool(r, body, "no_links", &no_links, &out) ||
        opt_int(r, body, "ranks", 1, 1024, &ranks, &out) ||
        opt_int(r, body, "seconds", 1, 86400, &seconds, &out) ||
        opt_str(r, body, "kinds", &kinds, &out)) {
        cJSON_Delete(body);
        return out;
    }
    Err kerr = { { 0 } };
    if (kinds && (strlen(kinds) >= sizeof ((Job *)0)->kinds || op_kinds_check(kinds, &kerr))) {
        cJSON_Delete(body);
        return reply_error(r, 400, "kinds", "kinds: %s", kerr.msg[0] ? kerr.msg : "too long a list");
    }
    Job *j = xcalloc(1, sizeof *j);
    j->kind = JOB_PROFILE;
    random_id(j->id);
    j->quick = quick;
    j->no_links = no_links;
    j->ranks = (int)ranks;
    j->seconds = (int)seconds;
    if (kinds) snprintf(j->kinds, sizeof j->kinds, "%s", kinds);
    cJSON_Delete(body);
    if (!server_enqueue(r->S, j)) {
        free(j);
        return reply_error(r, 429, "", "the job queue is full (%d waiting); try again later",
                           r->S->o.queue);
    }
    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "id", j->id);
    cJSON_AddStringToObject(res, "status", "queued");
    return reply_json(r, 202, res);
}

static enum MHD_Result h_profile_get(Req *r)
{
    const char *s = r->params[0];
    char *end;
    errno = 0;
    long long id = strtoll(s, &end, 10);
    if (errno || end == s || *end || id < 1 || !isdigit((unsigned char)s[0]))
        return reply_error(r, 400, "id", "'%s' is not a profile id (a positive integer)", s);
    enum MHD_Result out;
    Db *db = open_db(r, &out);
    if (!db) return out;
    DbProfile p;
    DbProfileOp *ops = NULL;
    DbProfileLink *l = NULL;
    DbProfileFit *f = NULL;
    int nops = 0, nl = 0, nf = 0;
    Err err = {0};
    int rc = db_profile_get(db, id, &p, &ops, &nops, &l, &nl, &f, &nf, &err);
    close_db(r, db);
    if (rc > 0) return reply_error(r, 404, "", "no profile with id %lld", id);
    if (rc) return reply_error(r, 500, "", "%s", err.msg);
    ProfileSamples ps = { ops, nops, l, nl, f, nf };
    cJSON *j = view_profile(&p, &ps);
    db_profile_samples_free(ops, nops, l, nl, f, nf);
    db_profile_free(&p);
    return reply_json(r, 200, j);
}

/* ----------------------------------------------------------------------------
 * The table */

const Route ROUTES[] = {
    { "/", h_page, NULL, NULL },
    { "/healthz", h_healthz, NULL, NULL },
    { "/metrics", h_metrics, NULL, NULL },
    { "/v1/models", h_models_list, h_models_post, NULL },
    { "/v1/models/{}", h_model_get, NULL, NULL },
    { "/v1/clusters", h_clusters_list, h_clusters_post, NULL },
    { "/v1/clusters/{}", h_cluster_get, NULL, NULL },
    { "/v1/searches", h_searches_list, h_searches_post, NULL },
    { "/v1/searches/{}", h_search_get, NULL, h_search_delete },
    { "/v1/searches/{}/events", h_search_events, NULL, NULL },
    { "/v1/searches/{}/resume", NULL, h_search_resume, NULL },
    { "/v1/estimate", NULL, h_estimate, NULL },
    { "/v1/plans", h_plans_list, NULL, NULL },
    { "/v1/plans/{}", h_plan_get, NULL, NULL },
    { "/v1/plans/{}/timeline.svg", h_plan_svg, NULL, NULL },
    { "/v1/plans/{}/runs", NULL, h_plan_runs_post, NULL },
    { "/v1/plans/{}/export", h_plan_export, NULL, NULL },
    { "/v1/runs", h_runs_list, NULL, NULL },
    { "/v1/runs/{}", h_run_get, NULL, NULL },
    { "/v1/profiles", h_profiles_list, h_profiles_post, NULL },
    { "/v1/profiles/{}", h_profile_get, NULL, NULL },
};
const int NROUTES = (int)(sizeof ROUTES / sizeof ROUTES[0]);

/* ----------------------------------------------------------------------------
 * Workers */

static void on_event(void *ctx, const cJSON *ev)
{
    void **c = ctx;
    Server *S = c[0];
    Job *j = c[1];
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(ev, "evaluations_per_s");
    pthread_mutex_lock(&S->mu);
    if (cJSON_IsNumber(e)) j->evals_per_s = e->valuedouble;
    pthread_mutex_unlock(&S->mu);
    server_news(S);
}

static void run_search(Server *S, Job *j)
{
    Err err = {0};
    Db *db = db_open_existing(S->db_path, &err);
    Graph *g = NULL;
    Cluster *c = NULL;
    DbModel m;
    DbCluster dc;
    Predictor pd;
    bool have_pd = false;
    if (db && !db_model_get(db, j->model_id, &m, &err)) {
        cJSON *x = cJSON_Parse(m.json);
        g = x ? graph_from_json(x, &err) : NULL;
        cJSON_Delete(x);
        db_model_free(&m);
    }
    if (g && !db_cluster_get(db, j->cluster_id, &dc, &err)) {
        cJSON *x = cJSON_Parse(dc.json);
        c = x ? cluster_from_json(x, 0, &err) : NULL;
        cJSON_Delete(x);
        db_cluster_free(&dc);
    }
    int rc = -1;
    if (c && !predictor_load(S->db_path, j->costmodel_id[0] ? j->costmodel_id : NULL, 0, c, &pd,
                             &err)) {
        have_pd = true;
        void *ctx[2] = { S, j };
        SearchJobOpts jo = { .db_path = S->db_path, .pred = &pd, .search = j->search,
                             .budget_text = j->budget_text, .row_id = j->id,
                             .first_seq = j->first_seq, .event = on_event, .ctx = ctx };
        jo.search.stop = &j->stop;
        cJSON *point = j->resume ? cJSON_Parse(j->resume) : NULL;
        jo.search.resume = point;
        SearchJob sj;
        rc = job_search(g, c, &jo, &sj, &err);
        cJSON_Delete(point);
        if (!rc) {
            pthread_mutex_lock(&S->mu);
            snprintf(j->status, sizeof j->status, "%s", !sj.r.best.s ? "no plan"
                     : strcmp(sj.r.ended, "stopped") == 0 ? "stopped" : "done");
            pthread_mutex_unlock(&S->mu);
            search_job_free(&sj);
        }
    }
    if (rc) {
        if (db) db_search_finish(db, j->id, "failed", NULL, NULL, &(Err){ { 0 } });
        pthread_mutex_lock(&S->mu);
        snprintf(j->status, sizeof j->status, "failed");
        snprintf(j->error, sizeof j->error, "%.590s", err.msg);
        pthread_mutex_unlock(&S->mu);
        if (S->o.log)
            fprintf(S->o.log, "{\"search\":\"%s\",\"failed\":true}\n", j->id);
    }
    if (have_pd) predictor_free(&pd);
    cluster_free(c);
    graph_free(g);
    db_close(db);
}

/* `strata run --plan ID` as a child (argv, no shell; it starts mpirun for
 * the plan's ranks itself), its output kept in a file whose tail says why
 * when it fails. */
/* `strata SUB ...` as a child (argv, no shell), its output kept in a file
 * whose tail says why when it fails; the job's status "ok" or "failed". */
static void spawn_strata(Server *S, Job *j, char **argv)
{
    char logpath[] = "/tmp/strata-job-XXXXXX";
    int fd = mkstemp(logpath);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, fd, 1);
        posix_spawn_file_actions_adddup2(&fa, fd, 2);
    }
    /* the child starts with no signal blocked and SIGTERM, SIGINT and
     * SIGPIPE as they are by default: the server's threads block the first
     * two (cli/serve.c takes them with sigwait) and ignore the last, and a
     * child would inherit both, so that stopping the server could not stop
     * it */
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none, dflt;
    sigemptyset(&none);
    sigemptyset(&dflt);
    sigaddset(&dflt, SIGTERM);
    sigaddset(&dflt, SIGINT);
    sigaddset(&dflt, SIGPIPE);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dflt);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, S->bin, &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    const char *status = "failed";
    char why[600] = "";
    if (rc) {
        snprintf(why, sizeof why, "cannot start %s: %s", S->bin, strerror(rc));
    } else {
        pthread_mutex_lock(&S->mu);
        j->pid = pid;
        bool stopping = S->stopping;
        pthread_mutex_unlock(&S->mu);
        if (stopping) kill(pid, SIGTERM);
        int ws;
        while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
        pthread_mutex_lock(&S->mu);
        j->pid = 0;
        pthread_mutex_unlock(&S->mu);
        if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0) status = "ok";
        else if (fd >= 0) {
            /* the last lines of its output */
            off_t end = lseek(fd, 0, SEEK_END), from = end > 500 ? end - 500 : 0;
            ssize_t got = pread(fd, why, sizeof why - 1, from);
            why[got > 0 ? got : 0] = 0;
        }
        if (strcmp(status, "ok") && !why[0])
            snprintf(why, sizeof why, "strata %s ended with status %d", argv[1], ws);
    }
    if (fd >= 0) {
        close(fd);
        unlink(logpath);
    }
    pthread_mutex_lock(&S->mu);
    snprintf(j->status, sizeof j->status, "%s", status);
    snprintf(j->error, sizeof j->error, "%s", why);
    pthread_mutex_unlock(&S->mu);
}

/* `strata run --plan ID` (it starts mpirun for the plan's ranks itself). */
static void run_plan(Server *S, Job *j)
{
    char steps[16];
    snprintf(steps, sizeof steps, "%d", j->steps);
    char *argv[16];
    int k = 0;
    argv[k++] = S->bin;
    argv[k++] = "run";
    argv[k++] = "--plan";
    argv[k++] = j->plan_id;
    argv[k++] = "--steps";
    argv[k++] = steps;
    argv[k++] = "--db";
    argv[k++] = S->db_path;
    argv[k++] = "--run-id";
    argv[k++] = j->id;
    if (j->verify) argv[k++] = "--verify";
    argv[k] = NULL;
    Err err = {0};
    Db *db = server_db(S, &err);
    if (db) db_run_mark(db, j->id, "running", NULL, &err);
    server_db_put(S, db);
    spawn_strata(S, j, argv);
    /* the run stores its row when it ends well; otherwise it is said here
     * (a row the run completed itself is left as it is) */
    pthread_mutex_lock(&S->mu);
    bool stopping = S->stopping;
    char status[sizeof j->status], why[sizeof j->error];
    snprintf(status, sizeof status, "%s", j->status);
    snprintf(why, sizeof why, "%s", j->error);
    pthread_mutex_unlock(&S->mu);
    if (!strcmp(status, "ok")) return;
    if (!(db = server_db(S, &err))) return;
    db_run_mark(db, j->id, stopping ? "interrupted" : "failed",
                stopping ? "the server stopped before the run ended" : why, &err);
    server_db_put(S, db);
}

/* `strata profile` of this machine, stored in the server's store. */
static void run_profile(Server *S, Job *j)
{
    char ranks[16], secs[32];
    char *argv[20];
    int k = 0;
    argv[k++] = S->bin;
    argv[k++] = "profile";
    argv[k++] = "--db";
    argv[k++] = S->db_path;
    argv[k++] = "--quiet";
    if (j->quick) argv[k++] = "--quick";
    if (j->ranks > 0) {
        snprintf(ranks, sizeof ranks, "%d", j->ranks);
        argv[k++] = "--ranks";
        argv[k++] = ranks;
    }
    if (j->seconds > 0) {
        snprintf(secs, sizeof secs, "%d", j->seconds);
        argv[k++] = "--seconds";
        argv[k++] = secs;
    }
    if (j->kinds[0]) {
        argv[k++] = "--kinds";
        argv[k++] = j->kinds;
    }
    if (j->no_links) argv[k++] = "--no-links";
    argv[k] = NULL;
    spawn_strata(S, j, argv);
}

void job_execute(Server *S, Job *j)
{
    if (j->kind == JOB_SEARCH) run_search(S, j);
    else if (j->kind == JOB_PROFILE) run_profile(S, j);
    else run_plan(S, j);
}
