//! The `xoflow` binary's library half: what the end-to-end tests and the
//! criterion benches start and feed, under the names they have always used.
//!
//! The wiring (configuration, [`start`]) lives in `xoflow-app` and the
//! generator, demo, benchmark and sample data in `xoflow-tools`; this crate
//! only re-exports them, so the tests start exactly what the binary starts,
//! in-process, with port 0 and random names.

pub use xoflow_app::{Config, Running, Stages, config, console, erase, replay, start};
pub use xoflow_tools::{bench, datagen, demo, sample, scenario};
