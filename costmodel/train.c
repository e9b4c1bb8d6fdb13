/*
 * train.c — an op-time MLP from a profile's samples, with an honest test.
 *
 * A sample is one (kind, phase, shape) the profiler timed. Samples are
 * grouped by shape (kind and letter sizes; every phase of a shape in one
 * group), because the phases of one shape share almost everything and a
 * test that held out the forward but trained on the backward of the same
 * shape would measure memory, not generalisation. About 20% of each kind's
 * shapes are held out whole as the test set; of the rest, ~15% of each
 * kind's shapes stop the training early (validation); the net learns on
 * what remains. Which shape goes where depends only on the seed and the
 * shape itself (a seeded hash), not on the order of the samples.
 *
 * The test compares three predictors on the same held-out samples: the MLP
 * (as stored: the blob is loaded back before it is evaluated), the
 * analytical model and the plain roofline.
 *
 * Legend: t = a sample's median seconds, y = log(t / roofline), MAPE =
 * mean |predicted - t| / t.
 */
#include "costmodel/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ir/util.h"

/* ----------------------------------------------------------------------------
 * Samples */

int cm_phase_parse(const char *s, Phase *out)
{
    if (!s) return -1;
    for (int p = 0; p < PH_COUNT; p++)
        if (strcmp(s, phase_name((Phase)p)) == 0) {
            *out = (Phase)p;
            return 0;
        }
    return -1;
}

void op_device_from_profile(const DbProfile *p, OpDevice *d)
{
    memset(d, 0, sizeof *d);
    for (int t = 0; t < DT_COUNT; t++) d->peak_flops[t] = p->peak_flops;
    d->mem_bw = p->mem_bw;
    d->gpu = p->backend && strcmp(p->backend, "cuda") == 0;
}

