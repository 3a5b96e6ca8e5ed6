//! A configured secret (a shared key, a password).
//!
//! Why a type: config structs derive `Debug`, and `Debug` output reaches
//! logs (`logferry validate`, panics, `tracing` fields). Wrapping the value
//! makes printing it impossible by accident; reading it takes a call to
//! [`Secret::expose`] at the one place it is used.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for the digest it goes into; never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct C {
            password: Secret,
        }
        let c: C = toml::from_str("password = \"hunter2\"").unwrap();
        assert_eq!(c.password.expose(), "hunter2");
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
