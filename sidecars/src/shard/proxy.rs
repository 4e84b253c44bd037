//! The pipelined proxy loop shared by the Redis and memcached front ends.
//!
//! One task per client connection. Each turn takes every complete request in the client's
//! read buffer, plans it (route by key, split multi-key requests, answer local ones), hands
//! each server its share as one [`Job`], and writes all replies back to the client, in
//! request order, in one `write`.
//!
//! Each server has one task per shared connection (a *lane*, twemproxy's
//! `server_connections`). A lane takes every job queued since its last round, writes them
//! in one `write`, reads exactly as many replies, and hands each job its slice. Under load
//! a round carries many clients' pipelines at once, so the servers see few, large reads
//! and writes — that is where a proxy's throughput comes from.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::backend::{Conn, Lane, Pool};
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
    /// Per server, the byte ranges of its replies in `bufs`.
    ranges: Vec<Vec<(usize, usize)>>,
    /// Per server, its replies.
    bufs: Vec<Bytes>,
    /// Per server, why it failed in this batch.
    failed: Vec<Option<String>>,
}

impl Plan {
    /// Empties the plan for a batch over `nservers` servers.
    pub fn reset(&mut self, nservers: usize) {
        for v in [&mut self.out, &mut self.kinds] {
            v.truncate(nservers);
            v.iter_mut().for_each(Vec::clear);
            v.resize_with(nservers, Vec::new);
        }
        self.ranges.truncate(nservers);
        self.ranges.iter_mut().for_each(Vec::clear);
        self.ranges.resize_with(nservers, Vec::new);
        self.bufs.clear();
        self.bufs.resize(nservers, Bytes::new());
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
    bufs: &'a [Bytes],
    ranges: &'a [Vec<(usize, usize)>],
}

impl Replies<'_> {
    /// Reply `index` of server `server`.
    pub fn get(&self, server: u32, index: u32) -> &[u8] {
        let (start, end) = self.ranges[server as usize][index as usize];
        &self.bufs[server as usize][start..end]
    }
}

/// One client batch's share for one server.
#[derive(Debug)]
pub struct Job {
    out: Vec<u8>,
    kinds: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    done: oneshot::Sender<Result<Done, String>>,
}

/// Where a client waits for a job's outcome, by server index.
type Waiting = (usize, oneshot::Receiver<Result<Done, String>>);

