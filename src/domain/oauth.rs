//! The pure rules of the OAuth 2.0 / OIDC provider: what a registered redirect URI may
//! be, which scopes exist, how an authorization request is read, and the PKCE check.
//! No I/O, so each rule has a unit test beside it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The scopes Gatehouse knows (DESIGN.md "Precise rules": Scopes).
pub const SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

/// The `acr` of a session that has proven a second factor, and of one that has not.
pub const ACR_AAL2: &str = "urn:gatehouse:aal2";
pub const ACR_AAL1: &str = "urn:gatehouse:aal1";

/// The parameter Gatehouse adds to an authorization request it sends through
/// sign-in for `prompt=login` or `max_age`: a random value, whose hash the sign-in
/// stores on the session it creates. Only that session satisfies the request.
pub const LOGIN_MARK: &str = "gh_login";

/// The hash of the `gh_login` mark in a sign-in's `return_to`, if it leads back to
/// an authorization request carrying one: over the mark, the client and the
/// redirect URI, so that it stands for that request and no other app's.
pub fn login_mark_hash(return_to: Option<&str>) -> Option<Vec<u8>> {
    let (path, query) = return_to?.split_once('?')?;
    if path != "/oauth2/authorize" {
        return None;
    }
    let params = Params::parse(query).ok()?;
    let mark = params.get(LOGIN_MARK).filter(|v| v.len() == 43)?;
    let client_id = params.get("client_id")?;
    let redirect_uri = params.get("redirect_uri")?;
    Some(crate::crypto::token_hash(&format!(
        "{mark}\n{client_id}\n{redirect_uri}"
    )))
}

/// `return_to` without its `gh_login` mark: where a sign-in that does not satisfy
/// the request's demand for a new authentication goes on to, so the request asks
/// again rather than take that sign-in for one.
pub fn without_login_mark(return_to: &str) -> String {
    let Some((path, query)) = return_to.split_once('?') else {
        return return_to.to_string();
    };
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != LOGIN_MARK)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("{path}?{query}")
}

/// A set of known scopes, kept sorted so that equal sets print equally (consent is
/// remembered per scope set).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scopes(Vec<&'static str>);

impl Scopes {
    /// Parses a space-separated `scope` (RFC 6749 §3.3). An unknown scope is refused
    /// (`invalid_scope`), not silently dropped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out: Vec<&'static str> = Vec::new();
        for item in text.split(' ').filter(|s| !s.is_empty()) {
            let known = SCOPES
                .iter()
                .find(|s| **s == item)
                .ok_or_else(|| "The requested scope is not offered.".to_string())?;
            if !out.contains(known) {
                out.push(known);
            }
        }
        out.sort_unstable();
        Ok(Self(out))
    }
    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(&scope)
    }
    pub fn is_subset_of(&self, other: &Scopes) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().copied()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// Whether `uri` may be registered as a redirect URI (DESIGN.md "Precise rules"):
/// `https://`, `http://` only on a loopback host, or a private-use scheme for native
/// apps (RFC 8252 §7.1, a reverse domain name); never with a fragment or user info.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let parsed = url::Url::parse(uri).map_err(|_| format!("{uri:?} is not an absolute URI"))?;
    if parsed.fragment().is_some() || uri.contains('#') {
        return Err(format!("{uri:?} has a fragment (RFC 6749 §3.1.2)"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{uri:?} carries user information"));
    }
    // The URI is stored as written and compared as a string; it must already be in
    // the form a client will send, or it could never match.
    if parsed.as_str() != uri {
        return Err(format!(
            "{uri:?} is not in normal form (write it as {:?})",
            parsed.as_str()
        ));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed.host() {
            Some(url::Host::Domain("localhost")) => Ok(()),
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            _ => Err(format!(
                "{uri:?}: plain http is allowed only for loopback hosts"
            )),
        },
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" => {
            Err(format!("{uri:?}: this scheme cannot be a redirect URI"))
        }
        scheme if scheme.contains('.') => Ok(()),
        _ => Err(format!(
            "{uri:?}: use https, http on loopback, or a private-use scheme such as com.example.app"
        )),
    }
}

