//! Header handling every forwarding sidecar must agree on.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// An HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header (WebSocket).
pub fn wants_upgrade<B>(req: &http::Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Why a request cannot be forwarded as it is, if it cannot: the answer is 400 (405 for
/// CONNECT), never a guess at what the client meant.
///
/// RFC 9112 §3.2: an HTTP/1.1 request must have exactly one `Host`; with two, the app
/// could see a host other than the one routing used. CONNECT asks for a tunnel to another
/// host, which no Rigging sidecar offers.
pub fn host_error(parts: &Parts) -> Option<&'static str> {
    if parts.method == Method::CONNECT {
        return Some("CONNECT is not served here: this is not a forward proxy\n");
    }
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    match parts.version {
        Version::HTTP_11 if hosts == 0 => Some("an HTTP/1.1 request needs a Host header\n"),
        Version::HTTP_2 if hosts == 0 && parts.uri.authority().is_none() => {
            Some("an HTTP/2 request needs :authority or Host\n")
        }
        _ if hosts > 1 => Some("a request may carry only one Host header\n"),
        _ => None,
    }
}

/// Readies a request for an HTTP/1.1 connection to an upstream: the target in origin form
/// (`/path?query`) and the host in `Host`, which HTTP/2 carries as `:authority` and an
/// absolute-form request in its target (RFC 9112 §3.2.2: the target's authority wins).
pub fn to_origin_form(parts: &mut Parts) {
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
        && (parts.version == Version::HTTP_2 || parts.uri.scheme().is_some())
    {
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
}

/// Removes headers that describe one hop, not the message (RFC 9110 §7.6.1): a client's
/// `Connection: close` must not close the pooled connection to the upstream, and
/// `Transfer-Encoding` is each hop's own framing. On an upgrade, `Connection: upgrade`
/// and `Upgrade` are exactly what must pass.
///
/// It runs twice on every proxied request, so it looks at the header names once and
/// removes only those present: a removal hashes and probes even for a name not there.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    // `HOP_BY_HOP[0]` is `Connection`.
    if present[0] {
        // Headers the sender named in `Connection` are hop-by-hop too. Rare beyond the
        // fixed ones (`Connection: keep-alive`): only then is anything collected.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        let kept = upgrading && (name == header::CONNECTION || name == header::UPGRADE);
        if present && !kept {
            headers.remove(name);
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, UPGRADE.clone());
    }
}

/// The hop-by-hop headers every message loses (RFC 9110 §7.6.1), `Connection` first.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
/// Appends the client's address to `X-Forwarded-For`, as nginx's
/// `$proxy_add_x_forwarded_for` does.
pub fn add_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    match headers.get(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        }
        Some(earlier) => {
            let mut joined = Vec::with_capacity(earlier.len() + 2 + peer_ip.len());
            joined.extend_from_slice(earlier.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
    }
}

/// Sets `X-Forwarded-Proto` and `X-Forwarded-Host`, overwriting what the client sent: for
/// the edge of the pod (the TLS terminator), which alone knows them. A proxy behind
/// another one leaves them as they came.
pub fn set_forwarded_proto_and_host(headers: &mut HeaderMap, proto: &HeaderValue) {
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_clients_connection_close_and_named_headers_do_not_pass() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn an_upgrade_keeps_connection_upgrade_and_the_upgrade_header() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_for_appends_and_proto_and_host_are_overwritten_at_the_edge() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("host", "shop.example"),
        ]);
        add_forwarded_for(&mut h, &HeaderValue::from_static("192.0.2.7"));
        set_forwarded_proto_and_host(&mut h, &HeaderValue::from_static("https"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");

        let mut spoofed = headers(&[("x-forwarded-host", "evil.example")]);
        set_forwarded_proto_and_host(&mut spoofed, &HeaderValue::from_static("https"));
        assert!(!spoofed.contains_key("x-forwarded-host"));
    }

    #[test]
    fn http11_needs_exactly_one_host_and_connect_is_refused() {
        let ok = parts(Request::builder().uri("/").header("host", "a"));
        assert_eq!(host_error(&ok), None);
        let none = parts(Request::builder().uri("/"));
        assert!(host_error(&none).unwrap().contains("needs a Host"));
        let two = parts(
            Request::builder()
                .uri("/")
                .header("host", "a")
                .header("host", "b"),
        );
        assert!(host_error(&two).unwrap().contains("only one Host"));
        let old = parts(Request::builder().uri("/").version(Version::HTTP_10));
        assert_eq!(host_error(&old), None);
        let h2 = parts(
            Request::builder()
                .uri("https://a/x")
                .version(Version::HTTP_2),
        );
        assert_eq!(host_error(&h2), None);
        let connect = parts(
            Request::builder()
                .method(Method::CONNECT)
                .uri("db.example:5432")
                .header("host", "db.example:5432"),
        );
        assert!(host_error(&connect).unwrap().contains("CONNECT"));
    }

    #[test]
    fn origin_form_takes_the_host_from_the_authority() {
        let mut h2 = parts(
            Request::builder()
                .uri("https://shop.example/cart?id=1")
                .version(Version::HTTP_2),
        );
        to_origin_form(&mut h2);
        assert_eq!(h2.uri, "/cart?id=1");
        assert_eq!(h2.headers["host"], "shop.example");
        assert_eq!(h2.version, Version::HTTP_11);

        let mut absolute = parts(
            Request::builder()
                .uri("http://a.example/x")
                .header("host", "b.example"),
        );
        to_origin_form(&mut absolute);
        assert_eq!(absolute.uri, "/x");
        assert_eq!(absolute.headers["host"], "a.example");

        let mut plain = parts(Request::builder().uri("/y").header("host", "c.example"));
        to_origin_form(&mut plain);
        assert_eq!(plain.uri, "/y");
        assert_eq!(plain.headers["host"], "c.example");
    }

    use http::Request;
}
