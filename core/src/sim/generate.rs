//! Workload families derived from a default trace, the way the FGD paper builds its variants
//! (`steward sim generate`), and the statistics that compare a generated trace with a
//! published one.
//!
//! Every family changes one thing and keeps the rest of the trace as it is; the level is a
//! percentage. Deterministic by seed (ChaCha8). What each family does:
//!
//! - **gpuspec X**: X % of the GPU tasks (chosen uniformly, without replacement) get a
//!   GPU-model constraint; the rest have none. Each constraint is drawn from
//!   [`SPEC_CATALOGUE`], the constraints (and their frequencies) that the paper's
//!   `gpuspec10` trace carries: single models and the few model sets its tasks list. A
//!   catalogue entry naming a model the node list lacks is skipped.
//! - **multigpu X**: multi-GPU tasks (2 or more whole GPUs) make up X % of the GPU demand
//!   (Σ num_gpu × gpu_milli): multi-GPU tasks of the trace are resampled with replacement
//!   and appended while their share is under X (or removed at random while it is over).
//! - **gpushare X**: GPU-sharing tasks (one GPU, under 1000 milli) make up X % of the GPU
//!   demand: the GPU tasks are resampled (as many as the trace has), each draw a sharing
//!   task with the probability that gives X in expectation and a whole-GPU task otherwise;
//!   CPU-only tasks are kept.
//! - **cpu X**: the CPU-only tasks ask for X % of [`CPU_REFERENCE_SHARE`] of the GPU tasks'
//!   CPU: CPU-only tasks of the trace are resampled with replacement until their CPU
//!   reaches it; GPU tasks are kept.
//!
//! Resampled lists are shuffled and renamed `openb-pod-NNNN` in that order (the simulator
//! sorts tasks by name, then shuffles them by its own seed); every other column of a row
//! (creation and deletion times among them) travels with it.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// GPU-model constraints and their weights, as the paper's `gpuspec10` trace has them
/// (732 constrained tasks).
pub const SPEC_CATALOGUE: &[(&str, u32)] = &[
    ("T4", 355),
    ("G2", 120),
    ("P100", 100),
    ("V100M16|V100M32", 61),
    ("P100|V100M16|V100M32", 26),
    ("G2|P100|T4|V100M16|V100M32", 20),
    ("G3", 17),
    ("A10|G2|T4|V100M16|V100M32", 9),
    ("P100|V100M16", 6),
    ("P100|T4|V100M16|V100M32", 5),
    ("V100M16", 4),
    ("V100M32", 4),
    ("A10|G2|P100|T4|V100M16|V100M32", 3),
    ("T4|V100M16|V100M32", 1),
    ("A10|T4", 1),
];

/// The CPU-only demand that `cpu100` stands for, as a share of the GPU tasks' CPU
/// request: the paper's `cpu100` trace has 789 CPU-only tasks asking for 14,054,200
/// milli-CPU beside 66,238,112 for its GPU tasks (the paper does not publish its
/// reference; this is where its file sits).
pub const CPU_REFERENCE_SHARE: f64 = 14_054_200.0 / 66_238_112.0;

/// Most tasks a generated trace may hold.
pub const MAX_GENERATED_TASKS: usize = 1_000_000;

/// One row of a task list: the columns the families read, and the rest kept verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub name: String,
    pub cpu_milli: i64,
    pub num_gpu: i64,
    pub gpu_milli: i64,
    pub gpu_spec: String,
    /// Every column, in the header's order (the ones above included).
    pub fields: Vec<String>,
}

impl TaskRow {
    pub fn class(&self) -> TaskClass {
        match (self.num_gpu, self.gpu_milli) {
            (0, _) | (_, 0) => TaskClass::CpuOnly,
            (1, m) if m < 1000 => TaskClass::Sharing,
            (1, _) => TaskClass::OneGpu,
            _ => TaskClass::MultiGpu,
        }
    }

