/*
 * cluster.h — devices and the links between them.
 *
 * A cluster is a tree of topology levels, innermost first ("gpu x8 over
 * NVSwitch 300 GB/s 2 us", then "node x64 over InfiniBand 25 GB/s 5 us"). The
 * number of devices is the product of the level counts. Devices come in one or
 * more groups (heterogeneous clusters); group i holds the next `count` ranks.
 * Bandwidths are per device, one direction, in bytes/s; latencies in seconds.
 */
#ifndef STRATA_CLUSTER_H
#define STRATA_CLUSTER_H

#include <cjson/cJSON.h>
#include "err.h"
#include "graph.h"

#define CLUSTER_MAX_LEVELS 8

typedef struct {
    char *name;            /* "a100-80gb" */
    char *kind;            /* "gpu" or "cpu" */
    int count;
    double peak_flops[DT_COUNT];   /* FLOP/s by dtype (DT_I32 unused) */
    double mem_bytes;
    double mem_bw;                 /* bytes/s */
} DeviceGroup;

typedef struct {
    char *name;            /* "gpu", "node" */
    int count;             /* items of the level below in one item of this level */
    char *link;            /* "nvswitch", "infiniband", "shm" */
    double bw;             /* bytes/s per device, one direction */
    double latency;        /* seconds */
} Level;

typedef struct {
    char *name;
    DeviceGroup *groups;
    int ngroups;
    Level levels[CLUSTER_MAX_LEVELS];
    int nlevels;
    int ndevices;
} Cluster;

/* Parses and validates (paths and reasons in err). nodes > 0 replaces the
 * outermost level's count, scaling the device groups with it: that is how a
 * template such as clusters/dgx-a100-80gb.json takes a node count. Caller
 * frees with cluster_free. */
Cluster *cluster_from_json(const cJSON *j, int nodes, Err *err);
Cluster *cluster_load(const char *path, int nodes, Err *err);
cJSON *cluster_to_json(const Cluster *c);          /* caller deletes */
void cluster_free(Cluster *c);
void cluster_id(const Cluster *c, char out[17]);

/* The device group that rank `rank` belongs to. */
const DeviceGroup *cluster_device(const Cluster *c, int rank);
/* The innermost level whose items contain both ranks a and b (0 = same
 * innermost item); nlevels-1 at most. a == b gives 0. */
int cluster_common_level(const Cluster *c, int a, int b);

#endif
