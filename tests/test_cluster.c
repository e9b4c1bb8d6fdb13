/*
 * test_cluster.c — cluster specs: the shipped files, units, --nodes scaling,
 * topology queries, round trips and every validation error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/cluster.h"
#include "ir/util.h"

#define GIB 1073741824.0

static const char *root(void)
{
    const char *r = getenv("STRATA_ROOT");
    return r && *r ? r : ".";
}

static Cluster *load_shipped(const char *name, int nodes)
{
    char path[1024];
    Err err = {{0}};
    snprintf(path, sizeof path, "%s/clusters/%s.json", root(), name);
    Cluster *c = cluster_load(path, nodes, &err);
    if (!c) fail_msg("%s", err.msg);
    return c;
}

static Cluster *parse(const char *text, int nodes, Err *err)
{
    cJSON *j = cJSON_Parse(text);
    if (!j) fail_msg("test JSON does not parse: %s", text);
    Cluster *c = cluster_from_json(j, nodes, err);
    cJSON_Delete(j);
    return c;
}

/* Parsing `text` must fail with a message containing `want`. */
static void expect_error(const char *text, int nodes, const char *want)
{
    Err err = {{0}};
    Cluster *c = parse(text, nodes, &err);
    if (c) {
        cluster_free(c);
        fail_msg("accepted, expected an error containing \"%s\": %s", want, text);
    }
    if (!strstr(err.msg, want))
        fail_msg("error \"%s\" does not contain \"%s\"", err.msg, want);
}

#define NEAR(a, b) assert_true(fabs((a) - (b)) <= 1e-9 * fabs(b))

/* ------------------------------------------------------------------------- */

static void test_dgx_a100(void **state)
{
    (void)state;
    Cluster *c = load_shipped("dgx-a100-80gb", 0);
    assert_string_equal(c->name, "dgx-a100-80gb");
    assert_int_equal(c->ndevices, 8);
    assert_int_equal(c->ngroups, 1);
    assert_int_equal(c->nlevels, 2);
    const DeviceGroup *g = &c->groups[0];
    assert_string_equal(g->kind, "gpu");
    assert_int_equal(g->count, 8);
    NEAR(g->peak_flops[DT_F32], 19.5e12);
    NEAR(g->peak_flops[DT_BF16], 312e12);
    NEAR(g->peak_flops[DT_F16], 312e12);
    NEAR(g->mem_bytes, 80 * GIB);
    NEAR(g->mem_bw, 2039e9);
    assert_string_equal(c->levels[0].name, "gpu");
    assert_string_equal(c->levels[0].link, "nvswitch");
    NEAR(c->levels[0].bw, 300e9);
    NEAR(c->levels[0].latency, 2e-6);
    assert_string_equal(c->levels[1].link, "infiniband");
    NEAR(c->levels[1].bw, 25e9);
    NEAR(c->levels[1].latency, 5e-6);
    assert_int_equal(c->levels[1].count, 1);
    cluster_free(c);
}

static void test_dgx_h100_and_cpu(void **state)
{
    (void)state;
    Cluster *c = load_shipped("dgx-h100", 0);
    assert_int_equal(c->ndevices, 8);
    NEAR(c->groups[0].peak_flops[DT_F32], 67e12);
    NEAR(c->groups[0].peak_flops[DT_BF16], 989e12);
    NEAR(c->groups[0].mem_bw, 3350e9);
    NEAR(c->levels[0].bw, 450e9);
    NEAR(c->levels[1].bw, 50e9);
    cluster_free(c);

    c = load_shipped("local-cpu", 0);
    assert_int_equal(c->ndevices, 2);
    assert_int_equal(c->nlevels, 1);
    assert_string_equal(c->groups[0].kind, "cpu");
    NEAR(c->groups[0].peak_flops[DT_F32], 145e9);
    NEAR(c->groups[0].mem_bytes, 12 * GIB);
    NEAR(c->groups[0].mem_bw, 10e9);
    assert_string_equal(c->levels[0].link, "shm");
    NEAR(c->levels[0].latency, 1e-6);
    assert_int_equal(cluster_common_level(c, 0, 1), 0);
    cluster_free(c);
}

