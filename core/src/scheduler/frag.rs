//! The FGD fragmentation measure (Weng et al., "Beware of Fragmentation", USENIX ATC '23).
//!
//! A node's GPU fragment for a task is the free GPU capacity that task could not use there:
//! the GPUs individually too small for it when it fits, or all free GPU capacity when it does
//! not (wrong model, too few GPUs, too little CPU, or a CPU-only task). A node's fragment is
//! the expectation over the cluster's *typical tasks* M, the most frequent task shapes
//! covering 95 % of the workload: F_n(M) = Σ_m p_m · F_n(m), in milli-GPU.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use super::model::{NodeState, TaskShape, MAX_GPUS_PER_NODE};

/// Share of the workload the typical tasks cover.
pub const TYPICAL_COVERAGE: f64 = 0.95;

/// One typical task shape and its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypicalTask {
    pub shape: TaskShape,
    pub p: f64,
}

/// The typical-task distribution M.
#[derive(Debug, Clone, Default)]
pub struct TypicalTasks {
    pub tasks: Vec<TypicalTask>,
    /// Distinct CPU requests of `tasks`, ascending: frag depends on a node's free CPU only
    /// through comparisons with these, which makes a compact memo key.
    cpu_steps: Vec<i64>,
}

/// A task shape as grouped for M: memory is not part of the key; the model set is kept
/// with the spelling it had in the trace, for the tie-break.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeKey {
    pub cpu: i64,
    pub gpu_milli: u16,
    pub num_gpu: u8,
    pub spec: String,
}

impl TypicalTasks {
    /// Builds M from explicit (shape, probability) pairs.
    pub fn new(tasks: Vec<TypicalTask>) -> Self {
        let mut cpu_steps: Vec<i64> = tasks.iter().map(|t| t.shape.cpu).collect();
        cpu_steps.sort_unstable();
        cpu_steps.dedup();
        TypicalTasks { tasks, cpu_steps }
    }

    /// M from a workload, as the FGD simulator builds it: group by (cpu, milli-GPU per GPU,
    /// GPU count, model spec), most frequent first (ties: larger key first), the shortest
    /// prefix covering `coverage` of all tasks, renormalised.
    pub fn from_workload(shapes: &[(ShapeKey, TaskShape)], coverage: f64) -> Self {
        let mut counts: HashMap<&ShapeKey, (usize, TaskShape)> = HashMap::new();
        for (key, shape) in shapes {
            let e = counts.entry(key).or_insert((0, *shape));
            e.0 += 1;
        }
        let mut groups: Vec<(&ShapeKey, usize, TaskShape)> =
            counts.into_iter().map(|(k, (n, s))| (k, n, s)).collect();
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(a.0)));
        let total = shapes.len() as f64;
        let mut covered = 0usize;
        let mut chosen = Vec::new();
        for (_, n, shape) in groups {
            chosen.push((shape, n));
            covered += n;
            if covered as f64 >= coverage * total {
                break;
            }
        }
        let sum: usize = chosen.iter().map(|(_, n)| n).sum();
        Self::new(
            chosen
                .into_iter()
                .map(|(shape, n)| TypicalTask {
                    shape: TaskShape { mem: 0, ..shape },
                    p: n as f64 / sum as f64,
                })
                .collect(),
        )
    }

    /// Expected CPU milli per milli-GPU of the typical GPU tasks.
    pub fn cpu_per_gpu_milli(&self) -> f64 {
        self.cpu_per_gpu_milli_where(|_| true)
    }

    /// Expected CPU milli per milli-GPU of the typical GPU tasks that may run on GPUs of
    /// `model` (a task constrained to other models never uses this node's GPUs).
    pub fn cpu_per_gpu_milli_on(&self, model: u8) -> f64 {
        self.cpu_per_gpu_milli_where(|t| t.model_allowed(model))
    }

    fn cpu_per_gpu_milli_where(&self, keep: impl Fn(&TaskShape) -> bool) -> f64 {
        let (cpu, gpu) = self
            .tasks
            .iter()
            .filter(|t| t.shape.wants_gpu() && keep(&t.shape))
            .fold((0.0, 0.0), |(c, g), t| {
                (
                    c + t.p * t.shape.cpu as f64,
                    g + t.p * t.shape.gpu_total() as f64,
                )
            });
        if gpu > 0.0 {
            cpu / gpu
        } else {
            0.0
        }
    }

    fn cpu_class(&self, cpu_free: i64) -> u16 {
        self.cpu_steps.partition_point(|&c| c <= cpu_free) as u16
    }
}

