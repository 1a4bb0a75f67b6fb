//! Transport checks on the raw HTTP request, before the body is parsed: method, Origin and Host
//! (DNS-rebinding protection), Content-Type, Accept and body size.

use http::Method;

use crate::config::Config;
use crate::error::Rejection;
use crate::http::{Request, authority_of, origin_of};

/// Runs every transport check in order; the first failure wins.
pub fn check(req: &Request<'_>, config: &Config) -> Result<(), Rejection> {
    if req.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed);
    }
    check_origin(req, config)?;
    let content_type = req.header("content-type").unwrap_or("");
    if !media_type_is(content_type, "application/json") {
        return Err(Rejection::UnsupportedMediaType);
    }
    if let Some(accept) = req.header("accept")
        && !accepts_json(accept)
    {
        return Err(Rejection::NotAcceptable);
    }
    if req.body_len_hint() > config.max_body_bytes {
        return Err(Rejection::PayloadTooLarge {
            limit: config.max_body_bytes,
        });
    }
    Ok(())
}

/// Origin must be absent (a non-browser agent) or allowed; on a loopback deployment the Host
/// must be loopback too, so a DNS-rebinding page cannot reach a local server.
pub fn check_origin(req: &Request<'_>, config: &Config) -> Result<(), Rejection> {
    let host = req.header("host");
    let resource_host = config.resource_url.as_deref().and_then(authority_of);
    let local_deployment = resource_host.is_none_or(is_loopback_authority);
    if local_deployment
        && let Some(h) = host
        && !is_loopback_authority(h)
    {
        return Err(Rejection::ForbiddenOrigin);
    }
    let Some(origin) = req.header("origin") else {
        return Ok(());
    };
    let origin = origin.trim_end_matches('/');
    if config.allowed_origins.iter().any(|o| o == origin) {
        return Ok(());
    }
    if let Some(url) = &config.resource_url
        && origin_of(url).is_some_and(|o| o.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    // A loopback server accepts its own loopback origin (same host and port as the request).
    if local_deployment
        && let (Some(h), Some(o)) = (host, authority_of(origin))
        && is_loopback_authority(o)
        && o.eq_ignore_ascii_case(h)
    {
        return Ok(());
    }
    Err(Rejection::ForbiddenOrigin)
}

fn media_type_is(header: &str, expected: &str) -> bool {
    header
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(expected))
}

fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let t = part.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case("application/json")
            || t.eq_ignore_ascii_case("application/*")
            || t == "*/*"
    })
}

fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::event_from_parts;

    fn config(resource: Option<&str>, origins: &[&str]) -> Config {
        let mut c = Config::from_lookup(|_| None).expect("config");
        c.resource_url = resource.map(str::to_owned);
        c.allowed_origins = origins.iter().map(|s| (*s).to_owned()).collect();
        c
    }

    fn check_with(method: &str, headers: &[(&str, &str)], c: &Config) -> Result<(), Rejection> {
        let ev = event_from_parts(
            method,
            "/mcp",
            headers.iter().copied(),
            Some(b"{}"),
            "r",
            "127.0.0.1",
        );
        check(&Request::new(&ev), c)
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn only_post() {
        let c = config(None, &[]);
        assert_eq!(
            check_with("GET", &[JSON], &c),
            Err(Rejection::MethodNotAllowed)
        );
        assert_eq!(
            check_with("DELETE", &[JSON], &c),
            Err(Rejection::MethodNotAllowed)
        );
        assert_eq!(check_with("POST", &[JSON], &c), Ok(()));
    }

    #[test]
    fn origin_rules() {
        let c = config(
            Some("https://mcp.example.com/mcp"),
            &["https://app.example.com"],
        );
        let ok = |o: &str| {
            check_with(
                "POST",
                &[JSON, ("origin", o), ("host", "mcp.example.com")],
                &c,
            )
        };
        assert_eq!(ok("https://mcp.example.com"), Ok(()));
        assert_eq!(ok("https://app.example.com"), Ok(()));
        assert_eq!(
            ok("https://evil.example.com"),
            Err(Rejection::ForbiddenOrigin)
        );
        assert_eq!(ok("null"), Err(Rejection::ForbiddenOrigin));
    }

    #[test]
    fn loopback_deployment_refuses_foreign_host() {
        let c = config(Some("http://127.0.0.1:9000/mcp"), &[]);
        let h = |host: &str, origin: &str| {
            check_with("POST", &[JSON, ("host", host), ("origin", origin)], &c)
        };
        assert_eq!(h("127.0.0.1:9000", "http://127.0.0.1:9000"), Ok(()));
        assert_eq!(h("localhost:9100", "http://localhost:9100"), Ok(()));
        assert_eq!(
            h("evil.example.com", "http://evil.example.com"),
            Err(Rejection::ForbiddenOrigin)
        );
        assert_eq!(
            h("127.0.0.1:9000", "http://evil.example.com"),
            Err(Rejection::ForbiddenOrigin)
        );
        assert_eq!(
            check_with("POST", &[JSON, ("host", "evil.example.com")], &c),
            Err(Rejection::ForbiddenOrigin)
        );
    }

    #[test]
    fn content_type_and_accept() {
        let c = config(None, &[]);
        assert_eq!(
            check_with("POST", &[], &c),
            Err(Rejection::UnsupportedMediaType)
        );
        assert_eq!(
            check_with("POST", &[("content-type", "text/plain")], &c),
            Err(Rejection::UnsupportedMediaType)
        );
        assert_eq!(
            check_with(
                "POST",
                &[("content-type", "application/json; charset=utf-8")],
                &c
            ),
            Ok(())
        );
        assert_eq!(
            check_with("POST", &[JSON, ("accept", "text/html")], &c),
            Err(Rejection::NotAcceptable)
        );
        assert_eq!(
            check_with(
                "POST",
                &[JSON, ("accept", "application/json, text/event-stream")],
                &c
            ),
            Ok(())
        );
        assert_eq!(check_with("POST", &[JSON, ("accept", "*/*")], &c), Ok(()));
    }

    #[test]
    fn body_limit() {
        let mut c = config(None, &[]);
        c.max_body_bytes = 1;
        assert_eq!(
            check_with("POST", &[JSON], &c),
            Err(Rejection::PayloadTooLarge { limit: 1 })
        );
    }
}
