//! `--leader-file`: the `/leader` answer kept in a file for apps that would rather watch a
//! file than poll an API. It is rewritten only when the leadership changes (leader, term,
//! or whether this replica leads), by writing a new file beside it and renaming it over the
//! old one, so a reader sees the old contents or the new, never half of either.

use std::path::{Path, PathBuf};

use super::api::LeaderView;

/// What a rewrite is for: the fields whose change is a change of leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    leader: Option<String>,
    term: u64,
    is_leader: bool,
}

impl Key {
    /// The key of `view`.
    pub fn of(view: &LeaderView) -> Key {
        Key {
            leader: view.leader.clone(),
            term: view.term,
            is_leader: view.is_leader,
        }
    }
}

/// Why the file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    /// The file written (the temporary one, when that is what failed).
    path: PathBuf,
    source: std::io::Error,
}

/// Writes `view` as JSON to `path`, atomically.
pub async fn write(path: &Path, view: &LeaderView) -> Result<(), WriteError> {
    let mut body = serde_json::to_vec(view).expect("the leader view serializes");
    body.push(b'\n');
    // Beside the target, so that the rename stays on one filesystem (and so is atomic).
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    tokio::fs::write(&temp, &body)
        .await
        .map_err(|source| WriteError {
            path: temp.clone(),
            source,
        })?;
    tokio::fs::rename(&temp, path)
        .await
        .map_err(|source| WriteError {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(term: u64, is_leader: bool) -> LeaderView {
        LeaderView {
            leader: Some("a".into()),
            me: "a".into(),
            term,
            fencing_token: is_leader.then_some(term),
            renewed_at: Some("2026-01-01T00:00:00.000Z".into()),
            is_leader,
        }
    }

    #[tokio::test]
    async fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.json");
        write(&path, &view(3, true)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["fencingToken"], 3);
        assert_eq!(json["isLeader"], true);
        write(&path, &view(4, false)).await.unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["term"], 4);
        assert_eq!(json["fencingToken"], serde_json::Value::Null);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("leader.json")]);
    }

    #[test]
    fn a_renewal_alone_is_not_a_change() {
        let mut renewed = view(3, true);
        renewed.renewed_at = Some("2026-01-01T00:00:02.000Z".into());
        assert_eq!(Key::of(&view(3, true)), Key::of(&renewed));
        assert_ne!(Key::of(&view(3, true)), Key::of(&view(3, false)));
    }
}
