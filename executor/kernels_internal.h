/*
 * kernels_internal.h — one forward and one backward function per op kind,
 * behind kernel_forward/kernel_backward (kernels.c dispatches on op->kind).
 * Same contracts as those two; see kernels.h.
 */
#ifndef STRATA_KERNELS_INTERNAL_H
#define STRATA_KERNELS_INTERNAL_H

#include "kernels.h"
#include <string.h>

int k_matmul_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_matmul_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_embedding_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_embedding_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
int k_conv2d_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_conv2d_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_pool2d_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_pool2d_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_mean_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_mean_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_add_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_add_bwd(const KernelShape *ks, const void *const *in, const float *out,
              const float *dout, float *const *din, Err *err);
int k_bias_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_bias_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_gelu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_gelu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_relu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_relu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err);
int k_layernorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_layernorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
int k_batchnorm_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_batchnorm_bwd(const KernelShape *ks, const void *const *in, const float *out,
                    const float *dout, float *const *din, Err *err);
int k_softmax_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_softmax_bwd(const KernelShape *ks, const void *const *in, const float *out,
                  const float *dout, float *const *din, Err *err);
int k_cross_entropy_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_cross_entropy_bwd(const KernelShape *ks, const void *const *in, const float *out,
                        const float *dout, float *const *din, Err *err);
int k_route_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_route_bwd(const KernelShape *ks, const void *const *in, const float *out,
                const float *dout, float *const *din, Err *err);
int k_concat_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_concat_bwd(const KernelShape *ks, const void *const *in, const float *out,
                 const float *dout, float *const *din, Err *err);
int k_mse_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err);
int k_mse_bwd(const KernelShape *ks, const void *const *in, const float *out,
              const float *dout, float *const *din, Err *err);

/* --- helpers shared by the kernel files (kernels.c; k_contract* in k_contract.c)
 * Buffers are row-major over their letters; a letter's stride array holds 0
 * for letters the buffer lacks, so broadcasting and summing fall out of the
 * same loops. Letters of size 1 take no part in any loop. */

/* Elements of a buffer with these letters at these sizes. */
int64_t k_numel(const char *letters, const int64_t size[IR_LETTERS]);
/* Row-major strides of `letters` into st (0 for every other letter). */
void k_strides(const char *letters, const int64_t size[IR_LETTERS], int64_t st[IR_LETTERS]);

/* A nest of loops over letters, for up to K_MAXOPS buffers at once. Adjacent
 * letters merge into one loop wherever every buffer's strides allow, and the
 * innermost loop is left to the caller (count `inner`, strides `ist`):
 *     KLoop lp;
 *     kloop_init(&lp, "bsh", size, 2, (const int64_t *const[]){sd, ss});
 *     do { for (i < lp.inner) d[lp.off[0] + i*lp.ist[0]] ...; } while (kloop_next(&lp));
 * The body runs once even when no letter is left (inner == 1). */
#define K_MAXOPS 3
typedef struct {
    int n, nops;                         /* outer loops; buffers */
    int64_t cnt[IR_LETTERS], idx[IR_LETTERS];
    int64_t st[K_MAXOPS][IR_LETTERS];
    int64_t off[K_MAXOPS];               /* offset of each buffer in this iteration */
    int64_t inner;                       /* innermost count and strides */
    int64_t ist[K_MAXOPS];
} KLoop;
void kloop_init(KLoop *lp, const char *order, const int64_t size[IR_LETTERS], int nops,
                const int64_t *const st[]);
bool kloop_next(KLoop *lp);

/* dst = (acc ? dst : 0) + alpha * src, where src's letters missing from dst
 * are summed and dst's letters missing from src are broadcast. Any letter
 * order on either side (a permutation copy is the case of equal letters). */
void k_map(float *dst, const char *dl, const float *src, const char *sl,
           const int64_t size[IR_LETTERS], float alpha, bool acc);

/* c = (acc ? c : 0) + einsum(a, b): the product summed over the letters of a
 * and b missing from c; letters of c in neither are broadcast. k_contract3 is
 * the same for three operands (it contracts the cheapest pair first). Returns
 * -1 only when scratch memory cannot be had or a size exceeds BLAS ints. */
int k_contract2(float *c, const char *lc, const float *a, const char *la, const float *b,
                const char *lb, const int64_t size[IR_LETTERS], bool acc, Err *err);
int k_contract3(float *c, const char *lc, const float *const x[3], const char *const lx[3],
                const int64_t size[IR_LETTERS], bool acc, Err *err);

/* Tuning of k_contract2, global so tests can force each path:
 * contractions with fewer than k_gemm_min_work multiply-adds per GEMM call
 * (M*N*K) run as plain loops; a role (M, N or K) whose letters merge into a
 * GEMM dimension only in pieces keeps its largest piece in the GEMM and loops
 * over the rest when that piece has k_gemm_min_run elements or more, and
 * otherwise copies the operand into GEMM order. */
