/*
 * libmigrate: iterative pre-copy live migration of KVM guests.
 *
 * One public header. Conventions, as in libuv and zstd:
 *  - Functions returning int return 0 (or a count) on success and a
 *    negative errno on failure; mig_strerror() names the code.
 *  - Functions that can fail for a reason a human must read take a
 *    `mig_error *` (may be NULL) that receives the errno and a message naming
 *    the thing and the cause.
 *  - Handles are opaque, made by *_create() and released by *_destroy(),
 *    which accepts NULL.
 *  - The library never exits the process and never prints: it reports
 *    through return values, mig_error and the log callback.
 *  - When a function that takes a callback returns an error, the callback is
 *    never called.
 */
#ifndef MIGRATE_MIGRATE_H
#define MIGRATE_MIGRATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MIG_API __attribute__((visibility("default")))
#else
#define MIG_API
#endif

/* ---- Version --------------------------------------------------------- */

#define MIG_VERSION_MAJOR 0
#define MIG_VERSION_MINOR 1
#define MIG_VERSION_PATCH 0
#define MIG_VERSION_HEX \
	((MIG_VERSION_MAJOR << 16) | (MIG_VERSION_MINOR << 8) | MIG_VERSION_PATCH)

/* Wire protocol version spoken by this library (see proto/README.md). */
#define MIG_PROTOCOL_VERSION 1

/* The version of the library actually loaded, as MIG_VERSION_HEX. */
MIG_API unsigned int mig_version(void);
/* The same as "MAJOR.MINOR.PATCH"; static storage, never NULL. */
MIG_API const char *mig_version_string(void);

/* ---- Errors ---------------------------------------------------------- */

/* Library-specific error codes, below the errno range. */
#define MIG_E_PROTOCOL   (-4001) /* peer broke the protocol */
#define MIG_E_VERSION    (-4002) /* incompatible protocol version */
#define MIG_E_AUTH       (-4003) /* authentication token rejected */
#define MIG_E_INCOMPAT   (-4004) /* VM configuration does not match */
#define MIG_E_CANCELED   (-4005) /* canceled by the caller */
#define MIG_E_PEER       (-4006) /* the peer aborted the migration */
#define MIG_E_NOCONVERGE (-4007) /* pre-copy did not converge in limits */
#define MIG_E_TLS        (-4008) /* TLS handshake or record layer failed */

#define MIG_ERROR_MSG_MAX 256

/* An error as a code and a message for humans. Zero-initialize it. */
typedef struct mig_error {
	int code;                      /* 0 or negative errno / MIG_E_* */
	char msg[MIG_ERROR_MSG_MAX];   /* NUL-terminated, "" when code == 0 */
} mig_error;

/*
 * A short description of `err` (negative errno or MIG_E_*), e.g.
 * "connection reset by peer". Static storage, never NULL; unknown codes give
 * "unknown error".
 */
MIG_API const char *mig_strerror(int err);
/* The symbolic name of `err`, e.g. "ECONNRESET"; "UNKNOWN" if unknown. */
MIG_API const char *mig_err_name(int err);

/* ---- Guest memory ---------------------------------------------------- */

/*
 * One KVM memory slot as the VMM registered it with
 * KVM_SET_USER_MEMORY_REGION. The VMM keeps the mapping alive for as long as
 * any handle that was given it exists.
 */
typedef struct mig_region {
	uint32_t slot;     /* KVM slot id (with address space in bits 16..31) */
	uint64_t gpa;      /* guest physical address, page aligned */
	uint64_t size;     /* bytes, page aligned, > 0 */
	void *hva;         /* host mapping of the slot, page aligned */
} mig_region;

/* ---- Parameters ------------------------------------------------------ */

typedef enum mig_compress {
	MIG_COMPRESS_OFF = 0,   /* never compress (zero pages still skipped) */
	MIG_COMPRESS_ON = 1,    /* always zstd */
	MIG_COMPRESS_AUTO = 2,  /* zstd only while it makes the transfer faster */
} mig_compress;

