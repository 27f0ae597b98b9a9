//! Drawing the screen with ratatui: header, totals, sparklines, the table of keys, help line.

use crate::api::Status;
use crate::cli::table::{count, rate};
use limiter_common::maps::Counter;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Cell, HighlightSpacing, Paragraph, RenderDirection, Row, Sparkline, Table, Wrap,
};
use ratatui::Frame;
use std::time::Duration;

use super::model::{Model, Rates, Sort};

use super::app::{App, Mode, Note};

// ---------------------------------------------------------------------------------------------
// Drawing.

pub(super) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(super) const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
pub(super) const RED: Style = Style::new().fg(Color::Red);
pub(super) const GREEN: Style = Style::new().fg(Color::Green);
pub(super) const YELLOW: Style = Style::new().fg(Color::Yellow);

pub(super) fn rate_text(per_second: Option<f64>) -> String {
    per_second.map_or_else(|| "-".to_owned(), rate)
}

/// `text` cut to `width` characters, with "…" where it was cut.
pub(super) fn fit(text: &str, width: usize) -> String {
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
pub(super) fn fit_start(text: &str, width: usize) -> String {
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
pub(super) fn fit_key(key: &str, width: usize) -> String {
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
pub(super) enum Column {
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
    pub(super) const ALL: [Column; 8] = [
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
    pub(super) const BY_IMPORTANCE: [Column; 8] = [
        Column::Key,
        Column::DropRate,
        Column::PassRate,
        Column::Exhausted,
        Column::Remaining,
        Column::Rule,
        Column::Dropped,
        Column::Passed,
    ];

    pub(super) fn title(self) -> &'static str {
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

    pub(super) fn sort(self) -> Option<Sort> {
        match self {
            Column::DropRate => Some(Sort::DropRate),
            Column::PassRate => Some(Sort::PassRate),
            Column::Dropped => Some(Sort::Dropped),
            Column::Passed => Some(Sort::Passed),
            _ => None,
        }
    }

    /// Narrowest width; the key and the rule take what is left over.
    pub(super) fn min_width(self) -> u16 {
        match self {
            Column::Key => 15,
            Column::DropRate | Column::PassRate | Column::Passed => 7,
            Column::Dropped => 8,
            Column::Remaining => 11,
            Column::Exhausted => 3,
            Column::Rule => 6,
        }
    }

    pub(super) fn numeric(self) -> bool {
        !matches!(self, Column::Key | Column::Rule | Column::Exhausted)
    }
}

/// Width of the selection marker in front of every row.
pub(super) const MARKER: u16 = 2;

/// The columns that fit in `width`, with their widths, in the order shown. The least important
/// go first when it is narrow; the sorted column stays. The key gets room up to its longest.
pub(super) fn columns(width: u16, longest_key: u16, sort: Sort) -> Vec<(Column, u16)> {
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

pub(super) fn draw(frame: &mut Frame, app: &mut App) {
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

pub(super) fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
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
pub(super) fn totals_line(status: &Status, rates: Option<Rates>, width: usize) -> Line<'static> {
    let dim = |t: &str| Span::styled(t.to_owned(), DIM);
    let sep = || dim(" │ ");
    let exhausted_style = if status.exhausted_keys > 0 {
        RED.add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{}/s", rate(r)));
    let passed_rate = Span::styled(
        rate(rates.map(|r| r.passed)),
        GREEN.add_modifier(Modifier::BOLD),
    );
    let dropped_rate = Span::styled(
        rate(rates.map(|r| r.dropped)),
        RED.add_modifier(Modifier::BOLD),
    );
    let tracked = Span::styled(count(status.tracked_keys), BOLD);
    let exhausted = Span::styled(count(status.exhausted_keys), exhausted_style);
    let mut candidates = vec![
        vec![
            dim("keys "),
            tracked.clone(),
            dim(" tracked, "),
            exhausted.clone(),
            dim(" exhausted"),
            sep(),
            dim("passed "),
            Span::raw(count(status.counters.get(Counter::Passed))),
            dim(" ("),
            passed_rate.clone(),
            dim(")"),
            sep(),
            dim("dropped "),
            Span::raw(count(status.counters.get(Counter::Dropped))),
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
                count(status.counters.get(Counter::WouldDrop)),
                YELLOW,
            ));
        }
    }
    pick_fitting(candidates, width)
}

/// The first of `candidates` that fits in `width`, else the last.
pub(super) fn pick_fitting(candidates: Vec<Vec<Span<'static>>>, width: usize) -> Line<'static> {
    let count = candidates.len();
    candidates
        .into_iter()
        .enumerate()
        .find(|(i, spans)| i + 1 == count || spans.iter().map(Span::width).sum::<usize>() <= width)
        .map(|(_, spans)| Line::from(spans))
        .unwrap_or_default()
}

pub(super) fn human_interval(interval: Duration) -> String {
    let ms = interval.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", interval.as_secs_f64())
    }
}

pub(super) fn draw_sparklines(frame: &mut Frame, area: Rect, model: &Model) {
    pub(super) const LABEL: u16 = 16;
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
                format!("{:>8}", current.map_or("-".to_owned(), rate)),
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
                    rate(peak as f64)
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

pub(super) fn draw_table(frame: &mut Frame, area: Rect, app: &mut App) {
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
                Column::Dropped => (count(k.dropped), Style::new()),
                Column::Passed => (count(k.passed), Style::new()),
                Column::Remaining => (
                    format!("{}/{}", count(k.remaining), count(k.burst)),
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
pub(super) fn message_line(app: &App) -> Option<(Line<'static>, bool)> {
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

pub(super) fn help_line(app: &App, width: usize) -> Line<'static> {
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
