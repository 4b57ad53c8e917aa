/* config.c - INI configuration files described by a table of keys (config.h).
 *
 * Parsing uses inih through ini_parse_stream() with our own line reader, which
 * counts lines (for FILE:LINE in every message), refuses lines longer than
 * inih's buffer (inih would otherwise split them silently) and strips leading
 * whitespace (so an indented line is never taken as a multi-line continuation).
 * Values are parsed strictly: the whole text, within the key's bounds.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#define CFG_NAME_MAX 64     /* section / key names we compare or echo */
#define CFG_LIST_MAX 700    /* "valid keys: ..." text */
#define CFG_ECHO "%.80s"    /* how much of an offending value we echo */

size_t fp_cfg_count(const fp_cfg_key *table)
{
    size_t n = 0;
    while (table[n].name)
        n++;
    return n;
}

static void *cfg_field(void *obj, const fp_cfg_key *k) { return (char *)obj + k->offset; }

static const fp_cfg_key *cfg_find(const fp_cfg_key *t, const char *section, const char *name)
{
    for (; t->name; t++)
        if (strcasecmp(t->section, section) == 0 && strcasecmp(t->name, name) == 0)
            return t;
    return NULL;
}

static int cfg_has_section(const fp_cfg_key *t, const char *section)
{
    for (; t->name; t++)
        if (strcasecmp(t->section, section) == 0)
            return 1;
    return 0;
}

/* Appends to a bounded buffer, ending in "..." once it is full. */
static void cfg_append(char *buf, size_t cap, const char *s)
{
    size_t len = strlen(buf), sl = strlen(s);
    if (len + sl + 4 >= cap) {
        if (len + 4 < cap && !strstr(buf, "..."))
            strcat(buf, "...");
        return;
    }
    memcpy(buf + len, s, sl + 1);
}

static void cfg_list_keys(const fp_cfg_key *t, const char *section, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (const fp_cfg_key *k = t; k->name; k++) {
        if (strcasecmp(k->section, section) != 0)
            continue;
        if (buf[0])
            cfg_append(buf, cap, ", ");
        cfg_append(buf, cap, k->name);
    }
}

/* First appearance of each section, in table order. */
static int cfg_first_of_section(const fp_cfg_key *t, const fp_cfg_key *k)
{
    for (const fp_cfg_key *p = t; p < k; p++)
        if (strcasecmp(p->section, k->section) == 0)
            return 0;
    return 1;
}

static void cfg_list_sections(const fp_cfg_key *t, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (const fp_cfg_key *k = t; k->name; k++) {
        if (!cfg_first_of_section(t, k))
            continue;
        if (buf[0])
            cfg_append(buf, cap, ", ");
        cfg_append(buf, cap, "[");
        cfg_append(buf, cap, k->section);
        cfg_append(buf, cap, "]");
    }
}

/* Levenshtein distance, case-insensitive, on at most CFG_NAME_MAX bytes. */
static size_t cfg_distance(const char *a, const char *b)
{
    size_t la = strnlen(a, CFG_NAME_MAX), lb = strnlen(b, CFG_NAME_MAX);
    size_t prev[CFG_NAME_MAX + 1], cur[CFG_NAME_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) !=
                                        tolower((unsigned char)b[j - 1]));
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof *prev);
    }
    return prev[lb];
}

/* The closest key name in section (or section name, if section is NULL), if
 * close enough to be a typo; NULL otherwise. */
static const char *cfg_closest(const fp_cfg_key *t, const char *section, const char *name)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1, len = strnlen(name, CFG_NAME_MAX);
    for (const fp_cfg_key *k = t; k->name; k++) {
        if (section && strcasecmp(k->section, section) != 0)
            continue;
        const char *cand = section ? k->name : k->section;
        size_t d = cfg_distance(name, cand);
        if (d < best_d) {
            best_d = d;
            best = cand;
        }
    }
    if (best && best_d <= 2 && best_d < len)
        return best;
    return NULL;
}

