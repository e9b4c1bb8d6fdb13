/*
 * bench_api.c — the REST API under load, on loopback, with the server in
 * this process:
 *   1. wrk (Debian's `wrk`; `sh scripts/setup.sh bench`) against
 *      GET /v1/plans/{id} and GET /healthz at 100 and 500 connections:
 *      requests/s, p50 and p99 latency, errors (target: p99 < 10 ms at 500
 *      connections, no errors);
 *   2. two searches of GPT-3 175B on 1024 A100s run alone, then again under
 *      an open-loop client at a fixed 500 requests/s, each latency measured
 *      from the request's scheduled time (so queueing is not hidden): p50,
 *      p99, and the searches' evaluations/s with and without the load
 *      (target: slowed by at most 20%).
 * Figures, not pass/fail.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "api/api.h"
#include "ir/util.h"

static int port;

/* ----------------------------------------------------------------------------
 * A keep-alive HTTP client */

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* One request on fd; the status, the body into *body (malloc'd) when body
 * is not NULL. -1 when the connection failed. */
static int request(int fd, const char *method, const char *path, const char *json, char **body)
{
    char head[512];
    int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s"
                      "Content-Length: %zu\r\n\r\n", method, path,
                      json ? "Content-Type: application/json\r\n" : "", json ? strlen(json) : 0);
    if (send(fd, head, (size_t)hn, MSG_NOSIGNAL) != hn) return -1;
    if (json && send(fd, json, strlen(json), MSG_NOSIGNAL) != (ssize_t)strlen(json)) return -1;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    char *end = NULL;
    while (!end) {
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k <= 0) {
            free(buf);
            return -1;
        }
        n += (size_t)k;
        buf[n] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    int status = atoi(buf + 9);
    const char *cl = strcasestr(buf, "Content-Length:");
    size_t len = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    size_t have = n - (size_t)(end + 4 - buf), off = (size_t)(end + 4 - buf);
    while (have < len) {
        if (off + len + 1 > cap) buf = realloc(buf, cap = off + len + 1);
        ssize_t k = recv(fd, buf + off + have, len - have, 0);
        if (k <= 0) {
            free(buf);
            return -1;
        }
        have += (size_t)k;
    }
    if (body) {
        *body = malloc(len + 1);
        memcpy(*body, buf + off, len);
        (*body)[len] = 0;
    }
    free(buf);
    return status;
}

/* POST and the "id" of the answer (into id). */
static int post_id(const char *path, const char *json, char id[17])
{
    int fd = dial();
    char *body = NULL;
    int st = fd >= 0 ? request(fd, "POST", path, json, &body) : -1;
    if (fd >= 0) close(fd);
    cJSON *j = body ? cJSON_Parse(body) : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "id");
    if (!cJSON_IsString(v)) v = cJSON_GetObjectItemCaseSensitive(j, "plan_id");
    int rc = (st >= 200 && st < 300 && cJSON_IsString(v)) ? 0 : -1;
    if (!rc) snprintf(id, 17, "%s", v->valuestring);
    else fprintf(stderr, "bench_api: POST %s: %d %s\n", path, st, body ? body : "");
    cJSON_Delete(j);
    free(body);
    return rc;
}

static char *file_text(const char *rel)
{
    const char *root = getenv("STRATA_ROOT") ? getenv("STRATA_ROOT") : ".";
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    s[fread(s, 1, (size_t)n, f)] = 0;
    fclose(f);
    return s;
}

/* ----------------------------------------------------------------------------
 * 1. wrk */

