//! The interactive state: selection, sort, filter, the line being typed, notes; keys in, actions out.

use crate::api::ResetResponse;
use limiter_common::key::Prefix;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::widgets::TableState;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::model::{in_filter, sort_rows, KeyRow, Model, Poll, Sort};

// ---------------------------------------------------------------------------------------------
// The interactive view: state and keys.

pub(super) enum Mode {
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
pub(super) struct Note {
    pub(super) text: String,
    pub(super) error: bool,
    pub(super) at: Instant,
}

impl Note {
    /// How long a note stays on screen.
    pub(super) const SHOWN: Duration = Duration::from_secs(10);

    pub(super) fn new(text: String, error: bool) -> Note {
        Note {
            text,
            error,
            at: Instant::now(),
        }
    }
}

pub(super) enum Action {
    None,
    Quit,
    /// Time for the next poll, unless one is still under way (a slow agent is not piled on).
    Tick,
    /// Poll now, or as soon as the poll under way is done (the filter changed, a key was reset).
    Refresh,
    Reset(String),
}

pub(super) struct App {
    pub(super) socket: PathBuf,
    pub(super) interval: Duration,
    pub(super) model: Model,
    pub(super) sort: Sort,
    pub(super) filter: Option<Prefix>,
    /// Bumped when the filter changes: answers to older polls are dropped.
    pub(super) generation: u64,
    pub(super) mode: Mode,
    pub(super) table: TableState,
    /// The key the operator moved to; none: the selection stays at its row, whatever key is there.
    pub(super) selected_key: Option<String>,
    /// Rows of keys the last drawing had room for (for PgUp/PgDn).
    pub(super) page: usize,
    pub(super) note: Option<Note>,
}

impl App {
    pub(super) fn new(
        socket: PathBuf,
        interval: Duration,
        sort: Sort,
        filter: Option<Prefix>,
    ) -> App {
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

    pub(super) fn apply(&mut self, poll: Poll) {
        self.model.apply(poll);
        self.arrange();
    }

    /// Sorts and filters the rows and puts the selection back on its key (or its row).
    pub(super) fn arrange(&mut self) {
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

    pub(super) fn selected(&self) -> Option<&KeyRow> {
        self.model.keys.get(self.table.selected()?)
    }

    pub(super) fn move_selection(&mut self, by: isize) {
        let count = self.model.keys.len();
        if count == 0 {
            return;
        }
        let current = self.table.selected().unwrap_or(0) as isize;
        let index = (current + by).clamp(0, count as isize - 1) as usize;
        self.table.select(Some(index));
        self.selected_key = Some(self.model.keys[index].info.key.clone());
    }

    pub(super) fn set_filter(&mut self, filter: Option<Prefix>) -> Action {
        self.note = None;
        if filter == self.filter {
            return Action::None;
        }
        self.filter = filter;
        self.generation += 1;
        self.arrange();
        Action::Refresh
    }

    pub(super) fn on_key(&mut self, key: KeyEvent) -> Action {
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

    pub(super) fn on_reset(&mut self, key: &str, result: Result<ResetResponse, String>) {
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
