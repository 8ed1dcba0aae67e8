//! Minimal memory-mapped register access for the QEMU board.
//!
//! QEMU's netduinoplus2 does not model RCC, so a HAL's clock setup (which waits for the
//! oscillators and the PLL) would hang there; the QEMU board touches its handful of
//! registers (RCC enables, GPIOA, USART1, TIM2) directly, with the addresses of the
//! STM32F405/407 reference manual (RM0090). The STM32F407 board uses `stm32f4xx-hal`.

/// One 32-bit peripheral register at a fixed address.
#[derive(Clone, Copy)]
pub struct Reg(usize);

impl Reg {
    /// The register at `base + offset`.
    ///
    /// # Safety
    /// `base + offset` is an aligned register of a peripheral of this chip that the
    /// caller owns: every later read and write goes to that address.
    pub const unsafe fn at(base: usize, offset: usize) -> Self {
        Self(base + offset)
    }

    #[inline(always)]
    pub fn read(self) -> u32 {
        // SAFETY: a valid, aligned peripheral register of the chip (see `at`).
        unsafe { core::ptr::read_volatile(self.0 as *const u32) }
    }

    #[inline(always)]
    pub fn write(self, value: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(self.0 as *mut u32, value) }
    }

    #[inline(always)]
    pub fn modify(self, f: impl FnOnce(u32) -> u32) {
        self.write(f(self.read()));
    }

    /// Spin until `(read() & mask) == value`.
    #[inline(always)]
    pub fn wait(self, mask: u32, value: u32) {
        while self.read() & mask != value {}
    }
}
