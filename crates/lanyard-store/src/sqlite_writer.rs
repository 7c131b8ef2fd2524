//! SQLite's command exchange on its own writer thread, with group commit.
//!
//! sqlx runs every SQLite statement on its connection's worker thread, so an exchange of five
//! or six statements costs as many thread hops (a futex wake each way). Here one thread owns one
//! rusqlite connection (the same bundled SQLite library sqlx links) and runs a whole exchange
//! from one message: the request's task sends it over a channel and awaits one reply.
//!
//! Group commit: the thread takes every exchange that is waiting and runs them in ONE
//! transaction with one commit. Each exchange keeps its own all-or-nothing semantics inside it:
//! when one fails, the group runs again with a `SAVEPOINT` per exchange, and the failing one is
//! rolled back alone, so one failure does not undo the others (see [`run_group`]); replies go
//! out only after the commit. Durability is SQLite's WAL with
//! `synchronous=NORMAL`, as for every other write: a crash may lose the last group, never
//! corrupt the database, and an acknowledgement that was lost hands its command out again (the
//! claim finds it still queued).
//!
//! Checkpoints: the writer's connection does not checkpoint inside its commits
//! (`wal_autocheckpoint=0`); a second thread with its own connection runs a PASSIVE checkpoint
//! every [`SqliteWal::checkpoint_every`] when anything was written since the last one.
//!
//! The log's length: a checkpoint copies the log's pages into the database file, but SQLite
//! starts the log file over from its beginning only when a transaction begins while every
//! frame of it has been copied (and no reader still reads from it). Under a steady stream of
//! exchanges the background checkpoint never finds that moment — the writer has always
//! committed again — so the log grew for as long as the stream lasted: a 10,000-device fan-out
//! left a 376 MB log beside a 33 MB database, every frame of it a file extension, and the
//! shared-memory index of the log grew with it. So when the background checkpoint finds the
//! log [`SqliteWal::restart_after_frames`] frames long or longer, it asks the writer thread to
//! checkpoint too, between two groups: nothing is written meanwhile, so that checkpoint copies
//! the few frames written since the background one and leaves the log fully copied, and the
//! writer's next transaction starts it over (SQLite's `walRestartLog`). Its commit truncates a
//! log file that grew past [`LOG_SIZE_LIMIT`] back to that size (`journal_size_limit`).
//! Neither checkpoint waits for anybody (PASSIVE): a reader that still reads an old frame only
//! defers the start-over to a later round.
//!
//! Other writes still go through sqlx's pool; both sides wait for SQLite's write lock with a busy
//! timeout, and the writer holds it only while it runs one group.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, ToSql};

use crate::exchange::{
    merge_due, merged, repeat_or_never, CommandExchange, Exchanged, IdentityBinding, IgnoredResult,
    SQL_BINDING, SQL_DEQUEUE, SQL_FINISHING, SQL_HAND_OUT, SQL_INVENTORY, SQL_LAST_SEEN,
    SQL_NEXT_DUE, SQL_NOT_NOW, SQL_REACTIVATE, SQL_READ_INVENTORY, SQL_REPEATED, SQL_RESULT,
};
use crate::{CommandUuid, EnrollmentStatus, NextCommand, Result, SqliteWal, StoreError};

/// How long SQLite waits for its write lock held by another connection (as sqlx's pool).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many exchanges share one transaction.
const MAX_GROUP: usize = 256;

/// The size a log file that has grown larger is cut back to when the log starts over
/// (`journal_size_limit`). Larger than the log grows between two background checkpoints under
/// a heavy load, so that in a steady state the file is written over in place, not cut and
/// extended again.
const LOG_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The writer thread's handle: [`SqliteWriter::close`] (or dropping the last clone) ends the
/// thread after the group it is running, and with it the checkpoint thread.
pub(crate) struct SqliteWriter {
    jobs: mpsc::Sender<Msg>,
}

