//! The pure policies on a checkout's or a second's path, in one process:
//!
//! - `sizing`: the scaling decision taken every second per pool (`decide`,
//!   `scale_up_now`) and a pool's claim on its server's budget (`need`);
//! - `budget_shares`: the split of a server's connections among 10 and 1,000 pools;
//! - `grading`: the A–F grading table applied to a load test's figures.
//!
//! Run: `cargo bench -p poolplane --bench policy`. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use poolplane::AdvancedPoolConfig;
use poolplane::budget::{Claim, shares};
use poolplane::loadtest::grade;
use poolplane::pool::sizing::{decide, need, scale_up_now};

/// Utilizations across the thresholds (0.3 / 0.8 by default).
const UTILIZATIONS: [f64; 8] = [0.0, 0.1, 0.3, 0.5, 0.79, 0.8, 0.95, 1.4];

fn sizing(c: &mut Criterion) {
    let config = AdvancedPoolConfig {
        min_connections: 2,
        max_connections: 50,
        ..AdvancedPoolConfig::default()
    };
    let mut group = c.benchmark_group("sizing");
    group.bench_function("decide_8_utilizations", |b| {
        b.iter(|| {
            for (i, u) in UTILIZATIONS.iter().enumerate() {
                black_box(decide(black_box(10 + i as u32), black_box(*u), &config));
            }
        })
    });
    group.bench_function("scale_up_now_8_utilizations", |b| {
        b.iter(|| {
            for (i, u) in UTILIZATIONS.iter().enumerate() {
                black_box(scale_up_now(
                    10,
                    black_box(*u),
                    black_box(i as u32 * 4),
                    &config,
                ));
            }
        })
    });
    group.bench_function("need", |b| {
        b.iter(|| black_box(need(black_box(17), &config)))
    });
    group.finish();
}

fn budget_shares(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_shares");
    for pools in [10u32, 1000] {
        let claims: Vec<Claim> = (0..pools)
            .map(|i| Claim {
                min: i % 3,
                max: 10 + i % 20,
                size: 2 + i % 7,
                need: i % 11,
            })
            .collect();
        // A server of 100 connections: demand exceeds it with 1,000 pools.
        group.bench_function(format!("{pools}_pools_limit_100"), |b| {
            b.iter(|| black_box(shares(black_box(100), &claims)))
        });
    }
    group.finish();
}

fn grading(c: &mut Criterion) {
    // One row per grade of the grading table, and its boundaries.
    let figures: [(f64, f64, f64); 8] = [
        (0.0, 10.0, 0.5),
        (0.009, 49.9, 0.79),
        (0.02, 80.0, 0.85),
        (0.05, 100.0, 0.9),
        (0.08, 150.0, 0.94),
        (0.15, 300.0, 0.99),
        (0.2, 500.0, 1.0),
        (0.5, 2000.0, 1.0),
    ];
    c.bench_function("grading_8_results", |b| {
        b.iter(|| {
            for (errors, p95, utilization) in figures {
                black_box(grade(
                    black_box(errors),
                    black_box(p95),
                    black_box(utilization),
                ));
            }
        })
    });
}

criterion_group! {
    name = policy;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = sizing, budget_shares, grading
}
criterion_main!(policy);
