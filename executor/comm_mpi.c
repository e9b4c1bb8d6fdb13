/*
 * comm_mpi.c — the MPI backend of comm.h: host buffers, Open MPI collectives.
 *
 * Every Comm works on its own duplicate of MPI_COMM_WORLD, so strata's traffic
 * never matches a message of the caller's, and that duplicate (and every group
 * made from it) returns errors (MPI_ERRORS_RETURN) instead of aborting the job:
 * MPI_CHECK turns them into an Err naming file:line, the call and
 * MPI_Error_string.
 *
 * A group is an MPI communicator over the given world ranks in the given
 * order (MPI_Comm_create_group: only the members take part), so group index i
 * is communicator rank i and MPI's "rank order" is the contract's group order.
 *
 * f16 and bf16 travel as 16-bit words and are reduced by user-defined MPI_Ops
 * that widen to fp32, combine, and round back to nearest even. Each pairwise
 * combination rounds, so a sum over n members carries up to n-1 roundings (the
 * same as NCCL's half reductions).
 *
 * Counts are int64_t, MPI's are int: a call longer than INT_MAX elements is
 * cut into pieces (the environment variable STRATA_MPI_MAX_COUNT, read by
 * comm_mpi_new, lowers the piece size so the tests can exercise this path).
 * All-reduces go in pieces of at most AR_PIECE elements anyway: Open MPI
 * takes a temporary buffer as large as the message for its algorithms, and
 * below 32 MiB that buffer comes from the heap, reused every step (the
 * runtime keeps glibc from returning it), where a larger one is mapped and
 * faulted in afresh each time.
 *
 * Legend: n = group size, me = this process's group index, count = elements
 * per block, esize = bytes per element.
 */
#include "executor/comm.h"
#include "executor/kernels.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifndef HAVE_MPI

Comm *comm_mpi_new(Err *err)
{
    err_set(err, "strata was built without MPI (no mpicc found at build time): "
                 "install openmpi-bin and libopenmpi-dev, then rebuild");
    return NULL;
}

#else

#include <mpi.h>

/* ------------------------------------------------------------------------- */
/* errors                                                                     */

/* Fills err with "file:line: MPI_Xxx failed: <MPI_Error_string>" and returns -1.
 * `call` is the stringised call; only its function name is kept. */
