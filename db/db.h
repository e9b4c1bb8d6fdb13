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
} DbRunStep;

typedef struct {
    char id[17];           /* random per run */
    char plan_id[17];
    char *backend;         /* "cpu", "cuda" */
    int world, steps;
    char *status;          /* "ok", "verify failed", "failed" */
    char *started, *finished;
    char *verify_json;     /* NULL without --verify */
    char *model_name;      /* filled by get/list */
} DbRun;

/* Stores a run and its per-step, per-rank measurements in one transaction.
 * The plan must be stored first. */
int db_run_put(Db *db, const DbRun *r, const DbRunStep *steps, int nsteps, Err *err);
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

/* Gets by id or by a unique id prefix (at least 4 hex digits). Returns 0,
 * 1 when not found (err says so), -1 on error (an ambiguous prefix too). */
int db_model_get(Db *db, const char *id, DbModel *out, Err *err);
int db_cluster_get(Db *db, const char *id, DbCluster *out, Err *err);
int db_plan_get(Db *db, const char *id, DbPlan *out, Err *err);

/* Newest first. *rows is an array of *n rows; free with db_*_list_free. */
int db_model_list(Db *db, DbModel **rows, int *n, Err *err);
int db_plan_list(Db *db, DbPlan **rows, int *n, Err *err);

void db_model_free(DbModel *m);            /* frees the strings, not m */
void db_cluster_free(DbCluster *c);
void db_plan_free(DbPlan *p);
void db_model_list_free(DbModel *rows, int n);
void db_plan_list_free(DbPlan *rows, int n);

#endif
