/*
 * migvm: the VM, its memory, vCPUs and devices. One subsystem per file, as
 * in kvmtool:
 *   kvm.c      VM set-up and tear-down (goto ladder), the VM-wide ioctls
 *   mem.c      guest RAM (memfd or shared anonymous), slots, gpa -> hva
 *   cpu.c      vCPUs: CPUID, threads, the run loop, pause/resume/stop
 *   pvh.c      PVH boot of ELF guests (hvm_start_info, BSP registers)
 *   mptable.c  the MP table that lists CPUs and IOAPIC for a guest
 *   serial.c   16550 UART and the console line scanner (hb, MISMATCH)
 *   state.c    everything but memory to/from named blobs (mig_state)
 *   snapfile.c the state file: header, VmSnapshot, sparse memory, CRCs
 *   control.c  the control socket server (framed control.proto)
 *   ctl.c      `migvm ctl`, the client
 *   util.c     errors, CRC32C, file helpers
 *   main.c     options, the main loop, exit codes
 * Only <migrate/migrate.h> of libmigrate is used.
 */
#ifndef MIGVM_VM_H
#define MIGVM_VM_H

#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <migrate/migrate.h>

#define VM_MAX_VCPUS 64
#define VM_MAX_REGIONS 2
#define VM_PAGE_SIZE 4096ull

/* Guest-physical layout: RAM below the 32-bit PCI hole, the rest above. */
#define VM_LOW_MEM_MAX (3ull << 30)
#define VM_HIGH_MEM_BASE (4ull << 30)
#define VM_TSS_ADDR 0xfffbd000u
#define VM_IDMAP_ADDR 0xfffbc000ull

/* Exit codes (vmm/README.md). */
#define MIGVM_EXIT_OK 0
#define MIGVM_EXIT_ERROR 1
#define MIGVM_EXIT_USAGE 2
#define MIGVM_EXIT_MISMATCH 3

/* PRIVATE (the default, as QEMU's): private anonymous memory with
 * transparent huge pages, 3-10x faster to fault in than shared memory on a
 * migration's destination. MEMFD / ANON: shared, for sharing RAM with
 * another process. */
enum mem_backend { MEM_BACKEND_MEMFD, MEM_BACKEND_ANON, MEM_BACKEND_PRIVATE };

/* What the VM is made of: given by options, or read from a state file. */
struct vm_config {
	uint64_t mem_mib;
	uint32_t cpus;
	enum mem_backend backend;
	char *kernel;           /* ELF path; malloc'd */
	char *cmdline;          /* malloc'd, never NULL */
	bool builtin_guest;     /* kernel is the project's test guest */
	bool dirty_ring;        /* enable KVM's dirty ring (before vCPUs) */
	bool prealloc;          /* back all guest RAM at start (--prealloc) */
	/* PRIVATE backend, RAM to be filled by an incoming migration or a
	 * restore: fault it in with base pages, and give it back to THP
	 * once filled (mem_filled()). Off with --incoming-huge-pages. */
	bool fill_base_pages;
	/* A saved TSC rate this host cannot run fails the load; otherwise
	 * the VM runs at this host's rate, with a warning (--strict-tsc). */
	bool strict_tsc;
};

/* ---- serial.c ----------------------------------------------------- */

/* What migvm learnt from the console: hb lines and MISMATCH reports. */
struct console_stats {
	uint64_t hb_lines;
	uint64_t hb_seq, ticks, written, verified, mismatches;
	uint64_t mismatch_lines;
};

#define SERIAL_LINE_MAX 512
/* The longest partial line kept between bytes (see put_char()). */
#define SERIAL_PARTIAL_MAX (SERIAL_LINE_MAX - 2)

/* Console input the guest has not read yet (from the control channel). */
#define SERIAL_RX_MAX 4096

struct serial {
	pthread_mutex_t lock;
	int out_fd;               /* console output (not owned) */
	/* 16550 registers */
	uint8_t ier, iir_thri, lcr, mcr, scr, dll, dlm, fcr;
	/* receive queue: a ring of rx_len bytes from rx_head */
	uint8_t rx[SERIAL_RX_MAX];
	size_t rx_head, rx_len;
	/* console line scanner */
	char line[SERIAL_LINE_MAX];
	size_t line_len;
	struct console_stats stats;
	/* first MISMATCH line, for the report on stderr */
	char first_mismatch[SERIAL_LINE_MAX];
};

