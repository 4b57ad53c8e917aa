/* safetensors.c - read (mmap + validate) and write F32 safetensors files.
 *
 * Reading trusts nothing in the header: its length, every dtype, shape and
 * offset pair is checked against the file before a single tensor byte is
 * touched, and no allocation is sized from a claimed count that was not first
 * bounded by the file size.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* A header larger than this is refused (the Rust implementation uses 100 MB). */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
/* Offsets and dims are JSON numbers (doubles): beyond 2^53 they are inexact. */
#define ST_MAX_INT ((double)(1ULL << 53))

struct fp_safetensors {
    char *path;
    const uint8_t *map;         /* whole file, read-only */
    size_t map_len;
    const uint8_t *data;        /* data section = map + 8 + header length */
    size_t data_len;
    fp_st_tensor *tensors;      /* header order */
    size_t n;
    size_t *by_name;            /* indices into tensors, sorted by name */
    char **meta;                /* key, value, key, value, ... */
    size_t n_meta;
};

/* ---- half precision ---------------------------------------------------- */

float fp_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {                      /* inf / nan: keep the payload */
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {                  /* normal: rebias 15 -> 127 */
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {                  /* signed zero */
        bits = sign;
    } else {                                /* subnormal: normalise the mantissa */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float fp_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t fp_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t man = x & 0x7fffff;
    if (exp == 0xff)                        /* inf stays inf, nan stays (quiet) nan */
        return sign | 0x7c00 | (man ? 0x200 | (uint16_t)(man >> 13) : 0);
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f)                          /* overflow -> inf */
        return sign | 0x7c00;
    if (e <= 0) {                           /* subnormal half (or zero) */
        if (e < -10)
            return sign;
        man |= 0x800000;                    /* implicit leading one */
        int shift = 14 - e;
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;                         /* may carry into the smallest normal: fine */
        return sign | (uint16_t)half;
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
        half++;                             /* carry may round up to inf: correct */
    return sign | (uint16_t)half;
}

uint16_t fp_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)      /* nan: keep it a quiet nan */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);          /* round to nearest even */
    return (uint16_t)(x >> 16);
}

/* ---- reading ----------------------------------------------------------- */

/* Bytes per element, or 0 for a dtype we do not know. */
static size_t dtype_size(const char *s, fp_dtype *dt)
{
    static const struct { const char *name; size_t size; fp_dtype dt; } tab[] = {
        {"F32", 4, FP_DT_F32}, {"F16", 2, FP_DT_F16}, {"BF16", 2, FP_DT_BF16},
        {"F64", 8, FP_DT_OTHER}, {"I64", 8, FP_DT_OTHER}, {"U64", 8, FP_DT_OTHER},
        {"I32", 4, FP_DT_OTHER}, {"U32", 4, FP_DT_OTHER}, {"I16", 2, FP_DT_OTHER},
        {"U16", 2, FP_DT_OTHER}, {"I8", 1, FP_DT_OTHER}, {"U8", 1, FP_DT_OTHER},
        {"BOOL", 1, FP_DT_OTHER}, {"F8_E4M3", 1, FP_DT_OTHER}, {"F8_E5M2", 1, FP_DT_OTHER},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(s, tab[i].name) == 0) {
            *dt = tab[i].dt;
            return tab[i].size;
        }
    *dt = FP_DT_OTHER;
    return 0;
}