/// Fragment (milli-GPU) of a node for one task (`GetGpuFragMilliByNodeResAndPodRes`).
pub fn task_fragment(model: u8, cpu_free: i64, gpu_free: &[u16], task: &TaskShape) -> f64 {
    let total: i64 = gpu_free.iter().map(|&g| g as i64).sum();
    if !task.wants_gpu() || !task.model_allowed(model) {
        return total as f64;
    }
    let d = task.gpu_milli;
    let fitting = gpu_free.iter().filter(|&&g| g >= d).count();
    if fitting >= task.num_gpu as usize && cpu_free >= task.cpu {
        gpu_free.iter().filter(|&&g| g < d).map(|&g| g as f64).sum()
    } else {
        total as f64
    }
}

/// F_n(M) without memoisation.
pub fn node_fragment(model: u8, cpu_free: i64, gpu_free: &[u16], typical: &TypicalTasks) -> f64 {
    typical
        .tasks
        .iter()
        .map(|t| t.p * task_fragment(model, cpu_free, gpu_free, &t.shape))
        .sum()
}

/// Memo of F_n(M) by node state: identical states (fresh nodes of one model, say) share it.
#[derive(Debug, Default)]
pub struct FragCache {
    map: FxHashMap<(u8, u16, u8, [u16; MAX_GPUS_PER_NODE]), f64>,
}

/// Entries the cache holds before it starts over.
pub const FRAG_CACHE_ENTRIES: usize = 1 << 20;

impl FragCache {
    /// F_n(M) of a node with this model, free CPU and per-GPU free milli.
    pub fn fragment(
        &mut self,
        typical: &TypicalTasks,
        model: u8,
        cpu_free: i64,
        gpu_free: &[u16],
    ) -> f64 {
        let mut sorted = [0u16; MAX_GPUS_PER_NODE];
        sorted[..gpu_free.len()].copy_from_slice(gpu_free);
        sorted[..gpu_free.len()].sort_unstable();
        let key = (
            model,
            typical.cpu_class(cpu_free),
            gpu_free.len() as u8,
            sorted,
        );
        if let Some(f) = self.map.get(&key) {
            return *f;
        }
        let f = node_fragment(model, cpu_free, gpu_free, typical);
        if self.map.len() >= FRAG_CACHE_ENTRIES {
            self.map.clear();
        }
        self.map.insert(key, f);
        f
    }

