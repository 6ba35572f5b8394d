/*
 * Save and load the standard KVM x86 state, so that an embedding VMM does
 * not write it again. Included by <migrate/migrate.h>.
 *
 * A state is a "blob": a self-describing byte string (protobuf, see
 * proto/vmstate.proto) that the library allocates with malloc() and the
 * caller releases with mig_free(). Blobs are opaque to the VMM; it stores
 * them (e.g. with mig_state_add() as "x86.vm" and "x86.vcpu.<index>") and
 * hands them back to the matching *_load() on the destination.
 *
 * Loading never trusts a blob: every length is checked before use and a
 * truncated or corrupted blob gives -EBADMSG (undecodable), -EINVAL (an
 * item of the wrong size or value) or -EMSGSIZE (over MIG_X86_BLOB_MAX),
 * with err->msg naming the item. Nothing is applied to KVM before the whole
 * blob has been decoded and checked; if KVM then refuses an item, the vCPU
 * or VM is left partly loaded and should be discarded.
 *
 * Order on the destination, as for QEMU and Firecracker:
 *   1. create the VM with the same irqchip/PIT set-up, memory and vCPUs,
 *      and set each vCPU's CPUID (KVM_SET_CPUID2) as on the source;
 *   2. mig_x86_vm_load() (PIC, IOAPIC, PIT, kvmclock);
 *   3. mig_x86_vcpu_load() for every vCPU;
 *   4. run the vCPUs.
 * On the source, the vCPUs must be out of KVM_RUN and any I/O or MMIO exit
 * completed (re-enter KVM_RUN with kvm_run->immediate_exit set once after
 * handling an exit, see the KVM API doc) before mig_x86_vcpu_save(), and the
 * VM should be paused as a whole before mig_x86_vm_save().
 *
 * The file descriptors are the caller's: the library neither closes them
 * nor keeps them after the call returns.
 */
#ifndef MIGRATE_KVM_X86_H
#define MIGRATE_KVM_X86_H

#include <stddef.h>
#include <stdint.h>

#include "migrate/migrate.h" /* MIG_API, mig_error */

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the blobs these helpers write (X86Vcpu/X86Vm.version). */
#define MIG_X86_STATE_VERSION 1

/* Most bytes a vCPU or VM blob may have; longer blobs are refused. */
#define MIG_X86_BLOB_MAX (1u << 20)

/* Release a buffer the library allocated for the caller; NULL is fine. */
MIG_API void mig_free(void *p);

/*
 * Save one vCPU: general and segment registers (sregs2 with PDPTRs when the
 * kernel has KVM_CAP_SREGS2, sregs always), FPU/XSAVE (KVM_GET_XSAVE2 at the
 * size KVM_CAP_XSAVE2 reports), XCRs, the MSRs of KVM_GET_MSR_INDEX_LIST that
 * KVM_GET_MSRS accepts on this vCPU (TSC, TSC_ADJUST, TSC_DEADLINE, kvmclock
 * included), LAPIC (when in-kernel), MP state, pending events, debug
 * registers and the TSC frequency. `kvm_fd` is the /dev/kvm fd, `vcpu_fd` a
 * vCPU that is not in KVM_RUN. The MP state is read first: KVM then
 * delivers an INIT or SIPI still pending in the vCPU's LAPIC (as its next
 * KVM_RUN would), so the blob holds the vCPU as it is after them, never
 * registers from before an INIT with an MP state from after it; the vCPU
 * itself is left in that state too. On success returns 0 and sets *blob
 * (malloc'd, release with mig_free()) and *len; on failure returns a
 * negative errno, fills `err` (naming the ioctl) and leaves *blob NULL.
 */
MIG_API int mig_x86_vcpu_save(int kvm_fd, int vcpu_fd, void **blob,
			      size_t *len, mig_error *err);

