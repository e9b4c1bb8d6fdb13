/*
 * db.c — strata's SQLite store: schema, migrations and the queries of db.h.
 *
 * The schema lives here as an array of migrations: migration k (1-based)
 * brings PRAGMA user_version from k-1 to k and runs in one transaction with
 * the version bump, so a database is always at a version the code knows.
 * Never edit a migration that has shipped; append a new one.
 *
 * Every function follows SQLite's own pattern: prepare, bind with ?, step
 * until SQLITE_DONE, finalize on every path, one `err:` label for cleanup.
 *
 * Ids of models, clusters, strategies and plans are content hashes: exactly
 * 16 lowercase hex digits (checked here and by the schema). Because of that a
 * prefix lookup is the range `id >= 'ab12' AND id < 'ab12g'` ('g' sorts after
 * every hex digit), which uses the primary-key index and needs no LIKE/GLOB,
 * so user input can never act as a wildcard.
 *
 * A Db is one connection: use it from one thread at a time (the API opens
 * one per worker). A row's `created`, when the caller sets it, is stored as
 * given, so it must be in the same UTC ISO 8601 form for lists to sort.
 */
#include "db.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../ir/util.h"

/* Statements compiled once per connection and kept: compiling one costs
 * more than running most of what strata asks (a server answers the same
 * few lookups all day). Keyed by the SQL's text; one use at a time. */
#define STMT_CACHE 48

typedef struct {
    char *sql;          /* NULL: a free slot */
    sqlite3_stmt *st;
    bool busy;
} Stmt;

struct Db {
    sqlite3 *h;
    char *path;
    int rc;             /* extended code of the last failed call (for diagnosis) */
    Stmt stmts[STMT_CACHE];
};

/* sqlite3_prepare_v2 of a whole text, for the connection's cache: a kept statement of the
 * same text, ready, or a new one, kept while there is room. */
static int stmt_prepare(Db *db, const char *sql, sqlite3_stmt **st)
{
    Stmt *free_slot = NULL;
    for (int k = 0; k < STMT_CACHE; k++) {
        Stmt *x = &db->stmts[k];
        if (!x->sql) {
            if (!free_slot) free_slot = x;
        } else if (!x->busy && !strcmp(x->sql, sql)) {
            x->busy = true;
            *st = x->st;
            return SQLITE_OK;
        }
    }
    int rc = sqlite3_prepare_v3(db->h, sql, -1, free_slot ? SQLITE_PREPARE_PERSISTENT : 0, st,
                                NULL);
    if (rc == SQLITE_OK && free_slot && *st)
        *free_slot = (Stmt){ xstrdup(sql), *st, true };
    return rc;
}

/* sqlite3_finalize for stmt_prepare's statements: a kept one is reset,
 * its parameters cleared, for the next use. NULL does nothing. */
static void stmt_done(Db *db, sqlite3_stmt *st)
{
    if (!st) return;
    for (int k = 0; k < STMT_CACHE; k++)
        if (db->stmts[k].st == st && db->stmts[k].sql) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            db->stmts[k].busy = false;
            return;
        }
    sqlite3_finalize(st);
}


/* ----------------------------------------------------------------------------
 * Schema. Timestamps are UTC ISO 8601 with milliseconds, so text order is
 * time order. Child rows (samples, events, steps) go with their parent
 * (ON DELETE CASCADE); a plan goes with its model or cluster; strategies are
 * shared between plans, so deleting one that a plan uses is refused. */

#define NOW "(strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
#define HEX_ID "TEXT PRIMARY KEY CHECK (length(id) = 16 AND id NOT GLOB '*[^0-9a-f]*')"

static const char *const migrations[] = {
    /* 1: models, clusters, strategies, plans, and the tables later stages fill */
    "CREATE TABLE models ("
    "  id          " HEX_ID ","
    "  name        TEXT NOT NULL,"
    "  json        TEXT NOT NULL,"
    "  params      REAL NOT NULL DEFAULT 0,"
    "  train_flops REAL NOT NULL DEFAULT 0,"
    "  created     TEXT NOT NULL DEFAULT " NOW ");"
    "CREATE INDEX models_created ON models(created);"

    "CREATE TABLE clusters ("
    "  id       " HEX_ID ","
    "  name     TEXT NOT NULL,"
    "  json     TEXT NOT NULL,"
    "  ndevices INTEGER NOT NULL,"
    "  created  TEXT NOT NULL DEFAULT " NOW ");"
    "CREATE INDEX clusters_created ON clusters(created);"

    "CREATE TABLE strategies ("
    "  id      " HEX_ID ","
    "  json    TEXT NOT NULL,"
    "  created TEXT NOT NULL DEFAULT " NOW ");"

    "CREATE TABLE plans ("
    "  id           " HEX_ID ","
    "  model_id     TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,"
    "  cluster_id   TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,"
    "  strategy_id  TEXT NOT NULL REFERENCES strategies(id),"
    "  world        INTEGER NOT NULL CHECK (world >= 1),"
    "  summary_json TEXT,"
    "  created      TEXT NOT NULL DEFAULT " NOW ");"
    "CREATE INDEX plans_model ON plans(model_id);"
    "CREATE INDEX plans_cluster ON plans(cluster_id);"
    "CREATE INDEX plans_strategy ON plans(strategy_id);"
    "CREATE INDEX plans_created ON plans(created);"

    "CREATE TABLE profiles ("
    "  id           INTEGER PRIMARY KEY,"
    "  host         TEXT NOT NULL,"
    "  device       TEXT NOT NULL,"
    "  backend      TEXT NOT NULL,"
    "  started      TEXT NOT NULL DEFAULT " NOW ","
    "  finished     TEXT,"
    "  complete     INTEGER NOT NULL DEFAULT 0 CHECK (complete IN (0, 1)),"
    "  cluster_json TEXT);"

    "CREATE TABLE profile_ops ("
    "  profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,"
    "  device     TEXT NOT NULL,"
    "  kind       TEXT NOT NULL,"
    "  phase      TEXT NOT NULL,"
    "  shape_json TEXT NOT NULL,"
    "  dtype      TEXT NOT NULL,"
    "  median_s   REAL NOT NULL,"
    "  p10_s      REAL,"
    "  p90_s      REAL,"
    "  reps       INTEGER NOT NULL);"
    "CREATE INDEX profile_ops_lookup ON profile_ops(profile_id, kind, phase);"

    "CREATE TABLE profile_links ("
    "  profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,"
    "  collective TEXT NOT NULL,"
    "  group_size INTEGER NOT NULL,"
    "  level      TEXT NOT NULL,"
    "  bytes      INTEGER NOT NULL,"
    "  time_s     REAL NOT NULL,"
    "  algbw      REAL,"
    "  busbw      REAL);"
    "CREATE INDEX profile_links_lookup ON profile_links(profile_id, collective, level);"

    /* A trained cost model outlives the samples it was fitted on. */
    "CREATE TABLE cost_models ("
    "  id            TEXT PRIMARY KEY,"
    "  profile_id    INTEGER REFERENCES profiles(id) ON DELETE SET NULL,"
    "  kind          TEXT NOT NULL,"
    "  weights       BLOB NOT NULL,"
    "  heldout_error REAL,"
    "  created       TEXT NOT NULL DEFAULT " NOW ");"
    "CREATE INDEX cost_models_profile ON cost_models(profile_id);"

    "CREATE TABLE searches ("
    "  id           TEXT PRIMARY KEY,"
    "  model_id     TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,"
    "  cluster_id   TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,"
    "  method       TEXT NOT NULL,"
    "  status       TEXT NOT NULL DEFAULT 'queued',"
    "  budget_json  TEXT,"
    "  best_plan_id TEXT REFERENCES plans(id) ON DELETE SET NULL,"
    "  created      TEXT NOT NULL DEFAULT " NOW ","
    "  finished     TEXT);"
    "CREATE INDEX searches_model ON searches(model_id);"
    "CREATE INDEX searches_cluster ON searches(cluster_id);"
    "CREATE INDEX searches_best_plan ON searches(best_plan_id);"
    "CREATE INDEX searches_created ON searches(created);"

    "CREATE TABLE search_events ("
    "  search_id TEXT NOT NULL REFERENCES searches(id) ON DELETE CASCADE,"
    "  seq       INTEGER NOT NULL,"
    "  at        TEXT NOT NULL DEFAULT " NOW ","
    "  json      TEXT NOT NULL,"
    "  PRIMARY KEY (search_id, seq));"

    "CREATE TABLE runs ("
    "  id          TEXT PRIMARY KEY,"
    "  plan_id     TEXT NOT NULL REFERENCES plans(id) ON DELETE CASCADE,"
    "  backend     TEXT NOT NULL,"
    "  world       INTEGER NOT NULL CHECK (world >= 1),"
    "  steps       INTEGER NOT NULL CHECK (steps >= 0),"
    "  status      TEXT NOT NULL DEFAULT 'queued',"
    "  started     TEXT,"
    "  finished    TEXT,"
    "  verify_json TEXT);"
    "CREATE INDEX runs_plan ON runs(plan_id);"

    "CREATE TABLE run_steps ("
    "  run_id    TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  step      INTEGER NOT NULL,"
    "  rank      INTEGER NOT NULL,"
    "  loss      REAL,"
    "  step_s    REAL,"
    "  compute_s REAL,"
    "  comm_s    REAL,"
    "  idle_s    REAL,"
    "  PRIMARY KEY (run_id, step, rank));",

    /* 2: what `strata profile` needs: a profile's status and device peaks, an
     * op sample's work and origin, a link sample's iterations, and the
     * alpha-beta fits of the link samples. A profile that version 1 finished
     * gets the status its complete flag says. */
    "ALTER TABLE profiles ADD COLUMN status     TEXT NOT NULL DEFAULT 'running';"
    "ALTER TABLE profiles ADD COLUMN ranks      INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE profiles ADD COLUMN quick      INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE profiles ADD COLUMN peak_flops REAL NOT NULL DEFAULT 0;"
    "ALTER TABLE profiles ADD COLUMN mem_bw     REAL NOT NULL DEFAULT 0;"
    "ALTER TABLE profiles ADD COLUMN mem_bytes  REAL NOT NULL DEFAULT 0;"
    "ALTER TABLE profiles ADD COLUMN notes      TEXT;"
    "UPDATE profiles SET status = CASE complete WHEN 1 THEN 'complete' ELSE 'interrupted' END"
    "  WHERE finished IS NOT NULL;"
    "CREATE INDEX profiles_started ON profiles(started);"

    "ALTER TABLE profile_ops ADD COLUMN flops  REAL NOT NULL DEFAULT 0;"
    "ALTER TABLE profile_ops ADD COLUMN bytes  REAL NOT NULL DEFAULT 0;"
    "ALTER TABLE profile_ops ADD COLUMN source TEXT NOT NULL DEFAULT 'zoo';"

    "ALTER TABLE profile_links ADD COLUMN iters INTEGER NOT NULL DEFAULT 0;"

    "CREATE TABLE profile_fits ("
    "  profile_id  INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,"
    "  collective  TEXT NOT NULL,"
    "  group_size  INTEGER NOT NULL,"
    "  level       TEXT NOT NULL,"
    "  alpha_s     REAL NOT NULL,"
    "  beta_s      REAL NOT NULL,"
    "  rms_rel_err REAL NOT NULL,"
    "  max_rel_err REAL NOT NULL,"
    "  n           INTEGER NOT NULL,"
    "  PRIMARY KEY (profile_id, collective, group_size, level));",

    /* 3: what `strata train`, `estimate` and `validate` need: a cost model's
     * metrics and provenance, a run step's memory high-water mark, the
     * estimates stored with a plan, and validations (a suite of plans, each
     * predicted and measured). cost_models.id keeps the schema of version 1
     * (ALTER TABLE cannot add a CHECK); db_costmodel_put checks it instead.
     * A measured or predicted number that is unknown (NaN) is stored NULL. */
    "ALTER TABLE cost_models ADD COLUMN metrics_json TEXT;"
    "ALTER TABLE cost_models ADD COLUMN device       TEXT;"
    "ALTER TABLE cost_models ADD COLUMN seed         INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE cost_models ADD COLUMN with_runs    INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX cost_models_created ON cost_models(created);"

    "ALTER TABLE run_steps ADD COLUMN peak_mem_bytes REAL NOT NULL DEFAULT 0;"

    "CREATE TABLE estimates ("
    "  id             INTEGER PRIMARY KEY,"
    "  plan_id        TEXT NOT NULL REFERENCES plans(id) ON DELETE CASCADE,"
    "  cost_model_id  TEXT REFERENCES cost_models(id) ON DELETE SET NULL,"
    "  profile_id     INTEGER REFERENCES profiles(id) ON DELETE SET NULL,"
    "  step_time_s    REAL NOT NULL,"
    "  peak_mem_bytes REAL NOT NULL,"
    "  feasible       INTEGER NOT NULL CHECK (feasible IN (0, 1)),"
    "  json           TEXT NOT NULL,"
    "  created        TEXT NOT NULL DEFAULT " NOW ");"
    "CREATE INDEX estimates_plan ON estimates(plan_id);"
    "CREATE INDEX estimates_cost_model ON estimates(cost_model_id);"
    "CREATE INDEX estimates_profile ON estimates(profile_id);"

    "CREATE TABLE validations ("
    "  id            INTEGER PRIMARY KEY,"
    "  suite         TEXT NOT NULL,"
    "  np            INTEGER NOT NULL,"
    "  steps         INTEGER NOT NULL,"
    "  profile_id    INTEGER REFERENCES profiles(id) ON DELETE SET NULL,"
    "  cost_model_id TEXT REFERENCES cost_models(id) ON DELETE SET NULL,"
    "  mape_time     REAL,"
    "  mape_mem      REAL,"
    "  kendall_tau   REAL,"
    "  created       TEXT NOT NULL DEFAULT " NOW ");"
    "CREATE INDEX validations_profile ON validations(profile_id);"
    "CREATE INDEX validations_cost_model ON validations(cost_model_id);"
    "CREATE INDEX validations_created ON validations(created);"

    "CREATE TABLE validation_plans ("
    "  validation_id INTEGER NOT NULL REFERENCES validations(id) ON DELETE CASCADE,"
    "  seq           INTEGER NOT NULL,"
    "  name          TEXT NOT NULL,"
    "  plan_id       TEXT NOT NULL REFERENCES plans(id) ON DELETE CASCADE,"
    "  estimate_id   INTEGER REFERENCES estimates(id) ON DELETE SET NULL,"
    "  run_id        TEXT REFERENCES runs(id) ON DELETE SET NULL,"
    "  predicted_s   REAL,"
    "  measured_s    REAL,"
    "  predicted_mem REAL,"
    "  measured_mem  REAL,"
    "  PRIMARY KEY (validation_id, seq));"
    "CREATE INDEX validation_plans_plan ON validation_plans(plan_id);"
    "CREATE INDEX validation_plans_estimate ON validation_plans(estimate_id);"
    "CREATE INDEX validation_plans_run ON validation_plans(run_id);",

    /* 4: what `strata search` keeps beside the columns of 1: the devices
     * planned for, the seed, and the result (best, top plans, baselines) */
    "ALTER TABLE searches ADD COLUMN devices     INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE searches ADD COLUMN seed        INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE searches ADD COLUMN result_json TEXT;"
    "ALTER TABLE searches ADD COLUMN policy      BLOB;",

    /* 5: the build of the kernels and the thread layout a profile measured
     * (executor/build.h), so that estimates can tell when it is stale */
    "ALTER TABLE profiles ADD COLUMN build_json TEXT;",

    /* 6: a search's options beside its budget (lossy, threads, untied,
     * the cost model), so that a resumed search searches the same space */
    "ALTER TABLE searches ADD COLUMN options_json TEXT;",

    /* 7: a run submitted to the server is a row from the start (queued,
     * running, then what the run stored, or why it failed or was
     * interrupted), so a server killed mid-run leaves it said */
    "ALTER TABLE runs ADD COLUMN error TEXT;",

    /* 8: the process measuring a profile, so that one killed before it
     * could close its row is found out (db_profile_interrupt_dead) */
    "ALTER TABLE profiles ADD COLUMN pid INTEGER;",

    /* 9: the process running a search (the command line's, or the
     * server's that runs it), so that another process tells a live search
     * from one whose process was killed (db_search_interrupt) */
    "ALTER TABLE searches ADD COLUMN host TEXT;"
    "ALTER TABLE searches ADD COLUMN pid INTEGER;",

    /* 10: the server that took a run, so that a server starting or
     * stopping beside another on the same store interrupts only the runs
     * of a server that has gone, or its own (db_run_interrupt) */
    "ALTER TABLE runs ADD COLUMN host TEXT;"
    "ALTER TABLE runs ADD COLUMN pid INTEGER;",
};

