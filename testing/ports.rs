//! Free ports for the servers the workspace's tests start. Each test binary includes this
//! file with `#[path]`, so that the operator's and the sidecars' tests pick ports one way.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out: clear of the well-known ports of the servers tests run.
const LOWEST: u16 = 10_000;

/// A port on 127.0.0.1 that nothing listens on now, for a server a test starts, and never
/// the same port twice in one test binary.
///
/// It is chosen below the kernel's ephemeral range. A port from that range (what binding
/// port 0 gives) can be taken between the pick and the server's bind by any outgoing
/// connection or any other bind to port 0: a process that binds its own admin listener
/// to port 0 can even be handed the very port its test picked for its webhook.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if ephemeral > LOWEST + 1_000 {
        let span = u64::from(ephemeral - LOWEST);
        for _ in 0..1_000 {
            // A random pick: the other test processes pick from the same range.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            let port = LOWEST + u16::try_from(hasher.finish() % span).expect("below the range");
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("no free port on 127.0.0.1")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}
