//! Injected time. Every rule that depends on "now" (expiry, throttling) asks the
//! `Clock` in `AppState`, so tests move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use time::{Duration, OffsetDateTime};

/// Wall-clock time plus an offset that only tests change, or (tests) a stopped clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    /// `Some`: the clock stands at this time plus the offset.
    frozen_at: Option<OffsetDateTime>,
}

impl Clock {
    /// The real clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands still until `advance` moves it. For tests whose
    /// assertions must not depend on how long requests take.
    pub fn frozen() -> Self {
        Self {
            offset_ms: Arc::default(),
            frozen_at: Some(OffsetDateTime::now_utc()),
        }
    }

    /// Now, truncated to microseconds: PostgreSQL's `timestamptz` keeps no more, so a
    /// value read back compares equal to the one written.
    pub fn now(&self) -> OffsetDateTime {
        let now = self.frozen_at.unwrap_or_else(OffsetDateTime::now_utc)
            + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed));
        let micros = now.microsecond();
        now.replace_microsecond(micros).unwrap_or(now)
    }

    /// Moves this clock (and every clone of it) forward. For tests.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_a_clone_moves_every_clone() {
        let clock = Clock::system();
        let other = clock.clone();
        let before = clock.now();
        other.advance(std::time::Duration::from_secs(3600));
        assert!(clock.now() - before >= Duration::minutes(59));
    }

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let clock = Clock::frozen();
        let t = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now(), t);
        clock.advance(std::time::Duration::from_secs(2));
        assert_eq!(clock.now() - t, Duration::seconds(2));
    }
}
