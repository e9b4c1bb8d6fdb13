/*
 * api.h — `strata serve`: the REST API over the same store and the same job
 * functions (jobs/jobs.h) as the command line.
 *
 * libmicrohttpd serves HTTP/1.1 from a pool of threads, each with its own
 * epoll over its connections; an event stream that follows a search
 * suspends its connection while nothing is new (no thread waits on it).
 * Work that takes long (searches; runs and profiles as child processes)
 * goes to a bounded queue that a fixed set of worker threads takes from;
 * the request answers 202 at once with the id to follow. Everything else is
 * answered in the pool's thread, on a connection to the store taken from a
 * pool (SQLite in WAL mode, so readers never wait for the searches writing
 * their events).
 *
 * Every answer is JSON (the timeline is SVG, the page HTML, /metrics the
 * Prometheus text format); every error is
 *   {"error": {"status": 400, "message": "...", "path": "budget"}}
 * with `path` the JSON path of the bad field ("" when it is not a field).
 */
#ifndef STRATA_API_H
#define STRATA_API_H

#include <stddef.h>
#include <stdio.h>
#include "ir/err.h"

typedef struct {
    const char *listen;            /* "host:port"; port 0: any free port (see server_port) */
    const char *db_path;           /* the store; created when missing */
    int workers;                   /* threads running queued jobs (>= 1) */
    int queue;                     /* queued jobs at most; one more is answered 429 */
    const char *token;             /* NULL: no authentication, and loopback addresses only */
    size_t max_body;               /* request bodies larger than this: 413 */
    const char *strata_bin;        /* the executable runs start (`strata run`) */
    FILE *log;                     /* one JSON line per request; NULL: none */
} ServeOpts;

typedef struct Server Server;

/* Opens the store (marking searches a previous process left unfinished
 * "interrupted"), starts the workers and listens. NULL with err when the
 * address is not loopback without a token, cannot be bound, or the store
 * cannot be opened. */
/* The options' own faults (the address, loopback without a token, the
 * limits), before anything is opened: what server_start would refuse
 * them for. */
int server_check(const ServeOpts *o, Err *err);
Server *server_start(const ServeOpts *o, Err *err);
int server_port(const Server *s);
/* Stops accepting connections, asks running searches to stop (each stores
 * its best so far), lets the workers finish, and frees everything. Queued
 * searches that never started are marked "interrupted". */
void server_stop(Server *s);

/* One request answered in memory, without a connection: routing, limits,
 * authentication and the handlers as over HTTP, the answer's body
 * discarded. Returns its status. For the fuzzer of the router and the body
 * readers. query and headers: n name/value pairs. */
int api_handle(Server *s, const char *method, const char *path, const char *const (*query)[2],
               int nquery, const char *const (*headers)[2], int nheaders, const char *body,
               size_t len);

#endif
