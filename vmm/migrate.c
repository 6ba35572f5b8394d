/*
 * Live migration for migvm through libmigrate's public API, as any embedder
 * would do it: the VM's regions, fds and ops go in, a JSON result comes out.
 * Both directions run asynchronously in the library's threads; the main
 * loop learns of the end through migrate_fd() and calls migrate_finish().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "events.h"
#include "vm.h"

struct migration {
	struct vm *vm;
	bool incoming;
	int efd;                 /* readable once the migration ended */
	mig_source *src;
	mig_dest *dst;
	FILE *json;              /* where the result goes (stdout) */
	mig_stats *stats;
};

static void on_done(const mig_error *err, void *opaque)
{
	struct vm *vm = opaque;
	uint64_t one = 1;
	(void)err;
	/* The library calls this from its thread: only wake the main loop. */
	if (write(vm->migration->efd, &one, sizeof(one)) < 0)
		perror("migvm: eventfd");
}

static void on_log(mig_log_level lvl, const char *msg, void *opaque)
{
	struct timespec ts;

	(void)opaque;
	if (getenv("MIGVM_DEBUG")) {
		/* Monotonic ms: the same clock on both sides of a loopback
		 * migration, so the two logs interleave. */
		clock_gettime(CLOCK_MONOTONIC, &ts);
		fprintf(stderr, "migvm: %.3f libmigrate: %s\n",
			(double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6, msg);
	} else if (lvl <= MIG_LOG_WARN) {
		fprintf(stderr, "migvm: libmigrate: %s\n", msg);
	}
}

static void fill_vm(struct vm *vm, mig_vm *out)
{
	const mig_region *regions;
	/* The library copies the fds at create; one thread creates. */
	static int fds[VM_MAX_VCPUS];

	memset(out, 0, sizeof(*out));
	out->vm_fd = vm->vm_fd;
	out->nr_regions = vm_regions(vm, &regions);
	out->regions = regions;
	for (uint32_t i = 0; i < vm->nr_vcpus; i++)
		fds[i] = vm->vcpus[i].fd;
	out->vcpu_fds = fds;
	out->nr_vcpus = vm->nr_vcpus;
	out->cpuid = vm->cpuid;
	out->cpuid_len = vm->cpuid_len;
	out->ops = &vm_mig_ops;
	out->opaque = vm;
}

static struct migration *migration_new(struct vm *vm, bool incoming,
				       mig_error *err)
{
	struct migration *m;

	if (vm->migration) {
		vmm_err(err, -EBUSY, "a migration is already in progress");
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (m)
		m->stats = calloc(1, sizeof(*m->stats));
	if (!m || !m->stats) {
		free(m);
		vmm_err(err, -ENOMEM, "out of memory");
		return NULL;
	}
	m->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->efd < 0) {
		vmm_err(err, -errno, "eventfd: %s", strerror(errno));
		free(m->stats);
		free(m);
		return NULL;
	}
	m->vm = vm;
	m->incoming = incoming;
	m->json = stdout;
	vm->migration = m;
	return m;
}

static void migration_free(struct migration *m)
{
	if (!m)
		return;
	mig_source_destroy(m->src);
	mig_dest_destroy(m->dst);
	if (m->efd >= 0)
		close(m->efd);
	m->vm->migration = NULL;
	free(m->stats);
	free(m);
}

/* A small file whole (a key, PEM text), NUL-terminated: at most `max`
 * bytes, or -EFBIG. */
static int slurp(const char *path, size_t max, char **out, size_t *len,
		 mig_error *e)
{
	char *buf = malloc(max + 2);
	size_t n = 0;
	int fd, r = 0;

	if (!buf)
		return vmm_err(e, -ENOMEM, "%s: out of memory", path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		free(buf);
		return vmm_err(e, r, "%s: %s", path, strerror(-r));
	}
	while (n <= max) {
		ssize_t k = read(fd, buf + n, max + 1 - n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = vmm_err(e, -errno, "%s: %s", path, strerror(errno));
			break;
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	if (!r && n > max)
		r = vmm_err(e, -EFBIG, "%s: longer than %zu bytes", path, max);
	if (r) {
		explicit_bzero(buf, max + 2);
		free(buf);
		return r;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

static int x509_load(const struct tls_opts *o, bool incoming, mig_tls **out,
		     mig_error *e)
{
	static const char *const names[2][2] = {
		{ "client-cert.pem", "client-key.pem" },
		{ "server-cert.pem", "server-key.pem" },
	};
	const char *want[3] = { "ca-cert.pem", names[incoming][0],
				names[incoming][1] };
	char *pem[3] = { NULL, NULL, NULL };
	char path[4096];
	size_t len;
	int r = 0;

	for (int i = 0; i < 3 && r == 0; i++) {
		snprintf(path, sizeof(path), "%s/%s", o->x509_dir, want[i]);
		if ((r = slurp(path, 1u << 20, &pem[i], &len, e)) < 0)
			vmm_err_prefix(e, "--tls-x509-dir: ");
	}
	if (r == 0 &&
	    (r = mig_tls_x509(out, pem[0], pem[1], pem[2], o->peer_name, e)) < 0)
		vmm_err_prefix(e, "--tls-x509-dir %s: ", o->x509_dir);
	for (int i = 0; i < 3; i++) {
		if (pem[i])
			explicit_bzero(pem[i], strlen(pem[i]));
		free(pem[i]);
	}
	return r;
}

int migrate_tls_load(const struct tls_opts *o, bool incoming, mig_tls **out,
		     mig_error *e)
{
	char *key;
	size_t len;
	int r;

	*out = NULL;
	if (o->psk_file && o->x509_dir)
		return vmm_err(e, -EINVAL, "--tls-psk-file and --tls-x509-dir: "
			       "one kind of credentials, not both");
	if (o->x509_dir) {
		if (!incoming && !o->peer_name)
			fprintf(stderr, "migvm: warning: --tls-x509-dir without "
				"--tls-hostname: any certificate the CA signed "
				"is taken for the destination\n");
		return x509_load(o, incoming, out, e);
	}
	if ((o->identity || o->peer_name) && !o->psk_file)
		return vmm_err(e, -EINVAL, o->identity
			       ? "--tls-identity goes with --tls-psk-file"
			       : "--tls-hostname goes with --tls-x509-dir");
	if (!o->psk_file)
		return 0;
	/* raw bytes, cut at nothing: a key over the limit is refused */
	if ((r = slurp(o->psk_file, 256, &key, &len, e)) < 0) {
		vmm_err_prefix(e, "--tls-psk-file: ");
		return r;
	}
	r = mig_tls_psk(out, o->identity ? o->identity : "migrate", key, len, e);
	explicit_bzero(key, len);
	free(key);
	if (r < 0)
		vmm_err_prefix(e, "--tls-psk-file %s: ", o->psk_file);
	return r;
}

int migrate_out_start(struct vm *vm, const char *uri, const char *token,
		      const mig_params *params, mig_tls *tls, mig_error *err)
{
	mig_source_config cfg = { 0 };
	struct migration *m = migration_new(vm, false, err);
	int r;

	if (!m)
		return err->code;
	fill_vm(vm, &cfg.vm);
	cfg.params = *params;
	cfg.uri = uri;
	cfg.token = token;
	cfg.cb.done = on_done;
	cfg.cb.log = on_log;
	r = mig_source_create(&m->src, &cfg, err);
	if (r == 0)
		r = mig_source_set_tls(m->src, tls, err);
	if (r == 0)
		r = mig_source_start(m->src, err);
	if (r < 0)
		migration_free(m);
	return r;
}

int migrate_in_start(struct vm *vm, const char *uri, const char *token,
		     uint32_t timeout_ms, mig_tls *tls, mig_error *err)
{
	mig_dest_config cfg = { 0 };
	struct migration *m = migration_new(vm, true, err);
	int r;

	if (!m)
		return err->code;
	vm_forget_loaded_items(vm);
	fill_vm(vm, &cfg.vm);
	cfg.uri = uri;
	cfg.token = token;
	cfg.timeout_ms = timeout_ms;
	/* vm_load_state() sets KVM and serial state only: it may run while
	 * the last pages arrive. */
	cfg.load_state_early = 1;
	cfg.cb.done = on_done;
	cfg.cb.log = on_log;
	r = mig_dest_create(&m->dst, &cfg, err);
	if (r == 0)
		r = mig_dest_set_tls(m->dst, tls, err);
	if (r == 0) {
		/* Scripts wait for this line to know the port (port 0 = any). */
		fprintf(stderr, "migvm: incoming migration %s\n", tls
			? "over TLS 1.3" : "in clear (no --tls-*: readable and "
			  "changeable on the path)");
		fprintf(stderr, "migvm: incoming migration on port %d\n",
			mig_dest_port(m->dst));
		events_incoming_port(mig_dest_port(m->dst));
		r = mig_dest_start(m->dst, err);
	}
	if (r < 0)
		migration_free(m);
	return r;
}

bool migrate_is_incoming(struct vm *vm)
{
	return vm->migration && vm->migration->incoming;
}

int migrate_fd(struct vm *vm)
{
	return vm->migration ? vm->migration->efd : -1;
}

int migrate_cancel(struct vm *vm)
{
	struct migration *m = vm->migration;
	if (!m)
		return -ENOENT;
	return m->incoming ? mig_dest_cancel(m->dst) : mig_source_cancel(m->src);
}

int migrate_set_param(struct vm *vm, const char *key, const char *value,
		      mig_error *e)
{
	struct migration *m = vm->migration;

	if (!m || m->incoming)
		return vmm_err(e, -ENOENT, "set %s: no outgoing migration in "
			       "progress", key ? key : "");
	return mig_source_set_param(m->src, key, value, e);
}

int migrate_stats(struct vm *vm, mig_stats *out)
{
	struct migration *m = vm->migration;
	if (!m)
		return -ENOENT;
	return m->incoming ? mig_dest_stats(m->dst, out)
			   : mig_source_stats(m->src, out);
}

int migrate_finish(struct vm *vm, bool *committed, mig_error *err)
{
	struct migration *m = vm->migration;
	char *json;
	int r, n;

	*committed = false;
	if (!m)
		return vmm_err(err, -ENOENT, "no migration");
	if (m->incoming) {
		r = mig_dest_wait(m->dst, err);
		mig_dest_stats(m->dst, m->stats);
		if (r < 0)
			vm_forget_loaded_items(vm);
	} else {
		r = mig_source_wait(m->src, err);
		mig_source_stats(m->src, m->stats);
		*committed = r == 0;
	}
	/* Typed, for programs (migd reads it in the control's Status). */
	struct migration_end *e = &vm->last_migration;
	e->seq++;
	e->incoming = m->incoming;
	e->ok = r == 0;
	e->error = r;
	snprintf(e->message, sizeof(e->message), "%s", r ? err->msg : "");
	e->rounds = m->stats->rounds;
	e->downtime_us = m->stats->downtime_us;
	e->total_time_us = m->stats->total_time_us;
	e->pages_sent = m->stats->pages_sent;
	e->bytes_on_wire = m->stats->bytes_on_wire;
	/* One JSON object on stdout: what scripts and experiments read. */
	n = mig_stats_json(m->stats, err, NULL, 0);
	json = n > 0 ? malloc((size_t)n + 1) : NULL;
	if (json) {
		mig_stats_json(m->stats, err, json, (size_t)n + 1);
		fprintf(m->json, "%s\n", json);
		fflush(m->json);
		free(vm->migration_result);
		vm->migration_result = json;   /* for the control channel */
	}
	migration_free(m);
	return r;
}