static int cfg_unknown_section(const fp_cfg_key *t, const char *where, const char *section)
{
    char list[CFG_LIST_MAX];
    cfg_list_sections(t, list, sizeof list);
    const char *near = cfg_closest(t, NULL, section);
    return fp_error_set("%s: unknown section [%.64s]%s%s%s; valid sections: %s", where, section,
                        near ? " (did you mean [" : "", near ? near : "", near ? "]?)" : "",
                        list);
}

static int cfg_unknown_key(const fp_cfg_key *t, const char *where, const char *section,
                           const char *name)
{
    char list[CFG_LIST_MAX];
    cfg_list_keys(t, section, list, sizeof list);
    const char *near = cfg_closest(t, section, name);
    return fp_error_set("%s: unknown key '%.64s' in [%.64s]%s%s%s; valid keys: %s", where, name,
                        section, near ? " (did you mean '" : "", near ? near : "",
                        near ? "'?)" : "", list);
}

/* ---- values ------------------------------------------------------------ */

static void cfg_range_text(const fp_cfg_key *k, char *buf, size_t cap)
{
    int integer = k->type == FP_CFG_INT || k->type == FP_CFG_U64;
    const char *what = integer ? "an integer" : "a number";
    if (k->min == 0 && k->max == 0) {
        if (k->type == FP_CFG_U64)
            snprintf(buf, cap, "a non-negative integer");
        else
            snprintf(buf, cap, "%s", what);
    } else if (integer) {
        snprintf(buf, cap, "%s from %.0f to %.0f", what, k->min, k->max);
    } else {
        snprintf(buf, cap, "%s from %g to %g", what, k->min, k->max);
    }
}

static int cfg_bad_value(const fp_cfg_key *k, const char *value, const char *expected)
{
    return fp_error_set("[%s] %s = '" CFG_ECHO "': expected %s", k->section, k->name, value,
                        expected);
}

static int cfg_bad_number(const fp_cfg_key *k, const char *value)
{
    char range[128];
    cfg_range_text(k, range, sizeof range);
    return cfg_bad_value(k, value, range);
}

/* Text that strtoX may take: non-empty, no leading whitespace. */
static int cfg_numeric_start(const char *v) { return *v && !isspace((unsigned char)*v); }

static int cfg_parse_int(const fp_cfg_key *k, void *obj, const char *v)
{
    char *end;
    errno = 0;
    long long x = cfg_numeric_start(v) ? strtoll(v, &end, 10) : 0;
    if (!cfg_numeric_start(v) || *end || errno || x < INT_MIN || x > INT_MAX)
        return cfg_bad_number(k, v);
    if (!(k->min == 0 && k->max == 0) && ((double)x < k->min || (double)x > k->max))
        return cfg_bad_number(k, v);
    *(int *)cfg_field(obj, k) = (int)x;
    return 0;
}

static int cfg_parse_u64(const fp_cfg_key *k, void *obj, const char *v)
{
    char *end;
    errno = 0;
    if (!cfg_numeric_start(v) || *v == '-' || *v == '+')
        return cfg_bad_number(k, v);
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || errno)
        return cfg_bad_number(k, v);
    if (!(k->min == 0 && k->max == 0) && ((double)x < k->min || (double)x > k->max))
        return cfg_bad_number(k, v);
    *(uint64_t *)cfg_field(obj, k) = (uint64_t)x;
    return 0;
}

/* FLOAT bounds are compared in float precision, so that a written value
 * (the shortest text that reads back as the stored float) always loads again. */
static int cfg_parse_real(const fp_cfg_key *k, void *obj, const char *v)
{
    char *end;
    errno = 0;
    double x = cfg_numeric_start(v) ? strtod(v, &end) : NAN;
    if (!cfg_numeric_start(v) || *end || !isfinite(x) || (errno == ERANGE && x != 0))
        return cfg_bad_number(k, v);
    int unbounded = k->min == 0 && k->max == 0;
    if (k->type == FP_CFG_FLOAT) {
        float f = (float)x;
        if (!isfinite(f))
            return cfg_bad_number(k, v);
        if (!unbounded && (f < (float)k->min || f > (float)k->max))
            return cfg_bad_number(k, v);
        *(float *)cfg_field(obj, k) = f;
    } else {
        if (!unbounded && (x < k->min || x > k->max))
            return cfg_bad_number(k, v);
        *(double *)cfg_field(obj, k) = x;
    }
    return 0;
}

