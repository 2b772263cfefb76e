//! What `dist/` ships, run through the real binary: the Kubernetes config passes `certgate
//! check` with files at the paths the Deployment mounts, the ticket rotation command lines of
//! the systemd unit and the Kubernetes CronJob rotate a real key file, and the Docker image's
//! command line is one that certgate accepts. (The manifests' schemas, the unit files and the
//! seccomp profile are checked by scripts/k8s-validate.sh, systemd-analyze and
//! scripts/seccomp-check.py in CI.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

fn dist(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(program: &str, args: &[String]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `dist/kubernetes/certgate.toml` with the pod's mount points (/etc/certgate, /run/certgate)
/// moved under `root`, and the upstream (a cluster DNS name, resolved by `check`) replaced by
/// a loopback address. Writes the files the pod's volumes hold there and returns the config.
fn kubernetes_config_in(root: &Path) -> PathBuf {
    let text = dist("kubernetes/certgate.toml");
    for mount in ["/etc/certgate/", "/run/certgate/"] {
        assert!(text.contains(mount), "certgate.toml no longer uses {mount}");
    }
    let etc = format!("{}/etc/", root.display());
    let run = format!("{}/run/", root.display());
    let mut upstreams = 0;
    let rewritten: Vec<String> = text
        .replace("/etc/certgate/", &etc)
        .replace("/run/certgate/", &run)
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("upstream =") {
                upstreams += 1;
                "upstream = \"127.0.0.1:8080\"".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(upstreams, 1, "one listener with one upstream");

    // The volumes of dist/kubernetes/deployment.yaml: ConfigMap certgate-config, Secret
    // certgate-tls (tls.crt, tls.key), ConfigMap certgate-client-ca (ca.pem), and the
    // sidecar's owner-only copy of Secret certgate-tickets.
    let p = pki();
    for dir in ["etc/config", "etc/tls", "etc/client-ca", "run/tickets"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/tls/tls.crt"), &p.server.cert_pem).unwrap();
    std::fs::write(root.join("etc/tls/tls.key"), &p.server.key_pem).unwrap();
    std::fs::write(root.join("etc/client-ca/ca.pem"), &p.root.issued().cert_pem).unwrap();
    let tickets = root.join("run/tickets/tickets.key");
    assert_ok(
        &run_certgate(&["tickets", "new", "--file", tickets.to_str().unwrap()]),
        "tickets new",
    );
    let config = root.join("etc/config/certgate.toml");
    std::fs::write(&config, rewritten.join("\n")).unwrap();
    config
}

fn run_certgate(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    run(env!("CARGO_BIN_EXE_certgate"), &args)
}

#[test]
fn kubernetes_config_passes_check_with_the_files_the_pod_mounts() {
    let root = temp_dir("pkg-k8s");
    let config = kubernetes_config_in(&root);
    let stdout = assert_ok(
        &run_certgate(&["check", "--config", config.to_str().unwrap()]),
        "certgate check of dist/kubernetes/certgate.toml",
    );
    // The ConfigMap's settings are the ones in force, not defaults.
    assert!(stdout.contains("OK, 2 worker(s)"), "{stdout}");
    assert!(
        stdout.contains("client_certificate_mode=require"),
        "{stdout}"
    );
}

/// The one line of `dist/<file>` that starts with `prefix`, without the prefix.
fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix))
        .collect();
    assert_eq!(found.len(), 1, "one line starting {prefix:?}");
    found[0].trim()
}

fn key_count(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn shipped_ticket_rotation_commands_rotate_a_key_file() {
    let dir = temp_dir("pkg-rotate");
    let keys = dir.join("tickets.key");
    let keys_arg = keys.to_str().unwrap();
    assert_ok(
        &run_certgate(&["tickets", "new", "--file", keys_arg]),
        "tickets new",
    );

    // systemd: ExecStart= of certgate-tickets-rotate.service, word for word.
    let unit = dist("systemd/certgate-tickets-rotate.service");
    let exec = line_after(&unit, "ExecStart=");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/certgate"), "{exec}");
    let args: Vec<String> = words
        .map(|w| w.replace("/etc/certgate/tickets.key", keys_arg))
        .collect();
    assert!(args.iter().any(|a| a == keys_arg), "{exec}");
    assert_ok(&run(env!("CARGO_BIN_EXE_certgate"), &args), exec);
    assert_eq!(key_count(&keys), 2);

    // Kubernetes: the CronJob's rotate step (a JSON-style YAML list on one line).
    let job = dist("kubernetes/tickets-rotate.yaml");
    let list = line_after(&job, "args: [\"tickets\"");
    let args: Vec<String> = serde_json::from_str::<Vec<String>>(&format!("[\"tickets\"{list}"))
        .unwrap()
        .into_iter()
        .map(|a| a.replace("/work/tickets.key", keys_arg))
        .collect();
    assert!(args.iter().any(|a| a == keys_arg), "{args:?}");
    assert_ok(
        &run(env!("CARGO_BIN_EXE_certgate"), &args),
        "CronJob rotate",
    );
    // --keep 3: the new key and the two before it.
    assert_eq!(key_count(&keys), 3);
    assert_ok(
        &run(env!("CARGO_BIN_EXE_certgate"), &args),
        "CronJob rotate",
    );
    assert_eq!(key_count(&keys), 3);
}

#[test]
fn docker_entrypoint_and_cmd_are_a_real_command_line() {
    let dockerfile = dist("docker/Dockerfile");
    let json = |prefix| serde_json::from_str::<Vec<String>>(line_after(&dockerfile, prefix));
    assert_eq!(json("ENTRYPOINT ").unwrap(), ["certgate"]);
    let cmd = json("CMD ").unwrap();
    assert_eq!(cmd.len(), 2, "{cmd:?}");
    // The same flags with a real config, and `check` so that it exits.
    let root = temp_dir("pkg-docker");
    let config = kubernetes_config_in(&root);
    let mut args: Vec<String> = cmd
        .iter()
        .map(|a| a.replace("/etc/certgate/certgate.toml", config.to_str().unwrap()))
        .collect();
    assert!(args.contains(&config.display().to_string()), "{cmd:?}");
    args.push("check".into());
    assert_ok(
        &run(env!("CARGO_BIN_EXE_certgate"), &args),
        "Dockerfile CMD",
    );
}
