/*
 * migd's bottom layer: the daemon's context (g), its log, names, random
 * tokens and the host's memory. Calls nothing else of migd's.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "migd.h"

struct migd g;

static const char *level_name[] = { "error", "warn", "info", "debug" };

int log_level_parse(const char *name)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(name, level_name[i]))
			return i;
	return -1;
}

void mlog(enum log_level lvl, const struct vmrec *vm, const char *fmt, ...)
{
	char msg[2048], ts[32];
	struct timespec now;
	struct tm tm;
	va_list ap;

	if (lvl > g.log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &now);
	localtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
	/* One line per event: time, level, the VM and the migration. */
	fprintf(stderr, "%s.%03ld migd %s%s%s%s%s: %s\n", ts,
		now.tv_nsec / 1000000, level_name[lvl],
		vm ? " vm=" : "", vm ? vm->name : "",
		vm && vm->mig_id[0] ? " mig=" : "",
		vm && vm->mig_id[0] ? vm->mig_id : "", msg);
	fflush(stderr);
}

bool name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > MIGD_NAME_MAX || name[0] == '.' || name[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(name[i] >= 'a' && name[i] <= 'z') &&
		    !(name[i] >= 'A' && name[i] <= 'Z') &&
		    !(name[i] >= '0' && name[i] <= '9') &&
		    !strchr("_.-", name[i]))
			return false;
	return true;
}

void random_bytes(uint8_t *out, size_t n)
{
	/* getrandom does not fail for <= 256 bytes once seeded. */
	if (n > 256 || getrandom(out, n, 0) != (ssize_t)n)
		abort();
}

void random_hex(char *out, size_t nbytes)
{
	uint8_t b[64];

	if (nbytes > sizeof(b))
		nbytes = sizeof(b);
	random_bytes(b, nbytes);
	for (size_t i = 0; i < nbytes; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static uint64_t meminfo(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	unsigned long long v = 0;
	size_t n = strlen(key);

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':') {
			sscanf(line + n + 1, "%llu", &v);
			break;
		}
	fclose(f);
	return v / 1024;
}

uint64_t mem_available_mib(void)
{
	return meminfo("MemAvailable");
}
