//! Unit tests for request-target normalization.

use super::*;

/// The normal target as text, checking on the way that normalizing it again changes nothing
/// (and is then not a rewrite).
fn norm(target: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::new();
    let n = normalize(target, &mut out)?;
    let normal = n.target(target, &out).to_vec();
    assert_eq!(
        n.is_rewritten(),
        normal != target,
        "is_rewritten wrong for {:?}",
        String::from_utf8_lossy(target)
    );
    let mut again = Vec::new();
    let n2 = normalize(&normal, &mut again).expect("normal form refused");
    assert!(
        !n2.is_rewritten(),
        "not idempotent: {normal:?} -> {again:?}"
    );
    Ok(String::from_utf8(normal).expect("normal form is not ASCII"))
}

fn path(target: &[u8]) -> String {
    let mut out = Vec::new();
    let n = normalize(target, &mut out).unwrap();
    String::from_utf8(n.path(target, &out).to_vec()).unwrap()
}

fn ok(target: &str, want: &str) {
    assert_eq!(norm(target.as_bytes()), Ok(want.to_string()), "{target:?}");
}

fn err(target: &[u8], want: PathError) {
    assert_eq!(
        norm(target),
        Err(want),
        "{:?}",
        String::from_utf8_lossy(target)
    );
}

#[test]
fn normal_targets_pass_through_without_copying() {
    for t in [
        "/",
        "/admin/x",
        "/admin/",
        "/api/v1/items?page=2&sort=desc",
        "/?",
        "/a?",
        "/g.",
        "/.g",
        "/g..",
        "/..g",
        "/.well-known/acme-challenge/x",
        "/a:b@c!$&'()*+,=",
        "/~user/-_/",
    ] {
        let mut out = Vec::new();
        let n = normalize(t.as_bytes(), &mut out).unwrap();
        assert!(!n.is_rewritten(), "{t:?}");
        assert!(out.is_empty(), "{t:?} was copied");
        assert_eq!(n.target(t.as_bytes(), &out), t.as_bytes());
    }
}

#[test]
fn the_issue_examples_all_meet_the_admin_rule() {
    for t in ["/admin/../admin/x", "/./admin/x", "//admin/x", "/%61dmin/x"] {
        ok(t, "/admin/x");
        assert!(path(t.as_bytes()).starts_with("/admin/"), "{t:?}");
    }
}

#[test]
fn rfc3986_remove_dot_segments_examples() {
    // §5.2.4 and the §5.4 examples as absolute paths (base /b/c/d;p).
    ok("/a/b/c/./../../g", "/a/g");
    ok("/mid/content=5/../6", "/mid/6");
    ok("/b/c/./g", "/b/c/g");
    ok("/b/c/g/.", "/b/c/g/");
    ok("/b/c/.", "/b/c/");
    ok("/b/c/./", "/b/c/");
    ok("/b/c/..", "/b/");
    ok("/b/c/../", "/b/");
    ok("/b/c/../g", "/b/g");
    ok("/b/c/../..", "/");
    ok("/b/c/../../", "/");
    ok("/b/c/../../g", "/g");
    ok("/b/c/g.", "/b/c/g.");
    ok("/b/c/.g", "/b/c/.g");
    ok("/b/c/g..", "/b/c/g..");
    ok("/b/c/..g", "/b/c/..g");
    ok("/b/c/./../g", "/b/g");
    ok("/b/c/./g/.", "/b/c/g/");
    ok("/b/c/g/./h", "/b/c/g/h");
    ok("/b/c/g/../h", "/b/c/h");
    // RFC 3986's `g;x=1` examples are path parameters, which are refused here (see
    // `path_parameters_are_refused_because_servlet_containers_strip_them`).
    err(b"/b/c/g;x=1/./y", PathError::PathParameter);
    // Where RFC 3986 clamps at the root ("/../g" → "/g"), we refuse.
    err(b"/../g", PathError::AboveRoot);
    err(b"/b/c/../../../g", PathError::AboveRoot);
}

#[test]
fn trailing_slashes_and_root() {
    ok("/admin/", "/admin/");
    ok("/admin/.", "/admin/");
    ok("/admin/..", "/");
    ok("/admin//", "/admin/");
    ok("/admin/./", "/admin/");
    ok("/admin", "/admin");
    ok("/.", "/");
    ok("//", "/");
    ok("///a///b///", "/a/b/");
    err(b"/..", PathError::AboveRoot);
    err(b"/../", PathError::AboveRoot);
    err(b"/a/../..", PathError::AboveRoot);
    err(b"/a//../..", PathError::AboveRoot);
}

#[test]
fn dot_segments_that_appear_only_after_decoding() {
    err(b"/%2e%2e/admin", PathError::AboveRoot);
    err(b"/.%2e/", PathError::AboveRoot);
    err(b"/%2E./x", PathError::AboveRoot);
    ok("/public/%2e%2e/admin/x", "/admin/x");
    ok("/public/.%2E/admin/x", "/admin/x");
    ok("/%2e/admin", "/admin");
    ok("/admin/%2e", "/admin/");
    ok("/admin/%2e%2e", "/");
    // Not a dot segment: three dots, or a dot plus more.
    ok("/a/%2e%2e%2e", "/a/...");
    ok("/a/%2e%2eb", "/a/..b");
    // An encoded slash cannot be used to build one either.
    err(b"/%2e%2e%2fadmin", PathError::EncodedSlash);
}

#[test]
fn unreserved_escapes_decoded_others_uppercased() {
    ok("/%41%42c", "/ABc");
    ok("/%7e%7Ejohn", "/~~john");
    ok("/%2D%5f%2e%30", "/-_.0");
    ok("/a%3a%3Ab", "/a%3A%3Ab");
    ok("/%20x%3fy", "/%20x%3Fy");
    ok("/%25", "/%25");
    ok("/%252e%252e/", "/%252e%252e/");
    ok("/caf%c3%a9", "/caf%C3%A9");
}

