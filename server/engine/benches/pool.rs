//! poolplane's pool against a raw bb8 pool, on a throwaway embedded PostgreSQL:
//!
//! - `checkout_return`: get() and drop of a warm connection, one task;
//! - `point_select_32_tasks`: a primary-key select from 32 concurrent tasks over 8
//!   connections, with the statement cache on, and with the SQL prepared on every
//!   call (poolplane with the cache off, and raw bb8 + tokio-postgres).
//!
//! - `statement_cache`: a lookup that hits, in a cache of 100 prepared statements,
//!   against a plain `HashMap` lookup of the same keys (the LRU's bookkeeping is
//!   the difference), and one that misses.
//!
//! Run: `cargo bench -p poolplane --bench pool`. Results: BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8_postgres::PostgresConnectionManager;
use criterion::{Criterion, criterion_group, criterion_main};
use poolplane::pool::statement_cache::StatementCache;
use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, EmbeddedPg};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;

const POOL_SIZE: u32 = 8;
const TASKS: u64 = 32;
const SELECT: &str = "SELECT v FROM kv WHERE k = $1";

type BoxedSelect = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct Setup {
    _pg: EmbeddedPg,
    url: String,
}

fn setup(rt: &Runtime) -> Setup {
    rt.block_on(async {
        let pg = EmbeddedPg::start_temporary()
            .await
            .expect("embedded PostgreSQL");
        let url = pg.url("postgres");
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL);
                 INSERT INTO kv SELECT g, md5(g::text) FROM generate_series(1, 10000) g;
                 ANALYZE kv;",
            )
            .await
            .expect("schema");
        Setup { _pg: pg, url }
    })
}

fn config(cache: bool) -> AdvancedPoolConfig {
    AdvancedPoolConfig {
        min_connections: POOL_SIZE,
        max_connections: POOL_SIZE,
        enable_dynamic_sizing: false,
        enable_prepared_statements: cache,
        enable_connection_recycling: false,
        ..AdvancedPoolConfig::default()
    }
}

async fn raw_bb8(
    url: &str,
    test_on_check_out: bool,
) -> bb8::Pool<PostgresConnectionManager<NoTls>> {
    let manager = PostgresConnectionManager::new_from_stringlike(url, NoTls).expect("url");
    bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .min_idle(Some(POOL_SIZE))
        .test_on_check_out(test_on_check_out)
        .build(manager)
        .await
        .expect("bb8 pool")
}

/// Runs `iters` operations split over TASKS tasks and returns the wall time.
async fn concurrently<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn(i32) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let op = op.clone();
        let n = iters / TASKS + u64::from(t < iters % TASKS);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                op(((i * 7919 + t) % 10_000 + 1) as i32).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    start.elapsed()
}

/// The pools every benchmark compares.
struct Pools {
    poolplane: Arc<AdvancedConnectionPool>,
    uncached: Arc<AdvancedConnectionPool>,
    bb8_fast: bb8::Pool<PostgresConnectionManager<NoTls>>,
    bb8_default: bb8::Pool<PostgresConnectionManager<NoTls>>,
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = setup(&rt);
    let pool = |cached| {
        Arc::new(
            rt.block_on(AdvancedConnectionPool::new(&setup.url, config(cached)))
                .expect("pool"),
        )
    };
    let pools = Pools {
        poolplane: pool(true),
        uncached: pool(false),
        bb8_fast: rt.block_on(raw_bb8(&setup.url, false)),
        bb8_default: rt.block_on(raw_bb8(&setup.url, true)),
    };
    checkout_return(c, &rt, &pools);
    point_select(c, &rt, &pools);
    statement_cache(c, &rt, &setup.url);
    rt.block_on(async {
        pools.poolplane.close().await;
        pools.uncached.close().await;
    });
}

fn checkout_return(c: &mut Criterion, rt: &tokio::runtime::Runtime, pools: &Pools) {
    let mut group = c.benchmark_group("checkout_return");
    group.bench_function("poolplane", |b| {
        b.to_async(rt).iter(|| async {
            black_box(pools.poolplane.get().await.expect("get"));
        })
    });
    group.bench_function("bb8_no_test_on_check_out", |b| {
        b.to_async(rt).iter(|| async {
            black_box(pools.bb8_fast.get().await.expect("get"));
        })
    });
    group.bench_function("bb8_defaults", |b| {
        b.to_async(rt).iter(|| async {
            black_box(pools.bb8_default.get().await.expect("get"));
        })
    });
    group.finish();
}

/// A point select through a poolplane pool.
fn poolplane_select(
    pool: &Arc<AdvancedConnectionPool>,
) -> Arc<dyn Fn(i32) -> BoxedSelect + Send + Sync> {
    let pool = Arc::clone(pool);
    Arc::new(move |k| {
        let pool = Arc::clone(&pool);
        Box::pin(async move {
            black_box(pool.query_one(SELECT, &[&k]).await.expect("select"));
        })
    })
}

fn point_select(c: &mut Criterion, rt: &tokio::runtime::Runtime, pools: &Pools) {
    let mut group = c.benchmark_group("point_select_32_tasks");
    group.throughput(criterion::Throughput::Elements(1));
    let mut concurrent = |name: &str, op: Arc<dyn Fn(i32) -> BoxedSelect + Send + Sync>| {
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let op = Arc::clone(&op);
                concurrently(iters, move |k| op(k))
            })
        });
    };
    concurrent("poolplane_cached", poolplane_select(&pools.poolplane));
    concurrent(
        "poolplane_prepare_every_call",
        poolplane_select(&pools.uncached),
    );
    let pool = pools.bb8_fast.clone();
    concurrent(
        "bb8_prepare_every_call",
        Arc::new(move |k| {
            let pool = pool.clone();
            Box::pin(async move {
                let conn = pool.get().await.expect("get");
                black_box(conn.query_one(SELECT, &[&k]).await.expect("select"));
            })
        }),
    );
    group.finish();
}

fn statement_cache(c: &mut Criterion, rt: &tokio::runtime::Runtime, url: &str) {
    const STATEMENTS: usize = 100;
    let (keys, statements) = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        let mut keys = Vec::new();
        let mut statements = Vec::new();
        for i in 0..STATEMENTS {
            let sql = format!("SELECT v FROM kv WHERE k = $1 AND {i} = {i}");
            statements.push(client.prepare(&sql).await.expect("prepare"));
            keys.push(sql);
        }
        (keys, statements)
    });
    let mut cache = StatementCache::new(STATEMENTS);
    let mut map = HashMap::new();
    for (sql, statement) in keys.iter().zip(&statements) {
        cache.insert(sql, statement.clone());
        map.insert(Box::<str>::from(sql.as_str()), statement.clone());
    }
    let mut group = c.benchmark_group("statement_cache");
    let mut next = 0;
    group.bench_function("lru_hit_of_100", |b| {
        b.iter(|| {
            next = (next + 37) % STATEMENTS;
            black_box(cache.get(&keys[next]))
        })
    });
    group.bench_function("hashmap_hit_of_100", |b| {
        b.iter(|| {
            next = (next + 37) % STATEMENTS;
            black_box(map.get(keys[next].as_str()).cloned())
        })
    });
    let absent = "SELECT v FROM kv WHERE k = $1 AND 'absent' = 'absent'";
    group.bench_function("lru_miss", |b| b.iter(|| black_box(cache.get(absent))));
    group.finish();
}

criterion_group! {
    name = pool;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(pool);