static int mpi_fail(Err *err, int rc, const char *call, const char *file, int line)
{
    char s[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error code %d", rc);
    int name = (int)strcspn(call, "(");
    return err_set(err, "%s:%d: %.*s failed: %s", file, line, name, call, s);
}

/* For functions that return a status and own nothing to release. */
#define MPI_CHECK(call)                                                          \
    do {                                                                         \
        int rc_ = (call);                                                        \
        if (rc_ != MPI_SUCCESS) return mpi_fail(err, rc_, #call, __FILE__, __LINE__); \
    } while (0)

/* For functions with a cleanup label. */
#define MPI_CHECK_GOTO(call, label)                                              \
    do {                                                                         \
        int rc_ = (call);                                                        \
        if (rc_ != MPI_SUCCESS) {                                                \
            mpi_fail(err, rc_, #call, __FILE__, __LINE__);                       \
            goto label;                                                          \
        }                                                                        \
    } while (0)

/* MPI calls after MPI_Finalize are erroneous; free functions skip them then. */
static bool mpi_alive(void)
{
    int fin = 0, init = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

/* ------------------------------------------------------------------------- */
/* half precision (IEEE binary16 and bfloat16), round to nearest even         */

static float bits_f32(uint32_t b) { float f; memcpy(&f, &b, sizeof f); return f; }
static uint32_t f32_bits(float f) { uint32_t b; memcpy(&b, &f, sizeof b); return b; }

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        /* subnormal man * 2^-24: shift until the implicit bit (0x400) appears */
        uint32_t e = 113;
        while (!(man & 0x400u)) { man <<= 1; e--; }
        return bits_f32(sign | (e << 23) | ((man & 0x3ffu) << 13));
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                     /* below 2^-14: subnormal */
        if (ax < 0x33000000u) return sign;                      /* <= 2^-25 rounds to 0 */
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                               /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u;                              /* rebias 127 -> 15 */
    uint32_t h = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;      /* a carry bumps the exponent */
    return (uint16_t)(sign | h);
}

static float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

static uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* MPI_User_function bodies: inout[i] <- round(widen(in[i]) OP widen(inout[i])). */
#define HALF_OP(name, to32, from32, expr)                                        \
    static void name(void *in, void *inout, int *len, MPI_Datatype *dt)          \
    {                                                                            \
        (void)dt;                                                                \
        const uint16_t *a = in;                                                  \
        uint16_t *b = inout;                                                     \
        for (int i = 0; i < *len; i++) {                                         \
            float x = to32(a[i]), y = to32(b[i]);                                \
            b[i] = from32(expr);                                                 \
        }                                                                        \
    }
/* the sum, the one compressed gradients use: the same rounding in the
 * kernels' vectorised conversions */
static void op_f16_sum(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    kernel_half_sum(in, inout, *len);
}
HALF_OP(op_f16_max, f16_to_f32, f32_to_f16, (x > y || y != y) ? x : y)
HALF_OP(op_bf16_sum, bf16_to_f32, f32_to_bf16, x + y)
HALF_OP(op_bf16_max, bf16_to_f32, f32_to_bf16, (x > y || y != y) ? x : y)

/* ------------------------------------------------------------------------- */
/* state                                                                      */

typedef struct {
    MPI_Comm world;            /* our duplicate of MPI_COMM_WORLD */
    MPI_Op half_op[2][2];      /* [f16, bf16][RED_SUM, RED_MAX] */
    int64_t max_count;         /* longest single MPI call, in elements */
    int tag_ub;                /* largest valid tag */
} MpiImpl;

/* A message a member sent to itself, waiting for its recv (MPI_Send to self
 * would block once the message is too large to be buffered eagerly). */
typedef struct SelfMsg {
    struct SelfMsg *next;
    int tag;
    size_t bytes;
    unsigned char data[];
} SelfMsg;

struct CommGroup {
    MpiImpl *impl;
    MPI_Comm comm;
    int n, me;
    SelfMsg *self;             /* FIFO of sends to self */
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

/* MPI datatype and element size of `dt`; -1 with err for a value outside the enum. */
static int mpi_type(CommType dt, MPI_Datatype *t, size_t *esize, Err *err)
{
    switch (dt) {
    case CT_F32: *t = MPI_FLOAT; *esize = 4; return 0;
    case CT_I32: *t = MPI_INT32_T; *esize = 4; return 0;
    case CT_F16:
    case CT_BF16: *t = MPI_UINT16_T; *esize = 2; return 0;
    case CT_BYTE: *t = MPI_BYTE; *esize = 1; return 0;
    }
    return err_set(err, "comm mpi: unknown element type %d", (int)dt);
}

static int mpi_redop(const MpiImpl *impl, CommType dt, RedOp op, MPI_Op *out, Err *err)
{
    if (op != RED_SUM && op != RED_MAX)
        return err_set(err, "comm mpi: unknown reduction %d", (int)op);
    switch (dt) {
    case CT_F32:
    case CT_I32: *out = op == RED_SUM ? MPI_SUM : MPI_MAX; return 0;
    case CT_F16: *out = impl->half_op[0][op == RED_MAX]; return 0;
    case CT_BF16: *out = impl->half_op[1][op == RED_MAX]; return 0;
    case CT_BYTE: break;
    }
    return err_set(err, "comm mpi: cannot reduce %s elements (bytes carry int8 codes and are "
                        "gathered, never summed: decode to f32 first)", type_name(dt));
}

static int check_count(int64_t count, const char *what, Err *err)
{
    if (count < 0) return err_set(err, "comm mpi: %s of a negative count (%lld)", what, (long long)count);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* groups                                                                     */

/* One tag for every MPI_Comm_create_group: members make their groups in the
 * same order, so creations never overlap, while a counter would drift apart
 * on ranks that make groups the others do not (and they would wait forever). */
#define GROUP_TAG 7151

static CommGroup *mpi_group_new(Comm *c, const int *ranks, int n, int me, Err *err)
{
    MpiImpl *impl = c->impl;
    MPI_Group world_group = MPI_GROUP_NULL, group = MPI_GROUP_NULL;
    CommGroup *g = NULL;

    if (comm_check_group(c, "mpi", ranks, n, me, err)) return NULL;

    g = calloc(1, sizeof *g);
    if (!g) {
        err_set(err, "comm mpi: out of memory for a group");
        return NULL;
    }
    g->impl = impl;
    g->comm = MPI_COMM_NULL;
    g->n = n;
    g->me = me;

    MPI_CHECK_GOTO(MPI_Comm_group(impl->world, &world_group), fail);
    MPI_CHECK_GOTO(MPI_Group_incl(world_group, n, ranks, &group), fail);
    MPI_CHECK_GOTO(MPI_Comm_create_group(impl->world, group, GROUP_TAG, &g->comm), fail);
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(g->comm, MPI_ERRORS_RETURN), fail);
    int r = -1;
    MPI_CHECK_GOTO(MPI_Comm_rank(g->comm, &r), fail);
    if (r != me) {
        err_set(err, "member %d became communicator rank %d", me, r);
        goto fail;
    }
    MPI_Group_free(&group);
    MPI_Group_free(&world_group);
    return g;

fail:
    err_prefix(err, "comm mpi: creating a group of %d ranks", n);
    if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
    if (world_group != MPI_GROUP_NULL) MPI_Group_free(&world_group);
    if (g && g->comm != MPI_COMM_NULL) MPI_Comm_free(&g->comm);
    free(g);
    return NULL;
}

static void mpi_group_free(CommGroup *g)
{
    if (!g) return;
    while (g->self) {
        SelfMsg *m = g->self;
        g->self = m->next;
        free(m);
    }
    if (g->comm != MPI_COMM_NULL && mpi_alive()) MPI_Comm_free(&g->comm);
    free(g);
}

/* ------------------------------------------------------------------------- */
/* collectives                                                                */

#define AR_PIECE ((int64_t)1 << 22)

static int64_t ar_piece(const CommGroup *g)
{
    return g->impl->max_count < AR_PIECE ? g->impl->max_count : AR_PIECE;
}

static int mpi_allreduce(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    MPI_Op mop = MPI_OP_NULL;
    size_t es = 0;
    if (check_count(count, "allreduce", err) || mpi_type(dt, &t, &es, err) ||
        mpi_redop(g->impl, dt, op, &mop, err))
        return -1;
    const int64_t piece = ar_piece(g);
    for (int64_t off = 0; off < count; off += piece) {
        int c = (int)(count - off < piece ? count - off : piece);
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * es, c, t, mop, g->comm));
    }
    return 0;
}

/* A type of `c` elements of `t` whose extent is `extent` bytes, so block i of a
 * collective lands i * extent bytes further: piece k of every block at once. */
static int strided_type(MPI_Datatype t, int c, size_t extent, MPI_Datatype *out, Err *err)
{
    MPI_Datatype contig;
    MPI_CHECK(MPI_Type_contiguous(c, t, &contig));
    int rc = MPI_Type_create_resized(contig, 0, (MPI_Aint)extent, out);
    MPI_Type_free(&contig);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Type_create_resized", __FILE__, __LINE__);
    rc = MPI_Type_commit(out);
    if (rc != MPI_SUCCESS) {
        MPI_Type_free(out);
        return mpi_fail(err, rc, "MPI_Type_commit", __FILE__, __LINE__);
    }
    return 0;
}

/* Blocked collectives (allgather, all_to_all) longer than max_count: piece k of
 * every block moves in one call through a strided type. */
static int blocked_pieces(CommGroup *g, bool to_all, const void *send, void *recv, int64_t count,
                          MPI_Datatype t, size_t es, bool in_place, Err *err)
{
    for (int64_t off = 0; off < count; off += g->impl->max_count) {
        int c = (int)(count - off < g->impl->max_count ? count - off : g->impl->max_count);
        MPI_Datatype st;
        if (strided_type(t, c, (size_t)count * es, &st, err)) return -1;
        const void *s = in_place ? MPI_IN_PLACE : (const char *)send + off * es;
        void *r = (char *)recv + off * es;
        int rc = to_all ? MPI_Alltoall(s, 1, st, r, 1, st, g->comm)
                        : MPI_Allgather(s, in_place ? 0 : c, t, r, 1, st, g->comm);
        MPI_Type_free(&st);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, rc, to_all ? "MPI_Alltoall" : "MPI_Allgather", __FILE__, __LINE__);
    }
    return 0;
}

static int mpi_allgather(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                         Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    size_t es = 0;
    if (check_count(count, "allgather", err) || mpi_type(dt, &t, &es, err)) return -1;
    /* MPI forbids aliasing; the usual in-place layout says so with MPI_IN_PLACE. */
    bool in_place = send == (const char *)recv + (size_t)g->me * (size_t)count * es;
    if (count <= g->impl->max_count) {
        MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : send, (int)count, t, recv, (int)count, t,
                                g->comm));
        return 0;
    }
    return blocked_pieces(g, false, send, recv, count, t, es, in_place, err);
}

