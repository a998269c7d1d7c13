//! The tree builder: assembles directories from the walker's events (in
//! depth-first order), waiting for each file's read in turn, and stores each
//! directory's tree blob once its entries are complete.

use crossbeam_channel::{Receiver, Sender};

use super::{add, BlobJob, Event, FileOutcome, Shared};
use crate::blob::{blob_buffer, BlobType};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::tree::{Node, Tree};

/// Assemble trees from the walker's events (in depth-first order) and store them.
pub(super) fn build_trees(
    shared: &Shared<'_>,
    events: Receiver<Event>,
    blobs: Sender<BlobJob>,
) -> Result<Id> {
    struct Open {
        node: Option<Node>,
        parent_subtree: Option<Id>,
        nodes: Vec<Node>,
    }
    let key = shared.repo.key();
    let c = &shared.counters;
    let mut stack: Vec<Open> = Vec::new();
    for ev in events {
        match ev {
            Event::EnterDir {
                node,
                parent_subtree,
            } => {
                stack.push(Open {
                    node,
                    parent_subtree,
                    nodes: Vec::new(),
                });
            }
            Event::Entry(node) => {
                if let Some(top) = stack.last_mut() {
                    top.nodes.push(node);
                }
            }
            Event::File {
                mut node,
                outcome,
                reply,
            } => {
                if let Some(rx) = reply {
                    match rx.recv() {
                        Ok(Ok(read)) => {
                            node.content = read.content;
                            node.size = read.size;
                            if let Some(e) = read.changed {
                                shared.source_error(&e.path, e.message);
                            }
                        }
                        Ok(Err(e)) => {
                            shared.source_error(&e.path, e.message);
                            continue;
                        }
                        Err(_) => return Err(Error::Internal("file worker stopped".into())),
                    }
                }
                match outcome {
                    FileOutcome::New => add(&c.files_new, 1),
                    FileOutcome::Changed => add(&c.files_changed, 1),
                    FileOutcome::Unmodified => add(&c.files_unmodified, 1),
                }
                add(&c.total_files, 1);
                add(&c.total_bytes, node.size);
                if let Some(top) = stack.last_mut() {
                    top.nodes.push(node);
                }
            }
            Event::LeaveDir => {
                let Some(open) = stack.pop() else {
                    return Err(Error::Internal("unbalanced directory events".into()));
                };
                let id = save_tree(shared, key, &blobs, open.nodes, open.parent_subtree)?;
                let mut node = open
                    .node
                    .ok_or_else(|| Error::Internal("root directory closed".into()))?;
                node.subtree = Some(id);
                if let Some(top) = stack.last_mut() {
                    top.nodes.push(node);
                }
            }
        }
    }
    match (stack.pop(), stack.is_empty()) {
        (Some(root), true) if root.node.is_none() => {
            save_tree(shared, key, &blobs, root.nodes, root.parent_subtree)
        }
        _ => Err(Error::Internal("unbalanced directory events".into())),
    }
}

/// Store one directory's tree blob (unless it is stored already); returns its ID.
fn save_tree(
    shared: &Shared<'_>,
    key: &crate::crypto::MasterKey,
    blobs: &Sender<BlobJob>,
    mut nodes: Vec<Node>,
    parent_subtree: Option<Id>,
) -> Result<Id> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = Tree { nodes }.to_bytes();
    let id = key.blob_id(&bytes);
    let c = &shared.counters;
    match parent_subtree {
        None => add(&c.dirs_new, 1),
        Some(p) if p == id => add(&c.dirs_unmodified, 1),
        Some(_) => add(&c.dirs_changed, 1),
    }
    if let Some(ticket) = shared.claim(BlobType::Tree, id) {
        blobs
            .send(BlobJob {
                ticket,
                blob_type: BlobType::Tree,
                id,
                data: blob_buffer(&bytes),
            })
            .map_err(|_| Error::Internal("blob workers stopped".into()))?;
    }
    Ok(id)
}
