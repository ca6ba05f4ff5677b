//! How object commands change the cluster state: version puts (with dedup of an unchanged
//! put and retention), tag moves with compare-and-set, deletes, node maintenance, and the
//! derived chunk reference index.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{
    object_size, validate_object_name, validate_tag, ChunkUse, Maintenance, Manifest, NodeStorage,
    ObjectRecord, ObjectVersion, Retention, TagEvent, MAX_OBJECTS, MAX_RF, MAX_TAGS_PER_OBJECT,
    MAX_TAG_HISTORY, MAX_VERSIONS_PER_OBJECT,
};
use crate::chunk::ChunkId;
use crate::command::CommandResult;
use crate::state::ClusterState;

/// A version put, as the command carries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PutVersion {
    pub name: String,
    pub manifest: Manifest,
    pub rf: u8,
    pub labels: BTreeMap<String, String>,
    /// Tags moved to the version (whatever they named before).
    pub tags: Vec<String>,
    /// Replaces the object's retention rule when set.
    pub retention: Option<Retention>,
}

impl PutVersion {
    pub fn validate(&self) -> Result<(), String> {
        validate_object_name(&self.name)?;
        self.manifest.validate()?;
        if !(1..=MAX_RF).contains(&self.rf) {
            return Err(format!(
                "replication factor {} is not between 1 and {MAX_RF}",
                self.rf
            ));
        }
        crate::node::validate_labels(&self.labels).map_err(|e| format!("labels: {e}"))?;
        if self.tags.len() > MAX_TAGS_PER_OBJECT {
            return Err(format!("at most {MAX_TAGS_PER_OBJECT} tags"));
        }
        for t in &self.tags {
            validate_tag(t)?;
        }
        if let Some(Retention {
            keep_last: Some(0), ..
        }) = self.retention
        {
            return Err("keep_last must keep at least 1 version".into());
        }
        Ok(())
    }
}

fn refused(reason: impl Into<String>) -> CommandResult {
    CommandResult::ObjectRefused {
        reason: reason.into(),
    }
}

impl ClusterState {
    /// The version a reference (`NAME`, `NAME@VERSION`, `NAME:TAG`, as job inputs name
    /// them) names now; None when it is malformed or names nothing.
    pub fn version_named(&self, reference: &str) -> Option<&ObjectVersion> {
        let (name, selector) = super::VersionSelector::parse_reference(reference).ok()?;
        let object = self.objects.get(&name)?;
        object.versions.get(&selector.resolve(object)?)
    }

    /// Every chunk some version references, with what it needs.
    pub fn chunk_refs(&self) -> &imbl::OrdMap<ChunkId, ChunkUse> {
        &self.chunk_refs
    }