static int cfg_parse_bool(const fp_cfg_key *k, void *obj, const char *v)
{
    static const char *const yes[] = {"true", "yes", "on", "1", NULL};
    static const char *const no[] = {"false", "no", "off", "0", NULL};
    for (int i = 0; yes[i]; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *(int *)cfg_field(obj, k) = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *(int *)cfg_field(obj, k) = 0;
            return 0;
        }
    }
    return cfg_bad_value(k, v, "true or false (also yes/no, on/off, 1/0)");
}

static int cfg_parse_enum(const fp_cfg_key *k, void *obj, const char *v)
{
    char list[CFG_LIST_MAX] = "one of: ";
    for (int i = 0; k->enum_names[i]; i++) {
        if (strcasecmp(v, k->enum_names[i]) == 0) {
            *(int *)cfg_field(obj, k) = i;
            return 0;
        }
        if (i)
            cfg_append(list, sizeof list, ", ");
        cfg_append(list, sizeof list, k->enum_names[i]);
    }
    return cfg_bad_value(k, v, list);
}

static int cfg_parse_string(const fp_cfg_key *k, void *obj, const char *v)
{
    size_t len = strlen(v);
    if (len >= k->size)
        return fp_error_set("[%s] %s: value is %zu bytes long; at most %zu allowed", k->section,
                            k->name, len, k->size - 1);
    memcpy(cfg_field(obj, k), v, len + 1);
    return 0;
}

static int cfg_parse_value(const fp_cfg_key *k, void *obj, const char *v)
{
    switch (k->type) {
    case FP_CFG_INT: return cfg_parse_int(k, obj, v);
    case FP_CFG_U64: return cfg_parse_u64(k, obj, v);
    case FP_CFG_FLOAT:
    case FP_CFG_DOUBLE: return cfg_parse_real(k, obj, v);
    case FP_CFG_BOOL: return cfg_parse_bool(k, obj, v);
    case FP_CFG_STRING: return cfg_parse_string(k, obj, v);
    case FP_CFG_ENUM: return cfg_parse_enum(k, obj, v);
    }
    return fp_error_set("[%s] %s: bad type %d in the key table", k->section, k->name,
                        (int)k->type);
}

/* ---- setting keys --------------------------------------------------------- */

static int cfg_set_key(const fp_cfg_key *t, void *obj, const char *section, const char *name,
                       const char *value, const char *where)
{
    if (!cfg_has_section(t, section))
        return cfg_unknown_section(t, where, section);
    const fp_cfg_key *k = cfg_find(t, section, name);
    if (!k)
        return cfg_unknown_key(t, where, section, name);
    if (cfg_parse_value(k, obj, value) < 0)
        return fp_error_prefix("%s: ", where);
    return 0;
}

int fp_cfg_set(const fp_cfg_key *table, void *obj, const char *dotted, const char *value,
               const char *where)
{
    if (!where)
        where = "config";
    const char *dot = strchr(dotted, '.');
    size_t sl = dot ? (size_t)(dot - dotted) : 0;
    if (!dot || sl == 0 || sl >= CFG_NAME_MAX || !dot[1])
        return fp_error_set("%s: '%.64s' is not SECTION.KEY (e.g. train.lr)", where, dotted);
    char section[CFG_NAME_MAX];
    memcpy(section, dotted, sl);
    section[sl] = '\0';
    return cfg_set_key(table, obj, section, dot + 1, value, where);
}