int opshape_from_sample(const DbProfileOp *s, OpShape *x, Err *err)
{
    memset(x, 0, sizeof *x);
    if (cm_kind_parse(s->kind, &x->kind))
        return err_set(err, "kind \"%s\" is not an op kind or optimizer", s->kind ? s->kind : "");
    if (cm_phase_parse(s->phase, &x->phase))
        return err_set(err, "phase \"%s\" is not one of fwd, bwd_data, bwd_weight, update",
                       s->phase ? s->phase : "");
    if (!s->dtype || dtype_parse(s->dtype, &x->dtype))
        return err_set(err, "dtype \"%s\" is unknown", s->dtype ? s->dtype : "");
    if (!(s->flops >= 0) || !(s->bytes >= 0) || !isfinite(s->flops) || !isfinite(s->bytes))
        return err_set(err, "flops %g or bytes %g is not a finite count", s->flops, s->bytes);
    x->flops = s->flops;
    x->bytes = s->bytes;
    cJSON *j = s->shape_json ? cJSON_Parse(s->shape_json) : NULL;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return err_set(err, "shape_json is not a JSON object");
    }
    int rc = -1;
    if (x->kind >= OP_KIND_COUNT) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "n");
        if (!cJSON_IsNumber(n) || !(n->valuedouble >= 1) || n->valuedouble > 9e15) {
            err_set(err, "shape_json.n: expected the element count (a positive integer)");
            goto done;
        }
        x->size[0] = (int64_t)n->valuedouble;
        rc = 0;
        goto done;
    }
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(j, "spec");
    const cJSON *sizes = cJSON_GetObjectItemCaseSensitive(j, "sizes");
    if (!cJSON_IsString(spec)) {
        err_set(err, "shape_json.spec: expected the op's index spec (\"bsh,hf->bsf\")");
        goto done;
    }
    if (!cJSON_IsObject(sizes)) {
        err_set(err, "shape_json.sizes: expected an object of letter sizes");
        goto done;
    }
    for (const char *c = spec->valuestring; *c; c++) {
        if (*c < 'a' || *c > 'z') continue;
        int l = *c - 'a';
        if (x->letters >> l & 1) continue;
        char key[2] = { *c, 0 };
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(sizes, key);
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1) || v->valuedouble > 9e15) {
            err_set(err, "shape_json.sizes.%s: expected the size of letter %s of \"%s\"", key, key,
                    spec->valuestring);
            goto done;
        }
        x->letters |= 1u << l;
        x->size[l] = (int64_t)v->valuedouble;
    }
    if (!x->letters) {
        err_set(err, "shape_json.spec \"%s\" has no letters", spec->valuestring);
        goto done;
    }
    const cJSON *causal = cJSON_GetObjectItemCaseSensitive(j, "causal");
    if (causal && !cJSON_IsBool(causal)) {
        err_set(err, "shape_json.causal: expected true or false");
        goto done;
    }
    if (x->kind == OP_SOFTMAX && cJSON_IsTrue(causal)) {
        /* masked: its last two input letters s and t (the graph checks) */
        const char *sp = spec->valuestring, *end = strstr(sp, "->");
        size_t n = end ? (size_t)(end - sp) : strlen(sp);
        if (n < 2 || sp[n - 2] < 'a' || sp[n - 2] > 'z' || sp[n - 1] < 'a' || sp[n - 1] > 'z') {
            err_set(err, "shape_json.spec \"%s\": a causal softmax needs two letters to mask", sp);
            goto done;
        }
        opshape_set_causal(x, x->size[sp[n - 2] - 'a'], x->size[sp[n - 1] - 'a']);
    }
    /* operand letters: "bsh,hf->bsf" */
    {
        const char *sp = spec->valuestring, *arrow = strstr(sp, "->"), *comma = strchr(sp, ',');
        char buf[64];
        if (arrow) {
            x->out = cm_letter_mask(arrow + 2);
            size_t n0 = (size_t)((comma && comma < arrow ? comma : arrow) - sp);
            snprintf(buf, sizeof buf, "%.*s", (int)(n0 < 63 ? n0 : 63), sp);
            x->in0 = cm_letter_mask(buf);
            if (comma && comma < arrow) {
                const char *c2 = strchr(comma + 1, ',');
                size_t n1 = (size_t)((c2 && c2 < arrow ? c2 : arrow) - (comma + 1));
                snprintf(buf, sizeof buf, "%.*s", (int)(n1 < 63 ? n1 : 63), comma + 1);
                x->in1 = cm_letter_mask(buf);
            }
        }
    }
    rc = 0;
done:
    cJSON_Delete(j);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Shapes and the split */

static uint64_t splitmix(uint64_t x) { return splitmix64(&x); }

static uint64_t fnv(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The identity of a sample's shape: the kind and the shape JSON without
 * where it was first seen ("from") and the op's name ("op"), so the same
 * sizes met in two models are one shape. NULL when unreadable. */
static char *shape_key(const DbProfileOp *s)
{
    int kind;
    if (cm_kind_parse(s->kind, &kind) || !s->shape_json) return NULL;
    cJSON *j = cJSON_Parse(s->shape_json);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return NULL;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "from");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "op");
    char *t = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!t) return NULL;
    size_t n = strlen(s->kind) + strlen(t) + 2;
    char *key = xmalloc(n);
    snprintf(key, n, "%s|%s", s->kind, t);
    cJSON_free(t);
    return key;
}

typedef struct {
    const char *key;
    int kind;
    uint64_t h;                     /* seeded hash: the order of shapes within a kind */
    int set;                        /* 0 train, 1 test, 2 validation */
} Group;

