/*
 * vCPUs: creation with CPUID, one thread each running the KVM_RUN loop (a
 * single switch on exit_reason), and pause/resume/stop.
 *
 * Pausing: the pauser sets pause_req, then for every vCPU sets
 * kvm_run->immediate_exit and sends SIG_KICK (an empty handler), so a vCPU
 * inside KVM_RUN leaves it with EINTR and one about to enter returns at
 * once. A vCPU parks only after a KVM_RUN that returned EINTR: an I/O or
 * MMIO exit is completed by KVM on the next KVM_RUN, so the thread re-enters
 * once (immediate_exit still set) before it parks, and saved state never
 * misses the result of an IN instruction.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "vm.h"

#define SIG_KICK SIGUSR1
#define PORT_EXIT 0xf4
#define PORT_COM1 0x3f8
/* The i8042's command port: 0xfe pulses the CPU reset line (Linux's
 * "reboot=k", its way once ACPI has no reset register). */
#define PORT_I8042_CMD 0x64
#define I8042_CMD_RESET 0xfe
#define PAUSE_TIMEOUT_NS (5ull * 1000000000ull)
/* vm_pause() and vm_stop() kick again this often until the vCPUs obey. */
#define KICK_AGAIN_NS 50000000ull
/* vm_stop() says so when vCPU threads run on this long after a stop. */
#define STOP_SLOW_NS (10ull * 1000000000ull)

/* ---- CPUID ------------------------------------------------------------ */

static struct kvm_cpuid2 *supported_cpuid(int kvm_fd, mig_error *err)
{
	for (uint32_t n = 128; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) +
					      n * sizeof(c->entries[0]));
		if (!c) {
			vmm_err(err, -ENOMEM, "CPUID: out of memory");
			return NULL;
		}
		c->nent = n;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0)
			return c;
		free(c);
		if (errno != E2BIG) {
			vmm_err(err, -errno, "KVM_GET_SUPPORTED_CPUID: %s",
				strerror(errno));
			return NULL;
		}
	}
	vmm_err(err, -E2BIG, "KVM_GET_SUPPORTED_CPUID: too many entries");
	return NULL;
}

/* Adapt the supported CPUID to vCPU `id` of `n`. `tsc_deadline`: KVM's
 * in-kernel LAPIC has the TSC-deadline timer mode, which KVM does not list
 * in the supported CPUID (KVM_CAP_TSC_DEADLINE_TIMER; QEMU sets it too):
 * with it Linux uses the LAPIC timer without calibrating it against the
 * PIT, a calibration that slow or loaded hosts fail ("APIC timer disabled
 * due to verification failure"). */
static void cpuid_for_vcpu(struct kvm_cpuid2 *c, uint32_t id, uint32_t n,
			   bool tsc_deadline)
{
	uint32_t shift = 0;

	while ((1u << shift) < n)
		shift++;
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		switch (e->function) {
		case 1:
			/* initial APIC id, logical processor count, HTT */
			e->ebx = (e->ebx & 0x0000ffffu) | (id << 24) |
				 ((n > 255 ? 255 : n) << 16);
			if (n > 1)
				e->edx |= 1u << 28;
			e->ecx |= 1u << 31; /* running under a hypervisor */
			if (tsc_deadline)
				e->ecx |= 1u << 24;
			/* No VMX: nested state (KVM_GET_NESTED_STATE) is
			 * not migrated, so a guest hypervisor would lose
			 * its own guests' state on a move. */
			e->ecx &= ~(1u << 5);
			break;
		case 0x80000001:
			e->ecx &= ~(1u << 2); /* no SVM, for the same reason */
			break;
		case 7:
			/* This KVM refuses IA32_ARCH_CAPABILITIES (the reason
			 * QEMU needs -cpu host,-arch-capabilities): do not
			 * advertise it. */
			if (e->index == 0)
				e->edx &= ~(1u << 29);
			break;
		case 0xb:
		case 0x1f:
			/* One thread per core, n cores, x2APIC id = id. */
			if (e->index == 0) {
				e->eax = 0;
				e->ebx = 1;
				e->ecx = 0 | (1u << 8);
			} else if (e->index == 1) {
				e->eax = shift;
				e->ebx = n;
				e->ecx = 1 | (2u << 8);
			} else {
				e->eax = e->ebx = 0;
				e->ecx = e->index;
			}
			e->edx = id;
			break;
		}
	}
}

