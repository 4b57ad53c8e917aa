/* tokenizer_bpe.c - the BPE merge engine: initial symbols (characters,
 * <0xNN> byte fallback, unk), merges by rank with a heap, and a bounded memo
 * of word -> ids. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#define CACHE_MAX_ENTRIES 65536u /* then the memo is emptied and refilled */
#define CACHE_MAX_WORD 256       /* longer words are rare: not memoized */

/* BPE over a whole text is exact but its heap gets large and cache-cold. If
 * "\u2581" is in the vocab and occurs in pieces only as a leading run (true of
 * LLaMA's vocab), no piece, hence no merge, can span a boundary just before a
 * "\u2581" that follows another character: the text may then be cut there and
 * each part merged alone with the same result. */
int meta_split_safe(const fp_tokenizer *t)
{
    static const char meta[] = "\xe2\x96\x81";
    if (strmap_get(&t->vmap, meta, 3) < 0)
        return 0;
    for (size_t i = 0; i < t->n_vocab; i++) {
        const tstr *p = &t->vocab[i];
        size_t k = 0;
        while (p->s && k + 3 <= p->len && !memcmp(p->s + k, meta, 3))
            k += 3;
        if (p->s && memmem(p->s + k, p->len - k, meta, 3))
            return 0;
    }
    return 1;
}

static int hitem_less(const hitem *x, const hitem *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int heap_push(scratch *sc, hitem it)
{
    if (tok_grow((void **)&sc->h, &sc->h_cap, sc->nh + 1, sizeof *sc->h) != 0)
        return -1;
    size_t i = sc->nh++;
    while (i > 0 && hitem_less(&it, &sc->h[(i - 1) / 2])) {
        sc->h[i] = sc->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    sc->h[i] = it;
    return 0;
}

static hitem heap_pop(scratch *sc)
{
    hitem top = sc->h[0], last = sc->h[--sc->nh];
    size_t i = 0, n = sc->nh;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hitem_less(&sc->h[c + 1], &sc->h[c]))
            c++;
        if (!hitem_less(&sc->h[c], &last))
            break;
        sc->h[i] = sc->h[c];
        i = c;
    }
    if (n)
        sc->h[i] = last;
    return top;
}

static int add_sym(scratch *sc, size_t *ns, int32_t id)
{
    if (tok_grow((void **)&sc->s, &sc->s_cap, *ns + 1, sizeof *sc->s) != 0)
        return -1;
    sc->s[*ns] = (sym){ id, (int32_t)*ns - 1, (int32_t)*ns + 1, 1 };
    (*ns)++;
    return 0;
}

/* Initial symbols: one per UTF-8 character, else its <0xNN> bytes
 * (byte_fallback), else unk (consecutive unknowns fused when fuse_unk). */
static int initial_symbols(const fp_tokenizer *t, scratch *sc, const char *w, size_t len,
                           size_t *ns)
{
    int unk_pending = 0;
    *ns = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = utf8_len((const unsigned char *)w + i, len - i);
        int32_t id = strmap_get(&t->vmap, w + i, cl);
        int bytes_ok = id < 0 && t->byte_fallback;
        for (size_t k = 0; bytes_ok && k < cl; k++)
            bytes_ok = t->byte_id[(unsigned char)w[i + k]] >= 0;
        if ((id >= 0 || bytes_ok) && unk_pending) {
            if (add_sym(sc, ns, t->unk) != 0)
                return -1;
            unk_pending = 0;
        }
        if (id >= 0) {
            if (add_sym(sc, ns, id) != 0)
                return -1;
        } else if (bytes_ok) {
            for (size_t k = 0; k < cl; k++)
                if (add_sym(sc, ns, t->byte_id[(unsigned char)w[i + k]]) != 0)
                    return -1;
        } else if (t->unk >= 0) {
            if (unk_pending && !t->fuse_unk && add_sym(sc, ns, t->unk) != 0)
                return -1;
            unk_pending = 1;
        } /* no unk token: the character is dropped, as tokenizers does */
        i += cl;
    }
    if (unk_pending && add_sym(sc, ns, t->unk) != 0)
        return -1;
    if (*ns)
        sc->s[*ns - 1].next = -1;
    return 0;
}

static int push_pair(const fp_tokenizer *t, scratch *sc, int32_t pos)
{
    const sym *l = &sc->s[pos];
    if (l->next < 0)
        return 0;
    const mslot *m = merge_get(t->merges, t->merge_mask, l->id, sc->s[l->next].id);
    return m ? heap_push(sc, (hitem){ m->rank, (uint32_t)pos, m->id }) : 0;
}

/* BPE over one word: repeatedly merge the adjacent pair of lowest rank
 * (leftmost on ties) with a linked list + min-heap, O(n log n). Stale heap
 * entries are skipped when their pair no longer matches, as tokenizers does. */
