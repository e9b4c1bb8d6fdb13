/*
 * db.h — strata's store: models, clusters, plans, and (for later stages)
 * profiles, cost models, searches, search events and runs, in SQLite.
 *
 * WAL journal, foreign keys on, schema versioned by PRAGMA user_version with
 * one migration per version, prepared statements only. Every write that
 * touches several rows runs in one transaction, so a failure stores nothing.
 */
#ifndef STRATA_DB_H
#define STRATA_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../ir/err.h"

typedef struct Db Db;

/* Opens (creating if needed) and migrates to the latest schema. A file that
 * is not a database, or a schema newer than this build knows, is an error.
 * Caller closes with db_close. */
Db *db_open(const char *path, Err *err);
/* The same for commands that only read: a missing file is an error, not a
 * new database. */
Db *db_open_existing(const char *path, Err *err);
void db_close(Db *db);
int db_schema_version(Db *db);             /* PRAGMA user_version */

/* Rows. Strings are owned by the row; free rows with the matching _free. */
typedef struct {
    char id[17];
    char *name;
    char *json;            /* canonical JSON text */
    double params;
    double train_flops;
    char *created;         /* UTC, ISO 8601 */
} DbModel;

typedef struct {
    char id[17];
    char *name;
    char *json;
    int ndevices;
    char *created;
} DbCluster;

typedef struct {
    char id[17];           /* hash of (model id, cluster id, strategy id) */
    char model_id[17];
    char cluster_id[17];
    char strategy_id[17];
    char *model_name;      /* filled by get/list */
    char *cluster_name;
    char *strategy_json;   /* canonical */
    char *summary_json;    /* plan_summary_json text */
    int world;
    char *created;
} DbPlan;

typedef struct {
    int step, rank;
    double loss, step_s, compute_s, comm_s, idle_s;
    double peak_mem_bytes;  /* the rank's high-water mark of buffer bytes so far; 0: not recorded */
} DbRunStep;

typedef struct {
    char id[17];           /* random per run */
    char plan_id[17];
    char *backend;         /* "cpu", "cuda" */
    int world, steps;
    char *status;          /* "ok", "verify failed", "failed"; under a server also
                              "queued", "running", "interrupted" */
    char *started, *finished;
    char *verify_json;     /* NULL without --verify */
    char *model_name;      /* filled by get/list */
    char *error;           /* filled by get/list: why it failed or was interrupted, or NULL */
} DbRun;

/* Stores a run and its per-step, per-rank measurements in one transaction.
 * The plan must be stored first. A row of the same id that a server
 * submitted (queued, running or interrupted) is completed; any other is an
 * error. */
int db_run_put(Db *db, const DbRun *r, const DbRunStep *steps, int nsteps, Err *err);
/* Is a run of this status one the run itself is still to complete
 * (db_run_put completes it): queued, running or interrupted? */
bool db_run_status_pending(const char *status);
/* A run submitted to a server: its row, queued (id, plan_id, backend,
 * world and steps of r, and this process as the server that took it),
 * before anything runs. */
int db_run_submit(Db *db, const DbRun *r, Err *err);
/* Moves a queued or running run to `status` ("running": started now;
 * otherwise finished now, with `error`, may be NULL); a run that stored
 * itself meanwhile is left as it is. */
int db_run_mark(Db *db, const char *id, const char *status, const char *error, Err *err);
/* Runs still "queued" or "running" become "interrupted" (*n: how many):
 * with own, those this server took (it is stopping); else those whose
 * server has ended, on this host, or that name none (a server starting).
 * A run that goes on after its server was killed still stores itself. */
int db_run_interrupt(Db *db, bool own, int *n, Err *err);
/* Gets a run by id or unique prefix, with its steps (*steps: *nsteps rows,
 * caller frees with free). Returns 1 when not found. */
int db_run_get(Db *db, const char *id, DbRun *out, DbRunStep **steps, int *nsteps, Err *err);
int db_run_list(Db *db, DbRun **rows, int *n, Err *err);
void db_run_free(DbRun *r);
void db_run_list_free(DbRun *rows, int n);

/* Inserts or, when the id exists, leaves the stored row as it is (ids are
 * content hashes: same id, same content). A plan's summary, which depends on
 * the lowering rather than the content, is replaced. */
int db_model_put(Db *db, const DbModel *m, Err *err);
int db_cluster_put(Db *db, const DbCluster *c, Err *err);
/* The plan's model and cluster must be stored first (foreign keys). */
int db_plan_put(Db *db, const DbPlan *p, Err *err);

/* How a failure begins when another process held the store for writing
 * longer than the wait (5 s): a caller may say "try again" its own way (the
 * API answers 503). */
