//! `steward`: the single binary. Runs a controller (`steward controller`), a local dev
//! cluster (`steward dev`), and the admin commands that talk to a cluster's admin API.

mod client;
mod cmd;
mod output;
mod process;

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
    /// (internal) The shim the agent starts for each allocation.
    #[command(hide = true)]
    AgentShim(cmd::agent::ShimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
}
