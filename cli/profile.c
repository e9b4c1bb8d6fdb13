/*
 * profile.c — `strata profile`: measure this machine, store every sample, and
 * write a cluster JSON from the measurements; `strata profile list|show`.
 *
 * Started plainly, strata profile measures the device and the op grid in this
 * process (nothing else runs, so the device has the machine to itself), then
 * starts `mpirun -np R` on itself for the links; the ranks learn the profile
 * row through STRATA_PROFILE_ID and rank 0 stores each sweep. This process
 * waits, fits the alpha-beta models on the stored samples, and closes the
 * row. Started under mpirun by the user (several hosts), every rank takes
 * part and rank 0 does what the parent does.
 *
 * Ctrl-C (SIGINT) or SIGTERM stop after the current measurement: what was
 * measured stays stored and the profile is closed as "interrupted", never
 * complete. Samples are stored in batches, each batch in one transaction,
 * each case after every round it is timed in; the row records this
 * process's pid, so a profile killed outright is closed as interrupted by
 * the next command that reads profiles on this host
 * (db_profile_interrupt_dead).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "launch.h"
#include "db/db.h"
#include "executor/blas.h"
#include "executor/build.h"
#include "executor/comm.h"
#include "executor/device.h"
#include "ir/cluster.h"
#include "ir/graph.h"
#include "ir/util.h"
#include "jobs/jobs.h"
#include "profiler/profile.h"
#include "profiler/stats.h"

#ifdef HAVE_MPI
#include <mpi.h>
#endif

#define EXIT_USAGE 2
#define ENV_ID "STRATA_PROFILE_ID"

static const OptSpec PROFILE_OPTS[] = {
    { "backend", 0, true, "cpu|cuda  what to measure (default cpu)" },
    { "quick", 0, false, "a short profile: fewer shapes and repetitions, messages up to 64 MiB" },
    { "db", 0, true, "PATH  store the profile here (default strata.db)" },
    { "output", 'o', true, "FILE  write a cluster JSON made of the measurements" },
    { "ranks", 0, true, "R  processes (devices) for the links (default: one per core)" },
    { "kinds", 0, true, "LIST  only these op kinds, comma-separated (matmul,...,sgd,adam)" },
    { "max-bytes", 0, true, "SIZE  largest message, e.g. 256M (default 256M, 64M with --quick)" },
    { "seconds", 0, true, "S  time planned for the op grid (default 600, 40 with --quick)" },
    { "no-links", 0, false, "measure the device and the ops only" },
    { "quiet", 0, false, "no progress bar" },
    { "help", 'h', false, "show this help" },
    { NULL, 0, false, NULL },
};

static const char *USAGE = "strata profile [--backend cpu|cuda] [--quick] [--db PATH] "
                           "[-o cluster.json] [--ranks R]";

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

typedef struct {
    bool quick, quiet, links;
    const char *db_path, *out_path, *kinds;
    int ranks;
    int64_t max_bytes;
    double seconds;
} Opts;

/* "256M", "64K", "4096", "1G" (binary multiples). */
static int parse_size(const char *s, int64_t *out, Err *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    if (*end == 'i') end++;
    if (*end == 'B') end++;
    if (errno || end == s || *end || !(v > 0))
        return err_set(err, "--max-bytes: \"%s\" is not a size (e.g. 4096, 64K, 256M, 1G)", s);
    v *= mul;
    if (v < 4 || v > 1024.0 * 1024 * 1024)
        return err_set(err, "--max-bytes: %s is outside 4 bytes .. 1G (each rank holds two "
                       "buffers of it)", s);
    *out = (int64_t)v;
    return 0;
}

static int parse_opts(const Args *a, Opts *o, Err *err)
{
    memset(o, 0, sizeof *o);
    o->quick = args_has(a, "quick");
    o->quiet = args_has(a, "quiet");
    o->links = !args_has(a, "no-links");
    o->db_path = args_get(a, "db") ? args_get(a, "db") : CLI_DEFAULT_DB;
    o->out_path = args_get(a, "output");
    if (args_out_file(a, "output", "-o", o->db_path, err) || args_store(a, err)) return -1;
    o->kinds = args_get(a, "kinds");
    if (o->kinds && op_kinds_check(o->kinds, err)) return err_prefix(err, "--kinds");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t r = cores > 0 ? cores : 1;
    if (args_int(a, "ranks", 1, 4096, &r, err)) return -1;
    o->ranks = (int)r;
    o->max_bytes = o->quick ? (int64_t)64 << 20 : (int64_t)256 << 20;
    if (args_get(a, "max-bytes") && parse_size(args_get(a, "max-bytes"), &o->max_bytes, err))
        return -1;
    o->seconds = o->quick ? 40 : 600;
    if (args_get(a, "seconds")) {
        char *end;
        double v = strtod(args_get(a, "seconds"), &end);
        if (*end || !(v > 0) || v > 1e6)
            return err_set(err, "--seconds: \"%s\" is not a positive number of seconds",
                           args_get(a, "seconds"));
        o->seconds = v;
    }
    const char *backend = args_get(a, "backend") ? args_get(a, "backend") : "cpu";
    if (strcmp(backend, "cpu") && strcmp(backend, "cuda"))
        return err_set(err, "--backend: unknown backend \"%s\" (cpu or cuda)", backend);
    return 0;
}