/*
 * Load a blob made by mig_x86_vcpu_save() into `vcpu_fd` (whose CPUID is
 * already set). The TSC frequency is set with KVM_SET_TSC_KHZ when it differs
 * from the vCPU's; -ENOTSUP if KVM cannot run it (see
 * mig_x86_vcpu_load_tsc() for the alternative). Order inside, as KVM
 * needs it: sregs, regs, XCRs, XSAVE, LAPIC, MSRs (TSC_ADJUST before TSC,
 * TSC_DEADLINE last: KVM ignores it unless the LAPIC is already in
 * TSC-deadline mode and the TSC set), vCPU events (with them an INIT the
 * source held latched), MP state (KVM checks it against the events), debug
 * registers.
 * Load the vCPUs of a VM close together: KVM gives them one TSC offset (a
 * synchronized TSC, kvmclock's master clock) only when each vCPU's TSC
 * write lands within about a second of the one before it
 * (kvm_synchronize_tsc); migvm loads them all again, back to back, when
 * its early loads spanned more than half a second.
 * Returns 0, -EBADMSG / -EINVAL for a bad blob (nothing applied), -ENOTSUP
 * for state this kernel cannot take (an MSR it does not list, XSAVE larger
 * than it supports), or the errno of the failing ioctl; err names the item.
 */
MIG_API int mig_x86_vcpu_load(int kvm_fd, int vcpu_fd, const void *blob,
			      size_t len, mig_error *err);

/*
 * What mig_x86_vcpu_load_tsc() does when KVM cannot run the saved TSC rate
 * on this vCPU (no TSC scaling, and the saved rate is below this host's:
 * KVM emulates a faster TSC but not a slower one).
 *   MIG_X86_TSC_STRICT  fail with -ENOTSUP, nothing applied (what
 *                       mig_x86_vcpu_load() does): for a rate the user
 *                       asked for explicitly.
 *   MIG_X86_TSC_HOST    go on at this vCPU's own rate and report both in
 *                       *tsc, as QEMU does (with a warning) for a rate it
 *                       merely carried over. kvmclock stays right (KVM
 *                       computes it from the real rate); a guest that
 *                       counts raw TSC ticks runs its clock off by the
 *                       difference until it recalibrates. The caller
 *                       should tell the user.
 */
typedef enum mig_x86_tsc_policy {
	MIG_X86_TSC_STRICT = 0,
	MIG_X86_TSC_HOST = 1,
} mig_x86_tsc_policy;

typedef struct mig_x86_tsc_info {
	uint32_t saved_khz; /* the rate in the blob; 0: none saved */
	uint32_t khz;       /* the rate the vCPU runs at now; 0: not known */
} mig_x86_tsc_info;

/*
 * mig_x86_vcpu_load() with a TSC policy; `tsc` (may be NULL) receives the
 * saved and the resulting rate, also on failure as far as known: a caller
 * warns when both are set and differ. Returns as mig_x86_vcpu_load(), and
 * -EINVAL for an unknown policy.
 */
MIG_API int mig_x86_vcpu_load_tsc(int kvm_fd, int vcpu_fd, const void *blob,
				  size_t len, mig_x86_tsc_policy policy,
				  mig_x86_tsc_info *tsc, mig_error *err);

/*
 * Save the VM-wide in-kernel devices of `vm_fd`: PIC master and slave and
 * IOAPIC (KVM_GET_IRQCHIP), PIT (KVM_GET_PIT2) and kvmclock (KVM_GET_CLOCK).
 * Devices the VM does not have (no KVM_CREATE_IRQCHIP / KVM_CREATE_PIT2) are
 * left out of the blob. Ownership of *blob as for mig_x86_vcpu_save().
 */
MIG_API int mig_x86_vm_save(int vm_fd, void **blob, size_t *len,
			    mig_error *err);

/*
 * Load a blob made by mig_x86_vm_save() into `vm_fd`, which must have the
 * same in-kernel devices. The kvmclock is set to the saved value, so guest
 * time does not jump by the time the VM spent stopped. Returns as
 * mig_x86_vcpu_load().
 */
MIG_API int mig_x86_vm_load(int vm_fd, const void *blob, size_t len,
			    mig_error *err);

/*
 * The MSR indices mig_x86_vcpu_save() would save for `vcpu_fd`: those of
 * KVM_GET_MSR_INDEX_LIST that KVM_GET_MSRS reads without error. Writes up to
 * `max` indices to `out` (may be NULL when max is 0) and returns how many
 * there are (which may exceed max), or a negative errno. What it asks the
 * host (the MSR index list, the KVM capabilities the save and load use) is
 * cached for the process: called once before the vCPUs run, it keeps
 * those questions out of a migration's downtime.
 */
MIG_API int mig_x86_msr_list(int kvm_fd, int vcpu_fd, uint32_t *out,
			     size_t max, mig_error *err);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATE_KVM_X86_H */
