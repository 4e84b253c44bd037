//! Real-process tests of `rigging-sidecar`: the binary runs on 127.0.0.1 against real
//! servers and real clients (redis-server, memcached, nginx, curl, openssl, promtool), which
//! `scripts/test.sh` installs. A missing tool fails the test rather than skipping it: a
//! green run must mean the behaviour was exercised.

mod batch;
mod elect;
mod gather;
mod health;
mod http;
mod logs;
mod metrics;
mod queue;
mod shard;
mod support;
mod tls;
