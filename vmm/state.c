/*
 * Everything but guest memory, as named blobs: the VM's configuration
 * ("vmm.config", a MachineConfig), the in-kernel devices ("x86.vm"), each
 * vCPU ("x86.vcpu.<index>", both from libmigrate's mig_x86_* helpers), the
 * serial port ("serial") and ACPI's PM1 registers ("acpi.pm", absent in
 * state from before them: power-on values). The same functions serve the
 * state file
 * (snapfile.c) and libmigrate's mig_vm_ops (through a mig_state).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.pb-c.h"
#include "vm.h"

#define ITEM_CONFIG "vmm.config"
#define ITEM_VM "x86.vm"
#define ITEM_SERIAL "serial"
#define ITEM_ACPI_PM "acpi.pm"

/*
 * KVM gives the vCPUs one TSC offset (a synchronized TSC, and kvmclock's
 * master clock with PVCLOCK_TSC_STABLE_BIT) only when each host-side TSC
 * write lands within about a second of the one before it
 * (kvm_synchronize_tsc). vCPUs whose early loads spanned more than half
 * that (a stricter rule than KVM's, for margin), as items that arrive over
 * a slow stop-and-copy can, are loaded again back to back at the end, as
 * QEMU writes every vCPU's TSC in one go.
 */
#define TSC_SYNC_WINDOW_NS 500000000ull

static void vcpu_item(char *buf, size_t len, uint32_t i)
{
	snprintf(buf, len, "x86.vcpu.%u", i);
}

static const char *backend_name(enum mem_backend b)
{
	return b == MEM_BACKEND_ANON ? "anon"
	       : b == MEM_BACKEND_PRIVATE ? "private" : "memfd";
}

/* The VM's MachineConfig, packed into a malloc'd buffer. */
static int config_pack(struct vm *vm, void **blob, size_t *len,
		       mig_error *err)
{
	Mig__Ctl__MachineConfig m = MIG__CTL__MACHINE_CONFIG__INIT;
	Mig__Ctl__MemRegion rg[VM_MAX_REGIONS], *rgp[VM_MAX_REGIONS];
	uint8_t *buf;
	size_t n;

	m.mem_mib = vm->cfg.mem_mib;
	m.cpus = vm->cfg.cpus;
	m.cmdline = vm->cfg.cmdline;
	m.mem_backend = (char *)backend_name(vm->cfg.backend);
	m.kernel = vm->cfg.kernel ? vm->cfg.kernel : (char *)"";
	m.builtin_guest = vm->cfg.builtin_guest;
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		mig__ctl__mem_region__init(&rg[i]);
		rg[i].slot = vm->regions[i].slot;
		rg[i].gpa = vm->regions[i].gpa;
		rg[i].size = vm->regions[i].size;
		rgp[i] = &rg[i];
	}
	m.n_regions = vm->nr_regions;
	m.regions = rgp;
	n = mig__ctl__machine_config__get_packed_size(&m);
	buf = malloc(n ? n : 1);
	if (!buf)
		return vmm_err(err, -ENOMEM, "config: out of memory");
	mig__ctl__machine_config__pack(&m, buf);
	*blob = buf;
	*len = n;
	return 0;
}

int vm_check_config(struct vm *vm, const void *data, size_t len,
		    mig_error *err)
{
	Mig__Ctl__MachineConfig *m;
	int r = 0;

	m = mig__ctl__machine_config__unpack(NULL, len, data);
	if (!m)
		return vmm_err(err, -EBADMSG, "state item \"%s\" does not "
			       "decode", ITEM_CONFIG);
	if (m->mem_mib != vm->cfg.mem_mib)
		r = vmm_err(err, MIG_E_INCOMPAT, "the saved VM has %llu MiB of "
			    "RAM, this one %llu MiB",
			    (unsigned long long)m->mem_mib,
			    (unsigned long long)vm->cfg.mem_mib);
	else if (m->cpus != vm->cfg.cpus)
		r = vmm_err(err, MIG_E_INCOMPAT, "the saved VM has %u vCPUs, "
			    "this one %u", m->cpus, vm->cfg.cpus);
	else if (m->n_regions != vm->nr_regions)
		r = vmm_err(err, MIG_E_INCOMPAT, "the saved VM has %zu memory "
			    "regions, this one %u", m->n_regions,
			    vm->nr_regions);
	for (size_t i = 0; r == 0 && i < m->n_regions; i++) {
		const mig_region *rg = &vm->regions[i];
		if (m->regions[i]->slot != rg->slot ||
		    m->regions[i]->gpa != rg->gpa ||
		    m->regions[i]->size != rg->size)
			r = vmm_err(err, MIG_E_INCOMPAT, "memory region %zu "
				    "differs (saved slot %u at 0x%llx, %llu "
				    "bytes)", i, m->regions[i]->slot,
				    (unsigned long long)m->regions[i]->gpa,
				    (unsigned long long)m->regions[i]->size);
	}
	mig__ctl__machine_config__free_unpacked(m, NULL);
	return r;
}

