//! The node's identity key and the network's shared credential.
//!
//! - Identity: an ed25519 keypair in `DIR/identity.key` (libp2p protobuf
//!   encoding, mode 0600), created by `init`. Its `PeerId` is the node's
//!   `NodeId`, so a restart keeps the ID.
//! - Network key: 32 random bytes in the go-libp2p pre-shared-key file
//!   format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex characters). A
//!   secret derived from it is the prologue of every Noise handshake
//!   ([`NetworkKey::noise_prologue`]): Noise mixes the prologue into the
//!   handshake hash that authenticates every handshake message, so a peer
//!   without the same key fails the handshake. It learns no peer ID, reaches
//!   no protocol and touches no shard. (ARCHITECTURE.md says why this
//!   replaced libp2p pnet.)

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// The network's shared credential (32 secret bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey([u8; 32]);

impl NetworkKey {
    pub fn random() -> Self {
        NetworkKey(rand::random())
    }

    /// The go-libp2p key file text.
    pub fn to_key_file(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")
    }

    /// The Noise prologue: a key derived from the network key, so that the
    /// key itself never enters another protocol.
    pub fn noise_prologue(&self) -> Vec<u8> {
        blake3::derive_key("dynostore 2026-11 noise prologue v1", &self.0).to_vec()
    }

    /// The key every admitted node derives S3 secrets from
    /// ([`crate::s3::auth`]): derived, so the network key itself never
    /// enters another protocol.
    pub fn s3_secret_base(&self) -> [u8; 32] {
        blake3::derive_key("dynostore 2026-12 s3 secret keys v1", &self.0)
    }

    /// A short public fingerprint, for logs.
    pub fn fingerprint(&self) -> String {
        let h = blake3::derive_key("dynostore 2026-11 key fingerprint v1", &self.0);
        h[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NetworkKey({})", self.fingerprint())
    }
}

/// Problems with key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path} is not a valid identity key: {reason}")]
    BadIdentity { path: PathBuf, reason: String },
    #[error(
        "{path} is not a network key: {reason} (expected the lines \
         '/key/swarm/psk/1.0.0/', '/base16/' and 64 hex characters; \
         create one with 'dynostore network-key FILE')"
    )]
    BadNetworkKey { path: PathBuf, reason: String },
}

/// Writes `bytes` to a new file with owner-only permissions; refuses to
/// overwrite.
pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeyError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a secret (a key or token file): a new file, mode 0600, synced.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    write_secret(path, bytes)
}

/// Creates a new ed25519 identity at `path` (refusing to overwrite).
pub fn create_identity(path: &Path) -> Result<Keypair, KeyError> {
    let kp = Keypair::generate_ed25519();
    let bytes = kp
        .to_protobuf_encoding()
        .map_err(|e| KeyError::BadIdentity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_secret(path, &bytes)?;
    Ok(kp)
}

/// Loads the identity at `path`.
pub fn load_identity(path: &Path) -> Result<Keypair, KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| KeyError::BadIdentity {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes a new random network key to `path` (refusing to overwrite).
pub fn create_network_key(path: &Path) -> Result<NetworkKey, KeyError> {
    let psk = NetworkKey::random();
    write_network_key(path, &psk)?;
    Ok(psk)
}

/// Writes `psk` to a new file at `path` (refusing to overwrite).
pub fn write_network_key(path: &Path, psk: &NetworkKey) -> Result<(), KeyError> {
    write_secret(path, psk.to_key_file().as_bytes())
}

/// Reads and checks a network key file.
pub fn load_network_key(path: &Path) -> Result<NetworkKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_network_key(&text).map_err(|reason| KeyError::BadNetworkKey {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the key file text (the go-libp2p pre-shared-key format).
pub fn parse_network_key(text: &str) -> Result<NetworkKey, String> {
    let mut lines = text.lines();
    if lines.next() != Some("/key/swarm/psk/1.0.0/") {
        return Err("the first line is not '/key/swarm/psk/1.0.0/'".into());
    }
    if lines.next() != Some("/base16/") {
        return Err("the second line is not '/base16/'".into());
    }
    let hex = lines.next().unwrap_or("").trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the key line must be 64 hex characters, found {} characters",
            hex.chars().count()
        ));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|e| format!("bad hex at byte {i}: {e}"))?;
    }
    Ok(NetworkKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_key_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("net.key");
        let k = create_network_key(&p).unwrap();
        assert_eq!(load_network_key(&p).unwrap(), k);
        assert!(matches!(
            create_network_key(&p),
            Err(KeyError::Exists { .. })
        ));
        for bad in [
            "",
            "/key/swarm/psk/1.0.0/\n/base16/\nabc\n",
            "/key/swarm/psk/1.0.0/\n/base64/\n",
            &format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "é".repeat(32)),
        ] {
            assert!(parse_network_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identity_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.key");
        let kp = create_identity(&p).unwrap();
        let again = load_identity(&p).unwrap();
        assert_eq!(kp.public().to_peer_id(), again.public().to_peer_id());
        fs::write(dir.path().join("junk"), b"nope").unwrap();
        assert!(load_identity(&dir.path().join("junk")).is_err());
    }
}
