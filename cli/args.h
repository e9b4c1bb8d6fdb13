/*
 * args.h — command-line options for the strata subcommands.
 *
 * Each subcommand declares its options in a table; anything else is an error
 * naming the option. Values are checked where they are read (args_int names
 * the option and the reason).
 */
#ifndef STRATA_ARGS_H
#define STRATA_ARGS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "ir/err.h"

typedef struct {
    const char *name;      /* long name without dashes: "tp" for --tp */
    char short_name;       /* 'o' for -o, or 0 */
    bool takes_value;
    const char *help;      /* "T  tensor-parallel degree" */
} OptSpec;

#define ARGS_MAX 64

typedef struct {
    int n;
    const char *key[ARGS_MAX];
    const char *val[ARGS_MAX];     /* NULL for flags */
    int npos;
    const char *pos[ARGS_MAX];
    char keybuf[ARGS_MAX][64];     /* names given as --key=value */
} Args;

/* Parses argv[0..argc) against spec (NULL-name terminated). With `open` set,
 * unknown --key value pairs are accepted too (model builder options). */
int args_parse(int argc, char **argv, const OptSpec *spec, bool open, Args *a, Err *err);
const char *args_get(const Args *a, const char *key);   /* last value, or NULL */
bool args_has(const Args *a, const char *key);
/* An integer option in [lo, hi]; absent leaves *out as it is. */
int args_int(const Args *a, const char *key, int64_t lo, int64_t hi, int64_t *out, Err *err);
void args_usage(FILE *f, const OptSpec *spec);
/* An output file option (`flag` as the user writes it: "--log", "-o"),
 * checked before any work: not empty, not a directory, in a directory that
 * is there and writable, and not the store `db` (nor its -wal, -shm or
 * -journal file), any other SQLite database, or a file the command reads
 * (another option's value or an argument), which writing would destroy.
 * Absent, or "-" (standard output), is fine. */
int args_out_file(const Args *a, const char *key, const char *flag, const char *db, Err *err);
/* --db of a command that writes the store: never "-" (a store is a file),
 * and a path not there yet must be one args_out_file takes (its directory
 * there and writable), so that the store can be made. One that is there is
 * judged when it is opened. */
int args_store(const Args *a, Err *err);

#endif
