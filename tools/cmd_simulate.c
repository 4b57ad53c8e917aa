/* cmd_simulate.c - `fedpeft simulate`: a whole federation on this machine.
 *
 *   fedpeft simulate --config FILE [--section.key=value ...]
 *
 * 1. converts the llama2.c model ([simulate] llama2c + tokenizer_bin) into
 *    OUT/model (`fedpeft convert`), or uses [simulate] model in place (a real
 *    safetensors checkpoint: every process maps the same file);
 * 2. partitions [simulate] data into one shard per worker (`fedpeft partition
 *    --by PARTITION --seed [run] seed`) in OUT/shards;
 * 3. starts fedpeft-coordinator and N fedpeft-worker processes (found next to
 *    this binary) on 127.0.0.1, each with the same config file plus overrides,
 *    logging to OUT/logs/{coordinator,wNN}.log;
 * 4. prints one table row per round as OUT/state/metrics.jsonl grows, and
 *    leaves the final adapter in OUT/adapter.
 * Overrides go to the program whose section they name: [simulate] here,
 * [model] and [worker] to the workers, [model] and the coordinator's sections
 * to the coordinator. Ctrl-C (or SIGTERM) stops every process and exits 130.
 * Unless --insecure ([simulate] insecure), it first makes CURVE key pairs for
 * the coordinator and every worker in OUT/keys, with OUT/keys/allowlist.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "keys.h"
#include "sim_table.h"
#include "sim_throttle.h"

#define SIM_MAX_WORKERS 1024
#define SIM_WORKER_NICE 19   /* workers yield to the coordinator (start_all) */
#define SIM_MAX_ARGS 256

typedef struct {
    int workers;
    char data[1024], partition[256], llama2c[1024], tokenizer_bin[1024], out_dir[1024];
    char model[1024];           /* an existing model directory, used in place ("" = convert) */
    int port;
    int http_port;              /* the coordinator's status page (0 = off) */
    int insecure;               /* no CURVE keys: plain TCP (--insecure) */
    char slow_workers[1024];    /* ID:FACTOR,... (sim_throttle.h) */
} sim_config;

#define F(field) offsetof(sim_config, field)
#define S(field) sizeof(((sim_config *)0)->field)
static const fp_cfg_key sim_keys[] = {
    {"simulate", "workers", FP_CFG_INT, 1, SIM_MAX_WORKERS, "8", F(workers), 0, NULL,
     "worker processes to start (one data shard each)"},
    {"simulate", "data", FP_CFG_STRING, 0, 0, "data/tinyshakespeare/input.txt", F(data), S(data),
     NULL, "the data file partitioned among the workers"},
    {"simulate", "partition", FP_CFG_STRING, 0, 0, "speaker", F(partition), S(partition), NULL,
     "fedpeft partition --by: speaker, iid, dirichlet:ALPHA:FIELD, field:NAME"},
    {"simulate", "llama2c", FP_CFG_STRING, 0, 0, "data/stories260K/stories260K.bin", F(llama2c),
     S(llama2c), NULL, "llama2.c checkpoint converted into OUT/model"},
    {"simulate", "tokenizer_bin", FP_CFG_STRING, 0, 0, "data/stories260K/tok512.bin",
     F(tokenizer_bin), S(tokenizer_bin), NULL, "its llama2.c tokenizer"},
    {"simulate", "model", FP_CFG_STRING, 0, 0, "", F(model), S(model), NULL,
     "a model directory (config.json, model.safetensors, tokenizer.json: a Hugging Face "
     "LLaMA-family checkpoint) every process uses in place; empty: convert llama2c"},
    {"simulate", "out_dir", FP_CFG_STRING, 0, 0, "sim-out", F(out_dir), S(out_dir), NULL,
     "everything goes here: model, shards, logs, state (metrics.jsonl), adapter"},
    {"simulate", "port", FP_CFG_INT, 0, 65535, "0", F(port), 0, NULL,
     "coordinator port on 127.0.0.1 (0 = pick a free one)"},
    {"simulate", "http_port", FP_CFG_INT, 0, 65535, "0", F(http_port), 0, NULL,
     "the coordinator's status page on http://127.0.0.1:PORT/ (0 = off)"},
    {"simulate", "insecure", FP_CFG_BOOL, 0, 1, "false", F(insecure), 0, NULL,
     "no CURVE: every program runs --insecure (plain TCP); default: keys in OUT/keys"},
    {"simulate", "slow_workers", FP_CFG_STRING, 0, 0, "", F(slow_workers), S(slow_workers), NULL,
     "ID:FACTOR,... e.g. w03:4: those workers run FACTOR times slower (each runs only 1/FACTOR "
     "of every 100 ms: SIGSTOP/SIGCONT)"},
    {NULL},
};
#undef F
#undef S

