/*
 * device_cpu.c — the CPU backend of device.h: host memory, the kernels of
 * kernels.h, OpenBLAS. Nothing is queued: every function is done when it
 * returns, so sync has nothing to wait for.
 */
#include "executor/device.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "executor/blas.h"

/* Host memory. A block of 1 MiB or more is mapped on its own, marked for
 * transparent huge pages and faulted in here, whole, before it is used:
 * otherwise its first write in a step faults page by page, each fault
 * zeroing a page and, with the BLAS threads running, flushing the other
 * cores' TLBs, which made the first training step several times slower than
 * the rest. A header before the block says how it was made. */
#define BIG_BLOCK ((size_t)1 << 20)
#define HEADER 64                         /* keeps the block 64-byte aligned */
enum { BLOCK_HEAP = 0x68656170, BLOCK_MAP = 0x6d617070 };

typedef struct {
    uint32_t kind;
    size_t total;                         /* mapped bytes, header included */
} BlockHeader;

/* Faults in every page of a fresh mapping, on all of the rank's threads
 * (the kernel zeroes each page as it maps it; ranges in parallel, in pieces
 * that keep whole huge pages). */
#define POPULATE_PIECE ((size_t)16 << 20)

static void populate(char *base, size_t total)
{
    const int64_t pieces = (int64_t)((total + POPULATE_PIECE - 1) / POPULATE_PIECE);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t k = 0; k < pieces; k++) {
        char *p = base + (size_t)k * POPULATE_PIECE;
        size_t len = total - (size_t)k * POPULATE_PIECE;
        if (len > POPULATE_PIECE) len = POPULATE_PIECE;
#ifdef MADV_POPULATE_WRITE
        if (madvise(p, len, MADV_POPULATE_WRITE) == 0) continue;
#endif
        for (size_t o = 0; o < len; o += 4096) p[o] = 0;    /* touch every page */
    }
}

static void *c_alloc(Device *d, size_t bytes, Err *err)
{
    (void)d;
    if (bytes == 0) bytes = 1;
    if (bytes > SIZE_MAX - 2 * BIG_BLOCK) {
        err_set(err, "cpu: a block of %zu bytes is larger than memory", bytes);
        return NULL;
    }
    char *base;
    BlockHeader h;
    if (bytes < BIG_BLOCK) {
        base = calloc(bytes + HEADER, 1);
        h = (BlockHeader){ BLOCK_HEAP, bytes + HEADER };
    } else {
        size_t total = bytes + HEADER;
        base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) base = NULL;
        if (base) {
            madvise(base, total, MADV_HUGEPAGE);        /* a hint: ignored where unsupported */
            populate(base, total);
        }
        h = (BlockHeader){ BLOCK_MAP, total };
    }
    if (!base) {
        err_set(err, "cpu: out of memory for %zu bytes", bytes);
        return NULL;
    }
    memcpy(base, &h, sizeof h);
    return base + HEADER;
}

static void c_release(Device *d, void *p)
{
    (void)d;
    if (!p) return;
    char *base = (char *)p - HEADER;
    BlockHeader h;
    memcpy(&h, base, sizeof h);
    if (h.kind == BLOCK_MAP) munmap(base, h.total);
    else free(base);
}

static int c_zero(Device *d, void *p, size_t bytes, Err *err)
{
    (void)d, (void)err;
    if (bytes) kernel_zero(p, bytes);
    return 0;
}

static int c_copy(Device *d, void *dst, const void *src, size_t bytes, Err *err)
{
    (void)d, (void)err;
    kernel_copy(dst, src, bytes);
    return 0;
}

static int c_sync(Device *d, Err *err)
{
    (void)d, (void)err;
    return 0;
}

static int c_axpy(Device *d, float *y, const float *x, float a, int64_t n, Err *err)
{
    (void)d, (void)err;
    kernel_axpy(y, x, a, n);
    return 0;
}

static int c_fill(Device *d, float *x, float v, int64_t n, Err *err)
{
    (void)d, (void)err;
    kernel_fill(x, v, n);
    return 0;
}

static int c_block_copy(Device *d, float *dst, const int64_t *dd, const int64_t *doff,
                        const float *src, const int64_t *sd, const int64_t *soff,
                        const int64_t *len, int nd, Err *err)
{
    (void)d, (void)err;
    if (nd == 0) {
        dst[0] = src[0];
        return 0;
    }
    int64_t dstr[IR_MAX_DIMS], sstr[IR_MAX_DIMS];
    dstr[nd - 1] = sstr[nd - 1] = 1;
    for (int k = nd - 2; k >= 0; k--) {
        dstr[k] = dstr[k + 1] * dd[k + 1];
        sstr[k] = sstr[k + 1] * sd[k + 1];
    }
    int64_t rows = 1;
    for (int k = 0; k < nd - 1; k++) rows *= len[k];
    int64_t idx[IR_MAX_DIMS] = {0};
    for (int64_t r = 0; r < rows; r++) {
        int64_t so = soff[nd - 1], dof = doff[nd - 1];
        for (int k = 0; k < nd - 1; k++) {
            so += (soff[k] + idx[k]) * sstr[k];
            dof += (doff[k] + idx[k]) * dstr[k];
        }
        memcpy(dst + dof, src + so, sizeof(float) * (size_t)len[nd - 1]);
        for (int k = nd - 2; k >= 0; k--) {
            if (++idx[k] < len[k]) break;
            idx[k] = 0;
        }
    }
    return 0;
}

