-- Devices: browsers that have signed in, linked by a long-lived random cookie
-- (`__Host-gatehouse_device`), and what Gatehouse knows about each sign-in.

CREATE TABLE devices (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the device cookie; the cookie itself is never stored. One browser
    -- used by two accounts is two rows with the same hash.
    token_hash     bytea NOT NULL CHECK (length(token_hash) = 32),
    -- "Firefox on Ubuntu", from the user agent of the latest sign-in; sealed like the
    -- session's personal data (crypto::Keys, context "devices.label").
    label_enc      bytea NOT NULL,
    device_type    text NOT NULL CHECK (device_type IN ('desktop', 'phone', 'tablet', 'other')),
    first_seen_at  timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    UNIQUE (user_id, token_hash)
);
-- "Did Gatehouse issue this cookie at all?" (to anyone).
CREATE INDEX devices_token_hash_idx ON devices (token_hash);
-- Housekeeping: devices not seen for a year.
CREATE INDEX devices_last_seen_idx ON devices (last_seen_at);

ALTER TABLE sessions
    ADD CONSTRAINT sessions_device_id_fkey
        FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE SET NULL,
    -- Keyed HMACs (crypto::Keys::mac, key id first) of the client address and of the
    -- country code: "seen this address / country before for this user" without the
    -- plaintext (DESIGN.md principle 2).
    ADD COLUMN ip_mac bytea,
    ADD COLUMN country_mac bytea;
-- (The label and type shown for a session are parsed from its sealed user agent when
-- shown; `location_enc` holds sealed JSON, domain::Location.)

CREATE INDEX sessions_user_ip_mac_idx ON sessions (user_id, ip_mac);
CREATE INDEX sessions_user_country_mac_idx ON sessions (user_id, country_mac);
-- Housekeeping sweeps by expiry and by revocation time.
CREATE INDEX sessions_absolute_expires_idx ON sessions (absolute_expires_at);
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX email_tokens_expires_idx ON email_tokens (expires_at);
CREATE INDEX sign_in_throttle_updated_idx ON sign_in_throttle (updated_at);
CREATE INDEX mail_outbox_done_idx ON mail_outbox (created_at)
    WHERE sent_at IS NOT NULL OR failed_at IS NOT NULL;

-- When the account first completed a sign-in: the first one ever sends no new-device
-- notice, every later one from an unknown browser does. Accounts that already had
-- sessions count as signed in before.
ALTER TABLE users ADD COLUMN first_signed_in_at timestamptz;
UPDATE users u SET first_signed_in_at = u.created_at
WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id);