#define DB_BUSY "the store is busy"

/* Is `in` a well-formed id of a `noun` row, or prefix of one (4 to 16 hex
 * digits)? 0, or -1 with err saying what is wrong: what every lookup by id
 * checks before it reads the store, for a caller to check first. */
int db_id_check(const char *noun, const char *in, Err *err);

/* Gets by id or by a unique id prefix (at least 4 hex digits). Returns 0,
 * 1 when not found (err says so), -1 on error (an ambiguous prefix too). */
int db_model_get(Db *db, const char *id, DbModel *out, Err *err);
int db_cluster_get(Db *db, const char *id, DbCluster *out, Err *err);
int db_plan_get(Db *db, const char *id, DbPlan *out, Err *err);

/* Newest first. *rows is an array of *n rows; free with db_*_list_free. */
int db_model_list(Db *db, DbModel **rows, int *n, Err *err);
int db_plan_list(Db *db, DbPlan **rows, int *n, Err *err);
int db_cluster_list(Db *db, DbCluster **rows, int *n, Err *err);
void db_cluster_list_free(DbCluster *rows, int n);

void db_model_free(DbModel *m);            /* frees the strings, not m */
void db_cluster_free(DbCluster *c);
void db_plan_free(DbPlan *p);
void db_model_list_free(DbModel *rows, int n);
void db_plan_list_free(DbPlan *rows, int n);

/* ----------------------------------------------------------------------------
 * Profiles: what `strata profile` measured on one machine. A profile row is
 * opened first (status "running", complete 0); samples are added in batches,
 * each batch in one transaction; finishing stores the fits and the cluster
 * JSON and sets the status, in one transaction. Only a profile finished with
 * complete = 1 counts as complete; a finished profile takes no more samples. */
typedef struct {
    int64_t id;
    char *host;
    char *device;          /* what the profile describes ("Intel Xeon ... (OpenBLAS SkylakeX, 1 thread)") */
    char *backend;         /* "cpu", "cuda" */
    char *started;
    char *finished;        /* NULL while running */
    int complete;          /* 1: every planned measurement is stored */
    char *status;          /* "running", "complete", "interrupted", or "failed: reason" */
    int ranks;             /* processes that measured the links */
    int quick;             /* 1: --quick */
    double peak_flops;     /* per device, f32 matmul, FLOP/s; 0 until measured */
    double mem_bw;         /* per device, bytes/s; 0 until measured */
    double mem_bytes;      /* per device */
    char *notes;           /* free text: BLAS core, threads, ... (may be NULL) */
    char *cluster_json;    /* the cluster written at the end (NULL before) */
    char *build_json;      /* the kernels' build and thread layout that measured it
                            * (executor/build.h); NULL for profiles made before
                            * builds were recorded */
    int nops, nlinks, nfits;   /* sample counts, filled by get and list */
    int64_t pid;           /* the process measuring it, on host (0: not recorded) */
} DbProfile;

typedef struct {
    char *kind;            /* op kind ("matmul") or optimizer ("adam") */
    char *phase;           /* "fwd", "bwd_data", "bwd_weight", "update" */
    char *shape_json;      /* {"spec":...,"sizes":{letter:size},...} */
    char *dtype;           /* "f32" */
    char *source;          /* "zoo" (a shard of a zoo model under a classic strategy) or "random" */
    double flops, bytes;   /* work and traffic of this measurement */
    double median_s, p10_s, p90_s;
    int reps;
} DbProfileOp;

typedef struct {
    char *collective;      /* COLLECTIVE_NAMES */
    int group_size;
    char *level;           /* topology level the group spans ("core", "node", "gpu") */
    int64_t bytes;         /* nccl-tests size */
    double time_s;         /* per iteration, the slowest member's */
    double algbw, busbw;   /* bytes/s */
    int iters;
} DbProfileLink;

typedef struct {
    char *collective;
    int group_size;
    char *level;
    double alpha_s, beta_s;        /* t = alpha + beta * bytes */
    double rms_rel_err, max_rel_err;
    int n;                         /* samples fitted */
} DbProfileFit;

/* Opens a profile row from p's host, device, backend, ranks, quick and notes;
 * *id receives its id. */
int db_profile_begin(Db *db, const DbProfile *p, int64_t *id, Err *err);
/* Records the device's identity and peaks (measured once the run has begun). */
int db_profile_set_device(Db *db, int64_t id, const char *device, double peak_flops,
                          double mem_bw, double mem_bytes, const char *notes, Err *err);
/* Add samples, all or none; refused when the profile is finished or absent.
 * An op sample's device is the profile's. */
