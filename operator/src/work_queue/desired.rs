//! The pure half of the WorkQueue controller: the objects a WorkQueue stands for, from the
//! WorkQueue, its status and the children it already has, computed without IO.
//!
//! - in source mode, a ConfigMap `<queue>-items`: one key per item the poller
//!   ([`super::source`]) found, the item as its value. The poller adds the keys; the
//!   operator owns only the ConfigMap's metadata. A static list needs none: the WorkQueue
//!   holds it.
//! - in source mode, a Deployment and a Service `<queue>-source` running the source
//!   container;
//! - one Job per item ([`naming::job_name`]), created once and never updated. The item
//!   travels in the Job itself, as the annotation [`ITEM_ANNOTATION`] of the Job and of its
//!   pods, which the worker reads as the file `WORK_ITEM_FILE` (a downward API volume) and
//!   as `WORK_ITEM`. No object holds all the items a second time.
//!
//! Why one Job per item and not one Indexed Job for the whole queue: in source mode the
//! list grows while the queue runs, and an Indexed Job's `completions` is fixed when it is
//! created; and a Job named after its item is what makes a restart safe — the operator
//! finds the item's Job by name, or the item's result in the status, and never needs to
//! remember anything else.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, ObjectFieldSelector,
    PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rigging_crds::{FieldError, FieldErrors, WorkQueue};

use super::results::{self, Recorded};
use super::speculative::{self, BACKUP_LABEL, Standing};
use super::{naming, status};
use crate::controller::{Child, MANAGER, Observed, RenderConfig, child_meta};
use crate::sidecars;
use crate::sidecars::elect::ElectAccess;

/// Label of every child of a WorkQueue: the WorkQueue's name.
pub const QUEUE_LABEL: &str = "rigging.dev/work-queue";
/// Label of an item's Job and pods: the item's hash ([`naming::item_hash`]).
pub const ITEM_LABEL: &str = "rigging.dev/work-item";
/// Annotation of an item's Job and its pods: the item itself (labels cannot hold it).
pub const ITEM_ANNOTATION: &str = "rigging.dev/work-item";
/// The environment variable holding the item.
pub const WORK_ITEM: &str = "WORK_ITEM";
/// The environment variable naming the file that holds the item.
pub const WORK_ITEM_FILE: &str = "WORK_ITEM_FILE";
/// Where the item's file is mounted in the worker container.
pub const WORK_DIR: &str = "/var/run/rigging/work";
/// The item's file, [`WORK_DIR`]`/item`.
pub const WORK_ITEM_PATH: &str = "/var/run/rigging/work/item";
/// The volume of the item's file.
pub const WORK_VOLUME: &str = "rigging-work-item";
/// Most bytes of a ConfigMap's keys and values together, as the API server counts them.
pub const CONFIG_MAP_LIMIT: usize = 1024 * 1024;
/// Most bytes etcd stores in one object (its default `--max-request-bytes`, 1.5 MiB).
pub const OBJECT_LIMIT: usize = 1536 * 1024;
/// Bytes of a WorkQueue besides its items, with its status at its largest: metadata,
/// the worker's template, and the bounded status (counts, ten failures, ten stuck items,
/// 200 expired Jobs, conditions).
pub const OBJECT_RESERVE: usize = 48 * 1024;
/// JSON around one item as stored: `"…",` in spec.items, `"v:\"…\"":{},` in managedFields.
const STORED_OVERHEAD_PER_ITEM: usize = 3 + 10;
/// The shortest poll interval: a source is asked no more than once a second.
pub const MIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One item of a WorkQueue, with the names derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The item, as listed.
    pub item: String,
    /// Its Job's name.
    pub job: String,
    /// Its key in the ConfigMap `<queue>-items` in source mode: `<sequence>.<job>`, the
    /// sequence number saying in which order the poller saw the items. The Job's name for
    /// a static list.
    pub key: String,
}

/// The children of one WorkQueue, in the order they are applied and rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// With `sidecars.elect` on Leases: the workers' ServiceAccount (when the template
    /// names none), Role and RoleBinding `<queue>-elect`, applied before any Job.
    pub elect: Option<ElectAccess>,
    /// Source mode: the items the poller found (the operator applies only its metadata).
    /// With a static list, only while a Job an earlier release created still mounts it.
    pub items: Option<ConfigMap>,
    /// Source mode: runs the source container.
    pub source_deployment: Option<Deployment>,
    /// Source mode: where the poller asks the source for items.
    pub source_service: Option<Service>,
    /// The results ConfigMaps to keep, and a new one when results are written now.
    pub results: Vec<ConfigMap>,
    /// The Jobs the WorkQueue creates now, in item order, then those it keeps (by name).
    pub jobs: Vec<Job>,
}

impl Children {
    /// Every child, in apply order: the items before any Job.
    pub fn into_vec(self) -> Vec<Child> {
        let mut out = self
            .elect
            .map(ElectAccess::into_children)
            .unwrap_or_default();
        out.extend(self.items.map(Child::ConfigMap));
        out.extend(self.source_deployment.map(Child::Deployment));
        out.extend(self.source_service.map(Child::Service));
        // Before any Job: a Job is deleted only in the reconcile after its result is in
        // one, and the new one is written before anything else changes.
        out.extend(self.results.into_iter().map(Child::ConfigMap));
        out.extend(self.jobs.into_iter().map(Child::Job));
        out
    }
}

/// Labels of every child of `wq`.
pub fn labels(wq: &WorkQueue, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "rigging".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (QUEUE_LABEL.to_owned(), wq.name_any()),
    ])
}

fn meta(wq: &WorkQueue, name: String, component: &str) -> ObjectMeta {
    child_meta(wq, name, labels(wq, component))
}

