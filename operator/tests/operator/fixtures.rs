//! Paths and loaders shared by the test modules.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `*.yaml` under `examples/`, sorted, as paths relative to the root.
pub fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("examples/ is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("examples"), &mut out);
    out.sort();
    out.into_iter()
        .map(|p| p.strip_prefix(root()).expect("under root").to_path_buf())
        .collect()
}

/// The documents of a YAML file, as JSON values (empty documents skipped).
pub fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The committed CRD files under `crds/`, by file name.
pub fn committed_crds() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(root().join("crds"))
        .expect("crds/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                std::fs::read_to_string(&p).expect("readable CRD file"),
            )
        })
        .collect();
    out.sort();
    out
}

/// The `openAPIV3Schema` of the committed CRD of `kind`, completed for whole objects.
pub fn committed_schema(kind: &str) -> Value {
    for (_, text) in committed_crds() {
        let crd: Value = serde_norway::from_str(&text).expect("CRD is YAML");
        if crd["spec"]["names"]["kind"] == kind {
            return rigging_operator::schema::for_whole_object(
                &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            );
        }
    }
    panic!("no committed CRD for kind {kind}");
}