int db_profile_add_ops(Db *db, int64_t id, const DbProfileOp *ops, int n, Err *err);
/* The same, a sample of the same kind, phase, shape and dtype as one stored
 * replacing it (its source, work and times): a case stored after each
 * round it is timed in. */
int db_profile_put_ops(Db *db, int64_t id, const DbProfileOp *ops, int n, Err *err);
/* Closes as "interrupted" (complete 0) every running profile begun on this
 * host whose process has ended without closing it (killed, or the machine
 * restarted); *n says how many. Their samples stay, as an interrupted
 * profile's do. */
int db_profile_interrupt_dead(Db *db, int *n, Err *err);
int db_profile_add_links(Db *db, int64_t id, const DbProfileLink *links, int n, Err *err);
/* Closes a running profile: stores the fits, cluster_json (may be NULL), the
 * status and complete, and the finish time, in one transaction. Refused when
 * it is already finished. */
int db_profile_finish(Db *db, int64_t id, int complete, const char *status,
                      const DbProfileFit *fits, int nfits, const char *cluster_json, Err *err);
/* Gets a profile; any of ops/links/fits may be NULL when not wanted (else
 * *ops is an array of *nops rows, free with db_profile_samples_free). Returns
 * 0, 1 when not found (err says so), -1 on error. */
int db_profile_get(Db *db, int64_t id, DbProfile *out, DbProfileOp **ops, int *nops,
                   DbProfileLink **links, int *nlinks, DbProfileFit **fits, int *nfits, Err *err);
/* Newest first, with sample counts. */
int db_profile_list(Db *db, DbProfile **rows, int *n, Err *err);
void db_profile_free(DbProfile *p);
void db_profile_list_free(DbProfile *rows, int n);
/* Frees sample arrays from db_profile_get (any may be NULL). */
void db_profile_samples_free(DbProfileOp *ops, int nops, DbProfileLink *links, int nlinks,
                             DbProfileFit *fits, int nfits);

/* ----------------------------------------------------------------------------
 * Cost models: an operator-time model trained on a profile's samples. The
 * weights are an opaque blob (costmodel/ writes and reads it); the metrics
 * are JSON (per op kind: held-out error of the model beside the roofline's).
 * A cost model outlives its profile (profile_id becomes 0). */
typedef struct {
    char id[17];           /* content hash of the weights, 16 hex digits */
    int64_t profile_id;    /* 0: none (the profile was deleted) */
    char *kind;            /* "mlp" */
    uint8_t *weights;      /* nweights bytes */
    size_t nweights;
    double heldout_error;  /* overall held-out MAPE as a fraction; < 0: unknown */
    char *metrics_json;    /* may be NULL */
    char *device;          /* what the training samples describe (may be NULL) */
    int64_t seed;
    int with_runs;         /* 1: also trained on stored measured runs */
    char *created;
} DbCostModel;

/* Inserts; a model with the same id is left as it is (same content). The
 * profile, when profile_id > 0, must exist. */
int db_costmodel_put(Db *db, const DbCostModel *m, Err *err);
/* By id or unique prefix (at least 4 hex digits), weights included. Returns
 * 0, 1 when not found (err says so), -1 on error. */
int db_costmodel_get(Db *db, const char *id, DbCostModel *out, Err *err);
/* The newest cost model trained on profile_id (0: on any profile). Returns
 * 0, 1 when there is none, -1 on error. */
int db_costmodel_latest(Db *db, int64_t profile_id, DbCostModel *out, Err *err);
/* Newest first; rows carry no weights (weights NULL, nweights as stored). */
int db_costmodel_list(Db *db, DbCostModel **rows, int *n, Err *err);
void db_costmodel_free(DbCostModel *m);
void db_costmodel_list_free(DbCostModel *rows, int n);

/* ----------------------------------------------------------------------------
 * Estimates: a prediction of a plan's step time and memory, stored with the
 * plan (which must be stored first). Several per plan (other cost models,
 * other profiles); newest first. */
typedef struct {
    int64_t id;
    char plan_id[17];
    char *cost_model_id;   /* NULL: the analytical model */
    int64_t profile_id;    /* 0: none */
    double step_time_s;
    double peak_mem_bytes; /* the largest over the plan's classes */
    int feasible;
    char *json;            /* the whole estimate, as `strata estimate --json` prints it */
    char *created;
} DbEstimate;

int db_estimate_put(Db *db, const DbEstimate *e, int64_t *id, Err *err);
int db_estimate_get(Db *db, int64_t id, DbEstimate *out, Err *err);
/* Every estimate of one plan (plan_id exact), newest first. */
int db_estimate_list(Db *db, const char *plan_id, DbEstimate **rows, int *n, Err *err);
void db_estimate_free(DbEstimate *e);
void db_estimate_list_free(DbEstimate *rows, int n);

