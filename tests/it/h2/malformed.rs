//! Malformed HTTP/2 requests (RFC 9113 section 8), one per test, sent frame by frame by
//! `h2_peer.py malformed` (header blocks from the `hpack` encoder, never-indexed so a bad
//! field cannot linger in the server's table). RFC 9113 8.1.1: a malformed request is a
//! stream error of type PROTOCOL_ERROR (a server MAY answer it with a response first, so a
//! 4xx is accepted too); the connection stays usable, which the tool checks with a valid
//! request on stream 3 (`/followup`). Nothing of the bad request may reach the app.

use super::*;

/// The tool's report for `case` against a fresh certgate in front of the echo app, and the
/// request heads the app received.
fn send(case: &str) -> (serde_json::Value, Vec<String>) {
    let running = front("ignore", "", "");
    let seen = h2_peer(
        &running,
        "malformed",
        &[
            "--case",
            case,
            "--path",
            "/m",
            "--followup-path",
            "/followup",
        ],
    );
    let heads = running
        .echo()
        .heads()
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    (seen, heads)
}

/// A stream error (RST_STREAM PROTOCOL_ERROR, or a 4xx answer) that leaves the connection
/// working, and an app that saw only the follow-up request. RFC 9113 5.4.1 lets an endpoint
/// treat a stream error as a connection error, so GOAWAY PROTOCOL_ERROR that processed no
/// stream (last stream 0) is accepted too (the `h2` crate answers a field its HPACK decoder
/// cannot take as a name or value that way); then the app must have seen nothing at all.
fn assert_stream_error(case: &str) {
    let (seen, heads) = send(case);
    assert!(
        !heads
            .iter()
            .any(|h| h.contains("smuggled") || h.starts_with("GET /m ")),
        "{case}: the malformed request reached the app: {heads:#?}"
    );
    if seen["goaway"] == "PROTOCOL_ERROR" {
        assert_eq!(seen["goaway_last_stream"], 0, "{case}: {seen}");
        assert_eq!(seen["status"], serde_json::Value::Null, "{case}: {seen}");
        assert!(heads.is_empty(), "{case}: {heads:#?}");
        return;
    }
    let rst = seen["reset"].as_str();
    let status = seen["status"].as_u64();
    assert!(
        rst == Some("PROTOCOL_ERROR") || status.is_some_and(|s| (400..500).contains(&s)),
        "{case}: RFC 9113 8.1.1 wants a stream error of type PROTOCOL_ERROR (or a 4xx): {seen}"
    );
    assert_eq!(
        seen["goaway"],
        serde_json::Value::Null,
        "{case}: a stream error, or a connection error of type PROTOCOL_ERROR: {seen}"
    );
    assert_eq!(
        seen["followup_status"], 200,
        "{case}: after a stream error the connection must stay usable: {seen}"
    );
    assert_eq!(heads.len(), 1, "{case}: the app saw {heads:#?}");
    assert!(
        heads[0].starts_with("GET /followup HTTP/1.1\r\n"),
        "{heads:#?}"
    );
}

/// The controls: the tool's well-formed requests get through, so the rejections above are
/// about the bad field, not the tool.
#[test]
fn control_a_valid_request_reaches_the_app() {
    let (seen, heads) = send("valid");
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["followup_status"], 200, "{seen}");
    assert_eq!(heads.len(), 2, "{heads:#?}");
    assert!(heads[0].starts_with("GET /m HTTP/1.1\r\n"), "{heads:#?}");
}

#[test]
fn control_te_trailers_is_allowed_and_not_forwarded_to_an_http11_app() {
    let (seen, heads) = send("te-trailers");
    assert_eq!(seen["status"], 200, "{seen}");
    assert!(header_values(&heads[0], "te").is_empty(), "{heads:#?}");
}

#[test]
fn uppercase_field_name_is_a_stream_error() {
    assert_stream_error("uppercase-name");
}

/// The uppercase spelling of the identity header: not a header to strip but a malformed
/// request, so it cannot reach the app under any name.
#[test]
fn uppercase_identity_header_is_a_stream_error() {
    assert_stream_error("uppercase-xfcc");
}

