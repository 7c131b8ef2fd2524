//! Admin sub-commands, one module each. They act on the same data directory and database as
//! `serve`, through the same domain services, so every change is validated and audited exactly as
//! from the API. This module holds what they share: output as a table or JSON, and passwords read
//! from a flag, a pipe or a terminal.

pub mod abm;
pub mod admin;
pub mod attribute;
pub mod audit;
pub mod command;
pub mod declaration;
pub mod device;
pub mod enrollment_settings;
pub mod idp;
pub mod push_cert;
pub mod set;
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

/// A list as JSON with `--json`, otherwise as a table of `headers` with a `row` for each item.
pub(crate) fn print_list<T: Serialize>(
    out: &OutputArgs,
    list: Vec<T>,
    headers: &[&str],
    row: impl FnMut(T) -> Vec<String>,
) -> Result<()> {
    if out.json {
        return print_json(&list);
    }
    print_table(headers, list.into_iter().map(row).collect());
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
            let p = read_line(what, "the password")?;
            if p.is_empty() {
                bail!("no password given (use --password or pipe it on standard input)");
            }
            Ok(p)
        }
        Some(p) => Ok(p.to_string()),
    }
}

/// One line of standard input without its line ending (empty when there is none), after
/// `prompt` on a terminal; `what` names it in the error when it cannot be read.
pub(crate) fn read_line(prompt: &str, what: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read {what} from standard input"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
