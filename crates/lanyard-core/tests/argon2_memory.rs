#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! A password check's argon2 working memory (19 MiB with the default parameters) is returned to
//! the system when the check ends, and checking passwords does not make the allocator keep later
//! medium-sized allocations (see `users::with_argon2_memory`). Alone in its test binary: it
//! reads the process's resident memory, which other tests running beside it would change.
#![cfg(target_os = "linux")]

use lanyard_core::users::{hash_password, verify_password};

/// Private resident memory (heap, stacks) of this process, KiB.
fn anonymous_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Eight threads each allocate ten 1 MiB blocks and free them, keeping small ones.
fn medium_allocations() {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let medium: Vec<Vec<u8>> = (0..10).map(|_| vec![1u8; 1 << 20]).collect();
                let small: Vec<Vec<u8>> = (0..10).map(|_| vec![1u8; 1000]).collect();
                drop(medium);
                small.len()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn password_checks_leave_no_memory_behind() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        medium_allocations();
        let before = anonymous_kib();
        let hash = hash_password("correct horse battery").await.unwrap();
        for _ in 0..5 {
            let hash = hash.clone();
            let ok = tokio::task::spawn_blocking(move || {
                verify_password("correct horse battery", &hash)
            })
            .await
            .unwrap();
            assert!(ok);
        }
        let after_checks = anonymous_kib();
        medium_allocations();
        let after_medium = anonymous_kib();
        // One kept 19 MiB memory, or 1 MiB blocks left in malloc's arenas, would show as tens
        // of MiB here.
        for (what, kib) in [
            ("checks", after_checks),
            ("medium allocations", after_medium),
        ] {
            assert!(
                kib < before + 8 * 1024,
                "after the {what}: {kib} KiB resident, {before} KiB before the first check"
            );
        }
    });
}
