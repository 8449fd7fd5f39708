#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/log.h"
#include "cp/util.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>

#define FP_LABEL "netbird-cp data key fingerprint v1"
#define MARKER "\"pii1:"
#define PLAIN_MARK "pii0:"     /* CP_PII_PLAIN's escape, stripped once */
#define PLAIN_MARK_LEN 5

typedef struct pii_key {
        /* libsodium's precomputed AES-256-GCM key schedule, when the CPU
         * has AES-NI (aes_hw): read-only once installed, so every thread
         * opens values with it at once, without allocating. */
        crypto_aead_aes256gcm_state st;
        uint8_t key[CP_DATA_KEY_LEN];
        char fp[CP_PII_FP_LEN];
} pii_key;

/* keys[0] the configured key, keys[1] the previous one (n_keys says how
 * many). Written only by install/uninstall, before threads use them. */
static pii_key keys[CP_PII_MAX_KEYS];
static int n_keys;
static atomic_int writer;       /* index into keys; -1 none (cp_pii_drop_writer) */
static bool aes_hw;             /* crypto_aead_aes256gcm_is_available() at install */
/* Bumped by install/uninstall: threads' cached contexts of an older
 * generation are keyed again. */
static atomic_uint generation = 1;

/* Per thread, per key: an AES-256-GCM context with the key schedule done,
 * so that opening a short value costs one IV set-up and no allocation
 * (listing 1,000 users opens 2,000 values). Freed when the thread ends. */
typedef struct thread_ctx {
        EVP_CIPHER_CTX *ctx[CP_PII_MAX_KEYS];
        unsigned gen[CP_PII_MAX_KEYS];
} thread_ctx;

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void thread_ctx_free(void *p) {
        thread_ctx *t = p;

        for (int i = 0; i < CP_PII_MAX_KEYS; i++)
                EVP_CIPHER_CTX_free(t->ctx[i]);         /* wipes the key schedule */
        free(t);
}

static void tls_init(void) {
        if (pthread_key_create(&tls_key, thread_ctx_free) != 0)
                abort();
}

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
        aes_hw = crypto_aead_aes256gcm_is_available() == 1;
        memcpy(keys[0].key, key, CP_DATA_KEY_LEN);
        cp_pii_fingerprint(key, keys[0].fp);
        if (aes_hw)
                (void) crypto_aead_aes256gcm_beforenm(&keys[0].st, key);
        n_keys = 1;
        atomic_fetch_add(&generation, 1);
        if (previous && sodium_memcmp(previous, key, CP_DATA_KEY_LEN) != 0) {
                memcpy(keys[1].key, previous, CP_DATA_KEY_LEN);
                cp_pii_fingerprint(previous, keys[1].fp);
                if (aes_hw)
                        (void) crypto_aead_aes256gcm_beforenm(&keys[1].st, previous);
                n_keys = 2;
        }
        atomic_store(&writer, 0);
}

