//! The object workload: clients put new versions of a few objects (random bytes, their
//! BLAKE3 recorded) and read them back, through the `steward object` command as an
//! operator runs it (it plans the put, sends the chunks to the agents, commits the
//! version; a get fetches and verifies every chunk). Each operation records its times and
//! outcome; the checker ([`crate::check::objects`]) then asks whether any read returned
//! bytes no put wrote, and whether every acknowledged version reads back bit-exact.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::history::Nanos;

/// Largest object one put writes.
pub const MAX_OBJECT_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct ObjectMix {
    pub clients: u32,
    /// Objects `chaos/obj-0 .. chaos/obj-{objects-1}`.
    pub objects: u32,
    pub size_bytes: u64,
    /// Percent of operations that are puts, tag moves (tag [`TAG`] pointed at one of the
    /// client's acknowledged versions) and reads of the tag; the rest are gets of the
    /// latest version.
    pub put_percent: u32,
    pub tag_percent: u32,
    pub tag_read_percent: u32,
    /// The controllers' API addresses, comma separated (`STEWARD_ADDR`).
    pub addrs: String,
    /// Where the clients write their files.
    pub scratch: PathBuf,
    /// A call past this is killed and its outcome is unknown.
    pub call_timeout: Duration,
    pub epoch: Instant,
    pub seed: u64,
    /// The credentials of the clients' `steward` calls.
    pub admin: crate::admin::Admin,
}

/// The tag the clients move and read (`NAME:stable`).
pub const TAG: &str = "stable";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjCall {
    /// A put of bytes with this BLAKE3 (hex).
    Put { hash: String },
    /// A get of the latest version, or of `NAME@VERSION`.
    Get { version: Option<u64> },
    /// Point `tag` at `version` (`steward object tag`).
    Tag { version: u64, tag: String },
    /// A get of `NAME:TAG`.
    GetTag { tag: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjOutcome {
    /// The put committed this version.
    Stored {
        version: u64,
    },
    /// The get returned bytes with this BLAKE3 (hex).
    Read {
        hash: String,
    },
    /// The tag now names the version asked for.
    Tagged,
    /// The command failed: for a get, no bytes; for a put, nothing or something may have
    /// been committed ([`ObjOutcome::Unknown`] is used for puts).
    Failed(String),
    Unknown,
}

#[derive(Debug, Clone)]
pub struct ObjOp {
    pub client: u32,
    pub name: String,
    pub call: ObjCall,
    pub invoked: Nanos,
    pub completed: Option<Nanos>,
    pub outcome: ObjOutcome,
}

/// The name of object `i`.
pub fn object_name(i: u32) -> String {
    format!("chaos/obj-{i}")
}

/// Runs `mix` until `stop`; every client's operations, merged in invocation order.
pub async fn run(mix: ObjectMix, stop: CancellationToken) -> Vec<ObjOp> {
    let clients = (0..mix.clients).map(|c| {
        let (mix, stop) = (mix.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(mix.seed ^ (u64::from(c) << 40) ^ 0x0b1ec7);
            let dir = mix.scratch.join(format!("client-{c}"));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("object client {c}: {}: {e}", dir.display());
                return Vec::new();
            }
            let mut ops = Vec::new();
            let mut n = 0u64;
            // The versions this client's puts stored, per object: what it may tag.
            let mut own: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            while !stop.is_cancelled() {
                let name = object_name(rng.random_range(0..mix.objects.max(1)));
                n += 1;
                let roll = rng.random_range(0..100);
                let tag_at = mix.put_percent;
                let tag_read_at = tag_at + mix.tag_percent;
                let get_at = tag_read_at + mix.tag_read_percent;
                let taggable = own.get(&name).filter(|v| !v.is_empty());
                let op = if roll < tag_at || (roll < tag_read_at && taggable.is_none()) {
                    let mut bytes = vec![0u8; mix.size_bytes.min(MAX_OBJECT_BYTES) as usize];
                    rng.fill_bytes(&mut bytes);
                    let op = put(&mix, c, &name, &bytes, &dir.join(format!("put-{n}"))).await;
                    if let ObjOutcome::Stored { version } = op.outcome {
                        own.entry(name.clone()).or_default().push(version);
                    }
                    op
                } else if roll < tag_read_at {
                    let versions = taggable.expect("checked");
                    let version = versions[rng.random_range(0..versions.len())];
                    tag(&mix, c, &name, version).await
                } else if roll < get_at {
                    get_tag(&mix, c, &name, &dir.join(format!("get-{n}"))).await
                } else {
                    get(&mix, c, &name, None, &dir.join(format!("get-{n}"))).await
                };
                ops.push(op);
            }
            ops
        })
    });
    let mut ops = Vec::new();
    for c in futures::future::join_all(clients).await {
        ops.extend(c.unwrap_or_default());
    }
    ops.sort_by_key(|o| o.invoked);
    ops
}

fn now(mix: &ObjectMix) -> Nanos {
    mix.epoch.elapsed().as_nanos() as Nanos
}

