/* test_http.c - the coordinator's status server, end to end: a real
 * fedpeft-coordinator with [http] port on a free port and two real workers
 * on loopback; /healthz, /metrics (Prometheus text), /status (JSON), 404;
 * then the page in headless Chromium: the chart has one point per evaluated
 * round, and a screenshot is kept as BUILD/test-artifacts/status-page.png.
 * Also: SIGTERM logs the saved round, and a busy HTTP port is a one-line error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "fed_harness.h"
#include "test_util.h"

#define CHROMIUM "/usr/bin/chromium"
#define N_WORKERS 2

static char dir[4096], ini[4200], coord_log[4200];
static int http_port;
static pid_t coord, workers[N_WORKERS];

static cJSON *get_status(void)
{
    char *body;
    int code = fh_http_get(http_port, "/status", &body);
    if (code != 200)
        fail_msg("/status answered %d", code);
    cJSON *o = cJSON_Parse(body);
    if (!o)
        fail_msg("/status is not JSON: %s", body);
    free(body);
    return o;
}

/* Completed rounds with a validation loss: the chart's points. */
static int evaluated_rounds(const cJSON *st)
{
    int n = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(st, "history"))
        n += cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(h, "val_loss"));
    return n;
}

/* "--insecure" when the program offers it (plain TCP on loopback), else NULL. */
static char *insecure_flag(const char *prog)
{
    char cmd[4200], *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' --help", prog);
    tu_run(cmd, &out);
    int has = out && strstr(out, "--insecure");
    free(out);
    return has ? "--insecure" : NULL;
}

static int coord_alive(void)
{
    return coord > 0 && waitpid(coord, NULL, WNOHANG) == 0;
}

/* Model, shards, config; the coordinator and the workers, until round 3 is done. */
static int group_setup(void **state)
{
    (void)state;
    if (fh_base_setup("http", N_WORKERS, 1000, dir, sizeof dir) != 0)
        return -1;
    http_port = fh_free_port(NULL);
    int zport = fh_free_port(NULL);
    char text[8192];
    snprintf(text, sizeof text,
             "[run]\nrounds = 1000\nstate_dir = %s/state\n"
             "[model]\npath = %s/model\n"
             "[lora]\nrank = 4\nalpha = 8\ntargets = all\n"
             "[train]\nlocal_steps = 4\nbatch = 4\nseq = 32\nlr = 5e-3\n"
             "[sampling]\nmin_workers = %d\n"
             "[network]\nendpoint = tcp://127.0.0.1:%d\nheartbeat_ms = 1000\n"
             "[http]\nport = %d\naddress = 127.0.0.1\n"
             "[worker]\nendpoint = tcp://127.0.0.1:%d\nconnect_retries = 30\n"
             "retry_backoff_ms = 200\n",
             dir, dir, N_WORKERS, zport, http_port, zport);
    snprintf(ini, sizeof ini, "%s/http.ini", dir);
    snprintf(coord_log, sizeof coord_log, "%s/coordinator.log", dir);
    if (tu_write_file(ini, text, strlen(text)) != 0)
        return -1;
    char *cargv[] = {FP_COORDINATOR, "--config", ini, insecure_flag(FP_COORDINATOR), NULL};
    coord = fh_spawn(cargv, coord_log, NULL);
    char *wflag = insecure_flag(FP_WORKER);
    for (int k = 0; k < N_WORKERS; k++) {
        char log[4300], id[64], data[4300];
        snprintf(log, sizeof log, "%s/w%d.log", dir, k);
        snprintf(id, sizeof id, "--worker.id=w%d", k);
        snprintf(data, sizeof data, "--worker.data=%s/shard-%d.txt", dir, k);
        char *wargv[] = {FP_WORKER, "--config", ini, id, data, "--worker.threads=1", wflag,
                         NULL};
        workers[k] = fh_spawn(wargv, log, NULL);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int k = 0; k < N_WORKERS; k++)
        if (workers[k] > 0) {
            kill(workers[k], SIGTERM);
            fh_wait_exit(workers[k], 10, NULL);
        }
    if (coord > 0) {
        kill(coord, SIGKILL);
        fh_wait_exit(coord, 10, NULL);
    }
    return 0;
}

