//! twemproxy's ketama continuum: the same servers, weights, names and hash function put
//! every key on the same server as twemproxy 0.5 does.
//!
//! Layout (from twemproxy's `nc_ketama.c`): each live server gets
//! `floor(weight / total_weight × 160 / 4 × live_servers) × 4` points. For point group
//! `i`, the string `"<name>-<i>"` is MD5-hashed and the digest yields four points, one per
//! 4-byte little-endian word. `<name>` is the server's name if it has one, else
//! `host:port`, else — libmemcached's rule, kept by twemproxy — just `host` when the port
//! is 11211. A key goes to the first point at or after its hash, wrapping to the first.

use std::fmt;
use std::str::FromStr;

use super::hash::{HashKind, md5};

/// Points per server when all servers weigh the same (twemproxy's constant).
const POINTS_PER_SERVER: u32 = 160;
/// Points derived from one MD5 digest.
const POINTS_PER_HASH: u32 = 4;
/// memcached's default port, which twemproxy leaves out of unnamed servers' names.
const KETAMA_DEFAULT_PORT: u16 = 11211;

/// One `--server` entry in twemproxy's syntax: `HOST:PORT:WEIGHT [NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative share of the keys (≥ 1).
    pub weight: u32,
    /// The optional name; when set, it alone is hashed onto the ring.
    pub name: Option<String>,
}

impl ServerSpec {
    /// The string hashed onto the ring: the name, or `host:port`, or `host` on port 11211.
    pub fn ring_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None if self.port == KETAMA_DEFAULT_PORT => self.host.clone(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// `host:port`, for connecting and for log lines and metric labels.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.host, self.port, self.weight)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        Ok(())
    }
}

/// A `--server` value that is not `HOST:PORT:WEIGHT [NAME]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid server {spec:?}: {reason} (expected HOST:PORT:WEIGHT [NAME], e.g. 10.0.0.1:6379:1 redis-a)"
)]
pub struct BadServer {
    /// The value as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for ServerSpec {
    type Err = BadServer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadServer {
            spec: s.to_owned(),
            reason,
        };
        let s_trim = s.trim();
        let (addr, name) = match s_trim.split_once(char::is_whitespace) {
            Some((addr, name)) => (addr, Some(name.trim())),
            None => (s_trim, None),
        };
        if name.is_some_and(|n| n.is_empty() || n.contains(char::is_whitespace)) {
            return Err(bad("the name must be one word"));
        }
        // Parsed from the right, as twemproxy does: the host may not contain ':' anyway.
        let (rest, weight) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad("missing :WEIGHT"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number in 1..=65535"))?;
        if port == 0 {
            return Err(bad("the port is not a number in 1..=65535"));
        }
        let weight: u32 = weight
            .parse()
            .map_err(|_| bad("the weight is not a positive integer"))?;
        if weight == 0 {
            return Err(bad("the weight must be at least 1"));
        }
        Ok(ServerSpec {
            host: host.to_owned(),
            port,
            weight,
            name: name.map(str::to_owned),
        })
    }
}

/// The hash tag: when a key contains `OPEN…CLOSE` with something in between, only that
/// part is hashed (`{user42}:cart` → `user42`), so related keys share a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashTag {
    open: u8,
    close: u8,
}

impl HashTag {
    /// A tag from its two-character form, e.g. `"{}"`.
    pub fn parse(s: &str) -> Option<HashTag> {
        match s.as_bytes() {
            [open, close] => Some(HashTag {
                open: *open,
                close: *close,
            }),
            _ => None,
        }
    }

    /// The part of `key` that is hashed: the first tag's contents if non-empty, else `key`.
    pub fn apply<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        if let Some(start) = memchr::memchr(self.open, key) {
            let after = &key[start + 1..];
            if let Some(len) = memchr::memchr(self.close, after)
                && len > 0
            {
                return &after[..len];
            }
        }
        key
    }
}

/// One point on the continuum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Point {
    value: u32,
    server: u32,
}

/// The ketama continuum over the live servers, plus how keys are hashed onto it.
#[derive(Clone, Debug)]
pub struct Ring {
    points: Vec<Point>,
    hash: HashKind,
    tag: Option<HashTag>,
    /// Servers configured (live or not); twemproxy skips hashing when there is only one.
    nservers: usize,
}

