//! Redis `INFO ALL` → Prometheus. Names follow redis_exporter's wherever those pass
//! `promtool check metrics`, so existing dashboards keep working; the few it gets wrong
//! (`_sec` units, counters without `_total`, gauges with `_total`) are renamed, and
//! `docs/sidecars/metrics.md` lists each rename.

use super::exposition::{self, Kind};

/// How an `INFO` value becomes a sample value.
#[derive(Clone, Copy, Debug)]
enum Conv {
    /// The number as written.
    Copy,
    /// `ok` → 1, anything else → 0.
    Ok,
    /// Microseconds → seconds.
    Micros,
}

/// One `INFO` field exported as its own family.
struct Field {
    key: &'static str,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    conv: Conv,
}

const fn f(key: &'static str, name: &'static str, kind: Kind, help: &'static str) -> Field {
    Field {
        key,
        name,
        kind,
        help,
        conv: Conv::Copy,
    }
}

const fn fc(
    key: &'static str,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    conv: Conv,
) -> Field {
    Field {
        key,
        name,
        kind,
        help,
        conv,
    }
}

use Kind::{Counter as C, Gauge as G};

/// Sorted by `key` (binary search; a test keeps it sorted).
#[rustfmt::skip]
static FIELDS: &[Field] = &[
    f("active_defrag_hits", "redis_defrag_hits", G, "Value reallocations performed by active defragmentation."),
    f("active_defrag_key_hits", "redis_defrag_key_hits", G, "Keys actively defragmented."),
    f("active_defrag_key_misses", "redis_defrag_key_misses", G, "Keys skipped by active defragmentation."),
    f("active_defrag_misses", "redis_defrag_misses", G, "Value reallocations skipped by active defragmentation."),
    f("active_defrag_running", "redis_active_defrag_running", G, "Whether active defragmentation is running."),
    f("allocator_active", "redis_allocator_active_bytes", G, "Bytes in the allocator's active pages."),
    f("allocator_allocated", "redis_allocator_allocated_bytes", G, "Bytes allocated by the allocator."),
    f("allocator_frag_bytes", "redis_allocator_frag_bytes", G, "Allocator fragmentation in bytes."),
    f("allocator_frag_ratio", "redis_allocator_frag_ratio", G, "Allocator fragmentation ratio."),
    f("allocator_resident", "redis_allocator_resident_bytes", G, "Bytes resident in the allocator."),
    f("allocator_rss_bytes", "redis_allocator_rss_bytes", G, "Resident bytes beyond the allocator's active pages."),
    f("allocator_rss_ratio", "redis_allocator_rss_ratio", G, "Ratio of allocator resident to active bytes."),
    fc("aof_current_rewrite_time_sec", "redis_aof_current_rewrite_duration_seconds", G, "Duration of the AOF rewrite in progress, -1 if none.", Conv::Copy),
    f("aof_enabled", "redis_aof_enabled", G, "Whether AOF persistence is on."),
    fc("aof_last_bgrewrite_status", "redis_aof_last_bgrewrite_status", G, "Whether the last AOF rewrite succeeded.", Conv::Ok),
    f("aof_last_cow_size", "redis_aof_last_cow_size_bytes", G, "Copy-on-write bytes of the last AOF rewrite."),
    fc("aof_last_rewrite_time_sec", "redis_aof_last_rewrite_duration_seconds", G, "Duration of the last AOF rewrite, -1 if none.", Conv::Copy),
    fc("aof_last_write_status", "redis_aof_last_write_status", G, "Whether the last AOF write succeeded.", Conv::Ok),
    f("aof_rewrite_in_progress", "redis_aof_rewrite_in_progress", G, "Whether an AOF rewrite is running."),
    f("aof_rewrite_scheduled", "redis_aof_rewrite_scheduled", G, "Whether an AOF rewrite is scheduled."),
    f("blocked_clients", "redis_blocked_clients", G, "Clients blocked on a blocking call."),
    f("client_recent_max_input_buffer", "redis_client_recent_max_input_buffer_bytes", G, "Largest recent client input buffer."),
    f("client_recent_max_output_buffer", "redis_client_recent_max_output_buffer_bytes", G, "Largest recent client output buffer."),
    f("clients_in_timeout_table", "redis_clients_in_timeout_table", G, "Clients in the timeout table."),
    f("cluster_connections", "redis_cluster_connections", G, "Cluster bus connections."),
    f("cluster_enabled", "redis_cluster_enabled", G, "Whether cluster mode is on."),
    f("connected_clients", "redis_connected_clients", G, "Client connections (excluding replicas)."),
    f("connected_slaves", "redis_connected_slaves", G, "Connected replicas."),
    fc("dump_payload_sanitizations", "redis_dump_payload_sanitizations_total", C, "Deep integrity validations of RESTORE payloads.", Conv::Copy),
    f("evicted_keys", "redis_evicted_keys_total", C, "Keys evicted because of maxmemory."),
    fc("expired_keys", "redis_expired_keys_total", C, "Keys expired.", Conv::Copy),
    f("expired_stale_perc", "redis_expired_stale_percentage", G, "Estimated percentage of keys that are expired but not yet deleted."),
    f("expired_time_cap_reached_count", "redis_expired_time_cap_reached_total", C, "Active expiry cycles that stopped early on their time cap."),
    f("io_threaded_reads_processed", "redis_io_threaded_reads_processed_total", C, "Reads handled by I/O threads."),
    f("io_threaded_writes_processed", "redis_io_threaded_writes_processed_total", C, "Writes handled by I/O threads."),
    f("io_threads_active", "redis_io_threads_active", G, "Whether I/O threads are active."),
    f("keyspace_hits", "redis_keyspace_hits_total", C, "Successful key lookups."),
    f("keyspace_misses", "redis_keyspace_misses_total", C, "Failed key lookups."),
    fc("latest_fork_usec", "redis_latest_fork_seconds", G, "Duration of the latest fork.", Conv::Micros),
    f("lazyfree_pending_objects", "redis_lazyfree_pending_objects", G, "Objects waiting to be freed lazily."),
    f("loading", "redis_loading_dump_file", G, "Whether a dump file is being loaded."),
    f("master_repl_offset", "redis_master_repl_offset", G, "Replication offset of this server."),
    f("maxclients", "redis_config_maxclients", G, "Maximum number of client connections (maxclients)."),
    f("maxmemory", "redis_memory_max_bytes", G, "The maxmemory limit, 0 for none."),
    f("mem_clients_normal", "redis_mem_clients_normal", G, "Bytes used by normal clients' buffers."),
    f("mem_clients_slaves", "redis_mem_clients_slaves", G, "Bytes used by replicas' buffers."),
    f("mem_fragmentation_bytes", "redis_mem_fragmentation_bytes", G, "Resident bytes beyond used memory."),
    f("mem_fragmentation_ratio", "redis_mem_fragmentation_ratio", G, "Ratio of resident to used memory."),
    f("mem_not_counted_for_evict", "redis_mem_not_counted_for_eviction_bytes", G, "Bytes not counted for eviction."),
    f("migrate_cached_sockets", "redis_migrate_cached_sockets", G, "Sockets open for MIGRATE."),
    f("module_fork_in_progress", "redis_module_fork_in_progress", G, "Whether a module fork is running."),
    f("module_fork_last_cow_size", "redis_module_fork_last_cow_size", G, "Copy-on-write bytes of the last module fork."),
    f("number_of_cached_scripts", "redis_number_of_cached_scripts", G, "Cached Lua scripts."),
    f("process_id", "redis_process_id", G, "Process id of the Redis server."),
    f("pubsub_channels", "redis_pubsub_channels", G, "Pub/sub channels with subscribers."),
    f("pubsub_patterns", "redis_pubsub_patterns", G, "Pub/sub patterns with subscribers."),
    f("rdb_bgsave_in_progress", "redis_rdb_bgsave_in_progress", G, "Whether an RDB save is running."),
    f("rdb_changes_since_last_save", "redis_rdb_changes_since_last_save", G, "Changes since the last RDB save."),
    f("rdb_current_bgsave_time_sec", "redis_rdb_current_bgsave_duration_seconds", G, "Duration of the RDB save in progress, -1 if none."),
    fc("rdb_last_bgsave_status", "redis_rdb_last_bgsave_status", G, "Whether the last RDB save succeeded.", Conv::Ok),
    f("rdb_last_bgsave_time_sec", "redis_rdb_last_bgsave_duration_seconds", G, "Duration of the last RDB save, -1 if none."),
    f("rdb_last_cow_size", "redis_rdb_last_cow_size_bytes", G, "Copy-on-write bytes of the last RDB save."),
    f("rdb_last_save_time", "redis_rdb_last_save_timestamp_seconds", G, "Unix time of the last successful RDB save."),
    f("rejected_connections", "redis_rejected_connections_total", C, "Connections rejected because of maxclients."),
    f("repl_backlog_active", "redis_repl_backlog_is_active", G, "Whether the replication backlog is active."),
    f("repl_backlog_first_byte_offset", "redis_repl_backlog_first_byte_offset", G, "Master offset of the backlog's first byte."),
    f("repl_backlog_histlen", "redis_repl_backlog_history_bytes", G, "Bytes of data in the replication backlog."),
    f("repl_backlog_size", "redis_replication_backlog_bytes", G, "Size of the replication backlog."),
    f("second_repl_offset", "redis_second_repl_offset", G, "Offset up to which the previous replication ID is accepted."),
    f("slave_expires_tracked_keys", "redis_slave_expires_tracked_keys", G, "Keys tracked for expiry on a writable replica."),
    f("slave_priority", "redis_slave_priority", G, "Replica priority for failover."),
    f("sync_full", "redis_replica_resyncs_full", G, "Full resynchronisations with replicas."),
    f("sync_partial_err", "redis_replica_partial_resync_denied", G, "Partial resynchronisation requests denied."),
    f("sync_partial_ok", "redis_replica_partial_resync_accepted", G, "Partial resynchronisation requests accepted."),
    f("total_commands_processed", "redis_commands_processed_total", C, "Commands processed."),
    f("total_connections_received", "redis_connections_received_total", C, "Connections accepted."),
    f("total_error_replies", "redis_error_replies_total", C, "Error replies sent."),
    f("total_net_input_bytes", "redis_net_input_bytes_total", C, "Bytes read from the network."),
    f("total_net_output_bytes", "redis_net_output_bytes_total", C, "Bytes written to the network."),
    f("total_reads_processed", "redis_reads_processed_total", C, "Read events processed."),
    f("total_writes_processed", "redis_writes_processed_total", C, "Write events processed."),
    f("tracking_clients", "redis_tracking_clients", G, "Clients using client-side caching."),
    f("tracking_total_items", "redis_tracking_total_items", G, "Client-side caching items tracked."),
    f("tracking_total_keys", "redis_tracking_total_keys", G, "Keys tracked for client-side caching."),
    f("tracking_total_prefixes", "redis_tracking_total_prefixes", G, "Prefixes tracked for client-side caching."),
    f("unexpected_error_replies", "redis_unexpected_error_replies_total", C, "Unexpected error replies (AOF loading, replication)."),
    f("uptime_in_seconds", "redis_uptime_in_seconds", G, "Seconds since the server started."),
    f("used_cpu_sys", "redis_cpu_sys_seconds_total", C, "System CPU time of the server."),
    f("used_cpu_sys_children", "redis_cpu_sys_children_seconds_total", C, "System CPU time of background processes."),
    f("used_cpu_sys_main_thread", "redis_cpu_sys_main_thread_seconds_total", C, "System CPU time of the main thread."),
    f("used_cpu_user", "redis_cpu_user_seconds_total", C, "User CPU time of the server."),
    f("used_cpu_user_children", "redis_cpu_user_children_seconds_total", C, "User CPU time of background processes."),
    f("used_cpu_user_main_thread", "redis_cpu_user_main_thread_seconds_total", C, "User CPU time of the main thread."),
    f("used_memory", "redis_memory_used_bytes", G, "Bytes allocated by Redis."),
    f("used_memory_dataset", "redis_memory_used_dataset_bytes", G, "Bytes used by the dataset."),
    f("used_memory_lua", "redis_memory_used_lua_bytes", G, "Bytes used by the Lua engine."),
    f("used_memory_overhead", "redis_memory_used_overhead_bytes", G, "Bytes used for internal structures."),
    f("used_memory_peak", "redis_memory_used_peak_bytes", G, "Peak of used memory."),
    f("used_memory_rss", "redis_memory_used_rss_bytes", G, "Resident bytes as seen by the OS."),
    f("used_memory_scripts", "redis_memory_used_scripts_bytes", G, "Bytes used by cached scripts."),
    f("used_memory_startup", "redis_memory_used_startup_bytes", G, "Bytes used at startup."),
];