/* ---- creation ------------------------------------------------------ */

static void kick_handler(int sig)
{
	(void)sig;
}

int cpu_create_all(struct vm *vm, mig_error *err)
{
	struct kvm_cpuid2 *sup, *c = NULL;
	struct sigaction sa;
	size_t csize;
	int mmap_size, r;
	bool tsc_deadline = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION,
				  KVM_CAP_TSC_DEADLINE_TIMER) > 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIG_KICK, &sa, NULL);

	mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run))
		return vmm_err(err, -errno, "KVM_GET_VCPU_MMAP_SIZE: %s",
			       strerror(errno));
	sup = supported_cpuid(vm->kvm_fd, err);
	if (!sup)
		return err ? err->code : -ENOMEM;
	csize = sizeof(*sup) + sup->nent * sizeof(sup->entries[0]);
	c = malloc(csize);
	if (!c) {
		free(sup);
		return vmm_err(err, -ENOMEM, "CPUID: out of memory");
	}
	/* The fingerprint a destination compares: vCPU 0's CPUID. */
	memcpy(c, sup, csize);
	cpuid_for_vcpu(c, 0, vm->cfg.cpus, tsc_deadline);
	vm->cpuid = c;
	vm->cpuid_len = csize;

	for (uint32_t i = 0; i < vm->cfg.cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		struct kvm_cpuid2 *mine;

		v->vm = vm;
		v->index = i;
		v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (v->fd < 0) {
			r = vmm_err(err, -errno, "KVM_CREATE_VCPU %u: %s", i,
				    strerror(errno));
			goto fail;
		}
		vm->nr_vcpus = i + 1;
		mine = malloc(csize);
		if (!mine) {
			r = vmm_err(err, -ENOMEM, "CPUID: out of memory");
			goto fail;
		}
		memcpy(mine, sup, csize);
		cpuid_for_vcpu(mine, i, vm->cfg.cpus, tsc_deadline);
		r = ioctl(v->fd, KVM_SET_CPUID2, mine);
		free(mine);
		if (r < 0) {
			r = vmm_err(err, -errno, "KVM_SET_CPUID2 (vCPU %u): %s",
				    i, strerror(errno));
			goto fail;
		}
		v->run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE,
			      MAP_SHARED, v->fd, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			r = vmm_err(err, -errno, "mmap kvm_run (vCPU %u): %s",
				    i, strerror(errno));
			goto fail;
		}
		v->run_size = (size_t)mmap_size;
	}
	free(sup);
	/* A migration's first vCPU save or load asks KVM which MSRs and
	 * which state ioctls it has (about five ioctls, cached per
	 * process): ask now, before any vCPU runs, and not in the downtime.
	 * Only an optimisation: the save or load reports its own failure. */
	(void)mig_x86_msr_list(vm->kvm_fd, vm->vcpus[0].fd, NULL, 0,
			       &(mig_error){ 0 });
	return 0;
fail:
	free(sup);
	cpu_destroy_all(vm);
	return r;
}

void cpu_destroy_all(struct vm *vm)
{
	for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		if (v->run)
			munmap(v->run, v->run_size);
		v->run = NULL;
		if (v->fd >= 0)
			close(v->fd);
		v->fd = -1;
	}
	vm->nr_vcpus = 0;
	free(vm->cpuid);
	vm->cpuid = NULL;
}

/* ---- failure reports ----------------------------------------------- */

/*
 * The state KVM gives a vCPU on INIT: real mode at the reset vector. A PVH
 * guest never runs there (no firmware answers at 0xfffffff0), so a vCPU
 * found in it after a shutdown was put there by KVM, not by the guest.
 */
