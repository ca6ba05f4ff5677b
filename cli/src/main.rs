//! `steward`: the single binary. Runs a controller (`steward controller`), a local dev
//! cluster (`steward dev`), and the admin commands that talk to a cluster's admin API.

mod client;
mod cmd;
mod output;
mod process;
mod security;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Output;

/// The `steward dev` admin addresses: the default for every admin command.
pub const DEV_ADDRS: &str = "127.0.0.1:7700,127.0.0.1:7701,127.0.0.1:7702";

#[derive(Parser)]
#[command(
    name = "steward",
    version,
    about = "Keeps an AI data center healthy and busy",
    propagate_version = true
)]
struct Cli {
    /// Admin API addresses of the controllers, comma separated (any one is enough).
    #[arg(long, global = true, env = "STEWARD_ADDR", default_value = DEV_ADDRS)]
    addr: String,
    /// Output format: readable tables, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    security: security::SecurityArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-machine agent, or print this machine's inventory.
    Agent(cmd::agent::AgentArgs),
    /// The agents' machines: list, show, health events.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// Run one controller of the Raft group.
    Controller(cmd::controller::ControllerArgs),
    /// Run a local three-controller cluster on 127.0.0.1 until Ctrl-C.
    Dev(cmd::dev::DevArgs),
    /// Show the controller group: members, leader, term, indexes, lag.
    Status(cmd::status::StatusArgs),
    /// The replicated key-value namespace for cluster metadata.
    #[command(subcommand)]
    Kv(cmd::kv::KvCommand),
    /// Operate the controller group: Raft membership and snapshots.
    #[command(subcommand)]
    Operator(cmd::operator::OperatorCommand),
    /// Replay a GPU-cluster trace through the scheduler's policies (FGD paper's experiment).
    Sim(cmd::sim::SimArgs),
    /// Jobs: run, plan, list, show, logs, cancel.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// Allocations: the placements of jobs' tasks.
    #[command(subcommand)]
    Alloc(cmd::job::AllocCommand),
    /// How safe the stored data is: chunks under-replicated, missing, rotten, by node
    /// (exits 1 when data is at risk).
    Fsck(cmd::fsck::FsckArgs),
    /// Chunks: where one is.
    #[command(subcommand)]
    Chunk(cmd::fsck::ChunkCommand),
    /// Objects and their versions: put, get, ls, versions, history, tag, untag, rm.
    #[command(subcommand)]
    Object(cmd::object::ObjectCommand),
    /// Access tokens: bootstrap, create, list, revoke.
    #[command(subcommand)]
    Acl(cmd::acl::AclCommand),
    /// Certificates: the cluster's CA, and TLS dirs for controllers, agents and clients.
    #[command(subcommand)]
    Tls(cmd::tls::TlsCommand),
    /// (internal) The shim the agent starts for each allocation.
    #[command(hide = true)]
    AgentShim(cmd::agent::ShimArgs),
}

/// `steward object get REF -o PATH`: there `-o` names the destination file, as operators
/// expect of a download, while everywhere else it picks the output format. After
/// `object get`, a `-o`/`--output` whose value is not a format becomes `--dest VALUE`.
fn rewrite_get_destination(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let is = |a: &std::ffi::OsString, s: &str| a.to_str() == Some(s);
    let Some(get_at) = args
        .windows(2)
        .position(|w| is(&w[0], "object") && is(&w[1], "get"))
    else {
        return args;
    };
    let is_format = |v: &str| ["json", "table"].contains(&v);
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str().unwrap_or_default();
        if i > get_at + 1 {
            if (a == "-o" || a == "--output")
                && args
                    .get(i + 1)
                    .and_then(|v| v.to_str())
                    .is_some_and(|v| !is_format(v))
            {
                out.push("--dest".into());
                out.push(args[i + 1].clone());
                i += 2;
                continue;
            }
            let joined = a.strip_prefix("--output=").or_else(|| {
                a.strip_prefix("-o")
                    .filter(|v| !v.is_empty() && !v.starts_with('='))
            });
            if let Some(v) = joined.filter(|v| !is_format(v)) {
                out.push("--dest".into());
                out.push(v.into());
                i += 1;
                continue;
            }
        }
        out.push(args[i].clone());
        i += 1;
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(rewrite_get_destination(std::env::args_os().collect()));
    security::init(cli.security.clone());
    // The shim runs no async runtime of its own (it outlives the agent; see agent::jobs::shim).
    if let Command::AgentShim(args) = &cli.command {
        return ExitCode::from(cmd::agent::run_shim(args).clamp(0, 255) as u8);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => cmd::agent::run(args).await,
            Command::Node(c) => cmd::node::run(&cli.addr, cli.output, c).await,
            Command::Controller(args) => cmd::controller::run(args).await,
            Command::Dev(args) => cmd::dev::run(args).await,
            Command::Status(args) => cmd::status::run(&cli.addr, cli.output, args).await,
            Command::Kv(c) => cmd::kv::run(&cli.addr, cli.output, c).await,
            Command::Operator(c) => cmd::operator::run(&cli.addr, cli.output, c).await,
            Command::Sim(args) => cmd::sim::run(cli.output, args),
            Command::Job(c) => cmd::job::run(&cli.addr, cli.output, c).await,
            Command::Alloc(c) => cmd::job::run_alloc(&cli.addr, cli.output, c).await,
            Command::Object(c) => cmd::object::run(&cli.addr, cli.output, c).await,
            Command::Fsck(args) => cmd::fsck::run(&cli.addr, cli.output, args).await,
            Command::Chunk(c) => cmd::fsck::run_chunk(&cli.addr, cli.output, c).await,
            Command::Tls(c) => cmd::tls::run(cli.output, c),
            Command::Acl(c) => cmd::acl::run(&cli.addr, cli.output, c).await,
            Command::AgentShim(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks the whole command tree (duplicate names, conflicting flags) here rather
    /// than when an operator first runs the broken subcommand.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn object_get_takes_its_destination_from_dash_o() {
        use clap::Parser;
        let parse = |line: &str| {
            let args = line.split(' ').map(std::ffi::OsString::from).collect();
            super::Cli::try_parse_from(super::rewrite_get_destination(args))
        };
        let dest = |line: &str| match parse(line).expect("parses").command {
            super::Command::Object(crate::cmd::object::ObjectCommand::Get {
                dest,
                dest_flag,
                ..
            }) => dest.or(dest_flag),
            _ => panic!("not object get"),
        };
        let path = |p: &str| Some(std::path::PathBuf::from(p));
        assert_eq!(
            dest("steward object get m -o /tmp/m.bin"),
            path("/tmp/m.bin")
        );
        assert_eq!(
            dest("steward object get m --output=out.bin"),
            path("out.bin")
        );
        assert_eq!(dest("steward object get m -oout.bin"), path("out.bin"));
        assert_eq!(dest("steward object get m out.bin"), path("out.bin"));
        assert_eq!(
            dest("steward object get m -o json out.bin"),
            path("out.bin")
        );
        let cli = parse("steward -o json object get m:prod -o x").expect("parses");
        assert!(matches!(cli.output, crate::output::Output::Json));
        // Elsewhere `-o` stays the format, and a bad one is still an error.
        assert!(parse("steward fsck -o json").is_ok());
        assert!(parse("steward fsck -o /tmp/x").is_err());
        assert!(
            parse("steward object get m -o a.bin b.bin").is_err(),
            "two destinations"
        );
    }
}
