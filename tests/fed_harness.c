/* fed_harness.c - see fed_harness.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fed_harness.h"
#include "safetensors.h"
#include "test_util.h"

double fh_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int fh_free_port(int *keep)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (keep) {
        assert_int_equal(listen(fd, 4), 0);
        *keep = fd;
    } else {
        close(fd);
    }
    return ntohs(a.sin_port);
}

int fh_model_convert(const char *dir)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' convert --llama2c '%s/data/stories260K/stories260K.bin' "
             "--tokenizer '%s/data/stories260K/tok512.bin' --out '%s/model' >/dev/null",
             FP_TOOL, FP_SOURCE_DIR, FP_SOURCE_DIR, dir);
    return tu_run(cmd, NULL) == 0 ? 0 : -1;
}

int fh_shards(const char *dir, int n, int lines)
{
    char cmd[8192];
    for (int k = 0; k < n; k++) {
        snprintf(cmd, sizeof cmd, "sed -n '%d,%dp' '%s/data/tinyshakespeare/input.txt' > "
                 "'%s/shard-%d.txt'", 1 + k * lines, (k + 1) * lines, FP_SOURCE_DIR, dir, k);
        if (tu_run(cmd, NULL) != 0)
            return -1;
    }
    return 0;
}

int fh_base_setup(const char *tag, int n, int lines, char *out, size_t cap)
{
    snprintf(out, cap, "%s", tu_tempdir(tag));
    return fh_model_convert(out) == 0 && fh_shards(out, n, lines) == 0 ? 0 : -1;
}

int fh_keygen(const char *dir, int n)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/keys' && '%s' keygen --out '%s/keys' --name "
             "coordinator >/dev/null", dir, FP_TOOL, dir);
    if (tu_run(cmd, NULL) != 0)
        return -1;
    for (int k = 0; k < n; k++) {
        snprintf(cmd, sizeof cmd, "'%s' keygen --out '%s/keys' --name w%d >> '%s/keys/allowlist'",
                 FP_TOOL, dir, k, dir);
        if (tu_run(cmd, NULL) != 0)
            return -1;
    }
    return 0;
}

float *fh_read_f32(const char *path, size_t *n)
{
    size_t len = 0;
    char *b = tu_read_file(path, &len);
    if (!b)
        fail_msg("missing %s", path);
    *n = len / 4;
    return (float *)(void *)b;
}

pid_t fh_spawn(char *const argv[], const char *log, const char *const env[])
{
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *o = freopen(log, "w", stdout);
        if (!o || dup2(fileno(stdout), 2) < 0)
            _exit(126);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        for (int i = 0; env && env[i]; i++) {
            char kv[4608];
            snprintf(kv, sizeof kv, "%s", env[i]);
            char *eq = strchr(kv, '=');
            if (!eq)
                _exit(126);
            *eq = '\0';
            setenv(kv, eq + 1, 1);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

pid_t fh_spawn_dump(char *const argv[], const char *log, const char *env1, const char *dump)
{
    char d[4400];
    snprintf(d, sizeof d, "FEDPEFT_TEST_DUMP_DIR=%s", dump);
    const char *env[] = {d, env1, NULL};
    return fh_spawn(argv, log, env);
}

int fh_wait_exit(pid_t pid, double timeout_s, const char *what)
{
    timeout_s *= tu_slow();     /* sanitizer builds, FP_TEST_SLOW */
    double end = fh_now() + timeout_s;
    int st;
    while (fh_now() < end) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    if (what)
        fail_msg("%s (pid %d) still running after %.0f s", what, (int)pid, timeout_s);
    return -1;
}

long fh_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

void fh_kill(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    double end = fh_now() + 5;
    int st;
    while (waitpid(pid, &st, WNOHANG) == 0 && fh_now() < end)
        usleep(20000);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

int fh_log_has(const char *path, const char *needle)
{
    char *t = tu_read_file(path, NULL);
    int yes = t && strstr(t, needle);
    free(t);
    return yes;
}

int fh_log_wait(const char *path, const char *needle, double timeout_s)
{
    double end = fh_now() + timeout_s * tu_slow();
    do {
        if (fh_log_has(path, needle))
            return 1;
        usleep(50000);
    } while (fh_now() < end);
    return 0;
}

void fh_log_print(const char *path)
{
    char *t = tu_read_file(path, NULL);
    printf("# ---- %s ----\n%s\n# ----\n", path, t ? t : "(missing)");
    free(t);
}

cJSON **fh_metrics_lines(const char *path, int *n)
{
    *n = 0;
    char *text = tu_read_file(path, NULL);
    if (!text)
        return NULL;
    cJSON **rows = calloc(1024, sizeof *rows);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && *n < 1024;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        if (!o)
            fail_msg("%s: line %d is not JSON: %s", path, *n + 1, line);
        rows[(*n)++] = o;
    }
    free(text);
    return rows;
}

