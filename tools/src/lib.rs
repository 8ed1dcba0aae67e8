//! Host utilities around the firmware: QEMU launcher and firmware builder ([`qemu`]), and
//! the host end of the serial protocol ([`link`]).

pub mod link;
pub mod qemu;
