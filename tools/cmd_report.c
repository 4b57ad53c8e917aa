/* cmd_report.c - `fedpeft report METRICS.jsonl --out FILE.svg`: a run's
 * metrics (coordinator/metrics.h, one JSON object per round) as one SVG
 * picture with two panels: validation and train loss per round (lines with
 * one marker per round: class "val-point" / "train-point", data-round=N), and
 * bytes up / down per round (bars: class "bytes-up" / "bytes-down"). Axes,
 * ticks and a legend in each panel; no external assets.
 *
 * Given several runs (`fedpeft report A.jsonl B.jsonl --labels a,b`), it
 * compares them instead: validation loss per round and bytes (up + down) per
 * round, one line per run (class "run-point", data-run=i).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    double round, train_loss, val_loss, bytes_up, bytes_down; /* NAN: not measured */
} rep_row;

typedef struct {
    rep_row *rows;
    size_t n, cap;
} rep_data;

static const char usage[] =
    "usage: fedpeft report METRICS.jsonl [MORE.jsonl ...] [--labels A,B,...] --out FILE.svg\n"
    "  Draws a run's STATE_DIR/metrics.jsonl (one JSON object per round, as the\n"
    "  coordinator writes it) as an SVG: validation and train loss per round, and\n"
    "  bytes up / down per round. With several files, compares the runs: validation\n"
    "  loss and bytes (up + down) per round, one line per run, labelled by --labels\n"
    "  (default: the file names).\n";

#define REP_MAX_RUNS 16

static double field(const cJSON *o, const char *k, int *present)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    *present = v != NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* One line into a row; -1 (printed) naming the file and line. */
static int parse_row(const char *path, int lineno, const char *line, rep_row *r)
{
    cJSON *o = cJSON_Parse(line);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return cli_fail("report", "%s:%d: not a JSON object: '%.60s'; is this the coordinator's "
                        "metrics.jsonl?", path, lineno, line), -1;
    }
    int has;
    r->round = field(o, "round", &has);
    if (!isfinite(r->round) || r->round < 0) {
        cJSON_Delete(o);
        return cli_fail("report", "%s:%d: no number 'round': expected a metrics line like "
                        "{\"round\": 1, \"val_loss\": ...}", path, lineno), -1;
    }
    const char *keys[] = {"train_loss", "val_loss", "bytes_up", "bytes_down"};
    double *dst[] = {&r->train_loss, &r->val_loss, &r->bytes_up, &r->bytes_down};
    for (int i = 0; i < 4; i++) {
        *dst[i] = field(o, keys[i], &has);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[i]);
        if (has && !cJSON_IsNumber(v) && !cJSON_IsNull(v)) {
            cJSON_Delete(o);
            return cli_fail("report", "%s:%d: '%s' is neither a number nor null", path, lineno,
                            keys[i]), -1;
        }
    }
    cJSON_Delete(o);
    return 0;
}

static int load(const char *path, rep_data *d)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return cli_fail("report", "cannot open %s: %s; pass a run's STATE_DIR/metrics.jsonl",
                        path, strerror(errno)), -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (d->n == d->cap) {
            size_t nc = d->cap ? 2 * d->cap : 64;
            rep_row *nr = realloc(d->rows, nc * sizeof *nr);
            if (!nr) {
                rc = cli_fail("report", "out of memory");
                break;
            }
            d->rows = nr;
            d->cap = nc;
        }
        if (parse_row(path, lineno, line, &d->rows[d->n]) < 0) {
            rc = -1;
            break;
        }
        d->n++;
    }
    free(line);
    fclose(f);
    if (rc == 0 && d->n == 0)
        rc = cli_fail("report", "%s has no rounds: the run has not completed a round yet", path);
    return rc < 0 ? -1 : rc ? -1 : 0;
}

/* ---- drawing ------------------------------------------------------------------ */

typedef struct {
    double x, y, w, h;          /* plot area */
    double x0, x1, y0, y1;      /* data range */
} panel;

