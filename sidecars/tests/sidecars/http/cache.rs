//! The cache tier on real processes, checked against a real Varnish: the same scripted
//! requests go to `varnishd` and to the ambassador, each in front of its own identical
//! origin, and both must answer with the same status and send the origin the same number
//! of requests at every step. Then what Varnish has no counterpart for here: coalescing,
//! stale-if-error, the memory bound and bodies past `maxObjectSize`.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::support::{Ambassador, Client, Reply, Seen, TestBackend, one_backend, read_request};
use crate::support::{Proc, free_port, local, require_tool, wait_port};

/// What the origin answers on one path.
#[derive(Clone, Default)]
struct Resource {
    status: u16,
    /// Extra headers, `(name, value)`.
    headers: Vec<(String, String)>,
    etag: Option<String>,
    last_modified: Option<String>,
    /// The body; when empty, `<path> ae=<Accept-Encoding>` so that variants differ.
    body: Vec<u8>,
    /// Sent chunked, without a length.
    chunked: bool,
}

/// What the origin saw of one request.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    /// The status it answered.
    answered: u16,
}

/// An origin that honours `If-None-Match` and `If-Modified-Since` as a real server does
/// (a 304 when its ETag or Last-Modified matches), sends `Date`, and records every
/// request.
#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    resources: Arc<Mutex<HashMap<String, Resource>>>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            resources: Arc::default(),
            seen: Arc::default(),
        };
        let shared = origin.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = shared.clone();
                std::thread::spawn(move || me.connection(stream));
            }
        });
        origin
    }

    fn serve(&self, path: &str, resource: Resource) {
        let resource = Resource {
            status: if resource.status == 0 {
                200
            } else {
                resource.status
            },
            ..resource
        };
        self.resources
            .lock()
            .unwrap()
            .insert(path.to_owned(), resource);
    }

    /// Requests for `path` so far.
    fn hits(&self, path: &str) -> u64 {
        self.requests(path).len() as u64
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|r| r.path == path).cloned().collect()
    }

    fn connection(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        while let Some(Seen {
            method,
            path,
            headers,
            ..
        }) = read_request(&mut reader)
        {
            let resource = self.resources.lock().unwrap().get(&path).cloned();
            let resource = resource.unwrap_or(Resource {
                status: 404,
                headers: vec![("Cache-Control".into(), "no-store".into())],
                ..Default::default()
            });
            let matched = match (&resource.etag, headers.get("if-none-match")) {
                (Some(etag), Some(inm)) => inm.split(',').any(|t| t.trim() == etag),
                (_, Some(_)) => false,
                (_, None) => match (&resource.last_modified, headers.get("if-modified-since")) {
                    (Some(lm), Some(ims)) => lm == ims,
                    _ => false,
                },
            };
            let status = if matched { 304 } else { resource.status };
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nDate: {}\r\n",
                http_date(SystemTime::now())
            );
            for (k, v) in &resource.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            if let Some(etag) = &resource.etag {
                head.push_str(&format!("ETag: {etag}\r\n"));
            }
            if let Some(lm) = &resource.last_modified {
                head.push_str(&format!("Last-Modified: {lm}\r\n"));
            }
            let payload = if resource.body.is_empty() {
                let ae = headers.get("accept-encoding").map_or("-", String::as_str);
                format!("{path} ae={ae}\n").into_bytes()
            } else {
                resource.body.clone()
            };
            let mut out = Vec::new();
            if status == 304 {
                head.push_str("\r\n");
                out.extend_from_slice(head.as_bytes());
            } else if resource.chunked {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(head.as_bytes());
                if method != "HEAD" {
                    for chunk in payload.chunks(4096) {
                        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            } else {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
                out.extend_from_slice(head.as_bytes());
                if method != "HEAD" {
                    out.extend_from_slice(&payload);
                }
            }
            self.seen.lock().unwrap().push(Request {
                method,
                path,
                headers,
                answered: status,
            });
            if writer.write_all(&out).is_err() {
                return;
            }
        }
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[month as usize - 1],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `varnishd` in the foreground in front of `backend`, with its builtin VCL.
struct Varnish {
    _proc: Proc,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Varnish {
    /// Varnish's defaults but three: `default_grace=0` and `default_keep=1h`, so that an
    /// expired object is revalidated while the client waits (by default Varnish serves it
    /// for 10 s more and revalidates in the background; the ambassador does not do
    /// that); and `http_gzip_support=off`, so that `Accept-Encoding` reaches the origin
    /// and `Vary` compares it as the client sent it (Varnish otherwise rewrites it to
    /// `gzip` and compresses itself, which the ambassador does not).
    fn start(backend: SocketAddr) -> Varnish {
        let varnishd = require_tool("varnishd");
        let dir = tempfile::tempdir().unwrap();
        let addr = local(free_port());
        let proc = Proc::spawn(
            varnishd,
            &[
                "-F",
                "-a",
                &addr.to_string(),
                "-b",
                &backend.to_string(),
                "-n",
                dir.path().join("varnish").to_str().unwrap(),
                "-s",
                "malloc,16m",
                "-p",
                "default_grace=0",
                "-p",
                "default_keep=3600",
                "-p",
                "http_gzip_support=off",
            ],
        );
        // It compiles its VCL with cc before it listens.
        wait_port(addr, Duration::from_secs(60));
        Varnish {
            _proc: proc,
            addr,
            _dir: dir,
        }
    }
}

fn resource(headers: &[(&str, &str)]) -> Resource {
    Resource {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// What one step of the script saw.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    name: &'static str,
    status: u16,
    /// The origin's requests for the path so far.
    origin_hits: u64,
    /// Whether the answer had `Age`; only recorded for steps that should be hits.
    age_on_hit: Option<bool>,
    body: String,
}

/// The script, against `front` with `origin` behind it.
struct Script<'a> {
    client: Client,
    origin: &'a Origin,
    steps: Vec<Step>,
}

impl Script<'_> {
    fn send(
        &mut self,
        name: &'static str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        hit: bool,
    ) -> Reply {
        let reply = self.client.request(method, path, headers, b"").unwrap();
        self.steps.push(Step {
            name,
            status: reply.status,
            origin_hits: self.origin.hits(path),
            age_on_hit: hit.then(|| reply.header("age").is_some()),
            body: reply.text(),
        });
        reply
    }

    fn get(
        &mut self,
        name: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        hit: bool,
    ) -> Reply {
        self.send(name, "GET", path, headers, hit)
    }
}

const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// The scripted requests, with what each origin serves. Returns the steps seen.
fn script(front: SocketAddr, origin: &Origin) -> Vec<Step> {
    let now = SystemTime::now();
    let in_a_minute = http_date(now + Duration::from_secs(60));
    let a_minute_ago = http_date(now - Duration::from_secs(60));
    let serve = |path: &str, headers: &[(&str, &str)]| origin.serve(path, resource(headers));
    serve("/fresh", &[("Cache-Control", "max-age=60")]);
    serve("/head", &[("Cache-Control", "max-age=60")]);
    origin.serve(
        "/etag",
        Resource {
            etag: Some("\"v1\"".into()),
            ..resource(&[("Cache-Control", "max-age=1")])
        },
    );
    origin.serve(
        "/lm",
        Resource {
            last_modified: Some(LAST_MODIFIED.into()),
            ..resource(&[("Cache-Control", "max-age=1")])
        },
    );
    serve("/no-store", &[("Cache-Control", "no-store")]);
    serve("/private", &[("Cache-Control", "private, max-age=60")]);
    origin.serve(
        "/no-cache",
        Resource {
            etag: Some("\"n1\"".into()),
            ..resource(&[("Cache-Control", "no-cache")])
        },
    );
    serve(
        "/cookie",
        &[("Cache-Control", "max-age=60"), ("Set-Cookie", "s=1")],
    );
    serve(
        "/vary",
        &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")],
    );
    origin.serve(
        "/cond",
        Resource {
            etag: Some("\"c1\"".into()),
            last_modified: Some(LAST_MODIFIED.into()),
            ..resource(&[("Cache-Control", "max-age=60")])
        },
    );
    origin.serve(
        "/cond-miss",
        Resource {
            etag: Some("\"m1\"".into()),
            ..resource(&[("Cache-Control", "max-age=60")])
        },
    );
    serve("/auth", &[("Cache-Control", "max-age=60")]);
    serve("/default", &[]);
    origin.serve(
        "/missing",
        Resource {
            status: 404,
            ..Default::default()
        },
    );
    origin.serve(
        "/error",
        Resource {
            status: 500,
            ..resource(&[("Cache-Control", "max-age=60")])
        },
    );
    serve("/aged", &[("Cache-Control", "max-age=60"), ("Age", "30")]);
    serve(
        "/too-old",
        &[("Cache-Control", "max-age=60"), ("Age", "100")],
    );
    serve("/expires", &[("Expires", &in_a_minute)]);
    serve("/expired", &[("Expires", &a_minute_ago)]);
    serve("/s-maxage", &[("Cache-Control", "max-age=0, s-maxage=60")]);

    let mut s = Script {
        client: Client::new(front),
        origin,
        steps: Vec::new(),
    };
    s.get("miss", "/fresh", &[], false);
    s.get("hit after miss", "/fresh", &[], true);
    s.send("HEAD from the stored GET", "HEAD", "/fresh", &[], true);

    s.send("HEAD miss", "HEAD", "/head", &[], false);
    s.get("GET after a HEAD miss", "/head", &[], true);

    s.get("max-age=1 with ETag", "/etag", &[], false);
    s.get("max-age=1 with ETag, hit", "/etag", &[], true);
    s.get("max-age=1 with Last-Modified", "/lm", &[], false);
    // The origin's 304s will say max-age=60: the refreshed headers give the freshness.
    for (path, etag, last_modified) in [
        ("/etag", Some("\"v1\""), None),
        ("/lm", None, Some(LAST_MODIFIED)),
    ] {
        origin.serve(
            path,
            Resource {
                etag: etag.map(Into::into),
                last_modified: last_modified.map(Into::into),
                ..resource(&[("Cache-Control", "max-age=60")])
            },
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    s.get(
        "expired: revalidated with If-None-Match",
        "/etag",
        &[],
        false,
    );
    s.get("refreshed by the 304", "/etag", &[], true);
    s.get(
        "expired: revalidated with If-Modified-Since",
        "/lm",
        &[],
        false,
    );
    s.get("refreshed by the 304", "/lm", &[], true);

    s.get("no-store", "/no-store", &[], false);
    s.get("no-store again", "/no-store", &[], false);
    s.get("private", "/private", &[], false);
    s.get("private again", "/private", &[], false);
    s.get("no-cache", "/no-cache", &[], false);
    s.get("no-cache again", "/no-cache", &[], false);
    s.get("Set-Cookie", "/cookie", &[], false);
    s.get("Set-Cookie again", "/cookie", &[], false);

    let gzip = [("Accept-Encoding", "gzip")];
    let identity = [("Accept-Encoding", "identity")];
    s.get("Vary: first variant", "/vary", &gzip, false);
    s.get("Vary: second variant", "/vary", &identity, false);
    s.get("Vary: first variant, hit", "/vary", &gzip, true);
    s.get("Vary: second variant, hit", "/vary", &identity, true);

    s.get("conditional: fill", "/cond", &[], false);
    s.get(
        "If-None-Match matching",
        "/cond",
        &[("If-None-Match", "\"c1\"")],
        true,
    );
    s.get(
        "If-None-Match other",
        "/cond",
        &[("If-None-Match", "\"c0\"")],
        true,
    );
    s.get(
        "If-Modified-Since",
        "/cond",
        &[("If-Modified-Since", LAST_MODIFIED)],
        true,
    );
    s.get(
        "If-None-Match on a miss",
        "/cond-miss",
        &[("If-None-Match", "\"m1\"")],
        false,
    );
    s.get("then a hit", "/cond-miss", &[], true);

    s.get("auth: fill", "/auth", &[], false);
    s.get(
        "Authorization passes",
        "/auth",
        &[("Authorization", "Bearer x")],
        false,
    );
    s.get("Cookie passes", "/auth", &[("Cookie", "session=1")], false);
    s.get("auth: still a hit", "/auth", &[], true);

    s.get("no freshness: default TTL", "/default", &[], false);
    s.get("no freshness: hit", "/default", &[], true);
    s.get("404 with the default TTL", "/missing", &[], false);
    s.get("404 hit", "/missing", &[], true);
    s.get("500", "/error", &[], false);
    s.get("500 never stored", "/error", &[], false);

    s.get("Age 30 of 60", "/aged", &[], false);
    let hit = s.get("Age 30 of 60, hit", "/aged", &[], true);
    let age: u64 = hit.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
    assert!(age >= 30, "the backend's Age is counted: {age}");
    s.get("Age 100 of 60", "/too-old", &[], false);
    s.get("Age 100 of 60: stale on arrival", "/too-old", &[], false);

    s.get("Expires in a minute", "/expires", &[], false);
    s.get("Expires in a minute, hit", "/expires", &[], true);
    s.get("Expires a minute ago", "/expired", &[], false);
    s.get("Expires a minute ago, again", "/expired", &[], false);
    s.get("s-maxage wins over max-age", "/s-maxage", &[], false);
    s.get("s-maxage wins, hit", "/s-maxage", &[], true);
    s.steps
}

#[test]
fn the_ambassador_caches_as_varnish_does() {
    let for_varnish = Origin::start();
    let for_ambassador = Origin::start();
    let varnish = Varnish::start(for_varnish.addr);
    // Varnish's default TTL is 2 minutes; the ambassador's is set to the same.
    let config = format!(
        "{}cache: {{defaultTtl: 2m}}\n",
        one_backend(&[for_ambassador.addr], "    cache: true\n", "")
    );
    let amb = Ambassador::start(&config);

    let (varnish_steps, ambassador_steps) = std::thread::scope(|scope| {
        let v = scope.spawn(|| script(varnish.addr, &for_varnish));
        let a = scope.spawn(|| script(amb.listen, &for_ambassador));
        (v.join().unwrap(), a.join().unwrap())
    });
    for (v, a) in varnish_steps.iter().zip(&ambassador_steps) {
        assert_eq!(
            (v.status, v.origin_hits, v.age_on_hit, &v.body),
            (a.status, a.origin_hits, a.age_on_hit, &a.body),
            "step {:?}: Varnish (left) and the ambassador (right) differ",
            v.name
        );
    }
    assert_eq!(varnish_steps.len(), ambassador_steps.len());

    // And the ambassador's answers are right, not just Varnish's.
    let step = |name: &str| {
        ambassador_steps
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.status, s.origin_hits))
            .collect::<Vec<_>>()
    };
    assert_eq!(step("hit after miss"), [(200, 1)]);
    assert_eq!(step("GET after a HEAD miss"), [(200, 1)]);
    assert_eq!(step("refreshed by the 304"), [(200, 2), (200, 2)]);
    assert_eq!(step("no-store again"), [(200, 2)]);
    assert_eq!(step("Vary: second variant, hit"), [(200, 2)]);
    assert_eq!(step("If-None-Match matching"), [(304, 1)]);
    assert_eq!(step("If-Modified-Since"), [(304, 1)]);
    assert_eq!(step("If-None-Match on a miss"), [(304, 1)]);
    assert_eq!(step("auth: still a hit"), [(200, 3)]);
    assert_eq!(step("404 hit"), [(404, 1)]);
    assert_eq!(step("500 never stored"), [(500, 2)]);
    let vary: Vec<&str> = ambassador_steps
        .iter()
        .filter(|s| s.name.starts_with("Vary"))
        .map(|s| s.body.trim())
        .collect();
    assert_eq!(
        vary,
        [
            "/vary ae=gzip",
            "/vary ae=identity",
            "/vary ae=gzip",
            "/vary ae=identity"
        ]
    );

    // What the origins saw: a HEAD miss fetched a GET; an expired response was
    // revalidated, and the origin's 304 refreshed it; a client's condition on a miss is
    // not sent on (the whole response is fetched to be stored).
    for origin in [&for_varnish, &for_ambassador] {
        let head = origin.requests("/head");
        assert_eq!(head[0].method, "GET", "a HEAD miss fetches a GET");
        let etag = origin.requests("/etag");
        assert_eq!(
            etag[1].headers.get("if-none-match").map(String::as_str),
            Some("\"v1\"")
        );
        assert_eq!(etag[1].answered, 304);
        let lm = origin.requests("/lm");
        assert_eq!(
            lm[1].headers.get("if-modified-since").map(String::as_str),
            Some(LAST_MODIFIED)
        );
        assert_eq!(lm[1].answered, 304);
        assert!(
            !origin.requests("/cond-miss")[0]
                .headers
                .contains_key("if-none-match")
        );
    }
    // Where the two differ by design: RFC 9111 §5.2.2.4 lets a cache store a no-cache
    // response and revalidate it on every use, which the ambassador does; Varnish's
    // builtin VCL does not store it. The origin sees as many requests from either, but the
    // ambassador's are conditional, and answered with a 304 instead of the body.
    let no_cache = |origin: &Origin| {
        origin
            .requests("/no-cache")
            .iter()
            .map(|r| r.answered)
            .collect::<Vec<_>>()
    };
    assert_eq!(no_cache(&for_varnish), [200, 200]);
    assert_eq!(no_cache(&for_ambassador), [200, 304]);
    // Revalidated: /etag, /lm and the second /no-cache; passed: Authorization, Cookie.
    assert_eq!(result(&amb, "revalidated"), 3.0);
    assert_eq!(result(&amb, "pass"), 2.0);
}

fn cached_config(backend: SocketAddr, cache: &str) -> String {
    format!(
        "{}cache: {cache}\n",
        one_backend(&[backend], "    cache: true\n", "")
    )
}

fn result(amb: &Ambassador, result: &str) -> f64 {
    amb.metric(&format!(
        "rigging_http_cache_requests_total{{result=\"{result}\"}}"
    ))
}

#[test]
fn concurrent_misses_for_one_key_make_one_backend_request() {
    let backend = TestBackend::start("slow");
    backend.delay_ms.store(500, Ordering::SeqCst);
    backend
        .headers
        .lock()
        .unwrap()
        .push("Cache-Control: max-age=60".into());
    let amb = Ambassador::start(&cached_config(backend.addr, "{}"));
    let start = Arc::new(Barrier::new(20));
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let start = start.clone();
                let listen = amb.listen;
                scope.spawn(move || {
                    let mut client = Client::new(listen);
                    start.wait();
                    client.get("/slow", &[]).unwrap()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.text() == "slow\n"),
        "{replies:?}"
    );
    assert_eq!(backend.hits(), 1, "one fetch for twenty requests");
    assert_eq!((result(&amb, "miss"), result(&amb, "hit")), (1.0, 19.0));
}

#[test]
fn waiters_for_an_uncacheable_response_each_go_to_the_backend() {
    let backend = TestBackend::start("personal");
    backend.delay_ms.store(300, Ordering::SeqCst);
    backend
        .headers
        .lock()
        .unwrap()
        .push("Cache-Control: private".into());
    let amb = Ambassador::start(&cached_config(backend.addr, "{}"));
    let start = Arc::new(Barrier::new(10));
    let ok = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let start = start.clone();
                let listen = amb.listen;
                scope.spawn(move || {
                    let mut client = Client::new(listen);
                    start.wait();
                    client.get("/me", &[]).unwrap().status == 200
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(ok, 10);
    assert_eq!(
        backend.hits(),
        10,
        "nobody got another client's private answer"
    );
    assert_eq!(result(&amb, "hit"), 0.0);
}

#[test]
fn a_stale_response_is_served_when_the_backend_fails_within_stale_if_error() {
    let backend = TestBackend::start("v1");
    let set_headers = |lines: &[&str]| {
        *backend.headers.lock().unwrap() = lines.iter().map(|l| l.to_string()).collect();
    };
    let amb = Ambassador::start(&cached_config(backend.addr, "{staleIfError: 1m}"));
    let mut c = Client::new(amb.listen);
    set_headers(&["Cache-Control: max-age=1"]);
    assert_eq!(c.get("/a", &[]).unwrap().status, 200);
    set_headers(&["Cache-Control: max-age=1, must-revalidate"]);
    assert_eq!(c.get("/strict", &[]).unwrap().status, 200);
    set_headers(&["Cache-Control: max-age=1, stale-if-error=1"]);
    assert_eq!(c.get("/short", &[]).unwrap().status, 200);

    backend.status.store(500, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    let reply = c.get("/a", &[]).unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "v1\n"),
        "stale in place of a 500"
    );
    assert!(reply.header("age").is_some());
    assert_eq!(
        c.get("/strict", &[]).unwrap().status,
        500,
        "must-revalidate forbids a stale answer"
    );
    // Unreachable: the ambassador's own 502 is a failure too.
    backend.broken.store(true, Ordering::SeqCst);
    let reply = c.get("/a", &[]).unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "v1\n"),
        "stale in place of a 502"
    );
    backend.broken.store(false, Ordering::SeqCst);
    assert_eq!(result(&amb, "stale"), 2.0);
    // The response's own stale-if-error=1 wins over the config's minute.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(c.get("/short", &[]).unwrap().status, 500);

    // The backend back: the stale response is replaced.
    backend.status.store(200, Ordering::SeqCst);
    *backend.body.lock().unwrap() = Some(b"v2\n".to_vec());
    set_headers(&["Cache-Control: max-age=60"]);
    assert_eq!(c.get("/a", &[]).unwrap().text(), "v2\n");
    assert_eq!(c.get("/a", &[]).unwrap().text(), "v2\n");
    assert_eq!(result(&amb, "hit"), 1.0);
}

#[test]
fn the_cache_stays_within_max_size_evicting_the_least_recently_used() {
    let backend = TestBackend::start("big");
    *backend.body.lock().unwrap() = Some(vec![b'x'; 4000]);
    backend
        .headers
        .lock()
        .unwrap()
        .push("Cache-Control: max-age=600".into());
    let max = 64 * 1024;
    let amb = Ambassador::start(&cached_config(
        backend.addr,
        "{maxSize: 64Ki, maxObjectSize: 16Ki}",
    ));
    let mut c = Client::new(amb.listen);
    let bytes = || amb.metric("rigging_http_cache_bytes");
    let objects = || amb.metric("rigging_http_cache_objects");
    let path = |i: usize| format!("/obj-{i:03}");
    assert_eq!(c.get(&path(0), &[]).unwrap().body.len(), 4000);
    let one = bytes();
    assert!(
        one > 4000.0 && one < 8000.0,
        "one response counts {one} bytes"
    );
    let fit = (max as f64 / one) as usize;
    for i in 1..fit {
        c.get(&path(i), &[]).unwrap();
    }
    assert_eq!(objects(), fit as f64, "{fit} responses fit");
    assert_eq!(backend.hits(), fit as u64);
    // obj-000 used again: obj-001 is now the least recently used, and goes first.
    c.get(&path(0), &[]).unwrap();
    c.get(&path(fit), &[]).unwrap();
    assert!(bytes() <= max as f64, "{} bytes", bytes());
    assert_eq!(objects(), fit as f64);
    let hits = backend.hits();
    c.get(&path(0), &[]).unwrap();
    assert_eq!(backend.hits(), hits, "obj-000 stayed");
    c.get(&path(1), &[]).unwrap();
    assert_eq!(backend.hits(), hits + 1, "obj-001 was evicted");
    // Many more: memory stays bounded all along.
    for i in 100..100 + 4 * fit {
        c.get(&path(i), &[]).unwrap();
        assert!(bytes() <= max as f64, "{} bytes after {i}", bytes());
    }
    assert_eq!(objects(), fit as f64);
}

#[test]
fn a_body_past_max_object_size_streams_through_unstored() {
    let origin = Origin::start();
    let big: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (path, chunked) in [("/sized", false), ("/chunked", true)] {
        origin.serve(
            path,
            Resource {
                body: big.clone(),
                chunked,
                ..resource(&[("Cache-Control", "max-age=60")])
            },
        );
    }
    origin.serve("/small", resource(&[("Cache-Control", "max-age=60")]));
    let amb = Ambassador::start(&cached_config(origin.addr, "{maxObjectSize: 16Ki}"));
    let mut c = Client::new(amb.listen);
    for path in ["/sized", "/chunked"] {
        for _ in 0..2 {
            let reply = c.get(path, &[]).unwrap();
            assert_eq!(reply.status, 200);
            assert!(reply.body == big, "{path}: the whole body, in order");
        }
        assert_eq!(origin.hits(path), 2, "{path} was not stored");
    }
    assert_eq!(amb.metric("rigging_http_cache_objects"), 0.0);
    c.get("/small", &[]).unwrap();
    assert_eq!(amb.metric("rigging_http_cache_objects"), 1.0);
}

#[test]
fn waiters_fetch_again_when_the_fetch_they_wait_for_is_abandoned() {
    let backend = TestBackend::start("slow");
    backend.delay_ms.store(1000, Ordering::SeqCst);
    backend
        .headers
        .lock()
        .unwrap()
        .push("Cache-Control: max-age=60".into());
    let amb = Ambassador::start(&cached_config(backend.addr, "{}"));
    // The first client asks, then hangs up while its fetch is in flight.
    let mut first = TcpStream::connect(amb.listen).unwrap();
    // The same Host as Client's: the host is part of the key.
    write!(first, "GET /slow HTTP/1.1\r\nHost: {}\r\n\r\n", amb.listen).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let listen = amb.listen;
                scope.spawn(move || Client::new(listen).get("/slow", &[]).unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
        waiters.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.text() == "slow\n"),
        "{replies:?}"
    );
    assert_eq!(
        backend.hits(),
        2,
        "the abandoned fetch, then one for all the waiters"
    );
}
