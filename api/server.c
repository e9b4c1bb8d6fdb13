/*
 * server.c — the service's HTTP side: listening, authentication, limits,
 * routing, the request log and /metrics; and the job queue with its workers.
 * What each route does is in routes.c.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "internal.h"
#include "db/db.h"
#include "ir/util.h"

/* Upper bounds of the latency histogram's buckets, seconds. */
static const double LAT_LE[LAT_BUCKETS] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                            0.05, 0.1, 0.25, 0.5, 1, 2.5 };

/* ----------------------------------------------------------------------------
 * Answers */

enum MHD_Result reply_response(Req *r, int status, struct MHD_Response *resp)
{
    r->status = status;
    if (!r->con) {                 /* in memory: nobody to send it to */
        MHD_destroy_response(resp);
        return MHD_YES;
    }
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (r->close) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ok = MHD_queue_response(r->con, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

enum MHD_Result reply_text(Req *r, int status, const char *type, char *text, size_t n)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    return reply_response(r, status, resp);
}

struct MHD_Response *json_response(cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    size_t n = strlen(s);
    char *text = xmalloc(n + 2);
    memcpy(text, s, n);
    text[n++] = '\n';
    text[n] = 0;
    cJSON_free(s);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    return resp;
}

enum MHD_Result reply_json(Req *r, int status, cJSON *j)
{
    struct MHD_Response *resp = json_response(j);
    return resp ? reply_response(r, status, resp) : MHD_NO;
}

static struct MHD_Response *error_response(int status, const char *path, const char *msg)
{
    cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddNumberToObject(e, "status", status);
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "path", path ? path : "");
    return json_response(j);
}

/* s with every byte that is not part of valid UTF-8 (or is a control code)
 * made '?': an error quoting what a client sent stays valid JSON text. */
static void clean_text(char *s)
{
    unsigned char *c = (unsigned char *)s;
    for (size_t i = 0; c[i];) {
        int n = utf8_char_len(c + i);
        if (!n) c[i++] = '?';
        else i += (size_t)n;
    }
}

/* The store's own messages name it by its path, heading the message or a
 * part of it ("PATH: what"), for the person at the command line; a client
 * is not told where the server keeps it. Removes those heads. */
static void hide_store_path(char *msg, const char *db)
{
    size_t n = db ? strlen(db) : 0;
    if (!n) return;
    for (char *at = strstr(msg, db); at; at = strstr(at, db)) {
        bool head = at == msg || (at - msg >= 2 && at[-2] == ':' && at[-1] == ' ');
        if (head && !strncmp(at + n, ": ", 2))
            memmove(at, at + n + 2, strlen(at + n + 2) + 1);
        else
            at += n;
    }
}

