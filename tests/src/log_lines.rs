//! qetcd (like etcd) logs JSON lines; tests look for messages and fields in them as a
//! person reads them. [`readable`] turns each JSON log line into
//! `ts LEVEL caller: msg key=value ...` (string values unquoted, as they were logged)
//! and leaves other lines alone; `Member::raw_logs` keeps the lines as written.

/// The log with every JSON object line rendered as text.
pub fn readable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for line in raw.lines() {
        match render(line) {
            Some(text) => out.push_str(&text),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn render(line: &str) -> Option<String> {
    if !line.starts_with('{') {
        return None;
    }
    let serde_json::Value::Object(fields) = serde_json::from_str(line).ok()? else {
        return None;
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let get = |k: &str| fields.get(k).map(text).unwrap_or_default();
    let mut out = format!(
        "{} {} {}: {}",
        get("ts"),
        get("level").to_uppercase(),
        get("caller"),
        get("msg")
    );
    for (k, v) in &fields {
        if !matches!(k.as_str(), "ts" | "level" | "caller" | "msg") {
            out.push_str(&format!(" {k}={}", text(v)));
        }
    }
    Some(out)
}

#[cfg(test)]
#[test]
fn json_lines_read_as_text_and_others_are_kept() {
    let raw = "{\"level\":\"info\",\"ts\":\"T\",\"caller\":\"a/b.rs:1\",\"msg\":\"lease expired; revoked\",\"lease\":\"5\",\"n\":0}\nplain \"line\"\n";
    assert_eq!(
        readable(raw),
        "T INFO a/b.rs:1: lease expired; revoked lease=5 n=0\nplain \"line\"\n"
    );
}
