//! FLAME policy firmware: serves the host-in-the-loop protocol (DESIGN §8) on a serial
//! link, evaluating the policy blob embedded in flash.
//!
//! This file only wires things together; the protocol logic is the board-independent
//! `flame-control` crate (unit-tested on the host), and everything chip-specific is in
//! `board/` (one file per board, selected by cargo feature).
#![no_std]
#![no_main]

#[cfg(all(feature = "qemu", feature = "stm32f407"))]
compile_error!("pick one board: `qemu` (the default) or `stm32f407` (with --no-default-features)");
#[cfg(not(any(feature = "qemu", feature = "stm32f407")))]
compile_error!("no board selected: enable feature `qemu` or `stm32f407`");

mod board;
#[cfg(feature = "qemu")]
mod reg;

use core::cell::UnsafeCell;

use cortex_m_rt::entry;
use flame_control::{Buffers, Config, Controller};

/// Word-aligned wrapper, so a kernel may one day read weights as 32-bit words.
#[repr(C, align(4))]
struct Aligned<T: ?Sized>(T);

/// The policy blob chosen at build time (see `build.rs`). It lives in flash (.rodata) and the
/// policy borrows its weights from there: nothing of it is copied to RAM.
static BLOB: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/policy.blob")));

/// The exporter's golden vectors for this blob (empty when none were found at build time).
static GOLDEN: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/golden.bin")));

/// The controller's large buffers (frame reader, evaluation scratch, transmit frame):
/// a static in .bss rather than on the stack, so the stack stays small and its size known.
static BUFFERS: MainOnly<Buffers> = MainOnly(UnsafeCell::new(Buffers::new()));

/// A static that only `main` touches, once.
struct MainOnly<T>(UnsafeCell<T>);

// SAFETY: there are no threads or interrupt handlers that use it; `main` takes the only
// reference (see there).
unsafe impl<T> Sync for MainOnly<T> {}

#[entry]
fn main() -> ! {
    // SAFETY: `main` runs once and never returns, and nothing else names BUFFERS, so this
    // is the only reference to it that ever exists.
    let buffers = unsafe { &mut *BUFFERS.0.get() };
    let board::Board {
        mut serial,
        clock,
        actuator,
        mut watchdog,
    } = board::Board::init(&BLOB.0);
    let config = Config {
        watchdog_ticks: board::WATCHDOG_TICKS,
        firmware_version: board::FIRMWARE_VERSION,
    };
    let golden = match flame_control::golden_for(&GOLDEN.0, &BLOB.0) {
        Ok(golden) => golden,
        Err(problem) => {
            defmt::warn!("golden vectors not used: {}", problem);
            None
        }
    };
    let vectors = golden.as_ref().map_or(0, |g| g.len());
    let mut controller = Controller::new(&BLOB.0, golden, buffers, clock, actuator, config);
    match controller.policy() {
        Some(policy) => defmt::info!(
            "flame-firmware {=str}: policy ok, blob {=usize} bytes, crc {=u32:#010x}, obs {=usize} act {=usize} hidden {=usize} layers nfe {=u16}, {=usize} golden vectors",
            board::FIRMWARE_VERSION,
            BLOB.0.len(),
            controller.blob_hash(),
            policy.obs_dim(),
            policy.act_dim(),
            policy.blob().hidden.len(),
            policy.blob().meta.nfe,
            vectors
        ),
        None => defmt::error!(
            "flame-firmware {=str}: policy blob rejected ({}); safe state, every request gets NoPolicy",
            board::FIRMWARE_VERSION,
            controller.policy_error()
        ),
    }
    loop {
        // The board links cannot fail (line errors surface as CRC failures of the frame).
        let Ok(()) = controller.poll(&mut serial);
        watchdog.feed();
    }
}
