//! `[http]` configuration: where the HTTP server listens and who may write.
//!
//! ```toml
//! [http]
//! listen = "127.0.0.1:9464"     # health, readiness, metrics and the API
//! # token = "..."               # bearer token of the write methods (PUT,
//! #                             # DELETE); none: writes are disabled.
//! #                             # From a file: SMSVOICE_HTTP__TOKEN_FILE=/path
//! write_timeout_ms = 10000      # how long a PUT/DELETE waits to see its
//! #                             # change read back from the changelog
//! ```

use std::net::SocketAddr;

/// The HTTP server of `smsvoice run` and `smsvoice demo --serve`.
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, `host:port`. Default `"127.0.0.1:9464"`
    /// (loopback: set `0.0.0.0:9464` in a pod so that probes and Prometheus
    /// reach it). Port 0 picks a free port (printed at start). Empty: no
    /// HTTP server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token the write methods (PUT and DELETE of the opt-out API)
    /// require, compared in constant time. None: the write methods answer
    /// 403. A secret: read it from a file with `SMSVOICE_HTTP__TOKEN_FILE`.
    #[serde(default)]
    pub token: Option<String>,
    /// How long a PUT or DELETE waits to read its change back from the
    /// opt-out changelog before answering 202 (accepted, not yet visible)
    /// instead of 200. Default 10000.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("write_timeout_ms", &self.write_timeout_ms)
            .finish()
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

fn default_write_timeout_ms() -> u64 {
    10_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            token: None,
            write_timeout_ms: default_write_timeout_ms(),
        }
    }
}

impl HttpConfig {
    /// The address to listen on, `None` when the server is off; an error
    /// names the key.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|e| {
            format!(
                "http.listen {:?}: {e} (expected host:port, e.g. 127.0.0.1:9464)",
                self.listen
            )
        })
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        self.address()?;
        if self.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
            return Err("http.token: shorter than 16 characters".into());
        }
        if self.write_timeout_ms == 0 {
            return Err("http.write_timeout_ms: must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_with_writes_disabled() {
        let c: HttpConfig = toml::from_str("").expect("empty");
        assert_eq!(
            c.address(),
            Ok(Some("127.0.0.1:9464".parse().expect("addr")))
        );
        assert!(c.token.is_none());
        assert!(c.validate().is_ok());
        let off: HttpConfig = toml::from_str("listen = \"\"").expect("off");
        assert_eq!(off.address(), Ok(None));
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let bad: HttpConfig = toml::from_str("listen = \"localhost\"").expect("parses");
        assert!(bad
            .validate()
            .expect_err("listen")
            .starts_with("http.listen"));
        let short: HttpConfig = toml::from_str("token = \"abc\"").expect("parses");
        assert!(short
            .validate()
            .expect_err("token")
            .starts_with("http.token"));
        assert!(toml::from_str::<HttpConfig>("port = 1").is_err());
        assert!(!format!(
            "{:?}",
            HttpConfig {
                token: Some("sekrit-sekrit-sekrit".into()),
                ..HttpConfig::default()
            }
        )
        .contains("sekrit"));
    }
}
