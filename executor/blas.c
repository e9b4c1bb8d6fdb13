/*
 * blas.c — OpenBLAS's kernel choice, checked against what the CPU can do.
 */
#include "executor/blas.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <omp.h>

char *openblas_get_corename(void);
void openblas_set_num_threads(int n);

const char *blas_corename(void)
{
    return openblas_get_corename();
}

/* Cores OpenBLAS falls back to when it does not know the CPU: none of them
 * uses AVX2. */
static bool generic(const char *core)
{
    static const char *const names[] = { "Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                         "Katmai", "Coppermine", "Northwood", "Banias", "Atom",
                                         "Nano", "Sandybridge", NULL };
    for (const char *const *n = names; *n; n++)
        if (strcasecmp(core, *n) == 0) return true;
    return false;
}

void blas_fix_coretype(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("STRATA_BLAS_CHECKED")) return;
    setenv("STRATA_BLAS_CHECKED", "1", 1);
    const char *core = openblas_get_corename();
    if (!core || !generic(core)) return;
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("STRATA_BLAS_REPLACED", core, 1);   /* for blas_describe */
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* could not restart: carry on with the slow kernel rather than fail */
}

const char *blas_describe(char *buf, int n)
{
    const char *was = getenv("STRATA_BLAS_REPLACED");
    if (was)
        snprintf(buf, n, "OpenBLAS kernel %s (its generic %s kernel replaced: set OPENBLAS_CORETYPE "
                 "to choose)", openblas_get_corename(), was);
    else
        snprintf(buf, n, "OpenBLAS kernel %s", openblas_get_corename());
    return buf;
}

void blas_threads(int ranks_per_node)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int t = ranks_per_node > 0 && cores > 0 ? (int)(cores / ranks_per_node) : 1;
    blas_set_threads(t);
}

/* OpenBLAS's OpenMP build runs its threads from OpenMP's pool: one number
 * for both, so that the BLAS and the kernels never run more threads than
 * the rank was given. */
void blas_set_threads(int t)
{
    if (t < 1) t = 1;
    openblas_set_num_threads(t);
    omp_set_num_threads(t);
}

int blas_get_threads(void)
{
    return omp_get_max_threads();
}
