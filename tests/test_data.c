/* test_data.c - data loading (JSONL/JSON input_ids, plain text), error
 * messages, batch order with and without shuffle, eval rows, loss masks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "tokenizer.h"
#include "test_util.h"

#define HAS(hay, needle) \
    do { \
        if (!strstr((hay), (needle))) \
            fail_msg("expected \"%s\" in: %s", (needle), (hay)); \
    } while (0)

static const char *write_tmp(const char *tag, const char *name, const char *text)
{
    const char *p = tu_path(tu_tempdir(tag), name);
    assert_int_equal(tu_write_file(p, text, strlen(text)), 0);
    return p;
}

/* Loads text expecting failure; returns the error message. */
static const char *load_fails(const char *path, const char *text, int vocab)
{
    if (text)
        assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    fp_tokens t = { 0 };
    fp_error_clear();
    assert_int_equal(fp_data_load(path, NULL, vocab, &t), -1);
    assert_null(t.ids);
    assert_int_equal(t.n, 0);
    return fp_error_get();
}

static void test_jsonl_ids(void **state)
{
    (void)state;
    const char *p = write_tmp("data-jsonl", "d.jsonl",
                              "{\"input_ids\": [1, 2, 3]}\n"
                              "\n"
                              "  {\"input_ids\": [], \"other\": \"ignored\"}\n"
                              "{\"input_ids\": [511, 0]}\n");
    fp_tokens t = { 0 };
    assert_int_equal(fp_data_load(p, NULL, 512, &t), 0);
    assert_int_equal(t.n, 5);
    assert_null(t.loss);
    const int32_t want[5] = { 1, 2, 3, 511, 0 };
    assert_memory_equal(t.ids, want, sizeof want);
    fp_tokens_free(&t);
    assert_null(t.ids);
    assert_int_equal(t.n, 0);

    /* One JSON array of records, pretty-printed over several lines. */
    p = write_tmp("data-json", "d.json",
                  "[\n  {\"input_ids\": [7, 8]},\n  {\"input_ids\": [9]}\n]\n");
    assert_int_equal(fp_data_load(p, NULL, 512, &t), 0);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.ids[0], 7);
    assert_int_equal(t.ids[2], 9);
    fp_tokens_free(&t);
}

static void test_bad_ids(void **state)
{
    (void)state;
    const char *p = tu_path(tu_tempdir("data-badid"), "bad.jsonl");
    char want[512];
    snprintf(want, sizeof want, "%s:2: input_ids[7] = 9999 is outside the vocabulary "
             "(0..511); was it tokenized for another model?", p);
    const char *e = load_fails(p, "{\"input_ids\": [1]}\n"
                               "{\"input_ids\": [0,1,2,3,4,5,6,9999]}\n", 512);
    assert_string_equal(e, want);
    e = load_fails(p, "{\"input_ids\": [-1]}\n", 512);
    HAS(e, ":1: input_ids[0] = -1 is outside the vocabulary");
    e = load_fails(p, "{\"input_ids\": [1, 2.5]}\n", 512);
    HAS(e, ":1: input_ids[1] is not an integer");
    e = load_fails(p, "{\"input_ids\": \"1 2 3\"}\n", 512);
    HAS(e, "must be a list of integers");
    e = load_fails(p, "[1, 2, 3]\n", 512);
    HAS(e, "expected a JSON object per record");
}

