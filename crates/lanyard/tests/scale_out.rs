#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! Scale-out on PostgreSQL, exercised: two `lanyard serve` processes on one database behind a
//! TCP load balancer. Macs enroll through one and are commanded through the other; a fan-out
//! is queued through both at once while the Macs poll through both; one process is killed with
//! SIGKILL mid-way, with an ABM sync and pushes in flight. The survivor finishes the work: every
//! command is answered once and stored once (none lost, none handed out twice except to a Mac
//! whose answer was cut off), the pushes the dead process owed are sent, and the ABM sync it
//! held is taken over once its lease lapses.
//!
//! Several server processes share one database only on PostgreSQL (SQLite is the embedded,
//! single-process default), so that test has no SQLite run; SQLite's own crash test kills its
//! one process mid-way and starts it again on the files it left.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lanyard_testkit::commands::Channel;
use lanyard_testkit::fake_abm::{AbmFault, FakeAbm};
use lanyard_testkit::fake_apns::{FakeApns, FakeApnsOptions};
use lanyard_testkit::sim::{Ownership, SimMac, SimOptions};
use serde_json::{json, Value};
use sqlx::Connection;
use support::balancer::{addr_of, Balancer, Route};
use support::{Db, Server};

const MACS: usize = 6;
const PASSWORD: &str = "a long password";

fn email(i: usize) -> String {
    format!("user{i}@example.com")
}

/// What one Mac saw while answering commands through the balancer.
#[derive(Default, Debug)]
struct Seen {
    received: Vec<String>,
    /// Requests that failed in transit (the server died under them) and were sent again.
    cut_off: usize,
}

