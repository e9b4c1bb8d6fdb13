/*
 * cuk_fn.h — CUK_FN marks a function as callable on host and device; under a
 * plain C compiler it is an ordinary static inline function. Headers of
 * per-thread bodies (executor/cuda/AREA_body.h) include this and stay inside
 * the language both compilers accept: C11 without designated initialisers,
 * compound literals or variable-length arrays.
 */
#ifndef STRATA_CUK_FN_H
#define STRATA_CUK_FN_H

#include <stdint.h>

#ifdef __CUDACC__
#define CUK_FN __host__ __device__ static inline
#else
#define CUK_FN static inline
#endif

#endif
