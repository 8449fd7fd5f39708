/*
 * bench-account DSN: creates one more account (owner user, "All" group,
 * Default policy, reusable setup key) through the store, as bootstrap
 * does for the first one, and prints ACCOUNT_ID, SETUP_KEY and NETWORK as
 * NAME=value lines. tests/bench/load needs it: an account's /16 network
 * holds at most 65,534 peers, so 100,000 streams need two accounts, and
 * bootstrap creates an account only when there is none.
 */
#include "cp/base.h"
#include "cp/store.h"

int main(int argc, char **argv) {
        cp_store_account_spec spec = { .name = "bench", .setup_key_name = "bench key" };
        cp_store_account_created out;
        cp_error err = { 0 };
        cp_store *s = NULL;

        if (argc != 2) {
                fprintf(stderr, "usage: bench-account DSN\n");
                return 2;
        }
        if (cp_store_open(argv[1], 1, &s, &err) < 0 || cp_store_account_create(s, &spec, &out, &err) < 0) {
                fprintf(stderr, "bench-account: %s\n", err.message);
                cp_store_free(s);
                return 1;
        }
        cp_store_free(s);
        printf("ACCOUNT_ID=%s\nSETUP_KEY=%s\nNETWORK=%s\n", out.account_id, out.setup_key, out.network_cidr);
        return 0;
}
