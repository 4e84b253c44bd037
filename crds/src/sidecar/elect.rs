//! `rigging-sidecar elect`: the leader-election sidecar's command line ([`ElectArgs`]) and
//! the rules its timings must keep ([`ElectArgs::check`]), which the operator applies to a
//! user's `spec.sidecars.elect` before it renders anything and the sidecar applies again at
//! start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SidecarArgs, duration, ports};

/// Where the election is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `coordination.k8s.io/v1` Leases in the pod's namespace (the default in a cluster).
    #[default]
    Lease,
    /// An etcd cluster, through its v3 JSON gateway (`--etcd-endpoint`).
    Etcd,
}

/// The prefix of every etcd key the sidecar writes when `--etcd-prefix` is not given.
pub const DEFAULT_ETCD_PREFIX: &str = "/rigging/elect/";

/// Longest election name: it is a Lease name and a label value, and item and member Leases
/// append to it.
pub const MAX_ELECTION_NAME: usize = 40;

/// The flags of `rigging-sidecar elect`.
///
/// The identity defaults to `POD_NAME` (the operator sets it from the downward API) and the
/// Lease namespace to `POD_NAMESPACE`, then to the service account's namespace file.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct ElectArgs {
    /// Where the election is kept.
    #[arg(long, value_enum, default_value_t = Backend::Lease)]
    pub backend: Backend,
    /// The election's name: every replica that takes part gives the same one. It names
    /// the Lease (`NAME`, `NAME-item-N`, `NAME-member-…`) or the etcd keys
    /// (`PREFIX/NAME/leader`, `…/items/N`, `…/members/ID`). A DNS label of at most 40
    /// characters.
    #[arg(long, value_name = "NAME")]
    pub election: String,
    /// This replica's identity, unique among the replicas (the pod name).
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    pub identity: Option<String>,
    /// Lease backend: the namespace of the Leases.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub namespace: Option<String>,
    /// etcd backend: a member's client URL, `http://HOST:PORT`; repeat for each member.
    /// Requests go to one member and fail over to the next.
    #[arg(long = "etcd-endpoint", value_name = "URL")]
    #[serde(rename = "etcd-endpoint")]
    pub etcd_endpoints: Vec<String>,
    /// etcd backend: the prefix of every key the sidecar writes.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// How long a term lasts without renewal before another replica may take it (the
    /// Lease's leaseDurationSeconds, the etcd lease's TTL). Whole seconds.
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub lease_duration: Duration,
    /// The leader stops claiming leadership when it has not renewed for this long, which
    /// is shorter than the lease duration: it steps down before anyone else can take over.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub renew_deadline: Duration,
    /// Time between renewals (leader) and between attempts to acquire (followers).
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub retry_period: Duration,
    /// Also share out N items (0 … N-1): each replica owns at most its fair share,
    /// ceil(N / live replicas), and hands items over as replicas come and go.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub items: Option<u32>,
    /// A file rewritten (atomically: a new file renamed over it) whenever the leader
    /// changes, holding the JSON that `GET /leader` answers.
    #[arg(long, value_name = "FILE")]
    pub leader_file: Option<PathBuf>,
    /// Address serving the API (`/leader`, `/owned`) and `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::ELECT)))]
    pub admin: SocketAddr,
}

impl SidecarArgs for ElectArgs {
    const SUBCOMMAND: &'static str = "elect";
}

/// Why a set of election flags is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectArgsError {
    /// The election name is not a short DNS label.
    #[error(
        "--election {0:?}: must be 1 to {MAX_ELECTION_NAME} lowercase letters, digits and '-', \
         starting and ending with a letter or digit"
    )]
    Election(String),
    /// A duration that must be whole seconds is not.
    #[error(
        "--lease-duration {0:?}: must be a whole number of seconds, at least 1s (Lease and etcd TTLs are in seconds)"
    )]
    LeaseDuration(String),
    /// The renew deadline does not leave the leader time to step down.
    #[error(
        "--renew-deadline {renew_deadline} must be shorter than --lease-duration {lease_duration}: \
         the leader steps down at its renew deadline, before its lease can expire for the others"
    )]
    RenewDeadline {
        /// As given.
        renew_deadline: String,
        /// As given.
        lease_duration: String,
    },
    /// The retry period leaves no room for a retry before the renew deadline.
    #[error(
        "--retry-period {retry_period} must be positive and shorter than --renew-deadline \
         {renew_deadline}: a leader gets no second try at renewing otherwise"
    )]
    RetryPeriod {
        /// As given.
        retry_period: String,
        /// As given.
        renew_deadline: String,
    },
    /// The etcd backend has nowhere to go.
    #[error("--backend etcd needs at least one --etcd-endpoint http://HOST:PORT")]
    NoEtcdEndpoint,
    /// An etcd endpoint is not an `http://HOST:PORT` URL.
    #[error("--etcd-endpoint {0:?}: expected http://HOST:PORT (TLS to etcd is not supported)")]
    EtcdEndpoint(String),
}

