//! The container image `kubectl pvbackup schedule` runs: built from the repository's
//! `Dockerfile` by `cargo xtask release --image`, tagged with the name the plugin defaults to
//! (`kubectl_pvbackup::schedule::default_image`), so a release and its schedules agree.

use std::path::Path;

pub const DOCKERFILE: &str = "Dockerfile";

/// The build command: `ENGINE build -f <root>/Dockerfile -t <image> <root>` (docker and podman
/// take the same arguments).
pub fn build_command(engine: &str, root: &Path, image: &str) -> Vec<String> {
    vec![
        engine.to_string(),
        "build".into(),
        "--file".into(),
        root.join(DOCKERFILE).display().to_string(),
        "--tag".into(),
        image.to_string(),
        root.display().to_string(),
    ]
}

/// What a Dockerfile must hold for the schedule's pod spec to fit it: a build stage, the
/// binary where the pod expects it, the non-root user the pod's securityContext names.
pub fn check_dockerfile(text: &str) -> Result<(), String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    if froms.len() < 2 {
        return Err(
            "the Dockerfile must be multi-stage (a build stage and a runtime stage)".into(),
        );
    }
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap_or_default();
    let runtime = &lines[last_from..];
    let uid = kubectl_pvbackup::schedule::IMAGE_UID;
    let wanted = [
        format!("USER {uid}:{uid}"),
        "ENTRYPOINT [\"/usr/local/bin/kubectl-pvbackup\"]".to_string(),
    ];
    for w in &wanted {
        if !runtime.iter().any(|l| l == w) {
            return Err(format!("the runtime stage lacks `{w}`"));
        }
    }
    if !runtime
        .iter()
        .any(|l| l.starts_with("COPY --from=") && l.ends_with(" /usr/local/bin/kubectl-pvbackup"))
    {
        return Err("the runtime stage must COPY the binary from the build stage to /usr/local/bin/kubectl-pvbackup".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_dockerfile_fits_the_schedule_pod() {
        let root = crate::repo_root();
        let text = std::fs::read_to_string(root.join(DOCKERFILE)).unwrap();
        check_dockerfile(&text).unwrap();
        // The build toolchain is the one rust-toolchain.toml pins.
        let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
        let channel = toolchain
            .lines()
            .find_map(|l| l.strip_prefix("channel = "))
            .unwrap()
            .trim_matches('"');
        assert!(
            text.contains(&format!("FROM rust:{channel}-")),
            "the Dockerfile's rust image is not {channel}"
        );
    }

    #[test]
    fn a_dockerfile_without_the_user_or_binary_is_refused() {
        let single = "FROM scratch\nUSER 65532:65532\n";
        assert!(check_dockerfile(single)
            .unwrap_err()
            .contains("multi-stage"));
        let root_user = "FROM rust AS b\nFROM distroless\nCOPY --from=b /x /usr/local/bin/kubectl-pvbackup\nENTRYPOINT [\"/usr/local/bin/kubectl-pvbackup\"]\n";
        assert!(check_dockerfile(root_user).unwrap_err().contains("USER"));
    }

    #[test]
    fn the_build_is_tagged_with_the_plugins_default_image() {
        let root = Path::new("/src");
        let cmd = build_command("docker", root, &kubectl_pvbackup::schedule::default_image());
        assert_eq!(
            cmd,
            [
                "docker",
                "build",
                "--file",
                "/src/Dockerfile",
                "--tag",
                &format!(
                    "ghcr.io/kubectl-pvbackup/kubectl-pvbackup:{}",
                    kubectl_pvbackup::cmd::version::VERSION
                ),
                "/src"
            ]
        );
    }
}
