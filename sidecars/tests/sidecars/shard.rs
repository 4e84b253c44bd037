//! The sharding ambassador against real redis-server, memcached, nutcracker and nginx.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rigging_sidecar::shard::hash::HashKind;
use rigging_sidecar::shard::ring::{HashTag, Ring, ServerSpec};
use rigging_sidecar::shard::{RING_PATH, RingReport, ring_version};

use crate::support::{
    self, Proc, free_port, local, memcached, redis_server, redis_server_on, require_tool,
    wait_port, wait_ready,
};

/// A parsed RESP reply.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    /// RESP3 map.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 null.
    Null,
}

impl Reply {
    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }
    fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// A blocking RESP client speaking to one address.
struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Resp {
    fn connect(addr: SocketAddr) -> Resp {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Resp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        write!(out, "*{}\r\n", args.len()).unwrap();
        for a in args {
            write!(out, "${}\r\n", a.len()).unwrap();
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends every command in one write, then reads one reply per command.
    fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> Vec<Reply> {
        let mut out = Vec::new();
        for cmd in cmds {
            let args: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
            Self::encode(&mut out, &args);
        }
        self.send_raw(&out);
        cmds.iter().map(|_| self.read()).collect()
    }

    fn cmd(&mut self, args: &[&str]) -> Reply {
        let mut out = Vec::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Self::encode(&mut out, &args);
        self.send_raw(&out);
        self.read()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read reply line");
        assert!(line.ends_with("\r\n"), "truncated reply line {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    fn read(&mut self) -> Reply {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "_" => Reply::Null,
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut data = vec![0; n as usize + 2];
                self.reader.read_exact(&mut data).unwrap();
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Array(None);
                }
                Reply::Array(Some((0..n).map(|_| self.read()).collect()))
            }
            "%" => {
                let n: usize = rest.parse().unwrap();
                Reply::Map((0..n).map(|_| (self.read(), self.read())).collect())
            }
            other => panic!("unexpected reply type {other:?} in {line:?}"),
        }
    }

    /// Whether the server closed the connection (reads EOF).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

fn args(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// A running `rigging-sidecar shard` with its client and admin addresses.
struct Shard {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn shard(protocol: &str, servers: &[String], extra: &[&str]) -> Shard {
    let addr = local(free_port());
    let admin = local(free_port());
    let mut argv: Vec<String> = vec![
        "shard".into(),
        "--protocol".into(),
        protocol.into(),
        "--listen".into(),
        addr.to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    for s in servers {
        argv.push("--server".into());
        argv.push(s.clone());
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let proc = Proc::sidecar(&argv);
    wait_ready(admin, Duration::from_secs(10));
    wait_port(addr, Duration::from_secs(10));
    Shard { proc, addr, admin }
}

fn specs(servers: &[String]) -> Vec<ServerSpec> {
    servers.iter().map(|s| s.parse().unwrap()).collect()
}

/// Every key on a redis-server, with its value.
fn redis_contents(addr: SocketAddr) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut c = Resp::connect(addr);
    let Reply::Array(Some(keys)) = c.cmd(&["KEYS", "*"]) else {
        panic!("KEYS failed on {addr}");
    };
    let keys: Vec<Vec<u8>> = keys
        .into_iter()
        .map(|k| match k {
            Reply::Bulk(Some(k)) => k,
            other => panic!("{other:?}"),
        })
        .collect();
    let cmds: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .map(|k| vec![b"GET".to_vec(), k.clone()])
        .collect();
    let values = c.pipeline(&cmds);
    keys.into_iter()
        .zip(values)
        .map(|(k, v)| match v {
            Reply::Bulk(Some(v)) => (k, v),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Keys of every shape placement depends on: plain, hash-tagged, long, and with bytes
/// ≥ 0x80 (which twemproxy hashes as signed chars).
fn sample_keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut key = match i % 4 {
                0 => format!("{prefix}:user:{i}").into_bytes(),
                1 => format!("{prefix}:{{tag{}}}:cart:{i}", i % 37).into_bytes(),
                2 => format!("{prefix}:{}:{i}", "long".repeat(i % 23)).into_bytes(),
                _ => format!("{prefix}:utf8:é{i}").into_bytes(),
            };
            if i % 10 == 3 {
                key.push(0xff);
            }
            key
        })
        .collect()
}

fn nutcracker_conf(dir: &std::path::Path, pools: &[Pool]) -> std::path::PathBuf {
    let mut yaml = String::new();
    for (name, port, hash, proto, servers) in pools {
        yaml.push_str(&format!(
            "{name}:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  distribution: ketama\n  hash_tag: \"{{}}\"\n  redis: {}\n  auto_eject_hosts: false\n  timeout: 5000\n  servers:\n",
            *proto == "redis"
        ));
        for s in *servers {
            yaml.push_str(&format!("   - {s}\n"));
        }
    }
    let path = dir.join("nutcracker.yml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A nutcracker pool: its name, port, hash, protocol and servers.
type Pool<'a> = (String, u16, String, &'a str, &'a [String]);

/// nutcracker serving `pools` (name, hash, protocol, servers), each on a free port: the
/// process, and the pools with their ports. Another test can take a port between its pick
/// and nutcracker's bind, and nutcracker then exits at once: new ports are tried, three
/// times in all.
fn start_nutcracker<'a>(
    dir: &std::path::Path,
    pools: &[(String, String, &'a str, &'a [String])],
) -> (Proc, Vec<Pool<'a>>) {
    for _ in 0..3 {
        let pools: Vec<Pool<'a>> = pools
            .iter()
            .map(|(name, hash, proto, servers)| {
                (name.clone(), free_port(), hash.clone(), *proto, *servers)
            })
            .collect();
        let conf = nutcracker_conf(dir, &pools);
        let mut proc = Proc::spawn(
            require_tool("nutcracker"),
            &[
                "-c",
                conf.to_str().unwrap(),
                "-s",
                &free_port().to_string(),
                "-a",
                "127.0.0.1",
                "-o",
                dir.join("nutcracker.log").to_str().unwrap(),
                "-p",
                dir.join("nutcracker.pid").to_str().unwrap(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let up = pools.iter().all(|p| {
                std::net::TcpStream::connect_timeout(&local(p.1), Duration::from_millis(100))
                    .is_ok()
            });
            if up {
                return (proc, pools);
            }
            if proc.wait_exit(Duration::from_millis(10)).is_some() {
                break;
            }
        }
    }
    let log = std::fs::read_to_string(dir.join("nutcracker.log")).unwrap_or_default();
    panic!("nutcracker did not listen on its ports in three tries: {log}");
}

#[test]
fn every_key_written_through_nutcracker_reads_back_through_rigging_with_every_hash() {
    let backends: Vec<(Proc, SocketAddr)> = (0..3).map(|_| redis_server()).collect();
    // Unequal weights and one named server: every input of the layout is exercised.
    let servers: Vec<String> = vec![
        format!("{}:1", backends[0].1),
        format!("{}:2", backends[1].1),
        format!("{}:1 gamma", backends[2].1),
    ];
    let dir = tempfile::tempdir().unwrap();
    let pools: Vec<(String, String, &str, &[String])> = HashKind::ALL
        .iter()
        .map(|h| (format!("pool_{h}"), h.to_string(), "redis", &servers[..]))
        .collect();
    let (_nutcracker, pools) = start_nutcracker(dir.path(), &pools);

    let per_hash = 1000;
    for (name, port, hash, _, _) in &pools {
        let keys = sample_keys(hash, per_hash);
        let mut via_nutcracker = Resp::connect(local(*port));
        let sets: Vec<Vec<Vec<u8>>> = keys
            .iter()
            .map(|k| vec![b"SET".to_vec(), k.clone(), [b"v:".as_slice(), k].concat()])
            .collect();
        for reply in via_nutcracker.pipeline(&sets) {
            assert_eq!(
                reply,
                Reply::Status("OK".into()),
                "SET through nutcracker pool {name}"
            );
        }
    }

    // Where nutcracker put each key, read on the servers themselves.
    let mut placed: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, (_, addr)) in backends.iter().enumerate() {
        for (k, v) in redis_contents(*addr) {
            assert_eq!(v, [b"v:".as_slice(), &k].concat());
            assert!(placed.insert(k, i).is_none(), "a key on two servers");
        }
    }
    assert_eq!(placed.len(), per_hash * HashKind::ALL.len());

    let tag = HashTag::parse("{}");
    for hash in HashKind::ALL {
        let keys = sample_keys(hash.name(), per_hash);
        // The library's ring agrees with nutcracker on every key...
        let ring = Ring::new(&specs(&servers), &[], hash, tag);
        for key in &keys {
            assert_eq!(
                ring.server_for(key),
                Some(placed[key]),
                "{hash}: key {:?} is on server {} under nutcracker",
                String::from_utf8_lossy(key),
                placed[key]
            );
        }
        // ...and the running proxy reads every key back from where nutcracker put it.
        let proxy = shard(
            "redis",
            &servers,
            &["--hash", hash.name(), "--hash-tag", "{}"],
        );
        let mut client = Resp::connect(proxy.addr);
        let mut mget = vec![b"MGET".to_vec()];
        mget.extend(keys.iter().cloned());
        let Reply::Array(Some(values)) = client.pipeline(&[mget]).remove(0) else {
            panic!("MGET through rigging failed for {hash}");
        };
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(
                value,
                Reply::Bulk(Some([b"v:".as_slice(), key].concat())),
                "{hash}"
            );
        }
        let gets: Vec<Vec<Vec<u8>>> = keys
            .iter()
            .map(|k| vec![b"GET".to_vec(), k.clone()])
            .collect();
        for (key, value) in keys.iter().zip(client.pipeline(&gets)) {
            assert_eq!(
                value,
                Reply::Bulk(Some([b"v:".as_slice(), key].concat())),
                "{hash}"
            );
        }
    }
}

fn three_redis() -> (Vec<Proc>, Vec<SocketAddr>, Vec<String>) {
    let (procs, addrs): (Vec<Proc>, Vec<SocketAddr>) = (0..3).map(|_| redis_server()).unzip();
    let servers = addrs.iter().map(|a| format!("{a}:1")).collect();
    (procs, addrs, servers)
}

/// A key that the ring puts on server `want`.
fn key_on(ring: &Ring, want: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| ring.server_for(k.as_bytes()) == Some(want))
        .unwrap()
}

fn get_direct(addr: SocketAddr, key: &str) -> Reply {
    Resp::connect(addr).cmd(&["GET", key])
}

#[test]
fn redis_pipelines_stay_in_order_and_multi_key_commands_are_split_and_merged() {
    let (_procs, addrs, servers) = three_redis();
    let ring = Ring::new(&specs(&servers), &[], HashKind::Fnv1a64, None);
    let proxy = shard("redis", &servers, &[]);
    let mut c = Resp::connect(proxy.addr);

    // A pipeline of 1,000 commands: replies come back in request order.
    let mut cmds = Vec::new();
    for i in 0..500 {
        cmds.push(args(&[
            b"SET",
            format!("p:{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        ]));
        cmds.push(args(&[b"GET", format!("p:{i}").as_bytes()]));
    }
    let replies = c.pipeline(&cmds);
    assert_eq!(replies.len(), 1000);
    for i in 0..500 {
        assert_eq!(replies[2 * i], Reply::Status("OK".into()));
        assert_eq!(replies[2 * i + 1], Reply::bulk(&format!("v{i}")));
    }
    // Each key is on the server the ring names, and only there.
    for i in (0..500).step_by(7) {
        let key = format!("p:{i}");
        let home = ring.server_for(key.as_bytes()).unwrap();
        for (s, addr) in addrs.iter().enumerate() {
            let expect = if s == home {
                Reply::bulk(&format!("v{i}"))
            } else {
                Reply::Bulk(None)
            };
            assert_eq!(get_direct(*addr, &key), expect, "{key} on server {s}");
        }
    }

    // Multi-key commands over keys on every server.
    let keys: Vec<String> = (0..3).map(|s| key_on(&ring, s, "m")).collect();
    assert_eq!(
        c.cmd(&["MSET", &keys[0], "a", &keys[1], "b", &keys[2], "c"]),
        Reply::Status("OK".into())
    );
    for (s, k) in keys.iter().enumerate() {
        assert_eq!(get_direct(addrs[s], k), Reply::bulk(["a", "b", "c"][s]));
    }
    assert_eq!(
        c.cmd(&["MGET", &keys[2], "missing", &keys[0], &keys[1], &keys[2]]),
        Reply::Array(Some(vec![
            Reply::bulk("c"),
            Reply::Bulk(None),
            Reply::bulk("a"),
            Reply::bulk("b"),
            Reply::bulk("c")
        ]))
    );
    assert_eq!(
        c.cmd(&["EXISTS", &keys[0], &keys[1], &keys[2], "missing"]),
        Reply::Int(3)
    );
    assert_eq!(c.cmd(&["TOUCH", &keys[0], &keys[1]]), Reply::Int(2));
    assert_eq!(
        c.cmd(&["DEL", &keys[0], &keys[1], "missing"]),
        Reply::Int(2)
    );
    assert_eq!(c.cmd(&["UNLINK", &keys[2], &keys[0]]), Reply::Int(1));
    assert_eq!(
        c.cmd(&["EXISTS", &keys[0], &keys[1], &keys[2]]),
        Reply::Int(0)
    );

    // Answered locally.
    assert_eq!(c.cmd(&["PING"]), Reply::Status("PONG".into()));
    assert_eq!(c.cmd(&["ping", "hi"]), Reply::bulk("hi"));
    assert_eq!(c.cmd(&["ECHO", "x y"]), Reply::bulk("x y"));
    assert_eq!(c.cmd(&["SELECT", "0"]), Reply::Status("OK".into()));
    assert!(c.cmd(&["SELECT", "1"]).is_error());

    // Unshardable commands get an error and the connection stays usable.
    for cmd in [
        &["KEYS", "*"][..],
        &["SCAN", "0"],
        &["MULTI"],
        &["EXEC"],
        &["FLUSHALL"],
        &["NOSUCHCMD"],
    ] {
        assert!(c.cmd(cmd).is_error(), "{cmd:?}");
        assert_eq!(c.cmd(&["PING"]), Reply::Status("PONG".into()));
    }
    // Atomic multi-key commands work when the keys share a server (hash tags), and are
    // refused across servers.
    assert!(
        matches!(c.cmd(&["RENAME", &keys[0], &keys[1]]), Reply::Error(e) if e.starts_with("CROSSSLOT"))
    );
    // Blocking commands would stall the connection every client shares: refused.
    assert!(matches!(c.cmd(&["BLPOP", &keys[0], "1"]), Reply::Error(e) if e.contains("blocking")));
    assert_eq!(c.cmd(&["PING"]), Reply::Status("PONG".into()));
    let tagged = shard("redis", &servers, &["--hash-tag", "{}"]);
    let mut t = Resp::connect(tagged.addr);
    assert_eq!(t.cmd(&["SET", "{u1}:a", "1"]), Reply::Status("OK".into()));
    assert_eq!(
        t.cmd(&["RENAME", "{u1}:a", "{u1}:b"]),
        Reply::Status("OK".into())
    );
    assert_eq!(t.cmd(&["GET", "{u1}:b"]), Reply::bulk("1"));
    assert_eq!(
        t.cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "{u1}:b"]),
        Reply::bulk("1")
    );

    // RESP3 on request, RESP2 again after HELLO 2.
    assert_eq!(c.cmd(&["HSET", "h", "f", "v"]), Reply::Int(1));
    let Reply::Map(hello) = c.cmd(&["HELLO", "3"]) else {
        panic!("HELLO 3 is not a map")
    };
    assert!(hello.contains(&(Reply::bulk("proto"), Reply::Int(3))));
    assert_eq!(
        c.cmd(&["HGETALL", "h"]),
        Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))])
    );
    assert_eq!(c.cmd(&["GET", "nothing"]), Reply::Null);
    assert!(matches!(c.cmd(&["HELLO", "2"]), Reply::Array(Some(_))));
    assert_eq!(
        c.cmd(&["HGETALL", "h"]),
        Reply::Array(Some(vec![Reply::bulk("f"), Reply::bulk("v")]))
    );
    assert!(matches!(c.cmd(&["HELLO", "4"]), Reply::Error(e) if e.starts_with("NOPROTO")));

    assert_eq!(c.cmd(&["QUIT"]), Reply::Status("OK".into()));
    assert!(c.closed());
}

#[test]
fn large_values_in_split_and_pipelined_commands_reach_their_servers_intact() {
    // Values this long are sent from the client's buffer, not copied; the commands the
    // proxy writes around them, and the small requests pipelined with them, must still
    // come out in order.
    let (_procs, addrs, servers) = three_redis();
    let ring = Ring::new(&specs(&servers), &[], HashKind::Fnv1a64, None);
    let proxy = shard("redis", &servers, &[]);
    let mut c = Resp::connect(proxy.addr);
    let keys: Vec<String> = (0..3).map(|s| key_on(&ring, s, "large")).collect();
    let value = |i: usize| vec![b'a' + i as u8; 100_000 + i];
    let mset: Vec<&[u8]> = std::iter::once(&b"MSET"[..])
        .chain(keys.iter().map(|k| k.as_bytes()))
        .collect();
    let values: Vec<Vec<u8>> = (0..3).map(value).collect();
    let mut cmd: Vec<&[u8]> = vec![mset[0]];
    for i in 0..3 {
        cmd.push(mset[i + 1]);
        cmd.push(&values[i]);
    }
    let mut pipeline = vec![args(&[b"SET", b"small:0", b"0"])];
    pipeline.push(args(&cmd));
    pipeline.push(args(&[b"SET", keys[0].as_bytes(), &values[2]]));
    pipeline.push(args(&[b"SET", b"small:1", b"1"]));
    let replies = c.pipeline(&pipeline);
    assert!(
        replies.iter().all(|r| *r == Reply::Status("OK".into())),
        "{replies:?}"
    );
    assert_eq!(get_direct(addrs[0], &keys[0]), Reply::Bulk(Some(value(2))));
    for i in 1..3 {
        assert_eq!(get_direct(addrs[i], &keys[i]), Reply::Bulk(Some(value(i))));
    }
    assert_eq!(c.cmd(&["GET", "small:1"]), Reply::bulk("1"));
}

#[test]
fn malformed_resp_gets_an_error_reply_and_only_that_connection_closes() {
    let (_procs, _addrs, servers) = three_redis();
    let proxy = shard("redis", &servers, &[]);
    let mut good = Resp::connect(proxy.addr);
    assert_eq!(good.cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));
    for garbage in [
        &b"*2\r\n$3\r\nGET\r\n$x\r\n"[..],
        b"*1\r\n:1\r\n",
        b"*1\r\n$3\r\nGETxx\r\n",
        b"*1\r\n$99999999999\r\n",
    ] {
        let mut bad = Resp::connect(proxy.addr);
        // A valid command first: its reply still arrives, before the error.
        let mut bytes = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec();
        bytes.extend_from_slice(garbage);
        bad.send_raw(&bytes);
        assert_eq!(bad.read(), Reply::bulk("v"));
        assert!(
            matches!(bad.read(), Reply::Error(e) if e.contains("rotocol")),
            "{garbage:?}"
        );
        assert!(bad.closed());
    }
    // Other clients and the process are unaffected.
    assert_eq!(good.cmd(&["GET", "k"]), Reply::bulk("v"));
    assert_eq!(support::http_get(proxy.admin, "/healthz").unwrap().0, 200);
}

fn metric(admin: SocketAddr, name: &str, server: SocketAddr) -> f64 {
    let (_, body) = support::http_get(admin, "/metrics").unwrap();
    let prefix = format!("{name}{{server=\"{server}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_killed_server_gets_error_replies_then_is_ejected_and_its_keys_rehash() {
    let (mut procs, addrs, servers) = three_redis();
    let ring = Ring::new(&specs(&servers), &[], HashKind::Fnv1a64, None);
    let without_2 = Ring::new(
        &specs(&servers),
        &[true, true, false],
        HashKind::Fnv1a64,
        None,
    );
    let proxy = shard(
        "redis",
        &servers,
        &[
            "--timeout",
            "2s",
            "--auto-eject-hosts",
            "--server-failure-limit",
            "2",
            "--server-retry-timeout",
            "10m",
        ],
    );
    let mut c = Resp::connect(proxy.addr);
    let on_2 = key_on(&ring, 2, "dead");
    let on_0 = key_on(&ring, 0, "alive");
    assert_eq!(c.cmd(&["SET", &on_0, "x"]), Reply::Status("OK".into()));
    assert_eq!(c.cmd(&["SET", &on_2, "y"]), Reply::Status("OK".into()));

    let mut dead = procs.remove(2);
    dead.terminate();
    assert!(dead.wait_exit(Duration::from_secs(10)).is_some());

    // Its keys get errors naming the server; other keys are served; MGET over both fails
    // as a whole rather than silently returning a partial answer.
    for _ in 0..2 {
        let reply = c.cmd(&["GET", &on_2]);
        assert!(
            matches!(&reply, Reply::Error(e) if e.contains(&addrs[2].to_string())),
            "{reply:?}"
        );
        assert_eq!(c.cmd(&["GET", &on_0]), Reply::bulk("x"));
    }
    // Two failures: ejected. Its keys now live on the server the ring without it names.
    assert_eq!(c.cmd(&["SET", &on_2, "z"]), Reply::Status("OK".into()));
    assert_eq!(c.cmd(&["GET", &on_2]), Reply::bulk("z"));
    let new_home = without_2.server_for(on_2.as_bytes()).unwrap();
    assert_eq!(get_direct(addrs[new_home], &on_2), Reply::bulk("z"));
    assert_eq!(
        c.cmd(&["GET", &on_0]),
        Reply::bulk("x"),
        "other keys did not move"
    );

    assert_eq!(
        metric(
            proxy.admin,
            "rigging_shard_server_ejections_total",
            addrs[2]
        ),
        1.0
    );
    assert!(metric(proxy.admin, "rigging_shard_server_errors_total", addrs[2]) >= 2.0);
    assert!(metric(proxy.admin, "rigging_shard_server_requests_total", addrs[0]) >= 3.0);
}

#[test]
fn a_hung_server_gets_error_replies_within_the_timeout() {
    let (procs, addrs, servers) = three_redis();
    let ring = Ring::new(&specs(&servers), &[], HashKind::Fnv1a64, None);
    let proxy = shard("redis", &servers, &["--timeout", "300ms"]);
    let mut c = Resp::connect(proxy.addr);
    let on_1 = key_on(&ring, 1, "hang");
    let on_0 = key_on(&ring, 0, "fine");
    support::signal(procs[1].pid(), "STOP");
    // The client's read timeout (10 s) would fail this test if the proxy hung.
    let reply = c.cmd(&["GET", &on_1]);
    support::signal(procs[1].pid(), "CONT");
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains(&addrs[1].to_string()) && e.contains("300 ms")),
        "{reply:?}"
    );
    assert_eq!(c.cmd(&["SET", &on_0, "1"]), Reply::Status("OK".into()));
    // Without ejection, the server is used again once it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if c.cmd(&["SET", &on_1, "back"]) == Reply::Status("OK".into()) {
            break;
        }
        assert!(Instant::now() < deadline, "server never came back");
    }
}

