//! The fio matrix shared by the NBD, GlusterFS and FUSE benchmarks:
//! sequential 1 MiB write/read (MiB/s) and random 4 KiB write/read (IOPS),
//! each at QD1 and QD32, one fio job per cell. Cells are interleaved (each
//! repetition runs every workload on every target in turn) so drifting
//! machine load spreads over all targets; the figure is the median of the
//! repetitions. Beside each figure: the CPU used by the target's server
//! processes during the cell (user + system seconds from `/proc/PID/stat`,
//! over the ramp + run seconds of the cell), i.e. how many cores the
//! servers kept busy.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::fio::{self, Job, Target};
use crate::procs;
use crate::stats::{median, record_ratio, table_header, table_row};

/// One fio workload of the matrix.
pub struct Workload {
    pub title: &'static str,
    pub short: &'static str,
    pub rw: &'static str,
    pub bs: u32,
    /// Report MiB/s (true) or IOPS.
    pub bandwidth: bool,
}

pub const WORKLOADS: [Workload; 4] = [
    Workload {
        title: "sequential write 1 MiB",
        short: "seqW 1M",
        rw: "write",
        bs: 1 << 20,
        bandwidth: true,
    },
    Workload {
        title: "sequential read 1 MiB",
        short: "seqR 1M",
        rw: "read",
        bs: 1 << 20,
        bandwidth: true,
    },
    Workload {
        title: "random write 4 KiB",
        short: "randW 4k",
        rw: "randwrite",
        bs: 4096,
        bandwidth: false,
    },
    Workload {
        title: "random read 4 KiB",
        short: "randR 4k",
        rw: "randread",
        bs: 4096,
        bandwidth: false,
    },
];

pub const QDS: [u32; 2] = [1, 32];

/// What one target runs, without its processes: enough to count its cells
/// and estimate its time before anything starts.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Run only these cells, as (fio pattern, QD); the others print "–".
    /// `None`: every cell.
    pub only: Option<&'static [(&'static str, u32)]>,
    /// Run at most this many repetitions (the others skip it); `None`: all
    /// of `Timing::reps`.
    pub reps: Option<usize>,
    /// Already laid out (shares its data with an earlier target, or has
    /// no data to lay out).
    pub laid_out: bool,
    /// Seconds each cell costs beyond ramp + run + fio's own start and stop
    /// (libgfapi's `glfs_fini`), for the estimate only.
    pub extra_s: f64,
}

impl Plan {
    /// Every cell, every repetition, laid out first.
    pub const ALL: Plan = Plan {
        only: None,
        reps: None,
        laid_out: false,
        extra_s: 0.0,
    };

    /// Does this target run `(rw, qd)` in repetition `rep`?
    pub fn runs(&self, rw: &str, qd: u32, rep: usize) -> bool {
        self.only.is_none_or(|o| o.contains(&(rw, qd))) && self.reps.is_none_or(|n| rep < n)
    }

