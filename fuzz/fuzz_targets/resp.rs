//! Arbitrary bytes from a Redis client or server: the command parser, the planner (routing,
//! splitting, local replies) and the reply measurer must never panic or overrun.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rigging_sidecar::shard::hash::HashKind;
use rigging_sidecar::shard::proxy::{Plan, Protocol};
use rigging_sidecar::shard::redis::{Redis, resp};
use rigging_sidecar::shard::ring::{HashTag, Ring, ServerSpec};

fuzz_target!(|data: &[u8]| {
    let mut args = Vec::new();
    let mut pos = 0;
    while let Ok(Some(n)) = resp::parse_command(&data[pos..], &mut args) {
        assert!(n > 0 && pos + n <= data.len());
        for &(s, e) in &args {
            assert!(s <= e && pos + e <= data.len());
        }
        args.clear();
        pos += n;
    }
    if let Ok(Some(n)) = resp::reply_len(data) {
        assert!(n <= data.len());
    }

    let servers: Vec<ServerSpec> = ["127.0.0.1:7001:1", "127.0.0.1:7002:1", "127.0.0.1:7003:2 c"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let ring = Ring::new(&servers, &[], HashKind::Fnv1a64, HashTag::parse("{}"));
    for redis in [Redis { auth: None }, Redis { auth: Some("pw".into()) }] {
        let mut client = Default::default();
        let mut plan = Plan::default();
        let mut rest = data;
        loop {
            plan.reset(servers.len());
            match redis.plan(&mut client, rest, &ring, &mut plan) {
                Ok(n) if n > 0 && !plan.close => rest = &rest[n..],
                _ => break,
            }
        }
    }
});
