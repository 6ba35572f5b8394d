/*
 * A 16550 UART at 0x3f8 (COM1, IRQ 4): bytes written to THR go to the
 * console, line by line, and each line is scanned for the test guest's
 * heartbeat ("hb seq=.. ticks=.. written=.. verified=.. mismatches=..") and
 * for "MISMATCH" reports. The transmitter is always empty (LSR THRE|TEMT).
 * Input comes from the control channel (serial_input) into a receive queue
 * of SERIAL_RX_MAX bytes, read through RBR with LSR DR and the receive
 * interrupt (IER bit 0, IIR 0x04, above THRI), as a 16550 with a deep FIFO.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "control.pb-c.h"
#include "msgio.h"
#include "vm.h"

#define UART_IRQ 4

#define UART_RX 0  /* DLAB=0: RBR (read) / THR (write); DLAB=1: DLL */
#define UART_IER 1 /* DLAB=1: DLM */
#define UART_IIR 2 /* read; FCR on write */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define LCR_DLAB 0x80
#define IER_RDI 0x01
#define IER_THRI 0x02
#define IIR_NO_INT 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_FIFO 0xc0
#define FCR_FIFO_ENABLE 0x01
#define FCR_CLEAR_RCVR 0x02
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define MCR_LOOP 0x10
#define MSR_DCD 0x80
#define MSR_DSR 0x20
#define MSR_CTS 0x10

void serial_init(struct serial *s, int out_fd)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	s->out_fd = out_fd;
	s->lcr = 0x03; /* 8N1 */
}

void serial_exit(struct serial *s)
{
	pthread_mutex_destroy(&s->lock);
}

/* Parse "key=value" tokens of a heartbeat line. */
static void scan_hb(struct console_stats *st, const char *line)
{
	static const struct {
		const char *key;
		size_t off;
	} keys[] = {
		{ "seq=", offsetof(struct console_stats, hb_seq) },
		{ "ticks=", offsetof(struct console_stats, ticks) },
		{ "written=", offsetof(struct console_stats, written) },
		{ "verified=", offsetof(struct console_stats, verified) },
		{ "mismatches=", offsetof(struct console_stats, mismatches) },
	};
	const char *p = line;

	while (*p) {
		while (*p == ' ' || *p == '\t')
			p++;
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			size_t n = strlen(keys[i].key);
			if (!strncmp(p, keys[i].key, n)) {
				uint64_t v = strtoull(p + n, NULL, 10);
				memcpy((char *)st + keys[i].off, &v, sizeof(v));
			}
		}
		while (*p && *p != ' ' && *p != '\t')
			p++;
	}
	st->hb_lines++;
}

/* A complete console line (without the newline). Lock held. */
static void scan_line(struct serial *s, char *line)
{
	size_t n = strlen(line);

	while (n && line[n - 1] == '\r')
		line[--n] = '\0';
	if (!strncmp(line, "hb ", 3))
		scan_hb(&s->stats, line + 3);
	if (strstr(line, "MISMATCH")) {
		if (s->stats.mismatch_lines++ == 0) {
			/* The guest's text: what is not printable ASCII goes
			 * as '?', so that it cannot pass for a line of
			 * migvm's own on stderr (migd reads those) nor send
			 * escapes to a terminal. */
			snprintf(s->first_mismatch, sizeof(s->first_mismatch),
				 "%s", line);
			text_printable(s->first_mismatch);
			fprintf(stderr, "migvm: the guest reported: %s\n",
				s->first_mismatch);
		}
	}
}

static void emit(struct serial *s)
{
	if (s->line_len && s->out_fd >= 0 &&
	    write_full(s->out_fd, s->line, s->line_len) < 0) {
		/* A closed console must not stop the guest. */
	}
}

/*
 * A partial line holds at most SERIAL_LINE_MAX - 2 bytes between calls: one
 * byte is for the character being added and one for the '\n' or '\0' that
 * ends the line. serial_load() refuses longer ones.
 */
static void put_char(struct serial *s, char c)
{
	if (s->line_len > SERIAL_PARTIAL_MAX) {
		/* Cannot happen through serial_load(); never write past line[]. */
		emit(s);
		s->line_len = 0;
	}
	s->line[s->line_len++] = c;
	if (c == '\n') {
		emit(s);
		s->line[s->line_len - 1] = '\0';
		scan_line(s, s->line);
		s->line_len = 0;
	} else if (s->line_len == sizeof(s->line) - 1) {
		/* Too long for a status line: pass it on unscanned. */
		emit(s);
		s->line_len = 0;
	}
}

