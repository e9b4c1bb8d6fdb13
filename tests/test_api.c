/*
 * test_api.c — the REST API over real HTTP on loopback: every endpoint with
 * its errors, searches followed to their end, cancelled, refused when the
 * queue is full; authentication and body limits; a plan run under mpirun
 * from the API; and the process around it: `strata serve` stopped by
 * SIGTERM (exit 0, the search keeps its best) and killed with -9 (the store
 * intact, the search marked interrupted on restart).
 *
 * Most tests run the server in this process (server_start), so that a
 * sanitizer build checks it too; the two about signals run the binary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "tests/support/cli_harness.h"

/* ----------------------------------------------------------------------------
 * A small HTTP/1.1 client: one request per connection (Connection: close),
 * the answer read to its end, a chunked body decoded. */

typedef struct {
    int status;
    char *head;                     /* status line and headers (tracked) */
    char *body;                     /* tracked */
    size_t len;
} Http;

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static void dechunk(char *b, size_t *len)
{
    size_t in = 0, out = 0;
    while (in < *len) {
        char *end;
        unsigned long n = strtoul(b + in, &end, 16);
        char *nl = strstr(end, "\r\n");
        if (!nl || n == 0) break;
        in = (size_t)(nl + 2 - b);
        memmove(b + out, b + in, n);
        out += n;
        in += n + 2;
    }
    *len = out;
    b[out] = 0;
}

/* extra: more header lines ("Name: value\r\n"...), or NULL; a body of bl
 * bytes of the given type. */
static void http_body(int port, const char *method, const char *path, const char *extra,
                      const char *body, size_t bl, const char *type, Http *h)
{
    memset(h, 0, sizeof *h);
    int fd = connect_to(port);
    assert_true(fd >= 0);
    char *req = NULL;
    size_t rn = 0;
    FILE *f = open_memstream(&req, &rn);
    /* Host: 127.0.0.1 unless extra says its own */
    bool host = extra && (!strncasecmp(extra, "Host:", 5) || strcasestr(extra, "\r\nHost:"));
    fprintf(f, "%s %s HTTP/1.1\r\n%sConnection: close\r\n%s", method, path,
            host ? "" : "Host: 127.0.0.1\r\n", extra ? extra : "");
    if (body) fprintf(f, "Content-Type: %s\r\nContent-Length: %zu\r\n", type, bl);
    fprintf(f, "\r\n");
    if (body) fwrite(body, 1, bl, f);
    fclose(f);
    for (size_t off = 0; off < rn;) {
        ssize_t k = send(fd, req + off, rn - off, MSG_NOSIGNAL);
        if (k <= 0) break;
        off += (size_t)k;
    }
    free(req);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) buf = realloc(buf, cap = cap * 2 + 65536);
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k <= 0) break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    assert_non_null(sep);
    *sep = 0;
    h->head = harness_track(strdup(buf), false);
    h->status = atoi(buf + 9);
    h->len = n - (size_t)(sep + 4 - buf);
    h->body = harness_track(malloc(h->len + 1), false);
    memcpy(h->body, sep + 4, h->len);
    h->body[h->len] = 0;
    free(buf);
    if (strcasestr(h->head, "Transfer-Encoding: chunked")) dechunk(h->body, &h->len);
}

static void http(int port, const char *method, const char *path, const char *extra,
                 const char *body, Http *h)
{
    http_body(port, method, path, extra, body, body ? strlen(body) : 0, "application/json", h);
}

static cJSON *body_json(const Http *h)
{
    cJSON *j = harness_track(cJSON_Parse(h->body), true);
    if (!j) fail_msg("not JSON (status %d): %s", h->status, h->body);
    return j;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v)) fail_msg("no string \"%s\"", k);
    return v->valuestring;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) fail_msg("no number \"%s\"", k);
    return v->valuedouble;
}

/* An error answer: its status, and the path it names. */
static void expect_error(const Http *h, int status, const char *path)
{
    if (h->status != status) fail_msg("status %d, expected %d: %s", h->status, status, h->body);
    cJSON *j = body_json(h);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    assert_non_null(e);
    assert_int_equal((int)jnum(e, "status"), status);
    assert_true(strlen(jstr(e, "message")) > 0);
    if (path && strcmp(jstr(e, "path"), path))
        fail_msg("error path \"%s\", expected \"%s\": %s", jstr(e, "path"), path, h->body);
}

static void expect(const Http *h, int status)
{
    if (h->status != status) fail_msg("status %d, expected %d: %s", h->status, status, h->body);
}

static char *file_text(const char *rel)
{
    char *t = harness_slurp(harness_root_path(rel), NULL);
    assert_non_null(t);
    return harness_track(t, false);
}

/* ----------------------------------------------------------------------------
 * The server of most tests */

static Server *S;
static int port;
static char model_id[17], cluster_id[17], cpu_id[17];

static Server *start(const char *db, const char *token, int workers, int queue, size_t max_body)
{
    Err err = {0};
    ServeOpts o = { .listen = "127.0.0.1:0", .db_path = db, .workers = workers, .queue = queue,
                    .token = token, .max_body = max_body, .strata_bin = harness_bin() };
    Server *s = server_start(&o, &err);
    if (!s) fail_msg("server_start: %s", err.msg);
    return s;
}

/* POSTs body to the server on port p; the id the 201 gives. */
static const char *post_id_on(int p, const char *path, const char *body)
{
    Http h;
    http(p, "POST", path, NULL, body, &h);
    expect(&h, 201);
    return jstr(body_json(&h), "id");
}

static const char *post_id(const char *path, const char *body)
{
    return post_id_on(port, path, body);
}

