//! `limiter top`: a live, full-screen view for an incident.
//!
//! Every `--interval` it asks the agent for its status and for the heaviest keys — the top few
//! hundred by dropped and by passed, merged — and turns successive answers into rates: per
//! second for the totals (with a sparkline of the last minute) and for every key seen in two
//! polls. A key seen for the first time shows no rate ("-") until the next refresh; a key outside
//! both top lists (a light one) is not shown at all.

use super::{print_json, ApiArgs};
use crate::api::{
    KeyInfo, ListQuery, ResetRequest, ResetResponse, SortBy, Status, KEYS_PATH, RESET_PATH,
    STATUS_PATH,
};
use crate::client::{ApiClient, ClientError};
use crate::exit::Failure;
use limiter_common::key::Prefix;
use limiter_common::maps::Counter;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Cell, HighlightSpacing, Paragraph, RenderDirection, Row, Sparkline, Table, TableState, Wrap,
};
use ratatui::{Frame, Terminal};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Stdout};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Keys asked for per order and refresh: enough to fill any screen and to rank by rate, few
/// enough that a map of a million keys is not shipped every second.
const KEYS_PER_POLL: usize = 500;
/// What the sparklines show.
const HISTORY: Duration = Duration::from_secs(60);
/// A poll or a reset that takes longer is given up and shown as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

/// How the keys are ordered, heaviest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Packets dropped per second.
    DropRate,
    /// Packets passed per second.
    PassRate,
    /// Packets dropped in total.
    Dropped,
    /// Packets passed in total.
    Passed,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::DropRate => Sort::PassRate,
            Sort::PassRate => Sort::Dropped,
            Sort::Dropped => Sort::Passed,
            Sort::Passed => Sort::DropRate,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::DropRate => "drop/s",
            Sort::PassRate => "pass/s",
            Sort::Dropped => "dropped",
            Sort::Passed => "passed",
        }
    }
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
// Data: polls and the rates between them.

/// One answer of the agent: its status and the keys asked for.
struct Poll {
    status: Status,
    keys: Vec<KeyInfo>,
    at: Instant,
}

async fn poll(client: &ApiClient, filter: Option<&Prefix>) -> Result<Poll, ClientError> {
    let query = |sort| ListQuery {
        exhausted: false,
        top: Some(KEYS_PER_POLL),
        sort: Some(sort),
        prefix: filter.map(Prefix::to_string),
    };
    let by_drops = query(SortBy::Drops);
    let by_passed = query(SortBy::Passed);
    let (status, dropping, passing) = tokio::try_join!(
        client.get::<Status>(STATUS_PATH, &()),
        client.get::<Vec<KeyInfo>>(KEYS_PATH, &by_drops),
        client.get::<Vec<KeyInfo>>(KEYS_PATH, &by_passed),
    )?;
    let at = Instant::now();
    let mut seen = std::collections::HashSet::new();
    let keys = dropping
        .into_iter()
        .chain(passing)
        .filter(|k| seen.insert(k.key.clone()))
        .collect();
    Ok(Poll { status, keys, at })
}

