//! `lanyard-bench`: the load tool of the command channel (development only; no production
//! crate depends on it). It owns the measurement of enrollment, command round trips, fan-out
//! and the next-command lookup; it drives the server with `lanyard-testkit`'s simulated Mac and
//! must not be depended on by the test kit (which stays free of the domain crates).
//!
//! It starts `lanyard serve` itself (SQLite in a fresh data directory, or a fresh PostgreSQL
//! database) or targets a running server, and measures:
//!
//! - **enrollment** (`--macs N`): N simulated Macs ([`SimMac`]) through the real
//!   account-driven flow (discovery, sign-in pages, signed profile, SCEP with an RSA-2048 key,
//!   check-in), a bounded number at a time — enrollments per second;
//! - **round trips** (`--round-trips M --concurrency C`): M `DeviceInformation` (or
//!   `ProfileList`) commands queued through the admin API, then fetched and acknowledged by the
//!   devices (`Idle` → command → `Acknowledged` + next command → …), C devices at a time —
//!   round trips per second, latency of each signed `PUT /mdm/command` (request → response),
//!   server CPU time and peak RSS;
//! - **fan-out** (`--fanout K`): one command queued for K enrolled devices with one API call
//!   (a filter target), then every device fetches and acknowledges it — seconds from the API
//!   call to the last acknowledgement;
//! - **lookup** (`--lookup-rows R`): the store's next-command lookup
//!   ([`lanyard_store::CommandStore::next_command`]) called directly, in-process, against a fresh database
//!   holding R synthetic enrollments inserted with batch SQL — p50/p99 of the *indexed lookup*
//!   only (no HTTP, TLS or signature check).
//!
//! Real-flow Macs are expensive (two RSA-2048 keys and a SCEP exchange each), so when a phase
//! needs more devices than `--macs`, the tool adds **synthetic** devices: identity certificates
//! issued directly from the server's CA (loaded from the same database with the data
//! directory's `secret.key`) for fresh EC P-256 keys, bound with the store's own enrollment
//! calls (`create_enrollment`, `set_identity`, `record_authenticate`, `record_token_update`).
//! On the wire they behave like the simulated Mac: XML plist reports signed with a detached CMS
//! `Mdm-Signature`. Every result says how many devices were real-flow and how many synthetic.
//!
//! CPU is read from `/proc`: the server process (`utime + stime`), this process (the client),
//! the PostgreSQL processes when they run on this host, and the whole machine. Client and
//! server share the machine's cores; the figures say so.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use lanyard_core::renewal::DEFAULT_IDENTITY_LIFETIME;
use lanyard_core::Lanyard;
use lanyard_pki::{Ca, CertInfo, CertificateIssuer as _, SecretBox};
use lanyard_proto::CommandStatus;
use lanyard_store::{
    Audit, AuthenticateRecord, Backend, Channel as StoreChannel, EnrollmentId, EnrollmentMode,
    NewCommand, NewEnrollment, NewUser, Ownership, PostgresStore, SqliteStore, Store,
    TokenUpdateRecord,
};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Name, X509};
use plist::{Dictionary, Value};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, RngCore as _};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use lanyard_testkit::commands::{parse_command, ServerCommand};
use lanyard_testkit::device;
use lanyard_testkit::scratch_db::ScratchDb;
use lanyard_testkit::serve_output::StartupLines;
use lanyard_testkit::sim::{SimMac, SimOptions, COMMAND_CONTENT_TYPE};
use lanyard_testkit::Channel;

/// The macOS version synthetic devices report.
const SYNTH_OS: &str = "15.2";
/// Their build.
const SYNTH_BUILD: &str = "24C101";
/// Their model.
const SYNTH_MODEL: &str = "Mac14,2";
/// Fewest timed lookups in the lookup phase.
const MIN_LOOKUPS: usize = 10_000;
/// Enrollments per batch `INSERT` in the lookup phase.
const LOOKUP_INSERT_BATCH: i64 = 100_000;
/// Enrollments in the lookup phase's sample (queued through `CommandStore::enqueue_command`).
const LOOKUP_SAMPLE: usize = 10_000;

/// Key type of synthetic devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticKey {
    /// A fresh EC P-256 key per device (cheap to make and to sign with).
    Ec,
    /// One RSA-2048 key shared by every synthetic device (each still has its own certificate):
    /// the server then verifies RSA signatures, as it does for real Macs, at the price of
    /// RSA signing on the client.
    Rsa,
}

/// Command-line options of `lanyard-bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lanyard-bench",
    version,
    about = "Load tool for Lanyard's command channel (development only)"
)]
pub struct BenchArgs {
    /// The `lanyard` binary to start (default: `lanyard` next to this executable).
    #[arg(long, value_name = "FILE")]
    pub lanyard_bin: Option<PathBuf>,
    /// Run the server on PostgreSQL: a URL of an existing database to connect to as an
    /// administrator (e.g. postgres://postgres@127.0.0.1:5432/postgres). A fresh database is
    /// created next to it and dropped at the end. Default: SQLite in a fresh data directory.
    #[arg(long, value_name = "URL", conflicts_with = "server")]
    pub postgres_url: Option<String>,
    /// Target a running server instead of starting one (needs --ca-cert and --token).
    #[arg(long, value_name = "URL", requires_all = ["ca_cert", "token"])]
    pub server: Option<String>,
    /// With --server: the CA certificate to trust (the server's ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// With --server: an admin API token (`lanyard admin create-token`).
    #[arg(long, env = "LANYARD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --server: its data directory (for secret.key), needed for synthetic devices.
    #[arg(long, value_name = "DIR", requires = "server")]
    pub data_dir: Option<PathBuf>,
    /// With --server: its database URL, needed for synthetic devices.
    #[arg(long, value_name = "URL", requires = "server")]
    pub database_url: Option<String>,
    /// With --server: the server's process id, for its CPU time and peak memory.
    #[arg(long, value_name = "PID", requires = "server")]
    pub server_pid: Option<u32>,
    /// The account the real-flow Macs sign in with (created when the tool starts the server).
    #[arg(long, default_value = "bench@example.com")]
    pub email: String,
    /// That account's password.
    #[arg(
        long,
        env = "LANYARD_BENCH_PASSWORD",
        hide_env_values = true,
        default_value = "a long bench password"
    )]
    pub password: String,
    /// The server's organisation (names the synthetic identity certificates).
    #[arg(long, default_value = "Lanyard")]
    pub organization: String,
    /// Simulated Macs to enroll through the real account-driven flow.
    #[arg(long, default_value_t = 0)]
    pub macs: usize,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 4)]
    pub enroll_concurrency: usize,
    /// Commands to queue, fetch and acknowledge in the round-trip phase (0: skip it).
    #[arg(long, default_value_t = 0)]
    pub round_trips: usize,
    /// Devices talking to the server at once (round trips and fan-out).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The command of the round-trip and fan-out phases.
    #[arg(long, default_value = "DeviceInformation",
          value_parser = ["DeviceInformation", "ProfileList"])]
    pub request_type: String,
    /// Enrolled devices the fan-out phase queues one command for (0: skip it).
    #[arg(long, default_value_t = 0)]
    pub fanout: usize,
    /// Synthetic enrollments in the lookup phase's fresh database (0: skip it).
    #[arg(long, default_value_t = 0)]
    pub lookup_rows: usize,
    /// Timed lookups per kind (hit and miss) in the lookup phase (at least 10,000).
    #[arg(long, default_value_t = 20_000)]
    pub lookups: usize,
    /// Key type of synthetic devices.
    #[arg(long, value_enum, default_value = "ec")]
    pub synthetic_key: SyntheticKey,
    /// Also time, in-process, the `Mdm-Signature` work of one request: the device's detached
    /// CMS signature and the server's check of it (`lanyard_pki::verify_detached`), for EC
    /// P-256 and RSA-2048 device keys.
    #[arg(long)]
    pub crypto: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Record the server with `perf record -e cpu-clock -g` during the round trips or the
    /// fan-out's fetch part, into FILE.
    #[arg(long, value_name = "FILE")]
    pub perf: Option<PathBuf>,
    /// Experiment: set `synchronous_commit = off` on the fresh PostgreSQL database (commits
    /// stop waiting for the WAL flush), to see how much the disk's flush latency costs.
    #[arg(long, requires = "postgres_url")]
    pub pg_async_commit: bool,
    /// Keep the data directory and the PostgreSQL database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// LANYARD_LOG of the started server.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// Start the server under this program with these arguments (split on spaces), e.g.
    /// `valgrind --tool=callgrind`: `scripts/symbol-order` records the code a workload runs.
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["server", "ceiling"])]
    pub server_under: Option<String>,
    /// Ceiling mode: run the round-trip and fan-out phases against the ceiling server (TLS, the
    /// `Mdm-Signature` check, the report's plist and a stored command's bytes — no store, no
    /// middleware; see `lanyard_testkit::ceiling`) instead of `lanyard serve`, with synthetic
    /// devices from a CA of its own.
    #[arg(long, conflicts_with_all = ["server", "postgres_url", "macs", "lookup_rows"])]
    pub ceiling: bool,
    /// Internal: be the ceiling server, with the CA, key and command in DIR.
    #[arg(long, value_name = "DIR", hide = true)]
    pub ceiling_serve: Option<PathBuf>,
    /// Internal: commands the ceiling server hands each device.
    #[arg(long, default_value_t = 1, hide = true)]
    pub ceiling_commands: u64,
}

// ---------------------------------------------------------------------------------------------
// Results

/// CPU and wall time of one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds of the `lanyard serve` process (user + system), when known.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of this process (the simulated devices and the tool).
    pub client_cpu_s: Option<f64>,
    /// CPU seconds of local PostgreSQL processes (PostgreSQL runs only).
    pub db_cpu_s: Option<f64>,
    /// Busy share of all the machine's cores over the phase, percent.
    pub machine_busy_pct: Option<f64>,
    /// Context switches of the server's threads (voluntary + involuntary).
    pub server_context_switches: Option<u64>,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(mut micros: Vec<u64>) -> Latency {
        if micros.is_empty() {
            return Latency::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((micros.len() as f64) * q).ceil() as usize;
            micros[i.clamp(1, micros.len()) - 1] as f64 / 1000.0
        };
        Latency {
            count: micros.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Devices a phase used.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceMix {
    /// Enrolled through the real account-driven flow.
    pub real_flow: usize,
    /// Synthetic: identity issued directly from the CA, bound through the store.
    pub synthetic: usize,
}

/// The enrollment phase.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentResult {
    /// Macs enrolled.
    pub macs: usize,
    /// Enrollments in flight at once.
    pub concurrency: usize,
    /// Enrollments per second (wall clock, client key generation included).
    pub per_second: f64,
    /// Time of one whole enrollment (new Mac to last check-in).
    pub latency: Latency,
    /// CPU split.
    pub cpu: CpuUse,
}

/// Making synthetic devices.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticResult {
    /// Devices made.
    pub devices: usize,
    /// Key type.
    pub key: SyntheticKey,
    /// Seconds issuing certificates from the CA (client side, all cores).
    pub issue_s: f64,
    /// Seconds binding them through the store (4 statements each).
    pub bind_s: f64,
}

/// The round-trip phase.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTripResult {
    /// The command.
    pub request_type: String,
    /// Commands acknowledged (round trips).
    pub round_trips: u64,
    /// Signed `PUT /mdm/command` requests (one per round trip, plus each device's first Idle).
    pub requests: u64,
    /// Devices talking at once.
    pub concurrency: usize,
    /// Devices used.
    pub devices: DeviceMix,
    /// API calls that queued the commands.
    pub enqueue_calls: usize,
    /// Seconds the queueing took (not part of the round-trip figures).
    pub enqueue_s: f64,
    /// Round trips per second over the whole phase.
    pub per_second: f64,
    /// Round trips per second while every worker was busy (before the first ran out of work).
    pub steady_per_second: f64,
    /// Latency of one request (request → response: the acknowledgement of one command and the
    /// next command back).
    pub latency: Latency,
    /// Round trips that were not `Acknowledged`, or failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Server CPU milliseconds per round trip.
    pub server_cpu_ms_per_round_trip: Option<f64>,
    /// Client CPU milliseconds per round trip.
    pub client_cpu_ms_per_round_trip: Option<f64>,
    /// Server context switches per round trip.
    pub server_switches_per_round_trip: Option<f64>,
    /// The server's profile over the round trips (with --perf).
    pub server_profile: Vec<ProfileShare>,
    /// CPU split.
    pub cpu: CpuUse,
}