struct vm;
void serial_init(struct serial *s, int out_fd);
void serial_exit(struct serial *s);
/* Port I/O at 0x3f8..0x3ff from a vCPU thread. */
void serial_io(struct vm *vm, uint16_t port, bool write, uint8_t *data);
/* Queue console input for the guest (all of it, or nothing: -ENOSPC when
 * it does not fit in what the guest has left unread) and raise the
 * receive interrupt if the guest enabled it. */
int serial_input(struct vm *vm, const uint8_t *data, size_t len,
		 mig_error *err);
/* What IRQ 4 should be: received data with its interrupt enabled, or a
 * transmitter-empty interrupt pending (caller holds s->lock). */
bool serial_irq_level(const struct serial *s);
/* Set IRQ 4 as the UART's state says (after a load). */
void serial_sync_irq(struct vm *vm);
/* Write out a partial last line (at exit). */
void serial_flush(struct serial *s);
void serial_get_stats(struct serial *s, struct console_stats *out);
/* Serial device and console state as a SerialState message (malloc'd). */
int serial_save(struct serial *s, void **blob, size_t *len, mig_error *err);
int serial_load(struct serial *s, const void *blob, size_t len,
		mig_error *err);

/* ---- acpi.c ------------------------------------------------------- */

/* The tables: RSDP at ACPI_TABLES_ADDR, the rest after it, all within
 * ACPI_TABLES_MAX bytes of the memory map's reserved [0x9fc00, 1 MiB). */
#define ACPI_TABLES_ADDR 0xe0000ull
#define ACPI_TABLES_MAX 0x1000u
#define ACPI_PM1_EVT_PORT 0x600 /* PM1a status (2 bytes), enable (2) */
#define ACPI_PM1_CNT_PORT 0x604 /* PM1a control (2) */
#define ACPI_PM_PORTS 6         /* [0x600, 0x606) */
#define ACPI_RESET_PORT 0xcf9   /* the FADT's reset register */
#define ACPI_RESET_VALUE 0x06
#define ACPI_SLP_TYP_S5 5       /* \_S5_ in the DSDT */

struct acpi_pm {
	pthread_mutex_t lock;
	uint16_t en, cnt;       /* PM1 enable, control (SLP_TYP, BM_RLD) */
};
enum acpi_event { ACPI_EVENT_NONE, ACPI_EVENT_POWER_OFF, ACPI_EVENT_RESET };

uint8_t acpi_checksum(const void *p, size_t n);
/* The tables for `ncpus` vCPUs into buf, which the guest sees at `base`;
 * *used gets their size. -E2BIG when they do not fit. Pure code. */
int acpi_build(uint8_t *buf, size_t size, uint64_t base, uint32_t ncpus,
	       size_t *used, mig_error *err);
void acpi_pm_init(struct acpi_pm *pm);
void acpi_pm_exit(struct acpi_pm *pm);
/* Power-on values (a load without the "acpi.pm" item). */
void acpi_pm_reset(struct acpi_pm *pm);
/* Port I/O in [ACPI_PM1_EVT_PORT, +ACPI_PM_PORTS) from a vCPU thread, any
 * width; ACPI_EVENT_POWER_OFF when the guest entered S5. */
enum acpi_event acpi_pm_io(struct acpi_pm *pm, uint16_t port, bool write,
			   uint8_t *data, uint32_t size);
/* The reset register: ACPI_EVENT_RESET on a write with bit 2 (RST_CPU). */
enum acpi_event acpi_reset_io(bool write, uint8_t *data, uint32_t size);
/* PM1 enable and control as an AcpiPmState message (malloc'd). */
int acpi_pm_save(struct acpi_pm *pm, void **blob, size_t *len,
		 mig_error *err);
int acpi_pm_load(struct acpi_pm *pm, const void *blob, size_t len,
		 mig_error *err);

/* ---- cpu.c -------------------------------------------------------- */

struct vcpu {
	struct vm *vm;
	uint32_t index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	bool started;
	/* The last KVM_RUN returned an exit whose instruction KVM completes
	 * only on the next KVM_RUN (I/O, MMIO): not parkable before that. */
	bool pending_op;
	bool throttle_due;        /* under vm->lock: sleep after this exit */
	uint64_t throttle_ran_from; /* when it last went back to the guest
				     * after a throttle sleep, 0 after a pause */
};

enum run_state { RUN_STARTING, RUN_RUNNING, RUN_PAUSED, RUN_STOPPING };

/* ---- the VM ------------------------------------------------------- */

struct vm {
	struct vm_config cfg;
	int kvm_fd;
	int vm_fd;

	/* mem.c */
	int mem_fd;               /* memfd, or -1 for the anon backend */
	uint8_t *mem;             /* one mapping of all RAM */
	uint64_t mem_size;
	mig_region regions[VM_MAX_REGIONS];
	uint32_t nr_regions;