static int cmp_group(const void *a, const void *b)
{
    const Group *x = a, *y = b;
    if (x->kind != y->kind) return x->kind < y->kind ? -1 : 1;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    return strcmp(x->key, y->key);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void costmodel_split(const DbProfileOp *ops, int n, uint64_t seed, double holdout, int member,
                     int8_t *out)
{
    if (!(holdout > 0 && holdout < 1)) holdout = 0.2;
    char **keys = xcalloc((size_t)(n ? n : 1), sizeof *keys);
    const char **uniq = xcalloc((size_t)(n ? n : 1), sizeof *uniq);
    int nu = 0;
    for (int i = 0; i < n; i++) {
        OpShape x;
        keys[i] = opshape_from_sample(&ops[i], &x, NULL) == 0 ? shape_key(&ops[i]) : NULL;
        if (keys[i]) uniq[nu++] = keys[i];
    }
    qsort(uniq, (size_t)nu, sizeof *uniq, cmp_str);
    int ng = 0;
    for (int i = 0; i < nu; i++)
        if (i == 0 || strcmp(uniq[i], uniq[i - 1])) uniq[ng++] = uniq[i];
    Group *g = xcalloc((size_t)(ng ? ng : 1), sizeof *g);
    for (int i = 0; i < ng; i++) {
        char kind[32];
        size_t kl = strcspn(uniq[i], "|");
        snprintf(kind, sizeof kind, "%.*s", (int)(kl < 31 ? kl : 31), uniq[i]);
        g[i].key = uniq[i];
        if (cm_kind_parse(kind, &g[i].kind)) g[i].kind = CM_KIND_COUNT;
        g[i].h = splitmix(seed ^ fnv(uniq[i]));
    }
    qsort(g, (size_t)ng, sizeof *g, cmp_group);
    /* per kind: the first shapes in hash order are the test; of the rest,
     * the member's own hash picks the validation shapes (each member of an
     * ensemble stops on other shapes, so together they learn from all); a
     * kind with few shapes keeps them for training */
    uint64_t *h2 = xcalloc((size_t)(ng ? ng : 1), sizeof *h2);
    for (int a = 0; a < ng;) {
        int b = a;
        while (b < ng && g[b].kind == g[a].kind) b++;
        int k = b - a;
        int ntest = (int)floor(holdout * k + 0.5);
        if (ntest == 0 && k >= 3) ntest = 1;
        int nval = (int)floor(0.15 * (k - ntest));
        for (int i = 0; i < k; i++) {
            g[a + i].set = i < ntest ? 1 : 0;
            h2[i] = splitmix(splitmix(seed + 0x51ed27ULL * (uint64_t)(member + 1)) ^ fnv(g[a + i].key));
        }
        /* the nval smallest member hashes among the non-test shapes */
        for (int v = 0; v < nval; v++) {
            int best = -1;
            for (int i = ntest; i < k; i++)
                if (g[a + i].set == 0 && (best < 0 || h2[i] < h2[best])) best = i;
            g[a + best].set = 2;
        }
        a = b;
    }
    free(h2);
    for (int i = 0; i < n; i++) {
        out[i] = -1;
        if (!keys[i]) continue;
        Group probe = { .key = keys[i], .h = splitmix(seed ^ fnv(keys[i])) };
        if (cm_kind_parse(ops[i].kind, &probe.kind)) continue;
        const Group *hit = bsearch(&probe, g, (size_t)ng, sizeof *g, cmp_group);
        if (hit) out[i] = (int8_t)hit->set;
    }
    for (int i = 0; i < n; i++) free(keys[i]);
    free(keys);
    free(uniq);
    free(g);
}

/* ----------------------------------------------------------------------------
 * Training */

typedef struct {
    const TrainOpts *o;
    int base, total;
    bool stopped;                   /* the caller's callback asked to stop */
} Prog;

static int on_epoch(void *ctx, int epoch, double train_loss, double val_loss)
{
    Prog *p = ctx;
    if (!p->o->progress) return 0;
    int rc = p->o->progress(p->o->ctx, p->base + epoch, p->total, train_loss, val_loss);
    if (rc) p->stopped = true;
    return rc;
}

typedef struct {
    int n, held;
    double ape[3];                  /* sums of |p - t| / t: mlp, analytic, roofline */
    double ae[3], t;                /* sums of |p - t| and of t (time-weighted error) */
} KindStat;

static void add_num_or_null(cJSON *o, const char *k, double sum, int n)
{
    if (n > 0) cJSON_AddNumberToObject(o, k, sum / n);
    else cJSON_AddNullToObject(o, k);
}

/* The nets and their training. Chosen on this machine's quick profiles
 * (docs/costmodel.md: four profiles, three seeds each): the width and the
 * number of nets trade held-out error against prediction time (each net of
 * 32 costs ~0.4 us a prediction). Eight nets instead of three, each
 * allowed 150 epochs without progress instead of 60, took the mean
 * held-out error from 15.8% to 14.1%; twice the width gained less per
 * microsecond, and other step sizes and weight decays moved it by less
 * than its spread over seeds. The loss is Huber's with a delta of 0.01
 * standardised units, in effect the absolute error of log(t / roofline),
 * which is what MAPE weighs (|log r| ~ |r - 1|); the squared error let a
 * few noisy or odd samples pull every net: on this machine's bench
 * profiles, seeds 1-3, held-out MAPE 9.3, 10.0, 10.0% -> 8.5, 8.8, 8.5%
 * and 8.9, 9.9, 8.5% -> 8.4, 9.2, 7.9% (deltas of 0.03 to 0.25 scored
 * between; nets 48 or 64 wide no better with it). */
#define NNETS 8
#define NSTAGES 3
static const double STAGE_LR[NSTAGES] = { 3e-3, 1e-3, 3e-4 };
static const int HIDDEN[] = { 32, 32 };
#define NHIDDEN 2
#define ACT MLP_RELU
#define WEIGHT_DECAY 1e-5
#define PATIENCE 150
#define BATCH 32
#define HUBER 0.01

/* How much a sample's loss counts: 1 / (1 + ln(p90 / p10) / SPREAD_SCALE),
 * 1 for one timed without spread (or without p10 and p90), 1/2 for one
 * whose runs spread 22% (ln 1.22 = 0.2), 1/4 for 82%. With an absolute
 * error the best weight of a sample is the inverse of its noise's scale,
 * and the spread of its runs is the one measure of that a profile keeps:
 * a case timed while the machine was busy, or whose kernel takes two paths,
 * teaches the nets less. Six full profiles of an AMD EPYC (OpenBLAS Zen),
 * held-out MAPE over seeds 1-3 without and with (scales 0.1 and 0.4 scored
 * between, a squared form 1 / (1 + (s / 0.2)^2) worse): 7.84, 8.89, 8.26
 * -> 7.74, 8.74, 7.74%; 7.96, 8.69, 8.19 -> 8.13, 8.63, 7.63%; 11.1, 11.2,
 * 12.3 -> 11.1, 10.9, 12.0%; 9.68, 10.08, 9.35 -> 9.53, 10.01, 9.10%;
 * 9.82, 10.49, 11.09 -> 9.75, 10.29, 11.10%; 9.13, 9.46, 8.98 -> 8.62,
 * 9.89, 8.80%: lower in 14 of the 18. */
#define SPREAD_SCALE 0.2

static double sample_weight(const DbProfileOp *s)
{
    double spread = s->p10_s > 0 && s->p90_s > s->p10_s ? log(s->p90_s / s->p10_s) : 0;
    return isfinite(spread) ? 1 / (1 + spread / SPREAD_SCALE) : 1;
}

int costmodel_train(const OpDevice *d, const DbProfileOp *ops, int n, const TrainOpts *opts,
                    TrainResult *r, Err *err)
{
    memset(r, 0, sizeof *r);
    r->heldout_mape = -1;
    TrainOpts o = opts ? *opts : (TrainOpts){ 0 };
    if (!(o.holdout > 0 && o.holdout < 1)) o.holdout = 0.2;
    if (o.max_epochs <= 0) o.max_epochs = 400;
    if (n < 1 || !ops) return err_set(err, "no op samples to train on");
    if (!(d->mem_bw > 0) || !(d->peak_flops[DT_F32] > 0))
        return err_set(err, "the device has no peak FLOP/s or memory bandwidth (the profile did "
                       "not measure them)");

    double t0 = now_s();
    int8_t *set = xmalloc((size_t)n);
    costmodel_split(ops, n, o.seed, o.holdout, 0, set);
    OpShape *xs = xcalloc((size_t)n, sizeof *xs);
    int nrows = 0, nskip = 0, ntest = 0, nval = 0;
    uint32_t covered = 0;
    for (int i = 0; i < n; i++) {
        if (set[i] >= 0 && (opshape_from_sample(&ops[i], &xs[i], NULL) || !(ops[i].median_s > 0) ||
                            !isfinite(ops[i].median_s)))
            set[i] = -1;
        if (set[i] < 0) nskip++;
        else if (set[i] == 1) ntest++;
        else {
            nrows++;
            nval += set[i] == 2;
            covered |= 1u << xs[i].kind;
        }
    }
    Mlp *nets[OPMODEL_MAX_NETS] = { 0 };
    int nnets = 0;
    double *X = NULL, *Y = NULL;
    uint8_t *vmask = NULL;
    int *rowidx = NULL;
    double *rw = NULL;
    int8_t *mset = NULL;
    OpModel *m = NULL;
    cJSON *mj = NULL;
    int rc = -1;
    if (nrows < 2) {
        err_set(err, "%d usable op samples outside the test set (of %d; %d unreadable): too few "
                "to train on", nrows, n, nskip);
        goto done;
    }

    /* the rows the net sees: training and validation */
    X = xmalloc(sizeof(double) * (size_t)nrows * OPMODEL_NFEAT);
    Y = xmalloc(sizeof(double) * (size_t)nrows);
    vmask = xcalloc((size_t)nrows, 1);
    rowidx = xmalloc(sizeof(int) * (size_t)nrows);
    mset = xmalloc((size_t)n);
    rw = xmalloc(sizeof(double) * (size_t)nrows);
    for (int i = 0, k = 0; i < n; i++) {
        if (set[i] != 0 && set[i] != 2) continue;
        opmodel_features(d, &xs[i], X + (size_t)k * OPMODEL_NFEAT);
        Y[k] = log(ops[i].median_s / opmodel_roofline_floor(d, &xs[i]));
        rw[k] = sample_weight(&ops[i]);
        rowidx[k++] = i;
    }
    /* the scaling every net shares: mean and std over the rows outside the test */
    double xmean[OPMODEL_NFEAT] = { 0 }, xstd[OPMODEL_NFEAT] = { 0 }, ymean = 0, ystd = 0;
    for (int k = 0; k < nrows; k++) {
        for (int c = 0; c < OPMODEL_NFEAT; c++) xmean[c] += X[(size_t)k * OPMODEL_NFEAT + c] / nrows;
        ymean += Y[k] / nrows;
    }
    for (int k = 0; k < nrows; k++) {
        for (int c = 0; c < OPMODEL_NFEAT; c++) {
            double v = X[(size_t)k * OPMODEL_NFEAT + c] - xmean[c];
            xstd[c] += v * v / nrows;
        }
        ystd += (Y[k] - ymean) * (Y[k] - ymean) / nrows;
    }
    /* a column constant up to rounding (the device's peaks, the same for
     * every sample, computed along different paths) is constant: scaled by
     * 1, not by the inverse of its rounding noise, which the fast forward
     * pass, folding the scaling into the first layer, could not survive */
    for (int c = 0; c < OPMODEL_NFEAT; c++) {
        double sd = sqrt(xstd[c]);
        xstd[c] = sd > 1e-9 * fmax(1, fabs(xmean[c])) ? sd : 1;
    }
    ystd = ystd > 1e-24 ? sqrt(ystd) : 1;

    /* Adam at three falling step sizes, each stage from the best weights of
     * the one before: the plateau of one step size is left by the next */
    Prog pg = { &o, 0, NNETS * NSTAGES * o.max_epochs, false };
    int epochs = 0;
    for (int e = 0; e < NNETS && !pg.stopped; e++) {
        nets[e] = mlp_new(OPMODEL_NFEAT, HIDDEN, NHIDDEN, 1, ACT, o.seed * 7919 + (uint64_t)e, err);
        if (!nets[e]) goto done;
        nnets++;
        mlp_set_scaling(nets[e], xmean, xstd, &ymean, &ystd);
        /* this member's validation shapes (the test set is the same for all) */
        costmodel_split(ops, n, o.seed, o.holdout, e, mset);
        int mval = 0;
        for (int k = 0; k < nrows; k++) mval += vmask[k] = mset[rowidx[k]] == 2;
        MlpTrainResult tr = { 0 };
        for (int s = 0; s < NSTAGES; s++) {
            MlpTrainOpts to = { .adam = { .lr = STAGE_LR[s], .weight_decay = WEIGHT_DECAY },
                                .epochs = o.max_epochs, .batch = BATCH,
                                .val_mask = mval > 0 ? vmask : NULL, .patience = PATIENCE,
                                .huber = HUBER, .row_weight = rw,
                                .seed = o.seed * 7919 + (uint64_t)(e * NSTAGES + s),
                                .progress = on_epoch, .ctx = &pg };
            if (mlp_train(nets[e], X, Y, nrows, &to, &tr, err)) goto done;
            epochs += tr.epochs;
            pg.base = epochs;
            if (pg.stopped) break;
        }
    }
    OpNets spec = { .nets = nets, .nnets = nnets, .hidden = HIDDEN, .nhidden = NHIDDEN, .act = ACT,
                    .xmean = xmean, .xstd = xstd, .ymean = ymean, .ystd = ystd,
                    .covered = covered };
    if (opmodel_save(&spec, &r->blob, &r->nblob, err)) goto done;
    /* evaluate the model as stored */
    m = opmodel_load(r->blob, r->nblob, err);
    if (!m) goto done;

    KindStat ks[CM_KIND_COUNT + 1];
    memset(ks, 0, sizeof ks);
    double train_ape = 0;
    int ntrain_eval = 0;
    for (int i = 0; i < n; i++) {
        if (set[i] < 0) continue;
        KindStat *k = &ks[xs[i].kind];
        k->n++;
        double t = ops[i].median_s;
        double pm = opmodel_time(m, d, &xs[i], NULL);
        if (set[i] != 1) {
            train_ape += fabs(pm - t) / t;
            ntrain_eval++;
            continue;
        }
        double pr[3] = { pm, opmodel_analytic_time(d, &xs[i]), opmodel_roofline(d, &xs[i]) };
        k->held++;
        ks[CM_KIND_COUNT].held++;
        for (int q = 0; q < 3; q++) {
            double e = fabs(pr[q] - t);
            k->ape[q] += e / t;
            ks[CM_KIND_COUNT].ape[q] += e / t;
            k->ae[q] += e;
            ks[CM_KIND_COUNT].ae[q] += e;
        }
        k->t += t;
        ks[CM_KIND_COUNT].t += t;
    }
    ks[CM_KIND_COUNT].n = n - nskip;

    mj = cJSON_CreateObject();
    cJSON_AddNumberToObject(mj, "version", 1);
    cJSON_AddNumberToObject(mj, "feature_version", OPMODEL_FEAT_VERSION);
    cJSON_AddStringToObject(mj, "target", "log(t / roofline)");
    cJSON_AddNumberToObject(mj, "seed", (double)o.seed);
    cJSON_AddNumberToObject(mj, "samples", n);
    cJSON_AddNumberToObject(mj, "skipped", nskip);
    cJSON_AddNumberToObject(mj, "train_samples", nrows - nval);
    cJSON_AddNumberToObject(mj, "val_samples", nval);
    cJSON_AddNumberToObject(mj, "heldout_samples", ntest);
    cJSON_AddNumberToObject(mj, "holdout", o.holdout);
    cJSON *hid = cJSON_AddArrayToObject(mj, "hidden");
    for (int i = 0; i < NHIDDEN; i++) cJSON_AddItemToArray(hid, cJSON_CreateNumber(HIDDEN[i]));
    cJSON_AddNumberToObject(mj, "nets", nnets);
    cJSON_AddNumberToObject(mj, "epochs", epochs);
    cJSON_AddNumberToObject(mj, "huber_delta", HUBER);
    cJSON_AddNumberToObject(mj, "train_mape", ntrain_eval ? train_ape / ntrain_eval : 0);
    cJSON *dj = cJSON_AddObjectToObject(mj, "device");
    cJSON_AddNumberToObject(dj, "peak_flops", d->peak_flops[DT_F32]);
    cJSON_AddNumberToObject(dj, "mem_bw", d->mem_bw);
    cJSON_AddBoolToObject(dj, "gpu", d->gpu);
    cJSON *arr = cJSON_AddArrayToObject(mj, "kinds");
    for (int k = 0; k < CM_KIND_COUNT; k++) {
        cJSON *kj = cJSON_CreateObject();
        cJSON_AddStringToObject(kj, "kind", cm_kind_name(k));
        cJSON_AddNumberToObject(kj, "samples", ks[k].n);
        cJSON_AddNumberToObject(kj, "heldout", ks[k].held);
        cJSON_AddBoolToObject(kj, "covered", covered >> k & 1);
        add_num_or_null(kj, "mape_mlp", ks[k].ape[0], ks[k].held);
        add_num_or_null(kj, "mape_analytic", ks[k].ape[1], ks[k].held);
        add_num_or_null(kj, "mape_roofline", ks[k].ape[2], ks[k].held);
        cJSON_AddItemToArray(arr, kj);
    }
    cJSON *ov = cJSON_AddObjectToObject(mj, "overall");
    const KindStat *a = &ks[CM_KIND_COUNT];
    cJSON_AddNumberToObject(ov, "samples", a->n);
    cJSON_AddNumberToObject(ov, "heldout", a->held);
    add_num_or_null(ov, "mape_mlp", a->ape[0], a->held);
    add_num_or_null(ov, "mape_analytic", a->ape[1], a->held);
    add_num_or_null(ov, "mape_roofline", a->ape[2], a->held);
    /* the error of a sum of op times: big ops weigh more (what a step time sees) */
    if (a->held && a->t > 0) {
        cJSON_AddNumberToObject(ov, "wape_mlp", a->ae[0] / a->t);
        cJSON_AddNumberToObject(ov, "wape_analytic", a->ae[1] / a->t);
        cJSON_AddNumberToObject(ov, "wape_roofline", a->ae[2] / a->t);
    }
    cJSON_AddNumberToObject(mj, "train_seconds", now_s() - t0);

    r->metrics = mj;
    mj = NULL;
    r->heldout_mape = a->held ? a->ape[0] / a->held : -1;
    r->covered = covered;
    rc = 0;
done:
    if (rc) {
        free(r->blob);
        r->blob = NULL;
        r->nblob = 0;
        err_prefix(err, "training the op model");
    }
    cJSON_Delete(mj);
    opmodel_free(m);
    for (int i = 0; i < nnets; i++) mlp_free(nets[i]);
    free(X);
    free(Y);
    free(vmask);
    free(rowidx);
    free(rw);
    free(mset);
    free(xs);
    free(set);
    return rc;
}

void train_result_free(TrainResult *r)
{
    if (!r) return;
    free(r->blob);
    cJSON_Delete(r->metrics);
    memset(r, 0, sizeof *r);
}
