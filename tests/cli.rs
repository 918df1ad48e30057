//! The `stopfuzz` command line: exit codes, the summary line, reproducible digests.

use std::process::{Command, Output};

fn stopfuzz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stopfuzz"))
        .args(args)
        .output()
        .expect("stopfuzz runs")
}

fn summary(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout}");
    lines[0].to_string()
}

#[test]
fn run_prints_one_summary_line_and_the_same_digest_for_the_same_seed() {
    let tmp = std::env::temp_dir().join("stopfuzz-cli-run");
    let out = tmp.to_str().unwrap();
    let a = stopfuzz(&["run", "--execs", "300", "--seed", "5", "--out", out]);
    let b = stopfuzz(&[
        "run", "--execs", "300", "--seed", "5", "--jobs", "1", "--out", out,
    ]);
    assert!(a.status.success() && b.status.success(), "{a:?}");
    let (a, b) = (summary(&a), summary(&b));
    assert!(
        a.starts_with("summary: target=blk_conforming execs=300 execs_per_s="),
        "{a}"
    );
    assert!(a.contains(" findings=0 digest="), "{a}");
    let digest = |s: &str| s.rsplit("digest=").next().unwrap().to_string();
    assert_eq!(digest(&a), digest(&b));
    let c = summary(&stopfuzz(&[
        "run", "--execs", "300", "--seed", "6", "--out", out,
    ]));
    assert_ne!(digest(&a), digest(&c));
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["run", "--target", "nope"][..],
        &["run", "--execs", "many"],
        &["run", "--seconds", "1", "--execs", "1"],
        &["frobnicate"],
        &["replay"],
    ] {
        let out = stopfuzz(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn replay_reports_outcomes_and_refuses_unreadable_files() {
    let dir = std::env::temp_dir().join("stopfuzz-cli-replay");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("blk_conforming-empty");
    std::fs::write(&input, [1u8]).unwrap();
    let out = stopfuzz(&["replay", input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("blk_conforming pass"));

    let missing = dir.join("does-not-exist");
    let out = stopfuzz(&[
        "replay",
        "--target",
        "blk_hostile",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    let unnamed = dir.join("mystery");
    std::fs::write(&unnamed, [1u8]).unwrap();
    let out = stopfuzz(&["replay", unnamed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
}

#[test]
fn replay_draws_rings() {
    let dir = std::env::temp_dir().join("stopfuzz-cli-rings");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("blk_conforming-one-write");
    // Version, config (1 queue of 4), then Submit (write, indirect) and Publish.
    std::fs::write(
        &input,
        [1, 0, 1, 0, 0, 0, 0, 0, 0b0010_0100, 0, 0, 1, 0, 0, 0],
    )
    .unwrap();
    let out = stopfuzz(&["replay", "--rings", input.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("q0 avail.ring = ["), "{text}");
    assert!(text.contains("^--- avail.idx = 1"), "{text}");
}

#[test]
fn the_oracle_level_changes_the_speed_not_the_digest() {
    let tmp = std::env::temp_dir().join("stopfuzz-cli-oracle");
    let out = tmp.to_str().unwrap();
    let run = |oracle| {
        let o = stopfuzz(&[
            "run", "--execs", "400", "--seed", "3", "--oracle", oracle, "--out", out,
        ]);
        assert!(o.status.success(), "{o:?}");
        summary(&o).rsplit("digest=").next().unwrap().to_string()
    };
    assert_eq!(run("full"), run("crash-only"));
}

#[test]
fn a_reduced_device_runs_clean_and_prints_what_it_skipped() {
    let tmp = std::env::temp_dir().join("stopfuzz-cli-reduced");
    let out = stopfuzz(&[
        "run",
        "--execs",
        "150",
        "--seed",
        "2",
        "--device",
        "reduced",
        "--hide",
        "introspection",
        "--out",
        tmp.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(summary(&out).contains(" findings=0 "));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let skipped = stderr
        .lines()
        .find(|l| l.starts_with("skipped: "))
        .expect("a skipped line");
    for check in ["avail-window", "inuse-bound", "contract"] {
        assert!(skipped.contains(check), "{skipped}");
    }
    assert!(!skipped.contains("write-confined"), "{skipped}");
    let reference = stopfuzz(&["run", "--execs", "10", "--out", tmp.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&reference.stderr).contains("skipped: none"));
}

#[test]
fn an_unknown_capability_or_device_is_a_usage_error() {
    for args in [
        &["run", "--device", "reduced", "--hide", "telepathy"][..],
        &["run", "--device", "qemu-on-mars"][..],
        &["run", "--oracle", "half"][..],
        &["bench", "--engine", "afl"][..],
    ] {
        let out = stopfuzz(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