#define DB_LATEST ((int)(sizeof migrations / sizeof migrations[0]))

/* ----------------------------------------------------------------------------
 * Error checks. Both macros need `Db *db`, `Err *err` and an `err:` label in
 * scope; they record the failing code and turn it into a message (sql_fail). */

/* What a failed statement means to the person who gave the store's path,
 * then SQLite's own words and where, for whoever debugs it. */
static void sql_fail(Db *db, int rc, Err *err, const char *file, int line)
{
    db->rc = rc;
    const char *msg = db->h ? sqlite3_errmsg(db->h) : sqlite3_errstr(rc);
    const char *what;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
        what = DB_BUSY ": another process held it for writing longer than 5 s; try again";
        break;
    case SQLITE_LOCKED: what = DB_BUSY ": a table was locked by another statement; try again"; break;
    case SQLITE_FULL: what = "the disk holding the store is full"; break;
    case SQLITE_IOERR: what = "reading or writing the store failed (an I/O error)"; break;
    case SQLITE_READONLY: what = "the store cannot be written (read-only file or directory)"; break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        what = "the store is damaged (`sqlite3 FILE 'PRAGMA integrity_check'` says where)";
        break;
    case SQLITE_CANTOPEN: what = "the store's file (or its -wal beside it) cannot be opened"; break;
    case SQLITE_CONSTRAINT: what = "the store refused a row"; break;
    default: what = "the store failed"; break;
    }
    err_set(err, "%s: %s (SQLite: %s; %s:%d)", db->path ? db->path : "database", what, msg, file,
            line);
}

#define SQL_CHECK(call)                                                  \
    do {                                                                 \
        int rc_ = (call);                                                \
        if (rc_ != SQLITE_OK) {                                          \
            sql_fail(db, rc_, err, __FILE__, __LINE__);                  \
            goto err;                                                    \
        }                                                                \
    } while (0)

/* Steps a statement that must finish without returning rows. */
#define SQL_STEP_DONE(st)                                                \
    do {                                                                 \
        int rc_ = sqlite3_step(st);                                      \
        if (rc_ != SQLITE_DONE) {                                        \
            sql_fail(db, rc_, err, __FILE__, __LINE__);                  \
            goto err;                                                    \
        }                                                                \
    } while (0)

/* Undoes an open transaction, if any; keeps err as the first failure set it. */
static void tx_rollback(Db *db)
{
    if (!sqlite3_get_autocommit(db->h))
        sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
}

static char *col_str(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? xstrdup((const char *)t) : NULL;
}

static void col_id(sqlite3_stmt *st, int i, char out[17])
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, 17, "%s", t ? (const char *)t : "");
}

/* Reads the single integer that a statement like "PRAGMA user_version" returns. */
static int query_int(Db *db, const char *sql, int *out, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db, sql, &st));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {      /* a pragma the build omits answers no row */
        err_set(err, "%s:%d: '%s' returned nothing", __FILE__, __LINE__, sql);
        goto err;
    }
    if (rc != SQLITE_ROW) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    *out = sqlite3_column_int(st, 0);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return -1;
}

/* ----------------------------------------------------------------------------
 * Opening and migrating */

/* Says why sqlite3_open_v2 could not open `path`, in the user's terms. */
static void explain_open_failure(const char *path, int rc, sqlite3 *h, Err *err)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);

    struct stat sb;
    if (stat(dir, &sb) != 0)
        err_set(err, "%s: cannot create the database: directory '%s' is not there (%s); "
                "create it first", path, dir, strerror(errno));
    else if (!S_ISDIR(sb.st_mode))
        err_set(err, "%s: cannot create the database: '%s' is not a directory", path, dir);
    else if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        err_set(err, "%s: is a directory; give the path of a database file", path);
    else if (access(dir, W_OK) != 0)
        err_set(err, "%s: cannot create the database: directory '%s' is not writable (%s)",
                path, dir, strerror(errno));
    else
        err_set(err, "%s: cannot open the database (%s)", path,
                h ? sqlite3_errmsg(h) : sqlite3_errstr(rc));
}

static bool is_memory_path(const char *path)
{
    return !path[0] || !strcmp(path, ":memory:");
}

/* Applies migrations until the schema is at DB_LATEST. Each runs in its own
 * IMMEDIATE transaction and re-reads the version under the write lock, so two
 * processes opening a new database at once do not both apply migration 1. */
static int migrate(Db *db, Err *err)
{
    int v;
    if (query_int(db, "PRAGMA user_version", &v, err)) goto err;
    for (;;) {
        if (v > DB_LATEST) {
            err_set(err, "schema version %d is newer than this strata (knows %d); "
                    "upgrade strata", v, DB_LATEST);
            goto err;
        }
        if (v == DB_LATEST) break;
        SQL_CHECK(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
        if (query_int(db, "PRAGMA user_version", &v, err)) goto err;
        if (v >= DB_LATEST) {                /* someone else migrated meanwhile */
            SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
            continue;
        }
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d", v + 1);
        if (sqlite3_exec(db->h, migrations[v], NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db->h, bump, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            db->rc = sqlite3_extended_errcode(db->h);
            err_set(err, "%s:%d: migrating the schema to version %d: %s", __FILE__, __LINE__,
                    v + 1, sqlite3_errmsg(db->h));
            goto err;
        }
        v++;
    }
    return 0;
err:
    tx_rollback(db);
    return -1;
}

/* SQLite's global memory statistics take one mutex on every allocation of
 * every connection; nothing here reads them, and with many threads (the
 * REST API's) that mutex is the bottleneck. Set once, before SQLite starts
 * (it refuses afterwards, harmlessly, when something else started it). */
static void configure_sqlite(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

static Db *open_db(const char *path, bool create, Err *err)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, configure_sqlite);
    if (!path || !*path) {
        /* SQLite would open a private temporary database for "" */
        err_set(err, "%s", path ? "the database path is empty (--db): give a file" : "no database path given");
        return NULL;
    }
    if (!create && !is_memory_path(path) && access(path, F_OK) != 0) {
        err_set(err, "%s: no strata database here (`strata lower` creates one)", path);
        return NULL;
    }
    Db *db = xcalloc(1, sizeof *db);
    db->path = xstrdup(path);

    int rc = sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0),
                             NULL);
    if (rc != SQLITE_OK) {
        explain_open_failure(path, rc, db->h, err);
        goto fail;
    }
    sqlite3_extended_result_codes(db->h, 1);
    /* READWRITE quietly falls back to read-only on a write-protected file. */
    if (sqlite3_db_readonly(db->h, "main") == 1) {
        err_set(err, "%s: the database file is read-only; strata needs to write it", path);
        goto fail;
    }
    SQL_CHECK(sqlite3_busy_timeout(db->h, 5000));

    /* The first statements read the file: a non-database fails here, and a
     * database of something else (tables, but no strata schema version) is
     * left exactly as it is. */
    int version = 0, tables = 0;
    if (query_int(db, "PRAGMA user_version", &version, err)) goto err;
    if (query_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'", &tables, err))
        goto err;
    if (!create && !is_memory_path(path) && version == 0 && tables == 0) {
        /* an empty file: a command that only reads leaves it empty */
        err_set(err, "%s: no strata database here: the file is empty (`strata lower` creates one)",
                path);
        goto fail;
    }
    if (version == 0 && tables > 0) {
        err_set(err, "%s: is a SQLite database of something else (it has %d table%s and no "
                "strata schema); give strata a file of its own", path, tables,
                tables == 1 ? "" : "s");
        goto fail;
    }
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db, "PRAGMA journal_mode = WAL", &st));
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        stmt_done(db, st);
        goto err;
    }
    char mode[17];
    col_id(st, 0, mode);
    stmt_done(db, st);
    if (!is_memory_path(path) && strcmp(mode, "wal") != 0) {
        err_set(err, "%s: could not switch to WAL journal mode (got '%s'); "
                "is it on a network file system?", path, mode);
        goto fail;
    }
    /* WAL keeps the database consistent with NORMAL; only the last commits
     * before a power cut can be lost. */
    SQL_CHECK(sqlite3_exec(db->h, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL));
    SQL_CHECK(sqlite3_exec(db->h, "PRAGMA foreign_keys = ON", NULL, NULL, NULL));
    int fk = 0;
    if (query_int(db, "PRAGMA foreign_keys", &fk, err)) goto err;
    if (fk != 1) {
        err_set(err, "%s: this SQLite cannot enforce foreign keys", path);
        goto fail;
    }
    if (migrate(db, err)) goto err;
    return db;

