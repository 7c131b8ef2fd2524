//! Users: the people who enroll their Macs. The email is the sign-in name and, when "use email
//! address as managed Apple ID" is on, also the managed Apple ID.

use argon2::password_hash::{rand_core::OsRng, Output, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{Actor, CoreError, Lanyard, Result};
use lanyard_store::{Audit, ListQuery, NewUser, User, UserChange};

/// A user as the API and CLI show it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    /// The managed Apple ID the user's Mac must be signed in with.
    pub managed_apple_id: Option<String>,
    pub enabled: bool,
    pub has_password: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            display_name: u.display_name,
            managed_apple_id: u.managed_apple_id,
            enabled: u.enabled,
            has_password: u.password_hash.is_some(),
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// Input for creating a user.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Optional: users may also sign in through the organisation's identity provider later.
    #[serde(default)]
    pub password: Option<String>,
    /// Defaults to the email when "use email address as managed Apple ID" is on.
    #[serde(default)]
    pub managed_apple_id: Option<String>,
}

/// Input for changing a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub display_name: Option<String>,
    pub password: Option<String>,
    pub managed_apple_id: Option<String>,
    pub enabled: Option<bool>,
}

pub const MIN_PASSWORD_LEN: usize = 10;
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Lowercases and checks an email address (one `@`, a plausible domain, no spaces).
pub fn normalize_email(raw: &str) -> Result<String> {
    let e = raw.trim().to_lowercase();
    let bad = || CoreError::Invalid(format!("`{raw}` is not a valid email address"));
    if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = e.split_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad());
    }
    crate::settings::normalize_domain(domain).map_err(|_| bad())?;
    Ok(e)
}

/// The identifier rule of the enrollment sign-in: the identifier the Mac presented (what the
/// person typed on the Mac, the discovery `user-identifier`) must name the person who signed in
/// on the web page, by their email or by their managed Apple Account (case-insensitive).
/// Apple lets the two differ and leaves the mapping to the server ("Implementing the simple
/// authentication account-driven enrollment flow"); the user record is that mapping, and they
/// are equal when "use email address as managed Apple ID" is on. The profile's
/// `AssignedManagedAppleID` is always the managed Apple Account. No presented identifier
/// passes.
pub(crate) fn check_presented_identifier(
    presented: Option<&str>,
    email: &str,
    managed_apple_id: Option<&str>,
) -> Result<()> {
    let Some(presented) = presented.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let names = |id: &str| presented.eq_ignore_ascii_case(id.trim());
    if names(email) || managed_apple_id.is_some_and(names) {
        return Ok(());
    }
    let apple = managed_apple_id
        .filter(|a| !a.eq_ignore_ascii_case(email))
        .map(|a| format!(" (managed Apple Account {a})"))
        .unwrap_or_default();
    Err(CoreError::Forbidden(format!(
        "This Mac is signed in with {presented}, but you signed in as {email}{apple}. Sign in \
         on the Mac and here with the same account."
    )))
}

/// Hashes a password with argon2id (the crate's default parameters: 19 MiB, two passes), off
/// the runtime's worker threads and one check at a time (`argon2_turn`).
pub async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_string();
    argon2_turn(move || hash_password_now(&password))
        .await
        .unwrap_or_else(|e| Err(CoreError::failed("hashing a password", e.to_string())))
}

/// Runs an argon2 computation on a blocking thread, one at a time: each takes 19 MiB and tens of
/// milliseconds of one core, so running them on the runtime's worker threads stalled every
/// other request on that worker, and running several at once multiplied the memory. A burst of
/// sign-ins queues here instead. `Err` only if the blocking task could not run.
async fn argon2_turn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, tokio::task::JoinError> {
    static TURN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    // The semaphore is never closed, so `acquire` cannot fail; without a permit the check
    // would still be right, only not queued. The permit goes with the blocking task, so a
    // request cancelled while it waits for the answer does not let a second one start.
    let permit = TURN.acquire().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
}

/// [`hash_password`] on the calling thread.
pub(crate) fn hash_password_now(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(CoreError::Invalid(format!(
            "passwords must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(CoreError::Invalid(format!(
            "passwords may have at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    let failed = |e: &dyn std::fmt::Display| CoreError::failed("hashing a password", e.to_string());
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let out = argon2_output(
        Algorithm::Argon2id,
        Version::V0x13,
        &params,
        password,
        salt.as_salt(),
        Params::DEFAULT_OUTPUT_LEN,
    )
    .map_err(|e| failed(&e))?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    }
    .to_string())
}

/// Checks a password against a stored argon2 hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    if params.block_count() > MAX_ARGON2_BLOCKS {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2_output(algorithm, version, &params, password, salt, expected.len())
        .is_ok_and(|out| Output::new(&out).is_ok_and(|o| o == expected))
}

/// The raw argon2 output of `password` with `salt` (as stored, Base64), `len` bytes long,
/// computed in working memory of its own ([`with_argon2_memory`]).
fn argon2_output(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &str,
    salt: Salt<'_>,
    len: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; len];
    with_argon2_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Largest argon2 memory a stored hash may ask for (256 MiB); a larger one never matches.
