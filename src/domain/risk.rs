//! The contextual sign-in checks as one pure function (DESIGN.md "Devices and
//! context", "Precise rules": the default policy): from what this attempt looks like
//! and what the account has done lately to a decision, with every reason that led to
//! it. No I/O here: `auth::risk` gathers the facts and acts on the answer.

use std::fmt;

use time::OffsetDateTime;

use super::Location;

/// The thresholds in force (`settings::RiskSettings`).
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub max_kmh: f64,
    pub min_km: f64,
    pub recent_failures: u32,
    pub address_failures: u32,
}

/// This sign-in attempt, after its password was found right.
#[derive(Clone, Debug)]
pub struct AttemptContext {
    pub location: Location,
    pub now: OffsetDateTime,
    /// The browser brought a device cookie issued to this user's browser.
    pub known_device: bool,
    /// ...and that device is trusted ("Trust this browser") until later than now.
    pub trusted_device: bool,
}

/// What the account has done lately, as far as the checks care.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The account has never completed a sign-in: nothing to compare with.
    pub first_sign_in: bool,
    /// This attempt's country was seen on an earlier session of the user.
    pub country_seen: bool,
    /// Where and when the user was last active (the most recently used session with
    /// a known place).
    pub last_active: Option<(Location, OffsetDateTime)>,
    /// The places of the user's live sessions.
    pub live: Vec<Location>,
    /// Failed sign-ins of the account in the last 15 minutes, from any device.
    pub recent_failures: u32,
    /// Failed sign-ins from this attempt's address (any accounts), last 5 minutes.
    pub address_failures: u32,
}

/// One thing that looked unusual.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    NewDevice,
    NewCountry { country: String },
    ImpossibleTravel { from: String, km: f64, minutes: i64 },
    TwoCountries { other: String },
    RecentFailures { count: u32 },
    SuspiciousAddress { failures: u32 },
}

impl Signal {
    /// The metric label (`gatehouse_risk_signals_total{signal}`).
    /// The signal's name, which says nothing personal (no place): what the account's
    /// history and the clear `risk_reason` column hold.
    pub fn title(&self) -> &'static str {
        match self {
            Self::NewDevice => "New device",
            Self::NewCountry { .. } => "New country",
            Self::ImpossibleTravel { .. } => "Impossible travel",
            Self::TwoCountries { .. } => "Two countries at once",
            Self::RecentFailures { .. } => "Recent failed sign-ins",
            Self::SuspiciousAddress { .. } => "Address with many failed sign-ins",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NewDevice => "new_device",
            Self::NewCountry { .. } => "new_country",
            Self::ImpossibleTravel { .. } => "impossible_travel",
            Self::TwoCountries { .. } => "two_countries",
            Self::RecentFailures { .. } => "recent_failures",
            Self::SuspiciousAddress { .. } => "suspicious_address",
        }
    }
}

/// Thousands separated, as people read distances: "16,000".
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn span(minutes: i64) -> String {
    match minutes {
        m if m < 1 => "moments".into(),
        1 => "1 minute".into(),
        m if m < 120 => format!("{m} minutes"),
        m if m < 48 * 60 => format!("{} hours", m / 60),
        m => format!("{} days", m / (24 * 60)),
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NewDevice => f.write_str("New device"),
            Self::NewCountry { country } => write!(f, "New country: {country}"),
            Self::ImpossibleTravel { from, km, minutes } => write!(
                f,
                "{} km from {from} {} earlier",
                // Rounded to the hundred: GeoIP is coarse.
                grouped(((km / 100.0).round() * 100.0) as i64),
                span(*minutes)
            ),
            Self::TwoCountries { other } => write!(f, "Also signed in from {other}"),
            Self::RecentFailures { count } => {
                write!(f, "{count} failed sign-ins in the last 15 minutes")
            }
            Self::SuspiciousAddress { failures } => {
                write!(f, "An address with {failures} failed sign-ins in 5 minutes")
            }
        }
    }
}

/// What happens to the sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed, and the owner is told (a new device).
    AllowAndNotify,
    /// A second factor first; the session is flagged with the reasons.
    SecondFactor,
    Deny,
}

