//! Replays every input in tests/fuzz_regressions/<target>/ through the invariant
//! checks the fuzz targets run (src/checks.rs): seeds at the edges the checks watch
//! (`seed-*`), the corpus the fuzzers built in their 10-minute runs, minimised with
//! `cargo fuzz cmin` (named by hash), and every input scripts/fuzz.sh ever saw fail.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{} fails its check again", path.display());
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
    println!("{target}: {count} inputs replayed");
}

#[test]
fn request_head_inputs() {
    replay("request_head", corelb::checks::request_head);
}

#[test]
fn response_head_inputs() {
    replay("response_head", corelb::checks::response_head);
}

#[test]
fn chunked_inputs() {
    replay("chunked", corelb::checks::chunked);
}

#[test]
fn proxy_header_inputs() {
    replay("proxy_header", corelb::checks::proxy_header);
}
