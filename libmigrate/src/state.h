/* The inside of mig_state, for the modules that send and receive it. */
#ifndef MIG_STATE_H
#define MIG_STATE_H

#include "internal.h"

#define MIG_STATE_NAME_MAX 64
#define MIG_STATE_ITEMS_MAX 4096
/* Hard limits a destination applies to what it reads, too. */
#define MIG_STATE_ITEM_MAX (8u << 20)
#define MIG_STATE_TOTAL_MAX (64u << 20)

struct mig_state_item {
	char name[MIG_STATE_NAME_MAX];
	void *data;
	size_t len;
};

struct mig_state {
	struct mig_state_item *items;
	size_t nr_items;
	size_t cap;
	size_t total;
	/* Optional: called with each item once it is stored (the source
	 * streams the state as the VMM saves it); an error fails the add. */
	int (*on_add)(void *opaque, const struct mig_state_item *it);
	void *on_add_opaque;
};

void mig__state_init(mig_state *st);
void mig__state_clear(mig_state *st);

#endif /* MIG_STATE_H */
