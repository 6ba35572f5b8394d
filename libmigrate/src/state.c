/* mig_state: the named blobs a VMM saves and loads. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"

void mig__state_init(mig_state *st)
{
	memset(st, 0, sizeof(*st));
}

void mig__state_clear(mig_state *st)
{
	for (size_t i = 0; i < st->nr_items; i++)
		free(st->items[i].data);
	free(st->items);
	mig__state_init(st);
}

static struct mig_state_item *find(const mig_state *st, const char *name)
{
	for (size_t i = 0; i < st->nr_items; i++)
		if (!strcmp(st->items[i].name, name))
			return &st->items[i];
	return NULL;
}

MIG_API int mig_state_add(mig_state *st, const char *name, const void *data,
			  size_t len)
{
	struct mig_state_item *it;
	void *copy;
	size_t nlen;

	if (!st || !name || (!data && len))
		return -EINVAL;
	nlen = strlen(name);
	if (nlen == 0 || nlen >= MIG_STATE_NAME_MAX)
		return -EINVAL;
	if (len > MIG_STATE_ITEM_MAX || st->total + len > MIG_STATE_TOTAL_MAX)
		return -EMSGSIZE;
	copy = malloc(len ? len : 1);
	if (!copy)
		return -ENOMEM;
	if (len)
		memcpy(copy, data, len);
	it = find(st, name);
	if (it) {
		st->total -= it->len;
		free(it->data);
	} else {
		if (st->nr_items == MIG_STATE_ITEMS_MAX) {
			free(copy);
			return -E2BIG;
		}
		if (st->nr_items == st->cap) {
			size_t cap = st->cap ? st->cap * 2 : 16;
			struct mig_state_item *n =
				realloc(st->items, cap * sizeof(*n));
			if (!n) {
				free(copy);
				return -ENOMEM;
			}
			st->items = n;
			st->cap = cap;
		}
		it = &st->items[st->nr_items++];
		memcpy(it->name, name, nlen + 1);
	}
	it->data = copy;
	it->len = len;
	st->total += len;
	return st->on_add ? st->on_add(st->on_add_opaque, it) : 0;
}

MIG_API int mig_state_get(const mig_state *st, const char *name,
			  const void **data, size_t *len)
{
	struct mig_state_item *it;

	if (!st || !name || !data || !len)
		return -EINVAL;
	it = find(st, name);
	if (!it)
		return -ENOENT;
	*data = it->data;
	*len = it->len;
	return 0;
}