static void test_syntax_and_form_errors(void **state)
{
    (void)state;
    const char *p = tu_path(tu_tempdir("data-syntax"), "s.jsonl");
    char want[512];
    snprintf(want, sizeof want, "%s:3: invalid JSON", p);
    const char *e = load_fails(p, "{\"input_ids\": [1]}\n{\"input_ids\": [2]}\n"
                               "{\"input_ids\": [3,]}\n{\"input_ids\": [4]}\n", 512);
    HAS(e, want);
    /* In a JSON array, a bad element is reported at its line too. */
    e = load_fails(p, "[\n{\"input_ids\": [1]},\n{\"input_ids\": [2]}\n{\"input_ids\": [3]}\n]",
                   512);
    HAS(e, ":4: invalid JSON: expected ',' or ']' after the record ending on line 3");
    e = load_fails(p, "[\n{\"input_ids\": [1]},\n{\"input_ids\": [2, }\n]", 512);
    HAS(e, ":3: invalid JSON");
    e = load_fails(p, "[\n{\"input_ids\": [1]},\n", 512);
    HAS(e, "invalid JSON");
    /* The first record sets the form; a later one of another form names its line. */
    snprintf(want, sizeof want, "%s:2: no \"input_ids\" field (the file's form is "
             "pre-tokenized ids)", p);
    e = load_fails(p, "{\"input_ids\": [1]}\n{\"text\": \"hello\"}\n", 512);
    assert_string_equal(e, want);
    e = load_fails(p, "{\"foo\": 1}\n", 512);
    HAS(e, ":1: cannot tell the form of the first record");
}

static void test_file_errors(void **state)
{
    (void)state;
    char dir[4096];   /* tu_* paths live in a rotating buffer: keep a copy */
    snprintf(dir, sizeof dir, "%s", tu_tempdir("data-files"));
    const char *missing = tu_path(dir, "nope.txt");
    const char *e = load_fails(missing, NULL, 512);
    HAS(e, missing);
    HAS(e, "No such file or directory");
    e = load_fails(tu_path(dir, "empty.txt"), " \n\t\n", 512);
    HAS(e, "empty");
    e = load_fails(tu_path(dir, "empty.jsonl"), "{\"input_ids\": []}\n", 512);
    HAS(e, "no tokens");
    e = load_fails(tu_path(dir, "plain.txt"), "Once upon a time\n", 512);
    HAS(e, "plain.txt: plain text needs a tokenizer (the model directory's tokenizer.json)");
    e = load_fails(dir, NULL, 512);   /* a directory is not a data file */
    HAS(e, dir);
}

/* ids 0..n-1, so a row's first input / T is its row index. */
static fp_tokens iota(size_t n)
{
    fp_tokens t = { malloc(n * sizeof(int32_t)), NULL, n };
    for (size_t i = 0; i < n; i++)
        t.ids[i] = (int32_t)i;
    return t;
}

static void test_rows_and_eval(void **state)
{
    (void)state;
    fp_tokens t = iota(41);
    assert_int_equal(fp_data_rows(&t, 4), 10);   /* (41 - 1) / 4 */
    t.n = 40;
    assert_int_equal(fp_data_rows(&t, 4), 9);    /* the last row would need token 40 */
    t.n = 43;
    assert_int_equal(fp_data_rows(&t, 4), 10);   /* incomplete tail dropped */
    t.n = 4;
    assert_int_equal(fp_data_rows(&t, 4), 0);
    t.n = 5;
    assert_int_equal(fp_data_rows(&t, 4), 1);
    t.n = 41;
    int32_t in[4], tg[4];
    fp_data_eval_row(&t, 4, 9, in, tg);
    const int32_t wi[4] = { 36, 37, 38, 39 }, wt[4] = { 37, 38, 39, 40 };
    assert_memory_equal(in, wi, sizeof wi);
    assert_memory_equal(tg, wt, sizeof wt);
    fp_tokens_free(&t);
}

static void test_batch_order(void **state)
{
    (void)state;
    enum { B = 3, T = 4 };
    fp_tokens t = iota(41);     /* 10 rows */
    fp_batcher *bt = fp_batcher_new(&t, B, T, 0, 0);
    assert_non_null(bt);
    int32_t in[B * T], tg[B * T];
    /* Step j row b starts at token ((j*B + b) mod 10) * T: step 0 reads
     * tokens [0, 13), step 3 reads rows 9, 0, 1 (wrapped). */
    for (int j = 0; j < 25; j++) {
        fp_batcher_get(bt, j, in, tg);
        for (int b = 0; b < B; b++) {
            int start = ((j * B + b) % 10) * T;
            for (int i = 0; i < T; i++) {
                assert_int_equal(in[b * T + i], start + i);
                assert_int_equal(tg[b * T + i], start + i + 1);
            }
        }
    }
    fp_batcher_get(bt, 3, in, tg);
    assert_int_equal(in[0], 36);
    assert_int_equal(tg[3], 40);
    assert_int_equal(in[T], 0);
    assert_int_equal(in[2 * T], 4);
    fp_batcher_free(&bt);
    assert_null(bt);
    fp_batcher_free(&bt);

    /* Too little data for one batch. */
    fp_error_clear();
    assert_null(fp_batcher_new(&t, 11, T, 0, 0));
    HAS(fp_error_get(), "41 tokens");
    HAS(fp_error_get(), "10 rows");
    assert_null(fp_batcher_new(&t, 0, T, 0, 0));
    fp_tokens_free(&t);
}

