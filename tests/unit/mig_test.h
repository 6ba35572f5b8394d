/* Shared includes for the cmocka unit tests. */
#ifndef MIG_TEST_H
#define MIG_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#endif
