//! Client allowlists (`[listener.allow]`): a presented certificate must match at least one
//! entry, or the handshake fails with `access_denied`, in `accept` mode as in `require` mode.
//!
//! Names (`subject_cn`, `dns`, `uri`, `email`) are only meaningful once the chain was verified
//! against `client_ca` (anyone can mint a self-signed certificate with any name), which config
//! validation enforces; `sha256` pins identify one certificate and need no trust anchor.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// One listener's allowlist; empty (the default) admits every certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AllowList {
    /// SHA-256 of the leaf DER.
    pub sha256: Vec<[u8; 32]>,
    pub subject_cn: Vec<String>,
    /// SAN dNSName: exact (ASCII case-insensitive), or `*.` plus a suffix matching exactly one
    /// more leading label.
    pub dns: Vec<String>,
    /// SAN URI: exact, or a prefix when the entry ends in `*`.
    pub uri: Vec<String>,
    /// SAN rfc822Name, exact (ASCII case-insensitive).
    pub email: Vec<String>,
}

impl AllowList {
    pub fn is_empty(&self) -> bool {
        self.sha256.is_empty() && !self.has_names()
    }

    /// Whether any entry is a name, which only a trust anchor makes meaningful.
    pub fn has_names(&self) -> bool {
        !(self.subject_cn.is_empty()
            && self.dns.is_empty()
            && self.uri.is_empty()
            && self.email.is_empty())
    }

    /// Whether the leaf (DER) matches any entry. An empty list admits everything; a leaf
    /// that does not parse matches no name.
    pub fn admits(&self, leaf: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        if !self.sha256.is_empty() {
            let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
            if self.sha256.iter().any(|pin| pin[..] == *digest.as_ref()) {
                return true;
            }
        }
        if !self.has_names() {
            return false;
        }
        let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
            return false;
        };
        if !self.subject_cn.is_empty() {
            let cns = cert
                .subject()
                .iter_common_name()
                .filter_map(|a| a.as_str().ok());
            for cn in cns {
                if self.subject_cn.iter().any(|want| want == cn) {
                    return true;
                }
            }
        }
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        san.value.general_names.iter().any(|name| match name {
            GeneralName::DNSName(d) => self.dns.iter().any(|p| dns_matches(p, d)),
            GeneralName::URI(u) => self.uri.iter().any(|p| uri_matches(p, u)),
            GeneralName::RFC822Name(e) => self.email.iter().any(|p| p.eq_ignore_ascii_case(e)),
            _ => false,
        })
    }
}

/// `pattern` is exact or `*.suffix`; the wildcard stands for exactly one non-empty label.
/// A SAN that is itself a wildcard matches only the identical pattern.
pub fn dns_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => {
            !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(suffix)
        }
        None => false,
    }
}

/// `pattern` is exact, or a prefix when it ends in `*`.
pub fn uri_matches(pattern: &str, uri: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => uri.starts_with(prefix),
        None => pattern == uri,
    }
}

/// A `sha256` entry: 64 hex digits, colons allowed between pairs, any case.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn leaf(cn: &str, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn empty_admits_everything_and_each_kind_matches_on_its_own() {
        let der = leaf(
            "billing-service",
            vec![
                SanType::DnsName("a.svc.example.com".try_into().unwrap()),
                SanType::URI(
                    "spiffe://example.com/ns/prod/sa/billing"
                        .try_into()
                        .unwrap(),
                ),
                SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            ],
        );
        assert!(AllowList::default().admits(&der));
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        let pin: [u8; 32] = digest.as_ref().try_into().unwrap();
        let cases = [
            AllowList {
                sha256: vec![pin],
                ..Default::default()
            },
            AllowList {
                subject_cn: vec!["billing-service".into()],
                ..Default::default()
            },
            AllowList {
                dns: vec!["*.svc.example.com".into()],
                ..Default::default()
            },
            AllowList {
                uri: vec!["spiffe://example.com/ns/prod/*".into()],
                ..Default::default()
            },
            AllowList {
                email: vec!["OPS@example.com".into()],
                ..Default::default()
            },
        ];
        for list in cases {
            assert!(list.admits(&der), "{list:?}");
        }
        let misses = [
            AllowList {
                sha256: vec![[0; 32]],
                ..Default::default()
            },
            AllowList {
                subject_cn: vec!["Billing-Service".into()],
                ..Default::default()
            },
            AllowList {
                dns: vec!["*.example.com".into()],
                ..Default::default()
            },
            AllowList {
                uri: vec!["spiffe://example.com/ns/prod".into()],
                ..Default::default()
            },
            AllowList {
                email: vec!["dev@example.com".into()],
                ..Default::default()
            },
        ];
        for list in misses {
            assert!(!list.admits(&der), "{list:?}");
        }
        assert!(!AllowList {
            dns: vec!["a".into()],
            ..Default::default()
        }
        .admits(b"junk"));
    }

    #[test]
    fn dns_wildcards_stand_for_exactly_one_label() {
        assert!(dns_matches("*.svc.example.com", "a.svc.example.com"));
        assert!(dns_matches("*.svc.example.com", "A.SVC.example.com"));
        assert!(!dns_matches("*.svc.example.com", "a.b.svc.example.com"));
        assert!(!dns_matches("*.svc.example.com", "svc.example.com"));
        assert!(!dns_matches("*.svc.example.com", ".svc.example.com"));
        assert!(!dns_matches("*.svc.example.com", "*.svc.example.com.evil"));
        assert!(dns_matches("*.svc.example.com", "*.svc.example.com"));
        assert!(!dns_matches("a.svc.example.com", "*.svc.example.com"));
    }

    #[test]
    fn uri_prefixes_only_with_a_trailing_star() {
        assert!(uri_matches("spiffe://x/ns/*", "spiffe://x/ns/a"));
        assert!(!uri_matches("spiffe://x/ns/", "spiffe://x/ns/a"));
        assert!(uri_matches("spiffe://x/ns/a", "spiffe://x/ns/a"));
    }

    #[test]
    fn sha256_entries_take_colons_and_any_case() {
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_sha256(hex), parse_sha256(&colons.to_lowercase()));
        assert_eq!(parse_sha256(hex).unwrap()[0], 0x9f);
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
    }
}
