//! `etcdctl lock` and `etcdctl elect` (issue 5): etcd's concurrency recipes, built by the
//! client on leases, transactions and watches, work against qetcd across concurrent
//! clients.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use qetcd_tests::etcdctl::ETCDCTL;
use qetcd_tests::{Binary, Member, MemberSpec, wait_until};

fn etcdctl(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(ETCDCTL);
    c.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args);
    c
}

#[test]
fn etcdctl_lock_excludes_concurrent_holders() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("locks"));
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    // Each holder writes "<id> in" and "<id> out" around its critical section; the
    // pause inside is the work being protected, long enough for another client to
    // barge in if the lock let it.
    let section = format!(
        "echo \"$ID in\" >> {j}; sleep 0.2; echo \"$ID out\" >> {j}",
        j = journal.display()
    );
    let holders: Vec<_> = (0..3)
        .map(|id| {
            let endpoint = m.client_url();
            let section = section.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let status =
                        etcdctl(&endpoint, &["lock", "the-lock", "--", "sh", "-c", &section])
                            .env("ID", id.to_string())
                            .stdout(Stdio::null())
                            .status()
                            .unwrap();
                    assert!(status.success(), "etcdctl lock failed: {status:?}");
                }
            })
        })
        .collect();
    for h in holders {
        h.join().unwrap();
    }
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 18, "{text}");
    for pair in lines.chunks(2) {
        let (id_in, id_out) = (pair[0].strip_suffix(" in"), pair[1].strip_suffix(" out"));
        assert!(
            id_in.is_some() && id_in == id_out,
            "critical sections overlapped:\n{text}"
        );
    }
}

/// `etcdctl elect <name> <proposal>` in the background, its output lines.
struct Candidate {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Candidate {
    fn start(endpoint: &str, args: &[&str]) -> Candidate {
        let mut child = etcdctl(endpoint, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Candidate { child, lines }
    }

    fn saw(&self, text: &str, seen: &mut Vec<String>) -> bool {
        while let Ok(l) = self.lines.try_recv() {
            seen.push(l);
        }
        seen.iter().any(|l| l == text)
    }

    /// SIGINT, as an operator's Ctrl-C: etcdctl resigns and revokes its session.
    fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = wait_until("the candidate to exit", Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcdctl_elect_hands_leadership_to_the_next_candidate() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("elections"));
    let url = m.client_url();
    let mut first = Candidate::start(&url, &["elect", "the-election", "p1"]);
    let mut seen_first = Vec::new();
    wait_until("p1 to be elected", Duration::from_secs(20), || {
        first.saw("p1", &mut seen_first).then_some(())
    })
    .unwrap();

    let second = Candidate::start(&url, &["elect", "the-election", "p2"]);
    let observer = Candidate::start(&url, &["elect", "-l", "the-election"]);
    let mut seen_observer = Vec::new();
    wait_until("the observer to report p1", Duration::from_secs(20), || {
        observer.saw("p1", &mut seen_observer).then_some(())
    })
    .unwrap();
    // While p1 leads, p2 waits: it has not announced itself. (The observer having
    // seen p1 shows the election state is settled; p2 campaigned before that.)
    let mut seen_second = Vec::new();
    assert!(
        !second.saw("p2", &mut seen_second),
        "two leaders: {seen_second:?}"
    );

    first.interrupt();
    wait_until(
        "p2 to be elected after p1 resigned",
        Duration::from_secs(20),
        || second.saw("p2", &mut seen_second).then_some(()),
    )
    .unwrap();
    wait_until("the observer to report p2", Duration::from_secs(20), || {
        observer.saw("p2", &mut seen_observer).then_some(())
    })
    .unwrap();
}
