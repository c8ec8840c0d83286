//! Approximate location of a client address from a MaxMind-format database
//! (`GATEHOUSE_GEOIP_DB`, GeoLite2/GeoIP2 City or Country, or DB-IP's equivalents),
//! read with the `maxminddb` crate. Every address is looked up, private and loopback
//! included (a site's own database may place its office ranges); an address the
//! database does not know is "unknown location".

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::domain::Location;

/// The GeoIP database, loaded once at start-up (or none).
pub struct GeoIp {
    reader: Option<maxminddb::Reader<Vec<u8>>>,
}

/// The parts of a City (or Country) record Gatehouse uses; everything else in the
/// record is skipped by the decoder.
#[derive(Deserialize)]
struct Record {
    country: Option<Named>,
    city: Option<Named>,
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Named {
    iso_code: Option<String>,
    names: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
}

impl Named {
    fn english(&self) -> Option<String> {
        self.names.as_ref()?.get("en").cloned()
    }
}

impl GeoIp {
    /// No database: every place is "unknown location".
    pub fn none() -> Self {
        Self { reader: None }
    }

    /// Opens the database at `path`. A missing or unreadable file is an error that
    /// names the setting, so the operator sees one clear line at start-up.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::none());
        };
        let reader = maxminddb::Reader::open_readfile(path)
            .with_context(|| format!("GATEHOUSE_GEOIP_DB: cannot read {}", path.display()))?;
        Ok(Self {
            reader: Some(reader),
        })
    }

    pub fn is_configured(&self) -> bool {
        self.reader.is_some()
    }

    /// The place of `ip`; unknown when there is no database, the address is not in
    /// it, or its record cannot be read (a lookup never fails a request).
    pub fn locate(&self, ip: IpAddr) -> Location {
        let Some(reader) = &self.reader else {
            return Location::default();
        };
        let record = reader
            .lookup(ip)
            .ok()
            .and_then(|found| found.decode::<Record>().ok().flatten());
        let Some(r) = record else {
            return Location::default();
        };
        let location = r.location.as_ref();
        Location {
            country_code: r.country.as_ref().and_then(|c| c.iso_code.clone()),
            country: r.country.as_ref().and_then(Named::english),
            city: r.city.as_ref().and_then(Named::english),
            latitude: location.and_then(|l| l.latitude),
            longitude: location.and_then(|l| l.longitude),
            accuracy_km: location.and_then(|l| l.accuracy_radius),
        }
    }
}
