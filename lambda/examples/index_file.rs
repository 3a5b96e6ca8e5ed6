//! Indexes a local file as the Lambda indexes an S3 object, and prints the
//! index document's statistics (not the token filter) as JSON on stdout:
//! `cargo run --release -p logferry-indexer --no-default-features --example index_file -- FILE`.
//! Used by `bench/indexer.sh`. Encoding from the extension (.gz, .zst).

use std::process::ExitCode;

use logferry_indexer::config::IndexerConfig;
use logferry_indexer::index::{Encoding, index_stream};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: index_file FILE");
        return ExitCode::from(2);
    };
    let cfg = match IndexerConfig::from_lookup(&|k: &str| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("index_file: {e}");
            return ExitCode::from(78);
        }
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("index_file: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or_default();
    let started = std::time::Instant::now();
    match index_stream(file, Encoding::detect(None, &path), &cfg.index) {
        Ok(stats) => {
            let elapsed = started.elapsed().as_secs_f64();
            let doc = stats.into_doc("local", &path, "", size);
            let json = serde_json::json!({
                "records": doc.records,
                "bad_lines": doc.bad_lines,
                "uncompressed_bytes": doc.uncompressed_bytes,
                "stored_bytes": size,
                "min_time": doc.min_time,
                "max_time": doc.max_time,
                "distinct_complete": doc.distinct.iter().map(|(k, v)| (k.clone(), v.complete)).collect::<std::collections::BTreeMap<_, _>>(),
                "token_items": doc.tokens.filter.items,
                "filter_bits": doc.tokens.filter.m,
                "index_document_bytes": doc.to_bytes().len(),
                "elapsed_s": elapsed,
            });
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("index_file: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