static int mpi_reduce_scatter(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                              Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    MPI_Op mop = MPI_OP_NULL;
    size_t es = 0;
    if (check_count(count, "reduce_scatter", err) || mpi_type(dt, &t, &es, err) ||
        mpi_redop(g->impl, dt, RED_SUM, &mop, err))
        return -1;
    /* send == recv: the input is the whole buffer and the result its first block */
    bool in_place = send == recv;
    if (count <= g->impl->max_count) {
        MPI_CHECK(MPI_Reduce_scatter_block(in_place ? MPI_IN_PLACE : send, recv, (int)count, t, mop,
                                           g->comm));
        return 0;
    }
    /* Too long for one call: reduce block j onto member j, piece by piece. In
     * place, member j's result overwrites block 0, which roots 0..j-1 have
     * consumed already (member 0 reduces block 0 onto itself: MPI_IN_PLACE). */
    for (int j = 0; j < g->n; j++)
        for (int64_t off = 0; off < count; off += g->impl->max_count) {
            int c = (int)(count - off < g->impl->max_count ? count - off : g->impl->max_count);
            const char *s = (const char *)send + ((size_t)j * (size_t)count + (size_t)off) * es;
            char *r = (char *)recv + off * es;
            if (j == g->me)
                MPI_CHECK(MPI_Reduce(s == r ? MPI_IN_PLACE : s, r, c, t, mop, j, g->comm));
            else
                MPI_CHECK(MPI_Reduce(s, NULL, c, t, mop, j, g->comm));
        }
    return 0;
}