/// The fan-out phase.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    /// Devices targeted by the one API call.
    pub targets: u64,
    /// Devices that fetched and acknowledged the command.
    pub acknowledged: u64,
    /// Devices used.
    pub devices: DeviceMix,
    /// Devices talking at once.
    pub concurrency: usize,
    /// Seconds of the one API call (queueing for every target).
    pub queue_s: f64,
    /// Seconds from the end of the API call to the last acknowledgement.
    pub fetch_s: f64,
    /// Seconds from the API call to the last acknowledgement.
    pub total_s: f64,
    /// Devices per second in the fetch part.
    pub devices_per_second: f64,
    /// Devices that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// CPU split (API call and fetching).
    pub cpu: CpuUse,
    /// Where the server spent its CPU in the fetch part (with `--perf`).
    pub server_profile: Vec<ProfileShare>,
}

/// The lookup phase.
#[derive(Debug, Clone, Serialize)]
pub struct LookupResult {
    /// What is measured.
    pub measures: String,
    /// Backend.
    pub backend: String,
    /// Enrollments stored.
    pub enrollments: usize,
    /// Rows in the live command queue.
    pub queue_rows: u64,
    /// Seconds inserting the enrollments and queue rows (batch SQL).
    pub insert_s: f64,
    /// Lookups of enrollments with a command due (`UPDATE … RETURNING`, then the command row).
    pub hit: Latency,
    /// Lookups of enrollments with nothing due.
    pub miss: Latency,
    /// Lookups per second with `concurrency` tasks (hits and misses alternating).
    pub concurrent_per_second: f64,
    /// Lookup tasks at once for `concurrent_per_second`.
    pub concurrency: usize,
    /// p99 of the concurrent lookups, milliseconds.
    pub concurrent_p99_ms: f64,
    /// The database's plan for the lookup.
    pub plan: Vec<String>,
    /// PostgreSQL `synchronous_commit = off` (the --pg-async-commit experiment).
    pub async_commit: bool,
}

/// The `Mdm-Signature` of one request, timed in-process on one core.
#[derive(Debug, Clone, Serialize)]
pub struct CryptoResult {
    /// Device key type.
    pub key: String,
    /// Size of the signed body (a `DeviceInformation` acknowledgement), bytes.
    pub body_bytes: usize,
    /// Microseconds to sign (the device's side), wall clock.
    pub sign_us: f64,
    /// Microseconds to verify against the CA and fingerprint the signer (the server's side),
    /// wall clock.
    pub verify_us: f64,
    /// CPU microseconds of this thread per signature.
    pub sign_cpu_us: Option<f64>,
    /// CPU microseconds of this thread per check.
    pub verify_cpu_us: Option<f64>,
    /// Microseconds per check with the server's `SignerCache` warm (the chain already
    /// verified for this certificate; the signature over the body still checked), wall clock.
    pub cached_verify_us: f64,
    /// CPU microseconds of this thread per cached check.
    pub cached_verify_cpu_us: Option<f64>,
    /// Microseconds per check of a certificate the `SignerCache` does not hold yet (a device's
    /// first request: the certificate's signature by the CA, validity, key usage, then the
    /// signature over the body), wall clock.
    pub first_contact_us: f64,
    /// CPU microseconds of this thread per first-contact check.
    pub first_contact_cpu_us: Option<f64>,
}

/// utime + stime of the calling thread, in ticks.
fn thread_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some(f.get(11)? + f.get(12)?)
}

/// Where the server spent its CPU during the round trips (`perf record -e cpu-clock`).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileShare {
    /// A coarse category of symbols.
    pub category: String,
    /// Percent of the server's samples.
    pub percent: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Cores of this machine (client and server share them).
    pub cores: usize,
    /// How the server ran.
    pub server: String,
    /// N.
    pub macs: usize,
    /// M.
    pub round_trips_requested: usize,
    /// C.
    pub concurrency: usize,
    /// K.
    pub fanout_requested: usize,
    /// R.
    pub lookup_rows: usize,
    /// Enrollment through the real flow.
    pub enrollment: Option<EnrollmentResult>,
    /// Synthetic devices made, per phase that needed them.
    pub synthetic: Vec<SyntheticResult>,
    /// Round trips.
    pub round_trips: Option<RoundTripResult>,
    /// Fan-out.
    pub fanout: Option<FanoutResult>,
    /// Lookup.
    pub lookup: Option<LookupResult>,
    /// Signature costs.
    pub crypto: Vec<CryptoResult>,
    /// Peak resident memory of the server (VmHWM), MiB.
    pub server_peak_rss_mib: Option<f64>,
    /// Resident memory of the server at the end (VmRSS), MiB.
    pub server_rss_mib: Option<f64>,
    /// The server's resident memory when idle: started, migrated, no device yet (2 s after it
    /// listens), split as the kernel counts it.
    pub server_idle_rss: Option<Rss>,
    /// The same split at the end.
    pub server_end_rss: Option<Rss>,
    /// The same split for the server restarted on the run's data (its push certificate,
    /// enrolled devices and commands) at `lanyard serve`'s default log level, 5 s after it
    /// listens: what a production server holds idle (the issue's idle figure).
    pub server_restarted_idle_rss: Option<Rss>,
    /// Load averages (1, 5, 15 min) when the run started: other work on the machine.
    pub load_before: String,
    /// Load averages when it ended.
    pub load_after: String,
}

// ---------------------------------------------------------------------------------------------
// /proc

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `comm` and the fields after it of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(String, Vec<u64>)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest = s.get(close + 2..)?;
    // Field 3 (state) is not numeric; keep positions by mapping it to 0.
    let fields = rest
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect();
    Some((comm, fields))
}

/// utime + stime of a process (all its threads), in ticks. Fields 14 and 15 of the stat line:
/// indexes 11 and 12 after `comm`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let (_, f) = proc_stat(pid)?;
    Some(f.get(11)? + f.get(12)?)
}

/// CPU of every local process named `postgres`, with the children they reaped (cutime,
/// cstime: backends that exited), in ticks.
fn postgres_ticks() -> Option<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((comm, f)) = proc_stat(pid) else {
            continue;
        };
        if comm == "postgres" {
            found = true;
            total += f.get(11).copied().unwrap_or(0)
                + f.get(12).copied().unwrap_or(0)
                + f.get(13).copied().unwrap_or(0)
                + f.get(14).copied().unwrap_or(0);
        }
    }
    found.then_some(total)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some((total.saturating_sub(idle), total))
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Context switches of every thread of a process.
fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for l in s.lines() {
            if l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// The 1-, 5- and 15-minute load averages.
/// Resident memory split as `/proc/PID/status` counts it, MiB.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    /// VmRSS: all of it.
    pub total_mib: f64,
    /// RssAnon: heap, stacks and other private memory.
    pub anon_mib: f64,
    /// RssFile: file pages mapped in (the executable's and the libraries' code and data).
    pub file_mib: f64,
}

fn rss_of(pid: u32) -> Option<Rss> {
    let mib = |key| status_kib(pid, key).map(|k| k as f64 / 1024.0);
    Some(Rss {
        total_mib: mib("VmRSS:")?,
        anon_mib: mib("RssAnon:")?,
        file_mib: mib("RssFile:")?,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A point in time for [`CpuUse`].
#[derive(Clone, Copy)]
struct Snap {
    at: Instant,
    switches: Option<u64>,
    server: Option<u64>,
    client: Option<u64>,
    db: Option<u64>,
    machine: Option<(u64, u64)>,
}

struct Meter {
    ticks: f64,
    server_pid: Option<u32>,
    postgres: bool,
}

impl Meter {
    fn snap(&self) -> Snap {
        Snap {
            at: Instant::now(),
            switches: self.server_pid.and_then(context_switches),
            server: self.server_pid.and_then(cpu_ticks),
            client: cpu_ticks(std::process::id()),
            db: if self.postgres {
                postgres_ticks()
            } else {
                None
            },
            machine: machine_ticks(),
        }
    }

    fn since(&self, a: &Snap) -> CpuUse {
        let b = self.snap();
        let d = |x: Option<u64>, y: Option<u64>| match (x, y) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / self.ticks),
            _ => None,
        };
        CpuUse {
            wall_s: (b.at - a.at).as_secs_f64(),
            server_cpu_s: d(a.server, b.server),
            client_cpu_s: d(a.client, b.client),
            db_cpu_s: d(a.db, b.db),
            machine_busy_pct: match (a.machine, b.machine) {
                (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                    Some(100.0 * (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64)
                }
                _ => None,
            },
            server_context_switches: match (a.switches, b.switches) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x)),
                _ => None,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server

/// Where the server's data lives, for synthetic devices and admin commands.
struct ServerData {
    data_dir: PathBuf,
    database_url: String,
}

/// A `lanyard serve` this tool started.
struct Spawned {
    child: Child,
    bin: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pg: Option<ScratchDb>,
    admin_password: String,
}

fn default_lanyard_bin() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("this executable has no directory"))?;
    Ok(dir.join("lanyard"))
}

/// Runs one `lanyard` admin command against the server's data; fails with its stderr when it
/// does not succeed.
fn run_cli(bin: &Path, data: &ServerData, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut child = Command::new(bin)
        .args(args)
        .env("LANYARD_DATA_DIR", &data.data_dir)
        .env("LANYARD_DATABASE_URL", &data.database_url)
        .env("LANYARD_LOG", "warn")
        .env_remove("LANYARD_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if let Some(mut s) = child.stdin.take() {
        if let Some(text) = stdin {
            s.write_all(text.as_bytes())?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let command = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        bail!(
            "lanyard {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `synchronous_commit = off` for one database (the --pg-async-commit experiment).
async fn pg_async_commit(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    ))
    .execute(&mut c)
    .await?;
    Ok(())
}

/// Asks a server to stop (SIGTERM: a graceful shutdown) and waits until it has.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Starts `lanyard serve` on `data` (under `--server-under` if given; `LANYARD_LOG` = `log`,
/// or its default when `None`), appending its log to `server.log`, and waits until it says
/// where it listens. Returns the child, the URL and the one-time administrator password it
/// printed on a first start (empty on a restart).
async fn launch(
    bin: &Path,
    data: &ServerData,
    args: &BenchArgs,
    log: Option<&str>,
) -> Result<(Child, String, String)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.data_dir.join("server.log"))?;
    let mut words = args.server_under.iter().flat_map(|u| u.split_whitespace());
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LANYARD_DATA_DIR", &data.data_dir)
        .env("LANYARD_DATABASE_URL", &data.database_url)
        .env_remove("LANYARD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    match log {
        Some(l) => command.env("LANYARD_LOG", l),
        None => command.env_remove("LANYARD_LOG"),
    };
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from lanyard serve"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut open = true;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Keep draining after the receiver is gone so the server never blocks on stdout.
            if open && tx.send(line).is_err() {
                open = false;
            }
        }
    });
    let mut startup = StartupLines::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            terminate(&mut child);
            bail!(
                "lanyard serve did not start (see {}/server.log)",
                data.data_dir.display()
            );
        };
        if let Some(url) = startup.read(&line) {
            break url.to_owned();
        }
    };
    let admin_password = startup.admin_password().to_owned();
    Ok((child, url, admin_password))
}

