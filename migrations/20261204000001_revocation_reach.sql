-- Revocation reach: back-channel logout deliveries, and the notifications that keep
-- every node's caches honest. Both come from triggers, so every way a session, grant,
-- token, user, client or key changes (today's code paths and tomorrow's, the CLI and
-- a hand-written UPDATE alike) enqueues and notifies in its own transaction.

-- One logout token to deliver: a client that held tokens from a session that ended.
-- Written in the transaction that ended the session; drained by a worker on every
-- node (FOR UPDATE SKIP LOCKED and a lease, like the mail outbox).
CREATE TABLE backchannel_outbox (
    -- Also the logout token's `jti`: a redelivery carries the same one.
    id               uuid PRIMARY KEY,
    client_id        text NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    -- No foreign keys: the session (and even the user) may be swept away before the
    -- delivery is done, and the receiver must still hear of it.
    session_id       uuid NOT NULL,
    user_id          uuid NOT NULL,
    -- Why the session ended (the session's revoked_reason), for the operator.
    reason           text,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    lease_until      timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    delivered_at     timestamptz,
    failed_at        timestamptz,
    UNIQUE (client_id, session_id)
);

CREATE INDEX backchannel_outbox_due_idx ON backchannel_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- The channel every node listens on. Payloads: `session:<uuid>`, `grant:<uuid>`,
-- `token:<uuid>` (an access token's jti), `user:<uuid>`, `client:<id>`, `keys`.
-- NOTIFY is sent at commit, and only if the transaction commits.

CREATE FUNCTION gatehouse_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO backchannel_outbox
        (id, client_id, session_id, user_id, reason, created_at, next_attempt_at)
    SELECT gen_random_uuid(), c.id, NEW.id, NEW.user_id, NEW.revoked_reason,
           NEW.revoked_at, NEW.revoked_at
    FROM oauth_clients c
    WHERE c.backchannel_logout_uri IS NOT NULL
      -- A session that had already expired ended then (expiry sends none: the app's
      -- tokens expire with it); revoking it later is bookkeeping.
      AND OLD.idle_expires_at > NEW.revoked_at AND OLD.absolute_expires_at > NEW.revoked_at
      AND EXISTS (SELECT 1 FROM oauth_grants g
                  WHERE g.session_id = NEW.id AND g.client_id = c.id)
    ON CONFLICT (client_id, session_id) DO NOTHING;
    PERFORM pg_notify('gatehouse_invalidate', 'session:' || NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_ended AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION gatehouse_session_ended();

-- Rows are deleted only by housekeeping, once dead (expired or revoked, so already
-- notified), or by a cascade from a user or client, which notify themselves: no
-- per-row DELETE triggers on the big tables.

CREATE FUNCTION gatehouse_notify_grant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_invalidate', 'grant:' || NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER oauth_grants_revoked AFTER UPDATE OF revoked_at ON oauth_grants
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION gatehouse_notify_grant();

CREATE FUNCTION gatehouse_notify_access_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_invalidate', 'token:' || NEW.jti::text);
    RETURN NULL;
END $$;

CREATE TRIGGER oauth_access_tokens_revoked AFTER UPDATE OF revoked_at ON oauth_access_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION gatehouse_notify_access_token();

-- A user disabled or deleted, or whose address (what userinfo answers) changed.
CREATE FUNCTION gatehouse_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_invalidate', 'user:' || COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER users_changed AFTER UPDATE OF disabled_at, email, email_verified_at ON users
    FOR EACH ROW EXECUTE FUNCTION gatehouse_notify_user();
CREATE TRIGGER users_gone AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION gatehouse_notify_user();

CREATE FUNCTION gatehouse_notify_client() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_invalidate', 'client:' || COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END $$;

CREATE TRIGGER oauth_clients_changed AFTER UPDATE OR DELETE ON oauth_clients
    FOR EACH ROW EXECUTE FUNCTION gatehouse_notify_client();

CREATE FUNCTION gatehouse_notify_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gatehouse_invalidate', 'keys');
    RETURN NULL;
END $$;

-- Per row (NOTIFY folds the repeats of one transaction into one): housekeeping's
-- DELETE that finds nothing must not empty every node's cache.
CREATE TRIGGER signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION gatehouse_notify_keys();
