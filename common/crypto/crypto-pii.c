#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/log.h"
#include "cp/util.h"

#include <ctype.h>
#include <sodium.h>
#include <stdatomic.h>

#define FP_LABEL "netbird-cp data key fingerprint v1"
#define MARKER "\"pii1:"

typedef struct pii_key {
        uint8_t key[CP_DATA_KEY_LEN];
        char fp[CP_PII_FP_LEN];
} pii_key;

/* keys[0] the configured key, keys[1] the previous one (n_keys says how
 * many). Written only by install/uninstall, before threads use them. */
static pii_key keys[CP_PII_MAX_KEYS];
static int n_keys;
static atomic_int writer;       /* index into keys */

static const cp_log_ctx log_ctx = { .component = "pii" };

void cp_pii_fingerprint(const uint8_t key[CP_DATA_KEY_LEN], char out[CP_PII_FP_LEN]) {
        uint8_t mac[crypto_auth_hmacsha256_BYTES];

        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, key, CP_DATA_KEY_LEN);
        crypto_auth_hmacsha256_update(&st, (const uint8_t *) FP_LABEL, sizeof FP_LABEL - 1);
        crypto_auth_hmacsha256_final(&st, mac);
        sodium_memzero(&st, sizeof st);
        for (int i = 0; i < 16; i++)
                (void) snprintf(out + 2 * i, 3, "%02x", mac[i]);
        out[32] = '\0';
}

void cp_pii_install(const uint8_t key[CP_DATA_KEY_LEN], const uint8_t *previous) {
        cp_pii_uninstall();
        memcpy(keys[0].key, key, CP_DATA_KEY_LEN);
        cp_pii_fingerprint(key, keys[0].fp);
        n_keys = 1;
        if (previous && sodium_memcmp(previous, key, CP_DATA_KEY_LEN) != 0) {
                memcpy(keys[1].key, previous, CP_DATA_KEY_LEN);
                cp_pii_fingerprint(previous, keys[1].fp);
                n_keys = 2;
        }
        atomic_store(&writer, 0);
}

void cp_pii_uninstall(void) {
        cp_explicit_bzero(keys, sizeof keys);
        n_keys = 0;
        atomic_store(&writer, 0);
}

bool cp_pii_installed(void) {
        return n_keys > 0;
}

static int find(const char *fp) {
        if (!fp || !*fp)
                return -1;
        for (int i = 0; i < n_keys; i++)
                if (strcmp(keys[i].fp, fp) == 0)
                        return i;
        return -1;
}

bool cp_pii_has(const char *fp) {
        return find(fp) >= 0;
}

int cp_pii_use(const char *fp) {
        int i = find(fp);

        if (i < 0)
                return -ENOKEY;
        atomic_store(&writer, i);
        return 0;
}

const char *cp_pii_writer_fp(void) {
        return n_keys ? keys[atomic_load(&writer)].fp : "";
}

const char *cp_pii_key_fp(void) {
        return n_keys ? keys[0].fp : "";
}

const char *cp_pii_previous_fp(void) {
        return n_keys > 1 ? keys[1].fp : "";
}

int cp_pii_key_get(const char *fp, uint8_t out[CP_DATA_KEY_LEN]) {
        int i = find(fp);

        if (i < 0)
                return -ENOKEY;
        memcpy(out, keys[i].key, CP_DATA_KEY_LEN);
        return 0;
}

char *cp_pii_seal(const char *plain, char fp[CP_PII_FP_LEN]) {
        cp_error err = { 0 };
        char *out = NULL;

        if (!n_keys) {
                fp[0] = '\0';
                return cp_xstrdup(plain ? plain : "");
        }
        /* A second value of the same row uses the first one's key, even
         * if the writer changed in between. */
        int i = fp[0] ? find(fp) : -1;
        const pii_key *k = &keys[i >= 0 ? i : atomic_load(&writer)];
        memcpy(fp, k->fp, CP_PII_FP_LEN);
        if (!plain || !*plain)
                return cp_xstrdup("");
        /* Only -EMSGSIZE (16 MiB): callers pass column values. */
        if (cp_crypto_aead_encrypt(k->key, plain, strlen(plain), &out, &err) < 0) {
                fputs("cp: cp_pii_seal: value too large\n", stderr);
                abort();
        }
        return out;
}

int cp_pii_open_strict(const char *fp, const char *stored, char **ret, cp_error *reterr) {
        int i;

        if (!stored)
                stored = "";
        if (!fp || !*fp) {
                *ret = cp_xstrdup(stored);
                return 0;
        }
        i = find(fp);
        if (i < 0)
                return cp_error_set(reterr, -ENOKEY, "sealed with key %s, which is not configured", fp);
        if (!*stored) {
                *ret = cp_xstrdup("");
                return 0;
        }
        return cp_crypto_aead_decrypt_dup(keys[i].key, stored, ret, NULL, reterr);
}

char *cp_pii_open(const char *fp, const char *stored) {
        cp_error err = { 0 };
        char *out = NULL;
        int r = cp_pii_open_strict(fp, stored, &out, &err);

        if (r < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot open personal data; shown empty", "key_fingerprint",
                          fp, "error", err.message, NULL);
                return cp_xstrdup("");
        }
        return out;
}

bool cp_pii_json_has_marker(const char *json) {
        return json && strstr(json, MARKER) != NULL;
}

/* At s (just past `"pii1:`): <32 hex>:<base64>" -- the key index, the
 * sealed value's bounds. Returns the index into keys or -1. */
