-- The browser side of signing in with an upstream. Both tables hold short-lived,
-- single-use rows bound to one browser by a cookie: the row is keyed by the SHA-256
-- of the cookie's random value, so the table alone cannot finish anything. Nothing
-- secret is kept: `state`, `nonce` and the PKCE verifier are derived from the cookie
-- value with the server key (HMAC), so they exist only while the browser holds it.

-- A round trip to an upstream, from `POST /login/upstream/{name}` to its callback.
CREATE TABLE upstream_round_trips (
    browser_hash        bytea PRIMARY KEY,
    -- SHA-256 of the `state` sent: the callback must bring it back.
    state_hash          bytea NOT NULL,
    upstream_id         uuid NOT NULL REFERENCES upstreams (id) ON DELETE CASCADE,
    -- A local path to go on to afterwards (e.g. a waiting /oauth2/authorize request).
    return_to           text,
    -- Set when a signed-in person connects another upstream from
    -- /account/connections: the callback links to this session's user only.
    connect_session_id  uuid REFERENCES sessions (id) ON DELETE CASCADE,
    created_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL
);
CREATE INDEX upstream_round_trips_upstream_idx ON upstream_round_trips (upstream_id);
CREATE INDEX upstream_round_trips_session_idx ON upstream_round_trips (connect_session_id)
    WHERE connect_session_id IS NOT NULL;
CREATE INDEX upstream_round_trips_expiry_idx ON upstream_round_trips (expires_at);

-- An upstream identity whose address belongs to an existing account, waiting for the
-- person to prove that account (its own password or passkey, and its second factor
-- when asked). It is linked only when this browser then holds a session of that user
-- that began after the row was made.
CREATE TABLE upstream_pending_links (
    browser_hash  bytea PRIMARY KEY,
    upstream_id   uuid NOT NULL REFERENCES upstreams (id) ON DELETE CASCADE,
    subject       text NOT NULL CHECK (length(subject) BETWEEN 1 AND 255),
    email         text,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Where the sign-in was going before the detour (a local path).
    return_to     text,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX upstream_pending_links_upstream_idx ON upstream_pending_links (upstream_id);
CREATE INDEX upstream_pending_links_user_idx ON upstream_pending_links (user_id);
CREATE INDEX upstream_pending_links_expiry_idx ON upstream_pending_links (expires_at);
