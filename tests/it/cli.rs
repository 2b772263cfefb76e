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
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["demo", "--bind", "127.0.0.1:0"])
            .env("CERTGATE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
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
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Where io_uring is unavailable certgate runs on monoio's epoll driver, with one warning line.
/// `CERTGATE_EPOLL=1` forces that path, so it is exercised on machines that have io_uring.
#[test]
fn epoll_fallback_serves_the_same_traffic() {
    use std::io::{BufReader, Read};
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let stderr_path = temp_dir("epoll-log").join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut bin = Binary::spawn(&Setup::new("accept"), echo.addr, |cmd| {
        cmd.env("CERTGATE_EPOLL", "1").stderr(stderr);
    });
    let addr = bin.addr;
    let mut tls = connect(addr, client_config(ClientCert::Valid, false));
    for i in 0..3 {
        let resp = exchange(&mut tls, &get(&format!("/epoll/{i}"))).unwrap();
        let xfcc = header_values(&resp.upstream_head(), "x-forwarded-client-cert");
        assert_eq!(xfcc, vec![expected_xfcc(&ClientCert::Valid.chain())]);
    }
    use std::io::Write;
    tls.write_all(&get("/bytes/1000000")).unwrap();
    let resp = read_response(&mut BufReader::new(&mut tls), false).unwrap();
    assert_eq!(resp.body, certgate::demo::echo::pattern(1_000_000));

    let status = bin.terminate();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::fs::File::open(&stderr_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("epoll")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors, certgate neither spins on accept nor crashes, and accepts again
/// once descriptors are free.
#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    use std::os::unix::process::CommandExt;
    let echo = certgate::demo::echo::EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut bin = Binary::spawn(&Setup::new("accept"), echo.addr, |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it only lowers the child's own limit.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 48,
                    rlim_max: 48,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let addr = bin.addr;
    // Far more idle connections than descriptors: the rest wait in the backlog.
    let hogs: Vec<std::net::TcpStream> = (0..120)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = cpu_ticks(bin.pid());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let spent = cpu_ticks(bin.pid()) - before;
    // A spinning accept loop would burn ~100 ticks per second.
    assert!(
        spent < 20,
        "certgate burned {spent} ticks while out of descriptors"
    );
    assert!(bin.child.0.try_wait().unwrap().is_none(), "certgate exited");
    drop(hogs);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let resp = loop {
        match request(addr, ClientCert::Valid, &get("/after-emfile")) {
            Ok(resp) => break resp,
            Err(e) => {
                assert!(std::time::Instant::now() < until, "never served again: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    assert_eq!(resp.status, 200);
    assert!(bin.terminate().success());
}
