/* tvm: a tiny KVM VM for tests. See tvm.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tvm.h"

/*
 * The guest, ring 3, 64-bit. In: rdi = base of this vCPU's part of the area,
 * rdx = its page count - 1 (a power of two - 1), rsi = writes per
 * iteration, r9 = xorshift64 state (non-zero), r8 = iteration (0), rbp = an
 * unbacked gpa, r10 = 0 for random pages, else sequential from r12. Per
 * iteration: r8++, then rsi times: next page p, store r8 at p's first 8
 * bytes and at a spot that moves with r8; then a store of r8 to (rbp) exits
 * to the host (KVM_EXIT_MMIO).
 * Only copied into guest memory, never run on the host.
 */
extern const unsigned char tvm_guest[], tvm_guest_end[];
__asm__(".pushsection .rodata\n"
	".globl tvm_guest\n"
	".globl tvm_guest_end\n"
	"tvm_guest:\n"
	"1:	inc %r8\n"
	"	mov %rsi, %rcx\n"
	"2:	test %r10, %r10\n"
	"	jz 3f\n"
	"	mov %r12, %rax\n"
	"	inc %r12\n"
	"	jmp 4f\n"
	"3:	mov %r9, %rax\n"
	"	shl $13, %rax\n"
	"	xor %rax, %r9\n"
	"	mov %r9, %rax\n"
	"	shr $7, %rax\n"
	"	xor %rax, %r9\n"
	"	mov %r9, %rax\n"
	"	shl $17, %rax\n"
	"	xor %rax, %r9\n"
	"	mov %r9, %rax\n"
	"4:	and %rdx, %rax\n"
	"	shl $12, %rax\n"
	"	add %rdi, %rax\n"
	"	mov %r8, (%rax)\n"
	"	mov %r8, %rbx\n"
	"	and $0x1f8, %rbx\n"
	"	mov %r8, 8(%rax,%rbx,4)\n"
	"	dec %rcx\n"
	"	jnz 2b\n"
	"	mov %r8, (%rbp)\n"
	"	jmp 1b\n"
	"tvm_guest_end:\n"
	".popsection\n");

#define PML4_GPA 0x1000u
#define PDPT_GPA 0x2000u
#define PD_GPA 0x3000u   /* 4 pages: 0..4 GiB in 2 MiB pages */
#define GDT_GPA 0x7000u
#define TSS_GPA 0x8000u
#define CODE_GPA 0x10000u

static int fail(char *why, size_t len, int err, const char *what)
{
	snprintf(why, len, "%s: %s", what, strerror(-err));
	return err;
}

/*
 * ioctl() again while it fails with EINTR; -errno on failure. KVM_CREATE_VM
 * registers an MMU notifier, which takes every lock of the process's
 * mappings and gives up with EINTR when a signal is pending, even one with
 * no handler: a test that stops and continues a child (SIGSTOP, SIGCONT)
 * while it sets up its VM sees that, as a VMM being signalled would. QEMU
 * retries KVM_CREATE_VM the same way. The other set-up calls are cheap to
 * treat alike; KVM_RUN has its own loop.
 */
static int kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int r;

	do
		r = ioctl(fd, req, arg);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

