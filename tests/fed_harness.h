/* fed_harness.h - the end-to-end harness shared by the federation tests: the
 * bundled model and Shakespeare shards, the real fedpeft-coordinator and
 * fedpeft-worker processes (fork/exec, output to a log), waiting for their
 * exits, metrics.jsonl, adapters and logs. Linked into every test binary; it
 * needs only libc, cmocka, cJSON and fedpeft_common. Helpers that check fail
 * the running cmocka test (fail_msg) rather than return an error.
 * Time limits that the helpers scale by tu_slow() say so. */
#ifndef FP_FED_HARNESS_H
#define FP_FED_HARNESS_H

#include <stddef.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

#define FH_MAX_WORKERS 8

/* ---- basics ---------------------------------------------------------------- */

/* CLOCK_MONOTONIC in seconds. */
double fh_now(void);
/* A loopback TCP port the kernel picks (bind to 0). With `keep`, the socket
 * stays bound and listening (its fd in *keep); else it is closed. */
int fh_free_port(int *keep);
/* `fedpeft convert` of the bundled stories260K into DIR/model; 0 on success. */
int fh_model_convert(const char *dir);
/* DIR/shard-K.txt for K < n: lines K*lines+1 .. (K+1)*lines of tinyshakespeare;
 * 0 on success. */
int fh_shards(const char *dir, int n, int lines);
/* A fresh tu_tempdir(tag) into out (cap bytes) with the model and n shards of
 * `lines` lines each (fh_model_convert + fh_shards); 0 on success. */
int fh_base_setup(const char *tag, int n, int lines, char *out, size_t cap);

/* DIR/keys: `fedpeft keygen` for "coordinator" and w0..w(n-1), and
 * DIR/keys/allowlist with every worker; 0 on success. */
int fh_keygen(const char *dir, int n);
/* A whole file as floats (malloc'd; *n floats); fails the test when missing. */
float *fh_read_f32(const char *path, size_t *n);

/* ---- processes ------------------------------------------------------------- */

/* Forks and execs argv[0] with stdout and stderr to `log` (truncated),
 * OPENBLAS_NUM_THREADS=1 and each "NAME=VALUE" of env (NULL-terminated list,
 * or NULL). Returns the pid. */
pid_t fh_spawn(char *const argv[], const char *log, const char *const env[]);
/* fh_spawn with FEDPEFT_TEST_DUMP_DIR=dump and env1 ("NAME=VALUE" or NULL). */
pid_t fh_spawn_dump(char *const argv[], const char *log, const char *env1, const char *dump);
/* Exit status of pid (128 + signal when killed) within timeout_s * tu_slow().
 * After that it is SIGKILLed and reaped; then fails the test naming `what`,
 * or returns -1 when what is NULL. */
int fh_wait_exit(pid_t pid, double timeout_s, const char *what);
/* SIGTERM, up to 5 s to exit, then SIGKILL; reaps it. No-op for pid <= 0. */
void fh_kill(pid_t pid);
/* VmRSS of pid in KiB (/proc/PID/status), -1 when it is gone. */
long fh_rss_kib(pid_t pid);

/* ---- logs ------------------------------------------------------------------ */

/* Whether the file at path contains needle now. */
int fh_log_has(const char *path, const char *needle);
/* Polls fh_log_has until timeout_s * tu_slow(); whether it appeared. */
int fh_log_wait(const char *path, const char *needle, double timeout_s);
/* Prints the file to stdout between "# ---- PATH ----" markers. */
void fh_log_print(const char *path);

/* ---- metrics.jsonl --------------------------------------------------------- */

/* Every line of a metrics.jsonl as a parsed object (index = line; at most 1024);
 * NULL (and *n = 0) if the file is missing. Fails on a line that is not JSON.
 * Free with fh_metrics_free. */