static void run_wrk(const char *path, int conns)
{
    char url[256], c[16], out[] = "/tmp/strata-wrk-XXXXXX";
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    snprintf(c, sizeof c, "%d", conns);
    int fd = mkstemp(out);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("wrk", "wrk", "-t", "2", "-c", c, "-d", "8s", "--latency", url, (char *)NULL);
        _exit(127);
    }
    int ws;
    waitpid(pid, &ws, 0);
    char text[8192] = "";
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    text[n > 0 ? n : 0] = 0;
    close(fd);
    unlink(out);
    double rps = 0;
    char p50[32] = "-", p99[32] = "-";
    long errs = 0, non2xx = 0;
    const char *s;
    if ((s = strstr(text, "Requests/sec:"))) rps = strtod(s + 13, NULL);
    if ((s = strstr(text, "     50%"))) sscanf(s + 8, "%31s", p50);
    if ((s = strstr(text, "     99%"))) sscanf(s + 8, "%31s", p99);
    if ((s = strstr(text, "Socket errors:"))) {
        long a = 0, b = 0, cc = 0, d = 0;
        sscanf(s, "Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &a, &b, &cc, &d);
        errs = a + b + cc + d;
    }
    if ((s = strstr(text, "Non-2xx or 3xx responses:"))) non2xx = strtol(s + 26, NULL, 10);
    if (!rps) {
        printf("    wrk did not run: %.200s\n", text);
        return;
    }
    printf("    %-22s %4d connections: %9.0f requests/s, p50 %8s, p99 %8s, errors %ld, "
           "non-2xx %ld\n", path, conns, rps, p50, p99, errs, non2xx);
}

/* ----------------------------------------------------------------------------
 * 2. a fixed rate while searches run */

#define RATE 500.0
#define CLIENTS 8

typedef struct {
    int k;
    double t0, until;
    const char *path;
    double *lat;
    int nlat, cap;
    long errors;
} Client;

