/*
 * cptest.h: a tiny test harness that prints TAP, so `meson test` (with
 * protocol: 'tap') and tests/run count every test case, not every binary.
 *
 *   TEST(connect_lands) {
 *           ASSERT_EQ(1, cp_store_peer_mark_connected(...));
 *   }
 *   int main(int argc, char **argv) { return cptest_main(argc, argv); }
 *
 * Tests run in file order in one process. A failed assertion prints a TAP
 * diagnostic with file and line and ends that test; the rest still run.
 * CPTEST_SKIP("why") ends a test as skipped. `binary NAME` runs one test.
 */
#pragma once

#include "cp/base.h"

#include <setjmp.h>

typedef void (*cptest_fn)(void);

void cptest_register(const char *name, cptest_fn fn);
int cptest_main(int argc, char **argv);
_noreturn_ void cptest_fail(const char *file, int line, const char *fmt, ...) _printf_(3, 4);
_noreturn_ void cptest_skip(const char *reason);

#define TEST(name)                                                      \
        static void cptest_##name(void);                                \
        __attribute__((constructor)) static void cptest_reg_##name(void) { \
                cptest_register(#name, cptest_##name);                  \
        }                                                               \
        static void cptest_##name(void)

#define CPTEST_SKIP(reason) cptest_skip(reason)

#define ASSERT_TRUE(x)                                                  \
        do {                                                            \
                if (!(x))                                               \
                        cptest_fail(__FILE__, __LINE__, "assertion failed: %s", #x); \
        } while (0)

#define ASSERT_FALSE(x) ASSERT_TRUE(!(x))

#define ASSERT_EQ(expected, actual)                                     \
        do {                                                            \
                long long _e = (long long) (expected), _a = (long long) (actual); \
                if (_e != _a)                                           \
                        cptest_fail(__FILE__, __LINE__, "%s == %s: expected %lld, got %lld", \
                                    #expected, #actual, _e, _a);        \
        } while (0)

#define ASSERT_STREQ(expected, actual)                                  \
        do {                                                            \
                const char *_e = (expected), *_a = (actual);            \
                if (!_e || !_a || strcmp(_e, _a) != 0)                  \
                        cptest_fail(__FILE__, __LINE__, "%s: expected \"%s\", got \"%s\"", \
                                    #actual, _e ? _e : "(null)", _a ? _a : "(null)"); \
        } while (0)

/* r >= 0, else print the cp_error (may be NULL). */
#define ASSERT_OK(r, err)                                               \
        do {                                                            \
                long long _r = (long long) (r);                         \
                const cp_error *_err = (err);                           \
                if (_r < 0)                                             \
                        cptest_fail(__FILE__, __LINE__, "%s failed: %lld %s%s%s", #r, _r, \
                                    _err ? _err->message : "", \
                                    _err && _err->sqlstate[0] ? " sqlstate=" : "", \
                                    _err ? _err->sqlstate : "");        \
        } while (0)