static void test_health_page_metrics(void **state)
{
    (void)state;
    Http h;
    http(port, "GET", "/healthz", NULL, NULL, &h);
    expect(&h, 200);
    assert_string_equal(jstr(body_json(&h), "status"), "ok");
    http(port, "GET", "/", NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strcasestr(h.head, "Content-Type: text/html"));
    assert_non_null(strstr(h.body, "<script>"));
    /* no external assets */
    assert_null(strstr(h.body, "src=\"http"));
    assert_null(strstr(h.body, "href=\"http"));
    assert_null(strstr(h.body, "@import"));
    http(port, "GET", "/metrics", NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strstr(h.body, "strata_http_requests_total{route=\"/healthz\",status=\"200\"}"));
    assert_non_null(strstr(h.body, "strata_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
    assert_non_null(strstr(h.body, "strata_queue_depth 0"));
    assert_non_null(strstr(h.body, "strata_jobs_running"));
    assert_non_null(strstr(h.body, "strata_search_evaluations_per_second"));
}

static void test_models_and_clusters(void **state)
{
    (void)state;
    Http h;
    snprintf(model_id, sizeof model_id, "%s", post_id("/v1/models", file_text("models/tiny-mlp.json")));
    /* the same model again: the same id (content-addressed), nothing doubled */
    assert_string_equal(post_id("/v1/models", file_text("models/tiny-mlp.json")), model_id);
    const char *zoo = post_id("/v1/models", "{\"zoo\": \"gpt\", \"options\": {\"preset\": \"small\"}}");
    http(port, "GET", "/v1/models", NULL, NULL, &h);
    expect(&h, 200);
    cJSON *list = body_json(&h);
    assert_int_equal(cJSON_GetArraySize(list), 2);
    assert_non_null(strstr(h.body, zoo));
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", model_id);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(body_json(&h), "model")));
    assert_true(jnum(body_json(&h), "params") > 0);

    snprintf(cluster_id, sizeof cluster_id, "%s",
             post_id("/v1/clusters?nodes=1", file_text("clusters/dgx-a100-80gb.json")));
    snprintf(cpu_id, sizeof cpu_id, "%s", post_id("/v1/clusters", file_text("clusters/local-cpu.json")));
    snprintf(path, sizeof path, "/v1/clusters/%s", cluster_id);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    assert_int_equal((int)jnum(body_json(&h), "devices"), 8);
    http(port, "GET", "/v1/clusters", NULL, NULL, &h);
    expect(&h, 200);
    assert_int_equal(cJSON_GetArraySize(body_json(&h)), 2);

    /* bad input, each named */
    static const struct { const char *body, *path; } bad_models[] = {
        { "{\"name\": ", "" },
        { "[1, 2]", "" },
        { "", "" },
        { "{\"zoo\": \"gpt\", \"options\": {\"preset\": \"huge\"}}", "options.preset" },
        { "{\"zoo\": \"gpt\", \"options\": {\"layrs\": 2}}", "options.layrs" },
        { "{\"zoo\": \"gpt\", \"options\": {\"layers\": [1]}}", "options.layers" },
        { "{\"zoo\": \"gtp\"}", "zoo" },
        { "{\"zoo\": \"mlp\", \"optoins\": {\"layers\": 3}}", "optoins" },
        /* a reader's unknown field is named itself, not its object */
        { "{\"name\": \"x\", \"tensors\": [], \"ops\": [], \"bogus\": 1}", "bogus" },
        { "{\"name\": \"x\", \"ops\": []}", "tensors" },
        /* the body is the model: its fields are named from the body's root */
        { "{\"name\": \"\", \"tensors\": [], \"ops\": []}", "name" },
    };
    for (size_t i = 0; i < sizeof bad_models / sizeof bad_models[0]; i++) {
        http(port, "POST", "/v1/models", NULL, bad_models[i].body, &h);
        expect_error(&h, 400, bad_models[i].path);
    }
    /* JSON under another name is refused; curl's default for -d is taken */
    http_body(port, "POST", "/v1/models", NULL, "{}", 2, "text/plain", &h);
    expect_error(&h, 415, "");
    const char *tiny = file_text("models/tiny-mlp.json");
    static const char *const json_types[] = { "application/x-www-form-urlencoded",
                                              "Application/JSON; charset=utf-8" };
    for (int i = 0; i < 2; i++) {
        http_body(port, "POST", "/v1/models", NULL, tiny, strlen(tiny), json_types[i], &h);
        expect(&h, 201);
        assert_string_equal(jstr(body_json(&h), "id"), model_id);
    }
    http_body(port, "POST", "/v1/models", NULL, "\x0a\x03junk", 6, "application/onnx", &h);
    expect_error(&h, 400, "");
    assert_non_null(strstr(h.body, "ONNX"));
    http(port, "POST", "/v1/clusters?nodes=0", NULL, file_text("clusters/dgx-a100-80gb.json"), &h);
    expect_error(&h, 400, "nodes");
    http(port, "POST", "/v1/clusters", NULL, "{\"name\": \"c\"}", &h);
    expect_error(&h, 400, NULL);
    http(port, "GET", "/v1/models/xyz", NULL, NULL, &h);
    expect_error(&h, 400, "id");
    http(port, "GET", "/v1/models/0123456789abcdef", NULL, NULL, &h);
    expect_error(&h, 404, "");
    http(port, "GET", "/v1/clusters/'%20OR%201=1", NULL, NULL, &h);
    expect_error(&h, 400, "id");
    /* a request that says its length twice */
    http(port, "POST", "/v1/models", "Content-Length: 2\r\nContent-Length: 200\r\n", NULL, &h);
    expect_error(&h, 400, "");
    assert_non_null(strstr(h.body, "Content-Length"));
    /* an id does not end at an encoded NUL, an encoded slash separates no
     * segments, and an id of any length is refused as one */
    snprintf(path, sizeof path, "/v1/models/%s%%00junk", model_id);
    http(port, "GET", path, NULL, NULL, &h);
    expect_error(&h, 400, "id");
    snprintf(path, sizeof path, "/v1/models%%2F%s", model_id);
    http(port, "GET", path, NULL, NULL, &h);
    expect_error(&h, 404, "");
    snprintf(path, sizeof path, "/v1/models/%s%s%s%s%s%s", model_id, model_id, model_id, model_id,
             model_id, model_id);
    http(port, "GET", path, NULL, NULL, &h);
    expect_error(&h, 400, "id");
    /* a query argument is given once, with a value, as plain digits */
    static const char *const bad_queries[] = { "/v1/plans?limit=1&limit=abc", "/v1/plans?limit",
                                               "/v1/plans?limit=%201", "/v1/plans?limit=%2B1" };
    for (int i = 0; i < 4; i++) {
        http(port, "GET", bad_queries[i], NULL, NULL, &h);
        expect_error(&h, 400, "limit");
    }
    /* past 32 distinct arguments a query is refused, at the 33rd, so that a
     * repeat after them cannot pass unchecked */
    {
        char q[1024] = "/v1/plans?";
        for (int i = 0; i < 33; i++)
            snprintf(q + strlen(q), sizeof q - strlen(q), "%sa%d=1", i ? "&" : "", i);
        http(port, "GET", q, NULL, NULL, &h);
        expect_error(&h, 400, "a32");
        strstr(q, "&a32=1")[0] = 0;
        http(port, "GET", q, NULL, NULL, &h);
        expect(&h, 200);
    }
    /* in a query value an encoded slash is a slash; the page reads no query */
    http(port, "GET", "/v1/plans?model=team%2Fgpt", NULL, NULL, &h);
    expect(&h, 200);
    assert_int_equal(cJSON_GetArraySize(body_json(&h)), 0);
    http(port, "GET", "/?search=", NULL, NULL, &h);
    expect(&h, 200);
    http(port, "POST", "/v1/clusters?nodes=2&nodes=abc", NULL,
         file_text("clusters/dgx-a100-80gb.json"), &h);
    expect_error(&h, 400, "nodes");
    http(port, "PUT", "/v1/models", NULL, "{}", &h);
    expect_error(&h, 405, "");
    assert_non_null(strcasestr(h.head, "Allow: GET, HEAD, POST"));
    http(port, "DELETE", "/v1/models/0123456789abcdef", NULL, NULL, &h);
    expect_error(&h, 405, "");
    http(port, "GET", "/v1/nothing", NULL, NULL, &h);
    expect_error(&h, 404, "");
    /* nothing stored by the refusals */
    http(port, "GET", "/v1/models", NULL, NULL, &h);
    assert_int_equal(cJSON_GetArraySize(body_json(&h)), 2);
}

static void test_estimate(void **state)
{
    (void)state;
    Http h;
    char body[512];
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"zero\", \"zero\": 3}}", model_id, cluster_id);
    http(port, "POST", "/v1/estimate", NULL, body, &h);
    expect(&h, 200);
    cJSON *e = body_json(&h);
    assert_true(jnum(e, "step_time_s") > 0);
    assert_int_equal(strlen(jstr(e, "plan_id")), 16);

    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"megatron\", \"tp\": 3}}", model_id, cluster_id);
    http(port, "POST", "/v1/estimate", NULL, body, &h);
    expect_error(&h, 400, NULL);
    assert_non_null(strstr(jstr(cJSON_GetObjectItemCaseSensitive(body_json(&h), "error"), "path"),
                           "strategy"));
    /* the shorthand's members are named inside it, typos included */
    static const struct { const char *strategy, *path; } bad[] = {
        { "{\"kind\": \"megatron\", \"tp\": -1}", "strategy.tp" },
        { "{\"kind\": \"megatron\", \"tpp\": 2}", "strategy.tpp" },
        { "{\"kind\": \"megatron\", \"recompute\": 1}", "strategy.recompute" },
        { "{\"kind\": 1}", "strategy.kind" },
        { "7", "strategy" },
        /* a builder's refusal names the option it is about */
        { "{\"kind\": \"megatron\", \"tp\": 3}", "strategy.tp" },
        { "{\"kind\": \"zero\", \"zero\": 7}", "strategy.zero" },
        { "{\"kind\": \"gpipe\", \"pp\": 2, \"microbatches\": 3}", "strategy.microbatches" },
        { "{\"kind\": \"dp\", \"compress\": \"zzz\"}", "strategy.compress" },
        { "{\"kind\": \"dpp\"}", "strategy.kind" },
        { "{\"mesh\": {\"dp\": 1}, \"bogus\": 1}", "strategy.bogus" },
        /* a path with an op or param pattern in it */
        { "{\"mesh\": {\"dp\": 2}, \"ops\": {\"blocks.*\": {\"split\": {\"q\": \"dp\"}}}}",
          "strategy.ops[\"blocks.*\"]" },
        { "{\"mesh\": {\"dp\": 2}, \"params\": {\"*\": {\"sync\": {\"method\": \"ps\", "
          "\"shards\": 0}}}}", "strategy.params[\"*\"].sync.shards" },
        { "{\"mesh\": {\"dp\": 2, \"tp\": 2}}", "strategy.mesh.tp" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": %s}",
                 model_id, cluster_id, bad[i].strategy);
        http(port, "POST", "/v1/estimate", NULL, body, &h);
        expect_error(&h, 400, bad[i].path);
    }
    snprintf(body, sizeof body, "{\"model\": \"0123456789abcdef\", \"cluster\": \"%s\", "
             "\"strategy\": {\"kind\": \"dp\"}}", cluster_id);
    http(port, "POST", "/v1/estimate", NULL, body, &h);
    expect_error(&h, 400, "model");
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"strategy\": {\"kind\": \"dp\"}}", model_id);
    http(port, "POST", "/v1/estimate", NULL, body, &h);
    expect_error(&h, 400, "cluster");
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"dp\"}, \"costmodel\": \"0123456789abcdef\"}", model_id, cluster_id);
    http(port, "POST", "/v1/estimate", NULL, body, &h);
    expect_error(&h, 400, "costmodel");
}