/* ----------------------------------------------------------------------------
 * Validations: a suite of plans, each predicted and run, with the errors. */
typedef struct {
    int64_t id;
    char *suite;           /* "default" or the suite file's path */
    int np, steps;
    int64_t profile_id;    /* 0: none */
    char *cost_model_id;   /* NULL: analytical */
    double mape_time, mape_mem, kendall_tau;   /* fractions; tau in [-1, 1] */
    int nplans;            /* filled by get and list */
    char *created;
} DbValidation;

typedef struct {
    char *name;            /* the suite's name for the plan */
    char plan_id[17];
    int64_t estimate_id;   /* 0: none */
    char run_id[17];       /* "": none */
    double predicted_s, measured_s;
    double predicted_mem, measured_mem;   /* bytes, the largest over ranks */
} DbValidationPlan;

/* Stores a validation and its rows in one transaction; *id receives its id.
 * Plans, estimates and runs named must be stored first. */
int db_validation_put(Db *db, const DbValidation *v, const DbValidationPlan *rows, int n,
                      int64_t *id, Err *err);
int db_validation_get(Db *db, int64_t id, DbValidation *out, DbValidationPlan **rows, int *n,
                      Err *err);
int db_validation_list(Db *db, DbValidation **rows, int *n, Err *err);
void db_validation_free(DbValidation *v);
void db_validation_list_free(DbValidation *rows, int n);
void db_validation_plans_free(DbValidationPlan *rows, int n);

/* ----------------------------------------------------------------------------
 * Searches: one row per `strata search`, its progress events in order, and
 * at the end its status, best plan and result. */

typedef struct {
    char id[17];                   /* random */
    char model_id[17], cluster_id[17];
    char *method;                  /* the algorithm asked for */
    char *status;                  /* "queued", "running", "done", "stopped", "no plan",
                                      "failed", "interrupted" (its process ended mid-search) */
    char *budget_json;
    char *options_json;            /* {"allow_lossy", "threads", "untie", "costmodel"}; NULL in
                                      rows stored before it was kept */
    char best_plan_id[17];         /* "" without one */
    char *result_json;             /* NULL until finished */
    int devices;
    int64_t seed;
    char *created, *finished;
    char *model_name, *cluster_name;   /* filled by get/list */
    int nevents;                   /* filled by get/list */
} DbSearch;

/* The model and cluster must be stored first. */
int db_search_put(Db *db, const DbSearch *x, Err *err);
int db_search_event(Db *db, const char *id, int seq, const char *json, Err *err);
/* Its end: status, and the best plan and result when there are new ones (a
 * resumed search that ends without one keeps those it had). */
int db_search_finish(Db *db, const char *id, const char *status, const char *best_plan_id,
                     const char *result_json, Err *err);
/* Status `from` becomes `to`, in one statement: 1 (nothing changed) when the
 * search's status is not `from`, as when another request moved it first. */
int db_search_move_status(Db *db, const char *id, const char *from, const char *to, Err *err);
/* A search queued to run later starts: status "running". */
int db_search_set_status(Db *db, const char *id, const char *status, Err *err);
/* Searches still "queued" or "running" become "interrupted" (*n: how
 * many): with own, those this process runs (a server stopping); else those
 * whose process has ended (gone, or a zombie), on this host, or that say
 * no process. A process that runs no search itself asks the latter (a
 * server at start, the command line before it lists), so a row naming its
 * own pid is an earlier process's. */
int db_search_interrupt(Db *db, bool own, int *n, Err *err);
/* By id or unique prefix; 1 when not found. */
int db_search_get(Db *db, const char *id, DbSearch *out, Err *err);
int db_search_list(Db *db, DbSearch **rows, int *n, Err *err);     /* newest first */
/* The newest search whose best plan is plan_id; 1 when none. */
int db_search_of_plan(Db *db, const char *plan_id, DbSearch *out, Err *err);
/* The events with seq > after, in order (*json: *n strings; free with
 * db_search_events_free). id must be a full id. */
int db_search_events(Db *db, const char *id, int after, char ***json, int *n, Err *err);
/* The trained RL policy of a search (mlp_save's bytes); get: 1 when the
 * search kept none. *blob is the caller's to free. */
int db_search_set_policy(Db *db, const char *id, const uint8_t *blob, size_t n, Err *err);
int db_search_policy(Db *db, const char *id, uint8_t **blob, size_t *n, Err *err);
void db_search_free(DbSearch *x);
void db_search_list_free(DbSearch *rows, int n);
void db_search_events_free(char **json, int n);

#endif