enum MHD_Result reply_error(Req *r, int status, const char *path, const char *fmt, ...)
{
    char msg[1200], where[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(where, sizeof where, "%s", path ? path : "");
    /* a busy store is passing, whatever the work was: try again */
    if (status >= 400 && strstr(msg, DB_BUSY)) status = 503;
    if (r->S) hide_store_path(msg, r->S->db_path);
    clean_text(msg);
    clean_text(where);
    struct MHD_Response *resp = error_response(status, path ? where : NULL, msg);
    if (!resp) return MHD_NO;
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 429) MHD_add_response_header(resp, "Retry-After", "5");
    if (status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    return reply_response(r, status, resp);
}

static const char *lookup(const char *const (*kv)[2], int n, const char *name, bool nocase)
{
    for (int i = 0; i < n; i++)
        if (nocase ? !strcasecmp(kv[i][0], name) : !strcmp(kv[i][0], name)) return kv[i][1];
    return NULL;
}

const char *req_query(const Req *r, const char *name)
{
    if (!r->con) return lookup(r->query, r->nquery, name, false);
    return MHD_lookup_connection_value(r->con, MHD_GET_ARGUMENT_KIND, name);
}

const char *req_header(const Req *r, const char *name)
{
    if (!r->con) return lookup(r->headers, r->nheaders, name, true);
    return MHD_lookup_connection_value(r->con, MHD_HEADER_KIND, name);
}

/* ----------------------------------------------------------------------------
 * Routing */

/* Route index of path, with its {} segments into r->params; -1: none. */
static int match(Req *r, const char *path)
{
    for (int k = 0; k < NROUTES; k++) {
        const char *p = ROUTES[k].pattern, *u = path;
        int np = 0;
        bool ok = true;
        while (ok && *p && *u) {
            if (p[0] == '{' && p[1] == '}') {
                size_t n = strcspn(u, "/");
                if (n == 0 || np == 4) {
                    ok = false;
                    break;
                }
                /* a segment longer than any id is kept cut, with "...": the
                 * route still matches and its handler refuses the id */
                size_t keep = n < sizeof r->pbuf[0] ? n : sizeof r->pbuf[0] - 4;
                memcpy(r->pbuf[np], u, keep);
                strcpy(r->pbuf[np] + keep, n == keep ? "" : "...");
                r->params[np] = r->pbuf[np];
                np++;
                p += 2;
                u += n;
            } else if (*p == *u) {
                p++;
                u++;
            } else {
                ok = false;
            }
        }
        if (ok && !*p && !*u) return k;
    }
    return -1;
}

static enum MHD_Result method_not_allowed(Req *r, const Route *rt)
{
    char allow[40] = "";
    if (rt->get) strcat(allow, "GET, HEAD");
    if (rt->post) strcat(allow, allow[0] ? ", POST" : "POST");
    if (rt->del) strcat(allow, allow[0] ? ", DELETE" : "DELETE");
    char msg[160];
    snprintf(msg, sizeof msg, "%s does not take %s (it takes %s)", rt->pattern, r->method, allow);
    struct MHD_Response *resp = error_response(405, "", msg);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Allow", allow);
    return reply_response(r, 405, resp);
}

/* Constant time in the token's length: every byte is compared. The
 * scheme in any case, then the token between optional white space (RFC
 * 9110's "Bearer" 1*SP token, and OWS around a field's value). */
static bool token_ok(const Server *S, const char *auth)
{
    static const char bearer[] = "Bearer";
    if (!auth || strncasecmp(auth, bearer, sizeof bearer - 1)) return false;
    const char *got = auth + sizeof bearer - 1;
    if (*got != ' ') return false;
    while (*got == ' ' || *got == '\t') got++;
    size_t n = strlen(S->token), m = strlen(got);
    while (m && (got[m - 1] == ' ' || got[m - 1] == '\t')) m--;
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(S->token[i] ^ (i < m ? got[i] : 0));
    return diff == 0;
}

/* May the request go on: the server has no token, it brings the token, or
 * it asks for what is open without one (the health check, and the page,
 * which holds no data and asks for the token before it reads any)? */
static bool open_route(const Req *r)
{
    return (!strcmp(r->method, "GET") || !strcmp(r->method, "HEAD")) &&
           (!strcmp(r->url, "/healthz") || !strcmp(r->url, "/"));
}

static bool authorized(const Req *r)
{
    const Server *S = r->S;
    return !S->token || open_route(r) || token_ok(S, req_header(r, "Authorization"));
}

static enum MHD_Result unauthorized(Req *r)
{
    return reply_error(r, 401, "", "this server needs \"Authorization: Bearer <token>\"");
}

/* Does Host name the loopback: localhost, 127.x.x.x or [::1], with or
 * without a port? */
static bool loopback_host(const char *h)
{
    size_t n = strlen(h);
    if (h[0] == '[') {
        const char *e = strchr(h, ']');
        return e && e - h == 4 && !strncmp(h, "[::1]", 5) && (!e[1] || e[1] == ':');
    }
    const char *colon = strchr(h, ':');
    if (colon) n = (size_t)(colon - h);
    if (n == 9 && !strncasecmp(h, "localhost", 9)) return true;
    if (n < 7 || strncmp(h, "127.", 4)) return false;
    int dots = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i] == '.') dots++;
        else if (h[i] < '0' || h[i] > '9') return false;
    }
    return dots == 3;
}

/* A request a page of another site made a browser send, refused (403)
 * when the server has no token: nothing else would tell it from the
 * user's own. A page anywhere may post to a server on the user's loopback
 * (a form or a fetch needs no permission to send), or have its own name
 * resolve to 127.0.0.1 and read the answers (DNS rebinding). So the Host
 * must name the loopback, and a POST or DELETE that says where it comes
 * from (Origin, Sec-Fetch-Site) must come from this server's own page;
 * clients outside a browser (curl) send neither. The open routes (the
 * health check, the page) hold no data and are not checked. With a token,
 * which such a page cannot add, the token is the check. Returns why, or
 * NULL. */