impl Decision {
    pub fn code(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::AllowAndNotify => "notify",
            Self::SecondFactor => "second_factor",
            Self::Deny => "deny",
        }
    }

    /// As the account's history words it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Allow => "Allowed",
            Self::AllowAndNotify => "Allowed, owner notified",
            Self::SecondFactor => "Second factor demanded",
            Self::Deny => "Blocked",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub decision: Decision,
    pub signals: Vec<Signal>,
    /// A trusted browser with nothing unusual about it: a user with an authenticator
    /// app may skip the code this time (`aal1`).
    pub trusted_browser: bool,
}

impl Assessment {
    /// "New country: Australia · 16,000 km from Berlin 10 minutes earlier".
    pub fn reasons(&self) -> String {
        self.signals
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// The signals' names: "New device · New country" (nothing personal).
    pub fn names(&self) -> String {
        self.signals
            .iter()
            .map(Signal::title)
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// The flag the session carries on the device list, where the checks stepped
    /// the sign-in up: (names, full wording). The wording names places: it is
    /// stored sealed.
    pub fn flag(&self) -> Option<(String, String)> {
        matches!(self.decision, Decision::SecondFactor | Decision::Deny)
            .then(|| (self.names(), self.reasons()))
    }

    /// The account history's line: "Second factor demanded: New device · New
    /// country" (names only: event details are stored in the clear).
    pub fn summary(&self) -> String {
        if self.signals.is_empty() {
            return self.decision.describe().to_string();
        }
        format!("{}: {}", self.decision.describe(), self.names())
    }
}

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance between two (latitude, longitude) points in degrees, by the
/// haversine formula.
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

fn coordinates(l: &Location) -> Option<(f64, f64)> {
    Some((l.latitude?, l.longitude?))
}

fn country_name(l: &Location) -> String {
    l.country
        .clone()
        .or_else(|| l.country_code.clone())
        .unwrap_or_else(|| "another country".into())
}

/// Impossible travel between the user's last activity and this attempt: further
/// apart than `min_km` and faster than `max_kmh`.
fn travel(policy: &Policy, attempt: &AttemptContext, history: &History) -> Option<Signal> {
    let (then_place, then) = history.last_active.as_ref()?;
    let km = great_circle_km(coordinates(then_place)?, coordinates(&attempt.location)?);
    if km <= policy.min_km {
        return None;
    }
    let seconds = (attempt.now - *then).as_seconds_f64();
    // Simultaneous (or a clock that went backwards): any distance is too fast.
    let too_fast = seconds <= 0.0 || km / (seconds / 3600.0) > policy.max_kmh;
    too_fast.then(|| Signal::ImpossibleTravel {
        from: then_place
            .city
            .clone()
            .unwrap_or_else(|| country_name(then_place)),
        km,
        minutes: (seconds.max(0.0) / 60.0) as i64,
    })
}

/// The default policy. An unknown location alone never counts as a new country,
/// and a first sign-in ever has nothing to compare with, so it is allowed.
pub fn assess(policy: &Policy, attempt: &AttemptContext, history: &History) -> Assessment {
    if history.first_sign_in {
        return Assessment {
            decision: Decision::Allow,
            signals: Vec::new(),
            trusted_browser: false,
        };
    }
    let country = attempt.location.country_code.as_deref();
    let mut signals = Vec::new();
    if !attempt.known_device {
        signals.push(Signal::NewDevice);
    }
    let new_country = country.is_some() && !history.country_seen;
    if new_country {
        signals.push(Signal::NewCountry {
            country: country_name(&attempt.location),
        });
    }
    let travelled = travel(policy, attempt, history);
    let impossible_travel = travelled.is_some();
    signals.extend(travelled);
    let elsewhere = country.and_then(|c| {
        history
            .live
            .iter()
            .find(|l| l.country_code.as_deref().is_some_and(|o| o != c))
    });
    let two_countries = elsewhere.is_some();
    if let Some(other) = elsewhere {
        signals.push(Signal::TwoCountries {
            other: country_name(other),
        });
    }
    let failures = history.recent_failures >= policy.recent_failures;
    if failures {
        signals.push(Signal::RecentFailures {
            count: history.recent_failures,
        });
    }
    let stuffing = history.address_failures >= policy.address_failures;
    if stuffing {
        signals.push(Signal::SuspiciousAddress {
            failures: history.address_failures,
        });
    }
    let decision = if stuffing && (new_country || impossible_travel) {
        // A password that a credential-stuffing source already has, tried from a
        // place the owner has never been: no code is even mailed (the owner is told).
        Decision::Deny
    } else if impossible_travel
        || two_countries
        || stuffing
        || (!attempt.known_device && (new_country || failures))
    {
        Decision::SecondFactor
    } else if !attempt.known_device {
        Decision::AllowAndNotify
    } else {
        Decision::Allow
    };
    Assessment {
        decision,
        // "In a known country" (DESIGN.md): an unplaceable address never skips a code.
        trusted_browser: attempt.trusted_device && signals.is_empty() && country.is_some(),
        signals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn city(code: &str, country: &str, name: &str, lat: f64, lon: f64) -> Location {
        Location {
            country_code: Some(code.into()),
            country: Some(country.into()),
            city: Some(name.into()),
            latitude: Some(lat),
            longitude: Some(lon),
            accuracy_km: Some(20),
        }
    }

    fn berlin() -> Location {
        city("DE", "Germany", "Berlin", 52.52, 13.405)
    }
    fn munich() -> Location {
        city("DE", "Germany", "Munich", 48.1351, 11.582)
    }
    fn sydney() -> Location {
        city("AU", "Australia", "Sydney", -33.8688, 151.2093)
    }
    fn paris() -> Location {
        city("FR", "France", "Paris", 48.8566, 2.3522)
    }
    fn vienna() -> Location {
        city("AT", "Austria", "Vienna", 48.2082, 16.3738)
    }

    const POLICY: Policy = Policy {
        max_kmh: 1000.0,
        min_km: 500.0,
        recent_failures: 3,
        address_failures: 10,
    };

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-12-06 12:00 UTC)
    }

    fn attempt(location: Location, known_device: bool) -> AttemptContext {
        AttemptContext {
            location,
            now: now(),
            known_device,
            trusted_device: false,
        }
    }

    /// A user at home in Berlin: seen there, last active there an hour ago.
    fn at_home() -> History {
        History {
            first_sign_in: false,
            country_seen: true,
            last_active: Some((berlin(), now() - Duration::hours(1))),
            live: vec![],
            recent_failures: 0,
            address_failures: 0,
        }
    }

    fn codes(a: &Assessment) -> Vec<&'static str> {
        a.signals.iter().map(Signal::code).collect()
    }

