//! The benchmark's output: one [`Row`] per measurement, optionally beside
//! its baseline and goal; over several runs, one [`Summary`] per row with
//! the median and the spread. Printed as tables and written as
//! `results.json` (the summaries), `results-runs.json` (every run's rows)
//! and `results.md` (both).

use std::path::Path;

use serde::Serialize;

/// A measured figure: its value and, where the method changed, the same
/// figure by the earlier method beside it: for a rate measured as a steady
/// state, the flow's rate over the whole run (the method of the runs
/// published before 2026-12-03; see [`super::support::Flow`]); for the
/// CPU per event in xoflow, the whole process with the load generator in
/// it (before 2026-12-05).
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub value: f64,
    pub whole_run: Option<f64>,
}

impl From<f64> for Figure {
    fn from(value: f64) -> Self {
        Figure {
            value,
            whole_run: None,
        }
    }
}

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
    /// The figure by the earlier method (see [`Figure`]), and for a rate
    /// its ratio to the baseline's whole-run rate (or to its value, for a
    /// baseline that has no steady state, such as one insert of a file).
    pub whole_run: Option<f64>,
    pub whole_run_ratio: Option<f64>,
}

impl Row {
    /// This row judged against an absolute `goal`: `met` says whether it
    /// reached it.
    pub(super) fn goal(mut self, goal: impl Into<String>, met: bool) -> Row {
        self.goal = Some(goal.into());
        self.met = Some(met);
        self
    }

    /// This row compared with its baseline but judged against no goal.
    pub(super) fn unjudged(mut self) -> Row {
        self.goal = None;
        self.met = None;
        self
    }

    /// This row beside what was asked of it (a rate to send at), which it
    /// is not judged against.
    pub(super) fn asked(mut self, asked: impl Into<String>) -> Row {
        self.goal = Some(asked.into());
        self
    }
}

pub(super) fn row(name: &str, value: impl Into<Figure>, unit: &str) -> Row {
    let f = value.into();
    Row {
        name: name.into(),
        value: f.value,
        unit: unit.into(),
        baseline: None,
        ratio: None,
        goal: None,
        met: None,
        whole_run: f.whole_run,
        whole_run_ratio: None,
    }
}

pub(super) fn compared(
    name: &str,
    value: impl Into<Figure>,
    unit: &str,
    baseline: impl Into<Figure>,
    goal: f64,
) -> Row {
    let (f, b) = (value.into(), baseline.into());
    let ratio = f.value / b.value.max(1e-9);
    Row {
        baseline: Some(b.value),
        ratio: Some(ratio),
        goal: Some(format!("≥ {goal:.2}×")),
        met: Some(ratio >= goal),
        whole_run_ratio: f
            .whole_run
            .map(|w| w / b.whole_run.unwrap_or(b.value).max(1e-9)),
        ..row(name, f, unit)
    }
}

/// One row over every run: the median and the extremes of its value and
/// of its ratio, and in how many runs its goal was met.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub unit: String,
    pub runs: usize,
    /// The median value (of an even number of runs: the mean of the two
    /// middle ones).
    pub value: f64,
    pub min: f64,
    pub max: f64,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    pub whole_run: Option<f64>,
    pub whole_run_ratio: Option<f64>,
    pub goal: Option<String>,
    /// Runs in which the goal was met.
    pub met_runs: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Each row's median and spread over `runs`, in the order of the first run
/// in which each row appears.
pub fn summarise(runs: &[Vec<Row>]) -> Vec<Summary> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs.iter().flatten() {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let rows: Vec<&Row> = runs.iter().flatten().filter(|r| r.name == name).collect();
            let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
            let some = |f: fn(&Row) -> Option<f64>| {
                let v: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
                (!v.is_empty()).then_some(v)
            };
            let ratios = some(|r| r.ratio);
            let met: Vec<bool> = rows.iter().filter_map(|r| r.met).collect();
            Summary {
                name: name.into(),
                unit: rows[0].unit.clone(),
                runs: rows.len(),
                value: median(values.clone()),
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                baseline: some(|r| r.baseline).map(median),
                ratio: ratios.clone().map(median),
                ratio_min: ratios
                    .as_ref()
                    .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min)),
                ratio_max: ratios.map(|v| v.into_iter().fold(f64::NEG_INFINITY, f64::max)),
                whole_run: some(|r| r.whole_run).map(median),
                whole_run_ratio: some(|r| r.whole_run_ratio).map(median),
                goal: rows.iter().find_map(|r| r.goal.clone()),
                met_runs: (!met.is_empty()).then(|| met.iter().filter(|m| **m).count()),
            }
        })
        .collect()
}

