/*
 * cli_harness.c — running the `strata` binary from a cmocka test and checking
 * what it said; see cli_harness.h for the model (temporary directory, tracked
 * memory, deadlines, process groups).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "ir/util.h"
#include "tests/support/cli_harness.h"

/* A sanitizer build of strata reports with this exit code (set through
 * ASAN_OPTIONS/UBSAN_OPTIONS in the child), so that a crash is never mistaken
 * for the ordinary runtime failure 1. */
#define SAN_EXIT 86

/* ----------------------------------------------------------------------------
 * State of the suite: where things are */

static struct {
    const char *name;            /* the suite, for its messages */
    int deadline_s;              /* default limit of one command */
    const char *bin;             /* STRATA_BIN */
    const char *root;            /* STRATA_ROOT */
    char dir[PATH_MAX];          /* temporary directory, cwd of every run */
    const char *outp, *errp;     /* where a run's stdout and stderr go */
    char **strings;              /* paths handed out by tp()/rp(), freed at the end */
    int nstrings, capstrings;
    char lsan[PATH_MAX + 128];   /* LSAN_OPTIONS for the children; "" leaves it alone */
} G;

const char *harness_bin(void) { return G.bin; }
const char *harness_dir(void) { return G.dir; }

/* Takes s (malloc'd) until harness_teardown. */
static char *keep(char *s)
{
    if (G.nstrings == G.capstrings) {
        G.capstrings = G.capstrings ? 2 * G.capstrings : 64;
        G.strings = realloc(G.strings, (size_t)G.capstrings * sizeof *G.strings);
        assert_non_null(G.strings);
    }
    return G.strings[G.nstrings++] = s;
}

static const char *pathf(const char *base, const char *name)
{
    size_t n = strlen(base) + strlen(name) + 2;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s/%s", base, name);
    return keep(s);
}

const char *harness_tmp_path(const char *name) { return pathf(G.dir, name); }
const char *harness_root_path(const char *name) { return pathf(G.root, name); }

int harness_setup(const HarnessConfig *cfg)
{
    G.name = cfg->name;
    G.deadline_s = cfg->deadline_s > 0 ? cfg->deadline_s : 300;
    G.bin = getenv("STRATA_BIN");
    G.root = getenv("STRATA_ROOT");
    if (!G.bin || !G.bin[0] || !G.root || !G.root[0]) {
        print_error("%s: set STRATA_BIN (the strata binary, absolute path) and STRATA_ROOT "
                    "(the repository root); `make test` exports both\n", G.name);
        return -1;
    }
    if (G.bin[0] != '/' || access(G.bin, X_OK) != 0) {
        print_error("%s: STRATA_BIN=%s is not an executable absolute path\n", G.name, G.bin);
        return -1;
    }
    /* "test_cli" -> $TMPDIR/strata-test-cli-XXXXXX */
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(G.dir, sizeof G.dir, "%s/strata-", tmp && tmp[0] ? tmp : "/tmp");
    for (const char *c = G.name; *c && n < (int)sizeof G.dir - 8; c++)
        G.dir[n++] = *c == '_' ? '-' : *c;
    snprintf(G.dir + n, sizeof G.dir - (size_t)n, "-XXXXXX");
    if (!mkdtemp(G.dir)) {
        print_error("%s: mkdtemp %s: %s\n", G.name, G.dir, strerror(errno));
        G.dir[0] = 0;
        return -1;
    }
    G.outp = harness_tmp_path(".stdout");
    G.errp = harness_tmp_path(".stderr");
    G.lsan[0] = 0;
    if (cfg->lsan_supp) {
        /* fast_unwind_on_malloc=0: suppressions match frames of libraries that
         * are dlclosed before the leak check only in full stacks */
        const char *old = getenv("LSAN_OPTIONS");
        snprintf(G.lsan, sizeof G.lsan,
                 "%s%ssuppressions=%s/%s:print_suppressions=0:fast_unwind_on_malloc=0",
                 old ? old : "", old && old[0] ? ":" : "", G.root, cfg->lsan_supp);
    }
    return 0;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

int harness_teardown(void)
{
    const char *keep_tmp = getenv("STRATA_KEEP_TMP");
    if (keep_tmp && keep_tmp[0] && strcmp(keep_tmp, "0") != 0)
        fprintf(stderr, "%s: kept %s\n", G.name, G.dir);
    else if (G.dir[0])
        nftw(G.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < G.nstrings; i++) free(G.strings[i]);
    free(G.strings);
    G.strings = NULL;
    G.nstrings = G.capstrings = 0;
    return 0;
}

/* ----------------------------------------------------------------------------
 * Memory a test holds */

#define LIVE_MAX 256
static struct {
    void *p;
    bool json;
} live[LIVE_MAX];
static int nlive;

void *harness_track(void *p, bool json)
{
    if (!p) return NULL;
    assert_true(nlive < LIVE_MAX);
    live[nlive].p = p;
    live[nlive++].json = json;
    return p;
}

void harness_release(void *p)
{
    if (!p) return;
    for (int i = nlive - 1; i >= 0; i--) {
        if (live[i].p != p) continue;
        if (live[i].json) cJSON_Delete(p);
        else free(p);
        live[i] = live[--nlive];
        return;
    }
    fail_msg("release of an untracked pointer");
}

int harness_release_all(void **state)
{
    (void)state;
    while (nlive) harness_release(live[nlive - 1].p);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Files */

char *harness_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n - 1 == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

void harness_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

bool harness_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ----------------------------------------------------------------------------
 * Running commands */

void harness_res_free(Res *r)
{
    harness_release(r->out);
    harness_release(r->err);
    r->out = r->err = NULL;
}

void harness_dump(const Res *r)
{
    print_error("  $ %s\n  exit %d%s after %.1f s\n  --- stdout\n%.4000s\n  --- stderr\n%.4000s\n",
                r->cmd, r->rc, r->timed_out ? " (killed at the deadline)" : "", r->secs,
                r->out ? r->out : "", r->err ? r->err : "");
}

/* The processes below root (its children, theirs, ...), from /proc, into out;
 * returns how many. mpirun puts each rank in a process group of its own, so
 * killing the run's group alone could leave ranks behind. */
static int descendants(pid_t root, pid_t *out, int max)
{
    enum { NP = 4096 };
    static pid_t pid[NP], ppid[NP];
    int np = 0;
    DIR *d = opendir("/proc");
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) && np < NP) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = 0;
        const char *p = strrchr(buf, ')');     /* the command name may hold anything */
        int pp;
        if (!p || sscanf(p + 1, " %*c %d", &pp) != 1) continue;
        pid[np] = (pid_t)atoi(e->d_name);
        ppid[np++] = (pid_t)pp;
    }
    closedir(d);
    int n = 0;
    out[n++] = root;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < np && n < max; k++)
            if (ppid[k] == out[i]) out[n++] = pid[k];
    for (int i = 1; i < n; i++) out[i - 1] = out[i];
    return n - 1;
}