static const char *cross_site(const Req *r, char *why, size_t cap)
{
    if (r->S->token || open_route(r)) return NULL;
    const char *host = req_header(r, "Host");
    if (host && !loopback_host(host)) {
        snprintf(why, cap, "Host %.200s: without a token this server answers requests to a "
                 "loopback name only (localhost, 127.0.0.1, [::1])", host);
        return why;
    }
    if (!strcmp(r->method, "GET") || !strcmp(r->method, "HEAD")) return NULL;
    const char *origin = req_header(r, "Origin"), *site = req_header(r, "Sec-Fetch-Site");
    bool same = !origin || (host && !strncasecmp(origin, "http://", 7) &&
                            !strcasecmp(origin + 7, host));
    if (site && strcasecmp(site, "same-origin") && strcasecmp(site, "none")) same = false;
    if (same) return NULL;
    snprintf(why, cap, "a %s from %.200s: without a token this server takes changes from its "
             "own page and from clients outside a browser only", r->method,
             origin ? origin : "another site");
    return why;
}

/* The query's arguments, for query_bad: each key once, with a value, at
 * most 32 keys. */
typedef struct {
    const char *keys[32];
    int n;
    const char *bad, *why;
} QueryCheck;

static void query_arg(QueryCheck *q, const char *key, const char *value)
{
    if (q->bad) return;
    if (!value || !value[0]) {
        q->bad = key;
        q->why = "has no value";
        return;
    }
    for (int i = 0; i < q->n; i++)
        if (!strcmp(q->keys[i], key)) {
            q->bad = key;
            q->why = "is given more than once";
            return;
        }
    if (q->n == (int)(sizeof q->keys / sizeof q->keys[0])) {
        /* no route reads so many: refused rather than left unchecked */
        q->bad = key;
        q->why = "is past the 32 distinct arguments a query may have";
        return;
    }
    q->keys[q->n++] = key;
}

static enum MHD_Result query_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    (void)kind;
    query_arg(cls, key, value);
    return MHD_YES;
}

/* A query argument given twice, or without a value: its key, with why;
 * NULL when every argument is given once with a value. (Each handler
 * reads one value per key, and would otherwise take the first silently.) */
static const char *query_bad(const Req *r, const char **why)
{
    QueryCheck q = { .n = 0 };
    if (r->con) MHD_get_connection_values(r->con, MHD_GET_ARGUMENT_KIND, query_iter, &q);
    else
        for (int i = 0; i < r->nquery; i++) query_arg(&q, r->query[i][0], r->query[i][1]);
    *why = q.why;
    return q.bad;
}

static enum MHD_Result dispatch(Req *r)
{
    char path[1024];
    size_t n = strlen(r->url);
    snprintf(path, sizeof path, "%s", r->url);
    /* by route, even when refused; a path longer than any route's is none */
    r->route = r->encoded_slash || n >= sizeof path ? -1 : match(r, path);
    if (!authorized(r)) return unauthorized(r);
    if (n >= sizeof path)
        return reply_error(r, 404, "", "no such resource: a path of %zu bytes", n);
    char foreign[512];
    if (cross_site(r, foreign, sizeof foreign))
        return reply_error(r, 403, "", "%s", foreign);
    if (r->route < 0) return reply_error(r, 404, "", "no such resource: %s", path);
    const Route *rt = &ROUTES[r->route];
    Handler h = !strcmp(r->method, "GET") || !strcmp(r->method, "HEAD") ? rt->get
              : !strcmp(r->method, "POST") ? rt->post
              : !strcmp(r->method, "DELETE") ? rt->del : NULL;
    if (!h) return method_not_allowed(r, rt);
    const char *why, *bad = strcmp(rt->pattern, "/") ? query_bad(r, &why) : NULL;  /* the page reads none */
    if (bad) return reply_error(r, 400, bad, "query %s %s", bad, why);
    if (rt->post && h == rt->post && r->body) r->body[r->len] = 0;
    return h(r);
}

