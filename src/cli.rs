//! The `gatehouse` command line.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: a self-hosted OpenID Connect identity server"
)]
pub struct Cli {
    /// Settings file; GATEHOUSE_* environment variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (applies pending migrations first).
    Serve {
        /// Do not apply migrations; the server reports not ready until they are.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// See and end users' sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Register and remove the apps that sign people in with Gatehouse.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Manage the keys of data at rest and the token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the other identity providers people may sign in with.
    Upstream {
        #[command(subcommand)]
        command: UpstreamCommand,
    },
    /// Check this deployment (settings, database, mail, GeoIP, clock, keys): one line
    /// per check with what to fix; exit status 0 only when all pass.
    Doctor,
}

#[derive(Subcommand, Debug)]
pub enum UpstreamCommand {
    /// Add an identity provider. The client secret is read from standard input.
    /// Prints the redirect URI and the back-channel logout URI to register there.
    Add {
        /// Short name, part of the URIs registered at the provider
        /// (a-z, 0-9, '-', '_').
        #[arg(long)]
        name: String,
        /// oidc (any OpenID provider, needs --issuer), google, microsoft, gitlab
        /// (OpenID providers with their issuer filled in), or github.
        #[arg(long, value_name = "KIND")]
        kind: String,
        /// The provider's issuer (https://; its discovery document is at
        /// ISSUER/.well-known/openid-configuration). Microsoft: the default admits
        /// every organisation and personal accounts; give
        /// https://login.microsoftonline.com/TENANT-ID/v2.0 for one organisation.
        #[arg(long, value_name = "URL")]
        issuer: Option<String>,
        /// The client id the provider gave Gatehouse. It may begin with `-` (another
        /// Gatehouse's ids are random base64url), so such a value is taken as it is.
        #[arg(long = "client-id", value_name = "ID", allow_hyphen_values = true)]
        client_id: String,
        /// Scopes to ask for (default: "openid email profile"; GitHub:
        /// "read:user user:email").
        #[arg(long)]
        scopes: Option<String>,
        /// Link at once to an existing account with the same address when the
        /// provider says the address is verified. Only for providers that verify
        /// addresses (e.g. Google).
        #[arg(long = "trust-email")]
        trust_email: bool,
        /// What the sign-in page's button says ("Continue with …"); default: the name.
        #[arg(long)]
        label: Option<String>,
        /// GitHub: the web address (default https://github.com; GitHub Enterprise:
        /// https://ghe.example).
        #[arg(long = "base-url", value_name = "URL")]
        base_url: Option<String>,
        /// GitHub: the REST API address (default https://api.github.com, or
        /// BASE/api/v3 for GitHub Enterprise).
        #[arg(long = "api-url", value_name = "URL")]
        api_url: Option<String>,
    },
    /// Print every identity provider, one JSON object per line (never a secret).
    List,
    /// Remove an identity provider and every link to it.
    Delete {
        /// The provider's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// Print the user's live sessions, one JSON object per line.
    List {
        /// The account's e-mail address.
        #[arg(long, value_name = "EMAIL")]
        user: String,
    },
    /// End the user's sessions at once (every node): all of them, or one.
    Revoke {
        /// The account's e-mail address.
        #[arg(long, value_name = "EMAIL")]
        user: String,
        /// Only this session (its id, as `sessions list` prints it).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
    },
    /// Print the sessions the contextual checks flagged, newest first, one JSON
    /// object per line.
    Flagged {
        /// Only those flagged in this last span (`24h`, `7d`) or since this time
        /// (RFC 3339, `2026-12-01T00:00:00Z`).
        #[arg(long, value_name = "D")]
        since: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Register an app; prints {"client_id":…,"client_secret":…} (the secret only now).
    Create {
        /// The app's name, shown on the consent page.
        #[arg(long)]
        name: String,
        /// Where the app receives its code (exact match; repeat for several).
        #[arg(long = "redirect-uri", value_name = "URI", required = true)]
        redirect_uris: Vec<String>,
        /// A public client (a native or browser app): no secret, PKCE required.
        #[arg(long)]
        public: bool,
        /// Where the app may send people after signing out (repeatable).
        #[arg(long = "post-logout-redirect-uri", value_name = "URI")]
        post_logout_redirect_uris: Vec<String>,
        /// The app's OIDC back-channel logout endpoint.
        #[arg(long = "backchannel-logout-uri", value_name = "URI")]
        backchannel_logout_uri: Option<String>,
        /// An app of your own: no consent page.
        #[arg(long)]
        first_party: bool,
        /// An API that may introspect every token, not only its own.
        #[arg(long)]
        introspect_any: bool,
        /// A browser app's origin (`https://app.example`, or `http://` on loopback)
        /// whose pages may call the token, revocation and userinfo endpoints (CORS,
        /// no credentials); repeatable; needs --public.
        #[arg(long = "web-origin", value_name = "ORIGIN")]
        web_origins: Vec<String>,
    },
    /// Print every registered app, one JSON object per line.
    List,
    /// Remove an app, with every token and consent it had.
    Delete {
        /// The client_id (it may begin with `-`: ids are random base64url).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a new token signing key sign from now on; the previous one keeps verifying
    /// until the tokens it signed expire, and any older one is retired.
    Rotate,
    /// Rewrite every encrypted value under the current GATEHOUSE_SECRET_KEY, so that
    /// keys in GATEHOUSE_OLD_SECRET_KEYS can be dropped. Safe while serving; can be
    /// stopped and run again.
    Reencrypt,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account. The password is read from standard input.
    Create {
        /// The account's e-mail address.
        #[arg(long)]
        email: String,
        /// Make the account an administrator.
        #[arg(long)]
        admin: bool,
        /// Mark the e-mail address as verified.
        #[arg(long)]
        verified: bool,
        /// Create it without a password (nothing is read): the person signs in with
        /// an upstream identity provider, or sets one with "Forgot your password?".
        #[arg(long)]
        no_password: bool,
    },
    /// Disable an account: every session ends at once and signing in fails.
    Disable {
        /// The account's e-mail address.
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// The account's e-mail address.
        #[arg(long)]
        email: String,
    },
}

/// Reads a secret from standard input: one line, without its line ending.
pub fn read_secret(prompt: &str) -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt} (input is shown; pipe it in to avoid that): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads one line from standard input, without its line ending.
pub fn read_password() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (input is shown; pipe it in to avoid that): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
