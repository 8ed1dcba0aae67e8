//! The firmware's memory budget with the shipped 3×256 FLAME-M policy (issue 6): flash
//! ≤ 256 KiB, static RAM + peak stack ≤ 16 KiB, no heap. Sizes come from the ELF's section
//! headers; the peak stack is the painted stack's high-water mark in QEMU after a workload
//! of every request kind (`tools size` prints the same report).
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target (scripts/setup.sh).

use tools::elf::FirmwareElf;
use tools::qemu::{build_firmware, FirmwareBuild};
use tools::size::{measure, SizeReport, FLASH_BUDGET, RAM_BUDGET};

#[test]
fn default_policy_firmware_fits_the_memory_budget() {
    let blob_path = tests::repo_root().join("models/default.blob");
    let blob = std::fs::read(&blob_path).unwrap();
    let policy = runtime::Policy::from_bytes(&blob).unwrap();
    let widths: Vec<u16> = policy.blob().hidden.iter().map(|l| l.out_dim).collect();
    assert_eq!(
        widths,
        [256, 256, 256],
        "the shipped model is the paper's 3x256 shape"
    );

    let elf = build_firmware(&FirmwareBuild::qemu(Some(&blob_path))).unwrap();
    let report = measure(&elf, &blob, 20).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{report}");

    assert!(report.flash <= FLASH_BUDGET, "{report}");
    assert!(
        report.rodata as usize >= blob.len(),
        "the policy's weights stay in flash"
    );
    let stack = report.peak_stack.expect("measured");
    assert!(
        stack > 512,
        "stack high-water {stack} B is implausibly small"
    );
    assert!(
        report.static_ram + u64::from(stack) <= RAM_BUDGET,
        "static RAM {} B + stack {stack} B",
        report.static_ram
    );
    assert!(
        report.heap_evidence.is_empty(),
        "{:?}",
        report.heap_evidence
    );
    // The weights are not copied to RAM: static RAM is far below the blob's size.
    assert!((report.static_ram as usize) < blob.len() / 10, "{report}");
    assert!(report.violations().is_empty(), "{report}");
}

/// The STM32F407 board's image, built by every test run as `cargo build-f407` builds it:
/// flash and static RAM within the budgets with the shipped policy, no heap, and
/// flip-link's layout (the stack below .data and .bss, so an overflow faults at the
/// bottom of RAM instead of overwriting statics). Its stack cannot be painted without a
/// board; the control loop and kernels it runs are the QEMU image's, measured above.
#[test]
fn stm32f407_firmware_builds_within_the_static_budget() {
    let blob = tests::repo_root().join("models/default.blob");
    let elf =
        build_firmware(&FirmwareBuild::stm32f407(Some(&blob))).unwrap_or_else(|e| panic!("{e:#}"));
    let report = SizeReport::from_elf(&elf, std::fs::metadata(&blob).unwrap().len() as usize)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{report}");
    assert!(report.flash <= FLASH_BUDGET, "{report}");
    assert!(report.static_ram < RAM_BUDGET, "{report}");
    let bytes = std::fs::read(&elf).unwrap();
    let image = FirmwareElf::parse(&bytes).unwrap();
    let (stack_top, stack_bottom) = (
        image.address("_stack_start").unwrap(),
        image.address("_stack_end").unwrap(),
    );
    let lowest_static = report
        .sections
        .iter()
        .filter(|s| s.ram)
        .map(|s| s.addr)
        .min()
        .unwrap();
    assert!(
        stack_bottom == 0x2000_0000 && stack_top <= lowest_static,
        "not flip-link's layout: stack {stack_bottom:#x}..{stack_top:#x}, statics from {lowest_static:#x}"
    );
    assert!(
        report.heap_evidence.is_empty(),
        "{:?}",
        report.heap_evidence
    );
}