impl Spawned {
    async fn start(args: &BenchArgs) -> Result<(Spawned, ServerData, String)> {
        let bin = match &args.lanyard_bin {
            Some(b) => b.clone(),
            None => default_lanyard_bin()?,
        };
        if !bin.exists() {
            bail!(
                "no lanyard binary at {} (build it, or pass --lanyard-bin)",
                bin.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("lanyard-bench-")
            .tempdir()
            .context("cannot create a data directory")?;
        let data_dir = tmp.path().to_path_buf();
        let (database_url, pg) = match &args.postgres_url {
            Some(admin) => {
                let db = ScratchDb::create_at(admin, "lanyard_bench").await?;
                if args.pg_async_commit {
                    pg_async_commit(admin, db.name()).await?;
                }
                (db.url().to_string(), Some(db))
            }
            None => (format!("sqlite://{}/lanyard.db", data_dir.display()), None),
        };
        let data = ServerData {
            data_dir,
            database_url,
        };
        // On failure the scratch database is dropped with `pg`.
        let (child, url, admin_password) =
            launch(&bin, &data, args, Some(&args.server_log)).await?;
        Ok((
            Spawned {
                child,
                bin,
                _tmp: Some(tmp),
                pg,
                admin_password,
            },
            data,
            url,
        ))
    }

    /// Stops the server, starts it again on the same data at its default log level and
    /// reads its resident memory 5 s after it listens; the new server is the one
    /// [`Spawned::stop`] stops. Under `--server-under` it starts under that program too, so
    /// that `scripts/symbol-order` records what a first restart after a workload runs (its
    /// memory figure is then the wrapper's, not the server's).
    async fn restarted_idle(&mut self, data: &ServerData, args: &BenchArgs) -> Result<Rss> {
        terminate(&mut self.child);
        let (child, _, _) = launch(&self.bin, data, args, None).await?;
        self.child = child;
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss_of(self.pid()).ok_or_else(|| anyhow!("cannot read the restarted server's memory"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn stop(&mut self, keep: bool) {
        terminate(&mut self.child);
        if keep {
            if let Some(t) = self._tmp.take() {
                let p = t.keep();
                eprintln!("kept the data directory {}", p.display());
            }
            if let Some(db) = self.pg.take() {
                eprintln!("kept the PostgreSQL database {}", db.keep());
            }
        } else {
            drop(self.pg.take());
        }
    }
}

/// Opens the server's database from this process (no migration: the server did it).
async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    Ok(match Backend::from_url(url)? {
        Backend::Sqlite => Arc::new(SqliteStore::connect(url).await?),
        Backend::Postgres => Arc::new(PostgresStore::connect(url).await?),
    })
}

fn read_secret_key(data_dir: &Path) -> Result<SecretBox> {
    let path = data_dir.join("secret.key");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let key = SecretBox::key_from_base64(text.trim())
        .with_context(|| format!("{} is not a secret key", path.display()))?;
    Ok(SecretBox::new(key))
}

// ---------------------------------------------------------------------------------------------
// The admin API

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

fn http_client(ca_pem: &[u8], pool: usize) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(pool.max(1))
        .timeout(Duration::from_secs(600))
        .connect_timeout(Duration::from_secs(15));
    for c in lanyard_testkit::sim::parse_certificates(ca_pem)
        .map_err(|e| anyhow!("CA certificate: {e}"))?
    {
        b = b.add_root_certificate(reqwest::Certificate::from_der(&c.to_der()?)?);
    }
    Ok(b.build()?)
}

impl Api {
    async fn sign_in(client: reqwest::Client, base: &str, password: &str) -> Result<Api> {
        let r = client
            .post(format!("{base}/api/v1/sessions"))
            .json(&json!({"username": "admin", "password": password}))
            .send()
            .await?;
        if r.status() != StatusCode::CREATED {
            bail!("admin sign-in answered {}", r.status());
        }
        let v: serde_json::Value = r.json().await?;
        let token = v["session_token"]
            .as_str()
            .ok_or_else(|| anyhow!("no session_token in the sign-in answer"))?
            .to_owned();
        Ok(Api {
            client,
            base: base.to_owned(),
            token,
        })
    }

    /// Queues `request_type` for every enrolled device; returns how many were targeted.
    async fn queue_for_all(&self, request_type: &str) -> Result<u64> {
        let r = self
            .client
            .post(format!("{}/api/v1/commands", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"target": {"filter": {"search": ""}},
                          "command": {"request_type": request_type}, "push": false}))
            .send()
            .await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if status != StatusCode::ACCEPTED {
            bail!("POST /api/v1/commands answered {status}: {v}");
        }
        v["targets"]
            .as_u64()
            .ok_or_else(|| anyhow!("no targets in the answer: {v}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Devices

/// A synthetic device: an identity issued straight from the CA, bound through the store.
struct SynthMac {
    enrollment_id: String,
    cert: X509,
    key: PKey<Private>,
    client: reqwest::Client,
    command_url: Arc<String>,
}

impl SynthMac {
    async fn report(
        &self,
        status: &str,
        uuid: Option<&str>,
        result: &Dictionary,
    ) -> Result<Option<ServerCommand>> {
        let msg = device::command_report(&self.enrollment_id, None, status, uuid, result);
        let body = device::to_xml(msg)?;
        let sig = lanyard_pki::sign_detached(&self.cert, &self.key, &body)?;
        let resp = self
            .client
            .put(self.command_url.as_str())
            .header(CONTENT_TYPE, COMMAND_CONTENT_TYPE)
            .header(
                "Mdm-Signature",
                base64::engine::general_purpose::STANDARD.encode(sig),
            )
            .body(body)
            .send()
            .await?;
        let code = resp.status();
        let bytes = resp.bytes().await?;
        if code != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes);
            bail!(
                "PUT /mdm/command answered {code}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_command(&bytes).map(Some).map_err(|m| anyhow!(m))
    }
}

/// What a synthetic device answers: the queried facts it has for `DeviceInformation`, an
/// empty list for `ProfileList`, nothing else for other commands.
fn synth_result(cmd: &ServerCommand) -> Dictionary {
    let mut result = Dictionary::new();
    match cmd.request_type.as_str() {
        "DeviceInformation" => {
            let mut answers = Dictionary::new();
            let queries = cmd
                .command
                .get("Queries")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for q in queries.iter().filter_map(Value::as_string) {
                let v = match q {
                    "OSVersion" => Value::String(SYNTH_OS.into()),
                    "BuildVersion" => Value::String(SYNTH_BUILD.into()),
                    "ProductName" | "Model" => Value::String(SYNTH_MODEL.into()),
                    "ModelName" => Value::String("MacBook Air".into()),
                    "DeviceName" => Value::String("Synthetic Mac".into()),
                    "IsSupervised" => Value::Boolean(false),
                    "IsAppleSilicon" => Value::Boolean(true),
                    "HasBattery" => Value::Boolean(true),
                    "BatteryLevel" => Value::Real(0.82),
                    "DeviceCapacity" => Value::Real(460.43),
                    "AvailableDeviceCapacity" => Value::Real(212.07),
                    _ => continue,
                };
                answers.insert(q.to_owned(), v);
            }
            result.insert("QueryResponses".into(), Value::Dictionary(answers));
        }
        "ProfileList" => {
            result.insert("ProfileList".into(), Value::Array(Vec::new()));
        }
        _ => {}
    }
    result
}

/// A device the phases drive.
enum Device {
    Real(Box<SimMac>),
    Synth(SynthMac),
}

impl Device {
    fn is_real(&self) -> bool {
        matches!(self, Device::Real(_))
    }

    async fn idle(&mut self) -> Result<Option<ServerCommand>> {
        match self {
            Device::Real(m) => Ok(m.idle().await?),
            Device::Synth(s) => s.report("Idle", None, &Dictionary::new()).await,
        }
    }

    /// Answers `cmd`; returns whether the answer was `Acknowledged`, and the next command.
    async fn answer(&mut self, cmd: &ServerCommand) -> Result<(bool, Option<ServerCommand>)> {
        match self {
            Device::Real(m) => {
                let reply = m.builtin_reply(cmd, Channel::Device);
                let ok = reply.status == CommandStatus::Acknowledged;
                let next = m.respond(&cmd.uuid, reply.status, reply.result).await?;
                Ok((ok, next))
            }
            Device::Synth(s) => {
                let result = synth_result(cmd);
                let next = s
                    .report(
                        CommandStatus::Acknowledged.as_str(),
                        Some(&cmd.uuid),
                        &result,
                    )
                    .await?;
                Ok((true, next))
            }
        }
    }
}

fn mix(devices: &[Mutex<Device>]) -> DeviceMix {
    let real = devices
        .iter()
        .filter(|d| d.try_lock().map(|d| d.is_real()).unwrap_or(false))
        .count();
    DeviceMix {
        real_flow: real,
        synthetic: devices.len() - real,
    }
}

/// Makes synthetic devices for one server.
struct SynthFactory {
    store: Arc<dyn Store>,
    ca: Arc<Ca>,
    user_id: i64,
    managed_apple_id: String,
    topic: String,
    organization: String,
    client: reqwest::Client,
    command_url: Arc<String>,
    key: SyntheticKey,
    shared_rsa: Option<PKey<Private>>,
}

/// One issued synthetic identity, before it is bound.
struct Issued {
    id: String,
    enrollment_id: String,
    cert: X509,
    key: PKey<Private>,
    serial: String,
    sha256: String,
    not_after: DateTime<Utc>,
}

fn upper_uuid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
}

fn issue_one(
    ca: &Ca,
    organization: &str,
    key_kind: SyntheticKey,
    shared_rsa: Option<&PKey<Private>>,
) -> Result<Issued> {
    let key = match (key_kind, shared_rsa) {
        (SyntheticKey::Rsa, Some(k)) => k.clone(),
        _ => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            PKey::from_ec_key(EcKey::generate(&group)?)?
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, organization)?;
    name.append_entry_by_nid(Nid::COMMONNAME, &format!("Lanyard Identity {id}"))?;
    let subject = name.build();
    let csr = lanyard_pki::build_csr(&key, &subject, None)?;
    let cert = ca.issue_identity_valid_for(&csr, DEFAULT_IDENTITY_LIFETIME, Some(&subject))?;
    let info = CertInfo::from_x509(&cert)?;
    let not_after = DateTime::from_timestamp(info.not_after, 0)
        .ok_or_else(|| anyhow!("certificate expiry out of range"))?;
    Ok(Issued {
        id,
        enrollment_id: upper_uuid(),
        cert,
        key,
        serial: info.serial_hex,
        sha256: info.sha256,
        not_after,
    })
}

/// Issues `count` synthetic identities from `ca` on every core.
async fn issue_many(
    ca: Arc<Ca>,
    org: String,
    kind: SyntheticKey,
    shared: Option<PKey<Private>>,
    count: usize,
) -> Result<Vec<Issued>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    tokio::task::spawn_blocking(move || -> Result<Vec<Issued>> {
        let per = count.div_ceil(threads.max(1));
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let n = per.min(count.saturating_sub(i * per));
                    let (ca, org, shared) = (&ca, &org, shared.as_ref());
                    s.spawn(move || {
                        (0..n)
                            .map(|_| issue_one(ca, org, kind, shared))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(count);
            for h in handles {
                let part = h
                    .join()
                    .map_err(|_| anyhow!("a certificate thread panicked"))??;
                all.extend(part);
            }
            Ok(all)
        })
    })
    .await?
}

impl SynthFactory {
    async fn new(
        data: &ServerData,
        server_url: &str,
        ca_pem: &[u8],
        args: &BenchArgs,
    ) -> Result<SynthFactory> {
        let store = open_store(&data.database_url).await?;
        let secrets = read_secret_key(&data.data_dir)?;
        let lanyard = Lanyard::new(Arc::clone(&store));
        let ca = lanyard
            .load_or_create_ca(&secrets, &args.organization)
            .await
            .context("cannot load the server's CA")?;
        let topic = lanyard.push_topic().await?.ok_or_else(|| {
            anyhow!("the server has no APNs push certificate (lanyard push-cert upload)")
        })?;
        let user = store
            .user_by_email(&args.email)
            .await?
            .ok_or_else(|| anyhow!("no user {} on the server", args.email))?;
        let shared_rsa = match args.synthetic_key {
            SyntheticKey::Rsa => Some(device::rsa_key(2048)?),
            SyntheticKey::Ec => None,
        };
        Ok(SynthFactory {
            managed_apple_id: user.managed_apple_id.clone().unwrap_or(user.email.clone()),
            user_id: user.id,
            store,
            ca: Arc::new(ca),
            topic,
            organization: args.organization.clone(),
            client: http_client(ca_pem, args.concurrency)?,
            command_url: Arc::new(format!("{}/mdm/command", server_url.trim_end_matches('/'))),
            key: args.synthetic_key,
            shared_rsa,
        })
    }

    /// Issues `count` identities on every core, then binds them with `concurrency` tasks.
    async fn make(
        &self,
        count: usize,
        concurrency: usize,
    ) -> Result<(Vec<SynthMac>, SyntheticResult)> {
        let t = Instant::now();
        let issued = issue_many(
            Arc::clone(&self.ca),
            self.organization.clone(),
            self.key,
            self.shared_rsa.clone(),
            count,
        )
        .await?;
        let issue_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let issued = Arc::new(issued);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency.clamp(1, 16) {
            let (store, issued, next) = (
                Arc::clone(&self.store),
                Arc::clone(&issued),
                Arc::clone(&next),
            );
            let (user_id, apple_id, topic) = (
                self.user_id,
                self.managed_apple_id.clone(),
                self.topic.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(d) = issued.get(i) else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    bind(&*store, d, user_id, &apple_id, &topic).await?;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let bind_s = t.elapsed().as_secs_f64();
        let issued = Arc::try_unwrap(issued).map_err(|_| anyhow!("identities still shared"))?;
        let macs = issued
            .into_iter()
            .map(|d| SynthMac {
                enrollment_id: d.enrollment_id,
                cert: d.cert,
                key: d.key,
                client: self.client.clone(),
                command_url: Arc::clone(&self.command_url),
            })
            .collect();
        Ok((
            macs,
            SyntheticResult {
                devices: count,
                key: self.key,
                issue_s,
                bind_s,
            },
        ))
    }
}

/// Binds one synthetic identity the way the server binds a real one: profile issued
/// (`pending`), identity set, `Authenticate`, device-channel `TokenUpdate` (`enrolled`).
async fn bind(
    store: &dyn Store,
    d: &Issued,
    user_id: i64,
    apple_id: &str,
    topic: &str,
) -> Result<()> {
    let now = lanyard_store::now();
    let mut challenge = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut challenge);
    store
        .create_enrollment(&NewEnrollment {
            id: d.id.as_str().into(),
            user_id,
            managed_apple_id: apple_id.to_owned(),
            ownership: Ownership::Employee,
            attributes: "{}".into(),
            mode: EnrollmentMode::UserEnrollment,
            os_version: Some(SYNTH_OS.into()),
            build_version: Some(SYNTH_BUILD.into()),
            product: Some(SYNTH_MODEL.into()),
            model_family: Some("Mac".into()),
            scep_challenge_hash: hex::encode(challenge),
            challenge_expires_at: now + chrono::Duration::hours(1),
            push_topic: topic.to_owned(),
            profile_ids: None,
            bearer_token_hash: None,
        })
        .await?;
    store
        .set_identity(&d.id, &d.serial, &d.sha256, d.not_after)
        .await?;
    store
        .record_authenticate(
            &d.id,
            &AuthenticateRecord {
                device_channel_id: d.enrollment_id.clone(),
                os_version: Some(SYNTH_OS.into()),
                build_version: Some(SYNTH_BUILD.into()),
                product: Some(SYNTH_MODEL.into()),
            },
            now,
        )
        .await?;
    let mut token = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut token);
    store
        .record_token_update(
            &d.id,
            &TokenUpdateRecord {
                user_channel_id: None,
                topic: topic.to_owned(),
                push_token: token,
                push_magic: upper_uuid(),
                unlock_token_sealed: None,
            },
            now,
        )
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phases

async fn enroll_real(
    n: usize,
    concurrency: usize,
    opts: SimOptions,
    meter: &Meter,
) -> Result<(Vec<Device>, EnrollmentResult)> {
    let snap = meter.snap();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (sem, opts) = (Arc::clone(&sem), opts.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let t = Instant::now();
            // Every real-flow Mac signs in with the one bench account from one address, so
            // the sign-in throttle (attempts are counted before the password is checked, five
            // go through at once) may ask one to wait; like a person, it tries again after a
            // pause. The wait counts in its enrollment time.
            let mut attempt = 0;
            let mac = loop {
                let mut mac = SimMac::new(opts.clone())?;
                match mac.enroll().await {
                    Ok(_) => break mac,
                    Err(e) if e.status() == Some(429) && attempt < 5 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1 << attempt)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("enrolling real-flow Mac {}", i + 1)))
                    }
                }
            };
            Ok::<_, anyhow::Error>((i, mac, t.elapsed()))
        });
    }
    let mut macs = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        let (i, mac, d) = r??;
        macs.push((i, mac));
        lat.push(d.as_micros() as u64);
    }
    macs.sort_by_key(|(i, _)| *i);
    let cpu = meter.since(&snap);
    let result = EnrollmentResult {
        macs: n,
        concurrency,
        per_second: n as f64 / cpu.wall_s.max(1e-9),
        latency: Latency::of(lat),
        cpu,
    };
    Ok((
        macs.into_iter()
            .map(|(_, m)| Device::Real(Box::new(m)))
            .collect(),
        result,
    ))
}

