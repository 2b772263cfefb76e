//! Unit tests of `identity`: each format's bytes, XFCC field order, RFC 2253 subjects.
use super::*;
use crate::pki::Ca;

fn chain() -> Vec<CertificateDer<'static>> {
    let root = Ca::root("identity root").unwrap();
    let int = root.intermediate("identity int").unwrap();
    let leaf = int.client_cert("identity client").unwrap();
    vec![leaf.cert_der.clone(), int.issued().cert_der.clone()]
}

fn b64(der: &[u8]) -> String {
    let mut out = Vec::new();
    push_base64(&mut out, der);
    String::from_utf8(out).unwrap()
}

/// A leaf with a subject full of characters RFC 2253 escapes, and URI and DNS SANs.
fn named_leaf() -> CertificateDer<'static> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "DE");
    dn.push(DnType::OrganizationName, "Ex \"ample\", Inc; <x>");
    dn.push(DnType::CommonName, "#svc+1 ");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI(
            "spiffe://example.com/ns/prod/sa/billing"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("billing.svc.example.com".try_into().unwrap()),
        SanType::DnsName("b.example.com".try_into().unwrap()),
    ];
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn default_fields_are_byte_identical_to_the_azure_header() {
    let chain = chain();
    let with = xfcc::header_line_with(&chain, &Fields::default(), &Names::default()).unwrap();
    assert_eq!(with, xfcc::header_line(&chain).unwrap());
    let block = Forwarding::default().header_block(&chain).unwrap();
    assert_eq!(block, xfcc::header_line(&chain).unwrap());
}

#[test]
fn xfcc_fields_come_in_envoys_order_whatever_the_config_order() {
    let leaf = named_leaf();
    let mut fields = Fields {
        hash: false,
        cert: false,
        chain: false,
        ..Fields::default()
    };
    for f in ["dns", "uri", "subject", "hash", "by"] {
        assert!(parse_field(&mut fields, f));
    }
    assert!(!parse_field(&mut fields, "Hash"), "spellings are exact");
    let fwd = Forwarding {
        xfcc: Some(fields),
        by: vec!["spiffe://example.com/ns/edge/sa/certgate".into()],
        ..Forwarding::default()
    };
    let line = String::from_utf8(fwd.header_block(std::slice::from_ref(&leaf)).unwrap()).unwrap();
    let hash = String::from_utf8(xfcc::sha256_hex(&leaf).to_vec()).unwrap();
    assert_eq!(
        line,
        format!(
            "X-Forwarded-Client-Cert: By=spiffe://example.com/ns/edge/sa/certgate;Hash={hash};\
             Subject=\"CN=\\#svc\\+1\\ ,O=Ex \\\"ample\\\"\\, Inc\\; \\<x\\>,C=DE\";\
             URI=spiffe://example.com/ns/prod/sa/billing;\
             DNS=billing.svc.example.com;DNS=b.example.com\r\n"
        )
    );
}

#[test]
fn uri_key_stays_without_a_uri_san_and_odd_sans_are_quoted() {
    let chain = chain();
    let fields = Fields {
        hash: false,
        cert: false,
        chain: false,
        uri: true,
        dns: true,
        ..Fields::default()
    };
    let fwd = Forwarding {
        xfcc: Some(fields),
        ..Forwarding::default()
    };
    let line = fwd.header_block(&chain).unwrap();
    assert_eq!(line, b"X-Forwarded-Client-Cert: URI=\r\n");
    let mut out = Vec::new();
    xfcc_push_san(&mut out, "urn:a;b=\"c\"");
    assert_eq!(out, b"\"urn:a;b=\\\"c\\\"\"");
}

fn xfcc_push_san(out: &mut Vec<u8>, v: &str) {
    let fields = Fields {
        hash: false,
        cert: false,
        chain: false,
        by: true,
        ..Fields::default()
    };
    let by = [v.to_owned()];
    let names = Names {
        by: &by,
        ..Names::default()
    };
    let line = xfcc::header_line_with(&chain(), &fields, &names).unwrap();
    let value = &line[b"X-Forwarded-Client-Cert: By=".len()..line.len() - 2];
    out.extend_from_slice(value);
}

#[test]
fn client_cert_and_arr_carry_base64_der() {
    let chain = chain();
    let fwd = Forwarding {
        xfcc: None,
        client_cert: true,
        arr: true,
        by: Vec::new(),
    };
    let text = String::from_utf8(fwd.header_block(&chain).unwrap()).unwrap();
    assert_eq!(
        text,
        format!(
            "Client-Cert: :{leaf}:\r\nClient-Cert-Chain: :{int}:\r\nX-ARR-ClientCert: {leaf}\r\n",
            leaf = b64(&chain[0]),
            int = b64(&chain[1]),
        )
    );
    // A leaf alone: no Client-Cert-Chain (RFC 9440 §2.2: it carries what the client sent
    // besides the leaf).
    let text = String::from_utf8(fwd.header_block(&chain[..1]).unwrap()).unwrap();
    assert!(!text.contains("Client-Cert-Chain"), "{text}");
    let nothing = Forwarding {
        xfcc: None,
        ..Forwarding::default()
    };
    assert_eq!(nothing.header_block(&chain), None);
    assert_eq!(Forwarding::default().header_block(&[]), None);
}

#[test]
fn policies_differ_in_id() {
    let a = Forwarding::default();
    let b = Forwarding {
        arr: true,
        ..Forwarding::default()
    };
    assert_ne!(a.id(), b.id());
    assert_eq!(a.id(), Forwarding::default().id());
}

#[test]
fn rfc2253_escapes_non_ascii_as_hex() {
    let mut out = String::new();
    escape_value(&mut out, "Zoë tab\t".as_bytes());
    assert_eq!(out, "Zo\\C3\\AB tab\\09");
}