err:
    if ((db->rc & 0xff) == SQLITE_NOTADB)
        err_set(err, "%s: is not a SQLite database; give the path of a strata "
                "database or of a file to create", path);
    else if ((db->rc & 0xff) == SQLITE_READONLY || (db->rc & 0xff) == SQLITE_CANTOPEN)
        err_set(err, "%s: cannot write the database or its -wal and -shm files beside it "
                "(%s); the file and its directory must be writable", path,
                sqlite3_errstr(db->rc));
    else if (err && !(strncmp(err->msg, path, strlen(path)) == 0 &&
                      strncmp(err->msg + strlen(path), ": ", 2) == 0))
        err_prefix(err, "%s", path);        /* sql_fail's messages name it already */
fail:
    db_close(db);
    return NULL;
}

Db *db_open(const char *path, Err *err)
{
    return open_db(path, true, err);
}

Db *db_open_existing(const char *path, Err *err)
{
    return open_db(path, false, err);
}

void db_close(Db *db)
{
    if (!db) return;
    for (int k = 0; k < STMT_CACHE; k++)
        if (db->stmts[k].sql) {
            sqlite3_finalize(db->stmts[k].st);
            free(db->stmts[k].sql);
        }
    sqlite3_close(db->h);     /* every statement is finalized, so this succeeds */
    free(db->path);
    free(db);
}

int db_schema_version(Db *db)
{
    int v;
    Err err;
    return query_int(db, "PRAGMA user_version", &v, &err) ? -1 : v;
}

/* ----------------------------------------------------------------------------
 * Ids */

static bool is_hex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Checks an id about to be stored: exactly 16 lowercase hex digits. */
static int check_id(const char *id, const char *what, Err *err)
{
    size_t n = strnlen(id, 17);
    bool ok = n == 16;
    for (size_t i = 0; ok && i < n; i++) ok = is_hex((unsigned char)id[i]);
    if (!ok)
        return err_set(err, "%s id '%.16s' is not 16 lowercase hex digits "
                       "(ids are content hashes)", what, id);
    return 0;
}

/* Turns a full id or a unique prefix of at least 4 hex digits into the full
 * id of a row of `table`. Returns 0, 1 when nothing matches, -1 on bad input,
 * an ambiguous prefix or an SQL error. `table` is one of ours, never input. */
int db_id_check(const char *noun, const char *in, Err *err)
{
    if (!in || !in[0]) return err_set(err, "no %s id given", noun);
    size_t n = strlen(in);
    if (n > 16)
        return err_set(err, "%s id '%.40s%s' is too long (ids are 16 hex digits)",
                       noun, in, n > 40 ? "..." : "");
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c >= 'A' && c <= 'F') c += 'a' - 'A';
        if (!is_hex(c))
            return err_set(err, "%s id '%s' has a character that is not a hex digit; "
                           "ids are made of 0-9 and a-f", noun, in);
    }
    if (n < 4)
        return err_set(err, "%s id prefix '%s' is too short; give at least 4 hex digits",
                       noun, in);
    return 0;
}

static int resolve_id(Db *db, const char *table, const char *noun, const char *in,
                      char out[17], Err *err)
{
    sqlite3_stmt *st = NULL;
    if (db_id_check(noun, in, err)) return -1;
    size_t n = strlen(in);
    char lo[17], hi[18];
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        lo[i] = (char)(c >= 'A' && c <= 'F' ? c + 'a' - 'A' : c);
    }
    lo[n] = '\0';
    snprintf(hi, sizeof hi, "%sg", lo);

    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*), min(id) FROM %s WHERE id >= ? AND id < ?", table);
    SQL_CHECK(stmt_prepare(db, sql, &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, lo, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, hi, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    int64_t count = sqlite3_column_int64(st, 0);
    col_id(st, 1, out);
    stmt_done(db, st);
    if (count == 0) {
        err_set(err, "no %s with id '%s'", noun, in);
        return 1;
    }
    if (count > 1)
        return err_set(err, "id prefix '%s' matches %lld %ss; give more digits",
                       in, (long long)count, noun);
    return 0;
err:
    stmt_done(db, st);
    return -1;
}

/* ----------------------------------------------------------------------------
 * Models */

#define MODEL_COLS "id, name, json, params, train_flops, created"

static void read_model(sqlite3_stmt *st, void *out)
{
    DbModel *m = out;
    col_id(st, 0, m->id);
    m->name = col_str(st, 1);
    m->json = col_str(st, 2);
    m->params = sqlite3_column_double(st, 3);
    m->train_flops = sqlite3_column_double(st, 4);
    m->created = col_str(st, 5);
}

/* The one row `select` (ending in "WHERE <key> = ?") gives for an id or a
 * unique id prefix of `table`, handed to read. 1 when not found. */
typedef void (*RowReader)(sqlite3_stmt *st, void *out);

static int get_row(Db *db, const char *table, const char *noun, const char *id,
                   const char *select, RowReader read, void *out, char full[17], Err *err)
{
    sqlite3_stmt *st = NULL;
    int r = resolve_id(db, table, noun, id, full, err);
    if (r) return r;
    SQL_CHECK(stmt_prepare(db, select, &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, full, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {                  /* deleted since resolve_id */
        stmt_done(db, st);
        err_set(err, "no %s with id '%s'", noun, id);
        return 1;
    }
    if (rc != SQLITE_ROW) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    read(st, out);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "reading %s %s", noun, id);
}

typedef void (*RowFree)(void *row);

static void free_model_row(void *r) { db_model_free(r); }
static void free_plan_row(void *r) { db_plan_free(r); }
static void free_run_row(void *r) { db_run_free(r); }

/* Every row of the prepared and bound statement st, read into an array of
 * `size`-byte rows; on failure the rows read so far are freed with free_row.
 * Finalizes st on every path. */
static int read_rows(Db *db, sqlite3_stmt *st, size_t size, RowReader read, RowFree free_row,
                     void **rows, int *n, Err *err)
{
    char *a = NULL;
    int cnt = 0, cap = 0, rc;
    *rows = NULL;
    *n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            a = xrealloc(a, (size_t)cap * size);
        }
        memset(a + (size_t)cnt * size, 0, size);
        read(st, a + (size_t)cnt++ * size);
    }
    if (rc != SQLITE_DONE) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    stmt_done(db, st);
    *rows = a;
    *n = cnt;
    return 0;
err:
    stmt_done(db, st);
    for (int i = 0; i < cnt; i++) free_row(a + (size_t)i * size);
    free(a);
    return -1;
}

/* Every row of `select` (which takes no parameters), as read_rows reads them. */
static int list_rows(Db *db, const char *select, size_t size, RowReader read, RowFree free_row,
                     const char *what, void **rows, int *n, Err *err)
{
    sqlite3_stmt *st = NULL;
    *rows = NULL;
    *n = 0;
    SQL_CHECK(stmt_prepare(db, select, &st));
    if (read_rows(db, st, size, read, free_row, rows, n, err)) goto fail;
    return 0;
err:
    stmt_done(db, st);
fail:
    return err_prefix(err, "listing %s", what);
}

/* ON CONFLICT(id) DO NOTHING rather than INSERT OR IGNORE: OR IGNORE would
 * also skip a row that breaks NOT NULL or CHECK, silently storing nothing. */
int db_model_put(Db *db, const DbModel *m, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(m->id, "model", err)) return -1;
    if (!m->name || !m->json)
        return err_set(err, "model %s: name and json are required", m->id);
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO models (" MODEL_COLS ") VALUES (?, ?, ?, ?, ?, coalesce(?, " NOW "))"
        " ON CONFLICT (id) DO NOTHING", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, m->json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_double(st, 4, m->params));
    SQL_CHECK(sqlite3_bind_double(st, 5, m->train_flops));
    SQL_CHECK(sqlite3_bind_text(st, 6, m->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "storing model %s", m->id);
}

int db_model_get(Db *db, const char *id, DbModel *out, Err *err)
{
    char full[17];
    memset(out, 0, sizeof *out);
    return get_row(db, "models", "model", id, "SELECT " MODEL_COLS " FROM models WHERE id = ?",
                   read_model, out, full, err);
}

int db_model_list(Db *db, DbModel **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, "SELECT " MODEL_COLS " FROM models ORDER BY created DESC, rowid DESC",
                       sizeof **rows, read_model, free_model_row, "models", &a, n, err);
    *rows = a;
    return rc;
}

void db_model_free(DbModel *m)
{
    if (!m) return;
    free(m->name);
    free(m->json);
    free(m->created);
    m->name = m->json = m->created = NULL;
}

void db_model_list_free(DbModel *rows, int n)
{
    for (int i = 0; i < n; i++) db_model_free(&rows[i]);
    free(rows);
}

/* ----------------------------------------------------------------------------
 * Clusters */

#define CLUSTER_COLS "id, name, json, ndevices, created"

int db_cluster_put(Db *db, const DbCluster *c, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(c->id, "cluster", err)) return -1;
    if (!c->name || !c->json)
        return err_set(err, "cluster %s: name and json are required", c->id);
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO clusters (" CLUSTER_COLS ") VALUES (?, ?, ?, ?, coalesce(?, " NOW "))"
        " ON CONFLICT (id) DO NOTHING", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, c->id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, c->name, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, c->json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 4, c->ndevices));
    SQL_CHECK(sqlite3_bind_text(st, 5, c->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "storing cluster %s", c->id);
}

static void read_cluster(sqlite3_stmt *st, void *out)
{
    DbCluster *c = out;
    col_id(st, 0, c->id);
    c->name = col_str(st, 1);
    c->json = col_str(st, 2);
    c->ndevices = sqlite3_column_int(st, 3);
    c->created = col_str(st, 4);
}

int db_cluster_get(Db *db, const char *id, DbCluster *out, Err *err)
{
    char full[17];
    memset(out, 0, sizeof *out);
    return get_row(db, "clusters", "cluster", id,
                   "SELECT " CLUSTER_COLS " FROM clusters WHERE id = ?",
                   read_cluster, out, full, err);
}

static void free_cluster_row(void *row)
{
    db_cluster_free(row);
}

int db_cluster_list(Db *db, DbCluster **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, "SELECT " CLUSTER_COLS " FROM clusters ORDER BY created DESC, rowid DESC",
                       sizeof **rows, read_cluster, free_cluster_row, "clusters", &a, n, err);
    *rows = a;
    return rc;
}

void db_cluster_list_free(DbCluster *rows, int n)
{
    for (int i = 0; i < n; i++) db_cluster_free(&rows[i]);
    free(rows);
}

void db_cluster_free(DbCluster *c)
{
    if (!c) return;
    free(c->name);
    free(c->json);
    free(c->created);
    c->name = c->json = c->created = NULL;
}

/* ----------------------------------------------------------------------------
 * Plans (and their strategies) */

#define PLAN_SELECT                                                            \
    "SELECT p.id, p.model_id, p.cluster_id, p.strategy_id, m.name, c.name,"    \
    "       s.json, p.summary_json, p.world, p.created"                        \
    "  FROM plans p"                                                           \
    "  JOIN models m ON m.id = p.model_id"                                     \
    "  JOIN clusters c ON c.id = p.cluster_id"                                 \
    "  JOIN strategies s ON s.id = p.strategy_id"

static void read_plan(sqlite3_stmt *st, void *out)
{
    DbPlan *p = out;
    col_id(st, 0, p->id);
    col_id(st, 1, p->model_id);
    col_id(st, 2, p->cluster_id);
    col_id(st, 3, p->strategy_id);
    p->model_name = col_str(st, 4);
    p->cluster_name = col_str(st, 5);
    p->strategy_json = col_str(st, 6);
    p->summary_json = col_str(st, 7);
    p->world = sqlite3_column_int(st, 8);
    p->created = col_str(st, 9);
}

/* The strategy row and the plan row go in one transaction: if the plan
 * cannot be stored (its model is missing, say), neither is the strategy. */