/* The coordinator's [run] keys, read only for the table's "round r/R" and the
 * partition seed (mirrors coordinator/coord_config.c; if they drift, the
 * table just omits R). */
typedef struct {
    int rounds;
    uint64_t seed;
    double target_loss;
    char state_dir[1024], out_dir[1024];
    int save_every;
} sim_run_view;
#define F(field) offsetof(sim_run_view, field)
#define S(field) sizeof(((sim_run_view *)0)->field)
static const fp_cfg_key run_keys[] = {
    {"run", "rounds", FP_CFG_INT, 1, 100000, "10", F(rounds), 0, NULL, ""},
    {"run", "seed", FP_CFG_U64, 0, 0, "1234", F(seed), 0, NULL, ""},
    {"run", "target_loss", FP_CFG_DOUBLE, 0, 1e9, "0", F(target_loss), 0, NULL, ""},
    {"run", "state_dir", FP_CFG_STRING, 0, 0, "", F(state_dir), S(state_dir), NULL, ""},
    {"run", "out_dir", FP_CFG_STRING, 0, 0, "", F(out_dir), S(out_dir), NULL, ""},
    {"run", "save_every", FP_CFG_INT, 0, 1000000, "0", F(save_every), 0, NULL, ""},
    {NULL},
};
#undef F
#undef S

static const char *const not_simulate[] = {"run", "model", "lora", "train", "sampling", "round",
                                           "network", "strategy", "worker", "http", "security",
                                           "secagg", "dp", "privacy", NULL};
static const char *const not_run[] = {"simulate", "model", "lora", "train", "sampling", "round",
                                      "network", "strategy", "worker", "http", "security",
                                      "secagg", "dp", "privacy", NULL};
static const char *const coord_sections[] = {"run", "model", "lora", "train", "sampling",
                                             "round", "network", "strategy", "http", "security", "secagg", "dp",
                                             NULL};
static const char *const worker_sections[] = {"model", "worker", "security", "privacy", NULL};

static volatile sig_atomic_t sim_stop;
static void on_signal(int sig) { sim_stop = sig; }

static const char usage[] =
    "usage: fedpeft simulate --config FILE [--section.key=value ...]\n"
    "  Runs a whole federation on this machine: converts [simulate] llama2c into\n"
    "  OUT/model (or uses [simulate] model in place), partitions [simulate] data into one shard per worker, starts\n"
    "  fedpeft-coordinator and [simulate] workers fedpeft-worker processes on\n"
    "  127.0.0.1 and prints one row per round. OUT = [simulate] out_dir: model/,\n"
    "  shards/, logs/ (one log per process), state/ (metrics.jsonl, checkpoint),\n"
    "  adapter/ (the final PEFT adapter). The same file configures the coordinator\n"
    "  ([run] [lora] [train] [sampling] [round] [network] [strategy]) and the\n"
    "  workers ([worker]); overrides go to the program owning the section.\n"
    "  Simulate sets [sampling] min_workers to the number of workers (override it\n"
    "  to sample a fraction). Ctrl-C stops every process. Traffic uses CURVE with\n"
    "  fresh keys in OUT/keys (allowlist included); --insecure or [simulate]\n"
    "  insecure = true runs every program --insecure (plain TCP) instead.\n\n";

typedef struct {
    const char *config;
    char *own[SIM_MAX_ARGS], *coord[SIM_MAX_ARGS], *worker[SIM_MAX_ARGS], *run[SIM_MAX_ARGS];
    int n_own, n_coord, n_worker, n_run;
    int insecure;               /* --insecure */
} sim_args;

static int in_list(const char *const *list, const char *s, size_t len)
{
    for (; *list; list++)
        if (strlen(*list) == len && !strncmp(*list, s, len))
            return 1;
    return 0;
}

