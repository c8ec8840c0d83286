-- Core schema: accounts, browser sessions, sign-in throttling.
-- Later capabilities (devices, second factors, mail, OAuth) add tables beside these.

CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    -- Canonical form: trimmed, NFKC, lower-case ASCII (see domain::Email).
    email              text NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    email_verified_at  timestamptz,
    password_hash      text NOT NULL,
    is_admin           boolean NOT NULL DEFAULT false,
    disabled_at        timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
-- One account per address, enforced by the database so concurrent registrations
-- cannot both win.
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE sessions (
    -- Public id: shown in the device list, `sid` in tokens. Not a credential.
    id                   uuid PRIMARY KEY,
    -- SHA-256 of the current cookie token; the token itself is never stored.
    token_hash           bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The browser (device cookie) this sign-in came from; filled by device tracking.
    device_id            uuid,
    created_at           timestamptz NOT NULL,
    last_seen_at         timestamptz NOT NULL,
    -- Idle lifetime of this session (short, or "keep me signed in").
    idle_timeout_secs    integer NOT NULL CHECK (idle_timeout_secs > 0),
    idle_expires_at      timestamptz NOT NULL,
    absolute_expires_at  timestamptz NOT NULL,
    remember_me          boolean NOT NULL,
    auth_time            timestamptz NOT NULL,
    aal                  text NOT NULL CHECK (aal IN ('aal1', 'aal2')),
    aal_reached_at       timestamptz NOT NULL,
    amr                  text[] NOT NULL,
    -- Personal data about the session, sealed with XChaCha20-Poly1305 (crypto::Keys).
    ip_enc               bytea,
    user_agent_enc       bytea,
    location_enc         bytea,
    risk_flagged         boolean NOT NULL DEFAULT false,
    risk_reason          text,
    revoked_at           timestamptz,
    revoked_reason       text,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    CHECK (idle_expires_at <= absolute_expires_at)
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_device_id_idx ON sessions (device_id);

-- Throttling counters, shared by every node. `key` is an HMAC of the canonical
-- e-mail (scope 'account', known or not) or of the client IP (scopes 'ip' for failed
-- sign-ins, 'register' for registrations).
CREATE TABLE sign_in_throttle (
    scope              text NOT NULL CHECK (scope IN ('account', 'ip', 'register')),
    key                bytea NOT NULL,
    failures           integer NOT NULL CHECK (failures >= 0),
    window_started_at  timestamptz NOT NULL,
    blocked_until      timestamptz,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Dev mode only: the generated secret key, shared by every node of a dev setup.
CREATE TABLE dev_secret_key (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key         bytea NOT NULL CHECK (length(key) = 32),
    created_at  timestamptz NOT NULL
);