/* A body over --max-body (declared: its Content-Length, NULL when it grew
 * past the cap while arriving): 413, counted under the route asked for;
 * to a client without the token a 401, since a stranger learns nothing of
 * the server, its limits included. */
static enum MHD_Result too_big(Req *r, const char *declared)
{
    size_t cap = r->S->o.max_body;
    r->route = match(r, r->url);
    if (!authorized(r)) return unauthorized(r);
    if (declared)
        return reply_error(r, 413, "", "the request body is %s bytes; this server takes at most "
                           "%zu (--max-body)", declared, cap);
    return reply_error(r, 413, "", "the request body is larger than %zu bytes (--max-body)", cap);
}

/* Percent-decoding of the path and the query, in place: as the standard's,
 * except that %00 stays as it is. Decoded, it would end the C string early
 * ("/v1/models/<id>%00junk" would name the model <id>). (An encoded slash
 * in the path is seen before decoding: on_uri.) */
static size_t unescape(void *cls, struct MHD_Connection *con, char *s)
{
    (void)cls;
    (void)con;
    char *w = s;
    for (const char *p = s; *p;) {
        if (p[0] == '%' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2]) &&
            !(p[1] == '0' && p[2] == '0')) {
            char hex[3] = { p[1], p[2], 0 };
            *w++ = (char)strtol(hex, NULL, 16);
            p += 3;
        } else {
            *w++ = *p++;
        }
    }
    *w = 0;
    return (size_t)(w - s);
}

/* MHD_get_connection_values' iterator: counts the Content-Length headers. */
static enum MHD_Result count_length(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    (void)value;
    if (!strcasecmp(key, "Content-Length")) ++*(int *)cls;
    return MHD_YES;
}

/* MHD_OPTION_URI_LOG_CALLBACK: a request's state, made while its URI is
 * still as sent. An encoded slash (%2F) in its path would, decoded, split
 * a segment in two and reach another route ("/v1/models%2F<id>" the
 * model): it names no route. In a query value it is a slash as usual. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *con)
{
    (void)cls;
    (void)con;
    Req *r = xcalloc(1, sizeof *r);
    size_t n = strcspn(uri, "?");
    for (size_t i = 0; i + 2 < n && !r->encoded_slash; i++)
        r->encoded_slash = uri[i] == '%' && uri[i + 1] == '2' && (uri[i + 2] | 0x20) == 'f';
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    Server *S = cls;
    Req *r = *con_cls;             /* made by on_uri */
    if (!r->S) {
        r->S = S;
        r->con = con;
        r->t0 = now_s();
        r->route = -1;
        r->method = xstrdup(method);
        r->url = xstrdup(url);
        *con_cls = r;
        int ncl = 0;
        MHD_get_connection_values(con, MHD_HEADER_KIND, count_length, &ncl);
        if (ncl > 1) {
            /* which one a proxy in front of this server believed is unknowable */
            r->route = match(r, r->url);
            return reply_error(r, 400, "", "the request has %d Content-Length headers; one at "
                               "most (RFC 9112)", ncl);
        }
        const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Length");
        if (cl && MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Transfer-Encoding")) {
            /* where this body ends and the next request begins depends on
             * which header is believed: refused, and the connection closed
             * (RFC 9112, 6.1) */
            r->route = match(r, r->url);
            r->close = true;
            return reply_error(r, 400, "", "the request has both Content-Length and "
                               "Transfer-Encoding; one at most (RFC 9112)");
        }
        if (cl && strtoull(cl, NULL, 10) > S->o.max_body) {
            r->too_big = true;
            return too_big(r, cl);
        }
        return MHD_YES;
    }
    r->con = con;
    if (*upload_size) {
        if (!r->too_big && r->len + *upload_size <= S->o.max_body) {
            r->body = xrealloc(r->body, r->len + *upload_size + 1);
            memcpy(r->body + r->len, upload, *upload_size);
            r->len += *upload_size;
        } else {
            r->too_big = true;
            free(r->body);
            r->body = NULL;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->status) return MHD_YES;     /* answered already (413 before the body) */
    if (r->too_big) return too_big(r, NULL);
    return dispatch(r);
}