typedef enum mig_dirty_log {
	MIG_DIRTY_LOG_AUTO = 0,   /* the best the kernel offers */
	MIG_DIRTY_LOG_BITMAP = 1, /* KVM_GET_DIRTY_LOG */
	MIG_DIRTY_LOG_CLEAR = 2,  /* + KVM_CLEAR_DIRTY_LOG (MANUAL_PROTECT2) */
	MIG_DIRTY_LOG_RING = 3,   /* per-vCPU dirty ring */
} mig_dirty_log;

/*
 * Migration parameters. Always start from mig_params_init(): fields added
 * later get their defaults there.
 */
typedef struct mig_params {
	uint32_t downtime_ms;     /* target downtime; default 300, 1..60000 */
	uint64_t max_bandwidth;   /* bytes/s cap, 0 = unlimited (default) */
	mig_compress compress;    /* default MIG_COMPRESS_AUTO */
	int compress_level;       /* zstd level 1..19, default 1 */
	uint32_t connections;     /* TCP connections 1..16, default 2 */
	uint32_t max_rounds;      /* pre-copy rounds before forcing, 1..1000,
	                             default 30 */
	uint32_t timeout_ms;      /* whole migration, 0 = none; default 0 */
	int throttle;             /* slow a guest that dirties faster than the
	                             link (auto-converge), and, once under the
	                             downtime target, run the last rounds of a
	                             guest dirtying at least half as fast as
	                             the link at half speed; default 1 */
	mig_dirty_log dirty_log;  /* default MIG_DIRTY_LOG_AUTO */
	uint32_t stall_timeout_ms; /* fail when nothing moves on the link for
	                             this long (a cut without a reset);
	                             100..3600000, default 10000 */
	int verify;               /* hash guest memory at pause and after the
	                             last page on the destination, and refuse to
	                             commit when they differ; the destination
	                             then loads the VM state after the check,
	                             not while the last pages arrive (loading
	                             may write guest memory: KVM's kvmclock);
	                             costs downtime (about 0.1 s per GiB);
	                             default 0 */
} mig_params;

/* Fill `p` with the defaults above. */
MIG_API void mig_params_init(mig_params *p);

/*
 * Check every field of `p` against its range. Returns 0, or -EINVAL with
 * err->msg naming the field, its value and the allowed range.
 */
MIG_API int mig_params_validate(const mig_params *p, mig_error *err);

/*
 * Set one parameter from text, as a command line or config file gives it:
 * "downtime_ms" "300", "max_bandwidth" "1G" (bytes/s; K/M/G suffixes are
 * powers of 1024), "compress" "off|on|auto", "compress_level",
 * "connections", "max_rounds", "timeout_ms", "stall_timeout_ms",
 * "throttle" "0|1|on|off",
 * "dirty_log" "auto|bitmap|clear|ring", "verify" "0|1". Dashes in `name` count as
 * underscores. Returns 0, -ENOENT for an unknown name, -EINVAL for a bad or
 * out-of-range value (err says which); `p` is unchanged on failure.
 */
MIG_API int mig_params_set(mig_params *p, const char *name, const char *value,
			   mig_error *err);

/* ---- What the VMM provides ------------------------------------------- */

/*
 * A named collection of state blobs ("x86.vcpu.0", "serial", ...), owned by
 * the library; the VMM adds to it in save_state and reads it in load_state.
 */
typedef struct mig_state mig_state;


/*
 * Callbacks into the VMM. All are called from the library's migration
 * thread, never concurrently with each other for one handle. Each returns 0
 * or a negative errno; on failure it may fill `err`.
 *
 * The library's threads run with every signal blocked but the faults'
 * (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS), so a peer that hangs
 * up gives EPIPE, never a SIGPIPE to the process, and the VMM's signals go
 * to its own threads; a thread a callback creates inherits that mask and
 * unblocks what it needs, as vCPU threads do their kick signal.
 */
