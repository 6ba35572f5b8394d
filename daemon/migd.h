/*
 * migd: the per-host daemon. One libuv loop owns everything below; the
 * only other threads are the outgoing migrations' (migd_migrate.c), which
 * block on sockets and touch a VM record only under `g.lock`.
 *   migd.c          options, the state dir's lock, signals, main()
 *   migd_host.c     the context (g), logging, names, tokens, host memory
 *   migd_vm.c       the VM records and the migvm processes they supervise
 *   migd_api.c      the control API for migctl (unix socket)
 *   migd_peer.c     the peer protocol: server side (reservations) and the
 *                   client handshake
 *   migd_migrate.c  an outgoing migration, stage by stage (a thread)
 *   migd_io.c       blocking framed I/O, the migvm control client
 *   migd_tls.c      TLS 1.3 (GnuTLS: the pre-shared key or X.509) on the
 *                   peer link
 *   migd_adopt.c    at start, taking back the VMs of the state dir
 */
#ifndef MIGD_H
#define MIGD_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "control.pb-c.h"
#include "daemon.pb-c.h"
#include "msgio.h"

#define MIGD_FRAME_MAX (1u << 20)
/* The least pre-shared key, in bytes (of the file, without its newline). */
#define MIGD_PSK_MIN 16
/* The identity and length of the key of a migration's TLS sessions (made
 * by the destination daemon for each reservation). */
#define MIGD_TLS_IDENTITY "migd"
#define MIGD_DATA_KEY_LEN 32
#define MIGD_DEFAULT_PORT 7400
#define MIGD_NAME_MAX 63

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

enum vm_state {
	VM_RUNNING,    /* a migvm runs the VM here */
	VM_INCOMING,   /* reserved: an incoming migvm waits for the VM */
	VM_MIGRATING,  /* running here, being migrated away */
	VM_MIGRATED,   /* gone to `peer` */
	VM_EXITED,     /* its migvm ended (crash, guest exit, stop) */
	VM_RELEASED,   /* a reservation that was given up */
};

struct progress {
	char phase[16];
	uint32_t rounds, throttle_pct;
	uint64_t pages_sent, bytes_on_wire, expected_downtime_us, guest_pages;
	double throughput, dirty_rate;
};

struct child;
struct peer_conn;

struct vmrec {
	struct vmrec *next;
	char name[MIGD_NAME_MAX + 1];
	uint64_t mem_mib;
	uint32_t cpus;
	char *kernel, *cmdline, *initrd; /* malloc'd; "" = none */
	enum vm_state state;
	struct child *child;             /* the migvm, while it runs */
	int pid;
	int exit_status;                 /* >= 0 code, < 0 -signal */
	bool exit_unknown;               /* an adopted migvm's: not ours */
	bool stop_requested;
	char ctl_path[108], console[PATH_MAX], log_path[PATH_MAX];
	char last_stderr[512];
	char last_error[1024];
	char *last_result;               /* JSON line from migvm's stdout */
	bool last_mig_set;               /* the same, typed (migvm's Status): */
	Mig__D__LastMigration last_mig;  /* scalars only, no pointers */
	char mig_id[40];
	char peer[300];
	struct progress progress;
	/* outgoing migration (under g.lock) */
	bool thread_running, cancel_req;
	/* incoming (destination side) */
	char token[65];
	/* the key of its TLS sessions, until the reservation's reply */
	uint8_t data_key[MIGD_DATA_KEY_LEN];
	int incoming_port;
	bool activated;                  /* migvm said the VM runs here */
	bool committed;                  /* the source daemon said commit */
	struct peer_conn *reserver;      /* waiting for the port */
	/* Called (by migd_vm.c, on the loop) once the incoming migvm has
	 * printed its port (error NULL) or has ended (why): migd_peer.c's
	 * answer to the reservation. */
	void (*reserve_done)(struct vmrec *vm, const char *error);
	struct peer_conn *owner;         /* the source's connection */
	uint64_t migrations_out, migrations_in;
};

struct migd {
	uv_loop_t *loop;
	pthread_mutex_t lock;
	struct vmrec *vms;
	char *state_dir;
	char *control_path;
	char *listen_host;
	int listen_port;
	char *migvm;
	uint8_t psk[256];
	size_t psk_len;
	bool x509;                       /* --tls-x509-dir: peers show
					  * certificates instead of the PSK */
	bool plain_data;                 /* --no-tls: migrations in clear */
	uint64_t max_mem_mib;            /* 0: MemAvailable decides */
	enum log_level log_level;
	char *metrics;                   /* HOST:PORT or NULL */
	/* counters for metrics */
	uint64_t n_mig_ok, n_mig_failed, n_in_ok, n_in_failed, n_auth_failed,
		 n_reserve_refused, n_crashes, n_started;
	/* strangers closed unauthenticated (migd_gate.h), by port */
	uint64_t n_turned_away, n_metrics_turned_away;
};

extern struct migd g;

