//! Mail: every message is first a row in the outbox, written in the same transaction
//! as the change that caused it; `worker` delivers it with retries. SMTP being down
//! loses nothing.

pub mod messages;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::domain::OutboundMail;
use crate::settings::Settings;

/// Where mail goes: an SMTP relay, or (dev mode without one) the log and optionally
/// a folder of `.eml` files.
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Log { dir: Option<PathBuf> },
}

impl Transport {
    /// Must be called inside the runtime (lettre's pool spawns tasks).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        match &settings.smtp_url {
            Some(url) => Ok(Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .context("GATEHOUSE_SMTP_URL")?
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .build(),
            )),
            None => Ok(Transport::Log {
                dir: settings.mail_dir.clone(),
            }),
        }
    }

    /// Whether the relay answers (a connection and `NOOP`), for the health gauge; the
    /// log transport is always up.
    pub async fn check(&self) -> bool {
        match self {
            Transport::Smtp(smtp) => matches!(smtp.test_connection().await, Ok(true)),
            Transport::Log { .. } => true,
        }
    }

    /// Delivers one message; an error means "try again later".
    pub async fn send(
        &self,
        from: &Mailbox,
        id: uuid::Uuid,
        mail: &OutboundMail,
    ) -> anyhow::Result<()> {
        let message = Message::builder()
            .from(from.clone())
            .to(mail.to.parse().context("recipient address")?)
            .subject(mail.subject.clone())
            .message_id(Some(format!("<{id}@gatehouse>")))
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .context("building the message")?;
        match self {
            Transport::Smtp(smtp) => {
                smtp.send(message).await.context("SMTP delivery")?;
            }
            Transport::Log { dir } => {
                // Dev mode only. Without a mail directory the content is logged so
                // links and codes can be followed; with one, it goes only to the file
                // and the log names the file (one-time codes stay out of logs).
                if dir.is_none() {
                    tracing::info!(to = %mail.to, subject = %mail.subject, body = %mail.text, "mail (dev mode, not sent)");
                }
                if let Some(dir) = dir {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .context("GATEHOUSE_MAIL_DIR")?;
                    let path = dir.join(format!("{id}.eml"));
                    tokio::fs::write(&path, message.formatted())
                        .await
                        .context("writing the mail file")?;
                    tracing::info!(to = %mail.to, subject = %mail.subject, file = %path.display(), "mail (dev mode, written to a file)");
                }
            }
        }
        Ok(())
    }
}
