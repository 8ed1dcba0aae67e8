//! QEMU `netduinoplus2` (STM32F405) board.
//!
//! Facts this file relies on (QEMU 7.2, DESIGN §7):
//! - RCC is not emulated (writes are ignored, reads return 0), so the clocks stay at the
//!   16 MHz HSI reset default; waiting for a PLL would hang. The RCC enable bits are still
//!   written so the same code is right on a real F405 running from HSI.
//! - USART1 is QEMU's serial0 and applies backpressure: one byte is delivered per RXNE,
//!   so nothing is lost while the firmware computes.
//! - Under `-icount shift=0` TIM2 counts at a virtual 1 GHz while each instruction takes
//!   1 ns, so a TIM2 difference is the exact number of executed instructions.
//! - Semihosting works when QEMU runs with `-semihosting-config enable=on` (without it a
//!   semihosting call hangs); its output goes to QEMU's stdout (or the chardev named in
//!   `-semihosting-config`), the UART has its own chardev.
//! - Logs are defmt frames written to semihosting stdout (`defmt-semihosting`): binary,
//!   decoded on the host with the ELF (`tools::defmt_log`, or `defmt-print -e ELF`).

use core::panic::PanicInfo;

use cortex_m_semihosting::debug;
// The global defmt logger.
use defmt_semihosting as _;
use flame_control::{CostClock, NoActuator};
use runtime::wire::CostUnit;

use super::Usart;
use crate::reg::Reg;

pub const FIRMWARE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+qemu");

/// Link silence after which an applied action falls back to zero: 0.2 s of virtual time
/// (TIM2 ticks are nanoseconds of virtual time under `-icount shift=0`).
pub const WATCHDOG_TICKS: u32 = 200_000_000;

const RCC: usize = 0x4002_3800;
const RCC_AHB1ENR: usize = 0x30;
const RCC_APB1ENR: usize = 0x40;
const RCC_APB2ENR: usize = 0x44;
const GPIOA: usize = 0x4002_0000;
const GPIO_MODER: usize = 0x00;
const GPIO_AFRH: usize = 0x24;
const USART1: usize = 0x4001_1000;
/// 115200 Bd from the 16 MHz APB2 clock: 16e6 / 115200 = 138.9 = 8 + 11/16 (QEMU ignores it).
const USART1_BRR: u32 = (8 << 4) | 11;
const TIM2: usize = 0x4000_0000;

pub struct Board {
    pub serial: Usart,
    pub clock: Tim2Clock,
    pub actuator: NoActuator,
    pub watchdog: NoWatchdog,
}

/// netduinoplus2 models no independent watchdog; the link-silence timer of the control
/// loop still runs.
pub struct NoWatchdog;

impl NoWatchdog {
    #[inline(always)]
    pub fn feed(&mut self) {}
}

impl Board {
    /// Enable USART1, its pins and TIM2. The policy blob is not needed here: this board
    /// has no actuators to map it onto.
    pub fn init(_blob: &[u8]) -> Self {
        super::take();
        // SAFETY: the RCC, GPIOA, USART1 and TIM2 registers of this chip (RM0090), which
        // the board owns: `take` makes sure it is initialized once.
        unsafe {
            let rcc = |offset| Reg::at(RCC, offset);
            rcc(RCC_AHB1ENR).modify(|v| v | 1); // GPIOA
            rcc(RCC_APB1ENR).modify(|v| v | 1); // TIM2
            rcc(RCC_APB2ENR).modify(|v| v | (1 << 4)); // USART1

            // PA9 (TX) and PA10 (RX): alternate function 7.
            Reg::at(GPIOA, GPIO_MODER).modify(|v| (v & !(0b1111 << 18)) | (0b1010 << 18));
            Reg::at(GPIOA, GPIO_AFRH).modify(|v| (v & !(0xFF << 4)) | (0x77 << 4));
            Board {
                serial: Usart::new(USART1, USART1_BRR),
                clock: Tim2Clock::new(),
                actuator: NoActuator,
                watchdog: NoWatchdog,
            }
        }
    }
}

/// TIM2 as a free-running 32-bit counter: prescaler 1, auto-reload at 2^32 − 1.
pub struct Tim2Clock {
    cnt: Reg,
}

impl Tim2Clock {
    /// # Safety
    /// TIM2 is this board's and nothing else uses it.
    unsafe fn new() -> Self {
        let reg = |offset| Reg::at(TIM2, offset);
        reg(0x00).write(0); // CR1: stopped
        reg(0x28).write(0); // PSC: count every timer clock
        reg(0x2C).write(u32::MAX); // ARR: full 32-bit range, wraps like a u32
        reg(0x14).write(1); // EGR.UG: load PSC/ARR now
        reg(0x24).write(0); // CNT
        reg(0x00).write(1); // CR1.CEN
        Self { cnt: reg(0x24) }
    }
}

impl CostClock for Tim2Clock {
    const UNIT: CostUnit = CostUnit::Instructions;

    #[inline(always)]
    fn now(&mut self) -> u32 {
        self.cnt.read()
    }
}

/// Log the panic and exit QEMU with a failure status, so a test sees the message and a
/// non-zero exit instead of a silent hang.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cortex_m::interrupt::disable();
    super::log_panic(info);
    loop {
        debug::exit(debug::EXIT_FAILURE);
    }
}
