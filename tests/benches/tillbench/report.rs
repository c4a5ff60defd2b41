//! Percentiles, the printed table and the JSON file.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Stats {
        let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
        assert!(!v.is_empty());
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    pub fn json(&self) -> Value {
        json!({ "n": self.n, "p50_ms": self.p50, "p99_ms": self.p99, "min_ms": self.min, "max_ms": self.max })
    }
}

/// One line of the table: a figure, its floor, the ratio, and the target if the issue sets one.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub what: String,
    pub value: f64,
    pub unit: &'static str,
    pub floor: Option<(f64, String)>,
    pub target: Option<Target>,
    pub note: String,
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// value / floor at most this.
    Ratio(f64),
    /// value at most this (in the row's unit).
    Abs(f64),
    Both(f64, f64),
}

impl Row {
    pub fn new(key: &str, what: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            key: key.to_owned(),
            what: what.into(),
            value,
            unit,
            floor: None,
            target: None,
            note: String::new(),
        }
    }

    pub fn floor(mut self, value: f64, what: impl Into<String>) -> Row {
        self.floor = Some((value, what.into()));
        self
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.floor.as_ref().map(|(f, _)| self.value / f)
    }

    pub fn met(&self) -> Option<bool> {
        let ratio_ok = |r: f64| self.ratio().is_some_and(|x| x <= r);
        Some(match self.target? {
            Target::Ratio(r) => ratio_ok(r),
            Target::Abs(a) => self.value <= a,
            Target::Both(r, a) => ratio_ok(r) && self.value <= a,
        })
    }

    fn target_text(&self) -> String {
        let unit = self.unit;
        match self.target {
            None => String::new(),
            Some(Target::Ratio(r)) => format!("≤ {r:.2}×"),
            Some(Target::Abs(a)) => format!("≤ {} {unit}", num(a)),
            Some(Target::Both(r, a)) => format!("≤ {r:.0}× and ≤ {} {unit}", num(a)),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "key": self.key,
            "what": self.what,
            "value": self.value,
            "unit": self.unit,
            "floor": self.floor.as_ref().map(|(v, w)| json!({ "value": v, "what": w })),
            "ratio": self.ratio(),
            "target": self.target_text(),
            "met": self.met(),
            "note": self.note,
        })
    }
}

pub fn num(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A Markdown table (it reads fine in a terminal and pastes into BENCHMARKS.md as is).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| measure | value | floor (same run) | ratio | target | met |\n|---|---:|---|---:|---|:-:|\n",
    );
    for r in rows {
        let floor = r
            .floor
            .as_ref()
            .map(|(v, w)| format!("{} {} ({w})", num(*v), r.unit))
            .unwrap_or_default();
        let ratio = r.ratio().map(|x| format!("{x:.2}×")).unwrap_or_default();
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let what = if r.note.is_empty() {
            r.what.clone()
        } else {
            format!("{} — {}", r.what, r.note)
        };
        let _ = writeln!(
            out,
            "| {what} | {} {} | {floor} | {ratio} | {} | {met} |",
            num(r.value),
            r.unit,
            r.target_text()
        );
    }
    out
}