static int mpi_all_to_all(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                          Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    size_t es = 0;
    if (check_count(count, "all_to_all", err) || mpi_type(dt, &t, &es, err)) return -1;
    if (send == recv && count > 0)
        return err_set(err, "comm mpi: all_to_all cannot run in place (send == recv): use two buffers");
    if (count <= g->impl->max_count) {
        MPI_CHECK(MPI_Alltoall(send, (int)count, t, recv, (int)count, t, g->comm));
        return 0;
    }
    return blocked_pieces(g, true, send, recv, count, t, es, false, err);
}

static int mpi_broadcast(CommGroup *g, void *buf, int64_t count, CommType dt, int root, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    size_t es = 0;
    if (check_count(count, "broadcast", err) || mpi_type(dt, &t, &es, err)) return -1;
    if (root < 0 || root >= g->n)
        return err_set(err, "comm mpi: broadcast root %d is outside a group of %d", root, g->n);
    for (int64_t off = 0; off < count; off += g->impl->max_count) {
        int c = (int)(count - off < g->impl->max_count ? count - off : g->impl->max_count);
        MPI_CHECK(MPI_Bcast((char *)buf + off * es, c, t, root, g->comm));
    }
    return 0;
}

static int check_p2p(CommGroup *g, const char *what, int64_t count, int peer, int tag, Err *err)
{
    if (check_count(count, what, err)) return -1;
    if (peer < 0 || peer >= g->n)
        return err_set(err, "comm mpi: %s peer %d is outside a group of %d", what, peer, g->n);
    if (tag < 0 || tag > g->impl->tag_ub)
        return err_set(err, "comm mpi: %s tag %d is outside MPI's range 0..%d", what, tag,
                       g->impl->tag_ub);
    return 0;
}

