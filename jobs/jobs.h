/*
 * jobs.h — the work behind strata's commands, shared by the command line
 * and the REST API: both parse, call one of these, and print what it
 * returns, so the same request gives the same JSON from either.
 *
 * A job takes loaded objects (model, cluster, strategy) and a store path,
 * does the work, stores what it made, and returns the result with its JSON.
 */
#ifndef STRATA_JOBS_H
#define STRATA_JOBS_H

#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "costmodel/costmodel.h"
#include "db/db.h"
#include "ir/cluster.h"
#include "ir/err.h"
#include "ir/graph.h"
#include "ir/lower.h"
#include "ir/strategy.h"
#include "search/search.h"

/* Stores model, cluster and plan (ids are content hashes, so storing again
 * changes nothing but the plan's summary) and returns the plan's id. */
int job_store_plan(const char *db_path, const Graph *g, const Cluster *c, const Strategy *s,
                   const Plan *p, const cJSON *summary, char plan_id[17], Err *err);

/* The cost model to predict with: the analytical one, or a stored trained
 * one (its operator MLP, and its profile's link fits for the levels the
 * cluster shares with the profiled machine). */
typedef struct {
    OpModel *ops;
    LinkModel *links;
    char cost_model_id[17];        /* "" for the analytical model */
    int64_t profile_id;            /* 0: none */
    char op_model[160], link_model[200];
    /* its measured error, as a fraction: the trained model's held-out MAPE,
     * or for the analytical model the mean error of the Megatron-LM Table 1
     * check (docs/costmodel.md) */
    double error;
    /* not empty when the profile behind it was measured by another build of
     * the kernels, or does not say (executor/build.h) */
    char warning[1024];
} Predictor;

/* costmodel_id NULL: the analytical op model. Link fits come from the cost
 * model's profile, or from profile_id when given (> 0). An unknown id, or a
 * stored model this build cannot read, is an error naming it. Caller frees
 * with predictor_free. */
int predictor_load(const char *db_path, const char *costmodel_id, int64_t profile_id,
                   const Cluster *c, Predictor *pd, Err *err);
void predictor_free(Predictor *pd);

typedef struct {
    const char *db_path;           /* where to store plan and estimate; NULL: nothing stored */
    const Predictor *pred;         /* NULL: analytical */
    bool trace;                    /* keep the timeline (for an SVG) */
} EstimateOpts;

typedef struct {
    Plan *plan;
    SimResult sim;
    double lower_s, simulate_s;    /* wall time of the two parts */
    char plan_id[17];              /* "" when not stored */
    int64_t estimate_id;           /* 0 when not stored */
    cJSON *json;                   /* the estimate as printed and stored */
} Estimate;

/* Lowers and simulates one strategy, and stores the plan with its
 * prediction. An infeasible plan is an answer (sim.feasible false), not an
 * error. Caller frees with estimate_free. */
int job_estimate(const Graph *g, const Cluster *c, const Strategy *s, const EstimateOpts *o,
                 Estimate *e, Err *err);
void estimate_free(Estimate *e);

/* A stored plan with its model, cluster and strategy loaded. */
typedef struct {
    DbPlan row;
    Graph *g;
    Cluster *c;
    Strategy *s;
} LoadedPlan;

/* By id or unique prefix; 1 when no plan has it (err says so), -1 when it
 * does not load. Caller frees with loaded_plan_free. */
int job_load_plan(Db *db, const char *id, LoadedPlan *lp, Err *err);
void loaded_plan_free(LoadedPlan *lp);

/* ----------------------------------------------------------------------------
 * Validation: predicted against measured, in a closed loop on this machine.
 *
 * Each plan of a suite is predicted (job_estimate, on the profile's cluster
 * with the cost model) and run by the executor (`strata run`, as a child
 * process, with the profile's BLAS threads per rank); both are stored, and
 * the step time (median over the steps after the first) and the peak
 * memory (the executor's high-water mark, the largest over ranks) are
 * compared. */

