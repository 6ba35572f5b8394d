/*
 * The state file of `migvm` (`save` on the control channel, `--restore`):
 *
 *   header    64 bytes: magic "MIGVMSAV", version, sizes, CRC32C of the
 *             snapshot and of the header itself
 *   snapshot  a VmSnapshot (control.proto): config and state items
 *   regions   per memory region: a 32-byte region header, a bitmap of the
 *             pages stored (1 bit per page, in u64 words), the stored pages,
 *             then the CRC32C of all of it; pages that are all zero (or
 *             never touched) are not stored
 *   trailer   "MIGVMEND" and the file size
 *
 * All integers little endian. Untouched memory is found without reading it
 * (SEEK_DATA on the memfd; mincore() for the anonymous backend when the host
 * has no swap), so a 1 GiB guest that touched 128 MiB saves 128 MiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "vm.h"

#define SNAP_MAGIC "MIGVMSAV"
#define SNAP_RGN_MAGIC "MIGVMRGN"
#define SNAP_END_MAGIC "MIGVMEND"
#define SNAP_VERSION 1
#define SNAP_SNAPSHOT_MAX (64u << 20)
#define SNAP_ITEMS_MAX 4096

struct snap_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint32_t page_size;
	uint32_t nr_regions;
	uint64_t snapshot_len;
	uint64_t mem_pages;
	uint64_t data_pages;
	uint32_t snapshot_crc;
	uint32_t flags;
	uint32_t reserved;
	uint32_t header_crc;
};
_Static_assert(sizeof(struct snap_header) == 64, "header layout");

struct snap_region {
	char magic[8];
	uint32_t index;
	uint32_t reserved;
	uint64_t gpa;
	uint64_t pages;
};
_Static_assert(sizeof(struct snap_region) == 32, "region layout");

struct snap_trailer {
	char magic[8];
	uint64_t file_size;
};

struct snapfile {
	int fd;
	char *path;
	struct snap_header hdr;
	Mig__Ctl__VmSnapshot *snap;
	uint64_t file_size;
};

/* ---- the page bitmap ----------------------------------------------- */

static inline void bit_set(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

static inline bool bit_test(const uint64_t *bm, uint64_t i)
{
	return bm[i / 64] >> (i % 64) & 1;
}

static uint64_t bitmap_words(uint64_t pages)
{
	return (pages + 63) / 64;
}

static bool host_has_swap(void)
{
	unsigned long long v;
	char line[256];
	bool swap = true; /* unknown: assume the worst */
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return true;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "SwapTotal: %llu kB", &v) == 1)
			swap = v != 0;
	fclose(f);
	return swap;
}

/*
 * Mark the non-zero pages of region `rg` (at byte `off` of the RAM) in bm.
 * Only pages that may hold data are read: with a memfd, the extents
 * SEEK_DATA finds; with anonymous memory and no swap, the resident pages.
 */
static int scan_region(struct vm *vm, const mig_region *rg, uint64_t off,
		       uint64_t *bm, uint64_t *count, mig_error *err)
{
	uint64_t pages = rg->size / VM_PAGE_SIZE;
	const uint8_t *base = rg->hva;
	uint64_t n = 0;

	if (vm->mem_fd >= 0) {
		off_t pos = (off_t)off, end = (off_t)(off + rg->size);
		while (pos < end) {
			off_t d = lseek(vm->mem_fd, pos, SEEK_DATA), h;
			if (d < 0 && errno == ENXIO)
				break;
			if (d < 0)
				return vmm_err(err, -errno, "lseek(SEEK_DATA): "
					       "%s", strerror(errno));
			if (d >= end)
				break;
			h = lseek(vm->mem_fd, d, SEEK_HOLE);
			if (h < 0)
				return vmm_err(err, -errno, "lseek(SEEK_HOLE): "
					       "%s", strerror(errno));
			if (h > end)
				h = end;
			for (uint64_t p = ((uint64_t)d - off) / VM_PAGE_SIZE;
			     p < ((uint64_t)h - off + VM_PAGE_SIZE - 1) /
					 VM_PAGE_SIZE; p++)
				if (!page_is_zero(base + p * VM_PAGE_SIZE)) {
					bit_set(bm, p);
					n++;
				}
			pos = h;
		}
	} else if (!host_has_swap()) {
		const uint64_t chunk = 1ull << 18; /* pages per mincore call */
		unsigned char *vec = malloc(chunk);
		if (!vec)
			return vmm_err(err, -ENOMEM, "out of memory");
		for (uint64_t p0 = 0; p0 < pages; p0 += chunk) {
			uint64_t np = pages - p0 < chunk ? pages - p0 : chunk;
			if (mincore((void *)(base + p0 * VM_PAGE_SIZE),
				    np * VM_PAGE_SIZE, vec) < 0) {
				int e = errno;
				free(vec);
				return vmm_err(err, -e, "mincore: %s",
					       strerror(e));
			}
			for (uint64_t i = 0; i < np; i++)
				if ((vec[i] & 1) &&
				    !page_is_zero(base + (p0 + i) * VM_PAGE_SIZE)) {
					bit_set(bm, p0 + i);
					n++;
				}
		}
		free(vec);
	} else {
		/* Swapped-out pages look absent to mincore: read them all. */
		for (uint64_t p = 0; p < pages; p++)
			if (!page_is_zero(base + p * VM_PAGE_SIZE)) {
				bit_set(bm, p);
				n++;
			}
	}
	*count = n;
	return 0;
}

