//! The firmware's control loop, independent of any board.
//!
//! [`Controller`] is the device side of the host-in-the-loop protocol (`runtime::wire`,
//! DESIGN §8): it splits the serial byte stream into frames, decodes
//! [`Request`](runtime::wire::Request)s, runs the embedded policy and answers
//! [`Response`](runtime::wire::Response)s. It is generic over three small seams that the
//! board files fill in (module `seams`):
//!
//! - the serial link: any `embedded_io` `Read + Write + ReadReady` (a UART, USB-serial, or
//!   in-memory queues in the tests below);
//! - [`CostClock`]: the counter that prices one action (TIM2 instructions under QEMU, DWT
//!   cycles on a real board);
//! - [`Actuator`]: where actions go, and what "safe" means on the robot.
//!
//! Keeping the board out of this crate lets the whole protocol, including its failure
//! paths (corrupt frames, floods, bad observations, a rejected blob, link silence), be
//! unit-tested on the workstation: `cargo test-host` in `firmware/`.
//!
//! Memory: everything large lives in [`Buffers`], which the firmware keeps in a `static`
//! (≈ 3.5 KiB) so the stack only holds one decoded request.
#![cfg_attr(not(test), no_std)]

mod controller;
mod golden;
mod pwm;
mod seams;
#[cfg(test)]
mod tests;

pub use controller::{Buffers, Controller, Stats};
pub use golden::{golden_for, GoldenProblem};
pub use pwm::{BoundsError, PwmActuator};
pub use seams::{Actuator, Config, CostClock, NoActuator};

/// Largest plain response message (postcard + CRC-32). The largest response is an
/// `Action` with `MAX_ACT` floats: tag 1 + seq ≤ 5 + length 1 + 4·32 + cost ≤ 5 + CRC 4
/// = 144 bytes; `Info` needs ≤ 42. A test encodes both at their maximum.
pub const RESPONSE_MESSAGE: usize = 160;
/// Largest encoded response frame (COBS overhead and delimiter included).
pub const RESPONSE_FRAME: usize = RESPONSE_MESSAGE + RESPONSE_MESSAGE / 254 + 2;
/// Bytes taken from the link per read. Small: a UART delivers one byte at a time anyway,
/// and this buffer lives on the stack.
pub const RX_CHUNK: usize = 64;
