//! Typed identifiers: [`ObjectId`], [`ShardId`] and [`NodeId`].
//!
//! `ObjectId` is the BLAKE3 hash of an object's bytes and `ShardId` the BLAKE3
//! hash of one shard's bytes, so both are self-certifying: whoever holds the
//! bytes can check them against the ID. Both display as 64 lowercase hex
//! characters, exactly what `b3sum` prints, and have an 8-character short form
//! for logs.
//!
//! `NodeId` holds the bytes of the node's libp2p `PeerId` (a multihash of its
//! public key). It displays in base58btc, the form libp2p prints in every
//! multiaddr (`/p2p/12D3Koo...`), so that the IDs a user reads in `status`
//! are the ones in the addresses they type. This crate does not depend on
//! libp2p; the node converts between the two.
//!
//! The three types are newtypes, never aliases: a shard ID cannot be passed
//! where an object ID is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length in bytes of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;

/// Largest accepted [`NodeId`] in bytes (an ed25519 `PeerId` is 38 bytes).
pub const NODE_ID_MAX_LEN: usize = 64;

/// Why a textual or binary ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("{kind} ID must be {expected} hex characters, found {found}")]
    HexLength {
        kind: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{kind} ID has a character that is not hex at position {index}: {found:?}")]
    HexChar {
        kind: &'static str,
        index: usize,
        found: char,
    },
    #[error("{kind} ID must be {expected} bytes, found {found}")]
    ByteLength {
        kind: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("node ID is not valid base58: {0}")]
    Base58(String),
    #[error("node ID must be 1 to {max} bytes, found {found}", max = NODE_ID_MAX_LEN)]
    NodeIdLength { found: usize },
}

fn parse_hex32(kind: &'static str, s: &str) -> Result<[u8; HASH_LEN], IdError> {
    let expected = HASH_LEN * 2;
    let chars = s.chars().count();
    if chars != expected {
        return Err(IdError::HexLength {
            kind,
            expected,
            found: chars,
        });
    }
    let mut out = [0u8; HASH_LEN];
    let bytes = s.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = hex_val(kind, bytes, 2 * i)?;
        let lo = hex_val(kind, bytes, 2 * i + 1)?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_val(kind: &'static str, bytes: &[u8], index: usize) -> Result<u8, IdError> {
    let c = bytes[index];
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(IdError::HexChar {
            kind,
            index,
            found: char::from(c),
        }),
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; HASH_LEN]);

        impl $name {
            /// Wraps raw hash bytes.
            pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
                Self(bytes)
            }

            /// BLAKE3 of `data`.
            pub fn of(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }

            /// Takes the ID from a BLAKE3 hash computed elsewhere (for
            /// example by a streaming hasher).
            pub fn from_hash(hash: blake3::Hash) -> Self {
                Self(*hash.as_bytes())
            }

            pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
                &self.0
            }

            /// The first 8 hex characters, for logs.
            pub fn short(&self) -> String {
                let mut s = self.to_string();
                s.truncate(8);
                s
            }

            /// Parses a slice that must be exactly 32 bytes.
            pub fn try_from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                let arr: [u8; HASH_LEN] = bytes.try_into().map_err(|_| IdError::ByteLength {
                    kind: $kind,
                    expected: HASH_LEN,
                    found: bytes.len(),
                })?;
                Ok(Self(arr))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_hex32($kind, s.trim()).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_bytes(BytesVisitor::<HASH_LEN>($kind))
                    .and_then(|v| Self::try_from_slice(&v).map_err(serde::de::Error::custom))
            }
        }
    };
}

hash_id!(
    /// BLAKE3 of an object's bytes; what `b3sum FILE` prints.
    ObjectId,
    "object"
);
hash_id!(
    /// BLAKE3 of one shard's bytes.
    ShardId,
    "shard"
);

/// Accepts a CBOR byte string (or, for formats without one, a sequence of
/// u8) of at most `MAX` bytes.
struct BytesVisitor<const MAX: usize>(&'static str);

impl<'de, const MAX: usize> serde::de::Visitor<'de> for BytesVisitor<MAX> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} ID of at most {MAX} bytes", self.0)
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        if v.len() > MAX {
            return Err(E::invalid_length(v.len(), &self));
        }
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        self.visit_bytes(&v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            if out.len() == MAX {
                return Err(serde::de::Error::invalid_length(MAX + 1, &self));
            }
            out.push(b);
        }
        Ok(out)
    }
}

/// The bytes of a node's libp2p `PeerId`, displayed in base58btc.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Vec<u8>);

impl NodeId {
    /// Wraps `PeerId::to_bytes()`. Fails on an empty or over-long ID.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, IdError> {
        if bytes.is_empty() || bytes.len() > NODE_ID_MAX_LEN {
            return Err(IdError::NodeIdLength { found: bytes.len() });
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The last 8 base58 characters (the leading ones of an ed25519 peer ID
    /// are always `12D3KooW`, so the tail is what tells nodes apart).
    pub fn short(&self) -> String {
        let s = self.to_string();
        let n = s.len();
        s[n.saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = bs58::decode(s.trim())
            .into_vec()
            .map_err(|e| IdError::Base58(e.to_string()))?;
        Self::from_bytes(bytes)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BytesVisitor::<NODE_ID_MAX_LEN>("node"))
            .and_then(|v| Self::from_bytes(v).map_err(serde::de::Error::custom))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn object_id_is_blake3(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let id = ObjectId::of(&data);
            prop_assert_eq!(id.to_string(), blake3::hash(&data).to_hex().to_string());
            prop_assert_eq!(id.to_string().parse::<ObjectId>().unwrap(), id);
        }

        #[test]
        fn hex_parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<ShardId>();
            let _ = s.parse::<NodeId>();
        }

        #[test]
        fn node_id_round_trips(bytes in proptest::collection::vec(any::<u8>(), 1..=NODE_ID_MAX_LEN)) {
            let id = NodeId::from_bytes(bytes).unwrap();
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn bad_hex_is_named() {
        let mut s = "a".repeat(64);
        assert!(matches!(
            s[..63].parse::<ObjectId>(),
            Err(IdError::HexLength {
                expected: 64,
                found: 63,
                ..
            })
        ));
        s.replace_range(10..11, "g");
        assert_eq!(
            s.parse::<ObjectId>(),
            Err(IdError::HexChar {
                kind: "object",
                index: 10,
                found: 'g'
            })
        );
        // A multi-byte character of the right char count must not panic.
        let t = format!("é{}", "a".repeat(63));
        assert!(t.parse::<ObjectId>().is_err());
        assert!("".parse::<NodeId>().is_err());
        assert!("0OIl".parse::<NodeId>().is_err());
    }

    #[test]
    fn uppercase_hex_and_short_form() {
        let id = ObjectId::of(b"hello");
        let upper = id.to_string().to_uppercase();
        assert_eq!(upper.parse::<ObjectId>().unwrap(), id);
        assert_eq!(id.short(), id.to_string()[..8]);
    }

    #[test]
    fn cbor_round_trip_and_wrong_length() {
        let id = ShardId::of(b"x");
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        let back: ShardId = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, id);
        let mut short = Vec::new();
        ciborium::into_writer(&ciborium::Value::Bytes(vec![1, 2, 3]), &mut short).unwrap();
        assert!(ciborium::from_reader::<ShardId, _>(&short[..]).is_err());
    }
}
