//! The messages Gatehouse sends, rendered as text and HTML from one pair of
//! templates. Links are built from `GATEHOUSE_PUBLIC_URL` only, never from the
//! request's `Host` or `X-Forwarded-Host` (ZITADEL CVE-2023-49097).

use askama::Template;

use crate::domain::OutboundMail;
use crate::settings::Settings;

#[derive(Template)]
#[template(path = "email/message.txt")]
struct Text<'a> {
    greeting: &'a str,
    paragraphs: &'a [String],
    action: Option<(&'a str, &'a str)>,
    also: Option<(&'a str, &'a str)>,
    after: &'a [String],
    site: &'a str,
}

#[derive(Template)]
#[template(path = "email/message.html")]
struct Html<'a> {
    subject: &'a str,
    greeting: &'a str,
    paragraphs: &'a [String],
    action: Option<(&'a str, &'a str)>,
    also: Option<(&'a str, &'a str)>,
    after: &'a [String],
    site: &'a str,
}

struct Draft {
    subject: String,
    paragraphs: Vec<String>,
    action: Option<(String, String)>,
    /// A second, plainer link under the main one (e.g. "This wasn't me").
    also: Option<(String, String)>,
    after: Vec<String>,
}

fn render(settings: &Settings, to: &str, d: Draft) -> OutboundMail {
    let site = settings.issuer();
    let action = d.action.as_ref().map(|(l, u)| (l.as_str(), u.as_str()));
    let also = d.also.as_ref().map(|(l, u)| (l.as_str(), u.as_str()));
    let greeting = "Hello,";
    let text = Text {
        greeting,
        paragraphs: &d.paragraphs,
        action,
        also,
        after: &d.after,
        site: &site,
    }
    .render()
    .unwrap_or_default();
    let html = Html {
        subject: &d.subject,
        greeting,
        paragraphs: &d.paragraphs,
        action,
        also,
        after: &d.after,
        site: &site,
    }
    .render()
    .unwrap_or_default();
    OutboundMail {
        to: to.to_string(),
        subject: d.subject,
        text,
        html,
    }
}

/// `{public_url}{path}?token=…`
pub fn link(settings: &Settings, path: &str, token: &str) -> String {
    format!("{}{path}?token={token}", settings.issuer())
}

const NOT_YOU: &str =
    "If this wasn't you, you can ignore this message; nothing changes unless the link is used.";

pub fn verify_email(settings: &Settings, to: &str, token: &str) -> OutboundMail {
    render(settings, to, Draft {
        subject: "Confirm your e-mail address".into(),
        paragraphs: vec!["Someone (hopefully you) created a Gatehouse account with this address. Confirm it to finish signing up. The link works once, for 24 hours.".into()],
        action: Some(("Confirm my address".into(), link(settings, "/verify-email", token))),
        also: None,
        after: vec![NOT_YOU.into()],
    })
}

/// The confirmation mail of an account made by a sign-in with an upstream whose
/// word on the address was not enough: the mailbox's owner learns how it was made,
/// and that doing nothing keeps the account from being theirs.
pub fn verify_upstream_email(
    settings: &Settings,
    to: &str,
    token: &str,
    label: &str,
) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "Confirm your e-mail address".into(),
            paragraphs: vec![format!(
                "A Gatehouse account with this address was made by a sign-in with {label}. If that was you, confirm the address to finish. The link works once, for 24 hours."
            )],
            action: Some((
                "Confirm my address".into(),
                link(settings, "/verify-email", token),
            )),
            also: None,
            after: vec![format!(
                "If you did not sign in with {label}, ignore this message: do not confirm, and nothing is yours to lose. Someone may be using an account at {label} that claims this address."
            )],
        },
    )
}

pub fn account_exists(settings: &Settings, to: &str) -> OutboundMail {
    render(settings, to, Draft {
        subject: "Someone tried to sign up with your address".into(),
        paragraphs: vec!["Someone tried to create a Gatehouse account with this address, but you already have one. No new account was created.".into()],
        action: Some(("Forgot your password? Reset it".into(), format!("{}/password/forgot", settings.issuer()))),
        also: None,
        after: vec!["If this wasn't you, no action is needed: your account is unchanged.".into()],
    })
}

pub fn password_reset(settings: &Settings, to: &str, token: &str) -> OutboundMail {
    render(settings, to, Draft {
        subject: "Reset your password".into(),
        paragraphs: vec!["Someone asked to reset the password of your Gatehouse account. The link works once, for 30 minutes. Setting a new password signs you out everywhere.".into()],
        action: Some(("Choose a new password".into(), link(settings, "/password/reset", token))),
        also: None,
        after: vec![NOT_YOU.into()],
    })
}

