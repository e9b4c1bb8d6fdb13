/*
 * test_db.c — db/: opening and migrating, rows in and out, id prefixes,
 * transactions that store all or nothing, the files db_open refuses,
 * profiles (opened, filled in batches, finished once), and cost models,
 * estimates, run steps' memory and validations.
 *
 * Each test gets its own temporary directory (mkdtemp) holding strata.db;
 * a few checks look at the file through a second, raw SQLite connection.
 */
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "db/db.h"
#include "executor/build.h"

/* The number of migrations in db.c; bump it with each new migration. */
#define LATEST 10

/* Model, cluster and strategy ids used throughout. */
#define M1 "1111111111111111"
#define M2 "2222222222222222"
#define C1 "c1c1c1c1c1c1c1c1"
#define S1 "5555555555555555"
#define S2 "5555555555555556"

typedef struct {
    char dir[256];
    char path[300];
    Db *db;
    Err err;
} Fx;

/* ----------------------------------------------------------------------------
 * Fixture and helpers */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    chmod(p, 0700);               /* a test may have made a directory read-only */
    return remove(p);
}

static int setup(void **state)
{
    Fx *fx = calloc(1, sizeof *fx);
    if (!fx) return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(fx->dir, sizeof fx->dir, "%s/strata-test-db-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof fx->path, "%s/strata.db", fx->dir);
    *state = fx;
    return 0;
}

/* setup, then db_open on the fresh path. */
static int setup_open(void **state)
{
    if (setup(state)) return -1;
    Fx *fx = *state;
    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) {
        fprintf(stderr, "db_open: %s\n", fx->err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    Fx *fx = *state;
    db_close(fx->db);
    chmod(fx->dir, 0700);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

static sqlite3 *raw_open(const char *path)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "PRAGMA foreign_keys = ON", NULL, NULL, NULL), SQLITE_OK);
    return h;
}

static void raw_exec(sqlite3 *h, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(h, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) fprintf(stderr, "%s: %s\n", sql, msg);
    sqlite3_free(msg);
    assert_int_equal(rc, SQLITE_OK);
}

/* The first column of the first row of sql, as an integer. */
static int64_t raw_int(sqlite3 *h, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static int64_t count_rows(const char *path, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    sqlite3 *h = raw_open(path);
    int64_t n = raw_int(h, sql);
    sqlite3_close(h);
    return n;
}

static DbModel model(const char *id, char *name, char *created)
{
    DbModel m = {.name = name, .json = "{\"model\":\"x\"}", .params = 1.3e9,
                 .train_flops = 7.5e21, .created = created};
    snprintf(m.id, sizeof m.id, "%s", id);
    return m;
}

static DbCluster cluster(const char *id, char *name)
{
    DbCluster c = {.name = name, .json = "{\"devices\":8}", .ndevices = 8};
    snprintf(c.id, sizeof c.id, "%s", id);
    return c;
}

static DbPlan plan(const char *id, const char *model_id, const char *strategy_id, char *created)
{
    DbPlan p = {.strategy_json = "{\"mesh\":{\"dp\":8}}", .summary_json = "{\"step_s\":0.25}",
                .world = 8, .created = created};
    snprintf(p.id, sizeof p.id, "%s", id);
    snprintf(p.model_id, sizeof p.model_id, "%s", model_id);
    snprintf(p.cluster_id, sizeof p.cluster_id, "%s", C1);
    snprintf(p.strategy_id, sizeof p.strategy_id, "%s", strategy_id);
    return p;
}

/* Stores model M1 "gpt" and cluster C1 "dgx", which plans refer to. */
static void put_parents(Fx *fx)
{
    DbModel m = model(M1, "gpt", NULL);
    DbCluster c = cluster(C1, "dgx");
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), 0);
    assert_int_equal(db_cluster_put(fx->db, &c, &fx->err), 0);
}

#define assert_contains(hay, needle)                                          \
    do {                                                                      \
        if (!strstr((hay), (needle)))                                         \
            fail_msg("'%s' does not contain '%s'", (hay), (needle));          \
    } while (0)

/* ----------------------------------------------------------------------------
 * Opening and migrating */

static void test_open_new_file(void **state)
{
    Fx *fx = *state;
    assert_int_equal(db_schema_version(fx->db), LATEST);
    assert_int_equal(access(fx->path, F_OK), 0);

    sqlite3 *h = raw_open(fx->path);
    assert_int_equal(raw_int(h, "PRAGMA user_version"), LATEST);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);

    const char *tables[] = {"models", "clusters", "strategies", "plans", "profiles",
                            "profile_ops", "profile_links", "cost_models", "searches",
                            "search_events", "runs", "run_steps", "profile_fits",
                            "estimates", "validations", "validation_plans"};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '%s'",
                 tables[i]);
        if (raw_int(h, sql) != 1) fail_msg("table %s is missing", tables[i]);
    }
    assert_int_equal(raw_int(h, "SELECT count(*) FROM pragma_foreign_key_list('plans')"), 3);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM sqlite_schema WHERE type = 'index'"
                                " AND name = 'plans_model'"), 1);
    sqlite3_close(h);
}

/* Foreign keys are per connection: the only proof db_open turned them on is
 * that its connection refuses a dangling reference. */
static void test_foreign_keys_enforced(void **state)
{
    Fx *fx = *state;
    DbPlan p = plan("a000000000000001", M1, S1, NULL);
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), -1);
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    assert_contains(fx->err.msg, "store them before the plan");
    /* what the failure means, on which store, before SQLite's own words */
    assert_contains(fx->err.msg, fx->path);
    assert_contains(fx->err.msg, "the store refused a row (SQLite: ");
}

static void test_reopen_keeps_data(void **state)
{
    Fx *fx = *state;
    put_parents(fx);
    DbPlan p = plan("a000000000000001", M1, S1, NULL);
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), 0);
    db_close(fx->db);

    fx->db = db_open(fx->path, &fx->err);
    assert_non_null(fx->db);
    assert_int_equal(db_schema_version(fx->db), LATEST);
    DbModel m;
    assert_int_equal(db_model_get(fx->db, M1, &m, &fx->err), 0);
    assert_string_equal(m.name, "gpt");
    db_model_free(&m);
    DbPlan q;
    assert_int_equal(db_plan_get(fx->db, "a000000000000001", &q, &fx->err), 0);
    assert_string_equal(q.strategy_json, p.strategy_json);
    db_plan_free(&q);
}

static void test_two_handles_share_the_file(void **state)
{
    Fx *fx = *state;
    Db *other = db_open(fx->path, &fx->err);
    assert_non_null(other);
    DbModel m = model(M2, "bert", NULL);
    assert_int_equal(db_model_put(other, &m, &fx->err), 0);
    DbModel got;
    assert_int_equal(db_model_get(fx->db, M2, &got, &fx->err), 0);
    assert_string_equal(got.name, "bert");
    db_model_free(&got);
    db_close(other);
}

static void test_memory_database(void **state)
{
    (void)state;
    Err err;
    Db *db = db_open(":memory:", &err);
    if (!db) fail_msg("%s", err.msg);
    assert_int_equal(db_schema_version(db), LATEST);
    DbModel m = model(M1, "gpt", NULL);
    assert_int_equal(db_model_put(db, &m, &err), 0);
    db_close(db);
    db_close(NULL);
}

static void test_newer_schema_rejected(void **state)
{
    Fx *fx = *state;
    db_close(fx->db);
    fx->db = NULL;
    sqlite3 *h = raw_open(fx->path);
    raw_exec(h, "PRAGMA user_version = 99");
    sqlite3_close(h);

    assert_null(db_open(fx->path, &fx->err));
    char want[512];
    snprintf(want, sizeof want,
             "%s: schema version 99 is newer than this strata (knows %d); upgrade strata",
             fx->path, LATEST);
    assert_string_equal(fx->err.msg, want);
    /* And it was left as it was. */
    h = raw_open(fx->path);
    assert_int_equal(raw_int(h, "PRAGMA user_version"), 99);
    sqlite3_close(h);
}

static void test_not_a_database_rejected(void **state)
{
    Fx *fx = *state;
    FILE *f = fopen(fx->path, "w");
    assert_non_null(f);
    for (int i = 0; i < 100; i++) fputs("this is a text file, not a database\n", f);
    fclose(f);

    assert_null(db_open(fx->path, &fx->err));
    assert_contains(fx->err.msg, fx->path);
    assert_contains(fx->err.msg, "is not a SQLite database");
    /* The file is left as it was. */
    struct stat sb;
    assert_int_equal(stat(fx->path, &sb), 0);
    assert_int_equal(sb.st_size, 100 * 36);
}

/* A command that only reads does not make a strata store of a file that
 * is not one: missing or empty, it is an error and stays as it was; a
 * command that writes makes it one. */
static void test_open_existing_leaves_files_alone(void **state)
{
    Fx *fx = *state;
    char path[400];
    snprintf(path, sizeof path, "%s/other.db", fx->dir);
    assert_null(db_open_existing(path, &fx->err));
    assert_contains(fx->err.msg, "no strata database here");
    assert_int_not_equal(access(path, F_OK), 0);

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    assert_null(db_open_existing(path, &fx->err));
    assert_contains(fx->err.msg, path);
    assert_contains(fx->err.msg, "the file is empty");
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, 0);

    Db *db = db_open(path, &fx->err);
    assert_non_null(db);
    db_close(db);
    assert_non_null(db = db_open_existing(path, &fx->err));
    assert_int_equal(db_schema_version(db), LATEST);
    db_close(db);
}

static void test_unopenable_paths_rejected(void **state)
{
    Fx *fx = *state;
    char path[400];

    snprintf(path, sizeof path, "%s/missing/strata.db", fx->dir);
    assert_null(db_open(path, &fx->err));
    assert_contains(fx->err.msg, path);
    assert_contains(fx->err.msg, "is not there");

    char file[350];
    snprintf(file, sizeof file, "%s/plain", fx->dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/strata.db", file);
    assert_null(db_open(path, &fx->err));
    assert_contains(fx->err.msg, path);
    assert_contains(fx->err.msg, "is not a directory");

    assert_null(db_open(fx->dir, &fx->err));
    assert_contains(fx->err.msg, fx->dir);
    assert_contains(fx->err.msg, "is a directory");

    /* root writes anywhere, so a read-only directory only stops other users. */
    if (geteuid() == 0) {
        fprintf(stderr, "[  SKIP    ] read-only directory case: running as root\n");
        return;
    }
    char ro[350];
    snprintf(ro, sizeof ro, "%s/ro", fx->dir);
    assert_int_equal(mkdir(ro, 0500), 0);
    snprintf(path, sizeof path, "%s/strata.db", ro);
    assert_null(db_open(path, &fx->err));
    assert_contains(fx->err.msg, path);
    assert_contains(fx->err.msg, "not writable");
}

/* ----------------------------------------------------------------------------
 * Rows */

static void test_model_put_get_list(void **state)
{
    Fx *fx = *state;
    DbModel a = model(M1, "gpt", NULL);
    DbModel b = model(M2, "bert", NULL);
    b.params = 3.4e8;
    assert_int_equal(db_model_put(fx->db, &a, &fx->err), 0);
    assert_int_equal(db_model_put(fx->db, &b, &fx->err), 0);

    DbModel got;
    assert_int_equal(db_model_get(fx->db, M1, &got, &fx->err), 0);
    assert_string_equal(got.id, M1);
    assert_string_equal(got.name, "gpt");
    assert_string_equal(got.json, a.json);
    assert_true(got.params == 1.3e9);
    assert_true(got.train_flops == 7.5e21);
    /* Default timestamp: UTC ISO 8601 with milliseconds, 2024-01-02T03:04:05.678Z */
    assert_non_null(got.created);
    assert_int_equal(strlen(got.created), 24);
    assert_int_equal(got.created[10], 'T');
    assert_int_equal(got.created[19], '.');
    assert_int_equal(got.created[23], 'Z');
    db_model_free(&got);
    db_model_free(&got);          /* a freed row frees again harmlessly */
    db_model_free(NULL);

    DbModel *rows;
    int n;
    assert_int_equal(db_model_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].id, M2);      /* newest first */
    assert_string_equal(rows[1].id, M1);
    assert_true(rows[0].params == 3.4e8);
    db_model_list_free(rows, n);
}

