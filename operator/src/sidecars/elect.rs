//! What `spec.sidecars.elect` asks of a pod and of its namespace: the election sidecar's
//! flags (checked by the sidecar's own rules, [`ElectArgs::check`]), the downward-API
//! variables it reads its identity from, the ServiceAccount token it talks to the API
//! server with, and, on the Lease backend, the Role that lets the pods' ServiceAccount
//! keep their Leases — in their own namespace, and no other Lease than theirs unless they
//! share out items.
//!
//! The container itself is placed by the one renderer, [`super::place`].

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, EnvVar, HTTPGetAction,
    KeyToPath, ObjectFieldSelector, PodTemplateSpec, Probe, ProjectedVolumeSource, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rigging_crds::sidecar::elect::{Backend, ElectArgs, ElectArgsError};
use rigging_crds::sidecar::ports;
use rigging_crds::sidecar::spec::{ElectBackend, ElectSidecar, Sidecars};
use rigging_crds::{FieldError, FieldErrors};

use crate::controller::{Child, bind_role};

/// The field every error about the election sidecar is named under.
const FIELD: &str = "spec.sidecars.elect";
/// The path where a pod's ServiceAccount token is mounted, which in-cluster clients read.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long the projected token lives before the kubelet renews it: what the kubelet's own
/// `kube-api-access` volume asks for.
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The suffix of the ServiceAccount, Role and RoleBinding of an object's election.
pub const ACCESS_SUFFIX: &str = "-elect";

/// The sidecar's flags for `elect`, with the election named `default_election` (the
/// owning object's name) unless the block names one; or why they are refused, each error
/// naming the field of `spec.sidecars.elect` to fix.
///
/// Identity and namespace are left out: the sidecar reads them from `POD_NAME` and
/// `POD_NAMESPACE` ([`downward_env`]), which the kubelet fills in per pod.
pub fn args(
    elect: &ElectSidecar,
    default_election: Option<&str>,
) -> Result<ElectArgs, FieldErrors> {
    let mut errors = Vec::new();
    let (election, defaulted) = match (&elect.election, default_election) {
        (Some(name), _) => (name.clone(), false),
        (None, Some(name)) => (name.to_owned(), true),
        (None, None) => {
            errors.push(FieldError::new(
                format!("{FIELD}.election"),
                "required here: the pods that give the same election name elect one leader among them",
            ));
            (String::new(), false)
        }
    };
    let backend = match elect.backend {
        ElectBackend::Lease => Backend::Lease,
        ElectBackend::Etcd => Backend::Etcd,
    };
    let mut args = ElectArgs::new(backend, election);
    args.etcd_endpoints = elect.etcd_endpoints.clone();
    let timings = [
        (
            "leaseDuration",
            &elect.lease_duration,
            &mut args.lease_duration,
        ),
        (
            "renewDeadline",
            &elect.renew_deadline,
            &mut args.renew_deadline,
        ),
        ("retryPeriod", &elect.retry_period, &mut args.retry_period),
    ];
    for (field, text, value) in timings {
        if let Some(text) = text {
            match rigging_crds::sidecar::duration::parse(text) {
                Ok(d) => *value = d,
                Err(e) => errors.push(FieldError::new(format!("{FIELD}.{field}"), e)),
            }
        }
    }
    args.items = elect.items.and_then(|n| u32::try_from(n).ok());
    args.leader_file = elect.leader_file.as_ref().map(PathBuf::from);
    FieldErrors::into_result(errors)?;
    args.check()
        .map_err(|e| FieldErrors(vec![refusal(&e, defaulted.then_some(&args.election))]))?;
    Ok(args)
}

