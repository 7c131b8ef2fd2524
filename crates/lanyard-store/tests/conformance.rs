#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The storage conformance suite: every test here runs against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `LANYARD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! each test creates its own database (the test kit's scratch database, dropped even when the
//! test fails), so tests run in parallel. When
//! PostgreSQL cannot be reached the PostgreSQL half is skipped with a loud message — and under
//! `CI=true` that is a failure.

use chrono::Duration;
use lanyard_store::*;
use serde_json::json;

mod support {
    use super::*;
    use lanyard_testkit::scratch_db::ScratchDb;
    use rand::Rng;

    pub struct Harness {
        pub store: Box<dyn Store>,
        /// The database's URL, for a second server on it ([`Harness::second`]).
        url: String,
        _scratch: Option<ScratchDb>,
        _dir: Option<tempdir::TempDirGuard>,
    }

    mod tempdir {
        pub struct TempDirGuard(pub std::path::PathBuf);
        impl Drop for TempDirGuard {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    pub async fn sqlite() -> Harness {
        sqlite_with(PoolSettings::default()).await
    }

    /// A fresh SQLite database in a directory of its own (removed with the harness, also when
    /// a test panics), opened with `settings`.
    pub async fn sqlite_with(settings: PoolSettings) -> Harness {
        let n: u64 = rand::thread_rng().gen();
        let dir = std::env::temp_dir().join(format!("lanyard-conformance-{n:016x}"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/lanyard.db", dir.display());
        let store = SqliteStore::connect_with(&url, settings).await.unwrap();
        store.migrate().await.unwrap();
        Harness {
            store: Box::new(store),
            url,
            _scratch: None,
            _dir: Some(tempdir::TempDirGuard(dir)),
        }
    }

    /// A fresh PostgreSQL database (dropped with the harness, also when a test panics), or
    /// `None` (loudly) when PostgreSQL is unavailable outside CI.
    pub async fn postgres() -> Option<Harness> {
        let db = ScratchDb::for_test("lanyard_conf", "the storage conformance suite").await?;
        let store = PostgresStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        Some(Harness {
            store: Box::new(store),
            url: db.url().to_string(),
            _scratch: Some(db),
            _dir: None,
        })
    }

    impl Harness {
        /// Another server's store on the same database (drop it before [`Harness::finish`]).
        pub async fn second(&self) -> Box<dyn Store> {
            if self.url.starts_with("sqlite:") {
                Box::new(SqliteStore::connect(&self.url).await.unwrap())
            } else {
                Box::new(PostgresStore::connect(&self.url).await.unwrap())
            }
        }

        /// The SQLite database's file (`None` on PostgreSQL).
        pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
            self.url.strip_prefix("sqlite://").map(Into::into)
        }

        /// Closes the store's connections before its database goes.
        pub async fn finish(self) {
            drop(self.store);
        }
    }
}

/// Expands each listed async test body into one `#[tokio::test]` per backend. With
/// `two_servers:` first, each body gets a second store on the same database too (another server).
macro_rules! conformance {
    (two_servers: $($name:ident),* $(,)?) => { conformance!(@each [other] $($name),*); };
    ($($name:ident),* $(,)?) => { conformance!(@each [] $($name),*); };
    (@each $other:tt $($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = super::support::sqlite().await;
                    conformance!(@run $name, h, $other);
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(h) = super::support::postgres().await else { return };
                    conformance!(@run $name, h, $other);
                }
            )*
        }
    };
    (@run $name:ident, $h:ident, [$($other:ident)?]) => {
        $(let $other = $h.second().await;)?
        super::$name($h.store.as_ref() $(, $other.as_ref())?).await;
        $(drop($other);)?
        $h.finish().await;
    };
}

conformance!(
    push_requests_survive_the_requester,
    silent_enrollments_turn_inactive_and_back,
    command_exchange_reactivates_an_inactive_enrollment,
    users_round_trip,
    duplicate_email_is_conflict_and_writes_nothing,
    update_unknown_user_is_not_found_and_audits_nothing,
    user_search_and_paging,
    settings_upsert,
    custom_attributes,
    admins_and_lockout,
    password_change_ends_other_sessions,
    admins_disable_and_remove,
    last_administrator_survives_concurrent_disables,
    throttle_counts_concurrent_attempts_atomically,
    throttle_waits_grow_and_reset_after_the_window,
    throttle_keys_clear_unlock_and_prune,
    api_tokens,
    sessions_expire,
    audit_filters_newest_first,
    pki_insert_is_first_writer_wins,
    sealed_material_is_detected,
    access_tokens_are_single_use,
    enrollment_lifecycle,
    scep_challenge_claimed_once,
    prune_leftovers,
    command_queue_round_trip,
    command_not_now_and_unknown_results,
    command_bulk_enqueue_and_prune,
    push_targets_and_pki_replace,
    pending_pki_completes_once,
    listing_devices_search_sort_page,
    device_search_takes_wildcards_literally,
    a_search_target_is_queued_in_the_database,
    device_writes_are_bounded,
    listing_audit_by_date_range,
    abm_token_default_moves,
    concurrent_changes_all_land,
    abm_token_pages_and_renewal,
    abm_token_sync_lease_is_exclusive,
    command_exchange_in_one_transaction,
    command_exchange_refusals_change_nothing,
    command_exchange_skips_an_unchanged_inventory,
    concurrent_exchanges_each_keep_their_outcome,
    a_failing_exchange_does_not_undo_the_others,
    a_repeated_acknowledgement_racing_the_first_is_stored_once,
    fan_out_reads_and_push_batches,
    user_channel_push_targets,
    checkout_drops_the_queue_in_one_step,
    bearer_rebind_and_revoke,
    declarations_round_trip,
    declaration_sets_reach_enrollments,
    status_reports_replace_on_full_report,
    devices_with_failing_declarations_filter,
);

/// Identity renewal: the renewal is queued once, its challenge binds a next identity, the
/// first request signed by the next identity makes it current and retires the old one.
mod identity_renewal {
    use super::*;

    conformance!(
        renewal_queued_once_and_bound_as_next_identity,
        renewed_identity_promoted_by_first_command_request,
        renewal_candidates_and_refusals,
    );

    fn renewal(id: &str, previous: Option<&str>, uuid: &str, challenge: &str) -> IdentityRenewal {
        IdentityRenewal {
            enrollment_id: id.into(),
            previous_command_uuid: previous.map(Into::into),
            challenge_hash: challenge.into(),
            challenge_expires_at: now() + Duration::hours(1),
            command: cmd(uuid, "InstallProfile"),
        }
    }

    /// Queues a renewal for `id` and binds `new_sha` as its next identity through the renewal
    /// challenge, as SCEP does.
    async fn renewed(s: &dyn Store, id: &str, new_sha: &str) {
        let t = now();
        let uuid = format!("r-{id}");
        let challenge = format!("rc-{id}");
        assert!(s
            .queue_identity_renewal(
                &renewal(id, None, &uuid, &challenge),
                t,
                &audit("enrollment.identity_renewal", id)
            )
            .await
            .unwrap());
        let found = s
            .scep_challenge_enrollment(&challenge, t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, id);
        let claimed = s
            .claim_scep_challenge(id, &challenge, &identity("02", new_sha, t), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, id);
    }

    fn identity(serial: &str, sha256: &str, t: chrono::DateTime<chrono::Utc>) -> IdentityRecord {
        IdentityRecord {
            serial: serial.into(),
            sha256: sha256.into(),
            not_after: t + Duration::days(400),
        }
    }

    pub(super) async fn renewal_queued_once_and_bound_as_next_identity(s: &dyn Store) {
        bound(s, "e1").await;
        let t = now();
        let e = s.enrollment("e1").await.unwrap().unwrap();
        assert_eq!(
            e.profile_ids(),
            Some(ProfileIds {
                profile: "P-e1".into(),
                mdm_payload: "M-e1".into(),
                trust_payload: "T-e1".into(),
            }),
            "kept at issuance"
        );
        let due = |within: Duration| async move {
            s.identities_due_for_renewal(t + within, t, t, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        assert!(due(Duration::days(30)).await.is_empty(), "not yet due");
        assert_eq!(due(Duration::days(400)).await, ["e1"]);

        let r = renewal("e1", None, "r1", "rc1");
        assert!(s
            .queue_identity_renewal(&r, t, &audit("enrollment.identity_renewal", "e1"))
            .await
            .unwrap());
        // A racing second renewal read the same state: refused, nothing queued twice.
        let again = renewal("e1", None, "r2", "rc2");
        assert!(!s
            .queue_identity_renewal(&again, t, &audit("enrollment.identity_renewal", "e1"))
            .await
            .unwrap());
        assert!(
            due(Duration::days(400)).await.is_empty(),
            "a renewal is pending"
        );
        let h = s.command_history("e1", 10).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].command_uuid.as_str(), h[0].request_type.as_str()),
            ("r1", "InstallProfile")
        );
        assert_eq!(h[0].channel, Channel::Device);
        let logged = s
            .list_audit(&AuditFilter {
                action: Some("enrollment.identity_renewal".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(logged.len(), 1, "one audit line, for the renewal queued");
        let e = s.enrollment("e1").await.unwrap().unwrap();
        assert_eq!(e.renewal_command_uuid.as_deref(), Some("r1"));
        assert_eq!(e.renewal_queued_at, Some(t));
        assert!(
            s.scep_challenge_enrollment("rc2", t)
                .await
                .unwrap()
                .is_none(),
            "the refused renewal's challenge was never stored"
        );

        // The renewal challenge: claimed once, before its expiry; the certificate issued for it
        // becomes the next identity in the same statement, and the current one stays.
        let new = identity("02", "id-new", t);
        let late = t + Duration::hours(2);
        assert!(s
            .scep_challenge_enrollment("rc1", late)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .claim_scep_challenge("e1", "rc1", &new, late)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            s.scep_challenge_enrollment("rc1", t)
                .await
                .unwrap()
                .unwrap()
                .id,
            "e1"
        );
        assert!(
            s.claim_scep_challenge("e2", "rc1", &new, t)
                .await
                .unwrap()
                .is_none(),
            "another enrollment's claim changes nothing"
        );
        assert_eq!(
            s.claim_scep_challenge("e1", "rc1", &new, t)
                .await
                .unwrap()
                .unwrap()
                .id,
            "e1"
        );
        assert!(s
            .claim_scep_challenge("e1", "rc1", &new, t)
            .await
            .unwrap()
            .is_none());
        let e = s.enrollment("e1").await.unwrap().unwrap();
        assert_eq!(e.identity_sha256.as_deref(), Some("id-e1"));
        assert_eq!(e.identity_serial.as_deref(), Some("01"));
        assert_eq!(e.next_identity_sha256.as_deref(), Some("id-new"));
        assert_eq!(e.next_identity_serial.as_deref(), Some("02"));
        assert_eq!(e.next_identity_not_after, Some(t + Duration::days(400)));

        // Requests signed by the old identity are still accepted and promote nothing.
        let old = s
            .enrollment_for_identity("id-e1", t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (old.id.as_str(), old.identity_sha256.as_deref()),
            ("e1", Some("id-e1"))
        );
        assert_eq!(old.next_identity_sha256.as_deref(), Some("id-new"));
        // The first request signed by the new one makes it current and retires the old one.
        let t1 = t + Duration::seconds(5);
        let new = s
            .enrollment_for_identity("id-new", t1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.id, "e1");
        assert_eq!(new.identity_sha256.as_deref(), Some("id-new"));
        assert_eq!(new.identity_serial.as_deref(), Some("02"));
        assert_eq!(new.identity_not_after, Some(t + Duration::days(400)));
        assert_eq!(new.next_identity_sha256, None);
        assert_eq!(new.identity_renewed_at, Some(t1));
        assert!(s
            .enrollment_for_identity("id-e1", t1)
            .await
            .unwrap()
            .is_none());
        assert!(s.enrollment_by_identity("id-e1").await.unwrap().is_none());
        assert_eq!(
            s.enrollment_by_identity("id-new")
                .await
                .unwrap()
                .unwrap()
                .identity_renewed_at,
            Some(t1),
            "a later use changes nothing"
        );
        assert_eq!(
            s.enrollment_for_identity("id-new", t1 + Duration::hours(1))
                .await
                .unwrap()
                .unwrap()
                .identity_renewed_at,
            Some(t1)
        );
    }

    pub(super) async fn renewed_identity_promoted_by_first_command_request(s: &dyn Store) {
        bound(s, "e1").await;
        renewed(s, "e1", "id-new").await;
        let t = now();
        // The old identity still works on the command channel; it gets the renewal.
        let x = s
            .command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, t))
            .await
            .unwrap();
        assert_eq!(next_uuid(x).as_deref(), Some("r-e1"));
        // A request signed by the new identity but refused (another EnrollmentID) promotes
        // nothing.
        assert_eq!(
            s.command_exchange(exchange("id-new", "EID-x", Channel::Device, None, None, t))
                .await
                .unwrap(),
            Exchanged::Refused(IdentityBinding::OtherDevice)
        );
        let e = s.enrollment("e1").await.unwrap().unwrap();
        assert_eq!(e.identity_sha256.as_deref(), Some("id-e1"));
        assert_eq!(e.next_identity_sha256.as_deref(), Some("id-new"));
        // The acknowledgement signed by the new identity: accepted, and the new one is current.
        let ack = outcome("r-e1", "acknowledged");
        let t1 = t + Duration::seconds(1);
        let x = s
            .command_exchange(exchange(
                "id-new",
                "EID-e1",
                Channel::Device,
                Some(&ack),
                None,
                t1,
            ))
            .await
            .unwrap();
        assert_eq!(next_uuid(x), None);
        let e = s.enrollment("e1").await.unwrap().unwrap();
        assert_eq!(e.identity_sha256.as_deref(), Some("id-new"));
        assert_eq!(e.next_identity_sha256, None);
        assert_eq!(e.identity_renewed_at, Some(t1));
        let h = s.command_history("e1", 10).await.unwrap();
        assert_eq!(h[0].status, CommandState::Acknowledged);
        // The old identity is refused like an unknown one.
        assert_eq!(
            s.command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, t1))
                .await
                .unwrap(),
            Exchanged::UnknownIdentity
        );
        assert!(s
            .enrollment_for_identity("id-e1", t1)
            .await
            .unwrap()
            .is_none());
    }

    pub(super) async fn renewal_candidates_and_refusals(s: &dyn Store) {
        let t = now();
        // e1: due; e2: identity expired already; e3: checked out; e4: renewal pending; e5: no
        // profile identifiers kept (issued before Lanyard kept them).
        for id in ["e1", "e2", "e3", "e4"] {
            bound(s, id).await;
        }
        let u = s.user_by_email("ann@example.com").await.unwrap().unwrap();
        let mut legacy = new_enrollment(&u, "e5", "c-e5", 60);
        legacy.profile_ids = None;
        s.create_enrollment(&legacy).await.unwrap();
        s.set_identity("e5", "05", "id-e5", t + Duration::days(3))
            .await
            .unwrap();
        s.record_authenticate(
            "e5",
            &AuthenticateRecord {
                device_channel_id: "EID-e5".into(),
                os_version: None,
                build_version: None,
                product: None,
            },
            t,
        )
        .await
        .unwrap();
        s.record_token_update(
            "e5",
            &TokenUpdateRecord {
                user_channel_id: None,
                topic: "topic".into(),
                push_token: vec![5; 32],
                push_magic: "m5".into(),
                unlock_token_sealed: None,
            },
            t,
        )
        .await
        .unwrap();
        // e2's identity expired a minute ago (its renewal would come too late).
        assert!(s
            .queue_identity_renewal(
                &renewal("e2", None, "r-e2", "rc-e2"),
                t,
                &audit("enrollment.identity_renewal", "e2")
            )
            .await
            .unwrap());
        let expired = IdentityRecord {
            serial: "02".into(),
            sha256: "id-e2-new".into(),
            not_after: t - Duration::minutes(1),
        };
        s.claim_scep_challenge("e2", "rc-e2", &expired, t)
            .await
            .unwrap()
            .unwrap();
        s.command_exchange(exchange(
            "id-e2-new",
            "EID-e2",
            Channel::Device,
            None,
            None,
            t,
        ))
        .await
        .unwrap();
        s.command_exchange(exchange(
            "id-e2-new",
            "EID-e2",
            Channel::Device,
            Some(&outcome("r-e2", "acknowledged")),
            None,
            t,
        ))
        .await
        .unwrap();
        // e3 checked out; e4 has a renewal queued (pending).
        s.record_checkout("e3", t).await.unwrap();
        assert!(s
            .queue_identity_renewal(
                &renewal("e4", None, "r-e4", "rc-e4"),
                t,
                &audit("enrollment.identity_renewal", "e4")
            )
            .await
            .unwrap());
        let due = |queued_before| async move {
            s.identities_due_for_renewal(t + Duration::days(400), queued_before, t, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due(t).await, ["e1"], "e5 has no profile identifiers");

        // e4's renewal ended without a new identity (the Mac answered Error): due again, but
        // only once the retry interval has passed.
        let x = s
            .command_exchange(exchange("id-e4", "EID-e4", Channel::Device, None, None, t))
            .await
            .unwrap();
        assert_eq!(next_uuid(x).as_deref(), Some("r-e4"));
        s.command_exchange(exchange(
            "id-e4",
            "EID-e4",
            Channel::Device,
            Some(&outcome("r-e4", "error")),
            None,
            t,
        ))
        .await
        .unwrap();
        assert_eq!(due(t - Duration::seconds(1)).await, ["e1"]);
        assert_eq!(due(t).await, ["e1", "e4"]);
        // The next renewal must name the one it replaces.
        assert!(!s
            .queue_identity_renewal(
                &renewal("e4", None, "r-e4b", "rc-e4b"),
                t,
                &audit("enrollment.identity_renewal", "e4")
            )
            .await
            .unwrap());
        assert!(s
            .queue_identity_renewal(
                &renewal("e4", Some("r-e4"), "r-e4b", "rc-e4b"),
                t,
                &audit("enrollment.identity_renewal", "e4")
            )
            .await
            .unwrap());
        assert!(
            s.scep_challenge_enrollment("rc-e4", t)
                .await
                .unwrap()
                .is_none(),
            "a later renewal replaces the earlier challenge"
        );

        // Checked out: no renewal, no renewal challenge, no promotion.
        assert!(!s
            .queue_identity_renewal(
                &renewal("e3", None, "r-e3", "rc-e3"),
                t,
                &audit("enrollment.identity_renewal", "e3")
            )
            .await
            .unwrap());
        assert!(s
            .queue_identity_renewal(
                &renewal("e1", None, "r-e1", "rc-e1"),
                t,
                &audit("enrollment.identity_renewal", "e1")
            )
            .await
            .unwrap());
        s.claim_scep_challenge("e1", "rc-e1", &identity("02", "id-e1-new", t), t)
            .await
            .unwrap()
            .unwrap();
        s.record_checkout("e1", t).await.unwrap();
        assert!(s
            .enrollment_for_identity("id-e1-new", t)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            s.command_exchange(exchange(
                "id-e1-new",
                "EID-e1",
                Channel::Device,
                None,
                None,
                t
            ))
            .await
            .unwrap(),
            Exchanged::Refused(IdentityBinding::CheckedOut)
        );
        assert_eq!(
            s.enrollment("e1")
                .await
                .unwrap()
                .unwrap()
                .identity_sha256
                .as_deref(),
            Some("id-e1")
        );
        // Unknown enrollment: nothing queued.
        assert!(!s
            .queue_identity_renewal(
                &renewal("nope", None, "r-nope", "rc-nope"),
                t,
                &audit("enrollment.identity_renewal", "nope")
            )
            .await
            .unwrap());
        assert!(s.command_targets("r-nope").await.unwrap().is_empty());
    }
}