static void test_list_empty(void **state)
{
    Fx *fx = *state;
    DbModel *m = (DbModel *)1;
    DbPlan *p = (DbPlan *)1;
    int n = -1;
    assert_int_equal(db_model_list(fx->db, &m, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    db_model_list_free(m, n);
    n = -1;
    assert_int_equal(db_plan_list(fx->db, &p, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    db_plan_list_free(p, n);
}

static void test_list_newest_first(void **state)
{
    Fx *fx = *state;
    const char *ids[] = {"3000000000000001", "3000000000000002", "3000000000000003",
                         "3000000000000004"};
    /* created out of insertion order; 2 and 3 tie, so rowid breaks it */
    char *created[] = {"2024-05-01T00:00:00.000Z", "2023-01-01T00:00:00.000Z",
                       "2023-01-01T00:00:00.000Z", "2022-01-01T00:00:00.000Z"};
    for (int i = 0; i < 4; i++) {
        DbModel m = model(ids[i], "m", created[i]);
        assert_int_equal(db_model_put(fx->db, &m, &fx->err), 0);
    }
    DbModel *rows;
    int n;
    assert_int_equal(db_model_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 4);
    assert_string_equal(rows[0].id, ids[0]);
    assert_string_equal(rows[1].id, ids[2]);
    assert_string_equal(rows[2].id, ids[1]);
    assert_string_equal(rows[3].id, ids[3]);
    assert_string_equal(rows[3].created, created[3]);
    db_model_list_free(rows, n);
}

static void test_put_is_idempotent(void **state)
{
    Fx *fx = *state;
    DbModel m = model(M1, "gpt", NULL);
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), 0);
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), 0);
    /* Same id, other content: the stored row stays as it was. */
    DbModel other = model(M1, "renamed", NULL);
    assert_int_equal(db_model_put(fx->db, &other, &fx->err), 0);
    DbModel got;
    assert_int_equal(db_model_get(fx->db, M1, &got, &fx->err), 0);
    assert_string_equal(got.name, "gpt");
    db_model_free(&got);
    assert_int_equal(count_rows(fx->path, "models"), 1);

    DbCluster c = cluster(C1, "dgx");
    assert_int_equal(db_cluster_put(fx->db, &c, &fx->err), 0);
    assert_int_equal(db_cluster_put(fx->db, &c, &fx->err), 0);
    assert_int_equal(count_rows(fx->path, "clusters"), 1);

    DbPlan p = plan("a000000000000001", M1, S1, NULL);
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), 0);
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), 0);
    assert_int_equal(count_rows(fx->path, "plans"), 1);
    assert_int_equal(count_rows(fx->path, "strategies"), 1);
}

static void test_put_rejects_bad_rows(void **state)
{
    Fx *fx = *state;
    DbModel m = model("ABCDEF0123456789", "gpt", NULL);       /* uppercase */
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), -1);
    assert_contains(fx->err.msg, "16 lowercase hex digits");
    m = model("abc", "gpt", NULL);                            /* short */
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), -1);
    m = model(M1, NULL, NULL);                                /* no name */
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), -1);
    assert_contains(fx->err.msg, "name and json are required");
    assert_int_equal(count_rows(fx->path, "models"), 0);

    DbCluster c = cluster("c1c1-c1c1c1c1c1c", "dgx");
    assert_int_equal(db_cluster_put(fx->db, &c, &fx->err), -1);
    assert_int_equal(count_rows(fx->path, "clusters"), 0);
}

static void test_cluster_put_get(void **state)
{
    Fx *fx = *state;
    DbCluster c = cluster(C1, "dgx");
    assert_int_equal(db_cluster_put(fx->db, &c, &fx->err), 0);
    DbCluster got;
    assert_int_equal(db_cluster_get(fx->db, "c1c1c1", &got, &fx->err), 0);
    assert_string_equal(got.id, C1);
    assert_string_equal(got.name, "dgx");
    assert_string_equal(got.json, c.json);
    assert_int_equal(got.ndevices, 8);
    assert_non_null(got.created);
    db_cluster_free(&got);
    db_cluster_free(NULL);
    assert_int_equal(db_cluster_get(fx->db, "dddd", &got, &fx->err), 1);
    assert_string_equal(fx->err.msg, "no cluster with id 'dddd'");
}

static void test_plan_put_get_list(void **state)
{
    Fx *fx = *state;
    put_parents(fx);
    DbPlan p1 = plan("a000000000000001", M1, S1, "2024-01-01T00:00:00.000Z");
    DbPlan p2 = plan("a000000000000002", M1, S1, "2024-02-01T00:00:00.000Z");
    DbPlan p3 = plan("b000000000000003", M1, S2, "2024-03-01T00:00:00.000Z");
    p3.strategy_json = "{\"mesh\":{\"tp\":8}}";
    p3.summary_json = NULL;
    p3.world = 16;
    assert_int_equal(db_plan_put(fx->db, &p1, &fx->err), 0);
    assert_int_equal(db_plan_put(fx->db, &p2, &fx->err), 0);
    assert_int_equal(db_plan_put(fx->db, &p3, &fx->err), 0);
    assert_int_equal(count_rows(fx->path, "strategies"), 2);   /* S1 shared */

    DbPlan got;
    assert_int_equal(db_plan_get(fx->db, "b000000000000003", &got, &fx->err), 0);
    assert_string_equal(got.id, "b000000000000003");
    assert_string_equal(got.model_id, M1);
    assert_string_equal(got.cluster_id, C1);
    assert_string_equal(got.strategy_id, S2);
    assert_string_equal(got.model_name, "gpt");
    assert_string_equal(got.cluster_name, "dgx");
    assert_string_equal(got.strategy_json, "{\"mesh\":{\"tp\":8}}");
    assert_null(got.summary_json);
    assert_int_equal(got.world, 16);
    assert_string_equal(got.created, "2024-03-01T00:00:00.000Z");
    db_plan_free(&got);
    db_plan_free(NULL);

    DbPlan *rows;
    int n;
    assert_int_equal(db_plan_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(rows[0].id, "b000000000000003");
    assert_string_equal(rows[1].id, "a000000000000002");
    assert_string_equal(rows[2].id, "a000000000000001");
    for (int i = 0; i < n; i++) {
        assert_string_equal(rows[i].model_name, "gpt");
        assert_string_equal(rows[i].cluster_name, "dgx");
    }
    assert_string_equal(rows[1].summary_json, "{\"step_s\":0.25}");
    assert_int_equal(rows[1].world, 8);
    db_plan_list_free(rows, n);
}

/* ----------------------------------------------------------------------------
 * Id prefixes */

static void test_prefix_lookup(void **state)
{
    Fx *fx = *state;
    put_parents(fx);
    const char *ids[] = {"ab12000000000001", "ab12000000000002", "cd34000000000000"};
    for (int i = 0; i < 3; i++) {
        DbPlan p = plan(ids[i], M1, S1, NULL);
        assert_int_equal(db_plan_put(fx->db, &p, &fx->err), 0);
    }
    DbPlan got;

    assert_int_equal(db_plan_get(fx->db, "cd34", &got, &fx->err), 0);          /* unique */
    assert_string_equal(got.id, ids[2]);
    db_plan_free(&got);
    assert_int_equal(db_plan_get(fx->db, "CD340", &got, &fx->err), 0);         /* any case */
    assert_string_equal(got.id, ids[2]);
    db_plan_free(&got);
    assert_int_equal(db_plan_get(fx->db, ids[1], &got, &fx->err), 0);          /* full id */
    assert_string_equal(got.id, ids[1]);
    db_plan_free(&got);
    assert_int_equal(db_plan_get(fx->db, "ab120000000000", &got, &fx->err), -1);
    assert_int_equal(db_plan_get(fx->db, "ab1200000000000", &got, &fx->err), -1);

    assert_int_equal(db_plan_get(fx->db, "ab12", &got, &fx->err), -1);         /* ambiguous */
    assert_string_equal(fx->err.msg, "id prefix 'ab12' matches 2 plans; give more digits");
    assert_null(got.model_name);

    assert_int_equal(db_plan_get(fx->db, "abcd", &got, &fx->err), 1);          /* none */
    assert_string_equal(fx->err.msg, "no plan with id 'abcd'");
    assert_int_equal(db_plan_get(fx->db, "ab120000000000ff", &got, &fx->err), 1);
    assert_int_equal(db_plan_get(fx->db, "ffff", &got, &fx->err), 1);         /* past the end */

    /* Wildcards of LIKE and GLOB are not hex digits: refused, never matched. */
    const char *bad[] = {"ab1%", "ab1_", "ab1*", "ab1?", "ab[1]", "ab12'--", "ab 12", "ghij"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (db_plan_get(fx->db, bad[i], &got, &fx->err) != -1)
            fail_msg("'%s' was not refused", bad[i]);
        assert_contains(fx->err.msg, "not a hex digit");
    }
    assert_int_equal(db_plan_get(fx->db, "ab1", &got, &fx->err), -1);          /* too short */
    assert_contains(fx->err.msg, "at least 4 hex digits");
    assert_int_equal(db_plan_get(fx->db, "", &got, &fx->err), -1);
    assert_int_equal(db_plan_get(fx->db, "ab12000000000001f", &got, &fx->err), -1);
    assert_contains(fx->err.msg, "too long");

    /* The same rules for models. */
    DbModel m2 = model("1111aaaa00000000", "other", NULL);
    assert_int_equal(db_model_put(fx->db, &m2, &fx->err), 0);
    DbModel gm;
    assert_int_equal(db_model_get(fx->db, "1111", &gm, &fx->err), -1);
    assert_string_equal(fx->err.msg, "id prefix '1111' matches 2 models; give more digits");
    assert_int_equal(db_model_get(fx->db, "1111a", &gm, &fx->err), 0);
    assert_string_equal(gm.name, "other");
    db_model_free(&gm);
}

/* ----------------------------------------------------------------------------
 * Transactions */

static void test_plan_put_rolls_back(void **state)
{
    Fx *fx = *state;
    /* The model is not stored: the plan fails on its foreign key, after the
     * strategy row went in, and the strategy must go with it. */
    DbCluster c = cluster(C1, "dgx");
    assert_int_equal(db_cluster_put(fx->db, &c, &fx->err), 0);
    DbPlan p = plan("a000000000000001", M1, S1, NULL);
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), -1);
    assert_contains(fx->err.msg, "storing plan a000000000000001");
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    assert_int_equal(count_rows(fx->path, "strategies"), 0);
    assert_int_equal(count_rows(fx->path, "plans"), 0);

    /* A row that breaks a CHECK (world 0) fails the same way. */
    DbModel m = model(M1, "gpt", NULL);
    assert_int_equal(db_model_put(fx->db, &m, &fx->err), 0);
    p.world = 0;
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), -1);
    assert_contains(fx->err.msg, "CHECK constraint failed");
    assert_int_equal(count_rows(fx->path, "strategies"), 0);

    /* And the connection is usable afterwards: no transaction left open. */
    p.world = 8;
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), 0);
    assert_int_equal(count_rows(fx->path, "strategies"), 1);
    assert_int_equal(count_rows(fx->path, "plans"), 1);
}

