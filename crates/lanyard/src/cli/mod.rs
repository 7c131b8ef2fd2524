//! Admin sub-commands, one module each. They act on the same data directory and database as
//! `serve`, through the same domain services, so every change is validated and audited exactly as
//! from the API. This module holds what they share: output as a table or JSON, and passwords read
//! from a flag, a pipe or a terminal.

pub mod abm;
pub mod admin;
pub mod attribute;
pub mod audit;
pub mod command;
pub mod device;
pub mod enrollment_settings;
pub mod idp;
pub mod push_cert;
pub mod user;

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as an aligned text table.
pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    let count = rows.len();
    for r in rows {
        line(r);
    }
    if count == 0 {
        println!("(none)");
    }
}

/// A password from the flag, or read from standard input (one line) when the flag is `-` or
/// absent and input is piped, or prompted for on a terminal.
pub(crate) fn read_password(flag: Option<String>, what: &str) -> Result<String> {
    match flag.as_deref() {
        Some("-") | None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("{what}: ");
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let p = line.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                bail!("no password given (use --password or pipe it on standard input)");
            }
            Ok(p)
        }
        Some(p) => Ok(p.to_string()),
    }
}