/* A JSON number that is a non-negative integer representable exactly. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > ST_MAX_INT || d != floor(d))
        return -1;
    *out = (uint64_t)d;
    return 0;
}

/* Fills t from one header entry; file size known via self->data_len. */
static int parse_entry(fp_safetensors *self, const cJSON *e, fp_st_tensor *t)
{
    const char *p = self->path, *nm = e->string;
    if (!cJSON_IsObject(e))
        return fp_error_set("%s: tensor '%s': header entry is not a JSON object", p, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || strlen(dt->valuestring) >= sizeof t->dtype_name)
        return fp_error_set("%s: tensor '%s': 'dtype' missing or not a short string", p, nm);
    if (!cJSON_IsArray(sh))
        return fp_error_set("%s: tensor '%s': 'shape' missing or not an array", p, nm);
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return fp_error_set("%s: tensor '%s': 'data_offsets' must be an array [begin, end]",
                            p, nm);

    size_t esize = dtype_size(dt->valuestring, &t->dtype);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt->valuestring);

    int nd = cJSON_GetArraySize(sh);
    if (nd > FP_ST_MAX_DIMS)
        return fp_error_set("%s: tensor '%s': %d dimensions (at most %d supported)", p, nm,
                            nd, FP_ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int i = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_uint(d, &v) != 0)
            return fp_error_set("%s: tensor '%s': shape[%d] is not a non-negative integer "
                                "below 2^53", p, nm, i);
        t->shape[i] = (int64_t)v;
        if (v != 0 && numel > SIZE_MAX / v)
            return fp_error_set("%s: tensor '%s': shape overflows the element count", p, nm);
        numel *= (size_t)v;
    }
    t->numel = numel;

    uint64_t b, en;
    if (json_uint(off->child, &b) != 0 || json_uint(off->child->next, &en) != 0 || en < b)
        return fp_error_set("%s: tensor '%s': data_offsets must be integers with "
                            "0 <= begin <= end", p, nm);
    if (en > self->data_len)
        return fp_error_set("%s: tensor '%s': data_offsets [%llu, %llu] run past the end of "
                            "the file (size %zu, data section %zu bytes); the file is "
                            "truncated or corrupt", p, nm, (unsigned long long)b,
                            (unsigned long long)en, self->map_len, self->data_len);
    t->begin = (size_t)b;
    t->end = (size_t)en;
    /* Unknown dtypes cannot be size-checked; reading them as f32 is refused. */
    if (esize && (numel > SIZE_MAX / esize || t->end - t->begin != numel * esize))
        return fp_error_set("%s: tensor '%s': data_offsets [%zu, %zu] hold %zu bytes but "
                            "dtype %s x %zu elements needs %zu; the header is corrupt", p,
                            nm, t->begin, t->end, t->end - t->begin, t->dtype_name, numel,
                            numel <= SIZE_MAX / esize ? numel * esize : SIZE_MAX);
    return 0;
}

static int parse_metadata(fp_safetensors *self, const cJSON *md)
{
    if (!cJSON_IsObject(md))
        return fp_error_set("%s: __metadata__ is not a JSON object", self->path);
    size_t n = (size_t)cJSON_GetArraySize(md);
    self->meta = calloc(2 * n + 1, sizeof(char *));
    if (!self->meta)
        return fp_error_set("%s: out of memory", self->path);
    for (const cJSON *kv = md->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            return fp_error_set("%s: __metadata__ key '%s' is not a string", self->path,
                                kv->string);
        char *k = strdup(kv->string), *v = strdup(kv->valuestring);
        self->meta[2 * self->n_meta] = k;
        self->meta[2 * self->n_meta + 1] = v;
        self->n_meta++;
        if (!k || !v)
            return fp_error_set("%s: out of memory", self->path);
    }
    return 0;
}


