//! memcached `stats` → Prometheus, with the names the Prometheus project's
//! memcached_exporter uses (its names are already clean: `_total` counters, base units).

use super::exposition::{self, Kind};

use Kind::{Counter as C, Gauge as G};

/// `(stat, metric, type, help)`, sorted by stat (a test keeps it sorted).
#[rustfmt::skip]
static STATS: &[(&str, &str, Kind, &str)] = &[
    ("bytes", "memcached_current_bytes", G, "Bytes used to store items."),
    ("bytes_read", "memcached_read_bytes_total", C, "Bytes read from the network."),
    ("bytes_written", "memcached_written_bytes_total", C, "Bytes written to the network."),
    ("conn_yields", "memcached_connections_yielded_total", C, "Connections yielded on the -R request limit."),
    ("curr_connections", "memcached_current_connections", G, "Open connections."),
    ("curr_items", "memcached_current_items", G, "Items stored."),
    ("evicted_unfetched", "memcached_items_evicted_unfetched_total", C, "Items evicted without ever being fetched."),
    ("evictions", "memcached_items_evicted_total", C, "Valid items removed to free memory."),
    ("expired_unfetched", "memcached_items_expired_unfetched_total", C, "Items expired without ever being fetched."),
    ("limit_maxbytes", "memcached_limit_bytes", G, "Bytes the server may use for storage."),
    ("listen_disabled_num", "memcached_connections_listener_disabled_total", C, "Times the connection limit disabled the listener."),
    ("max_connections", "memcached_max_connections", G, "Maximum number of connections."),
    ("reclaimed", "memcached_items_reclaimed_total", C, "Items stored in memory reclaimed from expired items."),
    ("rejected_connections", "memcached_connections_rejected_total", C, "Connections rejected on the connection limit."),
    ("rusage_system", "memcached_rusage_system_seconds_total", C, "System CPU time of the server."),
    ("rusage_user", "memcached_rusage_user_seconds_total", C, "User CPU time of the server."),
    ("threads", "memcached_threads", G, "Worker threads."),
    ("time", "memcached_time_seconds", G, "The server's Unix time."),
    ("total_connections", "memcached_connections_total", C, "Connections opened."),
    ("total_items", "memcached_items_total", C, "Items stored since start."),
    ("uptime", "memcached_uptime_seconds", G, "Seconds since the server started."),
];

/// `(stat, command, status)` for the `memcached_commands_total` family.
static COMMANDS: &[(&str, &str, &str)] = &[
    ("cas_badval", "cas", "badval"),
    ("cas_hits", "cas", "hit"),
    ("cas_misses", "cas", "miss"),
    ("cmd_flush", "flush", "hit"),
    ("cmd_set", "set", "hit"),
    ("decr_hits", "decr", "hit"),
    ("decr_misses", "decr", "miss"),
    ("delete_hits", "delete", "hit"),
    ("delete_misses", "delete", "miss"),
    ("get_hits", "get", "hit"),
    ("get_misses", "get", "miss"),
    ("incr_hits", "incr", "hit"),
    ("incr_misses", "incr", "miss"),
    ("touch_hits", "touch", "hit"),
    ("touch_misses", "touch", "miss"),
];

/// Per-command samples, gathered while the stats are read (a family's samples must be
/// contiguous) and kept across scrapes for their capacity.
#[derive(Debug, Default)]
pub struct Scratch {
    commands: Vec<u8>,
}

/// Writes the families for one `stats` reply (`STAT name value` lines through `END`).
pub fn render(stats: &[u8], out: &mut Vec<u8>, s: &mut Scratch) {
    s.commands.clear();
    for line in stats.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"STAT ") else {
            continue;
        };
        let Some(space) = memchr::memchr(b' ', rest) else {
            continue;
        };
        let (key, value) = (&rest[..space], &rest[space + 1..]);
        if key == b"version" {
            let help = "The memcached version.";
            exposition::header(out, "memcached_version", help, G);
            exposition::sample(out, "memcached_version", &[("version", value)], b"1");
            continue;
        }
        if let Ok(i) = STATS.binary_search_by(|(k, ..)| k.as_bytes().cmp(key)) {
            let (_, name, kind, help) = STATS[i];
            // rusage_* are `seconds.microseconds`: already seconds.
            if let Some(v) = exposition::number(value) {
                exposition::header(out, name, help, kind);
                exposition::sample(out, name, &[], v);
            }
        } else if let Ok(i) = COMMANDS.binary_search_by(|(k, ..)| k.as_bytes().cmp(key)) {
            let (_, command, status) = COMMANDS[i];
            if let Some(v) = exposition::number(value) {
                let labels = [
                    ("command", command.as_bytes()),
                    ("status", status.as_bytes()),
                ];
                exposition::sample(&mut s.commands, "memcached_commands_total", &labels, v);
            }
        }
    }
    if !s.commands.is_empty() {
        let help = "Commands by command and outcome.";
        exposition::header(out, "memcached_commands_total", help, C);
        out.extend_from_slice(&s.commands);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted() {
        assert!(STATS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(COMMANDS.windows(2).all(|w| w[0].0 < w[1].0));
        for (_, name, kind, _) in STATS {
            assert_eq!(*kind == C, name.ends_with("_total"), "{name}");
        }
    }

    #[test]
    fn stats_become_counters_and_gauges() {
        let stats = b"STAT pid 7\r\nSTAT uptime 120\r\nSTAT version 1.6.18\r\n\
            STAT rusage_user 0.012345\r\nSTAT curr_connections 2\r\nSTAT get_hits 5\r\n\
            STAT get_misses 1\r\nSTAT cmd_set 9\r\nSTAT bytes x\r\nEND\r\n";
        let mut out = Vec::new();
        render(stats, &mut out, &mut Scratch::default());
        let text = String::from_utf8(out).unwrap();
        for line in [
            "# TYPE memcached_uptime_seconds gauge\nmemcached_uptime_seconds 120\n",
            "memcached_version{version=\"1.6.18\"} 1\n",
            "# TYPE memcached_rusage_user_seconds_total counter\nmemcached_rusage_user_seconds_total 0.012345\n",
            "memcached_current_connections 2\n",
            "# TYPE memcached_commands_total counter\n\
             memcached_commands_total{command=\"get\",status=\"hit\"} 5\n\
             memcached_commands_total{command=\"get\",status=\"miss\"} 1\n\
             memcached_commands_total{command=\"set\",status=\"hit\"} 9\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("memcached_current_bytes"), "{text}");
        assert!(!text.contains("pid"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn any_stats_reply_gives_a_well_formed_exposition(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["uptime", "get_hits", "version", "bytes", "zz"]),
                    "[ -~]{0,30}",
                ),
                0..20,
            ),
        ) {
            let mut stats = Vec::new();
            for (key, value) in &lines {
                stats.extend_from_slice(format!("STAT {key} {value}\r\n").as_bytes());
            }
            let mut out = Vec::new();
            render(&stats, &mut out, &mut Scratch::default());
            crate::metrics::exposition::assert_well_formed(&String::from_utf8(out).unwrap());
        }
    }
}
