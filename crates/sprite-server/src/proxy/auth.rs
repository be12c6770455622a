//! Who may use a sprite's URL: a token of the sprite's organization (in
//! `Authorization`, or once as `?token=`, which signs the browser in with a cookie), or
//! anyone when the URL is public. The cookie is never the token: it is a capability for
//! that one sprite, expiring, signed with the daemon's secret (HMAC), host-only,
//! `HttpOnly`, `Secure` under TLS, and only the sprite's own pages may use it.

use super::{page, Body, ProxySettings, Target};
use crate::auth::token_from_header;
use hyper::header::{HeaderValue, AUTHORIZATION, COOKIE};
use hyper::{Request, Response, StatusCode};
use std::time::Duration;

/// The cookie a `?token=` sign-in sets.
pub const AUTH_COOKIE: &str = "sprite_auth";
/// The cookie that held the token itself before `sprite_auth` (never accepted, always
/// stripped).
pub(super) const OLD_COOKIE: &str = "sprite_token";
/// How long a `sprite_auth` cookie is good for.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The daemon's key for `sprite_auth` cookies: HMAC-SHA256 over the sprite id and the
/// expiry, so a cookie works for one sprite, until it expires, and cannot be made
/// without the key (which never leaves the daemon's data directory).
#[derive(Clone)]
pub struct CookieKey(ring::hmac::Key);

