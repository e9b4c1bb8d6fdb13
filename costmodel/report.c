/*
 * report.c — an estimate for people and programs: JSON, and an SVG timeline.
 *
 * The timeline has one row per class (a pipeline stage, or a parameter
 * server role), each with its compute and its comm stream. Forward work is
 * blue and backward green, lighter for later micro-batches so a 1F1B
 * schedule reads as a staircase; recomputed forwards are purple, optimizer
 * updates grey. On the comm stream gradient sync is red, pipeline transfers
 * amber, resharding teal, ZeRO gathers brown and parameter-server traffic
 * magenta. What is left of the lane's pale background is time the stream
 * idles: the pipeline bubble, or waiting for a slower peer. Spans closer
 * than a pixel with the same colour are drawn as one, so a plan of millions
 * of instructions stays a file a browser opens.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "costmodel.h"
#include "ir/util.h"

cJSON *sim_result_json(const SimResult *r, const Strategy *s, const char *op_model,
                       const char *link_model)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step_time_s", r->step_time);
    cJSON_AddBoolToObject(j, "feasible", r->feasible);
    if (!r->feasible) cJSON_AddStringToObject(j, "why_infeasible", r->why_infeasible);
    cJSON_AddNumberToObject(j, "ranks", s->world);
    cJSON_AddNumberToObject(j, "samples_per_s", r->samples_per_s);
    if (r->tokens_per_s > 0) cJSON_AddNumberToObject(j, "tokens_per_s", r->tokens_per_s);
    cJSON_AddNumberToObject(j, "mfu", r->mfu);
    cJSON_AddNumberToObject(j, "hfu", r->hfu);
    cJSON_AddNumberToObject(j, "model_flops", r->model_flops);
    cJSON_AddNumberToObject(j, "hardware_flops", r->hw_flops);
    cJSON_AddNumberToObject(j, "peak_flops", r->peak_flops);
    cJSON_AddNumberToObject(j, "bubble_fraction", r->bubble);
    double peak = 0;
    for (int c = 0; c < r->nclasses; c++)
        if ((double)r->classes[c].peak_mem > peak) peak = (double)r->classes[c].peak_mem;
    cJSON_AddNumberToObject(j, "peak_mem_bytes", peak);

    cJSON *m = cJSON_AddObjectToObject(j, "models");
    cJSON_AddStringToObject(m, "ops", op_model ? op_model : "analytic");
    cJSON_AddStringToObject(m, "links", link_model ? link_model : "analytic");
    cJSON *n = cJSON_AddObjectToObject(m, "op_instances");
    cJSON_AddNumberToObject(n, "analytic", r->op_count[CM_SRC_ANALYTIC]);
    cJSON_AddNumberToObject(n, "mlp", r->op_count[CM_SRC_MLP]);
    cJSON *ak = cJSON_AddArrayToObject(m, "analytic_kinds");
    for (int k = 0; k < CM_KIND_COUNT; k++)
        if (r->analytic_kinds & (1u << k)) cJSON_AddItemToArray(ak, cJSON_CreateString(cm_kind_name(k)));

    cJSON *cl = cJSON_AddArrayToObject(j, "classes");
    for (int c = 0; c < r->nclasses; c++) {
        const SimClass *o = &r->classes[c];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "ranks", o->nranks);
        cJSON_AddNumberToObject(x, "stage", o->stage);
        cJSON_AddNumberToObject(x, "busy_compute_s", o->busy_compute);
        cJSON_AddNumberToObject(x, "recompute_s", o->recompute);
        cJSON_AddNumberToObject(x, "busy_comm_s", o->busy_comm);
        cJSON_AddNumberToObject(x, "exposed_comm_s", o->exposed_comm);
        cJSON_AddNumberToObject(x, "idle_s", o->idle);
        cJSON_AddNumberToObject(x, "flops", o->flops);
        cJSON_AddNumberToObject(x, "peak_mem_bytes", (double)o->peak_mem);
        cJSON_AddNumberToObject(x, "static_mem_bytes", (double)o->static_mem);
        cJSON_AddNumberToObject(x, "device_mem_bytes", o->device_mem);
        cJSON_AddBoolToObject(x, "fits", o->fits);
        cJSON_AddItemToArray(cl, x);
    }
    return j;
}

/* ----------------------------------------------------------------------------
 * SVG */

enum { COL_FWD, COL_BWD, COL_RECOMP, COL_UPDATE, COL_SYNC, COL_PIPE, COL_RESHARD, COL_GATHER,
       COL_PS, COL_OTHER, COL_COUNT };

