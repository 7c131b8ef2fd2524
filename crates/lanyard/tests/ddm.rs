#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Declarative device management end to end, on both databases, against the real
//! `lanyard serve` and the fake APNs: an administrator creates an Exchange account
//! configuration and a certificate asset (with the configuration installing it) for a person;
//! their simulated Mac enrolls, gets the `DeclarativeManagement` command on its user channel,
//! fetches tokens, the manifest, every declaration and the asset's data (with its identity),
//! checks them against Apple's schema and reports them active. The administrator changes the
//! set: the Mac is pushed, synchronises only what changed and reports a declaration it fails
//! to apply. A type User Enrollment forbids (`passcode.settings`) is refused with the schema's
//! reason and changes nothing. Bad device input: a declaration not assigned is 404, a malformed
//! status report or one about a declaration not assigned is 400 and stores nothing, asset data
//! goes only to a Mac it is assigned to.
//!
//! The administrator's steps call the domain (`DeclarationService`) on the server's database
//! and secret key, as the admin API and CLI do; the push they ask for is recorded in the
//! database and sent by the server's push sweep.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::admins::Role;
use lanyard_core::declarations::{
    generated_activation_identifier, AssetData, AssignTo, DeclarationInput, DeclarationService,
    DeclarationUpdate,
};
use lanyard_core::{Actor, CoreError, Lanyard};
use lanyard_pki::SecretBox;
use lanyard_store::{DeclarationValidity, PostgresStore, SqliteStore, Store};
use lanyard_testkit::fake_apns::{fake_push_certificate, FakeApns, FakeApnsOptions};
use lanyard_testkit::sim::{SimMac, SimOptions};
use lanyard_testkit::Channel;
use rstest::rstest;
use serde_json::{json, Value};
use support::{Db, Server};

const TOPIC: &str = "com.apple.mgmt.External.7d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09";
const PASSWORD: &str = "a long password";
const EXCHANGE: &str = "com.example.exchange";
const CERT_ASSET: &str = "com.example.ca-asset";
const CERT_CONFIG: &str = "com.example.ca";
const EXTRA: &str = "com.example.test";
const PASSCODE: &str = "com.example.passcode";

async fn domain(s: &Server) -> (Lanyard, DeclarationService) {
    let store: Arc<dyn Store> = if s.database_url.starts_with("sqlite:") {
        Arc::new(SqliteStore::connect(&s.database_url).await.unwrap())
    } else {
        Arc::new(PostgresStore::connect(&s.database_url).await.unwrap())
    };
    let key = std::fs::read_to_string(s.data_dir.path().join("secret.key")).unwrap();
    let secrets = SecretBox::new(SecretBox::key_from_base64(key.trim()).unwrap());
    let lanyard = Lanyard::new(store);
    let service = DeclarationService::new(lanyard.clone(), secrets, &s.url);
    (lanyard, service)
}

fn admin() -> Actor {
    Actor {
        name: "admin:test".into(),
        role: Role::Administrator,
    }
}