    pub(crate) fn put_object_version(&mut self, revision: u64, put: PutVersion) -> CommandResult {
        if let Err(e) = put.validate() {
            return refused(e);
        }
        // A chunk id names one content, so one size: a manifest that disagrees with what
        // the versions already referencing the chunk say is wrong (and would make the
        // derived chunk index depend on the order versions were applied in).
        if let Some(c) = put.manifest.chunks.iter().find(|c| {
            self.chunk_refs()
                .get(&c.id)
                .is_some_and(|known| known.size != c.size)
        }) {
            return refused(format!(
                "chunk {} is {} bytes in this manifest and {} in the versions that reference it already",
                c.id,
                c.size,
                self.chunk_refs().get(&c.id).map_or(0, |k| k.size)
            ));
        }
        let existing = self.objects.get(&put.name).cloned();
        if existing.is_none() && self.objects.len() >= MAX_OBJECTS {
            return refused(format!(
                "the cluster holds {MAX_OBJECTS} objects, the limit"
            ));
        }
        let mut object = existing.clone().unwrap_or_else(|| ObjectRecord {
            versions: BTreeMap::new(),
            next_version: 1,
            tags: BTreeMap::new(),
            tag_history: Default::default(),
            retention: Retention::default(),
            created_revision: revision,
            mod_revision: revision,
        });
        if let Some(r) = put.retention {
            object.retention = r;
        }
        // The same content, factor and labels as the newest version: no new version (a
        // retried or repeated put), only the tags move.
        let unchanged = object.latest().filter(|n| {
            let v = &object.versions[n];
            *v.manifest == put.manifest && v.rf == put.rf && v.labels == put.labels
        });
        let (version, added) = match unchanged {
            Some(n) => (n, None),
            None => {
                if object.versions.len() >= MAX_VERSIONS_PER_OBJECT {
                    return refused(format!(
                        "`{}` has {MAX_VERSIONS_PER_OBJECT} versions, the limit: delete some or set keep_last",
                        put.name
                    ));
                }
                let n = object.next_version;
                let v = ObjectVersion {
                    manifest: Arc::new(put.manifest),
                    created_ms: self.clock_unix_ms,
                    created_revision: revision,
                    labels: put.labels,
                    rf: put.rf,
                };
                object.versions.insert(n, v.clone());
                object.next_version = n + 1;
                (n, Some(v))
            }
        };
        let mut moved = false;
        for tag in put.tags {
            moved |= self.move_tag_in(&mut object, revision, tag, Some(version));
        }
        if object.tags.len() > MAX_TAGS_PER_OBJECT {
            return refused(format!(
                "`{}` would have {} tags, over the {MAX_TAGS_PER_OBJECT} limit",
                put.name,
                object.tags.len()
            ));
        }
        let pruned = prune(&mut object, self.clock_unix_ms, revision);
        let changed = added.is_some() || moved || !pruned.is_empty() || existing.is_none();
        if !changed && existing.as_ref().map(|o| o.retention) == Some(object.retention) {
            return CommandResult::ObjectVersionPut {
                version,
                created: false,
                changed: false,
                pruned,
                revision: self.revision,
            };
        }
        object.mod_revision = revision;
        if let Some(full) = self.replace_object(&put.name, existing.as_ref(), Some(object)) {
            return full;
        }
        CommandResult::ObjectVersionPut {
            version,
            created: added.is_some(),
            changed: true,
            pruned,
            revision,
        }
    }

    pub(crate) fn move_object_tag(
        &mut self,
        revision: u64,
        name: String,
        tag: String,
        to: Option<u64>,
        expected: Option<u64>,
    ) -> CommandResult {
        if let Err(e) = validate_tag(&tag) {
            return refused(e);
        }
        let Some(existing) = self.objects.get(&name).cloned() else {
            return CommandResult::UnknownObject { name };
        };
        if let Some(v) = to {
            if !existing.versions.contains_key(&v) {
                return refused(format!("`{name}` has no version {v}"));
            }
        }
        let actual = existing.tags.get(&tag).copied();
        if let Some(expected) = expected {
            if actual.unwrap_or(0) != expected {
                return CommandResult::TagConflict {
                    name,
                    tag,
                    expected,
                    actual: actual.unwrap_or(0),
                };
            }
        }
        let mut object = existing.clone();
        if !self.move_tag_in(&mut object, revision, tag, to) {
            return CommandResult::TagMoved {
                from: actual,
                changed: false,
                pruned: Vec::new(),
                revision: self.revision,
            };
        }
        if object.tags.len() > MAX_TAGS_PER_OBJECT {
            return refused(format!(
                "`{name}` has {MAX_TAGS_PER_OBJECT} tags, the limit"
            ));
        }
        let pruned = prune(&mut object, self.clock_unix_ms, revision);
        object.mod_revision = revision;
        if let Some(full) = self.replace_object(&name, Some(&existing), Some(object)) {
            return full;
        }
        CommandResult::TagMoved {
            from: actual,
            changed: true,
            pruned,
            revision,
        }
    }

