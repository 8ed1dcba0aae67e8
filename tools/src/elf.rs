//! The lab bench's one ELF reader, on the `object` crate: a firmware image's allocated
//! sections with where they live (flash, RAM), symbol values, and the symbols of one
//! section (the defmt string table). `tools size`, `tools log` and `tools hil` read
//! firmware through it; a damaged or crafted file is an error, never a panic.

use anyhow::{anyhow, bail, Result};
use object::elf::{SHF_ALLOC, SHF_WRITE, SHT_NOBITS};
use object::read::elf::{ElfFile32, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

/// Where the Cortex-M memory map puts SRAM: sections at or above it occupy RAM.
const SRAM_BASE: u64 = 0x2000_0000;

/// One allocated section of a firmware image and the memory it takes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SectionSize {
    pub name: String,
    pub addr: u32,
    pub size: u32,
    /// Its contents are stored in flash (code, read-only data, .data's initial values).
    pub flash: bool,
    /// It occupies RAM at run time (.data, .bss, .uninit, the stack region).
    pub ram: bool,
}

/// Flash and RAM use of a firmware image, from its section headers. Totals are 64-bit:
/// a crafted file cannot overflow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfSizes {
    /// Bytes in flash: vector table, code, read-only data (the blob), .data's initializers.
    pub flash: u64,
    /// Bytes of statically allocated RAM: .data + .bss + .uninit (the stack comes on top).
    pub static_ram: u64,
    /// Of `flash`, the .rodata section (holds the embedded policy blob).
    pub rodata: u64,
}

impl ElfSizes {
    /// The totals of `sections` (as [`FirmwareElf::sections`] lists them).
    pub fn of(sections: &[SectionSize]) -> Self {
        let mut sizes = ElfSizes {
            flash: 0,
            static_ram: 0,
            rodata: 0,
        };
        for s in sections {
            let size = u64::from(s.size);
            if s.flash {
                sizes.flash += size;
            }
            if s.ram {
                sizes.static_ram += size;
            }
            if s.name == ".rodata" {
                sizes.rodata = size;
            }
        }
        sizes
    }
}

/// A parsed 32-bit little-endian ELF file (what thumbv7em firmware is).
pub struct FirmwareElf<'a> {
    file: ElfFile32<'a, Endianness>,
}