/* ---- saving -------------------------------------------------------- */

struct item_list {
	Mig__Ctl__StateItem **items;
	size_t n, cap;
};

static int list_add(void *opaque, const char *name, const void *data,
		    size_t len)
{
	struct item_list *l = opaque;
	Mig__Ctl__StateItem *it;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		void *p = realloc(l->items, cap * sizeof(*l->items));
		if (!p)
			return -ENOMEM;
		l->items = p;
		l->cap = cap;
	}
	it = calloc(1, sizeof(*it));
	if (!it)
		return -ENOMEM;
	mig__ctl__state_item__init(it);
	it->name = strdup(name);
	it->data.data = malloc(len ? len : 1);
	if (!it->name || !it->data.data) {
		free(it->name);
		free(it->data.data);
		free(it);
		return -ENOMEM;
	}
	memcpy(it->data.data, data, len);
	it->data.len = len;
	l->items[l->n++] = it;
	return 0;
}

static void list_free(struct item_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->items[i]->name);
		free(l->items[i]->data.data);
		free(l->items[i]);
	}
	free(l->items);
}

/* The VmSnapshot of a paused VM, packed into *out. Its config is the
 * "vmm.config" item that vm_save_state() wrote. */
static int pack_snapshot(struct vm *vm, uint8_t **out, size_t *len,
			 mig_error *err)
{
	Mig__Ctl__VmSnapshot snap = MIG__CTL__VM_SNAPSHOT__INIT;
	Mig__Ctl__MachineConfig *cfg = NULL;
	struct item_list items = { 0 };
	struct state_sink sink = { list_add, &items };
	int r;

	r = vm_save_state(vm, &sink, err);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < items.n && !cfg; i++)
		if (!strcmp(items.items[i]->name, "vmm.config"))
			cfg = mig__ctl__machine_config__unpack(
				NULL, items.items[i]->data.len,
				items.items[i]->data.data);
	if (!cfg) {
		r = vmm_err(err, -EINVAL, "snapshot: no usable \"vmm.config\"");
		goto out;
	}
	snap.version = SNAP_VERSION;
	snap.config = cfg;
	snap.n_items = items.n;
	snap.items = items.items;
	*len = mig__ctl__vm_snapshot__get_packed_size(&snap);
	if (*len > SNAP_SNAPSHOT_MAX) {
		r = vmm_err(err, -EMSGSIZE, "snapshot of %zu bytes is too big",
			    *len);
		goto out;
	}
	*out = malloc(*len ? *len : 1);
	if (!*out) {
		r = vmm_err(err, -ENOMEM, "snapshot: out of memory");
		goto out;
	}
	mig__ctl__vm_snapshot__pack(&snap, *out);
	r = 0;
out:
	if (cfg)
		mig__ctl__machine_config__free_unpacked(cfg, NULL);
	list_free(&items);
	return r;
}

/* Write the pages set in bm from region memory, in runs. */
static int write_pages(int fd, const uint8_t *base, const uint64_t *bm,
		       uint64_t pages, uint32_t *crc)
{
	uint64_t p = 0;

	while (p < pages) {
		uint64_t q;
		int r;

		if (!bit_test(bm, p)) {
			p++;
			continue;
		}
		for (q = p + 1; q < pages && bit_test(bm, q) &&
				q - p < (1u << 14); q++)
			;
		*crc = crc32c(*crc, base + p * VM_PAGE_SIZE,
			      (q - p) * VM_PAGE_SIZE);
		r = write_full(fd, base + p * VM_PAGE_SIZE,
			       (q - p) * VM_PAGE_SIZE);
		if (r < 0)
			return r;
		p = q;
	}
	return 0;
}

