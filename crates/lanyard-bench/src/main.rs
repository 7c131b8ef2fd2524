//! `lanyard-bench`: the load tool of Lanyard's command channel (development only). It starts
//! `lanyard serve` (SQLite, or PostgreSQL with `--postgres-url`) or targets `--server`, enrolls
//! simulated Macs, and measures enrollment, command round trips, fan-out and the next-command
//! lookup. See the `lanyard_bench` library and docs/BENCHMARKS.md.
//!
//! ```text
//! lanyard-bench --macs 20 --round-trips 20000 --concurrency 32
//! lanyard-bench --fanout 10000 --postgres-url postgres://postgres@127.0.0.1:5432/postgres
//! lanyard-bench --lookup-rows 1000000 [--json]
//! ```
//!
//! Progress goes to stderr; the results table (or JSON) to stdout.

use std::process::ExitCode;

use clap::Parser;
use lanyard_bench::{render_table, run, BenchArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = BenchArgs::parse();
    if let Some(dir) = &args.ceiling_serve {
        return match lanyard_bench::serve_ceiling(dir, args.ceiling_commands).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let json = args.json;
    match run(args).await {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render_table(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
