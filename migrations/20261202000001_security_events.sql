-- Security events: what happened to an account (sign-ins, failures, sign-outs,
-- revocations, password and address changes, mailed-link uses), each written in the
-- same transaction as its cause. Personal fields are sealed like the session's.
CREATE TABLE security_events (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The session it concerns, if any (no foreign key: sessions are pruned first).
    session_id      uuid,
    kind            text NOT NULL,
    -- Who did it: the user, an operator, or Gatehouse itself.
    actor           text NOT NULL CHECK (actor IN ('user', 'admin', 'system')),
    at              timestamptz NOT NULL,
    -- Sealed (XChaCha20-Poly1305, crypto::Keys) client address and user agent.
    ip_enc          bytea,
    user_agent_enc  bytea,
    location_enc    bytea,
    -- Not personal: e.g. why a session was revoked.
    detail          text
);
-- The account's history, newest first; "failures in the last 15 minutes" too.
CREATE INDEX security_events_user_at_idx ON security_events (user_id, at DESC);
-- Retention sweeps.
CREATE INDEX security_events_at_idx ON security_events (at);