/* Rows visited for k = 0 .. nk-1 (k = j*B + b). */
static void visit(const fp_tokens *t, int B, int T, uint64_t seed, int steps, int *rows)
{
    fp_batcher *bt = fp_batcher_new(t, B, T, 1, seed);
    assert_non_null(bt);
    int32_t *in = malloc(sizeof(int32_t) * B * T), *tg = malloc(sizeof(int32_t) * B * T);
    for (int j = 0; j < steps; j++) {
        fp_batcher_get(bt, j, in, tg);
        for (int b = 0; b < B; b++) {
            int s = in[b * T];
            assert_int_equal(s % T, 0);
            for (int i = 0; i < T; i++)
                assert_int_equal(tg[b * T + i], s + i + 1);
            rows[j * B + b] = s / T;
        }
    }
    free(in);
    free(tg);
    fp_batcher_free(&bt);
}

static void test_shuffle(void **state)
{
    (void)state;
    enum { T = 4, R = 10, EPOCHS = 3 };
    fp_tokens t = iota(R * T + 1);
    int a[R * EPOCHS], b[R * EPOCHS], c[R * EPOCHS];
    visit(&t, 1, T, 42, R * EPOCHS, a);
    /* Each epoch is a permutation of the rows. */
    for (int e = 0; e < EPOCHS; e++) {
        int seen[R] = { 0 };
        for (int i = 0; i < R; i++)
            seen[a[e * R + i]]++;
        for (int i = 0; i < R; i++)
            assert_int_equal(seen[i], 1);
    }
    /* Epochs differ from each other and from the plain order. */
    assert_memory_not_equal(a, a + R, sizeof(int) * R);
    int ident = 1;
    for (int i = 0; i < R; i++)
        ident &= a[i] == i;
    assert_false(ident);
    /* Deterministic per seed, and the order depends only on j*B + b, so a
     * batch of 3 (which straddles epochs) sees the same sequence. */
    visit(&t, 3, T, 42, R, b);
    assert_memory_equal(a, b, sizeof a);
    visit(&t, 1, T, 43, R * EPOCHS, c);
    assert_memory_not_equal(a, c, sizeof a);
    /* Going back to an earlier step gives the same rows again. */
    fp_batcher *bt = fp_batcher_new(&t, 1, T, 1, 42);
    assert_non_null(bt);
    int32_t in[T], tg[T];
    fp_batcher_get(bt, 25, in, tg);
    fp_batcher_get(bt, 3, in, tg);
    assert_int_equal(in[0] / T, a[3]);
    fp_batcher_free(&bt);
    fp_tokens_free(&t);
}

