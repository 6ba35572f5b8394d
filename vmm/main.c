/*
 * migvm: a small KVM VMM, one process per VM. Options, the main loop (signals,
 * vCPU events, the control channel) and the exit code. See vmm/README.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/un.h>
#include <unistd.h>

#include "events.h"
#include "vm.h"

#define DEFAULT_MEM_MIB 256
#define MAX_MEM_MIB (1ull << 24) /* 16 TiB: a sanity bound, not a promise */

struct options {
	struct vm_config cfg;
	const char *console;
	const char *control;
	const char *restore;
	const char *initrd;       /* --initrd FILE, for --kernel */
	bool corrupt;
	uint64_t corrupt_gpa;
	bool paused;
	bool mem_set, cpus_set;
	/* live migration */
	const char *incoming;     /* tcp:HOST:PORT to listen on */
	const char *migrate_to;   /* tcp:HOST:PORT to migrate to */
	const char *token;
	double migrate_after;     /* seconds after start */
	uint32_t incoming_timeout_ms;
	bool incoming_huge_pages;
	mig_params params;
	struct tls_opts tls;
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: migvm [options]\n"
"       migvm --restore FILE [--console FILE] [--control PATH]\n"
"       migvm ctl SOCKET pause|resume|status|save FILE|quit|throttle PCT|\n"
"                 migrate URI TOKEN [K=V ...]|set K=V|cancel|input TEXT\n"
"\n"
"  --mem MIB              guest RAM in MiB (default %d)\n"
"  --cpus N               vCPUs, 1..%d (default 1)\n"
"  --mem-backend private|memfd|anon  how guest RAM is allocated (default\n"
"                         private: anonymous with huge pages)\n"
"  --prealloc             back all guest RAM before the VM runs or an\n"
"                         incoming migration is announced (like QEMU's\n"
"                         -mem-prealloc)\n"
"  --kernel FILE          a kernel to boot: a PVH ELF or a bzImage\n"
"                         (default: the test guest)\n"
"  --cmdline STR          the guest's command line\n"
"  --initrd FILE          an initrd for the kernel (Linux takes it as its\n"
"                         initramfs)\n"
"  --console FILE         serial output to FILE (default: stdout)\n"
"  --control PATH         serve the control channel on unix socket PATH\n"
"  --restore FILE         continue the VM saved in FILE\n"
"  --paused               start paused (resume over the control channel)\n"
"  --corrupt-gpa ADDR     debug, with --restore: corrupt the guest page at\n"
"                         ADDR before the VM runs (tests the guest's check)\n"
"\n"
"Live migration (prints one JSON object with the result on stdout):\n"
"  --incoming tcp:HOST:PORT  wait for a migrating VM (same --mem/--cpus);\n"
"                         port 0 picks one, printed on stderr\n"
"  --incoming-timeout MS  give up when the source goes silent (default 30000)\n"
"  --incoming-huge-pages  with --incoming or --restore: fill guest RAM with\n"
"                         huge pages (default: base pages until the VM runs,\n"
"                         as nested hosts may fault them in faster; then THP)\n"
"  --strict-tsc           with --incoming or --restore: refuse a saved TSC\n"
"                         rate this host cannot run (default: run at this\n"
"                         host's rate and warn, as QEMU does)\n"
"  --migrate-to tcp:HOST:PORT  migrate this VM there ...\n"
"  --migrate-after SEC    ... this long after it started (default 1)\n"
"  --token T              the one-time token both sides must share (visible\n"
"                         to local users in /proc: programs use --token-fd)\n"
"  --token-fd N           read the token from descriptor N (to its end)\n"
"  --events-fd N          write events (VmEvent frames, control.proto) to\n"
"                         descriptor N: for the program that started migvm\n"
"  --tls-psk-file FILE    TLS 1.3 on every connection with the pre-shared\n"
"                         key in FILE (16..256 raw bytes; /dev/fd/N reads\n"
"                         a pipe); both sides the same key and identity\n"
"  --tls-identity NAME    the key's identity (default migrate)\n"
"  --tls-x509-dir DIR     TLS 1.3 with certificates, both sides checked: DIR\n"
"                         holds ca-cert.pem and server-cert.pem and\n"
"                         server-key.pem (--incoming) or client-cert.pem\n"
"                         and client-key.pem (migrating out)\n"
"  --tls-hostname NAME    the name the peer's certificate must carry (the\n"
"                         destination's host name; on --incoming, the\n"
"                         source's; default: any the CA signed)\n"
"                         Without --tls-*: plain TCP, readable and\n"
"                         changeable on the path (trusted networks only)\n"
"  --downtime-ms N        target downtime (default 300)\n"
"  --max-bandwidth BYTES  cap in bytes/s, K/M/G suffixes (default none)\n"
"  --compress off|on|auto zstd for pages (default auto)\n"
"  --compress-level N     zstd level 1..19 (default 1)\n"
"  --connections N        parallel TCP connections (default 2)\n"
"  --dirty-log auto|bitmap|clear|ring  dirty tracking (default auto)\n"
"  --max-rounds N, --timeout-ms N, --stall-timeout-ms N, --throttle on|off\n"
"  --verify               compare memory hashes before the destination\n"
"                         resumes (costs downtime)\n"
"  -h, --help             this text\n"
"\n"
"Exit: 0 the guest said ok, reset the machine (a reboot ends migvm) or\n"
"quit/save/signal; the guest's non-zero status byte, 1 error, 2 usage,\n"
"3 the guest reported a MISMATCH.\n",
		DEFAULT_MEM_MIB, VM_MAX_VCPUS);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

