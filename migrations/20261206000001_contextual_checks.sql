-- Contextual sign-in checks: flags with their time, trusted browsers, the reasons a
-- half-finished sign-in carries to its session, and "This wasn't me" links.

-- When the session was flagged: a flagged session must prove a second factor again
-- (`aal_reached_at` later than this) before it signs in to an app silently.
ALTER TABLE sessions ADD COLUMN risk_flagged_at timestamptz;
UPDATE sessions SET risk_flagged_at = created_at WHERE risk_flagged;
ALTER TABLE sessions ADD CONSTRAINT sessions_risk_flag_check
    CHECK (risk_flagged = (risk_flagged_at IS NOT NULL));
-- Whether the flag asks the session to prove a second factor again (its cookie was
-- used from another country) or only tells its owner (it was live while another
-- country signed in).
ALTER TABLE sessions ADD COLUMN risk_needs_proof boolean NOT NULL DEFAULT false,
                     ADD CONSTRAINT sessions_risk_needs_proof_check
                         CHECK (NOT risk_needs_proof OR risk_flagged);
-- Where the session last proved a second factor, when that was another country than
-- its sign-in (sealed `domain::Location`, context "sessions.anchor"): a traveller who
-- stepped up there is at home there too, and is not flagged again for it.
ALTER TABLE sessions ADD COLUMN anchor_enc bytea;
-- `gatehouse sessions flagged`, newest first.
CREATE INDEX sessions_risk_flagged_at_idx ON sessions (risk_flagged_at DESC)
    WHERE risk_flagged;
-- "Where was the user last active": the most recently used session.
CREATE INDEX sessions_user_last_seen_idx ON sessions (user_id, last_seen_at DESC);

-- "Trust this browser": after a second factor, sign-ins from this device with nothing
-- unusual about them skip the code until then. A password change clears it.
ALTER TABLE devices ADD COLUMN trusted_at timestamptz,
                    ADD COLUMN trusted_until timestamptz,
                    ADD CONSTRAINT devices_trust_check
                        CHECK ((trusted_at IS NULL) = (trusted_until IS NULL));

-- A flag's full wording names places ("New country: Australia · 16,100 km from
-- Berlin"), so it is sealed like the session's location (context
-- "sessions.risk_reason"); `risk_reason` keeps only the signals' names ("New device ·
-- New country"), which say nothing personal.
ALTER TABLE sessions ADD COLUMN risk_reason_enc bytea;

-- Why the checks demanded this second factor: the session it becomes carries it as
-- its flag (the same two forms, sealed under "mfa_challenges.risk_flag").
ALTER TABLE mfa_challenges ADD COLUMN risk_flag text,
                           ADD COLUMN risk_flag_enc bytea;

-- "This wasn't me": a single-use link in the new-sign-in mail that ends the session
-- it names. No foreign key: the session may be swept before the link is used, which
-- still records the report and asks for a new password.
ALTER TABLE email_tokens ADD COLUMN session_id uuid;
ALTER TABLE email_tokens DROP CONSTRAINT email_tokens_purpose_check;
ALTER TABLE email_tokens ADD CONSTRAINT email_tokens_purpose_check
    CHECK (purpose IN ('verify', 'reset', 'change', 'not-me'));