static bool in_init_state(const struct kvm_regs *r, const struct kvm_sregs *s)
{
	return r->rip == 0xfff0 && s->cs.selector == 0xf000 &&
	       s->cs.base == 0xffff0000 && !(s->cr0 & 1 /* PE */);
}

/*
 * `shutdown`: after KVM_EXIT_SHUTDOWN. The registers are the triple fault's
 * on Intel VMX (and PVM), and wherever KVM raised the triple fault itself,
 * but not when AMD SVM hardware shut the guest down: the VMCB is undefined
 * after a shutdown intercept, so KVM re-initialises the vCPU (an INIT)
 * before it returns, and what reads back is the INIT state (rip fff0, cs
 * f000 base ffff0000, rax 0). Printed as the fault's registers it looked
 * like a guest that had been reset, or had jumped to the reset vector.
 */
static void report_regs(struct vcpu *v, bool shutdown)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 ||
	    ioctl(v->fd, KVM_GET_SREGS, &s) < 0) {
		fprintf(stderr, "migvm: vCPU %u: registers unreadable: %s\n",
			v->index, strerror(errno));
		return;
	}
	if (shutdown && in_init_state(&r, &s)) {
		fprintf(stderr, "migvm: vCPU %u: registers at the triple fault "
			"are lost: KVM re-initialised the vCPU when the guest "
			"shut down (it does so on AMD SVM, where the VMCB is "
			"undefined after a shutdown); the vCPU is in its INIT "
			"state now (rip fff0, cs f000)\n", v->index);
		return;
	}
	fprintf(stderr,
		"migvm: vCPU %u registers:\n"
		"  rip %016llx rsp %016llx rflags %08llx\n"
		"  rax %016llx rbx %016llx rcx %016llx rdx %016llx\n"
		"  rsi %016llx rdi %016llx rbp %016llx\n"
		"  cr0 %016llx cr2 %016llx cr3 %016llx cr4 %016llx efer %llx\n"
		"  cs %04x base %llx dpl %u l %u db %u  ss %04x  tr %04x\n",
		v->index, r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx,
		r.rsi, r.rdi, r.rbp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
		s.cs.selector, s.cs.base, s.cs.dpl, s.cs.l, s.cs.db,
		s.ss.selector, s.tr.selector);
}

/* ---- the run loop -------------------------------------------------- */

static void handle_io(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool write = run->io.direction == KVM_EXIT_IO_OUT;
	uint16_t port = run->io.port;

	for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
		if (port >= PORT_COM1 && port < PORT_COM1 + 8) {
			serial_io(v->vm, port, write, data);
			/* wider accesses: the other bytes read as 0xff */
			if (!write && run->io.size > 1)
				memset(data + 1, 0xff, run->io.size - 1u);
		} else if (port == PORT_EXIT && write) {
			vm_request_exit(v->vm, data[0], "the guest wrote "
					"status %u to the exit port", data[0]);
			return;
		} else if (port >= ACPI_PM1_EVT_PORT &&
			   port < ACPI_PM1_EVT_PORT + ACPI_PM_PORTS) {
			/* One call for the access's width: PM1 registers
			 * are 16 bits wide, SLP_EN in the high byte. */
			if (acpi_pm_io(&v->vm->acpi_pm, port, write, data,
				       run->io.size) == ACPI_EVENT_POWER_OFF) {
				vm_guest_ended(v->vm, "vCPU %u: the guest "
					       "powered off (ACPI S5)",
					       v->index);
				return;
			}
			continue;
		} else if (port == ACPI_RESET_PORT) {
			if (acpi_reset_io(write, data, run->io.size) ==
			    ACPI_EVENT_RESET) {
				vm_guest_ended(v->vm, "vCPU %u: the guest reset "
					       "the machine (ACPI reset "
					       "register 0x%x): VM ended, not "
					       "restarted", v->index,
					       ACPI_RESET_PORT);
				return;
			}
			continue;
		} else if (port == PORT_I8042_CMD && write &&
			   data[0] == I8042_CMD_RESET) {
			/* A reboot. migvm does not restart a guest: it ends,
			 * cleanly, as QEMU with -no-reboot and Firecracker
			 * do. Reads of the i8042 stay 0xff (no controller:
			 * Linux's boot probe gives up at once). */
			vm_guest_ended(v->vm, "vCPU %u: the guest reset the "
				       "machine (i8042 reset line): VM ended, "
				       "not restarted", v->index);
			return;
		} else if (!write) {
			memset(data, 0xff, run->io.size);
		}
	}
}

