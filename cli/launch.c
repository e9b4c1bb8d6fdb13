/*
 * launch.c — `mpirun -np W` on this same binary.
 */
#include "launch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ir/util.h"

bool launch_under_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

typedef struct {
    char self[4096];
    char np[16];
    char **av;
} Argv;

/* Fills a: mpirun -np W --bind-to none [--oversubscribe] self sub argv... */
static int build(Argv *a, int world, const char *sub, int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", a->self, sizeof a->self - 1);
    if (n <= 0) {
        fprintf(stderr, "strata %s: cannot find my own executable: %s\n", sub, strerror(errno));
        return -1;
    }
    a->self[n] = 0;
    /* rebuilt while running: the ranks run the file now at that path */
    static const char deleted[] = " (deleted)";
    size_t len = strlen(a->self), dl = sizeof deleted - 1;
    if (len > dl && !strcmp(a->self + len - dl, deleted)) {
        a->self[len - dl] = 0;
        fprintf(stderr, "strata %s: %s was replaced while running; the ranks start the new one\n",
                sub, a->self);
    }
    snprintf(a->np, sizeof a->np, "%d", world);
    a->av = xcalloc((size_t)argc + 10, sizeof *a->av);
    int k = 0;
    a->av[k++] = "mpirun";
    a->av[k++] = "-np";
    a->av[k++] = a->np;
    /* a rank runs cores / ranks threads: Open MPI's default binding (one
     * core per rank, for 2 ranks or fewer) would put them all on one core */
    a->av[k++] = "--bind-to";
    a->av[k++] = "none";
    /* more ranks than cores is fine for correctness runs on a small machine */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 0 && world > cores) a->av[k++] = "--oversubscribe";
    a->av[k++] = a->self;
    a->av[k++] = (char *)sub;
    for (int i = 0; i < argc; i++) a->av[k++] = argv[i];
    a->av[k] = NULL;
    if (geteuid() == 0) {   /* Open MPI refuses root unless told twice */
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    }
    fflush(NULL);
    return 0;
}

static void cannot(const char *sub, int world)
{
    fprintf(stderr, "strata %s: cannot start mpirun (%s); install openmpi-bin, or start "
                    "`mpirun -np %d strata %s ...` yourself\n", sub, strerror(errno), world, sub);
}

/* Ranks per core past which a launch on this one machine is refused: each
 * rank holds its own copy of its share of the model and threads of its own,
 * so a plan of hundreds of ranks forks hundreds of processes that thrash. */
#define MAX_RANKS_PER_CORE 8

int launch_exec(int world, const char *sub, int argc, char **argv)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 0 && world > MAX_RANKS_PER_CORE * cores) {
        fprintf(stderr, "strata %s: the plan has %d ranks, and strata %s starts them all on this "
                "machine (%ld cores, at most %ld ranks): to run it over several machines, start "
                "`mpirun -np %d --hostfile FILE strata %s ...` yourself\n", sub, world, sub, cores,
                MAX_RANKS_PER_CORE * cores, world, sub);
        return 1;
    }
    Argv a;
    if (build(&a, world, sub, argc, argv)) return 1;
    execvp("mpirun", a.av);
    cannot(sub, world);
    free(a.av);
    return 1;
}

pid_t launch_spawn(int world, const char *sub, int argc, char **argv)
{
    Argv a;
    if (build(&a, world, sub, argc, argv)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        execvp("mpirun", a.av);
        cannot(sub, world);
        _exit(127);
    }
    if (pid < 0) fprintf(stderr, "strata %s: cannot fork: %s\n", sub, strerror(errno));
    free(a.av);
    return pid;
}