/// Whether `origin` may be registered as a browser app's web origin (CORS on the token,
/// revocation and userinfo endpoints): an origin in the normal form a browser sends
/// in `Origin` (scheme, host and a non-default port; lower case; no path, not even
/// `/`), `https://`, or `http://` on a loopback host. It is compared as a string.
pub fn check_web_origin(origin: &str) -> Result<(), String> {
    let parsed = url::Url::parse(origin)
        .map_err(|_| format!("{origin:?} is not an origin (https://host[:port])"))?;
    let serialized = parsed.origin().ascii_serialization();
    if parsed.path() != "/"
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(format!(
            "{origin:?} is not an origin: only scheme, host and port (such as \"https://app.example\")"
        ));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{origin:?}: a web origin must be https:// (http:// only on a loopback host)"
            ));
        }
        _ => {
            return Err(format!(
                "{origin:?}: a web origin must be https:// (http:// only on a loopback host)"
            ));
        }
    }
    if serialized != origin {
        return Err(format!(
            "{origin:?} is not in the form browsers send (write it as {serialized:?})"
        ));
    }
    Ok(())
}

/// Whether a redirect URI an authorization request names may be used: only one of
/// the client's registered URIs, compared byte for byte, with no normalisation of any
/// kind (checklist O1; authentik CVE-2024-52289), with one exception: a registered
/// `http://127.0.0.1…` or `http://[::1]…` URI matches the same URI with any port
/// (RFC 8252 §7.3: a native app listens on a port the system picks at run time).
/// `localhost` is not an exception (§8.3: it may resolve elsewhere).
pub fn redirect_registered(registered: &[String], requested: &str) -> bool {
    registered
        .iter()
        .any(|r| r == requested || loopback_port_variant(r, requested))
}

/// Whether a post-logout redirect URI may be used: byte for byte one the client
/// registered, no loopback exception (DESIGN.md: RP-initiated logout, exact match).
pub fn post_logout_registered(registered: &[String], requested: &str) -> bool {
    registered.iter().any(|r| r == requested)
}

/// The loopback IP literals RFC 8252 §7.3 speaks of, as a registered URI starts.
const LOOPBACK_PREFIXES: &[&str] = &["http://127.0.0.1", "http://[::1]"];

/// `requested` is `registered` with only the port different (or added, or dropped):
/// both start with the same loopback IP literal, then an optional `:port` (digits, no
/// leading zero, 1–65535), then the very same bytes (path, query).
fn loopback_port_variant(registered: &str, requested: &str) -> bool {
    let Some(prefix) = LOOPBACK_PREFIXES
        .iter()
        .find(|p| registered.starts_with(**p) && requested.starts_with(**p))
    else {
        return false;
    };
    match (
        after_port(&registered[prefix.len()..]),
        after_port(&requested[prefix.len()..]),
    ) {
        // The rest must begin the path: `http://127.0.0.1.evil.test/` is not loopback.
        (Some(a), Some(b)) => a == b && a.starts_with('/'),
        _ => false,
    }
}

/// What follows an optional `:port` right after the host, if that port is well formed.
fn after_port(rest: &str) -> Option<&str> {
    let Some(port_and_rest) = rest.strip_prefix(':') else {
        return Some(rest);
    };
    let digits = port_and_rest.bytes().take_while(u8::is_ascii_digit).count();
    let port = &port_and_rest[..digits];
    let ok = !port.is_empty()
        && !port.starts_with('0')
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    ok.then(|| &port_and_rest[digits..])
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
fn is_pkce_text(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// A code challenge as sent with `code_challenge_method=S256`: base64url of 32 bytes.
pub fn is_s256_challenge(s: &str) -> bool {
    s.len() == 43
        && URL_SAFE_NO_PAD
            .decode(s)
            .is_ok_and(|bytes| bytes.len() == 32)
}

/// RFC 7636 §4.6: `BASE64URL(SHA256(code_verifier)) == code_challenge`, compared in
/// constant time. A malformed verifier never matches.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !is_pkce_text(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    crate::crypto::constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// `prompt` (OIDC Core §3.1.2.1), as far as Gatehouse acts on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
    pub consent: bool,
}

impl Prompt {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = Prompt::default();
        let mut count = 0;
        for item in text.split(' ').filter(|s| !s.is_empty()) {
            count += 1;
            match item {
                "none" => p.none = true,
                "login" => p.login = true,
                "consent" => p.consent = true,
                // `select_account`: there is one account per browser session.
                "select_account" => {}
                _ => return Err("a prompt value is not supported".into()),
            }
        }
        if p.none && count > 1 {
            return Err("prompt=none cannot be combined with another value".into());
        }
        Ok(p)
    }
}

