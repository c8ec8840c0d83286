//! Proving a passkey: sign-in (no account named first), a second factor after a
//! password, and a step-up of a live session.

use super::*;

/// Options for signing in with a passkey: no account named (the authenticator offers
/// its discoverable credentials). `conditional`: for the browser's autofill.
pub async fn sign_in_options(
    state: &AppState,
    ctx: &RequestContext,
    conditional: bool,
) -> Result<serde_json::Value, AppError> {
    let wa = webauthn(state)?;
    allowance(state, ctx).await?;
    let (mut options, ceremony) = wa.start_discoverable_authentication().map_err(unexpected)?;
    if !conditional {
        options.mediation = None;
    }
    begin(state, "sign_in", None, None, None, &ceremony, &options).await
}

/// What a passkey sign-in asks for besides the assertion.
pub struct PasskeySignIn<'a> {
    pub ceremony: &'a str,
    pub credential: &'a PublicKeyCredential,
    pub remember_me: bool,
    pub return_to: Option<String>,
    /// The browser's earlier session, replaced.
    pub replaces: Option<SessionId>,
}

/// Signs in with a passkey: the credential names its account; the contextual checks
/// weigh the sign-in like any other (a passkey is the second factor they may ask
/// for; a denial is a denial).
pub async fn finish_sign_in(
    state: &AppState,
    req: PasskeySignIn<'_>,
    ctx: &RequestContext,
) -> Result<NewBrowserSession, AppError> {
    let wa = webauthn(state)?;
    let what = "sign_in";
    let (_, ceremony): (_, DiscoverableAuthentication) = take(state, req.ceremony, what).await?;
    let (handle, credential_id) = wa
        .identify_discoverable_authentication(req.credential)
        .map_err(|e| refused(state, what, &e))?;
    // The credential's account, and the account the authenticator says it is for,
    // must be one: another account's credential never signs in (checklist P4).
    let found = state
        .store
        .passkey_by_credential(credential_id)
        .await?
        .filter(|o| o.passkey.user_id == handle && !o.disabled);
    let Some(owner) = found else {
        counted(state, what, "unknown");
        return Err(AppError::Validation(UNKNOWN.into()));
    };
    if owner.passkey.clone_suspected_at.is_some() {
        counted(state, what, "suspended");
        return Err(AppError::Forbidden(SUSPENDED.into()));
    }
    let passkey = stored_passkey(&owner.passkey)?;
    let result = match wa.finish_discoverable_authentication_v2(req.credential, ceremony, &passkey)
    {
        Ok(r) => r,
        Err(WebauthnError::CredentialPossibleCompromise) => {
            counted(state, what, "clone");
            return Err(clone_suspected(state, &owner.passkey, &owner.email, None, ctx).await?);
        }
        Err(e) => return Err(refused(state, what, &e)),
    };
    let user = UserRecord {
        id: UserId(owner.passkey.user_id),
        email: owner.email.clone(),
        password_hash: None,
        disabled: owner.disabled,
        verified: owner.verified,
    };
    if state.settings.require_verified_email && !user.verified {
        counted(state, what, "unverified");
        return Err(AppError::Forbidden(
            "Confirm your e-mail address first: follow the link we sent you, then sign in.".into(),
        ));
    }
    // Weighed like a password sign-in: the address's failures count; this
    // assertion is no failure of its own.
    let assessment = risk::assess_sign_in(state, &user, ctx, None).await?;
    if assessment.decision == Decision::Deny {
        sign_in::risk_denial(state, &user, None, ctx, &assessment).await?;
        state.metrics.sign_ins.with_label_values(&["denied"]).inc();
        return Err(AppError::Forbidden(sign_in::DENIED.into()));
    }
    let used = passkey_use(state, &owner.passkey, passkey, &result)?;
    // What the checks would have asked a code for, the passkey proved: the session
    // is born flagged with their reasons, and proven.
    let (weighed, risk_flag) = if assessment.decision == Decision::SecondFactor {
        let flag = assessment
            .flag()
            .map(|(names, wording)| {
                risk::seal_flag(state, columns::SESSION_RISK_REASON, names, &wording)
            })
            .transpose()?;
        (Weighed::Flagged(assessment.summary()), flag)
    } else {
        (Weighed::Usual, None)
    };
    let amr = methods(&result);
    let made = sign_in::make(
        state,
        user.id,
        &user.email,
        ctx,
        Proven {
            via: Via::Passkey,
            amr: &amr,
            remember_me: req.remember_me,
            return_to: req.return_to.as_deref(),
            replaces: req.replaces,
            weighed,
            risk_flag,
            upstream: None,
        },
    )
    .await?;
    if !state.store.passkey_signed_in(&used, &made.sign_in).await? {
        counted(state, what, "raced");
        return Err(AppError::Conflict(RACED.into()));
    }
    counted(state, what, "done");
    sign_in::succeeded(state, user.id, "passkey");
    Ok(made.browser)
}

