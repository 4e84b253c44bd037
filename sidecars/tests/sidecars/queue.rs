//! `rigging-sidecar queue` against a real `nats-server` with JetStream: publishing with
//! idempotency keys, deliveries to an app over HTTP, retries and dead letters, the built-in
//! stages, flow control, and what a kill -9 of a stage or a restart of the broker leaves
//! downstream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Nats, Proc, free_port, local, metric, wait_ready};

/// A queue sidecar: its process, its publish address and its admin address.
struct Queue {
    proc: Proc,
    listen: SocketAddr,
    admin: SocketAddr,
    /// The keep-alive connection `publish` uses.
    conn: Mutex<Option<BufReader<TcpStream>>>,
}

impl Queue {
    fn start(nats: &Nats, args: &[&str]) -> Queue {
        let listen = local(free_port());
        let admin = local(free_port());
        let (l, a, url) = (listen.to_string(), admin.to_string(), nats.url());
        let mut all = vec![
            "queue",
            "--nats",
            &url,
            "--listen",
            &l,
            "--admin",
            &a,
            "--backoff",
            "100ms",
        ];
        all.extend_from_slice(args);
        let proc = Proc::sidecar(&all);
        wait_ready(admin, Duration::from_secs(20));
        Queue {
            proc,
            listen,
            admin,
            conn: Mutex::new(None),
        }
    }

    /// `POST /publish/{topic}` on one keep-alive connection: a test publishing thousands
    /// of messages must not spend thousands of ephemeral ports, which the other tests pick
    /// their listening ports from.
    fn publish(&self, topic: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let key = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
        let request = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut conn = self.conn.lock().unwrap();
        // A connection the sidecar closed (it restarted, or timed it out) is made again once.
        let answer = match conn.as_mut().map(|c| exchange(c, &request)) {
            Some(Ok(answer)) => answer,
            _ => {
                let stream = TcpStream::connect(self.listen).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let fresh = conn.insert(BufReader::new(stream));
                exchange(fresh, &request).expect("an answer")
            }
        };
        let (status, body) = answer;
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        (status, json)
    }

    fn metric(&self, series: &str) -> f64 {
        metric(self.admin, series)
    }
}