/// Starts `perf record` on the server, when asked.
fn start_perf(file: Option<&PathBuf>, pid: Option<u32>) -> Result<Option<Child>> {
    let (Some(file), Some(pid)) = (file, pid) else {
        return Ok(None);
    };
    let child = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(child))
}

/// Stops `perf record` started by [`start_perf`] and groups what it recorded into `file`;
/// nothing when it was not started.
fn stop_perf(child: Option<Child>, file: Option<&PathBuf>) -> Vec<ProfileShare> {
    let (Some(mut c), Some(file)) = (child, file) else {
        return Vec::new();
    };
    let _ = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status();
    let _ = c.wait();
    summarize_perf(file)
}

/// Whether a symbol is ring's: its Rust paths (`ring::…`, not `string::…`) or its C and
/// assembly functions (`ring_core_…`).
fn is_ring(sym: &str) -> bool {
    sym.contains("ring_core_")
        // ring's assembly keeps its internal routines unprefixed (OpenSSL is a library of its
        // own in these profiles, so the executable holds no other copy of them).
        || sym.contains("nistz256")
        || sym.starts_with("__bn_")
        || sym.ends_with("x4x_internal")
        || sym.ends_with("x8x_internal")
        || sym.match_indices("ring::").any(|(at, _)| {
            sym[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
}

/// The category of one profile line (`dso`, `symbol`).
fn category(dso: &str, sym: &str) -> &'static str {
    let has = |keys: &[&str]| keys.iter().any(|k| sym.contains(k));
    if dso.starts_with("[kernel") {
        if has(&[
            "switch",
            "schedule",
            "futex",
            "wake",
            "_raw_spin",
            "pick_next",
            "enqueue",
            "dequeue",
            "update_curr",
            "sched",
        ]) {
            "kernel: scheduling, futex wake-ups"
        } else if has(&[
            "tcp", "ip_", "skb", "sock", "inet", "net_", "dev_", "loopback", "napi",
        ]) {
            "kernel: loopback TCP"
        } else {
            "kernel: other (syscall entry/exit, files, interrupts)"
        }
    } else if dso.contains("libcrypto") {
        "OpenSSL libcrypto (Mdm-Signature full check)"
    } else if dso.contains("libc.so") || dso.contains("libc-") {
        if has(&[
            "malloc",
            "free",
            "_int_",
            "unlink_chunk",
            "realloc",
            "calloc",
            "consolidate",
        ]) {
            "libc malloc/free"
        } else {
            "libc other (locks, memcpy, strings)"
        }
    } else if dso == "lanyard" {
        if sym.starts_with("sqlite3")
            || sym.starts_with("wal")
            || sym.starts_with("pcache")
            || sym.starts_with("btree")
            || sym.starts_with("vdbe")
            || sym.contains("sqlx_sqlite")
        {
            "SQLite engine and sqlx-sqlite"
        } else if sym.contains("sqlx_postgres") || sym.contains("sqlx_core") {
            "sqlx core and PostgreSQL driver"
        } else if sym.contains("rustls")
            || (is_ring(sym) && has(&["aes", "gcm", "chacha", "poly1305", "x25519"]))
        {
            "TLS (rustls, ring's ciphers)"
        } else if is_ring(sym) {
            "ring signatures and digests (Mdm-Signature; TLS handshakes)"
        } else if has(&["plist", "quick_xml"]) {
            "plist XML"
        } else if has(&[
            "flume",
            "tokio",
            "futures",
            "parking_lot",
            "std::thread",
            "std::sync",
        ]) {
            "async runtime, channels"
        } else {
            "other Rust (axum, hyper, Lanyard, serde, …)"
        }
    } else {
        "other"
    }
}

/// Groups a `perf record` of the server by [`category`].
fn summarize_perf(file: &Path) -> Vec<ProfileShare> {
    let Ok(out) = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,sym",
            "-g",
            "none",
            "-i",
        ])
        .arg(file)
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut shares: BTreeMap<&'static str, f64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(pct), Some(dso)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(pct) = pct.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) else {
            continue;
        };
        let sym: Vec<&str> = parts.skip(1).collect();
        *shares.entry(category(dso, &sym.join(" "))).or_default() += pct;
    }
    let mut v: Vec<ProfileShare> = shares
        .into_iter()
        .map(|(c, p)| ProfileShare {
            category: c.to_owned(),
            percent: p,
        })
        .collect();
    v.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    v
}

