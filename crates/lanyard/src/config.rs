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
    /// The file holding the key that seals private keys at rest (base64 of 32 bytes; readable
    /// by its owner only). Default: <data-dir>/secret.key. Created on first start when the
    /// database holds nothing sealed yet. Every server process on one database must use the
    /// same key.
    #[arg(long, env = "LANYARD_SECRET_KEY_FILE", global = true)]
    pub secret_key_file: Option<PathBuf>,
    /// Seconds a database query waits for a connection (PostgreSQL down: requests fail with
    /// 503 after this). Default: 5
    #[arg(
        long,
        env = "LANYARD_DATABASE_ACQUIRE_TIMEOUT",
        global = true,
        value_name = "SECONDS"
    )]
    pub database_acquire_timeout: Option<u64>,
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
    /// How often to send pushes that were asked for and not sent (e.g. by a server process
    /// that stopped before sending them); a request is swept once it is this old. Default: 30s
    #[arg(long, env = "LANYARD_PUSH_SWEEP_INTERVAL", value_parser = parse_duration)]
    pub push_sweep_interval: Option<Duration>,
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
    /// Free space (MiB) the data directory's disk must have for /healthz to answer ok.
    /// Default: 256
    #[arg(long, env = "LANYARD_MIN_FREE_DISK_MB", value_name = "MIB")]
    pub min_free_disk_mb: Option<u64>,
    /// Strict-Transport-Security max-age in seconds; 0 sends none. Default: 31536000 (a year)
    /// when Lanyard serves TLS; none with --behind-proxy unless given.
    #[arg(long, env = "LANYARD_HSTS_MAX_AGE", value_name = "SECONDS")]
    pub hsts_max_age: Option<u64>,
    /// Serve /metrics on this address instead (plain HTTP), e.g. 127.0.0.1:9090; the main
    /// address then answers 404 for /metrics.
    #[arg(long, env = "LANYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// A file holding a token (readable by its owner only): /metrics then answers only
    /// requests with `Authorization: Bearer <token>`.
    #[arg(long, env = "LANYARD_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// The CSR signing service the portal and the API send push certificate requests to
    /// (for operators without their own MDM vendor certificate). Its API key is given with
    /// each request, never here. Default: https://mdmcert.download
    #[arg(long, env = "LANYARD_SIGNING_SERVICE_URL", value_name = "URL")]
    pub signing_service_url: Option<String>,
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
    pub secret_key_file: Option<PathBuf>,
    /// No longer read (the key does not belong in a config file); present only to say so.
    pub secret_key: Option<toml::Value>,
    pub database_acquire_timeout: Option<u64>,
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
    pub push_sweep_interval: Option<String>,
    pub header_read_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub body_read_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub min_free_disk_mb: Option<u64>,
    pub hsts_max_age: Option<u64>,
    pub metrics_listen: Option<String>,
    pub metrics_token_file: Option<PathBuf>,
    pub signing_service_url: Option<String>,
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
    /// `--secret-key-file`; `None`: `<data-dir>/secret.key`.
    pub secret_key_file: Option<PathBuf>,
    pub pool: lanyard_store::PoolSettings,
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
    /// How often the push sweep runs (and how old a pending push request must be).
    pub push_sweep_interval: Duration,
    pub limits: crate::connections::Limits,
    /// `/healthz` answers 503 below this many free bytes in the data directory.
    pub min_free_bytes: u64,
    /// `Strict-Transport-Security` max-age; `None`: not sent.
    pub hsts_max_age: Option<u64>,
    /// Where `/metrics` is served instead of `listen`, when set.
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_token_file: Option<PathBuf>,
    /// The push certificate signing service (`--signing-service-url`).
    pub signing_service_url: String,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<Cidr>,
}

