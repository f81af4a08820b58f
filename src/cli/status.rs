//! `nekhebet-store status [--watch] [--json] [--metrics URL]`: where every partition of the
//! configured topics stands (stores, Kafka, lag, owner), events stored, store sizes, and — from a
//! worker's `/metrics` — the outcomes of the last minute.
//!
//! | module | job |
//! |---|---|
//! | `snapshot` | one look at everything ([`snapshot::Snapshot`], the `--json` document) |
//! | `scrape` | outcome counters from `/metrics`, over a window of samples |
//! | `text` | the one-shot report and the plain lines of `--watch` without a terminal |
//! | `view` | the full-screen `--watch` (ratatui) |

mod scrape;
mod snapshot;
mod text;
mod view;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use snapshot::{Collector, Snapshot};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Refresh every second: full screen on a terminal (q quits), plain lines otherwise.
    #[arg(long)]
    watch: bool,
    /// One JSON document (with --watch: one a line, each refresh).
    #[arg(long)]
    json: bool,
    /// A worker's metrics endpoint (http://host:9187/metrics): outcomes of the last minute.
    #[arg(long, value_name = "URL")]
    metrics: Option<String>,
}

const REFRESH: Duration = Duration::from_secs(1);

pub async fn run(args: StatusArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let mut collector = Collector::new(config, args.metrics.as_deref()).await?;
    if !args.watch {
        let s = once(&mut collector).await;
        let format = if args.json {
            Format::Json
        } else {
            Format::Report
        };
        print(&s, format, collector.scrapes())?;
        return Ok(if s.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if !args.json && std::io::stdout().is_terminal() {
        full_screen(&mut collector).await?;
    } else {
        let format = if args.json {
            Format::Json
        } else {
            Format::Lines
        };
        loop {
            let started = tokio::time::Instant::now();
            let s = collector.snapshot().await;
            print(&s, format, collector.scrapes())?;
            tokio::time::sleep_until(started + REFRESH).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One snapshot; with `--metrics`, the worker is scraped a refresh before it too, so there are
/// outcomes to show.
async fn once(collector: &mut Collector) -> Snapshot {
    if collector.scrapes() {
        collector.scrape_first().await;
        tokio::time::sleep(REFRESH).await;
    }
    collector.snapshot().await
}

/// How a snapshot is printed (the full-screen view aside).
#[derive(Debug, Clone, Copy)]
enum Format {
    /// One JSON document a line.
    Json,
    /// The one-shot report.
    Report,
    /// `--watch` without a terminal: a few lines each refresh.
    Lines,
}

fn print(s: &Snapshot, format: Format, scraping: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(s)?)?,
        Format::Report => write!(out, "{}", text::report(s, scraping))?,
        Format::Lines => write!(out, "{}", text::lines(s, scraping))?,
    }
    out.flush()?;
    Ok(())
}

/// What the keyboard asks for.
enum Input {
    Quit,
    Redraw,
}

/// The full-screen view until `q` (or Esc, Ctrl-C: raw mode turns Ctrl-C into a key).
async fn full_screen(collector: &mut Collector) -> anyhow::Result<()> {
    let mut terminal =
        ratatui::try_init().map_err(|e| anyhow::anyhow!("cannot take over the terminal: {e}"))?;
    let stop = CancellationToken::new();
    let (tx, mut input) = mpsc::channel(8);
    let keys = std::thread::spawn({
        let stop = stop.clone();
        move || read_keys(&tx, &stop)
    });
    let scraping = collector.scrapes();
    let mut last: Option<Snapshot> = None;
    let result: anyhow::Result<()> = async {
        loop {
            terminal.draw(|f| view::draw(f, last.as_ref(), scraping))?;
            let next = tokio::time::Instant::now() + REFRESH;
            // A snapshot can take seconds when a side does not answer: q still quits at once.
            tokio::select! {
                i = input.recv() => match i {
                    Some(Input::Redraw) => continue,
                    Some(Input::Quit) | None => return Ok(()),
                },
                s = collector.snapshot() => last = Some(s),
            }
            terminal.draw(|f| view::draw(f, last.as_ref(), scraping))?;
            loop {
                tokio::select! {
                    i = input.recv() => match i {
                        Some(Input::Redraw) => {
                            terminal.draw(|f| view::draw(f, last.as_ref(), scraping))?;
                        }
                        Some(Input::Quit) | None => return Ok(()),
                    },
                    _ = tokio::time::sleep_until(next) => break,
                }
            }
        }
    }
    .await;
    stop.cancel();
    ratatui::restore();
    let _ = keys.join();
    result
}

/// Reads keys on a thread of its own (crossterm's reads block) until `stop`.
fn read_keys(tx: &mpsc::Sender<Input>, stop: &CancellationToken) {
    while !stop.is_cancelled() {
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => {
                let _ = tx.blocking_send(Input::Quit);
                return;
            }
        }
        let input = match event::read() {
            Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                KeyCode::Char('q') | KeyCode::Esc => Some(Input::Quit),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    Some(Input::Quit)
                }
                _ => None,
            },
            Ok(Event::Resize(..)) => Some(Input::Redraw),
            Ok(_) => None,
            Err(_) => Some(Input::Quit),
        };
        if let Some(i) = input {
            let quit = matches!(i, Input::Quit);
            if tx.blocking_send(i).is_err() || quit {
                return;
            }
        }
    }
}
