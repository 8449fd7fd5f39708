/* common/crypto/crypto-pii.c: key fingerprints, the writer key, sealing
 * and opening personal data, and the CP_PII_SQL markers in JSON. */
#include "cp/base.h"
#include "cp/crypto-pii.h"
#include "cp/crypto.h"
#include "cp/log.h"
#include "cptest.h"

static uint8_t key_a[32], key_b[32];

static void install_ab(void) {
        for (int i = 0; i < 32; i++) {
                key_a[i] = (uint8_t) i;
                key_b[i] = (uint8_t) (100 + i);
        }
        cp_pii_install(key_a, key_b);
}

TEST(fingerprint_is_hmac_of_the_label_and_never_the_key) {
        char fp[CP_PII_FP_LEN];
        uint8_t zero[32] = { 0 };

        /* HMAC-SHA256(32 zero bytes, "netbird-cp data key fingerprint v1"),
         * first 16 bytes (python3 -c 'import hmac,hashlib; ...'). */
        cp_pii_fingerprint(zero, fp);
        ASSERT_EQ(32, (int) strlen(fp));
        ASSERT_STREQ("3a808a100aed1619157a80908048c721", fp);
        install_ab();
        ASSERT_TRUE(strcmp(cp_pii_key_fp(), cp_pii_previous_fp()) != 0);
        ASSERT_STREQ(cp_pii_key_fp(), cp_pii_writer_fp());
}

TEST(seal_uses_the_writer_and_open_follows_the_row_key) {
        char fp[CP_PII_FP_LEN] = "", fp2[CP_PII_FP_LEN] = "", *out = NULL;
        cp_error err = { 0 };

        install_ab();
        char *a = cp_pii_seal("ada@x.test", fp);
        ASSERT_STREQ(cp_pii_key_fp(), fp);
        ASSERT_TRUE(strstr(a, "ada") == NULL);
        ASSERT_EQ(0, cp_pii_use(cp_pii_previous_fp()));
        char *b = cp_pii_seal("ada@x.test", fp2);
        ASSERT_STREQ(cp_pii_previous_fp(), fp2);
        /* Each opens with the key its fingerprint names. */
        ASSERT_OK(cp_pii_open_strict(fp, a, &out, &err), &err);
        ASSERT_STREQ("ada@x.test", out);
        free(out);
        ASSERT_OK(cp_pii_open_strict(fp2, b, &out, &err), &err);
        ASSERT_STREQ("ada@x.test", out);
        free(out);
        /* The wrong fingerprint is an authentication failure, not garbage. */
        ASSERT_EQ(-EBADMSG, cp_pii_open_strict(fp2, a, &out, &err));
        ASSERT_EQ(-ENOKEY, cp_pii_open_strict("00000000000000000000000000000000", a, &out, &err));
        ASSERT_EQ(-ENOKEY, cp_pii_use("00000000000000000000000000000000"));
        /* "" = legacy plain text, returned as is; cp_pii_open never fails. */
        out = cp_pii_open("", "plain");
        ASSERT_STREQ("plain", out);
        free(out);
        out = cp_pii_open(fp2, a);
        ASSERT_STREQ("", out);
        free(out);
        /* The second value of a row keeps the first one's key. */
        char *c = cp_pii_seal("x", fp);
        ASSERT_STREQ(cp_pii_key_fp(), fp);
        free(a);
        free(b);
        free(c);
        /* Empty stays empty. */
        fp[0] = '\0';
        c = cp_pii_seal("", fp);
        ASSERT_STREQ("", c);
        free(c);
}

