//! Prometheus metrics, one registry per application (not a global, so each test's
//! server counts only its own requests).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub sign_ins: IntCounterVec,
    pub registrations: IntCounterVec,
    pub argon2_waiting: IntGauge,
    pub argon2_running: IntGauge,
    pub mail_outbox_depth: IntGauge,
    pub mail_deliveries: prometheus::IntCounter,
    pub mail_failures: prometheus::IntCounter,
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
        let registrations = IntCounterVec::new(
            Opts::new("registrations_total", "Registrations by outcome"),
            &["outcome"],
        )?;
        let argon2_waiting = IntGauge::new(
            "argon2_queue_depth",
            "Password hash computations waiting for a core",
        )?;
        let argon2_running =
            IntGauge::new("argon2_in_flight", "Password hash computations running")?;
        let mail_outbox_depth = IntGauge::new("mail_outbox_depth", "Mails waiting for delivery")?;
        let mail_deliveries =
            prometheus::IntCounter::new("mail_deliveries_total", "Mails delivered")?;
        let mail_failures =
            prometheus::IntCounter::new("mail_failures_total", "Failed mail delivery attempts")?;
        registry.register(Box::new(mail_outbox_depth.clone()))?;
        registry.register(Box::new(mail_deliveries.clone()))?;
        registry.register(Box::new(mail_failures.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(sign_ins.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(argon2_waiting.clone()))?;
        registry.register(Box::new(argon2_running.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            sign_ins,
            registrations,
            argon2_waiting,
            argon2_running,
            mail_outbox_depth,
            mail_deliveries,
            mail_failures,
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
