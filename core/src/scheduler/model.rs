//! Resources as the scheduler sees them: nodes with per-GPU free milli-GPU, and task
//! shapes (CPU, memory, GPU count, milli-GPU per GPU, allowed GPU models).

use std::collections::BTreeMap;

/// Most GPUs one node may have.
pub const MAX_GPUS_PER_NODE: usize = 8;
/// Milli-GPU of one whole GPU.
pub const GPU_MILLI: u16 = 1000;

/// Interned GPU model names; a model is a small integer and a set of models is a bit mask.
#[derive(Debug, Clone, Default)]
pub struct GpuModels {
    ids: BTreeMap<String, u8>,
    names: Vec<String>,
}

/// Most distinct GPU models in one cluster.
pub const MAX_GPU_MODELS: usize = 64;

impl GpuModels {
    /// The id of `name`, interning it.
    pub fn intern(&mut self, name: &str) -> Result<u8, String> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        if self.names.len() >= MAX_GPU_MODELS {
            return Err(format!("more than {MAX_GPU_MODELS} GPU models"));
        }
        let id = self.names.len() as u8;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        Ok(id)
    }

    pub fn name(&self, id: u8) -> &str {
        self.names.get(id as usize).map_or("?", String::as_str)
    }

    /// Bit mask of the `|`-separated model list `spec` (empty: 0 = any model).
    pub fn mask(&mut self, spec: &str) -> Result<u64, String> {
        let mut mask = 0u64;
        for name in spec.split('|').map(str::trim).filter(|s| !s.is_empty()) {
            mask |= 1u64 << self.intern(name)?;
        }
        Ok(mask)
    }
}

/// One node's capacity and what is free on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub model: u8,
    pub gpus: u8,
    pub cpu_total: i64,
    pub mem_total: i64,
    pub cpu_free: i64,
    pub mem_free: i64,
    /// Free milli-GPU of each GPU (only the first `gpus` entries are meaningful).
    pub gpu_free: [u16; MAX_GPUS_PER_NODE],
    /// Affinity tags of the GPU tasks placed here (GPU-clustering): bit 0 = sharing task,
    /// bit k = task of k whole GPUs.
    pub affinity: u16,
    /// Cordoned by an operator: nothing new is placed here.
    pub cordoned: bool,
    /// GPUs marked unhealthy (bit i = GPU i); their capacity is withdrawn.
    pub unhealthy: u8,
    /// Topology group (NUMA node or NVLink island) of each GPU; multi-GPU tasks prefer one group.
    pub gpu_group: [u8; MAX_GPUS_PER_NODE],
    /// Memory of each GPU, MiB (0: unknown, which satisfies no minimum).
    pub gpu_mem_mib: u32,
    /// How many more tasks the node may take (the controller's per-node allocation
    /// limit; `u32::MAX`, no limit, unless set).
    pub tasks_free: u32,
}

impl NodeState {
    pub fn new(name: String, model: u8, gpus: u8, cpu: i64, mem: i64) -> Result<Self, String> {
        if gpus as usize > MAX_GPUS_PER_NODE {
            return Err(format!(
                "node {name} has {gpus} GPUs, the limit is {MAX_GPUS_PER_NODE}"
            ));
        }
        let mut gpu_free = [0; MAX_GPUS_PER_NODE];
        gpu_free[..gpus as usize].fill(GPU_MILLI);
        Ok(NodeState {
            name,
            model,
            gpus,
            cpu_total: cpu,
            mem_total: mem,
            cpu_free: cpu,
            mem_free: mem,
            gpu_free,
            affinity: 0,
            cordoned: false,
            unhealthy: 0,
            gpu_group: [0; MAX_GPUS_PER_NODE],
            gpu_mem_mib: 0,
            tasks_free: u32::MAX,
        })
    }

    /// Withdraws GPU `i` from scheduling (XID error, ECC, fell off the bus...).
    pub fn mark_unhealthy(&mut self, i: usize) {
        if i < self.gpus as usize {
            self.unhealthy |= 1 << i;
            self.gpu_free[i] = 0;
        }
    }

    /// Gives back what `task` held on `gpus` (eviction or completion).
    pub fn remove(&mut self, task: &TaskShape, gpus: &[usize]) {
        self.tasks_free = self.tasks_free.saturating_add(1);
        self.cpu_free += task.cpu;
        self.mem_free += task.mem;
        for &i in gpus {
            if self.unhealthy & (1 << i) == 0 {
                self.gpu_free[i] = (self.gpu_free[i] + task.gpu_milli).min(GPU_MILLI);
            }
        }
    }

    pub fn gpu_free(&self) -> &[u16] {
        &self.gpu_free[..self.gpus as usize]
    }

    /// Total free milli-GPU (G_n).
    pub fn gpu_free_total(&self) -> i64 {
        self.gpu_free().iter().map(|&g| g as i64).sum()
    }

    pub fn fully_free_gpus(&self) -> usize {
        self.gpu_free().iter().filter(|&&g| g == GPU_MILLI).count()
    }

    /// Applies `task` on the GPUs `gpus` (indexes).
    pub fn place(&mut self, task: &TaskShape, gpus: &[usize]) {
        self.tasks_free = self.tasks_free.saturating_sub(1);
        self.cpu_free -= task.cpu;
        self.mem_free -= task.mem;
        for &i in gpus {
            self.gpu_free[i] = self.gpu_free[i]
                .checked_sub(task.gpu_milli)
                .expect("placement fits the GPU");
        }
        if let Some(tag) = task.affinity_bit() {
            self.affinity |= tag;
        }
    }
}

/// What one task asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TaskShape {
    pub cpu: i64,
    pub mem: i64,
    /// GPUs needed (0: CPU-only).
    pub num_gpu: u8,
    /// Milli-GPU on each of those GPUs: below 1000 for a sharing task, 1000 for whole GPUs.
    pub gpu_milli: u16,
    /// Allowed GPU models as a bit mask over [`GpuModels`] ids; 0 = any.
    pub models: u64,
    /// Minimum memory of each GPU, MiB (0: any).
    pub min_gpu_mem_mib: u32,
}

impl TaskShape {
    /// Total milli-GPU requested.
    pub fn gpu_total(&self) -> i64 {
        self.num_gpu as i64 * self.gpu_milli as i64
    }

    pub fn is_sharing(&self) -> bool {
        self.num_gpu == 1 && self.gpu_milli < GPU_MILLI && self.gpu_milli > 0
    }

    pub fn wants_gpu(&self) -> bool {
        self.num_gpu > 0 && self.gpu_milli > 0
    }

    pub fn model_allowed(&self, model: u8) -> bool {
        self.models == 0 || self.models & (1u64 << model) != 0
    }

    /// GPU-clustering affinity tag.
    pub fn affinity_bit(&self) -> Option<u16> {
        if self.is_sharing() {
            Some(1)
        } else if self.wants_gpu() && self.gpu_milli == GPU_MILLI {
            Some(1 << self.num_gpu.min(15))
        } else {
            None
        }
    }
}