    /// Deletes one version, or the whole object (`version` None). A tagged version is kept
    /// unless `force` (its tags go with it).
    pub(crate) fn delete_object(
        &mut self,
        revision: u64,
        name: String,
        version: Option<u64>,
        force: bool,
    ) -> CommandResult {
        let Some(existing) = self.objects.get(&name).cloned() else {
            return CommandResult::UnknownObject { name };
        };
        let doomed: Vec<u64> = match version {
            Some(v) if !existing.versions.contains_key(&v) => {
                return refused(format!("`{name}` has no version {v}"))
            }
            Some(v) => vec![v],
            None => existing.versions.keys().copied().collect(),
        };
        if !force {
            let tagged: Vec<String> = doomed
                .iter()
                .flat_map(|v| {
                    existing
                        .tags_of(*v)
                        .into_iter()
                        .map(move |t| format!("{t} -> {v}"))
                })
                .collect();
            if !tagged.is_empty() {
                return refused(format!(
                    "`{name}`: tagged versions are kept ({}); move the tags first or force the delete",
                    tagged.join(", ")
                ));
            }
        }
        let mut object = existing.clone();
        let tags: Vec<String> = object
            .tags
            .iter()
            .filter(|(_, v)| doomed.contains(v))
            .map(|(t, _)| t.clone())
            .collect();
        for t in tags {
            self.move_tag_in(&mut object, revision, t, None);
        }
        for v in &doomed {
            object.versions.remove(v);
        }
        object.mod_revision = revision;
        let replacement = version.is_some().then_some(object);
        if let Some(full) = self.replace_object(&name, Some(&existing), replacement) {
            return full;
        }
        CommandResult::ObjectDeleted {
            versions: doomed,
            revision,
        }
    }

    pub(crate) fn set_node_maintenance(
        &mut self,
        revision: u64,
        node: String,
        on: bool,
        reason: String,
    ) -> CommandResult {
        if !self.nodes.contains_key(&node) {
            return CommandResult::UnknownNode { node };
        }
        let mut storage = self.node_storage.get(&node).cloned().unwrap_or_default();
        if storage.maintenance.is_some() == on {
            return CommandResult::NodeMaintenanceSet {
                changed: false,
                revision: self.revision,
            };
        }
        storage.maintenance = on.then_some(Maintenance {
            since_ms: self.clock_unix_ms,
            reason,
        });
        if storage == NodeStorage::default() {
            self.node_storage.remove(&node);
        } else {
            self.node_storage.insert(node, storage);
        }
        CommandResult::NodeMaintenanceSet {
            changed: true,
            revision,
        }
    }

    /// Points `tag` at `to` (None: removes it) inside `object`, recording the move; false
    /// when it already was so.
    fn move_tag_in(
        &self,
        object: &mut ObjectRecord,
        revision: u64,
        tag: String,
        to: Option<u64>,
    ) -> bool {
        let from = object.tags.get(&tag).copied();
        if from == to {
            return false;
        }
        match to {
            Some(v) => object.tags.insert(tag.clone(), v),
            None => object.tags.remove(&tag),
        };
        object.tag_history.push_back(TagEvent {
            at_ms: self.clock_unix_ms,
            revision,
            tag,
            from,
            to,
        });
        while object.tag_history.len() > MAX_TAG_HISTORY {
            object.tag_history.pop_front();
        }
        true
    }

    /// Swaps an object record (None: removes it), keeping the counted size and the chunk
    /// references; `StateFull` (and no change) when it would pass the limit.
    fn replace_object(
        &mut self,
        name: &str,
        old: Option<&ObjectRecord>,
        new: Option<ObjectRecord>,
    ) -> Option<CommandResult> {
        let old_size = old.map_or(0, |o| object_size(name, o));
        let new_size = new.as_ref().map_or(0, |o| object_size(name, o));
        if let Some(full) = self.refuse_growth(old_size, new_size) {
            return Some(full);
        }
        self.counted_bytes = self.counted_bytes.saturating_sub(old_size) + new_size;
        let empty = BTreeMap::new();
        let before = old.map_or(&empty, |o| &o.versions);
        let after = new.as_ref().map_or(&empty, |o| &o.versions);
        let added: Vec<ObjectVersion> = after
            .iter()
            .filter(|(n, _)| !before.contains_key(n))
            .map(|(_, v)| v.clone())
            .collect();
        let removed: Vec<ObjectVersion> = before
            .iter()
            .filter(|(n, _)| !after.contains_key(n))
            .map(|(_, v)| v.clone())
            .collect();
        for v in &added {
            add_refs(&mut self.chunk_refs, v);
        }
        let recheck = remove_refs(&mut self.chunk_refs, &removed);
        match new {
            Some(o) => self.objects.insert(name.to_string(), o),
            None => self.objects.remove(name),
        };
        if !recheck.is_empty() {
            self.recompute_rf(&recheck);
        }
        None
    }