#[test]
fn raw_non_ascii_is_percent_encoded() {
    assert_eq!(norm(b"/caf\xc3\xa9/x"), Ok("/caf%C3%A9/x".to_string()));
    assert_eq!(norm(b"/\xff"), Ok("/%FF".to_string()));
}

#[test]
fn separators_and_terminators_in_escapes_are_refused() {
    err(b"/admin%2Fx", PathError::EncodedSlash);
    err(b"/admin%2fx", PathError::EncodedSlash);
    err(b"/admin%5Cx", PathError::EncodedBackslash);
    err(b"/admin%5cx", PathError::EncodedBackslash);
    err(b"/admin%00", PathError::EncodedNul);
    err(b"/admin\\x", PathError::Backslash);
    err(b"/a\\..\\admin", PathError::Backslash);
}

#[test]
fn malformed_escapes_are_refused() {
    for t in [&b"/%zz"[..], b"/%4", b"/%", b"/a%g0", b"/a%0g/b", b"/%%41"] {
        err(t, PathError::BadEscape);
    }
}

#[test]
fn control_bytes_space_and_fragments_are_refused() {
    err(b"/a b", PathError::ControlByte);
    err(b"/a\tb", PathError::ControlByte);
    err(b"/a\x00", PathError::ControlByte);
    err(b"/a\x7f", PathError::ControlByte);
    err(b"/a#frag", PathError::Fragment);
    err(b"/a?q#frag", PathError::Fragment);
    err(b"/admin#/../public", PathError::Fragment);
}

#[test]
fn query_is_kept_verbatim() {
    ok("/a/./b?x=/../y&z=%2f//", "/a/b?x=/../y&z=%2f//");
    ok("/a?%zz\\", "/a?%zz\\");
    ok("//a?b?c", "/a?b?c");
    assert_eq!(path(b"/a/../b?x=/admin/"), "/b");
    // A `?` ends the path, so an escape in the query is never decoded or checked.
    ok("/%61?%61", "/a?%61");
    // A dot segment or empty segment right before the query.
    ok("/a/.?x", "/a/?x");
    ok("/a/..?x", "/?x");
    ok("/a//?x", "/a/?x");
    ok("/a/...?x", "/a/...?x");
    err(b"/..?x", PathError::AboveRoot);
    err(b"/a?x#", PathError::Fragment);
}

#[test]
fn not_a_path_is_refused() {
    for t in [&b""[..], b"?x", b"admin", b"*x", b"**", b"example.com:443"] {
        err(t, PathError::BadTarget);
    }
}

#[test]
fn asterisk_form_passes_untouched() {
    ok("*", "*");
    assert_eq!(path(b"*"), "*");
    let mut out = Vec::new();
    assert_eq!(normalize(b"*", &mut out).unwrap().authority(b"*"), None);
}

#[test]
fn absolute_form_normalizes_its_path_only() {
    let t = b"http://Example.com:8080/a/../%62?q=/../";
    let mut out = Vec::new();
    let n = normalize(t, &mut out).unwrap();
    assert!(n.is_rewritten());
    assert_eq!(n.target(t, &out), b"http://Example.com:8080/b?q=/../");
    assert_eq!(n.path(t, &out), b"/b");
    assert_eq!(n.authority(t), Some(&b"Example.com:8080"[..]));

    ok("HTTPS://h/x", "HTTPS://h/x");
    assert_eq!(path(b"HTTPS://h/x"), "/x");
    ok("http://h", "http://h/");
    ok("http://h?x", "http://h/?x");
    assert_eq!(path(b"http://h?x"), "/");
    err(b"http://h/..", PathError::AboveRoot);
    err(b"http://h/a%2fb", PathError::EncodedSlash);
    for t in [
        &b"http:///x"[..],
        b"http://",
        b"http://user@h/",
        b"http://h\\@evil/",
        b"ftp://h/",
        b"http:/h/",
    ] {
        err(t, PathError::BadTarget);
    }
    let mut out = Vec::new();
    let n = normalize(b"/a", &mut out).unwrap();
    assert_eq!(n.authority(b"/a"), None);
}

#[test]
fn out_is_reused_and_cleared() {
    let mut out = Vec::with_capacity(64);
    let n = normalize(b"//a", &mut out).unwrap();
    assert!(n.is_rewritten());
    assert_eq!(n.target(b"//a", &out), b"/a");
    let n = normalize(b"/b", &mut out).unwrap();
    assert!(!n.is_rewritten());
    assert!(out.is_empty());
    assert_eq!(n.target(b"/b", &out), b"/b");
}

#[test]
fn reasons_are_the_display_text_and_all_400() {
    for e in [
        PathError::BadTarget,
        PathError::Fragment,
        PathError::ControlByte,
        PathError::Backslash,
        PathError::BadEscape,
        PathError::EncodedSlash,
        PathError::EncodedBackslash,
        PathError::EncodedNul,
        PathError::AboveRoot,
    ] {
        assert_eq!(e.to_string(), e.reason());
        assert!(!e.reason().contains('\n'));
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn path_parameters_are_refused_because_servlet_containers_strip_them() {
    for t in [
        &b"/public/..;/admin/x"[..],
        b"/admin;jsessionid=1/secret",
        b"/;/admin/x",
        b"/a/b;c",
    ] {
        err(t, PathError::PathParameter);
    }
    // An escaped semicolon is an ordinary escape; a `;` in the query is the query's business.
    ok("/a%3Bb", "/a%3Bb");
    ok("/a?x=1;y=2", "/a?x=1;y=2");
}
