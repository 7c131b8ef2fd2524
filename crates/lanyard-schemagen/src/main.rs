//! `lanyard-schemagen`: writes `crates/lanyard-proto/src/ue_table.rs` from Apple's
//! device-management schema (the YAML of `mdm/commands` and `mdm/profiles`).
//!
//! ```text
//! cargo run -p lanyard-schemagen -- --schema ../shared/apple-schema \
//!     --out crates/lanyard-proto/src/ue_table.rs
//! cargo run -p lanyard-schemagen -- --schema ../shared/apple-schema \
//!     --out crates/lanyard-proto/src/ue_table.rs --check   # exit 1 when out of date
//! ```
//!
//! The generation itself lives in `generate.rs`, which lanyard-proto's tests also compile (by
//! path) to check that the committed table matches the schema.

mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

struct Args {
    schema: PathBuf,
    out: PathBuf,
    check: bool,
}

const USAGE: &str =
    "usage: lanyard-schemagen --schema <apple-schema dir> --out <ue_table.rs> [--check]";

fn parse_args() -> Result<Args> {
    let mut schema = None;
    let mut out = None;
    let mut check = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--schema" => {
                schema = Some(PathBuf::from(it.next().context("--schema needs a value")?))
            }
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a value")?)),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        schema: schema.context(USAGE)?,
        out: out.context(USAGE)?,
        check,
    })
}

fn run() -> Result<ExitCode> {
    let args = parse_args()?;
    let text = generate::generate(&args.schema)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading the schema at {}", args.schema.display()))?;
    if args.check {
        let current = std::fs::read_to_string(&args.out)
            .with_context(|| format!("reading {}", args.out.display()))?;
        if current == text {
            println!("{} is up to date", args.out.display());
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} is out of date: run lanyard-schemagen without --check",
            args.out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} ({} bytes)", args.out.display(), text.len());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lanyard-schemagen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