static void handle_mmio(struct vcpu *v)
{
	struct kvm_run *run = v->run;

	if (!run->mmio.is_write)
		memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
}

/* Handle one exit. Returns false when the vCPU must stop. */
static bool handle_exit(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	struct vm *vm = v->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		handle_io(v);
		v->pending_op = true;
		return true;
	case KVM_EXIT_MMIO:
		handle_mmio(v);
		v->pending_op = true;
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_DIRTY_RING_FULL: {
		/* The migration collects the ring; then the vCPU goes on. */
		int r = mig_dirty_ring_full(vm->vm_fd, v->fd);
		if (r < 0) {
			vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: dirty "
					"ring full and not emptied: %s",
					v->index, mig_strerror(r));
			return false;
		}
		return true;
	}
	case KVM_EXIT_HLT:
		/* With the in-kernel LAPIC KVM handles HLT; seeing it means
		 * the guest halted for good. */
		vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u halted "
				"(KVM_EXIT_HLT)", v->index);
		return false;
	case KVM_EXIT_SHUTDOWN:
		report_regs(v, true);
		vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: guest shut "
				"down (triple fault, KVM_EXIT_SHUTDOWN)",
				v->index);
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		report_regs(v, false);
		vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: KVM_EXIT_FAIL"
				"_ENTRY, hardware reason 0x%llx", v->index,
				(unsigned long long)run->fail_entry
					.hardware_entry_failure_reason);
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		report_regs(v, false);
		vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: KVM_EXIT_"
				"INTERNAL_ERROR, suberror %u", v->index,
				run->internal.suberror);
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		switch (run->system_event.type) {
		case KVM_SYSTEM_EVENT_SHUTDOWN:
			vm_guest_ended(vm, "vCPU %u: the guest powered off",
				       v->index);
			break;
		case KVM_SYSTEM_EVENT_RESET:
			vm_guest_ended(vm, "vCPU %u: the guest reset the "
				       "machine (KVM system event): VM ended, "
				       "not restarted", v->index);
			break;
		default:
			report_regs(v, false);
			vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: system "
					"event %u", v->index,
					run->system_event.type);
		}
		return false;
	default:
		report_regs(v, false);
		vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: unexpected "
				"exit reason %u", v->index, run->exit_reason);
		return false;
	}
}

/*
 * Throttling (auto-converge): a thread kicks every vCPU once per period
 * (timeslice / (1 - pct)) and each kicked vCPU stays out of the guest for
 * pct% of the time, as QEMU's cpu-throttle does. The wait ends early for a
 * pause or a stop. The timeslice is 2 ms, not QEMU's 10: the last pre-copy
 * rounds last 10-50 ms, and a 50 ms period at 80% would leave a round
 * throttled or not by chance.
 *
 * The sleep is sized by how long the vCPU actually ran since its last one,
 * not by the nominal period: on a busy host the kicking thread wakes late,
 * and a fixed sleep after each late kick left a "90%" throttle running the
 * guest at half speed instead of a tenth.
 */
#define THROTTLE_TIMESLICE_NS 2000000ull
#define THROTTLE_MAX_RAN_NS (4 * THROTTLE_TIMESLICE_NS)

