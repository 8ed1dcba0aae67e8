//! STM32F407 Discovery (STM32F407VGT6) board, on `stm32f4xx-hal`.
//!
//! - Clocks: 8 MHz HSE → PLL → 168 MHz SYSCLK (the HAL picks the PLL factors, bus
//!   prescalers and flash wait states).
//! - Serial: USART2 on PA2 (TX) / PA3 (RX), 115200 8N1 (the ST-LINK virtual COM port on
//!   DISC1 boards, or any USB-serial adapter on those pins), behind [`HalSerial`].
//! - Cost clock: the DWT cycle counter (CostUnit::Cycles).
//! - Actuators: six 1 kHz PWM channels, one per HalfCheetah action dimension, through
//!   `flame_control::PwmActuator` (embedded-hal `SetDutyCycle`): TIM4 CH1–4 on PD12–PD15
//!   (the four user LEDs show the duty) and TIM3 CH1–2 on PC6/PC7. The safe action is
//!   50% duty on every channel (zero torque for a symmetric range through a signed motor
//!   driver). A blob with another action width keeps every channel at the safe duty.
//! - Watchdogs: the link-silence timer of the control loop (0.1 s without a valid `Act`
//!   drops to the safe action), and the independent watchdog (IWDG, 250 ms, frozen while a
//!   debugger halts the core), fed by the main loop: a hung loop resets the chip, which
//!   boots into the safe state.
//! - Faults: a panic first drives the outputs to the safe duty, then logs its message and
//!   stops in a HardFault (as panic-probe does, so probe-rs reports it); any other
//!   HardFault (a stack overflow under flip-link, a bus fault) drives them safe too.
//! - Logs: defmt over RTT (`defmt-rtt`), read and decoded by `probe-rs run`; without a
//!   probe attached the RTT buffer just fills and drops (non-blocking), so logging never
//!   stalls the control loop. Semihosting is not used: it halts the core without a debugger.
//!
//! Build, lint and flash with the aliases in `.cargo/config.toml`: `cargo build-f407`,
//! `cargo clippy-f407`, `cargo run-f407` (probe-rs).

use core::convert::Infallible;
use core::panic::PanicInfo;

use cortex_m::peripheral::DWT;
use cortex_m_rt::{exception, ExceptionFrame};
use embedded_hal::pwm::SetDutyCycle;
use embedded_io::{ErrorType, Read, ReadReady, Write};
use flame_control::{CostClock, PwmActuator};
use runtime::wire::CostUnit;
use stm32f4xx_hal::pac::{self, TIM3, TIM4, USART2};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::Config;
use stm32f4xx_hal::serial::{RxISR, Serial};
use stm32f4xx_hal::timer::ErasedChannel;
use stm32f4xx_hal::watchdog::IndependentWatchdog;
// The global defmt logger.
use defmt_rtt as _;

pub const FIRMWARE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+f407");

/// Link silence after which an applied action falls back to the safe one: 0.1 s at
/// 168 MHz.
pub const WATCHDOG_TICKS: u32 = 16_800_000;

/// The safe output, as a fraction of each channel's full duty.
const SAFE_DUTY: f32 = 0.5;
/// Time the main loop has to feed the IWDG. One FLAME-R action (20 network evaluations)
/// takes ~25 ms at 168 MHz; 250 ms leaves a wide margin.
const IWDG_MS: u32 = 250;

/// One PWM channel of either timer.
pub type Channel = dyn SetDutyCycle<Error = Infallible>;

pub struct Board {
    pub serial: HalSerial,
    pub clock: CycleCounter,
    pub actuator: PwmActuator<'static, Channel, 6>,
    pub watchdog: Iwdg,
}

