/*
 * gpu.c — loads the CUDA backend (gpu.h) the first time a GPU is asked for:
 * libstrata-cuda.so from $STRATA_CUDA_LIB, else from beside the strata
 * binary, resolving its calls into strata's own code (the binary exports
 * its symbols). A build without CUDA has no such library and says so.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "executor/gpu.h"

#ifdef HAVE_CUDA

typedef struct {
    Device *(*device)(int, int, Err *);
    Comm *(*comm)(Err *);
    int (*count)(Err *);
    char why[sizeof ((Err *)0)->msg];    /* set when the library could not be loaded */
} Backend;

static Backend backend;
static pthread_once_t backend_once = PTHREAD_ONCE_INIT;

/* The library's path: $STRATA_CUDA_LIB, else the binary's directory. */
static void lib_path(char *out, size_t cap)
{
    const char *env = getenv("STRATA_CUDA_LIB");
    if (env && env[0]) {
        snprintf(out, cap, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) slash[1] = 0;
    snprintf(out, cap, "%s%s", slash ? exe : "./", GPU_LIB_NAME);
}

static void load(void)
{
    char path[PATH_MAX + 64];
    lib_path(path, sizeof path);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(backend.why, sizeof backend.why, "cannot load the CUDA backend (%.400s): %.500s",
                 path, dlerror());
        return;
    }
    /* the ISO C way around casting an object pointer to a function pointer */
    *(void **)&backend.device = dlsym(h, "device_cuda_open");
    *(void **)&backend.comm = dlsym(h, "comm_nccl_open");
    *(void **)&backend.count = dlsym(h, "cuda_count_devices");
    if (!backend.device || !backend.comm || !backend.count) {
        snprintf(backend.why, sizeof backend.why, "the CUDA backend %.400s lacks its entry points "
                 "(a library from another build of strata?)", path);
        backend.device = NULL;
        backend.comm = NULL;
        backend.count = NULL;
    }
    /* never closed: the devices and communicators it makes live on */
}

static const Backend *loaded(Err *err)
{
    pthread_once(&backend_once, load);
    if (backend.why[0]) {
        err_set(err, "%s", backend.why);
        return NULL;
    }
    return &backend;
}

Device *device_cuda_new(int local_rank, int local_size, Err *err)
{
    const Backend *b = loaded(err);
    return b ? b->device(local_rank, local_size, err) : NULL;
}

Comm *comm_nccl_new(Err *err)
{
    const Backend *b = loaded(err);
    return b ? b->comm(err) : NULL;
}

int cuda_device_count(Err *err)
{
    const Backend *b = loaded(err);
    return b ? b->count(err) : -1;
}

#else

Device *device_cuda_new(int local_rank, int local_size, Err *err)
{
    (void)local_rank, (void)local_size;
    err_set(err, "%s", GPU_NO_CUDA);
    return NULL;
}

Comm *comm_nccl_new(Err *err)
{
    err_set(err, "%s", GPU_NO_NCCL);
    return NULL;
}

int cuda_device_count(Err *err)
{
    return err_set(err, "%s", GPU_NO_CUDA);
}

#endif
