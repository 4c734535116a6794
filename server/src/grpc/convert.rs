//! Conversions between engine types and `poolplane.v1` messages.

use std::time::SystemTime;

use poolplane::pool::ScaleDirection;
use poolplane::{
    AdvancedPoolConfig, Grade, HealthStatus, LoadTestProgress, LoadTestResults, MetricsPoint,
    OptimizationReport, PerformanceSummary, PoolEvent, PoolEventKind, PoolInfo, PoolStats,
    ScalingRecord, Severity, StatementCacheStats,
};
use poolplane_proto::v1;

/// A field at fault in a request, and why.
pub type Violation = (String, String);

/// A `google.protobuf.Timestamp` from a system time.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// A live pool as the API shows it.
pub fn pool_to_proto(info: &PoolInfo) -> v1::Pool {
    v1::Pool {
        name: info.name.clone(),
        database_url: info.database_url.clone(),
        created_at: Some(timestamp(info.created_at)),
        updated_at: Some(timestamp(info.updated_at)),
        config: Some(config_to_proto(&info.config)),
        state: if info.is_healthy {
            v1::PoolState::Healthy
        } else {
            v1::PoolState::Unhealthy
        } as i32,
        security: Some(security_to_proto(&info.security)),
    }
}

/// How a pool's connections are secured.
pub fn security_to_proto(s: &poolplane::pool::ConnectionSecurity) -> v1::ConnectionSecurity {
    v1::ConnectionSecurity {
        tls_connections: s.tls_connections,
        plaintext_connections: s.plaintext_connections,
        tls_version: s.tls_version.clone(),
        tls_cipher: s.tls_cipher.clone(),
        hosts: s
            .hosts
            .iter()
            .map(|(host, connections)| v1::HostConnections {
                host: host.clone(),
                connections: *connections,
            })
            .collect(),
    }
}

/// `base` with the fields set in `patch` (and first the preset, if one is named).
/// An unknown preset is a violation of `config.preset`.
pub fn apply_config(
    base: AdvancedPoolConfig,
    patch: Option<&v1::PoolConfig>,
) -> Result<AdvancedPoolConfig, Vec<Violation>> {
    let Some(p) = patch else {
        return Ok(base);
    };
    let mut c = match &p.preset {
        Some(name) => AdvancedPoolConfig::preset(name).ok_or_else(|| {
            vec![(
                "config.preset".to_owned(),
                format!("unknown preset `{name}`: use default, production or development"),
            )]
        })?,
        None => base,
    };
    macro_rules! set {
        ($($field:ident),* $(,)?) => {
            $(if let Some(value) = p.$field.clone() { c.$field = value; })*
        };
    }
    set!(
        max_connections,
        min_connections,
        acquire_timeout_secs,
        idle_timeout_secs,
        max_lifetime_secs,
        statement_cache_capacity,
        enable_prepared_statements,
        health_check_interval_secs,
        health_check_timeout_secs,
        max_failed_health_checks,
        enable_dynamic_sizing,
        load_threshold_high,
        load_threshold_low,
        scale_up_factor,
        scale_down_factor,
        min_scale_interval_secs,
        enable_connection_validation,
        validation_query,
        enable_connection_recycling,
        recycle_threshold_queries,
        validation_idle_threshold_ms,
        max_client_connections,
        client_idle_timeout_secs,
        idle_in_transaction_timeout_secs,
        query_timeout_secs,
    );
    if let Some(warmup) = &p.connection_warmup_queries {
        c.connection_warmup_queries = warmup.queries.clone();
    }
    if let Some(mode) = &p.pool_mode {
        c.pool_mode = poolplane::PoolMode::parse(mode).ok_or_else(|| {
            vec![(
                "config.pool_mode".to_owned(),
                format!("unknown pool mode `{mode}`: use transaction or session"),
            )]
        })?;
    }
    if let Some(state) = &p.session_state {
        c.session_state = poolplane::SessionState::parse(state).ok_or_else(|| {
            vec![(
                "config.session_state".to_owned(),
                format!("unknown session_state `{state}`: use pin or refuse"),
            )]
        })?;
    }
    Ok(c)
}