    /// GPU demand in milli-GPU.
    pub fn gpu_demand(&self) -> i64 {
        self.num_gpu * self.gpu_milli
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskClass {
    CpuOnly,
    Sharing,
    OneGpu,
    MultiGpu,
}

impl TaskClass {
    pub const ALL: [TaskClass; 4] = [
        TaskClass::CpuOnly,
        TaskClass::Sharing,
        TaskClass::OneGpu,
        TaskClass::MultiGpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskClass::CpuOnly => "cpu-only",
            TaskClass::Sharing => "sharing",
            TaskClass::OneGpu => "one-gpu",
            TaskClass::MultiGpu => "multi-gpu",
        }
    }
}

/// A task list: its header and rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskList {
    pub header: Vec<String>,
    pub rows: Vec<TaskRow>,
}

/// The four families of the paper's sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    GpuSpec,
    MultiGpu,
    GpuShare,
    Cpu,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::GpuSpec,
        Family::MultiGpu,
        Family::GpuShare,
        Family::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::GpuSpec => "gpuspec",
            Family::MultiGpu => "multigpu",
            Family::GpuShare => "gpushare",
            Family::Cpu => "cpu",
        }
    }

    /// The levels of the paper's sweep.
    pub fn levels(self) -> &'static [u32] {
        match self {
            Family::GpuSpec => &[10, 20, 25, 33],
            Family::MultiGpu => &[20, 30, 40, 50],
            Family::GpuShare => &[20, 40, 60, 80],
            Family::Cpu => &[100, 150, 200, 250],
        }
    }

    /// Levels a family can be generated at (a share of tasks or demand in %, or for
    /// `cpu` a multiple of the reference).
    pub fn level_range(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Family::GpuSpec => 0..=100,
            Family::MultiGpu | Family::GpuShare => 1..=99,
            Family::Cpu => 0..=1000,
        }
    }
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!("unknown family `{s}`; choose from gpuspec, multigpu, gpushare, cpu")
            })
    }
}

/// Reads a task list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
pub fn parse_task_list(text: &str) -> Result<TaskList, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("task list header: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("task list: missing column `{name}`"))
    };
    let (name, cpu, ngpu, milli) = (
        col("name")?,
        col("cpu_milli")?,
        col("num_gpu")?,
        col("gpu_milli")?,
    );
    let spec = col("gpu_spec").ok();
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| format!("task list: {e}"))?;
        let line = rec.position().map_or(0, |p| p.line());
        let fields: Vec<String> = rec.iter().map(|f| f.trim().to_string()).collect();
        let int = |c: usize, what: &str| {
            fields
                .get(c)
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    format!("task list line {line}: `{what}` is not a non-negative integer")
                })
        };
        rows.push(TaskRow {
            name: fields.get(name).cloned().unwrap_or_default(),
            cpu_milli: int(cpu, "cpu_milli")?,
            num_gpu: int(ngpu, "num_gpu")?,
            gpu_milli: int(milli, "gpu_milli")?,
            gpu_spec: spec
                .and_then(|c| fields.get(c).cloned())
                .unwrap_or_default(),
            fields,
        });
        if rows.len() > MAX_GENERATED_TASKS {
            return Err(format!("task list: more than {MAX_GENERATED_TASKS} tasks"));
        }
    }
    Ok(TaskList { header, rows })
}

impl TaskList {
    /// Writes every row's name and constraint back into its fields (a `gpu_spec` column
    /// is added when the list had none).
    fn sync_fields(&mut self) {
        let spec_col = match self.header.iter().position(|h| h == "gpu_spec") {
            Some(c) => c,
            None => {
                self.header.push("gpu_spec".into());
                self.header.len() - 1
            }
        };
        let name_col = self.header.iter().position(|h| h == "name").unwrap_or(0);
        for r in &mut self.rows {
            r.fields.resize(self.header.len(), String::new());
            r.fields[spec_col] = r.gpu_spec.clone();
            r.fields[name_col] = r.name.clone();
        }
    }