/* The project's test guest: $MIGVM_TESTGUEST, next to this binary (build
 * tree, or ../libexec/migvm of an install), else the paths CMake compiled
 * in. */
static char *find_testguest(void)
{
	char exe[PATH_MAX], *p;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	const char *env = getenv("MIGVM_TESTGUEST");

	if (env && *env)
		return strdup(env);
	if (n > 0) {
		exe[n] = '\0';
		p = strrchr(exe, '/');
		if (p) {
			char *path;
			*p = '\0';
			/* build tree; then an install, wherever it was moved */
			if (asprintf(&path, "%s/testguest/testguest.elf", exe) >= 0) {
				if (access(path, R_OK) == 0)
					return path;
				free(path);
			}
			if (asprintf(&path, "%s/../libexec/migvm/testguest.elf",
				     exe) >= 0) {
				if (access(path, R_OK) == 0)
					return path;
				free(path);
			}
		}
	}
#ifdef MIGVM_TESTGUEST_PATH
	if (access(MIGVM_TESTGUEST_PATH, R_OK) == 0)
		return strdup(MIGVM_TESTGUEST_PATH);
#endif
#ifdef MIGVM_TESTGUEST_INSTALL_PATH
	if (access(MIGVM_TESTGUEST_INSTALL_PATH, R_OK) == 0)
		return strdup(MIGVM_TESTGUEST_INSTALL_PATH);
#endif
	return NULL;
}

/* Does the command line have a parameter `key=`? */
static bool has_param(const char *cmdline, const char *key)
{
	size_t n = strlen(key);

	for (const char *p = cmdline; *p;) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, n) && p[n] == '=')
			return true;
		while (*p && *p != ' ')
			p++;
	}
	return false;
}

enum { OPT_MEM = 256, OPT_CPUS, OPT_PREALLOC, OPT_BACKEND, OPT_KERNEL, OPT_CMDLINE,
       OPT_CONSOLE, OPT_CONTROL, OPT_RESTORE, OPT_CORRUPT, OPT_PAUSED,
       OPT_INCOMING, OPT_INCOMING_TIMEOUT, OPT_MIGRATE_TO, OPT_MIGRATE_AFTER,
       OPT_TOKEN, OPT_TOKEN_FD, OPT_VERIFY, OPT_MIG_PARAM, OPT_INCOMING_HUGE, OPT_INITRD,
       OPT_STRICT_TSC, OPT_EVENTS_FD, OPT_TLS_PSK_FILE, OPT_TLS_IDENTITY,
       OPT_TLS_X509_DIR, OPT_TLS_HOSTNAME };