#[test]
fn clients_authenticate_to_the_proxy_and_the_proxy_to_password_protected_servers() {
    let mut procs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        procs.push(redis_server_on(port, &["--requirepass", "s3cret"]));
        servers.push(format!("127.0.0.1:{port}:1"));
    }
    let proxy = shard("redis", &servers, &["--redis-auth", "s3cret"]);
    let mut c = Resp::connect(proxy.addr);
    assert!(matches!(c.cmd(&["GET", "a"]), Reply::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(c.cmd(&["AUTH", "wrong"]), Reply::Error(e) if e.starts_with("WRONGPASS")));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), Reply::Status("OK".into()));
    assert_eq!(
        c.cmd(&["MSET", "a", "1", "b", "2", "c", "3", "d", "4"]),
        Reply::Status("OK".into())
    );
    assert_eq!(c.cmd(&["GET", "d"]), Reply::bulk("4"));
    // RESP3 backends are authenticated by HELLO 3 AUTH.
    let mut r3 = Resp::connect(proxy.addr);
    assert!(matches!(
        r3.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]),
        Reply::Map(_)
    ));
    assert_eq!(
        r3.cmd(&["MGET", "a", "b"]),
        Reply::Array(Some(vec![Reply::bulk("1"), Reply::bulk("2")]))
    );
}

