//! Steward's integration tests: one binary. Each module is one capability.

mod common;

mod agent_gpu_faults;
mod agent_inventory;
mod agent_liveness;
mod agent_registration;
mod chaos_scenarios;
mod cli_operator;
mod config_examples;
mod control_races;
mod deploy_units;
mod dev_cluster;
mod jobs;
mod jobs_control;
mod jobs_fencing;
mod jobs_isolation;
mod metrics_promtool;
mod objects;
mod raft_chaos;
mod raft_failover;
mod raft_membership;
mod raft_snapshot;
mod raft_wiped;
mod reflection_health;
mod rolling_upgrade;
mod security;
mod sim_churn;
mod sim_sweep;
mod sim_trace;
