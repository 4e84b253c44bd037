//! The contract between operator and sidecars, end to end: every sidecar container the
//! operator renders is parsed by `rigging-sidecar`'s own command-line parser, into the
//! contract type it was rendered from.

use clap::Parser;
use rigging_crds::sidecar::SidecarArgs;
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
            ("rigging-health".to_owned(), "initContainers"),
            // A ReplicatedService's frontend, and the ambassador in an app's pods.
            ("rigging-http".to_owned(), "containers"),
            ("rigging-http".to_owned(), "initContainers"),
            ("rigging-logs".to_owned(), "initContainers"),
            ("rigging-metrics".to_owned(), "initContainers"),
            // A ShardedService's routers, and the ambassador in its clients' pods.
            ("rigging-shard".to_owned(), "containers"),
            ("rigging-shard".to_owned(), "initContainers"),
            ("rigging-tls".to_owned(), "initContainers"),
        ],
        "the examples place every sidecar the operator renders"
    );
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
