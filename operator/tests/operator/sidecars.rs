//! The contract between operator and sidecars, end to end: every sidecar container the
//! operator renders is parsed by `rigging-sidecar`'s own command-line parser, into the
//! contract type it was rendered from.

use clap::Parser;
use rigging_crds::sidecar::SidecarArgs;
use rigging_crds::sidecar::elect::ElectArgs;
use rigging_crds::sidecar::http::HttpConfig;
use rigging_operator::controller::RenderConfig;
use rigging_operator::render;
use rigging_sidecar::cli::{Cli, Command};
use serde_json::Value;

use crate::fixtures::{example_files, root};

const IMAGE: &str = "rigging-sidecar:contract-test";

/// Every container of `objects` running the sidecar image: (name, args, the pod's list it
/// is in: `initContainers` for a native sidecar, `containers` for a pod of its own).
fn sidecar_containers(objects: &[Value]) -> Vec<(String, Vec<String>, &'static str)> {
    let mut out = Vec::new();
    for object in objects {
        let Some(pod) = object.pointer("/spec/template/spec") else {
            continue;
        };
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                if c["image"] == IMAGE {
                    let args = c["args"].as_array().unwrap().iter();
                    let args = args.map(|a| a.as_str().unwrap().to_owned()).collect();
                    out.push((c["name"].as_str().unwrap().to_owned(), args, list));
                }
            }
        }
    }
    out
}

/// The args the sidecar parsed, rendered again through the contract.
fn reparsed(args: &[String]) -> (&'static str, Vec<String>) {
    let argv = std::iter::once("rigging-sidecar").chain(args.iter().map(String::as_str));
    let cli = Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("rigging-sidecar refuses {args:?}: {e}"));
    match cli.command {
        Command::Tls(a) => ("rigging-tls", a.flags.to_args()),
        Command::Logs(a) => ("rigging-logs", a.to_args()),
        Command::Metrics(a) => ("rigging-metrics", a.to_args()),
        Command::Health(a) => ("rigging-health", a.to_args()),
        // The ambassador in client pods and the routers of a ShardedService alike.
        Command::Shard(a) => ("rigging-shard", a.to_args()),
        // The ambassador in app pods and a ReplicatedService's frontend alike.
        Command::Http(a) => ("rigging-http", a.flags.to_args()),
        // Identity and namespace are never rendered: the sidecar reads them from
        // POD_NAME and POD_NAMESPACE, which the test process may have too. Cleared, what
        // is left must be exactly what was rendered.
        Command::Elect(a) => (
            "rigging-elect",
            ElectArgs {
                identity: None,
                namespace: None,
                ..a
            }
            .to_args(),
        ),
        Command::Queue(a) => ("rigging-queue", a.to_args()),
        // A ScatterGather's roots.
        Command::Gather(a) => ("rigging-gather", a.to_args()),
        // A MapReduce's workers, and its reduce Jobs.
        Command::Output(a) => ("rigging-output", a.to_args()),
        Command::Reduce(a) => ("rigging-reduce", a.to_args()),
    }
}

#[test]
fn every_rendered_sidecar_parses_with_the_sidecars_own_parser_into_what_was_rendered() {
    let config = RenderConfig {
        sidecar_image: IMAGE.into(),
        ..RenderConfig::default()
    };
    let mut seen = Vec::new();
    for file in example_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let objects = render::render_values(&file.display().to_string(), &text, &config)
            .unwrap_or_else(|e| panic!("{e}"));
        for (name, args, list) in sidecar_containers(&objects) {
            let (container, again) = reparsed(&args);
            assert_eq!(
                name,
                container,
                "{}: the container runs its own sidecar",
                file.display()
            );
            assert_eq!(again, args, "{}: {name} round-trips", file.display());
            seen.push((name, list));
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            ("rigging-elect".to_owned(), "initContainers"),
            ("rigging-gather".to_owned(), "containers"),
            ("rigging-health".to_owned(), "initContainers"),
            // A ReplicatedService's frontend, and the ambassador in an app's pods.
            ("rigging-http".to_owned(), "containers"),
            ("rigging-http".to_owned(), "initContainers"),
            ("rigging-logs".to_owned(), "initContainers"),
            ("rigging-metrics".to_owned(), "initContainers"),
            // A Pipeline's built-in stages, and the queue beside a handler.
            ("rigging-queue".to_owned(), "containers"),
            ("rigging-queue".to_owned(), "initContainers"),
            // A ShardedService's routers, and the ambassador in its clients' pods.
            ("rigging-shard".to_owned(), "containers"),
            ("rigging-shard".to_owned(), "initContainers"),
            ("rigging-tls".to_owned(), "initContainers"),
        ],
        "the examples place every sidecar the operator renders"
    );
}

