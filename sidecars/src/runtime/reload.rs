//! Hot reload of mounted files.
//!
//! Secrets and ConfigMaps are updated in place by the kubelet: the visible files are
//! symlinks through `..data`, which is swapped atomically to a new timestamped directory.
//! inotify on the file itself misses that swap, so we poll: every interval, each watched
//! path is read through its symlinks and its content fingerprinted. Files here are small
//! (certificates, YAML), so a read per second costs nothing measurable and catches every
//! way a file can change (in-place write, rename over, symlink swap, delete and re-create).

use std::collections::hash_map::DefaultHasher;
use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use tokio::sync::watch;

use super::Lifecycle;

/// Polls `paths` every `interval` and bumps the returned receiver's value whenever any of
/// their contents change, and on SIGHUP ("reload now", whether or not they changed). The
/// watcher stops when the lifecycle stops.
///
/// Consumers reload on `changed()` and must keep their previous state when the new files
/// are unusable (a cert written before its key, say): the next change fires again.
pub fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    life: &Lifecycle,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    let stop = life.token().clone();
    let mut hangups = life.hangups();
    // Taken before returning, so a change made right after this call is never missed.
    let mut last = fingerprint(&paths);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => false,
                changed = hangups.changed() => changed.is_ok(),
            };
            let now = fingerprint(&paths);
            if asked {
                last = now;
                tx.send_modify(|generation| *generation += 1);
            } else if now != last {
                last = now;
                tracing::info!(files = ?paths, "watched files changed");
                tx.send_modify(|generation| *generation += 1);
                if tx.is_closed() {
                    return;
                }
            }
        }
    });
    rx
}

/// A config compiled into a table that requests read through an [`ArcSwap`], reloaded
/// in the background: on each change of `changes`, `compile` builds the next table from
/// the one serving, which is swapped in and passed to `swapped` with the one it replaced
/// (requests in flight keep the table they started with). A config that does not compile
/// is counted in `failed` and logged, and the table serving stays.
pub fn swap_on_change<T, E>(
    mut changes: watch::Receiver<u64>,
    serving: Arc<ArcSwap<T>>,
    (ok, failed): (IntCounter, IntCounter),
    mut compile: impl FnMut(&T) -> Result<T, E> + Send + 'static,
    mut swapped: impl FnMut(&T, &T) + Send + 'static,
) where
    T: Send + Sync + 'static,
    E: Display,
{
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let current = serving.load_full();
            match compile(&current) {
                Ok(next) => {
                    let next = Arc::new(next);
                    serving.store(next.clone());
                    swapped(&current, &next);
                    ok.inc();
                }
                Err(err) => {
                    failed.inc();
                    tracing::warn!(error = %err, "config refused; the previous config keeps serving");
                }
            }
        }
    });
}

/// One hash over every file's content; a missing or unreadable file hashes as absent, so
/// its reappearance is a change too. Blocking reads are fine: these are a few small files.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(_) => u8::MAX.hash(&mut hasher),
        }
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a directory the way the kubelet does for a mounted Secret.
    fn kubelet_layout(dir: &std::path::Path, version: &str, content: &str) {
        let data = dir.join(version);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("tls.crt"), content).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        let link = dir.join("tls.crt");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/tls.crt", &link).unwrap();
        }
    }

    #[tokio::test]
    async fn a_kubelet_style_data_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_layout(dir.path(), "..2026_01", "old");
        let life = Lifecycle::default();
        let mut rx = watch_files(
            vec![dir.path().join("tls.crt")],
            Duration::from_millis(20),
            &life,
        );
        kubelet_layout(dir.path(), "..2026_02", "new");
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("swap not noticed")
            .unwrap();
        assert_eq!(*rx.borrow(), 1);
        life.stop();
    }

    #[tokio::test]
    async fn unchanged_files_never_fire() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), "a: 1").unwrap();
        let life = Lifecycle::default();
        let mut rx = watch_files(
            vec![dir.path().join("c.yaml")],
            Duration::from_millis(10),
            &life,
        );
        let fired = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        assert!(fired.is_err(), "fired without a change");
        // A hang-up (SIGHUP) is a reload, change or not.
        life.hang_up();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a hang-up did not ask for a reload")
            .unwrap();
        life.stop();
    }
}