static const char *const COL_NAME[COL_COUNT] = {
    "forward", "backward", "recompute", "optimizer", "gradient sync", "pipeline send/recv",
    "reshard / stats", "ZeRO gather", "parameter server", "other comm",
};

static int category(const SimSpan *sp)
{
    if (sp->stream == STREAM_COMPUTE) {
        if (sp->recompute) return COL_RECOMP;
        if (sp->phase == PH_UPDATE) return COL_UPDATE;
        return sp->phase == PH_FWD ? COL_FWD : COL_BWD;
    }
    switch (sp->why) {
    case WHY_GRAD_SYNC: case WHY_TIED: return COL_SYNC;
    case WHY_PIPELINE: return COL_PIPE;
    case WHY_RESHARD: case WHY_STATS: return COL_RESHARD;
    case WHY_PARAM_GATHER: return COL_GATHER;
    case WHY_PS: return COL_PS;
    default: return COL_OTHER;
    }
}

/* The fill of a span: the category's hue, lighter for later micro-batches. */
static void fill(int cat, int micro, int nmicro, char *out, int n)
{
    static const int hue[COL_COUNT] = { 215, 135, 275, 0, 0, 40, 175, 25, 310, 0 };
    static const int sat[COL_COUNT] = { 70, 55, 55, 0, 75, 90, 60, 55, 60, 0 };
    double light = 42;
    if ((cat == COL_FWD || cat == COL_BWD || cat == COL_RECOMP) && micro >= 0 && nmicro > 1)
        light = 32 + 36.0 * micro / (nmicro - 1);
    if (cat == COL_UPDATE || cat == COL_OTHER) light = 55;
    snprintf(out, n, "hsl(%d,%d%%,%.0f%%)", hue[cat], sat[cat], light);
}

