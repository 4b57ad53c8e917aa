/* tokenizer_regex.c - PCRE2 splitting and replacing, with the grouping rules
 * of tokenizers' SplitDelimiterBehavior. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

int tok_regex_compile(const char *path, const char *where, const char *pat, int literal,
                      pcre2_code **out)
{
    int code;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    *out = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &code, &at, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return fp_error_set("%s: %s pattern '%s': %s at offset %zu (PCRE2 syntax expected)",
                            path, where, pat, (const char *)msg, (size_t)at);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    return 0;
}

static int push_piece(scratch *sc, size_t b, size_t e, int m)
{
    if (tok_grow((void **)&sc->pc, &sc->pc_cap, sc->npc + 1, sizeof *sc->pc) != 0)
        return -1;
    sc->pc[sc->npc++] = (piece){ b, e, m };
    return 0;
}

static int ensure_md(scratch *sc)
{
    if (!sc->md && !(sc->md = pcre2_match_data_create(1, NULL)))
        return fp_error_set("tokenizer: out of memory");
    return 0;
}

/* Next match of re in s[0, len) at or after *off: 1 and [*mb, *me), or 0. */
static int next_match(const pcre2_code *re, scratch *sc, const char *s, size_t len,
                      size_t *off, size_t *mb, size_t *me)
{
    while (*off <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, *off, PCRE2_NO_UTF_CHECK, sc->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            return 0;
        if (rc < 0)
            return fp_error_set("tokenizer: regex match failed (PCRE2 error %d)", rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
        *mb = ov[0];
        *me = ov[1];
        if (*me > *mb) {
            *off = *me;
            return 1;
        }
        if (*mb >= len) /* an empty match splits nothing: step over one character */
            return 0;
        *off = *mb + utf8_strict((const unsigned char *)s + *mb, len - *mb);
    }
    return 0;
}

/* Raw match / non-match pieces of one well-formed run at base. */
static int find_pieces(const pcre2_code *re, scratch *sc, const char *s, size_t len,
                       size_t base)
{
    size_t off = 0, prev = 0, mb = 0, me = 0;
    int rc;
    while ((rc = next_match(re, sc, s, len, &off, &mb, &me)) == 1) {
        if (mb > prev && push_piece(sc, base + prev, base + mb, 0) != 0)
            return -1;
        if (push_piece(sc, base + mb, base + me, 1) != 0)
            return -1;
        prev = me;
    }
    if (rc < 0)
        return -1;
    return prev < len ? push_piece(sc, base + prev, base + len, 0) : 0;
}

/* Folds sc->pc per behavior, in place, as tokenizers' split() does. */
static void group_pieces(scratch *sc, int behavior)
{
    piece *p = sc->pc;
    size_t n = sc->npc, out = 0;
    int prev = 0;
    if (behavior == SPLIT_MERGED_NEXT) { /* the mirror image of MergedWithPrevious */
        size_t w = n;
        for (size_t i = n; i-- > 0;) {
            int m = p[i].m;
            if (m && !prev && w < n)
                p[w].b = p[i].b;
            else
                p[--w] = p[i];
            prev = m;
        }
        memmove(p, p + w, (n - w) * sizeof *p);
        sc->npc = n - w;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        int m = p[i].m;
        if (behavior == SPLIT_REMOVED && m)
            continue;
        if (out > 0 && ((behavior == SPLIT_MERGED_PREV && m && !prev) ||
                        (behavior == SPLIT_CONTIGUOUS && m == prev)))
            p[out - 1].e = p[i].e;
        else
            p[out++] = p[i];
        prev = m;
    }
    sc->npc = out;
}

int tok_regex_split(const pcre2_code *re, scratch *sc, const char *s, size_t len, int behavior,
                    int invert)
{
    sc->npc = 0;
    if (ensure_md(sc) != 0)
        return -1;
    for (size_t pos = 0; pos < len;) {
        size_t v = pos, n;
        while (v < len && (n = utf8_strict((const unsigned char *)s + v, len - v)) != 0)
            v += n;
        if (v > pos && find_pieces(re, sc, s + pos, v - pos, pos) != 0)
            return -1;
        if (v < len && push_piece(sc, v, v + 1, 0) != 0) /* a byte PCRE2 cannot take */
            return -1;
        pos = v + 1;
    }
    for (size_t i = 0; invert && i < sc->npc; i++)
        sc->pc[i].m = !sc->pc[i].m;
    group_pieces(sc, behavior);
    return 0;
}

int tok_regex_replace(const pcre2_code *re, scratch *sc, sbuf *out, const char *s, size_t len,
                      const tstr *rep)
{
    if (tok_regex_split(re, sc, s, len, SPLIT_ISOLATED, 0) != 0)
        return -1;
    for (size_t i = 0; i < sc->npc; i++) {
        const piece *p = &sc->pc[i];
        if (p->m ? sbuf_put(out, rep->s, rep->len) : sbuf_put(out, s + p->b, p->e - p->b))
            return -1;
    }
    return sbuf_put(out, "", 0);
}
