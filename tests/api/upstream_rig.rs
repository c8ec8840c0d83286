//! The rig for sign-in with another identity provider: a second, real Gatehouse as
//! the upstream OpenID provider (its own database, its own people, a client for the
//! downstream made with its own command line), upstreams registered on the downstream
//! with the real `gatehouse upstream add`, a visitor whose browser keeps one cookie
//! jar per site and drives the whole round trip step by step (so tests can tamper
//! between steps), and two stand-ins in the test process: a small OpenID provider
//! whose ID tokens, responses and logout tokens a test crafts, and GitHub's OAuth and
//! REST endpoints.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::helpers::{Browser, Options, PASSWORD, Resp, TestApp, spawn_app_with};
use crate::oauth_helpers::{Client, create_client};
use crate::otp::unescape;
pub use crate::upstream_github_stand_in::StandInGithub;
pub use crate::upstream_op::{
    IssParam, OpConfig, RsaKey, Signing, StandInOp, now, sign_hs256, unsigned,
};

/// The upstream's name on the downstream (part of its URIs) and what pages show.
pub const UP: &str = "up";
pub const LABEL: &str = "Upstream Gatehouse";

/// A downstream Gatehouse whose public URL is its real address (so the URIs it
/// registers at an upstream are reachable), in dev mode (plain-HTTP loopback issuers
/// are allowed there only).
pub async fn downstream() -> TestApp {
    downstream_with(Options::default()).await
}

pub async fn downstream_with(options: Options) -> TestApp {
    spawn_app_with(Options {
        issuer_is_address: true,
        ..options
    })
    .await
}

/// The URI the downstream receives the upstream's answer at.
pub fn redirect_uri(down: &TestApp, name: &str) -> String {
    format!("{}/login/upstream/{name}/callback", down.address)
}

/// The URI the downstream receives the upstream's logout tokens at.
pub fn backchannel_uri(down: &TestApp, name: &str) -> String {
    format!("{}/login/upstream/{name}/backchannel-logout", down.address)
}