typedef struct mig_vm_ops {
	/* Stop every vCPU (out of KVM_RUN, will not re-enter) and devices. */
	int (*pause)(void *opaque, mig_error *err);
	/* Let vCPUs and devices run again. */
	int (*resume)(void *opaque, mig_error *err);
	/*
	 * Source, VM paused: append the VMM's state (vCPUs, devices) to `out`
	 * with mig_state_add(). The library sends it as is.
	 */
	int (*save_state)(void *opaque, mig_state *out, mig_error *err);
	/*
	 * Destination, before resume: load the state saved by the source's
	 * save_state (look items up with mig_state_get()). Called once every
	 * page is in guest memory, or, with mig_dest_config.load_state_early,
	 * as soon as the state has arrived.
	 */
	int (*load_state)(void *opaque, const mig_state *in,
			  mig_error *err);
	/*
	 * Optional (may be NULL): keep the vCPUs out of the guest for `pct`
	 * percent of the time (0 = full speed, at most 99), so that a guest
	 * that dirties memory faster than the link converges (QEMU calls this
	 * auto-converge). Without it the source cannot throttle.
	 */
	int (*throttle)(void *opaque, unsigned int pct, mig_error *err);
	/*
	 * Optional (may be NULL), destination with
	 * mig_dest_config.load_state_early: load one state item as soon as it
	 * arrives, in the order the source's save_state added them, so that
	 * loading overlaps the source's saving. load_state still runs once
	 * all items are in, to load whatever this did not and to check that
	 * nothing is missing.
	 */
	int (*load_state_item)(void *opaque, const char *name, const void *data,
			       size_t len, mig_error *err);
} mig_vm_ops;

/* Copy `len` bytes under `name` (at most 63 chars; replaces an old item). */
MIG_API int mig_state_add(mig_state *st, const char *name, const void *data,
			  size_t len);
/*
 * Find `name`: returns 0 and sets *data / *len (valid until the state is
 * released) or -ENOENT.
 */
MIG_API int mig_state_get(const mig_state *st, const char *name,
			  const void **data, size_t *len);

/* ---- Progress and statistics ----------------------------------------- */

typedef enum mig_phase {
	MIG_PHASE_NONE = 0,
	MIG_PHASE_SETUP,        /* connecting, hello, config check */
	MIG_PHASE_PRECOPY,      /* iterative rounds, VM running */
	MIG_PHASE_STOPCOPY,     /* VM paused, last pages and state */
	MIG_PHASE_COMMIT,       /* waiting for the destination's commit */
	MIG_PHASE_DONE,         /* committed (source) / running (destination) */
	MIG_PHASE_FAILED,       /* source VM resumed, or destination discarded */
} mig_phase;

/* "none", "setup", "precopy", "stopcopy", "commit", "done", "failed";
 * "unknown" for anything else. Static storage. */
MIG_API const char *mig_phase_name(mig_phase p);

#define MIG_MAX_ROUNDS_STATS 1000

typedef struct mig_round_stats {
	uint32_t round;
	uint64_t pages;          /* pages sent */
	uint64_t zero_pages;     /* of which sent as zero markers */
	uint64_t bytes;          /* bytes on the wire, framing included */
	uint64_t raw_bytes;      /* pages * page size */
	uint64_t dirty_pages;    /* pages dirtied during the round */
	uint64_t duration_us;
	double dirty_rate;       /* pages/s dirtied during the round */
	double throughput;       /* bytes/s on the wire */
} mig_round_stats;

typedef struct mig_stats {
	mig_phase phase;
	int status;               /* 0 while running/done, else the error */
	uint32_t rounds;
	uint64_t setup_time_us;   /* start until round 1 begins */
	uint64_t total_time_us;   /* start until committed */
	uint64_t downtime_us;     /* source pause until destination resume */
	uint64_t pages_sent;
	uint64_t zero_pages;
	uint64_t bytes_on_wire;
	uint64_t raw_bytes;
	uint64_t expected_downtime_us; /* live estimate during pre-copy */
	uint32_t throttle_pct;    /* current vCPU throttle, 0 = none */
	uint32_t nr_round_stats;  /* entries valid in round[] */
	mig_round_stats round[MIG_MAX_ROUNDS_STATS];
} mig_stats;

typedef void (*mig_progress_cb)(const mig_stats *st, void *opaque);
/* Called once when the migration ends; `err->code` is 0 on success. */
typedef void (*mig_done_cb)(const mig_error *err, void *opaque);

