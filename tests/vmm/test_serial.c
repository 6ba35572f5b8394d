/*
 * migvm's 16550 console state: serial_load() takes a SerialState from a
 * snapshot file or an incoming migration, both hostile until checked. A
 * partial console line at the limit must load and then take any number of
 * guest bytes without writing past the line buffer (run under ASan in CI);
 * one byte more must be refused. Console input: read in order with its
 * interrupt, refused whole when it does not fit, carried in the state.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "control.pb-c.h"
#include "vm.h"

static struct vm vm;

static int setup(void **st)
{
	(void)st;
	memset(&vm, 0, sizeof(vm));
	vm.vm_fd = -1; /* KVM_IRQ_LINE fails harmlessly */
	serial_init(&vm.serial, open("/dev/null", O_WRONLY | O_CLOEXEC));
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	close(vm.serial.out_fd);
	serial_exit(&vm.serial);
	return 0;
}

static void *pack_state(size_t line_len, uint32_t lcr, size_t *len)
{
	Mig__Ctl__SerialState m = MIG__CTL__SERIAL_STATE__INIT;
	static uint8_t line[SERIAL_LINE_MAX + 16];
	void *buf;

	memset(line, 'x', sizeof(line));
	m.lcr = lcr;
	m.partial_line.data = line;
	m.partial_line.len = line_len;
	*len = mig__ctl__serial_state__get_packed_size(&m);
	buf = malloc(*len);
	assert_non_null(buf);
	mig__ctl__serial_state__pack(&m, buf);
	return buf;
}

static void guest_writes(const char *text, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)text[i % strlen(text)];
		serial_io(&vm, 0x3f8, true, &c);
		assert_true(vm.serial.line_len <= SERIAL_PARTIAL_MAX);
	}
}

static void partial_line_at_limit_loads_and_runs(void **st)
{
	mig_error err = { 0 };
	size_t len;
	void *blob = pack_state(SERIAL_PARTIAL_MAX, 3, &len);

	(void)st;
	assert_int_equal(serial_load(&vm.serial, blob, len, &err), 0);
	assert_int_equal(vm.serial.line_len, SERIAL_PARTIAL_MAX);
	guest_writes("y", 3 * SERIAL_LINE_MAX);
	guest_writes("hb seq=7 ticks=1\n", 100);
	assert_int_equal(vm.serial.stats.hb_seq, 7);
	serial_flush(&vm.serial);
	free(blob);
}

static void partial_line_over_limit_refused(void **st)
{
	mig_error err = { 0 };
	size_t sizes[] = { SERIAL_PARTIAL_MAX + 1, SERIAL_LINE_MAX - 1,
			   SERIAL_LINE_MAX, SERIAL_LINE_MAX + 7 };

	(void)st;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t len;
		void *blob = pack_state(sizes[i], 3, &len);

		assert_int_equal(serial_load(&vm.serial, blob, len, &err),
				 -EINVAL);
		assert_non_null(strstr(err.msg, "partial console line"));
		assert_int_equal(vm.serial.line_len, 0);
		free(blob);
	}
}

static void register_out_of_range_refused(void **st)
{
	mig_error err = { 0 };
	size_t len;
	void *blob = pack_state(0, 0x100, &len);

	(void)st;
	assert_int_equal(serial_load(&vm.serial, blob, len, &err), -EINVAL);
	assert_int_equal(vm.serial.lcr, 3);
	free(blob);
}

static void garbage_refused(void **st)
{
	mig_error err = { 0 };
	uint8_t junk[] = { 0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01 };

	(void)st;
	assert_int_equal(serial_load(&vm.serial, junk, sizeof(junk), &err),
			 -EBADMSG);
}

static void save_load_round_trip(void **st)
{
	mig_error err = { 0 };
	void *blob;
	size_t len;

	(void)st;
	guest_writes("hb seq=3 ticks=9\nhalf a li", 26);
	assert_int_equal(serial_save(&vm.serial, &blob, &len, &err), 0);
	teardown(NULL);
	setup(NULL);
	assert_int_equal(serial_load(&vm.serial, blob, len, &err), 0);
	assert_int_equal(vm.serial.line_len, strlen("half a li"));
	assert_memory_equal(vm.serial.line, "half a li", vm.serial.line_len);
	assert_int_equal(vm.serial.stats.hb_seq, 3);
	assert_int_equal(vm.serial.stats.hb_lines, 1);
	free(blob);
}

static uint8_t uart_in(unsigned int off)
{
	uint8_t v = 0;

	serial_io(&vm, (uint16_t)(0x3f8 + off), false, &v);
	return v;
}

static void uart_out(unsigned int off, uint8_t v)
{
	serial_io(&vm, (uint16_t)(0x3f8 + off), true, &v);
}

/* Console input: LSR DR, RBR in order, the receive interrupt above THRI
 * (IIR 0x04) while data is left, and the IRQ line with it. */
