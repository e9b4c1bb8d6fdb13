/*
 * replay_main.c — a fuzz harness as a plain test: runs every input kept in
 * fuzz/regress/NAME (crashes the fuzzer found, fixed since) and
 * fuzz/seeds/NAME through the harness once, in the ordinary build (and
 * under the sanitizers with SAN=1). NAME comes from the program's name,
 * replay_NAME; the files from STRATA_ROOT.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
        size_t got = fread(buf, 1, (size_t)len, f);
        fclose(f);
        printf("  %s (%zu bytes)\n", path, got);
        fflush(stdout);
        LLVMFuzzerTestOneInput(buf, got);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    const char *name = strncmp(base, "replay_", 7) == 0 ? base + 7 : base;
    const char *root = getenv("STRATA_ROOT") ? getenv("STRATA_ROOT") : ".";
    if (LLVMFuzzerInitialize && LLVMFuzzerInitialize(&argc, &argv)) return 1;
    char dir[4096];
    int n = 0;
    snprintf(dir, sizeof dir, "%s/fuzz/regress/%s", root, name);
    n += replay_dir(dir);
    snprintf(dir, sizeof dir, "%s/fuzz/seeds/%s", root, name);
    n += replay_dir(dir);
    printf("replay %s: %d inputs, none crashed\n", name, n);
    return n > 0 ? 0 : 1;
}
