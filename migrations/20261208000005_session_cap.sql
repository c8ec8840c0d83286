-- A session ended by the per-person cap on live sessions
-- (GATEHOUSE_MAX_SESSIONS_PER_USER) is marked until its owner has seen the device
-- list's notice of it, once.
ALTER TABLE sessions ADD COLUMN cap_notice_due boolean NOT NULL DEFAULT false;
CREATE INDEX sessions_cap_notice_due ON sessions (user_id) WHERE cap_notice_due;
