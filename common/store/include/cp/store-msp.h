/*
 * cp/store-msp.h: MSP tenants (issue 13; schema in sql/migrations/0010_msp.sql).
 *
 * A tenant is an ordinary account with a msp_tenants row naming the MSP
 * account that manages it. Creating one makes the account exactly as
 * cp_store_tx_account_create() does (the "All" group, the Default policy,
 * an owner user "admin" with a personal access token, a reusable setup
 * key; accounts.domain = the tenant's domain, not domain-primary, so no
 * sign-in joins it by e-mail domain) plus the link row, in the caller's
 * transaction.
 *
 * Idempotent: creates of one MSP with the same idempotency key, and with
 * the same domain, take turns on every replica (transaction-scoped
 * advisory locks per MSP and key / domain, taken here; creates of other
 * domains run side by side, the MSP row is only share-locked). Then it
 * looks for the MSP's tenant with the same idempotency key, then with the
 * same domain; one found is returned as it is (created = false, no
 * secrets, nothing written: its dns_challenge and data stay). A key
 * already used with a different name, domain or groups is -EEXIST. The
 * unique indexes of msp_tenants back this up (a race the locks missed
 * would be -EEXIST, never a duplicate).
 *
 * Errors (negative errno, reterr's message NetBird-style, lower case,
 * fit for a 4xx body):
 *   -ENOENT   the MSP account does not exist
 *   -EPERM    the account is not an MSP (accounts.msp_enabled_at NULL)
 *   -EINVAL   bad name, domain or groups ("tenant name should not be
 *             empty", "invalid domain", "group id <id> not found",
 *             "invalid role: <role>", "groups should be a json array ...")
 *   -EEXIST   the idempotency key was used for a different request
 *   others    internal (the transaction is aborted)
 *
 * Threads: as cp/store-tx.h (one transaction per thread).
 */
#pragma once

#include <stdbool.h>

#include "cp/error.h"
#include "cp/store.h"
#include "cp/store-tx.h"

/* The longest tenant name and domain taken. */
#define CP_MSP_NAME_MAX 255
#define CP_MSP_DOMAIN_MAX 253
#define CP_MSP_IDEMPOTENCY_KEY_MAX 255
#define CP_MSP_GROUPS_MAX 100          /* entries of a tenant's groups mapping */
#define CP_MSP_GROUP_ID_MAX 64

/* Strings are borrowed. */
typedef struct cp_store_msp_tenant_spec {
        const char *msp_account_id;
        const char *name;               /* 1..CP_MSP_NAME_MAX bytes */
        const char *domain;             /* ASCII (IDNA done by the caller); lower-cased here */
        /* A JSON array of {"id": <group id of the MSP account>, "role":
         * <NetBird role>} (other members, e.g. the dashboard's "name",
         * are dropped); NULL or "" = []. */
        const char *groups_json;
        const char *idempotency_key;    /* NULL or "" = none */
} cp_store_msp_tenant_spec;

typedef struct cp_store_msp_tenant_created {
        char account_id[32];            /* the tenant (new or existing) */
        bool created;                   /* false: an existing tenant was returned */
        /* Only when created: the new account's owner, token, setup key
         * (plain text, once; the caller wipes it). */
        cp_store_account_created account;
} cp_store_msp_tenant_created;

/* In the caller's transaction (cp/store-tx.h). */
int cp_store_tx_msp_tenant_create(cp_store_tx *tx, const cp_store_msp_tenant_spec *spec,
                                  cp_store_msp_tenant_created *ret, cp_error *reterr);
/* The same in a transaction of its own (e.g. the admin CLI). */
int cp_store_msp_tenant_create(cp_store *s, const cp_store_msp_tenant_spec *spec, cp_store_msp_tenant_created *ret,
                               cp_error *reterr);

/* Normalises and checks a groups array for the MSP account: every id a
 * group of msp_account_id, every role one of NetBird's (owner, admin,
 * user, auditor, network_admin, billing_admin). On success *ret is a new
 * JSON text [{"id":..,"role":..},...] (free it). Errors as above. */
int cp_store_tx_msp_groups_check(cp_store_tx *tx, const char *msp_account_id, const char *groups_json, char **ret,
                                 cp_error *reterr);

/* A new DNS challenge value: 32 random bytes, base64url without padding
 * (43 characters + NUL). */
#define CP_MSP_CHALLENGE_LEN 44
void cp_store_msp_challenge_new(char out[CP_MSP_CHALLENGE_LEN]);
