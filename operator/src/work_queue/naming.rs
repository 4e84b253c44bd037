//! The names of a WorkQueue's children, derived from the WorkQueue and the item alone, so
//! that every reconcile, before and after an operator restart, arrives at the same names.
//!
//! An item's Job is `<queue>-<slug>-<hash>`:
//! - `hash` is 48 bits (12 lowercase hex digits) of a stable hash of the item's exact bytes,
//!   so items that differ only in case or punctuation (`A`, `a`, `a.`) get different Jobs;
//! - `slug` is the item lowercased, with every run of characters outside `[a-z0-9]` turned
//!   into one `-`, trimmed of `-`, and cut so that the whole name fits: it is only there for
//!   people reading `kubectl get jobs`, the hash alone tells the items apart.
//!
//! A Job's name is a pod label value (`batch.kubernetes.io/job-name`), so it must be at most
//! 63 characters. The CRD limits a WorkQueue's name to [`MAX_QUEUE_NAME`] = 30 characters:
//! 30 + `-` + slug + `-` + 12 = 63 leaves a slug of at least 19 characters, and a queue
//! with a shorter name gets a longer slug.

/// The longest WorkQueue name the CRD accepts.
pub const MAX_QUEUE_NAME: usize = 30;
/// The longest Job name: a pod label value.
pub const MAX_JOB_NAME: usize = 63;
/// Hex digits of the item hash in a Job's name (48 bits: with 10 000 items, the chance of
/// two sharing a hash is about 2 in 10 million, and a clash is refused, not merged).
pub const HASH_DIGITS: usize = 12;

/// The name of an item's Job in the WorkQueue `queue`.
pub fn job_name(queue: &str, item: &str) -> String {
    named(queue, item, "")
}

/// What ends the name of an item's backup Job ([`backup_job_name`]).
pub const BACKUP_SUFFIX: &str = "-b";

/// The name of an item's speculative backup Job: its Job's name with a slug two characters
/// shorter, and `-b`. It never is another item's Job's name, which ends in the hash.
pub fn backup_job_name(queue: &str, item: &str) -> String {
    named(queue, item, BACKUP_SUFFIX)
}

fn named(queue: &str, item: &str, suffix: &str) -> String {
    let hash = item_hash(item);
    // `<queue>-` + slug + `-` + hash + suffix.
    let budget = MAX_JOB_NAME.saturating_sub(queue.len() + 2 + HASH_DIGITS + suffix.len());
    let slug = slug(item, budget);
    if slug.is_empty() {
        format!("{queue}-{hash}{suffix}")
    } else {
        format!("{queue}-{slug}-{hash}{suffix}")
    }
}

/// The item hash: [`HASH_DIGITS`] lowercase hex digits. Also the value of the
/// `rigging.dev/work-item` label, by which an item's Job and pods are found.
///
/// The first digits of the item's MD5: a digest every language has, so a name can be
/// checked by hand (`printf %s ITEM | md5sum`), and one that never changes, since the names
/// of existing Jobs depend on it. (Not for security: only to tell items apart.)
pub fn item_hash(item: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(item.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..HASH_DIGITS].to_owned()
}

/// `item` lowercased, with runs of characters outside `[a-z0-9]` as one `-`, trimmed, and
/// at most `max` characters, ending in a letter or digit.
pub fn slug(item: &str, max: usize) -> String {
    let mut out = String::with_capacity(item.len().min(max));
    for c in item.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The ConfigMap holding every item, one key per item, mounted into each worker pod.
pub fn items_config_map(queue: &str) -> String {
    format!("{queue}-items")
}

/// The Deployment and Service of the source container (source mode).
pub fn source(queue: &str) -> String {
    format!("{queue}-source")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
    }

    #[test]
    fn the_hash_is_pinned_because_existing_job_names_depend_on_it() {
        // Changing these values renames every Job: an operator upgrade would then run
        // every unfinished item a second time.
        // The values are those of `printf %s ITEM | md5sum`.
        assert_eq!(item_hash(""), "d41d8cd98f00");
        assert_eq!(item_hash("a"), "0cc175b9c0f1");
        assert_eq!(
            job_name("wq", "images/cat.png"),
            "wq-images-cat-png-f069f3d2f9cb"
        );
    }

    #[test]
    fn items_that_differ_only_in_case_or_punctuation_get_different_jobs() {
        let names: Vec<String> = ["A", "a", "a.", "a-", "A!"]
            .iter()
            .map(|i| job_name("wq", i))
            .collect();
        for (i, a) in names.iter().enumerate() {
            assert!(a.starts_with("wq-a-"), "{a}");
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn the_slug_is_lowercase_with_single_dashes_and_trimmed() {
        assert_eq!(slug("--Hello,  World!!--", 63), "hello-world");
        assert_eq!(slug("Ünïcode ✓ 42", 63), "n-code-42");
        assert_eq!(slug("!!!", 63), "");
        // Cut at a dash: it is dropped rather than ending the name.
        assert_eq!(slug("abc-def", 4), "abc");
        assert_eq!(slug("abcdef", 0), "");
    }

    #[test]
    fn every_name_is_a_dns_label_of_at_most_63_characters_even_for_the_longest_queue() {
        let longest = "q".repeat(MAX_QUEUE_NAME);
        let items = [
            "x".repeat(4096),
            "/".repeat(100),
            "Ä".repeat(50),
            "a-".repeat(40),
            "report 2024-01-01.csv".into(),
            "9".into(),
        ];
        for queue in ["w", "wq-1", longest.as_str()] {
            for item in &items {
                let name = job_name(queue, item);
                assert!(is_dns_label(&name), "{name:?} ({} chars)", name.len());
                assert!(name.ends_with(&item_hash(item)));
                let backup = backup_job_name(queue, item);
                assert!(is_dns_label(&backup), "{backup:?} ({} chars)", backup.len());
                assert!(backup.ends_with(&format!("{}-b", item_hash(item))));
            }
        }
        // The longest queue still leaves a readable slug.
        let name = job_name(&longest, &"x".repeat(100));
        assert_eq!(name.len(), 63);
        assert_eq!(
            name,
            format!(
                "{longest}-{}-{}",
                "x".repeat(19),
                item_hash(&"x".repeat(100))
            )
        );
        // An item with nothing to slug is the queue and the hash.
        assert_eq!(job_name("wq", "%%%"), format!("wq-{}", item_hash("%%%")));
    }
}