/* qsort_r (GNU) comparators over indices into self->tensors. */
static int cmp_name(const void *a, const void *b, void *ctx)
{
    const fp_st_tensor *t = ((const fp_safetensors *)ctx)->tensors;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static int cmp_begin(const void *a, const void *b, void *ctx)
{
    const fp_st_tensor *t = ((const fp_safetensors *)ctx)->tensors;
    const fp_st_tensor *x = &t[*(const size_t *)a], *y = &t[*(const size_t *)b];
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Duplicate names and overlapping byte ranges are both corruption. Sorting
 * keeps this O(n log n) however many entries a hostile header claims. */
static int check_layout(fp_safetensors *self)
{
    size_t n = self->n;
    self->by_name = malloc((n ? n : 1) * sizeof(size_t));
    size_t *by_off = malloc((n ? n : 1) * sizeof(size_t));
    int rc = -1;
    if (!self->by_name || !by_off) {
        fp_error_set("%s: out of memory", self->path);
        goto err;
    }
    for (size_t i = 0; i < n; i++)
        self->by_name[i] = by_off[i] = i;
    qsort_r(self->by_name, n, sizeof(size_t), cmp_name, self);
    for (size_t i = 1; i < n; i++)
        if (strcmp(self->tensors[self->by_name[i]].name,
                   self->tensors[self->by_name[i - 1]].name) == 0) {
            fp_error_set("%s: tensor '%s' appears twice in the header", self->path,
                         self->tensors[self->by_name[i]].name);
            goto err;
        }
    qsort_r(by_off, n, sizeof(size_t), cmp_begin, self);
    const fp_st_tensor *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        const fp_st_tensor *t = &self->tensors[by_off[i]];
        if (t->begin == t->end)
            continue;                   /* empty tensors occupy no bytes */
        if (prev && t->begin < prev->end) {
            fp_error_set("%s: tensors '%s' [%zu, %zu] and '%s' [%zu, %zu] overlap; the "
                         "header is corrupt", self->path, prev->name, prev->begin, prev->end,
                         t->name, t->begin, t->end);
            goto err;
        }
        prev = t;
    }
    rc = 0;
err:
    free(by_off);
    return rc;
}

/* Parses and checks the JSON header (self->map, data section already set). */
static int parse_header(fp_safetensors *self, const char *json, size_t len)
{
    const char *end = NULL;
    int rc = -1;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return fp_error_set("%s: header is not valid JSON (parse error near byte %zu of %zu); "
                            "not a safetensors file, or it is corrupt", self->path, at, len);
    }
    /* Only padding (spaces, as the Rust writer emits) may follow the object. */
    for (const char *c = end; c && c < json + len; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r' && *c != '\0') {
            fp_error_set("%s: header has trailing bytes after the JSON object", self->path);
            goto err;
        }
    if (!cJSON_IsObject(root)) {
        fp_error_set("%s: header is JSON but not an object", self->path);
        goto err;
    }
    /* A valid entry takes at least ~50 bytes of JSON, so a count beyond
     * len / 40 cannot be honest: refuse it before allocating for it. */
    size_t count = (size_t)cJSON_GetArraySize(root);
    if (count > len / 40 + 1) {
        fp_error_set("%s: header claims %zu entries in %zu bytes; the header is corrupt",
                     self->path, count, len);
        goto err;
    }
    self->tensors = calloc(count ? count : 1, sizeof(fp_st_tensor));
    if (!self->tensors) {
        fp_error_set("%s: out of memory", self->path);
        goto err;
    }
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (self->meta) {
                fp_error_set("%s: __metadata__ appears twice in the header", self->path);
                goto err;
            }
            if (parse_metadata(self, e) != 0)
                goto err;
            continue;
        }
        fp_st_tensor *t = &self->tensors[self->n];
        t->name = strdup(e->string);
        if (!t->name) {
            fp_error_set("%s: out of memory", self->path);
            goto err;
        }
        self->n++;
        if (parse_entry(self, e, t) != 0)
            goto err;
    }
    rc = check_layout(self);
err:
    cJSON_Delete(root);
    return rc;
}

fp_safetensors *fp_st_open(const char *path)
{
    int fd = -1;
    fp_safetensors *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        fp_error_set("%s: out of memory", path);
        goto err;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fp_error_set("%s: cannot open: %s", path, strerror(errno));
        goto err;
    }
    if (!S_ISREG(st.st_mode)) {
        fp_error_set("%s: not a regular file", path);
        goto err;
    }
    size_t fsize = (size_t)st.st_size;
    if (fsize < 8) {
        fp_error_set("%s: file is %zu bytes, too short for the 8-byte header length; the "
                     "file is truncated or not a safetensors file", path, fsize);
        goto err;
    }
    void *m = mmap(NULL, fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
        fp_error_set("%s: mmap failed: %s", path, strerror(errno));
        goto err;
    }
    self->map = m;
    self->map_len = fsize;
    close(fd);
    fd = -1;

    uint64_t hlen;
    memcpy(&hlen, self->map, 8);
    if (hlen > ST_MAX_HEADER || hlen > fsize - 8) {
        fp_error_set("%s: header length %llu is larger than the file (size %zu) or the "
                     "100 MB limit; the file is truncated or not a safetensors file", path,
                     (unsigned long long)hlen, fsize);
        goto err;
    }
    self->data = self->map + 8 + hlen;
    self->data_len = fsize - 8 - (size_t)hlen;
    if (parse_header(self, (const char *)self->map + 8, (size_t)hlen) != 0)
        goto err;
    return self;
