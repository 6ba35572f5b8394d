/*
 * A restarted migd takes back the VMs its predecessor started.
 *
 * migvm processes outlive their daemon by design (a daemon upgrade or crash
 * must not take the VMs with it), and every VM's config is in the state dir
 * as NAME.json, its migvm's pid in NAME.pid. At start, for each config:
 *  - its migvm still runs (the pid's command line has `--control` with this
 *    VM's socket, so a recycled pid is never mistaken for it): watched
 *    again through a pidfd. Not our child any more, so its exit status and
 *    stderr are not seen; the log says so. A reservation ("incoming") is
 *    released: the source daemon's connection went with the old migd.
 *  - it is gone: the record says it ended while migd was not running.
 * Nothing is restarted.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migd.h"

#define CONFIG_MAX 16384

/* The value of "key" in the one-line JSON that vm_save_config() writes:
 * a string (its \" and \\ unescaped) or a bare number, as text. */
static bool json_get(const char *json, const char *key, char *out, size_t len)
{
	char pat[64];
	const char *p;
	size_t n = 0;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(json, pat);
	if (!p || len == 0)
		return false;
	p += strlen(pat);
	if (*p == '"') {
		for (p++; *p && *p != '"'; p++) {
			if (*p == '\\' && p[1])
				p++;
			if (n + 1 >= len)
				return false;
			out[n++] = *p;
		}
		if (*p != '"')
			return false;
	} else {
		while ((*p >= '0' && *p <= '9') || *p == '-') {
			if (n + 1 >= len)
				return false;
			out[n++] = *p++;
		}
		if (n == 0)
			return false;
	}
	out[n] = '\0';
	return true;
}

static bool read_small(const char *path, char *buf, size_t len, size_t *n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t r;

	if (fd < 0)
		return false;
	r = read(fd, buf, len - 1);
	close(fd);
	if (r < 0)
		return false;
	buf[r] = '\0';
	if (n)
		*n = (size_t)r;
	return true;
}

/* Is `pid` the migvm of this VM: `--control CTL` among its arguments? */
static bool is_our_migvm(int pid, const char *ctl)
{
	char path[64], args[8192];
	size_t n, i = 0;
	bool prev_control = false;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
	if (pid <= 0 || !read_small(path, args, sizeof(args), &n))
		return false;
	while (i < n) {
		const char *a = args + i;
		if (prev_control && !strcmp(a, ctl))
			return true;
		prev_control = !strcmp(a, "--control");
		i += strlen(a) + 1;
	}
	return false;
}

static void adopt_one(const char *name)
{
	char path[PATH_MAX + 80], json[CONFIG_MAX], v[CONFIG_MAX], msg[256];
	char state[32] = "";
	struct vmrec *vm;
	int pid = -1, err;

	snprintf(path, sizeof(path), "%s/%s.json", g.state_dir, name);
	if (!read_small(path, json, sizeof(json), NULL) ||
	    !json_get(json, "name", v, sizeof(v)) || strcmp(v, name)) {
		mlog(LOG_WARN, NULL, "%s: not a VM config of migd's; left alone",
		     path);
		return;
	}
	vm = vm_claim(name, &err);
	if (!vm)
		return;
	vm->mem_mib = json_get(json, "mem_mib", v, sizeof(v)) ?
		      strtoull(v, NULL, 10) : 0;
	vm->cpus = json_get(json, "cpus", v, sizeof(v)) ?
		   (uint32_t)strtoul(v, NULL, 10) : 0;
	vm->kernel = strdup(json_get(json, "kernel", v, sizeof(v)) ? v : "");
	vm->cmdline = strdup(json_get(json, "cmdline", v, sizeof(v)) ? v : "");
	vm->initrd = strdup(json_get(json, "initrd", v, sizeof(v)) ? v : "");
	json_get(json, "state", state, sizeof(state));
	snprintf(path, sizeof(path), "%s/%s.pid", g.state_dir, name);
	if (read_small(path, v, 32, NULL))
		pid = atoi(v);
	vm->pid = pid;
	vm->exit_unknown = true;
	if (pid > 0 && is_our_migvm(pid, vm->ctl_path) &&
	    vm_adopt(vm, pid, msg, sizeof(msg)) == 0) {
		if (!strcmp(state, "incoming")) {
			/* Its source daemon spoke to the old migd. */
			vm->state = VM_INCOMING;
			snprintf(vm->last_error, sizeof(vm->last_error),
				 "reservation released: migd restarted "
				 "before the migration");
			mlog(LOG_WARN, vm, "%s (migvm pid %d)", vm->last_error,
			     pid);
			vm_kill(vm, SIGTERM);
			return;
		}
		vm->state = VM_RUNNING;
		mlog(LOG_INFO, vm, "taken back after a migd restart: migvm pid "
		     "%d runs (%llu MiB, %u vCPUs); its exit status and stderr "
		     "are no longer seen", pid,
		     (unsigned long long)vm->mem_mib, vm->cpus);
		return;
	}
	if (pid > 0 && is_our_migvm(pid, vm->ctl_path)) {
		/* Keep its config: a later migd may manage where this failed. */
		vm->state = VM_EXITED;
		snprintf(vm->last_error, sizeof(vm->last_error), "migvm pid %d "
			 "runs but migd cannot watch it (%s): not managed",
			 pid, msg);
		mlog(LOG_ERR, vm, "%s", vm->last_error);
		return;
	}
	vm->state = strcmp(state, "incoming") ? VM_EXITED : VM_RELEASED;
	snprintf(vm->last_error, sizeof(vm->last_error),
		 "migvm (pid %d) ended while migd was not running", pid);
	mlog(LOG_WARN, vm, "%s", vm->last_error);
	vm_remove_config(vm);
}

void vm_adopt_all(void)
{
	DIR *d = opendir(g.state_dir);
	struct dirent *e;

	if (!d) {
		mlog(LOG_ERR, NULL, "cannot read the state dir %s: %s",
		     g.state_dir, strerror(errno));
		return;
	}
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);
		char name[MIGD_NAME_MAX + 1];

		if (n <= 5 || strcmp(e->d_name + n - 5, ".json") ||
		    n - 5 > MIGD_NAME_MAX)
			continue;
		snprintf(name, sizeof(name), "%.*s", (int)(n - 5), e->d_name);
		if (name_valid(name) && !vm_find(name))
			adopt_one(name);
	}
	closedir(d);
}
