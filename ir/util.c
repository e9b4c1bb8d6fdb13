/*
 * util.c — JSON with paths, hashing, globs and checked allocation.
 */
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ----------------------------------------------------------------------------
 * JSON getters */

static const char *type_name(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* Finds key in obj; 1 if absent and optional, -1 if absent and required. */
static int find(const cJSON *obj, const char *path, const char *key, bool required,
                const cJSON **v, Err *err)
{
    *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (*v && !cJSON_IsNull(*v)) return 0;
    if (!required) return 1;
    return err_set(err, "%s.%s: %s (required)", path, key, *v ? "null" : "missing");
}

int json_get_string(const cJSON *obj, const char *path, const char *key,
                    bool required, const char **out, Err *err)
{
    const cJSON *v;
    int rc = find(obj, path, key, required, &v, err);
    if (rc) return rc;
    if (!cJSON_IsString(v))
        return err_set(err, "%s.%s: expected a string, got %s", path, key, type_name(v));
    if (!v->valuestring[0])
        return err_set(err, "%s.%s: must not be empty", path, key);
    /* what is printed back to a terminal: UTF-8 text without control codes */
    const unsigned char *c = (const unsigned char *)v->valuestring;
    for (size_t i = 0; c[i];) {
        int n = utf8_char_len(c + i);
        if (!n && (c[i] < 0x20 || c[i] == 0x7f))
            return err_set(err, "%s.%s: holds a control character (byte %zu, 0x%02x)", path, key,
                           i, c[i]);
        if (!n) return err_set(err, "%s.%s: is not UTF-8 text (byte %zu)", path, key, i);
        i += (size_t)n;
    }
    *out = v->valuestring;
    return 0;
}

int json_get_int(const cJSON *obj, const char *path, const char *key,
                 bool required, int64_t lo, int64_t hi, int64_t *out, Err *err)
{
    const cJSON *v;
    int rc = find(obj, path, key, required, &v, err);
    if (rc) return rc;
    if (!cJSON_IsNumber(v))
        return err_set(err, "%s.%s: expected an integer, got %s", path, key, type_name(v));
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return err_set(err, "%s.%s: expected an integer, got %g", path, key, d);
    /* a bound only a caller's own check narrows is not said */
    if (d > (double)hi && lo <= INT_MIN)
        return err_set(err, "%s.%s: %.0f is out of range (at most %lld)", path, key, d,
                       (long long)hi);
    if (d < (double)lo || d > (double)hi)
        return err_set(err, "%s.%s: %.0f is out of range [%lld, %lld]", path, key, d,
                       (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return 0;
}

int json_get_number(const cJSON *obj, const char *path, const char *key,
                    bool required, double lo, double hi, double *out, Err *err)
{
    const cJSON *v;
    int rc = find(obj, path, key, required, &v, err);
    if (rc) return rc;
    if (!cJSON_IsNumber(v))
        return err_set(err, "%s.%s: expected a number, got %s", path, key, type_name(v));
    double d = v->valuedouble;
    if (d > hi && lo <= -1e300)
        return err_set(err, "%s.%s: %g is out of range (at most %g)", path, key, d, hi);
    if (!isfinite(d) || d < lo || d > hi)
        return err_set(err, "%s.%s: %g is out of range [%g, %g]", path, key, d, lo, hi);
    *out = d;
    return 0;
}

int json_get_bool(const cJSON *obj, const char *path, const char *key,
                  bool required, bool *out, Err *err)
{
    const cJSON *v;
    int rc = find(obj, path, key, required, &v, err);
    if (rc) return rc;
    if (!cJSON_IsBool(v))
        return err_set(err, "%s.%s: expected true or false, got %s", path, key, type_name(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

int json_check_keys(const cJSON *obj, const char *path, const char *const *allowed, Err *err)
{
    if (!cJSON_IsObject(obj))
        return err_set(err, "%s: expected an object, got %s", path, type_name(obj));
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(*a, it->string) == 0;
        if (!ok) {
            char list[512] = "";
            for (const char *const *a = allowed; *a; a++) {
                strncat(list, *a, sizeof list - strlen(list) - 3);
                if (a[1]) strncat(list, ", ", sizeof list - strlen(list) - 1);
            }
            return err_set(err, "%s: unknown field \"%s\" (allowed: %s)", path, it->string, list);
        }
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Files */

char *file_read(const char *path, size_t *len, Err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat stt;
    if (fstat(fileno(f), &stt) == 0 && S_ISDIR(stt.st_mode)) {
        fclose(f);
        err_set(err, "%s: is a directory, not a file", path);
        return NULL;
    }
    /* a pipe or a device (/dev/zero) may never end: it is read up to a
     * bound, past which it is refused rather than filling the memory */
    bool regular = fstat(fileno(f), &stt) == 0 && S_ISREG(stt.st_mode);
    const size_t stream_max = (size_t)256 << 20;
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            if (!regular && cap >= stream_max) {
                free(buf);
                fclose(f);
                err_set(err, "%s: more than %zu MiB from a pipe or device; give a regular file",
                        path, stream_max >> 20);
                return NULL;
            }
            buf = xrealloc(buf, cap *= 2);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        err_set(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int utf8_char_len(const unsigned char *c)
{
    if (c[0] < 0x20 || c[0] == 0x7f) return 0;
    int more = c[0] < 0x80 ? 0 : (c[0] & 0xe0) == 0xc0 && c[0] >= 0xc2 ? 1
             : (c[0] & 0xf0) == 0xe0 ? 2 : (c[0] & 0xf8) == 0xf0 && c[0] < 0xf5 ? 3 : -1;
    for (int k = 1; k <= more; k++)       /* stops at the string's end: 0 is no continuation */
        if ((c[k] & 0xc0) != 0x80) return 0;
    return more + 1;
}

/* Where a value sits, for no_twice: its parent's place and its own key
 * (or index in an array); the path is written only for a message. */
typedef struct Place {
    const struct Place *up;
    const cJSON *node;
    int index;
} Place;

/* j's JSON path ("a.b[2].c"), as far as cap holds. */
static size_t place_path(const Place *p, char *out, size_t cap)
{
    if (!p || !p->up) {
        out[0] = 0;
        return 0;
    }
    size_t len = place_path(p->up, out, cap);
    int w = cJSON_IsObject(p->up->node)
                ? snprintf(out + len, cap - len, "%s%s", len ? "." : "", p->node->string)
                : snprintf(out + len, cap - len, "[%d]", p->index);
    if (w > 0 && (size_t)w < cap - len) return len + (size_t)w;
    /* cut short: the text stays, and what is below it is written over it */
    if (w < 0) out[len] = 0;
    return len;
}

/* Says in err that key k is given twice in the object at p. Apart from
 * no_twice, so that its path buffer is not in every frame of the descent. */
static __attribute__((noinline)) int twice(const Place *p, const char *k, Err *err)
{
    char path[512];
    size_t len = place_path(p, path, sizeof path);
    return err_set(err, "%s%s\"%s\" is given twice in one object", path, len ? ": " : "", k);
}

/* Walking text that is known to be JSON: past white space, past one
 * string, past one value. */
static size_t past_ws(const char *t, size_t n, size_t i)
{
    while (i < n && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r')) i++;
    return i;
}

static size_t past_string(const char *t, size_t n, size_t i)
{
    for (i++; i < n && t[i] != '"'; i++)
        if (t[i] == '\\') i++;
    return i + 1;
}

static size_t past_value(const char *t, size_t n, size_t i)
{
    if (i >= n) return n;
    if (t[i] == '"') return past_string(t, n, i);
    if (t[i] != '{' && t[i] != '[') {
        while (i < n && !strchr(",]} \t\n\r", t[i])) i++;
        return i;
    }
    int depth = 0;
    for (; i < n; i++) {
        if (t[i] == '"') i = past_string(t, n, i) - 1;
        else if (t[i] == '{' || t[i] == '[') depth++;
        else if ((t[i] == '}' || t[i] == ']') && --depth == 0) return i + 1;
    }
    return n;
}

/* Where, in text, the value at p starts; with key, where the key of the
 * member at p does (p in an object). */
static size_t place_offset(const Place *p, const char *t, size_t n, bool key)
{
    if (!p->up) return past_ws(t, n, 0);
    bool obj = cJSON_IsObject(p->up->node);
    size_t i = place_offset(p->up, t, n, false) + 1;
    for (int m = 0;; m++) {
        i = past_ws(t, n, i);
        if (obj) {
            if (m == p->index && key) return i;
            i = past_ws(t, n, past_string(t, n, i));
            i = past_ws(t, n, i + 1);                   /* the colon */
        }
        if (m == p->index || i >= n) return i;
        i = past_ws(t, n, past_value(t, n, i)) + 1;     /* the comma */
    }
}

/* A key of an object and where it stands among the object's members. */
typedef struct {
    const char *k;
    int index;
} Key;

static int cmp_key(const void *a, const void *b)
{
    const Key *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* The first key given twice in one object under the value at p, said in
 * err with the object's JSON path, *at its second place in text; 0 when
 * there is none. */
static int no_twice(const Place *p, const char *text, size_t n, size_t *at, Err *err)
{
    const cJSON *j = p->node;
    if (!cJSON_IsObject(j) && !cJSON_IsArray(j)) return 0;
    if (cJSON_IsObject(j) && j->child && j->child->next) {
        int nk = cJSON_GetArraySize(j), i = 0;
        Key *k = xmalloc(sizeof *k * (size_t)nk);
        for (const cJSON *c = j->child; c; c = c->next, i++)
            k[i] = (Key){ c->string ? c->string : "", i };
        qsort(k, (size_t)nk, sizeof *k, cmp_key);
        int second = -1;                /* the first repeat, in the text's order */
        const char *name = NULL;
        for (i = 1; i < nk; i++)
            if (!strcmp(k[i].k, k[i - 1].k) && (second < 0 || k[i].index < second)) {
                second = k[i].index;
                name = k[i].k;
            }
        if (second >= 0) {
            const cJSON *c = j->child;
            for (i = 0; i < second; i++) c = c->next;
            Place q = { p, c, second };
            *at = place_offset(&q, text, n, true);
            twice(p, name, err);
        }
        free(k);
        if (second >= 0) return -1;
    }
    int i = 0;
    for (const cJSON *c = j->child; c; c = c->next, i++) {
        Place q = { p, c, i };
        if (no_twice(&q, text, n, at, err)) return -1;
    }
    return 0;
}

/* The end of the number that starts at text[i], as RFC 8259 writes one
 * (-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?) and a double holds;
 * 0 with *why when it is not one. cJSON alone takes "007", "2." and
 * "1e999" (as infinity). */
static size_t number_end(const char *t, size_t n, size_t i, const char **why)
{
#define DIGIT(k) ((k) < n && t[k] >= '0' && t[k] <= '9')
    size_t k = i + (t[i] == '-');
    if (!DIGIT(k)) return *why = "a minus sign without a number after it", 0;
    if (t[k] == '0' && DIGIT(k + 1)) return *why = "a number with a leading zero", 0;
    while (DIGIT(k)) k++;
    if (k < n && t[k] == '.') {
        if (!DIGIT(k + 1)) return *why = "a number that ends at its decimal point", 0;
        for (k++; DIGIT(k); k++) {}
    }
    if (k < n && (t[k] == 'e' || t[k] == 'E')) {
        k += 1 + (k + 1 < n && (t[k + 1] == '+' || t[k + 1] == '-'));
        if (!DIGIT(k)) return *why = "an exponent without digits", 0;
        while (DIGIT(k)) k++;
    }
#undef DIGIT
    char buf[400];
    if (k - i < sizeof buf) {
        memcpy(buf, t + i, k - i);
        buf[k - i] = 0;
        if (!isfinite(strtod(buf, NULL))) return *why = "a number too large for a double", 0;
    }
    return k;
}

cJSON *json_parse_strict(const char *text, size_t n, size_t *at, Err *err)
{
    *at = 0;
    /* what cJSON would take and JSON is not: a NUL byte (it ends the text
     * or a string there, as \\u0000 does), a raw control character in a
     * string, a number not in JSON's form or past a double's range */
    bool in = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)text[i];
        const char *why = NULL;
        if (ch == 0) {
            why = "a NUL byte";
        } else if (in) {
            if (ch == '"') {
                in = false;
            } else if (ch < 0x20) {
                why = "a string holds a raw control character (write it escaped: \\n, \\t, "
                      "\\u00XX)";
            } else if (ch == '\\' && i + 1 < n) {
                if (text[i + 1] == 'u' && i + 5 < n && !strncmp(text + i + 2, "0000", 4))
                    why = "a string holds \\u0000 (a NUL character)";
                else
                    i++;
            }
        } else if (ch == '"') {
            in = true;
        } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
            size_t k = number_end(text, n, i, &why);
            if (k) i = k - 1;
        }
        if (why) {
            *at = i;
            err_set(err, "%s", why);
            return NULL;
        }
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!j) {
        *at = end && end >= text ? (size_t)(end - text) : 0;
        if (*at > n) *at = n;
        /* cJSON points at the very start when it could not finish the
         * outermost value: a bracket or string still open at the end is the
         * better answer then */
        int depth = 0, deepest = 0;
        size_t deepest_at = 0;
        in = false;
        for (size_t i = 0; i < n; i++) {
            if (text[i] == '"') in = !in;
            else if (in && text[i] == '\\') i++;
            else if (!in && (text[i] == '{' || text[i] == '[')) {
                if (++depth > deepest && deepest <= CJSON_NESTING_LIMIT) {
                    deepest = depth;
                    deepest_at = i;
                }
            } else if (!in && (text[i] == '}' || text[i] == ']')) depth--;
        }
        if (deepest > CJSON_NESTING_LIMIT) {
            /* well formed or not, cJSON stops at its nesting limit */
            *at = deepest_at;
            err_set(err, "nested deeper than %d arrays and objects", CJSON_NESTING_LIMIT);
            return NULL;
        }
        if (*at == 0 && (in || depth > 0)) *at = n;
        err_set(err, "%s", *at >= n ? "invalid JSON: it ends before the value does" : "invalid JSON");
        return NULL;
    }
    size_t k = end && end >= text ? (size_t)(end - text) : n;
    while (k < n && (text[k] == ' ' || text[k] == '\t' || text[k] == '\n' || text[k] == '\r')) k++;
    if (k < n) {
        *at = k;
        cJSON_Delete(j);
        err_set(err, "more after the JSON value (one value is expected)");
        return NULL;
    }
    Place root = { NULL, j, 0 };
    if (no_twice(&root, text, n, at, err)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

cJSON *json_load(const char *path, Err *err)
{
    size_t n;
    char *text = file_read(path, &n, err);
    if (!text) return NULL;
    size_t at;
    Err why = { { 0 } };
    cJSON *j = json_parse_strict(text, n, &at, &why);
    if (!j) {
        int line = 1, col = 1;
        for (size_t i = 0; i < at; i++) {
            if (text[i] == '\n') { line++; col = 1; } else col++;
        }
        err_set(err, "%s:%d:%d: %s", path, line, col, why.msg);
    }
    free(text);
    return j;
}

int json_save(const cJSON *j, const char *path, Err *err)
{
    char *text = cJSON_Print(j);
    if (!text) return err_set(err, "out of memory printing JSON");
    int rc = 0;
    if (!path || strcmp(path, "-") == 0) {
        fputs(text, stdout);
        fputc('\n', stdout);
    } else {
        /* written beside, then renamed: a failed write never leaves half a
         * file. A link, a pipe, a terminal, a device (/dev/stdout) is
         * written through as it is: a file renamed over it would replace it */
        struct stat st;
        bool through = lstat(path, &st) == 0 && !S_ISREG(st.st_mode);
        /* the file beside is a new one (mkstemp: never a file or link that
         * was there), with the mode a new file gets */
        size_t n = strlen(path) + 8;
        char *tmp = xmalloc(n);
        snprintf(tmp, n, "%s.XXXXXX", path);
        FILE *f = NULL;
        if (through) {
            f = fopen(path, "wb");
        } else {
            int fd = mkstemp(tmp);
            mode_t mask = umask(0);
            umask(mask);
            if (fd >= 0 && (fchmod(fd, 0666 & ~mask) != 0 || !(f = fdopen(fd, "wb")))) {
                close(fd);
                remove(tmp);
            }
        }
        bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
        if (f && fclose(f) != 0) ok = false;
        if (ok && !through && rename(tmp, path) != 0) ok = false;
        if (!ok) {
            rc = err_set(err, "%s: cannot write: %s", path, strerror(errno));
            if (f && !through) remove(tmp);
        }
        free(tmp);
    }
    cJSON_free(text);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Canonical JSON and hashing */

static int cmp_items(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

static bool in_list(const char *s, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(*list, s) == 0) return true;
    return false;
}

static cJSON *sorted(const cJSON *j, const char *const *keep, bool keep_this)
{
    if (cJSON_IsArray(j)) {
        cJSON *a = cJSON_CreateArray();
        const cJSON *it;
        cJSON_ArrayForEach(it, j) cJSON_AddItemToArray(a, sorted(it, keep, false));
        return a;
    }
    if (!cJSON_IsObject(j)) return cJSON_Duplicate(j, 1);
    int n = cJSON_GetArraySize(j), i = 0;
    const cJSON **items = xmalloc(sizeof *items * (n ? n : 1));
    const cJSON *it;
    cJSON_ArrayForEach(it, j) items[i++] = it;
    if (!keep_this) qsort(items, n, sizeof *items, cmp_items);
    cJSON *o = cJSON_CreateObject();
    for (i = 0; i < n; i++)
        cJSON_AddItemToObject(o, items[i]->string,
                              sorted(items[i], keep, in_list(items[i]->string, keep)));
    free(items);
    return o;
}

cJSON *json_sorted(const cJSON *j, const char *const *keep_order)
{
    return sorted(j, keep_order, false);
}

void hash_hex(const void *data, size_t n, char out[17])
{
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

void json_hash(const cJSON *j, char out[17])
{
    char *text = cJSON_PrintUnformatted(j);
    hash_hex(text, strlen(text), out);
    cJSON_free(text);
}

/* ----------------------------------------------------------------------------
 * Globs */

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void this_host(char *buf, int n)
{
    if (gethostname(buf, (size_t)n) != 0) snprintf(buf, n, "localhost");
    buf[n - 1] = 0;
}

bool glob_match(const char *p, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*p == '*') {
            star = p++;
            resume = s;
        } else if (*p == *s) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*p == '*') p++;
    return *p == 0;
}

/* ----------------------------------------------------------------------------
 * Allocation */

static void oom(size_t n, const char *file, int line)
{
    fprintf(stderr, "%s:%d: out of memory allocating %zu bytes\n", file, line, n);
    abort();
}

void *xmalloc_(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom(n, file, line);
    return p;
}

void *xcalloc_(size_t n, size_t m, const char *file, int line)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) oom(n * m, file, line);
    return p;
}

void *xrealloc_(void *q, size_t n, const char *file, int line)
{
    void *p = realloc(q, n ? n : 1);
    if (!p) oom(n, file, line);
    return p;
}

char *xstrdup_(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *p = xmalloc_(n, file, line);
    memcpy(p, s, n);
    return p;
}

void *xmemdup_(const void *p, size_t n, const char *file, int line)
{
    void *q = xmalloc_(n ? n : 1, file, line);
    if (n) memcpy(q, p, n);
    return q;
}

void random_id(char out[17])
{
    uint64_t x = (uint64_t)time(NULL) * 6364136223846793005ULL ^
                 (uint64_t)getpid() * 1442695040888963407ULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    x ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 31;
    snprintf(out, 17, "%016llx", (unsigned long long)x);
}

uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