/// Every field of the effective config, set.
pub fn config_to_proto(c: &AdvancedPoolConfig) -> v1::PoolConfig {
    v1::PoolConfig {
        preset: None,
        max_connections: Some(c.max_connections),
        min_connections: Some(c.min_connections),
        acquire_timeout_secs: Some(c.acquire_timeout_secs),
        idle_timeout_secs: Some(c.idle_timeout_secs),
        max_lifetime_secs: Some(c.max_lifetime_secs),
        statement_cache_capacity: Some(c.statement_cache_capacity),
        enable_prepared_statements: Some(c.enable_prepared_statements),
        health_check_interval_secs: Some(c.health_check_interval_secs),
        health_check_timeout_secs: Some(c.health_check_timeout_secs),
        max_failed_health_checks: Some(c.max_failed_health_checks),
        enable_dynamic_sizing: Some(c.enable_dynamic_sizing),
        load_threshold_high: Some(c.load_threshold_high),
        load_threshold_low: Some(c.load_threshold_low),
        scale_up_factor: Some(c.scale_up_factor),
        scale_down_factor: Some(c.scale_down_factor),
        min_scale_interval_secs: Some(c.min_scale_interval_secs),
        enable_connection_validation: Some(c.enable_connection_validation),
        validation_query: Some(c.validation_query.clone()),
        connection_warmup_queries: Some(v1::WarmupQueries {
            queries: c.connection_warmup_queries.clone(),
        }),
        enable_connection_recycling: Some(c.enable_connection_recycling),
        recycle_threshold_queries: Some(c.recycle_threshold_queries),
        validation_idle_threshold_ms: Some(c.validation_idle_threshold_ms),
        pool_mode: Some(c.pool_mode.as_str().to_owned()),
        max_client_connections: Some(c.max_client_connections),
        client_idle_timeout_secs: Some(c.client_idle_timeout_secs),
        idle_in_transaction_timeout_secs: Some(c.idle_in_transaction_timeout_secs),
        query_timeout_secs: Some(c.query_timeout_secs),
        session_state: Some(c.session_state.as_str().to_owned()),
    }
}

/// A stats snapshot of `pool_name`, taken now.
pub fn stats_to_proto(pool_name: &str, s: &PoolStats) -> v1::PoolStats {
    v1::PoolStats {
        pool_name: pool_name.to_owned(),
        taken_at: Some(timestamp(SystemTime::now())),
        connections: s.connections,
        idle_connections: s.idle_connections,
        active_connections: s.active_connections,
        waiting_requests: s.waiting_requests,
        current_size: s.current_size,
        min_connections: s.min_connections,
        max_connections: s.max_connections,
        utilization_rate: s.utilization_rate,
        avg_acquire_time_ms: s.avg_acquire_time_ms,
        p50_acquire_time_ms: s.p50_acquire_time_ms,
        p95_acquire_time_ms: s.p95_acquire_time_ms,
        p99_acquire_time_ms: s.p99_acquire_time_ms,
        total_acquires: s.total_acquires,
        acquire_timeouts: s.acquire_timeouts,
        connection_errors: s.connection_errors,
        connections_created: s.connections_created,
        connections_closed: s.connections_closed,
        connections_recycled: s.connections_recycled,
        total_queries: s.total_queries,
        query_errors: s.query_errors,
        security: Some(security_to_proto(&s.security)),
        budget: s.budget.as_ref().map(|b| v1::ConnectionBudget {
            server: b.server.clone(),
            limit: b.limit,
            in_use: b.in_use,
            pools: b.pools,
            share: b.share,
            held_back: b.held_back,
        }),
        wire_clients_connected: s.wire.clients,
        wire_clients_waiting: s.wire.waiting,
        wire_clients_pinned: s.wire.pinned,
        wire_transactions: s.wire.transactions,
        wire_queries: s.wire.queries,
        wire_bytes_in: s.wire.bytes_in,
        wire_bytes_out: s.wire.bytes_out,
    }
}

/// The health of `pool_name`.
pub fn health_to_proto(pool_name: &str, h: &HealthStatus) -> v1::HealthStatus {
    v1::HealthStatus {
        pool_name: pool_name.to_owned(),
        is_healthy: h.is_healthy,
        response_time_ms: h.response_time_ms,
        consecutive_failures: h.consecutive_failures,
        last_check_at: h.last_check_at.map(timestamp),
        last_success_at: h.last_success_at.map(timestamp),
        last_error: h.last_error.clone().unwrap_or_default(),
    }
}

