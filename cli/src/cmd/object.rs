//! `steward object`: objects and their versions (models, datasets, checkpoints).
//!
//! `put` cuts a file into content-defined chunks (one read, bounded memory), asks the
//! leader where each chunk goes, asks those agents which chunks they already hold, streams
//! the rest to them directly (bytes never pass through a controller), and commits the
//! version, which the leader accepts only once every chunk has its write quorum of stored
//! replicas. `get` reads each chunk from the first agent that serves bytes hashing to its
//! id, in order, and checks the whole content's hash before the file takes its name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use serde_json::json;
use steward_agent::chunks::service::{fetch, id_of_pieces, push};
use steward_core::chunk::{ChunkId, ObjectHash};
use steward_core::chunking::{split_reader, ChunkingParams};
use steward_core::objects::{validate_object_name, ChunkRef, Manifest, VersionSelector};
use steward_proto::conv::{manifest_from_pb, manifest_to_pb};
use steward_proto::v1::{
    ChunkHolders, CommitObjectVersionRequest, DeleteObjectRequest, GetObjectRequest,
    HasChunksRequest, ListObjectsRequest, MoveObjectTagRequest, ObjectInfoRequest, ObjectVersionPb,
    PlanObjectPutRequest, ReadConsistency,
};
use steward_runtime::tls::ServerKind;
use steward_runtime::transport::{self, ChannelPool};

use crate::client::{request_id, with_request_retry, with_retry};
use crate::output::{print_json, table, Output};

