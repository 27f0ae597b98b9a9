//! The terminal and the tasks around the app: raw mode, polls and resets in the background, input.

use crate::api::{ResetRequest, ResetResponse, RESET_PATH};
use crate::client::{ApiClient, ClientError};
use limiter_common::key::Prefix;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::Terminal;
use std::io::{self, Stdout};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::model::{poll, Poll};

use super::app::App;

/// A poll or a reset that takes longer is given up and shown as an error.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The terminal and the event loop.

/// Puts the terminal back as it was: cooked mode, main screen, a cursor.
pub(super) fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Restores the terminal when dropped: on quit, on an error, and while unwinding.
pub(super) struct RestoreGuard;

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The full screen, for as long as it lives.
pub(super) struct Screen {
    pub(super) terminal: Terminal<CrosstermBackend<Stdout>>,
    pub(super) _restore: RestoreGuard,
}

impl Screen {
    pub(super) fn enter() -> io::Result<Screen> {
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

pub(super) enum Update {
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

pub(super) fn request_failed(err: ClientError) -> String {
    err.to_string()
}

pub(super) fn timed_out() -> String {
    format!(
        "the agent did not answer within {} s",
        REQUEST_TIMEOUT.as_secs()
    )
}

/// Polls on a task of its own, so keys are handled while the agent answers.
pub(super) fn spawn_poll(
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

pub(super) fn spawn_reset(
    client: &Arc<ApiClient>,
    key: String,
    updates: &mpsc::UnboundedSender<Update>,
) {
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
pub(super) fn spawn_input() -> mpsc::UnboundedReceiver<io::Result<Event>> {
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
pub(super) struct Poller {
    pub(super) client: Arc<ApiClient>,
    pub(super) in_flight: bool,
    pub(super) again: bool,
}

impl Poller {
    pub(super) fn request(&mut self, app: &App, updates: &mpsc::UnboundedSender<Update>) {
        if self.in_flight {
            self.again = true;
        } else {
            self.in_flight = true;
            spawn_poll(&self.client, app.filter, app.generation, updates);
        }
    }
}