static int parse_marker(const char *s, const char **val, size_t *val_len) {
        char fp[CP_PII_FP_LEN];
        size_t n;

        for (n = 0; n < 32; n++)
                if (!isxdigit((unsigned char) s[n]))
                        return -1;
        if (s[32] != ':')
                return -1;
        memcpy(fp, s, 32);
        fp[32] = '\0';
        s += 33;
        for (n = 0; s[n] && s[n] != '"'; n++)
                if (!isalnum((unsigned char) s[n]) && s[n] != '+' && s[n] != '/' && s[n] != '=')
                        return -1;
        if (s[n] != '"' || n == 0 || n > 4096)
                return -1;
        *val = s;
        *val_len = n;
        return find(fp);
}

/* A JSON string as PostgreSQL's escape_json writes it, quotes included,
 * so expanded JSON is byte for byte what json_build_object would give. */
static void add_pg_json_string(cp_strbuf *out, const char *s) {
        cp_strbuf_addch(out, '"');
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                switch (*p) {
                case '"':  cp_strbuf_adds(out, "\\\""); break;
                case '\\': cp_strbuf_adds(out, "\\\\"); break;
                case '\b': cp_strbuf_adds(out, "\\b"); break;
                case '\f': cp_strbuf_adds(out, "\\f"); break;
                case '\n': cp_strbuf_adds(out, "\\n"); break;
                case '\r': cp_strbuf_adds(out, "\\r"); break;
                case '\t': cp_strbuf_adds(out, "\\t"); break;
                default:
                        if (*p < 0x20)
                                cp_strbuf_addf(out, "\\u%04x", *p);
                        else
                                cp_strbuf_addch(out, (char) *p);
                }
        }
        cp_strbuf_addch(out, '"');
}

void cp_pii_expand_json(const char *json, cp_strbuf *out) {
        const char *p = json, *m;

        while ((m = strstr(p, MARKER))) {
                const char *val;
                size_t len;
                int i = parse_marker(m + sizeof MARKER - 1, &val, &len);
                char b64[4097], *plain = NULL;
                cp_error err = { 0 };

                cp_strbuf_add(out, p, (size_t) (m - p));
                if (i >= 0) {
                        memcpy(b64, val, len);
                        b64[len] = '\0';
                        if (cp_crypto_aead_decrypt_dup(keys[i].key, b64, &plain, NULL, &err) >= 0) {
                                add_pg_json_string(out, plain);
                                cp_explicit_bzero(plain, strlen(plain));
                                free(plain);
                                p = val + len + 1;      /* past the closing quote */
                                continue;
                        }
                        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot open personal data; shown sealed",
                                  "key_fingerprint", keys[i].fp, "error", err.message, NULL);
                }
                /* Not ours: copy the quote and go on after it. */
                cp_strbuf_addch(out, '"');
                p = m + 1;
        }
        cp_strbuf_adds(out, p);
}

char *cp_pii_open_marked(const char *value) {
        char fp[CP_PII_FP_LEN], *plain = NULL;
        size_t n;
        int i;

        if (!value)
                return cp_xstrdup("");
        if (strncmp(value, MARKER + 1, sizeof MARKER - 2) != 0)
                return cp_xstrdup(value);
        const char *s = value + sizeof MARKER - 2;
        for (n = 0; n < 32 && isxdigit((unsigned char) s[n]); n++)
                ;
        if (n != 32 || s[32] != ':')
                return cp_xstrdup(value);
        memcpy(fp, s, 32);
        fp[32] = '\0';
        i = find(fp);
        if (i < 0 || cp_crypto_aead_decrypt_dup(keys[i].key, s + 33, &plain, NULL, NULL) < 0) {
                cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot open personal data; shown sealed", "key_fingerprint", fp,
                          NULL);
                return cp_xstrdup(value);
        }
        return plain;
}

int cp_pii_decrypt(const uint8_t *hint, const char *b64, void *out, size_t out_cap, cp_error *reterr) {
        int r = -EBADMSG, w = n_keys ? atomic_load(&writer) : -1;

        if (hint) {
                r = cp_crypto_aead_decrypt(hint, b64, out, out_cap, reterr);
                if (r != -EBADMSG)
                        return r;
        }
        if (w >= 0 && !(hint && sodium_memcmp(hint, keys[w].key, CP_DATA_KEY_LEN) == 0)) {
                r = cp_crypto_aead_decrypt(keys[w].key, b64, out, out_cap, reterr);
                if (r != -EBADMSG)
                        return r;
        }
        for (int i = 0; i < n_keys; i++) {
                if (i == w || (hint && sodium_memcmp(hint, keys[i].key, CP_DATA_KEY_LEN) == 0))
                        continue;
                r = cp_crypto_aead_decrypt(keys[i].key, b64, out, out_cap, reterr);
                if (r != -EBADMSG)
                        return r;
        }
        if (r == -EBADMSG && !hint && !n_keys)
                r = cp_error_set(reterr, -EBADMSG, "no DataStoreEncryptionKey to open it with");
        return r;
}

int cp_pii_encrypt(const uint8_t fallback[CP_DATA_KEY_LEN], const void *plain, size_t len, char **ret,
                   cp_error *reterr) {
        const uint8_t *k = n_keys ? keys[atomic_load(&writer)].key : fallback;

        return cp_crypto_aead_encrypt(k, plain, len, ret, reterr);
}