typedef enum mig_log_level {
	MIG_LOG_ERROR = 0, MIG_LOG_WARN, MIG_LOG_INFO, MIG_LOG_DEBUG,
} mig_log_level;
typedef void (*mig_log_cb)(mig_log_level lvl, const char *msg, void *opaque);


/* ---- Migration sessions ---------------------------------------------- */

/* The VM as the library sees it, on either side. */
typedef struct mig_vm {
	int vm_fd;                   /* from KVM_CREATE_VM */
	const mig_region *regions;   /* copied at create */
	uint32_t nr_regions;
	const int *vcpu_fds;         /* copied at create; used by the dirty ring */
	uint32_t nr_vcpus;
	const void *cpuid;           /* opaque fingerprint both sides must share */
	size_t cpuid_len;            /* (e.g. the kvm_cpuid2 set on the vCPUs) */
	const mig_vm_ops *ops;
	void *opaque;                /* passed to ops and callbacks */
} mig_vm;

typedef struct mig_callbacks {
	mig_progress_cb progress;    /* optional, after every round */
	mig_done_cb done;            /* optional, once at the end */
	mig_log_cb log;              /* optional */
} mig_callbacks;

/* ---- TLS ------------------------------------------------------------- */

/*
 * Credentials for TLS 1.3 on every connection of a migration (GnuTLS).
 * Without them (the default) the library speaks plain TCP: pages, state
 * and token cross the network readable and changeable by anyone on the
 * path, which is only acceptable on a network the user trusts.
 *
 * Both sides must hold the same kind. A handle is reference counted: the
 * source or destination that takes it keeps its own reference, so the
 * caller may mig_tls_free() it at once. Thread-safe to share.
 */
typedef struct mig_tls mig_tls;

/*
 * Pre-shared key: `key_len` bytes (16..256; refused otherwise, never cut)
 * under the name `identity` (1..255 printable ASCII bytes, no space, the
 * same on both sides). Key exchange is ECDHE-PSK, so a key learned later does not
 * reveal past migrations. Returns 0 or -EINVAL / -ENOMEM with err filled.
 */
MIG_API int mig_tls_psk(mig_tls **out, const char *identity, const void *key,
			size_t key_len, mig_error *err);
/*
 * X.509 with mutual authentication. `ca_pem`: the CA certificate(s) that
 * sign the peer's certificate; `cert_pem`/`key_pem`: this side's chain and
 * private key (PEM text in memory, NUL-terminated). `peer_name`: on the
 * source, the host name the destination's certificate must carry; on the
 * destination, the name the source's certificate must carry (NULL: any
 * certificate the CA signed). Returns 0 or a negative error with err filled
 * (e.g. "key does not match certificate").
 */
MIG_API int mig_tls_x509(mig_tls **out, const char *ca_pem,
			 const char *cert_pem, const char *key_pem,
			 const char *peer_name, mig_error *err);
/* Drop the caller's reference; accepts NULL. */
MIG_API void mig_tls_free(mig_tls *tls);

/* Source side. */
typedef struct mig_source mig_source;

typedef struct mig_source_config {
	mig_vm vm;
	mig_params params;
	const char *uri;             /* "tcp:HOST:PORT" of the destination */
	const char *token;           /* the token the destination expects */
	mig_callbacks cb;
} mig_source_config;

/*
 * Validate `cfg` and make a source handle; nothing touches the VM yet.
 * Returns 0 and sets *out, or a negative errno with `err` filled.
 */
MIG_API int mig_source_create(mig_source **out, const mig_source_config *cfg,
			      mig_error *err);
/*
 * Start migrating in the library's own thread. The VM keeps running during
 * pre-copy. Returns at once: 0, or an error (then no callback is called).
 */
MIG_API int mig_source_start(mig_source *src, mig_error *err);
/*
 * Block until the migration ends. Returns 0 when the destination committed
 * (the VMM must now destroy its VM and never resume it), or the error; on an
 * error the library has already resumed the VM (ops->resume).
 */
MIG_API int mig_source_wait(mig_source *src, mig_error *err);
/* Ask a running migration to stop; it ends with MIG_E_CANCELED unless it
 * had already committed. Safe from any thread. */
