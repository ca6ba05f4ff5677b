//! Parsing of the trace's node and task CSV files (by column name, so extra columns are
//! fine), with errors that name the file line.

use crate::scheduler::frag::ShapeKey;
use crate::scheduler::model::{GpuModels, NodeState, TaskShape, GPU_MILLI, MAX_GPUS_PER_NODE};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{what}: {source}")]
    Csv {
        what: &'static str,
        #[source]
        source: csv::Error,
    },
    #[error("{what}: missing column `{column}`")]
    MissingColumn {
        what: &'static str,
        column: &'static str,
    },
    #[error("{what} line {line}: {message}")]
    Invalid {
        what: &'static str,
        line: u64,
        message: String,
    },
}

/// One task of the trace.
#[derive(Debug, Clone)]
pub struct TraceTask {
    pub name: String,
    pub shape: TaskShape,
    /// Grouping key for the typical-task distribution.
    pub key: ShapeKey,
    /// When it ran and its class, where the list has the columns (`steward sim --churn`).
    pub timing: Option<TaskTiming>,
}

/// A task's lifetime and class in the trace: `creation_time` and `deletion_time` (seconds
/// from the trace's start) and `qos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTiming {
    pub created_s: u64,
    pub deleted_s: u64,
    pub qos: String,
}

/// A parsed trace: nodes and tasks, each sorted by name.
#[derive(Debug, Clone)]
pub struct Trace {
    pub models: GpuModels,
    pub nodes: Vec<NodeState>,
    pub tasks: Vec<TraceTask>,
}

impl Trace {
    pub fn parse(nodes_csv: &str, tasks_csv: &str) -> Result<Trace, TraceError> {
        let mut models = GpuModels::default();
        let nodes = parse_nodes(nodes_csv, &mut models)?;
        let tasks = parse_tasks(tasks_csv, &mut models)?;
        Ok(Trace {
            models,
            nodes,
            tasks,
        })
    }

    pub fn gpu_capacity(&self) -> i64 {
        self.nodes.iter().map(|n| n.gpus as i64).sum()
    }
}

struct Table {
    what: &'static str,
    reader: csv::Reader<std::io::Cursor<Vec<u8>>>,
    headers: csv::StringRecord,
}

impl Table {
    fn new(what: &'static str, text: &str) -> Result<Self, TraceError> {
        let mut reader = csv::Reader::from_reader(std::io::Cursor::new(text.as_bytes().to_vec()));
        let headers = reader
            .headers()
            .map_err(|source| TraceError::Csv { what, source })?
            .clone();
        Ok(Table {
            what,
            reader,
            headers,
        })
    }

    fn column(&self, name: &'static str) -> Result<usize, TraceError> {
        self.headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or(TraceError::MissingColumn {
                what: self.what,
                column: name,
            })
    }
}

fn num(
    what: &'static str,
    line: u64,
    rec: &csv::StringRecord,
    col: usize,
    name: &str,
) -> Result<i64, TraceError> {
    let raw = rec.get(col).unwrap_or("").trim();
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| TraceError::Invalid {
            what,
            line,
            message: format!("`{name}` = `{raw}` is not a non-negative integer"),
        })
}

/// Parses a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn parse_nodes(text: &str, models: &mut GpuModels) -> Result<Vec<NodeState>, TraceError> {
    let what = "node list";
    let mut t = Table::new(what, text)?;
    let (sn, cpu, mem, gpu, model) = (
        t.column("sn")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("gpu")?,
        t.column("model")?,
    );
    let mut nodes = Vec::new();
    for rec in t.reader.records() {
        let rec = rec.map_err(|source| TraceError::Csv { what, source })?;
        let line = rec.position().map_or(0, |p| p.line());
        let gpus = num(what, line, &rec, gpu, "gpu")?;
        if gpus as usize > MAX_GPUS_PER_NODE {
            return Err(TraceError::Invalid {
                what,
                line,
                message: format!("{gpus} GPUs, the limit is {MAX_GPUS_PER_NODE}"),
            });
        }
        let model_name = rec.get(model).unwrap_or("").trim();
        let model_id = models
            .intern(model_name)
            .map_err(|message| TraceError::Invalid {
                what,
                line,
                message,
            })?;
        let node = NodeState::new(
            rec.get(sn).unwrap_or("").trim().to_string(),
            model_id,
            gpus as u8,
            num(what, line, &rec, cpu, "cpu_milli")?,
            num(what, line, &rec, mem, "memory_mib")?,
        )
        .map_err(|message| TraceError::Invalid {
            what,
            line,
            message,
        })?;
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// Parses a task list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...`).
pub fn parse_tasks(text: &str, models: &mut GpuModels) -> Result<Vec<TraceTask>, TraceError> {
    let what = "task list";
    let mut t = Table::new(what, text)?;
    let (name, cpu, mem, ngpu, milli, spec) = (
        t.column("name")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("num_gpu")?,
        t.column("gpu_milli")?,
        t.column("gpu_spec").ok(),
    );
    let timing_columns = match (
        t.column("creation_time"),
        t.column("deletion_time"),
        t.column("qos"),
    ) {
        (Ok(c), Ok(d), Ok(q)) => Some((c, d, q)),
        _ => None,
    };
    let mut tasks = Vec::new();
    for rec in t.reader.records() {
        let rec = rec.map_err(|source| TraceError::Csv { what, source })?;
        let line = rec.position().map_or(0, |p| p.line());
        let num_gpu = num(what, line, &rec, ngpu, "num_gpu")?;
        let gpu_milli = num(what, line, &rec, milli, "gpu_milli")?;
        if num_gpu as usize > MAX_GPUS_PER_NODE || gpu_milli > GPU_MILLI as i64 {
            return Err(TraceError::Invalid {
                what,
                line,
                message: format!("{num_gpu} GPUs of {gpu_milli} milli is out of range"),
            });
        }
        // Some traces have no gpu_spec column: any model.
        let spec_text = spec
            .and_then(|c| rec.get(c))
            .unwrap_or("")
            .trim()
            .to_string();
        let shape = TaskShape {
            min_gpu_mem_mib: 0,
            cpu: num(what, line, &rec, cpu, "cpu_milli")?,
            mem: num(what, line, &rec, mem, "memory_mib")?,
            num_gpu: num_gpu as u8,
            gpu_milli: gpu_milli as u16,
            models: models
                .mask(&spec_text)
                .map_err(|message| TraceError::Invalid {
                    what,
                    line,
                    message,
                })?,
        };
        let key = ShapeKey {
            cpu: shape.cpu,
            gpu_milli: shape.gpu_milli,
            num_gpu: shape.num_gpu,
            spec: spec_text,
        };
        let timing = match timing_columns {
            Some((c, d, q)) => {
                let created_s = num(what, line, &rec, c, "creation_time")? as u64;
                let deleted_s = num(what, line, &rec, d, "deletion_time")? as u64;
                if deleted_s < created_s {
                    return Err(TraceError::Invalid {
                        what,
                        line,
                        message: format!(
                            "deleted at {deleted_s} s, before its creation at {created_s} s"
                        ),
                    });
                }
                Some(TaskTiming {
                    created_s,
                    deleted_s,
                    qos: rec.get(q).unwrap_or("").trim().to_string(),
                })
            }
            None => None,
        };
        tasks.push(TraceTask {
            name: rec.get(name).unwrap_or("").trim().to_string(),
            shape,
            key,
            timing,
        });
    }
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tasks)
}
