//! HTTPS served by Gatehouse itself (`GATEHOUSE_TLS_CERT` / `GATEHOUSE_TLS_KEY`): a
//! TLS client made here from the same rustls (ring provider) trusts only the test
//! certificate (tests/fixtures/tls/, for localhost and 127.0.0.1) and fetches
//! `/healthz` over it; nothing is served in the clear on that port; a key that does
//! not fit the certificate stops the start with the setting's name.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::clock::Clock;
use gatehouse::settings::RawSettings;
use gatehouse::startup::Application;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::helpers::{Options, spawn_app_with};

const CERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tls/localhost.crt"
);
const KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tls/localhost.key"
);

fn tls_options() -> Options {
    Options {
        extra: vec![
            ("GATEHOUSE_TLS_CERT", CERT.into()),
            ("GATEHOUSE_TLS_KEY", KEY.into()),
        ],
        ..Options::default()
    }
}

/// One HTTP/1.1 GET over TLS to 127.0.0.1:`port`, trusting only the test
/// certificate, verified for `name`; the whole answer, head and body.
fn get_over_tls(port: u16, name: &'static str, path: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(CERT).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = ServerName::try_from(name).map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), server).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A server that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn gatehouse_serves_https_itself_with_the_configured_certificate() {
    let app = spawn_app_with(tls_options()).await;
    let port = app.port;
    for name in ["localhost", "127.0.0.1"] {
        let answer = tokio::task::spawn_blocking(move || get_over_tls(port, name, "/healthz"))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("GET /healthz over TLS as {name}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // HSTS and the rest of the edge's headers are there over TLS too.
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("strict-transport-security:"),
            "{answer}"
        );
    }
    // A name the certificate does not cover is refused by the client, as it must be.
    let wrong = tokio::task::spawn_blocking(move || get_over_tls(port, "example.com", "/healthz"))
        .await
        .unwrap();
    assert!(wrong.is_err(), "{wrong:?}");
    // Nothing answers in the clear on that port.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP answered: {plain:?}"
    );
}

/// Builds the application with these TLS files; the start-up error, if any.
async fn start_error(cert: &str, key: &str) -> Option<String> {
    let mut raw = RawSettings::default();
    raw.set("GATEHOUSE_DEV", "true");
    raw.set("GATEHOUSE_DATABASE_URL", "postgres://127.0.0.1:1/none");
    raw.set("GATEHOUSE_BIND", "127.0.0.1:0");
    raw.set("GATEHOUSE_TLS_CERT", cert);
    raw.set("GATEHOUSE_TLS_KEY", key);
    let settings = raw.into_settings().expect("both files are readable");
    Application::build(settings, Clock::system(), false)
        .await
        .err()
        .map(|e| format!("{e:#}"))
}

#[tokio::test]
async fn tls_files_that_hold_no_certificate_or_the_wrong_key_stop_the_start_with_the_setting_named()
{
    // The key file where the certificate belongs.
    let e = start_error(KEY, KEY).await.expect("refused");
    assert!(e.starts_with("GATEHOUSE_TLS_CERT: "), "{e}");
    // The certificate where the key belongs.
    let e = start_error(CERT, CERT).await.expect("refused");
    assert!(e.starts_with("GATEHOUSE_TLS_KEY: "), "{e}");
    // A key of another pair.
    let dir = std::env::temp_dir().join(format!("gatehouse-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other.key");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&other)
        .status();
    if made.is_ok_and(|s| s.success()) {
        let e = start_error(CERT, other.to_str().unwrap())
            .await
            .expect("refused");
        assert!(e.starts_with("GATEHOUSE_TLS_KEY: "), "{e}");
        assert!(e.contains("does not fit"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