MIG_API int mig_source_cancel(mig_source *src);
/* Snapshot of the statistics so far. Safe from any thread. */
MIG_API int mig_source_stats(mig_source *src, mig_stats *out);
/*
 * Tell the migration that the VMM itself wrote guest memory [gpa, gpa+len)
 * (device emulation, DMA): KVM logs only the guest's own writes, so without
 * this such a write could leave an older copy on the destination.
 * Who and when: any thread, AFTER writing, for as long as the handle lives.
 * Before the migration starts tracking it is a no-op (round 1 reads
 * everything); once the source has paused the VM and taken its last look
 * at the dirty pages (and from then on, whatever the outcome), the write
 * could be lost: the call returns -EBUSY. A VMM whose ops->pause quiesces
 * its devices does not write then.
 * Returns 0, -EINVAL if the range is empty or not all guest RAM of the
 * regions given at create, or -EBUSY as above.
 */
MIG_API int mig_mark_dirty(mig_source *src, uint64_t gpa, uint64_t len);
/* Waits for the migration thread if needed; accepts NULL. */
MIG_API void mig_source_destroy(mig_source *src);
/*
 * Speak TLS with these credentials on every connection (NULL: plain TCP
 * again). Before mig_source_start(); then -EBUSY. A handshake that fails
 * (wrong key, expired certificate, wrong host name) fails the migration
 * with MIG_E_TLS or MIG_E_AUTH and the VM runs on here.
 */
MIG_API int mig_source_set_tls(mig_source *src, mig_tls *tls, mig_error *err);
/*
 * Set one parameter by name, as mig_params_set() takes them, on a source
 * that exists: until mig_source_start() any of them but "connections"
 * (fixed in mig_source_config); while the migration runs, "max_bandwidth"
 * (from the connections' next write) and "downtime_ms" (from the next
 * round's decision), as QEMU's migrate-set-parameters and libvirt's
 * migrate-setspeed and migrate-setmaxdowntime do. Safe from any thread.
 * Returns 0, -ENOENT (unknown name), -EINVAL (bad value) or -EBUSY (not
 * now), with err saying which; on failure nothing changed.
 */
MIG_API int mig_source_set_param(mig_source *src, const char *name,
				 const char *value, mig_error *err);

/* Destination side. */
typedef struct mig_dest mig_dest;

typedef struct mig_dest_config {
	mig_vm vm;                   /* created with the same layout, not run */
	const char *uri;             /* "tcp:HOST:PORT" to listen on; port 0 =
	                                any, see mig_dest_port() */
	const char *token;           /* accept only a source that presents it */
	uint32_t timeout_ms;         /* idle limit while migrating, 0 = 30000 */
	mig_callbacks cb;
	/*
	 * 1 if ops->load_state neither reads guest memory nor needs what it
	 * writes there to survive (true of mig_x86_vm_load() and
	 * mig_x86_vcpu_load(), which set KVM state only): the source then
	 * sends the state before the last pages, and load_state runs while
	 * they arrive, off the downtime's critical path. 0 (the default):
	 * load_state runs once every page is in guest memory. Either way the
	 * VM is resumed only after the whole image has arrived and committed.
	 */
	int load_state_early;
} mig_dest_config;

/* Validate, bind and listen (so the port is known). Nothing is accepted
 * until mig_dest_start(). */
MIG_API int mig_dest_create(mig_dest **out, const mig_dest_config *cfg,
			    mig_error *err);
/* The TCP port actually bound. */
MIG_API int mig_dest_port(const mig_dest *dst);
/* Accept one migration in the library's thread. */
MIG_API int mig_dest_start(mig_dest *dst, mig_error *err);
/*
 * Block until the incoming migration ends. 0: the image is complete, the
 * state loaded, COMMIT sent and ops->resume called: the VM now runs here.
 * Otherwise the error; the VM was never resumed and must be discarded.
 */
