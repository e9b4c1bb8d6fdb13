/*
 * zoo.h — builders for the model zoo. A builder writes the same graph a user
 * could write by hand in JSON; nothing downstream knows which builder made it.
 */
#ifndef STRATA_ZOO_H
#define STRATA_ZOO_H

#include <stdio.h>
#include "graph.h"

/* Builds model `kind` (mlp, gpt, bert, vgg16, resnet, fire, moe, dlrm) from options
 * given as key/value strings (keys without the leading "--", e.g. "layers",
 * "96"). An unknown kind or option, or a bad value, is an error naming it.
 * Caller frees with graph_free. */
Graph *zoo_build(const char *kind, int nopts, const char *const *keys,
                 const char *const *vals, Err *err);

/* Prints every kind with its options and defaults. */
void zoo_usage(FILE *f);

#endif