/// Times the device's signature and the server's check of it for one key type.
fn time_signature(ca: &Ca, key: PKey<Private>, label: &str) -> Result<CryptoResult> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "Lanyard Identity bench")?;
    let subject = name.build();
    let csr = lanyard_pki::build_csr(&key, &subject, None)?;
    let cert = ca.issue_identity_valid_for(&csr, DEFAULT_IDENTITY_LIFETIME, Some(&subject))?;
    let cmd = ServerCommand {
        uuid: upper_uuid(),
        request_type: "DeviceInformation".into(),
        command: {
            let mut c = Dictionary::new();
            let queries = [
                "OSVersion",
                "BuildVersion",
                "ProductName",
                "Model",
                "ModelName",
                "DeviceName",
                "IsSupervised",
                "IsAppleSilicon",
                "HasBattery",
                "BatteryLevel",
                "DeviceCapacity",
                "AvailableDeviceCapacity",
            ];
            c.insert(
                "Queries".into(),
                Value::Array(queries.iter().map(|q| Value::String((*q).into())).collect()),
            );
            c
        },
    };
    let body = device::to_xml(device::command_report(
        &upper_uuid(),
        None,
        "Acknowledged",
        Some(&cmd.uuid),
        &synth_result(&cmd),
    ))?;
    let ticks = clock_ticks();
    let cpu_us = |a: Option<u64>, b: Option<u64>, n: u32| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks * 1e6 / f64::from(n)),
        _ => None,
    };
    let rounds: u32 = if label.starts_with("RSA") { 1000 } else { 4000 };
    let (t, c) = (Instant::now(), thread_ticks());
    let mut sig = Vec::new();
    for _ in 0..rounds {
        sig = lanyard_pki::sign_detached(&cert, &key, &body)?;
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let sign_cpu_us = cpu_us(c, thread_ticks(), rounds);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&sig);
    let checks: u32 = 4000;
    let (t, c) = (Instant::now(), thread_ticks());
    for _ in 0..checks {
        let signer = lanyard_pki::verify_detached(b64.as_bytes(), &body, ca.certificate())?;
        let _ = lanyard_pki::sha256_fingerprint(&signer.to_der()?);
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(checks);
    let verify_cpu_us = cpu_us(c, thread_ticks(), checks);
    let cache = lanyard_pki::SignerCache::new(ca.certificate().clone(), 16);
    cache.verify(b64.as_bytes(), &body)?;
    let (t, c) = (Instant::now(), thread_ticks());
    for _ in 0..checks {
        let _ = cache.verify(b64.as_bytes(), &body)?;
    }
    let cached_verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(checks);
    let cached_verify_cpu_us = cpu_us(c, thread_ticks(), checks);
    // First contacts: as many certificates for the same key, each signing the body once.
    let firsts: u32 = 500;
    let mut signed = Vec::with_capacity(firsts as usize);
    for _ in 0..firsts {
        let cert = ca.issue_identity_valid_for(&csr, DEFAULT_IDENTITY_LIFETIME, Some(&subject))?;
        let sig = lanyard_pki::sign_detached(&cert, &key, &body)?;
        signed.push(base64::engine::general_purpose::STANDARD.encode(&sig));
    }
    let cache = lanyard_pki::SignerCache::new(ca.certificate().clone(), 2 * firsts as usize);
    let (t, c) = (Instant::now(), thread_ticks());
    for sig in &signed {
        let _ = cache.verify(sig.as_bytes(), &body)?;
    }
    let first_contact_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(firsts);
    let first_contact_cpu_us = cpu_us(c, thread_ticks(), firsts);
    if cache.hits() != 0 || cache.len() != firsts as usize {
        bail!("the first-contact timing hit the cache");
    }
    Ok(CryptoResult {
        first_contact_us,
        first_contact_cpu_us,
        cached_verify_us,
        cached_verify_cpu_us,
        key: label.into(),
        body_bytes: body.len(),
        sign_us,
        verify_us,
        sign_cpu_us,
        verify_cpu_us,
    })
}

/// The `Mdm-Signature` costs, with a throwaway RSA-2048 CA like the server's.
fn crypto_phase() -> Result<Vec<CryptoResult>> {
    let ca = Ca::generate("Bench CA", "Lanyard")?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(vec![
        time_signature(
            &ca,
            PKey::from_ec_key(EcKey::generate(&group)?)?,
            "EC P-256",
        )?,
        time_signature(&ca, device::rsa_key(2048)?, "RSA-2048")?,
    ])
}

struct Outcome {
    lat: Vec<u64>,
    acked: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Drives one device until the server has nothing more for it; records each request's time.
async fn drain(dev: &mut Device, out: &mut Outcome, acked_total: &AtomicU64) {
    let t = Instant::now();
    let first = dev.idle().await;
    out.lat.push(t.elapsed().as_micros() as u64);
    out.requests += 1;
    let mut next = match first {
        Ok(n) => n,
        Err(e) => {
            out.errors += 1;
            out.first_error.get_or_insert(format!("{e:#}"));
            return;
        }
    };
    while let Some(cmd) = next {
        let t = Instant::now();
        let r = dev.answer(&cmd).await;
        out.lat.push(t.elapsed().as_micros() as u64);
        out.requests += 1;
        match r {
            Ok((ok, n)) => {
                if ok {
                    out.acked += 1;
                    acked_total.fetch_add(1, Ordering::Relaxed);
                } else {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert(format!("{} was not acknowledged", cmd.request_type));
                }
                next = n;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("{e:#}"));
                return;
            }
        }
    }
}

/// `concurrency` workers take devices one after another and drain them.
async fn run_devices(
    devices: Arc<Vec<Mutex<Device>>>,
    concurrency: usize,
) -> Result<(Outcome, Option<(Duration, u64)>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let first_idle: Arc<StdMutex<Option<(Duration, u64)>>> = Arc::new(StdMutex::new(None));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.clamp(1, devices.len().max(1)) {
        let (devices, next, acked, first_idle) = (
            Arc::clone(&devices),
            Arc::clone(&next),
            Arc::clone(&acked),
            Arc::clone(&first_idle),
        );
        tasks.spawn(async move {
            let mut out = Outcome {
                lat: Vec::new(),
                acked: 0,
                requests: 0,
                errors: 0,
                first_error: None,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = devices.get(i) else {
                    break;
                };
                let mut dev = d.lock().await;
                drain(&mut dev, &mut out, &acked).await;
            }
            if let Ok(mut f) = first_idle.lock() {
                f.get_or_insert((start.elapsed(), acked.load(Ordering::Relaxed)));
            }
            out
        });
    }
    let mut all = Outcome {
        lat: Vec::new(),
        acked: 0,
        requests: 0,
        errors: 0,
        first_error: None,
    };
    while let Some(r) = tasks.join_next().await {
        let o = r?;
        all.lat.extend(o.lat);
        all.acked += o.acked;
        all.requests += o.requests;
        all.errors += o.errors;
        if all.first_error.is_none() {
            all.first_error = o.first_error;
        }
    }
    let first = first_idle.lock().ok().and_then(|f| *f);
    Ok((all, first))
}

async fn round_trips(
    api: &Api,
    devices: Arc<Vec<Mutex<Device>>>,
    args: &BenchArgs,
    meter: &Meter,
) -> Result<RoundTripResult> {
    let d = devices.len();
    let per_device = args.round_trips.div_ceil(d.max(1));
    eprintln!(
        "round trips: queueing {per_device} {} command(s) for each of {d} devices…",
        args.request_type
    );
    let t = Instant::now();
    for _ in 0..per_device {
        let n = api.queue_for_all(&args.request_type).await?;
        if n as usize != d {
            eprintln!(
                "note: a command was queued for {n} enrolled devices, {d} of them driven here"
            );
        }
    }
    let enqueue_s = t.elapsed().as_secs_f64();
    eprintln!(
        "round trips: {} queued in {enqueue_s:.1} s; {} devices fetch and acknowledge…",
        per_device * d,
        args.concurrency.min(d)
    );
    drive_round_trips(devices, args, meter, per_device, enqueue_s).await
}

/// The timed part of the round trips: the devices fetch and acknowledge what was queued.
async fn drive_round_trips(
    devices: Arc<Vec<Mutex<Device>>>,
    args: &BenchArgs,
    meter: &Meter,
    enqueue_calls: usize,
    enqueue_s: f64,
) -> Result<RoundTripResult> {
    let d = devices.len();
    let devices_mix = mix(&devices);
    let perf = start_perf(args.perf.as_ref(), meter.server_pid)?;
    let snap = meter.snap();
    let (out, first_idle) = run_devices(devices, args.concurrency).await?;
    let cpu = meter.since(&snap);
    let server_profile = stop_perf(perf, args.perf.as_ref());
    let steady = match first_idle {
        Some((t, n)) if t.as_secs_f64() > 0.0 && n > 0 => n as f64 / t.as_secs_f64(),
        _ => 0.0,
    };
    let rt = out.acked.max(1) as f64;
    Ok(RoundTripResult {
        request_type: args.request_type.clone(),
        round_trips: out.acked,
        requests: out.requests,
        concurrency: args.concurrency.min(d),
        devices: devices_mix,
        enqueue_calls,
        enqueue_s,
        per_second: out.acked as f64 / cpu.wall_s.max(1e-9),
        steady_per_second: steady,
        latency: Latency::of(out.lat),
        errors: out.errors,
        first_error: out.first_error,
        server_cpu_ms_per_round_trip: cpu.server_cpu_s.map(|s| s * 1000.0 / rt),
        client_cpu_ms_per_round_trip: cpu.client_cpu_s.map(|s| s * 1000.0 / rt),
        server_switches_per_round_trip: cpu.server_context_switches.map(|n| n as f64 / rt),
        server_profile,
        cpu,
    })
}

async fn fanout(
    api: &Api,
    devices: Arc<Vec<Mutex<Device>>>,
    args: &BenchArgs,
    meter: &Meter,
) -> Result<FanoutResult> {
    eprintln!(
        "fan-out: one {} for every enrolled device ({} here)…",
        args.request_type,
        devices.len()
    );
    let snap = meter.snap();
    let t0 = Instant::now();
    let targets = api.queue_for_all(&args.request_type).await?;
    drive_fanout(devices, args, meter, snap, t0, targets).await
}

/// The timed part of the fan-out from the queueing on: every device fetches and acknowledges.
async fn drive_fanout(
    devices: Arc<Vec<Mutex<Device>>>,
    args: &BenchArgs,
    meter: &Meter,
    snap: Snap,
    t0: Instant,
    targets: u64,
) -> Result<FanoutResult> {
    let devices_mix = mix(&devices);
    let queue_s = t0.elapsed().as_secs_f64();
    let perf = start_perf(args.perf.as_ref(), meter.server_pid)?;
    let t1 = Instant::now();
    let (out, _) = run_devices(devices, args.concurrency).await?;
    let fetch_s = t1.elapsed().as_secs_f64();
    let total_s = t0.elapsed().as_secs_f64();
    let cpu = meter.since(&snap);
    let server_profile = stop_perf(perf, args.perf.as_ref());
    Ok(FanoutResult {
        targets,
        acknowledged: out.acked,
        devices: devices_mix,
        concurrency: args.concurrency,
        queue_s,
        fetch_s,
        total_s,
        devices_per_second: out.acked as f64 / fetch_s.max(1e-9),
        errors: out.errors,
        first_error: out.first_error,
        cpu,
        server_profile,
    })
}

// ---------------------------------------------------------------------------------------------
// Lookup

async fn insert_synthetic_rows(
    backend: Backend,
    url: &str,
    rows: i64,
    user_id: i64,
    command_uuid: &str,
) -> Result<u64> {
    let now = lanyard_store::now();
    let not_after = now + chrono::Duration::days(365);
    let mut queued = 0;
    match backend {
        Backend::Sqlite => {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .busy_timeout(Duration::from_secs(30));
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await?;
            let mut from = 1;
            while from <= rows {
                let to = (from + LOOKUP_INSERT_BATCH - 1).min(rows);
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
                     INSERT INTO enrollments (id, user_id, managed_apple_id, ownership, attributes, \
                     mode, status, os_version, build_version, product, model_family, \
                     identity_serial, identity_sha256, identity_not_after, device_channel_id, \
                     push_topic, device_push_token, device_push_magic, created_at, \
                     authenticated_at, enrolled_at, last_seen_at) \
                     SELECT printf('bench-%09d', i), $3, printf('user%d@example.com', i % 1000), \
                     'employee', '{}', 'user_enrollment', 'enrolled', '15.2', '24C101', \
                     'Mac14,2', 'Mac', printf('%032x', i), printf('%064x', i), $4, \
                     printf('BENCH-%09d', i), 'com.apple.mgmt.External.bench', randomblob(32), \
                     printf('MAGIC-%09d', i), $5, $5, $5, $5 FROM n",
                )
                .bind(from)
                .bind(to)
                .bind(user_id)
                .bind(not_after)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                queued += sqlx::query(
                    "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
                     INSERT INTO command_queue (enrollment_id, channel, command_uuid, status, \
                     queued_at) SELECT printf('bench-%09d', i), 'device', $3, 'queued', $4 \
                     FROM n WHERE i % 2 = 0",
                )
                .bind(from)
                .bind(to)
                .bind(command_uuid)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                from = to + 1;
            }
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?;
            let mut from = 1;
            while from <= rows {
                let to = (from + LOOKUP_INSERT_BATCH - 1).min(rows);
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO enrollments (id, user_id, managed_apple_id, ownership, attributes, \
                     mode, status, os_version, build_version, product, model_family, \
                     identity_serial, identity_sha256, identity_not_after, device_channel_id, \
                     push_topic, device_push_token, device_push_magic, created_at, \
                     authenticated_at, enrolled_at, last_seen_at) \
                     SELECT 'bench-' || lpad(i::text, 9, '0'), $3, \
                     'user' || (i % 1000) || '@example.com', 'employee', '{}', \
                     'user_enrollment', 'enrolled', '15.2', '24C101', 'Mac14,2', 'Mac', \
                     lpad(to_hex(i), 32, '0'), lpad(to_hex(i), 64, '0'), $4, \
                     'BENCH-' || lpad(i::text, 9, '0'), 'com.apple.mgmt.External.bench', \
                     decode(md5(i::text) || md5(i::text), 'hex'), \
                     'MAGIC-' || lpad(i::text, 9, '0'), $5, $5, $5, $5 \
                     FROM generate_series($1::bigint, $2::bigint) AS i",
                )
                .bind(from)
                .bind(to)
                .bind(user_id)
                .bind(not_after)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                queued += sqlx::query(
                    "INSERT INTO command_queue (enrollment_id, channel, command_uuid, status, \
                     queued_at) SELECT 'bench-' || lpad(i::text, 9, '0'), 'device', $3, \
                     'queued', $4 FROM generate_series($1::bigint, $2::bigint) AS i \
                     WHERE i % 2 = 0",
                )
                .bind(from)
                .bind(to)
                .bind(command_uuid)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                from = to + 1;
            }
            sqlx::query("ANALYZE").execute(&pool).await?;
            pool.close().await;
        }
    }
    Ok(queued)
}

