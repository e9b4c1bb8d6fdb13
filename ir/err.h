/*
 * err.h — the one error type of strata.
 *
 * Library functions return a status (0 ok, -1 error) or NULL and fill an Err
 * that the caller shows as it is. A message says what was wrong, where (the
 * JSON path, the op name) and the fix when one is known. Functions never exit().
 */
#ifndef STRATA_ERR_H
#define STRATA_ERR_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    char msg[1024];
} Err;

/* Sets err->msg (err may be NULL) and returns -1, so `return err_set(...)` reads well. */
static inline int err_set(Err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int err_set(Err *err, const char *fmt, ...)
{
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* Prepends "prefix: " to an existing message (adds context on the way up). */
static inline int err_prefix(Err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int err_prefix(Err *err, const char *fmt, ...)
{
    if (!err) return -1;
    char head[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = 0;
    /* a message too long for the buffer is cut, never overflowed */
    int n = snprintf(err->msg, sizeof err->msg, "%s: ", head);
    if (n >= 0 && (size_t)n < sizeof err->msg)
        strncat(err->msg, old, sizeof err->msg - (size_t)n - 1);
    return -1;
}

#endif