/* The profiler's CUDA backend (timing the executor's CUDA kernels and NCCL)
 * is not built; says so, or that there is no GPU at all. */
static int cuda_refusal(Err *err)
{
    if (cuda_device_count(err) < 0) {
        err_prefix(err, "--backend cuda");
        return -1;
    }
    return err_set(err, "--backend cuda: the profiler's CUDA backend is not built yet (the "
                   "executor runs on the GPU, but its kernels and NCCL are not timed here); use "
                   "--backend cpu");
}

/* ----------------------------------------------------------------------------
 * Storing samples */

typedef struct {
    Db *db;
    int64_t id;
    DbProfileOp *ops;
    int n, cap;
    double last;
} OpBatch;

static int ops_flush(OpBatch *b, Err *err)
{
    int rc = b->n ? db_profile_put_ops(b->db, b->id, b->ops, b->n, err) : 0;
    for (int i = 0; i < b->n; i++) free(b->ops[i].shape_json);
    b->n = 0;
    b->last = prof_now();
    return rc;
}

static int ops_add(OpBatch *b, const DbProfileOp *s, Err *err)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->ops = xrealloc(b->ops, (size_t)b->cap * sizeof *b->ops);
    }
    b->ops[b->n] = *s;
    b->ops[b->n].shape_json = xstrdup(s->shape_json);
    b->n++;
    /* every few seconds, so Ctrl-C or a crash loses little */
    return b->n >= 64 || prof_now() - b->last > 5 ? ops_flush(b, err) : 0;
}

static int links_sink(void *ctx, const DbProfileLink *s, int n, Err *err)
{
    OpBatch *b = ctx;
    return db_profile_add_links(b->db, b->id, s, n, err);
}

/* ----------------------------------------------------------------------------
 * Device and ops (one process) */

/* The device's rates as measured: at the start, then after each round of
 * the op grid (the profile keeps the best of them). */
typedef struct {
    int n;
    double flops[8], bw[8];
} Rates;

static void rates_add(Rates *r, double flops, double bw)
{
    if (r->n == (int)(sizeof r->flops / sizeof r->flops[0])) return;
    r->flops[r->n] = flops;
    r->bw[r->n++] = bw;
}

/* The grid is planned with d as measured at the start (opgrid_new keeps a
 * copy); d is measured again after each round, keeping the best rates. */
static int measure_ops(const Opts *o, ProfDevice *d, Rates *rates, OpBatch *b, Err *err)
{
    OpGridOpts go = { .quick = o->quick, .budget_s = o->seconds, .kinds = o->kinds, .seed = 1 };
    OpGrid *g = opgrid_new(&go, d, err);
    if (!g) return -1;
    int n = opgrid_count(g), rc = 0;
    double total = 0;
    for (int i = 0; i < n; i++) total += opgrid_estimate(g, i);
    if (!o->quiet)
        fprintf(stderr, "ops: %d cases (kinds x phases x shapes), about %.0f s planned\n", n, total);
    Progress pr;
    progress_begin(&pr, "ops", total, o->quiet);
    /* round by round over the whole grid; a case is stored after each round
     * with the rounds it has so far (the last write its whole sample), so a
     * profile stopped or killed keeps what it measured */
    int rounds = opgrid_rounds(g);
    char label[96];
    for (int r = 0; r < rounds && !rc && !stop_flag; r++) {
        for (int i = 0; i < n && !stop_flag; i++) {
            DbProfileOp s;
            snprintf(label, sizeof label, "%s, round %d of %d", opgrid_label(g, i), r + 1, rounds);
            progress_add(&pr, 0, label);
            if (opgrid_measure(g, i, r, err) || opgrid_sample(g, i, &s) || ops_add(b, &s, err)) {
                rc = -1;
                break;
            }
            progress_add(&pr, opgrid_estimate(g, i) / rounds, NULL);
        }
        if (rc || stop_flag) break;
        double f, w;
        progress_add(&pr, 0, "device: matmul rate and memory bandwidth again");
        prof_device_again(d, o->quick, &f, &w);
        rates_add(rates, f, w);
    }
    if (!rc) progress_end(&pr, stop_flag);
    opgrid_free(g);
    if (ops_flush(b, rc ? NULL : err)) rc = -1;
    return rc;
}

/* Stores d as the profile's device, its notes naming the measurements in r
 * it is the best of. */
