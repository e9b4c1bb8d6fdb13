/*
 * run.c — `strata run`: train a plan for real, on every rank of an MPI job,
 * and `strata runs list|show`.
 *
 * Without mpirun around it, `strata run` starts `mpirun -np W` on itself for
 * the plan's world size (arguments passed as an argv list, never through a
 * shell). Every rank lowers the same plan, runs its class's program, and
 * rank 0 prints, checks (--verify) and stores the run.
 */
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "launch.h"
#include "db/db.h"
#include "jobs/jobs.h"
#include "executor/blas.h"
#include "executor/comm.h"
#include "executor/device.h"
#include "executor/runtime.h"
#include "ir/cluster.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "ir/util.h"

#ifdef HAVE_MPI
#include <mpi.h>
#endif

#define EXIT_USAGE 2

static const OptSpec RUN_OPTS[] = {
    { "model", 0, true, "FILE  model JSON (required without --plan)" },
    { "strategy", 0, true, "FILE  strategy JSON (required without --plan)" },
    { "plan", 0, true, "ID  a stored plan (from `strata search` or `estimate`) instead of "
                       "--model, --strategy and --cluster" },
    { "cluster", 0, true, "FILE  cluster JSON (default: this machine, one device per rank)" },
    { "nodes", 0, true, "N  nodes of the cluster template" },
    { "steps", 0, true, "N  training steps (default 5)" },
    { "backend", 0, true, "cpu|cuda  kernels and communication (default cpu)" },
    { "verify", 0, false, "also run on one rank and compare losses and final params" },
    { "seed", 0, true, "S  seed of params and data (default 1)" },
    { "lr", 0, true, "X  learning rate (default 1e-3)" },
    { "threads", 0, true, "T  threads per rank, for the BLAS and the kernels alike (default: the machine's cores / its ranks)" },
    { "db", 0, true, "PATH  store the run here (default strata.db)" },
    { "no-store", 0, false, "do not store the run" },
    { "run-id", 0, true, "ID  store the run under this id (16 hex digits; default: a new random one)" },
    { "no-overlap", 0, false, "run every instruction where the program puts it: no updates set "
                              "aside while their all-reduces run, no progress thread" },
    { "profile-ops", 0, false, "print where a step's time goes: per op kind and phase, the "
                               "optimizer, each kind of communication (steps after the first)" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const char *USAGE = "strata run (--model FILE --strategy FILE [--cluster FILE] | --plan ID) "
                           "[--steps N] [--backend cpu|cuda] [--verify] [--db PATH]";

#ifdef HAVE_MPI
/* One row of the op profile. */
typedef struct {
    char what[48];
    double s;          /* seconds per step, mean over ranks */
    double n;          /* instructions per step, mean over ranks */
} ProfRow;

static int prof_cmp(const void *a, const void *b)
{
    double x = ((const ProfRow *)a)->s, y = ((const ProfRow *)b)->s;
    return (x < y) - (x > y);
}

/* --profile-ops: every rank's times gathered on rank 0 and printed per step
 * (the steps after the first), mean over ranks, largest first, as a share
 * of the mean step. */
static void print_op_times(Runtime *rt, int rank, int world, int steps, const StepStat *all)
{
    OpTimes mine, *every = rank == 0 ? xcalloc((size_t)world, sizeof *every) : NULL;
    rt_op_times(rt, &mine);
    MPI_Gather(&mine, sizeof mine, MPI_BYTE, every, sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (rank != 0) return;
    int per = steps > 1 ? steps - 1 : 1;
    double div = (double)per * world, step = 0;
    for (int st = steps > 1 ? 1 : 0; st < steps; st++)
        for (int k = 0; k < world; k++) step += all[(size_t)st * world + k].step_s / div;
    int cap = OP_KIND_COUNT * (PH_COUNT + 1) + I_KIND_COUNT + 3, n = 0;
    ProfRow *rows = xcalloc((size_t)cap, sizeof *rows);
    static const char *const phase[PH_COUNT + 1] = { "forward", "backward (data)",
                                                     "backward (weight)", "update", "recompute" };
    for (int kd = 0; kd < OP_KIND_COUNT; kd++)
        for (int ph = 0; ph <= PH_COUNT; ph++) {
            ProfRow r = { "", 0, 0 };
            for (int k = 0; k < world; k++) {
                r.s += every[k].op_s[kd][ph] / div;
                r.n += (double)every[k].op_n[kd][ph] / div;
            }
            if (r.n == 0) continue;
            snprintf(r.what, sizeof r.what, "%s %s", op_kind_name((OpKind)kd), phase[ph]);
            rows[n++] = r;
        }
    ProfRow upd = { "optimizer update", 0, 0 }, sum = { "gradient sums", 0, 0 },
            wait = { "waiting for overlapped collectives", 0, 0 };
    for (int k = 0; k < world; k++) {
        upd.s += every[k].update_s / div;
        upd.n += (double)every[k].update_n / div;
        sum.s += every[k].sum_s / div;
        sum.n += (double)every[k].sum_n / div;
        wait.s += every[k].wait_s / div;
    }
    if (upd.n > 0) rows[n++] = upd;
    if (sum.n > 0) rows[n++] = sum;
    for (int c = 0; c < I_KIND_COUNT; c++) {
        ProfRow r = { "", 0, 0 };
        for (int k = 0; k < world; k++) {
            r.s += every[k].comm_s[c] / div;
            r.n += (double)every[k].comm_n[c] / div;
        }
        if (r.n == 0) continue;
        snprintf(r.what, sizeof r.what, "%s", instr_kind_name((InstrKind)c));
        rows[n++] = r;
    }
    if (wait.s > 0) rows[n++] = wait;
    qsort(rows, (size_t)n, sizeof *rows, prof_cmp);
    printf("where a step goes (mean over %d rank%s and %d step%s%s):\n", world,
           world == 1 ? "" : "s", per, per == 1 ? "" : "s", steps > 1 ? " after the first" : "");
    printf("  %-40s %10s %12s %7s\n", "", "per step", "ms per step", "share");
    double total = 0;
    for (int i = 0; i < n; i++) {
        printf("  %-40s %10.1f %12.3f %6.1f%%\n", rows[i].what, rows[i].n, rows[i].s * 1e3,
               step > 0 ? 100 * rows[i].s / step : 0);
        total += rows[i].s;
    }
    printf("  %-40s %10s %12.3f %6.1f%%  (the rest: interpretation, memory, bookkeeping)\n",
           "step", "", step * 1e3, step > 0 ? 100 * (step - total) / step : 0);
    free(rows);
    free(every);
}
#endif

/* A cluster of this machine: one CPU device per rank. */
static Cluster *local_cluster(int world, Err *err)
{
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGE_SIZE);
    double mem = pages > 0 && psize > 0 ? (double)pages * psize : 8e9;
    char js[1024];
    snprintf(js, sizeof js,
             "{\"name\":\"localhost\",\"devices\":[{\"name\":\"cpu-core\",\"kind\":\"cpu\","
             "\"peak_tflops\":{\"f32\":0.1},\"memory_gib\":%.3f,\"memory_bw_gbps\":10}],"
             "\"levels\":[{\"name\":\"rank\",\"count\":%d,\"link\":\"shm\",\"bw_gbps\":10,"
             "\"latency_us\":1}]}", mem / world / (1 << 30), world);
    cJSON *j = cJSON_Parse(js);
    Cluster *c = cluster_from_json(j, 0, err);
    cJSON_Delete(j);
    return c;
}

/* The model, cluster and strategy of --plan ID, read back from the store
 * (the run is then stored beside that plan), or of the files given. */
static int load_inputs(const Args *a, Graph **g, Cluster **c, Strategy **s, Err *err)
{
    *g = NULL;
    *c = NULL;
    *s = NULL;
    if (args_get(a, "plan")) {
        Db *db = db_open_existing(args_get(a, "db") ? args_get(a, "db") : CLI_DEFAULT_DB, err);
        if (!db) return -1;
        LoadedPlan lp;
        int rc = job_load_plan(db, args_get(a, "plan"), &lp, err);
        db_close(db);
        if (rc) return -1;
        /* the objects are the caller's now; the row goes */
        *g = lp.g;
        *c = lp.c;
        *s = lp.s;
        db_plan_free(&lp.row);
    } else {
        int64_t nodes = 0;
        args_int(a, "nodes", 1, 1 << 20, &nodes, err);
        *g = graph_load(args_get(a, "model"), err);
        if (*g && args_get(a, "cluster")) *c = cluster_load(args_get(a, "cluster"), (int)nodes, err);
        if (*g && (*c || !args_get(a, "cluster")))
            *s = strategy_load(args_get(a, "strategy"), *g, *c, err);
        if (*s && !*c) *c = local_cluster((*s)->world, err);
    }
    bool loss = false;
    for (int i = 0; *g && i < (*g)->nops; i++) loss |= op_kind_is_loss((*g)->ops[i].kind);
    if (*s && *c && !loss)
        err_set(err, "model %s has no loss op (cross_entropy or mse): there is nothing to train",
                (*g)->name);
    else if (*s && *c)
        return 0;
    strategy_free(*s);
    cluster_free(*c);
    graph_free(*g);
    *g = NULL;
    *c = NULL;
    *s = NULL;
    return -1;
}

static const char *human_bytes(double b, char *out, int n)
{
    const char *u[] = { "bytes", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (b >= 1024 && i < 4) { b /= 1024; i++; }
    snprintf(out, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
    return out;
}

static double rel_diff(double a, double b)
{
    double d = fabs(a - b), m = fmax(fabs(a), fabs(b));
    return m > 0 ? d / m : 0;
}

/* The tolerance --verify holds a plan to: exact-order fp32 plans agree to
 * rounding; compressed or stale ones only approximately. */
static double verify_tolerance(const Graph *g, const Strategy *s, const char **why)
{
    double tol = 1e-5;
    *why = "fp32, exact order up to summation";
    for (int t = 0; t < g->ntensors; t++) {
        if (g->tensors[t].role != ROLE_PARAM) continue;
        const ParamPolicy *pp = &s->params[t];
        if (pp->compress == COMPRESS_FP16 && tol < 1e-2) { tol = 1e-2; *why = "fp16-compressed gradients"; }
        if (pp->compress == COMPRESS_INT8 && tol < 5e-2) { tol = 5e-2; *why = "int8-compressed gradients"; }
        if (pp->compress == COMPRESS_POWERSGD && tol < 0.2) { tol = 0.2; *why = "low-rank (PowerSGD) gradients"; }
        if (pp->method == SYNC_PS && pp->staleness > 0 && tol < 0.2) { tol = 0.2; *why = "stale parameter-server pulls"; }
    }
    return tol;
}

#ifdef HAVE_MPI

typedef struct {
    Graph *g;
    Cluster *c;
    Strategy *s;
    Plan *p;
} Loaded;

static void loaded_free(Loaded *l)
{
    plan_free(l->p);
    strategy_free(l->s);
    cluster_free(l->c);
    graph_free(l->g);
}

/* The one-rank reference: the same model and data on a single device (the
 * CPU, whatever the run's backend: `world` is an MPI comm). */
static int reference_run(const Loaded *par, Comm *world, const RunConfig *cfg, int steps,
                         double *losses, float **params, Err *err)
{
    /* one device, the plan's micro-batches: batch norm's statistics are per
     * micro-batch, so the reference must cut the batch the same way */
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(cJSON_AddObjectToObject(j, "mesh"), "dp", cJSON_CreateNumber(1));
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(j, "pipeline"), "microbatches",
                            par->s->microbatches);
    cJSON_AddStringToObject(j, "optimizer", par->s->optimizer == OPT_ADAM ? "adam" : "sgd");
    Strategy *s = strategy_parse(j, par->g, NULL, err);
    cJSON_Delete(j);
    if (!s) return -1;
    Plan *p = ir_lower(par->g, NULL, s, err);
    int rc = p ? 0 : -1;
    /* a world of one: the backend's ops, no group is ever made */
    Comm self = { 0 };
    Runtime *rt = NULL;
    if (!rc) {
        self.ops = world->ops;
        self.rank = 0;
        self.world = 1;
        self.impl = world->impl;
        rt = rt_new(par->g, s, p, &self, cfg, err);
        if (!rt) rc = -1;
    }
    for (int st = 0; st < steps && !rc; st++) {
        StepStat ss;
        rc = rt_step(rt, st, &ss, err);
        losses[st] = ss.loss;
    }
    for (int t = 0; t < par->g->ntensors && !rc; t++)
        if (params[t]) rc = rt_gather_param(rt, t, params[t], err);
    rt_free(rt);
    plan_free(p);
    strategy_free(s);
    if (rc) err_prefix(err, "the one-rank reference run");
    return rc;
}

/* Whether `mine` holds on every rank (a collective). */
static bool all_ranks(bool mine)
{
    int m = mine, all = 0;
    MPI_Allreduce(&m, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all != 0;
}

/* Now, as the store writes its times: UTC to the millisecond. */
static void iso_now(char *buf, int n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char sec[32];
    strftime(sec, sizeof sec, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, (size_t)n, "%.20s.%03dZ", sec, (int)(ts.tv_nsec / 1000000) % 1000);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A run of a stored plan (--plan): its newest prediction beside what was
 * measured (the median over the steps after the first of the slowest rank). */
static void compare_with_prediction(const char *path, const char *plan_id, const StepStat *all,
                                    int steps, int world)
{
    Err err = { { 0 } };
    Db *db = db_open_existing(path, &err);
    DbEstimate *e = NULL;
    int n = 0;
    if (!db || db_estimate_list(db, plan_id, &e, &n, &err) || !n) {
        printf("plan %s has no stored prediction to compare with\n", plan_id);
        db_close(db);
        return;
    }
    db_close(db);
    int first = steps > 1 ? 1 : 0, m = steps - first;
    double *t = xmalloc(sizeof *t * m);
    for (int st = first; st < steps; st++) {
        t[st - first] = 0;
        for (int k = 0; k < world; k++)
            t[st - first] = fmax(t[st - first], all[(size_t)st * world + k].step_s);
    }
    qsort(t, m, sizeof *t, cmp_double);
    double med = m % 2 ? t[m / 2] : (t[m / 2 - 1] + t[m / 2]) / 2;
    printf("predicted %.3f ms (estimate %lld, %s), measured %.3f ms (median of %d step%s after "
           "the first): %+.1f%%\n", e[0].step_time_s * 1e3, (long long)e[0].id,
           e[0].cost_model_id ? e[0].cost_model_id : "analytical model", med * 1e3, m,
           m == 1 ? "" : "s", 100 * (e[0].step_time_s / med - 1));
    free(t);
    db_estimate_list_free(e, n);
}

/* Stores the plan (with its model and cluster) and the run beside it; the
 * plan's id into plan_id. */
static int store_run(const char *path, const char *run_id, const Loaded *L, const char *backend,
                     int steps, const StepStat *all, const char *status, const char *started,
                     cJSON *verify, char plan_id[17], Err *err)
{
    cJSON *sum = plan_summary_json(L->p, L->s);
    int rc = job_store_plan(path, L->g, L->c, L->s, L->p, sum, plan_id, err);
    cJSON_Delete(sum);
    Db *db = rc ? NULL : db_open(path, err);
    if (!db) return -1;
    char *vt = verify ? cJSON_PrintUnformatted(verify) : NULL;
    DbRun r = { .backend = (char *)backend, .world = L->p->world, .steps = steps,
                .status = (char *)status, .started = (char *)started, .verify_json = vt };
    if (run_id) memcpy(r.id, run_id, 17);
    else random_id(r.id);
    memcpy(r.plan_id, plan_id, 17);
    int n = steps * L->p->world;
    DbRunStep *rows = xmalloc(sizeof *rows * (size_t)(n ? n : 1));
    for (int st = 0; st < steps; st++)
        for (int k = 0; k < L->p->world; k++) {
            const StepStat *x = &all[(size_t)st * L->p->world + k];
            rows[st * L->p->world + k] = (DbRunStep){ st, k, x->loss, x->step_s, x->compute_s,
                                                      x->comm_s, x->idle_s, x->peak_mem_bytes };
        }
    rc = db_run_put(db, &r, rows, n, err);
    if (!rc) printf("stored as run %s (plan %s) in %s\n", r.id, plan_id, path);
    free(rows);
    cJSON_free(vt);
    db_close(db);
    return rc;
}

/* Everything after MPI_Init; returns the exit status (the same on every rank). */
static int run_ranks(const Args *a, int steps, uint64_t seed, float lr, bool verify)
{
    Err err = {0};
    int rank = 0, world = 1, rc = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    const char *backend = args_get(a, "backend") ? args_get(a, "backend") : "cpu";
    bool cuda = !strcmp(backend, "cuda");
    Device *dev = NULL;
    Comm *ref_comm = NULL;        /* the CPU reference's (MPI) when the run's is NCCL */
    /* this rank's place among the ranks of its machine, whatever started them */
    int local_rank = 0, local_size = 1;
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(node, &local_rank);
        MPI_Comm_size(node, &local_size);
        MPI_Comm_free(&node);
    }
    /* ranks on one machine share its cores, unless told how many each takes */
    int64_t threads = 0;
    args_int(a, "threads", 1, 4096, &threads, &err);
    if (threads > 0) blas_set_threads((int)threads);
    else blas_threads(local_size);
    Loaded L = {0};
    Comm *comm = NULL;
    Runtime *rt = NULL;
    StepStat *mine = NULL, *all = NULL;
    double *ref_loss = NULL;
    float **ref_params = NULL, **par_params = NULL;
    cJSON *vj = NULL;
    char started[32];
    iso_now(started, sizeof started);

    load_inputs(a, &L.g, &L.c, &L.s, &err);
    if (L.s && L.c && L.s->world != world)
        err_set(&err, "the strategy needs %d ranks, but this run has %d (mpirun -np %d)", L.s->world,
                world, world);
    else if (L.s && L.c && (L.p = ir_lower_compact(L.g, L.c, L.s, &err)))
        plan_expand_class(L.p, L.p->rank_class[rank]);    /* this rank runs its own class only */
    bool ok = L.p != NULL;
    if (ok) {
        /* fail before allocating: what the plan needs against what there is */
        const Program *pr = &L.p->classes[L.p->rank_class[rank]];
        char need[32], have[32];
        if (pr->device_mem > 0 && pr->peak_mem > pr->device_mem) {
            err_set(&err, "the plan does not fit: rank %d needs %s at its peak, its device has %s",
                    rank, human_bytes((double)pr->peak_mem, need, sizeof need),
                    human_bytes(pr->device_mem, have, sizeof have));
            ok = false;
        }
    }
    /* Each stage below makes communicators on every rank at once, so every
     * rank learns whether every rank is ready before the next one starts: a
     * rank that failed must not leave the others inside a collective. */
    bool failed = !ok;
    if ((ok = all_ranks(ok)) && cuda) {
        failed = !(dev = device_cuda_new(local_rank, local_size, &err));
        /* the cluster's device is the CPU's unless one was given: the GPU's
         * own memory is what the plan must fit in */
        const Program *pr = dev ? &L.p->classes[L.p->rank_class[rank]] : NULL;
        double have = dev ? dev->ops->memory(dev) : 0;
        if (pr && !args_get(a, "cluster") && have > 0 && (double)pr->peak_mem > have) {
            char need[32], hv[32];
            err_set(&err, "the plan does not fit: rank %d needs %s at its peak, its GPU has %s",
                    rank, human_bytes((double)pr->peak_mem, need, sizeof need),
                    human_bytes(have, hv, sizeof hv));
            failed = true;
        }
        ok = all_ranks(!failed);
    }
    if (ok) {
        failed = !(comm = cuda ? comm_nccl_new(&err) : comm_mpi_new(&err));
        ok = all_ranks(!failed);
    }
    if (ok && cuda && verify) {
        failed = !(ref_comm = comm_mpi_new(&err));
        ok = all_ranks(!failed);
    }
    if (ok) {
        RunConfig cfg = { .dev = dev, .seed = seed, .no_overlap = args_has(a, "no-overlap"),
                          .profile_ops = args_has(a, "profile-ops") };
        rt_default_hyper(&cfg.hyper);
        cfg.hyper.lr = lr;
        failed = !(rt = rt_new(L.g, L.s, L.p, comm, &cfg, &err));
        ok = all_ranks(!failed);
    }
    if (!ok) {
        if (failed) fprintf(stderr, "strata run: rank %d: %s\n", rank, err.msg);
        rc = 1;
        goto out;
    }

    mine = xcalloc((size_t)steps, sizeof *mine);
    all = rank == 0 ? xcalloc((size_t)steps * world, sizeof *all) : NULL;
    if (rank == 0) {
        char where[320];
        if (dev) dev->ops->describe(dev, where, sizeof where);
        else snprintf(where, sizeof where, "cpu, ");
        if (!dev) blas_describe(where + strlen(where), (int)(sizeof where - strlen(where)));
        printf("run: %s on %d rank%s (%s), %d step%s\n", L.g->name, world,
               world == 1 ? "" : "s", where, steps, steps == 1 ? "" : "s");
    }
    /* fault injection for the tests: STRATA_FAULT=RANK:STEP kills that rank
     * at the start of that step, as a crash would */
    int fault_rank = -1, fault_step = -1;
    if (getenv("STRATA_FAULT")) sscanf(getenv("STRATA_FAULT"), "%d:%d", &fault_rank, &fault_step);
    for (int st = 0; st < steps; st++) {
        if (rank == fault_rank && st == fault_step) raise(SIGKILL);
        /* a rank that fails mid-step cannot tell the others, which may be
         * inside a collective with it already: it says why and ends the job */
        if (rt_step(rt, st, &mine[st], &err)) {
            fprintf(stderr, "strata run: rank %d, step %d: %s\n", rank, st, err.msg);
            fflush(NULL);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (st == 0) rt_op_times_reset(rt);    /* the profile leaves the first step out */
        MPI_Gather(&mine[st], sizeof(StepStat), MPI_BYTE, all ? &all[(size_t)st * world] : NULL,
                   sizeof(StepStat), MPI_BYTE, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            const StepStat *r = &all[(size_t)st * world];
            double slowest = 0;
            for (int k = 0; k < world; k++) slowest = fmax(slowest, r[k].step_s);
            printf("step %3d  loss %.6f  step %8.2f ms |", st, r[0].loss, slowest * 1e3);
            for (int k = 0; k < world; k++)
                printf(" r%d %.1f/%.1f/%.1f", k, r[k].compute_s * 1e3, r[k].comm_s * 1e3,
                       r[k].idle_s * 1e3);
            printf("  (compute/comm/idle ms)\n");
            fflush(stdout);
        }
    }
    if (rank == 0 && steps > 0) {
        /* the fullest rank's buffers, and what the pools asked of the device
         * in the first step and in the last (none, in steady state) */
        const StepStat *r = &all[(size_t)(steps - 1) * world];
        double peak = 0, held = 0;
        int64_t first = 0, last = 0, asked = 0;
        for (int k = 0; k < world; k++) {
            peak = fmax(peak, r[k].peak_mem_bytes);
            held = fmax(held, r[k].held_mem_bytes);
            first += all[k].device_allocs;
            last += r[k].device_allocs;
            asked += r[k].buffer_requests;
        }
        char a[32], b[32];
        printf("memory: %s in use at most on a rank, %s held by its buffer pool; "
               "allocations from the device: %lld in the first step, %lld in the last "
               "(of %lld buffers it used)\n",
               human_bytes(peak, a, sizeof a), human_bytes(held, b, sizeof b), (long long)first,
               (long long)last, (long long)asked);
    }

    if (args_has(a, "profile-ops")) print_op_times(rt, rank, world, steps, all);

    const char *status = "ok";
    if (verify) {
        const char *why;
        double tol = verify_tolerance(L.g, L.s, &why);
        if (cuda && tol < 1e-4) {
            /* cuBLAS and the GPU's reductions sum in other orders than the CPU */
            tol = 1e-4;
            why = "fp32, GPU against CPU: other summation orders";
        }
        int nt = L.g->ntensors;
        par_params = xcalloc(nt, sizeof *par_params);
        ref_params = xcalloc(nt, sizeof *ref_params);
        for (int t = 0; t < nt && !rc; t++) {
            if (L.g->tensors[t].role != ROLE_PARAM) continue;
            int64_t n = tensor_numel(&L.g->tensors[t]);
            if (rank == 0) {
                par_params[t] = xmalloc(sizeof(float) * (size_t)n);
                ref_params[t] = xmalloc(sizeof(float) * (size_t)n);
            }
            if (rt_gather_param(rt, t, par_params[t], &err)) {
                fprintf(stderr, "strata run: rank %d, gathering %s: %s\n", rank,
                        L.g->tensors[t].name, err.msg);
                fflush(NULL);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }
        /* fault injection for the tests: STRATA_FAULT_PARAM=NAME:DELTA:COUNT
         * adds DELTA to the first COUNT elements of param NAME as gathered,
         * as a wrong update would, so that the check below is seen to catch it */
        const char *fp = getenv("STRATA_FAULT_PARAM");
        if (rank == 0 && fp) {
            char name[256];
            double delta = 0;
            long long count = 0;
            if (sscanf(fp, "%255[^:]:%lf:%lld", name, &delta, &count) == 3) {
                int t = graph_find_tensor(L.g, name);
                if (t >= 0 && par_params[t])
                    for (long long e = 0; e < count && e < tensor_numel(&L.g->tensors[t]); e++)
                        par_params[t][e] += (float)delta;
            }
        }
        int vrc = 0;
        if (rank == 0 && !rc) {
            ref_loss = xcalloc((size_t)steps, sizeof *ref_loss);
            RunConfig cfg = { .seed = seed };
            rt_default_hyper(&cfg.hyper);
            cfg.hyper.lr = lr;
            blas_threads(1);      /* the other ranks wait: the reference takes every core */
            vrc = reference_run(&L, ref_comm ? ref_comm : comm, &cfg, steps, ref_loss, ref_params,
                                &err);
            vj = cJSON_CreateObject();
            cJSON_AddNumberToObject(vj, "tolerance", tol);
            cJSON_AddStringToObject(vj, "why", why);
            if (vrc) {
                fprintf(stderr, "strata run: verify: %s\n", err.msg);
            } else {
                printf("verify against one %srank (tolerance %.0e relative: %s):\n",
                       cuda ? "CPU " : "", tol, why);
                double worst = 0;
                int bad_step = -1;
                cJSON *ls = cJSON_AddArrayToObject(vj, "loss_rel_diff");
                for (int st = 0; st < steps; st++) {
                    double d = rel_diff(all[(size_t)st * world].loss, ref_loss[st]);
                    cJSON_AddItemToArray(ls, cJSON_CreateNumber(d));
                    printf("  step %3d  loss %.6f vs %.6f  rel %.1e\n", st,
                           all[(size_t)st * world].loss, ref_loss[st], d);
                    if (d > tol && bad_step < 0) bad_step = st;
                    worst = fmax(worst, d);
                }
                /* params: the largest difference against the tensor's scale */
                double pworst = 0, pabs = 0;   /* relative to the tensor's scale; absolute */
                double ptol = fmax(tol * 10, 1e-3);
                bool few = true;               /* every tensor: few elements beyond ptol */
                const char *pname = NULL;
                for (int t = 0; t < nt; t++) {
                    if (!par_params[t]) continue;
                    int64_t n = tensor_numel(&L.g->tensors[t]), beyond = 0;
                    double dmax = 0, scale = 1e-3;
                    for (int64_t e = 0; e < n; e++) scale = fmax(scale, fabs((double)ref_params[t][e]));
                    for (int64_t e = 0; e < n; e++) {
                        double d = fabs((double)par_params[t][e] - ref_params[t][e]);
                        dmax = fmax(dmax, d);
                        beyond += d > ptol * scale;
                    }
                    few &= beyond <= (n / 1000 > 1 ? n / 1000 : 1);
                    pabs = fmax(pabs, dmax);
                    if (dmax / scale > pworst) {
                        pworst = dmax / scale;
                        pname = L.g->tensors[t].name;
                    }
                }
                cJSON_AddNumberToObject(vj, "param_rel_diff", pworst);
                if (pname) cJSON_AddStringToObject(vj, "param_worst", pname);
                printf("  final params: largest difference %.1e of the tensor's scale (%s; "
                       "bound %.0e)\n", pworst, pname ? pname : "-", fmax(tol * 10, 1e-3));
                /* Adam normalises tiny gradients: a weight whose gradient is zero up
                 * to rounding (an attention key bias, the row of a rare token) moves
                 * by up to the learning rate on rounding noise alone, hence the
                 * looser bound on params. With approximate gradients Adam may step
                 * any element the other way, up to the learning rate per step; with
                 * exact ones only such noise-led elements may, so there a few of
                 * them (at most 1 in 1000 of a tensor) may differ by that much,
                 * while a wrong update moves whole rows or shards. */
                double adam_bound = L.s->optimizer == OPT_ADAM && (tol > 1e-5 || few)
                                    ? 2.0 * lr * steps : 0;
                cJSON_AddNumberToObject(vj, "param_tolerance", ptol);
                if (adam_bound > 0) cJSON_AddNumberToObject(vj, "param_abs_tolerance", adam_bound);
                if (adam_bound > 0)
                    printf("  (or, with Adam on %s: %.1e absolute, bound %.0e)\n",
                           tol > 1e-5 ? "approximate gradients" : "rounding noise in a few elements",
                           pabs, adam_bound);
                bool pass = bad_step < 0 && (pworst <= ptol || pabs <= adam_bound);
                cJSON_AddBoolToObject(vj, "pass", pass);
                if (!pass) {
                    if (bad_step >= 0)
                        fprintf(stderr, "strata run: verify FAILED: step %d: loss %.6f vs %.6f on one "
                                "rank (rel %.1e > %.0e)\n", bad_step,
                                all[(size_t)bad_step * world].loss, ref_loss[bad_step],
                                rel_diff(all[(size_t)bad_step * world].loss, ref_loss[bad_step]), tol);
                    else
                        fprintf(stderr, "strata run: verify FAILED: param %s differs by %.1e of its "
                                "scale (> %.0e)\n", pname, pworst, ptol);
                    vrc = 1;
                } else {
                    printf("verify: OK\n");
                }
            }
            if (vrc) status = "verify failed";
        }
        MPI_Bcast(&vrc, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (vrc) rc = 1;
    }

    if (rank == 0 && !args_has(a, "no-store")) {
        const char *path = args_get(a, "db") ? args_get(a, "db") : CLI_DEFAULT_DB;
        char pid[17];
        if (store_run(path, args_get(a, "run-id"), &L, backend, steps, all, status, started, vj, pid, &err)) {
            fprintf(stderr, "strata run: %s\n", err.msg);
            rc = 1;
        } else if (args_get(a, "plan")) {
            compare_with_prediction(path, pid, all, steps, world);
        }
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);

out:
    if (par_params)
        for (int t = 0; t < L.g->ntensors; t++) {
            free(par_params[t]);
            free(ref_params[t]);
        }
    free(par_params);
    free(ref_params);
    free(ref_loss);
    cJSON_Delete(vj);
    free(mine);
    free(all);
    rt_free(rt);
    comm_free(ref_comm);
    comm_free(comm);
    device_free(dev);
    loaded_free(&L);
    return rc;
}
#endif

int cmd_run(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, RUN_OPTS, false, &a, &err)) {
        fprintf(stderr, "strata run: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_has(&a, "help") || a.npos) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        fprintf(f, "usage: %s\n\noptions:\n", USAGE);
        args_usage(f, RUN_OPTS);
        return args_has(&a, "help") ? 0 : EXIT_USAGE;
    }
    char missing[64] = "";
    if (args_get(&a, "plan") && (args_get(&a, "model") || args_get(&a, "strategy") ||
                                 args_get(&a, "cluster"))) {
        fprintf(stderr, "strata run: --plan names model, strategy and cluster; give it alone, "
                        "or give --model and --strategy\n");
        return EXIT_USAGE;
    }
    if (check_id_option(&a, "plan", "plan", &err)) {
        fprintf(stderr, "strata run: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (!args_get(&a, "plan") && !args_get(&a, "model")) strcat(missing, " --model");
    if (!args_get(&a, "plan") && !args_get(&a, "strategy")) strcat(missing, " --strategy");
    if (missing[0]) {
        fprintf(stderr, "strata run: missing required option%s:%s\n",
                strchr(missing + 1, ' ') ? "s" : "", missing);
        return EXIT_USAGE;
    }
    int64_t steps = 5, seed = 1, nodes = 0;
    if (args_int(&a, "steps", 1, 1000000, &steps, &err) ||
        args_int(&a, "seed", 0, INT64_MAX, &seed, &err) ||
        args_int(&a, "nodes", 1, 1 << 20, &nodes, &err) ||
        args_int(&a, "threads", 1, 4096, &(int64_t){ 0 }, &err)) {
        fprintf(stderr, "strata run: %s\n", err.msg);
        return EXIT_USAGE;
    }
    /* ids are stored in lower case and looked up in either (the value is
     * argv's own: the ranks mpirun starts get it lowered too) */
    char *rid = (char *)args_get(&a, "run-id");
    if (rid && (strlen(rid) != 16 || strspn(rid, "0123456789abcdefABCDEF") != 16)) {
        fprintf(stderr, "strata run: --run-id: '%s' is not 16 hex digits\n", rid);
        return EXIT_USAGE;
    }
    for (char *p = rid; p && *p; p++) *p = (char)tolower((unsigned char)*p);
    /* the store, and that the id is free, before any rank starts: a run
     * that trained for an hour must not then fail to be kept */
    if (!launch_under_mpirun() && !args_has(&a, "no-store")) {
        const char *path = args_get(&a, "db") ? args_get(&a, "db") : CLI_DEFAULT_DB;
        if (access(path, F_OK) != 0) {
            /* no store yet: the run makes it, in a directory that must be there */
            if (args_out_file(&a, "db", "--db", NULL, &err)) {
                fprintf(stderr, "strata run: %s\n", err.msg);
                return EXIT_USAGE;
            }
            goto checked;
        }
        Db *db = db_open(path, &err);       /* the run writes it: an empty file becomes one */
        DbRun old;
        DbRunStep *ost = NULL;
        int nost = 0, found = db && rid ? db_run_get(db, rid, &old, &ost, &nost, &err) : 1;
        if (found == 0) {
            /* a row a server submitted is this run's to complete */
            if (db_run_status_pending(old.status) && nost == 0) found = 1;
            db_run_free(&old);
            free(ost);
        }
        db_close(db);
        if (!db || found < 0) {
            fprintf(stderr, "strata run: %s\n", err.msg);
            return 1;
        }
        if (found == 0) {
            fprintf(stderr, "strata run: --run-id %s: a run with this id is already stored in "
                    "%s\n", rid, path);
            return EXIT_USAGE;
        }
    }
checked:
    if (nodes && !args_get(&a, "cluster")) {
        fprintf(stderr, "strata run: --nodes needs --cluster\n");
        return EXIT_USAGE;
    }
    float lr = 1e-3f;
    if (args_get(&a, "lr")) {
        char *end;
        lr = strtof(args_get(&a, "lr"), &end);
        if (*end || !(lr > 0) || !isfinite(lr)) {
            fprintf(stderr, "strata run: --lr: '%s' is not a positive number\n", args_get(&a, "lr"));
            return EXIT_USAGE;
        }
    }
    const char *backend = args_get(&a, "backend") ? args_get(&a, "backend") : "cpu";
    if (strcmp(backend, "cpu") != 0 && strcmp(backend, "cuda") != 0) {
        fprintf(stderr, "strata run: --backend: unknown backend \"%s\" (cpu or cuda)\n", backend);
        return EXIT_USAGE;
    }
#ifndef HAVE_MPI
    fprintf(stderr, "strata run: strata was built without MPI; install openmpi-bin and "
                    "libopenmpi-dev, then rebuild\n");
    return 1;
#else
    if (!launch_under_mpirun()) {
        /* read the plan's world size here, then start mpirun for it */
        Graph *g;
        Cluster *c;
        Strategy *s;
        load_inputs(&a, &g, &c, &s, &err);
        int world = s ? s->world : 0;
        strategy_free(s);
        cluster_free(c);
        graph_free(g);
        if (!world) {
            fprintf(stderr, "strata run: %s\n", err.msg);
            return 1;
        }
        if (world > 1) return launch_exec(world, "run", argc, argv);
    }
    int provided = 0;
    MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    int rc = run_ranks(&a, (int)steps, (uint64_t)seed, lr, args_has(&a, "verify"));
    MPI_Finalize();
    return rc;
#endif
}

/* ----------------------------------------------------------------------------
 * runs list / show */

int cmd_runs_list(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "runs list", "strata runs list [--db PATH] [--json]", 0,
                            NULL, &a, &rc);
    if (!db) return rc;
    DbRun *rows = NULL;
    int n = 0;
    if (db_run_list(db, &rows, &n, &err)) {
        fprintf(stderr, "strata: %s\n", err.msg);
        db_close(db);
        return 1;
    }
    if (args_has(&a, "json")) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_run(&rows[i], NULL, 0, false));
        char *s = cJSON_Print(arr);
        puts(s);
        cJSON_free(s);
        cJSON_Delete(arr);
    } else {
        int wm = 5;
        for (int i = 0; i < n; i++)
            if ((int)strlen(rows[i].model_name) > wm) wm = (int)strlen(rows[i].model_name);
        printf("%-16s  %-16s  %-*s  %-7s  %5s  %5s  %-13s  %s\n", "run", "plan", wm, "model",
               "backend", "ranks", "steps", "status", "finished");
        for (int i = 0; i < n; i++)
            printf("%-16s  %-16s  %-*s  %-7s  %5d  %5d  %-13s  %s\n", rows[i].id, rows[i].plan_id,
                   wm, rows[i].model_name, rows[i].backend, rows[i].world, rows[i].steps,
                   rows[i].status, rows[i].finished ? rows[i].finished : "");
    }
    db_run_list_free(rows, n);
    db_close(db);
    return 0;
}

int cmd_runs_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "runs show", "strata runs show ID [--db PATH] [--json]", 1,
                            "run", &a, &rc);
    if (!db) return rc;
    DbRun r;
    DbRunStep *st = NULL;
    int n = 0;
    rc = db_run_get(db, a.pos[0], &r, &st, &n, &err);
    db_close(db);
    if (rc) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return 1;
    }
    if (args_has(&a, "json")) {
        cJSON *o = view_run(&r, st, n, true);
        char *s = cJSON_Print(o);
        puts(s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else {
        printf("run %s: %s, plan %s, %d rank%s on %s, %d step%s, %s (finished %s)\n", r.id,
               r.model_name, r.plan_id, r.world, r.world == 1 ? "" : "s", r.backend, r.steps,
               r.steps == 1 ? "" : "s", r.status, r.finished ? r.finished : "-");
        printf("  %4s  %4s  %10s  %10s  %10s  %10s  %10s\n", "step", "rank", "loss", "step ms",
               "compute", "comm", "idle");
        for (int i = 0; i < n; i++)
            printf("  %4d  %4d  %10.6f  %10.2f  %10.2f  %10.2f  %10.2f\n", st[i].step, st[i].rank,
                   st[i].loss, st[i].step_s * 1e3, st[i].compute_s * 1e3, st[i].comm_s * 1e3,
                   st[i].idle_s * 1e3);
        if (r.verify_json) printf("  verify: %s\n", r.verify_json);
        if (r.error) printf("  error: %s\n", r.error);
    }
    free(st);
    db_run_free(&r);
    return 0;
}
