#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Domain rules over a real (SQLite) store: the storage behaviour itself is covered on both
//! backends by the store's conformance suite; these tests cover what the domain adds.

use std::sync::Arc;

use lanyard_core::admins::Role;
use lanyard_core::attributes::{AttributeKind, DefineAttribute};
use lanyard_core::settings::{OwnershipMode, SettingsPatch};
use lanyard_core::users::{CreateUser, UpdateUser};
use lanyard_core::{Actor, CoreError, Lanyard};
use lanyard_store::{AuditFilter, SqliteStore};

async fn lanyard() -> (Lanyard, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (Lanyard::new(Arc::new(store)), dir)
}

fn read_only() -> Actor {
    Actor {
        name: "admin:viewer".into(),
        role: Role::ReadOnly,
    }
}

#[tokio::test]
async fn users_follow_the_managed_apple_id_setting() {
    let (l, _d) = lanyard().await;
    let cli = Actor::cli();
    let ann = l
        .create_user(
            &cli,
            CreateUser {
                email: " Ann@Example.com".into(),
                display_name: None,
                password: Some("a long enough password".into()),
                managed_apple_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ann.email, "ann@example.com");
    assert_eq!(ann.managed_apple_id.as_deref(), Some("ann@example.com"));
    assert_eq!(ann.display_name, "ann");

    l.update_enrollment_settings(
        &cli,
        SettingsPatch {
            use_email_as_managed_apple_id: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let bob = l
        .create_user(
            &cli,
            CreateUser {
                email: "bob@example.com".into(),
                display_name: Some("Bob".into()),
                password: None,
                managed_apple_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(bob.managed_apple_id, None);

    let dup = l
        .create_user(
            &cli,
            CreateUser {
                email: "ANN@example.com".into(),
                display_name: None,
                password: None,
                managed_apple_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(dup, CoreError::Conflict(_)), "{dup:?}");

    assert!(l
        .authenticate_user("ann@example.com", "a long enough password", None)
        .await
        .is_ok());
    assert!(matches!(
        l.authenticate_user("ann@example.com", "wrong password!!", None)
            .await,
        Err(CoreError::Unauthorized(_))
    ));
    l.update_user(
        &cli,
        "ann@example.com",
        UpdateUser {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        l.authenticate_user("ann@example.com", "a long enough password", None)
            .await,
        Err(CoreError::Forbidden(_))
    ));
    let log = l.audit_log(&AuditFilter::default()).await.unwrap();
    let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "user.disable",
            "user.create",
            "settings.update",
            "user.create"
        ]
    );
    assert!(
        log.iter().all(|e| !e.detail.contains("long enough")),
        "no password in the audit log"
    );
}

#[tokio::test]
async fn read_only_admins_change_nothing() {
    let (l, _d) = lanyard().await;
    let ro = read_only();
    let err = l
        .update_enrollment_settings(
            &ro,
            SettingsPatch {
                ownership_mode: Some(OwnershipMode::Employee),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Forbidden(_)));
    assert!(l
        .define_attribute(
            &ro,
            DefineAttribute {
                name: "team".into(),
                kind: AttributeKind::Text,
                required: false,
                choices: vec![],
            },
        )
        .await
        .is_err());
    assert_eq!(
        l.enrollment_settings().await.unwrap().ownership_mode,
        OwnershipMode::Prompt
    );
    assert!(l.list_attributes().await.unwrap().is_empty());
    assert!(l
        .audit_log(&AuditFilter::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn invalid_settings_patch_changes_nothing() {
    let (l, _d) = lanyard().await;
    let err = l
        .update_enrollment_settings(
            &Actor::cli(),
            SettingsPatch {
                manage_only_corporate_resources: Some(false),
                managed_domains: Some(vec!["example.com".into(), "not a domain".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Invalid(_)));
    let s = l.enrollment_settings().await.unwrap();
    assert!(s.manage_only_corporate_resources);
    assert!(s.managed_domains.is_empty());
}

#[tokio::test]
async fn admin_lockout_sessions_and_tokens() {
    let (l, _d) = lanyard().await;
    let (name, password) = l.bootstrap_first_admin().await.unwrap().unwrap();
    assert_eq!(name, "admin");
    assert!(l.bootstrap_first_admin().await.unwrap().is_none());

    let grant = l.admin_sign_in("admin", &password, None).await.unwrap();
    let (actor, csrf) = l.actor_for_session(&grant.secret).await.unwrap();
    assert_eq!(actor.name, "admin:admin");
    assert_eq!(csrf, grant.csrf_token);
    l.admin_sign_out(&grant.secret).await.unwrap();
    assert!(matches!(
        l.actor_for_session(&grant.secret).await,
        Err(CoreError::Unauthorized(_))
    ));

    for _ in 0..5 {
        assert!(matches!(
            l.admin_sign_in("admin", "not the password", None).await,
            Err(CoreError::Unauthorized(_))
        ));
    }
    assert!(
        matches!(
            l.admin_sign_in("admin", &password, None).await,
            Err(CoreError::RateLimited { .. })
        ),
        "locked even with the right password"
    );

    let (tok, secret) = l
        .create_api_token(&Actor::cli(), "admin", "ci", Some(30))
        .await
        .unwrap();
    let actor = l.actor_for_api_token(&secret).await.unwrap();
    assert_eq!(actor.name, "token:ci");
    l.revoke_api_token(&Actor::cli(), tok.id).await.unwrap();
    assert!(l.actor_for_api_token(&secret).await.is_err());
    assert!(l.actor_for_api_token("lyt_guess").await.is_err());
}

#[tokio::test]
async fn ca_is_created_once_and_sealed() {
    let (l, _d) = lanyard().await;
    let key = lanyard_pki::SecretBox::generate_key();
    let secrets = lanyard_pki::SecretBox::new(key);
    let a = l.load_or_create_ca(&secrets, "Example").await.unwrap();
    let b = l.load_or_create_ca(&secrets, "Example").await.unwrap();
    assert_eq!(a.cert_der().unwrap(), b.cert_der().unwrap());
    let stored = l.store().get_pki("ca").await.unwrap().unwrap();
    let key_pem = a.key_pem_pkcs8().unwrap();
    assert!(!stored
        .key_sealed
        .windows(20)
        .any(|w| key_pem.as_bytes().windows(20).any(|k| k == w)));
    let other = lanyard_pki::SecretBox::new(lanyard_pki::SecretBox::generate_key());
    let err = l.load_or_create_ca(&other, "Example").await.unwrap_err();
    assert!(err.to_string().contains("--secret-key"), "{err}");
    // The device PKI is parsed on first use, but a wrong secret key is still refused when it
    // is loaded (at start-up), not at the first enrollment.
    let err = l.load_device_pki(&other, "Example").await.err().unwrap();
    assert!(err.to_string().contains("--secret-key"), "{err}");
    let pki = l.load_device_pki(&secrets, "Example").await.unwrap();
    assert_eq!(pki.ca_cert_pem(), a.cert_pem().unwrap());
    let keys = pki.keys().unwrap();
    assert_eq!(keys.ca.cert_der().unwrap(), a.cert_der().unwrap());
    assert!(std::ptr::eq(keys, pki.keys().unwrap()), "parsed once");
}
