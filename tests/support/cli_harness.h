/*
 * cli_harness.h — running the `strata` binary from a cmocka test and checking
 * what it said: the harness test_cli.c and test_run.c share.
 *
 * The binary is STRATA_BIN and the data STRATA_ROOT (the Makefile exports
 * both). Each run is fork + execv(p) with an argv array (no shell), stdout and
 * stderr captured in files of one mkdtemp directory that is also the child's
 * cwd, so a default strata.db can only land there; the directory is removed at
 * the end (STRATA_KEEP_TMP=1 keeps it). Every child runs in its own process
 * group under a hard deadline: past it the whole group (and whatever it
 * started, mpirun's ranks included) gets SIGTERM, then SIGKILL, and the test
 * fails, so a hung command or a deadlocked collective cannot hang CI. A crash
 * or a sanitizer report in the child fails the test at once.
 *
 * Memory: a failed assertion leaves a test by longjmp, past its frees. What a
 * test holds is therefore tracked, and harness_release_all, the teardown of
 * every test, frees what is left, so a sanitizer build reports only real leaks.
 *
 * Use: group setup calls harness_setup, group teardown harness_teardown, and
 * every test has harness_release_all as its teardown. Tests are written in the
 * short names at the end of this header (tp, STRATA, EXPECT_RC, ...).
 */
#ifndef STRATA_TESTS_CLI_HARNESS_H
#define STRATA_TESTS_CLI_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

/* What one run of a command left behind. */
typedef struct {
    int rc;                      /* exit status; 128 + signal when killed */
    bool timed_out;              /* killed at the deadline */
    double secs;                 /* wall time */
    char *out, *err;             /* all of stdout and stderr, NUL-terminated (tracked) */
    char cmd[4096];              /* the command line, for failure messages */
} Res;

/* How to run a command other than the default: all-zero (or NULL) means
 * strata, the inherited environment, the suite's deadline, no signal expected. */
typedef struct {
    const char *prog;            /* NULL: strata; else a program looked up in PATH */
    const char *env;             /* NULL or "NAME=VALUE" set in the child */
    int deadline_s;              /* 0: the suite's deadline (HarnessConfig) */
    bool may_be_killed;          /* a 128+signal exit is expected, not a crash */
} RunOpts;

typedef struct {
    const char *name;            /* "test_cli": prefixes setup messages, names the temp dir */
    int deadline_s;              /* seconds any one command may take (RunOpts can override);
                                  * 0: 300 */
    const char *lsan_supp;       /* NULL, or a LeakSanitizer suppressions file under
                                  * STRATA_ROOT for the children (LSAN_OPTIONS) */
} HarnessConfig;

/* --- suite lifecycle --------------------------------------------------------- */

/* Reads STRATA_BIN and STRATA_ROOT and makes the temporary directory. Returns
 * 0, or -1 after printing why (a cmocka group setup returns it as is). The
 * strings in cfg must outlive the suite. */
int harness_setup(const HarnessConfig *cfg);
/* Removes the temporary directory (or says where it is kept) and frees every
 * path tp()/rp() handed out. Returns 0. */
int harness_teardown(void);
/* The strata binary (absolute) and the temporary directory; the harness owns both. */
const char *harness_bin(void);
const char *harness_dir(void);

/* --- memory a test holds ----------------------------------------------------- */

/* Hands p (malloc'd, or a cJSON tree when json) to the harness and returns it;
 * NULL passes through. The harness frees it at the test's teardown unless
 * harness_release frees it first. */
void *harness_track(void *p, bool json);
/* Frees p, which must be tracked (cJSON_Delete for JSON), and forgets it; NULL is fine. */
void harness_release(void *p);
/* A test's teardown: frees all that is still tracked. Returns 0. */
int harness_release_all(void **state);

/* --- files and paths ---------------------------------------------------------- */

/* A path in the temporary directory, and one in the repository (clusters/...,
 * models/...). The harness owns the string; valid until harness_teardown. */
const char *harness_tmp_path(const char *name);
const char *harness_root_path(const char *name);
/* The whole file, NUL-terminated, its length into *len when len is not NULL;
 * NULL when it cannot be opened. Caller frees (or tracks). */
char *harness_slurp(const char *path, size_t *len);
/* Writes text to path, failing the test on any error. */
void harness_write_file(const char *path, const char *text);
bool harness_exists(const char *path);

/* --- running commands --------------------------------------------------------- */

/* Runs o->prog (strata by default) with args (NULL-terminated, without the
 * program name) and fills r, releasing what r held before; r->out and r->err
 * are tracked. Fails the test (at file:line) when the deadline passes, the
 * command crashes or a sanitizer reports an error. o may be NULL. */
