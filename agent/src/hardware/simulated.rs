//! Simulated GPUs (`--simulate-gpus "MODEL:COUNT"`) for `steward dev`, tests and the chaos
//! harness. They have stable identities, telemetry that follows the load assigned to them
//! (utilisation, memory, power, energy, clocks, and a temperature that settles toward a
//! load-dependent target), and they take injected faults: an XID, ECC errors, an
//! over-temperature, falling off the bus. Faults reach the agent's event log through the
//! same event thread as NVML's events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use super::{GpuInfo, GpuProbe, GpuSample, ProbeError};
use crate::telemetry::events::{GpuEventKind, GpuEventLog};

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

/// Temperatures of a simulated GPU: idle, at full load, and the thresholds it reports.
const IDLE_TEMP_C: f64 = 32.0;
const FULL_LOAD_TEMP_C: f64 = 75.0;
const SLOWDOWN_TEMP_C: u32 = 87;
const SHUTDOWN_TEMP_C: u32 = 92;
/// Temperature an over-temperature fault holds the GPU at.
const FAULT_TEMP_C: f64 = 95.0;
/// Time constant of the temperature's approach to its target.
const THERMAL_TAU: Duration = Duration::from_secs(2);
const IDLE_SM_CLOCK_MHZ: u32 = 345;
const MAX_SM_CLOCK_MHZ: u32 = 1980;
const THROTTLED_SM_CLOCK_MHZ: u32 = 1100;
/// NVML clock-throttle bits.
const THROTTLE_GPU_IDLE: u64 = 0x1;
const THROTTLE_SW_THERMAL: u64 = 0x20;
const THROTTLE_HW_THERMAL: u64 = 0x40;

/// A fault to inject into a simulated GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The driver reports this XID.
    Xid(u64),
    /// An uncorrectable ECC error (the driver also reports XID 48).
    EccDoubleBit,
    /// A corrected ECC error.
    EccSingleBit,
    /// Cooling fails: the GPU runs at 95 C with thermal slowdown.
    OverTemperature,
    /// The GPU disappears from the bus (the driver reports XID 79; NVML answers "GPU lost").
    FellOffBus,
    /// The GPU is repaired: faults and volatile error counts are cleared.
    Clear,
}

#[derive(Debug, Clone)]
struct GpuState {
    load_pct: u32,
    /// Memory in use; `None`: follows the load.
    memory_used_mib: Option<u64>,
    temp_c: f64,
    energy_mj: f64,
    last: Instant,
    over_temperature: bool,
    lost: bool,
    ecc_sbe_volatile: u64,
    ecc_dbe_volatile: u64,
    ecc_sbe_aggregate: u64,
    ecc_dbe_aggregate: u64,
    pcie_replay: u64,
}

enum SimEvent {
    Record(u32, GpuEventKind),
    Clear(u32),
}

pub struct SimulatedGpus {
    gpus: Vec<GpuInfo>,
    state: Mutex<Vec<GpuState>>,
    events_tx: Mutex<mpsc::Sender<SimEvent>>,
    events_rx: Mutex<mpsc::Receiver<SimEvent>>,
}