/* Waits until the coordinator has completed `rounds` rounds. */
static void wait_rounds(int rounds)
{
    double end = fh_now() + 240;
    while (fh_now() < end) {
        char *body = NULL;
        if (fh_http_get(http_port, "/status", &body) == 200) {
            cJSON *st = cJSON_Parse(body);
            int n = st ? evaluated_rounds(st) : 0;
            cJSON_Delete(st);
            free(body);
            if (n >= rounds)
                return;
        } else {
            free(body);
        }
        if (!coord_alive())
            break;
        usleep(200000);
    }
    fh_log_print(coord_log);
    fail_msg("the coordinator did not complete %d rounds", rounds);
}

/* The value of the sample line "NAME VALUE" (name with its labels). */
static double sample(const char *text, const char *name)
{
    char key[256];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(text, key);
    if (!p)
        fail_msg("no sample '%s' in /metrics:\n%s", name, text);
    return strtod(p + strlen(key), NULL);
}

static void test_endpoints(void **state)
{
    (void)state;
    wait_rounds(3);
    char *body;
    assert_int_equal(fh_http_get(http_port, "/healthz", &body), 200);
    assert_string_equal(body, "ok\n");
    free(body);
    assert_int_equal(fh_http_get(http_port, "/nope", &body), 404);
    free(body);

    assert_int_equal(fh_http_get(http_port, "/metrics", &body), 200);
    const char *typed[] = {"fedpeft_round gauge", "fedpeft_workers gauge",
                           "fedpeft_bytes_total counter", "fedpeft_val_loss gauge",
                           "fedpeft_train_loss gauge", "fedpeft_rejections_total counter"};
    for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "# TYPE %s\n", typed[i]);
        if (!strstr(body, line))
            fail_msg("/metrics lacks '%s':\n%s", line, body);
    }
    assert_non_null(strstr(body, "# HELP fedpeft_round "));
    assert_true(sample(body, "fedpeft_round") >= 3);
    assert_true(sample(body, "fedpeft_workers{state=\"live\"}") == N_WORKERS);
    assert_true(sample(body, "fedpeft_workers{state=\"dead\"}") == 0);
    assert_true(sample(body, "fedpeft_bytes_total{direction=\"up\"}") > 1000);
    assert_true(sample(body, "fedpeft_bytes_total{direction=\"down\"}") > 1000);
    double val = sample(body, "fedpeft_val_loss");
    assert_true(isfinite(val) && val > 0 && val < 10);
    assert_true(isfinite(sample(body, "fedpeft_train_loss")));
    assert_true(sample(body, "fedpeft_rejections_total{reason=\"late\"}") == 0);
    assert_non_null(strstr(body, "fedpeft_rejections_total{reason=\"stalled\"} "));
    free(body);

    cJSON *st = get_status();
    const cJSON *ws = cJSON_GetObjectItemCaseSensitive(st, "workers");
    assert_int_equal(cJSON_GetArraySize(ws), N_WORKERS);
    const cJSON *w;
    cJSON_ArrayForEach(w, ws) {
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(w, "state")->valuestring, "live");
        assert_true(cJSON_GetObjectItemCaseSensitive(w, "last_seen_s")->valuedouble < 10);
    }
    const cJSON *hist = cJSON_GetObjectItemCaseSensitive(st, "history");
    assert_true(cJSON_GetArraySize(hist) >= 3);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(st, "completed_rounds")->valueint,
                     cJSON_GetArraySize(hist));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(hist, 0), "round")
                         ->valueint, 0);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(st, "phase"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(st, "rejected"), "wrong_round"));
    cJSON_Delete(st);
}

/* Runs headless Chromium on the page with `what` (--dump-dom or
 * --screenshot=...); its stdout in *out. */
static int chromium(const char *what, char **out)
{
    char profile[4300], cmd[16384];
    snprintf(profile, sizeof profile, "%s/chromium-profile", dir);
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && timeout 120 " CHROMIUM " --headless --no-sandbox --disable-gpu "
             "--disable-quic --no-first-run --disable-background-networking "
             "--disable-component-update --disable-sync --disable-dev-shm-usage "
             "--hide-scrollbars --user-data-dir='%s' --virtual-time-budget=5000 "
             "--window-size=1200,800 %s http://127.0.0.1:%d/ 2>'%s/chromium.err'",
             profile, profile, what, http_port, dir);
    return tu_run(cmd, out);
}