fn field(key: &[u8]) -> Option<&'static Field> {
    FIELDS
        .binary_search_by(|f| f.key.as_bytes().cmp(key))
        .ok()
        .map(|i| &FIELDS[i])
}

/// Families with one sample per database, command, error kind or replica are collected
/// here while `INFO` is read line by line, then appended whole (a family's samples must
/// be contiguous). Kept across scrapes so their capacity is reused.
#[derive(Debug, Default)]
pub struct Scratch {
    db_keys: Vec<u8>,
    db_expiring: Vec<u8>,
    db_ttl: Vec<u8>,
    cmd_calls: Vec<u8>,
    cmd_seconds: Vec<u8>,
    cmd_rejected: Vec<u8>,
    cmd_failed: Vec<u8>,
    errors: Vec<u8>,
    slave_offset: Vec<u8>,
    slave_lag: Vec<u8>,
}

/// Labels of `redis_instance_info`, in output order.
const INFO_LABELS: [&str; 9] = [
    "maxmemory_policy",
    "os",
    "process_id",
    "redis_build_id",
    "redis_mode",
    "redis_version",
    "role",
    "run_id",
    "tcp_port",
];

/// Writes the families for one `INFO ALL` reply into `out`. Unknown fields are skipped;
/// a value that is not a number skips that one sample, never the scrape.
pub fn render(info: &[u8], out: &mut Vec<u8>, s: &mut Scratch) {
    for buf in [
        &mut s.db_keys,
        &mut s.db_expiring,
        &mut s.db_ttl,
        &mut s.cmd_calls,
        &mut s.cmd_seconds,
        &mut s.cmd_rejected,
        &mut s.cmd_failed,
        &mut s.errors,
        &mut s.slave_offset,
        &mut s.slave_lag,
    ] {
        buf.clear();
    }
    let mut instance: [&[u8]; 9] = [b""; 9];
    let mut server_time_usec = None;
    let mut uptime = None;
    let mut master: [&[u8]; 2] = [b"", b""];
    let mut read_only: &[u8] = b"";
    let mut link_up = None;
    let mut last_io = None;
    let mut sync_in_progress = None;
    let mut replica_offset = None;

    for line in info.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        if let Some(spec) = field(key) {
            let computed: Option<f64> = match spec.conv {
                Conv::Copy => match exposition::number(value) {
                    Some(text) => {
                        exposition::header(out, spec.name, spec.help, spec.kind);
                        exposition::sample(out, spec.name, &[], text);
                        None
                    }
                    None => None,
                },
                Conv::Ok => Some(if value == b"ok" { 1.0 } else { 0.0 }),
                Conv::Micros => exposition::parse_f64(value).map(|v| v / 1e6),
            };
            if let Some(v) = computed {
                exposition::single(out, spec.name, spec.help, spec.kind, v);
            }
            match key {
                b"process_id" => instance[2] = value,
                b"uptime_in_seconds" => uptime = exposition::parse_f64(value),
                _ => {}
            }
            continue;
        }
        if let Some(i) = INFO_LABELS.iter().position(|l| l.as_bytes() == key) {
            instance[i] = value;
            continue;
        }
        match key {
            b"server_time_usec" => server_time_usec = exposition::parse_f64(value),
            b"master_host" => master[0] = value,
            b"master_port" => master[1] = value,
            b"slave_read_only" => read_only = value,
            b"master_link_status" => link_up = Some(if value == b"up" { 1.0 } else { 0.0 }),
            b"master_last_io_seconds_ago" => last_io = exposition::number(value),
            b"master_sync_in_progress" => sync_in_progress = exposition::number(value),
            b"slave_repl_offset" => replica_offset = exposition::number(value),
            _ if key.starts_with(b"db") && key[2..].iter().all(u8::is_ascii_digit) => {
                keyspace(key, value, s)
            }
            _ if key.starts_with(b"cmdstat_") => commandstat(&key[8..], value, s),
            _ if key.starts_with(b"errorstat_") => {
                if let Some(n) = kv(value, b"count").and_then(exposition::number) {
                    let labels = [("err", &key[10..])];
                    exposition::sample(&mut s.errors, "redis_errors_total", &labels, n);
                }
            }
            _ if key.starts_with(b"slave") && key[5..].iter().all(u8::is_ascii_digit) => {
                connected_replica(value, s)
            }
            _ => {}
        }
    }

    let labels: [(&str, &[u8]); 9] = std::array::from_fn(|i| (INFO_LABELS[i], instance[i]));
    exposition::header(
        out,
        "redis_instance_info",
        "Information about the Redis instance.",
        G,
    );
    exposition::sample(out, "redis_instance_info", &labels, b"1");
    if let (Some(now), Some(up)) = (server_time_usec, uptime) {
        let help = "Unix time the Redis server started.";
        exposition::single(
            out,
            "redis_start_time_seconds",
            help,
            G,
            (now / 1e6 - up).round(),
        );
    }
    if !master[0].is_empty() {
        let labels = [("master_host", master[0]), ("master_port", master[1])];
        let info_labels = [labels[0], labels[1], ("read_only", read_only)];
        exposition::header(
            out,
            "redis_slave_info",
            "This server is a replica of master_host:master_port.",
            G,
        );
        exposition::sample(out, "redis_slave_info", &info_labels, b"1");
        if let Some(v) = link_up {
            exposition::header(
                out,
                "redis_master_link_up",
                "Whether the link to the master is up.",
                G,
            );
            exposition::sample_f64(out, "redis_master_link_up", &labels, v);
        }
        for (name, help, value) in [
            (
                "redis_master_last_io_seconds_ago",
                "Seconds since the last interaction with the master.",
                last_io,
            ),
            (
                "redis_master_sync_in_progress",
                "Whether a sync with the master is running.",
                sync_in_progress,
            ),
            (
                "redis_slave_repl_offset",
                "Replication offset of this replica.",
                replica_offset,
            ),
        ] {
            if let Some(v) = value {
                exposition::header(out, name, help, G);
                exposition::sample(out, name, &labels, v);
            }
        }
    }

    for (buf, name, help, kind) in [
        (&s.db_keys, "redis_db_keys", "Keys in the database.", G),
        (
            &s.db_expiring,
            "redis_db_keys_expiring",
            "Keys with an expiry in the database.",
            G,
        ),
        (
            &s.db_ttl,
            "redis_db_avg_ttl_seconds",
            "Average TTL of the database's keys with an expiry.",
            G,
        ),
        (
            &s.cmd_calls,
            "redis_commands_total",
            "Calls of the command.",
            C,
        ),
        (
            &s.cmd_seconds,
            "redis_commands_duration_seconds_total",
            "CPU time spent in the command.",
            C,
        ),
        (
            &s.cmd_rejected,
            "redis_commands_rejected_calls_total",
            "Calls of the command rejected before running.",
            C,
        ),
        (
            &s.cmd_failed,
            "redis_commands_failed_calls_total",
            "Calls of the command that failed while running.",
            C,
        ),
        (
            &s.errors,
            "redis_errors_total",
            "Error replies by error prefix.",
            C,
        ),
        (
            &s.slave_offset,
            "redis_connected_slave_offset_bytes",
            "Replication offset of a connected replica.",
            G,
        ),
        (
            &s.slave_lag,
            "redis_connected_slave_lag_seconds",
            "Seconds since a connected replica last acknowledged.",
            G,
        ),
    ] {
        if !buf.is_empty() {
            exposition::header(out, name, help, kind);
            out.extend_from_slice(buf);
        }
    }
}