const MAX_ARGON2_BLOCKS: usize = 256 * 1024;
/// The least capacity, in 1 KiB blocks, of an argon2 working memory: just over 32 MiB, the
/// largest size glibc's malloc lets a freed block raise its mmap threshold to
/// (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit systems).
const ARGON2_MIN_CAPACITY_BLOCKS: usize = 32 * 1024 + 1;

/// Runs `f` with argon2 working memory of `blocks` 1 KiB blocks, allocated for this one check
/// and returned to the system afterwards.
///
/// The allocation asks for more than 32 MiB of capacity, of which only the `blocks` argon2 uses
/// (19 MiB with the default parameters) are ever written, so only those become resident. A
/// block that large is always its own `mmap` for glibc's malloc, is unmapped when freed, and —
/// being over 32 MiB — does not raise malloc's dynamic mmap threshold. (Freeing a 19 MiB block
/// raised it to 19 MiB: later medium allocations, the next argon2 memory among them, came from
/// per-thread arenas and stayed there — a server that had signed in 20 Macs held 70–120 MiB more
/// than an idle one. Keeping one 19 MiB buffer for reuse avoided that but held it for the
/// process's lifetime.) A sign-in costs the page faults of its 19 MiB; an idle server holds none.
fn with_argon2_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let mut memory: Vec<Block> = Vec::with_capacity(blocks.max(ARGON2_MIN_CAPACITY_BLOCKS));
    memory.resize(blocks, Block::default());
    f(&mut memory)
}

fn clean_display_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.chars().count() > 200 || n.chars().any(|c| c.is_control()) {
        return Err(CoreError::Invalid(
            "display names are at most 200 printable characters".into(),
        ));
    }
    Ok(n.to_string())
}

impl Lanyard {
    pub async fn create_user(&self, actor: &Actor, input: CreateUser) -> Result<UserView> {
        actor.require_write()?;
        let settings = self.enrollment_settings().await?;
        let email = normalize_email(&input.email)?;
        let managed_apple_id = match input.managed_apple_id.as_deref() {
            Some(id) if !id.trim().is_empty() => Some(normalize_email(id)?),
            _ if settings.use_email_as_managed_apple_id => Some(email.clone()),
            _ => None,
        };
        let display_name = match input.display_name.as_deref() {
            Some(n) if !n.trim().is_empty() => clean_display_name(n)?,
            _ => email.split('@').next().unwrap_or_default().to_string(),
        };
        let password_hash = match input.password.as_deref() {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(CoreError::Conflict(format!(
                "a user with email {email} already exists"
            )));
        }
        let audit = Audit::new(
            &actor.name,
            "user.create",
            &email,
            json!({"display_name": display_name, "managed_apple_id": managed_apple_id,
                   "password_set": password_hash.is_some()}),
        );
        let user = self
            .store
            .create_user(
                &NewUser {
                    email: email.clone(),
                    display_name,
                    password_hash,
                    managed_apple_id,
                },
                &audit,
            )
            .await
            .map_err(|e| CoreError::creating(format!("a user with email {email}"), e))?;
        Ok(user.into())
    }

    pub async fn list_users(&self, query: &ListQuery) -> Result<Vec<UserView>> {
        Ok(self
            .store
            .list_users(query)
            .await?
            .into_iter()
            .map(UserView::from)
            .collect())
    }

    /// Finds a user by id or email.
    pub async fn find_user(&self, key: &str) -> Result<User> {
        let found = match key.parse::<i64>() {
            Ok(id) => self.store.user_by_id(id).await?,
            Err(_) => self.store.user_by_email(&normalize_email(key)?).await?,
        };
        found.ok_or_else(|| CoreError::NotFound(format!("user {key}")))
    }

    pub async fn update_user(
        &self,
        actor: &Actor,
        key: &str,
        input: UpdateUser,
    ) -> Result<UserView> {
        actor.require_write()?;
        let user = self.find_user(key).await?;
        let mut change = UserChange::default();
        let mut detail = serde_json::Map::new();
        if let Some(n) = input.display_name.as_deref() {
            change.display_name = Some(clean_display_name(n)?);
            detail.insert("display_name".into(), json!(change.display_name));
        }
        if let Some(p) = input.password.as_deref() {
            change.password_hash = Some(hash_password(p).await?);
            detail.insert("password_set".into(), json!(true));
        }
        if let Some(id) = input.managed_apple_id.as_deref() {
            change.managed_apple_id = Some(if id.trim().is_empty() {
                None
            } else {
                Some(normalize_email(id)?)
            });
            detail.insert("managed_apple_id".into(), json!(change.managed_apple_id));
        }
        if let Some(e) = input.enabled {
            change.enabled = Some(e);
            detail.insert("enabled".into(), json!(e));
        }
        if detail.is_empty() {
            return Err(CoreError::Invalid("nothing to change".into()));
        }
        let action = match input.enabled {
            Some(false) => "user.disable",
            Some(true) => "user.enable",
            None => "user.update",
        };
        let audit = Audit::new(&actor.name, action, &user.email, detail.into());
        Ok(self
            .store
            .update_user(user.id, &change, &audit)
            .await?
            .into())
    }

