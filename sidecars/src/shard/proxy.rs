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
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
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
    /// Bytes to send to each server, but for the long requests in `shared`.
    pub out: Vec<Vec<u8>>,
    /// Per server, long stretches of the client's input sent from its buffer rather than
    /// copied into `out`: where in `out[server]` each goes, and its range in the input.
    shared: Vec<Vec<(usize, Range<usize>)>>,
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
    /// When nothing could be planned: how many bytes of input the first request needs at
    /// least, if its header says so (a bulk string's or a value's length); 0 if unknown.
    /// The input buffer is then grown to that at once, or the request refused at once.
    pub needs: usize,
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
        self.shared.truncate(nservers);
        self.shared.iter_mut().for_each(Vec::clear);
        self.shared.resize_with(nservers, Vec::new);
        self.bufs.clear();
        self.bufs.resize(nservers, Bytes::new());
        self.failed.clear();
        self.failed.resize(nservers, None);
        self.items.clear();
        self.local.clear();
        self.parts.clear();
        self.close = false;
        self.needs = 0;
    }

    /// Queues the request `input[request]` for server `server`, expecting one reply of
    /// `kind`; returns the reply's index.
    pub fn forward(&mut self, server: usize, input: &[u8], request: Range<usize>, kind: u8) -> u32 {
        self.append(server, input, request);
        self.expect(server, kind)
    }

    /// Queues the bytes `input[range]` for server `server` after what is queued for it.
    /// A long stretch is sent from the client's buffer itself: a copy of a large value
    /// would double what the request costs in memory, uncounted.
    pub fn append(&mut self, server: usize, input: &[u8], range: Range<usize>) {
        if range.len() >= SHARE_AT {
            self.shared[server].push((self.out[server].len(), range));
        } else {
            self.out[server].extend_from_slice(&input[range]);
        }
    }

    /// Whether some server is sent bytes straight from the client's input buffer.
    fn shares_input(&self) -> bool {
        self.shared.iter().any(|s| !s.is_empty())
    }

    /// Bytes the plan holds for copies of requests.
    fn copied(&self) -> usize {
        self.out.iter().map(Vec::capacity).sum()
    }

    /// Gives back what a batch of large requests made the plan's buffers grow to.
    fn shrink(&mut self) {
        for out in &mut self.out {
            if out.capacity() > LARGE {
                *out = Vec::new();
            }
        }
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
    /// Long requests shared with the client's input buffer, and where in `out` each goes.
    shared: Vec<(usize, Bytes)>,
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
/// A client's input buffer to begin with, and again after a large request.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Buffers past this size are given back once the request or reply that needed them is
/// done, rather than kept for an idle connection.
const LARGE: usize = 4 * READ_CHUNK;
/// Requests (or values within one) at least this long are sent to servers from the
/// client's input buffer instead of being copied. Shorter ones are copied so that a
/// pipeline of small requests still goes out in one write.
const SHARE_AT: usize = 4096;
/// Most jobs a lane sends in one round.
const MAX_ROUND: usize = 512;
/// Most bytes one client's input buffer may hold: requests not yet answered, of which
/// the largest single one (a Redis bulk string, a memcached value, a long `get` line)
/// must fit whole. The buffer's allocation never exceeds it.
pub const MAX_CLIENT_BUFFER: usize = 64 * 1024 * 1024;
/// Most bytes of requests the whole process may hold: every client's input buffer, the
/// copies of short requests on their way to servers (clients' plans and the server
/// connections' write buffers), and, while a buffer grows, both the old allocation and
/// the new. A client whose buffer would take it past this gets an error reply instead.
pub const MAX_TOTAL_BUFFER: usize = 256 * 1024 * 1024;

/// Bytes of requests held by this process (see [`MAX_TOTAL_BUFFER`]).
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// One holder's share of [`BUFFERED`] (a client or a server connection), given back on
/// drop.
struct Held(usize);

impl Held {
    /// Counts `capacity` as this holder's; returns the total of all.
    fn set(&mut self, capacity: usize) -> usize {
        if capacity == self.0 {
            return BUFFERED.load(Ordering::Relaxed);
        }
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
    let mut input = BytesMut::with_capacity(INITIAL_BUFFER);
    // The allocation `input` pins, which its `capacity()` under-reports once the buffer
    // was advanced or split: what `held` counts.
    let mut buffer = INITIAL_BUFFER;
    let mut output: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut plan = Plan::default();
    let slot = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let mut lanes = Lanes::new(pools.load_full(), slot);
    let mut held = Held(0);
    held.set(buffer);

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
                let frozen = input.split().freeze();
                run_batch(
                    &proto,
                    &state,
                    &mut lanes,
                    &mut plan,
                    &frozen,
                    Some(&frozen),
                    &mut output,
                )
                .await;
                proto.client_error(&state, &mut output, &err);
                let _ = client.write_all(&output).await;
                break 'client;
            }
        };
        if plan.items.is_empty() && !plan.close {
            input.advance(consumed);
            let needs = plan.needs.saturating_sub(consumed);
            if let Err(why) = make_room(&mut input, needs, &mut buffer, &mut held) {
                tracing::warn!(limit = %why, "request refused");
                output.clear();
                proto.error_reply(&state, &mut output, format_args!("{why}"));
                drop(input);
                drop(held);
                refuse(client, &output).await;
                return;
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
        held.set(buffer + plan.copied());
        output.clear();
        if plan.shares_input() {
            // Servers get slices of these bytes; the allocation stays counted in `buffer`
            // for as long as `input` (its tail) pins it.
            let frozen = input.split_to(consumed).freeze();
            run_batch(
                &proto,
                &state,
                &mut lanes,
                &mut plan,
                &frozen,
                Some(&frozen),
                &mut output,
            )
            .await;
        } else {
            run_batch(
                &proto,
                &state,
                &mut lanes,
                &mut plan,
                &input,
                None,
                &mut output,
            )
            .await;
            input.advance(consumed);
        }
        if input.is_empty() && buffer > LARGE {
            // A large request is done: give its memory back rather than keep it for an
            // idle client.
            input = BytesMut::with_capacity(INITIAL_BUFFER);
            buffer = INITIAL_BUFFER;
        }
        plan.shrink();
        held.set(buffer + plan.copied());
        if client.write_all(&output).await.is_err() || plan.close {
            break;
        }
        if output.capacity() > LARGE {
            output = Vec::with_capacity(16 * 1024);
        }
    }
}

/// Makes room in a client's input buffer for the next read: when little is left, or when
/// the request being read is known to need `needs` bytes, the buffer grows (to exactly
/// `needs`, or by doubling, to [`MAX_CLIENT_BUFFER`] at most). `buffer` is the size of the
/// allocation `input` pins. Refuses, with the reply's text, a request that does not fit
/// in a client's bound, or a buffer that would take the process past its total.
fn make_room(
    input: &mut BytesMut,
    needs: usize,
    buffer: &mut usize,
    held: &mut Held,
) -> Result<(), String> {
    if needs > MAX_CLIENT_BUFFER || input.len() >= MAX_CLIENT_BUFFER {
        return Err(format!(
            "request too large: a client may have at most {} MiB of requests in flight, \
             and one request must fit in that",
            MAX_CLIENT_BUFFER >> 20
        ));
    }
    if input.capacity() - input.len() >= 4096 && needs <= input.capacity() {
        return Ok(());
    }
    // Growing straight to a known size saves the copies of doubling, and the allocator
    // the intermediate sizes it would keep around afterwards.
    let size = (input.len() + READ_CHUNK)
        .next_power_of_two()
        .max(needs)
        .min(MAX_CLIENT_BUFFER);
    if size <= input.capacity() {
        // At the bound with a little room left: read into that.
        return Ok(());
    }
    // A new allocation of exactly `size`, never `BytesMut::reserve`, whose amortised
    // growth could overshoot the bound. The old one lives until the copy is made.
    if held.set(*buffer + size) > MAX_TOTAL_BUFFER {
        return Err(format!(
            "proxy busy: requests in flight hold its limit of {} MiB; retry",
            MAX_TOTAL_BUFFER >> 20
        ));
    }
    let mut larger = BytesMut::with_capacity(size);
    larger.extend_from_slice(input);
    *input = larger;
    *buffer = size;
    held.set(size);
    Ok(())
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
/// replies in order into `output`. `frozen` is `input` as shared bytes, needed when the
/// plan sends stretches of it to servers uncopied.
async fn run_batch<P: Protocol>(
    proto: &Arc<P>,
    state: &P::Client,
    lanes: &mut Lanes,
    plan: &mut Plan,
    input: &[u8],
    frozen: Option<&Bytes>,
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
        let shared = plan.shared[i]
            .drain(..)
            .map(|(at, range)| {
                let frozen = frozen.expect("a plan that shares its input is run on frozen input");
                (at, frozen.slice(range))
            })
            .collect();
        let job = Job {
            out: std::mem::take(&mut plan.out[i]),
            shared,
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
    let mut cuts: Vec<Cut> = Vec::new();
    // The write buffer holds copies of clients' requests: counted with theirs.
    let mut held = Held(0);
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
        cuts.clear();
        let alone = jobs.len() == 1 && jobs[0].shared.is_empty();
        if alone {
            // The common case at low load: no copy.
            std::mem::swap(&mut wbuf, &mut jobs[0].out);
            std::mem::swap(&mut kinds, &mut jobs[0].kinds);
        } else {
            wbuf.clear();
            kinds.clear();
            for (j, job) in jobs.iter().enumerate() {
                let mut from = 0;
                for (piece, (at, _)) in job.shared.iter().enumerate() {
                    wbuf.extend_from_slice(&job.out[from..*at]);
                    from = *at;
                    cuts.push(Cut {
                        at: wbuf.len(),
                        job: j,
                        piece,
                    });
                }
                wbuf.extend_from_slice(&job.out[from..]);
                kinds.extend_from_slice(&job.kinds);
            }
            held.set(wbuf.capacity());
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
            let out = Outgoing {
                buf: &wbuf,
                cuts: &cuts,
                jobs: &jobs,
            };
            round(&*proto, c, out, &kinds, &mut ranges).await
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
        if alone {
            std::mem::swap(&mut wbuf, &mut jobs[0].out);
            std::mem::swap(&mut kinds, &mut jobs[0].kinds);
        } else if wbuf.capacity() > LARGE {
            wbuf = Vec::with_capacity(16 * 1024);
        }
        held.set(wbuf.capacity());
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
                    // Let go of the client's buffer before it is told the job is done.
                    drop(std::mem::take(&mut job.shared));
                    let _ = job.done.send(Ok(Done {
                        out: job.out,
                        kinds: job.kinds,
                        ranges: job.ranges,
                        replies,
                    }));
                }
                if consumed > LARGE {
                    // The replies own their bytes now; the connection's buffer must not
                    // keep the large allocation they came in.
                    c.rbuf = BytesMut::with_capacity(16 * 1024);
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

/// Where a long request shared with a client's buffer goes in a lane's write buffer.
struct Cut {
    /// Its position in the write buffer.
    at: usize,
    /// The job it is in.
    job: usize,
    /// Which of that job's shared requests it is.
    piece: usize,
}

/// What a lane writes in one round: its write buffer, with the long requests of its jobs
/// put in at their cuts.
struct Outgoing<'a> {
    buf: &'a [u8],
    cuts: &'a [Cut],
    jobs: &'a [Job],
}

/// Writes `out` and reads one reply per entry of `kinds`, recording each reply's range in
/// the connection's read buffer.
async fn round<P: Protocol>(
    proto: &P,
    conn: &mut Conn,
    out: Outgoing<'_>,
    kinds: &[u8],
    ranges: &mut Vec<(usize, usize)>,
) -> Result<(), String> {
    let Conn { stream, rbuf, .. } = conn;
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let mut from = 0;
        for cut in out.cuts {
            writer.write_all(&out.buf[from..cut.at]).await?;
            writer
                .write_all(&out.jobs[cut.job].shared[cut.piece].1)
                .await?;
            from = cut.at;
        }
        writer.write_all(&out.buf[from..]).await
    };
    let write = async { write.await.map_err(|err| format!("write failed: {err}")) };
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
