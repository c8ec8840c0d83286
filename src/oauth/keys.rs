//! Signing keys: created at first start, rotated by `gatehouse keys rotate`, read into
//! this node's `SigningKeys` and kept current (a rotation made on another node or by
//! the command line is picked up within `REFRESH`, or at once when a token names a
//! key this node has not seen).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use uuid::Uuid;

use crate::crypto::columns;
use crate::signing::{Signer, Verifier, generate_key};
use crate::state::AppState;
use crate::store::SigningKeyRecord;

/// How stale this node's idea of the signing key may be.
pub const REFRESH: Duration = Duration::from_secs(5);
/// A token naming an unknown key reloads the keys at most this often.
const UNKNOWN_KID_RELOAD: Duration = Duration::from_secs(1);

/// Reads the keys from the database into this node, parsing only keys it has not
/// parsed before.
pub async fn load(state: &AppState) -> anyhow::Result<()> {
    let rows = state
        .store
        .signing_keys()
        .await
        .context("reading signing keys")?;
    let now = state.clock.now();
    let mut current = None;
    let mut verifiers = Vec::new();
    for row in rows {
        let (known_signer, known_verifier) = state.signing.known(&row.kid);
        let verifier = match known_verifier {
            Some(v) if v.verify_until == row.verify_until => v,
            _ => Arc::new(Verifier::new(&row.kid, &row.n, &row.e, row.verify_until)),
        };
        if row.verify_until.is_none() {
            let signer =
                match known_signer {
                    Some(s) => s,
                    None => {
                        let pkcs8 = state
                        .keys
                        .open(columns::SIGNING_KEY, &row.private_enc)
                        .map_err(|_| {
                            anyhow!(
                                "signing key {} cannot be opened with the configured secret keys",
                                row.kid
                            )
                        })?;
                        Arc::new(Signer::from_pkcs8(&row.kid, &pkcs8).ok_or_else(|| {
                            anyhow!("signing key {} is not a valid RSA key", row.kid)
                        })?)
                    }
                };
            current = Some(signer);
        }
        if verifier.verify_until.is_none_or(|t| t > now) {
            verifiers.push(verifier);
        }
    }
    state.signing.install(current, verifiers, Instant::now());
    Ok(())
}

async fn new_record(state: &AppState) -> anyhow::Result<SigningKeyRecord> {
    // RSA key generation takes tens of milliseconds: not on an event loop thread.
    let key = tokio::task::spawn_blocking(generate_key)
        .await
        .context("generating a signing key")?
        .ok_or_else(|| anyhow!("RSA key generation failed"))?;
    Ok(SigningKeyRecord {
        id: Uuid::new_v4(),
        kid: key.kid,
        private_enc: state.keys.seal(columns::SIGNING_KEY, &key.pkcs8)?,
        n: key.n,
        e: key.e,
        created_at: state.clock.now(),
        verify_until: None,
    })
}

/// Makes sure there is a signing key (creating one at first start; several nodes
/// starting at once agree on one) and loads the keys.
pub async fn ensure(state: &AppState) -> anyhow::Result<()> {
    load(state).await?;
    if state.signing.current_kid().is_some() {
        return Ok(());
    }
    let record = new_record(state).await?;
    state
        .store
        .ensure_signing_key(&record)
        .await
        .context("storing the first signing key")?;
    load(state).await?;
    if state.signing.current_kid().is_none() {
        return Err(anyhow!("no signing key after creating one"));
    }
    // The kid is public (it is in every token and the JWKS).
    tracing::info!(kid = ?state.signing.current_kid(), "token signing key ready");
    Ok(())
}

/// Reloads the keys if this node's copy is older than `REFRESH` (or there is none).
/// A failed reload keeps the old copy; the caller finds out if it has no key at all.
pub async fn refresh_if_stale(state: &AppState) {
    if !is_stale(state) {
        return;
    }
    // Someone else is reloading: with a key in hand, go on with it; without one,
    // wait for theirs.
    let _guard = match state.signing.reload.try_lock() {
        Ok(g) => g,
        Err(_) if state.signing.current_kid().is_some() => return,
        Err(_) => state.signing.reload.lock().await,
    };
    if is_stale(state)
        && let Err(e) = ensure(state).await
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "signing keys could not be reloaded"
        );
    }
}

fn is_stale(state: &AppState) -> bool {
    state
        .signing
        .loaded_at()
        .is_none_or(|at| at.elapsed() >= REFRESH)
        || state.signing.current_kid().is_none()
}

/// A token named a key this node does not know: another node may have rotated. At
/// most one reload at a time, and at most one a second.
pub async fn reload_for_unknown_kid(state: &AppState) {
    let Ok(_guard) = state.signing.reload.try_lock() else {
        return;
    };
    if state
        .signing
        .loaded_at()
        .is_none_or(|at| at.elapsed() >= UNKNOWN_KID_RELOAD)
        && let Err(e) = load(state).await
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "signing keys could not be reloaded"
        );
    }
}

/// `gatehouse keys rotate`: a new key signs from now on; the previous one verifies
/// until every token it signed has expired; any older one is retired at once.
pub async fn rotate(state: &AppState) -> anyhow::Result<String> {
    let record = new_record(state).await?;
    let now = state.clock.now();
    // A node may keep signing with the previous key for up to REFRESH after this.
    let keep = state.settings.access_token_ttl + REFRESH * 2 + Duration::from_secs(60);
    state
        .store
        .rotate_signing_key(&record, now, now + keep)
        .await
        .context("rotating the signing key")?;
    Ok(record.kid)
}
