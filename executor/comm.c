/*
 * comm.c — what the communication backends share: freeing a Comm through its
 * backend. The backends themselves are comm_mpi.c and comm_nccl.c.
 */
#include "executor/comm.h"

#include <stddef.h>

void comm_free(Comm *c)
{
    if (!c) return;
    c->ops->destroy(c);
}
