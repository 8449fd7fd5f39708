#include "cp/base.h"
#include "cptest.h"

#define CPTEST_MAX 256

static struct {
        const char *name;
        cptest_fn fn;
} tests[CPTEST_MAX];
static size_t n_tests;
static jmp_buf jump;
static const char *skip_reason;

void cptest_register(const char *name, cptest_fn fn) {
        if (n_tests == CPTEST_MAX)
                abort();
        tests[n_tests].name = name;
        tests[n_tests].fn = fn;
        n_tests++;
}

void cptest_fail(const char *file, int line, const char *fmt, ...) {
        va_list ap;

        printf("# %s:%d: ", file, line);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
        longjmp(jump, 1);
}

void cptest_skip(const char *reason) {
        skip_reason = reason;
        longjmp(jump, 2);
}

int cptest_main(int argc, char **argv) {
        const char *only = argc > 1 ? argv[1] : NULL;
        /* static: they must survive the longjmp out of a failed test */
        static size_t planned, failed, num;

        /* Keep TAP lines in order with anything the code under test prints. */
        setvbuf(stdout, NULL, _IOLBF, 0);
        for (size_t i = 0; i < n_tests; i++)
                if (!only || strcmp(only, tests[i].name) == 0)
                        planned++;
        printf("1..%zu\n", planned);
        for (size_t i = 0; i < n_tests; i++) {
                if (only && strcmp(only, tests[i].name) != 0)
                        continue;
                num++;
                skip_reason = NULL;
                int r = setjmp(jump);
                if (r == 0) {
                        tests[i].fn();
                        printf("ok %zu - %s\n", num, tests[i].name);
                } else if (r == 2) {
                        printf("ok %zu - %s # SKIP %s\n", num, tests[i].name, skip_reason);
                } else {
                        printf("not ok %zu - %s\n", num, tests[i].name);
                        failed++;
                }
        }
        return failed ? 1 : 0;
}