/* Polls GET path until its "status" is none of the unfinished ones. */
static cJSON *wait_done_on(int p, const char *path, int seconds)
{
    for (int i = 0; i < seconds * 10; i++) {
        Http h;
        http(p, "GET", path, NULL, NULL, &h);
        expect(&h, 200);
        cJSON *j = body_json(&h);
        const char *st = jstr(j, "status");
        if (strcmp(st, "queued") && strcmp(st, "running")) return j;
        harness_release(j);
        usleep(100000);
    }
    fail_msg("%s did not finish in %d s", path, seconds);
    return NULL;
}

static cJSON *wait_done(const char *path, int seconds)
{
    return wait_done_on(port, path, seconds);
}

static void test_search_followed(void **state)
{
    (void)state;
    Http h;
    char body[512], path[160];
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"budget\": \"300evals\", "
             "\"seed\": 3, \"devices\": 4}", model_id, cluster_id);
    http(port, "POST", "/v1/searches", NULL, body, &h);
    expect(&h, 202);
    cJSON *q = body_json(&h);
    char id[17];
    snprintf(id, sizeof id, "%s", jstr(q, "id"));
    assert_string_equal(jstr(q, "status"), "queued");
    snprintf(path, sizeof path, "Location: /v1/searches/%s", id);
    assert_non_null(strcasestr(h.head, path));

    /* followed: JSON lines as they happen, to the end */
    snprintf(path, sizeof path, "/v1/searches/%s/events?follow=1", id);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strcasestr(h.head, "application/x-ndjson"));
    int lines = 0;
    double last = -1;
    char *save = NULL, *end = NULL;
    for (char *l = strtok_r(h.body, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *e = harness_track(cJSON_Parse(l), true);
        assert_non_null(e);
        double n = jnum(e, "evaluations");
        assert_true(n >= last);
        last = n;
        end = l;
        lines++;
    }
    assert_true(lines >= 2);
    assert_non_null(strstr(end, "\"event\":\"end\""));

    snprintf(path, sizeof path, "/v1/searches/%s", id);
    cJSON *s = wait_done(path, 60);
    assert_string_equal(jstr(s, "status"), "done");
    assert_int_equal((int)jnum(s, "events"), lines);
    assert_true(jnum(s, "step_time_s") > 0);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(s, "latest_event"));
    char best[17];
    snprintf(best, sizeof best, "%s", jstr(s, "best_plan_id"));

    /* after=N: the rest; SSE: ids, then an end event */
    snprintf(path, sizeof path, "/v1/searches/%s/events?after=%d", id, lines - 1);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    assert_int_equal((int)(strchr(h.body, '\n') - h.body + 1), (int)h.len);
    snprintf(path, sizeof path, "/v1/searches/%s/events?follow=1&after=%d", id, lines - 1);
    http(port, "GET", path, "Accept: text/event-stream\r\n", NULL, &h);
    expect(&h, 200);
    char want[32];
    snprintf(want, sizeof want, "id: %d\n", lines);
    assert_non_null(strstr(h.body, want));
    assert_non_null(strstr(h.body, "event: end\ndata: {\"status\":\"done\"}"));
    snprintf(path, sizeof path, "/v1/searches/%s/events?after=-1", id);
    http(port, "GET", path, NULL, NULL, &h);
    expect_error(&h, 400, "after");

    /* the plans: the best first when ordered by prediction; its page */
    http(port, "GET", "/v1/plans?order=predicted&limit=50", NULL, NULL, &h);
    expect(&h, 200);
    cJSON *plans = body_json(&h);
    assert_true(cJSON_GetArraySize(plans) >= 1);
    double prev = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, plans) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "step_time_s");
        if (!cJSON_IsNumber(st)) continue;
        assert_true(st->valuedouble >= prev);
        prev = st->valuedouble;
    }
    snprintf(path, sizeof path, "/v1/plans?model=%s&limit=1", model_id);
    http(port, "GET", path, NULL, NULL, &h);
    assert_int_equal(cJSON_GetArraySize(body_json(&h)), 1);
    http(port, "GET", "/v1/plans?model=nobody", NULL, NULL, &h);
    assert_int_equal(cJSON_GetArraySize(body_json(&h)), 0);
    http(port, "GET", "/v1/plans?order=sideways", NULL, NULL, &h);
    expect_error(&h, 400, "order");
    http(port, "GET", "/v1/plans?limit=0", NULL, NULL, &h);
    expect_error(&h, 400, "limit");
    snprintf(path, sizeof path, "/v1/plans/%s", best);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    cJSON *p = body_json(&h);
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(p, "strategy")));
    /* the plan as the list shows it, and more */
    assert_true(jnum(p, "step_time_s") > 0);
    assert_true(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(p, "feasible")));
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(p, "estimates")) >= 1);
    const cJSON *sr = cJSON_GetObjectItemCaseSensitive(p, "search");
    assert_string_equal(jstr(sr, "id"), id);
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(sr, "baselines")) >= 3);
    /* exported as a framework's configuration; raw: the file itself */
    snprintf(path, sizeof path, "/v1/plans/%s/export?to=deepspeed", best);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    cJSON *x = body_json(&h);
    assert_string_equal(jstr(x, "format"), "json");
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(x, "unmapped")));
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "exported"))) {
        snprintf(path, sizeof path, "/v1/plans/%s/export?to=deepspeed&raw=1", best);
        http(port, "GET", path, NULL, NULL, &h);
        expect(&h, 200);
        assert_true(jnum(body_json(&h), "train_batch_size") > 0);
    } else {
        assert_non_null(cJSON_GetObjectItemCaseSensitive(x, "closest"));
    }
    snprintf(path, sizeof path, "/v1/plans/%s/export?to=jax", best);
    http(port, "GET", path, NULL, NULL, &h);
    expect_error(&h, 400, "to");
    http(port, "GET", "/v1/plans/0123456789abcdef/export?to=megatron", NULL, NULL, &h);
    expect_error(&h, 404, "");
    snprintf(path, sizeof path, "/v1/plans/%s/timeline.svg", best);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strcasestr(h.head, "Content-Type: image/svg+xml"));
    assert_memory_equal(h.body, "<svg", 4);
    http(port, "GET", "/v1/searches", NULL, NULL, &h);
    assert_non_null(strstr(h.body, id));
}

