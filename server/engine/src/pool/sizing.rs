//! The scaling policy, a pure function: (current size, utilization over the last
//! interval, config) -> the next size, if it should change.

use crate::AdvancedPoolConfig;
use crate::events::ScaleDirection;

/// One scaling step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingDecision {
    /// Up or down.
    pub direction: ScaleDirection,
    /// The size before.
    pub from: u32,
    /// The size after.
    pub to: u32,
    /// The utilization that prompted it (in-use plus waiting over size).
    pub utilization: f64,
    /// Why, in words.
    pub reason: String,
}

/// Decides the next size. `current` is the pool's size, `utilization` the last
/// second's mean of (connections in use + requests waiting) / size. The caller
/// calls this for a step down only after a whole `min_scale_interval_secs` in
/// which every second was at or below the low threshold (a stabilization window),
/// at most once per interval; growth is [`scale_up_now`]'s.
///
/// A size outside [min, max] (after a config change) is brought back inside it;
/// with dynamic sizing off the size is max_connections.
pub fn decide(
    current: u32,
    utilization: f64,
    config: &AdvancedPoolConfig,
) -> Option<ScalingDecision> {
    let min = config.min_connections.max(1);
    let max = config.max_connections.max(min);
    let step = |to: u32, reason: String| {
        (to != current).then_some(ScalingDecision {
            direction: if to > current {
                ScaleDirection::Up
            } else {
                ScaleDirection::Down
            },
            from: current,
            to,
            utilization,
            reason,
        })
    };
    if !config.enable_dynamic_sizing {
        return step(max, "dynamic sizing is off: size is max_connections".into());
    }
    if current < min {
        return step(min, format!("size below min_connections ({min})"));
    }
    if current > max {
        return step(max, format!("size above max_connections ({max})"));
    }
    if utilization >= config.load_threshold_high && current < max {
        let grown = (f64::from(current) * config.scale_up_factor).ceil() as u32;
        let to = grown.max(current + 1).min(max);
        return step(
            to,
            format!(
                "utilization {:.0}% >= load_threshold_high {:.0}%",
                utilization * 100.0,
                config.load_threshold_high * 100.0
            ),
        );
    }
    if utilization <= config.load_threshold_low && current > min {
        let shrunk = (f64::from(current) * config.scale_down_factor).floor() as u32;
        let to = shrunk.min(current - 1).max(min);
        return step(
            to,
            format!(
                "utilization {:.0}% <= load_threshold_low {:.0}%",
                utilization * 100.0,
                config.load_threshold_low * 100.0
            ),
        );
    }
    None
}

/// The fast path up: called with the last second's mean utilization (waiters
/// included) and the most callers that wanted a connection at once in it. At or
/// above `load_threshold_high`, the pool grows at once to the size that puts that
/// demand midway between the two thresholds (at least one `scale_up_factor` step,
/// at most `max_connections`); otherwise `None`. Scaling down keeps its
/// `min_scale_interval_secs` window ([`decide`]): up fast, down slow.
pub fn scale_up_now(
    current: u32,
    utilization: f64,
    demand: u32,
    config: &AdvancedPoolConfig,
) -> Option<ScalingDecision> {
    let max = config.max_connections.max(config.min_connections.max(1));
    if !config.enable_dynamic_sizing || current >= max || utilization < config.load_threshold_high {
        return None;
    }
    let aim = aim(config);
    let for_demand = need(demand, config);
    let stepped = ((f64::from(current) * config.scale_up_factor).ceil() as u32).max(current + 1);
    let to = for_demand.max(stepped).min(max);
    Some(ScalingDecision {
        direction: ScaleDirection::Up,
        from: current,
        to,
        utilization,
        reason: format!(
            "utilization {:.0}% >= load_threshold_high {:.0}% with {demand} callers wanting a \
             connection: grown at once toward {:.0}% utilization",
            utilization * 100.0,
            config.load_threshold_high * 100.0,
            aim * 100.0
        ),
    })
}

/// The utilization sizing aims at when it grows: midway between the thresholds.
fn aim(config: &AdvancedPoolConfig) -> f64 {
    (config.load_threshold_high + config.load_threshold_low) / 2.0
}