/// Chunks in flight at once (each up to 16 MiB in memory).
pub const TRANSFER_PARALLELISM: usize = 8;
/// Connect timeout to an agent.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one chunk transfer.
const CHUNK_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Ids per `HasChunks` call (the agent's limit).
const HAS_BATCH: usize = 10_000;

#[derive(clap::Subcommand, Debug)]
pub enum ObjectCommand {
    /// Store FILE as a new version of NAME (a directory: one object per file, NAME/PATH).
    Put {
        name: String,
        path: PathBuf,
        /// Move this tag to the new version (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Replicas of each chunk [default: the cluster's, 3].
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        rf: u32,
        /// A label of the version, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Retention: keep the newest N versions (and every tagged one).
        #[arg(long)]
        keep_last: Option<u32>,
    },
    /// Write NAME (NAME@VERSION, NAME:TAG) to DEST, verified [default: the name's last
    /// segment in the current directory; "-": standard output]. `-o PATH` names DEST too:
    /// after `object get`, a `-o` value other than `json` or `table` is the destination
    /// (write `./json` for a file of that name).
    Get {
        reference: String,
        #[arg(conflicts_with = "dest_flag")]
        dest: Option<PathBuf>,
        /// The destination (what `-o PATH` becomes).
        #[arg(long = "dest", id = "dest_flag", value_name = "PATH")]
        dest_flag: Option<PathBuf>,
    },
    /// List objects whose names start with PREFIX.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// The versions of NAME, with their tags.
    Versions { name: String },
    /// The tag moves of NAME, oldest first.
    History { name: String },
    /// Point TAG of NAME at VERSION, atomically.
    Tag {
        name: String,
        #[arg(value_name = "VERSION")]
        number: u64,
        tag: String,
        /// Compare-and-set: only if TAG names this version now (0: only if it does not exist).
        #[arg(long, value_name = "VERSION")]
        expect: Option<u64>,
    },
    /// Remove TAG from NAME.
    Untag {
        name: String,
        tag: String,
        #[arg(long, value_name = "VERSION")]
        expect: Option<u64>,
    },
    /// Delete NAME@VERSION, or all of NAME.
    Rm {
        reference: String,
        /// Also delete tagged versions.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(addrs: &str, output: Output, command: ObjectCommand) -> anyhow::Result<ExitCode> {
    match command {
        ObjectCommand::Put {
            name,
            path,
            tags,
            rf,
            labels,
            keep_last,
        } => {
            let labels = parse_labels(&labels)?;
            let files = files_to_put(&name, &path)?;
            let mut results = Vec::new();
            for (object, file) in files {
                let r = put_file(addrs, &object, &file, &tags, rf, &labels, keep_last)
                    .await
                    .with_context(|| format!("putting {} as `{object}`", file.display()))?;
                if output == Output::Table {
                    println!(
                        "{object}: version {}{} ({} bytes; {} sent to agents, {} already stored)",
                        r.version,
                        if r.created { "" } else { " (unchanged)" },
                        r.size,
                        r.sent_bytes,
                        r.deduplicated_bytes
                    );
                }
                results.push(json!({
                    "name": object, "version": r.version, "created": r.created,
                    "size": r.size, "sent_bytes": r.sent_bytes,
                    "deduplicated_bytes": r.deduplicated_bytes, "pruned": r.pruned,
                }));
            }
            if output == Output::Json {
                print_json(&json!({ "objects": results }))?;
            }
        }
        ObjectCommand::Get {
            reference,
            dest,
            dest_flag,
        } => {
            let path = dest.or(dest_flag);
            let r = get_object(addrs, &reference, path.as_deref()).await?;
            match output {
                Output::Json => print_json(&json!({
                    "name": r.name, "version": r.version, "size": r.size,
                    "path": r.path.as_ref().map(|p| p.display().to_string()),
                }))?,
                Output::Table => {
                    if let Some(p) = &r.path {
                        eprintln!(
                            "{}@{}: {} bytes written to {}, verified",
                            r.name,
                            r.version,
                            r.size,
                            p.display()
                        );
                    }
                }
            }
        }
        ObjectCommand::Ls { prefix } => {
            let reply = with_retry(addrs, |mut c| {
                let req = ListObjectsRequest {
                    prefix: prefix.clone(),
                    consistency: ReadConsistency::Linearizable as i32,
                };
                async move { c.list_objects(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => {
                    print_json(&json!({"objects": reply.objects.iter().map(|o| json!({
                    "name": o.name, "versions": o.versions, "latest_version": o.latest_version,
                    "latest_size": o.latest_size, "tags": o.tags,
                })).collect::<Vec<_>>()}))?
                }
                Output::Table => {
                    let mut t = table(["NAME", "VERSIONS", "LATEST", "SIZE", "TAGS"]);
                    for o in &reply.objects {
                        t.add_row(vec![
                            o.name.clone(),
                            o.versions.to_string(),
                            o.latest_version.to_string(),
                            bytesize::ByteSize(o.latest_size).to_string(),
                            tags_text(&o.tags),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        ObjectCommand::Versions { name } => {
            let info = info(addrs, &name).await?;
            match output {
                Output::Json => print_json(&json!({
                    "name": info.name,
                    "versions": info.versions.iter().map(version_json).collect::<Vec<_>>(),
                    "tags": info.tags, "keep_last": info.keep_last, "keep_tagged": info.keep_tagged,
                }))?,
                Output::Table => {
                    let mut t = table([
                        "VERSION", "SIZE", "CHUNKS", "CREATED", "RF", "TAGS", "LABELS",
                    ]);
                    for v in &info.versions {
                        t.add_row(vec![
                            v.version.to_string(),
                            bytesize::ByteSize(v.size).to_string(),
                            v.chunks.to_string(),
                            time_text(v.created_unix_ms),
                            v.rf.to_string(),
                            v.tags.join(","),
                            labels_text(&v.labels),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        ObjectCommand::History { name } => {
            let info = info(addrs, &name).await?;
            let word = |v: u64| {
                if v == 0 {
                    "-".to_string()
                } else {
                    v.to_string()
                }
            };
            match output {
                Output::Json => print_json(
                    &json!({"name": info.name, "history": info.history.iter().map(|e| json!({
                    "at_unix_ms": e.at_unix_ms, "revision": e.revision, "tag": e.tag,
                    "from": (e.from_version > 0).then_some(e.from_version),
                    "to": (e.to_version > 0).then_some(e.to_version),
                })).collect::<Vec<_>>()}),
                )?,
                Output::Table => {
                    let mut t = table(["TIME", "REVISION", "TAG", "FROM", "TO"]);
                    for e in &info.history {
                        t.add_row(vec![
                            time_text(e.at_unix_ms),
                            e.revision.to_string(),
                            e.tag.clone(),
                            word(e.from_version),
                            word(e.to_version),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        ObjectCommand::Tag {
            name,
            number: version,
            tag,
            expect,
        } => {
            if version == 0 {
                bail!("versions are numbered from 1; `steward object untag` removes a tag");
            }
            move_tag(addrs, output, name, tag, version, expect).await?;
        }
        ObjectCommand::Untag { name, tag, expect } => {
            move_tag(addrs, output, name, tag, 0, expect).await?;
        }
        ObjectCommand::Rm { reference, force } => {
            let (name, selector) =
                VersionSelector::parse_reference(&reference).map_err(|e| anyhow!(e))?;
            let version = match selector {
                VersionSelector::Latest => 0,
                VersionSelector::Number(n) => n,
                VersionSelector::Tag(_) => {
                    bail!("`steward object rm` takes NAME or NAME@VERSION, not a tag")
                }
            };
            let req = DeleteObjectRequest {
                name: name.clone(),
                version,
                force,
                request_id: Some(request_id()),
            };
            let reply = with_request_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.delete_object(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(
                    &json!({"name": name, "deleted_versions": reply.versions, "revision": reply.revision}),
                )?,
                Output::Table => println!(
                    "{name}: deleted version(s) {:?} at revision {}",
                    reply.versions, reply.revision
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn move_tag(
    addrs: &str,
    output: Output,
    name: String,
    tag: String,
    version: u64,
    expected: Option<u64>,
) -> anyhow::Result<()> {
    let req = MoveObjectTagRequest {
        name: name.clone(),
        tag: tag.clone(),
        version,
        expected,
        request_id: Some(request_id()),
    };
    let reply = with_request_retry(addrs, |mut c| {
        let req = req.clone();
        async move { c.move_object_tag(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    match output {
        Output::Json => print_json(&json!({
            "name": name, "tag": tag, "version": (version > 0).then_some(version),
            "previous": (reply.previous > 0).then_some(reply.previous),
            "changed": reply.changed, "pruned": reply.pruned, "revision": reply.revision,
        }))?,
        Output::Table => {
            let was = if reply.previous == 0 {
                "unset".to_string()
            } else {
                format!("version {}", reply.previous)
            };
            if version == 0 {
                println!("{name}: tag {tag} removed (was {was})");
            } else {
                println!("{name}: tag {tag} -> version {version} (was {was})");
            }
            if !reply.pruned.is_empty() {
                println!("retention deleted version(s) {:?}", reply.pruned);
            }
        }
    }
    Ok(())
}

async fn info(addrs: &str, name: &str) -> anyhow::Result<steward_proto::v1::ObjectInfoReply> {
    with_retry(addrs, |mut c| {
        let req = ObjectInfoRequest {
            name: name.to_string(),
            consistency: ReadConsistency::Linearizable as i32,
        };
        async move { c.object_info(req).await.map(|r| r.into_inner()) }
    })
    .await
}

fn version_json(v: &ObjectVersionPb) -> serde_json::Value {
    json!({
        "version": v.version, "size": v.size, "chunks": v.chunks,
        "created_unix_ms": v.created_unix_ms, "rf": v.rf, "tags": v.tags,
        "labels": v.labels, "content_hash": v.content_hash,
    })
}

fn tags_text(tags: &HashMap<String, u64>) -> String {
    let sorted: BTreeMap<&String, &u64> = tags.iter().collect();
    sorted
        .iter()
        .map(|(t, v)| format!("{t}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels_text(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn time_text(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("label `{l}` is not KEY=VALUE"))
        })
        .collect()
}

/// The objects a put makes: FILE as NAME, or each file under DIR as NAME/RELATIVE_PATH.
fn files_to_put(name: &str, path: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    validate_object_name(name).map_err(|e| anyhow!(e))?;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![(name.to_string(), path.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let rel = p.strip_prefix(path).expect("under the directory");
                let rel = rel
                    .to_str()
                    .ok_or_else(|| anyhow!("{}: not a UTF-8 file name", p.display()))?;
                let object = format!("{name}/{rel}");
                validate_object_name(&object).map_err(|e| anyhow!("{}: {e}", p.display()))?;
                out.push((object, p));
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{}: no files to put", path.display());
    }
    Ok(out)
}

fn agent_pool() -> anyhow::Result<ChannelPool> {
    Ok(ChannelPool::new(
        crate::security::options(AGENT_CONNECT_TIMEOUT, ServerKind::Agent)?
            .call_timeout(CHUNK_CALL_TIMEOUT),
    ))
}

fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub struct PutResult {
    pub version: u64,
    pub created: bool,
    pub size: u64,
    pub sent_bytes: u64,
    pub deduplicated_bytes: u64,
    pub pruned: Vec<u64>,
}

/// Reads `len` bytes at `offset` of `path`.
async fn read_at(path: PathBuf, offset: u64, len: u32) -> anyhow::Result<Vec<u8>> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await?
    .with_context(|| format!("reading {shown}"))
}

/// Which of `chunks` each node already stores, by node.
async fn stored_on(
    pool: &ChannelPool,
    addrs: &HashMap<String, String>,
    wanted: BTreeMap<String, Vec<ChunkId>>,
) -> HashMap<String, BTreeSet<ChunkId>> {
    let calls = wanted.into_iter().map(|(node, ids)| async move {
        let mut held = BTreeSet::new();
        let Some(ch) = addrs.get(&node).and_then(|a| pool.get_node(a, &node).ok()) else {
            return (node, held);
        };
        let mut client = transport::chunk_client(ch);
        for batch in ids.chunks(HAS_BATCH) {
            let req = HasChunksRequest {
                chunk_ids: batch.iter().map(ToString::to_string).collect(),
                node_id: node.clone(),
            };
            // An agent that does not answer holds nothing as far as this put knows.
            let Ok(reply) = client.has_chunks(req).await else {
                break;
            };
            for (id, present) in batch.iter().zip(reply.into_inner().present) {
                if present {
                    held.insert(*id);
                }
            }
        }
        (node, held)
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

async fn put_file(
    addrs: &str,
    name: &str,
    path: &Path,
    tags: &[String],
    rf: u32,
    labels: &BTreeMap<String, String>,
    keep_last: Option<u32>,
) -> anyhow::Result<PutResult> {
    // One read: content-defined chunks and the whole-content hash.
    let file = path.to_path_buf();
    let (refs, content_hash) = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&file).with_context(|| format!("{}", file.display()))?;
        let mut content = ObjectHash::content_hasher();
        let refs = split_reader(
            std::io::BufReader::with_capacity(1 << 20, f),
            ChunkingParams::DEFAULT,
            |_, bytes| {
                content.update(bytes);
            },
        )
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        Ok::<_, anyhow::Error>((refs, ObjectHash::from_hash(content.finalize())))
    })
    .await??;
    let manifest = Manifest {
        chunks: refs
            .iter()
            .map(|r| ChunkRef {
                id: r.id,
                size: r.len,
            })
            .collect(),
        size: refs.iter().map(|r| u64::from(r.len)).sum(),
        content_hash,
    };
    let mut seen = BTreeSet::new();
    let distinct: Vec<steward_core::chunking::ChunkRef> =
        refs.iter().filter(|r| seen.insert(r.id)).copied().collect();
    let plan = with_retry(addrs, |mut c| {
        let req = PlanObjectPutRequest {
            name: name.to_string(),
            rf,
            chunk_ids: distinct.iter().map(|r| r.id.as_bytes().to_vec()).collect(),
        };
        async move { c.plan_object_put(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    if plan.chunks.len() != distinct.len() {
        bail!(
            "the leader planned {} of {} chunks",
            plan.chunks.len(),
            distinct.len()
        );
    }
    let w = plan.write_quorum as usize;
    let rf_planned = plan.rf as usize;
    let pool = Arc::new(agent_pool()?);
    let node_addrs = Arc::new(plan.node_addrs.clone());
    // What the chunks' first choices already store: not sent again.
    let mut wanted: BTreeMap<String, Vec<ChunkId>> = BTreeMap::new();
    for (r, t) in distinct.iter().zip(&plan.chunks) {
        for n in t.targets.iter().take(rf_planned) {
            wanted.entry(n.clone()).or_default().push(r.id);
        }
    }
    let stored = Arc::new(stored_on(&pool, &node_addrs, wanted).await);
    let bar = progress(manifest.size, name);
    let jobs = distinct
        .iter()
        .zip(plan.chunks.iter().cloned())
        .map(|(r, targets)| {
            let (pool, node_addrs, stored, bar) = (
                pool.clone(),
                node_addrs.clone(),
                stored.clone(),
                bar.clone(),
            );
            let (path, r) = (path.to_path_buf(), *r);
            tokio::spawn(async move {
                let out = upload_chunk(
                    &pool,
                    &node_addrs,
                    &stored,
                    &path,
                    r,
                    targets,
                    rf_planned,
                    w,
                )
                .await;
                bar.inc(u64::from(r.len));
                out
            })
        });
    // Lazy: each upload is spawned when `buffered` takes it, so at most
    // TRANSFER_PARALLELISM chunks are read into memory and in flight at once.
    let mut holders = Vec::with_capacity(distinct.len());
    let (mut sent, mut dedup) = (0u64, 0u64);
    let mut results = futures::stream::iter(jobs).buffered(TRANSFER_PARALLELISM);
    while let Some(r) = results.next().await {
        let u = r??;
        sent += u.sent_bytes;
        if u.sent_bytes == 0 {
            dedup += u.len;
        }
        holders.push(ChunkHolders {
            nodes: u.holders,
            spread: 0,
        });
    }
    bar.finish_and_clear();
    // Repeated chunks in the file are stored once.
    dedup += manifest.size - distinct.iter().map(|r| u64::from(r.len)).sum::<u64>();
    let req = CommitObjectVersionRequest {
        name: name.to_string(),
        manifest: Some(manifest_to_pb(&manifest)),
        rf,
        labels: labels.clone().into_iter().collect(),
        tags: tags.to_vec(),
        keep_last,
        keep_tagged: None,
        request_id: Some(request_id()),
        holders,
    };
    let reply = with_request_retry(addrs, |mut c| {
        let req = req.clone();
        async move { c.commit_object_version(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    Ok(PutResult {
        version: reply.version,
        created: reply.created,
        size: manifest.size,
        sent_bytes: sent,
        deduplicated_bytes: dedup,
        pruned: reply.pruned,
    })
}

struct Uploaded {
    holders: Vec<String>,
    sent_bytes: u64,
    len: u64,
}

/// Gets chunk `r` onto `rf` of its targets (known holders and agents that already store it
/// count); fails unless at least `w` hold it.
#[allow(clippy::too_many_arguments)]
async fn upload_chunk(
    pool: &ChannelPool,
    node_addrs: &HashMap<String, String>,
    stored: &HashMap<String, BTreeSet<ChunkId>>,
    path: &Path,
    r: steward_core::chunking::ChunkRef,
    plan: steward_proto::v1::ChunkTargets,
    rf: usize,
    w: usize,
) -> anyhow::Result<Uploaded> {
    let mut holders: Vec<String> = plan.holders.clone();
    for n in plan.targets.iter().take(rf) {
        if stored.get(n).is_some_and(|s| s.contains(&r.id)) && !holders.contains(n) {
            holders.push(n.clone());
        }
    }
    let mut sent = 0u64;
    let mut errors = Vec::new();
    if holders.len() < rf {
        let bytes = bytes::Bytes::from(read_at(path.to_path_buf(), r.offset, r.len).await?);
        if ChunkId::of(&bytes) != r.id {
            bail!(
                "{} changed while it was being put (chunk at offset {} no longer matches)",
                path.display(),
                r.offset
            );
        }
        let candidates: Vec<String> = plan
            .targets
            .iter()
            .filter(|n| !holders.contains(n))
            .cloned()
            .collect();
        // The first choices at once, then spares one by one for those that failed.
        let (first, spares) = candidates.split_at((rf - holders.len()).min(candidates.len()));
        let push_to = |node: &String| {
            let bytes = bytes.clone();
            let node = node.clone();
            async move {
                let Some(addr) = node_addrs.get(&node) else {
                    return (node, Err(anyhow!("no address")));
                };
                let r = push(pool, &node, addr, r.id, bytes)
                    .await
                    .map_err(|s| anyhow!("{}: {}", s.code(), s.message()));
                (node, r)
            }
        };
        for (node, result) in futures::future::join_all(first.iter().map(push_to)).await {
            match result {
                Ok(_) => {
                    sent += u64::from(r.len);
                    holders.push(node);
                }
                Err(e) => errors.push(format!("{node}: {e}")),
            }
        }
        for node in spares {
            if holders.len() >= rf {
                break;
            }
            match push_to(node).await {
                (node, Ok(_)) => {
                    sent += u64::from(r.len);
                    holders.push(node);
                }
                (node, Err(e)) => errors.push(format!("{node}: {e}")),
            }
        }
    }
    if holders.len() < w {
        bail!(
            "chunk {} reached {} of the {w} agents a commit needs: {}",
            r.id,
            holders.len(),
            errors.join("; ")
        );
    }
    Ok(Uploaded {
        holders,
        sent_bytes: sent,
        len: u64::from(r.len),
    })
}

pub struct GetResult {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub path: Option<PathBuf>,
}

/// Reads chunk `id` from the first of `nodes` that serves bytes hashing to it, as the
/// pieces it arrived in.
async fn fetch_verified(
    pool: &ChannelPool,
    node_addrs: &HashMap<String, String>,
    nodes: &[String],
    id: ChunkId,
) -> anyhow::Result<Vec<bytes::Bytes>> {
    let mut errors = Vec::new();
    for node in nodes {
        let Some(addr) = node_addrs.get(node) else {
            continue;
        };
        match fetch(pool, addr, id).await {
            Ok(pieces) => {
                let (ok, pieces) =
                    tokio::task::spawn_blocking(move || (id_of_pieces(&pieces) == id, pieces))
                        .await?;
                if ok {
                    return Ok(pieces);
                }
                errors.push(format!(
                    "{node}: sent bytes that do not hash to the chunk id"
                ));
            }
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    Err(anyhow!(
        "chunk {id}: no agent served it ({})",
        if errors.is_empty() {
            "no known location".to_string()
        } else {
            errors.join("; ")
        }
    ))
}

pub async fn get_object(
    addrs: &str,
    reference: &str,
    output: Option<&Path>,
) -> anyhow::Result<GetResult> {
    let (name, _) = VersionSelector::parse_reference(reference).map_err(|e| anyhow!(e))?;
    let reply = with_retry(addrs, |mut c| {
        let req = GetObjectRequest {
            reference: reference.to_string(),
            consistency: ReadConsistency::Linearizable as i32,
        };
        async move { c.get_object(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    let manifest = manifest_from_pb(
        reply
            .manifest
            .as_ref()
            .ok_or_else(|| anyhow!("the answer carries no manifest"))?,
    )
    .map_err(|e| anyhow!(e))?;
    let version = reply.version.as_ref().map_or(0, |v| v.version);
    let mut seen = BTreeSet::new();
    let locations: HashMap<ChunkId, Vec<String>> = manifest
        .chunks
        .iter()
        .filter(|c| seen.insert(c.id))
        .map(|c| c.id)
        .zip(reply.locations.iter().map(|l| l.nodes.clone()))
        .collect();
    let path = match output {
        Some(p) if p == Path::new("-") => None,
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(
            name.rsplit('/').next().unwrap_or(&name).to_string(),
        )),
    };
    let (mut sink, partial): (Box<dyn Write + Send>, Option<PathBuf>) = match &path {
        None => (Box::new(std::io::stdout()), None),
        Some(p) => {
            let partial = p.with_file_name(format!(
                ".{}.steward-partial",
                p.file_name().and_then(|n| n.to_str()).unwrap_or("object")
            ));
            let f = std::fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            (
                Box::new(std::io::BufWriter::with_capacity(1 << 20, f)),
                Some(partial),
            )
        }
    };
    let result = async {
        let pool = Arc::new(agent_pool()?);
        let node_addrs = Arc::new(reply.node_addrs.clone());
        let locations = Arc::new(locations);
        let bar = progress(manifest.size, &format!("{name}@{version}"));
        let mut content = ObjectHash::content_hasher();
        let mut chunks = futures::stream::iter(manifest.chunks.clone())
            .map(|c| {
                let (pool, node_addrs, locations) =
                    (pool.clone(), node_addrs.clone(), locations.clone());
                tokio::spawn(async move {
                    let nodes = locations.get(&c.id).cloned().unwrap_or_default();
                    fetch_verified(&pool, &node_addrs, &nodes, c.id).await
                })
            })
            .buffered(TRANSFER_PARALLELISM);
        while let Some(pieces) = chunks.next().await {
            for piece in pieces?? {
                content.update(&piece);
                sink.write_all(&piece)?;
                bar.inc(piece.len() as u64);
            }
        }
        bar.finish_and_clear();
        sink.flush()?;
        if ObjectHash::from_hash(content.finalize()) != manifest.content_hash {
            bail!("the chunks do not add up to the version's content hash");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    drop(sink);
    if let Err(e) = result {
        if let Some(p) = &partial {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    if let (Some(partial), Some(p)) = (&partial, &path) {
        std::fs::File::open(partial).and_then(|f| f.sync_all())?;
        std::fs::rename(partial, p).with_context(|| format!("renaming to {}", p.display()))?;
    }
    Ok(GetResult {
        name,
        version,
        size: manifest.size,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_become_one_object_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("a.bin"), b"a").expect("write");
        std::fs::write(dir.path().join("sub/b.bin"), b"b").expect("write");
        let files = files_to_put("ds", dir.path()).expect("files");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ds/a.bin", "ds/sub/b.bin"]);
        assert!(files_to_put("../bad", dir.path()).is_err());
        let one = files_to_put("one", &dir.path().join("a.bin")).expect("file");
        assert_eq!(one[0].0, "one");
        assert!(parse_labels(&["a=b".into()]).is_ok());
        assert!(parse_labels(&["ab".into()]).is_err());
    }
}
