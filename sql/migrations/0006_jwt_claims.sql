-- 0006_jwt_claims: one-time use of IdP tokens on the agent protocol.
--
-- NetBird's claimLoginToken keeps "jwt-used:<sha256>" in its cache until
-- the token's exp, so a JWT logs a peer in (Login or ExtendAuthSession)
-- once only. Replicas share no cache, so the claim lives here: the claim
-- is one INSERT ... ON CONFLICT DO NOTHING, and the row that made it is
-- the only winner whichever replica the replay reaches. Rows are useless
-- once expires_at has passed (the validator refuses the token by then);
-- the login-expiry sweep deletes them. The token itself is never stored.
CREATE TABLE jwt_claims (
    token_hash  text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),  -- hex SHA-256 of the token text
    expires_at  timestamptz NOT NULL,                                    -- the token's exp
    claimed_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_jwt_claims_expires_at ON jwt_claims (expires_at);
