/*
 * launch.h — starting `mpirun` on this same binary, for the commands that
 * run on several ranks (`strata run`, `strata profile`). Arguments travel as
 * an argv list, never through a shell.
 */
#ifndef STRATA_LAUNCH_H
#define STRATA_LAUNCH_H

#include <stdbool.h>
#include <sys/types.h>

/* Whether this process is a rank that mpirun (or another PMI launcher) started. */
bool launch_under_mpirun(void);

/* Replaces this process with `mpirun -np world <self> sub argv...`; returns
 * 1 (after saying why on stderr) only when that fails. */
int launch_exec(int world, const char *sub, int argc, char **argv);

/* Starts the same as a child and returns its pid, or -1 after saying why on
 * stderr. The caller waits for it. */
pid_t launch_spawn(int world, const char *sub, int argc, char **argv);

#endif
