//! Secrets at rest: the passwords of pool databases are stored sealed with an AEAD
//! (ChaCha20-Poly1305) under a 32-byte key kept in a file outside the database.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The format byte in front of every sealed secret.
const VERSION: u8 = 1;
/// Bytes of the key's id kept with each sealed secret.
const KEY_ID_LEN: usize = 8;

/// Why the secrets key or a stored secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read or written.
    #[error("secrets key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("secrets key file {path}: {reason}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A stored secret was sealed with another key, or was altered.
    #[error(
        "the stored password of pool `{pool}` cannot be decrypted with this secrets key \
         (key {key_id}; it was sealed with key {sealed_with}): start with the key file it was stored with"
    )]
    WrongKey {
        /// The pool whose secret failed.
        pool: String,
        /// This key's id.
        key_id: String,
        /// The id stored with the secret.
        sealed_with: String,
    },
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// The key that seals stored secrets. Its `Debug` shows only its id.
#[derive(Clone)]
pub struct SecretsKey {
    key: [u8; 32],
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id_hex())
            .finish_non_exhaustive()
    }
}

impl SecretsKey {
    fn from_bytes(key: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        Self { key, id }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, SecretsError> {
        let mut key = [0; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SecretsError::Random)?;
        Ok(Self::from_bytes(key))
    }

    /// The key as 64 hex characters (what a key file holds).
    pub fn to_hex(&self) -> String {
        hex(&self.key)
    }

    /// A key from 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut key = [0; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self::from_bytes(key))
    }

    /// The key's public id: the first bytes of its SHA-256, in hex.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// Reads the key in `path` (64 hex characters); a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
            path: path.to_owned(),
            source,
        })?;
        let key = Self::from_hex(&text).ok_or_else(|| SecretsError::BadKeyFile {
            path: path.to_owned(),
            reason: "must hold 64 hex characters (a 32-byte key)",
        })?;
        warn_if_readable_by_others(path);
        Ok(key)
    }

    /// Reads the key in `path`, or creates one there (mode 0600) if the file does
    /// not exist. Two processes creating it at once end up with the same key.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        match std::fs::metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SecretsError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let io = |source| SecretsError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let key = Self::generate()?;
        // Written to a private temporary file, then linked into place: the name
        // never shows a partial key, and a concurrent creator's key wins whole.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let mut temp = tempfile::Builder::new()
            .prefix(".secrets-key")
            .tempfile_in(dir.unwrap_or(Path::new(".")))
            .map_err(io)?;
        writeln!(temp, "{}", key.to_hex()).map_err(io)?;
        temp.as_file().sync_all().map_err(io)?;
        match std::fs::hard_link(temp.path(), path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), key_id = %key.id_hex(), "generated a secrets key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(source) => Err(io(source)),
        }
    }

    /// Seals `plaintext`, bound to `context` (the pool's name): a sealed secret
    /// moved to another row does not open.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let mut nonce = [0; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| SecretsError::Random)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made for `context`; `pool` names it in errors.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let wrong = |sealed_with: String| SecretsError::WrongKey {
            pool: context.to_owned(),
            key_id: self.id_hex(),
            sealed_with,
        };
        let header = 1 + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < header || sealed[0] != VERSION {
            return Err(wrong("(not a sealed secret)".into()));
        }
        let sealed_with = &sealed[1..=KEY_ID_LEN];
        if sealed_with != self.id {
            return Err(wrong(hex(sealed_with)));
        }
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + KEY_ID_LEN..header]);
        let mut body = sealed[header..].to_vec();
        let plain = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| wrong(format!("{} (altered)", hex(sealed_with))))?;
        Ok(plain.to_vec())
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.key).expect("a 32-byte key"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the secrets key file is readable by other users: chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let key = SecretsKey::generate().expect("random");
        let sealed = key.seal("primary", b"s3cret").expect("sealed");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(key.open("primary", &sealed).expect("opens"), b"s3cret");
        assert!(matches!(
            key.open("other", &sealed),
            Err(SecretsError::WrongKey { .. })
        ));
        let other = SecretsKey::generate().expect("random");
        let error = other.open("primary", &sealed).unwrap_err().to_string();
        assert!(error.contains(&key.id_hex()), "{error}");
        let mut altered = sealed.clone();
        *altered.last_mut().expect("non-empty") ^= 1;
        assert!(key.open("primary", &altered).is_err());
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/secrets.key");
        let created = SecretsKey::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SecretsKey::load_or_create(&path).expect("read");
        assert_eq!(created.id_hex(), again.id_hex());
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(
            SecretsKey::load(&path),
            Err(SecretsError::BadKeyFile { .. })
        ));
        assert!(matches!(
            SecretsKey::load(&dir.path().join("missing")),
            Err(SecretsError::Io { .. })
        ));
    }
}
