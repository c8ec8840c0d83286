//! Tracing output: human-readable or JSON lines, kept fit for an operator.
//!
//! Two rules keep the log worth reading (DESIGN.md "Reliability"):
//! - A malformed or broken HTTP/1 connection (a bad request line or header, a body
//!   cut short) is the client's mistake, yet the HTTP layer reports it at ERROR. Such
//!   events (recognised by their wording, `CLIENT_BREAKAGE`) are counted
//!   (`gatehouse_http_protocol_errors_total`) and not logged, so a scanner cannot
//!   flood the error log and drown real alerts; anything else the HTTP layer reports
//!   is logged as it comes.
//! - A warning or error from one place in the code is logged at most `BURST` times a
//!   minute; the rest are counted (`gatehouse_log_lines_suppressed_total`) and one line
//!   a minute says how many were held back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::LogFormat;

/// Where log lines go: the server logs to standard output; the other commands log to
/// standard error, so that what they print (a client's id and secret, JSON) can be
/// read by a script without log lines in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Malformed or broken HTTP connections, counted instead of logged.
// A constant, valid metric name: `new` cannot fail for it.
#[allow(clippy::expect_used)]
pub static PROTOCOL_ERRORS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "http_protocol_errors_total",
        "Malformed or broken HTTP connections (bad request line or header, body cut short): the client's, counted not logged",
    )
    .expect("a valid metric")
});

/// Warnings and errors held back by the per-place limit.
#[allow(clippy::expect_used)]
pub static SUPPRESSED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "log_lines_suppressed_total",
        "Warnings and errors not logged because the same place logged 10 in the last minute",
    )
    .expect("a valid metric")
});

/// Lines held back since the last summary.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// Warnings and errors from one place, at most this many per `WINDOW`.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// The filter behind both rules.
#[derive(Default)]
struct Hygiene {
    seen: Mutex<HashMap<Identifier, (Instant, u32)>>,
}

impl Hygiene {
    /// Whether a warning or error from this place may be logged now.
    fn admit(&self, place: Identifier, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(place).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= BURST
    }
}

impl<S: Subscriber> Layer<S> for Hygiene {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Level order in tracing: ERROR < WARN < INFO < DEBUG < TRACE.
        if *meta.level() > Level::WARN {
            return true;
        }
        if meta.target().starts_with("actix_http::h1") && is_client_breakage(event) {
            PROTOCOL_ERRORS.inc();
            return false;
        }
        if self.admit(meta.callsite(), Instant::now()) {
            return true;
        }
        SUPPRESSED.inc();
        PENDING.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// The HTTP/1 layer's reports of a client's broken request or connection (a request
/// line or header that does not parse, a body cut short, a peer that stopped
/// reading): the client's mistakes. Anything else it reports (a response body of ours
/// that failed, a service that would not start) stays in the log.
fn is_client_breakage(event: &Event<'_>) -> bool {
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    let mut m = Message(String::new());
    event.record(&mut m);
    CLIENT_BREAKAGE.iter().any(|p| m.0.starts_with(p))
}

/// How actix-http words a client's breakage (h1 dispatcher and decoder).
const CLIENT_BREAKAGE: &[&str] = &[
    "stream error",
    "write zero; closing",
    "Internal server error: unexpected eof",
    "Internal server error: unexpected payload chunk",
];

/// Says, once, how many warnings and errors were held back since the last call (the
/// server calls it every minute).
pub fn report_suppressed() {
    let n = PENDING.swap(0, Ordering::Relaxed);
    if n > 0 {
        tracing::warn!(
            suppressed = n,
            "repeated warnings held back in the last minute (at most 10 a minute from each place in the code; see gatehouse_log_lines_suppressed_total)"
        );
    }
}

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(format: LogFormat, output: Output) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let writer =
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
            match output {
                Output::Stdout => Box::new(std::io::stdout()),
                Output::Stderr => Box::new(std::io::stderr()),
            }
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false);
    let base = tracing_subscriber::registry()
        .with(filter)
        .with(Hygiene::default());
    let _ = match format {
        LogFormat::Json => base.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Pretty => base.with(fmt.compact()).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_logs_ten_a_minute_then_holds_back_until_the_next_minute() {
        let h = Hygiene::default();
        let place = Identifier(&CALLSITE);
        let t0 = Instant::now();
        let admitted = (0..25).filter(|_| h.admit(place.clone(), t0)).count();
        assert_eq!(admitted, 10);
        assert!(!h.admit(place.clone(), t0 + Duration::from_secs(59)));
        assert!(h.admit(place, t0 + Duration::from_secs(60)));
    }

    struct Site;
    static CALLSITE: Site = Site;
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            panic!("the limiter keys on the callsite's address only; it never reads its metadata")
        }
    }
}
