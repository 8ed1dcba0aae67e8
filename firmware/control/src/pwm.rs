//! An [`Actuator`] on PWM outputs through embedded-hal 1.0's `SetDutyCycle`: one channel
//! per action dimension, any HAL's timer channels (or a motor driver's) behind the trait.
//!
//! An action `a` in the policy's bounds `[low, high]` maps linearly to a duty cycle:
//! `low ↦ 0`, `high ↦ max_duty_cycle()`, clamped to that range. The safe action is one
//! configured duty fraction on every channel (for a symmetric torque range driven through
//! a signed driver, ½: zero torque). Until the bounds are set, and whenever they were
//! refused, every output stays at the safe duty: a board whose channels do not match the
//! embedded policy never moves.

use embedded_hal::pwm::SetDutyCycle;
use runtime::blob::f32_at;
use runtime::{Policy, MAX_ACT};

use crate::Actuator;

/// Why [`PwmActuator::set_bounds`] refused a policy's action bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BoundsError {
    /// The policy has `act_dim` action dimensions, the board `channels` PWM channels.
    ChannelCount { act_dim: usize, channels: usize },
    /// Dimension `index` has no finite, increasing range.
    Range { index: usize },
}

/// `N` PWM channels driven by actions of `N` dimensions. `P` is one channel type, or
/// `dyn SetDutyCycle<Error = E>` for channels of different timers.
pub struct PwmActuator<'a, P: SetDutyCycle + ?Sized, const N: usize> {
    channels: [&'a mut P; N],
    /// Per channel: duty = (a − low) · scale, with scale = max duty / (high − low).
    low: [f32; N],
    scale: [f32; N],
    configured: bool,
    /// The safe output as a fraction of each channel's maximum duty, in [0, 1].
    safe_fraction: f32,
    /// Duty-cycle writes the driver refused (a HAL error), for diagnostics.
    faults: u32,
}

impl<'a, P: SetDutyCycle + ?Sized, const N: usize> PwmActuator<'a, P, N> {
    /// Drives every channel to `safe_fraction` of its maximum duty (clamped to [0, 1]; a
    /// NaN is 0) and keeps it there until [`PwmActuator::set_bounds`] succeeds.
    pub fn new(channels: [&'a mut P; N], safe_fraction: f32) -> Self {
        let safe_fraction = if safe_fraction.is_nan() {
            0.0
        } else {
            safe_fraction.clamp(0.0, 1.0)
        };
        let mut actuator = Self {
            channels,
            low: [0.0; N],
            scale: [0.0; N],
            configured: false,
            safe_fraction,
            faults: 0,
        };
        actuator.safe();
        actuator
    }

    /// Map actions to duty cycles with the policy's action bounds, one per channel.
    pub fn set_bounds(&mut self, low: &[f32], high: &[f32]) -> Result<(), BoundsError> {
        self.configured = false;
        if low.len() != self.channels.len() || high.len() != self.channels.len() {
            return Err(BoundsError::ChannelCount {
                act_dim: low.len(),
                channels: self.channels.len(),
            });
        }
        for (index, ((&lo, &hi), ch)) in low.iter().zip(high).zip(self.channels.iter()).enumerate()
        {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(BoundsError::Range { index });
            }
            self.low[index] = lo;
            self.scale[index] = f32::from(ch.max_duty_cycle()) / (hi - lo);
        }
        self.configured = true;
        Ok(())
    }

    /// [`PwmActuator::set_bounds`] with the action bounds stored in `policy`'s blob.
    pub fn set_policy_bounds(&mut self, policy: &Policy<'_>) -> Result<(), BoundsError> {
        let meta = &policy.blob().meta;
        let act = policy.act_dim().min(MAX_ACT);
        let (mut low, mut high) = ([0f32; MAX_ACT], [0f32; MAX_ACT]);
        for i in 0..act {
            low[i] = f32_at(meta.action_low, i);
            high[i] = f32_at(meta.action_high, i);
        }
        self.set_bounds(&low[..act], &high[..act])
    }