/// Computes the children, or every reason the spec is invalid.
///
/// `observed` holds the Jobs that exist and, in source mode, the ConfigMap of items; the
/// status `wq` carries holds the items that finished. An item recorded as finished never
/// gets a Job again, whether its Job still exists or not.
pub fn desired(
    wq: &WorkQueue,
    config: &RenderConfig,
    observed: &Observed,
) -> Result<Children, FieldErrors> {
    let live_items = observed.cache().and_then(|c| {
        c.get::<ConfigMap>(&naming::items_config_map(&wq.name_any()))
            .filter(|cm| c.controls(&**cm))
    });
    let (items, mut errors) = items(wq, live_items.as_deref());
    let elect = ElectAccess::for_pods(
        wq.spec.sidecars.as_ref(),
        &wq.spec.worker.template,
        &wq.name_any(),
        meta(wq, wq.name_any(), "worker"),
        config.elect_grant.as_ref(),
    );
    let template = match worker_template(wq, config, elect.as_ref()) {
        Ok(template) => Some(template),
        Err(e) => {
            errors.extend(e.0);
            None
        }
    };
    errors.extend(check_source(wq));
    FieldErrors::into_result(errors)?;
    let template = template.unwrap_or_default();

    let cache = observed.cache();
    let recorded = Recorded::read(wq, cache.as_ref());
    let previous = wq.status.clone().unwrap_or_default();
    let expired: HashSet<&str> = previous.expired_jobs.iter().map(String::as_str).collect();

    // One pass over the items, each a lookup in the caches: what exists is kept by name
    // (never copied), and only unfinished Jobs, finished ones whose result is not yet in a
    // results ConfigMap, and new ones cost more than that.
    // (position of the item, the Job): the children list Jobs in item order.
    let mut kept: Vec<(usize, Job)> = Vec::new();
    let mut running = 0;
    let mut unstarted = Vec::new();
    // Results only on their Jobs so far: Job name → value, and whether one is due.
    let mut unrecorded: Vec<(String, String)> = Vec::new();
    let mut due = false;
    // Whether a Job of this queue that an earlier operator made still mounts the ConfigMap
    // of items ([`items_config_map`]).
    let mut mounted = false;
    // Speculative backups: how far the queue got, and its running items without a backup
    // (position, start).
    let mut succeeded = 0;
    let mut run_times = Vec::new();
    let mut candidates: Vec<(usize, Timestamp)> = Vec::new();
    let queue = wq.name_any();
    let ours = |name: &str| {
        let c = cache.as_ref()?;
        c.get::<Job>(name).filter(|j| c.controls(&**j))
    };
    let mut consider = |job: &str, item: &str, unstarted: Option<&mut Vec<usize>>, i: usize| {
        let first = ours(job);
        let backup_name = speculative::backup_name(wq, item);
        let backup = backup_name.as_deref().and_then(ours);
        if first.is_none() && backup.is_none() {
            // A Job of that name that this queue does not control is never its own: the
            // item waits (status names the conflict). Without any Job, a recorded item is
            // done, and any other starts when there is room.
            let foreign = cache.as_ref().and_then(|c| c.get::<Job>(job)).is_some();
            if let Some(unstarted) = unstarted.filter(|_| !foreign && recorded.get(job).is_none()) {
                unstarted.push(i);
            }
            return;
        }
        mounted |= first.as_deref().is_some_and(mounts_items);
        // (the Job, its name): first the item's own, then its backup.
        let pair = [
            (first, job),
            (backup, backup_name.as_deref().unwrap_or_default()),
        ];
        if let Some(value) = recorded.get(job) {
            // Recorded: the Job that decided it is kept until its TTL has passed, then
            // left out, so it is deleted; the other (a backup race's loser) goes at once.
            let (winner, _) = speculative::recorded_winner(value);
            let (live, name) = winner.of(&pair);
            if results::succeeded(value) {
                succeeded += 1;
                run_times.extend(live.as_deref().and_then(speculative::run_time));
            }
            if let Some(live) = live.as_deref().filter(|_| !expired.contains(name)) {
                kept.push((i, keep(live)));
            }
            return;
        }
        // Every unfinished Job counts against `parallelism`, a loser still running too.
        running += pair
            .iter()
            .filter(|(live, _)| {
                live.as_deref()
                    .is_some_and(|j| status::outcome(j).is_none())
            })
            .count();
        match speculative::standing(pair[0].0.as_deref(), pair[1].0.as_deref()) {
            Standing::Finished {
                outcome,
                winner,
                backup,
            } => {
                let (live, name) = winner.of(&pair);
                if outcome.succeeded() {
                    succeeded += 1;
                    run_times.extend(live.as_deref().and_then(speculative::run_time));
                }
                unrecorded.push((
                    job.to_owned(),
                    speculative::recorded_value(&outcome, item, winner, backup),
                ));
                // A backup race is written out at once: only then may its loser go.
                due |= backup || expired.contains(*name);
            }
            Standing::Running | Standing::Unstarted => {
                if let (Some(start), None, true) = (
                    pair[0].0.as_deref().and_then(speculative::started),
                    &pair[1].0,
                    i != usize::MAX,
                ) {
                    candidates.push((i, start));
                }
            }
        }
        for (live, _) in pair {
            kept.extend(live.map(|live| (i, keep(&live))));
        }
    };
    for (i, item) in items.iter().enumerate() {
        consider(&item.job, &item.item, Some(&mut unstarted), i);
    }
    // The poller only ever adds items, so in source mode a Job whose item is not (or no
    // longer) in the cached ConfigMap means that ConfigMap was damaged, not that the item
    // went away: its Job is kept rather than deleted mid-run, and counts like any other.
    if let Some(c) = cache.as_ref().filter(|_| wq.spec.source.is_some()) {
        let known: HashSet<&str> = items.iter().map(|i| i.job.as_str()).collect();
        for job in c.in_namespace::<Job>() {
            let name = job.name_any();
            if c.controls(&*job) && !known.contains(name.as_str()) && !is_backup(&job) {
                let item = job
                    .annotations()
                    .get(ITEM_ANNOTATION)
                    .cloned()
                    .unwrap_or_default();
                consider(&name, &item, None, usize::MAX);
            }
        }
    }
    // At most `parallelism` unfinished Jobs: new ones go to the first unstarted items, in
    // item order. A stale cache cannot make this run more than `parallelism`. The Jobs it
    // may be missing are the ones the last reconciles created, and those went to the first
    // unstarted items of the same order; so they are again the first of `unstarted` here,
    // and are chosen again before any item that truly has no Job. Chosen again, create_once
    // sends a create that the API server refuses as AlreadyExists (409), which creates
    // nothing: the Jobs that exist plus those created now stay within `parallelism`. The
    // order holds still while the queue runs because items are only ever appended: a
    // static list in spec order (an edit that inserts items before others that already
    // have a Job, at the moment the cache lags, is the one way to start one more), source
    // items in the order the poller first saw them (their key's sequence number).
    let free = usize::try_from(wq.spec.parallelism.max(0))
        .unwrap_or_default()
        .saturating_sub(running);
    let unstarted_count = unstarted.len();
    let mut jobs: Vec<(usize, Job)> = unstarted
        .into_iter()
        .take(free)
        .map(|i| (i, job(wq, &template, &items[i])))
        .collect();
    // Backups only once every item has a Job, so with room left, to the stragglers in item
    // order: chosen again the same way when the cache lags.
    if let (Some(spec), Some(now)) = (&wq.spec.speculative, observed.now()) {
        let progress = speculative::Progress {
            items: items.len(),
            unstarted: unstarted_count,
            succeeded,
            run_times,
        };
        let starts: Vec<Timestamp> = candidates.iter().map(|(_, start)| *start).collect();
        let plan = speculative::plan(spec, progress, &starts, now);
        let room = free.saturating_sub(jobs.len());
        for c in plan.due.into_iter().take(room) {
            let i = candidates[c].0;
            let item = &items[i];
            jobs.push((i, as_backup(job(wq, &template, item), &queue, &item.item)));
        }
    }
    let idle = running == 0 && jobs.is_empty();
    jobs.extend(kept);
    jobs.sort_by_key(|(i, _)| *i);
    let jobs: Vec<Job> = jobs.into_iter().map(|(_, j)| j).collect();

    let mut results = recorded.kept();
    if results::should_record(unrecorded.len(), idle, due) {
        results.push(recorded.next_chunk(wq, &unrecorded).0);
    }

    Ok(Children {
        elect,
        items: items_config_map(wq, &items, mounted),
        source_deployment: source_deployment(wq),
        source_service: source_service(wq),
        results,
        jobs,
    })
}