impl CookieKey {
    /// The key in `path` (32 random bytes, mode 0600), made on first use.
    pub fn load(path: &std::path::Path) -> std::io::Result<CookieKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bytes = match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 32 => bytes,
            _ => {
                let mut bytes = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| std::io::Error::other("no random bytes for the cookie key"))?;
                let temporary = path.with_extension("new");
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&temporary)?
                    .write_all(&bytes)?;
                std::fs::rename(&temporary, path)?;
                bytes
            }
        };
        Ok(CookieKey::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> CookieKey {
        CookieKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    fn message(sprite_id: &str, expires: u64) -> String {
        format!("sprite_auth v1|{sprite_id}|{expires}")
    }

    /// A cookie value for `sprite_id`, good until `expires` (Unix seconds).
    pub fn issue(&self, sprite_id: &str, expires: u64) -> String {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.0, Self::message(sprite_id, expires).as_bytes());
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("v1.{expires}.{tag}")
    }

    /// Whether `value` is a cookie this key issued for `sprite_id` that has not expired
    /// at `now` (Unix seconds). The tag is checked in constant time.
    pub fn verify(&self, value: &str, sprite_id: &str, now: u64) -> bool {
        use base64::Engine;
        let mut parts = value.splitn(3, '.');
        let (Some("v1"), Some(expires), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (
            expires.parse::<u64>(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag),
        ) else {
            return false;
        };
        expires > now
            && ring::hmac::verify(&self.0, Self::message(sprite_id, expires).as_bytes(), &tag)
                .is_ok()
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The sprite a request is for, as far as its auth is concerned.
pub(super) struct Guarded<'a> {
    pub sprite_id: &'a str,
    /// `url_settings.auth = "public"`: anyone may use the URL.
    pub public: bool,
}

/// What a request may pass with.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Access {
    /// `Authorization` held a token of ours: it is removed before forwarding.
    pub strip_authorization: bool,
    /// The path and query without `token=`, when the query had one (never forwarded).
    pub location: Option<String>,
}

/// The auth decision on one request.
pub(super) enum Verdict {
    /// Forward it to the sprite.
    Forward(Access),
    /// Answer it here (a sign-in redirect, or a refusal).
    Answer(Response<Body>),
}

/// Decides whether `request` may reach the sprite. `valid` says whether a token belongs
/// to the sprite's organization; `now` is the Unix time cookies are checked against.
pub(super) fn authorize<B>(
    settings: &ProxySettings,
    sprite: &Guarded<'_>,
    target: &Target<'_>,
    request: &Request<B>,
    valid: impl Fn(&str) -> bool,
    now: u64,
) -> Verdict {
    let header_token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(token_from_header);
    let by_header = header_token.as_deref().is_some_and(&valid);
    let query = query_token(request);
    let access = Access {
        strip_authorization: by_header,
        location: query.as_ref().map(|(_, location)| location.clone()),
    };
    if sprite.public {
        return Verdict::Forward(access);
    }
    if let Some((token, location)) = &query {
        if valid(token) {
            return Verdict::Answer(signed_in(settings, sprite.sprite_id, location, now));
        }
    }
    let by_cookie = !by_header
        && cookie_values(request, AUTH_COOKIE)
            .iter()
            .any(|value| settings.cookies.verify(value, sprite.sprite_id, now));
    let (scheme, host, name) = (target.scheme, target.host, target.name);
    if !by_header && !by_cookie {
        return Verdict::Answer(page(
            StatusCode::UNAUTHORIZED,
            "Sign in needed",
            &format!(
                "This sprite's URL needs a token: send <code>Authorization: Bearer TOKEN</code>, \
                 or open <code>{scheme}://{host}/?token=TOKEN</code> once in a browser. \
                 <code>sprite url update --auth public -s {name}</code> makes it public."
            ),
        ));
    }
    // A cookie rides along on any request the browser makes to this host, also from
    // another sprite's page on the same domain: only the sprite's own pages may use it,
    // and a WebSocket on it must say where it comes from.
    if by_cookie {
        let origin = request
            .headers()
            .get(hyper::header::ORIGIN)
            .map(|o| o.to_str().unwrap_or_default());
        let upgrade = request.headers().contains_key(hyper::header::UPGRADE);
        let allowed = match origin {
            Some(origin) => same_host(origin, host),
            None => !upgrade,
        };
        if !allowed {
            return Verdict::Answer(page(
                StatusCode::FORBIDDEN,
                "Not from this sprite",
                &format!(
                    "This request carries the sign-in cookie of {scheme}://{host} but comes \
                     from {}; only the sprite's own pages may use it (send a token in \
                     <code>Authorization</code> from elsewhere).",
                    origin.unwrap_or("a page that does not say where it is")
                ),
            ));
        }
    }
    Verdict::Forward(access)
}

/// The values of the cookies named `name` in a request.
fn cookie_values<B>(request: &Request<B>, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// Whether a cookie pair (`name=value`) is one of ours.
pub(super) fn is_our_cookie(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or_default().trim();
    name.eq_ignore_ascii_case(AUTH_COOKIE) || name.eq_ignore_ascii_case(OLD_COOKIE)
}

/// The `token` of the query, if any, and the path and query without it.
fn query_token<B>(request: &Request<B>) -> Option<(String, String)> {
    let query = request.uri().query()?;
    let mut token = None;
    let rest: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter_map(|(k, v)| {
            if k == "token" {
                token = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    let rest = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(rest)
        .finish();
    let path = request.uri().path();
    let location = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    token.map(|t| (t, location))
}

/// Whether an `Origin` names the host a request came to (its scheme aside: behind a
/// TLS front proxy the browser's origin is https while this proxy speaks http).
fn same_host(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, origin_host)| origin_host.eq_ignore_ascii_case(host))
}

/// The answer to a `?token=` sign-in: the signed cookie, and a redirect to the same
/// page without the token.
fn signed_in(
    settings: &ProxySettings,
    sprite_id: &str,
    location: &str,
    now: u64,
) -> Response<Body> {
    let mut response = page(StatusCode::FOUND, "Signed in", "Redirecting…");
    let secure = if settings.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let lifetime = COOKIE_LIFETIME.as_secs();
    let value = settings.cookies.issue(sprite_id, now + lifetime);
    let cookie = format!(
        "{AUTH_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={lifetime}{secure}"
    );
    if let (Ok(cookie), Ok(location)) = (
        HeaderValue::from_str(&cookie),
        HeaderValue::from_str(location),
    ) {
        response
            .headers_mut()
            .insert(hyper::header::SET_COOKIE, cookie);
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_for_one_sprite_until_they_expire_and_cannot_be_forged() {
        let key = CookieKey::from_bytes(&[7; 32]);
        let cookie = key.issue("sprite-a", 1000);
        assert!(key.verify(&cookie, "sprite-a", 999));
        assert!(!key.verify(&cookie, "sprite-a", 1000), "expired");
        assert!(!key.verify(&cookie, "sprite-b", 999), "another sprite");
        assert!(
            !CookieKey::from_bytes(&[8; 32]).verify(&cookie, "sprite-a", 999),
            "another key"
        );
        let later = cookie.replacen("1000", "9999", 1);
        assert!(
            !key.verify(&later, "sprite-a", 999),
            "a longer life is not forged"
        );
        for bad in ["", "v1", "v1.x.y", "v2.1000.AAAA", "v1.1000.!!!"] {
            assert!(!key.verify(bad, "sprite-a", 1), "{bad:?}");
        }
        assert!(same_host(
            "https://app.localhost:7080",
            "app.localhost:7080"
        ));
        assert!(!same_host(
            "http://evil.localhost:7080",
            "app.localhost:7080"
        ));
        assert!(!same_host("null", "app.localhost:7080"));
        assert!(is_our_cookie("sprite_auth=x; Path=/"));
        assert!(is_our_cookie(" SPRITE_TOKEN=x"));
        assert!(!is_our_cookie("session=sprite_auth"));
    }

    fn settings() -> ProxySettings {
        ProxySettings {
            domain: "localhost".into(),
            wake_timeout: Duration::from_secs(1),
            tls: None,
            cookies: CookieKey::from_bytes(&[1; 32]),
        }
    }

    const TARGET: Target<'static> = Target {
        host: "app.localhost:7080",
        scheme: "http",
        name: "app",
    };

    /// The decision on a request built from `uri` and `headers`, for a private sprite
    /// `s1` whose organization's token is `good`, at time 100.
    fn decide(public: bool, uri: &str, headers: &[(&str, &str)]) -> Verdict {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap_or_default();
        let sprite = Guarded {
            sprite_id: "s1",
            public,
        };
        authorize(
            &settings(),
            &sprite,
            &TARGET,
            &request,
            |t| t == "good",
            100,
        )
    }

    fn status(decision: Verdict) -> StatusCode {
        match decision {
            Verdict::Forward(_) => StatusCode::OK,
            Verdict::Answer(response) => response.status(),
        }
    }

    impl Verdict {
        fn ok(self) -> Option<Access> {
            match self {
                Verdict::Forward(access) => Some(access),
                Verdict::Answer(_) => None,
            }
        }
    }

    #[test]
    fn a_private_url_needs_a_token_of_the_organization() {
        assert_eq!(status(decide(false, "/", &[])), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(decide(false, "/", &[("authorization", "Bearer bad")])),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            decide(false, "/x", &[("authorization", "Bearer good")]).ok(),
            Some(Access {
                strip_authorization: true,
                location: None
            })
        );
        // A bad ?token= is no sign-in.
        assert_eq!(
            status(decide(false, "/?token=bad", &[])),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_query_token_signs_in_with_a_cookie_for_this_sprite_and_redirects_without_it() {
        let Verdict::Answer(response) = decide(false, "/page?a=1&token=good&b=2", &[]) else {
            panic!("a sign-in is answered here");
        };
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok());
        assert_eq!(location, Some("/page?a=1&b=2"));
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(cookie.starts_with("sprite_auth=v1."), "{cookie}");
        assert!(
            cookie.contains("HttpOnly") && !cookie.contains("Secure"),
            "{cookie}"
        );
        let value = cookie
            .trim_start_matches("sprite_auth=")
            .split(';')
            .next()
            .unwrap_or_default();
        assert!(settings().cookies.verify(value, "s1", 101));
        assert!(!settings().cookies.verify(value, "s2", 101));
    }

    #[test]
    fn the_cookie_works_only_from_the_sprites_own_pages() {
        let cookie = format!("sprite_auth={}", settings().cookies.issue("s1", 1000));
        let other = format!("sprite_auth={}", settings().cookies.issue("s2", 1000));
        let expired = format!("sprite_auth={}", settings().cookies.issue("s1", 50));
        assert_eq!(
            status(decide(false, "/", &[("cookie", &cookie)])),
            StatusCode::OK
        );
        assert_eq!(
            status(decide(false, "/", &[("cookie", &other)])),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(decide(false, "/", &[("cookie", &expired)])),
            StatusCode::UNAUTHORIZED
        );
        let own = [
            ("cookie", cookie.as_str()),
            ("origin", "http://app.localhost:7080"),
        ];
        assert_eq!(status(decide(false, "/", &own)), StatusCode::OK);
        let foreign = [
            ("cookie", cookie.as_str()),
            ("origin", "http://evil.localhost:7080"),
        ];
        assert_eq!(status(decide(false, "/", &foreign)), StatusCode::FORBIDDEN);
        // A WebSocket on the cookie must name its origin.
        let upgrade = [("cookie", cookie.as_str()), ("upgrade", "websocket")];
        assert_eq!(status(decide(false, "/", &upgrade)), StatusCode::FORBIDDEN);
        let upgrade = [
            ("cookie", cookie.as_str()),
            ("upgrade", "websocket"),
            ("origin", "https://app.localhost:7080"),
        ];
        assert_eq!(status(decide(false, "/", &upgrade)), StatusCode::OK);
    }

    #[test]
    fn a_public_url_lets_anyone_in_and_still_keeps_our_token_from_the_app() {
        assert_eq!(status(decide(true, "/", &[])), StatusCode::OK);
        assert_eq!(
            decide(
                true,
                "/p?token=good&x=1",
                &[("authorization", "Bearer good")]
            )
            .ok(),
            Some(Access {
                strip_authorization: true,
                location: Some("/p?x=1".into())
            })
        );
        // A token of another organization is the app's business.
        assert_eq!(
            decide(true, "/", &[("authorization", "Bearer other")]).ok(),
            Some(Access {
                strip_authorization: false,
                location: None
            })
        );
    }
}