static void nice_step(double span, double *step)
{
    double raw = span / 8, p = pow(10, floor(log10(raw)));
    double m = raw / p;
    *step = (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* One stream of one class, drawn by columns of half a pixel: each column
 * takes the colour of what kept the stream busiest in it (and that span's
 * micro-batch), drawn as opaque as the stream was busy there; runs of like
 * columns become one rectangle. The file's size is bounded by the picture,
 * not by the plan's millions of instructions. */
#define COLS_PER_PX 1

static void lane_draw(FILE *f, const SimResult *r, int c, int st, double T, double left,
                      double plot, double y, double h, int nmicro)
{
    int ncol = (int)(plot * COLS_PER_PX);
    double *occ = calloc((size_t)ncol * COL_COUNT, sizeof *occ);
    int *mic = malloc(sizeof *mic * (size_t)ncol * COL_COUNT);
    if (!occ || !mic) {
        free(occ);
        free(mic);
        return;
    }
    for (int k = 0; k < ncol * COL_COUNT; k++) mic[k] = -1;
    double w = T / ncol;                   /* seconds per column */
    for (int k = 0; k < r->nspans[c]; k++) {
        const SimSpan *sp = &r->spans[c][k];
        if (sp->stream != st || !(sp->end > sp->start)) continue;
        int cat = category(sp);
        int a = (int)(sp->start / w), b = (int)(sp->end / w);
        if (b >= ncol) b = ncol - 1;
        for (int x = a; x <= b && x >= 0; x++) {
            double lo = fmax(sp->start, x * w), hi = fmin(sp->end, (x + 1) * w);
            if (hi <= lo) continue;
            occ[x * COL_COUNT + cat] += hi - lo;
            mic[x * COL_COUNT + cat] = sp->micro;
        }
    }
    int run_cat = -1, run_mic = -1, run_op = 0, run_x = 0;
    for (int x = 0; x <= ncol; x++) {
        int cat = -1, m = -1, op = 0;
        if (x < ncol) {
            double best = 0, tot = 0;
            for (int k = 0; k < COL_COUNT; k++) {
                tot += occ[x * COL_COUNT + k];
                if (occ[x * COL_COUNT + k] > best) {
                    best = occ[x * COL_COUNT + k];
                    cat = k;
                }
            }
            double busy = fmin(1, tot / w);
            op = busy < 0.05 ? 0 : (int)ceil(busy * 4);     /* quarters of opacity */
            if (!op) cat = -1;
            else m = mic[x * COL_COUNT + cat];
        }
        if (x < ncol && cat == run_cat && m == run_mic && op == run_op) continue;
        if (run_cat >= 0) {
            char col[40], mb[32] = "";
            fill(run_cat, run_mic, nmicro, col, sizeof col);
            if (run_mic >= 0) snprintf(mb, sizeof mb, ", micro-batch %d", run_mic);
            fprintf(f, "<rect x=\"%.1f\" y=\"%.0f\" width=\"%.1f\" height=\"%.0f\" "
                    "fill=\"%s\" fill-opacity=\"%.2f\"><title>%s%s</title></rect>\n",
                    left + (double)run_x / COLS_PER_PX, y, (double)(x - run_x) / COLS_PER_PX, h,
                    col, run_op / 4.0, COL_NAME[run_cat], mb);
        }
        run_cat = cat;
        run_mic = m;
        run_op = op;
        run_x = x;
    }
    free(occ);
    free(mic);
}

int sim_write_svg(const SimResult *r, const Strategy *s, const char *title, const char *path,
                  Err *err)
{
    if (!r->spans) return err_set(err, "timeline: the estimate was simulated without a trace");
    FILE *f = fopen(path, "w");
    if (!f) return err_set(err, "%s: cannot write the timeline (%s)", path, strerror(errno));
    sim_svg_write(r, s, title, f, err);
    if (fclose(f) != 0) return err_set(err, "%s: writing the timeline failed", path);
    return 0;
}

int sim_svg_write(const SimResult *r, const Strategy *s, const char *title, FILE *f, Err *err)
{
    if (!r->spans) return err_set(err, "timeline: the estimate was simulated without a trace");
    const double W = 1400, left = 170, right = 20, lane = 22, gap = 14, top = 60;
    double plot = W - left - right, T = r->step_time > 0 ? r->step_time : 1;
    double H = top + r->nclasses * (2 * lane + gap) + 90;
    double unit = T < 1e-3 ? 1e6 : T < 1 ? 1e3 : 1;
    const char *uname = T < 1e-3 ? "us" : T < 1 ? "ms" : "s";
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"22\" font-size=\"15\" font-weight=\"bold\">", left);
    for (const char *p = title ? title : "strata estimate"; *p; p++) {
        if (*p == '<') fputs("&lt;", f);
        else if (*p == '&') fputs("&amp;", f);
        else fputc(*p, f);
    }
    fprintf(f, "</text>\n<text x=\"%.0f\" y=\"40\">step %.4g %s, %d ranks in %d classes, bubble "
            "%.1f%%, MFU %.1f%%</text>\n", left, T * unit, uname, s->world, r->nclasses,
            100 * r->bubble, 100 * r->mfu);

    double axis_y = top + r->nclasses * (2 * lane + gap);
    double step;
    nice_step(T * unit, &step);
    for (double x = 0; x <= T * unit * 1.0001; x += step) {
        double px = left + plot * (x / unit) / T;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>\n",
                px, top - 4, px, axis_y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n", px,
                axis_y + 16, x);
    }
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">time (%s)</text>\n",
            left + plot / 2, axis_y + 34, uname);

    int nmicro = s->microbatches;
    for (int c = 0; c < r->nclasses; c++) {
        const SimClass *o = &r->classes[c];
        double y0 = top + c * (2 * lane + gap);
        fprintf(f, "<text x=\"8\" y=\"%.0f\">class %d, stage %d</text>\n", y0 + 14, c, o->stage);
        fprintf(f, "<text x=\"8\" y=\"%.0f\" fill=\"#666\">%d rank%s</text>\n", y0 + 30,
                o->nranks, o->nranks == 1 ? "" : "s");
        for (int st = 0; st < 2; st++) {
            double y = y0 + st * lane;
            fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
                    "fill=\"#f3f3f3\"/>\n", left, y, plot, lane - 2);
            fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\" fill=\"#666\">%s</text>\n",
                    left - 6, y + 15, st == STREAM_COMPUTE ? "compute" : "comm");
            lane_draw(f, r, c, st, T, left, plot, y, lane - 2, nmicro);
        }
    }
    /* legend */
    double lx = left, ly = H - 30;
    for (int k = 0; k < COL_COUNT; k++) {
        char col[40];
        fill(k, 0, 1, col, sizeof col);
        fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n", lx, ly, col, lx + 16, ly + 10,
                COL_NAME[k]);
        lx += 24 + 7.0 * strlen(COL_NAME[k]);
    }
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"#f3f3f3\" "
            "stroke=\"#ccc\"/><text x=\"%.0f\" y=\"%.0f\">idle (bubble, waiting)</text>\n",
            lx, ly, lx + 16, ly + 10);
    fprintf(f, "</svg>\n");
    return ferror(f) ? err_set(err, "timeline: writing it failed") : 0;
}