static void *client(void *arg)
{
    Client *c = arg;
    int fd = dial();
    for (long i = c->k;; i += CLIENTS) {
        double due = c->t0 + (double)i / RATE;
        if (due > c->until) break;
        double now = now_s();
        if (due > now) usleep((useconds_t)((due - now) * 1e6));
        int st = fd >= 0 ? request(fd, "GET", c->path, NULL, NULL) : -1;
        if (st < 0) {
            if (fd >= 0) close(fd);
            fd = dial();
            c->errors++;
            continue;
        }
        if (st != 200) c->errors++;
        if (c->nlat == c->cap) c->lat = realloc(c->lat, sizeof *c->lat * (size_t)(c->cap = c->cap * 2 + 256));
        c->lat[c->nlat++] = now_s() - due;
    }
    if (fd >= 0) close(fd);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Two searches at once; their evaluations/s (mean of the two), with the
 * fixed-rate client on path during them when load. */
static double two_searches(const char *mid, const char *cid, const char *path, bool load,
                           double secs)
{
    char body[512], ids[2][17];
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"algo\": \"mcmc\", "
                 "\"budget\": %g, \"seed\": %d}", mid, cid, secs, i + 1);
        if (post_id("/v1/searches", body, ids[i])) return NAN;
    }
    Client cl[CLIENTS];
    pthread_t th[CLIENTS];
    double t0 = now_s() + 0.5;
    if (load)
        for (int k = 0; k < CLIENTS; k++) {
            cl[k] = (Client){ .k = k, .t0 = t0, .until = t0 + secs - 1, .path = path };
            pthread_create(&th[k], NULL, client, &cl[k]);
        }
    /* wait for both to end */
    double eps = 0;
    for (int i = 0; i < 2; i++) {
        char p[64];
        snprintf(p, sizeof p, "/v1/searches/%s", ids[i]);
        for (;;) {
            int fd = dial();
            char *b = NULL;
            request(fd, "GET", p, NULL, &b);
            close(fd);
            cJSON *j = cJSON_Parse(b);
            free(b);
            const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "status"));
            if (st && strcmp(st, "queued") && strcmp(st, "running")) {
                const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "latest_event");
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(ev, "evaluations_per_s");
                eps += cJSON_IsNumber(v) ? v->valuedouble / 2 : NAN;
                cJSON_Delete(j);
                break;
            }
            cJSON_Delete(j);
            usleep(200000);
        }
    }
    if (load) {
        double *all = NULL;
        int n = 0;
        long errors = 0;
        for (int k = 0; k < CLIENTS; k++) {
            pthread_join(th[k], NULL);
            all = realloc(all, sizeof *all * (size_t)(n + cl[k].nlat + 1));
            memcpy(all + n, cl[k].lat, sizeof *all * (size_t)cl[k].nlat);
            n += cl[k].nlat;
            errors += cl[k].errors;
            free(cl[k].lat);
        }
        qsort(all, (size_t)n, sizeof *all, cmp);
        if (n)
            printf("    %.0f requests/s on %s from %d connections for %.0f s: %d answered, "
                   "p50 %.2f ms, p99 %.2f ms (from each request's scheduled time), "
                   "errors %ld\n", RATE, path, CLIENTS, secs - 1, n, 1e3 * all[n / 2],
                   1e3 * all[(int)(0.99 * (n - 1))], errors);
        free(all);
    }
    return eps;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    char dir[] = "/tmp/strata-bench-api-XXXXXX", db[128];
    if (!mkdtemp(dir)) return 1;
    snprintf(db, sizeof db, "%s/api.db", dir);
    Err err = {0};
    ServeOpts o = { .listen = "127.0.0.1:0", .db_path = db, .workers = 2, .queue = 16,
                    .max_body = 16 << 20, .strata_bin = "/bin/false" };
    Server *S = server_start(&o, &err);
    if (!S) {
        fprintf(stderr, "bench_api: %s\n", err.msg);
        return 1;
    }
    port = server_port(S);
    char mid[17], cid[17], pid[17], body[512];
    char *cluster = file_text("clusters/dgx-a100-80gb.json");
    int rc = !cluster ||
             post_id("/v1/models", "{\"zoo\": \"gpt\", \"options\": {\"preset\": \"gpt3-175b\", "
                     "\"batch\": 1536}}", mid) ||
             post_id("/v1/clusters?nodes=128", cluster, cid);
    free(cluster);
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": {\"kind\": "
             "\"megatron\", \"tp\": 8, \"pp\": 16, \"microbatches\": 192, \"recompute\": true}}",
             mid, cid);
    if (rc || post_id("/v1/estimate", body, pid)) {
        server_stop(S);
        return 1;
    }
    char plan_path[64], small_path[64], sid[17], smid[17], scid[17];
    snprintf(plan_path, sizeof plan_path, "/v1/plans/%s", pid);
    /* and a small plan: GPT-2 small data parallel on one node (its answer is a
     * few kilobytes; the 175B plan's strategy alone is 330 KB) */
    cluster = file_text("clusters/dgx-a100-80gb.json");
    if (post_id("/v1/models", "{\"zoo\": \"gpt\", \"options\": {\"preset\": \"gpt2-small\"}}",
                smid) || post_id("/v1/clusters", cluster, scid)) {
        free(cluster);
        server_stop(S);
        return 1;
    }
    free(cluster);
    snprintf(body, sizeof body, "{\"model\": \"%s\", \"cluster\": \"%s\", \"strategy\": "
             "{\"kind\": \"dp\"}}", smid, scid);
    if (post_id("/v1/estimate", body, sid)) {
        server_stop(S);
        return 1;
    }
    snprintf(small_path, sizeof small_path, "/v1/plans/%s", sid);
    printf("REST API on loopback (strata serve in this process; its thread pool, wrk and the searches share the machine's cores):\n");
    if (system("command -v wrk >/dev/null 2>&1") == 0) {
        run_wrk(plan_path, 100);
        run_wrk(plan_path, 500);
        run_wrk(small_path, 100);
        run_wrk(small_path, 500);
        run_wrk("/healthz", 100);
        run_wrk("/healthz", 500);
    } else {
        printf("    wrk not found (sh scripts/setup.sh bench installs it): load figures skipped\n");
    }
    double secs = 12;
    printf("  two MCMC searches of GPT-3 175B on 1024 A100s at once, %.0f s each:\n", secs);
    double quiet = two_searches(mid, cid, plan_path, false, secs);
    double loaded = two_searches(mid, cid, plan_path, true, secs);
    printf("    evaluations/s per search: %.1f alone, %.1f under the load (%+.1f%%; target: no "
           "worse than -20%%)\n", quiet, loaded, 100 * (loaded / quiet - 1));
    server_stop(S);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return 0;
}
