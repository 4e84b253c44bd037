//! The committed CRDs are what the Rust types generate, and `kubectl apply` can take them.

use rigging_operator::crdgen;
use serde_json::Value;

use crate::fixtures::committed_crds;

#[test]
fn committed_crds_are_fresh() {
    let generated: Vec<(String, String)> = crdgen::all()
        .iter()
        .map(|crd| (crdgen::file_name(crd), crdgen::to_yaml(crd).unwrap()))
        .collect();
    let committed = committed_crds();
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&generated),
        "crds/ must hold exactly one file per kind; run `cargo run -p rigging-operator -- crds --out-dir crds`"
    );
    for ((name, committed), (_, generated)) in committed.iter().zip(&generated) {
        assert!(
            committed == generated,
            "crds/{name} is stale; run `cargo run -p rigging-operator -- crds --out-dir crds`"
        );
    }
}

#[test]
fn crds_fit_in_the_last_applied_annotation_of_kubectl_apply() {
    // `kubectl apply` stores the whole object as JSON in an annotation; all annotations of
    // an object must fit in 256 KiB. Keep a wide margin.
    for (name, text) in committed_crds() {
        let crd: Value = serde_norway::from_str(&text).unwrap();
        let json = serde_json::to_string(&crd).unwrap();
        assert!(
            json.len() < 128 * 1024,
            "{name}: {} bytes of JSON",
            json.len()
        );
    }
}

#[test]
fn replicated_service_crd_has_status_printer_columns_and_cel_rules() {
    let crd = crdgen::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "ReplicatedService")
        .unwrap();
    let crd: Value = serde_json::to_value(crd).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "rsvc");
    let version = &crd["spec"]["versions"][0];
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Replicas", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = |v: &Value| -> Vec<String> {
        v["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        rules(spec)
            .iter()
            .any(|r| r.contains("readinessProbe") && r.contains("self.sidecars.health"))
    );
    assert_eq!(
        rules(&spec["properties"]["sidecars"]["properties"]["logs"]).len(),
        2,
        "the log adapter's file and pattern rules"
    );
    assert_eq!(
        rules(&spec["properties"]["autoscaling"]),
        ["self.minReplicas <= self.maxReplicas"]
    );
    assert_eq!(
        rules(&spec["properties"]["disruptionBudget"]),
        ["has(self.maxUnavailable) != has(self.minAvailable)"]
    );
    // Defaults that make the smallest manifest useful.
    assert_eq!(spec["properties"]["replicas"]["default"], 1);
    assert_eq!(
        spec["properties"]["tls"]["properties"]["port"]["default"],
        8443
    );
    let frontend = &spec["properties"]["frontend"]["properties"];
    assert_eq!(frontend["replicas"]["default"], 2);
    assert_eq!(frontend["port"]["default"], 80);
    assert_eq!(
        frontend["cache"]["properties"]["maxSize"]["default"],
        "64Mi"
    );
    assert_eq!(
        spec["properties"]["sidecars"]["properties"]["http"]["properties"]["port"]["default"],
        9080
    );
    // The pod template schema keeps its structure but not its (huge) descriptions.
    let template = &spec["properties"]["template"];
    assert!(template["properties"]["spec"]["properties"]["containers"].is_object());
    assert!(
        !serde_json::to_string(&template["properties"])
            .unwrap()
            .contains("\"description\"")
    );
}