/* Sorts --section.key[=value] overrides by the program owning the section. */
static int route_args(int argc, char **argv, sim_args *a)
{
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (!strcmp(arg, "--config") || !strncmp(arg, "--config=", 9)) {
            if (arg[8] == '=')
                a->config = arg + 9;
            else if (i + 1 < argc)
                a->config = argv[++i];
            else
                return cli_fail("simulate", "--config needs a FILE"), -1;
            continue;
        }
        if (!strcmp(arg, "--insecure")) {
            a->insecure = 1;
            continue;
        }
        const char *dot = strchr(arg, '.');
        if (strncmp(arg, "--", 2) != 0 || !dot)
            return cli_fail("simulate", "unexpected argument '%s' (expected --config FILE or "
                            "--section.key=value)", arg), -1;
        int two = !strchr(arg, '=') && i + 1 < argc;    /* --section.key value */
        const char *sec = arg + 2;
        size_t len = (size_t)(dot - sec);
        int mine = len == 8 && !strncmp(sec, "simulate", 8);
        int coord = in_list(coord_sections, sec, len), work = in_list(worker_sections, sec, len);
        if (!mine && !coord && !work)
            return cli_fail("simulate", "unknown section in '%s'; sections: simulate, worker, "
                            "model, run, lora, train, sampling, round, network, strategy, http, security", arg), -1;
        int run = len == 3 && !strncmp(sec, "run", 3);
        for (int k = 0; k <= two; k++) {
            if (a->n_own + 2 >= SIM_MAX_ARGS / 2 || a->n_coord + 2 >= SIM_MAX_ARGS / 2 ||
                a->n_worker + 2 >= SIM_MAX_ARGS / 2)
                return cli_fail("simulate", "too many overrides"), -1;
            if (mine)
                a->own[a->n_own++] = argv[i + k];
            if (run)
                a->run[a->n_run++] = argv[i + k];
            if (coord)
                a->coord[a->n_coord++] = argv[i + k];
            if (work)
                a->worker[a->n_worker++] = argv[i + k];
        }
        i += two;
    }
    if (!a->config)
        return cli_fail("simulate", "--config FILE is required (e.g. "
                        "configs/simulate-shakespeare.ini)"), -1;
    return 0;
}

/* ---- processes ---------------------------------------------------------- */

typedef struct {
    char name[32];
    char log[1200];
    pid_t pid;
    int status, done;
    double slow;                /* [simulate] slow_workers factor; 0 or 1: full speed */
    int stopped;                /* SIGSTOPped by the throttle now */
} sim_proc;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* fork + exec argv with stdout and stderr into log, `nice` added to its
 * niceness; -1 if fork fails. */
static pid_t spawn_nice(char **argv, const char *log, int nice_incr)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    if (nice_incr)
        (void)!nice(nice_incr);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0)
        dup2(nul, 0);
    signal(SIGINT, SIG_IGN);    /* the parent stops us with SIGTERM, in order */
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    execv(argv[0], argv);
    fprintf(stderr, "fedpeft simulate: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static pid_t spawn(char **argv, const char *log) { return spawn_nice(argv, log, 0); }

static const char *describe(int status, char *buf, size_t cap)
{
    if (WIFEXITED(status))
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, cap, "stopped (status 0x%x)", status);
    return buf;
}

/* Runs a step to completion; 0 when it exited 0, else prints its log's tail. */
static int run_step(const char *what, char **argv, const char *log)
{
    int status;
    pid_t pid = spawn(argv, log);
    if (pid < 0)
        return cli_fail("simulate", "fork: %s", strerror(errno)), -1;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return cli_fail("simulate", "waitpid: %s", strerror(errno)), -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    char buf[128], cmd[1400];
    cli_fail("simulate", "%s %s; its output (%s):", what, describe(status, buf, sizeof buf), log);
    snprintf(cmd, sizeof cmd, "tail -n 20 '%s' >&2", log);
    if (system(cmd) != 0)
        (void)0;
    return -1;
}

/* Polls children; returns the index of one that ended since last time, or -1. */
static int reap(sim_proc *p, int n)
{
    for (int i = 0; i < n; i++) {
        if (p[i].done || p[i].pid <= 0)
            continue;
        pid_t r = waitpid(p[i].pid, &p[i].status, WNOHANG);
        if (r == p[i].pid) {
            p[i].done = 1;
            return i;
        }
    }
    return -1;
}

/* Back to full speed: a process the throttle stopped must run to exit. */
static void unthrottle(sim_proc *p)
{
    if (p->stopped && !p->done && p->pid > 0)
        kill(p->pid, SIGCONT);
    p->slow = p->stopped = 0;
}

