/*
 * k_elementwise.c — kernels that touch each element once: add (residuals,
 * any number of inputs), bias (the second input broadcast over the first's
 * letters, in any order: "bsh,h", "bsh,sh", "nchw,c"), gelu (the tanh form
 * of GPT-2) and relu.
 *
 * All of them are memory-bound; each is one pass with a unit-stride inner
 * loop the compiler vectorises. None depends on how the op is split: every
 * element is computed from the elements at the same position.
 *
 * Legend: x = input 0, y = the output, b = the bias, dy = the output gradient.
 */
#include "kernels_internal.h"

#include <math.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * add */

int k_add_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const int64_t n = kernel_operand_numel(ks, ks->op->nin);
    const float *x0 = in[0], *x1 = in[1];
    for (int64_t i = 0; i < n; i++) out[i] = x0[i] + x1[i];
    for (int k = 2; k < ks->op->nin; k++) {
        const float *xk = in[k];
        for (int64_t i = 0; i < n; i++) out[i] += xk[i];
    }
    return 0;
}

int k_add_bwd(const KernelShape *ks, const void *const *in, const float *out,
              const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out, (void)err;
    const int64_t n = kernel_operand_numel(ks, ks->op->nin);
    for (int k = 0; k < ks->op->nin; k++) {
        float *d = din[k];
        if (d)
            for (int64_t i = 0; i < n; i++) d[i] += dout[i];
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * bias: y = x + b broadcast over x's letters missing from b */

int k_bias_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const Op *op = ks->op;
    const float *x = in[0], *b = in[1];
    int64_t sx[IR_LETTERS], sb[IR_LETTERS];
    k_strides(op->in_letters[0], ks->size, sx);
    k_strides(op->in_letters[1], ks->size, sb);
    KLoop lp;
    kloop_init(&lp, op->in_letters[0], ks->size, 2, (const int64_t *const[]){sx, sb});
    const int64_t n1 = lp.inner, b1 = lp.ist[1];
    do {
        const float *xi = x + lp.off[0], *bi = b + lp.off[1];
        float *yi = out + lp.off[0];
        if (b1 == 0) {
            const float bv = *bi;
            for (int64_t i = 0; i < n1; i++) yi[i] = xi[i] + bv;
        } else if (b1 == 1) {
            for (int64_t i = 0; i < n1; i++) yi[i] = xi[i] + bi[i];
        } else {
            for (int64_t i = 0; i < n1; i++) yi[i] = xi[i] + bi[i * b1];
        }
    } while (kloop_next(&lp));
    return 0;
}

int k_bias_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)in, (void)out, (void)err;
    const Op *op = ks->op;
    if (din[0]) {
        const int64_t n = kernel_operand_numel(ks, 0);
        float *d = din[0];
        for (int64_t i = 0; i < n; i++) d[i] += dout[i];
    }
    if (din[1])
        k_map(din[1], op->in_letters[1], dout, op->out_letters, ks->size, 1, true);
    return 0;
}

/* ----------------------------------------------------------------------------
 * gelu, tanh form: y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) */

#define GELU_K 0.7978845608028654f   /* sqrt(2/pi) */
#define GELU_C 0.044715f

int k_gelu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + tanhf(GELU_K * (v + GELU_C * v * v * v)));
    }
    return 0;
}

int k_gelu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)out, (void)err;
    if (!din[0]) return 0;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    float *d = din[0];
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], t = tanhf(GELU_K * (v + GELU_C * v * v * v));
        float du = GELU_K * (1.0f + 3.0f * GELU_C * v * v);
        d[i] += dout[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * relu */

int k_relu_fwd(const KernelShape *ks, const void *const *in, float *out, Err *err)
{
    (void)err;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0;
    return 0;
}

int k_relu_bwd(const KernelShape *ks, const void *const *in, const float *out,
               const float *dout, float *const *din, Err *err)
{
    (void)out, (void)err;
    if (!din[0]) return 0;
    const int64_t n = kernel_operand_numel(ks, 0);
    const float *x = in[0];
    float *d = din[0];
    for (int64_t i = 0; i < n; i++) d[i] += x[i] > 0 ? dout[i] : 0;
    return 0;
}