static void throttle_sleep(struct vcpu *v)
{
	struct vm *vm = v->vm;
	uint64_t now, ran, end;

	pthread_mutex_lock(&vm->lock);
	if (!v->throttle_due || !vm->throttle_pct) {
		v->throttle_due = false;
		pthread_mutex_unlock(&vm->lock);
		return;
	}
	v->throttle_due = false;
	now = now_ns();
	/* First sleep since a pause or since throttling began: one
	 * timeslice's worth. A kick that came very late counts as a bounded
	 * run, so one sleep never outlasts a few periods. */
	ran = v->throttle_ran_from ? now - v->throttle_ran_from
				   : THROTTLE_TIMESLICE_NS;
	if (ran > THROTTLE_MAX_RAN_NS)
		ran = THROTTLE_MAX_RAN_NS;
	end = now + ran * vm->throttle_pct / (100 - vm->throttle_pct);
	while (!vm->pause_req && !vm->stopping && vm->throttle_pct) {
		struct timespec ts = { (time_t)(end / 1000000000ull),
				       (long)(end % 1000000000ull) };
		if (pthread_cond_timedwait(&vm->cond, &vm->lock, &ts) ==
		    ETIMEDOUT)
			break;
	}
	v->throttle_ran_from = now_ns();
	pthread_mutex_unlock(&vm->lock);
}

static void *throttle_thread(void *arg)
{
	struct vm *vm = arg;

	pthread_mutex_lock(&vm->lock);
	while (vm->throttle_pct && !vm->stopping) {
		uint64_t t = now_ns() + THROTTLE_TIMESLICE_NS * 100 /
				       (100 - vm->throttle_pct);
		struct timespec ts = { (time_t)(t / 1000000000ull),
				       (long)(t % 1000000000ull) };
		if (pthread_cond_timedwait(&vm->cond, &vm->lock, &ts) !=
		    ETIMEDOUT)
			continue; /* woken: settings changed */
		if (!vm->throttle_pct || vm->stopping || vm->pause_req)
			continue;
		for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
			struct vcpu *v = &vm->vcpus[i];
			if (!v->started)
				continue;
			v->throttle_due = true;
			v->run->immediate_exit = 1;
			pthread_kill(v->thread, SIG_KICK);
		}
	}
	vm->throttle_running = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

int vm_set_throttle(struct vm *vm, unsigned int pct, mig_error *err)
{
	int r = 0;

	if (pct > 99)
		return vmm_err(err, -EINVAL, "throttle %u%%: at most 99", pct);
	pthread_mutex_lock(&vm->lock);
	if (!vm->throttle_pct) /* a run counts from now, not the last sleep */
		for (uint32_t i = 0; i < vm->nr_vcpus; i++)
			vm->vcpus[i].throttle_ran_from = 0;
	vm->throttle_pct = pct;
	pthread_cond_broadcast(&vm->cond);
	if (pct && !vm->throttle_running && !vm->stopping) {
		if (vm->throttle_joinable) {
			pthread_mutex_unlock(&vm->lock);
			pthread_join(vm->throttle_tid, NULL);
			pthread_mutex_lock(&vm->lock);
			vm->throttle_joinable = false;
		}
		r = pthread_create(&vm->throttle_tid, NULL, throttle_thread, vm);
		if (r) {
			vm->throttle_pct = 0;
			r = vmm_err(err, -r, "throttle thread: %s", strerror(r));
		} else {
			vm->throttle_running = vm->throttle_joinable = true;
		}
	}
	pthread_mutex_unlock(&vm->lock);
	return r;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;
	char name[16];
	sigset_t set;

	snprintf(name, sizeof(name), "vcpu%u", v->index);
	pthread_setname_np(pthread_self(), name);
	sigemptyset(&set);
	sigaddset(&set, SIG_KICK);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	for (;;) {
		int r;

		pthread_mutex_lock(&vm->lock);
		if (!v->pending_op) {
			if (vm->pause_req && !vm->stopping) {
				/* Tell the pauser on its own condition: a
				 * broadcast on `cond` would wake the other
				 * parked vCPUs, whose broadcast would wake
				 * this one, and so on for the whole pause. */
				vm->nr_parked++;
				pthread_cond_broadcast(&vm->parked);
				while (vm->pause_req && !vm->stopping)
					pthread_cond_wait(&vm->cond, &vm->lock);
				vm->nr_parked--;
				v->throttle_ran_from = 0;
				/* As QEMU does whenever a VM starts: tell a
				 * kvmclock guest it was stopped
				 * (PVCLOCK_GUEST_STOPPED), so that its
				 * soft-lockup watchdog does not count the
				 * pause. On the vCPU's own fd, out of
				 * KVM_RUN: it cannot block. EINVAL: no
				 * kvmclock in the guest (the test guest). */
				(void)ioctl(v->fd, KVM_KVMCLOCK_CTRL, 0);
			}
		}
		if (vm->stopping) {
			pthread_mutex_unlock(&vm->lock);
			break;
		}
		v->run->immediate_exit = vm->pause_req;
		pthread_mutex_unlock(&vm->lock);

		r = ioctl(v->fd, KVM_RUN, 0);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				v->pending_op = false;
				throttle_sleep(v);
				continue;
			}
			report_regs(v, false);
			vm_request_exit(vm, MIGVM_EXIT_ERROR, "vCPU %u: KVM_RUN: "
					"%s", v->index, strerror(errno));
			break;
		}
		v->pending_op = false;
		if (!handle_exit(v))
			break;
	}

	pthread_mutex_lock(&vm->lock);
	vm->nr_parked++; /* an ended thread counts as parked for good */
	pthread_cond_broadcast(&vm->cond);
	pthread_cond_broadcast(&vm->parked);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

