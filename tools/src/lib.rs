//! Host utilities around the firmware: QEMU launcher and firmware builder ([`qemu`]), the
//! host end of the serial protocol ([`link`]), the host-in-the-loop runner ([`hil`]) and
//! the blob inspector ([`inspect`]), the firmware memory report ([`size`]), the
//! decoder of the firmware's defmt log ([`defmt_log`]) and the ELF reader they share
//! ([`elf`]).

pub mod defmt_log;
pub mod elf;
pub mod hil;
pub mod inspect;
pub mod link;
pub mod qemu;
pub mod size;
