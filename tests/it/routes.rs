//! Per-path requirements (`[[listener.route]]`) end to end: `required` routes in `accept` mode
//! answer 403 without a certificate for every spelling of the path that normalizes onto them,
//! a route's `allow` narrows the listener's, a route's own upstream gets its requests in
//! normal form (query untouched), and targets that cannot be normalized safely get 400.

use certgate::demo::echo::EchoApp;

use crate::support::*;

struct Routed {
    running: Running,
    main: EchoApp,
    admin: EchoApp,
}

fn start_routes() -> Routed {
    let dir = temp_dir("routes");
    write_pki(&dir);
    let main = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let text = format!(
        "{}\
         [[listener.route]]\npath_prefix = \"/admin/\"\nclient_certificate = \"required\"\n\
         upstream = \"{admin}\"\n\
         [[listener.route]]\npath_prefix = \"/ops/\"\nallow = {{ subject_cn = [\"client-b\"] }}\n\
         [[listener.route]]\npath_prefix = \"/public/\"\n",
        config_text(&Setup::new("accept").with_ca(), main.addr),
        admin = admin.addr,
    );
    Routed {
        running: start_toml(dir, &text, None),
        main,
        admin,
    }
}

fn status(r: &Routed, cert: ClientCert, target: &str) -> (u16, String) {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let resp = request(r.running.addr, cert, raw.as_bytes()).unwrap();
    (
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

/// The request lines each app received.
fn lines(app: &EchoApp) -> Vec<String> {
    app.heads()
        .iter()
        .map(|h| {
            let h = String::from_utf8_lossy(h);
            h.lines().next().unwrap_or("").to_owned()
        })
        .collect()
}

#[test]
fn required_routes_refuse_every_spelling_without_a_certificate() {
    let r = start_routes();
    for target in [
        "/admin/x",
        "/admin/../admin/x",
        "/./admin/x",
        "//admin/x",
        "/%61dmin/x",
        "/public/../admin/x",
        "/admin/%2e/x",
        "/%2E%2E/admin/x?q", // climbs above the root first: 400, not 403 (checked below)
    ] {
        let (code, body) = status(&r, ClientCert::None, target);
        if target.starts_with("/%2E%2E") {
            assert_eq!(code, 400, "{target}");
            continue;
        }
        assert_eq!(code, 403, "{target}: {body}");
        assert_eq!(
            body, "client certificate required for this path\n",
            "{target}"
        );
    }
    assert!(
        r.admin.heads().is_empty() && r.main.heads().is_empty(),
        "nothing refused reached an app"
    );
}

#[test]
fn a_route_upstream_receives_the_normal_form_with_the_query_as_sent() {
    let r = start_routes();
    assert_eq!(
        status(&r, ClientCert::Valid, "/%61dmin/./x//y?a=/../b&c=%2F").0,
        200
    );
    assert_eq!(status(&r, ClientCert::Valid, "/public/x").0, 200);
    assert_eq!(status(&r, ClientCert::None, "/other/%7Euser").0, 200);
    assert_eq!(
        lines(&r.admin),
        ["GET /admin/x/y?a=/../b&c=%2F HTTP/1.1"],
        "the route's own upstream, normal path, query untouched"
    );
    assert_eq!(
        lines(&r.main),
        ["GET /public/x HTTP/1.1", "GET /other/~user HTTP/1.1"]
    );
}

#[test]
fn a_routes_allowlist_narrows_the_listeners() {
    let r = start_routes();
    // Optional: no certificate passes; a certificate must match the route's allow.
    assert_eq!(status(&r, ClientCert::None, "/ops/x").0, 200);
    let (code, body) = status(&r, ClientCert::Valid, "/ops/x");
    assert_eq!(
        (code, body.as_str()),
        (403, "client certificate not allowed for this path\n")
    );
    assert_eq!(status(&r, ClientCert::ValidB, "/ops/x").0, 200);
    assert_eq!(status(&r, ClientCert::Valid, "/public/x").0, 200);
}

#[test]
fn targets_that_cannot_be_normalized_safely_are_400() {
    let r = start_routes();
    for target in [
        "/admin%2Fx",
        "/admin%2fx",
        "/a%5Cb",
        "/a%00b",
        "/../admin/x",
        "/a/../../admin/x",
        "/a%zz",
        "/a%4",
        "/public/..;/admin/x",
        "/admin;x/secret",
    ] {
        let (code, _) = status(&r, ClientCert::Valid, target);
        assert_eq!(code, 400, "{target}");
    }
    assert!(r.admin.heads().is_empty() && r.main.heads().is_empty());
}

#[test]
fn route_keys_are_checked() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                upstream = \"127.0.0.1:1\"\n";
    for (text, key, says) in [
        (
            "[[listener.route]]\npath_prefix = \"/a/\"\nclient_certificate = \"required\"\n",
            "listener[0].route[0].client_certificate",
            "needs client_certificate_mode",
        ),
        (
            "client_certificate_mode = \"accept\"\n[[listener.route]]\npath_prefix = \"/a/../b/\"\n",
            "listener[0].route",
            "would never match",
        ),
        (
            "client_certificate_mode = \"accept\"\n[[listener.route]]\npath_prefix = \"a/\"\n",
            "listener[0].route",
            "must start with",
        ),
        (
            "client_certificate_mode = \"accept\"\n[[listener.route]]\npath_prefix = \"/a/\"\n\
             [[listener.route]]\npath_prefix = \"/a/\"\n",
            "listener[0].route",
            "twice",
        ),
        (
            "client_certificate_mode = \"accept\"\n[[listener.route]]\npath_prefix = \"/a/\"\n\
             upstream = \"https://127.0.0.1:2\"\n",
            "listener[0].route[0].upstream",
            "plain TCP",
        ),
        (
            "client_certificate_mode = \"accept\"\n[[listener.route]]\npath_prefix = \"/a/\"\n\
             allow = { uri = [\"spiffe://x/*\"] }\n",
            "listener[0].route[0].allow",
            "need client_ca",
        ),
    ] {
        let e = certgate::config::Config::from_toml(
            &format!("{base}{text}"),
            std::path::Path::new("/tmp"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(key) && e.contains(says), "{text}: {e}");
    }
}
