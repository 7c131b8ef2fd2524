//! PostgreSQL's exchange remembers, per identity, the enrollment row it last read or wrote, so
//! that the next exchange of that identity can skip the read and go straight to the write.
//!
//! Nothing here decides anything. The identity rule ([`IdentityBinding`]) and the inventory's
//! digests are checked in Rust on the remembered row exactly as on a row just read, and the write
//! happens only while the enrollment is still the version (`xmin`) the memo names: any change to
//! the row, by this process or by another server on the same database (a checkout, a renewal, a
//! rebinding, an inventory written elsewhere), gives it a new version, the write then changes
//! nothing, and the exchange reads the row again. So a memo that is out of date costs one wasted
//! statement, never a wrong answer.
//!
//! Bounded: at most [`MEMO_ENTRIES`] identities, in two generations of half as many: when the
//! newer is full it becomes the older and the older is forgotten, so what goes first is what was
//! put longest ago (a device between two requests of its burst keeps its entry). An exchange
//! takes its identity's entry out while it runs (two requests of one identity at once: the
//! second one reads).
//!
//! [`IdentityBinding`]: crate::IdentityBinding

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::Channel;

/// At most this many identities are remembered. An entry is needed only for the seconds of a
/// device's burst of requests, and holds about 0.9 KiB with its share of the table (measured:
/// 4,096 entries raised the resident memory at the end of a 10,000-device fan-out by 3.8 MiB).
pub(crate) const MEMO_ENTRIES: usize = 1024;

/// An enrollment row as the exchange last saw it, at `version`.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub id: String,
    pub status: String,
    pub bound: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The inventory's digests.
    pub digests: Option<String>,
    /// The enrollment has no inventory document (a merge starts from nothing, unread).
    pub no_inventory: bool,
    /// The row's `xmin`.
    pub version: String,
    /// What the exchange handed out last.
    pub handed_out: Option<HandedOut>,
}

/// A command an exchange handed out: where, which, and the queue row it was handed out from.
#[derive(Debug, Clone)]
pub(crate) struct HandedOut {
    pub channel: Channel,
    pub command_uuid: String,
    pub request_type: String,
    /// The row's `id` in `command_queue`: the acknowledgement finds its row by it, whatever
    /// else the device has queued.
    pub queue_row: i64,
}

impl Seen {
    /// The request type of the command `uuid` an acknowledgement on `channel` reports, when it
    /// is the one this entry handed out.
    pub(crate) fn request_type_of(&self, channel: Channel, uuid: Option<&str>) -> Option<&str> {
        self.handed_out_as(channel, uuid)
            .map(|h| h.request_type.as_str())
    }

    /// The command this entry handed out, when it is the one `uuid` on `channel` answers.
    pub(crate) fn handed_out_as(&self, channel: Channel, uuid: Option<&str>) -> Option<&HandedOut> {
        match (&self.handed_out, uuid) {
            (Some(h), Some(uuid)) if h.channel == channel && h.command_uuid == uuid => Some(h),
            _ => None,
        }
    }

    /// Whether an exchange can run on this entry without reading the row: one that merges an
    /// inventory needs the reported command's request type.
    pub(crate) fn serves(
        &self,
        want_inventory: bool,
        channel: Channel,
        uuid: Option<&str>,
    ) -> bool {
        !want_inventory || self.request_type_of(channel, uuid).is_some()
    }
}

/// The remembered rows, by identity (SHA-256 hex of its certificate).
#[derive(Debug, Default)]
pub(crate) struct BindingMemo {
    rows: Mutex<Generations>,
}

/// The entries put since the last turn, and those of the turn before.
#[derive(Debug, Default)]
struct Generations {
    newer: HashMap<String, Seen>,
    older: HashMap<String, Seen>,
}

impl BindingMemo {
    fn rows(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while the lock was held left at worst a stale entry, which the version check
        // makes harmless.
        self.rows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `identity`'s entry out, if there is one.
    pub(crate) fn take(&self, identity: &str) -> Option<Seen> {
        let mut rows = self.rows();
        rows.newer
            .remove(identity)
            .or_else(|| rows.older.remove(identity))
    }

    /// Remembers `seen` for `identity`; when the newer generation is full, the older one is
    /// forgotten.
    pub(crate) fn put(&self, identity: &str, seen: Seen) {
        let mut rows = self.rows();
        let mut forgotten = None;
        if rows.newer.len() >= MEMO_ENTRIES / 2 {
            let newer = std::mem::take(&mut rows.newer);
            forgotten = Some(std::mem::replace(&mut rows.older, newer));
        }
        rows.newer.insert(identity.to_owned(), seen);
        drop(rows);
        // Freed outside the lock.
        drop(forgotten);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let rows = self.rows();
        rows.newer.len() + rows.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(handed_out: Option<(Channel, &str, &str)>) -> Seen {
        Seen {
            id: "e1".into(),
            status: "enrolled".into(),
            bound: Some("EID".into()),
            last_seen: None,
            digests: None,
            no_inventory: true,
            version: "7".into(),
            handed_out: handed_out.map(|(channel, u, rt)| HandedOut {
                channel,
                command_uuid: u.to_owned(),
                request_type: rt.to_owned(),
                queue_row: 42,
            }),
        }
    }

    #[test]
    fn an_inventory_merge_needs_the_digests_and_the_command_it_handed_out() {
        let out = Some((Channel::Device, "c1", "DeviceInformation"));
        let s = seen(out);
        assert!(s.serves(false, Channel::User, None));
        assert!(s.serves(true, Channel::Device, Some("c1")));
        assert_eq!(
            s.request_type_of(Channel::Device, Some("c1")),
            Some("DeviceInformation")
        );
        assert_eq!(
            s.handed_out_as(Channel::Device, Some("c1"))
                .map(|h| h.queue_row),
            Some(42)
        );
        assert!(s.handed_out_as(Channel::User, Some("c1")).is_none());
        // Another command, another channel, no command: the row is read.
        assert!(!s.serves(true, Channel::Device, Some("c2")));
        assert!(!s.serves(true, Channel::User, Some("c1")));
        assert!(!s.serves(true, Channel::Device, None));
        // Nothing handed out: the row is read.
        assert!(!seen(None).serves(true, Channel::Device, Some("c1")));
    }

    #[test]
    fn taken_once_and_bounded() {
        let memo = BindingMemo::default();
        memo.put("a", seen(None));
        assert!(memo.take("a").is_some());
        assert!(memo.take("a").is_none());
        for i in 0..3 * MEMO_ENTRIES + 10 {
            memo.put(&format!("id-{i}"), seen(None));
            assert!(memo.len() <= MEMO_ENTRIES);
        }
        // The last half put are all kept; the oldest went first.
        for i in 2 * MEMO_ENTRIES + 10 + MEMO_ENTRIES / 2..3 * MEMO_ENTRIES + 10 {
            assert!(memo.take(&format!("id-{i}")).is_some(), "id-{i}");
        }
        assert!(memo.take("id-0").is_none());
    }
}
