//! The memcached text protocol front end.
//!
//! `get`/`gets`/`gat`/`gats` with keys on several servers are split into one request per
//! server and the `VALUE` entries merged back in the order the client asked for them.
//! Storage commands (`set add replace append prepend cas`), `delete`, `incr`, `decr` and
//! `touch` go to their key's server. `noreply` is honoured towards the client, but the
//! proxy asks the server for its reply anyway and drops it: that keeps every server
//! connection's reply stream countable even when a request fails.

use std::fmt;
use std::io::Write;

use super::proxy::{Item, Part, Plan, ProtoError, Protocol, Replies};
use super::ring::Ring;

/// Longest command line accepted. A `get` with many keys is the long one: memcached
/// 1.6 serves get lines of megabytes (200,000 keys, 2.4 MB, were tried), and a line must
/// be whole here before its keys can be routed. Beyond this, `CLIENT_ERROR line too long`.
pub const MAX_LINE: usize = 8 * 1024 * 1024;
/// Longest value accepted in a storage command.
const MAX_VALUE: usize = 128 * 1024 * 1024;
/// memcached's key length limit.
const MAX_KEY: usize = 250;
/// Most requests planned in one batch.
const MAX_BATCH: usize = 1024;

/// Reply kinds.
const LINE: u8 = 0;
const RETRIEVAL: u8 = 1;

/// The memcached protocol handler.
#[derive(Debug, Default)]
pub struct Memcached;

/// Per-client scratch space.
#[derive(Debug, Default)]
pub struct Client {
    tokens: Vec<(usize, usize)>,
    route: Vec<u32>,
    counts: Vec<u32>,
    sub: Vec<u32>,
}

fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn tokenize(input: &[u8], start: usize, end: usize, tokens: &mut Vec<(usize, usize)>) {
    tokens.clear();
    let mut i = start;
    while i < end {
        while i < end && input[i] == b' ' {
            i += 1;
        }
        let s = i;
        while i < end && input[i] != b' ' {
            i += 1;
        }
        if i > s {
            tokens.push((s, i));
        }
    }
}

fn parse_usize(bytes: &[u8]) -> Option<usize> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The length of one line (through `\n`) at the start of `buf`.
fn line_len(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf).map(|nl| nl + 1)
}

/// A complete `VALUE` entry: its length and its key's byte range.
type Entry = (usize, (usize, usize));

/// The length of the `VALUE key flags bytes [cas]\r\n<data>\r\n` entry at the start of
/// `buf`, and its key's byte range.
fn value_entry(buf: &[u8]) -> Result<Option<Entry>, ProtoError> {
    let Some(line) = line_len(buf) else {
        return Ok(None);
    };
    let mut fields = buf[..line]
        .trim_ascii_end()
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let (Some(b"VALUE"), Some(key), Some(_flags), Some(bytes)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(ProtoError("malformed VALUE line"));
    };
    let key_start = key.as_ptr() as usize - buf.as_ptr() as usize;
    let n = parse_usize(bytes).ok_or(ProtoError("malformed VALUE length"))?;
    let end = line + n + 2;
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err(ProtoError("VALUE data not followed by CRLF"));
    }
    Ok(Some((end, (key_start, key_start + key.len()))))
}