/// One run's rows as a Markdown table.
fn run_table(rows: &[Row]) -> String {
    let mut md = String::from(
        "| measurement | value | baseline | ratio | goal | met | whole run (earlier method): value / ratio |\n\
         | --- | ---: | ---: | ---: | --- | --- | ---: |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} {} | {} | {} | {} | {} | {} |\n",
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
            },
            whole(r.whole_run, r.whole_run_ratio),
        ));
    }
    md
}

fn whole(value: Option<f64>, ratio: Option<f64>) -> String {
    match (value, ratio) {
        (Some(v), Some(r)) => format!("{v:.1} / {r:.2}×"),
        (Some(v), None) => format!("{v:.1}"),
        _ => String::new(),
    }
}

/// The summaries as a Markdown table: median, spread, and the goal.
fn summary_table(summaries: &[Summary]) -> String {
    let mut md = String::from(
        "| measurement | median | spread (min–max) | baseline (median) | ratio median (min–max) | goal | met (runs) | whole run (earlier method), median: value / ratio |\n\
         | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |\n",
    );
    for s in summaries {
        md.push_str(&format!(
            "| {} | {:.1} {} | {:.1}–{:.1} | {} | {} | {} | {} | {} |\n",
            s.name,
            s.value,
            s.unit,
            s.min,
            s.max,
            s.baseline.map(|b| format!("{b:.1}")).unwrap_or_default(),
            match (s.ratio, s.ratio_min, s.ratio_max) {
                (Some(r), Some(lo), Some(hi)) => format!("{r:.2}× ({lo:.2}–{hi:.2})"),
                _ => String::new(),
            },
            s.goal.clone().unwrap_or_default(),
            s.met_runs
                .map(|m| format!("{m} of {}", s.runs))
                .unwrap_or_default(),
            whole(s.whole_run, s.whole_run_ratio),
        ));
    }
    md
}

/// Prints the tables and writes `results.json` (the summaries),
/// `results-runs.json` and `results.md` under `out`.
pub(super) fn write(out: &Path, runs: &[Vec<Row>]) -> anyhow::Result<Vec<Summary>> {
    std::fs::create_dir_all(out)?;
    let summaries = summarise(runs);
    let mut md = format!(
        "## Summary over {} run(s)\n\n{}",
        runs.len(),
        summary_table(&summaries)
    );
    for (i, rows) in runs.iter().enumerate() {
        md.push_str(&format!("\n## Run {}\n\n{}", i + 1, run_table(rows)));
    }
    println!("\n{md}");
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&summaries)?,
    )?;
    std::fs::write(
        out.join("results-runs.json"),
        serde_json::to_vec_pretty(runs)?,
    )?;
    println!("[bench] written to {}", out.display());
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_holds_each_rows_median_spread_and_goal_count() {
        let run = |v: f64, b: f64| {
            vec![
                compared("x", v, "events/s", b, 0.5),
                row("only in some runs", v, "ms"),
            ]
        };
        let mut third = run(30.0, 100.0);
        third.pop();
        let s = summarise(&[run(60.0, 100.0), run(40.0, 50.0), third]);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].value, s[0].min, s[0].max), (40.0, 30.0, 60.0));
        assert_eq!(s[0].ratio, Some(0.6));
        assert_eq!((s[0].ratio_min, s[0].ratio_max), (Some(0.3), Some(0.8)));
        assert_eq!(s[0].met_runs, Some(2));
        assert_eq!((s[1].runs, s[1].value), (2, 50.0));
        assert_eq!(s[1].met_runs, None);
    }

    #[test]
    fn a_steady_rate_is_compared_and_its_whole_run_rate_beside_it() {
        let r = compared(
            "sink",
            Figure {
                value: 80.0,
                whole_run: Some(60.0),
            },
            "rows/s",
            Figure {
                value: 100.0,
                whole_run: Some(75.0),
            },
            0.85,
        );
        assert_eq!((r.ratio, r.met), (Some(0.8), Some(false)));
        assert_eq!((r.whole_run, r.whole_run_ratio), (Some(60.0), Some(0.8)));
        // A baseline without a steady state: the whole-run rate against its value.
        let r = compared(
            "sink",
            Figure {
                value: 80.0,
                whole_run: Some(60.0),
            },
            "rows/s",
            120.0,
            0.95,
        );
        assert_eq!(r.whole_run_ratio, Some(0.5));
    }
}
