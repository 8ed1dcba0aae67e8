//! A decoder for the firmware's defmt log stream (DESIGN §7: defmt over semihosting on the
//! QEMU board), so QEMU runs, tests and `tools log` show readable lines without the
//! `defmt-print` binary.
//!
//! It covers what the firmware logs: frames encoded with rzCOBS (defmt's default
//! encoding), no timestamp, format strings whose parameters all carry a type
//! (`{=u32}`, `{=usize:#x}`, `{=str}`, …), with the hints `x`, `X`, `b`, `o`, `#` and a
//! zero-padded width. Anything else (a `{}` with a `Format` impl, a timestamp) is shown as
//! an undecodable frame with its format string, never silently dropped; `defmt-print -e
//! ELF` decodes the same stream in full.
//!
//! The interned format strings come from the ELF: each is a symbol in the `.defmt`
//! section whose name is a JSON record (`{"package":…,"tag":"defmt_info","data":"…"}`)
//! and whose value is the index a log frame starts with (u16, little-endian).

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::elf::FirmwareElf;

/// One interned log format string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interned {
    pub package: String,
    /// `defmt_error`, `defmt_warn`, `defmt_info`, `defmt_debug`, `defmt_trace`,
    /// `defmt_println`, or a tag of an internal string.
    pub tag: String,
    pub data: String,
}

impl Interned {
    /// The log level, for log frames (`None` for internal strings).
    pub fn level(&self) -> Option<&'static str> {
        Some(match self.tag.as_str() {
            "defmt_error" => "ERROR",
            "defmt_warn" => "WARN",
            "defmt_info" => "INFO",
            "defmt_debug" => "DEBUG",
            "defmt_trace" => "TRACE",
            "defmt_println" => "",
            _ => return None,
        })
    }
}

/// The interned strings of a firmware ELF, by index.
#[derive(Debug, Clone, Default)]
pub struct Table {
    strings: HashMap<u16, Interned>,
}

impl Table {
    /// Read the table from a firmware ELF: an error if it is not one or has no `.defmt`
    /// strings.
    pub fn from_elf(elf: &[u8]) -> Result<Self> {
        let mut strings = HashMap::new();
        for (name, value) in FirmwareElf::parse(elf)?.symbols_in(".defmt") {
            if !name.starts_with('{') {
                continue;
            }
            if let (Ok(entry), Ok(index)) =
                (serde_json::from_str::<Interned>(name), u16::try_from(value))
            {
                strings.insert(index, entry);
            }
        }
        if strings.is_empty() {
            bail!("the ELF has no defmt strings (no .defmt section symbols)");
        }
        Ok(Self { strings })
    }

    pub fn get(&self, index: u16) -> Option<&Interned> {
        self.strings.get(&index)
    }
}

/// Undo defmt's rzCOBS encoding of one frame (without its 0x00 delimiter). The result may
/// carry trailing zero padding, which frame decoding ignores.
pub fn rzcobs_decode(encoded: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len() * 2);
    let mut data = encoded.iter().rev().copied();
    while let Some(x) = data.next() {
        match x {
            0 => return None,
            0x01..=0x7F => {
                for i in 0..7 {
                    if x & (1 << (6 - i)) == 0 {
                        out.push(data.next()?);
                    } else {
                        out.push(0);
                    }
                }
            }
            0x80..=0xFE => {
                out.push(0);
                for _ in 0..(x & 0x7F) + 7 {
                    out.push(data.next()?);
                }
            }
            0xFF => {
                for _ in 0..134 {
                    out.push(data.next()?);
                }
            }
        }
    }
    out.reverse();
    Some(out)
}

/// Decode a whole log stream (the firmware's semihosting output) into one line per frame:
/// `LEVEL message`. Frames that cannot be decoded become `? <reason>` lines.
pub fn decode_stream(table: &Table, stream: &[u8]) -> Vec<String> {
    stream
        .split(|&b| b == 0)
        .filter(|frame| !frame.is_empty())
        .map(|frame| match decode_frame(table, frame) {
            Ok(("", text)) => text,
            Ok((level, text)) => format!("{level} {text}"),
            Err(why) => format!("? undecodable defmt frame: {why}"),
        })
        .collect()
}

