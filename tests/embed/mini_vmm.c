/*
 * mini_vmm: the smallest VMM that embeds libmigrate, built outside the tree
 * against the installed library (pkg-config migrate) to prove the public API
 * is enough. Its guest is 37 bytes of real-mode code that rewrites 240 pages
 * with an iteration counter forever.
 *
 *   mini_vmm dest PORT TOKEN      wait for the VM, run it 1 s, check it
 *   mini_vmm source PORT TOKEN    boot the VM, run 1 s, migrate it to PORT
 *
 * Checks, printed as "ok ..." / "FAIL ...": on the destination the counter
 * keeps going from where the source stopped, and every data page holds the
 * current or the previous iteration, in order (no lost or stale page).
 *
 * On the source, a "device" thread also writes a page of guest memory from
 * the host all along (as device emulation or DMA would) and tells the
 * library with mig_mark_dirty(); ops->pause quiets it, after one last
 * write. KVM does not see those writes, so with MINI_NOMARK set (writes not
 * marked) the library's memory hash check must fail the migration.
 *
 * MINI_SLOW_SAVE_MS=N: the source's save_state takes N ms more, with the
 * VM paused. The destination prints the CPU time it used for the whole
 * migration ("dest cpu_ms") and from the switchover on ("dest
 * stopcopy_cpu_ms": the stop-and-copy, which the slow save lengthens, seen
 * through mig_dest_stats()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/kvm.h>
#include <migrate/migrate.h>

/* 64 MiB, most of it filled with host-written noise so that round 1 takes
 * long enough for the guest to dirty its pages again meanwhile. */
#define MEM_SIZE (64u << 20)
#define NOISE_GPA (2u << 20)
#define CODE_GPA 0x1000u
#define COUNTER_GPA 0x500u
#define FIRST_PAGE 0x10u
#define LAST_PAGE 0xffu
#define DEV_GPA 0x180000u   /* written by the host, not the guest */

/* See the file comment; assembled from:
 *   xor %ebx,%ebx; 1: inc %ebx; mov %ebx,0x500; mov $0x1000,%ax
 *   2: mov %ax,%es; mov %ebx,%es:0; mov %ebx,%es:0x7fc; add $0x100,%ax
 *   cmp $0,%ax; jne 2b; jmp 1b                                         */
static const unsigned char guest_code[] = {
	0x66, 0x31, 0xdb, 0x66, 0x43, 0x66, 0x89, 0x1e, 0x00, 0x05, 0xb8, 0x00,
	0x10, 0x8e, 0xc0, 0x26, 0x66, 0x89, 0x1e, 0x00, 0x00, 0x26, 0x66, 0x89,
	0x1e, 0xfc, 0x07, 0x05, 0x00, 0x01, 0x83, 0xf8, 0x00, 0x75, 0xea, 0xeb,
	0xde
};

struct vm {
	int kvm, fd, vcpu;
	struct kvm_run *run;
	uint8_t *mem;
	pthread_t thread;
	atomic_int want_pause;
	atomic_int paused;
	atomic_int quit;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* the device (source only) */
	pthread_t dev_thread;
	mig_source *_Atomic src;
	atomic_int dev_quiet;   /* asked by pause */
	atomic_int dev_idle;    /* acknowledged by the device thread */
	atomic_int dev_stop;
	atomic_int dev_mark_err;
	uint64_t dev_n;         /* the device's counter: its thread, or pause */
};

static void die(const char *what)
{
	fprintf(stderr, "FAIL %s: %s\n", what, strerror(errno));
	exit(1);
}

static void on_sig(int sig)
{
	(void)sig; /* only to knock the vCPU out of KVM_RUN */
}

static void *vcpu_main(void *arg)
{
	struct vm *vm = arg;
	for (;;) {
		pthread_mutex_lock(&vm->lock);
		while (atomic_load(&vm->want_pause) && !atomic_load(&vm->quit)) {
			atomic_store(&vm->paused, 1);
			pthread_cond_broadcast(&vm->cond);
			pthread_cond_wait(&vm->cond, &vm->lock);
		}
		atomic_store(&vm->paused, 0);
		pthread_mutex_unlock(&vm->lock);
		if (atomic_load(&vm->quit))
			return NULL;
		int r = ioctl(vm->vcpu, KVM_RUN, 0);
		vm->run->immediate_exit = 0;
		if (r < 0 && errno != EINTR && errno != EAGAIN) {
			perror("KVM_RUN");
			exit(1);
		}
		if (r == 0 && vm->run->exit_reason != KVM_EXIT_INTR) {
			fprintf(stderr, "FAIL unexpected exit %u\n", vm->run->exit_reason);
			exit(1);
		}
	}
}

