//! Output formats shared by the commands.

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use cairn::snapshot::Snapshot;
use cairn::tree::{Node, NodeType};
use cairn::Id;

/// `v` as one line of JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// A byte count in binary units (`1.50 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// A snapshot as JSON, with its ID and short ID.
pub fn snapshot_json(id: &Id, s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(id));
        o.insert("short_id".into(), json!(id.short()));
    }
    v
}

/// `ls -l`-style type and permission bits (`drwxr-x---`).
pub fn mode_string(node: &Node) -> String {
    let t = match node.node_type {
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::Chardev => 'c',
        NodeType::Blockdev => 'b',
        NodeType::Socket => 's',
        NodeType::File => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (node.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}
