-- Apps: the OAuth 2.0 / OpenID Connect provider. Every token it hands out is bound to
-- a grant, and (except client_credentials) every grant to a browser session, so that
-- revoking the session, disabling the user or revoking the grant is seen at the next
-- introspection, refresh or userinfo call.

-- The SHA-256 of the `gh_login` mark of the authorization request whose sign-in made
-- this session: `prompt=login` and `max_age` are satisfied by that sign-in, and by no
-- other (a mark copied from history or another browser never matches).
ALTER TABLE sessions ADD COLUMN login_mark bytea;

CREATE TABLE oauth_clients (
    -- Public identifier (random, URL-safe). Not a secret.
    id                         text PRIMARY KEY,
    name                       text NOT NULL,
    -- SHA-256 of the generated 32-byte secret; NULL for a public client (PKCE only).
    -- The secret is high-entropy, so a fast hash is right here (argon2 is for people).
    secret_hash                bytea,
    redirect_uris              text[] NOT NULL,
    post_logout_redirect_uris  text[] NOT NULL DEFAULT '{}',
    backchannel_logout_uri     text,
    -- Skips the consent page (an app of the team that runs Gatehouse).
    first_party                boolean NOT NULL DEFAULT false,
    -- An API that may introspect every token, not only its own.
    introspect_any             boolean NOT NULL DEFAULT false,
    created_at                 timestamptz NOT NULL,
    CHECK (cardinality(redirect_uris) >= 1)
);

-- RS256 signing keys. The private half is sealed (crypto::Keys, context
-- "signing_keys.private"); the public half is kept as the JWK's n and e.
-- The newest key without `verify_until` signs; a rotated key keeps verifying until
-- `verify_until` (its tokens' lifetime), then it is retired and its tokens refused.
CREATE TABLE signing_keys (
    id            uuid PRIMARY KEY,
    -- The JWK `kid`: base64url of the SHA-256 of the public key's n and e.
    kid           text NOT NULL UNIQUE,
    alg           text NOT NULL CHECK (alg = 'RS256'),
    private_enc   bytea NOT NULL,
    n             bytea NOT NULL,
    e             bytea NOT NULL,
    created_at    timestamptz NOT NULL,
    verify_until  timestamptz
);
-- At most one signing (unrotated) key: several nodes starting at once agree on one.
CREATE UNIQUE INDEX signing_keys_one_current_idx ON signing_keys ((true)) WHERE verify_until IS NULL;

-- "This user allowed this app these scopes": asked once per scope set.
CREATE TABLE oauth_consents (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id   text NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    -- The scopes, sorted and space-separated.
    scope       text NOT NULL,
    granted_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, client_id, scope)
);
CREATE INDEX oauth_consents_client_idx ON oauth_consents (client_id);

-- Authorization codes (RFC 6749 §4.1.2): single use, 60 s, bound to everything the
-- token request must repeat. Only the SHA-256 of the code is kept.
CREATE TABLE oauth_codes (
    code_hash       bytea PRIMARY KEY,
    client_id       text NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id      uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    redirect_uri    text NOT NULL,
    scope           text NOT NULL,
    nonce           text,
    -- RFC 7636 S256 challenge (base64url), or NULL for a confidential client without PKCE.
    code_challenge  text,
    acr             text NOT NULL,
    amr             text[] NOT NULL,
    auth_time       timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);
CREATE INDEX oauth_codes_client_idx ON oauth_codes (client_id);
CREATE INDEX oauth_codes_user_idx ON oauth_codes (user_id);
CREATE INDEX oauth_codes_session_idx ON oauth_codes (session_id);
CREATE INDEX oauth_codes_expires_idx ON oauth_codes (expires_at);

-- What one code exchange (or client_credentials request) issued: the family of its
-- access and refresh tokens. Revoking the grant kills them all.
CREATE TABLE oauth_grants (
    id              uuid PRIMARY KEY,
    client_id       text NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    -- NULL for client_credentials (no person, no session).
    user_id         uuid REFERENCES users (id) ON DELETE CASCADE,
    session_id      uuid REFERENCES sessions (id) ON DELETE CASCADE,
    scope           text NOT NULL,
    acr             text,
    amr             text[],
    auth_time       timestamptz,
    -- The code this grant came from: a replay of it revokes the grant.
    code_hash       bytea UNIQUE,
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text,
    CHECK ((user_id IS NULL) = (session_id IS NULL)),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX oauth_grants_client_idx ON oauth_grants (client_id);
CREATE INDEX oauth_grants_user_idx ON oauth_grants (user_id);
CREATE INDEX oauth_grants_session_idx ON oauth_grants (session_id);

-- Issued access tokens (RFC 9068 JWTs), by `jti`: introspection reads this row with
-- its grant, session, user and signing key in one indexed look-up.
CREATE TABLE oauth_access_tokens (
    jti         uuid PRIMARY KEY,
    grant_id    uuid NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    kid         text NOT NULL REFERENCES signing_keys (kid),
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX oauth_access_tokens_grant_idx ON oauth_access_tokens (grant_id);
CREATE INDEX oauth_access_tokens_kid_idx ON oauth_access_tokens (kid);
CREATE INDEX oauth_access_tokens_expires_idx ON oauth_access_tokens (expires_at);

-- Refresh tokens: opaque, SHA-256 only, rotated on every use. A used one presented
-- again is a theft signal (RFC 9700 §4.14.2).
CREATE TABLE oauth_refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    grant_id    uuid NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX oauth_refresh_tokens_grant_idx ON oauth_refresh_tokens (grant_id);
CREATE INDEX oauth_refresh_tokens_expires_idx ON oauth_refresh_tokens (expires_at);
