//! The router driven with `oneshot`, no socket and no sandbox: auth, error bodies,
//! headers and input validation. (Run as root, the manager still mounts its `run/`
//! tmpfs in the data directory: [`DataDir`] unmounts it.)
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sprite_core::{CoreConfig, SpriteManager};
use sprite_server::{router, AppState, Tokens};
use std::sync::Arc;
use tower::ServiceExt;

/// A temporary data directory whose `run/` tmpfs (mounted by the manager when it runs
/// as root) goes with it.
struct DataDir(tempfile::TempDir);

impl DataDir {
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let run = self.0.path().join("run");
        let _ = std::process::Command::new("umount").arg(&run).output();
    }
}

fn data_dir() -> DataDir {
    DataDir(tempfile::tempdir().unwrap())
}

fn app(dir: &std::path::Path) -> axum::Router {
    let manager = SpriteManager::open(CoreConfig::new(
        dir.to_path_buf(),
        "/nonexistent/sprite".into(),
    ))
    .unwrap();
    router(AppState::new(
        manager,
        Arc::new(Tokens::new(vec![("secret".into(), "default".into())])),
    ))
}

async fn call(
    app: axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let dir = data_dir();
    for header in [None, Some("Bearer wrong"), Some("Basic Ym9ndXM=")] {
        let mut request = Request::get("/v1/sprites");
        if let Some(value) = header {
            request = request.header("authorization", value);
        }
        let (status, headers, body) =
            call(app(dir.path()), request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "authentication failed");
        assert!(headers.contains_key("sprite-version"));
    }
}

