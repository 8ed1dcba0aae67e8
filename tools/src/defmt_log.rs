//! The firmware's defmt log (DESIGN §7: defmt over semihosting on the QEMU board, over RTT
//! on a board), decoded with `defmt-decoder` and the string table in the firmware's ELF,
//! so QEMU runs, tests and `tools log` show readable lines without `defmt-print`.
//!
//! Every frame becomes one line, `LEVEL message` (`Table::decode_stream`); a frame that
//! does not decode becomes a `? …` line, never silently dropped.

use anyhow::{anyhow, Result};
use defmt_decoder::DecodeError;

use crate::elf::FirmwareElf;

/// The interned strings of a firmware ELF.
pub struct Table(defmt_decoder::Table);

impl Table {
    /// Read the table from a firmware ELF: an error if it is not one or has no `.defmt`
    /// strings.
    pub fn from_elf(elf: &[u8]) -> Result<Self> {
        // Our reader first: its errors say what is wrong with a damaged file.
        FirmwareElf::parse(elf)?;
        match defmt_decoder::Table::parse(elf) {
            Ok(Some(table)) => Ok(Self(table)),
            Ok(None) => Err(anyhow!("the ELF has no defmt strings (no .defmt section)")),
            Err(e) => Err(e.context("reading the ELF's defmt table")),
        }
    }

    /// Decode a whole log stream (the firmware's semihosting or RTT output) into one line
    /// per frame: `LEVEL message`. Frames that cannot be decoded become `? …` lines.
    pub fn decode_stream(&self, stream: &[u8]) -> Vec<String> {
        let mut decoder = self.0.new_stream_decoder();
        decoder.received(stream);
        let mut lines = Vec::new();
        loop {
            match decoder.decode() {
                Ok(frame) => lines.push(match frame.level() {
                    Some(level) => {
                        let level = level.as_str().to_ascii_uppercase();
                        format!("{level} {}", frame.display_message())
                    }
                    None => frame.display_message().to_string(),
                }),
                Err(DecodeError::UnexpectedEof) => return lines,
                // The stream decoder has dropped the frame up to its delimiter.
                Err(DecodeError::Malformed) => lines.push("? undecodable defmt frame".into()),
            }
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

    /// A string table as defmt-decoder keeps it, with `(index, tag, format)` entries.
    fn table(entries: &[(usize, &str, &str)]) -> Table {
        let entries: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|&(index, tag, format)| {
                let entry = serde_json::json!({
                    "string": {"tag": tag, "string": format},
                    "raw_symbol": format!("test-{index}"),
                });
                (index.to_string(), entry)
            })
            .collect();
        let table = serde_json::json!({
            "timestamp": null,
            "entries": entries,
            "bitflags": {},
            "encoding": "Rzcobs",
        });
        Table(serde_json::from_value(table).unwrap())
    }

    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0];
        for frame in frames {
            out.extend(rzcobs_encode(frame));
            out.push(0);
        }
        out
    }

    /// Typed parameters, a derived `Format` (a `{}` whose value brings its own format
    /// string: what the firmware's error types log), and frames that do not decode.
    #[test]
    fn frames_decode_to_lines() {
        let t = table(&[
            (3, "Info", "fw {=str}: crc {=u32:#010x}, {=u32} B, {=i16}"),
            (4, "Error", "PWM outputs stay at the safe duty: {}"),
            (
                5,
                "Derived",
                "ChannelCount {{ act_dim: {=u32}, channels: {=u32} }}",
            ),
        ]);
        let mut boot = 3u16.to_le_bytes().to_vec();
        boot.extend(4u32.to_le_bytes());
        boot.extend(b"0.1q");
        boot.extend(0x06be62eeu32.to_le_bytes());
        boot.extend(146644u32.to_le_bytes());
        boot.extend((-5i16).to_le_bytes());
        let mut refused = 4u16.to_le_bytes().to_vec();
        refused.extend(5u16.to_le_bytes());
        refused.extend(17u32.to_le_bytes());
        refused.extend(6u32.to_le_bytes());
        let unknown = 9u16.to_le_bytes().to_vec();
        let lines = t.decode_stream(&stream(&[boot, refused, unknown]));
        assert_eq!(
            lines,
            [
                "INFO fw 0.1q: crc 0x06be62ee, 146644 B, -5",
                "ERROR PWM outputs stay at the safe duty: ChannelCount { act_dim: 17, channels: 6 }",
                "? undecodable defmt frame",
            ]
        );
    }

    #[test]
    fn damaged_streams_give_question_marks_and_resynchronize() {
        let t = table(&[(3, "Warn", "frame dropped: {=u32}")]);
        let mut good = 3u16.to_le_bytes().to_vec();
        good.extend(7u32.to_le_bytes());
        let mut bytes = stream(&[good.clone()]);
        bytes.extend([0x13, 0x37, 0x00]); // line noise up to a delimiter
        bytes.extend(stream(&[good]));
        // An unfinished frame at the end waits for more data: no line.
        bytes.extend([0x05, 0x01]);
        let lines = t.decode_stream(&bytes);
        assert_eq!(
            lines,
            [
                "WARN frame dropped: 7",
                "? undecodable defmt frame",
                "WARN frame dropped: 7",
            ]
        );
    }

    #[test]
    fn files_without_a_defmt_table_are_refused() {
        let err = Table::from_elf(b"not an elf").err().expect("refused");
        assert!(err.to_string().contains("ELF"), "{err}");
    }
}
