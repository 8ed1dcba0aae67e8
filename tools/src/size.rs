//! The firmware's memory budget (issue 6, DESIGN §7): flash and static RAM from the ELF's
//! section headers, no heap, and the peak stack measured in QEMU.
//!
//! The peak stack is the high-water mark of the stack region, which cortex-m-rt's
//! `paint-stack` feature fills with [`crate::qemu::STACK_PAINT`] at reset: after a workload
//! that takes every path of the control loop (`Info`, `Act` in both modes, `SelfTest`,
//! rejected observations, corrupt and oversized frames, `Reset`), the deepest overwritten
//! word is the deepest the stack has been. It is a measurement, not a bound: the workload
//! is what makes it meaningful.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use runtime::noise::SplitMix64;
use runtime::wire::{Request, Response, MAX_FRAME};
use runtime::{NoiseMode, Policy, Scratch};
use serde::Serialize;

use crate::elf::{ElfSizes, FirmwareElf, SectionSize};
use crate::link::{DeviceLink, LinkError};
use crate::qemu::{Qemu, QemuOptions};

/// Targets of issue 6 for the 3×256 FLAME-M policy.
pub const FLASH_BUDGET: u64 = 256 * 1024;
/// Static RAM (.data + .bss + .uninit) plus the peak stack.
pub const RAM_BUDGET: u64 = 16 * 1024;

/// Symbols that exist only when an allocator is linked in (`alloc`'s shims and the
/// default `__rdl_*` implementations).
const ALLOCATOR_SYMBOLS: [&str; 6] = [
    "__rust_alloc",
    "__rg_alloc",
    "__rdl_alloc",
    "__rust_alloc_zeroed",
    "__rust_realloc",
    "__rust_no_alloc_shim_is_unstable",
];

/// Memory use of one firmware image.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub elf: PathBuf,
    pub sections: Vec<SectionSize>,
    pub flash: u64,
    pub static_ram: u64,
    /// Of `flash`, `.rodata` (the embedded blob and golden vectors live there).
    pub rodata: u64,
    /// Size of the embedded policy blob.
    pub blob_bytes: usize,
    /// Stack high-water mark after the workload, when measured.
    pub peak_stack: Option<u32>,
    /// Bytes between the end of static RAM and the top of RAM (what the stack may use).
    pub stack_reserved: Option<u32>,
    /// Allocator symbols or a `.heap` section found in the image (none expected).
    pub heap_evidence: Vec<String>,
    /// Requests the workload sent before reading the stack.
    pub workload_requests: usize,
}

impl SizeReport {
    /// Static sizes of an ELF (no stack measurement).
    pub fn from_elf(path: &Path, blob_bytes: usize) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let elf = FirmwareElf::parse(&bytes).with_context(|| format!("{}", path.display()))?;
        let sections = elf.sections()?;
        let sizes = ElfSizes::of(&sections);
        let mut heap_evidence: Vec<String> = (sections.iter())
            .filter(|s| s.name == ".heap")
            .map(|s| format!("section .heap ({} B)", s.size))
            .collect();
        heap_evidence.extend(
            (ALLOCATOR_SYMBOLS.iter())
                .filter(|name| elf.symbol(name).is_some())
                .map(|name| format!("symbol {name}")),
        );
        let stack_reserved = match (elf.address("_stack_start"), elf.address("_stack_end")) {
            (Ok(start), Ok(end)) => start.checked_sub(end),
            _ => None,
        };
        Ok(SizeReport {
            elf: path.to_path_buf(),
            sections,
            flash: sizes.flash,
            static_ram: sizes.static_ram,
            rodata: sizes.rodata,
            blob_bytes,
            peak_stack: None,
            stack_reserved,
            heap_evidence,
            workload_requests: 0,
        })
    }

    /// Static RAM plus the peak stack, when it was measured.
    pub fn ram_total(&self) -> Option<u64> {
        self.peak_stack.map(|s| u64::from(s) + self.static_ram)
    }

    /// Budget violations, one line each (empty: within budget). An unmeasured stack is a
    /// violation: the RAM target cannot be shown without it.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.flash > FLASH_BUDGET {
            out.push(format!("flash {} B exceeds {FLASH_BUDGET} B", self.flash));
        }
        match self.ram_total() {
            Some(total) if total > RAM_BUDGET => out.push(format!(
                "static RAM {} B + peak stack {} B = {total} B exceeds {RAM_BUDGET} B",
                self.static_ram,
                self.peak_stack.unwrap_or(0)
            )),
            Some(_) => {}
            None => out.push("peak stack not measured".into()),
        }
        if !self.heap_evidence.is_empty() {
            out.push(format!(
                "the image has a heap: {}",
                self.heap_evidence.join(", ")
            ));
        }
        out
    }
}

