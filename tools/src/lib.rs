//! What xoflow runs besides its stages: `xoflow gen` ([`datagen`]),
//! `xoflow demo` ([`demo`]) and `xoflow bench` ([`bench`](mod@bench)), plus the small
//! fixed inputs the tests share ([`sample`] events of every kind and the
//! join's [`scenario`]).
//!
//! None of it is on a data path. The demo and the benchmark start stages
//! in-process through `xoflow-app`, exactly as `xoflow run` does; the rest
//! produces `xoflow.v1` events and depends only on the proto crate.

pub mod bench;
pub mod datagen;
pub mod demo;
pub mod sample;
pub mod scenario;