    #[test]
    fn distances_between_real_cities_are_right() {
        // Reference values: great-circle distances on a mean-radius sphere.
        let cases = [
            (berlin(), sydney(), 16_090.0),
            (berlin(), paris(), 878.0),
            (berlin(), munich(), 504.0),
            (berlin(), vienna(), 524.0),
            (berlin(), berlin(), 0.0),
        ];
        for (a, b, km) in cases {
            let d = great_circle_km(coordinates(&a).unwrap(), coordinates(&b).unwrap());
            assert!(
                (d - km).abs() < km * 0.01 + 1.0,
                "{:?}→{:?}: {d}",
                a.city,
                b.city
            );
        }
    }

    #[test]
    fn each_signal_alone_and_the_decision_the_default_policy_gives_it() {
        struct Case {
            name: &'static str,
            attempt: AttemptContext,
            history: History,
            decision: Decision,
            signals: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "first sign-in ever, even from far away on a new device",
                attempt: attempt(sydney(), false),
                history: History {
                    first_sign_in: true,
                    ..History::default()
                },
                decision: Decision::Allow,
                signals: vec![],
            },
            Case {
                name: "known device at home",
                attempt: attempt(berlin(), true),
                history: at_home(),
                decision: Decision::Allow,
                signals: vec![],
            },
            Case {
                name: "unknown device in a known country: allow and notify",
                attempt: attempt(munich(), false),
                history: History {
                    // Munich was reached by train (504 km in 5 hours).
                    last_active: Some((berlin(), now() - Duration::hours(5))),
                    ..at_home()
                },
                decision: Decision::AllowAndNotify,
                signals: vec!["new_device"],
            },
            Case {
                name: "known device in a new country, reachable: allowed, noted",
                attempt: attempt(paris(), true),
                history: History {
                    country_seen: false,
                    last_active: Some((berlin(), now() - Duration::hours(3))),
                    ..at_home()
                },
                decision: Decision::Allow,
                signals: vec!["new_country"],
            },
            Case {
                name: "impossible travel alone (known device, known country)",
                attempt: attempt(sydney(), true),
                history: History {
                    last_active: Some((berlin(), now() - Duration::minutes(10))),
                    ..at_home()
                },
                decision: Decision::SecondFactor,
                signals: vec!["impossible_travel"],
            },
            Case {
                name: "two countries with live sessions at once",
                attempt: attempt(vienna(), true),
                history: History {
                    last_active: Some((berlin(), now() - Duration::hours(5))),
                    live: vec![berlin()],
                    ..at_home()
                },
                decision: Decision::SecondFactor,
                signals: vec!["two_countries"],
            },
            Case {
                name: "recent failures alone on a known device",
                attempt: attempt(berlin(), true),
                history: History {
                    recent_failures: 3,
                    ..at_home()
                },
                decision: Decision::Allow,
                signals: vec!["recent_failures"],
            },
            Case {
                name: "two failures are not yet 'recent failures'",
                attempt: attempt(berlin(), false),
                history: History {
                    recent_failures: 2,
                    ..at_home()
                },
                decision: Decision::AllowAndNotify,
                signals: vec!["new_device"],
            },
            Case {
                name: "an address with many failures across accounts",
                attempt: attempt(berlin(), true),
                history: History {
                    address_failures: 10,
                    ..at_home()
                },
                decision: Decision::SecondFactor,
                signals: vec!["suspicious_address"],
            },
            Case {
                name: "unknown location alone never counts as a new country",
                attempt: attempt(Location::default(), true),
                history: History {
                    country_seen: false,
                    live: vec![berlin()],
                    ..at_home()
                },
                decision: Decision::Allow,
                signals: vec![],
            },
        ];
        for c in cases {
            let a = assess(&POLICY, &c.attempt, &c.history);
            assert_eq!(a.decision, c.decision, "{}: {a:?}", c.name);
            assert_eq!(codes(&a), c.signals, "{}", c.name);
        }
    }

    #[test]
    fn the_combinations_the_default_policy_names() {
        // Unknown device + new country → second factor.
        let a = assess(
            &POLICY,
            &attempt(paris(), false),
            &History {
                country_seen: false,
                last_active: Some((berlin(), now() - Duration::hours(3))),
                ..at_home()
            },
        );
        assert_eq!(a.decision, Decision::SecondFactor);
        assert_eq!(codes(&a), ["new_device", "new_country"]);
        // Unknown device + ≥ 3 recent failures → second factor.
        let a = assess(
            &POLICY,
            &attempt(berlin(), false),
            &History {
                recent_failures: 4,
                ..at_home()
            },
        );
        assert_eq!(a.decision, Decision::SecondFactor);
        assert_eq!(codes(&a), ["new_device", "recent_failures"]);
        // The example: a new device in Sydney ten minutes after Berlin.
        let a = assess(
            &POLICY,
            &attempt(sydney(), false),
            &History {
                country_seen: false,
                last_active: Some((berlin(), now() - Duration::minutes(10))),
                live: vec![berlin()],
                ..at_home()
            },
        );
        assert_eq!(a.decision, Decision::SecondFactor);
        assert_eq!(
            codes(&a),
            [
                "new_device",
                "new_country",
                "impossible_travel",
                "two_countries"
            ]
        );
        assert_eq!(
            a.reasons(),
            "New device · New country: Australia · 16,100 km from Berlin 10 minutes earlier · Also signed in from Germany"
        );
        assert_eq!(a.flag(), Some((a.names(), a.reasons())));
        assert_eq!(
            a.summary(),
            "Second factor demanded: New device · New country · Impossible travel · Two countries at once"
        );
        // A stuffing address trying a place the owner has never been: denied.
        let a = assess(
            &POLICY,
            &attempt(sydney(), false),
            &History {
                country_seen: false,
                address_failures: 25,
                ..at_home()
            },
        );
        assert_eq!(a.decision, Decision::Deny);
        assert!(
            a.summary().starts_with("Blocked: New device"),
            "{}",
            a.summary()
        );
    }

    #[test]
    fn travel_needs_both_distance_and_speed() {
        // 504 km (Berlin → Munich) in 10 minutes: over 500 km and far too fast.
        let a = assess(
            &POLICY,
            &attempt(munich(), true),
            &History {
                last_active: Some((berlin(), now() - Duration::minutes(10))),
                ..at_home()
            },
        );
        assert_eq!(codes(&a), ["impossible_travel"]);
        // The same trip in an hour is a plane ride (504 km/h): fine.
        let a = assess(
            &POLICY,
            &attempt(munich(), true),
            &History {
                last_active: Some((berlin(), now() - Duration::hours(1))),
                ..at_home()
            },
        );
        assert!(a.signals.is_empty(), "{a:?}");
        // Fast but short (GeoIP is coarse): Berlin to Berlin at once is no travel.
        let a = assess(
            &POLICY,
            &attempt(berlin(), true),
            &History {
                last_active: Some((berlin(), now())),
                ..at_home()
            },
        );
        assert!(a.signals.is_empty());
        // A lower speed limit catches a trip the default lets through (Paris: 878 km
        // in an hour and a half, 585 km/h).
        let slow = Policy {
            max_kmh: 500.0,
            ..POLICY
        };
        let history = History {
            last_active: Some((berlin(), now() - Duration::minutes(90))),
            ..at_home()
        };
        assert!(
            assess(&POLICY, &attempt(paris(), true), &history)
                .signals
                .is_empty()
        );
        assert_eq!(
            codes(&assess(&slow, &attempt(paris(), true), &history)),
            ["impossible_travel"]
        );
    }

    #[test]
    fn a_trusted_browser_skips_the_code_only_when_nothing_is_unusual() {
        let trusted = |location: Location| AttemptContext {
            trusted_device: true,
            ..attempt(location, true)
        };
        assert!(assess(&POLICY, &trusted(berlin()), &at_home()).trusted_browser);
        // Any signal ends it: recent failures, a new country, travel, two countries,
        // a suspicious address.
        let histories = [
            History {
                recent_failures: 3,
                ..at_home()
            },
            History {
                country_seen: false,
                ..at_home()
            },
            History {
                last_active: Some((sydney(), now() - Duration::minutes(30))),
                ..at_home()
            },
            History {
                live: vec![sydney()],
                ..at_home()
            },
            History {
                address_failures: 12,
                ..at_home()
            },
        ];
        for h in histories {
            let a = assess(&POLICY, &trusted(berlin()), &h);
            assert!(!a.trusted_browser, "{h:?} → {a:?}");
        }
        // Nor from an address the GeoIP database cannot place.
        assert!(!assess(&POLICY, &trusted(Location::default()), &at_home()).trusted_browser);
        // An untrusted known device never is.
        assert!(!assess(&POLICY, &attempt(berlin(), true), &at_home()).trusted_browser);
    }

    #[test]
    fn reasons_read_like_sentences() {
        assert_eq!(grouped(16_090), "16,090");
        assert_eq!(grouped(900), "900");
        assert_eq!(span(0), "moments");
        assert_eq!(span(10), "10 minutes");
        assert_eq!(span(180), "3 hours");
        assert_eq!(span(3 * 24 * 60), "3 days");
        assert_eq!(
            Signal::RecentFailures { count: 4 }.to_string(),
            "4 failed sign-ins in the last 15 minutes"
        );
    }
}
