/*
 * comm_nccl.c — the NCCL backend of comm.h: device buffers, NCCL collectives
 * on the CUDA device that is current when comm_nccl_open is called (part of
 * libstrata-cuda.so, gpu.h).
 *
 * A group is one NCCL communicator over the given world ranks in the given
 * order: member 0 draws the ncclUniqueId, an MPI communicator of the same
 * ranks carries it to the others (MPI_Bcast), and every member joins with
 * ncclCommInitRank at its group index. Each group owns a CUDA stream; every
 * call enqueues its work there and waits for it (cudaStreamSynchronize), so
 * calls are blocking, like the MPI backend's, and buffers may be reused at
 * once. Overlapping comm with compute is the caller's business (a second
 * thread; only comm_nccl_open and group_new make MPI calls).
 *
 * NCCL has no tags: sends and recvs between two members match in the order
 * they are posted. The tag is checked (>= 0) and otherwise unused. A send to
 * oneself is copied into a queue and matched by tag, as in the MPI backend
 * (a lone ncclSend to self would wait for a recv that cannot be posted).
 *
 * isend cannot launch at once: a send kernel waits for its recv, and a recv
 * posted after it on the same communicator would wait behind it, so crossed
 * sends (1F1B's neighbouring stages) would deadlock. An isend is queued on its
 * group instead and launched, in one ncclGroupStart/End, with the group's next
 * recv (as Megatron fuses send_forward with recv_backward), or alone at its
 * wait, at a blocking send or before the group's next collective; each launch
 * waits for everything in it. That covers alternating isend/recv between
 * neighbours, but not every program MPI accepts: two members that each isend
 * twice to the other and then recv twice wait forever (each one's first recv
 * launches both sends, the other's first launch receives only one), and so
 * does a program whose peer needs the data while this member is inside a
 * collective of another group before its next recv or wait on this one.
 *
 * f16 and bf16 are reduced by NCCL itself (each step rounds back to the
 * format, like the MPI backend's user-defined ops); bytes are never reduced.
 *
 * Legend: n = group size, me = this process's group index, count = elements
 * per block, esize = bytes per element.
 */
#include "executor/gpu.h"

#if defined(HAVE_NCCL) && defined(HAVE_CUDA) && defined(HAVE_MPI)

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* errors                                                                     */

/* Keeps only the function name of a stringised call. */
static int call_name(const char *call) { return (int)strcspn(call, "("); }