/* libmigrate takes tokens of 1-256 bytes. */
#define TOKEN_MAX 256

/* --token-fd N: the token is what descriptor N holds up to its end (a
 * pipe its parent wrote and closed; one newline at the end dropped), so that
 * it is never on a command line, where any local user can read it. */
static int read_token_fd(const char *arg, const char **token)
{
	static char buf[TOKEN_MAX + 2];
	size_t len = 0;
	char *end;
	long fd = strtol(arg, &end, 10);

	if (*end || end == arg || fd < 0 || fd > 1023) {
		fprintf(stderr, "migvm: --token-fd %s: not a descriptor\n", arg);
		return -1;
	}
	for (;;) {
		ssize_t n = read((int)fd, buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "migvm: --token-fd %ld: %s\n", fd,
				strerror(errno));
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == sizeof(buf) - 1) {
			fprintf(stderr, "migvm: --token-fd %ld: longer than "
				"%d bytes\n", fd, TOKEN_MAX);
			close((int)fd);
			return -1;
		}
	}
	close((int)fd);
	if (len && buf[len - 1] == '\n')
		len--;
	buf[len] = '\0';
	if (!len || strlen(buf) != len) {
		fprintf(stderr, "migvm: --token-fd %ld: %s\n", fd,
			len ? "a NUL in the token" : "no token");
		return -1;
	}
	*token = buf;
	return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "mem", required_argument, NULL, OPT_MEM },
		{ "cpus", required_argument, NULL, OPT_CPUS },
		{ "mem-backend", required_argument, NULL, OPT_BACKEND },
		{ "prealloc", no_argument, NULL, OPT_PREALLOC },
		{ "kernel", required_argument, NULL, OPT_KERNEL },
		{ "cmdline", required_argument, NULL, OPT_CMDLINE },
		{ "initrd", required_argument, NULL, OPT_INITRD },
		{ "console", required_argument, NULL, OPT_CONSOLE },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "restore", required_argument, NULL, OPT_RESTORE },
		{ "corrupt-gpa", required_argument, NULL, OPT_CORRUPT },
		{ "paused", no_argument, NULL, OPT_PAUSED },
		{ "incoming", required_argument, NULL, OPT_INCOMING },
		{ "incoming-timeout", required_argument, NULL, OPT_INCOMING_TIMEOUT },
		{ "incoming-huge-pages", no_argument, NULL, OPT_INCOMING_HUGE },
		{ "strict-tsc", no_argument, NULL, OPT_STRICT_TSC },
		{ "events-fd", required_argument, NULL, OPT_EVENTS_FD },
		{ "tls-psk-file", required_argument, NULL, OPT_TLS_PSK_FILE },
		{ "tls-identity", required_argument, NULL, OPT_TLS_IDENTITY },
		{ "tls-x509-dir", required_argument, NULL, OPT_TLS_X509_DIR },
		{ "tls-hostname", required_argument, NULL, OPT_TLS_HOSTNAME },
		{ "migrate-to", required_argument, NULL, OPT_MIGRATE_TO },
		{ "migrate-after", required_argument, NULL, OPT_MIGRATE_AFTER },
		{ "token", required_argument, NULL, OPT_TOKEN },
		{ "token-fd", required_argument, NULL, OPT_TOKEN_FD },
		{ "verify", no_argument, NULL, OPT_VERIFY },
		/* Every libmigrate parameter, by its own name. */
		{ "downtime-ms", required_argument, NULL, OPT_MIG_PARAM },
		{ "max-bandwidth", required_argument, NULL, OPT_MIG_PARAM },
		{ "compress", required_argument, NULL, OPT_MIG_PARAM },
		{ "compress-level", required_argument, NULL, OPT_MIG_PARAM },
		{ "connections", required_argument, NULL, OPT_MIG_PARAM },
		{ "dirty-log", required_argument, NULL, OPT_MIG_PARAM },
		{ "max-rounds", required_argument, NULL, OPT_MIG_PARAM },
		{ "timeout-ms", required_argument, NULL, OPT_MIG_PARAM },
		{ "stall-timeout-ms", required_argument, NULL, OPT_MIG_PARAM },
		{ "throttle", required_argument, NULL, OPT_MIG_PARAM },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmdline = NULL;
	mig_error merr = { 0 };
	uint64_t v;
	int c, li;

	memset(o, 0, sizeof(*o));
	mig_params_init(&o->params);
	o->migrate_after = 1.0;
	o->cfg.mem_mib = DEFAULT_MEM_MIB;
	o->cfg.cpus = 1;
	o->cfg.backend = MEM_BACKEND_PRIVATE;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, &li)) != -1) {
		switch (c) {
		case OPT_MEM:
			if (parse_u64(optarg, &v) < 0 || v < 2 || v > MAX_MEM_MIB) {
				fprintf(stderr, "migvm: --mem %s: not a size in "
					"MiB between 2 and %llu\n", optarg,
					MAX_MEM_MIB);
				return -1;
			}
			o->cfg.mem_mib = v;
			o->mem_set = true;
			break;
		case OPT_CPUS:
			if (parse_u64(optarg, &v) < 0 || v < 1 ||
			    v > VM_MAX_VCPUS) {
				fprintf(stderr, "migvm: --cpus %s: not a number "
					"between 1 and %d\n", optarg,
					VM_MAX_VCPUS);
				return -1;
			}
			o->cfg.cpus = (uint32_t)v;
			o->cpus_set = true;
			break;
		case OPT_PREALLOC:
			o->cfg.prealloc = true;
			break;
		case OPT_INCOMING_HUGE:
			o->incoming_huge_pages = true;
			break;
		case OPT_STRICT_TSC:
			o->cfg.strict_tsc = true;
			break;
		case OPT_BACKEND:
			if (!strcmp(optarg, "memfd"))
				o->cfg.backend = MEM_BACKEND_MEMFD;
			else if (!strcmp(optarg, "anon"))
				o->cfg.backend = MEM_BACKEND_ANON;
			else if (!strcmp(optarg, "private"))
				o->cfg.backend = MEM_BACKEND_PRIVATE;
			else {
				fprintf(stderr, "migvm: --mem-backend %s: "
					"expected private, memfd or anon\n", optarg);
				return -1;
			}
			break;
		case OPT_KERNEL:
			o->cfg.kernel = optarg;
			break;
		case OPT_CMDLINE:
			cmdline = optarg;
			break;
		case OPT_INITRD:
			o->initrd = optarg;
			break;
		case OPT_CONSOLE:
			o->console = optarg;
			break;
		case OPT_CONTROL:
			if (strlen(optarg) >= sizeof(((struct sockaddr_un *)0)
							     ->sun_path)) {
				fprintf(stderr, "migvm: --control %s: a unix "
					"socket path must be shorter than %zu "
					"bytes\n", optarg,
					sizeof(((struct sockaddr_un *)0)->sun_path));
				return -1;
			}
			o->control = optarg;
			break;
		case OPT_RESTORE:
			o->restore = optarg;
			break;
		case OPT_CORRUPT:
			if (parse_u64(optarg, &o->corrupt_gpa) < 0) {
				fprintf(stderr, "migvm: --corrupt-gpa %s: not an "
					"address\n", optarg);
				return -1;
			}
			o->corrupt = true;
			break;
		case OPT_PAUSED:
			o->paused = true;
			break;
		case OPT_INCOMING:
			o->incoming = optarg;
			break;
		case OPT_INCOMING_TIMEOUT:
			if (parse_u64(optarg, &v) < 0 || v < 100 || v > 86400000) {
				fprintf(stderr, "migvm: --incoming-timeout %s: not "
					"a time in ms between 100 and 86400000\n",
					optarg);
				return -1;
			}
			o->incoming_timeout_ms = (uint32_t)v;
			break;
		case OPT_MIGRATE_TO:
			o->migrate_to = optarg;
			break;
		case OPT_MIGRATE_AFTER: {
			char *end;
			o->migrate_after = strtod(optarg, &end);
			if (*end || end == optarg || o->migrate_after < 0 ||
			    o->migrate_after > 86400) {
				fprintf(stderr, "migvm: --migrate-after %s: not "
					"a number of seconds (0..86400)\n", optarg);
				return -1;
			}
			break;
		}
		case OPT_TOKEN:
			o->token = optarg;
			break;
		case OPT_TOKEN_FD:
			if (read_token_fd(optarg, &o->token) < 0)
				return -1;
			break;
		case OPT_EVENTS_FD:
			if (events_init(optarg) < 0)
				return -1;
			break;
		case OPT_TLS_PSK_FILE:
			o->tls.psk_file = optarg;
			break;
		case OPT_TLS_IDENTITY:
			o->tls.identity = optarg;
			break;
		case OPT_TLS_X509_DIR:
			o->tls.x509_dir = optarg;
			break;
		case OPT_TLS_HOSTNAME:
			o->tls.peer_name = optarg;
			break;
		case OPT_VERIFY:
			o->params.verify = 1;
			break;
		case OPT_MIG_PARAM:
			if (mig_params_set(&o->params, longopts[li].name, optarg,
					   &merr) < 0) {
				fprintf(stderr, "migvm: --%s: %s\n",
					longopts[li].name, merr.msg);
				return -1;
			}
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			fprintf(stderr, "migvm: option %s needs a value\n",
				argv[optind - 1]);
			return -1;
		default:
			fprintf(stderr, "migvm: unknown option %s\n",
				argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "migvm: unexpected argument %s\n", argv[optind]);
		return -1;
	}
	if (o->restore && (o->cfg.kernel || cmdline || o->mem_set ||
			   o->cpus_set)) {
		fprintf(stderr, "migvm: --restore takes the VM's memory, vCPUs, "
			"kernel and command line from the state file\n");
		return -1;
	}
	if (o->initrd && !o->cfg.kernel) {
		fprintf(stderr, "migvm: --initrd goes with --kernel (the test "
			"guest takes none)\n");
		return -1;
	}
	if (o->initrd && (o->restore || o->incoming)) {
		fprintf(stderr, "migvm: --initrd: a VM that is restored or "
			"migrated in has its initrd in its memory already\n");
		return -1;
	}
	if ((o->incoming || o->migrate_to) && !o->token) {
		fprintf(stderr, "migvm: --incoming and --migrate-to need "
			"--token or --token-fd\n");
		return -1;
	}
	if (o->incoming && (o->migrate_to || o->restore || o->paused)) {
		fprintf(stderr, "migvm: --incoming takes the VM from the source: "
			"not with --migrate-to, --restore or --paused\n");
		return -1;
	}
	if (o->paused && !o->control) {
		fprintf(stderr, "migvm: --paused needs --control (the VM "
			"resumes through it)\n");
		return -1;
	}
	if (o->incoming_huge_pages && !o->incoming && !o->restore) {
		fprintf(stderr, "migvm: --incoming-huge-pages needs --incoming "
			"or --restore\n");
		return -1;
	}
	if (o->cfg.strict_tsc && !o->incoming && !o->restore) {
		fprintf(stderr, "migvm: --strict-tsc needs --incoming or "
			"--restore\n");
		return -1;
	}
	/* The dirty ring must be enabled before the vCPUs exist. */
	o->cfg.dirty_ring = o->params.dirty_log == MIG_DIRTY_LOG_RING;
	if (o->corrupt && !o->restore) {
		fprintf(stderr, "migvm: --corrupt-gpa needs --restore\n");
		return -1;
	}
	o->cfg.cmdline = (char *)(cmdline ? cmdline : "");
	return 0;
}

