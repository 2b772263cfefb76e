//! Cost of building the `X-Forwarded-Client-Cert` line from DER (once per new client chain).

use criterion::{criterion_group, criterion_main, Criterion};

mod support;

fn xfcc(c: &mut Criterion) {
    let pki = support::pki();
    let leaf = vec![pki.client.cert_der.clone()];
    let chain = vec![
        pki.client.cert_der.clone(),
        pki.intermediate.issued().cert_der.clone(),
    ];
    let mut group = c.benchmark_group("xfcc");
    group.bench_function("leaf_only", |b| {
        b.iter(|| certgate::xfcc::header_line(std::hint::black_box(&leaf)))
    });
    group.bench_function("leaf_and_intermediate", |b| {
        b.iter(|| certgate::xfcc::header_line(std::hint::black_box(&chain)))
    });
    group.finish();
}

criterion_group!(benches, xfcc);
criterion_main!(benches);
