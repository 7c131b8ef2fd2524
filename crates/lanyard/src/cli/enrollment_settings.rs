//! `lanyard settings`: the enrollment settings.

use anyhow::Result;
use clap::Subcommand;

use lanyard_core::settings::{SettingsPatch, SETTING_KEYS};
use lanyard_core::Actor;

use super::{print_json, print_table, OutputArgs};
use crate::setup::Opened;

#[derive(Debug, Subcommand)]
pub enum SettingsCmd {
    /// Show the enrollment settings.
    Show {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Change one setting: ownership-mode (prompt|employee), manage-only-corporate-resources,
    /// use-email-as-managed-apple-id (true|false), min-macos-version (e.g. 15.2),
    /// managed-domains (comma-separated), install-trust-profile (auto|always|never),
    /// inactive-after-days (0 = never).
    Set { key: String, value: String },
}

pub async fn settings(o: &Opened, cmd: SettingsCmd) -> Result<()> {
    let l = &o.lanyard;
    match cmd {
        SettingsCmd::Show { out } => {
            let s = l.enrollment_settings().await?;
            if out.json {
                return print_json(&s);
            }
            let ownership = serde_json::to_value(s.ownership_mode)?;
            let rows = [
                (
                    "ownership-mode",
                    ownership.as_str().unwrap_or("?").to_string(),
                ),
                (
                    "manage-only-corporate-resources",
                    s.manage_only_corporate_resources.to_string(),
                ),
                (
                    "use-email-as-managed-apple-id",
                    s.use_email_as_managed_apple_id.to_string(),
                ),
                ("min-macos-version", s.min_macos_version.to_string()),
                ("managed-domains", s.managed_domains.join(",")),
                (
                    "install-trust-profile",
                    s.install_trust_profile.as_str().to_string(),
                ),
                ("inactive-after-days", s.inactive_after_days.to_string()),
            ];
            debug_assert_eq!(rows.len(), SETTING_KEYS.len());
            print_table(
                &["setting", "value"],
                rows.into_iter()
                    .map(|(k, v)| vec![k.to_string(), if v.is_empty() { "-".into() } else { v }])
                    .collect(),
            );
        }
        SettingsCmd::Set { key, value } => {
            let patch = SettingsPatch::from_key_value(&key, &value)?;
            l.update_enrollment_settings(&Actor::cli(), patch).await?;
            println!("{key} updated");
        }
    }
    Ok(())
}