/// A blocking memcached text-protocol client.
struct Mc {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Mc {
    fn connect(addr: SocketAddr) -> Mc {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Mc {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read line");
        assert!(line.ends_with(b"\r\n"), "truncated line {line:?}");
        line.truncate(line.len() - 2);
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Reads a retrieval reply: (key, data) pairs up to END, or the error line.
    fn values(&mut self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out = Vec::new();
        loop {
            let line = self.line();
            if line == "END" {
                return Ok(out);
            }
            let fields: Vec<&str> = line.split(' ').collect();
            if fields[0] != "VALUE" {
                return Err(line);
            }
            let n: usize = fields[3].parse().unwrap();
            let mut data = vec![0; n + 2];
            self.reader.read_exact(&mut data).unwrap();
            data.truncate(n);
            out.push((fields[1].to_owned(), data));
        }
    }

    fn get(&mut self, keys: &[&str]) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.send(format!("get {}\r\n", keys.join(" ")).as_bytes());
        self.values()
    }

    fn set(&mut self, key: &str, value: &str) -> String {
        self.send(format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes());
        self.line()
    }
}

fn mc_value(addr: SocketAddr, key: &str) -> Option<Vec<u8>> {
    let mut c = Mc::connect(addr);
    c.get(&[key]).unwrap().pop().map(|(_, v)| v)
}

#[test]
fn memcached_keys_written_through_nutcracker_read_back_through_rigging() {
    // Three memcacheds on port 11211 of different loopback addresses: unnamed servers on
    // 11211 are hashed by host alone, libmemcached's rule that twemproxy keeps.
    let procs: Vec<Proc> = (2..5)
        .map(|i| {
            let host = format!("127.0.0.{i}");
            let p = Proc::spawn(
                require_tool("memcached"),
                &[
                    "-l", &host, "-p", "11211", "-U", "0", "-u", "nobody", "-m", "32",
                ],
            );
            wait_port(
                format!("{host}:11211").parse().unwrap(),
                Duration::from_secs(5),
            );
            p
        })
        .collect();
    let addrs: Vec<SocketAddr> = (2..5)
        .map(|i| format!("127.0.0.{i}:11211").parse().unwrap())
        .collect();
    let servers: Vec<String> = addrs.iter().map(|a| format!("{a}:1")).collect();
    let dir = tempfile::tempdir().unwrap();
    let hashes = [HashKind::Fnv1a64, HashKind::Md5, HashKind::Murmur];
    let pools: Vec<(String, String, &str, &[String])> = hashes
        .iter()
        .map(|h| (format!("mc_{h}"), h.to_string(), "memcache", &servers[..]))
        .collect();
    let (_nutcracker, pools) = start_nutcracker(dir.path(), &pools);

    let n = 600;
    for ((_, port, _, _, _), hash) in pools.iter().zip(hashes) {
        let keys: Vec<String> = (0..n)
            .map(|i| format!("{hash}:k{i}:{{t{}}}", i % 13))
            .collect();
        let mut c = Mc::connect(local(*port));
        let mut batch = Vec::new();
        for k in &keys {
            batch.extend_from_slice(format!("set {k} 7 0 {}\r\nv-{k}\r\n", k.len() + 2).as_bytes());
        }
        c.send(&batch);
        for _ in &keys {
            assert_eq!(c.line(), "STORED");
        }
        let ring = Ring::new(&specs(&servers), &[], hash, HashTag::parse("{}"));
        let proxy = shard(
            "memcached",
            &servers,
            &["--hash", hash.name(), "--hash-tag", "{}"],
        );
        let mut r = Mc::connect(proxy.addr);
        for chunk in keys.chunks(100) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let got = r.get(&names).unwrap();
            let want: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .map(|k| (k.clone(), format!("v-{k}").into_bytes()))
                .collect();
            assert_eq!(got, want, "{hash}");
        }
        for k in keys.iter().step_by(11) {
            let home = ring.server_for(k.as_bytes()).unwrap();
            for (s, addr) in addrs.iter().enumerate() {
                assert_eq!(
                    mc_value(*addr, k).is_some(),
                    s == home,
                    "{hash}: {k} on server {s}"
                );
            }
        }
    }
    drop(procs);
}

#[test]
fn memcached_commands_are_routed_split_and_merged() {
    let (_procs, addrs): (Vec<Proc>, Vec<SocketAddr>) = (0..3).map(|_| memcached()).unzip();
    let servers: Vec<String> = addrs.iter().map(|a| format!("{a}:1")).collect();
    let ring = Ring::new(&specs(&servers), &[], HashKind::Fnv1a64, None);
    let proxy = shard("memcached", &servers, &[]);
    let mut c = Mc::connect(proxy.addr);
    let keys: Vec<String> = (0..3).map(|s| key_on(&ring, s, "mc")).collect();

    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.set(k, &format!("v{i}")), "STORED");
        assert_eq!(
            mc_value(addrs[i], k),
            Some(format!("v{i}").into_bytes()),
            "{k} on its server"
        );
    }
    // A get over every server comes back merged in the order asked, duplicates and misses
    // included.
    let got = c
        .get(&[&keys[2], "nope", &keys[0], &keys[1], &keys[2]])
        .unwrap();
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, vec![keys[2].as_str(), &keys[0], &keys[1], &keys[2]]);
    c.send(format!("gets {} {}\r\n", keys[0], keys[1]).as_bytes());
    let line = c.line();
    let cas: u64 = line
        .split(' ')
        .nth(4)
        .expect("gets returns a cas value")
        .parse()
        .unwrap();
    assert_eq!(c.line(), "v0");
    assert_eq!(c.values().unwrap(), vec![(keys[1].clone(), b"v1".to_vec())]);

    let k = &keys[0];
    fn script(c: &mut Mc, cmd: String, want: &str) {
        c.send(cmd.as_bytes());
        assert_eq!(c.line(), want, "{cmd:?}");
    }
    script(&mut c, format!("add {k} 0 0 1\r\nx\r\n"), "NOT_STORED");
    script(&mut c, format!("replace {k} 0 0 2\r\nr0\r\n"), "STORED");
    script(&mut c, format!("append {k} 0 0 1\r\nA\r\n"), "STORED");
    script(&mut c, format!("prepend {k} 0 0 1\r\nP\r\n"), "STORED");
    script(&mut c, format!("cas {k} 0 0 1 {cas}\r\nz\r\n"), "EXISTS");
    script(&mut c, "set n 0 0 2\r\n10\r\n".into(), "STORED");
    script(&mut c, "incr n 5\r\n".into(), "15");
    script(&mut c, "decr n 20\r\n".into(), "0");
    script(&mut c, format!("touch {k} 100\r\n"), "TOUCHED");
    script(&mut c, "delete n\r\n".into(), "DELETED");
    script(&mut c, "delete n\r\n".into(), "NOT_FOUND");
    script(
        &mut c,
        "stats\r\n".into(),
        "CLIENT_ERROR unsupported command 'stats' for the sharding proxy",
    );
    assert_eq!(c.get(&[k]).unwrap(), vec![(k.clone(), b"Pr0A".to_vec())]);
    c.send(format!("gets {k}\r\n").as_bytes());
    let cas: u64 = c.line().split(' ').nth(4).unwrap().parse().unwrap();
    assert_eq!(c.line(), "Pr0A");
    assert_eq!(c.values().unwrap(), vec![]);
    script(&mut c, format!("cas {k} 0 0 1 {cas}\r\nC\r\n"), "STORED");

    // noreply: nothing comes back, the effect happens, and the next reply is in step.
    c.send(
        format!(
            "set {} 0 0 2 noreply\r\nnr\r\ndelete {} noreply\r\nincr nothere 1 noreply\r\n",
            keys[1], keys[2]
        )
        .as_bytes(),
    );
    assert_eq!(
        c.get(&[&keys[1], &keys[2]]).unwrap(),
        vec![(keys[1].clone(), b"nr".to_vec())]
    );
    assert_eq!(mc_value(addrs[2], &keys[2]), None);

    // A bad data chunk gets CLIENT_ERROR and closes only that connection.
    let mut bad = Mc::connect(proxy.addr);
    bad.send(b"set k 0 0 2\r\nTOO LONG\r\n");
    assert!(bad.line().starts_with("CLIENT_ERROR"));
    let mut buf = [0u8; 1];
    assert!(matches!(bad.reader.read(&mut buf), Ok(0) | Err(_)));
    assert_eq!(c.get(&[k]).unwrap(), vec![(k.clone(), b"C".to_vec())]);
    c.send(b"quit\r\n");
    assert!(matches!(c.reader.read(&mut buf), Ok(0) | Err(_)));
}

