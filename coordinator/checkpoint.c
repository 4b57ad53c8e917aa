/* checkpoint.c - save and validate the coordinator's checkpoint (checkpoint.h). */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char ckpt_magic[8] = {'F', 'P', 'C', 'K', 'P', 'T', '\r', '\n'};
#define CKPT_HEAD (8 + 4 + 4 + 40 + 72 + 32 + 8 * 4)
#define CKPT_SUM 32

/* ---- a growable byte buffer -------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int failed;
} ckbuf;

static void cb_put(ckbuf *b, const void *data, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void cb_u32(ckbuf *b, uint32_t v) { cb_put(b, &v, 4); }
static void cb_u64(ckbuf *b, uint64_t v) { cb_put(b, &v, 8); }

static void cb_str(ckbuf *b, const char *s, size_t width)
{
    char tmp[128] = {0};
    snprintf(tmp, width, "%s", s);
    cb_put(b, tmp, width);
}

/* ---- atomic write --------------------------------------------------------------- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int fd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int atomic_write(const char *path, const uint8_t *p, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    /* 0600: the global adapter and the strategy state are the operator's alone. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return fp_error_set("checkpoint %s: cannot create %s: %s", path, tmp, strerror(errno));
    if (write_all(fd, p, n) < 0 || fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return fp_error_set("checkpoint %s: cannot write: %s (disk full?)", path, strerror(e));
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return fp_error_set("checkpoint %s: cannot rename the temp file: %s", path, strerror(e));
    }
    if (fsync_dir_of(path) < 0)
        return fp_error_set("checkpoint %s: cannot fsync its directory: %s", path,
                            strerror(errno));
    return 0;
}

int checkpoint_save(const checkpoint *ck, const char *path)
{
    ckbuf b = {0};
    cb_put(&b, ckpt_magic, 8);
    cb_u32(&b, CKPT_VERSION);
    cb_u32(&b, ck->flags);
    cb_str(&b, ck->run_id, 40);
    cb_str(&b, ck->model_hash, 72);
    cb_str(&b, ck->strategy, 32);
    cb_u64(&b, ck->round);
    cb_u64(&b, ck->n_params);
    cb_u64(&b, ck->strategy_len);
    cb_u64(&b, ck->n_metrics);
    cb_put(&b, ck->adapter, ck->n_params * sizeof(float));
    if (ck->strategy_len)
        cb_put(&b, ck->strategy_state, ck->strategy_len);
    for (size_t i = 0; i < ck->n_metrics; i++) {
        size_t len = strlen(ck->metrics[i]);
        cb_u32(&b, (uint32_t)len);
        cb_put(&b, ck->metrics[i], len);
    }
    uint8_t sum[CKPT_SUM];
    if (!b.failed) {
        crypto_generichash(sum, sizeof sum, b.p, b.len, NULL, 0);
        cb_put(&b, sum, sizeof sum);
    }
    int rc;
    if (b.failed)
        rc = fp_error_set("checkpoint %s: out of memory", path);
    else
        rc = atomic_write(path, b.p, b.len);
    free(b.p);
    return rc;
}

/* ---- load ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t len, pos;
} ckread;

static int cr_take(ckread *r, void *dst, size_t n)
{
    if (n > r->len - r->pos)
        return -1;
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return 0;
}

static int cr_str(ckread *r, char *dst, size_t width)
{
    if (cr_take(r, dst, width) < 0)
        return -1;
    if (memchr(dst, '\0', width) == NULL)
        return -2;
    return 0;
}

static int read_whole(const char *path, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? 1 : fp_error_set("checkpoint %s: cannot open: %s", path,
                                                  strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fp_error_set("checkpoint %s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, f) != n) {
        free(p);
        fclose(f);
        return fp_error_set("checkpoint %s: cannot read %zu bytes", path, n);
    }
    fclose(f);
    *out = p;
    *len = n;
    return 0;
}

/* Header fields and the size they imply; everything bounded before use. */
static int parse_head(checkpoint *ck, ckread *r, const char *path, uint64_t *n_metrics)
{
    char magic[8];
    uint32_t version;
    uint64_t n_params, slen;
    if (r->len < CKPT_HEAD + CKPT_SUM)
        return fp_error_set("checkpoint %s: truncated: %zu bytes, a checkpoint has at least %d",
                            path, r->len, CKPT_HEAD + CKPT_SUM);
    if (cr_take(r, magic, 8) < 0 || memcmp(magic, ckpt_magic, 8) != 0)
        return fp_error_set("checkpoint %s: not a fedpeft coordinator checkpoint (bad magic)",
                            path);
    if (cr_take(r, &version, 4) < 0 || version != CKPT_VERSION)
        return fp_error_set("checkpoint %s: version %u, this coordinator reads version %u",
                            path, version, CKPT_VERSION);
    if (cr_take(r, &ck->flags, 4) < 0 || cr_str(r, ck->run_id, 40) != 0 ||
        cr_str(r, ck->model_hash, 72) != 0 || cr_str(r, ck->strategy, 32) != 0)
        return fp_error_set("checkpoint %s: corrupt header (unterminated name)", path);
    if (cr_take(r, &ck->round, 8) < 0 || cr_take(r, &n_params, 8) < 0 ||
        cr_take(r, &slen, 8) < 0 || cr_take(r, n_metrics, 8) < 0)
        return fp_error_set("checkpoint %s: truncated header", path);
    size_t body = r->len - CKPT_HEAD - CKPT_SUM;
    if (n_params == 0 || n_params > body / 4)
        return fp_error_set("checkpoint %s: adapter of %llu floats does not fit in the file "
                            "(%zu bytes): truncated or corrupt", path,
                            (unsigned long long)n_params, r->len);
    if (slen > CKPT_MAX_STRATEGY || slen > body - n_params * 4)
        return fp_error_set("checkpoint %s: strategy state of %llu bytes does not fit: "
                            "truncated or corrupt", path, (unsigned long long)slen);
    if (*n_metrics > CKPT_MAX_METRICS || *n_metrics > (body - n_params * 4 - slen) / 4)
        return fp_error_set("checkpoint %s: %llu metrics lines do not fit: truncated or corrupt",
                            path, (unsigned long long)*n_metrics);
    ck->n_params = (size_t)n_params;
    ck->strategy_len = (size_t)slen;
    return 0;
}