/// Runs `steward ARGS` with the harness's admin identity; `None` past the call timeout.
async fn steward(mix: &ObjectMix, args: &[&str]) -> Option<std::process::Output> {
    let mut cmd = tokio::process::Command::from(mix.admin.command());
    cmd.args(args)
        .env("STEWARD_ADDR", &mix.addrs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().ok()?;
    tokio::time::timeout(mix.call_timeout, child.wait_with_output())
        .await
        .ok()?
        .ok()
}

/// Puts `bytes` as a new version of `name` (through the file `path`).
pub async fn put(
    mix: &ObjectMix,
    client: u32,
    name: &str,
    bytes: &[u8],
    path: &std::path::Path,
) -> ObjOp {
    let hash = blake3::hash(bytes).to_hex().to_string();
    let invoked = now(mix);
    let outcome = match std::fs::write(path, bytes) {
        Err(e) => ObjOutcome::Failed(format!("writing {}: {e}", path.display())),
        Ok(()) => {
            let out = steward(
                mix,
                &["-o", "json", "object", "put", name, &path.to_string_lossy()],
            )
            .await;
            let _ = std::fs::remove_file(path);
            match out {
                Some(o) if o.status.success() => {
                    serde_json::from_slice::<serde_json::Value>(&o.stdout)
                        .ok()
                        // `{"objects": [{"name", "version", ...}]}`
                        .and_then(|v| v["objects"][0]["version"].as_u64())
                        .map_or(ObjOutcome::Unknown, |version| ObjOutcome::Stored {
                            version,
                        })
                }
                // A put that failed may still have committed (the answer lost on the way).
                _ => ObjOutcome::Unknown,
            }
        }
    };
    let completed = (outcome != ObjOutcome::Unknown).then(|| now(mix));
    ObjOp {
        client,
        name: name.to_string(),
        call: ObjCall::Put { hash },
        invoked,
        completed,
        outcome,
    }
}

/// Points [`TAG`] of `name` at `version`.
pub async fn tag(mix: &ObjectMix, client: u32, name: &str, version: u64) -> ObjOp {
    let invoked = now(mix);
    let v = version.to_string();
    let out = steward(mix, &["object", "tag", name, &v, TAG]).await;
    // A refusal (the version pruned meanwhile, say) or a lost answer: it may or may not
    // have moved the tag.
    let outcome = match out {
        Some(o) if o.status.success() => ObjOutcome::Tagged,
        _ => ObjOutcome::Unknown,
    };
    let completed = (outcome != ObjOutcome::Unknown).then(|| now(mix));
    ObjOp {
        client,
        name: name.to_string(),
        call: ObjCall::Tag {
            version,
            tag: TAG.to_string(),
        },
        invoked,
        completed,
        outcome,
    }
}

/// Gets `name:`[`TAG`] into the file `path` and hashes it.
pub async fn get_tag(mix: &ObjectMix, client: u32, name: &str, path: &std::path::Path) -> ObjOp {
    let mut op = get_reference(mix, client, name, &format!("{name}:{TAG}"), path).await;
    op.call = ObjCall::GetTag {
        tag: TAG.to_string(),
    };
    op
}

/// Gets `name` (its latest version, or `version`) into the file `path` and hashes it.
pub async fn get(
    mix: &ObjectMix,
    client: u32,
    name: &str,
    version: Option<u64>,
    path: &std::path::Path,
) -> ObjOp {
    let reference = match version {
        Some(v) => format!("{name}@{v}"),
        None => name.to_string(),
    };
    let mut op = get_reference(mix, client, name, &reference, path).await;
    op.call = ObjCall::Get { version };
    op
}

/// Gets `reference` (of object `name`) into the file `path` and hashes it.
async fn get_reference(
    mix: &ObjectMix,
    client: u32,
    name: &str,
    reference: &str,
    path: &std::path::Path,
) -> ObjOp {
    let invoked = now(mix);
    let out = steward(mix, &["object", "get", reference, &path.to_string_lossy()]).await;
    let outcome = match out {
        Some(o) if o.status.success() => match std::fs::read(path) {
            Ok(bytes) => ObjOutcome::Read {
                hash: blake3::hash(&bytes).to_hex().to_string(),
            },
            Err(e) => ObjOutcome::Failed(format!("reading {}: {e}", path.display())),
        },
        Some(o) => ObjOutcome::Failed(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        None => ObjOutcome::Failed(format!("no answer within {:?}", mix.call_timeout)),
    };
    let _ = std::fs::remove_file(path);
    ObjOp {
        client,
        name: name.to_string(),
        call: ObjCall::Get { version: None },
        invoked,
        completed: Some(now(mix)),
        outcome,
    }
}

/// `steward -o json ARGS` against `addrs` as the harness's admin: the JSON it printed,
/// whatever its exit status (fsck exits 1 while data is at risk), or `None`.
pub async fn steward_json(
    admin: &crate::admin::Admin,
    addrs: &str,
    args: &[&str],
    timeout: Duration,
) -> Option<serde_json::Value> {
    let mut cmd = tokio::process::Command::from(admin.command());
    cmd.arg("-o")
        .arg("json")
        .args(args)
        .env("STEWARD_ADDR", addrs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().ok()?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