static void test_nodes_scaling(void **state)
{
    (void)state;
    Cluster *c = load_shipped("dgx-a100-80gb", 4);
    assert_int_equal(c->ndevices, 32);
    assert_int_equal(c->groups[0].count, 32);
    assert_int_equal(c->levels[0].count, 8);
    assert_int_equal(c->levels[1].count, 4);
    assert_int_equal(cluster_common_level(c, 3, 3), 0);
    assert_int_equal(cluster_common_level(c, 0, 7), 0);
    assert_int_equal(cluster_common_level(c, 7, 8), 1);
    assert_int_equal(cluster_common_level(c, 0, 31), 1);
    assert_non_null(cluster_device(c, 31));
    assert_null(cluster_device(c, 32));
    assert_null(cluster_device(c, -1));

    /* the written form carries the effective counts and parses back the same */
    cJSON *j = cluster_to_json(c);
    Err err = {{0}};
    Cluster *d = cluster_from_json(j, 0, &err);
    assert_non_null(d);
    assert_int_equal(d->ndevices, 32);
    char a[17], b[17];
    cluster_id(c, a);
    cluster_id(d, b);
    assert_string_equal(a, b);
    /* the JSON is the same as well: units round-trip exactly */
    cJSON *j2 = cluster_to_json(d);
    assert_true(cJSON_Compare(j, j2, 1));
    cJSON_Delete(j2);
    cJSON_Delete(j);
    cluster_free(d);

    /* a different node count is a different cluster */
    Cluster *one = load_shipped("dgx-a100-80gb", 0);
    cluster_id(one, b);
    assert_string_not_equal(a, b);
    cluster_free(one);
    cluster_free(c);
}

static const char *hetero =
    "{\"name\":\"mixed\",\"devices\":["
    "{\"name\":\"a100\",\"kind\":\"gpu\",\"count\":4,\"peak_tflops\":{\"f32\":19.5,\"bf16\":312},"
    " \"memory_gib\":80,\"memory_bw_gbps\":2039},"
    "{\"name\":\"v100\",\"kind\":\"gpu\",\"count\":4,\"peak_tflops\":{\"f32\":15.7},"
    " \"memory_gib\":32,\"memory_bw_gbps\":900}],"
    "\"levels\":[{\"name\":\"gpu\",\"count\":2,\"link\":\"nvlink\",\"bw_gbps\":150,\"latency_us\":2},"
    "{\"name\":\"node\",\"count\":2,\"link\":\"pcie\",\"bw_gbps\":16,\"latency_us\":3},"
    "{\"name\":\"rack\",\"count\":2,\"link\":\"ethernet\",\"bw_gbps\":12.5,\"latency_us\":10}]}";