void cp_pii_uninstall(void) {
        atomic_fetch_add(&generation, 1);
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

void cp_pii_drop_writer(void) {
        atomic_store(&writer, -1);
}

const char *cp_pii_writer_fp(void) {
        int w = atomic_load(&writer);

        return n_keys && w >= 0 ? keys[w].fp : "";
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
        if (i < 0)
                i = atomic_load(&writer);
        if (i < 0) {            /* dropped: the database has another key */
                fp[0] = '\0';
                return NULL;
        }
        const pii_key *k = &keys[i];
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

/* The calling thread's context for keys[i], keyed; NULL on failure. */
static EVP_CIPHER_CTX *thread_ctx_get(int i) {
        thread_ctx *t;
        unsigned gen = atomic_load(&generation);

        (void) pthread_once(&tls_once, tls_init);
        t = pthread_getspecific(tls_key);
        if (!t) {
                t = cp_xcalloc(1, sizeof *t);
                if (pthread_setspecific(tls_key, t) != 0) {
                        free(t);
                        return NULL;
                }
        }
        if (!t->ctx[i]) {
                t->ctx[i] = EVP_CIPHER_CTX_new();
                if (!t->ctx[i])
                        return NULL;
        }
        if (t->gen[i] != gen) {
                if (EVP_DecryptInit_ex(t->ctx[i], EVP_aes_256_gcm(), NULL, keys[i].key, NULL) != 1)
                        return NULL;
                t->gen[i] = gen;
        }
        return t->ctx[i];
}

#define FAST_MAX 1024           /* longer values take cp_crypto_aead_decrypt_dup */

/* Opens b64[0..n) with keys[i] into out (FAST_MAX + 1 bytes, NUL added).
 * Returns the length, -EBADMSG (the tag does not match: wrong key or
 * altered), or -E2BIG (anything else -- too long for this path, not
 * base64, too short: the general path decides). out holds nothing on
 * failure. */
static int fast_open(int i, const char *b64, size_t n, char out[FAST_MAX + 1]) {
        uint8_t raw[FAST_MAX + CP_AEAD_NONCE_LEN + CP_AEAD_TAG_LEN];
        size_t raw_len = 0;
        int outl = 0, finl = 0;
        EVP_CIPHER_CTX *ctx;

        /* n characters decode to at most n / 4 * 3 bytes. */
        if (n / 4 * 3 + 3 > sizeof raw)
                return -E2BIG;
        if (sodium_base642bin(raw, sizeof raw, b64, n, NULL, &raw_len, NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
            raw_len < CP_AEAD_NONCE_LEN + CP_AEAD_TAG_LEN)
                return -E2BIG;
        size_t len = raw_len - CP_AEAD_NONCE_LEN - CP_AEAD_TAG_LEN;
        if (aes_hw) {
                if (crypto_aead_aes256gcm_decrypt_detached_afternm((uint8_t *) out, NULL, raw + CP_AEAD_NONCE_LEN,
                                                                   len, raw + CP_AEAD_NONCE_LEN + len, NULL, 0,
                                                                   raw, &keys[i].st) != 0) {
                        cp_explicit_bzero(out, len);
                        return -EBADMSG;
                }
                out[len] = '\0';
                return (int) len;
        }
        ctx = thread_ctx_get(i);
        if (!ctx)
                return -E2BIG;
        if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, raw) != 1 ||
            EVP_DecryptUpdate(ctx, (uint8_t *) out, &outl, raw + CP_AEAD_NONCE_LEN, (int) len) != 1 ||
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CP_AEAD_TAG_LEN, raw + CP_AEAD_NONCE_LEN + len) != 1 ||
            EVP_DecryptFinal_ex(ctx, (uint8_t *) out + outl, &finl) != 1 || (size_t) (outl + finl) != len) {
                cp_explicit_bzero(out, len);    /* GCM's unauthenticated output */
                return -EBADMSG;
        }
        out[len] = '\0';
        return (int) len;
}

