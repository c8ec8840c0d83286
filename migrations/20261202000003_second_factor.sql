-- Second factor and step-up: TOTP, recovery codes, and the challenges (a half-finished
-- sign-in, a step-up) that an e-mailed code or a TOTP code completes.

-- One authenticator app per account. A row without `confirmed_at` is an enrolment
-- that has shown its secret but not yet seen a valid code: it protects nothing.
CREATE TABLE totp_credentials (
    user_id         uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The RFC 6238 secret, sealed (crypto::Keys, context "totp_credentials.secret").
    secret_enc      bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    confirmed_at    timestamptz,
    -- The highest time step (unix time / 30) ever accepted: a code is accepted only
    -- for a later step, so no code works twice, not even in two parallel requests
    -- (RFC 6238 §5.2).
    last_used_step  bigint
);

-- Ten single-use codes for when the authenticator is lost. Only a keyed HMAC of each
-- is stored (crypto::Keys::mac, purpose "mfa/recovery-code"): a copy of the database
-- alone cannot be searched for them.
CREATE TABLE recovery_codes (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_mac    bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    used_at     timestamptz,
    UNIQUE (user_id, code_mac)
);

-- A second factor being proven: a sign-in whose password was right (kind 'sign_in',
-- bound to a short-lived cookie whose SHA-256 is `token_hash`; it is not a session and
-- grants nothing), or a step-up of a live session (kind 'step_up').
CREATE TABLE mfa_challenges (
    id                     uuid PRIMARY KEY,
    kind                   text NOT NULL CHECK (kind IN ('sign_in', 'step_up')),
    user_id                uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash             bytea UNIQUE CHECK (length(token_hash) = 32),
    session_id             uuid REFERENCES sessions (id) ON DELETE CASCADE,
    remember_me            boolean NOT NULL DEFAULT false,
    return_to              text,
    -- Why the second factor was demanded (e.g. 'totp enrolled'), for the event.
    reason                 text NOT NULL,
    created_at             timestamptz NOT NULL,
    expires_at             timestamptz NOT NULL,
    -- Codes evaluated so far (counted before each is checked); at 5 the challenge is void.
    attempts               integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The e-mailed code, as a keyed HMAC bound to this challenge; a resend replaces it.
    email_code_mac         bytea,
    email_code_expires_at  timestamptz,
    CHECK ((kind = 'sign_in') = (token_hash IS NOT NULL)),
    CHECK ((kind = 'step_up') = (session_id IS NOT NULL)),
    CHECK ((email_code_mac IS NULL) = (email_code_expires_at IS NULL))
);
-- One step-up in progress per session.
CREATE UNIQUE INDEX mfa_challenges_session_idx ON mfa_challenges (session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX mfa_challenges_user_idx ON mfa_challenges (user_id);
CREATE INDEX mfa_challenges_expires_idx ON mfa_challenges (expires_at);

-- Counters for wrong codes per user ('code', 10 per 15 minutes across every sign-in,
-- step-up and node) and for code mails ('code-mail').
ALTER TABLE sign_in_throttle DROP CONSTRAINT sign_in_throttle_scope_check;
ALTER TABLE sign_in_throttle ADD CONSTRAINT sign_in_throttle_scope_check
    CHECK (scope IN ('account', 'ip', 'register', 'mail-address', 'mail-ip', 'code', 'code-mail'));
