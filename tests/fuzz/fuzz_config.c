/*
 * fuzz_config: the management server's settings as netbird-mgmt loads
 * them at start-up: cp_config_load() (flags, NB_MGMT_* and NetBird's
 * environment names, management.json; common/config) and then
 * mgmt_netconf_load() (Stuns, TURNConfig, Relay, Signal, the auth flows
 * and HttpConfig from the same file and environment; agent/mgmt-netconf.c),
 * plus the data-store key decoding.
 *
 * Input: three parts separated by NUL bytes: flags (one per line), the
 * environment (NAME=value per line), the config file's bytes. The file is
 * given as --config /proc/self/fd/N (a memfd) after the input's own flags,
 * so the last --config, ours, wins and no other file is read.
 */
#include "cp/base.h"
#include "cp/config.h"
#include "cp/log.h"
#include "mgmt-netconf.h"

#include <sys/mman.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define MAX_ITEMS 64

static int memfd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        memfd = memfd_create("management.json", MFD_CLOEXEC);
        if (memfd < 0)
                abort();
        (void) snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
        return 0;
}

/* Splits [p, end) at '\n' into NUL-terminated copies in out (at most max). */
static size_t split_lines(const char *p, const char *end, char **out, size_t max) {
        size_t n = 0;

        while (p < end && n < max) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                const char *e = nl ? nl : end;
                out[n++] = cp_xstrndup(p, (size_t) (e - p));
                p = nl ? nl + 1 : end;
        }
        return n;
}

static void no_warn(const char *text, void *userdata) {
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data, *end = p + size;
        const char *z1 = memchr(p, '\0', size);
        const char *envs = z1 ? z1 + 1 : end;
        const char *z2 = envs < end ? memchr(envs, '\0', (size_t) (end - envs)) : NULL;
        const char *file = z2 ? z2 + 1 : end;
        char *argv[MAX_ITEMS + 3] = { 0 }, *envp[MAX_ITEMS + 1] = { 0 };
        size_t argc, envc;
        cp_config cfg;
        cp_error err = { 0 };

        argc = split_lines(p, z1 ? z1 : end, argv, MAX_ITEMS);
        envc = split_lines(envs, z2 ? z2 : end, envp, MAX_ITEMS);
        argv[argc] = cp_xstrdup("--config");
        argv[argc + 1] = cp_xstrdup(path);

        if (ftruncate(memfd, 0) < 0 || pwrite(memfd, file, (size_t) (end - file), 0) != end - file)
                abort();

        memset(&cfg, 0, sizeof cfg);
        if (cp_config_load(&cfg, (int) argc + 2, argv, envp, NULL, 0, &err) == 0) {
                uint8_t key[32];
                mgmt_netconf *nc = NULL;
                cp_error nerr = { 0 };

                (void) cp_config_check_store(&cfg, &nerr);
                (void) cp_config_encryption_key(&cfg, key);
                (void) cp_config_encryption_key_previous(&cfg, key);
                if (!cfg.source.help &&
                    mgmt_netconf_load(cfg.source.file, cfg.source.file_path, envp, &nc, &nerr) == 0) {
                        mgmt_netconf_check(nc, no_warn, NULL);
                        (void) mgmt_netconf_free(nc);
                }
                cp_config_release(&cfg);
        }
        for (size_t i = 0; i < argc + 2; i++)
                free(argv[i]);
        for (size_t i = 0; i < envc; i++)
                free(envp[i]);
        return 0;
}