/// A child the queue keeps as it is: its name and resourceVersion, which tell
/// [`crate::controller::apply::create_once`] never to create it.
fn keep(live: &Job) -> Job {
    Job {
        metadata: ObjectMeta {
            name: live.metadata.name.clone(),
            namespace: live.metadata.namespace.clone(),
            uid: live.metadata.uid.clone(),
            resource_version: live.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        },
        ..Job::default()
    }
}

/// The items of `wq`, in order, with every reason they are unusable: from `spec.items`,
/// or in source mode from the ConfigMap the poller fills (`config_map`, as cached).
pub fn items(wq: &WorkQueue, config_map: Option<&ConfigMap>) -> (Vec<Item>, Vec<FieldError>) {
    let queue = wq.name_any();
    let Some(list) = &wq.spec.items else {
        return source_items(&queue, config_map);
    };
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(list.len());
    let mut by_job: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in list.iter().enumerate() {
        let job = naming::job_name(&queue, item);
        if let Some(&first) = by_job.get(&job) {
            let message = if list[first] == *item {
                format!("duplicate of spec.items[{first}]: each item is processed once")
            } else {
                format!(
                    "has the same hash as spec.items[{first}] ({:?}), so both would be Job {job}: rename one",
                    list[first]
                )
            };
            errors.push(FieldError::new(format!("spec.items[{i}]"), message));
            continue;
        }
        by_job.insert(job.clone(), i);
        out.push(Item {
            item: item.clone(),
            key: job.clone(),
            job,
        });
    }
    // The WorkQueue itself holds each item twice (in spec.items, and as the key of its
    // managedFields entry), and etcd stores at most OBJECT_LIMIT in one object: a queue
    // near it would take its Jobs and then fail every status write, half applied.
    let stored: usize = list
        .iter()
        .map(|i| 2 * i.len() + STORED_OVERHEAD_PER_ITEM)
        .sum::<usize>()
        + OBJECT_RESERVE;
    if stored > OBJECT_LIMIT {
        errors.push(FieldError::new(
            "spec.items",
            format!(
                "the WorkQueue would take about {stored} bytes as stored (each item twice, in spec.items and in metadata.managedFields, and {OBJECT_RESERVE} bytes for the rest of the object and its status), more than the {OBJECT_LIMIT} bytes etcd stores in one object: split them over several WorkQueues"
            ),
        ));
    }
    (out, errors)
}

/// Source mode: the items the poller wrote, as `<sequence>.<job>` keys, in sequence order
/// (the order of the keys, which are zero-padded). A key Rigging did not write is an error,
/// not skipped: the item it stands for would silently never run.
fn source_items(queue: &str, config_map: Option<&ConfigMap>) -> (Vec<Item>, Vec<FieldError>) {
    let mut out: Vec<Item> = Vec::new();
    let mut errors = Vec::new();
    let mut jobs = BTreeSet::new();
    let data = config_map.and_then(|c| c.data.as_ref());
    for (key, item) in data.into_iter().flatten() {
        let job = naming::job_name(queue, item);
        match parse_source_key(key) {
            Some((_, in_key)) if in_key == job => {
                // Two pollers racing could write one item under two sequence numbers: the
                // first one counts.
                if jobs.insert(job.clone()) {
                    out.push(Item {
                        item: item.clone(),
                        job,
                        key: key.clone(),
                    });
                }
            }
            _ => errors.push(FieldError::new(
                format!("ConfigMap {}: data.{key}", naming::items_config_map(queue)),
                format!(
                    "not a key Rigging's poller writes (`<sequence>.{job}` for this item): remove it; the poller adds the source's items itself"
                ),
            )),
        }
    }
    (out, errors)
}

/// Digits of the sequence number in a source-mode key.
pub const SEQUENCE_DIGITS: usize = 10;

/// The ConfigMap key of the `sequence`th item the poller saw, whose Job is `job`.
pub fn source_key(sequence: u64, job: &str) -> String {
    format!("{sequence:0width$}.{job}", width = SEQUENCE_DIGITS)
}

/// The sequence number and Job name of a source-mode key.
pub fn parse_source_key(key: &str) -> Option<(u64, &str)> {
    let (sequence, job) = key.split_once('.')?;
    if sequence.len() != SEQUENCE_DIGITS || !sequence.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((sequence.parse().ok()?, job))
}

fn check_source(wq: &WorkQueue) -> Vec<FieldError> {
    let Some(source) = &wq.spec.source else {
        return Vec::new();
    };
    let field = "spec.source.pollInterval";
    match humantime::parse_duration(&source.poll_interval) {
        Ok(d) if d >= MIN_POLL_INTERVAL => Vec::new(),
        Ok(_) => vec![FieldError::new(field, "must be at least 1s")],
        Err(e) => vec![FieldError::new(
            field,
            format!(
                "{:?} is not a duration like 30s or 5m: {e}",
                source.poll_interval
            ),
        )],
    }
}

