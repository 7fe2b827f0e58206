//! Short-lived TURN credentials from a secret the TURN server shares
//! (coturn's `use-auth-secret` with `static-auth-secret`, the scheme known
//! as the "TURN REST API").
//!
//! The TURN server checks such a credential without any list of users: the
//! username carries its own expiry, and the credential is an HMAC of the
//! username under the shared secret. So every connection gets credentials
//! of its own in its `hello`, and they stop working a while after that peer
//! is gone; a static password, by contrast, goes to everyone who opens the
//! watch page and works for as long as the TURN server keeps it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::hmac;

use super::ice::lacks_credentials;
use crate::protocol::IceServer;

/// What makes a [`TurnRest`] unusable.
#[derive(Debug, thiserror::Error)]
pub enum TurnConfigError {
    #[error("cannot read the TURN secret file {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TURN secret is empty (expected the TURN server's static-auth-secret)")]
    EmptySecret,
    #[error("the lifetime of TURN credentials must be more than 0 s")]
    ZeroTtl,
}

/// The shared secret and how long the credentials made with it last.
#[derive(Clone)]
pub struct TurnRest {
    key: hmac::Key,
    ttl: Duration,
}

impl std::fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TurnRest")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TurnRest {
    /// `secret` as the TURN server has it (its bytes are the HMAC key).
    pub fn new(secret: &[u8], ttl: Duration) -> Result<TurnRest, TurnConfigError> {
        if secret.is_empty() {
            return Err(TurnConfigError::EmptySecret);
        }
        if ttl.is_zero() {
            return Err(TurnConfigError::ZeroTtl);
        }
        // coturn uses HMAC-SHA1 unless told otherwise; it is what the REST
        // scheme specifies, and HMAC-SHA1 is not broken as a MAC.
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
        Ok(TurnRest { key, ttl })
    }

    /// The secret from a text file; a trailing newline (as editors and
    /// `echo` leave) is not part of it.
    pub fn from_file(path: &Path, ttl: Duration) -> Result<TurnRest, TurnConfigError> {
        let bytes = std::fs::read(path).map_err(|source| TurnConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let end = bytes
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        TurnRest::new(&bytes[..end], ttl)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `(username, credential)` for `peer` asking at `now`: the username is
    /// `<unix seconds of expiry>:<peer>`, the credential
    /// base64(HMAC-SHA1(secret, username)) with padding, as coturn checks it.
    pub fn credentials(&self, peer: &str, now: SystemTime) -> (String, String) {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let expiry = since_epoch.saturating_add(self.ttl).as_secs();
        let username = format!("{expiry}:{peer}");
        let tag = hmac::sign(&self.key, username.as_bytes());
        let credential = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        (username, credential)
    }
}

/// The `ice_servers` of one connection's `hello`: `servers` as configured,
/// with credentials made for `peer` at `now` in every TURN entry that has
/// none (when there is a secret to make them with).
pub(crate) fn ice_servers_for(
    servers: &[IceServer],
    rest: Option<&TurnRest>,
    peer: &str,
    now: SystemTime,
) -> Vec<IceServer> {
    servers
        .iter()
        .map(|s| match rest {
            Some(rest) if lacks_credentials(s) => {
                let (username, credential) = rest.credentials(peer, now);
                IceServer {
                    urls: s.urls.clone(),
                    username: Some(username),
                    credential: Some(credential),
                }
            }
            _ => s.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ice::tests::entry;

    const HOUR: Duration = Duration::from_secs(3600);

    /// The expected value comes from Python's standard library, not from
    /// this code:
    /// python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"north-wind",b"1700000000:Qx7-peer_id",hashlib.sha1).digest()).decode())'
    #[test]
    fn credentials_match_an_independent_hmac() {
        let rest = TurnRest::new(b"north-wind", HOUR).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000) - HOUR;
        let (user, cred) = rest.credentials("Qx7-peer_id", now);
        assert_eq!(user, "1700000000:Qx7-peer_id");
        assert_eq!(cred, "Q8b6+jnkYIwq+SwHsAUGEFFrdgI=");
    }

    #[test]
    fn only_turn_entries_without_credentials_get_them() {
        let rest = TurnRest::new(b"north-wind", 2 * HOUR).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let servers = [
            entry("stun:s.example.org", None, None),
            entry("turn:t.example.org", Some("alice"), Some("static")),
            entry("turns:t.example.org:5349?transport=tcp", None, None),
        ];
        let out = ice_servers_for(&servers, Some(&rest), "p1", now);
        assert_eq!(out[..2], servers[..2]);
        let (user, cred) = rest.credentials("p1", now);
        assert_eq!(user, "1007200:p1");
        assert_eq!(
            out[2],
            entry(
                "turns:t.example.org:5349?transport=tcp",
                Some(&user),
                Some(&cred)
            )
        );
        // No secret: the entries go out as configured.
        assert_eq!(ice_servers_for(&servers, None, "p1", now), servers);
    }

    #[test]
    fn secret_file_loses_its_trailing_newline_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("ptr-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let now = UNIX_EPOCH;
        let plain = TurnRest::new(b"north-wind", HOUR).unwrap();
        std::fs::write(&path, "north-wind\r\n").unwrap();
        let from_file = TurnRest::from_file(&path, HOUR).unwrap();
        assert_eq!(from_file.credentials("p", now), plain.credentials("p", now));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            TurnRest::from_file(&path, HOUR),
            Err(TurnConfigError::EmptySecret)
        ));
        assert!(matches!(
            TurnRest::from_file(&dir.join("missing"), HOUR),
            Err(TurnConfigError::Read { .. })
        ));
        assert!(matches!(
            TurnRest::new(b"x", Duration::ZERO),
            Err(TurnConfigError::ZeroTtl)
        ));
        assert!(!format!("{plain:?}").contains("north"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
