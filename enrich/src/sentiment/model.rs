//! The trained weights, embedded in the binary (`enrich/models/sentiment.bin`,
//! written by `enrich/train/train.py`) and decoded once, on first use.
//!
//! File layout: a text header of `key=value` lines between
//! `xoflow-text-model 1` and `end`, then `2^bits` buckets of three
//! little-endian f32 weights (positive, neutral, negative), interleaved so
//! that one feature costs one cache line.
//! The header also carries the provenance (corpora, package versions,
//! split, held-out metrics); the scorer reads only the keys below.

use std::sync::LazyLock;

static BYTES: &[u8] = include_bytes!("../../models/sentiment.bin");

/// The model, decoded on first use (a few milliseconds).
pub(crate) static MODEL: LazyLock<Model> = LazyLock::new(|| match Model::decode(BYTES) {
    Ok(m) => m,
    // The file is checked in and covered by tests: a bad one never ships.
    Err(e) => panic!("embedded sentiment model: {e}"),
});

/// A multinomial linear model over hashed features, temperature-scaled.
#[derive(Debug)]
pub(crate) struct Model {
    /// `2^bits` buckets of (positive, neutral, negative) weights, indexed by
    /// the top `bits` bits of a feature hash.
    pub weights: Vec<[f32; 3]>,
    /// `64 - bits`.
    pub shift: u32,
    pub bias: [f32; 3],
    /// Calibration: probabilities are softmax(logits / temp).
    pub temp: f32,
    /// Added to the calibrated neutral logit when choosing the label only
    /// (chosen on validation: how readily a text is called neutral).
    pub neutral_shift: f32,
    /// A text whose |score| is below this is neutral whatever the logits
    /// say (chosen on validation with the shift).
    pub neutral_band: f32,
    /// Whether the lexicon features were trained (and so are extracted).
    pub lexicon: bool,
}

impl Model {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        const MAGIC: &[u8] = b"xoflow-text-model 1\n";
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or("not a text model (magic)")?;
        let end = rest
            .windows(5)
            .position(|w| w == b"\nend\n")
            .ok_or("header has no end line")?;
        let header = std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())?;
        let body = &rest[end + 5..];
        let get = |key: &str| -> Result<&str, String> {
            header
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .ok_or(format!("header has no {key}"))
        };
        let bits: u32 = get("bits")?.parse().map_err(|e| format!("bits: {e}"))?;
        if !(8..=24).contains(&bits) {
            return Err(format!("bits {bits} out of 8..=24"));
        }
        if get("classes")? != "positive,neutral,negative" {
            return Err("classes are not positive,neutral,negative".into());
        }
        if body.len() != 12 << bits {
            return Err(format!("{} weight bytes for {bits} bits", body.len()));
        }
        let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let weights = body
            .chunks_exact(12)
            .map(|c| [f(&c[0..4]), f(&c[4..8]), f(&c[8..12])])
            .collect();
        let mut bias = [0.0f32; 3];
        let parts: Vec<&str> = get("bias")?.split(',').collect();
        if parts.len() != 3 {
            return Err("bias needs three values".into());
        }
        for (b, p) in bias.iter_mut().zip(parts) {
            *b = p.parse().map_err(|e| format!("bias: {e}"))?;
        }
        let temp: f32 = get("temp")?.parse().map_err(|e| format!("temp: {e}"))?;
        if temp.is_nan() || temp <= 0.0 {
            return Err(format!("temp {temp} is not positive"));
        }
        let neutral_shift: f32 = get("neutral_shift")?
            .parse()
            .map_err(|e| format!("neutral_shift: {e}"))?;
        let neutral_band: f32 = get("neutral_band")?
            .parse()
            .map_err(|e| format!("neutral_band: {e}"))?;
        Ok(Self {
            neutral_band,
            weights,
            shift: 64 - bits,
            bias,
            temp,
            neutral_shift,
            lexicon: get("lexicon")? == "1",
        })
    }

    /// The provenance header of the embedded model, as written by training.
    pub(crate) fn header() -> &'static str {
        let rest = &BYTES[20.min(BYTES.len())..];
        let end = rest.windows(5).position(|w| w == b"\nend\n").unwrap_or(0);
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }
}