/* Deleting a parent takes its children along (the tables later stages fill). */
static void test_cascades(void **state)
{
    Fx *fx = *state;
    put_parents(fx);
    DbPlan p = plan("a000000000000001", M1, S1, NULL);
    assert_int_equal(db_plan_put(fx->db, &p, &fx->err), 0);

    sqlite3 *h = raw_open(fx->path);
    raw_exec(h,
        "INSERT INTO profiles (id, host, device, backend) VALUES (1, 'h', 'cpu', 'cpu');"
        "INSERT INTO profile_ops (profile_id, device, kind, phase, shape_json, dtype,"
        "  median_s, reps) VALUES (1, 'cpu', 'matmul', 'fwd', '[1,2]', 'f32', 0.1, 5);"
        "INSERT INTO profile_links (profile_id, collective, group_size, level, bytes, time_s)"
        "  VALUES (1, 'allreduce', 8, 'nvlink', 1048576, 0.001);"
        "INSERT INTO profile_fits (profile_id, collective, group_size, level, alpha_s, beta_s,"
        "  rms_rel_err, max_rel_err, n) VALUES (1, 'allreduce', 8, 'nvlink', 1e-5, 1e-10,"
        "  0.01, 0.02, 6);"
        "INSERT INTO cost_models (id, profile_id, kind, weights) VALUES ('cm1', 1, 'mlp', x'00');"
        "INSERT INTO searches (id, model_id, cluster_id, method, best_plan_id)"
        "  VALUES ('s1', '" M1 "', '" C1 "', 'mcmc', 'a000000000000001');"
        "INSERT INTO search_events (search_id, seq, json) VALUES ('s1', 0, '{}');"
        "INSERT INTO runs (id, plan_id, backend, world, steps) VALUES"
        "  ('r1', 'a000000000000001', 'cpu', 8, 10);"
        "INSERT INTO run_steps (run_id, step, rank, loss) VALUES ('r1', 0, 0, 2.5);");
    assert_int_equal(raw_int(h, "SELECT complete FROM profiles"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM searches WHERE status = 'queued'"), 1);

    raw_exec(h, "DELETE FROM profiles");
    assert_int_equal(raw_int(h, "SELECT count(*) FROM profile_ops"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM profile_links"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM profile_fits"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM cost_models WHERE profile_id IS NULL"), 1);

    /* A strategy a plan uses cannot be deleted. */
    assert_int_not_equal(sqlite3_exec(h, "DELETE FROM strategies", NULL, NULL, NULL), SQLITE_OK);

    raw_exec(h, "DELETE FROM models");
    assert_int_equal(raw_int(h, "SELECT count(*) FROM plans"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM runs"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM run_steps"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM searches"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM search_events"), 0);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM clusters"), 1);
    sqlite3_close(h);
}

/* ----------------------------------------------------------------------------
 * Profiles */

static DbProfile profile_row(void)
{
    return (DbProfile){.host = "node7", .device = "cpu", .backend = "cpu", .ranks = 4,
                       .quick = 1, .notes = "OMP_NUM_THREADS=1",
                       .build_json = "{\"kernels\":\"0123456789ab\",\"threads\":1}"};
}

/* Three op samples, given out of the order get returns them in. */
static const DbProfileOp OPS[] = {
    {"matmul", "fwd", "{\"sizes\":{\"m\":512}}", "f32", "zoo", 2.0e9, 3.0e6,
     1.5e-3, 1.4e-3, 1.7e-3, 20},
    {"adam", "update", "{\"sizes\":{\"n\":4096}}", "f32", "random", 4.0e4, 8.0e4,
     2.5e-6, 2.0e-6, 3.0e-6, 50},
    {"matmul", "fwd", "{\"sizes\":{\"m\":128}}", "f32", "random", 3.1e7, 1.9e5,
     4.0e-5, 3.5e-5, 4.5e-5, 100},
};

static const DbProfileLink LINKS[] = {
    {"allreduce", 4, "node", 1048576, 2.0e-4, 5.24e9, 7.86e9, 50},
    {"allgather", 2, "core", 4096, 1.0e-5, 4.1e8, 2.05e8, 200},
    {"allreduce", 2, "node", 4096, 1.2e-5, 3.4e8, 3.4e8, 200},
    {"allreduce", 4, "node", 4096, 1.5e-5, 2.7e8, 4.1e8, 200},
};

static const DbProfileFit FITS[] = {
    {"allreduce", 4, "node", 1.4e-5, 1.8e-10, 0.03, 0.07, 2},
    {"allgather", 2, "core", 9.0e-6, 2.4e-12, 0.0, 0.0, 1},
};

#define NELEMS(a) ((int)(sizeof (a) / sizeof (a)[0]))

static int64_t begin_profile(Fx *fx)
{
    DbProfile p = profile_row();
    int64_t id = -1;
    if (db_profile_begin(fx->db, &p, &id, &fx->err)) fail_msg("%s", fx->err.msg);
    return id;
}

static void assert_op_equal(const DbProfileOp *got, const DbProfileOp *want)
{
    assert_string_equal(got->kind, want->kind);
    assert_string_equal(got->phase, want->phase);
    assert_string_equal(got->shape_json, want->shape_json);
    assert_string_equal(got->dtype, want->dtype);
    assert_string_equal(got->source, want->source);
    assert_true(got->flops == want->flops);
    assert_true(got->bytes == want->bytes);
    assert_true(got->median_s == want->median_s);
    assert_true(got->p10_s == want->p10_s);
    assert_true(got->p90_s == want->p90_s);
    assert_int_equal(got->reps, want->reps);
}

static void assert_link_equal(const DbProfileLink *got, const DbProfileLink *want)
{
    assert_string_equal(got->collective, want->collective);
    assert_int_equal(got->group_size, want->group_size);
    assert_string_equal(got->level, want->level);
    assert_int_equal(got->bytes, want->bytes);
    assert_true(got->time_s == want->time_s);
    assert_true(got->algbw == want->algbw);
    assert_true(got->busbw == want->busbw);
    assert_int_equal(got->iters, want->iters);
}

static void assert_fit_equal(const DbProfileFit *got, const DbProfileFit *want)
{
    assert_string_equal(got->collective, want->collective);
    assert_int_equal(got->group_size, want->group_size);
    assert_string_equal(got->level, want->level);
    assert_true(got->alpha_s == want->alpha_s);
    assert_true(got->beta_s == want->beta_s);
    assert_true(got->rms_rel_err == want->rms_rel_err);
    assert_true(got->max_rel_err == want->max_rel_err);
    assert_int_equal(got->n, want->n);
}

/* The sample counts of profile id, straight from the file. */
static void assert_samples(Fx *fx, int64_t id, int ops, int links, int fits)
{
    char sql[128];
    sqlite3 *h = raw_open(fx->path);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM profile_ops WHERE profile_id = %lld",
             (long long)id);
    assert_int_equal(raw_int(h, sql), ops);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM profile_links WHERE profile_id = %lld",
             (long long)id);
    assert_int_equal(raw_int(h, sql), links);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM profile_fits WHERE profile_id = %lld",
             (long long)id);
    assert_int_equal(raw_int(h, sql), fits);
    sqlite3_close(h);
}

static void test_profile_round_trip(void **state)
{
    Fx *fx = *state;
    int64_t id = begin_profile(fx);
    assert_true(id > 0);

    /* Just begun: running, nothing measured yet. */
    DbProfile got;
    assert_int_equal(db_profile_get(fx->db, id, &got, NULL, NULL, NULL, NULL, NULL, NULL,
                                    &fx->err), 0);
    assert_int_equal(got.id, id);
    assert_string_equal(got.status, "running");
    assert_int_equal(got.complete, 0);
    assert_null(got.finished);
    assert_null(got.cluster_json);
    assert_string_equal(got.notes, "OMP_NUM_THREADS=1");
    assert_string_equal(got.build_json, "{\"kernels\":\"0123456789ab\",\"threads\":1}");
    assert_true(got.peak_flops == 0 && got.mem_bw == 0 && got.mem_bytes == 0);
    assert_int_equal(got.nops + got.nlinks + got.nfits, 0);
    db_profile_free(&got);

    /* An op stored before the device is known takes the device set later. */
    assert_int_equal(db_profile_add_ops(fx->db, id, &OPS[0], 1, &fx->err), 0);
    assert_int_equal(db_profile_set_device(fx->db, id, "Xeon 8480 (OpenBLAS, 1 thread)",
                                           1.9e11, 2.4e10, 5.1e11, NULL, &fx->err), 0);
    assert_int_equal(db_profile_add_ops(fx->db, id, &OPS[1], 2, &fx->err), 0);
    assert_int_equal(db_profile_add_ops(fx->db, id, NULL, 0, &fx->err), 0);   /* empty batch */
    assert_int_equal(db_profile_add_links(fx->db, id, LINKS, 2, &fx->err), 0);
    assert_int_equal(db_profile_add_links(fx->db, id, &LINKS[2], 2, &fx->err), 0);
    assert_int_equal(db_profile_finish(fx->db, id, 1, "complete", FITS, NELEMS(FITS),
                                       "{\"devices\":4}", &fx->err), 0);

    sqlite3 *h = raw_open(fx->path);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM profile_ops"
                                " WHERE device = 'Xeon 8480 (OpenBLAS, 1 thread)'"), 3);
    sqlite3_close(h);

    DbProfileOp *ops;
    DbProfileLink *links;
    DbProfileFit *fits;
    int nops, nlinks, nfits;
    assert_int_equal(db_profile_get(fx->db, id, &got, &ops, &nops, &links, &nlinks, &fits,
                                    &nfits, &fx->err), 0);
    assert_int_equal(got.id, id);
    assert_string_equal(got.host, "node7");
    assert_string_equal(got.device, "Xeon 8480 (OpenBLAS, 1 thread)");
    assert_string_equal(got.backend, "cpu");
    assert_non_null(got.started);
    assert_non_null(got.finished);
    assert_true(strcmp(got.finished, got.started) >= 0);
    assert_int_equal(got.complete, 1);
    assert_string_equal(got.status, "complete");
    assert_int_equal(got.ranks, 4);
    assert_int_equal(got.quick, 1);
    assert_true(got.peak_flops == 1.9e11);
    assert_true(got.mem_bw == 2.4e10);
    assert_true(got.mem_bytes == 5.1e11);
    assert_string_equal(got.notes, "OMP_NUM_THREADS=1");    /* NULL notes kept them */
    assert_string_equal(got.cluster_json, "{\"devices\":4}");
    assert_int_equal(got.nops, 3);
    assert_int_equal(got.nlinks, 4);
    assert_int_equal(got.nfits, 2);

    /* ops by kind, phase, flops; links by collective, level, group_size,
     * bytes; fits by collective, level, group_size */
    assert_int_equal(nops, 3);
    assert_op_equal(&ops[0], &OPS[1]);
    assert_op_equal(&ops[1], &OPS[2]);
    assert_op_equal(&ops[2], &OPS[0]);
    assert_int_equal(nlinks, 4);
    assert_link_equal(&links[0], &LINKS[1]);
    assert_link_equal(&links[1], &LINKS[2]);
    assert_link_equal(&links[2], &LINKS[3]);
    assert_link_equal(&links[3], &LINKS[0]);
    assert_int_equal(nfits, 2);
    assert_fit_equal(&fits[0], &FITS[1]);
    assert_fit_equal(&fits[1], &FITS[0]);
    db_profile_samples_free(ops, nops, links, nlinks, fits, nfits);
    db_profile_samples_free(NULL, 0, NULL, 0, NULL, 0);
    db_profile_free(&got);
    db_profile_free(&got);        /* a freed row frees again harmlessly */
    db_profile_free(NULL);

    /* Only the samples asked for. */
    assert_int_equal(db_profile_get(fx->db, id, &got, NULL, NULL, &links, &nlinks, NULL, NULL,
                                    &fx->err), 0);
    assert_int_equal(nlinks, 4);
    assert_int_equal(got.nops, 3);
    db_profile_samples_free(NULL, 0, links, nlinks, NULL, 0);
    db_profile_free(&got);
}

