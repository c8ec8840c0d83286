-- Browser apps (single-page apps): the origins whose pages may call the token,
-- revocation and userinfo endpoints with CORS (exact origins, no credentials).
-- Each is an origin in normal form (`https://app.example`, `http://127.0.0.1:5173`),
-- compared as a string with the browser's `Origin` header.
ALTER TABLE oauth_clients ADD COLUMN web_origins text[] NOT NULL DEFAULT '{}';