/// The worker pod template every item's pod starts from: the user's template with the
/// Job's restart policy, Rigging's labels and its sidecars.
fn worker_template(
    wq: &WorkQueue,
    config: &RenderConfig,
    elect: Option<&ElectAccess>,
) -> Result<PodTemplateSpec, FieldErrors> {
    let mut template = wq.spec.worker.template.clone();
    if let Some(access) = elect {
        access.assign(&mut template);
    }
    let mut errors = Vec::new();
    let pod = template.spec.get_or_insert_with(PodSpec::default);
    match pod.restart_policy.as_deref() {
        None | Some("Never") => pod.restart_policy = Some("Never".into()),
        Some(other) => errors.push(FieldError::new(
            "spec.worker.template.spec.restartPolicy",
            format!(
                "must be Never or unset, not {other:?}: a failed try is retried by a new pod, which the Job counts against retries, and the rule that keeps evictions from using up a retry (podFailurePolicy) needs Never"
            ),
        )),
    }
    match pod.containers.first() {
        None => errors.push(FieldError::new(
            "spec.worker.template.spec.containers",
            "the first container is the worker: at least one is required",
        )),
        Some(worker) => {
            for env in worker.env.iter().flatten() {
                if env.name == WORK_ITEM || env.name == WORK_ITEM_FILE {
                    errors.push(FieldError::new(
                        "spec.worker.template.spec.containers[0].env",
                        format!("{} is set by Rigging to the item: remove it", env.name),
                    ));
                }
            }
            for mount in worker.volume_mounts.iter().flatten() {
                if mount.mount_path.trim_end_matches('/') == WORK_DIR {
                    errors.push(FieldError::new(
                        "spec.worker.template.spec.containers[0].volumeMounts",
                        format!("{WORK_DIR} is where Rigging mounts the item: mount elsewhere"),
                    ));
                }
            }
        }
    }
    if pod.volumes.iter().flatten().any(|v| v.name == WORK_VOLUME) {
        errors.push(FieldError::new(
            "spec.worker.template.spec.volumes",
            format!("volume \"{WORK_VOLUME}\" is reserved for the item's file"),
        ));
    }
    if wq.spec.sidecars.is_some() && !config.native_sidecars {
        errors.push(FieldError::new(
            "spec.sidecars",
            "this cluster has no native sidecars (Kubernetes 1.29 or later): as plain containers, sidecars would keep every worker's Job from completing",
        ));
    }
    let name = wq.name_any();
    let placement = sidecars::Placement {
        app_port: None,
        tls: None,
        sidecars: wq.spec.sidecars.as_ref(),
        election: Some(&name),
    };
    if let Err(e) = sidecars::place(&mut template, &placement, config) {
        // The sidecars renderer names fields of a ReplicatedService's `spec.template`.
        errors.extend(e.0.into_iter().map(|mut e| {
            if let Some(rest) = e.field.strip_prefix("spec.template") {
                e.field = format!("spec.worker.template{rest}");
            }
            e
        }));
    }
    FieldErrors::into_result(errors)?;
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels(wq, "worker"));
    Ok(template)
}

/// The Job of `item`: one pod at a time, `retries` more tries after a failure, evictions
/// not counted, and the item as `WORK_ITEM` and as the file `WORK_ITEM_FILE`.
fn job(wq: &WorkQueue, template: &PodTemplateSpec, item: &Item) -> Job {
    let hash = naming::item_hash(&item.item);
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.insert(ITEM_LABEL.into(), hash.clone());
    }
    if let Some(pod) = template.spec.as_mut() {
        if let Some(worker) = pod.containers.first_mut() {
            // First, so that the user's own variables can use $(WORK_ITEM).
            let env = worker.env.get_or_insert_with(Vec::new);
            env.splice(
                0..0,
                [
                    env_var(WORK_ITEM, &item.item),
                    env_var(WORK_ITEM_FILE, WORK_ITEM_PATH),
                ],
            );
            worker
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: WORK_VOLUME.into(),
                    mount_path: WORK_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
        }
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: WORK_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "item".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{ITEM_ANNOTATION}']"),
                        api_version: None,
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ITEM_ANNOTATION.into(), item.item.clone());
    let mut metadata = meta(wq, item.job.clone(), "worker");
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ITEM_LABEL.into(), hash);
    metadata.annotations = Some(BTreeMap::from([(
        ITEM_ANNOTATION.to_owned(),
        item.item.clone(),
    )]));
    Job {
        metadata,
        spec: Some(JobSpec {
            completions: Some(1),
            parallelism: Some(1),
            backoff_limit: Some(wq.spec.retries),
            // A pod evicted by a disruption (a drain, preemption, a node going away) is
            // marked DisruptionTarget: its failure is ignored and the pod replaced, so it
            // does not use up a retry.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".into(),
                        status: "True".into(),
                    }]),
                    on_exit_codes: None,
                }],
            }),
            // A replacement pod only once the failed one is gone: never two pods of one
            // item at once (what podFailurePolicy requires anyway, written out).
            pod_replacement_policy: Some("Failed".into()),
            active_deadline_seconds: wq.spec.active_deadline_seconds,
            // No ttlSecondsAfterFinished: the Job controller would delete the Job before
            // its result is in the WorkQueue's status. The operator deletes it once it is.
            template,
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// `job`, the Job of `item` in `queue`, made its speculative backup: under the backup's
/// name, it and its pods labelled [`BACKUP_LABEL`].
pub fn as_backup(mut job: Job, queue: &str, item: &str) -> Job {
    job.metadata.name = Some(naming::backup_job_name(queue, item));
    let pod_labels = job
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.labels.as_mut());
    for labels in [job.metadata.labels.as_mut(), pod_labels]
        .into_iter()
        .flatten()
    {
        labels.insert(BACKUP_LABEL.into(), "true".into());
    }
    job
}

