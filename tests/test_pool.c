/*
 * test_pool.c — the runtime's caching allocator (executor/pool.h): its size
 * classes, reuse of a released block (zeroed again when asked), a repeated
 * step that asks the device for nothing after the first, the bound on what
 * it holds when the sizes asked for change, and a full device (the cache goes
 * back before the request fails).
 *
 * A counting device stands under the pool: calloc/free with a byte budget.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "executor/pool.h"

typedef struct {
    int64_t live, budget;          /* bytes handed out; at most budget */
    int64_t allocs, releases;
} Counter;

typedef struct {
    void *p;
    size_t bytes;
} Rec;

/* the counting device remembers each block's size in a small header */
static void *k_alloc(Device *d, size_t bytes, Err *err)
{
    Counter *c = d->impl;
    if (c->live + (int64_t)bytes > c->budget) {
        err_set(err, "counting device: full (%lld of %lld bytes in use, %zu more asked)",
                (long long)c->live, (long long)c->budget, bytes);
        return NULL;
    }
    size_t *h = calloc(1, bytes + 16);
    if (!h) return NULL;
    h[0] = bytes;
    c->live += (int64_t)bytes;
    c->allocs++;
    return (char *)h + 16;
}

static void k_release(Device *d, void *p)
{
    if (!p) return;
    Counter *c = d->impl;
    size_t *h = (size_t *)((char *)p - 16);
    c->live -= (int64_t)h[0];
    c->releases++;
    free(h);
}

static int k_zero(Device *d, void *p, size_t bytes, Err *err)
{
    (void)d;
    (void)err;
    memset(p, 0, bytes);
    return 0;
}

static const DeviceOps counting_ops = { .name = "counting", .alloc = k_alloc,
                                        .release = k_release, .zero = k_zero };

static void test_classes(void **state)
{
    (void)state;
    size_t prev = 0;
    for (size_t b = 1; b < ((size_t)1 << 26); b = b < 8192 ? b + 7 : b + b / 37 + 1) {
        size_t cs = pool_class_bytes(b);
        assert_true(cs >= b);
        assert_true(cs >= prev);               /* monotone in the request */
        if (b <= 4096) assert_int_equal(cs % 256, 0);
        else assert_true(cs - b <= b / 16 + 1); /* at most 1/16 larger */
        prev = cs;
    }
    assert_int_equal(pool_class_bytes(0), 256);
    assert_int_equal(pool_class_bytes(4097), 4096 + 256);
    assert_int_equal(pool_class_bytes((size_t)1 << 20), (size_t)1 << 20);
}

static void test_reuse_zeroed(void **state)
{
    (void)state;
    Counter c = { .budget = 1 << 30 };
    Device d = { &counting_ops, &c };
    Pool *p = pool_new(&d);
    Err err;
    unsigned char *a = pool_alloc(p, 1000000, true, &err);
    assert_non_null(a);
    memset(a, 0xab, 1000000);
    pool_release(p, a, 1000000);
    /* a request of the same class gets the block back, zeroed */
    unsigned char *b = pool_alloc(p, 999000, true, &err);
    assert_ptr_equal(a, b);
    for (size_t i = 0; i < 999000; i++)
        if (b[i]) fail_msg("byte %zu of a reused block is %d, not 0", i, b[i]);
    /* not zeroed when not asked */
    memset(b, 0xcd, 999000);
    pool_release(p, b, 999000);
    unsigned char *e = pool_alloc(p, 1000000, false, &err);
    assert_ptr_equal(a, e);
    assert_int_equal(e[0], 0xcd);
    PoolStats st;
    pool_stats(p, &st);
    assert_int_equal(st.device_allocs, 1);
    assert_int_equal(st.reuses, 2);
    assert_int_equal(st.in_use, (int64_t)pool_class_bytes(1000000));
    pool_release(p, e, 1000000);
    pool_free(p);
    assert_int_equal(c.live, 0);
    assert_int_equal(c.allocs, c.releases);
}