async fn lookup_plan(backend: Backend, url: &str) -> Result<Vec<String>> {
    let lookup = "command_queue SET status = 'sent', sent_at = CURRENT_TIMESTAMP WHERE id = (\
                  SELECT id FROM command_queue WHERE enrollment_id = 'bench-000000002' \
                  AND channel = 'device' AND (not_now_until IS NULL OR not_now_until <= \
                  CURRENT_TIMESTAMP) ORDER BY id LIMIT 1";
    Ok(match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await?;
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN UPDATE {lookup}) RETURNING id"))
                    .fetch_all(&pool)
                    .await?;
            pool.close().await;
            rows.into_iter().map(|r| r.3).collect()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await?;
            let rows: Vec<(String,)> = sqlx::query_as(&format!(
                "EXPLAIN UPDATE {lookup} FOR UPDATE SKIP LOCKED) RETURNING id"
            ))
            .fetch_all(&pool)
            .await?;
            pool.close().await;
            rows.into_iter()
                .map(|r| r.0.trim_end().to_owned())
                .collect()
        }
    })
}

async fn lookup_phase(args: &BenchArgs) -> Result<LookupResult> {
    let rows = args.lookup_rows;
    let lookups = args.lookups.max(MIN_LOOKUPS);
    let tmp = tempfile::Builder::new()
        .prefix("lanyard-bench-lookup-")
        .tempdir()?;
    let (backend, url, pg) = match &args.postgres_url {
        Some(admin) => {
            let db = ScratchDb::create_at(admin, "lanyard_bench_lookup").await?;
            if args.pg_async_commit {
                pg_async_commit(admin, db.name()).await?;
            }
            (Backend::Postgres, db.url().to_string(), Some(db))
        }
        None => (
            Backend::Sqlite,
            format!("sqlite://{}/lookup.db", tmp.path().display()),
            None,
        ),
    };
    let r = lookup_on(backend, &url, rows, lookups, args.concurrency)
        .await
        .map(|mut r| {
            r.async_commit = pg.is_some() && args.pg_async_commit;
            r
        });
    if let Some(db) = pg {
        if args.keep {
            eprintln!("kept the PostgreSQL database {}", db.keep());
        }
    }
    r
}

async fn lookup_on(
    backend: Backend,
    url: &str,
    rows: usize,
    lookups: usize,
    concurrency: usize,
) -> Result<LookupResult> {
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => {
            let s = SqliteStore::connect(url).await?;
            s.migrate().await?;
            Arc::new(s)
        }
        Backend::Postgres => {
            let s = PostgresStore::connect(url).await?;
            s.migrate().await?;
            Arc::new(s)
        }
    };
    let audit = |action: &str, target: &str| Audit::new("bench", action, target, json!({}));
    let user = store
        .create_user(
            &NewUser {
                email: "lookup@example.com".into(),
                display_name: "Lookup Bench".into(),
                password_hash: None,
                managed_apple_id: Some("lookup@example.com".into()),
            },
            &audit("user.create", "lookup@example.com"),
        )
        .await?;

    // One background command, queued by batch SQL for every even-numbered enrollment.
    let background = uuid::Uuid::new_v4().to_string().to_uppercase();
    let payload = |uuid: &str| -> Result<Vec<u8>> {
        let mut cmd = Dictionary::new();
        cmd.insert("RequestType".into(), Value::String("ProfileList".into()));
        let mut outer = Dictionary::new();
        outer.insert("CommandUUID".into(), Value::String(uuid.into()));
        outer.insert("Command".into(), Value::Dictionary(cmd));
        Ok(device::to_xml(outer)?)
    };
    store
        .enqueue_command(
            &NewCommand {
                uuid: background.as_str().into(),
                request_type: "ProfileList".into(),
                payload: payload(&background)?,
                created_by: "bench".into(),
                push: false,
            },
            &[],
            &audit("command.enqueue", &background),
        )
        .await?;
    eprintln!("lookup: inserting {rows} synthetic enrollments (batch SQL)…");
    let t = Instant::now();
    let mut queue_rows =
        insert_synthetic_rows(backend, url, rows as i64, user.id, &background).await?;
    let insert_s = t.elapsed().as_secs_f64();

    // A sample gets a command through the store's own enqueue; misses are odd-numbered
    // enrollments outside the sample (nothing queued).
    let id = |i: usize| format!("bench-{i:09}");
    let mut rng = rand::thread_rng();
    let mut all: Vec<usize> = (1..=rows).collect();
    all.shuffle(&mut rng);
    let sample: Vec<usize> = all.iter().copied().take(LOOKUP_SAMPLE.min(rows)).collect();
    let in_sample: std::collections::HashSet<usize> = sample.iter().copied().collect();
    let misses: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| i % 2 == 1 && !in_sample.contains(i))
        .take(LOOKUP_SAMPLE)
        .collect();
    drop(all);
    let sampled = uuid::Uuid::new_v4().to_string().to_uppercase();
    let targets: Vec<(EnrollmentId, StoreChannel)> = sample
        .iter()
        .map(|&i| (EnrollmentId::from(id(i)), StoreChannel::Device))
        .collect();
    queue_rows += store
        .enqueue_command(
            &NewCommand {
                uuid: sampled.as_str().into(),
                request_type: "DeviceInformation".into(),
                payload: payload(&sampled)?,
                created_by: "bench".into(),
                push: false,
            },
            &targets,
            &audit("command.enqueue", &sampled),
        )
        .await?;
    let plan = lookup_plan(backend, url)
        .await
        .unwrap_or_else(|e| vec![format!("({e})")]);
    if sample.is_empty() {
        bail!("--lookup-rows must be at least 1");
    }

    eprintln!("lookup: {lookups} hits and {lookups} misses, one at a time…");
    // Warm-up.
    for i in 0..1000.min(lookups) {
        let e = id(sample[i % sample.len()]);
        store
            .next_command(&e, StoreChannel::Device, lanyard_store::now())
            .await?;
    }
    let mut hit = Vec::with_capacity(lookups);
    let mut miss = Vec::with_capacity(lookups);
    for k in 0..lookups {
        let e = id(sample[rng.gen_range(0..sample.len())]);
        let t = Instant::now();
        let r = store
            .next_command(&e, StoreChannel::Device, lanyard_store::now())
            .await?;
        hit.push(t.elapsed().as_micros() as u64);
        if r.is_none() {
            bail!("lookup {k}: no command for a sampled enrollment");
        }
        if !misses.is_empty() {
            let e = id(misses[rng.gen_range(0..misses.len())]);
            let t = Instant::now();
            let r = store
                .next_command(&e, StoreChannel::Device, lanyard_store::now())
                .await?;
            miss.push(t.elapsed().as_micros() as u64);
            if r.is_some() {
                bail!("lookup {k}: a command for an enrollment with nothing queued");
            }
        }
    }

    eprintln!("lookup: {} lookups with {concurrency} tasks…", 2 * lookups);
    let sample = Arc::new(sample);
    let misses = Arc::new(misses);
    let next = Arc::new(AtomicUsize::new(0));
    let total = 2 * lookups;
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (store, sample, misses, next) = (
            Arc::clone(&store),
            Arc::clone(&sample),
            Arc::clone(&misses),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let pick = if k % 2 == 0 || misses.is_empty() {
                    sample[(k / 2 * 7919) % sample.len()]
                } else {
                    misses[(k / 2 * 7919) % misses.len()]
                };
                let e = format!("bench-{pick:09}");
                let t = Instant::now();
                store
                    .next_command(&e, StoreChannel::Device, lanyard_store::now())
                    .await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
        });
    }
    let mut conc_lat = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        conc_lat.extend(r??);
    }
    let conc_s = t.elapsed().as_secs_f64();
    Ok(LookupResult {
        measures: "CommandStore::next_command called in-process against the store (the indexed \
                   next-command lookup only: no HTTP, TLS, signature check or report handling)"
            .into(),
        backend: match backend {
            Backend::Sqlite => "sqlite".into(),
            Backend::Postgres => "postgres".into(),
        },
        enrollments: rows,
        queue_rows,
        insert_s,
        hit: Latency::of(hit),
        miss: Latency::of(miss),
        concurrent_per_second: total as f64 / conc_s.max(1e-9),
        concurrency: concurrency.max(1),
        concurrent_p99_ms: Latency::of(conc_lat).p99_ms,
        plan,
        async_commit: false,
    })
}

// ---------------------------------------------------------------------------------------------
// Ceiling mode

/// The ceiling server, run by this executable in a child process of its own (so its CPU, context
/// switches and memory are read like `lanyard serve`'s).
struct CeilingChild {
    child: Child,
    url: String,
    ca: Arc<Ca>,
    ca_pem: Vec<u8>,
    _tmp: tempfile::TempDir,
}

/// The command the server stores for `request_type` when it is queued through the API (the
/// domain's own builder, for a User Enrollment target): the bytes the ceiling answers with.
fn stored_command(request_type: &str) -> Result<Vec<u8>> {
    let spec: lanyard_core::commands::CommandSpec =
        serde_json::from_value(json!({ "request_type": request_type }))?;
    let command = spec.build(true)?;
    Ok(lanyard_proto::command::encode_command(&command)?)
}

impl CeilingChild {
    async fn start(args: &BenchArgs, commands_per_device: usize) -> Result<CeilingChild> {
        let tmp = tempfile::Builder::new()
            .prefix("lanyard-bench-ceiling-")
            .tempdir()?;
        let ca = Ca::generate("Lanyard Bench Ceiling CA", &args.organization)?;
        let ca_pem = ca.cert_pem()?.into_bytes();
        std::fs::write(tmp.path().join("ca.pem"), &ca_pem)?;
        std::fs::write(tmp.path().join("ca-key.pem"), ca.key_pem_pkcs8()?)?;
        std::fs::write(
            tmp.path().join("command.plist"),
            stored_command(&args.request_type)?,
        )?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--ceiling-serve")
            .arg(tmp.path())
            .arg("--ceiling-commands")
            .arg(commands_per_device.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the ceiling server")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the ceiling server"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let Some(url) = line.trim().strip_prefix(CEILING_LISTENING) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the ceiling server did not start: {line:?}");
        };
        Ok(CeilingChild {
            url: url.to_owned(),
            child,
            ca: Arc::new(ca),
            ca_pem,
            _tmp: tmp,
        })
    }