impl fmt::Display for SizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kib = |b: u64| b as f64 / 1024.0;
        writeln!(f, "firmware size: {}", self.elf.display())?;
        writeln!(f, "{:<16} {:>10} {:>8}  where", "section", "addr", "bytes")?;
        for s in &self.sections {
            let place = match (s.flash, s.ram) {
                (true, true) => "flash + RAM",
                (true, false) => "flash",
                (false, true) => "RAM",
                (false, false) => "-",
            };
            writeln!(f, "{:<16} {:#010x} {:>8}  {place}", s.name, s.addr, s.size)?;
        }
        writeln!(
            f,
            "flash           {:>8} B ({:.1} KiB; .rodata {} B holds the {} B policy blob)  budget {} KiB",
            self.flash,
            kib(self.flash),
            self.rodata,
            self.blob_bytes,
            FLASH_BUDGET / 1024
        )?;
        writeln!(
            f,
            "static RAM      {:>8} B ({:.1} KiB; .data + .bss + .uninit)",
            self.static_ram,
            kib(self.static_ram)
        )?;
        match self.peak_stack {
            Some(stack) => writeln!(
                f,
                "peak stack      {:>8} B ({:.1} KiB; painted stack after {} requests)",
                stack,
                kib(u64::from(stack)),
                self.workload_requests
            )?,
            None => writeln!(f, "peak stack      not measured")?,
        }
        if let Some(total) = self.ram_total() {
            writeln!(
                f,
                "RAM total       {:>8} B ({:.1} KiB)  budget {} KiB",
                total,
                kib(total),
                RAM_BUDGET / 1024
            )?;
        }
        writeln!(
            f,
            "heap            {}",
            if self.heap_evidence.is_empty() {
                "none (no allocator symbols, no .heap section)".to_string()
            } else {
                self.heap_evidence.join(", ")
            }
        )?;
        let violations = self.violations();
        if violations.is_empty() {
            write!(f, "within budget: yes")
        } else {
            write!(f, "within budget: NO ({})", violations.join("; "))
        }
    }
}

/// Boot `elf` in QEMU, run the workload against `blob` (the policy it embeds), and return
/// the image's sizes with the measured peak stack. `acts` is the number of `Act`
/// requests (half deterministic, half stochastic).
pub fn measure(elf: &Path, blob: &[u8], acts: usize) -> Result<SizeReport> {
    let mut report = SizeReport::from_elf(elf, blob.len())?;
    let policy = Policy::from_bytes(blob).map_err(|e| anyhow!("policy blob: {e}"))?;
    let mut options = QemuOptions::new(elf);
    options.time_limit = Duration::from_secs(120);
    let qemu = Qemu::start(&options)?;
    let mut link = DeviceLink::new(qemu).with_timeout(Duration::from_secs(10));
    let result = workload(&mut link, &policy, acts);
    let requests = match result {
        Ok(n) => n,
        Err(e) => bail!("{e:#}\nQEMU log:\n{}", link.get_ref().log()),
    };
    report.workload_requests = requests;
    report.peak_stack = Some(link.get_mut().stack_high_water()?);
    Ok(report)
}

/// Every request kind and failure path once or more; returns the number of requests.
fn workload(link: &mut DeviceLink<Qemu>, policy: &Policy<'_>, acts: usize) -> Result<usize> {
    let mut requests = 0;
    match link.sync(Duration::from_secs(30))? {
        Response::Info { .. } => {}
        other => bail!("the firmware does not serve a policy: {other:?}"),
    }
    requests += 1;
    let mut rng = SplitMix64::new(0x5EED);
    let mut obs = vec![0f32; policy.obs_dim()];
    let mut host = vec![0f32; policy.act_dim()];
    let mut scratch = Scratch::new();
    for i in 0..acts {
        for x in obs.iter_mut() {
            // Wide enough to saturate the input clip on some coordinates.
            *x = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 12.0 - 6.0) as f32;
        }
        let mode = if i % 2 == 0 {
            NoiseMode::Deterministic
        } else {
            NoiseMode::Stochastic {
                seed: rng.next_u64(),
            }
        };
        let got = link.act(&obs, mode)?;
        policy
            .act(&obs, mode, &mut scratch, &mut host)
            .map_err(|e| anyhow!("host runtime: {e}"))?;
        if got
            .action
            .iter()
            .map(|a| a.to_bits())
            .ne(host.iter().map(|a| a.to_bits()))
        {
            bail!("action {i} differs from the host runtime");
        }
        requests += 1;
    }
    // Self-test over the golden vectors (or the NoGoldenVectors refusal).
    let seq = link.next_seq();
    link.request(&Request::SelfTest { seq })?;
    // Rejected observations: non-finite, wrong length.
    obs[0] = f32::NAN;
    for bad in [&obs[..], &obs[..obs.len() - 1]] {
        match link.act(bad, NoiseMode::Deterministic) {
            Err(LinkError::Device { .. }) => {}
            other => bail!("a bad observation was not refused: {other:?}"),
        }
    }
    // A corrupt frame and an oversized one.
    link.send_bytes(&[0x55; 40])?;
    link.send_bytes(&[0])?;
    let mut flood = vec![0xAA; MAX_FRAME + 100];
    flood.push(0);
    link.send_bytes(&flood)?;
    link.sync(Duration::from_secs(10))?;
    let seq = link.next_seq();
    link.request(&Request::Reset { seq })?;
    Ok(requests + 6)
}