int db_plan_put(Db *db, const DbPlan *p, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(p->id, "plan", err) || check_id(p->model_id, "model", err) ||
        check_id(p->cluster_id, "cluster", err) || check_id(p->strategy_id, "strategy", err))
        return err_prefix(err, "storing plan %.16s", p->id);
    if (!p->strategy_json)
        return err_set(err, "storing plan %s: strategy_json is required", p->id);
    db->rc = 0;

    SQL_CHECK(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO strategies (id, json, created) VALUES (?, ?, coalesce(?, " NOW "))"
        " ON CONFLICT (id) DO NOTHING", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, p->strategy_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, p->strategy_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, p->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;

    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO plans (id, model_id, cluster_id, strategy_id, world, summary_json, created)"
        " VALUES (?, ?, ?, ?, ?, ?, coalesce(?, " NOW "))"
        /* the plan is content-addressed, its summary is what this strata's
         * lowering makes of it: lowering again refreshes the summary */
        " ON CONFLICT (id) DO UPDATE SET summary_json = excluded.summary_json", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, p->model_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, p->cluster_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 4, p->strategy_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 5, p->world));
    SQL_CHECK(sqlite3_bind_text(st, 6, p->summary_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 7, p->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;

    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    return 0;
err:
    stmt_done(db, st);
    tx_rollback(db);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "model %s or cluster %s is not stored; store them before the plan",
                   p->model_id, p->cluster_id);
    return err_prefix(err, "storing plan %s", p->id);
}

int db_plan_get(Db *db, const char *id, DbPlan *out, Err *err)
{
    char full[17];
    memset(out, 0, sizeof *out);
    return get_row(db, "plans", "plan", id, PLAN_SELECT " WHERE p.id = ?", read_plan,
                   out, full, err);
}

int db_plan_list(Db *db, DbPlan **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, PLAN_SELECT " ORDER BY p.created DESC, p.rowid DESC",
                       sizeof **rows, read_plan, free_plan_row, "plans", &a, n, err);
    *rows = a;
    return rc;
}

void db_plan_free(DbPlan *p)
{
    if (!p) return;
    free(p->model_name);
    free(p->cluster_name);
    free(p->strategy_json);
    free(p->summary_json);
    free(p->created);
    p->model_name = p->cluster_name = p->strategy_json = p->summary_json = p->created = NULL;
}

void db_plan_list_free(DbPlan *rows, int n)
{
    for (int i = 0; i < n; i++) db_plan_free(&rows[i]);
    free(rows);
}

/* ----------------------------------------------------------------------------
 * Runs */

/* A run not yet ended by the run itself: queued or running under a server,
 * or interrupted with it (a run that goes on after its server was killed
 * still stores what it measured). The same list twice: as SQL, and for
 * db_run_status_pending. */
#define RUN_PENDING "('queued', 'running', 'interrupted')"
static const char *const run_pending[] = { "queued", "running", "interrupted" };

bool db_run_status_pending(const char *status)
{
    for (size_t k = 0; status && k < sizeof run_pending / sizeof *run_pending; k++)
        if (!strcmp(status, run_pending[k])) return true;
    return false;
}

int db_run_put(Db *db, const DbRun *r, const DbRunStep *steps, int nsteps, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(r->id, "run", err) || check_id(r->plan_id, "plan", err))
        return err_prefix(err, "storing run %.16s", r->id);
    db->rc = 0;
    SQL_CHECK(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
    /* a row the server wrote at submission is completed, never another */
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO runs (id, plan_id, backend, world, steps, status, started, finished,"
        " verify_json) VALUES (?, ?, ?, ?, ?, ?, ?, coalesce(?, " NOW "), ?)"
        " ON CONFLICT (id) DO UPDATE SET backend = excluded.backend, world = excluded.world,"
        " steps = excluded.steps, status = excluded.status,"
        " started = coalesce(excluded.started, runs.started), finished = excluded.finished,"
        " verify_json = excluded.verify_json, error = NULL"
        " WHERE runs.plan_id = excluded.plan_id AND runs.status IN " RUN_PENDING, &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, r->plan_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, r->backend, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 4, r->world));
    SQL_CHECK(sqlite3_bind_int(st, 5, r->steps));
    SQL_CHECK(sqlite3_bind_text(st, 6, r->status, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 7, r->started, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 8, r->finished, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 9, r->verify_json, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;
    if (sqlite3_changes(db->h) == 0) {
        err_set(err, "a run with id %s is already stored", r->id);
        goto err;
    }
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO run_steps (run_id, step, rank, loss, step_s, compute_s, comm_s, idle_s,"
        " peak_mem_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", &st));
    for (int i = 0; i < nsteps; i++) {
        const DbRunStep *x = &steps[i];
        SQL_CHECK(sqlite3_reset(st));
        SQL_CHECK(sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC));
        SQL_CHECK(sqlite3_bind_int(st, 2, x->step));
        SQL_CHECK(sqlite3_bind_int(st, 3, x->rank));
        SQL_CHECK(sqlite3_bind_double(st, 4, x->loss));
        SQL_CHECK(sqlite3_bind_double(st, 5, x->step_s));
        SQL_CHECK(sqlite3_bind_double(st, 6, x->compute_s));
        SQL_CHECK(sqlite3_bind_double(st, 7, x->comm_s));
        SQL_CHECK(sqlite3_bind_double(st, 8, x->idle_s));
        SQL_CHECK(sqlite3_bind_double(st, 9, x->peak_mem_bytes));
        SQL_STEP_DONE(st);
    }
    stmt_done(db, st);
    st = NULL;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    return 0;
err:
    stmt_done(db, st);
    tx_rollback(db);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "plan %s is not stored; store it before its runs", r->plan_id);
    return err_prefix(err, "storing run %s", r->id);
}

int db_run_submit(Db *db, const DbRun *r, Err *err)
{
    sqlite3_stmt *st = NULL;
    char host[256];
    this_host(host, sizeof host);
    if (check_id(r->id, "run", err) || check_id(r->plan_id, "plan", err))
        return err_prefix(err, "submitting run %.16s", r->id);
    db->rc = 0;
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO runs (id, plan_id, backend, world, steps, status, host, pid)"
        " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, r->plan_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, r->backend, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 4, r->world));
    SQL_CHECK(sqlite3_bind_int(st, 5, r->steps));
    SQL_CHECK(sqlite3_bind_text(st, 6, host, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int64(st, 7, getpid()));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "plan %s is not stored", r->plan_id);
    return err_prefix(err, "submitting run %s", r->id);
}

int db_run_mark(Db *db, const char *id, const char *status, const char *error, Err *err)
{
    sqlite3_stmt *st = NULL;
    bool running = !strcmp(status, "running");
    SQL_CHECK(stmt_prepare(db,
        "UPDATE runs SET status = ?2, error = ?3,"
        " started = CASE WHEN ?4 THEN " NOW " ELSE started END,"
        " finished = CASE WHEN ?4 THEN NULL ELSE " NOW " END"
        " WHERE id = ?1 AND status IN ('queued', 'running')", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, status, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, error && *error ? error : NULL, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 4, running));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "marking run %s %s", id, status);
}

#define RUN_SELECT                                                                  \
    "SELECT r.id, r.plan_id, r.backend, r.world, r.steps, r.status, r.started,"     \
    " r.finished, r.verify_json, m.name, r.error FROM runs r JOIN plans p ON p.id = r.plan_id" \
    " JOIN models m ON m.id = p.model_id"

static void read_run(sqlite3_stmt *st, void *out)
{
    DbRun *r = out;
    memset(r, 0, sizeof *r);
    col_id(st, 0, r->id);
    col_id(st, 1, r->plan_id);
    r->backend = col_str(st, 2);
    r->world = sqlite3_column_int(st, 3);
    r->steps = sqlite3_column_int(st, 4);
    r->status = col_str(st, 5);
    r->started = col_str(st, 6);
    r->finished = col_str(st, 7);
    r->verify_json = col_str(st, 8);
    r->model_name = col_str(st, 9);
    r->error = col_str(st, 10);
}

int db_run_get(Db *db, const char *id, DbRun *out, DbRunStep **steps, int *nsteps, Err *err)
{
    sqlite3_stmt *st = NULL;
    char full[17];
    memset(out, 0, sizeof *out);
    *steps = NULL;
    *nsteps = 0;
    DbRunStep *a = NULL;
    int cnt = 0, cap = 0, rc;
    int r = get_row(db, "runs", "run", id, RUN_SELECT " WHERE r.id = ?", read_run,
                    out, full, err);
    if (r) return r;
    SQL_CHECK(stmt_prepare(db,
        "SELECT step, rank, loss, step_s, compute_s, comm_s, idle_s, peak_mem_bytes"
        " FROM run_steps WHERE run_id = ? ORDER BY step, rank", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, full, -1, SQLITE_STATIC));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 64;
            a = xrealloc(a, (size_t)cap * sizeof *a);
        }
        a[cnt++] = (DbRunStep){ sqlite3_column_int(st, 0), sqlite3_column_int(st, 1),
                                sqlite3_column_double(st, 2), sqlite3_column_double(st, 3),
                                sqlite3_column_double(st, 4), sqlite3_column_double(st, 5),
                                sqlite3_column_double(st, 6), sqlite3_column_double(st, 7) };
    }
    if (rc != SQLITE_DONE) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    stmt_done(db, st);
    *steps = a;
    *nsteps = cnt;
    return 0;
err:
    stmt_done(db, st);
    free(a);
    db_run_free(out);
    return err_prefix(err, "reading run %s", id);
}

int db_run_list(Db *db, DbRun **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, RUN_SELECT " ORDER BY r.finished IS NOT NULL, r.finished DESC, r.rowid DESC",
                       sizeof **rows, read_run, free_run_row, "runs", &a, n, err);
    *rows = a;
    return rc;
}

void db_run_free(DbRun *r)
{
    if (!r) return;
    free(r->backend);
    free(r->status);
    free(r->started);
    free(r->finished);
    free(r->verify_json);
    free(r->model_name);
    free(r->error);
    r->backend = r->status = r->started = r->finished = r->verify_json = r->model_name = NULL;
    r->error = NULL;
}

void db_run_list_free(DbRun *rows, int n)
{
    for (int i = 0; i < n; i++) db_run_free(&rows[i]);
    free(rows);
}

/* ----------------------------------------------------------------------------
 * Profiles. Ids are SQLite rowids (a profile is a measurement, not content).
 * Every write checks, inside its IMMEDIATE transaction, that the profile is
 * there and still running, so no sample can slip in after the finish. */

/* The profile row with its sample counts (the subqueries use the indexes
 * that start with profile_id). */
#define PROFILE_SELECT                                                                   \
    "SELECT p.id, p.host, p.device, p.backend, p.started, p.finished, p.complete,"       \
    " p.status, p.ranks, p.quick, p.peak_flops, p.mem_bw, p.mem_bytes, p.notes,"         \
    " p.cluster_json, p.build_json,"                                                     \
    " (SELECT count(*) FROM profile_ops o WHERE o.profile_id = p.id),"                   \
    " (SELECT count(*) FROM profile_links l WHERE l.profile_id = p.id),"                 \
    " (SELECT count(*) FROM profile_fits f WHERE f.profile_id = p.id)"                   \
    " FROM profiles p"

static void read_profile(sqlite3_stmt *st, void *out)
{
    DbProfile *p = out;
    p->id = sqlite3_column_int64(st, 0);
    p->host = col_str(st, 1);
    p->device = col_str(st, 2);
    p->backend = col_str(st, 3);
    p->started = col_str(st, 4);
    p->finished = col_str(st, 5);
    p->complete = sqlite3_column_int(st, 6);
    p->status = col_str(st, 7);
    p->ranks = sqlite3_column_int(st, 8);
    p->quick = sqlite3_column_int(st, 9);
    p->peak_flops = sqlite3_column_double(st, 10);
    p->mem_bw = sqlite3_column_double(st, 11);
    p->mem_bytes = sqlite3_column_double(st, 12);
    p->notes = col_str(st, 13);
    p->cluster_json = col_str(st, 14);
    p->build_json = col_str(st, 15);
    p->nops = sqlite3_column_int(st, 16);
    p->nlinks = sqlite3_column_int(st, 17);
    p->nfits = sqlite3_column_int(st, 18);
}

static void read_profile_op(sqlite3_stmt *st, void *out)
{
    DbProfileOp *o = out;
    o->kind = col_str(st, 0);
    o->phase = col_str(st, 1);
    o->shape_json = col_str(st, 2);
    o->dtype = col_str(st, 3);
    o->source = col_str(st, 4);
    o->flops = sqlite3_column_double(st, 5);
    o->bytes = sqlite3_column_double(st, 6);
    o->median_s = sqlite3_column_double(st, 7);
    o->p10_s = sqlite3_column_double(st, 8);
    o->p90_s = sqlite3_column_double(st, 9);
    o->reps = sqlite3_column_int(st, 10);
}

static void read_profile_link(sqlite3_stmt *st, void *out)
{
    DbProfileLink *l = out;
    l->collective = col_str(st, 0);
    l->group_size = sqlite3_column_int(st, 1);
    l->level = col_str(st, 2);
    l->bytes = sqlite3_column_int64(st, 3);
    l->time_s = sqlite3_column_double(st, 4);
    l->algbw = sqlite3_column_double(st, 5);
    l->busbw = sqlite3_column_double(st, 6);
    l->iters = sqlite3_column_int(st, 7);
}