static int store_device(Db *db, int64_t id, int devices_per_node, const ProfDevice *d,
                        const Rates *r, Err *err)
{
    char notes[512];
    int k = snprintf(notes, sizeof notes, "%d BLAS thread%s per device; peak at SGEMM n=%lld; "
                     "%d device%s per host", d->threads, d->threads == 1 ? "" : "s",
                     (long long)d->peak_n, devices_per_node, devices_per_node == 1 ? "" : "s");
    if (r->n > 1) {
        k += snprintf(notes + k, sizeof notes - k, "; the best of %d measurements (at the start, "
                      "then after each round of ops): GFLOP/s", r->n);
        for (int i = 0; i < r->n && k < (int)sizeof notes; i++)
            k += snprintf(notes + k, sizeof notes - k, "%s %.1f", i ? "," : "", r->flops[i] / 1e9);
        k += k < (int)sizeof notes ? snprintf(notes + k, sizeof notes - k, "; GB/s") : 0;
        for (int i = 0; i < r->n && k < (int)sizeof notes; i++)
            k += snprintf(notes + k, sizeof notes - k, "%s %.1f", i ? "," : "", r->bw[i] / 1e9);
    }
    return db_profile_set_device(db, id, d->name, d->peak_flops, d->mem_bw, d->mem_bytes, notes, err);
}

static int measure_device(const Opts *o, Db *db, int64_t id, int devices_per_node, ProfDevice *d,
                          Rates *r, Err *err)
{
    if (!o->quiet) fprintf(stderr, "device: measuring matmul rate and memory bandwidth\n");
    if (prof_device_cpu(d, devices_per_node, o->quick, err)) return -1;
    rates_add(r, d->peak_flops, d->mem_bw);
    if (!o->quiet)
        fprintf(stderr, "device: %s\n        %.1f GFLOP/s f32 matmul, %.1f GB/s memory, %.1f GiB\n",
                d->name, d->peak_flops / 1e9, d->mem_bw / 1e9, d->mem_bytes / (1 << 30));
    return store_device(db, id, devices_per_node, d, r, err);
}

/* The device, then the op grid, the device measured again after each
 * round; the profile keeps the best rates (*d). */
static int measure_device_ops(const Opts *o, Db *db, int64_t id, int devices_per_node,
                              ProfDevice *d, Err *err)
{
    Rates rates = {0};
    int rc = measure_device(o, db, id, devices_per_node, d, &rates, err);
    if (rc || stop_flag) return rc;
    OpBatch b = { .db = db, .id = id, .last = prof_now() };
    rc = measure_ops(o, d, &rates, &b, err);
    free(b.ops);
    if (rates.n > 1) {
        if (!o->quiet)
            fprintf(stderr, "device: the best of %d measurements: %.1f GFLOP/s (first %.1f), "
                    "%.1f GB/s (first %.1f)\n", rates.n, d->peak_flops / 1e9,
                    rates.flops[0] / 1e9, d->mem_bw / 1e9, rates.bw[0] / 1e9);
        Err e2 = {0};
        if (store_device(db, id, devices_per_node, d, &rates, &e2) && !rc) {
            *err = e2;
            rc = -1;
        }
    }
    return rc;
}

/* ----------------------------------------------------------------------------
 * Closing: fits and the cluster JSON */

typedef struct {
    DbProfileFit *f;
    int n, cap;
} Fits;

/* One fit per collective, group size and level, over its sizes. */
static void fit_links(const DbProfileLink *l, int n, Fits *out)
{
    memset(out, 0, sizeof *out);
    double *x = xmalloc((size_t)(n ? n : 1) * sizeof *x), *t = xmalloc((size_t)(n ? n : 1) * sizeof *t);
    for (int i = 0; i < n;) {
        int j = i, k = 0;
        while (j < n && !strcmp(l[j].collective, l[i].collective) && !strcmp(l[j].level, l[i].level) &&
               l[j].group_size == l[i].group_size) {
            x[k] = (double)l[j].bytes;
            t[k++] = l[j].time_s;
            j++;
        }
        AlphaBeta ab;
        if (ab_fit(x, t, k, &ab) == 0) {
            if (out->n == out->cap) {
                out->cap = out->cap ? 2 * out->cap : 16;
                out->f = xrealloc(out->f, (size_t)out->cap * sizeof *out->f);
            }
            out->f[out->n++] = (DbProfileFit){ l[i].collective, l[i].group_size, l[i].level,
                                               ab.alpha, ab.beta, ab.rms_rel_err, ab.max_rel_err,
                                               ab.n };
        }
        i = j;
    }
    free(x);
    free(t);
}

static const DbProfileFit *find_fit(const Fits *f, const char *coll, const char *level, int g)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->f[i].collective, coll) && !strcmp(f->f[i].level, level) &&
            f->f[i].group_size == g)
            return &f->f[i];
    return NULL;
}

static double min_time(const DbProfileLink *l, int n, const char *coll, const char *level, int g)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(l[i].collective, coll) && !strcmp(l[i].level, level) && l[i].group_size == g &&
            (m == 0 || l[i].time_s < m))
            m = l[i].time_s;
    return m;
}