static int cfg_check_table(const fp_cfg_key *t)
{
    for (const fp_cfg_key *k = t; k->name; k++) {
        if (!k->section || !*k->section || !*k->name)
            return fp_error_set("config table: entry %zu has no section or name",
                                (size_t)(k - t));
        if (k->type == FP_CFG_ENUM && (!k->enum_names || !k->enum_names[0]))
            return fp_error_set("config table: [%s] %s is an enum without names", k->section,
                                k->name);
        if (k->type == FP_CFG_STRING && k->size == 0)
            return fp_error_set("config table: [%s] %s is a string of size 0", k->section,
                                k->name);
        if (k->min > k->max)
            return fp_error_set("config table: [%s] %s has min > max", k->section, k->name);
        for (const fp_cfg_key *p = t; p < k; p++)
            if (strcasecmp(p->section, k->section) == 0 && strcasecmp(p->name, k->name) == 0)
                return fp_error_set("config table: [%s] %s appears twice", k->section,
                                    k->name);
    }
    return 0;
}

int fp_cfg_defaults(const fp_cfg_key *table, void *obj)
{
    if (cfg_check_table(table) < 0)
        return -1;
    for (const fp_cfg_key *k = table; k->name; k++) {
        const char *def = k->def;
        if (!def) { /* zero / empty / the first enum name */
            size_t sz = k->type == FP_CFG_STRING   ? 1
                        : k->type == FP_CFG_U64    ? sizeof(uint64_t)
                        : k->type == FP_CFG_DOUBLE ? sizeof(double)
                        : k->type == FP_CFG_FLOAT  ? sizeof(float)
                                                   : sizeof(int);
            memset(cfg_field(obj, k), 0, sz);
            continue;
        }
        if (cfg_parse_value(k, obj, def) < 0)
            return fp_error_prefix("config table: bad default: ");
    }
    return 0;
}

/* ---- files ------------------------------------------------------------------- */

typedef struct {
    const fp_cfg_key *table;
    void *obj;
    const char *path;
    const char *const *ignore;
    FILE *f;
    int lineno;             /* line last handed to inih */
    int failed, fail_line;  /* first error we reported ourselves */
    char *buf;              /* getline buffer */
    size_t cap;
} cfg_load;

/* inih's line reader (fgets-like): counts lines, strips leading whitespace,
 * refuses lines inih cannot hold, and stops once we have failed. */
static char *cfg_reader(char *str, int num, void *stream)
{
    cfg_load *c = stream;
    if (c->failed)
        return NULL;
    ssize_t n = getline(&c->buf, &c->cap, c->f);
    if (n < 0)
        return NULL;
    c->lineno++;
    while (n > 0 && (c->buf[n - 1] == '\n' || c->buf[n - 1] == '\r'))
        c->buf[--n] = '\0';
    char *s = c->buf;
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strlen(s);
    if (len + 1 >= (size_t)num) {
        c->failed = 1;
        c->fail_line = c->lineno;
        fp_error_set("%s:%d: line is %zu characters long; at most %d are allowed", c->path,
                     c->lineno, len, num - 2);
        return NULL;
    }
    memcpy(str, s, len + 1);
    return str;
}

static int cfg_in_list(const char *const *list, const char *s)
{
    for (; list && *list; list++)
        if (strcasecmp(*list, s) == 0)
            return 1;
    return 0;
}

static int cfg_handler(void *user, const char *section, const char *name, const char *value)
{
    cfg_load *c = user;
    if (c->failed)
        return 0;
    char where[600];
    snprintf(where, sizeof where, "%s:%d", c->path, c->lineno);
    int rc = 0;
    if (!*section) {
        char list[CFG_LIST_MAX];
        cfg_list_sections(c->table, list, sizeof list);
        rc = fp_error_set("%s: key '%.64s' is outside any section; put it under a section "
                          "header (valid sections: %s)", where, name, list);
    } else if (!cfg_has_section(c->table, section) && cfg_in_list(c->ignore, section)) {
        return 1; /* another program's section */
    } else {
        rc = cfg_set_key(c->table, c->obj, section, name, value, where);
    }
    if (rc < 0) {
        c->failed = 1;
        c->fail_line = c->lineno;
        return 0;
    }
    return 1;
}

/* Line n of path (1-based), for a syntax error; "" if it cannot be read. */
static void cfg_line_text(const char *path, int n, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char *line = NULL;
    size_t lcap = 0;
    for (int i = 1; getline(&line, &lcap, f) >= 0; i++) {
        if (i == n) {
            line[strcspn(line, "\r\n")] = '\0';
            snprintf(out, cap, "%s", line);
            break;
        }
    }
    free(line);
    fclose(f);
}