    /// The list as CSV.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(&self.header);
        for r in &self.rows {
            let _ = w.write_record(&r.fields);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// Generates `family` at `level` from `base` (the default trace) for a cluster whose GPU
/// models are `models` (names as the node list writes them).
pub fn generate(
    base: &TaskList,
    models: &[String],
    family: Family,
    level: u32,
    seed: u64,
) -> Result<TaskList, String> {
    if !family.level_range().contains(&level) {
        let r = family.level_range();
        return Err(format!(
            "{} level {level} is out of range {}..={}",
            family.name(),
            r.start(),
            r.end()
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = level as f64 / 100.0;
    let pool = |class: TaskClass| -> Vec<&TaskRow> {
        base.rows.iter().filter(|r| r.class() == class).collect()
    };
    let need = |p: &[&TaskRow], what: &str| {
        if p.is_empty() {
            Err(format!("the base trace has no {what} tasks to resample"))
        } else {
            Ok(())
        }
    };
    let mut rows: Vec<TaskRow>;
    match family {
        Family::GpuSpec => {
            let catalogue: Vec<(&str, u32)> = SPEC_CATALOGUE
                .iter()
                .copied()
                .filter(|(spec, _)| spec.split('|').all(|m| models.iter().any(|n| n == m)))
                .collect();
            if catalogue.is_empty() && level > 0 {
                return Err(
                    "no GPU-model constraint of the catalogue names a model of this cluster".into(),
                );
            }
            rows = base.rows.clone();
            for r in &mut rows {
                r.gpu_spec.clear();
            }
            let mut gpu: Vec<usize> = (0..rows.len())
                .filter(|&i| rows[i].class() != TaskClass::CpuOnly)
                .collect();
            gpu.shuffle(&mut rng);
            let marked = (x * gpu.len() as f64).round() as usize;
            // Each constraint gets its share of the marked tasks exactly (largest
            // remainders), so the model mix does not drift with the seed.
            let total: u32 = catalogue.iter().map(|(_, w)| w).sum();
            let exact: Vec<f64> = catalogue
                .iter()
                .map(|(_, w)| marked as f64 * *w as f64 / total.max(1) as f64)
                .collect();
            let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
            let mut by_remainder: Vec<usize> = (0..exact.len()).collect();
            by_remainder.sort_by(|&a, &b| {
                (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor()))
            });
            let short = marked - counts.iter().sum::<usize>();
            for &k in by_remainder.iter().take(short) {
                counts[k] += 1;
            }
            let specs = catalogue
                .iter()
                .zip(counts)
                .flat_map(|((spec, _), n)| std::iter::repeat_n(*spec, n));
            for (&i, spec) in gpu[..marked].iter().zip(specs) {
                rows[i].gpu_spec = spec.to_string();
            }
            let mut list = TaskList {
                header: base.header.clone(),
                rows,
            };
            list.sync_fields();
            return Ok(list);
        }
        Family::MultiGpu => {
            let multi = pool(TaskClass::MultiGpu);
            need(&multi, "multi-GPU")?;
            rows = base.rows.clone();
            let share = |rows: &[TaskRow]| {
                let total: i64 = rows.iter().map(TaskRow::gpu_demand).sum();
                let m: i64 = rows
                    .iter()
                    .filter(|r| r.class() == TaskClass::MultiGpu)
                    .map(TaskRow::gpu_demand)
                    .sum();
                (m as f64, total as f64)
            };
            let (mut m, mut total) = share(&rows);
            while m < x * total {
                if rows.len() >= MAX_GENERATED_TASKS {
                    return Err(format!("more than {MAX_GENERATED_TASKS} tasks"));
                }
                let r = (*multi.choose(&mut rng).expect("not empty")).clone();
                m += r.gpu_demand() as f64;
                total += r.gpu_demand() as f64;
                rows.push(r);
            }
            while m > x * total {
                let idx: Vec<usize> = (0..rows.len())
                    .filter(|&i| rows[i].class() == TaskClass::MultiGpu)
                    .collect();
                let Some(&i) = idx.choose(&mut rng) else {
                    break;
                };
                let r = rows.remove(i);
                m -= r.gpu_demand() as f64;
                total -= r.gpu_demand() as f64;
            }
        }
        Family::GpuShare => {
            let sharing = pool(TaskClass::Sharing);
            let whole: Vec<&TaskRow> = base
                .rows
                .iter()
                .filter(|r| matches!(r.class(), TaskClass::OneGpu | TaskClass::MultiGpu))
                .collect();
            need(&sharing, "GPU-sharing")?;
            need(&whole, "whole-GPU")?;
            let mean = |p: &[&TaskRow]| {
                p.iter().map(|r| r.gpu_demand() as f64).sum::<f64>() / p.len() as f64
            };
            let (s, w) = (mean(&sharing), mean(&whole));
            // q·s / (q·s + (1−q)·w) = x
            let q = x * w / (s * (1.0 - x) + x * w);
            let n = base.rows.len() - pool(TaskClass::CpuOnly).len();
            rows = pool(TaskClass::CpuOnly).into_iter().cloned().collect();
            for _ in 0..n {
                let from = if rng.random_bool(q.clamp(0.0, 1.0)) {
                    &sharing
                } else {
                    &whole
                };
                rows.push((*from.choose(&mut rng).expect("not empty")).clone());
            }
        }
        Family::Cpu => {
            let cpu = pool(TaskClass::CpuOnly);
            need(&cpu, "CPU-only")?;
            rows = base
                .rows
                .iter()
                .filter(|r| r.class() != TaskClass::CpuOnly)
                .cloned()
                .collect();
            let gpu_cpu: i64 = rows.iter().map(|r| r.cpu_milli).sum();
            let target = x * CPU_REFERENCE_SHARE * gpu_cpu as f64;
            let mut have = 0.0;
            while have < target {
                if rows.len() >= MAX_GENERATED_TASKS {
                    return Err(format!("more than {MAX_GENERATED_TASKS} tasks"));
                }
                let r = (*cpu.choose(&mut rng).expect("not empty")).clone();
                have += r.cpu_milli as f64;
                rows.push(r);
            }
        }
    }
    rows.shuffle(&mut rng);
    let width = rows.len().saturating_sub(1).to_string().len().max(4);
    for (i, r) in rows.iter_mut().enumerate() {
        r.name = format!("openb-pod-{i:0width$}");
    }
    let mut list = TaskList {
        header: base.header.clone(),
        rows,
    };
    list.sync_fields();
    Ok(list)
}

/// What a task list is made of: the figures the families move, to compare a generated
/// trace with a published one.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceStats {
    pub tasks: usize,
    /// Share of tasks (%) by class, in [`TaskClass::ALL`] order.
    pub task_share: [f64; 4],
    /// Share of the GPU demand (%) by class, in [`TaskClass::ALL`] order.
    pub demand_share: [f64; 4],
    /// Σ num_gpu × gpu_milli.
    pub gpu_demand: i64,
    /// CPU-only tasks' CPU over the GPU tasks' CPU.
    pub cpu_only_ratio: f64,
    /// Share of GPU tasks (%) with a GPU-model constraint.
    pub constrained: f64,
    /// Each model's share (%) of the model names the constraints list.
    pub model_mix: Vec<(String, f64)>,
}

pub fn stats(list: &TaskList) -> TraceStats {
    let n = list.rows.len().max(1) as f64;
    let mut count = [0usize; 4];
    let mut demand = [0i64; 4];
    let (mut cpu_only, mut gpu_cpu) = (0i64, 0i64);
    let mut constrained = 0usize;
    let mut mix: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &list.rows {
        let c = TaskClass::ALL
            .iter()
            .position(|&k| k == r.class())
            .expect("a class");
        count[c] += 1;
        demand[c] += r.gpu_demand();
        if r.class() == TaskClass::CpuOnly {
            cpu_only += r.cpu_milli;
        } else {
            gpu_cpu += r.cpu_milli;
            if !r.gpu_spec.is_empty() {
                constrained += 1;
                for m in r.gpu_spec.split('|') {
                    *mix.entry(m.to_string()).or_default() += 1;
                }
            }
        }
    }
    let total: i64 = demand.iter().sum();
    let listed: usize = mix.values().sum();
    let gpu_tasks = list.rows.len() - count[0];
    TraceStats {
        tasks: list.rows.len(),
        task_share: count.map(|c| 100.0 * c as f64 / n),
        demand_share: demand.map(|d| 100.0 * d as f64 / total.max(1) as f64),
        gpu_demand: total,
        cpu_only_ratio: cpu_only as f64 / gpu_cpu.max(1) as f64,
        constrained: 100.0 * constrained as f64 / gpu_tasks.max(1) as f64,
        model_mix: mix
            .into_iter()
            .map(|(m, c)| (m, 100.0 * c as f64 / listed.max(1) as f64))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(file: &str) -> TaskList {
        // Read when the test runs, so a binary built in another checkout reads this one's.
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        let path = format!("{dir}/../tests/data/alibaba-gpu-v2023/{file}");
        parse_task_list(&std::fs::read_to_string(&path).expect("trace file")).expect("parse")
    }

    fn models() -> Vec<String> {
        ["P100", "G3", "V100M32", "V100M16", "G2", "T4", "A10"]
            .map(String::from)
            .to_vec()
    }

    fn close(what: &str, ours: f64, theirs: f64, tolerance: f64) {
        assert!(
            (ours - theirs).abs() <= tolerance,
            "{what}: generated {ours:.3}, published {theirs:.3} (tolerance {tolerance})"
        );
    }

    /// The four levels the paper publishes agree with its files: class shares (of tasks and
    /// of GPU demand), GPU demand, CPU-only demand and the constraints' model mix.
    #[test]
    fn generated_levels_match_the_published_traces() {
        let base = data("openb_pod_list_default.csv");
        for (family, level, file) in [
            (Family::GpuSpec, 10, "openb_pod_list_gpuspec10.csv"),
            (Family::MultiGpu, 20, "openb_pod_list_multigpu20.csv"),
            (Family::GpuShare, 40, "openb_pod_list_gpushare40.csv"),
            (Family::Cpu, 100, "openb_pod_list_cpu100.csv"),
        ] {
            let published = stats(&data(file));
            for seed in [42, 43] {
                let ours = stats(&generate(&base, &models(), family, level, seed).expect("gen"));
                let what = |s: &str| format!("{}{level} seed {seed}: {s}", family.name());
                close(
                    &what("tasks"),
                    ours.tasks as f64,
                    published.tasks as f64,
                    published.tasks as f64 * 0.02,
                );
                for c in 0..4 {
                    let class = TaskClass::ALL[c].name();
                    close(
                        &what(&format!("{class} share of tasks %")),
                        ours.task_share[c],
                        published.task_share[c],
                        1.5,
                    );
                    close(
                        &what(&format!("{class} share of GPU demand %")),
                        ours.demand_share[c],
                        published.demand_share[c],
                        1.5,
                    );
                }
                close(
                    &what("GPU demand (relative)"),
                    ours.gpu_demand as f64 / published.gpu_demand as f64,
                    1.0,
                    0.03,
                );
                close(
                    &what("CPU-only CPU over GPU tasks' CPU"),
                    ours.cpu_only_ratio,
                    published.cpu_only_ratio,
                    0.01,
                );
                close(
                    &what("constrained GPU tasks %"),
                    ours.constrained,
                    published.constrained,
                    0.5,
                );
                for (m, share) in &published.model_mix {
                    let o = ours
                        .model_mix
                        .iter()
                        .find(|(x, _)| x == m)
                        .map_or(0.0, |(_, s)| *s);
                    close(
                        &what(&format!("model {m} in the constraints %")),
                        o,
                        *share,
                        3.0,
                    );
                }
            }
        }
    }

    #[test]
    fn generation_is_deterministic_by_seed_and_levels_move_their_figure() {
        let base = data("openb_pod_list_default.csv");
        let a = generate(&base, &models(), Family::GpuShare, 60, 7).expect("gen");
        assert_eq!(
            a,
            generate(&base, &models(), Family::GpuShare, 60, 7).expect("gen")
        );
        assert_ne!(
            a,
            generate(&base, &models(), Family::GpuShare, 60, 8).expect("gen")
        );
        for family in Family::ALL {
            let figure = |level: u32| {
                let s = stats(&generate(&base, &models(), family, level, 1).expect("gen"));
                match family {
                    Family::GpuSpec => s.constrained,
                    Family::MultiGpu => s.demand_share[3],
                    Family::GpuShare => s.demand_share[1],
                    Family::Cpu => s.cpu_only_ratio,
                }
            };
            let levels = family.levels();
            let (low, high) = (figure(levels[0]), figure(*levels.last().expect("levels")));
            assert!(low < high, "{}: {low} !< {high}", family.name());
        }
        let err = generate(&base, &models(), Family::MultiGpu, 100, 1).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn written_lists_read_back_the_same() {
        let base = data("openb_pod_list_default.csv");
        let g = generate(&base, &models(), Family::GpuSpec, 33, 3).expect("gen");
        let back = parse_task_list(&g.to_csv()).expect("parse");
        assert_eq!(back, g);
    }
}