    /// Checks a user's email and password for the enrollment sign-in. Every failure reads the
    /// same to the caller, so the page cannot be used to discover who exists.
    ///
    /// Every attempt goes through the sign-in throttle (see [`crate::sign_in`]) for this email
    /// and `client` address before the password is checked; an unknown email is throttled and
    /// checked (against a dummy hash) the same way as a known one.
    pub async fn authenticate_user(
        &self,
        email: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<User> {
        let denied = || CoreError::Unauthorized("wrong email or password".into());
        let key = self
            .reserve_sign_in(lanyard_store::SignInKind::Enrollment, email, client)
            .await?;
        let user = match normalize_email(email) {
            Ok(email) => self.store.user_by_email(&email).await?,
            Err(_) => None,
        };
        let ok = password_matches(
            password,
            user.as_ref().and_then(|u| u.password_hash.as_deref()),
        )
        .await;
        let Some(user) = user.filter(|_| ok) else {
            return Err(denied());
        };
        self.sign_in_passed(&key).await?;
        if !user.enabled {
            return Err(CoreError::Forbidden(
                "this account is disabled; ask your IT administrator".into(),
            ));
        }
        Ok(user)
    }
}

/// Whether `password` matches an account's `hash`. Without a hash (no such account, or one
/// without a password) it is checked against [`dummy_hash`] all the same and never matches,
/// so the answer takes as long either way.
pub(crate) async fn password_matches(password: &str, hash: Option<&str>) -> bool {
    let (password, hash) = (password.to_string(), hash.map(str::to_string));
    argon2_turn(move || {
        let ok = verify_password(&password, hash.as_deref().unwrap_or_else(|| dummy_hash()));
        ok && hash.is_some()
    })
    .await
    .unwrap_or(false)
}

/// A hash of a random password, made once with the same parameters as real hashes, that a
/// sign-in with an unknown name is checked against: the answer takes as long as for a real
/// account, so timing does not tell which names exist.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        // Cannot fail for a password of this length; an empty hash would only match nothing.
        hash_password_now(&crate::admins::random_password()).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_agree_with_the_argon2_crate_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // A hash stored by the crate's own hasher (as every earlier Lanyard wrote) verifies.
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse battery", &theirs));
        assert!(!verify_password("correct horse batterz", &theirs));
        // Ours verifies with the crate's verifier, with the same parameters.
        let ours = hash_password_now("correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong horse battery", &parsed)
            .is_err());
        let params = |h: &str| h.split('$').take(4).collect::<Vec<_>>().join("$");
        assert_eq!(params(&ours), params(&theirs));
        // Other parameters in a stored hash are honoured (a smaller memory, three passes).
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 3, 1, None).unwrap(),
        )
        .hash_password(b"correct horse battery", &salt)
        .unwrap()
        .to_string();
        assert!(verify_password("correct horse battery", &small));
        assert!(!verify_password("correct horse batterz", &small));
        // A hash asking for more memory than Lanyard allows never matches.
        let huge = small.replace("m=4096", "m=4194304");
        assert!(!verify_password("correct horse battery", &huge));
    }

    #[test]
    fn the_dummy_hash_is_a_real_hash_with_the_real_parameters() {
        let dummy = dummy_hash();
        let real = hash_password_now("some password or other").unwrap();
        let params = |h: &str| h.split('$').take(4).collect::<Vec<_>>().join("$");
        assert_eq!(params(dummy), params(&real), "{dummy} / {real}");
        assert!(PasswordHash::new(dummy).is_ok());
        assert!(!verify_password("", dummy));
        assert_eq!(dummy_hash(), dummy, "made once");
    }

    #[test]
    fn the_presented_identifier_is_the_email_or_the_managed_apple_account() {
        let ann = |p: Option<&str>| {
            check_presented_identifier(p, "ann@example.com", Some("ann@appleid.example.com"))
        };
        assert!(ann(None).is_ok());
        assert!(ann(Some("  ")).is_ok());
        assert!(ann(Some("ann@example.com")).is_ok());
        assert!(ann(Some(" Ann@AppleID.example.com ")).is_ok());
        let Err(CoreError::Forbidden(m)) = ann(Some("bob@example.com")) else {
            panic!("another person's identifier passed");
        };
        assert_eq!(
            m,
            "This Mac is signed in with bob@example.com, but you signed in as ann@example.com \
             (managed Apple Account ann@appleid.example.com). Sign in on the Mac and here with \
             the same account."
        );
        // Equal when the email is the managed Apple Account; none yet: the email only.
        assert!(
            check_presented_identifier(Some("ann@example.com"), "ann@example.com", None).is_ok()
        );
        assert!(matches!(
            check_presented_identifier(Some("ann@appleid.example.com"), "ann@example.com", None),
            Err(CoreError::Forbidden(_))
        ));
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "ann",
            "@example.com",
            "ann@",
            "a b@example.com",
            "ann@@example.com",
            "ann@localhost",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(hash_password_now("short").is_err());
        let h = hash_password_now("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
