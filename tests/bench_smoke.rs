//! `ferrite bench` smoke test with tiny sizes: the command runs and reports sane rows. Speed
//! itself is measured by `benches/vs-llamacpp.sh`, never by timed tests.

use serde_json::Value;
use std::process::Command;

#[test]
fn bench_runs_with_tiny_sizes() {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["bench", "-m", "smollm2", "-p", "16", "-n", "4", "-r", "2", "-t", "2", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ferrite bench failed: {}", String::from_utf8_lossy(&o.stderr));
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "a pp row and a tg row: {rows:?}");
    assert_eq!((rows[0]["n_prompt"].as_u64(), rows[0]["n_gen"].as_u64()), (Some(16), Some(0)));
    assert_eq!((rows[1]["n_prompt"].as_u64(), rows[1]["n_gen"].as_u64()), (Some(0), Some(4)));
    for r in rows {
        assert_eq!(r["samples_ns"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
    }

    let table = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["bench", "-p", "8", "-n", "2", "-r", "1"]).output().unwrap();
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("pp8") && text.contains("tg2"), "{text}");

    let bad = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["bench", "-r", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
