-- Sign-in with another identity provider ("upstreams"): the providers an operator
-- added, the identities people hold there, and where a session or a waiting second
-- factor came from. Identity is (upstream, subject), never the e-mail address alone.

CREATE TABLE upstreams (
    id                 uuid PRIMARY KEY,
    -- Part of the redirect and back-channel logout URIs registered at the upstream.
    name               text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    -- 'oidc' (discovery from the issuer) or 'github' (OAuth 2.0 and its REST API).
    kind               text NOT NULL CHECK (kind IN ('oidc', 'github')),
    -- The preset it was made from ('google', 'microsoft', 'gitlab'), for `upstream list`.
    preset             text,
    issuer             text,
    base_url           text,
    api_url            text,
    client_id          text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 512),
    -- Sealed with the secret key (crypto::Keys), re-sealed by `keys reencrypt`.
    client_secret_enc  bytea NOT NULL,
    scopes             text NOT NULL,
    -- Link at once to an account with the same address when the upstream says the
    -- address is verified (only for upstreams that verify addresses).
    trust_email        boolean NOT NULL DEFAULT false,
    -- What pages show ("Continue with …").
    label              text NOT NULL CHECK (length(label) BETWEEN 1 AND 100),
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CHECK ((kind = 'oidc') = (issuer IS NOT NULL)),
    CHECK ((kind = 'github') = (base_url IS NOT NULL AND api_url IS NOT NULL))
);

CREATE TABLE federated_identities (
    id             uuid PRIMARY KEY,
    upstream_id    uuid NOT NULL REFERENCES upstreams (id) ON DELETE CASCADE,
    -- The upstream's `sub` (GitHub: its numeric user id).
    subject        text NOT NULL CHECK (length(subject) BETWEEN 1 AND 255),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The address the upstream gave at the last sign-in (shown on /account/connections).
    email          text,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz NOT NULL,
    UNIQUE (upstream_id, subject),
    -- One identity per upstream per person.
    UNIQUE (user_id, upstream_id)
);

-- The upstream session a Gatehouse session was made from: its upstream back-channel
-- logout ends it. Kept when the upstream is deleted (the session just loses the tie).
ALTER TABLE sessions
    ADD COLUMN upstream_id  uuid REFERENCES upstreams (id) ON DELETE SET NULL,
    ADD COLUMN upstream_sid text;
CREATE INDEX sessions_upstream_idx ON sessions (upstream_id, upstream_sid)
    WHERE upstream_id IS NOT NULL;

-- A second factor demanded of an upstream sign-in carries its origin to the session.
ALTER TABLE mfa_challenges
    ADD COLUMN upstream_id  uuid REFERENCES upstreams (id) ON DELETE CASCADE,
    ADD COLUMN upstream_sid text;
CREATE INDEX mfa_challenges_upstream_idx ON mfa_challenges (upstream_id)
    WHERE upstream_id IS NOT NULL;

-- People who came from an upstream may have no password (NULL): every password path
-- treats them as having none that can match.
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
