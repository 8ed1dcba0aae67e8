//! Board support: one file per board, each exporting the same names
//! (`Board { serial, clock, actuator, watchdog }`, `Board::init(blob)`, `WATCHDOG_TICKS`,
//! `FIRMWARE_VERSION`), the panic handler and the global defmt logger.

#[cfg(feature = "qemu")]
mod qemu;
#[cfg(feature = "qemu")]
pub use qemu::*;

#[cfg(feature = "stm32f407")]
mod stm32f407;
#[cfg(feature = "stm32f407")]
pub use stm32f407::*;

#[cfg(feature = "qemu")]
mod usart;
#[cfg(feature = "qemu")]
pub use usart::Usart;

use core::sync::atomic::{AtomicBool, Ordering};

/// Guards `Board::init`: the board owns its peripherals, so it may exist only once.
static TAKEN: AtomicBool = AtomicBool::new(false);

fn take() {
    assert!(
        !TAKEN.swap(true, Ordering::AcqRel),
        "Board::init called twice"
    );
}

/// The panic's message and location over defmt, formatted on the host: the message when it
/// is a plain string (`expect`, `panic!("literal")`), else only where it happened, so the
/// firmware links no `core::fmt` machinery to format it on the MCU.
fn log_panic(info: &core::panic::PanicInfo<'_>) {
    let message = info.message().as_str().unwrap_or("(formatted message)");
    match info.location() {
        Some(at) => defmt::error!(
            "panic: {=str} at {=str}:{=u32}",
            message,
            at.file(),
            at.line()
        ),
        None => defmt::error!("panic: {=str}", message),
    }
}