err:
    if (fd >= 0)
        close(fd);
    fp_st_close(&self);
    return NULL;
}

void fp_st_close(fp_safetensors **self_p)
{
    if (!self_p || !*self_p)
        return;
    fp_safetensors *self = *self_p;
    if (self->map)
        munmap((void *)self->map, self->map_len);
    for (size_t i = 0; i < self->n; i++)
        free(self->tensors[i].name);
    free(self->tensors);
    free(self->by_name);
    for (size_t i = 0; i < 2 * self->n_meta; i++)
        free(self->meta[i]);
    free(self->meta);
    free(self->path);
    free(self);
    *self_p = NULL;
}

const char *fp_st_path(const fp_safetensors *self) { return self->path; }

size_t fp_st_count(const fp_safetensors *self) { return self->n; }

const fp_st_tensor *fp_st_at(const fp_safetensors *self, size_t i)
{
    return i < self->n ? &self->tensors[i] : NULL;
}

const fp_st_tensor *fp_st_find(const fp_safetensors *self, const char *name)
{
    size_t lo = 0, hi = self->n;        /* binary search over by_name */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const fp_st_tensor *t = &self->tensors[self->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *fp_st_metadata(const fp_safetensors *self, const char *key)
{
    for (size_t i = 0; i < self->n_meta; i++)
        if (strcmp(self->meta[2 * i], key) == 0)
            return self->meta[2 * i + 1];
    return NULL;
}

const void *fp_st_data(const fp_safetensors *self, const fp_st_tensor *t)
{
    return self->data + t->begin;
}

void fp_st_release(const fp_safetensors *self, const fp_st_tensor *t)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)(self->data + t->begin) & ~(page - 1);
    uintptr_t hi = (uintptr_t)(self->data + t->end);
    /* Read-only and unmodified: the pages come back from the file if touched. */
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int fp_st_read_f32(const fp_safetensors *self, const fp_st_tensor *t, float *dst, size_t n)
{
    if (n != t->numel)
        return fp_error_set("%s: tensor '%s': caller expects %zu elements, the file holds %zu",
                            self->path, t->name, n, t->numel);
    const uint8_t *src = self->data + t->begin;
    switch (t->dtype) {
    case FP_DT_F32:
        memcpy(dst, src, n * 4);        /* offsets may be unaligned: memcpy, not a cast */
        return 0;
    case FP_DT_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = fp_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        return 0;
    case FP_DT_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = fp_bf16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        return 0;
    default:
        return fp_error_set("%s: tensor '%s': dtype %s cannot be read as float32 (supported: "
                            "F32, F16, BF16); convert the checkpoint first", self->path,
                            t->name, t->dtype_name);
    }
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "",
                               (long long)shape[i]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
}

int fp_st_check_shape(const fp_safetensors *self, const fp_st_tensor *t, int ndim,
                      const int64_t *shape)
{
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (ok)
        return 0;
    char want[160], got[160];
    shape_str(want, sizeof want, ndim, shape);
    shape_str(got, sizeof got, t->ndim, t->shape);
    return fp_error_set("%s: tensor '%s' has shape %s, expected %s (wrong base model or "
                        "config.json?)", self->path, t->name, got, want);
}

/* ---- writing ----------------------------------------------------------- */

/* Builds the header JSON (keys in the given order). NULL with error set. */
static char *build_header(const fp_st_entry *entries, size_t n, const char *const *meta,
                          const char *path)
{
    cJSON *root = cJSON_CreateObject();
    char *out = NULL;
    if (!root)
        goto oom;
    if (meta && meta[0]) {
        cJSON *md = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; md && meta[i]; i += 2) {
            if (!meta[i + 1]) {
                fp_error_set("%s: metadata key '%s' has no value", path, meta[i]);
                goto err;
            }
            if (!cJSON_AddStringToObject(md, meta[i], meta[i + 1]))
                goto oom;
        }
        if (!md)
            goto oom;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const fp_st_entry *e = &entries[i];
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++)
            numel *= (size_t)e->shape[d];
        cJSON *o = cJSON_AddObjectToObject(root, e->name);
        cJSON *sh = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
        cJSON *of = o ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
        if (!o || !cJSON_AddStringToObject(o, "dtype", "F32") || !sh || !of)
            goto oom;
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        off += (uint64_t)numel * 4;
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    }
    out = cJSON_PrintUnformatted(root);
    if (!out)
        goto oom;
    cJSON_Delete(root);
    return out;