static void test_search_refusals(void **state)
{
    (void)state;
    static const struct { const char *extra, *path; } bad[] = {
        { "\"algo\": \"annealing\"", "algo" },
        { "\"budget\": \"0s\"", "budget" },
        { "\"budget\": \"soon\"", "budget" },
        { "\"budget\": -3", "budget" },
        { "\"seed\": -1", "seed" },
        { "\"seed\": 1.5", "seed" },
        { "\"seed\": 9007199254740993", "seed" },   /* past what a JSON number holds */
        { "\"threads\": 0", "threads" },
        { "\"allow_lossy\": \"yes\"", "allow_lossy" },
        { "\"devices\": 100000", "devices" },
        { "\"budgt\": \"2s\"", "budgt" },           /* a typo is not the default */
        { "\"budget\": \"1e308h\"", "budget" },
        { "\"budget\": 1, \"budget\": 2", "" },       /* a key twice */
    };
    Http h;
    http(port, "GET", "/v1/searches", NULL, NULL, &h);
    int before = cJSON_GetArraySize(body_json(&h));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", %s}", model_id,
                 cluster_id, bad[i].extra);
        http(port, "POST", "/v1/searches", NULL, body, &h);
        expect_error(&h, 400, bad[i].path[0] ? bad[i].path : NULL);
    }
    http(port, "POST", "/v1/searches", NULL, "{\"cluster\": \"0123456789abcdef\"}", &h);
    expect_error(&h, 400, "model");
    http(port, "GET", "/v1/searches", NULL, NULL, &h);
    assert_int_equal(cJSON_GetArraySize(body_json(&h)), before);     /* nothing half-stored */
    http(port, "GET", "/v1/searches/0123456789abcdef", NULL, NULL, &h);
    expect_error(&h, 404, "");
    http(port, "DELETE", "/v1/searches/0123456789abcdef", NULL, NULL, &h);
    expect_error(&h, 404, "");
}

static void test_cancel(void **state)
{
    (void)state;
    Http h;
    char body[512], path[160];
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"budget\": \"120s\", "
             "\"algo\": \"mcmc\"}", model_id, cluster_id);
    http(port, "POST", "/v1/searches", NULL, body, &h);
    expect(&h, 202);
    char id[17];
    snprintf(id, sizeof id, "%s", jstr(body_json(&h), "id"));
    snprintf(path, sizeof path, "/v1/searches/%s", id);
    /* once it has made an event, it is running */
    for (int i = 0; i < 300; i++) {
        http(port, "GET", path, NULL, NULL, &h);
        if (jnum(body_json(&h), "events") > 0) break;
        usleep(100000);
    }
    http(port, "DELETE", path, NULL, NULL, &h);
    expect(&h, 202);
    assert_string_equal(jstr(body_json(&h), "status"), "stopping");
    cJSON *s = wait_done(path, 60);
    assert_string_equal(jstr(s, "status"), "stopped");
    assert_int_equal(strlen(jstr(s, "best_plan_id")), 16);          /* the best is kept */
    http(port, "DELETE", path, NULL, NULL, &h);
    expect_error(&h, 409, "");
}

static void test_run_from_the_api(void **state)
{
    (void)state;
    Http h;
    char body[512], path[160];
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"dp\"}}", model_id, cpu_id);
    http(port, "POST", "/v1/estimate", NULL, body, &h);
    expect(&h, 200);
    char plan[17];
    snprintf(plan, sizeof plan, "%s", jstr(body_json(&h), "plan_id"));
    snprintf(path, sizeof path, "/v1/plans/%s/runs", plan);
    http(port, "POST", path, NULL, "{\"steps\": 3, \"np\": 4}", &h);
    expect_error(&h, 400, "np");
    http(port, "POST", path, NULL, "{\"steps\": 0}", &h);
    expect_error(&h, 400, "steps");
    http(port, "POST", "/v1/plans/0123456789abcdef/runs", NULL, "{}", &h);
    expect_error(&h, 404, "");
    http(port, "POST", path, NULL, "{\"steps\": 3, \"np\": 2, \"verify\": true}", &h);
    expect(&h, 202);
    char id[17];
    snprintf(id, sizeof id, "%s", jstr(body_json(&h), "id"));
    const char *st0 = jstr(body_json(&h), "status");
    if (strcmp(st0, "queued") && strcmp(st0, "running")) fail_msg("a new run is %s", st0);
    /* a row from the start, listed and read like any run */
    snprintf(path, sizeof path, "/v1/runs/%s", id);
    http(port, "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    assert_string_equal(jstr(body_json(&h), "plan_id"), plan);
    cJSON *r = wait_done(path, 240);
    if (strcmp(jstr(r, "status"), "ok"))
        fail_msg("run: %s", cJSON_PrintUnformatted(r));
    assert_string_equal(jstr(r, "plan_id"), plan);
    assert_int_equal((int)jnum(r, "world"), 2);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "measurements")), 6);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(r, "verify"), "pass")));
    http(port, "GET", "/v1/runs", NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strstr(h.body, id));
    http(port, "GET", "/v1/runs/0123456789abcdef", NULL, NULL, &h);
    expect_error(&h, 404, "");
}