/* Build the final config for a fresh boot (malloc'd strings). */
static int boot_config(struct options *o, struct vm_config *cfg,
		       mig_error *err)
{
	*cfg = o->cfg;
	cfg->kernel = NULL;
	cfg->cmdline = NULL;
	if (o->cfg.kernel) {
		cfg->kernel = strdup(o->cfg.kernel);
		cfg->cmdline = strdup(o->cfg.cmdline);
	} else {
		cfg->builtin_guest = true;
		cfg->kernel = find_testguest();
		if (!cfg->kernel)
			return vmm_err(err, -ENOENT, "the test guest "
				       "(testguest.elf) was not found next to "
				       "migvm nor where it is installed; give "
				       "--kernel FILE (or MIGVM_TESTGUEST)");
		if (has_param(o->cfg.cmdline, "cpus")) {
			cfg->cmdline = strdup(o->cfg.cmdline);
		} else if (asprintf(&cfg->cmdline, "%s%scpus=%u",
				    o->cfg.cmdline,
				    o->cfg.cmdline[0] ? " " : "",
				    o->cfg.cpus) < 0) {
			cfg->cmdline = NULL;
		}
	}
	if (!cfg->kernel || !cfg->cmdline) {
		vm_config_free(cfg);
		return vmm_err(err, -ENOMEM, "out of memory");
	}
	return 0;
}