/* SIGTERM to everyone still running, then SIGKILL after grace_s. */
static void stop_all(sim_proc *p, int n, double grace_s)
{
    for (int i = 0; i < n; i++)
        if (!p[i].done && p[i].pid > 0) {
            unthrottle(&p[i]);
            kill(p[i].pid, SIGTERM);
        }
    double end = now_s() + grace_s;
    for (;;) {
        int alive = 0;
        while (reap(p, n) >= 0)
            ;
        for (int i = 0; i < n; i++)
            alive += !p[i].done && p[i].pid > 0;
        if (!alive)
            return;
        if (now_s() > end)
            break;
        usleep(50000);
    }
    for (int i = 0; i < n; i++)
        if (!p[i].done && p[i].pid > 0) {
            kill(p[i].pid, SIGKILL);
            waitpid(p[i].pid, &p[i].status, 0);
            p[i].done = 1;
        }
}

/* ---- setup -------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int mkdirs(const char *path)
{
    char buf[1200];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* A free TCP port on 127.0.0.1 (the kernel's pick), or -1. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* OUT/shards/shard-NNN.txt or .jsonl for worker i (0-based). */
static int shard_path(const char *out, int i, char *buf, size_t cap)
{
    const char *ext[] = {"txt", "jsonl"};
    for (int e = 0; e < 2; e++) {
        snprintf(buf, cap, "%s/shards/shard-%03d.%s", out, i, ext[e]);
        if (access(buf, R_OK) == 0)
            return 0;
    }
    return cli_fail("simulate", "the partition wrote no shard %d (%s/shards/shard-%03d.txt "
                    "or .jsonl): see %s/logs/partition.log", i, out, i, out), -1;
}

/* A relative path that does not exist here is tried relative to the config
 * file's parent directory (configs/x.ini -> the project root). */
static void resolve(char *path, size_t cap, const char *config)
{
    if (path[0] == '/' || access(path, F_OK) == 0)
        return;
    char cfg[1200], cand[2400];
    snprintf(cfg, sizeof cfg, "%s", config);
    char *dir = dirname(cfg);
    snprintf(cand, sizeof cand, "%s/../%s", dir, path);
    if (access(cand, F_OK) == 0 && strlen(cand) < cap)
        snprintf(path, cap, "%s", cand);
}

/* Defaults, the file, then the overrides routed to us. */
static int load_configs(const sim_args *a, sim_config *c, sim_run_view *rv)
{
    char *own[SIM_MAX_ARGS + 1], *run[SIM_MAX_ARGS + 1];
    own[0] = run[0] = "simulate";
    memcpy(own + 1, a->own, (size_t)a->n_own * sizeof(char *));
    memcpy(run + 1, a->run, (size_t)a->n_run * sizeof(char *));
    if (fp_cfg_defaults(sim_keys, c) != 0 ||
        fp_cfg_load_file(sim_keys, c, a->config, not_simulate) != 0 ||
        fp_cfg_apply_args(sim_keys, c, a->n_own + 1, own) != 0)
        return -1;
    /* The coordinator validates [run] itself; here a key this view lacks must not
     * cost the others (the seed picks the partition): one argument at a time. */
    if (fp_cfg_defaults(run_keys, rv) != 0 ||
        fp_cfg_load_file(run_keys, rv, a->config, not_run) != 0) {
        fprintf(stderr, "fedpeft simulate: %s: [run]: %s (the partition uses seed %llu)\n",
                a->config, fp_error_get(), (unsigned long long)rv->seed);
        rv->rounds = 0;     /* display only */
    }
    for (int i = 0; i < a->n_run; i++) {
        int two = !strchr(a->run[i], '=') && i + 1 < a->n_run;     /* --run.key value */
        char *one[3] = {run[0], a->run[i], two ? a->run[i + 1] : NULL};
        if (fp_cfg_apply_args(run_keys, rv, 2 + two, one) != 0 && !strstr(fp_error_get(), "unknown"))
            fprintf(stderr, "fedpeft simulate: %s\n", fp_error_get());
        i += two;
    }
    resolve(c->data, sizeof c->data, a->config);
    resolve(c->llama2c, sizeof c->llama2c, a->config);
    resolve(c->tokenizer_bin, sizeof c->tokenizer_bin, a->config);
    if (c->model[0])
        resolve(c->model, sizeof c->model, a->config);
    return 0;
}

/* Fresh OUT: state, logs, shards and adapter of an earlier run are removed
 * (an old checkpoint would otherwise resume). */
static int prepare_out(const char *out)
{
    const char *sub[] = {"state", "logs", "shards", "adapter", "model", "keys"};
    char p[1200];
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", out, sub[i]);
        if (access(p, F_OK) == 0 && nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
            return cli_fail("simulate", "cannot remove %s: %s", p, strerror(errno)), -1;
    }
    snprintf(p, sizeof p, "%s/logs", out);
    if (mkdirs(p) != 0)
        return cli_fail("simulate", "cannot create %s: %s", p, strerror(errno)), -1;
    snprintf(p, sizeof p, "%s/state", out);
    if (mkdirs(p) != 0)
        return cli_fail("simulate", "cannot create %s: %s", p, strerror(errno)), -1;
    return 0;
}