impl std::fmt::Debug for SimulatedGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedGpus")
            .field("gpus", &self.gpus.len())
            .finish()
    }
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
                pcie_max_gen: Some(5),
                pcie_max_width: Some(16),
                memory_total_mib: Some(mem),
                power_limit_w: Some(power),
                ecc_enabled: Some(true),
                mig_enabled: Some(false),
                mig_instances: None,
                compute_capability: Some(cc.into()),
                slowdown_temp_c: Some(SLOWDOWN_TEMP_C),
                shutdown_temp_c: Some(SHUTDOWN_TEMP_C),
                // Half the GPUs on each of two NUMA nodes, as on a two-socket HGX board.
                numa_node: Some(u32::from(index >= count.div_ceil(2))),
                cpu_affinity: None,
                // An NVSwitch board: every GPU reaches every other over NVLink.
                nvlink_peers: Some(
                    (0..count)
                        .filter(|p| *p != index)
                        .map(|p| format!("00000000:{:02X}:00.0", 0x18 + p * 0x10))
                        .collect(),
                ),
                simulated: true,
            })
            .collect::<Vec<_>>();
        let now = Instant::now();
        let state = gpus
            .iter()
            .map(|_| GpuState {
                load_pct: 0,
                memory_used_mib: None,
                temp_c: IDLE_TEMP_C,
                energy_mj: 0.0,
                last: now,
                over_temperature: false,
                lost: false,
                ecc_sbe_volatile: 0,
                ecc_dbe_volatile: 0,
                ecc_sbe_aggregate: 0,
                ecc_dbe_aggregate: 0,
                pcie_replay: 0,
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        Ok(SimulatedGpus {
            gpus,
            state: Mutex::new(state),
            events_tx: Mutex::new(tx),
            events_rx: Mutex::new(rx),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Vec<GpuState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_index(&self, index: u32) -> Result<(), ProbeError> {
        if (index as usize) < self.gpus.len() {
            Ok(())
        } else {
            Err(ProbeError::Gpu {
                index,
                message: format!(
                    "no such GPU; this agent simulates GPUs 0..{}",
                    self.gpus.len()
                ),
            })
        }
    }

    fn emit(&self, event: SimEvent) {
        let tx = self.events_tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(event);
    }

    /// Assigns load to a GPU: utilisation in percent and, optionally, memory in use (else
    /// memory follows the load). Telemetry moves toward it from the next reading on.
    pub fn set_load(
        &self,
        index: u32,
        util_pct: u32,
        memory_used_mib: Option<u64>,
    ) -> Result<(), ProbeError> {
        self.check_index(index)?;
        if util_pct > 100 {
            return Err(ProbeError::Gpu {
                index,
                message: format!("utilisation {util_pct}% is above 100%"),
            });
        }
        let total = self.gpus[index as usize].memory_total_mib.unwrap_or(0);
        if let Some(m) = memory_used_mib.filter(|m| *m > total) {
            return Err(ProbeError::Gpu {
                index,
                message: format!("memory {m} MiB is above the GPU's {total} MiB"),
            });
        }
        let mut state = self.state();
        let g = &mut state[index as usize];
        advance(g, &self.gpus[index as usize], Instant::now());
        g.load_pct = util_pct;
        g.memory_used_mib = memory_used_mib;
        Ok(())
    }

    /// Injects a fault. Its events reach `GpuProbe::watch_events`'s sink.
    pub fn inject(&self, index: u32, fault: Fault) -> Result<(), ProbeError> {
        self.check_index(index)?;
        let mut state = self.state();
        let g = &mut state[index as usize];
        advance(g, &self.gpus[index as usize], Instant::now());
        let mut events = Vec::new();
        match fault {
            Fault::Xid(code) => events.push(GpuEventKind::Xid { code }),
            Fault::EccDoubleBit => {
                g.ecc_dbe_volatile += 1;
                g.ecc_dbe_aggregate += 1;
                events.push(GpuEventKind::EccDoubleBit);
                events.push(GpuEventKind::Xid { code: 48 });
            }
            Fault::EccSingleBit => {
                g.ecc_sbe_volatile += 1;
                g.ecc_sbe_aggregate += 1;
                events.push(GpuEventKind::EccSingleBit);
            }
            Fault::OverTemperature => {
                g.over_temperature = true;
                g.temp_c = FAULT_TEMP_C;
            }
            Fault::FellOffBus => {
                g.lost = true;
                events.push(GpuEventKind::Xid { code: 79 });
            }
            Fault::Clear => {
                g.over_temperature = false;
                g.lost = false;
                g.ecc_sbe_volatile = 0;
                g.ecc_dbe_volatile = 0;
                self.emit(SimEvent::Clear(index));
            }
        }
        drop(state);
        for e in events {
            self.emit(SimEvent::Record(index, e));
        }
        Ok(())
    }
}

/// Moves a simulated GPU's temperature and energy forward to `now`.
fn advance(g: &mut GpuState, info: &GpuInfo, now: Instant) {
    let dt = now.saturating_duration_since(g.last).as_secs_f64();
    g.last = now;
    if g.lost {
        return;
    }
    g.energy_mj += power_w(g, info) * dt * 1000.0;
    let target = if g.over_temperature {
        FAULT_TEMP_C
    } else {
        IDLE_TEMP_C + (FULL_LOAD_TEMP_C - IDLE_TEMP_C) * f64::from(g.load_pct) / 100.0
    };
    g.temp_c += (target - g.temp_c) * (1.0 - (-dt / THERMAL_TAU.as_secs_f64()).exp());
}

fn power_w(g: &GpuState, info: &GpuInfo) -> f64 {
    let limit = info.power_limit_w.unwrap_or(300.0);
    limit * (0.1 + 0.85 * f64::from(g.load_pct) / 100.0)
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
        self.check_index(index)?;
        let info = &self.gpus[index as usize];
        let mut state = self.state();
        let g = &mut state[index as usize];
        advance(g, info, Instant::now());
        if g.lost {
            return Ok(GpuSample::lost(index));
        }
        let total = info.memory_total_mib.unwrap_or(0);
        let (sm_clock, reasons, mask) = if g.over_temperature {
            (
                THROTTLED_SM_CLOCK_MHZ,
                vec![
                    "sw_thermal_slowdown".to_string(),
                    "hw_thermal_slowdown".to_string(),
                ],
                THROTTLE_SW_THERMAL | THROTTLE_HW_THERMAL,
            )
        } else if g.load_pct == 0 {
            (
                IDLE_SM_CLOCK_MHZ,
                vec!["gpu_idle".to_string()],
                THROTTLE_GPU_IDLE,
            )
        } else {
            (
                IDLE_SM_CLOCK_MHZ + (MAX_SM_CLOCK_MHZ - IDLE_SM_CLOCK_MHZ) * g.load_pct / 100,
                Vec::new(),
                0,
            )
        };
        Ok(GpuSample {
            index,
            sm_util_pct: Some(g.load_pct),
            mem_util_pct: Some(g.load_pct * 6 / 10),
            memory_used_mib: Some(
                g.memory_used_mib
                    .unwrap_or(total * u64::from(g.load_pct) * 9 / 1000),
            ),
            temperature_c: Some(g.temp_c.round() as u32),
            power_w: Some((power_w(g, info) * 10.0).round() / 10.0),
            energy_mj: Some(g.energy_mj as u64),
            sm_clock_mhz: Some(sm_clock),
            mem_clock_mhz: Some(1593),
            throttle_reasons: Some(reasons),
            throttle_mask: Some(mask),
            ecc_sbe_volatile: Some(g.ecc_sbe_volatile),
            ecc_dbe_volatile: Some(g.ecc_dbe_volatile),
            ecc_sbe_aggregate: Some(g.ecc_sbe_aggregate),
            ecc_dbe_aggregate: Some(g.ecc_dbe_aggregate),
            pcie_replay: Some(g.pcie_replay),
            // Like a real H100: the link drops to gen 1 at idle.
            pcie_link_gen: Some(if g.load_pct > 0 { 5 } else { 1 }),
            pcie_link_width: Some(16),
            lost: false,
        })
    }

    fn watch_events(&self, sink: &GpuEventLog, stop: &AtomicBool) {
        let rx = self.events_rx.lock().unwrap_or_else(|p| p.into_inner());
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(SimEvent::Record(gpu, kind)) => sink.record(gpu, kind),
                Ok(SimEvent::Clear(gpu)) => sink.clear(gpu),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn simulation(&self) -> Option<&SimulatedGpus> {
        Some(self)
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
        assert_eq!(gpus[0].nvlink_peers.as_ref().map(Vec::len), Some(7));
        assert_eq!((gpus[0].numa_node, gpus[7].numa_node), (Some(0), Some(1)));
        assert!(SimulatedGpus::parse("H100", "x").is_err());
        assert!(SimulatedGpus::parse("H100:0", "x").is_err());
        assert!(SimulatedGpus::parse("NVIDIA:2", "x")
            .unwrap_err()
            .to_string()
            .contains("matches"));
    }

    #[test]
    fn telemetry_follows_load_and_faults() {
        let s = SimulatedGpus::parse("H100:2", "node-a").expect("spec");
        let idle = s.sample(0).expect("sample");
        assert_eq!(idle.throttle_reasons, Some(vec!["gpu_idle".to_string()]));
        s.set_load(0, 100, None).expect("load");
        let busy = s.sample(0).expect("sample");
        assert_eq!(busy.sm_util_pct, Some(100));
        assert!(busy.power_w > idle.power_w && busy.sm_clock_mhz > idle.sm_clock_mhz);
        assert!(busy.memory_used_mib.unwrap_or(0) > 70_000);
        assert!(s.set_load(0, 101, None).is_err() && s.set_load(2, 1, None).is_err());
        assert!(s
            .set_load(0, 50, Some(1_000_000))
            .unwrap_err()
            .to_string()
            .contains("above"));

        s.inject(1, Fault::OverTemperature).expect("inject");
        let hot = s.sample(1).expect("sample");
        assert_eq!(hot.temperature_c, Some(95));
        assert!(hot
            .throttle_reasons
            .expect("reasons")
            .contains(&"hw_thermal_slowdown".to_string()));
        s.inject(1, Fault::EccDoubleBit).expect("inject");
        assert_eq!(s.sample(1).expect("sample").ecc_dbe_volatile, Some(1));
        s.inject(1, Fault::FellOffBus).expect("inject");
        assert!(s.sample(1).expect("sample").lost);
        // The events travel through the event thread's path, as NVML's do.
        let log = GpuEventLog::default();
        let stop = AtomicBool::new(false);
        let wait = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ok() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        std::thread::scope(|scope| {
            scope.spawn(|| s.watch_events(&log, &stop));
            wait("XID 79 after the DBE", &|| {
                log.counts(1).last_xid == Some(79)
            });
            let c = log.counts(1);
            assert_eq!(
                (c.ecc_double_bit_events, c.xids_seen.clone()),
                (1, vec![48, 79])
            );
            s.inject(1, Fault::Clear).expect("inject");
            wait("the clear", &|| log.counts(1).xid_count == 0);
            stop.store(true, Ordering::Relaxed);
        });
        let repaired = s.sample(1).expect("sample");
        assert!(!repaired.lost);
        assert_eq!(
            (repaired.ecc_dbe_volatile, repaired.ecc_dbe_aggregate),
            (Some(0), Some(1))
        );
    }
}