impl Memcached {
    /// Plans the request whose command line is `input[pos..pos + line]`. Returns the
    /// request's total length, or `None` if its data block is not complete yet.
    fn plan_one(
        &self,
        c: &mut Client,
        input: &[u8],
        pos: usize,
        line: usize,
        ring: &Ring,
        plan: &mut Plan,
    ) -> Result<Option<usize>, ProtoError> {
        let line_end = pos + line;
        let text_end = if line >= 2 && input[line_end - 2] == b'\r' {
            line_end - 2
        } else {
            line_end - 1
        };
        tokenize(input, pos, text_end, &mut c.tokens);
        let Some(&(cs, ce)) = c.tokens.first() else {
            plan.local_reply(b"ERROR\r\n");
            return Ok(Some(line));
        };
        let tok = |c: &Client, i: usize| &input[c.tokens[i].0..c.tokens[i].1];
        let cmd = &input[cs..ce];
        let ntok = c.tokens.len();
        let noreply = ntok > 2 && tok(c, ntok - 1) == b"noreply";
        match cmd {
            b"get" | b"gets" | b"gat" | b"gats" => {
                let first_key = if cmd.starts_with(b"gat") { 2 } else { 1 };
                if ntok <= first_key {
                    plan.local_reply(b"ERROR\r\n");
                } else if !(first_key..ntok).all(|i| valid_key(tok(c, i))) {
                    plan.local_reply(b"CLIENT_ERROR bad command line format\r\n");
                } else {
                    self.retrieve(c, input, pos, line, first_key, ring, plan);
                }
                Ok(Some(line))
            }
            b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
                let fields = if cmd == b"cas" { 6 } else { 5 };
                if ntok != fields && !(ntok == fields + 1 && noreply) {
                    plan.local_reply(b"ERROR\r\n");
                    return Ok(Some(line));
                }
                let bytes = parse_usize(tok(c, 4))
                    .filter(|&n| n <= MAX_VALUE)
                    .ok_or(ProtoError("bad data chunk length"))?;
                let total = line + bytes + 2;
                if input.len() - pos < total {
                    plan.needs = pos + total;
                    return Ok(None);
                }
                if &input[pos + total - 2..pos + total] != b"\r\n" {
                    return Err(ProtoError("bad data chunk"));
                }
                let key = tok(c, 1);
                if !valid_key(key) {
                    plan.local_reply(b"CLIENT_ERROR bad command line format\r\n");
                    return Ok(Some(total));
                }
                self.single(c, input, pos, total, key, noreply, ring, plan);
                Ok(Some(total))
            }
            b"delete" | b"incr" | b"decr" | b"touch" => {
                let fields = if cmd == b"delete" { 2 } else { 3 };
                if ntok != fields && !(ntok == fields + 1 && noreply) {
                    plan.local_reply(b"ERROR\r\n");
                    return Ok(Some(line));
                }
                let key = tok(c, 1);
                if !valid_key(key) {
                    plan.local_reply(b"CLIENT_ERROR bad command line format\r\n");
                    return Ok(Some(line));
                }
                self.single(c, input, pos, line, key, noreply, ring, plan);
                Ok(Some(line))
            }
            b"version" => {
                plan.local_reply(
                    concat!("VERSION rigging-shard-", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes(),
                );
                Ok(Some(line))
            }
            b"quit" => {
                plan.close = true;
                Ok(Some(line))
            }
            _ => {
                plan.local_with(|o| {
                    o.extend_from_slice(b"CLIENT_ERROR unsupported command '");
                    o.extend(
                        cmd.iter()
                            .take(32)
                            .map(|&b| if b.is_ascii_graphic() { b } else { b'?' }),
                    );
                    o.extend_from_slice(b"' for the sharding proxy\r\n");
                });
                Ok(Some(line))
            }
        }
    }

