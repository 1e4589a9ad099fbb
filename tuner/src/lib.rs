//! SpeedMimi's system tuner: profiles of sysctls, rlimits and CPU governors that
//! it shows, checks, diffs, applies, rolls back and persists, and a capacity
//! planner for a target connection count. `main.rs` only calls [`cli::main`].

pub mod apply;
pub mod atomic;
pub mod capacity;
pub mod cli;
pub mod failure;
pub mod governor;
pub mod host;
pub mod output;
pub mod persist;
pub mod plan;
pub mod profile;
pub mod render;
pub mod rlimit;
pub mod roots;
pub mod show;
pub mod state;
pub mod sysctl;
pub mod value;
