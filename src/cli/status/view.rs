//! `status --watch` on a terminal: a full-screen view (ratatui) that fits 80×24 — a header, the
//! partitions table, totals, sizes, outcomes and problems — redrawn on every refresh and resize.

use ratatui::layout::{Alignment, Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::snapshot::Snapshot;
use super::text;
use crate::cli::table::opt;

/// Draws `s` (or a waiting line before the first snapshot).
pub fn draw(frame: &mut Frame<'_>, s: Option<&Snapshot>, scraping: bool) {
    let area = frame.area();
    let [header, table, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(6),
    ])
    .areas(area);
    let Some(s) = s else {
        frame.render_widget(
            Paragraph::new("q quits │ nekhebet-store status: reading the stores and Kafka…"),
            header,
        );
        return;
    };
    frame.render_widget(
        // "q quits" first: a long group name is cut at the right edge, the hint never.
        Paragraph::new(Line::from(format!(
            "q quits │ {} │ group {} │ {}",
            s.at, s.group, s.store_mode
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        header,
    );
    frame.render_widget(partitions(s, table.width), table);

    let mut lines = vec![
        Line::from(text::totals_line(s)),
        Line::from(text::sizes_line(s)),
    ];
    lines.extend(text::tlog_line(s).map(Line::from));
    lines.push(Line::from(text::outcomes_line(s, scraping)));
    for r in s.partitions.iter().filter(|r| r.beyond_end) {
        lines.push(Line::from(format!(
            "{}: stored offsets beyond its end (re-created topic?)",
            text::label(r)
        )));
    }
    for p in &s.problems {
        lines.push(Line::from(format!("problem: {p}")));
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), footer);
}

/// The partitions table: numbers right-aligned; a topic name shortened in its middle, and the
/// owner shown as its host alone, when the width leaves them no more room.
fn partitions(s: &Snapshot, width: u16) -> Table<'static> {
    // Borders, five number columns of 9 (+1 spacing each) and 15 for the owner: the label gets
    // the rest (13 of 80 columns).
    const NUMBER: u16 = 9;
    const OWNER: u16 = 15;
    let label_width = usize::from(width.saturating_sub(2 + 5 * (NUMBER + 1) + OWNER + 1)).max(8);
    let right = |v: String| Cell::from(Line::from(v).alignment(Alignment::Right));
    let header = Row::new([
        Cell::from("partition"),
        right("postgres".into()),
        right("lmdb".into()),
        right("committed".into()),
        right("high".into()),
        right("lag".into()),
        Cell::from("owner"),
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row<'static>> = s
        .partitions
        .iter()
        .map(|r| {
            let owner = match &r.owner {
                Some(o) if o.chars().count() > usize::from(OWNER) => o
                    .rsplit_once('@')
                    .map_or(o.clone(), |(_, host)| host.to_string()),
                Some(o) => o.clone(),
                None => "-".into(),
            };
            Row::new([
                Cell::from(middle_ellipsis(&text::label(r), label_width)),
                right(opt(r.postgres_applied)),
                right(opt(r.lmdb_applied)),
                right(opt(r.kafka_committed)),
                right(opt(r.high)),
                right(opt(r.lag)),
                Cell::from(owner),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Length(label_width as u16),
            Constraint::Length(NUMBER),
            Constraint::Length(NUMBER),
            Constraint::Length(NUMBER),
            Constraint::Length(NUMBER),
            Constraint::Length(NUMBER),
            Constraint::Min(OWNER),
        ],
    )
    .header(header)
    .block(Block::default().borders(Borders::ALL).title(" partitions "))
}

/// `s` cut to `max` characters by replacing its middle with `…` (a topic's start and its partition
/// number at the end are what tell rows apart).
fn middle_ellipsis(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 3 {
        return s.to_string();
    }
    let tail = (max - 1) / 2;
    let head = max - 1 - tail;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_labels_keep_their_start_and_partition() {
        assert_eq!(middle_ellipsis("short/0", 10), "short/0");
        let cut = middle_ellipsis("status-0123456789abcdef/3", 12);
        assert_eq!(cut.chars().count(), 12);
        assert_eq!(cut, "status…def/3");
    }
}