static void test_loss_mask(void **state)
{
    (void)state;
    fp_tokens t = iota(9);
    t.loss = malloc(9);
    const uint8_t flags[9] = { 0, 0, 1, 1, 0, 1, 1, 1, 0 };
    memcpy(t.loss, flags, 9);
    fp_batcher *bt = fp_batcher_new(&t, 2, 4, 0, 0);
    assert_non_null(bt);
    int32_t in[8], tg[8];
    fp_batcher_get(bt, 0, in, tg);
    /* target i is token i+1, masked where loss[i+1] == 0. */
    const int32_t wi[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    const int32_t wt[8] = { -1, 2, 3, -1, 5, 6, 7, -1 };
    assert_memory_equal(in, wi, sizeof wi);
    assert_memory_equal(tg, wt, sizeof wt);
    int32_t ei[4], et[4];
    fp_data_eval_row(&t, 4, 1, ei, et);
    assert_memory_equal(et, wt + 4, sizeof et);
    fp_batcher_free(&bt);
    fp_tokens_free(&t);
}

/* Plain text through the real LLaMA-2 tokenizer.json; reference ids from
 * tests/fixtures/tokenizers/llama2/reference_ids.jsonl ("Hello world"). */
static void test_plain_text(void **state)
{
    (void)state;
    fp_tokenizer *tok = fp_tokenizer_load(tu_fixture("tokenizers/llama2"));
    if (!tok)
        fail_msg("loading the llama2 tokenizer: %s", fp_error_get());
    const char *p = write_tmp("data-text", "hello.txt", "Hello world");
    fp_tokens t = { 0 };
    if (fp_data_load(p, tok, 32000, &t) != 0)
        fail_msg("%s", fp_error_get());
    assert_int_equal(t.n, 2);
    assert_int_equal(t.ids[0], 15043);  /* no BOS */
    assert_int_equal(t.ids[1], 3186);
    assert_null(t.loss);
    fp_tokens_free(&t);
    /* A model with a smaller vocabulary than the tokenizer's output. */
    fp_error_clear();
    assert_int_equal(fp_data_load(p, tok, 512, &t), -1);
    HAS(fp_error_get(), "15043");
    HAS(fp_error_get(), "do tokenizer and model match?");
    fp_tokenizer_free(&tok);
}

/* Plain text through the stories260K tokenizer, converted from llama2.c's
 * tok512.bin: ids stay in the 512 vocabulary and decode back to the text;
 * " Once" is id 403 (data/stories260K/SOURCE.md). */
static void test_plain_text_tok512(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", tu_tempdir("data-tok512"));
    char tj[4200];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    if (fp_tokenizer_convert_llama2c(tu_data("stories260K/tok512.bin"), 512,
                                     tj) != 0)
        fail_msg("converting tok512.bin: %s", fp_error_get());
    fp_tokenizer *tok = fp_tokenizer_load(tj);
    if (!tok)
        fail_msg("loading %s: %s", tj, fp_error_get());
    const char *text = "Once upon a time, there was a little girl named Lily.";
    char path[4200];
    snprintf(path, sizeof path, "%s/story.txt", dir);
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
    fp_tokens t = { 0 };
    if (fp_data_load(path, tok, 512, &t) != 0)
        fail_msg("%s", fp_error_get());
    assert_true(t.n > 5 && t.n < strlen(text));
    assert_int_equal(t.ids[0], 403);
    for (size_t i = 0; i < t.n; i++)
        assert_true(t.ids[i] >= 0 && t.ids[i] < 512);
    char *back = fp_tokenizer_decode(tok, t.ids, t.n, 1);
    assert_non_null(back);
    assert_string_equal(back, text);
    free(back);
    fp_tokens_free(&t);
    fp_tokenizer_free(&tok);
}

/* ------------------------------------------------------------ dataset forms */

/* The stories260K tokenizer (tok512.bin converted), loaded once. */
static fp_tokenizer *tok512(void)
{
    static fp_tokenizer *tok;
    static char tj[4200];
    if (tok)
        return tok;
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tu_tempdir("data-tok512-forms"));
    if (fp_tokenizer_convert_llama2c(tu_data("stories260K/tok512.bin"), 512,
                                     tj) != 0)
        fail_msg("converting tok512.bin: %s", fp_error_get());
    if (!(tok = fp_tokenizer_load(tj)))
        fail_msg("loading %s: %s", tj, fp_error_get());
    return tok;
}

static void encode(const char *text, int32_t **ids, size_t *n)
{
    if (fp_tokenizer_encode(tok512(), text, strlen(text), 0, ids, n) != 0)
        fail_msg("encode: %s", fp_error_get());
}

static void load_ok(const char *path, const fp_data_options *o, fp_dataset *d)
{
    if (fp_dataset_load(path, tok512(), 512, o, d) != 0)
        fail_msg("loading %s: %s", path, fp_error_get());
}

