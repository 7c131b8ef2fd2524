//! Every setting of the binary, declared once, and how their values are layered.
//!
//! A setting is one field of [`GlobalSettings`], [`AbmSettings`] or [`ServeSettings`]: its name,
//! type, default and doc comment. Everything else derives from that field:
//! - the flag, `--data-dir` (clap, from the field name);
//! - the environment twin, `LANYARD_DATA_DIR` ([`env_name`]);
//! - the key in the TOML file given with `--config`, `data_dir` (the field name);
//! - its row in `docs/CONFIGURATION.md` (`markdown_table`, checked by a test).
//!
//! The layers, each over the one before: built-in defaults < the TOML file < `LANYARD_*`
//! environment < command-line flags. [`parse`] does it with clap alone: a value from the file or
//! the environment becomes that flag's default before the command line is parsed, after being
//! checked with the flag's own parser, so each value is parsed and validated in one place.
//!
//! Secrets are never settings: the secret key, API keys and tokens are read from files named
//! by settings (`--secret-key-file`, `--metrics-token-file`), never from argv, the environment
//! or the TOML file.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Arg, ArgAction, Args, Command};
use lanyard_http::client::Cidr;

/// The sub-command whose flags [`ServeSettings`] are.
pub const SERVE: &str = "serve";

/// How the layers are explained under `--help`.
pub const LAYERS_HELP: &str = "Every setting can also come from its environment twin (--data-dir: \
     LANYARD_DATA_DIR) or from the TOML file given with --config (data_dir = \"…\"); flags win \
     over the environment, which wins over the file. The table: docs/CONFIGURATION.md";

/// The environment variable naming the TOML file (`--config`).
pub const CONFIG_ENV: &str = "LANYARD_CONFIG";

/// `--config`: the one flag that is not a setting (it says where the settings are).
#[derive(Debug, Clone, Args)]
pub struct ConfigFile {
    /// A TOML file with any of the settings (keys are the flag names in snake_case; the
    /// environment and flags win over it). Environment: LANYARD_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Settings every command reads: where the data is, logging, and the Apple services.
#[derive(Debug, Clone, Args)]
pub struct GlobalSettings {
    /// The data directory (database, keys, exported CA certificate).
    #[arg(long, global = true, value_name = "DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// sqlite://PATH or postgres://user@host/db. Default: sqlite://<data-dir>/lanyard.db
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// The file holding the key that seals private keys at rest (base64 of 32 bytes; mode
    /// 0600). Created on first start while the database holds nothing sealed yet. Every server
    /// process on one database must use the same key. Default: <data-dir>/secret.key
    #[arg(long, global = true, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Seconds a database query waits for a connection (PostgreSQL down: requests fail with
    /// 503 after this).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 5,
          value_parser = at_least_one)]
    pub database_acquire_timeout: u64,
    /// Log format of `serve`; the filter is LANYARD_LOG (e.g. debug).
    #[arg(long, global = true, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// APNs base URL (https://api.sandbox.push.apple.com for development certificates).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        default_value = "https://api.push.apple.com"
    )]
    pub apns_url: String,
    /// Extra CA certificate (PEM) to trust for the APNs server (for test servers).
    #[arg(long, global = true, value_name = "FILE")]
    pub apns_ca_cert: Option<PathBuf>,
    /// The CSR signing service that `push-cert request --signing-service`, the portal and the
    /// API send push certificate requests to (https, or http to a loopback address). Its API
    /// key is given with each request, never here.
    #[arg(long, global = true, value_name = "URL",
          default_value = lanyard_core::pushcert::DEFAULT_SIGNING_SERVICE_URL)]
    pub signing_service_url: String,
}

