/* Helpers shared by the source and destination sessions. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "session.h"

int mig__vm_copy(mig_vm_copy *c, const mig_vm *vm, mig_error *err)
{
	memset(c, 0, sizeof(*c));
	if (!vm->ops || !vm->ops->pause || !vm->ops->resume ||
	    !vm->ops->save_state || !vm->ops->load_state)
		return mig__err(err, -EINVAL,
				"VM ops: pause, resume, save_state and load_state are required");
	if (vm->vm_fd < 0)
		return mig__err(err, -EBADF, "VM: vm_fd %d is not a file descriptor",
				vm->vm_fd);
	if (!vm->regions || vm->nr_regions == 0 || vm->nr_regions > 512)
		return mig__err(err, -EINVAL, "VM: %u memory regions (1..512 allowed)",
				vm->nr_regions);
	if (vm->nr_vcpus > 1024 || (vm->nr_vcpus && !vm->vcpu_fds))
		return mig__err(err, -EINVAL, "VM: %u vCPUs without vcpu_fds",
				vm->nr_vcpus);
	if (vm->cpuid_len > (1u << 20) || (vm->cpuid_len && !vm->cpuid))
		return mig__err(err, -EINVAL, "VM: bad CPUID fingerprint");
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		const mig_region *r = &vm->regions[i];
		if (!r->size || r->size % MIG_PAGE_SIZE || r->gpa % MIG_PAGE_SIZE ||
		    !r->hva || (uintptr_t)r->hva % MIG_PAGE_SIZE)
			return mig__err(err, -EINVAL,
					"VM: region %u (slot %u, gpa 0x%llx, size 0x%llx) is empty or not page aligned",
					i, r->slot, (unsigned long long)r->gpa,
					(unsigned long long)r->size);
		for (uint32_t j = 0; j < i; j++) {
			const mig_region *o = &vm->regions[j];
			if (o->slot == r->slot ||
			    (r->gpa < o->gpa + o->size && o->gpa < r->gpa + r->size))
				return mig__err(err, -EINVAL,
						"VM: regions %u and %u overlap or share slot %u",
						j, i, r->slot);
		}
	}
	c->vm = *vm;
	c->regions = calloc(vm->nr_regions, sizeof(*c->regions));
	c->vcpu_fds = calloc(vm->nr_vcpus ? vm->nr_vcpus : 1, sizeof(int));
	c->cpuid = malloc(vm->cpuid_len ? vm->cpuid_len : 1);
	if (!c->regions || !c->vcpu_fds || !c->cpuid) {
		mig__vm_copy_free(c);
		return mig__err(err, -ENOMEM, "VM: out of memory");
	}
	memcpy(c->regions, vm->regions, vm->nr_regions * sizeof(*c->regions));
	if (vm->nr_vcpus)
		memcpy(c->vcpu_fds, vm->vcpu_fds, vm->nr_vcpus * sizeof(int));
	if (vm->cpuid_len)
		memcpy(c->cpuid, vm->cpuid, vm->cpuid_len);
	c->vm.regions = c->regions;
	c->vm.vcpu_fds = c->vcpu_fds;
	c->vm.cpuid = c->cpuid;
	for (uint32_t i = 0; i < vm->nr_regions; i++)
		c->total_pages += vm->regions[i].size / MIG_PAGE_SIZE;
	return 0;
}

void mig__vm_copy_free(mig_vm_copy *c)
{
	free(c->regions);
	free(c->vcpu_fds);
	free(c->cpuid);
	memset(c, 0, sizeof(*c));
}

void mig__log(const mig_callbacks *cb, void *opaque, mig_log_level lvl,
	      const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!cb || !cb->log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cb->log(lvl, msg, opaque);
}

void mig__deadline_us(struct timespec *ts, uint64_t us)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += (time_t)(us / 1000000);
	ts->tv_nsec += (long)(us % 1000000) * 1000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

void mig__deadline(struct timespec *ts, uint64_t ms)
{
	mig__deadline_us(ts, ms * 1000);
}