/* The same sequence of allocations and releases, five times: only the first
 * asks the device. */
static void test_steady_state(void **state)
{
    (void)state;
    Counter c = { .budget = 1 << 30 };
    Device d = { &counting_ops, &c };
    Pool *p = pool_new(&d);
    Err err;
    size_t sizes[] = { 4 << 20, 100, 300000, 4 << 20, 17, 65536, 1 << 22, 123457 };
    int n = (int)(sizeof sizes / sizeof sizes[0]);
    int64_t after_first = 0;
    for (int step = 0; step < 5; step++) {
        Rec live[8];
        /* allocate all, release every other one, allocate those again, release all */
        for (int i = 0; i < n; i++) live[i] = (Rec){ pool_alloc(p, sizes[i], true, &err), sizes[i] };
        for (int i = 0; i < n; i += 2) pool_release(p, live[i].p, live[i].bytes);
        for (int i = 0; i < n; i += 2) live[i].p = pool_alloc(p, sizes[i], true, &err);
        for (int i = 0; i < n; i++) {
            assert_non_null(live[i].p);
            pool_release(p, live[i].p, live[i].bytes);
        }
        if (step == 0) after_first = c.allocs;
    }
    assert_int_equal(c.allocs, after_first);
    assert_int_equal(c.releases, 0);
    PoolStats st;
    pool_stats(p, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.device_allocs, after_first);
    pool_free(p);
    assert_int_equal(c.live, 0);
}

/* Sizes that change from phase to phase: what the pool holds stays within
 * 1/8 (+1 MiB) of the most in use at once, because the old sizes go back. */
static void test_bounded(void **state)
{
    (void)state;
    Counter c = { .budget = (int64_t)1 << 34 };
    Device d = { &counting_ops, &c };
    Pool *p = pool_new(&d);
    Err err;
    void *blk[16];
    for (int phase = 0; phase < 6; phase++) {
        size_t sz = ((size_t)1 << 20) * (size_t)(3 + 2 * phase);   /* a new class each phase */
        for (int i = 0; i < 16; i++) assert_non_null(blk[i] = pool_alloc(p, sz, true, &err));
        for (int i = 0; i < 16; i++) pool_release(p, blk[i], sz);
    }
    PoolStats st;
    pool_stats(p, &st);
    assert_true(st.device_releases > 0);
    if (st.held_high > st.in_use_high + st.in_use_high / 8 + (1 << 20))
        fail_msg("held %lld bytes at most, in use %lld: above the 1/8 + 1 MiB margin",
                 (long long)st.held_high, (long long)st.in_use_high);
    assert_int_equal(c.live, st.held);
    pool_free(p);
    assert_int_equal(c.live, 0);
}

/* A device too small for the cache and a new request: the cache goes back
 * first; a request larger than the device fails with the device's message. */
static void test_full_device(void **state)
{
    (void)state;
    Counter c = { .budget = 9 << 20 };
    Device d = { &counting_ops, &c };
    Pool *p = pool_new(&d);
    Err err = { 0 };
    void *a1 = pool_alloc(p, 4 << 20, true, &err), *a2 = pool_alloc(p, 4 << 20, true, &err);
    assert_non_null(a1);
    assert_non_null(a2);
    pool_release(p, a1, 4 << 20);
    pool_release(p, a2, 4 << 20);                /* cached: 8 MiB of the device's 9 */
    /* within the pool's own margin (10 MiB), but not the device's: the
     * cache goes back and the request is served */
    void *b = pool_alloc(p, 2 << 20, true, &err);
    assert_non_null(b);
    assert_int_equal(c.releases, 2);
    void *x = pool_alloc(p, 20 << 20, true, &err);
    assert_null(x);
    assert_non_null(strstr(err.msg, "full"));
    pool_release(p, b, 2 << 20);
    pool_free(p);
    assert_int_equal(c.live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_reuse_zeroed),
        cmocka_unit_test(test_steady_state),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_full_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