/// Apple Business Manager (device assignment) settings.
#[derive(Debug, Clone, Args)]
pub struct AbmSettings {
    /// Apple Business Manager (Device Assignment) base URL.
    #[arg(long, global = true, value_name = "URL",
          default_value = lanyard_apple::abm::DEFAULT_ABM_URL)]
    pub abm_url: String,
    /// Extra CA certificate (PEM) to trust for the ABM server (for test servers).
    #[arg(long, global = true, value_name = "FILE")]
    pub abm_ca_cert: Option<PathBuf>,
    /// Seconds before an ABM request times out.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30,
          value_parser = at_least_one)]
    pub abm_timeout: u64,
    /// Devices per page asked of ABM (1-1000).
    #[arg(long, global = true, value_name = "COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub abm_page_size: u32,
    /// `serve`: minutes between device syncs of every ABM server token.
    #[arg(long, global = true, value_name = "MINUTES", default_value_t = 60,
          value_parser = at_least_one)]
    pub abm_sync_interval: u64,
    /// `serve`: do not run the periodic device sync (sync with `lanyard abm sync`).
    #[arg(long, global = true)]
    pub no_abm_sync: bool,
    /// Seconds a device sync holds its token's lease between pages: a server process that
    /// stops mid-sync blocks that token's sync on the others for at most this long. Longer
    /// than --abm-timeout (a page's request).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 900,
          value_parser = at_least_one)]
    pub abm_sync_lease: u64,
}

/// Settings of `lanyard serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// The public base URL devices and people use, an https:// URL, e.g.
    /// https://mdm.example.com. Default: https://<listen address>
    #[arg(long, value_name = "URL", value_parser = public_url)]
    pub public_url: Option<url::Url>,
    /// PEM certificate chain to serve instead of a certificate for the public host issued by
    /// Lanyard's CA (e.g. a publicly trusted one); with --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP, for running behind a TLS-terminating reverse proxy (needs
    /// --public-url). This alone does not trust the proxy's X-Forwarded-For: see
    /// --trusted-proxy.
    #[arg(long)]
    pub behind_proxy: bool,
    /// Address ranges (CIDR, comma-separated or repeated; in TOML a list) of reverse proxies
    /// whose X-Forwarded-For names the client: for a request from one of them, the client is
    /// the right-most X-Forwarded-For entry that is not itself a trusted proxy. Default: none
    /// (the client is always the TCP peer).
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub trusted_proxy: Vec<Cidr>,
    /// Organisation name shown on pages and in certificates.
    #[arg(long, value_name = "NAME", default_value = "Lanyard")]
    pub organization: String,
    /// Accept SCEP requests encrypted with single DES (some older SCEP clients). Apple devices
    /// never need this; replies are always AES.
    #[arg(long)]
    pub scep_allow_des: bool,
    /// PEM CA certificate(s) trusted, besides the system roots, when talking to OpenID Connect
    /// identity providers (a provider with a private CA).
    #[arg(long, value_name = "FILE")]
    pub oidc_ca_cert: Option<PathBuf>,
    /// How long a device identity certificate is valid: a number and a unit, s, m, h or d
    /// (one minute to 1826 days).
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_duration)]
    pub identity_lifetime: Duration,
    /// Renew a device's identity certificate (reinstall its enrollment profile with a new SCEP
    /// challenge) once it expires within this; at most the lifetime.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub identity_renewal_window: Duration,
    /// How often to look for identity certificates to renew.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub identity_renewal_interval: Duration,
    /// How often to send pushes that were asked for and not sent (e.g. by a server process
    /// that stopped before sending them); a request is swept once it is this old.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub push_sweep_interval: Duration,
    /// Seconds a connection has to deliver a complete request head: a new connection's first
    /// request (TLS handshake included) and, on an idle connection, from the next request's
    /// first byte.
    #[arg(long, value_name = "SECONDS", value_parser = at_least_one,
          default_value_t = crate::connections::Limits::DEFAULT_HEADER_READ_SECS)]
    pub header_read_timeout: u64,
    /// Seconds a connection with no request in flight stays open after its last request (or
    /// the last byte it was sent).
    #[arg(long, value_name = "SECONDS", value_parser = at_least_one,
          default_value_t = crate::connections::Limits::DEFAULT_IDLE_SECS)]
    pub idle_timeout: u64,
    /// Seconds a request body may deliver nothing before the request fails (400) and the
    /// connection is closed.
    #[arg(long, value_name = "SECONDS", value_parser = at_least_one,
          default_value_t = crate::connections::Limits::DEFAULT_BODY_READ_SECS)]
    pub body_read_timeout: u64,
    /// Connections open at once (TLS handshakes included); more are closed at once. Lowered,
    /// with a warning, when the open-file limit leaves less room.
    #[arg(long, value_name = "COUNT", value_parser = at_least_one_usize,
          default_value_t = crate::connections::Limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Free space (MiB) the data directory's disk must have for /healthz to answer ok.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub min_free_disk_mb: u64,
    /// Strict-Transport-Security max-age in seconds; 0 sends none. Default: 31536000 (a year)
    /// when Lanyard serves TLS; none with --behind-proxy.
    #[arg(long, value_name = "SECONDS")]
    pub hsts_max_age: Option<u64>,
    /// Serve /metrics on this address instead (plain HTTP), e.g. 127.0.0.1:9090; the main
    /// address then answers 404 for /metrics. Default: /metrics is on --listen
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// A file holding a token (mode 0600): /metrics then answers only requests with
    /// `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