static double px(const panel *p, double v) { return p->x + (v - p->x0) / (p->x1 - p->x0) * p->w; }
static double py(const panel *p, double v) { return p->y + (p->y1 - v) / (p->y1 - p->y0) * p->h; }

static double nice_step(double span, int n)
{
    double raw = span / n, mag = pow(10, floor(log10(raw))), e = raw / mag;
    return mag * (e >= 5 ? 5 : e >= 2 ? 2 : 1);
}

static void fmt_num(char *buf, size_t cap, double v)
{
    const char *unit[] = {"", "k", "M", "G", "T"};
    int u = 0;
    while (fabs(v) >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, cap, "%g%s", round(v * 1000) / 1000, unit[u]);
}

/* Frame, grid, ticks and axis titles of one panel. */
static void axes(FILE *f, const panel *p, const char *title, const char *ylabel)
{
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fff\" "
               "stroke=\"#9aa3b2\"/>\n", p->x, p->y, p->w, p->h);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"15\" font-weight=\"600\">%s</text>\n",
            p->x, p->y - 12, title);
    double ys = nice_step(p->y1 - p->y0, 5);
    for (double v = ceil(p->y0 / ys) * ys; v <= p->y1 + 1e-9 * ys; v += ys) {
        char t[32];
        fmt_num(t, sizeof t, v);
        fprintf(f, "<line class=\"tick\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" "
                   "stroke=\"#e6e9ef\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" "
                   "fill=\"#4a5263\">%s</text>\n",
                p->x, p->x + p->w, py(p, v), py(p, v), p->x - 6, py(p, v) + 4, t);
    }
    double xs = nice_step(p->x1 - p->x0 > 1 ? p->x1 - p->x0 : 1, 10);
    if (xs < 1)
        xs = 1;
    for (double v = ceil(p->x0 / xs) * xs; v <= p->x1 + 1e-9; v += xs)
        fprintf(f, "<line class=\"tick\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" "
                   "stroke=\"#4a5263\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                   "fill=\"#4a5263\">%g</text>\n",
                px(p, v), px(p, v), p->y + p->h, p->y + p->h + 5, px(p, v), p->y + p->h + 18,
                fabs(v) < 1e-9 ? 0.0 : v);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">round</text>\n",
            p->x + p->w / 2, p->y + p->h + 36);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">%s"
               "</text>\n", p->x - 52, p->y + p->h / 2, ylabel);
}

static void legend_n(FILE *f, const panel *p, int i, int n, const char *color, const char *dash,
                     const char *label)
{
    double x = p->x + p->w - 150, y = p->y + 16 + 18 * i;
    if (i == 0)
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"140\" height=\"%d\" fill=\"#fff\" "
                   "fill-opacity=\"0.9\" stroke=\"#e6e9ef\"/>\n", x - 8, y - 12, 6 + 18 * n);
    fprintf(f, "<g class=\"legend\"><line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" "
               "stroke=\"%s\" stroke-width=\"3\"%s/><text x=\"%.1f\" y=\"%.1f\">%s</text></g>\n",
            x, x + 24, y, y, color, dash, x + 30, y + 4, label);
}

static void legend(FILE *f, const panel *p, int i, const char *color, const char *dash,
                   const char *label)
{
    legend_n(f, p, i, 2, color, dash, label);
}