static void test_profile_list(void **state)
{
    Fx *fx = *state;
    DbProfile *rows = (DbProfile *)1;
    int n = -1;
    assert_int_equal(db_profile_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    db_profile_list_free(rows, n);

    int64_t a = begin_profile(fx), b = begin_profile(fx), c = begin_profile(fx);
    assert_int_equal(db_profile_add_ops(fx->db, b, OPS, 2, &fx->err), 0);
    assert_int_equal(db_profile_add_links(fx->db, b, LINKS, 1, &fx->err), 0);
    assert_int_equal(db_profile_add_links(fx->db, c, LINKS, 3, &fx->err), 0);
    assert_int_equal(db_profile_finish(fx->db, c, 1, "complete", FITS, 1, NULL, &fx->err), 0);
    /* a started last; b and c started in the same millisecond or so, and the
     * later id breaks the tie. */
    sqlite3 *h = raw_open(fx->path);
    raw_exec(h, "UPDATE profiles SET started = '2999-01-01T00:00:00.000Z' WHERE id = 1");
    raw_exec(h, "UPDATE profiles SET started = '2001-01-01T00:00:00.000Z' WHERE id != 1");
    sqlite3_close(h);
    assert_int_equal(a, 1);

    assert_int_equal(db_profile_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(rows[0].id, a);
    assert_int_equal(rows[1].id, c);
    assert_int_equal(rows[2].id, b);
    assert_string_equal(rows[0].started, "2999-01-01T00:00:00.000Z");
    assert_int_equal(rows[0].nops + rows[0].nlinks + rows[0].nfits, 0);
    assert_int_equal(rows[1].nops, 0);
    assert_int_equal(rows[1].nlinks, 3);
    assert_int_equal(rows[1].nfits, 1);
    assert_string_equal(rows[1].status, "complete");
    assert_int_equal(rows[2].nops, 2);
    assert_int_equal(rows[2].nlinks, 1);
    assert_int_equal(rows[2].nfits, 0);
    assert_string_equal(rows[2].status, "running");
    assert_string_equal(rows[2].host, "node7");
    db_profile_list_free(rows, n);
}

/* A finished profile takes nothing more; neither does one that is not there. */
static void test_profile_finished_refuses_writes(void **state)
{
    Fx *fx = *state;
    int64_t id = begin_profile(fx);
    assert_int_equal(db_profile_add_ops(fx->db, id, OPS, 1, &fx->err), 0);
    assert_int_equal(db_profile_finish(fx->db, id, 1, "complete", FITS, 1, "{}", &fx->err), 0);

    char name[64];
    snprintf(name, sizeof name, "profile %lld", (long long)id);
    assert_int_equal(db_profile_add_ops(fx->db, id, OPS, 2, &fx->err), -1);
    assert_contains(fx->err.msg, name);
    assert_contains(fx->err.msg, "is finished");
    assert_contains(fx->err.msg, "status 'complete'");
    assert_int_equal(db_profile_add_links(fx->db, id, LINKS, 2, &fx->err), -1);
    assert_contains(fx->err.msg, name);
    assert_contains(fx->err.msg, "is finished");
    assert_int_equal(db_profile_set_device(fx->db, id, "gpu", 1, 1, 1, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "is finished");
    assert_int_equal(db_profile_finish(fx->db, id, 0, "interrupted", &FITS[1], 1, NULL,
                                       &fx->err), -1);
    assert_contains(fx->err.msg, "finishing profile");
    assert_contains(fx->err.msg, name);
    assert_contains(fx->err.msg, "is finished");
    assert_samples(fx, id, 1, 0, 1);

    DbProfile got;
    assert_int_equal(db_profile_get(fx->db, id, &got, NULL, NULL, NULL, NULL, NULL, NULL,
                                    &fx->err), 0);
    assert_string_equal(got.status, "complete");         /* the second finish changed nothing */
    assert_int_equal(got.complete, 1);
    assert_string_equal(got.device, "cpu");
    assert_string_equal(got.cluster_json, "{}");
    db_profile_free(&got);

    /* A missing profile: refused, named, and get says not found. */
    assert_int_equal(db_profile_add_ops(fx->db, 999, OPS, 1, &fx->err), -1);
    assert_string_equal(fx->err.msg, "adding 1 op samples to profile 999: "
                                     "no profile with id 999");
    assert_int_equal(db_profile_add_links(fx->db, 999, LINKS, 1, &fx->err), -1);
    assert_contains(fx->err.msg, "no profile with id 999");
    assert_int_equal(db_profile_set_device(fx->db, 999, "cpu", 0, 0, 0, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "no profile with id 999");
    assert_int_equal(db_profile_finish(fx->db, 999, 1, "complete", NULL, 0, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "no profile with id 999");
    DbProfileOp *ops = (DbProfileOp *)1;
    int nops = -1;
    assert_int_equal(db_profile_get(fx->db, 999, &got, &ops, &nops, NULL, NULL, NULL, NULL,
                                    &fx->err), 1);
    assert_string_equal(fx->err.msg, "no profile with id 999");
    assert_null(ops);
    assert_int_equal(nops, 0);
    assert_null(got.host);
    sqlite3 *h = raw_open(fx->path);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM profile_ops WHERE profile_id = 999"), 0);
    sqlite3_close(h);
}

/* A batch with one bad row stores none of its rows, and the connection is
 * left with no transaction open. */
static void test_profile_batch_all_or_nothing(void **state)
{
    Fx *fx = *state;
    int64_t id = begin_profile(fx);
    assert_int_equal(db_profile_add_ops(fx->db, id, OPS, 1, &fx->err), 0);

    DbProfileOp ops[3] = {OPS[0], OPS[1], OPS[2]};
    ops[1].kind = NULL;
    assert_int_equal(db_profile_add_ops(fx->db, id, ops, 3, &fx->err), -1);
    assert_contains(fx->err.msg, "op sample 1: kind is required");
    assert_contains(fx->err.msg, "profile");
    ops[1].kind = "adam";
    ops[2].source = NULL;
    assert_int_equal(db_profile_add_ops(fx->db, id, ops, 3, &fx->err), -1);
    assert_contains(fx->err.msg, "op sample 2: source is required");
    ops[2].source = "random";

    DbProfileLink links[3] = {LINKS[0], LINKS[1], LINKS[2]};
    links[1].level = NULL;
    assert_int_equal(db_profile_add_links(fx->db, id, links, 3, &fx->err), -1);
    assert_contains(fx->err.msg, "link sample 1: level is required");
    assert_samples(fx, id, 1, 0, 0);

    /* Counts and arrays that do not add up. */
    assert_int_equal(db_profile_add_ops(fx->db, id, OPS, -1, &fx->err), -1);
    assert_contains(fx->err.msg, "n is -1");
    assert_int_equal(db_profile_add_links(fx->db, id, NULL, 2, &fx->err), -1);
    assert_contains(fx->err.msg, "array is NULL");
    assert_int_equal(db_profile_finish(fx->db, id, 1, "complete", FITS, -3, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "n is -3");

    /* A finish whose fits break the schema (the same key twice) fails in SQL:
     * no fit is stored and the profile is still running. */
    DbProfileFit twice[2] = {FITS[0], FITS[0]};
    assert_int_equal(db_profile_finish(fx->db, id, 1, "complete", twice, 2, "{}", &fx->err), -1);
    assert_contains(fx->err.msg, "UNIQUE constraint failed");
    assert_contains(fx->err.msg, "two fits have the same collective, group_size and level");
    assert_contains(fx->err.msg, "finishing profile");
    assert_int_equal(db_profile_finish(fx->db, id, 1, NULL, NULL, 0, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "status is required");
    assert_int_equal(db_profile_finish(fx->db, id, 2, "complete", NULL, 0, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "give 0 or 1");
    assert_samples(fx, id, 1, 0, 0);

    DbProfile got;
    assert_int_equal(db_profile_get(fx->db, id, &got, NULL, NULL, NULL, NULL, NULL, NULL,
                                    &fx->err), 0);
    assert_null(got.finished);
    assert_string_equal(got.status, "running");
    db_profile_free(&got);

    /* Bad rows to begin and set_device. */
    DbProfile p = profile_row();
    int64_t other = -1;
    p.backend = NULL;
    assert_int_equal(db_profile_begin(fx->db, &p, &other, &fx->err), -1);
    assert_contains(fx->err.msg, "backend is required");
    p = profile_row();
    p.ranks = 0;
    assert_int_equal(db_profile_begin(fx->db, &p, &other, &fx->err), -1);
    assert_contains(fx->err.msg, "ranks is 0");
    assert_int_equal(other, -1);
    assert_int_equal(db_profile_set_device(fx->db, id, NULL, 1, 1, 1, NULL, &fx->err), -1);
    assert_contains(fx->err.msg, "device is required");
    assert_int_equal(count_rows(fx->path, "profiles"), 1);

    /* And the connection still works. */
    assert_int_equal(db_profile_add_ops(fx->db, id, ops, 3, &fx->err), 0);
    assert_int_equal(db_profile_add_links(fx->db, id, LINKS, NELEMS(LINKS), &fx->err), 0);
    assert_int_equal(db_profile_finish(fx->db, id, 1, "complete", FITS, NELEMS(FITS), NULL,
                                       &fx->err), 0);
    assert_samples(fx, id, 4, 4, 2);
}

static void test_profile_interrupted(void **state)
{
    Fx *fx = *state;
    int64_t id = begin_profile(fx);
    assert_int_equal(db_profile_add_ops(fx->db, id, OPS, 2, &fx->err), 0);
    assert_int_equal(db_profile_finish(fx->db, id, 0, "interrupted", NULL, 0, NULL, &fx->err), 0);

    DbProfile got;
    DbProfileFit *fits = (DbProfileFit *)1;
    int nfits = -1;
    assert_int_equal(db_profile_get(fx->db, id, &got, NULL, NULL, NULL, NULL, &fits, &nfits,
                                    &fx->err), 0);
    assert_string_equal(got.status, "interrupted");
    assert_int_equal(got.complete, 0);
    assert_non_null(got.finished);
    assert_null(got.cluster_json);
    assert_int_equal(got.nops, 2);
    assert_int_equal(got.nfits, 0);
    assert_null(fits);
    assert_int_equal(nfits, 0);
    db_profile_free(&got);
    /* Finished, even though incomplete: no more samples. */
    assert_int_equal(db_profile_add_ops(fx->db, id, OPS, 1, &fx->err), -1);
    assert_contains(fx->err.msg, "status 'interrupted'");
}

/* A running profile whose process has ended (killed before it could
 * close its row) is marked interrupted, its samples kept; one whose process
 * is alive, one begun on another host, and one without a pid are left. */
static void test_profile_dead_process(void **state)
{
    Fx *fx = *state;
    pid_t child = fork();
    if (child == 0) _exit(0);
    assert_true(child > 0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    char host[256];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = 0;
    DbProfile p = profile_row();
    p.host = host;
    int64_t dead, alive, other, none;
    p.pid = child;
    assert_int_equal(db_profile_begin(fx->db, &p, &dead, &fx->err), 0);
    assert_int_equal(db_profile_add_ops(fx->db, dead, OPS, 2, &fx->err), 0);
    p.pid = getpid();
    assert_int_equal(db_profile_begin(fx->db, &p, &alive, &fx->err), 0);
    p.pid = 0;
    assert_int_equal(db_profile_begin(fx->db, &p, &none, &fx->err), 0);
    p.pid = child;
    p.host = "another-host-entirely";
    assert_int_equal(db_profile_begin(fx->db, &p, &other, &fx->err), 0);

    int n = -1;
    assert_int_equal(db_profile_interrupt_dead(fx->db, &n, &fx->err), 0);
    assert_int_equal(n, 1);
    DbProfile got;
    assert_int_equal(db_profile_get(fx->db, dead, &got, NULL, NULL, NULL, NULL, NULL, NULL,
                                    &fx->err), 0);
    assert_string_equal(got.status, "interrupted");
    assert_int_equal(got.complete, 0);
    assert_non_null(got.finished);
    assert_int_equal(got.nops, 2);
    db_profile_free(&got);
    const int64_t left[] = { alive, none, other };
    for (int k = 0; k < 3; k++) {
        assert_int_equal(db_profile_get(fx->db, left[k], &got, NULL, NULL, NULL, NULL, NULL,
                                        NULL, &fx->err), 0);
        assert_string_equal(got.status, "running");
        assert_null(got.finished);
        db_profile_free(&got);
    }
    /* once is enough */
    assert_int_equal(db_profile_interrupt_dead(fx->db, &n, &fx->err), 0);
    assert_int_equal(n, 0);
}

/* A sample put again (same kind, phase, shape and dtype) replaces the
 * stored one; a new one is added. */
static void test_profile_put_ops(void **state)
{
    Fx *fx = *state;
    int64_t id = begin_profile(fx);
    assert_int_equal(db_profile_put_ops(fx->db, id, OPS, 2, &fx->err), 0);
    DbProfileOp again[2] = { OPS[1], OPS[2] };
    again[0].median_s = 7e-6;
    again[0].p10_s = 6e-6;
    again[0].p90_s = 9e-6;
    again[0].reps = 150;
    assert_int_equal(db_profile_put_ops(fx->db, id, again, 2, &fx->err), 0);
    DbProfile got;
    DbProfileOp *ops = NULL;
    int nops = 0;
    assert_int_equal(db_profile_get(fx->db, id, &got, &ops, &nops, NULL, NULL, NULL, NULL,
                                    &fx->err), 0);
    assert_int_equal(nops, 3);
    int seen = 0;
    for (int i = 0; i < nops; i++) {
        const DbProfileOp *want = !strcmp(ops[i].kind, "adam") ? &again[0]
                                : strstr(ops[i].shape_json, "512") ? &OPS[0] : &OPS[2];
        assert_op_equal(&ops[i], want);
        seen |= want == &again[0] ? 1 : want == &OPS[0] ? 2 : 4;
    }
    assert_int_equal(seen, 7);
    db_profile_free(&got);
    db_profile_samples_free(ops, nops, NULL, 0, NULL, 0);
    /* a finished profile takes no more */
    assert_int_equal(db_profile_finish(fx->db, id, 1, "complete", NULL, 0, NULL, &fx->err), 0);
    assert_int_equal(db_profile_put_ops(fx->db, id, OPS, 1, &fx->err), -1);
    assert_contains(fx->err.msg, "takes no more writes");
}

/* Takes migration 10 back out, leaving version 9. */
static void take_back_v10(sqlite3 *h)
{
    raw_exec(h,
        "ALTER TABLE runs DROP COLUMN host;"
        "ALTER TABLE runs DROP COLUMN pid;"
        "PRAGMA user_version = 9;");
}

/* Takes migrations 10 and 9 back out, leaving version 8. */
static void take_back_v9(sqlite3 *h)
{
    take_back_v10(h);
    raw_exec(h,
        "ALTER TABLE searches DROP COLUMN host;"
        "ALTER TABLE searches DROP COLUMN pid;"
        "PRAGMA user_version = 8;");
}

/* Takes migrations 9 and 8 back out, leaving version 7. */
static void take_back_v8(sqlite3 *h)
{
    take_back_v9(h);
    raw_exec(h,
        "ALTER TABLE profiles DROP COLUMN pid;"
        "PRAGMA user_version = 7;");
}

/* Takes migrations 8 and 7 back out of a database at version 8, by hand,
 * leaving it at version 6. */
static void take_back_v7(sqlite3 *h)
{
    take_back_v8(h);
    raw_exec(h,
        "ALTER TABLE runs DROP COLUMN error;"
        "PRAGMA user_version = 6;");
}

/* Takes migrations 8 to 6 back out of a database at version 8, by hand,
 * leaving it at version 5. */
static void take_back_v6(sqlite3 *h)
{
    take_back_v7(h);
    raw_exec(h,
        "ALTER TABLE searches DROP COLUMN options_json;"
        "PRAGMA user_version = 5;");
}

/* Takes migrations 8 to 5 back out of a database at version 8, by hand,
 * leaving it at version 4. */
static void take_back_v5(sqlite3 *h)
{
    take_back_v6(h);
    raw_exec(h,
        "ALTER TABLE profiles DROP COLUMN build_json;"
        "PRAGMA user_version = 4;");
}

/* Takes migrations 5 and 4 back out of a database at version 5, by hand,
 * leaving it at version 3. */
static void take_back_v4(sqlite3 *h)
{
    take_back_v5(h);
    raw_exec(h,
        "ALTER TABLE searches DROP COLUMN devices;"
        "ALTER TABLE searches DROP COLUMN seed;"
        "ALTER TABLE searches DROP COLUMN result_json;"
        "ALTER TABLE searches DROP COLUMN policy;"
        "PRAGMA user_version = 3;");
}

/* Takes migrations 5 to 3 back out of a database at version 5, by hand,
 * leaving it at version 2. */
static void take_back_v3(sqlite3 *h)
{
    take_back_v4(h);
    raw_exec(h,
        "DROP TABLE validation_plans;"
        "DROP TABLE validations;"
        "DROP TABLE estimates;"
        "DROP INDEX cost_models_created;"
        "ALTER TABLE cost_models DROP COLUMN metrics_json;"
        "ALTER TABLE cost_models DROP COLUMN device;"
        "ALTER TABLE cost_models DROP COLUMN seed;"
        "ALTER TABLE cost_models DROP COLUMN with_runs;"
        "ALTER TABLE run_steps DROP COLUMN peak_mem_bytes;"
        "PRAGMA user_version = 2;");
}

/* A database made by version 1 (the current schema with migrations 3 and 2
 * taken back out by hand) migrates on open, keeping its profiles and samples. */
static void test_profile_migration_from_v1(void **state)
{
    Fx *fx = *state;
    db_close(fx->db);
    fx->db = NULL;
    sqlite3 *h = raw_open(fx->path);
    take_back_v3(h);
    raw_exec(h,
        "DROP TABLE profile_fits;"
        "DROP INDEX profiles_started;"
        "ALTER TABLE profiles DROP COLUMN status;"
        "ALTER TABLE profiles DROP COLUMN ranks;"
        "ALTER TABLE profiles DROP COLUMN quick;"
        "ALTER TABLE profiles DROP COLUMN peak_flops;"
        "ALTER TABLE profiles DROP COLUMN mem_bw;"
        "ALTER TABLE profiles DROP COLUMN mem_bytes;"
        "ALTER TABLE profiles DROP COLUMN notes;"
        "ALTER TABLE profile_ops DROP COLUMN flops;"
        "ALTER TABLE profile_ops DROP COLUMN bytes;"
        "ALTER TABLE profile_ops DROP COLUMN source;"
        "ALTER TABLE profile_links DROP COLUMN iters;"
        "PRAGMA user_version = 1;"
        "INSERT INTO profiles (id, host, device, backend, finished, complete)"
        "  VALUES (1, 'h', 'cpu', 'cpu', '2024-01-01T00:00:00.000Z', 1),"
        "         (2, 'h', 'cpu', 'cpu', '2024-01-02T00:00:00.000Z', 0),"
        "         (3, 'h', 'cpu', 'cpu', NULL, 0);"
        "INSERT INTO profile_ops (profile_id, device, kind, phase, shape_json, dtype,"
        "  median_s, reps) VALUES (1, 'cpu', 'matmul', 'fwd', '{}', 'f32', 0.1, 5);"
        "INSERT INTO profile_links (profile_id, collective, group_size, level, bytes, time_s)"
        "  VALUES (1, 'allreduce', 8, 'node', 1048576, 0.001);");
    assert_int_equal(raw_int(h, "SELECT count(*) FROM pragma_table_info('profiles')"), 8);
    sqlite3_close(h);

    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) fail_msg("%s", fx->err.msg);
    assert_int_equal(db_schema_version(fx->db), LATEST);

    const char *status[] = {"complete", "interrupted", "running"};
    for (int i = 0; i < 3; i++) {
        DbProfile got;
        assert_int_equal(db_profile_get(fx->db, i + 1, &got, NULL, NULL, NULL, NULL, NULL, NULL,
                                        &fx->err), 0);
        assert_string_equal(got.status, status[i]);
        assert_int_equal(got.ranks, 1);
        assert_int_equal(got.quick, 0);
        assert_true(got.peak_flops == 0);
        assert_null(got.notes);
        db_profile_free(&got);
    }
    DbProfileOp *ops;
    DbProfileLink *links;
    int nops, nlinks;
    DbProfile got;
    assert_int_equal(db_profile_get(fx->db, 1, &got, &ops, &nops, &links, &nlinks, NULL, NULL,
                                    &fx->err), 0);
    assert_int_equal(nops, 1);
    assert_string_equal(ops[0].source, "zoo");
    assert_true(ops[0].flops == 0 && ops[0].median_s == 0.1);
    assert_int_equal(nlinks, 1);
    assert_int_equal(links[0].iters, 0);
    assert_int_equal(links[0].bytes, 1048576);
    db_profile_samples_free(ops, nops, links, nlinks, NULL, 0);
    db_profile_free(&got);

    /* The running one takes samples and fits, which go with it. */
    assert_int_equal(db_profile_add_ops(fx->db, 3, OPS, 3, &fx->err), 0);
    assert_int_equal(db_profile_finish(fx->db, 3, 1, "complete", FITS, 2, NULL, &fx->err), 0);
    assert_samples(fx, 3, 3, 0, 2);
    h = raw_open(fx->path);
    raw_exec(h, "DELETE FROM profiles WHERE id = 3");
    sqlite3_close(h);
    assert_samples(fx, 3, 0, 0, 0);
    assert_samples(fx, 1, 1, 1, 0);
}

/* ----------------------------------------------------------------------------
 * Cost models, estimates, run steps' memory, validations */

#define CM1 "c0ffee0000000001"
#define CM2 "c0ffee0000000002"
#define CM3 "d00d000000000003"
#define P1 "a000000000000001"
#define P2 "a000000000000002"
#define R1 "7000000000000001"

/* 300 bytes of weights with zero bytes among them, as a float blob has. */
static uint8_t WEIGHTS[300];

static void fill_weights(void)
{
    for (int i = 0; i < NELEMS(WEIGHTS); i++) WEIGHTS[i] = (uint8_t)((i * 37) % 251);
    WEIGHTS[0] = WEIGHTS[150] = 0;
}

static DbCostModel costmodel(const char *id, int64_t profile_id, char *created)
{
    DbCostModel m = {.profile_id = profile_id, .kind = "mlp", .weights = WEIGHTS,
                     .nweights = sizeof WEIGHTS, .heldout_error = 0.125,
                     .metrics_json = "{\"matmul\":{\"mlp\":0.1,\"roofline\":0.4}}",
                     .device = "Xeon 8480", .seed = 42, .with_runs = 1, .created = created};
    snprintf(m.id, sizeof m.id, "%s", id);
    return m;
}

/* Stores plans P1 and P2 of model M1 (and M1 and C1 first). */
static void put_plans(Fx *fx)
{
    put_parents(fx);
    DbPlan p1 = plan(P1, M1, S1, NULL), p2 = plan(P2, M1, S2, NULL);
    assert_int_equal(db_plan_put(fx->db, &p1, &fx->err), 0);
    assert_int_equal(db_plan_put(fx->db, &p2, &fx->err), 0);
}

static void put_run(Fx *fx, const char *id, const char *plan_id, const DbRunStep *steps, int n)
{
    DbRun r = {.backend = "cpu", .world = 2, .steps = 2, .status = "ok",
               .started = "2024-01-01T00:00:00.000Z"};
    snprintf(r.id, sizeof r.id, "%s", id);
    snprintf(r.plan_id, sizeof r.plan_id, "%s", plan_id);
    if (db_run_put(fx->db, &r, steps, n, &fx->err)) fail_msg("%s", fx->err.msg);
}

/* A search: its row, its events in order (and after a given one), its end. */
static void test_search_put_events_finish(void **state)
{
    Fx *fx = *state;
    put_plans(fx);
    DbSearch x = {.id = "5e00000000000001", .model_id = M1, .cluster_id = C1, .method = "auto",
                  .status = "running", .budget_json = "{\"seconds\":30}", .devices = 8,
                  .seed = 7, .options_json = "{\"allow_lossy\":true}"};
    assert_int_equal(db_search_put(fx->db, &x, &fx->err), 0);
    /* the model must be stored */
    DbSearch bad = x;
    memcpy(bad.id, "5e00000000000002", 17);
    memcpy(bad.model_id, M2, 17);
    assert_int_equal(db_search_put(fx->db, &bad, &fx->err), -1);
    assert_contains(fx->err.msg, "not stored");
    memcpy(bad.id, "5e0000000000000g", 17);
    assert_int_equal(db_search_put(fx->db, &bad, &fx->err), -1);
    for (int k = 1; k <= 5; k++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"event\":\"progress\",\"evaluations\":%d}", 10 * k);
        assert_int_equal(db_search_event(fx->db, x.id, k, ev, &fx->err), 0);
    }
    assert_int_equal(db_search_event(fx->db, x.id, 3, "{}", &fx->err), -1);   /* seq taken */
    char **ev;
    int n;
    assert_int_equal(db_search_events(fx->db, x.id, 2, &ev, &n, &fx->err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(ev[0], "{\"event\":\"progress\",\"evaluations\":30}");
    assert_string_equal(ev[2], "{\"event\":\"progress\",\"evaluations\":50}");
    db_search_events_free(ev, n);

    DbSearch got;
    assert_int_equal(db_search_get(fx->db, "5e00", &got, &fx->err), 0);
    assert_string_equal(got.status, "running");
    assert_string_equal(got.best_plan_id, "");
    assert_string_equal(got.options_json, "{\"allow_lossy\":true}");
    assert_null(got.result_json);
    assert_null(got.finished);
    assert_int_equal(got.nevents, 5);
    assert_int_equal(got.devices, 8);
    assert_int_equal(got.seed, 7);
    assert_string_equal(got.model_name, "gpt");
    db_search_free(&got);

    assert_int_equal(db_search_finish(fx->db, x.id, "done", P1, "{\"step_time_s\":1.5}",
                                      &fx->err), 0);
    assert_int_equal(db_search_finish(fx->db, "5e0000000000000f", "done", NULL, "{}", &fx->err), -1);
    DbSearch *rows;
    assert_int_equal(db_search_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].status, "done");
    assert_string_equal(rows[0].best_plan_id, P1);
    assert_string_equal(rows[0].result_json, "{\"step_time_s\":1.5}");
    assert_non_null(rows[0].finished);
    db_search_list_free(rows, n);
    assert_int_equal(db_search_get(fx->db, "5e01", &got, &fx->err), 1);

    /* a policy, byte for byte */
    uint8_t *blob;
    size_t nb;
    assert_int_equal(db_search_policy(fx->db, x.id, &blob, &nb, &fx->err), 1);
    assert_contains(fx->err.msg, "no policy");
    const uint8_t bytes[] = { 0, 1, 2, 255, 0, 7 };
    assert_int_equal(db_search_set_policy(fx->db, x.id, bytes, sizeof bytes, &fx->err), 0);
    assert_int_equal(db_search_policy(fx->db, "5e00", &blob, &nb, &fx->err), 0);
    assert_int_equal(nb, sizeof bytes);
    assert_memory_equal(blob, bytes, sizeof bytes);
    free(blob);
    assert_int_equal(db_search_set_policy(fx->db, "5e0000000000000f", bytes, 1, &fx->err), -1);
}

static void test_costmodel_put_get_list(void **state)
{
    Fx *fx = *state;
    fill_weights();
    DbCostModel got;
    assert_int_equal(db_costmodel_latest(fx->db, 0, &got, &fx->err), 1);
    assert_string_equal(fx->err.msg, "no cost model stored");

    int64_t prof = begin_profile(fx);
    DbCostModel a = costmodel(CM1, prof, "2024-01-01T00:00:00.000Z");
    DbCostModel b = costmodel(CM2, 0, "2024-03-01T00:00:00.000Z");
    b.heldout_error = -1;
    b.metrics_json = b.device = NULL;
    b.with_runs = 0;
    b.seed = -7;
    b.nweights = 5;
    DbCostModel c = costmodel(CM3, prof, "2024-02-01T00:00:00.000Z");
    assert_int_equal(db_costmodel_put(fx->db, &a, &fx->err), 0);
    assert_int_equal(db_costmodel_put(fx->db, &b, &fx->err), 0);
    assert_int_equal(db_costmodel_put(fx->db, &c, &fx->err), 0);

    /* Full id: every field, the weights byte for byte. */
    assert_int_equal(db_costmodel_get(fx->db, CM1, &got, &fx->err), 0);
    assert_string_equal(got.id, CM1);
    assert_int_equal(got.profile_id, prof);
    assert_string_equal(got.kind, "mlp");
    assert_int_equal(got.nweights, sizeof WEIGHTS);
    assert_non_null(got.weights);
    assert_true(got.weights != WEIGHTS);
    assert_memory_equal(got.weights, WEIGHTS, sizeof WEIGHTS);
    assert_true(got.heldout_error == 0.125);
    assert_string_equal(got.metrics_json, a.metrics_json);
    assert_string_equal(got.device, "Xeon 8480");
    assert_int_equal(got.seed, 42);
    assert_int_equal(got.with_runs, 1);
    assert_string_equal(got.created, "2024-01-01T00:00:00.000Z");
    db_costmodel_free(&got);
    db_costmodel_free(&got);      /* a freed row frees again harmlessly */
    db_costmodel_free(NULL);

    /* No profile, unknown error, no metrics: 0, -1, NULL back. */
    assert_int_equal(db_costmodel_get(fx->db, CM2, &got, &fx->err), 0);
    assert_int_equal(got.profile_id, 0);
    assert_true(got.heldout_error < 0);
    assert_null(got.metrics_json);
    assert_null(got.device);
    assert_int_equal(got.seed, -7);
    assert_int_equal(got.with_runs, 0);
    assert_int_equal(got.nweights, 5);
    assert_memory_equal(got.weights, WEIGHTS, 5);
    db_costmodel_free(&got);
    sqlite3 *h = raw_open(fx->path);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM cost_models WHERE id = '" CM2 "'"
                                " AND profile_id IS NULL AND heldout_error IS NULL"), 1);
    sqlite3_close(h);

    /* Prefixes. */
    assert_int_equal(db_costmodel_get(fx->db, "D00D", &got, &fx->err), 0);
    assert_string_equal(got.id, CM3);
    db_costmodel_free(&got);
    assert_int_equal(db_costmodel_get(fx->db, "c0ff", &got, &fx->err), -1);
    assert_string_equal(fx->err.msg, "id prefix 'c0ff' matches 2 cost models; give more digits");
    assert_null(got.kind);
    assert_int_equal(db_costmodel_get(fx->db, "abcd", &got, &fx->err), 1);
    assert_string_equal(fx->err.msg, "no cost model with id 'abcd'");
    assert_int_equal(db_costmodel_get(fx->db, "c0f", &got, &fx->err), -1);
    assert_contains(fx->err.msg, "at least 4 hex digits");

    /* The newest of a profile; of any profile. */
    assert_int_equal(db_costmodel_latest(fx->db, prof, &got, &fx->err), 0);
    assert_string_equal(got.id, CM3);
    assert_memory_equal(got.weights, WEIGHTS, sizeof WEIGHTS);
    db_costmodel_free(&got);
    assert_int_equal(db_costmodel_latest(fx->db, 0, &got, &fx->err), 0);
    assert_string_equal(got.id, CM2);
    db_costmodel_free(&got);
    int64_t other = begin_profile(fx);
    assert_int_equal(db_costmodel_latest(fx->db, other, &got, &fx->err), 1);
    assert_contains(fx->err.msg, "no cost model trained on profile");
    assert_null(got.kind);

    /* Same id again, other content: the stored row stays. */
    DbCostModel again = costmodel(CM1, 0, NULL);
    again.kind = "other";
    assert_int_equal(db_costmodel_put(fx->db, &again, &fx->err), 0);
    assert_int_equal(db_costmodel_get(fx->db, CM1, &got, &fx->err), 0);
    assert_string_equal(got.kind, "mlp");
    assert_int_equal(got.profile_id, prof);
    db_costmodel_free(&got);

    /* Refused: bad ids, no weights, a profile that is not stored. */
    DbCostModel bad = costmodel("C0FFEE0000000009", 0, NULL);
    assert_int_equal(db_costmodel_put(fx->db, &bad, &fx->err), -1);
    assert_contains(fx->err.msg, "16 lowercase hex digits");
    bad = costmodel("c0ffee", 0, NULL);
    assert_int_equal(db_costmodel_put(fx->db, &bad, &fx->err), -1);
    assert_contains(fx->err.msg, "cost model id 'c0ffee'");
    bad = costmodel("c0ffee0000000009", 0, NULL);
    bad.weights = NULL;
    assert_int_equal(db_costmodel_put(fx->db, &bad, &fx->err), -1);
    assert_contains(fx->err.msg, "kind and weights are required");
    bad = costmodel("c0ffee0000000009", 999, NULL);
    assert_int_equal(db_costmodel_put(fx->db, &bad, &fx->err), -1);
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    assert_contains(fx->err.msg, "profile 999 is not stored");
    assert_contains(fx->err.msg, "storing cost model c0ffee0000000009");
    assert_int_equal(count_rows(fx->path, "cost_models"), 3);

    /* The list: newest first, no weights but their size. */
    DbCostModel *rows;
    int n;
    assert_int_equal(db_costmodel_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(rows[0].id, CM2);
    assert_string_equal(rows[1].id, CM3);
    assert_string_equal(rows[2].id, CM1);
    for (int i = 0; i < n; i++) assert_null(rows[i].weights);
    assert_int_equal(rows[0].nweights, 5);
    assert_int_equal(rows[2].nweights, sizeof WEIGHTS);
    assert_string_equal(rows[2].device, "Xeon 8480");
    assert_int_equal(rows[1].profile_id, prof);
    db_costmodel_list_free(rows, n);

    /* A cost model outlives its profile. */
    h = raw_open(fx->path);
    raw_exec(h, "DELETE FROM profiles");
    sqlite3_close(h);
    assert_int_equal(db_costmodel_get(fx->db, CM1, &got, &fx->err), 0);
    assert_int_equal(got.profile_id, 0);
    assert_memory_equal(got.weights, WEIGHTS, sizeof WEIGHTS);
    db_costmodel_free(&got);
}

static DbEstimate estimate(const char *plan_id, char *cost_model_id, int64_t profile_id,
                           char *created)
{
    DbEstimate e = {.cost_model_id = cost_model_id, .profile_id = profile_id,
                    .step_time_s = 0.25, .peak_mem_bytes = 3.5e10, .feasible = 1,
                    .json = "{\"step_time_s\":0.25}", .created = created};
    snprintf(e.plan_id, sizeof e.plan_id, "%s", plan_id);
    return e;
}

static void test_estimate_put_get_list(void **state)
{
    Fx *fx = *state;
    fill_weights();
    put_plans(fx);
    int64_t prof = begin_profile(fx);
    DbCostModel cm = costmodel(CM1, prof, NULL);
    assert_int_equal(db_costmodel_put(fx->db, &cm, &fx->err), 0);

    DbEstimate e1 = estimate(P1, NULL, 0, "2024-01-01T00:00:00.000Z");
    DbEstimate e2 = estimate(P1, CM1, prof, "2024-02-01T00:00:00.000Z");
    e2.step_time_s = 0.3125;
    e2.peak_mem_bytes = 9.0e10;
    e2.feasible = 0;
    e2.json = "{\"feasible\":false}";
    DbEstimate e3 = estimate(P2, NULL, prof, NULL);
    int64_t id1 = -1, id2 = -1, id3 = -1;
    assert_int_equal(db_estimate_put(fx->db, &e1, &id1, &fx->err), 0);
    assert_int_equal(db_estimate_put(fx->db, &e2, &id2, &fx->err), 0);
    assert_int_equal(db_estimate_put(fx->db, &e3, &id3, &fx->err), 0);
    assert_true(id1 > 0 && id2 > id1 && id3 > id2);
    assert_int_equal(db_estimate_put(fx->db, &e3, NULL, &fx->err), 0);   /* id not wanted */

    DbEstimate got;
    assert_int_equal(db_estimate_get(fx->db, id2, &got, &fx->err), 0);
    assert_int_equal(got.id, id2);
    assert_string_equal(got.plan_id, P1);
    assert_string_equal(got.cost_model_id, CM1);
    assert_int_equal(got.profile_id, prof);
    assert_true(got.step_time_s == 0.3125);
    assert_true(got.peak_mem_bytes == 9.0e10);
    assert_int_equal(got.feasible, 0);
    assert_string_equal(got.json, "{\"feasible\":false}");
    assert_string_equal(got.created, "2024-02-01T00:00:00.000Z");
    db_estimate_free(&got);
    db_estimate_free(&got);
    db_estimate_free(NULL);

    assert_int_equal(db_estimate_get(fx->db, id1, &got, &fx->err), 0);
    assert_null(got.cost_model_id);               /* analytical */
    assert_int_equal(got.profile_id, 0);
    assert_int_equal(got.feasible, 1);
    db_estimate_free(&got);
    assert_int_equal(db_estimate_get(fx->db, 999, &got, &fx->err), 1);
    assert_string_equal(fx->err.msg, "no estimate with id 999");
    assert_null(got.json);

    /* Per plan, newest first. */
    DbEstimate *rows;
    int n;
    assert_int_equal(db_estimate_list(fx->db, P1, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].id, id2);
    assert_int_equal(rows[1].id, id1);
    assert_string_equal(rows[0].cost_model_id, CM1);
    db_estimate_list_free(rows, n);
    assert_int_equal(db_estimate_list(fx->db, P2, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].plan_id, P2);
    db_estimate_list_free(rows, n);
    assert_int_equal(db_estimate_list(fx->db, "a0000000000000ff", &rows, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    assert_null(rows);
    db_estimate_list_free(rows, n);
    assert_int_equal(db_estimate_list(fx->db, "a000", &rows, &n, &fx->err), -1);
    assert_contains(fx->err.msg, "16 lowercase hex digits");

    /* Refused, storing nothing: a plan or cost model that is not stored, bad rows. */
    DbEstimate bad = estimate("a0000000000000ff", NULL, 0, NULL);
    assert_int_equal(db_estimate_put(fx->db, &bad, &id1, &fx->err), -1);
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    assert_contains(fx->err.msg, "plan a0000000000000ff");
    assert_contains(fx->err.msg, "store them before the estimate");
    bad = estimate(P1, "ffff000000000000", 0, NULL);
    assert_int_equal(db_estimate_put(fx->db, &bad, &id1, &fx->err), -1);
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    bad = estimate(P1, "cm1", 0, NULL);
    assert_int_equal(db_estimate_put(fx->db, &bad, &id1, &fx->err), -1);
    assert_contains(fx->err.msg, "cost model id 'cm1'");
    bad = estimate(P1, NULL, 0, NULL);
    bad.feasible = 2;
    assert_int_equal(db_estimate_put(fx->db, &bad, &id1, &fx->err), -1);
    assert_contains(fx->err.msg, "feasible is 2");
    bad.feasible = 1;
    bad.json = NULL;
    assert_int_equal(db_estimate_put(fx->db, &bad, &id1, &fx->err), -1);
    assert_contains(fx->err.msg, "json is required");
    assert_int_equal(count_rows(fx->path, "estimates"), 4);

    /* Deleting the cost model or the profile leaves the estimate without
     * them; deleting the plan's model takes the estimates along. */
    sqlite3 *h = raw_open(fx->path);
    raw_exec(h, "DELETE FROM cost_models; DELETE FROM profiles");
    sqlite3_close(h);
    assert_int_equal(db_estimate_get(fx->db, id2, &got, &fx->err), 0);
    assert_null(got.cost_model_id);
    assert_int_equal(got.profile_id, 0);
    db_estimate_free(&got);
    h = raw_open(fx->path);
    raw_exec(h, "DELETE FROM models");
    sqlite3_close(h);
    assert_int_equal(count_rows(fx->path, "estimates"), 0);
}

static void test_run_step_peak_mem(void **state)
{
    Fx *fx = *state;
    put_plans(fx);
    const DbRunStep steps[] = {
        {1, 1, 2.25, 0.5, 0.25, 0.125, 0.125, 1.5e9},
        {0, 0, 2.5, 0.5, 0.25, 0.125, 0.125, 7.5e10},
        {0, 1, 2.5, 0.5, 0.3, 0.1, 0.1, 0},
        {1, 0, 2.25, 0.5, 0.25, 0.125, 0.125, 123456789.0},
    };
    put_run(fx, R1, P1, steps, NELEMS(steps));

    DbRun r;
    DbRunStep *got;
    int n;
    assert_int_equal(db_run_get(fx->db, "7000", &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.id, R1);
    assert_int_equal(n, 4);
    /* by step, then rank */
    const int order[] = {1, 2, 3, 0};
    for (int i = 0; i < n; i++) {
        const DbRunStep *w = &steps[order[i]];
        assert_int_equal(got[i].step, w->step);
        assert_int_equal(got[i].rank, w->rank);
        assert_true(got[i].loss == w->loss);
        assert_true(got[i].compute_s == w->compute_s);
        assert_true(got[i].idle_s == w->idle_s);
        assert_true(got[i].peak_mem_bytes == w->peak_mem_bytes);
    }
    free(got);
    db_run_free(&r);
}

/* The searches whose process has ended (a dead child's, one stored before
 * searches said their process) are marked interrupted; a live process's
 * and another host's are left. With own, only this process's. */
static void test_search_dead_process(void **state)
{
    Fx *fx = *state;
    put_plans(fx);
    pid_t child = fork();
    if (child == 0) _exit(0);
    assert_true(child > 0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    const char *ids[] = { "5e00000000000001", "5e00000000000002", "5e00000000000003",
                          "5e00000000000004", "5e00000000000005", "5e00000000000006" };
    for (int k = 0; k < 6; k++) {
        DbSearch x = {.model_id = M1, .cluster_id = C1, .method = "mcmc",
                      .status = k == 5 ? "done" : "running", .devices = 8, .seed = 1};
        snprintf(x.id, sizeof x.id, "%s", ids[k]);
        assert_int_equal(db_search_put(fx->db, &x, &fx->err), 0);
    }
    db_close(fx->db);
    fx->db = NULL;
    sqlite3 *h = raw_open(fx->path);
    /* 1: stored by this process; 2: a dead child's; 3: a live process's
     * (this one's parent); 4: another host's; 5: no process said; 6: done */
    char sql[512];
    snprintf(sql, sizeof sql,
             "UPDATE searches SET pid = %d WHERE id = '%s';"
             "UPDATE searches SET pid = %d WHERE id = '%s';"
             "UPDATE searches SET host = 'another-host-entirely' WHERE id = '%s';"
             "UPDATE searches SET host = NULL, pid = NULL WHERE id = '%s';"
             "UPDATE searches SET pid = %d WHERE id = '%s';",
             (int)child, ids[1], (int)getppid(), ids[2], ids[3], ids[4], (int)child, ids[5]);
    raw_exec(h, sql);
    sqlite3_close(h);
    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) fail_msg("%s", fx->err.msg);

    int n = -1;
    assert_int_equal(db_search_interrupt(fx->db, true, &n, &fx->err), 0);
    assert_int_equal(n, 1);
    const char *want[] = { "interrupted", "running", "running", "running", "running", "done" };
    for (int k = 0; k < 6; k++) {
        DbSearch got;
        assert_int_equal(db_search_get(fx->db, ids[k], &got, &fx->err), 0);
        assert_string_equal(got.status, want[k]);
        db_search_free(&got);
    }
    assert_int_equal(db_search_interrupt(fx->db, false, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    const char *then[] = { "interrupted", "interrupted", "running", "running", "interrupted",
                           "done" };
    for (int k = 0; k < 6; k++) {
        DbSearch got;
        assert_int_equal(db_search_get(fx->db, ids[k], &got, &fx->err), 0);
        assert_string_equal(got.status, then[k]);
        db_search_free(&got);
    }
    /* resuming makes this process the one running it */
    assert_int_equal(db_search_move_status(fx->db, ids[1], "interrupted", "queued", &fx->err), 0);
    assert_int_equal(db_search_interrupt(fx->db, false, &n, &fx->err), 0);
    assert_int_equal(n, 1);     /* ... which a process that runs none takes for an earlier one */
    assert_int_equal(db_search_move_status(fx->db, ids[1], "interrupted", "queued", &fx->err), 0);
    assert_int_equal(db_search_interrupt(fx->db, true, &n, &fx->err), 0);
    assert_int_equal(n, 1);
}

/* A run a server submits: a row at once (queued), running, then the row
 * the run stores itself completes it, once; a run that does not store
 * itself is failed or interrupted, with why. */
static void test_run_submitted(void **state)
{
    Fx *fx = *state;
    put_plans(fx);
    DbRun q = {.backend = "cpu", .world = 2, .steps = 3};
    memcpy(q.id, R1, 17);
    memcpy(q.plan_id, P1, 17);
    assert_int_equal(db_run_submit(fx->db, &q, &fx->err), 0);
    assert_int_equal(db_run_submit(fx->db, &q, &fx->err), -1);      /* one row per id */
    assert_true(db_run_status_pending("queued") && db_run_status_pending("interrupted"));
    assert_false(db_run_status_pending("ok") || db_run_status_pending("failed") ||
                 db_run_status_pending(NULL));
    DbRun r;
    DbRunStep *got;
    int n;
    assert_int_equal(db_run_get(fx->db, R1, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "queued");
    assert_null(r.started);
    assert_null(r.finished);
    assert_int_equal(n, 0);
    db_run_free(&r);
    free(got);
    assert_int_equal(db_run_mark(fx->db, R1, "running", NULL, &fx->err), 0);
    assert_int_equal(db_run_get(fx->db, R1, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "running");
    assert_non_null(r.started);
    assert_null(r.finished);
    db_run_free(&r);
    free(got);
    /* in a listing, unfinished runs come first */
    put_run(fx, "7000000000000002", P1, NULL, 0);
    DbRun *rows;
    assert_int_equal(db_run_list(fx->db, &rows, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].id, R1);
    db_run_list_free(rows, n);
    /* the run's own row completes the submitted one */
    const DbRunStep steps[] = { {0, 0, 2.5, 0.5, 0.25, 0.125, 0.125, 0} };
    DbRun done = {.backend = "cpu", .world = 2, .steps = 3, .status = "ok"};
    memcpy(done.id, R1, 17);
    memcpy(done.plan_id, P1, 17);
    assert_int_equal(db_run_put(fx->db, &done, steps, 1, &fx->err), 0);
    assert_int_equal(db_run_get(fx->db, R1, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "ok");
    assert_non_null(r.started);                 /* kept from when it started */
    assert_non_null(r.finished);
    assert_null(r.error);
    assert_int_equal(n, 1);
    db_run_free(&r);
    free(got);
    /* once: the same id again, or a mark after it ended, changes nothing */
    assert_int_equal(db_run_put(fx->db, &done, steps, 1, &fx->err), -1);
    assert_non_null(strstr(fx->err.msg, "already stored"));
    assert_int_equal(db_run_mark(fx->db, R1, "failed", "late", &fx->err), 0);
    assert_int_equal(db_run_get(fx->db, R1, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "ok");
    assert_int_equal(n, 1);
    db_run_free(&r);
    free(got);
    /* a run of another plan cannot take the row */
    memcpy(q.id, "7000000000000003", 17);
    assert_int_equal(db_run_submit(fx->db, &q, &fx->err), 0);
    DbRun other = done;
    memcpy(other.id, q.id, 17);
    memcpy(other.plan_id, P2, 17);
    assert_int_equal(db_run_put(fx->db, &other, NULL, 0, &fx->err), -1);
    /* failed with why; a server that stops interrupts what is left */
    assert_int_equal(db_run_mark(fx->db, q.id, "failed", "mpirun: not found", &fx->err), 0);
    assert_int_equal(db_run_get(fx->db, q.id, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "failed");
    assert_string_equal(r.error, "mpirun: not found");
    assert_non_null(r.finished);
    db_run_free(&r);
    free(got);
    memcpy(q.id, "7000000000000004", 17);
    assert_int_equal(db_run_submit(fx->db, &q, &fx->err), 0);
    /* taken by a live server (this process's parent): neither a server
     * starting beside it nor one stopping interrupts it */
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE runs SET pid = %d WHERE id = '%s'", (int)getppid(), q.id);
    sqlite3 *h = raw_open(fx->path);
    raw_exec(h, sql);
    assert_int_equal(db_run_interrupt(fx->db, false, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(db_run_interrupt(fx->db, true, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    /* a row that names no server is an earlier one's */
    raw_exec(h, "UPDATE runs SET pid = NULL WHERE id = '7000000000000004'");
    sqlite3_close(h);
    assert_int_equal(db_run_interrupt(fx->db, false, &n, &fx->err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(db_run_get(fx->db, q.id, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "interrupted");
    assert_non_null(r.error);
    db_run_free(&r);
    free(got);
    /* a server stopping interrupts its own */
    memcpy(q.id, "7000000000000005", 17);
    assert_int_equal(db_run_submit(fx->db, &q, &fx->err), 0);
    assert_int_equal(db_run_interrupt(fx->db, true, &n, &fx->err), 0);
    assert_int_equal(n, 1);
    memcpy(q.id, "7000000000000004", 17);
    /* and the run, had it gone on after its server was killed, still stores itself */
    memcpy(done.id, q.id, 17);
    assert_int_equal(db_run_put(fx->db, &done, steps, 1, &fx->err), 0);
    assert_int_equal(db_run_get(fx->db, q.id, &r, &got, &n, &fx->err), 0);
    assert_string_equal(r.status, "ok");
    assert_null(r.error);
    db_run_free(&r);
    free(got);
}

/* Three rows: one with its estimate and run, one with neither and an
 * unknown measurement, one on the first plan again. */
static void validation_rows(DbValidationPlan rows[3], int64_t est)
{
    rows[0] = (DbValidationPlan){.name = "gpt-dp", .estimate_id = est, .predicted_s = 0.25,
                                 .measured_s = 0.27, .predicted_mem = 3.5e10,
                                 .measured_mem = 3.4e10};
    snprintf(rows[0].plan_id, sizeof rows[0].plan_id, "%s", P1);
    snprintf(rows[0].run_id, sizeof rows[0].run_id, "%s", R1);
    rows[1] = (DbValidationPlan){.name = "gpt-tp", .predicted_s = 0.5, .measured_s = NAN,
                                 .predicted_mem = 1e10, .measured_mem = NAN};
    snprintf(rows[1].plan_id, sizeof rows[1].plan_id, "%s", P2);
    rows[2] = (DbValidationPlan){.name = "gpt-dp-again", .predicted_s = 0.25,
                                 .measured_s = 0.26, .predicted_mem = 3.5e10,
                                 .measured_mem = 3.3e10};
    snprintf(rows[2].plan_id, sizeof rows[2].plan_id, "%s", P1);
    snprintf(rows[2].run_id, sizeof rows[2].run_id, "%s", R1);
}

static void test_validation_put_get_list(void **state)
{
    Fx *fx = *state;
    fill_weights();
    put_plans(fx);
    int64_t prof = begin_profile(fx);
    DbCostModel cm = costmodel(CM1, prof, NULL);
    assert_int_equal(db_costmodel_put(fx->db, &cm, &fx->err), 0);
    DbEstimate e = estimate(P1, CM1, prof, NULL);
    int64_t est;
    assert_int_equal(db_estimate_put(fx->db, &e, &est, &fx->err), 0);
    put_run(fx, R1, P1, NULL, 0);

    DbValidation v = {.suite = "default", .np = 4, .steps = 10, .profile_id = prof,
                      .cost_model_id = CM1, .mape_time = 0.08, .mape_mem = 0.03,
                      .kendall_tau = 0.6, .created = "2024-01-01T00:00:00.000Z"};
    DbValidationPlan rows[3];
    validation_rows(rows, est);
    int64_t id = -1;
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), 0);
    assert_true(id > 0);

    DbValidation got;
    DbValidationPlan *gr;
    int n;
    assert_int_equal(db_validation_get(fx->db, id, &got, &gr, &n, &fx->err), 0);
    assert_int_equal(got.id, id);
    assert_string_equal(got.suite, "default");
    assert_int_equal(got.np, 4);
    assert_int_equal(got.steps, 10);
    assert_int_equal(got.profile_id, prof);
    assert_string_equal(got.cost_model_id, CM1);
    assert_true(got.mape_time == 0.08 && got.mape_mem == 0.03 && got.kendall_tau == 0.6);
    assert_int_equal(got.nplans, 3);
    assert_string_equal(got.created, "2024-01-01T00:00:00.000Z");
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(gr[i].name, rows[i].name);
        assert_string_equal(gr[i].plan_id, rows[i].plan_id);
        assert_int_equal(gr[i].estimate_id, rows[i].estimate_id);
        assert_string_equal(gr[i].run_id, rows[i].run_id);
        assert_true(gr[i].predicted_s == rows[i].predicted_s);
        assert_true(gr[i].predicted_mem == rows[i].predicted_mem);
    }
    assert_int_equal(gr[0].estimate_id, est);
    assert_int_equal(gr[1].estimate_id, 0);
    assert_string_equal(gr[1].run_id, "");
    assert_true(isnan(gr[1].measured_s) && isnan(gr[1].measured_mem));   /* unknown stays so */
    assert_true(gr[0].measured_s == 0.27 && gr[2].measured_mem == 3.3e10);
    db_validation_plans_free(gr, n);
    db_validation_plans_free(NULL, 0);
    db_validation_free(&got);
    db_validation_free(&got);
    db_validation_free(NULL);
    sqlite3 *h = raw_open(fx->path);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM validation_plans WHERE estimate_id IS NULL"
                                " AND run_id IS NULL AND measured_s IS NULL"), 1);
    sqlite3_close(h);

    /* Rows not wanted; a validation with none, nothing known, no references. */
    assert_int_equal(db_validation_get(fx->db, id, &got, NULL, NULL, &fx->err), 0);
    assert_int_equal(got.nplans, 3);
    db_validation_free(&got);
    DbValidation empty = {.suite = "suites/small.json", .np = 2, .steps = 5,
                          .mape_time = NAN, .mape_mem = NAN, .kendall_tau = NAN,
                          .created = "2024-02-01T00:00:00.000Z"};
    int64_t id2;
    assert_int_equal(db_validation_put(fx->db, &empty, NULL, 0, &id2, &fx->err), 0);
    assert_int_equal(db_validation_get(fx->db, id2, &got, &gr, &n, &fx->err), 0);
    assert_int_equal(n, 0);
    assert_null(gr);
    assert_int_equal(got.profile_id, 0);
    assert_null(got.cost_model_id);
    assert_true(isnan(got.mape_time) && isnan(got.kendall_tau));
    db_validation_free(&got);

    DbValidation *list;
    assert_int_equal(db_validation_list(fx->db, &list, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(list[0].id, id2);            /* newest first */
    assert_int_equal(list[1].id, id);
    assert_int_equal(list[0].nplans, 0);
    assert_int_equal(list[1].nplans, 3);
    assert_string_equal(list[1].suite, "default");
    db_validation_list_free(list, n);

    gr = (DbValidationPlan *)1;
    n = -1;
    assert_int_equal(db_validation_get(fx->db, 999, &got, &gr, &n, &fx->err), 1);
    assert_string_equal(fx->err.msg, "no validation with id 999");
    assert_null(gr);
    assert_int_equal(n, 0);
    assert_null(got.suite);

    /* Deleting an estimate or a run leaves the row without it; deleting a
     * plan takes its rows; deleting the validation takes the rest. */
    h = raw_open(fx->path);
    raw_exec(h, "DELETE FROM estimates; DELETE FROM runs;"
                "DELETE FROM plans WHERE id = '" P2 "'");
    sqlite3_close(h);
    assert_int_equal(db_validation_get(fx->db, id, &got, &gr, &n, &fx->err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(got.nplans, 2);
    assert_string_equal(gr[0].name, "gpt-dp");
    assert_string_equal(gr[1].name, "gpt-dp-again");
    assert_int_equal(gr[0].estimate_id, 0);
    assert_string_equal(gr[0].run_id, "");
    db_validation_plans_free(gr, n);
    db_validation_free(&got);
    h = raw_open(fx->path);
    raw_exec(h, "DELETE FROM validations");
    assert_int_equal(raw_int(h, "SELECT count(*) FROM validation_plans"), 0);
    sqlite3_close(h);
}

/* A validation with one bad row stores nothing: neither the validation nor
 * its good rows; and the connection is left with no transaction open. */
static void test_validation_all_or_nothing(void **state)
{
    Fx *fx = *state;
    put_plans(fx);
    put_run(fx, R1, P1, NULL, 0);
    DbValidation v = {.suite = "default", .np = 2, .steps = 3};
    DbValidationPlan rows[3];
    validation_rows(rows, 0);
    int64_t id = -1;

    snprintf(rows[2].plan_id, sizeof rows[2].plan_id, "eeee000000000000");
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    assert_contains(fx->err.msg, "row 2 (gpt-dp-again)");
    assert_contains(fx->err.msg, "plan eeee000000000000");
    assert_contains(fx->err.msg, "storing a validation of suite 'default'");
    assert_int_equal(count_rows(fx->path, "validations"), 0);
    assert_int_equal(count_rows(fx->path, "validation_plans"), 0);
    snprintf(rows[2].plan_id, sizeof rows[2].plan_id, "%s", P1);

    rows[1].estimate_id = 12345;                  /* an estimate that is not stored */
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "row 1 (gpt-tp)");
    assert_contains(fx->err.msg, "estimate 12345");
    rows[1].estimate_id = 0;

    snprintf(rows[1].run_id, sizeof rows[1].run_id, "run-1");
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "row 1 (gpt-tp)");
    assert_contains(fx->err.msg, "run id 'run-1'");
    rows[1].run_id[0] = '\0';
    rows[0].name = NULL;
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "row 0: name is required");
    rows[0].name = "gpt-dp";

    v.cost_model_id = "ffff000000000000";
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "FOREIGN KEY constraint failed");
    assert_contains(fx->err.msg, "cost model ffff000000000000");
    v.cost_model_id = NULL;
    v.profile_id = 77;
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "profile 77");
    v.profile_id = 0;
    v.suite = NULL;
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), -1);
    assert_string_equal(fx->err.msg, "storing a validation: suite is required");
    v.suite = "default";
    assert_int_equal(db_validation_put(fx->db, &v, NULL, 2, &id, &fx->err), -1);
    assert_contains(fx->err.msg, "array is NULL");
    assert_int_equal(count_rows(fx->path, "validations"), 0);
    assert_int_equal(count_rows(fx->path, "validation_plans"), 0);
    assert_int_equal(id, -1);

    /* The same rows, all good, go in. */
    assert_int_equal(db_validation_put(fx->db, &v, rows, 3, &id, &fx->err), 0);
    assert_int_equal(count_rows(fx->path, "validations"), 1);
    assert_int_equal(count_rows(fx->path, "validation_plans"), 3);
}

/* A database made by version 2 (the current schema with migration 3 taken
 * back out by hand) migrates on open, keeping its cost models and runs, which
 * get the new columns' defaults. */
static void test_migration_from_v2(void **state)
{
    Fx *fx = *state;
    db_close(fx->db);
    fx->db = NULL;
    sqlite3 *h = raw_open(fx->path);
    take_back_v3(h);
    raw_exec(h,
        "INSERT INTO models (id, name, json) VALUES ('" M1 "', 'gpt', '{}');"
        "INSERT INTO clusters (id, name, json, ndevices) VALUES ('" C1 "', 'dgx', '{}', 8);"
        "INSERT INTO strategies (id, json) VALUES ('" S1 "', '{}');"
        "INSERT INTO plans (id, model_id, cluster_id, strategy_id, world)"
        "  VALUES ('" P1 "', '" M1 "', '" C1 "', '" S1 "', 8);"
        "INSERT INTO profiles (id, host, device, backend) VALUES (1, 'h', 'cpu', 'cpu');"
        "INSERT INTO cost_models (id, profile_id, kind, weights, heldout_error)"
        "  VALUES ('" CM1 "', 1, 'mlp', x'00ff10', 0.2);"
        "INSERT INTO runs (id, plan_id, backend, world, steps, status)"
        "  VALUES ('" R1 "', '" P1 "', 'cpu', 8, 1, 'ok');"
        "INSERT INTO run_steps (run_id, step, rank, loss, step_s)"
        "  VALUES ('" R1 "', 0, 0, 2.5, 0.5);"
        "INSERT INTO searches (id, model_id, cluster_id, method, status)"
        "  VALUES ('5e00000000000009', '" M1 "', '" C1 "', 'mcmc', 'done');");
    assert_int_equal(raw_int(h, "SELECT count(*) FROM pragma_table_info('cost_models')"), 6);
    assert_int_equal(raw_int(h, "SELECT count(*) FROM pragma_table_info('run_steps')"), 8);
    sqlite3_close(h);

    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) fail_msg("%s", fx->err.msg);
    assert_int_equal(db_schema_version(fx->db), LATEST);

    /* a search stored before migration 4 reads back with its defaults */
    DbSearch sr;
    assert_int_equal(db_search_get(fx->db, "5e00000000000009", &sr, &fx->err), 0);
    assert_string_equal(sr.status, "done");
    assert_int_equal(sr.devices, 0);
    assert_int_equal(sr.seed, 0);
    assert_null(sr.result_json);
    db_search_free(&sr);

    DbCostModel cm;
    assert_int_equal(db_costmodel_get(fx->db, CM1, &cm, &fx->err), 0);
    assert_int_equal(cm.profile_id, 1);
    assert_int_equal(cm.nweights, 3);
    assert_memory_equal(cm.weights, "\x00\xff\x10", 3);
    assert_true(cm.heldout_error == 0.2);
    assert_null(cm.metrics_json);
    assert_null(cm.device);
    assert_int_equal(cm.seed, 0);
    assert_int_equal(cm.with_runs, 0);
    db_costmodel_free(&cm);

    DbRun r;
    DbRunStep *steps;
    int n;
    assert_int_equal(db_run_get(fx->db, R1, &r, &steps, &n, &fx->err), 0);
    assert_int_equal(n, 1);
    assert_true(steps[0].loss == 2.5 && steps[0].step_s == 0.5);
    assert_true(steps[0].peak_mem_bytes == 0);
    free(steps);
    db_run_free(&r);

    /* The new tables work on the migrated file. */
    DbEstimate e = estimate(P1, CM1, 1, NULL);
    int64_t est;
    assert_int_equal(db_estimate_put(fx->db, &e, &est, &fx->err), 0);
    DbValidation v = {.suite = "default", .np = 8, .steps = 1, .cost_model_id = CM1};
    DbValidationPlan row = {.name = "gpt", .estimate_id = est};
    snprintf(row.plan_id, sizeof row.plan_id, "%s", P1);
    snprintf(row.run_id, sizeof row.run_id, "%s", R1);
    int64_t vid;
    assert_int_equal(db_validation_put(fx->db, &v, &row, 1, &vid, &fx->err), 0);
    db_close(fx->db);

    /* Opening again changes nothing. */
    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) fail_msg("%s", fx->err.msg);
    assert_int_equal(db_schema_version(fx->db), LATEST);
    DbValidation got;
    assert_int_equal(db_validation_get(fx->db, vid, &got, NULL, NULL, &fx->err), 0);
    assert_int_equal(got.nplans, 1);
    db_validation_free(&got);
}

/* A profile stored before migration 5 reads back with no build, and an
 * estimate from it warns that nothing says which kernels measured it. */
/* A store of version 5 (searches without their options) opens at the
 * latest version, its searches there with no options (NULL). */
static void test_migration_from_v5(void **state)
{
    Fx *fx = *state;
    put_plans(fx);
    DbSearch x = {.id = "5e00000000000005", .model_id = M1, .cluster_id = C1, .method = "mcmc",
                  .status = "interrupted", .devices = 8, .seed = 3};
    assert_int_equal(db_search_put(fx->db, &x, &fx->err), 0);
    db_close(fx->db);
    fx->db = NULL;
    sqlite3 *h = raw_open(fx->path);
    take_back_v6(h);
    sqlite3_close(h);
    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) fail_msg("%s", fx->err.msg);
    assert_int_equal(db_schema_version(fx->db), LATEST);
    DbSearch got;
    assert_int_equal(db_search_get(fx->db, x.id, &got, &fx->err), 0);
    assert_string_equal(got.method, "mcmc");
    assert_null(got.options_json);
    db_search_free(&got);
}

static void test_migration_from_v4(void **state)
{
    Fx *fx = *state;
    db_close(fx->db);
    fx->db = NULL;
    sqlite3 *h = raw_open(fx->path);
    take_back_v5(h);
    raw_exec(h, "INSERT INTO profiles (id, host, device, backend) VALUES (1, 'h', 'cpu', 'cpu');");
    sqlite3_close(h);
    fx->db = db_open(fx->path, &fx->err);
    if (!fx->db) fail_msg("%s", fx->err.msg);
    assert_int_equal(db_schema_version(fx->db), LATEST);
    DbProfile got;
    assert_int_equal(db_profile_get(fx->db, 1, &got, NULL, NULL, NULL, NULL, NULL, NULL,
                                    &fx->err), 0);
    assert_string_equal(got.host, "h");
    assert_null(got.build_json);
    char w[512];
    assert_int_equal(build_check_profile(got.build_json, got.id, w, sizeof w), 1);
    assert_non_null(strstr(w, "profile 1 does not say which build of the kernels measured it"));
    db_profile_free(&got);

    /* this build's own identity passes; another's is named */
    char js[128];
    snprintf(js, sizeof js, "{\"kernels\":\"%s\"}", build_kernels_id());
    assert_int_equal(build_check_profile(js, 7, w, sizeof w), 0);
    assert_string_equal(w, "");
    assert_int_equal(build_check_profile("{\"kernels\":\"ffffffffffff\"}", 7, w, sizeof w), 1);
    assert_non_null(strstr(w, "profile 7 was measured by another build of the kernels "
                              "(ffffffffffff; this build is"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_new_file, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_keys_enforced, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_two_handles_share_the_file, setup_open, teardown),
        cmocka_unit_test(test_memory_database),
        cmocka_unit_test_setup_teardown(test_newer_schema_rejected, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_database_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_existing_leaves_files_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unopenable_paths_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_model_put_get_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_list_empty, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_list_newest_first, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_put_is_idempotent, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_put_rejects_bad_rows, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_put_get, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_plan_put_get_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_prefix_lookup, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_plan_put_rolls_back, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_cascades, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_round_trip, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_finished_refuses_writes, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_batch_all_or_nothing, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_dead_process, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_put_ops, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_interrupted, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_profile_migration_from_v1, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_costmodel_put_get_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_estimate_put_get_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_run_step_peak_mem, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_search_put_events_finish, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_search_dead_process, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_run_submitted, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_validation_put_get_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_validation_all_or_nothing, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_migration_from_v2, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_migration_from_v5, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_migration_from_v4, setup_open, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
