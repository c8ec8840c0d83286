-- Passkeys (WebAuthn): credentials a person signs in with, or proves a second factor
-- with, in place of a password or a code.

-- One row per credential. `credential` is webauthn-rs's `Passkey` as JSON text: the public
-- key (not a secret), the algorithm and the flags the authenticator reported. The sign
-- counter is also kept in its own column so that a use is accepted only for a higher
-- counter under the row lock (two parallel uses of one assertion cannot both win).
CREATE TABLE passkeys (
    id                    uuid PRIMARY KEY,
    user_id               uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The credential id the authenticator chose: unique across every account, so
    -- one credential can never sign in to two.
    credential_id         bytea NOT NULL UNIQUE CHECK (length(credential_id) BETWEEN 16 AND 1023),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    credential            text NOT NULL,
    sign_count            bigint NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    backup_eligible       boolean NOT NULL,
    backup_state          boolean NOT NULL,
    created_at            timestamptz NOT NULL,
    last_used_at          timestamptz,
    -- A counter that went backwards (WebAuthn §6.1.1): the key may have been copied.
    -- Such a passkey signs nothing in any more; its owner removes it.
    clone_suspected_at    timestamptz
);
CREATE INDEX passkeys_user_idx ON passkeys (user_id);

-- A ceremony between its two requests: the state webauthn-rs needs to finish it (the
-- challenge among it), server-side, single use (deleted when it is finished or
-- tried), for five minutes. Bound to what started it: a session (registration,
-- step-up), a half-finished sign-in, or nothing (passkey sign-in, which names its
-- user only in the answer).
CREATE TABLE passkey_ceremonies (
    id            uuid PRIMARY KEY,
    purpose       text NOT NULL CHECK (purpose IN ('register', 'sign_in', 'second_factor', 'step_up')),
    user_id       uuid REFERENCES users (id) ON DELETE CASCADE,
    session_id    uuid REFERENCES sessions (id) ON DELETE CASCADE,
    challenge_id  uuid REFERENCES mfa_challenges (id) ON DELETE CASCADE,
    state         text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    CHECK ((purpose IN ('register', 'step_up')) = (session_id IS NOT NULL)),
    CHECK ((purpose = 'second_factor') = (challenge_id IS NOT NULL)),
    CHECK ((purpose = 'sign_in') = (user_id IS NULL))
);
CREATE INDEX passkey_ceremonies_expires_idx ON passkey_ceremonies (expires_at);

-- The passkey a session last proved itself with: if that passkey turns out to be
-- copied, the sessions it opened must prove themselves again.
ALTER TABLE sessions ADD COLUMN passkey_id uuid REFERENCES passkeys (id) ON DELETE SET NULL;
CREATE INDEX sessions_passkey_idx ON sessions (passkey_id) WHERE passkey_id IS NOT NULL;

-- Ceremonies begun per client address are counted like other allowances.
ALTER TABLE sign_in_throttle DROP CONSTRAINT sign_in_throttle_scope_check;
ALTER TABLE sign_in_throttle ADD CONSTRAINT sign_in_throttle_scope_check
    CHECK (scope IN ('account', 'ip', 'register', 'mail-address', 'mail-ip', 'code', 'code-mail',
                     'passkey'));