/// Per second from `before` to `now` over `secs`; none when the counter went back (the key was
/// evicted and came back, the agent lost its state) or no time passed.
fn per_second(before: u64, now: u64, secs: f64) -> Option<f64> {
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

/// A key as the view shows it.
#[derive(Clone, Debug, Serialize)]
struct KeyRow {
    #[serde(flatten)]
    info: KeyInfo,
    /// Per second since the previous poll that saw the key; none for a key seen first now.
    passed_per_s: Option<f64>,
    dropped_per_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Rates {
    passed: f64,
    dropped: f64,
}

/// Where a counter was at the last poll that counted, and the rates worked out then.
#[derive(Clone, Copy, Debug)]
struct Seen {
    at: Instant,
    passed: u64,
    dropped: u64,
    passed_per_s: Option<f64>,
    dropped_per_s: Option<f64>,
}

impl Seen {
    /// Rates from here to `(passed, dropped)` at `at`, and whether they make a new baseline.
    /// Polls closer than `min_gap` (one right after a filter change or a reset) keep the rates of
    /// the last real interval: over a few milliseconds they would be noise.
    fn advance(&self, at: Instant, passed: u64, dropped: u64, min_gap: Duration) -> (Seen, bool) {
        let gap = at.saturating_duration_since(self.at);
        if gap < min_gap && passed >= self.passed && dropped >= self.dropped {
            return (*self, false);
        }
        let secs = gap.as_secs_f64();
        let next = Seen {
            at,
            passed,
            dropped,
            passed_per_s: per_second(self.passed, passed, secs),
            dropped_per_s: per_second(self.dropped, dropped, secs),
        };
        (next, true)
    }

    fn first(at: Instant, passed: u64, dropped: u64) -> Seen {
        Seen {
            at,
            passed,
            dropped,
            passed_per_s: None,
            dropped_per_s: None,
        }
    }
}

/// What the agent said last, and the rates worked out from what it said before.
struct Model {
    min_gap: Duration,
    /// Keys not seen for this long are forgotten: a rate over a longer gap says little.
    forget_after: Duration,
    status: Option<Status>,
    keys: Vec<KeyRow>,
    totals: Option<Seen>,
    /// Total rates of each poll over the last minute, oldest first.
    history: VecDeque<(Instant, Rates)>,
    seen: HashMap<String, Seen>,
    last_update: Option<Instant>,
    /// Why the last poll failed, until one succeeds.
    error: Option<String>,
}

impl Model {
    fn new(interval: Duration) -> Model {
        Model {
            min_gap: (interval / 2).max(Duration::from_millis(50)),
            forget_after: (interval * 5).max(Duration::from_secs(10)),
            status: None,
            keys: Vec::new(),
            totals: None,
            history: VecDeque::new(),
            seen: HashMap::new(),
            last_update: None,
            error: None,
        }
    }

    fn apply(&mut self, poll: Poll) {
        let at = poll.at;
        let (passed, dropped) = (
            poll.status.counters.get(Counter::Passed),
            poll.status.counters.get(Counter::Dropped),
        );
        self.totals = Some(match self.totals {
            None => Seen::first(at, passed, dropped),
            Some(before) => {
                let (next, counted) = before.advance(at, passed, dropped, self.min_gap);
                if counted {
                    if let (Some(p), Some(d)) = (next.passed_per_s, next.dropped_per_s) {
                        self.history.push_back((
                            at,
                            Rates {
                                passed: p,
                                dropped: d,
                            },
                        ));
                    }
                }
                next
            }
        });
        while self
            .history
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > HISTORY)
        {
            self.history.pop_front();
        }
        self.keys = poll
            .keys
            .into_iter()
            .map(|info| {
                let seen = match self.seen.get(&info.key) {
                    None => Seen::first(at, info.passed, info.dropped),
                    Some(before) => {
                        before
                            .advance(at, info.passed, info.dropped, self.min_gap)
                            .0
                    }
                };
                self.seen.insert(info.key.clone(), seen);
                KeyRow {
                    info,
                    passed_per_s: seen.passed_per_s,
                    dropped_per_s: seen.dropped_per_s,
                }
            })
            .collect();
        let forget_after = self.forget_after;
        self.seen
            .retain(|_, seen| at.saturating_duration_since(seen.at) <= forget_after);
        self.status = Some(poll.status);
        self.last_update = Some(at);
        self.error = None;
    }

    fn total_rates(&self) -> Option<Rates> {
        let totals = self.totals?;
        Some(Rates {
            passed: totals.passed_per_s?,
            dropped: totals.dropped_per_s?,
        })
    }
}

/// Heaviest first; a key without a rate yet after every key with one; ties by key.
fn sort_rows(rows: &mut [KeyRow], sort: Sort) {
    let rate = |r: Option<f64>| r.unwrap_or(-1.0);
    rows.sort_by(|a, b| {
        let order = match sort {
            Sort::DropRate => rate(b.dropped_per_s)
                .total_cmp(&rate(a.dropped_per_s))
                .then(b.info.dropped.cmp(&a.info.dropped)),
            Sort::PassRate => rate(b.passed_per_s)
                .total_cmp(&rate(a.passed_per_s))
                .then(b.info.passed.cmp(&a.info.passed)),
            Sort::Dropped => b.info.dropped.cmp(&a.info.dropped),
            Sort::Passed => b.info.passed.cmp(&a.info.passed),
        };
        order.then_with(|| a.info.key.cmp(&b.info.key))
    });
}

fn in_filter(filter: Option<&Prefix>, key: &str) -> bool {
    filter.is_none_or(|f| key.parse::<Prefix>().is_ok_and(|k| k.overlaps(f)))
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

// ---------------------------------------------------------------------------------------------
// The interactive view: state and keys.

enum Mode {
    Normal,
    /// Typing a filter after `/`.
    Filter {
        input: String,
        error: Option<String>,
    },
    /// `r` asked "reset KEY? (y/n)".
    Confirm {
        key: String,
    },
}

/// A line for the operator: what just happened.
struct Note {
    text: String,
    error: bool,
    at: Instant,
}

impl Note {
    /// How long a note stays on screen.
    const SHOWN: Duration = Duration::from_secs(10);

    fn new(text: String, error: bool) -> Note {
        Note {
            text,
            error,
            at: Instant::now(),
        }
    }
}

enum Action {
    None,
    Quit,
    /// Time for the next poll, unless one is still under way (a slow agent is not piled on).
    Tick,
    /// Poll now, or as soon as the poll under way is done (the filter changed, a key was reset).
    Refresh,
    Reset(String),
}

struct App {
    socket: PathBuf,
    interval: Duration,
    model: Model,
    sort: Sort,
    filter: Option<Prefix>,
    /// Bumped when the filter changes: answers to older polls are dropped.
    generation: u64,
    mode: Mode,
    table: TableState,
    /// The key the operator moved to; none: the selection stays at its row, whatever key is there.
    selected_key: Option<String>,
    /// Rows of keys the last drawing had room for (for PgUp/PgDn).
    page: usize,
    note: Option<Note>,
}

impl App {
    fn new(socket: PathBuf, interval: Duration, sort: Sort, filter: Option<Prefix>) -> App {
        App {
            socket,
            interval,
            model: Model::new(interval),
            sort,
            filter,
            generation: 0,
            mode: Mode::Normal,
            table: TableState::new().with_selected(Some(0)),
            selected_key: None,
            page: 10,
            note: None,
        }
    }

    fn apply(&mut self, poll: Poll) {
        self.model.apply(poll);
        self.arrange();
    }

    /// Sorts and filters the rows and puts the selection back on its key (or its row).
    fn arrange(&mut self) {
        let filter = self.filter;
        self.model
            .keys
            .retain(|row| in_filter(filter.as_ref(), &row.info.key));
        sort_rows(&mut self.model.keys, self.sort);
        let rows = &self.model.keys;
        if rows.is_empty() {
            self.table.select(None);
            return;
        }
        let by_key = self
            .selected_key
            .as_ref()
            .and_then(|key| rows.iter().position(|r| &r.info.key == key));
        if by_key.is_none() {
            self.selected_key = None;
        }
        let index =
            by_key.unwrap_or_else(|| self.table.selected().unwrap_or(0).min(rows.len() - 1));
        self.table.select(Some(index));
    }

    fn selected(&self) -> Option<&KeyRow> {
        self.model.keys.get(self.table.selected()?)
    }

    fn move_selection(&mut self, by: isize) {
        let count = self.model.keys.len();
        if count == 0 {
            return;
        }
        let current = self.table.selected().unwrap_or(0) as isize;
        let index = (current + by).clamp(0, count as isize - 1) as usize;
        self.table.select(Some(index));
        self.selected_key = Some(self.model.keys[index].info.key.clone());
    }

    fn set_filter(&mut self, filter: Option<Prefix>) -> Action {
        self.note = None;
        if filter == self.filter {
            return Action::None;
        }
        self.filter = filter;
        self.generation += 1;
        self.arrange();
        Action::Refresh
    }

    fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match &mut self.mode {
            Mode::Filter { input, error } => match key.code {
                KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    self.set_filter(None)
                }
                KeyCode::Enter => {
                    let text = input.trim();
                    if text.is_empty() {
                        self.mode = Mode::Normal;
                        return self.set_filter(None);
                    }
                    match text.parse::<Prefix>() {
                        Ok(prefix) => {
                            self.mode = Mode::Normal;
                            self.set_filter(Some(prefix))
                        }
                        Err(err) => {
                            // The help line shows examples; the reason is enough here.
                            let reason = err.to_string();
                            let reason = reason.split("; expected").next().unwrap_or_default();
                            *error = Some(reason.to_owned());
                            Action::None
                        }
                    }
                }
                KeyCode::Backspace => {
                    input.pop();
                    *error = None;
                    Action::None
                }
                KeyCode::Char(c) if !c.is_control() && input.len() < 64 => {
                    input.push(c);
                    *error = None;
                    Action::None
                }
                _ => Action::None,
            },
            Mode::Confirm { key: target } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    let target = std::mem::take(target);
                    self.mode = Mode::Normal;
                    self.note = Some(Note::new(format!("resetting {target} …"), false));
                    Action::Reset(target)
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Char('q') | KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    self.note = Some(Note::new("reset cancelled".to_owned(), false));
                    Action::None
                }
                _ => Action::None,
            },
            Mode::Normal => {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
                    KeyCode::Char('s') => {
                        self.sort = self.sort.next();
                        self.arrange();
                    }
                    KeyCode::Char('/') => {
                        self.note = None;
                        self.mode = Mode::Filter {
                            input: self.filter.map(|f| f.to_string()).unwrap_or_default(),
                            error: None,
                        };
                    }
                    KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
                    KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
                    KeyCode::PageUp => self.move_selection(-(self.page.max(1) as isize)),
                    KeyCode::PageDown => self.move_selection(self.page.max(1) as isize),
                    KeyCode::Home | KeyCode::Char('g') => {
                        // Back to following the top row, whichever key is there.
                        self.selected_key = None;
                        self.table.select(Some(0));
                        self.arrange();
                    }
                    KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
                    KeyCode::Char('r') => match self.selected().map(|row| row.info.key.clone()) {
                        Some(key) => {
                            self.note = None;
                            self.mode = Mode::Confirm { key }
                        }
                        None => {
                            self.note = Some(Note::new("no key selected to reset".to_owned(), true))
                        }
                    },
                    _ => {}
                }
                Action::None
            }
        }
    }

    fn on_reset(&mut self, key: &str, result: Result<ResetResponse, String>) {
        self.note = Some(match result {
            Ok(answer) if answer.reset > 0 => {
                Note::new(format!("reset {key} to a full bucket"), false)
            }
            Ok(_) => Note::new(
                format!("{key} is not tracked any more; nothing to reset"),
                true,
            ),
            Err(err) => Note::new(format!("reset {key} failed: {err}"), true),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The terminal and the event loop.

/// Puts the terminal back as it was: cooked mode, main screen, a cursor.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Restores the terminal when dropped: on quit, on an error, and while unwinding.
struct RestoreGuard;

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The full screen, for as long as it lives.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    _restore: RestoreGuard,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        // A panic restores the terminal before its message is printed, so the message is seen.
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        let restore = RestoreGuard;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        Ok(Screen {
            terminal,
            _restore: restore,
        })
    }
}

enum Update {
    Poll {
        generation: u64,
        /// Boxed: a `Status` is large, the other updates small.
        result: Box<Result<Poll, String>>,
    },
    Reset {
        key: String,
        result: Result<ResetResponse, String>,
    },
}

fn request_failed(err: ClientError) -> String {
    err.to_string()
}

fn timed_out() -> String {
    format!(
        "the agent did not answer within {} s",
        REQUEST_TIMEOUT.as_secs()
    )
}

/// Polls on a task of its own, so keys are handled while the agent answers.
fn spawn_poll(
    client: &Arc<ApiClient>,
    filter: Option<Prefix>,
    generation: u64,
    updates: &mpsc::UnboundedSender<Update>,
) {
    let client = Arc::clone(client);
    let updates = updates.clone();
    tokio::spawn(async move {
        let result =
            match tokio::time::timeout(REQUEST_TIMEOUT, poll(&client, filter.as_ref())).await {
                Ok(answer) => answer.map_err(request_failed),
                Err(_) => Err(timed_out()),
            };
        let _ = updates.send(Update::Poll {
            generation,
            result: Box::new(result),
        });
    });
}

fn spawn_reset(client: &Arc<ApiClient>, key: String, updates: &mpsc::UnboundedSender<Update>) {
    let client = Arc::clone(client);
    let updates = updates.clone();
    tokio::spawn(async move {
        let request = ResetRequest {
            keys: vec![key.clone()],
            ..ResetRequest::default()
        };
        let result = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.post::<ResetResponse>(RESET_PATH, &request),
        )
        .await
        {
            Ok(answer) => answer.map_err(request_failed),
            Err(_) => Err(timed_out()),
        };
        let _ = updates.send(Update::Reset { key, result });
    });
}