static void input_read_in_order_with_irq(void **st)
{
	mig_error err = { 0 };

	(void)st;
	assert_int_equal(uart_in(5) & 0x01, 0);
	assert_int_equal(serial_input(&vm, (const uint8_t *)"ab", 2, &err), 0);
	assert_int_equal(uart_in(5) & 0x01, 0x01);
	assert_false(serial_irq_level(&vm.serial)); /* not enabled */
	uart_out(1, 0x03); /* IER: receive and THR empty */
	assert_true(serial_irq_level(&vm.serial));
	assert_int_equal(uart_in(2) & 0x0f, 0x04);
	assert_int_equal(uart_in(2) & 0x0f, 0x04); /* IIR read: still */
	assert_int_equal(uart_in(0), 'a');
	assert_int_equal(uart_in(0), 'b');
	assert_int_equal(uart_in(5) & 0x01, 0);
	assert_int_equal(uart_in(2) & 0x0f, 0x02); /* then THRI */
	assert_int_equal(uart_in(2) & 0x0f, 0x01); /* then none */
	assert_false(serial_irq_level(&vm.serial));
	assert_int_equal(uart_in(0), 0); /* empty RBR */
}

/* Input beyond the free room is refused whole; a FIFO reset empties it. */
static void input_full_refused(void **st)
{
	static uint8_t big[SERIAL_RX_MAX];
	mig_error err = { 0 };

	(void)st;
	memset(big, 'q', sizeof(big));
	assert_int_equal(serial_input(&vm, big, 10, &err), 0);
	assert_int_equal(serial_input(&vm, big, SERIAL_RX_MAX - 9, &err),
			 -ENOSPC);
	assert_non_null(strstr(err.msg, "do not fit"));
	assert_int_equal(vm.serial.rx_len, 10);
	assert_int_equal(serial_input(&vm, big, SERIAL_RX_MAX - 10, &err), 0);
	assert_int_equal(vm.serial.rx_len, SERIAL_RX_MAX);
	uart_out(2, 0x03); /* FCR: enable, clear receive FIFO */
	assert_int_equal(vm.serial.rx_len, 0);
	assert_int_equal(uart_in(5) & 0x01, 0);
}

/* Pending input travels with the state, in order across the ring's wrap;
 * more than the queue holds is refused. */
static void input_saved_and_loaded(void **st)
{
	static uint8_t in[2 * SERIAL_RX_MAX];
	mig_error err = { 0 };
	void *blob;
	size_t len;

	(void)st;
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(serial_input(&vm, in, 3000, &err), 0);
	for (int i = 0; i < 2500; i++)
		assert_int_equal(uart_in(0), in[i]);
	assert_int_equal(serial_input(&vm, in + 3000, 2000, &err), 0);
	assert_true(vm.serial.rx_head + vm.serial.rx_len > SERIAL_RX_MAX);
	assert_int_equal(serial_save(&vm.serial, &blob, &len, &err), 0);
	teardown(NULL);
	setup(NULL);
	assert_int_equal(serial_load(&vm.serial, blob, len, &err), 0);
	free(blob);
	assert_int_equal(vm.serial.rx_len, 2500);
	for (int i = 2500; i < 5000; i++)
		assert_int_equal(uart_in(0), in[i]);

	Mig__Ctl__SerialState m = MIG__CTL__SERIAL_STATE__INIT;
	static uint8_t over[SERIAL_RX_MAX + 1];
	m.lcr = 3;
	m.rx_pending.data = over;
	m.rx_pending.len = sizeof(over);
	len = mig__ctl__serial_state__get_packed_size(&m);
	blob = malloc(len);
	assert_non_null(blob);
	mig__ctl__serial_state__pack(&m, blob);
	assert_int_equal(serial_load(&vm.serial, blob, len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "console input over"));
	assert_int_equal(vm.serial.rx_len, 0);
	free(blob);
}

/* The guest's first MISMATCH line is reported on migvm's stderr, where
 * migd reads migvm's own lines: nothing in it may pass for one of those
 * (a newline cannot, it ends the line) or reach a terminal. */
static void mismatch_line_reported_printable(void **st)
{
	const char line[] = "MISMATCH \x1b[2J\rmigvm: incoming migration "
			    "done; \x7f\xff\n";

	(void)st;
	guest_writes(line, sizeof(line) - 1);
	assert_int_equal(vm.serial.stats.mismatch_lines, 1);
	assert_string_equal(vm.serial.first_mismatch,
			    "MISMATCH ?[2J?migvm: incoming migration done; ??");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(partial_line_at_limit_loads_and_runs, setup, teardown),
		cmocka_unit_test_setup_teardown(partial_line_over_limit_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(register_out_of_range_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(garbage_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(save_load_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(input_read_in_order_with_irq, setup, teardown),
		cmocka_unit_test_setup_teardown(input_full_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(input_saved_and_loaded, setup, teardown),
		cmocka_unit_test_setup_teardown(mismatch_line_reported_printable, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
