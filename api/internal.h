/*
 * internal.h — what the parts of the service share: the server, its job
 * queue, one request, and the helpers that answer it.
 */
#ifndef STRATA_API_INTERNAL_H
#define STRATA_API_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "api.h"
#include "search/search.h"

/* ----------------------------------------------------------------------------
 * Jobs: what the workers run. A search's row is stored ("queued") before it
 * is queued; a run's row is stored by `strata run` when it ends, so until
 * then the job itself is all there is to show. */
typedef enum { JOB_SEARCH, JOB_RUN, JOB_PROFILE } JobKind;

typedef struct Job {
    JobKind kind;
    char id[17];
    char status[24];               /* "queued", "running", then how it ended */
    volatile sig_atomic_t stop;    /* a search: stop and keep the best */
    double evals_per_s;            /* a search: from its latest event */
    /* search */
    char model_id[17], cluster_id[17];
    SearchOpts search;             /* algo, budget, seed, threads, world, lossy */
    char budget_text[64];
    char costmodel_id[17];         /* "" : the analytical model */
    char *resume;                  /* a resumed search: the point it starts from (JSON) */
    int first_seq;                 /* and the events it had */
    /* run */
    char plan_id[17];
    int steps, world;
    bool verify;
    /* profile */
    bool quick, no_links;
    int ranks, seconds;            /* 0: strata profile's defaults */
    char kinds[160];               /* "" : every kind */
    pid_t pid;                     /* a run or profile: its process while running */
    char error[600];               /* how a run failed (the tail of its output) */
    double queued_at;
    struct Job *next;              /* in the queue */
    struct Job *next_all;          /* every job of this process, newest first */
} Job;

/* A connection streaming events, suspended until there is news. */
typedef struct Waiter {
    struct MHD_Connection *con;
    struct Waiter *next;
} Waiter;

#define LAT_BUCKETS 12

struct Server {
    ServeOpts o;
    char *db_path, *token, *bin;
    struct MHD_Daemon *daemon;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t work;           /* a job was queued, or stopping */
    uint64_t news_gen;             /* counts events and ends of jobs */
    Waiter *waiting;               /* suspended event streams (under mu) */
    pthread_t ticker;              /* resumes them every second whatever happens */
    pthread_cond_t tick;
    Job *head, *tail, *all;
    int queued, running;
    bool stopping;
    bool streams_end;              /* stopped: event streams send what is left and end */
    int open_streams;              /* follow=1 event streams not yet freed (under mu) */
    struct Db *pool[32];           /* open connections to the store, idle (under mu) */
    int npool;
    pthread_t *threads;
    int nthreads;
    /* metrics, counted with atomic adds (no lock on a request's path):
     * per route (NROUTES: unmatched) and status (STATUSES, the last: other) */
    uint64_t *counts;
    uint64_t lat_bucket[LAT_BUCKETS + 1];  /* cumulative counts are made when printed */
    uint64_t lat_sum_us;
};

/* One request: what it sent, and what it was answered. */
typedef struct {
    Server *S;
    struct MHD_Connection *con;
    char *method, *url;
    char *body;
    size_t len;
    bool too_big;
    bool close;                    /* answer with "Connection: close" (the request's end
                                      is unknown) */
    bool encoded_slash;            /* its path as sent had %2F: it names no route */
    int status;                    /* the answer's */
    int route;                     /* index into the route table, -1 unmatched */
    double t0;
    const char *params[4];         /* the {id}s of the route, in order */
    char pbuf[4][80];
    const char *in;                /* the body member the field readers are in ("strategy"),
                                      NULL: the body itself; for their error paths */
    /* a request made in memory (api_handle, con NULL): its query and headers */
    const char *const (*query)[2], *const (*headers)[2];
    int nquery, nheaders;
} Req;

/* Answers: each queues the response and returns what the MHD handler returns. */
enum MHD_Result reply_json(Req *r, int status, cJSON *j);            /* deletes j */
struct MHD_Response *json_response(cJSON *j);                         /* deletes j */
enum MHD_Result reply_text(Req *r, int status, const char *type, char *text, size_t n); /* frees text */
enum MHD_Result reply_error(Req *r, int status, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result reply_response(Req *r, int status, struct MHD_Response *resp);

/* The query argument `name`, or NULL. */
const char *req_query(const Req *r, const char *name);
const char *req_header(const Req *r, const char *name);

/* Queues a job (the caller allocated it); false when the queue is full or
 * the server stops (the job is not taken). */
bool server_enqueue(Server *S, Job *j);
/* A place in the queue taken ahead (false: full, or stopping), then filled
 * by server_enqueue_reserved or given back by server_unreserve: a request
 * that stores a row before it queues the job leaves none behind on a 429. */
bool server_reserve(Server *S);
void server_enqueue_reserved(Server *S, Job *j);
void server_unreserve(Server *S);
/* Takes a queued job off the queue (S->mu held). */
void server_unqueue(Server *S, Job *j);
/* The job of this process with this id, or NULL; under S->mu. */
Job *server_find(Server *S, const char *id);
/* A connection to the store from the server's pool (opened when the pool
 * is empty), and back to it (closed when the pool is full). */
struct Db *server_db(Server *S, Err *err);
void server_db_put(Server *S, struct Db *db);
/* There is news (an event, a job ended): every suspended stream resumes. */
void server_news(Server *S);
/* A stream with nothing to send: true when it is to suspend its connection
 * (MHD_suspend_connection, then answer 0 bytes) until news; false when news
 * came since gen or the server stops (look again). */
bool server_wait(Server *S, Waiter *w, uint64_t gen);
/* A stream's connection is gone: forget it. */
void server_forget(Server *S, Waiter *w);

/* The route table (routes.c) and the page (page.c). */
typedef enum MHD_Result (*Handler)(Req *r);
typedef struct {
    const char *pattern;           /* "/v1/models/{}" */
    Handler get, post, del;
} Route;
extern const Route ROUTES[];
extern const int NROUTES;
/* Runs a job in a worker thread (routes.c). */
void job_execute(Server *S, Job *j);

extern const char PAGE_HTML[];

#endif
