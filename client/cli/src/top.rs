//! `poolctl top`: a live full-screen view of every pool (utilization bar, size,
//! waiting, acquire p95, cache hit rate, health), the PostgreSQL front door's
//! clients and the latest events, fed by WatchPoolStats and WatchHealthEvents
//! (both resuming across server restarts) and ListClients every 2 s.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::pool_event::Kind;
use poolplane_client::proto::{PoolEvent, PoolStats, WireClient};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, List, ListItem, Row, Table};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

/// Events kept on screen.
const EVENTS_SHOWN: usize = 8;

/// Front-door clients shown (the busiest first).
const CLIENTS_SHOWN: usize = 8;

/// What the screen shows.
#[derive(Debug, Default)]
pub struct TopState {
    /// The latest snapshot of each pool.
    pub stats: BTreeMap<String, PoolStats>,
    /// Each pool's health.
    pub healthy: BTreeMap<String, bool>,
    /// Each pool's statement-cache hit rate.
    pub hit_rate: BTreeMap<String, f64>,
    /// The latest events, newest first; repeats of one kind on one pool share a
    /// line with a count, so that a rare event stays visible.
    pub events: VecDeque<EventLine>,
    /// The server, for the title.
    pub server: String,
    /// The front door's clients (ListClients).
    pub clients: Vec<WireClient>,
}

/// One line of the events panel.
#[derive(Debug, Clone)]
pub struct EventLine {
    pool: String,
    /// The event's kind, what repeats are counted by.
    kind: &'static str,
    /// The latest one's text.
    text: String,
    count: u32,
    first: Instant,
}

impl EventLine {
    /// `primary  scaled 8 -> 10: …`, or `primary  connection recycled ×37 in 10 s`.
    fn render(&self, now: Instant) -> String {
        let body = if self.count > 1 {
            let secs = now.saturating_duration_since(self.first).as_secs().max(1);
            format!(
                "{} ×{} in {secs} s (last: {})",
                self.kind, self.count, self.text
            )
        } else {
            self.text.clone()
        };
        crate::output::clean(&format!("{:<16} {body}", self.pool))
    }
}

/// The label repeats of an event are counted under.
fn kind_label(kind: &Kind) -> &'static str {
    match kind {
        Kind::CurrentHealth(_) => "health",
        Kind::HealthCheckFailed(_) => "health check failed",
        Kind::BecameUnhealthy(_) => "unhealthy",
        Kind::Recovered(_) => "recovered",
        Kind::Scaled(_) => "scaled",
        Kind::ConnectionRecycled(_) => "connection recycled",
        Kind::PoolCreated(_) => "created",
        Kind::PoolUpdated(_) => "updated",
        Kind::PoolDeleted(_) => "deleted",
        Kind::MissedEvents(_) => "missed events",
        Kind::ConfigChanged(_) => "config changed",
    }
}

impl TopState {
    fn event(&mut self, event: &PoolEvent) {
        self.event_at(event, Instant::now());
    }

