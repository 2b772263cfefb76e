//! The `certgate` binary: `check` on good and bad configs, `--version`, and startup errors.

use std::process::Command;

use crate::support::*;

fn certgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(args)
        .output()
        .unwrap()
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("certgate.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn good_config() -> String {
    config_text(
        &Setup::new("require").with_ca(),
        "127.0.0.1:8080".parse().unwrap(),
    )
}

#[test]
fn check_accepts_a_good_config_and_summarises_each_listener() {
    let dir = temp_dir("check-ok");
    write_pki(&dir);
    let path = write_config(&dir, &good_config());
    let out = certgate(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("client_certificate_mode=require"),
        "{stdout}"
    );
    assert!(stdout.contains("ca.pem"), "{stdout}");
}

fn check_fails_naming(config: &str, remove: Option<&str>, needle: &str) {
    let dir = temp_dir("check-bad");
    write_pki(&dir);
    if let Some(file) = remove {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    let path = write_config(&dir, config);
    let out = certgate(&["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_names_a_missing_certificate_file() {
    check_fails_naming(&good_config(), Some("server.pem"), "server.pem");
}

#[test]
fn check_names_a_missing_client_ca_file() {
    check_fails_naming(&good_config(), Some("ca.pem"), "ca.pem");
}

#[test]
fn check_names_a_bad_mode_value() {
    let text = good_config().replace("\"require\"", "\"sometimes\"");
    check_fails_naming(&text, None, "sometimes");
}

#[test]
fn check_names_an_unknown_key() {
    let text = good_config().replace("[server]\n", "[server]\nworkerz = 2\n");
    check_fails_naming(&text, None, "workerz");
}

#[test]
fn check_names_a_key_that_does_not_fit_the_certificate() {
    let dir = temp_dir("check-mismatch");
    write_pki(&dir);
    std::fs::write(dir.join("server.key"), &pki().self_signed.key_pem).unwrap();
    let path = write_config(&dir, &good_config());
    let out = certgate(&["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("server.key"), "{stderr}");
}

#[test]
fn missing_config_file_is_named_and_exits_64() {
    let out = certgate(&["--config", "/nonexistent/certgate.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("/nonexistent/certgate.toml"), "{stderr}");
}

#[test]
fn version_and_help() {
    let out = certgate(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = certgate(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("check") && help.contains("demo"), "{help}");
}

#[test]
fn example_config_parses() {
    let dir = temp_dir("example");
    write_pki(&dir);
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/certgate.toml"
    ))
    .unwrap();
    let config = certgate::config::Config::from_toml(&example, &dir).expect("example parses");
    assert!(!config.listeners.is_empty());
}

/// `certgate demo` as a newcomer runs it: the printed curl commands work as pasted.
#[test]
fn demo_prints_curl_commands_that_work() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["demo", "--bind", "127.0.0.1:0"])
        .env("CERTGATE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let commands: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("curl "))
        .collect();
    assert!(commands.len() >= 3, "{lines:#?}");
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} -sS --max-time 20", cmd.trim()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let without = run(commands[0]);
    assert!(
        header_values(&without, "x-forwarded-client-cert").is_empty(),
        "{without}"
    );
    for cmd in &commands[1..3] {
        let with = run(cmd);
        let xfcc = header_values(&with, "x-forwarded-client-cert");
        assert_eq!(xfcc.len(), 1, "{cmd}: {with}");
        assert!(xfcc[0].starts_with("Hash="), "{with}");
    }
    // SIGTERM: graceful stop, exit status 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
