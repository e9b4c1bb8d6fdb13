/*
 * build.c — this build's identity (see build.h).
 */
#include "executor/build.h"

#include <stdio.h>
#include <string.h>

#ifndef STRATA_KERNELS_ID
#define STRATA_KERNELS_ID "unknown"   /* built without the Makefile */
#endif

char *openblas_get_config(void);

const char *build_kernels_id(void)
{
    return STRATA_KERNELS_ID;
}

cJSON *build_json(int threads, int ranks_per_node)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "kernels", build_kernels_id());
    cJSON_AddStringToObject(j, "blas", openblas_get_config());
#ifdef __VERSION__
    cJSON_AddStringToObject(j, "compiler", __VERSION__);
#endif
    cJSON_AddNumberToObject(j, "threads", threads);
    cJSON_AddNumberToObject(j, "ranks_per_node", ranks_per_node);
    return j;
}

int build_check_profile(const char *profile_build_json, long long profile_id, char *buf, int n)
{
    buf[0] = 0;
    cJSON *j = profile_build_json ? cJSON_Parse(profile_build_json) : NULL;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "kernels");
    if (!cJSON_IsString(k))
        snprintf(buf, n, "profile %lld does not say which build of the kernels measured it; "
                 "its op times may not hold for this build (%s): run `strata profile` again",
                 profile_id, build_kernels_id());
    else if (strcmp(k->valuestring, build_kernels_id()) != 0)
        snprintf(buf, n, "profile %lld was measured by another build of the kernels (%s; this "
                 "build is %s): its op times may not hold: run `strata profile` again",
                 profile_id, k->valuestring, build_kernels_id());
    cJSON_Delete(j);
    return buf[0] != 0;
}
