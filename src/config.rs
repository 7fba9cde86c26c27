//! Run configuration mechanics shared by every stage: built-in presets, JSON files and
//! `--set key=value` overrides, and the kind of a run folder.
//!
//! Each config lives beside what it configures (`tokenizer::config`, `tokenizer::run_config`,
//! `perceptual::config`, `data::config`, `transformer::config`). Every field has a default,
//! unknown keys are rejected, and each run config's `validate` checks ranges, so a bad config is a
//! clear error before any work starts. The fully resolved config is written as `config.json`
//! into every run folder, which makes the folder self-describing.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::path::Path;

/// What a run folder holds; stored in `config.json` so a stage can refuse the wrong kind of folder.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// Phase 1: encoder, codebook, decoder (+ discriminator).
    Tokenizer,
    /// Phase 2: frozen encoder/codebook with an attention-enhanced decoder.
    Decoder,
    /// A generative transformer on token maps.
    Transformer,
}

/// Reads a preset name from `presets` or a JSON file into a JSON value.
pub fn load_json_from(spec: &str, presets: &[(&str, &str)]) -> Result<Value> {
    if let Some((_, text)) = presets.iter().find(|(name, _)| *name == spec) {
        return serde_json::from_str(text).with_context(|| format!("built-in preset `{spec}`"));
    }
    let path = Path::new(spec);
    if !path.exists() {
        let names: Vec<_> = presets.iter().map(|(n, _)| *n).collect();
        bail!(
            "--config {spec}: no such file, and not a preset (presets: {})",
            names.join(", ")
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Applies `key.path=value` overrides. The value is parsed as JSON when it parses, else taken
/// as a string. Unknown keys are errors naming the valid keys at that level.
pub fn apply_overrides(mut root: Value, sets: &[String], defaults: &Value) -> Result<Value> {
    for set in sets {
        let (key, raw) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected key=value"))?;
        let value: Value =
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        let parts: Vec<&str> = key.split('.').collect();
        let mut node = &mut root;
        let mut schema = defaults;
        for (i, part) in parts.iter().enumerate() {
            let Some(schema_obj) = schema.as_object() else {
                bail!("--set {key}: `{}` is not a section", parts[..i].join("."));
            };
            let Some(next_schema) = schema_obj.get(*part) else {
                let valid: Vec<_> = schema_obj.keys().cloned().collect();
                bail!(
                    "--set {key}: unknown key `{part}` (valid here: {})",
                    valid.join(", ")
                );
            };
            schema = next_schema;
            if !node.is_object() {
                *node = Value::Object(Default::default());
            }
            let obj = node.as_object_mut().expect("object ensured above");
            if i + 1 == parts.len() {
                obj.insert(part.to_string(), value.clone());
                break;
            }
            node = obj
                .entry(part.to_string())
                .or_insert_with(|| next_schema.clone());
        }
    }
    Ok(root)
}

/// The leaves of a JSON object as `key.path=value` overrides (so a patch file gets the same
/// unknown-key checks as `--set`).
pub fn patch_to_sets(patch: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(obj) if !obj.is_empty() => {
                for (k, child) in obj {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &key, out);
                }
            }
            _ => out.push(format!("{prefix}={v}")),
        }
    }
    let mut out = Vec::new();
    walk(patch, "", &mut out);
    out
}

/// A run config with built-in presets (`--config NAME`).
pub trait Preset: Serialize + DeserializeOwned + Default {
    /// `(name, JSON text)` of the built-in presets.
    const PRESETS: &'static [(&'static str, &'static str)];
}

/// The config named by `spec` (a preset or a JSON file) with `--set` overrides applied; unknown
/// keys are errors naming the valid ones.
pub fn from_preset<T: Preset>(spec: &str, sets: &[String]) -> Result<T> {
    let defaults = serde_json::to_value(T::default())?;
    let root = apply_overrides(load_json_from(spec, T::PRESETS)?, sets, &defaults)?;
    serde_json::from_value(root).with_context(|| format!("invalid config ({spec} + --set)"))
}

/// `base` (e.g. a run's `config.json`) with `--set` overrides applied; `what` names the
/// source in errors.
pub fn overridden<T>(base: &T, sets: &[String], what: &str) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = serde_json::to_value(T::default())?;
    let root = apply_overrides(serde_json::to_value(base)?, sets, &defaults)?;
    serde_json::from_value(root).with_context(|| format!("invalid config ({what})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TokenizerRunConfig;

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let c: TokenizerRunConfig =
            from_preset("tiny", &["train.lr=0.5".into(), "data.path=foo".into()]).unwrap();
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.data.path, "foo");
        let err = from_preset::<TokenizerRunConfig>("tiny", &["train.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lrr") && err.contains("valid here"), "{err}");
        let err = from_preset::<TokenizerRunConfig>("tiny", &["train.lr".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn unknown_key_in_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"train": {"stepz": 3}}"#).unwrap();
        let err = from_preset::<TokenizerRunConfig>(path.to_str().unwrap(), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("stepz"), "{err:#}");
    }
}
