-- 0013_piifix: the plain-text sealing pass visits only rows with something
-- to seal (issue 13, "Secrets and keys").
--
-- Every replica runs the pass every few seconds (common/store/store-pii.c,
-- PII_SELECT's legacy query). Rows that are plain text but hold nothing to
-- seal -- service users, events whose meta has an empty e-mail and no name
-- -- keep pii_key '' for ever, and the pii_key indexes of 0012 led the pass
-- to them on every check. These partial indexes hold exactly the rows the
-- pass seals (their predicates are the queries' conditions, word for word,
-- so that the planner matches them), ordered as it reads them: empty once
-- everything is sealed.
CREATE INDEX idx_users_pii_legacy ON users (id)
        WHERE pii_key = '' AND (email <> '' OR name <> '');
CREATE INDEX idx_msp_tenants_pii_legacy ON msp_tenants (account_id)
        WHERE pii_key = '' AND (contact_email <> '' OR contact_name <> '');
CREATE INDEX idx_events_pii_legacy ON events (id)
        WHERE meta ? 'email' AND pii_key = '' AND (meta->>'email' <> '' OR COALESCE(meta->>'name', '') <> '');