    /// `count` synthetic devices with identities from the ceiling's CA.
    async fn devices(
        &self,
        args: &BenchArgs,
        count: usize,
    ) -> Result<(Vec<Device>, SyntheticResult)> {
        let t = Instant::now();
        let shared = match args.synthetic_key {
            SyntheticKey::Rsa => Some(device::rsa_key(2048)?),
            SyntheticKey::Ec => None,
        };
        let issued = issue_many(
            Arc::clone(&self.ca),
            args.organization.clone(),
            args.synthetic_key,
            shared,
            count,
        )
        .await?;
        let issue_s = t.elapsed().as_secs_f64();
        let client = http_client(&self.ca_pem, args.concurrency)?;
        let command_url = Arc::new(format!("{}/mdm/command", self.url));
        let devices = issued
            .into_iter()
            .map(|d| {
                Device::Synth(SynthMac {
                    enrollment_id: d.enrollment_id,
                    cert: d.cert,
                    key: d.key,
                    client: client.clone(),
                    command_url: Arc::clone(&command_url),
                })
            })
            .collect();
        Ok((
            devices,
            SyntheticResult {
                devices: count,
                key: args.synthetic_key,
                issue_s,
                bind_s: 0.0,
            },
        ))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server; its peak RSS first.
    fn stop(mut self) -> Option<f64> {
        let peak = status_kib(self.pid(), "VmHWM:").map(|k| k as f64 / 1024.0);
        terminate(&mut self.child);
        peak
    }
}

/// The larger of two optional figures.
fn max_mib(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// What the ceiling server prints once it listens, before its URL.
const CEILING_LISTENING: &str = "ceiling listening on ";

/// Be the ceiling server (`--ceiling-serve DIR`): the CA, its key and the command from DIR,
/// on a free port of 127.0.0.1, until stopped.
pub async fn serve_ceiling(dir: &Path, commands_per_device: u64) -> Result<()> {
    let ca = Ca::from_pem(
        &std::fs::read(dir.join("ca.pem"))?,
        &std::fs::read(dir.join("ca-key.pem"))?,
    )?;
    let command = std::fs::read(dir.join("command.plist"))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{CEILING_LISTENING}https://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    lanyard_testkit::ceiling::serve(
        listener,
        lanyard_testkit::ceiling::CeilingOptions {
            ca,
            command,
            commands_per_device,
        },
    )
    .await
}

/// The round-trip and fan-out phases against the ceiling server, one server per phase.
async fn ceiling_phases(args: &BenchArgs, report: &mut Report) -> Result<()> {
    report.server = "ceiling server started by the tool (TLS, Mdm-Signature, plist; no store, \
                     no middleware)"
        .into();
    let meter = |pid| Meter {
        ticks: clock_ticks(),
        server_pid: Some(pid),
        postgres: false,
    };
    let mut peak: Option<f64> = None;
    if args.round_trips > 0 {
        let d = args.concurrency.max(1);
        let per_device = args.round_trips.div_ceil(d);
        let server = CeilingChild::start(args, per_device).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.server_idle_rss = rss_of(server.pid());
        eprintln!("ceiling: making {d} synthetic devices for the round trips…");
        let (devices, r) = server.devices(args, d).await?;
        report.synthetic.push(r);
        let devices = Arc::new(devices.into_iter().map(Mutex::new).collect());
        let result = drive_round_trips(devices, args, &meter(server.pid()), 0, 0.0).await;
        peak = max_mib(peak, server.stop());
        report.round_trips = Some(result?);
    }
    if args.fanout > 0 {
        let server = CeilingChild::start(args, 1).await?;
        eprintln!(
            "ceiling: making {} synthetic devices for the fan-out…",
            args.fanout
        );
        let (devices, r) = server.devices(args, args.fanout).await?;
        report.synthetic.push(r);
        let devices = Arc::new(devices.into_iter().map(Mutex::new).collect());
        let m = meter(server.pid());
        let (snap, t0) = (m.snap(), Instant::now());
        let result = drive_fanout(devices, args, &m, snap, t0, args.fanout as u64).await;
        peak = max_mib(peak, server.stop());
        report.fanout = Some(result?);
    }
    report.server_peak_rss_mib = peak;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs the phases the options ask for and returns what they measured.
pub async fn run(args: BenchArgs) -> Result<Report> {
    let needs_server = !args.ceiling && (args.macs > 0 || args.round_trips > 0 || args.fanout > 0);
    if args.ceiling && args.round_trips == 0 && args.fanout == 0 {
        bail!("--ceiling measures --round-trips and --fanout: give one of them");
    }
    if !needs_server && !args.ceiling && args.lookup_rows == 0 && !args.crypto {
        bail!(
            "nothing to measure: give --macs, --round-trips, --fanout, --lookup-rows or --crypto"
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let backend = match (&args.server, &args.postgres_url, &args.database_url) {
        (None, Some(_), _) => "postgres",
        (None, None, _) => "sqlite",
        (Some(_), _, Some(u)) if u.starts_with("postgres") => "postgres",
        (Some(_), _, Some(_)) => "sqlite",
        (Some(_), _, None) => "unknown (external server)",
    };
    let mut report = Report {
        backend: backend.into(),
        cores,
        server: String::new(),
        macs: args.macs,
        round_trips_requested: args.round_trips,
        concurrency: args.concurrency,
        fanout_requested: args.fanout,
        lookup_rows: args.lookup_rows,
        enrollment: None,
        synthetic: Vec::new(),
        round_trips: None,
        fanout: None,
        lookup: None,
        crypto: Vec::new(),
        server_peak_rss_mib: None,
        server_rss_mib: None,
        server_idle_rss: None,
        server_end_rss: None,
        server_restarted_idle_rss: None,
        load_before: load_average(),
        load_after: String::new(),
    };

    if needs_server {
        let mut spawned = None;
        let (url, ca_pem, data, server_pid) = match &args.server {
            Some(url) => {
                let ca = args
                    .ca_cert
                    .as_ref()
                    .ok_or_else(|| anyhow!("--server needs --ca-cert"))?;
                let ca_pem =
                    std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                let data = match (&args.data_dir, &args.database_url) {
                    (Some(d), Some(u)) => Some(ServerData {
                        data_dir: d.clone(),
                        database_url: u.clone(),
                    }),
                    _ => None,
                };
                report.server = format!("external {url}");
                (url.clone(), ca_pem, data, args.server_pid)
            }
            None => {
                eprintln!("starting lanyard serve ({backend})…");
                let (s, data, url) = Spawned::start(&args).await?;
                report.server = format!(
                    "lanyard serve started by the tool (pid {}, LANYARD_LOG={}{})",
                    s.pid(),
                    args.server_log,
                    if args.pg_async_commit {
                        ", PostgreSQL synchronous_commit = off"
                    } else {
                        ""
                    }
                );
                let ca_pem = std::fs::read(data.data_dir.join("ca.pem"))?;
                let pid = s.pid();
                tokio::time::sleep(Duration::from_secs(2)).await;
                report.server_idle_rss = rss_of(pid);
                spawned = Some(s);
                (url, ca_pem, Some(data), Some(pid))
            }
        };
        let result = drive(
            &args,
            &url,
            &ca_pem,
            data.as_ref(),
            server_pid,
            spawned.as_ref(),
            &mut report,
        )
        .await;
        if let Some(pid) = server_pid {
            report.server_peak_rss_mib = status_kib(pid, "VmHWM:").map(|k| k as f64 / 1024.0);
            report.server_rss_mib = status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0);
            report.server_end_rss = rss_of(pid);
        }
        if let (true, Some(s), Some(d)) = (result.is_ok(), spawned.as_mut(), data.as_ref()) {
            eprintln!("restarting lanyard serve on the run's data for its idle memory…");
            match s.restarted_idle(d, &args).await {
                Ok(rss) => report.server_restarted_idle_rss = Some(rss),
                Err(e) => eprintln!("the restarted server's idle memory: {e:#}"),
            }
        }
        if let Some(mut s) = spawned {
            s.stop(args.keep).await;
        }
        result?;
    }

    if args.ceiling {
        report.backend = "none (ceiling)".into();
        ceiling_phases(&args, &mut report).await?;
    }
    if args.lookup_rows > 0 {
        report.lookup = Some(lookup_phase(&args).await?);
    }
    if args.crypto {
        eprintln!("timing the Mdm-Signature in-process…");
        report.crypto = tokio::task::spawn_blocking(crypto_phase).await??;
    }
    report.load_after = load_average();
    Ok(report)
}

async fn drive(
    args: &BenchArgs,
    url: &str,
    ca_pem: &[u8],
    data: Option<&ServerData>,
    server_pid: Option<u32>,
    spawned: Option<&Spawned>,
    report: &mut Report,
) -> Result<()> {
    let meter = Meter {
        ticks: clock_ticks(),
        server_pid,
        postgres: report.backend == "postgres",
    };
    let client = http_client(ca_pem, 4)?;
    let api = match (spawned, &args.token) {
        (_, Some(token)) => Api {
            client,
            base: url.to_owned(),
            token: token.clone(),
        },
        (Some(s), None) => {
            let data = data.ok_or_else(|| anyhow!("no server data"))?;
            run_cli(
                &s.bin,
                data,
                &["user", "add", &args.email, "--password", "-"],
                Some(&format!("{}\n", args.password)),
            )?;
            let domain = args
                .email
                .rsplit_once('@')
                .map(|(_, d)| d)
                .unwrap_or("example.com");
            run_cli(
                &s.bin,
                data,
                &["settings", "set", "managed-domains", domain],
                None,
            )?;
            // Nothing enrolls before a push certificate exists; a fake one gives the topic.
            let cert = lanyard_testkit::fake_apns::fake_push_certificate(
                &lanyard_testkit::fake_apns::fake_mdm_topic(),
            )?;
            let (cert_path, key_path) = cert.write_pem_files(&data.data_dir)?;
            run_cli(
                &s.bin,
                data,
                &[
                    "push-cert",
                    "upload",
                    "--cert",
                    &cert_path.display().to_string(),
                    "--key",
                    &key_path.display().to_string(),
                ],
                None,
            )?;
            Api::sign_in(client, url, &s.admin_password).await?
        }
        (None, None) => bail!("--server needs --token"),
    };

    let mut devices: Vec<Device> = Vec::new();
    if args.macs > 0 {
        eprintln!(
            "enrolling {} real-flow Macs ({} at a time)…",
            args.macs, args.enroll_concurrency
        );
        let opts = SimOptions {
            ca_cert_pem: Some(ca_pem.to_vec()),
            ..SimOptions::new(url, args.email.clone(), args.password.clone())
        };
        let (macs, r) = enroll_real(args.macs, args.enroll_concurrency, opts, &meter).await?;
        devices = macs;
        report.enrollment = Some(r);
    }

    let mut synth = SynthSupply {
        data,
        url,
        ca_pem,
        args,
        factory: None,
    };

    if args.round_trips > 0 {
        synth
            .top_up(&mut devices, args.concurrency, "round trips", report)
            .await?;
        let shared: Arc<Vec<Mutex<Device>>> =
            Arc::new(devices.into_iter().map(Mutex::new).collect());
        let r = round_trips(&api, Arc::clone(&shared), args, &meter).await?;
        report.round_trips = Some(r);
        devices = Arc::try_unwrap(shared)
            .map_err(|_| anyhow!("devices still in use"))?
            .into_iter()
            .map(Mutex::into_inner)
            .collect();
    }

    if args.fanout > 0 {
        synth
            .top_up(&mut devices, args.fanout, "fan-out", report)
            .await?;
        let shared: Arc<Vec<Mutex<Device>>> =
            Arc::new(devices.into_iter().map(Mutex::new).collect());
        report.fanout = Some(fanout(&api, shared, args, &meter).await?);
    }
    drop(synth);
    Ok(())
}

/// Synthetic devices made on demand; the factory is built the first time some are needed.
struct SynthSupply<'a> {
    data: Option<&'a ServerData>,
    url: &'a str,
    ca_pem: &'a [u8],
    args: &'a BenchArgs,
    factory: Option<SynthFactory>,
}

impl SynthSupply<'_> {
    /// Adds synthetic devices to `devices` until it holds `need` of them.
    async fn top_up(
        &mut self,
        devices: &mut Vec<Device>,
        need: usize,
        purpose: &str,
        report: &mut Report,
    ) -> Result<()> {
        if need <= devices.len() {
            return Ok(());
        }
        let extra = need - devices.len();
        let factory = match &mut self.factory {
            Some(f) => f,
            None => {
                let data = self.data.ok_or_else(|| {
                    anyhow!(
                        "synthetic devices need the server's --data-dir and --database-url (or \
                         fewer devices than --macs)"
                    )
                })?;
                let f = SynthFactory::new(data, self.url, self.ca_pem, self.args).await?;
                self.factory.insert(f)
            }
        };
        eprintln!("making {extra} synthetic devices for the {purpose}…");
        let (macs, r) = factory.make(extra, self.args.concurrency).await?;
        devices.extend(macs.into_iter().map(Device::Synth));
        report.synthetic.push(r);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Output

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn cpu_line(c: &CpuUse) -> String {
    let mut s = format!(
        "wall {:.2} s; CPU s: server {}, client {}",
        c.wall_s,
        opt(c.server_cpu_s, 2),
        opt(c.client_cpu_s, 2)
    );
    if let Some(db) = c.db_cpu_s {
        s.push_str(&format!(", PostgreSQL {db:.2}"));
    }
    s.push_str(&format!("; machine busy {}%", opt(c.machine_busy_pct, 0)));
    if let Some(n) = c.server_context_switches {
        s.push_str(&format!("; server context switches {n}"));
    }
    s
}

fn lat_line(l: &Latency) -> String {
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
    )
}

/// The table rows of a `perf` profile's shares (0.5 % and up).
fn profile_rows(row: &mut impl FnMut(&str, &str, String), phase: &str, shares: &[ProfileShare]) {
    for (i, share) in shares.iter().filter(|s| s.percent >= 0.5).enumerate() {
        row(
            phase,
            if i == 0 { "server profile (perf)" } else { "" },
            format!("{:5.1}%  {}", share.percent, share.category),
        );
    }
}

/// The results as a table.
pub fn render_table(r: &Report) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |phase: &str, what: &str, value: String| {
        rows.push((phase.to_owned(), what.to_owned(), value));
    };
    if let Some(e) = &r.enrollment {
        let p = "enrollment";
        row(
            p,
            "Macs (real account-driven flow)",
            format!("{} ({} at a time)", e.macs, e.concurrency),
        );
        row(p, "enrollments/s", format!("{:.2}", e.per_second));
        row(p, "one enrollment", lat_line(&e.latency));
        row(p, "cpu", cpu_line(&e.cpu));
    }
    for s in &r.synthetic {
        row(
            "synthetic",
            "devices made",
            format!(
                "{} ({:?} keys): CA issuance {:.1} s, store binding {:.1} s",
                s.devices, s.key, s.issue_s, s.bind_s
            ),
        );
    }
    if let Some(t) = &r.round_trips {
        let p = "round trips";
        row(p, "command", t.request_type.clone());
        row(
            p,
            "devices",
            format!(
                "{} real-flow + {} synthetic, {} at a time",
                t.devices.real_flow, t.devices.synthetic, t.concurrency
            ),
        );
        row(
            p,
            "queued",
            format!(
                "{} commands by {} API calls in {:.1} s (not timed below)",
                t.round_trips + t.errors,
                t.enqueue_calls,
                t.enqueue_s
            ),
        );
        row(
            p,
            "round trips/s",
            format!(
                "{:.0} overall ({} acknowledged, {} requests); {:.0} while all devices were busy",
                t.per_second, t.round_trips, t.requests, t.steady_per_second
            ),
        );
        row(p, "request → response", lat_line(&t.latency));
        row(
            p,
            "CPU per round trip",
            format!(
                "server {} ms, client {} ms; server context switches {}",
                opt(t.server_cpu_ms_per_round_trip, 3),
                opt(t.client_cpu_ms_per_round_trip, 3),
                opt(t.server_switches_per_round_trip, 1)
            ),
        );
        row(p, "cpu", cpu_line(&t.cpu));
        profile_rows(&mut row, p, &t.server_profile);
        row(
            p,
            "errors",
            match &t.first_error {
                Some(e) => format!("{} (first: {e})", t.errors),
                None => t.errors.to_string(),
            },
        );
    }
    if let Some(f) = &r.fanout {
        let p = "fan-out";
        row(
            p,
            "devices",
            format!(
                "{} targeted = {} real-flow + {} synthetic, {} at a time",
                f.targets, f.devices.real_flow, f.devices.synthetic, f.concurrency
            ),
        );
        row(
            p,
            "queue → last ack",
            format!(
                "{:.2} s (API call {:.2} s, fetch + acknowledge {:.2} s = {:.0} devices/s)",
                f.total_s, f.queue_s, f.fetch_s, f.devices_per_second
            ),
        );
        row(p, "acknowledged", f.acknowledged.to_string());
        row(p, "cpu", cpu_line(&f.cpu));
        profile_rows(&mut row, p, &f.server_profile);
        row(
            p,
            "errors",
            match &f.first_error {
                Some(e) => format!("{} (first: {e})", f.errors),
                None => f.errors.to_string(),
            },
        );
    }
    if let Some(l) = &r.lookup {
        let p = "lookup";
        row(p, "measures", l.measures.clone());
        row(
            p,
            "stored",
            format!(
                "{} enrollments, {} live queue rows ({} backend{}, batch insert {:.1} s)",
                l.enrollments,
                l.queue_rows,
                l.backend,
                if l.async_commit {
                    ", synchronous_commit = off"
                } else {
                    ""
                },
                l.insert_s
            ),
        );
        row(p, "hit (command due)", lat_line(&l.hit));
        row(p, "miss (nothing due)", lat_line(&l.miss));
        row(
            p,
            "concurrent",
            format!(
                "{:.0} lookups/s with {} tasks, p99 {:.2} ms",
                l.concurrent_per_second, l.concurrency, l.concurrent_p99_ms
            ),
        );
        for (i, line) in l.plan.iter().enumerate() {
            row(p, if i == 0 { "plan" } else { "" }, line.clone());
        }
    }
    for c in &r.crypto {
        row(
            "signature",
            &c.key,
            format!(
                "device signs {:.0} µs (CPU {} µs); server: OpenSSL CMS check {:.0} µs \
                 (CPU {} µs), signer cache first contact {:.0} µs (CPU {} µs), cached \
                 certificate {:.0} µs (CPU {} µs); {}-byte body, one thread, in-process",
                c.sign_us,
                opt(c.sign_cpu_us, 0),
                c.verify_us,
                opt(c.verify_cpu_us, 0),
                c.first_contact_us,
                opt(c.first_contact_cpu_us, 0),
                c.cached_verify_us,
                opt(c.cached_verify_cpu_us, 0),
                c.body_bytes
            ),
        );
    }
    for (when, rss) in [
        ("idle", &r.server_idle_rss),
        ("at the end", &r.server_end_rss),
        ("idle, restarted", &r.server_restarted_idle_rss),
    ] {
        if let Some(m) = rss {
            row(
                "server memory",
                when,
                format!(
                    "RSS {:.1} MiB: {:.1} MiB anonymous (heap, stacks), {:.1} MiB file pages \
                     (code, libraries)",
                    m.total_mib, m.anon_mib, m.file_mib
                ),
            );
        }
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = format!(
        "Lanyard command-channel benchmark\nbackend {}; {} cores shared by client and server; \
         N={} M={} C={} K={} R={}\nserver: {}; peak RSS {} MiB (VmHWM), RSS at end {} MiB\n\
         load average before {}, after {}\n\n",
        r.backend,
        r.cores,
        r.macs,
        r.round_trips_requested,
        r.concurrency,
        r.fanout_requested,
        r.lookup_rows,
        if r.server.is_empty() {
            "not started"
        } else {
            &r.server
        },
        opt(r.server_peak_rss_mib, 1),
        opt(r.server_rss_mib, 1),
        r.load_before,
        r.load_after,
    );
    let mut last = String::new();
    for (phase, what, value) in rows {
        let shown = if phase == last {
            String::new()
        } else {
            phase.clone()
        };
        last = phase;
        let pad = w1.saturating_sub(what.chars().count());
        out.push_str(&format!(
            "{shown:<w0$}  {what}{}  {value}\n",
            " ".repeat(pad)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).map(|v| v * 1000).collect());
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Latency::of(Vec::new()).count, 0);
    }

    #[test]
    fn profile_lines_are_grouped() {
        let lanyard = |sym| category("lanyard", sym);
        assert_eq!(
            lanyard("ring_core_0_17_14__p256_point_mul_vartime"),
            "ring signatures and digests (Mdm-Signature; TLS handshakes)"
        );
        for internal in [
            "__ecp_nistz256_mul_montx",
            "ecp_nistz256_windowed_mul",
            "__bn_sqrx8x_reduction",
            "mulx4x_internal",
        ] {
            assert_eq!(
                lanyard(internal),
                "ring signatures and digests (Mdm-Signature; TLS handshakes)",
                "{internal}"
            );
        }
        assert_eq!(
            lanyard("ring_core_0_17_14__aes_gcm_enc_update_vaes_avx2"),
            "TLS (rustls, ring's ciphers)"
        );
        assert_eq!(
            lanyard("rustls::conn::ConnectionCommon<T>::read_tls"),
            "TLS (rustls, ring's ciphers)"
        );
        assert_eq!(
            lanyard("<ring::ec::suite_b::ecdsa::verification::EcdsaVerificationAlgorithm>::verify"),
            lanyard("ring::digest::digest")
        );
        assert_ne!(
            lanyard("alloc::string::String::push_str"),
            lanyard("ring::digest::digest")
        );
        assert_eq!(
            category("libcrypto.so.3", "EVP_DigestVerify"),
            "OpenSSL libcrypto (Mdm-Signature full check)"
        );
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(status_kib(std::process::id(), "VmHWM:").is_some());
        let (busy, total) = machine_ticks().unwrap();
        assert!(total >= busy);
    }

    #[test]
    fn synthetic_answers_queries() {
        let mut cmd = Dictionary::new();
        cmd.insert(
            "RequestType".into(),
            Value::String("DeviceInformation".into()),
        );
        cmd.insert(
            "Queries".into(),
            Value::Array(vec![
                Value::String("OSVersion".into()),
                Value::String("UDID".into()),
            ]),
        );
        let c = ServerCommand {
            uuid: "X".into(),
            request_type: "DeviceInformation".into(),
            command: cmd,
        };
        let r = synth_result(&c);
        let q = r
            .get("QueryResponses")
            .and_then(Value::as_dictionary)
            .unwrap();
        assert_eq!(q.get("OSVersion").and_then(Value::as_string), Some("15.2"));
        assert!(q.get("UDID").is_none());
    }

    #[test]
    fn arguments_parse() {
        let a = BenchArgs::try_parse_from([
            "lanyard-bench",
            "--macs",
            "2",
            "--round-trips",
            "100",
            "--concurrency",
            "8",
            "--json",
        ])
        .unwrap();
        assert_eq!((a.macs, a.round_trips, a.concurrency), (2, 100, 8));
        assert!(BenchArgs::try_parse_from(["lanyard-bench", "--server", "https://x"]).is_err());
        assert!(
            BenchArgs::try_parse_from(["lanyard-bench", "--request-type", "EraseDevice"]).is_err()
        );
    }
}