/* A loss series: a line through the measured rounds and one marker each. */
static void loss_series(FILE *f, const panel *p, const rep_data *d, int val)
{
    const char *color = val ? "#1a73e8" : "#e8710a", *cls = val ? "val-point" : "train-point";
    fprintf(f, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s d=\"", color,
            val ? "" : " stroke-dasharray=\"6 4\"");
    int first = 1;
    for (size_t i = 0; i < d->n; i++) {
        double v = val ? d->rows[i].val_loss : d->rows[i].train_loss;
        if (!isfinite(v))
            continue;
        fprintf(f, "%s%.1f,%.1f", first ? "M" : " L", px(p, d->rows[i].round), py(p, v));
        first = 0;
    }
    fprintf(f, "\"/>\n");
    for (size_t i = 0; i < d->n; i++) {
        double v = val ? d->rows[i].val_loss : d->rows[i].train_loss;
        if (isfinite(v))
            fprintf(f, "<circle class=\"%s\" data-round=\"%g\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" "
                       "fill=\"%s\"><title>round %g: %.4f</title></circle>\n",
                    cls, d->rows[i].round, px(p, d->rows[i].round), py(p, v), color,
                    d->rows[i].round, v);
    }
}

static void draw(FILE *f, const rep_data *d, const char *src)
{
    const double W = 960, H = 760;
    panel lp = {90, 60, 820, 260, 0, 0, INFINITY, -INFINITY};
    panel bp = {90, 430, 820, 260, 0, 0, 0, -INFINITY};
    lp.x0 = bp.x0 = d->rows[0].round;
    lp.x1 = bp.x1 = d->rows[0].round;
    for (size_t i = 0; i < d->n; i++) {
        const rep_row *r = &d->rows[i];
        lp.x0 = fmin(lp.x0, r->round);
        lp.x1 = fmax(lp.x1, r->round);
        double l[2] = {r->train_loss, r->val_loss};
        for (int k = 0; k < 2; k++)
            if (isfinite(l[k])) {
                lp.y0 = fmin(lp.y0, l[k]);
                lp.y1 = fmax(lp.y1, l[k]);
            }
        if (isfinite(r->bytes_up))
            bp.y1 = fmax(bp.y1, r->bytes_up);
        if (isfinite(r->bytes_down))
            bp.y1 = fmax(bp.y1, r->bytes_down);
    }
    /* Bars are centred on their round: half a round of margin each side. */
    lp.x0 -= 0.5, lp.x1 += 0.5;
    bp.x0 = lp.x0, bp.x1 = lp.x1;
    if (!isfinite(lp.y0))
        lp.y0 = 0, lp.y1 = 1;
    double pad = (lp.y1 - lp.y0) * 0.08 + 1e-3;
    lp.y0 -= pad, lp.y1 += pad;
    if (!(bp.y1 > 0))
        bp.y1 = 1;
    bp.y1 *= 1.08;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
               "viewBox=\"0 0 %g %g\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"#f6f7f9\"/>\n",
            W, H, W, H);
    fprintf(f, "<text x=\"90\" y=\"24\" font-size=\"13\" fill=\"#4a5263\">fedpeft report: "
               "%zu rounds from ", d->n);
    for (const char *s = src; *s; s++) {  /* the path, escaped */
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '>') fputs("&gt;", f);
        else fputc(*s, f);
    }
    fputs("</text>\n", f);
    axes(f, &lp, "Loss per round", "loss");
    loss_series(f, &lp, d, 0);
    loss_series(f, &lp, d, 1);
    legend(f, &lp, 0, "#1a73e8", "", "validation loss");
    legend(f, &lp, 1, "#e8710a", " stroke-dasharray=\"6 4\"", "train loss");
    axes(f, &bp, "Bytes per round", "bytes");
    double bw = fmin(18, 0.35 * bp.w / (bp.x1 - bp.x0));
    for (size_t i = 0; i < d->n; i++) {
        const rep_row *r = &d->rows[i];
        double v[2] = {r->bytes_up, r->bytes_down};
        const char *cls[2] = {"bytes-up", "bytes-down"}, *col[2] = {"#188038", "#9334e6"};
        for (int k = 0; k < 2; k++) {
            double b = isfinite(v[k]) ? v[k] : 0;
            fprintf(f, "<rect class=\"%s\" data-round=\"%g\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                       "height=\"%.1f\" fill=\"%s\"><title>round %g: %.0f bytes %s</title></rect>\n",
                    cls[k], r->round, px(&bp, r->round) - bw + k * bw, py(&bp, b), bw,
                    py(&bp, 0) - py(&bp, b), col[k], r->round, b, k ? "down" : "up");
        }
    }
    legend(f, &bp, 0, "#188038", "", "bytes up");
    legend(f, &bp, 1, "#9334e6", "", "bytes down");
    fputs("</svg>\n", f);
}