static int mpi_fail(Err *err, int rc, const char *call, const char *file, int line)
{
    char s[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error code %d", rc);
    return err_set(err, "%s:%d: %.*s failed: %s", file, line, call_name(call), call, s);
}

static int cuda_fail(Err *err, cudaError_t rc, const char *call, const char *file, int line)
{
    return err_set(err, "%s:%d: %.*s failed: %s: %s", file, line, call_name(call), call,
                   cudaGetErrorName(rc), cudaGetErrorString(rc));
}

/* NCCL's last error (per thread, or per comm) says more than the code's name. */
static int nccl_fail(Err *err, ncclResult_t rc, ncclComm_t comm, const char *call, const char *file,
                     int line)
{
    const char *last = ncclGetLastError(comm);
    return err_set(err, "%s:%d: %.*s failed: %s%s%s", file, line, call_name(call), call,
                   ncclGetErrorString(rc), last && *last ? ": " : "", last ? last : "");
}

/* The *_CHECK macros return -1; the *_GOTO forms jump to a cleanup label. */
#define MPI_CHECK(call)                                                          \
    do {                                                                         \
        int rc_ = (call);                                                        \
        if (rc_ != MPI_SUCCESS) return mpi_fail(err, rc_, #call, __FILE__, __LINE__); \
    } while (0)
#define MPI_CHECK_GOTO(call, label)                                              \
    do {                                                                         \
        int rc_ = (call);                                                        \
        if (rc_ != MPI_SUCCESS) {                                                \
            mpi_fail(err, rc_, #call, __FILE__, __LINE__);                       \
            goto label;                                                          \
        }                                                                        \
    } while (0)
#define CUDA_CHECK(call)                                                         \
    do {                                                                         \
        cudaError_t rc_ = (call);                                                \
        if (rc_ != cudaSuccess) return cuda_fail(err, rc_, #call, __FILE__, __LINE__); \
    } while (0)
#define CUDA_CHECK_GOTO(call, label)                                             \
    do {                                                                         \
        cudaError_t rc_ = (call);                                                \
        if (rc_ != cudaSuccess) {                                                \
            cuda_fail(err, rc_, #call, __FILE__, __LINE__);                      \
            goto label;                                                          \
        }                                                                        \
    } while (0)
/* `g` names the group whose communicator reports the error. */
#define NCCL_CHECK(call)                                                         \
    do {                                                                         \
        ncclResult_t rc_ = (call);                                               \
        if (rc_ != ncclSuccess) return nccl_fail(err, rc_, g->nc, #call, __FILE__, __LINE__); \
    } while (0)
#define NCCL_CHECK_GOTO(call, comm, label)                                       \
    do {                                                                         \
        ncclResult_t rc_ = (call);                                               \
        if (rc_ != ncclSuccess) {                                                \
            nccl_fail(err, rc_, comm, #call, __FILE__, __LINE__);                \
            goto label;                                                          \
        }                                                                        \
    } while (0)

static bool mpi_alive(void)
{
    int fin = 0, init = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

/* ------------------------------------------------------------------------- */
/* state                                                                      */

typedef struct {
    MPI_Comm world;            /* our duplicate of MPI_COMM_WORLD, for bootstrapping */
    int device;                /* the CUDA device every group runs on */
} NcclImpl;

/* A message a member sent to itself, in device memory, waiting for its recv. */
typedef struct SelfMsg {
    struct SelfMsg *next;
    int tag;
    size_t bytes;
    void *data;
} SelfMsg;

/* An isend: queued on its group until launched (see the top of the file). */
struct CommReq {
    CommReq *next;
    CommGroup *g;
    const void *buf;
    size_t count;
    ncclDataType_t t;
    int peer;
    bool launched;
    bool failed;               /* its launch failed (the error was returned then) */
};

struct CommGroup {
    NcclImpl *impl;
    ncclComm_t nc;
    cudaStream_t stream;
    int n, me;
    SelfMsg *self;
    CommReq *pending;          /* isends not launched yet, in order */
};

static const char *type_name(CommType dt)
{
    switch (dt) {
    case CT_F32: return "f32";
    case CT_F16: return "f16";
    case CT_BF16: return "bf16";
    case CT_I32: return "i32";
    case CT_BYTE: return "byte";
    }
    return "?";
}

static int nccl_type(CommType dt, ncclDataType_t *t, size_t *esize, Err *err)
{
    switch (dt) {
    case CT_F32: *t = ncclFloat32; *esize = 4; return 0;
    case CT_I32: *t = ncclInt32; *esize = 4; return 0;
    case CT_F16: *t = ncclFloat16; *esize = 2; return 0;
    case CT_BF16: *t = ncclBfloat16; *esize = 2; return 0;
    case CT_BYTE: *t = ncclInt8; *esize = 1; return 0;
    }
    return err_set(err, "comm nccl: unknown element type %d", (int)dt);
}

static int nccl_redop(CommType dt, RedOp op, ncclRedOp_t *out, Err *err)
{
    if (op != RED_SUM && op != RED_MAX)
        return err_set(err, "comm nccl: unknown reduction %d", (int)op);
    if (dt == CT_BYTE)
        return err_set(err, "comm nccl: cannot reduce byte elements (bytes carry int8 codes and are "
                            "gathered, never summed: decode to f32 first)");
    *out = op == RED_SUM ? ncclSum : ncclMax;
    return 0;
}

static int check_count(int64_t count, const char *what, Err *err)
{
    if (count < 0)
        return err_set(err, "comm nccl: %s of a negative count (%lld)", what, (long long)count);
    return 0;
}

/* Waits for the group's stream while asking NCCL whether anything failed
 * asynchronously (a peer gone, a network error): a collective whose peer
 * died never completes, so waiting on the stream alone would hang. On an
 * error the communicator is aborted, which stops its kernels. */
static int finish(CommGroup *g, Err *err)
{
    for (unsigned spin = 0;; spin++) {
        cudaError_t q = cudaStreamQuery(g->stream);
        if (q == cudaSuccess) break;
        if (q != cudaErrorNotReady) return cuda_fail(err, q, "cudaStreamQuery", __FILE__, __LINE__);
        ncclResult_t async = ncclSuccess;
        NCCL_CHECK(ncclCommGetAsyncError(g->nc, &async));
        if (async != ncclSuccess && async != ncclInProgress) {
            nccl_fail(err, async, g->nc, "ncclCommGetAsyncError", __FILE__, __LINE__);
            ncclCommAbort(g->nc);
            g->nc = NULL;
            return -1;
        }
        /* spin briefly (short collectives), then yield the core */
        if (spin > 1000) sched_yield();
    }
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(g->nc, &async));
    if (async != ncclSuccess)
        return nccl_fail(err, async, g->nc, "ncclCommGetAsyncError", __FILE__, __LINE__);
    return 0;
}

/* Launches the queued isends, with one recv when `rbuf` is given, as one NCCL
 * group, and waits for all of it. */
static int launch(CommGroup *g, void *rbuf, size_t rcount, ncclDataType_t rt, int rpeer, Err *err)
{
    if (!g->pending && !rbuf) return 0;
    ncclResult_t rc = ncclGroupStart();
    if (rc != ncclSuccess) return nccl_fail(err, rc, g->nc, "ncclGroupStart", __FILE__, __LINE__);
    for (CommReq *q = g->pending; q && rc == ncclSuccess; q = q->next)
        rc = ncclSend(q->buf, q->count, q->t, q->peer, g->nc, g->stream);
    if (rc == ncclSuccess && rbuf) rc = ncclRecv(rbuf, rcount, rt, rpeer, g->nc, g->stream);
    ncclResult_t end = ncclGroupEnd();
    int st = 0;
    if (rc != ncclSuccess) st = nccl_fail(err, rc, g->nc, "ncclSend/ncclRecv", __FILE__, __LINE__);
    else if (end != ncclSuccess) st = nccl_fail(err, end, g->nc, "ncclGroupEnd", __FILE__, __LINE__);
    else st = finish(g, err);
    for (CommReq *q = g->pending; q; q = q->next) {
        q->launched = true;
        q->failed = st != 0;
    }
    g->pending = NULL;
    return st;
}

/* Queued isends go before a collective, as the program posted them. */
#define FLUSH(g)                                                                 \
    do {                                                                         \
        if ((g)->pending && launch((g), NULL, 0, ncclFloat32, 0, err)) return -1; \
    } while (0)

/* ------------------------------------------------------------------------- */
/* groups                                                                     */

/* One tag for every MPI_Comm_create_group (see comm_mpi.c: a counter would
 * drift apart on ranks that make groups the others do not). */
#define GROUP_TAG 7151

static CommGroup *nccl_group_new(Comm *c, const int *ranks, int n, int me, Err *err)
{
    NcclImpl *impl = c->impl;
    MPI_Group world_group = MPI_GROUP_NULL, group = MPI_GROUP_NULL;
    MPI_Comm sub = MPI_COMM_NULL;
    CommGroup *g = NULL;

    if (comm_check_group(c, "nccl", ranks, n, me, err)) return NULL;

    g = calloc(1, sizeof *g);
    if (!g) {
        err_set(err, "comm nccl: out of memory for a group");
        return NULL;
    }
    g->impl = impl;
    g->n = n;
    g->me = me;

    /* The id travels with member 0's verdict, so a failed ncclGetUniqueId
     * fails every member instead of leaving them in ncclCommInitRank. */
    struct {
        int ok;
        ncclUniqueId id;
    } boot;
    memset(&boot, 0, sizeof boot);
    MPI_CHECK_GOTO(MPI_Comm_group(impl->world, &world_group), fail);
    MPI_CHECK_GOTO(MPI_Group_incl(world_group, n, ranks, &group), fail);
    MPI_CHECK_GOTO(MPI_Comm_create_group(impl->world, group, GROUP_TAG, &sub), fail);
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN), fail);
    if (me == 0) {
        ncclResult_t rc = ncclGetUniqueId(&boot.id);
        boot.ok = rc == ncclSuccess;
        if (!boot.ok) nccl_fail(err, rc, NULL, "ncclGetUniqueId", __FILE__, __LINE__);
    }
    MPI_CHECK_GOTO(MPI_Bcast(&boot, (int)sizeof boot, MPI_BYTE, 0, sub), fail);
    if (!boot.ok) {
        if (me != 0) err_set(err, "comm nccl: group member 0 (world rank %d) could not make an NCCL id",
                             ranks[0]);
        goto fail;
    }

    CUDA_CHECK_GOTO(cudaSetDevice(impl->device), fail);
    CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking), fail);
    NCCL_CHECK_GOTO(ncclCommInitRank(&g->nc, n, boot.id, me), NULL, fail);

    MPI_Comm_free(&sub);
    MPI_Group_free(&group);
    MPI_Group_free(&world_group);
    return g;

fail:
    err_prefix(err, "comm nccl: creating a group of %d ranks", n);
    if (sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
    if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
    if (world_group != MPI_GROUP_NULL) MPI_Group_free(&world_group);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g);
    return NULL;
}

static void nccl_group_free(CommGroup *g)
{
    if (!g) return;
    while (g->self) {
        SelfMsg *m = g->self;
        g->self = m->next;
        cudaFree(m->data);
        free(m);
    }
    /* isends never waited: their requests stay with the caller, unlaunched */
    for (CommReq *q = g->pending; q; q = q->next) {
        q->g = NULL;
        q->launched = q->failed = true;
    }
    if (g->nc) ncclCommDestroy(g->nc);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g);
}

/* ------------------------------------------------------------------------- */
/* collectives                                                                */

static int nccl_allreduce(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op, Err *err)
{
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t rop = ncclSum;
    size_t es = 0;
    if (check_count(count, "allreduce", err) || nccl_type(dt, &t, &es, err) ||
        nccl_redop(dt, op, &rop, err))
        return -1;
    FLUSH(g);
    if (count == 0) return 0;
    NCCL_CHECK(ncclAllReduce(buf, buf, (size_t)count, t, rop, g->nc, g->stream));
    return finish(g, err);
}

static int nccl_allgather(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                          Err *err)
{
    ncclDataType_t t = ncclFloat32;
    size_t es = 0;
    if (check_count(count, "allgather", err) || nccl_type(dt, &t, &es, err)) return -1;
    FLUSH(g);
    if (count == 0) return 0;
    /* send == recv + me * count is NCCL's own in-place form */
    NCCL_CHECK(ncclAllGather(send, recv, (size_t)count, t, g->nc, g->stream));
    return finish(g, err);
}

static int nccl_reduce_scatter(CommGroup *g, const void *send, void *recv, int64_t count,
                               CommType dt, Err *err)
{
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t rop = ncclSum;
    size_t es = 0;
    if (check_count(count, "reduce_scatter", err) || nccl_type(dt, &t, &es, err) ||
        nccl_redop(dt, RED_SUM, &rop, err))
        return -1;
    FLUSH(g);
    if (count == 0) return 0;
    if (send != recv) {
        NCCL_CHECK(ncclReduceScatter(send, recv, (size_t)count, t, rop, g->nc, g->stream));
        return finish(g, err);
    }
    /* send == recv (the MPI backend's in-place form: the result is the first
     * block): NCCL's in-place form leaves it in block me, so move it after. */
    char *mine = (char *)recv + (size_t)g->me * (size_t)count * es;
    NCCL_CHECK(ncclReduceScatter(send, mine, (size_t)count, t, rop, g->nc, g->stream));
    if (g->me != 0)
        CUDA_CHECK(cudaMemcpyAsync(recv, mine, (size_t)count * es, cudaMemcpyDeviceToDevice, g->stream));
    return finish(g, err);
}

static int nccl_all_to_all(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                           Err *err)
{
    ncclDataType_t t = ncclFloat32;
    size_t es = 0;
    if (check_count(count, "all_to_all", err) || nccl_type(dt, &t, &es, err)) return -1;
    FLUSH(g);
    if (count == 0) return 0;
    if (send == recv)
        return err_set(err, "comm nccl: all_to_all cannot run in place (send == recv): use two buffers");
    size_t block = (size_t)count * es;
    NCCL_CHECK(ncclGroupStart());
    for (int j = 0; j < g->n; j++) {
        ncclResult_t rc = ncclSend((const char *)send + j * block, (size_t)count, t, j, g->nc, g->stream);
        if (rc == ncclSuccess)
            rc = ncclRecv((char *)recv + j * block, (size_t)count, t, j, g->nc, g->stream);
        if (rc != ncclSuccess) {
            ncclGroupEnd();
            return nccl_fail(err, rc, g->nc, "ncclSend/ncclRecv", __FILE__, __LINE__);
        }
    }
    NCCL_CHECK(ncclGroupEnd());
    return finish(g, err);
}

static int nccl_broadcast(CommGroup *g, void *buf, int64_t count, CommType dt, int root, Err *err)
{
    ncclDataType_t t = ncclFloat32;
    size_t es = 0;
    if (check_count(count, "broadcast", err) || nccl_type(dt, &t, &es, err)) return -1;
    if (root < 0 || root >= g->n)
        return err_set(err, "comm nccl: broadcast root %d is outside a group of %d", root, g->n);
    FLUSH(g);
    if (count == 0) return 0;
    NCCL_CHECK(ncclBroadcast(buf, buf, (size_t)count, t, root, g->nc, g->stream));
    return finish(g, err);
}

static int check_p2p(CommGroup *g, const char *what, int64_t count, int peer, int tag, Err *err)
{
    if (check_count(count, what, err)) return -1;
    if (peer < 0 || peer >= g->n)
        return err_set(err, "comm nccl: %s peer %d is outside a group of %d", what, peer, g->n);
    if (tag < 0) return err_set(err, "comm nccl: %s tag %d is negative", what, tag);
    return 0;
}

/* A send to oneself is copied into the group's queue and is complete at once. */
static int self_send(CommGroup *g, const void *buf, size_t bytes, int tag, Err *err)
{
    SelfMsg *m = calloc(1, sizeof *m);
    if (!m) return err_set(err, "comm nccl: out of memory for a send to self");
    m->tag = tag;
    m->bytes = bytes;
    if (bytes) {
        cudaError_t rc = cudaMalloc(&m->data, bytes);
        if (rc == cudaSuccess)
            rc = cudaMemcpyAsync(m->data, buf, bytes, cudaMemcpyDeviceToDevice, g->stream);
        if (rc == cudaSuccess) rc = cudaStreamSynchronize(g->stream);
        if (rc != cudaSuccess) {
            cudaFree(m->data);
            free(m);
            return cuda_fail(err, rc, "cudaMalloc/cudaMemcpyAsync (send to self)", __FILE__, __LINE__);
        }
    }
    SelfMsg **tail = &g->self;
    while (*tail) tail = &(*tail)->next;
    *tail = m;
    return 0;
}

static int nccl_wait(CommReq *q, Err *err)
{
    if (!q) return 0;
    int rc = 0;
    if (!q->launched) rc = launch(q->g, NULL, 0, ncclFloat32, 0, err);
    else if (q->failed)
        rc = err_set(err, "comm nccl: this send failed when it was launched (see the error then), "
                          "or its group was freed before the wait");
    free(q);
    return rc;
}

static int nccl_isend(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                      CommReq **req, Err *err)
{
    ncclDataType_t t = ncclFloat32;
    size_t es = 0;
    *req = NULL;
    if (check_p2p(g, "send", count, peer, tag, err) || nccl_type(dt, &t, &es, err)) return -1;
    if (peer == g->me) return self_send(g, buf, (size_t)count * es, tag, err);
    if (count == 0) return 0;  /* the recv of nothing returns at once too */
    CommReq *q = calloc(1, sizeof *q);
    if (!q) return err_set(err, "comm nccl: out of memory for a send");
    q->g = g;
    q->buf = buf;
    q->count = (size_t)count;
    q->t = t;
    q->peer = peer;
    CommReq **tail = &g->pending;
    while (*tail) tail = &(*tail)->next;
    *tail = q;
    *req = q;
    return 0;
}

/* Returns once the data has reached the peer (its recv was posted), after
 * the group's queued isends. */
static int nccl_send(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                     Err *err)
{
    CommReq *q = NULL;
    if (nccl_isend(g, buf, count, dt, peer, tag, &q, err)) return -1;
    return nccl_wait(q, err);
}

static int nccl_recv(CommGroup *g, void *buf, int64_t count, CommType dt, int peer, int tag, Err *err)
{
    ncclDataType_t t = ncclFloat32;
    size_t es = 0;
    if (check_p2p(g, "recv", count, peer, tag, err) || nccl_type(dt, &t, &es, err)) return -1;
    if (peer == g->me) {
        SelfMsg **p = &g->self;
        while (*p && (*p)->tag != tag) p = &(*p)->next;
        if (!*p)
            return err_set(err, "comm nccl: recv from self with tag %d has no matching send: "
                                "a member's send to itself must come before its recv", tag);
        SelfMsg *m = *p;
        size_t bytes = (size_t)count * es;
        if (m->bytes != bytes)
            return err_set(err, "comm nccl: recv from self with tag %d expects %zu bytes (%lld %s), "
                                "the send carried %zu", tag, bytes, (long long)count,
                           type_name(dt), m->bytes);
        *p = m->next;
        cudaError_t rc = cudaSuccess;
        if (bytes) {
            rc = cudaMemcpyAsync(buf, m->data, bytes, cudaMemcpyDeviceToDevice, g->stream);
            if (rc == cudaSuccess) rc = cudaStreamSynchronize(g->stream);
        }
        cudaFree(m->data);
        free(m);
        if (rc != cudaSuccess)
            return cuda_fail(err, rc, "cudaMemcpyAsync (recv from self)", __FILE__, __LINE__);
        return 0;
    }
    if (count == 0) return 0;
    return launch(g, buf, (size_t)count, t, peer, err);
}

/* The collectives run on the group's stream and are synchronised before
 * these return, so they are complete at once (*req NULL): overlap on a GPU
 * comes from streams, not from these calls. */
static int nccl_iallreduce(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op,
                           CommReq **req, Err *err)
{
    *req = NULL;
    return nccl_allreduce(g, buf, count, dt, op, err);
}

static int nccl_ireduce_scatter(CommGroup *g, const void *send, void *recv, int64_t count,
                                CommType dt, CommReq **req, Err *err)
{
    *req = NULL;
    return nccl_reduce_scatter(g, send, recv, count, dt, err);
}

static int nccl_iallgather(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                           CommReq **req, Err *err)
{
    *req = NULL;
    return nccl_allgather(g, send, recv, count, dt, err);
}

/* Queued sends start at their wait (see the top of this file). */
static int nccl_test(CommReq *q, int *done, Err *err)
{
    (void)err;
    *done = q == NULL;
    return 0;
}

static void nccl_destroy(Comm *c);

static const CommOps nccl_ops = {
    .name = "nccl",
    .group_new = nccl_group_new,
    .group_free = nccl_group_free,
    .allreduce = nccl_allreduce,
    .allgather = nccl_allgather,
    .reduce_scatter = nccl_reduce_scatter,
    .all_to_all = nccl_all_to_all,
    .broadcast = nccl_broadcast,
    .send = nccl_send,
    .recv = nccl_recv,
    .isend = nccl_isend,
    .iallreduce = nccl_iallreduce,
    .ireduce_scatter = nccl_ireduce_scatter,
    .iallgather = nccl_iallgather,
    .test = nccl_test,
    .wait = nccl_wait,
    .destroy = nccl_destroy,
};

/* ------------------------------------------------------------------------- */
/* Comm                                                                       */

static void nccl_destroy(Comm *c)
{
    NcclImpl *impl = c->impl;
    if (impl) {
        if (impl->world != MPI_COMM_NULL && mpi_alive()) MPI_Comm_free(&impl->world);
        free(impl);
    }
    free(c);
}

Comm *comm_nccl_open(Err *err)
{
    int init = 0, fin = 0, ndev = 0;
    cudaError_t rc = cudaGetDeviceCount(&ndev);
    if (rc != cudaSuccess) {
        err_set(err, "comm nccl: no CUDA device (cudaGetDeviceCount: %s: %s)", cudaGetErrorName(rc),
                cudaGetErrorString(rc));
        return NULL;
    }
    if (ndev == 0) {
        err_set(err, "comm nccl: no CUDA device (cudaGetDeviceCount found none)");
        return NULL;
    }
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) {
        err_set(err, "comm nccl: MPI is %s: NCCL bootstraps over MPI, so call "
                     "MPI_Init_thread(..., MPI_THREAD_SERIALIZED, ...) before comm_nccl_open",
                fin ? "already finalised" : "not initialised");
        return NULL;
    }

    Comm *c = calloc(1, sizeof *c);
    NcclImpl *impl = calloc(1, sizeof *impl);
    if (!c || !impl) {
        free(c);
        free(impl);
        err_set(err, "comm nccl: out of memory");
        return NULL;
    }
    c->ops = &nccl_ops;
    c->impl = impl;
    impl->world = MPI_COMM_NULL;
    CUDA_CHECK_GOTO(cudaGetDevice(&impl->device), fail);
    MPI_CHECK_GOTO(MPI_Comm_dup(MPI_COMM_WORLD, &impl->world), fail);
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(impl->world, MPI_ERRORS_RETURN), fail);
    MPI_CHECK_GOTO(MPI_Comm_rank(impl->world, &c->rank), fail);
    MPI_CHECK_GOTO(MPI_Comm_size(impl->world, &c->world), fail);
    return c;

fail:
    err_prefix(err, "comm nccl");
    nccl_destroy(c);
    return NULL;
}

#elif defined(HAVE_NCCL) && defined(HAVE_CUDA)

Comm *comm_nccl_open(Err *err)
{
    err_set(err, "strata was built without MPI, which NCCL needs to bootstrap: install openmpi-bin "
                 "and libopenmpi-dev, then rebuild");
    return NULL;
}

#else

Comm *comm_nccl_open(Err *err)
{
    err_set(err, "%s", GPU_NO_NCCL);
    return NULL;
}

#endif