extern const char *const SUITE_DEFAULT;     /* the default suite's JSON */

typedef struct {
    char name[64];
    int world;
    char plan_id[17], run_id[17];
    int64_t estimate_id;
    double predicted_s, measured_s;
    double predicted_mem, measured_mem;
    bool feasible;
    int rounds;                    /* runs measured so far (the measured step: their median) */
    char error[1100];              /* "" when run and predicted */
} ValidateRow;

typedef struct {
    const char *db_path;           /* the store: profile and cost model from it, results to it */
    const char *suite;             /* "default" (NULL too) or a suite file */
    int np;                        /* plans of at most this many ranks (default 2) */
    int steps;                     /* steps per run (default 6; the first is warm-up) */
    int repeats;                   /* runs per plan, in rounds over the suite (default 1, at
                                      most 63); the measured step is their median */
    double timeout_s;              /* a run still going after this long is stopped (default 600) */
    int64_t profile_id;            /* 0: the newest complete profile */
    const char *costmodel_id;      /* NULL: the newest trained on that profile, else analytic */
    const char *strata_bin;        /* the strata executable that runs the plans */
    /* after each plan's prediction when it failed, and after each of its
     * runs (progress); row->error says when it failed */
    void (*progress)(void *ctx, int i, int n, const ValidateRow *row);
    void *ctx;
} ValidateOpts;

typedef struct {
    int64_t id;                    /* the stored validation */
    int64_t profile_id;
    char cost_model_id[17];        /* "" for the analytical model */
    char op_model[160];
    char warning[1024];             /* the predictor's (Predictor.warning) */
    int nrows;
    ValidateRow *rows;
    int nok;                       /* rows with both figures */
    double mape_time, mape_mem, kendall_tau;
    cJSON *json;
} Validation;

/* Runs the suite. A plan that fails to run or predict is reported in its
 * row and left out of the figures; the job fails only when nothing could be
 * compared or the store cannot be written. Caller frees with
 * validation_free. */
int job_validate(const ValidateOpts *o, Validation *v, Err *err);
void validation_free(Validation *v);

/* ----------------------------------------------------------------------------
 * The closed loop (jobs/calibrate.c): fits a trained op model's calibration
 * (costmodel.h opmodel_calibration) to the runs `strata validate` stored on
 * profile_id's machine, and says how much it helps. */
typedef struct {
    double calib[3];               /* compute scale, comm scale, seconds per instruction */
    int nruns;                     /* measured plans it learned from */
    double mape_before, mape_after;    /* step time over those plans */
    double mape_loo;               /* each plan predicted by a fit on the others */
} Calibration;

/* blob: the trained model's weights (opmodel_save). Fails, saying what to
 * run, with fewer than 3 measured plans. */
int job_calibrate(const char *db_path, int64_t profile_id, const uint8_t *blob, size_t nblob,
                  Calibration *cal, Err *err);

/* Kendall's tau-b of two series (ties allowed); 0 when n < 2. */
double kendall_tau(const double *a, const double *b, int n);

/* ----------------------------------------------------------------------------
 * Search (jobs/search.c): search_run with everything kept. The search gets a
 * row in the store before it starts; each event goes to the store (and the
 * log, and the caller) as it happens; at the end the best plan and the best
 * baseline are stored with their estimates and the row says how the search
 * ended and what it found. A search that finds no feasible plan is stored too ("no plan") and
 * is not an error. */
typedef struct {
    const char *db_path;           /* required */
    const Predictor *pred;         /* NULL: analytical */
    SearchOpts search;             /* its event and ctx are the job's own */
    const char *budget_text;       /* the budget as asked, stored with the search */
    const char *costmodel_id;      /* the cost model asked for (pred's), stored with the
                                      search's options; NULL: the latest or analytical */
    const char *policy_from;       /* rl: start from the policy this stored search trained */
    const char *row_id;            /* the search's row exists already ("queued", stored with
                                      its model and cluster by job_search_queue): run it */
    int first_seq;                 /* events stored before (a resumed search's): the new
                                      ones are numbered after them */
    FILE *log;                     /* each event as a JSON line; NULL: none */
    void (*event)(void *ctx, const cJSON *ev);
    void *ctx;
} SearchJobOpts;