static int corrupt_page(struct vm *vm, uint64_t gpa, mig_error *err)
{
	uint64_t page = gpa & ~(VM_PAGE_SIZE - 1);
	uint8_t *p = mem_gpa_to_hva(vm, page, VM_PAGE_SIZE);

	if (!p)
		return vmm_err(err, -EINVAL, "--corrupt-gpa 0x%" PRIx64 ": not "
			       "guest RAM", gpa);
	/* Flip bits all over the page: whatever the guest checks, it sees. */
	for (size_t i = 0; i < VM_PAGE_SIZE; i += 8)
		p[i] ^= 0x5a;
	fprintf(stderr, "migvm: corrupted the guest page at 0x%" PRIx64 "\n",
		page);
	return 0;
}

/* A migration ended: report it, and stop if the VM now lives elsewhere. */
static void migration_ended(struct vm *vm, const struct options *o)
{
	mig_error err = { 0 };
	bool committed;
	uint64_t junk;
	int r;

	if (read(migrate_fd(vm), &junk, sizeof(junk)) < 0 && errno == EAGAIN)
		return;
	/* The direction of this migration, not of how the process started:
	 * a VM that arrived with --incoming may later leave again. */
	bool incoming = migrate_is_incoming(vm);
	r = migrate_finish(vm, &committed, &err);
	if (committed && vm->hold_result_ms) {
		/* main_loop() exits once a Status has carried the result. */
		vm->result_served = false;
		vm->exit_at_ns = now_ns() + vm->hold_result_ms * 1000000ull;
	} else if (committed) {
		vm_request_exit(vm, MIGVM_EXIT_OK, "migrated to %s",
				o->migrate_to ? o->migrate_to : "its destination");
	} else if (incoming && r < 0) {
		events_incoming_done(&vm->last_migration);
		vm_request_exit(vm, MIGVM_EXIT_ERROR, "incoming migration "
				"failed: %s", err.msg);
	} else if (r < 0) {
		fprintf(stderr, "migvm: %s\n", err.msg);
	} else if (incoming) {
		mem_filled(vm);
		fprintf(stderr, "migvm: incoming migration done; the VM runs "
			"here\n");
		events_incoming_done(&vm->last_migration);
	}
}