impl Ring {
    /// Builds the continuum over `servers`, leaving out those whose `live` flag is false
    /// (ejected). Server indices in lookups are indices into `servers`.
    pub fn new(
        servers: &[ServerSpec],
        live: &[bool],
        hash: HashKind,
        tag: Option<HashTag>,
    ) -> Ring {
        let is_live = |i: usize| live.get(i).copied().unwrap_or(true);
        let nlive = (0..servers.len()).filter(|&i| is_live(i)).count() as u32;
        let total_weight: u32 = servers
            .iter()
            .enumerate()
            .filter(|(i, _)| is_live(*i))
            .map(|(_, s)| s.weight)
            .sum();
        let mut points = Vec::with_capacity((nlive * POINTS_PER_SERVER) as usize);
        for (index, server) in servers.iter().enumerate() {
            if !is_live(index) {
                continue;
            }
            let name = server.ring_name();
            for group in 0..points_for(server.weight, total_weight, nlive) / POINTS_PER_HASH {
                let digest = md5(format!("{name}-{group}").as_bytes());
                for word in digest.chunks_exact(4) {
                    points.push(Point {
                        value: u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
                        server: index as u32,
                    });
                }
            }
        }
        // Stable, so that the (astronomically rare) equal values keep server order.
        points.sort_by_key(|p| p.value);
        Ring {
            points,
            hash,
            tag,
            nservers: servers.len(),
        }
    }

    /// The hash of `key` as twemproxy computes it: hash tag applied, 0 for an empty key or
    /// a pool of one server.
    pub fn key_hash(&self, key: &[u8]) -> u32 {
        let key = match &self.tag {
            Some(tag) => tag.apply(key),
            None => key,
        };
        if self.nservers == 1 || key.is_empty() {
            return 0;
        }
        self.hash.hash(key)
    }

    /// The server for a hash: the first point at or after it, wrapping around. `None` when
    /// no server is live.
    pub fn dispatch(&self, hash: u32) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|p| p.value < hash);
        let point = self.points.get(i).unwrap_or(&self.points[0]);
        Some(point.server as usize)
    }

    /// The server `key` lives on.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        self.dispatch(self.key_hash(key))
    }

    /// How many points the continuum has (for logs).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether no server is live.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The share of the key space (0 to 1) that lives on another server under `after` than
/// under `before`: the measure of the 32-bit hash values whose continuum point belongs to
/// servers of different names ([`ServerSpec::ring_name`]) in the two rings. Exact: both
/// continua are walked arc by arc, no key is sampled.
///
/// Servers are compared by name, not address, so pointing a name at another host moves
/// nothing. The hash function and tag do not enter: they place a key on the continuum the
/// same way under both rings (a change of them is not a change this can measure). A key
/// space that went from no servers to some, or back, moved entirely.
pub fn moved_share(before: &[ServerSpec], after: &[ServerSpec]) -> f64 {
    // The points do not depend on the key hash: any function builds the same continuum.
    let old = Ring::new(before, &[], HashKind::Fnv1a64, None);
    let new = Ring::new(after, &[], HashKind::Fnv1a64, None);
    match (old.is_empty(), new.is_empty()) {
        (true, true) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        (false, false) => {}
    }
    let old_names: Vec<String> = before.iter().map(ServerSpec::ring_name).collect();
    let new_names: Vec<String> = after.iter().map(ServerSpec::ring_name).collect();
    // Every hash in one arc between consecutive points of either ring goes to the same
    // server in each ring: the one of the point that ends the arc.
    let differs = |hash: u32| {
        let owner = |ring: &Ring, names: &[String]| ring.dispatch(hash).map(|i| names[i].clone());
        owner(&old, &old_names) != owner(&new, &new_names)
    };
    let mut ends: Vec<u32> = old
        .points
        .iter()
        .chain(&new.points)
        .map(|p| p.value)
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let mut moved: u64 = 0;
    let mut start: u64 = 0;
    for &end in &ends {
        if differs(end) {
            moved += u64::from(end) + 1 - start;
        }
        start = u64::from(end) + 1;
    }
    // The arc after the last point wraps around to the first one.
    if start <= u64::from(u32::MAX) && differs(u32::MAX) {
        moved += u64::from(u32::MAX) + 1 - start;
    }
    moved as f64 / (1u64 << 32) as f64
}