/* A send or an all-reduce in flight: one MPI request per piece. */
struct CommReq {
    int n;
    MPI_Request r[];
};

static int mpi_wait(CommReq *q, Err *err)
{
    if (!q) return 0;
    int rc = MPI_SUCCESS;
    for (int i = 0; i < q->n; i++) {
        int r = MPI_Wait(&q->r[i], MPI_STATUS_IGNORE);
        if (r != MPI_SUCCESS && rc == MPI_SUCCESS) rc = r;
    }
    free(q);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Wait", __FILE__, __LINE__);
    return 0;
}

static int mpi_test(CommReq *q, int *done, Err *err)
{
    *done = 1;
    if (!q) return 0;
    int rc = MPI_Testall(q->n, q->r, done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "MPI_Testall", __FILE__, __LINE__);
    return 0;
}

static int mpi_iallreduce(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op,
                          CommReq **req, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    MPI_Op mop = MPI_OP_NULL;
    size_t es = 0;
    *req = NULL;
    if (check_count(count, "allreduce", err) || mpi_type(dt, &t, &es, err) ||
        mpi_redop(g->impl, dt, op, &mop, err))
        return -1;
    int64_t max = ar_piece(g), pieces = count ? (count + max - 1) / max : 0;
    if (!pieces) return 0;
    CommReq *q = malloc(sizeof *q + (size_t)pieces * sizeof q->r[0]);
    if (!q) return err_set(err, "comm mpi: out of memory for an all-reduce of %lld pieces",
                           (long long)pieces);
    q->n = 0;
    for (int64_t off = 0; off < count; off += max) {
        int c = (int)(count - off < max ? count - off : max);
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * es, c, t, mop, g->comm, &q->r[q->n]);
        if (rc != MPI_SUCCESS) {
            for (int i = 0; i < q->n; i++) MPI_Wait(&q->r[i], MPI_STATUS_IGNORE);
            free(q);
            return mpi_fail(err, rc, "MPI_Iallreduce", __FILE__, __LINE__);
        }
        q->n++;
    }
    *req = q;
    return 0;
}

/* One non-blocking collective call as a request; a count longer than one
 * MPI call takes runs blocking instead (*req NULL). */
static int mpi_ireduce_scatter(CommGroup *g, const void *send, void *recv, int64_t count,
                               CommType dt, CommReq **req, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    MPI_Op mop = MPI_OP_NULL;
    size_t es = 0;
    *req = NULL;
    if (count > g->impl->max_count || send == recv)
        return mpi_reduce_scatter(g, send, recv, count, dt, err);
    if (check_count(count, "reduce_scatter", err) || mpi_type(dt, &t, &es, err) ||
        mpi_redop(g->impl, dt, RED_SUM, &mop, err))
        return -1;
    CommReq *q = malloc(sizeof *q + sizeof q->r[0]);
    if (!q) return err_set(err, "comm mpi: out of memory for a reduce_scatter request");
    int rc = MPI_Ireduce_scatter_block(send, recv, (int)count, t, mop, g->comm, &q->r[0]);
    if (rc != MPI_SUCCESS) {
        free(q);
        return mpi_fail(err, rc, "MPI_Ireduce_scatter_block", __FILE__, __LINE__);
    }
    q->n = 1;
    *req = q;
    return 0;
}

