//! The FLAME policy runtime: evaluates an int8 policy blob without heap, bit-exactly the
//! same on x86-64 and on a Cortex-M4F.
//!
//! This crate is also the project's "interface control document": the blob format
//! ([`blob`]) and the host<->device messages ([`wire`]) are defined here once and used by
//! the trainer (writer), the firmware (reader) and the host tools.
//!
//! Numerics follow the TFLite / CMSIS-NN int8 scheme (see [`quant`] and [`kernels`]):
//! symmetric per-channel int8 weights, asymmetric per-tensor int8 activations, int32
//! accumulators, fixed-point requantization with "double rounding", and activation
//! functions as 256-entry lookup tables. Float is used only at the two ends (observation
//! normalization and action dequantization), with a fixed operation order and no FMA.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod blob;
pub mod golden;
pub mod kernels;
pub mod noise;
pub mod policy;
pub mod quant;
pub mod wire;

/// Largest observation vector the runtime accepts (Humanoid-v5 has 348).
pub const MAX_OBS: usize = 384;
/// Largest action vector (Humanoid-v5 has 17).
pub const MAX_ACT: usize = 32;
/// Largest layer width, input or output, in elements.
pub const MAX_WIDTH: usize = 512;
/// Largest number of hidden layers.
pub const MAX_HIDDEN_LAYERS: usize = 6;
/// Largest number of flow steps per action (FLAME-R uses 20).
pub const MAX_NFE: usize = 32;

pub use blob::{BlobError, PolicyBlob};
pub use policy::{ActError, NoiseMode, Policy, Scratch};