/// Points for one server, computed in the same mix of `float` and `double` as twemproxy,
/// so that rounding at the edges (odd weights) agrees too.
fn points_for(weight: u32, total_weight: u32, nlive: u32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let scaled = pct * POINTS_PER_SERVER as f32 / 4.0 * nlive as f32;
    let groups = ((scaled as f64 + 0.000_000_000_1) as f32).floor();
    (groups * 4.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(s: &str) -> ServerSpec {
        s.parse().unwrap()
    }

    fn servers(n: usize) -> Vec<ServerSpec> {
        (0..n)
            .map(|i| spec(&format!("10.0.0.{i}:6379:1")))
            .collect()
    }

    #[test]
    fn server_syntax_follows_twemproxy() {
        let s = spec("127.0.0.1:6379:2 shard-a");
        assert_eq!((s.host.as_str(), s.port, s.weight), ("127.0.0.1", 6379, 2));
        assert_eq!(s.ring_name(), "shard-a");
        assert_eq!(spec("cache-1:6380:1").ring_name(), "cache-1:6380");
        assert_eq!(spec("cache-1:11211:1").ring_name(), "cache-1");
        for bad in [
            "host:6379",
            "host:x:1",
            "host:6379:0",
            ":6379:1",
            "h:70000:1",
            "h:1:1 a b",
        ] {
            let err = bad.parse::<ServerSpec>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn equal_weights_give_160_points_each() {
        let ring = Ring::new(&servers(3), &[], HashKind::Fnv1a64, None);
        assert_eq!(ring.len(), 480);
        let weighted = [spec("a:1:1"), spec("b:1:3")];
        let ring = Ring::new(&weighted, &[], HashKind::Fnv1a64, None);
        // 1/4 × 40 × 2 = 20 groups, 3/4 × 40 × 2 = 60 groups.
        assert_eq!(ring.len(), (20 + 60) * 4);
    }

    #[test]
    fn points_come_from_md5_of_name_dash_index() {
        let one = [spec("shard:1:1 alpha"), spec("other:1:1 beta")];
        let ring = Ring::new(&one, &[true, false], HashKind::Md5, None);
        let d = md5(b"alpha-0");
        let first = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        assert!(
            ring.points
                .iter()
                .any(|p| p.value == first && p.server == 0)
        );
        assert!(ring.points.windows(2).all(|w| w[0].value <= w[1].value));
    }

    #[test]
    fn dispatch_takes_the_next_point_and_wraps() {
        let ring = Ring::new(&servers(3), &[], HashKind::Fnv1a64, None);
        let first = ring.points[0];
        let last = *ring.points.last().unwrap();
        assert_eq!(ring.dispatch(first.value), Some(first.server as usize));
        assert_eq!(
            ring.dispatch(last.value.wrapping_add(1)),
            Some(first.server as usize)
        );
        assert_eq!(ring.dispatch(last.value), Some(last.server as usize));
        let empty = Ring::new(&servers(2), &[false, false], HashKind::Fnv1a64, None);
        assert_eq!(empty.server_for(b"k"), None);
    }

    #[test]
    fn hash_tags_hash_only_the_tagged_part() {
        let tag = HashTag::parse("{}").unwrap();
        assert_eq!(tag.apply(b"{user42}:cart"), b"user42");
        assert_eq!(tag.apply(b"x{a}{b}"), b"a");
        assert_eq!(tag.apply(b"{}:empty"), b"{}:empty");
        assert_eq!(tag.apply(b"no-tag"), b"no-tag");
        assert_eq!(tag.apply(b"{unclosed"), b"{unclosed");
        let ring = Ring::new(&servers(5), &[], HashKind::Fnv1a64, Some(tag));
        assert_eq!(
            ring.server_for(b"{user42}:cart"),
            ring.server_for(b"{user42}:orders")
        );
        assert_eq!(
            ring.key_hash(b"{user42}:cart"),
            HashKind::Fnv1a64.hash(b"user42")
        );
        assert!(HashTag::parse("{").is_none());
    }

    #[test]
    fn one_server_or_an_empty_key_hashes_to_zero() {
        let ring = Ring::new(&servers(1), &[], HashKind::Fnv1a64, None);
        assert_eq!(ring.key_hash(b"anything"), 0);
        let ring = Ring::new(&servers(2), &[], HashKind::Fnv1a64, None);
        assert_eq!(ring.key_hash(b""), 0);
    }

    fn named(n: usize, host: &str) -> Vec<ServerSpec> {
        (0..n)
            .map(|i| spec(&format!("{host}-{i}:6379:1 shard-{i}")))
            .collect()
    }

    #[test]
    fn the_moved_share_is_what_moving_keys_shows() {
        let keys: Vec<String> = (0..40_000).map(|i| format!("key:{i}")).collect();
        for (from, to) in [(3, 4), (4, 3), (1, 2), (5, 8)] {
            let (before, after) = (named(from, "a"), named(to, "a"));
            let share = moved_share(&before, &after);
            let old = Ring::new(&before, &[], HashKind::Murmur, None);
            let new = Ring::new(&after, &[], HashKind::Murmur, None);
            let moved = keys
                .iter()
                .filter(|k| {
                    let (o, n) = (old.server_for(k.as_bytes()), new.server_for(k.as_bytes()));
                    before[o.unwrap()].ring_name() != after[n.unwrap()].ring_name()
                })
                .count();
            let seen = moved as f64 / keys.len() as f64;
            assert!(
                (seen - share).abs() < 0.015,
                "{from} -> {to}: {seen} of the keys moved, the continuum says {share}"
            );
            // Consistent hashing: only the added (or removed) shards' share moves.
            let changed = from.abs_diff(to) as f64 / from.max(to) as f64;
            assert!(
                (share - changed).abs() < 0.1,
                "{from} -> {to}: {share}, not {changed}"
            );
        }
    }

    #[test]
    fn servers_are_compared_by_name_so_new_addresses_move_nothing() {
        assert_eq!(moved_share(&named(4, "a"), &named(4, "a")), 0.0);
        assert_eq!(moved_share(&named(4, "a"), &named(4, "elsewhere")), 0.0);
        // Unnamed servers are hashed as host:port: a new address is a new server.
        let unnamed = |host: &str| vec![spec(&format!("{host}:6379:1")), spec("b:6379:1")];
        let share = moved_share(&unnamed("a"), &unnamed("c"));
        assert!(share > 0.4, "{share}");
        assert_eq!(moved_share(&[], &named(2, "a")), 1.0);
        assert_eq!(moved_share(&[], &[]), 0.0);
    }

    proptest! {
        #[test]
        fn adding_a_server_only_moves_keys_onto_it(
            n in 2usize..8,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 200),
        ) {
            // Equal weights: with unequal ones every server's share (and point count)
            // changes with the total, in twemproxy as here.
            let all = servers(n + 1);
            let before = Ring::new(&all[..n], &[], HashKind::Fnv1a64, None);
            let after = Ring::new(&all, &[], HashKind::Fnv1a64, None);
            for key in &keys {
                let (b, a) = (before.server_for(key).unwrap(), after.server_for(key).unwrap());
                prop_assert!(a == b || a == n, "key moved from {b} to {a}, not to the new server {n}");
            }
        }

        #[test]
        fn ejecting_a_server_only_moves_its_own_keys(
            n in 2usize..8,
            gone in 0usize..8,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 200),
        ) {
            let gone = gone % n;
            let all = servers(n);
            let live: Vec<bool> = (0..n).map(|i| i != gone).collect();
            let full = Ring::new(&all, &[], HashKind::Murmur, None);
            let less = Ring::new(&all, &live, HashKind::Murmur, None);
            for key in &keys {
                let (f, l) = (full.server_for(key).unwrap(), less.server_for(key).unwrap());
                prop_assert_ne!(l, gone);
                prop_assert!(f == l || f == gone, "key of live server {f} moved to {l}");
            }
        }

        #[test]
        fn the_moved_share_is_symmetric_and_a_share(from in 1usize..12, to in 1usize..12) {
            let (a, b) = (named(from, "h"), named(to, "h"));
            let share = moved_share(&a, &b);
            prop_assert!((0.0..=1.0).contains(&share));
            prop_assert_eq!(share, moved_share(&b, &a));
            prop_assert_eq!(share == 0.0, from == to);
        }
    }
}