    /// Duty-cycle writes the driver refused so far.
    pub fn faults(&self) -> u32 {
        self.faults
    }

    fn set(&mut self, index: usize, duty: u16) {
        if self.channels[index].set_duty_cycle(duty).is_err() {
            self.faults = self.faults.wrapping_add(1);
        }
    }
}

impl<P: SetDutyCycle + ?Sized, const N: usize> Actuator for PwmActuator<'_, P, N> {
    fn apply(&mut self, action: &[f32]) {
        if !self.configured || action.len() != self.channels.len() {
            return self.safe();
        }
        for (index, &a) in action.iter().enumerate() {
            let max = f32::from(self.channels[index].max_duty_cycle());
            let duty = (a - self.low[index]) * self.scale[index];
            // `as u16` saturates, and a NaN action would become 0: clamp first, and send
            // a NaN to the safe duty instead.
            let duty = if duty.is_nan() {
                self.safe_fraction * max
            } else {
                duty.clamp(0.0, max)
            };
            self.set(index, (duty + 0.5) as u16);
        }
    }

    fn safe(&mut self) {
        for index in 0..self.channels.len() {
            let max = f32::from(self.channels[index].max_duty_cycle());
            self.set(index, (self.safe_fraction * max + 0.5) as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;

    /// A channel that records its duty.
    struct Channel {
        max: u16,
        duty: u16,
    }

    impl embedded_hal::pwm::ErrorType for Channel {
        type Error = Infallible;
    }

    impl SetDutyCycle for Channel {
        fn max_duty_cycle(&self) -> u16 {
            self.max
        }
        fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Infallible> {
            assert!(duty <= self.max, "duty {duty} above {}", self.max);
            self.duty = duty;
            Ok(())
        }
    }

    /// A driver that refuses every write.
    struct Broken;

    impl embedded_hal::pwm::ErrorType for Broken {
        type Error = embedded_hal::pwm::ErrorKind;
    }

    impl SetDutyCycle for Broken {
        fn max_duty_cycle(&self) -> u16 {
            100
        }
        fn set_duty_cycle(&mut self, _duty: u16) -> Result<(), Self::Error> {
            Err(embedded_hal::pwm::ErrorKind::Other)
        }
    }

    fn channel(max: u16) -> Channel {
        Channel { max, duty: 7 }
    }

    /// The duties after `drive` ran on a fresh actuator over channels of `max` duties.
    fn driven(
        max: [u16; 2],
        safe_fraction: f32,
        drive: impl FnOnce(&mut PwmActuator<'_, Channel, 2>),
    ) -> [u16; 2] {
        let (mut a, mut b) = (channel(max[0]), channel(max[1]));
        drive(&mut PwmActuator::new([&mut a, &mut b], safe_fraction));
        [a.duty, b.duty]
    }

    #[test]
    fn actions_map_linearly_onto_the_duty_range_and_clamp() {
        let cases: [([f32; 2], [u16; 2]); 5] = [
            ([-1.0, -0.4], [0, 0]),
            ([1.0, 0.4], [1000, 255]),
            ([0.0, 0.0], [500, 128]),
            ([0.5, 0.2], [750, 191]),
            ([3.0, -9.0], [1000, 0]),
        ];
        for (action, expect) in cases {
            let duties = driven([1000, 255], 0.5, |pwm| {
                pwm.set_bounds(&[-1.0, -0.4], &[1.0, 0.4]).unwrap();
                pwm.apply(&action);
            });
            assert_eq!(duties, expect, "{action:?}");
        }
    }

    #[test]
    fn the_safe_duty_holds_until_bounds_are_accepted() {
        // Construction drives the safe duty; without bounds, actions are not applied.
        assert_eq!(driven([1000, 100], 0.25, |_| {}), [250, 25]);
        assert_eq!(
            driven([1000, 100], 0.25, |pwm| pwm.apply(&[1.0, 1.0])),
            [250, 25]
        );
        // A wrong channel count and empty or non-finite ranges are refused and keep it.
        let refused = driven([1000, 100], 0.25, |pwm| {
            assert_eq!(
                pwm.set_bounds(&[-1.0; 3], &[1.0; 3]),
                Err(BoundsError::ChannelCount {
                    act_dim: 3,
                    channels: 2
                })
            );
            assert_eq!(
                pwm.set_bounds(&[-1.0, 1.0], &[1.0, 1.0]),
                Err(BoundsError::Range { index: 1 })
            );
            assert_eq!(
                pwm.set_bounds(&[f32::NAN, -1.0], &[1.0, 1.0]),
                Err(BoundsError::Range { index: 0 })
            );
            pwm.apply(&[1.0, 1.0]);
        });
        assert_eq!(refused, [250, 25]);
        // A refused update after good bounds drops back to safe too.
        let dropped = driven([1000, 100], 0.25, |pwm| {
            pwm.set_bounds(&[-1.0, -1.0], &[1.0, 1.0]).unwrap();
            assert!(pwm.set_bounds(&[-1.0], &[1.0]).is_err());
            pwm.apply(&[1.0, 1.0]);
        });
        assert_eq!(dropped, [250, 25]);
        // A NaN dimension gets the safe duty; the other is applied.
        let nan = driven([1000, 100], 0.25, |pwm| {
            pwm.set_bounds(&[-1.0, -1.0], &[1.0, 1.0]).unwrap();
            pwm.apply(&[1.0, f32::NAN]);
        });
        assert_eq!(nan, [1000, 25]);
        // An action of another length is not applied; `safe` restores the safe duty.
        let other_length = driven([1000, 100], 0.25, |pwm| {
            pwm.set_bounds(&[-1.0, -1.0], &[1.0, 1.0]).unwrap();
            pwm.apply(&[1.0, 1.0]);
            pwm.apply(&[1.0]);
        });
        assert_eq!(other_length, [250, 25]);
        let safe = driven([1000, 100], 0.25, |pwm| {
            pwm.set_bounds(&[-1.0, -1.0], &[1.0, 1.0]).unwrap();
            pwm.apply(&[1.0, 1.0]);
            pwm.safe();
        });
        assert_eq!(safe, [250, 25]);
    }

    #[test]
    fn driver_errors_are_counted() {
        let mut broken = Broken;
        let mut pwm = PwmActuator::new([&mut broken], 0.5);
        assert_eq!(pwm.faults(), 1);
        pwm.set_bounds(&[-1.0], &[1.0]).unwrap();
        pwm.apply(&[0.3]);
        assert_eq!(pwm.faults(), 2);
    }

    #[test]
    fn safe_fraction_is_clamped() {
        assert_eq!(driven([200, 200], 7.0, |_| {}), [200, 200]);
        assert_eq!(driven([200, 200], -1.0, |_| {}), [0, 0]);
        assert_eq!(driven([200, 200], f32::NAN, |_| {}), [0, 0]);
    }

    /// Channels of different types behind `dyn SetDutyCycle`, as a board with several
    /// timers builds them.
    #[test]
    fn mixed_channel_types_share_one_actuator() {
        struct Other(Channel);
        impl embedded_hal::pwm::ErrorType for Other {
            type Error = Infallible;
        }
        impl SetDutyCycle for Other {
            fn max_duty_cycle(&self) -> u16 {
                self.0.max
            }
            fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Infallible> {
                self.0.set_duty_cycle(duty)
            }
        }
        let (mut a, mut b) = (channel(100), Other(channel(400)));
        {
            let channels: [&mut dyn SetDutyCycle<Error = Infallible>; 2] = [&mut a, &mut b];
            let mut pwm = PwmActuator::new(channels, 0.5);
            pwm.set_bounds(&[0.0, 0.0], &[1.0, 2.0]).unwrap();
            pwm.apply(&[0.25, 0.5]);
        }
        assert_eq!([a.duty, b.0.duty], [25, 100]);
    }
}
