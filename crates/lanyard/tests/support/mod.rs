//! Runs the real `lanyard` binary for end-to-end tests: `serve` on port 0 over TLS with a fresh
//! data directory, against SQLite or a fresh PostgreSQL database, plus admin sub-commands on the
//! same data.
#![allow(dead_code)]

pub mod balancer;
pub mod browser;
pub mod oidc;
pub mod portal;
pub mod pushcert;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lanyard_testkit::scratch_db::ScratchDb;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The password [`Server::read_only_session`] gives the read-only administrator `viewer`.
pub const VIEWER_PASSWORD: &str = "viewer password 123";

pub struct Server {
    pub url: String,
    pub admin_password: String,
    /// What `serve` printed (log lines included) up to its listening line.
    pub startup_log: Vec<String>,
    /// Everything `serve` printed to stdout (its log, without colour codes), as it comes; see
    /// [`Server::wait_for_log`].
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub data_dir: tempfile::TempDir,
    pub database_url: String,
    child: Child,
    /// The PostgreSQL database this server was started on, dropped with it.
    scratch: Option<ScratchDb>,
    push_topic: std::sync::Mutex<Option<String>>,
}

/// A fresh PostgreSQL database (dropped with the value, also when the test panics), or `None`
/// (loudly) when PostgreSQL is unreachable outside CI.
pub async fn fresh_pg_database() -> Option<ScratchDb> {
    ScratchDb::for_test("lanyard_e2e", "this end-to-end test").await
}

/// A log line without its terminal colour codes (`ESC [ … m`), as a person reads it.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lanyard")
}

impl Server {
    /// Starts `lanyard serve`; `None` when the backend is unavailable (PostgreSQL outside CI).
    pub async fn start(db: Db) -> Option<Server> {
        Server::start_with(db, &[]).await
    }

    /// [`Server::start`] with extra environment for `lanyard serve`, e.g.
    /// `("LANYARD_SCEP_ALLOW_DES", "true")` or `("LANYARD_BEHIND_PROXY", "true")` (plain HTTP;
    /// `url` is then `http://…`).
    pub async fn start_with(db: Db, env: &[(&str, &str)]) -> Option<Server> {
        let data_dir = tempfile::tempdir().unwrap();
        let (database_url, scratch) = match db {
            Db::Sqlite => (
                format!("sqlite://{}/lanyard.db", data_dir.path().display()),
                None,
            ),
            Db::Postgres => {
                let db = fresh_pg_database().await?;
                (db.url().to_string(), Some(db))
            }
        };
        Some(Server::start_on(data_dir, database_url, scratch, env))
    }

    /// A second `lanyard serve` on this server's database, as a scaled-out deployment runs
    /// it: its own data directory holding only a copy of the secret key (every process of one
    /// deployment seals and opens keys with the same one), the same `env`.
    pub fn start_peer(&self, env: &[(&str, &str)]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        let key = self.data_dir.path().join("secret.key");
        let copy = data_dir.path().join("secret.key");
        std::fs::copy(&key, &copy).unwrap();
        Server::start_on(data_dir, self.database_url.clone(), None, env)
    }