/// A MapReduce's sidecars appear only once it runs (the output sidecar in a run's worker
/// pods) and once a run's barrier passes (the reducer): rendered here for the vote tally's
/// run 7, they parse with the sidecar's own parser into what was rendered.
#[test]
fn a_map_reduce_runs_output_and_reduce_sidecars_that_parse_into_what_was_rendered() {
    use rigging_operator::map_reduce::desired::{reduce_job, run_of, run_queue};
    let config = RenderConfig {
        sidecar_image: IMAGE.into(),
        ..RenderConfig::default()
    };
    let text = std::fs::read_to_string(root().join("examples/vote-tally/tally.yaml")).unwrap();
    let mut mr: rigging_crds::MapReduce = serde_norway::from_str(&text).unwrap();
    mr.metadata.namespace = Some("votes".into());
    let queue = run_queue(&mr, &config, 7);
    let output = &queue
        .spec
        .worker
        .template
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    let run = run_of(&mr, 7, &queue, None);
    let job = reduce_job(&mr, &config, &run);
    let reduce = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    for (container, name) in [(output, "rigging-output"), (reduce, "rigging-reduce")] {
        let args = container.args.clone().unwrap();
        assert_eq!(container.name, name);
        assert_eq!(reparsed(&args), (name, args.clone()), "{name} round-trips");
        assert!(
            args.contains(&"7".to_owned()),
            "{name} is told its run: {args:?}"
        );
    }
}

/// The first document's objects of `example`, rendered for a cluster without native
/// sidecars (before Kubernetes 1.29).
fn render_plain(example: &str) -> Result<Vec<serde_json::Value>, String> {
    let path = crate::fixtures::root().join(example);
    let input = std::fs::read_to_string(&path).unwrap();
    let config = RenderConfig {
        native_sidecars: false,
        ..RenderConfig::default()
    };
    rigging_operator::render::render_values(example, &input, &config).map_err(|e| e.to_string())
}

#[test]
fn without_native_sidecars_they_are_plain_containers_beside_the_app() {
    let objects = render_plain("examples/replicated-service/adapters.yaml").unwrap();
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(
        pod.get("initContainers").is_none(),
        "no init containers: {pod}"
    );
    let containers = pod["containers"].as_array().unwrap();
    let name = |c: &serde_json::Value| c["name"].as_str().unwrap().to_owned();
    assert!(
        !name(&containers[0]).starts_with("rigging-"),
        "the app stays first: {pod}"
    );
    let sidecars: Vec<_> = containers
        .iter()
        .filter(|c| name(c).starts_with("rigging-"))
        .collect();
    assert_eq!(sidecars.len(), 3, "logs, metrics and health: {pod}");
    for sidecar in sidecars {
        assert!(
            sidecar.get("restartPolicy").is_none(),
            "{}: restartPolicy is for init containers only",
            name(sidecar)
        );
    }
}

#[test]
fn without_native_sidecars_a_work_queue_refuses_them() {
    let refused = render_plain("examples/work-queue/thumbnails.yaml").unwrap_err();
    assert!(
        refused.contains("spec.sidecars: this cluster has no native sidecars"),
        "{refused}"
    );
}

/// The ConfigMaps among `objects`, by name, with their data.
fn config_maps(objects: &[Value]) -> Vec<(String, &serde_json::Map<String, Value>)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            (name, o["data"].as_object().unwrap())
        })
        .collect()
}

