//! The account's security history (`/account/activity`): its events, newest first,
//! a page at a time, with their sealed fields opened for their owner.

use time::OffsetDateTime;
use uuid::Uuid;

use super::describe;
use crate::crypto::columns;
use crate::domain::{Agent, Location, UserId};
use crate::error::AppError;
use crate::state::AppState;

/// Events per page.
pub const PAGE_SIZE: i64 = 25;

#[derive(Clone, Debug)]
pub struct ActivityRow {
    pub id: Uuid,
    pub title: &'static str,
    pub at: OffsetDateTime,
    /// "Firefox on Linux", when the event came from a browser.
    pub device: Option<String>,
    pub place: Option<String>,
    pub ip: Option<String>,
    /// Who did it: "you", "an administrator", "Gatehouse" (`None`: not said, e.g.
    /// a failed sign-in, which is usually someone else).
    pub by: Option<&'static str>,
    /// e.g. why a session ended.
    pub detail: Option<String>,
}

pub struct ActivityPage {
    pub rows: Vec<ActivityRow>,
    /// The cursor of the next (older) page, if there is one.
    pub older: Option<Uuid>,
}

/// One page of the user's events, after the event `before`. A cursor that is
/// malformed or not this user's is `NotFound`.
pub async fn page(
    state: &AppState,
    user_id: UserId,
    before: Option<&str>,
) -> Result<ActivityPage, AppError> {
    let before = match before {
        None | Some("") => None,
        Some(raw) => Some(Uuid::try_parse(raw).map_err(|_| AppError::NotFound)?),
    };
    // One more than shown tells whether an older page exists.
    let mut events = state
        .store
        .events_page(user_id, before, PAGE_SIZE + 1)
        .await?
        .ok_or(AppError::NotFound)?;
    let more = events.len() > PAGE_SIZE as usize;
    events.truncate(PAGE_SIZE as usize);
    let open = |context: &str, sealed: Option<&Vec<u8>>| -> Option<Vec<u8>> {
        state.keys.open(context, sealed?).ok()
    };
    let rows: Vec<ActivityRow> = events
        .iter()
        .map(|e| {
            let ua = open(columns::EVENT_USER_AGENT, e.user_agent_enc.as_ref())
                .and_then(|p| String::from_utf8(p).ok());
            let ip =
                open(columns::EVENT_IP, e.ip_enc.as_ref()).and_then(|p| String::from_utf8(p).ok());
            let place = open(columns::EVENT_LOCATION, e.location_enc.as_ref())
                .and_then(|p| serde_json::from_slice::<Location>(&p).ok())
                .map(|l| l.place())
                .or_else(|| ip.as_ref().map(|_| Location::default().place()));
            ActivityRow {
                id: e.id,
                title: describe::event_title(&e.kind),
                at: e.at,
                device: ip.as_ref().map(|_| Agent::parse(ua.as_deref()).label),
                place,
                ip,
                by: (e.kind != "sign_in_failed").then(|| describe::actor(&e.actor)),
                detail: e.detail.clone(),
            }
        })
        .collect();
    let older = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(ActivityPage { rows, older })
}
