/*
 * comm.h — communication behind one small table of functions, two backends:
 * MPI (Open MPI; CPUs, and bootstrapping) and NCCL (GPUs; the NCCL unique id
 * travels by MPI_Bcast). Open MPI and NCCL are the distributed engines;
 * strata adds none of its own.
 *
 * Threads: the functions may be called from several threads of a process,
 * one call at a time per process being all MPI_THREAD_SERIALIZED allows; the
 * MPI backend takes a process-wide lock around each, so a progress thread can
 * test requests while another thread computes.
 *
 * A group is an ordered list of world ranks (the ranks along some mesh axes,
 * built by the runtime from the strategy); collectives run on a group and
 * order their data by group index. Buffers live where the backend computes
 * (host memory for MPI, device memory for NCCL). Counts are elements.
 */
#ifndef STRATA_COMM_H
#define STRATA_COMM_H

#include <stdint.h>
#include "ir/err.h"

typedef enum { RED_SUM, RED_MAX } RedOp;
/* Element types on the wire: f16/bf16 carry compressed gradients (reduced
 * with a sum in fp32 arithmetic), bytes carry int8 codes (no reduction). */
typedef enum { CT_F32, CT_F16, CT_BF16, CT_I32, CT_BYTE } CommType;

typedef struct CommGroup CommGroup;     /* backend-defined */
typedef struct CommReq CommReq;         /* a send in flight (backend-defined) */
typedef struct Comm Comm;               /* one process's communication state */

typedef struct {
    const char *name;                   /* "mpi", "nccl" */
    /* A group of the world ranks `ranks` (n of them, ascending or not; this
     * process is ranks[me]). Every member must call it, in the same order. */
    CommGroup *(*group_new)(Comm *c, const int *ranks, int n, int me, Err *err);
    void (*group_free)(CommGroup *g);
    /* in place: buf (count) <- reduction over the group */
    int (*allreduce)(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op, Err *err);
    /* recv (count * n) <- every member's send (count), in group order */
    int (*allgather)(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt, Err *err);
    /* recv (count) <- sum over members of their send block [me*count, (me+1)*count) */
    int (*reduce_scatter)(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                          Err *err);
    /* block j of send (count each) goes to member j; block i of recv came from member i */
    int (*all_to_all)(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt, Err *err);
    int (*broadcast)(CommGroup *g, void *buf, int64_t count, CommType dt, int root, Err *err);
    /* point to point with the member at group index `peer`; tag orders them.
     * send returns when buf may be reused and may wait for the matching recv. */
    int (*send)(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag, Err *err);
    int (*recv)(CommGroup *g, void *buf, int64_t count, CommType dt, int peer, int tag, Err *err);
    /* Starts the same send as `send` and returns at once: buf must stay
     * unchanged until wait(*req), which every isend needs before its group is
     * freed. *req may be NULL (the send completed already). */
    int (*isend)(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                 CommReq **req, Err *err);
    /* Starts the same all-reduce as `allreduce` and returns at once: buf is
     * the backend's until wait(*req). Members start their non-blocking and
     * blocking collectives of one group in the same order. *req may be NULL
     * (it completed already). */
    int (*iallreduce)(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op,
                      CommReq **req, Err *err);
    /* Start the same reduce_scatter / allgather and return at once: send
     * and recv are the backend's until wait(*req), and the same ordering
     * rule holds. *req may be NULL (it completed already). */
    int (*ireduce_scatter)(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                           CommReq **req, Err *err);
    int (*iallgather)(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                      CommReq **req, Err *err);
    /* Lets req progress without waiting; *done says whether it completed
     * (req still needs its wait). */
    int (*test)(CommReq *req, int *done, Err *err);
    /* Completes req (a send or a collective) and frees it (NULL: nothing to do). */
    int (*wait)(CommReq *req, Err *err);
    /* Releases the backend state and c itself; comm_free calls it. */
    void (*destroy)(Comm *c);
} CommOps;

struct Comm {
    const CommOps *ops;
    int rank, world;
    void *impl;                         /* backend state */
};

/* MPI must be initialised by the caller (MPI_Init_thread with at least
 * MPI_THREAD_SERIALIZED). NULL with err if the backend is not built. */
Comm *comm_mpi_new(Err *err);
/* NCCL on the current CUDA device; bootstraps over MPI. */
Comm *comm_nccl_new(Err *err);
/* Frees c (NULL is fine). Free its groups first; call it before MPI_Finalize. */
void comm_free(Comm *c);
/* For backends: checks group_new's arguments (ranks inside the world, no rank
 * twice, this process at index me); the message names the backend. */
int comm_check_group(const Comm *c, const char *backend, const int *ranks, int n, int me, Err *err);

#endif