/* Four significant digits: what a measurement this noisy supports. */
static double sig4(double v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.4g", v);
    return strtod(buf, NULL);
}

/* A level of the cluster from the point-to-point fit of 2 ranks at that level:
 * one direction's bandwidth is 1/beta, the latency alpha (or, when the fit
 * puts alpha at 0, the smallest message's time, an upper bound of it). */
static cJSON *level_json(const char *name, int count, const char *link, const Fits *f,
                         const DbProfileLink *l, int nl, const ProfDevice *d)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", name);
    cJSON_AddNumberToObject(j, "count", count);
    cJSON_AddStringToObject(j, "link", link);
    const DbProfileFit *p2p = find_fit(f, "send_recv", name, 2);
    if (p2p && p2p->beta_s > 0) {
        double lat = p2p->alpha_s > 0 ? p2p->alpha_s : min_time(l, nl, "send_recv", name, 2);
        cJSON_AddNumberToObject(j, "bw_gbps", sig4(1 / p2p->beta_s / 1e9));
        cJSON_AddNumberToObject(j, "latency_us", sig4(lat * 1e6));
        char notes[200];
        snprintf(notes, sizeof notes, "send_recv between 2 ranks, alpha-beta fit over %d sizes "
                 "(rms error %.0f%%)", p2p->n, 100 * p2p->rms_rel_err);
        cJSON_AddStringToObject(j, "notes", notes);
    } else {
        /* nothing crossed this level: its figures are the device's memory */
        cJSON_AddNumberToObject(j, "bw_gbps", sig4(d->mem_bw / 1e9));
        cJSON_AddNumberToObject(j, "latency_us", 0.001);
        cJSON_AddStringToObject(j, "notes", "no link measured (one device): memory bandwidth "
                                "stands in, and nothing crosses this level");
    }
    return j;
}

static char *cluster_text(int64_t id, const char *host, const ProfDevice *d, int per_node, int nodes,
                          const Fits *f, const DbProfileLink *l, int nl, Err *err)
{
    cJSON *j = cJSON_CreateObject();
    char name[128], notes[512], date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&now));
    snprintf(name, sizeof name, "%s-profile-%lld", host, (long long)id);
    cJSON_AddStringToObject(j, "name", name);
    snprintf(notes, sizeof notes, "Measured by strata profile %lld on %s, %s: %s. Peak = best "
             "SGEMM rate; memory bandwidth = STREAM triad; links = alpha-beta fits of send_recv "
             "(strata profile show %lld for every collective).", (long long)id, host, date,
             d->name, (long long)id);
    cJSON_AddStringToObject(j, "notes", notes);
    cJSON *devs = cJSON_AddArrayToObject(j, "devices"), *dv = cJSON_CreateObject();
    cJSON_AddStringToObject(dv, "name", d->short_name);
    cJSON_AddStringToObject(dv, "kind", "cpu");
    cJSON_AddNumberToObject(dv, "count", per_node * nodes);
    cJSON *pk = cJSON_AddObjectToObject(dv, "peak_tflops");
    /* the CPU kernels compute every dtype in f32 */
    cJSON_AddNumberToObject(pk, "f32", sig4(d->peak_flops / 1e12));
    cJSON_AddNumberToObject(pk, "bf16", sig4(d->peak_flops / 1e12));
    cJSON_AddNumberToObject(pk, "f16", sig4(d->peak_flops / 1e12));
    cJSON_AddNumberToObject(dv, "memory_gib", sig4(d->mem_bytes / (1 << 30)));
    cJSON_AddNumberToObject(dv, "memory_bw_gbps", sig4(d->mem_bw / 1e9));
    cJSON_AddItemToArray(devs, dv);
    cJSON *lv = cJSON_AddArrayToObject(j, "levels");
    cJSON_AddItemToArray(lv, level_json("core", per_node, "shm", f, l, nl, d));
    if (nodes > 1) cJSON_AddItemToArray(lv, level_json("node", nodes, "network", f, l, nl, d));
    /* what is written must load wherever a cluster file is accepted */
    Cluster *c = cluster_from_json(j, 0, err);
    char *s = NULL;
    if (c) {
        char *p = cJSON_Print(j);
        s = xstrdup(p);
        cJSON_free(p);
    } else {
        err_prefix(err, "the measured cluster does not validate");
    }
    cluster_free(c);
    cJSON_Delete(j);
    return s;
}

/* Closes the profile: fits on the stored link samples, the cluster JSON,
 * status. Writes -o only for a complete profile. */