/// The statement-cache counters of `pool_name`.
pub fn cache_stats_to_proto(pool_name: &str, s: &StatementCacheStats) -> v1::StatementCacheStats {
    v1::StatementCacheStats {
        pool_name: pool_name.to_owned(),
        hits: s.hits,
        misses: s.misses,
        hit_rate: s.hit_rate,
        evictions: s.evictions,
        prepared_statements: s.prepared_statements,
        capacity: s.capacity,
    }
}

/// An engine event as the API shows it; `None` for events only the history
/// records (successful health checks).
pub fn event_to_proto(event: &PoolEvent) -> Option<v1::PoolEvent> {
    use v1::pool_event::Kind;
    let kind = match &event.kind {
        PoolEventKind::HealthCheckSucceeded { .. } => return None,
        PoolEventKind::HealthCheckFailed {
            consecutive_failures,
            error,
        } => Kind::HealthCheckFailed(v1::HealthCheckFailed {
            consecutive_failures: *consecutive_failures,
            error: error.clone(),
        }),
        PoolEventKind::BecameUnhealthy {
            consecutive_failures,
            error,
        } => Kind::BecameUnhealthy(v1::BecameUnhealthy {
            consecutive_failures: *consecutive_failures,
            error: error.clone(),
        }),
        PoolEventKind::Recovered { response_time_ms } => Kind::Recovered(v1::Recovered {
            response_time_ms: *response_time_ms,
        }),
        PoolEventKind::Scaled {
            direction,
            from,
            to,
            utilization,
            reason,
        } => Kind::Scaled(v1::Scaled {
            direction: self::direction(*direction) as i32,
            from: *from,
            to: *to,
            utilization: *utilization,
            reason: reason.clone(),
        }),
        PoolEventKind::ConnectionRecycled { queries } => {
            Kind::ConnectionRecycled(v1::ConnectionRecycled { queries: *queries })
        }
        PoolEventKind::PoolCreated => Kind::PoolCreated(v1::PoolCreated {}),
        PoolEventKind::PoolUpdated { rebuilt } => {
            Kind::PoolUpdated(v1::PoolUpdated { rebuilt: *rebuilt })
        }
        PoolEventKind::PoolDeleted => Kind::PoolDeleted(v1::PoolDeleted {}),
        PoolEventKind::MissedEvents { count } => {
            Kind::MissedEvents(v1::MissedEvents { count: *count })
        }
        PoolEventKind::ConfigChanged {
            changes,
            source,
            reason,
            applied,
        } => Kind::ConfigChanged(v1::ConfigChanged {
            changes: changes.iter().map(field_change_to_proto).collect(),
            source: source.clone(),
            reason: reason.clone(),
            applied: *applied,
        }),
    };
    Some(v1::PoolEvent {
        pool_name: event.pool_name.clone(),
        at: Some(timestamp(event.at)),
        kind: Some(kind),
    })
}

fn field_change_to_proto(c: &poolplane::FieldChange) -> v1::FieldChange {
    v1::FieldChange {
        field: c.field.clone(),
        old_value: c.old_value.clone(),
        new_value: c.new_value.clone(),
    }
}

/// A stored config change.
pub fn config_change_to_proto(r: &poolplane::ConfigChangeRecord) -> v1::ConfigChangeRecord {
    v1::ConfigChangeRecord {
        pool_name: r.pool_name.clone(),
        changed_at: Some(timestamp(r.changed_at)),
        change: Some(field_change_to_proto(&r.change)),
        source: r.origin.source.clone(),
        reason: r.origin.reason.clone(),
        applied: r.applied,
    }
}

/// A config's warnings (values outside the recommended ranges).
pub fn warnings_to_proto(config: &AdvancedPoolConfig) -> Vec<v1::ConfigWarning> {
    config
        .warnings()
        .into_iter()
        .map(|w| v1::ConfigWarning {
            field: format!("config.{}", w.field),
            description: w.description,
        })
        .collect()
}

fn direction(direction: ScaleDirection) -> v1::ScaleDirection {
    match direction {
        ScaleDirection::Up => v1::ScaleDirection::Up,
        ScaleDirection::Down => v1::ScaleDirection::Down,
    }
}

