//! The benchmark's output: one [`Row`] per measurement, optionally beside
//! its baseline and goal, printed as a table and written as
//! `results.json` and `results.md`.

use std::path::Path;

use serde::Serialize;

/// One measured line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The baseline's value, when this row is compared to one.
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    /// The goal for the ratio (or the absolute), and whether it is met.
    pub goal: Option<String>,
    pub met: Option<bool>,
}

pub(super) fn row(name: &str, value: f64, unit: &str) -> Row {
    Row {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline: None,
        ratio: None,
        goal: None,
        met: None,
    }
}

pub(super) fn compared(name: &str, value: f64, unit: &str, baseline: f64, goal: f64) -> Row {
    let ratio = value / baseline.max(1e-9);
    Row {
        baseline: Some(baseline),
        ratio: Some(ratio),
        goal: Some(format!("≥ {goal:.2}×")),
        met: Some(ratio >= goal),
        ..row(name, value, unit)
    }
}

/// Prints the table and writes `results.json` and `results.md` under `out`.
pub(super) fn write(out: &Path, rows: &[Row]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut md = String::from(
        "| measurement | value | baseline | ratio | goal | met |\n| --- | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} {} | {} | {} | {} | {} |\n",
            r.name,
            r.value,
            r.unit,
            r.baseline.map(|b| format!("{b:.1}")).unwrap_or_default(),
            r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
            r.goal.clone().unwrap_or_default(),
            match r.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            }
        ));
    }
    println!("\n{md}");
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(rows)?)?;
    println!("[bench] written to {}", out.display());
    Ok(())
}
