//! Nanoseconds per operation on the per-request path: parsing and rewriting a
//! request head, decoding chunked framing, and picking a backend.
//!
//! Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use corelb::backends::round_robin::RoundRobin;
use corelb::http::chunked::ChunkedDecoder;
use corelb::http::head::{self, Limits};
use corelb::http::rewrite::{Forwarding, write_request_head};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// What `wrk` sends, and a browser-sized head.
const WRK_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const BROWSER_HEAD: &[u8] = b"GET /static/app.js?v=12 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://example.com/\r\nConnection: keep-alive\r\nCookie: session=0123456789abcdef; theme=dark\r\nSec-Fetch-Dest: script\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\nIf-None-Match: \"abc123\"\r\n\r\n";

/// The proxy's defaults.
const LIMITS: Limits = Limits {
    max_header_bytes: 16 * 1024,
    max_body_bytes: 0,
};

fn parse_and_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_head");
    for (name, head) in [("wrk", WRK_HEAD), ("browser", BROWSER_HEAD)] {
        let mut out = Vec::with_capacity(2048);
        let fwd = Forwarding {
            client_ip: "127.0.0.1".parse().unwrap(),
            host: None,
            https: false,
            request_id: 0x5eed,
        };
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                // The proxy's own pipeline: parse, refuse or accept, rewrite.
                let (n, _, ()) = head::read_request(
                    black_box(head),
                    LIMITS,
                    |_| {},
                    |req, info| {
                        write_request_head(&mut out, req, info, fwd);
                        Ok(())
                    },
                )
                .unwrap()
                .unwrap();
                black_box((n, out.len()))
            })
        });
    }
    group.finish();
}

fn chunked(c: &mut Criterion) {
    let mut small = Vec::new();
    for _ in 0..64 {
        small.extend_from_slice(b"10\r\n0123456789abcdef\r\n");
    }
    small.extend_from_slice(b"0\r\n\r\n");
    let mut large = Vec::new();
    large.extend_from_slice(b"10000\r\n");
    large.extend(std::iter::repeat_n(b'x', 0x10000));
    large.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut group = c.benchmark_group("chunked_decode");
    for (name, body) in [("64x16B", &small), ("1x64KiB", &large)] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut d = ChunkedDecoder::new();
                let n = d.feed(black_box(body)).unwrap();
                assert!(d.is_done());
                black_box(n)
            })
        });
    }
    group.finish();
}

fn pick_backend(c: &mut Criterion) {
    let rr = RoundRobin::new(3);
    c.bench_function("round_robin_pick", |b| b.iter(|| black_box(rr.pick())));
}

criterion_group!(benches, parse_and_rewrite, chunked, pick_backend);
criterion_main!(benches);
