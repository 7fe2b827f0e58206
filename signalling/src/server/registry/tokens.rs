//! Reclaim tokens that a restarted server can still check.
//!
//! A tree's token is an HMAC of its id under the server's key, so checking
//! one needs no stored state: a server restarted with the same key (from
//! `--secret-file`) lets a source take back a tree it never saw, and nobody
//! who merely knows the tree id (it is in every watch link) can.

use std::io::{ErrorKind, Write};
use std::path::Path;

use base64::Engine;
use ring::hmac;

const KEY_BYTES: usize = 32;

#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A fresh key from the OS CSPRNG: tokens die with this process.
    pub fn random() -> TokenKey {
        let mut bytes = [0u8; KEY_BYTES];
        rand::fill(&mut bytes[..]);
        TokenKey::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The key stored in `path`, created (readable by this user only) with a
    /// random key when the file does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<TokenKey> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == KEY_BYTES => Ok(TokenKey::from_bytes(&bytes)),
            Ok(bytes) => Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{} holds {} bytes, a key is {KEY_BYTES}; delete it to make a new one",
                    path.display(),
                    bytes.len()
                ),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut bytes = [0u8; KEY_BYTES];
                rand::fill(&mut bytes[..]);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                opts.open(path)?.write_all(&bytes)?;
                Ok(TokenKey::from_bytes(&bytes))
            }
            Err(e) => Err(e),
        }
    }

    /// The token of `tree`: URL-safe, 256 bits.
    pub fn token(&self, tree: &str) -> String {
        let tag = hmac::sign(&self.0, tree.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// True if `token` is `tree`'s (in constant time).
    pub fn verify(&self, tree: &str, token: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        hmac::verify(&self.0, tree.as_bytes(), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_check_against_their_tree_and_key_only() {
        let key = TokenKey::random();
        let t = key.token("tree-a");
        assert!(key.verify("tree-a", &t));
        assert!(!key.verify("tree-b", &t));
        assert!(!key.verify("tree-a", &key.token("tree-b")));
        assert!(!TokenKey::random().verify("tree-a", &t));
        assert!(!key.verify("tree-a", "not base64 !"));
        assert!(!key.verify("tree-a", ""));
    }

    #[test]
    fn a_key_file_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("ptr-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        let first = TokenKey::load_or_create(&path).expect("created");
        let again = TokenKey::load_or_create(&path).expect("loaded");
        assert!(again.verify("t", &first.token("t")));
        std::fs::write(&path, b"short").expect("write");
        let err = TokenKey::load_or_create(&path).expect_err("a 5-byte key");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