/// Reads the terminal on a thread of its own (crossterm's reads block).
fn spawn_input() -> mpsc::UnboundedReceiver<io::Result<Event>> {
    let (events, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => {
                let read = event::read();
                let failed = read.is_err();
                if events.send(read).is_err() || failed {
                    return;
                }
            }
            Ok(false) if events.is_closed() => return,
            Ok(false) => {}
            Err(err) => {
                let _ = events.send(Err(err));
                return;
            }
        }
    });
    receiver
}

/// At most one poll at a time; a refresh asked for meanwhile runs when it is done.
struct Poller {
    client: Arc<ApiClient>,
    in_flight: bool,
    again: bool,
}

impl Poller {
    fn request(&mut self, app: &App, updates: &mpsc::UnboundedSender<Update>) {
        if self.in_flight {
            self.again = true;
        } else {
            self.in_flight = true;
            spawn_poll(&self.client, app.filter, app.generation, updates);
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Drawing.

const DIM: Style = Style::new().fg(Color::DarkGray);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const RED: Style = Style::new().fg(Color::Red);
const GREEN: Style = Style::new().fg(Color::Green);
const YELLOW: Style = Style::new().fg(Color::Yellow);

/// A count for a narrow column: exact below 10 000, then 12.3k, 4.56M …
fn human_count(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else {
        scaled(n as f64)
    }
}

/// A rate per second: 0, 0.5, 37, 1234, 12.3k …
fn human_rate(rate: f64) -> String {
    if rate < 0.05 {
        "0".to_owned()
    } else if rate < 9.95 {
        format!("{rate:.1}")
    } else if rate < 9_999.5 {
        format!("{rate:.0}")
    } else {
        scaled(rate)
    }
}

fn scaled(value: f64) -> String {
    let (value, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| value >= *scale)
        .map(|(scale, unit)| (value / scale, unit))
        .unwrap_or((value, ""));
    if value < 9.995 {
        format!("{value:.2}{unit}")
    } else if value < 99.95 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), human_rate)
}

/// `text` cut to `width` characters, with "…" where it was cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Like [`fit`], keeping the end (a path's file name).
fn fit_start(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let tail: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

/// A key cut to `width`, keeping its prefix length: `2001:db8:1234:…/64`.
fn fit_key(key: &str, width: usize) -> String {
    if key.chars().count() <= width {
        return key.to_owned();
    }
    match key.rsplit_once('/') {
        Some((addr, len)) if width > len.len() + 2 => {
            let keep = width - len.len() - 2;
            let head: String = addr.chars().take(keep).collect();
            format!("{head}…/{len}")
        }
        _ => fit(key, width),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Key,
    DropRate,
    PassRate,
    Dropped,
    Passed,
    Remaining,
    Exhausted,
    Rule,
}

impl Column {
    /// In the order shown.
    const ALL: [Column; 8] = [
        Column::Key,
        Column::DropRate,
        Column::PassRate,
        Column::Dropped,
        Column::Passed,
        Column::Remaining,
        Column::Exhausted,
        Column::Rule,
    ];
    /// Most important first: the ones at the end go first when the terminal is narrow.
    const BY_IMPORTANCE: [Column; 8] = [
        Column::Key,
        Column::DropRate,
        Column::PassRate,
        Column::Exhausted,
        Column::Remaining,
        Column::Rule,
        Column::Dropped,
        Column::Passed,
    ];

    fn title(self) -> &'static str {
        match self {
            Column::Key => "KEY",
            Column::DropRate => "DROP/S",
            Column::PassRate => "PASS/S",
            Column::Dropped => "DROPPED",
            Column::Passed => "PASSED",
            Column::Remaining => "REMAINING",
            Column::Exhausted => "EXH",
            Column::Rule => "RULE",
        }
    }

    fn sort(self) -> Option<Sort> {
        match self {
            Column::DropRate => Some(Sort::DropRate),
            Column::PassRate => Some(Sort::PassRate),
            Column::Dropped => Some(Sort::Dropped),
            Column::Passed => Some(Sort::Passed),
            _ => None,
        }
    }

    /// Narrowest width; the key and the rule take what is left over.
    fn min_width(self) -> u16 {
        match self {
            Column::Key => 15,
            Column::DropRate | Column::PassRate | Column::Passed => 7,
            Column::Dropped => 8,
            Column::Remaining => 11,
            Column::Exhausted => 3,
            Column::Rule => 6,
        }
    }

    fn numeric(self) -> bool {
        !matches!(self, Column::Key | Column::Rule | Column::Exhausted)
    }
}

/// Width of the selection marker in front of every row.
const MARKER: u16 = 2;

/// The columns that fit in `width`, with their widths, in the order shown. The least important
/// go first when it is narrow; the sorted column stays. The key gets room up to its longest.
fn columns(width: u16, longest_key: u16, sort: Sort) -> Vec<(Column, u16)> {
    let width = width.saturating_sub(MARKER);
    let key_min = longest_key.clamp(3, Column::Key.min_width());
    let mut kept: Vec<Column> = Column::BY_IMPORTANCE.to_vec();
    let needed = |kept: &[Column]| -> u16 {
        kept.iter()
            .map(|c| {
                if *c == Column::Key {
                    key_min
                } else {
                    c.min_width()
                }
            })
            .sum::<u16>()
            + kept.len().saturating_sub(1) as u16
    };
    while kept.len() > 1 && needed(&kept) > width {
        let drop = kept
            .iter()
            .rposition(|c| c.sort() != Some(sort) && *c != Column::Key)
            .unwrap_or(kept.len() - 1);
        kept.remove(drop);
    }
    let mut spare = width.saturating_sub(needed(&kept));
    let key_width = key_min + spare.min(longest_key.saturating_sub(key_min));
    spare -= key_width - key_min;
    Column::ALL
        .into_iter()
        .filter(|c| kept.contains(c))
        .map(|c| match c {
            Column::Key => (c, key_width),
            Column::Rule => (c, c.min_width() + spare),
            _ => (c, c.min_width()),
        })
        .collect()
}

fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    let spark_height = match area.height {
        20.. => 4,
        14..=19 => 2,
        _ => 0,
    };
    let message = message_line(app);
    let message_height = if message.as_ref().is_some_and(|(_, long)| *long) {
        2
    } else {
        1
    };
    let [header, sparks, table, message_area, help] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(spark_height),
        Constraint::Min(1),
        Constraint::Length(message_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, app);
    if spark_height > 0 {
        draw_sparklines(frame, sparks, &app.model);
    }
    draw_table(frame, table, app);
    if let Some((line, _)) = message {
        frame.render_widget(
            Paragraph::new(line).wrap(Wrap { trim: false }),
            message_area,
        );
    }
    frame.render_widget(Paragraph::new(help_line(app, help.width as usize)), help);
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
    let width = area.width as usize;
    let model = &app.model;
    let every = format!("every {}", human_interval(app.interval));
    let right = match (model.error.is_some(), model.last_update) {
        (true, Some(at)) => format!("stale {}s · {every}", at.elapsed().as_secs()),
        _ => every,
    };
    let right_style = if model.error.is_some() { RED } else { DIM };
    let mut first = vec![Span::styled("limiter top", BOLD)];
    let mut second = Line::default();
    match &model.status {
        None => first.push(Span::raw(format!(" · agent on {}", app.socket.display()))),
        Some(status) => {
            let interfaces: Vec<String> = status
                .interfaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.mode))
                .collect();
            first.push(Span::raw(format!(" · {}", interfaces.join(", "))));
            let used: usize = first.iter().map(|s| s.width()).sum();
            // " · ", the source, two spaces, the right-hand side.
            let room = width.saturating_sub(used + 3 + 2 + right.chars().count());
            first.push(Span::styled(" · ", DIM));
            first.push(Span::raw(fit_start(&status.config.source, room)));
            if status.dry_run {
                first.push(Span::styled(
                    " DRY RUN",
                    YELLOW.add_modifier(Modifier::BOLD),
                ));
            }
            second = totals_line(status, model.total_rates(), width);
        }
    }
    let [line1, line2] = Layout::vertical([Constraint::Length(1); 2]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(first)), line1);
    frame.render_widget(
        Paragraph::new(Span::styled(right, right_style)).alignment(Alignment::Right),
        line1,
    );
    frame.render_widget(Paragraph::new(second), line2);
}

