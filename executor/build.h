/*
 * build.h — which build of the kernels is running, so that what was
 * measured with one build is not silently used to predict another.
 *
 * The kernels' identity is a hash, computed by the Makefile, of the sources
 * that decide how long an op takes (the CPU and CUDA kernels, the device
 * tables, the BLAS set-up) and of the flags and BLAS library they are built
 * with. A profile stores it with the thread layout that measured it.
 */
#ifndef STRATA_BUILD_H
#define STRATA_BUILD_H

#include <cjson/cJSON.h>

/* 12 hex digits. */
const char *build_kernels_id(void);

/* {"kernels": id, "blas": OpenBLAS's configuration, "compiler": ...,
 *  "threads": threads per rank, "ranks_per_node": ...}; caller deletes. */
cJSON *build_json(int threads, int ranks_per_node);

/* When a profile's build (its stored build JSON, NULL for a profile made
 * before builds were recorded) differs from this build's kernels, a warning
 * naming both into buf and 1; else 0 and buf empty. */
int build_check_profile(const char *profile_build_json, long long profile_id, char *buf,
                        int n);

#endif