    /// The highest factor of each chunk in `chunks`, from every version (after a delete
    /// removed the last version that asked for the old one).
    fn recompute_rf(&mut self, chunks: &BTreeSet<ChunkId>) {
        let mut found: BTreeMap<ChunkId, (u8, u32)> = BTreeMap::new();
        for o in self.objects.values() {
            for v in o.versions.values() {
                for id in v.manifest.distinct_chunks().keys() {
                    if chunks.contains(id) {
                        let e = found.entry(*id).or_insert((0, 0));
                        if v.rf > e.0 {
                            *e = (v.rf, 1);
                        } else if v.rf == e.0 {
                            e.1 += 1;
                        }
                    }
                }
            }
        }
        for (id, (rf, n)) in found {
            if let Some(u) = self.chunk_refs.get_mut(&id) {
                u.rf = rf;
                u.refs_at_rf = n;
            }
        }
    }

    /// Rebuilds the chunk references from the objects (after a decode).
    pub(crate) fn rebuild_chunk_refs(&mut self) {
        let mut refs = imbl::OrdMap::new();
        for o in self.objects.values() {
            for v in o.versions.values() {
                add_refs(&mut refs, v);
            }
        }
        self.chunk_refs = refs;
    }

    /// Counted size of every object.
    pub(crate) fn objects_size(&self) -> u64 {
        self.objects.iter().map(|(n, o)| object_size(n, o)).sum()
    }
}

fn add_refs(refs: &mut imbl::OrdMap<ChunkId, ChunkUse>, v: &ObjectVersion) {
    for (id, size) in v.manifest.distinct_chunks() {
        let u = refs.entry(id).or_default();
        u.size = size;
        u.refs += 1;
        if v.rf > u.rf {
            u.rf = v.rf;
            u.refs_at_rf = 1;
        } else if v.rf == u.rf {
            u.refs_at_rf += 1;
        }
    }
}

/// Drops the references of `removed`; returns the chunks whose highest factor must be
/// found again.
fn remove_refs(
    refs: &mut imbl::OrdMap<ChunkId, ChunkUse>,
    removed: &[ObjectVersion],
) -> BTreeSet<ChunkId> {
    let mut recheck = BTreeSet::new();
    for v in removed {
        for id in v.manifest.distinct_chunks().keys() {
            let Some(u) = refs.get_mut(id) else { continue };
            u.refs = u.refs.saturating_sub(1);
            if u.refs == 0 {
                refs.remove(id);
                recheck.remove(id);
                continue;
            }
            if v.rf == u.rf {
                u.refs_at_rf = u.refs_at_rf.saturating_sub(1);
                if u.refs_at_rf == 0 {
                    recheck.insert(*id);
                }
            }
        }
    }
    recheck
}

/// Applies the object's retention rule; returns the versions it deleted.
fn prune(object: &mut ObjectRecord, at_ms: u64, revision: u64) -> Vec<u64> {
    let Some(keep) = object.retention.keep_last else {
        return Vec::new();
    };
    let newest: BTreeSet<u64> = object
        .versions
        .keys()
        .rev()
        .take(keep as usize)
        .copied()
        .collect();
    let tagged: BTreeSet<u64> = object.tags.values().copied().collect();
    let doomed: Vec<u64> = object
        .versions
        .keys()
        .copied()
        .filter(|v| !newest.contains(v))
        .filter(|v| !(object.retention.keep_tagged && tagged.contains(v)))
        .collect();
    for v in &doomed {
        object.versions.remove(v);
        // A tag naming a pruned version (only without keep_tagged) is removed with it.
        let tags: Vec<String> = object
            .tags
            .iter()
            .filter(|(_, x)| *x == v)
            .map(|(t, _)| t.clone())
            .collect();
        for t in tags {
            object.tags.remove(&t);
            object.tag_history.push_back(TagEvent {
                at_ms,
                revision,
                tag: t,
                from: Some(*v),
                to: None,
            });
        }
    }
    while object.tag_history.len() > MAX_TAG_HISTORY {
        object.tag_history.pop_front();
    }
    doomed
}