/* migd_host.c */
void mlog(enum log_level lvl, const struct vmrec *vm, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* "error", "warn", "info" or "debug" as an enum log_level; -1 otherwise. */
int log_level_parse(const char *name);
bool name_valid(const char *name);
void random_hex(char *out, size_t nbytes);
/* n (<= 256) random bytes from the kernel. */
void random_bytes(uint8_t *out, size_t n);
uint64_t mem_available_mib(void);

/* migd_vm.c */
struct vmrec *vm_find(const char *name);
/* A record for `name`: NULL with -EEXIST when one is active. */
struct vmrec *vm_claim(const char *name, int *err);
bool vm_active(const struct vmrec *vm);
const char *vm_state_name(enum vm_state s);
/* Spawn migvm for vm; `incoming` adds --incoming with vm->token. */
int vm_spawn(struct vmrec *vm, bool incoming, char *errbuf, size_t errlen);
void vm_kill(struct vmrec *vm, int sig);
/* Watch a migvm that a previous migd started (see migd_adopt.c). */
int vm_adopt(struct vmrec *vm, int pid, char *errbuf, size_t errlen);
void vm_save_config(struct vmrec *vm);
void vm_remove_config(struct vmrec *vm);
/* The memory of the VMs that run here or are reserved. */
uint64_t mem_used_mib(void);
void vm_fill_info(struct vmrec *vm, Mig__D__VmInfo *info,
		  Mig__D__VmConfig *cfg, Mig__D__Progress *pr,
		  Mig__D__LastMigration *lm);
/* Keep migvm's typed result `r` as vm's last migration (g.lock held). */
void vm_set_last_migration(struct vmrec *vm, const Mig__Ctl__MigrationResult *r);

/* migd_adopt.c: at start, take back the VMs of the state dir. */
void vm_adopt_all(void);

/* migd_api.c */
int api_listen(const char *path, char *errbuf, size_t errlen);
int metrics_listen(const char *hostport, char *errbuf, size_t errlen);

/* migd_peer.c */
int peer_listen(char *errbuf, size_t errlen);
/* Client side, blocking: connect and authenticate (mutually: TLS with
 * the pre-shared key or certificates). Returns the link (tls_cli_close() ends it), or
 * NULL with why in errbuf. */
struct tls_cli *peer_connect(const char *host, int port, char *errbuf,
			     size_t errlen);
int peer_call(struct tls_cli *t, Mig__D__PeerMsg *msg, Mig__D__Reply **reply,
	      int timeout_ms, char *errbuf, size_t errlen);

/* migd_migrate.c */
struct mig_args {
	struct vmrec *vm;
	char host[256];
	int port;
	size_t n_params;
	char **keys, **values;
};
int migrate_spawn(struct mig_args *a, char *errbuf, size_t errlen);

/* migd_io.c: calls to a migvm with a deadline (framed I/O: msgio.h). */
void peer_keepalive(int fd);
int vmctl_call(const char *sock, Mig__Ctl__Request *req,
	       Mig__Ctl__Response **resp, int timeout_ms);
int vmctl_status(const char *sock, Mig__Ctl__Response **resp);

/* migd_tls.c: TLS 1.3 on the peer link, keyed with the PSK, or with the
 * certificates in DIR (QEMU's names: ca-cert.pem, client-cert.pem and
 * client-key.pem, and with `server` server-cert.pem and server-key.pem).
 * One of the two, once, before any connection. */
int tls_init_psk(const uint8_t *key, size_t len, char *errbuf, size_t errlen);
int tls_init_x509(const char *dir, bool server, char *errbuf, size_t errlen);
/* The server side of one connection, on the loop: its records go out with
 * uv_write on `tcp`. */
struct tls_srv;
struct tls_srv *tls_srv_new(uv_tcp_t *tcp);
void tls_srv_free(struct tls_srv *t);
/* Ciphertext read: -1 failed (why), 0 handshake going on, 1 established. */
int tls_srv_input(struct tls_srv *t, const void *p, size_t n, char *why,
		  size_t wl);
/* Who the established peer is, for the log: "the pre-shared key" or
 * "certificate CN=..." (its subject, as GnuTLS prints it). */
void tls_srv_who(struct tls_srv *t, char *out, size_t n);
/* Plaintext into dst: bytes, 0 when nothing whole is there, -1 failed or
 * closed (why). */
long tls_srv_read(struct tls_srv *t, void *dst, size_t cap, char *why,
		  size_t wl);
int tls_srv_write(struct tls_srv *t, const void *p, size_t n);
/* The client side on a connected non-blocking descriptor, its handshake
 * done within timeout_ms (NULL: why); close frees it and closes fd. Under
 * X.509 the server's certificate must name `host`. */
struct tls_cli;
struct tls_cli *tls_cli_open(int fd, const char *host, int timeout_ms,
			     char *why, size_t wl);
void tls_cli_close(struct tls_cli *t);
int tls_cli_fd(const struct tls_cli *t);
/* Framed messages as msgio_send/msgio_recv, sealed. */
int tls_cli_send(struct tls_cli *t, const ProtobufCMessage *m, int timeout_ms);
int tls_cli_recv(struct tls_cli *t, const ProtobufCMessageDescriptor *d,
		 int timeout_ms, ProtobufCMessage **out);

#endif