static int add_item(const struct state_sink *sink, const char *name,
		    void *blob, size_t len, mig_error *err)
{
	int r = sink->add(sink->opaque, name, blob, len);

	free(blob);
	if (r < 0)
		return vmm_err(err, r, "state item \"%s\" (%zu bytes): %s",
			       name, len, mig_strerror(r));
	return 0;
}

int vm_save_state(struct vm *vm, const struct state_sink *sink,
		  mig_error *err)
{
	char name[32];
	void *blob = NULL;
	size_t len = 0;
	int r;

	if (!vm_is_paused(vm) && vm_run_state(vm) != RUN_STARTING)
		return vmm_err(err, -EBUSY, "save state: the VM is running");
	if ((r = config_pack(vm, &blob, &len, err)) < 0 ||
	    (r = add_item(sink, ITEM_CONFIG, blob, len, err)) < 0)
		return r;
	r = mig_x86_vm_save(vm->vm_fd, &blob, &len, err);
	if (r < 0 || (r = add_item(sink, ITEM_VM, blob, len, err)) < 0)
		return r;
	for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
		r = mig_x86_vcpu_save(vm->kvm_fd, vm->vcpus[i].fd, &blob, &len,
				      err);
		if (r < 0) {
			vmm_err_prefix(err, "vCPU %u: ", i);
			return r;
		}
		vcpu_item(name, sizeof(name), i);
		if ((r = add_item(sink, name, blob, len, err)) < 0)
			return r;
	}
	if ((r = serial_save(&vm->serial, &blob, &len, err)) < 0 ||
	    (r = add_item(sink, ITEM_SERIAL, blob, len, err)) < 0)
		return r;
	if ((r = acpi_pm_save(&vm->acpi_pm, &blob, &len, err)) < 0 ||
	    (r = add_item(sink, ITEM_ACPI_PM, blob, len, err)) < 0)
		return r;
	return 0;
}

static int get_item(const struct state_source *src, const char *name,
		    const void **data, size_t *len, mig_error *err)
{
	int r = src->get(src->opaque, name, data, len);

	if (r == -ENOENT)
		return vmm_err(err, -EINVAL, "state item \"%s\" is missing",
			       name);
	if (r < 0)
		return vmm_err(err, r, "state item \"%s\": %s", name,
			       mig_strerror(r));
	return 0;
}

static bool loadable(struct vm *vm)
{
	return vm_run_state(vm) == RUN_STARTING || vm_is_paused(vm);
}

/* "x86.vcpu.N" -> N, or -1: N in plain decimal as vcpu_item() writes
 * it ("0", "12"; not "01", "+1", " 1"), below the vCPU count. */
static long vcpu_index(struct vm *vm, const char *name)
{
	const char *p = name + 9;
	long i = 0;

	if (strncmp(name, "x86.vcpu.", 9) || !*p || (p[0] == '0' && p[1]))
		return -1;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		i = i * 10 + (*p - '0');
		if ((uint64_t)i >= vm->nr_vcpus)
			return -1;
	}
	return i;
}

/*
 * One vCPU's state. A TSC rate KVM cannot run here (no TSC scaling, slower
 * than this host's) is refused with --strict-tsc; otherwise the VM runs at
 * this host's rate, as QEMU does, and the user is told once per load.
 */
