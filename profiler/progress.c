/*
 * progress.c — a progress bar with the estimated time left, on stderr.
 */
#include "profiler/profile.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

double prof_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void hms(double s, char *buf, int n)
{
    if (s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

void progress_begin(Progress *p, const char *phase, double total, bool quiet)
{
    p->phase = phase;
    p->total = total > 0 ? total : 1;
    p->done = 0;
    p->t0 = p->last = prof_now();
    p->tenth = 0;
    p->quiet = quiet;
    p->tty = isatty(STDERR_FILENO);
}

void progress_add(Progress *p, double w, const char *what)
{
    if (p->quiet) return;
    p->done += w;
    double now = prof_now(), f = p->done / p->total;
    if (f > 1) f = 1;
    char left[32] = "?";
    /* time left at the pace so far: elapsed per unit of estimated work */
    if (p->done > 0) hms((now - p->t0) * (p->total - p->done) / p->done, left, sizeof left);
    if (p->tty) {
        if (now - p->last < 0.1 && f < 1) return;
        p->last = now;
        int fill = (int)(f * 30);
        char bar[31];
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%-6s [%s] %3.0f%%  %s left  %-28.28s", p->phase, bar, 100 * f, left,
                what ? what : "");
        fflush(stderr);
    } else {
        int tenth = (int)(f * 10);
        if (tenth <= p->tenth) return;
        p->tenth = tenth;
        fprintf(stderr, "%s: %d%%, about %s left\n", p->phase, tenth * 10, left);
    }
}

void progress_end(Progress *p, bool stopped)
{
    if (p->quiet) return;
    char took[32];
    hms(prof_now() - p->t0, took, sizeof took);
    if (p->tty) fprintf(stderr, "\r%-80s\r", "");
    fprintf(stderr, "%s: %s %s\n", p->phase, stopped ? "stopped after" : "done in", took);
}
