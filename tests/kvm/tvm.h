/*
 * tvm: a tiny KVM VM for tests, in the spirit of the kernel's
 * dirty_log_test. Its guest is a few instructions of 64-bit ring-3 code (it
 * runs natively even where guest ring 0 is emulated) that, on every
 * iteration, writes the iteration number into pseudo-randomly chosen pages of
 * its own part of the test area, then stops with an MMIO write so that the
 * host can step it.
 *
 * Memory: slot 0 at gpa 0 (page tables, GDT, code; KVM writes the accessed
 * and dirty bits of the guest page tables there), slot 1 at TVM_AREA_GPA (the
 * area the guest dirties). Both are MAP_SHARED|MAP_ANONYMOUS, like migvm's.
 */
#ifndef TVM_H
#define TVM_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

#include <linux/kvm.h>

#include "migrate/migrate.h"

#define TVM_LOW_SIZE (2u << 20)
#define TVM_AREA_GPA 0x40000000ull
#define TVM_MMIO_GPA 0xc0000000ull
#define TVM_MAX_VCPUS 4

struct tvm_opts {
	uint64_t area_pages;     /* power of two, <= 1 GiB worth */
	uint32_t nr_vcpus;       /* 1..TVM_MAX_VCPUS; area split among them */
	uint32_t writes_per_iter;
	uint32_t ring_entries;   /* 0: no dirty ring, else enable this many */
	uint64_t seed;
};

struct tvm_vcpu {
	int fd;
	struct kvm_run *run;
	/* Written by the thread running the vCPU only; others read them
	 * with tvm_iter() and tvm_ring_full() while it runs. */
	uint64_t iter;           /* iterations completed */
	uint64_t ring_full;      /* KVM_EXIT_DIRTY_RING_FULL handled */
	pthread_t thread;
	int error;               /* first failure, as a negative errno */
	char why[160];
};

struct tvm {
	int kvm_fd, vm_fd;
	int ring_entries;        /* set by mig_dirty_ring_enable, or 0 */
	size_t run_size;
	uint8_t *low, *area;
	uint64_t area_pages;
	uint32_t nr_vcpus;
	struct tvm_vcpu vcpu[TVM_MAX_VCPUS];
	mig_region regions[2];
	int vcpu_fds[TVM_MAX_VCPUS];
	volatile int stop;       /* concurrent mode: leave at next iteration */
	bool threads;
};

/* 0, 77 if /dev/kvm is absent (skip), or a negative errno with `why`. */
int tvm_create(struct tvm *t, const struct tvm_opts *o, char *why,
	       size_t why_len);
void tvm_destroy(struct tvm *t);

/* Run vCPU i on this thread until it completes one more iteration. */
int tvm_step(struct tvm *t, uint32_t i);
/* Between steps: change vCPU i's writes per iteration, random or
 * sequential pages. */
int tvm_set_workload(struct tvm *t, uint32_t i, uint32_t writes,
		     bool sequential);
/* Run every vCPU in its own thread until tvm_stop(). */
int tvm_start_threads(struct tvm *t);
/* Stop the threads: on return every vCPU is out of KVM_RUN. First error. */
int tvm_stop(struct tvm *t);

/* Totals over every vCPU so far; callable while the threads run, to wait
 * for the guest's progress instead of guessing how fast it is. */
uint64_t tvm_iter(const struct tvm *t);
uint64_t tvm_ring_full(const struct tvm *t);
/* The fewest iterations any one vCPU has completed. */
uint64_t tvm_iter_min(const struct tvm *t);
/* Has a vCPU thread stopped on an error (tvm_stop() says which)? */
bool tvm_failed(const struct tvm *t);

/* True if /dev/kvm can be opened. */
bool tvm_available(void);

#endif
