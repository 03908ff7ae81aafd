//! What the commands print: Trove-style tables for people, the API's own
//! JSON for scripts (`--json`).
//!
//! Why: the Trove guide shows objects as a two-column Property/Value table
//! (rows sorted by name, `None` for null); keeping every rendering rule here
//! means all commands look the same and the tests can pin the shape.

use comfy_table::{Cell, Table};
use serde_json::Value;

/// prettytable's look, as the Trove client prints: `+---+` rules, `|`
/// between columns, a rule under the header, no rule between rows.
const TROVE_STYLE: &str = "||--+-++|    ++++++";

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(TROVE_STYLE);
    t.set_header(header.iter().map(|h| Cell::new(*h)));
    t
}

/// One value in a cell: strings bare, null as `None`, nested objects and
/// arrays as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An object as a Property | Value table, rows sorted by property.
pub fn properties(obj: &Value) -> String {
    let mut t = table(&["Property", "Value"]);
    if let Some(map) = obj.as_object() {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for k in keys {
            t.add_row(vec![k.clone(), cell(&map[k])]);
        }
    }
    t.to_string()
}

/// A byte count for people: `512 B`, `1.5 KiB`, `2.0 MiB`...
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A backup's size for people: from `bytes` when known, else the API's GB.
pub fn backup_size(b: &Value) -> String {
    match (b.get("bytes").and_then(Value::as_u64), b.get("size").and_then(Value::as_f64)) {
        (Some(bytes), _) => human_bytes(bytes),
        (None, Some(gb)) => format!("{gb} GB"),
        (None, None) => "None".to_owned(),
    }
}

fn field(v: &Value, key: &str) -> String {
    cell(v.get(key).unwrap_or(&Value::Null))
}

/// Backups as a list table.
pub fn backups(list: &[Value]) -> String {
    let mut t = table(&["ID", "Name", "Status", "Parent", "Size", "Created"]);
    for b in list {
        t.add_row(vec![
            field(b, "id"),
            field(b, "name"),
            field(b, "status"),
            field(b, "parent_id"),
            backup_size(b),
            field(b, "created"),
        ]);
    }
    t.to_string()
}

/// Instances as a list table.
pub fn instances(list: &[Value]) -> String {
    let mut t = table(&["ID", "Name", "Status", "Datastore", "Path"]);
    for i in list {
        let ds = &i["datastore"];
        let datastore = match (ds.get("type").and_then(Value::as_str), ds.get("version").and_then(Value::as_str)) {
            (Some(kind), Some(version)) => format!("{kind} {version}"),
            (Some(kind), None) => kind.to_owned(),
            _ => "None".to_owned(),
        };
        t.add_row(vec![field(i, "id"), field(i, "name"), field(i, "status"), datastore, cell(&i["volume"]["path"])]);
    }
    t.to_string()
}

/// The chain root → tip as a tree, one link a line with status and size.
pub fn chain_tree(links: &[Value], missing_parent: Option<&str>) -> String {
    let mut out = String::new();
    let mut depth = 0;
    if let Some(id) = missing_parent {
        out.push_str(&format!("? {id} (missing: the chain has lost its root)\n"));
        depth = 1;
    }
    for b in links {
        let indent = if depth == 0 { String::new() } else { format!("{}└── ", "    ".repeat(depth - 1)) };
        out.push_str(&format!(
            "{indent}{} ({}) {}, size {}\n",
            field(b, "name"),
            field(b, "id"),
            field(b, "status"),
            backup_size(b)
        ));
        depth += 1;
    }
    out
}

/// The JSON scripts get: pretty, one document.
pub fn json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn properties_are_sorted_with_none_and_compact_json() {
        let t = properties(&json!({"status": "ACTIVE", "name": "g", "restore": null, "volume": {"path": "/v"}}));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("+--"), "{t}");
        assert!(lines[1].contains("Property") && lines[1].contains("Value"), "{t}");
        assert!(lines[2].starts_with("+--"), "{t}");
        let rows: Vec<&str> = lines[3..lines.len() - 1].iter().map(|l| l.split('|').nth(1).unwrap().trim()).collect();
        assert_eq!(rows, ["name", "restore", "status", "volume"]);
        assert!(t.contains("| None "), "{t}");
        assert!(t.contains(r#"{"path":"/v"}"#), "{t}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(backup_size(&json!({"bytes": null, "size": null})), "None");
    }

    #[test]
    fn chain_is_indented_root_first() {
        let links = [
            json!({"name": "full", "id": "1", "status": "COMPLETED", "bytes": 2048}),
            json!({"name": "b1", "id": "2", "status": "COMPLETED", "bytes": 10}),
            json!({"name": "b2", "id": "3", "status": "BUILDING", "bytes": null}),
        ];
        let t = chain_tree(&links, None);
        assert_eq!(
            t,
            "full (1) COMPLETED, size 2.0 KiB\n└── b1 (2) COMPLETED, size 10 B\n    └── b2 (3) BUILDING, size None\n"
        );
    }
}
