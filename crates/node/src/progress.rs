//! The sync progress bar: drawn on stderr while the node downloads a chain, only when stderr is
//! a terminal (never in logs collected from a pipe or a file, nor in tests).
//!
//! ```text
//!  SyncHandle::watch() ──► show_sync_progress ──► indicatif bar: state, height/target,
//!                                                 blocks/s and ETA (from SyncProgress)
//!  tracing log lines ──► StderrAroundBar ──► bar.suspend(write): lines print above the bar
//! ```

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use playergold_protocol::sync::{SyncProgress, SyncState};
use playergold_services::SyncStatus;
use tokio::sync::watch;

/// The bar being drawn, if any; log lines are written around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How often the spinner moves while no new status arrives (a stalled download still shows it
/// is alive).
const SPINNER_TICK: Duration = Duration::from_millis(200);

/// The bar's layout: state, blocks done of the target, rate and ETA.
const TEMPLATE: &str = "{spinner} sync {prefix:7} [{bar:40}] {pos}/{len} {msg}";

/// The bar being drawn now.
fn current_bar() -> Option<ProgressBar> {
    // A panic while holding the lock cannot leave the Option half-written: take it anyway.
    BAR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_bar(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Stderr for the log: while a bar is drawn, each write clears it, writes, and redraws it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match current_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether `progress` is a download worth a bar: fetching headers or blocks toward a height
/// above ours.
fn is_syncing(progress: &SyncProgress) -> bool {
    matches!(progress.state, SyncState::Headers | SyncState::Blocks)
        && progress.target_height > progress.height
}

/// The bar's message: rate and time left, when known.
fn rate_and_eta(progress: &SyncProgress) -> String {
    let rate = format!("{:.1} blocks/s", progress.blocks_per_sec);
    match progress.eta_secs {
        Some(eta) if eta.is_finite() && eta >= 0.0 => {
            let eta = eta.round() as u64;
            format!("{rate}, ETA {}m{:02}s", eta / 60, eta % 60)
        }
        _ => rate,
    }
}

/// Draws the sync progress bar on stderr whenever sync is downloading, until `status` closes.
/// Returns at once when stderr is not a terminal.
pub(crate) async fn show_sync_progress(status: watch::Receiver<SyncStatus>) {
    if std::io::stderr().is_terminal() {
        draw_sync_progress(status, ProgressDrawTarget::stderr).await;
    }
}

/// Draws the bar on the targets `target` makes (one per download) until `status` closes.
async fn draw_sync_progress(
    mut status: watch::Receiver<SyncStatus>,
    target: fn() -> ProgressDrawTarget,
) {
    let style = ProgressStyle::with_template(TEMPLATE)
        .expect("the template is valid")
        .progress_chars("=> ");
    loop {
        let progress = status.borrow_and_update().progress;
        match (current_bar(), is_syncing(&progress)) {
            (None, true) => {
                let bar = ProgressBar::with_draw_target(Some(progress.target_height.0), target())
                    .with_style(style.clone());
                bar.enable_steady_tick(SPINNER_TICK);
                update(&bar, &progress);
                set_bar(Some(bar));
            }
            (Some(bar), true) => update(&bar, &progress),
            (Some(bar), false) => {
                set_bar(None);
                bar.finish_and_clear();
            }
            (None, false) => {}
        }
        if status.changed().await.is_err() {
            break;
        }
    }
    if let Some(bar) = current_bar() {
        set_bar(None);
        bar.finish_and_clear();
    }
}

fn update(bar: &ProgressBar, progress: &SyncProgress) {
    bar.set_length(progress.target_height.0);
    bar.set_position(progress.height.0);
    bar.set_prefix(Cow::Borrowed(progress.state.as_str()));
    bar.set_message(rate_and_eta(progress));
}

#[cfg(test)]
mod tests {
    use playergold_primitives::Height;

    use super::*;

    fn progress(state: SyncState, height: u64, target: u64) -> SyncProgress {
        SyncProgress {
            state,
            target_height: Height(target),
            height: Height(height),
            imported: height,
            blocks_per_sec: 12.5,
            eta_secs: Some(125.4),
        }
    }

    #[test]
    fn a_bar_is_drawn_only_while_downloading_toward_a_higher_target() {
        assert!(is_syncing(&progress(SyncState::Blocks, 10, 100)));
        assert!(is_syncing(&progress(SyncState::Headers, 10, 100)));
        assert!(!is_syncing(&progress(SyncState::Synced, 100, 100)));
        assert!(!is_syncing(&progress(SyncState::Idle, 0, 0)));
        assert!(!is_syncing(&progress(SyncState::Blocks, 100, 100)));
    }

    #[test]
    fn the_message_gives_the_rate_and_the_time_left() {
        assert_eq!(
            rate_and_eta(&progress(SyncState::Blocks, 10, 100)),
            "12.5 blocks/s, ETA 2m05s"
        );
        let unknown = SyncProgress {
            eta_secs: None,
            ..progress(SyncState::Headers, 0, 100)
        };
        assert_eq!(rate_and_eta(&unknown), "12.5 blocks/s");
    }

    #[test]
    fn the_template_parses() {
        ProgressStyle::with_template(TEMPLATE).expect("valid template");
    }

    #[tokio::test]
    async fn the_bar_follows_sync_and_goes_away_once_synced() {
        let status = |progress| SyncStatus {
            progress,
            network: Default::default(),
            peers: 1,
        };
        let (tx, rx) = watch::channel(status(progress(SyncState::Idle, 0, 0)));
        let drawing = tokio::spawn(draw_sync_progress(rx, ProgressDrawTarget::hidden));
        let until = |want: Option<(u64, u64)>| async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let now = current_bar().map(|b| (b.position(), b.length().unwrap_or(0)));
                    if now == want {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the bar never became {want:?}"));
        };
        until(None).await;
        tx.send(status(progress(SyncState::Blocks, 10, 100)))
            .expect("watched");
        until(Some((10, 100))).await;
        tx.send(status(progress(SyncState::Blocks, 60, 120)))
            .expect("watched");
        until(Some((60, 120))).await;
        tx.send(status(progress(SyncState::Synced, 120, 120)))
            .expect("watched");
        until(None).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), drawing)
            .await
            .expect("ends when sync stops")
            .expect("did not panic");
    }
}