/* ---- run control --------------------------------------------------- */

/* Kick every started vCPU out of KVM_RUN. Called with vm->lock held. */
static void kick_all(struct vm *vm)
{
	for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		if (!v->started)
			continue;
		v->run->immediate_exit = 1;
		pthread_kill(v->thread, SIG_KICK);
	}
}

int vm_start(struct vm *vm, mig_error *err)
{
	sigset_t set, old;
	int r = 0;

	/* vCPU threads inherit a mask with SIGINT/SIGTERM blocked (main
	 * reads them from a signalfd); they unblock SIG_KICK themselves. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIG_KICK);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	pthread_mutex_lock(&vm->lock);
	for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		r = pthread_create(&v->thread, NULL, vcpu_thread, v);
		if (r) {
			r = vmm_err(err, -r, "vCPU %u: pthread_create: %s", i,
				    strerror(r));
			vm->stopping = true;
			break;
		}
		v->started = true;
		vm->nr_threads++;
	}
	pthread_mutex_unlock(&vm->lock);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0)
		vm_stop(vm);
	return r;
}

int vm_pause(struct vm *vm, mig_error *err)
{
	uint64_t deadline = now_ns() + PAUSE_TIMEOUT_NS, next_kick = 0;
	int r = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->pause_depth++ > 0)
		goto out;
	vm->pause_req = true;
	/* A vCPU sleeping off its throttle share waits on `cond`, which a
	 * kick does not interrupt: wake it, or the pause (and a migration's
	 * downtime) would wait for the rest of its sleep: up to
	 * THROTTLE_MAX_RAN_NS times pct / (100 - pct), 8 ms at a 50%
	 * throttle and 0.8 s at 99%. */
	pthread_cond_broadcast(&vm->cond);
	while (vm->nr_parked < vm->nr_threads) {
		struct timespec ts;
		uint64_t t = now_ns();

		if (t >= deadline) {
			vm->pause_depth--;
			vm->pause_req = false;
			pthread_cond_broadcast(&vm->cond);
			r = vmm_err(err, -ETIMEDOUT, "pause: %u of %u vCPUs did "
				    "not stop within 5 s",
				    vm->nr_threads - vm->nr_parked,
				    vm->nr_threads);
			goto out;
		}
		/* Kick once, and again every 50 ms: a signal can land just
		 * before a thread blocks in a system call that restarts. Not
		 * each time one parks: that would interrupt the parked ones
		 * and the pauser again, all of it downtime. */
		if (t >= next_kick) {
			kick_all(vm);
			next_kick = t + KICK_AGAIN_NS;
		}
		ts.tv_sec = (time_t)(next_kick / 1000000000ull);
		ts.tv_nsec = (long)(next_kick % 1000000000ull);
		pthread_cond_timedwait(&vm->parked, &vm->lock, &ts);
	}
out:
	pthread_mutex_unlock(&vm->lock);
	return r;
}

