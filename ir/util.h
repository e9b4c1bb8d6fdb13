/*
 * util.h — small helpers shared inside ir/ (and by db/ and cli/): reading
 * JSON with the path of every value at hand for error messages, stable
 * hashing, glob patterns, checked allocation and arithmetic.
 */
#ifndef STRATA_UTIL_H
#define STRATA_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <cjson/cJSON.h>
#include "err.h"

/* --- JSON with paths ---------------------------------------------------
 * Each getter takes the object, its path ("ops[3]"), the key, and fills *out.
 * Returns 0 when found and valid, 1 when absent and optional (out untouched),
 * -1 with err "PATH.KEY: reason" otherwise. */
int json_get_string(const cJSON *obj, const char *path, const char *key,
                    bool required, const char **out, Err *err);
int json_get_int(const cJSON *obj, const char *path, const char *key,
                 bool required, int64_t lo, int64_t hi, int64_t *out, Err *err);
int json_get_number(const cJSON *obj, const char *path, const char *key,
                    bool required, double lo, double hi, double *out, Err *err);
int json_get_bool(const cJSON *obj, const char *path, const char *key,
                  bool required, bool *out, Err *err);
/* An object's keys must all be among `allowed` (NULL-terminated): a typo is
 * an error naming the key, not a silently ignored field. */
int json_check_keys(const cJSON *obj, const char *path, const char *const *allowed, Err *err);

/* Reads a whole file into a NUL-terminated buffer (caller frees). */
char *file_read(const char *path, size_t *len, Err *err);
/* Parses a JSON file; errors give the file name and the position. */
cJSON *json_load(const char *path, Err *err);
/* The length in bytes (1-4) of the UTF-8 character at c, 0 when the bytes
 * there are not valid UTF-8 or are a control code (below 0x20, or 0x7f). */
int utf8_char_len(const unsigned char *c);
/* Parses text[0, n) as one JSON value, strictly: nothing but white space
 * after it, no key twice in one object, no \u0000 in a string (a C string
 * would end there). NULL on failure, with the byte offset of the fault in
 * *at and the reason, naming the JSON path where there is one, in err. */
cJSON *json_parse_strict(const char *text, size_t n, size_t *at, Err *err);
/* Writes JSON (formatted) to path, or to stdout when path is NULL or "-". */
int json_save(const cJSON *j, const char *path, Err *err);

/* Returns a copy of `j` with every object's keys sorted, recursively, except
 * under keys listed in `keep_order` (NULL-terminated or NULL), whose order is
 * meaningful. Caller deletes. */
cJSON *json_sorted(const cJSON *j, const char *const *keep_order);
/* 64-bit FNV-1a of the unformatted JSON text, as 16 hex digits. */
void json_hash(const cJSON *j, char out[17]);
void hash_hex(const void *data, size_t n, char out[17]);

/* Seconds on the monotonic clock (for measuring intervals). */
double now_s(void);
/* This machine's name (gethostname; "localhost" when it has none), NUL-
 * terminated in buf: the host a profile is recorded on. */
void this_host(char *buf, int n);
/* 16 hex digits from the clock and the process id, for rows that are not
 * content (runs, searches). */
void random_id(char out[17]);
/* SplitMix64: the state advanced by a constant and mixed; the same stream on
 * every platform for a seed. */
uint64_t splitmix64(uint64_t *state);

/* Glob match with `*` (any run of characters, dots included). */
bool glob_match(const char *pattern, const char *s);

/* Allocation that never returns NULL: aborts with file and line if memory is gone
 * (the one failure a library cannot report usefully). */
void *xmalloc_(size_t n, const char *file, int line);
void *xcalloc_(size_t n, size_t m, const char *file, int line);
void *xrealloc_(void *p, size_t n, const char *file, int line);
char *xstrdup_(const char *s, const char *file, int line);
void *xmemdup_(const void *p, size_t n, const char *file, int line);
#define xmalloc(n) xmalloc_((n), __FILE__, __LINE__)
#define xcalloc(n, m) xcalloc_((n), (m), __FILE__, __LINE__)
#define xrealloc(p, n) xrealloc_((p), (n), __FILE__, __LINE__)
#define xstrdup(s) xstrdup_((s), __FILE__, __LINE__)
/* A copy of the n bytes at p (n may be 0: a valid pointer to free). */
#define xmemdup(p, n) xmemdup_((p), (n), __FILE__, __LINE__)

/* a*b into *out; false on int64 overflow. */
static inline bool mul_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

#endif