void harness_run_at(const char *file, int line, Res *r, const RunOpts *o, const char *const *args)
{
    harness_res_free(r);
    r->timed_out = false;
    const char *argv[64];
    int n = 0;
    const char *prog = o && o->prog ? o->prog : G.bin;
    const char *shown = o && o->prog ? o->prog : "strata";
    argv[n++] = prog;
    int len = snprintf(r->cmd, sizeof r->cmd, "%s%s%s", o && o->env ? o->env : "",
                       o && o->env ? " " : "", shown);
    for (int i = 0; args[i]; i++) {
        assert_true(n < 63);
        argv[n++] = args[i];
        if (len < (int)sizeof r->cmd)
            len += snprintf(r->cmd + len, sizeof r->cmd - (size_t)len, " %s", args[i]);
    }
    argv[n] = NULL;

    int fo = open(G.outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int fe = open(G.errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fo >= 0 && fe >= 0);
    fflush(stdout);
    fflush(stderr);
    double t0 = now_s();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0 || chdir(G.dir) != 0)
            _exit(126);
        /* intercept_tls_get_addr=0: with it on, LeakSanitizer (GCC 12's, on
         * glibc 2.36) records a bogus dynamic TLS block in a one-rank `strata
         * run` (MPI started without mpirun) whose process leads its own group,
         * as here, and its tracer crashes reading it at exit ("Tracer caught
         * signal 11"), every time: nothing is checked and the exit status is
         * lost. Off, dynamic TLS is not scanned for pointers; the leak check
         * still runs. */
        char opt[1024];
        const char *vars[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS" };
        const char *extra[] = { ":intercept_tls_get_addr=0", "" };
        for (int i = 0; i < 2; i++) {
            const char *old = getenv(vars[i]);
            snprintf(opt, sizeof opt, "%s%sexitcode=%d%s", old ? old : "",
                     old && old[0] ? ":" : "", SAN_EXIT, extra[i]);
            setenv(vars[i], opt, 1);
        }
        if (G.lsan[0]) setenv("LSAN_OPTIONS", G.lsan, 1);
        /* never mistake this test's own environment for an MPI job's */
        unsetenv("OMPI_COMM_WORLD_SIZE");
        unsetenv("PMI_SIZE");
        unsetenv("PMIX_RANK");
        if (o && o->env) putenv((char *)o->env);
        if (o && o->prog) execvp(prog, (char *const *)argv);
        else execv(prog, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);           /* either side may win the race; both ask the same */
    close(fo);
    close(fe);
    int deadline = o && o->deadline_s ? o->deadline_s : G.deadline_s;
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) break;
        if (w < 0) {
            assert_int_equal(errno, EINTR);
            continue;
        }
        if (now_s() - t0 > deadline) {
            r->timed_out = true;
            pid_t below[256];
            int nb = descendants(pid, below, 256);
            kill(-pid, SIGTERM);  /* mpirun passes it on to its ranks */
            double t1 = now_s();
            while (waitpid(pid, &st, WNOHANG) == 0 && now_s() - t1 < 5) usleep(50 * 1000);
            kill(-pid, SIGKILL);
            waitpid(pid, &st, 0);
            for (int i = 0; i < nb; i++) kill(below[i], SIGKILL);   /* what outlived it */
            break;
        }
        /* most commands end within milliseconds: poll fast at first, then
         * gently for the long training runs */
        usleep(now_s() - t0 < 1.0 ? 1000 : 10 * 1000);
    }
    r->secs = now_s() - t0;
    r->rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r->out = harness_track(harness_slurp(G.outp, NULL), false);
    r->err = harness_track(harness_slurp(G.errp, NULL), false);
    assert_non_null(r->out);
    assert_non_null(r->err);
    if (r->timed_out) {
        print_error("%s:%d: still running after %d s: killed\n", file, line, deadline);
        harness_dump(r);
        _fail(file, line);
    }
    bool killed = r->rc >= 128 && o && o->may_be_killed;
    if (r->rc == SAN_EXIT || (r->rc >= 126 && !killed) || strstr(r->err, "Sanitizer") ||
        strstr(r->err, "runtime error:")) {
        print_error("%s:%d: %s crashed or a sanitizer reported an error\n", file, line, shown);
        harness_dump(r);
        _fail(file, line);
    }
}