    fn event_at(&mut self, event: &PoolEvent, now: Instant) {
        let Some(kind) = event.kind.as_ref().map(kind_label) else {
            return;
        };
        let text = match &event.kind {
            Some(Kind::CurrentHealth(h)) => {
                self.healthy.insert(event.pool_name.clone(), h.is_healthy);
                return;
            }
            Some(Kind::HealthCheckFailed(f)) => format!(
                "health check failed ({}): {}",
                f.consecutive_failures, f.error
            ),
            Some(Kind::BecameUnhealthy(u)) => {
                self.healthy.insert(event.pool_name.clone(), false);
                format!(
                    "UNHEALTHY after {} failures: {}",
                    u.consecutive_failures, u.error
                )
            }
            Some(Kind::Recovered(r)) => {
                self.healthy.insert(event.pool_name.clone(), true);
                format!("recovered ({:.1} ms)", r.response_time_ms)
            }
            Some(Kind::Scaled(s)) => format!("scaled {} -> {}: {}", s.from, s.to, s.reason),
            Some(Kind::ConnectionRecycled(c)) => {
                format!("connection recycled after {} queries", c.queries)
            }
            Some(Kind::PoolCreated(_)) => {
                self.healthy.entry(event.pool_name.clone()).or_insert(true);
                "created".into()
            }
            Some(Kind::ConfigChanged(c)) => format!(
                "config {} by {}: {}",
                if c.applied {
                    "changed"
                } else {
                    "change refused"
                },
                c.source,
                c.changes
                    .iter()
                    .map(|f| format!("{} {} -> {}", f.field, f.old_value, f.new_value))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(Kind::PoolUpdated(u)) => format!(
                "config updated{}",
                if u.rebuilt { " (rebuilt)" } else { "" }
            ),
            Some(Kind::PoolDeleted(_)) => {
                self.stats.remove(&event.pool_name);
                self.healthy.remove(&event.pool_name);
                "deleted".into()
            }
            Some(Kind::MissedEvents(m)) => format!("missed {} events", m.count),
            None => return,
        };
        let same = self
            .events
            .iter()
            .position(|l| l.pool == event.pool_name && l.kind == kind);
        let line = match same.and_then(|i| self.events.remove(i)) {
            Some(mut line) => {
                line.count += 1;
                line.text = text;
                line
            }
            None => EventLine {
                pool: event.pool_name.clone(),
                kind,
                text,
                count: 1,
                first: now,
            },
        };
        self.events.push_front(line);
        self.events.truncate(EVENTS_SHOWN);
    }
}

/// A text bar of `width` cells for a fraction in 0..=1.
fn bar(fraction: f64, width: usize) -> String {
    let filled = (fraction.clamp(0.0, 1.0) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// The table of pools, one row each.
fn pools_table(state: &TopState) -> Table<'_> {
    let header = Row::new([
        "POOL",
        "UTILIZATION",
        "SIZE",
        "CUR",
        "MAX",
        "WAIT",
        "ACQ p95",
        "CACHE HIT",
        "CLIENTS",
        "CL WAIT",
        "HEALTH",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = state.stats.values().map(|s| pool_row(state, s));
    let widths = [
        Constraint::Length(16),
        Constraint::Length(16),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
    ];
    let title = format!(
        " poolplane top — {} — {} pools ",
        state.server,
        state.stats.len()
    );
    Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
}

/// One pool's row (red when unhealthy).
fn pool_row(state: &TopState, s: &PoolStats) -> Row<'static> {
    let healthy = state.healthy.get(&s.pool_name).copied().unwrap_or(true);
    let hit = state
        .hit_rate
        .get(&s.pool_name)
        .map_or("-".to_owned(), |h| format!("{:.1}%", h * 100.0));
    Row::new(vec![
        s.pool_name.clone(),
        format!(
            "{} {:>3.0}%",
            bar(s.utilization_rate, 10),
            s.utilization_rate * 100.0
        ),
        s.connections.to_string(),
        s.current_size.to_string(),
        s.max_connections.to_string(),
        s.waiting_requests.to_string(),
        format!("{:.2} ms", s.p95_acquire_time_ms),
        hit,
        s.wire_clients_connected.to_string(),
        s.wire_clients_waiting.to_string(),
        if healthy {
            "healthy".into()
        } else {
            "UNHEALTHY".into()
        },
    ])
    .style(if healthy {
        Style::default()
    } else {
        Style::default().fg(Color::Red)
    })
}

/// Draws the screen.
pub fn render(frame: &mut Frame<'_>, state: &TopState) {
    let [pools_area, clients_area, events_area, help_area] = Layout::vertical([
        Constraint::Min(4),
        Constraint::Length(CLIENTS_SHOWN as u16 + 3),
        Constraint::Length(EVENTS_SHOWN as u16 + 2),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    frame.render_widget(pools_table(state), pools_area);
    frame.render_widget(clients_table(state), clients_area);
    let now = Instant::now();
    let events: Vec<ListItem<'_>> = state
        .events
        .iter()
        .map(|e| ListItem::new(e.render(now)))
        .collect();
    frame.render_widget(
        List::new(events).block(Block::bordered().title(" events ")),
        events_area,
    );
    frame.render_widget(Line::from(" q: quit"), help_area);
}

/// The front door's clients: those holding or waiting for a backend first,
/// then the busiest; the title counts them by state.
fn clients_table(state: &TopState) -> Table<'static> {
    let rank = |c: &WireClient| match c.state.as_str() {
        "active" => 0,
        "waiting" => 1,
        "pinned" => 2,
        _ => 3,
    };
    let mut shown: Vec<&WireClient> = state.clients.iter().collect();
    shown.sort_by_key(|c| (rank(c), std::cmp::Reverse(c.transactions), c.id));
    let count = |s: &str| state.clients.iter().filter(|c| c.state == s).count();
    let title = format!(
        " front-door clients: {} ({} active, {} waiting, {} pinned, {} idle) ",
        state.clients.len(),
        count("active"),
        count("waiting"),
        count("pinned"),
        count("idle")
    );
    let rows = shown.into_iter().take(CLIENTS_SHOWN).map(|c| {
        Row::new(vec![
            c.id.to_string(),
            crate::output::clean(&c.pool_name),
            crate::output::clean(&c.user),
            crate::output::clean(&c.application_name),
            c.address.clone(),
            c.state.clone(),
            c.transactions.to_string(),
            c.queries.to_string(),
        ])
        .style(match c.state.as_str() {
            "waiting" => Style::default().fg(Color::Yellow),
            "pinned" => Style::default().fg(Color::Cyan),
            _ => Style::default(),
        })
    });
    Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(16),
            Constraint::Length(12),
            Constraint::Length(16),
            Constraint::Length(22),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(vec![
            "ID", "POOL", "USER", "APP", "ADDRESS", "STATE", "XACTS", "QUERIES",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(title))
}

enum Update {
    Stats(Box<PoolStats>),
    Clients(Vec<WireClient>),
    Event(PoolEvent),
    HitRate(String, f64),
    Key,
}

/// Feeds `tx` with stats, events, cache hit rates (every 2 s) and the quit key.
fn spawn_feeds(client: &PoolplaneClient, tx: mpsc::Sender<Update>) {
    let stats_tx = tx.clone();
    let stats = client.watch_pool_stats_resuming(&[], 1000);
    tokio::spawn(async move {
        tokio::pin!(stats);
        while let Some(Ok(s)) = stats.next().await {
            if stats_tx.send(Update::Stats(Box::new(s))).await.is_err() {
                break;
            }
        }
    });
    let events_tx = tx.clone();
    let events = client.watch_health_events_resuming(&[]);
    tokio::spawn(async move {
        tokio::pin!(events);
        while let Some(Ok(e)) = events.next().await {
            if events_tx.send(Update::Event(e)).await.is_err() {
                break;
            }
        }
    });
    let clients_tx = tx.clone();
    let clients_client = client.clone();
    tokio::spawn(async move {
        loop {
            // A server without a front door answers with an error: no clients.
            let clients = clients_client.list_clients(None).await.unwrap_or_default();
            if clients_tx.send(Update::Clients(clients)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let cache_tx = tx.clone();
    let cache_client = client.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(pools) = cache_client.list_pools().await {
                for pool in pools {
                    if let Ok(c) = cache_client.get_statement_cache_stats(&pool.name).await
                        && cache_tx
                            .send(Update::HitRate(pool.name, c.hit_rate))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    // Keys are read on a thread of their own (crossterm blocks).
    std::thread::spawn(move || {
        use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
        loop {
            match event::read() {
                Ok(Event::Key(key))
                    if key.code == KeyCode::Char('q')
                        || key.code == KeyCode::Esc
                        || (key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL)) =>
                {
                    let _ = tx.blocking_send(Update::Key);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
}

/// Runs the live view until `q`, Esc or Ctrl-C.
pub async fn run(client: PoolplaneClient, server: String) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(256);
    spawn_feeds(&client, tx);

    let mut terminal = ratatui::init();
    let mut state = TopState {
        server,
        ..TopState::default()
    };
    let result = loop {
        if let Err(e) = terminal.draw(|frame| render(frame, &state)) {
            break Err(e.into());
        }
        match rx.recv().await {
            Some(Update::Stats(s)) => {
                state.stats.insert(s.pool_name.clone(), *s);
            }
            Some(Update::Event(e)) => state.event(&e),
            Some(Update::Clients(clients)) => state.clients = clients,
            Some(Update::HitRate(name, rate)) => {
                state.hit_rate.insert(name, rate);
            }
            Some(Update::Key) | None => break Ok(()),
        }
    };
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolplane_client::proto::{BecameUnhealthy, Scaled};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn stats(name: &str, active: u32, size: u32) -> PoolStats {
        PoolStats {
            pool_name: name.into(),
            connections: size,
            active_connections: active,
            current_size: size,
            max_connections: 20,
            waiting_requests: 3,
            utilization_rate: f64::from(active) / f64::from(size),
            p95_acquire_time_ms: 1.25,
            ..PoolStats::default()
        }
    }

    #[test]
    fn repeated_events_share_a_line_and_a_rare_one_stays_visible() {
        use poolplane_client::proto::ConnectionRecycled;
        let mut state = TopState::default();
        let start = Instant::now();
        state.event_at(
            &PoolEvent {
                pool_name: "cache".into(),
                at: None,
                kind: Some(Kind::BecameUnhealthy(BecameUnhealthy {
                    consecutive_failures: 3,
                    error: "connection refused\u{1b}[2J".into(),
                })),
            },
            start,
        );
        for i in 0..37 {
            state.event_at(
                &PoolEvent {
                    pool_name: "primary".into(),
                    at: None,
                    kind: Some(Kind::ConnectionRecycled(ConnectionRecycled {
                        queries: 100 + i,
                    })),
                },
                start + Duration::from_millis(250 * i),
            );
        }
        assert_eq!(state.events.len(), 2, "{:?}", state.events);
        let now = start + Duration::from_secs(10);
        assert_eq!(
            state.events[0].render(now),
            format!(
                "{:<16} connection recycled ×37 in 10 s (last: connection recycled after 136 queries)",
                "primary"
            )
        );
        let rare = state.events[1].render(now);
        assert!(rare.contains("UNHEALTHY after 3 failures"), "{rare}");
        assert!(
            !rare.contains('\u{1b}'),
            "escape sequences are stripped: {rare:?}"
        );
    }

    /// The screen `state` draws, as text.
    fn screen(state: &TopState) -> String {
        let mut terminal = Terminal::new(TestBackend::new(110, 32)).unwrap();
        terminal.draw(|frame| render(frame, state)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_clients_pane_counts_clients_and_puts_busy_ones_first() {
        let mut state = TopState::default();
        let client = |id: u64, state: &str, transactions: u64| WireClient {
            id,
            pool_name: "primary".into(),
            user: "app".into(),
            application_name: "billing".into(),
            address: format!("127.0.0.1:{}", 40000 + id),
            state: state.into(),
            transactions,
            ..WireClient::default()
        };
        state.clients = vec![
            client(1, "idle", 900),
            client(2, "active", 5),
            client(3, "pinned", 7),
            client(4, "waiting", 1),
        ];
        let screen = screen(&state);
        assert!(
            screen.contains("front-door clients: 4 (1 active, 1 waiting, 1 pinned, 1 idle)"),
            "{screen}"
        );
        // Those holding or waiting for a backend first.
        let at = |needle: &str| screen.lines().position(|l| l.contains(needle)).unwrap();
        let order = [
            at("127.0.0.1:40002"),
            at("127.0.0.1:40004"),
            at("127.0.0.1:40003"),
            at("127.0.0.1:40001"),
        ];
        assert!(order.is_sorted(), "{screen}");
        assert!(
            screen
                .lines()
                .any(|l| l.contains("billing") && l.contains("pinned"))
        );
    }

    #[test]
    fn the_frame_shows_every_pool_and_the_latest_events() {
        let mut state = TopState {
            server: "127.0.0.1:50051".into(),
            ..TopState::default()
        };
        state
            .stats
            .insert("primary".into(), stats("primary", 5, 10));
        state.stats.insert("cache".into(), stats("cache", 1, 4));
        state.hit_rate.insert("primary".into(), 0.991);
        state.event(&PoolEvent {
            pool_name: "primary".into(),
            at: None,
            kind: Some(Kind::Scaled(Scaled {
                direction: 1,
                from: 8,
                to: 10,
                utilization: 0.9,
                reason: "utilization 90% >= load_threshold_high 80%".into(),
            })),
        });
        state.event(&PoolEvent {
            pool_name: "cache".into(),
            at: None,
            kind: Some(Kind::BecameUnhealthy(BecameUnhealthy {
                consecutive_failures: 3,
                error: "connection refused".into(),
            })),
        });
        let screen = screen(&state);
        assert!(
            screen.contains("poolplane top — 127.0.0.1:50051 — 2 pools"),
            "{screen}"
        );
        let primary = screen
            .lines()
            .find(|l| l.contains("primary") && l.contains('%'))
            .unwrap();
        assert!(primary.contains("█████░░░░░  50%"), "{primary}");
        assert!(
            primary.contains("99.1%") && primary.contains("1.25 ms") && primary.contains("healthy")
        );
        let cache = screen
            .lines()
            .find(|l| l.contains("cache") && l.contains('%'))
            .unwrap();
        assert!(
            cache.contains("UNHEALTHY") && cache.contains("  25%"),
            "{cache}"
        );
        let first_event = screen
            .lines()
            .position(|l| l.contains("UNHEALTHY after 3 failures"))
            .unwrap();
        let second_event = screen
            .lines()
            .position(|l| l.contains("scaled 8 -> 10"))
            .unwrap();
        assert!(first_event < second_event, "newest event first:\n{screen}");
    }
}