static void test_profiles(void **state)
{
    (void)state;
    Http h;
    http(port, "GET", "/v1/profiles", NULL, NULL, &h);
    expect(&h, 200);
    assert_true(cJSON_IsArray(body_json(&h)));
    /* a small profile of this machine through the queue: its row appears, complete */
    http(port, "POST", "/v1/profiles", NULL, "{\"ranks\": 0}", &h);
    expect_error(&h, 400, "ranks");
    http(port, "POST", "/v1/profiles", NULL, "{\"kinds\": \"add; rm -rf /\"}", &h);
    expect_error(&h, 400, "kinds");
    http(port, "POST", "/v1/profiles", NULL, "{\"kinds\": \"\"}", &h);
    expect_error(&h, 400, "kinds");
    http(port, "POST", "/v1/profiles", NULL, "{\"kinds\": \"nosuchkind\"}", &h);
    expect_error(&h, 400, "kinds");
    http(port, "POST", "/v1/profiles", NULL, "{\"quick\": true, \"kind\": \"add\"}", &h);
    expect_error(&h, 400, "kind");
    http(port, "POST", "/v1/profiles", NULL,
         "{\"quick\": true, \"kinds\": \"add\", \"seconds\": 2, \"no_links\": true}", &h);
    expect(&h, 202);
    char job[17];
    snprintf(job, sizeof job, "%s", jstr(body_json(&h), "id"));
    bool done = false;
    for (int i = 0; i < 1200 && !done; i++) {
        http(port, "GET", "/v1/profiles", NULL, NULL, &h);
        cJSON *list = body_json(&h);
        const cJSON *it;
        bool pending = false, row = false;
        cJSON_ArrayForEach(it, list) {
            const cJSON *jb = cJSON_GetObjectItemCaseSensitive(it, "job");
            if (cJSON_IsString(jb) && !strcmp(jb->valuestring, job)) {
                if (!strcmp(jstr(it, "status"), "failed"))
                    fail_msg("the profile job failed: %s", h.body);
                pending = true;
            }
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "complete"))) row = true;
        }
        harness_release(list);      /* a slow machine polls more than the harness holds */
        done = !pending && row;
        if (!done) usleep(100000);
    }
    assert_true(done);
    http(port, "GET", "/v1/profiles/1", NULL, NULL, &h);
    expect(&h, 200);
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(body_json(&h), "ops")) > 0);
    http(port, "GET", "/v1/profiles/abc", NULL, NULL, &h);
    expect_error(&h, 400, "id");
    http(port, "GET", "/v1/profiles/-3", NULL, NULL, &h);
    expect_error(&h, 400, "id");
    http(port, "GET", "/v1/profiles/999", NULL, NULL, &h);
    expect_error(&h, 404, "");
}

/* An ONNX model as the body of POST /v1/models: the onnx package's light
 * VGG-19 (build/venv), imported like `strata model import` does. */
static void test_onnx_upload(void **state)
{
    (void)state;
    char cmd[4200], line[3000] = "", path[4096];
    snprintf(cmd, sizeof cmd, "%s -c 'import onnx, os; print(os.path.dirname(onnx.__file__))' "
             "2>/dev/null", harness_root_path("build/venv/bin/python"));
    FILE *p = popen(cmd, "r");
    if (p) {
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        pclose(p);
    }
    line[strcspn(line, "\n")] = 0;
    if (!line[0]) fail_msg("the onnx package is missing from build/venv: run sh scripts/setup.sh test");
    snprintf(path, sizeof path, "%s/backend/test/data/light/light_vgg19.onnx", line);
    size_t n = 0;
    char *model = harness_track(harness_slurp(path, &n), false);
    assert_non_null(model);
    Http h;
    http_body(port, "POST", "/v1/models?batch=4&name=vgg19-onnx", NULL, model, n,
              "application/onnx", &h);
    expect(&h, 201);
    cJSON *j = body_json(&h);
    assert_string_equal(jstr(j, "name"), "vgg19-onnx");
    assert_true(fabs(jnum(j, "params") / 1e6 - 143.7) < 0.7);
    http_body(port, "POST", "/v1/models?batch=0", NULL, model, n, "application/onnx", &h);
    expect_error(&h, 400, "batch");
    http_body(port, "POST", "/v1/models?loss=hinge", NULL, model, n, "application/onnx", &h);
    expect_error(&h, 400, "loss");
    http_body(port, "POST", "/v1/models", NULL, model, n, "application/onnxish", &h);
    expect_error(&h, 415, "");
}

/* ----------------------------------------------------------------------------
 * Servers of their own */

static void test_token(void **state)
{
    (void)state;
    Err err = {0};
    ServeOpts wide = { .listen = "0.0.0.0:0", .db_path = harness_tmp_path("wide.db"),
                       .workers = 1, .queue = 1, .max_body = 1024, .strata_bin = harness_bin() };
    assert_null(server_start(&wide, &err));
    assert_non_null(strstr(err.msg, "loopback"));
    Server *s = start(harness_tmp_path("token.db"), "s3cret-token-0123456789", 1, 4, 1 << 20);
    int p = server_port(s);
    Http h;
    http(p, "GET", "/v1/models", NULL, NULL, &h);
    expect_error(&h, 401, "");
    assert_non_null(strcasestr(h.head, "WWW-Authenticate: Bearer"));
    http(p, "GET", "/v1/models", "Authorization: Bearer s3cret-token-012345678\r\n", NULL, &h);
    expect_error(&h, 401, "");
    http(p, "GET", "/v1/models", "Authorization: Bearer s3cret-token-01234567890\r\n", NULL, &h);
    expect_error(&h, 401, "");
    http(p, "GET", "/v1/models", "Authorization: Bearer s3cret-token-0123456789\r\n", NULL, &h);
    expect(&h, 200);
    http(p, "GET", "/v1/models", "Authorization: bearer s3cret-token-0123456789\r\n", NULL, &h);
    expect(&h, 200);                  /* the scheme in any case */
    http(p, "GET", "/v1/models", "Authorization: Bearer   s3cret-token-0123456789 \t\r\n", NULL,
         &h);
    expect(&h, 200);                  /* white space around the token */
    http(p, "GET", "/v1/models", "Authorization: Bearers3cret-token-0123456789\r\n", NULL, &h);
    expect_error(&h, 401, "");
    /* with a token, the token is the check: any Host, any Origin */
    http(p, "POST", "/v1/models", "Host: strata.example:80\r\nOrigin: http://elsewhere.example\r\n"
         "Authorization: Bearer s3cret-token-0123456789\r\n", "{\"zoo\": \"mlp\"}", &h);
    expect(&h, 201);
    http(p, "GET", "/healthz", NULL, NULL, &h);
    expect(&h, 200);
    http(p, "HEAD", "/healthz", NULL, NULL, &h);
    expect(&h, 200);
    /* the page holds no data: it loads, and asks for the token */
    http(p, "GET", "/", NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strstr(h.body, "needs its token"));
    http(p, "GET", "/metrics", NULL, NULL, &h);
    expect_error(&h, 401, "");
    /* a body over the cap: a stranger is not told the cap */
    http(p, "POST", "/v1/models", "Content-Length: 2000000\r\n", NULL, &h);
    expect_error(&h, 401, "");
    http(p, "POST", "/v1/models", "Content-Length: 2000000\r\n"
         "Authorization: Bearer s3cret-token-0123456789\r\n", NULL, &h);
    expect_error(&h, 413, "");
    /* refusals are counted by the route they asked for */
    http(p, "GET", "/metrics", "Authorization: Bearer s3cret-token-0123456789\r\n", NULL, &h);
    expect(&h, 200);
    assert_non_null(strstr(h.body, "strata_http_requests_total{route=\"/v1/models\",status=\"401\"} 5"));
    server_stop(s);
}

/* Without a token, what another site's page makes a browser send is
 * refused: a Host that is not a loopback name (DNS rebinding), a POST or
 * DELETE from another Origin or a cross-site fetch. curl-like clients
 * (neither header) and the server's own page pass. */
