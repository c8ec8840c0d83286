-- Device-bound sessions: how often a request without the bound cookie said it had
-- skipped a refresh (`Secure-Session-Skipped`), counted in a window that starts at
-- the first such refusal. A real browser says so rarely; a copied cookie replayed
-- with the header says it as often as it is tried (auth::dbsc, README "DBSC").
ALTER TABLE sessions ADD COLUMN dbsc_skipped_refusals integer NOT NULL DEFAULT 0,
                     ADD COLUMN dbsc_skipped_since timestamptz;