int snapfile_save(struct vm *vm, const char *path, mig_error *err)
{
	struct snap_header hdr;
	struct snap_trailer tr;
	uint64_t *bm[VM_MAX_REGIONS] = { NULL };
	uint64_t cnt[VM_MAX_REGIONS] = { 0 };
	uint8_t *snap = NULL;
	size_t snap_len = 0;
	uint64_t off = 0, size = 0;
	char *tmp = NULL;
	int fd = -1, r;

	if (asprintf(&tmp, "%s.tmp", path) < 0) {
		tmp = NULL;
		return vmm_err(err, -ENOMEM, "out of memory");
	}
	r = pack_snapshot(vm, &snap, &snap_len, err);
	if (r < 0)
		goto out;
	memset(&hdr, 0, sizeof(hdr));
	memcpy(hdr.magic, SNAP_MAGIC, 8);
	hdr.version = SNAP_VERSION;
	hdr.header_size = sizeof(hdr);
	hdr.page_size = VM_PAGE_SIZE;
	hdr.nr_regions = vm->nr_regions;
	hdr.snapshot_len = snap_len;
	hdr.snapshot_crc = crc32c(0, snap, snap_len);
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		const mig_region *rg = &vm->regions[i];
		uint64_t pages = rg->size / VM_PAGE_SIZE;
		bm[i] = calloc(bitmap_words(pages), 8);
		if (!bm[i]) {
			r = vmm_err(err, -ENOMEM, "out of memory");
			goto out;
		}
		r = scan_region(vm, rg, off, bm[i], &cnt[i], err);
		if (r < 0)
			goto out;
		hdr.mem_pages += pages;
		hdr.data_pages += cnt[i];
		off += rg->size;
	}
	hdr.header_crc = crc32c(0, &hdr, offsetof(struct snap_header,
						  header_crc));

	/* A file of our own: never through a link someone put there, never
	 * over a file that was there (the control channel names the path). */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		r = vmm_err(err, -errno, "state file %s: %s%s", tmp,
			    strerror(errno), errno == EEXIST ? " (left by a "
			    "save that failed, or another's: remove it)" : "");
		goto out;
	}
	if ((r = write_full(fd, &hdr, sizeof(hdr))) < 0 ||
	    (r = write_full(fd, snap, snap_len)) < 0)
		goto write_fail;
	size = sizeof(hdr) + snap_len;
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		const mig_region *rg = &vm->regions[i];
		uint64_t pages = rg->size / VM_PAGE_SIZE;
		struct snap_region rh;
		uint32_t crc, pad = 0;

		memset(&rh, 0, sizeof(rh));
		memcpy(rh.magic, SNAP_RGN_MAGIC, 8);
		rh.index = i;
		rh.gpa = rg->gpa;
		rh.pages = pages;
		crc = crc32c(0, &rh, sizeof(rh));
		crc = crc32c(crc, bm[i], bitmap_words(pages) * 8);
		if ((r = write_full(fd, &rh, sizeof(rh))) < 0 ||
		    (r = write_full(fd, bm[i], bitmap_words(pages) * 8)) < 0 ||
		    (r = write_pages(fd, rg->hva, bm[i], pages, &crc)) < 0 ||
		    (r = write_full(fd, &crc, 4)) < 0 ||
		    (r = write_full(fd, &pad, 4)) < 0)
			goto write_fail;
		size += sizeof(rh) + bitmap_words(pages) * 8 +
			cnt[i] * VM_PAGE_SIZE + 8;
	}
	memcpy(tr.magic, SNAP_END_MAGIC, 8);
	tr.file_size = size + sizeof(tr);
	if ((r = write_full(fd, &tr, sizeof(tr))) < 0)
		goto write_fail;
	/* No fsync: the file outlives this process in the page cache, and
	 * syncing 100s of MiB would triple the time the guest is stopped;
	 * a host crash is not what this file protects against. */
	if (close(fd) < 0) {
		fd = -1;
		r = -errno;
		goto write_fail;
	}
	fd = -1;
	/* In place whole or not at all, and never over what is there. */
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) < 0 &&
	    (errno != EINVAL && errno != ENOSYS ? 1 :
	     /* a file system without it (9p): a link does the same */
	     link(tmp, path) < 0 || unlink(tmp) < 0)) {
		r = vmm_err(err, -errno, "state file %s: %s%s", path,
			    strerror(errno), errno == EEXIST ? " (migvm does "
			    "not overwrite a file)" : "");
		unlink(tmp);
		goto out;
	}
	r = 0;
	goto out;