/// One request and its answer (status, body) on a keep-alive connection.
fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> std::io::Result<(u16, String)> {
    conn.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a status line: {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One delivery as the app saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HashMap<String, String>,
    body: String,
}

/// What the app answers: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

/// A test app receiving deliveries: records each, answers with `respond`, one thread per
/// connection so that slow answers overlap, and counts the deliveries it holds at once.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl App {
    fn start(respond: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App {
            addr,
            seen: Arc::default(),
            now: Arc::default(),
            most: Arc::default(),
        };
        let respond = Arc::new(respond);
        let (seen, now, most) = (app.seen.clone(), app.now.clone(), app.most.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (respond, seen, now, most) =
                    (respond.clone(), seen.clone(), now.clone(), most.clone());
                std::thread::spawn(move || serve(stream, &*respond, &seen, &now, &most));
            }
        });
        app
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the app has seen `n` deliveries.
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the app saw {} deliveries of {n} after {timeout:?}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `id` field of each JSON body seen, with how many times it came.
    fn ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for seen in self.seen() {
            let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
            *ids.entry(body["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        ids
    }
}

fn serve(
    mut stream: TcpStream,
    respond: &dyn Fn(&Seen) -> Answer,
    seen: &Mutex<Vec<Seen>>,
    now: &AtomicUsize,
    most: &AtomicUsize,
) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length = headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let delivery = Seen {
            headers,
            body: String::from_utf8(body).unwrap(),
        };
        let holding = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(holding, Ordering::SeqCst);
        let (status, extra, answer) = respond(&delivery);
        seen.lock().unwrap().push(delivery);
        now.fetch_sub(1, Ordering::SeqCst);
        let mut response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n",
            answer.len()
        );
        for (name, value) in extra {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&answer);
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn ok() -> Answer {
    (200, Vec::new(), String::new())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_published_message_reaches_the_app_once_and_a_repeated_key_is_a_duplicate() {
    let nats = Nats::start();
    let app = App::start(|_| ok());
    let publisher = Queue::start(&nats, &[]);
    let url = app.url();
    let _subscriber = Queue::start(
        &nats,
        &[
            "--subscribe",
            "orders",
            "--consumer",
            "billing",
            "--deliver-to",
            &url,
        ],
    );

    let (status, first) = publisher.publish("orders", Some("order-1"), r#"{"id":"o1"}"#);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["id"], "order-1");
    assert_eq!(first["duplicate"], false);
    let (_, again) = publisher.publish("orders", Some("order-1"), r#"{"id":"o1"}"#);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["sequence"], first["sequence"]);
    // The same key on another topic is another message.
    let (_, elsewhere) = publisher.publish("refunds", Some("order-1"), r#"{"id":"r1"}"#);
    assert_eq!(elsewhere["duplicate"], false, "{elsewhere}");

    let seen = app.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let seen_now = app.seen();
    assert_eq!(seen_now.len(), 1, "delivered once: {seen_now:?}");
    let delivery = &seen[0];
    assert_eq!(delivery.body, r#"{"id":"o1"}"#);
    assert_eq!(delivery.headers["rigging-message-id"], "order-1");
    assert_eq!(delivery.headers["rigging-topic"], "orders");
    assert_eq!(delivery.headers["rigging-delivery"], "1");
    assert_eq!(delivery.headers["content-type"], "application/json");
    assert_eq!(
        publisher.metric(r#"rigging_queue_published_total{result="duplicate",topic="orders"}"#),
        1.0
    );
}

#[test]
fn a_publish_is_refused_with_the_reason_when_the_topic_is_bad() {
    let nats = Nats::start();
    let publisher = Queue::start(&nats, &[]);
    let (status, body) = publisher.publish("Orders.eu", None, "{}");
    assert_eq!(status, 400);
    assert!(body.as_str().unwrap().contains("\"Orders.eu\""), "{body}");
    // Without a key the sidecar makes an id; two publishes are two messages.
    let (_, a) = publisher.publish("orders", None, "{}");
    let (_, b) = publisher.publish("orders", None, "{}");
    assert_ne!(a["id"], b["id"]);
    assert_eq!(b["duplicate"], false);
}

#[test]
fn a_failing_message_is_retried_then_dead_lettered_with_its_reason_and_the_rest_flow_on() {
    let nats = Nats::start();
    let app = App::start(|seen| match seen.body.contains("poison") {
        true => (500, Vec::new(), "database down".to_owned()),
        false => ok(),
    });
    let dead = App::start(|_| ok());
    let (url, dead_url) = (app.url(), dead.url());
    let publisher = Queue::start(&nats, &[]);
    let consumer = Queue::start(
        &nats,
        &[
            "--subscribe",
            "orders",
            "--consumer",
            "billing",
            "--deliver-to",
            &url,
            "--max-deliveries",
            "3",
        ],
    );
    let _dead_letters = Queue::start(
        &nats,
        &[
            "--subscribe",
            "orders.dead-letter",
            "--consumer",
            "ops",
            "--deliver-to",
            &dead_url,
        ],
    );
    publisher.publish("orders", Some("bad"), r#"{"id":"bad","poison":true}"#);
    publisher.publish("orders", Some("good"), r#"{"id":"good"}"#);

    let letters = dead.wait_for(1, Duration::from_secs(20));
    let letter = &letters[0];
    assert_eq!(letter.body, r#"{"id":"bad","poison":true}"#);
    assert_eq!(letter.headers["rigging-topic"], "orders.dead-letter");
    let reason = &letter.headers["rigging-dead-letter-reason"];
    assert!(
        reason.contains("500") && reason.contains("database down"),
        "{reason}"
    );
    assert_eq!(letter.headers["rigging-dead-letter-consumer"], "billing");
    assert_eq!(letter.headers["rigging-dead-letter-deliveries"], "3");

    let ids = app.ids();
    assert_eq!(
        ids.get("bad"),
        Some(&3),
        "delivered max-deliveries times: {ids:?}"
    );
    assert_eq!(ids.get("good"), Some(&1), "{ids:?}");
    let attempts: Vec<String> = app
        .seen()
        .iter()
        .filter(|s| s.body.contains("poison"))
        .map(|s| s.headers["rigging-delivery"].clone())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(
        consumer.metric(r#"rigging_queue_dead_lettered_total{topic="orders"}"#),
        1.0
    );
    assert_eq!(
        consumer.metric(r#"rigging_queue_failed_total{topic="orders"}"#),
        2.0
    );
    assert_eq!(
        consumer.metric(r#"rigging_queue_acked_total{topic="orders"}"#),
        1.0
    );
    // The pod's accounting, what the Pipeline status sums: 4 deliveries (the good one and
    // the poison one three times), each placed once.
    let accounting =
        |count: &str| consumer.metric(&format!(r#"rigging_queue_accounting{{count="{count}"}}"#));
    assert_eq!(
        [
            accounting("in"),
            accounting("out"),
            accounting("dead_lettered"),
            accounting("retried"),
            accounting("filtered"),
            accounting("in_flight"),
        ],
        [4.0, 1.0, 1.0, 2.0, 0.0, 0.0]
    );
}

/// The banking example of the project's notes: a split stage sends each transaction to
/// `suspicious` or `valid`, and each topic fans out to two APIs.
#[test]
fn every_transaction_reaches_exactly_the_two_apis_of_its_branch() {
    let nats = Nats::start();
    let publisher = Queue::start(&nats, &[]);
    let _validate = Queue::start(
        &nats,
        &[
            "--subscribe",
            "transactions",
            "--consumer",
            "validate",
            "--stage",
            "split",
            "--when",
            "suspicious = message.amount > 10000 || message.country != 'NL'",
            "--otherwise",
            "valid",
        ],
    );
    let mut apis = Vec::new();
    let mut sidecars = Vec::new();
    for (topic, consumer) in [
        ("suspicious", "fraud"),
        ("suspicious", "audit"),
        ("valid", "ledger"),
        ("valid", "notify"),
    ] {
        let app = App::start(|_| ok());
        let url = app.url();
        sidecars.push(Queue::start(
            &nats,
            &[
                "--subscribe",
                topic,
                "--consumer",
                consumer,
                "--deliver-to",
                &url,
            ],
        ));
        apis.push((topic, app));
    }
    let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for n in 0..200 {
        let (amount, country) = match n % 4 {
            0 => (20_000, "NL"),
            1 => (50, "DE"),
            _ => (50 + n, "NL"),
        };
        let id = format!("tx{n}");
        let body = format!(r#"{{"id":"{id}","amount":{amount},"country":"{country}"}}"#);
        let (status, _) = publisher.publish("transactions", Some(&id), &body);
        assert_eq!(status, 200);
        let branch = if amount > 10_000 || country != "NL" {
            "suspicious"
        } else {
            "valid"
        };
        expected.entry(branch).or_default().insert(id);
    }
    for (topic, app) in &apis {
        let want = &expected[topic];
        app.wait_for(want.len(), Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300));
        let ids = app.ids();
        assert_eq!(
            ids.keys().cloned().collect::<BTreeSet<_>>(),
            *want,
            "{topic}"
        );
        assert!(
            ids.values().all(|&n| n == 1),
            "each once on {topic}: {ids:?}"
        );
    }
}

#[test]
fn filter_shard_and_merge_route_on_real_jetstream() {
    let nats = Nats::start();
    let publisher = Queue::start(&nats, &[]);
    let stage = |args: &[&str]| Queue::start(&nats, args);
    let _even = stage(&[
        "--subscribe",
        "numbers",
        "--consumer",
        "even",
        "--stage",
        "filter",
        "--filter",
        "message.n % 2 == 0",
        "--output",
        "even",
    ]);
    let _shard = stage(&[
        "--subscribe",
        "even",
        "--consumer",
        "by-account",
        "--stage",
        "shard",
        "--key",
        "message.account",
        "--output",
        "shard-a",
        "--output",
        "shard-b",
    ]);
    let _merge = stage(&[
        "--subscribe",
        "shard-a",
        "--subscribe",
        "shard-b",
        "--consumer",
        "merge",
        "--stage",
        "copy",
        "--output",
        "merged",
    ]);
    let mut apps = BTreeMap::new();
    let mut sidecars = Vec::new();
    for topic in ["shard-a", "shard-b", "merged"] {
        let app = App::start(|_| ok());
        let url = app.url();
        sidecars.push(stage(&[
            "--subscribe",
            topic,
            "--consumer",
            "reader",
            "--deliver-to",
            &url,
        ]));
        apps.insert(topic, app);
    }
    for n in 0..100 {
        let body = format!(r#"{{"id":"n{n}","n":{n},"account":"acct-{}"}}"#, n % 7);
        publisher.publish("numbers", Some(&format!("n{n}")), &body);
    }
    let merged = apps["merged"].wait_for(50, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let ids = apps["merged"].ids();
    assert_eq!(ids.len(), 50, "the even numbers, once each: {ids:?}");
    assert!(ids.values().all(|&n| n == 1), "{ids:?}");
    assert_eq!(merged.len(), 50);
    // Each account's messages all went to one shard, and both shards got some.
    let mut shard_of: HashMap<String, &str> = HashMap::new();
    for topic in ["shard-a", "shard-b"] {
        let seen = apps[topic].seen();
        assert!(!seen.is_empty(), "{topic} got nothing");
        for s in seen {
            let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
            let account = body["account"].as_str().unwrap().to_owned();
            let earlier = shard_of.insert(account.clone(), topic);
            assert!(
                earlier.is_none_or(|t| t == topic),
                "{account} on two shards"
            );
        }
    }
}

#[test]
fn a_poison_message_for_a_stage_goes_to_dead_letter_at_once_and_the_stage_goes_on() {
    let nats = Nats::start();
    let publisher = Queue::start(&nats, &[]);
    let stage = Queue::start(
        &nats,
        &[
            "--subscribe",
            "in",
            "--consumer",
            "big",
            "--stage",
            "filter",
            "--filter",
            "message.amount > 10",
            "--output",
            "big",
        ],
    );
    let dead = App::start(|_| ok());
    let out = App::start(|_| ok());
    let (dead_url, out_url) = (dead.url(), out.url());
    let _d = Queue::start(
        &nats,
        &["--subscribe", "in.dead-letter", "--deliver-to", &dead_url],
    );
    let _o = Queue::start(&nats, &["--subscribe", "big", "--deliver-to", &out_url]);
    publisher.publish("in", Some("p"), "not json at all");
    publisher.publish("in", Some("small"), r#"{"id":"small","amount":1}"#);
    publisher.publish("in", Some("large"), r#"{"id":"large","amount":100}"#);
    let letters = dead.wait_for(1, Duration::from_secs(20));
    assert_eq!(letters[0].body, "not json at all");
    assert!(letters[0].headers["rigging-dead-letter-reason"].contains("not JSON"));
    assert_eq!(letters[0].headers["rigging-dead-letter-deliveries"], "1");
    out.wait_for(1, Duration::from_secs(20));
    assert_eq!(out.ids().keys().collect::<Vec<_>>(), ["large"]);
    wait_until(
        "the filtered message is counted",
        Duration::from_secs(5),
        || stage.metric(r#"rigging_queue_filtered_total{topic="in"}"#) == 1.0,
    );
}

#[test]
fn a_stalled_app_holds_at_most_max_in_flight_and_the_lag_shows() {
    let nats = Nats::start();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let held = gate.clone();
    let app = App::start(move |_| {
        let (open, opened) = &*held;
        let _open = opened
            .wait_while(open.lock().unwrap(), |open| !*open)
            .unwrap();
        ok()
    });
    let url = app.url();
    let publisher = Queue::start(&nats, &[]);
    let consumer = Queue::start(
        &nats,
        &[
            "--subscribe",
            "jobs",
            "--consumer",
            "slow",
            "--deliver-to",
            &url,
            "--max-in-flight",
            "8",
            "--delivery-timeout",
            "5m",
        ],
    );
    let payload = format!(r#"{{"id":"x","pad":"{}"}}"#, "x".repeat(1000));
    for n in 0..300 {
        publisher.publish(
            "jobs",
            Some(&format!("j{n}")),
            &payload.replace("\"x\"", &format!("\"j{n}\"")),
        );
    }
    wait_until(
        "the app holds 8 deliveries",
        Duration::from_secs(10),
        || app.now.load(Ordering::SeqCst) == 8,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        app.most.load(Ordering::SeqCst),
        8,
        "never more than --max-in-flight"
    );
    assert_eq!(consumer.metric("rigging_queue_in_flight"), 8.0);
    assert_eq!(
        consumer.metric(r#"rigging_queue_accounting{count="in_flight"}"#),
        consumer.metric(r#"rigging_queue_accounting{count="in"}"#),
        "every delivery the stalled app holds is in flight"
    );
    wait_until("the lag shows the backlog", Duration::from_secs(15), || {
        consumer.metric(r#"rigging_queue_lag{topic="jobs"}"#) == 300.0
    });
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", consumer.proc.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "RSS {rss_kib} KiB with 300 messages waiting"
    );

    let (open, opened) = &*gate;
    *open.lock().unwrap() = true;
    opened.notify_all();
    app.wait_for(300, Duration::from_secs(30));
    assert_eq!(app.ids().len(), 300);
    assert!(app.most.load(Ordering::SeqCst) <= 8);
    wait_until("the lag drains", Duration::from_secs(15), || {
        consumer.metric(r#"rigging_queue_lag{topic="jobs"}"#) == 0.0
    });
}

#[test]
fn after_a_stage_is_killed_and_the_broker_restarts_every_input_is_downstream_exactly_once() {
    // 10,000 in the suite; `RIGGING_QUEUE_CRASH_MESSAGES=100000` for the issue's scale
    // (about a minute more on 2 cores).
    let n: usize = std::env::var("RIGGING_QUEUE_CRASH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut nats = Nats::start();
    let publisher = Queue::start(&nats, &[]);
    for n in 0..n {
        let id = format!("m{n}");
        let (status, _) = publisher.publish("in", Some(&id), &format!(r#"{{"id":"{id}"}}"#));
        assert_eq!(status, 200);
    }
    let copy_args = [
        &COPY_IN_TO_OUT[..],
        &["--delivery-timeout", "1s", "--max-in-flight", "64"],
    ]
    .concat();
    let acked = r#"rigging_queue_acked_total{topic="in"}"#;
    let delivered = r#"rigging_queue_delivered_total{topic="in"}"#;
    // kill -9 the stage mid-stream: what it held, some of it already copied, comes again
    // to its replacement.
    let mut first = Queue::start(&nats, &copy_args);
    wait_until("a quarter copied", Duration::from_secs(60), || {
        first.metric(acked) >= (n / 4) as f64
    });
    // At most what it took before the kill: what it takes after is uncounted.
    let first_delivered = first.metric(delivered);
    let _ = first.proc.child.kill();
    let _ = first.proc.child.wait();
    let second = Queue::start(&nats, &copy_args);
    wait_until("another quarter copied", Duration::from_secs(60), || {
        second.metric(acked) >= (n / 4) as f64
    });
    // kill -9 the broker under the running stage, and start it again.
    nats.kill(0);
    nats.restart(0);

    let stored = stored_ids(&nats, "out", n, Duration::from_secs(180));
    assert_eq!(stored.len(), n, "every input downstream");
    let duplicates: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
    // The test means something only if the stage did replay messages: some came again
    // with their count of deliveries, or (a broker killed before it stored those counts)
    // more deliveries were taken than there are messages.
    let redelivered = second.metric(r#"rigging_queue_redelivered_total{topic="in"}"#);
    let taken = first_delivered + second.metric(delivered);
    assert!(
        redelivered > 0.0 || taken > n as f64,
        "no message came twice to the stage: {taken} deliveries of {n} messages"
    );
}

/// The ids of the messages stored on `topic` (by the stream, not as delivered), with how
/// many times each is stored, once `n` distinct ones are there.
///
/// Read message by message from the stream's leader: a reader consumer would have to be
/// created first, and a cluster that has just lost a server can time that out for longer
/// than the test waits.
fn stored_ids(nats: &Nats, topic: &str, n: usize, timeout: Duration) -> BTreeMap<String, usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = nats.url();
    let subject = format!("rigging.{topic}");
    runtime.block_on(async move {
        let servers: Vec<async_nats::ServerAddr> =
            url.split(',').map(|u| u.parse().unwrap()).collect();
        let client = async_nats::connect(servers.as_slice()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + timeout;
        let mut ids = BTreeMap::new();
        // The next sequence to read: what was read stays read across retries.
        let mut next = 1;
        let mut last_error = String::new();
        while ids.len() < n && Instant::now() < deadline {
            let read = async {
                let mut stream = js
                    .get_stream("rigging")
                    .await
                    .map_err(|e| format!("stream info: {e}"))?;
                let last = stream
                    .info()
                    .await
                    .map_err(|e| format!("stream info: {e}"))?
                    .state
                    .last_sequence;
                while next <= last {
                    let message = stream
                        .get_raw_message(next)
                        .await
                        .map_err(|e| format!("message {next}: {e}"))?;
                    if message.subject.as_str() == subject {
                        let body: serde_json::Value =
                            serde_json::from_slice(&message.payload).unwrap();
                        *ids.entry(body["id"].as_str().unwrap().to_owned())
                            .or_insert(0) += 1;
                    }
                    next += 1;
                }
                Ok::<_, String>(())
            };
            if let Err(e) = read.await {
                last_error = e;
            }
            if ids.len() < n {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        assert!(
            ids.len() >= n || last_error.is_empty(),
            "{} of {n} read from {subject}, then: {last_error}",
            ids.len()
        );
        ids
    })
}

#[test]
fn bad_flags_and_bad_cel_are_refused_naming_the_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(crate::support::sidecar_bin())
            .arg("queue")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[
        "--subscribe",
        "in",
        "--stage",
        "filter",
        "--filter",
        "message.amount >",
        "--output",
        "o",
    ]);
    assert!(
        err.contains("--filter \"message.amount >\" is not valid CEL"),
        "{err}"
    );
    let err = run(&[
        "--subscribe",
        "in",
        "--stage",
        "shard",
        "--key",
        "message.k",
        "--output",
        "a",
    ]);
    assert!(
        err.contains("--stage shard: needs at least two --output topics"),
        "{err}"
    );
    let err = run(&["--subscribe", "In"]);
    assert!(err.contains("--subscribe: topic \"In\""), "{err}");
}

#[test]
fn sigterm_lets_deliveries_in_flight_finish_and_exits_zero() {
    let nats = Nats::start();
    let app = App::start(|_| {
        std::thread::sleep(Duration::from_millis(700));
        ok()
    });
    let url = app.url();
    let publisher = Queue::start(&nats, &[]);
    let mut consumer = Queue::start(
        &nats,
        &[
            "--subscribe",
            "jobs",
            "--consumer",
            "w",
            "--deliver-to",
            &url,
            "--max-in-flight",
            "4",
        ],
    );
    for n in 0..4 {
        publisher.publish(
            "jobs",
            Some(&format!("j{n}")),
            &format!(r#"{{"id":"j{n}"}}"#),
        );
    }
    wait_until("4 deliveries in flight", Duration::from_secs(10), || {
        app.now.load(Ordering::SeqCst) == 4
    });
    consumer.proc.terminate();
    assert_eq!(consumer.proc.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(app.seen().len(), 4);
    // They were acked: a new consumer with the same name gets nothing again.
    let _again = Queue::start(
        &nats,
        &[
            "--subscribe",
            "jobs",
            "--consumer",
            "w",
            "--deliver-to",
            &url,
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(app.seen().len(), 4, "{:?}", app.ids());
}

#[test]
fn through_the_loss_of_one_of_three_jetstream_servers_every_input_is_downstream_once() {
    const N: usize = 3000;
    let mut nats = Nats::cluster();
    let replicated = ["--stream-replicas", "3"];
    let publisher = Queue::start(&nats, &replicated);
    let _copy = Queue::start(
        &nats,
        &[
            &replicated[..],
            &COPY_IN_TO_OUT,
            &["--delivery-timeout", "2s"],
        ]
        .concat(),
    );
    let publish = |from: usize, to: usize| {
        for n in from..to {
            let id = format!("m{n}");
            // A publish cut off by the failure is repeated with its key: stored once.
            wait_until(&format!("{id} stored"), Duration::from_secs(60), || {
                publisher
                    .publish("in", Some(&id), &format!(r#"{{"id":"{id}"}}"#))
                    .0
                    == 200
            });
        }
    };
    publish(0, N / 2);
    nats.kill(0);
    publish(N / 2, N);

    let stored = stored_ids(&nats, "out", N, Duration::from_secs(180));
    assert_eq!(stored.len(), N, "every input downstream");
    let duplicates: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
}

/// The arguments of a stage that copies each message of `in` to `out`, as consumer `copy`.
const COPY_IN_TO_OUT: [&str; 8] = [
    "--subscribe",
    "in",
    "--consumer",
    "copy",
    "--stage",
    "copy",
    "--output",
    "out",
];

/// Sets the stream's message limit (`None`: none), refusing new messages beyond it, as a
/// full or failing broker does.
fn limit_stream(nats: &Nats, max_messages: Option<i64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = nats.url();
    runtime.block_on(async move {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("rigging").await.unwrap();
        let mut config = stream.info().await.unwrap().config.clone();
        config.max_messages = max_messages.unwrap_or(-1);
        config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
        js.update_stream(config).await.unwrap();
    });
}

#[test]
fn a_broker_that_refuses_a_stages_outputs_does_not_count_against_max_deliveries() {
    let nats = Nats::start();
    let publisher = Queue::start(&nats, &[]);
    let (status, _) = publisher.publish("in", Some("m1"), r#"{"id":"m1"}"#);
    assert_eq!(status, 200);
    // Full: the stage's output of m1 is refused, whatever m1 is.
    limit_stream(&nats, Some(1));
    let stage = Queue::start(
        &nats,
        &[
            &COPY_IN_TO_OUT[..],
            &["--max-deliveries", "2", "--max-backoff", "200ms"],
        ]
        .concat(),
    );
    let failed = r#"rigging_queue_failed_total{topic="in"}"#;
    wait_until(
        "m1 refused by the broker 5 times",
        Duration::from_secs(30),
        || stage.metric(failed) >= 5.0,
    );
    limit_stream(&nats, None);
    // Its deliveries were the broker's failures, not its own: it goes on, not to its
    // dead-letter topic.
    let out = stored_ids(&nats, "out", 1, Duration::from_secs(30));
    assert_eq!(out.keys().collect::<Vec<_>>(), ["m1"]);
    let dead = stored_ids(&nats, "in.dead-letter", 1, Duration::from_secs(2));
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
}