/// The sidecar's refusal of its flags, as an error about the field that set them.
fn refusal(error: &ElectArgsError, defaulted: Option<&String>) -> FieldError {
    let field = match error {
        ElectArgsError::Election(_) => "election",
        ElectArgsError::LeaseDuration(_) => "leaseDuration",
        ElectArgsError::RenewDeadline { .. } => "renewDeadline",
        ElectArgsError::RetryPeriod { .. } => "retryPeriod",
        ElectArgsError::NoEtcdEndpoint | ElectArgsError::EtcdEndpoint(_) => "etcdEndpoints",
    };
    let field = format!("{FIELD}.{field}");
    if let (ElectArgsError::Election(_), Some(name)) = (error, defaulted) {
        return FieldError::new(
            field,
            format!(
                "not set, so it would be the object's name {name:?}, which is not an election name (a DNS label of at most {} characters): set election",
                rigging_crds::sidecar::elect::MAX_ELECTION_NAME
            ),
        );
    }
    // The sidecar's rules name its flags; say the same with the fields that set them.
    let mut message = error.to_string();
    for (flag, name) in [
        ("--lease-duration", "leaseDuration"),
        ("--renew-deadline", "renewDeadline"),
        ("--retry-period", "retryPeriod"),
        ("--election", "election"),
        ("--backend etcd", "backend Etcd"),
        ("--etcd-endpoint", "etcdEndpoints"),
    ] {
        message = message.replace(flag, name);
    }
    FieldError::new(field, message)
}

/// `POD_NAME` and `POD_NAMESPACE` from the downward API: the sidecar's identity (unique
/// among the pods of an election) and the namespace of its Leases.
pub fn downward_env() -> Vec<EnvVar> {
    vec![
        super::field_env("POD_NAME", "metadata.name"),
        super::field_env("POD_NAMESPACE", "metadata.namespace"),
    ]
}

/// The readiness probe of an active-passive pod: ready only while this pod's sidecar
/// leads. Asked every second, and one failure is enough, so that a deposed leader leaves
/// the Service's endpoints within about a second and a new one joins as fast.
pub fn leader_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz?leader=true".into()),
            port: IntOrString::Int(ports::ELECT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(1),
        ..Probe::default()
    }
}

/// The ServiceAccount token of the pod, mounted in the sidecar alone where in-cluster
/// clients look for it: what the kubelet's own `kube-api-access` volume holds (a bound,
/// renewed token, the cluster's CA, the namespace). Mounted explicitly so that the
/// sidecar can reach the API server even when the pod (or its ServiceAccount) turns
/// `automountServiceAccountToken` off for the app. The volume is named `name`.
pub fn token_volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..Volume::default()
    }
}

/// The election a block takes part in: its own name, or the owner's.
pub fn election_name<'a>(elect: &'a ElectSidecar, owner: &'a str) -> &'a str {
    elect.election.as_deref().unwrap_or(owner)
}

/// The suffix of the RoleBinding that grants the operator itself the Lease rights of an
/// object's namespace ([`ElectGrant`]).
pub const GRANT_SUFFIX: &str = "-elect-grant";

/// The API server lets the operator write an election's Role only with rights it holds
/// itself in that namespace (RBAC's escalation prevention). Rather than hold every Lease
/// of the cluster, `kube-node-lease` and `kube-system` included, the operator binds a
/// ClusterRole of Lease rights to itself, in each namespace that has an election on
/// Leases, and only while it has one (the binding is the object's child): what it needs
/// for that is `bind` on that one ClusterRole.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectGrant {
    /// The ClusterRole holding exactly the Lease verbs the elections' Roles grant.
    pub cluster_role: String,
    /// Who the operator is, as the API server names it (its SelfSubjectReview).
    pub subject: Subject,
}

impl ElectGrant {
    /// The grant to `username`, as the API server's SelfSubjectReview gives it:
    /// `system:serviceaccount:<namespace>:<name>` is a ServiceAccount, anything else a
    /// User.
    pub fn new(cluster_role: String, username: &str) -> Self {
        let subject = match username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((namespace, name)) => Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(namespace.into()),
                ..Subject::default()
            },
            None => Subject {
                kind: "User".into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: username.into(),
                ..Subject::default()
            },
        };
        Self {
            cluster_role,
            subject,
        }
    }
}