    /// Starts `lanyard serve` on a given data directory and database URL; `scratch` (the
    /// database, when the server owns it) is dropped with the server.
    pub fn start_on(
        data_dir: tempfile::TempDir,
        database_url: String,
        scratch: Option<ScratchDb>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("LANYARD_DATA_DIR", data_dir.path())
            .env("LANYARD_DATABASE_URL", &database_url)
            .env("LANYARD_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            // Read to the end, so the server never blocks on a full pipe; after start-up the
            // lines are only kept.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(without_colours(&line));
                let _ = tx.send(line);
            }
        });
        let mut startup = lanyard_testkit::serve_output::StartupLines::default();
        let mut startup_log = Vec::new();
        let url = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("lanyard serve printed no listening line");
            startup_log.push(line.clone());
            if let Some(url) = startup.read(&line) {
                break url.to_string();
            }
        };
        let admin_password = startup.admin_password().to_string();
        Server {
            url,
            admin_password,
            startup_log,
            log,
            data_dir,
            database_url,
            child,
            scratch,
            push_topic: Default::default(),
        }
    }

    /// The first line of the server's log for which `matches` holds, waiting for it (a line
    /// is written before the answer it belongs to, but read from the pipe a little later).
    /// Panics, with the log, when none came within a minute.
    pub fn wait_for_log(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        for _ in 0..1200 {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no log line {what}; the log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// Kills the process with SIGKILL (no graceful shutdown, as a crash or the OOM killer
    /// would) and waits until it is gone.
    pub fn kill_now(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts `lanyard serve` again on this server's data directory and database with `env`
    /// (after [`Server::kill_now`], as a supervisor restarts a crashed process); `url` is the
    /// new process's.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        let mut next = Server::start_on(
            data_dir,
            self.database_url.clone(),
            self.scratch.take(),
            env,
        );
        next.admin_password = std::mem::take(&mut self.admin_password);
        next.push_topic = std::sync::Mutex::new(self.push_topic());
        drop(std::mem::replace(self, next));
    }

    /// Signs in as the first administrator (the one-time password `serve` printed) and returns
    /// the session token for `Authorization: Bearer`.
    pub async fn admin_session(&self, c: &reqwest::Client) -> String {
        let r = c
            .post(format!("{}/api/v1/sessions", self.url))
            .json(&serde_json::json!({"username": "admin", "password": self.admin_password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        body["session_token"].as_str().unwrap().to_string()
    }

    /// Creates the read-only administrator `viewer` (password [`VIEWER_PASSWORD`]) with the
    /// CLI.
    pub fn create_viewer(&self) {
        let (ok, _, err) = self.cli_stdin(
            &["admin", "create", "viewer", "--role", "read-only"],
            &format!("{VIEWER_PASSWORD}\n"),
        );
        assert!(ok, "{err}");
    }

    /// Creates the read-only administrator `viewer` ([`Server::create_viewer`]) and returns an
    /// API session token for it.
    pub async fn read_only_session(&self, c: &reqwest::Client) -> String {
        self.create_viewer();
        let r = c
            .post(format!("{}/api/v1/sessions", self.url))
            .json(&serde_json::json!({"username": "viewer", "password": VIEWER_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        body["session_token"].as_str().unwrap().to_string()
    }

    /// Uploads a fake APNs push certificate for a fresh MDM topic with `lanyard push-cert
    /// upload` and returns the topic. Lanyard enrolls nothing before a push certificate exists
    /// (its topic is every profile's `Topic`), so every test that enrolls a Mac calls this.
    pub fn upload_push_certificate(&self) -> String {
        let topic = lanyard_testkit::fake_apns::fake_mdm_topic();
        let cert = lanyard_testkit::fake_apns::fake_push_certificate(&topic).unwrap();
        let (cert_path, key_path) = cert.write_pem_files(self.data_dir.path()).unwrap();
        let (ok, out, err) = self.cli(&[
            "push-cert",
            "upload",
            "--cert",
            &cert_path.display().to_string(),
            "--key",
            &key_path.display().to_string(),
        ]);
        assert!(ok, "lanyard push-cert upload: {err}");
        assert!(out.contains(&topic), "{out}");
        *self.push_topic.lock().unwrap() = Some(topic.clone());
        topic
    }

    /// The topic [`Server::upload_push_certificate`] uploaded, for the simulated Mac to
    /// insist on (`SimOptions::push_topic`).
    pub fn push_topic(&self) -> Option<String> {
        self.push_topic.lock().unwrap().clone()
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.path().join("ca.pem")).unwrap()
    }

    /// An HTTP client that trusts only the server's own CA.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem()).unwrap())
            .build()
            .unwrap()
    }

    /// Runs an admin sub-command against this server's data; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli_with(self.data_dir.path(), &self.database_url, args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        cli_with(self.data_dir.path(), &self.database_url, args, Some(stdin))
    }

    pub async fn stop(mut self) {
        self.terminate();
        drop(self.scratch.take());
    }

    /// Stops the server as an operator does (SIGTERM) and hands back its data directory.
    pub fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.terminate();
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap())
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A server whose test panicked before `stop` is killed rather than left running.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn cli_with(
    data_dir: &Path,
    database_url: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .env("LANYARD_DATA_DIR", data_dir)
        .env("LANYARD_DATABASE_URL", database_url)
        .env_remove("LANYARD_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(mut s) = child.stdin.take() {
        if let Some(text) = stdin {
            s.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `lanyard serve` on the data that is expected to refuse to start, and returns what it
/// wrote to stderr. A server that starts anyway is killed (after a minute) and the test fails.
pub fn serve_refuses(data_dir: &Path, database_url: &str, env: &[(&str, &str)]) -> String {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LANYARD_DATA_DIR", data_dir)
        .env("LANYARD_DATABASE_URL", database_url)
        .env("LANYARD_LOG", "warn")
        .env_remove("LANYARD_CONFIG")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!status.success(), "lanyard serve exited successfully");
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("lanyard serve started instead of refusing");
}

/// Writes a file readable by its owner only (a key or token file as an operator would).
pub fn write_private_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A User Enrollment Mac is put under declarative management when it enrolls (its first
/// user-channel TokenUpdate queues DeclarativeManagement): the Mac synchronises on its user
/// channel, as a real one does when the push wakes it. Asserts that this is the one command
/// waiting there.
pub async fn sync_declarative_start(mac: &mut lanyard_testkit::SimMac) {
    let handled = mac
        .run_commands(lanyard_testkit::Channel::User, 5)
        .await
        .unwrap();
    assert_eq!(
        handled
            .iter()
            .map(|h| h.request_type.as_str())
            .collect::<Vec<_>>(),
        ["DeclarativeManagement"],
        "the user channel holds the DeclarativeManagement started at enrollment"
    );
}
