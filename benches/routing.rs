//! Per-request cost of per-path routing: normalizing the request-target (the common
//! already-normal case, which copies nothing, and a target that needs every kind of work) and
//! choosing the longest-prefix route among a typical handful. Compare with
//! `header_injection/prebuilt` (parse + inject), which every request pays anyway.

use criterion::{criterion_group, criterion_main, Criterion};

use certgate::http::path::normalize;
use certgate::policy::routes::{Route, Routes};

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    let mut out = Vec::with_capacity(256);

    let normal: &[u8] = b"/api/v1/items?page=2&sort=desc";
    group.bench_function("normalize_already_normal", |b| {
        b.iter(|| {
            let n = normalize(std::hint::black_box(normal), &mut out).unwrap();
            std::hint::black_box(n.path(normal, &out).len())
        })
    });

    let messy: &[u8] = b"/api/./v1//users/%7Ejohn/../me?x=1";
    group.bench_function("normalize_rewrite", |b| {
        b.iter(|| {
            let n = normalize(std::hint::black_box(messy), &mut out).unwrap();
            std::hint::black_box(n.path(messy, &out).len())
        })
    });

    let prefixes = [
        "/",
        "/admin/",
        "/api/",
        "/api/v1/",
        "/api/v1/admin/",
        "/metrics",
        "/static/",
        "/.well-known/",
    ];
    let routes = Routes::new(prefixes.iter().enumerate().map(|(i, p)| Route {
        path_prefix: (*p).to_string(),
        required: false,
        allow: None,
        target: i,
    }))
    .unwrap();
    // Falls through six longer prefixes before `/api/v1/` matches.
    let path: &[u8] = b"/api/v1/items";
    group.bench_function("route_lookup_8", |b| {
        b.iter(|| {
            std::hint::black_box(
                routes
                    .matching(std::hint::black_box(path))
                    .map(|r| r.target),
            )
        })
    });
    group.bench_function("normalize_and_lookup", |b| {
        b.iter(|| {
            let n = normalize(std::hint::black_box(normal), &mut out).unwrap();
            std::hint::black_box(routes.matching(n.path(normal, &out)).map(|r| r.target))
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
