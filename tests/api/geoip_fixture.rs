//! A writer for tiny MaxMind DB files (format 2.0,
//! <https://maxmind.github.io/MaxMind-DB/>), so the suite builds its GeoIP fixture
//! itself instead of downloading one. It places documentation ranges (RFC 5737) in
//! two distant cities and loopback in a third; everything else is unknown.

use std::path::PathBuf;

/// One network and the City-shaped record the database gives for it.
pub struct Place {
    pub network: &'static str,
    pub country_code: &'static str,
    pub country: &'static str,
    pub city: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub accuracy_km: u16,
}

pub const BERLIN: Place = Place {
    network: "192.0.2.0/24",
    country_code: "DE",
    country: "Germany",
    city: "Berlin",
    latitude: 52.52,
    longitude: 13.405,
    accuracy_km: 20,
};

pub const SYDNEY: Place = Place {
    network: "198.51.100.0/24",
    country_code: "AU",
    country: "Australia",
    city: "Sydney",
    latitude: -33.8688,
    longitude: 151.2093,
    accuracy_km: 50,
};

/// Loopback is looked up like any address (DESIGN.md "Precise rules").
pub const LOOPBACK_PLACE: Place = Place {
    network: "127.0.0.0/8",
    country_code: "NL",
    country: "Netherlands",
    city: "Amsterdam",
    latitude: 52.3676,
    longitude: 4.9041,
    accuracy_km: 100,
};

/// 203.0.113.0/24 (TEST-NET-3) is deliberately absent: "unknown location".
pub const UNKNOWN_ADDRESS: &str = "203.0.113.50";

/// Writes the fixture (once per test process, under `target/`) and returns its path.
pub fn write_fixture() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("geoip-fixture-{}.mmdb", std::process::id()));
        std::fs::write(&path, build(&[BERLIN, SYDNEY, LOOPBACK_PLACE]))
            .expect("writing the GeoIP fixture");
        path
    })
    .clone()
}

/// A data-section value.
enum Value {
    Str(String),
    Double(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, Value)>),
    Array(Vec<Value>),
}

fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
    let (first, extra): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, vec![]),
        29..285 => (29, vec![(size - 29) as u8]),
        _ => {
            let s = size - 285;
            (30, vec![(s >> 8) as u8, s as u8])
        }
    };
    if type_num <= 7 {
        out.push((type_num << 5) | first);
    } else {
        out.push(first);
        out.push(type_num - 7);
    }
    out.extend(extra);
}

fn encode(out: &mut Vec<u8>, v: &Value) {
    let uint = |out: &mut Vec<u8>, type_num: u8, n: u64| {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        control(out, type_num, bytes.len());
        out.extend(bytes);
    };
    match v {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend(s.as_bytes());
        }
        Value::Double(d) => {
            control(out, 3, 8);
            out.extend(d.to_be_bytes());
        }
        Value::U16(n) => uint(out, 5, u64::from(*n)),
        Value::U32(n) => uint(out, 6, u64::from(*n)),
        Value::U64(n) => uint(out, 9, *n),
        Value::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(out, &Value::Str((*k).to_string()));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(out, v);
            }
        }
    }
}

fn names(en: &str) -> Value {
    Value::Map(vec![("en", Value::Str(en.into()))])
}

fn record(p: &Place) -> Value {
    Value::Map(vec![
        ("city", Value::Map(vec![("names", names(p.city))])),
        (
            "country",
            Value::Map(vec![
                ("iso_code", Value::Str(p.country_code.into())),
                ("names", names(p.country)),
            ]),
        ),
        (
            "location",
            Value::Map(vec![
                ("accuracy_radius", Value::U16(p.accuracy_km)),
                ("latitude", Value::Double(p.latitude)),
                ("longitude", Value::Double(p.longitude)),
            ]),
        ),
    ])
}

#[derive(Clone, Copy)]
enum Rec {
    Node(u32),
    Empty,
    Data(u32),
}

/// The network as its 128 bits in an IPv6 tree (IPv4 under `::/96`, where readers
/// look IPv4 addresses up) and its prefix length there.
fn bits(network: &str) -> (u128, u32) {
    let net: ipnet::IpNet = network.parse().expect("fixture network");
    match net {
        ipnet::IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            96 + u32::from(n.prefix_len()),
        ),
        ipnet::IpNet::V6(n) => (u128::from(n.network()), u32::from(n.prefix_len())),
    }
}

fn build(places: &[Place]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    for p in places {
        let offset = data.len() as u32;
        encode(&mut data, &record(p));
        let (addr, len) = bits(p.network);
        let mut node = 0usize;
        for depth in 0..len {
            let bit = ((addr >> (127 - depth)) & 1) as usize;
            if depth == len - 1 {
                nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(i) => i as usize,
                _ => {
                    nodes.push([Rec::Empty, Rec::Empty]);
                    let i = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(i as u32);
                    i
                }
            };
        }
    }
    let count = nodes.len() as u32;
    let mut out = Vec::new();
    // 32-bit records: each node is its left and right record, big-endian.
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Node(i) => i,
                Rec::Empty => count,
                Rec::Data(off) => count + 16 + off,
            };
            out.extend(v.to_be_bytes());
        }
    }
    out.extend([0u8; 16]);
    out.extend(&data);
    out.extend(b"\xAB\xCD\xEFMaxMind.com");
    let metadata = Value::Map(vec![
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(1_767_225_600)),
        ("database_type", Value::Str("Gatehouse-Test-City".into())),
        (
            "description",
            Value::Map(vec![("en", Value::Str("Gatehouse test fixture".into()))]),
        ),
        ("ip_version", Value::U16(6)),
        ("languages", Value::Array(vec![Value::Str("en".into())])),
        ("node_count", Value::U32(count)),
        ("record_size", Value::U16(32)),
    ]);
    encode(&mut out, &metadata);
    out
}

#[test]
fn the_fixture_is_read_by_gatehouse_as_the_places_it_holds() {
    let path = write_fixture();
    let geo = gatehouse::geoip::GeoIp::open(Some(&path)).expect("the fixture opens");
    let berlin = geo.locate("192.0.2.10".parse().unwrap());
    assert_eq!(berlin.place(), "Berlin, Germany");
    assert_eq!(berlin.country_code.as_deref(), Some("DE"));
    assert_eq!(berlin.accuracy_km, Some(20));
    assert!((berlin.latitude.unwrap() - 52.52).abs() < 1e-9);
    assert_eq!(
        geo.locate("198.51.100.7".parse().unwrap()).place(),
        "Sydney, Australia"
    );
    assert_eq!(
        geo.locate("127.0.0.1".parse().unwrap()).place(),
        "Amsterdam, Netherlands"
    );
    assert_eq!(
        geo.locate(UNKNOWN_ADDRESS.parse().unwrap()).place(),
        "Unknown location"
    );
    assert!(!geo.locate("2001:db8::1".parse().unwrap()).is_known());
}