static int c_forward(Device *d, const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)d;
    return kernel_forward(ks, in, out, err);
}

static int c_backward(Device *d, const KernelShape *ks, const void *const *in, const float *out,
                      const float *dout, float *const *din, Err *err)
{
    (void)d;
    return kernel_backward(ks, in, out, dout, din, err);
}

static int c_sgd(Device *d, float *w, const float *g, float *mom, int64_t n, const OptimHyper *h,
                 Err *err)
{
    (void)d, (void)err;
    kernel_sgd(w, g, mom, n, h);
    return 0;
}

static int c_adam(Device *d, float *w, const float *g, float *m, float *v, int64_t n,
                  int64_t step, const OptimHyper *h, Err *err)
{
    (void)d, (void)err;
    kernel_adam(w, g, m, v, n, step, h);
    return 0;
}

static int c_to_fp16(Device *d, const float *x, uint16_t *h, int64_t n, Err *err)
{
    (void)d, (void)err;
    kernel_to_fp16(x, h, n);
    return 0;
}

static int c_from_fp16(Device *d, const uint16_t *h, float *x, int64_t n, Err *err)
{
    (void)d, (void)err;
    kernel_from_fp16(h, x, n);
    return 0;
}

static int c_int8_encode(Device *d, const float *x, float *e, int8_t *q, float *scale, int64_t n,
                         Err *err)
{
    (void)d, (void)err;
    *scale = kernel_int8_encode(x, e, q, n);
    return 0;
}

static int c_int8_decode(Device *d, const int8_t *q, const float *scale, float *x, int64_t n,
                         Err *err)
{
    (void)d, (void)err;
    kernel_int8_decode(q, *scale, x, n);
    return 0;
}

static int c_init_fill(Device *d, float *buf, uint64_t seed, const char *name, int ndim,
                       const int64_t *shape, const int64_t *offset, const int64_t *local,
                       float scale, Err *err)
{
    (void)d, (void)err;
    kernel_init_fill(buf, seed, name, ndim, shape, offset, local, scale);
    return 0;
}

static int c_init_fill_int(Device *d, int32_t *buf, uint64_t seed, const char *name, int ndim,
                           const int64_t *shape, const int64_t *offset, const int64_t *local,
                           int32_t hi, Err *err)
{
    (void)d, (void)err;
    kernel_init_fill_int(buf, seed, name, ndim, shape, offset, local, hi);
    return 0;
}

static int c_sgemm(Device *d, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                   const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                   Err *err)
{
    (void)d, (void)err;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return 0;
}

static int c_orthonormalize(Device *d, float *p, int64_t rows, int r, Err *err)
{
    (void)d, (void)err;
    kernel_orthonormalize(p, rows, r);
    return 0;
}

static void c_describe(Device *d, char *buf, size_t n)
{
    (void)d;
    char b[256];
    snprintf(buf, n, "cpu, %s", blas_describe(b, sizeof b));
}

static double c_memory(Device *d)
{
    (void)d;
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && psize > 0 ? (double)pages * psize : 0;
}

static void c_destroy(Device *d)
{
    free(d);
}

static const DeviceOps cpu_ops = {
    .name = "cpu",
    .alloc = c_alloc,
    .release = c_release,
    .zero = c_zero,
    .copy = c_copy,
    .upload = c_copy,
    .download = c_copy,
    .sync = c_sync,
    .axpy = c_axpy,
    .fill = c_fill,
    .block_copy = c_block_copy,
    .forward = c_forward,
    .backward = c_backward,
    .sgd = c_sgd,
    .adam = c_adam,
    .to_fp16 = c_to_fp16,
    .from_fp16 = c_from_fp16,
    .int8_encode = c_int8_encode,
    .int8_decode = c_int8_decode,
    .init_fill = c_init_fill,
    .init_fill_int = c_init_fill_int,
    .sgemm = c_sgemm,
    .orthonormalize = c_orthonormalize,
    .describe = c_describe,
    .memory = c_memory,
    .destroy = c_destroy,
};

Device *device_cpu_new(Err *err)
{
    Device *d = calloc(1, sizeof *d);
    if (!d) {
        err_set(err, "cpu: out of memory");
        return NULL;
    }
    d->ops = &cpu_ops;
    return d;
}

void device_free(Device *d)
{
    if (d) d->ops->destroy(d);
}
