//! The pipelined proxy loop shared by the Redis and memcached front ends.
//!
//! One task per client connection. Each turn takes every complete request in the client's
//! read buffer, plans it (route by key, split multi-key requests, answer local ones),
//! writes one batch per server in one `write`, reads that batch's replies, and writes all
//! replies back to the client, in request order, in one `write`. A pipeline of 16 is thus
//! one read, one write per server involved, and one write back. Each client connection
//! holds its own server connections (checked out of the server's idle pool on first use
//! and returned when the client leaves), so replies never interleave between clients.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::{Conn, Pool, Server};
use super::ring::Ring;

/// Malformed bytes from a client or a server.
#[derive(Debug, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ProtoError(pub &'static str);

/// What goes into the client's reply stream for one request, in order.
#[derive(Clone, Copy, Debug)]
pub enum Item {
    /// Bytes of `Plan::local`.
    Local { start: usize, end: usize },
    /// Reply number `index` of server `server`, passed through.
    Reply { server: u32, index: u32 },
    /// Reply number `index` of server `server`, consumed but not passed on (memcached
    /// `noreply`: we ask for the reply to keep the stream in step, the client gets none).
    Silent { server: u32, index: u32 },
    /// Several server replies merged by the protocol; `parts[start..end]`.
    Merge { op: u8, start: usize, end: usize },
}

/// One input of a merge: a server reply, plus a byte range of the client's request (the
/// key, for protocols that merge by key).
#[derive(Clone, Copy, Debug)]
pub struct Part {
    /// The server.
    pub server: u32,
    /// Which of that server's replies in this batch.
    pub index: u32,
    /// Start of a range in the client's request bytes.
    pub key_start: usize,
    /// End of that range.
    pub key_end: usize,
}

/// The plan of one batch; every vector is reused from batch to batch.
#[derive(Debug, Default)]
pub struct Plan {
    /// Bytes to send to each server.
    pub out: Vec<Vec<u8>>,
    /// Per server, the kind of each expected reply (protocol-defined).
    pub kinds: Vec<Vec<u8>>,
    /// The client's replies, in order.
    pub items: Vec<Item>,
    /// Replies composed locally.
    pub local: Vec<u8>,
    /// Inputs of merges.
    pub parts: Vec<Part>,
    /// Close the client connection after this batch's replies.
    pub close: bool,
    /// Per server, the byte ranges of its replies in its connection's read buffer.
    ranges: Vec<Vec<(usize, usize)>>,
    /// Per server, why it failed in this batch.
    failed: Vec<Option<String>>,
}

impl Plan {
    fn reset(&mut self, nservers: usize) {
        for v in [&mut self.out, &mut self.kinds] {
            v.truncate(nservers);
            v.iter_mut().for_each(Vec::clear);
            v.resize_with(nservers, Vec::new);
        }
        self.ranges.truncate(nservers);
        self.ranges.iter_mut().for_each(Vec::clear);
        self.ranges.resize_with(nservers, Vec::new);
        self.failed.clear();
        self.failed.resize(nservers, None);
        self.items.clear();
        self.local.clear();
        self.parts.clear();
        self.close = false;
    }

    /// Queues `bytes` for server `server`, expecting one reply of `kind`; returns the
    /// reply's index.
    pub fn forward(&mut self, server: usize, bytes: &[u8], kind: u8) -> u32 {
        self.out[server].extend_from_slice(bytes);
        self.expect(server, kind)
    }

    /// Notes one more expected reply of `kind` from `server` (its request bytes having
    /// been written to `out[server]` directly).
    pub fn expect(&mut self, server: usize, kind: u8) -> u32 {
        self.kinds[server].push(kind);
        (self.kinds[server].len() - 1) as u32
    }

    /// Appends a locally composed reply.
    pub fn local_reply(&mut self, bytes: &[u8]) {
        let start = self.local.len();
        self.local.extend_from_slice(bytes);
        self.items.push(Item::Local {
            start,
            end: self.local.len(),
        });
    }

    /// Appends a locally composed reply written by `write`.
    pub fn local_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.local.len();
        write(&mut self.local);
        self.items.push(Item::Local {
            start,
            end: self.local.len(),
        });
    }
}

/// Server replies of one batch, for merging.
pub struct Replies<'a> {
    conns: &'a [Option<Conn>],
    ranges: &'a [Vec<(usize, usize)>],
}

impl Replies<'_> {
    /// Reply `index` of server `server`.
    pub fn get(&self, server: u32, index: u32) -> &[u8] {
        let (start, end) = self.ranges[server as usize][index as usize];
        match &self.conns[server as usize] {
            Some(conn) => &conn.rbuf[start..end],
            None => &[],
        }
    }
}