/* One device write: the counter at both ends of DEV_GPA's page, then the
 * mark (skipped with MINI_NOMARK). */
static void dev_write(struct vm *vm)
{
	uint64_t n = ++vm->dev_n;

	memcpy(vm->mem + DEV_GPA, &n, sizeof(n));
	memcpy(vm->mem + DEV_GPA + 4096 - sizeof(n), &n, sizeof(n));
	mig_source *s = atomic_load(&vm->src);
	if (s && !getenv("MINI_NOMARK")) {
		int r = mig_mark_dirty(s, DEV_GPA, 4096);
		if (r < 0)
			atomic_store(&vm->dev_mark_err, r);
	}
}

/* The device: a write every ~100 us unless the VM is paused. */
static void *dev_main(void *arg)
{
	struct vm *vm = arg;

	while (!atomic_load(&vm->dev_stop)) {
		if (atomic_load(&vm->dev_quiet)) {
			atomic_store(&vm->dev_idle, 1);
			usleep(100);
			continue;
		}
		atomic_store(&vm->dev_idle, 0);
		if (atomic_load(&vm->dev_quiet))
			continue; /* pause came in between: recheck */
		dev_write(vm);
		usleep(100);
	}
	return NULL;
}

static void dev_quiet(struct vm *vm, int quiet)
{
	atomic_store(&vm->dev_quiet, quiet);
	while (quiet && vm->dev_thread && !atomic_load(&vm->dev_idle))
		usleep(20);
}

static int vm_pause(void *opaque, mig_error *err)
{
	struct vm *vm = opaque;
	(void)err;
	dev_quiet(vm, 1);
	/* Quieting completes what is in flight: one last write, which no
	 * round before this pause can have sent. */
	if (vm->dev_thread)
		dev_write(vm);
	pthread_mutex_lock(&vm->lock);
	atomic_store(&vm->want_pause, 1);
	while (!atomic_load(&vm->paused)) {
		vm->run->immediate_exit = 1;
		pthread_kill(vm->thread, SIGUSR1);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
	}
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int vm_resume(void *opaque, mig_error *err)
{
	struct vm *vm = opaque;
	(void)err;
	pthread_mutex_lock(&vm->lock);
	atomic_store(&vm->want_pause, 0);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	dev_quiet(vm, 0);
	return 0;
}

static int vm_save(void *opaque, mig_state *st, mig_error *err)
{
	struct vm *vm = opaque;
	const char *slow = getenv("MINI_SLOW_SAVE_MS");
	void *blob;
	size_t len;
	int r;

	/* A VMM whose save is slow, paused: the destination must not spin
	 * on a CPU all that time. */
	if (slow)
		usleep((useconds_t)atoi(slow) * 1000);
	r = mig_x86_vcpu_save(vm->kvm, vm->vcpu, &blob, &len, err);
	if (r < 0)
		return r;
	r = mig_state_add(st, "x86.vcpu.0", blob, len);
	mig_free(blob);
	if (r < 0)
		return r;
	if ((r = mig_x86_vm_save(vm->fd, &blob, &len, err)) < 0)
		return r;
	r = mig_state_add(st, "x86.vm", blob, len);
	mig_free(blob);
	return r;
}

static int vm_load(void *opaque, const mig_state *st, mig_error *err)
{
	struct vm *vm = opaque;
	const void *blob;
	size_t len;
	int r;
	if ((r = mig_state_get(st, "x86.vm", &blob, &len)) < 0 ||
	    (r = mig_x86_vm_load(vm->fd, blob, len, err)) < 0)
		return r;
	if ((r = mig_state_get(st, "x86.vcpu.0", &blob, &len)) < 0)
		return r;
	return mig_x86_vcpu_load(vm->kvm, vm->vcpu, blob, len, err);
}

static long cpu_ms(const struct timespec *a, const struct timespec *b)
{
	return (long)((b->tv_sec - a->tv_sec) * 1000 +
		      (b->tv_nsec - a->tv_nsec) / 1000000);
}

/* Destination side: the process CPU time when the stop-and-copy began, as
 * soon as mig_dest_stats() shows it (polled every 2 ms until then only). */
struct switch_watch {
	mig_dest *d;
	atomic_int stop, seen;
	struct timespec cpu;
};

static void *watch_main(void *arg)
{
	struct switch_watch *w = arg;
	mig_stats *st = calloc(1, sizeof(*st));

	while (st && !atomic_load(&w->stop)) {
		if (mig_dest_stats(w->d, st) == 0 &&
		    st->phase >= MIG_PHASE_STOPCOPY) {
			clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &w->cpu);
			atomic_store(&w->seen, 1);
			break;
		}
		usleep(2000);
	}
	free(st);
	return NULL;
}