static void read_profile_fit(sqlite3_stmt *st, void *out)
{
    DbProfileFit *f = out;
    f->collective = col_str(st, 0);
    f->group_size = sqlite3_column_int(st, 1);
    f->level = col_str(st, 2);
    f->alpha_s = sqlite3_column_double(st, 3);
    f->beta_s = sqlite3_column_double(st, 4);
    f->rms_rel_err = sqlite3_column_double(st, 5);
    f->max_rel_err = sqlite3_column_double(st, 6);
    f->n = sqlite3_column_int(st, 7);
}

static void free_profile_row(void *r) { db_profile_free(r); }

static void free_profile_op(void *r)
{
    DbProfileOp *o = r;
    free(o->kind);
    free(o->phase);
    free(o->shape_json);
    free(o->dtype);
    free(o->source);
}

static void free_profile_link(void *r)
{
    DbProfileLink *l = r;
    free(l->collective);
    free(l->level);
}

static void free_profile_fit(void *r)
{
    DbProfileFit *f = r;
    free(f->collective);
    free(f->level);
}

/* Opens a write to profile `id` and refuses it unless the profile is stored
 * and not finished. The transaction is IMMEDIATE, so the answer holds until
 * the commit; the caller commits, or rolls back on any failure, this one's too. */
static int profile_tx_begin(Db *db, int64_t id, Err *err)
{
    sqlite3_stmt *st = NULL;
    db->rc = 0;
    SQL_CHECK(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
    SQL_CHECK(stmt_prepare(db, "SELECT finished, status FROM profiles WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, id));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        stmt_done(db, st);
        return err_set(err, "no profile with id %lld", (long long)id);
    }
    if (rc != SQLITE_ROW) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
        err_set(err, "the profile is finished (at %s, status '%s') and takes no more writes; "
                "start a new profile", sqlite3_column_text(st, 0), sqlite3_column_text(st, 1));
        goto err;
    }
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return -1;
}

/* Checks the array and count a batch of rows comes as. */
static int check_batch(const void *rows, int n, Err *err)
{
    if (n < 0) return err_set(err, "n is %d; give 0 or more", n);
    if (n > 0 && !rows) return err_set(err, "n is %d but the array is NULL", n);
    return 0;
}

int db_profile_begin(Db *db, const DbProfile *p, int64_t *id, Err *err)
{
    sqlite3_stmt *st = NULL;
    const char *missing = !p->host ? "host" : !p->device ? "device" : !p->backend ? "backend"
                                                                                  : NULL;
    if (missing) return err_set(err, "starting a profile: %s is required", missing);
    if (p->ranks < 1)
        return err_set(err, "starting a profile: ranks is %d; at least 1 process measures",
                       p->ranks);
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO profiles (host, device, backend, ranks, quick, notes, build_json, pid)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, p->host, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, p->device, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, p->backend, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 4, p->ranks));
    SQL_CHECK(sqlite3_bind_int(st, 5, p->quick != 0));
    SQL_CHECK(sqlite3_bind_text(st, 6, p->notes, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 7, p->build_json, -1, SQLITE_STATIC));
    SQL_CHECK(p->pid > 0 ? sqlite3_bind_int64(st, 8, p->pid) : sqlite3_bind_null(st, 8));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    *id = sqlite3_last_insert_rowid(db->h);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "starting a profile on %s", p->host);
}

/* NULL notes keep the notes given at the start. The op samples stored so far
 * take the new device too, so an op's device is always its profile's. */