/// A wire protocol the proxy loop can drive.
pub trait Protocol: Send + Sync + 'static {
    /// Per-client-connection state (e.g. the RESP version the client asked for).
    type Client: Default + Send + Sync;

    /// Plans as many complete requests at the start of `input` as it holds (at most a
    /// batch's worth) and returns how many bytes they took; 0 means "need more bytes".
    fn plan(
        &self,
        client: &mut Self::Client,
        input: &[u8],
        ring: &Ring,
        plan: &mut Plan,
    ) -> Result<usize, ProtoError>;

    /// The length of the complete reply of `kind` at the start of `buf`, or `None` when
    /// more bytes are needed.
    fn reply_len(&self, kind: u8, buf: &[u8]) -> Result<Option<usize>, ProtoError>;

    /// Writes an error reply carrying `msg`.
    fn error_reply(&self, client: &Self::Client, out: &mut Vec<u8>, msg: fmt::Arguments<'_>);

    /// Writes the reply to bytes that do not parse (the connection is closed after it).
    fn client_error(&self, client: &Self::Client, out: &mut Vec<u8>, err: &ProtoError) {
        self.error_reply(client, out, format_args!("{err}"));
    }

    /// Writes the merge of `parts` (whose servers all answered).
    fn merge(
        &self,
        client: &Self::Client,
        op: u8,
        parts: &[Part],
        input: &[u8],
        replies: &Replies<'_>,
        out: &mut Vec<u8>,
    );

    /// The session a server connection must be in for this client (0: as opened).
    fn session(&self, _client: &Self::Client) -> u8 {
        0
    }

    /// Brings a server connection into `session` (authentication, protocol version).
    fn open_session(
        &self,
        _conn: &mut Conn,
        _session: u8,
    ) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// Most bytes buffered from a client before a turn; a larger single request keeps
/// growing the buffer up to the protocol's own limits.
const READ_CHUNK: usize = 64 * 1024;

/// Serves one client connection until it closes, errs, or the proxy stops.
pub async fn serve<P: Protocol>(
    proto: Arc<P>,
    pools: Arc<ArcSwap<Pool>>,
    mut client: TcpStream,
    stop: tokio_util::sync::CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let mut state = P::Client::default();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut plan = Plan::default();
    let mut pool = pools.load_full();
    let mut conns: Vec<Option<Conn>> = Vec::new();
    conns.resize_with(pool.servers.len(), || None);

    'client: loop {
        // Plan what is buffered; read more only when nothing complete is there.
        let current = pools.load();
        if !Arc::ptr_eq(&current, &pool) {
            // A reload: finish with the old servers, continue on the new ring.
            release(&pool, &mut conns);
            pool = current.clone();
            conns.resize_with(pool.servers.len(), || None);
        }
        drop(current);
        plan.reset(pool.servers.len());
        let consumed = {
            let ring = pool.ring();
            match proto.plan(&mut state, &input, &ring, &mut plan) {
                Ok(n) => n,
                Err(err) => {
                    // Replies planned before the bad bytes still go out, then the error.
                    output.clear();
                    run_batch(
                        &*proto,
                        &state,
                        &pool,
                        &mut conns,
                        &mut plan,
                        &input,
                        &mut output,
                    )
                    .await;
                    proto.client_error(&state, &mut output, &err);
                    let _ = client.write_all(&output).await;
                    break 'client;
                }
            }
        };
        if plan.items.is_empty() && !plan.close {
            input.advance(consumed);
            if input.capacity() - input.len() < 4096 {
                input.reserve(READ_CHUNK.max(input.len()));
            }
            let read = tokio::select! {
                read = client.read_buf(&mut input) => read,
                _ = stop.cancelled(), if input.is_empty() => break 'client,
            };
            match read {
                Ok(0) | Err(_) => break 'client,
                Ok(_) => continue,
            }
        }
        output.clear();
        run_batch(
            &*proto,
            &state,
            &pool,
            &mut conns,
            &mut plan,
            &input,
            &mut output,
        )
        .await;
        input.advance(consumed);
        if client.write_all(&output).await.is_err() || plan.close {
            break;
        }
    }
    release(&pool, &mut conns);
}

fn release(pool: &Pool, conns: &mut [Option<Conn>]) {
    for (server, conn) in pool.servers.iter().zip(conns.iter_mut()) {
        if let Some(conn) = conn.take() {
            server.checkin(conn);
        }
    }
}

