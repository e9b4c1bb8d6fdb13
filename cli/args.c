/*
 * args.c — option parsing for the subcommands.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"

static const OptSpec *find(const OptSpec *spec, const char *name, char short_name)
{
    for (; spec && spec->name; spec++)
        if ((name && strcmp(spec->name, name) == 0) || (short_name && spec->short_name == short_name))
            return spec;
    return NULL;
}

int args_parse(int argc, char **argv, const OptSpec *spec, bool open, Args *a, Err *err)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const OptSpec *o = NULL;
        const char *key = NULL, *val = NULL;
        if (strncmp(arg, "--", 2) == 0 && arg[2]) {
            key = arg + 2;
            const char *eq = strchr(key, '=');
            if (eq) {   /* --key=value */
                size_t n = (size_t)(eq - key);
                if (n >= sizeof a->keybuf[0] || a->n == ARGS_MAX)
                    return err_set(err, "option %s: name too long", arg);
                memcpy(a->keybuf[a->n], key, n);
                a->keybuf[a->n][n] = 0;
                key = a->keybuf[a->n];
                val = eq + 1;
            }
            o = find(spec, key, 0);
            if (!o && !open) return err_set(err, "unknown option --%s (see --help)", key);
        } else if (arg[0] == '-' && arg[1] && !arg[2] && !(arg[1] >= '0' && arg[1] <= '9')) {
            o = find(spec, NULL, arg[1]);
            if (!o) return err_set(err, "unknown option %s (see --help)", arg);
            key = o->name;
        } else {
            if (a->npos == ARGS_MAX) return err_set(err, "too many arguments");
            a->pos[a->npos++] = arg;
            continue;
        }
        bool takes = o ? o->takes_value : true;
        /* the next argument is the value, unless it is an option itself
         * ("--model --json" names no model). An unknown one in an open
         * list may lack it: its reader says whether it is known at all */
        bool next_is_option = i + 1 < argc && !strncmp(argv[i + 1], "--", 2) && argv[i + 1][2];
        if (takes && !val && (i + 1 >= argc || next_is_option) && !o) {
            /* open: recorded without a value */
        } else if (takes && !val) {
            if (i + 1 >= argc) return err_set(err, "option --%s needs a value", key);
            if (next_is_option)
                return err_set(err, "option --%s needs a value (%s is another option)", key,
                               argv[i + 1]);
            val = argv[++i];
        } else if (!takes && val) {
            return err_set(err, "option --%s takes no value", key);
        }
        if (takes && val && !*val) return err_set(err, "option --%s: the value is empty", key);
        if (a->n == ARGS_MAX) return err_set(err, "too many options");
        a->key[a->n] = o ? o->name : key;
        a->val[a->n] = val;
        a->n++;
    }
    return 0;
}

const char *args_get(const Args *a, const char *key)
{
    for (int i = a->n - 1; i >= 0; i--)
        if (strcmp(a->key[i], key) == 0) return a->val[i];
    return NULL;
}

bool args_has(const Args *a, const char *key)
{
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->key[i], key) == 0) return true;
    return false;
}

int args_int(const Args *a, const char *key, int64_t lo, int64_t hi, int64_t *out, Err *err)
{
    const char *v = args_get(a, key);
    if (!v) return 0;
    char *end;
    errno = 0;
    /* digits, with a minus sign at most: strtoll alone takes blanks and a
     * plus sign before them */
    bool digits = (v[0] >= '0' && v[0] <= '9') || (v[0] == '-' && v[1] >= '0' && v[1] <= '9');
    long long x = strtoll(v, &end, 10);
    if (!digits || end == v || *end || (errno && errno != ERANGE))
        return err_set(err, "--%s: '%s' is not an integer", key, v);
    if (errno == ERANGE)
        return err_set(err, "--%s: %s is out of range [%lld, %lld]", key, v, (long long)lo,
                       (long long)hi);
    if (x < lo || x > hi)
        return err_set(err, "--%s: %lld is out of range [%lld, %lld]", key, x, (long long)lo,
                       (long long)hi);
    *out = x;
    return 0;
}

void args_usage(FILE *f, const OptSpec *spec)
{
    for (; spec && spec->name; spec++) {
        char head[64];
        if (spec->short_name)
            snprintf(head, sizeof head, "-%c, --%s", spec->short_name, spec->name);
        else
            snprintf(head, sizeof head, "    --%s", spec->name);
        fprintf(f, "  %-26s %s\n", head, spec->help ? spec->help : "");
    }
}

/* Are paths a and b, both there, one file (the same inode)? */
static bool same_inode(const char *a, const char *b)
{
    struct stat x, y;
    return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* Are paths a and b one file: the same name, or (both there) the same inode? */
static bool same_file(const char *a, const char *b)
{
    return strcmp(a, b) == 0 || same_inode(a, b);
}

int args_out_file(const Args *a, const char *key, const char *flag, const char *db, Err *err)
{
    const char *path = args_get(a, key);
    if (!path || !strcmp(path, "-")) return 0;     /* "-": standard output */
    if (!*path) return err_set(err, "%s: the path is empty", flag);
    struct stat st;
    bool there = stat(path, &st) == 0;
    if (there && S_ISDIR(st.st_mode))
        return err_set(err, "%s %s: is a directory; give a file", flag, path);
    static const char *const ext[] = { "", "-wal", "-shm", "-journal" };
    for (int i = 0; db && i < 4; i++) {
        char f[4096];
        snprintf(f, sizeof f, "%s%s", db, ext[i]);
        if (same_file(path, f))
            return err_set(err, "%s %s: is the store%s (--db %s); writing it would destroy what "
                           "it holds: give another file", flag, path, *ext[i] ? "'s journal" : "",
                           db);
    }
    /* nor a file the command is given otherwise (an input, by another
     * option or as an argument), nor any store: writing over a model or a
     * database destroys it. Only files that are there can be one: by
     * inode, since an option's value may be a word ("-o megatron") */
    for (int i = 0; there && i < a->n + a->npos; i++) {
        const char *in = i < a->n ? a->val[i] : a->pos[i - a->n];
        if (i < a->n && (!in || !strcmp(a->key[i], key))) continue;
        if (in && *in && same_inode(path, in))
            return err_set(err, "%s %s: is also given as %s%s: one file cannot be both; give "
                           "another", flag, path, i < a->n ? "--" : "an argument",
                           i < a->n ? a->key[i] : "");
    }
    /* a regular file's first bytes (a pipe's or a terminal's would block) */
    bool store = false;
    if (there && S_ISREG(st.st_mode)) {
        FILE *f = fopen(path, "rb");
        char head[16] = "";
        store = f && fread(head, 1, sizeof head, f) == sizeof head &&
                !memcmp(head, "SQLite format 3", 16);
        if (f) fclose(f);
    }
    if (store)
        return err_set(err, "%s %s: is a SQLite database (a store?); writing it would destroy "
                       "what it holds: give another file", flag, path);
    /* its directory: there and writable */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(err, "%s %s: directory %s is not there", flag, path, dir);
    if (access(dir, W_OK) != 0 || (access(path, F_OK) == 0 && access(path, W_OK) != 0))
        return err_set(err, "%s %s: cannot write there: %s", flag, path, strerror(errno));
    return 0;
}

int args_store(const Args *a, Err *err)
{
    const char *path = args_get(a, "db");
    if (path && !strcmp(path, "-"))
        return err_set(err, "--db -: a store is a file (SQLite), not standard output; give its "
                       "path");
    if (!path || access(path, F_OK) == 0) return 0;     /* there: opening it judges it */
    return args_out_file(a, "db", "--db", NULL, err);
}