/// The ServiceAccount, Role and RoleBinding that let the pods of one object keep their
/// election's Leases, in their namespace only.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectAccess {
    /// The binding of [`ElectGrant::cluster_role`] to the operator, `<name>-elect-grant`,
    /// when the operator is to grant itself the rights the Role needs.
    pub operator_grant: Option<RoleBinding>,
    /// The ServiceAccount `<name>-elect`, made when the pod template names none (the
    /// namespace's `default` account is shared by every pod that names none, and must not
    /// gain the right to write Leases).
    pub service_account: Option<ServiceAccount>,
    /// The Leases of the election: `get` and `update` of the leader's Lease by name and
    /// `create` (which RBAC cannot limit to a name); with items, every Lease of the
    /// namespace with `get`, `create`, `update`, `list` and `delete`, because the members'
    /// Leases are named after pods.
    pub role: Role,
    /// Grants the Role to the pods' ServiceAccount.
    pub role_binding: RoleBinding,
}

impl ElectAccess {
    /// What the pods of `template` need for the `elect` block of `sidecars`, on the Lease
    /// backend (nothing on etcd, and nothing without the block). `meta` is the children's
    /// metadata (namespace, labels, owner reference); their name is `owner` +
    /// [`ACCESS_SUFFIX`], and the election defaults to `owner`. With `grant`, the operator
    /// binds itself the rights the Role needs first.
    pub fn for_pods(
        sidecars: Option<&Sidecars>,
        template: &PodTemplateSpec,
        owner: &str,
        meta: ObjectMeta,
        grant: Option<&ElectGrant>,
    ) -> Option<Self> {
        let elect = sidecars?.elect.as_ref()?;
        if elect.backend != ElectBackend::Lease {
            return None;
        }
        let name = format!("{owner}{ACCESS_SUFFIX}");
        let meta = ObjectMeta {
            name: Some(name.clone()),
            ..meta
        };
        let named = template.spec.as_ref().and_then(|pod| {
            pod.service_account_name
                .clone()
                .or_else(|| pod.service_account.clone())
                .filter(|n| !n.is_empty())
        });
        let service_account = named.is_none().then(|| ServiceAccount {
            metadata: meta.clone(),
            ..ServiceAccount::default()
        });
        let account = named.unwrap_or_else(|| name.clone());
        let lease = |verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            resource_names: names,
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        };
        let rules = if elect.items.is_some() {
            vec![lease(&["get", "create", "update", "list", "delete"], None)]
        } else {
            let election = election_name(elect, owner).to_owned();
            vec![
                lease(&["get", "update"], Some(vec![election])),
                lease(&["create"], None),
            ]
        };
        let role = Role {
            metadata: meta.clone(),
            rules: Some(rules),
        };
        let role_binding = bind_role(meta.clone(), name, account);
        let operator_grant = grant.map(|grant| RoleBinding {
            metadata: ObjectMeta {
                name: Some(format!("{owner}{GRANT_SUFFIX}")),
                ..meta.clone()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: grant.cluster_role.clone(),
            },
            subjects: Some(vec![grant.subject.clone()]),
        });
        Some(Self {
            operator_grant,
            service_account,
            role,
            role_binding,
        })
    }

    /// Makes the pods of `template` run as the ServiceAccount made for them, if one was.
    ///
    /// The deprecated `serviceAccount` is set too. The API server copies
    /// `serviceAccountName` into it, and copies it back into an empty `serviceAccountName`:
    /// had the operator applied only the one field, dropping `elect` would remove it and
    /// the copy would bring it straight back, naming an account that is being deleted.
    /// Applying both, the operator owns both, and a later apply without them removes both.
    pub fn assign(&self, template: &mut PodTemplateSpec) {
        let Some(account) = self.service_account.as_ref() else {
            return;
        };
        if let Some(pod) = template.spec.as_mut() {
            pod.service_account_name = account.metadata.name.clone();
            pod.service_account = account.metadata.name.clone();
        }
    }

    /// The children, in apply order: the operator's own grant (the Role is checked
    /// against it), the ServiceAccount, then the Role, then its binding (the API server
    /// checks a binding against the Role it names, which must exist).
    pub fn into_children(self) -> Vec<Child> {
        let mut out: Vec<Child> = self
            .operator_grant
            .into_iter()
            .map(Child::RoleBinding)
            .collect();
        out.extend(self.service_account.map(Child::ServiceAccount));
        out.push(Child::Role(self.role));
        out.push(Child::RoleBinding(self.role_binding));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn block(json: serde_json::Value) -> ElectSidecar {
        serde_json::from_value(json).unwrap()
    }

    fn refused(json: serde_json::Value) -> String {
        args(&block(json), Some("web")).unwrap_err().to_string()
    }

    #[test]
    fn the_election_defaults_to_the_owners_name_and_the_timings_to_client_gos() {
        let args = args(&block(serde_json::json!({})), Some("web")).unwrap();
        assert_eq!(args.election, "web");
        assert_eq!(args.backend, Backend::Lease);
        assert_eq!(
            (args.lease_duration, args.renew_deadline, args.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert_eq!(
            (args.identity, args.namespace),
            (None, None),
            "from the env"
        );
    }

    #[test]
    fn the_sidecars_own_rules_are_refusals_naming_the_field() {
        assert_eq!(
            refused(serde_json::json!({"leaseDuration": "4s", "renewDeadline": "4s"})),
            "spec.sidecars.elect.renewDeadline: renewDeadline 4s must be shorter than leaseDuration 4s: the leader steps down at its renew deadline, before its lease can expire for the others"
        );
        assert!(
            refused(serde_json::json!({"leaseDuration": "2500ms"}))
                .starts_with("spec.sidecars.elect.leaseDuration: leaseDuration \"2s 500ms\": must be a whole number of seconds"),
        );
        assert!(
            refused(serde_json::json!({"retryPeriod": "10s"}))
                .starts_with("spec.sidecars.elect.retryPeriod: retryPeriod 10s must be positive and shorter than renewDeadline 10s"),
        );
        assert_eq!(
            refused(serde_json::json!({"backend": "Etcd"})),
            "spec.sidecars.elect.etcdEndpoints: backend Etcd needs at least one etcdEndpoints http://HOST:PORT"
        );
        assert!(
            refused(serde_json::json!({"backend": "Etcd", "etcdEndpoints": ["http://e:0"]}))
                .starts_with("spec.sidecars.elect.etcdEndpoints: etcdEndpoints \"http://e:0\""),
        );
        assert!(
            refused(serde_json::json!({"retryPeriod": "soon"}))
                .starts_with("spec.sidecars.elect.retryPeriod: \"soon\""),
        );
        let long = "n".repeat(41);
        let err = args(&block(serde_json::json!({})), Some(&long))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "spec.sidecars.elect.election: not set, so it would be the object's name"
            ) && err.ends_with("set election"),
            "{err}"
        );
        let err = args(&block(serde_json::json!({})), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spec.sidecars.elect.election: required here"),
            "{err}"
        );
    }

    fn template(yaml: &str) -> PodTemplateSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn sidecars(json: serde_json::Value) -> Sidecars {
        serde_json::from_value(serde_json::json!({ "elect": json })).unwrap()
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            namespace: Some("shop".into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn pods_that_name_no_service_account_get_one_of_their_own_bound_to_the_leader_lease_alone() {
        let mut t = template("spec: {containers: [{name: app, image: a}]}");
        let access = ElectAccess::for_pods(
            Some(&sidecars(serde_json::json!({}))),
            &t,
            "web",
            meta(),
            None,
        )
        .unwrap();
        access.assign(&mut t);
        let pod = t.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("web-elect"));
        assert_eq!(
            pod.service_account.as_deref(),
            Some("web-elect"),
            "owned too, or the API server copies it back once elect is dropped"
        );
        let subject = &access.role_binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "web-elect", Some("shop"))
        );
        assert_eq!(access.role_binding.role_ref.name, "web-elect");
        let rules = access.role.rules.as_ref().unwrap();
        assert_eq!(rules[0].resource_names, Some(vec!["web".to_owned()]));
        assert_eq!(rules[0].verbs, ["get", "update"]);
        assert_eq!(
            (rules[1].verbs.clone(), rules[1].resource_names.clone()),
            (vec!["create".to_owned()], None)
        );
        let kinds: Vec<&str> = access
            .into_children()
            .iter()
            .map(|c| match c {
                Child::ServiceAccount(_) => "ServiceAccount",
                Child::Role(_) => "Role",
                Child::RoleBinding(_) => "RoleBinding",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding"]);
    }

    #[test]
    fn a_named_service_account_is_bound_and_kept_and_items_widen_the_role() {
        let mut t =
            template("spec: {serviceAccountName: scheduler, containers: [{name: app, image: a}]}");
        let access = ElectAccess::for_pods(
            Some(&sidecars(
                serde_json::json!({"items": 8, "election": "jobs"}),
            )),
            &t,
            "web",
            meta(),
            None,
        )
        .unwrap();
        access.assign(&mut t);
        assert!(access.service_account.is_none());
        assert_eq!(
            t.spec.unwrap().service_account_name.as_deref(),
            Some("scheduler")
        );
        assert_eq!(
            access.role_binding.subjects.as_ref().unwrap()[0].name,
            "scheduler"
        );
        let rules = access.role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].verbs,
            ["get", "create", "update", "list", "delete"]
        );
        assert_eq!(rules[0].resource_names, None);
    }

    #[test]
    fn with_a_grant_the_operator_binds_itself_the_lease_rights_before_it_writes_the_role() {
        let t = template("spec: {containers: [{name: app, image: a}]}");
        let grant = ElectGrant::new(
            "rigging-elect".into(),
            "system:serviceaccount:rigging-system:rigging",
        );
        let access = ElectAccess::for_pods(
            Some(&sidecars(serde_json::json!({}))),
            &t,
            "web",
            meta(),
            Some(&grant),
        )
        .unwrap();
        let binding = access.operator_grant.clone().unwrap();
        assert_eq!(binding.metadata.name.as_deref(), Some("web-elect-grant"));
        assert_eq!(binding.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("ClusterRole", "rigging-elect")
        );
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "rigging", Some("rigging-system"))
        );
        let names: Vec<String> = access
            .into_children()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c.kind(),
                    c.meta().name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "RoleBinding/web-elect-grant",
                "ServiceAccount/web-elect",
                "Role/web-elect",
                "RoleBinding/web-elect"
            ]
        );
        let user = ElectGrant::new("r".into(), "kubernetes-admin").subject;
        assert_eq!(
            (
                user.kind.as_str(),
                user.namespace,
                user.api_group.as_deref()
            ),
            ("User", None, Some("rbac.authorization.k8s.io"))
        );
    }

    #[test]
    fn etcd_needs_no_kubernetes_access() {
        let t = template("spec: {containers: [{name: app, image: a}]}");
        let etcd =
            sidecars(serde_json::json!({"backend": "Etcd", "etcdEndpoints": ["http://etcd:2379"]}));
        assert_eq!(
            ElectAccess::for_pods(Some(&etcd), &t, "web", meta(), None),
            None
        );
        assert_eq!(ElectAccess::for_pods(None, &t, "web", meta(), None), None);
    }
}