pub fn password_changed(settings: &Settings, to: &str) -> OutboundMail {
    render(settings, to, Draft {
        subject: "Your password was changed".into(),
        paragraphs: vec!["The password of your Gatehouse account was just changed, and every session was signed out.".into()],
        action: None,
        also: None,
        after: vec!["If this wasn't you, reset your password at once and check your signed-in devices.".into()],
    })
}

pub fn confirm_new_email(settings: &Settings, to: &str, token: &str) -> OutboundMail {
    render(settings, to, Draft {
        subject: "Confirm your new e-mail address".into(),
        paragraphs: vec!["Confirm that this address should become the e-mail address of your Gatehouse account. The change happens only when you use the link, which works once, for 24 hours.".into()],
        action: Some(("Use this address".into(), link(settings, "/account/email/confirm", token))),
        also: None,
        after: vec![NOT_YOU.into()],
    })
}

pub fn email_change_requested(settings: &Settings, to: &str, new_address: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "A change of your e-mail address was requested".into(),
            paragraphs: vec![format!(
                "Someone signed in to your Gatehouse account asked to change its e-mail address to {new_address}. It changes only if that address confirms."
            )],
            action: None,
            also: None,
            after: vec![
                "If this wasn't you, change your password and sign out your other devices.".into(),
            ],
        },
    )
}

pub fn email_changed(settings: &Settings, to: &str, new_address: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "Your e-mail address was changed".into(),
            paragraphs: vec![format!(
                "The e-mail address of your Gatehouse account is now {new_address}. Mail about the account goes there from now on."
            )],
            action: None,
            also: None,
            after: vec!["If this wasn't you, contact your administrator at once.".into()],
        },
    )
}

/// A sign-in from a browser this account had never used (DESIGN.md "Devices and
/// context"). Names the device, the place, the address and the time; the way to act
/// is the device list, where one click signs that browser out.
/// Where and how a sign-in happened, as a notice describes it.
pub struct SignInFacts<'a> {
    pub device: &'a str,
    pub place: &'a str,
    pub ip: &'a str,
    pub when: &'a str,
}

pub fn new_device(
    settings: &Settings,
    to: &str,
    facts: &SignInFacts<'_>,
    not_me_token: &str,
) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "New sign-in to your account".into(),
            paragraphs: vec![
                "Your Gatehouse account was just signed in to from a device it had not been used on before:".into(),
                format!("Device: {}", facts.device),
                format!("Place: {} (address {})", facts.place, facts.ip),
                format!("Time: {}", facts.when),
            ],
            action: Some((
                "Review your devices".into(),
                format!("{}/account/devices", settings.issuer()),
            )),
            also: Some((
                "This wasn't me: sign that device out".into(),
                link(settings, "/not-me", not_me_token),
            )),
            after: vec![
                "If this was you, there is nothing to do. If it wasn't, the link above signs that device out at once (it works once, for 7 days); then change your password.".into(),
            ],
        },
    )
}

/// The contextual checks blocked a sign-in made with the right password.
pub fn sign_in_blocked(
    settings: &Settings,
    to: &str,
    facts: &SignInFacts<'_>,
    reasons: &str,
) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "We blocked a sign-in to your account".into(),
            paragraphs: vec![
                "Someone signed in to your Gatehouse account with the right password, and we blocked it because it looked unusual:".into(),
                format!("Why: {reasons}"),
                format!("Device: {}", facts.device),
                format!("Place: {} (address {})", facts.place, facts.ip),
                format!("Time: {}", facts.when),
            ],
            action: Some((
                "Change your password".into(),
                format!("{}/password/forgot", settings.issuer()),
            )),
            also: None,
            after: vec![
                "If this wasn't you, your password is known to someone else: change it now. If it was you, try again later from your usual network.".into(),
            ],
        },
    )
}

/// A session is flagged after it began: used from another country than its sign-in,
/// signed in while another country had a live session, or used without its device key.
pub fn session_flagged(settings: &Settings, to: &str, what: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "Unusual activity on your account".into(),
            paragraphs: vec![
                "Something unusual happened with your Gatehouse account:".into(),
                what.to_string(),
                "The sessions concerned are marked on your device list.".into(),
            ],
            action: Some((
                "Review your devices".into(),
                format!("{}/account/devices", settings.issuer()),
            )),
            also: None,
            after: vec![
                "If you are travelling, there is nothing to do. If not, sign out the devices you don't recognise and change your password.".into(),
            ],
        },
    )
}

