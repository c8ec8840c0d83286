//! Delivers the outbox. Any number of nodes may run a worker on one database: a batch
//! is claimed with `FOR UPDATE SKIP LOCKED` and a lease, so no two workers send the
//! same row, and a row whose worker died is picked up again when its lease lapses.
//! Delivery is at least once (a crash between sending and recording can repeat one).

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;

use super::Transport;
use crate::clock::Clock;
use crate::domain::QueuedMail;
use crate::domain::mail::Unopenable;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How long a claimed row belongs to its worker: far longer than one delivery can
/// take (the SMTP transport times out each command after 30 s), so a slow relay
/// never lets a second worker claim a row that is still being sent.
pub const LEASE: Duration = Duration::from_secs(600);
/// Rows claimed at once: one, so a lease covers exactly one delivery.
pub const BATCH: i64 = 1;
/// After this many failed attempts a mail is marked failed for good (about a day of
/// retries with the backoff below).
pub const MAX_ATTEMPTS: i32 = 20;

/// How often the relay is checked for the `mail_transport_up` gauge. On its own clock,
/// never because of a mail, so the gauge cannot tell which requests caused mail.
pub const PROBE_EVERY: Duration = Duration::from_secs(60);

/// Why a row could not be sent (stored in `last_error`).
pub const UNKNOWN_KEY: &str = "body sealed under a secret key this node does not have (GATEHOUSE_SECRET_KEY / GATEHOUSE_OLD_SECRET_KEYS)";
pub const DAMAGED: &str = "body does not open under its key: damaged";

/// Wait before attempt `n + 1` after `n` failures: 2^n seconds, capped at an hour.
pub fn backoff(failures: i32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(0, 12)).min(Duration::from_secs(3600))
}

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub transport: Transport,
    pub from: Mailbox,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    /// Sends what is due now; returns how many rows it handled.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let batch = self.store.claim_mail(now, LEASE, BATCH).await?;
        for queued in &batch {
            self.deliver(queued).await?;
        }
        Ok(batch.len())
    }

    /// When the next attempt is due after `failures` failures, or `None` to give up.
    fn retry_at(&self, failures: i32) -> Option<time::OffsetDateTime> {
        (failures < MAX_ATTEMPTS).then(|| {
            self.clock.now()
                + time::Duration::try_from(backoff(failures)).unwrap_or(time::Duration::HOUR)
        })
    }

    async fn deliver(&self, queued: &QueuedMail) -> Result<(), StoreError> {
        let failures = queued.attempts + 1;
        let mail = match &queued.mail {
            Ok(mail) => mail,
            Err(Unopenable::UnknownKey) => {
                // Another node may already hold the key (a rotation rolling through the
                // nodes): back off like a failed delivery, give up only at the end.
                let retry_at = self.retry_at(failures);
                if retry_at.is_none() {
                    tracing::error!(
                        mail_id = %queued.id,
                        "mail given up: its body was sealed under a secret key this node does \
                         not have (keep the old key in GATEHOUSE_OLD_SECRET_KEYS until its mail is out)"
                    );
                } else {
                    tracing::warn!(mail_id = %queued.id, attempt = failures, "mail sealed under a key this node does not have; retrying later");
                }
                return self
                    .store
                    .mail_failed(queued.id, self.clock.now(), UNKNOWN_KEY, retry_at)
                    .await;
            }
            Err(Unopenable::Damaged) => {
                tracing::error!(mail_id = %queued.id, "mail given up: its sealed body is damaged");
                return self
                    .store
                    .mail_failed(queued.id, self.clock.now(), DAMAGED, None)
                    .await;
            }
        };
        match self.transport.send(&self.from, queued.id, mail).await {
            Ok(()) => {
                self.store.mail_sent(queued.id, self.clock.now()).await?;
                tracing::info!(mail_id = %queued.id, "mail delivered");
            }
            Err(e) => {
                let now = self.clock.now();
                let retry_at = self.retry_at(failures);
                // The error names the relay's answer, never the message content.
                tracing::warn!(mail_id = %queued.id, attempt = failures, error = format!("{e:#}"), "mail delivery failed");
                self.store
                    .mail_failed(queued.id, now, &format!("{e:#}"), retry_at)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs until the process ends: drains what is due, then sleeps `poll`; checks
    /// the relay every `PROBE_EVERY`.
    pub async fn run(self, poll: Duration) {
        let mut next_probe = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_probe {
                let up = self.transport.check().await;
                self.metrics.mail_transport_up.set(i64::from(up));
                next_probe = tokio::time::Instant::now() + PROBE_EVERY;
            }
            match self.deliver_due().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {}
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "outbox worker: database unavailable")
                }
                Err(e) => tracing::error!(error = ?e, "outbox worker failed"),
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(3600));
    }
}