void fh_metrics_free(cJSON **rows, int n)
{
    for (int i = 0; i < n; i++)
        cJSON_Delete(rows[i]);
    free(rows);
}

double fh_metric_number(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("metrics line has no number '%s'", key);
    return v->valuedouble;
}

void fh_print_losses(const char *what, cJSON **rows, int n)
{
    printf("%s: validation loss", what);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(rows[i], "val_loss");
        if (!cJSON_IsNumber(v)) {
            char *line = cJSON_PrintUnformatted(rows[i]);
            printf("\n");
            fail_msg("round %d has no val_loss (abandoned, or no evaluation answer before "
                     "eval_deadline_s): %s", i, line ? line : "?");
        }
        printf(" r%d=%.4f", i, v->valuedouble);
    }
    printf("\n");
}

double fh_adapter_max_diff(const char *a_dir, const char *b_dir, size_t *n_tensors)
{
    fp_safetensors *a = fp_st_open(tu_path(a_dir, "adapter_model.safetensors"));
    fp_safetensors *b = fp_st_open(tu_path(b_dir, "adapter_model.safetensors"));
    if (!a || !b)
        fail_msg("cannot open the adapters: %s", fp_error_get());
    assert_int_equal(fp_st_count(a), fp_st_count(b));
    double worst = 0;
    for (size_t i = 0; i < fp_st_count(a); i++) {
        const fp_st_tensor *ta = fp_st_at(a, i), *tb = fp_st_find(b, ta->name);
        if (!tb)
            fail_msg("tensor %s missing from %s", ta->name, b_dir);
        assert_int_equal(ta->numel, tb->numel);
        float *x = malloc(ta->numel * sizeof *x), *y = malloc(ta->numel * sizeof *y);
        assert_int_equal(fp_st_read_f32(a, ta, x, ta->numel), 0);
        assert_int_equal(fp_st_read_f32(b, tb, y, tb->numel), 0);
        for (size_t j = 0; j < ta->numel; j++)
            worst = fmax(worst, fabs((double)x[j] - (double)y[j]));
        free(x);
        free(y);
    }
    *n_tensors = fp_st_count(a);
    fp_st_close(&a);
    fp_st_close(&b);
    return worst;
}

void fh_fed_init(fh_fed *f, const char *tag, const char *base, int n_workers)
{
    assert_true(n_workers > 0 && n_workers <= FH_MAX_WORKERS);
    memset(f, 0, sizeof *f);
    f->base = base;
    f->n_workers = n_workers;
    snprintf(f->dir, sizeof f->dir, "%s", tu_tempdir(tag));
    snprintf(f->cfg, sizeof f->cfg, "%s/fed.ini", f->dir);
    snprintf(f->state, sizeof f->state, "%s/state", f->dir);
    snprintf(f->metrics, sizeof f->metrics, "%s/metrics.jsonl", f->state);
    snprintf(f->adapter, sizeof f->adapter, "%s/adapter", f->dir);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", fh_free_port(NULL));
}

void fh_fed_write_ini(const fh_fed *f, const char *run_section, int rank, int local_steps,
                      const char *extra)
{
    char ini[8192];
    snprintf(ini, sizeof ini,
             "[run]\n%s\nstate_dir = %s\nout_dir = %s\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = %d\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = %d\nbatch = 4\nseq = 32\nlr = 5e-3\n"
             "[network]\nendpoint = %s\nheartbeat_ms = 500\n"
             "[worker]\nendpoint = %s\nconnect_retries = 30\nretry_backoff_ms = 200\n"
             "val_fraction = 0.1\n%s",
             run_section, f->state, f->adapter, f->base, rank, local_steps, f->endpoint,
             f->endpoint, extra ? extra : "");
    assert_int_equal(tu_write_file(f->cfg, ini, strlen(ini)), 0);
}

void fh_fed_use_dump(fh_fed *f)
{
    snprintf(f->dump, sizeof f->dump, "%s/dump", f->dir);
    assert_int_equal(mkdir(f->dump, 0755), 0);
}

void fh_coordinator_start(fh_fed *f)
{
    char log[4300], sk[4400], al[4400];
    snprintf(log, sizeof log, "%s/coordinator-%d.log", f->dir, ++f->coord_runs);
    snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/coordinator.key", f->dir);
    snprintf(al, sizeof al, "--security.allowlist=%s/keys/allowlist", f->dir);
    char *argv[] = {FP_COORDINATOR, "--config", f->cfg, f->curve ? sk : "--insecure",
                    f->curve ? al : NULL, NULL};
    /* fh_fed_use_dump: the coordinator's test dumps too (rounds_dump) */
    f->coord = access(f->dump, F_OK) == 0 ? fh_spawn_dump(argv, log, NULL, f->dump)
                                          : fh_spawn(argv, log, NULL);
}

