-- Mail: a durable outbox and single-use e-mailed links.

-- Every mail Gatehouse sends is first a row here, written in the same transaction as
-- the change that caused it; a worker on any node delivers it (at least once).
CREATE TABLE mail_outbox (
    id               uuid PRIMARY KEY,
    to_address       text NOT NULL,
    subject          text NOT NULL,
    -- Bodies carry single-use links: sealed (XChaCha20-Poly1305), and cleared once
    -- the mail is sent or given up.
    text_body        bytea,
    html_body        bytea,
    created_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    -- A worker that claimed the row owns it until then (a crashed node's claim lapses).
    lease_until      timestamptz,
    sent_at          timestamptz,
    failed_at        timestamptz,
    last_error       text
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;

-- Single-use links sent by mail: e-mail verification, password reset, e-mail change.
-- Only the SHA-256 of the token is stored.
CREATE TABLE email_tokens (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    purpose     text NOT NULL CHECK (purpose IN ('verify', 'reset', 'change')),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- For 'change': the address the user asked to move to.
    new_email   text,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX email_tokens_user_id_idx ON email_tokens (user_id);

ALTER TABLE sign_in_throttle DROP CONSTRAINT sign_in_throttle_scope_check;
ALTER TABLE sign_in_throttle ADD CONSTRAINT sign_in_throttle_scope_check
    CHECK (scope IN ('account', 'ip', 'register', 'mail-address', 'mail-ip'));
