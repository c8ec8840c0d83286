//! The tests' own second-factor toolkit, independent of the server's code path: an
//! RFC 6238 TOTP implementation (checked against the RFC's test vectors), a base32
//! decoder, a QR decoder over the rendered SVG, and helpers that enrol and step up
//! through the pages as a person would.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::helpers::{Browser, Resp, TestApp};

/// RFC 4648 base32 (no padding), as authenticator apps read it.
pub fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("base32 character") as u64;
        bits = (bits << 5) | v;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// RFC 4226 HOTP with HMAC-SHA-1, `digits` long (RFC 6238 §4: T = floor(t / 30)).
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[offset]) & 0x7f) << 24
        | u32::from(h[offset + 1]) << 16
        | u32::from(h[offset + 2]) << 8
        | u32::from(h[offset + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

/// The six-digit TOTP code for unix time `t`.
pub fn totp(secret: &[u8], t: i64) -> String {
    hotp(secret, (t / 30) as u64, 6)
}

#[test]
fn rfc6238_test_vectors_hold_for_the_tests_own_totp() {
    // RFC 6238 Appendix B, SHA-1 column (8 digits), seed "12345678901234567890".
    let seed = b"12345678901234567890";
    for (t, expected) in [
        (59u64, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ] {
        assert_eq!(hotp(seed, t / 30, 8), expected, "T = {t}");
    }
    // Six digits are the same value modulo 10^6.
    assert_eq!(totp(seed, 59), "287082");
    // RFC 4648 §10 test vectors.
    assert_eq!(base32_decode("MZXW6YTB"), b"fooba");
    assert_eq!(base32_decode("MZXW6YTBOI======"), b"foobar");
}

/// Decodes the first QR code in an SVG as a phone's scanner would see it: rendered
/// to pixels (resvg), then read by an independent QR decoder (rqrr).
pub fn decode_qr_svg(svg: &str) -> String {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_str(svg, &usvg::Options::default()).expect("the SVG parses");
    let size = tree.size().to_int_size();
    // Scaled up, as a camera would see it larger than the page's pixels.
    let scale = 3.0;
    let (w, h) = (
        (size.width() as f32 * scale) as u32,
        (size.height() as f32 * scale) as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(w, h).expect("pixmap");
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    let px = pixmap.pixels();
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w as usize, h as usize, |x, y| {
        let p = px[y * w as usize + x];
        ((u16::from(p.red()) + u16::from(p.green()) + u16::from(p.blue())) / 3) as u8
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().expect("the QR code decodes").1
}

/// The text between `start` and the next `end` in `body`.
pub fn between<'a>(body: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = body.find(start)? + start.len();
    let j = body[i..].find(end)?;
    Some(&body[i..i + j])
}

/// Undoes HTML escaping of the characters askama escapes.
pub fn unescape(s: &str) -> String {
    s.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#61;", "=")
        .replace("&#x3d;", "=")
        .replace("&#x2f;", "/")
        .replace("&#47;", "/")
        .replace("&#58;", ":")
        .replace("&#64;", "@")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// How many one-time-code mails `to` has received.
pub fn code_mails(app: &TestApp, to: &str) -> usize {
    app.mail
        .to(to)
        .iter()
        .filter(|m| m.subject() == "Your one-time Gatehouse code")
        .count()
}

/// Waits for the `n`-th code mail to `to` and returns its code.
pub async fn wait_code(app: &TestApp, to: &str, n: usize) -> String {
    for _ in 0..100 {
        if code_mails(app, to) >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(code_mails(app, to) >= n, "{to} did not get code mail #{n}");
    let mails: Vec<_> = app
        .mail
        .to(to)
        .into_iter()
        .filter(|m| m.subject() == "Your one-time Gatehouse code")
        .collect();
    between(&mails[n - 1].text(), "Your one-time code is ", ".")
        .expect("the mail has a code")
        .to_string()
}

/// Steps a signed-in browser up by an e-mailed code (the way for a user without an
/// authenticator app); returns the final answer (303 back to `return_to`).
pub async fn step_up_by_email(app: &TestApp, b: &Browser, email: &str, return_to: &str) -> Resp {
    let page = b
        .get(&format!(
            "/step-up?return_to={}",
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let before = code_mails(app, email);
    let sent = b
        .post_form(
            "/step-up",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "email"),
                ("return_to", return_to),
            ],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let code = wait_code(app, email, before + 1).await;
    let r = b
        .post_form(
            "/step-up",
            &[
                ("csrf_token", &sent.csrf()),
                ("code", &code),
                ("return_to", return_to),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "step-up: {}", r.body);
    r
}

/// What an enrolment gave the person.
pub struct Enrolled {
    pub secret: Vec<u8>,
    pub secret_b32: String,
    pub recovery_codes: Vec<String>,
}

/// Turns on TOTP for a signed-in browser through the pages: step-up by e-mail, start,
/// read the key off the page, confirm with a code computed here. The code used is the
/// one for the server's current time step.
pub async fn enrol(app: &TestApp, b: &Browser, email: &str) -> Enrolled {
    step_up_by_email(app, b, email, "/account/mfa").await;
    let page = b.get("/account/mfa").await;
    let r = b
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "start")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = b.get("/account/mfa").await;
    assert_eq!(page.status, 200);
    let secret_b32 = between(&page.body, r#"<code class="secret">"#, "</code>")
        .expect("the key is shown")
        .replace(' ', "");
    let secret = base32_decode(&secret_b32);
    let code = totp(&secret, app.clock.now().unix_timestamp());
    let done = b
        .post_form(
            "/account/mfa",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "confirm"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let recovery_codes = recovery_codes_on(&done.body);
    assert_eq!(recovery_codes.len(), 10, "{}", done.body);
    Enrolled {
        secret,
        secret_b32,
        recovery_codes,
    }
}

/// The recovery codes a page shows.
pub fn recovery_codes_on(body: &str) -> Vec<String> {
    let Some(list) = between(body, r#"<ol class="codes">"#, "</ol>") else {
        return Vec::new();
    };
    list.split("<code>")
        .skip(1)
        .filter_map(|s| s.split("</code>").next())
        .map(str::to_string)
        .collect()
}

/// The password step of a sign-in for a user with a second factor: the browser ends
/// at `/login/verify` holding only the pending cookie. Returns the verify page.
pub async fn password_step(app: &TestApp, b: &Browser, email: &str) -> Resp {
    let r = app.login(b, email, crate::helpers::PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/login/verify");
    let page = b.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);
    page
}

pub fn pending_cookie_name(app: &TestApp) -> &'static str {
    if app.settings.insecure_cookies() {
        "gatehouse_pending"
    } else {
        "__Host-gatehouse_pending"
    }
}

/// Signs in with the password and, when the contextual checks ask for a code (a new
/// device far from the account's last place, say), finishes with the e-mailed one.
/// Returns the last answer (303 to the signed-in page).
pub async fn login_completing_code(app: &TestApp, b: &Browser, email: &str) -> Resp {
    let before = code_mails(app, email);
    let r = app.login(b, email, crate::helpers::PASSWORD).await;
    if r.status != 303 || r.location() != "/login/verify" {
        return r;
    }
    let page = b.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let code = wait_code(app, email, before + 1).await;
    b.post_form(
        "/login/verify",
        &[("csrf_token", &page.csrf()), ("code", &code)],
    )
    .await
}