/* The expected stream of text records: each text's tokens then EOS. */
static void expect_text_stream(const fp_tokens *t, const char *const *texts, int n)
{
    int eos = fp_tokenizer_eos(tok512());
    assert_true(eos >= 0);
    size_t at = 0;
    for (int k = 0; k < n; k++) {
        int32_t *ids;
        size_t m;
        encode(texts[k], &ids, &m);
        assert_true(at + m + 1 <= t->n);
        assert_memory_equal(t->ids + at, ids, m * sizeof *ids);
        assert_int_equal(t->ids[at + m], eos);     /* EOS after each example */
        at += m + 1;
        free(ids);
    }
    assert_int_equal(at, t->n);
    assert_null(t->loss);                          /* every target counts */
}

static void test_text_records(void **state)
{
    (void)state;
    const char *texts[3] = { "Once upon a time.", "The cat sat.", "Lily was happy." };
    const char *files[2][2] = {
        { "a.jsonl", "{\"text\": \"Once upon a time.\"}\n{\"text\": \"The cat sat.\", "
                     "\"id\": 2}\n{\"text\": \"Lily was happy.\"}\n" },
        { "a.json", "[\n {\"text\": \"Once upon a time.\"},\n {\"text\": \"The cat sat.\"},\n"
                    " {\"text\": \"Lily was happy.\"}\n]\n" },
    };
    for (int f = 0; f < 2; f++) {
        const char *p = write_tmp("data-textrec", files[f][0], files[f][1]);
        fp_dataset d;
        load_ok(p, NULL, &d);
        assert_int_equal(d.format, FP_FORMAT_JSON);
        assert_int_equal(d.examples, 3);
        assert_int_equal(d.valid_examples, 0);
        assert_int_equal(d.valid.n, 0);
        expect_text_stream(&d.train, texts, 3);
        fp_dataset_free(&d);
    }
}

static void test_alpaca_mask(void **state)
{
    (void)state;
    char *pr = fp_alpaca_prompt("Add the numbers.", "2 and 3");
    assert_string_equal(pr, "Below is an instruction that describes a task, paired with an input "
                        "that provides further context. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
                        "### Input:\n2 and 3\n\n### Response:\n");
    free(pr);
    pr = fp_alpaca_prompt("Say hi.", "");
    assert_string_equal(pr, "Below is an instruction that describes a task. Write a response "
                        "that appropriately completes the request.\n\n### Instruction:\n"
                        "Say hi.\n\n### Response:\n");
    /* alpaca wins over text when instruction and output exist */
    const char *p = write_tmp("data-alpaca", "a.jsonl",
                              "{\"instruction\": \"Say hi.\", \"output\": \"Hi there.\", "
                              "\"text\": \"ignored\"}\n");
    fp_dataset d;
    load_ok(p, NULL, &d);
    assert_int_equal(d.format, FP_FORMAT_ALPACA);
    int32_t *pids, *fids;
    size_t np, nf;
    char full[1024];
    snprintf(full, sizeof full, "%sHi there.", pr);
    encode(pr, &pids, &np);
    encode(full, &fids, &nf);
    /* ids: prompt+response encoded together, then EOS */
    assert_int_equal(d.train.n, nf + 1);
    assert_memory_equal(d.train.ids, fids, nf * sizeof *fids);
    assert_int_equal(d.train.ids[nf], fp_tokenizer_eos(tok512()));
    assert_memory_equal(d.train.ids, pids, np * sizeof *pids);   /* the prompt is a prefix */
    assert_non_null(d.train.loss);
    for (size_t i = 0; i < d.train.n; i++)
        assert_int_equal(d.train.loss[i], i >= np);    /* exactly the prompt is masked */
    assert_int_equal(fp_tokens_targets(&d.train), nf + 1 - np);
    /* Eval row targets: -1 while the next token is still prompt. */
    int T = (int)d.train.n - 1;
    int32_t *in = malloc(sizeof(int32_t) * T), *tg = malloc(sizeof(int32_t) * T);
    fp_data_eval_row(&d.train, T, 0, in, tg);
    for (int i = 0; i < T; i++)
        assert_int_equal(tg[i], (size_t)(i + 1) < np ? -1 : d.train.ids[i + 1]);
    free(in), free(tg), free(pids), free(fids), free(pr);
    fp_dataset_free(&d);
}

