/*
 * VM set-up and tear-down. vm_create() is a goto ladder that undoes what it
 * did in reverse order; vm_destroy() does the same for a complete VM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "vm.h"

void vm_config_free(struct vm_config *cfg)
{
	free(cfg->kernel);
	free(cfg->cmdline);
	cfg->kernel = NULL;
	cfg->cmdline = NULL;
}

static int copy_config(struct vm_config *dst, const struct vm_config *src,
		       mig_error *err)
{
	*dst = *src;
	dst->kernel = src->kernel ? strdup(src->kernel) : NULL;
	dst->cmdline = strdup(src->cmdline ? src->cmdline : "");
	if ((src->kernel && !dst->kernel) || !dst->cmdline) {
		vm_config_free(dst);
		return vmm_err(err, -ENOMEM, "out of memory");
	}
	return 0;
}

/* MIGVM_KVM_DEVICE names another device node: tests use it to see how
 * migvm fails on a host without KVM. */
static int open_kvm(mig_error *err)
{
	const char *path = getenv("MIGVM_KVM_DEVICE");
	int fd, v;

	if (!path || !*path)
		path = "/dev/kvm";
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return vmm_err(err, -ENODEV, "%s does not exist: KVM is "
				       "not available on this host (load "
				       "kvm-intel/kvm-amd, or run where "
				       "virtualization is enabled)", path);
		return vmm_err(err, -e, "cannot open %s: %s%s", path,
			       strerror(e), e == EACCES ? " (are you in the "
			       "kvm group?)" : "");
	}
	v = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (v < 0) {
		int e = errno;
		close(fd);
		return vmm_err(err, -ENODEV, "%s is not a KVM device "
			       "(KVM_GET_API_VERSION: %s)", path, strerror(e));
	}
	if (v != KVM_API_VERSION) {
		close(fd);
		return vmm_err(err, -ENOTSUP, "%s: KVM API version %d, migvm "
			       "needs %d", path, v, KVM_API_VERSION);
	}
	return fd;
}

static int need_cap(int kvm_fd, int cap, const char *name, mig_error *err)
{
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, cap) <= 0)
		return vmm_err(err, -ENOTSUP, "KVM lacks %s", name);
	return 0;
}

int vm_create(struct vm *vm, const struct vm_config *cfg, int console_fd,
	      mig_error *err)
{
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	pthread_condattr_t ca;
	uint64_t idmap = VM_IDMAP_ADDR;
	int r;

	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = vm->mem_fd = vm->event_fd = -1;
	for (int i = 0; i < VM_MAX_VCPUS; i++)
		vm->vcpus[i].fd = -1;
	if (cfg->cpus < 1 || cfg->cpus > VM_MAX_VCPUS)
		return vmm_err(err, -EINVAL, "%u vCPUs: migvm runs 1..%d",
			       cfg->cpus, VM_MAX_VCPUS);
	r = mem_check_host(cfg->mem_mib, err);
	if (r < 0)
		return r;
	r = copy_config(&vm->cfg, cfg, err);
	if (r < 0)
		return r;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, &ca);
	pthread_cond_init(&vm->parked, &ca);
	pthread_condattr_destroy(&ca);
	serial_init(&vm->serial, console_fd);
	acpi_pm_init(&vm->acpi_pm);

	vm->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->event_fd < 0) {
		r = vmm_err(err, -errno, "eventfd: %s", strerror(errno));
		goto fail_event;
	}
	r = vm->kvm_fd = open_kvm(err);
	if (r < 0)
		goto fail_kvm;
	if ((r = need_cap(vm->kvm_fd, KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", err)) ||
	    (r = need_cap(vm->kvm_fd, KVM_CAP_PIT2, "KVM_CAP_PIT2", err)) ||
	    (r = need_cap(vm->kvm_fd, KVM_CAP_IMMEDIATE_EXIT,
			  "KVM_CAP_IMMEDIATE_EXIT", err)) ||
	    (r = need_cap(vm->kvm_fd, KVM_CAP_USER_MEMORY,
			  "KVM_CAP_USER_MEMORY", err)))
		goto fail_vm;
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		r = vmm_err(err, -errno, "KVM_CREATE_VM: %s", strerror(errno));
		goto fail_vm;
	}
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VM_TSS_ADDR) < 0) {
		r = vmm_err(err, -errno, "KVM_SET_TSS_ADDR: %s", strerror(errno));
		goto fail_setup;
	}
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) {
		r = vmm_err(err, -errno, "KVM_SET_IDENTITY_MAP_ADDR: %s",
			    strerror(errno));
		goto fail_setup;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		r = vmm_err(err, -errno, "KVM_CREATE_IRQCHIP: %s",
			    strerror(errno));
		goto fail_setup;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
		r = vmm_err(err, -errno, "KVM_CREATE_PIT2: %s", strerror(errno));
		goto fail_setup;
	}
	r = mem_init(vm, err);
	if (r < 0)
		goto fail_setup;
	if (vm->cfg.dirty_ring) {
		/* KVM takes the ring only before the first vCPU exists. */
		r = mig_dirty_ring_enable(vm->vm_fd, 0, err);
		if (r < 0) {
			vmm_err_prefix(err, "--dirty-log ring: ");
			goto fail_cpu;
		}
	}
	r = cpu_create_all(vm, err);
	if (r < 0)
		goto fail_cpu;
	return 0;

fail_cpu:
	mem_exit(vm);
fail_setup:
	mig_dirty_ring_forget(vm->vm_fd);
	close(vm->vm_fd);
	vm->vm_fd = -1;
fail_vm:
	close(vm->kvm_fd);
	vm->kvm_fd = -1;
fail_kvm:
	close(vm->event_fd);
	vm->event_fd = -1;
fail_event:
	serial_exit(&vm->serial);
	acpi_pm_exit(&vm->acpi_pm);
	free(vm->migration_result);
	vm->migration_result = NULL;
	pthread_cond_destroy(&vm->cond);
	pthread_cond_destroy(&vm->parked);
	pthread_mutex_destroy(&vm->lock);
	vm_config_free(&vm->cfg);
	return r;
}

void vm_destroy(struct vm *vm)
{
	if (vm->kvm_fd < 0)
		return; /* never created, or vm_create() cleaned up */
	vm_stop(vm);
	serial_flush(&vm->serial);
	cpu_destroy_all(vm);
	mem_exit(vm);
	mig_dirty_ring_forget(vm->vm_fd);
	close(vm->vm_fd);
	close(vm->kvm_fd);
	close(vm->event_fd);
	vm->vm_fd = vm->kvm_fd = vm->event_fd = -1;
	serial_exit(&vm->serial);
	acpi_pm_exit(&vm->acpi_pm);
	free(vm->migration_result);
	vm->migration_result = NULL;
	pthread_cond_destroy(&vm->cond);
	pthread_cond_destroy(&vm->parked);
	pthread_mutex_destroy(&vm->lock);
	vm_config_free(&vm->cfg);
}
