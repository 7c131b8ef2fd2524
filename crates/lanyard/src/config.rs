//! Configuration: command-line flags, each with a `LANYARD_…` environment twin, over an optional
//! TOML file (`--config`), over defaults. Runtime settings (enrollment policy and so on) are not
//! here: they live in the database and are edited from the portal, API or CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

use crate::connections::Limits;
use lanyard_http::client::Cidr;

/// Flags shared by every sub-command: where the data is.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// A TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "LANYARD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The data directory (database, keys, exported CA certificate). Default: ./data
    #[arg(long, env = "LANYARD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// sqlite://PATH (default: sqlite://<data-dir>/lanyard.db) or postgres://…
    #[arg(long, env = "LANYARD_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Base64 of the 32-byte key that seals private keys at rest. Default: <data-dir>/secret.key,
    /// created on first start. Every server process on one database must use the same key.
    #[arg(
        long,
        env = "LANYARD_SECRET_KEY",
        global = true,
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "LANYARD_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// APNs base URL. Default: https://api.push.apple.com (use
    /// https://api.sandbox.push.apple.com for development certificates).
    #[arg(long, env = "LANYARD_APNS_URL", global = true)]
    pub apns_url: Option<String>,
    /// Extra CA certificate (PEM) to trust for the APNs server (for test servers).
    #[arg(long, env = "LANYARD_APNS_CA_CERT", global = true)]
    pub apns_ca_cert: Option<PathBuf>,
}

/// Flags of `lanyard serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Default: 127.0.0.1:8443
    #[arg(long, env = "LANYARD_LISTEN")]
    pub listen: Option<String>,
    /// The public base URL devices and people use, e.g. https://mdm.example.com
    /// Default: https://<listen address>
    #[arg(long, env = "LANYARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// PEM certificate chain to serve instead of the self-issued one (e.g. publicly trusted).
    #[arg(long, env = "LANYARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "LANYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP, for running behind a TLS-terminating reverse proxy. This alone does
    /// not trust the proxy's X-Forwarded-For: see --trusted-proxy.
    #[arg(long, env = "LANYARD_BEHIND_PROXY")]
    pub behind_proxy: bool,
    /// Address ranges (CIDR, comma-separated or repeated, e.g. 10.0.0.0/8,::1) of reverse
    /// proxies whose X-Forwarded-For names the client: for a request from one of them, the
    /// client is the right-most X-Forwarded-For entry that is not itself a trusted proxy.
    /// Default: none (the client is always the TCP peer).
    #[arg(
        long,
        env = "LANYARD_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxy: Vec<Cidr>,
    /// Organisation name shown on pages and in certificates. Default: Lanyard
    #[arg(long, env = "LANYARD_ORGANIZATION")]
    pub organization: Option<String>,
    /// Accept SCEP requests encrypted with single DES (some older SCEP clients). Apple devices
    /// never need this; replies are always AES.
    #[arg(long, env = "LANYARD_SCEP_ALLOW_DES")]
    pub scep_allow_des: bool,
    /// PEM CA certificate(s) trusted, besides the system roots, when talking to OpenID Connect
    /// identity providers (a provider with a private CA).
    #[arg(long, env = "LANYARD_OIDC_CA_CERT")]
    pub oidc_ca_cert: Option<PathBuf>,
    /// How long a device identity certificate is valid: a number and a unit, s, m, h or d
    /// (e.g. 365d, 12h, 600s; one minute to 1826 days). Default: 365d
    #[arg(long, env = "LANYARD_IDENTITY_LIFETIME", value_parser = parse_duration)]
    pub identity_lifetime: Option<Duration>,
    /// Renew a device's identity certificate (reinstall its enrollment profile with a new SCEP
    /// challenge) once it expires within this; at most the lifetime. Default: 30d
    #[arg(long, env = "LANYARD_IDENTITY_RENEWAL_WINDOW", value_parser = parse_duration)]
    pub identity_renewal_window: Option<Duration>,
    /// How often to look for identity certificates to renew. Default: 1h
    #[arg(long, env = "LANYARD_IDENTITY_RENEWAL_INTERVAL", value_parser = parse_duration)]
    pub identity_renewal_interval: Option<Duration>,
    /// Seconds a connection has to deliver a complete request head: a new connection's first
    /// request (TLS handshake included) and, on an idle connection, from the next request's
    /// first byte. Default: 10
    #[arg(long, env = "LANYARD_HEADER_READ_TIMEOUT", value_name = "SECONDS")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a connection with no request in flight stays open after its last request (or
    /// the last byte it was sent). Default: 60
    #[arg(long, env = "LANYARD_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Seconds a request body may deliver nothing before the request fails (400) and the
    /// connection is closed. Default: 30
    #[arg(long, env = "LANYARD_BODY_READ_TIMEOUT", value_name = "SECONDS")]
    pub body_read_timeout: Option<u64>,
    /// Connections open at once (TLS handshakes included); more are closed at once. Lowered,
    /// with a warning, when the open-file limit leaves less room. Default: 4096
    #[arg(long, env = "LANYARD_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<usize>,
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

