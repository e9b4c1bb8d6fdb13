/*
 * blas.h — making sure OpenBLAS runs the kernels this CPU deserves.
 *
 * Debian's OpenBLAS 0.3.21 does not recognise recent cores (AVX-512 Xeons,
 * for one) and falls back to a generic SSE3 kernel, about 5x slower. The
 * kernel is chosen when the library loads, from OPENBLAS_CORETYPE, so the fix
 * is to set it and start the program again.
 */
#ifndef STRATA_BLAS_H
#define STRATA_BLAS_H

/* When OpenBLAS runs a generic kernel on a CPU with AVX-512 or AVX2 and the
 * user set no OPENBLAS_CORETYPE, sets it (SkylakeX or Haswell) and
 * re-executes argv; returns when there is nothing to do or the re-execution
 * failed. Call it first thing in main(); blas_describe says what happened. */
void blas_fix_coretype(char **argv);

/* The kernel OpenBLAS runs ("SkylakeX", "Prescott", ...). */
const char *blas_corename(void);
/* "OpenBLAS kernel SkylakeX (its generic Prescott kernel replaced ...)", into buf. */
const char *blas_describe(char *buf, int n);
/* Shares the cores among the ranks of one machine: cores / ranks_per_node
 * OpenBLAS threads each (at least one), so ranks do not fight for cores. */
void blas_threads(int ranks_per_node);
/* Exactly t threads (a layout chosen by the user, or the one a profile was
 * measured with), for OpenBLAS and strata's kernels alike: both run on the
 * one OpenMP pool of the process. */
void blas_set_threads(int t);
/* The threads a kernel or a BLAS call runs on now. */
int blas_get_threads(void);

#endif
