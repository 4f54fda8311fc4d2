//! Configuration loading: embedded defaults, then a TOML file, then
//! environment variables.
//!
//! The defaults live in `deploy/config/xoflow.toml`, embedded at build time
//! so a binary runs with no file at all; the same file is the documented
//! reference. Environment variables override with `XOFLOW_` and `__` between
//! levels (`XOFLOW_KAFKA__BROKERS`). Only names containing `__` are read, so
//! unrelated `XOFLOW_*` variables never trip `deny_unknown_fields`.

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::de::DeserializeOwned;

/// The documented defaults for every setting.
pub const DEFAULT_TOML: &str = include_str!("../../deploy/config/xoflow.toml");

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from the embedded defaults, an optional file and the
/// environment, in that order of precedence (last wins).
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                message: "no such file".into(),
            });
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(
        Env::prefixed("XOFLOW_")
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    fig.extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Loads `T` from the embedded defaults overlaid with a TOML string, without
/// reading the environment: for tests, which must not see the developer's
/// variables.
pub fn from_toml<T: DeserializeOwned>(overlay: &str) -> Result<T, ConfigError> {
    Figment::from(Toml::string(DEFAULT_TOML))
        .merge(Toml::string(overlay))
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}
