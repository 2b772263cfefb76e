//! What the app is told about the client certificate: the header formats a listener forwards
//! (`forward`, `xfcc_fields`) and the bytes of each, built once per verified chain.
//!
//! - `xfcc`: Envoy's `X-Forwarded-Client-Cert` (see `xfcc`), with the fields chosen.
//! - `client-cert`: RFC 9440 `Client-Cert: :<base64 DER>:`, plus `Client-Cert-Chain` (a list of
//!   byte sequences, the intermediates the client sent) when there are any.
//! - `arr`: Azure App Service's `X-ARR-ClientCert: <base64 DER>` of the leaf, what ASP.NET
//!   Core's certificate forwarding reads by default.
//!
//! Every name of every format is removed from client requests whatever is enabled (see
//! `http::request`), so an app can never be handed a forged one.

use rustls_pki_types::CertificateDer;
use x509_parser::asn1_rs::ToDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::xfcc::{self, Fields, Names};

/// One header format (`forward = [...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Xfcc,
    ClientCert,
    Arr,
}

impl Format {
    /// The spelling in the config file.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "xfcc" => Some(Format::Xfcc),
            "client-cert" => Some(Format::ClientCert),
            "arr" => Some(Format::Arr),
            _ => None,
        }
    }
}

/// One `xfcc_fields` entry by its config spelling.
pub fn parse_field(fields: &mut Fields, name: &str) -> bool {
    let slot = match name {
        "by" => &mut fields.by,
        "hash" => &mut fields.hash,
        "cert" => &mut fields.cert,
        "chain" => &mut fields.chain,
        "subject" => &mut fields.subject,
        "uri" => &mut fields.uri,
        "dns" => &mut fields.dns,
        _ => return false,
    };
    *slot = true;
    true
}

/// A listener's forwarding policy, fixed at load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Forwarding {
    /// `None`: no `X-Forwarded-Client-Cert`.
    pub xfcc: Option<Fields>,
    pub client_cert: bool,
    pub arr: bool,
    /// The URI SANs of the listener's own certificate, for XFCC's `By`.
    pub by: Vec<String>,
}

impl Default for Forwarding {
    /// XFCC with Hash, Cert and Chain, as Azure Container Apps sends it.
    fn default() -> Self {
        Forwarding {
            xfcc: Some(Fields::default()),
            client_cert: false,
            arr: false,
            by: Vec::new(),
        }
    }
}

impl Forwarding {
    /// Identifies the policy inside verified-chain cache keys: bytes built under another
    /// policy are never reused.
    pub fn id(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// Every enabled header line (CRLF-terminated) for a presented chain, leaf first; `None`
    /// when no certificate was presented or nothing is forwarded.
    pub fn header_block(&self, chain: &[CertificateDer<'_>]) -> Option<Vec<u8>> {
        let leaf = chain.first()?;
        let mut out = Vec::new();
        if let Some(fields) = &self.xfcc {
            let mut names = Names {
                by: &self.by,
                ..Names::default()
            };
            if fields.subject || fields.uri || fields.dns {
                if let Ok((_, cert)) = X509Certificate::from_der(leaf) {
                    names.subject = rfc2253(cert.subject());
                    names.uris = sans(&cert, |n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    });
                    names.dns = sans(&cert, |n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    });
                }
            }
            out.extend(xfcc::header_line_with(chain, fields, &names)?);
        }
        if self.client_cert {
            out.extend_from_slice(b"Client-Cert: ");
            push_byte_sequence(&mut out, leaf);
            out.extend_from_slice(b"\r\n");
            if chain.len() > 1 {
                out.extend_from_slice(b"Client-Cert-Chain: ");
                for (i, cert) in chain[1..].iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    push_byte_sequence(&mut out, cert);
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        if self.arr {
            out.extend_from_slice(b"X-ARR-ClientCert: ");
            push_base64(&mut out, leaf);
            out.extend_from_slice(b"\r\n");
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The URI SANs of a certificate (for XFCC's `By` from the listener's own certificate).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => sans(&cert, |n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        }),
        Err(_) => Vec::new(),
    }
}

fn sans(
    cert: &X509Certificate<'_>,
    pick: impl Fn(&GeneralName<'_>) -> Option<String>,
) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().filter_map(pick).collect(),
        _ => Vec::new(),
    }
}

/// An RFC 8941 byte sequence: `:` base64 `:`.
fn push_byte_sequence(out: &mut Vec<u8>, der: &[u8]) {
    out.push(b':');
    push_base64(out, der);
    out.push(b':');
}

fn push_base64(out: &mut Vec<u8>, der: &[u8]) {
    let mut line = [0u8; 64];
    for chunk in der.chunks(48) {
        let n = xfcc::base64_encode(chunk, &mut line);
        out.extend_from_slice(&line[..n]);
    }
}

/// A distinguished name as OpenSSL prints it with `-nameopt RFC2253` (what Envoy's `Subject`
/// holds): RDNs last to first, joined by `,`; multi-valued ones joined by `+`; short names for
/// the usual attribute types, dotted OIDs otherwise; `,+"\<>;` escaped with `\`, as are a
/// leading `#` or space and a trailing space; bytes outside printable ASCII as `\XX`; a value
/// that is not a string as `#` and the hex of its DER.
pub fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match short_name(&oid.to_id_string()) {
                Some(short) => out.push_str(short),
                None => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_value(&mut out, value.as_bytes()),
                Err(_) => {
                    out.push('#');
                    // The whole DER encoding (tag, length, contents), as OpenSSL dumps it.
                    for b in attr.attr_value().to_der_vec().unwrap_or_default() {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

/// OpenSSL's short names for the attribute types certificates use.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape_value(out: &mut String, value: &[u8]) {
    let last = value.len().saturating_sub(1);
    for (i, &b) in value.iter().enumerate() {
        let special = matches!(b, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';')
            || (i == 0 && (b == b'#' || b == b' '))
            || (i == last && b == b' ');
        if special {
            out.push('\\');
            out.push(char::from(b));
        } else if !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