int fp_cfg_load_file(const fp_cfg_key *table, void *obj, const char *path,
                     const char *const *ignore)
{
    cfg_load c = {.table = table, .obj = obj, .path = path, .ignore = ignore};
    c.f = fopen(path, "r");
    if (!c.f)
        return fp_error_set("cannot open config file %s: %s; check the path (an example is "
                            "in configs/; docs/config.md describes the format)",
                            path, strerror(errno));
    int rc = ini_parse_stream(cfg_reader, &c, cfg_handler, &c);
    int read_err = ferror(c.f);
    free(c.buf);
    fclose(c.f);
    if (rc > 0 && (!c.failed || rc < c.fail_line)) {
        char text[128];
        cfg_line_text(path, rc, text, sizeof text);
        return fp_error_set("%s:%d: cannot parse '%s': expected [section], key = value, or a "
                            "comment starting with # or ;", path, rc, text);
    }
    if (c.failed)
        return -1;
    if (read_err)
        return fp_error_set("reading config file %s failed", path);
    if (rc != 0)
        return fp_error_set("reading config file %s: out of memory", path);
    return 0;
}

/* ---- command line ---------------------------------------------------------- */

int fp_cfg_arg_span(const char *arg)
{
    if (!arg || strncmp(arg, "--", 2) != 0 || !isalpha((unsigned char)arg[2]))
        return 0;
    size_t nl = strcspn(arg + 2, "=");
    const char *dot = memchr(arg + 2, '.', nl);
    if (!dot)
        return 0;
    return arg[2 + nl] == '=' ? 1 : 2;
}

int fp_cfg_apply_args(const fp_cfg_key *table, void *obj, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!a)
            continue;
        if (strcmp(a, "--") == 0)
            break;
        int span = fp_cfg_arg_span(a);
        if (span == 0)
            continue;
        char dotted[2 * CFG_NAME_MAX + 2], where[2 * CFG_NAME_MAX + 40];
        size_t nl = strcspn(a + 2, "=");
        if (nl >= sizeof dotted)
            return fp_error_set("command line: option '%.64s...' is too long", a);
        memcpy(dotted, a + 2, nl);
        dotted[nl] = '\0';
        snprintf(where, sizeof where, "command line (--%s)", dotted);
        const char *value;
        if (span == 1) {
            value = a + 2 + nl + 1;
        } else {
            if (i + 1 >= argc || !argv[i + 1] || strncmp(argv[i + 1], "--", 2) == 0)
                return fp_error_set("%s: needs a value: --%s=VALUE or --%s VALUE", where, dotted,
                                    dotted);
            value = argv[++i];
        }
        if (fp_cfg_set(table, obj, dotted, value, where) < 0)
            return -1;
    }
    return 0;
}

/* ---- output ------------------------------------------------------------------ */

static void cfg_format_value(const fp_cfg_key *k, const void *obj, char *buf, size_t cap)
{
    const void *p = (const char *)obj + k->offset;
    switch (k->type) {
    case FP_CFG_INT: snprintf(buf, cap, "%d", *(const int *)p); break;
    case FP_CFG_U64: snprintf(buf, cap, "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case FP_CFG_FLOAT: { /* the shortest text that reads back as the same float */
        float v = *(const float *)p;
        for (int prec = 6; prec <= 9; prec++) {
            snprintf(buf, cap, "%.*g", prec, (double)v);
            if (strtof(buf, NULL) == v)
                break;
        }
        break;
    }
    case FP_CFG_DOUBLE: snprintf(buf, cap, "%.17g", *(const double *)p); break;
    case FP_CFG_BOOL: snprintf(buf, cap, "%s", *(const int *)p ? "true" : "false"); break;
    case FP_CFG_STRING: snprintf(buf, cap, "%.*s", (int)k->size, (const char *)p); break;
    case FP_CFG_ENUM: {
        int v = *(const int *)p, n = 0;
        while (k->enum_names[n])
            n++;
        snprintf(buf, cap, "%s", v >= 0 && v < n ? k->enum_names[v] : "?");
        break;
    }
    }
}

