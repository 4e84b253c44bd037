//! `rigging-operator` as a user runs it: outputs, exit codes and error messages.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::fixtures::root;

const BIN: &str = env!("CARGO_BIN_EXE_rigging-operator");

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rigging-operator runs");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const GOOD: &str = r#"
apiVersion: rigging.dev/v1alpha1
kind: ReplicatedService
metadata: {name: ok}
spec:
  port: 8080
  template:
    spec:
      containers:
        - name: app
          image: app:1
          readinessProbe: {tcpSocket: {port: 8080}}
"#;

/// A file with `GOOD` as document 1 and `second` as document 2.
fn two_documents(second: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    write!(file, "{GOOD}---\n{second}").unwrap();
    file
}

fn render_error(second: &str) -> String {
    let file = two_documents(second);
    let path = file.path().to_str().unwrap().to_owned();
    let out = run(&["render", "-f", &path], None);
    assert_eq!(out.status.code(), Some(1), "invalid input exits 1");
    assert!(
        out.stdout.is_empty(),
        "nothing is printed for invalid input"
    );
    stderr(&out).replace(&path, "FILE")
}

#[test]
fn render_names_file_document_and_field_of_a_bad_value() {
    let bad = GOOD.replace(
        "port: 8080\n  template",
        "port: 8080\n  replicas: -1\n  template",
    );
    assert_eq!(
        render_error(&bad),
        "FILE: document 2: spec.replicas: must be >= 0\n"
    );
}

#[test]
fn render_names_an_unknown_field() {
    let bad = GOOD.replace(
        "  port: 8080\n  template",
        "  port: 8080\n  replica: 2\n  template",
    );
    assert_eq!(
        render_error(&bad),
        "FILE: document 2: spec.replica: unknown field\n"
    );
}

#[test]
fn render_refuses_an_app_container_without_readiness_probe_by_name() {
    let bad = GOOD.replace("          readinessProbe: {tcpSocket: {port: 8080}}\n", "");
    let err = render_error(&bad);
    assert!(
        err.starts_with("FILE: document 2: spec.template: container \"app\" (the app container"),
        "{err}"
    );
}

#[test]
fn render_names_an_unknown_kind() {
    let err = render_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(
        err.starts_with("FILE: document 2: unknown kind \"ConfigMap\""),
        "{err}"
    );
}

#[test]
fn render_reports_cross_field_errors_together() {
    let bad = format!(
        "{GOOD}  autoscaling: {{minReplicas: 5, maxReplicas: 2}}\n  disruptionBudget: {{}}\n"
    );
    assert_eq!(
        render_error(&bad),
        "FILE: document 2: spec.autoscaling.minReplicas: minReplicas must be <= maxReplicas\n\
         FILE: document 2: spec.disruptionBudget: set exactly one of maxUnavailable or minAvailable\n"
    );
}

#[test]
fn render_names_the_file_of_a_yaml_syntax_error() {
    let file = two_documents("spec: [unclosed\n");
    let path = file.path().to_str().unwrap().to_owned();
    let out = run(&["render", "-f", &path], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!("{path}: ")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn render_reads_stdin_and_several_files_in_order() {
    let example = "examples/replicated-service/minimal.yaml";
    let from_file = run(&["render", "-f", example], None);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let text = std::fs::read_to_string(root().join(example)).unwrap();
    let from_stdin = run(&["render", "-f", "-"], Some(&text));
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    assert_eq!(from_file.stdout, from_stdin.stdout);

    let both = run(&["render", "-f", example, "-f", "-"], Some(&text));
    let one = String::from_utf8(from_file.stdout).unwrap();
    assert_eq!(
        String::from_utf8(both.stdout).unwrap(),
        format!("{one}---\n{one}")
    );
}

#[test]
fn render_uses_the_sidecar_image_flag() {
    let out = run(
        &[
            "render",
            "-f",
            "examples/replicated-service/full.yaml",
            "--sidecar-image",
            "registry.example/rigging-sidecar:9",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("image: registry.example/rigging-sidecar:9\n")
    );
}

#[test]
fn crds_prints_the_committed_crds() {
    let out = run(&["crds"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let committed: Vec<String> = [
        "mapreduces.rigging.dev.yaml",
        "pipelines.rigging.dev.yaml",
        "replicatedservices.rigging.dev.yaml",
        "scattergathers.rigging.dev.yaml",
        "shardedservices.rigging.dev.yaml",
        "workqueues.rigging.dev.yaml",
    ]
    .iter()
    .map(|file| std::fs::read_to_string(root().join("crds").join(file)).unwrap())
    .collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        committed.join("---\n")
    );
}

#[test]
fn crds_out_dir_writes_one_file_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["crds", "--out-dir", dir.path().to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let written =
        std::fs::read_to_string(dir.path().join("replicatedservices.rigging.dev.yaml")).unwrap();
    assert!(written.contains("kind: CustomResourceDefinition"));
}
