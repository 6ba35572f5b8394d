/*
 * migctl: the CLI of migd. One request per command over the daemon's unix
 * socket (daemon.proto); `migrate` then polls `status` for progress.
 * Exit: 0 ok, 1 the request failed (the message says why), 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.pb-c.h"
#include "msgio.h"

#define FRAME_MAX (1u << 20)
#define DEFAULT_SOCKET "/run/migd/migd.sock"

static const char *sock_path = DEFAULT_SOCKET;
static bool as_json;

static void usage(FILE *f)
{
	fprintf(f,
"usage: migctl [--socket SOCK] [--json] COMMAND\n"
"\n"
"  start NAME [--kernel FILE [--initrd FILE]] [--cmdline C] --mem MIB\n"
"        --cpus N\n"
"  list\n"
"  status NAME\n"
"  migrate NAME --to HOST[:PORT] [--downtime-ms N] [--max-bandwidth B]\n"
"          [--compress off|on|auto] [--connections N] [--no-wait]\n"
"  cancel NAME\n"
"  stop NAME\n"
"  stats NAME\n"
"\n"
"  --socket SOCK   migd's control socket (default %s, or $MIGD_SOCKET)\n"
"  --json          print JSON (one object per command) for scripts\n"
"  -h, --help      this text\n"
"\n"
"Exit: 0 ok, 1 failed (the daemon says why), 2 usage.\n", DEFAULT_SOCKET);
}

/* One request, one response; NULL after printing why. */
static Mig__D__Response *call(Mig__D__Request *req)
{
	Mig__D__Response *resp = NULL;
	int fd = msgio_connect_unix(sock_path), r;

	if (fd < 0) {
		fprintf(stderr, "migctl: migd is not running (cannot connect "
			"to %s: %s)\n", sock_path, strerror(-fd));
		return NULL;
	}
	r = msgio_send(fd, &req->base, 10000);
	if (r == 0)
		r = msgio_recv(fd, &mig__d__response__descriptor, FRAME_MAX,
			       30000, (ProtobufCMessage **)&resp);
	close(fd);
	if (r < 0)
		fprintf(stderr, "migctl: no answer from migd at %s: %s\n",
			sock_path, strerror(-r));
	return resp;
}

/* PATH made absolute (malloc'd), or NULL after saying why. */
static char *abs_path(const char *what, const char *path)
{
	char *p = realpath(path, NULL);

	if (!p)
		fprintf(stderr, "migctl: %s %s: %s\n", what, path,
			strerror(errno));
	return p;
}

static void print_vm_json(const Mig__D__VmInfo *v)
{
	const Mig__D__VmConfig *c = v->config;
	printf("{\"name\":");
	json_string(stdout, v->name);
	printf(",\"state\":");
	json_string(stdout, v->state);
	printf(",\"mem_mib\":%llu,\"cpus\":%u,\"cmdline\":",
	       c ? (unsigned long long)c->mem_mib : 0ULL, c ? c->cpus : 0);
	json_string(stdout, c ? c->cmdline : "");
	printf(",\"kernel\":");
	json_string(stdout, c ? c->kernel : "");
	printf(",\"initrd\":");
	json_string(stdout, c ? c->initrd : "");
	printf(",\"pid\":%d,\"run_state\":", v->pid);
	json_string(stdout, v->run_state);
	printf(",\"hb_lines\":%llu,\"hb_seq\":%llu,\"mismatches\":%llu,"
	       "\"mismatch_lines\":%llu,\"exit_status\":%d,\"control\":",
	       (unsigned long long)v->hb_lines, (unsigned long long)v->hb_seq,
	       (unsigned long long)v->mismatches,
	       (unsigned long long)v->mismatch_lines, v->exit_status);
	json_string(stdout, v->control);
	printf(",\"console\":");
	json_string(stdout, v->console);
	printf(",\"migration_id\":");
	json_string(stdout, v->migration_id);
	printf(",\"peer\":");
	json_string(stdout, v->peer);
	printf(",\"last_error\":");
	json_string(stdout, v->last_error);
	if (v->progress) {
		const Mig__D__Progress *p = v->progress;
		printf(",\"progress\":{\"phase\":");
		json_string(stdout, p->phase);
		printf(",\"rounds\":%u,\"pages_sent\":%llu,\"guest_pages\":%llu,"
		       "\"bytes_on_wire\":%llu,\"expected_downtime_ms\":%.1f,"
		       "\"throughput\":%.0f,\"dirty_rate\":%.0f,"
		       "\"throttle_pct\":%u}", p->rounds,
		       (unsigned long long)p->pages_sent,
		       (unsigned long long)p->guest_pages,
		       (unsigned long long)p->bytes_on_wire,
		       p->expected_downtime_us / 1e3, p->throughput,
		       p->dirty_rate, p->throttle_pct);
	}
	/* The migration result is JSON already: embed it as an object. */
	printf(",\"last_result\":%s}", v->last_result && v->last_result[0] == '{'
	       ? v->last_result : "null");
}

