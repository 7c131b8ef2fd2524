//! Read-only listings for the admin portal: summary counts, the searchable and sortable device
//! list with its total, and the audit log by date range. Thin over `ListingStore`; the portal
//! and any API that wants totals call these instead of the store.

use chrono::{DateTime, Duration, Utc};
use lanyard_store::{AuditEntry, AuditSearch, DeviceListQuery, EnrollmentStatus, Paged};

use crate::enrollment::EnrollmentView;
use crate::{Lanyard, Result};

/// How far ahead the summary warns of expiring device identity certificates.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// One row of the summary's enrollment counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeCounts {
    /// "User Enrollment", …
    pub mode: String,
    pub enrolled: i64,
    /// Pending or authenticated (sign-in done, not yet enrolled).
    pub in_progress: i64,
    pub checked_out: i64,
    /// Silent for longer than the `inactive-after-days` setting.
    pub inactive: i64,
    pub total: i64,
}

/// What the portal's summary page shows.
#[derive(Debug, Clone)]
pub struct Summary {
    pub by_mode: Vec<ModeCounts>,
    pub users: i64,
    /// Enrolled devices whose identity certificate expires within [`EXPIRY_WARNING_DAYS`].
    pub expiring: Vec<EnrollmentView>,
}

impl Lanyard {
    pub async fn summary(&self, now: DateTime<Utc>) -> Result<Summary> {
        let mut by_mode: Vec<ModeCounts> = Vec::new();
        for (mode, status, n) in self.store.count_enrollments_by_mode().await? {
            let label = lanyard_store::EnrollmentMode::parse(&mode)
                .map(|m| m.label().to_string())
                .unwrap_or(mode);
            let i = match by_mode.iter().position(|m| m.mode == label) {
                Some(i) => i,
                None => {
                    by_mode.push(ModeCounts {
                        mode: label,
                        enrolled: 0,
                        in_progress: 0,
                        checked_out: 0,
                        inactive: 0,
                        total: 0,
                    });
                    by_mode.len() - 1
                }
            };
            let row = &mut by_mode[i];
            match EnrollmentStatus::parse(&status) {
                Some(EnrollmentStatus::Enrolled) => row.enrolled += n,
                Some(EnrollmentStatus::CheckedOut) => row.checked_out += n,
                Some(EnrollmentStatus::Inactive) => row.inactive += n,
                Some(EnrollmentStatus::Pending | EnrollmentStatus::Authenticated) | None => {
                    row.in_progress += n
                }
            }
            row.total += n;
        }
        let expiring = self
            .store
            .expiring_identities(now + Duration::days(EXPIRY_WARNING_DAYS), 100)
            .await?
            .into_iter()
            .map(EnrollmentView::from)
            .collect();
        Ok(Summary {
            by_mode,
            users: self.store.count_users().await?,
            expiring,
        })
    }

    /// A page of devices with the total that match.
    pub async fn device_list(&self, q: &DeviceListQuery) -> Result<Paged<EnrollmentView>> {
        let p = self.store.list_devices(q).await?;
        Ok(Paged {
            items: p.items.into_iter().map(EnrollmentView::from).collect(),
            total: p.total,
        })
    }

    /// A page of the audit log with the total that match.
    pub async fn search_audit(&self, q: &AuditSearch) -> Result<Paged<AuditEntry>> {
        Ok(self.store.search_audit(q).await?)
    }
}