/// The optional TOML file: the same settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub apns_url: Option<String>,
    pub apns_ca_cert: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub secret_key: Option<String>,
    pub log_format: Option<String>,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub behind_proxy: Option<bool>,
    /// CIDR ranges, e.g. `["10.0.0.0/8", "::1"]`.
    pub trusted_proxy: Option<Vec<String>>,
    pub organization: Option<String>,
    pub scep_allow_des: Option<bool>,
    /// Durations as on the command line, e.g. `"365d"`.
    pub identity_lifetime: Option<String>,
    pub identity_renewal_window: Option<String>,
    pub identity_renewal_interval: Option<String>,
    pub header_read_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub body_read_timeout: Option<u64>,
    pub max_connections: Option<usize>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the data is, resolved.
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub apns_url: String,
    pub apns_ca_cert: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub secret_key: Option<String>,
    pub log_format: LogFormat,
}

/// How to serve, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub public_url: Option<url::Url>,
    pub tls: TlsMode,
    pub organization: String,
    pub scep_allow_des: bool,
    pub oidc_ca_cert: Option<PathBuf>,
    /// Identity certificate lifetime and renewal window.
    pub identity: lanyard_core::renewal::IdentityPolicy,
    /// How often the identity renewal job runs.
    pub identity_renewal_interval: Duration,
    pub limits: crate::connections::Limits,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<Cidr>,
}

#[derive(Debug, Clone)]
pub enum TlsMode {
    /// A certificate issued by Lanyard's own CA for the public host.
    SelfIssued,
    /// The operator's own certificate and key.
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP behind a TLS-terminating proxy.
    BehindProxy,
}

impl DataConfig {
    pub fn resolve(g: &GlobalArgs, file: &FileConfig) -> Result<DataConfig> {
        let data_dir = g
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("data"));
        let database_url = match g.database_url.clone().or_else(|| file.database_url.clone()) {
            Some(u) => u,
            None => format!("sqlite://{}", data_dir.join("lanyard.db").display()),
        };
        let log_format = match g
            .log_format
            .clone()
            .or_else(|| file.log_format.clone())
            .as_deref()
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("unknown log format `{other}`; use text or json"),
        };
        Ok(DataConfig {
            apns_url: g
                .apns_url
                .clone()
                .or_else(|| file.apns_url.clone())
                .unwrap_or_else(|| "https://api.push.apple.com".into()),
            apns_ca_cert: g.apns_ca_cert.clone().or_else(|| file.apns_ca_cert.clone()),
            data_dir,
            database_url,
            secret_key: g.secret_key.clone().or_else(|| file.secret_key.clone()),
            log_format,
        })
    }
}

