/*
 * The keys file: one peer a line, "PRIVATE-KEY HOSTNAME REGISTERED", the
 * private key in WireGuard's base64, REGISTERED 1 once a Login of that
 * peer succeeded. Lines starting with '#' are comments. It holds secrets:
 * written with mode 0600.
 */
#include "cp/base.h"
#include "load.h"

#include <fcntl.h>
#include <sys/stat.h>

#define HEADER "# netbird-load keys v1: private-key hostname registered(0/1)\n"

int load_keys_read(const char *path, load_key **ret, size_t *ret_n) {
        FILE *f = fopen(path, "r");
        load_key *keys = NULL;
        size_t n = 0, cap = 0, lineno = 0;
        char line[512];

        if (!f) {
                if (errno == ENOENT) {
                        *ret = NULL;
                        *ret_n = 0;
                        return 0;
                }
                fprintf(stderr, "netbird-load: error: cannot read %s: %s\n", path, strerror(errno));
                return -errno;
        }
        while (fgets(line, sizeof line, f)) {
                char priv[64], host[64];
                int reg;
                lineno++;
                if (line[0] == '#' || line[0] == '\n')
                        continue;
                if (n == LOAD_MAX_PEERS)
                        break;
                if (sscanf(line, "%63s %63s %d", priv, host, &reg) != 3 || (reg != 0 && reg != 1))
                        goto bad;
                if (n == cap) {
                        cap = cap ? cap * 2 : 1024;
                        keys = cp_xrealloc(keys, cap * sizeof *keys);
                }
                if (cp_crypto_wg_key_parse(priv, keys[n].priv, NULL) < 0)
                        goto bad;
                (void) snprintf(keys[n].hostname, sizeof keys[n].hostname, "%s", host);
                keys[n].registered = reg == 1;
                n++;
                cp_explicit_bzero(priv, sizeof priv);
        }
        fclose(f);
        *ret = keys;
        *ret_n = n;
        return 0;
bad:
        fprintf(stderr, "netbird-load: error: %s line %zu: expected \"PRIVATE-KEY HOSTNAME 0|1\"\n", path, lineno);
        fclose(f);
        if (keys)
                cp_explicit_bzero(keys, n * sizeof *keys);
        free(keys);
        return -EINVAL;
}

int load_keys_write(const char *path, const load_key *keys, size_t n) {
        _cleanup_free_ char *tmp = cp_xasprintf("%s.tmp.%d", path, (int) getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        FILE *f;

        if (fd < 0 || !(f = fdopen(fd, "w"))) {
                fprintf(stderr, "netbird-load: error: cannot write %s: %s\n", tmp, strerror(errno));
                if (fd >= 0)
                        close(fd);
                return -EIO;
        }
        fputs(HEADER, f);
        for (size_t i = 0; i < n; i++) {
                char b64[CP_WG_KEY_B64_LEN];
                cp_crypto_wg_key_format(keys[i].priv, b64);
                fprintf(f, "%s %s %d\n", b64, keys[i].hostname, keys[i].registered ? 1 : 0);
                cp_explicit_bzero(b64, sizeof b64);
        }
        bool bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
        if (fclose(f) != 0)
                bad = true;
        if (bad || rename(tmp, path) != 0) {
                fprintf(stderr, "netbird-load: error: cannot write %s: %s\n", path, strerror(errno));
                (void) unlink(tmp);
                return -EIO;
        }
        return 0;
}

int load_setup_keys_read(const char *path, char ***ret, size_t *ret_n) {
        FILE *f = fopen(path, "r");
        char **keys = NULL;
        size_t n = 0, cap = 0, lineno = 0;
        char line[512];

        if (!f) {
                fprintf(stderr, "netbird-load: error: cannot read %s: %s\n", path, strerror(errno));
                return -EINVAL;
        }
        while (fgets(line, sizeof line, f)) {
                size_t len = strcspn(line, "\r\n");
                lineno++;
                line[len] = '\0';
                if (line[0] == '#' || len == 0)
                        continue;
                if (strcspn(line, " \t") != len) {
                        fprintf(stderr, "netbird-load: error: %s line %zu: expected one setup key a line\n", path,
                                lineno);
                        goto bad;
                }
                if (n == cap) {
                        cap = cap ? cap * 2 : 256;
                        keys = cp_xrealloc(keys, cap * sizeof *keys);
                }
                keys[n++] = cp_xstrdup(line);
        }
        fclose(f);
        cp_explicit_bzero(line, sizeof line);
        if (n == 0) {
                fprintf(stderr, "netbird-load: error: %s holds no setup key\n", path);
                free(keys);
                return -EINVAL;
        }
        *ret = keys;
        *ret_n = n;
        return 0;
bad:
        fclose(f);
        cp_explicit_bzero(line, sizeof line);
        for (size_t i = 0; i < n; i++) {
                cp_explicit_bzero(keys[i], strlen(keys[i]));
                free(keys[i]);
        }
        free(keys);
        return -EINVAL;
}
