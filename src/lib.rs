//! The `xoflow` binary's library half: the composed configuration, the
//! wiring that starts stages in one process, the demo and the sample data.
//!
//! Kept apart from `main.rs` so the end-to-end tests start exactly what the
//! binary starts, in-process, with port 0 and random names.

pub mod app;
pub mod bench;
pub mod config;
pub mod datagen;
pub mod demo;
pub mod sample;

pub use app::{Running, Stages, start};
pub use config::Config;