static int mpi_iallgather(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                          CommReq **req, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    size_t es = 0;
    *req = NULL;
    if (check_count(count, "allgather", err) || mpi_type(dt, &t, &es, err)) return -1;
    bool in_place = send == (const char *)recv + (size_t)g->me * (size_t)count * es;
    if (count > g->impl->max_count || in_place) return mpi_allgather(g, send, recv, count, dt, err);
    CommReq *q = malloc(sizeof *q + sizeof q->r[0]);
    if (!q) return err_set(err, "comm mpi: out of memory for an allgather request");
    int rc = MPI_Iallgather(send, (int)count, t, recv, (int)count, t, g->comm, &q->r[0]);
    if (rc != MPI_SUCCESS) {
        free(q);
        return mpi_fail(err, rc, "MPI_Iallgather", __FILE__, __LINE__);
    }
    q->n = 1;
    *req = q;
    return 0;
}

/* A send to oneself is copied into the group's queue and is complete at once. */
static int self_send(CommGroup *g, const void *buf, size_t bytes, int tag, Err *err)
{
    SelfMsg *m = malloc(sizeof *m + bytes);
    if (!m) return err_set(err, "comm mpi: out of memory for a %zu-byte send to self", bytes);
    m->next = NULL;
    m->tag = tag;
    m->bytes = bytes;
    if (bytes) memcpy(m->data, buf, bytes);
    SelfMsg **tail = &g->self;
    while (*tail) tail = &(*tail)->next;
    *tail = m;
    return 0;
}

static int mpi_isend(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                     CommReq **req, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    size_t es = 0;
    *req = NULL;
    if (check_p2p(g, "send", count, peer, tag, err) || mpi_type(dt, &t, &es, err)) return -1;
    if (peer == g->me) return self_send(g, buf, (size_t)count * es, tag, err);

    /* an empty message still travels (the recv must complete): at least one piece */
    int64_t max = g->impl->max_count, pieces = count ? (count + max - 1) / max : 1;
    CommReq *q = malloc(sizeof *q + (size_t)pieces * sizeof q->r[0]);
    if (!q) return err_set(err, "comm mpi: out of memory for a send of %lld pieces", (long long)pieces);
    q->n = 0;
    int64_t off = 0;
    do {
        int c = (int)(count - off < max ? count - off : max);
        int rc = MPI_Isend((const char *)buf + off * es, c, t, peer, tag, g->comm, &q->r[q->n]);
        if (rc != MPI_SUCCESS) {
            /* the pieces already posted finish on their own */
            for (int i = 0; i < q->n; i++) MPI_Request_free(&q->r[i]);
            free(q);
            return mpi_fail(err, rc, "MPI_Isend", __FILE__, __LINE__);
        }
        q->n++;
        off += c;
    } while (off < count);
    *req = q;
    return 0;
}

/* Blocks until buf may be reused; like MPI_Send, it may wait for the recv. */
static int mpi_send(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                    Err *err)
{
    CommReq *q = NULL;
    if (mpi_isend(g, buf, count, dt, peer, tag, &q, err)) return -1;
    return mpi_wait(q, err);
}

static int mpi_recv(CommGroup *g, void *buf, int64_t count, CommType dt, int peer, int tag, Err *err)
{
    MPI_Datatype t = MPI_DATATYPE_NULL;
    size_t es = 0;
    if (check_p2p(g, "recv", count, peer, tag, err) || mpi_type(dt, &t, &es, err)) return -1;
    if (peer == g->me) {
        SelfMsg **p = &g->self;
        while (*p && (*p)->tag != tag) p = &(*p)->next;
        if (!*p)
            return err_set(err, "comm mpi: recv from self with tag %d has no matching send: "
                                "a member's send to itself must come before its recv", tag);
        SelfMsg *m = *p;
        size_t bytes = (size_t)count * es;
        if (m->bytes != bytes) {
            return err_set(err, "comm mpi: recv from self with tag %d expects %zu bytes, "
                                "the send carried %zu", tag, bytes, m->bytes);
        }
        *p = m->next;
        if (bytes) memcpy(buf, m->data, bytes);
        free(m);
        return 0;
    }
    int64_t off = 0;
    do {
        int c = (int)(count - off < g->impl->max_count ? count - off : g->impl->max_count);
        MPI_Status st;
        MPI_CHECK(MPI_Recv((char *)buf + off * es, c, t, peer, tag, g->comm, &st));
        int got = 0;
        MPI_CHECK(MPI_Get_count(&st, t, &got));
        if (got != c)
            return err_set(err, "comm mpi: recv from member %d (tag %d) expected %d %s elements, "
                                "got %d: the send and the recv disagree on the count",
                           peer, tag, c, type_name(dt), got);
        off += c;
    } while (off < count);
    return 0;
}