void harness_run_at(const char *file, int line, Res *r, const RunOpts *o,
                    const char *const *args);
/* Releases r->out and r->err and sets them to NULL; r itself stays the caller's. */
void harness_res_free(Res *r);
/* Prints r (command, exit, time, head of stdout and stderr) as cmocka's error output. */
void harness_dump(const Res *r);

/* --- checks: each fails the test at file:line and prints the run ------------------ */

void harness_expect_rc_at(const char *file, int line, const Res *r, int want);
/* `text` (stdout or stderr of r, named by what) contains every NULL-terminated needle. */
void harness_expect_has_at(const char *file, int line, const Res *r, const char *what,
                           const char *text, const char *const *needles);
/* ... and does not contain needle. */
void harness_expect_lacks_at(const char *file, int line, const Res *r, const char *what,
                             const char *text, const char *needle);
/* The file at path still holds exactly the nbefore bytes of before. */
void harness_expect_same_bytes_at(const char *file, int line, const char *path,
                                  const char *before, size_t nbefore);
void harness_expect_absent_at(const char *file, int line, const char *path);
/* Parses r's stdout as JSON, tracked (release it, or leave it to the teardown). */
cJSON *harness_json_out_at(const char *file, int line, const Res *r);
/* j[key], which must exist and pass the cJSON type test `is` (named by type).
 * Borrowed from j. */
const cJSON *harness_jget_at(const char *file, int line, const cJSON *j, const char *key,
                             cJSON_bool (*is)(const cJSON *), const char *type);
/* The 16-hex-digit id that follows `after` in text, into id[17]. */
void harness_id_after(const char *text, const char *after, char id[17]);

/* --- the short names tests are written in ------------------------------------- */

#define tp(name) harness_tmp_path(name)
#define rp(name) harness_root_path(name)
#define track(p) harness_track((p), false)
#define track_json(j) ((cJSON *)harness_track((j), true))
#define release(p) harness_release(p)
#define slurp(path, len) harness_slurp((path), (len))
#define write_file(path, text) harness_write_file((path), (text))
#define exists(path) harness_exists(path)
#define res_free(r) harness_res_free(r)
#define dump(r) harness_dump(r)
#define id_after(text, after, id) harness_id_after((text), (after), (id))

/* STRATA(&r, "model", "build", ...): runs strata; RUNV with an argv array;
 * RUNO with RunOpts. */
#define STRATA(r, ...) \
    harness_run_at(__FILE__, __LINE__, (r), NULL, (const char *const[]){ __VA_ARGS__, NULL })
#define RUNV(r, argv) harness_run_at(__FILE__, __LINE__, (r), NULL, (argv))
#define RUNO(r, opts, ...) \
    harness_run_at(__FILE__, __LINE__, (r), (opts), (const char *const[]){ __VA_ARGS__, NULL })

#define EXPECT_RC(r, want) harness_expect_rc_at(__FILE__, __LINE__, (r), (want))
#define EXPECT_ERR(r, ...)                                                                         \
    harness_expect_has_at(__FILE__, __LINE__, (r), "stderr", (r)->err,                             \
                          (const char *const[]){ __VA_ARGS__, NULL })
#define EXPECT_OUT(r, ...)                                                                         \
    harness_expect_has_at(__FILE__, __LINE__, (r), "stdout", (r)->out,                             \
                          (const char *const[]){ __VA_ARGS__, NULL })
#define EXPECT_NOT_OUT(r, s) \
    harness_expect_lacks_at(__FILE__, __LINE__, (r), "stdout", (r)->out, (s))
#define EXPECT_SAME_BYTES(path, before, n) \
    harness_expect_same_bytes_at(__FILE__, __LINE__, (path), (before), (n))
#define EXPECT_ABSENT(path) harness_expect_absent_at(__FILE__, __LINE__, (path))

#define JSON_OUT(r) harness_json_out_at(__FILE__, __LINE__, (r))
#define JNUM(j, key) \
    (harness_jget_at(__FILE__, __LINE__, (j), (key), cJSON_IsNumber, "a number")->valuedouble)
#define JSTR(j, key) \
    (harness_jget_at(__FILE__, __LINE__, (j), (key), cJSON_IsString, "a string")->valuestring)
#define JOBJ(j, key) harness_jget_at(__FILE__, __LINE__, (j), (key), cJSON_IsObject, "an object")
#define JARR(j, key) harness_jget_at(__FILE__, __LINE__, (j), (key), cJSON_IsArray, "an array")

#endif
