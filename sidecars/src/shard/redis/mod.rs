//! The Redis front end: RESP2, and RESP3 for clients that send `HELLO 3`.
//!
//! Single-key commands go to the key's server unchanged. MGET, MSET, DEL, EXISTS, UNLINK
//! and TOUCH are split into one command per server and their replies merged. Commands over
//! several keys that must stay atomic (RENAME, SINTERSTORE, BLPOP over several lists, EVAL,
//! …) are forwarded when all their keys live on one server and refused otherwise. PING,
//! ECHO, QUIT, SELECT 0, AUTH and HELLO are answered here. Anything that would need every
//! server (KEYS, SCAN, FLUSHALL, MULTI/EXEC, pub/sub, …) gets an error reply and the
//! connection stays usable.

pub mod resp;

use std::fmt;
use std::io::Write;
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::Conn;
use super::proxy::{Item, Part, Plan, ProtoError, Protocol, Replies};
use super::ring::Ring;

/// Most commands planned in one batch.
const MAX_BATCH: usize = 1024;

/// Merge operations.
const MERGE_MGET: u8 = 0;
const MERGE_SUM: u8 = 1;
const MERGE_OK: u8 = 2;

/// Session values on server connections: the RESP version in use.
const RESP2: u8 = 2;
const RESP3: u8 = 3;

/// The Redis protocol handler.
#[derive(Debug, Default)]
pub struct Redis {
    /// Password required from clients and sent to servers (twemproxy's `redis_auth`).
    pub auth: Option<String>,
}

/// Per-client state.
#[derive(Debug, Default)]
pub struct Client {
    resp3: bool,
    authed: bool,
    args: Vec<(usize, usize)>,
    route: Vec<u32>,
    counts: Vec<u32>,
    sub: Vec<u32>,
}

/// How a command is routed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One key, at argument 1.
    Key,
    /// Keys at `first, first+step, …` up to `len - from_end`; all must share a server.
    Keys {
        first: usize,
        from_end: usize,
        step: usize,
    },
    /// `EVAL script numkeys key…`: keys after the count; all must share a server.
    Eval,
    /// Split per server and merge: MGET.
    Mget,
    /// Split per server, sum the integer replies: DEL, EXISTS, UNLINK, TOUCH.
    Sum,
    /// Split key-value pairs per server: MSET.
    Mset,
    Ping,
    Echo,
    Quit,
    Select,
    Auth,
    Hello,
    /// Refused with a reason.
    Refuse(&'static str),
    Unknown,
}

