/*
 * The helpers every dirty-log backend shares (dirty.h): bitmaps and the KVM
 * ioctls. A leaf: dirty.c picks the backends, the backends call these.
 */
#include <errno.h>
#include <sys/ioctl.h>

#include <linux/kvm.h>

#include "dirty.h"

uint64_t mig__bitmap_or(uint64_t *dst, const uint64_t *src, uint64_t n)
{
	uint64_t added = 0;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t fresh = src[i] & ~dst[i];
		if (fresh) {
			dst[i] |= fresh;
			added += (uint64_t)__builtin_popcountll(fresh);
		}
	}
	return added;
}

int mig__kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int r;

	do
		r = ioctl(fd, req, arg);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

int mig__kvm_check(int vm_fd, long cap)
{
	int r = ioctl(vm_fd, KVM_CHECK_EXTENSION, cap);
	return r > 0 ? r : 0;
}

int mig__kvm_ring_enabled(int vm_fd)
{
	/* Address space 0xffff does not exist: without a ring KVM says
	 * EINVAL for the slot; with one it says ENXIO before looking. */
	struct kvm_dirty_log log = { .slot = 0xffffu << 16 };
	int r = mig__kvm_ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log);

	if (r == -ENXIO)
		return 1;
	if (r == -EBADF || r == -ENOTTY)
		return -EBADF; /* ENOTTY: some other kind of fd */
	return 0;
}