	/* cpu.c */
	struct vcpu vcpus[VM_MAX_VCPUS];
	uint32_t nr_vcpus;
	void *cpuid;              /* struct kvm_cpuid2 template (malloc'd) */
	size_t cpuid_len;

	/* Run control, all under `lock`. */
	pthread_mutex_t lock;
	pthread_cond_t cond;      /* any change below */
	pthread_cond_t parked;    /* nr_parked went up: for vm_pause() */
	unsigned int pause_depth; /* vm_pause() calls not yet resumed */
	bool pause_req;           /* vCPUs must park */
	bool stopping;            /* vCPU threads must end */
	uint32_t nr_parked;       /* threads parked or ended */
	uint32_t nr_threads;      /* threads started and not joined */
	unsigned int throttle_pct; /* 0..99 */
	bool throttle_running, throttle_joinable;
	pthread_t throttle_tid;

	/* Why the VM stops: the first reason wins. */
	bool exit_set;
	int exit_code;
	char exit_reason[256];
	bool exit_told;           /* exit_reason said even with status 0 */
	int event_fd;             /* eventfd: vCPU threads -> main loop */

	struct serial serial;
	struct acpi_pm acpi_pm;

	/* state.c: items vm_load_state_item() has loaded (an incoming
	 * migration loads them as they arrive); vm_load_state() loads the
	 * rest and clears this. */
	struct {
		bool config, vm, serial, acpi_pm;
		bool vcpu[VM_MAX_VCPUS];
		/* when the first and the last vCPU were loaded (now_ns) */
		uint64_t vcpu_first_ns, vcpu_last_ns;
	} loaded;
	bool tsc_warned;          /* state.c: the TSC rate warning was given */

	/* migrate.c: the migration in progress, if any, and the result of
	 * the last one that ended, as JSON and typed (main thread only) */
	struct migration *migration;
	char *migration_result;
	struct migration_end {
		uint64_t seq;         /* migrations ended so far; 0: none */
		bool incoming, ok;
		int error;
		char message[512];
		uint32_t rounds;
		uint64_t downtime_us, total_time_us, pages_sent, bytes_on_wire;
	} last_migration;
	/* Migrate.hold_result_ms of the migration in progress; once it has
	 * committed, the time by which migvm exits even if no Status has
	 * carried its result yet (0: none pending), and whether one has. */
	uint32_t hold_result_ms;
	/* --tls-*: credentials for migrations that bring none of their own
	 * (the control channel's Migrate may carry a key); NULL: plain */
	mig_tls *tls;
	bool tls_in_only;        /* X.509 loaded for --incoming: not for out */
	uint64_t exit_at_ns;
	bool result_served;
};

/* kvm.c: the goto ladder. Creates the VM with cfg (copied), RAM and vCPUs
 * (not yet running). `console_fd` receives the serial output. */
int vm_create(struct vm *vm, const struct vm_config *cfg, int console_fd,
	      mig_error *err);
/* Stops vCPU threads if any, closes everything; safe on a partial vm. */
void vm_destroy(struct vm *vm);
void vm_config_free(struct vm_config *cfg);

/* mem.c */
/* -ENOMEM when mem_mib is more than MemAvailable + SwapFree. */
int mem_check_host(uint64_t mem_mib, mig_error *err);
int mem_init(struct vm *vm, mig_error *err);
void mem_exit(struct vm *vm);
/* An incoming migration or a restore has filled guest RAM: let THP have
 * it again (undoes vm_config.fill_base_pages; nothing otherwise). */
void mem_filled(struct vm *vm);
/* Host address of [gpa, gpa+len) if it lies in one region, else NULL. */
void *mem_gpa_to_hva(struct vm *vm, uint64_t gpa, uint64_t len);
/* The regions for libmigrate: {slot, gpa, size, hva}. Returns the count. */
uint32_t vm_regions(struct vm *vm, const mig_region **out);
/* The regions of a VM of `mem_mib` MiB (same rule as mem_init). */
uint32_t mem_layout(uint64_t mem_mib, mig_region out[VM_MAX_REGIONS]);

/* cpu.c */
int cpu_create_all(struct vm *vm, mig_error *err);
void cpu_destroy_all(struct vm *vm);
/* Start one thread per vCPU, running (or parked if the VM is paused). */
int vm_start(struct vm *vm, mig_error *err);
/*
 * Pause: every vCPU out of KVM_RUN with its pending I/O completed, parked
 * until vm_resume(). Nests: the VM runs again when every vm_pause() has had
 * its vm_resume(). Thread-safe; returns 0 or -ETIMEDOUT (a vCPU did not
 * park within 5 s; the VM is then resumed).
 */