static void migration_start(struct vm *vm, const struct options *o)
{
	mig_error err = { 0 };

	if (migrate_out_start(vm, o->migrate_to, o->token, &o->params, vm->tls,
			      &err) < 0) {
		/* The same object as a finished migration, for scripts. */
		char json[1024];
		mig_stats *st = calloc(1, sizeof(*st));
		if (st) {
			st->phase = MIG_PHASE_FAILED;
			st->status = err.code;
			mig_stats_json(st, &err, json, sizeof(json));
			printf("%s\n", json);
			fflush(stdout);
			free(st);
		}
		fprintf(stderr, "migvm: migration to %s not started: %s; the VM "
			"keeps running\n", o->migrate_to, err.msg);
	}
}

/* Wait for the VM to stop: a signal, an exit request, the control channel
 * (which may request one) or the end of a migration. */
static void main_loop(struct vm *vm, struct control *ctl, int sigfd,
		      const struct options *o)
{
	uint64_t migrate_at = o->migrate_to
		? now_ns() + (uint64_t)(o->migrate_after * 1e9) : 0;

	for (;;) {
		struct pollfd fds[16];
		int n = 0, r, timeout = -1, mfd = migrate_fd(vm);

		fds[n++] = (struct pollfd){ .fd = sigfd, .events = POLLIN };
		fds[n++] = (struct pollfd){ .fd = vm->event_fd, .events = POLLIN };
		fds[n++] = (struct pollfd){ .fd = mfd, .events = POLLIN };
		n += control_pollfds(ctl, fds + n, 16 - n);
		if (migrate_at) {
			uint64_t now = now_ns();
			timeout = now >= migrate_at
				? 0 : (int)((migrate_at - now) / 1000000 + 1);
		}
		if (vm->exit_at_ns) {
			uint64_t now = now_ns();
			if (vm->result_served || now >= vm->exit_at_ns) {
				vm_request_exit(vm, MIGVM_EXIT_OK, "migrated to %s",
						o->migrate_to ? o->migrate_to
							      : "its destination");
				return;
			}
			timeout = (int)((vm->exit_at_ns - now) / 1000000 + 1);
		}
		r = poll(fds, (nfds_t)n, timeout);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			vm_request_exit(vm, MIGVM_EXIT_ERROR, "poll: %s",
					strerror(errno));
			return;
		}
		if (fds[0].revents) {
			struct signalfd_siginfo si;
			if (read(sigfd, &si, sizeof(si)) == sizeof(si))
				vm_request_exit(vm, MIGVM_EXIT_OK, "stopped by "
						"%s", strsignal((int)si.ssi_signo));
		}
		if (migrate_at && now_ns() >= migrate_at) {
			migrate_at = 0;
			migration_start(vm, o);
		}
		if (mfd >= 0 && fds[2].revents)
			migration_ended(vm, o);
		if (!fds[1].revents)
			control_dispatch(ctl, fds + 3, n - 3);
		if (vm_run_state(vm) == RUN_STOPPING)
			return;
	}
}

