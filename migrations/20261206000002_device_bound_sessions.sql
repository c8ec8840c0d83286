-- Device Bound Session Credentials (W3C WebAppSec DBSC draft): a browser that
-- supports it binds its session to a key it keeps in hardware; the session then also
-- needs a short-lived cookie that only a proof by that key renews.

-- The public key (JWK, not a secret) and its RFC 7638 thumbprint; the current and the
-- previous bound cookie (SHA-256 only) with their expiries: requests already under way
-- when a refresh lands still carry the previous one.
ALTER TABLE sessions ADD COLUMN dbsc_jwk text,
                     ADD COLUMN dbsc_thumbprint text,
                     ADD COLUMN dbsc_bound_at timestamptz,
                     ADD COLUMN dbsc_cookie_hash bytea,
                     ADD COLUMN dbsc_cookie_expires_at timestamptz,
                     ADD COLUMN dbsc_prev_cookie_hash bytea,
                     ADD COLUMN dbsc_prev_cookie_expires_at timestamptz,
                     ADD CONSTRAINT sessions_dbsc_check
                         CHECK ((dbsc_jwk IS NULL) = (dbsc_bound_at IS NULL)
                            AND (dbsc_jwk IS NULL) = (dbsc_cookie_hash IS NULL));

-- Challenges are stateless (a keyed MAC over the session, a nonce and the time) until
-- used: each is recorded here, hashed, when a proof spends it, so none works twice.
CREATE TABLE dbsc_used_challenges (
    challenge_hash  bytea PRIMARY KEY CHECK (length(challenge_hash) = 32),
    session_id      uuid NOT NULL,
    used_at         timestamptz NOT NULL,
    -- After this the challenge is too old to be accepted anyway: the row can go.
    expires_at      timestamptz NOT NULL
);
CREATE INDEX dbsc_used_challenges_expires_idx ON dbsc_used_challenges (expires_at);
