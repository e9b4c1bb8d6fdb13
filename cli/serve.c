/*
 * serve.c — `strata serve`: the REST API (api/) until SIGTERM or Ctrl-C,
 * which stop it cleanly: no new connections, running searches store their
 * best, exit 0.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "api/api.h"
#include "ir/util.h"

static const OptSpec SERVE_OPTS[] = {
    { "listen", 0, true, "HOST:PORT  address to listen on (default 127.0.0.1:8080; port 0: any "
                         "free one)" },
    { "db", 0, true, "PATH  the store (default strata.db; created when missing)" },
    { "workers", 0, true, "N  jobs (searches, runs) run at once (default 2)" },
    { "queue", 0, true, "N  jobs that may wait for a worker (default 16; more: 429)" },
    { "token-file", 0, true, "F  require \"Authorization: Bearer <the file's first line>\" on "
                             "every request but GET /healthz; needed to listen beyond loopback" },
    { "max-body", 0, true, "BYTES  largest request body (default 16777216; more: 413)" },
    { "quiet", 'q', false, "no request log on stderr" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const char *USAGE = "strata serve [--listen HOST:PORT] [--db PATH] [--workers N] "
                           "[--queue N] [--token-file F] [--max-body BYTES]";

/* The token: the file's first line, without its line end; 16 to 4096
 * characters, printable, no spaces (a client sends it in a header). */
static char *read_token(const char *path, Err *err)
{
    size_t n;
    char *text = file_read(path, &n, err);
    if (!text) {
        err_prefix(err, "--token-file");
        return NULL;
    }
    size_t len = strcspn(text, "\r\n");
    text[len] = 0;
    const char *why = NULL;
    if (len == 0) why = n ? "its first line is empty" : "the file is empty";
    else if (len < 16) why = "the token must be at least 16 characters";
    else if (len > 4096) why = "the token must be at most 4096 characters";
    for (size_t i = 0; i < len && !why; i++)
        if ((unsigned char)text[i] <= ' ' || text[i] == 0x7f)
            why = "the token must be printable characters without spaces";
    if (why) {
        err_set(err, "--token-file %s: %s", path, why);
        free(text);
        return NULL;
    }
    return text;
}

int cmd_serve(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, SERVE_OPTS, false, &a, &err) || a.npos) {
        fprintf(stderr, "strata serve: %s\nusage: %s\n",
                err.msg[0] ? err.msg : "no positional arguments", USAGE);
        return 2;
    }
    if (args_has(&a, "help")) {
        printf("usage: %s\n\noptions:\n", USAGE);
        args_usage(stdout, SERVE_OPTS);
        return 0;
    }
    int64_t workers = 2, queue = 16, max_body = 16 << 20;
    if (args_int(&a, "workers", 1, 64, &workers, &err) ||
        args_int(&a, "queue", 1, 100000, &queue, &err) ||
        args_int(&a, "max-body", 1, (int64_t)1 << 32, &max_body, &err)) {
        fprintf(stderr, "strata serve: %s\n", err.msg);
        return 2;
    }
    char *token = NULL;
    if (args_get(&a, "token-file") && !(token = read_token(args_get(&a, "token-file"), &err))) {
        fprintf(stderr, "strata serve: %s\n", err.msg);
        return 2;
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    const char *listen = args_get(&a, "listen") ? args_get(&a, "listen") : "127.0.0.1:8080";
    const char *db = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
    /* the signals that stop the server are taken by sigwait below, in this
     * thread only: every thread started from here on inherits the mask */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    ServeOpts o = { .listen = listen, .db_path = db, .workers = (int)workers,
                    .queue = (int)queue, .token = token, .max_body = (size_t)max_body,
                    .strata_bin = self, .log = args_has(&a, "quiet") ? NULL : stderr };
    if (server_check(&o, &err) || args_store(&a, &err)) {
        fprintf(stderr, "strata serve: %s\n", err.msg);
        free(token);
        return 2;
    }
    Server *S = server_start(&o, &err);
    if (!S) {
        fprintf(stderr, "strata serve: %s\n", err.msg);
        free(token);
        return 1;
    }
    /* the address as given, with the port bound (port 0: the one chosen) */
    int hn = (int)(strrchr(listen, ':') - listen);
    fprintf(stderr, "{\"serving\":\"http://%.*s:%d/\",\"db\":\"%s\",\"workers\":%d,"
            "\"auth\":%s}\n", hn ? hn : 9, hn ? listen : "127.0.0.1", server_port(S), db,
            (int)workers, token ? "true" : "false");
    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "{\"stopping\":\"%s\"}\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server_stop(S);
    free(token);
    fprintf(stderr, "{\"stopped\":true}\n");
    return 0;
}