/// A job's replies, with its buffers handed back for reuse.
#[derive(Debug)]
pub struct Done {
    out: Vec<u8>,
    kinds: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    replies: Bytes,
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
/// Most jobs a lane sends in one round.
const MAX_ROUND: usize = 512;
/// Most bytes one client may have buffered for requests not yet answered: the largest
/// single request (a Redis bulk string, a memcached value, a long `get` line) must fit.
pub const MAX_CLIENT_BUFFER: usize = 64 * 1024 * 1024;
/// Most bytes all clients together may have buffered. A client that needs more while
/// others hold it gets an error reply, not the process's memory.
pub const MAX_TOTAL_BUFFER: usize = 256 * 1024 * 1024;

/// Bytes buffered for requests by every client of this process.
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// One client's share of [`BUFFERED`]: its input buffer's capacity, given back on drop.
struct Held(usize);

impl Held {
    /// Counts `capacity` as this client's; returns the total of all clients.
    fn set(&mut self, capacity: usize) -> usize {
        let total = if capacity >= self.0 {
            BUFFERED.fetch_add(capacity - self.0, Ordering::Relaxed) + (capacity - self.0)
        } else {
            BUFFERED.fetch_sub(self.0 - capacity, Ordering::Relaxed) - (self.0 - capacity)
        };
        self.0 = capacity;
        total
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Spreads clients over a server's lanes.
static NEXT_CLIENT: AtomicUsize = AtomicUsize::new(0);

/// A client's handles on the lanes of the pool it currently uses.
struct Lanes {
    pool: Arc<Pool>,
    session: u8,
    slot: usize,
    senders: Vec<Option<mpsc::UnboundedSender<Job>>>,
}

impl Lanes {
    fn new(pool: Arc<Pool>, slot: usize) -> Lanes {
        let mut senders = Vec::new();
        senders.resize_with(pool.servers.len(), || None);
        Lanes {
            pool,
            session: u8::MAX,
            slot,
            senders,
        }
    }

    /// The lane of server `index` for this client's session, started if need be.
    fn sender<P: Protocol>(
        &mut self,
        proto: &Arc<P>,
        index: usize,
        session: u8,
    ) -> mpsc::UnboundedSender<Job> {
        if session != self.session {
            self.senders.iter_mut().for_each(|s| *s = None);
            self.session = session;
        }
        if let Some(tx) = &self.senders[index]
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let server = &self.pool.servers[index];
        let slot = self.slot % server.connections;
        let mut lanes = server.lanes.lock().expect("lane list lock");
        lanes.retain(|l| !l.tx.is_closed());
        let tx = match lanes
            .iter()
            .find(|l| l.session == session && l.slot == slot)
        {
            Some(lane) => lane.tx.clone(),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane(
                    proto.clone(),
                    Arc::downgrade(&self.pool),
                    index,
                    session,
                    rx,
                ));
                lanes.push(Lane {
                    session,
                    slot,
                    tx: tx.clone(),
                });
                tx
            }
        };
        self.senders[index] = Some(tx.clone());
        tx
    }
}

/// Serves one client connection until it closes, errs, or the proxy stops.
pub async fn serve<P: Protocol>(
    proto: Arc<P>,
    pools: Arc<ArcSwap<Pool>>,
    mut client: TcpStream,
    stop: tokio_util::sync::CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let mut state = P::Client::default();
    let mut input = bytes::BytesMut::with_capacity(16 * 1024);
    let mut output: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut plan = Plan::default();
    let slot = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let mut lanes = Lanes::new(pools.load_full(), slot);
    let mut held = Held(0);
    held.set(input.capacity());

    'client: loop {
        // Plan what is buffered; read more only when nothing complete is there.
        if !Arc::ptr_eq(&pools.load(), &lanes.pool) {
            // A reload: this client continues on the new ring from its next batch.
            lanes = Lanes::new(pools.load_full(), slot);
        }
        let pool = lanes.pool.clone();
        plan.reset(pool.servers.len());
        let planned = {
            let ring = pool.ring();
            proto.plan(&mut state, &input, &ring, &mut plan)
        };
        let consumed = match planned {
            Ok(n) => n,
            Err(err) => {
                // Replies planned before the bad bytes still go out, then the error.
                output.clear();
                run_batch(&proto, &state, &mut lanes, &mut plan, &input, &mut output).await;
                proto.client_error(&state, &mut output, &err);
                let _ = client.write_all(&output).await;
                break 'client;
            }
        };
        if plan.items.is_empty() && !plan.close {
            input.advance(consumed);
            if input.capacity() - input.len() < 4096 {
                let refusal = if input.len() >= MAX_CLIENT_BUFFER {
                    Some(format!(
                        "request too large: a client may have at most {} MiB in flight",
                        MAX_CLIENT_BUFFER >> 20
                    ))
                } else {
                    input.reserve(READ_CHUNK.max(input.len()).min(MAX_CLIENT_BUFFER));
                    (held.set(input.capacity()) > MAX_TOTAL_BUFFER).then(|| {
                        format!(
                            "proxy busy: requests in flight hold its limit of {} MiB; retry",
                            MAX_TOTAL_BUFFER >> 20
                        )
                    })
                };
                if let Some(why) = refusal {
                    tracing::warn!(limit = %why, "request refused");
                    output.clear();
                    proto.error_reply(&state, &mut output, format_args!("{why}"));
                    drop(input);
                    drop(held);
                    refuse(client, &output).await;
                    return;
                }
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
        run_batch(&proto, &state, &mut lanes, &mut plan, &input, &mut output).await;
        input.advance(consumed);
        if input.is_empty() && input.capacity() > 4 * READ_CHUNK {
            // A large request is done: give its memory back rather than keep it for an
            // idle client.
            input = bytes::BytesMut::with_capacity(16 * 1024);
            held.set(input.capacity());
        }
        if client.write_all(&output).await.is_err() || plan.close {
            break;
        }
    }
}

/// Sends a refusal and closes the connection so that the client reads it: the rest of
/// its request is read and dropped for a moment first (nginx's lingering close), since
/// closing with unread bytes would reset the connection and lose the reply.
async fn refuse(mut client: TcpStream, reply: &[u8]) {
    if client.write_all(reply).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    let mut sink = vec![0u8; READ_CHUNK];
    let linger = async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), linger).await;
}

