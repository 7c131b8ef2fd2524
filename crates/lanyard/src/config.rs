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
    /// Serve plain HTTP, for running behind a TLS-terminating reverse proxy.
    #[arg(long, env = "LANYARD_BEHIND_PROXY")]
    pub behind_proxy: bool,
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
    pub organization: Option<String>,
    pub scep_allow_des: Option<bool>,
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
    pub limits: crate::connections::Limits,
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
            limits: limits(s, file)?,
        })
    }
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
