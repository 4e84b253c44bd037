//! Every example renders to its committed golden output and validates against the
//! committed CRD schema.

use rigging_operator::controller::RenderConfig;
use rigging_operator::render;
use rigging_operator::schema;
use serde_json::{Value, json};

use crate::fixtures::{committed_schema, documents, example_files, root};

/// The insta snapshot name of an example: its path with separators flattened.
fn snapshot_name(path: &std::path::Path) -> String {
    path.with_extension("")
        .to_string_lossy()
        .replace(['/', '\\', '.'], "_")
}

#[test]
fn every_example_renders_to_its_golden_output() {
    let files = example_files();
    assert!(!files.is_empty(), "examples/ holds manifests");
    let snapshots = root().join("operator/tests/operator/snapshots");
    for file in files {
        let name = snapshot_name(&file);
        // insta would write a new snapshot and fail; say plainly which example lacks one.
        let snap = snapshots.join(format!("operator__examples__{name}.snap"));
        assert!(
            snap.exists() || std::env::var_os("INSTA_UPDATE").is_some(),
            "{} has no golden file {}; run `INSTA_UPDATE=always cargo nextest run -p rigging-operator` and review it",
            file.display(),
            snap.display()
        );
        let input = std::fs::read_to_string(root().join(&file)).unwrap();
        let output = render::render_yaml(&file.to_string_lossy(), &input, &RenderConfig::default())
            .unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(name, output);
    }
}

#[test]
fn every_example_validates_against_its_committed_crd_schema() {
    for file in example_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for (i, doc) in documents(&text).into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let errors = schema::validate(&committed_schema(&kind), &doc, "");
            assert!(
                errors.is_empty(),
                "{}: document {}: {errors:?}",
                file.display(),
                i + 1
            );
        }
    }
}

fn full_example() -> Value {
    let text =
        std::fs::read_to_string(root().join("examples/replicated-service/full.yaml")).unwrap();
    documents(&text).remove(0)
}

fn errors_of(doc: &Value) -> Vec<String> {
    schema::validate(&committed_schema("ReplicatedService"), doc, "")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_crd_schema_refuses_unknown_fields_at_every_level() {
    let mut doc = full_example();
    doc["spec"]["replica"] = json!(3);
    doc["spec"]["tls"]["secret"] = json!("typo");
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    assert_eq!(
        errors_of(&doc),
        [
            "spec.replica: unknown field",
            "spec.template.spec.containers[0].imagePullPolicyy: unknown field",
            "spec.tls.secret: unknown field",
        ]
    );
}

#[test]
fn the_crd_schema_refuses_wrong_types_bounds_and_enums() {
    let mut doc = full_example();
    doc["spec"]["replicas"] = json!(-1);
    doc["spec"]["port"] = json!("http");
    doc["spec"]["service"]["type"] = json!("ExternalName");
    doc["spec"]["disruptionBudget"]["minAvailable"] = json!(true);
    assert_eq!(
        errors_of(&doc),
        [
            "spec.disruptionBudget.minAvailable: must be an integer or a string",
            "spec.port: must be an integer, not a string",
            "spec.replicas: must be >= 0",
            "spec.service.type: must be one of \"ClusterIP\", \"NodePort\", \"LoadBalancer\"",
        ]
    );
    let mut doc = full_example();
    doc["spec"].as_object_mut().unwrap().remove("template");
    assert_eq!(errors_of(&doc), ["spec.template: required"]);
}