TEST(expand_json_is_byte_for_byte_postgres_escaping) {
        char fp[CP_PII_FP_LEN] = "";
        cp_strbuf in, out;

        install_ab();
        /* Every character class PostgreSQL's escape_json treats apart. */
        char *v = cp_pii_seal("q\" b\\ \b\f\n\r\t \x01 \x7f é", fp);
        cp_strbuf_init(&in);
        cp_strbuf_init(&out);
        cp_strbuf_addf(&in, "[{\"email\" : \"pii1:%s:%s\", \"name\" : \"pii1:%s:AAAA\", \"x\" : \"pii1:zz\","
                       " \"e\" : \"pii1:%s:\"}]", fp, v, fp, fp);
        ASSERT_TRUE(cp_pii_json_has_marker(in.buf));
        cp_pii_expand_json(in.buf, &out);
        /* The forged marker (not sealed with our key) stays as it was. */
        char want[512];
        (void) snprintf(want, sizeof want, "[{\"email\" : \"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0001 \x7f é\", "
                        "\"name\" : \"pii1:%s:AAAA\", \"x\" : \"pii1:zz\", \"e\" : \"\"}]", fp);
        ASSERT_STREQ(want, out.buf);
        ASSERT_FALSE(cp_pii_json_has_marker("{\"email\" : \"a@b\"}"));
        cp_strbuf_release(&in);
        cp_strbuf_release(&out);
        free(v);
}

TEST(expand_json_opens_only_whole_strings_and_strips_the_plain_escape) {
        char fp[CP_PII_FP_LEN] = "";
        cp_strbuf in, out;

        install_ab();
        char *v = cp_pii_seal("secret@x.test", fp);
        cp_strbuf_init(&in);
        cp_strbuf_init(&out);
        /* A marker inside a string (x"pii1:... escaped by the JSON) and
         * one escaped by CP_PII_PLAIN are text; the whole-string one
         * opens. */
        cp_strbuf_addf(&in, "{\"a\" : \"x\\\"pii1:%s:%s\\\"\", \"b\" : \"pii0:pii1:%s:%s\", \"c\" : \"pii0:pii0:z\","
                       " \"d\" : [\"pii1:%s:%s\"]}", fp, v, fp, v, fp, v);
        cp_pii_expand_json(in.buf, &out);
        char want[1024];
        (void) snprintf(want, sizeof want, "{\"a\" : \"x\\\"pii1:%s:%s\\\"\", \"b\" : \"pii1:%s:%s\", \"c\" : \"pii0:z\","
                        " \"d\" : [\"secret@x.test\"]}", fp, v, fp, v);
        ASSERT_STREQ(want, out.buf);
        /* A JSON with only escaped plain text is still expanded. */
        ASSERT_TRUE(cp_pii_json_has_marker("{\"b\" : \"pii0:pii1:x\"}"));
        cp_strbuf_release(&in);
        cp_strbuf_release(&out);
        /* cp_pii_open_marked strips the escape once and opens nothing. */
        char m[512];
        (void) snprintf(m, sizeof m, "pii0:pii1:%s:%s", fp, v);
        char *o = cp_pii_open_marked(m);
        ASSERT_STREQ(m + 5, o);
        free(o);
        free(v);
}

TEST(values_around_the_fast_path_bound_open) {
        char buf[1200], fp[CP_PII_FP_LEN], m[2048];
        cp_error err = { 0 };

        install_ab();
        for (size_t len = 1000; len <= 1100; len++) {
                memset(buf, 'a' + (int) (len % 26), len);
                buf[len] = '\0';
                fp[0] = '\0';
                char *v = cp_pii_seal(buf, fp), *out = NULL;
                ASSERT_OK(cp_pii_open_strict(fp, v, &out, &err), &err);
                ASSERT_STREQ(buf, out);
                free(out);
                (void) snprintf(m, sizeof m, "pii1:%s:%s", fp, v);
                out = cp_pii_open_marked(m);
                ASSERT_STREQ(buf, out);
                free(out);
                cp_strbuf in, o;
                cp_strbuf_init(&in);
                cp_strbuf_init(&o);
                cp_strbuf_addf(&in, "[\"%s\"]", m);
                cp_pii_expand_json(in.buf, &o);
                ASSERT_EQ((int) len + 4, (int) o.len);
                cp_strbuf_release(&in);
                cp_strbuf_release(&o);
                /* The wrong key still fails as an authentication failure. */
                ASSERT_EQ(-EBADMSG, cp_pii_open_strict(cp_pii_previous_fp(), v, &out, &err));
                free(v);
        }
}