static void print_vm_text(const Mig__D__VmInfo *v)
{
	const Mig__D__VmConfig *c = v->config;
	printf("name:       %s\nstate:      %s%s%s\n", v->name, v->state,
	       v->run_state && v->run_state[0] ? " / guest " : "",
	       v->run_state ? v->run_state : "");
	if (c)
		printf("config:     %llu MiB, %u vCPUs%s%s%s%s%s%s\n",
		       (unsigned long long)c->mem_mib, c->cpus,
		       c->kernel[0] ? ", kernel " : "", c->kernel,
		       c->initrd[0] ? ", initrd " : "", c->initrd,
		       c->cmdline[0] ? ", cmdline " : "", c->cmdline);
	if (v->pid)
		printf("migvm:      pid %d, control %s\n", v->pid, v->control);
	printf("console:    %s\n", v->console);
	if (v->hb_lines)
		printf("guest:      %llu heartbeats (seq %llu), %llu "
		       "mismatches\n", (unsigned long long)v->hb_lines,
		       (unsigned long long)v->hb_seq,
		       (unsigned long long)v->mismatches);
	if (v->peer[0])
		printf("migration:  %s %s%s\n", v->migration_id,
		       !strcmp(v->state, "incoming") ? "from " : "to ",
		       v->peer);
	if (v->last_error[0])
		printf("last error: %s\n", v->last_error);
	if (v->last_result[0])
		printf("result:     %s\n", v->last_result);
}

static int cmd_migrate(const char *name, bool wait)
{
	Mig__D__Request req = MIG__D__REQUEST__INIT;
	Mig__D__NameReq nr = MIG__D__NAME_REQ__INIT;
	bool tty = isatty(STDOUT_FILENO) && !as_json;
	struct timespec t0, t;
	int ret = 1;

	if (!wait)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	nr.name = (char *)name;
	req.req_case = MIG__D__REQUEST__REQ_STATUS;
	req.status = &nr;
	for (;;) {
		Mig__D__Response *r = call(&req);
		const Mig__D__VmInfo *v;
		if (!r)
			return 1;
		if (!r->ok || r->n_vms != 1) {
			fprintf(stderr, "migctl: %s\n", r->message);
			mig__d__response__free_unpacked(r, NULL);
			return 1;
		}
		v = r->vms[0];
		if (strcmp(v->state, "migrating")) {
			const Mig__D__LastMigration *lm = v->last_migration;
			if (tty)
				printf("\r\033[K");
			if (!strcmp(v->state, "migrated")) {
				ret = 0;
				if (as_json) {
					print_vm_json(v);
					putchar('\n');
				} else {
					if (lm && !lm->incoming)
						printf("%s migrated to %s: downtime "
						       "%.1f ms, total %.1f ms, %u "
						       "rounds\n", name, v->peer,
						       lm->downtime_us / 1e3,
						       lm->total_time_us / 1e3,
						       lm->rounds);
					else
						printf("%s migrated to %s\n", name,
						       v->peer);
				}
			} else {
				if (as_json) {
					print_vm_json(v);
					putchar('\n');
				}
				fprintf(stderr, "migctl: %s; %s is %s here\n",
					v->last_error, name, v->state);
			}
			mig__d__response__free_unpacked(r, NULL);
			return ret;
		}
		if (tty && v->progress) {
			const Mig__D__Progress *p = v->progress;
			clock_gettime(CLOCK_MONOTONIC, &t);
			printf("\r\033[K%s: %-8s round %u, %llu pages sent "
			       "(%.0f%% of RAM), %.1f MB/s, dirty %.0f p/s, "
			       "expected downtime %.0f ms, %.0f s",
			       name, p->phase, p->rounds,
			       (unsigned long long)p->pages_sent,
			       p->guest_pages ? 100.0 * (double)p->pages_sent /
					(double)p->guest_pages : 0.0,
			       p->throughput / 1e6, p->dirty_rate,
			       p->expected_downtime_us / 1e3,
			       (double)(t.tv_sec - t0.tv_sec));
			fflush(stdout);
		}
		mig__d__response__free_unpacked(r, NULL);
		usleep(250000);
	}
}