impl<'a> FirmwareElf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let file = ElfFile32::<Endianness>::parse(bytes)
            .map_err(|e| anyhow!("not a 32-bit ELF file: {e}"))?;
        if !file.is_little_endian() {
            bail!("a big-endian ELF file; Cortex-M firmware is little-endian");
        }
        Ok(Self { file })
    }

    /// The allocated, non-empty sections in header order. Contents go to flash (for RAM
    /// sections, the initial values of .data); addresses from `SRAM_BASE` up are RAM.
    pub fn sections(&self) -> Result<Vec<SectionSize>> {
        let endian = self.file.endian();
        let mut out = Vec::new();
        for section in self.file.sections() {
            let header = section.elf_section_header();
            let flags = header.sh_flags(endian);
            if flags & SHF_ALLOC != SHF_ALLOC || section.size() == 0 {
                continue;
            }
            let name = section
                .name()
                .map_err(|e| anyhow!("a section name is unreadable: {e}"))?;
            let ram = section.address() >= SRAM_BASE;
            let writable = flags & SHF_WRITE == SHF_WRITE;
            out.push(SectionSize {
                name: name.to_string(),
                addr: header.sh_addr(endian),
                size: header.sh_size(endian),
                flash: header.sh_type(endian) != SHT_NOBITS && (!ram || writable),
                ram,
            });
        }
        Ok(out)
    }

    /// Flash, static RAM and .rodata totals of [`FirmwareElf::sections`].
    pub fn sizes(&self) -> Result<ElfSizes> {
        Ok(ElfSizes::of(&self.sections()?))
    }

    /// The value of the symbol `name`, if the symbol table has it.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    }

    /// The 32-bit address the symbol `name` stands for, or an error naming it.
    pub fn address(&self, name: &str) -> Result<u32> {
        let value = self
            .symbol(name)
            .ok_or_else(|| anyhow!("the ELF has no {name} symbol"))?;
        u32::try_from(value).map_err(|_| anyhow!("{name} = {value:#x} is not a 32-bit address"))
    }

    /// (name, value) of every symbol defined in section `section` (none if the file has
    /// no such section).
    pub fn symbols_in(&self, section: &str) -> Vec<(&'a str, u64)> {
        let Some(index) = self.file.section_by_name(section).map(|s| s.index()) else {
            return Vec::new();
        };
        self.file
            .symbols()
            .filter(|s| s.section_index() == Some(index))
            .filter_map(|s| Some((s.name().ok()?, s.address())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF32 LE header (52 bytes) with `shnum` section headers at `shoff`.
    fn header(shoff: u32, shnum: u16, shstrndx: u16) -> Vec<u8> {
        let mut h = vec![0u8; 52];
        h[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
        h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[32..36].copy_from_slice(&shoff.to_le_bytes());
        h[40..42].copy_from_slice(&52u16.to_le_bytes());
        h[46..48].copy_from_slice(&40u16.to_le_bytes());
        h[48..50].copy_from_slice(&shnum.to_le_bytes());
        h[50..52].copy_from_slice(&shstrndx.to_le_bytes());
        h
    }

    /// A 40-byte section header.
    fn section(name: u32, kind: u32, flags: u64, offset: u32, size: u32, link: u32) -> Vec<u8> {
        let flags = flags as u32;
        [name, kind, flags, 0, offset, size, link, 0, 4, 16]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    #[test]
    fn non_elf_files_are_refused() {
        assert!(FirmwareElf::parse(b"not an elf").is_err());
        assert!(FirmwareElf::parse(b"\x7fELF\x02\x01").is_err());
        assert!(FirmwareElf::parse(&[]).is_err());
    }

    /// A symbol table whose offset + size passes 2^32, or that points past the end of
    /// the file, was an arithmetic-overflow panic in the hand-written reader: now it is
    /// an error that says what is wrong.
    #[test]
    fn crafted_symbol_tables_are_errors_not_panics() {
        let shstr = b"\0.shstrtab\0.symtab\0.strtab\0.defmt\0";
        for (offset, size) in [
            (0xFFFF_FFF0u32, 0x20u32),
            (0x100, 0xFFFF_FF00),
            (60, 1 << 20),
        ] {
            let mut elf = header(52, 4, 1);
            elf.extend(section(0, 0, 0, 0, 0, 0));
            elf.extend(section(1, 3, 0, 212, shstr.len() as u32, 0));
            elf.extend(section(11, 2, 0, offset, size, 3));
            elf.extend(section(19, 3, 0, 212, shstr.len() as u32, 0));
            elf.extend(shstr);
            let err = FirmwareElf::parse(&elf).err().expect("refused");
            assert!(
                err.to_string().contains("symbol table"),
                "{offset:#x}+{size:#x}: {err}"
            );
        }
    }

    /// Two allocated sections of 4 GiB − 1 each: the flash total does not wrap at 2^32.
    #[test]
    fn section_sizes_add_up_without_overflow() {
        let shstr = b"\0.shstrtab\0.text\0.rodata\0";
        let mut elf = header(52, 4, 1);
        elf.extend(section(0, 0, 0, 0, 0, 0));
        elf.extend(section(1, 3, 0, 212, shstr.len() as u32, 0));
        elf.extend(section(11, 1, SHF_ALLOC.0, 0, u32::MAX, 0));
        elf.extend(section(17, 1, SHF_ALLOC.0, 0, u32::MAX, 0));
        elf.extend(shstr);
        let sizes = FirmwareElf::parse(&elf).unwrap().sizes().unwrap();
        assert_eq!(sizes.flash, 2 * u64::from(u32::MAX));
        assert_eq!(sizes.rodata, u64::from(u32::MAX));
        assert_eq!(sizes.static_ram, 0);
    }
}
