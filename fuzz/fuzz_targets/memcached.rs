//! Arbitrary bytes from a memcached client or server: the request planner and the reply
//! measurer must never panic or overrun.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rigging_sidecar::shard::hash::HashKind;
use rigging_sidecar::shard::memcached::Memcached;
use rigging_sidecar::shard::proxy::{Plan, Protocol};
use rigging_sidecar::shard::ring::{Ring, ServerSpec};

fuzz_target!(|data: &[u8]| {
    let mc = Memcached;
    for kind in [0, 1] {
        if let Ok(Some(n)) = mc.reply_len(kind, data) {
            assert!(n <= data.len());
        }
    }
    let servers: Vec<ServerSpec> = ["127.0.0.1:11211:1", "127.0.0.2:11211:1", "127.0.0.3:11211:1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let ring = Ring::new(&servers, &[], HashKind::Murmur, None);
    let mut client = Default::default();
    let mut plan = Plan::default();
    let mut rest = data;
    loop {
        plan.reset(servers.len());
        match mc.plan(&mut client, rest, &ring, &mut plan) {
            Ok(n) if n > 0 && !plan.close => rest = &rest[n..],
            _ => break,
        }
    }
});
