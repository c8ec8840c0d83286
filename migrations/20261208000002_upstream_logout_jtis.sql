-- The `jti` of every logout token an upstream sent us (OIDC Back-Channel Logout 1.0
-- §2.6: a token whose `jti` was already seen is refused). A row is kept as long as a
-- token with that `jti` could still pass the age check; housekeeping deletes it after.

CREATE TABLE upstream_logout_jtis (
    upstream_id  uuid NOT NULL REFERENCES upstreams (id) ON DELETE CASCADE,
    jti          text NOT NULL CHECK (length(jti) BETWEEN 1 AND 255),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (upstream_id, jti)
);
CREATE INDEX upstream_logout_jtis_expires_idx ON upstream_logout_jtis (expires_at);
