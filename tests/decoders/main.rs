//! Every decoder of untrusted input, fed arbitrary and mutated bytes (proptest, bounded so
//! that it runs on stable in `make test`): no panic, and the memory one decode allocates
//! stays bounded by its input, so a length prefix cannot make a server reserve gigabytes.
//! A counting global allocator (`stats_alloc`) measures what each decode allocates; all
//! checks run in one test thread so that nothing else allocates meanwhile.
//!
//! The decoders: every gRPC request message (prost), the object manifest conversion, the
//! cluster state record (every format), operator snapshot files, the controller and agent
//! config files, job specs, identity URIs, chunk ids and access tokens.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes a decode of `input_len` bytes may allocate in all (which bounds its peak): a
/// generous multiple of the input plus a fixed allowance (parsers' tables, serde's capped
/// preallocation).
fn bound(input_len: usize) -> usize {
    64 * input_len + (4 << 20)
}

/// Runs `decode` on `input` and checks the allocation bound; `decode` must not panic
/// (a panic fails the proptest case).
fn measured(what: &str, input: &[u8], decode: &dyn Fn(&[u8])) -> Result<(), TestCaseError> {
    let region = Region::new(GLOBAL);
    decode(input);
    let allocated =
        region.change().bytes_allocated + region.change().bytes_reallocated.max(0) as usize;
    prop_assert!(
        allocated <= bound(input.len()),
        "{what}: decoding {} bytes allocated {allocated} bytes",
        input.len()
    );
    Ok(())
}