    /// Forwards a one-key request (`input[pos..pos + len]`), without its `noreply`.
    #[allow(clippy::too_many_arguments)]
    fn single(
        &self,
        c: &Client,
        input: &[u8],
        pos: usize,
        len: usize,
        key: &[u8],
        noreply: bool,
        ring: &Ring,
        plan: &mut Plan,
    ) {
        let Some(server) = ring.server_for(key) else {
            if !noreply {
                plan.local_reply(b"SERVER_ERROR no live servers on the ring\r\n");
            }
            return;
        };
        let index = if noreply {
            let &(nr_start, nr_end) = c.tokens.last().expect("noreply token");
            // The command line up to (not including) " noreply", then the rest as sent.
            plan.out[server].extend_from_slice(input[pos..nr_start].trim_ascii_end());
            plan.append(server, input, nr_end..pos + len);
            plan.expect(server, LINE)
        } else {
            plan.forward(server, input, pos..pos + len, LINE)
        };
        let server = server as u32;
        plan.items.push(if noreply {
            Item::Silent { server, index }
        } else {
            Item::Reply { server, index }
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn retrieve(
        &self,
        c: &mut Client,
        input: &[u8],
        pos: usize,
        line: usize,
        first_key: usize,
        ring: &Ring,
        plan: &mut Plan,
    ) {
        let nservers = plan.out.len();
        let Client {
            tokens,
            route,
            counts,
            sub,
        } = c;
        route.clear();
        counts.clear();
        counts.resize(nservers, 0);
        for &(s, e) in &tokens[first_key..] {
            let Some(server) = ring.server_for(&input[s..e]) else {
                plan.local_reply(b"SERVER_ERROR no live servers on the ring\r\n");
                return;
            };
            route.push(server as u32);
            counts[server] += 1;
        }
        if counts.iter().filter(|&&n| n > 0).count() == 1 {
            let server = route[0] as usize;
            let index = plan.forward(server, input, pos..pos + line, RETRIEVAL);
            plan.items.push(Item::Reply {
                server: server as u32,
                index,
            });
            return;
        }
        sub.clear();
        sub.resize(nservers, u32::MAX);
        let prefix = &input[tokens[0].0..tokens[first_key - 1].1];
        for server in 0..nservers {
            if counts[server] == 0 {
                continue;
            }
            let out = &mut plan.out[server];
            out.extend_from_slice(prefix);
            for (j, &(s, e)) in tokens[first_key..].iter().enumerate() {
                if route[j] as usize == server {
                    out.push(b' ');
                    out.extend_from_slice(&input[s..e]);
                }
            }
            out.extend_from_slice(b"\r\n");
            sub[server] = plan.expect(server, RETRIEVAL);
        }
        let start = plan.parts.len();
        for (j, &(s, e)) in tokens[first_key..].iter().enumerate() {
            let server = route[j];
            plan.parts.push(Part {
                server,
                index: sub[server as usize],
                key_start: s,
                key_end: e,
            });
        }
        plan.items.push(Item::Merge {
            op: 0,
            start,
            end: plan.parts.len(),
        });
    }
}

impl Protocol for Memcached {
    type Client = Client;

    fn plan(
        &self,
        c: &mut Client,
        input: &[u8],
        ring: &Ring,
        plan: &mut Plan,
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        while plan.items.len() < MAX_BATCH && !plan.close {
            let Some(line) = line_len(&input[pos..]) else {
                if input.len() - pos > MAX_LINE {
                    return Err(ProtoError("line too long"));
                }
                break;
            };
            if line > MAX_LINE {
                return Err(ProtoError("line too long"));
            }
            match self.plan_one(c, input, pos, line, ring, plan)? {
                Some(len) => pos += len,
                None => break,
            }
        }
        Ok(pos)
    }

    fn reply_len(&self, kind: u8, buf: &[u8]) -> Result<Option<usize>, ProtoError> {
        if kind == LINE {
            return Ok(line_len(buf));
        }
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            if rest.starts_with(b"VALUE ") {
                match value_entry(rest)? {
                    Some((len, _)) => pos += len,
                    None => return Ok(None),
                }
            } else if rest.starts_with(b"END\r\n") {
                return Ok(Some(pos + 5));
            } else if rest.len() < 6
                && (b"VALUE ".starts_with(rest) || b"END\r\n".starts_with(rest))
            {
                return Ok(None);
            } else if pos == 0 {
                // An error line (ERROR, CLIENT_ERROR, SERVER_ERROR) instead of values.
                return Ok(line_len(rest));
            } else {
                return Err(ProtoError("unexpected line in a retrieval reply"));
            }
        }
    }

    fn error_reply(&self, _c: &Client, out: &mut Vec<u8>, msg: fmt::Arguments<'_>) {
        out.extend_from_slice(b"SERVER_ERROR ");
        let start = out.len();
        let _ = out.write_fmt(msg);
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    fn client_error(&self, _c: &Client, out: &mut Vec<u8>, err: &ProtoError) {
        let _ = write!(out, "CLIENT_ERROR {}\r\n", err.0);
    }

    fn merge(
        &self,
        _c: &Client,
        _op: u8,
        parts: &[Part],
        input: &[u8],
        replies: &Replies<'_>,
        out: &mut Vec<u8>,
    ) {
        let mut cursors: Vec<(u32, u32, usize)> = Vec::with_capacity(4);
        for p in parts {
            if cursors.iter().any(|c| c.0 == p.server && c.1 == p.index) {
                continue;
            }
            let reply = replies.get(p.server, p.index);
            if !(reply.starts_with(b"VALUE ") || reply.starts_with(b"END\r\n")) {
                out.extend_from_slice(reply);
                return;
            }
            cursors.push((p.server, p.index, 0));
        }
        for p in parts {
            let cursor = cursors
                .iter_mut()
                .find(|c| c.0 == p.server && c.1 == p.index)
                .expect("cursor for every sub-reply");
            let reply = replies.get(p.server, p.index);
            let rest = &reply[cursor.2..];
            if let Ok(Some((len, (ks, ke)))) = value_entry(rest)
                && rest[ks..ke] == input[p.key_start..p.key_end]
            {
                out.extend_from_slice(&rest[..len]);
                cursor.2 += len;
            }
        }
        out.extend_from_slice(b"END\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retrieval_replies_are_measured_through_end() {
        let m = Memcached;
        let reply = b"VALUE a 0 3\r\nabc\r\nVALUE b 5 0 77\r\n\r\nEND\r\n";
        assert_eq!(m.reply_len(RETRIEVAL, reply).unwrap(), Some(reply.len()));
        for cut in 0..reply.len() {
            assert_eq!(
                m.reply_len(RETRIEVAL, &reply[..cut]).unwrap(),
                None,
                "cut {cut}"
            );
        }
        assert_eq!(
            m.reply_len(RETRIEVAL, b"SERVER_ERROR out of memory\r\n")
                .unwrap(),
            Some(28)
        );
        assert!(m.reply_len(RETRIEVAL, b"VALUE a 0 x\r\n").is_err());
        assert_eq!(m.reply_len(LINE, b"STORED\r\nEND").unwrap(), Some(8));
    }

    #[test]
    fn keys_follow_memcacheds_rules() {
        assert!(valid_key(b"user:42"));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'a'; 251]));
        assert!(!valid_key(b"bad\x01key"));
    }

    proptest! {
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let m = Memcached;
            for kind in [LINE, RETRIEVAL] {
                if let Ok(Some(n)) = m.reply_len(kind, &bytes) {
                    prop_assert!(n <= bytes.len());
                }
            }
        }
    }
}