static void test_cross_site(void **state)
{
    (void)state;
    Http h;
    const char *mlp = "{\"zoo\": \"mlp\"}";
    http(port, "GET", "/v1/models", "Host: rebound.example:8080\r\n", NULL, &h);
    expect_error(&h, 403, "");
    assert_non_null(strstr(jstr(cJSON_GetObjectItemCaseSensitive(body_json(&h), "error"),
                                "message"), "Host rebound.example:8080"));
    http(port, "GET", "/v1/models", "Host: 127.0.0.1.rebound.example\r\n", NULL, &h);
    expect_error(&h, 403, "");
    http(port, "GET", "/v1/models", "Host: 127.0.0\r\n", NULL, &h);
    expect_error(&h, 403, "");
    const char *loop[] = { "Host: localhost:1\r\n", "Host: LOCALHOST\r\n", "Host: [::1]:80\r\n",
                           "Host: 127.0.0.1\r\n", "Host: 127.1.2.3:9\r\n" };
    for (int k = 0; k < 5; k++) {
        http(port, "GET", "/v1/models", loop[k], NULL, &h);
        expect(&h, 200);
    }
    /* the open routes hold nothing to read */
    http(port, "GET", "/healthz", "Host: rebound.example\r\n", NULL, &h);
    expect(&h, 200);
    http(port, "POST", "/v1/models", "Origin: http://elsewhere.example\r\n", mlp, &h);
    expect_error(&h, 403, "");
    assert_non_null(strstr(h.body, "http://elsewhere.example"));
    http(port, "POST", "/v1/models", "Origin: null\r\n", mlp, &h);
    expect_error(&h, 403, "");
    http(port, "DELETE", "/v1/searches/0123456789abcdef", "Origin: http://elsewhere.example\r\n",
         NULL, &h);
    expect_error(&h, 403, "");
    http(port, "POST", "/v1/models", "Sec-Fetch-Site: cross-site\r\n", mlp, &h);
    expect_error(&h, 403, "");
    /* a form's body, from another site: refused before it is read */
    http_body(port, "POST", "/v1/searches", "Origin: http://elsewhere.example\r\n", "a=b", 3,
              "application/x-www-form-urlencoded", &h);
    expect_error(&h, 403, "");
    /* the page (its own origin) and clients outside a browser */
    http(port, "POST", "/v1/models", "Origin: http://127.0.0.1\r\nSec-Fetch-Site: same-origin\r\n",
         mlp, &h);
    expect(&h, 201);
    http(port, "POST", "/v1/models", NULL, mlp, &h);
    expect(&h, 201);
    /* refusals are counted */
    http(port, "GET", "/metrics", NULL, NULL, &h);
    assert_non_null(strstr(h.body, "status=\"403\"}"));
}

/* Another process holding the store for writing past the wait (5 s): a
 * 503 to try again, naming the store but not its path; then the same
 * request goes through. */
static void test_store_busy(void **state)
{
    (void)state;
    const char *db = harness_tmp_path("api.db");
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    const char *body = "{\"zoo\": \"mlp\", \"options\": {\"layers\": 3}}";
    char est[512];
    snprintf(est, sizeof est, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"zero\", \"zero\": 1}}", model_id, cluster_id);
    Http r, e;
    http(port, "POST", "/v1/models", NULL, body, &r);
    http(port, "POST", "/v1/estimate", NULL, est, &e);     /* a job's store failure too */
    sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(h);
    const Http *both[2] = { &r, &e };
    for (int k = 0; k < 2; k++) {
        expect_error(both[k], 503, NULL);
        assert_non_null(strcasestr(both[k]->head, "Retry-After: 1"));
        assert_non_null(strstr(both[k]->body, "the store is busy"));
        if (strstr(both[k]->body, db)) fail_msg("the store's path told: %s", both[k]->body);
    }
    http(port, "POST", "/v1/models", NULL, body, &r);
    expect(&r, 201);
    http(port, "POST", "/v1/estimate", NULL, est, &e);
    expect(&e, 200);
}

static void test_limits(void **state)
{
    (void)state;
    Server *s = start(harness_tmp_path("limits.db"), NULL, 1, 1, 4096);
    int p = server_port(s);
    Http h;
    char *big = harness_track(malloc(10000), false);
    memset(big, ' ', 9999);
    big[0] = '{';
    big[9998] = '}';
    big[9999] = 0;
    http(p, "POST", "/v1/models", NULL, big, &h);
    expect_error(&h, 413, "");
    /* a path longer than any route's names none (not a cut copy of it) */
    char longpath[1100] = "/v1/models";
    memset(longpath + 10, '/', 1050);
    longpath[1060] = 0;
    http(p, "DELETE", longpath, NULL, NULL, &h);
    expect_error(&h, 404, "");
    assert_non_null(strstr(h.body, "a path of 1060 bytes"));
    /* a body framed two ways: refused, the connection closed */
    http(p, "POST", "/v1/models", "Transfer-Encoding: chunked\r\n", "{\"zoo\": \"mlp\"}", &h);
    expect_error(&h, 400, "");
    assert_non_null(strstr(h.body, "both Content-Length and Transfer-Encoding"));
    assert_non_null(strcasestr(h.head, "Connection: close"));
    /* the queue: one worker busy, one job waiting, the next refused */
    char *m = file_text("models/tiny-mlp.json"), *c = file_text("clusters/dgx-a100-80gb.json");
    http(p, "POST", "/v1/models", NULL, m, &h);
    expect(&h, 201);
    char mid[17], cid[17], body[256];
    snprintf(mid, sizeof mid, "%s", jstr(body_json(&h), "id"));
    http(p, "POST", "/v1/clusters", NULL, c, &h);
    expect(&h, 201);
    snprintf(cid, sizeof cid, "%s", jstr(body_json(&h), "id"));
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"budget\": \"120s\", "
             "\"algo\": \"mcmc\"}", mid, cid);
    int accepted = 0, refused = 0;
    char queued[17] = "";
    for (int i = 0; i < 4; i++) {
        http(p, "POST", "/v1/searches", NULL, body, &h);
        if (h.status == 202) {
            accepted++;
            snprintf(queued, sizeof queued, "%s", jstr(body_json(&h), "id"));
        } else {
            expect_error(&h, 429, "");
            assert_non_null(strcasestr(h.head, "Retry-After:"));
            refused++;
        }
        usleep(300000);
    }
    assert_true(accepted >= 2 && accepted <= 3);
    assert_true(refused >= 1);
    /* the waiting one cancelled: its place is free at once, and a second
     * cancel finds nothing to cancel */
    char qpath[64];
    snprintf(qpath, sizeof qpath, "/v1/searches/%s", queued);
    http(p, "DELETE", qpath, NULL, NULL, &h);
    expect(&h, 200);
    assert_string_equal(jstr(body_json(&h), "status"), "cancelled");
    http(p, "GET", "/healthz", NULL, NULL, &h);
    assert_int_equal((int)jnum(body_json(&h), "queued"), 0);
    http(p, "DELETE", qpath, NULL, NULL, &h);
    expect_error(&h, 409, "");
    http(p, "POST", "/v1/searches", NULL, body, &h);
    expect(&h, 202);
    server_stop(s);     /* stops the running search, which keeps its best */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(harness_tmp_path("limits.db"), &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT status, count(*) FROM searches GROUP BY status "
                                        "ORDER BY status", -1, &st, NULL), SQLITE_OK);
    int stopped = 0, interrupted = 0, other = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        int n = sqlite3_column_int(st, 1);
        if (!strcmp(k, "stopped")) stopped += n;
        else if (!strcmp(k, "interrupted")) interrupted += n;
        else other += n;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_int_equal(stopped, 1);
    assert_int_equal(interrupted, accepted - 1);
    assert_int_equal(other, 1);       /* the one cancelled */
}