TEST(a_dropped_writer_seals_nothing_until_one_is_chosen) {
        char fp[CP_PII_FP_LEN] = "", *out = NULL;
        cp_error err = { 0 };
        uint8_t plain[4] = { 1, 2, 3, 4 };

        install_ab();
        cp_pii_drop_writer();
        ASSERT_STREQ("", cp_pii_writer_fp());
        ASSERT_TRUE(cp_pii_seal("ada@x.test", fp) == NULL);
        ASSERT_STREQ("", fp);
        ASSERT_EQ(-EKEYREJECTED, cp_pii_encrypt(key_a, plain, sizeof plain, &out, &err));
        ASSERT_TRUE(out == NULL);
        /* Opening still works; choosing a writer restores sealing. */
        ASSERT_EQ(0, cp_pii_use(cp_pii_key_fp()));
        char *v = cp_pii_seal("ada@x.test", fp);
        ASSERT_TRUE(v != NULL);
        cp_pii_drop_writer();
        ASSERT_OK(cp_pii_open_strict(fp, v, &out, &err), &err);
        ASSERT_STREQ("ada@x.test", out);
        free(out);
        free(v);
}

TEST(open_marked_single_values) {
        char fp[CP_PII_FP_LEN] = "", m[512];

        install_ab();
        char *v = cp_pii_seal("Gus Gone", fp);
        (void) snprintf(m, sizeof m, "pii1:%s:%s", fp, v);
        char *o = cp_pii_open_marked(m);
        ASSERT_STREQ("Gus Gone", o);
        free(o);
        o = cp_pii_open_marked("pii1:nothex");
        ASSERT_STREQ("pii1:nothex", o);
        free(o);
        o = cp_pii_open_marked(NULL);
        ASSERT_STREQ("", o);
        free(o);
        free(v);
}

TEST(sealed_secrets_open_with_any_installed_key) {
        uint8_t plain[32], out[64];
        char *sealed = NULL;
        cp_error err = { 0 };

        install_ab();
        memset(plain, 7, sizeof plain);
        ASSERT_EQ(0, cp_pii_use(cp_pii_previous_fp()));
        ASSERT_OK(cp_pii_encrypt(key_a, plain, sizeof plain, &sealed, &err), &err);
        /* The hint (the configured key) fails; the previous key opens it. */
        ASSERT_EQ(32, cp_pii_decrypt(key_a, sealed, out, sizeof out, &err));
        ASSERT_TRUE(memcmp(out, plain, 32) == 0);
        free(sealed);
        /* Without keys installed the fallback key is used. */
        cp_pii_uninstall();
        ASSERT_FALSE(cp_pii_installed());
        ASSERT_OK(cp_pii_encrypt(key_a, plain, sizeof plain, &sealed, &err), &err);
        ASSERT_EQ(32, cp_pii_decrypt(key_a, sealed, out, sizeof out, &err));
        ASSERT_EQ(-EBADMSG, cp_pii_decrypt(key_b, sealed, out, sizeof out, &err));
        free(sealed);
        char fp[CP_PII_FP_LEN] = "x";
        char *p = cp_pii_seal("plain", fp);
        ASSERT_STREQ("plain", p);
        ASSERT_STREQ("", fp);
        free(p);
}

int main(int argc, char **argv) {
        /* The warnings of values that do not open go to stderr: stdout
         * is TAP. */
        if (cp_crypto_init() < 0 || cp_log_open("stderr", CP_LOG_INFO, NULL) < 0)
                return 1;
        return cptest_main(argc, argv);
}
