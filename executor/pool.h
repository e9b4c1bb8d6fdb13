/*
 * pool.h — the runtime's caching allocator, the same for every device.
 *
 * A training step asks for the same buffers every step. Handing each back
 * to the device (free, cudaFree) and asking again costs page faults and
 * zeroing of fresh pages on a CPU (large blocks return to the OS) and a
 * device synchronisation on a GPU. The pool keeps released blocks in size
 * classes (16 per doubling, so a block is at most 1/16 larger than asked)
 * and hands them out again; in steady state a step makes no device
 * allocation at all.
 *
 * What it holds (blocks in use and cached) is bounded: when a new block
 * would take the total above 1/8 more than the most ever in use at once
 * (plus 1 MiB), cached blocks of other sizes go back to the device first,
 * the largest first. So what the pool holds stays within that margin of the
 * executor's own peak, which the lowering predicts.
 *
 * Not thread-safe: the runtime calls it from the thread that runs the step.
 */
#ifndef STRATA_POOL_H
#define STRATA_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "executor/device.h"

typedef struct Pool Pool;

typedef struct {
    int64_t in_use;          /* bytes of blocks handed out (class sizes) */
    int64_t in_use_high;     /* the most at once */
    int64_t held;            /* in use and cached */
    int64_t held_high;       /* the most ever held */
    int64_t device_allocs;   /* blocks asked of the device (misses) */
    int64_t device_releases; /* blocks given back to it (evictions, the end) */
    int64_t reuses;          /* requests served from the cache */
} PoolStats;

/* A pool over d (which must outlive it). */
Pool *pool_new(Device *d);
/* `bytes` of memory, zeroed when `zeroed`; NULL with err when the device has
 * no more (after the cache went back to it). */
void *pool_alloc(Pool *p, size_t bytes, bool zeroed, Err *err);
/* Takes back a block pool_alloc returned for `bytes` (NULL is fine). */
void pool_release(Pool *p, void *ptr, size_t bytes);
/* Gives every cached block back to the device. */
void pool_trim(Pool *p);
void pool_stats(const Pool *p, PoolStats *out);
/* Trims and frees the pool; blocks still in use are the caller's to lose. */
void pool_free(Pool *p);

/* The class size a request of `bytes` is served with (for tests). */
size_t pool_class_bytes(size_t bytes);

#endif
