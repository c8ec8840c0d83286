//! Prometheus metrics, one registry per application (not a global, so each test's
//! server counts only its own requests).
//!
//! `/metrics` is public, so nothing here may move differently for an address that
//! has an account and one that has not (checklist L2): mail is counted as requests
//! per purpose, at the point where known and unknown addresses are still treated
//! alike, and delivery health is a probe of the SMTP relay that runs on its own
//! clock. Per-mail delivery counts and the outbox depth would move only for real
//! accounts, so they are logged, not exported. Every label takes only known values
//! (route patterns, a fixed list of methods, status codes), so no client can mint
//! new series.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub sign_ins: IntCounterVec,
    /// Second-factor codes evaluated, by outcome (`right`, `wrong`, `throttled`, `void`).
    pub second_factor: IntCounterVec,
    pub registrations: IntCounterVec,
    /// Contextual-check decisions (`allow`, `notify`, `second_factor`, `deny`).
    pub risk_decisions: IntCounterVec,
    /// Signals the checks saw, by kind (`new_device`, `impossible_travel`, …), and
    /// sessions flagged after they began (`in_use_elsewhere`, `two_countries`).
    pub risk_signals: IntCounterVec,
    pub passkeys: IntCounterVec,
    /// Device-bound sessions: registrations, refreshes, challenges, refusals, …
    pub dbsc: IntCounterVec,
    pub argon2_waiting: IntGauge,
    pub argon2_running: IntGauge,
    pub argon2_skipped: prometheus::IntCounter,
    pub argon2_refused: prometheus::IntCounter,
    pub mail_requests: IntCounterVec,
    pub mail_transport_up: IntGauge,
    pub housekeeping_runs: prometheus::IntCounter,
    pub housekeeping_deleted: IntCounterVec,
    /// Token requests by grant type and outcome (`issued`, `refused`, `unavailable`,
    /// `replayed` for a code used twice, `reused` for a spent refresh token: theft
    /// signals).
    pub oauth_tokens: IntCounterVec,
    /// Introspection and userinfo answers by where liveness came from: `hit` (this
    /// node's cache), `miss` (PostgreSQL, then cached), `bypass` (PostgreSQL, cache
    /// not trusted: the invalidation listener is away).
    pub liveness_lookups: IntCounterVec,
    /// 1 while the invalidation listener is connected and proven.
    pub listener_up: IntGauge,
    pub invalidations: prometheus::IntCounter,
    /// Back-channel logout deliveries by outcome (`delivered`, `failed` and retried,
    /// `refused` for good by the receiver's 4xx, `given_up` after every retry).
    pub backchannel: IntCounterVec,
    /// Upstream sign-in callbacks by outcome (`completed`, or why one was refused:
    /// `bad_state`, `cancelled`, `unreachable`, `refused`, …) and upstream logout
    /// tokens (`logout_accepted`, `logout_refused`).
    pub upstream_callbacks: IntCounterVec,
}