int api_handle(Server *S, const char *method, const char *path, const char *const (*query)[2],
               int nquery, const char *const (*headers)[2], int nheaders, const char *body,
               size_t len)
{
    Req r = { .S = S, .method = (char *)method, .url = (char *)path, .route = -1,
              .query = query, .nquery = nquery, .headers = headers, .nheaders = nheaders,
              .t0 = now_s() };
    if (len > S->o.max_body) {
        too_big(&r, NULL);
        return r.status;
    }
    if (len) {
        r.body = xmalloc(len + 1);
        memcpy(r.body, body, len);
        r.len = len;
    }
    dispatch(&r);
    free(r.body);
    return r.status;
}

/* The statuses counted apart; anything else is counted as the last. */
static const int STATUSES[] = { 200, 201, 202, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429,
                                500, 503, 0 };
#define NSTATUS ((int)(sizeof STATUSES / sizeof STATUSES[0]))

static void count(Server *S, int route, int status, double dt)
{
    int k = 0;
    while (k < NSTATUS - 1 && STATUSES[k] != status) k++;
    int r = route >= 0 ? route : NROUTES;
    __atomic_fetch_add(&S->counts[r * NSTATUS + k], 1, __ATOMIC_RELAXED);
    int b = 0;
    while (b < LAT_BUCKETS && dt > LAT_LE[b]) b++;
    __atomic_fetch_add(&S->lat_bucket[b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&S->lat_sum_us, (uint64_t)(dt * 1e6), __ATOMIC_RELAXED);
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)con;
    (void)toe;
    Server *S = cls;
    Req *r = *con_cls;
    if (!r) return;
    if (!r->S) {                   /* answered by libmicrohttpd itself */
        free(r);
        *con_cls = NULL;
        return;
    }
    double dt = now_s() - r->t0;
    count(S, r->route, r->status, dt);
    if (S->o.log) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "method", r->method);
        cJSON_AddStringToObject(j, "path", r->url);
        cJSON_AddNumberToObject(j, "status", r->status);
        cJSON_AddNumberToObject(j, "us", round(dt * 1e6));
        char *s = cJSON_PrintUnformatted(j);
        flockfile(S->o.log);
        fprintf(S->o.log, "%s\n", s);
        fflush(S->o.log);
        funlockfile(S->o.log);
        cJSON_free(s);
        cJSON_Delete(j);
    }
    free(r->method);
    free(r->url);
    free(r->body);
    free(r);
    *con_cls = NULL;
}

/* The Prometheus text of the server's counters (routes.c serves it). */
char *server_metrics(Server *S, size_t *n);
char *server_metrics(Server *S, size_t *n)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, n);
    pthread_mutex_lock(&S->mu);
    fprintf(f, "# HELP strata_http_requests_total Requests answered, by route and status.\n"
               "# TYPE strata_http_requests_total counter\n");
    for (int r = 0; r <= NROUTES; r++)
        for (int k = 0; k < NSTATUS; k++) {
            uint64_t n = __atomic_load_n(&S->counts[r * NSTATUS + k], __ATOMIC_RELAXED);
            if (!n) continue;
            char st[8];
            if (STATUSES[k]) snprintf(st, sizeof st, "%d", STATUSES[k]);
            else snprintf(st, sizeof st, "other");
            fprintf(f, "strata_http_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
                    r < NROUTES ? ROUTES[r].pattern : "unmatched", st, (unsigned long long)n);
        }
    fprintf(f, "# HELP strata_http_request_duration_seconds Time from a request's first byte "
               "to its answer's last.\n# TYPE strata_http_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int b = 0; b < LAT_BUCKETS; b++) {
        cum += __atomic_load_n(&S->lat_bucket[b], __ATOMIC_RELAXED);
        fprintf(f, "strata_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n", LAT_LE[b],
                (unsigned long long)cum);
    }
    cum += __atomic_load_n(&S->lat_bucket[LAT_BUCKETS], __ATOMIC_RELAXED);
    fprintf(f, "strata_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
               "strata_http_request_duration_seconds_sum %.6f\n"
               "strata_http_request_duration_seconds_count %llu\n", (unsigned long long)cum,
            1e-6 * (double)__atomic_load_n(&S->lat_sum_us, __ATOMIC_RELAXED),
            (unsigned long long)cum);
    double eps = 0;
    for (Job *j = S->all; j; j = j->next_all)
        if (j->kind == JOB_SEARCH && !strcmp(j->status, "running")) eps += j->evals_per_s;
    fprintf(f, "# HELP strata_queue_depth Jobs waiting for a worker.\n"
               "# TYPE strata_queue_depth gauge\nstrata_queue_depth %d\n"
               "# HELP strata_jobs_running Jobs a worker runs now.\n"
               "# TYPE strata_jobs_running gauge\nstrata_jobs_running %d\n"
               "# HELP strata_search_evaluations_per_second Candidates the running searches "
               "evaluate per second, together.\n"
               "# TYPE strata_search_evaluations_per_second gauge\n"
               "strata_search_evaluations_per_second %.1f\n", S->queued, S->running, eps);
    pthread_mutex_unlock(&S->mu);
    fclose(f);
    return buf;
}