/* `strata serve` as a child on port `p`; stderr into a file. */
static pid_t serve_child(const char *db, int p)
{
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", p);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *e = freopen(harness_tmp_path("serve.err"), "a", stderr);
        (void)e;
        execl(harness_bin(), "strata", "serve", "--listen", listen, "--db", db, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) {
        int fd = connect_to(p);
        if (fd >= 0) {
            close(fd);
            return pid;
        }
        usleep(100000);
    }
    fail_msg("strata serve did not listen on %d", p);
    return -1;
}

/* A free port: bound by the kernel, then released. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t n = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Submits a long search to the server on p and waits for its first event. */
static void long_search(int p, char id[17])
{
    Http h;
    char body[256], path[128];
    char mid[17], cid[17];
    snprintf(mid, sizeof mid, "%s", post_id_on(p, "/v1/models", file_text("models/tiny-mlp.json")));
    snprintf(cid, sizeof cid, "%s",
             post_id_on(p, "/v1/clusters", file_text("clusters/dgx-a100-80gb.json")));
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"budget\": \"300s\", "
             "\"algo\": \"mcmc\", \"allow_lossy\": true}", mid, cid);
    http(p, "POST", "/v1/searches", NULL, body, &h);
    expect(&h, 202);
    snprintf(id, 17, "%s", jstr(body_json(&h), "id"));
    snprintf(path, sizeof path, "/v1/searches/%s", id);
    for (int i = 0; i < 300; i++) {
        http(p, "GET", path, NULL, NULL, &h);
        if (jnum(body_json(&h), "events") > 1) return;
        usleep(100000);
    }
    fail_msg("the search made no events");
}

static int wait_exit(pid_t pid, int seconds)
{
    for (int i = 0; i < seconds * 10; i++) {
        int ws;
        if (waitpid(pid, &ws, WNOHANG) == pid)
            return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
        usleep(100000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("the server did not exit in %d s", seconds);
    return -1;
}

/* A client following a search's events (SSE) until the server closes it. */
typedef struct {
    int port;
    char path[160];
    Http h;
} Follow;

static void *follow_events(void *arg)
{
    Follow *f = arg;
    http(f->port, "GET", f->path, "Accept: text/event-stream\r\n", NULL, &f->h);
    return NULL;
}

/* SIGTERM mid-search: the search stores its best, and a client following
 * its events gets every one the search stored, then the end. */
static void test_sigterm_keeps_the_best(void **state)
{
    (void)state;
    const char *db = harness_tmp_path("term.db");
    int p = free_port();
    pid_t pid = serve_child(db, p);
    char id[17];
    long_search(p, id);
    Follow f = { .port = p };
    snprintf(f.path, sizeof f.path, "/v1/searches/%s/events?follow=1", id);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, follow_events, &f), 0);
    usleep(300000);
    kill(pid, SIGTERM);
    assert_int_equal(wait_exit(pid, 60), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    Server *s = start(db, NULL, 1, 1, 1 << 20);
    Http h;
    char path[128];
    snprintf(path, sizeof path, "/v1/searches/%s", id);
    http(server_port(s), "GET", path, NULL, NULL, &h);
    cJSON *j = body_json(&h);
    assert_string_equal(jstr(j, "status"), "stopped");
    assert_int_equal(strlen(jstr(j, "best_plan_id")), 16);
    int stored = (int)jnum(j, "events"), got = 0;
    for (const char *q = f.h.body; (q = strstr(q, "event: search\n")); q++) got++;
    if (got != stored) fail_msg("the follower got %d of the %d events stored", got, stored);
    assert_non_null(strstr(f.h.body, "event: end\ndata: {\"status\":\"stopped\"}"));
    server_stop(s);
}

static void test_kill9_restart(void **state)
{
    (void)state;
    const char *db = harness_tmp_path("kill.db");
    int p = free_port();
    pid_t pid = serve_child(db, p);
    char id[17];
    long_search(p, id);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    sqlite3 *h3;
    assert_int_equal(sqlite3_open(db, &h3), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(h3, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(h3);
    Server *s = start(db, NULL, 1, 1, 1 << 20);
    int p2 = server_port(s);
    Http h;
    char path[128];
    snprintf(path, sizeof path, "/v1/searches/%s", id);
    http(p2, "GET", path, NULL, NULL, &h);
    cJSON *j = body_json(&h);
    assert_string_equal(jstr(j, "status"), "interrupted");
    int before = (int)jnum(j, "events");
    assert_true(before > 1);

    /* resumed from the best its events recorded, in the same row, events numbered on */
    char rpath[160];
    snprintf(rpath, sizeof rpath, "/v1/searches/%s/resume", id);
    http(p2, "POST", rpath, NULL, NULL, &h);
    expect(&h, 202);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body_json(&h), "from_best")));
    http(p2, "POST", rpath, NULL, NULL, &h);
    expect_error(&h, 409, "");
    for (int i = 0; i < 300; i++) {
        http(p2, "GET", path, NULL, NULL, &h);
        if (jnum(body_json(&h), "events") > before + 2) break;
        usleep(100000);
    }
    /* with the options it was asked for, kept for the resume */
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(body_json(&h), "options");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(opts, "allow_lossy")));
    assert_true(jnum(opts, "threads") == 1);
    /* running again: its last end and result are not shown as this run's */
    if (!strcmp(jstr(body_json(&h), "status"), "running")) {
        assert_null(cJSON_GetObjectItemCaseSensitive(body_json(&h), "finished"));
        assert_null(cJSON_GetObjectItemCaseSensitive(body_json(&h), "result"));
    }
    http(p2, "DELETE", path, NULL, NULL, &h);
    expect(&h, 202);
    j = wait_done_on(p2, path, 60);
    assert_string_equal(jstr(j, "status"), "stopped");
    assert_int_equal(strlen(jstr(j, "best_plan_id")), 16);
    char best[17];
    snprintf(best, sizeof best, "%s", jstr(j, "best_plan_id"));
    char epath[160];
    snprintf(epath, sizeof epath, "/v1/searches/%s/events?after=%d", id, before);
    http(p2, "GET", epath, NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strstr(h.body, "\"event\":\"resume\",") );
    assert_non_null(strstr(h.body, "\"step_s\":"));

    /* resumed again behind a busy worker and cancelled while it waits: the
     * best it had stays */
    char other[17];
    long_search(p2, other);
    http(p2, "POST", rpath, NULL, NULL, &h);
    expect(&h, 202);
    http(p2, "DELETE", path, NULL, NULL, &h);
    expect(&h, 200);
    http(p2, "GET", path, NULL, NULL, &h);
    j = body_json(&h);
    assert_string_equal(jstr(j, "status"), "cancelled");
    assert_string_equal(jstr(j, "best_plan_id"), best);
    server_stop(s);
}

/* Kills (SIGKILL) every process whose command line holds `word`: what a
 * killed server left running. */
