//! `--follow`: read a file as it grows and keep reading across rotation, the way
//! `tail -F` does, polling because a shared emptyDir may be on any filesystem.
//!
//! - rename + create (logrotate's default, `create`): when the path names a new file, the
//!   new file is read from its start. The old file stays open and is read for a grace
//!   period after its last growth, because the app keeps writing to it until it reopens
//!   its log (nginx on `SIGUSR1`) — `tail -F` loses those lines; we do not.
//! - copytruncate: when the file at the path is shorter than what was read, it is read
//!   again from its start. Lines the app wrote between the copy and the truncation are
//!   lost by copytruncate itself, with any reader.
//! - the path disappearing: the open file is still read; the path is polled until a file
//!   appears again. A missing file at start-up is waited for.
//!
//! A file in an `emptyDir` that nothing rotates grows until the pod is evicted. So once
//! `reclaim_after` bytes of it have been read, the follower gives their disk space back:
//! it punches a hole over what it has read (`fallocate(PUNCH_HOLE)`). The file keeps its
//! size and the app's appends go on at its end, so this races with nothing and loses
//! nothing; the file is sparse, and `du` (and the kubelet's `sizeLimit`) see only the
//! unread part. On a filesystem without holes, the file is truncated instead, once read to
//! its end and only if it has not grown since: apps append with `O_APPEND`, so their next
//! line lands at the new start. A line appended between that last size check and the
//! truncation (microseconds) is lost; that is the one case where a line can be.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::lines::{LineBuf, StepError, finish_partial, step};
use super::pipeline::Pipeline;
use super::{Error, Metrics};

/// How often the file and the path are looked at when there is nothing new to read.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a rotated-away file is still read after it last grew.
pub const RETIRE_GRACE: Duration = Duration::from_secs(3);
/// How long a multi-line record waits for a continuation line once the input is idle.
pub const MULTILINE_IDLE: Duration = Duration::from_secs(1);
/// Once stopped, how long the file is still read towards its end: within the time the
/// sidecar gives itself to stop, with a second left to write out what is held.
pub const DRAIN: Duration = Duration::from_secs(4);

struct Tail {
    file: File,
    /// (device, inode): what tells a new file at the same path from the old one.
    id: (u64, u64),
    /// Bytes read from this file since it was opened or last truncated.
    pos: u64,
    /// Bytes at its start whose disk space was given back.
    reclaimed: u64,
    /// Giving space back failed (no permission to write the file): not tried again.
    cannot_reclaim: bool,
    lines: LineBuf,
}

