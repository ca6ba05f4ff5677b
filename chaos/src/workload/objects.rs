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
    /// Percent of operations that are puts; the rest are gets of the latest version.
    pub put_percent: u32,
    /// The controllers' API addresses, comma separated (`STEWARD_ADDR`).
    pub addrs: String,
    /// Where the clients write their files.
    pub scratch: PathBuf,
    /// A call past this is killed and its outcome is unknown.
    pub call_timeout: Duration,
    pub epoch: Instant,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjCall {
    /// A put of bytes with this BLAKE3 (hex).
    Put { hash: String },
    /// A get of the latest version, or of `NAME@VERSION`.
    Get { version: Option<u64> },
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
            while !stop.is_cancelled() {
                let name = object_name(rng.random_range(0..mix.objects.max(1)));
                n += 1;
                let op = if rng.random_range(0..100) < mix.put_percent {
                    let mut bytes = vec![0u8; mix.size_bytes.min(MAX_OBJECT_BYTES) as usize];
                    rng.fill_bytes(&mut bytes);
                    put(&mix, c, &name, &bytes, &dir.join(format!("put-{n}"))).await
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
    let mut cmd = tokio::process::Command::from(crate::harness::pki::steward_cmd());
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
    let invoked = now(mix);
    let out = steward(mix, &["object", "get", &reference, &path.to_string_lossy()]).await;
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
        call: ObjCall::Get { version },
        invoked,
        completed: Some(now(mix)),
        outcome,
    }
}

/// `steward -o json ARGS` against `addrs` as the harness's admin: the JSON it printed,
/// whatever its exit status (fsck exits 1 while data is at risk), or `None`.
pub async fn steward_json(
    addrs: &str,
    args: &[&str],
    timeout: Duration,
) -> Option<serde_json::Value> {
    let mut cmd = tokio::process::Command::from(crate::harness::pki::steward_cmd());
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