bool tvm_available(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static void build_low(uint8_t *low)
{
	uint64_t *pml4 = (uint64_t *)(low + PML4_GPA);
	uint64_t *pdpt = (uint64_t *)(low + PDPT_GPA);
	uint64_t *gdt = (uint64_t *)(low + GDT_GPA);

	pml4[0] = PDPT_GPA | 7; /* present, writable, user */
	for (uint64_t i = 0; i < 4; i++) {
		uint64_t *pd = (uint64_t *)(low + PD_GPA + i * 4096);
		pdpt[i] = (PD_GPA + i * 4096) | 7;
		for (uint64_t j = 0; j < 512; j++)
			pd[j] = (i << 30) | (j << 21) | 0x87; /* 2 MiB, user */
	}
	gdt[1] = 0x00af9b000000ffffull; /* 0x08 kernel code 64 */
	gdt[2] = 0x00cf93000000ffffull; /* 0x10 kernel data */
	gdt[3] = 0x00affb000000ffffull; /* 0x18 user code 64 */
	gdt[4] = 0x00cff3000000ffffull; /* 0x20 user data */
	gdt[5] = 0x00008b0000000067ull | ((uint64_t)TSS_GPA << 16); /* 0x28 */
	memcpy(low + CODE_GPA, tvm_guest, (size_t)(tvm_guest_end - tvm_guest));
}

static int setup_vcpu(struct tvm *t, uint32_t i, const struct tvm_opts *o)
{
	struct tvm_vcpu *v = &t->vcpu[i];
	uint64_t part = t->area_pages / t->nr_vcpus;
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = 0x1b, .type = 11,
		.present = 1, .dpl = 3, .s = 1, .l = 1, .g = 1,
	};
	struct kvm_segment data = {
		.base = 0, .limit = 0xffffffff, .selector = 0x23, .type = 3,
		.present = 1, .dpl = 3, .db = 1, .s = 1, .g = 1,
	};
	struct kvm_sregs s;
	struct kvm_regs r = { 0 };
	int e;

	if ((e = kvm_ioctl(v->fd, KVM_GET_SREGS, &s)) < 0)
		return e;
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.tr = (struct kvm_segment){ .base = TSS_GPA, .limit = 0x67,
				     .selector = 0x28, .type = 11,
				     .present = 1 };
	s.gdt.base = GDT_GPA;
	s.gdt.limit = 6 * 8 - 1;
	s.idt.base = 0;
	s.idt.limit = 0; /* any exception: triple fault, KVM_EXIT_SHUTDOWN */
	s.cr0 = 0x80050033; /* PG WP AM NE ET MP PE */
	s.cr3 = PML4_GPA;
	s.cr4 = 0x220;      /* PAE OSFXSR */
	s.efer = 0x500;     /* LME LMA */
	if ((e = kvm_ioctl(v->fd, KVM_SET_SREGS, &s)) < 0)
		return e;
	r.rip = CODE_GPA;
	r.rflags = 2;
	r.rdi = TVM_AREA_GPA + i * part * 4096;
	r.rdx = part - 1;
	r.rsi = o->writes_per_iter;
	r.r9 = (o->seed ? o->seed : 88172645463325252ull) * (2 * i + 1) | 1;
	r.rbp = TVM_MMIO_GPA;
	e = kvm_ioctl(v->fd, KVM_SET_REGS, &r);
	return e < 0 ? e : 0;
}

