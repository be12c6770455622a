//! The web console: a single page (HTML, CSS, JS and xterm.js, all embedded in the
//! binary) served at `/`, which drives the same API as every other client. Signing in
//! exchanges a token for a session: an HttpOnly, SameSite=Strict cookie plus a CSRF
//! token the page sends as `X-CSRF-Token` with every request that changes something.
//! WebSockets (the terminal) carry the cookie and must come from the console's own
//! origin. Sessions live in memory (a daemon restart signs everyone out), at most
//! [`MAX_SESSIONS`], each for [`SESSION_TTL`].

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use sprite_api::admin::{TokenGrant, TokenScope};
use sprite_api::ErrorKind;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "sprites_session";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 10_000;

/// A sign-in. It keeps the token it was made with, not what the token granted then:
/// each use asks again, so a revoked token ends its sessions at once.
#[derive(Clone)]
struct Session {
    token: String,
    csrf: String,
    expires: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// The console's sign-ins.
#[derive(Debug)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    /// Sign-in attempts per client address: 10 at once, then one a second.
    attempts: sprite_core::limits::Buckets,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            sessions: Mutex::new(HashMap::new()),
            attempts: sprite_core::limits::Buckets::new(10, 1.0),
        }
    }
}

/// 32 random bytes as hex.
fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ApiError::new(ErrorKind::Internal, "no randomness for a session"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The session id in a request's cookies.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Sessions {
    fn start(&self, token: &str) -> Result<(String, Session), ApiError> {
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                "too many console sessions are open; sign out of others or wait for them to expire",
            ));
        }
        let session = Session {
            token: token.to_string(),
            csrf: random_hex()?,
            expires: now + SESSION_TTL,
        };
        let id = random_hex()?;
        sessions.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock();
        match sessions.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        self.sessions.lock().remove(id);
    }
}

/// The request's session and what its token grants now (None: no session, an expired
/// one, or one whose token was revoked, which is then ended).
fn live_session(state: &AppState, headers: &HeaderMap) -> Option<(String, Session, TokenGrant)> {
    let id = session_id(headers)?;
    let session = state.console.get(&id)?;
    match crate::auth::grant_of_token(state, &session.token) {
        Some(grant) => Some((id, session, grant)),
        None => {
            state.console.end(&id);
            None
        }
    }
}

/// Why a request with a session cookie was refused.
pub(crate) enum CookieRefusal {
    /// No session, or an expired one.
    Unknown,
    /// A change without the session's CSRF token, or a WebSocket from another origin.
    Forgery(&'static str),
}

/// What a request's session cookie grants: for reads, the session; for changes, only
/// with its CSRF token; for WebSockets, only from the page's own origin.
pub(crate) fn grant_of_cookie(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<TokenGrant, CookieRefusal> {
    let (_, session, grant) = live_session(state, headers).ok_or(CookieRefusal::Unknown)?;
    let websocket = headers
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if websocket {
        let origin = headers.get("origin").and_then(|v| v.to_str().ok());
        let host = headers.get("host").and_then(|v| v.to_str().ok());
        let same = match (origin, host) {
            (Some(origin), Some(host)) => origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host),
            _ => false,
        };
        if !same {
            return Err(CookieRefusal::Forgery(
                "a console WebSocket must come from the console's own page",
            ));
        }
    } else if !matches!(*method, Method::GET | Method::HEAD) {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let matches = sent.is_some_and(|sent| {
            subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), session.csrf.as_bytes()).into()
        });
        if !matches {
            return Err(CookieRefusal::Forgery(
                "this change lacks the console session's X-CSRF-Token header",
            ));
        }
    }
    Ok(grant)
}

fn cookie(id: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("sprites_session=; Max-Age=0"))
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
}

/// What the page learns about its session.
#[derive(Debug, serde::Serialize)]
struct SessionInfo {
    org: String,
    scope: TokenScope,
    csrf: String,
}

/// `POST /console/login` `{"token"}`: a session cookie and the CSRF token.
pub async fn login(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<crate::serve::PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    if let Err(wait) = state.console.attempts.take(&peer) {
        return Err(ApiError::new(
            ErrorKind::RateLimited,
            format!(
                "too many sign-in attempts; try again in {} s",
                wait.as_secs().max(1)
            ),
        ));
    }
    let hint = "send {\"token\": \"...\"}";
    let login: Login = crate::read_json_body(request.into_body(), 4096, "sign-in", hint)
        .await?
        .ok_or_else(|| ApiError::invalid(format!("the sign-in request is empty; {hint}")))?;
    let token = login.token.trim();
    let grant = crate::auth::grant_of_token(&state, token).ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "unknown token; use the daemon's admin token (/var/lib/sprites/admin-token) or one from `sprite tokens create`",
        )
    })?;
    let (id, session) = state.console.start(token)?;
    let info = SessionInfo {
        org: grant.org,
        scope: grant.scope,
        csrf: session.csrf,
    };
    let mut response = Json(info).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(&id, SESSION_TTL.as_secs()));
    Ok(response)
}

/// `GET /console/session`: the signed-in session (401 when there is none).
pub async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, session, grant) = live_session(&state, &headers)
        .ok_or_else(|| ApiError::new(ErrorKind::Unauthenticated, "not signed in"))?;
    Ok(Json(SessionInfo {
        org: grant.org,
        scope: grant.scope,
        csrf: session.csrf,
    })
    .into_response())
}

/// `POST /console/logout`: ends the session (CSRF-checked) and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        if grant_of_cookie(&state, &Method::POST, &headers).is_ok() {
            state.console.end(&id);
        } else {
            return ApiError::new(ErrorKind::Forbidden, "sign out from the console's own page")
                .into_response();
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(SET_COOKIE, cookie("", 0));
    response
}

/// An embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

fn asset(name: &str) -> Option<Asset> {
    let (body, content_type): (&'static [u8], &'static str) = match name {
        "app.js" => (
            include_bytes!("../console/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "app.css" => (
            include_bytes!("../console/app.css"),
            "text/css; charset=utf-8",
        ),
        "xterm.js" => (
            include_bytes!("../console/vendor/xterm.js"),
            "text/javascript; charset=utf-8",
        ),
        "xterm.css" => (
            include_bytes!("../console/vendor/xterm.css"),
            "text/css; charset=utf-8",
        ),
        "addon-fit.js" => (
            include_bytes!("../console/vendor/addon-fit.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return None,
    };
    Some(Asset { body, content_type })
}

/// Headers every console answer carries: no framing by other sites, no sniffing, and a
/// content security policy that allows only the console's own scripts.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// `GET /`: the console page.
pub async fn index() -> Response {
    let mut response = (
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../console/index.html"),
    )
        .into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(response)
}

/// `GET /console/assets/{file}`.
pub async fn assets(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match asset(&file) {
        Some(asset) => {
            let mut response = ([(CONTENT_TYPE, asset.content_type)], asset.body).into_response();
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            secure(response)
        }
        None => {
            ApiError::new(ErrorKind::NotFound, format!("no console file {file}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_read_from_cookies_strictly() {
        let id = "a".repeat(64);
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE_NAME}={id}")).expect("header"),
        );
        assert_eq!(session_id(&headers), Some(id));
        let mut bad = HeaderMap::new();
        bad.insert(
            COOKIE,
            HeaderValue::from_static("sprites_session=../../etc"),
        );
        assert_eq!(session_id(&bad), None);
    }
}
