/*
 * test_db.c — db/: opening and migrating, rows in and out, id prefixes,
 * transactions that store all or nothing, and the files db_open refuses.
 *
 * Each test gets its own temporary directory (mkdtemp) holding strata.db;
 * a few checks look at the file through a second, raw SQLite connection.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "db/db.h"

/* The number of migrations in db.c; bump it with each new migration. */
#define LATEST 1

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
                            "search_events", "runs", "run_steps"};
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
