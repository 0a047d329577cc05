//! The command line without any server: help text and configuration errors.

use std::process::Command;

fn coordinator(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every variable of the README's configuration table is in `--help`, and
/// every variable `--help` shows is in the table (`<VAR>_FILE` twins are
/// described in the text above it; `RUST_LOG` and `LOG_FORMAT` are read by
/// the logger, not the command line).
#[test]
fn help_and_readme_document_the_same_variables() {
    let (code, out, _) = coordinator(&["serve", "--help"], &[]);
    assert_eq!(code, Some(0));
    let all: std::collections::BTreeSet<String> = out
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect();
    let in_help: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|v| {
            !v.strip_suffix("_FILE")
                .is_some_and(|twin| all.contains(twin))
        })
        .cloned()
        .collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap();
    let in_readme: std::collections::BTreeSet<String> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string))
        .filter(|v| !["RUST_LOG", "LOG_FORMAT"].contains(&v.as_str()))
        .collect();
    assert!(in_help.len() >= 30, "{in_help:?}");
    assert_eq!(in_help, in_readme, "--help and the README's table differ");
    let (code, out, _) = coordinator(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for cmd in ["serve", "run", "migrate", "audit"] {
        assert!(out.contains(cmd), "{out}");
    }
}

#[test]
fn missing_or_bad_configuration_stops_with_one_message_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "API_TOKEN"),
        (&[("ENV", "local")], "DATABASE_URL"),
        (&[("ENV", "staging")], "ENV"),
        (
            &[
                ("ENV", "local"),
                ("DATABASE_URL", "postgres://x/y"),
                ("SMB_PASSWORD", "pw"),
            ],
            "SMB_HOST",
        ),
        (
            &[
                ("ENV", "local"),
                ("DATABASE_URL", "postgres://x/y"),
                ("SMB_PASSWORD", "pw"),
                ("SMB_HOST", "h"),
                ("SMB_PORT", "abc"),
            ],
            "SMB_PORT",
        ),
        // A variable set to blanks counts as unset: its default applies.
        (
            &[
                ("ENV", "local"),
                ("DATABASE_URL", "postgres://x/y"),
                ("SMB_PASSWORD", "pw"),
                ("SMB_HOST", "h"),
                ("SMB_PORT", ""),
                ("MAX_CONCURRENT_FILES", " "),
                ("INSTANCE_HEARTBEAT_SECS", ""),
            ],
            "SMB_SHARE",
        ),
        (
            &[
                ("ENV", "local"),
                ("DATABASE_URL", "postgres://x/y"),
                ("SMB_PASSWORD", "pw"),
                ("SMB_HOST", "h"),
                ("SMB_SHARE", "s"),
                ("SMB_USERNAME", "u"),
                ("FOI_API_URL", "https://foi/{remitter}"),
                ("ITM_API_URL", "https://itm/"),
                ("IQUBE_API_URL", "https://iqube/"),
                ("EXTRA_CA_CERTS_FILE", "/nonexistent/ca.pem"),
            ],
            "EXTRA_CA_CERTS_FILE",
        ),
    ];
    for (env, var) in cases {
        let (code, _, err) = coordinator(&["run"], env);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!("configuration error: {var}:")),
            "want {var}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one message: {err}");
    }
    let (code, _, err) = coordinator(&["migrate"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("DATABASE_URL"), "{err}");
}

/// A valid configuration but for one variable, with every secret set.
fn with_secrets(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("ENV", "prod"),
        ("API_TOKEN", "tokensecret"),
        ("AUDIT_KEY", "auditsecret-0123456789"),
        ("DATABASE_URL", "postgres://u:dbsecret@127.0.0.1:1/y"),
        ("SMB_PASSWORD", "smbsecret"),
        ("SMB_HOST", "127.0.0.1"),
        ("SMB_SHARE", "s"),
        ("SMB_USERNAME", "u"),
        ("FOI_API_URL", "http://127.0.0.1:1/{remitter}"),
        ("ITM_API_URL", "http://127.0.0.1:1/"),
        ("IQUBE_API_URL", "http://127.0.0.1:1/"),
    ];
    env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    env.extend_from_slice(extra);
    env
}

/// Errors raised after every secret was read, and errors about a secret
/// itself, name the variable and never echo a secret.
#[test]
fn secrets_are_not_echoed_in_errors() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("MAX_CONCURRENT_FILES", "0")], "MAX_CONCURRENT_FILES"),
        (&[("API_TOKEN_FILE", "/nonexistent")], "API_TOKEN"),
        (&[("DATABASE_URL", "dbsecret-not-a-url")], "DATABASE_URL"),
        (&[("SMB_PASSWORD_FILE", "/etc/hostname")], "SMB_PASSWORD"),
        (&[("AUDIT_KEY", "")], "AUDIT_KEY"),
        (&[("AUDIT_KEY_FILE", "/nonexistent")], "AUDIT_KEY"),
    ];
    for (extra, var) in cases {
        let (code, _, err) = coordinator(&["run"], &with_secrets(extra));
        assert_eq!(code, Some(2), "{var}: {err}");
        assert!(err.contains(var), "{var}: {err}");
        for secret in ["tokensecret", "dbsecret", "smbsecret", "auditsecret"] {
            assert!(!err.contains(secret), "{secret} echoed: {err}");
        }
    }
    // The database cannot be reached: the error says so without the password.
    let (code, _, err) = coordinator(&["migrate"], &with_secrets(&[]));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("database"), "{err}");
    assert!(!err.contains("dbsecret"), "password echoed: {err}");
}
