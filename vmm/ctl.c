/*
 * `migvm ctl SOCKET pause|resume|status|save FILE|quit|throttle PCT|
 * migrate URI TOKEN [KEY=VALUE ...]|cancel|input TEXT`: a
 * small client of the control channel for tests and people. `status`
 * prints one JSON object; the others print {"ok":true} or the error on
 * stderr.
 * `input TEXT` types TEXT on the guest's serial console, with the escapes
 * \n \r \t \\ and \xHH (no newline is added).
 * `raw HEX` (for tests) sends the bytes HEX as they are, framing included,
 * and reports the response like the others.
 * Exit: 0 ok, 1 the request failed or migvm is unreachable, 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "msgio.h"
#include "vm.h"

#define CTL_FRAME_MAX (1u << 20)
#define CTL_TIMEOUT_MS 300000 /* a save of a big guest takes a while */

static void usage(void)
{
	fprintf(stderr, "usage: migvm ctl SOCKET pause|resume|status|"
		"save FILE|quit|throttle PCT|\n"
		"       migrate URI TOKEN [KEY=VALUE ...]|cancel|input TEXT|"
		"raw HEX\n");
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* TEXT with \n \r \t \\ \xHH into out (at least strlen(text) bytes);
 * returns the length, or -1 for a bad escape. */
static long unescape(const char *text, uint8_t *out)
{
	size_t n = 0;

	for (const char *p = text; *p; p++) {
		if (*p != '\\') {
			out[n++] = (uint8_t)*p;
			continue;
		}
		switch (*++p) {
		case 'n': out[n++] = '\n'; break;
		case 'r': out[n++] = '\r'; break;
		case 't': out[n++] = '\t'; break;
		case '\\': out[n++] = '\\'; break;
		case 'x': {
			int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
			if (lo < 0)
				return -1;
			out[n++] = (uint8_t)(hi << 4 | lo);
			p += 2;
			break;
		}
		default:
			return -1;
		}
	}
	return (long)n;
}

static void print_status(const Mig__Ctl__Status *s)
{
	const Mig__Ctl__MigrationProgress *p = s->progress;

	printf("{\"run_state\":");
	json_string(stdout, s->run_state ? s->run_state : "");
	printf(",\"hb_seq\":%llu,\"ticks\":%llu,\"written\":%llu,"
	       "\"verified\":%llu,\"mismatches\":%llu,\"hb_lines\":%llu,"
	       "\"mismatch_lines\":%llu,\"cpus\":%u,\"mem_mib\":%llu,"
	       "\"guest_pages\":%llu",
	       (unsigned long long)s->hb_seq, (unsigned long long)s->ticks,
	       (unsigned long long)s->written,
	       (unsigned long long)s->verified,
	       (unsigned long long)s->mismatches,
	       (unsigned long long)s->hb_lines,
	       (unsigned long long)s->mismatch_lines, s->cpus,
	       (unsigned long long)s->mem_mib,
	       (unsigned long long)s->guest_pages);
	if (p) {
		printf(",\"progress\":{\"phase\":");
		json_string(stdout, p->phase ? p->phase : "");
		printf(",\"rounds\":%u,\"pages_sent\":%llu,\"bytes_on_wire\":"
		       "%llu,\"expected_downtime_us\":%llu,\"throttle_pct\":%u,"
		       "\"throughput\":%.0f,\"dirty_rate\":%.0f,"
		       "\"total_time_us\":%llu}", p->rounds,
		       (unsigned long long)p->pages_sent,
		       (unsigned long long)p->bytes_on_wire,
		       (unsigned long long)p->expected_downtime_us,
		       p->throttle_pct, p->throughput, p->dirty_rate,
		       (unsigned long long)p->total_time_us);
	}
	/* The last result as a JSON string, as migvm keeps it. */
	printf(",\"migration\":");
	json_string(stdout, s->migration ? s->migration : "");
	printf("}\n");
}

int ctl_main(int argc, char **argv)
{
	Mig__Ctl__Request req = MIG__CTL__REQUEST__INIT;
	Mig__Ctl__Empty empty = MIG__CTL__EMPTY__INIT;
	Mig__Ctl__SaveState save = MIG__CTL__SAVE_STATE__INIT;
	Mig__Ctl__Throttle thr = MIG__CTL__THROTTLE__INIT;
	Mig__Ctl__Param setp = MIG__CTL__PARAM__INIT;
	Mig__Ctl__ConsoleInput input = MIG__CTL__CONSOLE_INPUT__INIT;
	Mig__Ctl__Migrate mig = MIG__CTL__MIGRATE__INIT;
	Mig__Ctl__Param params[32], *pp[32];
	Mig__Ctl__Response *resp;
	const char *cmd;
	char *path = NULL;
	uint8_t *raw = NULL, *input_buf = NULL;
	size_t raw_len = 0;
	int fd, r, ret = 1;

	signal(SIGPIPE, SIG_IGN);
	/* argv: ctl SOCKET CMD [ARG] */
	if (argc < 3) {
		usage();
		return MIGVM_EXIT_USAGE;
	}
	cmd = argv[2];
	if (!strcmp(cmd, "pause") && argc == 3) {
		req.req_case = MIG__CTL__REQUEST__REQ_PAUSE;
		req.pause = &empty;
	} else if (!strcmp(cmd, "resume") && argc == 3) {
		req.req_case = MIG__CTL__REQUEST__REQ_RESUME;
		req.resume = &empty;
	} else if (!strcmp(cmd, "status") && argc == 3) {
		req.req_case = MIG__CTL__REQUEST__REQ_STATUS;
		req.status = &empty;
	} else if (!strcmp(cmd, "quit") && argc == 3) {
		req.req_case = MIG__CTL__REQUEST__REQ_QUIT;
		req.quit = &empty;
	} else if (!strcmp(cmd, "save") && argc == 4) {
		char *abs = realpath(".", NULL);
		/* migvm may run elsewhere: send an absolute path. */
		if (argv[3][0] != '/' && abs) {
			if (asprintf(&path, "%s/%s", abs, argv[3]) < 0)
				path = NULL;
		} else {
			path = strdup(argv[3]);
		}
		free(abs);
		save.path = path;
		if (!path) {
			fprintf(stderr, "migvm ctl: out of memory\n");
			return 1;
		}
		req.req_case = MIG__CTL__REQUEST__REQ_SAVE;
		req.save = &save;
	} else if (!strcmp(cmd, "throttle") && argc == 4) {
		char *end;
		unsigned long v = strtoul(argv[3], &end, 10);
		if (!*argv[3] || *end || v > 99) {
			fprintf(stderr, "migvm ctl: throttle %s: a percentage "
				"0..99\n", argv[3]);
			return MIGVM_EXIT_USAGE;
		}
		thr.pct = (uint32_t)v;
		req.req_case = MIG__CTL__REQUEST__REQ_THROTTLE;
		req.throttle = &thr;
	} else if (!strcmp(cmd, "set") && argc == 4) {
		char *eq = strchr(argv[3], '=');
		if (!eq || eq == argv[3]) {
			fprintf(stderr, "migvm ctl: set %s: expected KEY=VALUE "
				"(max_bandwidth=1G, downtime_ms=100)\n", argv[3]);
			return MIGVM_EXIT_USAGE;
		}
		*eq = '\0';
		setp.key = argv[3];
		setp.value = eq + 1;
		req.req_case = MIG__CTL__REQUEST__REQ_SET_PARAM;
		req.set_param = &setp;
	} else if (!strcmp(cmd, "cancel") && argc == 3) {
		req.req_case = MIG__CTL__REQUEST__REQ_CANCEL;
		req.cancel = &empty;
	} else if (!strcmp(cmd, "migrate") && argc >= 5 && argc - 5 <= 32) {
		mig.uri = argv[3];
		mig.token = argv[4];
		for (int i = 5; i < argc; i++) {
			char *eq = strchr(argv[i], '=');
			if (!eq || eq == argv[i]) {
				fprintf(stderr, "migvm ctl: migrate: %s: expected "
					"KEY=VALUE\n", argv[i]);
				return MIGVM_EXIT_USAGE;
			}
			*eq = '\0';
			mig__ctl__param__init(&params[i - 5]);
			params[i - 5].key = argv[i];
			params[i - 5].value = eq + 1;
			pp[i - 5] = &params[i - 5];
		}
		mig.n_params = (size_t)(argc - 5);
		mig.params = pp;
		req.req_case = MIG__CTL__REQUEST__REQ_MIGRATE;
		req.migrate = &mig;
	} else if (!strcmp(cmd, "input") && argc == 4) {
		long len;
		input_buf = malloc(strlen(argv[3]) + 1);
		if (!input_buf) {
			fprintf(stderr, "migvm ctl: out of memory\n");
			return 1;
		}
		len = unescape(argv[3], input_buf);
		if (len <= 0) {
			fprintf(stderr, "migvm ctl: input: %s (escapes: \\n "
				"\\r \\t \\\\ \\xHH)\n", len ? "a bad escape" :
				"no bytes");
			free(input_buf);
			return MIGVM_EXIT_USAGE;
		}
		input.data.data = input_buf;
		input.data.len = (size_t)len;
		req.req_case = MIG__CTL__REQUEST__REQ_INPUT;
		req.input = &input;
	} else if (!strcmp(cmd, "raw") && argc == 4) {
		size_t hl = strlen(argv[3]);
		raw = malloc(hl / 2 + 1);
		if (!raw || hl % 2) {
			fprintf(stderr, "migvm ctl: raw: an even number of hex "
				"digits\n");
			free(raw);
			return MIGVM_EXIT_USAGE;
		}
		for (size_t i = 0; i < hl; i += 2) {
			unsigned int b;
			if (sscanf(argv[3] + i, "%2x", &b) != 1) {
				fprintf(stderr, "migvm ctl: raw: bad hex\n");
				free(raw);
				return MIGVM_EXIT_USAGE;
			}
			raw[raw_len++] = (uint8_t)b;
		}
	} else {
		fprintf(stderr, "migvm ctl: unknown command or wrong arguments: "
			"%s\n", cmd);
		usage();
		return MIGVM_EXIT_USAGE;
	}

	fd = msgio_connect_unix(argv[1]);
	if (fd < 0) {
		fprintf(stderr, "migvm ctl: cannot connect to %s: %s\n", argv[1],
			strerror(-fd));
		goto out_free;
	}
	r = raw ? write_full(fd, raw, raw_len)
		: msgio_send(fd, &req.base, CTL_TIMEOUT_MS);
	if (r < 0) {
		fprintf(stderr, "migvm ctl: send: %s\n", strerror(-r));
		goto out_close;
	}
	r = msgio_recv(fd, &mig__ctl__response__descriptor, CTL_FRAME_MAX,
		       CTL_TIMEOUT_MS, (ProtobufCMessage **)&resp);
	if (r < 0) {
		fprintf(stderr, "migvm ctl: no response: %s\n",
			r == -EMSGSIZE ? "over 1 MiB" :
			r == -EBADMSG ? "it does not decode" : strerror(-r));
		goto out_close;
	}
	if (!resp->ok) {
		fprintf(stderr, "migvm ctl: %s failed: %s (%s)\n", cmd,
			resp->message, mig_err_name(resp->error));
	} else if (resp->status) {
		print_status(resp->status);
		ret = 0;
	} else {
		printf("{\"ok\":true}\n");
		ret = 0;
	}
	mig__ctl__response__free_unpacked(resp, NULL);
out_close:
	close(fd);
out_free:
	free(path);
	free(raw);
	free(input_buf);
	return ret;
}
