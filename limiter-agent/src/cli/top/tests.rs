//! The unit tests of `top`: rates from polls, sorting, what fits a column, the screen as drawn.

use crate::api::{KeyInfo, Status};
use limiter_common::maps::Counter;
use ratatui::crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use std::time::{Duration, Instant};

use super::model::{sort_rows, KeyRow, Model, Poll, Rates, Sort};

use super::app::{Action, App, Mode};

use super::render::{columns, draw, fit_key, fit_start, Column, MARKER};
use crate::cli::table::{count, rate};

use super::parse_interval;

use crate::api::{ConfigInfo, InterfaceInfo};
use ratatui::backend::TestBackend;

fn key(name: &str, passed: u64, dropped: u64) -> KeyInfo {
    KeyInfo {
        key: name.to_owned(),
        kind: Default::default(),
        api_key: None,
        rule: "default".to_owned(),
        rate: 100,
        burst: 200,
        remaining: 0,
        exhausted: dropped > 0,
        retry_after_ms: 10,
        passed,
        dropped,
        would_drop: 0,
        quota: None,
    }
}

fn status(passed: u64, dropped: u64) -> Status {
    Status {
        interfaces: vec![InterfaceInfo {
            name: "eth0".to_owned(),
            mode: "native".to_owned(),
            attached: true,
        }],
        tracked_keys: 3,
        exhausted_keys: 2,
        dry_run: false,
        evicted_keys: 0,
        counters: {
            let mut counters = crate::api::Counters::default();
            counters.set(Counter::Passed, passed);
            counters.set(Counter::Dropped, dropped);
            counters
        },
        rules: 0,
        config: ConfigInfo {
            source: "/etc/limiter/limiter.toml".to_owned(),
            rate: 100,
            burst: 200,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_keys: 1000,
            new_keys_per_sec: None,
            new_keys_burst: None,
            new_keys_bound: "off".to_owned(),
            pin_path: "/sys/fs/bpf/limiter".to_owned(),
        },
        fleet: None,
    }
}

fn poll_at(at: Instant, passed: u64, dropped: u64, keys: Vec<KeyInfo>) -> Poll {
    Poll {
        status: status(passed, dropped),
        keys,
        at,
    }
}

#[test]
fn rates_come_from_two_polls_of_the_same_key() {
    let start = Instant::now();
    let mut model = Model::new(Duration::from_secs(1));
    model.apply(poll_at(
        start,
        100,
        1000,
        vec![key("198.18.0.10/32", 100, 1000)],
    ));
    assert_eq!(model.keys[0].dropped_per_s, None, "one poll: no rate yet");
    assert_eq!(model.total_rates(), None);
    let later = start + Duration::from_secs(2);
    model.apply(poll_at(
        later,
        300,
        5000,
        vec![
            key("198.18.0.10/32", 300, 5000),
            key("198.18.0.11/32", 50, 0),
        ],
    ));
    assert_eq!(model.keys[0].passed_per_s, Some(100.0));
    assert_eq!(model.keys[0].dropped_per_s, Some(2000.0));
    assert_eq!(model.keys[1].passed_per_s, None, "first seen now");
    assert_eq!(
        model.total_rates(),
        Some(Rates {
            passed: 100.0,
            dropped: 2000.0
        })
    );
    assert_eq!(model.history.len(), 1);

    // A poll right after (a filter change) keeps the rates of the last real interval.
    model.apply(poll_at(
        later + Duration::from_millis(10),
        301,
        5020,
        vec![key("198.18.0.10/32", 301, 5020)],
    ));
    assert_eq!(model.keys[0].dropped_per_s, Some(2000.0));
    assert_eq!(model.history.len(), 1);

    // A counter that went back (the key was evicted and came back): no rate.
    model.apply(poll_at(
        later + Duration::from_secs(1),
        400,
        7000,
        vec![key("198.18.0.10/32", 3, 0)],
    ));
    assert_eq!(model.keys[0].dropped_per_s, None);
}

#[test]
fn sorts_by_rate_with_unknown_rates_last() {
    let row = |name: &str, drop: Option<f64>, pass: Option<f64>, dropped: u64| KeyRow {
        info: key(name, 0, dropped),
        passed_per_s: pass,
        dropped_per_s: drop,
    };
    let mut rows = vec![
        row("198.18.0.1/32", None, None, 9_000_000),
        row("198.18.0.2/32", Some(10.0), Some(300.0), 10),
        row("198.18.0.3/32", Some(5000.0), Some(100.0), 20),
    ];
    let order = |rows: &[KeyRow]| rows.iter().map(|r| r.info.key.clone()).collect::<Vec<_>>();
    sort_rows(&mut rows, Sort::DropRate);
    assert_eq!(
        order(&rows),
        ["198.18.0.3/32", "198.18.0.2/32", "198.18.0.1/32"]
    );
    sort_rows(&mut rows, Sort::PassRate);
    assert_eq!(
        order(&rows),
        ["198.18.0.2/32", "198.18.0.3/32", "198.18.0.1/32"]
    );
    sort_rows(&mut rows, Sort::Dropped);
    assert_eq!(
        order(&rows),
        ["198.18.0.1/32", "198.18.0.3/32", "198.18.0.2/32"]
    );
}