type Decoder = (&'static str, Box<dyn Fn(&[u8])>);

macro_rules! prost_decoders {
    ($($t:ident),* $(,)?) => {
        vec![$(
            (
                stringify!($t),
                Box::new(|b: &[u8]| {
                    let _ = <steward_proto::v1::$t as prost::Message>::decode(b);
                }) as Box<dyn Fn(&[u8])>,
            )
        ),*]
    };
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn decoders() -> Vec<Decoder> {
    let mut d: Vec<Decoder> = prost_decoders![
        StatusRequest,
        KvPutRequest,
        KvGetRequest,
        KvListRequest,
        KvDeleteRequest,
        AddLearnerRequest,
        PromoteRequest,
        RemovePeerRequest,
        TransferLeaderRequest,
        SnapshotSaveRequest,
        SnapshotChunk,
        ListNodesRequest,
        RemoveNodeRequest,
        NodeEventsRequest,
        AclBootstrapRequest,
        CreateAclTokenRequest,
        ListAclTokensRequest,
        RevokeAclTokenRequest,
        LeaderHintRequest,
        RegisterNodeRequest,
        HeartbeatRequest,
        ReportChunksRequest,
        ConfirmGarbageRequest,
        GetTelemetryRequest,
        InjectGpuFaultRequest,
        SetGpuLoadRequest,
        RemoveChunksRequest,
        StartScrubRequest,
        PutChunkRequest,
        GetChunkRequest,
        HasChunksRequest,
        CopyChunksRequest,
        ChunkStoreStatusRequest,
        SubmitJobRequest,
        PlanJobRequest,
        ListJobsRequest,
        GetJobRequest,
        CancelJobRequest,
        ListAllocationsRequest,
        GetAllocationRequest,
        SetNodeSchedulingRequest,
        NodeSchedulingRequest,
        WatchAllocationsRequest,
        ReportAllocationsRequest,
        AllocLogsRequest,
        PlanObjectPutRequest,
        CommitObjectVersionRequest,
        GetObjectRequest,
        ListObjectsRequest,
        ObjectInfoRequest,
        MoveObjectTagRequest,
        DeleteObjectRequest,
        FsckRequest,
        LocateChunkRequest,
        SetNodeMaintenanceRequest,
        RaftRequest,
        PauseElectionRequest,
        CampaignRequest,
        RegisterControllerRequest,
    ];
    d.push((
        "manifest (CommitObjectVersion)",
        Box::new(|b: &[u8]| {
            if let Ok(pb) = <steward_proto::v1::ManifestPb as prost::Message>::decode(b) {
                let _ = steward_proto::conv::manifest_from_pb(&pb);
            }
        }),
    ));
    // The bare state record (snapshots, Raft snapshot transfer): this test found that
    // imbl's deserializer reserved the length a record declares; the state now decodes
    // its maps entry by entry (`core/src/state/imbl_de.rs`).
    d.push((
        "cluster state record",
        Box::new(|b: &[u8]| {
            let _ = steward_core::ClusterState::decode(b);
        }),
    ));
    d.push((
        "operator snapshot file",
        Box::new(|b: &[u8]| {
            let _ = steward_controller::snapshot_file::decode(b);
        }),
    ));
    d.push((
        "controller config",
        Box::new(|b: &[u8]| {
            if let Ok(f) = steward_controller::ControllerConfigFile::parse(&text(b)) {
                let _ = f.resolve();
            }
        }),
    ));
    d.push((
        "agent config",
        Box::new(|b: &[u8]| {
            if let Ok(f) = toml::from_str::<steward_agent::config::AgentConfigFile>(&text(b)) {
                let _ = f.resolve("host");
            }
        }),
    ));
    d.push((
        "job spec",
        Box::new(|b: &[u8]| {
            if let Ok(spec) = steward_core::job::JobSpec::from_toml(&text(b)) {
                let _ = spec.validate();
            }
        }),
    ));
    d.push((
        "identity URI, chunk id, token",
        Box::new(|b: &[u8]| {
            let t = text(b);
            let _ = steward_core::identity::Identity::parse_uri(&t);
            let _ = steward_core::chunk::ChunkId::parse(&t);
            let _ = steward_core::acl::parse(&t);
        }),
    ));
    d
}

/// Valid inputs to mutate: the decoders then reach past their first checks.
fn seeds() -> Vec<Vec<u8>> {
    let mut state = steward_core::ClusterState::default();
    state.apply(steward_core::Command::KvPut {
        key: "a/b".into(),
        value: b"value".to_vec(),
        expected_revision: None,
    });
    let job = std::fs::read(steward_tests::repo_root().join("examples/hello-gpu.toml"))
        .unwrap_or_default();
    let controller =
        std::fs::read(steward_tests::repo_root().join("deploy/config/controller.toml"))
            .unwrap_or_default();
    let put = prost::Message::encode_to_vec(&steward_proto::v1::KvPutRequest {
        key: "k".into(),
        value: vec![1; 32],
        expected_revision: Some(3),
        request_id: Some(steward_proto::v1::RequestId { client: 7, seq: 1 }),
    });
    vec![
        state.encode().expect("encode"),
        job,
        controller,
        put,
        b"spiffe://prod/agent/node-1".to_vec(),
    ]
}

fn mutate(seed: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    for (at, byte) in edits {
        if !v.is_empty() {
            let i = at % v.len();
            v[i] = *byte;
        }
    }
    v.truncate(cut.max(1).min(v.len().max(1)));
    v
}

/// The measurement itself works: a decode that allocates is seen allocating.
fn the_allocation_count_sees_a_decode() {
    let state = seeds().remove(0);
    let region = Region::new(GLOBAL);
    let decoded = steward_core::ClusterState::decode(&state).expect("decodes");
    let allocated = region.change().bytes_allocated;
    drop(decoded);
    assert!(allocated > 0, "the counting allocator saw nothing");
}

#[test]
fn no_decoder_panics_or_allocates_beyond_its_input() {
    the_allocation_count_sees_a_decode();
    let decoders = decoders();
    let seeds = seeds();
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    // Arbitrary bytes.
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..2048), |input| {
            for (what, decode) in &decoders {
                measured(what, &input, decode.as_ref())?;
            }
            Ok(())
        })
        .expect("arbitrary input");
    // Valid inputs with bytes changed and cut short.
    runner
        .run(
            &(
                0..seeds.len(),
                prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                any::<usize>(),
            ),
            |(s, edits, cut)| {
                let input = mutate(&seeds[s], &edits, cut % (seeds[s].len() + 1));
                for (what, decode) in &decoders {
                    measured(what, &input, decode.as_ref())?;
                }
                Ok(())
            },
        )
        .expect("mutated input");
    // Length prefixes that claim far more than the input holds.
    for huge in [
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x01, 0x04, 0xff, 0xff, 0xff, 0xff, 0x0f],
        [vec![0x12, 0xff, 0xff, 0xff, 0x7f], vec![0; 64]].concat(),
        // Cluster state records of formats 2 to 4 whose KV map claims 2^35 entries.
        vec![0x02, 0x00, 0xff, 0xff, 0xff, 0xff, 0x7f],
        vec![0x03, 0x00, 0xff, 0xff, 0xff, 0xff, 0x7f],
        vec![0x04, 0x00, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ] {
        for (what, decode) in &decoders {
            measured(what, &huge, decode.as_ref()).expect(what);
        }
    }
}
