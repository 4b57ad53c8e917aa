/* partition.h - splitting one data file into shards, one per simulated
 * worker, IID or with controlled label skew.
 *
 * Strategies (--by):
 *  - iid: a seeded shuffle of the examples, dealt round-robin (sizes differ
 *    by at most one example).
 *  - dirichlet:ALPHA:FIELD: for each value of FIELD, the proportions across
 *    workers are drawn from Dirichlet(ALPHA) (Gamma draws by Marsaglia-Tsang)
 *    and that value's examples, shuffled, are cut at those proportions, the
 *    usual label-skew benchmark (Hsu et al. 2019). Small ALPHA: each worker
 *    sees few labels; large ALPHA: close to IID. Draws are repeated (up to
 *    1000 times) until every shard has at least 2 examples.
 *  - field:NAME: examples grouped by the value of NAME; groups, largest
 *    first (equal sizes in a seeded order), go to the shard that is smallest
 *    so far (greedy balance by size).
 *  - speaker: plain text play scripts; a speech is a block whose first line
 *    is `Name:`, its label the name (a block without one continues the last
 *    speech's speaker). Speakers are grouped like field:NAME, as in the
 *    Shakespeare task of McMahan et al. 2017.
 * With workers == 0, field and speaker give one shard per label value;
 * values with fewer than 2 examples are then dropped (LEAF does the same).
 * Otherwise no example is lost, and every shard must hold at least 2
 * examples (so a worker can hold one out for validation) or it is an error.
 * Within a shard the examples keep their order in the input file.
 *
 * Size of an example: tokens with a tokenizer, else bytes of the record as
 * written to the shard. Non-IID score: the mean over shards of the total
 * variation distance between the shard's label distribution and the whole
 * file's, 0.5 * sum_l |p_shard(l) - p(l)|: 0 for identical mixes, near 1 when
 * each shard holds labels the others rarely have.
 */
#ifndef FP_PARTITION_H
#define FP_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "fp_error.h"
#include "rng.h"

struct fp_tokenizer;

typedef enum { FP_PART_IID, FP_PART_DIRICHLET, FP_PART_FIELD, FP_PART_SPEAKER } fp_part_kind;

typedef struct {
    fp_part_kind kind;
    double alpha;               /* dirichlet */
    char field[128];            /* dirichlet, field; "speaker" for speaker */
} fp_part_spec;

/* "iid", "dirichlet:ALPHA:FIELD", "field:NAME", "speaker". */
int fp_part_parse(const char *s, fp_part_spec *out) FP_WUR;

#define FP_NO_LABEL SIZE_MAX
#define FP_DROPPED SIZE_MAX

/* The examples of one file, as they will be written, with labels. */
typedef struct {
    fp_data_format format;      /* text or a JSON form */
    size_t n;
    char **raw;                 /* a JSON line (no newline) or a text block */
    size_t *raw_len;
    size_t *size;               /* tokens or bytes (see above) */
    size_t *label;              /* index into labels, or FP_NO_LABEL */
    char **labels;              /* sorted label values */
    size_t n_labels;
    size_t skipped;
    char first_skipped[256];
} fp_part_data;

/* Reads path; label_field (may be NULL) names the label: a JSON field, or
 * "speaker" for plain text. tok (may be NULL) measures sizes in tokens.
 * Caller frees. */
int fp_part_data_load(const char *path, fp_data_format format, int skip_bad,
                      const char *label_field, const struct fp_tokenizer *tok,
                      fp_part_data *out) FP_WUR;
void fp_part_data_free(fp_part_data *d);

/* Fills shard_of[d->n] (a shard, or FP_DROPPED) and *n_shards. */
int fp_partition_assign(const fp_part_spec *spec, const fp_part_data *d, size_t workers,
                        uint64_t seed, size_t *shard_of, size_t *n_shards) FP_WUR;

/* The non-IID score above; NAN when the examples carry no labels. */
double fp_partition_noniid(const fp_part_data *d, const size_t *shard_of, size_t n_shards);

/* Writes DIR/shard-NNN.jsonl (JSON input) or .txt (plain text), creating
 * DIR. The name of shard s is fp_partition_shard_name(d, s, buf). */
int fp_partition_write(const fp_part_data *d, const size_t *shard_of, size_t n_shards,
                       const char *dir) FP_WUR;
const char *fp_partition_shard_name(const fp_part_data *d, size_t s, char buf[64]);

/* Gamma(alpha, 1) (Marsaglia & Tsang 2000; alpha < 1 by the U^(1/alpha) boost). */
double fp_gamma_sample(fp_rng *r, double alpha);

#endif
