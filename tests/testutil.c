/* testutil.c - the helpers declared in test_util.h. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Line-buffered stdout in every test binary: when ctest kills a test at its
 * time limit, what it printed so far (which case, which figures) still shows. */
__attribute__((constructor)) static void tu_line_buffered(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
}

static char *slot(void)
{
    static char bufs[8][4096];
    static int next;
    return bufs[next++ & 7];
}

const char *tu_shared_data(void)
{
    const char *env = getenv("FP_SHARED_DATA");
    if (env && *env)
        return env;
    char *p = slot();
    snprintf(p, 4096, "%s/../shared/data", FP_SOURCE_DIR);
    return p;
}

const char *tu_fixture(const char *rel)
{
    char *p = slot();
    snprintf(p, 4096, "%s/tests/fixtures/%s", FP_SOURCE_DIR, rel);
    return p;
}

const char *tu_data(const char *rel)
{
    char *p = slot();
    snprintf(p, 4096, "%s/data/%s", FP_SOURCE_DIR, rel);
    return p;
}

const char *tu_path(const char *a, const char *b)
{
    char *p = slot();
    snprintf(p, 4096, "%s/%s", a, b);
    return p;
}

const char *tu_tempdir(const char *tag)
{
    char *p = slot();
    snprintf(p, 4096, "%s/test-tmp/%s-%d", FP_BINARY_DIR, tag, (int)getpid());
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", p, p);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot create %s\n", p);
        exit(1);
    }
    return p;
}

int tu_run(const char *cmd, char **out)
{
    char full[8192];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *f = popen(full, "r");
    if (!f)
        return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[len] = '\0';
    int st = pclose(f);
    if (out)
        *out = buf;
    else
        free(buf);
    if (st == -1)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = (size_t)n;
    return buf;
}

int tu_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

#if defined(__SANITIZE_ADDRESS__)
#define TU_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_SANITIZED 1
#endif
#endif

double tu_slow(void)
{
    double f = 1;
#ifdef TU_SANITIZED
    f = 3;
#endif
    const char *env = getenv("FP_TEST_SLOW");
    if (env && *env) {
        double v = strtod(env, NULL);
        if (v == 1)
            v = 3;
        if (v > f)
            f = v;
    }
    return f;
}

fp_model *tu_gqa_model(const char *arch, int dim, int layers, int hidden, int vocab,
                       int qkv_bias, uint64_t seed)
{
    fp_model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.arch, sizeof c.arch, "%s", arch);
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.vocab_size = vocab;
    c.max_seq_len = 128;
    c.rms_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.qkv_bias = qkv_bias;
    c.bos_id = 1;
    c.eos_id = 2;
    fp_model *m = fp_model_new(&c);
    if (m)
        fp_model_randomize(m, seed, 0.1f);
    return m;
}
