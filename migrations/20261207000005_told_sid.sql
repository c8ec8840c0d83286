-- Signing in again for one app moves the person's other apps' grants to the new
-- session (same person, same browser). Those apps still know the session by the
-- `sid` their ID token named: the grant keeps it, so that a logout token (Back-Channel
-- Logout 1.0 §2.4) and an `id_token_hint` can name the session the way the app knows
-- it. NULL while the grant has never moved.
ALTER TABLE oauth_grants ADD COLUMN told_sid uuid;
CREATE INDEX oauth_grants_told_sid_idx ON oauth_grants (told_sid) WHERE told_sid IS NOT NULL;

-- A session that ends tells every app that held tokens from it, naming the session
-- both as it is now and, for a moved grant, as the app was first told.
CREATE OR REPLACE FUNCTION gatehouse_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO backchannel_outbox
        (id, client_id, session_id, user_id, reason, created_at, next_attempt_at)
    SELECT gen_random_uuid(), t.client_id, t.sid, NEW.user_id, NEW.revoked_reason,
           NEW.revoked_at, NEW.revoked_at
    FROM (SELECT DISTINCT g.client_id, x.sid
          FROM oauth_grants g
          CROSS JOIN LATERAL (VALUES (NEW.id), (g.told_sid)) AS x (sid)
          WHERE g.session_id = NEW.id AND x.sid IS NOT NULL
            -- A client being deleted (`gatehouse client delete` holds its row for
            -- update) is passed over: waiting for it would fail the foreign key
            -- once it is gone and undo the sign-out that ended this session.
            AND EXISTS (SELECT 1 FROM oauth_clients c
                        WHERE c.id = g.client_id AND c.backchannel_logout_uri IS NOT NULL
                        FOR KEY SHARE SKIP LOCKED)) t
    -- A session that had already expired ended then (expiry sends none: the app's
    -- tokens expire with it); revoking it later is bookkeeping.
    WHERE OLD.idle_expires_at > NEW.revoked_at AND OLD.absolute_expires_at > NEW.revoked_at
    ON CONFLICT (client_id, session_id) DO NOTHING;
    PERFORM pg_notify('gatehouse_invalidate', 'session:' || NEW.id::text);
    RETURN NULL;
END $$;
