//! What the settings of [`crate::settings`] mean at run time: values that follow from several
//! settings at once (the TLS mode, the identity policy, the connection limits, HSTS), checked
//! together before anything starts. Runtime settings (enrollment policy and so on) are not
//! here: they live in the database and are edited from the portal, API or CLI.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::connections::Limits;
use crate::settings::{GlobalSettings, ServeSettings};

impl GlobalSettings {
    /// `--database-url`, else the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("lanyard.db").display()),
        }
    }

    pub fn pool(&self) -> lanyard_store::PoolSettings {
        lanyard_store::PoolSettings {
            acquire_timeout: Duration::from_secs(self.database_acquire_timeout),
            ..Default::default()
        }
    }

    /// Where the secret key lives: `--secret-key-file`, else `<data-dir>/secret.key`.
    pub fn secret_key_path(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }
}

/// `lanyard serve`'s settings with what follows from them.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub settings: ServeSettings,
    pub tls: TlsMode,
    /// Identity certificate lifetime and renewal window.
    pub identity: lanyard_core::renewal::IdentityPolicy,
    pub limits: Limits,
    /// `Strict-Transport-Security` max-age; `None`: not sent.
    pub hsts_max_age: Option<u64>,
}

/// The default `Strict-Transport-Security` max-age when Lanyard serves TLS: a year.
pub const DEFAULT_HSTS_MAX_AGE: u64 = 365 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// A certificate issued by Lanyard's own CA for the public host.
    SelfIssued,
    /// The operator's own certificate and key.
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP behind a TLS-terminating proxy.
    BehindProxy,
}