int vm_pause(struct vm *vm, mig_error *err);
int vm_resume(struct vm *vm, mig_error *err);
bool vm_is_paused(struct vm *vm);
/* Keep vCPUs out of the guest pct % of the time (0 = off, max 99). */
int vm_set_throttle(struct vm *vm, unsigned int pct, mig_error *err);
/* Ask the VM to stop with `code` (first caller wins) and wake main. */
void vm_request_exit(struct vm *vm, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The guest ended the VM itself (power-off, reset): status 0, and the
 * reason is said on stderr all the same. */
void vm_guest_ended(struct vm *vm, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Stop and join all vCPU threads. */
void vm_stop(struct vm *vm);
enum run_state vm_run_state(struct vm *vm);

/* pvh.c: direct kernel boot. pvh_open() reads and checks an ELF (PVH) or
 * a bzImage (64-bit boot protocol) for a VM of `mem_mib` MiB (no KVM
 * needed); pvh_load() copies it into guest RAM, writes hvm_start_info or
 * boot_params and sets the BSP's registers. */
struct pvh_image;
int pvh_open(const char *path, uint64_t mem_mib, const char *cmdline,
	     const char *initrd, struct pvh_image **out, mig_error *err);
int pvh_load(struct vm *vm, struct pvh_image *img, const char *cmdline,
	     mig_error *err);
void pvh_close(struct pvh_image *img);

/* bzimage.c: the Linux/x86 boot protocol of a bzImage (64-bit entry),
 * pure code on the file's bytes. bz_parse() checks the setup header for a
 * VM whose RAM below 4 GiB ends at `ram_top` and a command line of
 * `cmdline_len` bytes; bz_place_initrd() puts an initrd at the top of RAM
 * below the kernel's limit and above what it needs to boot; bz_zero_page()
 * writes boot_params. */
#define BZ_HIGH_RAM_START 0x100000ull
struct bz_info {
	uint16_t version;
	uint32_t hdr_end;        /* the setup header ends here (file offset) */
	uint64_t kernel_off;     /* the protected-mode kernel in the file */
	uint64_t kernel_size;
	uint64_t load_addr;      /* where it goes (pref_address) */
	uint64_t mem_end;        /* what it needs to boot ends here, page up */
	uint32_t cmdline_max;
	uint32_t initrd_addr_max;
};
struct boot_e820 {
	uint64_t addr, size;
	uint32_t type;
};
bool bz_probe(const uint8_t *d, size_t n);
int bz_parse(const char *path, const uint8_t *d, size_t n, uint64_t ram_top,
	     size_t cmdline_len, struct bz_info *bi, mig_error *err);
int bz_place_initrd(const char *path, const struct bz_info *bi,
		    uint64_t ram_top, size_t size, uint64_t *gpa,
		    mig_error *err);
int bz_zero_page(uint8_t zp[4096], const uint8_t *d, const struct bz_info *bi,
		 uint32_t cmdline_gpa, uint64_t initrd_gpa, size_t initrd_size,
		 uint64_t rsdp_gpa, const struct boot_e820 *map, uint32_t nmap,
		 mig_error *err);

/* mptable.c: the MP table (CPUs, IOAPIC, ISA IRQs) at 0x9fc00, in the
 * reserved EBDA of the PVH memory map, for guests without ACPI. */
int mptable_write(struct vm *vm, uint32_t ncpus, mig_error *err);

/* state.c: everything but memory as named blobs. */
struct state_sink {
	int (*add)(void *opaque, const char *name, const void *data,
		   size_t len);
	void *opaque;
};
struct state_source {
	/* 0 with data and len set, or -ENOENT */
	int (*get)(void *opaque, const char *name, const void **data,
		   size_t *len);
	void *opaque;
};
/* The VM must be paused. Items: "vmm.config", "x86.vm", "x86.vcpu.N"
 * (N = 0, 1, ...), "serial", "acpi.pm" (optional when loading). */
int vm_save_state(struct vm *vm, const struct state_sink *sink,
		  mig_error *err);
/* The VM must be created from a matching config and not yet running. */
int vm_load_state(struct vm *vm, const struct state_source *src,
		  mig_error *err);
/* Load one item now, if what it needs is loaded (config first, "x86.vm"
 * before vCPUs); otherwise vm_load_state() loads it later. Same
 * conditions as vm_load_state(). */
int vm_load_state_item(struct vm *vm, const char *name, const void *data,
		       size_t len, mig_error *err);
/* 0 if `name` is an item this migvm loads for this VM (its vCPU count),
 * else -EINVAL naming it. */
int vm_state_item_check(struct vm *vm, const char *name, mig_error *err);
/* Forget the items vm_load_state_item() loaded: an incoming migration
 * starts afresh or failed before vm_load_state(). */
void vm_forget_loaded_items(struct vm *vm);
/* Check that a saved "vmm.config" matches this VM (-EINVAL naming it). */
int vm_check_config(struct vm *vm, const void *data, size_t len,
		    mig_error *err);
/* mig_vm_ops for libmigrate: opaque is the struct vm. */
extern const mig_vm_ops vm_mig_ops;
int vm_ops_pause(void *opaque, mig_error *err);
int vm_ops_resume(void *opaque, mig_error *err);
int vm_ops_save_state(void *opaque, mig_state *out, mig_error *err);
int vm_ops_load_state(void *opaque, const mig_state *in, mig_error *err);
int vm_ops_load_state_item(void *opaque, const char *name, const void *data,
			   size_t len, mig_error *err);
int vm_ops_throttle(void *opaque, unsigned int pct, mig_error *err);

/* snapfile.c */
struct snapfile;
/* Pause must be held. Writes PATH.tmp then renames it to PATH. */
int snapfile_save(struct vm *vm, const char *path, mig_error *err);
/* Open and check header and snapshot; fills *cfg (caller frees with
 * vm_config_free). */
int snapfile_open(const char *path, struct snapfile **out,
		  struct vm_config *cfg, mig_error *err);
/* Read memory into the VM and load the non-memory state. */
int snapfile_restore(struct snapfile *sf, struct vm *vm, mig_error *err);
void snapfile_close(struct snapfile *sf);

/* control.c */
struct control;
int control_open(struct control **out, const char *path, struct vm *vm,
		 mig_error *err);
void control_close(struct control *c);
/* The VM starts paused at the user's request (--paused): `resume` ends
 * that pause, as it ends one made by `pause`. */
void control_paused_by_user(struct control *c);
/* pollfds the main loop must watch; returns the count written. */
int control_pollfds(struct control *c, struct pollfd *fds, int max);
/* Handle whatever is ready on those fds. */
void control_dispatch(struct control *c, const struct pollfd *fds, int n);

/* migrate.c: live migration through libmigrate. Both directions run in
 * the library's threads; migrate_fd() becomes readable when it ended and
 * the main loop then calls migrate_finish(), which prints the result as one
 * JSON object on stdout. */
int migrate_out_start(struct vm *vm, const char *uri, const char *token,
		      const mig_params *params, mig_tls *tls, mig_error *err);
/* The VM must exist, not run (paused), and match the source's layout. */
int migrate_in_start(struct vm *vm, const char *uri, const char *token,
		     uint32_t timeout_ms, mig_tls *tls, mig_error *err);
/*
 * TLS on a migration's connections, as the --tls-* options name it: a
 * pre-shared key (a file of 16..256 raw bytes, /dev/fd/N for a pipe, and
 * an identity), or X.509 in QEMU's layout (a directory with ca-cert.pem
 * and this side's server-cert.pem/server-key.pem (incoming) or
 * client-cert.pem/client-key.pem (outgoing)) and the peer's name to check.
 */
struct tls_opts {
	const char *psk_file;
	const char *identity;     /* default "migrate" */
	const char *x509_dir;
	const char *peer_name;
};
/* *out: credentials, or NULL when no option asks for TLS. */
int migrate_tls_load(const struct tls_opts *o, bool incoming, mig_tls **out,
		     mig_error *err);
int migrate_fd(struct vm *vm);
/* Is the migration in progress the one that brings this VM here? */
bool migrate_is_incoming(struct vm *vm);
int migrate_cancel(struct vm *vm);
/* A parameter of the outgoing migration in progress, by name, while it
 * runs (mig_source_set_param: max_bandwidth, downtime_ms). */
int migrate_set_param(struct vm *vm, const char *key, const char *value,
		      mig_error *e);
int migrate_stats(struct vm *vm, mig_stats *out);
/* Returns 0 or the migration's error; *committed is true when the source
 * handed the VM over (it must then never run here again). */
int migrate_finish(struct vm *vm, bool *committed, mig_error *err);

/* ctl.c */
int ctl_main(int argc, char **argv);

/* util.c */
int vmm_err(mig_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void vmm_err_prefix(mig_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);
int write_full(int fd, const void *buf, size_t len);
/* 0, -EIO at end of file, or -errno. */
int read_full(int fd, void *buf, size_t len);
uint64_t now_ns(void);
bool page_is_zero(const void *p);

#endif /* MIGVM_VM_H */