/* A string the INI syntax cannot carry back unchanged. */
static int cfg_unwritable(const char *s)
{
    size_t len = strlen(s);
    if (len && (isspace((unsigned char)s[0]) || isspace((unsigned char)s[len - 1])))
        return 1;
    if (s[0] == ';' || strchr(s, '\n') || strchr(s, '\r'))
        return 1;
    for (size_t i = 1; i < len; i++)
        if (s[i] == ';' && isspace((unsigned char)s[i - 1]))
            return 1;
    return 0;
}

int fp_cfg_write(const fp_cfg_key *table, const void *obj, FILE *f)
{
    char val[4200];
    for (const fp_cfg_key *s = table; s->name; s++) {
        if (!cfg_first_of_section(table, s))
            continue;
        if (fprintf(f, "%s[%s]\n", s == table ? "" : "\n", s->section) < 0)
            goto err;
        for (const fp_cfg_key *k = s; k->name; k++) {
            if (strcasecmp(k->section, s->section) != 0)
                continue;
            cfg_format_value(k, obj, val, sizeof val);
            if (k->type == FP_CFG_STRING && cfg_unwritable(val))
                return fp_error_set("cannot write [%s] %s = '" CFG_ECHO "': an INI value "
                                    "cannot start or end with spaces, contain ' ;' or a "
                                    "newline", k->section, k->name, val);
            if (k->help && fprintf(f, "# %s\n", k->help) < 0)
                goto err;
            if (fprintf(f, "%s = %s\n", k->name, val) < 0)
                goto err;
        }
    }
    if (fflush(f) != 0)
        goto err;
    return 0;
err:
    return fp_error_set("writing the configuration failed: %s", strerror(errno));
}

static const char *cfg_type_name(const fp_cfg_key *k)
{
    switch (k->type) {
    case FP_CFG_INT: return "integer";
    case FP_CFG_U64: return "integer >= 0";
    case FP_CFG_FLOAT:
    case FP_CFG_DOUBLE: return "number";
    case FP_CFG_BOOL: return "true/false";
    case FP_CFG_STRING: return "text";
    case FP_CFG_ENUM: return "choice";
    }
    return "?";
}

void fp_cfg_print_help(const fp_cfg_key *table, FILE *f)
{
    for (const fp_cfg_key *s = table; s->name; s++) {
        if (!cfg_first_of_section(table, s))
            continue;
        fprintf(f, "[%s]\n", s->section);
        for (const fp_cfg_key *k = s; k->name; k++) {
            if (strcasecmp(k->section, s->section) != 0)
                continue;
            char range[CFG_LIST_MAX];
            range[0] = '\0';
            if (k->type == FP_CFG_ENUM) {
                for (int i = 0; k->enum_names[i]; i++) {
                    if (i)
                        cfg_append(range, sizeof range, "|");
                    cfg_append(range, sizeof range, k->enum_names[i]);
                }
            } else if ((k->type == FP_CFG_INT || k->type == FP_CFG_U64 ||
                        k->type == FP_CFG_FLOAT || k->type == FP_CFG_DOUBLE) &&
                       !(k->min == 0 && k->max == 0)) {
                snprintf(range, sizeof range, "%.15g..%.15g", k->min, k->max);
            } else if (k->type == FP_CFG_STRING) {
                snprintf(range, sizeof range, "up to %zu bytes", k->size - 1);
            }
            const char *def = k->def;
            if (!def)
                def = k->type == FP_CFG_STRING ? "" : k->type == FP_CFG_ENUM ? k->enum_names[0]
                      : k->type == FP_CFG_BOOL ? "false" : "0";
            fprintf(f, "  %s.%s  (%s%s%s; default: %s)\n", k->section, k->name,
                    cfg_type_name(k), range[0] ? ", " : "", range, *def ? def : "(empty)");
            if (k->help)
                fprintf(f, "      %s\n", k->help);
        }
    }
    fprintf(f, "Set a key in the config file's [section], or on the command line as\n"
               "--section.key=value or --section.key value (the command line wins).\n");
}