int vm_resume(struct vm *vm, mig_error *err)
{
	int r = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->pause_depth == 0) {
		r = vmm_err(err, -EINVAL, "resume: the VM is not paused");
	} else if (--vm->pause_depth == 0) {
		vm->pause_req = false;
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
	return r;
}

bool vm_is_paused(struct vm *vm)
{
	bool p;

	pthread_mutex_lock(&vm->lock);
	p = vm->pause_depth > 0;
	pthread_mutex_unlock(&vm->lock);
	return p;
}

enum run_state vm_run_state(struct vm *vm)
{
	enum run_state s;

	pthread_mutex_lock(&vm->lock);
	if (vm->stopping)
		s = RUN_STOPPING;
	else if (vm->pause_depth)
		s = RUN_PAUSED;
	else if (vm->nr_threads)
		s = RUN_RUNNING;
	else
		s = RUN_STARTING;
	pthread_mutex_unlock(&vm->lock);
	return s;
}

static void request_exit(struct vm *vm, int code, bool told, const char *fmt,
			 va_list ap)
{
	uint64_t one = 1;

	pthread_mutex_lock(&vm->lock);
	if (!vm->exit_set) {
		vm->exit_set = true;
		vm->exit_code = code;
		vm->exit_told = told;
		vsnprintf(vm->exit_reason, sizeof(vm->exit_reason), fmt, ap);
	}
	vm->stopping = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	if (vm->event_fd >= 0 &&
	    write(vm->event_fd, &one, sizeof(one)) != sizeof(one)) {
		/* the counter cannot overflow from these few writes */
	}
}

void vm_request_exit(struct vm *vm, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	request_exit(vm, code, false, fmt, ap);
	va_end(ap);
}

void vm_guest_ended(struct vm *vm, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	request_exit(vm, MIGVM_EXIT_OK, true, fmt, ap);
	va_end(ap);
}

/* With vm->stopping set and vm->lock held: wait until every started vCPU
 * thread has ended (or is parked, and then ends once woken), kicking them
 * every KICK_AGAIN_NS. */
static void stop_and_wait(struct vm *vm)
{
	uint64_t t0 = now_ns(), next_kick = 0;
	bool told = false;

	while (vm->nr_parked < vm->nr_threads) {
		struct timespec ts;
		uint64_t t = now_ns();

		/* Again and again, as vm_pause() does: one kick can miss a
		 * thread (a signal that lands before it blocks in a call
		 * that restarts), and the VM must end all the same. */
		if (t >= next_kick) {
			kick_all(vm);
			next_kick = t + KICK_AGAIN_NS;
		}
		if (!told && t - t0 >= STOP_SLOW_NS) {
			fprintf(stderr, "migvm: %u of %u vCPU threads still run "
				"%llu s after the VM stopped; kicking them every "
				"%llu ms\n", vm->nr_threads - vm->nr_parked,
				vm->nr_threads, STOP_SLOW_NS / 1000000000ull,
				KICK_AGAIN_NS / 1000000ull);
			told = true;
		}
		ts.tv_sec = (time_t)(next_kick / 1000000000ull);
		ts.tv_nsec = (long)(next_kick % 1000000000ull);
		pthread_cond_timedwait(&vm->parked, &vm->lock, &ts);
	}
}

void vm_stop(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->stopping = true;
	pthread_cond_broadcast(&vm->cond);
	stop_and_wait(vm);
	pthread_mutex_unlock(&vm->lock);
	if (vm->throttle_joinable) {
		pthread_join(vm->throttle_tid, NULL);
		vm->throttle_joinable = false;
	}
	for (uint32_t i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		if (!v->started)
			continue;
		/* A thread blocked in KVM_RUN when the first kick landed
		 * just before it entered still sees immediate_exit. */
		pthread_join(v->thread, NULL);
		pthread_mutex_lock(&vm->lock);
		v->started = false;
		vm->nr_threads--;
		vm->nr_parked--;
		pthread_mutex_unlock(&vm->lock);
	}
}
