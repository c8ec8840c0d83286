//! What Gatehouse knows about where a sign-in came from: the browser (parsed from the
//! user agent by `woothee`, a maintained parser, never by regexes of our own) and the
//! approximate place (from the GeoIP database, looked up in `crate::geoip`).

use serde::{Deserialize, Serialize};

/// The kind of device, as the device list shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Desktop,
    Phone,
    Tablet,
    Other,
}

impl DeviceKind {
    /// The stored form (`devices.device_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Phone => "phone",
            Self::Tablet => "tablet",
            Self::Other => "other",
        }
    }
}

/// A user agent read as a person would describe the device: "Firefox on Linux",
/// "Safari on iPhone".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub label: String,
    pub kind: DeviceKind,
}

/// How woothee names what it does not recognise.
const UNKNOWN: &str = "UNKNOWN";

impl Agent {
    /// Parses a `User-Agent` header; `None` (no header) is an unknown browser.
    pub fn parse(user_agent: Option<&str>) -> Self {
        let parsed = user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua));
        let Some(r) = parsed else {
            return Self {
                label: "Unknown browser".into(),
                kind: DeviceKind::Other,
            };
        };
        let browser = match r.name {
            n if n == UNKNOWN || n.is_empty() => "Unknown browser".to_string(),
            n => n.to_string(),
        };
        let os = match r.os {
            o if o == UNKNOWN || o.is_empty() => None,
            // woothee's names for Apple's desktop system predate "macOS".
            "Mac OSX" | "Mac OS Classic" => Some("macOS".to_string()),
            o => Some(o.to_string()),
        };
        let ua = user_agent.unwrap_or_default();
        let kind = match (r.category, r.os) {
            (_, "iPad") => DeviceKind::Tablet,
            // Android tablets are Android browsers that do not say "Mobile" (Google's
            // own rule for telling them apart).
            ("smartphone", "Android") if !ua.contains("Mobile") => DeviceKind::Tablet,
            ("smartphone" | "mobilephone", _) => DeviceKind::Phone,
            ("pc", _) => DeviceKind::Desktop,
            _ => DeviceKind::Other,
        };
        let label = match os {
            Some(os) => format!("{browser} on {os}"),
            None => browser,
        };
        Self { label, kind }
    }
}

/// An approximate place, from the GeoIP database. Stored sealed, as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country_code: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// How far off the coordinates may be, in kilometres.
    pub accuracy_km: Option<u16>,
}

impl Location {
    /// Whether the database knew anything about the address.
    pub fn is_known(&self) -> bool {
        self.country_code.is_some() || self.city.is_some() || self.latitude.is_some()
    }

    /// "Berlin, Germany", "Germany", or "Unknown location".
    pub fn place(&self) -> String {
        match (&self.city, &self.country) {
            (Some(city), Some(country)) => format!("{city}, {country}"),
            (Some(city), None) => city.clone(),
            (None, Some(country)) => country.clone(),
            (None, None) => "Unknown location".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_browsers_get_a_label_and_a_kind() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Firefox on Linux",
                DeviceKind::Desktop,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari on iPhone",
                DeviceKind::Phone,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari on iPad",
                DeviceKind::Tablet,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                "Chrome on Windows 10",
                DeviceKind::Desktop,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                "Chrome on Android",
                DeviceKind::Tablet,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
                DeviceKind::Phone,
            ),
        ];
        for (ua, label, kind) in cases {
            let a = Agent::parse(Some(ua));
            assert_eq!((a.label.as_str(), a.kind), (label, kind), "{ua}");
        }
    }

    #[test]
    fn odd_or_missing_user_agents_are_unknown_browsers() {
        assert_eq!(Agent::parse(None).label, "Unknown browser");
        let a = Agent::parse(Some("\"><script>alert(1)</script>"));
        assert_eq!(a.label, "Unknown browser");
        assert_eq!(a.kind, DeviceKind::Other);
    }

    #[test]
    fn places_read_like_a_person_says_them() {
        let mut l = Location::default();
        assert_eq!(l.place(), "Unknown location");
        assert!(!l.is_known());
        l.country = Some("Germany".into());
        l.country_code = Some("DE".into());
        assert_eq!(l.place(), "Germany");
        l.city = Some("Berlin".into());
        assert_eq!(l.place(), "Berlin, Germany");
    }
}