async fn wait_for_pushes(fake: &FakeApns, token_hex: &str, count: usize) {
    for _ in 0..200 {
        if fake
            .pushes()
            .iter()
            .filter(|p| p.token_hex == token_hex)
            .count()
            >= count
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fake APNs saw fewer than {count} pushes to the user channel");
}

fn exchange(visible_name: &str) -> Value {
    json!({
        "VisibleName": visible_name,
        "EnabledProtocolTypes": ["EWS", "EAS"],
        "HostName": "mail.example.com",
    })
}

async fn sim(s: &Server, email: &str) -> SimMac {
    let mut mac = SimMac::new(SimOptions {
        ca_cert_pem: Some(s.ca_pem()),
        push_topic: Some(TOPIC.into()),
        ..SimOptions::new(s.url.clone(), email, PASSWORD)
    })
    .unwrap();
    mac.enroll().await.unwrap();
    mac
}

fn enrollment_id_of(s: &Server, email: &str) -> String {
    let (ok, out, err) = s.cli(&["device", "list", "--json"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["user_email"] == email || d.to_string().contains(email))
        .and_then(|d| d["id"].as_str())
        .unwrap()
        .to_string()
}

// Multi-threaded: the fake APNs keeps serving while the test waits on CLI processes.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_reach_the_mac_and_come_back_as_status(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let fake = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("apns-ca.pem");
    std::fs::write(&ca, fake.ca_pem()).unwrap();
    let url = fake.url();
    let ca_text = ca.display().to_string();
    let Some(s) = Server::start_with(
        db,
        &[
            ("LANYARD_APNS_URL", url.as_str()),
            ("LANYARD_APNS_CA_CERT", ca_text.as_str()),
            ("LANYARD_PUSH_SWEEP_INTERVAL", "1s"),
        ],
    )
    .await
    else {
        return;
    };
    for email in ["ann@example.com", "bob@example.com"] {
        let (ok, _, err) = s.cli_stdin(
            &["user", "add", email, "--password", "-"],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "{err}");
    }
    let (ok, _, err) = s.cli(&["settings", "set", "managed-domains", "example.com"]);
    assert!(ok, "{err}");
    let cert = fake_push_certificate(TOPIC).unwrap();
    let p12 = dir.path().join("push.p12");
    std::fs::write(&p12, &cert.pkcs12_der).unwrap();
    let (ok, _, err) = s.cli_stdin(
        &["push-cert", "upload", "--p12", &p12.display().to_string()],
        &format!("{}\n", cert.pkcs12_password),
    );
    assert!(ok, "{err}");
    let (lanyard, ddm) = domain(&s).await;
    let actor = admin();

    // The administrator: a certificate asset (Lanyard serves its data), the configuration
    // installing it, an Exchange account, in a set assigned to Ann.
    let ca_pem = s.ca_pem();
    ddm.create(
        &actor,
        DeclarationInput {
            declaration_type: "com.apple.asset.credential.certificate".into(),
            identifier: CERT_ASSET.into(),
            payload: json!({}),
            asset_data: Some(AssetData {
                content_type: "application/pem".into(),
                data: ca_pem.clone(),
            }),
        },
    )
    .await
    .unwrap();
    ddm.create(
        &actor,
        DeclarationInput {
            declaration_type: "com.apple.configuration.security.certificate".into(),
            identifier: CERT_CONFIG.into(),
            payload: json!({"CredentialAssetReference": CERT_ASSET}),
            asset_data: None,
        },
    )
    .await
    .unwrap();
    let created = ddm
        .create(
            &actor,
            DeclarationInput {
                declaration_type: "com.apple.configuration.account.exchange".into(),
                identifier: EXCHANGE.into(),
                payload: exchange("Work mail"),
                asset_data: None,
            },
        )
        .await
        .unwrap();
    // An unknown key and an unknown asset reference are refused, naming the key.
    let bad = ddm
        .create(
            &actor,
            DeclarationInput {
                declaration_type: "com.apple.configuration.security.certificate".into(),
                identifier: "com.example.bad".into(),
                payload: json!({"CredentialAssetReference": "com.example.nothing"}),
                asset_data: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, CoreError::Invalid(m) if m.contains("CredentialAssetReference")),
        "{bad}"
    );
    ddm.create_set(&actor, "ann-mail", "Ann's mail")
        .await
        .unwrap();
    for id in [EXCHANGE, CERT_CONFIG, CERT_ASSET] {
        ddm.add_to_set(&actor, "ann-mail", id).await.unwrap();
    }
    ddm.assign(
        &actor,
        "ann-mail",
        &AssignTo::User {
            email: "ann@example.com".into(),
        },
    )
    .await
    .unwrap();

    // Ann's Mac enrolls; its user TokenUpdate starts declarative management.
    let mut mac = sim(&s, "ann@example.com").await;
    let user_token = hex(&mac.push(Channel::User).token);
    wait_for_pushes(&fake, &user_token, 1).await;
    let handled = mac.run_commands(Channel::User, 5).await.unwrap();
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(handled[0].request_type, "DeclarativeManagement");
    assert_eq!(handled[0].status, "Acknowledged");
    let held = &mac.declarative().held;
    let subscriptions = "org.lanyard.status-subscriptions".to_string();
    let mut expected = vec![
        EXCHANGE.to_string(),
        CERT_CONFIG.into(),
        CERT_ASSET.into(),
        subscriptions.clone(),
    ];
    // Lanyard activates each configuration no administrator's activation names.
    for c in [EXCHANGE, CERT_CONFIG, subscriptions.as_str()] {
        expected.push(generated_activation_identifier(c));
    }
    for id in &expected {
        let h = held
            .get(id)
            .unwrap_or_else(|| panic!("{id} not held: {held:?}"));
        assert_eq!(h.valid, "valid", "{id}: {:?}", h.reasons);
        assert!(h.active, "{id} active");
    }
    assert_eq!(held.len(), expected.len());
    python_reads_them_as_apple_schema_allows(held.values().map(|h| h.declaration.to_json()));
    assert_eq!(
        held[EXCHANGE].declaration.server_token,
        created.server_token
    );
    assert_eq!(
        mac.declarative().asset_data.get(CERT_ASSET),
        Some(&ca_pem),
        "the asset's data, fetched with the Mac's identity"
    );

    // What the Mac reported: every declaration active and current, the status items.
    let ann_id = enrollment_id_of(&s, "ann@example.com");
    let status = ddm.enrollment_status(&ann_id).await.unwrap();
    assert_eq!(status.declarations.len(), expected.len(), "{status:?}");
    assert!(status
        .declarations
        .iter()
        .all(|d| d.active && d.current && d.valid == DeclarationValidity::Valid));
    let item = |name: &str| {
        status
            .status_items
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.value.clone())
    };
    assert_eq!(item("device.operating-system.version"), Some(json!("15.2")));
    assert_eq!(item("device.model.family"), Some(json!("Mac")));
    assert!(item("management.client-capabilities").is_some());
    assert!(
        item("management.declarations").is_none(),
        "kept as per-declaration state, not as a raw item"
    );

    // The administrator edits the set: the Exchange account changes and a test configuration
    // joins, which the Mac fails to apply. The Mac is pushed and fetches only what changed.
    mac.conditions().fail_declarations = vec![EXTRA.into()];
    let pushes_before = fake
        .pushes()
        .iter()
        .filter(|p| p.token_hex == user_token)
        .count();
    ddm.update(
        &actor,
        EXCHANGE,
        DeclarationUpdate {
            payload: exchange("Work mail (new)"),
            asset_data: None,
        },
    )
    .await
    .unwrap();
    ddm.create(
        &actor,
        DeclarationInput {
            declaration_type: "com.apple.configuration.management.test".into(),
            identifier: EXTRA.into(),
            payload: json!({"Echo": "hello"}),
            asset_data: None,
        },
    )
    .await
    .unwrap();
    ddm.add_to_set(&actor, "ann-mail", EXTRA).await.unwrap();
    wait_for_pushes(&fake, &user_token, pushes_before + 1).await;
    let handled = mac.run_commands(Channel::User, 5).await.unwrap();
    assert!(
        handled
            .iter()
            .all(|h| h.request_type == "DeclarativeManagement" && h.status == "Acknowledged"),
        "{handled:?}"
    );
    assert_eq!(
        mac.declarative().held[EXCHANGE].declaration.payload["VisibleName"],
        "Work mail (new)"
    );
    let status = ddm.enrollment_status(&ann_id).await.unwrap();
    let extra = status
        .declarations
        .iter()
        .find(|d| d.identifier == EXTRA)
        .unwrap_or_else(|| {
            panic!(
                "{EXTRA} not reported: {status:?}; the Mac holds {:?}; steps {:?}",
                mac.declarative().held.keys().collect::<Vec<_>>(),
                mac.steps()
            )
        });
    assert!(!extra.active);
    assert_eq!(extra.valid, DeclarationValidity::Invalid);
    assert!(
        extra
            .reasons
            .to_string()
            .contains("Error.ConfigurationCannotBeApplied"),
        "{}",
        extra.reasons
    );
    let exchange_state = status
        .declarations
        .iter()
        .find(|d| d.identifier == EXCHANGE)
        .unwrap();
    assert!(exchange_state.current && exchange_state.active);
    assert!(
        status
            .declarations
            .iter()
            .filter(
                |d| d.identifier != EXTRA && d.identifier != generated_activation_identifier(EXTRA)
            )
            .all(|d| d.active && d.current),
        "one failing configuration holds back no other: {status:?}"
    );
    let counts = ddm.status_counts().await.unwrap();
    let count = |id: &str| counts.iter().find(|c| c.identifier == id).cloned().unwrap();
    assert_eq!((count(EXTRA).active, count(EXTRA).failing), (0, 1));
    assert_eq!((count(EXCHANGE).active, count(EXCHANGE).failing), (1, 0));
    admin_surfaces_show_the_failing_declaration(&s, &ann_id).await;

    // A type User Enrollment forbids: refused with the schema's reason, nothing changes.
    ddm.create(
        &actor,
        DeclarationInput {
            declaration_type: "com.apple.configuration.passcode.settings".into(),
            identifier: PASSCODE.into(),
            payload: json!({"RequirePasscode": true}),
            asset_data: None,
        },
    )
    .await
    .unwrap();
    let commands_before = lanyard.command_history(&ann_id, 100).await.unwrap().len();
    let refused = ddm
        .add_to_set(&actor, "ann-mail", PASSCODE)
        .await
        .unwrap_err();
    let m = refused.to_string();
    assert!(matches!(refused, CoreError::Invalid(_)), "{m}");
    assert!(m.contains(PASSCODE) && m.contains("user"), "{m}");
    assert!(!ddm
        .set("ann-mail")
        .await
        .unwrap()
        .members
        .contains(&PASSCODE.to_string()));
    ddm.create_set(&actor, "locked", "").await.unwrap();
    ddm.add_to_set(&actor, "locked", PASSCODE).await.unwrap();
    let refused = ddm
        .assign(&actor, "locked", &AssignTo::AllUserEnrollments)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("User Enrollment"), "{refused}");
    assert!(ddm.set("locked").await.unwrap().assignments.is_empty());
    assert_eq!(
        lanyard.command_history(&ann_id, 100).await.unwrap().len(),
        commands_before,
        "nothing queued"
    );

    // Bad device input.
    let (st, _, body) = mac
        .declarative_checkin_raw(
            Channel::User,
            &format!("declaration/configuration/{PASSCODE}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 404, "{}", String::from_utf8_lossy(&body));
    let items_before = ddm.enrollment_status(&ann_id).await.unwrap();
    for bad in [
        json!({"StatusItems": {}}),
        json!({"StatusItems": [], "Errors": []}),
        json!({"StatusItems": {"management": {"declarations": {"configurations": [
            {"identifier": PASSCODE, "server-token": "x", "active": true, "valid": "valid"}]}}},
            "Errors": []}),
        json!({"StatusItems": {"device": {"operating-system": {"version": "99.0"}},
            "management": {"declarations": {"configurations": [
            {"identifier": EXCHANGE, "server-token": "x", "active": "yes", "valid": "valid"}]}}},
            "Errors": []}),
    ] {
        let data = serde_json::to_vec(&bad).unwrap();
        let (st, _, body) = mac
            .declarative_checkin_raw(Channel::User, "status", Some(&data))
            .await
            .unwrap();
        assert_eq!(
            st.as_u16(),
            400,
            "{bad}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let items_after = ddm.enrollment_status(&ann_id).await.unwrap();
    assert_eq!(
        format!("{:?}", items_before.status_items),
        format!("{:?}", items_after.status_items),
        "nothing stored"
    );
    // The device channel holds nothing: an empty manifest.
    let items = mac
        .declarative_checkin(Channel::Device, "declaration-items", None)
        .await
        .unwrap();
    let items: Value = serde_json::from_slice(&items).unwrap();
    assert_eq!(items["Declarations"]["Configurations"], json!([]));

    // Asset data: not without the Mac's signature, not to a Mac it is not assigned to.
    let asset_url = format!("{}/mdm/assets/{CERT_ASSET}", s.url);
    let r = s.client().get(&asset_url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let mut bob = sim(&s, "bob@example.com").await;
    // No set reaches Bob's Mac, yet as a User Enrollment Mac it is put under declarative
    // management at enrollment: it holds Lanyard's status subscriptions and their activation
    // only, and reports its status items.
    support::sync_declarative_start(&mut bob).await;
    let held: Vec<&String> = bob.declarative().held.keys().collect();
    assert_eq!(
        held,
        [
            &lanyard_core::declarations::generated_activation_identifier(
                lanyard_core::declarations::STATUS_SUBSCRIPTIONS_IDENTIFIER
            ),
            &lanyard_core::declarations::STATUS_SUBSCRIPTIONS_IDENTIFIER.to_string(),
        ]
    );
    let bob_id = enrollment_id_of(&s, "bob@example.com");
    let bob_status = ddm.enrollment_status(&bob_id).await.unwrap();
    assert!(
        format!("{:?}", bob_status.status_items).contains("device.operating-system.version"),
        "{bob_status:?}"
    );
    // Asked again, nothing has changed.
    let bob_sync = bob.declarative_sync(Channel::User).await.unwrap();
    assert!(bob_sync.fetched.is_empty(), "{bob_sync:?}");
    let (st, _) = bob.get_signed(&asset_url, Channel::User).await.unwrap();
    assert_eq!(
        st.as_u16(),
        404,
        "asset data only for the Macs it is assigned to"
    );
    let (st, data) = mac.get_signed(&asset_url, Channel::User).await.unwrap();
    assert_eq!((st.as_u16(), data), (200, ca_pem.clone()));
    let (st, _, _) = bob
        .declarative_checkin_raw(
            Channel::User,
            &format!("declaration/asset/{CERT_ASSET}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 404);
    drop(ddm);
    drop(lanyard);
    s.stop().await;
}

/// The administrator's views of the failing declaration: the device page (its state with the
/// reasons, and the status items), the Devices list's "declarations failing" filter, the
/// Declarations page's counts, the admin API and the CLI.
async fn admin_surfaces_show_the_failing_declaration(s: &Server, ann_id: &str) {
    use support::portal::{browser, get, sign_in};
    let c = browser(s);
    sign_in(&c, s, "admin", &s.admin_password).await;
    let (st, page) = get(&c, s, &format!("/portal/devices/{ann_id}")).await;
    assert_eq!(st, 200);
    assert!(
        page.contains(&format!(
            "data-declaration=\"{EXTRA}\" data-valid=\"invalid\""
        )),
        "{page}"
    );
    assert!(
        page.contains("Error.ConfigurationCannotBeApplied"),
        "{page}"
    );
    assert!(
        page.contains("data-item=\"device.operating-system.version\""),
        "{page}"
    );
    let (st, page) = get(&c, s, "/portal/devices?failing=1").await;
    assert_eq!(st, 200);
    assert!(
        page.contains(&format!("/portal/devices/{ann_id}")),
        "{page}"
    );
    assert!(page.contains("1 device<"), "{page}");
    let (st, page) = get(&c, s, "/portal/declarations").await;
    assert_eq!(st, 200);
    let row = page
        .split(&format!("data-declaration=\"{EXTRA}\""))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("{EXTRA} not listed: {page}"));
    assert!(row.contains("<td class=\"failing\">1</td>"), "{row}");

    let api = s.client();
    let token = s.admin_session(&api).await;
    let listed: Value = api
        .get(format!(
            "{}/api/v1/devices?declarations_failing=true",
            s.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], ann_id);
    let reported: Value = api
        .get(format!("{}/api/v1/devices/{ann_id}/declarations", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reported["declarations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["identifier"] == EXTRA && d["valid"] == "invalid"),
        "{reported}"
    );

    let (ok, out, err) = s.cli(&["device", "show", ann_id]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(EXTRA))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("invalid"), "{line}");
    assert!(out.contains("status items:"), "{out}");
    let (ok, out, err) = s.cli(&["device", "list", "--declarations-failing", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains(ann_id), "{out}");
}

/// What the Mac received, checked by an independent reader of Apple's schema: the Python script
/// of lanyard-proto's tests (PyYAML over `../shared/apple-schema`, no Lanyard code). Skipped
/// loudly without the schema or the harness Python (`.venv-harness`, `LANYARD_HARNESS_PYTHON`);
/// a failure under `CI=true`.
fn python_reads_them_as_apple_schema_allows(declarations: impl Iterator<Item = Value>) {
    use std::io::Write as _;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema = root.join("../shared/apple-schema");
    let python = std::env::var_os("LANYARD_HARNESS_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-harness/bin/python"));
    let usable = std::process::Command::new(&python)
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable || !schema.exists() {
        let why = format!(
            "needs {} with PyYAML and {}",
            python.display(),
            schema.display()
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Python schema check cannot run and CI=true: {why}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED Python schema check: {why} !!!!!\n"
        );
        return;
    }
    let docs: Vec<Value> = declarations.collect();
    let mut child = std::process::Command::new(&python)
        .arg(root.join("crates/lanyard-proto/tests/py/check_declarations.py"))
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(docs.clone()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("OK ")).count(),
        docs.len(),
        "{text}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