#[test]
fn every_rendered_http_ambassador_reads_a_file_in_its_config_map_and_generated_files_validate() {
    let config = RenderConfig {
        sidecar_image: IMAGE.into(),
        ..RenderConfig::default()
    };
    let mut generated = 0;
    for file in example_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let objects = render::render_values(&file.display().to_string(), &text, &config)
            .unwrap_or_else(|e| panic!("{e}"));
        for object in &objects {
            let Some(pod) = object.pointer("/spec/template/spec") else {
                continue;
            };
            let containers = ["initContainers", "containers"]
                .iter()
                .flat_map(|list| pod[list].as_array().into_iter().flatten());
            for c in containers.filter(|c| c["name"] == "rigging-http") {
                let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
                let argv =
                    std::iter::once("rigging-sidecar").chain(args.iter().map(String::as_str));
                let Command::Http(http) = Cli::try_parse_from(argv).unwrap().command else {
                    panic!(
                        "{}: rigging-http runs another sidecar: {args:?}",
                        file.display()
                    );
                };
                // The file the ambassador reads is a key of the ConfigMap mounted, as a
                // whole directory, where the flag points.
                let config_file = &http.flags.config;
                let dir = config_file.parent().unwrap().to_str().unwrap();
                let key = config_file.file_name().unwrap().to_str().unwrap();
                let mount = c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["mountPath"] == dir)
                    .unwrap_or_else(|| panic!("{}: nothing is mounted at {dir}", file.display()));
                assert!(mount.get("subPath").is_none(), "subPath never sees updates");
                let volume = pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap();
                let source = &volume["configMap"];
                assert!(
                    source["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|i| i["key"] == key && i["path"] == key),
                    "{}: {volume}",
                    file.display()
                );
                // Where the operator writes the ConfigMap itself (a frontend), its file is
                // one the sidecar takes.
                let name = source["name"].as_str().unwrap();
                if let Some((_, data)) = config_maps(&objects).into_iter().find(|(n, _)| n == name)
                {
                    let text = data[key].as_str().unwrap();
                    let parsed: HttpConfig = serde_norway::from_str(text)
                        .unwrap_or_else(|e| panic!("{}: {name}: {e}", file.display()));
                    parsed
                        .validate()
                        .unwrap_or_else(|e| panic!("{}: {name}: {e}", file.display()));
                    generated += 1;
                }
            }
        }
    }
    assert!(generated > 0, "an example renders a frontend's config file");
}

#[test]
fn every_rendered_election_sidecar_knows_who_it_is_and_its_pods_may_keep_their_leases() {
    let config = RenderConfig {
        sidecar_image: IMAGE.into(),
        ..RenderConfig::default()
    };
    let mut seen = 0;
    for file in example_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let objects = render::render_values(&file.display().to_string(), &text, &config)
            .unwrap_or_else(|e| panic!("{e}"));
        for object in &objects {
            let Some(pod) = object.pointer("/spec/template/spec") else {
                continue;
            };
            let containers = ["initContainers", "containers"]
                .iter()
                .flat_map(|list| pod[list].as_array().into_iter().flatten());
            for c in containers.filter(|c| c["name"] == "rigging-elect") {
                seen += 1;
                let at = format!("{}: {}", file.display(), object["metadata"]["name"]);
                // The identity and namespace the sidecar reads when no flag gives them.
                let env: Vec<(&str, &str)> = c["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        let path = &e["valueFrom"]["fieldRef"]["fieldPath"];
                        (e["name"].as_str().unwrap(), path.as_str().unwrap())
                    })
                    .collect();
                assert_eq!(
                    env,
                    [
                        ("POD_NAME", "metadata.name"),
                        ("POD_NAMESPACE", "metadata.namespace")
                    ],
                    "{at}"
                );
                let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
                assert!(
                    !args.iter().any(|a| a == "--identity" || a == "--namespace"),
                    "{at}: {args:?}"
                );
                if !args
                    .windows(2)
                    .any(|w| w[0] == "--backend" && w[1] == "lease")
                {
                    continue;
                }
                // On Leases: a token where in-cluster clients look, and a Role bound to the
                // pods' ServiceAccount granting the election's Lease.
                let mounted = c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount");
                assert!(mounted, "{at}: no token mounted");
                let account = pod["serviceAccountName"]
                    .as_str()
                    .expect("a ServiceAccount");
                let binding = objects
                    .iter()
                    .find(|o| o["kind"] == "RoleBinding")
                    .unwrap_or_else(|| panic!("{at}: no RoleBinding"));
                assert_eq!(binding["subjects"][0]["name"], account, "{at}");
                let role = objects
                    .iter()
                    .find(|o| {
                        o["kind"] == "Role" && o["metadata"]["name"] == binding["roleRef"]["name"]
                    })
                    .unwrap_or_else(|| panic!("{at}: the RoleBinding's Role is not rendered"));
                let election = &args[args.iter().position(|a| a == "--election").unwrap() + 1];
                let grants = |verb: &str| {
                    role["rules"].as_array().unwrap().iter().any(|r| {
                        r["resources"][0] == "leases"
                            && r["verbs"].as_array().unwrap().iter().any(|v| v == verb)
                            && r.get("resourceNames").is_none_or(|names| {
                                names
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .any(|n| n == election.as_str())
                            })
                    })
                };
                for verb in ["get", "create", "update"] {
                    assert!(grants(verb), "{at}: the Role does not grant {verb}");
                }
                let accounts: Vec<&Value> = objects
                    .iter()
                    .filter(|o| o["kind"] == "ServiceAccount")
                    .collect();
                assert!(
                    accounts.iter().all(|a| a["metadata"]["name"] == account),
                    "{at}: a ServiceAccount is made only for pods that name none"
                );
            }
        }
    }
    assert!(seen > 0, "an example renders the election sidecar");
}
