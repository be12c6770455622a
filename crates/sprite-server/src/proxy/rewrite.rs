//! What changes in a request on its way to the sprite, and in the answer on its way
//! back: our credentials and cookies stay here, `X-Forwarded-*` say where the request
//! came from, hop-by-hop headers belong to one connection only, and the upstream always
//! speaks HTTP/1.1 with an origin-form URI.

use super::auth::{is_our_cookie, Access};
use super::Target;
use hyper::header::{HeaderValue, AUTHORIZATION, COOKIE, HOST, SET_COOKIE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use std::net::IpAddr;

/// Headers of one connection, never passed on (except on an upgrade, whose
/// `Connection: Upgrade` the upstream needs).
const HOP_BY_HOP: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

/// Makes `request` the one the sprite sees.
pub(super) fn to_upstream<B>(
    request: &mut Request<B>,
    access: &Access,
    peer: IpAddr,
    target: &Target<'_>,
) {
    if access.strip_authorization {
        request.headers_mut().remove(AUTHORIZATION);
    }
    if let Some(location) = &access.location {
        if let Ok(uri) = location.parse::<hyper::Uri>() {
            *request.uri_mut() = uri;
        }
    }
    let cookies: Vec<String> = request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !is_our_cookie(pair) && !pair.is_empty())
        .map(str::to_string)
        .collect();
    request.headers_mut().remove(COOKIE);
    if !cookies.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&cookies.join("; ")) {
            request.headers_mut().insert(COOKIE, value);
        }
    }
    let headers = request.headers_mut();
    let forwarded_for = peer.to_string();
    for (name, value) in [
        ("x-forwarded-for", forwarded_for.as_str()),
        ("x-forwarded-host", target.host),
        ("x-forwarded-proto", target.scheme),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(target.host) {
        headers.insert(HOST, value);
    }
    if !headers.contains_key(UPGRADE) {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
    // Upstream is HTTP/1.1 whatever the client spoke; origin-form URI.
    *request.version_mut() = hyper::Version::HTTP_11;
    if let Some(path) = request.uri().path_and_query().cloned() {
        if let Ok(uri) = hyper::Uri::builder().path_and_query(path).build() {
            *request.uri_mut() = uri;
        }
    }
}

/// Makes the sprite's `response` the one the client sees.
pub(super) fn from_upstream<B>(response: &mut Response<B>) {
    // The app cannot set (or clear) our cookies.
    if response.headers().contains_key(SET_COOKIE) {
        let kept: Vec<HeaderValue> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter(|value| !is_our_cookie(value.to_str().unwrap_or_default()))
            .cloned()
            .collect();
        response.headers_mut().remove(SET_COOKIE);
        for value in kept {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    // Hop-by-hop headers are the upstream connection's, not the client's: a server that
    // closes after each answer must not close the client's connection.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        for name in HOP_BY_HOP {
            response.headers_mut().remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> = Target {
        host: "app.localhost:7080",
        scheme: "https",
        name: "app",
    };

    fn header<'a, B>(request: &'a Request<B>, name: &str) -> Vec<&'a str> {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    #[test]
    fn our_credentials_stay_here_and_the_app_learns_where_the_request_came_from() {
        let mut request = Request::builder()
            .uri("http://app.localhost:7080/page?token=t&x=1")
            .version(hyper::Version::HTTP_2)
            .header("authorization", "Bearer t")
            .header("cookie", "a=1; sprite_auth=v1.9.x; sprite_token=old")
            .header("cookie", "b=2")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "forged")
            .body(())
            .unwrap_or_default();
        let access = Access {
            strip_authorization: true,
            location: Some("/page?x=1".into()),
        };
        to_upstream(
            &mut request,
            &access,
            "10.0.0.9".parse().unwrap_or(IpAddr::from([0; 4])),
            &TARGET,
        );
        assert_eq!(request.uri().to_string(), "/page?x=1");
        assert_eq!(request.version(), hyper::Version::HTTP_11);
        assert!(header(&request, "authorization").is_empty());
        assert_eq!(header(&request, "cookie"), ["a=1; b=2"]);
        assert!(header(&request, "connection").is_empty());
        assert!(header(&request, "keep-alive").is_empty());
        assert_eq!(header(&request, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(header(&request, "x-forwarded-host"), ["app.localhost:7080"]);
        assert_eq!(header(&request, "x-forwarded-proto"), ["https"]);
        assert_eq!(header(&request, "host"), ["app.localhost:7080"]);
    }

    #[test]
    fn an_upgrade_keeps_its_connection_header_and_a_foreign_token_passes() {
        let mut request = Request::builder()
            .uri("/ws")
            .header("authorization", "Bearer the-apps-own")
            .header("cookie", "sprite_auth=x")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap_or_default();
        let access = Access {
            strip_authorization: false,
            location: None,
        };
        to_upstream(&mut request, &access, IpAddr::from([127, 0, 0, 1]), &TARGET);
        assert_eq!(header(&request, "authorization"), ["Bearer the-apps-own"]);
        assert!(header(&request, "cookie").is_empty());
        assert_eq!(header(&request, "connection"), ["Upgrade"]);
        assert_eq!(request.uri().to_string(), "/ws");
    }

    #[test]
    fn the_app_cannot_set_our_cookies_or_close_the_clients_connection() {
        let mut response = Response::builder()
            .header("set-cookie", "session=1; Path=/")
            .header("set-cookie", "sprite_auth=forged; Path=/")
            .header("set-cookie", "Sprite_Token=x")
            .header("connection", "close")
            .body(())
            .unwrap_or_default();
        from_upstream(&mut response);
        let cookies: Vec<&str> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(cookies, ["session=1; Path=/"]);
        assert!(response.headers().get("connection").is_none());
        let mut switching = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .body(())
            .unwrap_or_default();
        from_upstream(&mut switching);
        assert!(switching.headers().get("connection").is_some());
    }
}