static void test_page_in_chromium(void **state)
{
    (void)state;
    if (access(CHROMIUM, X_OK) != 0)
        skip(); /* Debian's chromium package is not installed: nothing to drive the page */
    wait_rounds(3);
    cJSON *st = get_status();
    int before = evaluated_rounds(st);
    cJSON_Delete(st);
    char *dom = NULL;
    int rc = chromium("--dump-dom", &dom);
    st = get_status();
    int after = evaluated_rounds(st);
    cJSON_Delete(st);
    if (rc != 0 || !dom || !strstr(dom, "id=\"loss-chart\""))
        fail_msg("chromium exited %d; DOM:\n%s", rc, dom ? dom : "(none)");
    /* The drawn circles: a round number after data-round (the script's own
     * text, also in the DOM, has the markup followed by code). */
    int points = 0;
    const char *mark = "<circle class=\"round-point\" data-round=\"";
    for (const char *p = dom; (p = strstr(p, mark)); p += strlen(mark))
        points += p[strlen(mark)] >= '0' && p[strlen(mark)] <= '9';
    printf("# chart points %d, evaluated rounds %d..%d\n", points, before, after);
    assert_true(points >= before && points <= after);
    assert_non_null(strstr(dom, "<circle class=\"round-point\" data-round=\"0\""));
    assert_non_null(strstr(dom, "<td>w0</td>"));
    assert_non_null(strstr(dom, "<td>w1</td>"));
    free(dom);

    char arts[4300], png[4400], what[4500];
    snprintf(arts, sizeof arts, "%s/test-artifacts", FP_BINARY_DIR);
    mkdir(arts, 0755);
    snprintf(png, sizeof png, "%s/status-page.png", arts);
    unlink(png);
    snprintf(what, sizeof what, "--screenshot='%s'", png);
    char *out = NULL;
    rc = chromium(what, &out);
    free(out);
    assert_int_equal(rc, 0);
    size_t len = 0;
    char *img = tu_read_file(png, &len);
    assert_non_null(img);
    printf("# screenshot %s: %zu bytes\n", png, len);
    assert_true(len > 10000);
    assert_memory_equal(img, "\x89PNG", 4);
    free(img);
}

/* A second coordinator on the same HTTP port: one line, what to do, exit 1. */
static void test_port_in_use(void **state)
{
    (void)state;
    char cmd[16384], *out = NULL;
    assert_true(coord_alive());     /* it holds the port */
    char *flag = insecure_flag(FP_COORDINATOR);
    snprintf(cmd, sizeof cmd, "timeout 120 '%s' --config '%s' %s --run.state_dir='%s/state-b' "
             "--network.endpoint=tcp://127.0.0.1:%d", FP_COORDINATOR, ini,
             flag ? flag : "", dir,
             fh_free_port(NULL));
    int rc = tu_run(cmd, &out);
    printf("# second coordinator: exit %d: %s", rc, out);
    assert_int_equal(rc, 1);
    char expect[128];
    snprintf(expect, sizeof expect, "http port %d on 127.0.0.1 is already in use", http_port);
    assert_non_null(strstr(out, expect));
    assert_non_null(strstr(out, "choose another [http] port"));
    free(out);
}

/* SIGTERM: the coordinator says which round is saved and exits 128 + 15. */
static void test_sigterm(void **state)
{
    (void)state;
    assert_true(coord_alive());
    kill(coord, SIGTERM);
    int rc = fh_wait_exit(coord, 20, NULL);
    coord = 0;
    assert_int_equal(rc, 128 + SIGTERM);
    char *log = tu_read_file(coord_log, NULL);
    assert_non_null(log);
    if (!strstr(log, "stopping: state saved at round "))
        fail_msg("no 'stopping: state saved at round N' in:\n%s", log);
    free(log);
    char *body;
    assert_int_equal(fh_http_get(http_port, "/healthz", &body), -1);  /* the server went with it */
    free(body);
    for (int k = 0; k < N_WORKERS; k++) {
        kill(workers[k], SIGTERM);
        assert_int_equal(fh_wait_exit(workers[k], 20, NULL), 0);
        workers[k] = 0;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_page_in_chromium),
        cmocka_unit_test(test_port_in_use),
        cmocka_unit_test(test_sigterm),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