typedef struct {
    char exe[1024], coord[1100], worker[1100];
} sim_bins;

static int find_bins(sim_bins *b)
{
    ssize_t n = readlink("/proc/self/exe", b->exe, sizeof b->exe - 1);
    if (n <= 0)
        return cli_fail("simulate", "cannot find this program: %s", strerror(errno)), -1;
    b->exe[n] = '\0';
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", b->exe);
    char *d = dirname(dir);
    snprintf(b->coord, sizeof b->coord, "%s/fedpeft-coordinator", d);
    snprintf(b->worker, sizeof b->worker, "%s/fedpeft-worker", d);
    if (access(b->coord, X_OK) != 0 || access(b->worker, X_OK) != 0)
        return cli_fail("simulate", "fedpeft-coordinator and fedpeft-worker must be next to %s "
                        "(build all targets)", b->exe), -1;
    return 0;
}

/* convert + partition. */
static int prepare_inputs(const sim_bins *b, const sim_config *c, const sim_run_view *rv)
{
    char model[1200], log[1200], shards[1200], n[16], seed[32];
    if (c->model[0]) {      /* used in place: the workers map one page-cache copy */
        const char *need[] = {"config.json", "tokenizer.json"};
        for (int i = 0; i < 2; i++) {
            snprintf(model, sizeof model, "%s/%s", c->model, need[i]);
            if (access(model, R_OK) != 0)
                return cli_fail("simulate", "[simulate] model = %s has no readable %s (%s): "
                                "give a model directory (config.json, model.safetensors, "
                                "tokenizer.json), or leave model empty to convert llama2c",
                                c->model, need[i], strerror(errno)), -1;
        }
    } else {
        snprintf(model, sizeof model, "%s/model", c->out_dir);
        snprintf(log, sizeof log, "%s/logs/convert.log", c->out_dir);
        char *conv[] = {(char *)b->exe, "convert", "--llama2c", (char *)c->llama2c,
                        "--tokenizer", (char *)c->tokenizer_bin, "--out", model, NULL};
        if (run_step("fedpeft convert", conv, log) != 0)
            return -1;
    }
    snprintf(log, sizeof log, "%s/logs/partition.log", c->out_dir);
    snprintf(shards, sizeof shards, "%s/shards", c->out_dir);
    snprintf(n, sizeof n, "%d", c->workers);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)rv->seed);
    char *part[] = {(char *)b->exe, "partition", "--data", (char *)c->data, "--workers", n,
                    "--by", (char *)c->partition, "--out", shards, "--seed", seed, NULL};
    if (run_step("fedpeft partition", part, log) != 0)
        return -1;
    printf("simulate: %s partitioned by %s into %d shards (%s; table in %s)\n", c->data,
           c->partition, c->workers, shards, log);
    return 0;
}

/* Worker w's name (0-based): w01.., or w001.. past 99 workers. */
static void worker_name(const sim_config *c, int w, char *buf, size_t cap)
{
    snprintf(buf, cap, c->workers > 99 ? "w%03d" : "w%02d", w + 1);
}

/* CURVE identities (keys.h): OUT/keys/{coordinator,wNN}.{key,pub} and
 * OUT/keys/allowlist with every worker's public and signing key (it doubles
 * as the workers' [privacy] roster). Nothing when insecure. */
static int make_keys(const sim_config *c)
{
    if (c->insecure)
        return 0;
    char dir[1200], path[1300], name[32];
    snprintf(dir, sizeof dir, "%s/keys", c->out_dir);
    snprintf(path, sizeof path, "%s/allowlist", dir);
    if (mkdirs(dir) != 0)
        return cli_fail("simulate", "cannot create %s: %s", dir, strerror(errno)), -1;
    FILE *f = fopen(path, "w");
    if (!f)
        return cli_fail("simulate", "cannot write %s: %s", path, strerror(errno)), -1;
    fprintf(f, "# the worker keys this simulation's coordinator admits (fedpeft simulate)\n");
    for (int w = -1; w < c->workers; w++) {
        if (w < 0)
            snprintf(name, sizeof name, "coordinator");
        else
            worker_name(c, w, name, sizeof name);
        fp_keypair *kp = fp_keypair_generate(name);
        int ok = kp && fp_keypair_save(kp, dir, 1) == 0;
        if (ok && w >= 0)
            fprintf(f, "%s %s sign=%s\n", kp->public_z85, name, kp->sign_z85);
        fp_keypair_free(&kp);
        if (!ok) {
            fclose(f);
            return cli_fail_lib("simulate"), -1;
        }
    }
    if (fclose(f) != 0)
        return cli_fail("simulate", "cannot write %s: %s", path, strerror(errno)), -1;
    printf("simulate: CURVE keys for the coordinator and %d workers in %s\n", c->workers, dir);
    return 0;
}

