/*
 * fuzz_router.c — libFuzzer harness of the REST API's router, limits and
 * body readers (api_handle: everything a request meets after libmicrohttpd
 * has parsed it). An input is a request in a plain form:
 *   METHOD PATH[?name=value&...]\n
 *   Header: value\n ...
 *   \n
 *   body
 * against a server whose store holds a model and a cluster, so that valid
 * ids are reachable (the dictionary fuzz/router.dict names them), started
 * afresh every RESET_EVERY inputs.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "api/api.h"

static Server *S;
/* in memory where there is a tmpfs: the store's commits are not what is
 * being tested, and syncing each to a disk would cap the executions */
static char dir[64], db[200];

enum { RESET_EVERY = 2000 };

/* The server stopped (its workers joined before anything they use goes
 * away) and its store removed. */
static void stop(void)
{
    server_stop(S);
    S = NULL;
    static const char *const ext[] = { "", "-wal", "-shm" };
    for (int i = 0; i < 3; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s%s", db, ext[i]);
        unlink(p);
    }
}

/* A server on a fresh store holding the model and cluster the seeds use. */
static void start(void)
{
    Err err = {0};
    ServeOpts o = { .listen = "127.0.0.1:0", .db_path = db, .workers = 1, .queue = 2,
                    .max_body = 1 << 16, .strata_bin = "/bin/false" };
    S = server_start(&o, &err);
    if (!S) {
        fprintf(stderr, "fuzz_router: %s\n", err.msg);
        exit(1);
    }
    /* model d0ec0f0c809605f7 and cluster dbd5601b060c63a6 (the seeds use them) */
    static const char model[] = "{\"zoo\": \"mlp\", \"options\": {\"batch\": 8}}";
    static const char cluster[] =
        "{\"name\":\"cpu2\",\"devices\":[{\"name\":\"core\",\"kind\":\"cpu\",\"count\":2,"
        "\"peak_tflops\":{\"f32\":0.145},\"memory_gib\":12,\"memory_bw_gbps\":10}],"
        "\"levels\":[{\"name\":\"core\",\"count\":2,\"link\":\"shm\",\"bw_gbps\":10,"
        "\"latency_us\":1}]}";
    if (api_handle(S, "POST", "/v1/models", NULL, 0, NULL, 0, model, sizeof model - 1) != 201 ||
        api_handle(S, "POST", "/v1/clusters", NULL, 0, NULL, 0, cluster, sizeof cluster - 1) != 201) {
        fprintf(stderr, "fuzz_router: cannot store the model and cluster the seeds use\n");
        exit(1);
    }
}

static void at_exit(void)
{
    stop();
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "%s/strata-fuzz-router-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir)) return 1;
    snprintf(db, sizeof db, "%s/fuzz.db", dir);
    start();
    atexit(at_exit);
    return 0;
}

/* The next line of [*p, end), without its newline; *p moves past it. */
static char *line(const char **p, const char *end, char *buf, size_t cap)
{
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = (size_t)((nl ? nl : end) - *p);
    if (n >= cap) n = cap - 1;
    memcpy(buf, *p, n);
    buf[n] = 0;
    *p = nl ? nl + 1 : end;
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    const char *p = (const char *)data, *end = p + n;
    char first[1024], hl[8][256], qbuf[1024];
    line(&p, end, first, sizeof first);
    char *sp = strchr(first, ' ');
    if (!sp) return 0;
    *sp = 0;
    const char *method = first;
    char *path = sp + 1;
    const char *q[8][2], *h[8][2];
    int nq = 0, nh = 0;
    char *qs = strchr(path, '?');
    if (qs) {
        *qs++ = 0;
        snprintf(qbuf, sizeof qbuf, "%s", qs);
        char *save = NULL;
        for (char *kv = strtok_r(qbuf, "&", &save); kv && nq < 8; kv = strtok_r(NULL, "&", &save)) {
            char *eq = strchr(kv, '=');
            if (eq) *eq++ = 0;
            q[nq][0] = kv;
            q[nq][1] = eq ? eq : "";
            nq++;
        }
    }
    while (p < end && nh < 8) {
        line(&p, end, hl[nh], sizeof hl[nh]);
        if (!hl[nh][0]) break;
        char *colon = strchr(hl[nh], ':');
        if (!colon) continue;
        *colon = 0;
        h[nh][0] = hl[nh];
        h[nh][1] = colon[1] == ' ' ? colon + 2 : colon + 1;
        nh++;
    }
    api_handle(S, method, path, (const char *const (*)[2])q, nq, (const char *const (*)[2])h, nh,
               p, (size_t)(end - p));
    /* A fresh store every so many inputs: what they stored (models,
     * estimates, queued searches) would otherwise grow without bound, and
     * every list and lookup with it, until the store's size and not the
     * router set the pace (from thousands of inputs a second to hundreds). */
    static unsigned count;
    if (++count % RESET_EVERY == 0) {
        stop();
        start();
    }
    return 0;
}
