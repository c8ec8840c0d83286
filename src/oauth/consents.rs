//! The apps a person has allowed, as their account page lists them, and withdrawing
//! that permission (checklist O10): the consent goes and so do the app's tokens.

use crate::auth::describe::when;
use crate::domain::UserId;
use crate::error::AppError;
use crate::state::AppState;

use super::authorize::describe_scope;

/// One allowed app, worded for the page.
pub struct AllowedApp {
    pub client_id: String,
    pub name: String,
    pub permissions: Vec<&'static str>,
    pub since: String,
}

pub async fn allowed_apps(state: &AppState, user: UserId) -> Result<Vec<AllowedApp>, AppError> {
    let rows = state.store.consents(user).await?;
    let mut out: Vec<AllowedApp> = Vec::new();
    for r in rows {
        let perms: Vec<&'static str> = r
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(describe_scope)
            .collect();
        match out.iter_mut().find(|a| a.client_id == r.client_id) {
            Some(a) => {
                for p in perms {
                    if !a.permissions.contains(&p) {
                        a.permissions.push(p);
                    }
                }
            }
            None => out.push(AllowedApp {
                client_id: r.client_id,
                name: r.client_name,
                permissions: perms,
                since: when(r.granted_at),
            }),
        }
    }
    Ok(out)
}

/// Withdraws every consent the user gave `client_id` and revokes its grants.
pub async fn withdraw(state: &AppState, user: UserId, client_id: &str) -> Result<bool, AppError> {
    let done = state
        .store
        .withdraw_consent(user, client_id, state.clock.now())
        .await?;
    if done {
        tracing::info!(user_id = %user.0, client_id, "consent withdrawn");
    }
    Ok(done)
}