/// Three nginx servers, each answering `backend-N <uri>`; returns the guard and ports.
fn three_nginx(dir: &std::path::Path) -> (Proc, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let d = dir.display();
    let mut conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n"
    );
    for (i, p) in ports.iter().enumerate() {
        conf.push_str(&format!(" server {{ listen 127.0.0.1:{p}; location / {{ return 200 \"backend-{i} $uri\"; }} }}\n"));
    }
    conf.push_str("}\n");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let proc = Proc::spawn(
        require_tool("nginx"),
        &[
            "-p",
            dir.to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
            "-e",
            &format!("{d}/error.log"),
        ],
    );
    for p in &ports {
        wait_port(local(*p), Duration::from_secs(10));
    }
    (proc, ports)
}

/// Sends GET requests on one keep-alive HTTP/1.1 connection; returns (status, body) each.
fn http1_keepalive(addr: SocketAddr, requests: &[(&str, Option<&str>)]) -> Vec<(u16, String)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    requests
        .iter()
        .map(|(path, key)| {
            let key = key.map(|k| format!("X-Key: {k}\r\n")).unwrap_or_default();
            write!(writer, "GET {path} HTTP/1.1\r\nHost: test\r\n{key}\r\n").unwrap();
            let mut status_line = String::new();
            reader.read_line(&mut status_line).unwrap();
            let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            (status, String::from_utf8(body).unwrap())
        })
        .collect()
}

