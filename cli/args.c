/*
 * args.c — option parsing for the subcommands.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        if (takes && !val) {
            if (i + 1 >= argc) return err_set(err, "option --%s needs a value", key);
            val = argv[++i];
        } else if (!takes && val) {
            return err_set(err, "option --%s takes no value", key);
        }
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
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return err_set(err, "--%s: '%s' is not an integer", key, v);
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
