/*
 * pool.c — size classes, one stack of cached blocks per class, eviction of
 * the largest cached blocks when the pool would hold too much.
 *
 * Legend: c = class index, csize = its block size, limit = what the pool may
 * hold (in use + cached) before it evicts.
 */
#include "executor/pool.h"

#include <stdlib.h>

#include "ir/util.h"

#define NCLASS 1024
#define SMALL 4096            /* up to here: multiples of 256 bytes */
#define MARGIN_BYTES (1 << 20)

typedef struct {
    void **b;
    int n, cap;
} Stack;

struct Pool {
    Device *d;
    Stack cls[NCLASS];
    PoolStats st;
};

static int class_of(size_t bytes)
{
    if (bytes == 0) bytes = 1;
    if (bytes <= SMALL) return (int)((bytes + 255) / 256);
    int e = 63 - __builtin_clzll((unsigned long long)(bytes - 1));   /* 2^e < bytes <= 2^(e+1) */
    size_t lo = (size_t)1 << e, step = lo / 16;
    int k = (int)((bytes - lo + step - 1) / step);                      /* 1..16 */
    return 16 + (e - 12) * 16 + k;
}

static size_t class_size(int c)
{
    if (c <= 16) return (size_t)c * 256;
    int e = 12 + (c - 17) / 16, k = (c - 17) % 16 + 1;
    size_t lo = (size_t)1 << e;
    return lo + (size_t)k * (lo / 16);
}

size_t pool_class_bytes(size_t bytes)
{
    return class_size(class_of(bytes));
}

Pool *pool_new(Device *d)
{
    Pool *p = xcalloc(1, sizeof *p);
    p->d = d;
    return p;
}

/* Gives cached blocks back, the largest first, until `room` more bytes fit
 * under limit (or nothing is cached). */
static void evict(Pool *p, int64_t room, int64_t limit)
{
    for (int c = NCLASS - 1; c >= 0 && p->st.held + room > limit; c--) {
        Stack *s = &p->cls[c];
        while (s->n > 0 && p->st.held + room > limit) {
            p->d->ops->release(p->d, s->b[--s->n]);
            p->st.held -= (int64_t)class_size(c);
            p->st.device_releases++;
        }
    }
}

void *pool_alloc(Pool *p, size_t bytes, bool zeroed, Err *err)
{
    int c = class_of(bytes);
    if (c >= NCLASS) {
        err_set(err, "pool: a block of %zu bytes is larger than any device holds", bytes);
        return NULL;
    }
    int64_t cs = (int64_t)class_size(c);
    Stack *s = &p->cls[c];
    void *ptr = NULL;
    if (s->n > 0) {
        ptr = s->b[--s->n];
        if (zeroed && p->d->ops->zero(p->d, ptr, (size_t)cs, err)) {
            s->b[s->n++] = ptr;
            return NULL;
        }
        p->st.reuses++;
    } else {
        int64_t high = p->st.in_use + cs > p->st.in_use_high ? p->st.in_use + cs : p->st.in_use_high;
        evict(p, cs, high + high / 8 + MARGIN_BYTES);
        Err e2;
        ptr = p->d->ops->alloc(p->d, (size_t)cs, &e2);
        if (!ptr) {                   /* the device is full: all of the cache back, once more */
            pool_trim(p);
            ptr = p->d->ops->alloc(p->d, (size_t)cs, err);
            if (!ptr) return NULL;
        }
        p->st.held += cs;
        p->st.device_allocs++;
    }
    p->st.in_use += cs;
    if (p->st.in_use > p->st.in_use_high) p->st.in_use_high = p->st.in_use;
    if (p->st.held > p->st.held_high) p->st.held_high = p->st.held;
    return ptr;
}

void pool_release(Pool *p, void *ptr, size_t bytes)
{
    if (!ptr) return;
    int c = class_of(bytes);
    Stack *s = &p->cls[c];
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 8;
        s->b = xrealloc(s->b, sizeof *s->b * (size_t)s->cap);
    }
    s->b[s->n++] = ptr;
    p->st.in_use -= (int64_t)class_size(c);
}

void pool_trim(Pool *p)
{
    evict(p, 0, 0);
}

void pool_stats(const Pool *p, PoolStats *out)
{
    *out = p->st;
}

void pool_free(Pool *p)
{
    if (!p) return;
    pool_trim(p);
    for (int c = 0; c < NCLASS; c++) free(p->cls[c].b);
    free(p);
}