extern int64_t k_gemm_min_work, k_gemm_min_run;

/* Scratch from malloc, or NULL with err naming the op and the size. */
float *k_scratch(int64_t n, const char *what, Err *err);

/* --- fast paths (k_norm.c, k_elementwise.c) ---------------------------------
 * Where the layout is the common one (the reduce letters last, so a row is
 * contiguous; a bias that broadcasts along leading letters; buffers that do
 * not overlap) the kernels run plain loops over contiguous memory that the
 * compiler vectorises, instead of the generic walks. Results agree with the
 * generic paths to float rounding. true by default; tests set it false to
 * force the generic paths and compare the two on the same inputs. */
extern bool k_fast_paths;

/* A function holding fast loops: each a main loop to n & ~7 and a scalar
 * tail, since gcc -O2 (its "very cheap" cost model) vectorises a loop only
 * when it can prove the count a multiple of the vector width; and never
 * inlined, since inlined into an outer loop gcc loses that proof. On x86-64
 * it is built twice, for AVX2 and for the baseline SSE2, and the loader
 * picks one for the CPU (an ifunc, which is never inlined). Both clones give
 * the same floats: the same IEEE operations lane by lane, the reductions'
 * lanes fixed in the source, and no FMA in either to contract into. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define K_FAST static __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef K_FAST
#define K_FAST static __attribute__((noinline))
#endif

/* --- threads ----------------------------------------------------------------
 * Every kernel runs on the rank's OpenMP threads, the pool OpenBLAS's OpenMP
 * build runs on too (blas_set_threads sets their number), so the two never
 * run more threads than the rank has cores, and no thread spins while the
 * other kind works. Work is cut into pieces whose bounds do not depend on the
 * number of threads (K_PIECE elements of a flat buffer, a row, an image
 * plane, a range of columns), each output element is written by exactly one
 * piece, and a piece runs its loops in the order a serial run does: results
 * are bitwise the same for any thread count. Work of less than two pieces
 * runs on the calling thread, with no parallel region to pay for. */
#define K_PIECE 16384

/* Pieces of K_PIECE elements covering n; piece k is [k * K_PIECE, + k_piece_len). */
static inline int64_t k_pieces(int64_t n) { return (n + K_PIECE - 1) / K_PIECE; }
static inline int64_t k_piece_len(int64_t n, int64_t k)
{
    return n - k * K_PIECE < K_PIECE ? n - k * K_PIECE : K_PIECE;
}

/* Whether `count` items of `each` elements are worth a parallel loop. */
static inline bool k_par(int64_t count, int64_t each)
{
    return count > 1 && count * each >= 2 * K_PIECE;
}

/* Column pieces for a sum over rows into a vector of n columns (a bias's or
 * a norm's gradient): each thread owns whole columns and adds the rows in
 * order. Pieces of K_COLS columns. */
#define K_COLS 128

/* The threads a parallel loop may use now, and the calling one's number
 * (per-thread scratch is indexed by it). */
int k_threads(void);
int k_thread(void);

/* n1 floats at a and n2 floats at b share no byte (the promise `restrict`
 * makes in the fast loops). */
static inline bool k_apart(const void *a, int64_t n1, const void *b, int64_t n2)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x + (uintptr_t)n1 * sizeof(float) <= y || y + (uintptr_t)n2 * sizeof(float) <= x;
}

/* e^x in fp32 with no libm call, so that a loop over it vectorises. Within
 * 1 ulp of e^x on [-87.33, 88] (tests sweep it); 0 below -87.33 (where expf
 * is subnormal or 0, so a masked -inf still gives exactly 0); e^88 above 88
 * (never inf); NaN for NaN. x = n ln2 + r with |r| <= ln2/2 (ln2 in two
 * parts, so n ln2 is exact), then Cephes' degree-6 polynomial for e^r,
 * scaled by 2^n built in the exponent bits. The two ends are integer masks
 * applied last: written as ?: gcc sinks the arithmetic into a branch that it
 * then will not if-convert (fp math may trap), and the loop stays scalar. */
static inline float k_expf(float x)
{
    float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: n in the low bits */
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t tb, eb, yb;
    memcpy(&tb, &t, sizeof tb);
    eb = (tb - 0x4B3FFF81u) << 23;                   /* (n + 127) << 23 */
    float s, y;
    memcpy(&s, &eb, sizeof s);
    y = p * s;
    memcpy(&yb, &y, sizeof yb);
    uint32_t hi = -(uint32_t)(x > 88.0f), lo = -(uint32_t)(x < -87.33654f);
    yb = ((yb & ~hi) | (0x7EF882B7u & hi)) & ~lo;    /* 0x7EF882B7: e^88 */
    memcpy(&y, &yb, sizeof y);
    return y;
}

#endif