/// `db0:keys=2,expires=1,avg_ttl=93449` (avg_ttl in milliseconds).
fn keyspace(db: &[u8], value: &[u8], s: &mut Scratch) {
    let labels = [("db", db)];
    if let Some(n) = kv(value, b"keys").and_then(exposition::number) {
        exposition::sample(&mut s.db_keys, "redis_db_keys", &labels, n);
    }
    if let Some(n) = kv(value, b"expires").and_then(exposition::number) {
        exposition::sample(&mut s.db_expiring, "redis_db_keys_expiring", &labels, n);
    }
    if let Some(ms) = kv(value, b"avg_ttl").and_then(exposition::parse_f64) {
        exposition::sample_f64(&mut s.db_ttl, "redis_db_avg_ttl_seconds", &labels, ms / 1e3);
    }
}

/// `cmdstat_get:calls=2,usec=4,usec_per_call=2.00,rejected_calls=0,failed_calls=0`.
fn commandstat(cmd: &[u8], value: &[u8], s: &mut Scratch) {
    let labels = [("cmd", cmd)];
    if let Some(n) = kv(value, b"calls").and_then(exposition::number) {
        exposition::sample(&mut s.cmd_calls, "redis_commands_total", &labels, n);
    }
    if let Some(us) = kv(value, b"usec").and_then(exposition::parse_f64) {
        let name = "redis_commands_duration_seconds_total";
        exposition::sample_f64(&mut s.cmd_seconds, name, &labels, us / 1e6);
    }
    if let Some(n) = kv(value, b"rejected_calls").and_then(exposition::number) {
        let name = "redis_commands_rejected_calls_total";
        exposition::sample(&mut s.cmd_rejected, name, &labels, n);
    }
    if let Some(n) = kv(value, b"failed_calls").and_then(exposition::number) {
        let name = "redis_commands_failed_calls_total";
        exposition::sample(&mut s.cmd_failed, name, &labels, n);
    }
}

