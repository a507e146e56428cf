//! Report: per-round measurements, medians over rounds, the Markdown table and the target
//! checks (every ratio is computed within one round, then the median over rounds is quoted).

use crate::load::LoadResult;

/// Figures of one request kind in one round.
#[derive(Clone, Debug)]
pub struct KindFigures {
    pub name: &'static str,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// One row measured once.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub kinds: Vec<KindFigures>,
    /// The floor measured beside this row in the same round, in slices taking turns with it
    /// (the floor row's is itself); `None` when the run measured the floor once per round only
    /// (`--unpaired`).
    pub paired_floor: Option<Box<Measurement>>,
}

impl Measurement {
    pub fn from_load(r: &LoadResult, peak_rss_kib: Option<u64>) -> Self {
        let all = r.merged();
        Measurement {
            rps: r.rps(),
            p50_us: all.p50_us() as f64,
            p99_us: all.p99_us() as f64,
            cpu_us_per_req: r.cpu_us_per_req(),
            peak_rss_kib,
            errors: r.errors(),
            first_error: r.first_error(),
            kinds: r
                .kinds
                .iter()
                .map(|k| KindFigures {
                    name: k.name,
                    rps: r.kind_rps(k),
                    p50_us: k.p50_us() as f64,
                    p99_us: k.p99_us() as f64,
                })
                .collect(),
            paired_floor: None,
        }
    }

    pub fn kind(&self, name: &str) -> Option<&KindFigures> {
        self.kinds.iter().find(|k| k.name == name)
    }
}

pub enum Status {
    /// Measured in every round so far (one entry per round).
    Measured,
    Skipped(String),
    Failed(String),
}

pub struct RowReport {
    pub id: &'static str,
    pub label: String,
    pub status: Status,
    pub rounds: Vec<Measurement>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl RowReport {
    fn med(&self, f: impl Fn(&Measurement) -> Option<f64>) -> Option<f64> {
        median(self.rounds.iter().filter_map(f).collect())
    }

    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(|m| m.errors).sum()
    }
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".into(),
    }
}

/// A figure of one measurement that a ratio divides.
#[derive(Clone, Copy, Debug)]
pub enum Figure {
    Rps,
    P99,
    CpuPerReq,
    /// The p99 of one request kind of a mixed row.
    KindP99(&'static str),
}

impl Figure {
    pub fn of(self, m: &Measurement) -> Option<f64> {
        match self {
            Figure::Rps => Some(m.rps),
            Figure::P99 => Some(m.p99_us),
            Figure::CpuPerReq => m.cpu_us_per_req,
            Figure::KindP99(kind) => m.kind(kind).map(|k| k.p99_us),
        }
    }

    /// The same figure of a measurement of the floor (whose one kind stands for every kind).
    fn of_floor(self, floor: &Measurement) -> Option<f64> {
        match self {
            Figure::KindP99(_) => Figure::P99.of(floor),
            other => other.of(floor),
        }
    }