/// A six-digit code for a sign-in or a step-up. The code is in the mail only: never in
/// a page, a response or a log.
pub fn one_time_code(settings: &Settings, to: &str, code: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            // Not in the subject: subjects are stored and logged in the clear.
            subject: "Your one-time Gatehouse code".into(),
            paragraphs: vec![
                format!("Your one-time code is {code}."),
                "Type it on the page that asked for it. It works once, for 10 minutes; asking for a new code makes this one stop working.".into(),
            ],
            action: None,
            also: None,
            after: vec![
                "If you did not just try to sign in, someone knows your password: change it now, and sign out the devices you do not recognise.".into(),
            ],
        },
    )
}

pub fn totp_enabled(settings: &Settings, to: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "Two-step verification is on".into(),
            paragraphs: vec![
                "An authenticator app was just set up for your Gatehouse account. From now on, signing in asks for a code from it. Your other devices were signed out.".into(),
            ],
            action: Some((
                "Review your account".into(),
                format!("{}/account/mfa", settings.issuer()),
            )),
            also: None,
            after: vec!["If this wasn't you, reset your password at once.".into()],
        },
    )
}

pub fn totp_removed(settings: &Settings, to: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "Two-step verification was turned off".into(),
            paragraphs: vec![
                "The authenticator app and the recovery codes of your Gatehouse account were just removed. Signing in now asks only for your password. Your other devices were signed out.".into(),
            ],
            action: Some((
                "Set it up again".into(),
                format!("{}/account/mfa", settings.issuer()),
            )),
            also: None,
            after: vec!["If this wasn't you, reset your password at once.".into()],
        },
    )
}

pub fn recovery_codes_regenerated(settings: &Settings, to: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "New recovery codes were made".into(),
            paragraphs: vec![
                "A new set of ten recovery codes was just made for your Gatehouse account. The old codes no longer work.".into(),
            ],
            action: None,
            also: None,
            after: vec!["If this wasn't you, reset your password at once.".into()],
        },
    )
}

pub fn recovery_code_used(settings: &Settings, to: &str, left: i64) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "A recovery code was used".into(),
            paragraphs: vec![
                format!(
                    "One of the recovery codes of your Gatehouse account was just used. {left} of ten are left; each works once."
                ),
                "If you lost your authenticator, set it up again and make new recovery codes."
                    .into(),
            ],
            action: Some((
                "Manage two-step verification".into(),
                format!("{}/account/mfa", settings.issuer()),
            )),
            also: None,
            after: vec![
                "If this wasn't you, reset your password at once and check your devices.".into(),
            ],
        },
    )
}

pub fn password_changed_signed_in(settings: &Settings, to: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "Your password was changed".into(),
            paragraphs: vec![
                "The password of your Gatehouse account was just changed from a signed-in browser. Every other device was signed out.".into(),
            ],
            action: None,
            also: None,
            after: vec![
                "If this wasn't you, reset your password at once with \"Forgot your password?\" on the sign-in page.".into(),
            ],
        },
    )
}

/// A passkey was added (`name` is the person's own label for it).
pub fn passkey_added(settings: &Settings, to: &str, name: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "A passkey was added to your account".into(),
            paragraphs: vec![format!(
                "A passkey named “{name}” was just added to your Gatehouse account. It signs in without a password or a code."
            )],
            action: Some((
                "See your passkeys".into(),
                format!("{}/account/passkeys", settings.issuer()),
            )),
            also: None,
            after: vec![
                "If this wasn't you, remove the passkey, change your password and sign out everywhere at once.".into(),
            ],
        },
    )
}

/// A passkey was removed.
pub fn passkey_removed(settings: &Settings, to: &str, name: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "A passkey was removed from your account".into(),
            paragraphs: vec![format!(
                "The passkey named “{name}” was just removed from your Gatehouse account. It no longer signs in."
            )],
            action: Some((
                "See your passkeys".into(),
                format!("{}/account/passkeys", settings.issuer()),
            )),
            also: None,
            after: vec!["If this wasn't you, reset your password at once.".into()],
        },
    )
}

/// A passkey answered with a sign counter lower than before: it may have been copied.
pub fn passkey_clone_suspected(settings: &Settings, to: &str, name: &str) -> OutboundMail {
    render(
        settings,
        to,
        Draft {
            subject: "One of your passkeys may have been copied".into(),
            paragraphs: vec![
                format!(
                    "The passkey named “{name}” was just used with a sign counter lower than the last time. That happens when a copy of the passkey is used somewhere else."
                ),
                "So it signs nothing in any more, and the sessions it signed in must confirm it's you again.".into(),
            ],
            action: Some((
                "Review your passkeys".into(),
                format!("{}/account/passkeys", settings.issuer()),
            )),
            also: None,
            after: vec![
                "Remove that passkey and add it again from your device. If you don't recognise this, change your password and sign out everywhere.".into(),
            ],
        },
    )
}
