//! Entity, shard and type identifiers, and the entity-to-shard mapping.

use std::fmt;

use compact_str::{CompactString, ToCompactString};
use serde::{Deserialize, Serialize};

/// Identifies one entity of a type (a cart id, a device id).
///
/// Ids of up to 24 bytes are kept inline, without an allocation: the id is
/// built for every message, and decoded for every message from another
/// node, so a short id costs no `malloc`/`free` on the hot path. Numbers
/// convert without a `String` in between (`EntityId::from(42u64)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntityId(CompactString);

impl EntityId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for EntityId {
    fn from(s: &str) -> Self {
        Self(CompactString::from(s))
    }
}

impl From<&String> for EntityId {
    fn from(s: &String) -> Self {
        Self(CompactString::from(s.as_str()))
    }
}

impl From<String> for EntityId {
    fn from(s: String) -> Self {
        // Short ids move inline; the String's buffer is freed here.
        Self(CompactString::from(s.as_str()))
    }
}

impl From<u64> for EntityId {
    fn from(n: u64) -> Self {
        Self(n.to_compact_string())
    }
}

impl From<u32> for EntityId {
    fn from(n: u32) -> Self {
        Self(n.to_compact_string())
    }
}

/// A group of entities that moves between nodes as one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// The name of an entity type; one region and one coordinator per type and node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TypeName(pub String);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TypeName {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The shard of `entity` among `num_shards`: FNV-1a (64 bit) of the id's UTF-8
/// bytes, modulo `num_shards`.
///
/// This is a wire-level contract: every node, build and version must agree,
/// so it never changes (pinned by a snapshot test). `num_shards` of 0 is
/// treated as 1.
///
/// ```
/// use sharding_core::{shard_of, EntityId, ShardId};
/// assert_eq!(shard_of(&EntityId::from("cart-42"), 1), ShardId(0));
/// assert!(shard_of(&EntityId::from("cart-42"), 64).0 < 64);
/// ```
pub fn shard_of(entity: &EntityId, num_shards: u32) -> ShardId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = entity
        .0
        .as_bytes()
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    let shards = u64::from(num_shards.max(1));
    // The remainder is below `num_shards`, so it fits in a u32.
    ShardId(u32::try_from(hash % shards).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_inline_and_encode_as_strings() {
        let id = EntityId::from(4_000_000_000u32);
        assert_eq!(id.as_str(), "4000000000");
        assert!(!id.0.is_heap_allocated(), "a number is kept inline");
        let long = EntityId::from("an-id-longer-than-twenty-four-bytes".to_string());
        assert!(long.0.is_heap_allocated());
        // The wire form is a plain string, whatever the representation.
        for (id, text) in [
            (id, "4000000000"),
            (long, "an-id-longer-than-twenty-four-bytes"),
        ] {
            let bytes = postcard::to_stdvec(&id).expect("encodes");
            assert_eq!(bytes, postcard::to_stdvec(text).expect("encodes"));
            assert_eq!(
                postcard::from_bytes::<EntityId>(&bytes).expect("decodes"),
                id
            );
        }
        assert_eq!(EntityId::from(7u64), EntityId::from("7"));
    }
}