/// Decode one rzCOBS-encoded frame into its level and text.
pub fn decode_frame(table: &Table, encoded: &[u8]) -> Result<(&'static str, String), String> {
    let raw = rzcobs_decode(encoded).ok_or("bad rzCOBS encoding")?;
    let mut r = Reader(&raw);
    let index = u16::from_le_bytes(r.take::<2>().ok_or("frame too short")?);
    let interned = table
        .get(index)
        .ok_or_else(|| format!("unknown string index {index}"))?;
    let level = interned
        .level()
        .ok_or_else(|| format!("index {index} is not a log message ({})", interned.tag))?;
    let text = format_message(&interned.data, &mut r)
        .map_err(|why| format!("{why} in \"{}\"", interned.data))?;
    Ok((level, text))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

/// Expand `format` with the arguments that follow in `r`.
fn format_message(format: &str, r: &mut Reader<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = format;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("unmatched `}`".into());
        }
        let end = tail.find('}').ok_or("unclosed `{`")?;
        let param = &tail[1..end];
        out.push_str(&format_param(param, r)?);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One `{=type[:hint]}` parameter.
fn format_param(param: &str, r: &mut Reader<'_>) -> Result<String, String> {
    let spec = param
        .strip_prefix('=')
        .ok_or_else(|| format!("parameter `{{{param}}}` has no type (not supported here)"))?;
    let (ty, hint) = spec.split_once(':').unwrap_or((spec, ""));
    let short = || format!("arguments end before `{{{param}}}`");
    macro_rules! le {
        ($t:ty, $n:literal) => {
            <$t>::from_le_bytes(r.take::<$n>().ok_or_else(short)?)
        };
    }
    let value = match ty {
        "u8" => Int::U(le!(u8, 1) as u128),
        "u16" => Int::U(le!(u16, 2) as u128),
        "u32" | "usize" => Int::U(le!(u32, 4) as u128),
        "u64" => Int::U(le!(u64, 8) as u128),
        "i8" => Int::I(le!(i8, 1) as i128),
        "i16" => Int::I(le!(i16, 2) as i128),
        "i32" | "isize" => Int::I(le!(i32, 4) as i128),
        "i64" => Int::I(le!(i64, 8) as i128),
        "bool" => return Ok((le!(u8, 1) != 0).to_string()),
        "f32" => return Ok(f32::from_bits(le!(u32, 4)).to_string()),
        "char" => {
            return Ok(char::from_u32(le!(u32, 4))
                .unwrap_or(char::REPLACEMENT_CHARACTER)
                .to_string())
        }
        "str" => {
            let len = le!(u32, 4) as usize;
            let bytes = r.bytes(len).ok_or_else(short)?;
            return Ok(String::from_utf8_lossy(bytes).into_owned());
        }
        other => return Err(format!("type `{other}` is not supported here")),
    };
    Ok(value.format(hint))
}

enum Int {
    U(u128),
    I(i128),
}

impl Int {
    /// Rust-style integer formatting for the hints defmt accepts: `[#][0][width](x|X|b|o)`.
    fn format(&self, hint: &str) -> String {
        let alternate = hint.starts_with('#');
        let hint = hint.trim_start_matches('#');
        let radix = hint.chars().last().filter(|c| "xXbo".contains(*c));
        let width_text = radix.map_or(hint, |_| &hint[..hint.len() - 1]);
        let zero_pad = width_text.starts_with('0');
        let width: usize = width_text.parse().unwrap_or(0);
        let (negative, magnitude) = match *self {
            Int::U(u) => (false, u),
            Int::I(i) => (i < 0, i.unsigned_abs()),
        };
        let (prefix, digits) = match radix {
            Some('x') => ("0x", format!("{magnitude:x}")),
            Some('X') => ("0x", format!("{magnitude:X}")),
            Some('b') => ("0b", format!("{magnitude:b}")),
            Some('o') => ("0o", format!("{magnitude:o}")),
            _ => ("", magnitude.to_string()),
        };
        let sign = if negative { "-" } else { "" };
        let prefix = if alternate { prefix } else { "" };
        let used = sign.len() + prefix.len() + digits.len();
        let pad = width.saturating_sub(used);
        if zero_pad {
            format!("{sign}{prefix}{}{digits}", "0".repeat(pad))
        } else {
            format!("{}{sign}{prefix}{digits}", " ".repeat(pad))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// defmt's encoder (defmt 1.x `encoding/rzcobs.rs`), to produce test frames.
    fn rzcobs_encode(data: &[u8]) -> Vec<u8> {
        let (mut out, mut run, mut zeros) = (Vec::new(), 0u8, 0u8);
        for &byte in data {
            if run < 7 {
                if byte == 0 {
                    zeros |= 1 << run;
                } else {
                    out.push(byte);
                }
                run += 1;
                if run == 7 && zeros != 0 {
                    out.push(zeros);
                    run = 0;
                    zeros = 0;
                }
            } else if byte == 0 {
                out.push((run - 7) | 0x80);
                run = 0;
                zeros = 0;
            } else {
                out.push(byte);
                run += 1;
                if run == 134 {
                    out.push(0xFF);
                    run = 0;
                    zeros = 0;
                }
            }
        }
        match run {
            0 => {}
            1..=6 => out.push((zeros | (0xFF << run)) & 0x7F),
            _ => out.push((run - 7) | 0x80),
        }
        out
    }

    #[test]
    fn rzcobs_round_trips() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![1],
            vec![0, 1],
            vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x00],
            vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x00, 0x08],
            (0..300).map(|i| (i % 7) as u8).collect(),
            (1..=255).cycle().take(400).collect(),
        ];
        for data in cases {
            let decoded = rzcobs_decode(&rzcobs_encode(&data)).unwrap();
            assert!(decoded.len() >= data.len(), "{data:?}");
            assert_eq!(&decoded[..data.len()], &data[..], "{data:?}");
            assert!(decoded[data.len()..].iter().all(|&b| b == 0));
        }
        assert_eq!(rzcobs_decode(&[0x80]), None, "runs past the start");
    }

    fn table(entries: &[(u16, &str, &str)]) -> Table {
        Table {
            strings: entries
                .iter()
                .map(|&(i, tag, data)| {
                    (
                        i,
                        Interned {
                            package: "p".into(),
                            tag: tag.into(),
                            data: data.into(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn frames_decode_to_lines() {
        let t = table(&[
            (
                3,
                "defmt_info",
                "fw {=str}: crc {=u32:#010x}, {=usize} B, {{ok}} {=i16} {=u8:#x}",
            ),
            (4, "defmt_error", "bad {}"),
            (5, "defmt_prim", "{=u8}"),
        ]);
        let mut frame = 3u16.to_le_bytes().to_vec();
        frame.extend(4u32.to_le_bytes());
        frame.extend(b"0.1q");
        frame.extend(0x06be62eeu32.to_le_bytes());
        frame.extend(146644u32.to_le_bytes());
        frame.extend((-5i16).to_le_bytes());
        frame.push(0);
        let mut stream = vec![0];
        stream.extend(rzcobs_encode(&frame));
        stream.push(0);
        stream.extend(rzcobs_encode(&4u16.to_le_bytes()));
        stream.push(0);
        stream.extend(rzcobs_encode(&5u16.to_le_bytes()));
        stream.push(0);
        stream.extend(rzcobs_encode(&9u16.to_le_bytes()));
        stream.push(0);
        let lines = decode_stream(&t, &stream);
        assert_eq!(
            lines[0],
            "INFO fw 0.1q: crc 0x06be62ee, 146644 B, {ok} -5 0x0"
        );
        assert!(
            lines[1].starts_with("? ") && lines[1].contains("bad {}"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("not a log message"), "{}", lines[2]);
        assert!(lines[3].contains("unknown string index 9"), "{}", lines[3]);
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn integer_hints() {
        assert_eq!(Int::U(255).format(""), "255");
        assert_eq!(Int::U(255).format("x"), "ff");
        assert_eq!(Int::U(255).format("#X"), "0xFF");
        assert_eq!(Int::U(5).format("#010b"), "0b00000101");
        assert_eq!(Int::I(-42).format("5"), "  -42");
        assert_eq!(Int::U(7).format("#o"), "0o7");
    }
}
