//! The paper's numbers and the project's goal, as `shared/DESIGN.md` §5 quotes them.

/// One number from the paper.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRef {
    pub env_id: &'static str,
    /// Row label in the table and the plot's legend.
    pub label: &'static str,
    /// Our algorithm it compares with (for the colour).
    pub algo: &'static str,
    pub step: u64,
    pub mean: f64,
    pub std: Option<f64>,
}

const fn paper(
    env_id: &'static str,
    label: &'static str,
    algo: &'static str,
    step: u64,
    mean: f64,
    std: Option<f64>,
) -> PaperRef {
    PaperRef {
        env_id,
        label,
        algo,
        step,
        mean,
        std,
    }
}

pub(super) const SAC_V3: &str = "SAC v3 (Tianshou)";

/// The paper's numbers as `shared/DESIGN.md` §5 ("Targets from the paper") quotes them:
/// HalfCheetah-v5 at 1M env steps (FLAME-R, SAC, SDAC; mean ± std over seeds), and the
/// SAC reference curves (MuJoCo v3, Tianshou, 10 seeds) at 100k / 300k / 1M steps.
#[rustfmt::skip]
pub const PAPER: &[PaperRef] = &[
    paper("HalfCheetah-v5", "FLAME-R (paper)", "flame-r", 1_000_000, 11945.0, Some(461.0)),
    paper("HalfCheetah-v5", "SAC (paper)", "sac", 1_000_000, 11380.0, Some(475.0)),
    paper("HalfCheetah-v5", "SDAC (paper)", "sdac", 1_000_000, 11166.0, Some(164.0)),
    paper("HalfCheetah-v5", SAC_V3, "sac", 100_000, 6515.0, None),
    paper("HalfCheetah-v5", SAC_V3, "sac", 300_000, 9059.0, None),
    paper("HalfCheetah-v5", SAC_V3, "sac", 1_000_000, 12122.0, None),
    paper("Hopper-v5", SAC_V3, "sac", 100_000, 2613.0, None),
    paper("Hopper-v5", SAC_V3, "sac", 300_000, 3388.0, None),
    paper("Hopper-v5", SAC_V3, "sac", 1_000_000, 3532.0, None),
    paper("Walker2d-v5", SAC_V3, "sac", 100_000, 1305.0, None),
    paper("Walker2d-v5", SAC_V3, "sac", 300_000, 3387.0, None),
    paper("Walker2d-v5", SAC_V3, "sac", 1_000_000, 4961.0, None),
    paper("Ant-v5", SAC_V3, "sac", 100_000, 1020.0, None),
    paper("Ant-v5", SAC_V3, "sac", 300_000, 3561.0, None),
    paper("Ant-v5", SAC_V3, "sac", 1_000_000, 5714.0, None),
    paper("Humanoid-v5", SAC_V3, "sac", 100_000, 629.0, None),
    paper("Humanoid-v5", SAC_V3, "sac", 300_000, 2045.0, None),
    paper("Humanoid-v5", SAC_V3, "sac", 1_000_000, 5416.0, None),
];

/// Issue 7's goal: FLAME-M on HalfCheetah-v5 at 1M env steps at least the paper's FLAME-R
/// (DESIGN §5), with the int8 policy within [`GOAL_INT8_PCT`] of the float one.
pub const GOAL: (&str, &str, u64, f64) = ("HalfCheetah-v5", "flame-m", 1_000_000, 11945.0);
pub const GOAL_INT8_PCT: f64 = 2.0;