int db_profile_set_device(Db *db, int64_t id, const char *device, double peak_flops,
                          double mem_bw, double mem_bytes, const char *notes, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (!device) return err_set(err, "setting the device of profile %lld: device is required",
                                (long long)id);
    if (profile_tx_begin(db, id, err)) goto err;
    SQL_CHECK(stmt_prepare(db,
        "UPDATE profiles SET device = ?, peak_flops = ?, mem_bw = ?, mem_bytes = ?,"
        " notes = coalesce(?, notes) WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_double(st, 2, peak_flops));
    SQL_CHECK(sqlite3_bind_double(st, 3, mem_bw));
    SQL_CHECK(sqlite3_bind_double(st, 4, mem_bytes));
    SQL_CHECK(sqlite3_bind_text(st, 5, notes, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int64(st, 6, id));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;
    SQL_CHECK(stmt_prepare(db, "UPDATE profile_ops SET device = ? WHERE profile_id = ?", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int64(st, 2, id));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    return 0;
err:
    stmt_done(db, st);
    tx_rollback(db);
    return err_prefix(err, "setting the device of profile %lld", (long long)id);
}

/* Binds row r, number i of a batch, to an INSERT's parameters from 2 on,
 * first naming any required string the row lacks. */
typedef int (*RowBind)(Db *db, sqlite3_stmt *st, const void *r, int i, Err *err);

/* Runs the INSERT `sql` for each of the n rows of `size` bytes at `rows`, with
 * profile `id` as parameter 1 (a reset keeps it bound). The caller's
 * transaction makes the batch all-or-nothing and may hold more. */
static int insert_rows(Db *db, int64_t id, const char *sql, const void *rows, int n,
                       size_t size, RowBind bind, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db, sql, &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, id));
    for (int i = 0; i < n; i++) {
        SQL_CHECK(sqlite3_reset(st));
        if (bind(db, st, (const char *)rows + (size_t)i * size, i, err)) goto err;
        SQL_STEP_DONE(st);
    }
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return -1;
}

static int bind_profile_op(Db *db, sqlite3_stmt *st, const void *r, int i, Err *err)
{
    const DbProfileOp *o = r;
    const char *missing = !o->kind ? "kind" : !o->phase ? "phase"
                        : !o->shape_json ? "shape_json" : !o->dtype ? "dtype"
                        : !o->source ? "source" : NULL;
    if (missing) return err_set(err, "op sample %d: %s is required", i, missing);
    SQL_CHECK(sqlite3_bind_text(st, 2, o->kind, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, o->phase, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 4, o->shape_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 5, o->dtype, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 6, o->source, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_double(st, 7, o->flops));
    SQL_CHECK(sqlite3_bind_double(st, 8, o->bytes));
    SQL_CHECK(sqlite3_bind_double(st, 9, o->median_s));
    SQL_CHECK(sqlite3_bind_double(st, 10, o->p10_s));
    SQL_CHECK(sqlite3_bind_double(st, 11, o->p90_s));
    SQL_CHECK(sqlite3_bind_int(st, 12, o->reps));
    return 0;
err:
    return -1;
}

static int bind_profile_link(Db *db, sqlite3_stmt *st, const void *r, int i, Err *err)
{
    const DbProfileLink *l = r;
    const char *missing = !l->collective ? "collective" : !l->level ? "level" : NULL;
    if (missing) return err_set(err, "link sample %d: %s is required", i, missing);
    SQL_CHECK(sqlite3_bind_text(st, 2, l->collective, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 3, l->group_size));
    SQL_CHECK(sqlite3_bind_text(st, 4, l->level, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int64(st, 5, l->bytes));
    SQL_CHECK(sqlite3_bind_double(st, 6, l->time_s));
    SQL_CHECK(sqlite3_bind_double(st, 7, l->algbw));
    SQL_CHECK(sqlite3_bind_double(st, 8, l->busbw));
    SQL_CHECK(sqlite3_bind_int(st, 9, l->iters));
    return 0;
err:
    return -1;
}

static int bind_profile_fit(Db *db, sqlite3_stmt *st, const void *r, int i, Err *err)
{
    const DbProfileFit *f = r;
    const char *missing = !f->collective ? "collective" : !f->level ? "level" : NULL;
    if (missing) return err_set(err, "fit %d: %s is required", i, missing);
    SQL_CHECK(sqlite3_bind_text(st, 2, f->collective, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 3, f->group_size));
    SQL_CHECK(sqlite3_bind_text(st, 4, f->level, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_double(st, 5, f->alpha_s));
    SQL_CHECK(sqlite3_bind_double(st, 6, f->beta_s));
    SQL_CHECK(sqlite3_bind_double(st, 7, f->rms_rel_err));
    SQL_CHECK(sqlite3_bind_double(st, 8, f->max_rel_err));
    SQL_CHECK(sqlite3_bind_int(st, 9, f->n));
    return 0;
err:
    return -1;
}

/* The INSERT of one op sample, its parameters as bind_profile_op binds them. */
#define PROFILE_OP_INSERT                                                                   \
    "INSERT INTO profile_ops (profile_id, device, kind, phase, shape_json, dtype, source,"  \
    " flops, bytes, median_s, p10_s, p90_s, reps) VALUES (?1,"                              \
    " (SELECT device FROM profiles WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11," \
    " ?12)"

int db_profile_add_ops(Db *db, int64_t id, const DbProfileOp *ops, int n, Err *err)
{
    if (check_batch(ops, n, err))
        return err_prefix(err, "adding op samples to profile %lld", (long long)id);
    if (profile_tx_begin(db, id, err) ||
        insert_rows(db, id, PROFILE_OP_INSERT, ops, n, sizeof *ops, bind_profile_op, err))
        goto err;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    return 0;
err:
    tx_rollback(db);
    return err_prefix(err, "adding %d op samples to profile %lld", n, (long long)id);
}

/* Ends the open transaction of a write that used statements a and b (either
 * may be NULL), releasing them: commits it when ok, else (or when the commit
 * fails) rolls it back. 0 once committed. */
static int tx_end(Db *db, sqlite3_stmt *a, sqlite3_stmt *b, bool ok, Err *err)
{
    stmt_done(db, a);
    stmt_done(db, b);
    if (ok) {
        SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
        return 0;
    }
err:
    tx_rollback(db);
    return -1;
}

int db_profile_put_ops(Db *db, int64_t id, const DbProfileOp *ops, int n, Err *err)
{
    sqlite3_stmt *up = NULL, *in = NULL;
    if (check_batch(ops, n, err))
        return err_prefix(err, "storing op samples of profile %lld", (long long)id);
    if (profile_tx_begin(db, id, err)) goto err;
    /* the same parameters as the INSERT's, so one binding serves both */
    SQL_CHECK(stmt_prepare(db,
        "UPDATE profile_ops SET source = ?6, flops = ?7, bytes = ?8, median_s = ?9,"
        " p10_s = ?10, p90_s = ?11, reps = ?12 WHERE profile_id = ?1 AND kind = ?2"
        " AND phase = ?3 AND shape_json = ?4 AND dtype = ?5", &up));
    SQL_CHECK(stmt_prepare(db, PROFILE_OP_INSERT, &in));
    SQL_CHECK(sqlite3_bind_int64(up, 1, id));
    SQL_CHECK(sqlite3_bind_int64(in, 1, id));
    for (int i = 0; i < n; i++) {
        SQL_CHECK(sqlite3_reset(up));
        if (bind_profile_op(db, up, &ops[i], i, err)) goto err;
        SQL_STEP_DONE(up);
        if (sqlite3_changes(db->h) > 0) continue;
        SQL_CHECK(sqlite3_reset(in));
        if (bind_profile_op(db, in, &ops[i], i, err)) goto err;
        SQL_STEP_DONE(in);
    }
    if (!tx_end(db, up, in, true, err)) return 0;
    up = in = NULL;
err:
    tx_end(db, up, in, false, err);
    return err_prefix(err, "storing %d op samples of profile %lld", n, (long long)id);
}

int db_profile_add_links(Db *db, int64_t id, const DbProfileLink *links, int n, Err *err)
{
    if (check_batch(links, n, err))
        return err_prefix(err, "adding link samples to profile %lld", (long long)id);
    if (profile_tx_begin(db, id, err) ||
        insert_rows(db, id,
            "INSERT INTO profile_links (profile_id, collective, group_size, level, bytes, time_s,"
            " algbw, busbw, iters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            links, n, sizeof *links, bind_profile_link, err))
        goto err;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    return 0;
err:
    tx_rollback(db);
    return err_prefix(err, "adding %d link samples to profile %lld", n, (long long)id);
}

int db_profile_finish(Db *db, int64_t id, int complete, const char *status,
                      const DbProfileFit *fits, int nfits, const char *cluster_json, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (!status) return err_set(err, "finishing profile %lld: status is required", (long long)id);
    if (complete != 0 && complete != 1)
        return err_set(err, "finishing profile %lld: complete is %d; give 0 or 1",
                       (long long)id, complete);
    if (check_batch(fits, nfits, err))
        return err_prefix(err, "finishing profile %lld", (long long)id);
    if (profile_tx_begin(db, id, err) ||
        insert_rows(db, id,
            "INSERT INTO profile_fits (profile_id, collective, group_size, level, alpha_s, beta_s,"
            " rms_rel_err, max_rel_err, n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            fits, nfits, sizeof *fits, bind_profile_fit, err))
        goto err;
    SQL_CHECK(stmt_prepare(db,
        "UPDATE profiles SET finished = " NOW ", complete = ?, status = ?, cluster_json = ?"
        " WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_int(st, 1, complete));
    SQL_CHECK(sqlite3_bind_text(st, 2, status, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, cluster_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int64(st, 4, id));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    return 0;
err:
    stmt_done(db, st);
    tx_rollback(db);
    if (db->rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        err_prefix(err, "two fits have the same collective, group_size and level");
    return err_prefix(err, "finishing profile %lld", (long long)id);
}

/* The rows `select` (with one parameter, the profile id) gives, into *rows.
 * Leaves *rows NULL and *n 0 when rows is NULL (not wanted). */
static int profile_samples(Db *db, int64_t id, const char *select, size_t size,
                           RowReader read, RowFree free_row, void **rows, int *n, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (!rows) return 0;
    *rows = NULL;
    *n = 0;
    SQL_CHECK(stmt_prepare(db, select, &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, id));
    return read_rows(db, st, size, read, free_row, rows, n, err);
err:
    stmt_done(db, st);
    return -1;
}

/* The profile row and its samples are read in one read transaction, so the
 * counts and the arrays agree even while another process adds samples. */
int db_profile_get(Db *db, int64_t id, DbProfile *out, DbProfileOp **ops, int *nops,
                   DbProfileLink **links, int *nlinks, DbProfileFit **fits, int *nfits, Err *err)
{
    sqlite3_stmt *st = NULL;
    void *a = NULL, *o = NULL, *l = NULL, *f = NULL;
    int n = 0, no = 0, nl = 0, nf = 0;
    memset(out, 0, sizeof *out);
    if (ops) { *ops = NULL; *nops = 0; }
    if (links) { *links = NULL; *nlinks = 0; }
    if (fits) { *fits = NULL; *nfits = 0; }
    SQL_CHECK(sqlite3_exec(db->h, "BEGIN", NULL, NULL, NULL));
    SQL_CHECK(stmt_prepare(db, PROFILE_SELECT " WHERE p.id = ?", &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, id));
    if (read_rows(db, st, sizeof *out, read_profile, free_profile_row, &a, &n, err)) goto fail;
    if (n == 0) {
        sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL);
        err_set(err, "no profile with id %lld", (long long)id);
        return 1;
    }
    *out = *(DbProfile *)a;
    free(a);
    if (profile_samples(db, id,
            "SELECT kind, phase, shape_json, dtype, source, flops, bytes, median_s, p10_s,"
            " p90_s, reps FROM profile_ops WHERE profile_id = ?"
            " ORDER BY kind, phase, flops, rowid",
            sizeof **ops, read_profile_op, free_profile_op, ops ? &o : NULL, &no, err) ||
        profile_samples(db, id,
            "SELECT collective, group_size, level, bytes, time_s, algbw, busbw, iters"
            " FROM profile_links WHERE profile_id = ?"
            " ORDER BY collective, level, group_size, bytes, rowid",
            sizeof **links, read_profile_link, free_profile_link, links ? &l : NULL, &nl, err) ||
        profile_samples(db, id,
            "SELECT collective, group_size, level, alpha_s, beta_s, rms_rel_err, max_rel_err, n"
            " FROM profile_fits WHERE profile_id = ? ORDER BY collective, level, group_size",
            sizeof **fits, read_profile_fit, free_profile_fit, fits ? &f : NULL, &nf, err))
        goto fail;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    if (ops) { *ops = o; *nops = no; }
    if (links) { *links = l; *nlinks = nl; }
    if (fits) { *fits = f; *nfits = nf; }
    return 0;
err:
    stmt_done(db, st);
fail:
    tx_rollback(db);
    db_profile_free(out);
    db_profile_samples_free(o, no, l, nl, f, nf);
    return err_prefix(err, "reading profile %lld", (long long)id);
}

int db_profile_list(Db *db, DbProfile **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, PROFILE_SELECT " ORDER BY p.started DESC, p.id DESC",
                       sizeof **rows, read_profile, free_profile_row, "profiles", &a, n, err);
    *rows = a;
    return rc;
}

void db_profile_free(DbProfile *p)
{
    if (!p) return;
    free(p->host);
    free(p->device);
    free(p->backend);
    free(p->started);
    free(p->finished);
    free(p->status);
    free(p->notes);
    free(p->cluster_json);
    free(p->build_json);
    p->host = p->device = p->backend = p->started = p->finished = p->status = NULL;
    p->notes = p->cluster_json = p->build_json = NULL;
}

void db_profile_list_free(DbProfile *rows, int n)
{
    for (int i = 0; i < n; i++) db_profile_free(&rows[i]);
    free(rows);
}

void db_profile_samples_free(DbProfileOp *ops, int nops, DbProfileLink *links, int nlinks,
                             DbProfileFit *fits, int nfits)
{
    for (int i = 0; ops && i < nops; i++) free_profile_op(&ops[i]);
    for (int i = 0; links && i < nlinks; i++) free_profile_link(&links[i]);
    for (int i = 0; fits && i < nfits; i++) free_profile_fit(&fits[i]);
    free(ops);
    free(links);
    free(fits);
}

/* ----------------------------------------------------------------------------
 * Shared by cost models, estimates and validations. Their references to a
 * profile, an estimate or a run are optional: 0 (or "") is stored NULL, so
 * the foreign key holds, and NULL reads back as 0 (or ""). A number that is
 * unknown (NaN: a run that failed has no measured time) is stored NULL, as
 * SQLite does with a bound NaN, and reads back as NaN, never as a plausible 0. */

static int bind_ref(sqlite3_stmt *st, int i, int64_t id)
{
    return id ? sqlite3_bind_int64(st, i, id) : sqlite3_bind_null(st, i);
}

static int bind_ref_text(sqlite3_stmt *st, int i, const char *id)
{
    return id && id[0] ? sqlite3_bind_text(st, i, id, -1, SQLITE_STATIC)
                       : sqlite3_bind_null(st, i);
}

static double col_real(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}

/* Steps st, which gives at most one row, and reads that row into out.
 * Returns 0, 1 when there is no row, -1 on error; finalizes st on every path. */
static int one_row(Db *db, sqlite3_stmt *st, RowReader read, void *out, Err *err)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) read(st, out);
    else if (rc != SQLITE_DONE) sql_fail(db, rc, err, __FILE__, __LINE__);
    stmt_done(db, st);
    return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? 1 : -1;
}

/* The row `select` (ending in "WHERE <key> = ?") gives for the rowid `id`,
 * as get_row does for content ids. 1 when not found. */
static int get_by_rowid(Db *db, const char *noun, int64_t id, const char *select,
                        RowReader read, void *out, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db, select, &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, id));
    int r = one_row(db, st, read, out, err);
    if (r == 1) err_set(err, "no %s with id %lld", noun, (long long)id);
    return r < 0 ? err_prefix(err, "reading %s %lld", noun, (long long)id) : r;
err:
    stmt_done(db, st);
    return err_prefix(err, "reading %s %lld", noun, (long long)id);
}

/* ----------------------------------------------------------------------------
 * Cost models. A list leaves the weights out (they can be megabytes) but
 * still says how many bytes they are. */

#define COSTMODEL_TAIL                                                             \
    " length(weights), heldout_error, metrics_json, device, seed, with_runs, created" \
    " FROM cost_models"
#define COSTMODEL_SELECT "SELECT id, profile_id, kind, weights," COSTMODEL_TAIL
#define COSTMODEL_LIST "SELECT id, profile_id, kind, NULL," COSTMODEL_TAIL

static void read_costmodel(sqlite3_stmt *st, void *out)
{
    DbCostModel *m = out;
    col_id(st, 0, m->id);
    m->profile_id = sqlite3_column_int64(st, 1);
    m->kind = col_str(st, 2);
    const void *w = sqlite3_column_blob(st, 3);
    m->nweights = (size_t)sqlite3_column_int64(st, 4);
    if (w) {
        size_t nb = (size_t)sqlite3_column_bytes(st, 3);
        m->weights = xmalloc(nb);
        memcpy(m->weights, w, nb);
    }
    m->heldout_error = sqlite3_column_type(st, 5) == SQLITE_NULL ? -1
                                                                 : sqlite3_column_double(st, 5);
    m->metrics_json = col_str(st, 6);
    m->device = col_str(st, 7);
    m->seed = sqlite3_column_int64(st, 8);
    m->with_runs = sqlite3_column_int(st, 9);
    m->created = col_str(st, 10);
}

static void free_costmodel_row(void *r) { db_costmodel_free(r); }

/* A held-out error below 0 (unknown) is stored NULL. */
int db_costmodel_put(Db *db, const DbCostModel *m, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(m->id, "cost model", err)) return -1;
    if (!m->kind || !m->weights || m->nweights == 0)
        return err_set(err, "cost model %s: kind and weights are required", m->id);
    db->rc = 0;
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO cost_models (id, profile_id, kind, weights, heldout_error, metrics_json,"
        " device, seed, with_runs, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " coalesce(?, " NOW ")) ON CONFLICT (id) DO NOTHING", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC));
    SQL_CHECK(bind_ref(st, 2, m->profile_id));
    SQL_CHECK(sqlite3_bind_text(st, 3, m->kind, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_blob64(st, 4, m->weights, m->nweights, SQLITE_STATIC));
    SQL_CHECK(m->heldout_error >= 0 ? sqlite3_bind_double(st, 5, m->heldout_error)
                                    : sqlite3_bind_null(st, 5));
    SQL_CHECK(sqlite3_bind_text(st, 6, m->metrics_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 7, m->device, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int64(st, 8, m->seed));
    SQL_CHECK(sqlite3_bind_int(st, 9, m->with_runs != 0));
    SQL_CHECK(sqlite3_bind_text(st, 10, m->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "profile %lld is not stored; store it before its cost models",
                   (long long)m->profile_id);
    return err_prefix(err, "storing cost model %s", m->id);
}

int db_costmodel_get(Db *db, const char *id, DbCostModel *out, Err *err)
{
    char full[17];
    memset(out, 0, sizeof *out);
    return get_row(db, "cost_models", "cost model", id, COSTMODEL_SELECT " WHERE id = ?",
                   read_costmodel, out, full, err);
}

int db_costmodel_latest(Db *db, int64_t profile_id, DbCostModel *out, Err *err)
{
    sqlite3_stmt *st = NULL;
    memset(out, 0, sizeof *out);
    SQL_CHECK(stmt_prepare(db,
        COSTMODEL_SELECT " WHERE ?1 = 0 OR profile_id = ?1 ORDER BY created DESC, rowid DESC"
        " LIMIT 1", &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, profile_id));
    int r = one_row(db, st, read_costmodel, out, err);
    if (r == 1 && profile_id)
        err_set(err, "no cost model trained on profile %lld", (long long)profile_id);
    else if (r == 1)
        err_set(err, "no cost model stored");
    return r < 0 ? err_prefix(err, "finding the newest cost model") : r;
err:
    stmt_done(db, st);
    return err_prefix(err, "finding the newest cost model");
}

int db_costmodel_list(Db *db, DbCostModel **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, COSTMODEL_LIST " ORDER BY created DESC, rowid DESC", sizeof **rows,
                       read_costmodel, free_costmodel_row, "cost models", &a, n, err);
    *rows = a;
    return rc;
}

void db_costmodel_free(DbCostModel *m)
{
    if (!m) return;
    free(m->kind);
    free(m->weights);
    free(m->metrics_json);
    free(m->device);
    free(m->created);
    m->kind = m->metrics_json = m->device = m->created = NULL;
    m->weights = NULL;
}

void db_costmodel_list_free(DbCostModel *rows, int n)
{
    for (int i = 0; i < n; i++) db_costmodel_free(&rows[i]);
    free(rows);
}

/* ----------------------------------------------------------------------------
 * Estimates. Ids are rowids (an estimate is a prediction made at a time,
 * not content). */

#define ESTIMATE_SELECT                                                              \
    "SELECT id, plan_id, cost_model_id, profile_id, step_time_s, peak_mem_bytes,"    \
    " feasible, json, created FROM estimates"

static void read_estimate(sqlite3_stmt *st, void *out)
{
    DbEstimate *e = out;
    e->id = sqlite3_column_int64(st, 0);
    col_id(st, 1, e->plan_id);
    e->cost_model_id = col_str(st, 2);
    e->profile_id = sqlite3_column_int64(st, 3);
    e->step_time_s = sqlite3_column_double(st, 4);
    e->peak_mem_bytes = sqlite3_column_double(st, 5);
    e->feasible = sqlite3_column_int(st, 6);
    e->json = col_str(st, 7);
    e->created = col_str(st, 8);
}

static void free_estimate_row(void *r) { db_estimate_free(r); }

/* id may be NULL when the caller does not need the new id. */
int db_estimate_put(Db *db, const DbEstimate *e, int64_t *id, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(e->plan_id, "plan", err) ||
        (e->cost_model_id && check_id(e->cost_model_id, "cost model", err)))
        return err_prefix(err, "storing an estimate of plan %.16s", e->plan_id);
    if (!e->json)
        return err_set(err, "storing an estimate of plan %s: json is required", e->plan_id);
    if (e->feasible != 0 && e->feasible != 1)
        return err_set(err, "storing an estimate of plan %s: feasible is %d; give 0 or 1",
                       e->plan_id, e->feasible);
    db->rc = 0;
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO estimates (plan_id, cost_model_id, profile_id, step_time_s, peak_mem_bytes,"
        " feasible, json, created) VALUES (?, ?, ?, ?, ?, ?, ?, coalesce(?, " NOW "))", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, e->plan_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, e->cost_model_id, -1, SQLITE_STATIC));
    SQL_CHECK(bind_ref(st, 3, e->profile_id));
    SQL_CHECK(sqlite3_bind_double(st, 4, e->step_time_s));
    SQL_CHECK(sqlite3_bind_double(st, 5, e->peak_mem_bytes));
    SQL_CHECK(sqlite3_bind_int(st, 6, e->feasible));
    SQL_CHECK(sqlite3_bind_text(st, 7, e->json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 8, e->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    if (id) *id = sqlite3_last_insert_rowid(db->h);
    return 0;
err:
    stmt_done(db, st);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "plan %s, cost model %s or profile %lld is not stored; store them "
                   "before the estimate", e->plan_id,
                   e->cost_model_id ? e->cost_model_id : "(none)", (long long)e->profile_id);
    return err_prefix(err, "storing an estimate of plan %s", e->plan_id);
}

int db_estimate_get(Db *db, int64_t id, DbEstimate *out, Err *err)
{
    memset(out, 0, sizeof *out);
    return get_by_rowid(db, "estimate", id, ESTIMATE_SELECT " WHERE id = ?", read_estimate,
                        out, err);
}

int db_estimate_list(Db *db, const char *plan_id, DbEstimate **rows, int *n, Err *err)
{
    sqlite3_stmt *st = NULL;
    void *a = NULL;
    *rows = NULL;
    *n = 0;
    if (!plan_id) return err_set(err, "listing estimates: no plan id given");
    if (check_id(plan_id, "plan", err)) goto fail;
    SQL_CHECK(stmt_prepare(db,
        ESTIMATE_SELECT " WHERE plan_id = ? ORDER BY created DESC, id DESC", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, plan_id, -1, SQLITE_STATIC));
    if (read_rows(db, st, sizeof **rows, read_estimate, free_estimate_row, &a, n, err))
        goto fail;
    *rows = a;
    return 0;
err:
    stmt_done(db, st);
fail:
    return err_prefix(err, "listing the estimates of plan %.16s", plan_id);
}

void db_estimate_free(DbEstimate *e)
{
    if (!e) return;
    free(e->cost_model_id);
    free(e->json);
    free(e->created);
    e->cost_model_id = e->json = e->created = NULL;
}

void db_estimate_list_free(DbEstimate *rows, int n)
{
    for (int i = 0; i < n; i++) db_estimate_free(&rows[i]);
    free(rows);
}

/* ----------------------------------------------------------------------------
 * Validations. A validation's rows are numbered by their place in the array
 * (seq) and come back in that order. */

#define VALIDATION_SELECT                                                               \
    "SELECT v.id, v.suite, v.np, v.steps, v.profile_id, v.cost_model_id, v.mape_time,"  \
    " v.mape_mem, v.kendall_tau,"                                                       \
    " (SELECT count(*) FROM validation_plans p WHERE p.validation_id = v.id), v.created" \
    " FROM validations v"

static void read_validation(sqlite3_stmt *st, void *out)
{
    DbValidation *v = out;
    v->id = sqlite3_column_int64(st, 0);
    v->suite = col_str(st, 1);
    v->np = sqlite3_column_int(st, 2);
    v->steps = sqlite3_column_int(st, 3);
    v->profile_id = sqlite3_column_int64(st, 4);
    v->cost_model_id = col_str(st, 5);
    v->mape_time = col_real(st, 6);
    v->mape_mem = col_real(st, 7);
    v->kendall_tau = col_real(st, 8);
    v->nplans = sqlite3_column_int(st, 9);
    v->created = col_str(st, 10);
}

static void read_validation_plan(sqlite3_stmt *st, void *out)
{
    DbValidationPlan *p = out;
    p->name = col_str(st, 0);
    col_id(st, 1, p->plan_id);
    p->estimate_id = sqlite3_column_int64(st, 2);
    col_id(st, 3, p->run_id);
    p->predicted_s = col_real(st, 4);
    p->measured_s = col_real(st, 5);
    p->predicted_mem = col_real(st, 6);
    p->measured_mem = col_real(st, 7);
}

static void free_validation_row(void *r) { db_validation_free(r); }

static void free_validation_plan_row(void *r)
{
    DbValidationPlan *p = r;
    free(p->name);
    p->name = NULL;
}

/* Checks what SQL would not: required strings and the form of the ids. */
static int check_validation(const DbValidation *v, const DbValidationPlan *rows, int n,
                            Err *err)
{
    if (!v->suite) return err_set(err, "suite is required");
    if (v->cost_model_id && check_id(v->cost_model_id, "cost model", err)) return -1;
    if (check_batch(rows, n, err)) return -1;
    for (int i = 0; i < n; i++) {
        const DbValidationPlan *r = &rows[i];
        if (!r->name) return err_set(err, "row %d: name is required", i);
        if (check_id(r->plan_id, "plan", err) || (r->run_id[0] && check_id(r->run_id, "run", err)))
            return err_prefix(err, "row %d (%s)", i, r->name);
    }
    return 0;
}

/* id may be NULL when the caller does not need the new id. */
int db_validation_put(Db *db, const DbValidation *v, const DbValidationPlan *rows, int n,
                      int64_t *id, Err *err)
{
    sqlite3_stmt *st = NULL;
    int i = -1;                   /* the row being stored; -1: the validation itself */
    if (check_validation(v, rows, n, err))
        return v->suite ? err_prefix(err, "storing a validation of suite '%s'", v->suite)
                        : err_prefix(err, "storing a validation");
    db->rc = 0;
    SQL_CHECK(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO validations (suite, np, steps, profile_id, cost_model_id, mape_time,"
        " mape_mem, kendall_tau, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, coalesce(?, " NOW "))", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, v->suite, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 2, v->np));
    SQL_CHECK(sqlite3_bind_int(st, 3, v->steps));
    SQL_CHECK(bind_ref(st, 4, v->profile_id));
    SQL_CHECK(sqlite3_bind_text(st, 5, v->cost_model_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_double(st, 6, v->mape_time));
    SQL_CHECK(sqlite3_bind_double(st, 7, v->mape_mem));
    SQL_CHECK(sqlite3_bind_double(st, 8, v->kendall_tau));
    SQL_CHECK(sqlite3_bind_text(st, 9, v->created, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    st = NULL;
    int64_t vid = sqlite3_last_insert_rowid(db->h);

    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO validation_plans (validation_id, seq, name, plan_id, estimate_id, run_id,"
        " predicted_s, measured_s, predicted_mem, measured_mem)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &st));
    for (i = 0; i < n; i++) {
        const DbValidationPlan *r = &rows[i];
        SQL_CHECK(sqlite3_reset(st));
        SQL_CHECK(sqlite3_bind_int64(st, 1, vid));
        SQL_CHECK(sqlite3_bind_int(st, 2, i));
        SQL_CHECK(sqlite3_bind_text(st, 3, r->name, -1, SQLITE_STATIC));
        SQL_CHECK(sqlite3_bind_text(st, 4, r->plan_id, -1, SQLITE_STATIC));
        SQL_CHECK(bind_ref(st, 5, r->estimate_id));
        SQL_CHECK(bind_ref_text(st, 6, r->run_id));
        SQL_CHECK(sqlite3_bind_double(st, 7, r->predicted_s));
        SQL_CHECK(sqlite3_bind_double(st, 8, r->measured_s));
        SQL_CHECK(sqlite3_bind_double(st, 9, r->predicted_mem));
        SQL_CHECK(sqlite3_bind_double(st, 10, r->measured_mem));
        SQL_STEP_DONE(st);
    }
    stmt_done(db, st);
    st = NULL;
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    if (id) *id = vid;
    return 0;
err:
    stmt_done(db, st);
    tx_rollback(db);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY && i < 0)
        err_prefix(err, "profile %lld or cost model %s is not stored; store them before the "
                   "validation", (long long)v->profile_id,
                   v->cost_model_id ? v->cost_model_id : "(none)");
    else if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "row %d (%s): plan %s, estimate %lld or run %s is not stored; store "
                   "them before the validation", i, rows[i].name, rows[i].plan_id,
                   (long long)rows[i].estimate_id, rows[i].run_id[0] ? rows[i].run_id : "(none)");
    return err_prefix(err, "storing a validation of suite '%s'", v->suite);
}

/* The validation and its rows are read in one read transaction, so nplans
 * and the array agree. */
int db_validation_get(Db *db, int64_t id, DbValidation *out, DbValidationPlan **rows, int *n,
                      Err *err)
{
    sqlite3_stmt *st = NULL;
    void *a = NULL;
    int cnt = 0;
    memset(out, 0, sizeof *out);
    if (rows) {
        *rows = NULL;
        *n = 0;
    }
    SQL_CHECK(sqlite3_exec(db->h, "BEGIN", NULL, NULL, NULL));
    SQL_CHECK(stmt_prepare(db, VALIDATION_SELECT " WHERE v.id = ?", &st));
    SQL_CHECK(sqlite3_bind_int64(st, 1, id));
    int r = one_row(db, st, read_validation, out, err);
    st = NULL;
    if (r < 0) goto fail;
    if (r == 1) {
        sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL);
        err_set(err, "no validation with id %lld", (long long)id);
        return 1;
    }
    if (rows) {
        SQL_CHECK(stmt_prepare(db,
            "SELECT name, plan_id, estimate_id, run_id, predicted_s, measured_s, predicted_mem,"
            " measured_mem FROM validation_plans WHERE validation_id = ? ORDER BY seq", &st));
        SQL_CHECK(sqlite3_bind_int64(st, 1, id));
        int rc = read_rows(db, st, sizeof **rows, read_validation_plan, free_validation_plan_row,
                           &a, &cnt, err);
        st = NULL;                /* read_rows finalized it */
        if (rc) goto fail;
    }
    SQL_CHECK(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
    if (rows) {
        *rows = a;
        *n = cnt;
    }
    return 0;
err:
    stmt_done(db, st);
fail:
    tx_rollback(db);
    db_validation_free(out);
    db_validation_plans_free(a, cnt);
    return err_prefix(err, "reading validation %lld", (long long)id);
}

int db_validation_list(Db *db, DbValidation **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, VALIDATION_SELECT " ORDER BY v.created DESC, v.id DESC",
                       sizeof **rows, read_validation, free_validation_row, "validations",
                       &a, n, err);
    *rows = a;
    return rc;
}

void db_validation_free(DbValidation *v)
{
    if (!v) return;
    free(v->suite);
    free(v->cost_model_id);
    free(v->created);
    v->suite = v->cost_model_id = v->created = NULL;
}

void db_validation_list_free(DbValidation *rows, int n)
{
    for (int i = 0; i < n; i++) db_validation_free(&rows[i]);
    free(rows);
}

void db_validation_plans_free(DbValidationPlan *rows, int n)
{
    for (int i = 0; rows && i < n; i++) free_validation_plan_row(&rows[i]);
    free(rows);
}

/* ----------------------------------------------------------------------------
 * Searches and their events */

int db_search_set_policy(Db *db, const char *id, const uint8_t *blob, size_t n, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db, "UPDATE searches SET policy = ? WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_blob(st, 1, blob, (int)n, SQLITE_TRANSIENT));
    SQL_CHECK(sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    if (sqlite3_changes(db->h) != 1) return err_set(err, "no search with id '%s'", id);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "storing the policy of search %s", id);
}

int db_search_policy(Db *db, const char *id, uint8_t **blob, size_t *n, Err *err)
{
    sqlite3_stmt *st = NULL;
    char full[17];
    *blob = NULL;
    *n = 0;
    int r = resolve_id(db, "searches", "search", id, full, err);
    if (r) return r;
    SQL_CHECK(stmt_prepare(db, "SELECT policy FROM searches WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, full, -1, SQLITE_STATIC));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    const void *b = sqlite3_column_blob(st, 0);
    int len = sqlite3_column_bytes(st, 0);
    if (!b || len <= 0) {
        stmt_done(db, st);
        err_set(err, "search %s kept no policy (only an rl search trains one)", full);
        return 1;
    }
    *blob = xmalloc((size_t)len);
    memcpy(*blob, b, (size_t)len);
    *n = (size_t)len;
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "reading the policy of search %s", id);
}

int db_search_put(Db *db, const DbSearch *x, Err *err)
{
    sqlite3_stmt *st = NULL;
    if (check_id(x->id, "search", err)) return err_prefix(err, "storing search");
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO searches (id, model_id, cluster_id, method, status, budget_json, devices,"
        " seed, options_json, host, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, x->id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, x->model_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, x->cluster_id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 4, x->method, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 5, x->status, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 6, x->budget_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 7, x->devices));
    SQL_CHECK(sqlite3_bind_int64(st, 8, x->seed));
    SQL_CHECK(sqlite3_bind_text(st, 9, x->options_json, -1, SQLITE_STATIC));
    /* the process storing it runs it */
    char host[256];
    this_host(host, sizeof host);
    SQL_CHECK(sqlite3_bind_text(st, 10, host, -1, SQLITE_TRANSIENT));
    SQL_CHECK(sqlite3_bind_int64(st, 11, getpid()));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    if (db->rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        err_prefix(err, "model %s or cluster %s is not stored", x->model_id, x->cluster_id);
    return err_prefix(err, "storing search %s", x->id);
}

int db_search_event(Db *db, const char *id, int seq, const char *json, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db,
        "INSERT INTO search_events (search_id, seq, json) VALUES (?, ?, ?)", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 2, seq));
    SQL_CHECK(sqlite3_bind_text(st, 3, json, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "storing event %d of search %s", seq, id);
}

int db_search_finish(Db *db, const char *id, const char *status, const char *best_plan_id,
                     const char *result_json, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db,
        "UPDATE searches SET status = ?, best_plan_id = COALESCE(?, best_plan_id),"
        " result_json = COALESCE(?, result_json), finished = " NOW " WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, best_plan_id && best_plan_id[0] ? best_plan_id : NULL, -1,
                                SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 3, result_json, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    if (sqlite3_changes(db->h) != 1) return err_set(err, "no search with id '%s'", id);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "finishing search %s", id);
}

int db_search_set_status(Db *db, const char *id, const char *status, Err *err)
{
    sqlite3_stmt *st = NULL;
    SQL_CHECK(stmt_prepare(db, "UPDATE searches SET status = ? WHERE id = ?", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    if (sqlite3_changes(db->h) != 1) return err_set(err, "no search with id '%s'", id);
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "setting the status of search %s", id);
}

int db_search_move_status(Db *db, const char *id, const char *from, const char *to, Err *err)
{
    sqlite3_stmt *st = NULL;
    /* the process that moves it (a server resuming it) runs it from now on */
    char host[256];
    this_host(host, sizeof host);
    SQL_CHECK(stmt_prepare(db, "UPDATE searches SET status = ?, host = ?, pid = ?"
                           " WHERE id = ? AND status = ?", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, to, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 2, host, -1, SQLITE_TRANSIENT));
    SQL_CHECK(sqlite3_bind_int64(st, 3, getpid()));
    SQL_CHECK(sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_text(st, 5, from, -1, SQLITE_STATIC));
    SQL_STEP_DONE(st);
    stmt_done(db, st);
    return sqlite3_changes(db->h) == 1 ? 0 : 1;
err:
    stmt_done(db, st);
    return err_prefix(err, "setting the status of search %s", id);
}

/* Whether process pid has ended: no such process, or a zombie (ended, not
 * yet reaped: its parent was killed with it, and a container's first
 * process may never reap it). A pid reused since reads as alive. */
static bool process_ended(int64_t pid)
{
    if (pid <= 0 || pid > INT32_MAX) return false;
    if (kill((pid_t)pid, 0) != 0) return errno == ESRCH;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = 0;
    /* "pid (comm) S ...": the state follows the last ')' */
    const char *c = strrchr(buf, ')');
    return c && c[1] == ' ' && (c[2] == 'Z' || c[2] == 'X');
}

/* Whose unfinished rows interrupt_gone takes: those of a process that has
 * ended on this host (a row naming no process is left); the same, and rows
 * naming this process or none (for a caller that runs none itself, so that
 * its pid there is an earlier process's); or this process's own. */
typedef enum { GONE_ENDED, GONE_ENDED_SELF_UNSAID, GONE_SELF } GoneRule;

static bool row_gone(GoneRule rule, const char *row_host, int64_t pid, const char *host)
{
    bool here = row_host && !strcmp(row_host, host), mine = here && pid == getpid();
    switch (rule) {
    case GONE_SELF: return mine;
    case GONE_ENDED_SELF_UNSAID:
        if (!row_host || pid <= 0) return true;
        return mine || (here && process_ended(pid));
    default: return here && pid > 0 && process_ended(pid);
    }
}

/* Runs `update` (its one parameter the row's id) on each row `select`
 * lists as (id, host, pid) that the rule takes, in one transaction; *n:
 * how many it changed. */
static int interrupt_gone(Db *db, const char *select, const char *update, GoneRule rule, int *n,
                          Err *err)
{
    sqlite3_stmt *st = NULL, *up = NULL;
    char host[256];
    *n = 0;
    this_host(host, sizeof host);
    db->rc = 0;
    SQL_CHECK(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
    SQL_CHECK(stmt_prepare(db, select, &st));
    SQL_CHECK(stmt_prepare(db, update, &up));
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!row_gone(rule, (const char *)sqlite3_column_text(st, 1),
                      sqlite3_column_int64(st, 2), host))
            continue;
        SQL_CHECK(sqlite3_reset(up));
        SQL_CHECK(sqlite3_bind_value(up, 1, sqlite3_column_value(st, 0)));
        SQL_STEP_DONE(up);
        *n += sqlite3_changes(db->h);
    }
    if (rc != SQLITE_DONE) {
        sql_fail(db, rc, err, __FILE__, __LINE__);
        goto err;
    }
    if (!tx_end(db, st, up, true, err)) return 0;
    st = up = NULL;
err:
    tx_end(db, st, up, false, err);
    *n = 0;
    return -1;
}

int db_profile_interrupt_dead(Db *db, int *n, Err *err)
{
    if (interrupt_gone(db, "SELECT id, host, pid FROM profiles WHERE finished IS NULL",
                       "UPDATE profiles SET status = 'interrupted', complete = 0, finished = " NOW
                       " WHERE id = ? AND finished IS NULL", GONE_ENDED, n, err))
        return err_prefix(err, "marking profiles whose process has ended interrupted");
    return 0;
}

int db_run_interrupt(Db *db, bool own, int *n, Err *err)
{
    if (interrupt_gone(db, "SELECT id, host, pid FROM runs WHERE status IN ('queued', 'running')",
                       "UPDATE runs SET status = 'interrupted', finished = " NOW ","
                       " error = 'the server stopped before the run ended'"
                       " WHERE id = ? AND status IN ('queued', 'running')",
                       own ? GONE_SELF : GONE_ENDED_SELF_UNSAID, n, err))
        return err_prefix(err, "marking unfinished runs interrupted");
    return 0;
}

int db_search_interrupt(Db *db, bool own, int *n, Err *err)
{
    if (interrupt_gone(db, "SELECT id, host, pid FROM searches"
                       " WHERE status IN ('queued', 'running')",
                       "UPDATE searches SET status = 'interrupted', finished = " NOW
                       " WHERE id = ? AND status IN ('queued', 'running')",
                       own ? GONE_SELF : GONE_ENDED_SELF_UNSAID, n, err))
        return err_prefix(err, "marking searches whose process has ended interrupted");
    return 0;
}

#define SEARCH_SELECT                                                                    \
    "SELECT x.id, x.model_id, x.cluster_id, x.method, x.status, x.budget_json,"          \
    " x.best_plan_id, x.result_json, x.devices, x.seed, x.created, x.finished, m.name,"  \
    " c.name, (SELECT count(*) FROM search_events e WHERE e.search_id = x.id),"          \
    " x.options_json"                                                                    \
    " FROM searches x JOIN models m ON m.id = x.model_id JOIN clusters c ON c.id = x.cluster_id"

static void read_search(sqlite3_stmt *st, void *out)
{
    DbSearch *x = out;
    memset(x, 0, sizeof *x);
    col_id(st, 0, x->id);
    col_id(st, 1, x->model_id);
    col_id(st, 2, x->cluster_id);
    x->method = col_str(st, 3);
    x->status = col_str(st, 4);
    x->budget_json = col_str(st, 5);
    col_id(st, 6, x->best_plan_id);
    x->result_json = col_str(st, 7);
    x->devices = sqlite3_column_int(st, 8);
    x->seed = sqlite3_column_int64(st, 9);
    x->created = col_str(st, 10);
    x->finished = col_str(st, 11);
    x->model_name = col_str(st, 12);
    x->cluster_name = col_str(st, 13);
    x->nevents = sqlite3_column_int(st, 14);
    x->options_json = col_str(st, 15);
}

static void free_search_row(void *r) { db_search_free(r); }

int db_search_get(Db *db, const char *id, DbSearch *out, Err *err)
{
    char full[17];
    memset(out, 0, sizeof *out);
    return get_row(db, "searches", "search", id, SEARCH_SELECT " WHERE x.id = ?", read_search,
                   out, full, err);
}

int db_search_of_plan(Db *db, const char *plan_id, DbSearch *out, Err *err)
{
    sqlite3_stmt *st = NULL;
    memset(out, 0, sizeof *out);
    void *rows = NULL;
    int n = 0;
    SQL_CHECK(stmt_prepare(db, SEARCH_SELECT " WHERE x.best_plan_id = ?"
                                 " ORDER BY x.created DESC, x.rowid DESC LIMIT 1", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, plan_id, -1, SQLITE_STATIC));
    if (read_rows(db, st, sizeof *out, read_search, free_search_row, &rows, &n, err))
        return err_prefix(err, "the search of plan %s", plan_id);
    if (n) memcpy(out, rows, sizeof *out);
    free(rows);
    return n ? 0 : 1;
err:
    stmt_done(db, st);
    return err_prefix(err, "the search of plan %s", plan_id);
}

int db_search_list(Db *db, DbSearch **rows, int *n, Err *err)
{
    void *a;
    int rc = list_rows(db, SEARCH_SELECT " ORDER BY x.created DESC, x.rowid DESC", sizeof **rows,
                       read_search, free_search_row, "searches", &a, n, err);
    *rows = a;
    return rc;
}

static void read_event(sqlite3_stmt *st, void *out) { *(char **)out = col_str(st, 0); }
static void free_event_row(void *r) { free(*(char **)r); }

int db_search_events(Db *db, const char *id, int after, char ***json, int *n, Err *err)
{
    sqlite3_stmt *st = NULL;
    void *a = NULL;
    *json = NULL;
    *n = 0;
    SQL_CHECK(stmt_prepare(db,
        "SELECT json FROM search_events WHERE search_id = ? AND seq > ? ORDER BY seq", &st));
    SQL_CHECK(sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC));
    SQL_CHECK(sqlite3_bind_int(st, 2, after));
    if (read_rows(db, st, sizeof(char *), read_event, free_event_row, &a, n, err))
        return err_prefix(err, "reading events of search %s", id);
    *json = a;
    return 0;
err:
    stmt_done(db, st);
    return err_prefix(err, "reading events of search %s", id);
}

void db_search_free(DbSearch *x)
{
    if (!x) return;
    free(x->method);
    free(x->status);
    free(x->budget_json);
    free(x->result_json);
    free(x->options_json);
    free(x->created);
    free(x->finished);
    free(x->model_name);
    free(x->cluster_name);
    x->method = x->status = x->budget_json = x->result_json = x->options_json = NULL;
    x->created = x->finished = x->model_name = x->cluster_name = NULL;
}

void db_search_list_free(DbSearch *rows, int n)
{
    for (int i = 0; i < n; i++) db_search_free(&rows[i]);
    free(rows);
}

void db_search_events_free(char **json, int n)
{
    for (int i = 0; json && i < n; i++) free(json[i]);
    free(json);
}