/* ----------------------------------------------------------------------------
 * The queue */

/* Appends j to the queue, whose place is already counted (S->mu held). */
static void append(Server *S, Job *j)
{
    snprintf(j->status, sizeof j->status, "queued");
    j->queued_at = now_s();
    j->next = NULL;
    if (S->tail) S->tail->next = j;
    else S->head = j;
    S->tail = j;
    j->next_all = S->all;
    S->all = j;
    pthread_cond_signal(&S->work);
}

bool server_reserve(Server *S)
{
    pthread_mutex_lock(&S->mu);
    bool ok = !S->stopping && S->queued < S->o.queue;
    if (ok) S->queued++;
    pthread_mutex_unlock(&S->mu);
    return ok;
}

void server_unreserve(Server *S)
{
    pthread_mutex_lock(&S->mu);
    S->queued--;
    pthread_mutex_unlock(&S->mu);
}

void server_enqueue_reserved(Server *S, Job *j)
{
    pthread_mutex_lock(&S->mu);
    append(S, j);
    pthread_mutex_unlock(&S->mu);
}

bool server_enqueue(Server *S, Job *j)
{
    pthread_mutex_lock(&S->mu);
    bool ok = !S->stopping && S->queued < S->o.queue;
    if (ok) {
        S->queued++;
        append(S, j);
    }
    pthread_mutex_unlock(&S->mu);
    return ok;
}

void server_unqueue(Server *S, Job *j)
{
    Job **at = &S->head, *prev = NULL;
    while (*at && *at != j) {
        prev = *at;
        at = &(*at)->next;
    }
    if (!*at) return;
    *at = j->next;
    if (S->tail == j) S->tail = prev;
    j->next = NULL;
    S->queued--;
}

Db *server_db(Server *S, Err *err)
{
    pthread_mutex_lock(&S->mu);
    Db *db = S->npool ? S->pool[--S->npool] : NULL;
    pthread_mutex_unlock(&S->mu);
    return db ? db : db_open_existing(S->db_path, err);
}

void server_db_put(Server *S, Db *db)
{
    if (!db) return;
    pthread_mutex_lock(&S->mu);
    bool kept = S->npool < (int)(sizeof S->pool / sizeof S->pool[0]);
    if (kept) S->pool[S->npool++] = db;
    pthread_mutex_unlock(&S->mu);
    if (!kept) db_close(db);
}

Job *server_find(Server *S, const char *id)
{
    for (Job *j = S->all; j; j = j->next_all)
        if (!strcmp(j->id, id)) return j;
    return NULL;
}

/* Takes every waiting stream off the list (under mu); the caller resumes them. */
static Waiter *take_waiting(Server *S)
{
    Waiter *w = S->waiting;
    S->waiting = NULL;
    return w;
}

static void resume_all(Waiter *w)
{
    while (w) {
        Waiter *next = w->next;
        w->next = NULL;
        MHD_resume_connection(w->con);
        w = next;
    }
}

void server_news(Server *S)
{
    pthread_mutex_lock(&S->mu);
    S->news_gen++;
    Waiter *w = take_waiting(S);
    pthread_mutex_unlock(&S->mu);
    resume_all(w);
}

bool server_wait(Server *S, Waiter *w, uint64_t gen)
{
    pthread_mutex_lock(&S->mu);
    bool wait = !S->streams_end && S->news_gen == gen;
    if (wait) {
        w->next = S->waiting;
        S->waiting = w;
    }
    pthread_mutex_unlock(&S->mu);
    return wait;
}