fn audit(action: &str, target: &str) -> Audit {
    Audit::new("tester", action, target, json!({"k": "v"}))
}

fn new_user(email: &str) -> NewUser {
    NewUser {
        email: email.into(),
        display_name: format!("Name of {email}"),
        password_hash: Some("$argon2id$fake".into()),
        managed_apple_id: Some(email.into()),
    }
}

async fn users_round_trip(s: &dyn Store) {
    let u = s
        .create_user(&new_user("ann@example.com"), &audit("user.create", "ann"))
        .await
        .unwrap();
    assert!(u.enabled);
    assert_eq!(u.managed_apple_id.as_deref(), Some("ann@example.com"));
    let by_email = s.user_by_email("ann@example.com").await.unwrap().unwrap();
    assert_eq!(by_email, u);
    let by_id = s.user_by_id(u.id).await.unwrap().unwrap();
    assert_eq!(by_id, u);
    assert!(s.user_by_email("bob@example.com").await.unwrap().is_none());

    let changed = s
        .update_user(
            u.id,
            &UserChange {
                enabled: Some(false),
                managed_apple_id: Some(None),
                ..Default::default()
            },
            &audit("user.disable", "ann"),
        )
        .await
        .unwrap();
    assert!(!changed.enabled);
    assert_eq!(changed.managed_apple_id, None);
    assert_eq!(changed.display_name, u.display_name, "untouched field kept");
    assert_eq!(changed.password_hash, u.password_hash);

    let changed = s
        .update_user(
            u.id,
            &UserChange {
                display_name: Some("Ann A.".into()),
                managed_apple_id: Some(Some("ann@corp.example.com".into())),
                ..Default::default()
            },
            &audit("user.update", "ann"),
        )
        .await
        .unwrap();
    assert_eq!(changed.display_name, "Ann A.");
    assert!(!changed.enabled, "enabled untouched");
    assert_eq!(
        changed.managed_apple_id.as_deref(),
        Some("ann@corp.example.com")
    );
    assert_eq!(s.count_users().await.unwrap(), 1);
    let log = s.list_audit(&AuditFilter::default()).await.unwrap();
    let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["user.update", "user.disable", "user.create"]);
}