/// Whether `job` is an item's speculative backup.
pub fn is_backup(job: &Job) -> bool {
    job.labels().get(BACKUP_LABEL).map(String::as_str) == Some("true")
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The ConfigMap of items. In source mode without data: the poller owns every key (under
/// its own field manager), and what the operator applies never removes one. A static list
/// has one only while a Job that an earlier release created mounts it (its pods read their
/// item from it: `mounted`), so that an upgrade never takes an item from a pod about to
/// start.
fn items_config_map(wq: &WorkQueue, items: &[Item], mounted: bool) -> Option<ConfigMap> {
    let data = match wq.spec.items {
        None => None,
        Some(_) if mounted => Some(
            items
                .iter()
                .map(|i| (i.key.clone(), i.item.clone()))
                .collect(),
        ),
        Some(_) => return None,
    };
    Some(ConfigMap {
        metadata: meta(wq, naming::items_config_map(&wq.name_any()), "items"),
        data,
        ..ConfigMap::default()
    })
}

/// Whether `job`'s pods read their item from the ConfigMap `<queue>-items`, as Jobs
/// created before the item moved into the Job do.
fn mounts_items(job: &Job) -> bool {
    let volumes = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref());
    volumes
        .into_iter()
        .flatten()
        .any(|v| v.name == WORK_VOLUME && v.config_map.is_some())
}

fn source_selector(wq: &WorkQueue) -> BTreeMap<String, String> {
    BTreeMap::from([
        (QUEUE_LABEL.to_owned(), wq.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            "source".to_owned(),
        ),
    ])
}

fn source_deployment(wq: &WorkQueue) -> Option<Deployment> {
    let source = wq.spec.source.as_ref()?;
    Some(Deployment {
        metadata: meta(wq, naming::source(&wq.name_any()), "source"),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(source_selector(wq)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(wq, "source")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![source.template.clone()],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn source_service(wq: &WorkQueue) -> Option<Service> {
    let source = wq.spec.source.as_ref()?;
    Some(Service {
        metadata: meta(wq, naming::source(&wq.name_any()), "source"),
        spec: Some(ServiceSpec {
            selector: Some(source_selector(wq)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: source.port,
                target_port: Some(IntOrString::Int(source.port)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::assert_child_of;
    use crate::work_queue::fixtures::*;
    use rigging_crds::WorkQueueStatus;

    const ITEMS: [&str; 5] = ["cat.png", "Dog.png", "dog.png", "eel.png", "fox.png"];

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn pod_meta(job: &Job) -> &ObjectMeta {
        job.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
    }

    fn errors(wq: &WorkQueue) -> Vec<String> {
        match desired(wq, &config(), &Observed::nothing()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn expired(jobs: &[&Job]) -> WorkQueueStatus {
        WorkQueueStatus {
            expired_jobs: jobs
                .iter()
                .map(|j| j.metadata.name.clone().unwrap())
                .collect(),
            ..WorkQueueStatus::default()
        }
    }

    #[test]
    fn the_first_reconcile_creates_parallelism_jobs_in_item_order_and_nothing_else() {
        let wq = static_queue(&ITEMS, 2);
        let c = first(&wq);
        assert_eq!(
            job_names(&c),
            [
                naming::job_name("thumbs", "cat.png"),
                naming::job_name("thumbs", "Dog.png")
            ]
        );
        assert!(c.source_deployment.is_none() && c.source_service.is_none());
        let kinds: Vec<&str> = c.into_vec().iter().map(Child::kind).collect();
        assert_eq!(kinds, ["Job", "Job"]);
    }

    #[test]
    fn a_job_runs_one_pod_retries_without_counting_evictions_and_has_no_ttl_of_its_own() {
        let c = first(&static_queue(&ITEMS, 1));
        let job = &c.jobs[0];
        let spec = job.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.parallelism), (Some(1), Some(1)));
        assert_eq!(spec.backoff_limit, Some(2), "retries");
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, None);
        assert_eq!(spec.pod_replacement_policy.as_deref(), Some("Failed"));
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].action, "Ignore");
        let on = &rules[0].on_pod_conditions.as_ref().unwrap()[0];
        assert_eq!(
            (on.type_.as_str(), on.status.as_str()),
            ("DisruptionTarget", "True")
        );
        assert_eq!(pod(job).restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_item_reaches_the_worker_as_work_item_and_as_a_file_of_its_pods_annotation() {
        let c = first(&static_queue(&ITEMS, 1));
        let job = &c.jobs[0];
        let worker = &pod(job).containers[0];
        let env: Vec<(&str, Option<&str>)> = worker
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            env,
            [
                ("WORK_ITEM", Some("cat.png")),
                ("WORK_ITEM_FILE", Some("/var/run/rigging/work/item")),
                ("OUT", Some("/out/$(WORK_ITEM)")),
            ],
            "Rigging's variables first, so the user's can refer to them"
        );
        let mount = worker.volume_mounts.as_ref().unwrap().last().unwrap();
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.read_only
            ),
            (WORK_VOLUME, WORK_DIR, Some(true))
        );
        // The file is the pod's own annotation, which holds the item.
        let volume = pod(job).volumes.as_ref().unwrap().last().unwrap();
        let file = &volume
            .downward_api
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()[0];
        assert_eq!(file.path, "item");
        assert_eq!(
            file.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['rigging.dev/work-item']"
        );
        assert_eq!(
            pod_meta(job).annotations.as_ref().unwrap()[ITEM_ANNOTATION],
            "cat.png"
        );
        assert_eq!(c.items, None, "no ConfigMap of items");
    }

    #[test]
    fn jobs_and_pods_carry_the_queue_and_item_labels_and_every_child_an_owner() {
        let c = first(&static_queue(&ITEMS, 1));
        let job = &c.jobs[0];
        let hash = naming::item_hash("cat.png");
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "rigging-operator");
        assert_eq!(labels[QUEUE_LABEL], "thumbs");
        assert_eq!(labels[ITEM_LABEL], hash);
        assert_eq!(
            job.metadata.annotations.as_ref().unwrap()[ITEM_ANNOTATION],
            "cat.png"
        );
        let pod_labels = pod_meta(job).labels.as_ref().unwrap();
        assert_eq!(pod_labels[QUEUE_LABEL], "thumbs");
        assert_eq!(pod_labels[ITEM_LABEL], hash);
        assert_eq!(
            pod_labels["team"], "media",
            "the template's own labels stay"
        );
        assert_child_of(&job.metadata, "media", ("WorkQueue", "thumbs", "wq-uid"));
    }

    #[test]
    fn sidecars_in_worker_pods_are_native_sidecars_so_they_never_hold_a_job_open() {
        let mut wq = static_queue(&ITEMS, 1);
        wq.spec.sidecars = Some(
            serde_json::from_value(serde_json::json!({
                "logs": {"format": "json", "file": "/var/log/worker/out.log"}
            }))
            .unwrap(),
        );
        let c = first(&wq);
        let pod = pod(&c.jobs[0]);
        let init = pod.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].name, "rigging-logs");
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(init[0].image.as_deref(), Some("sidecar:test"));
        assert_eq!(pod.containers.len(), 1, "the worker alone is a container");
        let mounts: Vec<&str> = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, ["rigging-logs", WORK_VOLUME]);
    }

    #[test]
    fn a_restart_policy_other_than_never_is_refused_naming_the_field() {
        let mut wq = static_queue(&ITEMS, 1);
        wq.spec
            .worker
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        let errors = errors(&wq);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "spec.worker.template.spec.restartPolicy: must be Never or unset, not \"OnFailure\""
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn what_rigging_sets_on_the_worker_cannot_be_set_by_the_template() {
        let mut wq = static_queue(&ITEMS, 1);
        let pod = wq.spec.worker.template.spec.as_mut().unwrap();
        pod.containers[0]
            .env
            .as_mut()
            .unwrap()
            .push(env_var("WORK_ITEM", "x"));
        pod.volumes = Some(vec![Volume {
            name: WORK_VOLUME.into(),
            ..Volume::default()
        }]);
        pod.containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "v".into(),
            mount_path: "/var/run/rigging/work/".into(),
            ..VolumeMount::default()
        }]);
        assert_eq!(
            errors(&wq),
            [
                "spec.worker.template.spec.containers[0].env: WORK_ITEM is set by Rigging to the item: remove it",
                "spec.worker.template.spec.containers[0].volumeMounts: /var/run/rigging/work is where Rigging mounts the item: mount elsewhere",
                "spec.worker.template.spec.volumes: volume \"rigging-work-item\" is reserved for the item's file",
            ]
        );
    }

    #[test]
    fn a_sidecar_name_the_worker_takes_is_refused_under_the_worker_template() {
        let mut wq = static_queue(&ITEMS, 1);
        wq.spec.worker.template.spec.as_mut().unwrap().containers[0].name = "rigging-logs".into();
        wq.spec.sidecars = Some(
            serde_json::from_value(serde_json::json!({
                "logs": {"format": "json", "file": "/var/log/worker/out.log"}
            }))
            .unwrap(),
        );
        let errors = errors(&wq);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "spec.worker.template.spec.containers: container #0 is named \"rigging-logs\""
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn a_static_list_is_copied_into_no_config_map_however_large() {
        // 10,000 items of 50 bytes: with their Job names, 1.13 MB, which one ConfigMap
        // could not hold; the WorkQueue itself (1.18 MB) still fits in etcd.
        let items: Vec<String> = (0..10_000)
            .map(|i| format!("{i:05}{}", "x".repeat(45)))
            .collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let c = first(&static_queue(&refs, 3));
        assert_eq!(c.items, None);
        assert_eq!(c.jobs.len(), 3);
        let children = c.into_vec();
        assert!(
            !children.iter().any(|c| matches!(c, Child::ConfigMap(_))),
            "{children:?}"
        );
    }

    #[test]
    fn the_items_config_map_stays_while_a_job_of_an_earlier_release_mounts_it() {
        use k8s_openapi::api::core::v1::ConfigMapVolumeSource;
        let wq = static_queue(&["a", "b"], 1);
        let mut old = job_of(&wq, "a");
        let pod = old.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        let volume = pod.volumes.as_mut().unwrap().last_mut().unwrap();
        volume.downward_api = None;
        volume.config_map = Some(ConfigMapVolumeSource {
            name: "thumbs-items".into(),
            ..ConfigMapVolumeSource::default()
        });
        let c = with_cached(&wq, vec![Child::Job(old)]);
        let cm = c.items.expect("kept for the Job that mounts it");
        assert_eq!(cm.metadata.name.as_deref(), Some("thumbs-items"));
        assert_eq!(cm.data.unwrap().len(), 2);
    }

    #[test]
    fn items_that_would_make_the_work_queue_too_large_to_store_are_refused() {
        // 200 items of 4000 bytes are 800 kB, but the WorkQueue holds them twice (in
        // spec.items and in managedFields): 1.6 MB as stored, over etcd's 1.5 MiB.
        let big = "y".repeat(4000);
        let items: Vec<String> = (0..200).map(|i| format!("{i}{big}")).collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let errors = errors(&static_queue(&refs, 1));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("spec.items: the WorkQueue would take about 16"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("more than the 1572864 bytes etcd stores in one object"),
            "{errors:?}"
        );
        assert_eq!(
            super::tests::errors(&static_queue(&refs[..180], 1)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_duplicate_item_is_refused_naming_both() {
        let errors = errors(&static_queue(&["a", "b", "a"], 1));
        assert_eq!(
            errors,
            ["spec.items[2]: duplicate of spec.items[0]: each item is processed once"]
        );
    }

    #[test]
    fn no_new_job_while_parallelism_jobs_run_and_the_next_item_when_one_finishes() {
        let wq = static_queue(&ITEMS, 2);
        let cat = active(job_of(&wq, "cat.png"));
        let big_dog = active(job_of(&wq, "Dog.png"));
        let c = with_cached(
            &wq,
            vec![Child::Job(cat.clone()), Child::Job(big_dog.clone())],
        );
        assert_eq!(
            job_names(&c),
            [
                naming::job_name("thumbs", "cat.png"),
                naming::job_name("thumbs", "Dog.png")
            ]
        );

        let done = succeeded(cat, at(0));
        let c = with_cached(&wq, vec![Child::Job(done), Child::Job(big_dog)]);
        assert_eq!(
            job_names(&c),
            ["cat.png", "Dog.png", "dog.png"].map(|i| naming::job_name("thumbs", i)),
            "the finished Job stays (no TTL) and the next item starts"
        );
    }

    #[test]
    fn a_failed_job_frees_its_slot_too() {
        let wq = static_queue(&ITEMS, 1);
        let cat = failed(job_of(&wq, "cat.png"), at(0));
        let c = with_cached(&wq, vec![Child::Job(cat)]);
        assert_eq!(
            job_names(&c),
            ["cat.png", "Dog.png"].map(|i| naming::job_name("thumbs", i))
        );
    }

    #[test]
    fn a_recorded_item_never_gets_a_job_again_and_an_expired_one_is_left_out_to_be_deleted() {
        let mut wq = static_queue(&ITEMS, 1);
        let cat = succeeded(job_of(&wq, "cat.png"), at(0));
        let big_dog = failed(job_of(&wq, "Dog.png"), at(0));
        let dog = succeeded(job_of(&wq, "dog.png"), at(0));
        // cat: recorded, its Job gone (deleted after its TTL, or by hand). Dog: recorded
        // and expired. dog: recorded, kept.
        let chunk = results_chunk(
            &wq,
            0,
            &[
                recorded_as(&cat, "Succeeded"),
                recorded_as(&big_dog, "Failed: BackoffLimitExceeded"),
                recorded_as(&dog, "Succeeded"),
            ],
        );
        wq.status = Some(expired(&[&big_dog]));
        let c = with_cached(
            &wq,
            vec![
                Child::ConfigMap(chunk),
                Child::Job(big_dog),
                Child::Job(dog),
            ],
        );
        assert_eq!(
            job_names(&c),
            ["dog.png", "eel.png"].map(|i| naming::job_name("thumbs", i)),
        );
        assert_eq!(c.results.len(), 1, "the results ConfigMap kept");
        assert_eq!(c.results[0].data, None, "kept by name, not applied again");
    }

    #[test]
    fn an_expired_job_whose_result_is_only_on_it_is_kept_and_its_result_written_first() {
        let mut wq = static_queue(&ITEMS, 1);
        wq.spec.ttl_seconds_after_finished = Some(0);
        let cat = succeeded(job_of(&wq, "cat.png"), at(0));
        wq.status = Some(expired(&[&cat]));
        let c = with_cached(&wq, vec![Child::Job(cat.clone())]);
        assert!(
            job_names(&c).contains(cat.metadata.name.as_ref().unwrap()),
            "kept: its result is not in a results ConfigMap yet"
        );
        assert_eq!(c.results.len(), 1, "{:?}", c.results);
        let written = &c.results[0];
        assert_eq!(written.metadata.name.as_deref(), Some("thumbs-results-0"));
        assert_eq!(written.immutable, Some(true));
        assert_eq!(
            written.data.as_ref().unwrap()[cat.metadata.name.as_ref().unwrap()],
            "Succeeded"
        );
    }

    #[test]
    fn results_wait_on_their_jobs_until_a_batch_is_full_or_nothing_is_left_to_run() {
        let wq = static_queue(&ITEMS, 1);
        let cat = succeeded(job_of(&wq, "cat.png"), at(0));
        let c = with_cached(&wq, vec![Child::Job(cat.clone())]);
        assert!(c.results.is_empty(), "Dog.png starts: not idle, no TTL due");
        // Every item finished: the results are written.
        let all: Vec<Child> = ITEMS
            .iter()
            .map(|i| Child::Job(failed(job_of(&wq, i), at(0))))
            .collect();
        let c = with_cached(&wq, all);
        let data = c.results[0].data.as_ref().unwrap();
        assert_eq!(data.len(), 5);
        assert!(
            data[cat.metadata.name.as_ref().unwrap()].starts_with(
                "Failed: BackoffLimitExceeded: Job has reached the specified backoff limit; item: \"cat.png\""
            ),
            "{data:?}"
        );
    }

    /// `ITEMS` with backups after twice the median, `parallelism` at once.
    fn speculative_queue(parallelism: i32) -> WorkQueue {
        let mut wq = static_queue(&ITEMS, parallelism);
        wq.spec.speculative = Some(rigging_crds::work_queue::Speculative {
            after: "2x".into(),
            idempotent: true,
        });
        wq
    }

    /// cat, Dog and dog succeeded in 10 s each; eel runs since 0 s and fox since 15 s.
    fn three_done_two_running(wq: &WorkQueue) -> Vec<Child> {
        let mut jobs: Vec<Child> = ["cat.png", "Dog.png", "dog.png"]
            .iter()
            .map(|i| Child::Job(succeeded(active_since(job_of(wq, i), at(0)), at(10))))
            .collect();
        jobs.push(Child::Job(active_since(job_of(wq, "eel.png"), at(0))));
        jobs.push(Child::Job(active_since(job_of(wq, "fox.png"), at(15))));
        jobs
    }

    #[test]
    fn a_straggler_gets_a_labelled_backup_job_after_after_times_the_median_with_room_for_it() {
        let wq = speculative_queue(5);
        let eel_backup = naming::backup_job_name("thumbs", "eel.png");
        // Median 10 s, 2x: eel is a straggler from 20 s, fox from 35 s.
        let c = with_cached_at(&wq, three_done_two_running(&wq), at(19));
        assert_eq!(c.jobs.len(), 5, "{:?}", job_names(&c));
        let c = with_cached_at(&wq, three_done_two_running(&wq), at(20));
        let names = job_names(&c);
        assert_eq!(names.len(), 6, "{names:?}");
        let backup = c
            .jobs
            .iter()
            .find(|j| j.metadata.name.as_deref() == Some(eel_backup.as_str()))
            .unwrap_or_else(|| panic!("no backup for eel: {names:?}"));
        let pod_labels = backup.spec.as_ref().unwrap().template.metadata.as_ref();
        for labels in [
            backup.metadata.labels.as_ref(),
            pod_labels.unwrap().labels.as_ref(),
        ] {
            let labels = labels.unwrap();
            assert_eq!(labels[BACKUP_LABEL], "true");
            assert_eq!(labels[ITEM_LABEL], naming::item_hash("eel.png"));
        }
        assert_eq!(
            backup.metadata.annotations.as_ref().unwrap()[ITEM_ANNOTATION],
            "eel.png"
        );
        // No room: the two running Jobs fill parallelism 2.
        let full = speculative_queue(2);
        assert_eq!(
            with_cached_at(&full, three_done_two_running(&full), at(40))
                .jobs
                .len(),
            5
        );
        // Without speculative, never.
        let plain = static_queue(&ITEMS, 5);
        assert_eq!(
            with_cached_at(&plain, three_done_two_running(&plain), at(40))
                .jobs
                .len(),
            5
        );
    }

    #[test]
    fn no_backup_while_an_item_has_not_started_or_fewer_than_half_succeeded() {
        let wq = speculative_queue(5);
        let mut cached = three_done_two_running(&wq);
        // fox has no Job yet.
        cached.pop();
        let c = with_cached_at(&wq, cached, at(100));
        assert!(
            !job_names(&c).iter().any(|n| n.ends_with("-b")),
            "{:?}",
            job_names(&c)
        );
        // Two of five succeeded.
        let mut cached = three_done_two_running(&wq);
        cached[2] = Child::Job(active_since(job_of(&wq, "dog.png"), at(0)));
        let c = with_cached_at(&wq, cached, at(100));
        assert!(
            !job_names(&c).iter().any(|n| n.ends_with("-b")),
            "{:?}",
            job_names(&c)
        );
    }

    #[test]
    fn the_backup_that_wins_is_recorded_at_once_and_only_then_its_loser_is_deleted() {
        let wq = speculative_queue(5);
        let first = job_of(&wq, "eel.png");
        let backup = backup_of(&wq, "eel.png");
        let mut cached = three_done_two_running(&wq);
        cached.push(Child::Job(succeeded(
            active_since(backup.clone(), at(20)),
            at(25),
        )));
        let c = with_cached_at(&wq, cached.clone(), at(26));
        let names = job_names(&c);
        assert!(
            names.contains(first.metadata.name.as_ref().unwrap())
                && names.contains(backup.metadata.name.as_ref().unwrap()),
            "both kept until the result is recorded: {names:?}"
        );
        assert_eq!(c.results.len(), 1, "written at once, fox still runs");
        let data = c.results[0].data.as_ref().unwrap();
        assert_eq!(
            data[first.metadata.name.as_ref().unwrap()],
            "Succeeded; backup won"
        );
        // Recorded: the loser (the item's first Job, still running) is left out.
        let mut recorded = c.results[0].clone();
        recorded.metadata.resource_version = Some("rv-0".into());
        cached.push(Child::ConfigMap(recorded));
        let names = job_names(&with_cached_at(&wq, cached, at(27)));
        assert!(
            !names.contains(first.metadata.name.as_ref().unwrap()),
            "{names:?}"
        );
        assert!(
            names.contains(backup.metadata.name.as_ref().unwrap()),
            "{names:?}"
        );
    }

    #[test]
    fn a_first_job_that_wins_is_recorded_so_and_its_backup_is_deleted() {
        let wq = speculative_queue(5);
        let first = job_of(&wq, "eel.png");
        let backup = backup_of(&wq, "eel.png");
        let mut cached = three_done_two_running(&wq);
        cached[3] = Child::Job(succeeded(active_since(first.clone(), at(0)), at(24)));
        cached.push(Child::Job(active_since(backup.clone(), at(20))));
        let c = with_cached_at(&wq, cached.clone(), at(26));
        let data = c.results[0].data.as_ref().unwrap();
        assert_eq!(
            data[first.metadata.name.as_ref().unwrap()],
            "Succeeded; backup lost"
        );
        cached.push(Child::ConfigMap(results_chunk(
            &wq,
            0,
            &[(
                first.metadata.name.clone().unwrap(),
                "Succeeded; backup lost".into(),
            )],
        )));
        let names = job_names(&with_cached_at(&wq, cached, at(27)));
        assert!(
            names.contains(first.metadata.name.as_ref().unwrap()),
            "{names:?}"
        );
        assert!(
            !names.contains(backup.metadata.name.as_ref().unwrap()),
            "{names:?}"
        );
    }

    #[test]
    fn a_job_of_an_items_name_that_the_queue_does_not_control_is_never_its_own() {
        let wq = static_queue(&ITEMS, 2);
        // cat's Job name is taken by a Job that the queue does not control (left behind by
        // a WorkQueue deleted with --cascade=orphan: no owner).
        let mut orphan = succeeded(job_of(&wq, "cat.png"), at(0));
        orphan.metadata.owner_references = None;
        let c = with_cached(&wq, vec![Child::Job(orphan)]);
        assert_eq!(
            job_names(&c),
            ["Dog.png", "dog.png"].map(|i| naming::job_name("thumbs", i)),
            "neither kept, nor counted as finished, nor created again"
        );
        assert!(c.results.is_empty(), "its result is not recorded");
    }

    #[test]
    fn a_stale_cache_chooses_the_jobs_already_created_again_and_no_more() {
        let wq = static_queue(&ITEMS, 2);
        // The last reconcile created cat's and Dog's Jobs; the cache has seen only cat's,
        // which has since succeeded.
        let cat = succeeded(job_of(&wq, "cat.png"), at(0));
        let c = with_cached(&wq, vec![Child::Job(cat)]);
        // Dog's Job comes first again: its create is refused as AlreadyExists. With dog's,
        // two run: parallelism.
        assert_eq!(
            job_names(&c),
            ["cat.png", "Dog.png", "dog.png"].map(|i| naming::job_name("thumbs", i)),
        );
    }

    #[test]
    fn an_item_removed_from_the_list_loses_its_job_and_its_result() {
        let mut wq = static_queue(&ITEMS, 1);
        let cat = active(job_of(&wq, "cat.png"));
        wq.spec.items = Some(vec!["eel.png".into()]);
        let c = with_cached(&wq, vec![Child::Job(cat)]);
        assert_eq!(job_names(&c), [naming::job_name("thumbs", "eel.png")]);
    }

    #[test]
    fn source_mode_runs_the_source_behind_a_service_and_leaves_the_items_to_the_poller() {
        let wq = source_queue();
        let c = first(&wq);
        assert!(c.jobs.is_empty(), "no items listed yet");
        assert_eq!(
            c.items.unwrap().data,
            None,
            "the operator applies no key: the poller owns them"
        );
        let deployment = c.source_deployment.unwrap();
        let service = c.source_service.unwrap();
        assert_eq!(deployment.metadata.name.as_deref(), Some("feed-source"));
        assert_eq!(service.metadata.name.as_deref(), Some("feed-source"));
        let spec = deployment.spec.unwrap();
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        let selector = spec.selector.match_labels.unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(
            service.spec.as_ref().unwrap().selector.as_ref(),
            Some(&selector)
        );
        assert_eq!(
            spec.template.spec.unwrap().containers[0].image.as_deref(),
            Some("feed-source:1")
        );
        let port = &service.spec.unwrap().ports.unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (8080, Some(IntOrString::Int(8080)))
        );
    }

    fn items_config_map_with(wq: &WorkQueue, data: &[(String, &str)]) -> ConfigMap {
        let mut cm = first(wq).items.expect("source mode");
        cm.data = Some(
            data.iter()
                .map(|(k, v)| (k.clone(), (*v).to_owned()))
                .collect(),
        );
        cm
    }

    #[test]
    fn source_items_run_in_the_order_the_poller_saw_them_each_in_its_own_job() {
        let wq = source_queue();
        let key = |seq, item| source_key(seq, &naming::job_name("feed", item));
        // "zebra" was seen first: it runs first although it sorts last by name.
        let cm = items_config_map_with(
            &wq,
            &[
                (key(1, "zebra"), "zebra"),
                (key(2, "apple"), "apple"),
                (key(3, "mango"), "mango"),
            ],
        );
        let c = with_cached(&wq, vec![Child::ConfigMap(cm)]);
        assert_eq!(
            job_names(&c),
            ["zebra", "apple"].map(|i| naming::job_name("feed", i))
        );
        assert_eq!(
            pod_meta(&c.jobs[0]).annotations.as_ref().unwrap()[ITEM_ANNOTATION],
            "zebra"
        );
    }

    #[test]
    fn in_source_mode_a_job_whose_item_vanished_from_the_config_map_is_kept_and_counted() {
        let wq = source_queue();
        let key = |seq, item| source_key(seq, &naming::job_name("feed", item));
        let cm = items_config_map_with(&wq, &[(key(1, "a"), "a"), (key(2, "b"), "b")]);
        let c = with_cached(&wq, vec![Child::ConfigMap(cm)]);
        let a = active(c.jobs[0].clone());
        // Someone emptied the ConfigMap: a's Job still runs and takes a slot.
        let emptied = items_config_map_with(&wq, &[(key(2, "b"), "b"), (key(3, "c"), "c")]);
        let c = with_cached(&wq, vec![Child::ConfigMap(emptied), Child::Job(a.clone())]);
        assert_eq!(
            job_names(&c),
            [
                naming::job_name("feed", "b"),
                a.metadata.name.clone().unwrap()
            ]
        );
    }

    #[test]
    fn a_config_map_key_the_poller_did_not_write_is_refused() {
        let wq = source_queue();
        let cm = items_config_map_with(
            &wq,
            &[
                ("by-hand".into(), "x"),
                (source_key(1, "feed-wrong-000000000000"), "y"),
            ],
        );
        let stores = crate::controller::ChildStores::prefilled([Child::ConfigMap(cm)]);
        let observed = Observed::cached(&stores, "media", "wq-uid");
        let errors: Vec<String> = desired(&wq, &config(), &observed)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("ConfigMap feed-items: data.0000000001.feed-wrong-000000000000: not a key Rigging's poller writes"), "{errors:?}");
        assert!(
            errors[1].starts_with("ConfigMap feed-items: data.by-hand: not a key"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_poll_interval_that_is_not_a_duration_or_too_short_is_refused() {
        let mut wq = source_queue();
        wq.spec.source.as_mut().unwrap().poll_interval = "often".into();
        let e = errors(&wq);
        assert!(
            e[0].starts_with(
                "spec.source.pollInterval: \"often\" is not a duration like 30s or 5m"
            ),
            "{e:?}"
        );
        wq.spec.source.as_mut().unwrap().poll_interval = "100ms".into();
        assert_eq!(
            errors(&wq),
            ["spec.source.pollInterval: must be at least 1s"]
        );
    }

    #[test]
    fn source_keys_sort_in_sequence_order_and_parse_back() {
        assert!(source_key(9, "q-a-1") < source_key(10, "q-a-0"));
        assert_eq!(
            parse_source_key(&source_key(42, "q-a-1")),
            Some((42, "q-a-1"))
        );
        assert_eq!(parse_source_key("42.q-a-1"), None);
        assert_eq!(parse_source_key("q-a-1"), None);
    }
}