/// `slave0:ip=10.0.0.2,port=6379,state=online,offset=123,lag=0` on a master.
fn connected_replica(value: &[u8], s: &mut Scratch) {
    let labels = [
        ("slave_ip", kv(value, b"ip").unwrap_or_default()),
        ("slave_port", kv(value, b"port").unwrap_or_default()),
        ("slave_state", kv(value, b"state").unwrap_or_default()),
    ];
    if let Some(n) = kv(value, b"offset").and_then(exposition::number) {
        let name = "redis_connected_slave_offset_bytes";
        exposition::sample(&mut s.slave_offset, name, &labels, n);
    }
    if let Some(n) = kv(value, b"lag").and_then(exposition::number) {
        exposition::sample(
            &mut s.slave_lag,
            "redis_connected_slave_lag_seconds",
            &labels,
            n,
        );
    }
}

/// The value of `key` in a `k=v,k=v` list.
fn kv<'a>(list: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    list.split(|&b| b == b',').find_map(|pair| {
        let eq = memchr::memchr(b'=', pair)?;
        (&pair[..eq] == key).then(|| &pair[eq + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
        os:Linux 6.1 x86_64\r\nprocess_id:42\r\nrun_id:abc\r\ntcp_port:6379\r\n\
        server_time_usec:1700000100000000\r\nuptime_in_seconds:100\r\n\
        # Clients\r\nconnected_clients:3\r\n\
        # Memory\r\nused_memory:1188024\r\nmaxmemory_policy:noeviction\r\n\
        # Persistence\r\nrdb_last_bgsave_status:err\r\naof_last_write_status:ok\r\n\
        rdb_last_bgsave_time_sec:-1\r\n\
        # Stats\r\ntotal_commands_processed:19\r\nkeyspace_hits:1\r\nkeyspace_misses:2\r\n\
        latest_fork_usec:250\r\nexpired_stale_perc:0.00\r\nused_memory_human:1.13M\r\n\
        # Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
        slave0:ip=10.0.0.2,port=6380,state=online,offset=77,lag=1\r\n\
        # Commandstats\r\ncmdstat_client|setname:calls=2,usec=8,usec_per_call=4.00,rejected_calls=0,failed_calls=1\r\n\
        # Errorstats\r\nerrorstat_ERR:count=3\r\n\
        # Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=93449\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";

    fn rendered(info: &str) -> String {
        let mut out = Vec::new();
        render(info.as_bytes(), &mut out, &mut Scratch::default());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_are_sorted_and_names_unique() {
        assert!(FIELDS.windows(2).all(|w| w[0].key < w[1].key));
        let mut names: Vec<_> = FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FIELDS.len());
        for f in FIELDS {
            assert_eq!(f.kind == C, f.name.ends_with("_total"), "{}", f.name);
            assert!(
                !f.name.contains("_sec_") && !f.name.ends_with("_sec"),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn info_becomes_redis_exporter_compatible_samples() {
        let text = rendered(INFO);
        for line in [
            "redis_connected_clients 3\n",
            "redis_memory_used_bytes 1188024\n",
            "# TYPE redis_commands_processed_total counter\nredis_commands_processed_total 19\n",
            "redis_keyspace_hits_total 1\n",
            "redis_keyspace_misses_total 2\n",
            "redis_rdb_last_bgsave_status 0\n",
            "redis_aof_last_write_status 1\n",
            "redis_rdb_last_bgsave_duration_seconds -1\n",
            "redis_latest_fork_seconds 0.00025\n",
            "redis_expired_stale_percentage 0.00\n",
            "redis_connected_slaves 1\n",
            "redis_start_time_seconds 1700000000\n",
            "# TYPE redis_db_keys gauge\nredis_db_keys{db=\"db0\"} 2\nredis_db_keys{db=\"db3\"} 1\n",
            "redis_db_keys_expiring{db=\"db0\"} 1\n",
            "redis_db_avg_ttl_seconds{db=\"db0\"} 93.449\n",
            "redis_commands_total{cmd=\"client|setname\"} 2\n",
            "redis_commands_duration_seconds_total{cmd=\"client|setname\"} 0.000008\n",
            "redis_commands_failed_calls_total{cmd=\"client|setname\"} 1\n",
            "redis_errors_total{err=\"ERR\"} 3\n",
            "redis_connected_slave_offset_bytes{slave_ip=\"10.0.0.2\",slave_port=\"6380\",slave_state=\"online\"} 77\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(
            "redis_instance_info{maxmemory_policy=\"noeviction\",os=\"Linux 6.1 x86_64\",\
             process_id=\"42\",redis_build_id=\"\",redis_mode=\"standalone\",\
             redis_version=\"7.0.15\",role=\"master\",run_id=\"abc\",tcp_port=\"6379\"} 1\n"
        ));
        // Human-readable duplicates and unknown fields are not exported.
        assert!(!text.contains("human"));
    }

    #[test]
    fn a_replica_reports_its_master_link() {
        let text = rendered(
            "role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n\
             master_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\n\
             master_sync_in_progress:0\r\nslave_repl_offset:5\r\nslave_read_only:1\r\n",
        );
        let labels = "{master_host=\"10.0.0.1\",master_port=\"6379\"}";
        assert!(
            text.contains(&format!("redis_master_link_up{labels} 0\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("redis_slave_repl_offset{labels} 5\n")),
            "{text}"
        );
        assert!(text.contains(
            "redis_slave_info{master_host=\"10.0.0.1\",master_port=\"6379\",read_only=\"1\"} 1\n"
        ));
    }

    #[test]
    fn garbage_values_skip_their_sample_only() {
        let text = rendered(
            "connected_clients:lots\r\nused_memory:12\r\nno colon here\r\n:\r\ndb0:keys=x\r\n",
        );
        assert!(!text.contains("redis_connected_clients"));
        assert!(text.contains("redis_memory_used_bytes 12\n"));
        assert!(!text.contains("redis_db_keys"));
    }

    proptest::proptest! {
        /// Whatever a server sends as INFO, the exposition holds only valid samples.
        #[test]
        fn any_info_gives_a_well_formed_exposition(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "connected_clients", "used_memory", "rdb_last_bgsave_status",
                        "latest_fork_usec", "db0", "db12", "cmdstat_get", "errorstat_ERR",
                        "slave0", "master_host", "master_link_status", "role", "os", "x",
                    ]),
                    "[ -~]{0,40}",
                ),
                0..40,
            ),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let mut info = Vec::new();
            for (key, value) in &lines {
                info.extend_from_slice(format!("{key}:{value}\r\n").as_bytes());
            }
            info.extend_from_slice(&junk);
            let mut out = Vec::new();
            render(&info, &mut out, &mut Scratch::default());
            let text = String::from_utf8(out).expect("exposition is UTF-8");
            crate::metrics::exposition::assert_well_formed(&text);
        }
    }
}
