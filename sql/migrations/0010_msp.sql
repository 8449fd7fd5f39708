-- 0010_msp: managed service providers and their tenants (issue 13).
--
-- A tenant is an ordinary account of this cluster; what makes it a tenant
-- is a row in msp_tenants naming the MSP account that manages it. An MSP is
-- an account the operator enabled with `netbird-cp-admin msp enable`
-- (accounts.msp_enabled_at). The MSP's users act inside a tenant through
-- the REST API's ?account=<tenant id>, with the role that the tenant's
-- `groups` mapping gives the MSP groups they are in (NetBird's
-- TenantGroupResponse: [{"id": <group id in the MSP account>, "role":
-- <role>}]).
--
-- Per account, whether a tenant or not:
--   suspended_at  NULL = active. Set: the account's peers are refused at
--                 Login and Sync and its streams end on every replica; its
--                 rows are kept. Cleared by resume.
--   device_limit  NULL = no limit. The number of peers the account may
--                 hold: a registration that would go past it is refused
--                 (the check and the insert are one statement under the
--                 account's row lock, so concurrent registrations on many
--                 replicas cannot overshoot it).
ALTER TABLE accounts ADD COLUMN msp_enabled_at timestamptz;
ALTER TABLE accounts ADD COLUMN suspended_at timestamptz;
ALTER TABLE accounts ADD COLUMN device_limit integer CHECK (device_limit IS NULL OR device_limit >= 0);

-- One row per tenant account, owned by one MSP account.
--   account_id      the tenant account (deleting it deletes the link)
--   msp_account_id  the MSP; deleting the MSP account unlinks its tenants
--                   (the tenant accounts stay)
--   domain          lower case; unique per MSP, so creating the same
--                   domain again answers with the tenant that exists
--   idempotency_key the client's Idempotency-Key of the create, unique per
--                   MSP (NULL when none was sent)
--   status          NetBird's TenantStatus: 'pending' (created, domain not
--                   verified), 'active' (DNS challenge verified,
--                   activated_at set), 'invited' (an existing account was
--                   invited, invited_at set, not yet accepted), 'existing'
--                   (an invited account accepted)
--   dns_challenge   the value the tenant's domain must publish in a TXT
--                   record; made once at creation and never replaced
--   contact_email,  the tenant's contact details, AES-256-GCM under the
--   contact_name    DataStoreEncryptionKey like users' email and name
--                   ('' when none)
CREATE TABLE msp_tenants (
    account_id          text PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    msp_account_id      text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name                text NOT NULL,
    domain              text NOT NULL CHECK (domain = lower(domain)),
    groups              jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(groups) = 'array'),
    status              text NOT NULL CHECK (status IN ('existing', 'invited', 'pending', 'active')),
    dns_challenge       text NOT NULL,
    idempotency_key     text,
    contact_email       text NOT NULL DEFAULT '',
    contact_name        text NOT NULL DEFAULT '',
    activated_at        timestamptz,
    invited_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at          timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CHECK (account_id <> msp_account_id)
);
CREATE UNIQUE INDEX idx_msp_tenants_domain ON msp_tenants (msp_account_id, domain);
CREATE UNIQUE INDEX idx_msp_tenants_idempotency ON msp_tenants (msp_account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- An activity event done by an MSP user inside a tenant: account_id is the
-- tenant, initiator_id the MSP user, initiator_account_id the MSP account
-- (NULL for an initiator of the same account). The events list resolves
-- the initiator's name and email from that account.
ALTER TABLE events ADD COLUMN initiator_account_id text;
