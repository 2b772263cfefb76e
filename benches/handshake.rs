//! Server-side cost of one TLS 1.3 handshake (ECDSA P-256, X25519), in memory: the time spent
//! inside the server's rustls calls only (`iter_custom`), for each certgate policy.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

mod support;

fn handshakes(c: &mut Criterion) {
    let pki = support::pki();
    let mut group = c.benchmark_group("handshake");
    let cases = [
        (
            "server_auth_only",
            support::server(&pki, "ignore", false, false, 0),
            false,
        ),
        (
            "mtls_no_client_ca",
            support::server(&pki, "require", false, false, 0),
            true,
        ),
        (
            "mtls_client_ca_cache_miss",
            support::server(&pki, "require", true, false, 0),
            true,
        ),
        (
            "mtls_client_ca_cache_hit",
            support::server(&pki, "require", true, false, 1024),
            true,
        ),
    ];
    for (name, server, with_cert) in &cases {
        let client = support::client(&pki, *with_cert);
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| support::server_side_handshake(server, &client))
                    .sum::<Duration>()
            })
        });
    }

    // TLS 1.3 resumption: the client keeps tickets from a first full handshake.
    let server = support::server(&pki, "require", true, true, 1024);
    let client = support::client(&pki, true);
    support::server_side_handshake(&server, &client);
    group.bench_function("mtls_tls13_resumed", |b| {
        b.iter_custom(|iters| {
            // Each resumption uses up a ticket and earns new ones, so every iteration resumes.
            (0..iters)
                .map(|_| support::server_side_handshake(&server, &client))
                .sum::<Duration>()
        })
    });
    group.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
