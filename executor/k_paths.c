/*
 * k_paths.c — which path the CPU kernels take for a contraction: SGEMM, or
 * plain loops for one too small for a BLAS call to pay (kernels_internal.h).
 * The cost model reads the same choice (kernel_contract_loops), so it lives
 * apart from the kernels, which need the BLAS.
 */
#include "kernels_internal.h"

int64_t k_gemm_min_work = 4096;
int64_t k_gemm_min_run = 64;

bool kernel_contract_loops(double m, double n, double k)
{
    return m * n * k < (double)k_gemm_min_work;
}