static int parse_body(checkpoint *ck, ckread *r, const char *path, uint64_t n_metrics)
{
    ck->adapter = malloc(ck->n_params * sizeof(float));
    ck->strategy_state = malloc(ck->strategy_len ? ck->strategy_len : 1);
    ck->metrics = calloc(n_metrics ? n_metrics : 1, sizeof(char *));
    if (!ck->adapter || !ck->strategy_state || !ck->metrics)
        return fp_error_set("checkpoint %s: out of memory", path);
    if (cr_take(r, ck->adapter, ck->n_params * sizeof(float)) < 0 ||
        cr_take(r, ck->strategy_state, ck->strategy_len) < 0)
        return fp_error_set("checkpoint %s: truncated", path);
    for (uint64_t i = 0; i < n_metrics; i++) {
        uint32_t len;
        if (cr_take(r, &len, 4) < 0 || len > CKPT_MAX_LINE || len > r->len - r->pos)
            return fp_error_set("checkpoint %s: metrics line %llu is truncated or corrupt", path,
                                (unsigned long long)i);
        char *line = malloc((size_t)len + 1);
        if (!line)
            return fp_error_set("checkpoint %s: out of memory", path);
        memcpy(line, r->p + r->pos, len);
        line[len] = '\0';
        r->pos += len;
        ck->metrics[ck->n_metrics++] = line;
        if (strlen(line) != len)
            return fp_error_set("checkpoint %s: metrics line %llu holds a NUL byte", path,
                                (unsigned long long)i);
    }
    if (r->len - r->pos != 0)
        return fp_error_set("checkpoint %s: %zu unexpected bytes after the metrics", path,
                            r->len - r->pos);
    for (size_t i = 0; i < ck->n_params; i++)
        if (!isfinite(ck->adapter[i]))
            return fp_error_set("checkpoint %s: adapter value %zu is not finite", path, i);
    return 0;
}

int checkpoint_load(checkpoint *ck, const char *path)
{
    memset(ck, 0, sizeof *ck);
    uint8_t *data;
    size_t len;
    int rc = read_whole(path, &data, &len);
    if (rc != 0)
        return rc;
    ckread r = {data, len, 0};
    uint64_t n_metrics = 0;
    if (parse_head(ck, &r, path, &n_metrics) < 0)
        goto err;
    uint8_t sum[CKPT_SUM];
    crypto_generichash(sum, sizeof sum, data, len - CKPT_SUM, NULL, 0);
    if (sodium_memcmp(sum, data + len - CKPT_SUM, CKPT_SUM) != 0) {
        fp_error_set("checkpoint %s: checksum mismatch: the file is corrupt (move it away to "
                     "start the run afresh)", path);
        goto err;
    }
    r.len = len - CKPT_SUM;
    if (parse_body(ck, &r, path, n_metrics) < 0)
        goto err;
    free(data);
    return 0;
err:
    free(data);
    checkpoint_clear(ck);
    return -1;
}

void checkpoint_clear(checkpoint *ck)
{
    if (!ck)
        return;
    free(ck->adapter);
    free(ck->strategy_state);
    for (size_t i = 0; i < ck->n_metrics; i++)
        free(ck->metrics[i]);
    free(ck->metrics);
    memset(ck, 0, sizeof *ck);
}

int checkpoint_add_metrics(checkpoint *ck, const char *line)
{
    size_t len = strlen(line);
    if (len > CKPT_MAX_LINE || ck->n_metrics >= CKPT_MAX_METRICS)
        return fp_error_set("checkpoint: metrics line too long or too many lines");
    char **m = realloc(ck->metrics, (ck->n_metrics + 1) * sizeof *m);
    if (!m)
        return fp_error_set("checkpoint: out of memory");
    ck->metrics = m;
    if (!(m[ck->n_metrics] = strdup(line)))
        return fp_error_set("checkpoint: out of memory");
    ck->n_metrics++;
    return 0;
}