/// The default free-space minimum for `/healthz`, in MiB.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 256;
/// The default `Strict-Transport-Security` max-age when Lanyard serves TLS: a year.
pub const DEFAULT_HSTS_MAX_AGE: u64 = 365 * 86_400;

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
        // The key itself is no longer taken from argv, the environment or the config file:
        // argv and the environment are visible to other local users and processes.
        if std::env::var_os("LANYARD_SECRET_KEY").is_some() {
            bail!(
                "LANYARD_SECRET_KEY is no longer read: write the key to a file only its owner \
                 can read and give --secret-key-file (LANYARD_SECRET_KEY_FILE)"
            );
        }
        if file.secret_key.is_some() {
            bail!(
                "secret_key in the config file is no longer read: write the key to a file only \
                 its owner can read and set secret_key_file"
            );
        }
        let acquire = g
            .database_acquire_timeout
            .or(file.database_acquire_timeout)
            .map(Duration::from_secs)
            .unwrap_or(lanyard_store::PoolSettings::DEFAULT_ACQUIRE_TIMEOUT);
        if acquire.is_zero() {
            bail!("--database-acquire-timeout must be at least 1 second");
        }
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
            secret_key_file: g
                .secret_key_file
                .clone()
                .or_else(|| file.secret_key_file.clone()),
            pool: lanyard_store::PoolSettings {
                acquire_timeout: acquire,
            },
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
            push_sweep_interval: duration(
                "push-sweep-interval",
                s.push_sweep_interval,
                &file.push_sweep_interval,
            )?
            .unwrap_or(Duration::from_secs(30)),
            limits: limits(s, file)?,
            min_free_bytes: s
                .min_free_disk_mb
                .or(file.min_free_disk_mb)
                .unwrap_or(DEFAULT_MIN_FREE_DISK_MB)
                .saturating_mul(1024 * 1024),
            hsts_max_age: match (s.hsts_max_age.or(file.hsts_max_age), &tls) {
                (Some(0), _) => None,
                (Some(age), _) => Some(age),
                (None, TlsMode::BehindProxy) => None,
                (None, _) => Some(DEFAULT_HSTS_MAX_AGE),
            },
            metrics_listen: match s
                .metrics_listen
                .clone()
                .or_else(|| file.metrics_listen.clone())
            {
                None => None,
                Some(text) => Some(text.parse().with_context(|| {
                    format!("--metrics-listen `{text}` is not an address like 127.0.0.1:9090")
                })?),
            },
            metrics_token_file: s
                .metrics_token_file
                .clone()
                .or_else(|| file.metrics_token_file.clone()),
            signing_service_url: s
                .signing_service_url
                .clone()
                .or_else(|| file.signing_service_url.clone())
                .unwrap_or_else(|| lanyard_core::pushcert::DEFAULT_SIGNING_SERVICE_URL.into()),
            tls,
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
            push_sweep_interval: None,
            header_read_timeout: None,
            idle_timeout: None,
            body_read_timeout: None,
            max_connections: None,
            min_free_disk_mb: None,
            hsts_max_age: None,
            metrics_listen: None,
            metrics_token_file: None,
            signing_service_url: None,
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

    #[test]
    fn hsts_follows_the_tls_mode_unless_set() {
        let resolve = |a: &ServeArgs, f: &str| {
            let file: FileConfig = toml::from_str(f).unwrap();
            ServeConfig::resolve(a, &file).unwrap().hsts_max_age
        };
        assert_eq!(resolve(&serve_args(), ""), Some(DEFAULT_HSTS_MAX_AGE));
        let proxy = ServeArgs {
            behind_proxy: true,
            public_url: Some("https://mdm.example.com".into()),
            ..serve_args()
        };
        assert_eq!(resolve(&proxy, ""), None, "plain HTTP behind a proxy");
        assert_eq!(resolve(&proxy, "hsts_max_age = 600"), Some(600));
        let off = ServeArgs {
            hsts_max_age: Some(0),
            ..serve_args()
        };
        assert_eq!(resolve(&off, ""), None);
    }

    #[test]
    fn metrics_and_disk_settings() {
        let file: FileConfig = toml::from_str(
            "metrics_listen = \"127.0.0.1:9090\"\nmin_free_disk_mb = 10\nmetrics_token_file = \"t\"",
        )
        .unwrap();
        let c = ServeConfig::resolve(&serve_args(), &file).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.min_free_bytes, 10 * 1024 * 1024);
        assert_eq!(c.metrics_token_file, Some(PathBuf::from("t")));
        let c = ServeConfig::resolve(&serve_args(), &FileConfig::default()).unwrap();
        assert_eq!(c.min_free_bytes, DEFAULT_MIN_FREE_DISK_MB * 1024 * 1024);
        let bad = ServeArgs {
            metrics_listen: Some("metrics".into()),
            ..serve_args()
        };
        let e = ServeConfig::resolve(&bad, &FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--metrics-listen"), "{e}");
    }

    #[derive(Parser)]
    struct GlobalCli {
        #[command(flatten)]
        global: GlobalArgs,
    }

    fn data_of(args: &[&str], file: &str) -> Result<DataConfig> {
        let cli =
            GlobalCli::try_parse_from(std::iter::once("lanyard").chain(args.iter().copied()))?;
        let file: FileConfig = toml::from_str(file)?;
        DataConfig::resolve(&cli.global, &file)
    }

    #[test]
    fn the_secret_key_comes_from_a_file_only() {
        let d = data_of(&["--secret-key-file", "/k"], "").unwrap();
        assert_eq!(d.secret_key_file, Some(PathBuf::from("/k")));
        let d = data_of(&[], "secret_key_file = \"/f\"").unwrap();
        assert_eq!(d.secret_key_file, Some(PathBuf::from("/f")));
        assert_eq!(data_of(&[], "").unwrap().secret_key_file, None);
        // The key itself: not on argv, not in the file.
        assert!(data_of(&["--secret-key", "AAAA"], "").is_err());
        let e = data_of(&[], "secret_key = \"AAAA\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret_key_file"), "{e}");
    }

    #[test]
    fn database_acquire_timeout() {
        let d = data_of(&[], "").unwrap();
        assert_eq!(d.pool.acquire_timeout, Duration::from_secs(5));
        let d = data_of(
            &["--database-acquire-timeout", "2"],
            "database_acquire_timeout = 9",
        )
        .unwrap();
        assert_eq!(d.pool.acquire_timeout, Duration::from_secs(2));
        let d = data_of(&[], "database_acquire_timeout = 9").unwrap();
        assert_eq!(d.pool.acquire_timeout, Duration::from_secs(9));
        let e = data_of(&["--database-acquire-timeout", "0"], "").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }
}