#[tokio::test]
async fn basic_auth_with_user_bearer_is_accepted() {
    let dir = data_dir();
    // base64("bearer:secret")
    let request = Request::get("/v1/sprites").header("authorization", "Basic YmVhcmVyOnNlY3JldA==");
    let (status, _, body) = call(app(dir.path()), request.body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sprites"], serde_json::json!([]));
    assert_eq!(body["has_more"], false);
}

#[tokio::test]
async fn errors_have_the_api_shape() {
    let dir = data_dir();
    let get = |uri: &str| {
        Request::get(uri)
            .header("authorization", "Bearer secret")
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, body) = call(app(dir.path()), get("/v1/sprites/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "sprite not found");

    let (status, _, body) = call(app(dir.path()), get("/v1/sprites?max_results=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("max_results"));

    let post = |body: &'static str| {
        Request::post("/v1/sprites")
            .header("authorization", "Bearer secret")
            .body(Body::from(body))
            .unwrap()
    };
    let (status, _, body) = call(app(dir.path()), post("{")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("malformed JSON body"));
    let (status, _, body) = call(app(dir.path()), post(r#"{"name":"No_Caps"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("use only a-z, 0-9 and -"),
        "{body}"
    );
    let (status, _, body) = call(
        app(dir.path()),
        post(r#"{"name":"ok","config":{"cpus":4096}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("config.cpus"),
        "{body}"
    );

    let (status, _, _) = call(app(dir.path()), get("/v2/unknown")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let dir = data_dir();
    let (status, _, body) = call(
        app(dir.path()),
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

/// Tokens minted through the API (`FlyV1` as the SDKs' `create_token` sends it), their
/// scopes, and revocation.
#[tokio::test]
async fn tokens_are_minted_scoped_and_revoked() {
    let dir = data_dir();
    let app = app(dir.path());
    let send = |method: &str, uri: &str, token: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", token.to_string())
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    // The SDKs' call.
    let (status, _, created) = call(
        app.clone(),
        send(
            "POST",
            "/v1/organizations/acme/tokens",
            "FlyV1 secret",
            r#"{"description":"Sprite SDK Token"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["scope"], "organization");
    assert_eq!(created["org"], "acme");
    let bearer = format!("Bearer {token}");
    // It acts in its organization: an empty list, then its limits.
    let (status, _, list) = call(app.clone(), send("GET", "/v1/sprites", &bearer, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["org"]["name"], "acme");
    let (status, _, _) = call(app.clone(), send("GET", "/v1/images", &bearer, "")).await;
    assert_eq!(status, StatusCode::OK, "listing images is not admin");
    // Nothing of the host: pulls, gc, tokens, limits.
    for (method, uri) in [
        ("POST", "/v1/images"),
        ("POST", "/v1/images/debian/update"),
        ("POST", "/v1/admin/gc"),
        ("GET", "/v1/admin/tokens"),
        ("POST", "/v1/organizations/acme/tokens"),
        ("PUT", "/v1/admin/organizations/acme"),
    ] {
        let (status, _, body) = call(app.clone(), send(method, uri, &bearer, "{}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("admin scope"),
            "{body}"
        );
    }
    // Listed without the token itself.
    let (status, _, tokens) = call(
        app.clone(),
        send("GET", "/v1/organizations/acme/tokens", "Bearer secret", ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1);
    assert!(!tokens.to_string().contains(&token[4..]));
    let id = tokens["tokens"][0]["id"].as_str().unwrap().to_string();
    // Bad input.
    for (uri, body) in [
        ("/v1/organizations/Acme!/tokens", "{}"),
        ("/v1/organizations/acme/tokens", r#"{"scope":"root"}"#),
        ("/v1/organizations/acme/tokens", "not json"),
    ] {
        let (status, _, answer) = call(app.clone(), send("POST", uri, "Bearer secret", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {answer}");
    }
    // Limits: running 0 refuses creates with the SDKs' 429.
    let (status, _, limits) = call(
        app.clone(),
        send(
            "PUT",
            "/v1/admin/organizations/acme",
            "Bearer secret",
            r#"{"running_limit":0}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["running_limit"], 0);
    let (status, headers, refused) = call(
        app.clone(),
        send("POST", "/v1/sprites", &bearer, r#"{"name":"one"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"], "concurrent_sprite_limit_exceeded");
    assert_eq!(refused["limit"], 0);
    assert!(headers.contains_key("retry-after"));
    // Revoked: refused from then on.
    let (status, _, _) = call(
        app.clone(),
        send(
            "DELETE",
            &format!("/v1/organizations/acme/tokens/{id}"),
            "Bearer secret",
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(app.clone(), send("GET", "/v1/sprites", &bearer, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        app,
        send(
            "DELETE",
            &format!("/v1/organizations/acme/tokens/{id}"),
            "Bearer secret",
            "",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `/openapi.json` and the router agree: every operation of the document is served
/// (neither "no such route" nor 405), and every path the router serves answers 405 to
/// each method the document does not list for it. Every schema it refers to exists.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let dir = data_dir();
    let app = app(dir.path());
    let (status, _, served) = call(
        app.clone(),
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, sprite_server::openapi::document());
    let paths = served["paths"].as_object().unwrap();
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    let concrete = |path: &str| {
        path.split('/')
            .map(|part| if part.starts_with('{') { "zz" } else { part })
            .collect::<Vec<_>>()
            .join("/")
    };
    let routed: Vec<&str> = sprite_server::route_paths();
    // The document's paths are exactly the router's.
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    assert_eq!(documented, routed, "paths of the document vs the router");
    for path in routed {
        for method in methods {
            let in_doc = paths[path].get(method.to_lowercase()).is_some();
            let request = Request::builder()
                .method(method)
                .uri(concrete(path))
                .header("authorization", "Bearer secret")
                .header("x-forwarded-for", "203.0.113.9")
                .body(Body::empty())
                .unwrap();
            let (status, _, body) = call(app.clone(), request).await;
            let served =
                status != StatusCode::METHOD_NOT_ALLOWED && body["message"] != "no such route";
            assert_eq!(
                served,
                in_doc,
                "{method} {path}: the router says {status} {body}, the document {}",
                if in_doc { "lists it" } else { "does not" }
            );
        }
    }
    // Every reference resolves.
    let schemas = served["components"]["schemas"].as_object().unwrap();
    let text = served.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name),
            "{name} is referred to but not defined"
        );
    }
}

/// A console session made with a token ends when the token is revoked: the session
/// asks what its token grants at each use, not once at sign-in.
#[tokio::test]
async fn a_revoked_token_ends_its_console_sessions() {
    let dir = data_dir();
    let app = app(dir.path());
    let admin = |method: &str, uri: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", "Bearer secret")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (_, _, created) = call(
        app.clone(),
        admin("POST", "/v1/organizations/acme/tokens", "{}"),
    )
    .await;
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let response = app
        .clone()
        .oneshot(
            Request::post("/console/login")
                .body(Body::from(format!(r#"{{"token":"{token}"}}"#)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let with_cookie = |uri: &str| {
        Request::get(uri)
            .header("cookie", cookie.clone())
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, list) = call(app.clone(), with_cookie("/v1/sprites")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["org"]["name"], "acme");
    let (status, _, _) = call(
        app.clone(),
        admin("DELETE", &format!("/v1/organizations/acme/tokens/{id}"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(app.clone(), with_cookie("/v1/sprites")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the session went with its token"
    );
    let (status, _, _) = call(app, with_cookie("/console/session")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Guessing tokens at the console's sign-in is slowed down: after a burst of 10
/// attempts from one address, the next is refused with a 429 that says when to retry.
#[tokio::test]
async fn console_sign_ins_are_rate_limited() {
    let dir = data_dir();
    let app = app(dir.path());
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let (status, _, body) = call(
            app.clone(),
            Request::post("/console/login")
                .body(Body::from(r#"{"token":"guess"}"#))
                .unwrap(),
        )
        .await;
        statuses.push((status, body));
    }
    assert!(statuses[..10]
        .iter()
        .all(|(status, _)| *status == StatusCode::UNAUTHORIZED));
    let (status, body) = &statuses[10];
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["message"].as_str().unwrap().contains("try again in"));
}

/// One stop at a time: a second `POST /v1/admin/stop` while one runs is a 409.
#[tokio::test]
async fn a_second_stop_is_refused_while_one_runs() {
    let dir = data_dir();
    let app = app(dir.path());
    let stop = || {
        Request::post("/v1/admin/stop")
            .header("authorization", "Bearer secret")
            .body(Body::empty())
            .unwrap()
    };
    let first = app.clone().oneshot(stop()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, _, body) = call(app, stop()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}
