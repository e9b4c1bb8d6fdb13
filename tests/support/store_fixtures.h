/*
 * store_fixtures.h — stores the tests start from: a complete profile of a
 * small CPU, as `strata profile` would leave it, without measuring. Each
 * fails the running cmocka test (fail_msg) instead of returning an error.
 */
#ifndef STRATA_STORE_FIXTURES_H
#define STRATA_STORE_FIXTURES_H

#include <stdint.h>
#include "db/db.h"

/* A complete profile by this build of two ranks of "test cpu" (one BLAS
 * thread each; 145 GFLOP/s, 10 GB/s, 12 GB), clusters/local-cpu.json as its
 * cluster and fits[0..nfits) as its link fits, put into the open store d.
 * Returns its id. */
int64_t fixture_cpu_profile(Db *d, const DbProfileFit *fits, int nfits);

#endif
