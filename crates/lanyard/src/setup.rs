//! Opening what a command needs: the data directory, the database (the one place that picks a
//! concrete backend from the URL), the secret key, and logging.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lanyard_core::Lanyard;
use lanyard_pki::SecretBox;
use lanyard_store::{Backend, PostgresStore, SqliteStore, Store};

use crate::settings::{GlobalSettings, LogFormat};

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

/// What opening the database does about its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Apply the migrations not applied yet (`lanyard migrate`, `lanyard serve`).
    Apply,
    /// Refuse a database that lacks any of them (every other command): a command run against
    /// a server's database must not change its schema behind the server's back.
    Require,
}

/// Opens the database named by the settings and applies or requires its migrations.
pub async fn open_store(data: &GlobalSettings, migrations: Migrations) -> Result<Opened> {
    let url = data.database_url();
    let backend = Backend::from_url(&url)?;
    ensure_data_dir(&data.data_dir)?;
    let apply = migrations == Migrations::Apply;
    let (store, pending): (Arc<dyn Store>, Vec<String>) = match backend {
        Backend::Sqlite => {
            let s = if apply {
                SqliteStore::connect_with(&url, data.pool()).await
            } else {
                SqliteStore::connect_existing(&url, data.pool()).await
            };
            let s = s.map_err(|e| match e {
                lanyard_store::StoreError::NotFound(what) => anyhow::anyhow!(
                    "there is no database at {what}: run `lanyard migrate` to create it (or \
                     `lanyard serve`, which does too)"
                ),
                other => anyhow::Error::new(other).context("cannot open the SQLite database"),
            })?;
            if apply {
                s.migrate().await?;
            }
            let pending = s.pending_migrations().await?;
            (Arc::new(s), pending)
        }
        Backend::Postgres => {
            // An unreachable server's error already names host, port and cause.
            let s = PostgresStore::connect_with(&url, data.pool())
                .await
                .map_err(|e| match e {
                    lanyard_store::StoreError::Unavailable(why) => anyhow::anyhow!(why),
                    other => anyhow::Error::new(other).context("cannot connect to PostgreSQL"),
                })?;
            if apply {
                s.migrate().await?;
            }
            let pending = s.pending_migrations().await?;
            (Arc::new(s), pending)
        }
    };
    if !pending.is_empty() {
        bail!(
            "the database is not migrated to this version of Lanyard (missing: {}): run \
             `lanyard migrate` first (every server process on this database should run this \
             version)",
            pending.join(", ")
        );
    }
    let migrations = match backend {
        Backend::Sqlite => SqliteStore::migration_names(),
        Backend::Postgres => PostgresStore::migration_names(),
    };
    let backend_name = store.backend();
    Ok(Opened {
        lanyard: Lanyard::new(store)
            .with_apns_environment(lanyard_core::pushcert::environment_of_url(&data.apns_url)),
        backend_name,
        migrations,
    })
}

/// The key that seals private keys, read from its file (which must be readable by its owner
/// only). A missing file is created with a fresh key only while the database holds nothing
/// sealed: a database that does was sealed with a key that is lost, and a new one could open
/// none of it.
pub async fn secret_box(data: &GlobalSettings, lanyard: &Lanyard) -> Result<SecretBox> {
    let path = data.secret_key_path();
    if path.exists() {
        let text = read_private(&path, "the secret key")?;
        let key = SecretBox::key_from_base64(text.trim())
            .with_context(|| format!("{} is not a valid secret key", path.display()))?;
        return Ok(SecretBox::new(key));
    }
    let sealed = lanyard
        .store()
        .holds_sealed_material()
        .await
        .context("cannot check the database for sealed keys")?;
    if sealed {
        bail!(
            "the secret key file {} is missing, but the database already holds keys sealed with \
             a secret key: refusing to create a new key, which could open none of them. Restore \
             the original key file (from a backup, or from another server process on this \
             database) to {} or give its place with --secret-key-file",
            path.display(),
            path.display()
        );
    }
    let key = SecretBox::generate_key();
    write_private(&path, SecretBox::key_to_base64(&key).as_bytes())?;
    tracing::info!(path = %path.display(), "created a new secret key");
    Ok(SecretBox::new(key))
}

/// Reads a file holding a secret, refusing one that other users could read or change.
pub fn read_private(path: &Path, what: &str) -> Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read {what} {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{what} {} is open to other users (mode {mode:04o}); make it readable by its \
                 owner only: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
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
    // Colours only on a terminal: in a file or the journal the codes would split `id=…` and
    // every other field, and `grep` for a request id would miss its lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        log_panics();
    }
}

/// A panic is written to the log, once, as an error in the span it happened in: in a request
/// handler that span carries the request id (the HTTP layer answers the request `500`).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %message, %location, "panicked");
    }));
}

/// The push service for this configuration (APNs URL, extra trust for test servers).
pub fn push_service(
    data: &GlobalSettings,
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