/// A server that sends a response head and part of its body, then goes quiet, must not
/// hold the client: the request timeout covers the small body read whole too.
#[test]
fn an_http_server_that_stalls_mid_body_gets_a_504_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut head = [0; 1024];
            let _ = stream.read(&mut head);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes.");
            held.push(stream);
        }
    });
    let proxy = shard(
        "http",
        &[format!("127.0.0.1:{port}:1")],
        &["--shard-key", "header:X-Key", "--timeout", "300ms"],
    );
    let started = Instant::now();
    // The client's read timeout (10 s) would fail this if the proxy hung.
    let replies = http1_keepalive(proxy.addr, &[("/", Some("k"))]);
    let (status, body) = &replies[0];
    assert_eq!(*status, 504, "{body}");
    assert!(body.contains("no response within 300 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn http_requests_go_to_their_keys_server_over_http1_and_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let (nginx, ports) = three_nginx(dir.path());
    let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}:1")).collect();
    let ring = Ring::new(&specs(&servers), &[], HashKind::Fnv1a64, None);
    let proxy = shard("http", &servers, &["--shard-key", "header:X-Key"]);

    // Keys on every server, and many more.
    let mut keys: Vec<String> = (0..3).map(|s| key_on(&ring, s, "user-")).collect();
    keys.extend((0..60).map(|i| format!("customer/{i}")));
    let requests: Vec<(&str, Option<&str>)> =
        keys.iter().map(|k| ("/cart", Some(k.as_str()))).collect();
    let mut seen = [0; 3];
    for (key, (status, body)) in keys.iter().zip(http1_keepalive(proxy.addr, &requests)) {
        let home = ring.server_for(key.as_bytes()).unwrap();
        assert_eq!(
            (status, body),
            (200, format!("backend-{home} /cart")),
            "{key}"
        );
        seen[home] += 1;
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "keys spread over every server: {seen:?}"
    );
    // No key: no shard owns the request, and none gets it.
    let (status, body) = http1_keepalive(proxy.addr, &[("/free", None)]).remove(0);
    assert_eq!(
        (status, body.as_str()),
        (400, "the request has no shard key: no header x-key\n")
    );

    // HTTP/2 with prior knowledge (h2c), same placement.
    let curl = require_tool("curl");
    for key in keys.iter().take(5) {
        let out = std::process::Command::new(&curl)
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-w",
                " http%{http_version}",
                "-H",
            ])
            .arg(format!("X-Key: {key}"))
            .arg(format!("http://{}/h2", proxy.addr))
            .output()
            .unwrap();
        let home = ring.server_for(key.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("backend-{home} /h2 http2")
        );
    }

    // Servers gone: a gateway error, not a hang.
    drop(nginx);
    let (status, body) = http1_keepalive(proxy.addr, &[("/x", Some("user-1"))]).remove(0);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("unavailable"), "{body}");
}

