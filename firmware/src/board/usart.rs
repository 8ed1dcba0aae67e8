//! The STM32F4 USART (same register layout on USART1/2/6) as an `embedded-io` serial port,
//! by register: the QEMU board's, which cannot use a HAL (QEMU does not model RCC, so a
//! HAL's clock setup would wait forever).

use core::convert::Infallible;

use embedded_io::{ErrorType, Read, ReadReady, Write};

use crate::reg::Reg;

const SR: usize = 0x00;
const DR: usize = 0x04;
const BRR: usize = 0x08;
const CR1: usize = 0x0C;

const SR_ORE: u32 = 1 << 3;
const SR_RXNE: u32 = 1 << 5;
const SR_TC: u32 = 1 << 6;
const SR_TXE: u32 = 1 << 7;
const CR1_RE: u32 = 1 << 2;
const CR1_TE: u32 = 1 << 3;
const CR1_UE: u32 = 1 << 13;

/// A USART in 8N1 polling mode.
///
/// Line errors (overrun, framing, noise) are not reported as I/O errors: the bytes they
/// damage make the frame fail its CRC, and the control loop answers that with
/// `CorruptFrame` and resynchronizes, which is the recovery the protocol defines anyway.
pub struct Usart {
    sr: Reg,
    dr: Reg,
}

impl Usart {
    /// Enable the USART at `base` for 8N1 with the given BRR value (the board computes it
    /// from its bus clock). The caller has enabled the peripheral clock and pins.
    ///
    /// # Safety
    /// `base` is a USART of this chip that nothing else uses.
    pub unsafe fn new(base: usize, brr: u32) -> Self {
        let cr1 = Reg::at(base, CR1);
        cr1.write(0);
        Reg::at(base, BRR).write(brr);
        cr1.write(CR1_UE | CR1_TE | CR1_RE);
        Self {
            sr: Reg::at(base, SR),
            dr: Reg::at(base, DR),
        }
    }

    fn rx_ready(&self) -> bool {
        let sr = self.sr.read();
        if sr & SR_ORE != 0 && sr & SR_RXNE == 0 {
            // Clear a lone overrun flag (SR read then DR read), or it would stay set forever.
            let _ = self.dr.read();
        }
        sr & SR_RXNE != 0
    }
}

impl ErrorType for Usart {
    type Error = Infallible;
}

impl Read for Usart {
    /// Blocks until at least one byte arrived, then takes whatever else is already waiting.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx_ready() {}
        let mut n = 0;
        while n < buf.len() && self.rx_ready() {
            buf[n] = self.dr.read() as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl ReadReady for Usart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.rx_ready())
    }
}

impl Write for Usart {
    /// Waits for TXE before every byte and always writes the whole buffer: returning
    /// `Ok(0)` while the transmitter is busy (as some HALs do) makes `write_all` panic
    /// (DESIGN §7).
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &byte in buf {
            self.sr.wait(SR_TXE, SR_TXE);
            self.dr.write(byte as u32);
        }
        Ok(buf.len())
    }

    /// Waits until the last byte has left the shift register.
    fn flush(&mut self) -> Result<(), Infallible> {
        self.sr.wait(SR_TC, SR_TC);
        Ok(())
    }
}
