-- A link made while the account's address was not yet confirmed (a new account from
-- an upstream that did not verify the address, say): nobody had proven the mailbox
-- then, so whoever holds the upstream account may not be the address's owner. When
-- the owner takes the account back with a password reset, such links go (account
-- pre-hijacking). Set from `users.email_verified_at` by every link path.
ALTER TABLE federated_identities
    ADD COLUMN linked_unconfirmed boolean NOT NULL DEFAULT false;