static int close_profile(const Opts *o, Db *db, int64_t id, const char *host, const ProfDevice *d,
                         int per_node, int nodes, bool complete, const char *status, Err *err)
{
    DbProfile p;
    DbProfileLink *links = NULL;
    int nl = 0;
    if (db_profile_get(db, id, &p, NULL, NULL, &links, &nl, NULL, NULL, err)) return -1;
    db_profile_free(&p);
    Fits f;
    fit_links(links, nl, &f);
    Err cerr = {0};
    char *cl = d->peak_flops > 0 ? cluster_text(id, host, d, per_node, nodes, &f, links, nl, &cerr)
                                 : NULL;
    char why[400];
    int rc = -1;
    if (d->peak_flops > 0 && !cl) {
        /* the profile is still closed, never left running */
        snprintf(why, sizeof why, "failed: %.380s", cerr.msg);
        complete = false;
        status = why;
    }
    if (db_profile_finish(db, id, complete, status, f.f, f.n, cl, err)) goto done;
    if (!cl && d->peak_flops > 0) {
        err_set(err, "%s", cerr.msg);
        goto done;
    }
    if (complete && o->out_path && cl) {
        FILE *fp = fopen(o->out_path, "w");
        if (!fp || fputs(cl, fp) < 0 || fputc('\n', fp) < 0 || fclose(fp)) {
            err_set(err, "-o %s: cannot write: %s (the profile is stored as %lld)", o->out_path,
                    strerror(errno), (long long)id);
            goto done;
        }
    }
    rc = 0;
done:
    free(cl);
    free(f.f);
    db_profile_samples_free(NULL, 0, links, nl, NULL, 0);
    return rc;
}

/* This build's kernels and the threads each of per_node ranks measures
 * with (the profile's build JSON; cJSON_free it). */
static char *build_text(int per_node)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int t = per_node > 0 && cores / per_node > 0 ? (int)(cores / per_node) : 1;
    cJSON *j = build_json(t, per_node > 0 ? per_node : 1);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

static void say_done(const Opts *o, Db *db, int64_t id, bool complete, const char *status)
{
    DbProfile p;
    Err e = {0};
    if (db_profile_get(db, id, &p, NULL, NULL, NULL, NULL, NULL, NULL, &e)) return;
    printf("profile %lld: %s; %d op samples, %d link samples, %d fits\n", (long long)id, status,
           p.nops, p.nlinks, p.nfits);
    if (complete && o->out_path) printf("cluster written to %s\n", o->out_path);
    if (!complete && o->out_path) printf("no cluster written: the profile is not complete\n");
    printf("see: strata profile show %lld%s%s\n", (long long)id,
           strcmp(o->db_path, CLI_DEFAULT_DB) ? " --db " : "", strcmp(o->db_path, CLI_DEFAULT_DB) ? o->db_path : "");
    db_profile_free(&p);
}

/* ----------------------------------------------------------------------------
 * The ranks */

#ifdef HAVE_MPI
static int links_on_ranks(const Opts *o, Db *db, int64_t id, bool *stopped, Err *err)
{
    Comm *c = comm_mpi_new(err);
    if (!c) return -1;
    OpBatch b = { .db = db, .id = id };
    LinkOpts lo = { .quick = o->quick, .max_bytes = o->max_bytes, .level_inner = "core",
                    .stop = &stop_flag, .sink = links_sink, .ctx = &b, .quiet = o->quiet };
    int rc = prof_links(c, &lo, stopped, err);
    comm_free(c);
    return rc;
}

/* Under mpirun: a rank of the parent's link job, or (started by the user)
 * every part of the profile with rank 0 in charge. */