void server_forget(Server *S, Waiter *w)
{
    pthread_mutex_lock(&S->mu);
    for (Waiter **p = &S->waiting; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    pthread_mutex_unlock(&S->mu);
}

/* Every second the suspended streams look again: a resume that raced a
 * suspend is never lost for long, and SSE gets its keep-alive comments. */
static void *ticker(void *arg)
{
    Server *S = arg;
    pthread_mutex_lock(&S->mu);
    while (!S->streams_end) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&S->tick, &S->mu, &until);
        Waiter *w = take_waiting(S);
        pthread_mutex_unlock(&S->mu);
        resume_all(w);
        pthread_mutex_lock(&S->mu);
    }
    pthread_mutex_unlock(&S->mu);
    return NULL;
}

static void *worker(void *arg)
{
    Server *S = arg;
    pthread_mutex_lock(&S->mu);
    for (;;) {
        while (!S->head && !S->stopping) pthread_cond_wait(&S->work, &S->mu);
        if (S->stopping) break;
        Job *j = S->head;
        S->head = j->next;
        if (!S->head) S->tail = NULL;
        S->queued--;
        /* cancelled while queued: its row says so already */
        if (j->stop) continue;
        S->running++;
        snprintf(j->status, sizeof j->status, "running");
        pthread_mutex_unlock(&S->mu);
        job_execute(S, j);
        pthread_mutex_lock(&S->mu);
        S->running--;
        pthread_mutex_unlock(&S->mu);
        server_news(S);
        pthread_mutex_lock(&S->mu);
    }
    pthread_mutex_unlock(&S->mu);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * Start and stop */

static bool loopback(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
    if (a->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)a)->sin6_addr);
    return false;
}

/* "host:port", "[v6]:port" or ":port" (loopback) into *ss. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, Err *err)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon) return err_set(err, "--listen: '%s' is not host:port", s);
    size_t hn = (size_t)(colon - s);
    if (hn >= sizeof host) return err_set(err, "--listen: the host is too long");
    memcpy(host, s, hn);
    host[hn] = 0;
    if (hn >= 2 && host[0] == '[' && host[hn - 1] == ']') {
        memmove(host, host + 1, hn - 2);
        host[hn - 2] = 0;
    }
    if (!host[0]) snprintf(host, sizeof host, "127.0.0.1");
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
        return err_set(err, "--listen: '%s' is not a port (0 to 65535)", colon + 1);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc) return err_set(err, "--listen: cannot resolve '%s': %s", host, gai_strerror(rc));
    memset(ss, 0, sizeof *ss);
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    return 0;
}

/* The address to listen on, into *ss, with what it may be given. */
static int listen_address(const ServeOpts *o, struct sockaddr_storage *ss, Err *err)
{
    if (parse_listen(o->listen ? o->listen : "127.0.0.1:8080", ss, err)) return -1;
    if (!o->token && !loopback((struct sockaddr *)ss))
        return err_set(err, "--listen %s: without --token-file this server listens on loopback "
                       "addresses only (127.0.0.0/8, ::1); give it a token to listen further",
                       o->listen);
    if (o->workers < 1 || o->queue < 1 || o->max_body < 1)
        return err_set(err, "serve: workers, queue and max body must be at least 1");
    return 0;
}

int server_check(const ServeOpts *o, Err *err)
{
    struct sockaddr_storage ss;
    return listen_address(o, &ss, err);
}