/* Opens b64[0..n) with keys[i] into a new string: 0 and *ret, or < 0. */
static int open_dup(int i, const char *b64, size_t n, char **ret, cp_error *reterr) {
        char buf[FAST_MAX + 1];
        int r = fast_open(i, b64, n, buf);

        if (r >= 0) {
                *ret = cp_xmalloc((size_t) r + 1);
                memcpy(*ret, buf, (size_t) r + 1);
                cp_explicit_bzero(buf, (size_t) r);
                return 0;
        }
        if (r == -EBADMSG && reterr)
                return cp_error_set(reterr, -EBADMSG, "cannot decrypt value: wrong DataStoreEncryptionKey or "
                                    "altered data");
        if (r == -EBADMSG)
                return r;
        _cleanup_free_ char *copy = cp_xstrndup(b64, n);
        return cp_crypto_aead_decrypt_dup(keys[i].key, copy, ret, NULL, reterr);
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
        return open_dup(i, stored, strlen(stored), ret, reterr);
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
        return json && (strstr(json, MARKER) || strstr(json, "\"" PLAIN_MARK));
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
        if (s[n] != '"' || n > 4096)
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
                /* Runs that need no escaping go in one copy. */
                const unsigned char *run = p;
                while (*p >= 0x20 && *p != '"' && *p != '\\')
                        p++;
                cp_strbuf_add(out, run, (size_t) (p - run));
                if (!*p)
                        break;
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

/* At m (an opening quote): the marker's value opened into out, JSON-
 * escaped. Returns the end of the string token (past its closing quote),
 * or NULL when it is not a marker of an installed key or does not open
 * (nothing written). */
static const char *expand_one(const char *m, cp_strbuf *out) {
        const char *val;
        size_t len;
        int i = parse_marker(m + sizeof MARKER - 1, &val, &len);
        char *plain = NULL;
        cp_error err = { 0 };

        if (i < 0)
                return NULL;
        if (len == 0) {                 /* "" sealed is "" */
                cp_strbuf_adds(out, "\"\"");
                return val + 1;
        }
        /* Short values (all real ones): no allocation. */
        char buf[FAST_MAX + 1];
        int n = fast_open(i, val, len, buf);
        if (n >= 0) {
                add_pg_json_string(out, buf);
                cp_explicit_bzero(buf, (size_t) n);
                return val + len + 1;
        }
        if (open_dup(i, val, len, &plain, &err) >= 0) {
                add_pg_json_string(out, plain);
                cp_explicit_bzero(plain, strlen(plain));
                free(plain);
                return val + len + 1;   /* past the closing quote */
        }
        cp_log_kv(&log_ctx, CP_LOG_WARN, "cannot open personal data; shown sealed", "key_fingerprint", keys[i].fp,
                  "error", err.message, NULL);
        return NULL;
}

void cp_pii_expand_json(const char *json, cp_strbuf *out) {
        const char *p = json, *done = json;     /* done: copied up to here */
        bool in_string = false;

        /* Only a whole string token is a marker: the scanner follows
         * JSON's strings (an unescaped quote opens or closes one), so
         * "pii1:" inside a string (x\"pii1:...) is text. */
        for (;;) {
                p += strcspn(p, "\"\\");
                if (!*p)
                        break;
                if (*p == '\\') {             /* only inside strings */
                        p += p[1] ? 2 : 1;
                        continue;
                }
                if (in_string) {                /* the closing quote */
                        in_string = false;
                        p++;
                        continue;
                }
                if (strncmp(p + 1, PLAIN_MARK, PLAIN_MARK_LEN) == 0) {
                        /* CP_PII_PLAIN's escape: drop it, the rest is text. */
                        cp_strbuf_add(out, done, (size_t) (p + 1 - done));
                        p += 1 + PLAIN_MARK_LEN;
                        done = p;
                        in_string = true;
                        continue;
                }
                if (strncmp(p, MARKER, sizeof MARKER - 1) == 0) {
                        cp_strbuf_add(out, done, (size_t) (p - done));
                        const char *end = expand_one(p, out);
                        if (end) {
                                p = done = end;
                                continue;
                        }
                        done = p;       /* not ours: copied as it is */
                }
                in_string = true;
                p++;
        }
        cp_strbuf_adds(out, done);
}

char *cp_pii_open_marked(const char *value) {
        char fp[CP_PII_FP_LEN], *plain = NULL;
        size_t n;
        int i;

        if (!value)
                return cp_xstrdup("");
        if (strncmp(value, PLAIN_MARK, PLAIN_MARK_LEN) == 0)
                return cp_xstrdup(value + PLAIN_MARK_LEN);      /* CP_PII_PLAIN's escape */
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
        if (i >= 0 && !s[33])
                return cp_xstrdup("");
        if (i < 0 || open_dup(i, s + 33, strlen(s + 33), &plain, NULL) < 0) {
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
        int w = atomic_load(&writer);
        const uint8_t *k = n_keys ? (w >= 0 ? keys[w].key : NULL) : fallback;

        if (!k)
                return cp_error_set(reterr, -EKEYREJECTED, "the database is sealed with another "
                                    "DataStoreEncryptionKey: nothing is sealed until it matches again");
        return cp_crypto_aead_encrypt(k, plain, len, ret, reterr);
}