static int profile_ranks(const Opts *o)
{
    Err err = {0};
    int provided = 0, rank = 0, world = 1;
    MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    catch_signals();
    const char *env = getenv(ENV_ID);
    int64_t id = env ? strtoll(env, NULL, 10) : 0;
    Db *db = NULL;
    int rc = 0;
    bool stopped = false;
    ProfDevice d = {0};
    char host[128];
    this_host(host, sizeof host);
    const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int per_node = ls && atoi(ls) > 0 ? atoi(ls) : world;
    int nodes = world / per_node > 0 ? world / per_node : 1;

    if (rank == 0) {
        db = db_open(o->db_path, &err);
        if (!db) rc = -1;
        if (!rc && !env) {
            char *build = build_text(per_node);
            DbProfile p = { .host = host, .device = "cpu", .backend = "cpu", .ranks = world,
                            .quick = o->quick, .build_json = build, .pid = getpid() };
            rc = db_profile_begin(db, &p, &id, &err);
            cJSON_free(build);
            if (!rc && !o->quiet) fprintf(stderr, "profile %lld: %d ranks\n", (long long)id, world);
            if (!rc) rc = measure_device_ops(o, db, id, per_node, &d, &err);
        }
    }
    /* everyone learns whether rank 0 got this far */
    int bad = rc ? 1 : 0;
    MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!bad && o->links && world > 1) rc = links_on_ranks(o, db, id, &stopped, &err);
    if (rc) {
        fprintf(stderr, "strata profile: rank %d: %s\n", rank, err.msg);
        /* the other ranks may be inside a collective this rank left: only an
         * abort ends the job (the parent closes the row as failed) */
        if (env || rank != 0) {
            fflush(NULL);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    if (rank == 0 && !env && db && id) {
        stopped = stopped || stop_flag;
        bool complete = !rc && !bad && !stopped;
        char status[300];
        if (complete) snprintf(status, sizeof status, "complete");
        else if (stopped) snprintf(status, sizeof status, "interrupted");
        else snprintf(status, sizeof status, "failed: %.280s", err.msg);
        Err e2 = {0};
        if (close_profile(o, db, id, host, &d, per_node, nodes, complete, status, &e2)) {
            fprintf(stderr, "strata profile: %s\n", e2.msg);
            rc = -1;
        } else {
            say_done(o, db, id, complete, status);
        }
    }
    db_close(db);
    if (rc && world > 1) {       /* the row is closed; the others may still wait */
        fflush(NULL);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
    if (rc || bad) return 1;
    return stopped ? 130 : 0;
}
#endif

/* ----------------------------------------------------------------------------
 * The command */

/* Runs the link job under mpirun and waits; a stop request reaches it too
 * (Ctrl-C reaches the whole terminal group by itself; SIGTERM is passed on). */
static int spawn_links(const Opts *o, int64_t id, int argc, char **argv, Err *err)
{
    char ids[32];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    setenv(ENV_ID, ids, 1);
    pid_t pid = launch_spawn(o->ranks, "profile", argc, argv);
    unsetenv(ENV_ID);
    if (pid < 0) return err_set(err, "could not start the link measurement under mpirun");
    int status = 0;
    bool passed = false;
    for (;;) {
        pid_t r = waitpid(pid, &status, 0);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) return err_set(err, "waiting for mpirun: %s", strerror(errno));
        if (stop_flag && !passed) {
            kill(pid, SIGTERM);
            passed = true;
        }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (stop_flag || (WIFEXITED(status) && WEXITSTATUS(status) == 130)) {
        stop_flag = 1;
        return 0;
    }
    return err_set(err, "the link measurement under mpirun failed (%s %d; see the messages "
                   "above)", WIFEXITED(status) ? "exit status" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

int cmd_profile(int argc, char **argv)
{
    Args a;
    Err err = {0};
    if (args_parse(argc, argv, PROFILE_OPTS, false, &a, &err)) {
        fprintf(stderr, "strata profile: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_has(&a, "help") || a.npos) {
        FILE *f = args_has(&a, "help") ? stdout : stderr;
        if (a.npos) fprintf(f, "strata profile: unexpected argument \"%s\"\n", a.pos[0]);
        fprintf(f, "usage: %s\n       strata profile list [--db PATH] [--json]\n"
                   "       strata profile show ID [--db PATH] [--json]\n\noptions:\n", USAGE);
        args_usage(f, PROFILE_OPTS);
        return a.npos ? EXIT_USAGE : 0;
    }
    Opts o;
    if (parse_opts(&a, &o, &err)) {
        fprintf(stderr, "strata profile: %s\n", err.msg);
        return EXIT_USAGE;
    }
    if (args_get(&a, "backend") && !strcmp(args_get(&a, "backend"), "cuda")) {
        cuda_refusal(&err);
        fprintf(stderr, "strata profile: %s\n", err.msg);
        return 1;
    }
    if (launch_under_mpirun()) {
#ifdef HAVE_MPI
        return profile_ranks(&o);
#endif
    }
#ifndef HAVE_MPI
    if (o.links && o.ranks > 1) {
        fprintf(stderr, "strata profile: strata was built without MPI, so links cannot be "
                        "measured; install openmpi-bin and libopenmpi-dev and rebuild, or pass "
                        "--no-links\n");
        return 1;
    }
#endif
    Db *db = db_open(o.db_path, &err);
    if (!db) {
        fprintf(stderr, "strata profile: %s\n", err.msg);
        return 1;
    }
    char host[128];
    this_host(host, sizeof host);
    char *build = build_text(o.ranks);
    DbProfile p = { .host = host, .device = "cpu", .backend = "cpu", .ranks = o.ranks,
                    .quick = o.quick, .build_json = build, .pid = getpid() };
    int64_t id = 0;
    int begun = db_profile_begin(db, &p, &id, &err);
    cJSON_free(build);
    if (begun) {
        fprintf(stderr, "strata profile: cannot store a profile in %s: %s\n", o.db_path, err.msg);
        db_close(db);
        return 1;
    }
    if (!o.quiet) fprintf(stderr, "profile %lld on %s\n", (long long)id, host);
    catch_signals();
    ProfDevice d = {0};
    int rc = measure_device_ops(&o, db, id, o.ranks, &d, &err);
    if (!rc && !stop_flag && o.links && o.ranks > 1) rc = spawn_links(&o, id, argc, argv, &err);
    bool complete = !rc && !stop_flag;
    char status[300];
    if (complete) snprintf(status, sizeof status, "complete");
    else if (!rc) snprintf(status, sizeof status, "interrupted");
    else snprintf(status, sizeof status, "failed: %.280s", err.msg);
    if (rc) fprintf(stderr, "strata profile: %s\n", err.msg);
    Err e2 = {0};
    if (close_profile(&o, db, id, host, &d, o.ranks, 1, complete, status, &e2)) {
        fprintf(stderr, "strata profile: %s\n", e2.msg);
        rc = -1;
    } else {
        say_done(&o, db, id, complete, status);
    }
    db_close(db);
    if (rc) return 1;
    return complete ? 0 : 130;
}

/* ----------------------------------------------------------------------------
 * profile list / show */

static const char *ago_or(const char *s) { return s ? s : "-"; }

int cmd_profile_list(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "profile list", "strata profile list [--db PATH] [--json]",
                            0, NULL, &a, &rc);
    if (!db) return rc;
    cli_settle_profiles(db);
    DbProfile *rows = NULL;
    int n = 0;
    rc = db_profile_list(db, &rows, &n, &err);
    db_close(db);
    if (rc) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return 1;
    }
    if (args_has(&a, "json")) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, view_profile(&rows[i], NULL));
        char *s = cJSON_Print(arr);
        puts(s);
        cJSON_free(s);
        cJSON_Delete(arr);
    } else if (!n) {
        printf("no profiles stored (strata profile --quick measures this machine)\n");
    } else {
        printf("%4s  %-12s  %-24s  %-12s  %-4s  %5s  %6s  %6s  %s\n", "id", "status", "started",
               "host", "be", "ranks", "ops", "links", "device");
        for (int i = 0; i < n; i++)
            printf("%4lld  %-12.*s  %-24s  %-12.12s  %-4s  %5d  %6d  %6d  %s\n",
                   (long long)rows[i].id, (int)strcspn(rows[i].status, ":"), rows[i].status,
                   rows[i].started, rows[i].host,
                   rows[i].backend, rows[i].ranks, rows[i].nops, rows[i].nlinks, rows[i].device);
    }
    db_profile_list_free(rows, n);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Op table: median achieved GFLOP/s and its fraction of the peak, per kind
 * and phase, in columns by FLOPs per call (decades). */
static void print_op_table(const DbProfile *p, const DbProfileOp *ops, int n)
{
    static const char *const col[] = { "<1M", "1M", "10M", "100M", "1G", "10G+" };
    enum { NC = 6 };
    printf("\nops: %d samples; median achieved GFLOP/s (%% of the %.1f GFLOP/s peak) by FLOPs per "
           "call\n", n, p->peak_flops / 1e9);
    printf("  %-14s %-10s", "kind", "phase");
    for (int c = 0; c < NC; c++) printf(" %12s", col[c]);
    printf("\n");
    double *v = xmalloc((size_t)(n ? n : 1) * sizeof *v);
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && !strcmp(ops[j].kind, ops[i].kind) && !strcmp(ops[j].phase, ops[i].phase)) j++;
        printf("  %-14s %-10s", ops[i].kind, ops[i].phase);
        for (int c = 0; c < NC; c++) {
            int k = 0;
            for (int q = i; q < j; q++) {
                int dec = ops[q].flops < 1e6 ? 0 : (int)floor(log10(ops[q].flops)) - 5;
                if (dec > NC - 1) dec = NC - 1;
                if (dec == c && ops[q].median_s > 0) v[k++] = ops[q].flops / ops[q].median_s;
            }
            if (!k) {
                printf(" %12s", "-");
                continue;
            }
            qsort(v, (size_t)k, sizeof *v, cmp_double);
            double med = stats_quantile(v, k, 0.5);
            char cell[32];
            snprintf(cell, sizeof cell, "%.1f (%.0f%%)", med / 1e9,
                     p->peak_flops > 0 ? 100 * med / p->peak_flops : 0);
            printf(" %12s", cell);
        }
        printf("\n");
        i = j;
    }
    free(v);
}