/// A recorded scaling decision.
pub fn scaling_record_to_proto(r: &ScalingRecord) -> v1::ScalingEventRecord {
    v1::ScalingEventRecord {
        pool_name: r.pool_name.clone(),
        at: Some(timestamp(r.at)),
        direction: direction(r.direction) as i32,
        from: u32::try_from(r.from).unwrap_or(0),
        to: u32::try_from(r.to).unwrap_or(0),
        utilization: r.utilization,
        reason: r.reason.clone(),
    }
}

/// A performance summary.
pub fn summary_to_proto(s: &PerformanceSummary) -> v1::PerformanceSummary {
    let hour = s.last_hour.as_ref();
    v1::PerformanceSummary {
        pool_name: s.pool_name.clone(),
        current: Some(stats_to_proto(&s.pool_name, &s.current)),
        utilization_rate: s.utilization_rate,
        avg_utilization_1h: hour.map_or(0.0, |h| h.avg_utilization),
        max_utilization_1h: hour.map_or(0.0, |h| h.max_utilization),
        avg_acquire_time_ms_1h: hour.map_or(0.0, |h| h.avg_acquire_time_ms),
        acquire_timeouts_1h: hour.map_or(0, |h| h.acquire_timeouts),
        connection_errors_1h: hour.map_or(0, |h| h.connection_errors),
        samples_1h: hour.map_or(0, |h| h.samples),
        acquires_1h: hour.map_or(0, |h| h.acquires),
        query_errors_1h: hour.map_or(0, |h| h.query_errors),
        cache_hit_rate: s.cache_hit_rate,
        recent_scaling_events: s
            .recent_scaling_events
            .iter()
            .map(scaling_record_to_proto)
            .collect(),
    }
}

/// One point of a metrics series.
pub fn point_to_proto(p: &MetricsPoint) -> v1::MetricsPoint {
    v1::MetricsPoint {
        at: Some(timestamp(p.at)),
        samples: p.samples,
        avg_utilization: p.avg_utilization,
        max_utilization: p.max_utilization,
        avg_acquire_time_ms: p.avg_acquire_time_ms,
        max_p95_acquire_time_ms: p.max_p95_acquire_time_ms,
        avg_connections: p.avg_connections,
        max_waiting_requests: p.max_waiting_requests,
        queries: p.queries,
    }
}

/// A system time from a `google.protobuf.Timestamp` (a violation of `field` if it
/// is out of range).
pub fn system_time(ts: &prost_types::Timestamp, field: &str) -> Result<SystemTime, Violation> {
    SystemTime::try_from(*ts).map_err(|e| (field.to_owned(), format!("invalid timestamp: {e}")))
}

/// A load test's progress.
pub fn progress_to_proto(p: &LoadTestProgress) -> v1::LoadTestProgress {
    v1::LoadTestProgress {
        elapsed_secs: p.elapsed.as_secs_f64(),
        requests: p.requests,
        current_rps: p.current_rps,
        errors: p.errors,
        p95_ms: p.p95_ms,
        utilization: p.utilization,
    }
}

/// A load test's result.
pub fn load_test_to_proto(r: &LoadTestResults) -> v1::LoadTestResult {
    v1::LoadTestResult {
        pool_name: r.pool_name.clone(),
        concurrency: r.concurrency,
        query: r.query.clone(),
        target_rps: r.target_rps,
        total_requests: r.total_requests,
        successful_requests: r.successful_requests,
        failed_requests: r.failed_requests,
        error_rate: r.error_rate,
        requests_per_second: r.requests_per_second,
        avg_response_time_ms: r.avg_response_time_ms,
        p50_response_time_ms: r.p50_response_time_ms,
        p95_response_time_ms: r.p95_response_time_ms,
        p99_response_time_ms: r.p99_response_time_ms,
        max_response_time_ms: r.max_response_time_ms,
        avg_utilization: r.avg_utilization,
        peak_utilization: r.peak_utilization,
        capacity: r.capacity,
        grade: match r.grade {
            Grade::A => v1::Grade::A,
            Grade::B => v1::Grade::B,
            Grade::C => v1::Grade::C,
            Grade::D => v1::Grade::D,
            Grade::F => v1::Grade::F,
        } as i32,
        started_at: Some(timestamp(r.started_at)),
        duration_secs: r.duration.as_secs_f64(),
    }
}

