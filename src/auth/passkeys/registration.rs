//! Adding, listing, renaming and removing passkeys.

use super::*;

/// Options for adding a passkey (after a recent second factor, like any change of
/// factors): a discoverable credential with user verification, none of the user's
/// passkeys again.
pub async fn registration_options(
    state: &AppState,
    session: &SessionRecord,
    ctx: &RequestContext,
) -> Result<serde_json::Value, AppError> {
    let wa = webauthn(state)?;
    second_factor::require_fresh(state, session, PAGE, false).await?;
    allowance(state, ctx).await?;
    let exclude: Vec<CredentialID> = state
        .store
        .passkeys(session.user_id)
        .await?
        .into_iter()
        .map(|p| CredentialID::from(p.credential_id))
        .collect();
    let (mut options, ceremony) = wa
        .start_passkey_registration(
            session.user_id.0,
            &session.email,
            &session.email,
            Some(exclude),
        )
        .map_err(unexpected)?;
    // Sign-in with a passkey names no account first: the credential must live on
    // the authenticator (a discoverable credential).
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    begin(
        state,
        "register",
        Some(session.user_id),
        Some(session.id),
        None,
        &ceremony,
        &options,
    )
    .await
}

/// Adds the passkey the browser made (a second-factor change: the other sessions
/// end and this one gets a new cookie token); returns its name and that token.
pub async fn finish_registration(
    state: &AppState,
    session: &SessionRecord,
    ceremony_id: &str,
    name: &str,
    credential: &RegisterPublicKeyCredential,
    ctx: &RequestContext,
) -> Result<(String, SessionToken), AppError> {
    let wa = webauthn(state)?;
    let name = clean_name(name)?;
    // The ceremony first: an answer given once is spent, whatever else is wrong.
    let (record, ceremony): (_, PasskeyRegistration) = take(state, ceremony_id, "register").await?;
    if record.session_id != Some(session.id.0) {
        return Err(AppError::Validation(EXPIRED.into()));
    }
    second_factor::require_fresh(state, session, PAGE, false).await?;
    let passkey = wa
        .finish_passkey_registration(credential, &ceremony)
        .map_err(|e| refused(state, "register", &e))?;
    // Credential ids are random and at most 1023 bytes (WebAuthn L3 §5.8.3); one
    // outside that is refused before anything is written.
    if !(16..=1023).contains(&passkey.cred_id().len()) {
        counted(state, "register", "refused");
        return Err(AppError::Validation(INVALID.into()));
    }
    let stored = serde_json::to_string(&passkey).map_err(unexpected)?;
    let f = flags(&stored)?;
    let now = state.clock.now();
    let new = NewPasskey {
        id: Uuid::new_v4(),
        user_id: session.user_id,
        credential_id: passkey.cred_id().to_vec(),
        name: name.clone(),
        credential: stored,
        sign_count: i64::from(f.counter),
        backup_eligible: f.backup_eligible,
        backup_state: f.backup_state,
        now,
    };
    let added = event(state, "passkey_added", Some(ctx))?;
    let mail = messages::passkey_added(&state.settings, &session.email, &name);
    let (keep, token) = crate::auth::mfa::keep_this(state, session, "passkey added", ctx)?;
    match state.store.add_passkey(&new, &added, &keep, &[mail]).await {
        Ok(true) => {}
        // Signed out (or disabled) while the browser made the key: nothing added.
        Ok(false) => return Err(AppError::Unauthorized),
        Err(StoreError::Conflict) => {
            counted(state, "register", "conflict");
            return Err(AppError::Conflict(
                "This passkey is registered already.".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    counted(state, "register", "done");
    tracing::info!(user_id = %session.user_id, "passkey added");
    Ok((name, token))
}

/// The user's passkeys, for their page.
pub async fn list(state: &AppState, user_id: UserId) -> Result<Vec<PasskeyRecord>, AppError> {
    Ok(state.store.passkeys(user_id).await?)
}

/// Renames one of the user's passkeys (after a recent second factor).
pub async fn rename(
    state: &AppState,
    session: &SessionRecord,
    id: Uuid,
    name: &str,
) -> Result<String, AppError> {
    second_factor::require_fresh(state, session, PAGE, false).await?;
    let name = clean_name(name)?;
    if !state
        .store
        .rename_passkey(session.user_id, id, &name)
        .await?
    {
        return Err(AppError::NotFound);
    }
    Ok(name)
}

/// Removes one of the user's passkeys (after a recent second factor); mails a notice.
/// A second-factor change: the other sessions end and this one gets a new cookie
/// token; returns the passkey's name and that token.
pub async fn remove(
    state: &AppState,
    session: &SessionRecord,
    id: Uuid,
    ctx: &RequestContext,
) -> Result<(String, SessionToken), AppError> {
    second_factor::require_fresh(state, session, PAGE, false).await?;
    let Some(record) = state
        .store
        .passkeys(session.user_id)
        .await?
        .into_iter()
        .find(|p| p.id == id)
    else {
        return Err(AppError::NotFound);
    };
    let removed = event(state, "passkey_removed", Some(ctx))?;
    let mail = messages::passkey_removed(&state.settings, &session.email, &record.name);
    let (keep, token) = crate::auth::mfa::keep_this(state, session, "passkey removed", ctx)?;
    if !state
        .store
        .remove_passkey(session.user_id, id, &removed, &keep, &[mail])
        .await?
    {
        return Err(AppError::NotFound);
    }
    tracing::info!(user_id = %session.user_id, "passkey removed");
    Ok((record.name, token))
}