/* ---- the federation ----------------------------------------------------- */

typedef struct {
    sim_bins bins;
    sim_config cfg;
    sim_run_view run;
    sim_args args;
    char endpoint[64];
    sim_proc procs[SIM_MAX_WORKERS + 1];    /* [0] is the coordinator */
    int n_procs;
    sim_slow slow[SIM_MAX_WORKERS];
    int n_slow;
} sim_state;

/* [simulate] slow_workers: parsed, and every id one of the workers. */
static int load_slow(sim_state *s)
{
    if (sim_throttle_parse(s->cfg.slow_workers, s->slow, SIM_MAX_WORKERS, &s->n_slow) < 0)
        return cli_fail_lib("simulate"), -1;
    for (int i = 0; i < s->n_slow; i++) {
        int found = 0;
        char name[32], first[32], last[32];
        for (int w = 0; w < s->cfg.workers && !found; w++) {
            worker_name(&s->cfg, w, name, sizeof name);
            found = !strcmp(name, s->slow[i].id);
        }
        if (!found) {
            worker_name(&s->cfg, 0, first, sizeof first);
            worker_name(&s->cfg, s->cfg.workers - 1, last, sizeof last);
            return cli_fail("simulate", "[simulate] slow_workers names %s, which is not one of "
                            "the workers %s .. %s", s->slow[i].id, first, last), -1;
        }
        printf("simulate: %s runs %gx slower (only 1/%g of every 100 ms)\n", s->slow[i].id,
               s->slow[i].factor, s->slow[i].factor);
    }
    return 0;
}

/* Waits secs, stopping and continuing the slow workers on their schedule. */
static void wait_throttled(sim_state *s, double secs)
{
    if (s->n_slow == 0) {
        usleep((useconds_t)(secs * 1e6));
        return;
    }
    double end = now_s() + secs;
    for (double t = now_s(); t < end; t = now_s()) {
        for (int i = 1; i < s->n_procs; i++)
            if (s->procs[i].slow > 1 && !s->procs[i].done)
                sim_throttle_apply(s->procs[i].pid, s->procs[i].slow, t, &s->procs[i].stopped);
        usleep(5000);
    }
}

