//! The test suites of the Python etcd client libraries python-etcd3 0.12 and aetcd,
//! from their PyPI source distributions, against a one-member qetcd and Debian's etcd
//! 3.4 side by side: every test that passes on etcd must pass on qetcd.
//!
//! The work is in `tests/clients/run-python-suites.sh` (venvs cached under
//! `target/python-suites`, one network namespace per run, the comparison in
//! `compare_junit.py`), so that it can also be run by hand; this test runs it, gives
//! it a deadline, and fails with its report when it fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use qetcd_tests::{Binary, wait_until};

/// The first run installs two venvs from PyPI; the suites then take about two minutes
/// (more on a loaded machine).
const DEADLINE: Duration = Duration::from_secs(20 * 60);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

#[test]
fn python_client_suites_pass_on_qetcd_where_they_pass_on_etcd() {
    let qetcd = Binary::Qetcd.path();
    assert!(
        qetcd.exists(),
        "{} not found: `cargo build --workspace --bins` first",
        qetcd.display()
    );
    assert!(
        Binary::Etcd.available(),
        "Debian's etcd not found: apt-get install etcd-server"
    );
    let work = qetcd
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/qetcd")
        .join("python-suites");
    std::fs::create_dir_all(&work).unwrap();
    let log_path = work.join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let script = repository().join("tests/clients/run-python-suites.sh");
    let mut child = Command::new(&script)
        .arg("--qetcd")
        .arg(&qetcd)
        .arg("--work")
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        // Its own process group, so that a run past the deadline is stopped whole:
        // the script, the namespaces' servers and the pytest processes.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let finished = wait_until("the Python client suites", DEADLINE, || {
        child.try_wait().expect("wait for the script")
    });
    let status = match finished {
        Ok(status) => status,
        Err(e) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "{e}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    };
    let report = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{report}");
    assert!(
        status.success(),
        "{} failed ({status}); results and server logs in {}:\n{report}",
        script.display(),
        work.join("results").display()
    );
    assert!(
        report.contains("every test that passed on etcd 3.4 passed on qetcd"),
        "the comparison did not run:\n{report}"
    );
}
