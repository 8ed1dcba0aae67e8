//! Minimal memory-mapped register access for the board files.
//!
//! The boards touch a handful of registers (RCC, one USART, one timer, GPIO), so a PAC
//! would add more build time than it saves; each address below is from the STM32F405/407
//! reference manual (RM0090).

/// One 32-bit peripheral register at a fixed address.
#[derive(Clone, Copy)]
pub struct Reg(usize);

impl Reg {
    /// The register at `base + offset`. Only the board files create these, for addresses
    /// of peripherals the board owns (it is constructed once, see `Board::init`).
    pub const fn at(base: usize, offset: usize) -> Self {
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
