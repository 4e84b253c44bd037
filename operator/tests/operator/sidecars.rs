//! The contract between operator and sidecars, end to end: every sidecar container the
//! operator renders is parsed by `rigging-sidecar`'s own command-line parser, into the
//! contract type it was rendered from.

use clap::Parser;
use rigging_crds::sidecar::SidecarArgs;
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
    }
}

#[test]
fn every_rendered_sidecar_parses_with_the_sidecars_own_parser_into_what_was_rendered() {
    let config = RenderConfig {
        sidecar_image: IMAGE.into(),
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
