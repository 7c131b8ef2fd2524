#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The command channel end to end, on both databases: queue through the API and CLI, the
//! simulated Mac fetches and answers, results and inventory are stored, User Enrollment limits
//! refuse forbidden commands at enqueue time, `NotNow` is retried, and unenrollment ends in a
//! checkout after which the same person enrolls again cleanly.

mod support;

use rstest::rstest;

use std::collections::BTreeMap;

use lanyard_proto::command::CommandStatus;
use lanyard_testkit::sim::{Ownership, SimMac, SimOptions};
use serde_json::{json, Value};
use support::{Db, Server};

fn sim(s: &Server) -> SimMac {
    SimMac::new(SimOptions {
        ownership: Ownership::Employee,
        attrs: BTreeMap::new(),
        os_version: "15.2".into(),
        ca_cert_pem: Some(s.ca_pem()),
        push_topic: s.push_topic(),
        ..SimOptions::new(s.url.clone(), "ann@example.com", "a long password")
    })
    .unwrap()
}

async fn setup(db: Db) -> Option<Server> {
    let s = Server::start(db).await?;
    s.upload_push_certificate();
    let (ok, _, err) = s.cli_stdin(
        &["user", "add", "ann@example.com", "--password", "-"],
        "a long password\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = s.cli(&["settings", "set", "managed-domains", "example.com"]);
    assert!(ok, "{err}");
    Some(s)
}

async fn enrolled_id(s: &Server) -> String {
    let (ok, out, err) = s.cli(&["device", "list", "--json"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    list[0]["id"].as_str().unwrap().to_string()
}

async fn round_trip(db: Db) {
    let Some(s) = setup(db).await else { return };
    let c = s.client();
    let token = s.admin_session(&c).await;
    let mut mac = sim(&s);
    mac.enroll().await.unwrap();
    let id = enrolled_id(&s).await;

    // A User Enrollment Mac is put under declarative management at its first user-channel
    // TokenUpdate (its default status subscriptions): the Mac synchronises on the user channel.
    support::sync_declarative_start(&mut mac).await;

    // Nothing queued: Idle gets an empty answer.
    assert!(mac.idle().await.unwrap().is_none());

    // DeviceInformation through the API; the Mac fetches and answers; inventory shows it.
    let r = c
        .post(format!("{}/api/v1/commands", s.url))
        .bearer_auth(&token)
        .json(&json!({"target": {"enrollments": [id]},
                      "command": {"request_type": "DeviceInformation"}, "push": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.unwrap();
    assert_eq!(queued["targets"], 1);
    let uuid = queued["command_uuid"].as_str().unwrap().to_string();
    let cmd = mac.idle().await.unwrap().expect("a command");
    assert_eq!(cmd.uuid, uuid);
    assert_eq!(cmd.request_type, "DeviceInformation");
    let reply = mac.builtin_reply(&cmd, lanyard_testkit::Channel::Device);
    assert_eq!(reply.status, CommandStatus::Acknowledged);
    assert!(mac
        .respond(&cmd.uuid, reply.status, reply.result)
        .await
        .unwrap()
        .is_none());
    let inv: Value = c
        .get(format!("{}/api/v1/devices/{id}/inventory", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inv["device_information"]["OSVersion"], "15.2", "{inv}");
    let status: Value = c
        .get(format!("{}/api/v1/commands/{uuid}", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status[0]["status"], "acknowledged");
    assert_eq!(status[0]["result"]["QueryResponses"]["OSVersion"], "15.2");

    // A result for a command the Mac was never given is not stored, and answered 200 so the
    // Mac (which repeats a report until it gets a 2xx) is not wedged.
    let next = mac
        .respond(
            "00000000-0000-0000-0000-000000000000",
            CommandStatus::Acknowledged,
            Default::default(),
        )
        .await
        .unwrap();
    assert!(next.is_none());
    let history: Value = c
        .get(format!("{}/api/v1/devices/{id}/commands", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !history
            .to_string()
            .contains("00000000-0000-0000-0000-000000000000"),
        "{history}"
    );

    // Forbidden for User Enrollment: refused at enqueue with the schema's reason.
    for (command, what) in [
        (
            json!({"request_type": "Raw", "raw_request_type": "EraseDevice"}),
            "EraseDevice",
        ),
        (
            json!({"request_type": "DeviceInformation", "queries": ["SerialNumber"]}),
            "SerialNumber",
        ),
    ] {
        let r = c
            .post(format!("{}/api/v1/commands", s.url))
            .bearer_auth(&token)
            .json(&json!({"target": {"enrollments": [id]}, "command": command, "push": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let e: Value = r.json().await.unwrap();
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains(what) && m.contains("User Enrollment"), "{m}");
    }
    let (ok, _, err) = s.cli(&[
        "command",
        "send",
        "raw",
        "--request-type",
        "EraseDevice",
        "--device",
        &id,
    ]);
    assert!(!ok);
    assert!(err.contains("not allowed for User Enrollment"), "{err}");
    assert!(mac.idle().await.unwrap().is_none(), "nothing was queued");

    // The user channel has its own queue.
    let (ok, out, err) = s.cli(&[
        "command",
        "send",
        "profile-list",
        "--device",
        &id,
        "--user-channel",
        "--no-push",
        "--json",
    ]);
    assert!(ok, "{err}");
    let q: Value = serde_json::from_str(&out).unwrap();
    assert!(
        mac.idle().await.unwrap().is_none(),
        "not on the device channel"
    );
    let cmd = mac
        .idle_on(lanyard_testkit::Channel::User)
        .await
        .unwrap()
        .expect("on the user channel");
    assert_eq!(cmd.uuid, q["command_uuid"].as_str().unwrap());
    let reply = mac.builtin_reply(&cmd, lanyard_testkit::Channel::User);
    mac.respond_on(
        lanyard_testkit::Channel::User,
        &cmd.uuid,
        reply.status,
        reply.result,
    )
    .await
    .unwrap();
    let (ok, out, _) = s.cli(&["command", "show", cmd.uuid.as_str(), "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown[0]["channel"], "user");
    assert_eq!(shown[0]["status"], "acknowledged");

    // NotNow: kept, answered with an empty body, and handed out again at the Mac's next poll
    // (Apple, "Handling NotNow status responses").
    let (ok, out, err) = s.cli(&[
        "command",
        "send",
        "security-info",
        "--device",
        &id,
        "--no-push",
        "--json",
    ]);
    assert!(ok, "{err}");
    let q: Value = serde_json::from_str(&out).unwrap();
    let cmd = mac.idle().await.unwrap().unwrap();
    assert_eq!(cmd.uuid, q["command_uuid"].as_str().unwrap());
    assert!(mac
        .respond(&cmd.uuid, CommandStatus::NotNow, Default::default())
        .await
        .unwrap()
        .is_none());
    let (ok, out, _) = s.cli(&["command", "show", cmd.uuid.as_str(), "--json"]);
    assert!(ok);
    assert!(out.contains("not_now"), "{out}");
    let again = mac
        .idle()
        .await
        .unwrap()
        .expect("due again at the next poll");
    assert_eq!(again.uuid, cmd.uuid);
    mac.respond(&cmd.uuid, CommandStatus::Acknowledged, Default::default())
        .await
        .unwrap();

    // Unenroll: RemoveProfile for the enrollment profile, then the Mac checks out.
    let (ok, out, err) = s.cli(&["device", "unenroll", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("RemoveProfile"), "{out}");
    let cmd = mac.idle().await.unwrap().expect("RemoveProfile");
    assert_eq!(cmd.request_type, "RemoveProfile");
    assert_eq!(
        cmd.command.get("Identifier").and_then(|v| v.as_string()),
        Some(format!("org.lanyard.enrollment.{id}").as_str())
    );
    mac.respond(&cmd.uuid, CommandStatus::Acknowledged, Default::default())
        .await
        .unwrap();
    mac.check_out().await.unwrap();
    let (ok, out, _) = s.cli(&["device", "list", "--status", "checked_out", "--json"]);
    assert!(ok);
    assert!(out.contains(&id));
    assert!(
        mac.idle().await.is_err(),
        "a checked-out identity is refused"
    );

    // The same person enrolls again: a clean new enrollment, no leftovers.
    let mut again = sim(&s);
    again.enroll().await.unwrap();
    let new_id = enrolled_id(&s).await;
    assert_ne!(new_id, id);
    assert!(
        again.idle().await.unwrap().is_none(),
        "no commands carried over"
    );
    // Its only command is the DeclarativeManagement its own enrollment started.
    let (ok, out, _) = s.cli(&["device", "commands", &new_id, "--json"]);
    assert!(ok);
    let history: Value = serde_json::from_str(&out).unwrap();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["request_type"], "DeclarativeManagement");
    assert_eq!(history[0]["channel"], "user");

    // The audit log names who queued and unenrolled.
    let (ok, out, _) = s.cli(&["audit", "--json", "--action", "enrollment.unenroll"]);
    assert!(ok);
    assert!(out.contains(&id), "{out}");
    s.stop().await;
}

#[rstest]
#[tokio::test]
async fn command_round_trip(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    round_trip(db).await;
}