/* Starts the coordinator (procs[0]) and the workers. */
static int start_all(sim_state *s)
{
    char out[1024];     /* a copy: p->log below lives in *s too */
    snprintf(out, sizeof out, "%s", s->cfg.out_dir);
    static char o_model[1200], o_state[1200], o_adapter[1200], o_ep[128], o_wep[128], o_minw[64],
        o_http[64], o_sk[1300], o_allow[1300], o_ck[1300];
    snprintf(o_sk, sizeof o_sk, "--security.secret_key=%s/keys/coordinator.key", out);
    snprintf(o_allow, sizeof o_allow, "--security.allowlist=%s/keys/allowlist", out);
    snprintf(o_ck, sizeof o_ck, "--security.coordinator_key=%s/keys/coordinator.pub", out);
    if (s->cfg.model[0])
        snprintf(o_model, sizeof o_model, "--model.path=%s", s->cfg.model);
    else
        snprintf(o_model, sizeof o_model, "--model.path=%s/model", out);
    snprintf(o_state, sizeof o_state, "--run.state_dir=%s/state", out);
    snprintf(o_adapter, sizeof o_adapter, "--run.out_dir=%s/adapter", out);
    snprintf(o_ep, sizeof o_ep, "--network.endpoint=%s", s->endpoint);
    snprintf(o_wep, sizeof o_wep, "--worker.endpoint=%s", s->endpoint);
    snprintf(o_minw, sizeof o_minw, "--sampling.min_workers=%d", s->cfg.workers);
    char o_hb[64];
    char *argv[SIM_MAX_ARGS + 16];
    int n = 0;
    argv[n++] = s->bins.coord;
    argv[n++] = "--config";
    argv[n++] = (char *)s->args.config;
    argv[n++] = o_minw;     /* before the user's overrides, which win */
    /* Hundreds of workers per core: each gets the CPU for a few ms at a time,
     * and a worker busy for 3 heartbeats is declared dead (at 500 workers on
     * 2 cores the key phase lost 486 of them to this). 20 ms per worker per
     * core keeps them heard; --network.heartbeat_ms still wins. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int per_core = s->cfg.workers / (int)(cores > 0 ? cores : 1);
    if (per_core > 50) {
        snprintf(o_hb, sizeof o_hb, "--network.heartbeat_ms=%d", 20 * per_core);
        argv[n++] = o_hb;
        printf("simulate: %d workers on %ld cores: heartbeat_ms = %d (starved workers miss "
               "heartbeats; --network.heartbeat_ms=MS to choose)\n", s->cfg.workers, cores,
               20 * per_core);
    }
    for (int i = 0; i < s->args.n_coord; i++)
        argv[n++] = s->args.coord[i];
    argv[n++] = o_model, argv[n++] = o_state, argv[n++] = o_adapter, argv[n++] = o_ep;
    if (s->cfg.http_port > 0) {
        snprintf(o_http, sizeof o_http, "--http.port=%d", s->cfg.http_port);
        argv[n++] = o_http;
    }
    if (s->cfg.insecure)
        argv[n++] = "--insecure";
    else
        argv[n++] = o_sk, argv[n++] = o_allow;
    argv[n] = NULL;
    sim_proc *c = &s->procs[s->n_procs++];
    snprintf(c->name, sizeof c->name, "coordinator");
    snprintf(c->log, sizeof c->log, "%s/logs/coordinator.log", out);
    if ((c->pid = spawn(argv, c->log)) < 0)
        return cli_fail("simulate", "fork: %s", strerror(errno)), -1;
    for (int w = 0; w < s->cfg.workers; w++) {
        char shard[1200], o_id[64], o_data[1300], o_wsk[1300];
        if (shard_path(out, w, shard, sizeof shard) != 0)
            return -1;
        sim_proc *p = &s->procs[s->n_procs++];
        char name[32];
        worker_name(&s->cfg, w, name, sizeof name);
        snprintf(p->name, sizeof p->name, "%s", name);
        snprintf(p->log, sizeof p->log, "%s/logs/%s.log", out, name);
        snprintf(o_id, sizeof o_id, "--worker.id=%s", name);
        snprintf(o_data, sizeof o_data, "--worker.data=%s", shard);
        n = 0;
        argv[n++] = s->bins.worker;
        argv[n++] = "--config";
        argv[n++] = (char *)s->args.config;
        argv[n++] = "--worker.threads=1";
        for (int i = 0; i < s->args.n_worker; i++)
            argv[n++] = s->args.worker[i];
        argv[n++] = o_model, argv[n++] = o_id, argv[n++] = o_data, argv[n++] = o_wep;
        snprintf(o_wsk, sizeof o_wsk, "--security.secret_key=%s/keys/%s.key", out, name);
        if (s->cfg.insecure)
            argv[n++] = "--insecure";
        else
            argv[n++] = o_wsk, argv[n++] = o_ck;
        argv[n] = NULL;
        /* One machine: the coordinator, which every worker waits on, must not
         * queue behind hundreds of training workers for the CPU (at 500
         * workers on 2 cores it went unheard for 3 heartbeats and the workers
         * reconnected mid-round). Nice 19 gives it the CPU when it needs it. */
        if ((p->pid = spawn_nice(argv, p->log, SIM_WORKER_NICE)) < 0)
            return cli_fail("simulate", "fork: %s", strerror(errno)), -1;
        for (int i = 0; i < s->n_slow; i++)
            if (!strcmp(s->slow[i].id, name))
                p->slow = s->slow[i].factor;
    }
    return 0;
}

/* Follows the run until the coordinator exits. 0 when it exited 0, 1 on
 * failure, 130 when interrupted. */