#[test]
fn numbers_and_keys_fit_their_columns() {
    assert_eq!(count(9_999), "9999");
    assert_eq!(count(12_345), "12.3k");
    assert_eq!(count(1_234_567), "1.23M");
    assert_eq!(count(999_999_999), "1000M");
    assert_eq!(rate(0.0), "0");
    assert_eq!(rate(0.5), "0.5");
    assert_eq!(rate(99.6), "100");
    assert_eq!(rate(250_123.0), "250k");
    assert_eq!(fit_key("198.18.0.10/32", 20), "198.18.0.10/32");
    assert_eq!(
        fit_key("2001:db8:1234:5678:9abc::/80", 15),
        "2001:db8:12…/80"
    );
    assert_eq!(fit_start("/tmp/a/limiter.toml", 13), "…limiter.toml");
    assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
    assert!(parse_interval("10ms").is_err());
    assert!(parse_interval("soon").is_err());
}

#[test]
fn columns_fit_80_and_drop_the_least_important_when_narrow() {
    let names = |cols: &[(Column, u16)]| cols.iter().map(|(c, _)| *c).collect::<Vec<_>>();
    let total = |cols: &[(Column, u16)]| {
        MARKER + cols.iter().map(|(_, w)| w).sum::<u16>() + cols.len() as u16 - 1
    };
    let wide = columns(80, 14, Sort::DropRate);
    assert_eq!(names(&wide), Column::ALL);
    assert_eq!(total(&wide), 80);
    let narrow = columns(60, 14, Sort::DropRate);
    assert!(total(&narrow) <= 60);
    assert!(!names(&narrow).contains(&Column::Passed));
    assert!(names(&narrow).contains(&Column::Exhausted));
    // The sorted column stays.
    let sorted = columns(50, 14, Sort::Passed);
    assert!(names(&sorted).contains(&Column::Passed));
    assert!(total(&sorted) <= 50);
    // A long IPv6 key is cut, not the rates.
    let v6 = columns(80, 43, Sort::DropRate);
    assert_eq!(names(&v6), Column::ALL);
    assert_eq!(total(&v6), 80);
}

fn render(app: &mut App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_owned())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_view_fits_80_by_24() {
    let mut app = App::new(
        "/run/limiter/limiter.sock".into(),
        Duration::from_secs(1),
        Sort::DropRate,
        None,
    );
    let start = Instant::now();
    let keys = |t: u64| {
        (0..30u64)
            .map(|i| key(&format!("198.18.{i}.10/32"), 100 * t, (30 - i) * 1000 * t))
            .collect::<Vec<_>>()
    };
    for t in 1..5 {
        app.apply(poll_at(
            start + Duration::from_secs(t),
            3000 * t,
            465_000 * t,
            keys(t),
        ));
    }
    let screen = render(&mut app, 80, 24);
    assert!(screen.contains("eth0 (native)"), "{screen}");
    assert!(screen.contains("DROP/S▼"), "{screen}");
    assert!(screen.contains("> 198.18.0.10/32"), "{screen}");
    assert!(screen.contains("sort: drop/s"), "{screen}");
    assert!(screen.contains("q quit"), "{screen}");
    assert!(screen.contains("465k/s"), "{screen}");
    app.on_key(KeyEvent::from(KeyCode::Char('s')));
    let screen = render(&mut app, 80, 24);
    assert!(
        screen.contains("PASS/S▼") && screen.contains("sort: pass/s"),
        "{screen}"
    );
    // Narrow and short: still the keys and their rates.
    let screen = render(&mut app, 50, 12);
    assert!(screen.contains("198.18.0.10/32"), "{screen}");
    assert!(screen.contains("DROP/S"), "{screen}");
}

#[test]
fn filter_and_reset_keys() {
    let mut app = App::new(
        "/run/limiter/limiter.sock".into(),
        Duration::from_secs(1),
        Sort::DropRate,
        None,
    );
    app.apply(poll_at(
        Instant::now(),
        0,
        0,
        vec![key("198.18.0.10/32", 1, 5), key("198.18.1.10/32", 1, 4)],
    ));
    app.on_key(KeyEvent::from(KeyCode::Char('/')));
    for c in "198.18.x".chars() {
        app.on_key(KeyEvent::from(KeyCode::Char(c)));
    }
    app.on_key(KeyEvent::from(KeyCode::Enter));
    assert!(matches!(&app.mode, Mode::Filter { error: Some(_), .. }));
    app.on_key(KeyEvent::from(KeyCode::Backspace));
    for c in "1.0/24".chars() {
        app.on_key(KeyEvent::from(KeyCode::Char(c)));
    }
    assert!(matches!(
        app.on_key(KeyEvent::from(KeyCode::Enter)),
        Action::Refresh
    ));
    assert_eq!(app.model.keys.len(), 1);
    assert_eq!(app.model.keys[0].info.key, "198.18.1.10/32");
    app.on_key(KeyEvent::from(KeyCode::Char('r')));
    assert!(matches!(&app.mode, Mode::Confirm { key } if key == "198.18.1.10/32"));
    assert!(
        matches!(app.on_key(KeyEvent::from(KeyCode::Char('y'))), Action::Reset(k) if k == "198.18.1.10/32")
    );
    app.on_key(KeyEvent::from(KeyCode::Char('/')));
    app.on_key(KeyEvent::from(KeyCode::Esc));
    assert_eq!(app.filter, None);
    assert!(matches!(
        app.on_key(KeyEvent::from(KeyCode::Char('q'))),
        Action::Quit
    ));
}
