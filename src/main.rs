use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gatehouse::auth::operators;
use gatehouse::cli::{
    Cli, ClientCommand, Command, KeysCommand, SessionsCommand, UpstreamCommand, UserCommand,
    read_password, read_secret,
};
use gatehouse::clock::Clock;
use gatehouse::settings::{RawSettings, Settings};
use gatehouse::startup::Application;
use gatehouse::state::AppState;
use gatehouse::store::{connect_pool, migrate_when_reachable};
use gatehouse::{auth, telemetry};
use secrecy::ExposeSecret;

fn load_settings(cli: &Cli) -> Result<Settings, String> {
    let (path, given) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("gatehouse.toml"), false),
    };
    let raw = RawSettings::load(&path, given).map_err(|e| e.to_string())?;
    let unknown = raw.unknown_keys();
    let settings = raw.into_settings().map_err(|e| e.to_string())?;
    let output = if matches!(cli.command, Command::Serve { .. }) {
        telemetry::Output::Stdout
    } else {
        telemetry::Output::Stderr
    };
    telemetry::init(settings.log_format, output);
    for key in unknown {
        tracing::warn!(key = %key, "unknown setting ignored");
    }
    Ok(settings)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Doctor) {
        return doctor(&cli).await;
    }
    let settings = match load_settings(&cli) {
        Ok(s) => s,
        Err(line) => {
            eprintln!("gatehouse: {line}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse doctor`: its lines on standard output, no log (settings that do not load
/// are one failed check, not an error).
async fn doctor(cli: &Cli) -> ExitCode {
    let (path, given) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("gatehouse.toml"), false),
    };
    let checks = match RawSettings::load(&path, given).and_then(RawSettings::into_settings) {
        Ok(settings) => gatehouse::doctor::run(&settings).await,
        Err(e) => vec![gatehouse::doctor::settings_failure(&e)],
    };
    for check in &checks {
        println!("{}", check.line());
    }
    if checks.iter().all(|c| c.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve { no_migrate } => {
            let bind = settings.bind;
            let app = Application::build(settings, Clock::system(), !no_migrate).await?;
            tracing::info!(%bind, port = app.port(), "gatehouse listening");
            app.run_until_stopped().await?;
            tracing::info!("stopped");
        }
        Command::Migrate => {
            let pool = connect_pool(settings.database_url(), settings.database_acquire_timeout)?;
            migrate_when_reachable(&pool).await?;
            println!("migrations applied");
        }
        Command::User {
            command:
                UserCommand::Create {
                    email,
                    admin,
                    verified,
                    no_password,
                },
        } => {
            let password = if no_password {
                None
            } else {
                Some(read_password()?)
            };
            let state = AppState::new(settings, Clock::system(), true).await?;
            let id = auth::login::create_user(&state, &email, password.as_deref(), admin, verified)
                .await?;
            println!(
                "{}",
                serde_json::json!({ "user_id": id.to_string(), "email": email.trim().to_lowercase() })
            );
        }
        Command::User {
            command: UserCommand::Disable { email },
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            let changed = operators::set_disabled(&state, &email, true).await?;
            println!(
                "{}",
                serde_json::json!({ "email": email.trim().to_lowercase(), "disabled": true, "changed": changed })
            );
        }
        Command::User {
            command: UserCommand::Enable { email },
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            let changed = operators::set_disabled(&state, &email, false).await?;
            println!(
                "{}",
                serde_json::json!({ "email": email.trim().to_lowercase(), "disabled": false, "changed": changed })
            );
        }
        Command::Sessions {
            command: SessionsCommand::List { user },
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            for line in operators::list_sessions(&state, &user).await? {
                println!("{line}");
            }
        }
        Command::Sessions {
            command: SessionsCommand::Flagged { since },
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            for line in operators::flagged_sessions(&state, since.as_deref()).await? {
                println!("{line}");
            }
        }
        Command::Sessions {
            command: SessionsCommand::Revoke { user, session },
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            let n = operators::revoke_sessions(&state, &user, session.as_deref()).await?;
            println!("{}", serde_json::json!({ "revoked": n }));
        }
        Command::Client {
            command:
                ClientCommand::Create {
                    name,
                    redirect_uris,
                    public,
                    post_logout_redirect_uris,
                    backchannel_logout_uri,
                    first_party,
                    introspect_any,
                    web_origins,
                },
        } => {
            let state = AppState::new(settings, Clock::system(), true).await?;
            let created = gatehouse::oauth::clients::create(
                &state,
                gatehouse::oauth::clients::NewClient {
                    name,
                    redirect_uris,
                    public,
                    post_logout_redirect_uris,
                    backchannel_logout_uri,
                    first_party,
                    introspect_any,
                    web_origins,
                },
            )
            .await?;
            println!(
                "{}",
                serde_json::json!({
                    "client_id": created.client_id,
                    "client_secret": created.client_secret.as_ref().map(|s| s.expose_secret()),
                })
            );
        }
        Command::Client {
            command: ClientCommand::List,
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            for c in gatehouse::oauth::clients::list(&state).await? {
                println!(
                    "{}",
                    serde_json::json!({
                        "client_id": c.id,
                        "name": c.name,
                        "public": c.is_public(),
                        "redirect_uris": c.redirect_uris,
                        "post_logout_redirect_uris": c.post_logout_redirect_uris,
                        "backchannel_logout_uri": c.backchannel_logout_uri,
                        "first_party": c.first_party,
                        "introspect_any": c.introspect_any,
                        "web_origins": c.web_origins,
                    })
                );
            }
        }
        Command::Client {
            command: ClientCommand::Delete { id },
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            if !gatehouse::oauth::clients::delete(&state, &id).await? {
                anyhow::bail!("no client has the id {id}");
            }
            println!("{}", serde_json::json!({ "deleted": id }));
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let state = AppState::new(settings, Clock::system(), true).await?;
            gatehouse::oauth::keys::ensure(&state).await?;
            let kid = gatehouse::oauth::keys::rotate(&state).await?;
            println!("{}", serde_json::json!({ "signing_kid": kid }));
        }
        Command::Keys {
            command: KeysCommand::Reencrypt,
        } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            let report = operators::reencrypt(&state).await?;
            println!(
                "{}",
                serde_json::json!({ "rewritten": report.rewritten, "unreadable": report.unreadable, "remaining": report.remaining })
            );
            if report.remaining > 0 {
                anyhow::bail!(
                    "{} rows still hold values under another key ({} of them unreadable with the configured keys); keep the old keys and run this again",
                    report.remaining,
                    report.unreadable
                );
            }
        }
        Command::Upstream { command } => upstream(command, settings).await?,
        // Answered by `doctor` above, before settings are loaded.
        Command::Doctor => {}
    }
    Ok(())
}

