/*
 * The KVM x86 state code's shared pieces (private): kvm_x86.c holds them
 * and the VM's state, kvm_x86_vcpu.c a vCPU's; see kvm_x86.h for the API.
 */
#ifndef MIG_KVM_X86_INT_H
#define MIG_KVM_X86_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <linux/kvm.h>

#include "internal.h"
#include "vmstate.pb-c.h"

#define MSR_IA32_TSC 0x00000010u
#define MSR_IA32_TSC_ADJUST 0x0000003bu
#define MSR_IA32_TSC_DEADLINE 0x000006e0u

/* More MSRs than any KVM lists; a blob with more is refused. */
#define X86_MSRS_MAX 1024u
/* KVM_GET_MSRS / KVM_SET_MSRS take fewer than 256 at a time (MAX_IO_MSRS). */
#define X86_MSRS_PER_IOCTL 255u
/* XSAVE areas are 4 KiB today and grow with AMX (11 KiB); leave room. */
#define X86_XSAVE_MAX (64u << 10)

/* A protobuf bytes field pointing at a KVM struct. */
#define BYTES(field, ptr, size) do {                    \
		(field).data = (uint8_t *)(ptr);        \
		(field).len = (size);                   \
	} while (0)

/* ioctl() retried on EINTR: the result, or -errno. */
int mig__x86_ioctl(int fd, unsigned long req, void *arg);
/* err = "<what>: <strerror(r)>"; returns r. */
int mig__x86_ioctl_err(mig_error *err, int r, const char *what);
/* KVM_CHECK_EXTENSION on /dev/kvm, the host-wide ones asked once. */
int mig__x86_host_cap(int kvm_fd, long cap);
/* KVM_GET_MSR_INDEX_LIST (asked once per process), malloc'd into *out. */
int mig__x86_msr_index_list(int kvm_fd, struct kvm_msr_list **out,
			    mig_error *err);
/* A zeroed kvm_msrs for n entries (nmsrs = n), NULL without memory. */
struct kvm_msrs *mig__x86_msrs_alloc(size_t n);
/* The listed MSRs that this vCPU accepts, malloc'd into *out. */
int mig__x86_msrs_read(int kvm_fd, int vcpu_fd, struct kvm_msrs **out,
		       mig_error *err);
/* Pack `msg` into a malloc'd blob of at most MIG_X86_BLOB_MAX bytes. */
int mig__x86_pack(const ProtobufCMessage *msg, void **blob, size_t *len,
		  mig_error *err);
/* Checks of a blob before and while it is decoded: an item of exactly
 * its KVM struct's size, a version this library reads, a blob's size. */
int mig__x86_check_item(const ProtobufCBinaryData *d, size_t want, bool required,
			const char *what, const char *blob, mig_error *err);
int mig__x86_check_version(uint32_t v, const char *blob, mig_error *err);
int mig__x86_check_blob(const void *blob, size_t len, const char *what,
			mig_error *err);

/*
 * The pure halves of mig_x86_vm_load() and mig_x86_vcpu_load_tsc(): decode
 * a blob and check all that the load then relies on, without KVM (so that
 * they are fuzzed alone). 0 and the message in *out (the caller frees it
 * with mig__state__x86_*__free_unpacked()), or *out = NULL and -EBADMSG
 * (empty or undecodable), -EMSGSIZE (over MIG_X86_BLOB_MAX) or -EINVAL
 * (a NULL blob, a version not in 1..MIG_X86_STATE_VERSION, or an item
 * below), with err->msg naming it.
 *
 * VM: "clock" present; "pit" absent or present; "pic_master", "pic_slave"
 * and "ioapic" all absent or all present with chip_id 0, 1, 2; each present
 * item exactly its KVM struct's size.
 */
int mig__x86_vm_decode(const void *blob, size_t len, Mig__State__X86Vm **out,
		       mig_error *err);
/*
 * vCPU: "regs", "sregs", "mp_state", "events" present; "sregs2", "fpu",
 * "xcrs", "lapic", "debugregs" absent or present; each present one exactly
 * its KVM struct's size; "xsave" or "fpu" present, "xsave" of
 * sizeof(struct kvm_xsave) to X86_XSAVE_MAX bytes; xcrs.nr_xcrs at most
 * KVM_MAX_XCRS; at most X86_MSRS_MAX MSRs, none twice (so at most one
 * TSC_DEADLINE); tsc_khz at most UINT32_MAX.
 */
int mig__x86_vcpu_decode(const void *blob, size_t len,
			 Mig__State__X86Vcpu **out, mig_error *err);

#endif /* MIG_KVM_X86_INT_H */
