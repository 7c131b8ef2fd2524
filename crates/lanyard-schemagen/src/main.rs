//! `lanyard-schemagen`: writes lanyard-proto's generated tables from Apple's device-management
//! schema: `ue_table.rs` (the YAML of `mdm/commands` and `mdm/profiles`) and
//! `declaration_table.rs` (the YAML of `declarative/declarations` and `declarative/status`).
//!
//! ```text
//! cargo run -p lanyard-schemagen -- --schema ../shared/apple-schema \
//!     --out crates/lanyard-proto/src/ue_table.rs \
//!     --declarations-out crates/lanyard-proto/src/declaration_table.rs
//! cargo run -p lanyard-schemagen -- --schema ../shared/apple-schema \
//!     --out crates/lanyard-proto/src/ue_table.rs --check   # exit 1 when out of date
//! ```
//!
//! The generation itself lives in `generate.rs` and its child `declarations.rs`, which
//! lanyard-proto's tests also compile (by path) to check that the committed tables match the
//! schema.

mod generate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

struct Args {
    schema: PathBuf,
    out: Option<PathBuf>,
    declarations_out: Option<PathBuf>,
    check: bool,
}

const USAGE: &str = "usage: lanyard-schemagen --schema <apple-schema dir> [--out <ue_table.rs>] \
                     [--declarations-out <declaration_table.rs>] [--check]";

fn parse_args() -> Result<Args> {
    let mut schema = None;
    let mut out = None;
    let mut declarations_out = None;
    let mut check = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--schema" => {
                schema = Some(PathBuf::from(it.next().context("--schema needs a value")?))
            }
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a value")?)),
            "--declarations-out" => {
                declarations_out = Some(PathBuf::from(
                    it.next().context("--declarations-out needs a value")?,
                ))
            }
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if out.is_none() && declarations_out.is_none() {
        bail!("nothing to write: give --out and/or --declarations-out\n{USAGE}");
    }
    Ok(Args {
        schema: schema.context(USAGE)?,
        out,
        declarations_out,
        check,
    })
}

/// Writes (or, with `check`, compares) one generated table; false when it is out of date.
fn emit(out: &Path, text: &str, check: bool) -> Result<bool> {
    if check {
        let current =
            std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
        if current == text {
            println!("{} is up to date", out.display());
            return Ok(true);
        }
        eprintln!(
            "{} is out of date: run lanyard-schemagen without --check",
            out.display()
        );
        return Ok(false);
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} bytes)", out.display(), text.len());
    Ok(true)
}

fn run() -> Result<ExitCode> {
    let args = parse_args()?;
    let reading = || format!("reading the schema at {}", args.schema.display());
    let mut current = true;
    if let Some(out) = &args.out {
        let text = generate::generate(&args.schema)
            .map_err(anyhow::Error::msg)
            .with_context(reading)?;
        current &= emit(out, &text, args.check)?;
    }
    if let Some(out) = &args.declarations_out {
        let text = generate::declarations::generate(&args.schema)
            .map_err(anyhow::Error::msg)
            .with_context(reading)?;
        current &= emit(out, &text, args.check)?;
    }
    Ok(if current {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