async fn upstream(command: UpstreamCommand, settings: Settings) -> anyhow::Result<()> {
    use gatehouse::upstream::admin;
    match command {
        UpstreamCommand::Add {
            name,
            kind,
            issuer,
            client_id,
            scopes,
            trust_email,
            label,
            base_url,
            api_url,
        } => {
            let client_secret = read_secret("Client secret")?.into();
            let state = AppState::new(settings, Clock::system(), true).await?;
            let added = admin::add(
                &state,
                admin::AddUpstream {
                    name,
                    kind,
                    issuer,
                    client_id,
                    client_secret,
                    scopes,
                    trust_email,
                    label,
                    base_url,
                    api_url,
                },
            )
            .await?;
            let u = &added.upstream;
            println!(
                "{}",
                serde_json::json!({
                    "name": u.name,
                    "kind": u.kind.as_str(),
                    "preset": u.preset,
                    "label": u.label,
                    "issuer": u.issuer,
                    "base_url": u.base_url,
                    "api_url": u.api_url,
                    "client_id": u.client_id,
                    "scopes": u.scopes,
                    "trust_email": u.trust_email,
                    "redirect_uri": added.redirect_uri,
                    "backchannel_logout_uri": added.backchannel_logout_uri,
                })
            );
        }
        UpstreamCommand::List => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            for line in admin::list(&state).await? {
                println!("{line}");
            }
        }
        UpstreamCommand::Delete { name } => {
            let state = AppState::new(settings, Clock::system(), false).await?;
            admin::delete(&state, &name).await?;
            println!("{}", serde_json::json!({ "deleted": name }));
        }
    }
    Ok(())
}
