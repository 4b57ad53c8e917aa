static int meta_split_safe(const fp_tokenizer *t)
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

static int bpe_word(const fp_tokenizer *t, scratch *sc, const char *w, size_t len, ivec *out)
{
    static const char meta[] = "\xe2\x96\x81";
    size_t from = 0;
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vmap, w, len);
        if (id >= 0)
            return ivec_push(out, id);
    }
    for (size_t i = 1; t->split_at_meta && i + 3 <= len; i++)
        if (!memcmp(w + i, meta, 3) && (i < 3 || memcmp(w + i - 3, meta, 3) != 0)) {
            if (bpe_chunk(t, sc, w + from, i - from, out) != 0)
                return -1;
            from = i;
        }
    return bpe_chunk(t, sc, w + from, len - from, out);
}