/// Query or form parameters, each name at most once: RFC 6749 §3.1 says request and
/// response parameters must not be included more than once.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Splits `application/x-www-form-urlencoded` text; a repeated name is an error
    /// naming it. Empty values count as absent (RFC 6749 §3.1).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
            // RFC 6749 Appendix A: parameter values are printable (VSCHAR and the
            // like); a control character is never a real value, and NUL cannot even
            // be stored.
            if k.chars().chain(v.chars()).any(char::is_control) {
                return Err("a parameter holds a control character".into());
            }
            if out.iter().any(|(n, _)| *n == k) {
                // Named only when it is a plain name (the text goes back to the app).
                let plain =
                    k.len() <= 40 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                return Err(if plain {
                    format!("the parameter {k} is given more than once")
                } else {
                    "a parameter is given more than once".into()
                });
            }
            out.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self(out))
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    /// The parameters again, without `drop`, as a query string.
    pub fn encode_without(&self, drop: &[&str]) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.0 {
            if !drop.contains(&k.as_str()) {
                ser.append_pair(k, v);
            }
        }
        ser.finish()
    }
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// An authorization request whose `client_id` and `redirect_uri` are not yet
/// checked against the client (that needs the store), with everything else parsed.
#[derive(Clone, Debug)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Scopes,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<u64>,
    /// `acr_values` asked for `urn:gatehouse:aal2`.
    pub wants_aal2: bool,
}

/// Why an authorization request fails, before or after its redirect URI is trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    /// `client_id` or `redirect_uri` is missing, repeated or unknown: the person sees a
    /// page and nothing is sent anywhere (RFC 6749 §4.1.2.1).
    Page(String),
    /// An error for the client, sent to its (validated) redirect URI.
    Redirect {
        error: &'static str,
        description: String,
    },
}

fn redirect(error: &'static str, description: impl Into<String>) -> AuthorizeError {
    AuthorizeError::Redirect {
        error,
        description: description.into(),
    }
}

/// The two parameters that must be trusted before any error may be redirected.
pub fn client_and_redirect(query: &str) -> Result<(Params, String, String), AuthorizeError> {
    let params = Params::parse(query).map_err(AuthorizeError::Page)?;
    let client_id = params
        .get("client_id")
        .ok_or_else(|| {
            AuthorizeError::Page("The request names no application (client_id).".into())
        })?
        .to_string();
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| {
            AuthorizeError::Page("The request names no return address (redirect_uri).".into())
        })?
        .to_string();
    Ok((params, client_id, redirect_uri))
}