/// Hands each server its part of the batch, waits for the replies and writes the client's
/// replies in order into `output`.
async fn run_batch<P: Protocol>(
    proto: &Arc<P>,
    state: &P::Client,
    lanes: &mut Lanes,
    plan: &mut Plan,
    input: &[u8],
    output: &mut Vec<u8>,
) {
    let session = proto.session(state);
    let pool = lanes.pool.clone();
    let mut waiting: [Option<Waiting>; 8] = Default::default();
    let mut more: Vec<Waiting> = Vec::new();
    let mut n = 0;
    for i in 0..plan.kinds.len() {
        if plan.kinds[i].is_empty() {
            continue;
        }
        let (done, rx) = oneshot::channel();
        pool.servers[i]
            .metrics
            .requests
            .inc_by(plan.kinds[i].len() as u64);
        let job = Job {
            out: std::mem::take(&mut plan.out[i]),
            kinds: std::mem::take(&mut plan.kinds[i]),
            ranges: std::mem::take(&mut plan.ranges[i]),
            done,
        };
        let failed = match lanes.sender(proto, i, session).send(job) {
            Ok(()) => None,
            Err(_) => Some("server connection closed".to_owned()),
        };
        if let Some(why) = failed {
            plan.failed[i] = Some(why);
            continue;
        }
        if n < waiting.len() {
            waiting[n] = Some((i, rx));
        } else {
            more.push((i, rx));
        }
        n += 1;
    }
    // A lane always answers within its timeouts; this bound only guards against a lane
    // that died.
    let limit = (pool.timeouts.request + pool.timeouts.connect) * 2;
    for (i, rx) in waiting.iter_mut().filter_map(Option::take).chain(more) {
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Ok(done))) => {
                plan.out[i] = done.out;
                plan.kinds[i] = done.kinds;
                plan.ranges[i] = done.ranges;
                plan.bufs[i] = done.replies;
            }
            Ok(Ok(Err(why))) => plan.failed[i] = Some(why),
            Ok(Err(_)) => plan.failed[i] = Some("server connection closed".to_owned()),
            Err(_) => plan.failed[i] = Some(format!("no reply within {} ms", limit.as_millis())),
        }
    }

    let replies = Replies {
        bufs: &plan.bufs,
        ranges: &plan.ranges,
    };
    for item in &plan.items {
        match *item {
            Item::Local { start, end } => output.extend_from_slice(&plan.local[start..end]),
            Item::Reply { server, .. } | Item::Silent { server, .. }
                if plan.failed[server as usize].is_some() =>
            {
                if matches!(item, Item::Reply { .. }) {
                    fail_reply(&**proto, state, &pool, plan, server, output);
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
                    Some(p) => fail_reply(&**proto, state, &pool, plan, p.server, output),
                    None => proto.merge(state, op, parts, input, &replies, output),
                }
            }
        }
    }
    // Release the lanes' read buffers now rather than at the next batch: an idle client
    // must not pin them.
    plan.bufs.iter_mut().for_each(|b| *b = Bytes::new());
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