typedef struct {
    char id[17];
    SearchResult r;
    char plan_id[17];              /* the best plan as stored; "" without one */
    char baseline_plan_id[17];     /* the best baseline's, stored too; "" without one */
    cJSON *json;                   /* search_result_json plus the ids */
} SearchJob;

int job_search(const Graph *g, const Cluster *c, const SearchJobOpts *o, SearchJob *j, Err *err);
/* A budget as people write it: "30s", "2m", "1h" (seconds) or "20000evals". */
int job_parse_budget(const char *s, double *secs, long *evals, Err *err);
/* Checks a search and stores its row as "queued" (with its model and
 * cluster) to be run later by job_search with row_id; the id into id. */
int job_search_queue(const Graph *g, const Cluster *c, const SearchJobOpts *o, char id[17],
                     Err *err);
void search_job_free(SearchJob *j);

/* Stores model and cluster (content-hashed, so again is a no-op); their ids. */
int job_store_model_cluster(const char *db_path, const Graph *g, const Cluster *c,
                            char model_out[17], char cluster_out[17], Err *err);

/* ----------------------------------------------------------------------------
 * Export (jobs/export.c): a stored plan as a framework's configuration. */
typedef enum { EXPORT_MEGATRON, EXPORT_DEEPSPEED, EXPORT_TORCHTITAN } ExportTarget;
int export_target_parse(const char *s, ExportTarget *t);       /* -1: unknown */
const char *export_target_name(ExportTarget t);

typedef struct {
    char plan_id[17];
    ExportTarget target;
    const char *format;            /* "args" (Megatron-LM), "json" (DeepSpeed), "toml" (torchtitan) */
    char *text;                    /* the configuration; NULL when refused */
    char **unmapped;               /* what the framework cannot express (refused when any) */
    int nunmapped;
    char **notes;                  /* what the launcher must do beyond the configuration */
    int nnotes;
    /* refused: the closest plan it can express, stored, and both predicted
     * (analytical model; INFINITY: does not fit) */
    char closest_plan_id[17];
    double step_s, closest_step_s;
    char closest_why[420];         /* when there is none */
} Export;

/* 1 when no plan has the id; a refusal is a result, not an error. Caller
 * frees with export_free. */
int job_export(const char *db_path, const char *plan_id, ExportTarget to, Export *x, Err *err);
cJSON *export_json(const Export *x);
void export_free(Export *x);

/* ----------------------------------------------------------------------------
 * Views (jobs/views.c): the one JSON form of each stored object, printed by
 * `--json` and served by the REST API. full: with the object's own JSON
 * (model, cluster, strategy and summary, result, measurements); without it,
 * the row as a list shows it. Caller deletes. */
cJSON *view_model(const DbModel *m, bool full);
cJSON *view_cluster(const DbCluster *c, bool full);
/* A plan: with its latest prediction (step_time_s, feasible) where the
 * store db holds one; full adds every prediction and the search that
 * found it, with its baselines. */
cJSON *view_plan(Db *db, const DbPlan *p, bool full);
cJSON *view_estimate(const DbEstimate *e);
cJSON *view_search(const DbSearch *x, bool full);
cJSON *view_run(const DbRun *r, const DbRunStep *steps, int nsteps, bool full);

/* A profile's samples and fits, as db_profile_get returns them. */
typedef struct {
    const DbProfileOp *ops;
    int nops;
    const DbProfileLink *links;
    int nlinks;
    const DbProfileFit *fits;
    int nfits;
} ProfileSamples;
/* s NULL: the row only (a list's form). */
cJSON *view_profile(const DbProfile *p, const ProfileSamples *s);

#endif