static void test_alpaca_file(void **state)
{
    (void)state;
    fp_data_options o;
    fp_data_options_default(&o);
    fp_dataset d;
    load_ok(tu_fixture("alpaca_tiny/alpaca_tiny.json"), &o, &d);
    assert_int_equal(d.format, FP_FORMAT_ALPACA);
    assert_int_equal(d.examples, 100);
    assert_int_equal(d.valid_examples, 10);
    assert_int_equal(d.train_examples, 90);
    size_t t = fp_tokens_targets(&d.train);
    assert_true(t > 0 && t < d.train.n / 2 + d.train.n / 4);   /* prompts are masked */
    fp_dataset_free(&d);
}

static void test_ids_and_forced_format(void **state)
{
    (void)state;
    const char *p = write_tmp("data-forced", "t.jsonl", "{\"text\": \"hi\"}\n");
    fp_data_options o;
    fp_data_options_default(&o);
    o.val_fraction = 0;
    o.format = FP_FORMAT_TEXT;      /* the JSON line is read as plain text */
    fp_dataset d;
    load_ok(p, &o, &d);
    assert_int_equal(d.format, FP_FORMAT_TEXT);
    int32_t *ids;
    size_t n;
    encode("{\"text\": \"hi\"}\n", &ids, &n);
    assert_int_equal(d.train.n, n);
    assert_memory_equal(d.train.ids, ids, n * sizeof *ids);
    free(ids);
    fp_dataset_free(&d);
    o.format = FP_FORMAT_ALPACA;    /* a text record is missing instruction */
    fp_error_clear();
    assert_int_equal(fp_dataset_load(p, tok512(), 512, &o, &d), -1);
    HAS(fp_error_get(), "t.jsonl:1: no string \"instruction\" field");
    p = write_tmp("data-forced", "plain.txt", "hello\n");
    o.format = FP_FORMAT_IDS;
    assert_int_equal(fp_dataset_load(p, tok512(), 512, &o, &d), -1);
    HAS(fp_error_get(), "plain.txt:1: --format ids expects JSONL or a JSON array");
    assert_int_equal(fp_data_parse_format("yaml", &o.format), -1);
    HAS(fp_error_get(), "unknown data format 'yaml'");
}

/* 20 ids records [k, k]: which side each k went to is visible in the ids. */
static void split_sides(uint64_t seed, double frac, int side[21], size_t *nt, size_t *nv)
{
    char text[2048] = "";
    for (int k = 1; k <= 20; k++)
        snprintf(text + strlen(text), sizeof text - strlen(text),
                 "{\"input_ids\": [%d, %d]}\n", k, k);
    const char *p = write_tmp("data-split", "ids.jsonl", text);
    fp_data_options o;
    fp_data_options_default(&o);
    o.val_fraction = frac;
    o.split_seed = seed;
    fp_dataset d;
    load_ok(p, &o, &d);
    memset(side, 0, 21 * sizeof *side);
    const fp_tokens *t[2] = { &d.train, &d.valid };
    for (int s = 0; s < 2; s++) {
        int last = 0;
        for (size_t i = 0; i < t[s]->n; i += 2) {
            int k = t[s]->ids[i];
            assert_int_equal(t[s]->ids[i + 1], k);
            assert_true(k > last);                  /* file order kept */
            last = k;
            assert_int_equal(side[k], 0);           /* each example once */
            side[k] = s + 1;
        }
    }
    for (int k = 1; k <= 20; k++)
        assert_int_not_equal(side[k], 0);           /* none lost */
    *nt = d.train_examples;
    *nv = d.valid_examples;
    assert_int_equal(d.train.n, 2 * *nt);
    assert_int_equal(d.valid.n, 2 * *nv);
    fp_dataset_free(&d);
}

