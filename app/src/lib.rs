//! The wiring of the `xoflow` process: the composed configuration (one
//! section per stage, each owned by the stage's crate), [`start`], which
//! runs the chosen stages on one shutdown token, and the [`console`] the
//! admin server serves beside them.
//!
//! A crate of its own so that both the binary and `xoflow-tools` (the demo
//! and the benchmark start stages in-process) use exactly what `xoflow run`
//! starts; the end-to-end tests reach it through the root crate.

pub mod config;
pub mod console;
pub mod erase;
pub mod replay;
mod start;

pub use config::{AdminConfig, Config};
pub use start::{DRAIN_BUDGET, Running, Stages, start};