write_fail:
	vmm_err(err, r, "state file %s: write: %s", tmp, strerror(-r));
	unlink(tmp);
out:
	if (fd >= 0)
		close(fd);
	for (uint32_t i = 0; i < VM_MAX_REGIONS; i++)
		free(bm[i]);
	free(snap);
	free(tmp);
	return r;
}

/* ---- reading ------------------------------------------------------- */

void snapfile_close(struct snapfile *sf)
{
	if (!sf)
		return;
	if (sf->fd >= 0)
		close(sf->fd);
	if (sf->snap)
		mig__ctl__vm_snapshot__free_unpacked(sf->snap, NULL);
	free(sf->path);
	free(sf);
}

static int bad(mig_error *err, const struct snapfile *sf, int code,
	       const char *what)
{
	return vmm_err(err, code, "state file %s: %s", sf->path, what);
}

static int read_at(struct snapfile *sf, void *buf, size_t len,
		   const char *what, mig_error *err)
{
	int r = read_full(sf->fd, buf, len);

	if (r == -EIO)
		return vmm_err(err, -EBADMSG, "state file %s: truncated (ends "
			       "inside the %s)", sf->path, what);
	if (r < 0)
		return vmm_err(err, r, "state file %s: read: %s", sf->path,
			       strerror(-r));
	return 0;
}

int snapfile_open(const char *path, struct snapfile **out,
		  struct vm_config *cfg, mig_error *err)
{
	struct snapfile *sf;
	struct stat st;
	Mig__Ctl__MachineConfig *mc;
	uint8_t *buf = NULL;
	uint64_t expect;
	int r;

