//! What a board provides to the controller: the clock that prices an action, the
//! actuator that outputs it, and fixed settings.

use runtime::wire::CostUnit;

/// A free-running tick counter that prices each action.
pub trait CostClock {
    /// What one tick is, reported to the host in `Info`.
    const UNIT: CostUnit;
    /// The current count. It may wrap: the controller only takes wrapping differences,
    /// so intervals up to 2^32 − 1 ticks are measured correctly.
    fn now(&mut self) -> u32;
}

/// Where actions go. The controller calls exactly one of the two methods whenever the
/// commanded output changes.
pub trait Actuator {
    /// Output this action (env units, within the policy's bounds).
    fn apply(&mut self, action: &[f32]);
    /// Output the safe action: zero on every channel (no torque), the state at boot, after
    /// `Reset`, after a rejected observation, after link silence, and forever when the
    /// embedded policy is invalid.
    fn safe(&mut self);
}

/// An actuator for targets with nothing to drive (QEMU): the commanded output is still
/// tracked by [`Controller::output`](crate::Controller::output).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoActuator;

impl Actuator for NoActuator {
    fn apply(&mut self, _action: &[f32]) {}
    fn safe(&mut self) {}
}

/// Fixed settings chosen by the board.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// Clock ticks without a valid `Act` after which an active output falls back to the
    /// safe action (DESIGN §8). Must be below 2^31 so wrapping differences stay exact.
    pub watchdog_ticks: u32,
    /// Reported in `Info`; truncated to 16 bytes.
    pub firmware_version: &'a str,
}