    /// The cells this target runs over the whole matrix.
    pub fn cells(&self, t: Timing) -> usize {
        (0..t.reps)
            .map(|rep| {
                WORKLOADS
                    .iter()
                    .map(|w| QDS.iter().filter(|&&qd| self.runs(w.rw, qd, rep)).count())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// One thing fio measures, and the server processes whose CPU is counted.
pub struct Bench {
    /// Column title.
    pub name: String,
    pub target: Target,
    /// Server-side processes (bricks, NBD server, FUSE daemon, peer server).
    pub pids: Vec<u32>,
    pub plan: Plan,
}

/// Run lengths.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Bytes of each target to address.
    pub size: u64,
    pub reps: usize,
    pub ramp: u32,
    pub secs: u32,
}

/// fio's own start and stop around a cell's ramp + run (process start,
/// connection, JSON output): ≈ 0.4–0.5 s measured with other builds
/// running on the machine. For the estimate only.
pub const FIO_OVERHEAD_S: f64 = 0.5;

/// Layout rate assumed by the estimate (MiB/s; replica-3 and FUSE targets
/// lay out at ≈ 250, the peers faster).
pub const LAYOUT_MIB_S: f64 = 400.0;

impl Timing {
    /// Seconds one fio cell takes, start to end.
    pub fn cell_secs(&self) -> f64 {
        f64::from(self.ramp + self.secs) + FIO_OVERHEAD_S
    }
}

/// Seconds the matrix of `plans` should take: its cells and layouts.
pub fn estimate(plans: &[Plan], t: Timing) -> f64 {
    plans
        .iter()
        .map(|p| {
            let layout = if p.laid_out {
                0.0
            } else {
                t.size as f64 / f64::from(1u32 << 20) / LAYOUT_MIB_S + FIO_OVERHEAD_S
            };
            p.cells(t) as f64 * (t.cell_secs() + p.extra_s) + layout
        })
        .sum()
}

/// `figures[workload][qd][target]` = (figure, server cores) per repetition.
pub type Figures = Vec<Vec<Vec<Vec<(f64, f64)>>>>;

/// Lays every target out (one sequential 1 MiB QD32 pass over `size`),
/// then runs the matrix.
pub fn run(targets: &[Bench], t: Timing) -> Result<Figures> {
    for b in targets.iter().filter(|b| !b.plan.laid_out) {
        let t0 = Instant::now();
        fio::run(&Job {
            target: &b.target,
            size: t.size,
            rw: "write",
            bs: 1 << 20,
            qd: 32,
            ramp: 0,
            secs: 0,
        })
        .with_context(|| format!("laying out {}", b.name))?;
        eprintln!(
            "  laid out {} in {:.1} s",
            b.name,
            t0.elapsed().as_secs_f64()
        );
    }
    let mut figures = vec![vec![vec![Vec::new(); targets.len()]; QDS.len()]; WORKLOADS.len()];
    let total: usize = targets.iter().map(|b| b.plan.cells(t)).sum();
    let mut done = 0;
    for rep in 0..t.reps {
        for (w, wl) in WORKLOADS.iter().enumerate() {
            for (q, &qd) in QDS.iter().enumerate() {
                for (i, b) in targets.iter().enumerate() {
                    if !b.plan.runs(wl.rw, qd, rep) {
                        continue;
                    }
                    let cpu0 = procs::cpu_seconds(&b.pids);
                    let start = Instant::now();
                    let r = fio::run(&Job {
                        target: &b.target,
                        size: t.size,
                        rw: wl.rw,
                        bs: wl.bs,
                        qd,
                        ramp: t.ramp,
                        secs: t.secs,
                    })
                    .with_context(|| format!("{} QD{qd} on {}", wl.title, b.name))?;
                    let wall = start.elapsed().as_secs_f64();
                    done += 1;
                    eprintln!(
                        "  [{done}/{total}] {} QD{qd} {}: {wall:.1} s",
                        wl.short, b.name
                    );
                    // Over the loaded time (ramp + run), not fio's whole
                    // life: libgfapi's start and stop take seconds of idle.
                    let loaded = f64::from(t.ramp + t.secs).min(wall);
                    let cores = (procs::cpu_seconds(&b.pids) - cpu0) / loaded;
                    let fig = if wl.bandwidth { r.mib_s } else { r.iops };
                    figures[w][q][i].push((fig, cores));
                }
            }
        }
    }
    Ok(figures)
}

/// A ratio column: `targets[num] / targets[den]`, titled `title`.
pub struct RatioCol {
    pub num: usize,
    pub den: usize,
    pub title: &'static str,
}

/// Prints one table per workload: per QD, each target's median figure with
/// min–max (when more than one repetition) and server cores, then the
/// ratios. Ratios are recorded under `section` for the plot.
pub fn print(section: &str, targets: &[Bench], figures: &Figures, ratios: &[RatioCol]) {
    for (w, wl) in WORKLOADS.iter().enumerate() {
        println!(
            "\n### {} ({}; `median [min–max] · server CPU cores`)\n",
            wl.title,
            if wl.bandwidth { "MiB/s" } else { "IOPS" }
        );
        let mut cols: Vec<&str> = vec!["QD"];
        cols.extend(targets.iter().map(|b| b.name.as_str()));
        cols.extend(ratios.iter().map(|r| r.title));
        table_header(&cols);
        for (q, qd) in QDS.iter().enumerate() {
            let mut cells = vec![qd.to_string()];
            let mut med = Vec::new();
            for reps in &figures[w][q] {
                if reps.is_empty() {
                    cells.push("–".into());
                    med.push(f64::NAN);
                    continue;
                }
                let m = median(reps.iter().map(|r| r.0).collect());
                let c = median(reps.iter().map(|r| r.1).collect());
                let lo = reps.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
                let hi = reps.iter().map(|r| r.0).fold(f64::NEG_INFINITY, f64::max);
                cells.push(if reps.len() > 1 {
                    format!("{m:.0} [{lo:.0}–{hi:.0}] · {c:.2}")
                } else {
                    format!("{m:.0} · {c:.2}")
                });
                med.push(m);
            }
            for r in ratios {
                let v = med[r.num] / med[r.den];
                if v.is_finite() {
                    cells.push(format!("{v:.2}×"));
                    record_ratio(section, &format!("{} QD{qd} {}", wl.short, r.title), v);
                } else {
                    cells.push("–".into());
                }
            }
            table_row(&cells);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        size: 1 << 30,
        reps: 3,
        ramp: 1,
        secs: 5,
    };

    #[test]
    fn cells_follow_the_plan() {
        assert_eq!(Plan::ALL.cells(T), 24);
        let qd32 = Plan {
            only: Some(&[
                ("write", 32),
                ("read", 32),
                ("randwrite", 32),
                ("randread", 32),
            ]),
            reps: Some(1),
            ..Plan::ALL
        };
        assert_eq!(qd32.cells(T), 4);
        assert!(qd32.runs("read", 32, 0));
        assert!(!qd32.runs("read", 32, 1));
        assert!(!qd32.runs("read", 1, 0));
        let none = Plan {
            only: Some(&[]),
            ..Plan::ALL
        };
        assert_eq!(none.cells(T), 0);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn estimate_counts_cells_and_layouts() {
        let laid_out = Plan {
            laid_out: true,
            ..Plan::ALL
        };
        let cell = T.cell_secs();
        assert!(close(estimate(&[laid_out], T), 24.0 * cell));
        let gfapi = Plan {
            extra_s: 7.0,
            ..laid_out
        };
        assert!(close(estimate(&[gfapi], T), 24.0 * (cell + 7.0)));
        let layout = estimate(&[Plan::ALL], T) - 24.0 * cell;
        assert!(close(layout, 1024.0 / LAYOUT_MIB_S + FIO_OVERHEAD_S));
    }
}
