/* metrics.c - per-round metrics as JSON lines (metrics.h). */
#include "metrics.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const reason_names[REJ_COUNT] = {
    "late", "duplicate", "wrong_round", "shape", "nonfinite", "oversized",
    "undecodable", "version", "invalid", "model", "unknown_worker", "stalled",
    "tampered", "replayed", "truncated", "spliced", "unsealed", "identity", "bound", "flood",
};

const char *reject_reason_name(reject_reason r)
{
    return (unsigned)r < REJ_COUNT ? reason_names[r] : "?";
}

void metrics_reset(round_metrics *m, uint64_t round)
{
    memset(m, 0, sizeof *m);
    m->round = round;
    m->train_loss = NAN;
    m->val_loss = NAN;
    m->epsilon = NAN;
}

static void add_real(cJSON *o, const char *k, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

char *metrics_render(const round_metrics *m)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "round", (double)m->round);
    cJSON_AddBoolToObject(o, "abandoned", m->abandoned);
    if (m->abandoned)
        cJSON_AddStringToObject(o, "reason", m->reason);
    cJSON_AddNumberToObject(o, "live", m->live);
    cJSON_AddNumberToObject(o, "sampled", m->sampled);
    cJSON_AddNumberToObject(o, "reported", m->reported);
    cJSON_AddNumberToObject(o, "dropped", m->dropped);
    add_real(o, "train_loss", m->train_loss);
    add_real(o, "val_loss", m->val_loss);
    cJSON_AddNumberToObject(o, "val_tokens", (double)m->val_tokens);
    cJSON_AddNumberToObject(o, "bytes_up", (double)m->bytes_up);
    cJSON_AddNumberToObject(o, "bytes_down", (double)m->bytes_down);
    cJSON *s = cJSON_AddObjectToObject(o, "seconds");
    if (s) {
        cJSON_AddNumberToObject(s, "train", m->t_train);
        cJSON_AddNumberToObject(s, "aggregate", m->t_aggregate);
        cJSON_AddNumberToObject(s, "eval", m->t_eval);
        cJSON_AddNumberToObject(s, "checkpoint", m->t_checkpoint);
    }
    cJSON *r = cJSON_AddObjectToObject(o, "rejected");
    if (r)
        for (int i = 0; i < REJ_COUNT; i++)
            cJSON_AddNumberToObject(r, reason_names[i], (double)m->rejected[i]);
    cJSON_AddBoolToObject(o, "secagg", m->secagg);
    add_real(o, "epsilon", m->epsilon);
    if (m->unix_s > 0)
        cJSON_AddNumberToObject(o, "unix_s", round(m->unix_s * 1000.0) / 1000.0);
    if (m->async) {
        cJSON_AddBoolToObject(o, "async", 1);
        cJSON *st = cJSON_AddObjectToObject(o, "staleness");
        if (st) {
            cJSON_AddNumberToObject(st, "mean", m->staleness_mean);
            cJSON_AddNumberToObject(st, "max", m->staleness_max);
        }
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static int write_lines(int fd, char *const *lines, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(lines[i]);
        if (write(fd, lines[i], len) != (ssize_t)len || write(fd, "\n", 1) != 1)
            return -1;
    }
    return fsync(fd);
}

int metrics_append(const char *path, const char *line)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return fp_error_set("metrics %s: cannot open: %s", path, strerror(errno));
    char *const one[1] = {(char *)line};
    int rc = write_lines(fd, one, 1);
    int e = errno;
    close(fd);
    return rc < 0 ? fp_error_set("metrics %s: cannot write: %s", path, strerror(e)) : 0;
}

int metrics_rewrite(const char *path, char *const *lines, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return fp_error_set("metrics %s: cannot create: %s", tmp, strerror(errno));
    int rc = write_lines(fd, lines, n);
    int e = errno;
    close(fd);
    if (rc < 0 || rename(tmp, path) < 0) {
        if (rc == 0)
            e = errno;
        unlink(tmp);
        return fp_error_set("metrics %s: cannot write: %s", path, strerror(e));
    }
    return 0;
}