void fh_worker_start(fh_fed *f, int k)
{
    char log[4300], id[64], data[4300], sk[4400], ck[4400], rank[64];
    snprintf(log, sizeof log, "%s/w%d.log", f->dir, k);
    snprintf(id, sizeof id, "--worker.id=w%d", k);
    snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", f->base, k);
    snprintf(sk, sizeof sk, "--security.secret_key=%s/keys/w%d.key", f->dir, k);
    snprintf(ck, sizeof ck, "--security.coordinator_key=%s/keys/coordinator.pub", f->dir);
    snprintf(rank, sizeof rank, "--worker.rank=%d", f->rank[k]);
    char *argv[12] = {FP_WORKER, "--config", f->cfg, id, data, "--worker.threads=1"};
    int a = 6;
    if (f->curve) {
        argv[a++] = sk;
        argv[a++] = ck;
    } else {
        argv[a++] = "--insecure";
    }
    if (f->pass_rank)
        argv[a++] = rank;
    argv[a] = NULL;
    char poison[4400], dump[4400];
    const char *env[3] = {NULL};
    int e = 0;
    if (f->poison[k]) {
        snprintf(poison, sizeof poison, "FEDPEFT_TEST_POISON=%s", f->poison[k]);
        env[e++] = poison;
    }
    if (f->dump[0]) {
        snprintf(dump, sizeof dump, "FEDPEFT_TEST_DUMP_DIR=%s", f->dump);
        env[e++] = dump;
    }
    f->workers[k] = fh_spawn(argv, log, env);
}

void fh_fed_start(fh_fed *f)
{
#ifndef FEDPEFT_TEST_HOOKS
    fail_msg("the end-to-end tests drive the programs' test hooks: configure with "
             "-DFEDPEFT_TEST_HOOKS=ON (the README's test command does)");
#endif
    fh_coordinator_start(f);
    for (int k = 0; k < f->n_workers; k++)
        fh_worker_start(f, k);
}

void fh_fed_finish(fh_fed *f, double run_timeout_s)
{
    int rc = fh_wait_exit(f->coord, run_timeout_s, "the coordinator");
    if (rc != 0)
        fail_msg("the coordinator exited %d; see %s/coordinator-%d.log", rc, f->dir, f->coord_runs);
    f->coord = 0;
    for (int k = 0; k < f->n_workers; k++) {
        if (f->workers[k] <= 0)
            continue;
        rc = fh_wait_exit(f->workers[k], 30, "a worker after SHUTDOWN");
        if (rc != 0)
            fail_msg("worker w%d exited %d after the run; see %s/w%d.log", k, rc, f->dir, k);
        f->workers[k] = 0;
    }
}

void fh_fed_reap(fh_fed *f)
{
    fh_kill(f->coord);
    for (int k = 0; k < FH_MAX_WORKERS; k++)
        fh_kill(f->workers[k]);
    memset(f, 0, sizeof *f);
}

void fh_fed_wait_round(fh_fed *f, int r, double timeout_s)
{
    double end = fh_now() + timeout_s;
    while (fh_now() < end) {
        int n;
        cJSON **rows = fh_metrics_lines(f->metrics, &n);
        int seen = 0;
        for (int i = 0; i < n; i++)
            seen |= (int)fh_metric_number(rows[i], "round") == r;
        fh_metrics_free(rows, n);
        if (seen)
            return;
        int st;
        if (waitpid(f->coord, &st, WNOHANG) == f->coord) {
            f->coord = 0;
            fail_msg("the coordinator ended before round %d; see %s", r, f->dir);
        }
        usleep(50000);
    }
    fail_msg("no metrics line for round %d within %.0f s (%s)", r, timeout_s, f->metrics);
}

cJSON **fh_fed_metrics(const fh_fed *f, int R, int *n)
{
    cJSON **rows = fh_metrics_lines(f->metrics, n);
    if (!rows)
        fail_msg("no %s", f->metrics);
    assert_int_equal(*n, R + 1);
    for (int i = 0; i <= R; i++)
        assert_int_equal((int)fh_metric_number(rows[i], "round"), i);
    return rows;
}

/* ---- the status page -------------------------------------------------------- */

int fh_http_get(int port, const char *path, char **body)
{
    *body = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    assert_non_null(buf);
    ssize_t got;
    while ((got = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)got;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    close(fd);
    buf[len] = '\0';
    int code = -1;
    char *sep = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1 || !sep) {
        free(buf);
        return -1;
    }
    *body = strdup(sep + 4);
    free(buf);
    return code;
}
