/*
 * mgmt-tls.h: the server certificate and key, read and checked once at
 * startup so a bad file is a clear config error instead of a failed
 * handshake later.
 */
#pragma once

#include "cp/error.h"

typedef struct mgmt_tls {
        char *cert_pem;         /* certificate chain, PEM */
        char *key_pem;          /* private key, PEM; wiped on free */
        char *subject;          /* first certificate's subject, for the log */
} mgmt_tls;

/* Reads both files (each at most 1 MiB), checks with OpenSSL that the first
 * is a certificate chain, the second a private key, and that they belong
 * together. On success *ret is owned by the caller (mgmt_tls_free). */
int mgmt_tls_load(const char *cert_file, const char *key_file, mgmt_tls **ret, cp_error *reterr);
/* Accepts NULL; returns NULL. */
mgmt_tls *mgmt_tls_free(mgmt_tls *t);