async fn duplicate_email_is_conflict_and_writes_nothing(s: &dyn Store) {
    s.create_user(&new_user("ann@example.com"), &audit("user.create", "ann"))
        .await
        .unwrap();
    let err = s
        .create_user(&new_user("ann@example.com"), &audit("user.create", "ann2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(s.count_users().await.unwrap(), 1);
    let log = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(log.len(), 1, "the failed create left no audit line");
}

async fn update_unknown_user_is_not_found_and_audits_nothing(s: &dyn Store) {
    let err = s
        .update_user(
            4242,
            &UserChange {
                enabled: Some(false),
                ..Default::default()
            },
            &audit("user.disable", "nobody"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s
        .list_audit(&AuditFilter::default())
        .await
        .unwrap()
        .is_empty());
}

async fn user_search_and_paging(s: &dyn Store) {
    for i in 0..25 {
        s.create_user(
            &new_user(&format!("user{i:02}@example.com")),
            &audit("user.create", "x"),
        )
        .await
        .unwrap();
    }
    s.create_user(&new_user("zed@other.org"), &audit("user.create", "z"))
        .await
        .unwrap();
    let page = s
        .list_users(&ListQuery {
            search: None,
            offset: 10,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page[0].email, "user10@example.com");
    let found = s
        .list_users(&ListQuery {
            search: Some("OTHER.ORG".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].email, "zed@other.org");
    let by_name = s
        .list_users(&ListQuery {
            search: Some("name of user2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_name.len(), 5, "user20..user24");
}

async fn settings_upsert(s: &dyn Store) {
    assert_eq!(s.get_setting("enrollment").await.unwrap(), None);
    s.put_setting(
        "enrollment",
        r#"{"a":1}"#,
        &audit("settings.update", "enrollment"),
    )
    .await
    .unwrap();
    s.put_setting(
        "enrollment",
        r#"{"a":2}"#,
        &audit("settings.update", "enrollment"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_setting("enrollment").await.unwrap().as_deref(),
        Some(r#"{"a":2}"#)
    );
    let log = s
        .list_audit(&AuditFilter {
            target: Some("enrollment".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log.len(), 2);
}

async fn custom_attributes(s: &dyn Store) {
    let a = s
        .create_attribute(
            "department",
            "choice",
            true,
            r#"["Sales","R&D"]"#,
            &audit("attribute.create", "department"),
        )
        .await
        .unwrap();
    assert_eq!(a.kind, "choice");
    assert!(a.required);
    s.create_attribute("cost_center", "number", false, "[]", &audit("c", "cc"))
        .await
        .unwrap();
    let err = s
        .create_attribute("department", "text", false, "[]", &audit("c", "d"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
    let names: Vec<_> = s
        .list_attributes()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["cost_center", "department"]);
    assert_eq!(s.attribute_by_name("department").await.unwrap().unwrap(), a);
    s.delete_attribute("department", &audit("attribute.delete", "department"))
        .await
        .unwrap();
    let err = s
        .delete_attribute("department", &audit("attribute.delete", "department"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    assert!(s.attribute_by_name("department").await.unwrap().is_none());
}

async fn admins_and_lockout(s: &dyn Store) {
    let a = s
        .create_admin(
            "root",
            "hash1",
            Role::Administrator,
            &audit("admin.create", "root"),
        )
        .await
        .unwrap();
    assert!(a.enabled);
    assert!(s
        .create_admin("root", "h", Role::ReadOnly, &audit("admin.create", "root"))
        .await
        .is_err());
    assert_eq!(s.count_admins().await.unwrap(), 1);
    s.set_admin_password(a.id, "hash2", None, &audit("admin.password", "root"))
        .await
        .unwrap();
    assert_eq!(
        s.admin_by_id(a.id).await.unwrap().unwrap().password_hash,
        "hash2"
    );
    assert!(matches!(
        s.set_admin_password(999, "x", None, &audit("admin.password", "nobody"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

fn session_of(admin_id: i64, hash: &str) -> AdminSession {
    let t = now();
    AdminSession {
        token_hash: hash.into(),
        admin_id,
        csrf_token: format!("csrf-{hash}"),
        created_at: t,
        expires_at: t + Duration::hours(1),
    }
}

/// A new password ends the administrator's other sessions (all of them when another
/// administrator set it), and nobody else's, in the same transaction as its audit line.
async fn password_change_ends_other_sessions(s: &dyn Store) {
    let a = s
        .create_admin(
            "ann",
            "h",
            Role::Administrator,
            &audit("admin.create", "ann"),
        )
        .await
        .unwrap();
    let b = s
        .create_admin(
            "bob",
            "h",
            Role::Administrator,
            &audit("admin.create", "bob"),
        )
        .await
        .unwrap();
    for (id, hash) in [(a.id, "a1"), (a.id, "a2"), (a.id, "a3"), (b.id, "b1")] {
        s.create_session(&session_of(id, hash)).await.unwrap();
    }
    let ended = s
        .set_admin_password(a.id, "h2", Some("a1"), &audit("admin.set_password", "ann"))
        .await
        .unwrap();
    assert_eq!(ended, 2);
    assert!(s.session_by_hash("a1").await.unwrap().is_some());
    assert!(s.session_by_hash("a2").await.unwrap().is_none());
    assert!(s.session_by_hash("a3").await.unwrap().is_none());
    assert!(s.session_by_hash("b1").await.unwrap().is_some());
    assert_eq!(
        s.set_admin_password(a.id, "h3", None, &audit("admin.set_password", "ann"))
            .await
            .unwrap(),
        1
    );
    assert!(s.session_by_hash("a1").await.unwrap().is_none());
    let lines = s
        .list_audit(&AuditFilter {
            action: Some("admin.set_password".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lines.len(), 2);
}

/// Administrators can be disabled (ending their sessions), enabled and removed (with their
/// sessions and tokens), audited; the last enabled one of the protected role cannot be disabled
/// or removed, and a refusal changes nothing.
/// Two administrators disabling (or removing) each other at the same moment: one of them stays,
/// whatever the interleaving. Tried many times so that a racy check would show.
async fn last_administrator_survives_concurrent_disables(s: &dyn Store) {
    // Each round starts with exactly two enabled members of the protected role: the survivor
    // of the round before is disabled once the round's two exist.
    let role = Role::ReadOnly;
    let mut survivor: Option<i64> = None;
    for round in 0..25 {
        let a = s
            .create_admin(&format!("a{round}"), "h", role, &audit("admin.create", "a"))
            .await
            .unwrap();
        let b = s
            .create_admin(&format!("b{round}"), "h", role, &audit("admin.create", "b"))
            .await
            .unwrap();
        if let Some(id) = survivor.take() {
            let off = audit("admin.disable", "survivor");
            assert!(s
                .set_admin_enabled(id, false, role, &off)
                .await
                .unwrap()
                .is_some());
        }
        let (off_a, off_b) = (audit("admin.disable", "a"), audit("admin.disable", "b"));
        let (rm_a, rm_b) = (audit("admin.remove", "a"), audit("admin.remove", "b"));
        let (ra, rb) = if round % 2 == 0 {
            let (x, y) = tokio::join!(
                s.set_admin_enabled(a.id, false, role, &off_a),
                s.set_admin_enabled(b.id, false, role, &off_b),
            );
            (x.unwrap().is_some(), y.unwrap().is_some())
        } else {
            let (x, y) = tokio::join!(
                s.delete_admin(a.id, role, &rm_a),
                s.delete_admin(b.id, role, &rm_b),
            );
            (x.unwrap(), y.unwrap())
        };
        assert!(
            !(ra && rb),
            "round {round}: both went, no administrator left"
        );
        assert!(ra || rb, "round {round}: neither went");
        let left: Vec<i64> = s
            .list_admins()
            .await
            .unwrap()
            .into_iter()
            .filter(|x| x.enabled && x.role == role)
            .map(|x| x.id)
            .collect();
        assert_eq!(left.len(), 1, "round {round}");
        survivor = left.first().copied();
    }
}

async fn admins_disable_and_remove(s: &dyn Store) {
    let root = s
        .create_admin(
            "root",
            "h",
            Role::Administrator,
            &audit("admin.create", "root"),
        )
        .await
        .unwrap();
    let ops = s
        .create_admin(
            "ops",
            "h",
            Role::Administrator,
            &audit("admin.create", "ops"),
        )
        .await
        .unwrap();
    let viewer = s
        .create_admin(
            "viewer",
            "h",
            Role::ReadOnly,
            &audit("admin.create", "viewer"),
        )
        .await
        .unwrap();
    s.create_session(&session_of(ops.id, "ops-s"))
        .await
        .unwrap();
    s.create_session(&session_of(root.id, "root-s"))
        .await
        .unwrap();
    s.create_api_token(
        ops.id,
        "ci",
        "ops-token",
        None,
        &audit("api_token.create", "ci"),
    )
    .await
    .unwrap();

    let off = s
        .set_admin_enabled(
            ops.id,
            false,
            Role::Administrator,
            &audit("admin.disable", "ops"),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!off.enabled);
    assert!(s.session_by_hash("ops-s").await.unwrap().is_none());
    // root is now the last enabled administrator: refused, nothing changed or audited.
    let audits = s.list_audit(&AuditFilter::default()).await.unwrap().len();
    assert_eq!(
        s.set_admin_enabled(
            root.id,
            false,
            Role::Administrator,
            &audit("admin.disable", "root")
        )
        .await
        .unwrap(),
        None
    );
    assert!(!s
        .delete_admin(root.id, Role::Administrator, &audit("admin.remove", "root"))
        .await
        .unwrap());
    assert!(s.admin_by_id(root.id).await.unwrap().unwrap().enabled);
    assert!(s.session_by_hash("root-s").await.unwrap().is_some());
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        audits
    );
    // A read-only administrator never keeps the server administrable: removable.
    assert!(s
        .delete_admin(
            viewer.id,
            Role::Administrator,
            &audit("admin.remove", "viewer")
        )
        .await
        .unwrap());
    // Disabled administrators may be removed; their tokens go with them.
    assert!(s
        .delete_admin(ops.id, Role::Administrator, &audit("admin.remove", "ops"))
        .await
        .unwrap());
    assert!(s.admin_by_id(ops.id).await.unwrap().is_none());
    assert!(s.api_token_by_hash("ops-token").await.unwrap().is_none());
    // Enabling is never refused; then root may go.
    let ops2 = s
        .create_admin(
            "ops2",
            "h",
            Role::Administrator,
            &audit("admin.create", "ops2"),
        )
        .await
        .unwrap();
    s.set_admin_enabled(
        ops2.id,
        false,
        Role::Administrator,
        &audit("admin.disable", "ops2"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        s.set_admin_enabled(
            ops2.id,
            true,
            Role::Administrator,
            &audit("admin.enable", "ops2")
        )
        .await
        .unwrap()
        .unwrap()
        .enabled
    );
    assert!(s
        .delete_admin(root.id, Role::Administrator, &audit("admin.remove", "root"))
        .await
        .unwrap());
    assert!(matches!(
        s.delete_admin(root.id, Role::Administrator, &audit("admin.remove", "root"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.set_admin_enabled(999, true, Role::Administrator, &audit("admin.enable", "x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let removed = s
        .list_audit(&AuditFilter {
            action: Some("admin.remove".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        removed
            .iter()
            .map(|l| l.target.as_str())
            .collect::<Vec<_>>(),
        ["root", "ops", "viewer"]
    );
}

fn policy() -> ThrottlePolicy {
    ThrottlePolicy {
        free_attempts: 5,
        first_wait: Duration::seconds(1),
        max_wait: Duration::minutes(15),
        window: Duration::minutes(15),
    }
}

fn key(kind: SignInKind, account: &str, address: &str) -> ThrottleKey {
    ThrottleKey {
        kind,
        account: account.into(),
        address: address.into(),
    }
}

/// 31 concurrent attempts at one key with five free: exactly five are let through to the
/// password check, however the database interleaves them.
async fn throttle_counts_concurrent_attempts_atomically(s: &dyn Store) {
    let k = key(SignInKind::Admin, "admin", "192.0.2.1");
    let t = now();
    let p = policy();
    let answers = futures::future::join_all((0..31).map(|_| s.reserve_sign_in(&k, &p, t))).await;
    let granted = answers
        .iter()
        .filter(|a| matches!(a, Ok(Reservation::Granted)))
        .count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Reservation::Refused { .. })))
        .count();
    assert_eq!((granted, refused), (5, 26), "{answers:?}");
}

/// Waits double after the free attempts, up to the cap; a key quiet for the window after its
/// last wait counts from one again; a refused attempt is not counted.
async fn throttle_waits_grow_and_reset_after_the_window(s: &dyn Store) {
    let k = key(SignInKind::Enrollment, "ann@example.com", "192.0.2.1");
    let p = policy();
    let t0 = now();
    for _ in 0..5 {
        assert_eq!(
            s.reserve_sign_in(&k, &p, t0).await.unwrap(),
            Reservation::Granted
        );
    }
    let at = |ms: i64| t0 + Duration::milliseconds(ms);
    let refused_until = |r: Reservation| match r {
        Reservation::Refused { until } => until,
        Reservation::Granted => panic!("granted during a wait"),
    };
    let until = refused_until(s.reserve_sign_in(&k, &p, t0).await.unwrap());
    assert_eq!(until.timestamp_millis(), at(1000).timestamp_millis());
    assert!(matches!(
        s.reserve_sign_in(&k, &p, at(999)).await.unwrap(),
        Reservation::Refused { .. }
    ));
    // Each further attempt doubles the wait: 2 s, then 4 s.
    let mut t = 1000;
    for wait in [2000, 4000] {
        assert_eq!(
            s.reserve_sign_in(&k, &p, at(t)).await.unwrap(),
            Reservation::Granted
        );
        let until = refused_until(s.reserve_sign_in(&k, &p, at(t)).await.unwrap());
        assert_eq!(until.timestamp_millis(), at(t + wait).timestamp_millis());
        t += wait;
    }
    assert_eq!(
        s.sign_in_wait(SignInKind::Enrollment, "ann@example.com", at(t - 1))
            .await
            .unwrap()
            .map(|u| u.timestamp_millis()),
        Some(at(t).timestamp_millis())
    );
    // Quiet for the window after the wait ended: five free attempts again.
    let later = t + Duration::minutes(15).num_milliseconds();
    assert!(matches!(
        s.reserve_sign_in(&k, &p, at(later - 1)).await.unwrap(),
        Reservation::Granted
    ));
    let fresh = key(SignInKind::Enrollment, "bob@example.com", "192.0.2.1");
    for _ in 0..5 {
        s.reserve_sign_in(&fresh, &p, at(t)).await.unwrap();
    }
    let mut after = at(t + 1000 + Duration::minutes(15).num_milliseconds());
    for _ in 0..5 {
        assert_eq!(
            s.reserve_sign_in(&fresh, &p, after).await.unwrap(),
            Reservation::Granted
        );
    }
    assert!(matches!(
        s.reserve_sign_in(&fresh, &p, after).await.unwrap(),
        Reservation::Refused { .. }
    ));
    // The wait is capped.
    for _ in 0..39 {
        if let Reservation::Refused { until } = s.reserve_sign_in(&fresh, &p, after).await.unwrap()
        {
            assert!(until - after <= Duration::minutes(15));
            after = until;
        }
    }
    assert_eq!(
        s.reserve_sign_in(&fresh, &p, after).await.unwrap(),
        Reservation::Granted
    );
    let Reservation::Refused { until } = s.reserve_sign_in(&fresh, &p, after).await.unwrap() else {
        panic!("granted during a wait");
    };
    assert_eq!(until - after, Duration::minutes(15));
}

/// Attempts from one address, or at another kind or account, do not count against another key;
/// a right password clears its key; unlock clears an account at every address, audited;
/// pruning removes keys whose wait ended a window ago.
async fn throttle_keys_clear_unlock_and_prune(s: &dyn Store) {
    let p = policy();
    let t = now();
    let attacker = key(SignInKind::Admin, "admin", "198.51.100.7");
    for _ in 0..6 {
        s.reserve_sign_in(&attacker, &p, t).await.unwrap();
    }
    assert!(matches!(
        s.reserve_sign_in(&attacker, &p, t).await.unwrap(),
        Reservation::Refused { .. }
    ));
    for other in [
        key(SignInKind::Admin, "admin", "192.0.2.1"),
        key(SignInKind::Admin, "ops", "198.51.100.7"),
        key(SignInKind::Enrollment, "admin", "198.51.100.7"),
    ] {
        assert_eq!(
            s.reserve_sign_in(&other, &p, t).await.unwrap(),
            Reservation::Granted
        );
    }
    let second = key(SignInKind::Admin, "admin", "203.0.113.9");
    for _ in 0..6 {
        s.reserve_sign_in(&second, &p, t).await.unwrap();
    }
    // A right password from one address clears only that key.
    s.clear_sign_in(&second).await.unwrap();
    assert_eq!(
        s.reserve_sign_in(&second, &p, t).await.unwrap(),
        Reservation::Granted
    );
    assert!(matches!(
        s.reserve_sign_in(&attacker, &p, t).await.unwrap(),
        Reservation::Refused { .. }
    ));
    assert!(s
        .sign_in_wait(SignInKind::Admin, "admin", t)
        .await
        .unwrap()
        .is_some());
    // Unlock: every address of the account, and only that account.
    let gone = s
        .unlock_sign_in(SignInKind::Admin, "admin", &audit("admin.unlock", "admin"))
        .await
        .unwrap();
    assert_eq!(gone, 3);
    assert_eq!(
        s.reserve_sign_in(&attacker, &p, t).await.unwrap(),
        Reservation::Granted
    );
    assert!(s
        .sign_in_wait(SignInKind::Admin, "admin", t)
        .await
        .unwrap()
        .is_none());
    let lines = s
        .list_audit(&AuditFilter {
            action: Some("admin.unlock".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    // Pruning: keys whose wait ended a window ago go (they would count from one again).
    let pruned = s
        .prune_sign_in_throttle(t + Duration::minutes(14), Duration::minutes(15))
        .await
        .unwrap();
    assert_eq!(pruned, 0);
    let pruned = s
        .prune_sign_in_throttle(t + Duration::minutes(16), Duration::minutes(15))
        .await
        .unwrap();
    assert_eq!(pruned, 3);
}

async fn api_tokens(s: &dyn Store) {
    let a = s
        .create_admin(
            "ops",
            "h",
            Role::Administrator,
            &audit("admin.create", "ops"),
        )
        .await
        .unwrap();
    let t = s
        .create_api_token(a.id, "ci", "deadbeef", None, &audit("token.create", "ci"))
        .await
        .unwrap();
    assert!(!t.revoked);
    let found = s.api_token_by_hash("deadbeef").await.unwrap().unwrap();
    assert_eq!(found, t);
    let at = now();
    s.touch_api_token(t.id, at).await.unwrap();
    assert_eq!(
        s.api_token_by_hash("deadbeef")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(at)
    );
    s.revoke_api_token(t.id, &audit("token.revoke", "ci"))
        .await
        .unwrap();
    assert!(
        s.api_token_by_hash("deadbeef")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_eq!(s.list_api_tokens().await.unwrap().len(), 1);
    assert!(s.api_token_by_hash("other").await.unwrap().is_none());
}

async fn sessions_expire(s: &dyn Store) {
    let a = s
        .create_admin(
            "ops",
            "h",
            Role::Administrator,
            &audit("admin.create", "ops"),
        )
        .await
        .unwrap();
    let t0 = now();
    for (hash, mins) in [("old", -5), ("new", 30)] {
        s.create_session(&AdminSession {
            token_hash: hash.into(),
            admin_id: a.id,
            csrf_token: format!("csrf-{hash}"),
            created_at: t0,
            expires_at: t0 + Duration::minutes(mins),
        })
        .await
        .unwrap();
    }
    assert_eq!(s.purge_expired_sessions(t0).await.unwrap(), 1);
    assert!(s.session_by_hash("old").await.unwrap().is_none());
    let live = s.session_by_hash("new").await.unwrap().unwrap();
    assert_eq!(live.csrf_token, "csrf-new");
    s.delete_session("new").await.unwrap();
    assert!(s.session_by_hash("new").await.unwrap().is_none());
}

async fn audit_filters_newest_first(s: &dyn Store) {
    for i in 0..5 {
        s.put_setting(
            &format!("s{i}"),
            "{}",
            &Audit::new(
                if i % 2 == 0 { "alice" } else { "bob" },
                "settings.update",
                format!("s{i}"),
                json!({"i": i}),
            ),
        )
        .await
        .unwrap();
    }
    let all = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].target, "s4");
    assert_eq!(all[0].detail, r#"{"i":4}"#);
    let alice = s
        .list_audit(&AuditFilter {
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 3);
    let older = s
        .list_audit(&AuditFilter {
            before_id: Some(all[1].id),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let targets: Vec<_> = older.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["s2", "s1"]);
}

async fn pki_insert_is_first_writer_wins(s: &dyn Store) {
    let first = PkiMaterial {
        name: "ca".into(),
        cert_pem: "CERT-1".into(),
        key_sealed: vec![1, 2, 3],
        created_at: now(),
    };
    assert!(s.insert_pki_if_absent(&first).await.unwrap());
    let second = PkiMaterial {
        cert_pem: "CERT-2".into(),
        ..first.clone()
    };
    assert!(!s.insert_pki_if_absent(&second).await.unwrap());
    assert_eq!(s.get_pki("ca").await.unwrap().unwrap(), first);
    assert!(s.get_pki("tls").await.unwrap().is_none());
}

async fn sealed_material_is_detected(s: &dyn Store) {
    assert!(
        !s.holds_sealed_material().await.unwrap(),
        "a fresh database"
    );
    s.put_setting("enrollment", "{}", &audit("settings.update", "enrollment"))
        .await
        .unwrap();
    assert!(
        !s.holds_sealed_material().await.unwrap(),
        "settings seal nothing"
    );
    let ca = PkiMaterial {
        name: "ca".into(),
        cert_pem: "CERT".into(),
        key_sealed: vec![1, 2, 3],
        created_at: now(),
    };
    assert!(s.insert_pki_if_absent(&ca).await.unwrap());
    assert!(s.holds_sealed_material().await.unwrap());
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An unreachable PostgreSQL server is "unavailable", and the error names where and why,
/// not only that a pool timed out.
#[tokio::test]
async fn unreachable_postgres_names_host_port_and_cause() {
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/lanyard");
    let settings = PoolSettings {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let err = PostgresStore::connect_with(&url, settings)
        .await
        .expect_err("nothing listens there");
    let StoreError::Unavailable(why) = &err else {
        panic!("not Unavailable: {err:?}");
    };
    assert!(
        why.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{why}"
    );
    assert!(why.to_lowercase().contains("refused"), "{why}");
}

/// The SQLite database and its WAL companions are readable by their owner only, including a
/// database created earlier with a wider mode.
#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = std::env::temp_dir().join(format!("lanyard-modes-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("lanyard.db");
    let url = format!("sqlite://{}", db.display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .put_setting("x", "{}", &audit("settings.update", "x"))
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let f = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    store.close().await;

    // An existing database with a wider mode is narrowed on open.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(mode(&db), 0o600);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under a steady stream of exchanges, SQLite's write-ahead log starts over again and again
/// instead of growing for as long as the stream lasts (`sqlite_writer.rs`). 32 devices answer
/// NotNow to their one command and poll again, so every exchange writes and the writer thread
/// always has work: a background checkpoint alone then never leaves the log fully copied when
/// the writer begins (on a quiet machine, in 1.5 s with a checkpoint every 20 ms: once without
/// the writer's own checkpoint, 20–29 times with it; on a loaded machine the stream has gaps
/// and the log starts over by itself more often). `the_writer_starts_a_long_log_over`, in
/// `sqlite_writer.rs`, plays that race in a fixed order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_starts_over_under_a_steady_stream() {
    const DEVICES: usize = 32;
    // A stream of a fixed length of time, not of exchanges: the checkpoints come by the clock.
    const STREAM: std::time::Duration = std::time::Duration::from_millis(1500);
    let h = support::sqlite_with(PoolSettings {
        sqlite_wal: SqliteWal {
            checkpoint_every: std::time::Duration::from_millis(20),
            restart_after_frames: 64,
        },
        ..Default::default()
    })
    .await;
    let db = h.sqlite_file().unwrap();
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("e{i}")).collect();
    for id in &ids {
        bound(h.store.as_ref(), id).await;
        queue_device_information(h.store.as_ref(), id, &[&format!("c-{id}")]).await;
    }
    // Shared by the device tasks; the rest of the harness (the directory) goes after it.
    let store: std::sync::Arc<dyn Store> = h.store.into();
    let end = std::time::Instant::now() + STREAM;
    let streams = ids.iter().map(|id| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            let (identity, eid, uuid) =
                (format!("id-{id}"), format!("EID-{id}"), format!("c-{id}"));
            let mut nn = outcome(&uuid, "not_now");
            let mut exchanges = 0;
            while std::time::Instant::now() < end {
                let t = now();
                let x = exchange(&identity, &eid, Channel::Device, None, None, t);
                assert_eq!(
                    next_uuid(store.command_exchange(x).await.unwrap()),
                    Some(uuid.clone())
                );
                nn.retry_after = Some(t);
                let x = exchange(&identity, &eid, Channel::Device, Some(&nn), None, t);
                assert_eq!(next_uuid(store.command_exchange(x).await.unwrap()), None);
                exchanges += 2;
            }
            exchanges
        })
    });
    let mut exchanges = 0;
    for s in streams.collect::<Vec<_>>() {
        exchanges += s.await.unwrap();
    }
    // The log file's header: its checkpoint sequence number (bytes 12..16, big-endian) counts
    // the times the log started over; the file is as long as the log ever was.
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    let header = std::fs::read(&wal).unwrap();
    let restarts = u32::from_be_bytes(header[12..16].try_into().unwrap());
    let frames = (header.len().saturating_sub(32)) / (4096 + 24);
    eprintln!(
        "{exchanges} exchanges: the log started over {restarts} times; longest {frames} frames"
    );
    assert!(
        restarts >= 5,
        "the log started over {restarts} times in {exchanges} exchanges (longest {frames} frames)"
    );
}

async fn a_user(s: &dyn Store) -> User {
    s.create_user(&new_user("ann@example.com"), &audit("user.create", "ann"))
        .await
        .unwrap()
}

fn new_enrollment(user: &User, id: &str, challenge: &str, mins: i64) -> NewEnrollment {
    NewEnrollment {
        id: id.into(),
        user_id: user.id,
        managed_apple_id: user.email.clone(),
        ownership: Ownership::Employee,
        attributes: r#"{"team":"blue"}"#.into(),
        mode: EnrollmentMode::UserEnrollment,
        os_version: Some("15.2".into()),
        build_version: None,
        product: Some("Mac14,2".into()),
        model_family: Some("Mac".into()),
        scep_challenge_hash: challenge.into(),
        challenge_expires_at: now() + Duration::minutes(mins),
        push_topic: "com.apple.mgmt.External.test".into(),
        profile_ids: Some(ProfileIds {
            profile: format!("P-{id}"),
            mdm_payload: format!("M-{id}"),
            trust_payload: format!("T-{id}"),
        }),
        bearer_token_hash: None,
    }
}

async fn access_tokens_are_single_use(s: &dyn Store) {
    let u = a_user(s).await;
    let t0 = now();
    for (hash, mins) in [("live", 10), ("stale", -1)] {
        s.create_access_token(&AccessTokenRow {
            token_hash: hash.into(),
            user_id: u.id,
            ownership: Ownership::Employee,
            attributes: "{}".into(),
            created_at: t0,
            expires_at: t0 + Duration::minutes(mins),
            used_at: None,
        })
        .await
        .unwrap();
    }
    let got = s.consume_access_token("live", t0).await.unwrap().unwrap();
    assert_eq!(got.used_at, Some(t0));
    assert!(
        s.consume_access_token("live", t0).await.unwrap().is_none(),
        "replay"
    );
    assert!(
        s.consume_access_token("stale", t0).await.unwrap().is_none(),
        "expired"
    );
    assert!(s.consume_access_token("nope", t0).await.unwrap().is_none());
    assert!(s
        .access_token("live")
        .await
        .unwrap()
        .unwrap()
        .used_at
        .is_some());

    let flow = EnrollmentFlow {
        id_hash: "f1".into(),
        user_id: u.id,
        user_identifier: Some("ann@example.com".into()),
        step: "privacy".into(),
        ownership: None,
        created_at: t0,
        expires_at: t0 + Duration::minutes(30),
    };
    s.create_flow(&flow).await.unwrap();
    s.update_flow("f1", "attributes", Some("employee"))
        .await
        .unwrap();
    let f = s.flow("f1", t0).await.unwrap().unwrap();
    assert_eq!(
        (f.step.as_str(), f.ownership.as_deref()),
        ("attributes", Some("employee"))
    );
    assert!(
        s.flow("f1", t0 + Duration::hours(1))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    s.delete_flow("f1").await.unwrap();
    assert!(s.flow("f1", t0).await.unwrap().is_none());
    assert!(matches!(
        s.update_flow("f1", "x", None).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn enrollment_lifecycle(s: &dyn Store) {
    let u = a_user(s).await;
    let e = s
        .create_enrollment(&new_enrollment(&u, "e1", "c1", 60))
        .await
        .unwrap();
    assert_eq!(e.status, EnrollmentStatus::Pending);
    let t = now();
    s.set_identity("e1", "0a1b", "sha-1", t + Duration::days(365))
        .await
        .unwrap();
    assert_eq!(
        s.enrollment_by_identity("sha-1").await.unwrap().unwrap().id,
        "e1"
    );

    // TokenUpdate before Authenticate is refused.
    let tu = TokenUpdateRecord {
        user_channel_id: None,
        topic: "com.apple.mgmt.External.test".into(),
        push_token: vec![1; 32],
        push_magic: "magic".into(),
        unlock_token_sealed: None,
    };
    assert!(matches!(
        s.record_token_update("e1", &tu, t).await,
        Err(StoreError::Conflict(_))
    ));

    let auth = AuthenticateRecord {
        device_channel_id: "EID-1".into(),
        os_version: Some("15.3".into()),
        build_version: Some("24D60".into()),
        product: None,
    };
    let a = s.record_authenticate("e1", &auth, t).await.unwrap();
    assert_eq!(a.status, EnrollmentStatus::Authenticated);
    assert_eq!(a.os_version.as_deref(), Some("15.3"));
    assert_eq!(a.product.as_deref(), Some("Mac14,2"), "kept when not sent");
    // Another device id for the same enrollment is refused.
    let other = AuthenticateRecord {
        device_channel_id: "EID-2".into(),
        ..auth.clone()
    };
    assert!(matches!(
        s.record_authenticate("e1", &other, t).await,
        Err(StoreError::Conflict(_))
    ));

    let d = s.record_token_update("e1", &tu, t).await.unwrap();
    assert_eq!(d.status, EnrollmentStatus::Enrolled);
    assert_eq!(d.enrolled_at, Some(t));
    assert_eq!(d.device_push_token.as_deref(), Some(&[1u8; 32][..]));
    let user_tu = TokenUpdateRecord {
        user_channel_id: Some("EUID-1".into()),
        push_token: vec![2; 32],
        push_magic: "umagic".into(),
        ..tu.clone()
    };
    let d = s.record_token_update("e1", &user_tu, t).await.unwrap();
    assert_eq!(d.user_channel_id.as_deref(), Some("EUID-1"));
    assert_eq!(
        d.device_push_magic.as_deref(),
        Some("magic"),
        "device channel untouched"
    );
    assert!(!format!("{d:?}").contains("magic"), "Debug hides PushMagic");

    s.set_bootstrap_token("e1", Some(b"sealed")).await.unwrap();
    let listed = s
        .list_devices(&DeviceListQuery {
            status: Some(EnrollmentStatus::Enrolled),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].bootstrap_token_sealed.as_deref(),
        Some(&b"sealed"[..])
    );
    assert_eq!(
        s.count_enrollments_by_status().await.unwrap(),
        [("enrolled".to_string(), 1)]
    );

    let c = s.record_checkout("e1", t).await.unwrap();
    assert_eq!(c.status, EnrollmentStatus::CheckedOut);
    assert_eq!(
        c.device_push_token, None,
        "push secrets dropped at checkout"
    );
    assert!(
        s.record_authenticate("e1", &auth, t).await.is_err(),
        "no way back"
    );
    // The same EnrollmentID may start a new enrollment once the old one checked out, but two
    // live enrollments never share one.
    s.create_enrollment(&new_enrollment(&u, "e2", "c2", 60))
        .await
        .unwrap();
    s.create_enrollment(&new_enrollment(&u, "e3", "c3", 60))
        .await
        .unwrap();
    assert_eq!(
        s.record_authenticate("e2", &auth, t)
            .await
            .unwrap()
            .device_channel_id
            .as_deref(),
        Some("EID-1")
    );
    assert!(matches!(
        s.record_authenticate("e3", &auth, t).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.record_checkout("nope", t).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn scep_challenge_claimed_once(s: &dyn Store) {
    let u = a_user(s).await;
    s.create_enrollment(&new_enrollment(&u, "e1", "c1", 60))
        .await
        .unwrap();
    s.create_enrollment(&new_enrollment(&u, "e2", "c2", -1))
        .await
        .unwrap();
    s.create_enrollment(&new_enrollment(&u, "e4", "c4", 60))
        .await
        .unwrap();
    let t = now();
    let identity = IdentityRecord {
        serial: "0a1b".into(),
        sha256: "sha-e1".into(),
        not_after: t + Duration::days(365),
    };
    // Reading finds the enrollment and changes nothing.
    for _ in 0..2 {
        let e = s.scep_challenge_enrollment("c1", t).await.unwrap().unwrap();
        assert_eq!(e.id, "e1");
        assert!(e.challenge_used_at.is_none() && e.identity_sha256.is_none());
    }
    // A claim naming another enrollment than the challenge's claims nothing.
    assert!(s
        .claim_scep_challenge("e4", "c1", &identity, t)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .enrollment("e4")
        .await
        .unwrap()
        .unwrap()
        .identity_sha256
        .is_none());
    let claimed = s
        .claim_scep_challenge("e1", "c1", &identity, t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, "e1");
    assert_eq!(claimed.identity_serial.as_deref(), Some("0a1b"));
    assert_eq!(claimed.identity_sha256.as_deref(), Some("sha-e1"));
    assert!(claimed.challenge_used_at.is_some());
    assert_eq!(
        s.enrollment_by_identity("sha-e1")
            .await
            .unwrap()
            .unwrap()
            .id,
        "e1"
    );
    // Reuse: neither found nor claimed, and the first identity stays.
    assert!(s
        .scep_challenge_enrollment("c1", t)
        .await
        .unwrap()
        .is_none());
    let other = IdentityRecord {
        sha256: "sha-other".into(),
        ..identity.clone()
    };
    assert!(
        s.claim_scep_challenge("e1", "c1", &other, t)
            .await
            .unwrap()
            .is_none(),
        "reuse"
    );
    assert_eq!(
        s.enrollment("e1")
            .await
            .unwrap()
            .unwrap()
            .identity_sha256
            .as_deref(),
        Some("sha-e1")
    );
    // Expired and unknown challenges.
    assert!(s
        .scep_challenge_enrollment("c2", t)
        .await
        .unwrap()
        .is_none());
    assert!(
        s.claim_scep_challenge("e2", "c2", &identity, t)
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert!(s
        .enrollment("e2")
        .await
        .unwrap()
        .unwrap()
        .identity_sha256
        .is_none());
    assert!(s
        .scep_challenge_enrollment("zz", t)
        .await
        .unwrap()
        .is_none());
    assert!(
        s.claim_scep_challenge("e1", "zz", &identity, t)
            .await
            .unwrap()
            .is_none(),
        "unknown"
    );
    let dup = s
        .create_enrollment(&new_enrollment(&u, "e3", "c1", 60))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
}

async fn prune_leftovers(s: &dyn Store) {
    let u = a_user(s).await;
    s.create_enrollment(&new_enrollment(&u, "stale", "c1", -5))
        .await
        .unwrap();
    s.create_enrollment(&new_enrollment(&u, "live", "c2", 60))
        .await
        .unwrap();
    assert_eq!(s.prune_enrollment_leftovers(now()).await.unwrap(), 1);
    assert!(s.enrollment("stale").await.unwrap().is_none());
    assert!(s.enrollment("live").await.unwrap().is_some());
}

async fn silent_enrollments_turn_inactive_and_back(s: &dyn Store) {
    let u = a_user(s).await;
    let t = now();
    let auth = |id: &str| AuthenticateRecord {
        device_channel_id: format!("EID-{id}"),
        os_version: None,
        build_version: None,
        product: None,
    };
    let token = TokenUpdateRecord {
        user_channel_id: None,
        topic: "com.apple.mgmt.External.test".into(),
        push_token: vec![1; 32],
        push_magic: "MAGIC".into(),
        unlock_token_sealed: None,
    };
    // "old": enrolled, last seen 100 days ago; "half": authenticated 100 days ago; "fresh":
    // enrolled now; "gone": checked out 100 days ago; "new": a pending profile from now.
    let long_ago = t - Duration::days(100);
    for id in ["old", "half", "fresh", "gone", "new"] {
        s.create_enrollment(&new_enrollment(&u, id, &format!("c-{id}"), 60))
            .await
            .unwrap();
    }
    for id in ["old", "half", "gone"] {
        s.record_authenticate(id, &auth(id), long_ago)
            .await
            .unwrap();
    }
    for id in ["old", "gone"] {
        s.record_token_update(id, &token, long_ago).await.unwrap();
    }
    s.record_checkout("gone", long_ago).await.unwrap();
    s.record_authenticate("fresh", &auth("fresh"), t)
        .await
        .unwrap();
    s.record_token_update("fresh", &token, t).await.unwrap();

    assert_eq!(
        s.mark_inactive_enrollments(t - Duration::days(90))
            .await
            .unwrap(),
        2
    );
    let status = |id: &'static str| async move { s.enrollment(id).await.unwrap().unwrap().status };
    assert_eq!(status("old").await, EnrollmentStatus::Inactive);
    assert_eq!(status("half").await, EnrollmentStatus::Inactive);
    assert_eq!(status("fresh").await, EnrollmentStatus::Enrolled);
    assert_eq!(status("gone").await, EnrollmentStatus::CheckedOut);
    assert_eq!(status("new").await, EnrollmentStatus::Pending);
    let listed = s
        .list_devices(&DeviceListQuery {
            status: Some(EnrollmentStatus::Inactive),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 2);
    // Again: nothing more to mark.
    assert_eq!(
        s.mark_inactive_enrollments(t - Duration::days(90))
            .await
            .unwrap(),
        0
    );

    // Back to the status each had reached, seen now; an active one is left alone.
    let back = s.reactivate_enrollment("old", t).await.unwrap().unwrap();
    assert_eq!(back.status, EnrollmentStatus::Enrolled);
    assert_eq!(
        back.last_seen_at.map(|x| x.timestamp()),
        Some(t.timestamp())
    );
    assert_eq!(back.device_push_token.as_deref(), Some(&[1u8; 32][..]));
    let back = s.reactivate_enrollment("half", t).await.unwrap().unwrap();
    assert_eq!(back.status, EnrollmentStatus::Authenticated);
    assert!(s.reactivate_enrollment("fresh", t).await.unwrap().is_none());
    assert!(s.reactivate_enrollment("gone", t).await.unwrap().is_none());
    assert_eq!(status("gone").await, EnrollmentStatus::CheckedOut);
    // Their live topics still count (they may come back).
    assert_eq!(
        s.live_push_topics().await.unwrap(),
        [("com.apple.mgmt.External.test".to_string(), 4)]
    );
}

async fn command_exchange_reactivates_an_inactive_enrollment(s: &dyn Store) {
    bound(s, "e1").await;
    let t = now();
    assert_eq!(
        s.mark_inactive_enrollments(t + Duration::minutes(1))
            .await
            .unwrap(),
        1
    );
    let idle = s
        .command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, t))
        .await
        .unwrap();
    assert!(next_uuid(idle).is_none());
    let e = s.enrollment("e1").await.unwrap().unwrap();
    assert_eq!(e.status, EnrollmentStatus::Enrolled);
    assert_eq!(e.last_seen_at.map(|x| x.timestamp()), Some(t.timestamp()));
    // A refused exchange (another device's EnrollmentID) revives nothing.
    s.mark_inactive_enrollments(t + Duration::minutes(1))
        .await
        .unwrap();
    let other = s
        .command_exchange(exchange("id-e1", "EID-x", Channel::Device, None, None, t))
        .await
        .unwrap();
    assert!(
        matches!(other, Exchanged::Refused(IdentityBinding::OtherDevice)),
        "{other:?}"
    );
    let e = s.enrollment("e1").await.unwrap().unwrap();
    assert_eq!(e.status, EnrollmentStatus::Inactive);
}

async fn enrolled(s: &dyn Store, id: &str) -> Enrollment {
    let u = match s.user_by_email("ann@example.com").await.unwrap() {
        Some(u) => u,
        None => a_user(s).await,
    };
    s.create_enrollment(&new_enrollment(&u, id, &format!("ch-{id}"), 60))
        .await
        .unwrap()
}

fn cmd(uuid: &str, request_type: &str) -> NewCommand {
    NewCommand {
        uuid: uuid.into(),
        request_type: request_type.into(),
        payload: format!("<plist>{uuid}</plist>").into_bytes(),
        created_by: "tester".into(),
        push: false,
    }
}

fn outcome(uuid: &str, status: &str) -> CommandOutcome {
    CommandOutcome {
        command_uuid: uuid.into(),
        status: CommandState::parse(status).expect("a command status"),
        result: Some(b"<dict/>".to_vec()),
        error_chain: None,
        retry_after: None,
    }
}

async fn command_queue_round_trip(s: &dyn Store) {
    enrolled(s, "e1").await;
    let t = now();
    let targets = [("e1".into(), Channel::Device)];
    for (u, rt) in [("c1", "DeviceInformation"), ("c2", "ProfileList")] {
        assert_eq!(
            s.enqueue_command(&cmd(u, rt), &targets, &audit("command.enqueue", u))
                .await
                .unwrap(),
            1
        );
    }
    assert!(
        s.next_command("e1", Channel::User, t)
            .await
            .unwrap()
            .is_none(),
        "user channel empty"
    );
    let n = s
        .next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.command_uuid.as_str(), n.request_type.as_str()),
        ("c1", "DeviceInformation")
    );
    assert_eq!(n.payload, b"<plist>c1</plist>");
    // Idle again without an answer: the same command again.
    let again = s
        .next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.command_uuid, "c1");
    let rt = s
        .record_command_outcome("e1", Channel::Device, &outcome("c1", "acknowledged"), t)
        .await
        .unwrap();
    assert_eq!(rt, "DeviceInformation");
    let n = s
        .next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.command_uuid, "c2");
    s.record_command_outcome("e1", Channel::Device, &outcome("c2", "error"), t)
        .await
        .unwrap();
    assert!(s
        .next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .is_none());
    let h = s.command_history("e1", 10).await.unwrap();
    let seen: Vec<_> = h
        .iter()
        .map(|r| (r.command_uuid.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(seen, [("c2", "error"), ("c1", "acknowledged")]);
    assert_eq!(h[1].result.as_deref(), Some(&b"<dict/>"[..]));
    assert!(h[1].finished_at.is_some() && h[1].sent_at.is_some());
    // A duplicate result is for a command no longer given: refused, nothing changes.
    assert!(matches!(
        s.record_command_outcome("e1", Channel::Device, &outcome("c1", "acknowledged"), t)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.command_history("e1", 10).await.unwrap().len(), 2);

    s.set_inventory("e1", r#"{"OSVersion":"15.3"}"#)
        .await
        .unwrap();
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some(r#"{"OSVersion":"15.3"}"#)
    );
    assert_eq!(s.inventory("zz").await.unwrap(), None);
}

async fn command_not_now_and_unknown_results(s: &dyn Store) {
    enrolled(s, "e1").await;
    enrolled(s, "e2").await;
    let t = now();
    let e1 = [("e1".into(), Channel::Device)];
    s.enqueue_command(
        &cmd("c1", "SecurityInfo"),
        &e1,
        &audit("command.enqueue", "c1"),
    )
    .await
    .unwrap();
    // Never sent yet: a result for it is refused.
    assert!(s
        .record_command_outcome("e1", Channel::Device, &outcome("c1", "acknowledged"), t)
        .await
        .is_err());
    s.next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .unwrap();
    // Another enrollment cannot answer for it.
    assert!(s
        .record_command_outcome("e2", Channel::Device, &outcome("c1", "acknowledged"), t)
        .await
        .is_err());
    let mut nn = outcome("c1", "not_now");
    nn.retry_after = Some(t + Duration::minutes(10));
    assert_eq!(
        s.record_command_outcome("e1", Channel::Device, &nn, t)
            .await
            .unwrap(),
        "not_now"
    );
    assert!(
        s.next_command("e1", Channel::Device, t)
            .await
            .unwrap()
            .is_none(),
        "deferred"
    );
    assert_eq!(
        s.next_command("e1", Channel::Device, t + Duration::minutes(11))
            .await
            .unwrap()
            .unwrap()
            .command_uuid,
        "c1",
        "due again after the back-off"
    );
    s.record_command_outcome("e1", Channel::Device, &nn, t)
        .await
        .unwrap();
    assert_eq!(s.release_not_now("e1").await.unwrap(), 1);
    assert_eq!(
        s.next_command("e1", Channel::Device, t)
            .await
            .unwrap()
            .unwrap()
            .command_uuid,
        "c1",
        "a push makes it due at once"
    );
    assert_eq!(s.clear_queue("e1").await.unwrap(), 1);
    assert!(s
        .next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .is_none());
}

async fn command_bulk_enqueue_and_prune(s: &dyn Store) {
    let mut targets = Vec::new();
    for i in 0..1203 {
        let id = format!("e{i}");
        enrolled(s, &id).await;
        targets.push((id.into(), Channel::Device));
    }
    let n = s
        .enqueue_command(
            &cmd("bulk", "ProfileList"),
            &targets,
            &audit("command.enqueue", "bulk"),
        )
        .await
        .unwrap();
    assert_eq!(n, 1203);
    assert_eq!(s.command_targets("bulk").await.unwrap().len(), 1203);
    // A target that does not exist fails the whole enqueue: nothing is half-written.
    let mut bad = targets[..3].to_vec();
    bad.push(("nope".into(), Channel::Device));
    assert!(s
        .enqueue_command(
            &cmd("bad", "ProfileList"),
            &bad,
            &audit("command.enqueue", "bad")
        )
        .await
        .is_err());
    assert!(s.command_targets("bad").await.unwrap().is_empty());
    let t = now();
    s.next_command("e7", Channel::Device, t)
        .await
        .unwrap()
        .unwrap();
    s.record_command_outcome("e7", Channel::Device, &outcome("bulk", "acknowledged"), t)
        .await
        .unwrap();
    assert_eq!(
        s.prune_command_results(t - Duration::minutes(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.prune_command_results(t + Duration::minutes(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.command_targets("bulk").await.unwrap().len(), 1202);
}

/// A push asked for with a command is kept with it: a sweep claims each pending request once
/// (two sweeps at once share nothing), a push attempt clears what was asked before it started,
/// and a claim that lapses (its process stopped) lets another sweep take the request.
async fn push_requests_survive_the_requester(s: &dyn Store) {
    for id in ["p1", "p2", "p3"] {
        enrolled(s, id).await;
    }
    let targets = |ids: &[&str]| -> Vec<(EnrollmentId, Channel)> {
        ids.iter().map(|i| ((*i).into(), Channel::Device)).collect()
    };
    let pushed = NewCommand {
        push: true,
        ..cmd("with-push", "ProfileList")
    };
    s.enqueue_command(&pushed, &targets(&["p1", "p2"]), &audit("c", "1"))
        .await
        .unwrap();
    s.enqueue_command(
        &cmd("without-push", "ProfileList"),
        &targets(&["p3"]),
        &audit("c", "2"),
    )
    .await
    .unwrap();
    let t = now();
    let later = t + Duration::seconds(1);
    // Nothing is due before it was asked for.
    let none = s
        .claim_push_requests(t - Duration::minutes(1), later, t, 100)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // Two sweeps at once: each pending request goes to exactly one; p3 asked for no push.
    let (a, b) = tokio::join!(
        s.claim_push_requests(later, later + Duration::minutes(2), later, 100),
        s.claim_push_requests(later, later + Duration::minutes(2), later, 100),
    );
    let mut claimed = a.unwrap();
    claimed.extend(b.unwrap());
    claimed.sort();
    assert_eq!(claimed, ["p1", "p2"]);
    // A live claim is not taken again; a lapsed one is.
    let again = s
        .claim_push_requests(later, later + Duration::minutes(2), later, 100)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let lapsed = later + Duration::minutes(3);
    let mut retaken = s
        .claim_push_requests(later, lapsed + Duration::minutes(2), lapsed, 100)
        .await
        .unwrap();
    retaken.sort();
    assert_eq!(retaken, ["p1", "p2"]);
    // A push that started after the request clears it; one that started before does not.
    assert_eq!(
        s.finish_push_requests(&["p1".into()], t - Duration::minutes(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.finish_push_requests(&["p1".into(), "p3".into()], later)
            .await
            .unwrap(),
        1
    );
    let far = lapsed + Duration::hours(1);
    let left = s
        .claim_push_requests(far, far + Duration::minutes(2), far, 100)
        .await
        .unwrap();
    assert_eq!(left, ["p2"]);
}

/// What a device writes stays bounded per enrollment: a status report keeps only the latest
/// value per status item and declaration (gone at check-out), and command results the newest
/// per enrollment after the prune.
async fn device_writes_are_bounded(s: &dyn Store) {
    enrolled_device(s, "e", "ann@example.com").await;
    enrolled_device(s, "f", "bob@example.com").await;
    for n in 0..5 {
        let report = StatusReportRecord {
            items: vec![(
                "device.operating-system.version".into(),
                format!("\"15.{n}\""),
            )],
            declarations: vec![declaration_state("d1", &format!("t{n}"), n % 2 == 0)],
            full: false,
        };
        s.record_status_report("e", &report, now()).await.unwrap();
    }
    let f_report = StatusReportRecord {
        items: vec![("device.model.family".into(), "\"Mac\"".into())],
        ..Default::default()
    };
    s.record_status_report("f", &f_report, now()).await.unwrap();
    let items = s.status_items("e").await.unwrap();
    assert_eq!(items.len(), 1, "one row per item: {items:?}");
    assert_eq!(items[0].value, "\"15.4\"", "the latest value");
    let states = s.declaration_statuses("e").await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].server_token, "t4");
    assert!(states[0].active);
    // Another enrollment's status is its own.
    assert_eq!(
        s.status_items("f").await.unwrap()[0].name,
        "device.model.family"
    );
    assert!(s.declaration_statuses("f").await.unwrap().is_empty());
    // Check-out drops it.
    s.record_checkout("e", now()).await.unwrap();
    assert!(s.status_items("e").await.unwrap().is_empty());
    assert!(s.declaration_statuses("e").await.unwrap().is_empty());
    assert_eq!(s.status_items("f").await.unwrap().len(), 1);

    // Command results: the newest RESULTS_KEEP_PER_ENROLLMENT per enrollment after the prune;
    // an enrollment under the cap keeps all of its own, whenever they came.
    let extra = 3;
    let t = now();
    enrolled_device(s, "g", "cy@example.com").await;
    // Enqueued, handed out and acknowledged.
    let finished = |enrollment: &'static str, uuid: String| async move {
        s.enqueue_command(
            &cmd(&uuid, "ProfileList"),
            &[(enrollment.into(), Channel::Device)],
            &audit("command.enqueue", &uuid),
        )
        .await
        .unwrap();
        s.next_command(enrollment, Channel::Device, t)
            .await
            .unwrap()
            .unwrap();
        s.record_command_outcome(
            enrollment,
            Channel::Device,
            &outcome(&uuid, "acknowledged"),
            t,
        )
        .await
        .unwrap();
    };
    for i in 0..RESULTS_KEEP_PER_ENROLLMENT + extra {
        if i % 50 == 0 {
            finished("g", format!("g{i}")).await;
        }
        finished("f", format!("c{i}")).await;
    }
    let pruned = s
        .prune_command_results(t - Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned, extra as u64);
    let history = s.command_history("f", 1000).await.unwrap();
    assert_eq!(history.len() as i64, RESULTS_KEEP_PER_ENROLLMENT);
    assert!(
        history.iter().all(|r| r.command_uuid != "c0"),
        "the oldest went"
    );
    assert!(history.iter().any(|r| r.command_uuid == "c3"));
    assert_eq!(s.command_history("g", 1000).await.unwrap().len(), 5);
    // Nothing more to prune.
    assert_eq!(
        s.prune_command_results(t - Duration::days(1))
            .await
            .unwrap(),
        0
    );
}

async fn push_targets_and_pki_replace(s: &dyn Store) {
    enrolled(s, "e1").await;
    enrolled(s, "e2").await;
    let t = now();
    for id in ["e1", "e2"] {
        s.record_authenticate(
            id,
            &AuthenticateRecord {
                device_channel_id: format!("EID-{id}"),
                os_version: None,
                build_version: None,
                product: None,
            },
            t,
        )
        .await
        .unwrap();
    }
    s.record_token_update(
        "e1",
        &TokenUpdateRecord {
            user_channel_id: None,
            topic: "topic".into(),
            push_token: vec![7; 32],
            push_magic: "magic-1".into(),
            unlock_token_sealed: None,
        },
        t,
    )
    .await
    .unwrap();
    let ids = vec!["e1".to_string(), "e2".to_string(), "nope".to_string()];
    let targets = s.push_targets(&ids).await.unwrap();
    assert_eq!(targets.len(), 1, "only e1 is enrolled with a token");
    assert_eq!(targets[0].push_magic, "magic-1");
    s.record_push("e1", "delivered", false, t).await.unwrap();
    let e = s.enrollment("e1").await.unwrap().unwrap();
    assert_eq!(e.last_push_status.as_deref(), Some("delivered"));
    assert_eq!(e.last_push_at, Some(t));
    s.record_push("e1", "unregistered", true, t).await.unwrap();
    assert!(
        s.push_targets(&ids).await.unwrap().is_empty(),
        "dead token forgotten"
    );

    let m = PkiMaterial {
        name: "apns".into(),
        cert_pem: "A".into(),
        key_sealed: vec![1],
        created_at: t,
    };
    s.put_pki(&m, &audit("push_certificate.upload", "apns"))
        .await
        .unwrap();
    let renewed = PkiMaterial {
        cert_pem: "B".into(),
        ..m.clone()
    };
    s.put_pki(&renewed, &audit("push_certificate.upload", "apns"))
        .await
        .unwrap();
    assert_eq!(s.get_pki("apns").await.unwrap().unwrap().cert_pem, "B");
    assert_eq!(
        s.list_audit(&AuditFilter {
            action: Some("push_certificate.upload".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        2
    );
}

/// A pending key (the push key with its CSR) waits for its certificate; completing it stores
/// the certificate and removes the pending rows in one step, once.
async fn pending_pki_completes_once(s: &dyn Store) {
    let t = lanyard_store::now();
    assert!(s.get_pending_pki("apns.request").await.unwrap().is_none());
    let req = PkiMaterial {
        name: "apns.request".into(),
        cert_pem: "CSR 1".into(),
        key_sealed: vec![1, 2],
        created_at: t,
    };
    let helper = PkiMaterial {
        name: "apns.exchange".into(),
        cert_pem: "CERT".into(),
        key_sealed: vec![3],
        created_at: t,
    };
    s.put_pending_pki(
        &[req.clone(), helper.clone()],
        &audit("push_certificate.request", "apns"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_pending_pki("apns.request").await.unwrap().unwrap(),
        req
    );
    // A new request replaces the old one.
    let req2 = PkiMaterial {
        cert_pem: "CSR 2".into(),
        key_sealed: vec![9],
        ..req.clone()
    };
    s.put_pending_pki(
        std::slice::from_ref(&req2),
        &audit("push_certificate.request", "apns"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_pending_pki("apns.request").await.unwrap().unwrap(),
        req2
    );
    assert!(
        s.get_pki("apns").await.unwrap().is_none(),
        "pending is not active"
    );

    let cert = PkiMaterial {
        name: "apns".into(),
        cert_pem: "CERT FOR CSR 2".into(),
        key_sealed: vec![9],
        created_at: t,
    };
    s.complete_pending_pki(
        &["apns.request", "apns.exchange"],
        &cert,
        &audit("push_certificate.upload", "apns"),
    )
    .await
    .unwrap();
    assert_eq!(s.get_pki("apns").await.unwrap().unwrap(), cert);
    assert!(s.get_pending_pki("apns.request").await.unwrap().is_none());
    assert!(s.get_pending_pki("apns.exchange").await.unwrap().is_none());

    // Completing again (a second upload racing the first) changes nothing.
    let other = PkiMaterial {
        cert_pem: "OTHER".into(),
        ..cert.clone()
    };
    let again = s
        .complete_pending_pki(
            &["apns.request"],
            &other,
            &audit("push_certificate.upload", "apns"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
    assert_eq!(s.get_pki("apns").await.unwrap().unwrap(), cert);
    assert_eq!(
        s.list_audit(&AuditFilter {
            action: Some("push_certificate.upload".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1,
        "the refused completion wrote no audit line"
    );
}

/// Enrolls `id` for `email` (creating the user when new) with the given OS and product.
async fn listed_device(s: &dyn Store, id: &str, email: &str, os: &str, product: &str) {
    let u = match s.user_by_email(email).await.unwrap() {
        Some(u) => u,
        None => s
            .create_user(&new_user(email), &audit("user.create", email))
            .await
            .unwrap(),
    };
    let mut e = new_enrollment(&u, id, &format!("ch-{id}"), 60);
    e.managed_apple_id = format!("{id}-{email}");
    e.os_version = Some(os.into());
    e.product = Some(product.into());
    e.model_family = None;
    s.create_enrollment(&e).await.unwrap();
}

/// Enrolls `id` (device and push token set) for `email`, returning nothing.
async fn enrolled_device(s: &dyn Store, id: &str, email: &str) {
    listed_device(s, id, email, "15.2", "Mac14,2").await;
    let t = now();
    s.set_identity(id, "01", &format!("sha-{id}"), t + Duration::days(300))
        .await
        .unwrap();
    let auth = AuthenticateRecord {
        device_channel_id: format!("EID-{id}"),
        os_version: None,
        build_version: None,
        product: None,
    };
    s.record_authenticate(id, &auth, t).await.unwrap();
    let tu = TokenUpdateRecord {
        user_channel_id: None,
        topic: "com.apple.mgmt.External.test".into(),
        push_token: vec![1; 32],
        push_magic: "magic".into(),
        unlock_token_sealed: None,
    };
    s.record_token_update(id, &tu, t).await.unwrap();
}

/// The one device search takes `%`, `_` and `\` literally, trims, and the devices it lists for
/// a search are exactly those a command queued to that search's matches reaches (the bulk
/// command's "every matching device" target runs the same query with a larger limit).
async fn device_search_takes_wildcards_literally(s: &dyn Store) {
    enrolled_device(s, "u", "a_b@example.com").await;
    enrolled_device(s, "p", "a%b@example.com").await;
    enrolled_device(s, "b", "a\\b@example.com").await;
    enrolled_device(s, "x", "axb@example.com").await;
    let page = |search: &str| DeviceListQuery {
        search: Some(search.into()),
        status: Some(EnrollmentStatus::Enrolled),
        declarations_failing: false,
        sort: DeviceSort::Created,
        descending: true,
        offset: 0,
        limit: 25,
    };
    let bulk = |search: &str| DeviceListQuery {
        descending: false,
        limit: MAX_DEVICE_LIST,
        ..page(search)
    };
    let ids = |p: Paged<Enrollment>| {
        let mut v: Vec<String> = p.items.into_iter().map(|e| e.id.0).collect();
        v.sort();
        v
    };
    for (n, (search, want)) in [
        ("_", vec!["u"]),
        ("%", vec!["p"]),
        ("\\", vec!["b"]),
        ("A_B@", vec!["u"]),
        ("a%b", vec!["p"]),
        ("  a\\b  ", vec!["b"]),
        ("axb", vec!["x"]),
        ("", vec!["b", "p", "u", "x"]),
        ("   ", vec!["b", "p", "u", "x"]),
    ]
    .into_iter()
    .enumerate()
    {
        let listed = s.list_devices(&page(search)).await.unwrap();
        assert_eq!(listed.total, want.len() as i64, "search {search:?}");
        let listed = ids(listed);
        assert_eq!(listed, want, "search {search:?} lists");
        let targets = ids(s.list_devices(&bulk(search)).await.unwrap());
        assert_eq!(targets, listed, "search {search:?} targets what it lists");
        // Queued to those targets, the command reaches exactly the listed devices.
        let uuid = format!("cmd-{n}");
        let payload = b"<plist/>".to_vec();
        s.enqueue_command(
            &NewCommand {
                uuid: uuid.as_str().into(),
                request_type: "DeviceInformation".into(),
                payload,
                created_by: "tester".into(),
                push: false,
            },
            &targets
                .iter()
                .map(|id| (id.clone().into(), Channel::Device))
                .collect::<Vec<_>>(),
            &audit("command.enqueue", search),
        )
        .await
        .unwrap();
        let mut reached: Vec<String> = s
            .command_targets(&uuid)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.enrollment_id.0)
            .collect();
        reached.sort();
        assert_eq!(reached, want, "search {search:?} reaches");
    }
    // The user list's search follows the same rule.
    let users = s
        .list_users(&ListQuery {
            search: Some("_".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        users.iter().map(|u| u.email.as_str()).collect::<Vec<_>>(),
        ["a_b@example.com"]
    );
}

/// A command by device search is counted and queued in the database (`INSERT … SELECT`): it
/// reaches exactly the enrolled devices the search lists; on the user channel only those whose
/// user channel checked in; with a push, the targets' push requests are recorded and their ids
/// returned; the audit line says how many were queued.
async fn a_search_target_is_queued_in_the_database(s: &dyn Store) {
    enrolled_device(s, "a1", "ann@example.com").await;
    enrolled_device(s, "a2", "anna@example.com").await;
    enrolled_device(s, "b1", "bob@example.com").await;
    // Listed by the search but not enrolled: never a target.
    listed_device(s, "a3", "annie@example.com", "15.2", "Mac14,2").await;
    // a2's user channel has checked in.
    s.record_token_update(
        "a2",
        &TokenUpdateRecord {
            user_channel_id: Some("UID-a2".into()),
            topic: "com.apple.mgmt.External.test".into(),
            push_token: vec![2; 32],
            push_magic: "magic-user".into(),
            unlock_token_sealed: None,
        },
        now(),
    )
    .await
    .unwrap();
    let filter = |search: &str| DeviceListQuery {
        search: Some(search.into()),
        status: Some(EnrollmentStatus::Enrolled),
        limit: MAX_DEVICE_LIST,
        ..DeviceListQuery::default()
    };
    let listed = |search: &'static str| async move {
        let mut v: Vec<String> = s
            .list_devices(&filter(search))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.id.0)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        s.count_command_targets(&filter("ann")).await.unwrap(),
        TargetSummary {
            matching: 2,
            user_enrollments: 2,
            without_user_channel: Some("a1".into()),
        }
    );
    assert_eq!(
        s.count_command_targets(&filter("nobody")).await.unwrap(),
        TargetSummary {
            matching: 0,
            user_enrollments: 0,
            without_user_channel: None,
        }
    );
    let cmd = |uuid: &str, push: bool| NewCommand {
        uuid: uuid.into(),
        request_type: "DeviceInformation".into(),
        payload: b"<plist/>".to_vec(),
        created_by: "tester".into(),
        push,
    };
    let reached = |uuid: &'static str| async move {
        let mut v: Vec<(String, Channel)> = s
            .command_targets(uuid)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.enrollment_id.0, r.channel))
            .collect();
        v.sort();
        v
    };
    // Device channel, no push.
    let q = s
        .enqueue_command_matching(
            &cmd("by-search-1", false),
            &filter("ann"),
            Channel::Device,
            &Audit::new(
                "tester",
                "command.enqueue",
                "by-search-1",
                json!({"search": "ann"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        q,
        QueuedMatching {
            targets: 2,
            push_ids: vec![]
        }
    );
    assert_eq!(listed("ann").await, ["a1", "a2"]);
    assert_eq!(
        reached("by-search-1").await,
        [
            ("a1".into(), Channel::Device),
            ("a2".into(), Channel::Device)
        ]
    );
    let line = s
        .list_audit(&AuditFilter {
            target: Some("by-search-1".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(line.len(), 1);
    let detail: serde_json::Value = serde_json::from_str(&line[0].detail).unwrap();
    assert_eq!(detail, json!({"search": "ann", "targets": 2}));
    // Nothing was asked to be pushed.
    assert!(s
        .claim_push_requests(
            now() + Duration::minutes(1),
            now() + Duration::minutes(2),
            now(),
            100
        )
        .await
        .unwrap()
        .is_empty());
    // User channel with a push: only a2, whose user channel checked in; its push is recorded.
    let q = s
        .enqueue_command_matching(
            &cmd("by-search-2", true),
            &filter("ann"),
            Channel::User,
            &audit("command.enqueue", "by-search-2"),
        )
        .await
        .unwrap();
    assert_eq!(
        q,
        QueuedMatching {
            targets: 1,
            push_ids: vec!["a2".into()]
        }
    );
    assert_eq!(reached("by-search-2").await, [("a2".into(), Channel::User)]);
    let claimed = s
        .claim_push_requests(
            now() + Duration::minutes(1),
            now() + Duration::minutes(2),
            now(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(claimed, ["a2"]);
    // Every enrolled device, with a push.
    let mut q = s
        .enqueue_command_matching(
            &cmd("by-search-3", true),
            &filter(""),
            Channel::Device,
            &audit("command.enqueue", "by-search-3"),
        )
        .await
        .unwrap();
    q.push_ids.sort();
    assert_eq!(q.targets, 3);
    assert_eq!(q.push_ids, ["a1", "a2", "b1"]);
    assert_eq!(listed("").await, ["a1", "a2", "b1"]);
    // A command uuid that exists already: refused, nothing queued, no audit line.
    assert!(s
        .enqueue_command_matching(
            &cmd("by-search-1", false),
            &filter("bob"),
            Channel::Device,
            &audit("command.enqueue", "again"),
        )
        .await
        .is_err());
    assert_eq!(
        reached("by-search-1").await,
        [
            ("a1".into(), Channel::Device),
            ("a2".into(), Channel::Device)
        ]
    );
    assert!(s
        .list_audit(&AuditFilter {
            target: Some("again".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .is_empty());
}

async fn listing_devices_search_sort_page(s: &dyn Store) {
    listed_device(s, "d1", "ann@example.com", "15.2", "Mac14,2").await;
    listed_device(s, "d2", "bob@example.org", "15.4", "Mac15,3").await;
    listed_device(s, "d3", "ann@example.com", "15.3", "MacBookPro18,1").await;
    // d1 becomes enrolled, with an identity certificate expiring soon.
    let t = now();
    s.set_identity("d1", "01", "sha-d1", t + Duration::days(10))
        .await
        .unwrap();
    let auth = AuthenticateRecord {
        device_channel_id: "EID-d1".into(),
        os_version: None,
        build_version: None,
        product: None,
    };
    s.record_authenticate("d1", &auth, t).await.unwrap();
    let tu = TokenUpdateRecord {
        user_channel_id: None,
        topic: "com.apple.mgmt.External.test".into(),
        push_token: vec![1; 32],
        push_magic: "magic".into(),
        unlock_token_sealed: None,
    };
    s.record_token_update("d1", &tu, t).await.unwrap();

    let ids = |p: &Paged<Enrollment>| p.items.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let q = |search: Option<&str>, sort, descending| DeviceListQuery {
        search: search.map(str::to_string),
        status: None,
        declarations_failing: false,
        sort,
        descending,
        offset: 0,
        limit: 10,
    };
    // Sorted by OS version either way, with the total.
    let p = s
        .list_devices(&q(None, DeviceSort::OsVersion, false))
        .await
        .unwrap();
    assert_eq!(
        (ids(&p), p.total),
        (vec!["d1".into(), "d3".into(), "d2".into()], 3)
    );
    let p = s
        .list_devices(&q(None, DeviceSort::OsVersion, true))
        .await
        .unwrap();
    assert_eq!(ids(&p), ["d2", "d3", "d1"]);
    // Search by the user's email, by product (model), case-insensitively; wildcards are literal.
    let p = s
        .list_devices(&q(Some("BOB@"), DeviceSort::Created, true))
        .await
        .unwrap();
    assert_eq!((ids(&p), p.total), (vec!["d2".into()], 1));
    let p = s
        .list_devices(&q(Some("macbookpro"), DeviceSort::Created, true))
        .await
        .unwrap();
    assert_eq!(ids(&p), ["d3"]);
    let p = s
        .list_devices(&q(Some("%"), DeviceSort::Created, true))
        .await
        .unwrap();
    assert_eq!(p.total, 0, "a % in the search is not a wildcard");
    // Paging keeps the total; a status filter narrows it.
    let mut page = q(None, DeviceSort::ManagedAppleId, false);
    page.limit = 2;
    page.offset = 2;
    let p = s.list_devices(&page).await.unwrap();
    assert_eq!((ids(&p), p.total), (vec!["d3".into()], 3));
    let mut enrolled = q(None, DeviceSort::LastSeen, true);
    enrolled.status = Some(EnrollmentStatus::Enrolled);
    let p = s.list_devices(&enrolled).await.unwrap();
    assert_eq!((ids(&p), p.total), (vec!["d1".into()], 1));

    // Counts by mode and status; identities expiring within 30 days.
    let counts = s.count_enrollments_by_mode().await.unwrap();
    assert_eq!(
        counts,
        [
            ("user_enrollment".to_string(), "enrolled".to_string(), 1),
            ("user_enrollment".to_string(), "pending".to_string(), 2)
        ]
    );
    let soon = s
        .expiring_identities(t + Duration::days(30), 10)
        .await
        .unwrap();
    assert_eq!(
        soon.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["d1"]
    );
    assert!(s
        .expiring_identities(t + Duration::days(5), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn listing_audit_by_date_range(s: &dyn Store) {
    let before = now();
    for i in 0..3 {
        s.put_setting(
            &format!("k{i}"),
            "{}",
            &audit("settings.update", &format!("k{i}")),
        )
        .await
        .unwrap();
    }
    let after = now() + Duration::seconds(1);
    let all = s
        .search_audit(&AuditSearch {
            action: Some("settings.update".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items[0].target, "k2", "newest first");
    let next = s
        .search_audit(&AuditSearch {
            action: Some("settings.update".into()),
            offset: 2,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.items.len(), 1);
    assert_eq!(next.items[0].target, "k0");
    let in_range = s
        .search_audit(&AuditSearch {
            from: Some(before - Duration::seconds(1)),
            until: Some(after),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(in_range.total, 3);
    let later = s
        .search_audit(&AuditSearch {
            from: Some(after),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(later.total, 0);
    let earlier = s
        .search_audit(&AuditSearch {
            until: Some(before - Duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(earlier.total, 0);
}

fn token_upload(secret: &[u8], make_default: bool) -> AbmTokenUpload {
    AbmTokenUpload {
        secrets_sealed: secret.to_vec(),
        token_expires_at: now() + Duration::days(365),
        org_name: Some("Example Org".into()),
        org_id: Some("org-1".into()),
        server_name: Some("Lanyard".into()),
        server_uuid: Some("uuid-1".into()),
        make_default,
    }
}

fn abm_device(serial: &str, model: &str, op: Option<&str>) -> AbmDevice {
    AbmDevice {
        serial_number: serial.into(),
        model: model.into(),
        description: format!("{model} desc"),
        os: "OSX".into(),
        color: "SPACE GRAY".into(),
        profile_status: "empty".into(),
        profile_uuid: None,
        assigned_by: Some("admin@example.com".into()),
        assigned_date: Some("2026-01-01T00:00:00Z".into()),
        op_type: op.map(String::from),
    }
}

/// Changes that read before they write, run at once from many tasks, all land: none fails
/// with "database is locked" (on SQLite a deferred transaction that reads and then writes can
/// fail at once when another connection wrote in between; Lanyard's write transactions take
/// the write lock first).
async fn concurrent_changes_all_land(s: &dyn Store) {
    for n in ["a", "b"] {
        s.create_abm_token(n, "PEM", b"key", &audit("server_token.create", n))
            .await
            .unwrap();
    }
    let uploads = (0..24).map(|i| {
        let name = if i % 2 == 0 { "a" } else { "b" };
        let secret = format!("s{i}");
        async move {
            s.upload_abm_token(
                name,
                &token_upload(secret.as_bytes(), i % 3 == 0),
                &audit("server_token.upload", name),
            )
            .await
        }
    });
    for (i, r) in futures::future::join_all(uploads)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(r.is_ok(), "upload {i}: {r:?}");
    }
    let defaults = s
        .list_abm_tokens()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.is_default_account_driven)
        .count();
    assert_eq!(defaults, 1, "one default for account-driven enrollment");
}

async fn abm_token_default_moves(s: &dyn Store) {
    for n in ["a", "b"] {
        s.create_abm_token(n, "PEM", b"key", &audit("server_token.create", n))
            .await
            .unwrap();
    }
    let dup = s
        .create_abm_token("a", "PEM", b"key", &audit("server_token.create", "a"))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    assert!(s.default_abm_token().await.unwrap().is_none());

    let a = s
        .upload_abm_token(
            "a",
            &token_upload(b"s1", true),
            &audit("server_token.upload", "a"),
        )
        .await
        .unwrap();
    assert!(a.is_default_account_driven);
    assert_eq!(a.secrets_sealed.as_deref(), Some(&b"s1"[..]));
    // Uploading b without the tick leaves a the default.
    s.upload_abm_token(
        "b",
        &token_upload(b"s2", false),
        &audit("server_token.upload", "b"),
    )
    .await
    .unwrap();
    assert_eq!(s.default_abm_token().await.unwrap().unwrap().name, "a");
    // Ticking it on b moves it.
    let b = s
        .set_default_abm_token("b", &audit("server_token.default", "b"))
        .await
        .unwrap();
    assert!(b.is_default_account_driven);
    let all = s.list_abm_tokens().await.unwrap();
    let defaults: Vec<_> = all
        .iter()
        .filter(|t| t.is_default_account_driven)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(defaults, vec!["b"]);
    // Upload with the tick moves it back.
    s.upload_abm_token(
        "a",
        &token_upload(b"s3", true),
        &audit("server_token.upload", "a"),
    )
    .await
    .unwrap();
    assert_eq!(s.default_abm_token().await.unwrap().unwrap().name, "a");
    assert!(
        !s.abm_token("b")
            .await
            .unwrap()
            .unwrap()
            .is_default_account_driven
    );

    let unknown = s
        .set_default_abm_token("nope", &audit("server_token.default", "nope"))
        .await;
    assert!(matches!(unknown, Err(StoreError::NotFound(_))));
    let d = s
        .record_discovery(
            "a",
            Some("https://mdm.example.com/d"),
            &audit("discovery", "a"),
        )
        .await
        .unwrap();
    assert_eq!(
        d.discovery_url.as_deref(),
        Some("https://mdm.example.com/d")
    );
    assert!(d.discovery_registered_at.is_some());
    let d = s
        .record_discovery("a", None, &audit("discovery", "a"))
        .await
        .unwrap();
    assert!(d.discovery_url.is_none());
    let lines = s
        .list_audit(&AuditFilter {
            action: Some("server_token.default".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lines.len(), 1, "a refused change writes no audit line");
}

async fn abm_token_pages_and_renewal(s: &dyn Store) {
    s.create_abm_token("t", "PEM", b"key", &audit("server_token.create", "t"))
        .await
        .unwrap();
    s.upload_abm_token(
        "t",
        &token_upload(b"s1", false),
        &audit("server_token.upload", "t"),
    )
    .await
    .unwrap();
    let at = now();
    let held = s
        .take_sync_lease("t", "p1", at + Duration::minutes(5), at)
        .await
        .unwrap()
        .unwrap();
    assert!(held.sync_cursor.is_none());
    let page1 = [abm_device("S1", "Mac", None), abm_device("S2", "Mac", None)];
    s.store_device_page("t", "p1", &page1, "c1", at)
        .await
        .unwrap();
    // The same page again (a retry after a lost answer) duplicates nothing.
    s.store_device_page("t", "p1", &page1, "c1", at)
        .await
        .unwrap();
    let page2 = [
        abm_device("S3", "Mac", None),
        abm_device("S1", "MacBook Pro", Some("modified")),
    ];
    s.store_device_page("t", "p1", &page2, "c2", at)
        .await
        .unwrap();
    assert_eq!(s.count_abm_devices("t").await.unwrap(), 3);
    let tok = s.abm_token("t").await.unwrap().unwrap();
    assert_eq!(tok.sync_cursor.as_deref(), Some("c2"));
    s.store_device_page(
        "t",
        "p1",
        &[abm_device("S2", "Mac", Some("deleted"))],
        "c3",
        at,
    )
    .await
    .unwrap();
    s.finish_sync("t", "p1", "ok", at, &audit("server_token.sync", "t"))
        .await
        .unwrap();
    let devices = s.list_abm_devices("t", 0, 100).await.unwrap();
    let serials: Vec<_> = devices.iter().map(|d| d.serial_number.as_str()).collect();
    assert_eq!(serials, vec!["S1", "S3"]);
    assert_eq!(devices[0].model, "MacBook Pro");

    // Renewal replaces the secrets and keeps the devices and cursor.
    let renewed = s
        .upload_abm_token(
            "t",
            &token_upload(b"s2", false),
            &audit("server_token.upload", "t"),
        )
        .await
        .unwrap();
    assert_eq!(renewed.secrets_sealed.as_deref(), Some(&b"s2"[..]));
    assert_eq!(renewed.sync_cursor.as_deref(), Some("c3"));
    assert_eq!(renewed.last_sync_status.as_deref(), Some("ok"));
    assert_eq!(s.count_abm_devices("t").await.unwrap(), 2);

    s.delete_abm_token("t", &audit("server_token.delete", "t"))
        .await
        .unwrap();
    assert!(s.abm_token("t").await.unwrap().is_none());
    assert_eq!(s.count_abm_devices("t").await.unwrap(), 0);
    let again = s
        .delete_abm_token("t", &audit("server_token.delete", "t"))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound(_))));
}

async fn abm_token_sync_lease_is_exclusive(s: &dyn Store) {
    s.create_abm_token("t", "PEM", b"key", &audit("server_token.create", "t"))
        .await
        .unwrap();
    let at = now();
    let until = at + Duration::minutes(5);
    assert!(s
        .take_sync_lease("t", "p1", until, at)
        .await
        .unwrap()
        .is_some());
    assert!(s
        .take_sync_lease("t", "p2", until, at)
        .await
        .unwrap()
        .is_none());
    // The loser cannot write pages or finish.
    let refused = s
        .store_device_page("t", "p2", &[abm_device("X", "Mac", None)], "c", at)
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))));
    assert_eq!(s.count_abm_devices("t").await.unwrap(), 0);
    assert!(s
        .finish_sync("t", "p2", "ok", at, &audit("server_token.sync", "t"))
        .await
        .is_err());
    // An expired lease can be taken over.
    let later = until + Duration::seconds(1);
    assert!(s
        .take_sync_lease("t", "p2", later + Duration::minutes(5), later)
        .await
        .unwrap()
        .is_some());
    assert!(s.reset_sync_cursor("t", "p1").await.is_err());
    s.finish_sync("t", "p2", "ok", later, &audit("server_token.sync", "t"))
        .await
        .unwrap();
    assert!(s
        .take_sync_lease("t", "p1", until, at)
        .await
        .unwrap()
        .is_some());
}

/// OpenID Connect identity providers and their single-use sign-in state.
mod identity_providers {
    use super::*;

    conformance!(
        idp_create_update_delete_audited,
        idp_duplicate_name_is_conflict_and_writes_nothing,
        idp_unknown_name_is_not_found,
        oidc_sign_in_consumed_once_and_expires,
    );

    fn provider(name: &str) -> NewIdentityProvider {
        NewIdentityProvider {
            name: name.into(),
            display_name: "Example Corp".into(),
            issuer: "https://id.example.com".into(),
            client_id: "lanyard".into(),
            client_secret_sealed: Some(vec![1, 2, 3]),
            scopes: "email profile".into(),
            email_claim: "email".into(),
            allow_create_users: false,
            enabled: true,
        }
    }

    async fn count(s: &dyn Store, action: &str) -> usize {
        s.list_audit(&AuditFilter {
            action: Some(action.to_string()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
    }

    async fn idp_create_update_delete_audited(s: &dyn Store) {
        let created = s
            .create_identity_provider(&provider("corp"), &audit("idp.create", "corp"))
            .await
            .unwrap();
        assert_eq!(created.name, "corp");
        assert_eq!(created.client_secret_sealed, Some(vec![1, 2, 3]));
        assert!(created.enabled);
        assert_eq!(
            s.identity_provider("corp").await.unwrap().as_ref(),
            Some(&created)
        );
        assert_eq!(
            s.identity_provider_by_id(created.id)
                .await
                .unwrap()
                .as_ref(),
            Some(&created)
        );
        s.create_identity_provider(&provider("another"), &audit("idp.create", "another"))
            .await
            .unwrap();
        let names: Vec<String> = s
            .list_identity_providers()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["another", "corp"]);

        let updated = s
            .update_identity_provider(
                "corp",
                &IdentityProviderChange {
                    issuer: Some("https://login.example.com".into()),
                    enabled: Some(false),
                    allow_create_users: Some(true),
                    ..Default::default()
                },
                &audit("idp.update", "corp"),
            )
            .await
            .unwrap();
        assert_eq!(updated.issuer, "https://login.example.com");
        assert!(!updated.enabled);
        assert!(updated.allow_create_users);
        assert_eq!(updated.client_id, "lanyard", "untouched fields stay");
        assert_eq!(updated.client_secret_sealed, Some(vec![1, 2, 3]));
        assert_eq!(updated.created_at, created.created_at);

        let secret = s
            .update_identity_provider(
                "corp",
                &IdentityProviderChange {
                    client_secret_sealed: Some(vec![9]),
                    ..Default::default()
                },
                &audit("idp.update", "corp"),
            )
            .await
            .unwrap();
        assert_eq!(secret.client_secret_sealed, Some(vec![9]));

        s.delete_identity_provider("corp", &audit("idp.delete", "corp"))
            .await
            .unwrap();
        assert!(s.identity_provider("corp").await.unwrap().is_none());
        assert_eq!(count(s, "idp.create").await, 2);
        assert_eq!(count(s, "idp.update").await, 2);
        assert_eq!(count(s, "idp.delete").await, 1);
    }

    async fn idp_duplicate_name_is_conflict_and_writes_nothing(s: &dyn Store) {
        s.create_identity_provider(&provider("corp"), &audit("idp.create", "corp"))
            .await
            .unwrap();
        let again = s
            .create_identity_provider(&provider("corp"), &audit("idp.create", "corp"))
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        assert_eq!(s.list_identity_providers().await.unwrap().len(), 1);
        assert_eq!(count(s, "idp.create").await, 1);
    }

    async fn idp_unknown_name_is_not_found(s: &dyn Store) {
        let upd = s
            .update_identity_provider(
                "nope",
                &IdentityProviderChange {
                    enabled: Some(false),
                    ..Default::default()
                },
                &audit("idp.update", "nope"),
            )
            .await;
        assert!(matches!(upd, Err(StoreError::NotFound(_))), "{upd:?}");
        let del = s
            .delete_identity_provider("nope", &audit("idp.delete", "nope"))
            .await;
        assert!(matches!(del, Err(StoreError::NotFound(_))), "{del:?}");
        assert_eq!(count(s, "idp.update").await, 0);
        assert_eq!(count(s, "idp.delete").await, 0);
    }

    async fn oidc_sign_in_consumed_once_and_expires(s: &dyn Store) {
        let p = s
            .create_identity_provider(&provider("corp"), &audit("idp.create", "corp"))
            .await
            .unwrap();
        let t = now();
        let sign_in = |hash: &str, mins: i64| OidcSignIn {
            state_hash: hash.into(),
            provider_id: p.id,
            nonce: format!("nonce-{hash}"),
            pkce_verifier_sealed: vec![7, 7],
            user_identifier: Some("ann@example.com".into()),
            created_at: t,
            expires_at: t + Duration::minutes(mins),
            used_at: None,
        };
        s.create_oidc_sign_in(&sign_in("live", 10)).await.unwrap();
        s.create_oidc_sign_in(&sign_in("old", 1)).await.unwrap();
        let dup = s.create_oidc_sign_in(&sign_in("live", 10)).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");

        assert!(s
            .consume_oidc_sign_in("unknown", t)
            .await
            .unwrap()
            .is_none());
        let got = s.consume_oidc_sign_in("live", t).await.unwrap().unwrap();
        assert_eq!(got.nonce, "nonce-live");
        assert_eq!(got.pkce_verifier_sealed, vec![7, 7]);
        assert_eq!(got.user_identifier.as_deref(), Some("ann@example.com"));
        assert_eq!(got.used_at, Some(t));
        assert!(
            s.consume_oidc_sign_in("live", t).await.unwrap().is_none(),
            "a state is used once"
        );
        let later = t + Duration::minutes(2);
        assert!(
            s.consume_oidc_sign_in("old", later)
                .await
                .unwrap()
                .is_none(),
            "an expired state is refused"
        );
        assert_eq!(s.prune_oidc_sign_ins(later).await.unwrap(), 1);
        s.create_oidc_sign_in(&sign_in("gone-with-provider", 10))
            .await
            .unwrap();
        s.delete_identity_provider("corp", &audit("idp.delete", "corp"))
            .await
            .unwrap();
        assert!(s
            .consume_oidc_sign_in("gone-with-provider", t)
            .await
            .unwrap()
            .is_none());
    }
}

/// Enrolled with identity `id-<id>` and device channel `EID-<id>`.
async fn bound(s: &dyn Store, id: &str) {
    bound_enrollment(s, id).await;
}

async fn bound_enrollment(s: &dyn Store, id: &str) -> Enrollment {
    enrolled(s, id).await;
    let t = now() - Duration::minutes(10);
    s.set_identity(id, "01", &format!("id-{id}"), t + Duration::days(365))
        .await
        .unwrap();
    s.record_authenticate(
        id,
        &AuthenticateRecord {
            device_channel_id: format!("EID-{id}"),
            os_version: None,
            build_version: None,
            product: None,
        },
        t,
    )
    .await
    .unwrap();
    s.record_token_update(
        id,
        &TokenUpdateRecord {
            user_channel_id: None,
            topic: "topic".into(),
            push_token: vec![7; 32],
            push_magic: format!("magic-{id}"),
            unlock_token_sealed: None,
        },
        t,
    )
    .await
    .unwrap();
    s.enrollment(id).await.unwrap().unwrap()
}

/// Appends the request type to the inventory document, or changes nothing when told so, or
/// makes it larger than the store keeps; its digest is `digest`.
#[derive(Clone)]
struct TestMerge {
    change: bool,
    digest: &'static str,
    too_large: bool,
}

impl TestMerge {
    fn appends(digest: &'static str) -> Self {
        TestMerge {
            change: true,
            digest,
            too_large: false,
        }
    }

    fn unchanged() -> Self {
        TestMerge {
            change: false,
            digest: "unchanged",
            too_large: false,
        }
    }

    fn too_large() -> Self {
        TestMerge {
            change: true,
            digest: "too-large",
            too_large: true,
        }
    }
}

impl InventoryMerge for TestMerge {
    fn digest(&self, _request_type: &str) -> Option<String> {
        Some(self.digest.to_string())
    }

    fn merge(&self, request_type: &str, current: Option<&str>) -> Option<String> {
        if self.too_large {
            return Some("x".repeat(INVENTORY_LIMIT + 1));
        }
        self.change
            .then(|| format!("{}+{request_type}", current.unwrap_or("")))
    }
}

fn exchange(
    id: &str,
    eid: &str,
    channel: Channel,
    outcome: Option<&CommandOutcome>,
    merge: Option<&TestMerge>,
    at: chrono::DateTime<chrono::Utc>,
) -> CommandExchange {
    CommandExchange {
        identity_sha256: id.into(),
        device_channel_id: eid.into(),
        channel,
        outcome: outcome.cloned(),
        inventory: merge
            .map(|m| std::sync::Arc::new(m.clone()) as std::sync::Arc<dyn InventoryMerge>),
        now: at,
    }
}

fn next_uuid(x: Exchanged) -> Option<String> {
    match x {
        Exchanged::Done { next, .. } => next.map(|n| n.command_uuid.0),
        other => panic!("expected Done, got {other:?}"),
    }
}

async fn command_exchange_in_one_transaction(s: &dyn Store) {
    bound(s, "e1").await;
    let t = now();
    let e1 = [("e1".into(), Channel::Device)];
    for (u, rt) in [("c1", "DeviceInformation"), ("c2", "ProfileList")] {
        s.enqueue_command(&cmd(u, rt), &e1, &audit("command.enqueue", u))
            .await
            .unwrap();
    }
    let x = s
        .command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, t))
        .await
        .unwrap();
    assert!(
        matches!(&x, Exchanged::Done { enrollment_id, next: Some(n), ignored: None }
            if enrollment_id == "e1" && n.command_uuid == "c1"
                && n.request_type == "DeviceInformation" && n.payload == b"<plist>c1</plist>")
    );
    assert_eq!(
        s.enrollment("e1").await.unwrap().unwrap().last_seen_at,
        Some(t)
    );
    // The acknowledgement, the inventory and the next command together.
    let ack = outcome("c1", "acknowledged");
    let merge = TestMerge::appends("v1");
    let t1 = t + Duration::seconds(30);
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&ack),
            Some(&merge),
            t1,
        ))
        .await
        .unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("c2"));
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some("+DeviceInformation")
    );
    let h = s.command_history("e1", 10).await.unwrap();
    let c1 = h.iter().find(|r| r.command_uuid == "c1").unwrap();
    assert_eq!(
        (c1.status.as_str(), c1.finished_at),
        ("acknowledged", Some(t1))
    );
    assert_eq!(c1.result.as_deref(), Some(&b"<dict/>"[..]));
    assert_eq!(
        s.enrollment("e1").await.unwrap().unwrap().last_seen_at,
        Some(t),
        "last_seen_at is written at most once a minute"
    );
    // An unchanged inventory is not rewritten; an error result never touches it.
    let ack2 = outcome("c2", "acknowledged");
    let same = TestMerge::unchanged();
    let t2 = t + Duration::seconds(61);
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&ack2),
            Some(&same),
            t2,
        ))
        .await
        .unwrap();
    assert_eq!(next_uuid(x), None);
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some("+DeviceInformation")
    );
    assert_eq!(
        s.enrollment("e1").await.unwrap().unwrap().last_seen_at,
        Some(t2)
    );
    // NotNow: nothing more is handed out on that request, even with another command due
    // (Apple: a command after NotNow stops the device's own re-poll); the deferred command is
    // due again at the next poll.
    for (u, rt) in [("c3", "SecurityInfo"), ("c4", "CertificateList")] {
        s.enqueue_command(&cmd(u, rt), &e1, &audit("command.enqueue", u))
            .await
            .unwrap();
    }
    let x = s
        .command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, t2))
        .await
        .unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("c3"));
    let mut nn = outcome("c3", "not_now");
    nn.retry_after = Some(t2);
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&nn),
            Some(&merge),
            t2,
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            &x,
            Exchanged::Done {
                next: None,
                ignored: None,
                ..
            }
        ),
        "an empty answer to NotNow: {x:?}"
    );
    let h = s.command_history("e1", 10).await.unwrap();
    let c3 = h.iter().find(|r| r.command_uuid == "c3").unwrap();
    assert_eq!(c3.status, CommandState::NotNow);
    let later = t2 + Duration::seconds(1);
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            None,
            None,
            later,
        ))
        .await
        .unwrap();
    assert_eq!(
        next_uuid(x).as_deref(),
        Some("c3"),
        "due again at the next poll, before the later command"
    );
    // The user channel has its own queue.
    s.enqueue_command(
        &cmd("u1", "ProfileList"),
        &[("e1".into(), Channel::User)],
        &audit("command.enqueue", "u1"),
    )
    .await
    .unwrap();
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::User,
            None,
            None,
            later,
        ))
        .await
        .unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("u1"));
    let ack_u = outcome("u1", "acknowledged");
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::User,
            Some(&ack_u),
            None,
            later,
        ))
        .await
        .unwrap();
    assert_eq!(next_uuid(x), None);
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            None,
            None,
            later,
        ))
        .await
        .unwrap();
    assert_eq!(
        next_uuid(x).as_deref(),
        Some("c3"),
        "the device channel kept its own"
    );
}

fn ignored_of(x: &Exchanged) -> Option<IgnoredResult> {
    match x {
        Exchanged::Done { ignored, .. } => *ignored,
        other => panic!("expected Done, got {other:?}"),
    }
}

async fn command_exchange_refusals_change_nothing(s: &dyn Store) {
    bound(s, "e1").await;
    bound(s, "e2").await;
    let t = now();
    let e1 = [("e1".into(), Channel::Device)];
    s.enqueue_command(
        &cmd("c1", "DeviceInformation"),
        &e1,
        &audit("command.enqueue", "c1"),
    )
    .await
    .unwrap();
    let ack = outcome("c1", "acknowledged");
    let merge = TestMerge::appends("v1");
    // Not given yet: not stored, and the exchange goes on (a device repeats a refused result
    // until it gets a 2xx, so refusing would wedge its channel): the queued command is handed
    // out, nothing else changed.
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&ack),
            Some(&merge),
            t,
        ))
        .await
        .unwrap();
    assert_eq!(ignored_of(&x), Some(IgnoredResult::NeverGiven));
    assert_eq!(next_uuid(x).as_deref(), Some("c1"));
    assert_eq!(s.inventory("e1").await.unwrap(), None);
    let h = s.command_history("e1", 10).await.unwrap();
    assert_eq!((h.len(), h[0].status.as_str()), (1, "sent"));
    // Another enrollment cannot answer for it, nor for a command that does not exist.
    for (id, eid, uuid) in [("id-e2", "EID-e2", "c1"), ("id-e1", "EID-e1", "nope")] {
        for status in ["acknowledged", "not_now"] {
            let o = outcome(uuid, status);
            let x = s
                .command_exchange(exchange(id, eid, Channel::Device, Some(&o), None, t))
                .await
                .unwrap();
            assert_eq!(
                ignored_of(&x),
                Some(IgnoredResult::NeverGiven),
                "{id} {uuid}"
            );
        }
    }
    assert_eq!(
        s.command_history("e1", 10).await.unwrap()[0].status,
        CommandState::Sent
    );
    assert!(s.command_history("e2", 10).await.unwrap().is_empty());
    // Unknown identity, another device's EnrollmentID, a checked-out enrollment.
    assert_eq!(
        s.command_exchange(exchange(
            "id-zz",
            "EID-e1",
            Channel::Device,
            Some(&ack),
            None,
            t
        ))
        .await
        .unwrap(),
        Exchanged::UnknownIdentity
    );
    assert_eq!(
        s.command_exchange(exchange(
            "id-e1",
            "EID-e2",
            Channel::Device,
            Some(&ack),
            None,
            t
        ))
        .await
        .unwrap(),
        Exchanged::Refused(IdentityBinding::OtherDevice)
    );
    s.record_checkout("e2", t).await.unwrap();
    assert_eq!(
        s.command_exchange(exchange("id-e2", "EID-e2", Channel::Device, None, None, t))
            .await
            .unwrap(),
        Exchanged::Refused(IdentityBinding::CheckedOut)
    );
    assert_eq!(
        s.command_history("e1", 10).await.unwrap()[0].status,
        CommandState::Sent
    );
    // The real answer still goes through.
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&ack),
            Some(&merge),
            t,
        ))
        .await
        .unwrap();
    assert_eq!(ignored_of(&x), None);
    assert_eq!(next_uuid(x), None);
    // A repeat of it (the first answer was lost) is answered the same, and stores nothing new.
    let later = t + Duration::seconds(5);
    let x = s
        .command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&ack),
            Some(&merge),
            later,
        ))
        .await
        .unwrap();
    assert_eq!(ignored_of(&x), Some(IgnoredResult::Repeated));
    assert_eq!(next_uuid(x), None);
    let h = s.command_history("e1", 10).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].status.as_str(), h[0].finished_at),
        ("acknowledged", Some(t))
    );
}

/// The status of `uuid` in `id`'s command history.
async fn command_status(s: &dyn Store, id: &str, uuid: &str) -> Option<CommandState> {
    s.command_history(id, 50)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.command_uuid == uuid)
        .map(|r| r.status)
}

/// Queues a `DeviceInformation` for each of `uuids` on `id`'s device channel.
async fn queue_device_information(s: &dyn Store, id: &str, uuids: &[&str]) {
    let target = [(id.into(), Channel::Device)];
    for u in uuids {
        s.enqueue_command(
            &cmd(u, "DeviceInformation"),
            &target,
            &audit("command.enqueue", u),
        )
        .await
        .unwrap();
    }
}

async fn command_exchange_skips_an_unchanged_inventory(s: &dyn Store) {
    bound(s, "e1").await;
    let t = now();
    queue_device_information(s, "e1", &["c1", "c2", "c3", "c4"]).await;
    let x = s
        .command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, t))
        .await
        .unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("c1"));
    let ack = |u: &str, m: &TestMerge| {
        exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&outcome(u, "acknowledged")),
            Some(m),
            t,
        )
    };
    let a = TestMerge::appends("a");
    let x = s.command_exchange(ack("c1", &a)).await.unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("c2"));
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some("+DeviceInformation")
    );
    // The same answers again: not merged (the test merge would append once more).
    let x = s.command_exchange(ack("c2", &a)).await.unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("c3"));
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some("+DeviceInformation"),
        "an unchanged result is not merged"
    );
    assert_eq!(
        command_status(s, "e1", "c2").await,
        Some(CommandState::Acknowledged),
        "the result itself is stored"
    );
    // Other answers are.
    let x = s
        .command_exchange(ack("c3", &TestMerge::appends("b")))
        .await
        .unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("c4"));
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some("+DeviceInformation+DeviceInformation")
    );
    // A document written from elsewhere forgets the digests: the next result is merged.
    s.set_inventory("e1", "doc").await.unwrap();
    s.command_exchange(ack("c4", &TestMerge::appends("b")))
        .await
        .unwrap();
    assert_eq!(
        s.inventory("e1").await.unwrap().as_deref(),
        Some("doc+DeviceInformation")
    );
}

/// Enrollments `e0`… bound, each with commands `<id>-a` and `<id>-b` queued.
async fn bound_with_two_commands(s: &dyn Store, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("e{i}");
        bound(s, &id).await;
        for c in ["a", "b"] {
            let uuid = format!("{id}-{c}");
            s.enqueue_command(
                &cmd(&uuid, "DeviceInformation"),
                &[(id.clone().into(), Channel::Device)],
                &audit("command.enqueue", &uuid),
            )
            .await
            .unwrap();
        }
        ids.push(id);
    }
    ids
}

/// Exchanges that arrive together (SQLite runs them in one transaction) each get their own
/// answer and keep their own writes.
async fn concurrent_exchanges_each_keep_their_outcome(s: &dyn Store) {
    let ids = bound_with_two_commands(s, 8).await;
    let t = now();
    let polls = ids.iter().map(|id| {
        s.command_exchange(exchange(
            &format!("id-{id}"),
            &format!("EID-{id}"),
            Channel::Device,
            None,
            None,
            t,
        ))
    });
    let answers = futures::future::join_all(polls).await;
    for (id, x) in ids.iter().zip(answers) {
        assert_eq!(next_uuid(x.unwrap()), Some(format!("{id}-a")));
    }
    let merge = TestMerge::appends("v1");
    let acks = ids.iter().map(|id| {
        s.command_exchange(exchange(
            &format!("id-{id}"),
            &format!("EID-{id}"),
            Channel::Device,
            Some(&outcome(&format!("{id}-a"), "acknowledged")),
            Some(&merge),
            t,
        ))
    });
    let answers = futures::future::join_all(acks).await;
    for (id, x) in ids.iter().zip(answers) {
        let x = x.unwrap();
        assert_eq!(ignored_of(&x), None, "{id}");
        assert_eq!(next_uuid(x), Some(format!("{id}-b")));
        assert_eq!(
            command_status(s, id, &format!("{id}-a")).await,
            Some(CommandState::Acknowledged)
        );
        assert_eq!(
            command_status(s, id, &format!("{id}-b")).await,
            Some(CommandState::Sent)
        );
        assert_eq!(
            s.inventory(id).await.unwrap().as_deref(),
            Some("+DeviceInformation")
        );
    }
}

/// One exchange that fails (its inventory is larger than the store keeps) changes nothing of
/// its own, and the exchanges beside it (on SQLite: in the same transaction) keep theirs. On
/// SQLite the six arrive together (the test's runtime sends them all before the writer thread
/// answers), so the group runs, fails, and runs again with a savepoint per exchange.
async fn a_failing_exchange_does_not_undo_the_others(s: &dyn Store) {
    let ids = bound_with_two_commands(s, 6).await;
    let t = now();
    for id in &ids {
        let x = s
            .command_exchange(exchange(
                &format!("id-{id}"),
                &format!("EID-{id}"),
                Channel::Device,
                None,
                None,
                t,
            ))
            .await
            .unwrap();
        assert_eq!(next_uuid(x), Some(format!("{id}-a")));
    }
    let fine = TestMerge::appends("v1");
    let bad = TestMerge::too_large();
    let acks = ids.iter().enumerate().map(|(i, id)| {
        s.command_exchange(exchange(
            &format!("id-{id}"),
            &format!("EID-{id}"),
            Channel::Device,
            Some(&outcome(&format!("{id}-a"), "acknowledged")),
            Some(if i == 2 { &bad } else { &fine }),
            t,
        ))
    });
    let answers = futures::future::join_all(acks).await;
    for (i, (id, x)) in ids.iter().zip(answers).enumerate() {
        if i == 2 {
            assert!(
                matches!(x, Err(StoreError::TooLarge(_))),
                "the oversized inventory is refused: {x:?}"
            );
            assert_eq!(
                command_status(s, id, &format!("{id}-a")).await,
                Some(CommandState::Sent),
                "the refused exchange stored nothing"
            );
            assert_eq!(s.inventory(id).await.unwrap(), None);
        } else {
            assert_eq!(next_uuid(x.unwrap()), Some(format!("{id}-b")));
            assert_eq!(
                command_status(s, id, &format!("{id}-a")).await,
                Some(CommandState::Acknowledged)
            );
            assert_eq!(
                s.inventory(id).await.unwrap().as_deref(),
                Some("+DeviceInformation")
            );
        }
    }
    // The device repeats its answer: nothing of the first attempt was kept, so it is stored now.
    let id = &ids[2];
    let x = s
        .command_exchange(exchange(
            &format!("id-{id}"),
            &format!("EID-{id}"),
            Channel::Device,
            Some(&outcome(&format!("{id}-a"), "acknowledged")),
            Some(&fine),
            t,
        ))
        .await
        .unwrap();
    assert_eq!(ignored_of(&x), None);
    assert_eq!(next_uuid(x), Some(format!("{id}-b")));
    assert_eq!(
        s.inventory(id).await.unwrap().as_deref(),
        Some("+DeviceInformation")
    );
}

/// A device that repeats an acknowledgement while the first is still being handled: one result
/// is stored, the other is answered as a repeat, and both hand out the next command.
async fn a_repeated_acknowledgement_racing_the_first_is_stored_once(s: &dyn Store) {
    let ids = bound_with_two_commands(s, 1).await;
    let id = &ids[0];
    let t = now();
    let x = s
        .command_exchange(exchange("id-e0", "EID-e0", Channel::Device, None, None, t))
        .await
        .unwrap();
    assert_eq!(next_uuid(x).as_deref(), Some("e0-a"));
    let ack = outcome("e0-a", "acknowledged");
    let both = (0..2).map(|_| {
        s.command_exchange(exchange(
            "id-e0",
            "EID-e0",
            Channel::Device,
            Some(&ack),
            None,
            t,
        ))
    });
    let answers: Vec<Exchanged> = futures::future::join_all(both)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut ignored: Vec<_> = answers.iter().map(ignored_of).collect();
    ignored.sort_by_key(|i| format!("{i:?}"));
    assert_eq!(ignored, [None, Some(IgnoredResult::Repeated)]);
    for x in answers {
        assert_eq!(next_uuid(x).as_deref(), Some("e0-b"));
    }
    let h = s.command_history(id, 10).await.unwrap();
    assert_eq!(
        h.iter().filter(|r| r.command_uuid == "e0-a").count(),
        1,
        "stored once"
    );
}

async fn fan_out_reads_and_push_batches(s: &dyn Store) {
    for id in ["e1", "e2", "e3"] {
        bound(s, id).await;
    }
    // More ids than one chunk, most of them unknown.
    let mut ids: Vec<String> = (0..1200).map(|i| format!("none-{i}")).collect();
    ids.insert(0, "e3".into());
    ids.insert(700, "e1".into());
    ids.push("e2".into());
    let mut got: Vec<String> = s
        .enrollments_by_ids(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.0)
        .collect();
    got.sort();
    assert_eq!(got, ["e1", "e2", "e3"]);
    assert!(s.enrollments_by_ids(&[]).await.unwrap().is_empty());

    let t = now();
    let e1 = [("e1".into(), Channel::Device)];
    s.enqueue_command(
        &cmd("c1", "SecurityInfo"),
        &e1,
        &audit("command.enqueue", "c1"),
    )
    .await
    .unwrap();
    s.next_command("e1", Channel::Device, t)
        .await
        .unwrap()
        .unwrap();
    let mut nn = outcome("c1", "not_now");
    nn.retry_after = Some(t + Duration::minutes(10));
    s.record_command_outcome("e1", Channel::Device, &nn, t)
        .await
        .unwrap();
    let rec = |id: &str, status: &str, drop_token: bool, release: bool| PushRecord {
        enrollment_id: id.into(),
        channel: Channel::Device,
        status: status.into(),
        drop_token,
        release_not_now: release,
    };
    s.record_pushes(
        &[
            rec("e1", "delivered", false, true),
            rec("e2", "delivered", false, true),
            rec("e3", "unregistered", true, false),
        ],
        t,
    )
    .await
    .unwrap();
    for (id, status) in [
        ("e1", "delivered"),
        ("e2", "delivered"),
        ("e3", "unregistered"),
    ] {
        let e = s.enrollment(id).await.unwrap().unwrap();
        assert_eq!(
            (e.last_push_status.as_deref(), e.last_push_at),
            (Some(status), Some(t))
        );
        assert_eq!(e.device_push_token.is_none(), id == "e3", "{id}");
    }
    assert_eq!(
        s.next_command("e1", Channel::Device, t)
            .await
            .unwrap()
            .unwrap()
            .command_uuid,
        "c1",
        "a delivered push makes a deferred command due"
    );
    s.record_pushes(&[], t).await.unwrap();
}

async fn user_channel_push_targets(s: &dyn Store) {
    bound(s, "e1").await;
    let t = now();
    s.record_token_update(
        "e1",
        &TokenUpdateRecord {
            user_channel_id: Some("EUID-e1".into()),
            topic: "topic".into(),
            push_token: vec![9; 32],
            push_magic: "user-magic".into(),
            unlock_token_sealed: None,
        },
        t,
    )
    .await
    .unwrap();
    let ids = vec!["e1".to_string()];
    let channels = |ts: Vec<PushTargetRow>| {
        let mut v: Vec<(String, String)> = ts
            .into_iter()
            .map(|t| (t.channel.to_string(), t.push_magic))
            .collect();
        v.sort();
        v
    };
    // Nothing waits on the user channel: the device channel alone is woken.
    assert_eq!(
        channels(s.push_targets(&ids).await.unwrap()),
        [("device".to_string(), "magic-e1".to_string())]
    );
    s.enqueue_command(
        &cmd("u1", "ProfileList"),
        &[("e1".into(), Channel::User)],
        &audit("command.enqueue", "u1"),
    )
    .await
    .unwrap();
    assert_eq!(
        channels(s.push_targets(&ids).await.unwrap()),
        [
            ("device".to_string(), "magic-e1".to_string()),
            ("user".to_string(), "user-magic".to_string())
        ],
        "a user-channel command wakes the user channel's token"
    );
    // APNs calling the user token dead forgets that token only.
    s.record_pushes(
        &[PushRecord {
            enrollment_id: "e1".into(),
            channel: Channel::User,
            status: "unregistered".into(),
            drop_token: true,
            release_not_now: false,
        }],
        t,
    )
    .await
    .unwrap();
    let e = s.enrollment("e1").await.unwrap().unwrap();
    assert!(e.user_push_token.is_none());
    assert!(e.device_push_token.is_some());
}

async fn checkout_drops_the_queue_in_one_step(s: &dyn Store) {
    bound(s, "e1").await;
    s.enqueue_command(
        &cmd("c1", "ProfileList"),
        &[("e1".into(), Channel::Device)],
        &audit("command.enqueue", "c1"),
    )
    .await
    .unwrap();
    let e = s.record_checkout("e1", now()).await.unwrap();
    assert_eq!(e.status, EnrollmentStatus::CheckedOut);
    assert_eq!(e.bearer_token_hash, None);
    assert!(s.command_history("e1", 10).await.unwrap().is_empty());
    assert!(matches!(
        s.record_checkout("nope", now()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn bearer_rebind_and_revoke(s: &dyn Store) {
    let u = a_user(s).await;
    let t0 = now();
    let token = |hash: &str| AccessTokenRow {
        token_hash: hash.into(),
        user_id: u.id,
        ownership: Ownership::Employee,
        attributes: "{}".into(),
        created_at: t0,
        expires_at: t0 + Duration::minutes(10),
        used_at: None,
    };
    s.create_access_token(&token("bearer-e1")).await.unwrap();
    // The enrollment claims the token it is issued for, in the same transaction.
    let with_token = NewEnrollment {
        bearer_token_hash: Some("bearer-e1".into()),
        ..new_enrollment(&u, "e1", "ch-e1", 60)
    };
    let e = s.create_enrollment(&with_token).await.unwrap();
    assert_eq!(e.bearer_token_hash.as_deref(), Some("bearer-e1"));
    assert!(s
        .access_token("bearer-e1")
        .await
        .unwrap()
        .unwrap()
        .used_at
        .is_some());
    // A used or unknown token: refused, and no enrollment is written.
    for (id, hash) in [("e9", "bearer-e1"), ("e8", "never-issued")] {
        let again = NewEnrollment {
            bearer_token_hash: Some(hash.into()),
            ..new_enrollment(&u, id, &format!("ch-{id}"), 60)
        };
        assert!(matches!(
            s.create_enrollment(&again).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(s.enrollment(id).await.unwrap().is_none());
    }
    let other = s
        .create_user(&new_user("bob@example.com"), &audit("user.create", "bob"))
        .await
        .unwrap();
    let t = now();
    for (hash, user, mins, used) in [
        ("fresh", e.user_id, 10, None),
        ("used", e.user_id, 10, Some(t)),
        ("stale", e.user_id, -1, None),
        ("bobs", other.id, 10, None),
    ] {
        s.create_access_token(&AccessTokenRow {
            token_hash: hash.into(),
            user_id: user,
            ownership: Ownership::Employee,
            attributes: "{}".into(),
            created_at: t,
            expires_at: t + Duration::minutes(mins),
            used_at: used,
        })
        .await
        .unwrap();
    }
    // Used, expired, another person's or unknown tokens change nothing.
    for hash in ["used", "stale", "bobs", "unknown"] {
        assert!(
            !s.rebind_bearer("e1", e.user_id, hash, t).await.unwrap(),
            "{hash}"
        );
        assert_eq!(
            s.enrollment("e1")
                .await
                .unwrap()
                .unwrap()
                .bearer_token_hash
                .as_deref(),
            Some("bearer-e1")
        );
    }
    assert!(s.rebind_bearer("e1", e.user_id, "fresh", t).await.unwrap());
    assert_eq!(
        s.enrollment("e1")
            .await
            .unwrap()
            .unwrap()
            .bearer_token_hash
            .as_deref(),
        Some("fresh")
    );
    assert!(
        !s.rebind_bearer("e1", e.user_id, "fresh", t).await.unwrap(),
        "a token binds once"
    );
    s.revoke_bearer("e1", &audit("enrollment.reauthenticate", "e1"))
        .await
        .unwrap();
    assert_eq!(
        s.enrollment("e1").await.unwrap().unwrap().bearer_token_hash,
        None
    );
    assert!(matches!(
        s.revoke_bearer("nope", &audit("enrollment.reauthenticate", "nope"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

fn declaration_state(identifier: &str, token: &str, active: bool) -> DeclarationStatusRecord {
    DeclarationStatusRecord {
        identifier: identifier.into(),
        server_token: token.into(),
        active,
        valid: if active {
            DeclarationValidity::Valid
        } else {
            DeclarationValidity::Invalid
        },
        reasons: if active {
            "[]".into()
        } else {
            r#"[{"Code":"Error.ConfigurationCannotBeApplied"}]"#.into()
        },
    }
}

fn new_declaration(
    identifier: &str,
    kind: DeclarationKind,
    declaration_type: &str,
) -> NewDeclaration {
    NewDeclaration {
        identifier: identifier.into(),
        declaration_type: declaration_type.into(),
        kind,
        payload: r#"{"Echo":"hi"}"#.into(),
        server_token: format!("token-{identifier}"),
        asset_data_sealed: None,
        asset_content_type: None,
    }
}

async fn audit_count(s: &dyn Store, action: &str) -> usize {
    s.list_audit(&AuditFilter {
        action: Some(action.into()),
        limit: 100,
        ..Default::default()
    })
    .await
    .unwrap()
    .len()
}

/// Declarations: created with their audit line, a taken identifier refused and nothing
/// written, content replaced (type and identifier kept), deleted (leaving their sets).
async fn declarations_round_trip(s: &dyn Store) {
    let mut d = new_declaration(
        "cfg",
        DeclarationKind::Configuration,
        "com.apple.configuration.management.test",
    );
    let row = s
        .create_declaration(&d, &audit("declaration.create", "cfg"))
        .await
        .unwrap();
    assert_eq!(row.identifier, "cfg");
    assert_eq!(row.kind, DeclarationKind::Configuration);
    assert_eq!(row.server_token, "token-cfg");
    d.server_token = "other".into();
    let again = s
        .create_declaration(&d, &audit("declaration.create", "cfg"))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        audit_count(s, "declaration.create").await,
        1,
        "the refusal wrote nothing"
    );
    assert_eq!(
        s.declaration("cfg").await.unwrap().unwrap().server_token,
        "token-cfg"
    );

    let mut asset = new_declaration(
        "cert",
        DeclarationKind::Asset,
        "com.apple.asset.credential.certificate",
    );
    asset.asset_data_sealed = Some(vec![1, 2, 3]);
    asset.asset_content_type = Some("application/pem".into());
    s.create_declaration(&asset, &audit("declaration.create", "cert"))
        .await
        .unwrap();
    let stored = s.declaration("cert").await.unwrap().unwrap();
    assert_eq!(stored.asset_data_sealed.as_deref(), Some(&[1u8, 2, 3][..]));
    assert!(
        !format!("{stored:?}").contains("[1, 2, 3]"),
        "Debug hides the sealed data"
    );

    let change = DeclarationChange {
        payload: r#"{"Echo":"changed"}"#.into(),
        server_token: "token-2".into(),
        asset_data_sealed: None,
        asset_content_type: None,
    };
    let updated = s
        .update_declaration("cfg", &change, &audit("declaration.update", "cfg"))
        .await
        .unwrap();
    assert_eq!(updated.payload, r#"{"Echo":"changed"}"#);
    assert_eq!(updated.server_token, "token-2");
    assert_eq!(
        updated.declaration_type,
        "com.apple.configuration.management.test"
    );
    assert!(updated.updated_at >= row.updated_at);
    let missing = s
        .update_declaration("nope", &change, &audit("declaration.update", "nope"))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    assert_eq!(audit_count(s, "declaration.update").await, 1);

    let listed: Vec<String> = s
        .list_declarations()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.identifier)
        .collect();
    assert_eq!(listed, ["cert", "cfg"]);

    s.create_declaration_set("base", "Base", &audit("set.create", "base"))
        .await
        .unwrap();
    s.add_set_member("base", "cfg", &audit("set.add", "base"))
        .await
        .unwrap();
    s.delete_declaration("cfg", &audit("declaration.delete", "cfg"))
        .await
        .unwrap();
    assert!(s.declaration("cfg").await.unwrap().is_none());
    assert!(
        s.set_members("base").await.unwrap().is_empty(),
        "it left its set"
    );
    let gone = s
        .delete_declaration("cfg", &audit("declaration.delete", "cfg"))
        .await;
    assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
}

/// Sets and assignments: members and the three kinds of target, refusals changing nothing,
/// and which declarations reach which enrollment.
async fn declaration_sets_reach_enrollments(s: &dyn Store) {
    enrolled_device(s, "ann-mac", "ann@example.com").await;
    enrolled_device(s, "ann-mac2", "ann@example.com").await;
    enrolled_device(s, "bob-mac", "bob@example.com").await;
    let ann = s.user_by_email("ann@example.com").await.unwrap().unwrap();
    for id in ["a", "b", "c"] {
        s.create_declaration(
            &new_declaration(
                id,
                DeclarationKind::Configuration,
                "com.apple.configuration.management.test",
            ),
            &audit("declaration.create", id),
        )
        .await
        .unwrap();
    }
    s.create_declaration_set("people", "for Ann", &audit("set.create", "people"))
        .await
        .unwrap();
    s.create_declaration_set("everyone", "", &audit("set.create", "everyone"))
        .await
        .unwrap();
    s.create_declaration_set("one", "", &audit("set.create", "one"))
        .await
        .unwrap();
    let dup = s
        .create_declaration_set("one", "", &audit("set.create", "one"))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert_eq!(audit_count(s, "set.create").await, 3);
    let changed = s
        .update_declaration_set("one", "just one Mac", &audit("set.update", "one"))
        .await
        .unwrap();
    assert_eq!(changed.description, "just one Mac");

    s.add_set_member("people", "a", &audit("set.add", "people"))
        .await
        .unwrap();
    s.add_set_member("everyone", "b", &audit("set.add", "everyone"))
        .await
        .unwrap();
    s.add_set_member("one", "c", &audit("set.add", "one"))
        .await
        .unwrap();
    s.add_set_member("one", "a", &audit("set.add", "one"))
        .await
        .unwrap();
    let twice = s.add_set_member("one", "c", &audit("set.add", "one")).await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    let unknown = s
        .add_set_member("one", "zzz", &audit("set.add", "one"))
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    assert_eq!(audit_count(s, "set.add").await, 4, "refusals wrote nothing");
    let sets: Vec<String> = s
        .sets_of_declaration("a")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(sets, ["one", "people"]);

    let reach = |id: &'static str| async move {
        s.declarations_for_enrollment(id)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.identifier)
            .collect::<Vec<_>>()
    };
    assert!(reach("ann-mac").await.is_empty(), "nothing assigned yet");

    s.assign_set(
        "people",
        &AssignmentTarget::User(ann.id),
        &audit("set.assign", "people"),
    )
    .await
    .unwrap();
    s.assign_set(
        "everyone",
        &AssignmentTarget::AllUserEnrollments,
        &audit("set.assign", "everyone"),
    )
    .await
    .unwrap();
    s.assign_set(
        "one",
        &AssignmentTarget::Enrollment("bob-mac".into()),
        &audit("set.assign", "one"),
    )
    .await
    .unwrap();
    let again = s
        .assign_set(
            "people",
            &AssignmentTarget::User(ann.id),
            &audit("set.assign", "people"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let nobody = s
        .assign_set(
            "people",
            &AssignmentTarget::User(999_999),
            &audit("set.assign", "people"),
        )
        .await;
    assert!(matches!(nobody, Err(StoreError::NotFound(_))), "{nobody:?}");
    let no_mac = s
        .assign_set(
            "one",
            &AssignmentTarget::Enrollment("nope".into()),
            &audit("set.assign", "one"),
        )
        .await;
    assert!(matches!(no_mac, Err(StoreError::NotFound(_))), "{no_mac:?}");
    assert_eq!(
        audit_count(s, "set.assign").await,
        3,
        "refusals wrote nothing"
    );

    assert_eq!(reach("ann-mac").await, ["a", "b"]);
    assert_eq!(
        reach("ann-mac2").await,
        ["a", "b"],
        "the person's sets follow them to every Mac"
    );
    assert_eq!(
        reach("bob-mac").await,
        ["a", "b", "c"],
        "a declaration in two sets comes once"
    );

    let macs = |set: &'static str| async move {
        s.enrollments_for_set(set)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(macs("people").await, ["ann-mac", "ann-mac2"]);
    assert_eq!(macs("everyone").await, ["ann-mac", "ann-mac2", "bob-mac"]);
    assert_eq!(macs("one").await, ["bob-mac"]);
    s.record_checkout("ann-mac2", now()).await.unwrap();
    assert_eq!(
        macs("people").await,
        ["ann-mac"],
        "a checked-out Mac is not reached"
    );

    let all = s.set_assignments(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        s.set_assignments(Some("one")).await.unwrap()[0].target,
        AssignmentTarget::Enrollment("bob-mac".into())
    );
    s.unassign_set(
        "everyone",
        &AssignmentTarget::AllUserEnrollments,
        &audit("set.unassign", "everyone"),
    )
    .await
    .unwrap();
    let not_assigned = s
        .unassign_set(
            "everyone",
            &AssignmentTarget::AllUserEnrollments,
            &audit("set.unassign", "everyone"),
        )
        .await;
    assert!(
        matches!(not_assigned, Err(StoreError::NotFound(_))),
        "{not_assigned:?}"
    );
    assert_eq!(reach("ann-mac").await, ["a"]);
    s.remove_set_member("one", "c", &audit("set.remove", "one"))
        .await
        .unwrap();
    assert_eq!(reach("bob-mac").await, ["a"]);
    s.delete_declaration_set("one", &audit("set.delete", "one"))
        .await
        .unwrap();
    assert!(reach("bob-mac").await.is_empty());
    assert!(
        s.set_assignments(Some("one")).await.unwrap().is_empty(),
        "its assignments went"
    );
    let names: Vec<String> = s
        .list_declaration_sets()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["everyone", "people"]);
}

/// A full status report replaces the declaration states; an incremental one updates those it
/// names. Counts per declaration: active and failing.
async fn status_reports_replace_on_full_report(s: &dyn Store) {
    enrolled_device(s, "e", "ann@example.com").await;
    enrolled_device(s, "f", "bob@example.com").await;
    let report = |decls: Vec<DeclarationStatusRecord>, full: bool| StatusReportRecord {
        items: vec![],
        declarations: decls,
        full,
    };
    s.record_status_report(
        "e",
        &report(
            vec![
                declaration_state("a", "1", true),
                declaration_state("b", "1", false),
            ],
            true,
        ),
        now(),
    )
    .await
    .unwrap();
    s.record_status_report(
        "f",
        &report(vec![declaration_state("a", "1", true)], false),
        now(),
    )
    .await
    .unwrap();
    let counts = s.declaration_status_counts().await.unwrap();
    assert_eq!(
        counts,
        [
            DeclarationStatusCount {
                identifier: "a".into(),
                active: 2,
                failing: 0
            },
            DeclarationStatusCount {
                identifier: "b".into(),
                active: 0,
                failing: 1
            },
        ]
    );
    let b = &s.declaration_statuses("e").await.unwrap()[1];
    assert_eq!(b.valid, DeclarationValidity::Invalid);
    assert!(b.reasons.contains("Error.ConfigurationCannotBeApplied"));
    // Incremental: b becomes active, a untouched.
    s.record_status_report(
        "e",
        &report(vec![declaration_state("b", "2", true)], false),
        now(),
    )
    .await
    .unwrap();
    let e: Vec<(String, String, bool)> = s
        .declaration_statuses("e")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.identifier, d.server_token, d.active))
        .collect();
    assert_eq!(
        e,
        [
            ("a".into(), "1".into(), true),
            ("b".into(), "2".into(), true)
        ]
    );
    // Full: only what it lists stays.
    s.record_status_report(
        "e",
        &report(vec![declaration_state("b", "3", true)], true),
        now(),
    )
    .await
    .unwrap();
    let e: Vec<String> = s
        .declaration_statuses("e")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.identifier)
        .collect();
    assert_eq!(e, ["b"]);
    assert_eq!(
        s.declaration_statuses("f").await.unwrap().len(),
        1,
        "another Mac's states stay"
    );
}

/// The device list's "declarations failing" filter: only enrollments whose latest report has a
/// declaration invalid, with the total counted alike; a Mac that reports it fixed leaves it.
async fn devices_with_failing_declarations_filter(s: &dyn Store) {
    enrolled_device(s, "e", "ann@example.com").await;
    enrolled_device(s, "f", "bob@example.com").await;
    enrolled_device(s, "g", "cat@example.com").await;
    let report = |decls: Vec<DeclarationStatusRecord>| StatusReportRecord {
        items: vec![],
        declarations: decls,
        full: true,
    };
    s.record_status_report(
        "e",
        &report(vec![declaration_state("a", "1", false)]),
        now(),
    )
    .await
    .unwrap();
    s.record_status_report("f", &report(vec![declaration_state("a", "1", true)]), now())
        .await
        .unwrap();
    let failing = |on: bool| DeviceListQuery {
        declarations_failing: on,
        limit: 100,
        ..DeviceListQuery::default()
    };
    let ids = |p: Paged<Enrollment>| -> (Vec<String>, i64) {
        let mut v: Vec<String> = p.items.into_iter().map(|e| e.id.0).collect();
        v.sort();
        (v, p.total)
    };
    assert_eq!(
        ids(s.list_devices(&failing(true)).await.unwrap()),
        (vec!["e".to_string()], 1)
    );
    assert_eq!(
        ids(s.list_devices(&failing(false)).await.unwrap()).1,
        3,
        "without the filter every device is listed"
    );
    s.record_status_report("e", &report(vec![declaration_state("a", "2", true)]), now())
        .await
        .unwrap();
    assert_eq!(
        ids(s.list_devices(&failing(true)).await.unwrap()),
        (Vec::<String>::new(), 0)
    );
}

/// Several servers on one database: what one server remembers of an enrollment between two
/// exchanges (PostgreSQL's `binding_memo.rs`) never outlives a change another server made.
mod two_servers {
    use super::*;

    conformance!(
        two_servers:
        a_checkout_on_another_server_refuses_the_next_exchange,
        last_seen_written_by_another_server_is_not_overwritten,
        an_inventory_written_by_another_server_is_merged_into,
    );

    /// e1's Idle on server `s` at `at`.
    async fn idle(s: &dyn Store, at: chrono::DateTime<chrono::Utc>) -> Exchanged {
        s.command_exchange(exchange("id-e1", "EID-e1", Channel::Device, None, None, at))
            .await
            .unwrap()
    }

    /// e1 acknowledges `uuid` on server `s` with a result whose inventory digest is `digest`.
    async fn acknowledge(
        s: &dyn Store,
        uuid: &str,
        digest: &'static str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Exchanged {
        let ack = outcome(uuid, "acknowledged");
        let merge = TestMerge::appends(digest);
        s.command_exchange(exchange(
            "id-e1",
            "EID-e1",
            Channel::Device,
            Some(&ack),
            Some(&merge),
            at,
        ))
        .await
        .unwrap()
    }

    /// e1 bound, with `commands` (DeviceInformation) queued, and the first handed out by an
    /// Idle on server `a` at `t`.
    async fn first_handed_out(a: &dyn Store, commands: &[&str], t: chrono::DateTime<chrono::Utc>) {
        bound(a, "e1").await;
        queue_device_information(a, "e1", commands).await;
        assert_eq!(next_uuid(idle(a, t).await).as_deref(), Some(commands[0]));
    }

    /// Then c1's acknowledgement with an inventory on `a`: `a` now knows the row, its digests
    /// and the command it handed out (`c2`).
    async fn two_exchanges(a: &dyn Store, t: chrono::DateTime<chrono::Utc>) {
        first_handed_out(a, &["c1", "c2"], t).await;
        let x = acknowledge(a, "c1", "v1", t + Duration::seconds(1)).await;
        assert_eq!(next_uuid(x).as_deref(), Some("c2"));
    }

    async fn a_checkout_on_another_server_refuses_the_next_exchange(a: &dyn Store, b: &dyn Store) {
        let t = now();
        two_exchanges(a, t).await;
        b.record_checkout("e1", t + Duration::seconds(2))
            .await
            .unwrap();
        // The answer to c2 reaches server `a`, which handed c2 out.
        let x = acknowledge(a, "c2", "v2", t + Duration::seconds(3)).await;
        assert_eq!(x, Exchanged::Refused(IdentityBinding::CheckedOut));
        // Nothing of it was written: one merge (c1's), no result for c2.
        assert_eq!(
            a.inventory("e1").await.unwrap().as_deref(),
            Some("+DeviceInformation")
        );
        let h = a.command_history("e1", 10).await.unwrap();
        assert!(h
            .iter()
            .all(|r| r.command_uuid != "c2" || r.status != CommandState::Acknowledged));
        // Idle too.
        assert_eq!(
            idle(a, t).await,
            Exchanged::Refused(IdentityBinding::CheckedOut)
        );
    }

    async fn last_seen_written_by_another_server_is_not_overwritten(a: &dyn Store, b: &dyn Store) {
        let t = now();
        two_exchanges(a, t).await;
        // Server `b` hears from the device two minutes later (and writes `last_seen_at`, which
        // is written at most once a minute).
        let later = t + Duration::minutes(2);
        assert_eq!(next_uuid(idle(b, later).await).as_deref(), Some("c2"));
        assert_eq!(
            a.enrollment("e1").await.unwrap().unwrap().last_seen_at,
            Some(later)
        );
        // Thirty seconds on, server `a`, which last saw `last_seen_at` at `t`, takes c2's
        // answer: the row it remembers is out of date, so it reads `b`'s `last_seen_at`, which
        // is recent, and leaves it alone; the answer itself is stored once, with its inventory.
        let x = acknowledge(a, "c2", "v2", later + Duration::seconds(30)).await;
        assert_eq!(ignored_of(&x), None);
        assert_eq!(next_uuid(x), None);
        assert_eq!(
            a.enrollment("e1").await.unwrap().unwrap().last_seen_at,
            Some(later)
        );
        assert_eq!(
            b.inventory("e1").await.unwrap().as_deref(),
            Some("+DeviceInformation+DeviceInformation")
        );
    }

    async fn an_inventory_written_by_another_server_is_merged_into(a: &dyn Store, b: &dyn Store) {
        let t = now();
        // Server `a` hands c1 out to an enrollment with no inventory yet...
        first_handed_out(a, &["c1"], t).await;
        // ... server `b` writes one ...
        b.set_inventory("e1", "doc").await.unwrap();
        // ... and c1's answer is merged into it, not into the nothing `a` saw.
        let x = acknowledge(a, "c1", "v1", t + Duration::seconds(1)).await;
        assert_eq!(ignored_of(&x), None);
        assert_eq!(
            b.inventory("e1").await.unwrap().as_deref(),
            Some("doc+DeviceInformation")
        );
    }
}
