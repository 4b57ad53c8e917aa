/* tokenizer_vocab.c - lookups in a loaded tokenizer: ids <-> pieces, specials,
 * BOS/EOS. Apart from loading (tokenizer.c) because the post-processor and
 * tokenizer_config.json loaders (tokenizer_post.c) resolve token names through
 * them while tokenizer.c calls those loaders. */
#include "tokenizer_internal.h"

#include <string.h>

int fp_tokenizer_vocab_size(const fp_tokenizer *self) { return (int)self->n_ids; }
int fp_tokenizer_bos(const fp_tokenizer *self)
{
    return self->post_pre.len ? self->post_pre.p[0] : -1;
}
int fp_tokenizer_eos(const fp_tokenizer *self) { return self->eos; }

int32_t fp_tokenizer_token_id(const fp_tokenizer *self, const char *token)
{
    size_t len = strlen(token);
    for (size_t i = 0; i < self->n_added; i++) /* added content wins, as in tokenizers */
        if (self->added[i].content.len == len && !memcmp(self->added[i].content.s, token, len))
            return self->added[i].id;
    return strmap_get(&self->vmap, token, len);
}

const char *fp_tokenizer_id_to_token(const fp_tokenizer *self, int32_t id)
{
    if (id < 0 || (size_t)id >= self->n_ids || !self->id_str[id])
        return NULL;
    return self->id_str[id]->s;
}

int fp_tokenizer_is_special(const fp_tokenizer *self, int32_t id)
{
    return id >= 0 && (size_t)id < self->n_ids && self->id_special[id];
}