/// The optimizer's report.
pub fn report_to_proto(r: &OptimizationReport) -> v1::OptimizationReport {
    v1::OptimizationReport {
        total_pools: u32::try_from(r.total_pools).unwrap_or(u32::MAX),
        optimized_pools: u32::try_from(r.optimized_pools).unwrap_or(u32::MAX),
        optimizations: r
            .optimizations
            .iter()
            .map(|o| v1::PoolOptimization {
                pool_name: o.pool_name.clone(),
                current_utilization: o.current_utilization,
                recommendations: o
                    .recommendations
                    .iter()
                    .map(|rec| v1::Recommendation {
                        parameter: rec.parameter.clone(),
                        current_value: rec.current_value.clone(),
                        suggested_value: rec.suggested_value.clone(),
                        reason: rec.reason.clone(),
                        severity: match rec.severity {
                            Severity::Info => v1::Severity::Info,
                            Severity::Warning => v1::Severity::Warning,
                            Severity::Critical => v1::Severity::Critical,
                        } as i32,
                        sentence: rec.sentence.clone(),
                        applicable: rec.applicable(),
                    })
                    .collect(),
                applied_changes: o.applied_changes.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_patch() -> impl Strategy<Value = v1::PoolConfig> {
        let numbers = (
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
        );
        let rest = (
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of("\\PC{0,30}"),
            proptest::option::of(proptest::collection::vec("\\PC{0,10}", 0..40)),
            proptest::option::of("(default|production|development|[a-z]{1,8})"),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        );
        (numbers, rest).prop_map(|(n, r)| v1::PoolConfig {
            max_connections: n.0,
            min_connections: n.1,
            acquire_timeout_secs: n.2,
            idle_timeout_secs: n.3,
            max_lifetime_secs: n.4,
            statement_cache_capacity: n.5,
            health_check_interval_secs: n.6,
            health_check_timeout_secs: n.7,
            max_failed_health_checks: n.8,
            min_scale_interval_secs: n.9,
            load_threshold_high: r.0,
            load_threshold_low: r.1,
            scale_up_factor: r.2,
            scale_down_factor: r.3,
            enable_dynamic_sizing: r.4,
            validation_query: r.5,
            connection_warmup_queries: r.6.map(|queries| v1::WarmupQueries { queries }),
            preset: r.7,
            recycle_threshold_queries: r.8,
            validation_idle_threshold_ms: r.9,
            ..v1::PoolConfig::default()
        })
    }

    /// Each event kind with the message it must become.
    fn event_cases() -> Vec<(PoolEventKind, v1::pool_event::Kind)> {
        use v1::pool_event::Kind;
        vec![
            (
                PoolEventKind::HealthCheckFailed {
                    consecutive_failures: 2,
                    error: "e".into(),
                },
                Kind::HealthCheckFailed(v1::HealthCheckFailed {
                    consecutive_failures: 2,
                    error: "e".into(),
                }),
            ),
            (
                PoolEventKind::BecameUnhealthy {
                    consecutive_failures: 3,
                    error: "x".into(),
                },
                Kind::BecameUnhealthy(v1::BecameUnhealthy {
                    consecutive_failures: 3,
                    error: "x".into(),
                }),
            ),
            (
                PoolEventKind::Recovered {
                    response_time_ms: 2.5,
                },
                Kind::Recovered(v1::Recovered {
                    response_time_ms: 2.5,
                }),
            ),
            (
                PoolEventKind::Scaled {
                    direction: ScaleDirection::Down,
                    from: 10,
                    to: 9,
                    utilization: 0.1,
                    reason: "quiet".into(),
                },
                Kind::Scaled(v1::Scaled {
                    direction: v1::ScaleDirection::Down as i32,
                    from: 10,
                    to: 9,
                    utilization: 0.1,
                    reason: "quiet".into(),
                }),
            ),
            (
                PoolEventKind::ConnectionRecycled { queries: 50 },
                Kind::ConnectionRecycled(v1::ConnectionRecycled { queries: 50 }),
            ),
            (
                PoolEventKind::PoolUpdated { rebuilt: true },
                Kind::PoolUpdated(v1::PoolUpdated { rebuilt: true }),
            ),
            (
                PoolEventKind::PoolDeleted,
                Kind::PoolDeleted(v1::PoolDeleted {}),
            ),
            (
                PoolEventKind::MissedEvents { count: 7 },
                Kind::MissedEvents(v1::MissedEvents { count: 7 }),
            ),
        ]
    }

    #[test]
    fn every_event_kind_converts_with_its_values() {
        use v1::pool_event::Kind;
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let event = |kind| PoolEvent {
            pool_name: "p".into(),
            at,
            kind,
        };
        let convert = |kind| event_to_proto(&event(kind)).and_then(|e| e.kind);
        assert_eq!(
            convert(PoolEventKind::HealthCheckSucceeded {
                response_time_ms: 1.0
            }),
            None,
            "successful checks are for the history only"
        );
        let shown = event_to_proto(&event(PoolEventKind::PoolCreated)).expect("shown");
        assert_eq!(shown.pool_name, "p");
        assert_eq!(shown.at, Some(timestamp(at)));
        assert_eq!(shown.kind, Some(Kind::PoolCreated(v1::PoolCreated {})));
        let cases = event_cases();
        for (kind, expected) in cases {
            assert_eq!(convert(kind), Some(expected));
        }
        let changed = convert(PoolEventKind::ConfigChanged {
            changes: vec![poolplane::FieldChange {
                field: "max_connections".into(),
                old_value: "2".into(),
                new_value: "3".into(),
            }],
            source: "optimizer".into(),
            reason: "why".into(),
            applied: false,
        });
        let Some(Kind::ConfigChanged(c)) = changed else {
            panic!("{changed:?}");
        };
        let change = &c.changes[0];
        assert_eq!(
            (&*change.field, &*change.old_value, &*change.new_value),
            ("max_connections", "2", "3")
        );
        assert_eq!(
            (&*c.source, &*c.reason, c.applied),
            ("optimizer", "why", false)
        );
    }

    #[test]
    fn scaling_records_and_recommendations_keep_their_values() {
        let record = ScalingRecord {
            pool_name: "p".into(),
            at: SystemTime::UNIX_EPOCH,
            direction: ScaleDirection::Up,
            from: 2,
            to: -1,
            utilization: 0.9,
            reason: "busy".into(),
        };
        let shown = scaling_record_to_proto(&record);
        assert_eq!(shown.direction, v1::ScaleDirection::Up as i32);
        assert_eq!((shown.from, shown.to), (2, 0), "a negative size shows as 0");
        assert_eq!(shown.reason, "busy");

        let config = AdvancedPoolConfig {
            max_connections: 10,
            ..AdvancedPoolConfig::default()
        };
        let grow = poolplane::Recommendation::change(
            poolplane::optimizer::ConfigChange::MaxConnections(15),
            &config,
            "busy".into(),
            poolplane::Severity::Warning,
            "Increase max_connections",
        );
        let mut advice = grow.clone();
        advice.parameter = "queries".into();
        advice.suggested_value.clear();
        advice.change = None;
        let report = report_to_proto(&poolplane::OptimizationReport::of(
            vec![poolplane::PoolOptimization {
                pool_name: "p".into(),
                current_utilization: 0.9,
                recommendations: vec![grow, advice],
                applied_changes: vec![],
            }],
            false,
        ));
        assert_eq!((report.total_pools, report.optimized_pools), (1, 1));
        let recs = &report.optimizations[0].recommendations;
        assert_eq!(
            (
                recs[0].parameter.as_str(),
                recs[0].current_value.as_str(),
                recs[0].suggested_value.as_str(),
                recs[0].applicable
            ),
            ("max_connections", "10", "15", true)
        );
        assert!(!recs[1].applicable);
        assert_eq!(recs[1].suggested_value, "");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any message converts and validates, or is refused naming `config.*`
        /// fields; never a panic. What validates converts back to the same values.
        #[test]
        fn any_pool_config_message_converts_or_is_refused(patch in any_patch()) {
            match apply_config(AdvancedPoolConfig::default(), Some(&patch)) {
                Err(violations) => {
                    prop_assert!(violations.iter().all(|(field, _)| field == "config.preset"));
                }
                Ok(config) => match config.validate() {
                    Ok(()) => {
                        let back = apply_config(
                            AdvancedPoolConfig::default(),
                            Some(&config_to_proto(&config)),
                        );
                        prop_assert_eq!(back, Ok(config));
                    }
                    Err(errors) => prop_assert!(!errors.0.is_empty()),
                },
            }
        }
    }
}