/// Sends each server its part of the batch, collects the replies and writes the client's
/// replies in order into `output`.
async fn run_batch<P: Protocol>(
    proto: &P,
    state: &P::Client,
    pool: &Pool,
    conns: &mut [Option<Conn>],
    plan: &mut Plan,
    input: &[u8],
    output: &mut Vec<u8>,
) {
    let session = proto.session(state);
    let busy = plan.kinds.iter().filter(|k| !k.is_empty()).count();
    if busy == 1 {
        let i = plan
            .kinds
            .iter()
            .position(|k| !k.is_empty())
            .expect("one busy server");
        plan.failed[i] = exchange(
            proto,
            pool,
            i,
            &mut conns[i],
            session,
            &plan.out[i],
            &plan.kinds[i],
            &mut plan.ranges[i],
        )
        .await
        .err();
    } else if busy > 1 {
        let jobs = conns
            .iter_mut()
            .zip(plan.out.iter().zip(plan.kinds.iter()))
            .zip(plan.ranges.iter_mut().zip(plan.failed.iter_mut()))
            .enumerate()
            .filter(|(_, ((_, (_, kinds)), _))| !kinds.is_empty())
            .map(|(i, ((conn, (out, kinds)), (ranges, failed)))| async move {
                *failed = exchange(proto, pool, i, conn, session, out, kinds, ranges)
                    .await
                    .err();
            });
        futures::future::join_all(jobs).await;
    }

    let replies = Replies {
        conns,
        ranges: &plan.ranges,
    };
    for item in &plan.items {
        match *item {
            Item::Local { start, end } => output.extend_from_slice(&plan.local[start..end]),
            Item::Reply { server, .. } | Item::Silent { server, .. }
                if plan.failed[server as usize].is_some() =>
            {
                if matches!(item, Item::Reply { .. }) {
                    fail_reply(proto, state, pool, plan, server, output);
                }
            }
            Item::Reply { server, index } => output.extend_from_slice(replies.get(server, index)),
            Item::Silent { .. } => {}
            Item::Merge { op, start, end } => {
                let parts = &plan.parts[start..end];
                match parts
                    .iter()
                    .find(|p| plan.failed[p.server as usize].is_some())
                {
                    Some(p) => fail_reply(proto, state, pool, plan, p.server, output),
                    None => proto.merge(state, op, parts, input, &replies, output),
                }
            }
        }
    }
    // Every reply has been copied out: the read buffers start empty next batch.
    for (conn, ranges) in conns.iter_mut().zip(&plan.ranges) {
        if let (Some(conn), Some(&(_, end))) = (conn.as_mut(), ranges.last()) {
            conn.rbuf.advance(end);
        }
    }
}

fn fail_reply<P: Protocol>(
    proto: &P,
    state: &P::Client,
    pool: &Pool,
    plan: &Plan,
    server: u32,
    output: &mut Vec<u8>,
) {
    let why = plan.failed[server as usize].as_deref().unwrap_or("failed");
    let address = &pool.servers[server as usize].address;
    proto.error_reply(
        state,
        output,
        format_args!("server {address} unavailable: {why}"),
    );
}

/// One server's share of a batch: write it, read exactly as many replies back. On any
/// failure the connection is dropped (its stream position is unknown) and the reason
/// returned.
#[allow(clippy::too_many_arguments)]
async fn exchange<P: Protocol>(
    proto: &P,
    pool: &Pool,
    index: usize,
    slot: &mut Option<Conn>,
    session: u8,
    out: &[u8],
    kinds: &[u8],
    ranges: &mut Vec<(usize, usize)>,
) -> Result<(), String> {
    let server: &Server = &pool.servers[index];
    server.metrics.requests.inc_by(kinds.len() as u64);
    let started = Instant::now();
    let result = tokio::time::timeout(pool.timeouts.request, async {
        if slot.is_none() {
            let conn = server.checkout(pool.timeouts.connect).await?;
            *slot = Some(conn);
        }
        let conn = slot.as_mut().expect("connection checked out");
        if conn.session != session {
            tokio::time::timeout(pool.timeouts.connect, proto.open_session(conn, session))
                .await
                .map_err(|_| "handshake timed out".to_owned())??;
            conn.session = session;
        }
        let Conn { stream, rbuf, .. } = conn;
        let (mut reader, mut writer) = stream.split();
        let write = async {
            writer
                .write_all(out)
                .await
                .map_err(|err| format!("write failed: {err}"))
        };
        let read = async {
            let mut pos = 0;
            for &kind in kinds {
                loop {
                    match proto.reply_len(kind, &rbuf[pos..]) {
                        Ok(Some(len)) => {
                            ranges.push((pos, pos + len));
                            pos += len;
                            break;
                        }
                        Ok(None) => {
                            if rbuf.capacity() - rbuf.len() < 4096 {
                                rbuf.reserve(READ_CHUNK.max(rbuf.len()));
                            }
                            match reader.read_buf(rbuf).await {
                                Ok(0) => return Err("connection closed by server".to_owned()),
                                Ok(_) => {}
                                Err(err) => return Err(format!("read failed: {err}")),
                            }
                        }
                        Err(err) => return Err(format!("bad reply: {err}")),
                    }
                }
            }
            if pos != rbuf.len() {
                return Err("server sent more replies than requests".to_owned());
            }
            Ok(())
        };
        tokio::try_join!(write, read).map(|_| ())
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no reply within {} ms",
            pool.timeouts.request.as_millis()
        ))
    });
    server
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            pool.success(index);
            Ok(())
        }
        Err(why) => {
            ranges.clear();
            ranges.resize(kinds.len(), (0, 0));
            *slot = None;
            pool.failure(index, kinds.len() as u64, &why);
            Err(why)
        }
    }
}