static void kill_holding(const char *word)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[300], buf[4096];
        if (strspn(e->d_name, "0123456789") != strlen(e->d_name)) continue;
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++)
            if (!buf[i]) buf[i] = ' ';
        buf[n] = 0;
        if (strstr(buf, word)) kill(atoi(e->d_name), SIGKILL);
    }
    closedir(d);
}

/* A search the command line runs on the store a server then opens is
 * left running (its process lives); killed, the next `searches list` says
 * it was interrupted, and a server can resume it. */
static void test_cli_search_beside_server(void **state)
{
    (void)state;
    const char *db = harness_tmp_path("beside.db");
    char model[512], cluster[512];
    snprintf(model, sizeof model, "%s", harness_root_path("models/tiny-mlp.json"));
    snprintf(cluster, sizeof cluster, "%s", harness_root_path("clusters/dgx-a100-80gb.json"));
    pid_t cli = fork();
    assert_true(cli >= 0);
    if (cli == 0) {
        FILE *o = freopen("/dev/null", "w", stdout);
        FILE *e = freopen("/dev/null", "w", stderr);
        (void)o;
        (void)e;
        execl(harness_bin(), "strata", "search", "--model", model, "--cluster", cluster,
              "--budget", "300s", "--algo", "mcmc", "--db", db, (char *)NULL);
        _exit(127);
    }
    /* its row, with a few events */
    char id[17] = "";
    for (int i = 0; i < 300 && !id[0]; i++) {
        usleep(100000);
        sqlite3 *h = NULL;
        sqlite3_stmt *st = NULL;
        if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
            sqlite3_prepare_v2(h, "SELECT x.id FROM searches x WHERE (SELECT count(*) FROM "
                               "search_events e WHERE e.search_id = x.id) > 1", -1, &st,
                               NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            snprintf(id, sizeof id, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        sqlite3_close(h);
    }
    assert_int_equal(strlen(id), 16);
    Server *s = start(db, NULL, 1, 1, 1 << 20);
    Http h;
    char path[128];
    snprintf(path, sizeof path, "/v1/searches/%s", id);
    http(server_port(s), "GET", path, NULL, NULL, &h);
    assert_string_equal(jstr(body_json(&h), "status"), "running");
    snprintf(path, sizeof path, "/v1/searches/%s/resume", id);
    http(server_port(s), "POST", path, NULL, NULL, &h);
    expect_error(&h, 409, "");
    server_stop(s);
    kill(cli, SIGKILL);
    waitpid(cli, NULL, 0);
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "'%s' searches list --db '%s' 2>&1", harness_bin(), db);
    FILE *f = popen(cmd, "r");
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    assert_int_equal(pclose(f), 0);
    assert_non_null(strstr(out, "1 search whose process ended before it did marked interrupted"));
    assert_non_null(strstr(out, "interrupted"));
}

/* A server on a fresh store (db) as a child on a free port, running a
 * long run of tiny-mlp: the child's pid, the run's id and its path. */
static pid_t serve_long_run(const char *db, char id[17], char path[160])
{
    int p = free_port();
    pid_t pid = serve_child(db, p);
    Http h;
    char body[256], mid[17], cid[17], plan[17];
    snprintf(mid, sizeof mid, "%s", post_id_on(p, "/v1/models", file_text("models/tiny-mlp.json")));
    snprintf(cid, sizeof cid, "%s",
             post_id_on(p, "/v1/clusters", file_text("clusters/local-cpu.json")));
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"dp\"}}", mid, cid);
    http(p, "POST", "/v1/estimate", NULL, body, &h);
    expect(&h, 200);
    snprintf(plan, sizeof plan, "%s", jstr(body_json(&h), "plan_id"));
    snprintf(path, 160, "/v1/plans/%s/runs", plan);
    http(p, "POST", path, NULL, "{\"steps\": 100000}", &h);
    expect(&h, 202);
    snprintf(id, 17, "%s", jstr(body_json(&h), "id"));
    snprintf(path, 160, "/v1/runs/%s", id);
    bool running = false;
    for (int i = 0; i < 300 && !running; i++) {
        http(p, "GET", path, NULL, NULL, &h);
        running = !strcmp(jstr(body_json(&h), "status"), "running");
        if (!running) usleep(100000);
    }
    assert_true(running);
    return pid;
}

/* SIGTERM while a run the server started trains: the run is stopped too
 * (the server's children start with its signals as they are by default,
 * not blocked as the server's threads have them), the server exits soon,
 * and the run's row says it was interrupted. */
static void test_sigterm_mid_run(void **state)
{
    (void)state;
    const char *db = harness_tmp_path("termrun.db");
    char id[17], path[160];
    pid_t pid = serve_long_run(db, id, path);
    Http h;
    usleep(500000);                     /* into its steps */
    kill(pid, SIGTERM);
    assert_int_equal(wait_exit(pid, 30), 0);
    Server *s = start(db, NULL, 1, 1, 1 << 20);
    http(server_port(s), "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    cJSON *j = body_json(&h);
    assert_string_equal(jstr(j, "status"), "interrupted");
    server_stop(s);
    kill_holding(id);                   /* nothing, unless the run outlived its server */
}

/* A server killed while a run it started trains: the run's row says so
 * once a server opens the store again, and says why. */
static void test_kill9_mid_run(void **state)
{
    (void)state;
    const char *db = harness_tmp_path("killrun.db");
    char id[17], path[160];
    pid_t pid = serve_long_run(db, id, path);
    Http h;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    kill_holding(id);                   /* the run it started, left going */
    Server *s = start(db, NULL, 1, 1, 1 << 20);
    http(server_port(s), "GET", path, NULL, NULL, &h);
    expect(&h, 200);
    cJSON *j = body_json(&h);
    assert_string_equal(jstr(j, "status"), "interrupted");
    assert_non_null(strstr(jstr(j, "error"), "server stopped"));
    assert_non_null(jstr(j, "finished"));
    http(server_port(s), "GET", "/v1/runs", NULL, NULL, &h);
    expect(&h, 200);
    assert_non_null(strstr(h.body, id));
    server_stop(s);
}

static int group_setup(void **state)
{
    (void)state;
    if (harness_setup(&(HarnessConfig){ .name = "test_api", .deadline_s = 300,
                                        .lsan_supp = "tests/lsan.supp" }))
        return -1;
    signal(SIGPIPE, SIG_IGN);
    Err err = {0};
    ServeOpts o = { .listen = "127.0.0.1:0", .db_path = harness_tmp_path("api.db"), .workers = 2,
                    .queue = 8, .max_body = 1 << 20, .strata_bin = harness_bin() };
    S = server_start(&o, &err);
    if (!S) {
        fprintf(stderr, "test_api: server_start: %s\n", err.msg);
        return -1;
    }
    port = server_port(S);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    server_stop(S);
    return harness_teardown();
}

#define T(f) cmocka_unit_test_teardown(f, harness_release_all)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_health_page_metrics), T(test_models_and_clusters), T(test_estimate),
        T(test_search_followed), T(test_search_refusals), T(test_cancel),
        T(test_run_from_the_api), T(test_profiles), T(test_onnx_upload), T(test_token),
        T(test_limits), T(test_store_busy), T(test_cross_site),
        T(test_sigterm_keeps_the_best), T(test_kill9_restart), T(test_kill9_mid_run),
        T(test_sigterm_mid_run), T(test_cli_search_beside_server),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