/// Polls and answers until `want` commands were answered, sending a request again when it is
/// cut off (as a Mac does on its next poll). Counts each answer in `answered`.
async fn answer_until(mac: &mut SimMac, want: &[String], answered: &AtomicUsize) -> Seen {
    let mut seen = Seen::default();
    let mut next = None;
    let mut polls = 0;
    loop {
        let got = match next.take() {
            Some(cmd) => Some(cmd),
            None => {
                if want.iter().all(|w| seen.received.contains(w)) {
                    return seen;
                }
                polls += 1;
                assert!(polls < 600, "the commands never all arrived: {seen:?}");
                match mac.idle().await {
                    Ok(c) => c,
                    Err(e) => {
                        seen.cut_off += 1;
                        eprintln!("idle cut off: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let Some(cmd) = got else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.received.push(cmd.uuid.clone());
        let reply = mac.handle_command(&cmd, Channel::Device).await.unwrap();
        let mut tries = 0;
        loop {
            match mac
                .respond(&cmd.uuid, reply.status, reply.result.clone())
                .await
            {
                Ok(after) => {
                    answered.fetch_add(1, Ordering::SeqCst);
                    next = after;
                    break;
                }
                Err(e) => {
                    seen.cut_off += 1;
                    tries += 1;
                    assert!(tries < 50, "the answer never got through: {e}");
                    eprintln!("answer cut off: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn queue(c: &reqwest::Client, url: &str, token: &str, ids: &[String], kind: &str) -> String {
    let r = c
        .post(format!("{url}/api/v1/commands"))
        .bearer_auth(token)
        .json(&json!({"target": {"enrollments": ids}, "command": {"request_type": kind}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["command_uuid"].as_str().unwrap().to_string()
}

async fn pg_count(url: &str, sql: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_one_database_survive_a_sigkill() {
    let apns = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let abm = FakeAbm::start().await.unwrap();
    abm.add_devices("C02S", 30);
    let dir = tempfile::tempdir().unwrap();
    let apns_ca = dir.path().join("apns-ca.pem");
    std::fs::write(&apns_ca, apns.ca_pem()).unwrap();
    let lb = Balancer::start().await;
    let public = lb.url();
    let (apns_url, apns_ca, abm_url) = (apns.url(), apns_ca.display().to_string(), abm.url());
    let env = [
        ("LANYARD_PUBLIC_URL", public.as_str()),
        ("LANYARD_APNS_URL", apns_url.as_str()),
        ("LANYARD_APNS_CA_CERT", apns_ca.as_str()),
        ("LANYARD_ABM_URL", abm_url.as_str()),
        ("LANYARD_NO_ABM_SYNC", "true"),
        ("LANYARD_ABM_TIMEOUT", "40"),
        ("LANYARD_ABM_SYNC_LEASE", "45"),
        ("LANYARD_PUSH_SWEEP_INTERVAL", "1s"),
    ];
    let Some(a) = Server::start_with(Db::Postgres, &env).await else {
        return;
    };
    let topic = a.upload_push_certificate();
    for i in 0..MACS {
        let (ok, _, err) = a.cli_stdin(
            &["user", "add", &email(i), "--password", "-"],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "{err}");
    }
    assert!(
        a.cli(&["settings", "set", "managed-domains", "example.com"])
            .0
    );
    // An ABM token, uploaded through the first process.
    let pem = dir.path().join("main.pem").display().to_string();
    let p7m = dir.path().join("main.p7m");
    let (ok, _, err) = a.cli(&["abm", "new", "main", "-o", &pem, "--abm-url", &abm_url]);
    assert!(ok, "{err}");
    let cert = std::fs::read(&pem).unwrap();
    std::fs::write(&p7m, abm.token_file(&cert, 365).unwrap()).unwrap();
    let p7m = p7m.display().to_string();
    let (ok, _, err) = a.cli(&["abm", "upload", "main", &p7m, "--abm-url", &abm_url]);
    assert!(ok, "{err}");

    let b = a.start_peer(&env);
    assert!(
        !b.startup_log
            .iter()
            .any(|l| l.contains("one-time password")),
        "the second process must find the first one's administrator: {:?}",
        b.startup_log
    );
    lb.set_backends(vec![addr_of(&a.url), addr_of(&b.url)]);
    let c = a.client();
    let token_a = a.admin_session(&c).await;
    let token_b = {
        let r = c
            .post(format!("{}/api/v1/sessions", b.url))
            .json(&json!({"username": "admin", "password": a.admin_password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        v["session_token"].as_str().unwrap().to_string()
    };

    // Enroll every Mac through the first process.
    lb.route(Route::Only(0));
    let mut macs = Vec::new();
    for i in 0..MACS {
        let mut mac = SimMac::new(SimOptions {
            ownership: Ownership::Employee,
            attrs: BTreeMap::new(),
            os_version: "15.2".into(),
            ca_cert_pem: Some(a.ca_pem()),
            push_topic: Some(topic.clone()),
            ..SimOptions::new(public.clone(), email(i), PASSWORD)
        })
        .unwrap();
        mac.enroll().await.unwrap();
        macs.push(mac);
    }
    let ids = ids_of(&a, &macs);

    // Command one through the second process: queued there, fetched and answered there.
    lb.route(Route::Only(1));
    let first = queue(&c, &b.url, &token_b, &ids[..1], "DeviceInformation").await;
    let none = AtomicUsize::new(0);
    let seen = answer_until(&mut macs[0], std::slice::from_ref(&first), &none).await;
    assert_eq!(seen.received, std::slice::from_ref(&first));
    assert_eq!(seen.cut_off, 0);
    let shown: Value = c
        .get(format!("{}/api/v1/commands/{first}", a.url))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(shown.to_string().contains("acknowledged"), "{shown}");

    // The second process starts an ABM sync and is stuck in it (ABM answers slowly).
    abm.inject([AbmFault::Slow(Duration::from_secs(120))]);
    let sessions = abm.sessions_issued();
    let sync_on_b = {
        let (c, url, t) = (c.clone(), b.url.clone(), token_b.clone());
        tokio::spawn(async move {
            c.post(format!("{url}/api/v1/server-tokens/main/sync"))
                .bearer_auth(&t)
                .send()
                .await
        })
    };
    for _ in 0..100 {
        if abm.sessions_issued() > sessions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        abm.sessions_issued() > sessions,
        "the sync never reached ABM"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Pushes are slow too, so the second process dies owing some.
    apns.set_delay(Duration::from_secs(4));

    // A fan-out through both processes at once (each queues three commands for half of the
    // Macs, so that only the second process owes those Macs their pushes), the Macs polling
    // through both.
    lb.route(Route::RoundRobin);
    let before = lb.passed();
    let (half_a, half_b) = ids.split_at(MACS / 2);
    let kinds = ["ProfileList", "CertificateList", "DeviceInformation"];
    let (from_a, from_b) = tokio::join!(
        async {
            let mut v = Vec::new();
            for k in kinds {
                v.push(queue(&c, &a.url, &token_a, half_a, k).await);
            }
            v
        },
        async {
            let mut v = Vec::new();
            for k in kinds {
                v.push(queue(&c, &b.url, &token_b, half_b, k).await);
            }
            v
        },
    );
    let wants: Vec<Vec<String>> = (0..MACS)
        .map(|i| {
            if i < MACS / 2 {
                from_a.clone()
            } else {
                from_b.clone()
            }
        })
        .collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let killer = {
        let answered = Arc::clone(&answered);
        async move {
            let mut b = b;
            while answered.load(Ordering::SeqCst) < MACS {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            b.kill_now();
            answered.load(Ordering::SeqCst)
        }
    };
    let polling = answer_all(&mut macs, &wants, &answered);
    let (at_kill, seen) = tokio::join!(killer, polling);
    apns.set_delay(Duration::ZERO);
    let after = lb.passed();
    assert!(
        after[1] > before[1],
        "no Mac talked to the second process during the fan-out: {before:?} → {after:?}"
    );
    let total = MACS * kinds.len();
    assert!(
        at_kill < total,
        "the second process was killed only after all the work was done"
    );
    eprintln!("killed after {at_kill} of {total} answers; connections {before:?} → {after:?}");

    // Every Mac got its commands; a second delivery only to a Mac whose request was cut off.
    for (i, s) in seen.iter().enumerate() {
        let mut got = s.received.clone();
        got.sort();
        got.dedup();
        let mut w = wants[i].clone();
        w.sort();
        assert_eq!(got, w, "Mac {i}: {s:?}");
        assert!(
            s.received.len() - got.len() <= s.cut_off,
            "Mac {i} was handed a command twice without a cut-off request: {s:?}"
        );
        eprintln!("Mac {i}: {s:?}");
    }
    // Stored once each, nothing left queued.
    let db = &a.database_url;
    for uuid in from_a.iter().chain(&from_b) {
        let n = pg_count(
            db,
            &format!(
                "SELECT COUNT(*) FROM command_results WHERE command_uuid = '{uuid}' \
                 AND status = 'acknowledged'"
            ),
        )
        .await;
        assert_eq!(n, (MACS / 2) as i64, "results of {uuid}");
    }
    assert_eq!(
        // The Macs here work their device channels; each one's user channel keeps the
        // DeclarativeManagement its enrollment started.
        pg_count(
            db,
            "SELECT COUNT(*) FROM command_queue WHERE channel = 'device'"
        )
        .await,
        0,
        "commands left queued"
    );

    // The pushes the dead process owed are sent by the survivor's sweep.
    let mut pending = -1;
    for _ in 0..300 {
        pending = pg_count(
            db,
            "SELECT COUNT(*) FROM enrollments WHERE push_requested_at IS NOT NULL",
        )
        .await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending, 0, "push requests left unsent after the sweep");
    for m in &macs {
        let token = hex_of(&m.push(Channel::Device).token);
        assert!(
            apns.pushes().iter().any(|p| p.token_hex == token),
            "no push reached {}",
            m.enrollment_id()
        );
    }

    // The sync the dead process held: refused while its lease lives, then taken over.
    let r = sync_on_b.await.unwrap();
    assert!(
        r.is_err(),
        "the sync on the killed process cannot have answered"
    );
    let mut taken_over = None;
    let mut refused = 0;
    for _ in 0..600 {
        let r = c
            .post(format!("{}/api/v1/server-tokens/main/sync", a.url))
            .bearer_auth(&token_a)
            .send()
            .await
            .unwrap();
        if r.status() == 409 {
            refused += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        taken_over = Some(r.status());
        break;
    }
    assert!(refused > 0, "the dead process's lease was not honoured");
    assert_eq!(taken_over.map(|s| s.as_u16()), Some(200));
    let shown: Value = c
        .get(format!("{}/api/v1/server-tokens/main", a.url))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["devices"], 30, "{shown}");

    a.stop().await;
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs [`answer_until`] for every Mac at once.
async fn answer_all(
    macs: &mut [SimMac],
    wants: &[Vec<String>],
    answered: &AtomicUsize,
) -> Vec<Seen> {
    let mut set = Vec::new();
    for (mac, want) in macs.iter_mut().zip(wants) {
        set.push(answer_until(mac, want, answered));
    }
    futures::future::join_all(set).await
}

/// The server's id of each Mac, by the `EnrollmentID` the Mac sends.
fn ids_of(server: &Server, macs: &[SimMac]) -> Vec<String> {
    let (ok, out, _) = server.cli(&["device", "list", "--json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), macs.len(), "{listed}");
    macs.iter()
        .map(|m| {
            listed
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["enrollment_id"] == m.enrollment_id())
                .unwrap_or_else(|| panic!("{} not listed: {listed}", m.enrollment_id()))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// SQLite, one process: killed with SIGKILL while the Macs answer a fan-out (its writer thread
/// commits their exchanges in groups), then started again on the files it left. The database
/// opens intact, and every command is answered and stored once: a group whose commit the kill
/// cut off is lost as a whole (its requests were never answered, so the Macs send them again)
/// and its commands are handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sqlite_server_survives_a_sigkill() {
    let apns = FakeApns::start(FakeApnsOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let apns_ca = dir.path().join("apns-ca.pem");
    std::fs::write(&apns_ca, apns.ca_pem()).unwrap();
    let lb = Balancer::start().await;
    let public = lb.url();
    let (apns_url, apns_ca) = (apns.url(), apns_ca.display().to_string());
    let env = [
        ("LANYARD_PUBLIC_URL", public.as_str()),
        ("LANYARD_APNS_URL", apns_url.as_str()),
        ("LANYARD_APNS_CA_CERT", apns_ca.as_str()),
        ("LANYARD_NO_ABM_SYNC", "true"),
    ];
    let mut a = Server::start_with(Db::Sqlite, &env).await.unwrap();
    let topic = a.upload_push_certificate();
    for i in 0..MACS {
        let (ok, _, err) = a.cli_stdin(
            &["user", "add", &email(i), "--password", "-"],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "{err}");
    }
    assert!(
        a.cli(&["settings", "set", "managed-domains", "example.com"])
            .0
    );
    lb.set_backends(vec![addr_of(&a.url)]);
    let mut macs = Vec::new();
    for i in 0..MACS {
        let mut mac = SimMac::new(SimOptions {
            ownership: Ownership::Employee,
            attrs: BTreeMap::new(),
            os_version: "15.2".into(),
            ca_cert_pem: Some(a.ca_pem()),
            push_topic: Some(topic.clone()),
            ..SimOptions::new(public.clone(), email(i), PASSWORD)
        })
        .unwrap();
        mac.enroll().await.unwrap();
        macs.push(mac);
    }
    let ids = ids_of(&a, &macs);
    let c = a.client();
    let token = a.admin_session(&c).await;
    let kinds = [
        "ProfileList",
        "CertificateList",
        "DeviceInformation",
        "SecurityInfo",
    ];
    let mut uuids = Vec::new();
    for k in kinds {
        uuids.push(queue(&c, &a.url, &token, &ids, k).await);
    }
    let wants = vec![uuids.clone(); MACS];
    let answered = AtomicUsize::new(0);
    let killer = async {
        while answered.load(Ordering::SeqCst) < MACS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.kill_now();
        let at_kill = answered.load(Ordering::SeqCst);
        a.restart(&env);
        lb.set_backends(vec![addr_of(&a.url)]);
        at_kill
    };
    let polling = answer_all(&mut macs, &wants, &answered);
    let (at_kill, seen) = tokio::join!(killer, polling);
    let total = MACS * kinds.len();
    assert!(
        at_kill < total,
        "the process was killed only after all the work was done"
    );
    eprintln!("killed after {at_kill} of {total} answers");
    for (i, s) in seen.iter().enumerate() {
        let mut got = s.received.clone();
        got.sort();
        got.dedup();
        let mut w = wants[i].clone();
        w.sort();
        assert_eq!(got, w, "Mac {i}: {s:?}");
        assert!(
            s.received.len() - got.len() <= s.cut_off,
            "Mac {i} was handed a command twice without a cut-off request: {s:?}"
        );
    }
    let mut db = sqlx::SqliteConnection::connect(&a.database_url)
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    for uuid in &uuids {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM command_results WHERE command_uuid = $1 \
             AND status = 'acknowledged'",
        )
        .bind(uuid)
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(n, MACS as i64, "results of {uuid}");
    }
    // The Macs here work their device channels; each one's user channel keeps the
    // DeclarativeManagement its enrollment started.
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM command_queue WHERE channel = 'device'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(left, 0, "commands left queued");
    drop(db);
    a.stop().await;
}
