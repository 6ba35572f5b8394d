/*
 * migd: options, the state dir's lock, signals and main(). See migd.h for
 * the other files and daemon/README.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migd.h"

/* ---- main ------------------------------------------------------------ */

static uv_signal_t sig_term, sig_int;
static void on_signal(uv_signal_t *s, int signum)
{
	(void)s;
	mlog(LOG_INFO, NULL, "%s: stopping (VMs keep running; incoming "
	     "reservations are released)", strsignal(signum));
	for (struct vmrec *v = g.vms; v; v = v->next)
		if (v->state == VM_INCOMING && !v->activated)
			vm_kill(v, SIGTERM);
	unlink(g.control_path);
	uv_stop(g.loop);
}

/* One migd per state dir: a second would take back the same VMs. The
 * lock goes with the process (its fd stays open, close-on-exec). */
static int lock_state_dir(void)
{
	char path[PATH_MAX + 16], pid[32];
	int fd;

	snprintf(path, sizeof(path), "%s/migd.lock", g.state_dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "migd: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		ssize_t n = read(fd, pid, sizeof(pid) - 1);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		fprintf(stderr, "migd: another migd (pid %s) uses --state-dir "
			"%s\n", pid[0] ? pid : "?", g.state_dir);
		close(fd);
		return -1;
	}
	if (ftruncate(fd, 0) == 0)
		dprintf(fd, "%d\n", (int)getpid());
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: migd --state-dir DIR --control SOCK [options]\n"
"\n"
"The per-host live-migration daemon: starts and supervises migvm\n"
"processes, answers migctl on a unix socket and migrates VMs to and from\n"
"peer daemons.\n"
"\n"
"  --state-dir DIR        VM configs, control sockets, consoles, logs\n"
"  --control SOCK         the unix socket for migctl (mode 0600; root or\n"
"                         this daemon's user only)\n"
"  --listen HOST:PORT     accept peer daemons there (port %d by default);\n"
"                         needs --psk-file or --tls-x509-dir\n"
"  --psk-file FILE        the pre-shared key peers authenticate with (TLS\n"
"                         1.3 on the peer link)\n"
"  --tls-x509-dir DIR     peers authenticate with certificates instead (TLS\n"
"                         1.3, QEMU's layout): DIR/ca-cert.pem checks them,\n"
"                         DIR/client-{cert,key}.pem are shown to the peers\n"
"                         we migrate to (whose certificate must name the\n"
"                         host of --to), DIR/server-{cert,key}.pem to those\n"
"                         that connect to --listen (which must show one\n"
"                         the CA signed)\n"
"  Either way, each migration's own data connections run TLS 1.3 with a\n"
"  key made for it and sent over the peer link.\n"
"  --no-tls               migrate in clear: guest memory, CPU state and\n"
"                         tokens readable and changeable on the path (a\n"
"                         trusted network only; both daemons alike)\n"
"  --migvm PATH           the migvm binary (default: next to migd, then\n"
"                         PATH)\n"
"  --max-mem MIB          memory this daemon gives to VMs at most (default:\n"
"                         the host's MemAvailable decides)\n"
"  --metrics HOST:PORT    Prometheus metrics over HTTP (off by default)\n"
"  --log-level error|warn|info|debug  (default info)\n"
"  -h, --help             this text\n",
		MIGD_DEFAULT_PORT);
}

static int parse_hostport(const char *s, char **host, int *port)
{
	const char *colon = strrchr(s, ':');
	char *end;
	long p;

	if (!colon) {
		*host = strdup(s);
		*port = MIGD_DEFAULT_PORT;
		return *host ? 0 : -1;
	}
	p = strtol(colon + 1, &end, 10);
	if (*end || colon[1] == '\0' || p < 0 || p > 65535 || colon == s)
		return -1;
	*host = strndup(s, (size_t)(colon - s));
	*port = (int)p;
	return *host ? 0 : -1;
}

