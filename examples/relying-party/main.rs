//! The example relying party (see `README.md` beside this file):
//! `cargo run --example relying-party` with `RP_CLIENT_ID` and `RP_CLIENT_SECRET`
//! from `gatehouse client create`, and `GATEHOUSE_URL` if Gatehouse is not at
//! `http://localhost:8080`.

mod app;

fn env(name: &str, default: Option<&str>) -> anyhow::Result<String> {
    match (std::env::var(name), default) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(d)) => Ok(d.to_string()),
        (Err(_), None) => {
            anyhow::bail!("{name} is required (see examples/relying-party/README.md)")
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The TLS provider for reqwest (built without one of its own in this workspace).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bind = env("RP_BIND", Some("127.0.0.1:9000"))?;
    let config = app::Config {
        issuer: env("GATEHOUSE_URL", Some("http://localhost:8080"))?,
        client_id: env("RP_CLIENT_ID", None)?,
        client_secret: env("RP_CLIENT_SECRET", None)?,
        url: env("RP_URL", Some(&format!("http://{bind}")))?,
    };
    let listener = std::net::TcpListener::bind(&bind)?;
    println!(
        "Example app on {} (Gatehouse at {})",
        config.url, config.issuer
    );
    app::serve(config, listener).await?.await?;
    Ok(())
}
