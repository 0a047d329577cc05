//! The remitter's side of the share, through a second SMB client
//! (libsmbclient, by pavao): it writes slowly and holds files open for
//! writing, as a Windows copy does, while the coordinator works.

use crate::helpers::TestEnv;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters escaped in libsmbclient URLs: it percent-decodes paths and
/// treats `?` as the start of options.
const PATH_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The pavao path (`/a/b%20c`) of a share-relative path (`a/b c`).
pub fn url_path(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.extend(utf8_percent_encode(seg, PATH_ESCAPE));
    }
    out
}

/// A client of the test share that denies nobody, as a remitter's would.
pub fn client() -> pavao::SmbClient {
    let c = TestEnv::from_env().smb;
    let client = pavao::SmbClient::new(
        pavao::SmbCredentials::default()
            .server(format!("smb://{}:{}", c.host, c.port))
            .share(format!("/{}", c.share))
            .username(&c.username)
            .password(&c.password)
            .workgroup(&c.domain),
        pavao::SmbOptions::default()
            .min_protocol(pavao::SmbDialect::Smb210)
            .max_protocol(pavao::SmbDialect::Smb311)
            .no_auto_anonymous_login(true)
            .case_sensitive(false)
            .open_share_mode(pavao::SmbShareMode::DenyNone),
    )
    .expect("a remitter's SMB client");
    client.set_timeout(c.timeout).expect("a timeout");
    client
}

/// Opens `path` (share-relative) for writing, creating or truncating it.
pub fn open_for_writing<'a>(client: &'a pavao::SmbClient, path: &str) -> pavao::SmbFile<'a> {
    client
        .open_with(
            url_path(path),
            pavao::SmbOpenOptions::default()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .expect("open for writing")
}

/// Opens the existing `path` for writing without changing it.
pub fn open_existing_for_writing<'a>(
    client: &'a pavao::SmbClient,
    path: &str,
) -> pavao::SmbFile<'a> {
    client
        .open_with(
            url_path(path),
            pavao::SmbOpenOptions::default().read(true).write(true),
        )
        .expect("open for writing")
}

#[test]
fn url_path_escapes_what_libsmbclient_decodes() {
    assert_eq!(url_path("a/b.csv"), "/a/b.csv");
    assert_eq!(url_path("r 1/50%?#&.csv"), "/r%201/50%25%3F%23%26.csv");
    assert_eq!(url_path("ü/x"), "/%C3%BC/x");
}