fn classify(name: &[u8]) -> Kind {
    let mut upper = [0u8; 24];
    if name.len() > upper.len() {
        return Kind::Unknown;
    }
    for (u, c) in upper.iter_mut().zip(name) {
        *u = c.to_ascii_uppercase();
    }
    const ALL: Kind = Kind::Keys {
        first: 1,
        from_end: 0,
        step: 1,
    };
    // Two-key commands: `from_end: usize::MAX` means "arguments 1 and 2 only".
    const PAIR: Kind = Kind::Keys {
        first: 1,
        from_end: usize::MAX,
        step: 1,
    };
    match &upper[..name.len()] {
        b"GET"
        | b"SET"
        | b"SETNX"
        | b"SETEX"
        | b"PSETEX"
        | b"APPEND"
        | b"STRLEN"
        | b"GETSET"
        | b"GETDEL"
        | b"GETEX"
        | b"GETRANGE"
        | b"SETRANGE"
        | b"SUBSTR"
        | b"INCR"
        | b"DECR"
        | b"INCRBY"
        | b"DECRBY"
        | b"INCRBYFLOAT"
        | b"GETBIT"
        | b"SETBIT"
        | b"BITCOUNT"
        | b"BITPOS"
        | b"BITFIELD"
        | b"BITFIELD_RO"
        | b"EXPIRE"
        | b"PEXPIRE"
        | b"EXPIREAT"
        | b"PEXPIREAT"
        | b"EXPIRETIME"
        | b"PEXPIRETIME"
        | b"TTL"
        | b"PTTL"
        | b"PERSIST"
        | b"TYPE"
        | b"DUMP"
        | b"RESTORE"
        | b"SORT_RO"
        | b"HSET"
        | b"HSETNX"
        | b"HGET"
        | b"HMSET"
        | b"HMGET"
        | b"HDEL"
        | b"HLEN"
        | b"HSTRLEN"
        | b"HEXISTS"
        | b"HKEYS"
        | b"HVALS"
        | b"HGETALL"
        | b"HINCRBY"
        | b"HINCRBYFLOAT"
        | b"HSCAN"
        | b"HRANDFIELD"
        | b"LPUSH"
        | b"LPUSHX"
        | b"RPUSH"
        | b"RPUSHX"
        | b"LPOP"
        | b"RPOP"
        | b"LLEN"
        | b"LINDEX"
        | b"LINSERT"
        | b"LRANGE"
        | b"LREM"
        | b"LSET"
        | b"LTRIM"
        | b"LPOS"
        | b"SADD"
        | b"SREM"
        | b"SCARD"
        | b"SISMEMBER"
        | b"SMISMEMBER"
        | b"SMEMBERS"
        | b"SPOP"
        | b"SRANDMEMBER"
        | b"SSCAN"
        | b"ZADD"
        | b"ZINCRBY"
        | b"ZREM"
        | b"ZCARD"
        | b"ZCOUNT"
        | b"ZLEXCOUNT"
        | b"ZSCORE"
        | b"ZMSCORE"
        | b"ZRANK"
        | b"ZREVRANK"
        | b"ZRANGE"
        | b"ZRANGEBYSCORE"
        | b"ZRANGEBYLEX"
        | b"ZREVRANGE"
        | b"ZREVRANGEBYSCORE"
        | b"ZREVRANGEBYLEX"
        | b"ZREMRANGEBYRANK"
        | b"ZREMRANGEBYSCORE"
        | b"ZREMRANGEBYLEX"
        | b"ZPOPMIN"
        | b"ZPOPMAX"
        | b"ZRANDMEMBER"
        | b"ZSCAN"
        | b"PFADD"
        | b"GEOADD"
        | b"GEODIST"
        | b"GEOHASH"
        | b"GEOPOS"
        | b"GEORADIUS_RO"
        | b"GEORADIUSBYMEMBER_RO"
        | b"GEOSEARCH"
        | b"XADD"
        | b"XLEN"
        | b"XRANGE"
        | b"XREVRANGE"
        | b"XDEL"
        | b"XTRIM"
        | b"XACK"
        | b"XPENDING"
        | b"XCLAIM"
        | b"XAUTOCLAIM"
        | b"XSETID" => Kind::Key,
        b"RENAME" | b"RENAMENX" | b"RPOPLPUSH" | b"LMOVE" | b"SMOVE" | b"COPY" | b"LCS" => PAIR,
        b"SDIFF" | b"SINTER" | b"SUNION" | b"SDIFFSTORE" | b"SINTERSTORE" | b"SUNIONSTORE"
        | b"PFCOUNT" | b"PFMERGE" => ALL,
        b"MSETNX" => Kind::Keys {
            first: 1,
            from_end: 0,
            step: 2,
        },
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BRPOPLPUSH" | b"BLMOVE" => {
            Kind::Refuse("a blocking command would stall the server connection all clients share")
        }
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => Kind::Eval,
        b"MGET" => Kind::Mget,
        b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" => Kind::Sum,
        b"MSET" => Kind::Mset,
        b"PING" => Kind::Ping,
        b"ECHO" => Kind::Echo,
        b"QUIT" => Kind::Quit,
        b"SELECT" => Kind::Select,
        b"AUTH" => Kind::Auth,
        b"HELLO" => Kind::Hello,
        b"KEYS" | b"SCAN" | b"RANDOMKEY" | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" => {
            Kind::Refuse("it would need every shard")
        }
        b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" => {
            Kind::Refuse("transactions cannot span shards; use EVAL with keys on one shard")
        }
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
        | b"PUBLISH" | b"MONITOR" => Kind::Refuse("pub/sub and MONITOR are per server"),
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" | b"ZUNION" | b"ZINTER" | b"ZDIFF"
        | b"SINTERCARD" | b"ZINTERCARD" | b"LMPOP" | b"ZMPOP" | b"BLMPOP" | b"BZMPOP" | b"SORT"
        | b"GEORADIUS" | b"GEORADIUSBYMEMBER" | b"GEOSEARCHSTORE" | b"XREAD" | b"XREADGROUP"
        | b"XGROUP" | b"XINFO" | b"OBJECT" | b"MIGRATE" | b"MOVE" => {
            Kind::Refuse("its keys cannot be located by the proxy")
        }
        _ => Kind::Unknown,
    }
}

fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

fn err_line(out: &mut Vec<u8>, msg: fmt::Arguments<'_>) {
    out.push(b'-');
    let start = out.len();
    let _ = out.write_fmt(msg);
    // A CR or LF inside would end the line early and desynchronise the client.
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "${}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

impl Redis {
    fn route(&self, ring: &Ring, key: &[u8]) -> Option<usize> {
        ring.server_for(key)
    }

    /// Plans one parsed command. Returns whether the batch must end after it.
    fn plan_one(
        &self,
        c: &mut Client,
        input: &[u8],
        raw: Range<usize>,
        ring: &Ring,
        plan: &mut Plan,
    ) -> bool {
        let args = &c.args;
        let arg = |i: usize| &input[args[i].0..args[i].1];
        let name = arg(0);
        let kind = classify(name);
        let nargs = args.len();
        if self.auth.is_some()
            && !c.authed
            && !matches!(kind, Kind::Auth | Kind::Hello | Kind::Quit)
        {
            plan.local_reply(b"-NOAUTH Authentication required.\r\n");
            return false;
        }
        let arity = |plan: &mut Plan| {
            plan.local_with(|o| {
                err_line(
                    o,
                    format_args!(
                        "ERR wrong number of arguments for '{}' command",
                        lower(name)
                    ),
                )
            })
        };
        match kind {
            Kind::Key => {
                if nargs < 2 {
                    arity(plan);
                } else {
                    self.forward_to(ring, arg(1), input, raw, plan);
                }
            }
            Kind::Keys {
                first,
                from_end,
                step,
            } => {
                let last = if from_end == usize::MAX {
                    first + 2
                } else {
                    nargs.saturating_sub(from_end)
                };
                let last = last.min(nargs);
                if last <= first {
                    arity(plan);
                    return false;
                }
                let keys = (first..last).step_by(step).map(arg);
                self.forward_same(ring, keys, input, raw, plan);
            }
            Kind::Eval => {
                let numkeys = (nargs >= 3)
                    .then(|| std::str::from_utf8(arg(2)).ok()?.parse::<usize>().ok())
                    .flatten();
                match numkeys {
                    None => arity(plan),
                    Some(0) => plan.local_reply(
                        b"-ERR EVAL without keys cannot be routed by the sharding proxy\r\n",
                    ),
                    Some(n) if 3 + n > nargs => plan.local_reply(
                        b"-ERR Number of keys can't be greater than number of args\r\n",
                    ),
                    Some(n) => {
                        let keys = (3..3 + n).map(arg);
                        self.forward_same(ring, keys, input, raw, plan);
                    }
                }
            }
            Kind::Mget | Kind::Sum => {
                if nargs < 2 {
                    arity(plan);
                } else {
                    let op = if matches!(kind, Kind::Mget) {
                        MERGE_MGET
                    } else {
                        MERGE_SUM
                    };
                    self.split(c, input, raw, ring, plan, 1, op);
                }
            }
            Kind::Mset => {
                if nargs < 3 || nargs.is_multiple_of(2) {
                    arity(plan);
                } else {
                    self.split(c, input, raw, ring, plan, 2, MERGE_OK);
                }
            }
            Kind::Ping => match nargs {
                1 => plan.local_reply(b"+PONG\r\n"),
                2 => plan.local_with(|o| bulk(o, arg(1))),
                _ => arity(plan),
            },
            Kind::Echo => match nargs {
                2 => plan.local_with(|o| bulk(o, arg(1))),
                _ => arity(plan),
            },
            Kind::Quit => {
                plan.local_reply(b"+OK\r\n");
                plan.close = true;
                return true;
            }
            Kind::Select => match nargs {
                2 if arg(1) == b"0" => plan.local_reply(b"+OK\r\n"),
                2 => plan.local_reply(
                    b"-ERR DB index is out of range: the sharding proxy serves database 0 only\r\n",
                ),
                _ => arity(plan),
            },
            Kind::Auth => {
                let password = match nargs {
                    2 => arg(1),
                    3 => arg(2),
                    _ => {
                        arity(plan);
                        return false;
                    }
                };
                self.check_auth(c, password, plan);
            }
            Kind::Hello => {
                self.hello(c, input, plan);
                // Later commands of this pipeline may expect the new protocol version.
                return true;
            }
            Kind::Refuse(why) => plan.local_with(|o| {
                err_line(
                    o,
                    format_args!(
                        "ERR '{}' is not supported by the sharding proxy: {why}",
                        lower(name)
                    ),
                )
            }),
            Kind::Unknown => plan.local_with(|o| {
                err_line(
                    o,
                    format_args!(
                        "ERR unknown or unsupported command '{}' for the sharding proxy",
                        lower(name)
                    ),
                )
            }),
        }
        false
    }

    fn check_auth(&self, c: &mut Client, password: &[u8], plan: &mut Plan) -> bool {
        match &self.auth {
            None => {
                plan.local_reply(b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n");
                false
            }
            Some(expected) if expected.as_bytes() == password => {
                c.authed = true;
                plan.local_reply(b"+OK\r\n");
                true
            }
            Some(_) => {
                c.authed = false;
                plan.local_reply(
                    b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                );
                false
            }
        }
    }

    fn hello(&self, c: &mut Client, input: &[u8], plan: &mut Plan) {
        let args: Vec<&[u8]> = c.args.iter().map(|&(s, e)| &input[s..e]).collect();
        let mut version = if c.resp3 { 3 } else { 2 };
        if let Some(v) = args.get(1) {
            version = match *v {
                b"2" => 2,
                b"3" => 3,
                _ => {
                    plan.local_reply(b"-NOPROTO unsupported protocol version\r\n");
                    return;
                }
            };
        }
        let mut i = 2;
        while i < args.len() {
            if args[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
                match &self.auth {
                    Some(expected) if expected.as_bytes() == args[i + 2] => c.authed = true,
                    _ => {
                        plan.local_reply(
                            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                        );
                        return;
                    }
                }
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
                i += 2;
            } else {
                plan.local_with(|o| {
                    err_line(
                        o,
                        format_args!("ERR Syntax error in HELLO option '{}'", lower(args[i])),
                    )
                });
                return;
            }
        }
        if self.auth.is_some() && !c.authed {
            plan.local_reply(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n");
            return;
        }
        c.resp3 = version == 3;
        let fields: [(&str, &str); 5] = [
            ("server", "rigging-shard"),
            ("version", env!("CARGO_PKG_VERSION")),
            ("mode", "standalone"),
            ("role", "master"),
            ("proto", if version == 3 { "3" } else { "2" }),
        ];
        plan.local_with(|o| {
            if version == 3 {
                let _ = write!(o, "%{}\r\n", fields.len() + 2);
            } else {
                let _ = write!(o, "*{}\r\n", (fields.len() + 2) * 2);
            }
            for (k, v) in fields {
                bulk(o, k.as_bytes());
                if k == "proto" {
                    let _ = write!(o, ":{v}\r\n");
                } else {
                    bulk(o, v.as_bytes());
                }
            }
            bulk(o, b"id");
            o.extend_from_slice(b":0\r\n");
            bulk(o, b"modules");
            o.extend_from_slice(b"*0\r\n");
        });
    }

    fn forward_to(
        &self,
        ring: &Ring,
        key: &[u8],
        input: &[u8],
        raw: Range<usize>,
        plan: &mut Plan,
    ) {
        match self.route(ring, key) {
            Some(s) => {
                let index = plan.forward(s, input, raw, 0);
                plan.items.push(Item::Reply {
                    server: s as u32,
                    index,
                });
            }
            None => plan.local_reply(b"-ERR no live servers on the ring\r\n"),
        }
    }

    fn forward_same<'a>(
        &self,
        ring: &Ring,
        mut keys: impl Iterator<Item = &'a [u8]>,
        input: &[u8],
        raw: Range<usize>,
        plan: &mut Plan,
    ) {
        let Some(first) = keys.next() else {
            plan.local_reply(b"-ERR wrong number of arguments\r\n");
            return;
        };
        let server = self.route(ring, first);
        if keys.all(|k| self.route(ring, k) == server) {
            self.forward_to(ring, first, input, raw, plan);
        } else {
            plan.local_reply(b"-CROSSSLOT Keys in request don't hash to the same server\r\n");
        }
    }

    /// Splits a multi-key command (keys every `stride` arguments from 1) into one command
    /// per server, or forwards it whole when all keys share a server.
    #[allow(clippy::too_many_arguments)]
    fn split(
        &self,
        c: &mut Client,
        input: &[u8],
        raw: Range<usize>,
        ring: &Ring,
        plan: &mut Plan,
        stride: usize,
        op: u8,
    ) {
        let nservers = plan.out.len();
        let Client {
            args,
            route,
            counts,
            sub,
            ..
        } = c;
        route.clear();
        counts.clear();
        counts.resize(nservers, 0);
        for k in (1..args.len()).step_by(stride) {
            let (s, e) = args[k];
            match self.route(ring, &input[s..e]) {
                Some(server) => {
                    route.push(server as u32);
                    counts[server] += 1;
                }
                None => {
                    plan.local_reply(b"-ERR no live servers on the ring\r\n");
                    return;
                }
            }
        }
        if counts.iter().filter(|&&n| n > 0).count() == 1 {
            let server = route[0] as usize;
            let index = plan.forward(server, input, raw, 0);
            plan.items.push(Item::Reply {
                server: server as u32,
                index,
            });
            return;
        }
        let name = &input[args[0].0..args[0].1];
        sub.clear();
        sub.resize(nservers, u32::MAX);
        let start = plan.parts.len();
        for server in 0..nservers {
            let n = counts[server] as usize;
            if n == 0 {
                continue;
            }
            let _ = write!(plan.out[server], "*{}\r\n", 1 + n * stride);
            bulk(&mut plan.out[server], name);
            for (j, k) in (1..args.len()).step_by(stride).enumerate() {
                if route[j] as usize == server {
                    for a in &args[k..k + stride] {
                        // A large MSET value is sent from the client's buffer, uncopied.
                        let _ = write!(plan.out[server], "${}\r\n", a.1 - a.0);
                        plan.append(server, input, a.0..a.1);
                        plan.out[server].extend_from_slice(b"\r\n");
                    }
                }
            }
            sub[server] = plan.expect(server, 0);
            if op != MERGE_MGET {
                plan.parts.push(Part {
                    server: server as u32,
                    index: sub[server],
                    key_start: 0,
                    key_end: 0,
                });
            }
        }
        if op == MERGE_MGET {
            for &server in route.iter() {
                plan.parts.push(Part {
                    server,
                    index: sub[server as usize],
                    key_start: 0,
                    key_end: 0,
                });
            }
        }
        plan.items.push(Item::Merge {
            op,
            start,
            end: plan.parts.len(),
        });
    }
}

impl Protocol for Redis {
    type Client = Client;

    fn plan(
        &self,
        c: &mut Client,
        input: &[u8],
        ring: &Ring,
        plan: &mut Plan,
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        while plan.items.len() < MAX_BATCH {
            c.args.clear();
            let Some(len) = resp::parse_command(&input[pos..], &mut c.args)? else {
                plan.needs = resp::command_needs(&input[pos..]).map_or(0, |n| pos + n);
                break;
            };
            for a in &mut c.args {
                a.0 += pos;
                a.1 += pos;
            }
            let raw = pos..pos + len;
            pos += len;
            if c.args.is_empty() {
                continue;
            }
            if self.plan_one(c, input, raw, ring, plan) {
                break;
            }
        }
        Ok(pos)
    }

    fn reply_len(&self, _kind: u8, buf: &[u8]) -> Result<Option<usize>, ProtoError> {
        resp::reply_len(buf)
    }

    fn error_reply(&self, _c: &Client, out: &mut Vec<u8>, msg: fmt::Arguments<'_>) {
        err_line(out, format_args!("ERR {msg}"));
    }

    fn merge(
        &self,
        _c: &Client,
        op: u8,
        parts: &[Part],
        _input: &[u8],
        replies: &Replies<'_>,
        out: &mut Vec<u8>,
    ) {
        match op {
            MERGE_MGET => merge_mget(parts, replies, out),
            MERGE_SUM => {
                let mut total: i64 = 0;
                for p in parts {
                    let reply = replies.get(p.server, p.index);
                    match resp::integer(reply) {
                        Some(n) => total += n,
                        None => {
                            out.extend_from_slice(reply);
                            return;
                        }
                    }
                }
                let _ = write!(out, ":{total}\r\n");
            }
            _ => {
                for p in parts {
                    let reply = replies.get(p.server, p.index);
                    if reply != b"+OK\r\n" {
                        out.extend_from_slice(reply);
                        return;
                    }
                }
                out.extend_from_slice(b"+OK\r\n");
            }
        }
    }

    fn session(&self, c: &Client) -> u8 {
        if c.resp3 { RESP3 } else { RESP2 }
    }

    async fn open_session(&self, conn: &mut Conn, session: u8) -> Result<(), String> {
        let mut cmd = Vec::new();
        let fresh = conn.session == 0;
        match (session, &self.auth) {
            (RESP3, Some(pw)) => {
                let _ = write!(
                    cmd,
                    "*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n"
                );
                bulk(&mut cmd, pw.as_bytes());
            }
            (RESP3, None) => cmd.extend_from_slice(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"),
            (_, Some(pw)) if fresh => {
                cmd.extend_from_slice(b"*2\r\n$4\r\nAUTH\r\n");
                bulk(&mut cmd, pw.as_bytes());
            }
            (_, _) if fresh => return Ok(()),
            (_, _) => cmd.extend_from_slice(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n"),
        }
        conn.stream
            .write_all(&cmd)
            .await
            .map_err(|e| format!("handshake write failed: {e}"))?;
        loop {
            if let Some(len) = resp::reply_len(&conn.rbuf).map_err(|e| format!("handshake: {e}"))? {
                let reply = conn.rbuf.split_to(len);
                if matches!(reply.first(), Some(b'-' | b'!')) {
                    return Err(format!(
                        "handshake refused: {}",
                        String::from_utf8_lossy(&reply).trim_end()
                    ));
                }
                return Ok(());
            }
            match conn.stream.read_buf(&mut conn.rbuf).await {
                Ok(0) => return Err("connection closed during handshake".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("handshake read failed: {e}")),
            }
        }
    }
}

fn merge_mget(parts: &[Part], replies: &Replies<'_>, out: &mut Vec<u8>) {
    // One cursor per sub-reply: (server, index, offset of the next element).
    let mut cursors: Vec<(u32, u32, usize)> = Vec::with_capacity(4);
    for p in parts {
        if cursors.iter().any(|c| c.0 == p.server && c.1 == p.index) {
            continue;
        }
        let reply = replies.get(p.server, p.index);
        match resp::array_header(reply) {
            Some((_, header)) => cursors.push((p.server, p.index, header)),
            None => {
                // An error (or something unexpected) from one server answers the whole MGET.
                out.extend_from_slice(reply);
                return;
            }
        }
    }
    let _ = write!(out, "*{}\r\n", parts.len());
    for p in parts {
        let cursor = cursors
            .iter_mut()
            .find(|c| c.0 == p.server && c.1 == p.index)
            .expect("cursor for every sub-reply");
        let reply = replies.get(p.server, p.index);
        match resp::reply_len(&reply[cursor.2.min(reply.len())..]) {
            Ok(Some(len)) => {
                out.extend_from_slice(&reply[cursor.2..cursor.2 + len]);
                cursor.2 += len;
            }
            _ => out.extend_from_slice(b"$-1\r\n"),
        }
    }
}