Server *server_start(const ServeOpts *o, Err *err)
{
    struct sockaddr_storage ss;
    if (listen_address(o, &ss, err)) return NULL;
    Db *db = db_open(o->db_path, err);
    int nint = 0, nrun = 0, nprof = 0;
    if (!db || db_search_interrupt(db, false, &nint, err) ||
        db_run_interrupt(db, false, &nrun, err) || db_profile_interrupt_dead(db, &nprof, err)) {
        db_close(db);
        return NULL;
    }
    db_close(db);
    if (nint && o->log)
        fprintf(o->log, "{\"note\":\"%d search%s whose process ended before %s did marked "
                "interrupted\"}\n", nint, nint == 1 ? "" : "es", nint == 1 ? "it" : "they");
    if (nrun && o->log)
        fprintf(o->log, "{\"note\":\"%d run%s whose server ended before %s did marked "
                "interrupted\"}\n", nrun, nrun == 1 ? "" : "s", nrun == 1 ? "it" : "they");
    if (nprof && o->log)
        fprintf(o->log, "{\"note\":\"%d profile%s whose process ended before closing %s "
                "marked interrupted\"}\n", nprof, nprof == 1 ? "" : "s",
                nprof == 1 ? "it" : "them");
    Server *S = xcalloc(1, sizeof *S);
    S->o = *o;
    S->db_path = xstrdup(o->db_path);
    S->token = o->token ? xstrdup(o->token) : NULL;
    S->bin = xstrdup(o->strata_bin);
    pthread_mutex_init(&S->mu, NULL);
    pthread_cond_init(&S->work, NULL);
    pthread_cond_init(&S->tick, NULL);
    S->counts = xcalloc((size_t)(NROUTES + 1) * NSTATUS, sizeof *S->counts);
    S->nthreads = o->workers;
    S->threads = xcalloc((size_t)S->nthreads, sizeof *S->threads);
    for (int i = 0; i < S->nthreads; i++) pthread_create(&S->threads[i], NULL, worker, S);
    pthread_create(&S->ticker, NULL, ticker, S);
    /* a pool of threads, two per core (a handler that reads the store for a
     * while leaves the other's connections going), each with its own epoll
     * over its connections; event streams suspend their connection while
     * there is nothing to send (no thread waits) */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned pool = cores < 1 ? 2 : cores > 16 ? 32 : 2 * (unsigned)cores;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_TURBO | MHD_USE_ERROR_LOG;
    /* many connections: the soft limit on descriptors raised to the hard one */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    S->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, S,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, S,
                                 MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
                                 MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_THREAD_POOL_SIZE, pool,
                                 MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                                 MHD_OPTION_END);
    if (!S->daemon) {
        err_set(err, "serve: cannot listen on %s (in use, or not an address of this machine)",
                o->listen);
        server_stop(S);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(S->daemon, MHD_DAEMON_INFO_BIND_PORT);
    S->port = di ? di->port : 0;
    return S;
}

int server_port(const Server *S)
{
    return S->port;
}

void server_stop(Server *S)
{
    if (!S) return;
    pthread_mutex_lock(&S->mu);
    S->stopping = true;
    for (Job *j = S->all; j; j = j->next_all) {
        j->stop = 1;
        if (j->pid > 0) kill(j->pid, SIGTERM);     /* a run's or a profile's child */
    }
    pthread_cond_broadcast(&S->work);
    pthread_cond_broadcast(&S->tick);
    pthread_mutex_unlock(&S->mu);
    if (S->daemon) {
        MHD_socket fd = MHD_quiesce_daemon(S->daemon);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
    for (int i = 0; i < S->nthreads; i++) pthread_join(S->threads[i], NULL);
    /* searches and runs queued but never started */
    Db *db = db_open(S->db_path, &(Err){ { 0 } });
    int n;
    if (db) {
        db_search_interrupt(db, true, &n, &(Err){ { 0 } });
        db_run_interrupt(db, true, &n, &(Err){ { 0 } });
    }
    db_close(db);
    /* the searches have stored their last events: the streams following
     * them send what is left (an SSE stream its end) and close, for a
     * while at most, before the connections go */
    pthread_mutex_lock(&S->mu);
    S->streams_end = true;
    pthread_cond_broadcast(&S->tick);
    Waiter *w = take_waiting(S);
    pthread_mutex_unlock(&S->mu);
    resume_all(w);
    pthread_join(S->ticker, NULL);
    pthread_mutex_lock(&S->mu);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    while (S->open_streams > 0 &&
           pthread_cond_timedwait(&S->tick, &S->mu, &until) != ETIMEDOUT) {}
    pthread_mutex_unlock(&S->mu);
    if (S->daemon) MHD_stop_daemon(S->daemon);
    for (int i = 0; i < S->npool; i++) db_close(S->pool[i]);
    Job *j = S->all;
    while (j) {
        Job *next = j->next_all;
        free(j->resume);
        free(j);
        j = next;
    }
    free(S->threads);
    free(S->counts);
    free(S->db_path);
    free(S->token);
    free(S->bin);
    pthread_cond_destroy(&S->tick);
    pthread_cond_destroy(&S->work);
    pthread_mutex_destroy(&S->mu);
    free(S);
}