/// What the writer thread is asked: an exchange, or to close.
enum Msg {
    Exchange(Job),
    /// Close both connections (the checkpointer's first, so that the writer's is the last),
    /// then answer.
    Close(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

struct Job {
    x: CommandExchange,
    reply: tokio::sync::oneshot::Sender<Result<Exchanged>>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer thread has stopped".into())
}

impl SqliteWriter {
    /// Opens the writer's connection (and the checkpointer's) on the database file at `path`,
    /// which sqlx has opened (and created) already.
    pub(crate) async fn start(path: &Path, wal: SqliteWal) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Msg>();
        let (ready, opened) = tokio::sync::oneshot::channel::<Result<()>>();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("lanyard-sqlite-writer".into())
            .spawn(move || {
                let conn = match open(&path, true) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let log = Arc::new(LogState::default());
                let (stop, stopping) = mpsc::channel::<()>();
                let checkpointer = match open(&path, false) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let seen = log.clone();
                let spawned = std::thread::Builder::new()
                    .name("lanyard-sqlite-checkpoint".into())
                    .spawn(move || checkpoints(checkpointer, &seen, wal, &stopping));
                let checkpoint_thread = match spawned {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = ready.send(Err(StoreError::Unavailable(format!(
                            "cannot start the SQLite checkpoint thread: {e}"
                        ))));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                let closing = serve(&conn, &queue, &log);
                drop(stop);
                let _ = checkpoint_thread.join();
                // Everything in the log is copied into the database file and the log emptied,
                // so that the file alone holds every write (a copy of it is a backup). The
                // last connection to close then removes the log; it is this one when the read
                // pool closed before, as `SqliteStore::close` does, but sqlx's pool can report
                // itself closed while one of its connection threads is still closing, and
                // the log would then stay, unmerged, when the process ends (seen: one stop in
                // about forty). A failure (a reader still reading) leaves the log for the
                // next open, which replays it.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                drop(conn);
                if let Some(done) = closing {
                    let _ = done.send(());
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite writer thread: {e}"))
            })?;
        opened.await.map_err(|_| stopped())??;
        Ok(Self { jobs })
    }

    /// Runs one exchange on the writer thread and waits for its group's commit.
    pub(crate) async fn exchange(&self, x: CommandExchange) -> Result<Exchanged> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Msg::Exchange(Job { x, reply }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Ends the writer thread after the group it is running and closes its connections;
    /// returns once they are closed. Exchanges sent afterwards fail as "stopped".
    pub(crate) async fn close(&self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        if self.jobs.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// A read-write connection with the store's settings; the writer's does not checkpoint by
/// itself.
fn open(path: &Path, writer: bool) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(if writer {
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0;"
    } else {
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
    })?;
    if writer {
        conn.pragma_update(None, "journal_size_limit", LOG_SIZE_LIMIT)?;
    }
    conn.pragma_update(
        None,
        "cache_size",
        format!("-{}", crate::connect::SQLITE_PAGE_CACHE_KIB),
    )?;
    Ok(conn)
}

/// What the writer thread and the checkpoint thread tell each other about the log.
#[derive(Default)]
struct LogState {
    /// Something was committed since the last background checkpoint.
    dirty: AtomicBool,
    /// The log is long: the writer checkpoints between two groups, so that the log starts
    /// over at its next transaction.
    start_over: AtomicBool,
}

/// A PASSIVE checkpoint (never waits for readers or the writer); the log's length in frames.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

/// The checkpoint thread: a [`background_round`] every [`SqliteWal::checkpoint_every`], until
/// the writer thread ends.
fn checkpoints(conn: Connection, log: &LogState, wal: SqliteWal, stopping: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopping.recv_timeout(wal.checkpoint_every) {
        background_round(&conn, log, wal);
    }
}

/// A PASSIVE checkpoint when something was committed since the last one; asks the writer to
/// start the log over when it is long.
fn background_round(conn: &Connection, log: &LogState, wal: SqliteWal) {
    if log.dirty.swap(false, Ordering::Relaxed) {
        match checkpoint(conn) {
            Ok(frames) => {
                if frames >= i64::from(wal.restart_after_frames) {
                    log.start_over.store(true, Ordering::Relaxed);
                }
            }
            // A failure (the database busy in a way PASSIVE does not wait out) is retried at
            // the next tick.
            Err(_) => log.dirty.store(true, Ordering::Relaxed),
        }
    }
}

/// On the writer thread between two groups: when asked, a checkpoint. Nothing is written
/// meanwhile, so it leaves the log fully copied and the next group's transaction starts the
/// log over. A failure leaves the log as it is; the next background round asks again.
fn between_groups(conn: &Connection, log: &LogState) {
    if log.start_over.swap(false, Ordering::Relaxed) {
        let _ = checkpoint(conn);
    }
}

/// The writer loop: waits for an exchange, takes every other one already waiting, and runs
/// them as one group; checkpoints between two groups when the log is long. Returns when asked
/// to close (with whom to answer once closed) or when every handle is gone.
fn serve(
    conn: &Connection,
    queue: &mpsc::Receiver<Msg>,
    log: &LogState,
) -> Option<tokio::sync::oneshot::Sender<()>> {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut closing = None;
    while closing.is_none() {
        match queue.recv() {
            Ok(Msg::Exchange(job)) => group.push(job),
            Ok(Msg::Close(done)) => return Some(done),
            Err(_) => return None,
        }
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(Msg::Exchange(job)) => group.push(job),
                Ok(Msg::Close(done)) => {
                    // The exchanges taken already run first.
                    closing = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        let results = run_group(conn, &group);
        log.dirty.store(true, Ordering::Relaxed);
        for (job, result) in group.drain(..).zip(results) {
            // The requester may have gone (its request was cancelled): the exchange stands,
            // and an unanswered command is handed out again at the next poll.
            let _ = job.reply.send(result);
        }
        // After the replies, so that no answer waits for it.
        between_groups(conn, log);
    }
    closing
}

/// One group in one transaction. When the transaction itself cannot begin or commit, every
/// exchange of the group gets that error (nothing of the group was stored).
///
/// The exchanges first run one after the other with nothing between them. A savepoint per
/// exchange would cost two more statements each and a copy of every page it changes into
/// SQLite's statement journal, for the rare exchange that fails (an inventory too large to keep,
/// a database error). When one does fail, the whole transaction is rolled back and the group
/// runs again with each exchange inside its own savepoint, so that the failure undoes only its
/// own writes. Each exchange carries its time in its message, so the second run decides every
/// exchange as the first did.
fn run_group(conn: &Connection, group: &[Job]) -> Vec<Result<Exchanged>> {
    let all_fail = |e: rusqlite::Error| {
        let text = e.to_string();
        group
            .iter()
            .map(|_| Err(StoreError::Unavailable(format!("SQLite: {text}"))))
            .collect()
    };
    if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
        return all_fail(e);
    }
    let mut results = Vec::with_capacity(group.len());
    let mut failed = None;
    for job in group {
        match exchange(conn, &job.x) {
            Ok(done) => results.push(Ok(done)),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        // A database error may have ended the transaction already; then there is nothing to
        // roll back, and the new transaction below begins as usual.
        let _ = run(conn, "ROLLBACK");
        if group.len() == 1 {
            return vec![Err(e)];
        }
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            return all_fail(e);
        }
        results = match each_in_a_savepoint(conn, group) {
            Ok(results) => results,
            Err(e) => {
                let _ = run(conn, "ROLLBACK");
                return all_fail(e);
            }
        };
    }
    match run(conn, "COMMIT") {
        Ok(()) => results,
        Err(e) => {
            let _ = run(conn, "ROLLBACK");
            all_fail(e)
        }
    }
}

/// The group again, inside the open transaction, each exchange inside its own savepoint: one
/// that fails is rolled back alone. An error of the savepoints themselves is the group's.
fn each_in_a_savepoint(
    conn: &Connection,
    group: &[Job],
) -> rusqlite::Result<Vec<Result<Exchanged>>> {
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        run(conn, "SAVEPOINT exchange")?;
        let result = exchange(conn, &job.x);
        if result.is_err() {
            run(conn, "ROLLBACK TO exchange")?;
        }
        run(conn, "RELEASE exchange")?;
        results.push(result);
    }
    Ok(results)
}

/// Runs a statement without parameters or rows (kept prepared).
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(|_| ())
}

/// `$1`…`$10`, the parameter names the statements use.
const PARAMS: [&str; 10] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10"];

/// A prepared statement with `args` bound to `$1`, `$2`, … (by name: SQLite numbers named
/// parameters in the order they first appear, not by their digits).
fn statement<'c>(
    conn: &'c Connection,
    sql: &str,
    args: &[&dyn ToSql],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(sql)?;
    for (name, arg) in PARAMS.iter().zip(args) {
        if let Some(i) = stmt.parameter_index(name)? {
            stmt.raw_bind_parameter(i, *arg)?;
        }
    }
    Ok(stmt)
}

/// The first row of `sql` with `args` bound, read by `read`; `None` when there is none.
fn first_row<T>(
    conn: &Connection,
    sql: &str,
    args: &[&dyn ToSql],
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut stmt = statement(conn, sql, args)?;
    let mut rows = stmt.raw_query();
    rows.next()?.map(read).transpose()
}

/// A timestamp as sqlx stores it in SQLite (RFC 3339, `+00:00`), so both write and compare
/// alike.
fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The exchange (the same statements and rules as PostgreSQL's, `exchange.rs`).
fn exchange(conn: &Connection, x: &CommandExchange) -> Result<Exchanged> {
    let want_inventory = x.wants_inventory();
    let binding = first_row(
        conn,
        &SQL_BINDING,
        &[&x.identity_sha256, &want_inventory],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, bool>(5)?,
            ))
        },
    )?;
    let Some((id, status, bound, last_seen, digests, renewed)) = binding else {
        return Ok(Exchanged::UnknownIdentity);
    };
    match IdentityBinding::check(&status, bound.as_deref(), &x.device_channel_id) {
        IdentityBinding::Bound => {}
        refused => return Ok(Exchanged::Refused(refused)),
    }
    let now = time(x.now);
    if renewed {
        statement(
            conn,
            crate::enrollments::PROMOTE_NEXT_IDENTITY,
            &[&x.identity_sha256, &now],
        )?
        .raw_execute()?;
    }
    if status == EnrollmentStatus::Inactive.as_str() {
        statement(conn, &SQL_REACTIVATE, &[&id])?.raw_execute()?;
    }
    let channel = x.channel.as_str();
    let mut ignored = None;
    let not_now = x.not_now();
    if let Some(o) = &x.outcome {
        let uuid = o.command_uuid.as_str();
        if not_now {
            let until = time(o.retry_after.unwrap_or(x.now));
            let done =
                statement(conn, SQL_NOT_NOW, &[&id, &channel, &uuid, &until])?.raw_execute()?;
            if done == 0 {
                ignored = Some(IgnoredResult::NeverGiven);
            }
        } else {
            let finished = first_row(conn, SQL_FINISHING, &[&id, &channel, &uuid], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Value>(1)?,
                    r.get::<_, Value>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            if let Some((row, queued_at, sent_at, request_type)) = finished {
                let Some(request_type) = request_type else {
                    return Err(StoreError::NotFound(format!("command {uuid}")));
                };
                statement(conn, SQL_DEQUEUE, &[&row])?.raw_execute()?;
                statement(
                    conn,
                    SQL_RESULT,
                    &[
                        &id,
                        &channel,
                        &uuid,
                        &request_type,
                        &o.status.as_str(),
                        &o.result,
                        &o.error_chain,
                        &queued_at,
                        &sent_at,
                        &now,
                    ],
                )?
                .raw_execute()?;
                if let (true, Some(merge)) = (want_inventory, &x.inventory) {
                    let merge = merge.as_ref();
                    if let Some(digest) = merge_due(merge, &request_type, digests.as_deref()) {
                        let current: Option<String> =
                            first_row(conn, SQL_READ_INVENTORY, &[&id], |r| r.get(0))?.flatten();
                        let (document, digests) = merged(
                            merge,
                            &request_type,
                            current.as_deref(),
                            &digest,
                            digests.as_deref(),
                        )?;
                        statement(conn, SQL_INVENTORY, &[&id, &document, &digests])?
                            .raw_execute()?;
                    }
                }
            } else {
                let repeated =
                    first_row(conn, SQL_REPEATED, &[&id, &channel, &uuid], |_| Ok(()))?.is_some();
                ignored = Some(repeat_or_never(repeated));
            }
        }
    }
    if x.last_seen_is_stale(last_seen.as_deref().and_then(parse_time)) {
        statement(conn, SQL_LAST_SEEN, &[&id, &now])?.raw_execute()?;
    }
    let next = if not_now {
        None
    } else {
        let due = first_row(conn, SQL_NEXT_DUE, &[&id, &channel, &now], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                NextCommand {
                    command_uuid: CommandUuid(r.get(1)?),
                    request_type: r.get(2)?,
                    payload: r.get(3)?,
                },
            ))
        })?;
        match due {
            None => None,
            Some((row, next)) => {
                statement(conn, SQL_HAND_OUT, &[&row, &now])?.raw_execute()?;
                Some(next)
            }
        }
    };
    Ok(Exchanged::Done {
        enrollment_id: id,
        next,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many times the log at `path` started over: its header's checkpoint sequence number.
    fn starts_over(path: &Path) -> u32 {
        let header = std::fs::read(format!("{}-wal", path.display())).unwrap_or_default();
        header
            .get(12..16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes)
    }

    fn commit(conn: &Connection) {
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (randomblob(3000)); COMMIT;")
            .unwrap();
    }

    /// 40 rounds of the race below: the background round runs inside the writer's
    /// transaction; after the commit, the writer's work between two groups, then its next
    /// transaction.
    fn race(writer: &Connection, background: &Connection, log: &LogState, wal: SqliteWal) {
        for _ in 0..40 {
            writer
                .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (randomblob(3000));")
                .unwrap();
            log.dirty.store(true, Ordering::Relaxed);
            background_round(background, log, wal);
            writer.execute_batch("COMMIT;").unwrap();
            between_groups(writer, log);
            assert!(
                !log.start_over.load(Ordering::Relaxed),
                "the writer took the request"
            );
            commit(writer);
        }
    }

    /// The race the writer's checkpoint is for, played in one order: the background
    /// checkpoint always runs while the writer is inside a transaction, so when the writer
    /// begins its next one the log is never fully copied and never starts over, however long
    /// it grows. Once the background round asks, the writer's checkpoint between two groups
    /// lets the next transaction start it over.
    #[test]
    fn the_writer_starts_a_long_log_over() {
        let dir = std::env::temp_dir().join(format!("lanyard-log-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x BLOB);")
            .unwrap();
        let writer = open(&path, true).unwrap();
        let background = open(&path, false).unwrap();
        let log = LogState::default();
        let wal = SqliteWal {
            checkpoint_every: Duration::from_millis(1),
            restart_after_frames: 16,
        };
        commit(&writer);
        let before = starts_over(&path);
        race(&writer, &background, &log, wal);
        let restarted = starts_over(&path) - before;
        assert!(restarted >= 2, "the log started over {restarted} times");

        // Without the writer's checkpoint (the background round never asks), the same race
        // never starts the log over.
        let never = SqliteWal {
            restart_after_frames: u32::MAX,
            ..wal
        };
        // A commit first: whatever the last round left, the log is not fully copied now.
        commit(&writer);
        let before = starts_over(&path);
        race(&writer, &background, &log, never);
        assert_eq!(
            starts_over(&path),
            before,
            "no start-over without the writer"
        );
        let frames = checkpoint(&background).unwrap();
        assert!(frames > 80, "the log is {frames} frames long");
        drop((writer, background));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
