//! `limiter top`: a live, full-screen view for an incident.
//!
//! Every `--interval` it asks the agent for its status and for the heaviest keys — the top few
//! hundred by dropped and by passed, merged — and turns successive answers into rates: per
//! second for the totals (with a sparkline of the last minute) and for every key seen in two
//! polls. A key seen for the first time shows no rate ("-") until the next refresh; a key outside
//! both top lists (a light one) is not shown at all.

mod app;
mod model;

pub use model::Sort;
mod render;
mod terminal;
#[cfg(test)]
mod tests;

use super::{print_json, ApiArgs};
use crate::exit::Failure;
use limiter_common::key::Prefix;
use limiter_common::maps::Counter;
use ratatui::crossterm::event::Event;
use serde::Serialize;
use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use model::{poll, sort_rows, KeyRow, Model};

use app::{Action, App};

use terminal::{spawn_input, spawn_reset, Poller, Screen, Update};

use render::draw;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Keys: s sort · / filter by address or prefix · ↑/↓ PgUp/PgDn Home/End select · \
r reset the selected key · q, Esc or Ctrl-C quit.

Rates are per second between two refreshes. Each refresh asks the agent for the top 500 keys by \
dropped and by passed (within the filter); lighter keys are not shown.

With --json, top takes one sample instead: it polls twice, --interval apart, prints the keys with \
their rates and exits.")]
pub struct TopArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Time between refreshes: `1s`, `500ms`, `2` (seconds).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Order at start (`s` cycles through the orders).
    #[arg(long, value_enum, default_value_t = Sort::DropRate)]
    pub sort: Sort,
    /// Only keys overlapping this address or prefix, at start (`/` changes it).
    #[arg(long, value_name = "KEY")]
    pub filter: Option<String>,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let (number, scale) = if let Some(n) = trimmed.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = trimmed.strip_suffix('s') {
        (n, 1.0)
    } else {
        (trimmed, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; expected 1s, 500ms or 2"))?;
    let interval = Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("'{text}' is not a duration; expected 1s, 500ms or 2"))?;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return Err(format!(
            "'{text}': the interval must be between 100ms and 1h"
        ));
    }
    Ok(interval)
}

pub async fn run(args: TopArgs) -> Result<(), Failure> {
    let filter = args
        .filter
        .as_deref()
        .map(|text| text.parse::<Prefix>())
        .transpose()
        .map_err(|err| Failure::Usage(err.to_string()))?;
    if args.api.json {
        return snapshot(&args, filter).await;
    }
    if !io::stdout().is_terminal() {
        return Err(Failure::Usage(
            "limiter top needs a terminal; for a one-off view use `limiter list --sort drops --top 20`, \
             or `limiter top --json` for one sample with rates"
                .to_owned(),
        ));
    }
    interactive(args, filter).await
}

// ---------------------------------------------------------------------------------------------
// `--json`: one sample.

#[derive(Serialize)]
struct Sample<'a> {
    interval_ms: u64,
    tracked_keys: u64,
    exhausted_keys: u64,
    passed: u64,
    dropped: u64,
    passed_per_s: Option<f64>,
    dropped_per_s: Option<f64>,
    keys: &'a [KeyRow],
}

async fn snapshot(args: &TopArgs, filter: Option<Prefix>) -> Result<(), Failure> {
    let client = args.api.client();
    let mut model = Model::new(args.interval);
    model.apply(poll(&client, filter.as_ref()).await?);
    tokio::time::sleep(args.interval).await;
    model.apply(poll(&client, filter.as_ref()).await?);
    sort_rows(&mut model.keys, args.sort);
    let round = |r: Option<f64>| r.map(|r| (r * 10.0).round() / 10.0);
    for row in &mut model.keys {
        row.passed_per_s = round(row.passed_per_s);
        row.dropped_per_s = round(row.dropped_per_s);
    }
    let status = model.status.as_ref().expect("applied a poll");
    let rates = model.total_rates();
    print_json(&Sample {
        interval_ms: args.interval.as_millis() as u64,
        tracked_keys: status.tracked_keys,
        exhausted_keys: status.exhausted_keys,
        passed: status.counters.get(Counter::Passed),
        dropped: status.counters.get(Counter::Dropped),
        passed_per_s: round(rates.map(|r| r.passed)),
        dropped_per_s: round(rates.map(|r| r.dropped)),
        keys: &model.keys,
    })
}

async fn interactive(args: TopArgs, filter: Option<Prefix>) -> Result<(), Failure> {
    let failed = |what: &str, err: io::Error| Failure::Other(format!("{what}: {err}"));
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| failed("signals", e))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| failed("signals", e))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| failed("signals", e))?;
    let mut app = App::new(
        args.api.api_socket.clone(),
        args.interval,
        args.sort,
        filter,
    );
    let mut poller = Poller {
        client: Arc::new(args.api.client()),
        in_flight: false,
        again: false,
    };
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let mut screen = Screen::enter().map_err(|e| failed("setting up the terminal", e))?;
    let mut events = spawn_input();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        screen
            .terminal
            .draw(|frame| draw(frame, &mut app))
            .map_err(|e| failed("drawing", e))?;
        let action = tokio::select! {
            _ = ticker.tick() => Action::Tick,
            Some(update) = updates.recv() => match update {
                Update::Poll { generation, result } => {
                    poller.in_flight = false;
                    if generation == app.generation {
                        match *result {
                            Ok(answer) => app.apply(answer),
                            Err(err) => app.model.error = Some(err),
                        }
                    }
                    if std::mem::take(&mut poller.again) {
                        Action::Refresh
                    } else {
                        Action::None
                    }
                }
                Update::Reset { key, result } => {
                    app.on_reset(&key, result);
                    Action::Refresh
                }
            },
            event = events.recv() => match event {
                Some(Ok(Event::Key(key))) => app.on_key(key),
                Some(Ok(_)) => Action::None,
                Some(Err(err)) => return Err(failed("reading the terminal", err)),
                None => return Err(Failure::Other("the terminal went away".to_owned())),
            },
            _ = terminate.recv() => Action::Quit,
            _ = hangup.recv() => Action::Quit,
            _ = interrupt.recv() => Action::Quit,
        };
        match action {
            Action::None => {}
            Action::Quit => break,
            Action::Tick if poller.in_flight => {}
            Action::Tick | Action::Refresh => poller.request(&app, &updates_tx),
            Action::Reset(key) => spawn_reset(&poller.client, key, &updates_tx),
        }
    }
    drop(screen);
    Ok(())
}
