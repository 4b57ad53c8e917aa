/* config.h - INI configuration files described by a table of keys.
 *
 * Each program (coordinator, worker, simulate) describes its settings as a
 * table of {section, name, type, min, max, default, field offset, help}, as
 * redis' config.c does; this module parses files and command-line overrides
 * against it. Format (docs/config.md):
 *
 *     # comment            ; comment
 *     [section]
 *     key = value
 *
 * A bad file gives "FILE:LINE: unknown key 'lr' in [train]; valid keys: ..." or
 * "FILE:LINE: [train] steps = 'ten': expected an integer from 1 to 1000000".
 * Every key can be overridden on the command line as --section.key=value or
 * --section.key value.
 */
#ifndef FP_CONFIG_H
#define FP_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "fp_error.h"

typedef enum {
    FP_CFG_INT,     /* int; min/max bound it */
    FP_CFG_U64,     /* uint64_t */
    FP_CFG_FLOAT,   /* float; min/max bound it */
    FP_CFG_DOUBLE,  /* double; min/max bound it */
    FP_CFG_BOOL,    /* int 0/1: true/false, yes/no, on/off, 1/0 */
    FP_CFG_STRING,  /* char[size] (size = the field's capacity) */
    FP_CFG_ENUM,    /* int: index into enum_names */
} fp_cfg_type;

/* Numeric bounds: min == max == 0 means the type's whole range (for FLOAT and
 * DOUBLE: every finite value). NaN and infinities are always refused. Section
 * and key names match case-insensitively. */
typedef struct {
    const char *section;
    const char *name;
    fp_cfg_type type;
    double min, max;            /* numeric bounds (inclusive) */
    const char *def;            /* default, as text (NULL: zero / empty) */
    size_t offset;              /* offsetof(struct, field) */
    size_t size;                /* FP_CFG_STRING: capacity of the char array */
    const char *const *enum_names; /* FP_CFG_ENUM: NULL-terminated */
    const char *help;
} fp_cfg_key;

/* Number of entries of a table terminated by a {NULL} entry. */
size_t fp_cfg_count(const fp_cfg_key *table);

/* Sets every field of obj to its default. -1 only for a broken table. */
int fp_cfg_defaults(const fp_cfg_key *table, void *obj) FP_WUR;

/* Parses an INI file into obj (fields not in the file keep their values).
 * One file may configure several programs (a simulation's coordinator and
 * workers): sections named in `ignore` (NULL-terminated, may be NULL) belong
 * to another program and are skipped; any other section or key that is not
 * in the table is an error naming FILE:LINE. */
int fp_cfg_load_file(const fp_cfg_key *table, void *obj, const char *path,
                     const char *const *ignore) FP_WUR;

/* Sets one key ("section.key") from text; `where` names the source for the
 * error ("command line", "FILE:LINE"). */
int fp_cfg_set(const fp_cfg_key *table, void *obj, const char *dotted, const char *value,
               const char *where) FP_WUR;

/* Applies every --section.key=value / --section.key value in argv[0..argc),
 * leaving other arguments alone (processing stops at "--"). Unknown --x.y keys
 * are errors. A value given as a separate argument must not start with "--". */
int fp_cfg_apply_args(const fp_cfg_key *table, void *obj, int argc, char **argv) FP_WUR;

/* For a program's own argument parser, which must skip config overrides:
 * 0 if arg is not one (no "--", or no '.' in the option name), 1 for
 * "--section.key=value", 2 for "--section.key" (its value is the next arg). */
int fp_cfg_arg_span(const char *arg);

/* Writes the effective configuration as an INI file (docs, --print-config). */
int fp_cfg_write(const fp_cfg_key *table, const void *obj, FILE *f);

/* Prints the table: every key with type, range, default and help. */
void fp_cfg_print_help(const fp_cfg_key *table, FILE *f);

#endif
