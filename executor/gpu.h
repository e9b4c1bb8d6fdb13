/*
 * gpu.h — the CUDA backend as a library of its own, libstrata-cuda.so
 * (device_cuda.c, comm_nccl.c and the kernels of executor/cuda/), built
 * whenever the CUDA toolkit is and loaded by strata the first time a GPU
 * is asked for (gpu.c): the CUDA libraries it links (cuBLAS alone maps
 * hundreds of megabytes and runs constructors at load) then cost nothing
 * to the commands that never touch a GPU. These are the library's entry
 * points, looked up by name; device_cuda_new, comm_nccl_new and
 * cuda_device_count (device.h, comm.h) load it and call them. The GPU
 * tests link the backend's objects and call them directly.
 */
#ifndef STRATA_GPU_H
#define STRATA_GPU_H

#include "executor/comm.h"
#include "executor/device.h"

/* What device_cuda_new, comm_nccl_new and cuda_device_count do. */
Device *device_cuda_open(int local_rank, int local_size, Err *err);
Comm *comm_nccl_open(Err *err);
int cuda_count_devices(Err *err);

/* The library's file name, looked for beside the strata binary (or at
 * $STRATA_CUDA_LIB). */
#define GPU_LIB_NAME "libstrata-cuda.so"

/* What a build without the CUDA toolkit says, with or without the library. */
#define GPU_NO_CUDA "strata was built without CUDA (no nvcc under CUDA_HOME at build time)"
#define GPU_NO_NCCL "strata was built without NCCL (no CUDA toolkit found at build time)"

#endif