/// The size `demand` callers wanting a connection at once need: what puts them
/// midway between the two thresholds, within [min_connections, max_connections]
/// (max_connections when dynamic sizing is off). What a pool claims from its
/// server's connection budget.
pub fn need(demand: u32, config: &AdvancedPoolConfig) -> u32 {
    let max = config.max_connections.max(config.min_connections);
    if !config.enable_dynamic_sizing {
        return max;
    }
    let wanted = (f64::from(demand) / aim(config)).ceil().min(f64::from(max)) as u32;
    wanted.max(config.min_connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdvancedPoolConfig {
        AdvancedPoolConfig {
            min_connections: 2,
            max_connections: 10,
            load_threshold_high: 0.8,
            load_threshold_low: 0.3,
            scale_up_factor: 1.2,
            scale_down_factor: 0.9,
            ..AdvancedPoolConfig::default()
        }
    }

    fn to(current: u32, utilization: f64) -> Option<u32> {
        decide(current, utilization, &config()).map(|d| d.to)
    }

    #[test]
    fn the_fast_path_goes_straight_to_the_demand() {
        let c = AdvancedPoolConfig {
            max_connections: 40,
            ..config()
        };
        // 32 callers on 2 connections: 32 / 0.55 = 59, capped at 40.
        assert_eq!(scale_up_now(2, 16.0, 32, &c).map(|d| d.to), Some(40));
        // 10 callers on 10: 10 / 0.55 = 19.
        assert_eq!(scale_up_now(10, 1.0, 10, &c).map(|d| d.to), Some(19));
        // 8 callers: 8 / 0.55 = 15.
        assert_eq!(scale_up_now(10, 0.8, 8, &c).map(|d| d.to), Some(15));
        // At least one factor step even for a small demand.
        assert_eq!(scale_up_now(10, 0.8, 5, &c).map(|d| d.to), Some(12));
        assert_eq!(scale_up_now(10, 0.79, 8, &c), None, "below the threshold");
        assert_eq!(scale_up_now(40, 5.0, 200, &c), None, "at max");
        let off = AdvancedPoolConfig {
            enable_dynamic_sizing: false,
            ..c
        };
        assert_eq!(scale_up_now(2, 16.0, 32, &off), None);
    }

    #[test]
    fn grows_at_the_high_threshold_and_not_below_it() {
        assert_eq!(to(5, 0.8), Some(6));
        assert_eq!(to(5, 0.7999), None);
        // 1.2 x 5 = 6; 1.2 x 9 = 10.8 -> 11, clamped to max.
        assert_eq!(to(9, 1.0), Some(10));
        assert_eq!(to(10, 5.0), None, "at max it stays");
    }

    #[test]
    fn steps_are_at_least_one_connection() {
        // 1.2 x 2 = 2.4 -> ceil 3; 0.9 x 3 = 2.7 -> floor 2, and 0.9 x 4 = 3.6 -> 3.
        assert_eq!(to(2, 0.9), Some(3));
        assert_eq!(to(3, 0.1), Some(2));
        assert_eq!(to(4, 0.1), Some(3));
        let gentle = AdvancedPoolConfig {
            scale_up_factor: 1.01,
            scale_down_factor: 0.99,
            ..config()
        };
        assert_eq!(decide(5, 0.9, &gentle).map(|d| d.to), Some(6));
        assert_eq!(decide(5, 0.1, &gentle).map(|d| d.to), Some(4));
    }

    #[test]
    fn shrinks_at_the_low_threshold_and_stops_at_min() {
        assert_eq!(to(5, 0.3), Some(4));
        assert_eq!(to(5, 0.3001), None);
        assert_eq!(to(2, 0.0), None, "at min it stays");
    }

    #[test]
    fn waiters_push_utilization_above_one() {
        let d = decide(4, 2.5, &config()).unwrap();
        assert_eq!((d.direction, d.from, d.to), (ScaleDirection::Up, 4, 5));
        assert!(d.reason.contains("250%"), "{}", d.reason);
    }

    #[test]
    fn out_of_range_sizes_are_clamped_and_disabled_sizing_means_max() {
        assert_eq!(to(1, 0.5), Some(2));
        assert_eq!(to(12, 0.5), Some(10));
        let off = AdvancedPoolConfig {
            enable_dynamic_sizing: false,
            ..config()
        };
        assert_eq!(decide(4, 0.0, &off).map(|d| d.to), Some(10));
        assert_eq!(decide(10, 0.0, &off), None);
        let zero_min = AdvancedPoolConfig {
            min_connections: 0,
            ..config()
        };
        assert_eq!(
            decide(1, 0.0, &zero_min),
            None,
            "never below one connection"
        );
    }
}
