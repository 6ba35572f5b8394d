/* Error codes, names and the mig_error helpers. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

struct err_entry {
	int code;
	const char *name;
	const char *text;
};

/* The errno values a migration can actually meet, with stable texts that do
 * not depend on the C library's locale. */
static const struct err_entry err_table[] = {
	{ 0, "OK", "success" },
	{ -EPERM, "EPERM", "operation not permitted" },
	{ -ENOENT, "ENOENT", "no such file or directory" },
	{ -ESRCH, "ESRCH", "no such process" },
	{ -EINTR, "EINTR", "interrupted system call" },
	{ -EIO, "EIO", "input/output error" },
	{ -ENXIO, "ENXIO", "no such device or address" },
	{ -E2BIG, "E2BIG", "argument list too long" },
	{ -EBADF, "EBADF", "bad file descriptor" },
	{ -EAGAIN, "EAGAIN", "resource temporarily unavailable" },
	{ -ENOMEM, "ENOMEM", "not enough memory" },
	{ -EACCES, "EACCES", "permission denied" },
	{ -EFAULT, "EFAULT", "bad address" },
	{ -EBUSY, "EBUSY", "resource busy" },
	{ -EEXIST, "EEXIST", "already exists" },
	{ -ENODEV, "ENODEV", "no such device" },
	{ -EINVAL, "EINVAL", "invalid argument" },
	{ -EMFILE, "EMFILE", "too many open files" },
	{ -ENOSPC, "ENOSPC", "no space left on device" },
	{ -EPIPE, "EPIPE", "broken pipe" },
	{ -ERANGE, "ERANGE", "result out of range" },
	{ -ENOSYS, "ENOSYS", "function not implemented" },
	{ -ENOTSUP, "ENOTSUP", "operation not supported" },
	{ -EPROTO, "EPROTO", "protocol error" },
	{ -EBADMSG, "EBADMSG", "bad message" },
	{ -EMSGSIZE, "EMSGSIZE", "message too long" },
	{ -EOVERFLOW, "EOVERFLOW", "value too large" },
	{ -EADDRINUSE, "EADDRINUSE", "address already in use" },
	{ -EADDRNOTAVAIL, "EADDRNOTAVAIL", "address not available" },
	{ -ENETDOWN, "ENETDOWN", "network is down" },
	{ -ENETUNREACH, "ENETUNREACH", "network is unreachable" },
	{ -ECONNABORTED, "ECONNABORTED", "connection aborted" },
	{ -ECONNRESET, "ECONNRESET", "connection reset by peer" },
	{ -ENOTCONN, "ENOTCONN", "socket is not connected" },
	{ -ETIMEDOUT, "ETIMEDOUT", "timed out" },
	{ -ECONNREFUSED, "ECONNREFUSED", "connection refused" },
	{ -EHOSTUNREACH, "EHOSTUNREACH", "host is unreachable" },
	{ -EALREADY, "EALREADY", "operation already in progress" },
	{ -ECANCELED, "ECANCELED", "operation canceled" },
	{ MIG_E_PROTOCOL, "MIG_E_PROTOCOL", "peer broke the migration protocol" },
	{ MIG_E_VERSION, "MIG_E_VERSION", "incompatible protocol version" },
	{ MIG_E_AUTH, "MIG_E_AUTH", "authentication token rejected" },
	{ MIG_E_INCOMPAT, "MIG_E_INCOMPAT", "VM configurations do not match" },
	{ MIG_E_CANCELED, "MIG_E_CANCELED", "migration canceled" },
	{ MIG_E_PEER, "MIG_E_PEER", "peer aborted the migration" },
	{ MIG_E_NOCONVERGE, "MIG_E_NOCONVERGE", "pre-copy did not converge" },
	{ MIG_E_TLS, "MIG_E_TLS", "TLS failed" },
};

static const struct err_entry *err_find(int code)
{
	for (size_t i = 0; i < MIG_ARRAY_SIZE(err_table); i++)
		if (err_table[i].code == code)
			return &err_table[i];
	return NULL;
}

MIG_API const char *mig_strerror(int err)
{
	const struct err_entry *e = err_find(err);
	return e ? e->text : "unknown error";
}

MIG_API const char *mig_err_name(int err)
{
	const struct err_entry *e = err_find(err);
	return e ? e->name : "UNKNOWN";
}

int mig__err(mig_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

const char *mig__peer_text(const char *s, char *out, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (!n)
		return "";
	for (; s && *s && o + 1 < n; s++) {
		unsigned char c = (unsigned char)*s;

		if (c >= 0x20 && c < 0x7f) {
			out[o++] = (char)c;
			continue;
		}
		if (o + 5 > n)
			break;
		out[o++] = '\\';
		out[o++] = 'x';
		out[o++] = hex[c >> 4];
		out[o++] = hex[c & 15];
	}
	out[o] = '\0';
	return out;
}

void mig__err_prefix(mig_error *err, const char *fmt, ...)
{
	char old[MIG_ERROR_MSG_MAX];
	char pre[MIG_ERROR_MSG_MAX];
	va_list ap;

	if (!err)
		return;
	memcpy(old, err->msg, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	/* Truncation is intended: the message is for humans and bounded. */
	size_t n = strlen(pre);
	if (n >= sizeof(err->msg))
		n = sizeof(err->msg) - 1;
	memcpy(err->msg, pre, n);
	size_t m = strlen(old);
	if (m > sizeof(err->msg) - 1 - n)
		m = sizeof(err->msg) - 1 - n;
	memcpy(err->msg + n, old, m);
	err->msg[n + m] = '\0';
}