impl Tail {
    fn open(path: &Path) -> io::Result<Tail> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(Tail {
            file,
            id: (meta.dev(), meta.ino()),
            pos: 0,
            reclaimed: 0,
            cannot_reclaim: false,
            lines: LineBuf::default(),
        })
    }

    /// Gives back the disk space of what was read of this file (see the module's notes).
    fn reclaim(&mut self) -> io::Result<Reclaimed> {
        // Reopened through /proc so that it is this very file, whatever the path names by
        // now; writing needs the app's file to be writable by this container.
        let file = OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))?;
        let read = libc::off_t::try_from(self.pos).map_err(io::Error::other)?;
        // SAFETY: fallocate(2) takes a descriptor that `file` keeps open for the call and
        // plain integers; it touches no memory of ours.
        let punched = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                read,
            )
        };
        if punched == 0 {
            let bytes = self.pos - self.reclaimed;
            self.reclaimed = self.pos;
            return Ok(Reclaimed::Hole(bytes));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
        if file.metadata()?.len() != self.pos {
            // Grown since the read that reached its end: the next time it is caught up.
            return Ok(Reclaimed::NotYet);
        }
        file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        let bytes = self.pos;
        // The partial last line stays held: the app's next bytes continue it.
        self.pos = 0;
        self.reclaimed = 0;
        Ok(Reclaimed::Truncated(bytes))
    }

    fn read<W: io::Write>(&mut self, pipe: &mut Pipeline<W>) -> Result<usize, StepError> {
        let n = step(&mut self.lines, &mut self.file, pipe)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What giving back a file's read part did.
enum Reclaimed {
    /// A hole was punched over this many more bytes.
    Hole(u64),
    /// The file was emptied of this many bytes.
    Truncated(u64),
    /// The file grew in the meantime (truncation only).
    NotYet,
}

enum PathState {
    Same,
    Truncated,
    Replaced(Tail),
    Missing,
}

fn look(path: &Path, current: &Tail) -> PathState {
    let Ok(meta) = std::fs::metadata(path) else {
        return PathState::Missing;
    };
    if (meta.dev(), meta.ino()) != current.id {
        return match Tail::open(path) {
            Ok(tail) => PathState::Replaced(tail),
            // Raced with another rotation step; look again on the next poll.
            Err(_) => PathState::Missing,
        };
    }
    if meta.len() < current.pos {
        PathState::Truncated
    } else {
        PathState::Same
    }
}

/// Follows `path` until `stop` is cancelled, then reads on to the end of the file (for
/// [`DRAIN`] at most), emits what is held and returns. Once `reclaim_after` bytes (0:
/// never) of the file are read, their disk space is given back.
pub fn follow<W: io::Write>(
    path: &Path,
    pipe: &mut Pipeline<W>,
    stop: &CancellationToken,
    metrics: &Metrics,
    output: &str,
    reclaim_after: u64,
) -> Result<(), Error> {
    let write_err = |source| Error::Write {
        path: output.to_owned(),
        source,
    };
    let step_err = |err: StepError| err.naming(&path.display().to_string(), output);

    let mut current = match wait_for(path, stop)? {
        Some(tail) => tail,
        None => return Ok(()),
    };
    tracing::info!(path = %path.display(), "following");
    let mut retired: Option<(Tail, Instant)> = None;
    let mut idle_since: Option<Instant> = None;
    let mut stopped: Option<Instant> = None;
    loop {
        if current.read(pipe).map_err(step_err)? > 0 {
            idle_since = None;
            metrics.publish(&pipe.stats());
            // Stopping: the rest of the file first. A worker's last lines, written just
            // before its pod stops, are often the error that says why it failed.
            if stop.is_cancelled() && stopped.get_or_insert_with(Instant::now).elapsed() >= DRAIN {
                tracing::warn!(path = %path.display(), "stopping before the end of the file: it kept growing past the drain deadline");
                break;
            }
            continue;
        }
        // Caught up with the current file.
        if reclaim_after > 0
            && !current.cannot_reclaim
            && current.pos - current.reclaimed >= reclaim_after
        {
            // What is held must be out before its bytes are gone from the disk.
            pipe.flush().map_err(write_err)?;
            match current.reclaim() {
                Ok(Reclaimed::Hole(bytes)) => {
                    metrics.reclaimed.with_label_values(&["hole"]).inc_by(bytes);
                }
                Ok(Reclaimed::Truncated(bytes)) => {
                    metrics
                        .reclaimed
                        .with_label_values(&["truncate"])
                        .inc_by(bytes);
                }
                Ok(Reclaimed::NotYet) => {}
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot give back the disk space of what was read; the file keeps growing (the app must create it writable by this container: same user, or group-writable)");
                    current.cannot_reclaim = true;
                }
            }
        }
        if let Some((old, grace_end)) = &mut retired {
            if old.read(pipe).map_err(step_err)? > 0 {
                *grace_end = Instant::now() + RETIRE_GRACE;
            } else if Instant::now() >= *grace_end {
                finish_partial(&mut old.lines, pipe).map_err(write_err)?;
                retired = None;
            }
        }
        if pipe.has_pending() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MULTILINE_IDLE {
                pipe.flush_pending();
            }
        }
        pipe.flush().map_err(write_err)?;
        metrics.publish(&pipe.stats());
        if stop.is_cancelled() {
            break;
        }
        match look(path, &current) {
            PathState::Same | PathState::Missing => {}
            PathState::Truncated => {
                tracing::info!(path = %path.display(), "file truncated (copytruncate); reading it from the start");
                metrics.rotations.with_label_values(&["truncate"]).inc();
                // What was held was the partial last line of the old contents.
                finish_partial(&mut current.lines, pipe).map_err(write_err)?;
                current
                    .file
                    .seek(SeekFrom::Start(0))
                    .map_err(|source| Error::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                current.pos = 0;
                continue;
            }
            PathState::Replaced(new) => {
                tracing::info!(path = %path.display(), "file rotated (renamed and recreated); reading the new file");
                metrics.rotations.with_label_values(&["rename"]).inc();
                if let Some((mut older, _)) = retired.take() {
                    while older.read(pipe).map_err(step_err)? > 0 {}
                    finish_partial(&mut older.lines, pipe).map_err(write_err)?;
                }
                let old = std::mem::replace(&mut current, new);
                retired = Some((old, Instant::now() + RETIRE_GRACE));
                continue;
            }
        }
        std::thread::sleep(POLL);
    }
    // Stopping: emit what is held so nothing read is lost.
    if let Some((mut old, _)) = retired {
        while old.read(pipe).map_err(step_err)? > 0 {}
        finish_partial(&mut old.lines, pipe).map_err(write_err)?;
    }
    finish_partial(&mut current.lines, pipe).map_err(write_err)?;
    pipe.finish().map_err(write_err)?;
    metrics.publish(&pipe.stats());
    Ok(())
}

/// Opens `path`, waiting for it to exist; `None` when stopped first.
fn wait_for(path: &Path, stop: &CancellationToken) -> Result<Option<Tail>, Error> {
    let mut logged = false;
    loop {
        match Tail::open(path) {
            Ok(tail) => return Ok(Some(tail)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if !logged {
                    tracing::info!(path = %path.display(), "waiting for the file to appear");
                    logged = true;
                }
            }
            Err(source) => {
                return Err(Error::OpenInput {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if stop.is_cancelled() {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}
