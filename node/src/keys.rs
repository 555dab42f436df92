//! The node's identity key and the network's shared credential.
//!
//! - Identity: an ed25519 keypair in `DIR/identity.key` (libp2p protobuf
//!   encoding, mode 0600), created by `init`. Its `PeerId` is the node's
//!   `NodeId`, so a restart keeps the ID.
//! - Network key: 32 random bytes in the go-libp2p pre-shared-key file
//!   format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex characters). Every
//!   TCP connection is encrypted with it (libp2p pnet, XSalsa20) before the
//!   Noise handshake, so a peer without the same key cannot complete a
//!   handshake at all: it sees no protocol, no peer ID, no shard.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

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
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
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
pub fn create_network_key(path: &Path) -> Result<PreSharedKey, KeyError> {
    let psk = PreSharedKey::new(rand::random());
    write_network_key(path, psk)?;
    Ok(psk)
}

/// Writes `psk` to a new file at `path` (refusing to overwrite).
pub fn write_network_key(path: &Path, psk: PreSharedKey) -> Result<(), KeyError> {
    write_secret(path, psk.to_key_file().as_bytes())
}

/// Reads and checks a network key file.
pub fn load_network_key(path: &Path) -> Result<PreSharedKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_network_key(&text).map_err(|reason| KeyError::BadNetworkKey {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the key file text. Checked here rather than by libp2p's parser,
/// which slices the hex by byte offsets and would panic on non-ASCII input.
pub fn parse_network_key(text: &str) -> Result<PreSharedKey, String> {
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
    Ok(PreSharedKey::new(key))
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
