//! Unit tests of `config`: the example file, defaults, and every error naming its key.
use super::*;

const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:8443"
cert = "server.pem"
key = "server.key"
upstream = "127.0.0.1:8080"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/certgate"))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const FULL: &str = r#"
[server]
workers = 4
pin_workers = false
cert_cache_size = 16
cert_cache_ttl = "90s"
reload_interval = "30s"
ticket_keys = "keys/tickets.key"
control_socket = "/run/certgate/control.sock"

[timeouts]
handshake = "3s"
request_header = "500ms"
keep_alive = "2m"
upstream_connect = "1s"
upstream_response = "45s"
shutdown_grace = "0s"

[limits]
max_request_header_bytes = 8192
max_headers = 64
max_connections_per_worker = 500
max_client_cert_chain = 3

[admin]
bind = "127.0.0.1:9901"

[log]
access = "json"
format = "json"

[[listener]]
name = "public"
bind = "0.0.0.0:8443"
cert = "certs/server.pem"
key = "/abs/server.key"
client_certificate_mode = "require"
client_ca = "clients-ca.pem"
upstream = "127.0.0.1:8080"
session_resumption = false

[[listener]]
bind = "[::1]:9443"
cert = "b.pem"
key = "b.key"
client_certificate_mode = "accept"
upstream = "localhost:9090"
"#;

#[test]
fn full_file_parses_with_every_value() {
    let c = parse(FULL).unwrap();
    assert_eq!(
        c.server,
        Server {
            workers: 4,
            pin_workers: false,
            cert_cache_size: 16,
            cert_cache_ttl: Duration::from_secs(90),
            reload_interval: Duration::from_secs(30),
            ticket_keys: Some(PathBuf::from("/etc/certgate/keys/tickets.key")),
            control_socket: Some(PathBuf::from("/run/certgate/control.sock")),
        }
    );
    assert_eq!(
        c.admin,
        Some(Admin {
            bind: "127.0.0.1:9901".parse().unwrap()
        })
    );
    assert_eq!(
        c.log,
        Log {
            access: AccessLogFormat::Json,
            format: LogFormat::Json,
        }
    );
    assert_eq!(
        c.timeouts,
        Timeouts {
            handshake: Duration::from_secs(3),
            request_header: Duration::from_millis(500),
            keep_alive: Duration::from_secs(120),
            upstream_connect: Duration::from_secs(1),
            upstream_response: Duration::from_secs(45),
            shutdown_grace: Duration::ZERO,
            tunnel_idle: Duration::from_secs(3600),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_request_header_bytes: 8192,
            max_headers: 64,
            max_connections_per_worker: 500,
            max_client_cert_chain: 3,
            // Defaults, the header list budget following max_request_header_bytes.
            h2_max_concurrent_streams: 100,
            h2_max_header_list_bytes: 8192,
            h2_initial_window: 256 * 1024,
            h2_connection_window: 1024 * 1024,
        }
    );
    assert_eq!(c.worker_count(), 4);
    let a = &c.listeners[0];
    assert_eq!(a.name, "public");
    assert_eq!(a.bind, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(
        a.identities[0].cert,
        Path::new("/etc/certgate/certs/server.pem")
    );
    assert_eq!(
        a.identities[0].key.as_deref(),
        Some(Path::new("/abs/server.key"))
    );
    assert_eq!(a.client_certificate_mode, ClientCertMode::Require);
    assert_eq!(
        a.client_ca.as_deref(),
        Some(Path::new("/etc/certgate/clients-ca.pem"))
    );
    assert_eq!(a.upstream, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(a.upstream_authority, "127.0.0.1:8080");
    assert!(!a.session_resumption);
    let b = &c.listeners[1];
    assert_eq!(b.name, "[::1]:9443");
    assert_eq!(b.client_certificate_mode, ClientCertMode::Accept);
    assert_eq!(b.client_ca, None);
    assert_eq!(b.upstream.port(), 9090);
    assert!(b.upstream.ip().is_loopback());
    assert_eq!(b.upstream_authority, "localhost:9090");
    assert!(b.session_resumption);
}

#[test]
fn omitted_sections_take_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server, Server::default());
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.admin, None, "no [admin] section, no admin listener");
    assert_eq!(c.log, Log::default());
    assert_eq!(c.log.access, AccessLogFormat::Off);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.server.reload_interval, Duration::ZERO);
    let l = &c.listeners[0];
    assert_eq!(l.name, "127.0.0.1:8443");
    assert_eq!(l.client_certificate_mode, ClientCertMode::Ignore);
    assert!(l.session_resumption);
    assert!(c.worker_count() >= 1);
}