static void log_cb(mig_log_level lvl, const char *msg, void *opaque)
{
	struct timespec ts;
	(void)opaque;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (lvl <= MIG_LOG_WARN || getenv("MINI_DEBUG"))
		fprintf(stderr, "[%ld.%06ld] libmigrate: %s\n", (long)ts.tv_sec,
			ts.tv_nsec / 1000, msg);
}

static const mig_vm_ops ops = {
	.pause = vm_pause,
	.resume = vm_resume,
	.save_state = vm_save,
	.load_state = vm_load,
};

static void vm_create(struct vm *vm, int boot)
{
	struct kvm_userspace_memory_region reg;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int sz;

	memset(vm, 0, sizeof(*vm));
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	if ((vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
		die("open /dev/kvm");
	if ((vm->fd = ioctl(vm->kvm, KVM_CREATE_VM, 0)) < 0)
		die("KVM_CREATE_VM");
	if (ioctl(vm->fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
		die("KVM_SET_TSS_ADDR");
	if (ioctl(vm->fd, KVM_CREATE_IRQCHIP, 0) < 0)
		die("KVM_CREATE_IRQCHIP");
	vm->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->mem == MAP_FAILED)
		die("mmap");
	reg = (struct kvm_userspace_memory_region){ 0, 0, 0, MEM_SIZE,
						    (uintptr_t)vm->mem };
	if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &reg) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	if ((vm->vcpu = ioctl(vm->fd, KVM_CREATE_VCPU, 0)) < 0)
		die("KVM_CREATE_VCPU");
	sz = ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	vm->run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED,
		       vm->vcpu, 0);
	if (vm->run == MAP_FAILED)
		die("mmap kvm_run");
	if (!boot)
		return;
	memcpy(vm->mem + CODE_GPA, guest_code, sizeof(guest_code));
	uint64_t x = 88172645463325252ull;
	for (uint64_t *w = (uint64_t *)(vm->mem + NOISE_GPA);
	     w < (uint64_t *)(vm->mem + MEM_SIZE); w++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		*w = x;
	}
	if (ioctl(vm->vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vm->vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA;
	regs.rflags = 2;
	if (ioctl(vm->vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
}

static void vm_start(struct vm *vm, int paused)
{
	atomic_store(&vm->want_pause, paused);
	if (pthread_create(&vm->thread, NULL, vcpu_main, vm))
		die("pthread_create");
}

static uint32_t rd32(const struct vm *vm, uint32_t gpa)
{
	uint32_t v;
	memcpy(&v, vm->mem + gpa, 4);
	return v;
}

/* The guest's own invariant, checked with the vCPU paused: pages already
 * written this iteration hold it, the rest the previous one. */
static int check_pages(const struct vm *vm, const char *when)
{
	uint32_t it = rd32(vm, COUNTER_GPA), prev = 0xffffffffu;
	for (uint32_t p = FIRST_PAGE; p <= LAST_PAGE; p++) {
		uint32_t a = rd32(vm, p * 4096), b = rd32(vm, p * 4096 + 0x7fc);
		int torn = a == it && b == it - 1; /* paused between the stores */
		if ((a != it && a != it - 1) || (a != b && !torn) || a > prev) {
			printf("FAIL %s: page 0x%x holds %u/%u, iteration %u\n",
			       when, p, a, b, it);
			return 1;
		}
		prev = a;
	}
	printf("ok %s: iteration %u, pages 0x%x..0x%x consistent\n", when, it,
	       FIRST_PAGE, LAST_PAGE);
	return 0;
}

static void vm_ids(struct vm *vm, mig_vm *out, mig_region *reg)
{
	*reg = (mig_region){ 0, 0, MEM_SIZE, vm->mem };
	memset(out, 0, sizeof(*out));
	out->vm_fd = vm->fd;
	out->regions = reg;
	out->nr_regions = 1;
	out->vcpu_fds = &vm->vcpu;
	out->nr_vcpus = 1;
	out->ops = &ops;
	out->opaque = vm;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_sig };
	char uri[64], json[65536];
	mig_error err = { 0 };
	mig_region reg;
	struct vm vm;
	mig_stats *st = calloc(1, sizeof(*st));

	if (argc != 4 || (strcmp(argv[1], "source") && strcmp(argv[1], "dest"))) {
		fprintf(stderr, "usage: mini_vmm source|dest PORT TOKEN\n");
		return 2;
	}
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		printf("skip: no /dev/kvm\n");
		return 77;
	}
	sigaction(SIGUSR1, &sa, NULL);
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%s", argv[2]);

	if (!strcmp(argv[1], "dest")) {
		mig_dest_config cfg = { 0 };
		mig_dest *d;
		vm_create(&vm, 0);
		vm_ids(&vm, &cfg.vm, &reg);
		cfg.uri = uri;
		cfg.token = argv[3];
		cfg.cb.log = log_cb;
		vm_start(&vm, 1);
		if (mig_dest_create(&d, &cfg, &err) < 0 || mig_dest_start(d, &err) < 0) {
			printf("FAIL dest: %s\n", err.msg);
			return 1;
		}
		printf("listening %d\n", mig_dest_port(d));
		fflush(stdout);
		struct timespec c0, c1;
		struct switch_watch w = { .d = d };
		pthread_t wt;
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
		if (pthread_create(&wt, NULL, watch_main, &w))
			die("pthread_create");
		int wr = mig_dest_wait(d, &err);
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
		atomic_store(&w.stop, 1);
		pthread_join(wt, NULL);
		if (wr < 0) {
			printf("FAIL dest: %s\n", err.msg);
			return 1;
		}
		printf("dest cpu_ms %ld\n", cpu_ms(&c0, &c1));
		if (atomic_load(&w.seen))
			printf("dest stopcopy_cpu_ms %ld\n", cpu_ms(&w.cpu, &c1));
		mig_dest_destroy(d);
		uint32_t at_resume = rd32(&vm, COUNTER_GPA);
		usleep(500000);
		vm_pause(&vm, &err);
		int bad = check_pages(&vm, "destination");
		uint32_t later = rd32(&vm, COUNTER_GPA);
		if (later <= at_resume) {
			printf("FAIL guest did not run after migration (%u -> %u)\n",
			       at_resume, later);
			bad = 1;
		} else {
			printf("ok guest ran on: iteration %u -> %u\n", at_resume, later);
		}
		return bad;
	}

	mig_source_config cfg = { 0 };
	mig_source *s;
	vm_create(&vm, 1);
	vm_ids(&vm, &cfg.vm, &reg);
	mig_params_init(&cfg.params);
	cfg.params.verify = getenv("MINI_NOVERIFY") ? 0 : 1;
	cfg.uri = uri;
	cfg.token = argv[3];
	cfg.cb.log = log_cb;
	vm_start(&vm, 0);
	usleep(500000);
	if (rd32(&vm, COUNTER_GPA) == 0) {
		printf("FAIL guest is not running\n");
		return 1;
	}
	if (mig_source_create(&s, &cfg, &err) < 0) {
		printf("FAIL source: %s\n", err.msg);
		return 1;
	}
	if (mig_mark_dirty(s, MEM_SIZE - 4096, 8192) != -EINVAL ||
	    mig_mark_dirty(s, 0, 0) != -EINVAL || mig_mark_dirty(s, 0, 4096) != 0) {
		printf("FAIL mig_mark_dirty: bad ranges not refused\n");
		return 1;
	}
	atomic_store(&vm.src, s);
	if (pthread_create(&vm.dev_thread, NULL, dev_main, &vm))
		die("pthread_create");
	if (mig_source_start(s, &err) < 0) {
		printf("FAIL source: %s\n", err.msg);
		return 1;
	}
	int r = mig_source_wait(s, &err);
	atomic_store(&vm.dev_stop, 1);
	pthread_join(vm.dev_thread, NULL);
	if (r == 0 && mig_mark_dirty(s, DEV_GPA, 4096) != -EBUSY) {
		printf("FAIL mig_mark_dirty after the last sync: not -EBUSY\n");
		return 1;
	}
	if (atomic_load(&vm.dev_mark_err)) {
		printf("FAIL mig_mark_dirty: %s while the device ran\n",
		       mig_strerror(atomic_load(&vm.dev_mark_err)));
		return 1;
	}
	mig_source_stats(s, st);
	mig_stats_json(st, &err, json, sizeof(json));
	printf("%s\n", json);
	mig_source_destroy(s);
	if (r < 0) {
		printf("FAIL source: %s\n", err.msg);
		return 1;
	}
	printf("ok migrated: %u rounds, downtime %.1f ms, total %.1f ms\n",
	       st->rounds, st->downtime_us / 1000.0, st->total_time_us / 1000.0);
	return 0;
}