int main(int argc, char **argv)
{
	static const struct option global[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const struct option cmdopts[] = {
		{ "kernel", required_argument, NULL, 'k' },
		{ "initrd", required_argument, NULL, 'i' },
		{ "cmdline", required_argument, NULL, 'c' },
		{ "mem", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'p' },
		{ "to", required_argument, NULL, 't' },
		{ "downtime-ms", required_argument, NULL, 'P' },
		{ "max-bandwidth", required_argument, NULL, 'P' },
		{ "compress", required_argument, NULL, 'P' },
		{ "connections", required_argument, NULL, 'P' },
		{ "no-wait", no_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 },
	};
	Mig__D__Request req = MIG__D__REQUEST__INIT;
	Mig__D__VmConfig cfg = MIG__D__VM_CONFIG__INIT;
	Mig__D__NameReq nr = MIG__D__NAME_REQ__INIT;
	Mig__D__MigrateReq mr = MIG__D__MIGRATE_REQ__INIT;
	Mig__D__Empty empty = MIG__D__EMPTY__INIT;
	Mig__D__Param params[8], *pp[8];
	Mig__D__Response *resp;
	const char *cmd, *name = NULL, *env = getenv("MIGD_SOCKET");
	bool wait = true, needs_name;
	int c, li, ret;

	signal(SIGPIPE, SIG_IGN);
	if (env && *env)
		sock_path = env;
	while ((c = getopt_long(argc, argv, "+h", global, NULL)) != -1) {
		switch (c) {
		case 's': sock_path = optarg; break;
		case 'j': as_json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind++];
	needs_name = strcmp(cmd, "list") != 0;
	if (needs_name) {
		if (optind >= argc || argv[optind][0] == '-') {
			fprintf(stderr, "migctl: %s needs a VM name\n", cmd);
			return 2;
		}
		name = argv[optind++];
	}
	/* Command options come after the name. */
	optind--;
	argv[optind] = (char *)cmd;
	{
		int sub_argc = argc - optind;
		char **sub_argv = argv + optind;
		optind = 1;
		while ((c = getopt_long(sub_argc, sub_argv, "", cmdopts,
					&li)) != -1) {
			switch (c) {
			case 'k': cfg.kernel = optarg; break;
			case 'i': cfg.initrd = optarg; break;
			case 'c': cfg.cmdline = optarg; break;
			case 'm': cfg.mem_mib = strtoull(optarg, NULL, 10); break;
			case 'p': cfg.cpus = (uint32_t)strtoul(optarg, NULL, 10);
				break;
			case 't': mr.to = optarg; break;
			case 'n': wait = false; break;
			case 'P':
				if (mr.n_params >= 8)
					break;
				mig__d__param__init(&params[mr.n_params]);
				params[mr.n_params].key =
					(char *)cmdopts[li].name;
				params[mr.n_params].value = optarg;
				pp[mr.n_params] = &params[mr.n_params];
				mr.n_params++;
				break;
			default:
				fprintf(stderr, "migctl: %s: bad option\n", cmd);
				return 2;
			}
		}
		if (optind < sub_argc) {
			fprintf(stderr, "migctl: unexpected argument %s\n",
				sub_argv[optind]);
			return 2;
		}
	}
	nr.name = (char *)name;
	if (!strcmp(cmd, "start")) {
		if (!cfg.mem_mib || !cfg.cpus) {
			fprintf(stderr, "migctl: start needs --mem MIB and "
				"--cpus N\n");
			return 2;
		}
		/* Unset strings are "" (protobuf's default), not NULL. */
		bool kernel = cfg.kernel && cfg.kernel[0];
		bool initrd = cfg.initrd && cfg.initrd[0];
		if (initrd && !kernel) {
			fprintf(stderr, "migctl: --initrd goes with --kernel\n");
			return 2;
		}
		/* migd runs elsewhere: it gets absolute paths. */
		if ((kernel && !(cfg.kernel = abs_path("kernel", cfg.kernel))) ||
		    (initrd && !(cfg.initrd = abs_path("initrd", cfg.initrd))))
			return 2;
		cfg.name = (char *)name;
		req.req_case = MIG__D__REQUEST__REQ_START;
		req.start = &cfg;
	} else if (!strcmp(cmd, "list")) {
		req.req_case = MIG__D__REQUEST__REQ_LIST;
		req.list = &empty;
	} else if (!strcmp(cmd, "status")) {
		req.req_case = MIG__D__REQUEST__REQ_STATUS;
		req.status = &nr;
	} else if (!strcmp(cmd, "stats")) {
		req.req_case = MIG__D__REQUEST__REQ_STATS;
		req.stats = &nr;
	} else if (!strcmp(cmd, "cancel")) {
		req.req_case = MIG__D__REQUEST__REQ_CANCEL;
		req.cancel = &nr;
	} else if (!strcmp(cmd, "stop")) {
		req.req_case = MIG__D__REQUEST__REQ_STOP;
		req.stop = &nr;
	} else if (!strcmp(cmd, "migrate")) {
		if (!mr.to) {
			fprintf(stderr, "migctl: migrate needs --to "
				"HOST[:PORT]\n");
			return 2;
		}
		mr.name = (char *)name;
		mr.params = pp;
		req.req_case = MIG__D__REQUEST__REQ_MIGRATE;
		req.migrate = &mr;
	} else {
		fprintf(stderr, "migctl: unknown command %s\n", cmd);
		usage(stderr);
		return 2;
	}
	resp = call(&req);
	if (!resp)
		return 1;
	if (!resp->ok) {
		if (as_json) {
			printf("{\"ok\":false,\"error\":");
			json_string(stdout, resp->message);
			printf("}\n");
		}
		fprintf(stderr, "migctl: %s: %s\n", cmd, resp->message);
		mig__d__response__free_unpacked(resp, NULL);
		return 1;
	}
	ret = 0;
	if (!strcmp(cmd, "migrate")) {
		if (!as_json && !wait)
			printf("%s: migration started (%s)\n", name,
			       resp->n_vms ? resp->vms[0]->migration_id : "");
		mig__d__response__free_unpacked(resp, NULL);
		return cmd_migrate(name, wait);
	}
	if (as_json) {
		if (!strcmp(cmd, "list")) {
			printf("[");
			for (size_t i = 0; i < resp->n_vms; i++) {
				if (i)
					printf(",");
				print_vm_json(resp->vms[i]);
			}
			printf("]\n");
		} else if (!strcmp(cmd, "stats") && resp->n_vms) {
			const char *r = resp->vms[0]->last_result;
			printf("%s\n", r && r[0] == '{' ? r : "null");
		} else if (resp->n_vms) {
			print_vm_json(resp->vms[0]);
			putchar('\n');
		} else {
			printf("{\"ok\":true}\n");
		}
	} else if (!strcmp(cmd, "list")) {
		printf("%-16s %-10s %8s %4s %8s  %s\n", "NAME", "STATE", "MEM",
		       "CPUS", "PID", "NOTE");
		for (size_t i = 0; i < resp->n_vms; i++) {
			const Mig__D__VmInfo *v = resp->vms[i];
			printf("%-16s %-10s %6llu M %4u %8d  %s\n", v->name,
			       v->state,
			       (unsigned long long)(v->config ? v->config->mem_mib
							      : 0),
			       v->config ? v->config->cpus : 0, v->pid,
			       v->last_error[0] ? v->last_error : v->peer);
		}
	} else if (!strcmp(cmd, "status") || !strcmp(cmd, "stats")) {
		for (size_t i = 0; i < resp->n_vms; i++)
			print_vm_text(resp->vms[i]);
	} else {
		printf("%s: %s\n", name, !strcmp(cmd, "start") ? "started"
		       : !strcmp(cmd, "stop") ? "stopping" : "cancelling");
	}
	mig__d__response__free_unpacked(resp, NULL);
	return ret;
}