#[test]
fn shipped_example_parses() {
    let c = parse(include_str!("../../examples/certgate.toml")).unwrap();
    assert!(!c.listeners.is_empty());
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.server, Server::default());
    assert_eq!(c.log, Log::default());
    assert_eq!(
        c.admin,
        Some(Admin {
            bind: "127.0.0.1:9901".parse().unwrap()
        })
    );
}

#[test]
fn unknown_keys_are_named_on_one_line() {
    for (text, key) in [
        (format!("colour = \"blue\"\n{MINIMAL}"), "colour"),
        (format!("[server]\nworkerz = 2\n{MINIMAL}"), "workerz"),
        (format!("[limits]\nmax_body = 2\n{MINIMAL}"), "max_body"),
        (format!("{MINIMAL}upstream_tls = true\n"), "upstream_tls"),
    ] {
        let e = err(&text);
        assert!(e.contains(key), "{e}");
        assert!(e.contains("line "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn bad_client_certificate_mode_lists_allowed_values() {
    let text = MINIMAL.replace(
        "upstream =",
        "client_certificate_mode = \"optional\"\nupstream =",
    );
    let e = err(&text);
    for word in ["optional", "require", "accept", "ignore"] {
        assert!(e.contains(word), "{e}");
    }
}

#[test]
fn bare_number_duration_names_the_key() {
    let e = err(&format!("[timeouts]\nhandshake = 10\n{MINIMAL}"));
    assert!(e.contains("timeouts.handshake"), "{e}");
    assert!(e.contains("unit"), "{e}");
}

#[test]
fn malformed_duration_names_the_key_and_value() {
    let e = err(&format!(
        "[server]\ncert_cache_ttl = \"5 fortnights\"\n{MINIMAL}"
    ));
    assert!(e.contains("server.cert_cache_ttl"), "{e}");
    assert!(e.contains("5 fortnights"), "{e}");
}

#[test]
fn zero_timeout_is_rejected_but_zero_grace_is_allowed() {
    let e = err(&format!("[timeouts]\nkeep_alive = \"0s\"\n{MINIMAL}"));
    assert!(e.contains("timeouts.keep_alive"), "{e}");
    assert!(parse(&format!("[timeouts]\nshutdown_grace = \"0s\"\n{MINIMAL}")).is_ok());
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let text = MINIMAL.replace("upstream =", "client_ca = \"ca/c.pem\"\nupstream =");
    let c = Config::from_toml(&text, Path::new("/srv/conf")).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.identities[0].cert, Path::new("/srv/conf/server.pem"));
    assert_eq!(
        l.identities[0].key.as_deref(),
        Some(Path::new("/srv/conf/server.key"))
    );
    assert_eq!(
        l.client_ca.as_deref(),
        Some(Path::new("/srv/conf/ca/c.pem"))
    );
}

#[test]
fn duplicate_bind_is_rejected() {
    let e = err(&format!("{MINIMAL}{MINIMAL}"));
    assert!(e.contains("listener[1].bind"), "{e}");
    assert!(e.contains("127.0.0.1:8443"), "{e}");
}

#[test]
fn missing_listener_is_rejected() {
    let e = err("[server]\nworkers = 1\n");
    assert!(e.contains("listener"), "{e}");
}

#[test]
fn bind_must_be_ip_and_port() {
    let e = err(&MINIMAL.replace("127.0.0.1:8443", "localhost:8443"));
    assert!(e.contains("listener[0].bind"), "{e}");
    assert!(e.contains("localhost:8443"), "{e}");
    assert!(err(&MINIMAL.replace("127.0.0.1:8443", "127.0.0.1")).contains("bind"));
}

#[test]
fn unresolvable_upstream_names_listener_and_value() {
    let text = MINIMAL
        .replace("bind =", "name = \"api\"\nbind =")
        .replace("127.0.0.1:8080", "no-port-here");
    let e = err(&text);
    assert!(e.contains("listener[0].upstream"), "{e}");
    assert!(e.contains("api"), "{e}");
    assert!(e.contains("no-port-here"), "{e}");
}

#[test]
fn limits_out_of_range_are_rejected() {
    for (line, key) in [
        ("max_headers = 0", "limits.max_headers"),
        ("max_headers = 129", "limits.max_headers"),
        (
            "max_request_header_bytes = 1023",
            "limits.max_request_header_bytes",
        ),
        ("max_client_cert_chain = 0", "limits.max_client_cert_chain"),
        (
            "max_connections_per_worker = 0",
            "limits.max_connections_per_worker",
        ),
    ] {
        let e = err(&format!("[limits]\n{line}\n{MINIMAL}"));
        assert!(e.contains(key), "{line}: {e}");
    }
    assert!(parse(&format!("[limits]\nmax_headers = 128\n{MINIMAL}")).is_ok());
}

#[test]
fn too_many_workers_is_rejected() {
    let e = err(&format!("[server]\nworkers = 1025\n{MINIMAL}"));
    assert!(e.contains("server.workers"), "{e}");
}

#[test]
fn load_names_missing_file() {
    let path = Path::new("/nonexistent/certgate-test/certgate.toml");
    let e = Config::load(path).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e
        .to_string()
        .contains("/nonexistent/certgate-test/certgate.toml"));
}

#[test]
fn load_resolves_paths_against_file_dir_and_names_file_in_errors() {
    let dir = std::env::temp_dir().join(format!("certgate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("certgate.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.listeners[0].identities[0].cert, dir.join("server.pem"));
    std::fs::write(&path, format!("bogus = 1\n{MINIMAL}")).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("certgate.toml") && e.contains("bogus"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn admin_bind_must_be_ip_and_port_and_not_a_listeners() {
    let e = err(&format!("[admin]\nbind = \"localhost:9901\"\n{MINIMAL}"));
    assert!(
        e.contains("admin.bind") && e.contains("localhost:9901"),
        "{e}"
    );
    let e = err(&format!("[admin]\nbind = \"127.0.0.1:8443\"\n{MINIMAL}"));
    assert!(
        e.contains("admin.bind") && e.contains("127.0.0.1:8443"),
        "{e}"
    );
    let e = err(&format!("[admin]\n{MINIMAL}"));
    assert!(e.contains("bind"), "{e}");
    let e = err(&format!(
        "[admin]\nbind = \"127.0.0.1:9901\"\nport = 1\n{MINIMAL}"
    ));
    assert!(e.contains("port"), "{e}");
    // Port 0 (tests) never collides: the kernel picks a free port.
    let c = parse(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        MINIMAL.replace(":8443", ":0")
    ))
    .unwrap();
    assert_eq!(c.admin.unwrap().bind.port(), 0);
}

#[test]
fn log_formats_list_allowed_values() {
    let e = err(&format!("[log]\naccess = \"xml\"\n{MINIMAL}"));
    for word in ["xml", "off", "text", "json"] {
        assert!(e.contains(word), "{e}");
    }
    let e = err(&format!("[log]\nformat = \"logfmt\"\n{MINIMAL}"));
    assert!(e.contains("logfmt") && e.contains("json"), "{e}");
    let e = err(&format!("[log]\nlevel = \"debug\"\n{MINIMAL}"));
    assert!(e.contains("level"), "{e}");
    let c = parse(&format!("[log]\naccess = \"text\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.log.access, AccessLogFormat::Text);
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn reload_interval_is_a_duration_and_zero_means_off() {
    let e = err(&format!("[server]\nreload_interval = 30\n{MINIMAL}"));
    assert!(
        e.contains("server.reload_interval") && e.contains("unit"),
        "{e}"
    );
    let c = parse(&format!("[server]\nreload_interval = \"0s\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.server.reload_interval, Duration::ZERO);
    let c = parse(&format!("[server]\nreload_interval = \"10s\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.server.reload_interval, Duration::from_secs(10));
}

#[test]
fn listener_names_are_unique() {
    let second = MINIMAL.replace("8443", "9443");
    let e = err(&format!(
        "{}{}",
        MINIMAL.replace("bind =", "name = \"api\"\nbind ="),
        second.replace("bind =", "name = \"api\"\nbind =")
    ));
    assert!(e.contains("listener[1].name") && e.contains("api"), "{e}");
    // An explicit name may not take another listener's default name (its bind address).
    let e = err(&format!(
        "{MINIMAL}{}",
        second.replace("bind =", "name = \"127.0.0.1:8443\"\nbind =")
    ));
    assert!(e.contains("listener[1].name"), "{e}");
    let e = err(&MINIMAL.replace("bind =", "name = \" \"\nbind ="));
    assert!(e.contains("listener[0].name"), "{e}");
}

#[test]
fn files_lists_every_named_file_once_in_config_order() {
    let text = format!(
        "{}{}",
        MINIMAL.replace("upstream =", "client_ca = \"ca.pem\"\nupstream ="),
        MINIMAL
            .replace("8443", "9443")
            .replace("server.key", "other.key")
    );
    let c = parse(&text).unwrap();
    let files: Vec<&Path> = c.files();
    assert_eq!(
        files,
        [
            Path::new("/etc/certgate/server.pem"),
            Path::new("/etc/certgate/server.key"),
            Path::new("/etc/certgate/ca.pem"),
            Path::new("/etc/certgate/other.key"),
        ]
    );
}

#[test]
fn ticket_keys_is_resolved_listed_first_in_files_and_reloadable() {
    let c = parse(&format!(
        "[server]\nticket_keys = \"tickets.key\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.server.ticket_keys.as_deref(),
        Some(Path::new("/etc/certgate/tickets.key"))
    );
    assert_eq!(
        c.files(),
        [
            Path::new("/etc/certgate/tickets.key"),
            Path::new("/etc/certgate/server.pem"),
            Path::new("/etc/certgate/server.key"),
        ]
    );
    let abs = parse(&format!("[server]\nticket_keys = \"/run/k\"\n{MINIMAL}")).unwrap();
    assert_eq!(abs.server.ticket_keys.as_deref(), Some(Path::new("/run/k")));
    // A rotated or newly named key file takes effect on reload.
    assert!(parse(MINIMAL).unwrap().restart_only_changes(&c).is_empty());
    let e = err(&format!("[server]\nticket_keys = \"\"\n{MINIMAL}"));
    assert!(e.contains("server.ticket_keys"), "{e}");
    // A value of the wrong type is a parse error at its line, like any other path key.
    let e = err(&format!("[server]\nticket_keys = 3\n{MINIMAL}"));
    assert!(e.contains("line 2") && e.contains("path"), "{e}");
}

#[test]
fn restart_only_changes_names_the_keys() {
    let old = parse(MINIMAL).unwrap();
    let same = parse(&format!(
        "[timeouts]\nhandshake = \"1s\"\n[log]\naccess = \"json\"\n{MINIMAL}"
    ))
    .unwrap();
    assert!(old.restart_only_changes(&same).is_empty());
    let next = parse(&format!(
        "[server]\nworkers = 3\npin_workers = false\n[admin]\nbind = \"127.0.0.1:9901\"\n\
         [log]\nformat = \"json\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        old.restart_only_changes(&next),
        [
            "server.workers",
            "server.pin_workers",
            "admin.bind",
            "log.format"
        ]
    );
}

#[test]
fn upgrade_defaults_to_websocket_and_rejects_non_tokens() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"127.0.0.1:8080\"\n";
    let c = parse(base).unwrap();
    assert_eq!(c.listeners[0].upgrade, vec!["websocket".to_owned()]);
    assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(3600));
    let c = parse(&format!("{base}upgrade = [\"WebSocket\", \"h2c\"]\n")).unwrap();
    assert_eq!(
        c.listeners[0].upgrade,
        vec!["websocket".to_owned(), "h2c".to_owned()]
    );
    let e = parse(&format!("{base}upgrade = [\"web socket\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("listener[0].upgrade"), "{e}");
    let e = parse(&format!("[timeouts]\ntunnel_idle = \"0s\"\n{base}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("timeouts.tunnel_idle"), "{e}");
}

#[test]
fn passthrough_entries_are_checked_and_named_in_errors() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"127.0.0.1:8080\"\n";
    let ok = format!(
        "{base}[[listener.passthrough]]\nserver_names = [\"legacy.example.com\", \"*.old.example.com\"]\nupstream = \"127.0.0.1:9443\"\n"
    );
    let c = parse(&ok).unwrap();
    let routes = &c.listeners[0].passthrough;
    assert_eq!(
        routes.route("x.old.example.com").copied(),
        Some("127.0.0.1:9443".parse().unwrap())
    );
    let bad = format!(
        "{base}[[listener.passthrough]]\nserver_names = [\"not a name\"]\nupstream = \"127.0.0.1:9443\"\n"
    );
    let e = parse(&bad).unwrap_err().to_string();
    assert!(e.contains("listener[0].passthrough[0].server_names"), "{e}");
    let twice = format!(
        "{base}[[listener.passthrough]]\nserver_names = [\"a.example.com\"]\nupstream = \"127.0.0.1:1\"\n\
         [[listener.passthrough]]\nserver_names = [\"A.example.com\"]\nupstream = \"127.0.0.1:2\"\n"
    );
    let e = parse(&twice).unwrap_err().to_string();
    assert!(
        e.contains("listener[0].passthrough[1].server_names") && e.contains("twice"),
        "{e}"
    );
    let empty =
        format!("{base}[[listener.passthrough]]\nserver_names = []\nupstream = \"127.0.0.1:1\"\n");
    assert!(parse(&empty).is_err());
}

#[test]
fn upstream_schemes_and_default_ports() {
    let with = |upstream: &str, extra: &str| {
        parse(&MINIMAL.replace(
            "upstream = \"127.0.0.1:8080\"",
            &format!("upstream = \"{upstream}\"\n{extra}"),
        ))
    };
    let plain = with("http://127.0.0.1:8080", "").unwrap();
    assert_eq!(plain.listeners[0].upstream_authority, "127.0.0.1:8080");
    assert!(plain.listeners[0].upstream_tls.is_none());
    let c = with("https://localhost", "upstream_ca = \"app-ca.pem\"").unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.upstream_authority, "localhost:443");
    assert_eq!(l.upstream.port(), 443);
    let tls = l.upstream_tls.as_ref().unwrap();
    assert_eq!(
        tls.server_name, "localhost",
        "defaults to the upstream's host"
    );
    assert!(tls.ca.ends_with("app-ca.pem"));
    let c = with("HTTPS://[::1]:8443/", "upstream_ca = \"a.pem\"").unwrap();
    assert_eq!(c.listeners[0].upstream_authority, "[::1]:8443");
    assert_eq!(
        c.listeners[0].upstream_tls.as_ref().unwrap().server_name,
        "::1"
    );
    let e = with("https://user@host:1", "upstream_ca = \"a.pem\"").unwrap_err();
    assert!(e.to_string().contains("listener[0].upstream"), "{e}");
}

#[test]
fn proxy_protocol_defaults_off_and_takes_versions_and_sources() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"127.0.0.1:8080\"\n";
    assert_eq!(
        parse(base).unwrap().listeners[0].proxy_in,
        ProxyIn::default()
    );
    for (value, accept) in [
        ("off", ProxyAccept::Off),
        ("v1", ProxyAccept::V1),
        ("v2", ProxyAccept::V2),
        ("any", ProxyAccept::Any),
    ] {
        let c = parse(&format!("{base}proxy_protocol = \"{value}\"\n")).unwrap();
        assert_eq!(
            c.listeners[0].proxy_in,
            ProxyIn {
                accept,
                from: Vec::new()
            }
        );
    }
    let c = parse(&format!(
        "{base}proxy_protocol = \"v2\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n"
    ))
    .unwrap();
    let from: Vec<String> = c.listeners[0]
        .proxy_in
        .from
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(from, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
}

#[test]
fn proxy_protocol_errors_name_the_key() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"127.0.0.1:8080\"\n";
    let e = err(&format!("{base}proxy_protocol = \"v3\"\n"));
    // serde names the value and the allowed ones; the line and column point at the key.
    assert!(
        e.contains("v3") && e.contains("`off`, `v1`, `v2`, `any`") && e.contains("line 6"),
        "{e}"
    );
    let e = err(&format!("{base}proxy_protocol_from = [\"10.0.0.0/8\"]\n"));
    assert!(
        e.contains("invalid `listener[0].proxy_protocol_from`") && e.contains("\"off\""),
        "{e}"
    );
    let e = err(&format!(
        "{base}proxy_protocol = \"off\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\n"
    ));
    assert!(e.contains("listener[0].proxy_protocol_from"), "{e}");
    let e = err(&format!(
        "{base}proxy_protocol = \"any\"\nproxy_protocol_from = []\n"
    ));
    assert!(
        e.contains("listener[0].proxy_protocol_from") && e.contains("must not be empty"),
        "{e}"
    );
    for bad in ["10.0.0.0/33", "10.0.0.1/8", "ten/8", "10.0.0.0/"] {
        let e = err(&format!(
            "{base}proxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.1\", \"{bad}\"]\n"
        ));
        assert!(
            e.contains("invalid `listener[0].proxy_protocol_from`") && e.contains(bad),
            "{e}"
        );
    }
}

#[test]
fn control_socket_is_resolved_checked_for_length_and_restart_only() {
    let c = parse(&format!(
        "[server]\ncontrol_socket = \"run/control.sock\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.server.control_socket.as_deref(),
        Some(Path::new("/etc/certgate/run/control.sock"))
    );
    assert_eq!(parse(MINIMAL).unwrap().server.control_socket, None);
    assert_eq!(
        parse(MINIMAL).unwrap().restart_only_changes(&c),
        ["server.control_socket"]
    );
    for bad in ["", "/"] {
        let e = err(&format!("[server]\ncontrol_socket = \"{bad}\"\n{MINIMAL}"));
        assert!(
            e.contains("server.control_socket") && e.contains("socket file"),
            "{e}"
        );
    }
    let long = format!("/run/{}", "x".repeat(MAX_CONTROL_SOCKET_PATH));
    let e = err(&format!("[server]\ncontrol_socket = \"{long}\"\n{MINIMAL}"));
    assert!(
        e.contains("server.control_socket") && e.contains("at most 95"),
        "{e}"
    );
}

#[test]
fn load_checks_that_the_control_socket_directory_exists() {
    let dir = std::env::temp_dir().join(format!("certgate-config-cs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("certgate.toml");
    std::fs::write(
        &file,
        format!("[server]\ncontrol_socket = \"missing/control.sock\"\n{MINIMAL}"),
    )
    .unwrap();
    let e = Config::load(&file).unwrap_err().to_string();
    assert!(
        e.contains("server.control_socket")
            && e.contains("missing")
            && e.contains("does not exist")
            && e.contains("certgate.toml"),
        "{e}"
    );
    std::fs::write(
        &file,
        format!("[server]\ncontrol_socket = \"control.sock\"\n{MINIMAL}"),
    )
    .unwrap();
    assert!(Config::load(&file).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_include_every_site_s_files() {
    let c = parse(&format!(
        "{MINIMAL}[[listener.site]]\nserver_names = [\"a.example.com\"]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
         client_ca = \"a-ca.pem\"\n"
    ))
    .unwrap();
    let files: Vec<String> = c
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for f in ["server.pem", "server.key", "a.pem", "a.key", "a-ca.pem"] {
        assert!(files.iter().any(|x| x == f), "{f} in {files:?}");
    }
    assert_eq!(
        c.listeners[0].sites[0].policy.name,
        "127.0.0.1:8443/a.example.com"
    );
}

#[test]
fn a_bad_enum_value_names_its_key() {
    let e = err(&format!("{MINIMAL}proxy_protocol = \"v3\"\n"));
    assert!(e.contains("`proxy_protocol`") && e.contains("v3"), "{e}");
    // An unknown key is named by serde already; no key is guessed for it twice.
    let e = err(&format!("{MINIMAL}no_such_key = 1\n"));
    assert!(e.contains("no_such_key"), "{e}");
}

#[test]
fn http_listeners_offer_h2_then_http11_and_tcp_ones_nothing() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.listeners[0].alpn,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(c.listeners[0].upstream_protocol, UpstreamProtocol::Http1);
    let tcp = format!("{MINIMAL}protocol = \"tcp\"\n");
    assert!(parse(&tcp).unwrap().listeners[0].alpn.is_empty());
    let only11 = format!("{MINIMAL}alpn = [\"http/1.1\"]\n");
    assert_eq!(
        parse(&only11).unwrap().listeners[0].alpn,
        vec![b"http/1.1".to_vec()]
    );
}

#[test]
fn bad_alpn_lists_name_the_key() {
    for (list, why) in [
        ("[\"h3\"]", "\"h3\" is not a protocol certgate serves"),
        ("[\"h2\", \"h2\"]", "listed twice"),
        ("[]", "at least one"),
    ] {
        let e = err(&format!("{MINIMAL}alpn = {list}\n"));
        assert!(e.contains("listener[0].alpn") && e.contains(why), "{e}");
    }
    let e = err(&format!("{MINIMAL}protocol = \"tcp\"\nalpn = [\"h2\"]\n"));
    assert!(e.contains("listener[0].alpn"), "{e}");
}

#[test]
fn h2c_needs_a_plain_shared_http_upstream() {
    let ok = format!("{MINIMAL}upstream_protocol = \"h2c\"\n");
    assert_eq!(
        parse(&ok).unwrap().listeners[0].upstream_protocol,
        UpstreamProtocol::H2c
    );
    let e = err(&format!(
        "{MINIMAL}upstream_protocol = \"h2c\"\nupstream_proxy_protocol = \"v2\"\n"
    ));
    assert!(
        e.contains("listener[0].upstream_protocol") && e.contains("PROXY"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}upstream_protocol = \"h2c\"\nprotocol = \"tcp\"\n"
    ));
    assert!(e.contains("listener[0].upstream_protocol"), "{e}");
    let e = err(&format!("{MINIMAL}upstream_protocol = \"h3\"\n"));
    assert!(e.contains("upstream_protocol"), "{e}");
}

#[test]
fn h2_limits_default_and_are_range_checked() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.limits.h2_max_concurrent_streams, 100);
    assert_eq!(c.limits.h2_max_header_list_bytes, 65536);
    assert_eq!(c.limits.h2_initial_window, 256 * 1024);
    assert_eq!(c.limits.h2_connection_window, 1024 * 1024);
    for (key, value) in [
        ("h2_max_concurrent_streams", "0"),
        ("h2_initial_window", "1000"),
        ("h2_connection_window", "4294967296"),
        ("h2_max_header_list_bytes", "10"),
    ] {
        let e = err(&format!("{MINIMAL}[limits]\n{key} = {value}\n"));
        assert!(
            e.contains(&format!("limits.{key}")) && e.contains("out of range"),
            "{e}"
        );
    }
}

#[test]
fn a_site_narrows_alpn_and_picks_its_upstream_protocol() {
    let text = format!(
        "{MINIMAL}[[listener.site]]\nserver_names = [\"old.example.com\"]\nalpn = [\"http/1.1\"]\n\
         [[listener.site]]\nserver_names = [\"grpc.example.com\"]\nupstream = \"127.0.0.1:9090\"\n\
         upstream_protocol = \"h2c\"\n"
    );
    let c = parse(&text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(l.sites[0].policy.alpn, vec![b"http/1.1".to_vec()]);
    assert_eq!(l.sites[0].policy.upstream_protocol, UpstreamProtocol::Http1);
    assert_eq!(l.sites[1].policy.upstream_protocol, UpstreamProtocol::H2c);
    // A site with its own upstream does not inherit the listener's upstream protocol.
    let text = format!(
        "{MINIMAL}upstream_protocol = \"h2c\"\n[[listener.site]]\nserver_names = [\"a.example.com\"]\n\
         upstream = \"127.0.0.1:9091\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.listeners[0].upstream_protocol, UpstreamProtocol::H2c);
    assert_eq!(
        c.listeners[0].sites[0].policy.upstream_protocol,
        UpstreamProtocol::Http1
    );
}