static void mpi_destroy(Comm *c);

/* ------------------------------------------------------------------------- */
/* one caller at a time                                                       */

/* MPI_THREAD_SERIALIZED lets several threads call MPI, never two at once:
 * every entry of the table takes this process-wide lock, so a progress thread
 * may test requests while another thread computes (MPI moves non-blocking
 * operations only inside its calls). The functions above call each other
 * directly, never through the table, so the lock is never taken twice. */
static pthread_mutex_t mpi_lock = PTHREAD_MUTEX_INITIALIZER;

#define LOCKED(call)                                                     \
    do {                                                                 \
        pthread_mutex_lock(&mpi_lock);                                   \
        int rc_ = (call);                                                \
        pthread_mutex_unlock(&mpi_lock);                                 \
        return rc_;                                                      \
    } while (0)

static CommGroup *l_group_new(Comm *c, const int *ranks, int n, int me, Err *err)
{
    pthread_mutex_lock(&mpi_lock);
    CommGroup *g = mpi_group_new(c, ranks, n, me, err);
    pthread_mutex_unlock(&mpi_lock);
    return g;
}

static void l_group_free(CommGroup *g)
{
    pthread_mutex_lock(&mpi_lock);
    mpi_group_free(g);
    pthread_mutex_unlock(&mpi_lock);
}

static int l_allreduce(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op, Err *err)
{
    LOCKED(mpi_allreduce(g, buf, count, dt, op, err));
}

static int l_allgather(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                       Err *err)
{
    LOCKED(mpi_allgather(g, send, recv, count, dt, err));
}

static int l_reduce_scatter(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                            Err *err)
{
    LOCKED(mpi_reduce_scatter(g, send, recv, count, dt, err));
}

static int l_all_to_all(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                        Err *err)
{
    LOCKED(mpi_all_to_all(g, send, recv, count, dt, err));
}

static int l_broadcast(CommGroup *g, void *buf, int64_t count, CommType dt, int root, Err *err)
{
    LOCKED(mpi_broadcast(g, buf, count, dt, root, err));
}

static int l_send(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                  Err *err)
{
    LOCKED(mpi_send(g, buf, count, dt, peer, tag, err));
}

static int l_recv(CommGroup *g, void *buf, int64_t count, CommType dt, int peer, int tag, Err *err)
{
    LOCKED(mpi_recv(g, buf, count, dt, peer, tag, err));
}

static int l_isend(CommGroup *g, const void *buf, int64_t count, CommType dt, int peer, int tag,
                   CommReq **req, Err *err)
{
    LOCKED(mpi_isend(g, buf, count, dt, peer, tag, req, err));
}

static int l_iallreduce(CommGroup *g, void *buf, int64_t count, CommType dt, RedOp op,
                        CommReq **req, Err *err)
{
    LOCKED(mpi_iallreduce(g, buf, count, dt, op, req, err));
}

static int l_ireduce_scatter(CommGroup *g, const void *send, void *recv, int64_t count,
                             CommType dt, CommReq **req, Err *err)
{
    LOCKED(mpi_ireduce_scatter(g, send, recv, count, dt, req, err));
}

static int l_iallgather(CommGroup *g, const void *send, void *recv, int64_t count, CommType dt,
                        CommReq **req, Err *err)
{
    LOCKED(mpi_iallgather(g, send, recv, count, dt, req, err));
}