bool serial_irq_level(const struct serial *s)
{
	return ((s->ier & IER_RDI) && s->rx_len) ||
	       ((s->ier & IER_THRI) && s->iir_thri);
}

static void update_irq(struct vm *vm, struct serial *s)
{
	struct kvm_irq_level irq = {
		.irq = UART_IRQ,
		.level = serial_irq_level(s),
	};
	ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq);
}

void serial_sync_irq(struct vm *vm)
{
	pthread_mutex_lock(&vm->serial.lock);
	update_irq(vm, &vm->serial);
	pthread_mutex_unlock(&vm->serial.lock);
}

int serial_input(struct vm *vm, const uint8_t *data, size_t len,
		 mig_error *err)
{
	struct serial *s = &vm->serial;
	size_t room;

	pthread_mutex_lock(&s->lock);
	room = SERIAL_RX_MAX - s->rx_len;
	if (len > room) {
		pthread_mutex_unlock(&s->lock);
		return vmm_err(err, -ENOSPC, "console input: %zu bytes do not "
			       "fit, %zu of %d free (the guest has not read "
			       "the rest)", len, room, SERIAL_RX_MAX);
	}
	for (size_t i = 0; i < len; i++)
		s->rx[(s->rx_head + s->rx_len + i) % SERIAL_RX_MAX] = data[i];
	s->rx_len += len;
	update_irq(vm, s);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static uint8_t rx_pop(struct serial *s)
{
	uint8_t v;

	if (!s->rx_len)
		return 0;
	v = s->rx[s->rx_head];
	s->rx_head = (s->rx_head + 1) % SERIAL_RX_MAX;
	s->rx_len--;
	return v;
}

void serial_io(struct vm *vm, uint16_t port, bool write, uint8_t *data)
{
	struct serial *s = &vm->serial;
	unsigned int off = port & 7u;
	bool dlab;

	pthread_mutex_lock(&s->lock);
	dlab = s->lcr & LCR_DLAB;
	if (write) {
		uint8_t v = *data;
		switch (off) {
		case UART_RX:
			if (dlab) {
				s->dll = v;
			} else {
				if (!(s->mcr & MCR_LOOP))
					put_char(s, (char)v);
				s->iir_thri = 1; /* sent at once: empty again */
				update_irq(vm, s);
			}
			break;
		case UART_IER:
			if (dlab) {
				s->dlm = v;
			} else {
				if ((v & IER_THRI) && !(s->ier & IER_THRI))
					s->iir_thri = 1;
				s->ier = v & 0x0f;
				update_irq(vm, s);
			}
			break;
		case UART_IIR:
			s->fcr = v;
			if (v & FCR_CLEAR_RCVR) {
				s->rx_head = s->rx_len = 0;
				update_irq(vm, s);
			}
			break;
		case UART_LCR:
			s->lcr = v;
			break;
		case UART_MCR:
			s->mcr = v & 0x1f;
			break;
		case UART_SCR:
			s->scr = v;
			break;
		default: /* LSR, MSR: read-only */
			break;
		}
	} else {
		uint8_t v = 0;
		switch (off) {
		case UART_RX:
			if (dlab) {
				v = s->dll;
			} else {
				v = rx_pop(s);
				update_irq(vm, s);
			}
			break;
		case UART_IER:
			v = dlab ? s->dlm : s->ier;
			break;
		case UART_IIR:
			v = (s->fcr & FCR_FIFO_ENABLE) ? IIR_FIFO : 0;
			if ((s->ier & IER_RDI) && s->rx_len) {
				v |= IIR_RDI; /* until RBR is read empty */
			} else if ((s->ier & IER_THRI) && s->iir_thri) {
				v |= IIR_THRI;
				s->iir_thri = 0; /* reading IIR clears THRI */
				update_irq(vm, s);
			} else {
				v |= IIR_NO_INT;
			}
			break;
		case UART_LCR:
			v = s->lcr;
			break;
		case UART_MCR:
			v = s->mcr;
			break;
		case UART_LSR:
			v = LSR_THRE | LSR_TEMT | (s->rx_len ? LSR_DR : 0);
			break;
		case UART_MSR:
			v = (s->mcr & MCR_LOOP) ? 0 : MSR_DCD | MSR_DSR | MSR_CTS;
			break;
		case UART_SCR:
			v = s->scr;
			break;
		}
		*data = v;
	}
	pthread_mutex_unlock(&s->lock);
}

void serial_flush(struct serial *s)
{
	pthread_mutex_lock(&s->lock);
	if (s->line_len) {
		s->line[s->line_len++] = '\n';
		emit(s);
		s->line_len = 0;
	}
	pthread_mutex_unlock(&s->lock);
}

void serial_get_stats(struct serial *s, struct console_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->stats;
	pthread_mutex_unlock(&s->lock);
}

int serial_save(struct serial *s, void **blob, size_t *len, mig_error *err)
{
	Mig__Ctl__SerialState m = MIG__CTL__SERIAL_STATE__INIT;
	Mig__Ctl__ConsoleStats cs = MIG__CTL__CONSOLE_STATS__INIT;
	size_t n;
	uint8_t *buf, *rx = NULL;

	pthread_mutex_lock(&s->lock);
	m.ier = s->ier;
	m.lcr = s->lcr;
	m.mcr = s->mcr;
	m.scr = s->scr;
	m.dll = s->dll;
	m.dlm = s->dlm;
	m.fcr = s->fcr;
	m.thri_pending = s->iir_thri;
	m.partial_line.data = (uint8_t *)s->line;
	m.partial_line.len = s->line_len;
	/* The queue in order, from a copy (the ring may wrap). */
	if (s->rx_len) {
		rx = malloc(s->rx_len);
		if (!rx) {
			pthread_mutex_unlock(&s->lock);
			return vmm_err(err, -ENOMEM, "serial state: out of "
				       "memory");
		}
		for (size_t i = 0; i < s->rx_len; i++)
			rx[i] = s->rx[(s->rx_head + i) % SERIAL_RX_MAX];
		m.rx_pending.data = rx;
		m.rx_pending.len = s->rx_len;
	}
	cs.hb_lines = s->stats.hb_lines;
	cs.hb_seq = s->stats.hb_seq;
	cs.ticks = s->stats.ticks;
	cs.written = s->stats.written;
	cs.verified = s->stats.verified;
	cs.mismatches = s->stats.mismatches;
	cs.mismatch_lines = s->stats.mismatch_lines;
	m.console = &cs;
	n = mig__ctl__serial_state__get_packed_size(&m);
	buf = malloc(n ? n : 1);
	if (buf)
		mig__ctl__serial_state__pack(&m, buf);
	pthread_mutex_unlock(&s->lock);
	free(rx);
	if (!buf)
		return vmm_err(err, -ENOMEM, "serial state: out of memory");
	*blob = buf;
	*len = n;
	return 0;
}

int serial_load(struct serial *s, const void *blob, size_t len,
		mig_error *err)
{
	Mig__Ctl__SerialState *m;

	m = mig__ctl__serial_state__unpack(NULL, len, blob);
	if (!m)
		return vmm_err(err, -EBADMSG, "serial state: %zu bytes that do "
			       "not decode", len);
	if (m->ier > 0xff || m->lcr > 0xff || m->mcr > 0xff || m->scr > 0xff ||
	    m->dll > 0xff || m->dlm > 0xff || m->fcr > 0xff ||
	    m->partial_line.len > SERIAL_PARTIAL_MAX ||
	    m->rx_pending.len > SERIAL_RX_MAX) {
		mig__ctl__serial_state__free_unpacked(m, NULL);
		return vmm_err(err, -EINVAL, "serial state: a register over "
			       "0xff, a partial console line over %d bytes or "
			       "console input over %d", SERIAL_PARTIAL_MAX,
			       SERIAL_RX_MAX);
	}
	pthread_mutex_lock(&s->lock);
	s->ier = (uint8_t)m->ier;
	s->lcr = (uint8_t)m->lcr;
	s->mcr = (uint8_t)m->mcr;
	s->scr = (uint8_t)m->scr;
	s->dll = (uint8_t)m->dll;
	s->dlm = (uint8_t)m->dlm;
	s->fcr = (uint8_t)m->fcr;
	s->iir_thri = m->thri_pending;
	if (m->partial_line.len)
		memcpy(s->line, m->partial_line.data, m->partial_line.len);
	s->line_len = m->partial_line.len;
	if (m->rx_pending.len)
		memcpy(s->rx, m->rx_pending.data, m->rx_pending.len);
	s->rx_head = 0;
	s->rx_len = m->rx_pending.len;
	if (m->console) {
		s->stats.hb_lines = m->console->hb_lines;
		s->stats.hb_seq = m->console->hb_seq;
		s->stats.ticks = m->console->ticks;
		s->stats.written = m->console->written;
		s->stats.verified = m->console->verified;
		s->stats.mismatches = m->console->mismatches;
		s->stats.mismatch_lines = m->console->mismatch_lines;
	}
	pthread_mutex_unlock(&s->lock);
	mig__ctl__serial_state__free_unpacked(m, NULL);
	return 0;
}
