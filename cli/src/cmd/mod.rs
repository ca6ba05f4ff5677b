//! One module per top-level command.

pub mod acl;
pub mod agent;
pub mod controller;
pub mod dev;
pub mod fsck;
pub mod job;
pub mod kv;
pub mod node;
pub mod object;
pub mod operator;
pub mod sim;
pub mod sim_churn;
pub mod sim_sweep;
pub mod status;
pub mod tls;