static int l_test(CommReq *req, int *done, Err *err)
{
    LOCKED(mpi_test(req, done, err));
}

static int l_wait(CommReq *req, Err *err)
{
    LOCKED(mpi_wait(req, err));
}

static const CommOps mpi_ops = {
    .name = "mpi",
    .group_new = l_group_new,
    .group_free = l_group_free,
    .allreduce = l_allreduce,
    .allgather = l_allgather,
    .reduce_scatter = l_reduce_scatter,
    .all_to_all = l_all_to_all,
    .broadcast = l_broadcast,
    .send = l_send,
    .recv = l_recv,
    .isend = l_isend,
    .iallreduce = l_iallreduce,
    .ireduce_scatter = l_ireduce_scatter,
    .iallgather = l_iallgather,
    .test = l_test,
    .wait = l_wait,
    .destroy = mpi_destroy,
};

/* ------------------------------------------------------------------------- */
/* Comm                                                                       */

static void mpi_destroy(Comm *c)
{
    MpiImpl *impl = c->impl;
    if (impl) {
        if (mpi_alive()) {
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                    if (impl->half_op[i][j] != MPI_OP_NULL) MPI_Op_free(&impl->half_op[i][j]);
            if (impl->world != MPI_COMM_NULL) MPI_Comm_free(&impl->world);
        }
        free(impl);
    }
    free(c);
}

Comm *comm_mpi_new(Err *err)
{
    int init = 0, fin = 0, level = MPI_THREAD_SINGLE;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) {
        err_set(err, "comm mpi: MPI is %s: call MPI_Init_thread(..., MPI_THREAD_SERIALIZED, ...) "
                     "before comm_mpi_new", fin ? "already finalised" : "not initialised");
        return NULL;
    }
    MPI_Query_thread(&level);
    if (level < MPI_THREAD_SERIALIZED) {
        err_set(err, "comm mpi: MPI was initialised with thread level %d; strata needs "
                     "MPI_THREAD_SERIALIZED (initialise with MPI_Init_thread)", level);
        return NULL;
    }

    Comm *c = calloc(1, sizeof *c);
    MpiImpl *impl = calloc(1, sizeof *impl);
    if (!c || !impl) {
        free(c);
        free(impl);
        err_set(err, "comm mpi: out of memory");
        return NULL;
    }
    c->ops = &mpi_ops;
    c->impl = impl;
    impl->world = MPI_COMM_NULL;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) impl->half_op[i][j] = MPI_OP_NULL;

    impl->max_count = INT_MAX;
    const char *mc = getenv("STRATA_MPI_MAX_COUNT");
    if (mc && *mc) {
        char *end;
        long long v = strtoll(mc, &end, 10);
        if (*end || v < 1 || v > INT_MAX) {
            err_set(err, "comm mpi: STRATA_MPI_MAX_COUNT=\"%s\" is not a count in 1..%d", mc, INT_MAX);
            goto fail;
        }
        impl->max_count = v;
    }

    MPI_CHECK_GOTO(MPI_Comm_dup(MPI_COMM_WORLD, &impl->world), fail);
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(impl->world, MPI_ERRORS_RETURN), fail);
    MPI_CHECK_GOTO(MPI_Comm_rank(impl->world, &c->rank), fail);
    MPI_CHECK_GOTO(MPI_Comm_size(impl->world, &c->world), fail);
    int *ub = NULL, flag = 0;
    MPI_CHECK_GOTO(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag), fail);
    impl->tag_ub = flag && ub ? *ub : 32767;  /* the standard's guaranteed minimum */

    static MPI_User_function *const fns[2][2] = {{op_f16_sum, op_f16_max},
                                                 {op_bf16_sum, op_bf16_max}};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            MPI_CHECK_GOTO(MPI_Op_create(fns[i][j], 1, &impl->half_op[i][j]), fail);
    return c;

fail:
    mpi_destroy(c);
    return NULL;
}

#endif /* HAVE_MPI */
