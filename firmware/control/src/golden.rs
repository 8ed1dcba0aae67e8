//! The exporter's golden vectors embedded beside the blob, re-run on `SelfTest`.

use runtime::blob::blob_hash;
use runtime::golden::GoldenSet;

/// Why embedded golden vectors were not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GoldenProblem {
    /// The bytes are not a valid golden-vector set.
    Invalid(runtime::golden::GoldenError),
    /// The set was exported for another blob (its `blob_hash` differs).
    OtherBlob { expected: u32, found: u32 },
}

/// Parse embedded golden vectors and check that they belong to `blob`. Empty bytes mean
/// "none embedded" (`Ok(None)`).
pub fn golden_for<'a>(
    golden: &'a [u8],
    blob: &[u8],
) -> Result<Option<GoldenSet<'a>>, GoldenProblem> {
    if golden.is_empty() {
        return Ok(None);
    }
    let set = GoldenSet::parse(golden).map_err(GoldenProblem::Invalid)?;
    let expected = blob_hash(blob);
    if set.blob_hash != expected {
        return Err(GoldenProblem::OtherBlob {
            expected,
            found: set.blob_hash,
        });
    }
    Ok(Some(set))
}
