//! OpenStack's tooz on qetcd through the v3 HTTP/JSON gateway: Debian's python3-tooz
//! with its `etcd3+http` driver (built on python3-etcd3gw). Two client processes share
//! a lock (one holds it, the other cannot take it until it is released) and a group
//! (each sees the other join and leave).
//!
//! tooz's driver defaults to etcd's long-gone `/v3alpha/` prefix, which neither etcd
//! 3.4/3.5 nor qetcd serves; its users set `api_version=v3`, as here. Debian 12's
//! tooz and etcd3gw packages disagree on one call; the client script bridges that
//! (see the comment there).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use qetcd_tests::{Binary, Member, MemberSpec};
use serde_json::{Value, json};

/// Debian's Python, where Debian's python3-tooz is installed (another python3 may be
/// first on PATH).
const PYTHON: &str = "/usr/bin/python3";

/// A tooz client that runs the commands it reads, one per line, and answers each with
/// one JSON line.
const CLIENT: &str = r#"
import json, sys
import etcd3gw
from tooz import coordination

# Debian 12's python3-tooz 3.1 passes api_path= to etcd3gw.client(), which Debian 12's
# python3-etcd3gw 2.0 does not take (its Etcd3Client class does): the packages do not
# work together against any etcd. Forward to the class, as newer etcd3gw does.
etcd3gw.client = lambda **kwargs: etcd3gw.Etcd3Client(**kwargs)

url, member = sys.argv[1], sys.argv[2]
coordinator = coordination.get_coordinator(url, member.encode())
coordinator.start(start_heart=True)
lock = coordinator.get_lock(b"shared-lock")
group = b"workers"

def reply(value):
    print(json.dumps(value), flush=True)

reply("started")
for line in sys.stdin:
    command = line.strip()
    try:
        if command == "try-lock":
            reply(lock.acquire(blocking=False))
        elif command == "unlock":
            reply(lock.release())
        elif command == "create-group":
            try:
                coordinator.create_group(group).get()
                reply("created")
            except coordination.GroupAlreadyExist:
                reply("exists")
        elif command == "join":
            coordinator.join_group(group, capabilities=member.encode()).get()
            reply("joined")
        elif command == "members":
            reply(sorted(m.decode() for m in coordinator.get_members(group).get()))
        elif command == "capabilities":
            reply({m.decode(): coordinator.get_member_capabilities(group, m).get().decode()
                   for m in coordinator.get_members(group).get()})
        elif command == "leave":
            coordinator.leave_group(group).get()
            reply("left")
        elif command == "stop":
            coordinator.stop()
            reply("stopped")
            break
        else:
            reply({"unknown command": command})
    except Exception as e:
        reply({"error": type(e).__name__, "detail": str(e)})
"#;

struct Client {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
}

impl Client {
    fn start(script: &std::path::Path, url: &str, name: &'static str) -> Client {
        let mut child = Command::new(PYTHON)
            .arg(script)
            .args([url, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut client = Client {
            name,
            child,
            stdin,
            replies,
        };
        assert_eq!(client.reply("starting"), json!("started"));
        client
    }

    fn reply(&mut self, what: &str) -> Value {
        let line = self
            .replies
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("tooz client {} did not answer {what}", self.name));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    }

    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.reply(command)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tooz_lock_and_group_across_two_processes() {
    let python_has_tooz = Command::new(PYTHON)
        .args(["-c", "import tooz.drivers.etcd3gw"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_has_tooz {
        eprintln!("skipped: apt-get install python3-tooz python3-etcd3gw");
        return;
    }
    let qetcd = Member::start(Binary::Qetcd, MemberSpec::new("tooz"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tooz_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let url = format!("etcd3+{}?api_version=v3&timeout=10", qetcd.client_url());
    let mut alpha = Client::start(&script, &url, "alpha");
    let mut beta = Client::start(&script, &url, "beta");

    // The lock: one holder at a time, across processes.
    assert_eq!(alpha.ask("try-lock"), json!(true));
    assert_eq!(beta.ask("try-lock"), json!(false));
    assert_eq!(alpha.ask("unlock"), json!(true));
    assert_eq!(beta.ask("try-lock"), json!(true));
    assert_eq!(alpha.ask("try-lock"), json!(false));
    assert_eq!(beta.ask("unlock"), json!(true));

    // The group: created once, joined by both, each seeing the other.
    assert_eq!(alpha.ask("create-group"), json!("created"));
    assert_eq!(beta.ask("create-group"), json!("exists"));
    assert_eq!(alpha.ask("join"), json!("joined"));
    assert_eq!(beta.ask("join"), json!("joined"));
    assert_eq!(alpha.ask("members"), json!(["alpha", "beta"]));
    assert_eq!(
        beta.ask("capabilities"),
        json!({"alpha": "alpha", "beta": "beta"})
    );
    assert_eq!(beta.ask("leave"), json!("left"));
    assert_eq!(alpha.ask("members"), json!(["alpha"]));
    assert_eq!(beta.ask("stop"), json!("stopped"));
    assert_eq!(alpha.ask("stop"), json!("stopped"));
}