static int load_vcpu(struct vm *vm, uint32_t i, const void *data, size_t len,
		     mig_error *err)
{
	mig_x86_tsc_policy policy = vm->cfg.strict_tsc ? MIG_X86_TSC_STRICT
						       : MIG_X86_TSC_HOST;
	mig_x86_tsc_info tsc;
	uint64_t now;
	bool differs;
	int r;

	r = mig_x86_vcpu_load_tsc(vm->kvm_fd, vm->vcpus[i].fd, data, len,
				  policy, &tsc, err);
	differs = tsc.saved_khz && tsc.khz && tsc.saved_khz != tsc.khz;
	if (r < 0) {
		if (vm->cfg.strict_tsc && differs)
			vmm_err_prefix(err, "vCPU %u (--strict-tsc): ", i);
		else
			vmm_err_prefix(err, "vCPU %u: ", i);
		return r;
	}
	now = now_ns();
	if (!vm->loaded.vcpu_first_ns)
		vm->loaded.vcpu_first_ns = now;
	vm->loaded.vcpu_last_ns = now;
	if (differs && !vm->tsc_warned) {
		double ppm = ((double)tsc.khz - tsc.saved_khz) * 1e6 /
			     tsc.saved_khz;
		fprintf(stderr, "migvm: warning: the saved TSC ran at %u kHz; "
			"KVM here cannot run it below this host's %u kHz (no "
			"TSC scaling), so the guest's TSC now runs %+.0f ppm "
			"off (kvmclock unaffected; --strict-tsc refuses)\n",
			tsc.saved_khz, tsc.khz, ppm);
		vm->tsc_warned = true;
	}
	return 0;
}

int vm_state_item_check(struct vm *vm, const char *name, mig_error *err)
{
	char shown[65];
	size_t n = 0;

	if (!strcmp(name, ITEM_CONFIG) || !strcmp(name, ITEM_VM) ||
	    !strcmp(name, ITEM_SERIAL) || !strcmp(name, ITEM_ACPI_PM) ||
	    vcpu_index(vm, name) >= 0)
		return 0;
	/* A hostile name as it may be shown: printable ASCII only. */
	for (; *name && n + 1 < sizeof(shown); name++)
		shown[n++] = *name >= 0x20 && *name < 0x7f ? *name : '?';
	shown[n] = '\0';
	return vmm_err(err, -EINVAL, "state item \"%s\" is not one this migvm "
		       "knows (from a newer migvm, or for more vCPUs?)", shown);
}

/* The UART's state, then IRQ 4 as that state says. */
static int load_serial(struct vm *vm, const void *data, size_t len,
		       mig_error *err)
{
	int r = serial_load(&vm->serial, data, len, err);

	if (r == 0)
		serial_sync_irq(vm);
	return r;
}

int vm_load_state_item(struct vm *vm, const char *name, const void *data,
		       size_t len, mig_error *err)
{
	long i;
	int r;

	if (!loadable(vm))
		return vmm_err(err, -EBUSY, "load state: the VM is running");
	/* State this migvm would drop is refused, not ignored: a newer
	 * source's device would be lost here without a word. */
	if ((r = vm_state_item_check(vm, name, err)) < 0)
		return r;
	if (!strcmp(name, ITEM_CONFIG)) {
		if ((r = vm_check_config(vm, data, len, err)) < 0)
			return r;
		vm->loaded.config = true;
	} else if (!vm->loaded.config) {
		return 0; /* nothing before the config check */
	} else if (!strcmp(name, ITEM_VM)) {
		if ((r = mig_x86_vm_load(vm->vm_fd, data, len, err)) < 0)
			return r;
		vm->loaded.vm = true;
	} else if ((i = vcpu_index(vm, name)) >= 0) {
		if (!vm->loaded.vm)
			return 0; /* devices before vCPUs (see kvm_x86.h) */
		if ((r = load_vcpu(vm, (uint32_t)i, data, len, err)) < 0)
			return r;
		vm->loaded.vcpu[i] = true;
	} else if (!strcmp(name, ITEM_SERIAL)) {
		if ((r = load_serial(vm, data, len, err)) < 0)
			return r;
		vm->loaded.serial = true;
	} else if (!strcmp(name, ITEM_ACPI_PM)) {
		if ((r = acpi_pm_load(&vm->acpi_pm, data, len, err)) < 0)
			return r;
		vm->loaded.acpi_pm = true;
	}
	return 0;
}