#[test]
fn space_in_field_name_is_a_stream_error() {
    assert_stream_error("space-in-name");
}

#[test]
fn cr_in_field_value_is_a_stream_error() {
    assert_stream_error("cr-in-value");
}

#[test]
fn lf_in_field_value_is_a_stream_error() {
    assert_stream_error("lf-in-value");
}

#[test]
fn nul_in_field_value_is_a_stream_error() {
    assert_stream_error("nul-in-value");
}

#[test]
fn connection_header_is_a_stream_error() {
    assert_stream_error("connection");
}

#[test]
fn transfer_encoding_header_is_a_stream_error() {
    assert_stream_error("transfer-encoding");
}

#[test]
fn keep_alive_header_is_a_stream_error() {
    assert_stream_error("keep-alive");
}

#[test]
fn upgrade_header_is_a_stream_error() {
    assert_stream_error("upgrade");
}

#[test]
fn proxy_connection_header_is_a_stream_error() {
    assert_stream_error("proxy-connection");
}

#[test]
fn te_other_than_trailers_is_a_stream_error() {
    assert_stream_error("te-gzip");
}

#[test]
fn missing_method_is_a_stream_error() {
    assert_stream_error("missing-method");
}

#[test]
fn missing_path_is_a_stream_error() {
    assert_stream_error("missing-path");
}

#[test]
fn missing_scheme_is_a_stream_error() {
    assert_stream_error("missing-scheme");
}

#[test]
fn empty_path_is_a_stream_error() {
    assert_stream_error("empty-path");
}

#[test]
fn duplicate_path_is_a_stream_error() {
    assert_stream_error("duplicate-path");
}

#[test]
fn pseudo_header_after_a_regular_one_is_a_stream_error() {
    assert_stream_error("pseudo-after-regular");
}

#[test]
fn unknown_pseudo_header_is_a_stream_error() {
    assert_stream_error("unknown-pseudo");
}

#[test]
fn status_pseudo_header_in_a_request_is_a_stream_error() {
    assert_stream_error("status-in-request");
}

/// RFC 9113 8.3.1: a Host that names another entity than :authority SHOULD be malformed;
/// forwarding either one would let the two disagree about where the request goes.
#[test]
fn authority_and_host_that_disagree_is_a_stream_error() {
    assert_stream_error("authority-host-mismatch");
}

#[test]
fn smuggled_request_in_a_header_value_is_a_stream_error() {
    assert_stream_error("smuggle-value");
}

#[test]
fn smuggled_request_in_the_path_is_a_stream_error() {
    assert_stream_error("smuggle-path");
}

#[test]
fn smuggled_request_in_the_method_is_a_stream_error() {
    assert_stream_error("smuggle-method");
}

/// RFC 9113 8.1.1: DATA that adds up to more or less than content-length is malformed. The
/// head may already be on its way to the app when the DATA shows it; what matters is that
/// the client gets the error, not a 2xx, and that the connection carries on.
fn assert_length_mismatch_rejected(case: &str) {
    let (seen, heads) = send(case);
    let rst = seen["reset"].as_str();
    let status = seen["status"].as_u64();
    assert!(
        rst == Some("PROTOCOL_ERROR") || status.is_some_and(|s| (400..500).contains(&s)),
        "{case}: RFC 9113 8.1.1 wants a stream error of type PROTOCOL_ERROR: {seen}"
    );
    assert_eq!(seen["goaway"], serde_json::Value::Null, "{case}: {seen}");
    assert_eq!(seen["followup_status"], 200, "{case}: {seen}");
    assert!(
        heads.iter().any(|h| h.starts_with("GET /followup ")),
        "{heads:#?}"
    );
}

#[test]
fn data_longer_than_content_length_is_a_stream_error() {
    assert_length_mismatch_rejected("content-length-more");
}

#[test]
fn data_shorter_than_content_length_is_a_stream_error() {
    assert_length_mismatch_rejected("content-length-less");
}