impl ElectArgs {
    /// An election named `election` on `backend`, every other setting at its default.
    pub fn new(backend: Backend, election: String) -> Self {
        Self {
            backend,
            election,
            identity: None,
            namespace: None,
            etcd_endpoints: Vec::new(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            items: None,
            leader_file: None,
            admin: SocketAddr::from(([0, 0, 0, 0], ports::ELECT)),
        }
    }

    /// Refuses what the sidecar cannot run safely: a name that is not a DNS label, a lease
    /// duration that is not whole seconds, a renew deadline not shorter than the lease
    /// duration (the leader would claim leadership after others may have taken over), a
    /// retry period not shorter than the renew deadline, an etcd backend without usable
    /// endpoints.
    pub fn check(&self) -> Result<(), ElectArgsError> {
        if !is_election_name(&self.election) {
            return Err(ElectArgsError::Election(self.election.clone()));
        }
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() == 0 {
            return Err(ElectArgsError::LeaseDuration(show(self.lease_duration)));
        }
        if self.renew_deadline >= self.lease_duration || self.renew_deadline.is_zero() {
            return Err(ElectArgsError::RenewDeadline {
                renew_deadline: show(self.renew_deadline),
                lease_duration: show(self.lease_duration),
            });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(ElectArgsError::RetryPeriod {
                retry_period: show(self.retry_period),
                renew_deadline: show(self.renew_deadline),
            });
        }
        if self.backend == Backend::Etcd {
            if self.etcd_endpoints.is_empty() {
                return Err(ElectArgsError::NoEtcdEndpoint);
            }
            if let Some(bad) = self.etcd_endpoints.iter().find(|e| !is_http_endpoint(e)) {
                return Err(ElectArgsError::EtcdEndpoint(bad.clone()));
            }
        }
        Ok(())
    }
}

/// A DNS-1123 label of at most [`MAX_ELECTION_NAME`] characters.
fn is_election_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_ELECTION_NAME
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// `http://HOST:PORT`, with nothing after the port but an optional `/`.
fn is_http_endpoint(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ElectArgs,
    }

    fn parse(rendered: &[String]) -> ElectArgs {
        assert_eq!(rendered[0], "elect");
        let argv = std::iter::once("elect".to_owned()).chain(rendered[1..].iter().cloned());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{rendered:?} does not parse: {e}"))
            .args
    }

    fn etcd() -> ElectArgs {
        let mut args = ElectArgs::new(Backend::Etcd, "jobs".into());
        args.etcd_endpoints = vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()];
        args.lease_duration = Duration::from_secs(2);
        args.renew_deadline = Duration::from_millis(1500);
        args.retry_period = Duration::from_millis(500);
        args.items = Some(12);
        args.identity = Some("jobs-0".into());
        args.leader_file = Some("/var/run/elect/leader.json".into());
        args
    }

    #[test]
    fn rendered_flags_parse_back_to_what_was_rendered() {
        // Identity and namespace given: left out, they would come from POD_NAME and
        // POD_NAMESPACE, which a test running in a pod has.
        let lease = ElectArgs {
            identity: Some("scheduler-0".into()),
            namespace: Some("team-a".into()),
            ..ElectArgs::new(Backend::Lease, "scheduler".into())
        };
        let mut etcd = etcd();
        etcd.namespace = Some("unused".into());
        for args in [lease, etcd] {
            let rendered = args.to_args();
            assert_eq!(parse(&rendered), args, "{rendered:?}");
        }
    }

    #[test]
    fn the_defaults_are_client_gos() {
        let rendered = ElectArgs::new(Backend::Lease, "x".into()).to_args();
        let value = |flag: &str| {
            let at = rendered.iter().position(|a| a == flag).unwrap();
            rendered[at + 1].clone()
        };
        assert_eq!(value("--lease-duration"), "15s");
        assert_eq!(value("--renew-deadline"), "10s");
        assert_eq!(value("--retry-period"), "2s");
        assert_eq!(value("--backend"), "lease");
        assert_eq!(value("--admin"), format!("0.0.0.0:{}", ports::ELECT));
        assert!(!rendered.iter().any(|a| a == "--items"), "{rendered:?}");
    }

    #[test]
    fn timings_that_would_let_two_leaders_claim_are_refused() {
        assert_eq!(etcd().check(), Ok(()));
        assert_eq!(ElectArgs::new(Backend::Lease, "a-1".into()).check(), Ok(()));
        let mut late = etcd();
        late.renew_deadline = late.lease_duration;
        assert!(matches!(
            late.check(),
            Err(ElectArgsError::RenewDeadline { .. })
        ));
        let mut no_retry = etcd();
        no_retry.retry_period = no_retry.renew_deadline;
        assert!(matches!(
            no_retry.check(),
            Err(ElectArgsError::RetryPeriod { .. })
        ));
        let mut fraction = etcd();
        fraction.lease_duration = Duration::from_millis(2500);
        let err = fraction.check().unwrap_err();
        assert!(err.to_string().contains("2s 500ms"), "{err}");
    }

    #[test]
    fn names_and_endpoints_are_checked() {
        for bad in ["", "Jobs", "-a", "a-", "a_b", &"a".repeat(41)] {
            let args = ElectArgs::new(Backend::Lease, bad.into());
            assert!(
                matches!(args.check(), Err(ElectArgsError::Election(_))),
                "{bad:?}"
            );
        }
        let mut none = etcd();
        none.etcd_endpoints.clear();
        assert_eq!(none.check(), Err(ElectArgsError::NoEtcdEndpoint));
        for bad in [
            "10.0.0.1:2379",
            "https://e:2379",
            "http://e",
            "http://e:x",
            "http://:1",
        ] {
            let mut args = etcd();
            args.etcd_endpoints = vec![bad.into()];
            assert_eq!(
                args.check(),
                Err(ElectArgsError::EtcdEndpoint(bad.into())),
                "{bad:?}"
            );
        }
        let mut slash = etcd();
        slash.etcd_endpoints = vec!["http://etcd-0.etcd:2379/".into()];
        assert_eq!(slash.check(), Ok(()));
    }
}
