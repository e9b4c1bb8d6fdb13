/*
 * k_init.c — deterministic parameter and data values: element `index` of
 * tensor `name` under `seed` is a pure function of the three, so any shard
 * of any strategy holds exactly the values the one-rank run holds at the same
 * positions, and runs can be compared element by element.
 *
 * The generator is counter-based: key = mix(seed ^ FNV-1a(name)), then
 * bits = mix(key + (index + 1) * golden), mix being SplitMix64's finaliser
 * (Steele, Lea and Flood, 2014). The top 24 bits make a float uniform in
 * [0, 1) exactly; integers use Lemire's multiply-shift on the top 32 bits.
 */
#include <math.h>

#include "executor/kernels.h"

#define GOLDEN 0x9e3779b97f4a7c15ull
#define INIT_PIECE 65536            /* elements a thread fills at a time */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static uint64_t tensor_key(uint64_t seed, const char *name)
{
    return mix64(seed ^ fnv1a(name));
}

static uint64_t element_bits(uint64_t key, int64_t index)
{
    return mix64(key + ((uint64_t)index + 1) * GOLDEN);
}

static float uniform_pm(uint64_t bits, float scale)
{
    double u = (double)(bits >> 40) * 0x1p-24;     /* [0, 1), 24 bits */
    float v = (float)((2 * u - 1) * scale);
    /* (1 - 2^-23) * scale may round up to scale itself */
    return v >= scale ? nextafterf(scale, 0) : v;
}

float kernel_init_value(uint64_t seed, const char *name, int64_t index, float scale)
{
    return uniform_pm(element_bits(tensor_key(seed, name), index), scale);
}

/* Row-major walk over a block of a tensor: `g` is the global index of the
 * current element, advanced by block_next. */
typedef struct {
    int ndim;
    const int64_t *local;
    int64_t gstride[IR_MAX_DIMS], idx[IR_MAX_DIMS];
    int64_t n, g;
} Block;

static void block_begin(Block *b, int ndim, const int64_t *shape, const int64_t *offset,
                        const int64_t *local)
{
    b->ndim = ndim;
    b->local = local;
    b->n = 1;
    b->g = 0;
    int64_t st = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        b->gstride[d] = st;
        b->idx[d] = 0;
        st *= shape[d];
        b->n *= local[d];
        b->g += offset[d] * b->gstride[d];
    }
}

static void block_next(Block *b)
{
    for (int d = b->ndim - 1; d >= 0; d--) {
        b->g += b->gstride[d];
        if (++b->idx[d] < b->local[d]) return;
        b->g -= b->gstride[d] * b->local[d];
        b->idx[d] = 0;
    }
}

/* Moves b to local element i (b as block_begin left it). */
static void block_seek(Block *b, int64_t i)
{
    for (int d = b->ndim - 1; d >= 0; d--) {
        int64_t k = b->local[d] ? i % b->local[d] : 0;
        i = b->local[d] ? i / b->local[d] : 0;
        b->idx[d] = k;
        b->g += k * b->gstride[d];
    }
}

void kernel_init_fill(float *buf, uint64_t seed, const char *name, int ndim,
                      const int64_t *shape, const int64_t *offset, const int64_t *local,
                      float scale)
{
    uint64_t key = tensor_key(seed, name);
    Block b0;
    block_begin(&b0, ndim, shape, offset, local);
    /* each element's value depends on its global index alone: pieces of
     * the block in parallel give the same floats as one walk */
    const int64_t n = b0.n, pieces = (n + INIT_PIECE - 1) / INIT_PIECE;
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (int64_t p = 0; p < pieces; p++) {
        Block b = b0;
        block_seek(&b, p * INIT_PIECE);
        const int64_t end = n - p * INIT_PIECE < INIT_PIECE ? n : (p + 1) * INIT_PIECE;
        for (int64_t i = p * INIT_PIECE; i < end; i++, block_next(&b))
            buf[i] = uniform_pm(element_bits(key, b.g), scale);
    }
}

/* Lemire's multiply-shift: (32 random bits * hi) >> 32 is in [0, hi). */
void kernel_init_fill_int(int32_t *buf, uint64_t seed, const char *name, int ndim,
                          const int64_t *shape, const int64_t *offset, const int64_t *local,
                          int32_t hi)
{
    uint64_t key = tensor_key(seed, name), range = hi > 0 ? (uint64_t)hi : 0;
    Block b;
    block_begin(&b, ndim, shape, offset, local);
    for (int64_t i = 0; i < b.n; i++, block_next(&b))
        buf[i] = (int32_t)(((element_bits(key, b.g) >> 32) * range) >> 32);
}