static void test_validation_split(void **state)
{
    (void)state;
    int a[21], b[21], c[21];
    size_t nt, nv;
    split_sides(7, 0.1, a, &nt, &nv);
    assert_int_equal(nt, 18);
    assert_int_equal(nv, 2);
    split_sides(7, 0.1, b, &nt, &nv);
    assert_memory_equal(a, b, sizeof a);            /* same seed, same split */
    int differs = 0;
    for (uint64_t seed = 8; seed < 12 && !differs; seed++) {
        split_sides(seed, 0.1, c, &nt, &nv);
        differs = memcmp(a, c, sizeof a) != 0;
    }
    assert_true(differs);
    split_sides(7, 0.25, c, &nt, &nv);
    assert_int_equal(nv, 5);
    split_sides(7, 0.01, c, &nt, &nv);
    assert_int_equal(nv, 1);                        /* at least one held out */
    split_sides(7, 0.0, c, &nt, &nv);
    assert_int_equal(nv, 0);
    assert_int_equal(nt, 20);
}

/* Plain text: blocks are examples; no split keeps the one-stream encoding. */
static void test_plain_text_blocks(void **state)
{
    (void)state;
    const char *text = "ROMEO:\nHello there.\n\n\nJULIET:\nGood night.\n  \nNURSE:\nMadam!\n";
    const char *p = write_tmp("data-blocks", "play.txt", text);
    fp_dataset d;
    fp_tokens one;
    load_ok(p, NULL, &d);
    assert_int_equal(d.format, FP_FORMAT_TEXT);
    assert_int_equal(d.examples, 3);
    assert_int_equal(fp_data_load(p, tok512(), 512, &one), 0);
    int32_t *ids;
    size_t n;
    encode(text, &ids, &n);
    assert_int_equal(d.train.n, n);
    assert_memory_equal(d.train.ids, ids, n * sizeof *ids);
    assert_int_equal(one.n, n);
    assert_memory_equal(one.ids, ids, n * sizeof *ids);
    free(ids);
    fp_tokens_free(&one);
    fp_dataset_free(&d);
    /* With a split: one block held out, encoded on its own, no EOS anywhere. */
    fp_data_options o;
    fp_data_options_default(&o);
    o.val_fraction = 0.3;
    load_ok(p, &o, &d);
    assert_int_equal(d.valid_examples, 1);
    assert_int_equal(d.train_examples, 2);
    char *v = fp_tokenizer_decode(tok512(), d.valid.ids, d.valid.n, 1);
    char *tr = fp_tokenizer_decode(tok512(), d.train.ids, d.train.n, 1);
    const char *names[3] = { "ROMEO:", "JULIET:", "NURSE:" };
    int in_v = 0, in_t = 0;
    for (int k = 0; k < 3; k++) {
        in_v += strstr(v, names[k]) != NULL;
        in_t += strstr(tr, names[k]) != NULL;
        assert_true((strstr(v, names[k]) != NULL) != (strstr(tr, names[k]) != NULL));
    }
    assert_int_equal(in_v, 1);
    assert_int_equal(in_t, 2);
    free(tr);
    for (size_t i = 0; i < d.train.n; i++)
        assert_int_not_equal(d.train.ids[i], fp_tokenizer_eos(tok512()));
    free(v);
    fp_dataset_free(&d);
}

