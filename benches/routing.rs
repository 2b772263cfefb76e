//! Per-request cost of sites and per-path routing: checking that a request's Host belongs to
//! the site the handshake chose (among a few sites, exact and wildcard names), normalizing the
//! request-target (the common already-normal case, which copies nothing, and a target that
//! needs every kind of work) and choosing the longest-prefix route among a typical handful.
//! Compare with `header_injection/prebuilt` (parse + inject), which every request pays anyway.

use criterion::{criterion_group, criterion_main, Criterion};

use certgate::http::path::normalize;
use certgate::http::request::{parse_request, Limits};
use certgate::http::Parse;
use certgate::policy::routes::{Route, Routes};
use certgate::proxy::Hosts;
use certgate::sni::SniMap;

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
    // The Host check of a listener with four sites: the Host value (without its port) looked
    // up among exact and wildcard names, compared with the connection's site.
    let mut names = SniMap::default();
    for (i, pats) in [
        &["api.example.com"][..],
        &["*.internal.example.com", "internal.example.com"][..],
        &["www.example.com", "example.com"][..],
        &["*.apps.example.net"][..],
    ]
    .iter()
    .enumerate()
    {
        let pats: Vec<String> = pats.iter().map(|p| p.to_string()).collect();
        names.add(&pats, i).unwrap();
    }
    let hosts = Hosts { names };
    let raw: &[u8] =
        b"GET /api/v1/items HTTP/1.1\r\nHost: Billing.Internal.Example.com:8443\r\nAccept: */*\r\n\r\n";
    let head = match parse_request(raw, &Limits::default()) {
        Ok(Parse::Complete(h)) => h,
        _ => unreachable!("a valid request"),
    };
    group.bench_function("host_check_4_sites", |b| {
        b.iter(|| {
            let name = std::str::from_utf8(head.host_name(std::hint::black_box(raw))).unwrap();
            std::hint::black_box(hosts.site_of(name) == 2)
        })
    });
    group.bench_function("host_check_normalize_and_lookup", |b| {
        b.iter(|| {
            let name = std::str::from_utf8(head.host_name(std::hint::black_box(raw))).unwrap();
            let site = hosts.site_of(name);
            let target = head.target(raw);
            let n = normalize(target, &mut out).unwrap();
            std::hint::black_box((
                site,
                routes.matching(n.path(target, &out)).map(|r| r.target),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
