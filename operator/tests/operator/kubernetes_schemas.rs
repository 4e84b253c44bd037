//! What `render` prints for every example is valid Kubernetes, from the oldest version
//! Rigging supports (1.29: native sidecars) to the newest the validator knows, checked with
//! `kubernetes-validate` (strict: unknown fields fail), which `scripts/test.sh` installs in
//! `.venv`.

use std::path::PathBuf;
use std::process::Command;

use rigging_operator::controller::RenderConfig;
use rigging_operator::render;

use crate::fixtures::{example_files, root};

fn kubernetes_validate() -> PathBuf {
    let in_venv = root().join(".venv/bin/kubernetes-validate");
    if in_venv.exists() {
        return in_venv;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("kubernetes-validate"))
        .find(|p| p.exists());
    on_path
        .expect("kubernetes-validate is missing: run scripts/test.sh, which installs it in .venv")
}

/// The oldest Kubernetes Rigging supports and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// Runs kubernetes-validate on `yaml` for every supported version; returns whether all
/// passed and what it said.
fn validate(yaml: &str) -> (bool, String) {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, yaml.as_bytes()).unwrap();
    let mut ok = true;
    let mut said = String::new();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(kubernetes_validate())
            .args(["--kubernetes-version", version, "--strict", "--quiet"])
            .arg(file.path())
            .output()
            .expect("kubernetes-validate runs");
        ok &= out.status.success();
        said.push_str(&String::from_utf8_lossy(&out.stdout));
        said.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (ok, said)
}

#[test]
fn rendered_examples_are_valid_kubernetes_objects() {
    for file in example_files() {
        let input = std::fs::read_to_string(root().join(&file)).unwrap();
        let yaml =
            render::render_yaml(&file.to_string_lossy(), &input, &RenderConfig::default()).unwrap();
        let (ok, said) = validate(&yaml);
        assert!(ok, "{}: {said}", file.display());
    }
}

#[test]
fn the_validator_refuses_an_object_with_an_unknown_field() {
    let input =
        std::fs::read_to_string(root().join("examples/replicated-service/minimal.yaml")).unwrap();
    let yaml = render::render_yaml("minimal.yaml", &input, &RenderConfig::default()).unwrap();
    let broken = yaml.replacen("  selector:\n", "  selectr: {}\n  selector:\n", 1);
    assert_ne!(broken, yaml);
    let (ok, said) = validate(&broken);
    assert!(!ok, "kubernetes-validate accepted an unknown field: {said}");
}