static void test_skip_bad(void **state)
{
    (void)state;
    const char *body = "{\"text\": \"one\"}\n"
                       "{\"text\": \"two\",,}\n"
                       "{\"text\": \"three\"}\n"
                       "{\"txt\": \"four\"}\n"
                       "{\"text\": 5}\n"
                       "{\"text\": \"six\"}\n";
    const char *p = write_tmp("data-skip", "bad.jsonl", body);
    fp_data_options o;
    fp_data_options_default(&o);
    o.val_fraction = 0;
    fp_dataset d;
    fp_error_clear();
    assert_int_equal(fp_dataset_load(p, tok512(), 512, &o, &d), -1);
    HAS(fp_error_get(), "bad.jsonl:2: invalid JSON");
    o.skip_bad = 1;
    load_ok(p, &o, &d);
    assert_int_equal(d.examples, 3);
    assert_int_equal(d.skipped, 3);
    HAS(d.first_skipped, "bad.jsonl:2: invalid JSON");
    const char *texts[3] = { "one", "three", "six" };
    expect_text_stream(&d.train, texts, 3);
    fp_dataset_free(&d);
    /* Missing fields name their line without --skip-bad. */
    o.skip_bad = 0;
    p = write_tmp("data-skip", "missing.jsonl", "{\"text\": \"one\"}\n{\"txt\": \"x\"}\n");
    assert_int_equal(fp_dataset_load(p, tok512(), 512, &o, &d), -1);
    HAS(fp_error_get(), "missing.jsonl:2: no string \"text\" field");
    /* An id outside the vocabulary is a bad record too. */
    p = write_tmp("data-skip", "ids.jsonl", "{\"input_ids\": [1]}\n{\"input_ids\": [600]}\n"
                  "{\"input_ids\": [2]}\n");
    o.skip_bad = 1;
    load_ok(p, &o, &d);
    assert_int_equal(d.skipped, 1);
    assert_int_equal(d.train.n, 2);
    HAS(d.first_skipped, "ids.jsonl:2: input_ids[0] = 600 is outside the vocabulary");
    fp_dataset_free(&d);
}

/* finetune + eval through the tool on Alpaca data with a converted model. */
static void test_tool_finetune_alpaca(void **state)
{
    (void)state;
    char dir[4096], cmd[16384], *out = NULL;
    snprintf(dir, sizeof dir, "%s", tu_tempdir("data-tool"));
    snprintf(cmd, sizeof cmd, FP_TOOL " convert --llama2c %s/data/stories260K/stories260K.bin "
             "--tokenizer %s/data/stories260K/tok512.bin --out %s/m", FP_SOURCE_DIR,
             FP_SOURCE_DIR, dir);
    assert_int_equal(tu_run(cmd, NULL), 0);
    const char *data = tu_fixture("alpaca_tiny/alpaca_tiny.json");
    snprintf(cmd, sizeof cmd, FP_TOOL " finetune --model %s/m --data %s --out %s/ad --steps 4 "
             "--batch 2 --seq 64 --val-fraction 0.2 --split-seed 3", dir, data, dir);
    int rc = tu_run(cmd, &out);
    if (rc != 0)
        fail_msg("finetune failed (%d): %s", rc, out);
    HAS(out, "(alpaca): 100 examples (80 train, 20 validation)");
    HAS(out, "final loss");
    HAS(out, "validation loss");
    free(out);
    snprintf(cmd, sizeof cmd, FP_TOOL " eval --model %s/m --adapter %s/ad --data %s --seq 64 "
             "--split valid --val-fraction 0.2 --split-seed 3 2>&1", dir, dir, data);
    rc = tu_run(cmd, &out);
    if (rc != 0)
        fail_msg("eval failed (%d): %s", rc, out);
    HAS(out, "\"loss\": ");
    free(out);
    snprintf(cmd, sizeof cmd, FP_TOOL " eval --model %s/m --data %s --split nope", dir, data);
    rc = tu_run(cmd, &out);
    assert_int_not_equal(rc, 0);
    HAS(out, "--split expects train, valid or all");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jsonl_ids),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_syntax_and_form_errors),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_rows_and_eval),
        cmocka_unit_test(test_batch_order),
        cmocka_unit_test(test_shuffle),
        cmocka_unit_test(test_loss_mask),
        cmocka_unit_test(test_plain_text),
        cmocka_unit_test(test_plain_text_tok512),
        cmocka_unit_test(test_text_records),
        cmocka_unit_test(test_alpaca_mask),
        cmocka_unit_test(test_alpaca_file),
        cmocka_unit_test(test_ids_and_forced_format),
        cmocka_unit_test(test_validation_split),
        cmocka_unit_test(test_plain_text_blocks),
        cmocka_unit_test(test_skip_bad),
        cmocka_unit_test(test_tool_finetune_alpaca),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
