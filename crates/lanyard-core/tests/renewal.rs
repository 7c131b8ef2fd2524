#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The identity renewal job over a real store, on SQLite and PostgreSQL: which enrollments it
//! renews, what the queued `InstallProfile` carries (the enrollment profile with the same
//! identifiers and a fresh SCEP payload whose challenge the store can claim), that a pending
//! renewal is not queued twice, and that the devices are woken.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plist::{Dictionary, Value};

use lanyard_core::admins::hash_secret;
use lanyard_core::commands::PushRequester;
use lanyard_core::enrollment::{profile_identifier, DeviceUrls, EnrollmentService};
use lanyard_core::renewal::IdentityPolicy;
use lanyard_core::Lanyard;
use lanyard_store::*;
use lanyard_testkit::scratch_db::ScratchDb;

const TOPIC: &str = "com.apple.mgmt.External.2b8f5a4e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";

struct Db {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<ScratchDb>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    Db {
        store: Arc::new(store),
        _dir: Some(dir),
        _pg: None,
    }
}

/// A fresh PostgreSQL database (dropped with `Db`, also when the test panics), or `None`
/// (loudly) when PostgreSQL is unavailable outside CI.
async fn postgres() -> Option<Db> {
    let db = ScratchDb::for_test("lanyard_renewal", "the identity renewal test").await?;
    let store = PostgresStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    Some(Db {
        store: Arc::new(store),
        _dir: None,
        _pg: Some(db),
    })
}

impl Db {
    /// Closes the store's connections before its database goes.
    async fn finish(self) {
        drop(self.store);
    }
}

#[derive(Default)]
struct Pushes(Mutex<Vec<String>>);

impl PushRequester for Pushes {
    fn request_push(&self, ids: Vec<String>) {
        self.0.lock().unwrap().extend(ids);
    }
}

const PROFILE: &str = "0E6F3C4A-1B2C-4D5E-8F90-A1B2C3D4E5F6";
const MDM: &str = "1E6F3C4A-1B2C-4D5E-8F90-A1B2C3D4E5F6";
const TRUST: &str = "2E6F3C4A-1B2C-4D5E-8F90-A1B2C3D4E5F6";

/// An enrolled enrollment whose identity expires in `expires_in`; `ids` false: issued before
/// profile identifiers were kept.
async fn enrolled(s: &dyn Store, user: &User, id: &str, expires_in: chrono::Duration, ids: bool) {
    let now = now();
    s.create_enrollment(&NewEnrollment {
        id: id.into(),
        user_id: user.id,
        managed_apple_id: "ann@example.com".into(),
        ownership: Ownership::Employee,
        attributes: "{}".into(),
        mode: EnrollmentMode::UserEnrollment,
        os_version: Some("15.2".into()),
        build_version: None,
        product: None,
        model_family: Some("Mac".into()),
        scep_challenge_hash: format!("challenge-{id}"),
        challenge_expires_at: now + chrono::Duration::hours(1),
        push_topic: TOPIC.into(),
        profile_ids: ids.then(|| ProfileIds {
            profile: PROFILE.into(),
            mdm_payload: MDM.into(),
            trust_payload: TRUST.into(),
        }),
        bearer_token_hash: None,
    })
    .await
    .unwrap();
    let identity = IdentityRecord {
        serial: "01".into(),
        sha256: format!("sha-{id}"),
        not_after: now + expires_in,
    };
    s.claim_scep_challenge(id, &format!("challenge-{id}"), &identity, now)
        .await
        .unwrap()
        .unwrap();
    s.record_authenticate(
        id,
        &AuthenticateRecord {
            device_channel_id: format!("EID-{id}"),
            os_version: None,
            build_version: None,
            product: None,
        },
        now,
    )
    .await
    .unwrap();
    s.record_token_update(
        id,
        &TokenUpdateRecord {
            user_channel_id: None,
            topic: TOPIC.into(),
            push_token: vec![1; 32],
            push_magic: format!("magic-{id}"),
            unlock_token_sealed: None,
        },
        now,
    )
    .await
    .unwrap();
}

fn dict<'a>(d: &'a Dictionary, key: &str) -> &'a Dictionary {
    d.get(key)
        .and_then(Value::as_dictionary)
        .unwrap_or_else(|| panic!("no {key}"))
}

fn text<'a>(d: &'a Dictionary, key: &str) -> &'a str {
    d.get(key)
        .and_then(Value::as_string)
        .unwrap_or_else(|| panic!("no {key}"))
}

