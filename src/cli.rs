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
    /// Manage the keys of data at rest.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
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