/// The task behind one shared server connection: rounds of "write every queued job in
/// one write, read all their replies". Ends when no client or pool refers to it any more.
async fn lane<P: Protocol>(
    proto: Arc<P>,
    pool: Weak<Pool>,
    index: usize,
    session: u8,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let mut conn: Option<Conn> = None;
    let mut jobs: Vec<Job> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut kinds: Vec<u8> = Vec::new();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    while let Some(first) = next_job(&mut rx, &mut conn, index, &pool).await {
        jobs.push(first);
        while jobs.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let Some(pool) = pool.upgrade() else {
            for job in jobs.drain(..) {
                let _ = job.done.send(Err("configuration replaced".to_owned()));
            }
            return;
        };
        let server = &pool.servers[index];
        if jobs.len() == 1 {
            // The common case at low load: no copy.
            std::mem::swap(&mut wbuf, &mut jobs[0].out);
            std::mem::swap(&mut kinds, &mut jobs[0].kinds);
        } else {
            wbuf.clear();
            kinds.clear();
            for job in &jobs {
                wbuf.extend_from_slice(&job.out);
                kinds.extend_from_slice(&job.kinds);
            }
        }
        ranges.clear();
        let started = Instant::now();
        let result = tokio::time::timeout(pool.timeouts.request, async {
            if conn.is_none() {
                let mut fresh = server.connect(pool.timeouts.connect).await?;
                proto.open_session(&mut fresh, session).await?;
                fresh.session = session;
                conn = Some(fresh);
            }
            let c = conn.as_mut().expect("connected");
            round(&*proto, c, &wbuf, &kinds, &mut ranges).await
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
        if jobs.len() == 1 {
            std::mem::swap(&mut wbuf, &mut jobs[0].out);
            std::mem::swap(&mut kinds, &mut jobs[0].kinds);
        }
        match result {
            Ok(()) => {
                pool.success(index);
                let c = conn.as_mut().expect("connected");
                let mut next = 0;
                let mut consumed = 0;
                for mut job in jobs.drain(..) {
                    let mine = &ranges[next..next + job.kinds.len()];
                    next += job.kinds.len();
                    let end = mine.last().map_or(consumed, |r| r.1);
                    job.ranges.clear();
                    job.ranges
                        .extend(mine.iter().map(|&(s, e)| (s - consumed, e - consumed)));
                    let replies = c.rbuf.split_to(end - consumed).freeze();
                    consumed = end;
                    let _ = job.done.send(Ok(Done {
                        out: job.out,
                        kinds: job.kinds,
                        ranges: job.ranges,
                        replies,
                    }));
                }
            }
            Err(why) => {
                // The stream position is unknown: drop the connection, fail the round.
                conn = None;
                let requests = jobs.iter().map(|j| j.kinds.len() as u64).sum();
                pool.failure(index, requests, &why);
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(why.clone()));
                }
            }
        }
    }
}

/// The lane's next job. While it waits, its idle connection is watched: a server that
/// closes it (Redis's `timeout`, memcached's `idle_timeout`, a restart) is seen then, as
/// nutcracker sees it, and the next round opens a fresh connection instead of writing
/// into a dead one. A closed idle connection is not a server failure.
async fn next_job(
    rx: &mut mpsc::UnboundedReceiver<Job>,
    conn: &mut Option<Conn>,
    index: usize,
    pool: &Weak<Pool>,
) -> Option<Job> {
    loop {
        let Some(idle) = conn.as_mut() else {
            return rx.recv().await;
        };
        tokio::select! {
            biased;
            job = rx.recv() => return job,
            ready = idle.stream.readable() => {
                // Nothing is due from an idle server: end of stream means it closed the
                // connection, and stray bytes mean the stream is out of step.
                let mut probe = [0u8; 1];
                match (ready, idle.stream.try_read(&mut probe)) {
                    (Ok(()), Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => {
                        if let Some(pool) = pool.upgrade() {
                            tracing::debug!(server = %pool.servers[index].address, "server closed an idle connection");
                        }
                        *conn = None;
                    }
                }
            }
        }
    }
}

/// Writes `out` and reads one reply per entry of `kinds`, recording each reply's range in
/// the connection's read buffer.
async fn round<P: Protocol>(
    proto: &P,
    conn: &mut Conn,
    out: &[u8],
    kinds: &[u8],
    ranges: &mut Vec<(usize, usize)>,
) -> Result<(), String> {
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
}