static void test_heterogeneous(void **state)
{
    (void)state;
    Err err = {{0}};
    Cluster *c = parse(hetero, 0, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(c->ndevices, 8);
    assert_string_equal(cluster_device(c, 0)->name, "a100");
    assert_string_equal(cluster_device(c, 3)->name, "a100");
    assert_string_equal(cluster_device(c, 4)->name, "v100");
    assert_string_equal(cluster_device(c, 7)->name, "v100");
    /* a dtype without its own figure runs at the f32 rate */
    NEAR(cluster_device(c, 0)->peak_flops[DT_F16], 19.5e12);
    NEAR(cluster_device(c, 5)->peak_flops[DT_BF16], 15.7e12);
    assert_int_equal(cluster_common_level(c, 0, 1), 0);
    assert_int_equal(cluster_common_level(c, 0, 2), 1);
    assert_int_equal(cluster_common_level(c, 1, 3), 1);
    assert_int_equal(cluster_common_level(c, 0, 4), 2);
    assert_int_equal(cluster_common_level(c, 7, 2), 2);
    cluster_free(c);

    /* 3 racks: each group grows by half */
    c = parse(hetero, 3, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(c->ndevices, 12);
    assert_int_equal(c->groups[0].count, 6);
    assert_int_equal(c->groups[1].count, 6);
    assert_int_equal(c->levels[2].count, 3);
    cluster_free(c);

    /* 1 rack: halves */
    c = parse(hetero, 1, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(c->ndevices, 4);
    assert_int_equal(c->groups[0].count, 2);
    cluster_free(c);
}

/* A valid base with one replacement applied (a crude but readable mutation). */
static void expect_mutation(const char *from, const char *to, int nodes, const char *want)
{
    const char *base = hetero;
    const char *at = strstr(base, from);
    if (!at) fail_msg("mutation source \"%s\" not in the base", from);
    size_t n = strlen(base) - strlen(from) + strlen(to) + 1;
    char *text = xmalloc(n);
    snprintf(text, n, "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
    expect_error(text, nodes, want);
    free(text);
}

static void test_validation(void **state)
{
    (void)state;
    expect_error("[]", 0, "cluster: expected an object");
    expect_error("{\"devices\":[],\"levels\":[]}", 0, "cluster.name: missing");
    expect_mutation("\"name\":\"mixed\",", "\"name\":\"mixed\",\"colour\":1,", 0,
                    "cluster: unknown field \"colour\"");
    expect_error("{\"name\":\"x\",\"devices\":[],\"levels\":[]}", 0, "levels: expected a non-empty");
    expect_error("{\"name\":\"x\",\"devices\":[],\"levels\":{}}", 0, "levels: expected a non-empty");
    expect_error("{\"name\":\"x\",\"levels\":[{\"name\":\"l\",\"count\":1,\"link\":\"l\","
                 "\"bw_gbps\":1,\"latency_us\":1}]}", 0, "devices: missing");
    expect_mutation("\"devices\":", "\"devs\":", 0, "unknown field \"devs\"");
    /* a figure past every bound is told its own range, not the reader's */
    expect_mutation("\"memory_gib\":80,", "\"memory_gib\":1e308,", 0, "[1e-06, 1e+06]");
    expect_mutation("\"latency_us\":2}", "\"latency_us\":1e400}", 0, "[1e-06, 1e+09]");
    expect_mutation("\"kind\":\"gpu\",\"count\":4,", "\"kind\":\"tpu\",\"count\":4,", 0,
                    "devices[0].kind: \"tpu\" is not a device kind");
    expect_mutation("{\"name\":\"v100\",\"kind\":\"gpu\",\"count\":4,",
                    "{\"name\":\"v100\",\"kind\":\"gpu\",", 0, "devices[1].count: missing");
    expect_mutation("\"count\":4,\"peak_tflops\":{\"f32\":15.7}",
                    "\"count\":0,\"peak_tflops\":{\"f32\":15.7}", 0,
                    "devices[1].count: 0 is out of range");
    expect_mutation("\"count\":4,\"peak_tflops\":{\"f32\":15.7}",
                    "\"count\":5,\"peak_tflops\":{\"f32\":15.7}", 0,
                    "devices: the group counts sum to 9 but the levels multiply to 8");
    expect_mutation("{\"f32\":15.7}", "{\"f32\":15.7,\"fp8\":2000}", 0,
                    "devices[1].peak_tflops: unknown field \"fp8\"");
    expect_mutation("{\"f32\":15.7}", "{\"bf16\":100}", 0,
                    "devices[1].peak_tflops.f32: missing");
    expect_mutation("{\"f32\":15.7}", "{\"f32\":-1}", 0,
                    "devices[1].peak_tflops.f32: must be > 0");
    expect_mutation("\"bf16\":312", "\"bf16\":0", 0, "devices[0].peak_tflops.bf16: must be > 0");
    /* figures that would overflow, or make absurd results, once in SI units */
    expect_mutation("{\"f32\":15.7}", "{\"f32\":1e300}", 0,
                    "devices[1].peak_tflops.f32: 1e+300 is out of range [1e-06, 1e+06]");
    expect_mutation("\"memory_gib\":32", "\"memory_gib\":1e-300", 0,
                    "devices[1].memory_gib: 1e-300 is out of range");
    expect_mutation("\"memory_bw_gbps\":900", "\"memory_bw_gbps\":1e300", 0,
                    "devices[1].memory_bw_gbps: 1e+300 is out of range");
    expect_mutation("\"bw_gbps\":16", "\"bw_gbps\":1e300", 0, "levels[1].bw_gbps: 1e+300 is out of range");
    expect_mutation("\"latency_us\":10", "\"latency_us\":1e300", 0,
                    "levels[2].latency_us: 1e+300 is out of range");
    expect_mutation("\"f32\":15.7}", "\"f32\":\"fast\"}", 0,
                    "devices[1].peak_tflops.f32: expected a number");
    expect_mutation(",\"peak_tflops\":{\"f32\":15.7}", "", 0, "devices[1].peak_tflops: missing");
    expect_mutation("\"memory_gib\":32", "\"memory_gib\":0", 0, "devices[1].memory_gib: must be > 0");
    expect_mutation("\"memory_gib\":32,", "", 0, "devices[1].memory_gib: missing");
    expect_mutation("\"memory_bw_gbps\":900", "\"memory_bw_gbps\":-900", 0,
                    "devices[1].memory_bw_gbps: must be > 0");
    expect_mutation("\"name\":\"v100\",", "", 0, "devices[1].name: missing");
    expect_mutation("\"name\":\"v100\",", "\"name\":\"a100\",", 0,
                    "devices[1].name: \"a100\" is already the name of devices[0]");
    expect_mutation("\"memory_bw_gbps\":900}", "\"memory_bw_gbps\":900,\"ecc\":true}", 0,
                    "devices[1]: unknown field \"ecc\"");
    expect_mutation("\"count\":2,\"link\":\"pcie\"", "\"count\":-2,\"link\":\"pcie\"", 0,
                    "levels[1].count: -2 is out of range");
    expect_mutation("\"link\":\"pcie\",", "", 0, "levels[1].link: missing");
    expect_mutation("\"bw_gbps\":16", "\"bw_gbps\":0", 0, "levels[1].bw_gbps: must be > 0");
    expect_mutation("\"latency_us\":10", "\"latency_us\":-1", 0,
                    "levels[2].latency_us: must be > 0");
    expect_mutation("\"latency_us\":10}", "\"latency_us\":10,\"mtu\":9000}", 0,
                    "levels[2]: unknown field \"mtu\"");
    expect_mutation("\"name\":\"rack\"", "\"name\":\"node\"", 0,
                    "levels[2].name: \"node\" is already the name of levels[1]");
    expect_mutation("\"count\":2,\"link\":\"nvlink\"", "\"count\":2.5,\"link\":\"nvlink\"", 0,
                    "levels[0].count: expected an integer");
    /* 3 + 5 devices over 2 nodes do not spread over 3 nodes */
    {
        const char *t =
            "{\"name\":\"odd\",\"devices\":["
            "{\"name\":\"a\",\"kind\":\"gpu\",\"count\":3,\"peak_tflops\":{\"f32\":1},"
            "\"memory_gib\":1,\"memory_bw_gbps\":1},"
            "{\"name\":\"b\",\"kind\":\"cpu\",\"count\":5,\"peak_tflops\":{\"f32\":1},"
            "\"memory_gib\":1,\"memory_bw_gbps\":1}],"
            "\"levels\":[{\"name\":\"x\",\"count\":4,\"link\":\"l\",\"bw_gbps\":1,\"latency_us\":1},"
            "{\"name\":\"node\",\"count\":2,\"link\":\"l\",\"bw_gbps\":1,\"latency_us\":1}]}";
        Err err = {{0}};
        Cluster *c = parse(t, 0, &err);
        if (!c) fail_msg("%s", err.msg);
        cluster_free(c);
        expect_error(t, 3, "devices[0].count: 3 devices over 2 node(s) do not scale to 3 node(s)");
        c = parse(t, 4, &err);   /* 6 + 10 */
        if (!c) fail_msg("%s", err.msg);
        assert_int_equal(c->groups[1].count, 10);
        assert_int_equal(c->ndevices, 16);
        cluster_free(c);
    }
}

static void test_load_errors(void **state)
{
    (void)state;
    Err err = {{0}};
    assert_null(cluster_load("/nonexistent/cluster.json", 0, &err));
    assert_non_null(strstr(err.msg, "/nonexistent/cluster.json"));

    char path[] = "/tmp/strata-test-cluster-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"name\":\"x\",\n \"devices\":[}", f);
    fclose(f);
    assert_null(cluster_load(path, 0, &err));
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "invalid JSON"));

    f = fopen(path, "w");
    fputs("{\"name\":\"x\",\"devices\":[],\"levels\":[]}", f);
    fclose(f);
    assert_null(cluster_load(path, 0, &err));
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "levels:"));
    remove(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dgx_a100),
        cmocka_unit_test(test_dgx_h100_and_cpu),
        cmocka_unit_test(test_nodes_scaling),
        cmocka_unit_test(test_heterogeneous),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
