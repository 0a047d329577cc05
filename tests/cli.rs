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

#[test]
fn help_documents_every_variable() {
    let (code, out, _) = coordinator(&["serve", "--help"], &[]);
    assert_eq!(code, Some(0));
    for var in [
        "ENV",
        "BIND_ADDR",
        "API_TOKEN",
        "API_TOKEN_FILE",
        "DATABASE_URL",
        "SMB_HOST",
        "SMB_PORT",
        "SMB_SHARE",
        "SMB_USERNAME",
        "SMB_PASSWORD",
        "SMB_PASSWORD_FILE",
        "SMB_DOMAIN",
        "SMB_SOURCE_DIR",
        "SMB_ARCHIVE_DIR",
        "FOI_API_URL",
        "ITM_API_URL",
        "IQUBE_API_URL",
        "FOI_TIMEOUT_SECS",
        "ITM_TIMEOUT_SECS",
        "IQUBE_TIMEOUT_SECS",
        "EXTRA_CA_CERTS_FILE",
        "STABLE_MIN_AGE_SECS",
        "STABLE_CHECK_INTERVAL_SECS",
        "MAX_CONCURRENT_FILES",
    ] {
        assert!(
            out.contains(&format!("[env: {var}")),
            "--help lacks {var}:\n{out}"
        );
    }
    let (code, out, _) = coordinator(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for cmd in ["serve", "run", "migrate"] {
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

#[test]
fn secrets_are_not_echoed_in_errors() {
    let (_, _, err) = coordinator(
        &["run"],
        &[
            ("ENV", "local"),
            ("DATABASE_URL", "postgres://u:topsecret@x/y"),
            ("SMB_PASSWORD", "hunter2"),
        ],
    );
    assert!(
        !err.contains("topsecret") && !err.contains("hunter2"),
        "{err}"
    );
}