cJSON **fh_metrics_lines(const char *path, int *n);
void fh_metrics_free(cJSON **rows, int n);
/* The number o[key]; fails when there is none. */
double fh_metric_number(const cJSON *o, const char *key);

/* Prints "WHAT: validation loss r0=... r1=..." for the rows; fails naming the
 * round (and why it was abandoned) when one has no val_loss. */
void fh_print_losses(const char *what, cJSON **rows, int n);

/* ---- adapters -------------------------------------------------------------- */

/* The largest absolute difference between the tensors of DIR_A and DIR_B's
 * adapter_model.safetensors (same names, same sizes, or the test fails);
 * *n_tensors: how many. */
double fh_adapter_max_diff(const char *a_dir, const char *b_dir, size_t *n_tensors);

/* ---- a federation: one coordinator, n workers, one config file ------------- */

typedef struct {
    char dir[4096], cfg[4200], state[4200], metrics[4300], adapter[4300], dump[4300];
    char endpoint[64];
    const char *base;           /* model/ and shard-K.txt (and keys/ with curve) */
    int n_workers;
    pid_t coord, workers[FH_MAX_WORKERS];
    int coord_runs;             /* DIR/coordinator-N.log of the N-th start */
    int curve;                  /* keys in DIR/keys; else every process runs --insecure */
    int pass_rank;              /* pass --worker.rank=rank[k] to every worker */
    int rank[FH_MAX_WORKERS];
    const char *poison[FH_MAX_WORKERS]; /* FEDPEFT_TEST_POISON of worker k, or NULL */
} fh_fed;

/* Clears f and names its files: DIR = tu_tempdir(tag), DIR/fed.ini (the caller
 * writes it), DIR/state/metrics.jsonl, DIR/adapter, and a free loopback
 * endpoint. `base` must outlive f. */
void fh_fed_init(fh_fed *f, const char *tag, const char *base, int n_workers);
/* Writes DIR/fed.ini, the whole federation in one file: run_section in [run]
 * with the state and out dirs, BASE/model, LoRA rank `rank` (alpha 8, all
 * targets), local_steps steps of batch 4 x seq 32 at lr 5e-3, the endpoint
 * (heartbeat 500 ms), [worker] retries and val_fraction 0.1; then `extra`
 * (sections the test adds or overrides; may be NULL). */
void fh_fed_write_ini(const fh_fed *f, const char *run_section, int rank, int local_steps,
                      const char *extra);
/* Makes DIR/dump: the coordinator and workers get FEDPEFT_TEST_DUMP_DIR=DIR/dump. */
void fh_fed_use_dump(fh_fed *f);
/* Starts the coordinator (again): DIR/coordinator-N.log. */
void fh_coordinator_start(fh_fed *f);
/* Starts worker k (id wK, data BASE/shard-K.txt, one thread): DIR/wK.log. */
void fh_worker_start(fh_fed *f, int k);
/* The coordinator, then every worker. */
void fh_fed_start(fh_fed *f);
/* The coordinator ends the run with 0 within run_timeout_s and every worker
 * still running leaves with 0 within 30 s (both scaled by tu_slow()). */
void fh_fed_finish(fh_fed *f, double run_timeout_s);
/* Kills and reaps whatever is left (teardown, failure paths); clears f. */
void fh_fed_reap(fh_fed *f);
/* Waits (timeout_s, unscaled) until metrics.jsonl has a line for round r;
 * fails if the coordinator ends first. */
void fh_fed_wait_round(fh_fed *f, int r, double timeout_s);
/* The metrics lines, after checking rounds 0..R appear once each, in order. */
cJSON **fh_fed_metrics(const fh_fed *f, int R, int *n);

/* ---- the status page -------------------------------------------------------- */

/* GET path from 127.0.0.1:port (HTTP/1.0): the status code (-1: no connection)
 * and the body (malloc'd, NUL-terminated) in *body. */
int fh_http_get(int port, const char *path, char **body);

#endif
