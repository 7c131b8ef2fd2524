//! What `lanyard serve` prints on its standard output as it starts, read by the tools that
//! start it (the binary's integration tests, `lanyard-bench`): the listening line and, on a
//! first start, the administrator's one-time password (the line after the one that announces
//! it).

/// Feed it `lanyard serve`'s lines in order until [`url`](Self::url) is known.
#[derive(Debug, Default)]
pub struct StartupLines {
    url: Option<String>,
    admin_password: String,
    password_next: bool,
}

impl StartupLines {
    /// Reads one line; returns the base URL once the listening line has come.
    pub fn read(&mut self, line: &str) -> Option<&str> {
        if self.password_next && !line.trim().is_empty() {
            self.admin_password = line.trim().to_owned();
            self.password_next = false;
        }
        if line.contains("one-time password") {
            self.password_next = true;
        }
        if let Some(rest) = line.strip_prefix("lanyard listening on ") {
            self.url = rest.split_whitespace().next().map(str::to_owned);
        }
        self.url.as_deref()
    }

    /// The base URL (`https://host:port`), once read.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The one-time administrator password printed on a first start (empty if none was).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_password_and_the_listening_line() {
        let mut lines = StartupLines::default();
        assert_eq!(
            lines.read("created administrator admin; one-time password:"),
            None
        );
        assert_eq!(lines.read(""), None);
        assert_eq!(lines.read("  s3cret-Pass  "), None);
        let url = lines.read("lanyard listening on https://127.0.0.1:8443 (public URL x)");
        assert_eq!(url, Some("https://127.0.0.1:8443"));
        assert_eq!(lines.admin_password(), "s3cret-Pass");
        // A later start prints no password.
        let mut again = StartupLines::default();
        again.read("lanyard listening on https://127.0.0.1:1 (public URL y)");
        assert_eq!(again.url(), Some("https://127.0.0.1:1"));
        assert_eq!(again.admin_password(), "");
    }
}
