/* sim_table.c - the live per-round table of `fedpeft simulate` (see sim_table.h). */
#include "sim_table.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sim_table {
    char *path;
    int rounds;
    FILE *out;
    long offset;            /* bytes of the file consumed */
    long last_round;        /* highest round printed (-1: none) */
    int rows, abandoned;
    double first_val, last_val;    /* of rounds that have one (abandoned ones do not) */
};

sim_table *sim_table_new(const char *path, int rounds, FILE *out)
{
    sim_table *t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(path))) {
        free(t);
        return NULL;
    }
    t->rounds = rounds;
    t->out = out;
    t->last_round = -1;
    t->first_val = t->last_val = NAN;
    return t;
}

void sim_table_destroy(sim_table **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->path);
    free(*self_p);
    *self_p = NULL;
}

int sim_table_rows(const sim_table *self) { return self->rows; }
double sim_table_first_val(const sim_table *self) { return self->first_val; }
double sim_table_last_val(const sim_table *self) { return self->last_val; }
int sim_table_abandoned(const sim_table *self) { return self->abandoned; }

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void fmt_bytes(double b, char *buf, size_t cap)
{
    if (!(b >= 0))
        snprintf(buf, cap, "-");
    else if (b < 1024)
        snprintf(buf, cap, "%.0f B", b);
    else if (b < 1024.0 * 1024)
        snprintf(buf, cap, "%.1f KiB", b / 1024);
    else
        snprintf(buf, cap, "%.1f MiB", b / (1024.0 * 1024));
}

static void fmt_loss(double v, char *buf, size_t cap)
{
    if (isfinite(v) && v > 0)
        snprintf(buf, cap, "%.4f", v);
    else
        snprintf(buf, cap, "-");
}

static void header(sim_table *t)
{
    fprintf(t->out, "%7s  %8s  %10s  %9s  %10s  %10s  %8s\n", "round", "workers", "train loss",
            "val loss", "up", "down", "seconds");
}

/* One metrics line -> one row (ignored if unparsable or already shown). */
static void row(sim_table *t, const char *line)
{
    cJSON *o = cJSON_Parse(line);
    if (!o)
        return;
    double r = num(o, "round");
    if (isfinite(r) && (long)r > t->last_round) {
        double secs = 0;
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "seconds"), *e;
        cJSON_ArrayForEach(e, s) if (cJSON_IsNumber(e)) secs += e->valuedouble;
        char rnd[32], wk[32], tl[32], vl[32], up[32], down[32];
        if (t->rounds > 0)
            snprintf(rnd, sizeof rnd, "%ld/%d", (long)r, t->rounds);
        else
            snprintf(rnd, sizeof rnd, "%ld", (long)r);
        snprintf(wk, sizeof wk, "%.0f/%.0f", num(o, "reported"), num(o, "sampled"));
        double val = num(o, "val_loss");
        fmt_loss(num(o, "train_loss"), tl, sizeof tl);
        fmt_loss(val, vl, sizeof vl);
        fmt_bytes(num(o, "bytes_up"), up, sizeof up);
        fmt_bytes(num(o, "bytes_down"), down, sizeof down);
        if (t->rows == 0)
            header(t);
        fprintf(t->out, "%7s  %8s  %10s  %9s  %10s  %10s  %8.1f\n", rnd, wk, tl, vl, up, down,
                secs);
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(o, "abandoned"),
                    *why = cJSON_GetObjectItemCaseSensitive(o, "reason");
        if (cJSON_IsTrue(ab)) {     /* the row alone would only show dashes */
            fprintf(t->out, "%7s  abandoned: %s\n", "",
                    cJSON_IsString(why) ? why->valuestring : "(no reason recorded)");
            t->abandoned++;
        }
        fflush(t->out);
        if (t->rows++ == 0)
            t->first_val = val;
        if (isfinite(val))
            t->last_val = val;
        t->last_round = (long)r;
    }
    cJSON_Delete(o);
}

int sim_table_poll(sim_table *t)
{
    FILE *f = fopen(t->path, "rb");
    if (!f)
        return 0;
    int before = t->rows;
    if (fseek(f, 0, SEEK_END) == 0 && ftell(f) < t->offset)
        t->offset = 0;      /* rewritten (a restarted coordinator): rows already shown are skipped */
    fseek(f, t->offset, SEEK_SET);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n')
            break;      /* incomplete: read it again next time */
        t->offset += n;
        row(t, line);
    }
    free(line);
    fclose(f);
    return t->rows - before;
}