oom:
    fp_error_set("%s: out of memory building the header", path);
err:
    cJSON_Delete(root);
    return NULL;
}

/* Refuses entries the reader would refuse: bad names, shapes, duplicates. */
static int check_entries(const fp_st_entry *entries, size_t n, const char *path)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const fp_st_entry *e = &entries[i];
        if (!e->name || !*e->name || strcmp(e->name, "__metadata__") == 0)
            return fp_error_set("%s: entry %zu has an empty or reserved name", path, i);
        if (e->ndim < 0 || e->ndim > FP_ST_MAX_DIMS)
            return fp_error_set("%s: tensor '%s': ndim %d out of range", path, e->name,
                                e->ndim);
        uint64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0 || (e->shape[d] && numel > (1ULL << 50) / (uint64_t)e->shape[d]))
                return fp_error_set("%s: tensor '%s': bad shape", path, e->name);
            numel *= (uint64_t)e->shape[d];
        }
        if (numel && !e->data)
            return fp_error_set("%s: tensor '%s': no data", path, e->name);
        total += numel * 4;
        if (total > (1ULL << 52))
            return fp_error_set("%s: tensors too large for one file", path);
        for (size_t j = 0; j < i; j++)
            if (strcmp(entries[j].name, e->name) == 0)
                return fp_error_set("%s: tensor '%s' given twice", path, e->name);
    }
    return 0;
}

int fp_st_write_f32(const char *path, const fp_st_entry *entries, size_t n,
                    const char *const *meta)
{
    char tmp[4096];
    FILE *f = NULL;
    char *hdr = NULL;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp)
        return fp_error_set("%s: path too long", path);
    if (check_entries(entries, n, path) != 0 || !(hdr = build_header(entries, n, meta, path)))
        return -1;
    /* Pad the header with spaces so the data section starts 8-byte aligned,
     * as the reference (Rust) writer does. */
    size_t hlen = strlen(hdr);
    size_t padded = (hlen + 7) & ~(size_t)7;
    uint64_t n8 = padded;
    f = fopen(tmp, "wb");
    if (!f) {
        fp_error_set("%s: cannot create: %s", tmp, strerror(errno));
        goto err;
    }
    int ok = fwrite(&n8, 8, 1, f) == 1 && fwrite(hdr, 1, hlen, f) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    for (size_t i = 0; ok && i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++)
            numel *= (size_t)entries[i].shape[d];
        ok = numel == 0 || fwrite(entries[i].data, 4, numel, f) == numel;
    }
    if (!ok || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        fp_error_set("%s: write failed: %s", tmp, strerror(errno));
        goto err;
    }
    FILE *fc = f;
    f = NULL;
    if (fclose(fc) != 0 || rename(tmp, path) != 0) {
        fp_error_set("%s: cannot finish writing (rename from %s): %s", path, tmp,
                     strerror(errno));
        goto err;
    }
    free(hdr);
    return 0;
err:
    if (f)
        fclose(f);
    unlink(tmp);
    free(hdr);
    return -1;
}