	*out = NULL;
	memset(cfg, 0, sizeof(*cfg));
	sf = calloc(1, sizeof(*sf));
	if (!sf)
		return vmm_err(err, -ENOMEM, "out of memory");
	sf->fd = -1;
	sf->path = strdup(path);
	if (!sf->path) {
		free(sf);
		return vmm_err(err, -ENOMEM, "out of memory");
	}
	sf->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (sf->fd < 0) {
		r = vmm_err(err, -errno, "state file %s: %s", path,
			    strerror(errno));
		goto fail;
	}
	if (fstat(sf->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = bad(err, sf, -EINVAL, "not a regular file");
		goto fail;
	}
	sf->file_size = (uint64_t)st.st_size;
	if ((r = read_at(sf, &sf->hdr, sizeof(sf->hdr), "header", err)) < 0)
		goto fail;
	if (memcmp(sf->hdr.magic, SNAP_MAGIC, 8)) {
		r = bad(err, sf, -EBADMSG, "not a migvm state file (bad magic)");
		goto fail;
	}
	if (sf->hdr.header_crc != crc32c(0, &sf->hdr,
					 offsetof(struct snap_header,
						  header_crc))) {
		r = bad(err, sf, -EBADMSG, "header checksum mismatch "
			"(corrupted)");
		goto fail;
	}
	if (sf->hdr.version != SNAP_VERSION) {
		r = vmm_err(err, -ENOTSUP, "state file %s: version %u, this "
			    "migvm reads %d", path, sf->hdr.version,
			    SNAP_VERSION);
		goto fail;
	}
	if (sf->hdr.header_size != sizeof(sf->hdr) ||
	    sf->hdr.page_size != VM_PAGE_SIZE ||
	    sf->hdr.nr_regions < 1 || sf->hdr.nr_regions > VM_MAX_REGIONS ||
	    sf->hdr.snapshot_len > SNAP_SNAPSHOT_MAX ||
	    sf->hdr.data_pages > sf->hdr.mem_pages) {
		r = bad(err, sf, -EBADMSG, "header fields out of range");
		goto fail;
	}
	buf = malloc(sf->hdr.snapshot_len ? sf->hdr.snapshot_len : 1);
	if (!buf) {
		r = vmm_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	if ((r = read_at(sf, buf, sf->hdr.snapshot_len, "snapshot", err)) < 0)
		goto fail;
	if (crc32c(0, buf, sf->hdr.snapshot_len) != sf->hdr.snapshot_crc) {
		r = bad(err, sf, -EBADMSG, "snapshot checksum mismatch "
			"(corrupted)");
		goto fail;
	}
	sf->snap = mig__ctl__vm_snapshot__unpack(NULL, sf->hdr.snapshot_len,
						 buf);
	free(buf);
	buf = NULL;
	if (!sf->snap) {
		r = bad(err, sf, -EBADMSG, "snapshot does not decode");
		goto fail;
	}
	mc = sf->snap->config;
	if (sf->snap->version != SNAP_VERSION || !mc ||
	    mc->n_regions != sf->hdr.nr_regions ||
	    sf->snap->n_items > SNAP_ITEMS_MAX) {
		r = bad(err, sf, -EBADMSG, "snapshot: bad version, config or "
			"item count");
		goto fail;
	}
	if (mc->cpus < 1 || mc->cpus > VM_MAX_VCPUS || mc->mem_mib < 2 ||
	    mc->mem_mib > (1ull << 24)) {
		r = bad(err, sf, -EBADMSG, "snapshot: vCPU count or memory "
			"size out of range");
		goto fail;
	}
	{
		mig_region layout[VM_MAX_REGIONS];
		uint32_t n = mem_layout(mc->mem_mib, layout);
		uint64_t pages = 0;
		if (n != mc->n_regions) {
			r = bad(err, sf, -EBADMSG, "snapshot: memory regions "
				"do not match the memory size");
			goto fail;
		}
		expect = sizeof(sf->hdr) + sf->hdr.snapshot_len +
			 sf->hdr.data_pages * VM_PAGE_SIZE +
			 sizeof(struct snap_trailer);
		for (uint32_t i = 0; i < n; i++) {
			const Mig__Ctl__MemRegion *m = mc->regions[i];
			if (m->slot != layout[i].slot || m->gpa != layout[i].gpa ||
			    m->size != layout[i].size) {
				r = bad(err, sf, -EBADMSG, "snapshot: memory "
					"regions do not match the memory size");
				goto fail;
			}
			pages += m->size / VM_PAGE_SIZE;
			expect += sizeof(struct snap_region) +
				  bitmap_words(m->size / VM_PAGE_SIZE) * 8 + 8;
		}
		if (pages != sf->hdr.mem_pages) {
			r = bad(err, sf, -EBADMSG, "header page count does not "
				"match the snapshot");
			goto fail;
		}
	}
	if (sf->file_size < expect) {
		r = vmm_err(err, -EBADMSG, "state file %s: truncated (%llu "
			    "bytes, expected %llu)", path,
			    (unsigned long long)sf->file_size,
			    (unsigned long long)expect);
		goto fail;
	}
	if (sf->file_size > expect) {
		r = vmm_err(err, -EBADMSG, "state file %s: %llu bytes, "
			    "expected %llu (trailing garbage?)", path,
			    (unsigned long long)sf->file_size,
			    (unsigned long long)expect);
		goto fail;
	}
	cfg->mem_mib = mc->mem_mib;
	cfg->cpus = mc->cpus;
	cfg->backend = !strcmp(mc->mem_backend, "anon") ? MEM_BACKEND_ANON
		     : !strcmp(mc->mem_backend, "private") ? MEM_BACKEND_PRIVATE
							 : MEM_BACKEND_MEMFD;
	cfg->builtin_guest = mc->builtin_guest;
	cfg->cmdline = strdup(mc->cmdline);
	cfg->kernel = mc->kernel[0] ? strdup(mc->kernel) : NULL;
	if (!cfg->cmdline || (mc->kernel[0] && !cfg->kernel)) {
		vm_config_free(cfg);
		r = vmm_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	*out = sf;
	return 0;
fail:
	free(buf);
	snapfile_close(sf);
	return r;
}

static int snap_get(void *opaque, const char *name, const void **data,
		    size_t *len)
{
	const Mig__Ctl__VmSnapshot *s = opaque;

	for (size_t i = 0; i < s->n_items; i++)
		if (!strcmp(s->items[i]->name, name)) {
			*data = s->items[i]->data.data;
			*len = s->items[i]->data.len;
			return 0;
		}
	return -ENOENT;
}

static int read_region(struct snapfile *sf, struct vm *vm, uint32_t i,
		       uint64_t *data_pages, mig_error *err)
{
	const mig_region *rg = &vm->regions[i];
	uint64_t pages = rg->size / VM_PAGE_SIZE;
	uint64_t words = bitmap_words(pages);
	struct snap_region rh;
	uint64_t *bm;
	uint32_t crc, tail[2];
	uint64_t n = 0;
	char what[64];
	int r;

	snprintf(what, sizeof(what), "header of region %u", i);
	if ((r = read_at(sf, &rh, sizeof(rh), what, err)) < 0)
		return r;
	if (memcmp(rh.magic, SNAP_RGN_MAGIC, 8) || rh.index != i ||
	    rh.gpa != rg->gpa || rh.pages != pages)
		return vmm_err(err, -EBADMSG, "state file %s: region %u header "
			       "is corrupted", sf->path, i);
	bm = malloc(words * 8);
	if (!bm)
		return vmm_err(err, -ENOMEM, "out of memory");
	snprintf(what, sizeof(what), "page bitmap of region %u", i);
	if ((r = read_at(sf, bm, words * 8, what, err)) < 0)
		goto out;
	crc = crc32c(0, &rh, sizeof(rh));
	crc = crc32c(crc, bm, words * 8);
	for (uint64_t w = 0; w < words; w++)
		n += (uint64_t)__builtin_popcountll(bm[w]);
	if ((pages % 64) && (bm[words - 1] >> (pages % 64))) {
		r = vmm_err(err, -EBADMSG, "state file %s: region %u bitmap "
			    "is corrupted", sf->path, i);
		goto out;
	}
	if (n > sf->hdr.data_pages - *data_pages) {
		r = vmm_err(err, -EBADMSG, "state file %s: region %u stores "
			    "more pages than the header says", sf->path, i);
		goto out;
	}
	snprintf(what, sizeof(what), "pages of region %u", i);
	for (uint64_t p = 0; p < pages;) {
		uint64_t q;
		uint8_t *dst;
		if (!bit_test(bm, p)) {
			p++;
			continue;
		}
		for (q = p + 1; q < pages && bit_test(bm, q) &&
				q - p < (1u << 14); q++)
			;
		dst = (uint8_t *)rg->hva + p * VM_PAGE_SIZE;
		if ((r = read_at(sf, dst, (q - p) * VM_PAGE_SIZE, what, err)) < 0)
			goto out;
		crc = crc32c(crc, dst, (q - p) * VM_PAGE_SIZE);
		p = q;
	}
	if ((r = read_at(sf, tail, sizeof(tail), what, err)) < 0)
		goto out;
	if (tail[0] != crc) {
		r = vmm_err(err, -EBADMSG, "state file %s: region %u checksum "
			    "mismatch (corrupted memory contents)", sf->path,
			    i);
		goto out;
	}
	*data_pages += n;
	r = 0;
out:
	free(bm);
	return r;
}

int snapfile_restore(struct snapfile *sf, struct vm *vm, mig_error *err)
{
	struct state_source src = { snap_get, sf->snap };
	struct snap_trailer tr;
	uint64_t data_pages = 0;
	int r;

	if (vm->nr_regions != sf->hdr.nr_regions)
		return vmm_err(err, MIG_E_INCOMPAT, "state file %s: %u memory "
			       "regions, the VM has %u", sf->path,
			       sf->hdr.nr_regions, vm->nr_regions);
	for (uint32_t i = 0; i < vm->nr_regions; i++)
		if ((r = read_region(sf, vm, i, &data_pages, err)) < 0)
			return r;
	if ((r = read_at(sf, &tr, sizeof(tr), "trailer", err)) < 0)
		return r;
	if (memcmp(tr.magic, SNAP_END_MAGIC, 8) ||
	    tr.file_size != sf->file_size || data_pages != sf->hdr.data_pages)
		return bad(err, sf, -EBADMSG, "trailer is corrupted");
	/* Every item must be one this migvm loads: what it would skip is
	 * state lost (a newer migvm's device, say). */
	r = 0;
	for (size_t i = 0; i < sf->snap->n_items && r == 0; i++)
		r = vm_state_item_check(vm, sf->snap->items[i]->name, err);
	if (r == 0)
		r = vm_load_state(vm, &src, err);
	if (r < 0)
		vmm_err_prefix(err, "state file %s: ", sf->path);
	return r;
}