/* Value plotted for run comparisons: validation loss, or bytes up + down. */
static double cmp_value(const rep_row *r, int bytes)
{
    if (!bytes)
        return r->val_loss;
    return isfinite(r->bytes_up) && isfinite(r->bytes_down) ? r->bytes_up + r->bytes_down : NAN;
}

static void cmp_panel(FILE *f, const panel *p, const rep_data *runs, const char *const *labels,
                      size_t k, int bytes)
{
    static const char *colors[] = {"#1a73e8", "#e8710a", "#188038", "#9334e6", "#d93025",
                                   "#12b5cb", "#f9ab00", "#5f6368"};
    axes(f, p, bytes ? "Bytes per round (up + down)" : "Federated validation loss per round",
         bytes ? "bytes" : "loss");
    for (size_t j = 0; j < k; j++) {
        const char *col = colors[j % 8], *dash = j >= 8 ? " stroke-dasharray=\"6 4\"" : "";
        fprintf(f, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s d=\"", col, dash);
        int first = 1;
        for (size_t i = 0; i < runs[j].n; i++) {
            double v = cmp_value(&runs[j].rows[i], bytes);
            if (!isfinite(v))
                continue;
            fprintf(f, "%s%.1f,%.1f", first ? "M" : " L", px(p, runs[j].rows[i].round), py(p, v));
            first = 0;
        }
        fputs("\"/>\n", f);
        for (size_t i = 0; i < runs[j].n; i++) {
            double v = cmp_value(&runs[j].rows[i], bytes);
            if (isfinite(v))
                fprintf(f, "<circle class=\"run-point\" data-run=\"%zu\" data-round=\"%g\" "
                           "cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s, round %g: "
                           "%.4g</title></circle>\n", j, runs[j].rows[i].round,
                        px(p, runs[j].rows[i].round), py(p, v), col, labels[j],
                        runs[j].rows[i].round, v);
        }
        legend_n(f, p, (int)j, (int)k, col, dash, labels[j]);
    }
}

static void draw_compare(FILE *f, const rep_data *runs, const char *const *labels, size_t k)
{
    panel lp = {90, 60, 820, 260, INFINITY, -INFINITY, INFINITY, -INFINITY};
    panel bp = {90, 430, 820, 260, 0, 0, 0, -INFINITY};
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < runs[j].n; i++) {
            const rep_row *r = &runs[j].rows[i];
            lp.x0 = fmin(lp.x0, r->round), lp.x1 = fmax(lp.x1, r->round);
            if (isfinite(r->val_loss))
                lp.y0 = fmin(lp.y0, r->val_loss), lp.y1 = fmax(lp.y1, r->val_loss);
            if (isfinite(cmp_value(r, 1)))
                bp.y1 = fmax(bp.y1, cmp_value(r, 1));
        }
    lp.x0 -= 0.5, lp.x1 += 0.5;
    bp.x0 = lp.x0, bp.x1 = lp.x1;
    if (!isfinite(lp.y0))
        lp.y0 = 0, lp.y1 = 1;
    double pad = (lp.y1 - lp.y0) * 0.08 + 1e-3;
    lp.y0 -= pad, lp.y1 += pad;
    bp.y1 = bp.y1 > 0 ? bp.y1 * 1.08 : 1;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"760\" "
               "viewBox=\"0 0 960 760\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"#f6f7f9\"/>\n"
               "<text x=\"90\" y=\"24\" font-size=\"13\" fill=\"#4a5263\">fedpeft report: "
               "%zu runs compared</text>\n", k);
    cmp_panel(f, &lp, runs, labels, k, 0);
    cmp_panel(f, &bp, runs, labels, k, 1);
    fputs("</svg>\n", f);
}