/// Keys, exhausted keys and the totals with their rates: the most detailed form that fits.
fn totals_line(status: &Status, rates: Option<Rates>, width: usize) -> Line<'static> {
    let dim = |t: &str| Span::styled(t.to_owned(), DIM);
    let sep = || dim(" │ ");
    let exhausted_style = if status.exhausted_keys > 0 {
        RED.add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    let rate =
        |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{}/s", human_rate(r)));
    let passed_rate = Span::styled(
        rate(rates.map(|r| r.passed)),
        GREEN.add_modifier(Modifier::BOLD),
    );
    let dropped_rate = Span::styled(
        rate(rates.map(|r| r.dropped)),
        RED.add_modifier(Modifier::BOLD),
    );
    let tracked = Span::styled(human_count(status.tracked_keys), BOLD);
    let exhausted = Span::styled(human_count(status.exhausted_keys), exhausted_style);
    let mut candidates = vec![
        vec![
            dim("keys "),
            tracked.clone(),
            dim(" tracked, "),
            exhausted.clone(),
            dim(" exhausted"),
            sep(),
            dim("passed "),
            Span::raw(human_count(status.counters.get(Counter::Passed))),
            dim(" ("),
            passed_rate.clone(),
            dim(")"),
            sep(),
            dim("dropped "),
            Span::raw(human_count(status.counters.get(Counter::Dropped))),
            dim(" ("),
            dropped_rate.clone(),
            dim(")"),
        ],
        vec![
            tracked.clone(),
            dim(" keys, "),
            exhausted.clone(),
            dim(" exhausted"),
            sep(),
            dim("passed "),
            passed_rate.clone(),
            sep(),
            dim("dropped "),
            dropped_rate.clone(),
        ],
        vec![
            exhausted,
            dim("/"),
            tracked,
            dim(" exh"),
            sep(),
            dim("pass "),
            passed_rate,
            sep(),
            dim("drop "),
            dropped_rate,
        ],
    ];
    if status.dry_run {
        for spans in &mut candidates[..2] {
            spans.push(sep());
            spans.push(dim("would drop "));
            spans.push(Span::styled(
                human_count(status.counters.get(Counter::WouldDrop)),
                YELLOW,
            ));
        }
    }
    pick_fitting(candidates, width)
}