#[test]
fn a_changed_config_file_brings_in_a_new_ring() {
    let (_procs, addrs, servers) = three_redis();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shard.yaml");
    // Writes the file in one rename, as the kubelet swaps a ConfigMap's files; returns
    // the version of the text written.
    let write_config = |servers: &[String]| {
        let list: String = servers.iter().map(|s| format!("  - \"{s}\"\n")).collect();
        let text = format!(
            "protocol: redis\nhash: murmur\ntimeout: 2s\nconnect_timeout: 500ms\n\
             servers:\n{list}"
        );
        let tmp = dir.path().join("shard.yaml.tmp");
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        ring_version(&text)
    };
    let first = write_config(&servers[..2]);
    let proxy = shard("redis", &[], &["--config", config.to_str().unwrap()]);
    let names = |servers: &[String]| -> Vec<String> {
        specs(servers).iter().map(ServerSpec::ring_name).collect()
    };
    assert_eq!(
        ring_report(proxy.admin),
        RingReport {
            version: Some(first.clone()),
            members: names(&servers[..2]),
        },
        "the admin port reports the ring in service and the file it came from"
    );
    let two = Ring::new(&specs(&servers[..2]), &[], HashKind::Murmur, None);
    let three = Ring::new(&specs(&servers), &[], HashKind::Murmur, None);
    let mut c = Resp::connect(proxy.addr);
    let moving = key_on(&three, 2, "move");
    let staying = (0..)
        .map(|i| format!("stay{i}"))
        .find(|k| three.server_for(k.as_bytes()) == two.server_for(k.as_bytes()))
        .unwrap();
    assert_eq!(c.cmd(&["SET", &moving, "old"]), Reply::Status("OK".into()));
    assert_eq!(
        c.cmd(&["SET", &staying, "kept"]),
        Reply::Status("OK".into())
    );
    assert_eq!(
        get_direct(addrs[two.server_for(moving.as_bytes()).unwrap()], &moving),
        Reply::bulk("old")
    );

    let second = write_config(&servers);
    // The same client connection switches to the new ring once the file is re-read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.cmd(&["GET", &moving]) != Reply::Bulk(None) {
        assert!(
            Instant::now() < deadline,
            "the new ring never came into service"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The new ring is in service; it is reported once no batch can still be on its way
    // on the old one: never before, and then for good.
    let reported = Instant::now();
    loop {
        let report = ring_report(proxy.admin);
        if report.version.as_ref() == Some(&second) {
            assert_eq!(report.members, names(&servers));
            break;
        }
        assert_eq!(report.version.as_ref(), Some(&first), "{report:?}");
        assert!(
            reported.elapsed() < Duration::from_secs(20),
            "the new ring was never reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.cmd(&["SET", &moving, "new"]), Reply::Status("OK".into()));
    assert_eq!(get_direct(addrs[2], &moving), Reply::bulk("new"));
    assert_eq!(c.cmd(&["GET", &staying]), Reply::bulk("kept"));

    // A broken file keeps the running ring, and the report says so.
    std::fs::write(&config, "protocol: redis\nservers: [\"nope\"]\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.cmd(&["GET", &moving]), Reply::bulk("new"));
    assert_eq!(support::http_get(proxy.admin, "/readyz").unwrap().0, 200);
    assert_eq!(ring_report(proxy.admin).version, Some(second));
}

/// What the admin port answers on `/ring`.
fn ring_report(admin: SocketAddr) -> RingReport {
    let (status, body) = support::http_get(admin, RING_PATH).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn concurrent_clients_sharing_server_connections_each_get_their_own_replies() {
    let (_procs, _addrs, servers) = three_redis();
    let proxy = shard("redis", &servers, &[]);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut c = Resp::connect(addr);
                if t % 2 == 1 {
                    assert!(matches!(c.cmd(&["HELLO", "3"]), Reply::Map(_)));
                }
                for round in 0..20 {
                    let mut cmds = Vec::new();
                    for i in 0..50 {
                        let key = format!("c{t}:{i}");
                        cmds.push(args(&[
                            b"SET",
                            key.as_bytes(),
                            format!("{t}-{round}-{i}").as_bytes(),
                        ]));
                        cmds.push(args(&[
                            b"MGET",
                            key.as_bytes(),
                            b"absent",
                            format!("c{t}:0").as_bytes(),
                        ]));
                    }
                    let replies = c.pipeline(&cmds);
                    let nil = if t % 2 == 1 {
                        Reply::Null
                    } else {
                        Reply::Bulk(None)
                    };
                    for i in 0..50 {
                        assert_eq!(replies[2 * i], Reply::Status("OK".into()));
                        let first = Reply::bulk(&format!("{t}-{round}-0"));
                        assert_eq!(
                            replies[2 * i + 1],
                            Reply::Array(Some(vec![
                                Reply::bulk(&format!("{t}-{round}-{i}")),
                                nil.clone(),
                                first
                            ])),
                            "client {t} round {round} command {i}"
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client saw someone else's reply");
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let (_procs, _addrs, servers) = three_redis();
    let mut proxy = shard("redis", &servers, &[]);
    let mut c = Resp::connect(proxy.addr);
    assert_eq!(c.cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));
    proxy.proc.terminate();
    assert_eq!(proxy.proc.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(c.closed(), "idle client connections are closed on shutdown");
}

// ---------------------------------------------------------------------------------------
// Defects found with outside test suites and real failures (issue 14).

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_connection_redis_closed_while_idle_is_not_an_error_nor_a_failure() {
    // Redis closes clients idle for a second; the proxy's shared connection is one.
    let port = free_port();
    let _redis = redis_server_on(port, &["--timeout", "1"]);
    let server = format!("127.0.0.1:{port}:1");
    // One failure would eject the server: a closed idle connection must not count.
    let proxy = shard(
        "redis",
        std::slice::from_ref(&server),
        &[
            "--auto-eject-hosts",
            "--server-failure-limit",
            "1",
            "--server-retry-timeout",
            "10m",
        ],
    );
    let mut c = Resp::connect(proxy.addr);
    assert_eq!(c.cmd(&["SET", "a", "1"]), Reply::Status("OK".into()));
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            c.cmd(&["SET", "a", "1"]),
            Reply::Status("OK".into()),
            "after idle close {round}"
        );
        assert_eq!(c.cmd(&["GET", "a"]), Reply::bulk("1"));
    }
    let addr = local(port);
    assert_eq!(
        metric(proxy.admin, "rigging_shard_server_errors_total", addr),
        0.0
    );
    assert_eq!(
        metric(proxy.admin, "rigging_shard_server_ejections_total", addr),
        0.0
    );
}

#[test]
fn a_connection_memcached_closed_while_idle_is_not_an_error() {
    let (_mc, addr) = support::memcached_with(&["-o", "idle_timeout=1"]);
    let server = format!("{addr}:1");
    let proxy = shard(
        "memcached",
        std::slice::from_ref(&server),
        &["--auto-eject-hosts", "--server-failure-limit", "1"],
    );
    let mut c = Mc::connect(proxy.addr);
    assert_eq!(c.set("k", "v"), "STORED");
    // memcached's idle sweeper runs about once a second: give it a few.
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(c.set("k", "w"), "STORED");
    assert_eq!(
        c.get(&["k"]).unwrap(),
        vec![("k".to_owned(), b"w".to_vec())]
    );
    assert_eq!(
        metric(proxy.admin, "rigging_shard_server_errors_total", addr),
        0.0
    );
}

#[test]
fn a_memcached_get_of_many_thousand_keys_is_served_as_memcached_serves_it() {
    let (_mc, addr) = memcached();
    let server = format!("{addr}:1");
    let proxy = shard("memcached", std::slice::from_ref(&server), &[]);
    let mut c = Mc::connect(proxy.addr);
    assert_eq!(c.set("key-7", "seven"), "STORED");
    // 20,000 keys: a 200 KB line, three times the old 64 KiB limit.
    let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let direct = {
        let mut d = Mc::connect(addr);
        d.get(&refs).unwrap()
    };
    assert_eq!(c.get(&refs).unwrap(), direct);
    assert_eq!(direct, vec![("key-7".to_owned(), b"seven".to_vec())]);
}

#[test]
fn hangup_and_user_signals_do_not_kill_the_process() {
    let (_procs, _addrs, servers) = three_redis();
    let mut proxy = shard("redis", &servers, &[]);
    for sig in ["HUP", "USR1", "USR2", "TTIN", "TTOU"] {
        support::signal(proxy.proc.pid(), sig);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            proxy.proc.child.try_wait().unwrap(),
            None,
            "SIG{sig} ended the process"
        );
        let mut c = Resp::connect(proxy.addr);
        assert_eq!(
            c.cmd(&["SET", "after", sig]),
            Reply::Status("OK".into()),
            "after SIG{sig}"
        );
    }
    // Still stopped by SIGTERM.
    proxy.proc.terminate();
    assert_eq!(proxy.proc.wait_exit(Duration::from_secs(10)), Some(0));
}

/// Sends the head of a SET of a `value`-byte value and `mib` MiB of it; returns the
/// socket.
fn partial_set(addr: SocketAddr, value: usize, mib: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${value}\r\n").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..mib {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    s
}

/// The error reply on `s`, if one comes within half a second.
fn refusal(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut reply = [0u8; 256];
    match s.read(&mut reply) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&reply[..n]).into_owned()),
        _ => None,
    }
}

#[test]
fn requests_in_flight_are_bounded_in_memory_and_refused_past_it() {
    let (_redis, addr) = redis_server();
    let server = format!("{addr}:1");
    let proxy = shard("redis", std::slice::from_ref(&server), &[]);
    let before = rss_kib(proxy.proc.pid());

    // Five clients each hold 60 MB of a 63 MiB bulk string: under the per-client bound,
    // but together over the bound on everything in flight.
    let mut held: Vec<TcpStream> = (0..5)
        .map(|_| partial_set(proxy.addr, 63 << 20, 60))
        .collect();
    let peak = rss_kib(proxy.proc.pid());
    let replies: Vec<Option<String>> = held.iter_mut().map(refusal).collect();
    let busy = replies
        .iter()
        .flatten()
        .filter(|r| r.starts_with("-ERR proxy busy"))
        .count();
    assert!(busy >= 1, "nobody was refused: {replies:?}");
    assert!(
        replies.iter().any(Option::is_none),
        "some clients are still being served: {replies:?}"
    );
    assert!(
        peak < before + 350 * 1024,
        "RSS went from {before} KiB to {peak} KiB"
    );
    drop(held);

    // One client alone with 100 MB of a 512 MB bulk string: past the per-client bound.
    let mut big = partial_set(proxy.addr, 512 << 20, 100);
    let reply = refusal(&mut big).expect("an error reply");
    assert!(reply.starts_with("-ERR request too large"), "{reply}");

    // The memory is given back and the proxy still serves.
    let mut c = Resp::connect(proxy.addr);
    assert_eq!(c.cmd(&["SET", "small", "1"]), Reply::Status("OK".into()));
}

/// A figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends `head`, `value` and `tail` as one complete request and returns the first line of
/// the answer, or why there was none (a refused client may be reset while it still sends).
fn send_whole(addr: SocketAddr, head: &[u8], value: &[u8], tail: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sent = s
        .write_all(head)
        .and_then(|()| s.write_all(value))
        .and_then(|()| s.write_all(tail));
    let mut line = String::new();
    match BufReader::new(&s).read_line(&mut line) {
        Ok(n) if n > 0 => line.trim_end().to_owned(),
        Ok(_) => format!("closed ({sent:?})"),
        Err(err) => format!("{err} ({sent:?})"),
    }
}

/// MiB of memory the sidecar may use besides the buffers the documented bound counts: the
/// binary, the runtime's threads and stacks, the allocator's slack.
const RUNTIME_ALLOWANCE_MIB: u64 = 64;

/// Runs `rounds` rounds of `clients` clients at once, each sending one complete request
/// built by `request` (head, value, tail); checks after each round that the proxy's peak
/// memory stayed within the bound on everything in flight, and at the end that its memory
/// goes back down once it is idle.
fn rounds_of_large_requests(
    proxy: &Shard,
    rounds: usize,
    clients: usize,
    value: &std::sync::Arc<Vec<u8>>,
    request: fn(usize, usize) -> (Vec<u8>, Vec<u8>),
    stored: &str,
) {
    let pid = proxy.proc.pid();
    let idle = status_kib(pid, "VmRSS");
    let bound = idle + (256 + RUNTIME_ALLOWANCE_MIB) * 1024;
    for round in 0..rounds {
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let (addr, value) = (proxy.addr, value.clone());
                let (head, tail) = request(i, value.len());
                std::thread::spawn(move || send_whole(addr, &head, &value, &tail))
            })
            .collect();
        let replies: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = replies.iter().filter(|r| *r == stored).count();
        assert!(ok >= 1, "round {round}: nobody was served: {replies:?}");
        for r in &replies {
            assert!(
                r == stored || r.contains("proxy busy") || r.contains("(Err("),
                "round {round}: {r}"
            );
        }
        let peak = status_kib(pid, "VmHWM");
        eprintln!("round {round}: {ok} of {clients} stored, peak RSS {peak} KiB");
        assert!(
            peak < bound,
            "round {round}: peak RSS {peak} KiB, over the bound of {bound} KiB (idle {idle} KiB + 256 MiB + {RUNTIME_ALLOWANCE_MIB} MiB)"
        );
    }
    // Idle again: what the large requests took is given back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rss = status_kib(pid, "VmRSS");
        if rss < idle + RUNTIME_ALLOWANCE_MIB * 1024 {
            eprintln!("idle RSS {rss} KiB after the rounds (was {idle} KiB)");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle RSS stays at {rss} KiB after the rounds (was {idle} KiB)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn complete_large_redis_requests_stay_within_the_memory_bound_across_rounds() {
    let (_a, a) = redis_server();
    let (_b, b) = redis_server();
    // Writing 63 MiB to a server on a loaded machine can take longer than the default 1 s.
    let proxy = shard(
        "redis",
        &[format!("{a}:1"), format!("{b}:1")],
        &["--timeout", "20s"],
    );
    // Each request is just under the per-client bound; twenty of them at once are five
    // times the bound on all clients.
    let value = std::sync::Arc::new(vec![b'v'; 63 << 20]);
    rounds_of_large_requests(
        &proxy,
        3,
        20,
        &value,
        |i, len| {
            let key = format!("big{i}");
            let head = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${len}\r\n", key.len());
            (head.into_bytes(), b"\r\n".to_vec())
        },
        "+OK",
    );
    let mut c = Resp::connect(proxy.addr);
    assert_eq!(c.cmd(&["SET", "small", "1"]), Reply::Status("OK".into()));
}

#[test]
fn complete_large_memcached_requests_stay_within_the_memory_bound_across_rounds() {
    let (_mc, addr) = support::memcached_with(&["-I", "64m", "-m", "512"]);
    let proxy = shard("memcached", &[format!("{addr}:1")], &["--timeout", "20s"]);
    let value = std::sync::Arc::new(vec![b'v'; 63 << 20]);
    rounds_of_large_requests(
        &proxy,
        2,
        12,
        &value,
        |i, len| {
            let head = format!("set big{i} 0 0 {len}\r\n");
            (head.into_bytes(), b"\r\n".to_vec())
        },
        "STORED",
    );
}

#[test]
fn a_request_over_the_per_client_bound_is_refused_naming_it() {
    let (_redis, addr) = redis_server();
    let proxy = shard("redis", &[format!("{addr}:1")], &[]);
    // A complete SET whose value is 1 MiB over the bound: refused, not stored.
    let value = vec![b'v'; 65 << 20];
    let head = format!("*3\r\n$3\r\nSET\r\n$4\r\nover\r\n${}\r\n", value.len());
    let reply = send_whole(proxy.addr, head.as_bytes(), &value, b"\r\n");
    assert!(
        reply.starts_with("-ERR request too large") && reply.contains("64 MiB"),
        "{reply}"
    );
    let mut c = Resp::connect(proxy.addr);
    assert_eq!(c.cmd(&["EXISTS", "over"]), Reply::Int(0));
}

#[test]
fn a_reload_that_changes_listen_says_it_needs_a_restart() {
    let (_procs, _addrs, servers) = three_redis();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shard.yaml");
    let listen = local(free_port());
    let write = |listen: SocketAddr| {
        let list: String = servers.iter().map(|s| format!("  - \"{s}\"\n")).collect();
        std::fs::write(
            &config,
            format!("protocol: redis\nlisten: \"{listen}\"\nservers:\n{list}"),
        )
        .unwrap();
    };
    write(listen);
    let log_path = dir.path().join("stderr.log");
    let admin = local(free_port());
    let mut child = support::Proc {
        name: "rigging-sidecar shard".into(),
        child: std::process::Command::new(support::sidecar_bin())
            .args([
                "shard",
                "--config",
                config.to_str().unwrap(),
                "--admin",
                &admin.to_string(),
            ])
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    };
    wait_ready(admin, Duration::from_secs(10));
    let moved = local(free_port());
    write(moved);
    // SIGHUP: reload now rather than at the next poll.
    support::signal(child.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("needs a restart") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = log
        .lines()
        .find(|l| l.contains("needs a restart"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(line.contains("\"setting\":\"listen\""), "{line}");
    // Still serving where it was.
    assert!(
        TcpStream::connect(listen).is_ok(),
        "not listening on {listen} any more (exit: {:?}):\n{log}",
        child.child.try_wait()
    );
    let mut c = Resp::connect(listen);
    assert_eq!(c.cmd(&["PING"]), Reply::Status("PONG".into()));
    child.terminate();
    assert_eq!(child.wait_exit(Duration::from_secs(10)), Some(0));
}