static int load_missing(struct vm *vm, const struct state_source *src,
			mig_error *err)
{
	const void *data;
	char name[32];
	size_t len;
	int r;

	if (!loadable(vm))
		return vmm_err(err, -EBUSY, "load state: the VM is running");
	if (!vm->loaded.config) {
		if ((r = get_item(src, ITEM_CONFIG, &data, &len, err)) < 0 ||
		    (r = vm_check_config(vm, data, len, err)) < 0)
			return r;
	}
	/* Devices before vCPUs (see kvm_x86.h). */
	if (!vm->loaded.vm) {
		if ((r = get_item(src, ITEM_VM, &data, &len, err)) < 0 ||
		    (r = mig_x86_vm_load(vm->vm_fd, data, len, err)) < 0)
			return r;
	}
	for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
		if (vm->loaded.vcpu[i])
			continue;
		vcpu_item(name, sizeof(name), i);
		if ((r = get_item(src, name, &data, &len, err)) < 0)
			return r;
		if ((r = load_vcpu(vm, i, data, len, err)) < 0)
			return r;
	}
	if (vm->loaded.vcpu_last_ns - vm->loaded.vcpu_first_ns >
	    TSC_SYNC_WINDOW_NS) {
		/* Loading a vCPU again applies the same state: idempotent
		 * while it has not run. */
		fprintf(stderr, "migvm: the vCPUs' state was loaded over %llu "
			"ms; loading it again back to back, so that KVM keeps "
			"their TSCs in step\n", (unsigned long long)
			((vm->loaded.vcpu_last_ns - vm->loaded.vcpu_first_ns) /
			 1000000));
		vm->loaded.vcpu_first_ns = 0;
		for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
			vcpu_item(name, sizeof(name), i);
			if ((r = get_item(src, name, &data, &len, err)) < 0 ||
			    (r = load_vcpu(vm, i, data, len, err)) < 0)
				return r;
		}
	}
	if (!vm->loaded.serial) {
		if ((r = get_item(src, ITEM_SERIAL, &data, &len, err)) < 0 ||
		    (r = load_serial(vm, data, len, err)) < 0)
			return r;
	}
	if (!vm->loaded.acpi_pm) {
		/* Optional: state from a migvm without ACPI has none, and
		 * its guest never touched these registers. */
		r = src->get(src->opaque, ITEM_ACPI_PM, &data, &len);
		if (r == -ENOENT)
			acpi_pm_reset(&vm->acpi_pm);
		else if (r < 0)
			return vmm_err(err, r, "state item \"%s\": %s",
				       ITEM_ACPI_PM, mig_strerror(r));
		else if ((r = acpi_pm_load(&vm->acpi_pm, data, len, err)) < 0)
			return r;
	}
	return 0;
}

void vm_forget_loaded_items(struct vm *vm)
{
	memset(&vm->loaded, 0, sizeof(vm->loaded));
}

int vm_load_state(struct vm *vm, const struct state_source *src,
		  mig_error *err)
{
	int r = load_missing(vm, src, err);

	vm_forget_loaded_items(vm);
	return r;
}

/* ---- libmigrate's mig_vm_ops --------------------------------------- */

static int mig_sink_add(void *opaque, const char *name, const void *data,
			size_t len)
{
	return mig_state_add(opaque, name, data, len);
}

static int mig_source_get(void *opaque, const char *name, const void **data,
			  size_t *len)
{
	return mig_state_get(opaque, name, data, len);
}

int vm_ops_pause(void *opaque, mig_error *err)
{
	return vm_pause(opaque, err);
}

/* On a destination whose vCPU threads never ran, resume starts them. */
int vm_ops_resume(void *opaque, mig_error *err)
{
	struct vm *vm = opaque;
	bool started;
	int r;

	pthread_mutex_lock(&vm->lock);
	started = vm->nr_threads > 0;
	pthread_mutex_unlock(&vm->lock);
	if (started)
		return vm_resume(vm, err);
	if (vm_is_paused(vm)) {
		r = vm_resume(vm, err);
		if (r < 0 || vm_is_paused(vm))
			return r;
	}
	return vm_start(vm, err);
}

int vm_ops_save_state(void *opaque, mig_state *out, mig_error *err)
{
	struct state_sink sink = { mig_sink_add, out };
	return vm_save_state(opaque, &sink, err);
}

int vm_ops_load_state(void *opaque, const mig_state *in, mig_error *err)
{
	struct state_source src = { mig_source_get, (void *)in };
	return vm_load_state(opaque, &src, err);
}

int vm_ops_load_state_item(void *opaque, const char *name, const void *data,
			   size_t len, mig_error *err)
{
	return vm_load_state_item(opaque, name, data, len, err);
}

int vm_ops_throttle(void *opaque, unsigned int pct, mig_error *err)
{
	return vm_set_throttle(opaque, pct, err);
}

const mig_vm_ops vm_mig_ops = {
	.pause = vm_ops_pause,
	.resume = vm_ops_resume,
	.save_state = vm_ops_save_state,
	.load_state = vm_ops_load_state,
	.throttle = vm_ops_throttle,
	.load_state_item = vm_ops_load_state_item,
};