impl Board {
    /// Bring up clocks, pins, USART2, the PWM timers and the IWDG. `blob` is the embedded
    /// policy: its action bounds map onto the PWM duty range (refused bounds keep the
    /// outputs at the safe duty and are logged).
    pub fn init(blob: &[u8]) -> Self {
        super::take();
        let dp = pac::Peripherals::take().expect("device peripherals are taken only here");
        let mut core = cortex_m::Peripherals::take().expect("core peripherals are taken only here");
        let mut rcc = dp.RCC.freeze(Config::hse(8.MHz()).sysclk(168.MHz()));
        let (gpioa, gpioc, gpiod) = (
            dp.GPIOA.split(&mut rcc),
            dp.GPIOC.split(&mut rcc),
            dp.GPIOD.split(&mut rcc),
        );

        let serial = dp
            .USART2
            .serial((gpioa.pa2, gpioa.pa3), 115_200.bps(), &mut rcc)
            .expect("115200 Bd is reachable from the 42 MHz APB1 clock");

        let (_, (t4c1, t4c2, t4c3, t4c4)) = dp.TIM4.pwm_hz(1.kHz(), &mut rcc);
        let (_, (t3c1, t3c2, ..)) = dp.TIM3.pwm_hz(1.kHz(), &mut rcc);
        let tim4 = cortex_m::singleton!(: [ErasedChannel<TIM4>; 4] = [
            t4c1.with(gpiod.pd12).erase(),
            t4c2.with(gpiod.pd13).erase(),
            t4c3.with(gpiod.pd14).erase(),
            t4c4.with(gpiod.pd15).erase(),
        ])
        .expect("Board::init runs once");
        let tim3 = cortex_m::singleton!(: [ErasedChannel<TIM3>; 2] = [
            t3c1.with(gpioc.pc6).erase(),
            t3c2.with(gpioc.pc7).erase(),
        ])
        .expect("Board::init runs once");
        // Each output starts at the safe duty before it is enabled: the compare registers
        // reset to 0, which through a signed driver would be full reverse torque.
        for channel in tim4.iter_mut() {
            channel.set_duty(safe_duty(u32::from(channel.get_max_duty())));
            channel.enable();
        }
        for channel in tim3.iter_mut() {
            channel.set_duty(safe_duty(u32::from(channel.get_max_duty())));
            channel.enable();
        }
        let ([a, b, c, d], [e, f]) = (tim4, tim3);
        let channels: [&'static mut Channel; 6] = [a, b, c, d, e, f];
        let mut actuator = PwmActuator::new(channels, SAFE_DUTY);
        // A rejected blob is reported by the controller, which keeps everything safe.
        if let Ok(policy) = runtime::Policy::from_bytes(blob) {
            if let Err(problem) = actuator.set_policy_bounds(&policy) {
                defmt::error!("PWM outputs stay at the safe duty: {}", problem);
            }
        }

        core.DCB.enable_trace();
        core.DWT.enable_cycle_counter();

        let mut iwdg = IndependentWatchdog::new(dp.IWDG);
        iwdg.stop_on_debug(&dp.DBGMCU, true);
        iwdg.start(IWDG_MS.millis());

        Board {
            serial: HalSerial(serial),
            clock: CycleCounter,
            actuator,
            watchdog: Iwdg(iwdg),
        }
    }
}

/// The HAL's USART2 as the control loop's `embedded-io` port. The HAL implements only
/// `embedded_io::Write`, and its `write` returns `Ok(0)` while the transmitter is busy,
/// which `write_all` treats as an error (DESIGN §7): this wrapper blocks per byte instead.
///
/// Line errors (overrun, framing, noise) are not I/O errors: the byte is dropped, the
/// frame it belonged to fails its CRC, and the control loop answers `CorruptFrame` and
/// resynchronizes, the recovery the protocol defines anyway.
pub struct HalSerial(Serial<USART2>);

impl ErrorType for HalSerial {
    type Error = Infallible;
}

impl HalSerial {
    /// A received byte, if one is waiting (a byte with a line error is dropped).
    fn try_byte(&mut self) -> Option<u8> {
        embedded_hal_nb::serial::Read::read(&mut self.0).ok()
    }
}

impl Read for HalSerial {
    /// Blocks until at least one byte arrived, then takes whatever else is already waiting.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        while n == 0 || (n < buf.len() && self.0.is_rx_not_empty()) {
            if let Some(byte) = self.try_byte() {
                buf[n] = byte;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl ReadReady for HalSerial {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.0.is_rx_not_empty())
    }
}

impl Write for HalSerial {
    /// Every byte, waiting for the transmitter before each.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &byte in buf {
            // The only error the HAL's transmitter reports is "busy".
            while embedded_hal_nb::serial::Write::write(&mut self.0, byte).is_err() {}
        }
        Ok(buf.len())
    }

    /// Waits until the last byte has left the shift register.
    fn flush(&mut self) -> Result<(), Infallible> {
        while embedded_hal_nb::serial::Write::flush(&mut self.0).is_err() {}
        Ok(())
    }
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

/// The independent watchdog, started in `Board::init`.
pub struct Iwdg(IndependentWatchdog);

impl Iwdg {
    /// Called once per main-loop iteration.
    #[inline(always)]
    pub fn feed(&mut self) {
        self.0.feed();
    }
}

/// The safe duty for a channel whose full duty is `max`, rounded as `PwmActuator` rounds it.
fn safe_duty(max: u32) -> u16 {
    (SAFE_DUTY * max as f32 + 0.5) as u16
}

/// The safe duty on every PWM channel, written straight to the timers' compare registers:
/// it runs from the panic and HardFault handlers, where the actuator (owned by the
/// controller) is out of reach.
fn outputs_safe() {
    // SAFETY: only the compare registers are written (the handlers never return to the
    // code that owns the timers), with values within the auto-reload range.
    let (tim4, tim3) = unsafe { (TIM4::steal(), TIM3::steal()) };
    // The HAL's full duty is the auto-reload value + 1.
    let safe4 = safe_duty(tim4.arr().read().bits() + 1);
    for ccr in tim4.ccr_iter() {
        ccr.write(|w| w.ccr().set(safe4));
    }
    let safe3 = safe_duty(tim3.arr().read().bits() + 1);
    for ccr in tim3.ccr_iter().take(2) {
        ccr.write(|w| w.ccr().set(safe3));
    }
}

/// Outputs to the safe duty first, then the message over RTT, then a HardFault that
/// probe-rs reports (panic-probe's sequence, with the outputs made safe before anything
/// else: panic-probe's own handler could only log first). Without a probe the IWDG
/// resets the chip, which boots safe.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cortex_m::interrupt::disable();
    outputs_safe();
    super::log_panic(info);
    // `udf` raises a UsageFault when that is enabled; disable it so it escalates to
    // HardFault, where the debugger's vector catch stops.
    // SAFETY: interrupts are off and nothing else uses the SCB now.
    unsafe { cortex_m::Peripherals::steal() }
        .SCB
        .disable(cortex_m::peripheral::scb::Exception::UsageFault);
    cortex_m::asm::udf();
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    outputs_safe();
    defmt::error!("HardFault at pc {=u32:#010x}", frame.pc());
    loop {
        cortex_m::asm::nop();
    }
}