/// Options for finishing a half-finished sign-in with one of the user's passkeys.
pub async fn second_factor_options(
    state: &AppState,
    ch: &ChallengeRecord,
    ctx: &RequestContext,
) -> Result<serde_json::Value, AppError> {
    own_passkey_options(state, ctx, "second_factor", ch.user_id, None, Some(ch.id)).await
}

/// Options for a ceremony that names its account (second factor, step-up): only the
/// user's own passkeys that may still be used are allowed.
async fn own_passkey_options(
    state: &AppState,
    ctx: &RequestContext,
    purpose: &'static str,
    user_id: UserId,
    session_id: Option<SessionId>,
    challenge_id: Option<uuid::Uuid>,
) -> Result<serde_json::Value, AppError> {
    let wa = webauthn(state)?;
    allowance(state, ctx).await?;
    let keys: Vec<Passkey> = usable(state, user_id)
        .await?
        .iter()
        .map(stored_passkey)
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(AppError::Validation(
            "This account has no passkey to use. Enter a code instead.".into(),
        ));
    }
    let (options, ceremony) = wa.start_passkey_authentication(&keys).map_err(unexpected)?;
    begin(
        state,
        purpose,
        Some(user_id),
        session_id,
        challenge_id,
        &ceremony,
        &options,
    )
    .await
}

/// Finishes a half-finished sign-in with a passkey instead of a code.
pub async fn finish_second_factor(
    state: &AppState,
    ch: &ChallengeRecord,
    ceremony_id: &str,
    credential: &PublicKeyCredential,
    ctx: &RequestContext,
    replaces: Option<SessionId>,
    trust_browser: bool,
) -> Result<FinishedSignIn, AppError> {
    let what = "second_factor";
    let (record, ceremony): (_, PasskeyAuthentication) = take(state, ceremony_id, what).await?;
    if record.challenge_id != Some(ch.id) {
        return Err(AppError::Validation(EXPIRED.into()));
    }
    let who = Claimant {
        user_id: ch.user_id,
        email: &ch.email,
        current: None,
    };
    let (used, methods) = verify_own(state, who, credential, &ceremony, ctx, what).await?;
    let finished = second_factor::finish_sign_in_with_passkey(
        state,
        ch,
        used,
        &methods,
        ctx,
        replaces,
        trust_browser,
    )
    .await?
    .ok_or_else(|| AppError::Conflict(RACED.into()))?;
    counted(state, what, "done");
    Ok(finished)
}

/// Options for confirming it's you with one of the session's user's passkeys.
pub async fn step_up_options(
    state: &AppState,
    session: &SessionRecord,
    ctx: &RequestContext,
) -> Result<serde_json::Value, AppError> {
    own_passkey_options(
        state,
        ctx,
        "step_up",
        session.user_id,
        Some(session.id),
        None,
    )
    .await
}

/// Raises the session with a passkey; its new cookie token.
pub async fn finish_step_up(
    state: &AppState,
    session: &SessionRecord,
    ceremony_id: &str,
    credential: &PublicKeyCredential,
    ctx: &RequestContext,
) -> Result<SessionToken, AppError> {
    let what = "step_up";
    let (record, ceremony): (_, PasskeyAuthentication) = take(state, ceremony_id, what).await?;
    if record.session_id != Some(session.id.0) {
        return Err(AppError::Validation(EXPIRED.into()));
    }
    let who = Claimant {
        user_id: session.user_id,
        email: &session.email,
        current: Some(session.id),
    };
    let (used, methods) = verify_own(state, who, credential, &ceremony, ctx, what).await?;
    let token = second_factor::step_up_with_passkey(state, session, used, methods, ctx)
        .await?
        .ok_or_else(|| AppError::Conflict(RACED.into()))?;
    counted(state, what, "done");
    Ok(token)
}