int tvm_create(struct tvm *t, const struct tvm_opts *o, char *why,
	       size_t why_len)
{
	struct kvm_userspace_memory_region m;
	mig_error err = { 0 };
	int r;

	memset(t, 0, sizeof(*t));
	t->kvm_fd = t->vm_fd = -1;
	t->area_pages = o->area_pages;
	t->nr_vcpus = o->nr_vcpus ? o->nr_vcpus : 1;
	if (t->nr_vcpus > TVM_MAX_VCPUS || !o->area_pages ||
	    (o->area_pages & (o->area_pages - 1)) ||
	    o->area_pages > (1u << 18) || o->area_pages < t->nr_vcpus)
		return fail(why, why_len, -EINVAL, "tvm options");
	t->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (t->kvm_fd < 0)
		return errno == ENOENT || errno == ENODEV || errno == EACCES ?
			77 : fail(why, why_len, -errno, "open /dev/kvm");
	t->vm_fd = kvm_ioctl(t->kvm_fd, KVM_CREATE_VM, 0);
	if (t->vm_fd < 0) {
		r = t->vm_fd;
		t->vm_fd = -1;
		return fail(why, why_len, r, "KVM_CREATE_VM");
	}
	r = kvm_ioctl(t->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (r <= 0)
		return fail(why, why_len, r < 0 ? r : -EINVAL,
			    "KVM_GET_VCPU_MMAP_SIZE");
	t->run_size = (size_t)r;

	t->low = mmap(NULL, TVM_LOW_SIZE, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	t->area = mmap(NULL, t->area_pages * 4096, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (t->low == MAP_FAILED || t->area == MAP_FAILED) {
		t->low = t->low == MAP_FAILED ? NULL : t->low;
		t->area = t->area == MAP_FAILED ? NULL : t->area;
		return fail(why, why_len, -ENOMEM, "mmap guest memory");
	}
	build_low(t->low);
	t->regions[0] = (mig_region){ .slot = 0, .gpa = 0,
				      .size = TVM_LOW_SIZE, .hva = t->low };
	t->regions[1] = (mig_region){ .slot = 1, .gpa = TVM_AREA_GPA,
				      .size = t->area_pages * 4096,
				      .hva = t->area };
	for (int i = 0; i < 2; i++) {
		m = (struct kvm_userspace_memory_region){
			.slot = t->regions[i].slot,
			.guest_phys_addr = t->regions[i].gpa,
			.memory_size = t->regions[i].size,
			.userspace_addr = (uintptr_t)t->regions[i].hva,
		};
		r = kvm_ioctl(t->vm_fd, KVM_SET_USER_MEMORY_REGION, &m);
		if (r < 0)
			return fail(why, why_len, r,
				    "KVM_SET_USER_MEMORY_REGION");
	}
	if (o->ring_entries) {
		r = mig_dirty_ring_enable(t->vm_fd, o->ring_entries, &err);
		if (r < 0) {
			snprintf(why, why_len, "mig_dirty_ring_enable: %s",
				 err.msg);
			return r;
		}
		t->ring_entries = r;
	}
	for (uint32_t i = 0; i < t->nr_vcpus; i++) {
		struct tvm_vcpu *v = &t->vcpu[i];
		v->fd = kvm_ioctl(t->vm_fd, KVM_CREATE_VCPU, (void *)(uintptr_t)i);
		if (v->fd < 0) {
			r = v->fd;
			v->fd = -1;
			return fail(why, why_len, r, "KVM_CREATE_VCPU");
		}
		t->vcpu_fds[i] = v->fd;
		v->run = mmap(NULL, t->run_size, PROT_READ | PROT_WRITE,
			      MAP_SHARED, v->fd, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			return fail(why, why_len, -errno, "mmap kvm_run");
		}
		r = setup_vcpu(t, i, o);
		if (r < 0)
			return fail(why, why_len, r, "vCPU registers");
	}
	return 0;
}

void tvm_destroy(struct tvm *t)
{
	if (t->threads)
		tvm_stop(t);
	if (t->ring_entries)
		mig_dirty_ring_forget(t->vm_fd);
	for (uint32_t i = 0; i < t->nr_vcpus; i++) {
		if (t->vcpu[i].run)
			munmap(t->vcpu[i].run, t->run_size);
		if (t->vcpu[i].fd > 0)
			close(t->vcpu[i].fd);
	}
	if (t->low)
		munmap(t->low, TVM_LOW_SIZE);
	if (t->area)
		munmap(t->area, t->area_pages * 4096);
	if (t->vm_fd >= 0)
		close(t->vm_fd);
	if (t->kvm_fd >= 0)
		close(t->kvm_fd);
	memset(t, 0, sizeof(*t));
	t->vm_fd = t->kvm_fd = -1;
}

static int vcpu_fail(struct tvm_vcpu *v, int err, const char *what,
		     unsigned long long a)
{
	if (!v->error) {
		__atomic_store_n(&v->error, err, __ATOMIC_RELAXED);
		snprintf(v->why, sizeof(v->why), "%s %#llx (%s)", what, a,
			 strerror(-err));
	}
	return err;
}

/* KVM_RUN until the guest's end-of-iteration MMIO write. */
static int run_iteration(struct tvm *t, struct tvm_vcpu *v)
{
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return vcpu_fail(v, -errno, "KVM_RUN: errno",
					 (unsigned long long)errno);
		}
		switch (v->run->exit_reason) {
		case KVM_EXIT_MMIO:
			if (v->run->mmio.phys_addr != TVM_MMIO_GPA)
				return vcpu_fail(v, -EIO, "MMIO at",
						 v->run->mmio.phys_addr);
			__atomic_store_n(&v->iter, v->iter + 1,
					 __ATOMIC_RELAXED);
			return 0;
		case KVM_EXIT_DIRTY_RING_FULL: {
			int r = mig_dirty_ring_full(t->vm_fd, v->fd);
			if (r < 0)
				return vcpu_fail(v, r,
						 "mig_dirty_ring_full",
						 (unsigned long long)-r);
			__atomic_store_n(&v->ring_full, v->ring_full + 1,
					 __ATOMIC_RELAXED);
			break;
		}
		default:
			return vcpu_fail(v, -EIO, "unexpected exit",
					 v->run->exit_reason);
		}
	}
}

int tvm_set_workload(struct tvm *t, uint32_t i, uint32_t writes,
		     bool sequential)
{
	struct kvm_regs r;
	int e = kvm_ioctl(t->vcpu[i].fd, KVM_GET_REGS, &r);

	if (e < 0)
		return e;
	r.rsi = writes;
	r.r10 = sequential;
	e = kvm_ioctl(t->vcpu[i].fd, KVM_SET_REGS, &r);
	return e < 0 ? e : 0;
}

int tvm_step(struct tvm *t, uint32_t i)
{
	return run_iteration(t, &t->vcpu[i]);
}

struct thread_arg {
	struct tvm *t;
	uint32_t i;
};
static struct thread_arg thread_args[TVM_MAX_VCPUS];

static void *vcpu_thread(void *p)
{
	struct thread_arg *a = p;

	while (!__atomic_load_n(&a->t->stop, __ATOMIC_ACQUIRE))
		if (run_iteration(a->t, &a->t->vcpu[a->i]) < 0)
			break;
	return NULL;
}

int tvm_start_threads(struct tvm *t)
{
	t->stop = 0;
	for (uint32_t i = 0; i < t->nr_vcpus; i++) {
		thread_args[i] = (struct thread_arg){ t, i };
		if (pthread_create(&t->vcpu[i].thread, NULL, vcpu_thread,
				   &thread_args[i]) != 0) {
			__atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
			while (i-- > 0)
				pthread_join(t->vcpu[i].thread, NULL);
			return -EAGAIN;
		}
	}
	t->threads = true;
	return 0;
}

int tvm_stop(struct tvm *t)
{
	int first = 0;

	__atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
	for (uint32_t i = 0; i < t->nr_vcpus && t->threads; i++) {
		pthread_join(t->vcpu[i].thread, NULL);
		if (t->vcpu[i].error && !first)
			first = t->vcpu[i].error;
	}
	t->threads = false;
	return first;
}

uint64_t tvm_iter(const struct tvm *t)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < t->nr_vcpus; i++)
		n += __atomic_load_n(&t->vcpu[i].iter, __ATOMIC_RELAXED);
	return n;
}

uint64_t tvm_iter_min(const struct tvm *t)
{
	uint64_t n = UINT64_MAX;

	for (uint32_t i = 0; i < t->nr_vcpus; i++) {
		uint64_t k = __atomic_load_n(&t->vcpu[i].iter, __ATOMIC_RELAXED);
		if (k < n)
			n = k;
	}
	return n;
}

bool tvm_failed(const struct tvm *t)
{
	for (uint32_t i = 0; i < t->nr_vcpus; i++)
		if (__atomic_load_n(&t->vcpu[i].error, __ATOMIC_RELAXED))
			return true;
	return false;
}

uint64_t tvm_ring_full(const struct tvm *t)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < t->nr_vcpus; i++)
		n += __atomic_load_n(&t->vcpu[i].ring_full, __ATOMIC_RELAXED);
	return n;
}
