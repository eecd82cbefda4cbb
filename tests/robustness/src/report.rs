//! Running every checker on one history, and, when one fails, writing the history and
//! the failing windows to a file a person (or a later test) can read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::history::{History, Operation, Summary};
use crate::linearizability::{self, Verdict};
use crate::{revisions, watch_check};

/// What the checkers found in one history.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    /// [`History::validate`]: the recording broke its own rules (a harness bug).
    pub recording: Option<String>,
    /// Keys whose sub-history is not linearizable, or whose search ran out of steps.
    pub linearizability: BTreeMap<String, Verdict>,
    pub revisions: Vec<String>,
    pub watch: Vec<String>,
}

impl Findings {
    pub fn passed(&self) -> bool {
        self.recording.is_none()
            && self.linearizability.is_empty()
            && self.revisions.is_empty()
            && self.watch.is_empty()
    }

    /// A few lines for a test's failure message.
    pub fn headline(&self) -> String {
        let mut lines = Vec::new();
        if let Some(r) = &self.recording {
            lines.push(format!("recording: {r}"));
        }
        for (key, verdict) in &self.linearizability {
            lines.push(match verdict {
                Verdict::Violation(v) => format!(
                    "{key}: not linearizable, stuck at operation {} (window of {} operations)",
                    v.stuck_at,
                    v.window.len()
                ),
                Verdict::Inconclusive { steps } => {
                    format!("{key}: no verdict within {steps} search steps")
                }
                Verdict::Linearizable => format!("{key}: linearizable"),
            });
        }
        lines.extend(
            self.revisions
                .iter()
                .take(5)
                .map(|p| format!("revisions: {p}")),
        );
        lines.extend(self.watch.iter().take(5).map(|p| format!("watch: {p}")));
        lines.join("\n")
    }
}

/// Runs every checker, with at most `max_steps` linearizability search steps per key.
pub fn check(history: &History, max_steps: u64) -> Findings {
    Findings {
        recording: history.validate().err(),
        linearizability: linearizability::check(history, max_steps)
            .into_iter()
            .filter(|(_, v)| !matches!(v, Verdict::Linearizable))
            .collect(),
        revisions: revisions::check(history),
        watch: watch_check::check(history),
    }
}

/// The smallest piece of the history that shows one linearizability violation: the
/// operations of its window, in call order.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub key: String,
    pub operations: Vec<Operation>,
}

/// The windows of every violation found.
pub fn windows(history: &History, findings: &Findings) -> Vec<Window> {
    findings
        .linearizability
        .iter()
        .filter_map(|(key, verdict)| match verdict {
            Verdict::Violation(v) => Some(Window {
                key: key.clone(),
                operations: v
                    .window
                    .iter()
                    .filter_map(|&id| history.operations.get(id).cloned())
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    summary: Summary,
    findings: &'a Findings,
    windows: Vec<Window>,
    history: &'a History,
}

/// Writes `<dir>/<name>-<unix seconds>.json` with the findings, the failing windows and
/// the whole history; returns its path.
pub fn write(
    dir: &Path,
    name: &str,
    history: &History,
    findings: &Findings,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("{name}-{stamp}.json"));
    let report = Report {
        name,
        summary: history.summary(),
        findings,
        windows: windows(history, findings),
        history,
    };
    let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Checks `history`; on a failure writes the report under `dir` and returns an error
/// that names the file.
pub fn check_or_report(
    dir: &Path,
    name: &str,
    history: &History,
    max_steps: u64,
) -> anyhow::Result<Summary> {
    let findings = check(history, max_steps);
    if findings.passed() {
        return Ok(history.summary());
    }
    let path = write(dir, name, history, &findings)?;
    anyhow::bail!(
        "{name}: the checkers failed on {} (history and failing windows in {})\n{}",
        history.summary(),
        path.display(),
        findings.headline()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Request, Response};

    use crate::history::ok_op as op;

    /// A read that misses an acknowledged write is reported, with its window, in a file.
    #[test]
    fn a_stale_read_is_written_to_a_report() {
        let history = History {
            operations: vec![
                op(
                    0,
                    0,
                    10,
                    Request::Put {
                        key: "k/0".into(),
                        value: "a".into(),
                        prev_kv: false,
                    },
                    Response::Put {
                        header: 2,
                        prev: None,
                    },
                ),
                op(
                    1,
                    20,
                    30,
                    Request::Get { key: "k/0".into() },
                    Response::Get {
                        header: 2,
                        kv: None,
                    },
                ),
            ],
            ..History::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = check_or_report(dir.path(), "stale", &history, 10_000).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not linearizable"), "{text}");
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap();
        assert!(text.contains(&file.path().display().to_string()));
        let window = report["windows"][0]["operations"].as_array().unwrap();
        assert!(!window.is_empty());
        assert_eq!(report["history"]["operations"].as_array().unwrap().len(), 2);
    }
}
