/* fuzz_config.c - INI files through the key tables (common/base/config.c on
 * inih): the coordinator's (coordinator/coord_config.c, with its checks
 * across keys) and the worker's (worker/worker_config.c), compiled in
 * without the programs' main(). The same file is read by both, as one file
 * configures a whole simulation.
 *
 * What a table accepted is written back with fp_cfg_write (--print-config)
 * and must read back to the same settings. */
#undef NDEBUG /* the harnesses check with assert */
#include <assert.h>
#include <string.h>

#include "coord_config.h"
#include "fuzz_util.h"
#include "worker_config.h"

/* Writes obj's effective settings and reads them into a fresh default obj;
 * 0 when fp_cfg_write refused a value INI cannot carry (documented). */
static int round_trip(const fp_cfg_key *table, const void *obj, void *again, size_t size,
                       const char *const *ignore)
{
    char path[600];
    snprintf(path, sizeof path, "%s/config.ini", fz_tmpdir());
    FILE *f = fopen(path, "w");
    assert(f);
    int wrote = fp_cfg_write(table, obj, f) == 0;
    fclose(f);
    if (!wrote)
        return 0;
    memset(again, 0, size);
    assert(fp_cfg_defaults(table, again) == 0);
    if (fp_cfg_load_file(table, again, path, ignore) != 0) {
        fprintf(stderr, "fuzz_config: --print-config output does not read back: %s\n",
                fp_error_get());
        abort();
    }
    return 1;
}

/* Aborts naming the first key whose value did not read back. */
static void same(const fp_cfg_key *table, const void *a, const void *b)
{
    for (const fp_cfg_key *k = table; k->name; k++) {
        const char *x = (const char *)a + k->offset, *y = (const char *)b + k->offset;
        int differ;
        switch (k->type) {
        case FP_CFG_STRING: differ = strncmp(x, y, k->size) != 0; break;
        case FP_CFG_U64: differ = memcmp(x, y, sizeof(uint64_t)) != 0; break;
        case FP_CFG_FLOAT: differ = memcmp(x, y, sizeof(float)) != 0; break;
        case FP_CFG_DOUBLE: differ = memcmp(x, y, sizeof(double)) != 0; break;
        default: differ = memcmp(x, y, sizeof(int)) != 0; break;
        }
        if (differ) {
            fprintf(stderr, "fuzz_config: [%s] %s does not read back from --print-config\n",
                    k->section, k->name);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char path[600];
    snprintf(path, sizeof path, "%s", fz_write("input", data, len, 0600));
    static coord_config c, c2;
    if (fz_verdict("coord_config_load (checked)", coord_config_load(&c, path, 0, NULL, 1) == 0) ||
        fz_verdict("coord_config_load", coord_config_load(&c, path, 0, NULL, 0) == 0)) {
        if (round_trip(coord_config_keys, &c, &c2, sizeof c2, coord_config_ignore)) {
            same(coord_config_keys, &c, &c2);
        }
    }
    static wk_config w, w2;
    if (fz_verdict("wk_config_load", wk_config_load(&w, path, 0, NULL) == 0)) {
        if (round_trip(wk_config_keys, &w, &w2, sizeof w2, wk_config_ignore))
            same(wk_config_keys, &w, &w2);
    }
    return 0;
}