static int bpe_chunk(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out)
{
    size_t ns;
    if (initial_symbols(t, sc, w, len, &ns) != 0)
        return -1;
    sc->nh = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (push_pair(t, sc, (int32_t)i) != 0)
            return -1;
    while (sc->nh > 0) {
        hitem top = heap_pop(sc);
        sym *l = &sc->s[top.pos];
        if (!l->alive || l->next < 0)
            continue;
        sym *r = &sc->s[l->next];
        const mslot *m = merge_get(t->merges, t->merge_mask, l->id, r->id);
        if (!m || m->id != top.id)
            continue;
        l->id = top.id;
        r->alive = 0;
        l->next = r->next;
        if (r->next >= 0)
            sc->s[r->next].prev = (int32_t)top.pos;
        if ((l->prev >= 0 && push_pair(t, sc, l->prev) != 0) ||
            push_pair(t, sc, (int32_t)top.pos) != 0)
            return -1;
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = sc->s[i].next)
        if (ivec_push(out, sc->s[i].id) != 0)
            return -1;
    return 0;
}

static int bpe_split(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out)
{
    static const char meta[] = "\xe2\x96\x81";
    size_t from = 0;
    for (size_t i = 1; t->split_at_meta && i + 3 <= len; i++)
        if (!memcmp(w + i, meta, 3) && (i < 3 || memcmp(w + i - 3, meta, 3) != 0)) {
            if (bpe_chunk(t, sc, w + from, i - from, out) != 0)
                return -1;
            from = i;
        }
    return bpe_chunk(t, sc, w + from, len - from, out);
}

void bpe_cache_free(bpe_cache *c)
{
    free(c->slots);
    free(c->key_off);
    free(c->ids_off);
    free(c->key_len);
    free(c->n_ids);
    free(c->keys.p);
    free(c->ids.p);
    *c = (bpe_cache){ 0 };
}

/* Index of w's entry, or -1. */
static long cache_find(const bpe_cache *c, const char *w, size_t len, size_t *slot)
{
    for (size_t i = hash_bytes(w, len) & c->mask;; i = (i + 1) & c->mask) {
        uint32_t v = c->slots[i];
        *slot = i;
        if (v == 0)
            return -1;
        if (c->key_len[v - 1] == len && !memcmp(c->keys.p + c->key_off[v - 1], w, len))
            return (long)v - 1;
    }
}

static int cache_init(bpe_cache *c)
{
    size_t nslots = 2 * CACHE_MAX_ENTRIES;
    c->slots = calloc(nslots, sizeof *c->slots);
    c->key_off = malloc(CACHE_MAX_ENTRIES * sizeof *c->key_off);
    c->ids_off = malloc(CACHE_MAX_ENTRIES * sizeof *c->ids_off);
    c->key_len = malloc(CACHE_MAX_ENTRIES * sizeof *c->key_len);
    c->n_ids = malloc(CACHE_MAX_ENTRIES * sizeof *c->n_ids);
    if (!c->slots || !c->key_off || !c->ids_off || !c->key_len || !c->n_ids) {
        bpe_cache_free(c);
        return fp_error_set("tokenizer: out of memory");
    }
    c->mask = nslots - 1;
    c->cap = CACHE_MAX_ENTRIES;
    return 0;
}

static int cache_put(bpe_cache *c, const char *w, size_t len, const int32_t *ids, size_t n)
{
    size_t slot;
    if (!c->slots && cache_init(c) != 0)
        return -1;
    if (c->n == c->cap) { /* full: start over rather than track recency */
        memset(c->slots, 0, (c->mask + 1) * sizeof *c->slots);
        c->n = c->keys.len = c->ids.len = 0;
    }
    if (cache_find(c, w, len, &slot) >= 0)
        return 0;
    size_t e = c->n++;
    c->key_off[e] = c->keys.len;
    c->key_len[e] = (uint32_t)len;
    c->ids_off[e] = c->ids.len;
    c->n_ids[e] = (uint32_t)n;
    if (sbuf_put(&c->keys, w, len) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (ivec_push(&c->ids, ids[i]) != 0)
            return -1;
    c->slots[slot] = (uint32_t)e + 1;
    return 0;
}

int tok_bpe_word(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out)
{
    size_t slot, start = out->len;
    if (t->ignore_merges) { /* LLaMA-3: a word in the vocab is one token */
        int32_t id = strmap_get(&t->vmap, w, len);
        if (id >= 0)
            return ivec_push(out, id);
    }
    bpe_cache *c = sc->cache;
    int memo = c && len <= CACHE_MAX_WORD;
    long e = memo && c->slots ? cache_find(c, w, len, &slot) : -1;
    if (e >= 0) {
        for (uint32_t i = 0; i < c->n_ids[e]; i++)
            if (ivec_push(out, c->ids.p[c->ids_off[e] + i]) != 0)
                return -1;
        return 0;
    }
    if (bpe_split(t, sc, w, len, out) != 0)
        return -1;
    /* A word of pieces the vocabulary lacks (no unk, no byte fallback) adds
     * nothing, and out->p may still be NULL: no pointer arithmetic on it. */
    return memo ? cache_put(c, w, len, out->len > start ? out->p + start : NULL,
                            out->len - start) : 0;
}