    pub fn node(&mut self, typical: &TypicalTasks, node: &NodeState) -> f64 {
        self.fragment(typical, node.model, node.cpu_free, node.gpu_free())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::GpuModels;

    /// (cpu, milli per GPU, gpus, spec, p %)
    type Row = (i64, u16, u8, &'static str, f64);

    fn typical(models: &mut GpuModels, rows: &[Row]) -> TypicalTasks {
        TypicalTasks::new(
            rows.iter()
                .map(|&(cpu, milli, n, spec, p)| TypicalTask {
                    shape: TaskShape {
                        min_gpu_mem_mib: 0,
                        cpu,
                        mem: 0,
                        num_gpu: n,
                        gpu_milli: milli,
                        models: models.mask(spec).expect("models"),
                    },
                    p: p / 100.0,
                })
                .collect(),
        )
    }

    const T1: &[Row] = &[
        (6000, 465, 1, "", 9.33),
        (8000, 440, 1, "2080", 9.15),
        (8000, 475, 1, "T4", 8.76),
        (8000, 440, 1, "P100", 8.72),
        (2000, 465, 1, "", 8.68),
        (12000, 900, 1, "", 8.65),
        (4000, 900, 1, "", 8.43),
        (16000, 678, 1, "T4", 8.36),
        (8000, 500, 1, "", 8.29),
        (6000, 511, 1, "", 8.11),
        (14000, 1000, 2, "2080", 0.54),
        (4000, 1000, 1, "2080", 0.43),
        (32000, 1000, 2, "T4", 0.43),
        (16000, 1000, 1, "V100M16", 0.40),
        (64000, 1000, 2, "", 0.40),
        (10000, 1000, 2, "", 0.40),
        (11400, 1000, 1, "T4", 0.36),
        (16000, 1000, 1, "T4", 0.36),
        (4000, 1000, 2, "", 0.36),
        (14000, 1000, 2, "V100M16", 0.36),
        (8000, 1000, 4, "", 0.36),
        (16000, 1000, 2, "", 0.32),
        (2000, 1000, 1, "T4", 0.32),
        (6000, 1000, 1, "", 0.32),
        (4000, 1000, 1, "", 0.32),
        (5000, 1000, 1, "", 0.32),
        (32000, 1000, 4, "V100M16", 0.32),
        (32000, 1000, 2, "", 0.32),
        (24000, 1000, 8, "2080", 0.32),
        (40000, 1000, 4, "", 0.29),
        (32000, 1000, 8, "", 0.29),
        (32000, 1000, 1, "T4", 0.29),
        (16000, 1000, 1, "", 0.25),
        (7000, 1000, 1, "V100M16", 0.25),
        (24000, 1000, 1, "T4", 0.25),
    ];

    const T2: &[Row] = &[
        (15700, 1000, 1, "", 28.69),
        (11900, 1000, 1, "", 18.93),
        (11400, 1000, 1, "", 12.27),
        (1000, 0, 0, "", 7.36),
        (18710, 1000, 1, "", 4.85),
        (8200, 1000, 1, "", 3.79),
        (16400, 1000, 1, "", 3.31),
        (9810, 1000, 1, "", 1.97),
        (15200, 1000, 1, "", 1.87),
        (11200, 1000, 1, "", 1.81),
        (14200, 1000, 1, "", 1.76),
        (12000, 0, 0, "", 1.65),
        (14900, 1000, 1, "", 1.39),
        (60200, 1000, 4, "", 1.23),
        (64200, 1000, 8, "", 1.07),
        (32200, 1000, 4, "", 1.01),
        (17400, 1000, 2, "", 0.91),
        (30200, 1000, 2, "", 0.69),
        (16000, 1000, 1, "", 0.64),
        (15000, 1000, 1, "", 0.59),
        (64000, 1000, 8, "", 0.53),
        (15000, 0, 0, "", 0.53),
        (11910, 1000, 1, "", 0.53),
        (120200, 1000, 8, "", 0.48),
        (11300, 1000, 1, "", 0.37),
        (30000, 1000, 2, "", 0.32),
        (9800, 1000, 1, "", 0.32),
        (8000, 1000, 1, "", 0.32),
        (2000, 1000, 1, "", 0.27),
        (2000, 80, 1, "", 0.27),
        (1000, 1000, 1, "", 0.27),
    ];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[test]
    fn published_test_vectors() {
        let mut models = GpuModels::default();
        let t1 = typical(&mut models, T1);
        let t2 = typical(&mut models, T2);
        let g1080 = models.intern("1080").expect("model");
        let p100 = models.intern("P100").expect("model");
        let cases: [(&TypicalTasks, u8, i64, &[u16], f64); 6] = [
            (&t1, g1080, 1000, &[200, 1000, 1000, 500], 2566.62),
            (&t1, g1080, 1000, &[1000; 4], 3802.40),
            (&t1, g1080, 1000, &[1000; 8], 7604.80),
            (&t2, p100, 64000, &[1000; 8], 887.20),
            (
                &t2,
                p100,
                32000,
                &[1000, 1000, 1000, 1000, 0, 0, 0, 0],
                554.4,
            ),
            (&t2, p100, 0, &[1000, 1000, 1000, 1000, 0, 0, 0, 0], 4000.0),
        ];
        let mut cache = FragCache::default();
        for (t, model, cpu, gpus, want) in cases {
            let got = node_fragment(model, cpu, gpus, t);
            assert!(
                close(got, want),
                "F = {got}, want {want} for cpu {cpu} gpus {gpus:?}"
            );
            assert!(close(cache.fragment(t, model, cpu, gpus), want));
        }
        let single = typical(&mut models, &[(6000, 465, 1, "", 9.33)]);
        let got = node_fragment(g1080, 1000, &[200, 1000, 1000, 500], &single);
        assert!(close(got, 251.91), "{got}");
    }

    #[test]
    fn fragment_of_one_task() {
        let two_whole = TaskShape {
            min_gpu_mem_mib: 0,
            cpu: 100,
            mem: 0,
            num_gpu: 2,
            gpu_milli: 1000,
            models: 0,
        };
        let two_share = TaskShape {
            gpu_milli: 200,
            ..two_whole
        };
        assert_eq!(
            task_fragment(0, 1000, &[200, 1000, 1000, 500], &two_whole),
            700.0
        );
        assert_eq!(task_fragment(0, 1000, &[1000; 4], &two_whole), 0.0);
        assert_eq!(task_fragment(0, 1000, &[1000; 8], &two_whole), 0.0);
        assert_eq!(
            task_fragment(0, 1000, &[200, 1000, 1000, 500], &two_share),
            0.0
        );
    }
}
