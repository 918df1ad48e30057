//! The fuzz target list is written in several places that no compiler ties together: the
//! library, both fuzz crates and their wrappers, the libFuzzer options files, the CI scripts
//! (OSS-Fuzz's and ClusterFuzzLite's too), the corpus and the README.
//! This test reads each as text and checks they name the same targets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use stopfuzz::targets::Target;

type Names = BTreeSet<String>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    out.sort();
    out
}

/// The stems of the `.rs` files in `dir`.
fn rust_files(dir: &Path) -> Names {
    entries(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A string value `key = "value"` on one line of a TOML file.
fn toml_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (k, v) = line.split_once('=')?;
    (k.trim() == key).then(|| v.trim().trim_matches('"'))
}

/// `(name, path)` of every `[[bin]]` table of a Cargo.toml.
fn cargo_bins(manifest: &str) -> Vec<(String, Option<String>)> {
    let mut bins = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            if in_bin {
                bins.push((String::new(), None));
            }
        } else if in_bin {
            let bin = bins.last_mut().unwrap();
            if let Some(v) = toml_value(line, "name") {
                bin.0 = v.to_string();
            } else if let Some(v) = toml_value(line, "path") {
                bin.1 = Some(v.to_string());
            }
        }
    }
    bins
}

/// Wrapper files must hand the input to the library target of their own name.
fn check_wrappers(dir: &Path, want: &Names, problems: &mut Vec<String>) {
    let found = rust_files(dir);
    if &found != want {
        problems.push(format!("{}: {found:?}", dir.display()));
    }
    for name in &found {
        let text = read(&dir.join(format!("{name}.rs")));
        if !text.contains(&format!("stopfuzz::targets::{name}(")) {
            problems.push(format!(
                "{}/{name}.rs does not call stopfuzz::targets::{name}",
                dir.display()
            ));
        }
    }
}

/// Target names in a shell script: `TARGETS=(a b c)` must list them all, and a single
/// `target=x` must name one.
fn check_script(path: &Path, want: &Names, arrays: &mut usize, problems: &mut Vec<String>) {
    for line in read(path).lines().map(str::trim) {
        if let Some(list) = line
            .strip_prefix("TARGETS=(")
            .and_then(|l| l.strip_suffix(')'))
        {
            *arrays += 1;
            let found: Names = list.split_whitespace().map(String::from).collect();
            if &found != want {
                problems.push(format!("{}: TARGETS={found:?}", path.display()));
            }
        } else if let Some(one) = line.strip_prefix("target=")
            && !want.contains(one.trim_matches('"'))
        {
            problems.push(format!("{}: target={one} is not a target", path.display()));
        }
    }
}

/// The first cell of each row of the README's target table, under "### Targets".
fn readme_table(readme: &str) -> Names {
    let section = readme
        .split_once("\n### Targets\n")
        .expect("README has a ### Targets section")
        .1;
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header row and the |---| row
        .filter_map(|row| row.split('|').nth(1))
        .map(|cell| cell.trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn the_fuzz_target_list_agrees_everywhere() {
    let want: Names = Target::ALL.iter().map(|t| t.name().to_string()).collect();
    assert_eq!(want.len(), Target::ALL.len(), "duplicate target names");
    for t in Target::ALL {
        assert_eq!(
            t.name().parse::<Target>(),
            Ok(t),
            "{} does not parse back",
            t.name()
        );
    }
    let root = root();
    let mut problems = Vec::new();

    // libFuzzer: one [[bin]] per target, each at fuzz_targets/<name>.rs.
    let fuzz = root.join("fuzz");
    let bins = cargo_bins(&read(&fuzz.join("Cargo.toml")));
    let names: Names = bins.iter().map(|(n, _)| n.clone()).collect();
    if names != want || bins.len() != want.len() {
        problems.push(format!("fuzz/Cargo.toml [[bin]]: {names:?}"));
    }
    for (name, path) in &bins {
        if path.as_deref() != Some(&format!("fuzz_targets/{name}.rs")) {
            problems.push(format!("fuzz/Cargo.toml: bin {name} has path {path:?}"));
        }
    }
    check_wrappers(&fuzz.join("fuzz_targets"), &want, &mut problems);

    // Side files next to the fuzz crate, which ci/oss-fuzz/build.sh copies to $OUT and
    // ci/fuzz-smoke.sh passes to libFuzzer: fuzz/<target>.options for every target (its
    // max_len suits that target's input), fuzz/<target>.dict for targets only. A file named
    // after no target would never be used.
    let side_files = |ext: &str| -> Names {
        entries(&fuzz)
            .iter()
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let options = side_files("options");
    if options != want {
        problems.push(format!("fuzz/*.options: {options:?}"));
    }
    let dicts = side_files("dict");
    if !dicts.is_subset(&want) {
        problems.push(format!("fuzz/*.dict: {dicts:?}"));
    }

    // AFL++: binaries are src/bin/*.rs, found by cargo unless [[bin]] tables say otherwise.
    let afl = fuzz.join("afl");
    let afl_manifest = read(&afl.join("Cargo.toml"));
    let afl_bins = cargo_bins(&afl_manifest);
    let afl_names: Names = afl_bins.iter().map(|(n, _)| n.clone()).collect();
    if !afl_bins.is_empty() && afl_names != want {
        problems.push(format!("fuzz/afl/Cargo.toml [[bin]]: {afl_names:?}"));
    }
    if afl_manifest
        .lines()
        .any(|l| toml_value(l, "autobins") == Some("false"))
    {
        problems.push("fuzz/afl/Cargo.toml turns off bin discovery".into());
    }
    check_wrappers(&afl.join("src").join("bin"), &want, &mut problems);

    // CI scripts, including the OSS-Fuzz and ClusterFuzzLite build scripts (which find the
    // targets in fuzz/fuzz_targets/ rather than list them, but must not go stale if they do).
    let mut arrays = 0;
    let scripts = [
        root.join("ci"),
        root.join("ci").join("oss-fuzz"),
        root.join(".clusterfuzzlite"),
    ];
    for path in scripts.iter().flat_map(|dir| entries(dir)) {
        if path.extension().is_some_and(|e| e == "sh") {
            check_script(&path, &want, &mut arrays, &mut problems);
        }
    }
    if arrays == 0 {
        problems.push("no ci/*.sh lists the targets in a TARGETS=(...) array".into());
    }

    // One corpus directory per target: a directory of another name is never replayed.
    let dirs: Names = entries(&root.join("corpus"))
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    if dirs != want {
        problems.push(format!("corpus/: {dirs:?}"));
    }

    // The README: the target table, and the list of library entry points.
    let readme = read(&root.join("README.md"));
    let table = readme_table(&readme);
    if table != want {
        problems.push(format!("README target table: {table:?}"));
    }
    let braces = format!(
        "`stopfuzz::targets::{{{}}}(&[u8])`",
        Target::ALL.map(|t| t.name()).join(", ")
    );
    if !readme.contains(&braces) {
        problems.push(format!("README does not list the entry points as {braces}"));
    }

    assert!(
        problems.is_empty(),
        "the target list {want:?} disagrees with:\n  {}",
        problems.join("\n  ")
    );
}
