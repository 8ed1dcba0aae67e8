//! STM32F407 Discovery (STM32F407VGT6) board.
//!
//! - Clocks: 8 MHz HSE → PLL → 168 MHz SYSCLK (M=8, N=336, P=2, Q=7), APB1 42 MHz,
//!   APB2 84 MHz, flash 5 wait states with caches and prefetch.
//! - Serial: USART2 on PA2 (TX) / PA3 (RX), 115200 8N1 (the ST-LINK virtual COM port on
//!   DISC1 boards, or any USB-serial adapter on those pins).
//! - Cost clock: the DWT cycle counter (CostUnit::Cycles).
//! - Actuator: this board has no motors; the LEDs show the output state (green: a computed
//!   action is applied, red: the safe action). A robot's board file drives its PWM here.
//! - Logs: defmt over RTT (`defmt-rtt`), read and decoded by `probe-rs run`; without a
//!   probe attached the RTT buffer just fills and drops (non-blocking), so logging never
//!   stalls the control loop. Semihosting is not used: it halts the core without a debugger.
//!
//! Flash with `probe-rs run --chip STM32F407VGTx` (see `.cargo/config.toml`).

use core::fmt::Write as _;
use core::panic::PanicInfo;

use cortex_m::peripheral::DWT;
use flame_control::{Actuator, CostClock};
use runtime::wire::CostUnit;

use super::Usart;
use crate::reg::Reg;
// The global defmt logger.
use defmt_rtt as _;

pub const FIRMWARE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+f407");

/// Link silence after which an applied action falls back to zero: 0.1 s at 168 MHz.
pub const WATCHDOG_TICKS: u32 = 16_800_000;

const RCC: usize = 0x4002_3800;
const RCC_CR: usize = 0x00;
const RCC_PLLCFGR: usize = 0x04;
const RCC_CFGR: usize = 0x08;
const RCC_AHB1ENR: usize = 0x30;
const RCC_APB1ENR: usize = 0x40;
const FLASH_ACR: usize = 0x4002_3C00;
const PWR_CR: usize = 0x4000_7000;
const GPIOA: usize = 0x4002_0000;
const GPIOD: usize = 0x4002_0C00;
const GPIO_MODER: usize = 0x00;
const GPIO_BSRR: usize = 0x18;
const GPIO_AFRL: usize = 0x20;
const USART2: usize = 0x4000_4400;
/// 115200 Bd from the 42 MHz APB1 clock: 42e6 / 115200 / 16 = 22.786 = 22 + 13/16.
const USART2_BRR: u32 = (22 << 4) | 13;

const LED_GREEN: u32 = 12;
const LED_RED: u32 = 14;

pub struct Board {
    pub serial: Usart,
    pub clock: CycleCounter,
    pub actuator: LedActuator,
}

impl Board {
    pub fn init() -> Self {
        super::take();
        clocks_168mhz();
        let rcc = |offset| Reg::at(RCC, offset);
        rcc(RCC_AHB1ENR).modify(|v| v | 1 | (1 << 3)); // GPIOA, GPIOD
        rcc(RCC_APB1ENR).modify(|v| v | (1 << 17)); // USART2
                                                    // PA2/PA3: alternate function 7 (USART2).
        Reg::at(GPIOA, GPIO_MODER).modify(|v| (v & !(0b1111 << 4)) | (0b1010 << 4));
        Reg::at(GPIOA, GPIO_AFRL).modify(|v| (v & !(0xFF << 8)) | (0x77 << 8));
        // PD12..PD15: push-pull outputs (the four user LEDs).
        Reg::at(GPIOD, GPIO_MODER).modify(|v| (v & !(0xFF << 24)) | (0x55 << 24));

        let mut core = cortex_m::Peripherals::take().expect("core peripherals are taken only here");
        core.DCB.enable_trace();
        core.DWT.enable_cycle_counter();

        Board {
            serial: Usart::new(USART2, USART2_BRR),
            clock: CycleCounter,
            actuator: LedActuator,
        }
    }
}

/// HSE 8 MHz → PLL → 168 MHz, with the voltage scale and flash latency that frequency needs
/// (RM0090 §5, §6, §3.5.1).
fn clocks_168mhz() {
    let rcc = |offset| Reg::at(RCC, offset);
    rcc(RCC_CR).modify(|v| v | (1 << 16)); // HSEON
    rcc(RCC_CR).wait(1 << 17, 1 << 17); // HSERDY
    rcc(RCC_APB1ENR).modify(|v| v | (1 << 28)); // PWREN
    Reg::at(PWR_CR, 0).modify(|v| v | (1 << 14)); // VOS: scale 1
    let acr = Reg::at(FLASH_ACR, 0);
    acr.write(5 | (1 << 8) | (1 << 9) | (1 << 10)); // 5 WS, PRFTEN, ICEN, DCEN
    acr.wait(0b111, 5);
    // AHB /1, APB1 /4 (42 MHz), APB2 /2 (84 MHz).
    rcc(RCC_CFGR).modify(|v| {
        (v & !((0b1111 << 4) | (0b111 << 10) | (0b111 << 13))) | (0b101 << 10) | (0b100 << 13)
    });
    // PLLM = 8, PLLN = 336, PLLP = 2 (encoded 0), PLLSRC = HSE, PLLQ = 7.
    rcc(RCC_PLLCFGR).write(8 | (336 << 6) | (1 << 22) | (7 << 24));
    rcc(RCC_CR).modify(|v| v | (1 << 24)); // PLLON
    rcc(RCC_CR).wait(1 << 25, 1 << 25); // PLLRDY
    rcc(RCC_CFGR).modify(|v| (v & !0b11) | 0b10); // SW = PLL
    rcc(RCC_CFGR).wait(0b11 << 2, 0b10 << 2); // SWS = PLL
}

/// The DWT cycle counter (enabled in `Board::init`).
pub struct CycleCounter;

impl CostClock for CycleCounter {
    const UNIT: CostUnit = CostUnit::Cycles;

    #[inline(always)]
    fn now(&mut self) -> u32 {
        DWT::cycle_count()
    }
}

/// Shows the commanded output on the LEDs.
pub struct LedActuator;

fn leds(green: bool) {
    let (on, off) = if green {
        (LED_GREEN, LED_RED)
    } else {
        (LED_RED, LED_GREEN)
    };
    Reg::at(GPIOD, GPIO_BSRR).write((1 << on) | (1 << (off + 16)));
}

impl Actuator for LedActuator {
    fn apply(&mut self, _action: &[f32]) {
        leds(true);
    }
    fn safe(&mut self) {
        leds(false);
    }
}

/// Stop with the outputs in the safe state: red LED on, interrupts off, the message on RTT.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cortex_m::interrupt::disable();
    leds(false);
    let mut text = heapless::String::<160>::new();
    let _ = write!(text, "{info}"); // truncated if longer
    defmt::error!("panic: {=str}", text.as_str());
    loop {
        cortex_m::asm::nop();
    }
}