static int follow(sim_state *s, sim_table *table)
{
    int dead_workers = 0, left_workers = 0;    /* left: exit 0, on SHUTDOWN */
    double all_gone_at = 0;
    char buf[128];
    for (;;) {
        sim_table_poll(table);
        if (sim_stop) {
            printf("simulate: interrupted: stopping the coordinator and %d workers\n",
                   s->n_procs - 1);
            stop_all(s->procs, s->n_procs, 5.0);
            return 130;
        }
        int i;
        while ((i = reap(s->procs, s->n_procs)) >= 0) {
            sim_proc *p = &s->procs[i];
            if (i == 0) {
                sim_table_poll(table);
                if (WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)
                    return 0;
                cli_fail("simulate", "the coordinator (pid %d) %s; see %s", (int)p->pid,
                         describe(p->status, buf, sizeof buf), p->log);
                return 1;
            }
            if (WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0) {
                left_workers++;     /* the run is over: the coordinator exits next */
                continue;
            }
            dead_workers++;
            fprintf(stderr, "simulate: worker %s (pid %d) %s before the run ended; see %s\n",
                    p->name, (int)p->pid, describe(p->status, buf, sizeof buf), p->log);
            if (dead_workers == s->n_procs - 1) {
                cli_fail("simulate", "every worker has died; stopping (logs in %s/logs)",
                         s->cfg.out_dir);
                return 1;
            }
        }
        if (dead_workers + left_workers == s->n_procs - 1 && all_gone_at == 0)
            all_gone_at = now_s();
        if (all_gone_at > 0 && now_s() - all_gone_at > 10.0) {
            cli_fail("simulate", "every worker has left but the coordinator is still running; "
                     "stopping (logs in %s/logs)", s->cfg.out_dir);
            return 1;
        }
        wait_throttled(s, 0.2);
    }
}

int cmd_simulate(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            fp_cfg_print_help(sim_keys, stdout);
            return 0;
        }
    sim_state *s = calloc(1, sizeof *s);
    sim_table *table = NULL;
    int rc = 1;
    if (!s)
        return cli_fail("simulate", "out of memory");
    if (route_args(argc, argv, &s->args) != 0) {
        free(s);
        return 2;
    }
    if (load_configs(&s->args, &s->cfg, &s->run) != 0) {
        cli_fail_lib("simulate");
        goto out;
    }
    s->cfg.insecure |= s->args.insecure;
    if (load_slow(s) != 0 || find_bins(&s->bins) != 0 || prepare_out(s->cfg.out_dir) != 0)
        goto out;
    double t0 = now_s();
    if (prepare_inputs(&s->bins, &s->cfg, &s->run) != 0 || make_keys(&s->cfg) != 0)
        goto out;
    int port = s->cfg.port ? s->cfg.port : free_port();
    if (port <= 0) {
        cli_fail("simulate", "cannot find a free port on 127.0.0.1");
        goto out;
    }
    snprintf(s->endpoint, sizeof s->endpoint, "tcp://127.0.0.1:%d", port);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char metrics[1200];
    snprintf(metrics, sizeof metrics, "%s/state/metrics.jsonl", s->cfg.out_dir);
    if (!(table = sim_table_new(metrics, s->run.rounds, stdout)))
        goto out;
    if (s->cfg.http_port > 0)
        printf("simulate: status page on http://127.0.0.1:%d/\n", s->cfg.http_port);
    printf("simulate: coordinator on %s, %d workers; logs in %s/logs\n", s->endpoint,
           s->cfg.workers, s->cfg.out_dir);
    fflush(stdout);
    if (start_all(s) != 0) {
        stop_all(s->procs, s->n_procs, 5.0);
        goto out;
    }
    rc = follow(s, table);
    for (int i = 1; i < s->n_procs; i++)       /* full speed to leave */
        unthrottle(&s->procs[i]);
    /* Workers leave by themselves on the coordinator's SHUTDOWN; give them a moment. */
    double end = now_s() + (rc == 0 ? 10.0 : 0.0);
    while (now_s() < end) {
        int alive = 0;
        while (reap(s->procs, s->n_procs) >= 0)
            ;
        for (int i = 1; i < s->n_procs; i++)
            alive += !s->procs[i].done;
        if (!alive)
            break;
        usleep(100000);
    }
    stop_all(s->procs, s->n_procs, 5.0);
    int trained = sim_table_rows(table) - 1, lost = sim_table_abandoned(table);
    if (rc == 0 && trained > 0 && lost >= trained) {
        rc = cli_fail("simulate", "every round was abandoned (the reasons are under the table's "
                      "rows; logs in %s/logs): nothing was trained", s->cfg.out_dir);
        goto out;
    }
    if (rc == 0 && lost > 0)
        printf("simulate: %d of %d rounds abandoned (reasons under their rows)\n", lost, trained);
    if (rc == 0)
        printf("simulate: %d rounds in %.1f s; validation loss %.4f -> %.4f\n"
               "simulate: adapter in %s/adapter, metrics in %s, logs in %s/logs\n",
               sim_table_rows(table) - 1, now_s() - t0, sim_table_first_val(table),
               sim_table_last_val(table), s->cfg.out_dir, metrics, s->cfg.out_dir);
out:
    sim_table_destroy(&table);
    free(s);
    return rc;
}