/// Reads the rest of an authorization request once its client and redirect URI are
/// trusted. `public` clients must use PKCE; `S256` is the only method (RFC 9700 §2.1.1).
pub fn parse_authorize(
    params: &Params,
    client_id: String,
    redirect_uri: String,
    public: bool,
) -> Result<AuthorizeRequest, AuthorizeError> {
    match params.get("response_type") {
        Some("code") => {}
        None => return Err(redirect("invalid_request", "response_type is missing")),
        Some(_) => {
            return Err(redirect(
                "unsupported_response_type",
                "only response_type=code is offered",
            ));
        }
    }
    if params.get("request").is_some() {
        return Err(redirect(
            "request_not_supported",
            "request objects are not supported",
        ));
    }
    if params.get("request_uri").is_some() {
        return Err(redirect(
            "request_uri_not_supported",
            "request_uri is not supported",
        ));
    }
    if let Some(mode) = params.get("response_mode")
        && mode != "query"
    {
        return Err(redirect(
            "invalid_request",
            "only response_mode=query is offered",
        ));
    }
    let scopes = Scopes::parse(params.get("scope").unwrap_or(""))
        .map_err(|d| redirect("invalid_scope", d))?;
    let prompt = Prompt::parse(params.get("prompt").unwrap_or(""))
        .map_err(|d| redirect("invalid_request", d))?;
    let max_age = params
        .get("max_age")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| redirect("invalid_request", "max_age must be a number of seconds"))
        })
        .transpose()?;
    // Without a method the default is `plain` (RFC 7636 §4.3), which is refused too.
    let code_challenge = match (
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        (None, None) if public => {
            return Err(redirect(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            ));
        }
        (None, None) => None,
        (None, Some(_)) => {
            return Err(redirect("invalid_request", "code_challenge is missing"));
        }
        (Some(c), Some("S256")) if is_s256_challenge(c) => Some(c.to_string()),
        (Some(_), Some("S256")) => {
            return Err(redirect(
                "invalid_request",
                "code_challenge is not a S256 challenge",
            ));
        }
        (Some(_), _) => {
            return Err(redirect(
                "invalid_request",
                "code_challenge_method must be S256 (plain is refused)",
            ));
        }
    };
    let nonce = params.get("nonce").map(str::to_string);
    if nonce.as_ref().is_some_and(|n| n.len() > 512) {
        return Err(redirect("invalid_request", "nonce is too long"));
    }
    let state = params.get("state").map(str::to_string);
    if state.as_ref().is_some_and(|s| s.len() > 2048) {
        return Err(redirect("invalid_request", "state is too long"));
    }
    let wants_aal2 = params
        .get("acr_values")
        .is_some_and(|v| v.split(' ').any(|a| a == ACR_AAL2));
    Ok(AuthorizeRequest {
        client_id,
        redirect_uri,
        state,
        nonce,
        scopes,
        code_challenge,
        prompt,
        max_age,
        wants_aal2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_redirect_uris_follow_the_precise_rules() {
        for ok in [
            "https://rp.test/cb",
            "http://localhost:3000/cb",
            "http://127.0.0.1:9/cb",
            "http://[::1]:8080/cb",
            "com.example.app:/oauth",
        ] {
            assert_eq!(check_redirect_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://rp.test/cb",
            "https://rp.test/cb#x",
            "https://user@rp.test/cb",
            "javascript:alert(1)",
            "/cb",
            "https://RP.test/cb",
            "custom:/cb",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_loopback_ip_redirect_matches_any_port_and_nothing_else_does() {
        let reg = |uris: &[&str]| uris.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        let v4 = reg(&["http://127.0.0.1/cb"]);
        assert!(redirect_registered(&v4, "http://127.0.0.1/cb"));
        assert!(redirect_registered(&v4, "http://127.0.0.1:51234/cb"));
        let v6 = reg(&["http://[::1]:8080/cb?x=1"]);
        assert!(redirect_registered(&v6, "http://[::1]:9/cb?x=1"));
        assert!(redirect_registered(&v6, "http://[::1]/cb?x=1"));
        for bad in [
            "http://127.0.0.1:51234/cb/",
            "http://127.0.0.1:51234/CB",
            "http://127.0.0.1:51234/cb?x=1",
            "http://127.0.0.1:/cb",
            "http://127.0.0.1:0/cb",
            "http://127.0.0.1:065/cb",
            "http://127.0.0.1:65536/cb",
            "http://127.0.0.1.evil.test/cb",
            "http://127.0.0.1:80@evil.test/cb",
            "https://127.0.0.1:443/cb",
            "http://[::1]:80/cb",
            "http://localhost:51234/cb",
        ] {
            assert!(!redirect_registered(&v4, bad), "{bad}");
        }
        assert!(!redirect_registered(&v6, "http://[::1]:9/cb"));
        // localhost matches exactly, port and all.
        let local = reg(&["http://localhost:3000/cb"]);
        assert!(redirect_registered(&local, "http://localhost:3000/cb"));
        assert!(!redirect_registered(&local, "http://localhost:3001/cb"));
        // And post-logout redirects stay exact, loopback or not.
        assert!(!post_logout_registered(&v4, "http://127.0.0.1:51234/cb"));
        assert!(post_logout_registered(&v4, "http://127.0.0.1/cb"));
    }

    #[test]
    fn web_origins_are_https_or_loopback_http_in_the_form_browsers_send() {
        for ok in [
            "https://app.example",
            "https://app.example:8443",
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
        ] {
            assert_eq!(check_web_origin(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://app.example",
            "https://app.example/",
            "https://app.example/spa",
            "https://APP.example",
            "https://app.example:443",
            "https://user@app.example",
            "https://app.example?x",
            "app.example",
            "*",
            "null",
            "com.example.app:/cb",
            "file:///tmp",
        ] {
            assert!(check_web_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_are_known_sorted_and_deduplicated() {
        let s = Scopes::parse("openid email openid offline_access").unwrap();
        assert_eq!(s.to_string(), "email offline_access openid");
        assert!(Scopes::parse("openid admin").is_err());
        assert!(Scopes::parse("email").unwrap().is_subset_of(&s));
        assert!(!Scopes::parse("profile").unwrap().is_subset_of(&s));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            challenge
        ));
        assert!(!pkce_matches("short", challenge));
        assert!(!pkce_matches(challenge, challenge));
    }

    #[test]
    fn prompt_none_stands_alone() {
        assert!(Prompt::parse("none").unwrap().none);
        assert!(Prompt::parse("none login").is_err());
        let p = Prompt::parse("login consent").unwrap();
        assert!(p.login && p.consent && !p.none);
        assert!(Prompt::parse("bogus").is_err());
    }

    fn parse(query: &str, public: bool) -> Result<AuthorizeRequest, AuthorizeError> {
        let (p, c, r) = client_and_redirect(query)?;
        parse_authorize(&p, c, r, public)
    }

    #[test]
    fn pkce_cannot_be_downgraded_by_omission_or_plain() {
        let base = "client_id=a&redirect_uri=https%3A%2F%2Frp.test%2Fcb&response_type=code";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(matches!(
            parse(base, true),
            Err(AuthorizeError::Redirect {
                error: "invalid_request",
                ..
            })
        ));
        assert!(parse(base, false).unwrap().code_challenge.is_none());
        let plain = format!("{base}&code_challenge={challenge}&code_challenge_method=plain");
        assert!(matches!(
            parse(&plain, false),
            Err(AuthorizeError::Redirect {
                error: "invalid_request",
                ..
            })
        ));
        let no_method = format!("{base}&code_challenge={challenge}");
        assert!(parse(&no_method, false).is_err());
        let s256 = format!("{base}&code_challenge={challenge}&code_challenge_method=S256");
        assert_eq!(
            parse(&s256, true).unwrap().code_challenge.as_deref(),
            Some(challenge)
        );
    }

    #[test]
    fn repeated_or_missing_client_parameters_are_a_page_not_a_redirect() {
        assert!(matches!(
            client_and_redirect("client_id=a&client_id=b&redirect_uri=x"),
            Err(AuthorizeError::Page(_))
        ));
        assert!(matches!(
            client_and_redirect("client_id=a"),
            Err(AuthorizeError::Page(_))
        ));
        assert!(matches!(
            parse("client_id=a&redirect_uri=x&response_type=token", false),
            Err(AuthorizeError::Redirect {
                error: "unsupported_response_type",
                ..
            })
        ));
    }

    mod properties {
        use super::super::{check_redirect_uri, post_logout_registered, redirect_registered};
        use proptest::prelude::*;

        fn uri() -> impl Strategy<Value = String> {
            let scheme = prop_oneof![
                Just("https://"),
                Just("http://"),
                Just("HTTPS://"),
                Just("javascript:"),
                Just("com.example.app:/"),
                Just("data:"),
                Just("//"),
                Just(""),
            ];
            let host = prop_oneof![
                Just("rp.test"),
                Just("127.0.0.1"),
                Just("127.0.0.1:8080"),
                Just("127.0.0.1:51234"),
                Just("127.0.0.1:0"),
                Just("127.0.0.1:"),
                Just("127.0.0.1.evil.test"),
                Just("127.0.0.1:1@evil.test"),
                Just("localhost"),
                Just("localhost:3000"),
                Just("localhost:3001"),
                Just("[::1]"),
                Just("[::1]:9"),
                Just("evil.test"),
                Just("rp.test.evil.test"),
                Just("rp.test@evil.test"),
                Just("user:pw@rp.test"),
                Just("rp.test:443"),
                Just("RP.test"),
            ];
            let path = prop_oneof![
                Just("/cb"),
                Just("/cb/"),
                Just("/cb?x=1"),
                Just("/cb#frag"),
                Just("/CB"),
                Just("/cb%2f..%2f"),
                Just("/./cb"),
                Just(""),
                Just("/cb\\evil"),
            ];
            (scheme, host, path).prop_map(|(s, h, p)| format!("{s}{h}{p}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// O1: a requested redirect is used only if it is, byte for byte, one the
            /// client registered: so never an off-site target it did not register.
            #[test]
            fn only_a_registered_redirect_is_used(requested in uri()) {
                // A client that registered only https://rp.test/cb is sent nowhere
                // else: not another host, scheme, port, path, case, user info or
                // encoding of it.
                let registered = vec!["https://rp.test/cb".to_string()];
                if redirect_registered(&registered, &requested) {
                    let target = url::Url::parse(&requested).unwrap();
                    prop_assert_eq!(target.scheme(), "https");
                    prop_assert_eq!(target.host_str(), Some("rp.test"));
                    prop_assert_eq!(target.port(), None);
                    prop_assert_eq!(target.path(), "/cb");
                    prop_assert!(target.username().is_empty() && target.password().is_none());
                    prop_assert!(target.query().is_none() && target.fragment().is_none());
                }
                prop_assert!(!redirect_registered(&[], &requested));
            }

            /// O1 with RFC 8252 §7.3: against registered loopback and localhost URIs,
            /// a requested redirect is used only when it equals one byte for byte, or
            /// is a loopback IP one differing in its port alone; post-logout redirects
            /// only when equal.
            #[test]
            fn a_loopback_ip_redirect_differs_at_most_in_its_port(requested in uri()) {
                let registered: Vec<String> = [
                    "https://rp.test/cb",
                    "http://127.0.0.1/cb",
                    "http://[::1]:8080/cb?x=1",
                    "http://localhost:3000/cb",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                prop_assert_eq!(
                    post_logout_registered(&registered, &requested),
                    registered.contains(&requested)
                );
                if redirect_registered(&registered, &requested) && !registered.contains(&requested) {
                    let target = url::Url::parse(&requested).unwrap();
                    prop_assert_eq!(target.scheme(), "http");
                    let loopback_ip = match target.host() {
                        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                        _ => false,
                    };
                    prop_assert!(loopback_ip, "{requested:?}");
                    prop_assert!(target.username().is_empty() && target.password().is_none());
                    // The same host as a registered one, and byte for byte the same
                    // after the authority (path and query).
                    let tail = |u: &str| {
                        u.strip_prefix("http://")
                            .and_then(|rest| rest.find('/').map(|i| rest[i..].to_string()))
                    };
                    let same = registered.iter().any(|r| {
                        let reg = url::Url::parse(r).unwrap();
                        reg.scheme() == "http"
                            && reg.host() == target.host()
                            && tail(r).is_some()
                            && tail(r) == tail(&requested)
                    });
                    prop_assert!(same, "{requested:?}");
                }
            }

            /// What may be registered: https, http on loopback only, or a private-use
            /// scheme; never a fragment, user information or a non-normal form.
            #[test]
            fn registration_takes_only_safe_redirects(candidate in prop_oneof![uri(), any::<String>()]) {
                if check_redirect_uri(&candidate).is_ok() {
                    let parsed = url::Url::parse(&candidate).unwrap();
                    prop_assert_eq!(parsed.as_str(), candidate.as_str());
                    prop_assert!(parsed.fragment().is_none());
                    prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
                    let loopback = matches!(
                        parsed.host(),
                        Some(url::Host::Domain("localhost"))
                    ) || parsed.host().is_some_and(|h| match h {
                        url::Host::Ipv4(ip) => ip.is_loopback(),
                        url::Host::Ipv6(ip) => ip.is_loopback(),
                        url::Host::Domain(_) => false,
                    });
                    prop_assert!(
                        parsed.scheme() == "https"
                            || (parsed.scheme() == "http" && loopback)
                            || parsed.scheme().contains('.'),
                        "{candidate:?}"
                    );
                }
            }
        }
    }
}