impl ServeConfig {
    pub fn resolve(s: &ServeArgs, file: &FileConfig) -> Result<ServeConfig> {
        let listen_text = s
            .listen
            .clone()
            .or_else(|| file.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:8443".into());
        let listen: SocketAddr = listen_text.parse().with_context(|| {
            format!("--listen `{listen_text}` is not an address like 127.0.0.1:8443")
        })?;
        let public_url = match s.public_url.clone().or_else(|| file.public_url.clone()) {
            None => None,
            Some(u) => {
                let url = url::Url::parse(&u)
                    .with_context(|| format!("--public-url `{u}` is not a URL"))?;
                if url.scheme() != "https" {
                    bail!(
                        "--public-url must be an https:// URL: Macs enroll only over HTTPS \
                         (behind a proxy, give the proxy's https URL)"
                    );
                }
                if url.host_str().is_none() {
                    bail!("--public-url needs a host name");
                }
                Some(url)
            }
        };
        let behind_proxy = s.behind_proxy || file.behind_proxy.unwrap_or(false);
        let cert = s.tls_cert.clone().or_else(|| file.tls_cert.clone());
        let key = s.tls_key.clone().or_else(|| file.tls_key.clone());
        let tls = match (behind_proxy, cert, key) {
            (true, None, None) if public_url.is_none() => bail!(
                "--behind-proxy needs --public-url https://… (the address of the TLS-terminating \
                 proxy that devices use)"
            ),
            (true, None, None) => TlsMode::BehindProxy,
            (true, _, _) => bail!("--behind-proxy serves plain HTTP; drop --tls-cert/--tls-key"),
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            (false, None, None) => TlsMode::SelfIssued,
            (false, _, _) => bail!("--tls-cert and --tls-key go together"),
        };
        Ok(ServeConfig {
            listen,
            public_url,
            tls,
            organization: s
                .organization
                .clone()
                .or_else(|| file.organization.clone())
                .unwrap_or_else(|| "Lanyard".into()),
            scep_allow_des: s.scep_allow_des || file.scep_allow_des.unwrap_or(false),
            oidc_ca_cert: s.oidc_ca_cert.clone(),
            identity: lanyard_core::renewal::IdentityPolicy::new(
                duration(
                    "identity-lifetime",
                    s.identity_lifetime,
                    &file.identity_lifetime,
                )?
                .unwrap_or(lanyard_core::renewal::DEFAULT_IDENTITY_LIFETIME),
                duration(
                    "identity-renewal-window",
                    s.identity_renewal_window,
                    &file.identity_renewal_window,
                )?
                .unwrap_or(lanyard_core::renewal::DEFAULT_RENEWAL_WINDOW),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
            identity_renewal_interval: duration(
                "identity-renewal-interval",
                s.identity_renewal_interval,
                &file.identity_renewal_interval,
            )?
            .unwrap_or(Duration::from_secs(3600)),
            limits: limits(s, file)?,
            trusted_proxies: trusted_proxies(s, file)?,
        })
    }
}

/// A duration from its flag (or environment twin), else from the config file.
fn duration(name: &str, flag: Option<Duration>, file: &Option<String>) -> Result<Option<Duration>> {
    match (flag, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(text)) => parse_duration(text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name} in the config file: {e}")),
        (None, None) => Ok(None),
    }
}

/// `--trusted-proxy` (flag or environment), else the config file's `trusted_proxy`.
fn trusted_proxies(s: &ServeArgs, file: &FileConfig) -> Result<Vec<Cidr>> {
    if !s.trusted_proxy.is_empty() {
        return Ok(s.trusted_proxy.clone());
    }
    file.trusted_proxy
        .iter()
        .flatten()
        .map(|c| {
            c.parse::<Cidr>()
                .map_err(|e| anyhow::anyhow!("trusted_proxy in the config file: {e}"))
        })
        .collect()
}

/// The connection limits: each at least 1 (second or connection).
fn limits(s: &ServeArgs, file: &FileConfig) -> Result<Limits> {
    let seconds = |flag: &str, given: Option<u64>, default: u64| match given.unwrap_or(default) {
        0 => bail!("--{flag} must be at least 1 second"),
        n => Ok(Duration::from_secs(n)),
    };
    let max_connections = s
        .max_connections
        .or(file.max_connections)
        .unwrap_or(Limits::DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    Ok(Limits {
        header_read: seconds(
            "header-read-timeout",
            s.header_read_timeout.or(file.header_read_timeout),
            Limits::DEFAULT_HEADER_READ_SECS,
        )?,
        idle: seconds(
            "idle-timeout",
            s.idle_timeout.or(file.idle_timeout),
            Limits::DEFAULT_IDLE_SECS,
        )?,
        body_read: seconds(
            "body-read-timeout",
            s.body_read_timeout.or(file.body_read_timeout),
            Limits::DEFAULT_BODY_READ_SECS,
        )?,
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn limits_of(args: &[&str], file: &str) -> Result<Limits> {
        let cli = Cli::try_parse_from(std::iter::once("lanyard").chain(args.iter().copied()))?;
        let file: FileConfig = toml::from_str(file)?;
        Ok(ServeConfig::resolve(&cli.serve, &file)?.limits)
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

    fn serve_args() -> ServeArgs {
        ServeArgs {
            listen: None,
            public_url: None,
            tls_cert: None,
            tls_key: None,
            behind_proxy: false,
            trusted_proxy: Vec::new(),
            organization: None,
            scep_allow_des: false,
            oidc_ca_cert: None,
            identity_lifetime: None,
            identity_renewal_window: None,
            identity_renewal_interval: None,
            header_read_timeout: None,
            idle_timeout: None,
            body_read_timeout: None,
            max_connections: None,
        }
    }

    #[test]
    fn trusted_proxies_from_flag_or_file() {
        let resolve = |args: &[&str], file: &str| -> Result<Vec<String>> {
            let cli = Cli::try_parse_from(std::iter::once("lanyard").chain(args.iter().copied()))?;
            let file: FileConfig = toml::from_str(file)?;
            Ok(ServeConfig::resolve(&cli.serve, &file)?
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect())
        };
        assert!(resolve(&[], "").unwrap().is_empty());
        assert_eq!(
            resolve(&["--trusted-proxy", "10.0.0.0/8,::1"], "").unwrap(),
            ["10.0.0.0/8", "::1/128"]
        );
        assert_eq!(
            resolve(&[], "trusted_proxy = [\"192.0.2.1\"]").unwrap(),
            ["192.0.2.1/32"]
        );
        // The flag wins over the file.
        assert_eq!(
            resolve(
                &["--trusted-proxy", "127.0.0.1"],
                "trusted_proxy = [\"192.0.2.1\"]"
            )
            .unwrap(),
            ["127.0.0.1/32"]
        );
        assert!(resolve(&["--trusted-proxy", "10.0.0.0/33"], "").is_err());
        let err = resolve(&[], "trusted_proxy = [\"nope\"]").unwrap_err();
        assert!(err.to_string().contains("trusted_proxy"), "{err}");
    }

    #[test]
    fn identity_lifetime_window_and_interval() {
        let c = ServeConfig::resolve(&serve_args(), &FileConfig::default()).unwrap();
        assert_eq!(c.identity, lanyard_core::renewal::IdentityPolicy::default());
        assert_eq!(c.identity_renewal_interval, Duration::from_secs(3600));

        let file = FileConfig {
            identity_lifetime: Some("2h".into()),
            identity_renewal_window: Some("1h".into()),
            identity_renewal_interval: Some("30s".into()),
            ..Default::default()
        };
        let c = ServeConfig::resolve(&serve_args(), &file).unwrap();
        assert_eq!(c.identity.lifetime, Duration::from_secs(7200));
        assert_eq!(c.identity.renewal_window, Duration::from_secs(3600));
        assert_eq!(c.identity_renewal_interval, Duration::from_secs(30));
        // Flags win over the file.
        let args = ServeArgs {
            identity_lifetime: Some(Duration::from_secs(600)),
            identity_renewal_window: Some(Duration::from_secs(600)),
            ..serve_args()
        };
        let c = ServeConfig::resolve(&args, &file).unwrap();
        assert_eq!(c.identity.lifetime, Duration::from_secs(600));

        let err = |args: &ServeArgs, file: &FileConfig| {
            ServeConfig::resolve(args, file).unwrap_err().to_string()
        };
        let longer = ServeArgs {
            identity_renewal_window: Some(Duration::from_secs(8000)),
            ..serve_args()
        };
        assert!(err(&longer, &file).contains("renewal window"));
        let bad_file = FileConfig {
            identity_lifetime: Some("a year".into()),
            ..Default::default()
        };
        let e = err(&serve_args(), &bad_file);
        assert!(
            e.contains("identity-lifetime") && e.contains("a year"),
            "{e}"
        );
        let short = ServeArgs {
            identity_lifetime: Some(Duration::from_secs(30)),
            identity_renewal_window: Some(Duration::from_secs(30)),
            ..serve_args()
        };
        assert!(err(&short, &FileConfig::default()).contains("one minute"));
    }

    #[test]
    fn connection_limits_have_defaults_flags_and_file_settings() {
        let defaults = limits_of(&[], "").unwrap();
        assert_eq!(
            defaults,
            Limits {
                header_read: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                body_read: Duration::from_secs(30),
                max_connections: 4096,
            }
        );
        let set = limits_of(
            &["--header-read-timeout", "1", "--max-connections", "3"],
            "idle_timeout = 5\nbody_read_timeout = 7\nmax_connections = 9",
        )
        .unwrap();
        assert_eq!(set.header_read, Duration::from_secs(1));
        assert_eq!(set.idle, Duration::from_secs(5));
        assert_eq!(set.body_read, Duration::from_secs(7));
        assert_eq!(set.max_connections, 3, "the flag wins over the file");
        for (flag, value) in [
            ("--header-read-timeout", "0"),
            ("--idle-timeout", "0"),
            ("--body-read-timeout", "0"),
            ("--max-connections", "0"),
        ] {
            let err = limits_of(&[flag, value], "").unwrap_err().to_string();
            assert!(err.contains("at least 1"), "{flag}: {err}");
        }
        assert!(limits_of(&["--idle-timeout", "-1"], "").is_err());
    }
}