static void print_link_tables(const DbProfileLink *l, int nl, const DbProfileFit *f, int nf)
{
    printf("\nlinks: %d samples; t = alpha + bytes / bandwidth, fitted per collective and group\n", nl);
    printf("  %-15s %-6s %5s %10s %12s %9s %9s %4s\n", "collective", "level", "ranks", "alpha us",
           "bw GB/s", "rms err", "max err", "n");
    for (int i = 0; i < nf; i++)
        printf("  %-15s %-6s %5d %10.2f %12.2f %8.1f%% %8.1f%% %4d\n", f[i].collective, f[i].level,
               f[i].group_size, f[i].alpha_s * 1e6, f[i].beta_s > 0 ? 1 / f[i].beta_s / 1e9 : 0,
               100 * f[i].rms_rel_err, 100 * f[i].max_rel_err, f[i].n);
    /* bus bandwidth by size (every 16x), one table per level and group size */
    for (int i = 0; i < nl; i++) {
        bool seen = false;
        for (int q = 0; q < i && !seen; q++)
            seen = !strcmp(l[q].level, l[i].level) && l[q].group_size == l[i].group_size;
        if (seen) continue;
        printf("\n  busbw GB/s, %d ranks over %s:\n  %10s", l[i].group_size, l[i].level, "bytes");
        for (int c = 0; c < COLLECTIVE_COUNT; c++) printf(" %14s", COLLECTIVE_NAMES[c]);
        printf("\n");
        for (int64_t s = 4; s <= ((int64_t)1 << 32); s *= 16) {
            double bw[COLLECTIVE_COUNT];
            bool any = false;
            for (int c = 0; c < COLLECTIVE_COUNT; c++) {
                bw[c] = -1;
                /* the sample of this size (rounded down to whole blocks per rank) */
                for (int q = 0; q < nl; q++)
                    if (!strcmp(l[q].level, l[i].level) && l[q].group_size == l[i].group_size &&
                        !strcmp(l[q].collective, COLLECTIVE_NAMES[c]) && l[q].bytes <= s &&
                        l[q].bytes > s / 2)
                        bw[c] = l[q].busbw;
                any = any || bw[c] >= 0;
            }
            if (!any) continue;
            printf("  %10lld", (long long)s);
            for (int c = 0; c < COLLECTIVE_COUNT; c++) {
                if (bw[c] < 0) printf(" %14s", "-");
                else printf(" %14.3f", bw[c] / 1e9);
            }
            printf("\n");
        }
    }
}