/* ----------------------------------------------------------------------------
 * Checks */

void harness_expect_rc_at(const char *file, int line, const Res *r, int want)
{
    if (r->rc == want) return;
    print_error("%s:%d: exit %d, expected %d\n", file, line, r->rc, want);
    harness_dump(r);
    _fail(file, line);
}

void harness_expect_has_at(const char *file, int line, const Res *r, const char *what,
                           const char *text, const char *const *needles)
{
    for (int i = 0; needles[i]; i++) {
        if (strstr(text, needles[i])) continue;
        print_error("%s:%d: %s lacks \"%s\"\n", file, line, what, needles[i]);
        harness_dump(r);
        _fail(file, line);
    }
}

void harness_expect_lacks_at(const char *file, int line, const Res *r, const char *what,
                             const char *text, const char *needle)
{
    if (!strstr(text, needle)) return;
    print_error("%s:%d: %s has \"%s\", but should not\n", file, line, what, needle);
    harness_dump(r);
    _fail(file, line);
}

void harness_expect_same_bytes_at(const char *file, int line, const char *path,
                                  const char *before, size_t nbefore)
{
    size_t n;
    char *now = harness_slurp(path, &n);
    bool same = now && n == nbefore && memcmp(now, before, n) == 0;
    free(now);
    if (same) return;
    print_error("%s:%d: %s changed: %zu bytes before, %zu now\n", file, line, path, nbefore,
                now ? n : 0);
    _fail(file, line);
}

void harness_expect_absent_at(const char *file, int line, const char *path)
{
    if (!harness_exists(path)) return;
    print_error("%s:%d: %s exists, but nothing should have created it\n", file, line, path);
    _fail(file, line);
}

cJSON *harness_json_out_at(const char *file, int line, const Res *r)
{
    cJSON *j = harness_track(cJSON_Parse(r->out), true);
    if (!j) {
        print_error("%s:%d: stdout is not JSON (near: %.40s)\n", file, line,
                    cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "?");
        harness_dump(r);
        _fail(file, line);
    }
    return j;
}

const cJSON *harness_jget_at(const char *file, int line, const cJSON *j, const char *key,
                             cJSON_bool (*is)(const cJSON *), const char *type)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v || !is(v)) {
        char *s = cJSON_PrintUnformatted(j);
        print_error("%s:%d: key \"%s\" missing or not %s in %.600s\n", file, line, key, type,
                    s ? s : "?");
        cJSON_free(s);
        _fail(file, line);
    }
    return v;
}

void harness_id_after(const char *text, const char *after, char id[17])
{
    const char *p = strstr(text, after);
    if (!p) {
        print_error("no \"%s\" in:\n%s\n", after, text);
        fail();
    }
    p += strlen(after);
    assert_int_equal(strspn(p, "0123456789abcdef"), 16);
    memcpy(id, p, 16);
    id[16] = 0;
}
