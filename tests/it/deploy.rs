//! The deployment artefacts check out: `scripts/check-deploy.sh` lints and
//! renders the Helm chart (default and production values), validates the
//! manifests against the Kubernetes schemas, and checks the Dockerfile and
//! docker-compose.yml. It needs no cluster and no Docker engine; it fetches
//! helm and kubernetes-validate once into a cache (see the script).

use std::process::Command;

#[test]
fn chart_image_and_compose_check_out() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new("bash")
        .arg("scripts/check-deploy.sh")
        .current_dir(root)
        .output()
        .expect("bash runs scripts/check-deploy.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "scripts/check-deploy.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
    );
}
