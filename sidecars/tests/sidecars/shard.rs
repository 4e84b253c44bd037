//! The sharding ambassador against real redis-server, memcached, nutcracker and nginx.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rigging_sidecar::shard::hash::HashKind;
use rigging_sidecar::shard::ring::{HashTag, Ring, ServerSpec};

use crate::support::{self, Proc, free_port, local, memcached, redis_server, require_tool, wait_port, wait_ready};

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
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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
    let cmds: Vec<Vec<Vec<u8>>> = keys.iter().map(|k| vec![b"GET".to_vec(), k.clone()]).collect();
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

fn nutcracker_conf(dir: &std::path::Path, pools: &[(String, u16, String, &str, &[String])]) -> std::path::PathBuf {
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

fn start_nutcracker(conf: &std::path::Path, ports: &[u16]) -> Proc {
    let stats = free_port();
    let dir = conf.parent().unwrap();
    let proc = Proc::spawn(
        require_tool("nutcracker"),
        &[
            "-c",
            conf.to_str().unwrap(),
            "-s",
            &stats.to_string(),
            "-a",
            "127.0.0.1",
            "-o",
            dir.join("nutcracker.log").to_str().unwrap(),
            "-p",
            dir.join("nutcracker.pid").to_str().unwrap(),
        ],
    );
    for &p in ports {
        wait_port(local(p), Duration::from_secs(10));
    }
    proc
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
    let pools: Vec<(String, u16, String, &str, &[String])> = HashKind::ALL
        .iter()
        .map(|h| (format!("pool_{h}"), free_port(), h.to_string(), "redis", &servers[..]))
        .collect();
    let conf = nutcracker_conf(dir.path(), &pools);
    let ports: Vec<u16> = pools.iter().map(|p| p.1).collect();
    let _nutcracker = start_nutcracker(&conf, &ports);

    let per_hash = 1000;
    for (name, port, hash, _, _) in &pools {
        let keys = sample_keys(hash, per_hash);
        let mut via_nutcracker = Resp::connect(local(*port));
        let sets: Vec<Vec<Vec<u8>>> = keys
            .iter()
            .map(|k| vec![b"SET".to_vec(), k.clone(), [b"v:".as_slice(), k].concat()])
            .collect();
        for reply in via_nutcracker.pipeline(&sets) {
            assert_eq!(reply, Reply::Status("OK".into()), "SET through nutcracker pool {name}");
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
        let proxy = shard("redis", &servers, &["--hash", hash.name(), "--hash-tag", "{}"]);
        let mut client = Resp::connect(proxy.addr);
        let mut mget = vec![b"MGET".to_vec()];
        mget.extend(keys.iter().cloned());
        let Reply::Array(Some(values)) = client.pipeline(&[mget]).remove(0) else {
            panic!("MGET through rigging failed for {hash}");
        };
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(value, Reply::Bulk(Some([b"v:".as_slice(), key].concat())), "{hash}");
        }
        let gets: Vec<Vec<Vec<u8>>> = keys.iter().map(|k| vec![b"GET".to_vec(), k.clone()]).collect();
        for (key, value) in keys.iter().zip(client.pipeline(&gets)) {
            assert_eq!(value, Reply::Bulk(Some([b"v:".as_slice(), key].concat())), "{hash}");
        }
    }
}