/* The build that measured the profile, and whether it is this one. */
static void print_build(const DbProfile *p)
{
    cJSON *b = p->build_json ? cJSON_Parse(p->build_json) : NULL;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(b, "kernels"),
                *bl = cJSON_GetObjectItemCaseSensitive(b, "blas"),
                *t = cJSON_GetObjectItemCaseSensitive(b, "threads"),
                *r = cJSON_GetObjectItemCaseSensitive(b, "ranks_per_node");
    if (!cJSON_IsString(k)) {
        printf("  build: not recorded (a profile from before strata recorded builds)\n");
    } else {
        printf("  build: kernels %s (%s), %s; %d thread%s per rank, %d rank%s per node\n",
               k->valuestring, strcmp(k->valuestring, build_kernels_id()) == 0
                                   ? "this build" : "not this build",
               cJSON_IsString(bl) ? bl->valuestring : "BLAS unknown",
               cJSON_IsNumber(t) ? t->valueint : 0, cJSON_IsNumber(t) && t->valueint == 1 ? "" : "s",
               cJSON_IsNumber(r) ? r->valueint : 0, cJSON_IsNumber(r) && r->valueint == 1 ? "" : "s");
    }
    cJSON_Delete(b);
}

int cmd_profile_show(int argc, char **argv)
{
    Args a;
    Err err = {0};
    int rc;
    Db *db = cli_open_store(argc, argv, "profile show", "strata profile show ID [--db PATH] [--json]",
                            1, NULL, &a, &rc);
    if (!db) return rc;
    char *end;
    errno = 0;
    long long id = strtoll(a.pos[0], &end, 10);
    if (errno || *end || id < 1) {
        fprintf(stderr, "strata profile show: \"%s\" is not a profile id (a positive integer, "
                        "from strata profile list)\n", a.pos[0]);
        db_close(db);
        return EXIT_USAGE;
    }
    cli_settle_profiles(db);
    DbProfile p;
    DbProfileOp *ops = NULL;
    DbProfileLink *l = NULL;
    DbProfileFit *f = NULL;
    int nops = 0, nl = 0, nf = 0;
    rc = db_profile_get(db, id, &p, &ops, &nops, &l, &nl, &f, &nf, &err);
    db_close(db);
    if (rc) {
        fprintf(stderr, "strata: %s\n", err.msg);
        return 1;
    }
    if (args_has(&a, "json")) {
        ProfileSamples ps = { ops, nops, l, nl, f, nf };
        cJSON *o = view_profile(&p, &ps);
        char *s = cJSON_Print(o);
        puts(s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else {
        printf("profile %lld: %s%s, %s backend, %d rank%s, host %s\n", (long long)p.id, p.status,
               p.quick ? " (quick)" : "", p.backend, p.ranks, p.ranks == 1 ? "" : "s", p.host);
        printf("  started %s, finished %s\n", p.started, ago_or(p.finished));
        printf("  device: %s\n", p.device);
        printf("  peak f32 matmul %.1f GFLOP/s, memory %.1f GB/s, %.1f GiB%s%s\n",
               p.peak_flops / 1e9, p.mem_bw / 1e9, p.mem_bytes / (1 << 30), p.notes ? "; " : "",
               p.notes ? p.notes : "");
        print_build(&p);
        print_op_table(&p, ops, nops);
        if (nl) print_link_tables(l, nl, f, nf);
        else printf("\nlinks: none measured\n");
    }
    db_profile_samples_free(ops, nops, l, nl, f, nf);
    db_profile_free(&p);
    return 0;
}