/// How `serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A duration written as a whole number and a unit: `s`, `m`, `h` or `d` (`30d`, `600s`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!("`{text}` is not a duration; write a number and a unit s, m, h or d (e.g. 30d, 12h, 600s)")
    };
    let unit = t.chars().last().ok_or_else(bad)?;
    let secs_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    let secs = n.checked_mul(secs_per).ok_or_else(bad)?;
    if secs == 0 {
        return Err(format!(
            "`{text}` is zero; give a duration of at least a second"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// A whole number of at least 1 (seconds, minutes).
fn at_least_one(text: &str) -> std::result::Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{text}` is not a whole number: {e}")),
    }
}

fn at_least_one_usize(text: &str) -> std::result::Result<usize, String> {
    let n = at_least_one(text)?;
    usize::try_from(n).map_err(|_| format!("`{text}` is too large"))
}

/// `--public-url`: Macs enroll only over HTTPS, so an https:// URL with a host.
fn public_url(text: &str) -> std::result::Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(
            "must be an https:// URL: Macs enroll only over HTTPS (behind a proxy, \
                    give the proxy's https URL)"
                .into(),
        );
    }
    if url.host_str().is_none() {
        return Err("needs a host name".into());
    }
    Ok(url)
}

/// A setting's environment twin: `LANYARD_` and its name in upper case.
pub fn env_name(id: &str) -> String {
    format!("LANYARD_{}", id.to_uppercase())
}

/// One setting as the command line knows it: its flag, and where it sits.
#[derive(Debug, Clone)]
pub struct Setting {
    /// `None`: a global flag; else the sub-command it belongs to.
    pub subcommand: Option<&'static str>,
    pub arg: Arg,
}

impl Setting {
    /// The TOML key: the field's name.
    pub fn key(&self) -> &str {
        self.arg.get_id().as_str()
    }

    pub fn env(&self) -> String {
        env_name(self.key())
    }

    pub fn flag(&self) -> String {
        format!("--{}", self.arg.get_long().unwrap_or_default())
    }

    fn kind(&self) -> Kind {
        match self.arg.get_action() {
            ArgAction::SetTrue => Kind::Switch,
            ArgAction::Append => Kind::List,
            _ => Kind::Value,
        }
    }

    /// The built-in default as the docs show it: clap's, or for a setting whose default
    /// follows from others, what its doc comment says after `Default:`.
    #[cfg(test)]
    pub fn default_text(&self) -> String {
        if self.kind() == Kind::Switch {
            return "off".into();
        }
        let values: Vec<String> = self
            .arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match (values.is_empty(), self.doc_parts().1) {
            (false, _) => values.join(","),
            (true, Some(default)) => default,
            (true, None) => "none".into(),
        }
    }

    /// The doc comment on one line, without its `Default:` sentence.
    #[cfg(test)]
    pub fn doc(&self) -> String {
        self.doc_parts().0
    }

    #[cfg(test)]
    fn doc_parts(&self) -> (String, Option<String>) {
        let text = self
            .arg
            .get_long_help()
            .or(self.arg.get_help())
            .map(|h| {
                h.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        match text.split_once(" Default: ") {
            Some((doc, default)) => (
                doc.to_string(),
                Some(default.trim_end_matches('.').to_string()),
            ),
            None => (text, None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `bool` flag, given without a value.
    Switch,
    /// Several values (`Vec`): repeated or comma-separated flags, a TOML list.
    List,
    Value,
}

/// Every setting, in declaration order.
pub fn all() -> Vec<Setting> {
    let of = |subcommand, augment: fn(Command) -> Command| {
        augment(Command::new("lanyard"))
            .get_arguments()
            .map(|arg| Setting {
                subcommand,
                arg: arg.clone(),
            })
            .collect::<Vec<_>>()
    };
    [
        of(None, GlobalSettings::augment_args),
        of(None, AbmSettings::augment_args),
        of(Some(SERVE), ServeSettings::augment_args),
    ]
    .concat()
}

/// Parses the command line of `C` with every setting layered: built-in defaults < the TOML
/// file (`--config` or `LANYARD_CONFIG`) < the environment (`env`) < flags. A clap error
/// (usage, `--help`) comes back as a [`clap::Error`] inside the [`anyhow::Error`].
pub fn parse<C: clap::Parser>(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<C> {
    // First the plain command line, for `--config` (and usage errors, `--help`).
    let first = C::command().try_get_matches_from(args)?;
    let config = first
        .get_one::<PathBuf>("config")
        .cloned()
        .or_else(|| env(CONFIG_ENV).map(PathBuf::from));
    let file = match &config {
        Some(path) => load(path)?,
        None => toml::Table::new(),
    };
    let origin = |path: &Path| format!("the config file {}", path.display());
    refuse_secrets(env, &file)?;
    let settings = all();
    if let Some(path) = &config {
        for key in file.keys() {
            if !settings.iter().any(|s| s.key() == key) {
                bail!(
                    "{}: unknown setting `{key}` (the keys are the flag names in snake_case; see \
                     docs/CONFIGURATION.md)",
                    origin(path)
                );
            }
        }
    }
    let mut cmd = C::command();
    for setting in &settings {
        let env_name = setting.env();
        // An empty variable (`LANYARD_LISTEN=`) counts as unset, as shells and compose files
        // write them.
        let layered = match env(&env_name).filter(|raw| !raw.is_empty()) {
            Some(raw) => {
                let text = raw
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("{env_name} is not valid UTF-8"))?;
                Some((from_env(setting, &text), env_name))
            }
            None => match (file.get(setting.key()), &config) {
                (Some(value), Some(path)) => Some((
                    from_toml(setting, value),
                    format!("{}: `{}`", origin(path), setting.key()),
                )),
                _ => None,
            },
        };
        let Some((values, from)) = layered else {
            continue;
        };
        let values = values.map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        check(setting, &values).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        cmd = with_default(cmd, setting, values);
    }
    let mut matches = cmd.try_get_matches_from(args)?;
    Ok(C::from_arg_matches_mut(&mut matches)?)
}

/// The config file as a TOML table.
fn load(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("invalid config file {}", path.display()))
}

/// The secret key is taken only from its file: argv and the environment are visible to other
/// local users and processes, and a config file is often shared or kept in version control.
/// (`--secret-key` does not exist, so clap refuses it.)
fn refuse_secrets(env: &dyn Fn(&str) -> Option<OsString>, file: &toml::Table) -> Result<()> {
    if env("LANYARD_SECRET_KEY").is_some() {
        bail!(
            "LANYARD_SECRET_KEY is no longer read: write the key to a file only its owner can \
             read and give --secret-key-file (LANYARD_SECRET_KEY_FILE)"
        );
    }
    if file.contains_key("secret_key") {
        bail!(
            "secret_key in the config file is no longer read: write the key to a file only its \
             owner can read and set secret_key_file"
        );
    }
    Ok(())
}

/// An environment value as the flag's values: a switch is true or false (1/0, yes/no, on/off
/// too), a list is comma-separated.
fn from_env(setting: &Setting, text: &str) -> std::result::Result<Vec<String>, String> {
    Ok(match setting.kind() {
        Kind::Switch => vec![switch(text)?.to_string()],
        Kind::List => text
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect(),
        Kind::Value => vec![text.to_string()],
    })
}

fn switch(text: &str) -> std::result::Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("`{text}` is not true or false")),
    }
}

/// A TOML value as the flag's values: a switch is a boolean, a list a list (or one string,
/// comma-separated), any other value a string or a number.
fn from_toml(setting: &Setting, value: &toml::Value) -> std::result::Result<Vec<String>, String> {
    use toml::Value as V;
    let scalar = |v: &V| match v {
        V::String(s) => Ok(s.clone()),
        V::Integer(n) => Ok(n.to_string()),
        other => Err(format!(
            "expected a string or a whole number, found {}",
            other.type_str()
        )),
    };
    match (setting.kind(), value) {
        (Kind::Switch, V::Boolean(b)) => Ok(vec![b.to_string()]),
        (Kind::Switch, other) => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
        (Kind::List, V::Array(items)) => items.iter().map(scalar).collect(),
        (Kind::List, V::String(s)) => from_env(setting, s),
        (_, v) => Ok(vec![scalar(v)?]),
    }
}

/// Checks values with the flag's own parser, as if they were given on the command line.
fn check(setting: &Setting, values: &[String]) -> std::result::Result<(), String> {
    if setting.kind() == Kind::Switch {
        return Ok(());
    }
    let flag = setting.flag();
    let probe = Command::new("lanyard")
        .no_binary_name(true)
        .arg(setting.arg.clone().global(false));
    let args = values.iter().map(|v| format!("{flag}={v}"));
    match probe.try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(e) => {
            use std::error::Error as _;
            let reason = match e.source() {
                Some(why) => why.to_string(),
                None => e
                    .render()
                    .to_string()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string(),
            };
            Err(format!("`{}` for {flag}: {reason}", values.join(",")))
        }
    }
}

/// Makes the layered values the flag's default.
fn with_default(cmd: Command, setting: &Setting, values: Vec<String>) -> Command {
    let set = move |arg: Arg| arg.default_values(values);
    match setting.subcommand {
        None => cmd.mut_arg(setting.key(), set),
        Some(sub) => cmd.mut_subcommand(sub, |s| s.mut_arg(setting.key(), set)),
    }
}

/// The Markdown table of every setting for docs/CONFIGURATION.md.
#[cfg(test)]
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| flag | environment | TOML key | default | what it is |\n|---|---|---|---|---|\n",
    );
    out.push_str(&format!(
        "| `--config` | `{CONFIG_ENV}` | — | none | {} |\n",
        "A TOML file with any of the settings below (not itself a key in the file)."
    ));
    for s in all() {
        let flag = match s.subcommand {
            None => format!("`{}`", s.flag()),
            Some(sub) => format!("`{sub} {}`", s.flag()),
        };
        out.push_str(&format!(
            "| {flag} | `{}` | `{}` | `{}` | {} |\n",
            s.env(),
            s.key(),
            s.default_text(),
            s.doc().replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use clap::CommandFactory;

    use super::*;
    use crate::{Action, Cli};

    /// `lanyard` with `args`, and `env` as the whole environment.
    fn command_line(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Vec<OsString>, HashMap<String, OsString>) {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let args = std::iter::once("lanyard")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        (args, env)
    }

    /// Parses `args` with `env` as the whole environment.
    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Cli> {
        let (args, env) = command_line(args, env);
        crate::parse_command_line(&args, &|name| env.get(name).cloned())
    }

    /// `serve`'s own parse (the whole command line's admin sub-commands left out) means what
    /// the whole command line means, and leaves everything else to it.
    #[test]
    fn serve_alone_parses_as_the_whole_command_line_does() {
        let whole = |args: &[&str], env: &[(&str, &str)]| {
            let (args, env) = command_line(args, env);
            let alone = parse::<Cli<crate::ServeOnly>>(&args, &|name| env.get(name).cloned());
            let whole = parse::<Cli>(&args, &|name| env.get(name).cloned());
            (alone, whole)
        };
        for (args, env) in [
            (&["serve"][..], &[][..]),
            (
                &["--data-dir", "d", "serve", "--listen", "127.0.0.1:9443"][..],
                &[("LANYARD_LOG_FORMAT", "json")][..],
            ),
            (
                &["serve", "--public-url", "https://mdm.example.com"][..],
                &[("LANYARD_DATABASE_ACQUIRE_TIMEOUT", "9")][..],
            ),
        ] {
            let (alone, whole) = whole(args, env);
            let alone: Cli = alone.unwrap().into();
            assert_eq!(
                format!("{alone:?}"),
                format!("{:?}", whole.unwrap()),
                "{args:?}"
            );
        }
        // Not `serve`, help, a mistake: `serve` alone refuses, the whole command line answers.
        for args in [&["user", "list"][..], &["migrate"][..]] {
            let (alone, whole) = whole(args, &[]);
            assert!(alone.is_err(), "{args:?}");
            assert!(whole.is_ok(), "{args:?}");
        }
        for args in [
            &["serve", "--help"][..],
            &["--version"][..],
            &["serve", "--nope"][..],
        ] {
            let (alone, whole) = whole(args, &[]);
            assert!(alone.is_err() && whole.is_err(), "{args:?}");
        }
        // The help a server's operator reads is the whole command line's.
        let help = parse_with(&["--help"], &[]).unwrap_err().to_string();
        assert!(help.contains("push-cert"), "{help}");
    }

    fn serve(cli: Cli) -> ServeSettings {
        match cli.command {
            Action::Serve(s) => *s,
            _ => panic!("not serve"),
        }
    }

    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lanyard.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        (dir, path)
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in [
            "",
            "d",
            "30",
            "30 days",
            "-1d",
            "1.5h",
            "0s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    /// Every flag of every command that is a setting has its environment twin and its TOML
    /// key; every other flag belongs to one command's action, not to the server's settings.
    #[test]
    fn every_setting_has_a_flag_an_environment_twin_and_a_toml_key() {
        let settings = all();
        let cmd = <Cli>::command();
        let serve = cmd.find_subcommand(SERVE).unwrap();
        // Every flag `serve` takes is a setting (or --config, --help).
        for arg in serve.get_arguments().chain(cmd.get_arguments()) {
            let id = arg.get_id().as_str();
            if matches!(id, "config" | "help" | "version") {
                continue;
            }
            assert!(
                settings.iter().any(|s| s.key() == id),
                "serve takes --{id}, which is not declared as a setting"
            );
        }
        for s in &settings {
            assert_eq!(s.flag(), format!("--{}", s.key().replace('_', "-")));
            assert_eq!(s.env(), format!("LANYARD_{}", s.key().to_uppercase()));
            assert!(!s.doc().is_empty(), "{} has no doc", s.key());
            // Its environment twin is read...
            let value = sample(s);
            let env = [(s.env(), value.clone())];
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args = match s.subcommand {
                Some(sub) => vec![sub],
                None => vec!["migrate"],
            };
            parse_with(&args, &env).unwrap_or_else(|e| panic!("{}: {e:#}", s.env()));
            // ...and so is its TOML key.
            let toml_value = match s.kind() {
                Kind::Switch => "true".to_string(),
                Kind::List => format!("[\"{value}\"]"),
                Kind::Value => format!("\"{value}\""),
            };
            let (_dir, path) = config_file(&format!("{} = {toml_value}\n", s.key()));
            let mut with_file = vec!["--config", path.as_str()];
            with_file.extend(args);
            parse_with(&with_file, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", s.key()));
        }
    }

    /// A valid value for a setting, for the test above: its default, else one of its kind.
    fn sample(s: &Setting) -> String {
        let key = s.key();
        match (s.kind(), s.arg.get_default_values().first()) {
            (Kind::Switch, _) => "true".into(),
            (Kind::List, _) => "10.0.0.0/8".into(),
            (Kind::Value, Some(default)) => default.to_string_lossy().into_owned(),
            (Kind::Value, None) if key.ends_with("_url") => "https://example.com".into(),
            (Kind::Value, None) if key == "metrics_listen" => "127.0.0.1:9090".into(),
            (Kind::Value, None) if key == "hsts_max_age" => "600".into(),
            (Kind::Value, None) => "some-file".into(),
        }
    }

    /// One value through each layer: flags over the environment over the file over defaults.
    #[test]
    fn layers_in_order() {
        let (_dir, path) = config_file(
            "organization = \"From File\"\nidle_timeout = 5\nbody_read_timeout = 7\n\
             behind_proxy = true\npublic_url = \"https://file.example.com\"\n\
             trusted_proxy = [\"192.0.2.1\"]\nidentity_lifetime = \"2h\"\nlog_format = \"json\"\n\
             abm_page_size = 50\noidc_ca_cert = \"/file/ca.pem\"\n",
        );
        let args = ["--config", &path, "serve", "--idle-timeout", "9"];
        let env = [
            ("LANYARD_ORGANIZATION", "From Env"),
            ("LANYARD_IDLE_TIMEOUT", "8"),
            ("LANYARD_TRUSTED_PROXY", "10.0.0.0/8,::1"),
        ];
        let cli = parse_with(&args, &env).unwrap();
        assert_eq!(cli.global.log_format, LogFormat::Json, "file over default");
        assert_eq!(cli.abm.abm_page_size, 50, "file over default");
        assert_eq!(cli.global.data_dir, PathBuf::from("data"), "default");
        let s = serve(cli);
        assert_eq!(s.idle_timeout, 9, "flag over environment and file");
        assert_eq!(s.organization, "From Env", "environment over file");
        assert_eq!(s.body_read_timeout, 7, "file over default");
        assert_eq!(s.header_read_timeout, 10, "default");
        assert!(s.behind_proxy);
        assert_eq!(s.identity_lifetime, Duration::from_secs(7200));
        assert_eq!(s.oidc_ca_cert, Some(PathBuf::from("/file/ca.pem")));
        assert_eq!(s.public_url.unwrap().as_str(), "https://file.example.com/");
        let proxies: Vec<String> = s.trusted_proxy.iter().map(ToString::to_string).collect();
        assert_eq!(proxies, ["10.0.0.0/8", "::1/128"], "environment over file");

        // A switch set in the file is turned off by the environment; the flag turns it on.
        let cli = parse_with(
            &["--config", &path, "serve"],
            &[("LANYARD_BEHIND_PROXY", "false")],
        )
        .unwrap();
        assert!(!serve(cli).behind_proxy);
        let cli = parse_with(
            &["--config", &path, "serve", "--behind-proxy"],
            &[("LANYARD_BEHIND_PROXY", "false")],
        )
        .unwrap();
        assert!(serve(cli).behind_proxy);

        // LANYARD_CONFIG names the file too; global flags go before or after the command.
        let cli = parse_with(
            &["serve", "--data-dir", "/flag"],
            &[(CONFIG_ENV, path.as_str())],
        )
        .unwrap();
        assert_eq!(cli.global.data_dir, PathBuf::from("/flag"));
        assert_eq!(serve(cli).organization, "From File");

        // An empty variable is unset: the file's value stands.
        let cli = parse_with(
            &["--config", &path, "serve"],
            &[("LANYARD_ORGANIZATION", ""), ("LANYARD_BEHIND_PROXY", "")],
        )
        .unwrap();
        let s = serve(cli);
        assert_eq!(s.organization, "From File");
        assert!(s.behind_proxy);
    }

    #[test]
    fn defaults_match_the_domain_defaults() {
        let s = serve(parse_with(&["serve"], &[]).unwrap());
        assert_eq!(
            s.identity_lifetime,
            lanyard_core::renewal::DEFAULT_IDENTITY_LIFETIME
        );
        assert_eq!(
            s.identity_renewal_window,
            lanyard_core::renewal::DEFAULT_RENEWAL_WINDOW
        );
        let cli = parse_with(&["migrate"], &[]).unwrap();
        assert_eq!(
            Duration::from_secs(cli.global.database_acquire_timeout),
            lanyard_store::PoolSettings::DEFAULT_ACQUIRE_TIMEOUT
        );
    }

    #[test]
    fn bad_values_name_their_layer() {
        let (_dir, path) = config_file("trusted_proxy = [\"nope\"]\n");
        let e = format!(
            "{:#}",
            parse_with(&["--config", &path, "serve"], &[]).unwrap_err()
        );
        assert!(
            e.contains("config file") && e.contains("trusted_proxy"),
            "{e}"
        );

        let (_dir, path) = config_file("identity_lifetime = \"a year\"\n");
        let e = format!(
            "{:#}",
            parse_with(&["--config", &path, "serve"], &[]).unwrap_err()
        );
        assert!(
            e.contains("identity_lifetime") && e.contains("a year"),
            "{e}"
        );

        let (_dir, path) = config_file("listen_on = \"0.0.0.0:1\"\n");
        let e = format!(
            "{:#}",
            parse_with(&["--config", &path, "serve"], &[]).unwrap_err()
        );
        assert!(e.contains("unknown setting `listen_on`"), "{e}");

        let (_dir, path) = config_file("behind_proxy = \"yes\"\n");
        let e = format!(
            "{:#}",
            parse_with(&["--config", &path, "serve"], &[]).unwrap_err()
        );
        assert!(
            e.contains("behind_proxy") && e.contains("true or false"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            parse_with(&["serve"], &[("LANYARD_LOG_FORMAT", "xml")]).unwrap_err()
        );
        assert!(e.contains("LANYARD_LOG_FORMAT") && e.contains("xml"), "{e}");

        for (flag, value) in [
            ("--header-read-timeout", "0"),
            ("--idle-timeout", "0"),
            ("--body-read-timeout", "0"),
            ("--max-connections", "0"),
        ] {
            let e = parse_with(&["serve", flag, value], &[]).unwrap_err();
            assert!(e.to_string().contains("at least 1"), "{flag}: {e}");
        }
        let e = parse_with(&["serve"], &[("LANYARD_IDLE_TIMEOUT", "0")]).unwrap_err();
        assert!(e.to_string().contains("LANYARD_IDLE_TIMEOUT"), "{e}");
        assert!(parse_with(&["serve", "--public-url", "http://x.example"], &[]).is_err());
        assert!(parse_with(&["serve", "--trusted-proxy", "10.0.0.0/33"], &[]).is_err());
        assert!(parse_with(&["--abm-page-size", "1001", "migrate"], &[]).is_err());
    }

    #[test]
    fn the_secret_key_comes_from_a_file_only() {
        let cli = parse_with(&["--secret-key-file", "/k", "migrate"], &[]).unwrap();
        assert_eq!(cli.global.secret_key_file, Some(PathBuf::from("/k")));
        let (_dir, path) = config_file("secret_key_file = \"/f\"\n");
        let cli = parse_with(&["--config", &path, "migrate"], &[]).unwrap();
        assert_eq!(cli.global.secret_key_file, Some(PathBuf::from("/f")));
        // The key itself: not on argv, not in the environment, not in the file.
        assert!(parse_with(&["--secret-key", "AAAA", "migrate"], &[]).is_err());
        let e = parse_with(&["migrate"], &[("LANYARD_SECRET_KEY", "AAAA")]).unwrap_err();
        assert!(e.to_string().contains("--secret-key-file"), "{e}");
        let (_dir, path) = config_file("secret_key = \"AAAA\"\n");
        let e = parse_with(&["--config", &path, "migrate"], &[]).unwrap_err();
        assert!(e.to_string().contains("secret_key_file"), "{e}");
    }

    /// docs/CONFIGURATION.md holds the table [`markdown_table`] makes, between its markers.
    /// `LANYARD_WRITE_DOCS=1 cargo test -p lanyard settings` rewrites it.
    #[test]
    fn the_configuration_doc_lists_every_setting() {
        const BEGIN: &str = "<!-- settings table: begin -->\n";
        const END: &str = "<!-- settings table: end -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIGURATION.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (head, rest) = doc.split_once(BEGIN).unwrap();
        let (table, tail) = rest.split_once(END).unwrap();
        let want = markdown_table();
        if table != want && std::env::var_os("LANYARD_WRITE_DOCS").is_some() {
            std::fs::write(&path, format!("{head}{BEGIN}{want}{END}{tail}")).unwrap();
            return;
        }
        assert_eq!(
            table, want,
            "docs/CONFIGURATION.md is out of date: rerun this test with LANYARD_WRITE_DOCS=1"
        );
    }
}
