/*
 * comm.c — what the communication backends share: freeing a Comm through its
 * backend and checking a group's ranks. The backends themselves are
 * comm_mpi.c and comm_nccl.c.
 */
#include "executor/comm.h"

#include <stddef.h>

void comm_free(Comm *c)
{
    if (!c) return;
    c->ops->destroy(c);
}

int comm_check_group(const Comm *c, const char *backend, const int *ranks, int n, int me, Err *err)
{
    if (n < 1 || !ranks)
        return err_set(err, "comm %s: a group needs at least one rank (got %d)", backend, n);
    if (me < 0 || me >= n)
        return err_set(err, "comm %s: group index %d is outside a group of %d", backend, me, n);
    for (int i = 0; i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= c->world)
            return err_set(err, "comm %s: group member %d is world rank %d, outside a world of %d",
                           backend, i, ranks[i], c->world);
        for (int j = 0; j < i; j++)
            if (ranks[j] == ranks[i])
                return err_set(err, "comm %s: world rank %d appears twice in a group (members "
                               "%d and %d)", backend, ranks[i], j, i);
    }
    if (ranks[me] != c->rank)
        return err_set(err, "comm %s: group member %d is world rank %d, but this process is "
                       "rank %d", backend, me, ranks[me], c->rank);
    return 0;
}
