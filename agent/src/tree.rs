//! Trees: one directory listing each, stored as a JSON tree blob. Names and
//! symlink targets are raw bytes (Unix paths need not be UTF-8): stored as a
//! string when they are valid UTF-8, otherwise as `{"hex": "..."}`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::Id;

/// A file name or link target as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RawName(pub Vec<u8>);

impl RawName {
    /// From an OS string.
    pub fn from_os(s: &OsStr) -> RawName {
        RawName(s.as_bytes().to_vec())
    }

    /// As an OS string.
    pub fn to_os(&self) -> OsString {
        OsString::from_vec(self.0.clone())
    }

    /// For display (lossy for non-UTF-8 names).
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Utf8(String),
    Raw { hex: String },
}

impl Serialize for RawName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => NameRepr::Utf8(text.to_string()),
            Err(_) => NameRepr::Raw {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NameRepr::deserialize(d)? {
            NameRepr::Utf8(s) => Ok(RawName(s.into_bytes())),
            NameRepr::Raw { hex } => hex::decode(hex)
                .map(RawName)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    Chardev,
    /// Block device.
    Blockdev,
    /// Unix socket (recorded, not restored).
    Socket,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Entry name.
    pub name: RawName,
    /// Entry type.
    #[serde(rename = "type")]
    pub node_type: NodeType,
    /// Unix mode bits including the file type bits.
    pub mode: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number at backup time.
    pub inode: u64,
    /// Device ID of the filesystem holding the entry.
    pub device_id: u64,
    /// Number of hard links.
    pub links: u64,
    /// Size in bytes (files).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Content blobs, in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Tree blob of the directory's listing (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawName>,
    /// Device number (character and block devices).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
}

impl Node {
    /// A node with a name, type and mode, and every other field zero or
    /// empty (for writers that fill in the rest, and for tests).
    pub fn new(name: RawName, node_type: NodeType, mode: u32) -> Node {
        Node {
            name,
            node_type,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            device_id: 0,
            links: 1,
            size: 0,
            content: Vec::new(),
            subtree: None,
            target: None,
            rdev: 0,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A directory listing, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Serialise deterministically (nodes must already be sorted): equal
    /// directories give equal bytes and so the same blob ID.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs to a Vec cannot fail.
        serde_json::to_vec(self).expect("tree serialisation")
    }

    /// The reader rules of FORMAT.md for a decoded tree: every name is a
    /// single path component (not empty, not `.` or `..`, no `/` or NUL) and
    /// names are strictly increasing bytewise, so no two entries share a
    /// name. A tree breaking them cannot come from a backup: restore, copy
    /// and check reject it instead of acting on it (a duplicate name would let
    /// a later entry, say a symlink, replace a directory that earlier entries
    /// were written into).
    ///
    /// # Errors
    /// A message naming the first offending entry.
    pub fn validate(&self) -> Result<(), String> {
        let mut prev: Option<&RawName> = None;
        for node in &self.nodes {
            let name = &node.name.0;
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(format!("unsafe entry name {:?}", node.name.display()));
            }
            if let Some(p) = prev {
                if p >= &node.name {
                    return Err(format!(
                        "entry {:?} {} {:?} (names must be unique and sorted)",
                        node.name.display(),
                        if p == &node.name {
                            "repeats"
                        } else {
                            "comes after"
                        },
                        p.display()
                    ));
                }
            }
            prev = Some(&node.name);
        }
        Ok(())
    }

    /// Find an entry by name.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node::new(RawName(name.to_vec()), NodeType::File, 0o100644)
    }

    #[test]
    fn validate_accepts_sorted_unique_names_and_rejects_the_rest() {
        let tree = |names: &[&[u8]]| Tree {
            nodes: names.iter().map(|n| node(n)).collect(),
        };
        assert_eq!(tree(&[]).validate(), Ok(()));
        assert_eq!(
            tree(&[b"A", b"a", b"a.txt", b"b", &[0xff]]).validate(),
            Ok(())
        );
        for (names, why) in [
            (&[b"a".as_slice(), b"a"][..], "repeats"),
            (&[b"b", b"a"], "comes after"),
            (&[b""], "unsafe"),
            (&[b"."], "unsafe"),
            (&[b".."], "unsafe"),
            (&[b"a/b"], "unsafe"),
            (&[b"a\0b"], "unsafe"),
        ] {
            let err = tree(names).validate().unwrap_err();
            assert!(err.contains(why), "{names:?}: {err}");
        }
    }

    #[test]
    fn names_round_trip_including_non_utf8() {
        for raw in [
            b"plain".to_vec(),
            "ünïcødé ✓".as_bytes().to_vec(),
            vec![0xff, 0xfe, b'a'],
            vec![b'\n', b'"'],
        ] {
            let n = RawName(raw.clone());
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<RawName>(&json).unwrap().0, raw);
        }
        assert_eq!(
            serde_json::to_string(&RawName(vec![0xff])).unwrap(),
            r#"{"hex":"ff"}"#
        );
    }
}