/// The method label: one of the methods Gatehouse serves, or `other`.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("gatehouse".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["route", "method"],
        )?;
        let sign_ins = IntCounterVec::new(
            Opts::new("sign_ins_total", "Sign-in attempts by outcome"),
            &["outcome"],
        )?;
        let second_factor = IntCounterVec::new(
            Opts::new(
                "second_factor_codes_total",
                "Second-factor codes submitted, by outcome",
            ),
            &["outcome"],
        )?;
        let registrations = IntCounterVec::new(
            Opts::new("registrations_total", "Registrations by outcome"),
            &["outcome"],
        )?;
        let risk_decisions = IntCounterVec::new(
            Opts::new(
                "risk_decisions_total",
                "Contextual sign-in check decisions, by decision",
            ),
            &["decision"],
        )?;
        let risk_signals = IntCounterVec::new(
            Opts::new(
                "risk_signals_total",
                "Contextual check signals seen, and sessions flagged later, by kind",
            ),
            &["signal"],
        )?;
        let argon2_waiting = IntGauge::new(
            "argon2_queue_depth",
            "Password hash computations waiting for a core",
        )?;
        let argon2_running =
            IntGauge::new("argon2_in_flight", "Password hash computations running")?;
        let argon2_skipped = prometheus::IntCounter::new(
            "argon2_skipped_total",
            "Queued password hash computations skipped because the request was gone",
        )?;
        let argon2_refused = prometheus::IntCounter::new(
            "argon2_refused_total",
            "Requests answered 503 because the password hash queue was full",
        )?;
        let mail_requests = IntCounterVec::new(
            Opts::new(
                "mail_requests_total",
                "Mail requests accepted, by purpose (counted alike for addresses with and without an account)",
            ),
            &["purpose"],
        )?;
        let mail_transport_up = IntGauge::new(
            "mail_transport_up",
            "1 when the last periodic check of the mail relay succeeded",
        )?;
        let housekeeping_runs = prometheus::IntCounter::new(
            "housekeeping_runs_total",
            "Housekeeping rounds this node did",
        )?;
        let housekeeping_deleted = IntCounterVec::new(
            Opts::new(
                "housekeeping_deleted_total",
                "Rows housekeeping deleted on this node, by kind",
            ),
            &["kind"],
        )?;
        let oauth_tokens = IntCounterVec::new(
            Opts::new(
                "oauth_token_requests_total",
                "Token endpoint requests by grant type and outcome",
            ),
            &["grant", "outcome"],
        )?;
        registry.register(Box::new(oauth_tokens.clone()))?;
        let liveness_lookups = IntCounterVec::new(
            Opts::new(
                "liveness_lookups_total",
                "Token liveness answers by source (hit, miss, bypass)",
            ),
            &["source"],
        )?;
        for source in ["hit", "miss", "bypass"] {
            liveness_lookups.with_label_values(&[source]);
        }
        registry.register(Box::new(liveness_lookups.clone()))?;
        let listener_up = IntGauge::new(
            "invalidation_listener_up",
            "1 while the LISTEN connection that keeps caches honest is connected and proven",
        )?;
        registry.register(Box::new(listener_up.clone()))?;
        let invalidations = prometheus::IntCounter::new(
            "invalidations_total",
            "Invalidation notifications applied on this node",
        )?;
        registry.register(Box::new(invalidations.clone()))?;
        let backchannel = IntCounterVec::new(
            Opts::new(
                "backchannel_logouts_total",
                "Back-channel logout deliveries by outcome",
            ),
            &["outcome"],
        )?;
        for outcome in ["delivered", "failed", "refused", "given_up"] {
            backchannel.with_label_values(&[outcome]);
        }
        registry.register(Box::new(backchannel.clone()))?;
        for kind in [
            "sessions",
            "devices",
            "email_tokens",
            "throttle",
            "events",
            "mails",
        ] {
            housekeeping_deleted.with_label_values(&[kind]);
        }
        registry.register(Box::new(housekeeping_runs.clone()))?;
        registry.register(Box::new(housekeeping_deleted.clone()))?;
        registry.register(Box::new(argon2_skipped.clone()))?;
        registry.register(Box::new(argon2_refused.clone()))?;
        registry.register(Box::new(mail_requests.clone()))?;
        registry.register(Box::new(mail_transport_up.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(sign_ins.clone()))?;
        let upstream_callbacks = IntCounterVec::new(
            Opts::new(
                "upstream_callbacks_total",
                "Upstream sign-in callbacks and logout tokens by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(upstream_callbacks.clone()))?;
        registry.register(Box::new(second_factor.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(risk_decisions.clone()))?;
        registry.register(Box::new(risk_signals.clone()))?;
        let dbsc = IntCounterVec::new(
            Opts::new(
                "dbsc_total",
                "Device-bound session events (registered, refreshed, challenged, refused, ...)",
            ),
            &["event"],
        )?;
        registry.register(Box::new(dbsc.clone()))?;
        let passkeys = IntCounterVec::new(
            Opts::new(
                "passkey_ceremonies_total",
                "Passkey ceremonies by kind (register, sign_in, second_factor, step_up) and outcome",
            ),
            &["ceremony", "outcome"],
        )?;
        registry.register(Box::new(passkeys.clone()))?;
        // Counted by the log filter (`telemetry`), process-wide.
        registry.register(Box::new(crate::telemetry::PROTOCOL_ERRORS.clone()))?;
        registry.register(Box::new(crate::telemetry::SUPPRESSED.clone()))?;
        registry.register(Box::new(argon2_waiting.clone()))?;
        registry.register(Box::new(argon2_running.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            sign_ins,
            upstream_callbacks,
            second_factor,
            registrations,
            risk_decisions,
            risk_signals,
            dbsc,
            passkeys,
            argon2_waiting,
            argon2_running,
            argon2_skipped,
            argon2_refused,
            mail_requests,
            mail_transport_up,
            housekeeping_runs,
            housekeeping_deleted,
            oauth_tokens,
            liveness_lookups,
            listener_up,
            invalidations,
            backchannel,
        })
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_a_closed_set() {
        // Defect 1: any client could otherwise mint a series per made-up method.
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("POST"), "POST");
        assert_eq!(method_label("FOO"), "other");
        assert_eq!(method_label("get"), "other");
    }
}
