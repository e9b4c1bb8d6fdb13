/*
 * profile.h — measure what operators and links cost on the hardware at hand.
 *
 * The profiler times the executor's own kernels and collectives, so what it
 * measures is what a plan will run:
 *   device  peak f32 matmul rate (SGEMM, the kernel every contraction uses)
 *           and streamed memory bandwidth, with the device's name and memory;
 *   ops     every op kind and phase over the shard shapes of the zoo models
 *           under the classic strategies (taken from the lowering itself),
 *           plus random shapes around them;
 *   links   every collective of the comm table over message sizes 4 B .. 256
 *           MiB and the group sizes at hand, measured as nccl-tests does.
 * Samples go to the caller through callbacks (the CLI stores them in batches);
 * nothing here touches the database.
 *
 * Legend: W = ranks of the job, g = group size, t = BLAS threads per device.
 */
#ifndef STRATA_PROFILE_H
#define STRATA_PROFILE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include "db/db.h"
#include "executor/comm.h"
#include "ir/err.h"

/* --- progress on stderr ---------------------------------------------------- */
/* A bar with the estimated time left when stderr is a terminal; otherwise a
 * line at every tenth of the work, so logs stay short. Work is counted in
 * estimated seconds, so the estimate of time left follows the real pace. */
typedef struct {
    const char *phase;
    double total, done;         /* weights */
    double t0, last;            /* start, last print (monotonic seconds) */
    int tenth;                  /* last tenth printed (no terminal) */
    bool tty, quiet;
} Progress;

void progress_begin(Progress *p, const char *phase, double total, bool quiet);
/* Adds w to the work done; `what` names the current item (may be NULL). */
void progress_add(Progress *p, double w, const char *what);
/* Says how long the phase took, or that it stopped early. */
void progress_end(Progress *p, bool stopped);

double prof_now(void);                 /* monotonic seconds */

/* --- device ---------------------------------------------------------------- */
typedef struct {
    char name[256];             /* "Intel(R) Xeon(R) ... (1 of 2 cores, OpenBLAS SkylakeX)" */
    char short_name[64];        /* for the cluster JSON: "xeon-8481c-core" */
    int threads;                /* t */
    double peak_flops;          /* best SGEMM FLOP/s seen */
    int64_t peak_n;             /* square size that reached it */
    double mem_bw;              /* bytes/s, STREAM triad counting (3 words per element) */
    double mem_bytes;           /* memory per device: RAM / devices per node */
} ProfDevice;

/* Measures this machine's CPU as devices_per_node devices, each with
 * cores/devices_per_node BLAS threads (as `strata run` gives each rank). */
int prof_device_cpu(ProfDevice *d, int devices_per_node, bool quick, Err *err);
/* Measures d's rates again (the SGEMM at peak_n, the triad) into *flops and
 * *bw, and raises d's peak_flops and mem_bw to them where they are higher:
 * load on the machine only lowers a rate, so the best of measurements taken
 * minutes apart is what the device does with the machine to itself. */
void prof_device_again(ProfDevice *d, bool quick, double *flops, double *bw);

/* --- ops ------------------------------------------------------------------- */
typedef struct OpGrid OpGrid;

typedef struct {
    bool quick;
    double budget_s;            /* planned time for the whole grid */
    const char *kinds;          /* comma-separated op kinds to keep ("matmul,adam"); NULL: all */
    uint64_t seed;              /* random shapes */
} OpGridOpts;

/* Builds the grid: shard shapes of zoo models (lowered under dp, Megatron
 * tensor parallelism with and without sequence parallelism, GPipe
 * micro-batches) deduplicated, random shapes around them, every phase that
 * exists (fwd, bwd_data, bwd_weight; update for the optimizers), each with an
 * estimated time from the device's peaks; cases estimated too slow or too big
 * for one measurement are left out, and the rest thinned evenly within each
 * kind and phase to fit the budget. Caller frees with opgrid_free. */
OpGrid *opgrid_new(const OpGridOpts *o, const ProfDevice *d, Err *err);
void opgrid_free(OpGrid *g);
int opgrid_count(const OpGrid *g);
double opgrid_estimate(const OpGrid *g, int i);   /* seconds */
const char *opgrid_label(const OpGrid *g, int i); /* "matmul bwd_weight" */
/* Each case is timed in opgrid_rounds() rounds, meant to lie apart: every
 * case in round 0, then every case in round 1, and so on, so a spell of load
 * on the machine moves one round of a case, not its time. */
int opgrid_rounds(const OpGrid *g);
/* Times round `round` of case i (a warm-up where it needs one, then repeated
 * runs); each round once, in order. */
int opgrid_measure(OpGrid *g, int i, int round, Err *err);
/* Case i over the rounds timed so far into *out: its time the median of the
 * rounds' medians, p10 and p90 over every run, widened to hold it where
 * rounds of unequal runs put it outside (strings owned by the grid,
 * valid until the next call or opgrid_free). 1 when no round was timed. */
int opgrid_sample(OpGrid *g, int i, DbProfileOp *out);

/* --- links ----------------------------------------------------------------- */
typedef struct {
    bool quick;
    int64_t max_bytes;          /* largest message (power of two); sizes 4 B, 8 B, ... */
    const char *level_inner;    /* name of the innermost level ("core", "gpu") */
    volatile sig_atomic_t *stop;    /* set asynchronously: stop after the current size */
    /* Called on rank 0 after each collective's sweep over one group: the
     * samples of that sweep, all or nothing. Nonzero return stops with err. */
    int (*sink)(void *ctx, const DbProfileLink *s, int n, Err *err);
    void *ctx;
    bool quiet;                 /* no progress bar */
} LinkOpts;

/* Every collective over every group size at every topology level present
 * (ranks on one host form the innermost level; one rank per host the next),
 * one group at a time while the other ranks wait. Every rank of the world
 * calls it. Returns 0 (also when stopped: *stopped says so), -1 with err
 * when a collective fails or returns a wrong result. */
int prof_links(Comm *c, const LinkOpts *o, bool *stopped, Err *err);

#endif