async fn renews_before_expiry(db: Db) {
    let s = db.store.as_ref();
    let pushes = Arc::new(Pushes::default());
    let lanyard = Lanyard::new(Arc::clone(&db.store)).with_pusher(pushes.clone());
    let secrets = lanyard_pki::SecretBox::new(lanyard_pki::SecretBox::generate_key());
    let pki = Arc::new(lanyard.load_device_pki(&secrets, "Example").await.unwrap());
    let ca = pki.keys().unwrap().ca.certificate().clone();
    let svc = EnrollmentService::new(
        lanyard.clone(),
        pki,
        DeviceUrls::new("https://mdm.example.com"),
        "Example".into(),
    )
    .with_identity_policy(
        IdentityPolicy::new(Duration::from_secs(7200), Duration::from_secs(3600)).unwrap(),
    )
    // Serving Lanyard's own TLS certificate: the renewed profile keeps the trust payload.
    .with_self_issued_tls(true);
    let user = s
        .create_user(
            &NewUser {
                email: "ann@example.com".into(),
                display_name: "Ann".into(),
                password_hash: None,
                managed_apple_id: Some("ann@example.com".into()),
            },
            &Audit::new("test", "user.create", "ann", serde_json::json!({})),
        )
        .await
        .unwrap();
    let hours = chrono::Duration::hours;
    enrolled(s, &user, "due", chrono::Duration::minutes(30), true).await;
    enrolled(s, &user, "later", hours(2), true).await;
    enrolled(s, &user, "legacy", chrono::Duration::minutes(30), false).await;

    assert_eq!(svc.renew_identities().await.unwrap(), 1);
    assert_eq!(*pushes.0.lock().unwrap(), ["due"], "the device is woken");
    // While the renewal is pending, the job queues nothing more.
    assert_eq!(svc.renew_identities().await.unwrap(), 0);
    assert_eq!(pushes.0.lock().unwrap().len(), 1);
    for id in ["later", "legacy"] {
        assert!(s.command_history(id, 10).await.unwrap().is_empty(), "{id}");
    }
    let history = s.command_history("due", 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].request_type, "InstallProfile");
    assert_eq!(history[0].channel, Channel::Device);

    // The command: InstallProfile of the enrollment profile, signed as at enrollment.
    let e = s.enrollment("due").await.unwrap().unwrap();
    let next = s
        .next_command("due", Channel::Device, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Some(&next.command_uuid), e.renewal_command_uuid.as_ref());
    let outer: Dictionary = plist::from_bytes(&next.payload).unwrap();
    let command = dict(&outer, "Command");
    assert_eq!(text(command, "RequestType"), "InstallProfile");
    let signed = command.get("Payload").and_then(Value::as_data).unwrap();
    let (content, _) = lanyard_pki::verify_cms_attached(signed, &[ca]).unwrap();
    let profile: Dictionary = plist::from_bytes(&content).unwrap();
    assert_eq!(
        text(&profile, "PayloadIdentifier"),
        profile_identifier("due")
    );
    assert_eq!(text(&profile, "PayloadUUID"), PROFILE);
    let payloads: Vec<&Dictionary> = profile
        .get("PayloadContent")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|p| p.as_dictionary().unwrap())
        .collect();
    let of = |t: &str| {
        *payloads
            .iter()
            .find(|p| text(p, "PayloadType") == t)
            .unwrap_or_else(|| panic!("no {t} payload"))
    };
    let mdm = of("com.apple.mdm");
    assert_eq!(text(mdm, "PayloadUUID"), MDM);
    assert_eq!(
        text(mdm, "PayloadIdentifier"),
        format!("{}.mdm", profile_identifier("due"))
    );
    assert_eq!(text(mdm, "Topic"), TOPIC);
    assert_eq!(
        text(mdm, "ServerURL"),
        "https://mdm.example.com/mdm/command"
    );
    assert_eq!(
        text(mdm, "CheckInURL"),
        "https://mdm.example.com/mdm/checkin"
    );
    assert_eq!(text(mdm, "AssignedManagedAppleID"), "ann@example.com");
    assert_eq!(text(mdm, "EnrollmentMode"), "BYOD");
    assert!(!mdm.contains_key("AccessRights"));
    assert_eq!(text(of("com.apple.security.root"), "PayloadUUID"), TRUST);
    let scep = of("com.apple.security.scep");
    let scep_uuid = text(scep, "PayloadUUID");
    assert!(
        ![PROFILE, MDM, TRUST].contains(&scep_uuid),
        "a fresh payload"
    );
    assert_eq!(text(mdm, "IdentityCertificateUUID"), scep_uuid);
    let challenge = text(dict(scep, "PayloadContent"), "Challenge");
    assert_eq!(
        e.renewal_challenge_hash.as_deref(),
        Some(hash_secret(challenge).as_str())
    );
    assert_eq!(e.renewal_challenge_expires_at, e.identity_not_after);

    // The challenge is the enrollment's, once.
    let t = now();
    let renewed = IdentityRecord {
        serial: "02".into(),
        sha256: "sha-renewed".into(),
        not_after: t + chrono::Duration::days(1),
    };
    let found = s
        .scep_challenge_enrollment(&hash_secret(challenge), t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "due");
    let claimed = s
        .claim_scep_challenge("due", &hash_secret(challenge), &renewed, t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, "due");
    assert_eq!(claimed.next_identity_sha256.as_deref(), Some("sha-renewed"));
    assert!(s
        .claim_scep_challenge("due", &hash_secret(challenge), &renewed, t)
        .await
        .unwrap()
        .is_none());
    let audit = s
        .list_audit(&AuditFilter {
            action: Some("enrollment.identity_renewal".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].target, "due");
    db.finish().await;
}

#[tokio::test]
async fn renews_before_expiry_sqlite() {
    renews_before_expiry(sqlite().await).await;
}

#[tokio::test]
async fn renews_before_expiry_postgres() {
    let Some(db) = postgres().await else { return };
    renews_before_expiry(db).await;
}