/// The first of `candidates` that fits in `width`, else the last.
fn pick_fitting(candidates: Vec<Vec<Span<'static>>>, width: usize) -> Line<'static> {
    let count = candidates.len();
    candidates
        .into_iter()
        .enumerate()
        .find(|(i, spans)| i + 1 == count || spans.iter().map(Span::width).sum::<usize>() <= width)
        .map(|(_, spans)| Line::from(spans))
        .unwrap_or_default()
}

fn human_interval(interval: Duration) -> String {
    let ms = interval.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", interval.as_secs_f64())
    }
}

fn draw_sparklines(frame: &mut Frame, area: Rect, model: &Model) {
    const LABEL: u16 = 16;
    let halves = Layout::vertical([Constraint::Ratio(1, 2); 2]).areas::<2>(area);
    /// A name, a colour and the rate drawn.
    type Series = (&'static str, Style, fn(&Rates) -> f64);
    let series: [Series; 2] = [
        ("drop/s", RED, |r| r.dropped),
        ("pass/s", GREEN, |r| r.passed),
    ];
    let span =
        model
            .history
            .front()
            .zip(model.history.back())
            .map_or(0, |((first, _), (last, _))| {
                last.saturating_duration_since(*first).as_secs_f64().round() as u64
            });
    for ((name, style, value), half) in series.into_iter().zip(halves) {
        let [label, chart] =
            Layout::horizontal([Constraint::Length(LABEL), Constraint::Min(1)]).areas(half);
        // Newest on the right: the widget draws its first value at the right edge.
        let data: Vec<u64> = model
            .history
            .iter()
            .rev()
            .take(chart.width as usize)
            .map(|(_, r)| value(r).round() as u64)
            .collect();
        let current = model.history.back().map(|(_, r)| value(r));
        let peak = data.iter().copied().max().unwrap_or(0);
        let mut lines = vec![Line::from(vec![
            Span::styled(format!("{name} "), DIM),
            Span::styled(
                format!("{:>8}", current.map_or("-".to_owned(), human_rate)),
                style.add_modifier(Modifier::BOLD),
            ),
        ])];
        if label.height > 1 && !data.is_empty() {
            lines.push(Line::from(Span::styled(
                format!(
                    "{:>4} max {:>6}",
                    if span > 0 {
                        format!("{span}s")
                    } else {
                        String::new()
                    },
                    human_rate(peak as f64)
                ),
                DIM,
            )));
        }
        frame.render_widget(Paragraph::new(lines), label);
        frame.render_widget(
            Sparkline::default()
                .data(data)
                .max(peak.max(1))
                .direction(RenderDirection::RightToLeft)
                .style(style),
            chart,
        );
    }
}

fn draw_table(frame: &mut Frame, area: Rect, app: &mut App) {
    let longest_key = app
        .model
        .keys
        .iter()
        .map(|r| r.info.key.chars().count())
        .max()
        .unwrap_or(14)
        .max(14) as u16;
    let columns = columns(area.width, longest_key, app.sort);
    let header = Row::new(columns.iter().map(|(column, _)| {
        let sorted = column.sort() == Some(app.sort);
        let title = if sorted {
            format!("{}▼", column.title())
        } else {
            column.title().to_owned()
        };
        let style = if sorted {
            BOLD.add_modifier(Modifier::UNDERLINED)
        } else {
            BOLD
        };
        let line = Line::styled(title, style);
        Cell::from(if column.numeric() {
            line.alignment(Alignment::Right)
        } else {
            line
        })
    }));
    let rows = app.model.keys.iter().map(|row| {
        Row::new(columns.iter().map(|(column, width)| {
            let k = &row.info;
            let (text, style) = match column {
                Column::Key => (fit_key(&k.key, *width as usize), Style::new()),
                Column::DropRate => (
                    rate_text(row.dropped_per_s),
                    if row.dropped_per_s.unwrap_or(0.0) >= 0.05 {
                        RED
                    } else {
                        Style::new()
                    },
                ),
                Column::PassRate => (rate_text(row.passed_per_s), Style::new()),
                Column::Dropped => (human_count(k.dropped), Style::new()),
                Column::Passed => (human_count(k.passed), Style::new()),
                Column::Remaining => (
                    format!("{}/{}", human_count(k.remaining), human_count(k.burst)),
                    Style::new(),
                ),
                Column::Exhausted => {
                    if k.exhausted {
                        ("yes".to_owned(), RED.add_modifier(Modifier::BOLD))
                    } else {
                        ("no".to_owned(), DIM)
                    }
                }
                Column::Rule => (fit(&k.rule, *width as usize), DIM),
            };
            let line = Line::styled(text, style);
            Cell::from(if column.numeric() {
                line.alignment(Alignment::Right)
            } else {
                line
            })
        }))
    });
    let table = Table::new(rows, columns.iter().map(|(_, w)| Constraint::Length(*w)))
        .header(header)
        .column_spacing(1)
        .highlight_symbol("> ")
        .highlight_spacing(HighlightSpacing::Always)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    app.page = area.height.saturating_sub(1) as usize;
    frame.render_stateful_widget(table, area, &mut app.table);
    if app.model.keys.is_empty() && area.height > 1 {
        let text = if app.model.status.is_none() {
            if app.model.error.is_some() {
                "no answer from the agent yet; retrying".to_owned()
            } else {
                format!("asking the agent on {} …", app.socket.display())
            }
        } else if let Some(filter) = app.filter {
            format!("no tracked key overlaps {filter}")
        } else {
            "no key is tracked yet: no packet has come through a limit".to_owned()
        };
        let below = Rect {
            y: area.y + 1,
            height: area.height - 1,
            ..area
        };
        frame.render_widget(
            Paragraph::new(Span::styled(format!("  {text}"), DIM)),
            below,
        );
    }
}

/// The line above the key help: a question, the filter being typed, an error or a note. The
/// flag says whether it may need two lines.
fn message_line(app: &App) -> Option<(Line<'static>, bool)> {
    match &app.mode {
        Mode::Confirm { key } => Some((
            Line::styled(
                format!("reset {key}? (y/n)"),
                YELLOW.add_modifier(Modifier::BOLD),
            ),
            false,
        )),
        Mode::Filter { input, error } => {
            let mut spans = vec![
                Span::styled("filter: ", BOLD),
                Span::raw(input.clone()),
                Span::styled("▏", BOLD),
            ];
            if let Some(error) = error {
                spans.push(Span::styled(format!("  {error}"), RED));
            }
            Some((Line::from(spans), error.is_some()))
        }
        Mode::Normal => {
            if let Some(error) = &app.model.error {
                return Some((
                    Line::styled(
                        format!(
                            "agent unreachable, retrying every {}: {error}",
                            human_interval(app.interval)
                        ),
                        RED.add_modifier(Modifier::BOLD),
                    ),
                    true,
                ));
            }
            app.note
                .as_ref()
                .filter(|note| note.at.elapsed() < Note::SHOWN)
                .map(|note| {
                    let style = if note.error { RED } else { GREEN };
                    (Line::styled(note.text.clone(), style), note.error)
                })
        }
    }
}

fn help_line(app: &App, width: usize) -> Line<'static> {
    let key = |k: &str| Span::styled(k.to_owned(), BOLD);
    let text = |t: &str| Span::styled(t.to_owned(), DIM);
    match &app.mode {
        Mode::Confirm { .. } => Line::from(vec![
            key("y"),
            text(" reset to a full bucket · "),
            key("n"),
            text(" cancel"),
        ]),
        Mode::Filter { .. } => Line::from(vec![
            key("Enter"),
            text(" apply · "),
            key("Esc"),
            text(" clear · an address or prefix: 198.18.0.7, 198.18.0.0/24"),
        ]),
        Mode::Normal => {
            let filter = match app.filter {
                Some(f) => {
                    Span::styled(format!("filter: {f}"), YELLOW.add_modifier(Modifier::BOLD))
                }
                None => text("filter"),
            };
            let sort = Span::styled(app.sort.label(), BOLD);
            pick_fitting(
                vec![
                    vec![
                        key("s"),
                        Span::raw(" sort: "),
                        sort.clone(),
                        text(" · "),
                        key("/"),
                        Span::raw(" "),
                        filter.clone(),
                        text(" · "),
                        key("↑↓"),
                        text(" select · "),
                        key("r"),
                        text(" reset · "),
                        key("q"),
                        text(" quit"),
                    ],
                    vec![
                        key("s"),
                        Span::raw(" sort: "),
                        sort.clone(),
                        text(" · "),
                        key("/"),
                        Span::raw(" "),
                        filter.clone(),
                        text(" · "),
                        key("r"),
                        text(" reset · "),
                        key("q"),
                        text(" quit"),
                    ],
                    vec![
                        key("s"),
                        Span::raw(" "),
                        sort,
                        text(" "),
                        key("/"),
                        Span::raw(" "),
                        filter,
                        text(" "),
                        key("r"),
                        text(" "),
                        key("q"),
                    ],
                ],
                width,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigInfo, InterfaceInfo};
    use ratatui::backend::TestBackend;

    fn key(name: &str, passed: u64, dropped: u64) -> KeyInfo {
        KeyInfo {
            key: name.to_owned(),
            rule: "default".to_owned(),
            rate: 100,
            burst: 200,
            remaining: 0,
            exhausted: dropped > 0,
            retry_after_ms: 10,
            passed,
            dropped,
            would_drop: 0,
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
        assert_eq!(human_count(9_999), "9999");
        assert_eq!(human_count(12_345), "12.3k");
        assert_eq!(human_count(1_234_567), "1.23M");
        assert_eq!(human_count(999_999_999), "1000M");
        assert_eq!(human_rate(0.0), "0");
        assert_eq!(human_rate(0.5), "0.5");
        assert_eq!(human_rate(99.6), "100");
        assert_eq!(human_rate(250_123.0), "250k");
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
}