MIG_API int mig_dest_wait(mig_dest *dst, mig_error *err);
MIG_API int mig_dest_cancel(mig_dest *dst);
MIG_API int mig_dest_stats(mig_dest *dst, mig_stats *out);
MIG_API void mig_dest_destroy(mig_dest *dst);
/*
 * Accept only TLS connections made with these credentials (NULL: plain
 * TCP again). Before mig_dest_start(); then -EBUSY. A stranger whose
 * handshake fails is closed and counted like any other stranger: it never
 * fails the migration.
 */
MIG_API int mig_dest_set_tls(mig_dest *dst, mig_tls *tls, mig_error *err);

/*
 * Write `st` as one JSON object into buf (NUL-terminated). Returns the
 * length it needs without the NUL (like snprintf): a result >= len means
 * truncated. `status`/`error` are added when err is not NULL.
 */
MIG_API int mig_stats_json(const mig_stats *st, const mig_error *err,
			   char *buf, size_t len);

/* ---- Dirty ring -------------------------------------------------------- */

/*
 * KVM's per-vCPU dirty ring (KVM_CAP_DIRTY_LOG_RING) is the dirty tracking
 * whose cost grows with the pages the guest dirties, not with its size
 * (mig_params.dirty_log = MIG_DIRTY_LOG_RING, or AUTO, which picks it when it
 * is enabled). KVM accepts it only before the VM's first vCPU exists, and a
 * vCPU whose ring fills up stops with KVM_EXIT_DIRTY_RING_FULL until the ring
 * is emptied, so the VMM takes part through the three calls below. While the
 * ring is enabled, KVM_GET_DIRTY_LOG is unavailable on that VM (for the VMM
 * too), and libmigrate harvests the rings: the VMM must not read them.
 */

/*
 * Enable the dirty ring on a VM, with `entries` entries per vCPU (0: 4096,
 * i.e. 64 KiB per vCPU; rounded up to a power of two and to what KVM
 * accepts, at most KVM's maximum).
 * Who and when: the VMM, once, after KVM_CREATE_VM and before the first
 * KVM_CREATE_VCPU. Any thread.
 * Returns the number of entries actually set (> 0; the same number again if
 * libmigrate already enabled it on this VM), or -ENOTSUP (this KVM has no
 * dirty ring), -EINVAL (vCPUs already exist), -EEXIST (the ring was
 * enabled without libmigrate, so its size is unknown), -EBADF.
 * libmigrate remembers vm_fd until mig_dirty_ring_forget().
 */
MIG_API int mig_dirty_ring_enable(int vm_fd, uint32_t entries, mig_error *err);

/*
 * Empty the ring of vCPU `vcpu_fd` so that it can run again.
 * Who and when: the vCPU's own thread, whenever KVM_RUN returns with
 * exit_reason KVM_EXIT_DIRTY_RING_FULL; then re-enter KVM_RUN. Thread-safe,
 * any number of vCPU threads at once.
 * The entries go to the migration in progress on this VM, if one is
 * tracking, and are dropped otherwise (nothing needs them then). May block
 * while the migration thread collects the rings (tens of microseconds to a
 * few milliseconds); the thread is out of KVM_RUN meanwhile, so a pause may
 * count it as stopped, as long as it does not re-enter KVM_RUN until resumed.
 * Returns 0, -ENOENT if the ring was not enabled with mig_dirty_ring_enable()
 * on vm_fd, -EBADF or -ENXIO if vcpu_fd is not a vCPU of that VM, -ENOMEM,
 * or the errno of KVM_RESET_DIRTY_RINGS: then the vCPU cannot make progress
 * and the VMM should stop the VM.
 */
MIG_API int mig_dirty_ring_full(int vm_fd, int vcpu_fd);

/*
 * Forget vm_fd's ring. Who and when: the VMM, when it destroys a VM whose
 * ring it enabled, after its vCPU threads have stopped and before it closes
 * vm_fd (so that a new VM reusing the fd number is not mistaken for it).
 * Migration handles of the VM should be destroyed first. No-op for an
 * unknown fd.
 */
MIG_API void mig_dirty_ring_forget(int vm_fd);

#ifdef __cplusplus
}
#endif

/* Helpers for the standard KVM x86 vCPU and VM state. */
#include "migrate/kvm_x86.h"

#endif /* MIGRATE_MIGRATE_H */