impl ServeConfig {
    pub fn resolve(s: ServeSettings) -> Result<ServeConfig> {
        let tls = match (s.behind_proxy, s.tls_cert.clone(), s.tls_key.clone()) {
            (true, None, None) if s.public_url.is_none() => bail!(
                "--behind-proxy needs --public-url https://… (the address of the TLS-terminating \
                 proxy that devices use)"
            ),
            (true, None, None) => TlsMode::BehindProxy,
            (true, _, _) => bail!("--behind-proxy serves plain HTTP; drop --tls-cert/--tls-key"),
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            (false, None, None) => TlsMode::SelfIssued,
            (false, _, _) => bail!("--tls-cert and --tls-key go together"),
        };
        let identity = lanyard_core::renewal::IdentityPolicy::new(
            s.identity_lifetime,
            s.identity_renewal_window,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let limits = Limits {
            header_read: Duration::from_secs(s.header_read_timeout),
            idle: Duration::from_secs(s.idle_timeout),
            body_read: Duration::from_secs(s.body_read_timeout),
            max_connections: s.max_connections,
        };
        let hsts_max_age = match (s.hsts_max_age, &tls) {
            (Some(0), _) => None,
            (Some(age), _) => Some(age),
            (None, TlsMode::BehindProxy) => None,
            (None, _) => Some(DEFAULT_HSTS_MAX_AGE),
        };
        Ok(ServeConfig {
            settings: s,
            tls,
            identity,
            limits,
            hsts_max_age,
        })
    }

    /// `/healthz` answers 503 below this many free bytes in the data directory.
    pub fn min_free_bytes(&self) -> u64 {
        self.settings.min_free_disk_mb.saturating_mul(1024 * 1024)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeSettings,
        #[command(flatten)]
        global: GlobalSettings,
    }

    fn resolve(args: &[&str]) -> Result<ServeConfig> {
        let cli = Cli::try_parse_from(std::iter::once("lanyard").chain(args.iter().copied()))?;
        ServeConfig::resolve(cli.serve)
    }

    #[test]
    fn tls_mode() {
        assert_eq!(resolve(&[]).unwrap().tls, TlsMode::SelfIssued);
        assert_eq!(
            resolve(&["--tls-cert", "c", "--tls-key", "k"]).unwrap().tls,
            TlsMode::Files {
                cert: "c".into(),
                key: "k".into()
            }
        );
        let e = resolve(&["--tls-cert", "c"]).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
        let e = resolve(&["--behind-proxy"]).unwrap_err();
        assert!(e.to_string().contains("--public-url"), "{e}");
        let proxy = ["--behind-proxy", "--public-url", "https://mdm.example.com"];
        assert_eq!(resolve(&proxy).unwrap().tls, TlsMode::BehindProxy);
        let e =
            resolve(&[&proxy[..], &["--tls-cert", "c", "--tls-key", "k"]].concat()).unwrap_err();
        assert!(e.to_string().contains("plain HTTP"), "{e}");
    }

    #[test]
    fn identity_lifetime_window_and_interval() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.identity, lanyard_core::renewal::IdentityPolicy::default());
        assert_eq!(
            c.settings.identity_renewal_interval,
            Duration::from_secs(3600)
        );
        let c = resolve(&[
            "--identity-lifetime",
            "2h",
            "--identity-renewal-window",
            "1h",
        ])
        .unwrap();
        assert_eq!(c.identity.lifetime, Duration::from_secs(7200));
        assert_eq!(c.identity.renewal_window, Duration::from_secs(3600));
        let e = resolve(&[
            "--identity-lifetime",
            "2h",
            "--identity-renewal-window",
            "3h",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("renewal window"), "{e}");
        let e = resolve(&[
            "--identity-lifetime",
            "30s",
            "--identity-renewal-window",
            "30s",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("one minute"), "{e}");
    }

    #[test]
    fn connection_limits() {
        assert_eq!(
            resolve(&[]).unwrap().limits,
            Limits {
                header_read: Duration::from_secs(10),
                idle: Duration::from_secs(60),
                body_read: Duration::from_secs(30),
                max_connections: 4096,
            }
        );
        let set = resolve(&["--header-read-timeout", "1", "--max-connections", "3"]).unwrap();
        assert_eq!(set.limits.header_read, Duration::from_secs(1));
        assert_eq!(set.limits.max_connections, 3);
        assert!(resolve(&["--idle-timeout", "-1"]).is_err());
    }

    #[test]
    fn hsts_follows_the_tls_mode_unless_set() {
        let hsts = |args: &[&str]| resolve(args).unwrap().hsts_max_age;
        assert_eq!(hsts(&[]), Some(DEFAULT_HSTS_MAX_AGE));
        let proxy = ["--behind-proxy", "--public-url", "https://mdm.example.com"];
        assert_eq!(hsts(&proxy), None, "plain HTTP behind a proxy");
        assert_eq!(
            hsts(&[&proxy[..], &["--hsts-max-age", "600"]].concat()),
            Some(600)
        );
        assert_eq!(hsts(&["--hsts-max-age", "0"]), None);
    }

    #[test]
    fn metrics_disk_and_database() {
        let c = resolve(&[
            "--metrics-listen",
            "127.0.0.1:9090",
            "--min-free-disk-mb",
            "10",
        ])
        .unwrap();
        assert_eq!(
            c.settings.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(c.min_free_bytes(), 10 * 1024 * 1024);
        assert_eq!(resolve(&[]).unwrap().min_free_bytes(), 256 * 1024 * 1024);
        let e = resolve(&["--metrics-listen", "metrics"]).unwrap_err();
        assert!(e.to_string().contains("--metrics-listen"), "{e}");

        let g = Cli::try_parse_from(["lanyard", "--data-dir", "/d"])
            .unwrap()
            .global;
        assert_eq!(g.database_url(), "sqlite:///d/lanyard.db");
        assert_eq!(g.secret_key_path(), PathBuf::from("/d/secret.key"));
        assert_eq!(g.pool().acquire_timeout, Duration::from_secs(5));
        let g = Cli::try_parse_from(["lanyard", "--database-acquire-timeout", "2"])
            .unwrap()
            .global;
        assert_eq!(g.pool().acquire_timeout, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["lanyard", "--database-acquire-timeout", "0"]).is_err());
    }
}
