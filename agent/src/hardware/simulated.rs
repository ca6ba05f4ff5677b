//! Simulated GPUs (`--simulate-gpus "MODEL:COUNT"`) for `steward dev`, tests and the chaos
//! harness: stable identities and plausible telemetry. Load and fault injection arrive with
//! the agent's telemetry loop.

use super::{GpuInfo, GpuProbe, GpuSample, ProbeError};

/// Known models: (name, memory MiB, power limit W, compute capability).
const MODELS: &[(&str, u64, f64, &str)] = &[
    ("NVIDIA H100 80GB HBM3", 81_559, 700.0, "9.0"),
    ("NVIDIA H200", 143_771, 700.0, "9.0"),
    ("NVIDIA A100-SXM4-80GB", 81_920, 400.0, "8.0"),
    ("NVIDIA A10", 23_028, 150.0, "8.6"),
    ("Tesla T4", 15_360, 70.0, "7.5"),
];

/// Most simulated GPUs per machine.
pub const MAX_SIMULATED_GPUS: u32 = 16;

#[derive(Debug)]
pub struct SimulatedGpus {
    gpus: Vec<GpuInfo>,
}

impl SimulatedGpus {
    /// Parses `MODEL:COUNT` (the model as NVML names it, or a unique part of it: "H100").
    pub fn parse(spec: &str, host_seed: &str) -> Result<Self, ProbeError> {
        let (model, count) = spec.rsplit_once(':').ok_or_else(|| {
            ProbeError::Backend(format!("--simulate-gpus `{spec}` is not MODEL:COUNT"))
        })?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| (1..=MAX_SIMULATED_GPUS).contains(c))
            .ok_or_else(|| {
                ProbeError::Backend(format!(
                    "--simulate-gpus `{spec}`: COUNT must be 1..={MAX_SIMULATED_GPUS}"
                ))
            })?;
        let matches: Vec<_> = MODELS
            .iter()
            .filter(|m| m.0 == model.trim() || m.0.contains(model.trim()))
            .collect();
        let &(name, mem, power, cc) = match matches.as_slice() {
            [one] => *one,
            _ => {
                let known: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
                return Err(ProbeError::Backend(format!(
                    "--simulate-gpus: model `{model}` matches {} known models; known: {}",
                    matches.len(),
                    known.join(", ")
                )));
            }
        };
        let seed = stable_tag(host_seed);
        let gpus = (0..count)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-sim-{seed:08x}-{index:04x}"),
                name: name.to_string(),
                serial: Some(format!("SIM{seed:08X}{index:02}")),
                vbios: Some("96.00.00.00.00".into()),
                pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x18 + index * 0x10)),
                pcie_gen: Some(5),
                pcie_width: Some(16),
                memory_total_mib: Some(mem),
                power_limit_w: Some(power),
                ecc_enabled: Some(true),
                mig_enabled: Some(false),
                compute_capability: Some(cc.into()),
                simulated: true,
            })
            .collect();
        Ok(SimulatedGpus { gpus })
    }
}

/// A stable 32-bit tag of a string (FNV-1a), for simulated serials and UUIDs.
fn stable_tag(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

impl GpuProbe for SimulatedGpus {
    fn driver_version(&self) -> Option<String> {
        Some("simulated".into())
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        Ok(self.gpus.clone())
    }

    fn sample(&self, index: u32) -> Result<GpuSample, ProbeError> {
        let g = self.gpus.get(index as usize).ok_or(ProbeError::Gpu {
            index,
            message: "no such GPU".into(),
        })?;
        // Idle readings; the telemetry loop will move them with assigned load.
        Ok(GpuSample {
            index,
            sm_util_pct: Some(0),
            mem_util_pct: Some(0),
            memory_used_mib: Some(0),
            temperature_c: Some(32),
            power_w: g.power_limit_w.map(|p| p * 0.1),
            energy_mj: Some(0),
            sm_clock_mhz: Some(345),
            mem_clock_mhz: Some(1593),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_and_count() {
        let s = SimulatedGpus::parse("H100:8", "node-a").expect("spec");
        let gpus = s.gpus().expect("gpus");
        assert_eq!(gpus.len(), 8);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_ne!(gpus[0].uuid, gpus[1].uuid);
        assert_eq!(
            SimulatedGpus::parse("H100:8", "node-a")
                .expect("spec")
                .gpus()
                .expect("gpus")[3]
                .uuid,
            gpus[3].uuid,
            "stable"
        );
        assert!(s.sample(7).is_ok() && s.sample(8).is_err());
        assert!(SimulatedGpus::parse("H100", "x").is_err());
        assert!(SimulatedGpus::parse("H100:0", "x").is_err());
        assert!(SimulatedGpus::parse("NVIDIA:2", "x")
            .unwrap_err()
            .to_string()
            .contains("matches"));
    }
}
