/*
 * store_fixtures.c — see store_fixtures.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "executor/build.h"
#include "tests/support/cli_harness.h"
#include "tests/support/store_fixtures.h"

int64_t fixture_cpu_profile(Db *d, const DbProfileFit *fits, int nfits)
{
    Err err = {0};
    char *cj = harness_slurp(harness_root_path("clusters/local-cpu.json"), NULL);
    if (!cj) fail_msg("cannot read clusters/local-cpu.json");
    harness_track(cj, false);
    char build[128];             /* measured by this build */
    snprintf(build, sizeof build, "{\"kernels\":\"%s\",\"threads\":1}", build_kernels_id());
    DbProfile p = { .host = "test", .device = "test cpu", .backend = "cpu", .ranks = 2,
                    .notes = "1 BLAS thread per device", .build_json = build };
    int64_t id = 0;
    if (db_profile_begin(d, &p, &id, &err) ||
        db_profile_set_device(d, id, "test cpu", 1.45e11, 1e10, 12e9, "1 BLAS thread per device",
                              &err) ||
        db_profile_finish(d, id, 1, "complete", fits, nfits, cj, &err))
        fail_msg("fixture_cpu_profile: %s", err.msg);
    return id;
}