/// Runs the `gatehouse` binary against `app`'s database with `stdin` as its input;
/// `env` on top of the app's own settings. Returns (success, stdout, stderr).
pub fn cli_with_input(
    app: &TestApp,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (bool, String, String) {
    let key = app.settings.secret_key.as_ref().expect("tests set a key");
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEHOUSE_DATABASE_URL", &app.db_url)
        .env("GATEHOUSE_PUBLIC_URL", &app.address)
        .env("GATEHOUSE_DEV", "true")
        .env(
            "GATEHOUSE_SMTP_URL",
            format!("smtp://127.0.0.1:{}", app.mail.port),
        )
        .env("GATEHOUSE_SECRET_KEY", STANDARD.encode(key.expose()))
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("the gatehouse binary runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("writing to gatehouse's stdin");
    let out = child.wait_with_output().expect("gatehouse ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gatehouse user create --email E [--verified]` on `app` with the test password.
pub fn create_user(app: &TestApp, email: &str, verified: bool) {
    let mut args = vec!["user", "create", "--email", email];
    if verified {
        args.push("--verified");
    }
    let (ok, _, err) = cli_with_input(app, &args, &[], &format!("{PASSWORD}\n"));
    assert!(ok, "user create {email}: {err}");
}

/// `gatehouse upstream add …` on the downstream, the client secret on stdin.
pub fn upstream_add(down: &TestApp, args: &[&str], secret: &str) -> (bool, String, String) {
    let mut all = vec!["upstream", "add"];
    all.extend_from_slice(args);
    cli_with_input(down, &all, &[], &format!("{secret}\n"))
}

/// Adds an upstream with `args` and waits until the downstream's sign-in page offers
/// it (a change reaches every node within 5 s).
pub async fn add_upstream(down: &TestApp, name: &str, args: &[&str], secret: &str) -> String {
    let mut all = vec!["--name", name];
    all.extend_from_slice(args);
    let (ok, out, err) = upstream_add(down, &all, secret);
    assert!(ok, "upstream add {all:?}: {err}");
    let action = format!("/login/upstream/{name}");
    let b = down.browser();
    for _ in 0..100 {
        let page = b.get("/login").await;
        if form_fields(&page.body, &action).is_some() {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sign-in page never offered {name}");
}

/// The second, real Gatehouse acting as the OpenID provider, with a first-party
/// confidential client for the downstream.
pub struct UpstreamGatehouse {
    pub app: TestApp,
    pub client: Client,
}

impl UpstreamGatehouse {
    /// Its issuer (its address).
    pub fn issuer(&self) -> String {
        self.app.address.clone()
    }

    /// A person on the upstream (made with its command line; `verified` says whether
    /// the upstream vouches for the address).
    pub fn person(&self, email: &str, verified: bool) {
        create_user(&self.app, email, verified);
    }

    /// The upstream's user id for `email` (its `sub`).
    pub async fn sub_of(&self, email: &str) -> String {
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&self.app.db)
            .await
            .expect("the upstream knows the person");
        id.to_string()
    }
}

/// Starts an upstream Gatehouse whose client for `down` is registered with the
/// downstream's redirect and back-channel logout URIs for upstream `name`.
pub async fn upstream_gatehouse(down: &TestApp, name: &str) -> UpstreamGatehouse {
    let app = spawn_app_with(Options {
        issuer_is_address: true,
        ..Options::default()
    })
    .await;
    let client = create_client(
        &app,
        &[
            "--first-party",
            "--redirect-uri",
            &redirect_uri(down, name),
            "--backchannel-logout-uri",
            &backchannel_uri(down, name),
        ],
    );
    UpstreamGatehouse { app, client }
}

/// A downstream with a real upstream Gatehouse registered as `UP` (label `LABEL`),
/// `flags` (`--trust-email`, say) on top.
pub struct Rig {
    pub down: TestApp,
    pub up: UpstreamGatehouse,
}

pub async fn rig(flags: &[&str]) -> Rig {
    rig_with(Options::default(), flags).await
}

pub async fn rig_with(options: Options, flags: &[&str]) -> Rig {
    let down = downstream_with(options).await;
    let up = upstream_gatehouse(&down, UP).await;
    let issuer = up.issuer();
    // `--client-id=…` in one word: a generated id may begin with `-`.
    let client_id = format!("--client-id={}", up.client.id);
    let mut args = vec![
        "--kind", "oidc", "--issuer", &issuer, &client_id, "--label", LABEL,
    ];
    args.extend_from_slice(flags);
    let secret = up.client.secret.clone().expect("a confidential client");
    add_upstream(&down, UP, &args, &secret).await;
    Rig { down, up }
}

/// A 4xx page and no session cookie: what every refused callback looks like.
pub fn assert_refused(r: &Resp, down: &TestApp) {
    assert!(
        (400..500).contains(&r.status),
        "a refusal is a 4xx page, got {} {} {}",
        r.status,
        r.location(),
        r.body
    );
    assert!(
        r.raw_set_cookie(down.session_cookie_name())
            .is_none_or(|c| c.contains("Max-Age=0")),
        "no session cookie on a refusal"
    );
}

/// What the downstream holds: people, links, sessions (live or not).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Counts {
    pub users: i64,
    pub identities: i64,
    pub sessions: i64,
}

pub async fn counts(app: &TestApp) -> Counts {
    Counts {
        users: app.count("SELECT count(*) FROM users").await,
        identities: app.count("SELECT count(*) FROM federated_identities").await,
        sessions: app.count("SELECT count(*) FROM sessions").await,
    }
}

/// The hidden fields (and a lone named button) of the form on `body` whose action is
/// `action`, unescaped; `None` when there is no such form.
pub fn form_fields(body: &str, action: &str) -> Option<Vec<(String, String)>> {
    let mut rest = body;
    while let Some(at) = rest.find("<form") {
        let form = &rest[at..];
        let end = form.find("</form>").unwrap_or(form.len());
        let form = &form[..end];
        rest = &rest[at + 5..];
        let tag = &form[..form.find('>').unwrap_or(form.len())];
        if attr(tag, "action").as_deref() != Some(action) {
            continue;
        }
        let mut fields = Vec::new();
        for input in form.split("<input").skip(1) {
            let tag = &input[..input.find('>').unwrap_or(input.len())];
            if attr(tag, "type").as_deref() == Some("hidden")
                && let Some(name) = attr(tag, "name")
            {
                fields.push((name, attr(tag, "value").unwrap_or_default()));
            }
        }
        for button in form.split("<button").skip(1) {
            let tag = &button[..button.find('>').unwrap_or(button.len())];
            if let (Some(name), Some(value)) = (attr(tag, "name"), attr(tag, "value")) {
                fields.push((name, value));
            }
        }
        return Some(fields);
    }
    None
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let marker = format!(" {name}=\"");
    let start = tag.find(&marker)? + marker.len();
    let end = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + end]))
}

/// The query parameters of an absolute or relative URL.
pub fn query_of(url: &str) -> HashMap<String, String> {
    let absolute = if url.starts_with('/') {
        format!("http://x{url}")
    } else {
        url.to_string()
    };
    url::Url::parse(&absolute)
        .unwrap_or_else(|_| panic!("not a URL: {url}"))
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `url` with its query parameter `name` set to `value` (removed when `None`).
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = url::Url::parse(url).unwrap_or_else(|_| panic!("not a URL: {url}"));
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

fn origin_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap_or_else(|_| panic!("not a URL: {url}"));
    u.origin().ascii_serialization()
}

/// One person at one browser: a cookie jar per site (as a browser keeps cookies per
/// host, and both servers here are on 127.0.0.1), no redirect following, the
/// downstream's extra headers (user agent, a proxy's `X-Forwarded-For`).
#[derive(Clone)]
pub struct Visitor {
    pub down: Browser,
    down_origin: String,
    sites: Arc<Mutex<HashMap<String, Browser>>>,
}

impl Visitor {
    pub fn new(down: &TestApp) -> Self {
        Self::from(down, down.browser())
    }

    /// A visitor whose downstream browser is `b` (one made by `browser_at`, say).
    pub fn from(down: &TestApp, b: Browser) -> Self {
        Self {
            down: b,
            down_origin: down.address.clone(),
            sites: Arc::default(),
        }
    }

    /// This browser at another site (its own cookies there).
    pub fn site(&self, origin: &str) -> Browser {
        if origin == self.down_origin {
            return self.down.clone();
        }
        self.sites
            .lock()
            .unwrap()
            .entry(origin.to_string())
            .or_insert_with(|| Browser::new(origin))
            .clone()
    }

    /// GET of an absolute URL (any site) or a path on the downstream.
    pub async fn open(&self, url: &str) -> Resp {
        if url.starts_with('/') {
            return self.down.get(url).await;
        }
        let origin = origin_of(url);
        let path = &url[origin.len()..];
        let path = if path.is_empty() { "/" } else { path };
        self.site(&origin).get(path).await
    }

    /// Follows a downstream answer's `Location`.
    pub async fn follow(&self, r: &Resp) -> Resp {
        assert!(
            (300..400).contains(&r.status),
            "not a redirect: {} {}",
            r.status,
            r.body
        );
        self.open(&r.location()).await
    }

    /// Presses "Continue with …" for upstream `name` on the downstream's sign-in
    /// page (`/login`, or `/login?return_to=…`): the page's own form, CSRF token and
    /// hidden fields. Returns the downstream's answer (a redirect to the upstream).
    pub async fn press(&self, login_page: &str, name: &str) -> Resp {
        let page = self.down.get(login_page).await;
        assert_eq!(page.status, 200, "{login_page}: {}", page.body);
        let action = format!("/login/upstream/{name}");
        let fields = form_fields(&page.body, &action)
            .unwrap_or_else(|| panic!("no {action} form on {login_page}: {}", page.body));
        let form: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.down.post_form(&action, &form).await
    }

    /// Starts a sign-in with upstream `name` from `/login`; returns the URL the
    /// downstream sends the browser to.
    pub async fn begin(&self, name: &str) -> String {
        let r = self.press("/login", name).await;
        assert_eq!(r.status, 303, "starting the upstream sign-in: {}", r.body);
        r.location()
    }

    /// From the upstream's authorization URL to the downstream's callback URL (not
    /// opened): through the upstream's sign-in page with `login` when it asks.
    pub async fn through_upstream(&self, authorize: &str, login: Option<(&str, &str)>) -> String {
        let mut url = authorize.to_string();
        for _ in 0..10 {
            if url.starts_with(&self.down_origin) || url.starts_with('/') {
                return url;
            }
            let origin = origin_of(&url);
            let site = self.site(&origin);
            let r = self.open(&url).await;
            if (300..400).contains(&r.status) {
                let next = r.location();
                url = if next.starts_with('/') {
                    format!("{origin}{next}")
                } else {
                    next
                };
                continue;
            }
            let (email, password) = login.unwrap_or_else(|| {
                panic!("the upstream answered {} at {url}: {}", r.status, r.body)
            });
            assert_eq!(r.status, 200, "upstream page {url}: {}", r.body);
            assert!(
                r.body.contains(r#"action="/login""#),
                "not a sign-in page at {url}: {}",
                r.body
            );
            let mut form = vec![
                ("csrf_token".to_string(), r.csrf()),
                ("email".to_string(), email.to_string()),
                ("password".to_string(), password.to_string()),
            ];
            if let Some(rt) = query_of(&url).get("return_to") {
                form.push(("return_to".to_string(), rt.clone()));
            }
            let form: Vec<(&str, &str)> =
                form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let r = site.post_form("/login", &form).await;
            assert_eq!(r.status, 303, "signing in at the upstream: {}", r.body);
            let next = r.location();
            url = if next.starts_with('/') {
                format!("{origin}{next}")
            } else {
                next
            };
        }
        panic!("no way back to the downstream from {authorize}");
    }

    /// The whole sign-in with upstream `name` from `/login`, the upstream person
    /// `email` signing in there with the test password when asked. Returns the
    /// downstream's answer to the callback.
    pub async fn sign_in_with(&self, name: &str, email: &str) -> Resp {
        let authorize = self.begin(name).await;
        let callback = self
            .through_upstream(&authorize, Some((email, PASSWORD)))
            .await;
        self.open(&callback).await
    }

    /// Signs out of the upstream (its own `POST /logout`) from this browser.
    pub async fn sign_out_at(&self, upstream: &TestApp) -> Resp {
        let site = self.site(&upstream.address);
        let page = site.get("/account").await;
        assert_eq!(page.status, 200, "signed in at the upstream: {}", page.body);
        site.post_form("/logout", &[("csrf_token", &page.csrf())])
            .await
    }
}
