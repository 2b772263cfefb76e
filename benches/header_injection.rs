//! Per-request cost of turning a client's request head into the upstream head: parse (httparse),
//! drop client copies of the certificate header, add the proxy's headers. certgate injects the
//! certificate line prebuilt once per connection; the baseline builds it per request, as a
//! proxy that formats `$ssl_client_escaped_cert` on every request does.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use certgate::http::request::{parse_request, Inject, Limits};
use certgate::http::Parse;

mod support;

fn request_head(headers: usize) -> Vec<u8> {
    let mut head =
        b"GET /api/v1/items?page=2&sort=desc HTTP/1.1\r\nHost: app.example.com\r\n".to_vec();
    let typical = [
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        "Accept: application/json, text/plain, */*",
        "Accept-Language: en-GB,en;q=0.9",
        "Accept-Encoding: gzip, deflate, br",
        "X-Forwarded-Client-Cert: Hash=forged-by-the-client",
    ];
    for i in 0..headers.saturating_sub(1) {
        if i < typical.len() {
            head.extend_from_slice(typical[i].as_bytes());
        } else {
            head.extend_from_slice(format!("X-Custom-{i}: value-{i}-abcdefghijklmnop").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn injection(c: &mut Criterion) {
    let pki = support::pki();
    let chain = vec![
        pki.client.cert_der.clone(),
        pki.intermediate.issued().cert_der.clone(),
    ];
    let prebuilt = certgate::xfcc::header_line(&chain).unwrap();
    let limits = Limits::default();
    let mut out = Vec::with_capacity(16 * 1024);
    let mut group = c.benchmark_group("header_injection");
    for n in [5usize, 20, 50] {
        let head = request_head(n);
        group.bench_with_input(BenchmarkId::new("prebuilt", n), &head, |b, head| {
            b.iter(|| {
                let Ok(Parse::Complete(h)) = parse_request(head, &limits) else {
                    panic!("parse")
                };
                out.clear();
                let inject = Inject {
                    client_addr: b"203.0.113.7",
                    forwarded: b"for=203.0.113.7;proto=https",
                    xfcc_line: Some(&prebuilt),
                    upstream_host: b"app.internal:8080",
                    upgrade: false,
                    target: None,
                };
                h.write_upstream(head, &inject, &mut out);
                std::hint::black_box(out.len())
            })
        });
        // The injection alone: the head is parsed once, outside the measured loop.
        let Ok(Parse::Complete(parsed)) = parse_request(&head, &limits) else {
            panic!("parse")
        };
        group.bench_with_input(BenchmarkId::new("inject_only", n), &head, |b, head| {
            b.iter(|| {
                out.clear();
                let inject = Inject {
                    client_addr: b"203.0.113.7",
                    forwarded: b"for=203.0.113.7;proto=https",
                    xfcc_line: Some(&prebuilt),
                    upstream_host: b"app.internal:8080",
                    upgrade: false,
                    target: None,
                };
                parsed.write_upstream(head, &inject, &mut out);
                std::hint::black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("parse_only", n), &head, |b, head| {
            b.iter(|| std::hint::black_box(parse_request(head, &limits).is_ok()))
        });
        group.bench_with_input(
            BenchmarkId::new("formatted_per_request", n),
            &head,
            |b, head| {
                b.iter(|| {
                    let Ok(Parse::Complete(h)) = parse_request(head, &limits) else {
                        panic!("parse")
                    };
                    let line = certgate::xfcc::header_line(&chain).unwrap();
                    out.clear();
                    let inject = Inject {
                        client_addr: b"203.0.113.7",
                        forwarded: b"for=203.0.113.7;proto=https",
                        xfcc_line: Some(&line),
                        upstream_host: b"app.internal:8080",
                        upgrade: false,
                        target: None,
                    };
                    h.write_upstream(head, &inject, &mut out);
                    std::hint::black_box(out.len())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, injection);
criterion_main!(benches);
