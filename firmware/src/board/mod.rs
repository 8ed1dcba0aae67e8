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
