/*
 * device.c — what one CPU device of this machine can do at best: the f32
 * matmul rate of the SGEMM every contraction kernel calls, and the memory
 * bandwidth a streaming kernel gets (STREAM's triad, a[i] = b[i] + s*c[i],
 * counted as 3 words per element as STREAM does).
 *
 * A device is the share of the machine one rank of `strata run` gets:
 * cores / devices_per_node cores, as many BLAS threads.
 */
#include "profiler/profile.h"

#include <cblas.h>
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "executor/blas.h"
#include "ir/util.h"

static void cpu_model(char *buf, int n)
{
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *v = strchr(line, ':');
        if (!v) break;
        v++;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        snprintf(buf, n, "%s", v);
        break;
    }
    fclose(f);
}

/* "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" -> "xeon-platinum-8481c": the
 * words that are neither trademarks nor the clock, lower case, dashed. */
static void short_model(const char *model, char *out, int n)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", model);
    /* trademarks glued to words: "Xeon(R)" */
    for (char *m; (m = strstr(tmp, "(R)")) || (m = strstr(tmp, "(TM)")) || (m = strstr(tmp, "(tm)"));)
        memmove(m, m + (m[1] == 'R' ? 3 : 4), strlen(m + (m[1] == 'R' ? 3 : 4)) + 1);
    int k = 0;
    out[0] = 0;
    for (char *w = strtok(tmp, " "); w && k < n - 1; w = strtok(NULL, " ")) {
        if (strchr(w, '@') || strstr(w, "GHz") || strcasecmp(w, "CPU") == 0 ||
            strcasecmp(w, "Processor") == 0 || strncasecmp(w, "Intel", 5) == 0 ||
            strcmp(w, "AMD") == 0 || strstr(w, "-Core"))
            continue;
        if (k && k < n - 1) out[k++] = '-';
        for (char *c = w; *c && k < n - 1; c++) {
            if (isalnum((unsigned char)*c)) out[k++] = (char)tolower((unsigned char)*c);
        }
        out[k] = 0;
    }
    if (!k) snprintf(out, n, "cpu");
}

/* --- matmul ------------------------------------------------------------------ */

static double sgemm_rate(int64_t n, int reps)
{
    float *a = xmalloc((size_t)(n * n) * sizeof *a), *b = xmalloc((size_t)(n * n) * sizeof *b);
    float *c = xcalloc((size_t)(n * n), sizeof *c);
    for (int64_t i = 0; i < n * n; i++) {
        a[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
        b[i] = (float)((i * 5) % 11) / 11.0f - 0.5f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1, a, (int)n,
                b, (int)n, 0, c, (int)n);     /* warm-up: pages, thread pool */
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = prof_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1, a,
                    (int)n, b, (int)n, 0, c, (int)n);
        double t = prof_now() - t0;
        double rate = 2.0 * n * n * n / t;
        if (rate > best) best = rate;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* --- memory ------------------------------------------------------------------ */

typedef struct {
    float *a, *b, *c;
    int64_t lo, hi;
} Triad;

static void *triad_part(void *arg)
{
    Triad *t = arg;
    for (int64_t i = t->lo; i < t->hi; i++) t->a[i] = t->b[i] + 3.0f * t->c[i];
    return NULL;
}

/* Best of reps triads over n elements split across `threads` threads. */
static double triad_rate(int64_t n, int threads, int reps)
{
    float *a = xmalloc((size_t)n * sizeof *a), *b = xmalloc((size_t)n * sizeof *b);
    float *c = xmalloc((size_t)n * sizeof *c);
    for (int64_t i = 0; i < n; i++) {   /* touches every page before timing */
        a[i] = 0;
        b[i] = 1;
        c[i] = 2;
    }
    pthread_t th[64];
    Triad part[64];
    if (threads > 64) threads = 64;
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {   /* the first pass only warms up */
        double t0 = prof_now();
        bool created[64] = { false };
        for (int k = 0; k < threads; k++) {
            part[k] = (Triad){ a, b, c, n * k / threads, n * (k + 1) / threads };
            created[k] = k < threads - 1 && pthread_create(&th[k], NULL, triad_part, &part[k]) == 0;
            if (!created[k]) triad_part(&part[k]);
        }
        for (int k = 0; k < threads; k++)
            if (created[k]) pthread_join(th[k], NULL);
        double t = prof_now() - t0;
        if (r && 12.0 * n / t > best) best = 12.0 * n / t;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* Timed runs of the SGEMM and of the triad, each time the rates are measured. */
static int rate_reps(bool quick)
{
    return quick ? 3 : 5;
}

/* The triad's arrays: 3 of 128 MiB (32 MiB with --quick), far beyond any cache. */
static int64_t triad_elems(bool quick)
{
    return quick ? (int64_t)8 << 20 : (int64_t)32 << 20;
}

int prof_device_cpu(ProfDevice *d, int devices_per_node, bool quick, Err *err)
{
    memset(d, 0, sizeof *d);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGE_SIZE);
    if (cores < 1 || pages < 1 || psize < 1)
        return err_set(err, "cannot read this machine's cores and memory (sysconf)");
    if (devices_per_node < 1) devices_per_node = 1;
    blas_threads(devices_per_node);
    d->threads = cores / devices_per_node > 0 ? (int)(cores / devices_per_node) : 1;
    d->mem_bytes = (double)pages * psize / devices_per_node;

    char model[160], core[40];
    cpu_model(model, sizeof model);
    snprintf(core, sizeof core, "%s", blas_corename() ? blas_corename() : "?");
    short_model(model, d->short_name, sizeof d->short_name - 8);
    strcat(d->short_name, devices_per_node > 1 ? "-core" : "");
    snprintf(d->name, sizeof d->name, "%s (%d of %ld core%s, OpenBLAS %s)", model, d->threads,
             cores, cores == 1 ? "" : "s", core);

    /* the largest size still fits the caches' worst case of a few 100 MB */
    const int64_t sizes[] = { 256, 512, 1024, 2048, 3072 };
    int nsz = quick ? 4 : 5;
    for (int i = 0; i < nsz; i++) {
        double r = sgemm_rate(sizes[i], rate_reps(quick));
        if (r > d->peak_flops) {
            d->peak_flops = r;
            d->peak_n = sizes[i];
        }
    }
    d->mem_bw = triad_rate(triad_elems(quick), d->threads, rate_reps(quick));
    return 0;
}

void prof_device_again(ProfDevice *d, bool quick, double *flops, double *bw)
{
    *flops = sgemm_rate(d->peak_n, rate_reps(quick));
    *bw = triad_rate(triad_elems(quick), d->threads, rate_reps(quick));
    if (*flops > d->peak_flops) d->peak_flops = *flops;
    if (*bw > d->mem_bw) d->mem_bw = *bw;
}