/* Splits "a,b,c" into labels (in place); returns the count. */
static size_t split_labels(char *s, const char **labels, size_t max);

/* `fedpeft report A B ... --out F`: loads every run, draws the comparison. */
static int report_compare(const char *const *ins, size_t k, char *label_arg, const char **labels,
                          const char *out)
{
    rep_data runs[REP_MAX_RUNS] = {{0}};
    int rc = 1;
    size_t nl = label_arg ? split_labels(label_arg, labels, REP_MAX_RUNS) : 0;
    if (label_arg && nl != k) {
        cli_fail("report", "--labels has %zu names for %zu files; give one per file", nl, k);
        return 2;
    }
    for (size_t j = 0; j < k; j++) {
        if (!label_arg)
            labels[j] = ins[j];
        if (load(ins[j], &runs[j]) < 0)
            goto out;
    }
    FILE *f = fopen(out, "w");
    if (!f) {
        cli_fail("report", "cannot create %s: %s", out, strerror(errno));
        goto out;
    }
    draw_compare(f, runs, labels, k);
    if ((ferror(f) | (fclose(f) != 0)) != 0) {
        cli_fail("report", "cannot write %s: %s", out, strerror(errno));
        goto out;
    }
    printf("report: %zu runs compared -> %s\n", k, out);
    rc = 0;
out:
    for (size_t j = 0; j < k; j++)
        free(runs[j].rows);
    return rc;
}

static size_t split_labels(char *s, const char **labels, size_t max)
{
    size_t n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ","))
        labels[n++] = tok;
    return n;
}

int cmd_report(int argc, char **argv)
{
    const char *ins[REP_MAX_RUNS], *out = NULL, *labels[REP_MAX_RUNS];
    char *label_arg = NULL;
    size_t n_in = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--out") || !strcmp(argv[i], "-o")) {
            if (i + 1 >= argc)
                return cli_fail("report", "--out needs a FILE.svg"), cli_usage_hint("report");
            out = argv[++i];
        } else if (!strncmp(argv[i], "--out=", 6)) {
            out = argv[i] + 6;
        } else if (!strcmp(argv[i], "--labels") && i + 1 < argc) {
            label_arg = argv[++i];
        } else if (!strncmp(argv[i], "--labels=", 9)) {
            label_arg = argv[i] + 9;
        } else if (argv[i][0] == '-') {
            cli_fail("report", "unexpected argument '%s'", argv[i]);
            return cli_usage_hint("report");
        } else if (n_in == REP_MAX_RUNS) {
            cli_fail("report", "at most %d runs can be compared; '%s' is one too many",
                     REP_MAX_RUNS, argv[i]);
            return cli_usage_hint("report");
        } else {
            ins[n_in++] = argv[i];
        }
    }
    if (!n_in || !out) {
        cli_fail("report", "%s", !n_in ? "which METRICS.jsonl? (e.g. sim-out/state/metrics.jsonl)"
                                       : "--out FILE.svg is required");
        return cli_usage_hint("report");
    }
    if (n_in > 1)
        return report_compare(ins, n_in, label_arg, labels, out);
    const char *in = ins[0];
    rep_data d = {0};
    if (load(in, &d) < 0) {
        free(d.rows);
        return 1;
    }
    FILE *f = fopen(out, "w");
    if (!f) {
        cli_fail("report", "cannot create %s: %s", out, strerror(errno));
        free(d.rows);
        return 1;
    }
    draw(f, &d, in);
    int bad = ferror(f) | (fclose(f) != 0);
    free(d.rows);
    if (bad)
        return cli_fail("report", "cannot write %s: %s", out, strerror(errno));
    printf("report: %zu rounds -> %s\n", d.n, out);
    return 0;
}
