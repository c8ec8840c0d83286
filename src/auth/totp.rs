//! Authenticator apps (RFC 6238 TOTP through totp-rs): SHA-1, six digits, 30-second
//! steps — what every authenticator app understands — checked against the server's
//! clock only, one step either side.

use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, Builder, Totp};

use crate::crypto::columns;
use crate::error::AppError;
use crate::state::AppState;

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "Gatehouse";
/// RFC 4226 §4 recommends 160-bit secrets.
pub const SECRET_BYTES: usize = 20;

fn build(secret: Vec<u8>, account: &str) -> Result<Totp, AppError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(1)
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| AppError::Unexpected(anyhow::anyhow!("TOTP parameters refused: {e:?}")))
}

/// What an enrolment shows: the secret in base32, the `otpauth://` URI and its QR
/// code as inline SVG.
pub struct EnrolmentSecret {
    pub base32: SecretString,
    pub uri: SecretString,
    pub qr_svg: String,
}

/// A new secret, sealed for storage.
pub fn new_secret(state: &AppState) -> Result<Vec<u8>, AppError> {
    let secret = crate::crypto::random_bytes::<SECRET_BYTES>();
    state
        .keys
        .seal(columns::TOTP_SECRET, &secret)
        .map_err(|e| AppError::Unexpected(e.into()))
}

fn open(state: &AppState, sealed: &[u8]) -> Result<Vec<u8>, AppError> {
    state
        .keys
        .open(columns::TOTP_SECRET, sealed)
        .map_err(|_| AppError::Unexpected(anyhow::anyhow!("a TOTP secret does not open")))
}

/// The enrolment page's view of a sealed secret.
pub fn enrolment(
    state: &AppState,
    sealed: &[u8],
    email: &str,
) -> Result<EnrolmentSecret, AppError> {
    let totp = build(open(state, sealed)?, email)?;
    let uri = totp
        .to_url()
        .map_err(|e| AppError::Unexpected(anyhow::anyhow!("otpauth URI: {e:?}")))?;
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| AppError::Unexpected(anyhow::anyhow!("QR code: {e}")))?;
    let svg = qr
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(232, 232)
        .quiet_zone(true)
        .build();
    // Inline in the page: no XML prolog; a name for screen readers.
    let svg = svg
        .trim_start_matches(|c| c != '<')
        .split_once("?>")
        .map_or(svg.as_str(), |(_, rest)| rest)
        .replacen(
            "<svg ",
            "<svg role=\"img\" aria-label=\"QR code for your authenticator app\" ",
            1,
        );
    Ok(EnrolmentSecret {
        base32: SecretString::from(totp.secret().to_base32()),
        uri: SecretString::from(uri),
        qr_svg: svg,
    })
}

/// The RFC 6238 time step `code` is valid for at the server's time (±1 step), if any.
pub fn matching_step(
    state: &AppState,
    sealed: &[u8],
    code: &SecretString,
) -> Result<Option<i64>, AppError> {
    let totp = build(open(state, sealed)?, "")?;
    let now = u64::try_from(state.clock.now().unix_timestamp()).unwrap_or(0);
    Ok(totp
        .check(code.expose_secret(), now)
        .and_then(|step| i64::try_from(step).ok()))
}