static char *default_migvm(void)
{
	char exe[PATH_MAX], *p, *path;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n > 0) {
		exe[n] = '\0';
		p = strrchr(exe, '/');
		if (p) {
			*p = '\0';
			/* build tree: build/daemon/migd -> build/vmm/migvm */
			if (asprintf(&path, "%s/../vmm/migvm", exe) >= 0) {
				if (access(path, X_OK) == 0)
					return path;
				free(path);
			}
			if (asprintf(&path, "%s/migvm", exe) >= 0) {
				if (access(path, X_OK) == 0)
					return path;
				free(path);
			}
		}
	}
	return strdup("migvm");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "control", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, 'l' },
		{ "psk-file", required_argument, NULL, 'k' },
		{ "tls-x509-dir", required_argument, NULL, 'X' },
		{ "no-tls", no_argument, NULL, 'N' },
		{ "migvm", required_argument, NULL, 'm' },
		{ "max-mem", required_argument, NULL, 'M' },
		{ "metrics", required_argument, NULL, 'P' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen = NULL, *psk_file = NULL, *x509_dir = NULL;
	char errbuf[512];
	int c;

	g.log_level = LOG_INFO;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 's': g.state_dir = optarg; break;
		case 'c': g.control_path = optarg; break;
		case 'l': listen = optarg; break;
		case 'k': psk_file = optarg; break;
		case 'X': x509_dir = optarg; break;
		case 'N': g.plain_data = true; break;
		case 'm': g.migvm = strdup(optarg); break;
		case 'P': g.metrics = optarg; break;
		case 'M': {
			char *end;
			g.max_mem_mib = strtoull(optarg, &end, 10);
			if (*end || !g.max_mem_mib) {
				fprintf(stderr, "migd: --max-mem %s: a size in "
					"MiB\n", optarg);
				return 2;
			}
			break;
		}
		case 'L': {
			int i = log_level_parse(optarg);
			if (i < 0) {
				fprintf(stderr, "migd: --log-level %s: error, "
					"warn, info or debug\n", optarg);
				return 2;
			}
			g.log_level = (enum log_level)i;
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		case ':':
			fprintf(stderr, "migd: option %s needs a value\n",
				argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr, "migd: unknown option %s\nTry 'migd "
				"--help'.\n", argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc || !g.state_dir || !g.control_path) {
		fprintf(stderr, "migd: --state-dir and --control are needed%s\n"
			"Try 'migd --help'.\n",
			optind < argc ? " (and no other arguments)" : "");
		return 2;
	}
	if (listen && !psk_file && !x509_dir) {
		fprintf(stderr, "migd: --listen needs --psk-file or "
			"--tls-x509-dir: peers must authenticate\n");
		return 2;
	}
	if (psk_file && x509_dir) {
		fprintf(stderr, "migd: --psk-file and --tls-x509-dir: one or "
			"the other (all daemons that migrate to each other "
			"alike)\n");
		return 2;
	}
	if (listen && parse_hostport(listen, &g.listen_host,
				     &g.listen_port) < 0) {
		fprintf(stderr, "migd: --listen %s: expected HOST:PORT\n",
			listen);
		return 2;
	}
	if (psk_file) {
		/* One byte over the buffer tells a key that does not fit:
		 * refused, never cut. */
		uint8_t key[sizeof(g.psk) + 1];
		int fd = open(psk_file, O_RDONLY | O_CLOEXEC);
		ssize_t n = fd >= 0 ? read(fd, key, sizeof(key)) : -1;
		if (fd >= 0)
			close(fd);
		while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r'))
			n--;
		if (n < MIGD_PSK_MIN || n > (ssize_t)sizeof(g.psk)) {
			int e = errno;
			fprintf(stderr, "migd: --psk-file %s: ", psk_file);
			if (n < 0)
				fprintf(stderr, "%s\n", strerror(e));
			else if (n > (ssize_t)sizeof(g.psk))
				fprintf(stderr, "longer than %zu bytes\n",
					sizeof(g.psk));
			else
				fprintf(stderr, "%zd bytes: a key needs %d at "
					"least (32 random bytes in base64: "
					"head -c 32 /dev/urandom | base64)\n",
					n, MIGD_PSK_MIN);
			explicit_bzero(key, sizeof(key));
			return 1;
		}
		memcpy(g.psk, key, (size_t)n);
		explicit_bzero(key, sizeof(key));
		g.psk_len = (size_t)n;
		if (tls_init_psk(g.psk, g.psk_len, errbuf, sizeof(errbuf)) < 0) {
			fprintf(stderr, "migd: %s\n", errbuf);
			return 1;
		}
	}
	if (x509_dir) {
		if (tls_init_x509(x509_dir, listen != NULL, errbuf,
				  sizeof(errbuf)) < 0) {
			fprintf(stderr, "migd: %s\n", errbuf);
			return 1;
		}
		g.x509 = true;
	}
	if (!g.migvm)
		g.migvm = default_migvm();
	if (mkdir(g.state_dir, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "migd: --state-dir %s: %s\n", g.state_dir,
			strerror(errno));
		return 1;
	}
	g.state_dir = realpath(g.state_dir, NULL);
	if (!g.state_dir) {
		fprintf(stderr, "migd: --state-dir: %s\n", strerror(errno));
		return 1;
	}
	if (lock_state_dir() < 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&g.lock, NULL);
	g.loop = uv_default_loop();
	vm_adopt_all();
	if (api_listen(g.control_path, errbuf, sizeof(errbuf)) < 0 ||
	    (listen && peer_listen(errbuf, sizeof(errbuf)) < 0) ||
	    (g.metrics && metrics_listen(g.metrics, errbuf,
					 sizeof(errbuf)) < 0)) {
		fprintf(stderr, "migd: %s\n", errbuf);
		return 1;
	}
	uv_signal_init(g.loop, &sig_term);
	uv_signal_init(g.loop, &sig_int);
	uv_signal_start(&sig_term, on_signal, SIGTERM);
	uv_signal_start(&sig_int, on_signal, SIGINT);
	if (g.plain_data)
		mlog(LOG_WARN, NULL, "--no-tls: migrations cross the network in "
		     "clear (guest memory, CPU state, tokens): readable and "
		     "changeable on the path; a trusted network only");
	mlog(LOG_INFO, NULL, "ready: control %s%s%s%s, state %s, migvm %s",
	     g.control_path, listen ? ", peers on " : "", listen ? listen : "",
	     g.x509 ? ", peer link TLS 1.3 with certificates"
	     : g.psk_len ? ", peer link TLS 1.3 with the pre-shared key" : "",
	     g.state_dir, g.migvm);
	uv_run(g.loop, UV_RUN_DEFAULT);
	return 0;
}