static int run_vm(struct options *o)
{
	struct vm *vm;
	struct vm_config cfg = { 0 };
	struct snapfile *sf = NULL;
	struct pvh_image *img = NULL;
	struct control *ctl = NULL;
	struct console_stats cs;
	mig_error err = { 0 };
	mig_tls *tls = NULL;
	sigset_t sigs;
	int console_fd = STDOUT_FILENO, sigfd = -1, code, r;

	vm = calloc(1, sizeof(*vm));
	if (!vm) {
		fprintf(stderr, "migvm: out of memory\n");
		return MIGVM_EXIT_ERROR;
	}
	vm->kvm_fd = -1;
	/* The credentials first: a wrong key fails before any VM exists. */
	if ((r = migrate_tls_load(&o->tls, o->incoming != NULL, &tls,
				  &err)) < 0)
		goto fail;
	/* Signals: SIGINT/SIGTERM through a signalfd, blocked everywhere. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	sigfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	if (sigfd < 0) {
		r = vmm_err(&err, -errno, "signalfd: %s", strerror(errno));
		goto fail;
	}

	if (o->restore) {
		r = snapfile_open(o->restore, &sf, &cfg, &err);
	} else if (o->incoming) {
		/* Memory, registers and devices all come from the source. */
		cfg = o->cfg;
		cfg.kernel = NULL;
		cfg.cmdline = strdup(o->cfg.cmdline);
		r = cfg.cmdline ? 0 : vmm_err(&err, -ENOMEM, "out of memory");
	} else {
		r = boot_config(o, &cfg, &err);
	}
	if (r < 0)
		goto fail;
	/* RAM that a migration or a state file fills: see mem.c. */
	cfg.fill_base_pages = (o->incoming || o->restore) &&
			      !o->incoming_huge_pages;
	cfg.strict_tsc = o->cfg.strict_tsc;
	if (o->restore)
		cfg.backend = o->cfg.backend;
	else if (!o->incoming && (r = pvh_open(cfg.kernel, cfg.mem_mib, cfg.cmdline,
					       o->initrd, &img, &err)) < 0)
		goto fail;
	if (o->console) {
		console_fd = open(o->console, O_WRONLY | O_CREAT | O_TRUNC |
				  O_CLOEXEC | O_APPEND, 0644);
		if (console_fd < 0) {
			r = vmm_err(&err, -errno, "--console %s: %s",
				    o->console, strerror(errno));
			goto fail;
		}
	}
	r = vm_create(vm, &cfg, console_fd, &err);
	vm->tls = tls; /* vm_create() cleared the struct */
	vm->tls_in_only = o->incoming && o->tls.x509_dir;
	if (r < 0)
		goto fail;
	if (sf) {
		r = snapfile_restore(sf, vm, &err);
		snapfile_close(sf);
		sf = NULL;
		if (r < 0)
			goto fail_vm;
		mem_filled(vm);
		if (o->corrupt && (r = corrupt_page(vm, o->corrupt_gpa, &err)) < 0)
			goto fail_vm;
	} else if (!o->incoming) {
		r = pvh_load(vm, img, cfg.cmdline, &err);
		pvh_close(img);
		img = NULL;
		if (r < 0)
			goto fail_vm;
	}
	if (o->control) {
		r = control_open(&ctl, o->control, vm, &err);
		if (r < 0)
			goto fail_vm;
	}
	/* An incoming VM stays paused until libmigrate has loaded it; a
	 * --paused one until `resume` on the control channel. */
	if ((o->paused || o->incoming) && (r = vm_pause(vm, &err)) < 0)
		goto fail_vm;
	if (o->paused)
		control_paused_by_user(ctl);
	r = vm_start(vm, &err);
	if (r < 0)
		goto fail_vm;
	if (o->incoming &&
	    (r = migrate_in_start(vm, o->incoming, o->token,
				  o->incoming_timeout_ms, vm->tls, &err)) < 0)
		goto fail_vm;

	main_loop(vm, ctl, sigfd, o);

	vm_stop(vm);
	serial_flush(&vm->serial);
	serial_get_stats(&vm->serial, &cs);
	code = vm->exit_code;
	if (code != MIGVM_EXIT_OK || vm->exit_told)
		fprintf(stderr, "migvm: %s\n", vm->exit_reason);
	if (cs.mismatch_lines || cs.mismatches) {
		fprintf(stderr, "migvm: the guest reported %" PRIu64 " MISMATCH "
			"line(s), %" PRIu64 " mismatching page(s); first: %s\n",
			cs.mismatch_lines, cs.mismatches,
			vm->serial.first_mismatch[0] ? vm->serial.first_mismatch
						     : "(none)");
		if (code == MIGVM_EXIT_OK)
			code = MIGVM_EXIT_MISMATCH;
	}
	control_close(ctl);
	vm_destroy(vm);
	mig_tls_free(tls);
	free(vm);
	vm_config_free(&cfg);
	if (console_fd != STDOUT_FILENO)
		close(console_fd);
	close(sigfd);
	return code;

fail_vm:
	control_close(ctl);
	/* The VM never ran: a partial console line restored from a state
	 * file is not this process's output. */
	vm->serial.line_len = 0;
	vm_destroy(vm);
fail:
	fprintf(stderr, "migvm: %s\n", err.msg[0] ? err.msg : strerror(-r));
	snapfile_close(sf);
	pvh_close(img);
	vm_config_free(&cfg);
	mig_tls_free(tls);
	free(vm);
	if (console_fd >= 0 && console_fd != STDOUT_FILENO)
		close(console_fd);
	if (sigfd >= 0)
		close(sigfd);
	return MIGVM_EXIT_ERROR;
}

int main(int argc, char **argv)
{
	struct options o;

	if (argc > 1 && !strcmp(argv[1], "ctl"))
		return ctl_main(argc - 1, argv + 1);
	if (parse_options(argc, argv, &o) < 0) {
		fprintf(stderr, "Try 'migvm --help'.\n");
		return MIGVM_EXIT_USAGE;
	}
	return run_vm(&o);
}
