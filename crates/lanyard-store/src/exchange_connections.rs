//! PostgreSQL connections the command exchange keeps between its requests.
//!
//! sqlx's pool checks a connection with a round trip to PostgreSQL (a `Sync`, answered by
//! `ReadyForQuery`) every time one goes back to the pool, on a task it spawns for it, because a
//! request cut short may have left the connection in the middle of a statement. The exchange is
//! one statement per request most of the time, so that check doubled its round trips to the
//! database and added a task and a wake-up to every request (docs/BENCHMARKS.md, "tenth
//! round").
//!
//! The exchange therefore keeps up to [`KEPT`] connections it took from the pool and hands them
//! to its next requests itself. A connection is kept only after an exchange that **finished**:
//! every statement it sent was answered and no error came ([`InUse::finished`]). An exchange
//! that failed, or whose request was dropped half-way, gives its connection back to sqlx, which
//! checks it (and closes it when it is broken) as it always did.
//!
//! A kept connection idle for [`CHECK_AFTER`] or longer is checked with the same round trip
//! before it is used (a database restarted meanwhile costs no request), and one idle for
//! [`GIVE_BACK_AFTER`] goes back to the pool instead (sqlx then closes it when the pool's own
//! idle timeout says so). A busy server uses its kept connections without a check: one that
//! broke within the last [`CHECK_AFTER`] fails its request with the database's error, which the
//! device retries, and is not kept.
//!
//! The kept connections count against the pool's size: the pool is sized for them
//! ([`KEPT`] more than it would be otherwise, `connect.rs`).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};

use crate::Result;

/// At most this many connections are kept (LIFO: the most recently used first).
pub(crate) const KEPT: usize = 4;

/// A connection idle this long is checked before use.
pub(crate) const CHECK_AFTER: Duration = Duration::from_secs(1);

/// A connection idle this long goes back to the pool instead of being used.
const GIVE_BACK_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct ExchangeConnections {
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// Set by [`close`](Self::close): nothing is kept any more (the pool's close waits for
    /// every connection taken from it).
    closed: AtomicBool,
}

impl ExchangeConnections {
    /// A kept connection, checked when it was idle a while, or one from the pool.
    pub(crate) async fn acquire<'a>(&'a self, pool: &PgPool) -> Result<InUse<'a>> {
        loop {
            let kept = match self.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(_) => None,
            };
            let Some((mut conn, since)) = kept else { break };
            let idle_for = since.elapsed();
            if idle_for >= GIVE_BACK_AFTER {
                // Dropped: back to the pool (sqlx checks it there); the older ones too.
                drop(conn);
                self.give_back_all();
                break;
            }
            if idle_for >= CHECK_AFTER && conn.ping().await.is_err() {
                // Broken: closed by sqlx without being returned; try the next.
                conn.close_on_drop();
                continue;
            }
            return Ok(self.in_use(conn));
        }
        let conn = pool.acquire().await?;
        Ok(self.in_use(conn))
    }

    fn in_use(&self, conn: PoolConnection<Postgres>) -> InUse<'_> {
        InUse { conn, home: self }
    }

    fn give_back_all(&self) {
        let all = match self.idle.lock() {
            Ok(mut idle) => std::mem::take(&mut *idle),
            Err(_) => Vec::new(),
        };
        drop(all);
    }

    /// Gives every kept connection back to the pool and keeps none from now on (before the
    /// pool closes).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.give_back_all();
    }

    /// How many connections are kept now.
    pub(crate) fn kept(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

impl std::fmt::Debug for ExchangeConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeConnections")
            .field("kept", &self.kept())
            .finish()
    }
}

/// A connection the exchange is using. Dropped, it goes back to sqlx's pool, which checks it;
/// [`finished`](Self::finished), it is kept for the next exchange.
pub(crate) struct InUse<'a> {
    conn: PoolConnection<Postgres>,
    home: &'a ExchangeConnections,
}

impl InUse<'_> {
    /// Every statement sent on the connection was answered without an error: keep it (unless
    /// [`KEPT`] are kept already).
    pub(crate) fn finished(self) {
        let InUse { conn, home } = self;
        if let Ok(mut idle) = home.idle.lock() {
            if idle.len() < KEPT && !home.closed.load(Ordering::SeqCst) {
                idle.push((conn, Instant::now()));
            }
        }
    }
}

impl Deref for InUse<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for InUse<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}
