//! Opening what a command needs: the data directory, the database (the one place that picks a
//! concrete backend from the URL), the secret key, and logging.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lanyard_core::Lanyard;
use lanyard_pki::SecretBox;
use lanyard_store::{Backend, PostgresStore, SqliteStore, Store};

use crate::config::{DataConfig, LogFormat};

pub struct Opened {
    pub lanyard: Lanyard,
    pub backend_name: &'static str,
    pub migrations: Vec<String>,
}

/// Makes sure the data directory exists and is writable; a clear error otherwise.
pub fn ensure_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let probe = dir.join(".lanyard-write-test");
    std::fs::write(&probe, b"ok").with_context(|| {
        format!(
            "the data directory {} is not writable by this user",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Opens the database named by the URL and applies pending migrations.
pub async fn open_store(data: &DataConfig) -> Result<Opened> {
    let backend = Backend::from_url(&data.database_url)?;
    ensure_data_dir(&data.data_dir)?;
    let (store, migrations): (Arc<dyn Store>, Vec<String>) = match backend {
        Backend::Sqlite => {
            let s = SqliteStore::connect(&data.database_url)
                .await
                .with_context(|| "cannot open the SQLite database".to_string())?;
            s.migrate().await?;
            (Arc::new(s), SqliteStore::migration_names())
        }
        Backend::Postgres => {
            let s = PostgresStore::connect(&data.database_url)
                .await
                .context("cannot connect to PostgreSQL")?;
            s.migrate().await?;
            (Arc::new(s), PostgresStore::migration_names())
        }
    };
    let backend_name = store.backend();
    Ok(Opened {
        lanyard: Lanyard::new(store)
            .with_apns_environment(lanyard_core::pushcert::environment_of_url(&data.apns_url)),
        backend_name,
        migrations,
    })
}

/// The key that seals private keys: from config, or `<data-dir>/secret.key` (created once,
/// readable by the owner only).
pub fn secret_box(data: &DataConfig) -> Result<SecretBox> {
    if let Some(text) = &data.secret_key {
        let key = SecretBox::key_from_base64(text)
            .context("--secret-key must be the base64 of 32 random bytes")?;
        return Ok(SecretBox::new(key));
    }
    let path = data.data_dir.join("secret.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let key = SecretBox::key_from_base64(text.trim())
            .with_context(|| format!("{} is not a valid secret key", path.display()))?;
        return Ok(SecretBox::new(key));
    }
    let key = SecretBox::generate_key();
    write_private(&path, SecretBox::key_to_base64(&key).as_bytes())?;
    tracing::info!("created a new secret key in the data directory");
    Ok(SecretBox::new(key))
}

/// Writes a file only its owner can read, refusing to overwrite one that exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} already exists; not overwriting it", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The push service for this configuration (APNs URL, extra trust for test servers).
pub fn push_service(
    data: &DataConfig,
    lanyard: &Lanyard,
    secrets: &SecretBox,
) -> Result<lanyard_core::push::PushService> {
    let extra_root_ca_pem = match &data.apns_ca_cert {
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("cannot read --apns-ca-cert {}", p.display()))?,
        ),
        None => None,
    };
    Ok(lanyard_core::push::PushService::new(
        lanyard.clone(),
        secrets.clone(),
        data.apns_url.clone(),
        lanyard_apple::apns::ApnsOptions {
            extra_root_ca_pem,
            ..Default::default()
        },
    ))
}
