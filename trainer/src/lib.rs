//! The FLAME trainer: replay, networks and agents (tch), the training loop, and the int8
//! exporter that writes `runtime` blobs. The MuJoCo tasks, the episode loop, the run
//! directory and the float reference policy live in the tch-free `sim` crate, which the
//! lab bench (`tools`) shares.

pub mod agents;
pub mod critic;
pub mod cuda_graph;
pub mod export;
pub mod flame;
pub mod init;
pub mod mlp;
pub mod plot;
pub mod policy_net;
pub mod quantize;
pub mod replay;
pub mod results;
pub mod threads;
pub mod train;

/// Devices libtorch can use here, e.g. `["cpu", "cuda:0"]`.
pub fn devices() -> Vec<String> {
    let mut out = vec!["cpu".to_string()];
    if tch::Cuda::is_available() {
        out.extend((0..tch::Cuda::device_count()).map(|i| format!("cuda:{i}")));
    }
    out
}