    /// `m`'s figure ÷ the same figure of the floor measured beside it.
    fn normalized(self, m: &Measurement) -> Option<f64> {
        Some(self.of(m)? / self.of_floor(m.paired_floor.as_deref()?)?)
    }
}

/// Median over rounds of `num(row a) / den(row b)`, pairing measurements of the same round.
/// When each has a floor measured beside it, both are first divided by their own floor:
/// the ratio compares what each costs over the floor at the time it ran, so a slow spell of
/// the machine during one of them does not count against it.
pub fn ratio(a: &RowReport, b: &RowReport, num: Figure, den: Figure) -> Option<f64> {
    if !matches!(a.status, Status::Measured) || !matches!(b.status, Status::Measured) {
        return None;
    }
    median(
        a.rounds
            .iter()
            .zip(&b.rounds)
            .filter_map(|(x, y)| match (num.normalized(x), den.normalized(y)) {
                (Some(nx), Some(ny)) => Some(nx / ny),
                _ => Some(num.of(x)? / den.of(y)?),
            })
            .collect(),
    )
}

/// The main table, in Markdown.
pub fn table(rows: &[RowReport], floor: Option<&RowReport>) -> String {
    let mut out = String::new();
    out.push_str("| # | row | req/s | p50 µs | p99 µs | server CPU µs/req | peak RSS MB | errors | req/s ÷ floor | p99 ÷ floor | CPU/req ÷ floor |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, r) in rows.iter().enumerate() {
        match &r.status {
            Status::Skipped(note) => {
                out.push_str(&format!(
                    "| {} | {} | skipped: {} | | | | | | | | |\n",
                    i + 1,
                    r.label,
                    note.replace('\n', " ")
                ));
                continue;
            }
            Status::Failed(msg) => {
                out.push_str(&format!(
                    "| {} | {} | FAILED: {} | | | | | | | | |\n",
                    i + 1,
                    r.label,
                    crate::load::truncate(&msg.replace('\n', " "), 200)
                ));
                continue;
            }
            Status::Measured => {}
        }
        let (rr, pr, cr) = match floor {
            Some(f) => (
                ratio(r, f, Figure::Rps, Figure::Rps),
                ratio(r, f, Figure::P99, Figure::P99),
                ratio(r, f, Figure::CpuPerReq, Figure::CpuPerReq),
            ),
            None => (None, None, None),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            r.label,
            fmt(r.med(|m| Some(m.rps)), 0),
            fmt(r.med(|m| Some(m.p50_us)), 0),
            fmt(r.med(|m| Some(m.p99_us)), 0),
            fmt(r.med(|m| m.cpu_us_per_req), 1),
            fmt(r.med(|m| m.peak_rss_kib.map(|k| k as f64 / 1024.0)), 1),
            r.errors(),
            fmt(rr, 3),
            fmt(pr, 3),
            fmt(cr, 3),
        ));
        let kinds = r.rounds.first().map(|m| m.kinds.len()).unwrap_or(0);
        if kinds > 1 {
            for k in 0..kinds {
                let name = r.rounds[0].kinds[k].name;
                let med = |f: fn(&KindFigures) -> f64| {
                    median(
                        r.rounds
                            .iter()
                            .filter_map(|m| m.kind(name).map(f))
                            .collect(),
                    )
                };
                out.push_str(&format!(
                    "| | ↳ {name} | {} | {} | {} | | | | | | |\n",
                    fmt(med(|k| k.rps), 0),
                    fmt(med(|k| k.p50_us), 0),
                    fmt(med(|k| k.p99_us), 0),
                ));
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    AtLeast,
    AtMost,
}

pub struct Target {
    pub name: String,
    pub value: Option<f64>,
    pub cmp: Cmp,
    pub threshold: f64,
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        match (self.value, &self.cmp) {
            (None, _) => "n/a",
            (Some(v), Cmp::AtLeast) if v >= self.threshold => "PASS",
            (Some(v), Cmp::AtMost) if v <= self.threshold => "PASS",
            _ => "FAIL",
        }
    }
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::new();
    out.push_str("| target | measured (median of per-round ratios) | required | verdict |\n");
    out.push_str("|---|---:|---:|---|\n");
    for t in targets {
        let req = match t.cmp {
            Cmp::AtLeast => format!("≥ {:.2}", t.threshold),
            Cmp::AtMost => format!("≤ {:.2}", t.threshold),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.name,
            fmt(t.value, 3),
            req,
            t.verdict()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rps: f64, p99_us: f64) -> Measurement {
        Measurement {
            rps,
            p50_us: p99_us / 2.0,
            p99_us,
            cpu_us_per_req: Some(1e6 / rps),
            peak_rss_kib: None,
            errors: 0,
            first_error: None,
            kinds: vec![KindFigures {
                name: "read",
                rps,
                p50_us: p99_us / 2.0,
                p99_us,
            }],
            paired_floor: None,
        }
    }

    /// A row measured beside a floor that ran at `floor_rps`.
    fn beside(rps: f64, floor_rps: f64) -> Measurement {
        Measurement {
            paired_floor: Some(Box::new(measured(floor_rps, 1000.0))),
            ..measured(rps, 1000.0)
        }
    }

    fn row(id: &'static str, rounds: Vec<Measurement>) -> RowReport {
        RowReport {
            id,
            label: id.into(),
            status: Status::Measured,
            rounds,
        }
    }

    /// With paired floors a row is compared with the floor beside it, not with the floor's
    /// own measurement, which may have run in a slower or faster moment.
    #[test]
    fn paired_rows_are_divided_by_the_floor_beside_them() {
        let floor_alone = measured(50.0, 1000.0);
        let floor = row(
            "floor",
            vec![Measurement {
                paired_floor: Some(Box::new(floor_alone.clone())),
                ..floor_alone
            }],
        );
        let a = row("a", vec![beside(90.0, 100.0)]);
        let c = row("c", vec![beside(60.0, 50.0)]);
        let near = |x: Option<f64>, want: f64| (x.unwrap() - want).abs() < 1e-9;
        assert!(near(ratio(&a, &floor, Figure::Rps, Figure::Rps), 0.9));
        // Two rows: each over its own floor first (0.9 ÷ 1.2).
        assert!(near(ratio(&a, &c, Figure::Rps, Figure::Rps), 0.75));
        // A kind's p99 is taken over the floor's p99.
        let slow = row(
            "slow",
            vec![Measurement {
                paired_floor: Some(Box::new(measured(100.0, 500.0))),
                ..measured(90.0, 1000.0)
            }],
        );
        assert!(near(
            ratio(&slow, &a, Figure::KindP99("read"), Figure::P99),
            2.0
        ));
        // Unpaired measurements divide as measured.
        let plain = row("plain", vec![measured(45.0, 1000.0)]);
        assert!(near(ratio(&plain, &floor, Figure::Rps, Figure::Rps), 0.9));
    }
}
